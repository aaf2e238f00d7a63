//! Training runs as a use case: create one on a governed dataset version. A run is a job
//! (`training.tokenizer`, `training.pretrain` or `training.finetune`) whose payload, the
//! [`RunSpec`], pins the exact shards it reads and the verified digests of any base model;
//! creating it needs the right to read the dataset's rows and to enqueue, and a run that will
//! register its model checks at once that it may.

use factory_core::{AccessRequest, Action, Resource, TenantName};
use factory_model::{gguf, LlamaConfig};
use factory_store::jobs::{Job, NewJob};
use factory_store::Event;
use factory_tokenizer::BpeSettings;
use factory_train::{EvalSet, TrainSettings};
use serde::Deserialize;

use super::access::{authorize_as, hide_foreign, site_facts, tenant_of};
pub use super::run_spec::{
    BaseModel, ComputeRequest, ModelSpec, RegisterSpec, RunSpec, FINETUNE_KIND, PRETRAIN_KIND, RUN_KINDS,
    TOKENIZER_KIND,
};
use super::{datasets, jobs, models, Recorded};
use crate::caller::Caller;
use crate::registry::{self, GGUF_FILE};
use crate::service_error::{ErrorKind, ServiceError};
use crate::state::AppState;

/// What kind of run: a tokenizer only, a model from scratch, or a fine-tune of a registered one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    Tokenizer,
    Pretrain,
    Finetune,
}

impl RunKind {
    /// `tokenizer`, `pretrain` or `finetune`, as requests name it.
    pub fn parse(name: &str) -> Result<Self, ServiceError> {
        match name {
            "tokenizer" => Ok(RunKind::Tokenizer),
            "pretrain" => Ok(RunKind::Pretrain),
            "finetune" => Ok(RunKind::Finetune),
            other => Err(ServiceError::invalid(format!("kind: {other:?} is not tokenizer, pretrain or finetune"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RunKind::Tokenizer => "tokenizer",
            RunKind::Pretrain => "pretrain",
            RunKind::Finetune => "finetune",
        }
    }

    /// The job kind that runs it.
    pub fn job_kind(self) -> &'static str {
        match self {
            RunKind::Tokenizer => TOKENIZER_KIND,
            RunKind::Pretrain => PRETRAIN_KIND,
            RunKind::Finetune => FINETUNE_KIND,
        }
    }
}

/// How a run trains, beyond what it trains on: what a pipeline's step may set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunOptions {
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub priority: i64,
    pub tokenizer: Option<BpeSettings>,
    pub model: Option<ModelSpec>,
    pub train: Option<TrainSettings>,
    pub tokenizer_from: Option<String>,
    pub eval_sets: Option<Vec<EvalSet>>,
    #[serde(default)]
    pub compute: Option<ComputeRequest>,
}

/// A run to create.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub kind: RunKind,
    pub dataset: String,
    pub version: i64,
    /// Platform callers name the tenant; tenant callers act in their own.
    pub tenant: Option<String>,
    pub options: RunOptions,
    /// finetune: the registered model to start from, `NAME@VERSION` or `NAME@ALIAS`.
    pub base: Option<String>,
    pub register: Option<RegisterSpec>,
}

