//! Logs and traces for the factory process, set up in one place so that the binary stays thin and
//! the OpenTelemetry dependencies (heavy to build) live in this leaf crate only.
//!
//! [`init`] installs the process-wide `tracing` subscriber: an `EnvFilter`, human or JSON lines on
//! stderr, and, when an OTLP endpoint is configured, a layer that turns `tracing` spans into
//! OpenTelemetry spans and exports them over OTLP/HTTP (protobuf) in batches. The server's
//! per-request span carries `request_id`, so an exported trace can be matched with the log lines
//! and the audit record of the same request. [`build`] makes the same subscriber without
//! installing it, for tests and for code that scopes a subscriber with
//! `tracing::subscriber::with_default`.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Subscriber;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

#[cfg(any(test, feature = "test-receiver"))]
pub mod receiver;

/// The filter when neither the settings nor `FACTORY_LOG` say otherwise: the factory's own
/// information, but only warnings from sqlx, which logs every statement at info.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn";

/// The environment variable whose `EnvFilter` directive, when set, replaces the configured one,
/// so an operator can turn on debug logs for one module without editing the configuration.
pub const FILTER_ENV: &str = "FACTORY_LOG";

/// The configuration key that names the OTLP endpoint; errors name it so the operator knows what
/// to fix.
const ENDPOINT_KEY: &str = "server.otlp_endpoint";

/// Spans from these targets are never exported: they come from the exporter's own HTTP stack, and
/// exporting them would make every export produce spans to export.
const EXPORTER_TARGETS: &[&str] = &["opentelemetry", "reqwest", "hyper", "h2"];

