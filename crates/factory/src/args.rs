//! The command line's flags and subcommands as clap types, and nothing else.
//!
//! The leaf of the CLI's layers (`ARCHITECTURE.md`): every command module reads its flags from
//! here, so this module imports nothing from the crate; what a subcommand does lives in its
//! command module, and which module that is lives in `main.rs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "factory",
    version,
    about = "The Sovereign AI Factory: governed data, training and serving in one binary"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the factory: API server, workers and background tasks, in one process
    Up(UpArgs),
    /// Check that what the configuration connects to answers (database, object store, shared
    /// limits, event stream) and say what is wrong
    Doctor(UpArgs),
    /// Run one job to its end in a Slurm job step: what the Slurm executor's jobs run on a
    /// compute node (not for use by hand)
    Worker(WorkerArgs),
    /// Work with configuration files
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage tenants
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Manage API keys
    #[command(subcommand)]
    Key(KeyCommand),
    /// Enqueue, inspect and cancel jobs
    #[command(subcommand)]
    Job(JobCommand),
    /// Verify the audit log and fetch checkpoints, proofs and records
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Define datasets, ingest versions and read them back
    #[command(subcommand)]
    Dataset(DatasetCommand),
    /// Maintain the object store
    #[command(subcommand)]
    Objects(ObjectsCommand),
    /// Train tokenizers and models on governed datasets
    #[command(subcommand)]
    Run(RunCommand),
    /// Train (or, with --base, fine-tune) a model on DATASET@VERSION and register it as the
    /// next version of --name
    Train(TrainArgs),
    /// The model registry: list, show, verify, alias, export, import
    #[command(subcommand)]
    Model(ModelCommand),
    /// Serve registered models under a public name (weighted variants)
    #[command(subcommand)]
    Deploy(DeployCommand),
    /// Report a feedback metric on an answer (--inference ID) or an episode (--episode ID)
    Feedback {
        #[arg(long)]
        inference: Option<String>,
        #[arg(long)]
        episode: Option<String>,
        #[arg(long)]
        metric: String,
        /// true/false for boolean metrics, a number for float ones
        #[arg(long)]
        value: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Retraining pipelines: declare (TOML), list, show, trigger, follow runs
    #[command(subcommand)]
    Pipeline(PipelineCommand),
    /// Drift monitors of a deployment
    #[command(subcommand)]
    Drift(DriftCommand),
    /// Run the whole loop end to end on a fresh data directory: ingest, train, deploy, traffic
    /// and feedback, a shift, drift, retraining, gate, canary, promotion
    Demo(DemoArgs),
    /// Chat with a deployment through the OpenAI-compatible API, streaming the answer
    Chat(ChatArgs),
    /// Batches: answer every row of a dataset version through a deployment, as a new dataset
    /// version; show and cancel batches (files of requests go through /v1/files and /v1/batches)
    #[command(subcommand)]
    Batch(BatchCommand),
}

#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// Render each row of --dataset NAME@VERSION with --template (minijinja; the row's columns
    /// are its variables) into a message to DEPLOYMENT, at batch priority, and write the answers
    /// as the next version of --output; waits and shows progress unless --no-wait
    Run(BatchRunArgs),
    /// Show a batch: status, counts, its output
    Show(BatchId),
    /// Ask a batch to stop; what it answered so far is kept
    Cancel(BatchId),
}

#[derive(Debug, Args)]
pub struct BatchId {
    pub id: String,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Args)]
