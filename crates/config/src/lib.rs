//! The factory's configuration: a TOML file, then `FACTORY_*` environment overrides, then
//! command-line flags, validated once at start.
//!
//! Loading happens in two stages. The sources are merged into one TOML table; then the table is
//! read key by key into `Config`, collecting every problem (unknown key, wrong type, value not in
//! the allowed set) with the dotted key it concerns, so an operator fixes a file in one pass.

mod read;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use factory_core::{Jurisdiction, SiteKind};

pub use read::{ConfigError, ConfigErrors};

/// Environment variables that belong to the CLI client, not to the server's configuration.
const CLIENT_ENV_VARS: &[&str] = &["FACTORY_URL", "FACTORY_API_KEY", "FACTORY_CONFIG", "FACTORY_LOG"];

/// The resolved configuration the rest of the factory reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// `None` selects the embedded SQLite database inside `data_dir`.
    pub database_url: Option<String>,
    /// The jurisdiction of the embedded default site.
    pub jurisdiction: Jurisdiction,
    pub sites: Vec<Site>,
    pub server: ServerSettings,
    pub objects: ObjectSettings,
    pub orphans: OrphanSettings,
    pub audit: AuditSettings,
    pub authz: AuthzSettings,
    pub jobs: JobSettings,
    pub datasets: DatasetSettings,
    pub lineage: LineageSettings,
    pub registry: RegistrySettings,
    pub serving: ServingSettings,
    /// Feedback metrics clients may report, by name.
    pub feedback: std::collections::BTreeMap<String, FeedbackMetric>,
    pub drift: DriftSettings,
    pub pipelines: PipelineSettings,
    pub batch: BatchSettings,
    pub events: EventSettings,
    pub compute: ComputeSettings,
    /// Which secret-bearing environment variables (`UPSTREAM_KEY_*`, `WEBHOOK_SECRET_*`) each
    /// tenant's deployments and pipelines may name, by tenant: `[secrets] acme =
    /// ["UPSTREAM_KEY_PARTNER"]`. None by default, so no tenant can send another's key.
    pub secrets: std::collections::BTreeMap<String, Vec<String>>,
}

/// How often drift monitors read the inference log and feedback.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftSettings {
    pub interval: Duration,
}

/// Where pipelines may send `notify` webhooks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PipelineSettings {
    /// URL prefixes `notify` steps may POST to; none by default. Each webhook's HMAC secret
    /// comes from an environment variable named `WEBHOOK_SECRET_*`.
    pub webhooks: Vec<String>,
}

/// What the Batch API accepts and how hard a batch works its deployment's engine.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchSettings {
    /// The largest file `/v1/files` takes (`max_file_mb`, default 200, OpenAI's bound).
    pub max_file_bytes: u64,
    /// The most requests one batch may hold (`max_requests`, default 50,000, OpenAI's bound).
    pub max_requests: usize,
    /// Requests a running batch keeps outstanding on its engine (`concurrency`, default 32):
    /// enough to fill the engine's batch; the engine serves interactive requests first.
    pub concurrency: usize,
}

/// A feedback metric declared in `[feedback.metrics.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackMetric {
    /// `boolean` or `float`.
    pub kind: String,
    /// `higher` or `lower` is better.
    pub better: String,
    /// `inference` (one answer) or `episode` (a conversation, by `x-episode-id`).
    pub level: String,
}

