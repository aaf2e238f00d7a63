//! A deployment's page: its variants and weights, its recent traffic from the inference log
//! (requests, errors, latency and time to first token p50/p99, tokens per second, cost per day,
//! how answers ended, guardrails' verdicts among them), its drift monitors against their
//! thresholds and their alarms, feedback, the canary analyses pipelines ran on it with their
//! evidence, and a chat playground whose script streams answers from the API.

use std::collections::BTreeMap;

use axum::extract::Path;
use axum::response::Response;
use factory_core::TenantName;
use factory_store::inference::Feedback;

use super::plot::{self, bars};
use super::{segment, when, Shown, Visit};
use crate::caller::Caller;
use crate::service::deployments::{DriftReport, Traffic};
use crate::service::{deployments, pipelines};
use crate::service_error::{ErrorKind, ServiceError};
use crate::state::AppState;

/// The days of traffic the page summarizes.
const TRAFFIC_DAYS: i64 = 7;
/// Feedback reports and alarms listed.
const RECENT: usize = 20;
/// Feedback reports read for the means.
const FEEDBACK_READ: i64 = 1000;

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "—".to_string(), |v| format!("{v:.1} ms"))
}

/// An `MM-DD HH:MM` label of a time, for plots.
fn short_time(millis: i64) -> String {
    when(millis).get(5..16).unwrap_or_default().replace('T', " ")
}

pub async fn deployment_page(visit: Visit, Path(name): Path<String>) -> Response {
    visit
        .tenant_page("/console/deployments", async |state, caller, tenant| {
            let deployment = deployments::show(state, caller, tenant, &name).await?;
            let traffic = deployments::traffic(state, caller, tenant, &name, TRAFFIC_DAYS).await?;
            let drift = deployments::drift(state, caller, tenant, &name).await?;
            let feedback = deployments::feedback(state, caller, tenant, &name, 0, Some(FEEDBACK_READ)).await?;
            let canaries = canary_analyses(state, caller, tenant, &name).await?;
            let figures = plot::figures(traffic_figures(&traffic, &drift));
            let context = minijinja::context! {
                name => name, revision => deployment.revision, updated => when(deployment.updated_at),
                variants => variant_rows(&deployment.spec, &traffic),
                spec => serde_json::to_string_pretty(&deployment.spec).unwrap_or_default(),
                traffic => traffic_facts(&traffic), figures => figures,
                monitors => monitor_rows(&drift), alarms => alarm_rows(&drift),
                drift_configured => drift.status.is_some(),
                feedback_means => feedback_means(&feedback),
                recent_feedback => feedback.iter().rev().take(RECENT).map(|f| minijinja::context! {
                    metric => f.metric, value => plot::number(f.value), variant => f.variant, at => when(f.created_at),
                }).collect::<Vec<_>>(),
                canaries => canaries,
            };
            Ok(Shown::new("deployment.html", context))
        })
        .await
}

/// Each variant: what it serves (linked to the model's page), its role, weight and requests.
fn variant_rows(spec: &serde_json::Value, traffic: &Traffic) -> Vec<minijinja::Value> {
    let variants = spec["variants"].as_array().into_iter().flatten();
    variants
        .map(|v| {
            let model = v["model"].as_str();
            let model_href =
                model.and_then(|m| m.split_once('@')).map(|(m, reference)| match reference.parse::<i64>() {
                    Ok(number) => format!("/console/models/{}/versions/{number}", segment(m)),
                    Err(_) => format!("/console/models/{}", segment(m)),
                });
            minijinja::context! {
                model => model.or(v["upstream"]["url"].as_str()), model_href => model_href,
                role => v["role"].as_str().unwrap_or("primary"), weight => v["weight"].to_string(),
                requests => model.and_then(|m| traffic.variants.get(m)).copied().unwrap_or(0),
            }
        })
        .collect()
}

