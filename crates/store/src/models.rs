//! The model registry's rows: immutable versions (each naming its signed manifest object) and
//! movable aliases. Both are written only through a governed `Change`.

use std::str::FromStr;

use factory_core::time::now_millis;
use factory_core::{Classification, Jurisdiction, TenantName};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{opt_string, reference_artifact, Change, Store, StoreError, StoreErrorKind};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelVersion {
    pub tenant: TenantName,
    pub name: String,
    pub version: i64,
    /// `trained`, `fine_tuned` or `imported`.
    pub origin: String,
    pub run_id: Option<String>,
    pub jurisdiction: Jurisdiction,
    pub classification: Classification,
    pub parameters: i64,
    /// The signed manifest (a signed note) in the object store.
    pub manifest_digest: String,
    /// The verifier key whose signature the manifest carries.
    pub signer: String,
    pub evals: serde_json::Value,
    pub created_at: i64,
    pub created_by: String,
}

/// What registering adds; the version number is given for imports (which keep the number
/// they had where they were made) and allocated otherwise.
#[derive(Debug, Clone)]
pub struct NewModelVersion {
    pub version: Option<i64>,
    pub origin: String,
    pub run_id: Option<String>,
    pub jurisdiction: Jurisdiction,
    pub classification: Classification,
    pub parameters: i64,
    pub manifest_digest: String,
    pub signer: String,
    pub evals: serde_json::Value,
    /// Every object the version names (files and the manifest).
    pub objects: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelAlias {
    pub alias: String,
    pub version: i64,
    pub updated_at: i64,
    pub updated_by: String,
}

const VERSION_COLUMNS: &str = "tenant, name, version, origin, run_id, jurisdiction, classification, parameters, \
     manifest_digest, signer, evals, created_at, created_by";

fn invalid(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::new(StoreErrorKind::Corrupt, format!("stored model {what} is invalid: {error}"))
}

fn version_from_row(row: &AnyRow) -> Result<ModelVersion, StoreError> {
    let tenant: String = row.try_get("tenant")?;
    let jurisdiction: String = row.try_get("jurisdiction")?;
    let classification: String = row.try_get("classification")?;
    let evals: String = row.try_get("evals")?;
    Ok(ModelVersion {
        tenant: TenantName::new(tenant).map_err(|e| invalid("tenant", e))?,
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        origin: row.try_get("origin")?,
        run_id: opt_string(row, "run_id")?,
        jurisdiction: Jurisdiction::new(jurisdiction).map_err(|e| invalid("jurisdiction", e))?,
        classification: Classification::from_str(&classification).map_err(|e| invalid("classification", e))?,
        parameters: row.try_get("parameters")?,
        manifest_digest: row.try_get("manifest_digest")?,
        signer: row.try_get("signer")?,
        evals: serde_json::from_str(&evals).map_err(|e| invalid("evals", e))?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
    })
}

/// The owner name under which a version's objects are referenced.
pub fn model_owner(tenant: &TenantName, name: &str, version: i64) -> String {
    format!("model:{tenant}/{name}@{version}")
}

impl Change {
    /// The version number the next registration of `name` would get. Registration reads it,
    /// builds and signs the manifest that carries it, stores that, and then inserts: a
    /// concurrent registration of the same number fails on the primary key and nothing of it
    /// becomes visible.
    pub async fn next_model_version(&mut self, tenant: &TenantName, name: &str) -> Result<i64, StoreError> {
        let newest: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM model_versions WHERE tenant = $1 AND name = $2")
                .bind(tenant.as_str())
                .bind(name)
                .fetch_one(self.connection())
                .await?;
        Ok(newest.unwrap_or(0) + 1)
    }

