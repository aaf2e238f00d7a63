//! Monitors over a sliding window of requests. Prompts are compared with the reference profile
//! of the training data; answers, failures and feedback with the deployment's own stable
//! baseline. No threshold is a constant: each is the `1 - alpha` bootstrap quantile of the
//! statistic on windows drawn from the reference (or baseline) itself, with `alpha` shared
//! among the monitors (Bonferroni), so a window of unchanged traffic raises any alarm with
//! probability at most `alpha`. SLOs are the exception: the operator states them.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::stats::{self, Resampler};
use crate::text::{self, TextSketch, BINS};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Requests in the sliding window.
    pub window: usize,
    /// The window is judged after every this many new requests.
    pub every: usize,
    /// The chance that a window of unchanged traffic raises any alarm, shared among monitors.
    pub alpha: f64,
    /// Bootstrap windows drawn to calibrate each threshold.
    pub bootstraps: usize,
    /// Requests that make the stable baseline of answers and failures.
    pub baseline: usize,
    /// Feedback values that make the stable feedback baseline, and the feedback window.
    pub feedback_baseline: usize,
    pub feedback_window: usize,
    pub seed: u64,
    pub slo: Slo,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            window: 100,
            every: 10,
            alpha: 0.005,
            bootstraps: 2000,
            baseline: 200,
            feedback_baseline: 100,
            feedback_window: 50,
            seed: 1,
            slo: Slo::default(),
        }
    }
}

impl Settings {
    pub fn validate(&self) -> Result<(), String> {
        if !(10..=10_000).contains(&self.window) {
            return Err("window must be between 10 and 10000 requests".into());
        }
        if self.every == 0 || self.every > self.window {
            return Err("every must be between 1 and window".into());
        }
        if !(self.alpha > 0.0 && self.alpha < 0.5) {
            return Err("alpha must be between 0 and 0.5".into());
        }
        if !(100..=100_000).contains(&self.bootstraps) {
            return Err("bootstraps must be between 100 and 100000".into());
        }
        if self.baseline < 2 * self.window.min(50) || self.feedback_baseline < 10 || self.feedback_window < 10 {
            return Err("baseline needs at least min(2 * window, 100) requests; feedback_baseline and feedback_window at least 10".into());
        }
        Ok(())
    }

    /// Monitors that share `alpha`: prompt length, prompt words, answer length, failures,
    /// refusals, and prompt embeddings when there are any.
    fn alpha_each(&self, embeddings: bool) -> f64 {
        self.alpha / if embeddings { 6.0 } else { 5.0 }
    }

    /// Clean judgements after which a firing monitor may fire again: a full window's worth, so
    /// a statistic hovering at its threshold raises one alarm, not one per crossing.
    fn rearm_after(&self, window: usize) -> usize {
        window.div_ceil(self.every).max(1)
    }
}

/// Service level objectives, judged on each window as stated.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Slo {
    pub latency_p95_ms: Option<f64>,
    pub error_rate: Option<f64>,
    pub cost_per_request: Option<f64>,
}

/// What a monitor keeps of one request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observation {
    /// The prompt, when the request's text was logged.
    pub prompt: Option<TextSketch>,
    /// The prompt's embedding, when an embedding model is configured.
    pub embedding: Option<Vec<f32>>,
    pub completion_tokens: f64,
    pub failed: bool,
    /// Answered with nothing, or withheld by a guardrail.
    pub refused: bool,
    pub latency_ms: f64,
    pub cost: f64,
}

/// The training data as monitors see it: half of the reference documents make the profile,
/// the other half calibrate the thresholds, so thresholds come from data the profile has not
/// seen, as production prompts will be.
#[derive(Debug, Clone)]
pub struct Reference {
    histogram: Vec<f64>,
    lengths: Vec<f64>,
    embedding_mean: Option<Vec<f64>>,
    pub documents: usize,
    pub word_threshold: f64,
    pub length_threshold: f64,
    pub embedding_threshold: Option<f64>,
    /// The statistics' medians on unchanged traffic: a fired monitor re-arms only once its
    /// statistic is back at these (hysteresis), not merely under its threshold.
    typical: [f64; 3],
}

