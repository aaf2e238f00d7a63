//! What a training run is, as its job's payload stores it: the [`RunSpec`] that pins the
//! exact shards a run reads and the verified digests of any base model, and the job kinds that
//! run it. Below both the use case that creates runs (`runs`) and the one that registers their
//! models (`models`), which each need it.

use factory_core::{Classification, Jurisdiction, Principal};
use factory_model::LlamaConfig;
use factory_tokenizer::BpeSettings;
use factory_train::{EvalSet, TrainSettings};
use serde::{Deserialize, Serialize};

pub const TOKENIZER_KIND: &str = "training.tokenizer";
pub const PRETRAIN_KIND: &str = "training.pretrain";
pub const FINETUNE_KIND: &str = "training.finetune";
pub const RUN_KINDS: [&str; 3] = [TOKENIZER_KIND, PRETRAIN_KIND, FINETUNE_KIND];

/// The registered model a fine-tune starts from, pinned (with its verified file digests) when
/// the run is created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseModel {
    pub name: String,
    pub version: i64,
    pub jurisdiction: Jurisdiction,
    pub classification: Classification,
    /// The digests of `model.safetensors`, `config.json` and `tokenizer.json`; of a GGUF base,
    /// all three are its `model.gguf`, which carries its config and vocabulary.
    pub weights: String,
    pub config: String,
    pub tokenizer: String,
    /// A GGUF base: fine-tuned frozen in its quantized blocks, with adapters only.
    #[serde(default)]
    pub gguf: bool,
}

impl BaseModel {
    pub fn reference(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// Register the trained model as the next version of `name` when the run succeeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterSpec {
    pub name: String,
    #[serde(default)]
    pub intended_use: Option<String>,
}

/// The model to train: a named preset sized to the tokenizer, or a full `config.json` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    #[serde(default)]
    pub preset: Option<String>,
    #[serde(default)]
    pub config: Option<serde_json::Value>,
}

/// What a run asks of the machine it runs on, where the executor can give it (Slurm: CPUs,
/// memory and GPUs of its job, each at most the compute pool's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeRequest {
    pub cpus: Option<u64>,
    pub memory_mb: Option<u64>,
    pub gpus: Option<u64>,
}

impl ComputeRequest {
    pub fn validate(&self) -> Result<(), String> {
        let bounded = |value: Option<u64>, most: u64| value.is_none_or(|value| value <= most);
        if !(bounded(self.cpus, 1024) && bounded(self.memory_mb, 16 << 20) && bounded(self.gpus, 64)) {
            return Err("compute: cpus up to 1024, memory_mb up to 16 TiB, gpus up to 64".to_string());
        }
        Ok(())
    }
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
    /// The dataset's residency, which the model inherits.
    pub jurisdiction: Jurisdiction,
    pub classification: Classification,
    #[serde(default)]
    pub base: Option<BaseModel>,
    /// A registered model's verified `tokenizer.json` to use instead of training one.
    #[serde(default)]
    pub tokenizer_digest: Option<String>,
    #[serde(default)]
    pub eval_sets: Vec<EvalSet>,
    #[serde(default)]
    pub register: Option<RegisterSpec>,
    /// Whose authority registration uses: the run's creator, re-checked against the policies
    /// when the run ends.
    #[serde(default)]
    pub requested_by: Option<Principal>,
    /// What the run asks of its machine (`compute`), for executors that can give it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute: Option<ComputeRequest>,
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
