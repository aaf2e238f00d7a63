//! The loop: sample, forward, backward, accumulate, clip, step; validate and checkpoint on
//! schedule; stop when told to.

use std::collections::BTreeMap;
use std::time::Instant;

use factory_model::{
    clip_grad_norm, learning_rate, AdamW, AdamWConfig, DType, Device, Llama, LlamaConfig, LoraAdapters, ModelError,
    Tensor, Var, Weights,
};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::{TokenStreams, TrainSettings};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid training settings: {0}")]
    Settings(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("storing a checkpoint failed: {0}")]
    Checkpoint(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: u64,
    pub loss: f64,
    pub learning_rate: f64,
    pub grad_norm: f64,
    pub tokens_per_second: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    pub step: u64,
    pub validation_loss: f64,
    pub perplexity: f64,
    pub tokens: usize,
}

/// Everything needed to continue a run exactly: weights, optimizer state, and the step (the
/// data cursor and the sampling RNG are both functions of the seed and the step).
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Steps completed.
    pub step: u64,
    /// `model.safetensors` bytes.
    pub weights: Vec<u8>,
    /// The optimizer's moments and step count, as safetensors bytes.
    pub optimizer: Vec<u8>,
}

/// What the observer wants after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// Stop now, after writing a checkpoint (preemption: the run resumes later).
    Checkpoint,
    /// Stop now without one (cancellation).
    Stop,
}

pub trait TrainObserver {
    fn on_step(&mut self, metrics: &StepMetrics) -> Control;
    fn on_eval(&mut self, metrics: &EvalMetrics);
    fn on_checkpoint(&mut self, checkpoint: Checkpoint) -> Result<(), String>;
}

#[derive(Debug)]
pub enum Outcome {
    Finished {
        model: Box<Llama>,
        eval: EvalMetrics,
    },
    /// Stopped at `step` after a checkpoint, to be resumed.
    Preempted {
        step: u64,
    },
    Stopped {
        step: u64,
    },
}

