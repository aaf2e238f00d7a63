//! Deployments as use cases: a public model name mapped to weighted variants of registered
//! models (or allowed upstreams). Creating or changing one verifies every variant's signature
//! and digests and checks residency: each model needs a serving site in its jurisdiction, which
//! its tenant must allow. A refusal is audited with the `deployment-residency` policy.

use std::collections::BTreeMap;
use std::sync::Arc;

use factory_core::{AccessRequest, Action, Jurisdiction, Resource, SiteKind, TenantName};
use factory_store::deployments::Deployment;
use factory_store::inference::{Feedback, InferenceRecord};
use factory_store::pipelines::DriftAlarm;
use factory_store::Event;

use super::access::{authorize_as, hide_foreign, site_facts, valid_name};
use super::models::{resolve, split_reference, verify_version};
use super::Recorded;
use crate::caller::Caller;
use crate::drift::DriftStatus;
use crate::service_error::{ErrorKind, ServiceError};
use crate::serving::{DeploymentSpec, LoadedModel, VariantSpec};
use crate::state::AppState;

/// Resolves and verifies every variant, and builds the governed request with the residency
/// facts of all of them.
async fn checked_request(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    spec: &DeploymentSpec,
    action: Action,
) -> Result<(AccessRequest, Vec<serde_json::Value>), ServiceError> {
    // Who may deploy here is decided before any variant is resolved, so a caller who may not
    // learns nothing of the models, upstreams and secrets the spec names. (The residency facts
    // are decided on with the real values once resolved.)
    let gate = AccessRequest::new(&caller.principal, action, Resource::deployment(tenant, name))
        .with_context("jurisdiction_allowed", true)
        .with_context("serving_site", true);
    authorize_as(state, caller, &gate, tenant).await?;
    spec.validate().map_err(ServiceError::invalid)?;
    let (mut allowed, mut serving) = (true, true);
    let mut resolved = Vec::new();
    for variant in &spec.variants {
        if let Some(upstream) = &variant.upstream {
            if crate::egress::allowed_url(&state.config.serving.upstreams, &upstream.url).is_none() {
                return Err(ServiceError::new(
                    ErrorKind::UpstreamNotAllowed,
                    format!("{} is not among the upstreams this installation allows (serving.upstreams)", upstream.url),
                ));
            }
            if let Some(variable) = &upstream.api_key_env {
                if !crate::egress::secret_granted(&state.config.secrets, tenant.as_str(), variable) {
                    return Err(ServiceError::invalid(format!(
                        "upstream.api_key_env: {variable} is not granted to tenant {tenant} ([secrets])"
                    )));
                }
            }
            // Requests leave the installation: the upstream's jurisdiction must be one the
            // tenant allows. It is not our site, so the serving-site fact does not apply.
            let (tenant_allows, _) = site_facts(state, tenant, &upstream.jurisdiction, SiteKind::Serving).await?;
            allowed &= tenant_allows;
            resolved.push(serde_json::json!({
                "upstream": upstream.url, "model": upstream.model, "jurisdiction": upstream.jurisdiction,
                "weight": variant.weight, "role": variant.role,
            }));
            continue;
        }
        if let Some(endpoint) = &variant.endpoint {
            let Some(pool) = state.config.serving.endpoints.get(&endpoint.name) else {
                return Err(ServiceError::invalid(format!(
                    "endpoint: {:?} is not declared in this installation ([serving.endpoints])",
                    endpoint.name
                )));
            };
            if let Some(variable) = &pool.api_key_env {
                if !crate::egress::secret_granted(&state.config.secrets, tenant.as_str(), variable) {
                    return Err(ServiceError::invalid(format!(
                        "endpoint {:?}: its key {variable} is not granted to tenant {tenant} ([secrets])",
                        endpoint.name
                    )));
                }
            }
            let jurisdiction =
                Jurisdiction::new(&pool.jurisdiction).map_err(|error| ServiceError::invalid(error.to_string()))?;
            let (tenant_allows, _) = site_facts(state, tenant, &jurisdiction, SiteKind::Serving).await?;
            allowed &= tenant_allows;
            resolved.push(serde_json::json!({
                "endpoint": endpoint.name, "replicas": pool.urls, "model": endpoint.model, "jurisdiction": jurisdiction,
                "weight": variant.weight, "role": variant.role,
            }));
            continue;
        }
        let model_reference = variant.model.clone().unwrap_or_default();
        let (model, reference) = split_reference(&model_reference)?;
        let version = resolve(state, caller, tenant, model, reference, Action::ModelRead).await?;
        let report = verify_version(state, &version).await;
        if !report.verified {
            return Err(ServiceError::new(
                ErrorKind::VerificationFailed,
                format!("{model_reference} fails verification: {}", report.error.unwrap_or_default()),
            ));
        }
        let (tenant_allows, site) = site_facts(state, tenant, &version.jurisdiction, SiteKind::Serving).await?;
        allowed &= tenant_allows;
        serving &= site;
        resolved.push(serde_json::json!({
            "model": model_reference, "version": version.version, "weight": variant.weight, "role": variant.role,
            "jurisdiction": version.jurisdiction, "manifest": version.manifest_digest,
        }));
    }
    let request = AccessRequest::new(&caller.principal, action, Resource::deployment(tenant, name))
        .with_context("jurisdiction_allowed", allowed)
        .with_context("serving_site", serving);
    Ok((request, resolved))
}