/// The serving engine's limits, per loaded model.
#[derive(Debug, Clone, PartialEq)]
pub struct ServingSettings {
    /// Sequences decoded together in one step.
    pub max_batch: usize,
    /// Requests waiting for a slot; past it, new requests get 429 with Retry-After.
    pub max_waiting: usize,
    /// Prompt tokens prefilled per step, so long prompts do not stall running decodes.
    pub prefill_chunk: usize,
    /// Price per 1,000 tokens by registered model name: (prompt, completion). Models without an
    /// entry cost nothing.
    pub prices: std::collections::BTreeMap<String, (f64, f64)>,
    /// URL prefixes deployments may send requests to as upstream variants; none by default.
    pub upstreams: Vec<String>,
    /// The largest body the OpenAI-compatible routes accept (default 4 MiB); larger ones get 413
    /// before a byte is parsed.
    pub max_request_bytes: usize,
    /// Keys and values of the engines' caches in half precision (`kv_cache = "f16"`): half the
    /// memory per sequence and of the bytes attention reads (faster where memory bandwidth bounds
    /// it, as over many sequences), logits within about 1e-3 of full precision. Full precision
    /// (`"f32"`) by default, so served logits match training's forward pass.
    pub kv_cache_half: bool,
    /// The memory adapters of adapter versions may hold, summed over every base they run on
    /// (`adapter_cache_mb`, default 1024): an adapter loads when first asked for, and the one
    /// used longest ago leaves when the next would not fit.
    pub adapter_cache_bytes: usize,
    /// The most answers one request may ask for (`n`; `max_choices`, default 8): each holds a
    /// copy of the prompt's keys and values.
    pub max_choices: usize,
    /// What each engine may keep of prompts' keys and values for prompts that share a prefix
    /// with them (`prefix_cache_mb`, default 256; 0 turns prefix caching off).
    pub prefix_cache_bytes: usize,
    /// Where rate limits and budgets are kept when several gateways share them
    /// (`shared_state = "redis://host:6379"`); `None` keeps them in each process, so N gateways
    /// admit N times a limit.
    pub shared_state: Option<String>,
    /// Pools of OpenAI-compatible servers inside the border that deployment variants may
    /// name (`[serving.endpoints.NAME]`), by name.
    pub endpoints: std::collections::BTreeMap<String, EndpointSettings>,
    /// What a gateway does when the shared state cannot be reached
    /// (`shared_state_failure = "closed"`, the default, or `"open"`).
    pub shared_state_fail_open: bool,
}

/// Where jobs run: in the worker processes' own pools, or some kinds as Slurm jobs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ComputeSettings {
    /// `executor = "slurm"` with its `[compute.slurm]` settings; `None`: every job runs in a
    /// worker process's pool (`"local"`, the default).
    pub slurm: Option<SlurmSettings>,
}

/// How jobs become Slurm jobs (`sbatch`, `squeue`, `scancel` on the worker's host).
#[derive(Debug, Clone, PartialEq)]
pub struct SlurmSettings {
    pub partition: String,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// The longest a Slurm job may run; a tenant with less compute quota left gets less.
    pub time_limit_minutes: u64,
    /// Per job, unless the run asks for less (`compute` in its request).
    pub cpus: u64,
    pub memory_mb: u64,
    pub gpus: u64,
    /// The `factory` binary as the compute nodes see it; by default this process's own.
    pub binary: Option<PathBuf>,
    /// The job kinds sent to Slurm (training, fine-tuning and batches by default).
    pub kinds: Vec<String>,
    /// Where each Slurm job's output goes (`<dir>/<job>-<slurm job>.log`); a directory every
    /// node can write, by default `<data_dir>/slurm`.
    pub log_dir: Option<PathBuf>,
}

/// A pool of OpenAI-compatible servers (other factory gateways, or any server an operator runs
/// inside the border) that variants name as `{"endpoint": NAME, "model": ...}`.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSettings {
    /// Each replica's base URL up to and including `/v1`.
    pub urls: Vec<String>,
    /// Where the replicas run; a tenant's deployment may use them only if it allows it.
    pub jurisdiction: String,
    /// The environment variable (`UPSTREAM_KEY_*`, granted per tenant in `[secrets]`) holding
    /// the key the replicas expect.
    pub api_key_env: Option<String>,
    /// Checked every two seconds on each replica (`<url><health_path>`); default `/models`.
    pub health_path: String,
}

/// Where outbox events are published beside the in-process subscribers.
#[derive(Debug, Clone, PartialEq)]
pub struct EventSettings {
    /// A NATS server with JetStream (`nats_url = "nats://host:4222"`); `None` publishes nowhere.
    pub nats_url: Option<String>,
    /// The JetStream stream events are kept in (created when missing).
    pub stream: String,
    /// Events are published to `<subject_prefix>.events.<tenant>.<topic>`; pipeline triggers are
    /// read from `<subject_prefix>.triggers.<tenant>.<name>`.
    pub subject_prefix: String,
}

