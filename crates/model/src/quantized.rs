//! Weight matrices kept in the blocks a GGUF file stores them in (F32, F16, BF16, Q8_0, Q4_0,
//! Q4_1, Q4_K, Q5_K, Q6_K), and the decoder's products run on those blocks: a model loads at
//! about its file's size instead of four bytes a weight.
//!
//! A product quantizes the activations once per call into the type each weight type's dot
//! product pairs with (Q8_0 for the 32-element types, Q8_K for the K-quants, the half type
//! itself for F16 and BF16) and then takes candle's dot products, which use AVX2 and FMA where
//! the CPU has them (detected at run time) and a portable path elsewhere: llama.cpp's method and
//! its rounding, so the two engines compute the same sums.

use std::ops::Range;

use candle_core::quantized::k_quants::{BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ6K, BlockQ8_0, GgmlType};
pub use candle_core::quantized::GgmlDType;
use half::{bf16, f16};

use crate::ModelError;

/// One weight matrix `[rows, inner]` (a row per output), each row a run of blocks.
pub struct QuantizedMatrix {
    rows: usize,
    inner: usize,
    blocks: Box<dyn BlockRows>,
}

impl QuantizedMatrix {
    /// The matrix of `rows` rows of `inner` elements whose blocks of `kind` are `bytes`, as a
    /// GGUF file stores them.
    pub fn from_bytes(kind: GgmlDType, rows: usize, inner: usize, bytes: &[u8]) -> Result<Self, ModelError> {
        if inner == 0 || !inner.is_multiple_of(kind.block_size()) {
            return Err(ModelError::Weights(format!(
                "rows of {inner} elements do not fill {kind:?} blocks of {}",
                kind.block_size()
            )));
        }
        let expected = rows * inner / kind.block_size() * kind.type_size();
        if bytes.len() != expected {
            return Err(ModelError::Weights(format!(
                "a [{rows}, {inner}] {kind:?} matrix takes {expected} bytes, not {}",
                bytes.len()
            )));
        }
        let blocks = block_rows(kind, Source::Bytes(bytes))?;
        Ok(QuantizedMatrix { rows, inner, blocks })
    }

    /// The matrix of `rows` rows of `inner` elements whose blocks of `kind` are the next bytes
    /// of `reader` (as a GGUF file stores them), read straight into the blocks: loading a model
    /// holds no second copy of a tensor.
    pub fn read(
        kind: GgmlDType,
        rows: usize,
        inner: usize,
        reader: &mut dyn std::io::Read,
    ) -> Result<Self, ModelError> {
        if inner == 0 || !inner.is_multiple_of(kind.block_size()) {
            return Err(ModelError::Weights(format!(
                "rows of {inner} elements do not fill {kind:?} blocks of {}",
                kind.block_size()
            )));
        }
        let blocks = block_rows(kind, Source::Reader(reader, rows * inner / kind.block_size()))?;
        Ok(QuantizedMatrix { rows, inner, blocks })
    }

    /// `values` (`[rows, inner]`, row-major) quantized to `kind`, as llama.cpp's quantizer
    /// would (without an importance matrix).
    pub fn quantize(kind: GgmlDType, rows: usize, inner: usize, values: &[f32]) -> Result<Self, ModelError> {
        if values.len() != rows * inner {
            return Err(ModelError::Weights(format!("{} values for a [{rows}, {inner}] matrix", values.len())));
        }
        if !inner.is_multiple_of(kind.block_size()) {
            return Err(ModelError::Weights(format!(
                "rows of {inner} elements do not fill {kind:?} blocks of {}",
                kind.block_size()
            )));
        }
        let blocks = block_rows(kind, Source::Values(values))?;
        Ok(QuantizedMatrix { rows, inner, blocks })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn inner(&self) -> usize {
        self.inner
    }

    pub fn kind(&self) -> GgmlDType {
        self.blocks.kind()
    }

    /// The blocks as a GGUF file stores them.
    pub fn as_bytes(&self) -> &[u8] {
        self.blocks.as_bytes()
    }

    /// Row `row` widened to `out` (`inner` values).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        self.blocks.dequantize(row * self.inner..(row + 1) * self.inner, out);
    }

