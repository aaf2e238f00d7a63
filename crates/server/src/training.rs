//! Training runs as jobs: `training.tokenizer` learns a BPE tokenizer from a dataset version's
//! text column; `training.pretrain` also trains a Llama on it. The loop itself is
//! `factory_train`; this module feeds it governed text, stores what it produces (metrics,
//! checkpoints, the final artifacts) and resumes a run from its last checkpoint when the job
//! is claimed again after its worker died.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use factory_model::LlamaConfig;
use factory_objects::ObjectDigest;
use factory_store::jobs::Job;
use factory_store::runs::RunCheckpoint;
use factory_tokenizer::{BpeSettings, Tokenizer};
use factory_train::{Checkpoint, Control, EvalMetrics, Outcome, StepMetrics, TrainObserver, TrainSettings};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::state::AppState;
use crate::workers::{JobError, JobHandler};

pub const TOKENIZER_KIND: &str = "training.tokenizer";
pub const PRETRAIN_KIND: &str = "training.pretrain";

/// The model to train: a named preset sized to the tokenizer, or a full `config.json` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    #[serde(default)]
    pub preset: Option<String>,
    #[serde(default)]
    pub config: Option<serde_json::Value>,
}

/// Everything a run needs, validated when it is created and stored as the job's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    pub dataset: String,
    pub version: i64,
    pub text_column: String,
    /// The manifest's shard digests, fixed at creation so the run reads exactly that version.
    pub shards: Vec<String>,
    pub seed: u64,
    pub tokenizer: BpeSettings,
    #[serde(default)]
    pub model: Option<ModelSpec>,
    #[serde(default)]
    pub train: Option<TrainSettings>,
}

impl RunSpec {
    /// The model config for a tokenizer of `vocab_size` tokens.
    pub fn model_config(&self, vocab_size: usize) -> Result<LlamaConfig, String> {
        let spec = self.model.clone().unwrap_or(ModelSpec { preset: Some("tiny".to_string()), config: None });
        let mut config = match (&spec.preset, &spec.config) {
            (Some(preset), None) => LlamaConfig::preset(preset, vocab_size).map_err(|e| e.to_string())?,
            (None, Some(config)) => {
                LlamaConfig::from_json(&config.to_string()).map_err(|e| format!("model.config: {e}"))?
            }
            _ => return Err("model: give either preset or config".to_string()),
        };
        config.vocab_size = vocab_size;
        let seq_len = self.train.as_ref().map(|t| t.seq_len).unwrap_or_default();
        config.max_position_embeddings = config.max_position_embeddings.max(seq_len);
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
}

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
        let mut texts = Vec::new();
        for digest in &spec.shards {
            let bytes = self.fetch(digest).await?;
            let column = spec.text_column.clone();
            let shard = tokio::task::spawn_blocking(move || factory_datasets::read::shard_texts(bytes, &column))
                .await
                .map_err(failed)?
                .map_err(failed)?;
            texts.extend(shard);
        }
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
        if let Some(stored) = self.state.store.run_metric(&job.id, "tokenizer", 0).await.map_err(failed)? {
            let digest = stored.metrics["digest"].as_str().unwrap_or_default().to_string();
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

    async fn pretrain(
        &self,
        job: &Job,
        spec: RunSpec,
        texts: Arc<Vec<String>>,
        cancel: watch::Receiver<bool>,
    ) -> Result<serde_json::Value, JobError> {
        let (tokenizer, tokenizer_digest) = self.tokenizer(job, &spec, &texts).await?;
        let settings = spec.train.clone().unwrap_or_default();
        let config = spec.model_config(tokenizer.vocab_size()).map_err(failed)?;
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
        let mut observer = RunObserver {
            state: self.state.clone(),
            job: job.clone(),
            runtime: tokio::runtime::Handle::current(),
            cancel,
            abandoned,
            pending: Vec::new(),
        };
        let train_config = config.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let tokens = factory_train::tokenize_documents(&tokenizer, texts.iter().cloned()).map_err(failed)?;
            let data =
                factory_train::split_tokens(tokens, settings.validation_fraction, settings.seq_len).map_err(failed)?;
            let outcome =
                factory_train::train(&train_config, &settings, &data, spec.seed, None, resume.as_ref(), &mut observer)
                    .map_err(failed)?;
            observer.flush();
            Ok::<_, JobError>((outcome, data.train.len(), data.validation.len()))
        })
        .await
        .map_err(failed)??;
        match outcome.0 {
            Outcome::Finished { model, eval } => {
                let weights = self.store(job, model.weights.to_safetensors().map_err(failed)?).await?;
                let config_digest = self.store(job, config.to_json().into_bytes()).await?;
                Ok(serde_json::json!({
                    "artifacts": { "weights": weights, "config": config_digest, "tokenizer": tokenizer_digest },
                    "parameters": config.parameter_count(),
                    "train_tokens": outcome.1,
                    "validation_tokens": outcome.2,
                    "eval": eval,
                }))
            }
            Outcome::Stopped { .. } => Err(JobError::Cancelled),
            Outcome::Preempted { step } => {
                Err(failed(format!("preempted after step {step}; resumes from its checkpoint")))
            }
        }
    }
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

    async fn run(&self, job: &Job, cancel: watch::Receiver<bool>) -> Result<serde_json::Value, JobError> {
        let spec: RunSpec =
            serde_json::from_value(job.payload.clone()).map_err(|e| failed(format!("run payload: {e}")))?;
        let texts = Arc::new(self.texts(&spec).await?);
        if self.kind == TOKENIZER_KIND {
            let (tokenizer, digest) = self.tokenizer(job, &spec, &texts).await?;
            return Ok(serde_json::json!({
                "artifacts": { "tokenizer": digest },
                "vocab_size": tokenizer.vocab_size(),
                "documents": texts.len(),
            }));
        }
        self.pretrain(job, spec, texts, cancel).await
    }
}

/// Stores metrics and checkpoints as the loop reports them (from the blocking training thread,
/// so it drives the async store through the runtime handle).
struct RunObserver {
    state: AppState,
    job: Job,
    runtime: tokio::runtime::Handle,
    cancel: watch::Receiver<bool>,
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
        self.pending.push((metrics.step as i64, serde_json::to_value(metrics).unwrap_or_default()));
        if self.pending.len() >= 10 {
            self.flush();
        }
        if *self.cancel.borrow() {
            Control::Stop
        } else if self.abandoned.load(Ordering::SeqCst) {
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
    for kind in [TOKENIZER_KIND, PRETRAIN_KIND] {
        pool.handlers.insert(kind, Arc::new(TrainingHandler { state: state.clone(), kind }));
    }
    pool
}