pub struct BatchRunArgs {
    pub deployment: String,
    /// NAME@VERSION
    #[arg(long)]
    pub dataset: String,
    /// A file holding the template of each row's message
    #[arg(long)]
    pub template: PathBuf,
    /// The dataset the answers go to (default: DATASET-answers); defined when missing, with the
    /// residency of the data and the models
    #[arg(long)]
    pub output: Option<String>,
    /// Fields every request carries, as JSON, e.g. '{"max_tokens": 64, "temperature": 0}'
    #[arg(long, default_value = "{}")]
    pub request: String,
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    pub deployment: String,
    /// Send this one message and exit (otherwise read messages from stdin, one per line)
    #[arg(long)]
    pub message: Option<String>,
    #[arg(long)]
    pub max_tokens: Option<usize>,
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// A fresh directory for the demo's factory (created if missing)
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Keep the factory serving after the demo (until Ctrl-C)
    #[arg(long)]
    pub serve: bool,
    /// A smaller run of the same loop (the test suite's)
    #[arg(long)]
    pub quick: bool,
    /// Where tinyshakespeare.txt and twain-tom-sawyer-en.txt are (default: FACTORY_SHARED_DATA,
    /// then shared/data or ../shared/data)
    #[arg(long)]
    pub corpora: Option<PathBuf>,
    /// The port to serve on (0 picks a free one)
    #[arg(long, default_value_t = 0)]
    pub port: u16,
}

