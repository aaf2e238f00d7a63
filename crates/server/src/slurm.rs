//! Jobs run as Slurm jobs (`[compute] executor = "slurm"`): the way to an HPC cluster's
//! compute nodes, through `sbatch`, `squeue` and `scancel` on the worker's host (`slurmrestd`
//! with JWT is not enabled on most sites, and these three are wherever Slurm is).
//!
//! A worker process's executor claims a ready job of the Slurm kinds as itself (the audited
//! start of an attempt), submits a Slurm job whose step runs `factory worker --job ID` and
//! passes the lease to `slurm:<slurm job id>`, keeping it alive while the Slurm job waits in
//! the queue. On the compute node, `factory worker` takes the lease over as
//! `slurm:<id>@<node>`, heartbeats, checkpoints to the object store and finishes through the
//! same governed changes as any worker. The executor watches the Slurm jobs: one that ends
//! (a node failure, an `scancel` from outside, the time limit) while its factory job still
//! runs has its lease ended at once, so the job is claimed again and submitted anew, and the
//! run resumes from its checkpoint. A cancelled job still waiting in Slurm's queue is
//! `scancel`led; a running one sees the cancellation in its heartbeat.
//!
//! Where each attempt ran (Slurm job id, node, how it ended) is kept in the job's `placement`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use factory_config::SlurmSettings;
use factory_store::jobs::{Job, JobKinds, Outcome};
use factory_store::Store;
use serde_json::json;
use tokio::process::Command;
use tokio::sync::watch;

use crate::metrics::DecisionPoint;

/// The lease holder's name of a job submitted to (or running in) Slurm: `slurm:<id>`, and
/// `slurm:<id>@<node>` once the compute node took it over.
pub const OWNER_PREFIX: &str = "slurm:";

/// How often the executor submits ready jobs and looks at Slurm's.
const POLL: Duration = Duration::from_secs(2);

/// What the compute node's `factory worker` needs to open the same factory, passed through
/// Slurm's environment (`--export`).
#[derive(Debug, Clone, Default)]
pub struct NodeEnvironment {
    pub variables: Vec<(String, String)>,
}

pub struct SlurmExecutor {
    store: Store,
    pdp: Arc<DecisionPoint>,
    settings: SlurmSettings,
    lease: Duration,
    binary: PathBuf,
    log_dir: PathBuf,
    environment: NodeEnvironment,
    /// This executor's name as the holder of a lease between claim and submission.
    submitter: String,
}

/// A Slurm job's state as `squeue` reports it.
#[derive(Debug, Clone, PartialEq)]
struct SlurmJob {
    state: String,
    node: Option<String>,
    reason: String,
}

impl SlurmJob {
    /// Waiting, starting, running or finishing: the factory job is in Slurm's hands.
    fn active(&self) -> bool {
        matches!(
            self.state.as_str(),
            "PENDING" | "CONFIGURING" | "RUNNING" | "COMPLETING" | "SUSPENDED" | "REQUEUED" | "RESIZING" | "SIGNALING"
        )
    }
}

impl SlurmExecutor {
    pub fn new(
        store: Store,
        pdp: Arc<DecisionPoint>,
        settings: SlurmSettings,
        lease: Duration,
        data_dir: &std::path::Path,
        environment: NodeEnvironment,
    ) -> Self {
        let binary = settings
            .binary
            .clone()
            .or_else(|| std::env::current_exe().ok())
            .unwrap_or_else(|| PathBuf::from("factory"));
        let log_dir = settings.log_dir.clone().unwrap_or_else(|| data_dir.join("slurm"));
        let submitter = format!("slurm-submitter:{}", std::process::id());
        SlurmExecutor { store, pdp, settings, lease, binary, log_dir, environment, submitter }
    }

    /// The job kinds this executor takes; the worker pool leaves them alone.
    pub fn kinds(&self) -> Vec<String> {
        self.settings.kinds.clone()
    }

