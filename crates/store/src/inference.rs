//! The inference log. Rows are facts about requests that were authorized when they arrived;
//! they are bookkeeping written in batches by the gateway's log writer (not governed changes),
//! idempotent by id so a retried batch duplicates nothing.

use factory_core::TenantName;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{opt_string, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferenceRecord {
    /// The response id clients see (`chatcmpl-...`), which feedback refers to.
    pub id: String,
    pub tenant: String,
    pub deployment: String,
    /// `name@version` that answered.
    pub variant: String,
    /// `completion`, `chat` or `embedding`.
    pub kind: String,
    pub request_id: String,
    pub episode_id: Option<String>,
    /// `ok`, `overloaded`, `failed` or `cancelled`.
    pub status: String,
    pub finish_reason: Option<String>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost: f64,
    pub queue_ms: f64,
    pub first_token_ms: f64,
    pub decode_ms: f64,
    pub total_ms: f64,
    pub created_at: i64,
    /// The prompt as the model saw it, when the deployment's logging policy sampled the request.
    pub prompt_text: Option<String>,
    pub completion_text: Option<String>,
    /// What the request asked of the answer's shape (`response_format`, `tools`, `tool_choice`)
    /// and the tool calls it got, as JSON, under the same policy as the texts.
    pub structure_json: Option<String>,
    /// Prompt tokens whose keys and values came from the prefix cache.
    #[serde(default)]
    pub cached_tokens: i64,
}

const COLUMNS: &str = "id, tenant, deployment, variant, kind, request_id, episode_id, status, finish_reason, \
     prompt_tokens, completion_tokens, cost, queue_ms, first_token_ms, decode_ms, total_ms, created_at, \
     prompt_text, completion_text, structure_json, cached_tokens";

fn from_row(row: &AnyRow) -> Result<InferenceRecord, StoreError> {
    Ok(InferenceRecord {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        deployment: row.try_get("deployment")?,
        variant: row.try_get("variant")?,
        kind: row.try_get("kind")?,
        request_id: row.try_get("request_id")?,
        episode_id: opt_string(row, "episode_id")?,
        status: row.try_get("status")?,
        finish_reason: opt_string(row, "finish_reason")?,
        prompt_tokens: row.try_get("prompt_tokens")?,
        completion_tokens: row.try_get("completion_tokens")?,
        cost: row.try_get("cost")?,
        queue_ms: row.try_get("queue_ms")?,
        first_token_ms: row.try_get("first_token_ms")?,
        decode_ms: row.try_get("decode_ms")?,
        total_ms: row.try_get("total_ms")?,
        created_at: row.try_get("created_at")?,
        prompt_text: opt_string(row, "prompt_text")?,
        completion_text: opt_string(row, "completion_text")?,
        structure_json: opt_string(row, "structure_json")?,
        cached_tokens: row.try_get("cached_tokens")?,
    })
}

impl Store {
    /// Writes a batch in one transaction.
    pub async fn record_inferences(&self, records: &[InferenceRecord]) -> Result<(), StoreError> {
        let mut write = self.begin_write().await?;
        for r in records {
            sqlx::query(&format!(
                "INSERT INTO inference_log ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21) \
                 ON CONFLICT (id) DO NOTHING"
            ))
            .bind(&r.id)
            .bind(&r.tenant)
            .bind(&r.deployment)
            .bind(&r.variant)
            .bind(&r.kind)
            .bind(&r.request_id)
            .bind(r.episode_id.as_deref())
            .bind(&r.status)
            .bind(r.finish_reason.as_deref())
            .bind(r.prompt_tokens)
            .bind(r.completion_tokens)
            .bind(r.cost)
            .bind(r.queue_ms)
            .bind(r.first_token_ms)
            .bind(r.decode_ms)
            .bind(r.total_ms)
            .bind(r.created_at)
            .bind(r.prompt_text.as_deref())
            .bind(r.completion_text.as_deref())
            .bind(r.structure_json.as_deref())
            .bind(r.cached_tokens)
            .execute(&mut *write.transaction)
            .await?;
        }
        write.commit().await
    }

    /// Marks answers an output guardrail stopped after their records were written.
    pub async fn mark_inferences_filtered(&self, ids: &[String]) -> Result<(), StoreError> {
        let mut write = self.begin_write().await?;
        for id in ids {
            sqlx::query("UPDATE inference_log SET finish_reason = 'content_filter' WHERE id = $1")
                .bind(id)
                .execute(&mut *write.transaction)
                .await?;
        }
        write.commit().await
    }

    pub async fn inference(&self, id: &str) -> Result<Option<InferenceRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM inference_log WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// A deployment's requests since `after` (exclusive, milliseconds), oldest first.
    pub async fn inferences(
        &self,
        tenant: &TenantName,
        deployment: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<InferenceRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM inference_log WHERE tenant = $1 AND deployment = $2 AND created_at > $3 \
             ORDER BY created_at, id LIMIT $4"
        ))
        .bind(tenant.as_str())
        .bind(deployment)
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// The newest `limit` inferences of `deployment` made at or after `since`, newest first.
    pub async fn latest_inferences(
        &self,
        tenant: &TenantName,
        deployment: &str,
        since: i64,
        limit: i64,
    ) -> Result<Vec<InferenceRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM inference_log WHERE tenant = $1 AND deployment = $2 AND created_at >= $3 \
             ORDER BY created_at DESC, id DESC LIMIT $4"
        ))
        .bind(tenant.as_str())
        .bind(deployment)
        .bind(since)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(from_row).collect()
    }
}

