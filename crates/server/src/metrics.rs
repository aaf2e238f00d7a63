//! Prometheus metrics: requests by route and status, latency histograms, authorization
//! decisions and their latency, and the audit log's size.

use std::sync::Arc;
use std::time::Instant;

use factory_core::{AccessRequest, Decision, PolicyDecisionPoint};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub action: String,
    pub effect: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub tenant: String,
    /// `name@version`.
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeploymentLabels {
    pub deployment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InferenceLabels {
    pub deployment: String,
    pub variant: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuardrailLabels {
    pub deployment: String,
    pub rule: String,
    pub kind: String,
    pub action: String,
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub deployment: String,
    /// `prompt` or `completion`.
    pub kind: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn inference_histogram() -> Histogram {
    // 100 µs to ~200 s: per-token times at the bottom, whole generations at the top.
    Histogram::new(exponential_buckets(0.0001, 2.0, 22))
}

fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 8))
}

fn rate_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 14))
}

fn latency_histogram() -> Histogram {
    // 50 µs to ~1.6 s: authorization decisions sit at the bottom, slow requests at the top.
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: HistogramFamily<RouteLabels>,
    pub authz_decisions: Family<DecisionLabels, Counter>,
    pub authz_seconds: Histogram,
    pub audit_log_size: Gauge,
    pub in_flight: Gauge,
    /// Bytes each loaded generative model's weights take in memory (its quantized or half
    /// blocks as loaded, not widened).
    pub model_weight_bytes: Family<ModelLabels, Gauge>,
    /// Bytes the loaded adapters of adapter versions hold together, and how many loaded and
    /// were evicted to make room.
    pub adapter_cache_bytes: Gauge,
    pub adapter_loads: Counter,
    pub adapter_evictions: Counter,
    pub inference: InferenceMetrics,
    pub cluster: ClusterMetrics,
}

/// What sharing work with other processes costs and fails.
#[derive(Default)]
pub struct ClusterMetrics {
    /// Limit decisions and charges the shared state (Redis) could not answer.
    pub shared_state_failures: Counter,
    /// Outbox events JetStream acknowledged; of those, ones it already held (republished after
    /// a crash between its acknowledgement and the cursor's write); publishing attempts failed.
    pub events_published: Counter,
    pub events_duplicate: Counter,
    pub event_publish_failures: Counter,
    /// Pipeline trigger messages taken from the stream.
    pub trigger_messages: Counter,
}

impl ClusterMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = ClusterMetrics::default();
        registry.register(
            "shared_state_failures",
            "Rate limit decisions and charges the shared state could not answer",
            metrics.shared_state_failures.clone(),
        );
        registry.register(
            "events_published",
            "Outbox events acknowledged by JetStream",
            metrics.events_published.clone(),
        );
        registry.register(
            "events_duplicate",
            "Republished events JetStream already held",
            metrics.events_duplicate.clone(),
        );
        registry.register(
            "event_publish_failures",
            "Attempts to publish events to JetStream that failed",
            metrics.event_publish_failures.clone(),
        );
        registry.register(
            "trigger_messages",
            "Pipeline trigger messages taken from JetStream",
            metrics.trigger_messages.clone(),
        );
        metrics
    }
}

/// What the gateway measures per inference request.
pub struct InferenceMetrics {
    pub requests: Family<InferenceLabels, Counter>,
    pub tokens: Family<TokenLabels, Counter>,
    pub time_to_first_token: HistogramFamily<DeploymentLabels>,
    pub time_per_output_token: HistogramFamily<DeploymentLabels>,
    pub queue: HistogramFamily<DeploymentLabels>,
    /// Total time minus the engine's (first token + decode): what the gateway itself adds.
    pub gateway_overhead: HistogramFamily<DeploymentLabels>,
    pub decode_tokens_per_second: Family<DeploymentLabels, Histogram, fn() -> Histogram>,
    pub batch_size: Histogram,
    /// Inference log records lost because the writer's queue was full or the store failed.
    pub log_dropped: Counter,
    pub guardrail_verdicts: Family<GuardrailLabels, Counter>,
}

