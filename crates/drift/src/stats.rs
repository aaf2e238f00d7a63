//! The statistics drift monitors and canary analysis rest on: distances between distributions,
//! one-sided two-sample tests, and bootstrap quantiles.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// P(Z <= z) for a standard normal Z.
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * libm::erfc(-z / std::f64::consts::SQRT_2)
}

/// Jensen-Shannon divergence in bits (0 = identical, 1 = disjoint) between two histograms over
/// the same bins; each is normalised here, so raw counts are fine.
pub fn js_divergence(p: &[f64], q: &[f64]) -> f64 {
    let (p_total, q_total): (f64, f64) = (p.iter().sum(), q.iter().sum());
    if p_total <= 0.0 || q_total <= 0.0 {
        return 0.0;
    }
    let mut divergence = 0.0;
    for (&a, &b) in p.iter().zip(q) {
        let (a, b) = (a / p_total, b / q_total);
        let m = 0.5 * (a + b);
        if a > 0.0 {
            divergence += 0.5 * a * (a / m).log2();
        }
        if b > 0.0 {
            divergence += 0.5 * b * (b / m).log2();
        }
    }
    divergence.clamp(0.0, 1.0)
}

/// The two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs.
/// Both slices must be sorted ascending.
pub fn ks_statistic(a: &[f64], b: &[f64]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let (mut i, mut j, mut gap) = (0, 0, 0.0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        gap = gap.max((i as f64 / a.len() as f64 - j as f64 / b.len() as f64).abs());
    }
    gap
}

/// The `q` quantile of sorted values (nearest rank, so it is always one of them).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.saturating_sub(1).min(sorted.len() - 1)]
}

pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

pub fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

/// The outcome of a one-sided test that a treatment is worse than a control.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Comparison {
    pub test: String,
    /// Control's and treatment's summary (a rate or a mean).
    pub control: f64,
    pub treatment: f64,
    pub control_n: usize,
    pub treatment_n: usize,
    /// Probability of a difference at least this bad if both came from one distribution.
    pub p_value: f64,
}

/// One-sided two-proportion z-test: is the treatment's rate of events higher than the
/// control's? (`events` are failures, or thumbs-down.)
pub fn rate_higher(control_events: usize, control_n: usize, treatment_events: usize, treatment_n: usize) -> Comparison {
    let rate = |k: usize, n: usize| if n == 0 { 0.0 } else { k as f64 / n as f64 };
    let (p1, p2) = (rate(control_events, control_n), rate(treatment_events, treatment_n));
    let mut comparison = Comparison {
        test: "two-proportion z".into(),
        control: p1,
        treatment: p2,
        control_n,
        treatment_n,
        p_value: 1.0,
    };
    if control_n == 0 || treatment_n == 0 {
        return comparison;
    }
    let pooled = (control_events + treatment_events) as f64 / (control_n + treatment_n) as f64;
    let variance = pooled * (1.0 - pooled) * (1.0 / control_n as f64 + 1.0 / treatment_n as f64);
    comparison.p_value = if variance <= 0.0 {
        if p2 > p1 {
            0.0
        } else {
            1.0
        }
    } else {
        1.0 - normal_cdf((p2 - p1) / variance.sqrt())
    };
    comparison
}

/// One-sided Mann-Whitney U test (normal approximation, ties averaged and corrected): does the
/// treatment tend to take larger values than the control? Used for latencies.
pub fn tends_larger(control: &[f64], treatment: &[f64]) -> Comparison {
    let (n1, n2) = (control.len(), treatment.len());
    let mut comparison = Comparison {
        test: "Mann-Whitney U".into(),
        control: median(control),
        treatment: median(treatment),
        control_n: n1,
        treatment_n: n2,
        p_value: 1.0,
    };
    if n1 == 0 || n2 == 0 {
        return comparison;
    }
    let mut pooled: Vec<(f64, bool)> =
        control.iter().map(|&v| (v, false)).chain(treatment.iter().map(|&v| (v, true))).collect();
    pooled.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut treatment_ranks, mut tie_term, mut i) = (0.0, 0.0, 0);
    while i < pooled.len() {
        let mut j = i;
        while j + 1 < pooled.len() && pooled[j + 1].0 == pooled[i].0 {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        let ties = (j - i + 1) as f64;
        tie_term += ties * ties * ties - ties;
        treatment_ranks += rank * pooled[i..=j].iter().filter(|(_, t)| *t).count() as f64;
        i = j + 1;
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let u = treatment_ranks - n2f * (n2f + 1.0) / 2.0;
    let n = n1f + n2f;
    let variance = n1f * n2f / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)));
    if variance > 0.0 {
        let z = (u - n1f * n2f / 2.0 - 0.5) / variance.sqrt();
        comparison.p_value = 1.0 - normal_cdf(z);
    }
    comparison
}

fn median(values: &[f64]) -> f64 {
    quantile(&sorted(values.to_vec()), 0.5)
}

/// One-sided permutation test on means: is the treatment's mean lower than the control's by
/// more than shuffling the pooled values would make it? Exact in distribution, no normality
/// assumed; used for feedback, whose values may be 0/1 or scores.
pub fn mean_lower(control: &[f64], treatment: &[f64], permutations: usize, seed: u64) -> Comparison {
    let mut comparison = Comparison {
        test: "permutation (means)".into(),
        control: mean(control),
        treatment: mean(treatment),
        control_n: control.len(),
        treatment_n: treatment.len(),
        p_value: 1.0,
    };
    if control.is_empty() || treatment.is_empty() {
        return comparison;
    }
    let observed = comparison.control - comparison.treatment;
    let mut pooled: Vec<f64> = control.iter().chain(treatment).copied().collect();
    let total: f64 = pooled.iter().sum();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut as_extreme = 0usize;
    for _ in 0..permutations {
        // A partial Fisher-Yates shuffle draws the treatment group; the rest is the control.
        for k in 0..treatment.len() {
            let pick = rng.random_range(k..pooled.len());
            pooled.swap(k, pick);
        }
        let treatment_sum: f64 = pooled[..treatment.len()].iter().sum();
        let difference = (total - treatment_sum) / control.len() as f64 - treatment_sum / treatment.len() as f64;
        if difference >= observed - 1e-12 {
            as_extreme += 1;
        }
    }
    comparison.p_value = (as_extreme + 1) as f64 / (permutations + 1) as f64;
    comparison
}

/// P(X >= k) for X ~ Binomial(n, p), summed in log space.
pub fn binomial_upper_tail(k: usize, n: usize, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n || p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let ln_choose = |n: usize, j: usize| {
        libm::lgamma(n as f64 + 1.0) - libm::lgamma(j as f64 + 1.0) - libm::lgamma((n - j) as f64 + 1.0)
    };
    (k..=n).map(|j| (ln_choose(n, j) + j as f64 * p.ln() + (n - j) as f64 * (1.0 - p).ln()).exp()).sum::<f64>().min(1.0)
}

/// A seeded source of bootstrap resamples.
pub struct Resampler {
    rng: StdRng,
}

impl Resampler {
    pub fn new(seed: u64) -> Self {
        Resampler { rng: StdRng::seed_from_u64(seed) }
    }

    /// `size` indices into `0..population`, drawn with replacement.
    pub fn draw(&mut self, population: usize, size: usize) -> Vec<usize> {
        (0..size).map(|_| self.rng.random_range(0..population)).collect()
    }

    /// A permutation of `0..n`.
    pub fn shuffled(&mut self, n: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        for k in (1..n).rev() {
            order.swap(k, self.rng.random_range(0..=k));
        }
        order
    }
}
