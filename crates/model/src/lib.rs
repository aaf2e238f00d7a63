//! The factory's own language model: a Llama-architecture decoder on candle, its Hugging Face
//! file formats, and the math of training it (loss, AdamW with saveable state, schedule,
//! clipping).
//!
//! Architecture Invariant: no I/O beyond bytes in and out (safetensors, config JSON) and no
//! knowledge of jobs, datasets or the object store; the trainer drives this crate.

mod bert;
mod config;
mod frozen;
pub mod fused;
pub mod gguf;
mod infer;
mod llama;
mod lora;
pub mod ops;
mod optim;
mod panels;
mod projection;
pub mod quantized;
mod serving_adapter;
mod team;
mod weights;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use bert::{BertConfig, BertEncoder};
pub use candle_core::{DType, Device, Tensor, Var};
pub use config::{Family, LlamaConfig};
pub use infer::{Decoder, KvCache, KvPrecision, Logits, StepInput};
pub use llama::{argmax_last, Kernels, Llama};
pub use lora::{LoraAdapters, LoraConfig};
pub use optim::{clip_grad_norm, learning_rate, AdamW, AdamWConfig};
pub use serving_adapter::ServingAdapter;
pub use weights::{from_safetensors, parameter_shapes, stored_dtype, to_safetensors, Weights};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("weights: {0}")]
    Weights(String),
    #[error("input: {0}")]
    Input(String),
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}