/// Creates a run: validates it whole, pins what it reads, and enqueues its job in one governed
/// change (`run.created`).
pub async fn create(state: &AppState, caller: &Caller, run: NewRun) -> Result<Recorded<Job>, ServiceError> {
    let NewRun { kind, dataset, version, tenant, options, base, register } = run;
    if (kind == RunKind::Finetune) != base.is_some() {
        return Err(ServiceError::invalid("base: a finetune run names its base model, and only a finetune run does"));
    }
    if kind == RunKind::Tokenizer && (register.is_some() || options.eval_sets.is_some()) {
        return Err(ServiceError::invalid("register, eval_sets: a tokenizer run trains no model"));
    }
    if options.train.as_ref().is_some_and(|t| t.lora.is_some()) && kind != RunKind::Finetune {
        return Err(ServiceError::invalid("train.lora: adapters fine-tune a base model; use kind finetune"));
    }
    jobs::check_priority(options.priority)?;
    if let Some(compute) = &options.compute {
        compute.validate().map_err(ServiceError::invalid)?;
    }
    let eval_sets = options.eval_sets.unwrap_or_default();
    factory_train::validate_eval_sets(&eval_sets).map_err(ServiceError::invalid)?;
    let tenant = tenant_of(caller, tenant.as_deref())?;
    let tokenizer = options.tokenizer.unwrap_or_else(|| BpeSettings::new(1024));
    tokenizer.validate().map_err(|e| ServiceError::invalid(format!("tokenizer: {e}")))?;
    let train = options.train.unwrap_or_default();
    train.validate().map_err(|e| ServiceError::invalid(format!("train: {e}")))?;

    // Training reads every row: the caller must be allowed to read the version's rows.
    let dataset = datasets::find_dataset_for(state, caller, &tenant, &dataset).await?;
    let manifest = datasets::load_manifest(state, &dataset, version).await?.manifest;
    let raw = !manifest.raw_pii_columns().is_empty();
    datasets::authorize_on(state, caller, &dataset, Action::DatasetReadRows, &[("raw_pii", raw)]).await?;
    let text_column = manifest
        .text_column
        .clone()
        .ok_or_else(|| ServiceError::invalid("dataset: the version was ingested without a text_column to train on"))?;
    let shards = manifest.shard_digests();
    let base = match &base {
        Some(reference) => {
            let (base, max_positions) = base_model(state, caller, &tenant, reference).await?;
            if base.gguf && train.lora.is_none() {
                return Err(ServiceError::invalid(format!(
                    "train.lora: {reference} is a quantized GGUF model; its base stays frozen and only adapters train"
                )));
            }
            if train.seq_len > max_positions {
                return Err(ServiceError::invalid(format!(
                    "train.seq_len: {} exceeds the base model's max_position_embeddings {max_positions}",
                    train.seq_len
                )));
            }
            Some(base)
        }
        None => None,
    };
    let tokenizer_digest = match &options.tokenizer_from {
        Some(_) if kind != RunKind::Pretrain => {
            return Err(ServiceError::invalid("tokenizer_from: only a pretrain run takes another model's tokenizer"))
        }
        Some(reference) => match base_model(state, caller, &tenant, reference).await?.0 {
            base if base.gguf => {
                return Err(ServiceError::invalid(format!(
                    "tokenizer_from: {reference} is a GGUF model; its vocabulary trains only with its own weights"
                )))
            }
            base => Some(base.tokenizer),
        },
        None => None,
    };
    let spec = RunSpec {
        dataset: dataset.name.clone(),
        version,
        text_column,
        shards,
        seed: options.seed,
        tokenizer,
        model: options.model,
        train: Some(train.clone()),
        jurisdiction: dataset.jurisdiction.clone(),
        classification: dataset.classification,
        base,
        tokenizer_digest,
        eval_sets,
        register,
        requested_by: Some(caller.principal.clone()),
        compute: options.compute,
    };
    if kind == RunKind::Pretrain {
        let config =
            spec.model_config(spec.tokenizer.vocab_size).map_err(|e| ServiceError::invalid(format!("model: {e}")))?;
        // Checked before anything is allocated: the worker would hold 16 bytes a parameter.
        let parameters = config.parameter_count() as u64;
        let most = state.config.jobs.max_model_parameters;
        if parameters > most {
            return Err(ServiceError::invalid(format!(
                "model: {parameters} parameters is more than this factory trains (jobs.max_model_parameters = {most})"
            )));
        }
    }
    // A run that will register its model checks now, not after hours of training, that the
    // residency its inputs give the model is allowed and that the caller may register it.
    let mut residency_inputs = vec![(&spec.jurisdiction, spec.classification)];
    if let Some(base) = &spec.base {
        residency_inputs.push((&base.jurisdiction, base.classification));
    }
    let (jurisdiction, classification) = factory_registry::strictest_residency(residency_inputs)
        .map_err(|e| ServiceError::new(ErrorKind::Forbidden, e.to_string()))?;
    if let Some(register) = &spec.register {
        models::valid_model_name(&register.name)?;
        let (allowed, storage) = site_facts(state, &tenant, &jurisdiction, factory_core::SiteKind::Storage).await?;
        let resource = Resource::model(&tenant, &register.name, classification, Some(&jurisdiction));
        let request = AccessRequest::new(&caller.principal, Action::ModelRegister, resource)
            .with_context("jurisdiction_allowed", allowed)
            .with_context("storage_site", storage);
        authorize_as(state, caller, &request, &tenant).await?;
    }

    let id = factory_core::secrets::new_id("run");
    let request = AccessRequest::new(&caller.principal, Action::JobEnqueue, Resource::job(&id, &tenant));
    let mut change = state
        .store
        .begin_change(state.pdp.as_ref(), request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(caller, Some(&tenant), e))?;
    let payload = serde_json::to_value(&spec).unwrap_or_default();
    let job = change
        .enqueue_job(&NewJob {
            kind: kind.job_kind().to_string(),
            payload,
            priority: options.priority,
            max_attempts: state.config.jobs.max_attempts,
        })
        .await?;
    let event = serde_json::json!({
        "run": job.id, "tenant": tenant, "kind": kind.name(), "dataset": dataset.name, "version": version,
        "classification": dataset.classification, "jurisdiction": dataset.jurisdiction, "seed": options.seed,
    });
    let committed = change.commit(event.clone(), Event::new("run.created", event)).await?;
    Ok(Recorded { value: job, committed })
}