/// Whose signatures the model registry accepts on imported bundles, beside this
/// installation's own model-signing key.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RegistrySettings {
    /// Verifier keys (`<name>+<id>+<base64>`, as `model-signing.pub` holds) of other
    /// installations whose exported models may be imported here.
    pub trusted_keys: Vec<String>,
}

/// When objects that nothing references (left by a crash mid-ingest) are deleted.
#[derive(Debug, Clone, PartialEq)]
pub struct OrphanSettings {
    /// Only objects older than this are candidates, so uploads in flight in another process
    /// are never collected under their feet.
    pub grace: Duration,
    /// How often the server sweeps; zero turns the periodic sweep off.
    pub sweep_interval: Duration,
}

/// Where OpenLineage run events go besides the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct LineageSettings {
    /// The OpenLineage job namespace; jobs are named `<tenant>.<kind>.<subject>` inside it.
    pub namespace: String,
    /// A file that receives one event per line.
    pub file: Option<PathBuf>,
    /// An OpenLineage HTTP endpoint (such as Marquez's `/api/v1/lineage`) that receives each
    /// event as a POST.
    pub http_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DatasetSettings {
    /// Extra PII patterns as (name, regex), scanned for beside the built-in kinds.
    pub custom_pii: Vec<(String, String)>,
    /// How long an upload (or a download) may stream before it is cut off.
    pub transfer_timeout: Duration,
    /// Most columns a dataset may have; an upload that would add more is refused by line.
    pub max_columns: usize,
    /// What a gzip or zstd upload may expand to before it is refused.
    pub max_decompressed_bytes: u64,
    /// Memory an ingest may hold in rows between reading and writing a shard.
    pub max_buffered_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub name: String,
    pub jurisdiction: Jurisdiction,
    pub kinds: Vec<SiteKind>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub request_body_limit_bytes: usize,
    pub request_timeout: Duration,
    /// Requests handled at once before new ones get 503 with Retry-After.
    pub max_in_flight: usize,
    /// Of those, what one tenant's keys may hold; past it the tenant gets 429.
    pub max_in_flight_per_tenant: usize,
    /// Transfers (uploads, downloads, model imports and exports) at once, counted apart from
    /// requests so slow ones cannot take the API's slots; and one tenant's share of them.
    pub max_transfers: usize,
    pub max_transfers_per_tenant: usize,
    /// An upload slower than this on average, once `transfer_grace` has passed, is cut off.
    pub min_transfer_bytes_per_sec: u64,
    pub transfer_grace: Duration,
    pub json_logs: bool,
    /// OTLP/HTTP endpoint for trace export; `None` exports nothing (air-gapped by default).
    pub otlp_endpoint: Option<String>,
    /// How long SIGTERM waits for in-flight requests before exiting.
    pub shutdown_grace: Duration,
    /// What this process does (`[server] roles`, `--role`): any number of processes of each
    /// role share one database and one object store.
    pub roles: Roles,
}

/// The roles of a process: `api` serves the control plane (`/api/v1` and the console), signs
/// checkpoints and watches drift; `gateway` serves the OpenAI-compatible API (`/v1`); `worker`
/// runs jobs, delivers events and keeps schedules. `all` (the default) is all three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub api: bool,
    pub gateway: bool,
    pub worker: bool,
}

impl Roles {
    pub const ALL: Roles = Roles { api: true, gateway: true, worker: true };

    /// The roles' names, as configured and as `/readyz` reports them.
    pub fn names(&self) -> Vec<&'static str> {
        [("api", self.api), ("gateway", self.gateway), ("worker", self.worker)]
            .into_iter()
            .filter_map(|(name, held)| held.then_some(name))
            .collect()
    }
}

impl std::str::FromStr for Roles {
    type Err = String;

