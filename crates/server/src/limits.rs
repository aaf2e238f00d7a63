//! Per-deployment limits on callers: requests and tokens per minute per key and per tenant
//! (GCRA), and a money budget per tenant and window. Over a limit a request gets 429 with the
//! seconds until it would pass as Retry-After.
//!
//! Tokens are charged after the answer, by what was actually used, so a limiter must be able to
//! go into debt: a large answer pushes the next requests back. `governor` checks before it
//! charges and cannot owe, so this small GCRA is written here.
//!
//! State is per process by default. With `[serving] shared_state` it lives in Redis and every
//! gateway replica decides against it (`factory_cluster::shared_limits`, one atomic script per
//! decision); when Redis cannot be reached a request is refused with 503 (`closed`, the
//! default) or admitted unlimited (`open`), counted in `factory_shared_state_failures` and
//! logged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use factory_cluster::shared_limits::{Budget, Rate, SharedLimits};
use prometheus_client::metrics::counter::Counter;
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

#[derive(Default)]
pub struct Limits {
    local: LocalLimits,
    shared: Option<SharedState>,
}

/// The limits of this process alone.
struct LocalLimits {
    started: Instant,
    /// Theoretical arrival time (seconds since `started`) per limiter key.
    arrivals: Mutex<HashMap<String, f64>>,
    /// Spending per budget key: (window index, amount).
    spent: Mutex<HashMap<String, (u64, f64)>>,
}

/// The limits every replica shares, and what to do when they cannot be reached.
struct SharedState {
    redis: SharedLimits,
    fail_open: bool,
    failures: Counter,
    /// When a failure was last logged (seconds since the epoch), so an outage logs once in a
    /// while rather than once per request.
    logged_at: AtomicU64,
}

impl Default for LocalLimits {
    fn default() -> Self {
        LocalLimits { started: Instant::now(), arrivals: Mutex::default(), spent: Mutex::default() }
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over a limit or budget: the seconds until it would pass.
    Wait(u64),
    /// The shared state is unreachable and the gateway fails closed.
    Unavailable,
}

/// Who is calling which deployment: the keys a request's limits are kept under.
#[derive(Debug, Clone)]
pub struct Subject {
    pub key: String,
    pub tenant: String,
}

impl Limits {
    /// Limits kept in the Redis at `url` (`[serving] shared_state`), failures counted in
    /// `failures`.
    pub fn shared(url: &str, fail_open: bool, failures: Counter) -> Result<Self, String> {
        let redis = SharedLimits::new(url).map_err(|error| error.to_string())?;
        let shared = SharedState { redis, fail_open, failures, logged_at: AtomicU64::new(0) };
        Ok(Limits { local: LocalLimits::default(), shared: Some(shared) })
    }

    /// Admits a request (charging one request to each request limit), or says why not.
    pub async fn admit(&self, limits: &LimitsSpec, scope: &str, subject: &Subject) -> Result<(), Refusal> {
        let Some(shared) = &self.shared else {
            return self.local.admit(limits, scope, subject).map_err(Refusal::Wait);
        };
        let rates = shared_rates(limits, subject, 1.0, 0.0);
        match shared.redis.admit(scope, &rates, shared_budget(limits, subject).as_ref()).await {
            Ok(None) => Ok(()),
            Ok(Some(wait)) => Err(Refusal::Wait(wait)),
            Err(error) => {
                shared.failed("admit", &error.to_string());
                if shared.fail_open {
                    Ok(())
                } else {
                    Err(Refusal::Unavailable)
                }
            }
        }
    }

