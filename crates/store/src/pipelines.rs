//! Closing the loop: drift alarms, pipelines, their runs and the triggers they have seen.
//! Written only through a `Change`.

use factory_core::time::now_millis;
use factory_core::{Principal, TenantName};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{corrupt, opt_string, Change, Store, StoreError, StoreErrorKind};

fn json_column<T: serde::de::DeserializeOwned>(row: &AnyRow, column: &str) -> Result<T, StoreError> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|e| corrupt(column, e))
}

/// A monitor that started firing on a deployment's traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftAlarm {
    pub id: String,
    pub tenant: String,
    pub deployment: String,
    pub monitor: String,
    pub statistic: f64,
    pub threshold: f64,
    /// Requests (or feedback values) the monitor had seen when it fired.
    pub observed: i64,
    pub details: serde_json::Value,
    pub created_at: i64,
}

const ALARM_COLUMNS: &str = "id, tenant, deployment, monitor, statistic, threshold, observed, details, created_at";

fn alarm_from_row(row: &AnyRow) -> Result<DriftAlarm, StoreError> {
    Ok(DriftAlarm {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        deployment: row.try_get("deployment")?,
        monitor: row.try_get("monitor")?,
        statistic: row.try_get("statistic")?,
        threshold: row.try_get("threshold")?,
        observed: row.try_get("observed")?,
        details: json_column(row, "details")?,
        created_at: row.try_get("created_at")?,
    })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    pub tenant: TenantName,
    pub name: String,
    /// The TOML as its author wrote it.
    pub source: String,
    /// The parsed declaration, owned by the server.
    pub spec: serde_json::Value,
    /// Whose rights the pipeline's steps act with; each step is authorized again.
    pub author: Principal,
    pub revision: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const PIPELINE_COLUMNS: &str = "tenant, name, source, spec, author, revision, created_at, updated_at";

fn pipeline_from_row(row: &AnyRow) -> Result<Pipeline, StoreError> {
    let tenant: String = row.try_get("tenant")?;
    Ok(Pipeline {
        tenant: TenantName::new(tenant).map_err(|e| corrupt("pipeline tenant", e))?,
        name: row.try_get("name")?,
        source: row.try_get("source")?,
        spec: json_column(row, "spec")?,
        author: json_column(row, "author")?,
        revision: row.try_get("revision")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineRun {
    pub id: String,
    pub tenant: String,
    pub pipeline: String,
    /// The pipeline's revision the run follows.
    pub revision: i64,
    /// What started it: `{"kind": "event"|"cron"|"manual", ...}`.
    pub trigger: serde_json::Value,
    /// `running`, `succeeded`, `failed`, `rolled_back` or `cancelled`.
    pub status: String,
    /// The step running now (or the last one run).
    pub step: i64,
    /// One result per finished step, in order.
    pub steps: Vec<serde_json::Value>,
    /// Triggers that arrived while the run was active and were folded into it.
    pub coalesced: Vec<serde_json::Value>,
    pub reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

const RUN_COLUMNS: &str =
    "id, tenant, pipeline, revision, trigger_info, status, step, steps, coalesced, reason, created_at, updated_at, finished_at";

fn run_from_row(row: &AnyRow) -> Result<PipelineRun, StoreError> {
    Ok(PipelineRun {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        pipeline: row.try_get("pipeline")?,
        revision: row.try_get("revision")?,
        trigger: json_column(row, "trigger_info")?,
        status: row.try_get("status")?,
        step: row.try_get("step")?,
        steps: json_column(row, "steps")?,
        coalesced: json_column(row, "coalesced")?,
        reason: opt_string(row, "reason")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

/// What a trigger did.
#[derive(Debug, Clone, PartialEq)]
pub enum Triggered {
    Started(Box<PipelineRun>),
    /// A run was active; the trigger was folded into it.
    Coalesced(String),
    /// The trigger had been seen before (a redelivered event); nothing happened.
    Duplicate(String),
}

impl Change {
    pub async fn add_drift_alarm(&mut self, alarm: &DriftAlarm) -> Result<(), StoreError> {
        sqlx::query(&format!("INSERT INTO drift_alarms ({ALARM_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"))
            .bind(&alarm.id)
            .bind(&alarm.tenant)
            .bind(&alarm.deployment)
            .bind(&alarm.monitor)
            .bind(alarm.statistic)
            .bind(alarm.threshold)
            .bind(alarm.observed)
            .bind(alarm.details.to_string())
            .bind(alarm.created_at)
            .execute(self.connection())
            .await?;
        Ok(())
    }

    /// Creates the pipeline or replaces its declaration (a new revision).
    pub async fn put_pipeline(
        &mut self,
        tenant: &TenantName,
        name: &str,
        source: &str,
        spec: &serde_json::Value,
    ) -> Result<Pipeline, StoreError> {
        let now = now_millis();
        let author = serde_json::to_string(&self.request().principal).map_err(|e| corrupt("author", e))?;
        let row = sqlx::query(&format!(
            "INSERT INTO pipelines ({PIPELINE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, 1, $6, $6) \
             ON CONFLICT (tenant, name) DO UPDATE SET source = excluded.source, spec = excluded.spec, \
             author = excluded.author, revision = pipelines.revision + 1, updated_at = excluded.updated_at \
             RETURNING {PIPELINE_COLUMNS}"
        ))
        .bind(tenant.as_str())
        .bind(name)
        .bind(source)
        .bind(spec.to_string())
        .bind(author)
        .bind(now)
        .fetch_one(self.connection())
        .await?;
        pipeline_from_row(&row)
    }

    /// Starts a run for `trigger_key` unless the pipeline has seen that trigger (duplicate) or
    /// has a run active (the trigger is folded into it). The caller enqueues the first step
    /// when a run started.
    pub async fn trigger_pipeline(
        &mut self,
        pipeline: &Pipeline,
        run_id: &str,
        trigger_key: &str,
        trigger: &serde_json::Value,
    ) -> Result<Triggered, StoreError> {
        let tenant = pipeline.tenant.as_str();
        let seen: Option<String> = sqlx::query_scalar(
            "SELECT run_id FROM pipeline_triggers WHERE tenant = $1 AND pipeline = $2 AND trigger_key = $3",
        )
        .bind(tenant)
        .bind(&pipeline.name)
        .bind(trigger_key)
        .fetch_optional(self.connection())
        .await?;
        if let Some(run) = seen {
            return Ok(Triggered::Duplicate(run));
        }
        let now = now_millis();
        let active = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM pipeline_runs WHERE tenant = $1 AND pipeline = $2 AND status = 'running'"
        ))
        .bind(tenant)
        .bind(&pipeline.name)
        .fetch_optional(self.connection())
        .await?;
        let outcome = match active.as_ref().map(run_from_row).transpose()? {
            Some(mut run) => {
                run.coalesced.push(serde_json::json!({ "key": trigger_key, "trigger": trigger, "at": now }));
                sqlx::query("UPDATE pipeline_runs SET coalesced = $1, updated_at = $2 WHERE id = $3")
                    .bind(serde_json::Value::from(run.coalesced).to_string())
                    .bind(now)
                    .bind(&run.id)
                    .execute(self.connection())
                    .await?;
                Triggered::Coalesced(run.id)
            }
            None => {
                let row = sqlx::query(&format!(
                    "INSERT INTO pipeline_runs ({RUN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, 'running', 0, '[]', '[]', NULL, $6, $6, NULL) \
                     RETURNING {RUN_COLUMNS}"
                ))
                .bind(run_id)
                .bind(tenant)
                .bind(&pipeline.name)
                .bind(pipeline.revision)
                .bind(trigger.to_string())
                .bind(now)
                .fetch_one(self.connection())
                .await?;
                Triggered::Started(Box::new(run_from_row(&row)?))
            }
        };
        let run = match &outcome {
            Triggered::Started(run) => run.id.clone(),
            Triggered::Coalesced(id) | Triggered::Duplicate(id) => id.clone(),
        };
        sqlx::query(
            "INSERT INTO pipeline_triggers (tenant, pipeline, trigger_key, run_id, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(tenant)
        .bind(&pipeline.name)
        .bind(trigger_key)
        .bind(run)
        .bind(now)
        .execute(self.connection())
        .await?;
        Ok(outcome)
    }

    /// Records the result of the step the run is at and moves it to `next` (steps may be
    /// skipped); `status` other than `running` ends the run.
    pub async fn advance_pipeline_run(
        &mut self,
        run_id: &str,
        result: &serde_json::Value,
        next: Option<i64>,
        status: &str,
        reason: Option<&str>,
    ) -> Result<PipelineRun, StoreError> {
        let now = now_millis();
        let current = sqlx::query(&format!("SELECT {RUN_COLUMNS} FROM pipeline_runs WHERE id = $1"))
            .bind(run_id)
            .fetch_optional(self.connection())
            .await?
            .ok_or_else(|| {
                StoreError::new(StoreErrorKind::NotFound, format!("pipeline run {run_id} does not exist"))
            })?;
        let mut run = run_from_row(&current)?;
        if run.status != "running" {
            return Err(StoreError::new(StoreErrorKind::Conflict, format!("pipeline run {run_id} is {}", run.status)));
        }
        // A retried step replaces its earlier result instead of adding a second one.
        if run.steps.last().is_some_and(|last| last.get("index") == Some(&serde_json::Value::from(run.step))) {
            run.steps.pop();
        }
        let mut result = result.clone();
        if let Some(object) = result.as_object_mut() {
            object.insert("index".into(), run.step.into());
        }
        run.steps.push(result);
        let finished = (status != "running").then_some(now);
        let row = sqlx::query(&format!(
            "UPDATE pipeline_runs SET status = $1, step = $2, steps = $3, reason = $4, updated_at = $5, finished_at = $6 \
             WHERE id = $7 RETURNING {RUN_COLUMNS}"
        ))
        .bind(status)
        .bind(next.unwrap_or(run.step))
        .bind(serde_json::Value::from(run.steps).to_string())
        .bind(reason)
        .bind(now)
        .bind(finished)
        .bind(run_id)
        .fetch_one(self.connection())
        .await?;
        run_from_row(&row)
    }
}

impl Store {
    pub async fn drift_alarms(
        &self,
        tenant: &TenantName,
        deployment: &str,
        limit: i64,
    ) -> Result<Vec<DriftAlarm>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ALARM_COLUMNS} FROM drift_alarms WHERE tenant = $1 AND deployment = $2 ORDER BY created_at DESC, id LIMIT $3"
        ))
        .bind(tenant.as_str())
        .bind(deployment)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(alarm_from_row).collect()
    }

    pub async fn pipeline(&self, tenant: &TenantName, name: &str) -> Result<Option<Pipeline>, StoreError> {
        let row = sqlx::query(&format!("SELECT {PIPELINE_COLUMNS} FROM pipelines WHERE tenant = $1 AND name = $2"))
            .bind(tenant.as_str())
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(pipeline_from_row).transpose()
    }

    /// A tenant's pipelines, or every tenant's when `tenant` is `None` (for the trigger).
    pub async fn pipelines(&self, tenant: Option<&TenantName>) -> Result<Vec<Pipeline>, StoreError> {
        let rows = match tenant {
            Some(tenant) => {
                sqlx::query(&format!("SELECT {PIPELINE_COLUMNS} FROM pipelines WHERE tenant = $1 ORDER BY name"))
                    .bind(tenant.as_str())
                    .fetch_all(self.pool())
                    .await?
            }
            None => {
                sqlx::query(&format!("SELECT {PIPELINE_COLUMNS} FROM pipelines ORDER BY tenant, name"))
                    .fetch_all(self.pool())
                    .await?
            }
        };
        rows.iter().map(pipeline_from_row).collect()
    }

    pub async fn pipeline_run(&self, id: &str) -> Result<Option<PipelineRun>, StoreError> {
        let row = sqlx::query(&format!("SELECT {RUN_COLUMNS} FROM pipeline_runs WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    /// A pipeline's runs, newest first.
    pub async fn pipeline_runs(
        &self,
        tenant: &TenantName,
        pipeline: &str,
        limit: i64,
    ) -> Result<Vec<PipelineRun>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM pipeline_runs WHERE tenant = $1 AND pipeline = $2 ORDER BY created_at DESC, id LIMIT $3"
        ))
        .bind(tenant.as_str())
        .bind(pipeline)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(run_from_row).collect()
    }
}
