//! Reading the audit log: records, Merkle roots and proofs (from the stored subtree roots, see
//! `factory_audit::subtree`), signed and published checkpoints, and the stream the offline
//! verifier consumes.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use factory_audit::checkpoint::{Checkpoint, NoteSigner, PublishedCheckpoint};
use factory_audit::merkle::{Frontier, Hash, ProofError};
use factory_audit::record::AuditRecord;
use factory_audit::subtree::{self, NodeId};
use factory_audit::verify::StoredRecord;
use factory_core::TenantName;
use sqlx::{AnyConnection, Row};
use tokio::sync::Mutex;

use crate::{Store, StoreError, StoreErrorKind};

/// One record as the API shows it: the canonical record plus the details it digests.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub record: AuditRecord,
    pub details: serde_json::Value,
}

/// What the audit log is searched by; each field left `None` matches every record.
#[derive(Debug, Clone, Default)]
pub struct AuditSearch {
    pub tenant: Option<TenantName>,
    pub principal: Option<String>,
    pub action: Option<String>,
    /// Records written at or after this time (milliseconds since the epoch).
    pub since: Option<i64>,
    /// Records written before this time.
    pub until: Option<i64>,
}

fn entry_from_row(row: &sqlx::any::AnyRow) -> Result<AuditEntry, StoreError> {
    let record: String = row.try_get("record")?;
    let details: String = row.try_get("details")?;
    let record = AuditRecord::from_canonical(record.as_bytes())
        .map_err(|e| StoreError::new(StoreErrorKind::Corrupt, format!("audit record: {e}")))?;
    let details = serde_json::from_str(&details)
        .map_err(|e| StoreError::new(StoreErrorKind::Corrupt, format!("audit details: {e}")))?;
    Ok(AuditEntry { record, details })
}

/// Signs checkpoints for this log, and publishes each new one outside the database.
pub struct CheckpointIssuer {
    pub origin: String,
    pub signer: NoteSigner,
    /// Where every newly signed checkpoint is written, one file each, before it is stored; see
    /// [`factory_audit::PublishedCheckpoint`]. `None` publishes nothing.
    publish_dir: Option<PathBuf>,
    /// Held while a checkpoint is issued. `None` until `publish_dir` has been read; then the
    /// newest checkpoint published there, if any, kept current as new ones are published (so
    /// the directory is listed once per process, not once per checkpoint).
    published: Mutex<Option<Option<Checkpoint>>>,
}

impl CheckpointIssuer {
    /// An issuer that signs as `signer` for the log named `origin` and publishes nothing.
    pub fn new(origin: String, signer: NoteSigner) -> Self {
        Self { origin, signer, publish_dir: None, published: Mutex::new(None) }
    }

