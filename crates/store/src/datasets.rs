//! Dataset definitions and their immutable versions. A version row is inserted only in the
//! governed transaction that completes an ingest, after every object it names is stored, so a
//! version is visible exactly when it is whole.

use std::str::FromStr;

use factory_core::time::now_millis;
use factory_core::{Classification, Jurisdiction, TenantName};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{opt_string, Change, Store, StoreError, StoreErrorKind};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    pub tenant: TenantName,
    pub name: String,
    pub classification: Classification,
    pub jurisdiction: Jurisdiction,
    /// The storage site holding its objects.
    pub site: String,
    pub owner: String,
    pub retention_days: Option<i64>,
    pub description: String,
    pub tags: Vec<String>,
    /// The PII policy as JSON (its shape belongs to the ingest crate).
    pub pii_policy: serde_json::Value,
    /// A declared schema as JSON, when the dataset has one.
    pub declared_schema: Option<serde_json::Value>,
    pub latest_version: i64,
    pub created_at: i64,
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetVersion {
    pub version: i64,
    pub manifest_digest: String,
    pub rows: i64,
    pub bytes: i64,
    pub source_digest: String,
    pub created_at: i64,
    pub created_by: String,
}

/// What a completed ingest adds.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub manifest_digest: String,
    pub rows: i64,
    pub bytes: i64,
    pub source_digest: String,
    /// Every object the version references (shards and the manifest).
    pub objects: Vec<String>,
}

const DATASET_COLUMNS: &str = "tenant, name, classification, jurisdiction, site, owner, retention_days, description, \
     tags, pii_policy, declared_schema, latest_version, created_at, created_by";

fn invalid(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::new(StoreErrorKind::Corrupt, format!("stored dataset {what} is invalid: {error}"))
}

fn dataset_from_row(row: &AnyRow) -> Result<Dataset, StoreError> {
    let tenant: String = row.try_get("tenant")?;
    let classification: String = row.try_get("classification")?;
    let jurisdiction: String = row.try_get("jurisdiction")?;
    let tags: String = row.try_get("tags")?;
    let pii_policy: String = row.try_get("pii_policy")?;
    let declared_schema = opt_string(row, "declared_schema")?;
    Ok(Dataset {
        tenant: TenantName::new(tenant).map_err(|e| invalid("tenant", e))?,
        name: row.try_get("name")?,
        classification: Classification::from_str(&classification).map_err(|e| invalid("classification", e))?,
        jurisdiction: Jurisdiction::new(jurisdiction).map_err(|e| invalid("jurisdiction", e))?,
        site: row.try_get("site")?,
        owner: row.try_get("owner")?,
        retention_days: row.try_get("retention_days")?,
        description: row.try_get("description")?,
        tags: serde_json::from_str(&tags).map_err(|e| invalid("tags", e))?,
        pii_policy: serde_json::from_str(&pii_policy).map_err(|e| invalid("pii policy", e))?,
        declared_schema: declared_schema
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| invalid("schema", e))?,
        latest_version: row.try_get("latest_version")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
    })
}

fn version_from_row(row: &AnyRow) -> Result<DatasetVersion, StoreError> {
    Ok(DatasetVersion {
        version: row.try_get("version")?,
        manifest_digest: row.try_get("manifest_digest")?,
        rows: row.try_get("row_count")?,
        bytes: row.try_get("byte_count")?,
        source_digest: row.try_get("source_digest")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
    })
}