/// The job that is run `id` as `caller` may read it; other jobs are not runs.
pub async fn find(state: &AppState, caller: &Caller, id: &str) -> Result<Job, ServiceError> {
    let job = run_job(state, id).await?;
    let request = AccessRequest::new(&caller.principal, Action::JobRead, Resource::job(id, &job.tenant));
    authorize_as(state, caller, &request, &job.tenant).await?;
    Ok(job)
}

/// Run `id` with its metrics after step `after`: at most `limit` rows (default 1000, at most
/// 10,000), as the caller may read them.
pub async fn metrics(
    state: &AppState,
    caller: &Caller,
    id: &str,
    after: i64,
    limit: Option<i64>,
) -> Result<(Job, Vec<factory_store::runs::RunMetric>), ServiceError> {
    let job = find(state, caller, id).await?;
    let limit = limit.unwrap_or(1000).clamp(1, 10_000);
    let metrics = state.store.run_metrics(id, after, limit).await?;
    Ok((job, metrics))
}

/// Run `id`'s latest checkpoint, as the caller may read the run.
pub async fn latest_checkpoint(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Option<factory_store::runs::RunCheckpoint>, ServiceError> {
    find(state, caller, id).await?;
    Ok(state.store.latest_run_checkpoint(id).await?)
}

/// Whether a job of `kind` is a training run (with metrics and checkpoints).
pub fn is_run(kind: &str) -> bool {
    RUN_KINDS.contains(&kind)
}

/// The job that is run `id`, unauthorized (cancelling authorizes on its own).
pub async fn run_job(state: &AppState, id: &str) -> Result<Job, ServiceError> {
    state.store.job(id).await?.filter(|job| is_run(&job.kind)).ok_or_else(ServiceError::no_such_resource)
}

/// Resolves and verifies a fine-tune's base model, pinning the digests the run will read.
async fn base_model(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    reference: &str,
) -> Result<(BaseModel, usize), ServiceError> {
    let (name, version) = models::split_reference(reference)?;
    let version = models::resolve(state, caller, tenant, name, version, Action::ModelRead).await?;
    // One pass reads and checks every file, keeping the config the run is sized by.
    let failed = |error: ServiceError| {
        ServiceError::new(
            ErrorKind::VerificationFailed,
            format!("base model {reference} fails verification: {}", error.message),
        )
    };
    let (manifest, _) = models::open_manifest(state, &version).await.map_err(failed)?;
    if manifest.file(GGUF_FILE).is_some() {
        // Read to a verified spool file, never whole into memory; its header gives the context.
        let file =
            registry::fetch_to_file(&state.objects, &manifest, GGUF_FILE, state.spool_dir()).await.map_err(failed)?;
        let inspected = tokio::task::spawn_blocking(move || gguf::inspect(&mut std::io::BufReader::new(file)))
            .await
            .map_err(ServiceError::fault)?
            .map_err(|e| ServiceError::invalid(format!("base model {reference}: {e}")))?;
        let digest = manifest.file(GGUF_FILE).map(|f| f.digest.clone()).unwrap_or_default();
        let base = BaseModel {
            name: version.name.clone(),
            version: version.version,
            jurisdiction: version.jurisdiction.clone(),
            classification: version.classification,
            weights: digest.clone(),
            config: digest.clone(),
            tokenizer: digest,
            gguf: true,
        };
        let context = usize::try_from(inspected.summary.hyper.context_length).unwrap_or(usize::MAX);
        return Ok((base, context));
    }
    let mut config = None;
    for file in &manifest.files {
        let bytes = models::fetch_file(state, &manifest, &file.path).await.map_err(failed)?;
        if file.path == "config.json" {
            config = Some(bytes);
        }
    }
    let digest = |path: &str| {
        manifest
            .file(path)
            .map(|f| f.digest.clone())
            .ok_or_else(|| ServiceError::invalid(format!("base model {reference} has no {path}")))
    };
    let config = config.ok_or_else(|| ServiceError::invalid(format!("base model {reference} has no config.json")))?;
    let config = LlamaConfig::from_json(&String::from_utf8_lossy(&config))
        .map_err(|e| ServiceError::invalid(format!("base model {reference}: {e}")))?;
    let base = BaseModel {
        name: version.name.clone(),
        version: version.version,
        jurisdiction: version.jurisdiction.clone(),
        classification: version.classification,
        weights: digest("model.safetensors")?,
        config: digest("config.json")?,
        tokenizer: digest("tokenizer.json")?,
        gguf: false,
    };
    Ok((base, config.max_position_embeddings))
}
