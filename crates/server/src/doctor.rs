//! `factory doctor`: whether a configuration's outside dependencies answer (the database, the
//! object store, Slurm, the shared state of limits, the event stream) and what is wrong with those that
//! do not. It reads and probes; it applies no migration and changes no governed state.

use std::time::Duration;

use factory_config::{Config, ObjectSettings};
use factory_store::Store;

/// One dependency's verdict.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    /// `None` when the configuration does not use it.
    pub ok: Option<bool>,
    pub detail: String,
}

/// How long each probe may take before the dependency counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

async fn probe<F>(name: &'static str, future: F) -> Check
where
    F: std::future::Future<Output = Result<String, String>>,
{
    match tokio::time::timeout(PROBE_TIMEOUT, future).await {
        Ok(Ok(detail)) => Check { name, ok: Some(true), detail },
        Ok(Err(detail)) => Check { name, ok: Some(false), detail },
        Err(_) => Check { name, ok: Some(false), detail: format!("no answer within {} s", PROBE_TIMEOUT.as_secs()) },
    }
}

fn unused(name: &'static str, detail: &str) -> Check {
    Check { name, ok: None, detail: detail.to_string() }
}

/// Checks every dependency `config` names, each within a few seconds.
pub async fn check(config: &Config) -> Vec<Check> {
    let mut checks = vec![
        probe("database", database(config)).await,
        probe("objects", objects(config)).await,
        probe("data_dir", data_dir(config)).await,
    ];
    checks.push(match &config.serving.shared_state {
        None => unused("shared_state", "not configured: each gateway keeps its own limits"),
        Some(url) => probe("shared_state", shared_state(url)).await,
    });
    checks.push(match &config.compute.slurm {
        None => unused("slurm", "not configured: jobs run in the worker processes"),
        Some(slurm) => probe("slurm", slurm_partition(&slurm.partition)).await,
    });
    checks.push(match &config.events.nats_url {
        None => unused("events", "not configured: events reach in-process subscribers only"),
        Some(url) => probe("events", events(url, &config.events.stream, &config.events.subject_prefix)).await,
    });
    checks
}

async fn database(config: &Config) -> Result<String, String> {
    let url = config.effective_database_url();
    let embedded = config.data_dir.join("metadata.db");
    if config.database_url.is_none() && !embedded.exists() {
        return Ok(format!("embedded SQLite at {}: created on first start", embedded.display()));
    }
    let store = Store::open_read_only(&url).await.map_err(|error| error.to_string())?;
    let answers = store.ping().await;
    store.close().await;
    if answers {
        Ok(format!("{} answers", factory_store::redact_url(&url)))
    } else {
        Err(format!("{} accepted a connection but does not answer queries", factory_store::redact_url(&url)))
    }
}

/// Writes, reads back and deletes a probe object, as ingest and training will.
async fn objects(config: &Config) -> Result<String, String> {
    let place = match &config.objects {
        ObjectSettings::Local { path } => {
            crate::startup::local_objects_dir(config, path.as_deref()).display().to_string()
        }
        ObjectSettings::S3(s3) => {
            format!("s3://{} at {}", s3.bucket, s3.endpoint.as_deref().unwrap_or("AWS"))
        }
    };
    let store = crate::startup::object_store(config).map_err(|error| format!("{place}: {error}"))?;
    let probe = format!("factory doctor probe {}", uuid::Uuid::new_v4());
    let digest =
        store.put_bytes(probe.clone().into()).await.map_err(|error| format!("{place}: cannot write: {error}"))?;
    let read = store.get(&digest).await.map_err(|error| format!("{place}: cannot read back: {error}"))?;
    store.delete(&digest).await.map_err(|error| format!("{place}: cannot delete: {error}"))?;
    if read != probe.as_bytes() {
        return Err(format!("{place}: read back other bytes than it wrote"));
    }
    Ok(format!("{place}: written, read back and deleted"))
}

/// The keys every role needs: the audit signing key and the model keys live here.
async fn data_dir(config: &Config) -> Result<String, String> {
    let dir = &config.data_dir;
    if !dir.exists() {
        return Ok(format!("{} does not exist yet; the first start creates it and its keys", dir.display()));
    }
    let probe = dir.join(format!(".doctor-{}", uuid::Uuid::new_v4()));
    std::fs::write(&probe, b"probe").map_err(|error| format!("{} is not writable: {error}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    let keys = [crate::startup::SIGNING_KEY_FILE, crate::startup::MODEL_SIGNING_KEY_FILE];
    let missing: Vec<&str> = keys.iter().copied().filter(|key| !dir.join(key).exists()).collect();
    if missing.is_empty() {
        Ok(format!("{} is writable and holds the signing keys", dir.display()))
    } else {
        Ok(format!(
            "{} is writable; {} will be created on first start (every process must share them)",
            dir.display(),
            missing.join(", ")
        ))
    }
}

async fn shared_state(url: &str) -> Result<String, String> {
    let limits = factory_cluster::shared_limits::SharedLimits::new(url).map_err(|error| error.to_string())?;
    limits.ping().await.map_err(|error| format!("{url}: {error}"))?;
    Ok(format!("{url} answers PING"))
}

/// Whether Slurm answers and the partition takes jobs.
async fn slurm_partition(partition: &str) -> Result<String, String> {
    let output = tokio::process::Command::new("sinfo")
        .args(["--noheader", "--partition", partition, "--format=%a|%D|%T"])
        .output()
        .await
        .map_err(|error| format!("cannot run sinfo: {error}"))?;
    if !output.status.success() {
        return Err(format!("sinfo: {}", String::from_utf8_lossy(&output.stderr).trim()));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return Err(format!("no partition {partition:?}"));
    }
    if !lines.iter().any(|line| line.starts_with("up|")) {
        return Err(format!("partition {partition:?} is not up: {}", lines.join("; ")));
    }
    let states: Vec<String> =
        lines.iter().filter_map(|line| line.split_once('|').map(|(_, rest)| rest.replace('|', " nodes "))).collect();
    Ok(format!("partition {partition} is up ({})", states.join(", ")))
}

async fn events(url: &str, stream: &str, prefix: &str) -> Result<String, String> {
    let events = factory_cluster::jetstream::EventStream::connect(url, stream, prefix)
        .await
        .map_err(|error| format!("{url}: {error}"))?;
    let messages = events.check().await.map_err(|error| format!("{url}: {error}"))?;
    Ok(format!("{url}: stream {stream} holds {messages} messages"))
}
