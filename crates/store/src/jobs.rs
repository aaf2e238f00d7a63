//! The job queue: priorities, leases renewed by heartbeats, retries with exponential back-off,
//! a dead state for jobs that ran out of attempts, and cancellation.
//!
//! A worker claims the highest-priority ready job (on PostgreSQL with `FOR UPDATE SKIP LOCKED`,
//! so many workers claim without blocking each other). A job whose worker stops heartbeating is
//! claimed again once its lease expires. Every state transition is a governed change made by the
//! `system` principal, so the audit log shows when each job started, failed and ended.

use std::str::FromStr;
use std::time::Duration;

use factory_core::time::now_millis;
use factory_core::{AccessRequest, Action, PolicyDecisionPoint, Principal, Resource, TenantName};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{opt_string, Change, Dialect, Event, Store, StoreError, StoreErrorKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    /// Out of attempts; kept for inspection, never retried.
    Dead,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        [JobState::Queued, JobState::Running, JobState::Succeeded, JobState::Dead, JobState::Cancelled]
            .into_iter()
            .find(|state| state.as_str() == value)
            .ok_or_else(|| format!("unknown job state {value:?}"))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub id: String,
    pub tenant: TenantName,
    pub kind: String,
    pub payload: serde_json::Value,
    pub priority: i64,
    pub state: JobState,
    pub attempts: i64,
    pub max_attempts: i64,
    pub run_after: i64,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub cancel_requested: bool,
    pub last_error: Option<String>,
    pub result: Option<serde_json::Value>,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// A higher-priority job is waiting: checkpoint, give the worker back, resume later.
    pub preempt_requested: bool,
    /// Worker time all attempts have used, for compute-seconds quotas.
    pub compute_ms: i64,
    /// Where an executor outside the process ran its attempts (Slurm's job ids and nodes).
    pub placement: Option<serde_json::Value>,
}

/// Which kinds of job a claim may take: a pool that hands some kinds to another executor
/// claims the others, and that executor claims only its own.
#[derive(Debug, Clone, Copy)]
pub enum JobKinds<'a> {
    Any,
    Only(&'a [&'a str]),
    Except(&'a [&'a str]),
}

impl JobKinds<'_> {
    /// The claim's condition on `j.kind`. Kinds are the handlers' own names, written in the
    /// code; quoting them keeps a stray quote from changing the statement all the same.
    fn condition(self) -> String {
        let list = |kinds: &[&str]| {
            kinds.iter().map(|kind| format!("'{}'", kind.replace('\'', "''"))).collect::<Vec<_>>().join(", ")
        };
        match self {
            JobKinds::Any => String::new(),
            JobKinds::Only([]) => "AND 1 = 0".to_string(),
            JobKinds::Only(kinds) => format!("AND j.kind IN ({})", list(kinds)),
            JobKinds::Except([]) => String::new(),
            JobKinds::Except(kinds) => format!("AND j.kind NOT IN ({})", list(kinds)),
        }
    }
}

/// What a caller asks to run.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub kind: String,
    pub payload: serde_json::Value,
    pub priority: i64,
    pub max_attempts: u32,
}

/// What a heartbeat learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// False when the lease was lost (expired and claimed by another worker); stop working.
    pub still_owned: bool,
    pub cancel_requested: bool,
    pub preempt_requested: bool,
}

/// A tenant's limits on scarce compute, and what it uses now.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TenantQuota {
    /// Jobs of the tenant running at once; `None` is no limit.
    pub max_concurrent_jobs: Option<i64>,
    /// Worker-seconds all its jobs may use; `None` is no limit.
    pub compute_seconds: Option<i64>,
    pub running_jobs: i64,
    pub used_compute_seconds: f64,
}

impl TenantQuota {
    /// Worker-seconds the tenant may still use, when it has a compute quota.
    pub fn compute_seconds_left(&self) -> Option<u64> {
        self.compute_seconds.map(|limit| (limit as f64 - self.used_compute_seconds).max(0.0) as u64)
    }
}