impl Reference {
    /// `embeddings`, when given, are the documents' embeddings in the same order.
    pub fn calibrate(
        documents: &[TextSketch],
        embeddings: Option<&[Vec<f32>]>,
        settings: &Settings,
    ) -> Result<Reference, String> {
        let needed = 2 * settings.window;
        if documents.len() < needed {
            return Err(format!(
                "the reference has {} documents; calibrating a window of {} needs at least {needed}",
                documents.len(),
                settings.window
            ));
        }
        if embeddings.is_some_and(|e| e.len() != documents.len()) {
            return Err("one embedding per reference document is needed".into());
        }
        let mut resampler = Resampler::new(settings.seed);
        let order = resampler.shuffled(documents.len());
        let (profile, calibration) = order.split_at(documents.len() / 2);
        let mut reference = Reference {
            histogram: vec![0.0; BINS],
            lengths: stats::sorted(profile.iter().map(|&i| f64::from(documents[i].words)).collect()),
            embedding_mean: embeddings.map(|e| mean_vector(profile.iter().map(|&i| e[i].as_slice()))),
            documents: documents.len(),
            word_threshold: 0.0,
            length_threshold: 0.0,
            embedding_threshold: None,
            typical: [0.0; 3],
        };
        for &i in profile {
            text::add_to(&mut reference.histogram, &documents[i]);
        }
        let (mut words, mut lengths, mut distances) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..settings.bootstraps {
            let drawn: Vec<usize> =
                resampler.draw(calibration.len(), settings.window).into_iter().map(|k| calibration[k]).collect();
            let sketches: Vec<&TextSketch> = drawn.iter().map(|&i| &documents[i]).collect();
            words.push(reference.word_divergence(&sketches));
            lengths.push(reference.length_distance(&sketches));
            if let Some(embeddings) = embeddings {
                let vectors: Vec<&[f32]> = drawn.iter().map(|&i| embeddings[i].as_slice()).collect();
                distances.push(reference.embedding_distance(&vectors));
            }
        }
        let level = 1.0 - settings.alpha_each(embeddings.is_some());
        let (words, lengths, distances) = (stats::sorted(words), stats::sorted(lengths), stats::sorted(distances));
        reference.word_threshold = stats::quantile(&words, level);
        reference.length_threshold = stats::quantile(&lengths, level);
        reference.typical = [stats::quantile(&words, 0.5), stats::quantile(&lengths, 0.5), 0.0];
        if embeddings.is_some() {
            reference.embedding_threshold = Some(stats::quantile(&distances, level));
            reference.typical[2] = stats::quantile(&distances, 0.5);
        }
        Ok(reference)
    }

    /// Jensen-Shannon divergence between the window's words and the reference's.
    pub fn word_divergence(&self, window: &[&TextSketch]) -> f64 {
        let mut histogram = vec![0.0; BINS];
        for sketch in window {
            text::add_to(&mut histogram, sketch);
        }
        stats::js_divergence(&self.histogram, &histogram)
    }

    /// Kolmogorov-Smirnov distance between the window's prompt lengths (words) and the
    /// reference's.
    pub fn length_distance(&self, window: &[&TextSketch]) -> f64 {
        let lengths = stats::sorted(window.iter().map(|s| f64::from(s.words)).collect());
        stats::ks_statistic(&self.lengths, &lengths)
    }

    /// Euclidean distance between the window's mean embedding and the reference's.
    pub fn embedding_distance(&self, window: &[&[f32]]) -> f64 {
        let Some(reference) = &self.embedding_mean else { return 0.0 };
        let mean = mean_vector(window.iter().copied());
        reference.iter().zip(&mean).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt()
    }

    pub fn has_embeddings(&self) -> bool {
        self.embedding_mean.is_some()
    }
}

fn mean_vector<'a>(vectors: impl Iterator<Item = &'a [f32]>) -> Vec<f64> {
    let mut sum: Vec<f64> = Vec::new();
    let mut count = 0usize;
    for vector in vectors {
        if sum.is_empty() {
            sum = vec![0.0; vector.len()];
        }
        for (s, &v) in sum.iter_mut().zip(vector) {
            *s += f64::from(v);
        }
        count += 1;
    }
    sum.iter().map(|s| s / count.max(1) as f64).collect()
}