/// The traffic's figures as the page lists them.
fn traffic_facts(traffic: &Traffic) -> minijinja::Value {
    let error_rate = match traffic.requests {
        0 => "—".to_string(),
        requests => format!("{:.1}%", 100.0 * traffic.errors as f64 / requests as f64),
    };
    let tokens_per_second = traffic.tokens_per_second.map_or_else(|| "—".to_string(), |t| format!("{t:.1}"));
    minijinja::context! {
        requests => traffic.requests, errors => traffic.errors, error_rate => error_rate,
        latency_p50 => ms(traffic.latency_p50_ms), latency_p99 => ms(traffic.latency_p99_ms),
        first_token_p50 => ms(traffic.first_token_p50_ms), first_token_p99 => ms(traffic.first_token_p99_ms),
        tokens_per_second => tokens_per_second,
        prompt_tokens => traffic.prompt_tokens, completion_tokens => traffic.completion_tokens,
        statuses => traffic.statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect::<Vec<_>>(),
        // `content_filter` counts the answers an output guardrail stopped.
        finish_reasons => traffic.finish_reasons.iter().map(|(r, n)| format!("{r}: {n}")).collect::<Vec<_>>(),
        sample => deployments::TRAFFIC_SAMPLE, days => TRAFFIC_DAYS,
    }
}

/// The plots: cost per day, requests per hour (the last 24 with traffic), how answers ended,
/// and the drift alarms' statistics.
fn traffic_figures(traffic: &Traffic, drift: &DriftReport) -> Vec<(String, String)> {
    let mut figures = Vec::new();
    let mut add = |title: &str, drawn: Vec<(String, f64)>| {
        if !drawn.is_empty() {
            figures.push((title.to_string(), bars(title, &drawn)));
        }
    };
    add("Cost per day", traffic.cost_by_day.clone());
    let hours = &traffic.requests_by_hour;
    let recent_hours = &hours[hours.len().saturating_sub(24)..];
    add("Requests per hour (UTC)", recent_hours.iter().map(|(hour, n)| (short_time(*hour), *n as f64)).collect());
    add("How answers ended", traffic.finish_reasons.iter().map(|(reason, n)| (reason.clone(), *n as f64)).collect());
    let alarms =
        drift.alarms.iter().rev().map(|a| (format!("{} {}", a.monitor, short_time(a.created_at)), a.statistic));
    add("Drift alarms: the statistic when each fired", alarms.collect());
    figures
}

/// Each drift monitor's latest reading against its threshold.
fn monitor_rows(drift: &DriftReport) -> Vec<minijinja::Value> {
    let readings = drift.status.iter().flat_map(|status| &status.readings);
    readings
        .map(|r| {
            minijinja::context! {
                monitor => r.monitor, statistic => plot::number(r.statistic), threshold => plot::number(r.threshold),
                firing => r.firing, observed => r.observed,
            }
        })
        .collect()
}

/// The newest drift alarms.
fn alarm_rows(drift: &DriftReport) -> Vec<minijinja::Value> {
    drift
        .alarms
        .iter()
        .take(RECENT)
        .map(|a| {
            minijinja::context! {
                monitor => a.monitor, statistic => plot::number(a.statistic), threshold => plot::number(a.threshold),
                observed => a.observed, at => when(a.created_at),
            }
        })
        .collect()
}

/// Each feedback metric's mean and count.
fn feedback_means(feedback: &[Feedback]) -> Vec<(String, String, usize)> {
    let mut sums: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
    for report in feedback {
        let entry = sums.entry(&report.metric).or_default();
        entry.0 += report.value;
        entry.1 += 1;
    }
    sums.into_iter().map(|(metric, (sum, n))| (metric.to_string(), plot::number(sum / n as f64), n)).collect()
}

/// The canary analyses that the tenant's pipelines ran on deployment `name`, with their
/// decision and evidence (as the caller may read pipelines; none when it may not).
async fn canary_analyses(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
) -> Result<Vec<minijinja::Value>, ServiceError> {
    let all = match pipelines::list(state, caller, tenant).await {
        Ok(all) => all,
        Err(error) if error.kind == ErrorKind::Forbidden => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut canaries = Vec::new();
    for pipeline in all {
        for run in pipelines::runs(state, caller, tenant, &pipeline.name).await? {
            let steps = run.steps.iter().filter(|s| s["kind"] == "canary" && s["deployment"] == name);
            for step in steps {
                let pretty = |value: &serde_json::Value| serde_json::to_string_pretty(value).unwrap_or_default();
                canaries.push(minijinja::context! {
                    pipeline => pipeline.name, run => run.id, at => when(run.updated_at),
                    decision => step["decision"].as_str(), reason => step["reason"].as_str(),
                    candidate => step["candidate"].as_str(), stable => step["stable"].as_str(),
                    evidence => pretty(&step["evidence"]), arms => pretty(&step["arms"]),
                });
            }
        }
    }
    Ok(canaries)
}