/// What to log and where to send traces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TelemetrySettings {
    /// One JSON object per line on stderr instead of human-readable lines.
    pub json_logs: bool,
    /// OTLP/HTTP traces endpoint, such as `http://127.0.0.1:4318/v1/traces`; used as given (no
    /// path is appended). `None` exports nothing.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute of exported spans.
    pub service_name: String,
    /// `EnvFilter` directive. [`init`] lets `FACTORY_LOG` override it; [`build`] uses it as is.
    pub filter: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            json_logs: false,
            otlp_endpoint: None,
            service_name: "factory".to_string(),
            filter: DEFAULT_FILTER.to_string(),
        }
    }
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("{ENDPOINT_KEY}: {endpoint:?} is not an http(s) URL: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("{origin}: invalid log filter {directive:?}: {reason}")]
    Filter { origin: &'static str, directive: String, reason: String },
    #[error("{ENDPOINT_KEY}: cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("cannot install the tracing subscriber: {0}")]
    Install(#[from] tracing_subscriber::util::TryInitError),
    #[error("cannot flush the exported spans: {0}")]
    Shutdown(#[from] opentelemetry_sdk::error::OTelSdkError),
}

/// Keeps the span exporter running. Dropping it (or calling [`TelemetryGuard::shutdown`]) flushes
/// the spans still queued and stops the exporter, so hold it until the process is done serving.
#[must_use = "dropping the guard stops exporting spans"]
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes queued spans and stops the exporter, reporting a failed flush. Blocks for up to
    /// the SDK's shutdown timeout while the last batch is sent.
    pub fn shutdown(mut self) -> Result<(), TelemetryError> {
        match self.provider.take() {
            Some(provider) => Ok(provider.shutdown()?),
            None => Ok(()),
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(error) = provider.shutdown() {
                // The subscriber outlives the guard, so this still reaches the log.
                tracing::warn!(%error, "cannot flush the exported spans");
            }
        }
    }
}

/// Installs the process-wide subscriber described by `settings`, with `FACTORY_LOG` (when set
/// and not empty) taking the place of `settings.filter`. Logs go to stderr.
///
/// Fails, installing nothing, when the endpoint is not an http(s) URL, the filter does not parse,
/// or a global subscriber is already installed.
pub fn init(settings: &TelemetrySettings) -> Result<TelemetryGuard, TelemetryError> {
    let (filter, origin) = match std::env::var(FILTER_ENV) {
        Ok(value) if !value.trim().is_empty() => (value, FILTER_ENV),
        _ => (settings.filter.clone(), "filter"),
    };
    let settings = TelemetrySettings { filter, ..settings.clone() };
    // Colours only for a person at a terminal; a log file or collector wants plain text.
    let ansi = !settings.json_logs && std::io::stderr().is_terminal();
    let (subscriber, guard) = build_with(&settings, origin, std::io::stderr, ansi)?;
    subscriber.try_init()?;
    Ok(guard)
}

/// Builds the subscriber [`init`] would install, writing log lines to `writer` (without colours),
/// and starts the exporter if an endpoint is set. Nothing is installed: use the subscriber with
/// `tracing::subscriber::with_default` or `set_global_default`, and keep the guard as long as
/// spans should be exported.
pub fn build<W>(
    settings: &TelemetrySettings,
    writer: W,
) -> Result<(impl Subscriber + Send + Sync + 'static, TelemetryGuard), TelemetryError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    build_with(settings, "filter", writer, false)
}

/// The layers above the filter all see the same subscriber type, so they can be boxed into one
/// list whose length depends on the settings.
type Filtered = Layered<EnvFilter, Registry>;
type BoxedLayer = Box<dyn Layer<Filtered> + Send + Sync>;

fn build_with<W>(
    settings: &TelemetrySettings,
    filter_origin: &'static str,
    writer: W,
    ansi: bool,
) -> Result<(impl Subscriber + Send + Sync + 'static, TelemetryGuard), TelemetryError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // Validate everything before starting the exporter's thread, so a bad setting leaves nothing
    // running behind it.
    let filter = EnvFilter::builder().parse(&settings.filter).map_err(|error| TelemetryError::Filter {
        origin: filter_origin,
        directive: settings.filter.clone(),
        reason: error.to_string(),
    })?;
    let endpoint = settings.otlp_endpoint.as_deref().map(validate_endpoint).transpose()?;

    let mut layers: Vec<BoxedLayer> = Vec::with_capacity(2);
    layers.push(if settings.json_logs {
        tracing_subscriber::fmt::layer().json().with_writer(writer).with_ansi(false).boxed()
    } else {
        tracing_subscriber::fmt::layer().with_writer(writer).with_ansi(ansi).boxed()
    });
    let mut guard = TelemetryGuard { provider: None };
    if let Some(endpoint) = endpoint {
        let provider = tracer_provider(endpoint, &settings.service_name)?;
        let tracer = provider.tracer(settings.service_name.clone());
        guard.provider = Some(provider);
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(filter_fn(|metadata| {
                    !EXPORTER_TARGETS.iter().any(|target| metadata.target().starts_with(target))
                }))
                .boxed(),
        );
    }
    let subscriber = Registry::default().with(filter).with(layers);
    Ok((subscriber, guard))
}

/// Accepts only absolute http(s) URLs with a host: anything else would fail at the first export,
/// long after start-up, where nobody is looking.
fn validate_endpoint(endpoint: &str) -> Result<&str, TelemetryError> {
    let invalid =
        |reason: &str| TelemetryError::Endpoint { endpoint: endpoint.to_string(), reason: reason.to_string() };
    let uri: http::Uri = endpoint.parse().map_err(|error: http::uri::InvalidUri| invalid(&error.to_string()))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(_) => return Err(invalid("the scheme must be http or https")),
        None => return Err(invalid("it needs a scheme, such as http://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("it needs a host"));
    }
    Ok(endpoint)
}

/// The OTLP/HTTP protobuf exporter behind a batch processor, which exports from its own thread so
/// request handling never waits on the collector.
fn tracer_provider(endpoint: &str, service_name: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .build()?;
    // The default detectors still apply first, so OTEL_RESOURCE_ATTRIBUTES can add attributes;
    // the configured service name wins over OTEL_SERVICE_NAME.
    let resource = Resource::builder().with_service_name(service_name.to_string()).build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

#[cfg(test)]
mod tests;
