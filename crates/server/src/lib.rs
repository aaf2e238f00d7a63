//! The factory's HTTP server and in-process background work (outbox dispatcher, checkpoint
//! signer, job workers).
//!
//! API Boundary: only this crate knows HTTP and wire types. Architecture Invariant: handlers
//! change state only through `factory_store::Change`, so every write is authorized, audited and
//! published in one transaction.

// The parts `AppState` is built from, and what they are configured by: none knows `AppState`.
pub mod admission;
pub mod caller;
pub mod chat_template;
pub mod drift;
pub mod egress;
pub mod endpoints;
pub mod event_stream;
pub mod guardrails;
pub mod inference_log;
pub mod limits;
pub mod lineage;
pub mod lookups;
pub mod metrics;
pub mod pending_objects;
pub mod registry;
pub mod resident;
pub mod service_error;
pub mod serving;
pub mod slurm;
pub mod workers;

// Everything a use case can reach, opened once at start.
pub mod state;

// One typed function per use case.
pub mod service;

// Work the factory does on its own, through the services: training jobs, batches, pipelines,
// rollouts, canaries and drift monitors.
pub mod batches;
pub mod canary;
pub mod drift_watch;
pub mod pipelines;
pub mod rollout;
pub mod training;

// HTTP: handlers and their wire types, errors as statuses, extractors, the router.
pub mod api;
pub mod error;
pub mod extract;
pub mod routes;

// Opening the factory and serving it, and checking what it depends on.
pub mod doctor;
pub mod startup;

#[cfg(test)]
mod testing;

use std::future::Future;
use std::sync::Arc;

use factory_store::outbox::{DeliveredEvent, Dispatcher, Subscriber};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use startup::{open, open_beside, Opened};
pub use state::AppState;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Logs every delivered event; later subscribers (pipelines, drift monitors) plug in beside it.
struct EventLog;

#[async_trait::async_trait]
impl Subscriber for EventLog {
    fn name(&self) -> &str {
        "event-log"
    }

    async fn handle(&self, event: &DeliveredEvent) -> Result<(), String> {
        tracing::info!(topic = %event.topic, key = %event.idempotency_key, audit_index = event.audit_index, "event");
        Ok(())
    }
}

/// Serves until `shutdown` resolves, then stops taking connections, lets in-flight requests
/// finish (up to the configured grace period) and stops the background tasks.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop_background, background_stopped) = watch::channel(false);
    let roles = state.config.server.roles;
    tracing::info!(roles = ?roles.names(), "this process's roles");
    // Every role writes the inference log of the requests it answered (gateways' requests,
    // workers' batch jobs).
    let mut tasks =
        vec![tokio::spawn(state.inference_log.clone().write(state.store.clone(), background_stopped.clone()))];
    if roles.worker {
        let mut subscribers: Vec<Arc<dyn Subscriber>> =
            vec![Arc::new(EventLog), Arc::new(pipelines::EventTrigger { state: state.clone() })];
        for sink in lineage::LineageSink::from_config(&state.config.lineage) {
            subscribers.push(Arc::new(sink));
        }
        if let Some(link) = event_stream::NatsLink::from_config(&state.config.events) {
            subscribers.push(Arc::new(event_stream::JetStreamPublisher {
                link: link.clone(),
                metrics: state.metrics.clone(),
            }));
            tasks.push(tokio::spawn(pipelines::listen_for_triggers(state.clone(), link, background_stopped.clone())));
        }
        let dispatcher = Dispatcher::new(state.store.clone(), subscribers);
        tasks.push(tokio::spawn(dispatcher.run(background_stopped.clone())));
        let mut workers = job_pool(&state, state.config.jobs.workers);
        if let Some(settings) = &state.config.compute.slurm {
            let executor = slurm::SlurmExecutor::new(
                state.store.clone(),
                state.pdp.clone(),
                settings.clone(),
                state.config.jobs.lease,
                &state.config.data_dir,
                node_environment(&state.config),
            );
            workers.elsewhere = executor.kinds();
            tasks.push(tokio::spawn(executor.run(background_stopped.clone())));
        }
        tasks.push(tokio::spawn(workers.run(background_stopped.clone())));
        tasks.push(tokio::spawn(service::orphans::sweep_periodically(state.clone(), background_stopped.clone())));
        tasks.push(tokio::spawn(pipelines::schedule(state.clone(), background_stopped.clone())));
    }
    if roles.gateway || roles.worker {
        let endpoints = state.engines.endpoints.clone();
        tasks.push(tokio::spawn(endpoints.watch(state.engines.upstream.clone(), background_stopped.clone())));
    }
    if roles.api {
        tasks.push(tokio::spawn(sign_checkpoints(state.clone(), background_stopped.clone())));
        // The drift board is this process's memory, and the API serves its readings.
        tasks.push(tokio::spawn(drift_watch::watch(state.clone(), background_stopped.clone())));
    }

    let grace = state.config.server.shutdown_grace;
    let (draining, mut drain_started) = watch::channel(false);
    let app = routes::router(state.clone());
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: draining in-flight requests");
        let _ = draining.send(true);
    });
    let server = tokio::spawn(async move { server.await });
    tokio::select! {
        result = server => { result??; }
        _ = async {
            let _ = drain_started.wait_for(|started| *started).await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests outlived the shutdown grace period");
        }
    }
    let _ = stop_background.send(true);
    for task in tasks {
        let _ = task.await;
    }
    // A last checkpoint lets an offline verifier detect truncation of everything written.
    if let Err(error) = state.store.issue_checkpoint(&state.checkpoints).await {
        tracing::warn!(%error, "could not sign a final checkpoint");
    }
    state.store.close().await;
    Ok(())
}