impl Change {
    /// Inserts `dataset` (its tenant and name must be this change's resource).
    pub async fn create_dataset(&mut self, dataset: &Dataset) -> Result<(), StoreError> {
        let tags = serde_json::to_string(&dataset.tags).map_err(|e| invalid("tags", e))?;
        let created_by = self.request().principal.id.clone();
        let result = sqlx::query(&format!(
            "INSERT INTO datasets ({DATASET_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0, $12, $13)"
        ))
        .bind(dataset.tenant.as_str())
        .bind(&dataset.name)
        .bind(dataset.classification.as_str())
        .bind(dataset.jurisdiction.as_str())
        .bind(&dataset.site)
        .bind(&dataset.owner)
        .bind(dataset.retention_days)
        .bind(&dataset.description)
        .bind(tags)
        .bind(dataset.pii_policy.to_string())
        .bind(dataset.declared_schema.as_ref().map(|s| s.to_string()))
        .bind(now_millis())
        .bind(created_by)
        .execute(self.connection())
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Err(StoreError::new(
                StoreErrorKind::Conflict,
                format!("dataset {} already exists in tenant {}", dataset.name, dataset.tenant),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes a completed ingest visible as the dataset's next version and returns its number.
    pub async fn add_dataset_version(
        &mut self,
        tenant: &TenantName,
        dataset: &str,
        new: &NewVersion,
    ) -> Result<i64, StoreError> {
        let version: Option<i64> = sqlx::query_scalar(
            "UPDATE datasets SET latest_version = latest_version + 1 WHERE tenant = $1 AND name = $2 RETURNING latest_version",
        )
        .bind(tenant.as_str())
        .bind(dataset)
        .fetch_optional(self.connection())
        .await?;
        let version = version.ok_or_else(|| {
            StoreError::new(StoreErrorKind::NotFound, format!("dataset {dataset} does not exist in tenant {tenant}"))
        })?;
        let created_by = self.request().principal.id.clone();
        sqlx::query(
            "INSERT INTO dataset_versions (tenant, dataset, version, manifest_digest, row_count, byte_count, source_digest, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(tenant.as_str())
        .bind(dataset)
        .bind(version)
        .bind(&new.manifest_digest)
        .bind(new.rows)
        .bind(new.bytes)
        .bind(&new.source_digest)
        .bind(now_millis())
        .bind(created_by)
        .execute(self.connection())
        .await?;
        for digest in &new.objects {
            sqlx::query(
                "INSERT INTO object_references (digest, tenant, dataset, version) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(digest)
            .bind(tenant.as_str())
            .bind(dataset)
            .bind(version)
            .execute(self.connection())
            .await?;
        }
        Ok(version)
    }
}

impl Store {
    pub async fn dataset(&self, tenant: &TenantName, name: &str) -> Result<Option<Dataset>, StoreError> {
        let row = sqlx::query(&format!("SELECT {DATASET_COLUMNS} FROM datasets WHERE tenant = $1 AND name = $2"))
            .bind(tenant.as_str())
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(dataset_from_row).transpose()
    }

    pub async fn datasets(&self, tenant: &TenantName) -> Result<Vec<Dataset>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {DATASET_COLUMNS} FROM datasets WHERE tenant = $1 ORDER BY name"))
            .bind(tenant.as_str())
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(dataset_from_row).collect()
    }

    pub async fn dataset_version(
        &self,
        tenant: &TenantName,
        dataset: &str,
        version: i64,
    ) -> Result<Option<DatasetVersion>, StoreError> {
        let row = sqlx::query(
            "SELECT version, manifest_digest, row_count, byte_count, source_digest, created_at, created_by \
             FROM dataset_versions WHERE tenant = $1 AND dataset = $2 AND version = $3",
        )
        .bind(tenant.as_str())
        .bind(dataset)
        .bind(version)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(version_from_row).transpose()
    }

    pub async fn dataset_versions(
        &self,
        tenant: &TenantName,
        dataset: &str,
    ) -> Result<Vec<DatasetVersion>, StoreError> {
        let rows = sqlx::query(
            "SELECT version, manifest_digest, row_count, byte_count, source_digest, created_at, created_by \
             FROM dataset_versions WHERE tenant = $1 AND dataset = $2 ORDER BY version",
        )
        .bind(tenant.as_str())
        .bind(dataset)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(version_from_row).collect()
    }

    /// Whether any dataset version or run artifact references the object; unreferenced
    /// objects may be collected.
    pub async fn object_is_referenced(&self, digest: &str) -> Result<bool, StoreError> {
        let found: Option<String> = sqlx::query_scalar(
            "SELECT digest FROM object_references WHERE digest = $1              UNION ALL SELECT digest FROM artifact_references WHERE digest = $1 LIMIT 1",
        )
        .bind(digest)
        .fetch_optional(self.pool())
        .await?;
        Ok(found.is_some())
    }
}
