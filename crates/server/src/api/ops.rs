//! Operations endpoints: liveness, readiness, Prometheus metrics and the orphan sweep
//! (`service::ops` does the checking). The OpenAPI document is served beside them (`routes`).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiQuery, Caller};
use crate::service::{ops, orphans};
use crate::state::AppState;

#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process is alive")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "The metadata store answers"), (status = 503, description = "Not ready")))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    ops::ready(&state).await?;
    Ok(Json(serde_json::json!({ "status": "ready", "roles": state.config.server.roles.names() })))
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn metrics(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let exposition = ops::metrics(&state, &caller).await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        exposition,
    )
        .into_response())
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SweepQuery {
    /// Only objects older than this many seconds are collected (default: `objects.orphan_grace_secs`).
    pub grace_secs: Option<u64>,
}

/// What one sweep removed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SweepReport {
    /// Finished objects that nothing referenced.
    pub objects_deleted: u64,
    pub bytes_deleted: u64,
    /// Staging objects and partial uploads of interrupted writes.
    pub staging_deleted: u64,
    /// The deleted digests (the first 1000).
    pub digests: Vec<String>,
}

impl From<orphans::SweepReport> for SweepReport {
    fn from(report: orphans::SweepReport) -> Self {
        SweepReport {
            objects_deleted: report.objects_deleted,
            bytes_deleted: report.bytes_deleted,
            staging_deleted: report.staging_deleted,
            digests: report.digests,
        }
    }
}

#[utoipa::path(post, path = "/api/v1/objects/sweep", tag = "operations", params(SweepQuery),
    responses((status = 200, body = SweepReport), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn sweep_orphans(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<SweepQuery>,
) -> Result<Json<SweepReport>, ApiError> {
    let grace = query.grace_secs.map(std::time::Duration::from_secs);
    Ok(Json(ops::sweep_orphans(&state, &caller, grace).await?.into()))
}