/// Loads the deployment's models in the background, so the first request does not wait.
fn warm(state: &AppState, tenant: &TenantName, spec: &DeploymentSpec) {
    for variant in spec.variants.clone().into_iter().filter(|v| v.model.is_some()) {
        let (state, tenant) = (state.clone(), tenant.clone());
        tokio::spawn(async move {
            if let Err(error) = load_variant(&state, &tenant, &variant).await {
                tracing::warn!(model = %variant.label(), error = %error.message, "could not preload a deployment's model");
            }
        });
    }
}

/// The engine of a registered-model variant, loading its verified version on first use.
pub async fn load_variant(
    state: &AppState,
    tenant: &TenantName,
    variant: &VariantSpec,
) -> Result<Arc<LoadedModel>, ServiceError> {
    let model = variant.model.as_deref().ok_or_else(|| ServiceError::invalid("not a registered-model variant"))?;
    let (name, reference) = split_reference(model)?;
    let version = state
        .lookups
        .model_version(tenant, name, reference)
        .await?
        .ok_or_else(|| ServiceError::new(ErrorKind::ModelUnavailable, format!("{model} is not registered")))?;
    // An adapter version runs on its base's engine, which loads once for all its adapters.
    let Some(base) = state.engines.adapter_base(&version).await? else {
        return state.engines.get(&version).await;
    };
    let (base_name, base_reference) = split_reference(&base)?;
    let base_version = state.lookups.model_version(tenant, base_name, base_reference).await?.ok_or_else(|| {
        ServiceError::new(ErrorKind::ModelUnavailable, format!("{model} runs on {base}, which is not registered"))
    })?;
    state.engines.get_adapted(&version, &base_version).await
}

/// Creates `tenant`'s deployment `name` serving `spec` (`deployment.created`).
pub async fn create(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    spec: DeploymentSpec,
) -> Result<Recorded<Deployment>, ServiceError> {
    valid_name::<factory_core::DeploymentName>("name", name)?;
    put(state, caller, tenant, name, spec, Action::DeploymentCreate).await
}

/// Replaces what `tenant`'s deployment `name` serves with `spec` (`deployment.updated`).
pub async fn update(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    spec: DeploymentSpec,
) -> Result<Recorded<Deployment>, ServiceError> {
    put(state, caller, tenant, name, spec, Action::DeploymentUpdate).await
}

/// Writes a deployment checked whole, as `action` (create or update), then warms its models.
async fn put(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    spec: DeploymentSpec,
    action: Action,
) -> Result<Recorded<Deployment>, ServiceError> {
    let (request, resolved) = checked_request(state, caller, tenant, name, &spec, action).await?;
    let mut change = state
        .store
        .begin_change(state.pdp.as_ref(), request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(caller, Some(tenant), e))?;
    let stored = serde_json::to_value(&spec).unwrap_or_default();
    let replace = action == Action::DeploymentUpdate;
    let deployment = change.put_deployment(tenant, name, &stored, replace).await?;
    let (details, topic) = if replace {
        let details = serde_json::json!({
            "tenant": tenant, "deployment": name, "revision": deployment.revision, "variants": resolved,
        });
        (details, "deployment.updated")
    } else {
        (serde_json::json!({ "tenant": tenant, "deployment": name, "variants": resolved }), "deployment.created")
    };
    let committed = change.commit(details.clone(), Event::new(topic, details)).await?;
    warm(state, tenant, &spec);
    Ok(Recorded { value: deployment, committed })
}

/// Deletes `tenant`'s deployment `name` (`deployment.deleted`).
pub async fn delete(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
) -> Result<Recorded<()>, ServiceError> {
    let request = AccessRequest::new(&caller.principal, Action::DeploymentDelete, Resource::deployment(tenant, name));
    let mut change = state
        .store
        .begin_change(state.pdp.as_ref(), request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(caller, Some(tenant), e))?;
    change.delete_deployment(tenant, name).await?;
    let details = serde_json::json!({ "tenant": tenant, "deployment": name });
    let committed = change.commit(details.clone(), Event::new("deployment.deleted", details)).await?;
    Ok(Recorded { value: (), committed })
}

