//! The decoder's weight matrices in either of their two forms: `f32` packed in panels (models
//! the factory trains, or imports as safetensors) or quantized blocks as a GGUF file holds them
//! (see [`crate::quantized`]). A projection's product is split into units of work that threads
//! take side by side.

use std::ops::Range;
use std::sync::Arc;

use crate::panels::PackedMatrix;
use crate::quantized::{Output, QuantizedMatrix};

/// Output columns per unit of work of a quantized product: a few dot products of whole rows.
const QUANTIZED_UNIT: usize = 16;

/// One projection `x W^T`, possibly several matrices side by side (q, k and v of a layer; gate
/// and up), as one product over their columns.
pub(crate) enum Projection {
    Packed(PackedMatrix),
    /// Matrices whose outputs are placed one after another; each keeps its own type (a
    /// Q4_K_M file stores some projections in Q6_K).
    Quantized(Vec<Arc<QuantizedMatrix>>),
}

impl Projection {
    pub(crate) fn columns(&self) -> usize {
        match self {
            Projection::Packed(packed) => packed.columns(),
            Projection::Quantized(parts) => parts.iter().map(|part| part.rows()).sum(),
        }
    }

    pub(crate) fn inner(&self) -> usize {
        match self {
            Projection::Packed(packed) => packed.inner(),
            Projection::Quantized(parts) => parts.first().map_or(0, |part| part.inner()),
        }
    }

    /// How many units of work a product splits into.
    pub(crate) fn units(&self) -> usize {
        match self {
            Projection::Packed(packed) => packed.panels(),
            Projection::Quantized(_) => self.columns().div_ceil(QUANTIZED_UNIT),
        }
    }

    /// Bytes the weights take.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Projection::Packed(packed) => packed.columns() * packed.inner() * size_of::<f32>(),
            Projection::Quantized(parts) => parts.iter().map(|part| part.as_bytes().len()).sum(),
        }
    }

    /// `out = x W^T` (`out += x W^T` when `accumulate`) on the columns of `units`, for `x`
    /// row-major `[rows, inner]` and `out` row-major `[rows, columns]` at the address `out`.
    ///
    /// # Safety
    /// `out` must point to `rows * columns` writable `f32`s that nothing else reads or writes
    /// while this runs, except other calls on disjoint `units`.
    #[allow(unsafe_code)]
    pub(crate) unsafe fn multiply(&self, x: &[f32], rows: usize, out: usize, accumulate: bool, units: Range<usize>) {
        match self {
            // SAFETY: passed on; a unit is a panel.
            Projection::Packed(packed) => unsafe { packed.multiply(x, rows, out, accumulate, units) },
            Projection::Quantized(parts) => {
                let columns = self.columns();
                let wanted = units.start * QUANTIZED_UNIT..(units.end * QUANTIZED_UNIT).min(columns);
                let mut offset = 0;
                for part in parts {
                    let (start, end) = (wanted.start.max(offset), wanted.end.min(offset + part.rows()));
                    if start < end {
                        let output = Output { address: out, stride: columns, offset, accumulate };
                        // SAFETY: `out` is `[rows, columns]` with this part's columns from
                        // `offset`, and these columns are this call's alone.
                        unsafe { part.multiply(x, rows, output, start - offset..end - offset) };
                    }
                    offset += part.rows();
                }
            }
        }
    }
}

/// The token embedding table: rows of `f32`, or the quantized matrix GGUF stores (whose rows
/// are widened when looked up, and which a tied output projection shares).
pub(crate) enum Embedding {
    Dense(Vec<f32>),
    Quantized(Arc<QuantizedMatrix>),
}

impl Embedding {
    /// Row `token` into `out` (`hidden` values).
    pub(crate) fn row(&self, token: usize, out: &mut [f32]) {
        match self {
            Embedding::Dense(values) => {
                let width = out.len();
                out.copy_from_slice(&values[token * width..(token + 1) * width]);
            }
            Embedding::Quantized(matrix) => matrix.dequantize_row(token, out),
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        match self {
            Embedding::Dense(values) => values.len() * size_of::<f32>(),
            Embedding::Quantized(matrix) => matrix.as_bytes().len(),
        }
    }
}