    /// Publishes every new checkpoint to `dir` (created on first use).
    pub fn publishing_to(self, dir: PathBuf) -> Self {
        Self { publish_dir: Some(dir), published: Mutex::new(None), ..self }
    }
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
        let search = AuditSearch { tenant: tenant.cloned(), ..AuditSearch::default() };
        self.search_audit(&search, from, limit).await
    }

    /// Up to `limit` records from index `from` on that match `search`, in the log's order.
    pub async fn search_audit(
        &self,
        search: &AuditSearch,
        from: u64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut conditions = vec!["idx >= $1".to_string()];
        let mut texts: Vec<String> = Vec::new();
        let mut times: Vec<i64> = Vec::new();
        for (column, value) in [
            ("tenant", search.tenant.as_ref().map(|t| t.to_string())),
            ("principal", search.principal.clone()),
            ("action", search.action.clone()),
        ] {
            if let Some(value) = value {
                texts.push(value);
                conditions.push(format!("{column} = ${}", texts.len() + 1));
            }
        }
        for (comparison, value) in [(">=", search.since), ("<", search.until)] {
            if let Some(value) = value {
                times.push(value);
                conditions.push(format!("created_at {comparison} ${}", texts.len() + times.len() + 1));
            }
        }
        let sql = format!(
            "SELECT record, details FROM audit_records WHERE {} ORDER BY idx LIMIT ${}",
            conditions.join(" AND "),
            texts.len() + times.len() + 2
        );
        let mut query = sqlx::query(&sql).bind(from as i64);
        for text in texts {
            query = query.bind(text);
        }
        for time in times {
            query = query.bind(time);
        }
        let rows = query.bind(i64::from(limit)).fetch_all(self.pool()).await?;
        rows.iter().map(entry_from_row).collect()
    }

    /// The record at `index` with its details, and its canonical bytes (the leaf as logged).
    pub async fn audit_record(&self, index: u64) -> Result<Option<(AuditEntry, String)>, StoreError> {
        let row = sqlx::query("SELECT record, details FROM audit_records WHERE idx = $1")
            .bind(index as i64)
            .fetch_optional(self.pool())
            .await?;
        match row {
            Some(row) => Ok(Some((entry_from_row(&row)?, row.try_get("record")?))),
            None => Ok(None),
        }
    }

    /// The root of the first `size` records, from O(log n) stored subtree roots.
    pub async fn audit_root(&self, size: u64) -> Result<Hash, StoreError> {
        self.require_size(size).await?;
        let nodes = read_nodes(self.pool(), &subtree::root_nodes(size)).await?;
        subtree::root_from(size, &mut |id| nodes.get(&id).copied()).map_err(proof_failure)
    }

    /// The leaf at `index` and its audit path in the tree of the first `size` records, from
    /// O(log n) stored subtree roots.
    pub async fn inclusion_proof(&self, index: u64, size: u64) -> Result<(Hash, Vec<Hash>), StoreError> {
        if index >= size {
            return Err(StoreError::new(StoreErrorKind::Invalid, format!("index {index} is not below size {size}")));
        }
        self.require_size(size).await?;
        let planned = subtree::inclusion_nodes(size, index).map_err(proof_failure)?;
        let nodes = read_nodes(self.pool(), &planned).await?;
        let proof =
            subtree::inclusion_proof_from(size, index, &mut |id| nodes.get(&id).copied()).map_err(proof_failure)?;
        let leaf = nodes.get(&NodeId::leaf(index)).copied().ok_or_else(|| missing_node(NodeId::leaf(index)))?;
        Ok((leaf, proof))
    }

    /// The consistency proof from the first `old_size` records to the first `new_size`, from
    /// O(log n) stored subtree roots.
    pub async fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, StoreError> {
        if old_size == 0 || old_size > new_size {
            return Err(StoreError::new(
                StoreErrorKind::Invalid,
                format!("old size {old_size} must be between 1 and new size {new_size}"),
            ));
        }
        self.require_size(new_size).await?;
        let planned = subtree::consistency_nodes(old_size, new_size).map_err(proof_failure)?;
        let nodes = read_nodes(self.pool(), &planned).await?;
        subtree::consistency_proof_from(old_size, new_size, &mut |id| nodes.get(&id).copied()).map_err(proof_failure)
    }

    /// Refuses sizes the log has not reached, which have no root.
    async fn require_size(&self, size: u64) -> Result<(), StoreError> {
        if self.audit_size().await? < size {
            return Err(StoreError::new(
                StoreErrorKind::NotFound,
                format!("the audit log has fewer than {size} records"),
            ));
        }
        Ok(())
    }

    /// A checkpoint of the log as it is now: the stored one if the log has not grown since,
    /// otherwise a newly signed one, published (when the issuer publishes) and then stored.
    ///
    /// Before signing, the log is checked against the newest checkpoint already published: a
    /// log rewritten in the database (even one whose stored checkpoints were rewritten or
    /// deleted with it) no longer has that checkpoint's root at its size, and signing it would
    /// vouch for the rewrite. The refusal is an error every time, until someone looks.
    pub async fn issue_checkpoint(&self, issuer: &CheckpointIssuer) -> Result<String, StoreError> {
        // One issue at a time: the newest published checkpoint is read, compared and replaced.
        let mut published = issuer.published.lock().await;
        let size = self.audit_size().await?;
        let stored = sqlx::query_scalar::<_, String>("SELECT note FROM audit_checkpoints WHERE size = $1")
            .bind(size as i64)
            .fetch_optional(self.pool())
            .await?;
        let Some(dir) = &issuer.publish_dir else {
            return match stored {
                Some(note) => Ok(note),
                None => {
                    let root = self.audit_root(size).await?;
                    let note = issuer.signer.sign(&Checkpoint { origin: issuer.origin.clone(), size, root });
                    self.store_checkpoint(size, &note).await?;
                    Ok(note)
                }
            };
        };
        let newest = match &*published {
            Some(known) => known.clone(),
            None => newest_published(dir, issuer).await?,
        };
        *published = Some(newest.clone());
        let already_stored = stored.is_some();
        let (checkpoint, note) = match stored {
            Some(note) => {
                let checkpoint = issuer.signer.verifier().verify(&note).map_err(|e| {
                    StoreError::new(StoreErrorKind::Corrupt, format!("stored checkpoint for size {size}: {e}"))
                })?;
                (checkpoint, note)
            }
            None => {
                let root = self.audit_root(size).await?;
                let checkpoint = Checkpoint { origin: issuer.origin.clone(), size, root };
                let note = issuer.signer.sign(&checkpoint);
                (checkpoint, note)
            }
        };
        if let Some(previous) = &newest {
            self.check_extends(previous, &checkpoint, dir).await?;
        }
        if newest.as_ref().map(|newest| newest.size) != Some(size) {
            // Published before it is stored, so the database never names a checkpoint that
            // witnesses could not have copied. A stored one is published again when it is not
            // known to be (stored before publishing was set up, or in another directory):
            // publishing is idempotent.
            publish(dir, &checkpoint, &note).await?;
            *published = Some(Some(checkpoint));
        }
        if !already_stored {
            self.store_checkpoint(size, &note).await?;
        }
        Ok(note)
    }

    /// Stores a signed checkpoint; one already stored for its size is kept.
    async fn store_checkpoint(&self, size: u64, note: &str) -> Result<(), StoreError> {
        let mut write = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO audit_checkpoints (size, note, created_at) VALUES ($1, $2, $3) ON CONFLICT (size) DO NOTHING",
        )
        .bind(size as i64)
        .bind(note)
        .bind(factory_core::time::now_millis())
        .execute(&mut *write.transaction)
        .await?;
        write.commit().await
    }

    /// Fails unless the log of `next.size` records extends the one `previous` (published in
    /// `dir`) committed to.
    async fn check_extends(&self, previous: &Checkpoint, next: &Checkpoint, dir: &Path) -> Result<(), StoreError> {
        let refuse = |what: String| {
            StoreError::new(
                StoreErrorKind::Corrupt,
                format!(
                    "refusing to sign a checkpoint: {what}, so the audit log in the database is not the one \
                     published in {} (it was rewritten or rolled back; restore it, or move that directory aside \
                     if the database was replaced on purpose)",
                    dir.display()
                ),
            )
        };
        if previous.size > next.size {
            return Err(refuse(format!(
                "the log holds {} records, fewer than the {} of the newest published checkpoint",
                next.size, previous.size
            )));
        }
        let root_then = if previous.size == next.size { next.root } else { self.audit_root(previous.size).await? };
        if root_then != previous.root {
            return Err(refuse(format!(
                "the first {} records no longer have the root of the checkpoint published for that size",
                previous.size
            )));
        }
        Ok(())
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

    /// Whether the database keeps the subtree roots beside the records (its schema is recent
    /// enough); the verifier checks them only then. Read-only, for databases it must not migrate.
    pub async fn audit_subtree_roots_stored(&self) -> Result<bool, StoreError> {
        let applied: Option<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
            .bind(crate::migrations::AUDIT_SUBTREES)
            .fetch_optional(self.pool())
            .await?;
        Ok(applied.is_some())
    }

    /// One page of stored records as the verifier sees them: exactly what is in the table, in
    /// index order, with the details digest checked against the details column.
    /// `with_subtree_roots` reads the subtree roots too (see [`Store::audit_subtree_roots_stored`]).
    pub async fn stored_audit_page(
        &self,
        after_index: Option<u64>,
        below_index: u64,
        limit: u32,
        with_subtree_roots: bool,
    ) -> Result<Vec<(StoredRecord, DetailsCheck)>, StoreError> {
        // Keyset paging returns every stored row, gaps included, so the verifier sees them. The
        // upper bound keeps records appended during a long verification out of it.
        let after = after_index.map(|i| i as i64).unwrap_or(-1);
        let columns = if with_subtree_roots {
            "idx, record, leaf_hash, details, subtree_roots"
        } else {
            "idx, record, leaf_hash, details"
        };
        let rows = sqlx::query(&format!(
            "SELECT {columns} FROM audit_records WHERE idx > $1 AND idx < $2 ORDER BY idx LIMIT $3"
        ))
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
                // A record that completed no subtree may hold NULL (see the migration).
                let subtree_roots = match with_subtree_roots {
                    true => Some(row.try_get::<Option<Vec<u8>>, _>("subtree_roots")?.unwrap_or_default()),
                    false => None,
                };
                Ok((
                    StoredRecord { index: index as u64, record: record.into_bytes(), leaf_hash, subtree_roots },
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

fn proof_failure(error: ProofError) -> StoreError {
    match error {
        ProofError::MissingNode { level, index } => missing_node(NodeId { level, index }),
        other => StoreError::new(StoreErrorKind::Invalid, other.to_string()),
    }
}

fn missing_node(id: NodeId) -> StoreError {
    StoreError::new(
        StoreErrorKind::Corrupt,
        format!(
            "audit record {} lacks the subtree root at level {} that it completed (run `factory audit verify`)",
            id.last_leaf(),
            id.level
        ),
    )
}

/// Reads the stored subtree roots `ids` names, from the records that completed them: one query
/// by primary key, whatever the size of the log.
async fn read_nodes<'c, E>(executor: E, ids: &[NodeId]) -> Result<HashMap<NodeId, Hash>, StoreError>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut rows_wanted: Vec<u64> = ids.iter().map(NodeId::last_leaf).collect();
    rows_wanted.sort_unstable();
    rows_wanted.dedup();
    let placeholders: Vec<String> = (1..=rows_wanted.len()).map(|n| format!("${n}")).collect();
    let sql =
        format!("SELECT idx, leaf_hash, subtree_roots FROM audit_records WHERE idx IN ({})", placeholders.join(", "));
    let mut query = sqlx::query(&sql);
    for row in &rows_wanted {
        query = query.bind(*row as i64);
    }
    let mut by_row: HashMap<u64, (Vec<u8>, Vec<u8>)> = HashMap::new();
    for row in query.fetch_all(executor).await? {
        let index: i64 = row.try_get("idx")?;
        let leaf: Vec<u8> = row.try_get("leaf_hash")?;
        let roots: Option<Vec<u8>> = row.try_get("subtree_roots")?;
        by_row.insert(index as u64, (leaf, roots.unwrap_or_default()));
    }
    let mut nodes = HashMap::with_capacity(ids.len());
    for id in ids {
        let (leaf, roots) = by_row.get(&id.last_leaf()).ok_or_else(|| {
            StoreError::new(StoreErrorKind::Corrupt, format!("audit record {} is missing", id.last_leaf()))
        })?;
        let bytes = match id.level {
            0 => Some(leaf.as_slice()),
            level => {
                let start = (level as usize - 1) * 32;
                roots.get(start..start + 32)
            }
        };
        let hash: Hash = bytes.and_then(|bytes| bytes.try_into().ok()).ok_or_else(|| missing_node(*id))?;
        nodes.insert(*id, hash);
    }
    Ok(nodes)
}

/// The subtree roots to store with the leaf appended at `index`, read from its left neighbours
/// inside the appending transaction (which holds the head row, so they are the latest).
pub(crate) async fn subtree_roots_for_append(
    connection: &mut AnyConnection,
    index: u64,
    leaf: Hash,
) -> Result<Vec<u8>, StoreError> {
    let siblings = subtree::append_siblings(index);
    let nodes = read_nodes(&mut *connection, &siblings).await?;
    let sibling_hashes = siblings
        .iter()
        .map(|id| nodes.get(id).copied().ok_or_else(|| missing_node(*id)))
        .collect::<Result<Vec<Hash>, StoreError>>()?;
    Ok(subtree::completed_roots(leaf, &sibling_hashes).concat())
}

/// Fills in the subtree roots of the records written before they were kept, streaming the
/// leaves once in index order. Runs inside the migration's transaction. A gap or a malformed
/// leaf (a damaged log) stops it with a warning rather than failing the start: the rows from
/// there on stay without roots, proofs that need them fail as corrupt, and `factory audit
/// verify` names the damage.
pub(crate) async fn index_existing_records(connection: &mut AnyConnection) -> Result<(), StoreError> {
    const PAGE: i64 = 10_000;
    let mut frontier = Frontier::new();
    let mut indexed = 0u64;
    'pages: loop {
        let rows = sqlx::query("SELECT idx, leaf_hash FROM audit_records WHERE idx >= $1 ORDER BY idx LIMIT $2")
            .bind(frontier.size() as i64)
            .bind(PAGE)
            .fetch_all(&mut *connection)
            .await?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            let index: i64 = row.try_get("idx")?;
            let leaf: Vec<u8> = row.try_get("leaf_hash")?;
            let leaf: Option<Hash> = leaf.try_into().ok();
            let Some(leaf) = leaf.filter(|_| index as u64 == frontier.size()) else {
                tracing::warn!(
                    record = frontier.size(),
                    "the audit log is damaged here (missing record or malformed leaf hash); its subtree roots \
                     are indexed up to this record only"
                );
                break 'pages;
            };
            let mut roots = Vec::new();
            frontier.push_completing(leaf, |node| roots.extend_from_slice(&node));
            if !roots.is_empty() {
                sqlx::query("UPDATE audit_records SET subtree_roots = $1 WHERE idx = $2")
                    .bind(roots)
                    .bind(index)
                    .execute(&mut *connection)
                    .await?;
                indexed += 1;
            }
        }
    }
    tracing::info!(records = frontier.size(), indexed, "indexed the audit log's subtree roots");
    Ok(())
}

/// The newest checkpoint published in `dir`, if any, as far as this issuer can read it: a
/// file that is not a checkpoint signed by its key (say, from before a key rotation) is
/// reported and left out of the comparison.
async fn newest_published(dir: &Path, issuer: &CheckpointIssuer) -> Result<Option<Checkpoint>, StoreError> {
    let owned_dir = dir.to_path_buf();
    let newest = tokio::task::spawn_blocking(move || -> std::io::Result<Option<(PathBuf, String)>> {
        let entries = match std::fs::read_dir(&owned_dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        let mut newest: Option<(u64, PathBuf)> = None;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if let Some(size) = name.to_str().and_then(PublishedCheckpoint::size_in_file_name) {
                if newest.as_ref().is_none_or(|(newest, _)| size > *newest) {
                    newest = Some((size, entry.path()));
                }
            }
        }
        newest.map(|(_, path)| std::fs::read_to_string(&path).map(|text| (path, text))).transpose()
    })
    .await
    .map_err(|e| publishing_failed(dir, e))?
    .map_err(|e| publishing_failed(dir, e))?;
    let Some((path, text)) = newest else { return Ok(None) };
    let checkpoint = PublishedCheckpoint::note_in_file(&text).and_then(|note| issuer.signer.verifier().verify(&note));
    match checkpoint {
        Ok(checkpoint) => Ok(Some(checkpoint)),
        Err(error) => {
            tracing::warn!(file = %path.display(), %error, "the newest published checkpoint does not verify with the audit key; not comparing the log with it");
            Ok(None)
        }
    }
}

/// Writes `checkpoint` to its file in `dir`, durably and never over another file: a witness
/// copying the directory sees whole files only, and each file, once there, stays as it is.
/// Publishing the same checkpoint again (a retry after a crash) finds the same note and
/// succeeds; a different note for the same size is refused, as it means the log was rewritten.
async fn publish(dir: &Path, checkpoint: &Checkpoint, note: &str) -> Result<(), StoreError> {
    let published = PublishedCheckpoint::new(checkpoint, note, &factory_core::time::now_rfc3339());
    let owned_dir = dir.to_path_buf();
    let outcome = tokio::task::spawn_blocking(move || write_published(&owned_dir, &published))
        .await
        .map_err(|e| publishing_failed(dir, e))?;
    match outcome {
        Ok(true) => Ok(()),
        Ok(false) => Err(StoreError::new(
            StoreErrorKind::Corrupt,
            format!(
                "{} already holds another checkpoint for size {}: the audit log was rewritten since that was published",
                dir.join(PublishedCheckpoint::file_name(checkpoint.size)).display(),
                checkpoint.size
            ),
        )),
        Err(error) => Err(publishing_failed(dir, error)),
    }
}

/// The blocking part of [`publish`]: `Ok(false)` when the file exists with another note.
fn write_published(dir: &Path, published: &PublishedCheckpoint) -> std::io::Result<bool> {
    let path = dir.join(PublishedCheckpoint::file_name(published.size));
    let same_note = |path: &Path| -> std::io::Result<bool> {
        let text = std::fs::read_to_string(path)?;
        Ok(PublishedCheckpoint::note_in_file(&text).is_ok_and(|note| note == published.note))
    };
    if path.exists() {
        return same_note(&path);
    }
    std::fs::create_dir_all(dir)?;
    // Written whole and synced under a temporary name, then linked to its own: a link never
    // replaces an existing file (unlike a rename), and a crash leaves at most a stray
    // temporary file, never a partial checkpoint.
    let staging = dir.join(format!(
        ".{}.{}.tmp",
        PublishedCheckpoint::file_name(published.size),
        factory_core::secrets::encode_hex(&factory_core::secrets::random_bytes()[..8])
    ));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&staging)?;
        file.write_all(published.to_json().as_bytes())?;
        file.sync_all()?;
        match std::fs::hard_link(&staging, &path) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => same_note(&path),
            Err(error) => Err(error),
        }
    })();
    let _ = std::fs::remove_file(&staging);
    // The new name is durable only once the directory is.
    std::fs::File::open(dir)?.sync_all()?;
    written
}

fn publishing_failed(dir: &Path, error: impl std::fmt::Display) -> StoreError {
    StoreError::new(
        StoreErrorKind::Database,
        format!("cannot publish an audit checkpoint to {}: {error}", dir.display()),
    )
}