/// One piece of feedback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    pub id: String,
    pub tenant: String,
    pub deployment: String,
    /// The variant that answered, when the feedback names an answer.
    pub variant: Option<String>,
    pub inference_id: Option<String>,
    pub episode_id: Option<String>,
    pub metric: String,
    pub value: f64,
    pub created_at: i64,
    pub created_by: String,
}

impl crate::Change {
    pub async fn add_feedback(&mut self, feedback: &Feedback) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO feedback (id, tenant, deployment, variant, inference_id, episode_id, metric, value, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&feedback.id)
        .bind(&feedback.tenant)
        .bind(&feedback.deployment)
        .bind(feedback.variant.as_deref())
        .bind(feedback.inference_id.as_deref())
        .bind(feedback.episode_id.as_deref())
        .bind(&feedback.metric)
        .bind(feedback.value)
        .bind(feedback.created_at)
        .bind(&feedback.created_by)
        .execute(self.connection())
        .await?;
        Ok(())
    }
}

impl Store {
    /// The most recent inference of an episode in a tenant, if any.
    pub async fn episode_inference(
        &self,
        tenant: &TenantName,
        episode: &str,
    ) -> Result<Option<InferenceRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM inference_log WHERE tenant = $1 AND episode_id = $2 ORDER BY created_at DESC, id LIMIT 1"
        ))
        .bind(tenant.as_str())
        .bind(episode)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    pub async fn feedback(
        &self,
        tenant: &TenantName,
        deployment: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Feedback>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, tenant, deployment, variant, inference_id, episode_id, metric, value, created_at, created_by \
             FROM feedback WHERE tenant = $1 AND deployment = $2 AND created_at > $3 ORDER BY created_at, id LIMIT $4",
        )
        .bind(tenant.as_str())
        .bind(deployment)
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Feedback {
                    id: row.try_get("id")?,
                    tenant: row.try_get("tenant")?,
                    deployment: row.try_get("deployment")?,
                    variant: opt_string(row, "variant")?,
                    inference_id: opt_string(row, "inference_id")?,
                    episode_id: opt_string(row, "episode_id")?,
                    metric: row.try_get("metric")?,
                    value: row.try_get("value")?,
                    created_at: row.try_get("created_at")?,
                    created_by: row.try_get("created_by")?,
                })
            })
            .collect()
    }
}