/// The condition a ready job's tenant must meet to be claimed: under its concurrency limit
/// and its compute quota. `j` is the candidate row; `now` names the parameter holding the time.
fn within_quota(now: &str) -> String {
    format!(
        "(SELECT COUNT(*) FROM jobs r WHERE r.tenant = j.tenant AND r.state = 'running' AND r.lease_expires_at >= {now}) \
         < COALESCE((SELECT q.max_concurrent_jobs FROM tenant_quotas q WHERE q.tenant = j.tenant), 1000000000) \
         AND (SELECT COALESCE(SUM(u.compute_ms), 0) FROM jobs u WHERE u.tenant = j.tenant) \
         < COALESCE((SELECT q.compute_seconds FROM tenant_quotas q WHERE q.tenant = j.tenant) * 1000, 1000000000000000)"
    )
}

/// The order ready jobs are taken in: fair share across tenants first (the tenant with the
/// fewest running jobs goes first), then each tenant's own priorities, then age. A priority
/// orders one tenant's work only; it never moves a job ahead of another tenant's.
fn fair_share_order(now: &str) -> String {
    format!(
        "(SELECT COUNT(*) FROM jobs r WHERE r.tenant = j.tenant AND r.state = 'running' AND r.lease_expires_at >= {now}), \
         j.priority DESC, j.created_at, j.id"
    )
}

/// How a worker's attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded(serde_json::Value),
    Failed {
        error: String,
        retry_base: Duration,
    },
    /// The worker stopped because cancellation was requested.
    Cancelled,
    /// The worker checkpointed and gave the job back for a higher-priority one: it waits in
    /// the queue again, and the attempt does not count.
    Preempted,
}

const JOB_COLUMNS: &str =
    "id, tenant, kind, payload, priority, state, attempts, max_attempts, run_after, lease_owner, \
     lease_expires_at, cancel_requested, last_error, result, created_by, created_at, updated_at, \
     preempt_requested, compute_ms, placement";

fn invalid_stored(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::new(StoreErrorKind::Corrupt, format!("stored job {what} is invalid: {error}"))
}

fn job_from_row(row: &AnyRow) -> Result<Job, StoreError> {
    let payload: String = row.try_get("payload")?;
    let state: String = row.try_get("state")?;
    let tenant: String = row.try_get("tenant")?;
    let result = opt_string(row, "result")?;
    Ok(Job {
        id: row.try_get("id")?,
        tenant: TenantName::new(tenant).map_err(|e| invalid_stored("tenant", e))?,
        kind: row.try_get("kind")?,
        payload: serde_json::from_str(&payload).map_err(|e| invalid_stored("payload", e))?,
        priority: row.try_get("priority")?,
        state: state.parse().map_err(|e: String| invalid_stored("state", e))?,
        attempts: row.try_get("attempts")?,
        max_attempts: row.try_get("max_attempts")?,
        run_after: row.try_get("run_after")?,
        lease_owner: opt_string(row, "lease_owner")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        last_error: opt_string(row, "last_error")?,
        result: result.map(|r| serde_json::from_str(&r)).transpose().map_err(|e| invalid_stored("result", e))?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        preempt_requested: row.try_get::<i64, _>("preempt_requested")? != 0,
        compute_ms: row.try_get("compute_ms")?,
        placement: opt_string(row, "placement")?
            .map(|placement| serde_json::from_str(&placement))
            .transpose()
            .map_err(|e| invalid_stored("placement", e))?,
    })
}

fn job_event(topic: &str, job: &Job) -> Event {
    Event::new(
        topic,
        serde_json::json!({ "job": job.id, "tenant": job.tenant, "kind": job.kind, "state": job.state, "attempts": job.attempts }),
    )
}

fn system_request(action: Action, job: &Job) -> AccessRequest {
    AccessRequest::new(&Principal::system(), action, Resource::job(&job.id, &job.tenant))
}

