//! Streaming count, mean, variance, minimum and maximum.
//!
//! The naive `sum(x^2) - sum(x)^2 / n` formula loses all precision when the mean is large
//! relative to the spread (timestamps, identifiers), so values are accumulated with Welford's
//! online update (B. P. Welford, 1962), and shards are combined with the pairwise formula of
//! Chan, Golub and LeVeque ("Updating formulae and a pairwise algorithm for computing sample
//! variances", 1979), which is exact in exact arithmetic and equally stable.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Moments {
    pub(crate) count: u64,
    pub(crate) mean: f64,
    /// Sum of squared deviations from the mean (`M2` in Welford's notation).
    pub(crate) m2: f64,
    /// Meaningful only when `count > 0`; kept finite (not +/-inf) so JSON can carry the state.
    pub(crate) min: f64,
    pub(crate) max: f64,
}

impl Moments {
    /// Welford: `delta = x - mean; mean += delta / n; M2 += delta * (x - mean_new)`.
    pub(crate) fn push(&mut self, x: f64) {
        if self.count == 0 {
            self.min = x;
            self.max = x;
        } else {
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
        self.count += 1;
        let delta = x - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (x - self.mean);
    }

    /// Chan et al.: `mean = mean_a + delta * n_b / n`,
    /// `M2 = M2_a + M2_b + delta^2 * n_a * n_b / n`.
    pub(crate) fn merge(&mut self, other: &Moments) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = other.clone();
            return;
        }
        let n_a = self.count as f64;
        let n_b = other.count as f64;
        let n = n_a + n_b;
        let delta = other.mean - self.mean;
        self.mean += delta * n_b / n;
        self.m2 += other.m2 + delta * delta * n_a * n_b / n;
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Population variance (divides by `n`): the profile describes the data set itself, not a
    /// sample from a larger population.
    pub(crate) fn variance(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            (self.m2 / self.count as f64).max(0.0)
        }
    }

    pub(crate) fn std_dev(&self) -> f64 {
        self.variance().sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(values: &[f64]) -> (f64, f64) {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        (mean, var)
    }

    #[test]
    fn matches_two_pass_formula_with_a_large_offset() {
        let values: Vec<f64> = (0..1000).map(|i| 1e9 + f64::from(i % 17) * 0.5).collect();
        let mut m = Moments::default();
        values.iter().for_each(|&v| m.push(v));
        let (mean, var) = exact(&values);
        assert!((m.mean - mean).abs() < 1e-6);
        let relative = (m.variance() - var).abs() / var;
        assert!(relative < 1e-6, "relative error {relative}");
        assert_eq!(m.min, 1e9);
        assert_eq!(m.max, 1e9 + 8.0);
    }

    #[test]
    fn merge_equals_single_pass() {
        let values: Vec<f64> = (0..999).map(|i| f64::from(i).sin() * 100.0).collect();
        let mut whole = Moments::default();
        values.iter().for_each(|&v| whole.push(v));
        let mut parts: Vec<Moments> = vec![Moments::default(); 3];
        for (i, &v) in values.iter().enumerate() {
            parts[i % 3].push(v);
        }
        let mut merged = Moments::default();
        for part in &parts {
            merged.merge(part);
        }
        merged.merge(&Moments::default());
        assert_eq!(merged.count, whole.count);
        assert!((merged.mean - whole.mean).abs() < 1e-9);
        assert!((merged.variance() - whole.variance()).abs() < 1e-6);
        assert_eq!((merged.min, merged.max), (whole.min, whole.max));
    }
}
