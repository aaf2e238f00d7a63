//! Weight matrices packed for the decoder's products `x W^T` with few rows (one to a few dozen
//! new tokens per step). A projection stored `[in, out]` row-major makes a product read, for
//! each input dimension, a short run of columns from a different row kilobytes away: the
//! prefetchers lose the stream and every run is a cache miss (measured against `gemm` on that
//! layout: 1.4–2x slower at 16 and 32 rows on this project's shapes). Packed, the columns are
//! cut into panels of [`PANEL`] and each panel is stored `[in, PANEL]` contiguously, so a
//! product reads every panel once, front to back, and it fits in L1 while every row tile of
//! the step passes over it.

use std::ops::Range;

use pulp::Simd;

/// Columns per panel: two AVX-512 vectors, four AVX2 ones.
pub(crate) const PANEL: usize = 32;

/// Panels start on this many bytes, so no vector load straddles two cache lines.
const ALIGN: usize = 64;

/// `W^T` (`[inner, columns]`) as column panels, the last one padded with zeros.
pub(crate) struct PackedMatrix {
    /// The panels start `offset` elements in, at the first `ALIGN`-byte boundary.
    data: Vec<f32>,
    offset: usize,
    inner: usize,
    columns: usize,
}

impl PackedMatrix {
    /// Packs `transposed`, row-major `[inner, columns]`.
    pub(crate) fn pack(transposed: &[f32], inner: usize, columns: usize) -> PackedMatrix {
        assert_eq!(transposed.len(), inner * columns, "a [{inner}, {columns}] matrix");
        let panels = columns.div_ceil(PANEL);
        let spare = ALIGN / size_of::<f32>();
        let mut data = vec![0.0f32; panels * PANEL * inner + spare];
        // The vector is never grown, so its buffer (and this boundary) stays where it is.
        let offset = data.as_ptr().align_offset(ALIGN).min(spare);
        for (panel, packed) in data[offset..].chunks_exact_mut(PANEL * inner).enumerate() {
            let first = panel * PANEL;
            let width = PANEL.min(columns - first);
            for (row, packed) in transposed.chunks_exact(columns).zip(packed.chunks_exact_mut(PANEL)) {
                packed[..width].copy_from_slice(&row[first..first + width]);
            }
        }
        PackedMatrix { data, offset, inner, columns }
    }

    pub(crate) fn columns(&self) -> usize {
        self.columns
    }

    pub(crate) fn inner(&self) -> usize {
        self.inner
    }

    pub(crate) fn panels(&self) -> usize {
        self.columns.div_ceil(PANEL)
    }

    fn panel(&self, index: usize) -> &[f32] {
        &self.data[self.offset + index * PANEL * self.inner..][..PANEL * self.inner]
    }

    /// `out = x W^T` (`out += x W^T` when `accumulate`) on the columns of `panels`, for `x`
    /// row-major `[rows, inner]` and `out` row-major `[rows, columns]`, which is passed as an
    /// address so that threads can write disjoint panels of the same rows.
    ///
    /// # Safety
    /// `out` must point to `rows * columns` writable `f32`s that nothing else reads or writes
    /// while this runs, except other calls on disjoint `panels`.
    #[allow(unsafe_code)]
    pub(crate) unsafe fn multiply(&self, x: &[f32], rows: usize, out: usize, accumulate: bool, panels: Range<usize>) {
        pulp::Arch::new().dispatch(self.product(x, rows, out, accumulate, panels));
    }

    /// [`PackedMatrix::multiply`] on the vector units of `simd` (to test each kernel width).
    ///
    /// # Safety
    /// As [`PackedMatrix::multiply`].
    #[cfg(test)]
    #[allow(unsafe_code)]
    pub(crate) unsafe fn multiply_on<S: Simd>(
        &self,
        simd: S,
        x: &[f32],
        rows: usize,
        out: usize,
        accumulate: bool,
        panels: Range<usize>,
    ) {
        simd.vectorize(self.product(x, rows, out, accumulate, panels));
    }

