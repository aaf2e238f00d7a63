//! What drift monitoring is configured by and what it shows: a deployment's `drift` section,
//! and the board of every monitored deployment's latest readings, which the monitors
//! (`drift_watch`) write and the drift endpoint reads.

use std::collections::HashMap;

use factory_core::TenantName;
use factory_drift::{Reading, Settings};
use serde::{Deserialize, Serialize};

/// A deployment's `drift` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftSpec {
    /// `DATASET@VERSION` (or `@latest`) to compare prompts with; by default the data the first
    /// primary model was trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// `NAME@VERSION` of a registered embedding model: adds the prompt embedding monitor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_model: Option<String>,
    #[serde(default)]
    pub settings: Settings,
}

impl DriftSpec {
    /// Checks the section against the deployment's logging `sample_rate` (none: no logging).
    pub fn validate(&self, sample_rate: Option<f64>) -> Result<(), String> {
        self.settings.validate().map_err(|e| format!("drift.settings: {e}"))?;
        if sample_rate.is_none_or(|rate| rate <= 0.0) {
            return Err("drift: prompt monitors read logged prompts; set logging.sample_rate above 0".into());
        }
        for (field, value) in [("reference", &self.reference), ("embedding_model", &self.embedding_model)] {
            if value.as_deref().is_some_and(|v| v.split_once('@').is_none_or(|(n, r)| n.is_empty() || r.is_empty())) {
                return Err(format!("drift.{field}: expected NAME@VERSION"));
            }
        }
        Ok(())
    }
}

/// What `GET /api/v1/deployments/{name}/drift` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DriftStatus {
    pub reference: Option<String>,
    pub reference_documents: usize,
    pub embedding_model: Option<String>,
    pub observed: u64,
    pub judgements: u64,
    pub judgements_firing: u64,
    pub baseline_ready: bool,
    #[schema(value_type = Vec<Object>)]
    pub readings: Vec<Reading>,
    #[schema(value_type = Vec<Object>)]
    pub feedback: Vec<Reading>,
    pub error: Option<String>,
}

/// The latest status of every monitored deployment, by (tenant, deployment).
#[derive(Default)]
pub struct DriftBoard {
    statuses: std::sync::Mutex<HashMap<(String, String), DriftStatus>>,
}

impl DriftBoard {
    pub fn status(&self, tenant: &TenantName, deployment: &str) -> Option<DriftStatus> {
        let statuses = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
        statuses.get(&(tenant.to_string(), deployment.to_string())).cloned()
    }

    pub fn set(&self, key: &(String, String), status: DriftStatus) {
        self.statuses.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), status);
    }
}