    /// Submits and watches until `stop`.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        if let Err(error) = std::fs::create_dir_all(&self.log_dir) {
            tracing::warn!(%error, dir = %self.log_dir.display(), "cannot create the Slurm log directory");
        }
        loop {
            if *stop.borrow() {
                return;
            }
            if let Err(error) = self.watch().await {
                tracing::warn!(%error, "watching Slurm jobs failed");
            }
            if let Err(error) = self.submit_ready().await {
                tracing::warn!(%error, "submitting jobs to Slurm failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.changed() => return,
            }
        }
    }

    async fn submit_ready(&self) -> Result<(), String> {
        let kinds: Vec<&str> = self.settings.kinds.iter().map(String::as_str).collect();
        // A few per round, so one round never holds many claims while sbatch runs.
        for _ in 0..8 {
            let claimed = self
                .store
                .claim_job_of(self.pdp.as_ref(), &self.submitter, self.lease, JobKinds::Only(&kinds))
                .await
                .map_err(|error| error.to_string())?;
            let Some(job) = claimed else { return Ok(()) };
            match self.submit(&job).await {
                Ok(slurm_id) => {
                    let owner = format!("{OWNER_PREFIX}{slurm_id}");
                    let handed = self.store.hand_over_job(&job.id, &self.submitter, &owner, self.lease).await;
                    if !matches!(handed, Ok(Some(_))) {
                        // Cancelled or reclaimed between claim and submission.
                        let _ = scancel(slurm_id).await;
                        continue;
                    }
                    let placement = placed(&job, slurm_id, &self.settings.partition);
                    self.store.set_job_placement(&job.id, &placement).await.map_err(|error| error.to_string())?;
                    tracing::info!(job = %job.id, slurm_job = slurm_id, attempt = job.attempts, "submitted to Slurm");
                }
                Err(error) => {
                    tracing::warn!(job = %job.id, %error, "sbatch refused the job");
                    let outcome =
                        Outcome::Failed { error: format!("sbatch: {error}"), retry_base: Duration::from_secs(2) };
                    self.store
                        .finish_job(self.pdp.as_ref(), &job.id, &self.submitter, outcome)
                        .await
                        .map_err(|error| error.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// The sbatch arguments for `job`: the pool's partition, account and QoS; the run's own
    /// request for CPUs, memory and GPUs within the pool's; a time limit within the tenant's
    /// remaining compute quota.
    async fn submit(&self, job: &Job) -> Result<u64, String> {
        let asked = |field: &str, most: u64| {
            job.payload["compute"][field].as_u64().filter(|asked| *asked > 0).map_or(most, |asked| asked.min(most))
        };
        let (cpus, memory_mb) = (asked("cpus", self.settings.cpus), asked("memory_mb", self.settings.memory_mb));
        let gpus =
            job.payload["compute"]["gpus"].as_u64().map_or(self.settings.gpus, |asked| asked.min(self.settings.gpus));
        let mut minutes = self.settings.time_limit_minutes;
        if let Ok(quota) = self.store.tenant_quota(&job.tenant).await {
            if let Some(left_secs) = quota.compute_seconds_left() {
                minutes = minutes.min(left_secs.div_ceil(60).max(1));
            }
        }
        let log = self.log_dir.join(format!("{}-%j.log", job.id));
        let mut command = Command::new("sbatch");
        command
            .arg("--parsable")
            .arg(format!("--job-name=factory-{}", job.id))
            .arg(format!("--partition={}", self.settings.partition))
            .arg(format!("--time={minutes}"))
            .arg(format!("--cpus-per-task={cpus}"))
            .arg(format!("--mem={memory_mb}M"))
            .arg(format!("--output={}", log.display()))
            // The step's environment is this process's plus the node's settings; the
            // variables' values never appear on a command line.
            .arg("--export=ALL");
        if let Some(account) = &self.settings.account {
            command.arg(format!("--account={account}"));
        }
        if let Some(qos) = &self.settings.qos {
            command.arg(format!("--qos={qos}"));
        }
        if gpus > 0 {
            command.arg(format!("--gpus={gpus}"));
        }
        command.arg(format!("--wrap={} worker --job {}", self.binary.display(), job.id));
        for (key, value) in &self.environment.variables {
            command.env(key, value);
        }
        let output = command.output().await.map_err(|error| format!("cannot run sbatch: {error}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        // `--parsable` prints `<id>` or `<id>;<cluster>`.
        stdout
            .trim()
            .split(';')
            .next()
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| format!("sbatch printed no job id: {stdout:?}"))
    }

    /// Keeps the leases of jobs waiting in Slurm's queue, cancels those asked to stop, and frees
    /// those whose Slurm job ended before they did.
    async fn watch(&self) -> Result<(), String> {
        let jobs = self.store.running_jobs_leased_by(OWNER_PREFIX).await.map_err(|error| error.to_string())?;
        if jobs.is_empty() {
            return Ok(());
        }
        let slurm_jobs = squeue().await?;
        for job in jobs {
            let Some(owner) = job.lease_owner.clone() else { continue };
            let Some(slurm_id) = slurm_id_of(&owner) else { continue };
            let on_node = owner.contains('@');
            match slurm_jobs.get(&slurm_id) {
                Some(slurm) if slurm.active() => {
                    if on_node {
                        // The node heartbeats and sees a cancellation itself.
                        continue;
                    }
                    let beat =
                        self.store.heartbeat(&job.id, &owner, self.lease).await.map_err(|error| error.to_string())?;
                    if beat.still_owned && beat.cancel_requested {
                        scancel(slurm_id).await?;
                        self.record_end(&job, slurm_id, "CANCELLED", "cancelled in the factory", slurm.node.as_deref())
                            .await?;
                        self.store
                            .finish_job(self.pdp.as_ref(), &job.id, &owner, Outcome::Cancelled)
                            .await
                            .map_err(|error| error.to_string())?;
                    }
                }
                ended => {
                    let (state, reason, node) = match ended {
                        Some(slurm) => (slurm.state.as_str(), slurm.reason.as_str(), slurm.node.as_deref()),
                        None => ("GONE", "no longer known to Slurm", None),
                    };
                    tracing::warn!(
                        job = %job.id, slurm_job = slurm_id, state, reason,
                        "the Slurm job ended before the factory job did; it runs again in a new Slurm job"
                    );
                    self.record_end(&job, slurm_id, state, reason, node).await?;
                    self.store.end_lease(&job.id, &owner).await.map_err(|error| error.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// Adds how Slurm job `slurm_id` ended to the job's placement.
    async fn record_end(
        &self,
        job: &Job,
        slurm_id: u64,
        state: &str,
        reason: &str,
        node: Option<&str>,
    ) -> Result<(), String> {
        let mut placement = job.placement.clone().unwrap_or_else(|| json!({ "executor": "slurm", "attempts": [] }));
        let node = node.map(str::to_string).or_else(|| job.lease_owner.as_deref().and_then(node_of));
        if let Some(attempts) = placement["attempts"].as_array_mut() {
            attempts.push(json!({ "slurm_job_id": slurm_id, "node": node, "state": state, "reason": reason }));
        }
        placement["state"] = json!(state);
        self.store.set_job_placement(&job.id, &placement).await.map_err(|error| error.to_string())
    }
}

/// The placement of a job just submitted as Slurm job `slurm_id`, keeping earlier attempts.
fn placed(job: &Job, slurm_id: u64, partition: &str) -> serde_json::Value {
    let attempts = job.placement.as_ref().map(|placement| placement["attempts"].clone()).unwrap_or(json!([]));
    json!({ "executor": "slurm", "slurm_job_id": slurm_id, "partition": partition, "node": null,
            "state": "PENDING", "attempts": attempts })
}

/// `slurm:<id>` or `slurm:<id>@<node>` -> `<id>`.
pub fn slurm_id_of(owner: &str) -> Option<u64> {
    owner.strip_prefix(OWNER_PREFIX)?.split('@').next()?.parse().ok()
}

fn node_of(owner: &str) -> Option<String> {
    owner.split_once('@').map(|(_, node)| node.to_string())
}

/// Every job Slurm still knows (finished ones for `MinJobAge`), by id.
async fn squeue() -> Result<HashMap<u64, SlurmJob>, String> {
    let output = Command::new("squeue")
        .args(["--noheader", "--states=all", "--format=%i|%T|%N|%r"])
        .output()
        .await
        .map_err(|error| format!("cannot run squeue: {error}"))?;
    if !output.status.success() {
        return Err(format!("squeue: {}", String::from_utf8_lossy(&output.stderr).trim()));
    }
    Ok(parse_squeue(&String::from_utf8_lossy(&output.stdout)))
}

fn parse_squeue(text: &str) -> HashMap<u64, SlurmJob> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.trim().splitn(4, '|');
            let id = fields.next()?.parse().ok()?;
            let state = fields.next()?.to_string();
            let node = fields.next().filter(|node| !node.is_empty() && *node != "(null)").map(str::to_string);
            let reason = fields.next().unwrap_or("").to_string();
            Some((id, SlurmJob { state, node, reason }))
        })
        .collect()
}

async fn scancel(slurm_id: u64) -> Result<(), String> {
    let output = Command::new("scancel")
        .arg(slurm_id.to_string())
        .output()
        .await
        .map_err(|error| format!("cannot run scancel: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("scancel {slurm_id}: {}", String::from_utf8_lossy(&output.stderr).trim()))
    }
}

/// What a compute node's `factory worker --job` is: its Slurm job and node, from the variables
/// Slurm sets in a job step.
pub fn this_slurm_step() -> Option<(u64, String)> {
    let id = std::env::var("SLURM_JOB_ID").ok()?.parse().ok()?;
    let node = std::env::var("SLURMD_NODENAME").ok()?;
    Some((id, node))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn squeue_lines_become_states_and_owners_become_slurm_ids() {
        let jobs = parse_squeue("12|RUNNING|vm|None\n13|PENDING||Resources\n14|TIMEOUT|vm|TimeLimit\nnoise\n");
        assert_eq!(jobs.len(), 3);
        assert!(jobs[&12].active() && jobs[&13].active() && !jobs[&14].active());
        assert_eq!((jobs[&12].node.as_deref(), jobs[&13].node.as_deref()), (Some("vm"), None));
        assert_eq!(jobs[&14].reason, "TimeLimit");
        assert_eq!(slurm_id_of("slurm:12"), Some(12));
        assert_eq!(slurm_id_of("slurm:12@vm"), Some(12));
        assert_eq!(slurm_id_of("slurm-submitter:1"), None);
        assert_eq!(node_of("slurm:12@vm").as_deref(), Some("vm"));
    }
}