impl InferenceMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = InferenceMetrics {
            requests: Family::default(),
            tokens: Family::default(),
            time_to_first_token: Family::new_with_constructor(inference_histogram),
            time_per_output_token: Family::new_with_constructor(inference_histogram),
            queue: Family::new_with_constructor(inference_histogram),
            gateway_overhead: Family::new_with_constructor(inference_histogram),
            decode_tokens_per_second: Family::new_with_constructor(rate_histogram),
            batch_size: batch_histogram(),
            log_dropped: Counter::default(),
            guardrail_verdicts: Family::default(),
        };
        registry.register(
            "inference_requests",
            "Inference requests by deployment, variant and status",
            metrics.requests.clone(),
        );
        registry.register("inference_tokens", "Tokens read and generated by deployment", metrics.tokens.clone());
        registry.register(
            "inference_time_to_first_token_seconds",
            "Submission to first token, queue included",
            metrics.time_to_first_token.clone(),
        );
        registry.register(
            "inference_time_per_output_token_seconds",
            "Decode time per generated token after the first",
            metrics.time_per_output_token.clone(),
        );
        registry.register("inference_queue_seconds", "Time waiting for a batch slot", metrics.queue.clone());
        registry.register(
            "inference_gateway_overhead_seconds",
            "Request time not spent in the engine",
            metrics.gateway_overhead.clone(),
        );
        registry.register(
            "inference_decode_tokens_per_second",
            "Generated tokens per second of decode, per request",
            metrics.decode_tokens_per_second.clone(),
        );
        registry.register(
            "inference_batch_size",
            "Sequences in the engine step that finished a request",
            metrics.batch_size.clone(),
        );
        registry.register(
            "guardrail_verdicts",
            "Guardrail rules that fired, by rule, kind, action and stage",
            metrics.guardrail_verdicts.clone(),
        );
        registry.register(
            "inference_log_dropped",
            "Inference log records lost to overflow or store errors",
            metrics.log_dropped.clone(),
        );
        metrics
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("factory");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_seconds: HistogramFamily<RouteLabels> = Family::new_with_constructor(latency_histogram);
        let authz_decisions = Family::<DecisionLabels, Counter>::default();
        let authz_seconds = latency_histogram();
        let audit_log_size = Gauge::default();
        let in_flight = Gauge::default();
        registry.register("http_requests", "HTTP requests by route, method and status", requests.clone());
        registry.register("http_request_duration_seconds", "HTTP request latency by route", request_seconds.clone());
        registry.register("authz_decisions", "Authorization decisions by action and effect", authz_decisions.clone());
        registry.register(
            "authz_decision_duration_seconds",
            "Time to reach an authorization decision",
            authz_seconds.clone(),
        );
        registry.register("audit_log_records", "Records in the audit log", audit_log_size.clone());
        registry.register("http_requests_in_flight", "HTTP requests being handled", in_flight.clone());
        let model_weight_bytes = Family::<ModelLabels, Gauge>::default();
        registry.register(
            "model_weight_bytes",
            "Bytes a loaded model's weights take in memory",
            model_weight_bytes.clone(),
        );
        let (adapter_cache_bytes, adapter_loads, adapter_evictions) =
            (Gauge::default(), Counter::default(), Counter::default());
        registry.register("adapter_cache_bytes", "Bytes the loaded adapters hold", adapter_cache_bytes.clone());
        registry.register("adapter_loads", "Adapters loaded onto their base's engine", adapter_loads.clone());
        registry.register("adapter_evictions", "Adapters evicted to fit the cache's budget", adapter_evictions.clone());
        let inference = InferenceMetrics::register(&mut registry);
        let cluster = ClusterMetrics::register(&mut registry);
        Metrics {
            registry,
            requests,
            request_seconds,
            authz_decisions,
            authz_seconds,
            audit_log_size,
            in_flight,
            model_weight_bytes,
            adapter_cache_bytes,
            adapter_loads,
            adapter_evictions,
            inference,
            cluster,
        }
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Wraps the policy decision point to count and time every decision.
/// The policy decision point every governed change asks: Cedar, with its decisions counted.
pub type DecisionPoint = MeteredDecisionPoint<factory_authz::CedarAuthorizer>;

pub struct MeteredDecisionPoint<P> {
    pub inner: P,
    pub metrics: Arc<Metrics>,
}

impl<P: PolicyDecisionPoint> PolicyDecisionPoint for MeteredDecisionPoint<P> {
    fn decide(&self, request: &AccessRequest) -> Decision {
        let started = Instant::now();
        let decision = self.inner.decide(request);
        self.metrics.authz_seconds.observe(started.elapsed().as_secs_f64());
        let effect = if decision.is_allowed() { "allow" } else { "deny" };
        self.metrics
            .authz_decisions
            .get_or_create(&DecisionLabels { action: request.action.as_str().to_string(), effect: effect.to_string() })
            .inc();
        decision
    }
}
