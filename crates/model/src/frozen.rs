//! A frozen base kept in its quantized blocks while adapters train on it: the products of the
//! forward and the backward pass widen the weights a tile of rows at a time, so fine-tuning a
//! 4-bit model holds the 4-bit file and one tile of `f32`, never the widened matrix.
//!
//! The weight is constant, so the backward pass needs only the input's gradient:
//! `y = x Wᵀ` gives `∂x = ∂y W`, the same tiles read the other way round.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use crate::quantized::QuantizedMatrix;

/// How many `f32`s one widened tile holds at most (4 MiB): small beside the activations, large
/// enough that each tile's product keeps the GEMM busy.
const TILE_ELEMENTS: usize = 1 << 20;

/// `x Wᵀ` for `x` of any rank and a frozen quantized `W` (`[out, in]`); gradients flow to `x`
/// only.
pub fn frozen_linear(x: &Tensor, weight: &Arc<QuantizedMatrix>) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let (inner, rest) = dims.split_last().ok_or_else(|| candle_core::Error::Msg("linear on a scalar".into()))?;
    if *inner != weight.inner() {
        return Err(candle_core::Error::Msg(format!(
            "frozen linear: input rows of {inner} for a [{}, {}] weight",
            weight.rows(),
            weight.inner()
        )));
    }
    let rows: usize = rest.iter().product();
    let flat = x.reshape((rows, *inner))?.contiguous()?;
    let product = FrozenProduct { weight: weight.clone(), transposed: false, tile_elements: TILE_ELEMENTS };
    let projected = flat.apply_op1(product)?;
    let mut shape = rest.to_vec();
    shape.push(weight.rows());
    projected.reshape(shape)
}

/// Rows `ids` of a frozen quantized embedding, widened; constant (no gradient).
pub fn frozen_rows(weight: &QuantizedMatrix, ids: &[u32]) -> candle_core::Result<Tensor> {
    let inner = weight.inner();
    let mut values = vec![0.0f32; ids.len() * inner];
    for (out, &id) in values.chunks_exact_mut(inner).zip(ids) {
        let row = id as usize;
        if row >= weight.rows() {
            return Err(candle_core::Error::Msg(format!("token {id} is outside a vocabulary of {}", weight.rows())));
        }
        weight.dequantize_row(row, out);
    }
    Tensor::from_vec(values, (ids.len(), inner), &candle_core::Device::Cpu)
}

/// `x Wᵀ` (`transposed: false`, `x` `[n, in]`) or `x W` (`transposed: true`, `x` `[n, out]`).
struct FrozenProduct {
    weight: Arc<QuantizedMatrix>,
    transposed: bool,
    /// At most this many `f32`s widened at once.
    tile_elements: usize,
}

impl FrozenProduct {
    fn compute(&self, x: &[f32], n: usize) -> candle_core::Result<Vec<f32>> {
        let (rows, inner) = (self.weight.rows(), self.weight.inner());
        let tile_rows = (self.tile_elements / inner).clamp(1, rows);
        let device = candle_core::Device::Cpu;
        let width = if self.transposed { rows } else { inner };
        let x = Tensor::from_slice(x, (n, width), &device)?;
        let out_width = if self.transposed { inner } else { rows };
        let mut out = vec![0.0f32; n * out_width];
        let mut tile = vec![0.0f32; tile_rows * inner];
        for start in (0..rows).step_by(tile_rows) {
            let count = tile_rows.min(rows - start);
            for (row, values) in tile[..count * inner].chunks_exact_mut(inner).enumerate() {
                self.weight.dequantize_row(start + row, values);
            }
            let widened = Tensor::from_slice(&tile[..count * inner], (count, inner), &device)?;
            if self.transposed {
                // ∂x += ∂y[:, tile] · W[tile, :]
                let part = x.narrow(1, start, count)?.contiguous()?.matmul(&widened)?;
                let part = part.flatten_all()?.to_vec1::<f32>()?;
                for (sum, value) in out.iter_mut().zip(part) {
                    *sum += value;
                }
            } else {
                // y[:, tile] = x · W[tile, :]ᵀ
                let part = x.matmul(&widened.t()?)?.flatten_all()?.to_vec1::<f32>()?;
                for (out_row, part_row) in out.chunks_exact_mut(rows).zip(part.chunks_exact(count)) {
                    out_row[start..start + count].copy_from_slice(part_row);
                }
            }
        }
        Ok(out)
    }
}