    /// `all`, or a comma-separated list of `api`, `gateway` and `worker`.
    fn from_str(text: &str) -> Result<Roles, String> {
        let mut roles = Roles { api: false, gateway: false, worker: false };
        for name in text.split(',').map(str::trim) {
            match name {
                "all" => roles = Roles::ALL,
                "api" => roles.api = true,
                "gateway" => roles.gateway = true,
                "worker" => roles.worker = true,
                other => return Err(format!("{other:?} is not a role; expected all, api, gateway or worker")),
            }
        }
        Ok(roles)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ObjectSettings {
    /// A directory; `None` means `<data_dir>/objects`.
    Local {
        path: Option<PathBuf>,
    },
    S3(S3ObjectSettings),
}

#[derive(Debug, Clone, PartialEq)]
pub struct S3ObjectSettings {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub allow_http: bool,
    pub prefix: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditSettings {
    /// The checkpoint origin line, which names this log to verifiers.
    pub origin: String,
    pub checkpoint_interval: Duration,
    /// Where every signed checkpoint is published as a file, outside the database, for
    /// witnesses to copy; `None` is `DATA_DIR/checkpoints` (see
    /// [`Config::effective_checkpoint_dir`]).
    pub checkpoint_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuthzSettings {
    pub policy_files: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobSettings {
    pub workers: usize,
    pub lease: Duration,
    pub max_attempts: u32,
    /// The largest model a run may train from scratch, in parameters: training holds weights,
    /// gradients and two optimizer moments (16 bytes a parameter) in this process.
    pub max_model_parameters: u64,
}

/// Values given as command-line flags; they win over the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct FlagOverrides {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub database_url: Option<String>,
    pub jurisdiction: Option<String>,
    /// `--role`: the process's roles, as `[server] roles` takes them.
    pub roles: Option<String>,
}

impl Config {
    /// Loads `file` (if any), applies the `FACTORY_*` variables from `env` and then `flags`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &FlagOverrides,
    ) -> Result<Config, ConfigErrors> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigErrors::single(ConfigError::new(path.display().to_string(), format!("cannot read: {e}")))
                })?;
                Self::parse_file_text(&path.display().to_string(), &text)?
            }
            None => toml::Table::new(),
        };
        let mut errors = Vec::new();
        for (name, value) in env {
            if !name.starts_with("FACTORY_") || CLIENT_ENV_VARS.contains(&name.as_str()) {
                continue;
            }
            let path: Vec<String> = name["FACTORY_".len()..].split("__").map(|s| s.to_ascii_lowercase()).collect();
            if let Err(error) = read::set_path(&mut table, &path, read::env_value(&value)) {
                errors.push(ConfigError::new(format!("environment variable {name}"), error));
            }
        }
        let flag_values = [
            ("data_dir", flags.data_dir.as_ref().map(|p| p.display().to_string())),
            ("listen", flags.listen.clone()),
            ("database_url", flags.database_url.clone()),
            ("jurisdiction", flags.jurisdiction.clone()),
        ];
        for (key, value) in flag_values {
            if let Some(value) = value {
                table.insert(key.to_string(), toml::Value::String(value));
            }
        }
        if let Some(roles) = &flags.roles {
            let path = ["server".to_string(), "roles".to_string()];
            if let Err(error) = read::set_path(&mut table, &path, toml::Value::String(roles.clone())) {
                errors.push(ConfigError::new("--role", error));
            }
        }
        let config = read::resolve(&table, &mut errors);
        match config {
            Some(config) if errors.is_empty() => Ok(config),
            _ => Err(ConfigErrors::new(errors)),
        }
    }

    /// Checks a file on its own, as `factory config check FILE` does.
    pub fn check_file(path: &Path) -> Result<Config, ConfigErrors> {
        Self::load(Some(path), std::iter::empty(), &FlagOverrides::default())
    }

    fn parse_file_text(source_name: &str, text: &str) -> Result<toml::Table, ConfigErrors> {
        text.parse::<toml::Table>().map_err(|e| {
            let location = e
                .span()
                .map(|span| {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("{source_name}:{line}")
                })
                .unwrap_or_else(|| source_name.to_string());
            ConfigErrors::single(ConfigError::new(location, format!("invalid TOML: {}", e.message())))
        })
    }

    /// The SQLite database used when no `database_url` is configured.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}?mode=rwc", self.data_dir.join("metadata.db").display()),
        }
    }

    /// The directory signed audit checkpoints are published to.
    pub fn effective_checkpoint_dir(&self) -> PathBuf {
        self.audit.checkpoint_dir.clone().unwrap_or_else(|| self.data_dir.join("checkpoints"))
    }

    /// An example file listing every key with its default, parsed by a test so it stays true.
    pub fn example_toml() -> &'static str {
        include_str!("../factory.example.toml")
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