/// The deployment's own first requests: what answers and failures look like when all is well.
#[derive(Debug, Clone)]
struct Baseline {
    answer_lengths: Vec<f64>,
    answer_threshold: f64,
    answer_typical: f64,
    /// Windows with more failures (refusals) than these are unlikely under the baseline's rates.
    failures: RateLimit,
    refusals: RateLimit,
}

/// A count per window that the baseline's rate makes unlikely, and the typical count.
#[derive(Debug, Clone)]
struct RateLimit {
    threshold: usize,
    typical: f64,
}

impl RateLimit {
    fn calibrate(events: usize, total: usize, window: usize, alpha: f64) -> RateLimit {
        // Laplace's estimate keeps a baseline without events from making one event an alarm.
        let rate = (events as f64 + 1.0) / (total as f64 + 2.0);
        let threshold =
            (0..=window).find(|&k| stats::binomial_upper_tail(k + 1, window, rate) <= alpha).unwrap_or(window);
        RateLimit { threshold, typical: rate * window as f64 }
    }
}

impl Baseline {
    fn calibrate(observations: &[Observation], settings: &Settings, embeddings: bool) -> Baseline {
        let mut resampler = Resampler::new(settings.seed ^ 0x5eed);
        let answered: Vec<f64> = observations.iter().filter(|o| !o.failed).map(|o| o.completion_tokens).collect();
        let order = resampler.shuffled(answered.len());
        let (profile, calibration) = order.split_at(answered.len() / 2);
        let answer_lengths = stats::sorted(profile.iter().map(|&i| answered[i]).collect());
        let level = 1.0 - settings.alpha_each(embeddings);
        let mut distances = Vec::with_capacity(settings.bootstraps);
        if !calibration.is_empty() {
            for _ in 0..settings.bootstraps {
                let window = stats::sorted(
                    resampler
                        .draw(calibration.len(), settings.window)
                        .into_iter()
                        .map(|k| answered[calibration[k]])
                        .collect(),
                );
                distances.push(stats::ks_statistic(&answer_lengths, &window));
            }
        }
        let alpha = settings.alpha_each(embeddings);
        let distances = stats::sorted(distances);
        let total = observations.len();
        let failures =
            RateLimit::calibrate(observations.iter().filter(|o| o.failed).count(), total, settings.window, alpha);
        let refusals =
            RateLimit::calibrate(observations.iter().filter(|o| o.refused).count(), total, settings.window, alpha);
        let (answer_threshold, answer_typical) = match distances.is_empty() {
            true => (1.0, 1.0),
            false => (stats::quantile(&distances, level), stats::quantile(&distances, 0.5)),
        };
        Baseline { answer_lengths, answer_threshold, answer_typical, failures, refusals }
    }
}

/// One monitor's latest judgement of the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub monitor: String,
    pub statistic: f64,
    pub threshold: f64,
    /// The statistic is past the threshold (above it; below it for p-values).
    pub firing: bool,
    /// After firing, the monitor raises no new alarm until the statistic has been back at
    /// its typical level (at or below this; at or above it for p-values) for a window.
    pub clear_at: f64,
    /// Requests (or feedback values) the monitor had seen when it judged.
    pub observed: u64,
    /// The test's details, when it is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comparison: Option<stats::Comparison>,
}

/// The monitors of one deployment's requests.
pub struct Monitor {
    settings: Settings,
    reference: Option<Reference>,
    baseline: Option<Baseline>,
    collecting: Vec<Observation>,
    window: VecDeque<Observation>,
    since_judged: usize,
    pub observed: u64,
    pub judgements: u64,
    /// Judgements in which any monitor fired.
    pub judgements_firing: u64,
    readings: BTreeMap<String, Reading>,
    /// Monitors that fired, with the clean judgements since they last fired.
    latched: BTreeMap<String, usize>,
}

