//! Objects that no committed version references: the ones a failed ingest leaves are deleted at
//! once, the ones a crash leaves are swept later.
//!
//! An ingest writes its shards before the transaction that references them, so between the two
//! they look exactly like orphans. [`PendingObjects`] closes that window inside this process:
//! an ingest registers every digest before writing it and releases it only after its version
//! committed (or failed), and the sweep skips registered digests. The check and the delete
//! happen under the same lock, so an upload of identical bytes can never be told "already
//! stored" while the sweep removes them. Other processes sharing the store are protected by
//! the grace period instead.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use factory_core::{AccessRequest, Action, Principal, Resource};
use factory_objects::{ContentStore, ObjectDigest};
use factory_store::{Event, Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex};
use utoipa::ToSchema;

use crate::state::{AppState, DecisionPoint};

/// Digests written by uploads whose versions have not committed yet, with how many uploads
/// hold each.
#[derive(Debug, Default)]
pub struct PendingObjects {
    holders: Mutex<HashMap<ObjectDigest, usize>>,
}

impl PendingObjects {
    /// Starts a lease for one upload; everything it registers is released when it drops.
    pub fn lease(self: &Arc<Self>, store: Store, objects: Arc<ContentStore>) -> ObjectLease {
        ObjectLease {
            pending: self.clone(),
            store,
            objects,
            digests: Vec::new(),
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

/// The objects one upload has written, held until the upload ends with [`ObjectLease::keep`]
/// or [`ObjectLease::discard`].
pub struct ObjectLease {
    pending: Arc<PendingObjects>,
    store: Store,
    objects: Arc<ContentStore>,
    digests: Vec<ObjectDigest>,
    runtime: tokio::runtime::Handle,
}

impl ObjectLease {
    /// Registers `digest` before it is written, so no sweep can take it from under the upload.
    pub async fn hold(&mut self, digest: ObjectDigest) {
        *self.pending.holders.lock().await.entry(digest).or_default() += 1;
        self.digests.push(digest);
    }

    /// The blocking-thread form of [`ObjectLease::hold`], for the ingest pipeline's sink.
    pub fn hold_blocking(&mut self, digest: ObjectDigest) {
        *self.pending.holders.blocking_lock().entry(digest).or_default() += 1;
        self.digests.push(digest);
    }

    /// The version that references the objects committed: release them without deleting.
    pub async fn keep(mut self) {
        let digests = std::mem::take(&mut self.digests);
        release(&self.pending, &self.store, &self.objects, digests, true).await;
    }

    /// The upload failed: release the objects and delete those nothing else references or holds.
    pub async fn discard(mut self) {
        let digests = std::mem::take(&mut self.digests);
        release(&self.pending, &self.store, &self.objects, digests, false).await;
    }
}

impl Drop for ObjectLease {
    /// An upload abandoned without `keep` or `discard` (its request was cancelled, or its
    /// blocking task finished after the client left) is discarded by a task of its own.
    fn drop(&mut self) {
        let digests = std::mem::take(&mut self.digests);
        if digests.is_empty() {
            return;
        }
        let (pending, store, objects) = (self.pending.clone(), self.store.clone(), self.objects.clone());
        self.runtime.spawn(async move { release(&pending, &store, &objects, digests, false).await });
    }
}

async fn release(
    pending: &PendingObjects,
    store: &Store,
    objects: &ContentStore,
    digests: Vec<ObjectDigest>,
    keep: bool,
) {
    let mut holders = pending.holders.lock().await;
    for digest in digests {
        if let Some(count) = holders.get_mut(&digest) {
            *count -= 1;
            if *count == 0 {
                holders.remove(&digest);
            }
        }
        if keep || holders.contains_key(&digest) {
            continue;
        }
        match store.object_is_referenced(&digest.to_string()).await {
            Ok(false) => {
                if let Err(error) = objects.delete(&digest).await {
                    tracing::warn!(%error, %digest, "could not delete an object of a failed upload");
                }
            }
            Ok(true) => {}
            Err(error) => tracing::warn!(%error, %digest, "could not check an object's references"),
        }
    }
}

/// What one sweep removed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
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
        let holders = pending.holders.lock().await;
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
pub enum SweepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Objects(#[from] factory_objects::ObjectError),
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