impl Change {
    /// Sets the limits of the tenant named by this change's resource.
    pub async fn set_tenant_quota(
        &mut self,
        max_concurrent_jobs: Option<i64>,
        compute_seconds: Option<i64>,
    ) -> Result<(), StoreError> {
        let tenant = self.request().resource.id.clone();
        if max_concurrent_jobs.is_some_and(|n| n < 1) || compute_seconds.is_some_and(|n| n < 0) {
            return Err(StoreError::new(
                StoreErrorKind::Invalid,
                "quotas: max_concurrent_jobs >= 1, compute_seconds >= 0",
            ));
        }
        let updated_by = self.request().principal.id.clone();
        sqlx::query(
            "INSERT INTO tenant_quotas (tenant, max_concurrent_jobs, compute_seconds, updated_at, updated_by) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant) DO UPDATE SET max_concurrent_jobs = excluded.max_concurrent_jobs, \
             compute_seconds = excluded.compute_seconds, updated_at = excluded.updated_at, updated_by = excluded.updated_by",
        )
        .bind(&tenant)
        .bind(max_concurrent_jobs)
        .bind(compute_seconds)
        .bind(now_millis())
        .bind(updated_by)
        .execute(self.connection())
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                StoreError::new(StoreErrorKind::NotFound, format!("tenant {tenant} does not exist"))
            }
            _ => e.into(),
        })?;
        Ok(())
    }

    /// Inserts the job named by this change's resource (its id and tenant).
    pub async fn enqueue_job(&mut self, new: &NewJob) -> Result<Job, StoreError> {
        let resource = self.request().resource.clone();
        let tenant = resource
            .tenant
            .clone()
            .ok_or_else(|| StoreError::new(StoreErrorKind::Invalid, "a job belongs to a tenant"))?;
        self.enqueue_job_as(&resource.id, &tenant, new).await
    }

    /// Inserts a job that a change on another resource starts (a pipeline's step).
    pub async fn enqueue_job_as(&mut self, id: &str, tenant: &TenantName, new: &NewJob) -> Result<Job, StoreError> {
        if new.kind.is_empty() || new.max_attempts == 0 {
            return Err(StoreError::new(StoreErrorKind::Invalid, "a job needs a kind and at least one attempt"));
        }
        let exists: Option<String> = sqlx::query_scalar("SELECT name FROM tenants WHERE name = $1")
            .bind(tenant.as_str())
            .fetch_optional(self.connection())
            .await?;
        if exists.is_none() {
            return Err(StoreError::new(StoreErrorKind::NotFound, format!("tenant {tenant} does not exist")));
        }
        let quota: Option<(Option<i64>, i64)> = sqlx::query_as(
            "SELECT q.compute_seconds, (SELECT CAST(COALESCE(SUM(compute_ms), 0) AS BIGINT) FROM jobs WHERE tenant = $1) \
             FROM tenant_quotas q WHERE q.tenant = $1",
        )
        .bind(tenant.as_str())
        .fetch_optional(self.connection())
        .await?;
        if let Some((Some(seconds), used_ms)) = quota {
            if used_ms >= seconds.saturating_mul(1000) {
                return Err(StoreError::new(
                    StoreErrorKind::QuotaExceeded,
                    format!(
                        "tenant {tenant} has used {:.0} of its {seconds} compute-seconds; a platform admin can raise the quota",
                        used_ms as f64 / 1000.0
                    ),
                ));
            }
        }
        let now = now_millis();
        let created_by = self.request().principal.id.clone();
        let row = sqlx::query(&format!(
            "INSERT INTO jobs ({JOB_COLUMNS}) VALUES ($1, $2, $3, $4, $5, 'queued', 0, $6, $7, NULL, NULL, 0, NULL, NULL, $8, $9, $9, 0, 0, NULL) RETURNING {JOB_COLUMNS}"
        ))
        .bind(id)
        .bind(tenant.as_str())
        .bind(&new.kind)
        .bind(new.payload.to_string())
        .bind(new.priority)
        .bind(i64::from(new.max_attempts))
        .bind(now)
        .bind(&created_by)
        .bind(now)
        .fetch_one(self.connection())
        .await?;
        job_from_row(&row)
    }

    /// Cancels the job named by this change's resource: at once if queued, at the worker's next
    /// heartbeat if running.
    pub async fn cancel_job(&mut self) -> Result<Job, StoreError> {
        let id = self.request().resource.id.clone();
        let now = now_millis();
        let row = sqlx::query(&format!(
            "UPDATE jobs SET state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END, \
             cancel_requested = 1, updated_at = $1 WHERE id = $2 AND state IN ('queued', 'running') RETURNING {JOB_COLUMNS}"
        ))
        .bind(now)
        .bind(&id)
        .fetch_optional(self.connection())
        .await?;
        match row {
            Some(row) => job_from_row(&row),
            None => Err(StoreError::new(StoreErrorKind::Conflict, format!("job {id} is not queued or running"))),
        }
    }
}

