//! A job's page: its state, attempts, result and error; for a training run also its latest
//! checkpoint and its loss, validation and learning-rate curves, which the page's script draws
//! from the API's metrics and keeps current while the run trains. A form cancels it.

use axum::extract::Path;
use axum::response::Response;
use axum::Form;

use super::{segment, when, CsrfForm, Shown, Visit};
use crate::service::{jobs, runs};

pub async fn job_page(visit: Visit, Path(id): Path<String>) -> Response {
    visit
        .tenant_page("/console/jobs", async |state, caller, _tenant| {
            let job = jobs::show(state, caller, &id).await?;
            let run = runs::is_run(&job.kind);
            let checkpoint = if run { runs::latest_checkpoint(state, caller, &id).await? } else { None };
            let checkpoint = checkpoint.map(|c| {
                minijinja::context! {
                    step => c.step, weights => c.weights_digest, optimizer => c.optimizer_digest,
                    at => when(c.created_at),
                }
            });
            let pretty = |value: &serde_json::Value| serde_json::to_string_pretty(value).unwrap_or_default();
            let finished = matches!(job.state.as_str(), "succeeded" | "failed" | "cancelled");
            let context = minijinja::context! {
                id => job.id, kind => job.kind, job_state => job.state.as_str(), priority => job.priority,
                attempts => job.attempts, max_attempts => job.max_attempts, created => when(job.created_at),
                updated => when(job.updated_at), by => job.created_by, compute_seconds => job.compute_ms / 1000,
                cancel_requested => job.cancel_requested, last_error => job.last_error,
                result => job.result.as_ref().map(pretty), payload => pretty(&job.payload),
                run => run, checkpoint => checkpoint, finished => finished,
                metrics_url => format!("/api/v1/runs/{}/metrics", segment(&id)),
                cancel_url => format!("/console/jobs/{}/cancel", segment(&id)),
            };
            Ok(Shown::new("job.html", context))
        })
        .await
}

/// Requests the job's cancellation (`job.cancel`), as the API's cancel does.
pub async fn cancel_job(visit: Visit, Path(id): Path<String>, Form(form): Form<CsrfForm>) -> Response {
    visit
        .tenant_action(&form.csrf, async |state, caller, _tenant| {
            jobs::cancel_by_id(state, caller, &id).await?;
            Ok(format!("/console/jobs/{}", segment(&id)))
        })
        .await
}
