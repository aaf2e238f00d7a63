//! Tenants and API keys. A key's secret is shown once, at creation, and stored only as its
//! SHA-256 digest.

use std::str::FromStr;

use factory_core::secrets::{new_api_key_secret, new_id, sha256_hex};
use factory_core::time::now_millis;
use factory_core::{Jurisdiction, Principal, Role, TenantName};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{corrupt, opt_string, Change, Store, StoreError, StoreErrorKind};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub name: TenantName,
    pub jurisdictions: Vec<Jurisdiction>,
    pub created_at: i64,
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    /// `None` for platform keys.
    pub tenant: Option<TenantName>,
    pub role: Role,
    pub description: String,
    pub created_at: i64,
    pub created_by: String,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl ApiKey {
    pub fn principal(&self) -> Principal {
        Principal { id: self.id.clone(), tenant: self.tenant.clone(), role: self.role }
    }

    pub fn usable_at(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|expiry| expiry > now)
    }
}

/// A freshly created key and its secret, which exists nowhere else.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    pub key: ApiKey,
    pub secret: String,
}

const KEY_COLUMNS: &str = "id, tenant, role, description, created_at, created_by, expires_at, revoked_at";

fn key_from_row(row: &AnyRow) -> Result<ApiKey, StoreError> {
    let tenant = opt_string(row, "tenant")?.map(TenantName::new).transpose().map_err(|e| corrupt("key tenant", e))?;
    let role: String = row.try_get("role")?;
    Ok(ApiKey {
        id: row.try_get("id")?,
        tenant,
        role: Role::from_str(&role).map_err(|e| corrupt("key role", e))?,
        description: row.try_get("description")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

fn tenant_from_row(row: &AnyRow) -> Result<Tenant, StoreError> {
    let name: String = row.try_get("name")?;
    let jurisdictions: String = row.try_get("jurisdictions")?;
    let jurisdictions: Vec<Jurisdiction> =
        serde_json::from_str(&jurisdictions).map_err(|e| corrupt("tenant jurisdictions", e))?;
    Ok(Tenant {
        name: TenantName::new(name).map_err(|e| corrupt("tenant name", e))?,
        jurisdictions,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
    })
}

impl Change {
    pub async fn create_tenant(
        &mut self,
        name: &TenantName,
        jurisdictions: &[Jurisdiction],
    ) -> Result<Tenant, StoreError> {
        if jurisdictions.is_empty() {
            return Err(StoreError::new(StoreErrorKind::Invalid, "a tenant needs at least one allowed jurisdiction"));
        }
        let tenant = Tenant {
            name: name.clone(),
            jurisdictions: jurisdictions.to_vec(),
            created_at: now_millis(),
            created_by: self.request().principal.id.clone(),
        };
        let jurisdictions_json =
            serde_json::to_string(&tenant.jurisdictions).map_err(|e| corrupt("jurisdictions", e))?;
        let result =
            sqlx::query("INSERT INTO tenants (name, jurisdictions, created_at, created_by) VALUES ($1, $2, $3, $4)")
                .bind(tenant.name.as_str())
                .bind(jurisdictions_json)
                .bind(tenant.created_at)
                .bind(&tenant.created_by)
                .execute(self.connection())
                .await;
        match result {
            Ok(_) => Ok(tenant),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                Err(StoreError::new(StoreErrorKind::Conflict, format!("tenant {name} already exists")))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn create_api_key(
        &mut self,
        tenant: Option<&TenantName>,
        role: Role,
        description: &str,
        expires_at: Option<i64>,
    ) -> Result<IssuedKey, StoreError> {
        if let Some(tenant) = tenant {
            let exists: Option<String> = sqlx::query_scalar("SELECT name FROM tenants WHERE name = $1")
                .bind(tenant.as_str())
                .fetch_optional(self.connection())
                .await?;
            if exists.is_none() {
                return Err(StoreError::new(StoreErrorKind::NotFound, format!("tenant {tenant} does not exist")));
            }
        }
        let now = now_millis();
        if expires_at.is_some_and(|expiry| expiry <= now) {
            return Err(StoreError::new(StoreErrorKind::Invalid, "expires_at must be in the future"));
        }
        let secret = new_api_key_secret();
        let key = ApiKey {
            id: new_id("key"),
            tenant: tenant.cloned(),
            role,
            description: description.to_string(),
            created_at: now,
            created_by: self.request().principal.id.clone(),
            expires_at,
            revoked_at: None,
        };
        sqlx::query(&format!(
            "INSERT INTO api_keys ({KEY_COLUMNS}, secret_hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(&key.id)
        .bind(key.tenant.as_ref().map(|t| t.to_string()))
        .bind(key.role.as_str())
        .bind(&key.description)
        .bind(key.created_at)
        .bind(&key.created_by)
        .bind(key.expires_at)
        .bind(key.revoked_at)
        .bind(sha256_hex(secret.as_bytes()))
        .execute(self.connection())
        .await?;
        Ok(IssuedKey { key, secret })
    }

    pub async fn revoke_api_key(&mut self, id: &str) -> Result<ApiKey, StoreError> {
        let now = now_millis();
        let row = sqlx::query(&format!(
            "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL RETURNING {KEY_COLUMNS}"
        ))
        .bind(now)
        .bind(id)
        .fetch_optional(self.connection())
        .await?;
        match row {
            Some(row) => key_from_row(&row),
            None => {
                Err(StoreError::new(StoreErrorKind::Conflict, format!("key {id} does not exist or is already revoked")))
            }
        }
    }
}

impl Store {
    pub async fn tenant(&self, name: &TenantName) -> Result<Option<Tenant>, StoreError> {
        let row = sqlx::query("SELECT name, jurisdictions, created_at, created_by FROM tenants WHERE name = $1")
            .bind(name.as_str())
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(tenant_from_row).transpose()
    }

    pub async fn api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    /// The key a bearer secret belongs to, if it exists, is not revoked and has not expired.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<ApiKey>, StoreError> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE secret_hash = $1"))
            .bind(sha256_hex(secret.as_bytes()))
            .fetch_optional(self.pool())
            .await?;
        let key = row.as_ref().map(key_from_row).transpose()?;
        Ok(key.filter(|key| key.usable_at(now_millis())))
    }

    /// Whether a usable platform admin key exists; `factory up` creates one when not.
    pub async fn has_platform_admin(&self) -> Result<bool, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM api_keys WHERE tenant IS NULL AND role = 'admin' AND revoked_at IS NULL",
        )
        .fetch_one(self.pool())
        .await?;
        Ok(count > 0)
    }
}
