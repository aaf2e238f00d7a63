//! Objects that no committed version references: the ones a crash leaves (between writing an
//! upload's objects and committing its version) are swept here, after a grace period;
//! [`PendingObjects`] keeps this process's own uploads out of reach.

use std::time::Duration;

use factory_core::{AccessRequest, Action, Principal, Resource};
use factory_objects::ContentStore;
use factory_store::{Event, Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::metrics::DecisionPoint;
use crate::pending_objects::PendingObjects;
use crate::service_error::ServiceError;
use crate::state::AppState;

/// What one sweep removed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SweepReport {
    /// Finished objects that nothing referenced.
    pub objects_deleted: u64,
    pub bytes_deleted: u64,
    /// Staging objects and partial uploads of interrupted writes.
    pub staging_deleted: u64,
    /// The deleted digests (the first 1000).
    pub digests: Vec<String>,
}

/// Deletes objects older than `grace` that no version references and no upload holds, then
/// records what it did as a governed change of `principal` (only if it did something, or if
/// `always_audit`, so the periodic sweep does not fill the log with empty records).
pub async fn sweep(
    state: &AppState,
    principal: &Principal,
    request_id: &str,
    grace: Duration,
    always_audit: bool,
) -> Result<SweepReport, ServiceError> {
    Ok(sweep_as(state, principal, request_id, grace, always_audit).await?)
}

async fn sweep_as(
    state: &AppState,
    principal: &Principal,
    request_id: &str,
    grace: Duration,
    always_audit: bool,
) -> Result<SweepReport, SweepError> {
    let request = AccessRequest::new(principal, Action::ObjectsCollect, Resource::platform());
    state.store.authorize(state.pdp.as_ref(), &request, request_id).await?;
    let report = delete_orphans(&state.store, &state.objects, &state.pending_objects, grace).await?;
    if report.objects_deleted + report.staging_deleted > 0 || always_audit {
        record(&state.store, state.pdp.as_ref(), request, request_id, &report).await?;
    }
    Ok(report)
}

async fn delete_orphans(
    store: &Store,
    objects: &ContentStore,
    pending: &PendingObjects,
    grace: Duration,
) -> Result<SweepReport, SweepError> {
    let mut report =
        SweepReport { staging_deleted: objects.collect_staging(grace).await? as u64, ..Default::default() };
    let cutoff = factory_core::time::now_millis() - i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    for object in objects.list_objects().await? {
        if object.last_modified_millis > cutoff {
            continue;
        }
        let holders = pending.holders().await;
        if holders.contains_key(&object.digest) || store.object_is_referenced(&object.digest.to_string()).await? {
            continue;
        }
        objects.delete(&object.digest).await?;
        drop(holders);
        report.objects_deleted += 1;
        report.bytes_deleted += object.size;
        if report.digests.len() < 1000 {
            report.digests.push(object.digest.to_string());
        }
    }
    Ok(report)
}

async fn record(
    store: &Store,
    pdp: &DecisionPoint,
    request: AccessRequest,
    request_id: &str,
    report: &SweepReport,
) -> Result<(), StoreError> {
    let change = store.begin_change(pdp, request, request_id).await?;
    let details = serde_json::to_value(report).unwrap_or_default();
    let payload = serde_json::json!({
        "objects_deleted": report.objects_deleted,
        "bytes_deleted": report.bytes_deleted,
        "staging_deleted": report.staging_deleted,
    });
    change.commit(details, Event::new("objects.collected", payload)).await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum SweepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Objects(#[from] factory_objects::ObjectError),
}

impl From<SweepError> for ServiceError {
    fn from(error: SweepError) -> Self {
        match error {
            SweepError::Store(error) => error.into(),
            SweepError::Objects(error) => ServiceError::internal(format!("object store: {error}")),
        }
    }
}

/// Sweeps every `orphans.sweep_interval` as the `system` principal until `stop` turns true.
pub async fn sweep_periodically(state: AppState, mut stop: watch::Receiver<bool>) {
    let interval = state.config.orphans.sweep_interval;
    if interval.is_zero() {
        return;
    }
    loop {
        let request_id = format!("orphan-sweep-{}", uuid::Uuid::now_v7());
        match sweep(&state, &Principal::system(), &request_id, state.config.orphans.grace, false).await {
            Ok(report) if report.objects_deleted + report.staging_deleted > 0 => tracing::info!(
                objects = report.objects_deleted,
                bytes = report.bytes_deleted,
                staging = report.staging_deleted,
                "collected orphaned objects"
            ),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "sweeping orphaned objects failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
    }
}
