//! Fused forward and backward kernels for the Llama block's hot operations in training: RMSNorm,
//! rotary positions, the causal softmax of attention scores, SwiGLU and the cross-entropy over
//! the vocabulary. Each is one candle custom op whose backward is written out by hand, so a
//! step makes one pass over the data where the composed version ([`crate::ops`]) makes one per
//! primitive, each allocating its result, and another for every primitive's backward.
//!
//! candle's own fused `rms_norm`, `softmax_last_dim` and rope kernels have no backward and drop
//! gradients silently; these have one, and `tests::fused_kernels_*` hold each to its composed
//! twin (values and gradients) and to finite differences.
//!
//! They run on contiguous f32 CPU tensors, split by rows over the rayon pool (candle's products
//! use the same pool). [`enabled`] says when a tensor qualifies; the model falls back to the
//! composed ops otherwise (other dtypes, other devices).

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

/// Rows handed to one rayon task: enough work to amortize the task, few enough to balance.
const ROWS_PER_TASK: usize = 16;

/// Whether the fused kernels can run on `x`: f32 on the CPU.
pub fn enabled(x: &Tensor) -> bool {
    x.dtype() == DType::F32 && matches!(x.device(), Device::Cpu)
}

/// The f32 data of a contiguous CPU storage, from its layout's offset.
fn slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("a fused kernel needs contiguous input".into()))?;
    match storage {
        CpuStorage::F32(data) => Ok(&data[start..end]),
        other => candle_core::bail!("a fused kernel needs f32, got {:?}", other.dtype()),
    }
}

/// Runs `read` on the f32 data of `tensor` (made contiguous first).
fn with_data<T>(tensor: &Tensor, read: impl FnOnce(&[f32]) -> Result<T>) -> Result<T> {
    let tensor = tensor.contiguous()?;
    let (storage, layout) = tensor.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => read(slice(cpu, layout)?),
        _ => candle_core::bail!("a fused kernel runs on the CPU"),
    }
}

fn tensor(values: Vec<f32>, shape: &Shape, device: &Device) -> Result<Tensor> {
    Tensor::from_vec(values, shape.clone(), device)
}

/// `f(row_in, row_out)` for each row of `width` values, in parallel.
fn map_rows(input: &[f32], width: usize, f: impl Fn(usize, &[f32], &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0.0f32; input.len()];
    out.par_chunks_mut(width * ROWS_PER_TASK).zip(input.par_chunks(width * ROWS_PER_TASK)).enumerate().for_each(
        |(task, (out, input))| {
            for (row, (out, input)) in out.chunks_mut(width).zip(input.chunks(width)).enumerate() {
                f(task * ROWS_PER_TASK + row, input, out);
            }
        },
    );
    out
}

