//! The Batch API's records: files, batches and the parts a running batch has finished. Files
//! and batches are written only through a `Change`; parts are a running batch's progress.

use factory_core::time::now_millis;
use factory_core::TenantName;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{corrupt, opt_string, reference_artifact, release_artifacts, Change, Store, StoreError, StoreErrorKind};

/// A file a tenant uploaded (`purpose` `batch`) or a batch wrote (`batch_output`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredFile {
    pub id: String,
    pub tenant: TenantName,
    pub purpose: String,
    pub filename: String,
    pub bytes: i64,
    /// The content's SHA-256 in the object store.
    pub digest: String,
    pub created_at: i64,
    pub created_by: String,
}

const FILE_COLUMNS: &str = "id, tenant, purpose, filename, bytes, digest, created_at, created_by";

fn file_from_row(row: &AnyRow) -> Result<StoredFile, StoreError> {
    let tenant: String = row.try_get("tenant")?;
    Ok(StoredFile {
        id: row.try_get("id")?,
        tenant: TenantName::new(&tenant).map_err(|e| corrupt("file tenant", e))?,
        purpose: row.try_get("purpose")?,
        filename: row.try_get("filename")?,
        bytes: row.try_get("bytes")?,
        digest: row.try_get("digest")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
    })
}

/// What a batch was asked to do, as its creator gave it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRequest {
    pub id: String,
    pub tenant: TenantName,
    pub endpoint: String,
    pub input_file_id: Option<String>,
    /// The input file's content, which the batch keeps (referenced) until it finishes, so a
    /// file deleted meanwhile cannot take its requests away.
    pub input_digest: Option<String>,
    /// For a batch over a dataset version instead of a file: what to read and how (JSON owned
    /// by the server).
    pub source: Option<serde_json::Value>,
    pub completion_window: String,
    pub metadata: serde_json::Value,
    pub expires_at: i64,
}

/// A batch and where it stands. The timestamps of the states it has passed are set; the
/// others are `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub request: BatchRequest,
    pub status: String,
    /// Why the batch failed as a whole (its input did not validate), as OpenAI's error list.
    pub errors: Option<serde_json::Value>,
    /// The deployment its requests name (known once its input validated).
    pub deployment: Option<String>,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    /// The dataset version a dataset batch wrote.
    pub output_dataset: Option<serde_json::Value>,
    pub total: i64,
    pub completed: i64,
    pub failed: i64,
    /// The key that created it: its requests run with that key's rights, checked again when
    /// the batch runs.
    pub created_by: String,
    pub created_at: i64,
    pub in_progress_at: Option<i64>,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub expired_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
}

/// The states a batch is in until it finishes.
pub const UNFINISHED: [&str; 4] = ["validating", "in_progress", "finalizing", "cancelling"];

impl Batch {
    /// Whether the batch has reached a state it never leaves.
    pub fn finished(&self) -> bool {
        !UNFINISHED.contains(&self.status.as_str())
    }
}

const BATCH_COLUMNS: &str =
    "id, tenant, endpoint, input_file_id, input_digest, source, completion_window, status, metadata, \
     errors, deployment, output_file_id, error_file_id, output_dataset, total, completed, failed, created_by, \
     created_at, expires_at, in_progress_at, finalizing_at, completed_at, failed_at, expired_at, cancelling_at, \
     cancelled_at";

/// The states a batch passes, each with the column that records when.
const STATUS_COLUMNS: &[(&str, &str)] = &[
    ("in_progress", "in_progress_at"),
    ("finalizing", "finalizing_at"),
    ("completed", "completed_at"),
    ("failed", "failed_at"),
    ("expired", "expired_at"),
    ("cancelling", "cancelling_at"),
    ("cancelled", "cancelled_at"),
];

/// Newest first, a page of `$2` rows, after the row created at `$3` with id `$4` when there is
/// a cursor.
fn page_clause(after: bool) -> String {
    let after = if after { " AND (created_at < $3 OR (created_at = $3 AND id < $4))" } else { "" };
    format!("{after} ORDER BY created_at DESC, id DESC LIMIT $2")
}

