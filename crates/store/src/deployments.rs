//! Deployment rows: a name, a JSON spec the server interprets, and a revision that grows with
//! every change so running engines know when to reload. Written only through a `Change`.

use factory_core::time::now_millis;
use factory_core::TenantName;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{Change, Store, StoreError, StoreErrorKind};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub tenant: TenantName,
    pub name: String,
    pub spec: serde_json::Value,
    pub revision: i64,
    pub created_at: i64,
    pub created_by: String,
    pub updated_at: i64,
}

const COLUMNS: &str = "tenant, name, spec, revision, created_at, created_by, updated_at";

fn from_row(row: &AnyRow) -> Result<Deployment, StoreError> {
    let tenant: String = row.try_get("tenant")?;
    let spec: String = row.try_get("spec")?;
    let invalid =
        |what: &str, e: String| StoreError::new(StoreErrorKind::Corrupt, format!("stored deployment {what}: {e}"));
    Ok(Deployment {
        tenant: TenantName::new(tenant).map_err(|e| invalid("tenant", e.to_string()))?,
        name: row.try_get("name")?,
        spec: serde_json::from_str(&spec).map_err(|e| invalid("spec", e.to_string()))?,
        revision: row.try_get("revision")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl Change {
    /// Creates the deployment, or replaces its spec (a new revision) when `replace` is set.
    pub async fn put_deployment(
        &mut self,
        tenant: &TenantName,
        name: &str,
        spec: &serde_json::Value,
        replace: bool,
    ) -> Result<Deployment, StoreError> {
        let now = now_millis();
        let by = self.request().principal.id.clone();
        let row = if replace {
            sqlx::query(&format!(
                "UPDATE deployments SET spec = $1, revision = revision + 1, updated_at = $2 \
                 WHERE tenant = $3 AND name = $4 RETURNING {COLUMNS}"
            ))
            .bind(spec.to_string())
            .bind(now)
            .bind(tenant.as_str())
            .bind(name)
            .fetch_optional(self.connection())
            .await?
            .ok_or_else(|| StoreError::new(StoreErrorKind::NotFound, format!("deployment {name} does not exist")))?
        } else {
            let inserted = sqlx::query(&format!(
                "INSERT INTO deployments ({COLUMNS}) VALUES ($1, $2, $3, 1, $4, $5, $4) RETURNING {COLUMNS}"
            ))
            .bind(tenant.as_str())
            .bind(name)
            .bind(spec.to_string())
            .bind(now)
            .bind(by)
            .fetch_one(self.connection())
            .await;
            match inserted {
                Ok(row) => row,
                Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                    return Err(StoreError::new(StoreErrorKind::Conflict, format!("deployment {name} already exists")))
                }
                Err(e) => return Err(e.into()),
            }
        };
        from_row(&row)
    }

    pub async fn delete_deployment(&mut self, tenant: &TenantName, name: &str) -> Result<(), StoreError> {
        let deleted = sqlx::query("DELETE FROM deployments WHERE tenant = $1 AND name = $2")
            .bind(tenant.as_str())
            .bind(name)
            .execute(self.connection())
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::new(StoreErrorKind::NotFound, format!("deployment {name} does not exist")));
        }
        Ok(())
    }
}

impl Store {
    pub async fn deployment(&self, tenant: &TenantName, name: &str) -> Result<Option<Deployment>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM deployments WHERE tenant = $1 AND name = $2"))
            .bind(tenant.as_str())
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    pub async fn deployments(&self, tenant: &TenantName) -> Result<Vec<Deployment>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM deployments WHERE tenant = $1 ORDER BY name"))
            .bind(tenant.as_str())
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Every tenant's deployments (for the drift monitors).
    pub async fn all_deployments(&self) -> Result<Vec<Deployment>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM deployments ORDER BY tenant, name"))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(from_row).collect()
    }
}