/// The sum of the squares of `x`'s values, accumulated in f64 without a copy of `x`.
pub fn sum_of_squares(x: &Tensor) -> Result<f64> {
    with_data(x, |values| {
        // Partial sums collected in order and added in order: the same bits whatever the pool's
        // scheduling, so a resumed run clips exactly as the uninterrupted one did.
        let partials: Vec<f64> = values
            .par_chunks(1 << 14)
            .map(|chunk| chunk.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>())
            .collect();
        Ok(partials.iter().sum())
    })
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

struct RmsNorm {
    eps: f32,
}

fn inverse_rms(row: &[f32], eps: f32) -> f32 {
    let mean_square = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
    1.0 / (mean_square + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, weight) = (slice(s1, l1)?, slice(s2, l2)?);
        let width = weight.len();
        let out = map_rows(x, width, |_, row, out| {
            let scale = inverse_rms(row, self.eps);
            for ((o, v), w) in out.iter_mut().zip(row).zip(weight) {
                *o = v * scale * w;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    /// With `r = 1/rms(x)` and `u = g * w`: `dx = r * u - x * r³ * mean(u * x)`,
    /// `dw = sum over rows of g * x * r`.
    fn bwd(&self, x: &Tensor, weight: &Tensor, _: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let width = weight.elem_count();
        let eps = self.eps;
        let (dx, dw) = with_data(x, |x| {
            with_data(weight, |weight| {
                with_data(grad, |grad| {
                    let mut dx = vec![0.0f32; x.len()];
                    let chunk = width * ROWS_PER_TASK;
                    // Each task's partial `dw`, collected in order and added in order, so the
                    // result does not depend on the pool's scheduling.
                    let partials: Vec<Vec<f32>> = dx
                        .par_chunks_mut(chunk)
                        .zip(x.par_chunks(chunk).zip(grad.par_chunks(chunk)))
                        .map(|(dx, (x, grad))| {
                            let mut dw = vec![0.0f32; width];
                            for ((dx, x), g) in dx.chunks_mut(width).zip(x.chunks(width)).zip(grad.chunks(width)) {
                                let r = inverse_rms(x, eps);
                                let dot: f32 = g.iter().zip(weight).zip(x).map(|((g, w), x)| g * w * x).sum();
                                let k = r * r * r * dot / width as f32;
                                for i in 0..width {
                                    dx[i] = r * g[i] * weight[i] - x[i] * k;
                                    dw[i] += g[i] * x[i] * r;
                                }
                            }
                            dw
                        })
                        .collect();
                    let mut dw = vec![0.0f32; width];
                    for partial in &partials {
                        dw.iter_mut().zip(partial).for_each(|(a, b)| *a += b);
                    }
                    Ok((dx, dw))
                })
            })
        })?;
        Ok((Some(tensor(dx, x.shape(), x.device())?), Some(tensor(dw, weight.shape(), weight.device())?)))
    }
}

/// `x / sqrt(mean(x²) + eps) * weight` over the last dimension.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32 })
}

// ---------------------------------------------------------------------------------------------
// Rotary positions

/// Cosine and sine tables `[positions, head_dim / 2]` for [`rotary`].
#[derive(Clone)]
pub struct RotaryTables {
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
    half: usize,
}

impl RotaryTables {
    /// The tables for the `head_dim / 2` inverse frequencies `inverse`, for `positions`.
    pub fn new(inverse: &[f64], positions: usize) -> Self {
        let angles = |f: fn(f64) -> f64| -> Arc<Vec<f32>> {
            Arc::new((0..positions).flat_map(|p| inverse.iter().map(move |i| f(p as f64 * i) as f32)).collect())
        };
        RotaryTables { cos: angles(f64::cos), sin: angles(f64::sin), half: inverse.len() }
    }
}

struct Rotary {
    tables: RotaryTables,
    /// The position of the first row of each sequence.
    start: usize,
    seq: usize,
    /// 1 rotates forward; -1 rotates back (the backward of a rotation is its inverse).
    sign: f32,
}

impl CustomOp1 for Rotary {
    fn name(&self) -> &'static str {
        "fused-rotary"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(storage, layout)?;
        let half = self.tables.half;
        let (cos, sin) = (&self.tables.cos, &self.tables.sin);
        let out = map_rows(x, 2 * half, |row, x, out| {
            let position = self.start + row % self.seq;
            let (cos, sin) = (&cos[position * half..][..half], &sin[position * half..][..half]);
            let (first, second) = x.split_at(half);
            let (out_first, out_second) = out.split_at_mut(half);
            for i in 0..half {
                let s = self.sign * sin[i];
                out_first[i] = first[i] * cos[i] - second[i] * s;
                out_second[i] = second[i] * cos[i] + first[i] * s;
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let back = Rotary { tables: self.tables.clone(), start: self.start, seq: self.seq, sign: -self.sign };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

/// Rotates `x` (`[batch, heads, seq, head_dim]`, the halves convention of `transformers`' Llama)
/// by the angles of positions `start..start + seq`.
pub fn rotary(x: &Tensor, tables: &RotaryTables, start: usize) -> Result<Tensor> {
    let (_, _, seq, head_dim) = x.dims4()?;
    if head_dim != 2 * tables.half || (start + seq) * tables.half > tables.cos.len() {
        candle_core::bail!("rotary tables of head dimension {} do not cover {x:?} at {start}", 2 * tables.half);
    }
    x.contiguous()?.apply_op1(Rotary { tables: tables.clone(), start, seq, sign: 1.0 })
}

// ---------------------------------------------------------------------------------------------
// Causal softmax of attention scores

struct CausalSoftmax {
    scale: f32,
    /// Queries' first position (keys start at 0).
    start: usize,
    seq: usize,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "fused-causal-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let scores = slice(storage, layout)?;
        let width = layout.dims().last().copied().unwrap_or(1);
        let out = map_rows(scores, width, |row, scores, out| {
            // Query `i` sees keys 0..=start + i; the rest stay 0.
            let seen = (self.start + row % self.seq + 1).min(width);
            let max = scores[..seen].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) * self.scale;
            let mut sum = 0.0;
            for (o, s) in out[..seen].iter_mut().zip(&scores[..seen]) {
                *o = (s * self.scale - max).exp();
                sum += *o;
            }
            let inverse = 1.0 / sum;
            out[..seen].iter_mut().for_each(|o| *o *= inverse);
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    /// `dS = scale * P * (dP - sum(dP * P))` per row.
    fn bwd(&self, _: &Tensor, probabilities: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let width = probabilities.dims().last().copied().unwrap_or(1);
        let scale = self.scale;
        let dscores = with_data(probabilities, |p| {
            with_data(grad, |g| {
                let mut out = vec![0.0f32; p.len()];
                let chunk = width * ROWS_PER_TASK;
                out.par_chunks_mut(chunk).zip(p.par_chunks(chunk).zip(g.par_chunks(chunk))).for_each(
                    |(out, (p, g))| {
                        for ((out, p), g) in out.chunks_mut(width).zip(p.chunks(width)).zip(g.chunks(width)) {
                            let dot: f32 = p.iter().zip(g).map(|(p, g)| p * g).sum();
                            for i in 0..width {
                                out[i] = scale * p[i] * (g[i] - dot);
                            }
                        }
                    },
                );
                Ok(out)
            })
        })?;
        Ok(Some(tensor(dscores, probabilities.shape(), probabilities.device())?))
    }
}

/// `softmax(scores * scale)` over the last dimension where query `i` (row `i` of each
/// `[seq, start + seq]` block, at position `start + i`) sees only keys up to its position.
pub fn causal_softmax(scores: &Tensor, scale: f64, start: usize) -> Result<Tensor> {
    let (_, _, seq, _) = scores.dims4()?;
    scores.contiguous()?.apply_op1(CausalSoftmax { scale: scale as f32, start, seq })
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

struct SwiGlu;

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (gate, up) = (slice(s1, l1)?, slice(s2, l2)?);
        if gate.len() != up.len() {
            candle_core::bail!("swiglu: gate and up differ in size");
        }
        let mut out = vec![0.0f32; gate.len()];
        out.par_chunks_mut(4096).zip(gate.par_chunks(4096).zip(up.par_chunks(4096))).for_each(|(out, (gate, up))| {
            for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
                *o = g * sigmoid(*g) * u;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    /// `d_up = g * silu(gate)`, `d_gate = g * up * s * (1 + gate * (1 - s))` with `s = sigmoid(gate)`.
    fn bwd(&self, gate: &Tensor, up: &Tensor, _: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dgate, dup) = with_data(gate, |gate| {
            with_data(up, |up| {
                with_data(grad, |grad| {
                    let (mut dgate, mut dup) = (vec![0.0f32; gate.len()], vec![0.0f32; gate.len()]);
                    let block = 4096;
                    dgate.par_chunks_mut(block).zip(dup.par_chunks_mut(block)).enumerate().for_each(
                        |(index, (dgate, dup))| {
                            let at = index * block;
                            for i in 0..dgate.len() {
                                let (x, u, g) = (gate[at + i], up[at + i], grad[at + i]);
                                let s = sigmoid(x);
                                dup[i] = g * x * s;
                                dgate[i] = g * u * s * (1.0 + x * (1.0 - s));
                            }
                        },
                    );
                    Ok((dgate, dup))
                })
            })
        })?;
        Ok((Some(tensor(dgate, gate.shape(), gate.device())?), Some(tensor(dup, up.shape(), up.device())?)))
    }
}

/// `silu(gate) * up`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy over the vocabulary

struct CrossEntropy {
    /// Each row's log-sum-exp, kept by the forward pass for the backward.
    log_sums: Mutex<Vec<f32>>,
}

fn targets_of(storage: &CpuStorage, layout: &Layout) -> Result<Vec<usize>> {
    let (start, end) =
        layout.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("targets must be contiguous".into()))?;
    match storage {
        CpuStorage::U32(data) => Ok(data[start..end].iter().map(|&t| t as usize).collect()),
        CpuStorage::I64(data) => Ok(data[start..end].iter().map(|&t| t as usize).collect()),
        other => candle_core::bail!("targets must be u32 or i64, got {:?}", other.dtype()),
    }
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let logits = slice(s1, l1)?;
        let targets = targets_of(s2, l2)?;
        let (rows, vocab) = l1.shape().dims2()?;
        if targets.len() != rows || targets.iter().any(|&t| t >= vocab) {
            candle_core::bail!(
                "cross-entropy: {} targets for {rows} rows of {vocab}, or one out of range",
                targets.len()
            );
        }
        let mut log_sums = vec![0.0f32; rows];
        log_sums.par_iter_mut().zip(logits.par_chunks(vocab)).for_each(|(log_sum, row)| {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
            *log_sum = max + sum.ln();
        });
        let total: f64 = log_sums
            .iter()
            .zip(&targets)
            .enumerate()
            .map(|(row, (ls, &t))| (ls - logits[row * vocab + t]) as f64)
            .sum();
        *self.log_sums.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = log_sums;
        Ok((CpuStorage::F32(vec![(total / rows as f64) as f32]), Shape::from(())))
    }

    /// `d_logits = (softmax(logits) - onehot(target)) * g / rows`; targets take no gradient.
    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows, vocab) = logits.dims2()?;
        let scale = grad.to_dtype(DType::F32)?.to_scalar::<f32>()? / rows as f32;
        let targets: Vec<u32> = targets.to_dtype(DType::U32)?.to_vec1()?;
        let log_sums = self.log_sums.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let dlogits = with_data(logits, |logits| {
            let mut out = vec![0.0f32; logits.len()];
            out.par_chunks_mut(vocab).zip(logits.par_chunks(vocab)).enumerate().for_each(|(row, (out, logits))| {
                let log_sum = log_sums[row];
                for (o, l) in out.iter_mut().zip(logits) {
                    *o = (l - log_sum).exp() * scale;
                }
                out[targets[row] as usize] -= scale;
            });
            Ok(out)
        })?;
        Ok((Some(tensor(dlogits, logits.shape(), logits.device())?), None))
    }
}

/// Mean negative log-likelihood of `targets` (u32, `[n]`) under `logits` (`[n, vocab]`).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let op = CrossEntropy { log_sums: Mutex::new(Vec::new()) };
    logits.contiguous()?.apply_op2(&targets.contiguous()?, op)
}

#[cfg(test)]
mod tests;
