//! Objects written by uploads whose versions have not committed yet: the ones a failed ingest
//! leaves are deleted at once; the sweep (`service::orphans`) skips the ones still held.
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

use factory_objects::{ContentStore, ObjectDigest};
use factory_store::Store;
use tokio::sync::{Mutex, MutexGuard};

/// Digests written by uploads whose versions have not committed yet, with how many uploads
/// hold each.
#[derive(Debug, Default)]
pub struct PendingObjects {
    holders: Mutex<HashMap<ObjectDigest, usize>>,
}

impl PendingObjects {
    /// The held digests, locked: whoever deletes objects checks and deletes under this lock,
    /// so no upload can be told "already stored" while its bytes go.
    pub async fn holders(&self) -> MutexGuard<'_, HashMap<ObjectDigest, usize>> {
        self.holders.lock().await
    }

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
