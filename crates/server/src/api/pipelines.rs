//! Pipelines over HTTP: declare (TOML body), list, show, trigger by hand, and follow runs.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use factory_core::{AccessRequest, Action, Resource, TenantName};
use factory_store::pipelines::{Pipeline, PipelineRun, Triggered};
use factory_store::Event;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::datasets::TenantQuery;
use super::tenant_of;
use super::{authorize_as, committed_response, hide_foreign};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiPath, ApiQuery, Caller};
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

async fn authorize(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    action: Action,
) -> Result<(), ApiError> {
    let request = AccessRequest::new(&caller.principal, action, Resource::pipeline(tenant, name));
    Ok(authorize_as(state, caller, &request, tenant).await?)
}

async fn find(state: &AppState, tenant: &TenantName, name: &str) -> Result<Pipeline, ApiError> {
    state
        .store
        .pipeline(tenant, name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("pipeline {name} does not exist")))
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
    super::valid_name::<factory_core::PipelineName>("name", &name)?;
    let request = AccessRequest::new(&caller.principal, Action::PipelineWrite, Resource::pipeline(&tenant, &name));
    // Who may declare pipelines here is decided before the declaration is read.
    authorize_as(&state, &caller, &request, &tenant).await?;
    let spec = crate::pipelines::parse(&source, &state.config.pipelines.webhooks)
        .map_err(|e| ApiError::invalid(format!("pipeline {name}: {e}")))?;
    // The same answer whether the variable exists or not: names of secrets are no oracle.
    for (index, step) in spec.steps.iter().enumerate() {
        if let Some(variable) = &step.secret_env {
            if !crate::egress::secret_granted(&state.config.secrets, tenant.as_str(), variable) {
                return Err(ApiError::invalid(format!(
                    "pipeline {name}: steps[{index}].secret_env: not granted to tenant {tenant} ([secrets])"
                )));
            }
        }
    }
    let spec = serde_json::to_value(&spec).unwrap_or_default();
    let mut change = state
        .store
        .begin_change(state.pdp.as_ref(), request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(&caller, Some(&tenant), e))?;
    let pipeline = change.put_pipeline(&tenant, &name, &source, &spec).await?;
    let details =
        serde_json::json!({ "tenant": tenant, "pipeline": name, "revision": pipeline.revision, "spec": spec });
    let committed = change.commit(details.clone(), Event::new("pipeline.updated", details)).await?;
    Ok(committed_response(StatusCode::OK, Json(PipelineView::from(pipeline)), committed))
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
    authorize(&state, &caller, &tenant, "*", Action::PipelineRead).await?;
    let pipelines = state.store.pipelines(Some(&tenant)).await?.into_iter().map(PipelineView::from).collect();
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
    authorize(&state, &caller, &tenant, &name, Action::PipelineRead).await?;
    Ok(Json(find(&state, &tenant, &name).await?.into()))
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
    authorize(&state, &caller, &tenant, &name, Action::PipelineRead).await?;
    find(&state, &tenant, &name).await?;
    Ok(Json(RunList { runs: state.store.pipeline_runs(&tenant, &name, 100).await? }))
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
    authorize(&state, &caller, &tenant, &name, Action::PipelineRead).await?;
    let run = state.store.pipeline_run(&id).await?.filter(|r| r.tenant == tenant.as_str() && r.pipeline == name);
    run.map(Json).ok_or_else(|| ApiError::not_found(format!("pipeline {name} has no run {id}")))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TriggerView {
    /// `started`, `coalesced` (folded into the active run) or `duplicate`.
    pub outcome: String,
    pub run: String,
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
    authorize(&state, &caller, &tenant, &name, Action::PipelineTrigger).await?;
    let pipeline = find(&state, &tenant, &name).await?;
    // A client retrying with the same request id starts one run; without an id of its own,
    // every trigger is new.
    let key = format!("manual:{}", caller.client_request_id.as_deref().unwrap_or(&caller.request_id));
    let trigger = serde_json::json!({ "kind": "manual", "by": caller.principal.id });
    let outcome = crate::pipelines::start(
        &state,
        &pipeline,
        &caller.principal,
        Action::PipelineTrigger,
        &caller.request_id,
        &key,
        trigger,
    )
    .await
    .map_err(|e| super::hide_foreign_refusal(&caller, Some(&tenant), e))?;
    let view = match outcome {
        Triggered::Started(run) => TriggerView { outcome: "started".into(), run: run.id },
        Triggered::Coalesced(run) => TriggerView { outcome: "coalesced".into(), run },
        Triggered::Duplicate(run) => TriggerView { outcome: "duplicate".into(), run },
    };
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}
