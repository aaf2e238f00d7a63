//! Reading the audit log: records, Merkle roots and proofs, signed checkpoints, and the stream
//! the offline verifier consumes.

use factory_audit::checkpoint::{Checkpoint, NoteSigner};
use factory_audit::merkle::{self, Hash};
use factory_audit::record::AuditRecord;
use factory_audit::verify::StoredRecord;
use factory_core::TenantName;
use sqlx::Row;

use crate::{Store, StoreError, StoreErrorKind};

/// One record as the API shows it: the canonical record plus the details it digests.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub record: AuditRecord,
    pub details: serde_json::Value,
}

/// Signs checkpoints for this log.
pub struct CheckpointIssuer {
    pub origin: String,
    pub signer: NoteSigner,
}

impl Store {
    /// The number of records in the log.
    pub async fn audit_size(&self) -> Result<u64, StoreError> {
        let size: i64 = sqlx::query_scalar("SELECT size FROM audit_head WHERE id = 1").fetch_one(self.pool()).await?;
        Ok(size as u64)
    }

    /// Records from index `from`, oldest first; `tenant` limits them to one tenant's records.
    pub async fn audit_records(
        &self,
        from: u64,
        limit: u32,
        tenant: Option<&TenantName>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let rows =
            match tenant {
                None => {
                    sqlx::query("SELECT record, details FROM audit_records WHERE idx >= $1 ORDER BY idx LIMIT $2")
                        .bind(from as i64)
                        .bind(i64::from(limit))
                        .fetch_all(self.pool())
                        .await?
                }
                Some(tenant) => sqlx::query(
                    "SELECT record, details FROM audit_records WHERE tenant = $1 AND idx >= $2 ORDER BY idx LIMIT $3",
                )
                .bind(tenant.as_str())
                .bind(from as i64)
                .bind(i64::from(limit))
                .fetch_all(self.pool())
                .await?,
            };
        rows.iter()
            .map(|row| {
                let record: String = row.try_get("record")?;
                let details: String = row.try_get("details")?;
                let record = AuditRecord::from_canonical(record.as_bytes())
                    .map_err(|e| StoreError::new(StoreErrorKind::Corrupt, format!("audit record: {e}")))?;
                let details = serde_json::from_str(&details)
                    .map_err(|e| StoreError::new(StoreErrorKind::Corrupt, format!("audit details: {e}")))?;
                Ok(AuditEntry { record, details })
            })
            .collect()
    }

    /// Runs `f` over the first `size` leaf hashes, loading new ones into the cache first.
    async fn with_leaves<T>(&self, size: u64, f: impl FnOnce(&[Hash]) -> T) -> Result<T, StoreError> {
        let mut cache = self.leaf_cache.lock().await;
        let cached = cache.len() as u64;
        if cached < size {
            let rows =
                sqlx::query("SELECT idx, leaf_hash FROM audit_records WHERE idx >= $1 AND idx < $2 ORDER BY idx")
                    .bind(cached as i64)
                    .bind(size as i64)
                    .fetch_all(self.pool())
                    .await?;
            for row in rows {
                let index: i64 = row.try_get("idx")?;
                let leaf: Vec<u8> = row.try_get("leaf_hash")?;
                let leaf: Hash = leaf.try_into().map_err(|_| {
                    StoreError::new(StoreErrorKind::Corrupt, format!("audit record {index} has a malformed leaf hash"))
                })?;
                if index as usize != cache.len() {
                    return Err(StoreError::new(
                        StoreErrorKind::Corrupt,
                        format!("audit record {} is missing", cache.len()),
                    ));
                }
                cache.push(leaf);
            }
        }
        if (cache.len() as u64) < size {
            return Err(StoreError::new(
                StoreErrorKind::NotFound,
                format!("the audit log has fewer than {size} records"),
            ));
        }
        Ok(f(&cache[..size as usize]))
    }

    pub async fn audit_root(&self, size: u64) -> Result<Hash, StoreError> {
        self.with_leaves(size, merkle::root).await
    }

