//! Pipelines over HTTP: declare (TOML body), list, show, trigger by hand, and follow runs;
//! `service::pipelines` does the checking.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use factory_store::pipelines::{Pipeline, PipelineRun, Triggered};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::datasets::TenantQuery;
use super::{committed_response, tenant_of};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiPath, ApiQuery, Caller};
use crate::service::pipelines;
use crate::state::AppState;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PipelineView {
    pub name: String,
    pub tenant: String,
    pub revision: i64,
    pub author: String,
    /// The TOML as written.
    pub source: String,
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    pub updated_at: String,
}

impl From<Pipeline> for PipelineView {
    fn from(pipeline: Pipeline) -> Self {
        PipelineView {
            name: pipeline.name,
            tenant: pipeline.tenant.to_string(),
            revision: pipeline.revision,
            author: pipeline.author.id,
            source: pipeline.source,
            spec: pipeline.spec,
            updated_at: super::millis_to_text(pipeline.updated_at),
        }
    }
}

#[utoipa::path(put, path = "/api/v1/pipelines/{name}", tag = "pipelines", request_body(content = String, content_type = "application/toml"),
    params(("name" = String, Path), TenantQuery),
    responses((status = 200, body = PipelineView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<TenantQuery>,
    source: String,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    let put = pipelines::put(&state, &caller, &tenant, &name, &source).await?;
    Ok(committed_response(StatusCode::OK, Json(PipelineView::from(put.value)), put.committed))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PipelineList {
    pub pipelines: Vec<PipelineView>,
}

#[utoipa::path(get, path = "/api/v1/pipelines", tag = "pipelines", params(TenantQuery),
    responses((status = 200, body = PipelineList)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<TenantQuery>,
) -> Result<Json<PipelineList>, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    let pipelines = pipelines::list(&state, &caller, &tenant).await?.into_iter().map(PipelineView::from).collect();
    Ok(Json(PipelineList { pipelines }))
}

#[utoipa::path(get, path = "/api/v1/pipelines/{name}", tag = "pipelines", params(("name" = String, Path), TenantQuery),
    responses((status = 200, body = PipelineView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<TenantQuery>,
) -> Result<Json<PipelineView>, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    Ok(Json(pipelines::show(&state, &caller, &tenant, &name).await?.into()))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunList {
    #[schema(value_type = Vec<Object>)]
    pub runs: Vec<PipelineRun>,
}

#[utoipa::path(get, path = "/api/v1/pipelines/{name}/runs", tag = "pipelines", params(("name" = String, Path), TenantQuery),
    responses((status = 200, body = RunList), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn runs(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<TenantQuery>,
) -> Result<Json<RunList>, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    Ok(Json(RunList { runs: pipelines::runs(&state, &caller, &tenant, &name).await? }))
}

#[utoipa::path(get, path = "/api/v1/pipelines/{name}/runs/{id}", tag = "pipelines",
    params(("name" = String, Path), ("id" = String, Path), TenantQuery),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn run(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, id)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<TenantQuery>,
) -> Result<Json<PipelineRun>, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    Ok(Json(pipelines::run(&state, &caller, &tenant, &name, &id).await?))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TriggerView {
    /// `started`, `coalesced` (folded into the active run) or `duplicate`.
    pub outcome: String,
    pub run: String,
}

impl From<Triggered> for TriggerView {
    fn from(outcome: Triggered) -> Self {
        match outcome {
            Triggered::Started(run) => TriggerView { outcome: "started".into(), run: run.id },
            Triggered::Coalesced(run) => TriggerView { outcome: "coalesced".into(), run },
            Triggered::Duplicate(run) => TriggerView { outcome: "duplicate".into(), run },
        }
    }
}

#[utoipa::path(post, path = "/api/v1/pipelines/{name}/runs", tag = "pipelines", params(("name" = String, Path), TenantQuery),
    responses((status = 202, body = TriggerView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn trigger(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<TenantQuery>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    let view = TriggerView::from(pipelines::trigger(&state, &caller, &tenant, &name).await?);
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}