    /// The whole matrix widened, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.inner];
        self.blocks.dequantize(0..self.rows * self.inner, &mut out);
        out
    }

    /// The rows reordered: row `i` of the result is row `order[i]` of this one.
    pub fn permute_rows(&mut self, order: &[usize]) {
        assert_eq!(order.len(), self.rows, "one source row per row");
        self.blocks.permute_rows(order, self.inner);
    }

    /// `out[r][offset + c] = x[r] . row c` (`+=` when accumulating) for the rows `columns` of
    /// this matrix and every row of `x` (`[x_rows, inner]`).
    ///
    /// # Safety
    /// `out.address` must point to `x_rows * out.stride` writable `f32`s, `out.offset +
    /// self.rows() <= out.stride`, and nothing else may read or write the columns written here
    /// while this runs (other calls may write other columns).
    #[allow(unsafe_code)]
    pub(crate) unsafe fn multiply(&self, x: &[f32], x_rows: usize, out: Output, columns: Range<usize>) {
        assert!(columns.end <= self.rows && x.len() >= x_rows * self.inner);
        // SAFETY: passed on from the caller.
        unsafe { self.blocks.multiply(x, x_rows, self.inner, out, columns) }
    }
}

/// What a matrix's blocks are made from.
enum Source<'a> {
    /// The blocks as a GGUF file stores them.
    Bytes(&'a [u8]),
    /// That many blocks, read from a file.
    Reader(&'a mut dyn std::io::Read, usize),
    /// Values to quantize.
    Values(&'a [f32]),
}

/// The blocks of `kind` made from `source`: the one place a type name becomes its block type.
fn block_rows(kind: GgmlDType, source: Source<'_>) -> Result<Box<dyn BlockRows>, ModelError> {
    fn make<T: GgmlType + 'static>(source: Source<'_>) -> Result<Blocks<T>, ModelError> {
        Ok(match source {
            Source::Bytes(bytes) => Blocks::from_bytes(bytes),
            Source::Reader(reader, count) => {
                let mut blocks = Blocks(vec![T::zeros(); count]);
                reader.read_exact(blocks.as_bytes_mut()).map_err(|e| ModelError::Weights(e.to_string()))?;
                blocks
            }
            Source::Values(values) => Blocks::quantize(values),
        })
    }
    Ok(match kind {
        GgmlDType::F32 => Box::new(make::<f32>(source)?),
        GgmlDType::F16 => Box::new(make::<f16>(source)?),
        GgmlDType::BF16 => Box::new(make::<bf16>(source)?),
        GgmlDType::Q8_0 => Box::new(make::<BlockQ8_0>(source)?),
        GgmlDType::Q4_0 => Box::new(make::<BlockQ4_0>(source)?),
        GgmlDType::Q4_1 => Box::new(Q4_1Rows(make::<BlockQ4_1>(source)?)),
        GgmlDType::Q4K => Box::new(make::<BlockQ4K>(source)?),
        GgmlDType::Q5K => Box::new(make::<BlockQ5K>(source)?),
        GgmlDType::Q6K => Box::new(make::<BlockQ6K>(source)?),
        other => return Err(ModelError::Weights(format!("{other:?} weights are not served"))),
    })
}

/// Where a product writes: `[rows, stride]` row-major, this matrix's columns from `offset`.
#[derive(Clone, Copy)]
pub(crate) struct Output {
    /// The address of the first value (an address, not a pointer, so threads can share it).
    pub(crate) address: usize,
    pub(crate) stride: usize,
    pub(crate) offset: usize,
    pub(crate) accumulate: bool,
}

/// The blocks of one weight type, behind one interface: the decoder holds matrices of
/// different types side by side (a Q4_K_M file mixes Q4_K and Q6_K).
trait BlockRows: Send + Sync {
    fn kind(&self) -> GgmlDType;
    fn as_bytes(&self) -> &[u8];
    fn dequantize(&self, elements: Range<usize>, out: &mut [f32]);
    fn permute_rows(&mut self, order: &[usize], inner: usize);
    /// As [`QuantizedMatrix::multiply`], with its safety conditions.
    #[allow(unsafe_code)]
    unsafe fn multiply(&self, x: &[f32], x_rows: usize, inner: usize, out: Output, columns: Range<usize>);
}

struct Blocks<T>(Vec<T>);

impl<T: GgmlType> Blocks<T> {
    fn from_bytes(bytes: &[u8]) -> Self {
        let mut blocks = Blocks(vec![T::zeros(); bytes.len() / std::mem::size_of::<T>()]);
        blocks.as_bytes_mut().copy_from_slice(bytes);
        blocks
    }

    /// The blocks' bytes, to be written as a file's bytes.
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        assert_eq!(std::mem::size_of::<T>(), T::DTYPE.type_size(), "candle's block layout is GGUF's");
        // SAFETY: the block types are `repr(C)` structs of integers and half floats (or those
        // numbers themselves), for which every bit pattern is a value; the slice covers exactly
        // the vector's blocks.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(self.0.as_slice()))
        }
    }

    fn quantize(values: &[f32]) -> Self {
        let mut blocks = vec![T::zeros(); values.len() / T::BLCK_SIZE];
        T::from_float(values, &mut blocks);
        Blocks(blocks)
    }
}

