//! Jobs as use cases: enqueue one, list a tenant's, read one and cancel one (also how a
//! training run is cancelled), and the priorities a client may give, which the other services
//! share.

use factory_core::{AccessRequest, Action, Resource, TenantName};
use factory_store::jobs::{Job, NewJob};
use factory_store::Event;

use super::access::{authorize_as, hide_foreign};
use super::Recorded;
use crate::caller::Caller;
use crate::service_error::ServiceError;
use crate::state::AppState;

/// The priorities a client may give: they order a tenant's own jobs (across tenants the
/// scheduler shares workers fairly), and a bounded range keeps them a ranking, not a weapon.
pub const PRIORITIES: std::ops::RangeInclusive<i64> = -100..=100;

/// Refuses a priority outside [`PRIORITIES`].
pub fn check_priority(priority: i64) -> Result<(), ServiceError> {
    if PRIORITIES.contains(&priority) {
        Ok(())
    } else {
        Err(ServiceError::invalid(format!("priority: must be between {} and {}", PRIORITIES.start(), PRIORITIES.end())))
    }
}

/// A job to enqueue, as a client asks for it.
#[derive(Debug, Clone)]
pub struct Enqueue {
    /// A job kind this factory has a handler for, e.g. `platform.sleep`.
    pub kind: String,
    pub payload: serde_json::Value,
    pub priority: i64,
    /// Attempts before the job is declared dead; `None` for the `jobs.max_attempts` setting.
    pub max_attempts: Option<u32>,
}

/// Enqueues `job` in `tenant` (`job.queued`).
pub async fn enqueue(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    job: Enqueue,
) -> Result<Recorded<Job>, ServiceError> {
    if !state.job_kinds.iter().any(|kind| kind == &job.kind) {
        return Err(ServiceError::invalid(format!(
            "kind: {:?} has no handler; known kinds are {}",
            job.kind,
            state.job_kinds.join(", ")
        )));
    }
    check_priority(job.priority)?;
    let max_attempts = job.max_attempts.unwrap_or(state.config.jobs.max_attempts);
    if !(1..=100).contains(&max_attempts) {
        return Err(ServiceError::invalid("max_attempts: must be between 1 and 100"));
    }
    let id = factory_core::secrets::new_id("job");
    let request = AccessRequest::new(&caller.principal, Action::JobEnqueue, Resource::job(&id, tenant));
    let mut change = state
        .store
        .begin_change(state.pdp.as_ref(), request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(caller, Some(tenant), e))?;
    let new = NewJob { kind: job.kind, payload: job.payload, priority: job.priority, max_attempts };
    let job = change.enqueue_job(&new).await?;
    let payload = serde_json::json!({ "job": job.id, "tenant": tenant, "kind": job.kind, "priority": job.priority });
    let committed = change.commit(payload.clone(), Event::new("job.queued", payload)).await?;
    Ok(Recorded { value: job, committed })
}

/// `tenant`'s latest jobs (at most 100), as the caller may read them.
pub async fn list(state: &AppState, caller: &Caller, tenant: &TenantName) -> Result<Vec<Job>, ServiceError> {
    page(state, caller, tenant, 0, 100).await
}

/// `limit` (at most 1000) of `tenant`'s jobs after the newest `offset`, newest first.
pub async fn page(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    offset: u32,
    limit: u32,
) -> Result<Vec<Job>, ServiceError> {
    let request = AccessRequest::new(&caller.principal, Action::JobRead, Resource::job("*", tenant));
    authorize_as(state, caller, &request, tenant).await?;
    Ok(state.store.jobs(tenant, offset, limit.min(1000)).await?)
}

/// The job `id`, as the caller may read it; another tenant's reads as no such resource.
pub async fn show(state: &AppState, caller: &Caller, id: &str) -> Result<Job, ServiceError> {
    let job = find(state, id).await?;
    let request = AccessRequest::new(&caller.principal, Action::JobRead, Resource::job(id, &job.tenant));
    authorize_as(state, caller, &request, &job.tenant).await?;
    Ok(job)
}

async fn find(state: &AppState, id: &str) -> Result<Job, ServiceError> {
    state.store.job(id).await?.ok_or_else(ServiceError::no_such_resource)
}

/// Requests cancellation of the job `id` as `caller` (`job.cancel_requested`).
pub async fn cancel_by_id(state: &AppState, caller: &Caller, id: &str) -> Result<Recorded<Job>, ServiceError> {
    let job = find(state, id).await?;
    cancel(state, caller, job).await
}

/// Requests cancellation of `job` as `caller` (`job.cancel_requested`).
pub async fn cancel(state: &AppState, caller: &Caller, job: Job) -> Result<Recorded<Job>, ServiceError> {
    let id = job.id.clone();
    // A batch ends through its own states (what it answered is written out), which only the
    // batch's cancel sets in motion.
    if job.kind == crate::service::batches::BATCH_KIND {
        return Err(ServiceError::invalid(format!(
            "job {id} runs a batch: cancel the batch (POST /v1/batches/{id}/cancel)"
        )));
    }
    let request = AccessRequest::new(&caller.principal, Action::JobCancel, Resource::job(&id, &job.tenant));
    let mut change = state
        .store
        .begin_change(state.pdp.as_ref(), request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(caller, Some(&job.tenant), e))?;
    let cancelled = change.cancel_job().await?;
    let payload = serde_json::json!({ "job": id, "state": cancelled.state });
    let committed = change.commit(payload.clone(), Event::new("job.cancel_requested", payload)).await?;
    Ok(Recorded { value: cancelled, committed })
}
