//! Operating the factory as use cases: whether it is ready to serve, its metrics in the
//! Prometheus text exposition (every tenant's series, so for operators only), and a sweep of
//! orphaned objects on request.

use std::time::Duration;

use factory_core::{AccessRequest, Action, Resource};

use super::orphans::{self, SweepReport};
use crate::caller::Caller;
use crate::service_error::ServiceError;
use crate::state::AppState;

/// Whether the factory can serve: its metadata store answers.
pub async fn ready(state: &AppState) -> Result<(), ServiceError> {
    if state.store.ping().await {
        Ok(())
    } else {
        Err(ServiceError::overloaded("the metadata store does not answer", 5))
    }
}

/// The metrics of every tenant, rendered for Prometheus, for a caller who may read them.
pub async fn metrics(state: &AppState, caller: &Caller) -> Result<String, ServiceError> {
    // The series name every tenant's deployments and upstream URLs: an operator's credential
    // (a platform admin's or auditor's key, as a scraper's bearer token) reads them, no tenant.
    let request = AccessRequest::new(&caller.principal, Action::MetricsRead, Resource::platform());
    state.store.authorize(state.pdp.as_ref(), &request, &caller.request_id).await?;
    if let Ok(size) = state.store.audit_size().await {
        state.metrics.audit_log_size.set(size as i64);
    }
    Ok(state.metrics.render())
}

/// Sweeps objects older than `grace` (default `objects.orphan_grace_secs`) that nothing
/// references, as the caller, and audits the sweep even when it found nothing.
pub async fn sweep_orphans(
    state: &AppState,
    caller: &Caller,
    grace: Option<Duration>,
) -> Result<SweepReport, ServiceError> {
    let grace = grace.unwrap_or(state.config.orphans.grace);
    orphans::sweep(state, &caller.principal, &caller.request_id, grace, true).await
}
