//! A pipeline's page: its definition as its author wrote it, and its runs, newest first, each
//! as a timeline: what triggered it, each step one after another with its outcome and how long
//! it took, and how the run ended.

use axum::extract::Path;
use axum::response::Response;

use super::plot::{self, Span};
use super::{when, Shown, Visit};
use crate::service::pipelines;

/// Runs drawn as timelines on the page.
const RUNS_SHOWN: usize = 20;

pub async fn pipeline_page(visit: Visit, Path(name): Path<String>) -> Response {
    visit
        .tenant_page("/console/pipelines", async |state, caller, tenant| {
            let pipeline = pipelines::show(state, caller, tenant, &name).await?;
            let runs = pipelines::runs(state, caller, tenant, &name).await?;
            let shown: Vec<minijinja::Value> = runs
                .iter()
                .take(RUNS_SHOWN)
                .map(|run| {
                    let spans: Vec<Span> = run
                        .steps
                        .iter()
                        .map(|step| Span {
                            label: step["name"].as_str().unwrap_or("step").to_string(),
                            seconds: step["seconds"].as_f64().unwrap_or(0.0),
                            ok: step["ok"].as_bool().unwrap_or(false),
                        })
                        .collect();
                    let steps: Vec<minijinja::Value> = run
                        .steps
                        .iter()
                        .map(|step| {
                            minijinja::context! {
                                name => step["name"].as_str(), kind => step["kind"].as_str(),
                                ok => step["ok"].as_bool().unwrap_or(false), seconds => step["seconds"].as_f64(),
                                error => step["error"].as_str().or(step["reason"].as_str()),
                            }
                        })
                        .collect();
                    let trigger = match run.trigger["kind"].as_str() {
                        Some("event") => format!("event {}", run.trigger["topic"].as_str().unwrap_or("?")),
                        Some("cron") => format!("schedule {}", run.trigger["cron"].as_str().unwrap_or("?")),
                        Some(kind) => kind.to_string(),
                        None => "unknown".to_string(),
                    };
                    let title = format!("Run {} timeline", run.id);
                    minijinja::context! {
                        id => run.id, status => run.status, revision => run.revision, trigger => trigger,
                        started => when(run.created_at), finished => run.finished_at.map(when), reason => run.reason,
                        steps => steps,
                        timeline => (!spans.is_empty())
                            .then(|| minijinja::Value::from_safe_string(plot::timeline(&title, &spans))),
                    }
                })
                .collect();
            let context = minijinja::context! {
                name => pipeline.name, revision => pipeline.revision, updated => when(pipeline.updated_at),
                author => pipeline.author.id, source => pipeline.source, runs => shown, total_runs => runs.len(),
            };
            Ok(Shown::new("pipeline.html", context))
        })
        .await
}
