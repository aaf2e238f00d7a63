//! Deployments: a public model name mapped to weighted variants of registered models. Creating
//! or changing one verifies every variant's signature and digests and checks residency: each
//! model needs a serving site in its jurisdiction, which its tenant must allow. A refusal is
//! a 403 with the `deployment-residency` policy in the audit log.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use factory_core::{AccessRequest, Action, Resource, SiteKind, TenantName};
use factory_store::deployments::Deployment;
use factory_store::Event;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::datasets::{tenant_of, TenantQuery};
use super::models::{resolve, split_reference, verify_version};
use super::{authorize_as, committed_response, hide_foreign, millis_to_text};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use crate::registry::site_facts;
use crate::serving::{DeploymentSpec, VariantSpec};
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDeployment {
    /// The name clients pass as `model`.
    pub name: String,
    /// `[{"model": "bard@production", "weight": 1}]`.
    #[schema(value_type = Vec<Object>)]
    pub variants: Vec<VariantSpec>,
    /// Requests and tokens per minute per key and per tenant, and a money budget per window.
    #[schema(value_type = Option<Object>)]
    pub limits: Option<crate::limits::LimitsSpec>,
    /// `[{"name": "no-pii", "stage": "input", "action": "mask", "rule": {"kind": "pii"}}]`.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub guardrails: Vec<crate::guardrails::GuardrailSpec>,
    /// `{"sample_rate": 0.1, "redact_pii": true}`: which prompts and answers are logged.
    #[schema(value_type = Option<Object>)]
    pub logging: Option<crate::serving::LoggingSpec>,
    /// `{"reference": "shakespeare@1", "settings": {"window": 100}}`: drift monitors.
    #[schema(value_type = Option<Object>)]
    pub drift: Option<crate::drift::DriftSpec>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateDeployment {
    #[schema(value_type = Vec<Object>)]
    pub variants: Vec<VariantSpec>,
    #[schema(value_type = Option<Object>)]
    pub limits: Option<crate::limits::LimitsSpec>,
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub guardrails: Vec<crate::guardrails::GuardrailSpec>,
    #[schema(value_type = Option<Object>)]
    pub logging: Option<crate::serving::LoggingSpec>,
    #[schema(value_type = Option<Object>)]
    pub drift: Option<crate::drift::DriftSpec>,
}

impl From<DeploymentSpec> for UpdateDeployment {
    fn from(spec: DeploymentSpec) -> Self {
        UpdateDeployment {
            variants: spec.variants,
            limits: spec.limits,
            guardrails: spec.guardrails,
            logging: spec.logging,
            drift: spec.drift,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeploymentView {
    pub name: String,
    pub tenant: String,
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    pub revision: i64,
    pub created_by: String,
    pub created_at: String,
    pub updated_at: String,
}

impl From<Deployment> for DeploymentView {
    fn from(deployment: Deployment) -> Self {
        DeploymentView {
            name: deployment.name,
            tenant: deployment.tenant.to_string(),
            spec: deployment.spec,
            revision: deployment.revision,
            created_by: deployment.created_by,
            created_at: millis_to_text(deployment.created_at),
            updated_at: millis_to_text(deployment.updated_at),
        }
    }
}

/// Resolves and verifies every variant, and builds the governed request with the residency
/// facts of all of them.
async fn checked_request(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    spec: &DeploymentSpec,
    action: Action,
) -> Result<(AccessRequest, Vec<serde_json::Value>), ApiError> {
    // Who may deploy here is decided before any variant is resolved, so a caller who may not
    // learns nothing of the models, upstreams and secrets the spec names. (The residency facts
    // are decided on with the real values once resolved.)
    let gate = AccessRequest::new(&caller.principal, action, Resource::deployment(tenant, name))
        .with_context("jurisdiction_allowed", true)
        .with_context("serving_site", true);
    authorize_as(state, caller, &gate, tenant).await?;
    spec.validate().map_err(ApiError::invalid)?;
    let (mut allowed, mut serving) = (true, true);
    let mut resolved = Vec::new();
    for variant in &spec.variants {
        if let Some(upstream) = &variant.upstream {
            if crate::egress::allowed_url(&state.config.serving.upstreams, &upstream.url).is_none() {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "upstream_not_allowed",
                    format!("{} is not among the upstreams this installation allows (serving.upstreams)", upstream.url),
                ));
            }
            if let Some(variable) = &upstream.api_key_env {
                if !crate::egress::secret_granted(&state.config.secrets, tenant.as_str(), variable) {
                    return Err(ApiError::invalid(format!(
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
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "verification_failed",
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
            if let Err(error) = crate::api::openai::load_variant(&state, &tenant, &variant).await {
                tracing::warn!(model = %variant.label(), error = %error.message, "could not preload a deployment's model");
            }
        });
    }
}

#[utoipa::path(post, path = "/api/v1/deployments", tag = "serving", request_body = CreateDeployment, params(TenantQuery),
    responses((status = 201, body = DeploymentView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<TenantQuery>,
    ApiJson(body): ApiJson<CreateDeployment>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    super::valid_name::<factory_core::DeploymentName>("name", &body.name)?;
    let spec = DeploymentSpec {
        variants: body.variants,
        limits: body.limits,
        guardrails: body.guardrails,
        logging: body.logging,
        drift: body.drift,
    };
    let (request, resolved) =
        checked_request(&state, &caller, &tenant, &body.name, &spec, Action::DeploymentCreate).await?;
    let mut change = state
        .store
        .begin_change(state.pdp.as_ref(), request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(&caller, Some(&tenant), e))?;
    let stored = serde_json::to_value(&spec).unwrap_or_default();
    let deployment = change.put_deployment(&tenant, &body.name, &stored, false).await?;
    let details = serde_json::json!({ "tenant": tenant, "deployment": body.name, "variants": resolved });
    let committed = change.commit(details.clone(), Event::new("deployment.created", details)).await?;
    warm(&state, &tenant, &spec);
    Ok(committed_response(StatusCode::CREATED, Json(DeploymentView::from(deployment)), committed))
}

#[utoipa::path(put, path = "/api/v1/deployments/{name}", tag = "serving", request_body = UpdateDeployment,
    params(("name" = String, Path), TenantQuery),
    responses((status = 200, body = DeploymentView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<TenantQuery>,
    ApiJson(body): ApiJson<UpdateDeployment>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    let spec = DeploymentSpec {
        variants: body.variants,
        limits: body.limits,
        guardrails: body.guardrails,
        logging: body.logging,
        drift: body.drift,
    };
    let (request, resolved) = checked_request(&state, &caller, &tenant, &name, &spec, Action::DeploymentUpdate).await?;
    let mut change = state
        .store
        .begin_change(state.pdp.as_ref(), request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(&caller, Some(&tenant), e))?;
    let stored = serde_json::to_value(&spec).unwrap_or_default();
    let deployment = change.put_deployment(&tenant, &name, &stored, true).await?;
    let details = serde_json::json!({
        "tenant": tenant, "deployment": name, "revision": deployment.revision, "variants": resolved,
    });
    let committed = change.commit(details.clone(), Event::new("deployment.updated", details)).await?;
    warm(&state, &tenant, &spec);
    Ok(committed_response(StatusCode::OK, Json(DeploymentView::from(deployment)), committed))
}

async fn authorize_read(state: &AppState, caller: &Caller, tenant: &TenantName, name: &str) -> Result<(), ApiError> {
    let request = AccessRequest::new(&caller.principal, Action::DeploymentRead, Resource::deployment(tenant, name));
    authorize_as(state, caller, &request, tenant).await
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeploymentList {
    pub deployments: Vec<DeploymentView>,
}

#[utoipa::path(get, path = "/api/v1/deployments", tag = "serving", params(TenantQuery),
    responses((status = 200, body = DeploymentList)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<TenantQuery>,
) -> Result<Json<DeploymentList>, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    authorize_read(&state, &caller, &tenant, "*").await?;
    let deployments = state.store.deployments(&tenant).await?.into_iter().map(DeploymentView::from).collect();
    Ok(Json(DeploymentList { deployments }))
}

#[utoipa::path(get, path = "/api/v1/deployments/{name}", tag = "serving", params(("name" = String, Path), TenantQuery),
    responses((status = 200, body = DeploymentView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<TenantQuery>,
) -> Result<Json<DeploymentView>, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    authorize_read(&state, &caller, &tenant, &name).await?;
    let deployment = state.store.deployment(&tenant, &name).await?;
    deployment.map(|d| Json(d.into())).ok_or_else(|| ApiError::not_found(format!("deployment {name} does not exist")))
}

#[utoipa::path(delete, path = "/api/v1/deployments/{name}", tag = "serving", params(("name" = String, Path), TenantQuery),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<TenantQuery>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    let request = AccessRequest::new(&caller.principal, Action::DeploymentDelete, Resource::deployment(&tenant, &name));
    let mut change = state
        .store
        .begin_change(state.pdp.as_ref(), request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(&caller, Some(&tenant), e))?;
    change.delete_deployment(&tenant, &name).await?;
    let details = serde_json::json!({ "tenant": tenant, "deployment": name });
    let committed = change.commit(details.clone(), Event::new("deployment.deleted", details)).await?;
    Ok(committed_response(StatusCode::NO_CONTENT, (), committed))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct InferencesQuery {
    pub tenant: Option<String>,
    /// Only requests after this time (milliseconds since the epoch).
    #[serde(default)]
    pub after: i64,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InferenceList {
    #[schema(value_type = Vec<Object>)]
    pub inferences: Vec<factory_store::inference::InferenceRecord>,
}

#[utoipa::path(get, path = "/api/v1/deployments/{name}/inferences", tag = "serving",
    params(("name" = String, Path), InferencesQuery),
    responses((status = 200, body = InferenceList), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn inferences(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<InferencesQuery>,
) -> Result<Json<InferenceList>, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    authorize_read(&state, &caller, &tenant, &name).await?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let inferences = state.store.inferences(&tenant, &name, query.after, limit).await?;
    Ok(Json(InferenceList { inferences }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FeedbackList {
    #[schema(value_type = Vec<Object>)]
    pub feedback: Vec<factory_store::inference::Feedback>,
}

#[utoipa::path(get, path = "/api/v1/deployments/{name}/feedback", tag = "serving",
    params(("name" = String, Path), InferencesQuery),
    responses((status = 200, body = FeedbackList), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn feedback(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<InferencesQuery>,
) -> Result<Json<FeedbackList>, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    authorize_read(&state, &caller, &tenant, &name).await?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let feedback = state.store.feedback(&tenant, &name, query.after, limit).await?;
    Ok(Json(FeedbackList { feedback }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DriftView {
    /// The monitors' latest readings; absent when the deployment has no `drift` section or
    /// the monitors have not looked yet.
    pub status: Option<crate::drift::DriftStatus>,
    /// Monitors that started firing, newest first.
    #[schema(value_type = Vec<Object>)]
    pub alarms: Vec<factory_store::pipelines::DriftAlarm>,
}

#[utoipa::path(get, path = "/api/v1/deployments/{name}/drift", tag = "serving",
    params(("name" = String, Path), TenantQuery),
    responses((status = 200, body = DriftView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn drift(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<TenantQuery>,
) -> Result<Json<DriftView>, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    authorize_read(&state, &caller, &tenant, &name).await?;
    if state.store.deployment(&tenant, &name).await?.is_none() {
        return Err(ApiError::not_found(format!("deployment {name} does not exist")));
    }
    let alarms = state.store.drift_alarms(&tenant, &name, 100).await?;
    Ok(Json(DriftView { status: state.drift.status(&tenant, &name), alarms }))
}
