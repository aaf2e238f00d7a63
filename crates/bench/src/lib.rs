//! What the benchmark binaries share: the terms the factory's side of a training benchmark
//! trains on, which its peer scripts repeat.

use factory_train::{Checkpoint, Control, EvalMetrics, StepMetrics, TrainObserver, TrainSettings};

/// AdamW at a constant learning rate of 1e-3 (the peers' betas, decay and clipping are the
/// trainer's defaults), no evaluation, no checkpoints: only steps are timed.
pub fn constant_rate_settings(seq_len: usize, batch_size: usize, steps: u64) -> TrainSettings {
    TrainSettings {
        seq_len,
        batch_size,
        steps,
        learning_rate: 1e-3,
        min_learning_rate: 1e-3,
        warmup_steps: 0,
        eval_every: 0,
        eval_windows: 1,
        checkpoint_every: 0,
        validation_fraction: 0.0,
        ..TrainSettings::default()
    }
}

/// Every step's metrics, in order.
#[derive(Default)]
pub struct StepLog(pub Vec<StepMetrics>);

impl StepLog {
    /// The median seconds of the steps after `warmup`, each `tokens` tokens.
    pub fn median_step_seconds(&self, warmup: usize, tokens: usize) -> f64 {
        let mut seconds: Vec<f64> = self.0[warmup..].iter().map(|m| tokens as f64 / m.tokens_per_second).collect();
        seconds.sort_by(f64::total_cmp);
        seconds[seconds.len() / 2]
    }
}

impl TrainObserver for StepLog {
    fn on_step(&mut self, metrics: &StepMetrics) -> Control {
        self.0.push(metrics.clone());
        Control::Continue
    }
    fn on_eval(&mut self, _: &EvalMetrics) {}
    fn on_checkpoint(&mut self, _: Checkpoint) -> Result<(), String> {
        Ok(())
    }
}