#[derive(Debug, Subcommand)]
pub enum PipelineCommand {
    /// Declare or replace pipeline NAME from a TOML file
    Apply {
        name: String,
        #[arg(long)]
        file: PathBuf,
        #[command(flatten)]
        tenant: TenantFlag,
        #[command(flatten)]
        remote: Remote,
    },
    /// List the tenant's pipelines
    List {
        #[command(flatten)]
        tenant: TenantFlag,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show a pipeline's declaration
    Show {
        name: String,
        #[command(flatten)]
        tenant: TenantFlag,
        #[command(flatten)]
        remote: Remote,
    },
    /// A pipeline's runs, newest first, with each step's result
    Runs {
        name: String,
        #[command(flatten)]
        tenant: TenantFlag,
        #[command(flatten)]
        remote: Remote,
    },
    /// Start a run by hand (folded into the active run if there is one)
    Trigger {
        name: String,
        #[command(flatten)]
        tenant: TenantFlag,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
pub enum DriftCommand {
    /// The monitors' readings and thresholds, and the alarms raised
    Show {
        deployment: String,
        #[command(flatten)]
        tenant: TenantFlag,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeployCommand {
    /// Deploy NAME with variants MODEL[=WEIGHT], e.g. --variant bard@production=90 --variant bard@candidate=10
    Create {
        name: String,
        #[arg(long = "variant", required = true)]
        variants: Vec<String>,
        #[command(flatten)]
        tenant: TenantFlag,
        #[command(flatten)]
        remote: Remote,
    },
    /// List the tenant's deployments
    List {
        #[command(flatten)]
        tenant: TenantFlag,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show a deployment's spec and revision
    Show {
        name: String,
        #[command(flatten)]
        tenant: TenantFlag,
        #[command(flatten)]
        remote: Remote,
    },
    /// Replace a deployment's variants and weights
    SetWeights {
        name: String,
        #[arg(long = "variant", required = true)]
        variants: Vec<String>,
        #[command(flatten)]
        tenant: TenantFlag,
        #[command(flatten)]
        remote: Remote,
    },
    /// Delete a deployment
    Delete {
        name: String,
        #[command(flatten)]
        tenant: TenantFlag,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// NAME@VERSION of a dataset ingested with a text column
    #[arg(long)]
    pub dataset: String,
    /// The model to register the result under (MODEL@1, MODEL@2, ...)
    #[arg(long)]
    pub name: String,
    /// tiny, small, ref-small, base or 125m (default tiny)
    #[arg(long)]
    pub preset: Option<String>,
    /// A JSON file with any of model, train, tokenizer and eval_sets; flags win over it
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Stop training after this many seconds (the run still evaluates and registers)
    #[arg(long)]
    pub max_seconds: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The tokenizer's vocabulary (trained on the dataset first)
    #[arg(long)]
    pub vocab_size: Option<usize>,
    /// Fine-tune this registered model (NAME@VERSION or NAME@ALIAS) instead of training anew
    #[arg(long)]
    pub base: Option<String>,
    /// Use this registered model's tokenizer (NAME@VERSION) instead of training one
    #[arg(long, conflicts_with = "base")]
    pub tokenizer: Option<String>,
    /// JSON lines of {"prompt": ..., "expected": ...}, scored on the final model
    #[arg(long)]
    pub eval_set: Option<PathBuf>,
    /// For the model card
    #[arg(long)]
    pub intended_use: Option<String>,
    /// Follow the run with a progress bar; exit non-zero unless it succeeds
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub tenant: TenantFlag,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// List the tenant's models with their latest version and aliases
    List {
        #[command(flatten)]
        tenant: TenantFlag,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show a model's versions, or one version (NAME@VERSION or NAME@ALIAS) with its manifest
    Show {
        model: String,
        #[command(flatten)]
        tenant: TenantFlag,
        #[command(flatten)]
        remote: Remote,
    },
    /// Check NAME@VERSION's signature and every file's digest, here on the client
    Verify {
        model: String,
        /// The verifier key to trust (model-signing.pub); default: the keys the server trusts
        #[arg(long)]
        key: Option<String>,
        #[command(flatten)]
        tenant: TenantFlag,
        #[command(flatten)]
        remote: Remote,
    },
    /// Point ALIAS (production, staging, candidate, ...) at VERSION
    Alias {
        model: String,
        alias: String,
        version: i64,
        #[command(flatten)]
        tenant: TenantFlag,
        #[command(flatten)]
        remote: Remote,
    },
    /// Write NAME@VERSION as a signed air-gap bundle (tar), or as one GGUF file for llama.cpp
    /// and Ollama (--format gguf)
    Export {
        model: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "bundle")]
        format: ExportFormat,
        /// The jurisdiction the export goes to (required for GGUF, which leaves the factory's
        /// governance): refused unless the model may live there
        #[arg(long)]
        destination: Option<String>,
        #[command(flatten)]
        tenant: TenantFlag,
        #[command(flatten)]
        remote: Remote,
    },
    /// Register NAME@VERSION's weights in GGUF blocks of --type as the next version of NAME
    Quantize {
        model: String,
        /// q8_0, q6_k, q5_k, q4_k, q4_0 or f16
        #[arg(long = "type")]
        kind: String,
        #[command(flatten)]
        tenant: TenantFlag,
        #[command(flatten)]
        remote: Remote,
    },
    /// Import a bundle made by `model export` (its signer must be trusted here)
    Import {
        file: PathBuf,
        #[command(flatten)]
        tenant: TenantFlag,
        #[command(flatten)]
        remote: Remote,
    },
    /// Import a local Hugging Face Llama-family directory as the next version of --name
    ImportHf(ImportHfArgs),
    /// Import a GGUF file (Llama, Mistral, Qwen2, Qwen3) as the next version of --name
    ImportGguf(ImportGgufArgs),
}

/// What `model export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// A signed air-gap bundle (tar) another factory imports
    Bundle,
    /// One GGUF file, for llama.cpp and Ollama
    Gguf,
}

#[derive(Debug, Args)]
pub struct ImportHfArgs {
    pub dir: PathBuf,
    #[command(flatten)]
    pub declared: Declared,
}

#[derive(Debug, Args)]
pub struct ImportGgufArgs {
    pub file: PathBuf,
    #[command(flatten)]
    pub declared: Declared,
}

/// What an import declares of the model it brings in, and where it sends it.
#[derive(Debug, Args)]
pub struct Declared {
    #[arg(long)]
    pub name: String,
    /// Where the model may live (imports declare it; trained models derive it)
    #[arg(long)]
    pub jurisdiction: String,
    #[arg(long, default_value = "internal")]
    pub classification: String,
    #[arg(long)]
    pub intended_use: Option<String>,
    #[command(flatten)]
    pub tenant: TenantFlag,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Start a run on DATASET@VERSION; with --follow, show its progress until it ends
    Create(CreateRunArgs),
    /// Show a run: state, attempts, result
    Show {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print a run's metrics (per step, and validation)
    Metrics {
        id: String,
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Ask a run to stop
    Cancel {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print a run's steps and validations; with -f, keep following until it ends
    Logs {
        id: String,
        #[arg(short = 'f', long)]
        follow: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Args)]
pub struct CreateRunArgs {
    /// tokenizer or pretrain
    #[arg(long, default_value = "pretrain")]
    pub kind: String,
    /// NAME@VERSION
    #[arg(long)]
    pub dataset: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 1024)]
    pub vocab_size: usize,
    /// tiny, small, base or 125m
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Training settings as JSON, e.g. '{"steps": 300, "seq_len": 128}'
    #[arg(long, default_value = "{}")]
    pub train: String,
    #[arg(long)]
    pub follow: bool,
    #[command(flatten)]
    pub tenant: TenantFlag,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Subcommand)]
pub enum ObjectsCommand {
    /// Delete objects that no version references (what a crash mid-upload leaves behind)
    Sweep {
        /// Only objects older than this many seconds (default: the server's objects.orphan_grace_secs)
        #[arg(long)]
        grace_secs: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
pub enum DatasetCommand {
    /// Define a dataset
    // The one `--tenant` with help text; kept so that `dataset create --help` reads as before.
    #[command(mut_arg("tenant", |arg| arg.help("Platform keys name the tenant")))]
    Create {
        name: String,
        /// public, internal, confidential or secret
        #[arg(long)]
        classification: String,
        #[arg(long)]
        jurisdiction: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// A tag; repeat for several
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Default PII treatment: keep, mask, hash or drop_column
        #[arg(long, default_value = "mask")]
        pii: String,
        #[command(flatten)]
        tenant: TenantFlag,
        #[command(flatten)]
        remote: Remote,
    },
    /// List the datasets you may see
    List {
        #[command(flatten)]
        tenant: TenantFlag,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show a dataset and its versions
    Show {
        name: String,
        #[command(flatten)]
        tenant: TenantFlag,
        #[command(flatten)]
        remote: Remote,
    },
    /// Stream a local file in as the dataset's next version, with a progress bar
    Ingest(IngestArgs),
    /// Print rows of a version as JSON
    Rows {
        name: String,
        #[arg(long)]
        version: i64,
        #[arg(long, default_value_t = 0)]
        offset: u64,
        #[arg(long, default_value_t = 20)]
        limit: u64,
        #[command(flatten)]
        tenant: TenantFlag,
        #[command(flatten)]
        remote: Remote,
    },
    /// Download a version as one Parquet file
    Download {
        name: String,
        #[arg(long)]
        version: i64,
        /// Where to write it
        #[arg(long, short)]
        output: PathBuf,
        #[command(flatten)]
        tenant: TenantFlag,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    pub name: String,
    pub file: PathBuf,
    /// jsonl, csv, parquet or text (default: from the file name)
    #[arg(long)]
    pub format: Option<String>,
    #[arg(long)]
    pub text_column: Option<String>,
    /// fail or skip
    #[arg(long, default_value = "fail")]
    pub on_error: String,
    /// off, flag or remove
    #[arg(long, default_value = "off")]
    pub dedup: String,
    /// text files: one record per paragraph
    #[arg(long)]
    pub paragraphs: bool,
    #[command(flatten)]
    pub tenant: TenantFlag,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// A TOML configuration file (see factory.example.toml)
    #[arg(long, env = "FACTORY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the embedded database, objects and keys live [default: ./factory-data]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080]
    #[arg(long)]
    pub listen: Option<String>,
    /// Use PostgreSQL instead of the embedded SQLite, e.g. postgres://user@host/db
    #[arg(long)]
    pub database_url: Option<String>,
    /// Jurisdiction of the embedded default site [default: local]
    #[arg(long)]
    pub jurisdiction: Option<String>,
    /// What this process does: all, or any of api, gateway and worker, comma-separated
    /// [default: all]
    #[arg(long)]
    pub role: Option<String>,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The factory job this step runs
    #[arg(long)]
    pub job: String,
    #[command(flatten)]
    pub up: UpArgs,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file and print the resolved configuration
    Check { file: PathBuf },
    /// Print an example configuration with every key and its default
    Example,
}

/// Where the server is and who is asking.
#[derive(Debug, Args, Clone)]
pub struct Remote {
    /// The factory's base URL
    #[arg(long, env = "FACTORY_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub url: String,
    /// An API key (the platform admin's is in DATA_DIR/admin.key)
    #[arg(long, env = "FACTORY_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
}

/// `--tenant`: the tenant a platform key acts for (a tenant's own key needs none).
#[derive(Debug, Args, Clone)]
pub struct TenantFlag {
    #[arg(long)]
    pub tenant: Option<String>,
}

impl TenantFlag {
    /// The tenant named on the command line, if any.
    pub fn name(&self) -> Option<&str> {
        self.tenant.as_deref()
    }
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant
    Create {
        name: String,
        /// An allowed jurisdiction; repeat for several
        #[arg(long = "jurisdiction", required = true)]
        jurisdictions: Vec<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show a tenant
    Show {
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Limit a tenant's compute: jobs at once and worker-seconds in all (platform admins)
    Quota {
        name: String,
        /// Jobs running at once (omit for no limit)
        #[arg(long)]
        max_concurrent_jobs: Option<i64>,
        /// Worker-seconds all its jobs may use (omit for no limit)
        #[arg(long)]
        compute_seconds: Option<i64>,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create an API key for a tenant; its secret is printed once
    Create {
        #[arg(long)]
        tenant: String,
        /// admin, steward, engineer, app or auditor
        #[arg(long)]
        role: String,
        #[arg(long, default_value = "")]
        description: String,
        /// RFC 3339 expiry, e.g. 2027-01-01T00:00:00Z
        #[arg(long)]
        expires_at: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Revoke an API key
    Revoke {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Enqueue a job
    Enqueue {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        kind: String,
        /// The job's input as JSON
        #[arg(long, default_value = "{}")]
        payload: String,
        #[arg(long, default_value_t = 0)]
        priority: i64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show a job
    Show {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Cancel a job
    Cancel {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the whole log offline from the database and check it against every
    /// checkpoint, stored or kept by a witness
    Verify(VerifyArgs),
    /// Fetch a signed checkpoint of the log as it is now
    Checkpoint {
        #[command(flatten)]
        remote: Remote,
    },
    /// Fetch an inclusion or consistency proof
    #[command(subcommand)]
    Proof(ProofCommand),
    /// Fetch audit records
    Records {
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProofCommand {
    /// Proof that record INDEX is in the tree of SIZE records
    Inclusion {
        #[arg(long)]
        index: u64,
        #[arg(long)]
        size: u64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Proof that the tree of OLD records is a prefix of the tree of NEW records
    Consistency {
        #[arg(long)]
        old: u64,
        #[arg(long)]
        new: u64,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The factory's data directory (for the embedded database and audit.pub)
    #[arg(long, default_value = "./factory-data")]
    pub data_dir: PathBuf,
    /// Verify a PostgreSQL-backed factory instead of the embedded database
    #[arg(long)]
    pub database_url: Option<String>,
    /// The verifier key to trust; defaults to DATA_DIR/audit.pub. Pin it from a copy kept
    /// elsewhere so that a forged key file cannot vouch for a forged log
    #[arg(long)]
    pub public_key: Option<String>,
    /// A trusted checkpoint: a file as the factory published it (or a signed note from
    /// `factory audit checkpoint`), copied by a witness. The log must extend it. Repeatable; a
    /// directory adds every published checkpoint in it. Published checkpoints found in
    /// DATA_DIR/checkpoints are checked too
    #[arg(long = "checkpoint", value_name = "PATH")]
    pub checkpoints: Vec<PathBuf>,
    /// The factory's `audit.checkpoint_interval_secs`. Records that no checkpoint covers may
    /// span at most twice this plus a minute; a longer span means later checkpoints were
    /// deleted (or signing stopped). 0 skips the check
    #[arg(long, default_value_t = 60)]
    pub checkpoint_interval_secs: u64,
}