impl<T: GgmlType + 'static> BlockRows for Blocks<T> {
    fn kind(&self) -> GgmlDType {
        T::DTYPE
    }

    fn as_bytes(&self) -> &[u8] {
        // SAFETY: as in `from_bytes`; the slice covers exactly the vector's blocks.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts(self.0.as_ptr().cast::<u8>(), std::mem::size_of_val(self.0.as_slice()))
        }
    }

    fn dequantize(&self, elements: Range<usize>, out: &mut [f32]) {
        let blocks = elements.start / T::BLCK_SIZE..elements.end / T::BLCK_SIZE;
        T::to_float(&self.0[blocks], &mut out[..elements.len()]);
    }

    fn permute_rows(&mut self, order: &[usize], inner: usize) {
        let per_row = inner / T::BLCK_SIZE;
        let mut permuted = Vec::with_capacity(self.0.len());
        for &source in order {
            permuted.extend_from_slice(&self.0[source * per_row..(source + 1) * per_row]);
        }
        self.0 = permuted;
    }

    #[allow(unsafe_code)]
    unsafe fn multiply(&self, x: &[f32], x_rows: usize, inner: usize, out: Output, columns: Range<usize>) {
        let per_row = inner / T::BLCK_SIZE;
        let mut scratch = ACTIVATIONS.take();
        let activations = scratch_blocks::<T::VecDotType>(&mut scratch, x_rows * per_row);
        for (x, quantized) in x.chunks_exact(inner).zip(activations.chunks_exact_mut(per_row)).take(x_rows) {
            T::VecDotType::from_float(x, quantized);
        }
        let activations = &*activations;
        let base = out.address as *mut f32;
        for column in columns {
            let weights = &self.0[column * per_row..(column + 1) * per_row];
            for (row, activations) in activations.chunks_exact(per_row).enumerate() {
                let value = T::vec_dot(inner, weights, activations);
                // SAFETY: the caller hands this call the columns `columns` of every row of
                // `out` alone, and `out` holds `x_rows` rows of `stride`.
                unsafe {
                    let at = base.add(row * out.stride + out.offset + column);
                    *at = if out.accumulate { *at + value } else { value };
                }
            }
        }
        ACTIVATIONS.set(scratch);
    }
}

thread_local! {
    /// Each thread's quantized activations, reused from product to product (a decode step runs
    /// a few hundred products; allocating their activations each time showed in its profile).
    static ACTIVATIONS: std::cell::Cell<Vec<u64>> = const { std::cell::Cell::new(Vec::new()) };
}

