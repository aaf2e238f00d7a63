//! Operations endpoints: liveness, readiness, Prometheus metrics and the OpenAPI document.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use factory_core::{AccessRequest, Action, Resource};

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiQuery, Caller};
use crate::service::orphans::SweepReport;
use crate::state::AppState;

#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process is alive")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "The metadata store answers"), (status = 503, description = "Not ready")))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if state.store.ping().await {
        Ok(Json(serde_json::json!({ "status": "ready" })))
    } else {
        Err(ApiError::overloaded("the metadata store does not answer", 5))
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn metrics(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    // The series name every tenant's deployments and upstream URLs: an operator's credential
    // (a platform admin's or auditor's key, as a scraper's bearer token) reads them, no tenant.
    let request = AccessRequest::new(&caller.principal, Action::MetricsRead, Resource::platform());
    state.store.authorize(state.pdp.as_ref(), &request, &caller.request_id).await?;
    if let Ok(size) = state.store.audit_size().await {
        state.metrics.audit_log_size.set(size as i64);
    }
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.render(),
    )
        .into_response())
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SweepQuery {
    /// Only objects older than this many seconds are collected (default: `objects.orphan_grace_secs`).
    pub grace_secs: Option<u64>,
}

#[utoipa::path(post, path = "/api/v1/objects/sweep", tag = "operations", params(SweepQuery),
    responses((status = 200, body = SweepReport), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn sweep_orphans(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<SweepQuery>,
) -> Result<Json<SweepReport>, ApiError> {
    let grace = query.grace_secs.map(std::time::Duration::from_secs).unwrap_or(state.config.orphans.grace);
    let report = crate::service::orphans::sweep(&state, &caller.principal, &caller.request_id, grace, true).await?;
    Ok(Json(report))
}
