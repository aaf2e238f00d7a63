//! AdamW whose whole state (step, first and second moments) can be saved and restored, so a
//! resumed run continues exactly where it stopped. candle's own AdamW keeps its state private.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
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
    moments: BTreeMap<String, (Tensor, Tensor)>,
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
            let grad = grad.to_dtype(DType::F32)?;
            let (m, v) = match self.moments.remove(name) {
                Some(state) => state,
                None => (grad.zeros_like()?, grad.zeros_like()?),
            };
            let m = ((m * beta1)? + (&grad * (1.0 - beta1))?)?;
            let v = ((v * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?;
            let m_hat = (&m / correction1)?;
            let v_hat = (&v / correction2)?;
            let update = (m_hat / (v_hat.sqrt()? + eps)?)?;
            let current = var.as_tensor().to_dtype(DType::F32)?;
            let decayed = if decays(name) { (&current * (1.0 - lr * weight_decay))? } else { current };
            let next = (decayed - (update * lr)?)?;
            var.set(&next.to_dtype(var.dtype())?)?;
            self.moments.insert(name.clone(), (m, v));
        }
        Ok(())
    }

    /// The state as named tensors (`m.<param>`, `v.<param>`, `step`), for a checkpoint.
    pub fn state_tensors(&self, device: &Device) -> Result<Vec<(String, Tensor)>, ModelError> {
        let mut tensors = Vec::with_capacity(self.moments.len() * 2 + 1);
        // u64 steps fit f64 exactly far beyond any run's length.
        tensors.push(("step".to_string(), Tensor::new(&[self.step as f64], device)?));
        for (name, (m, v)) in &self.moments {
            tensors.push((format!("m.{name}"), m.clone()));
            tensors.push((format!("v.{name}"), v.clone()));
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
            moments.insert(name, (m, v));
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
        total += grad.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
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