/// `count` blocks of `B` at the start of `scratch` (grown to hold them), their contents
/// whatever was there: the caller writes every one before reading it.
fn scratch_blocks<B: GgmlType>(scratch: &mut Vec<u64>, count: usize) -> &mut [B] {
    // Block types hold integers and half floats: eight-byte words align them.
    const { assert!(std::mem::align_of::<B>() <= std::mem::align_of::<u64>()) };
    let words = (count * std::mem::size_of::<B>()).div_ceil(8);
    if scratch.len() < words {
        scratch.resize(words, 0);
    }
    // SAFETY: the words hold at least `count` blocks' bytes, are aligned for them (checked
    // above), and every bit pattern is a block (integers and half floats).
    #[allow(unsafe_code)]
    unsafe {
        std::slice::from_raw_parts_mut(scratch.as_mut_ptr().cast::<B>(), count)
    }
}

/// Q4_1 on llama.cpp's arithmetic. candle rounds an activation block's sum twice (to f16, then
/// its product with the f16 scale, in f16) where ggml multiplies in f32 and rounds once; on a
/// Q4_1 model that moves logits by tenths of a percent, enough to part greedy decoding from
/// llama.cpp's. The products here follow ggml's reference; the layout is candle's (and GGUF's).
struct Q4_1Rows(Blocks<BlockQ4_1>);

/// GGUF's Q4_1 block: scale, minimum, 32 four-bit values.
#[repr(C)]
#[derive(Clone, Copy)]
struct Q4_1Block {
    d: f16,
    m: f16,
    qs: [u8; 16],
}

/// An activation block for Q4_1: scale, `d * sum(qs)` rounded once, 32 eight-bit values.
#[derive(Clone, Copy)]
struct Q8_1Block {
    d: f32,
    s: f32,
    qs: [i8; 32],
}

impl Q8_1Block {
    fn quantize(x: &[f32]) -> Q8_1Block {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0i8; 32];
        let mut sum = 0i32;
        for (q, &v) in qs.iter_mut().zip(x) {
            *q = (v * inverse).round() as i8;
            sum += i32::from(*q);
        }
        Q8_1Block { d: f16::from_f32(d).to_f32(), s: f16::from_f32(sum as f32 * d).to_f32(), qs }
    }
}

impl BlockRows for Q4_1Rows {
    fn kind(&self) -> GgmlDType {
        GgmlDType::Q4_1
    }

    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    fn dequantize(&self, elements: Range<usize>, out: &mut [f32]) {
        self.0.dequantize(elements, out)
    }

    fn permute_rows(&mut self, order: &[usize], inner: usize) {
        self.0.permute_rows(order, inner)
    }

    #[allow(unsafe_code)]
    unsafe fn multiply(&self, x: &[f32], x_rows: usize, inner: usize, out: Output, columns: Range<usize>) {
        const { assert!(size_of::<Q4_1Block>() == size_of::<BlockQ4_1>()) };
        // SAFETY: both are the 20-byte `repr(C)` GGUF layout of f16, f16, [u8; 16], every bit
        // pattern a value, and `f16` sets the alignment of both.
        let blocks: &[Q4_1Block] =
            unsafe { std::slice::from_raw_parts(self.0 .0.as_ptr().cast::<Q4_1Block>(), self.0 .0.len()) };
        let per_row = inner / 32;
        let activations: Vec<Q8_1Block> = x[..x_rows * inner].chunks_exact(32).map(Q8_1Block::quantize).collect();
        let base = out.address as *mut f32;
        for column in columns {
            let weights = &blocks[column * per_row..(column + 1) * per_row];
            for (row, activations) in activations.chunks_exact(per_row).enumerate() {
                let mut sum = 0.0f32;
                for (w, a) in weights.iter().zip(activations) {
                    let mut dot = 0i32;
                    for j in 0..16 {
                        dot += i32::from(w.qs[j] & 0x0F) * i32::from(a.qs[j])
                            + i32::from(w.qs[j] >> 4) * i32::from(a.qs[j + 16]);
                    }
                    sum += w.d.to_f32() * a.d * dot as f32 + w.m.to_f32() * a.s;
                }
                // SAFETY: as in `Blocks::multiply`.
                unsafe {
                    let at = base.add(row * out.stride + out.offset + column);
                    *at = if out.accumulate { *at + sum } else { sum };
                }
            }
        }
    }
}