impl Store {
    pub async fn job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// `tenant`'s jobs, newest first: `limit` of them after the newest `offset`.
    pub async fn jobs(&self, tenant: &TenantName, offset: u32, limit: u32) -> Result<Vec<Job>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = $1 ORDER BY created_at DESC, id LIMIT $2 OFFSET $3"
        ))
        .bind(tenant.as_str())
        .bind(i64::from(limit))
        .bind(i64::from(offset))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Claims the most urgent ready job for `worker`, holding it for `lease`.
    pub async fn claim_job(
        &self,
        pdp: &dyn PolicyDecisionPoint,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<Job>, StoreError> {
        self.claim_job_of(pdp, worker, lease, JobKinds::Any).await
    }

    /// Claims the most urgent ready job of `kinds` for `worker`, holding it for `lease`.
    pub async fn claim_job_of(
        &self,
        pdp: &dyn PolicyDecisionPoint,
        worker: &str,
        lease: Duration,
        kinds: JobKinds<'_>,
    ) -> Result<Option<Job>, StoreError> {
        let now = now_millis();
        let lock = match self.dialect() {
            Dialect::Sqlite => "",
            Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
        };
        // A job reclaimed after its worker died is charged the time up to its lease's end.
        let sql = format!(
            "UPDATE jobs SET state = 'running', lease_owner = $1, lease_expires_at = $2, attempts = attempts + 1, updated_at = $3, \
             compute_ms = compute_ms + CASE WHEN state = 'running' AND attempt_started_at IS NOT NULL \
             THEN lease_expires_at - attempt_started_at ELSE 0 END, attempt_started_at = $3, preempt_requested = 0 \
             WHERE id = (SELECT id FROM jobs j WHERE ((j.state = 'queued' AND j.run_after <= $3) OR (j.state = 'running' AND j.lease_expires_at < $3)) \
             AND j.attempts < j.max_attempts AND j.cancel_requested = 0 AND {} {} \
             ORDER BY {} LIMIT 1 {lock}) \
             RETURNING {JOB_COLUMNS}",
            within_quota("$3"),
            kinds.condition(),
            fair_share_order("$3")
        );
        let mut pending = self.begin_change_unauthorized(&format!("claim:{worker}")).await?;
        let row = sqlx::query(&sql)
            .bind(worker)
            .bind(now + lease.as_millis() as i64)
            .bind(now)
            .fetch_optional(&mut *pending.write.transaction)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let job = job_from_row(&row)?;
        let change = pending.authorize(pdp, system_request(Action::JobRun, &job)).await?;
        change
            .commit(serde_json::json!({ "worker": worker, "attempt": job.attempts }), job_event("job.started", &job))
            .await?;
        Ok(Some(job))
    }

    /// Passes `from`'s lease on a running job to `to` (an executor's submission to the process
    /// that runs it), for `lease` from now. `None` when `from` no longer holds it (cancelled,
    /// reclaimed). Not audited, as a heartbeat: who holds the lease is bookkeeping of an attempt
    /// whose start is audited; the job's placement says where it ran.
    pub async fn hand_over_job(
        &self,
        job_id: &str,
        from: &str,
        to: &str,
        lease: Duration,
    ) -> Result<Option<Job>, StoreError> {
        let now = now_millis();
        let mut write = self.begin_write().await?;
        let row = sqlx::query(&format!(
            "UPDATE jobs SET lease_owner = $1, lease_expires_at = $2, updated_at = $3 \
             WHERE id = $4 AND lease_owner = $5 AND state = 'running' RETURNING {JOB_COLUMNS}"
        ))
        .bind(to)
        .bind(now + lease.as_millis() as i64)
        .bind(now)
        .bind(job_id)
        .bind(from)
        .fetch_optional(&mut *write.transaction)
        .await?;
        write.commit().await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Ends `owner`'s lease on a running job now, so that the job is claimed again at once
    /// (its process is known to be gone) instead of when the lease would have run out.
    pub async fn end_lease(&self, job_id: &str, owner: &str) -> Result<bool, StoreError> {
        let now = now_millis();
        let mut write = self.begin_write().await?;
        let ended = sqlx::query(
            "UPDATE jobs SET lease_expires_at = $1, updated_at = $2 WHERE id = $3 AND lease_owner = $4 AND state = 'running'",
        )
        .bind(now - 1)
        .bind(now)
        .bind(job_id)
        .bind(owner)
        .execute(&mut *write.transaction)
        .await?
        .rows_affected();
        write.commit().await?;
        Ok(ended == 1)
    }

    /// Running jobs whose lease holder's name starts with `prefix` (an executor's).
    pub async fn running_jobs_leased_by(&self, prefix: &str) -> Result<Vec<Job>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'running' AND substr(lease_owner, 1, $2) = $1 ORDER BY created_at"
        ))
        .bind(prefix)
        .bind(prefix.chars().count() as i32)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Records where a job's attempts ran (bookkeeping beside the audited attempts).
    pub async fn set_job_placement(&self, job_id: &str, placement: &serde_json::Value) -> Result<(), StoreError> {
        let mut write = self.begin_write().await?;
        sqlx::query("UPDATE jobs SET placement = $1 WHERE id = $2")
            .bind(placement.to_string())
            .bind(job_id)
            .execute(&mut *write.transaction)
            .await?;
        write.commit().await
    }

    /// Renews `worker`'s lease on `job_id`. Not audited: it changes no fact, only extends one.
    pub async fn heartbeat(&self, job_id: &str, worker: &str, lease: Duration) -> Result<Heartbeat, StoreError> {
        let now = now_millis();
        let mut write = self.begin_write().await?;
        let flags: Option<(i64, i64)> = sqlx::query_as(
            "UPDATE jobs SET lease_expires_at = $1, updated_at = $2 WHERE id = $3 AND lease_owner = $4 AND state = 'running' \
             RETURNING cancel_requested, preempt_requested",
        )
        .bind(now + lease.as_millis() as i64)
        .bind(now)
        .bind(job_id)
        .bind(worker)
        .fetch_optional(&mut *write.transaction)
        .await?;
        write.commit().await?;
        let (cancel, preempt) = flags.unwrap_or_default();
        Ok(Heartbeat { still_owned: flags.is_some(), cancel_requested: cancel != 0, preempt_requested: preempt != 0 })
    }

    /// Records how `worker`'s attempt at `job_id` ended. A failure is retried after an
    /// exponential back-off (`retry_base * 2^(attempts-1)`, at most ten minutes) until the job
    /// runs out of attempts and is marked dead.
    pub async fn finish_job(
        &self,
        pdp: &dyn PolicyDecisionPoint,
        job_id: &str,
        worker: &str,
        outcome: Outcome,
    ) -> Result<Job, StoreError> {
        let mut pending = self.begin_change_unauthorized(&format!("finish:{worker}")).await?;
        let row = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 AND lease_owner = $2 AND state = 'running'"
        ))
        .bind(job_id)
        .bind(worker)
        .fetch_optional(&mut *pending.write.transaction)
        .await?;
        let Some(row) = row else {
            return Err(StoreError::new(
                StoreErrorKind::Conflict,
                format!("worker {worker} no longer holds job {job_id}"),
            ));
        };
        let job = job_from_row(&row)?;
        let now = now_millis();
        let (state, run_after, error, result) = match &outcome {
            Outcome::Succeeded(result) => (JobState::Succeeded, job.run_after, None, Some(result.to_string())),
            Outcome::Cancelled => (JobState::Cancelled, job.run_after, None, None),
            Outcome::Preempted => (JobState::Queued, now, None, None),
            Outcome::Failed { error, retry_base } if job.attempts < job.max_attempts => {
                let factor = 1u32 << (job.attempts.clamp(1, 20) - 1);
                let delay = retry_base.saturating_mul(factor).min(Duration::from_secs(600));
                (JobState::Queued, now + delay.as_millis() as i64, Some(error.clone()), None)
            }
            Outcome::Failed { error, .. } => (JobState::Dead, job.run_after, Some(error.clone()), None),
        };
        let refund = i64::from(outcome == Outcome::Preempted);
        let row = sqlx::query(&format!(
            "UPDATE jobs SET state = $1, run_after = $2, last_error = COALESCE($3, last_error), result = $4, \
             lease_owner = NULL, lease_expires_at = NULL, updated_at = $5, attempts = attempts - $7, preempt_requested = 0, \
             compute_ms = compute_ms + CASE WHEN attempt_started_at IS NULL THEN 0 ELSE $5 - attempt_started_at END, \
             attempt_started_at = NULL WHERE id = $6 RETURNING {JOB_COLUMNS}"
        ))
        .bind(state.as_str())
        .bind(run_after)
        .bind(error)
        .bind(result)
        .bind(now)
        .bind(job_id)
        .bind(refund)
        .fetch_one(&mut *pending.write.transaction)
        .await?;
        let updated = job_from_row(&row)?;
        let change = pending.authorize(pdp, system_request(Action::JobRun, &updated)).await?;
        let topic = match outcome {
            Outcome::Preempted => "job.preempted".to_string(),
            _ => format!("job.{}", state.as_str()),
        };
        change
            .commit(
                serde_json::json!({ "worker": worker, "attempt": job.attempts, "error": updated.last_error }),
                job_event(&topic, &updated),
            )
            .await?;
        Ok(updated)
    }

    /// When a ready job waits for a worker, asks the lowest-priority running job below it to
    /// checkpoint and give its worker back. Returns the job asked, if any. Governed as the
    /// system: the audit log names the waiting job the victim yields to.
    pub async fn request_preemption(&self, pdp: &dyn PolicyDecisionPoint) -> Result<Option<Job>, StoreError> {
        let now = now_millis();
        // The most urgent waiting job that some running job of its own tenant ranks below: only
        // such a job can preempt anything.
        let waiting: Option<(String, i64, String)> = sqlx::query_as(&format!(
            "SELECT j.id, j.priority, j.tenant FROM jobs j WHERE j.state = 'queued' AND j.run_after <= $1 \
             AND j.attempts < j.max_attempts AND j.cancel_requested = 0 AND {} \
             AND EXISTS (SELECT 1 FROM jobs r WHERE r.tenant = j.tenant AND r.state = 'running' \
             AND r.preempt_requested = 0 AND r.cancel_requested = 0 AND r.priority < j.priority \
             AND r.lease_expires_at >= $1) \
             ORDER BY {} LIMIT 1",
            within_quota("$1"),
            fair_share_order("$1")
        ))
        .bind(now)
        .fetch_optional(self.pool())
        .await?;
        let Some((waiting_id, priority, waiting_tenant)) = waiting else {
            return Ok(None);
        };
        // Priorities are a tenant's own ordering of its work: only a job of the same tenant
        // yields, so no tenant's number, however large, takes another tenant's worker.
        let mut pending = self.begin_change_unauthorized("scheduler").await?;
        let row = sqlx::query(&format!(
            "UPDATE jobs SET preempt_requested = 1, updated_at = $1 WHERE id = (SELECT id FROM jobs \
             WHERE state = 'running' AND preempt_requested = 0 AND cancel_requested = 0 AND priority < $2 \
             AND tenant = $3 AND lease_expires_at >= $1 ORDER BY priority, created_at DESC, id LIMIT 1) \
             RETURNING {JOB_COLUMNS}"
        ))
        .bind(now)
        .bind(priority)
        .bind(&waiting_tenant)
        .fetch_optional(&mut *pending.write.transaction)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let victim = job_from_row(&row)?;
        let change = pending.authorize(pdp, system_request(Action::JobRun, &victim)).await?;
        change
            .commit(
                serde_json::json!({ "yields_to": waiting_id, "waiting_priority": priority, "priority": victim.priority }),
                job_event("job.preempt_requested", &victim),
            )
            .await?;
        Ok(Some(victim))
    }

    /// The tenant's limits (none set reads as no limits) and current use.
    pub async fn tenant_quota(&self, tenant: &TenantName) -> Result<TenantQuota, StoreError> {
        let limits: Option<(Option<i64>, Option<i64>)> =
            sqlx::query_as("SELECT max_concurrent_jobs, compute_seconds FROM tenant_quotas WHERE tenant = $1")
                .bind(tenant.as_str())
                .fetch_optional(self.pool())
                .await?;
        let (running, used_ms): (i64, i64) = sqlx::query_as(
            // PostgreSQL sums BIGINTs as NUMERIC, which the Any driver cannot decode.
            "SELECT CAST(COALESCE(SUM(CASE WHEN state = 'running' THEN 1 ELSE 0 END), 0) AS BIGINT), \
             CAST(COALESCE(SUM(compute_ms), 0) AS BIGINT) \
             FROM jobs WHERE tenant = $1",
        )
        .bind(tenant.as_str())
        .fetch_one(self.pool())
        .await?;
        let (max_concurrent_jobs, compute_seconds) = limits.unwrap_or_default();
        Ok(TenantQuota {
            max_concurrent_jobs,
            compute_seconds,
            running_jobs: running,
            used_compute_seconds: used_ms as f64 / 1000.0,
        })
    }

    /// Ends running jobs whose lease expired and that cannot be claimed again (out of attempts,
    /// or cancelled): their worker died, and no other will take them.
    pub async fn reap_expired_jobs(&self, pdp: &dyn PolicyDecisionPoint) -> Result<usize, StoreError> {
        let now = now_millis();
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at < $1 \
             AND (attempts >= max_attempts OR cancel_requested = 1)",
        )
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        let mut reaped = 0;
        for id in ids {
            let mut pending = self.begin_change_unauthorized("reaper").await?;
            let row = sqlx::query(&format!(
                "UPDATE jobs SET state = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'dead' END, \
                 last_error = COALESCE(last_error, 'lease expired: the worker stopped heartbeating'), \
                 lease_owner = NULL, lease_expires_at = NULL, updated_at = $1 \
                 WHERE id = $2 AND state = 'running' AND lease_expires_at < $1 RETURNING {JOB_COLUMNS}"
            ))
            .bind(now)
            .bind(&id)
            .fetch_optional(&mut *pending.write.transaction)
            .await?;
            let Some(row) = row else { continue };
            let job = job_from_row(&row)?;
            let change = pending.authorize(pdp, system_request(Action::JobRun, &job)).await?;
            let topic = format!("job.{}", job.state.as_str());
            change.commit(serde_json::json!({ "reason": "lease expired" }), job_event(&topic, &job)).await?;
            reaped += 1;
        }
        Ok(reaped)
    }
}
