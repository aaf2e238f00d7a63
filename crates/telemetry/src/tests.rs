//! Log lines as written and spans as a real OTLP receiver decodes them. Every test but one scopes
//! its subscriber with `with_default`; `init_installs_once_and_exports` is the only one that
//! installs the process-wide subscriber, which can happen once per process.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;

use crate::receiver::TraceReceiver;
use crate::{build, init, TelemetryError, TelemetrySettings, DEFAULT_FILTER};

/// Collects everything the fmt layer writes.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

fn emit_request(request_id: &str) {
    let span = tracing::info_span!("request", request_id, method = "GET", path = "/healthz");
    let _entered = span.enter();
    tracing::info!(status = 200, "finished processing request");
}

#[test]
fn json_logs_are_one_object_per_line_naming_the_request() {
    let capture = Capture::default();
    let settings = TelemetrySettings { json_logs: true, ..TelemetrySettings::default() };
    let (subscriber, guard) = build(&settings, capture.clone()).unwrap();
    assert!(!guard.exporting());
    tracing::subscriber::with_default(subscriber, || {
        emit_request("json-1");
        tracing::warn!(reason = "line two", "second event");
        tracing::debug!("filtered out at the default level");
    });
    let text = capture.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(value.is_object(), "{line}");
        assert!(value["timestamp"].is_string(), "{line}");
    }
    let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(first["level"], "INFO");
    assert_eq!(first["fields"]["message"], "finished processing request");
    assert_eq!(first["span"]["name"], "request");
    assert_eq!(first["span"]["request_id"], "json-1");
    let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(second["fields"]["reason"], "line two");
}

#[test]
fn plain_logs_are_text_without_colours() {
    let capture = Capture::default();
    let (subscriber, _guard) = build(&TelemetrySettings::default(), capture.clone()).unwrap();
    tracing::subscriber::with_default(subscriber, || emit_request("plain-1"));
    let text = capture.text();
    assert!(text.contains("request_id=\"plain-1\""), "{text}");
    assert!(text.contains("finished processing request"), "{text}");
    assert!(!text.contains('\u{1b}'), "no ANSI escapes in a captured log: {text:?}");
    assert!(serde_json::from_str::<serde_json::Value>(text.trim()).is_err());
}

#[test]
fn the_filter_decides_what_is_logged() {
    let capture = Capture::default();
    let settings =
        TelemetrySettings { filter: "warn,factory_telemetry=debug".to_string(), ..TelemetrySettings::default() };
    let (subscriber, _guard) = build(&settings, capture.clone()).unwrap();
    tracing::subscriber::with_default(subscriber, || {
        tracing::debug!("kept by the crate directive");
        tracing::info!(target: "sqlx::query", "dropped by the global directive");
    });
    let text = capture.text();
    assert!(text.contains("kept by the crate directive"), "{text}");
    assert!(!text.contains("dropped"), "{text}");
    assert_eq!(DEFAULT_FILTER, TelemetrySettings::default().filter);
}

#[test]
fn spans_are_exported_over_otlp_http_with_service_name_and_request_id() {
    let receiver = TraceReceiver::start().unwrap();
    let capture = Capture::default();
    let settings = TelemetrySettings {
        otlp_endpoint: Some(receiver.endpoint().to_string()),
        service_name: "factory-under-test".to_string(),
        ..TelemetrySettings::default()
    };
    let (subscriber, guard) = build(&settings, capture.clone()).unwrap();
    assert!(guard.exporting());
    tracing::subscriber::with_default(subscriber, || {
        emit_request("otlp-unit-1");
        // The exporter's own HTTP stack never feeds the exporter.
        tracing::info_span!(target: "reqwest::connect", "connect").in_scope(|| {});
    });
    assert_eq!(receiver.requests(), 0, "a batch processor exports later");
    guard.shutdown().unwrap();

    let spans = receiver.spans().unwrap();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let span = &spans[0];
    assert_eq!(span.name, "request");
    assert_eq!(span.attributes["request_id"], "otlp-unit-1");
    assert_eq!(span.attributes["method"], "GET");
    assert_eq!(span.attributes["path"], "/healthz");
    assert_eq!(span.resource["service.name"], "factory-under-test");
    // Logs still go to the writer while spans are exported.
    assert!(capture.text().contains("otlp-unit-1"));
}

