//! Per-deployment limits on callers: requests and tokens per minute per key and per tenant
//! (GCRA), and a money budget per tenant and window. Over a limit a request gets 429 with the
//! seconds until it would pass as Retry-After.
//!
//! Tokens are charged after the answer, by what was actually used, so a limiter must be able to
//! go into debt: a large answer pushes the next requests back. `governor` checks before it
//! charges and cannot owe, so this small GCRA is written here. State is per process.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    #[serde(default)]
    pub key_requests_per_minute: Option<u32>,
    #[serde(default)]
    pub key_tokens_per_minute: Option<u32>,
    #[serde(default)]
    pub tenant_requests_per_minute: Option<u32>,
    #[serde(default)]
    pub tenant_tokens_per_minute: Option<u32>,
    /// Money the tenant may spend on this deployment per window (prices: `serving.prices`).
    #[serde(default)]
    pub budget: Option<BudgetSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    pub amount: f64,
    pub window_secs: u64,
}

impl LimitsSpec {
    pub fn validate(&self) -> Result<(), String> {
        let rates = [
            self.key_requests_per_minute,
            self.key_tokens_per_minute,
            self.tenant_requests_per_minute,
            self.tenant_tokens_per_minute,
        ];
        if rates.iter().flatten().any(|rate| *rate == 0) {
            return Err("limits: rates must be positive (leave a limit out for none)".to_string());
        }
        if let Some(budget) = &self.budget {
            if !(budget.amount >= 0.0 && budget.amount.is_finite()) || budget.window_secs == 0 {
                return Err("limits.budget: a non-negative amount and a positive window_secs".to_string());
            }
        }
        Ok(())
    }
}

/// A rate of `per_minute` units, with a minute's worth as burst.
fn interval(per_minute: u32) -> (f64, f64) {
    let interval = 60.0 / f64::from(per_minute);
    (interval, 60.0 - interval)
}

/// Entries kept before expired ones are pruned.
const PRUNE_AT: usize = 10_000;

pub struct Limits {
    started: Instant,
    /// Theoretical arrival time (seconds since `started`) per limiter key.
    arrivals: Mutex<HashMap<String, f64>>,
    /// Spending per budget key: (window index, amount).
    spent: Mutex<HashMap<String, (u64, f64)>>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { started: Instant::now(), arrivals: Mutex::default(), spent: Mutex::default() }
    }
}

/// Who is calling which deployment: the keys a request's limits are kept under.
#[derive(Debug, Clone)]
pub struct Subject {
    pub key: String,
    pub tenant: String,
}

impl Limits {
    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Seconds to wait before `key` may proceed under `per_minute`, if any.
    fn wait(&self, arrivals: &HashMap<String, f64>, key: &str, per_minute: u32, now: f64) -> Option<f64> {
        let (_, tolerance) = interval(per_minute);
        let tat = arrivals.get(key).copied().unwrap_or(now).max(now);
        (tat - now > tolerance).then_some(tat - now - tolerance)
    }

    fn charge(&self, arrivals: &mut HashMap<String, f64>, key: &str, per_minute: u32, units: f64, now: f64) {
        let (step, _) = interval(per_minute);
        let tat = arrivals.get(key).copied().unwrap_or(now).max(now);
        arrivals.insert(key.to_string(), tat + units * step);
        if arrivals.len() > PRUNE_AT {
            arrivals.retain(|_, tat| *tat > now);
        }
    }

    /// Admits a request (charging one request to each request limit), or returns the seconds
    /// until it would be admitted.
    pub fn admit(&self, limits: &LimitsSpec, scope: &str, subject: &Subject) -> Result<(), u64> {
        let now = self.now();
        let mut arrivals = self.arrivals.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let checks = [
            (format!("{scope}:key:{}:requests", subject.key), limits.key_requests_per_minute),
            (format!("{scope}:tenant:{}:requests", subject.tenant), limits.tenant_requests_per_minute),
            (format!("{scope}:key:{}:tokens", subject.key), limits.key_tokens_per_minute),
            (format!("{scope}:tenant:{}:tokens", subject.tenant), limits.tenant_tokens_per_minute),
        ];
        let waits = checks.iter().filter_map(|(key, rate)| rate.and_then(|r| self.wait(&arrivals, key, r, now)));
        if let Some(wait) = waits.reduce(f64::max) {
            return Err(wait.ceil().max(1.0) as u64);
        }
        if let Some(budget) = &limits.budget {
            let window = (now as u64 + self.epoch_offset()) / budget.window_secs;
            let spent = self.spent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some((current, amount)) = spent.get(&format!("{scope}:tenant:{}:budget", subject.tenant)) {
                if *current == window && *amount >= budget.amount {
                    let window_end = (window + 1) * budget.window_secs;
                    return Err(window_end.saturating_sub(now as u64 + self.epoch_offset()).max(1));
                }
            }
        }
        for (key, rate) in &checks[..2] {
            if let Some(rate) = rate {
                self.charge(&mut arrivals, key, *rate, 1.0, now);
            }
        }
        Ok(())
    }

