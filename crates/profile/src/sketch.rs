//! Mergeable quantiles and histograms of numbers whose range is unknown until the end.
//!
//! An equal-width histogram needs the minimum and maximum before the first value is binned,
//! but a stream only knows them at its end, and shards know only their own. Fixed bins over a
//! guessed range clip outliers; re-binning on range growth (doubling the bin width) loses
//! resolution to a single outlier and makes shard merges depend on arrival order.
//!
//! We keep instead a DDSketch (Masson, Rim and Lee, "DDSketch: a fast and fully-mergeable
//! quantile sketch with relative-error guarantees", VLDB 2019): logarithmic buckets
//! `(gamma^(k-1), gamma^k]` with `gamma = (1 + a) / (1 - a)`, one store for positive values,
//! one for negative values (by magnitude) and a counter for zeros. Every value is represented
//! by its bucket's midpoint `2 gamma^k / (gamma + 1)` to within relative error `a` (1 % here),
//! whatever the range; merging adds bucket counts, so it is exact and order independent. At the
//! end, [`crate::numeric`] reads quantiles straight from the buckets and pours the buckets into
//! a fixed number of equal-width bins over the now known `[min, max]`: bin counts are exact up
//! to values lying within 1 % of a bin edge.
//!
//! Memory is bounded by `MAX_BINS` buckets per sign. A range wider than `gamma^MAX_BINS`
//! (about 8 orders of magnitude at 1 %) folds the smallest magnitudes into one bucket, as the
//! paper's "collapsing lowest" store does: the large values keep their accuracy.

use serde::{Deserialize, Serialize};

/// The relative accuracy `a` of every value the sketch reports.
pub(crate) const RELATIVE_ACCURACY: f64 = 0.01;
/// Buckets per sign; at `a` = 1 % they span a ratio of about 8 * 10^8 between the smallest and
/// largest magnitude before collapsing.
const MAX_BINS: usize = 1024;

fn gamma() -> f64 {
    (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
}

/// Bucket of a positive magnitude: `ceil(log_gamma(x))`. Magnitudes below `f64::MIN_POSITIVE`
/// are counted as zero by the caller, so the key stays within about +/-36,000.
fn key_of(magnitude: f64) -> i32 {
    (magnitude.ln() / gamma().ln()).ceil() as i32
}

/// The midpoint of bucket `key`, within relative error `a` of every magnitude in it.
fn value_of(key: i32) -> f64 {
    let g = gamma();
    2.0 * (f64::from(key) * g.ln()).exp() / (g + 1.0)
}

/// Contiguous bucket counts starting at key `offset` ("dense store" in the paper).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Store {
    offset: i32,
    counts: Vec<u64>,
}

impl Store {
    fn add(&mut self, key: i32, n: u64) {
        if n == 0 {
            return;
        }
        if self.counts.is_empty() {
            self.offset = key;
            self.counts.push(n);
            return;
        }
        let max_key = self.offset + self.counts.len() as i32 - 1;
        let mut key = key;
        if key > max_key {
            self.counts.resize((key - self.offset) as usize + 1, 0);
            self.collapse_lowest();
        } else if key < self.offset {
            // Below the window the store may grow to, values join the lowest bucket.
            key = key.max(max_key - (MAX_BINS as i32 - 1));
            if key < self.offset {
                let grow = (self.offset - key) as usize;
                self.counts.splice(0..0, std::iter::repeat_n(0, grow));
                self.offset = key;
            }
        }
        if let Some(slot) = self.counts.get_mut((key - self.offset) as usize) {
            *slot += n;
        }
    }

    /// Folds the lowest buckets into one until at most `MAX_BINS` remain.
    fn collapse_lowest(&mut self) {
        if self.counts.len() <= MAX_BINS {
            return;
        }
        let excess = self.counts.len() - MAX_BINS;
        let folded: u64 = self.counts.iter().take(excess + 1).sum();
        self.counts.drain(..excess);
        if let Some(first) = self.counts.first_mut() {
            *first = folded;
        }
        self.offset += excess as i32;
    }

    fn merge(&mut self, other: &Store) {
        for (key, count) in other.buckets() {
            self.add(key, count);
        }
    }

