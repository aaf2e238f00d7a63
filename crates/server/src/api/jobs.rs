//! Jobs on the wire: enqueue, list, show, cancel (`service::jobs` does the checking). Workers
//! run them (see `workers.rs`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use factory_store::jobs::Job;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{committed_response, millis_to_text, parse_tenant};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, Caller};
use crate::service::jobs::{self, Enqueue};
use crate::service::Recorded;
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueJob {
    /// A job kind this factory has a handler for, e.g. `platform.sleep`.
    pub kind: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// Higher runs first among the tenant's own jobs; -100 to 100, default 0.
    #[serde(default)]
    pub priority: i64,
    /// Attempts before the job is declared dead; default from the `jobs.max_attempts` setting.
    pub max_attempts: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub id: String,
    pub tenant: String,
    pub kind: String,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    pub priority: i64,
    /// queued, running, succeeded, dead or cancelled.
    pub state: String,
    pub attempts: i64,
    pub max_attempts: i64,
    pub cancel_requested: bool,
    pub last_error: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    pub created_by: String,
    pub created_at: String,
    pub updated_at: String,
    /// Who holds the running attempt's lease: a worker (`host-pid/N`) or a Slurm job
    /// (`slurm:<id>@<node>`).
    pub worker: Option<String>,
    /// Where an outside executor ran the attempts: Slurm's job id, partition and node of the
    /// current one, and how earlier ones ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub placement: Option<serde_json::Value>,
}

impl From<Job> for JobView {
    fn from(job: Job) -> Self {
        JobView {
            id: job.id,
            tenant: job.tenant.to_string(),
            kind: job.kind,
            payload: job.payload,
            priority: job.priority,
            state: job.state.as_str().to_string(),
            attempts: job.attempts,
            max_attempts: job.max_attempts,
            cancel_requested: job.cancel_requested,
            last_error: job.last_error,
            result: job.result,
            created_by: job.created_by,
            created_at: millis_to_text(job.created_at),
            updated_at: millis_to_text(job.updated_at),
            worker: job.lease_owner,
            placement: job.placement,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
}

#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/jobs", tag = "jobs", request_body = EnqueueJob,
    params(("tenant" = String, Path, description = "tenant name")),
    responses((status = 201, body = JobView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn enqueue(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(tenant): ApiPath<String>,
    ApiJson(body): ApiJson<EnqueueJob>,
) -> Result<Response, ApiError> {
    let tenant = parse_tenant(&tenant)?;
    let job =
        Enqueue { kind: body.kind, payload: body.payload, priority: body.priority, max_attempts: body.max_attempts };
    let queued = jobs::enqueue(&state, &caller, &tenant, job).await?;
    Ok(committed_response(StatusCode::CREATED, Json(JobView::from(queued.value)), queued.committed))
}

#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/jobs", tag = "jobs",
    params(("tenant" = String, Path, description = "tenant name")),
    responses((status = 200, body = JobList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(tenant): ApiPath<String>,
) -> Result<Json<JobList>, ApiError> {
    let tenant = parse_tenant(&tenant)?;
    let jobs = jobs::list(&state, &caller, &tenant).await?;
    Ok(Json(JobList { jobs: jobs.into_iter().map(JobView::from).collect() }))
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    responses((status = 200, body = JobView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobView>, ApiError> {
    Ok(Json(jobs::show(&state, &caller, &id).await?.into()))
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    responses((status = 200, body = JobView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    Ok(cancelled(jobs::cancel_by_id(&state, &caller, &id).await?))
}

/// Requests cancellation of `job` as `caller` (also how a training run is cancelled).
pub(crate) async fn cancel_job(state: &AppState, caller: &Caller, job: Job) -> Result<Response, ApiError> {
    Ok(cancelled(jobs::cancel(state, caller, job).await?))
}

fn cancelled(cancelled: Recorded<Job>) -> Response {
    committed_response(StatusCode::OK, Json(JobView::from(cancelled.value)), cancelled.committed)
}
