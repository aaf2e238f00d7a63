//! Deployments on the wire: create, change, read and delete them (`service::deployments` does
//! the checking), and read their inference log, feedback and drift.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use factory_store::deployments::Deployment;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::datasets::TenantQuery;
use super::{committed_response, millis_to_text, tenant_of};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use crate::service::deployments::{self, DriftReport};
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
    /// `{"allowed": ["get_weather"]}`: the only tools callers may offer the model.
    #[schema(value_type = Option<Object>)]
    pub tools: Option<crate::serving::ToolsSpec>,
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
    #[schema(value_type = Option<Object>)]
    pub tools: Option<crate::serving::ToolsSpec>,
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
    let spec = DeploymentSpec {
        variants: body.variants,
        limits: body.limits,
        guardrails: body.guardrails,
        logging: body.logging,
        drift: body.drift,
        tools: body.tools,
    };
    let created = deployments::create(&state, &caller, &tenant, &body.name, spec).await?;
    Ok(committed_response(StatusCode::CREATED, Json(DeploymentView::from(created.value)), created.committed))
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
        tools: body.tools,
    };
    let updated = deployments::update(&state, &caller, &tenant, &name, spec).await?;
    Ok(committed_response(StatusCode::OK, Json(DeploymentView::from(updated.value)), updated.committed))
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
    let deployments =
        deployments::list(&state, &caller, &tenant).await?.into_iter().map(DeploymentView::from).collect();
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
    Ok(Json(deployments::show(&state, &caller, &tenant, &name).await?.into()))
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
    let deleted = deployments::delete(&state, &caller, &tenant, &name).await?;
    Ok(committed_response(StatusCode::NO_CONTENT, (), deleted.committed))
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
    let inferences = deployments::inferences(&state, &caller, &tenant, &name, query.after, query.limit).await?;
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
    let feedback = deployments::feedback(&state, &caller, &tenant, &name, query.after, query.limit).await?;
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

impl From<DriftReport> for DriftView {
    fn from(report: DriftReport) -> Self {
        DriftView { status: report.status, alarms: report.alarms }
    }
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
    Ok(Json(deployments::drift(&state, &caller, &tenant, &name).await?.into()))
}
