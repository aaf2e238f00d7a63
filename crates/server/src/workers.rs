//! In-process job workers: claim a job, run its handler while heartbeating the lease, record
//! the outcome. A worker that dies simply stops heartbeating; its lease expires and another
//! worker (in this process or after a restart) claims the job again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use factory_store::jobs::{Job, JobKinds, Outcome};
use factory_store::Store;
use tokio::sync::watch;

use crate::metrics::DecisionPoint;

/// What the worker tells a running handler. `cancel` turns true when cancellation was
/// requested: stop soon and return `Err(JobError::Cancelled)`. `preempt` turns true when a
/// higher-priority job needs the worker: save what lets the job resume, then return
/// `Err(JobError::Preempted)`; the job goes back to the queue without losing an attempt.
#[derive(Debug, Clone)]
pub struct JobControl {
    pub cancel: watch::Receiver<bool>,
    pub preempt: watch::Receiver<bool>,
}

#[async_trait::async_trait]
pub trait JobHandler: Send + Sync {
    fn kind(&self) -> &'static str;
    async fn run(&self, job: &Job, control: JobControl) -> Result<serde_json::Value, JobError>;
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobError {
    Cancelled,
    Preempted,
    Failed(String),
}

/// A diagnostic job that waits `millis` milliseconds; operators use it to check that workers,
/// leases and cancellation behave, and the crash tests use it as a job that is still running
/// when its worker is killed.
pub struct SleepHandler;

#[async_trait::async_trait]
impl JobHandler for SleepHandler {
    fn kind(&self) -> &'static str {
        "platform.sleep"
    }

    async fn run(&self, job: &Job, control: JobControl) -> Result<serde_json::Value, JobError> {
        let millis = job.payload.get("millis").and_then(|v| v.as_u64()).unwrap_or(0);
        if job.payload.get("fail").and_then(|v| v.as_bool()).unwrap_or(false) {
            return Err(JobError::Failed("asked to fail".to_string()));
        }
        let (mut cancel, mut preempt) = (control.cancel, control.preempt);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(millis)) => Ok(serde_json::json!({ "slept_millis": millis })),
            _ = cancel.wait_for(|cancelled| *cancelled) => Err(JobError::Cancelled),
            // Sleeping keeps no state: yielding is free.
            _ = preempt.wait_for(|preempted| *preempted) => Err(JobError::Preempted),
        }
    }
}

/// How often a pool whose workers are all busy looks for waiting higher-priority work.
const SCHEDULER_INTERVAL: Duration = Duration::from_millis(500);

pub struct WorkerPool {
    pub store: Store,
    pub pdp: Arc<DecisionPoint>,
    pub handlers: HashMap<&'static str, Arc<dyn JobHandler>>,
    pub workers: usize,
    pub lease: Duration,
    pub retry_base: Duration,
    pub name: String,
    /// Job kinds another executor runs (Slurm's): this pool never claims them.
    pub elsewhere: Vec<String>,
    /// Workers running a job now; when all are, waiting higher-priority work may preempt.
    busy: AtomicUsize,
}

impl WorkerPool {
    pub fn with_builtin_handlers(store: Store, pdp: Arc<DecisionPoint>, workers: usize, lease: Duration) -> Self {
        let mut handlers: HashMap<&'static str, Arc<dyn JobHandler>> = HashMap::new();
        let sleep: Arc<dyn JobHandler> = Arc::new(SleepHandler);
        handlers.insert(sleep.kind(), sleep);
        let name = format!("{}-{}", hostname(), std::process::id());
        WorkerPool {
            store,
            pdp,
            handlers,
            workers,
            lease,
            retry_base: Duration::from_secs(2),
            name,
            elsewhere: Vec::new(),
            busy: AtomicUsize::new(0),
        }
    }

