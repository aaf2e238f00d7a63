//! Drift monitoring: a background task reads each monitored deployment's new inference log rows
//! and feedback, feeds `factory_drift` monitors, and records every monitor that starts firing
//! as a governed change by the `system` principal (`drift.record`: a `drift_alarms` row, an
//! audit record, and `drift.detected` or `feedback.degraded`). Pipelines subscribe to those.
//!
//! Prompts are compared with the reference profile of the data the deployment's first primary
//! model was trained on (or the dataset version the spec names); monitors start with the
//! process, so a restart begins a new stable baseline instead of replaying old alarms.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use factory_core::{AccessRequest, Action, Principal, Resource, TenantName};
use factory_drift::{FeedbackMonitor, Monitor, Observation, Reading, Reference};
use factory_engine::embed::Embedder;
use factory_store::pipelines::DriftAlarm;
use factory_store::Event;
use tokio::sync::watch;

use crate::drift::{DriftSpec, DriftStatus};
use crate::service::{datasets, models};
use crate::serving::{DeploymentSpec, VariantRole};
use crate::state::AppState;

/// Reference documents sampled from the training data (evenly, so every part is represented).
const REFERENCE_DOCUMENTS: usize = 4000;
/// With an embedding model, fewer: each is run through the encoder once (about 1.4 GFLOP for
/// MiniLM at 64 tokens).
const EMBEDDED_REFERENCE_DOCUMENTS: usize = 256;
/// Texts are embedded by their beginning, reference and prompts alike: the cost of an encoder
/// grows with length, and a prompt's topic shows early.
const EMBEDDED_CHARACTERS: usize = 256;
/// Log rows arrive in batches; rows this much older than the newest seen are still looked for.
const LATE_ROWS_MS: i64 = 10_000;

struct Watched {
    reference_key: String,
    /// `name@version` of the model whose lineage gave `reference`.
    model: Option<String>,
    reference: Option<String>,
    monitor: Monitor,
    embedder: Option<Arc<Embedder>>,
    feedback: BTreeMap<String, FeedbackMonitor>,
    cursor: i64,
    seen: HashMap<String, i64>,
    feedback_cursor: i64,
    feedback_seen: HashMap<String, i64>,
    error: Option<String>,
}

