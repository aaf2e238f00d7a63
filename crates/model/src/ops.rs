//! The few operations a Llama needs, composed only of candle primitives that have a backward
//! pass. candle's fused `rms_norm`, `softmax_last_dim`, `layer_norm` and rope kernels have none
//! and silently drop gradients, so they are never used here; `tests::every_parameter_gets_a_gradient`
//! and the finite-difference check keep it that way.

use candle_core::{DType, Device, Result, Tensor, D};

/// `x / sqrt(mean(x²) + eps) * weight` over the last dimension.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let mean_square = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inverse_rms = (mean_square + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inverse_rms)?.broadcast_mul(weight)
}

/// Softmax over the last dimension. The row maximum is subtracted for stability and detached:
/// softmax does not depend on it, so it needs no gradient.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let exp = x.broadcast_sub(&max)?.exp()?;
    exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
}

/// Log-softmax over the last dimension, stable the same way.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&log_sum)
}

/// `x * sigmoid(x)`.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    let sigmoid = (x.neg()?.exp()? + 1.0)?.recip()?;
    x.mul(&sigmoid)
}

/// Mean negative log-likelihood of `targets` (u32, `[n]`) under `logits` (`[n, vocab]`).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let log_probs = log_softmax_last_dim(logits)?;
    let picked = log_probs.gather(&targets.unsqueeze(1)?, 1)?;
    picked.mean_all()?.neg()
}

/// Rotary position tables as `transformers`' Llama builds them: for head dimension `d`, the
/// `d/2` frequencies of [`crate::LlamaConfig::rope_frequencies`] repeated twice along the last
/// axis.
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    pub fn new(inverse: &[f64], max_positions: usize, dtype: DType, device: &Device) -> Result<Self> {
        let head_dim = 2 * inverse.len();
        let mut angles = Vec::with_capacity(max_positions * head_dim);
        for position in 0..max_positions {
            for _ in 0..2 {
                angles.extend(inverse.iter().map(|f| position as f64 * f));
            }
        }
        let angles = Tensor::from_vec(angles, (max_positions, head_dim), device)?;
        Ok(Rotary { cos: angles.cos()?.to_dtype(dtype)?, sin: angles.sin()?.to_dtype(dtype)? })
    }

    /// Rotates `x` (`[batch, heads, seq, head_dim]`) whose first position is `start`.
    pub fn apply(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let (_, _, seq, head_dim) = x.dims4()?;
        let cos = self.cos.narrow(0, start, seq)?;
        let sin = self.sin.narrow(0, start, seq)?;
        let half = head_dim / 2;
        let first = x.narrow(D::Minus1, 0, half)?;
        let second = x.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&second.neg()?, &first], D::Minus1)?;
        x.broadcast_mul(&cos)?.add(&rotated.broadcast_mul(&sin)?)
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }
}

/// An additive causal mask `[seq, start + seq]`: 0 where query `i` (at position `start + i`)
/// may attend, -inf where it would look ahead.
pub fn causal_mask(seq: usize, start: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let total = start + seq;
    let values: Vec<f32> =
        (0..seq).flat_map(|i| (0..total).map(move |j| if j <= start + i { 0.0 } else { f32::NEG_INFINITY })).collect();
    Tensor::from_vec(values, (seq, total), device)?.to_dtype(dtype)
}