#[test]
fn dropping_the_guard_flushes_too() {
    let receiver = TraceReceiver::start().unwrap();
    let settings =
        TelemetrySettings { otlp_endpoint: Some(receiver.endpoint().to_string()), ..TelemetrySettings::default() };
    let (subscriber, guard) = build(&settings, Capture::default()).unwrap();
    tracing::subscriber::with_default(subscriber, || emit_request("dropped-1"));
    drop(guard);
    let spans = receiver.spans().unwrap();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(spans[0].attributes["request_id"], "dropped-1");
    assert_eq!(spans[0].resource["service.name"], "factory");
}

#[test]
fn endpoints_that_are_not_http_urls_are_refused_naming_the_key() {
    for endpoint in [
        "",
        "127.0.0.1:4318",
        "localhost:4318/v1/traces",
        "ftp://127.0.0.1/v1/traces",
        "grpc://collector:4317",
        "http://",
        "http://exa mple/v1/traces",
        "/v1/traces",
    ] {
        let settings = TelemetrySettings { otlp_endpoint: Some(endpoint.to_string()), ..TelemetrySettings::default() };
        let error = build(&settings, Capture::default()).err().unwrap_or_else(|| panic!("{endpoint:?} was accepted"));
        assert!(matches!(error, TelemetryError::Endpoint { .. }), "{endpoint:?}: {error:?}");
        let message = error.to_string();
        assert!(message.starts_with("server.otlp_endpoint: "), "{endpoint:?}: {message}");
        assert!(!message.ends_with('.'), "{message}");
    }
    for endpoint in ["http://127.0.0.1:4318/v1/traces", "https://collector.example.eu/v1/traces"] {
        let settings = TelemetrySettings { otlp_endpoint: Some(endpoint.to_string()), ..TelemetrySettings::default() };
        let (_subscriber, guard) = build(&settings, Capture::default()).unwrap();
        // Nothing was recorded, so shutting down sends nothing to these unreachable hosts.
        guard.shutdown().unwrap();
    }
}

#[test]
fn a_bad_filter_is_refused() {
    let settings = TelemetrySettings { filter: "info,[unclosed".to_string(), ..TelemetrySettings::default() };
    let error = build(&settings, Capture::default()).err().unwrap();
    assert!(matches!(error, TelemetryError::Filter { .. }), "{error:?}");
    assert!(error.to_string().starts_with("filter: invalid log filter"), "{error}");
}

/// The only test that installs the global subscriber.
#[test]
fn init_installs_once_and_exports() {
    // A bad endpoint fails before anything is installed.
    let bad = TelemetrySettings { otlp_endpoint: Some("collector:4318".to_string()), ..TelemetrySettings::default() };
    let error = init(&bad).err().unwrap();
    assert!(error.to_string().contains("server.otlp_endpoint"), "{error}");

    let receiver = TraceReceiver::start().unwrap();
    let settings = TelemetrySettings {
        json_logs: true,
        otlp_endpoint: Some(receiver.endpoint().to_string()),
        service_name: "factory-global".to_string(),
        ..TelemetrySettings::default()
    };
    let guard = init(&settings).unwrap();
    // This thread has no scoped subscriber, so the span reaches the global one.
    std::thread::spawn(|| emit_request("global-1")).join().unwrap();
    let again = init(&settings).err().unwrap();
    assert!(matches!(again, TelemetryError::Install(_)), "{again:?}");
    guard.shutdown().unwrap();

    let spans = receiver.spans().unwrap();
    let span = spans
        .iter()
        .find(|span| span.attributes.get("request_id").map(String::as_str) == Some("global-1"))
        .unwrap_or_else(|| panic!("{spans:#?}"));
    assert_eq!(span.name, "request");
    assert_eq!(span.resource["service.name"], "factory-global");
}