    pub async fn inclusion_proof(&self, index: u64, size: u64) -> Result<(Hash, Vec<Hash>), StoreError> {
        if index >= size {
            return Err(StoreError::new(StoreErrorKind::Invalid, format!("index {index} is not below size {size}")));
        }
        self.with_leaves(size, |leaves| {
            merkle::inclusion_proof(leaves, index).map(|proof| (leaves[index as usize], proof))
        })
        .await?
        .map_err(|e| StoreError::new(StoreErrorKind::Invalid, e.to_string()))
    }

    pub async fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, StoreError> {
        if old_size == 0 || old_size > new_size {
            return Err(StoreError::new(
                StoreErrorKind::Invalid,
                format!("old size {old_size} must be between 1 and new size {new_size}"),
            ));
        }
        self.with_leaves(new_size, |leaves| merkle::consistency_proof(leaves, old_size))
            .await?
            .map_err(|e| StoreError::new(StoreErrorKind::Invalid, e.to_string()))
    }

    /// A checkpoint of the log as it is now: the stored one if the log has not grown since,
    /// otherwise a newly signed one, stored for later verification.
    pub async fn issue_checkpoint(&self, issuer: &CheckpointIssuer) -> Result<String, StoreError> {
        let size = self.audit_size().await?;
        if let Some(note) = sqlx::query_scalar::<_, String>("SELECT note FROM audit_checkpoints WHERE size = $1")
            .bind(size as i64)
            .fetch_optional(self.pool())
            .await?
        {
            return Ok(note);
        }
        let root = self.audit_root(size).await?;
        let note = issuer.signer.sign(&Checkpoint { origin: issuer.origin.clone(), size, root });
        let mut write = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO audit_checkpoints (size, note, created_at) VALUES ($1, $2, $3) ON CONFLICT (size) DO NOTHING",
        )
        .bind(size as i64)
        .bind(&note)
        .bind(factory_core::time::now_millis())
        .execute(&mut *write.transaction)
        .await?;
        write.commit().await?;
        Ok(note)
    }

    pub async fn latest_checkpoint(&self) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT note FROM audit_checkpoints ORDER BY size DESC LIMIT 1")
            .fetch_optional(self.pool())
            .await?)
    }

    /// Every stored checkpoint note, for the offline verifier.
    pub async fn audit_checkpoints(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT note FROM audit_checkpoints ORDER BY size").fetch_all(self.pool()).await?)
    }

    /// One page of stored records as the verifier sees them: exactly what is in the table, in
    /// index order, with the details digest checked against the details column.
    pub async fn stored_audit_page(
        &self,
        after_index: Option<u64>,
        below_index: u64,
        limit: u32,
    ) -> Result<Vec<(StoredRecord, DetailsCheck)>, StoreError> {
        // Keyset paging returns every stored row, gaps included, so the verifier sees them. The
        // upper bound keeps records appended during a long verification out of it.
        let after = after_index.map(|i| i as i64).unwrap_or(-1);
        let rows = sqlx::query(
            "SELECT idx, record, leaf_hash, details FROM audit_records WHERE idx > $1 AND idx < $2 ORDER BY idx LIMIT $3",
        )
        .bind(after)
        .bind(below_index as i64)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let index: i64 = row.try_get("idx")?;
                let record: String = row.try_get("record")?;
                let leaf_hash: Vec<u8> = row.try_get("leaf_hash")?;
                let details: String = row.try_get("details")?;
                let details_digest = serde_json::from_str::<serde_json::Value>(&details)
                    .map(|value| factory_audit::record::details_digest(&value))
                    .unwrap_or_default();
                Ok((
                    StoredRecord { index: index as u64, record: record.into_bytes(), leaf_hash },
                    DetailsCheck { index: index as u64, details_digest },
                ))
            })
            .collect()
    }
}

/// The digest of the stored details column, to compare with the record's `details_digest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetailsCheck {
    pub index: u64,
    pub details_digest: String,
}