impl Monitor {
    pub fn new(settings: Settings, reference: Option<Reference>) -> Monitor {
        Monitor {
            settings,
            reference,
            baseline: None,
            collecting: Vec::new(),
            window: VecDeque::new(),
            since_judged: 0,
            observed: 0,
            judgements: 0,
            judgements_firing: 0,
            readings: BTreeMap::new(),
            latched: BTreeMap::new(),
        }
    }

    pub fn reference(&self) -> Option<&Reference> {
        self.reference.as_ref()
    }

    pub fn baseline_ready(&self) -> bool {
        self.baseline.is_some()
    }

    /// Takes one request; returns the monitors that started firing with it.
    pub fn observe(&mut self, observation: Observation) -> Vec<Reading> {
        self.observed += 1;
        let embeddings = self.reference.as_ref().is_some_and(Reference::has_embeddings);
        if self.baseline.is_none() {
            self.collecting.push(observation.clone());
            if self.collecting.len() >= self.settings.baseline {
                self.baseline = Some(Baseline::calibrate(&self.collecting, &self.settings, embeddings));
                self.collecting = Vec::new();
            }
        }
        self.window.push_back(observation);
        if self.window.len() > self.settings.window {
            self.window.pop_front();
        }
        self.since_judged += 1;
        if self.window.len() < self.settings.window || self.since_judged < self.settings.every {
            return Vec::new();
        }
        self.since_judged = 0;
        self.judge()
    }

    fn judge(&mut self) -> Vec<Reading> {
        let mut readings = Vec::new();
        let observed = self.observed;
        let reading = |monitor: &str, statistic: f64, threshold: f64, clear_at: f64| Reading {
            monitor: monitor.to_string(),
            statistic,
            threshold,
            firing: statistic > threshold,
            clear_at,
            observed,
            comparison: None,
        };
        if let Some(reference) = &self.reference {
            let prompts: Vec<&TextSketch> = self.window.iter().filter_map(|o| o.prompt.as_ref()).collect();
            // Judged only on a full window of logged prompts: fewer would not match the
            // calibration's window size.
            if prompts.len() * 2 >= self.window.len() {
                let sized = &prompts[prompts.len().saturating_sub(self.settings.window)..];
                let [words, length, _] = reference.typical;
                let divergence = reference.word_divergence(sized);
                readings.push(reading("prompt.words", divergence, reference.word_threshold, words));
                let distance = reference.length_distance(sized);
                readings.push(reading("prompt.length", distance, reference.length_threshold, length));
            }
            if let Some(threshold) = reference.embedding_threshold {
                let vectors: Vec<&[f32]> = self.window.iter().filter_map(|o| o.embedding.as_deref()).collect();
                if vectors.len() * 2 >= self.window.len() {
                    let distance = reference.embedding_distance(&vectors);
                    readings.push(reading("prompt.embedding", distance, threshold, reference.typical[2]));
                }
            }
        }
        if let Some(baseline) = &self.baseline {
            let lengths =
                stats::sorted(self.window.iter().filter(|o| !o.failed).map(|o| o.completion_tokens).collect());
            if !lengths.is_empty() {
                let distance = stats::ks_statistic(&baseline.answer_lengths, &lengths);
                readings.push(reading("answer.length", distance, baseline.answer_threshold, baseline.answer_typical));
            }
            let size = self.window.len() as f64;
            for (name, limit, count) in [
                ("failures", &baseline.failures, self.window.iter().filter(|o| o.failed).count()),
                ("refusals", &baseline.refusals, self.window.iter().filter(|o| o.refused).count()),
            ] {
                let (threshold, typical) = (limit.threshold as f64 / size, limit.typical / size);
                readings.push(reading(name, count as f64 / size, threshold, typical));
            }
        }
        let slo = &self.settings.slo;
        let size = self.window.len() as f64;
        if let Some(target) = slo.latency_p95_ms {
            let latencies = stats::sorted(self.window.iter().map(|o| o.latency_ms).collect());
            readings.push(reading("slo.latency_p95_ms", stats::quantile(&latencies, 0.95), target, target));
        }
        if let Some(target) = slo.error_rate {
            let rate = self.window.iter().filter(|o| o.failed).count() as f64 / size;
            readings.push(reading("slo.error_rate", rate, target, target));
        }
        if let Some(target) = slo.cost_per_request {
            let cost = self.window.iter().map(|o| o.cost).sum::<f64>() / size;
            readings.push(reading("slo.cost_per_request", cost, target, target));
        }
        self.judgements += 1;
        if readings.iter().any(|r| r.firing) {
            self.judgements_firing += 1;
        }
        let rearm = self.settings.rearm_after(self.settings.window);
        let mut started = Vec::new();
        for reading in readings {
            let clean = reading.statistic <= reading.clear_at;
            if latch(&mut self.latched, &reading, clean, rearm) {
                started.push(reading.clone());
            }
            self.readings.insert(reading.monitor.clone(), reading);
        }
        started
    }

