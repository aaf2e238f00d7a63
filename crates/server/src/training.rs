//! Training runs as jobs: `training.tokenizer` learns a BPE tokenizer from a dataset version's
//! text column; `training.pretrain` also trains a Llama on it. The loop itself is
//! `factory_train`; this module feeds it governed text, stores what it produces (metrics,
//! checkpoints, the final artifacts) and resumes a run from its last checkpoint when the job
//! is claimed again after its worker died.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use factory_core::{Action, Principal};
use factory_model::gguf::{self, GgufVocabulary};
use factory_model::{Llama, LlamaConfig};
use factory_objects::ObjectDigest;
use factory_store::jobs::Job;
use factory_store::runs::RunCheckpoint;
use factory_tokenizer::Tokenizer;
use factory_train::{Checkpoint, Control, EvalMetrics, Initial, Outcome, StepMetrics, TrainObserver};
use tokio::sync::watch;

use crate::registry;
use crate::resident::ResidentSampler;
use crate::service::datasets::shard_texts;
use crate::service::formats;
use crate::service::models::{self, draft_from_run};
use crate::service::runs::{BaseModel, RunSpec, RUN_KINDS, TOKENIZER_KIND};
use crate::serving::gguf_tokenizer;
use crate::state::AppState;
use crate::workers::{JobControl, JobError, JobHandler};

pub struct TrainingHandler {
    pub state: AppState,
    pub kind: &'static str,
}

fn failed(error: impl std::fmt::Display) -> JobError {
    JobError::Failed(error.to_string())
}

impl TrainingHandler {
    async fn fetch(&self, digest: &str) -> Result<Bytes, JobError> {
        let digest: ObjectDigest = digest.parse().map_err(failed)?;
        self.state.objects.get(&digest).await.map_err(failed)
    }

    async fn texts(&self, spec: &RunSpec) -> Result<Vec<String>, JobError> {
        let texts = shard_texts(&self.state, &spec.shards, &spec.text_column).await.map_err(failed)?;
        if texts.is_empty() {
            return Err(failed("the dataset version has no text to train on"));
        }
        Ok(texts)
    }

    async fn store(&self, job: &Job, bytes: Vec<u8>) -> Result<String, JobError> {
        let digest = self.state.objects.put_bytes(Bytes::from(bytes)).await.map_err(failed)?.to_string();
        self.state
            .store
            .reference_artifacts(&job.tenant, &job.id, std::slice::from_ref(&digest))
            .await
            .map_err(failed)?;
        Ok(digest)
    }

    /// The run's tokenizer: the one it stored on an earlier attempt (a resumed run must keep
    /// its vocabulary), else a new one trained now and stored before any training step.
    async fn tokenizer(
        &self,
        job: &Job,
        spec: &RunSpec,
        texts: &Arc<Vec<String>>,
    ) -> Result<(Tokenizer, String), JobError> {
        let reused = match &spec.base {
            Some(base) => Some(base.tokenizer.clone()),
            None => self
                .state
                .store
                .run_metric(&job.id, "tokenizer", 0)
                .await
                .map_err(failed)?
                .map(|stored| stored.metrics["digest"].as_str().unwrap_or_default().to_string()),
        };
        if let Some(digest) = reused {
            let bytes = self.fetch(&digest).await?;
            let tokenizer = Tokenizer::from_json(&String::from_utf8_lossy(&bytes)).map_err(failed)?;
            return Ok((tokenizer, digest));
        }
        let (settings, texts) = (spec.tokenizer.clone(), texts.clone());
        let tokenizer = tokio::task::spawn_blocking(move || Tokenizer::train(&settings, texts.iter().cloned()))
            .await
            .map_err(failed)?
            .map_err(failed)?;
        let digest = self.store(job, tokenizer.to_json().map_err(failed)?.into_bytes()).await?;
        let record = serde_json::json!({ "digest": digest, "vocab_size": tokenizer.vocab_size() });
        self.state.store.record_run_metrics(&job.id, "tokenizer", &[(0, record)]).await.map_err(failed)?;
        Ok((tokenizer, digest))
    }

