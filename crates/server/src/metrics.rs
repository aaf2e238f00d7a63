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

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

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
        Metrics { registry, requests, request_seconds, authz_decisions, authz_seconds, audit_log_size, in_flight }
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