    /// Runs the workers and the lease reaper until `shutdown` turns true.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let pool = Arc::new(self);
        let mut tasks = Vec::new();
        for index in 0..pool.workers {
            let pool = pool.clone();
            let shutdown = shutdown.clone();
            tasks.push(tokio::spawn(async move { pool.worker_loop(index, shutdown).await }));
        }
        let reaper = {
            let pool = pool.clone();
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    if let Err(error) = pool.store.reap_expired_jobs(pool.pdp.as_ref()).await {
                        tracing::error!(%error, "reaping expired job leases failed");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(pool.lease) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            })
        };
        let scheduler = {
            let pool = pool.clone();
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(SCHEDULER_INTERVAL) => {}
                        _ = shutdown.changed() => return,
                    }
                    if pool.workers == 0 || pool.busy.load(Ordering::SeqCst) < pool.workers {
                        continue;
                    }
                    match pool.store.request_preemption(pool.pdp.as_ref()).await {
                        Ok(Some(job)) => {
                            tracing::info!(job = %job.id, priority = job.priority, "asked a job to yield its worker")
                        }
                        Ok(None) => {}
                        Err(error) => tracing::error!(%error, "the preemption check failed"),
                    }
                }
            })
        };
        for task in tasks {
            let _ = task.await;
        }
        reaper.abort();
        scheduler.abort();
    }

    async fn worker_loop(&self, index: usize, mut shutdown: watch::Receiver<bool>) {
        let worker = format!("{}/{index}", self.name);
        let mut idle = Duration::from_millis(50);
        let elsewhere: Vec<&str> = self.elsewhere.iter().map(String::as_str).collect();
        while !*shutdown.borrow() {
            match self.store.claim_job_of(self.pdp.as_ref(), &worker, self.lease, JobKinds::Except(&elsewhere)).await {
                Ok(Some(job)) => {
                    idle = Duration::from_millis(50);
                    self.busy.fetch_add(1, Ordering::SeqCst);
                    self.run_job(&worker, job).await;
                    self.busy.fetch_sub(1, Ordering::SeqCst);
                }
                Ok(None) => {
                    tokio::select! {
                        _ = tokio::time::sleep(idle) => {}
                        _ = shutdown.changed() => {}
                    }
                    idle = (idle * 2).min(Duration::from_secs(1));
                }
                Err(error) => {
                    tracing::error!(%error, worker, "claiming a job failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Runs a job `worker` holds the lease of to its end: heartbeats, cancellation, preemption
    /// and the recorded outcome, as every worker does (the pool's own, or a Slurm step's).
    pub async fn run_job(&self, worker: &str, job: Job) {
        let Some(handler) = self.handlers.get(job.kind.as_str()).cloned() else {
            let error = format!("no handler for job kind {:?} in this factory", job.kind);
            self.finish(worker, &job, Outcome::Failed { error, retry_base: self.retry_base }).await;
            return;
        };
        tracing::info!(job = %job.id, kind = %job.kind, attempt = job.attempts, worker, "job started");
        let (cancel_sender, cancel) = watch::channel(false);
        let (preempt_sender, preempt) = watch::channel(false);
        let run = handler.run(&job, JobControl { cancel, preempt });
        tokio::pin!(run);
        let mut heartbeat = tokio::time::interval(self.lease / 3);
        heartbeat.tick().await;
        let result = loop {
            tokio::select! {
                result = &mut run => break Some(result),
                _ = heartbeat.tick() => {
                    match self.store.heartbeat(&job.id, worker, self.lease).await {
                        Ok(beat) if !beat.still_owned => {
                            tracing::warn!(job = %job.id, worker, "lost the job's lease; abandoning it");
                            break None;
                        }
                        Ok(beat) => {
                            if beat.cancel_requested {
                                let _ = cancel_sender.send(true);
                            }
                            if beat.preempt_requested {
                                let _ = preempt_sender.send(true);
                            }
                        }
                        Err(error) => tracing::warn!(%error, job = %job.id, "heartbeat failed"),
                    }
                }
            }
        };
        let outcome = match result {
            None => return,
            Some(Ok(value)) => Outcome::Succeeded(value),
            Some(Err(JobError::Cancelled)) => Outcome::Cancelled,
            Some(Err(JobError::Preempted)) => Outcome::Preempted,
            Some(Err(JobError::Failed(error))) => Outcome::Failed { error, retry_base: self.retry_base },
        };
        self.finish(worker, &job, outcome).await;
    }

    async fn finish(&self, worker: &str, job: &Job, outcome: Outcome) {
        match self.store.finish_job(self.pdp.as_ref(), &job.id, worker, outcome).await {
            Ok(done) => {
                tracing::info!(job = %done.id, state = done.state.as_str(), worker, "job attempt ended")
            }
            Err(error) => {
                tracing::error!(%error, job = %job.id, worker, "recording the job outcome failed")
            }
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "factory".to_string())
}
