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

use crate::error::ApiError;
use crate::guardrails::Guardrails;
use crate::serving::DeploymentSpec;
use crate::state::AppState;

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
    async fn get<E, F, Fut>(&self, state: &AppState, key: K, read: F) -> Result<Option<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
    {
        // Read before the value, so a change committed meanwhile makes the copy stale.
        let changes = state.store.changes();
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
    keys: Kept<[u8; 32], ApiKey>,
    deployments: Kept<(TenantName, String), Arc<Deployed>>,
    tenants: Kept<TenantName, Arc<Tenant>>,
    /// By tenant and `NAME@VERSION` or `NAME@ALIAS`.
    versions: Kept<(TenantName, String), Arc<ModelVersion>>,
}

impl Default for Lookups {
    fn default() -> Self {
        Lookups { keys: Kept::new(), deployments: Kept::new(), tenants: Kept::new(), versions: Kept::new() }
    }
}

impl Lookups {
    /// The usable key with this secret (kept by the secret's digest, never the secret).
    pub async fn key(&self, state: &AppState, secret: &str) -> Result<Option<ApiKey>, ApiError> {
        let digest: [u8; 32] = sha2::Sha256::digest(secret.as_bytes()).into();
        let key = self.keys.get(state, digest, || async { state.store.authenticate(secret).await }).await?;
        // Expiry is checked on every use, not only when read.
        Ok(key.filter(|key| key.usable_at(factory_core::time::now_millis())))
    }

    pub async fn deployment(
        &self,
        state: &AppState,
        tenant: &TenantName,
        name: &str,
    ) -> Result<Option<Arc<Deployed>>, ApiError> {
        self.deployments
            .get(state, (tenant.clone(), name.to_string()), || async {
                let Some(stored) = state.store.deployment(tenant, name).await? else { return Ok(None) };
                let spec: DeploymentSpec = serde_json::from_value(stored.spec)
                    .map_err(|e| ApiError::internal(format!("deployment {name}'s stored spec: {e}")))?;
                let guardrails = Guardrails::compile(&spec.guardrails)
                    .map_err(|e| ApiError::internal(format!("deployment {name}'s stored guardrails: {e}")))?;
                Ok(Some(Arc::new(Deployed { spec, guardrails: Arc::new(guardrails) })))
            })
            .await
    }

    /// The registered version `name@reference` names: a version number, or an alias as it
    /// stands now.
    pub async fn model_version(
        &self,
        state: &AppState,
        tenant: &TenantName,
        name: &str,
        reference: &str,
    ) -> Result<Option<Arc<ModelVersion>>, ApiError> {
        self.versions
            .get(state, (tenant.clone(), format!("{name}@{reference}")), || async {
                Ok::<_, ApiError>(crate::api::models::version_of(state, tenant, name, reference).await?.map(Arc::new))
            })
            .await
    }

    pub async fn tenant(&self, state: &AppState, name: &TenantName) -> Result<Option<Arc<Tenant>>, ApiError> {
        self.tenants
            .get(state, name.clone(), || async { Ok::<_, ApiError>(state.store.tenant(name).await?.map(Arc::new)) })
            .await
    }
}
