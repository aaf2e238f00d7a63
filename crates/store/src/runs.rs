//! What a training run produces while it runs. The run itself is a job (`jobs.rs`): its
//! creation, attempts and outcome are governed and audited there. Metrics and checkpoint
//! records are bookkeeping written by the worker that holds the run's lease, like heartbeats:
//! facts about an audited run, each checkpoint's objects referenced so no sweep collects them.

use factory_core::time::now_millis;
use factory_core::TenantName;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::{reference_artifact, Store, StoreError};

/// One row of a run's metrics: `kind` is `train` (per step) or `eval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMetric {
    pub kind: String,
    pub step: i64,
    pub metrics: serde_json::Value,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunCheckpoint {
    pub step: i64,
    pub weights_digest: String,
    pub optimizer_digest: String,
    pub created_at: i64,
}

impl Store {
    /// Records metrics; a step written again (after a resume) keeps its first value, which
    /// with the same seed is the same.
    pub async fn record_run_metrics(
        &self,
        run_id: &str,
        kind: &str,
        rows: &[(i64, serde_json::Value)],
    ) -> Result<(), StoreError> {
        let mut write = self.begin_write().await?;
        for (step, metrics) in rows {
            sqlx::query(
                "INSERT INTO run_metrics (run_id, kind, step, metrics, created_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (run_id, kind, step) DO NOTHING",
            )
            .bind(run_id)
            .bind(kind)
            .bind(*step)
            .bind(metrics.to_string())
            .bind(now_millis())
            .execute(&mut *write.transaction)
            .await?;
        }
        write.commit().await
    }

    /// Metrics of a run after `after_step` (exclusive), train and eval interleaved by step.
    pub async fn run_metrics(&self, run_id: &str, after_step: i64, limit: i64) -> Result<Vec<RunMetric>, StoreError> {
        let rows = sqlx::query(
            "SELECT kind, step, metrics, created_at FROM run_metrics WHERE run_id = $1 AND step > $2 \
             ORDER BY step, kind LIMIT $3",
        )
        .bind(run_id)
        .bind(after_step)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(metric_from_row).collect()
    }

    /// One metrics row, if it was recorded.
    pub async fn run_metric(&self, run_id: &str, kind: &str, step: i64) -> Result<Option<RunMetric>, StoreError> {
        let row = sqlx::query(
            "SELECT kind, step, metrics, created_at FROM run_metrics WHERE run_id = $1 AND kind = $2 AND step = $3",
        )
        .bind(run_id)
        .bind(kind)
        .bind(step)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(metric_from_row).transpose()
    }

    /// Records a checkpoint whose objects are stored, and references them, in one transaction.
    pub async fn record_run_checkpoint(
        &self,
        tenant: &TenantName,
        run_id: &str,
        checkpoint: &RunCheckpoint,
    ) -> Result<(), StoreError> {
        let mut write = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO run_checkpoints (run_id, step, weights_digest, optimizer_digest, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (run_id, step) DO NOTHING",
        )
        .bind(run_id)
        .bind(checkpoint.step)
        .bind(&checkpoint.weights_digest)
        .bind(&checkpoint.optimizer_digest)
        .bind(checkpoint.created_at)
        .execute(&mut *write.transaction)
        .await?;
        for digest in [&checkpoint.weights_digest, &checkpoint.optimizer_digest] {
            reference_artifact(&mut write.transaction, digest, tenant, run_id).await?;
        }
        write.commit().await
    }

    pub async fn latest_run_checkpoint(&self, run_id: &str) -> Result<Option<RunCheckpoint>, StoreError> {
        let row = sqlx::query(
            "SELECT step, weights_digest, optimizer_digest, created_at FROM run_checkpoints \
             WHERE run_id = $1 ORDER BY step DESC LIMIT 1",
        )
        .bind(run_id)
        .fetch_optional(self.pool())
        .await?;
        row.map(|row| {
            Ok(RunCheckpoint {
                step: row.try_get("step")?,
                weights_digest: row.try_get("weights_digest")?,
                optimizer_digest: row.try_get("optimizer_digest")?,
                created_at: row.try_get("created_at")?,
            })
        })
        .transpose()
    }

    /// References objects a run produced (weights, tokenizer, config) so they outlive sweeps.
    pub async fn reference_artifacts(
        &self,
        tenant: &TenantName,
        owner: &str,
        digests: &[String],
    ) -> Result<(), StoreError> {
        let mut write = self.begin_write().await?;
        for digest in digests {
            reference_artifact(&mut write.transaction, digest, tenant, owner).await?;
        }
        write.commit().await
    }
}

fn metric_from_row(row: &sqlx::any::AnyRow) -> Result<RunMetric, StoreError> {
    let metrics: String = row.try_get("metrics")?;
    Ok(RunMetric {
        kind: row.try_get("kind")?,
        step: row.try_get("step")?,
        metrics: serde_json::from_str(&metrics).unwrap_or_default(),
        created_at: row.try_get("created_at")?,
    })
}
