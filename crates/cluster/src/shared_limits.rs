//! Rate limits (GCRA) and money budgets kept in Redis, so that every gateway replica admits
//! against the same counts.
//!
//! Each decision is one Lua script run atomically by Redis: it reads every limiter's
//! theoretical arrival time and the budget's spending, decides, and only when it admits charges
//! the request limiters, so two replicas can never both pass the last slot (no read-then-write
//! race). The clock is Redis's own (`TIME`), so replicas' clocks need not agree. All keys of one
//! decision share one hash tag (the deployment's scope), so the script also runs on a cluster.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// The script both decides (`admit`) and charges what a finished request used (`settle`).
///
/// KEYS: one per rate limiter, then the budget's hash if ARGV carries a budget.
/// ARGV: mode, the number of rate limiters, then per limiter its rate per minute and the units
/// to charge (0 checks without charging), then the budget's amount, window in seconds and cost
/// (empty strings for none). Returns the seconds to wait as a string ("0" when admitted).
const GCRA: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local mode = ARGV[1]
local rates = tonumber(ARGV[2])
local wait = 0
local limiters = {}
for i = 1, rates do
  local per_minute = tonumber(ARGV[1 + 2 * i])
  local units = tonumber(ARGV[2 + 2 * i])
  local step = 60 / per_minute
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  if mode == 'admit' and tat - now > 60 - step then
    wait = math.max(wait, tat - now - (60 - step))
  end
  limiters[i] = { tat, step, units }
end
local budget_arg = 3 + 2 * rates
if ARGV[budget_arg] ~= '' then
  local amount = tonumber(ARGV[budget_arg])
  local window_secs = tonumber(ARGV[budget_arg + 1])
  local cost = tonumber(ARGV[budget_arg + 2])
  local key = KEYS[rates + 1]
  local window = math.floor(now / window_secs)
  local spent = 0
  if tonumber(redis.call('HGET', key, 'window') or -1) == window then
    spent = tonumber(redis.call('HGET', key, 'spent') or 0)
  end
  if mode == 'admit' then
    if spent >= amount then wait = math.max(wait, (window + 1) * window_secs - now) end
  elseif cost > 0 then
    redis.call('HSET', key, 'window', window, 'spent', tostring(spent + cost))
    redis.call('EXPIRE', key, math.ceil(window_secs * 2))
  end
end
if wait > 0 then return tostring(wait) end
for i = 1, rates do
  local limiter = limiters[i]
  if limiter[3] > 0 then
    local tat = limiter[1] + limiter[3] * limiter[2]
    redis.call('SET', KEYS[i], tostring(tat), 'PX', math.ceil((tat - now + 60) * 1000))
  end
end
return '0'
";

/// One limiter a decision reads: its key (inside the scope), its rate, and what to charge.
#[derive(Debug, Clone)]
pub struct Rate {
    pub key: String,
    pub per_minute: u32,
    /// Units charged when the decision admits (admit) or always (settle); 0 only checks.
    pub units: f64,
}

/// A money budget: `amount` per window of `window_secs`, aligned to Redis's clock.
#[derive(Debug, Clone)]
pub struct Budget {
    pub key: String,
    pub amount: f64,
    pub window_secs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SharedStateError {
    #[error("the shared state is unreachable: {0}")]
    Unreachable(String),
    #[error("the shared state answered what a decision cannot be: {0}")]
    Malformed(String),
}

/// How long a decision may wait for Redis before the gateway treats it as unreachable.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
/// After a failed connection, decisions fail at once for this long instead of each waiting on a
/// connection that will not come.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

pub struct SharedLimits {
    client: redis::Client,
    script: redis::Script,
    /// Set once connected; the manager reconnects by itself after that, so a decision only
    /// clones it (no lock shared by every request).
    connection: tokio::sync::OnceCell<ConnectionManager>,
    failed_at: Mutex<Option<Instant>>,
    /// Every key starts with this, then the decision's `{scope}` hash tag.
    namespace: String,
}

impl SharedLimits {
    /// A handle on the Redis at `url`; nothing connects until the first decision.
    pub fn new(url: &str) -> Result<Self, SharedStateError> {
        let client = redis::Client::open(url).map_err(|error| SharedStateError::Unreachable(error.to_string()))?;
        Ok(SharedLimits {
            client,
            script: redis::Script::new(GCRA),
            connection: tokio::sync::OnceCell::new(),
            failed_at: Mutex::new(None),
            namespace: "factory:limits".to_string(),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, SharedStateError> {
        if let Some(connection) = self.connection.get() {
            return Ok(connection.clone());
        }
        let failed_at = *self.failed_at.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if failed_at.is_some_and(|at| at.elapsed() < RECONNECT_AFTER) {
            return Err(SharedStateError::Unreachable("not connected; retrying within a second".to_string()));
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1);
        let connect = || ConnectionManager::new_with_config(self.client.clone(), config);
        match self.connection.get_or_try_init(connect).await {
            Ok(manager) => Ok(manager.clone()),
            Err(error) => {
                *self.failed_at.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now());
                Err(SharedStateError::Unreachable(error.to_string()))
            }
        }
    }

    /// Admits a request under `rates` and `budget` in `scope` (charging each rate its units), or
    /// returns the seconds until it would be admitted.
    pub async fn admit(
        &self,
        scope: &str,
        rates: &[Rate],
        budget: Option<&Budget>,
    ) -> Result<Option<u64>, SharedStateError> {
        let wait = self.run("admit", scope, rates, budget, 0.0).await?;
        Ok((wait > 0.0).then(|| wait.ceil().max(1.0) as u64))
    }

    /// Charges what a finished request used: units to each rate, `cost` to the budget.
    pub async fn settle(
        &self,
        scope: &str,
        rates: &[Rate],
        budget: Option<&Budget>,
        cost: f64,
    ) -> Result<(), SharedStateError> {
        self.run("settle", scope, rates, budget, cost).await.map(drop)
    }

    async fn run(
        &self,
        mode: &str,
        scope: &str,
        rates: &[Rate],
        budget: Option<&Budget>,
        cost: f64,
    ) -> Result<f64, SharedStateError> {
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(mode).arg(rates.len());
        for rate in rates {
            invocation.key(format!("{}:{{{scope}}}:{}", self.namespace, rate.key));
            invocation.arg(rate.per_minute).arg(rate.units);
        }
        match budget {
            Some(budget) => {
                invocation.key(format!("{}:{{{scope}}}:{}", self.namespace, budget.key));
                invocation.arg(budget.amount).arg(budget.window_secs).arg(cost);
            }
            None => {
                invocation.arg("").arg("").arg("");
            }
        }
        let mut connection = self.connection().await?;
        let reply: String = tokio::time::timeout(RESPONSE_TIMEOUT * 2, invocation.invoke_async(&mut connection))
            .await
            .map_err(|_| SharedStateError::Unreachable("no answer in time".to_string()))?
            .map_err(|error| SharedStateError::Unreachable(error.to_string()))?;
        reply.parse::<f64>().map_err(|_| SharedStateError::Malformed(reply))
    }

    /// Whether Redis answers, for `factory doctor`.
    pub async fn ping(&self) -> Result<(), SharedStateError> {
        let mut connection = self.connection().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .map(drop)
            .map_err(|error| SharedStateError::Unreachable(error.to_string()))
    }
}