    /// Non-empty buckets, ascending by key.
    fn buckets(&self) -> impl DoubleEndedIterator<Item = (i32, u64)> + '_ {
        self.counts.iter().enumerate().filter(|(_, &c)| c > 0).map(|(i, &c)| (self.offset + i as i32, c))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct QuantileSketch {
    count: u64,
    zeros: u64,
    positive: Store,
    negative: Store,
}

impl QuantileSketch {
    /// Adds a finite value (callers filter NaN and infinities).
    pub(crate) fn add(&mut self, x: f64) {
        self.count += 1;
        if x >= f64::MIN_POSITIVE {
            self.positive.add(key_of(x), 1);
        } else if x <= -f64::MIN_POSITIVE {
            self.negative.add(key_of(-x), 1);
        } else {
            self.zeros += 1;
        }
    }

    pub(crate) fn merge(&mut self, other: &QuantileSketch) {
        self.count += other.count;
        self.zeros += other.zeros;
        self.positive.merge(&other.positive);
        self.negative.merge(&other.negative);
    }

    /// Every bucket as (representative value, count), ascending by value.
    pub(crate) fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let negatives = self.negative.buckets().rev().map(|(key, count)| (-value_of(key), count));
        let zeros = (self.zeros > 0).then_some((0.0, self.zeros));
        let positives = self.positive.buckets().map(|(key, count)| (value_of(key), count));
        negatives.chain(zeros).chain(positives)
    }

    /// The value of rank `q * (n - 1)` (lower quantile), within relative error `a`.
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * (self.count - 1) as f64).floor() as u64;
        let mut seen = 0u64;
        let mut last = None;
        for (value, count) in self.buckets() {
            seen += count;
            last = Some(value);
            if seen > rank {
                return Some(value);
            }
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() <= RELATIVE_ACCURACY * expected.abs() + 1e-12
    }

    #[test]
    fn quantiles_have_relative_error_bound() {
        let mut sketch = QuantileSketch::default();
        let values: Vec<f64> = (1..=10_000).map(|i| f64::from(i) * 0.37 - 900.0).collect();
        values.iter().for_each(|&v| sketch.add(v));
        for q in [0.0, 0.01, 0.25, 0.5, 0.75, 0.99, 1.0] {
            let rank = (q * (values.len() - 1) as f64).floor() as usize;
            let expected = values[rank];
            let actual = sketch.quantile(q).unwrap_or(f64::NAN);
            assert!(within(actual, expected), "q {q}: {actual} vs {expected}");
        }
    }

    #[test]
    fn zeros_and_signs_are_ordered() {
        let mut sketch = QuantileSketch::default();
        for v in [-5.0, 0.0, 0.0, 3.0, -1e-320] {
            sketch.add(v);
        }
        let values: Vec<f64> = sketch.buckets().map(|(v, _)| v).collect();
        assert_eq!(values.len(), 3);
        assert!(values[0] < 0.0 && values[1] == 0.0 && values[2] > 0.0);
        assert_eq!(sketch.quantile(0.5), Some(0.0));
    }

    #[test]
    fn merge_is_exact() {
        let mut whole = QuantileSketch::default();
        let mut a = QuantileSketch::default();
        let mut b = QuantileSketch::default();
        for i in 0..5000 {
            let v = (f64::from(i) * 0.731).sin() * 1000.0;
            whole.add(v);
            if i % 2 == 0 {
                a.add(v);
            } else {
                b.add(v);
            }
        }
        b.merge(&a);
        assert_eq!(whole.buckets().collect::<Vec<_>>(), b.buckets().collect::<Vec<_>>());
    }

    #[test]
    fn memory_is_bounded_and_large_values_keep_accuracy() {
        let mut sketch = QuantileSketch::default();
        for e in -200..200 {
            for m in 1..10 {
                sketch.add(f64::from(m) * 10f64.powi(e));
            }
        }
        assert!(sketch.positive.counts.len() <= MAX_BINS);
        let top = sketch.quantile(1.0).unwrap_or(f64::NAN);
        assert!(within(top, 9e199), "{top}");
        assert_eq!(sketch.buckets().map(|(_, c)| c).sum::<u64>(), 400 * 9);
    }
}