fn json_opt(row: &AnyRow, column: &str) -> Result<Option<serde_json::Value>, StoreError> {
    opt_string(row, column)?.map(|text| serde_json::from_str(&text).map_err(|e| corrupt(column, e))).transpose()
}

fn batch_from_row(row: &AnyRow) -> Result<Batch, StoreError> {
    let tenant: String = row.try_get("tenant")?;
    let metadata: String = row.try_get("metadata")?;
    let request = BatchRequest {
        id: row.try_get("id")?,
        tenant: TenantName::new(&tenant).map_err(|e| corrupt("batch tenant", e))?,
        endpoint: row.try_get("endpoint")?,
        input_file_id: opt_string(row, "input_file_id")?,
        input_digest: opt_string(row, "input_digest")?,
        source: json_opt(row, "source")?,
        completion_window: row.try_get("completion_window")?,
        metadata: serde_json::from_str(&metadata).map_err(|e| corrupt("batch metadata", e))?,
        expires_at: row.try_get("expires_at")?,
    };
    Ok(Batch {
        request,
        status: row.try_get("status")?,
        errors: json_opt(row, "errors")?,
        deployment: opt_string(row, "deployment")?,
        output_file_id: opt_string(row, "output_file_id")?,
        error_file_id: opt_string(row, "error_file_id")?,
        output_dataset: json_opt(row, "output_dataset")?,
        total: row.try_get("total")?,
        completed: row.try_get("completed")?,
        failed: row.try_get("failed")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        in_progress_at: row.try_get("in_progress_at")?,
        finalizing_at: row.try_get("finalizing_at")?,
        completed_at: row.try_get("completed_at")?,
        failed_at: row.try_get("failed_at")?,
        expired_at: row.try_get("expired_at")?,
        cancelling_at: row.try_get("cancelling_at")?,
        cancelled_at: row.try_get("cancelled_at")?,
    })
}

/// A step of a batch's life: its new status, and what it learned on the way (unset fields
/// keep their values).
#[derive(Debug, Clone, Default)]
pub struct BatchStep {
    pub status: String,
    pub deployment: Option<String>,
    pub total: Option<i64>,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub errors: Option<serde_json::Value>,
    pub output_dataset: Option<serde_json::Value>,
}

/// A finished stretch of a batch's requests: lines `first_line..first_line + lines` of its
/// input, their answers (output) and failures (errors) as JSONL objects.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchPart {
    pub part: i64,
    pub first_line: i64,
    pub lines: i64,
    pub output_digest: String,
    pub error_digest: String,
    pub completed: i64,
    pub failed: i64,
}

impl Change {
    /// Records a stored file; its object is referenced until the file is deleted.
    pub async fn add_file(&mut self, file: &StoredFile) -> Result<(), StoreError> {
        sqlx::query(&format!("INSERT INTO files ({FILE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"))
            .bind(&file.id)
            .bind(file.tenant.as_str())
            .bind(&file.purpose)
            .bind(&file.filename)
            .bind(file.bytes)
            .bind(&file.digest)
            .bind(file.created_at)
            .bind(&file.created_by)
            .execute(self.connection())
            .await?;
        reference_artifact(self.connection(), &file.digest, &file.tenant, &file.id).await
    }

