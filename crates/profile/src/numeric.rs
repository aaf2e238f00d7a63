//! One accumulator for every numeric distribution the profiles report: column values, string
//! lengths, document lengths.
//!
//! It pairs exact moments ([`crate::moments`], Welford / Chan et al.) with a DDSketch
//! ([`crate::sketch`]) so that a summary carries count, min, max, mean and standard deviation
//! exactly, and quantiles and an equal-width histogram to within 1 % relative error, all from
//! bounded, mergeable state.

use serde::{Deserialize, Serialize};

use crate::moments::Moments;
use crate::sketch::QuantileSketch;

/// Number of equal-width bins in every reported histogram.
pub const HISTOGRAM_BINS: usize = 20;
/// The quantiles every summary reports.
pub const QUANTILES: [f64; 7] = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct NumericAccumulator {
    moments: Moments,
    sketch: QuantileSketch,
    /// NaN and +/-infinity: counted, but kept out of the moments and the sketch, where a single
    /// one would make the mean and every bin meaningless.
    non_finite: u64,
    /// Exact integer bounds, because an `i64` beyond 2^53 does not survive the trip to `f64`.
    integer_min: Option<i64>,
    integer_max: Option<i64>,
    /// How many of the finite values were integers.
    integers: u64,
}

/// Distribution of a set of numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumericSummary {
    /// Finite values summarised (NaN and infinities excluded, see `non_finite`).
    pub count: u64,
    /// NaN and infinite values seen.
    pub non_finite: u64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// Population standard deviation.
    pub std_dev: f64,
    /// Exact bounds when every value was an integer (`min`/`max` are `f64` and may round).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integer_min: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integer_max: Option<i64>,
    /// Lower quantiles at [`QUANTILES`], within 1 % relative error (rounded when every value
    /// was an integer).
    pub quantiles: Vec<Quantile>,
    /// [`HISTOGRAM_BINS`] equal-width bins over `[min, max]` (one bin when `min == max`).
    pub histogram: Vec<HistogramBin>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantile {
    pub q: f64,
    pub value: f64,
}

/// One histogram bin: values in `[lower, upper)`, the last bin also includes `upper`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistogramBin {
    pub lower: f64,
    pub upper: f64,
    pub count: u64,
}

impl NumericAccumulator {
    pub(crate) fn push_f64(&mut self, x: f64) {
        if !x.is_finite() {
            self.non_finite += 1;
            return;
        }
        self.moments.push(x);
        self.sketch.add(x);
    }

    pub(crate) fn push_i64(&mut self, x: i64) {
        self.integer_min = Some(self.integer_min.map_or(x, |m| m.min(x)));
        self.integer_max = Some(self.integer_max.map_or(x, |m| m.max(x)));
        self.integers += 1;
        self.push_f64(x as f64);
    }

    pub(crate) fn merge(&mut self, other: &NumericAccumulator) {
        self.moments.merge(&other.moments);
        self.sketch.merge(&other.sketch);
        self.non_finite += other.non_finite;
        self.integers += other.integers;
        self.integer_min = combine_option(self.integer_min, other.integer_min, i64::min);
        self.integer_max = combine_option(self.integer_max, other.integer_max, i64::max);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.moments.count == 0 && self.non_finite == 0
    }

    pub(crate) fn summary(&self) -> NumericSummary {
        let m = &self.moments;
        let all_integers = m.count > 0 && self.integers == m.count;
        let (min, max) = (m.min, m.max);
        let quantiles = QUANTILES
            .iter()
            .filter_map(|&q| {
                // The sketch's midpoints may fall a hair outside the exact range, and for
                // integer data the nearest integer is closer to the true quantile than the
                // midpoint (exact below 50, where 1 % is less than one half).
                let value = self.sketch.quantile(q)?.clamp(min, max);
                let value = if all_integers { value.round() } else { value };
                Some(Quantile { q, value })
            })
            .collect();
        NumericSummary {
            count: m.count,
            non_finite: self.non_finite,
            min,
            max,
            mean: m.mean,
            std_dev: m.std_dev(),
            integer_min: self.integer_min.filter(|_| all_integers),
            integer_max: self.integer_max.filter(|_| all_integers),
            quantiles,
            histogram: self.histogram(),
        }
    }

    /// Pours the sketch's buckets into equal-width bins over the exact `[min, max]`: each
    /// bucket lands in the bin of its representative value (clamped into the range).
    fn histogram(&self) -> Vec<HistogramBin> {
        let m = &self.moments;
        if m.count == 0 {
            return Vec::new();
        }
        let (min, max) = (m.min, m.max);
        let width = (max - min) / HISTOGRAM_BINS as f64;
        if !width.is_finite() || width <= 0.0 {
            return vec![HistogramBin { lower: min, upper: max, count: m.count }];
        }
        let mut bins: Vec<HistogramBin> = (0..HISTOGRAM_BINS)
            .map(|i| HistogramBin {
                lower: min + width * i as f64,
                upper: if i + 1 == HISTOGRAM_BINS { max } else { min + width * (i + 1) as f64 },
                count: 0,
            })
            .collect();
        for (value, count) in self.sketch.buckets() {
            let position = ((value.clamp(min, max) - min) / width).floor() as usize;
            if let Some(bin) = bins.get_mut(position.min(HISTOGRAM_BINS - 1)) {
                bin.count += count;
            }
        }
        bins
    }
}

fn combine_option(a: Option<i64>, b: Option<i64>, pick: fn(i64, i64) -> i64) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(pick(a, b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_uniform_integers() {
        let mut acc = NumericAccumulator::default();
        (0..=1000).for_each(|i| acc.push_i64(i));
        acc.push_f64(f64::NAN);
        let s = acc.summary();
        assert_eq!(s.count, 1001);
        assert_eq!(s.non_finite, 1);
        assert_eq!((s.min, s.max), (0.0, 1000.0));
        assert_eq!((s.integer_min, s.integer_max), (Some(0), Some(1000)));
        assert!((s.mean - 500.0).abs() < 1e-9);
        assert_eq!(s.histogram.len(), HISTOGRAM_BINS);
        assert_eq!(s.histogram.iter().map(|b| b.count).sum::<u64>(), 1001);
        // 50 values per bin; the 1 % representative error moves a value only near an edge.
        for bin in &s.histogram {
            assert!((40..=62).contains(&bin.count), "{bin:?}");
        }
        let median = s.quantiles.iter().find(|q| q.q == 0.5).map(|q| q.value);
        assert!(median.is_some_and(|m| (m - 500.0).abs() <= 5.0), "{median:?}");
    }

    #[test]
    fn constant_values_make_one_bin_and_huge_integers_stay_exact() {
        let mut acc = NumericAccumulator::default();
        for _ in 0..3 {
            acc.push_i64(i64::MAX);
        }
        let s = acc.summary();
        assert_eq!(s.histogram.len(), 1);
        assert_eq!(s.histogram[0].count, 3);
        assert_eq!(s.integer_max, Some(i64::MAX));
        assert_eq!(s.std_dev, 0.0);
    }

    #[test]
    fn floats_hide_integer_bounds() {
        let mut acc = NumericAccumulator::default();
        acc.push_i64(3);
        acc.push_f64(0.5);
        let s = acc.summary();
        assert_eq!(s.integer_min, None);
        assert_eq!((s.min, s.max), (0.5, 3.0));
    }
}
