//! What a training run may be told, with the defaults a small CPU run needs.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSettings {
    /// Tokens per training sequence.
    pub seq_len: usize,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed before each optimizer step.
    pub grad_accum: usize,
    pub steps: u64,
    pub learning_rate: f64,
    /// The cosine schedule decays to this.
    pub min_learning_rate: f64,
    pub warmup_steps: u64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// Global gradient-norm clip.
    pub grad_clip: f64,
    /// The share of tokens (the end of the stream) held out for validation.
    pub validation_fraction: f64,
    /// Validate every this many steps (and at the end); 0 only at the end.
    pub eval_every: u64,
    /// Validation windows are `seq_len` long; at most this many.
    pub eval_windows: usize,
    /// Checkpoint every this many steps; 0 never (but a preempted run still checkpoints).
    pub checkpoint_every: u64,
    /// Stop (and finish normally, with a final evaluation) once an attempt has trained this
    /// many seconds; 0 means no limit. The learning-rate schedule still spans `steps`.
    pub max_seconds: f64,
    /// Train low-rank adapters on a frozen base instead of every weight (fine-tuning only).
    pub lora: Option<factory_model::LoraConfig>,
}

impl Default for TrainSettings {
    fn default() -> Self {
        TrainSettings {
            seq_len: 128,
            batch_size: 8,
            grad_accum: 1,
            steps: 200,
            learning_rate: 3e-3,
            min_learning_rate: 3e-4,
            warmup_steps: 10,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            grad_clip: 1.0,
            validation_fraction: 0.05,
            eval_every: 50,
            eval_windows: 32,
            checkpoint_every: 50,
            max_seconds: 0.0,
            lora: None,
        }
    }
}

impl TrainSettings {
    /// Every problem, each naming its field.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.seq_len < 2 {
            problems.push("seq_len must be at least 2".to_string());
        }
        for (field, value) in [("batch_size", self.batch_size), ("grad_accum", self.grad_accum)] {
            if value == 0 {
                problems.push(format!("{field} must be positive"));
            }
        }
        if self.steps == 0 {
            problems.push("steps must be positive".to_string());
        }
        if !(self.learning_rate > 0.0 && self.learning_rate < 1.0) {
            problems.push("learning_rate must be in (0, 1)".to_string());
        }
        if !(0.0..=self.learning_rate).contains(&self.min_learning_rate) {
            problems.push("min_learning_rate must be in [0, learning_rate]".to_string());
        }
        for (field, value) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&value) {
                problems.push(format!("{field} must be in [0, 1)"));
            }
        }
        if !(0.0..1.0).contains(&self.weight_decay) {
            problems.push("weight_decay must be in [0, 1)".to_string());
        }
        if self.grad_clip <= 0.0 {
            problems.push("grad_clip must be positive".to_string());
        }
        if let Some(lora) = &self.lora {
            if let Err(error) = lora.validate() {
                problems.push(error.to_string().trim_start_matches("invalid model config: ").to_string());
            }
        }
        if !(self.max_seconds >= 0.0 && self.max_seconds.is_finite()) {
            problems.push("max_seconds must be zero (no limit) or positive".to_string());
        }
        if !(0.0..0.5).contains(&self.validation_fraction) {
            problems.push("validation_fraction must be in [0, 0.5)".to_string());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    pub fn tokens_per_step(&self) -> usize {
        self.seq_len * self.batch_size * self.grad_accum
    }
}
