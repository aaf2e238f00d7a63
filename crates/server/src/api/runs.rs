//! Training runs: create one on a governed dataset version, follow its metrics, cancel it.
//! A run is a job (`training.tokenizer` or `training.pretrain`) whose payload pins the exact
//! shards it reads; creating it needs the right to read the dataset's rows and to enqueue.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use factory_core::{AccessRequest, Action, Resource};
use factory_store::jobs::NewJob;
use factory_store::Event;
use factory_tokenizer::BpeSettings;
use factory_train::{EvalSet, TrainSettings};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::datasets;
use super::jobs::JobView;
use super::{committed_response, hide_foreign};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use crate::state::AppState;
use crate::training::{
    BaseModel, ModelSpec, RegisterSpec, RunSpec, FINETUNE_KIND, PRETRAIN_KIND, RUN_KINDS, TOKENIZER_KIND,
};

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
    let kind = match body.kind.as_str() {
        "tokenizer" => TOKENIZER_KIND,
        "pretrain" => PRETRAIN_KIND,
        "finetune" => FINETUNE_KIND,
        other => return Err(ApiError::invalid(format!("kind: {other:?} is not tokenizer, pretrain or finetune"))),
    };
    if (kind == FINETUNE_KIND) != body.base.is_some() {
        return Err(ApiError::invalid("base: a finetune run names its base model, and only a finetune run does"));
    }
    if kind == TOKENIZER_KIND && (body.register.is_some() || body.eval_sets.is_some()) {
        return Err(ApiError::invalid("register, eval_sets: a tokenizer run trains no model"));
    }
    if body.train.as_ref().is_some_and(|t| t.lora.is_some()) && kind != FINETUNE_KIND {
        return Err(ApiError::invalid("train.lora: adapters fine-tune a base model; use kind finetune"));
    }
    super::jobs::check_priority(body.priority)?;
    let eval_sets = body.eval_sets.unwrap_or_default();
    factory_train::validate_eval_sets(&eval_sets).map_err(ApiError::invalid)?;
    let tenant = datasets::tenant_of(&caller, body.tenant.as_deref())?;
    let tokenizer = body.tokenizer.unwrap_or_else(|| BpeSettings::new(1024));
    tokenizer.validate().map_err(|e| ApiError::invalid(format!("tokenizer: {e}")))?;
    let train = body.train.unwrap_or_default();
    train.validate().map_err(|e| ApiError::invalid(format!("train: {e}")))?;

    // Training reads every row: the caller must be allowed to read the version's rows.
    let dataset = datasets::find_dataset_for(&state, &caller, &tenant, &body.dataset).await?;
    let manifest = datasets::load_manifest(&state, &dataset, body.version).await?.manifest;
    let raw = !manifest.raw_pii_columns().is_empty();
    datasets::authorize_on(&state, &caller, &dataset, Action::DatasetReadRows, &[("raw_pii", raw)]).await?;
    let text_column = manifest
        .text_column
        .clone()
        .ok_or_else(|| ApiError::invalid("dataset: the version was ingested without a text_column to train on"))?;
    let shards = manifest.shard_digests();
    let base = match &body.base {
        Some(reference) => {
            let (base, max_positions) = base_model(&state, &caller, &tenant, reference).await?;
            if train.seq_len > max_positions {
                return Err(ApiError::invalid(format!(
                    "train.seq_len: {} exceeds the base model's max_position_embeddings {max_positions}",
                    train.seq_len
                )));
            }
            Some(base)
        }
        None => None,
    };
    let tokenizer_digest = match &body.tokenizer_from {
        Some(_) if kind != PRETRAIN_KIND => {
            return Err(ApiError::invalid("tokenizer_from: only a pretrain run takes another model's tokenizer"))
        }
        Some(reference) => Some(base_model(&state, &caller, &tenant, reference).await?.0.tokenizer),
        None => None,
    };
    let spec = RunSpec {
        dataset: dataset.name.clone(),
        version: body.version,
        text_column,
        shards,
        seed: body.seed,
        tokenizer,
        model: body.model,
        train: Some(train.clone()),
        jurisdiction: dataset.jurisdiction.clone(),
        classification: dataset.classification,
        base,
        tokenizer_digest,
        eval_sets,
        register: body.register,
        requested_by: Some(caller.principal.clone()),
    };
    if kind == PRETRAIN_KIND {
        spec.model_config(spec.tokenizer.vocab_size).map_err(|e| ApiError::invalid(format!("model: {e}")))?;
    }
    // A run that will register its model checks now, not after hours of training, that the
    // residency its inputs give the model is allowed and that the caller may register it.
    let mut residency_inputs = vec![(&spec.jurisdiction, spec.classification)];
    if let Some(base) = &spec.base {
        residency_inputs.push((&base.jurisdiction, base.classification));
    }
    let (jurisdiction, classification) = factory_registry::strictest_residency(residency_inputs)
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string()))?;
    if let Some(register) = &spec.register {
        super::models::valid_model_name(&register.name)?;
        let (allowed, storage) =
            crate::registry::site_facts(&state, &tenant, &jurisdiction, factory_core::SiteKind::Storage).await?;
        let resource = Resource::model(&tenant, &register.name, classification, Some(&jurisdiction));
        let request = AccessRequest::new(&caller.principal, Action::ModelRegister, resource)
            .with_context("jurisdiction_allowed", allowed)
            .with_context("storage_site", storage);
        super::authorize_as(&state, &caller, &request, &tenant).await?;
    }

    let id = factory_core::secrets::new_id("run");
    let request = AccessRequest::new(&caller.principal, Action::JobEnqueue, Resource::job(&id, &tenant));
    let mut change = state
        .store
        .begin_change(state.pdp.as_ref(), request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(&caller, Some(&tenant), e))?;
    let payload = serde_json::to_value(&spec).unwrap_or_default();
    let job = change
        .enqueue_job(&NewJob {
            kind: kind.to_string(),
            payload,
            priority: body.priority,
            max_attempts: state.config.jobs.max_attempts,
        })
        .await?;
    let event = serde_json::json!({
        "run": job.id, "tenant": tenant, "kind": body.kind, "dataset": dataset.name, "version": body.version,
        "classification": dataset.classification, "jurisdiction": dataset.jurisdiction, "seed": body.seed,
    });
    let committed = change.commit(event.clone(), Event::new("run.created", event)).await?;
    Ok(committed_response(StatusCode::CREATED, Json(JobView::from(job)), committed))
}