    /// Charges what a finished request used.
    pub fn settle(&self, limits: &LimitsSpec, scope: &str, subject: &Subject, tokens: u64, cost: f64) {
        let now = self.now();
        {
            let mut arrivals = self.arrivals.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            for (key, rate) in [
                (format!("{scope}:key:{}:tokens", subject.key), limits.key_tokens_per_minute),
                (format!("{scope}:tenant:{}:tokens", subject.tenant), limits.tenant_tokens_per_minute),
            ] {
                if let Some(rate) = rate {
                    self.charge(&mut arrivals, &key, rate, tokens as f64, now);
                }
            }
        }
        if let Some(budget) = &limits.budget {
            let window = (now as u64 + self.epoch_offset()) / budget.window_secs;
            let mut spent = self.spent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let entry = spent.entry(format!("{scope}:tenant:{}:budget", subject.tenant)).or_insert((window, 0.0));
            if entry.0 != window {
                *entry = (window, 0.0);
            }
            entry.1 += cost;
        }
    }

    /// Budget windows align to wall-clock multiples of their length.
    fn epoch_offset(&self) -> u64 {
        let since_epoch = factory_core::time::now_millis() as u64 / 1000;
        since_epoch.saturating_sub(self.started.elapsed().as_secs())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn subject(key: &str) -> Subject {
        Subject { key: key.to_string(), tenant: "acme".to_string() }
    }

    #[test]
    fn requests_pass_up_to_a_minutes_burst_then_wait() {
        let limits = Limits::default();
        let spec = LimitsSpec { key_requests_per_minute: Some(6), ..LimitsSpec::default() };
        for _ in 0..6 {
            limits.admit(&spec, "d", &subject("k1")).unwrap();
        }
        let wait = limits.admit(&spec, "d", &subject("k1")).unwrap_err();
        assert!((1..=10).contains(&wait), "the next slot is one interval (10 s) away: {wait}");
        limits.admit(&spec, "d", &subject("k2")).unwrap();
        limits.admit(&spec, "other", &subject("k1")).unwrap();
    }

    #[test]
    fn tokens_are_charged_after_the_answer_and_can_owe() {
        let limits = Limits::default();
        let spec = LimitsSpec { tenant_tokens_per_minute: Some(600), ..LimitsSpec::default() };
        limits.admit(&spec, "d", &subject("k1")).unwrap();
        limits.settle(&spec, "d", &subject("k1"), 1500, 0.0);
        // 1500 tokens at 10/s is 150 s of budget; a minute's tolerance leaves 90 s to wait.
        let wait = limits.admit(&spec, "d", &subject("k2")).unwrap_err();
        assert!((85..=91).contains(&wait), "{wait}");
    }

    #[test]
    fn a_spent_budget_refuses_until_its_window_ends() {
        let limits = Limits::default();
        let spec = LimitsSpec { budget: Some(BudgetSpec { amount: 1.0, window_secs: 3600 }), ..LimitsSpec::default() };
        limits.admit(&spec, "d", &subject("k1")).unwrap();
        limits.settle(&spec, "d", &subject("k1"), 10, 0.6);
        limits.admit(&spec, "d", &subject("k1")).unwrap();
        limits.settle(&spec, "d", &subject("k1"), 10, 0.6);
        let wait = limits.admit(&spec, "d", &subject("k2")).unwrap_err();
        assert!((1..=3600).contains(&wait), "{wait}");
        assert!(LimitsSpec { key_tokens_per_minute: Some(0), ..LimitsSpec::default() }.validate().is_err());
    }
}