/// A worker pool of `workers` with a handler for every kind of job.
fn job_pool(state: &AppState, workers: usize) -> workers::WorkerPool {
    let pool = workers::WorkerPool::with_builtin_handlers(
        state.store.clone(),
        state.pdp.clone(),
        workers,
        state.config.jobs.lease,
    );
    let pool = training::with_training_handlers(pool, state);
    let pool = pipelines::with_pipeline_handlers(pool, state);
    batches::with_batch_handler(pool, state)
}

/// What a Slurm step needs beyond this process's environment to open the same factory: the
/// settings this process may have taken from flags rather than from the file or environment.
fn node_environment(config: &factory_config::Config) -> slurm::NodeEnvironment {
    let data_dir = std::fs::canonicalize(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone());
    let mut variables = vec![
        ("FACTORY_DATA_DIR".to_string(), data_dir.display().to_string()),
        ("FACTORY_JURISDICTION".to_string(), config.jurisdiction.as_str().to_string()),
    ];
    if let Some(url) = &config.database_url {
        variables.push(("FACTORY_DATABASE_URL".to_string(), url.clone()));
    }
    slurm::NodeEnvironment { variables }
}

/// `factory worker --job ID` in a Slurm step: takes the job's lease over from the Slurm
/// submission that started this step, runs it to its end like any worker, and returns. Events
/// the job commits are delivered by the worker processes' dispatchers.
pub async fn run_slurm_step(state: AppState, job_id: &str) -> anyhow::Result<()> {
    let Some((slurm_id, node)) = slurm::this_slurm_step() else {
        anyhow::bail!("not in a Slurm job step (SLURM_JOB_ID and SLURMD_NODENAME are unset)");
    };
    let (submitted, here) =
        (format!("{}{slurm_id}", slurm::OWNER_PREFIX), format!("{}{slurm_id}@{node}", slurm::OWNER_PREFIX));
    let lease = state.config.jobs.lease;
    let Some(job) = state.store.hand_over_job(job_id, &submitted, &here, lease).await? else {
        // Cancelled or claimed again while this step waited: nothing to do here.
        tracing::warn!(job = job_id, slurm_job = slurm_id, "the job is no longer this Slurm job's to run");
        return Ok(());
    };
    let mut placement = job.placement.clone().unwrap_or_else(|| serde_json::json!({ "executor": "slurm" }));
    placement["node"] = serde_json::json!(node);
    placement["state"] = serde_json::json!("RUNNING");
    state.store.set_job_placement(job_id, &placement).await?;
    let (stop, stopped) = watch::channel(false);
    let log_writer = tokio::spawn(state.inference_log.clone().write(state.store.clone(), stopped));
    tracing::info!(job = job_id, slurm_job = slurm_id, %node, "running the job in this Slurm step");
    job_pool(&state, 1).run_job(&here, job).await;
    let _ = stop.send(true);
    let _ = log_writer.await;
    state.store.close().await;
    Ok(())
}

async fn sign_checkpoints(state: AppState, mut stop: watch::Receiver<bool>) {
    loop {
        if let Err(error) = state.store.issue_checkpoint(&state.checkpoints).await {
            tracing::error!(%error, "signing an audit checkpoint failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(state.config.audit.checkpoint_interval) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    /// The floors of the server, from the bottom (ARCHITECTURE.md, "The floors of the server"):
    /// a module imports only from its own floor or the ones below.
    const FLOORS: &[&[&str]] = &[
        &[
            "admission",
            "caller",
            "chat_template",
            "drift",
            "egress",
            "endpoints",
            "event_stream",
            "guardrails",
            "inference_log",
            "limits",
            "lineage",
            "lookups",
            "metrics",
            "pending_objects",
            "registry",
            "resident",
            "service_error",
            "serving",
            "slurm",
            "workers",
        ],
        &["state"],
        &["service"],
        &["batches", "canary", "drift_watch", "pipelines", "rollout", "training"],
        &["api", "error", "extract", "routes"],
        &["doctor", "startup", "crate"],
    ];

    #[test]
    fn the_server_imports_only_down_its_floors() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let problems = factory_testkit::modules::check(&src, FLOORS);
        assert!(problems.is_empty(), "the server's modules break their floors:\n{}", problems.join("\n"));
    }
}
