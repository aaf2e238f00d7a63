//! Everything a request handler can reach, opened once at start.

use std::sync::Arc;

use factory_config::Config;
use factory_objects::ContentStore;
use factory_store::{CheckpointIssuer, Store};

pub use crate::metrics::DecisionPoint;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub pdp: Arc<DecisionPoint>,
    pub objects: Arc<ContentStore>,
    pub checkpoints: Arc<CheckpointIssuer>,
    pub metrics: Arc<Metrics>,
    /// Job kinds with a handler in this process; enqueueing any other kind is refused.
    pub job_kinds: Arc<Vec<String>>,
    /// Requests and transfers handled at once, in all and per tenant (503 or 429 past them).
    pub admission: Arc<crate::admission::Admission>,
    /// The factory's secret for keyed hashing of PII; each tenant gets its own key from it.
    pub pii_secret: Arc<[u8; 32]>,
    /// Objects written by uploads whose versions have not committed yet; the orphan sweep
    /// leaves them alone.
    pub pending_objects: Arc<crate::pending_objects::PendingObjects>,
    /// Signs registered model versions and verifies them (and imported bundles).
    pub model_keys: Arc<crate::registry::ModelKeys>,
    /// Verified model versions loaded into serving engines.
    pub engines: Arc<crate::serving::Engines>,
    /// Keys, deployments and tenants as the gateway's hot path reads them, kept while current.
    pub lookups: Arc<crate::lookups::Lookups>,
    /// Usage and latency of every inference request, written in batches.
    pub inference_log: Arc<crate::inference_log::InferenceLog>,
    /// The latest readings of every monitored deployment.
    pub drift: Arc<crate::drift::DriftBoard>,
}

impl AppState {
    /// Where downloads, imports and Parquet uploads spool: under the data directory, on the disk
    /// the operator sized for data, never the system's temporary directory.
    pub fn spool_dir(&self) -> std::path::PathBuf {
        self.config.data_dir.join("tmp")
    }

    /// The key PII values of `tenant` are hashed with: equal values map to equal tokens inside
    /// a tenant, and tokens cannot be linked across tenants or brute-forced without the secret.
    pub fn pii_hash_key(&self, tenant: &factory_core::TenantName) -> Vec<u8> {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        hasher.update(self.pii_secret.as_slice());
        hasher.update(tenant.as_str().as_bytes());
        hasher.finalize().to_vec()
    }
}