    /// A GGUF base (the file the run pinned, read from a verified spool file) with its matrices
    /// frozen in their blocks, and the tokenizer its vocabulary makes.
    async fn frozen_base(&self, spec: &RunSpec) -> Result<FrozenBase, JobError> {
        let base = spec.base.as_ref().ok_or_else(|| failed("a frozen base needs a base model"))?;
        let digest: ObjectDigest = base.weights.parse().map_err(failed)?;
        let file =
            registry::spool_object(&self.state.objects, &digest, None, registry::GGUF_FILE, self.state.spool_dir())
                .await
                .map_err(failed)?;
        tokio::task::spawn_blocking(move || {
            let (model, inspected) = gguf::read_frozen(&mut std::io::BufReader::new(file)).map_err(failed)?;
            let tokenizer = gguf_tokenizer(&inspected.summary, &inspected.vocabulary).map_err(failed)?;
            let separator = inspected.summary.tokenizer.eos;
            Ok(FrozenBase { model: Box::new(model), tokenizer, separator, vocabulary: GgufVocabulary::of(inspected) })
        })
        .await
        .map_err(failed)?
    }

    async fn pretrain(
        &self,
        job: &Job,
        spec: RunSpec,
        texts: Arc<Vec<String>>,
        control: JobControl,
    ) -> Result<serde_json::Value, JobError> {
        let settings = spec.train.clone().unwrap_or_default();
        let (config, initial, tokenizer, tokenizer_digest, separator, vocabulary) = match &spec.base {
            Some(base) if base.gguf => {
                let frozen = self.frozen_base(&spec).await?;
                let config = frozen.model.config.clone();
                let initial = Start::Frozen(frozen.model);
                (config, initial, frozen.tokenizer, base.tokenizer.clone(), frozen.separator, Some(frozen.vocabulary))
            }
            base => {
                let (tokenizer, tokenizer_digest) = self.tokenizer(job, &spec, &texts).await?;
                let separator = tokenizer.token_id(factory_tokenizer::END_OF_TEXT);
                let (config, initial) = match base {
                    Some(base) => {
                        let bytes = self.fetch(&base.config).await?;
                        let config = LlamaConfig::from_json(&String::from_utf8_lossy(&bytes)).map_err(failed)?;
                        (config, Start::Safetensors(self.fetch(&base.weights).await?.to_vec()))
                    }
                    None => (spec.model_config(tokenizer.vocab_size()).map_err(failed)?, Start::Fresh),
                };
                (config, initial, tokenizer, tokenizer_digest, separator, None)
            }
        };
        let resume = match self.state.store.latest_run_checkpoint(&job.id).await.map_err(failed)? {
            Some(stored) => Some(Checkpoint {
                step: stored.step as u64,
                weights: self.fetch(&stored.weights_digest).await?.to_vec(),
                optimizer: self.fetch(&stored.optimizer_digest).await?.to_vec(),
            }),
            None => None,
        };
        if let Some(checkpoint) = &resume {
            tracing::info!(run = %job.id, step = checkpoint.step, "resuming a run from its checkpoint");
        }
        // Set when this attempt is abandoned (shutdown, lost lease): the loop checkpoints and
        // stops, so the blocking thread never outlives the job it works for.
        let abandoned = Arc::new(AtomicBool::new(false));
        let _guard = AbandonOnDrop(abandoned.clone());
        let preempt_requested = control.preempt.clone();
        let memory = ResidentSampler::start();
        let sampled = memory.clone();
        let mut observer = RunObserver {
            memory,
            state: self.state.clone(),
            job: job.clone(),
            runtime: tokio::runtime::Handle::current(),
            cancel: control.cancel,
            preempt: control.preempt,
            abandoned,
            pending: Vec::new(),
        };
        let train_config = config.clone();
        let eval_sets = spec.eval_sets.clone();
        let seed = spec.seed;
        let outcome = tokio::task::spawn_blocking(move || {
            let tokens =
                factory_train::tokenize_separated(&tokenizer, texts.iter().cloned(), separator).map_err(failed)?;
            let data =
                factory_train::split_tokens(tokens, settings.validation_fraction, settings.seq_len).map_err(failed)?;
            let base_bytes;
            let initial = match initial {
                Start::Fresh => None,
                Start::Safetensors(bytes) => {
                    base_bytes = bytes;
                    Some(Initial::Safetensors(&base_bytes))
                }
                Start::Frozen(model) => Some(Initial::Frozen(model)),
            };
            let outcome =
                factory_train::train(&train_config, &settings, &data, seed, initial, resume.as_ref(), &mut observer)
                    .map_err(failed)?;
            observer.flush();
            let mut scores = Vec::new();
            if let Outcome::Finished { model, .. } = &outcome {
                for set in &eval_sets {
                    scores.push(factory_train::score_eval_set(model, &tokenizer, set).map_err(failed)?);
                }
            }
            Ok::<_, JobError>((outcome, data.train.len(), data.validation.len(), scores))
        })
        .await
        .map_err(failed)??;
        match outcome.0 {
            Outcome::Finished { model, eval } => {
                if !outcome.3.is_empty() {
                    let row = (eval.step as i64, serde_json::to_value(&outcome.3).unwrap_or_default());
                    self.state.store.record_run_metrics(&job.id, "eval_sets", &[row]).await.map_err(failed)?;
                }
                let memory_report = serde_json::json!({
                    "peak_resident_bytes": sampled.peak(),
                    "resident_at_start_bytes": sampled.at_start(),
                    "frozen_base_bytes": model.frozen_bytes(),
                    "trainable_parameters": model.adapters.as_ref()
                        .map_or_else(|| model.weights.parameter_count(), |adapters| adapters.parameter_count()),
                });
                let base_reference = spec.base.as_ref().map(BaseModel::reference).unwrap_or_default();
                let adapter = match &model.adapters {
                    Some(adapters) => {
                        let adapter_config = adapters.config.adapter_config_json(&base_reference);
                        let adapter_config = serde_json::to_vec_pretty(&adapter_config).map_err(failed)?;
                        Some((adapters.to_safetensors().map_err(failed)?, adapter_config))
                    }
                    None => None,
                };
                let mut artifacts = match vocabulary {
                    // A frozen quantized base: the registered model is a GGUF file, each adapted
                    // matrix merged and quantized again to its own type.
                    Some(vocabulary) => {
                        let dir = self.state.spool_dir();
                        let title = spec.register.as_ref().map_or(base_reference.clone(), |r| r.name.clone());
                        let (file, summary) = tokio::task::spawn_blocking(move || {
                            formats::written(dir, |out| gguf::write_merged(out, &model, &title, &vocabulary))
                        })
                        .await
                        .map_err(failed)?
                        .map_err(failed)?;
                        let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
                        let receipt = self.state.objects.put_stream(stream).await.map_err(failed)?;
                        let digest = receipt.digest.to_string();
                        self.state
                            .store
                            .reference_artifacts(&job.tenant, &job.id, std::slice::from_ref(&digest))
                            .await
                            .map_err(failed)?;
                        serde_json::json!({ "gguf": digest, "gguf_summary": summary })
                    }
                    // LoRA on a dense base: the registered weights are the base with the adapters
                    // merged (servable as is); the adapters themselves are kept beside them.
                    None => {
                        let weights = match &model.adapters {
                            Some(adapters) => adapters.merge_into(&model.weights).map_err(failed)?,
                            None => model.weights,
                        };
                        let weights = self.store(job, weights.to_safetensors().map_err(failed)?).await?;
                        let config_digest = self.store(job, config.to_json().into_bytes()).await?;
                        serde_json::json!({ "weights": weights, "config": config_digest, "tokenizer": tokenizer_digest })
                    }
                };
                if let Some((adapter, adapter_config)) = adapter {
                    artifacts["adapter"] = self.store(job, adapter).await?.into();
                    artifacts["adapter_config"] = self.store(job, adapter_config).await?.into();
                }
                let mut result = serde_json::json!({
                    "artifacts": artifacts,
                    "parameters": config.parameter_count(),
                    "train_tokens": outcome.1,
                    "validation_tokens": outcome.2,
                    "eval": eval,
                    "eval_sets": outcome.3,
                    "memory": memory_report,
                });
                if let Some(register) = &spec.register {
                    let principal = spec.requested_by.clone().unwrap_or_else(Principal::system);
                    let draft = draft_from_run(&self.state, &job.tenant, &spec, &job.id, &result, register)
                        .await
                        .map_err(failed)?;
                    let (version, _) = models::register(&self.state, &principal, &job.id, Action::ModelRegister, draft)
                        .await
                        .map_err(|e| failed(format!("registering {}: {e}", register.name)))?;
                    result["model"] = serde_json::json!({ "name": version.name, "version": version.version });
                }
                Ok(result)
            }
            Outcome::Stopped { .. } => Err(JobError::Cancelled),
            // Asked to yield: the checkpoint is stored, the job waits in the queue again.
            Outcome::Preempted { step } if *preempt_requested.borrow() => {
                tracing::info!(run = %job.id, step, "yielded the worker to higher-priority work");
                Err(JobError::Preempted)
            }
            Outcome::Preempted { step } => {
                Err(failed(format!("stopped after step {step} (shutdown or lost lease); resumes from its checkpoint")))
            }
        }
    }
}