/// The sequences micro-batch `micro` of step `step` trains on: a pure function of the seed,
/// the step and the stream, so a resumed run samples exactly what the uninterrupted one did
/// (and a benchmark's peer can be given the same windows).
pub fn batch_starts(seed: u64, step: u64, micro: usize, count: usize, stream_len: usize, window: usize) -> Vec<usize> {
    let mixed = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (micro as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    let mut rng = rand::rngs::StdRng::seed_from_u64(mixed);
    (0..count).map(|_| rng.random_range(0..=stream_len - window)).collect()
}

fn windows(stream: &[u32], starts: &[usize], window: usize, device: &Device) -> Result<Tensor, ModelError> {
    let values: Vec<u32> = starts.iter().flat_map(|&s| stream[s..s + window].iter().copied()).collect();
    Ok(Tensor::from_vec(values, (starts.len(), window), device)?)
}

/// Mean next-token loss over non-overlapping windows from the start of `stream`.
pub fn evaluate(
    model: &Llama,
    stream: &[u32],
    seq_len: usize,
    max_windows: usize,
    step: u64,
) -> Result<EvalMetrics, ModelError> {
    let window = seq_len + 1;
    let starts: Vec<usize> =
        (0..).map(|i| i * seq_len).take_while(|s| s + window <= stream.len()).take(max_windows).collect();
    if starts.is_empty() {
        return Err(ModelError::Input(format!("validation needs at least {window} tokens")));
    }
    let mut total = 0.0;
    for chunk in starts.chunks(8) {
        let batch = windows(stream, chunk, window, &model.weights.device)?;
        let loss = model.loss(&batch)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        total += loss * chunk.len() as f64;
    }
    let validation_loss = total / starts.len() as f64;
    Ok(EvalMetrics { step, validation_loss, perplexity: validation_loss.exp(), tokens: starts.len() * seq_len })
}

/// What a fine-tune starts from.
pub enum Initial<'a> {
    /// The base's `model.safetensors` bytes.
    Safetensors(&'a [u8]),
    /// A model on a base frozen in its quantized blocks ([`Llama::with_frozen_base`]): only
    /// adapters train on it.
    Frozen(Box<Llama>),
}

/// What a checkpoint holds as `weights`: the adapters when only they train, else the model.
fn checkpoint(model: &Llama, optimizer: &AdamW, step: u64) -> Result<Checkpoint, TrainError> {
    let state = optimizer.state_tensors(&model.weights.device)?;
    let weights = match &model.adapters {
        Some(adapters) => adapters.to_safetensors()?,
        None => model.weights.to_safetensors()?,
    };
    Ok(Checkpoint { step, weights, optimizer: factory_model::to_safetensors(state)? })
}

/// The model to train and the step to start from: fresh, from a base (`initial`), or from a
/// checkpoint; with LoRA, a frozen base carrying adapters that are fresh or restored.
fn starting_point(
    config: &LlamaConfig,
    settings: &TrainSettings,
    seed: u64,
    initial: Option<Initial<'_>>,
    resume: Option<&Checkpoint>,
    adam: AdamWConfig,
    device: &Device,
) -> Result<(Llama, AdamW, u64), TrainError> {
    let optimizer = match resume {
        Some(checkpoint) => AdamW::restore(adam, factory_model::from_safetensors(&checkpoint.optimizer, device)?)?,
        None => AdamW::new(adam),
    };
    let start = resume.map(|c| c.step).unwrap_or(0);
    if let Some(lora) = &settings.lora {
        let base = match initial {
            Some(Initial::Safetensors(bytes)) => {
                Llama::new(config.clone(), Weights::from_safetensors(config, bytes, DType::F32, device)?)?
            }
            Some(Initial::Frozen(model)) => *model,
            None => return Err(TrainError::Settings("lora: adapters need a base model to adapt".into())),
        };
        let adapters = match resume {
            Some(checkpoint) => LoraAdapters::from_safetensors(config, lora, &checkpoint.weights, device)?,
            None => LoraAdapters::init(config, lora, seed, device)?,
        };
        return Ok((base.with_adapters(adapters), optimizer, start));
    }
    let weights = match (resume, initial) {
        (_, Some(Initial::Frozen(_))) => {
            return Err(TrainError::Settings(
                "a quantized base stays frozen: fine-tune it with adapters (train.lora)".into(),
            ))
        }
        (Some(checkpoint), _) => Weights::from_safetensors(config, &checkpoint.weights, DType::F32, device)?,
        (None, Some(Initial::Safetensors(bytes))) => Weights::from_safetensors(config, bytes, DType::F32, device)?,
        (None, None) => Weights::init(config, seed, DType::F32, device)?,
    };
    Ok((Llama::new(config.clone(), weights)?, optimizer, start))
}

/// Trains `config` on `data` for `settings.steps` steps from `seed`. With `resume`, starts
/// from that checkpoint (whose weights must fit `config`); with `initial` (fine-tuning),
/// from those weights; otherwise from a fresh initialisation.
pub fn train(
    config: &LlamaConfig,
    settings: &TrainSettings,
    data: &TokenStreams,
    seed: u64,
    initial: Option<Initial<'_>>,
    resume: Option<&Checkpoint>,
    observer: &mut dyn TrainObserver,
) -> Result<Outcome, TrainError> {
    settings.validate().map_err(TrainError::Settings)?;
    let device = Device::Cpu;
    let window = settings.seq_len + 1;
    if data.train.len() < window {
        return Err(TrainError::Settings(format!(
            "{} training tokens are fewer than one window of {window}",
            data.train.len()
        )));
    }
    let adam =
        AdamWConfig { beta1: settings.beta1, beta2: settings.beta2, eps: 1e-8, weight_decay: settings.weight_decay };
    let (model, mut optimizer, start) = starting_point(config, settings, seed, initial, resume, adam, &device)?;
    // Var clones share storage: updating these updates the model.
    let trainable: BTreeMap<String, Var> = match &model.adapters {
        Some(adapters) => adapters.params.clone(),
        None => model.weights.params.clone(),
    };
    let validation = if data.validation.len() >= window { Some(data.validation.as_slice()) } else { None };

    let attempt_started = Instant::now();
    let mut last_step = settings.steps;
    for step in start..settings.steps {
        let started = Instant::now();
        let mut summed: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut loss_total = 0.0;
        for micro in 0..settings.grad_accum {
            let starts = batch_starts(seed, step, micro, settings.batch_size, data.train.len(), window);
            let batch = windows(&data.train, &starts, window, &device)?;
            let loss = model.loss(&batch)?;
            loss_total +=
                loss.to_dtype(DType::F64).map_err(ModelError::from)?.to_scalar::<f64>().map_err(ModelError::from)?;
            let grads = loss.backward().map_err(ModelError::from)?;
            for (name, var) in &trainable {
                if let Some(grad) = grads.get(var.as_tensor()) {
                    let grad = match settings.grad_accum {
                        1 => grad.clone(),
                        accumulated => (grad / accumulated as f64).map_err(ModelError::from)?,
                    };
                    let total = match summed.remove(name) {
                        Some(previous) => (previous + grad).map_err(ModelError::from)?,
                        None => grad,
                    };
                    summed.insert(name.clone(), total);
                }
            }
        }
        let grad_norm = clip_grad_norm(&mut summed, settings.grad_clip)?;
        let lr = learning_rate(
            step,
            settings.warmup_steps,
            settings.steps,
            settings.learning_rate,
            settings.min_learning_rate,
        );
        optimizer.step(&trainable, &summed, lr)?;
        let seconds = started.elapsed().as_secs_f64().max(1e-9);
        let metrics = StepMetrics {
            step: step + 1,
            loss: loss_total / settings.grad_accum as f64,
            learning_rate: lr,
            grad_norm,
            tokens_per_second: settings.tokens_per_step() as f64 / seconds,
        };
        let control = observer.on_step(&metrics);
        let done = step + 1;
        if settings.eval_every > 0 && done % settings.eval_every == 0 && done < settings.steps {
            if let Some(validation) = validation {
                observer.on_eval(&evaluate(&model, validation, settings.seq_len, settings.eval_windows, done)?);
            }
        }
        let scheduled = settings.checkpoint_every > 0 && done % settings.checkpoint_every == 0 && done < settings.steps;
        if scheduled || control == Control::Checkpoint {
            observer.on_checkpoint(checkpoint(&model, &optimizer, done)?).map_err(TrainError::Checkpoint)?;
        }
        match control {
            Control::Continue => {}
            Control::Checkpoint => return Ok(Outcome::Preempted { step: done }),
            Control::Stop => return Ok(Outcome::Stopped { step: done }),
        }
        if settings.max_seconds > 0.0 && attempt_started.elapsed().as_secs_f64() >= settings.max_seconds {
            last_step = done;
            break;
        }
    }
    let eval = match validation {
        Some(validation) => evaluate(&model, validation, settings.seq_len, settings.eval_windows, last_step)?,
        None => evaluate(&model, &data.train, settings.seq_len, settings.eval_windows, last_step)?,
    };
    observer.on_eval(&eval);
    Ok(Outcome::Finished { model: Box::new(model), eval })
}