/// Authorizes reading `tenant`'s deployment `name` (`*` for the list).
pub async fn authorize_read(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
) -> Result<(), ServiceError> {
    let request = AccessRequest::new(&caller.principal, Action::DeploymentRead, Resource::deployment(tenant, name));
    authorize_as(state, caller, &request, tenant).await
}

/// `tenant`'s deployment `name`, as the caller may read it.
pub async fn show(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
) -> Result<Deployment, ServiceError> {
    authorize_read(state, caller, tenant, name).await?;
    let deployment = state.store.deployment(tenant, name).await?;
    deployment.ok_or_else(|| ServiceError::not_found(format!("deployment {name} does not exist")))
}

/// What `tenant`'s deployment `name` serves now, as the caller may read it.
pub async fn spec(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
) -> Result<DeploymentSpec, ServiceError> {
    let deployment = show(state, caller, tenant, name).await?;
    serde_json::from_value(deployment.spec)
        .map_err(|e| ServiceError::internal(format!("deployment {name}'s stored spec: {e}")))
}

/// `tenant`'s deployments, as the caller may read them.
pub async fn list(state: &AppState, caller: &Caller, tenant: &TenantName) -> Result<Vec<Deployment>, ServiceError> {
    authorize_read(state, caller, tenant, "*").await?;
    Ok(state.store.deployments(tenant).await?)
}

/// The inference log of `tenant`'s deployment `name` after `after` (milliseconds since the
/// epoch), at most `limit` (default 100, at most 1000) entries, as the caller may read it.
pub async fn inferences(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    after: i64,
    limit: Option<i64>,
) -> Result<Vec<InferenceRecord>, ServiceError> {
    authorize_read(state, caller, tenant, name).await?;
    let limit = limit.unwrap_or(100).clamp(1, 1000);
    Ok(state.store.inferences(tenant, name, after, limit).await?)
}

/// The feedback on `tenant`'s deployment `name` after `after` (milliseconds since the epoch),
/// at most `limit` (default 100, at most 1000) reports, as the caller may read it.
pub async fn feedback(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    after: i64,
    limit: Option<i64>,
) -> Result<Vec<Feedback>, ServiceError> {
    authorize_read(state, caller, tenant, name).await?;
    let limit = limit.unwrap_or(100).clamp(1, 1000);
    Ok(state.store.feedback(tenant, name, after, limit).await?)
}

/// The most recent inferences a traffic summary reads.
pub const TRAFFIC_SAMPLE: i64 = 5_000;

/// A deployment's recent traffic, from its inference log: the newest [`TRAFFIC_SAMPLE`]
/// requests of the last `days` days.
#[derive(Debug, Clone, Default)]
pub struct Traffic {
    pub requests: usize,
    /// Requests that did not end `ok` (overloaded, failed, cancelled).
    pub errors: usize,
    pub statuses: BTreeMap<String, usize>,
    /// How answers ended; `content_filter` is an output guardrail's verdict.
    pub finish_reasons: BTreeMap<String, usize>,
    pub variants: BTreeMap<String, usize>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub first_token_p50_ms: Option<f64>,
    pub first_token_p99_ms: Option<f64>,
    /// Generated tokens per second of decoding, over all answered requests.
    pub tokens_per_second: Option<f64>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// Cost per UTC day (`YYYY-MM-DD`), oldest first.
    pub cost_by_day: Vec<(String, f64)>,
    /// Requests per hour over the sample (hour start in milliseconds), oldest first.
    pub requests_by_hour: Vec<(i64, usize)>,
}

/// The `q` quantile (nearest rank) of `values`, which it sorts.
fn quantile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

impl Traffic {
    pub fn of(records: &[InferenceRecord]) -> Traffic {
        let mut traffic = Traffic { requests: records.len(), ..Traffic::default() };
        let (mut latencies, mut first_tokens) = (Vec::new(), Vec::new());
        let (mut decoded, mut decode_ms) = (0_i64, 0.0_f64);
        let mut days: BTreeMap<String, f64> = BTreeMap::new();
        let mut hours: BTreeMap<i64, usize> = BTreeMap::new();
        for record in records {
            *traffic.statuses.entry(record.status.clone()).or_default() += 1;
            *traffic.variants.entry(record.variant.clone()).or_default() += 1;
            *hours.entry(record.created_at - record.created_at.rem_euclid(3_600_000)).or_default() += 1;
            let day = factory_core::time::millis_to_rfc3339(record.created_at);
            *days.entry(day.get(..10).unwrap_or_default().to_string()).or_default() += record.cost;
            traffic.prompt_tokens += record.prompt_tokens;
            traffic.completion_tokens += record.completion_tokens;
            if record.status != "ok" {
                traffic.errors += 1;
                continue;
            }
            if let Some(reason) = &record.finish_reason {
                *traffic.finish_reasons.entry(reason.clone()).or_default() += 1;
            }
            latencies.push(record.total_ms);
            if record.completion_tokens > 0 {
                first_tokens.push(record.first_token_ms);
                decoded += record.completion_tokens;
                decode_ms += record.decode_ms;
            }
        }
        traffic.latency_p50_ms = quantile(&mut latencies, 0.5);
        traffic.latency_p99_ms = quantile(&mut latencies, 0.99);
        traffic.first_token_p50_ms = quantile(&mut first_tokens, 0.5);
        traffic.first_token_p99_ms = quantile(&mut first_tokens, 0.99);
        traffic.tokens_per_second = (decode_ms > 0.0).then(|| decoded as f64 / (decode_ms / 1000.0));
        traffic.cost_by_day = days.into_iter().collect();
        traffic.requests_by_hour = hours.into_iter().collect();
        traffic
    }
}

