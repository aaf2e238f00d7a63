//! What every gateway request reads before it can be routed — its API key, its deployment
//! (spec and compiled guardrails), its tenant, the model version each local variant names —
//! kept for a moment instead of read from the database (and recompiled) on each call.
//!
//! A copy is used only while no governed change has committed in this process since it was
//! read, so a revoked key, an edited deployment or a narrowed tenant takes effect here at the
//! very next request; and for at most [`FRESH_FOR`], which bounds how late another process
//! sharing the database sees such a change. Only what exists is kept (an unknown key is read
//! every time), and each map is emptied when it grows past [`MOST_ENTRIES`], so memory stays
//! bounded whatever callers send.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use factory_core::TenantName;
use factory_store::identity::{ApiKey, Tenant};
use factory_store::models::ModelVersion;
use sha2::Digest;

use factory_store::Store;

use crate::guardrails::Guardrails;
use crate::registry;
use crate::service_error::ServiceError;
use crate::serving::DeploymentSpec;

pub const FRESH_FOR: Duration = Duration::from_secs(1);
const MOST_ENTRIES: usize = 10_000;

/// A deployment as requests use it.
pub struct Deployed {
    pub spec: DeploymentSpec,
    pub guardrails: Arc<Guardrails>,
}

struct Entry<T> {
    value: T,
    changes: u64,
    read_at: Instant,
}

struct Kept<K, V>(Mutex<HashMap<K, Entry<V>>>);

impl<K: Eq + Hash, V: Clone> Kept<K, V> {
    fn new() -> Self {
        Kept(Mutex::new(HashMap::new()))
    }

    /// The kept value if still current, else `read()`'s (kept when it found something).
    async fn get<E, F, Fut>(&self, store: &Store, key: K, read: F) -> Result<Option<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
    {
        // Read before the value, so a change committed meanwhile makes the copy stale.
        let changes = store.changes();
        {
            let map = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(entry) = map.get(&key) {
                if entry.changes == changes && entry.read_at.elapsed() < FRESH_FOR {
                    return Ok(Some(entry.value.clone()));
                }
            }
        }
        let read_at = Instant::now();
        let value = read().await?;
        if let Some(value) = &value {
            let mut map = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if map.len() >= MOST_ENTRIES {
                map.clear();
            }
            map.insert(key, Entry { value: value.clone(), changes, read_at });
        }
        Ok(value)
    }
}

pub struct Lookups {
    store: Store,
    keys: Kept<[u8; 32], ApiKey>,
    deployments: Kept<(TenantName, String), Arc<Deployed>>,
    tenants: Kept<TenantName, Arc<Tenant>>,
    /// By tenant and `NAME@VERSION` or `NAME@ALIAS`.
    versions: Kept<(TenantName, String), Arc<ModelVersion>>,
}

impl Lookups {
    /// Lookups reading from `store`, which also tells them when a governed change committed.
    pub fn new(store: Store) -> Self {
        Lookups { store, keys: Kept::new(), deployments: Kept::new(), tenants: Kept::new(), versions: Kept::new() }
    }

    /// The usable key with this secret (kept by the secret's digest, never the secret).
    pub async fn key(&self, secret: &str) -> Result<Option<ApiKey>, ServiceError> {
        let digest: [u8; 32] = sha2::Sha256::digest(secret.as_bytes()).into();
        let store = &self.store;
        let key = self.keys.get(store, digest, || async { store.authenticate(secret).await }).await?;
        // Expiry is checked on every use, not only when read.
        Ok(key.filter(|key| key.usable_at(factory_core::time::now_millis())))
    }

    pub async fn deployment(&self, tenant: &TenantName, name: &str) -> Result<Option<Arc<Deployed>>, ServiceError> {
        let store = &self.store;
        self.deployments
            .get(store, (tenant.clone(), name.to_string()), || async {
                let Some(stored) = store.deployment(tenant, name).await? else { return Ok(None) };
                let spec: DeploymentSpec = serde_json::from_value(stored.spec)
                    .map_err(|e| ServiceError::internal(format!("deployment {name}'s stored spec: {e}")))?;
                let guardrails = Guardrails::compile(&spec.guardrails)
                    .map_err(|e| ServiceError::internal(format!("deployment {name}'s stored guardrails: {e}")))?;
                Ok(Some(Arc::new(Deployed { spec, guardrails: Arc::new(guardrails) })))
            })
            .await
    }

    /// The registered version `name@reference` names: a version number, or an alias as it
    /// stands now.
    pub async fn model_version(
        &self,
        tenant: &TenantName,
        name: &str,
        reference: &str,
    ) -> Result<Option<Arc<ModelVersion>>, ServiceError> {
        let store = &self.store;
        self.versions
            .get(store, (tenant.clone(), format!("{name}@{reference}")), || async {
                Ok::<_, ServiceError>(registry::version_of(store, tenant, name, reference).await?.map(Arc::new))
            })
            .await
    }

    pub async fn tenant(&self, name: &TenantName) -> Result<Option<Arc<Tenant>>, ServiceError> {
        let store = &self.store;
        self.tenants
            .get(store, name.clone(), || async { Ok::<_, ServiceError>(store.tenant(name).await?.map(Arc::new)) })
            .await
    }
}
