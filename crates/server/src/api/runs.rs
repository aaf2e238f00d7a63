//! Training runs: create one on a governed dataset version, follow its metrics, cancel it.
//! A run is a job (`training.tokenizer` or `training.pretrain`) whose payload pins the exact
//! shards it reads; creating it needs the right to read the dataset's rows and to enqueue.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use factory_tokenizer::BpeSettings;
use factory_train::{EvalSet, TrainSettings};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::committed_response;
use super::jobs::JobView;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use crate::service::runs::{self, ComputeRequest, ModelSpec, NewRun, RegisterSpec, RunKind, RunOptions};
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    /// tokenizer, pretrain or finetune.
    pub kind: String,
    pub dataset: String,
    pub version: i64,
    /// Platform keys name the tenant.
    pub tenant: Option<String>,
    /// Fixes initialisation and batch order: the same seed gives the same losses.
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub priority: i64,
    /// `{"vocab_size": 1024}` (default 1024).
    #[schema(value_type = Option<Object>)]
    pub tokenizer: Option<BpeSettings>,
    /// `{"preset": "tiny"}` (tiny, small, base, 125m) or `{"config": {...config.json...}}`.
    #[schema(value_type = Option<Object>)]
    pub model: Option<ModelSpec>,
    /// steps, seq_len, batch_size, grad_accum, learning_rate, warmup_steps, eval_every,
    /// checkpoint_every, ... (see factory_train::TrainSettings).
    #[schema(value_type = Option<Object>)]
    pub train: Option<TrainSettings>,
    /// finetune: the registered model to start from, `NAME@VERSION` or `NAME@ALIAS`. Its
    /// tokenizer and architecture are kept.
    pub base: Option<String>,
    /// pretrain: use this registered model's tokenizer (`NAME@VERSION` or `NAME@ALIAS`)
    /// instead of training one.
    pub tokenizer_from: Option<String>,
    /// Prompts with expected answers, scored (exact match, contains) on the final model.
    #[schema(value_type = Option<Vec<Object>>)]
    pub eval_sets: Option<Vec<EvalSet>>,
    /// Register the result as the next version of this model when the run succeeds.
    #[schema(value_type = Option<Object>)]
    pub register: Option<RegisterSpec>,
    /// `{"cpus": 4, "memory_mb": 8192, "gpus": 1}`: what the run asks of its machine, where the
    /// executor can give it (Slurm), each at most the compute pool's.
    #[schema(value_type = Option<Object>)]
    pub compute: Option<ComputeRequest>,
}

#[utoipa::path(post, path = "/api/v1/runs", tag = "training", request_body = CreateRun,
    responses((status = 201, body = JobView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateRun>,
) -> Result<Response, ApiError> {
    let run = NewRun {
        kind: RunKind::parse(&body.kind)?,
        dataset: body.dataset,
        version: body.version,
        tenant: body.tenant,
        options: RunOptions {
            seed: body.seed,
            priority: body.priority,
            tokenizer: body.tokenizer,
            model: body.model,
            train: body.train,
            tokenizer_from: body.tokenizer_from,
            eval_sets: body.eval_sets,
            compute: body.compute,
        },
        base: body.base,
        register: body.register,
    };
    let created = runs::create(&state, &caller, run).await?;
    Ok(committed_response(StatusCode::CREATED, Json(JobView::from(created.value)), created.committed))
}

#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "training", params(("id" = String, Path)),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobView>, ApiError> {
    Ok(Json(runs::find(&state, &caller, &id).await?.into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct MetricsQuery {
    /// Only steps after this one (for following a run: pass the last step seen).
    #[serde(default)]
    pub after: i64,
    /// At most this many rows (default 1000).
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunMetrics {
    pub run: String,
    pub state: String,
    #[schema(value_type = Vec<Object>)]
    pub metrics: Vec<factory_store::runs::RunMetric>,
}

#[utoipa::path(get, path = "/api/v1/runs/{id}/metrics", tag = "training", params(("id" = String, Path), MetricsQuery),
    responses((status = 200, body = RunMetrics), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn metrics(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<MetricsQuery>,
) -> Result<Json<RunMetrics>, ApiError> {
    let (job, metrics) = runs::metrics(&state, &caller, &id, query.after, query.limit).await?;
    Ok(Json(RunMetrics { run: id, state: job.state.as_str().to_string(), metrics }))
}

#[utoipa::path(post, path = "/api/v1/runs/{id}/cancel", tag = "training", params(("id" = String, Path)),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let job = runs::run_job(&state, &id).await?;
    super::jobs::cancel_job(&state, &caller, job).await
}