    /// Charges what a finished request used; with shared state, in the background (the answer
    /// has already gone).
    pub fn settle(self: &Arc<Self>, limits: &LimitsSpec, scope: &str, subject: &Subject, tokens: u64, cost: f64) {
        if self.shared.is_none() {
            return self.local.settle(limits, scope, subject, tokens, cost);
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (this, limits, scope, subject) = (self.clone(), limits.clone(), scope.to_string(), subject.clone());
        runtime.spawn(async move { this.settled(&limits, &scope, &subject, tokens, cost).await });
    }

    /// Charges what a finished request used, returning once it is charged.
    pub async fn settled(&self, limits: &LimitsSpec, scope: &str, subject: &Subject, tokens: u64, cost: f64) {
        let Some(shared) = &self.shared else {
            return self.local.settle(limits, scope, subject, tokens, cost);
        };
        let rates = shared_rates(limits, subject, 0.0, tokens as f64);
        if let Err(error) = shared.redis.settle(scope, &rates, shared_budget(limits, subject).as_ref(), cost).await {
            shared.failed("settle", &error.to_string());
        }
    }
}

impl SharedState {
    fn failed(&self, operation: &str, error: &str) {
        self.failures.inc();
        let now = factory_core::time::now_millis() as u64 / 1000;
        let last = self.logged_at.load(Ordering::Relaxed);
        if now >= last + 10 && self.logged_at.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            let policy = if self.fail_open { "admitting without limits (fail open)" } else { "refusing (fail closed)" };
            tracing::warn!(operation, %error, policy, "shared rate limits unreachable");
        }
    }
}

/// The deployment's rate limiters as the shared state names them inside the scope: requests
/// charged `requests` units, tokens `tokens`.
fn shared_rates(limits: &LimitsSpec, subject: &Subject, requests: f64, tokens: f64) -> Vec<Rate> {
    let rate =
        |key: String, per_minute: Option<u32>, units: f64| per_minute.map(|per_minute| Rate { key, per_minute, units });
    [
        rate(format!("key:{}:requests", subject.key), limits.key_requests_per_minute, requests),
        rate(format!("tenant:{}:requests", subject.tenant), limits.tenant_requests_per_minute, requests),
        rate(format!("key:{}:tokens", subject.key), limits.key_tokens_per_minute, tokens),
        rate(format!("tenant:{}:tokens", subject.tenant), limits.tenant_tokens_per_minute, tokens),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn shared_budget(limits: &LimitsSpec, subject: &Subject) -> Option<Budget> {
    limits.budget.as_ref().map(|budget| Budget {
        key: format!("tenant:{}:budget", subject.tenant),
        amount: budget.amount,
        window_secs: budget.window_secs,
    })
}

impl LocalLimits {
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
    fn admit(&self, limits: &LimitsSpec, scope: &str, subject: &Subject) -> Result<(), u64> {
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
    fn settle(&self, limits: &LimitsSpec, scope: &str, subject: &Subject, tokens: u64, cost: f64) {
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

    /// The limits of one process, and those kept in the Redis on this machine (under scopes
    /// no earlier run used); each test runs against both.
    fn both() -> Vec<(&'static str, Limits, String)> {
        let run = uuid::Uuid::new_v4();
        let mut kinds = vec![("local", Limits::default(), format!("{run}"))];
        let url = std::env::var("FACTORY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
        let reachable = std::net::TcpStream::connect_timeout(
            &url.trim_start_matches("redis://").parse().unwrap(),
            std::time::Duration::from_secs(1),
        )
        .is_ok();
        if reachable {
            kinds.push(("shared", Limits::shared(&url, false, Counter::default()).unwrap(), format!("{run}")));
        } else {
            factory_testkit::missing(&format!("Redis at {url}: shared limits are untested"));
        }
        kinds
    }

    #[tokio::test]
    async fn requests_pass_up_to_a_minutes_burst_then_wait() {
        for (kind, limits, run) in both() {
            let (d, other) = (format!("{run}-d"), format!("{run}-other"));
            let spec = LimitsSpec { key_requests_per_minute: Some(6), ..LimitsSpec::default() };
            for _ in 0..6 {
                limits.admit(&spec, &d, &subject("k1")).await.unwrap();
            }
            let Refusal::Wait(wait) = limits.admit(&spec, &d, &subject("k1")).await.unwrap_err() else { panic!() };
            assert!((1..=10).contains(&wait), "{kind}: the next slot is one interval (10 s) away: {wait}");
            limits.admit(&spec, &d, &subject("k2")).await.unwrap();
            limits.admit(&spec, &other, &subject("k1")).await.unwrap();
        }
    }

    #[tokio::test]
    async fn tokens_are_charged_after_the_answer_and_can_owe() {
        for (kind, limits, run) in both() {
            let spec = LimitsSpec { tenant_tokens_per_minute: Some(600), ..LimitsSpec::default() };
            limits.admit(&spec, &run, &subject("k1")).await.unwrap();
            limits.settled(&spec, &run, &subject("k1"), 1500, 0.0).await;
            // 1500 tokens at 10/s is 150 s of budget; a minute's tolerance leaves 90 s to wait.
            let Refusal::Wait(wait) = limits.admit(&spec, &run, &subject("k2")).await.unwrap_err() else { panic!() };
            assert!((85..=91).contains(&wait), "{kind}: {wait}");
        }
    }

    #[tokio::test]
    async fn a_spent_budget_refuses_until_its_window_ends() {
        for (kind, limits, run) in both() {
            let budget = BudgetSpec { amount: 1.0, window_secs: 3600 };
            let spec = LimitsSpec { budget: Some(budget), ..LimitsSpec::default() };
            limits.admit(&spec, &run, &subject("k1")).await.unwrap();
            limits.settled(&spec, &run, &subject("k1"), 10, 0.6).await;
            limits.admit(&spec, &run, &subject("k1")).await.unwrap();
            limits.settled(&spec, &run, &subject("k1"), 10, 0.6).await;
            let Refusal::Wait(wait) = limits.admit(&spec, &run, &subject("k2")).await.unwrap_err() else { panic!() };
            assert!((1..=3600).contains(&wait), "{kind}: {wait}");
        }
        assert!(LimitsSpec { key_tokens_per_minute: Some(0), ..LimitsSpec::default() }.validate().is_err());
    }

    #[tokio::test]
    async fn unreachable_shared_state_fails_closed_or_open_as_configured() {
        let spec = LimitsSpec { key_requests_per_minute: Some(6), ..LimitsSpec::default() };
        // Nothing listens on port 1.
        for fail_open in [false, true] {
            let failures = Counter::default();
            let limits = Limits::shared("redis://127.0.0.1:1", fail_open, failures.clone()).unwrap();
            let decision = limits.admit(&spec, "d", &subject("k1")).await;
            assert_eq!(decision, if fail_open { Ok(()) } else { Err(Refusal::Unavailable) });
            assert_eq!(failures.get(), 1);
        }
    }
}
