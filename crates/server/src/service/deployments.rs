//! Deployments as use cases: a public model name mapped to weighted variants of registered
//! models (or allowed upstreams). Creating or changing one verifies every variant's signature
//! and digests and checks residency: each model needs a serving site in its jurisdiction, which
//! its tenant must allow. A refusal is audited with the `deployment-residency` policy.

use std::sync::Arc;

use factory_core::{AccessRequest, Action, Resource, SiteKind, TenantName};
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