/// Where a run's weights start.
enum Start {
    Fresh,
    /// A dense base's `model.safetensors`.
    Safetensors(Vec<u8>),
    /// A GGUF base, frozen in its blocks.
    Frozen(Box<Llama>),
}

struct FrozenBase {
    model: Box<Llama>,
    tokenizer: Tokenizer,
    /// The vocabulary's end of sequence, which ends each document.
    separator: Option<u32>,
    vocabulary: GgufVocabulary,
}

struct AbandonOnDrop(Arc<AtomicBool>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl JobHandler for TrainingHandler {
    fn kind(&self) -> &'static str {
        self.kind
    }

    async fn run(&self, job: &Job, control: JobControl) -> Result<serde_json::Value, JobError> {
        let spec: RunSpec =
            serde_json::from_value(job.payload.clone()).map_err(|e| failed(format!("run payload: {e}")))?;
        // An earlier attempt registered the model and died before the job was marked done.
        if let Some(version) = self.state.store.model_version_of_run(&job.id).await.map_err(failed)? {
            return Ok(serde_json::json!({
                "model": { "name": version.name, "version": version.version },
                "note": "registered by an earlier attempt of this run",
            }));
        }
        let texts = Arc::new(self.texts(&spec).await?);
        if self.kind == TOKENIZER_KIND {
            let (tokenizer, digest) = self.tokenizer(job, &spec, &texts).await?;
            return Ok(serde_json::json!({
                "artifacts": { "tokenizer": digest },
                "vocab_size": tokenizer.vocab_size(),
                "documents": texts.len(),
            }));
        }
        self.pretrain(job, spec, texts, control).await
    }
}