/// The recent traffic of `tenant`'s deployment `name` (the last `days` days), as the caller
/// may read its inference log.
pub async fn traffic(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    days: i64,
) -> Result<Traffic, ServiceError> {
    authorize_read(state, caller, tenant, name).await?;
    let since = factory_core::time::now_millis() - days * 24 * 3_600_000;
    let records = state.store.latest_inferences(tenant, name, since, TRAFFIC_SAMPLE).await?;
    Ok(Traffic::of(&records))
}

/// What the drift monitors of a deployment say.
#[derive(Debug, Clone)]
pub struct DriftReport {
    /// The monitors' latest readings; `None` when the deployment has no `drift` section or the
    /// monitors have not looked yet.
    pub status: Option<DriftStatus>,
    /// Monitors that started firing, newest first (at most 100).
    pub alarms: Vec<DriftAlarm>,
}

/// The drift of `tenant`'s deployment `name`, as the caller may read it.
pub async fn drift(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
) -> Result<DriftReport, ServiceError> {
    authorize_read(state, caller, tenant, name).await?;
    if state.store.deployment(tenant, name).await?.is_none() {
        return Err(ServiceError::not_found(format!("deployment {name} does not exist")));
    }
    let alarms = state.store.drift_alarms(tenant, name, 100).await?;
    Ok(DriftReport { status: state.drift.status(tenant, name), alarms })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn record(status: &str, total_ms: f64, completion_tokens: i64, cost: f64, at: i64) -> InferenceRecord {
        InferenceRecord {
            id: format!("chatcmpl-{at}"),
            tenant: "acme".into(),
            deployment: "chat".into(),
            variant: if at % 2 == 0 { "bard@1".into() } else { "bard@2".into() },
            kind: "chat".into(),
            request_id: "r".into(),
            episode_id: None,
            status: status.into(),
            finish_reason: (status == "ok").then(|| if total_ms > 50.0 { "content_filter" } else { "stop" }.into()),
            prompt_tokens: 10,
            completion_tokens,
            cost,
            queue_ms: 0.0,
            first_token_ms: total_ms / 4.0,
            decode_ms: total_ms / 2.0,
            total_ms,
            created_at: at,
            prompt_text: None,
            completion_text: None,
            structure_json: None,
            cached_tokens: 0,
        }
    }

    #[test]
    fn traffic_summarizes_latency_errors_tokens_and_cost() {
        let day = 86_400_000;
        let mut records: Vec<InferenceRecord> = (1..=100).map(|i| record("ok", i as f64, 10, 0.5, i * 1000)).collect();
        records.push(record("failed", 5000.0, 0, 0.0, day + 1));
        records.push(record("overloaded", 1.0, 0, 0.0, day + 2));
        let traffic = Traffic::of(&records);
        assert_eq!((traffic.requests, traffic.errors), (102, 2));
        assert_eq!(traffic.latency_p50_ms, Some(50.0), "errors are not latencies");
        assert_eq!(traffic.latency_p99_ms, Some(99.0));
        assert_eq!(traffic.first_token_p50_ms, Some(12.5));
        // 1,000 tokens over the sum of the decode times (1..=100 ms halved: 2,525 ms).
        assert!((traffic.tokens_per_second.unwrap() - 1000.0 / 2.525).abs() < 1e-9);
        assert_eq!(traffic.cost_by_day, vec![("1970-01-01".to_string(), 50.0), ("1970-01-02".to_string(), 0.0)]);
        assert_eq!(traffic.finish_reasons["content_filter"], 50);
        assert_eq!(traffic.statuses["failed"], 1);
        assert_eq!(traffic.variants.values().sum::<usize>(), 102);
        assert_eq!(traffic.requests_by_hour.len(), 2);
        assert_eq!(Traffic::of(&[]).latency_p50_ms, None);
    }
}
