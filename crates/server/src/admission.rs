//! Admission: how much the server takes on at once. Ordinary requests and transfers (uploads,
//! downloads, model imports and exports) are counted apart, so slow transfers cannot take the
//! slots the API needs; each tenant may hold only a share of either, so one tenant cannot make
//! the server answer 503 to everyone; and an upload must keep up a minimum rate, so a client
//! trickling bytes gives its slot back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limits, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub requests: usize,
    pub requests_per_tenant: usize,
    pub transfers: usize,
    pub transfers_per_tenant: usize,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The server as a whole is at its limit: 503.
    Server,
    /// The caller's tenant is at its share: 429.
    Tenant { limit: usize },
}

pub struct Admission {
    limits: Limits,
    requests: Arc<Semaphore>,
    transfers: Arc<Semaphore>,
    /// In flight per tenant: (requests, transfers).
    tenants: Mutex<HashMap<String, (usize, usize)>>,
}

/// Held while a request runs; dropping it gives its slots back.
pub struct Admitted {
    _slot: OwnedSemaphorePermit,
    tenant: Option<(Arc<Admission>, String, bool)>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some((admission, tenant, transfer)) = self.tenant.take() {
            let mut tenants = admission.tenants.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(counts) = tenants.get_mut(&tenant) {
                let count = if transfer { &mut counts.1 } else { &mut counts.0 };
                *count = count.saturating_sub(1);
                if *counts == (0, 0) {
                    tenants.remove(&tenant);
                }
            }
        }
    }
}

impl Admission {
    pub fn new(limits: Limits) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            requests: Arc::new(Semaphore::new(limits.requests)),
            transfers: Arc::new(Semaphore::new(limits.transfers)),
            tenants: Mutex::default(),
        })
    }

    /// Admits a request of `tenant` (`None`: a platform key or no valid key, bounded by the
    /// server's limit alone), a transfer or not.
    pub fn admit(self: &Arc<Self>, tenant: Option<&str>, transfer: bool) -> Result<Admitted, Refusal> {
        self.slot(transfer)?.for_tenant(tenant)
    }

    /// The server-wide slot alone: taken before anything is looked up for the request, so a
    /// flood of unknown keys is bounded like any other load.
    pub fn slot(self: &Arc<Self>, transfer: bool) -> Result<Slot, Refusal> {
        let pool = if transfer { &self.transfers } else { &self.requests };
        let slot = pool.clone().try_acquire_owned().map_err(|_| Refusal::Server)?;
        Ok(Slot { admission: self.clone(), slot, transfer })
    }
}

/// A server-wide slot, not yet counted against a tenant.
pub struct Slot {
    admission: Arc<Admission>,
    slot: OwnedSemaphorePermit,
    transfer: bool,
}

impl Slot {
    /// Counts the request against `tenant`'s share (dropping the slot if it is full).
    pub fn for_tenant(self, tenant: Option<&str>) -> Result<Admitted, Refusal> {
        let Slot { admission, slot, transfer } = self;
        let Some(tenant) = tenant else {
            return Ok(Admitted { _slot: slot, tenant: None });
        };
        admission.count(tenant, transfer)?;
        Ok(Admitted { _slot: slot, tenant: Some((admission, tenant.to_string(), transfer)) })
    }
}

impl Admission {
    fn count(&self, tenant: &str, transfer: bool) -> Result<(), Refusal> {
        let limit = if transfer { self.limits.transfers_per_tenant } else { self.limits.requests_per_tenant };
        let mut tenants = self.tenants.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let counts = tenants.entry(tenant.to_string()).or_default();
        let count = if transfer { &mut counts.1 } else { &mut counts.0 };
        if *count >= limit {
            if *counts == (0, 0) {
                tenants.remove(tenant);
            }
            return Err(Refusal::Tenant { limit });
        }
        *count += 1;
        Ok(())
    }
}