    /// Deletes a file's record and its reference (the sweep deletes the object once nothing
    /// else references it). False when there was no such file.
    pub async fn delete_file(&mut self, tenant: &TenantName, id: &str) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM files WHERE tenant = $1 AND id = $2")
            .bind(tenant.as_str())
            .bind(id)
            .execute(self.connection())
            .await?
            .rows_affected();
        release_artifacts(self.connection(), tenant, id).await?;
        Ok(deleted > 0)
    }

    /// Inserts a batch, `validating`, as the change's principal; its input file's content is
    /// referenced by the batch until it finishes.
    pub async fn add_batch(&mut self, new: &BatchRequest) -> Result<Batch, StoreError> {
        let created_by = self.request().principal.id.clone();
        let row = sqlx::query(&format!(
            "INSERT INTO batches (id, tenant, endpoint, input_file_id, input_digest, source, completion_window, status, \
             metadata, created_by, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'validating', $8, $9, $10, $11) RETURNING {BATCH_COLUMNS}"
        ))
        .bind(&new.id)
        .bind(new.tenant.as_str())
        .bind(&new.endpoint)
        .bind(&new.input_file_id)
        .bind(&new.input_digest)
        .bind(new.source.as_ref().map(|source| source.to_string()))
        .bind(&new.completion_window)
        .bind(new.metadata.to_string())
        .bind(created_by)
        .bind(now_millis())
        .bind(new.expires_at)
        .fetch_one(self.connection())
        .await?;
        if let Some(digest) = &new.input_digest {
            reference_artifact(self.connection(), digest, &new.tenant, &new.id).await?;
        }
        batch_from_row(&row)
    }

    /// Moves `tenant`'s batch `id` to `step.status` if it is now in one of `from`; `None` when
    /// it is not (another change moved it first). A batch that finishes lets its objects go.
    pub async fn step_batch(
        &mut self,
        tenant: &TenantName,
        id: &str,
        from: &[&str],
        step: &BatchStep,
    ) -> Result<Option<Batch>, StoreError> {
        let Some((_, stamp)) = STATUS_COLUMNS.iter().find(|(status, _)| *status == step.status) else {
            return Err(StoreError::new(StoreErrorKind::Invalid, format!("a batch cannot become {:?}", step.status)));
        };
        let placeholders: Vec<String> = (0..from.len()).map(|i| format!("${}", i + 11)).collect();
        let sql = format!(
            "UPDATE batches SET status = $1, {stamp} = $2, deployment = COALESCE($3, deployment), total = COALESCE($4, total), \
             output_file_id = COALESCE($5, output_file_id), error_file_id = COALESCE($6, error_file_id), \
             errors = COALESCE($7, errors), output_dataset = COALESCE($8, output_dataset) \
             WHERE id = $9 AND tenant = $10 AND status IN ({}) RETURNING {BATCH_COLUMNS}",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql)
            .bind(&step.status)
            .bind(now_millis())
            .bind(&step.deployment)
            .bind(step.total)
            .bind(&step.output_file_id)
            .bind(&step.error_file_id)
            .bind(step.errors.as_ref().map(|errors| errors.to_string()))
            .bind(step.output_dataset.as_ref().map(|output| output.to_string()))
            .bind(id)
            .bind(tenant.as_str());
        for status in from {
            query = query.bind(*status);
        }
        let moved = query.fetch_optional(self.connection()).await?.as_ref().map(batch_from_row).transpose()?;
        // A finished batch keeps nothing: its input is read, its parts' answers are in its
        // files or its dataset version.
        if moved.as_ref().is_some_and(Batch::finished) {
            release_artifacts(self.connection(), tenant, id).await?;
        }
        Ok(moved)
    }
}

impl Store {
    pub async fn file(&self, tenant: &TenantName, id: &str) -> Result<Option<StoredFile>, StoreError> {
        let row = sqlx::query(&format!("SELECT {FILE_COLUMNS} FROM files WHERE tenant = $1 AND id = $2"))
            .bind(tenant.as_str())
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(file_from_row).transpose()
    }