    /// Every monitor's latest reading.
    pub fn readings(&self) -> Vec<Reading> {
        self.readings.values().cloned().collect()
    }
}

/// Whether `reading` starts an alarm: it fires, and its monitor is not still latched from an
/// earlier alarm (a monitor unlatches after `rearm` judgements back at its typical level).
fn latch(latched: &mut BTreeMap<String, usize>, reading: &Reading, clean: bool, rearm: usize) -> bool {
    match (reading.firing, latched.get_mut(&reading.monitor)) {
        (true, Some(clean)) => {
            *clean = 0;
            false
        }
        (true, None) => {
            latched.insert(reading.monitor.clone(), 0);
            true
        }
        (false, Some(count)) => {
            if clean {
                *count += 1;
            }
            if *count >= rearm {
                latched.remove(&reading.monitor);
            }
            false
        }
        (false, None) => false,
    }
}

/// Feedback on one metric: a stable baseline (the first values), then a sliding window compared
/// with it by a one-sided permutation test.
pub struct FeedbackMonitor {
    pub metric: String,
    higher_is_better: bool,
    settings: Settings,
    baseline: Vec<f64>,
    window: VecDeque<f64>,
    since_judged: usize,
    pub observed: u64,
    pub judgements: u64,
    pub judgements_firing: u64,
    latest: Option<Reading>,
    latched: BTreeMap<String, usize>,
}

impl FeedbackMonitor {
    pub fn new(metric: &str, higher_is_better: bool, settings: Settings) -> FeedbackMonitor {
        FeedbackMonitor {
            metric: metric.to_string(),
            higher_is_better,
            settings,
            baseline: Vec::new(),
            window: VecDeque::new(),
            since_judged: 0,
            observed: 0,
            judgements: 0,
            judgements_firing: 0,
            latest: None,
            latched: BTreeMap::new(),
        }
    }

    /// Takes one value; returns the reading when the monitor started firing with it.
    pub fn observe(&mut self, value: f64) -> Option<Reading> {
        self.observed += 1;
        // Oriented so that lower is worse.
        let value = if self.higher_is_better { value } else { -value };
        if self.baseline.len() < self.settings.feedback_baseline {
            self.baseline.push(value);
            return None;
        }
        self.window.push_back(value);
        if self.window.len() > self.settings.feedback_window {
            self.window.pop_front();
        }
        self.since_judged += 1;
        if self.window.len() < self.settings.feedback_window || self.since_judged < self.settings.every {
            return None;
        }
        self.since_judged = 0;
        let window: Vec<f64> = self.window.iter().copied().collect();
        let comparison = stats::mean_lower(&self.baseline, &window, 999, self.settings.seed ^ self.observed);
        let reading = Reading {
            monitor: format!("feedback.{}", self.metric),
            statistic: comparison.p_value,
            threshold: self.settings.alpha,
            firing: comparison.p_value < self.settings.alpha,
            clear_at: 0.5,
            observed: self.observed,
            comparison: Some(comparison),
        };
        self.judgements += 1;
        if reading.firing {
            self.judgements_firing += 1;
        }
        self.latest = Some(reading.clone());
        let rearm = self.settings.rearm_after(self.settings.feedback_window);
        let clean = reading.statistic >= reading.clear_at;
        latch(&mut self.latched, &reading, clean, rearm).then_some(reading)
    }

    pub fn reading(&self) -> Option<&Reading> {
        self.latest.as_ref()
    }

    pub fn baseline_size(&self) -> usize {
        self.baseline.len()
    }
}
