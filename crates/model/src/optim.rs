//! AdamW whose whole state (step, first and second moments) can be saved and restored, so a
//! resumed run continues exactly where it stopped. candle's own AdamW keeps its state private.

use std::collections::BTreeMap;

use std::sync::Mutex;

use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }
    }
}

pub struct AdamW {
    pub config: AdamWConfig,
    pub step: u64,
    moments: BTreeMap<String, Moments>,
}

/// One parameter's first and second moments, as plain f32 the update writes in place.
#[derive(Debug, Clone)]
struct Moments {
    shape: Vec<usize>,
    first: Vec<f32>,
    second: Vec<f32>,
}

impl Moments {
    fn zeros(shape: &[usize]) -> Self {
        let count = shape.iter().product();
        Moments { shape: shape.to_vec(), first: vec![0.0; count], second: vec![0.0; count] }
    }
}

/// Values handed to one rayon task by the update.
const UPDATE_CHUNK: usize = 1 << 14;

/// One AdamW update of an f32 parameter, in place, in a single pass over the parameter, its
/// gradient and its two moments (the composed update made a dozen passes, each allocating).
struct Update<'a> {
    moments: Mutex<&'a mut Moments>,
    beta1: f32,
    beta2: f32,
    eps: f32,
    lr: f32,
    /// What the parameter keeps of itself before the step: `1 - lr * weight_decay`, or 1.
    keep: f32,
    correction1: f32,
    correction2: f32,
}

impl InplaceOp2 for Update<'_> {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(&self, param: &mut CpuStorage, pl: &Layout, grad: &CpuStorage, gl: &Layout) -> candle_core::Result<()> {
        let (Some((p0, p1)), Some((g0, g1))) = (pl.contiguous_offsets(), gl.contiguous_offsets()) else {
            candle_core::bail!("the AdamW update needs contiguous tensors");
        };
        let (CpuStorage::F32(param), CpuStorage::F32(grad)) = (param, grad) else {
            candle_core::bail!("the in-place AdamW update is for f32");
        };
        let (param, grad) = (&mut param[p0..p1], &grad[g0..g1]);
        let mut moments = self.moments.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Moments { first, second, .. } = &mut **moments;
        if param.len() != grad.len() || first.len() != param.len() {
            candle_core::bail!("the parameter, its gradient and its moments differ in size");
        }
        let Update { beta1, beta2, eps, lr, keep, correction1, correction2, .. } = *self;
        param
            .par_chunks_mut(UPDATE_CHUNK)
            .zip(grad.par_chunks(UPDATE_CHUNK))
            .zip(first.par_chunks_mut(UPDATE_CHUNK).zip(second.par_chunks_mut(UPDATE_CHUNK)))
            .for_each(|((param, grad), (first, second))| {
                for i in 0..param.len() {
                    let g = grad[i];
                    first[i] = first[i] * beta1 + g * (1.0 - beta1);
                    second[i] = second[i] * beta2 + g * g * (1.0 - beta2);
                    let update = (first[i] / correction1) / ((second[i] / correction2).sqrt() + eps);
                    param[i] = param[i] * keep - update * lr;
                }
            });
        Ok(())
    }
}