/// Stores metrics and checkpoints as the loop reports them (from the blocking training thread,
/// so it drives the async store through the runtime handle).
struct RunObserver {
    memory: ResidentSampler,
    state: AppState,
    job: Job,
    runtime: tokio::runtime::Handle,
    cancel: watch::Receiver<bool>,
    preempt: watch::Receiver<bool>,
    abandoned: Arc<AtomicBool>,
    pending: Vec<(i64, serde_json::Value)>,
}

impl RunObserver {
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let rows = std::mem::take(&mut self.pending);
        if let Err(error) = self.runtime.block_on(self.state.store.record_run_metrics(&self.job.id, "train", &rows)) {
            tracing::warn!(%error, run = %self.job.id, "could not record training metrics");
        }
    }
}

impl TrainObserver for RunObserver {
    fn on_step(&mut self, metrics: &StepMetrics) -> Control {
        let mut row = serde_json::to_value(metrics).unwrap_or_default();
        row["peak_resident_bytes"] = self.memory.peak().into();
        self.pending.push((metrics.step as i64, row));
        if self.pending.len() >= 10 {
            self.flush();
        }
        if *self.cancel.borrow() {
            Control::Stop
        } else if self.abandoned.load(Ordering::SeqCst) || *self.preempt.borrow() {
            Control::Checkpoint
        } else {
            Control::Continue
        }
    }

    fn on_eval(&mut self, metrics: &EvalMetrics) {
        self.flush();
        let row = (metrics.step as i64, serde_json::to_value(metrics).unwrap_or_default());
        if let Err(error) = self.runtime.block_on(self.state.store.record_run_metrics(&self.job.id, "eval", &[row])) {
            tracing::warn!(%error, run = %self.job.id, "could not record evaluation metrics");
        }
    }

    fn on_checkpoint(&mut self, checkpoint: Checkpoint) -> Result<(), String> {
        self.flush();
        let state = self.state.clone();
        let job = self.job.clone();
        self.runtime.block_on(async move {
            let weights = state.objects.put_bytes(Bytes::from(checkpoint.weights)).await.map_err(|e| e.to_string())?;
            let optimizer =
                state.objects.put_bytes(Bytes::from(checkpoint.optimizer)).await.map_err(|e| e.to_string())?;
            let record = RunCheckpoint {
                step: checkpoint.step as i64,
                weights_digest: weights.to_string(),
                optimizer_digest: optimizer.to_string(),
                created_at: factory_core::time::now_millis(),
            };
            state.store.record_run_checkpoint(&job.tenant, &job.id, &record).await.map_err(|e| e.to_string())
        })
    }
}

/// Adds the training job kinds to a worker pool.
pub fn with_training_handlers(mut pool: crate::workers::WorkerPool, state: &AppState) -> crate::workers::WorkerPool {
    for kind in RUN_KINDS {
        pool.handlers.insert(kind, Arc::new(TrainingHandler { state: state.clone(), kind }));
    }
    pool
}