    /// A tenant's files, newest first, after the file `after` (a cursor), at most `limit`.
    pub async fn files(
        &self,
        tenant: &TenantName,
        purpose: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<StoredFile>, StoreError> {
        let cursor = self.cursor("files", tenant, after).await?;
        // Parameters: $1 tenant, $2 limit, then the cursor's two, then the purpose.
        let purpose_at = if cursor.is_some() { 5 } else { 3 };
        let purpose_clause = if purpose.is_some() { format!(" AND purpose = ${purpose_at}") } else { String::new() };
        let sql = format!(
            "SELECT {FILE_COLUMNS} FROM files WHERE tenant = $1{purpose_clause}{}",
            page_clause(cursor.is_some())
        );
        let mut query = sqlx::query(&sql).bind(tenant.as_str()).bind(limit);
        if let Some((at, id)) = cursor {
            query = query.bind(at).bind(id);
        }
        if let Some(purpose) = purpose {
            query = query.bind(purpose);
        }
        let rows = query.fetch_all(self.pool()).await?;
        rows.iter().map(file_from_row).collect()
    }

    /// Where a page that starts after `after` (an id of `table`) starts: its creation time
    /// and id; `None` for the first page.
    async fn cursor(
        &self,
        table: &str,
        tenant: &TenantName,
        after: Option<&str>,
    ) -> Result<Option<(i64, String)>, StoreError> {
        let Some(after) = after else { return Ok(None) };
        let at: Option<i64> =
            sqlx::query_scalar(&format!("SELECT created_at FROM {table} WHERE tenant = $1 AND id = $2"))
                .bind(tenant.as_str())
                .bind(after)
                .fetch_optional(self.pool())
                .await?;
        // A cursor that names nothing of this tenant's starts past the end.
        Ok(Some((at.unwrap_or(i64::MIN), after.to_string())))
    }

    pub async fn batch(&self, tenant: &TenantName, id: &str) -> Result<Option<Batch>, StoreError> {
        let row = sqlx::query(&format!("SELECT {BATCH_COLUMNS} FROM batches WHERE tenant = $1 AND id = $2"))
            .bind(tenant.as_str())
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(batch_from_row).transpose()
    }

    /// A tenant's batches, newest first, after the batch `after` (a cursor), at most `limit`.
    pub async fn batches(
        &self,
        tenant: &TenantName,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Batch>, StoreError> {
        let cursor = self.cursor("batches", tenant, after).await?;
        let sql = format!("SELECT {BATCH_COLUMNS} FROM batches WHERE tenant = $1{}", page_clause(cursor.is_some()));
        let mut query = sqlx::query(&sql).bind(tenant.as_str()).bind(limit);
        if let Some((at, id)) = cursor {
            query = query.bind(at).bind(id);
        }
        let rows = query.fetch_all(self.pool()).await?;
        rows.iter().map(batch_from_row).collect()
    }

    /// Records a finished part of a running batch and adds its counts to the batch's. Its
    /// objects are referenced by the batch until it is finalized.
    pub async fn add_batch_part(&self, tenant: &TenantName, batch: &str, part: &BatchPart) -> Result<(), StoreError> {
        let mut write = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO batch_parts (batch_id, part, first_line, lines, output_digest, error_digest, completed, \
             failed, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(batch)
        .bind(part.part)
        .bind(part.first_line)
        .bind(part.lines)
        .bind(&part.output_digest)
        .bind(&part.error_digest)
        .bind(part.completed)
        .bind(part.failed)
        .bind(now_millis())
        .execute(&mut *write.transaction)
        .await?;
        sqlx::query("UPDATE batches SET completed = completed + $1, failed = failed + $2 WHERE id = $3")
            .bind(part.completed)
            .bind(part.failed)
            .bind(batch)
            .execute(&mut *write.transaction)
            .await?;
        for digest in [&part.output_digest, &part.error_digest] {
            reference_artifact(&mut write.transaction, digest, tenant, batch).await?;
        }
        write.commit().await
    }

    /// The parts a batch has finished, in order.
    pub async fn batch_parts(&self, batch: &str) -> Result<Vec<BatchPart>, StoreError> {
        let rows = sqlx::query(
            "SELECT part, first_line, lines, output_digest, error_digest, completed, failed FROM batch_parts \
             WHERE batch_id = $1 ORDER BY part",
        )
        .bind(batch)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(BatchPart {
                    part: row.try_get("part")?,
                    first_line: row.try_get("first_line")?,
                    lines: row.try_get("lines")?,
                    output_digest: row.try_get("output_digest")?,
                    error_digest: row.try_get("error_digest")?,
                    completed: row.try_get("completed")?,
                    failed: row.try_get("failed")?,
                })
            })
            .collect()
    }
}