    fn product<'a>(
        &'a self,
        x: &'a [f32],
        rows: usize,
        out: usize,
        accumulate: bool,
        panels: Range<usize>,
    ) -> Multiply<'a> {
        assert!(x.len() >= rows * self.inner && panels.end <= self.panels());
        Multiply { matrix: self, x, rows, out: out as *mut f32, accumulate, panels }
    }
}

struct Multiply<'a> {
    matrix: &'a PackedMatrix,
    x: &'a [f32],
    rows: usize,
    out: *mut f32,
    accumulate: bool,
    panels: Range<usize>,
}

impl pulp::WithSimd for Multiply<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        // Twelve rows of two AVX-512 vectors are 24 of its 32 registers; AVX2 and narrower
        // have 16, so six rows.
        if S::F32_LANES >= 16 {
            self.tiles::<S, 12>(simd)
        } else {
            self.tiles::<S, 6>(simd)
        }
    }
}

impl Multiply<'_> {
    /// Every panel, in tiles of up to `R` rows by two vectors of columns, the widest first.
    #[inline(always)]
    fn tiles<S: Simd, const R: usize>(&self, simd: S) {
        let width = 2 * S::F32_LANES;
        for panel in self.panels.clone() {
            let weights = self.matrix.panel(panel);
            // A narrow kernel's last steps across a last, partly filled panel may hold no column.
            let columns = (self.matrix.columns - panel * PANEL).min(PANEL);
            for start in (0..columns).step_by(width) {
                let mut row = 0;
                while row + R <= self.rows {
                    self.tile::<S, R>(simd, weights, row, panel * PANEL + start);
                    row += R;
                }
                while row + 4 <= self.rows {
                    self.tile::<S, 4>(simd, weights, row, panel * PANEL + start);
                    row += 4;
                }
                while row < self.rows {
                    self.tile::<S, 1>(simd, weights, row, panel * PANEL + start);
                    row += 1;
                }
            }
        }
    }

    /// Rows `first..first + R` and the two vectors of columns from `column` (within
    /// `weights`'s panel): the sums stay in registers over all of `inner`.
    #[inline(always)]
    fn tile<S: Simd, const R: usize>(&self, simd: S, weights: &[f32], first: usize, column: usize) {
        let inner = self.matrix.inner;
        let within = column % PANEL;
        let zero = simd.splat_f32s(0.0);
        let mut sums = [[zero; 2]; R];
        let inputs: [&[f32]; R] = std::array::from_fn(|r| &self.x[(first + r) * inner..][..inner]);
        for (k, weights) in weights.chunks_exact(PANEL).enumerate() {
            let (vectors, _) = S::as_simd_f32s(&weights[within..]);
            let (low, high) = (vectors[0], vectors[1]);
            for (sum, input) in sums.iter_mut().zip(&inputs) {
                let x = simd.splat_f32s(input[k]);
                sum[0] = simd.mul_add_f32s(low, x, sum[0]);
                sum[1] = simd.mul_add_f32s(high, x, sum[1]);
            }
        }
        let columns = self.matrix.columns;
        let valid = (columns - column).min(2 * S::F32_LANES);
        for (r, sum) in sums.iter().enumerate() {
            let mut lanes = [0.0f32; 64];
            let (stored, _) = S::as_mut_simd_f32s(&mut lanes[..2 * S::F32_LANES]);
            stored[0] = sum[0];
            stored[1] = sum[1];
            // SAFETY: `multiply`'s contract: `out` holds `rows * columns` values, row
            // `first + r` < `rows`, and `column + valid` <= `columns`; these columns belong to
            // this call's panels alone.
            #[allow(unsafe_code)]
            let out = unsafe { std::slice::from_raw_parts_mut(self.out.add((first + r) * columns + column), valid) };
            if self.accumulate {
                for (o, &v) in out.iter_mut().zip(&lanes) {
                    *o += v;
                }
            } else {
                out.copy_from_slice(&lanes[..valid]);
            }
        }
    }
}
