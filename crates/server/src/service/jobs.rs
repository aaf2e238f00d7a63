//! Jobs as use cases the other services share: the priorities a client may give, and
//! cancelling one (also how a training run is cancelled).

use factory_core::{AccessRequest, Action, Resource};
use factory_store::jobs::Job;
use factory_store::Event;

use super::access::hide_foreign;
use super::Recorded;
use crate::caller::Caller;
use crate::service_error::ServiceError;
use crate::state::AppState;

/// The priorities a client may give: they order a tenant's own jobs (across tenants the
/// scheduler shares workers fairly), and a bounded range keeps them a ranking, not a weapon.
pub const PRIORITIES: std::ops::RangeInclusive<i64> = -100..=100;

pub fn check_priority(priority: i64) -> Result<(), ServiceError> {
    if PRIORITIES.contains(&priority) {
        Ok(())
    } else {
        Err(ServiceError::invalid(format!("priority: must be between {} and {}", PRIORITIES.start(), PRIORITIES.end())))
    }
}

/// Requests cancellation of `job` as `caller` (`job.cancel_requested`).
pub async fn cancel(state: &AppState, caller: &Caller, job: Job) -> Result<Recorded<Job>, ServiceError> {
    let id = job.id.clone();
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