    /// Inserts a version whose objects are all stored, and references them.
    pub async fn add_model_version(
        &mut self,
        tenant: &TenantName,
        name: &str,
        version: i64,
        new: &NewModelVersion,
    ) -> Result<ModelVersion, StoreError> {
        let created_by = self.request().principal.id.clone();
        let created_at = now_millis();
        let result = sqlx::query(&format!(
            "INSERT INTO model_versions ({VERSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ))
        .bind(tenant.as_str())
        .bind(name)
        .bind(version)
        .bind(&new.origin)
        .bind(new.run_id.as_deref())
        .bind(new.jurisdiction.as_str())
        .bind(new.classification.as_str())
        .bind(new.parameters)
        .bind(&new.manifest_digest)
        .bind(&new.signer)
        .bind(new.evals.to_string())
        .bind(created_at)
        .bind(&created_by)
        .execute(self.connection())
        .await;
        match result {
            Ok(_) => {}
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                return Err(StoreError::new(
                    StoreErrorKind::Conflict,
                    format!("model {name}@{version} already exists in tenant {tenant}"),
                ))
            }
            Err(e) => return Err(e.into()),
        }
        let owner = model_owner(tenant, name, version);
        for digest in &new.objects {
            reference_artifact(self.connection(), digest, tenant, &owner).await?;
        }
        Ok(ModelVersion {
            tenant: tenant.clone(),
            name: name.to_string(),
            version,
            origin: new.origin.clone(),
            run_id: new.run_id.clone(),
            jurisdiction: new.jurisdiction.clone(),
            classification: new.classification,
            parameters: new.parameters,
            manifest_digest: new.manifest_digest.clone(),
            signer: new.signer.clone(),
            evals: new.evals.clone(),
            created_at,
            created_by,
        })
    }

    /// Points `alias` at an existing version and returns the version it pointed at before.
    pub async fn set_model_alias(
        &mut self,
        tenant: &TenantName,
        name: &str,
        alias: &str,
        version: i64,
    ) -> Result<Option<i64>, StoreError> {
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT version FROM model_versions WHERE tenant = $1 AND name = $2 AND version = $3")
                .bind(tenant.as_str())
                .bind(name)
                .bind(version)
                .fetch_optional(self.connection())
                .await?;
        if exists.is_none() {
            return Err(StoreError::new(StoreErrorKind::NotFound, format!("model {name}@{version} does not exist")));
        }
        let previous: Option<i64> =
            sqlx::query_scalar("SELECT version FROM model_aliases WHERE tenant = $1 AND name = $2 AND alias = $3")
                .bind(tenant.as_str())
                .bind(name)
                .bind(alias)
                .fetch_optional(self.connection())
                .await?;
        let updated_by = self.request().principal.id.clone();
        sqlx::query(
            "INSERT INTO model_aliases (tenant, name, alias, version, updated_at, updated_by) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (tenant, name, alias) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at, \
             updated_by = excluded.updated_by",
        )
        .bind(tenant.as_str())
        .bind(name)
        .bind(alias)
        .bind(version)
        .bind(now_millis())
        .bind(updated_by)
        .execute(self.connection())
        .await?;
        Ok(previous)
    }
}

impl Store {
    pub async fn model_version(
        &self,
        tenant: &TenantName,
        name: &str,
        version: i64,
    ) -> Result<Option<ModelVersion>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM model_versions WHERE tenant = $1 AND name = $2 AND version = $3"
        ))
        .bind(tenant.as_str())
        .bind(name)
        .bind(version)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(version_from_row).transpose()
    }

    /// Every version of `name`, oldest first; or of every model of the tenant when `name` is
    /// `None`.
    pub async fn model_versions(
        &self,
        tenant: &TenantName,
        name: Option<&str>,
    ) -> Result<Vec<ModelVersion>, StoreError> {
        let rows = match name {
            Some(name) => {
                sqlx::query(&format!(
                    "SELECT {VERSION_COLUMNS} FROM model_versions WHERE tenant = $1 AND name = $2 ORDER BY version"
                ))
                .bind(tenant.as_str())
                .bind(name)
                .fetch_all(self.pool())
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {VERSION_COLUMNS} FROM model_versions WHERE tenant = $1 ORDER BY name, version"
                ))
                .bind(tenant.as_str())
                .fetch_all(self.pool())
                .await?
            }
        };
        rows.iter().map(version_from_row).collect()
    }

    /// The version a training run registered, if it did.
    pub async fn model_version_of_run(&self, run_id: &str) -> Result<Option<ModelVersion>, StoreError> {
        let row = sqlx::query(&format!("SELECT {VERSION_COLUMNS} FROM model_versions WHERE run_id = $1"))
            .bind(run_id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(version_from_row).transpose()
    }

    pub async fn model_aliases(&self, tenant: &TenantName, name: &str) -> Result<Vec<ModelAlias>, StoreError> {
        let rows = sqlx::query(
            "SELECT alias, version, updated_at, updated_by FROM model_aliases WHERE tenant = $1 AND name = $2 ORDER BY alias",
        )
        .bind(tenant.as_str())
        .bind(name)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ModelAlias {
                    alias: row.try_get("alias")?,
                    version: row.try_get("version")?,
                    updated_at: row.try_get("updated_at")?,
                    updated_by: row.try_get("updated_by")?,
                })
            })
            .collect()
    }
}