/// An upload body that fails once it falls behind `bytes_per_sec` on average, counted from
/// the start but only after `grace` (a connection's slow start is no crime): a client that
/// sends a byte every ten seconds is cut off then, and its slot freed.
pub fn at_least(body: Body, bytes_per_sec: u64, grace: Duration) -> Body {
    struct Upload {
        stream: axum::body::BodyDataStream,
        received: u64,
        started: Instant,
        failed: bool,
    }
    let upload = Upload { stream: body.into_data_stream(), received: 0, started: Instant::now(), failed: false };
    let rate = bytes_per_sec.max(1) as f64;
    let stream = futures::stream::unfold(upload, move |mut upload| async move {
        if upload.failed {
            return None;
        }
        // The next byte is due when the average would drop below the rate without it.
        let due = grace.max(Duration::from_secs_f64((upload.received + 1) as f64 / rate));
        let wait = due.saturating_sub(upload.started.elapsed());
        match tokio::time::timeout(wait, upload.stream.next()).await {
            Ok(Some(Ok(chunk))) => {
                upload.received += chunk.len() as u64;
                Some((Ok(chunk), upload))
            }
            Ok(Some(Err(error))) => {
                upload.failed = true;
                Some((Err(std::io::Error::other(error)), upload))
            }
            Ok(None) => None,
            Err(_) => {
                upload.failed = true;
                let message = format!(
                    "the upload fell below {bytes_per_sec} bytes/s ({} bytes in {} s; server.min_transfer_bytes_per_sec)",
                    upload.received,
                    upload.started.elapsed().as_secs()
                );
                Some((Err(std::io::Error::new(std::io::ErrorKind::TimedOut, message)), upload))
            }
        }
    });
    Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { requests: 4, requests_per_tenant: 2, transfers: 3, transfers_per_tenant: 1 }
    }

    #[test]
    fn a_tenant_holds_only_its_share_and_transfers_are_counted_apart() {
        let admission = Admission::new(limits());
        let first = admission.admit(Some("acme"), false);
        let second = admission.admit(Some("acme"), false);
        assert!(first.is_ok() && second.is_ok());
        assert_eq!(admission.admit(Some("acme"), false).err(), Some(Refusal::Tenant { limit: 2 }));
        // Another tenant, and acme's transfers, still get in.
        let globex = admission.admit(Some("globex"), false);
        assert!(globex.is_ok());
        let upload = admission.admit(Some("acme"), true);
        assert!(upload.is_ok());
        assert_eq!(admission.admit(Some("acme"), true).err(), Some(Refusal::Tenant { limit: 1 }));
        // The server's own limit holds for everyone.
        let platform = admission.admit(None, false);
        assert!(platform.is_ok());
        assert_eq!(admission.admit(Some("initech"), false).err(), Some(Refusal::Server));
        drop(first);
        assert!(admission.admit(Some("acme"), false).is_ok(), "a finished request gives its slot back");
        drop((second, globex, upload, platform));
        assert!(admission.tenants.lock().map(|t| t.is_empty()).unwrap_or(false), "nothing is left behind");
    }

    #[tokio::test]
    async fn a_trickling_upload_is_cut_off_after_the_grace() {
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
        tokio::spawn(async move {
            for _ in 0..100 {
                if sender.send(Ok(bytes::Bytes::from_static(b"x"))).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let body = Body::from_stream(tokio_stream_of(receiver));
        let mut stream = at_least(body, 1024, Duration::from_millis(300)).into_data_stream();
        let started = Instant::now();
        let mut received = 0;
        let error = loop {
            match stream.next().await {
                Some(Ok(chunk)) => received += chunk.len(),
                Some(Err(error)) => break error.to_string(),
                None => panic!("the trickle was accepted whole"),
            }
        };
        assert!(error.contains("fell below 1024 bytes/s"), "{error}");
        let elapsed = started.elapsed();
        assert!(received <= 4 && elapsed < Duration::from_secs(2), "{received} bytes in {elapsed:?}");
    }

    #[tokio::test]
    async fn a_steady_upload_passes() {
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
            (0..50).map(|_| Ok(bytes::Bytes::from(vec![b'x'; 4096]))).collect();
        let body = Body::from_stream(futures::stream::iter(chunks));
        let collected = axum::body::to_bytes(at_least(body, 1024, Duration::from_secs(1)), usize::MAX).await;
        assert_eq!(collected.map(|b| b.len()).unwrap_or(0), 50 * 4096);
    }

    fn tokio_stream_of<T: Send + 'static>(
        mut receiver: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures::Stream<Item = T> + Send {
        futures::stream::poll_fn(move |context| receiver.poll_recv(context))
    }
}
