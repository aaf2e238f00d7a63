//! The training loop the factory's jobs run: token streams in, a trained model out, with
//! metrics per step, validation, checkpoints and exact resumption.
//!
//! Architecture Invariant: no I/O. Text arrives as strings, checkpoints and metrics leave
//! through a [`TrainObserver`]; the server decides where they are stored and whether the run
//! may go on. Which batch a step trains on is a pure function of (seed, step), so a run
//! resumed from a checkpoint at step N sees exactly the batches the uninterrupted run saw.

mod data;
mod evalsets;
mod settings;
mod trainer;

#[cfg(test)]
mod tests;

pub use data::{split_tokens, tokenize_documents, tokenize_separated, TokenStreams};
pub use evalsets::{judge, score_eval_set, validate_eval_sets, EvalItem, EvalSample, EvalSet, EvalSetScore};
pub use settings::TrainSettings;
pub use trainer::{
    batch_starts, evaluate, train, Checkpoint, Control, EvalMetrics, Initial, Outcome, StepMetrics, TrainError,
    TrainObserver,
};