/// Norm weights are not decayed, as is usual for Llama training.
fn decays(name: &str) -> bool {
    !name.ends_with("norm.weight")
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW { config, step: 0, moments: BTreeMap::new() }
    }

    /// One update with learning rate `lr` from `grads` (name -> gradient); parameters without
    /// a gradient are left alone.
    pub fn step(
        &mut self,
        params: &BTreeMap<String, Var>,
        grads: &BTreeMap<String, Tensor>,
        lr: f64,
    ) -> Result<(), ModelError> {
        self.step += 1;
        let AdamWConfig { beta1, beta2, eps, weight_decay } = self.config;
        let correction1 = 1.0 - beta1.powi(self.step as i32);
        let correction2 = 1.0 - beta2.powi(self.step as i32);
        for (name, var) in params {
            let Some(grad) = grads.get(name) else { continue };
            let moments = self.moments.entry(name.clone()).or_insert_with(|| Moments::zeros(var.dims()));
            if moments.shape != var.dims() {
                return Err(ModelError::Weights(format!("optimizer state for {name} has another shape")));
            }
            let keep = if decays(name) { 1.0 - lr * weight_decay } else { 1.0 };
            if var.dtype() == DType::F32 && var.device().is_cpu() {
                let update = Update {
                    moments: Mutex::new(moments),
                    beta1: beta1 as f32,
                    beta2: beta2 as f32,
                    eps: eps as f32,
                    lr: lr as f32,
                    keep: keep as f32,
                    correction1: correction1 as f32,
                    correction2: correction2 as f32,
                };
                var.as_tensor().inplace_op2(&grad.to_dtype(DType::F32)?.contiguous()?, &update)?;
                continue;
            }
            // Other dtypes and devices: the same update composed of tensor operations.
            let device = var.device();
            let grad = grad.to_dtype(DType::F32)?;
            let m = Tensor::from_slice(&moments.first, var.dims(), device)?;
            let v = Tensor::from_slice(&moments.second, var.dims(), device)?;
            let m = ((m * beta1)? + (&grad * (1.0 - beta1))?)?;
            let v = ((v * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?;
            let update = ((&m / correction1)? / ((&v / correction2)?.sqrt()? + eps)?)?;
            let current = var.as_tensor().to_dtype(DType::F32)?;
            let next = ((current * keep)? - (update * lr)?)?;
            var.set(&next.to_dtype(var.dtype())?)?;
            moments.first = m.flatten_all()?.to_vec1()?;
            moments.second = v.flatten_all()?.to_vec1()?;
        }
        Ok(())
    }

    /// The state as named tensors (`m.<param>`, `v.<param>`, `step`), for a checkpoint.
    pub fn state_tensors(&self, device: &Device) -> Result<Vec<(String, Tensor)>, ModelError> {
        let mut tensors = Vec::with_capacity(self.moments.len() * 2 + 1);
        // u64 steps fit f64 exactly far beyond any run's length.
        tensors.push(("step".to_string(), Tensor::new(&[self.step as f64], device)?));
        for (name, moments) in &self.moments {
            tensors.push((format!("m.{name}"), Tensor::from_slice(&moments.first, moments.shape.as_slice(), device)?));
            tensors.push((format!("v.{name}"), Tensor::from_slice(&moments.second, moments.shape.as_slice(), device)?));
        }
        Ok(tensors)
    }

    pub fn restore(config: AdamWConfig, tensors: BTreeMap<String, Tensor>) -> Result<Self, ModelError> {
        let mut step = None;
        let mut firsts = BTreeMap::new();
        let mut seconds = BTreeMap::new();
        for (name, tensor) in tensors {
            if name == "step" {
                step = Some(tensor.to_vec1::<f64>()?.first().copied().unwrap_or(0.0) as u64);
            } else if let Some(param) = name.strip_prefix("m.") {
                firsts.insert(param.to_string(), tensor);
            } else if let Some(param) = name.strip_prefix("v.") {
                seconds.insert(param.to_string(), tensor);
            } else {
                return Err(ModelError::Weights(format!("optimizer state has an unknown tensor {name}")));
            }
        }
        let step = step.ok_or_else(|| ModelError::Weights("optimizer state has no step".to_string()))?;
        let mut moments = BTreeMap::new();
        for (name, m) in firsts {
            let v =
                seconds.remove(&name).ok_or_else(|| ModelError::Weights(format!("optimizer state lacks v.{name}")))?;
            if m.dims() != v.dims() {
                return Err(ModelError::Weights(format!("optimizer state: m.{name} and v.{name} differ in shape")));
            }
            let shape = m.dims().to_vec();
            let (first, second) =
                (m.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?, v.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?);
            moments.insert(name, Moments { shape, first, second });
        }
        if let Some(name) = seconds.keys().next() {
            return Err(ModelError::Weights(format!("optimizer state lacks m.{name}")));
        }
        Ok(AdamW { config, step, moments })
    }
}

/// Linear warmup to `peak` over `warmup` steps, then cosine decay to `floor` at `total`.
pub fn learning_rate(step: u64, warmup: u64, total: u64, peak: f64, floor: f64) -> f64 {
    if warmup > 0 && step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    if step >= total {
        return floor;
    }
    let span = (total - warmup).max(1) as f64;
    let progress = (step - warmup) as f64 / span;
    floor + 0.5 * (peak - floor) * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Scales `grads` so their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm(grads: &mut BTreeMap<String, Tensor>, max_norm: f64) -> Result<f64, ModelError> {
    let mut total = 0.0f64;
    for grad in grads.values() {
        total += match crate::fused::enabled(grad) {
            true => crate::fused::sum_of_squares(grad)?,
            false => grad.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?,
        };
    }
    let norm = total.sqrt();
    if norm > max_norm && norm.is_finite() {
        let scale = max_norm / (norm + 1e-6);
        for grad in grads.values_mut() {
            *grad = (&*grad * scale)?;
        }
    }
    Ok(norm)
}