impl CustomOp1 for FrozenProduct {
    fn name(&self) -> &'static str {
        if self.transposed {
            "frozen-product-transposed"
        } else {
            "frozen-product"
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, width) = layout.shape().dims2()?;
        let expected = if self.transposed { self.weight.rows() } else { self.weight.inner() };
        if width != expected {
            return Err(candle_core::Error::Msg(format!("{}: rows of {width}, not {expected}", self.name())));
        }
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: a strided input", self.name())))?;
        let x = match storage {
            CpuStorage::F32(values) => &values[start..end],
            _ => return Err(candle_core::Error::Msg(format!("{}: only f32 activations", self.name()))),
        };
        let out = self.compute(x, n)?;
        let out_width = if self.transposed { self.weight.inner() } else { self.weight.rows() };
        Ok((CpuStorage::F32(out), Shape::from((n, out_width))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let back = FrozenProduct {
            weight: self.weight.clone(),
            transposed: !self.transposed,
            tile_elements: self.tile_elements,
        };
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use candle_core::quantized::GgmlDType;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};

    use super::*;

    fn random(count: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..count).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn largest_difference(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// The product and the input's gradient, tile by tile (several tiles, the last one short),
    /// equal those of the widened matrix as a dense weight: only the rounding of the sums
    /// differs.
    #[test]
    fn a_frozen_product_and_its_gradient_equal_the_widened_weights() {
        let (rows, inner, n) = (70, 256, 5);
        for kind in [GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K, GgmlDType::F16] {
            let matrix = Arc::new(QuantizedMatrix::quantize(kind, rows, inner, &random(rows * inner, 1)).unwrap());
            let widened = Tensor::from_vec(matrix.dequantize(), (rows, inner), &Device::Cpu).unwrap();
            let x =
                Var::from_tensor(&Tensor::from_vec(random(n * inner, 2), (n, inner), &Device::Cpu).unwrap()).unwrap();
            let upstream = Tensor::from_vec(random(n * rows, 3), (n, rows), &Device::Cpu).unwrap();
            // 8 rows a tile: 9 tiles, the last of 6.
            let product = FrozenProduct { weight: matrix.clone(), transposed: false, tile_elements: 8 * inner };
            let frozen = x.as_tensor().apply_op1(product).unwrap();
            let dense = x.as_tensor().matmul(&widened.t().unwrap()).unwrap();
            assert!(largest_difference(&frozen, &dense) < 1e-4, "{kind:?} forward");
            let gradient = |y: &Tensor| {
                let grads = (y * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
                grads.get(x.as_tensor()).unwrap().clone()
            };
            let (frozen_grad, dense_grad) = (gradient(&frozen), gradient(&dense));
            assert!(largest_difference(&frozen_grad, &dense_grad) < 1e-4, "{kind:?} backward");
            assert!(frozen_grad.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
        }
    }

    #[test]
    fn frozen_rows_are_the_widened_rows_and_an_id_past_the_vocabulary_is_an_error() {
        let matrix = QuantizedMatrix::quantize(GgmlDType::Q8_0, 10, 64, &random(640, 4)).unwrap();
        let widened = matrix.dequantize();
        let rows = frozen_rows(&matrix, &[3, 0, 3]).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(rows[0], widened[3 * 64..4 * 64]);
        assert_eq!(rows[1], widened[..64]);
        assert!(frozen_rows(&matrix, &[10]).is_err());
    }
}