/// The job that is run `id`; other jobs are not runs.
async fn run_job(state: &AppState, id: &str) -> Result<factory_store::jobs::Job, ApiError> {
    state
        .store
        .job(id)
        .await?
        .filter(|job| RUN_KINDS.contains(&job.kind.as_str()))
        .ok_or_else(ApiError::no_such_resource)
}

async fn find_run(state: &AppState, caller: &Caller, id: &str) -> Result<factory_store::jobs::Job, ApiError> {
    let job = run_job(state, id).await?;
    let request = AccessRequest::new(&caller.principal, Action::JobRead, Resource::job(id, &job.tenant));
    super::authorize_as(state, caller, &request, &job.tenant).await?;
    Ok(job)
}

#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "training", params(("id" = String, Path)),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobView>, ApiError> {
    Ok(Json(find_run(&state, &caller, &id).await?.into()))
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
    let job = find_run(&state, &caller, &id).await?;
    let limit = query.limit.unwrap_or(1000).clamp(1, 10_000);
    let metrics = state.store.run_metrics(&id, query.after, limit).await?;
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
    let job = run_job(&state, &id).await?;
    super::jobs::cancel_job(&state, &caller, job).await
}

/// Resolves and verifies a fine-tune's base model, pinning the digests the run will read.
async fn base_model(
    state: &AppState,
    caller: &Caller,
    tenant: &factory_core::TenantName,
    reference: &str,
) -> Result<(BaseModel, usize), ApiError> {
    let (name, version) = super::models::split_reference(reference)?;
    let version = super::models::resolve(state, caller, tenant, name, version, Action::ModelRead).await?;
    // One pass reads and checks every file, keeping the config the run is sized by.
    let failed = |error: ApiError| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "verification_failed",
            format!("base model {reference} fails verification: {}", error.message),
        )
    };
    let (manifest, _) = crate::registry::open_manifest(state, &version).await.map_err(failed)?;
    let mut config = None;
    for file in &manifest.files {
        let bytes = crate::registry::fetch_file(state, &manifest, &file.path).await.map_err(failed)?;
        if file.path == "config.json" {
            config = Some(bytes);
        }
    }
    let digest = |path: &str| {
        manifest
            .file(path)
            .map(|f| f.digest.clone())
            .ok_or_else(|| ApiError::invalid(format!("base model {reference} has no {path}")))
    };
    let config = config.ok_or_else(|| ApiError::invalid(format!("base model {reference} has no config.json")))?;
    let config = factory_model::LlamaConfig::from_json(&String::from_utf8_lossy(&config))
        .map_err(|e| ApiError::invalid(format!("base model {reference}: {e}")))?;
    let base = BaseModel {
        name: version.name.clone(),
        version: version.version,
        jurisdiction: version.jurisdiction.clone(),
        classification: version.classification,
        weights: digest("model.safetensors")?,
        config: digest("config.json")?,
        tokenizer: digest("tokenizer.json")?,
    };
    Ok((base, config.max_position_embeddings))
}