/// Runs the monitors until `stop`.
pub async fn watch(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut watched: HashMap<(String, String), Watched> = HashMap::new();
    loop {
        if let Err(error) = pass(&state, &mut watched).await {
            tracing::warn!(%error, "drift monitoring pass failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(state.config.drift.interval) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn pass(state: &AppState, watched: &mut HashMap<(String, String), Watched>) -> Result<(), String> {
    let deployments = state.store.all_deployments().await.map_err(|e| e.to_string())?;
    let mut live = Vec::new();
    for deployment in deployments {
        let Ok(spec) = serde_json::from_value::<DeploymentSpec>(deployment.spec.clone()) else { continue };
        let Some(drift) = spec.drift.clone() else { continue };
        let key = (deployment.tenant.to_string(), deployment.name.clone());
        live.push(key.clone());
        let known = watched.get(&key).map(|w| (w.model.clone(), w.reference.clone()));
        let (model, reference) = match &drift.reference {
            Some(reference) => (None, Some(reference.clone())),
            None => training_data_of(state, &deployment.tenant, &spec, known).await,
        };
        let reference_key = format!("{reference:?}|{:?}|{:?}", drift.embedding_model, drift.settings);
        if watched.get(&key).is_none_or(|w| w.reference_key != reference_key) {
            let now = factory_core::time::now_millis();
            let previous = watched.remove(&key);
            let (monitor, embedder, error) =
                match build_monitor(state, &deployment.tenant, reference.as_deref(), &drift).await {
                    Ok((monitor, embedder)) => (monitor, embedder, None),
                    Err(error) => (Monitor::new(drift.settings.clone(), None), None, Some(error)),
                };
            if let Some(error) = &error {
                tracing::warn!(deployment = %deployment.name, %error, "drift monitor runs without a reference");
            }
            // A new reference keeps the place in the log and the feedback baseline: feedback
            // compares the deployment with itself.
            let (cursor, seen, feedback, feedback_cursor, feedback_seen) = match previous {
                Some(p) => (p.cursor, p.seen, p.feedback, p.feedback_cursor, p.feedback_seen),
                None => {
                    let monitors = state
                        .config
                        .feedback
                        .iter()
                        .map(|(name, metric)| {
                            let higher = metric.better == "higher";
                            (name.clone(), FeedbackMonitor::new(name, higher, drift.settings.clone()))
                        })
                        .collect();
                    (now, HashMap::new(), monitors, now, HashMap::new())
                }
            };
            watched.insert(
                key.clone(),
                Watched {
                    reference_key,
                    model: model.clone(),
                    reference: reference.clone(),
                    monitor,
                    embedder,
                    feedback,
                    cursor,
                    seen,
                    feedback_cursor,
                    feedback_seen,
                    error,
                },
            );
        }
        let Some(entry) = watched.get_mut(&key) else { continue };
        observe(state, &deployment.tenant, &deployment.name, entry).await?;
        state.drift.set(
            &key,
            DriftStatus {
                reference: entry.reference.clone(),
                reference_documents: entry.monitor.reference().map_or(0, |r| r.documents),
                embedding_model: drift.embedding_model.clone(),
                observed: entry.monitor.observed,
                judgements: entry.monitor.judgements,
                judgements_firing: entry.monitor.judgements_firing,
                baseline_ready: entry.monitor.baseline_ready(),
                readings: entry.monitor.readings(),
                feedback: entry.feedback.values().filter_map(|m| m.reading().cloned()).collect(),
                error: entry.error.clone(),
            },
        );
    }
    watched.retain(|key, _| live.contains(key));
    Ok(())
}

/// `dataset@version` the first primary model was trained on, with the `name@version` that model
/// resolves to now. The signed manifest is read only when that version changes (`known` is what
/// the last pass found), not on every pass.
async fn training_data_of(
    state: &AppState,
    tenant: &TenantName,
    spec: &DeploymentSpec,
    known: Option<(Option<String>, Option<String>)>,
) -> (Option<String>, Option<String>) {
    let Some(model) = spec.with_role(VariantRole::Primary).find_map(|v| v.model.clone()) else { return (None, None) };
    let Some((name, reference)) = model.split_once('@') else { return (None, None) };
    let Ok(Some(version)) = models::version_of(state, tenant, name, reference).await else {
        return (None, None);
    };
    let resolved = Some(format!("{}@{}", version.name, version.version));
    if let Some((known_model, known_reference)) = known.filter(|(m, _)| *m == resolved) {
        return (known_model, known_reference);
    }
    let Ok((manifest, _)) = models::open_manifest(state, &version).await else { return (resolved, None) };
    (resolved, manifest.lineage.datasets.first().map(|d| format!("{}@{}", d.name, d.version)))
}

async fn build_monitor(
    state: &AppState,
    tenant: &TenantName,
    reference: Option<&str>,
    drift: &DriftSpec,
) -> Result<(Monitor, Option<Arc<Embedder>>), String> {
    let reference =
        reference.ok_or("no reference: the model has no training data in its lineage; set drift.reference")?;
    let embedder = match &drift.embedding_model {
        Some(model) => Some(embedder(state, tenant, model).await?),
        None => None,
    };
    let mut texts = reference_texts(state, tenant, reference).await?;
    let wanted = if embedder.is_some() { EMBEDDED_REFERENCE_DOCUMENTS } else { REFERENCE_DOCUMENTS };
    if texts.len() > wanted {
        let stride = texts.len() as f64 / wanted as f64;
        texts = (0..wanted).map(|i| std::mem::take(&mut texts[(i as f64 * stride) as usize])).collect();
    }
    let settings = drift.settings.clone();
    let encoder = embedder.clone();
    let calibrated = tokio::task::spawn_blocking(move || {
        let sketches: Vec<_> = texts.iter().map(|t| factory_drift::text::sketch(t)).collect();
        let embeddings = match &encoder {
            Some(encoder) => Some(embed_all(encoder, &texts)?),
            None => None,
        };
        Reference::calibrate(&sketches, embeddings.as_deref(), &settings)
    })
    .await
    .map_err(|e| e.to_string())??;
    tracing::info!(reference, documents = calibrated.documents, "calibrated a drift reference");
    Ok((Monitor::new(drift.settings.clone(), Some(calibrated)), embedder))
}

fn embed_all(embedder: &Embedder, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
    let beginnings: Vec<String> =
        texts.iter().map(|t| crate::guardrails::beginning(t, EMBEDDED_CHARACTERS).to_string()).collect();
    let mut vectors = Vec::with_capacity(texts.len());
    for chunk in beginnings.chunks(32) {
        vectors.extend(embedder.embed(chunk).map_err(|e| e.to_string())?.0);
    }
    Ok(vectors)
}

async fn embedder(state: &AppState, tenant: &TenantName, model: &str) -> Result<Arc<Embedder>, String> {
    let (name, reference) = model.split_once('@').ok_or("drift.embedding_model: expected NAME@VERSION")?;
    let version = models::version_of(state, tenant, name, reference)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("drift.embedding_model: {model} does not exist"))?;
    let loaded = state.engines.get(&version).await.map_err(|e| e.to_string())?;
    loaded.embedder.clone().ok_or_else(|| format!("drift.embedding_model: {model} is not an embedding model"))
}

/// The text column of a dataset version (`name@version` or `name@latest`).
async fn reference_texts(state: &AppState, tenant: &TenantName, reference: &str) -> Result<Vec<String>, String> {
    let (dataset, version) = datasets::find_version(state, tenant, reference)
        .await
        .map_err(|e| format!("drift.reference: {}", e.message))?;
    let manifest = datasets::load_manifest(state, &dataset, version).await.map_err(|e| e.to_string())?.manifest;
    datasets::manifest_texts(state, &manifest).await
}

async fn observe(state: &AppState, tenant: &TenantName, deployment: &str, entry: &mut Watched) -> Result<(), String> {
    let rows = state
        .store
        .inferences(tenant, deployment, entry.cursor - LATE_ROWS_MS, 5000)
        .await
        .map_err(|e| e.to_string())?;
    let fresh: Vec<_> = rows
        .into_iter()
        .filter(|r| entry.seen.insert(r.id.clone(), r.created_at).is_none())
        .filter(|r| r.status != "shadow" && r.kind != "embedding")
        .collect();
    let prompts: Vec<String> = fresh.iter().map(|r| r.prompt_text.clone().unwrap_or_default()).collect();
    let embeddings = match &entry.embedder {
        Some(embedder) if !fresh.is_empty() => {
            let embedder = embedder.clone();
            let texts = prompts.clone();
            Some(
                tokio::task::spawn_blocking(move || embed_all(&embedder, &texts))
                    .await
                    .map_err(|e| e.to_string())??,
            )
        }
        _ => None,
    };
    for (index, row) in fresh.iter().enumerate() {
        entry.cursor = entry.cursor.max(row.created_at);
        let observation = Observation {
            prompt: row.prompt_text.as_deref().map(factory_drift::text::sketch),
            embedding: embeddings.as_ref().filter(|_| row.prompt_text.is_some()).map(|e| e[index].clone()),
            completion_tokens: row.completion_tokens as f64,
            failed: row.status == "failed" || row.status == "overloaded" || row.status.starts_with("upstream_"),
            refused: row.status == "refused"
                || row.finish_reason.as_deref() == Some("content_filter")
                || (row.status == "ok" && row.completion_tokens == 0),
            latency_ms: row.total_ms,
            cost: row.cost,
        };
        for reading in entry.monitor.observe(observation) {
            record(state, tenant, deployment, &reading, "drift.detected").await?;
        }
    }
    let horizon = entry.cursor - LATE_ROWS_MS;
    entry.seen.retain(|_, at| *at >= horizon);

    let feedback = state
        .store
        .feedback(tenant, deployment, entry.feedback_cursor - LATE_ROWS_MS, 5000)
        .await
        .map_err(|e| e.to_string())?;
    for item in feedback {
        if entry.feedback_seen.insert(item.id.clone(), item.created_at).is_some() {
            continue;
        }
        entry.feedback_cursor = entry.feedback_cursor.max(item.created_at);
        let Some(monitor) = entry.feedback.get_mut(&item.metric) else { continue };
        if let Some(reading) = monitor.observe(item.value) {
            record(state, tenant, deployment, &reading, "feedback.degraded").await?;
        }
    }
    let horizon = entry.feedback_cursor - LATE_ROWS_MS;
    entry.feedback_seen.retain(|_, at| *at >= horizon);
    Ok(())
}

async fn record(
    state: &AppState,
    tenant: &TenantName,
    deployment: &str,
    reading: &Reading,
    topic: &str,
) -> Result<(), String> {
    let id = factory_core::secrets::new_id("drift");
    let alarm = DriftAlarm {
        id: id.clone(),
        tenant: tenant.to_string(),
        deployment: deployment.to_string(),
        monitor: reading.monitor.clone(),
        statistic: reading.statistic,
        threshold: reading.threshold,
        observed: reading.observed as i64,
        details: serde_json::to_value(reading).unwrap_or_default(),
        created_at: factory_core::time::now_millis(),
    };
    let request =
        AccessRequest::new(&Principal::system(), Action::DriftRecord, Resource::deployment(tenant, deployment));
    let mut change = state
        .store
        .begin_change(state.pdp.as_ref(), request, &format!("drift-{id}"))
        .await
        .map_err(|e| e.to_string())?;
    change.add_drift_alarm(&alarm).await.map_err(|e| e.to_string())?;
    let payload = serde_json::to_value(&alarm).unwrap_or_default();
    change.commit(payload.clone(), Event::new(topic, payload)).await.map_err(|e| e.to_string())?;
    tracing::warn!(deployment, monitor = %reading.monitor, statistic = reading.statistic, threshold = reading.threshold, "{topic}");
    Ok(())
}
