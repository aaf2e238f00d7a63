//! Opening the factory: the data directory, the metadata and object stores, the policies, the
//! audit signing key, and the platform admin created on first start.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use factory_audit::checkpoint::{NoteSigner, NoteVerifier};
use factory_authz::CedarAuthorizer;
use factory_config::{Config, ObjectSettings};
use factory_core::{AccessRequest, Action, Principal, Resource, Role};
use factory_objects::{ContentStore, S3Settings};
use factory_store::{CheckpointIssuer, Event, Store};

use crate::lookups::Lookups;
use crate::metrics::{MeteredDecisionPoint, Metrics};
use crate::serving::{EngineOptions, Engines};
use crate::state::AppState;

pub const ADMIN_KEY_FILE: &str = "admin.key";
pub const SIGNING_KEY_FILE: &str = "audit-signing.key";
pub const VERIFIER_KEY_FILE: &str = "audit.pub";
pub const PII_SECRET_FILE: &str = "pii-hash.key";
pub const MODEL_SIGNING_KEY_FILE: &str = "model-signing.key";
pub const MODEL_VERIFIER_KEY_FILE: &str = "model-signing.pub";

/// The opened factory, and the platform admin key if this start created it.
pub struct Opened {
    pub state: AppState,
    pub new_admin_key: Option<String>,
}

pub async fn open(config: Config) -> anyhow::Result<Opened> {
    open_with(config, true).await
}

/// Opens the factory for one job beside the processes already serving it from the same data
/// directory (`factory worker --job` on a Slurm node): their spooled files stay.
pub async fn open_beside(config: Config) -> anyhow::Result<Opened> {
    open_with(config, false).await
}

async fn open_with(config: Config, clear_spool: bool) -> anyhow::Result<Opened> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    // Spooled uploads, imports and downloads are this process's alone: what a crash left there
    // is garbage.
    let spool = config.data_dir.join("tmp");
    if clear_spool && spool.exists() {
        std::fs::remove_dir_all(&spool).with_context(|| format!("cannot clear {}", spool.display()))?;
    }
    let metrics = Arc::new(Metrics::new());
    let authorizer = CedarAuthorizer::from_files(&config.authz.policy_files)?;
    let pdp = Arc::new(MeteredDecisionPoint { inner: authorizer, metrics: metrics.clone() });
    let store = Store::open(&config.effective_database_url()).await?;
    let objects = object_store(&config)?;
    let signer = load_or_create_signer(&config.data_dir, &config.audit.origin, SIGNING_KEY_FILE, VERIFIER_KEY_FILE)?;
    let model_keys = Arc::new(model_keys(&config)?);
    // Every checkpoint is also published as a file outside the database, for witnesses to
    // copy: a log rewritten in the database cannot rewrite those. Created now so that an
    // unwritable directory stops the start instead of failing every checkpoint later.
    let checkpoint_dir = config.effective_checkpoint_dir();
    std::fs::create_dir_all(&checkpoint_dir)
        .with_context(|| format!("cannot create the checkpoint directory {}", checkpoint_dir.display()))?;
    let checkpoints =
        Arc::new(CheckpointIssuer::new(config.audit.origin.clone(), signer).publishing_to(checkpoint_dir));
    let new_admin_key = bootstrap_platform_admin(&store, pdp.as_ref(), &config.data_dir).await?;
    let job_kinds = crate::workers::WorkerPool::with_builtin_handlers(store.clone(), pdp.clone(), 0, config.jobs.lease)
        .handlers
        .keys()
        .map(|kind| kind.to_string())
        .collect();
    let admission = crate::admission::Admission::new(crate::admission::Limits {
        requests: config.server.max_in_flight,
        requests_per_tenant: config.server.max_in_flight_per_tenant,
        transfers: config.server.max_transfers,
        transfers_per_tenant: config.server.max_transfers_per_tenant,
    });
    let pii_secret = Arc::new(load_or_create_secret(&config.data_dir.join(PII_SECRET_FILE))?);
    let inference_log = Arc::new(crate::inference_log::InferenceLog::new(metrics.clone()));
    let objects = Arc::new(objects);
    let engine_options = EngineOptions {
        kv_cache_half: config.serving.kv_cache_half,
        max_batch: config.serving.max_batch,
        max_waiting: config.serving.max_waiting,
        prefill_chunk: config.serving.prefill_chunk,
        adapter_cache_bytes: config.serving.adapter_cache_bytes,
        prefix_cache_bytes: config.serving.prefix_cache_bytes,
    };
    let limits = match &config.serving.shared_state {
        None => crate::limits::Limits::default(),
        Some(url) => crate::limits::Limits::shared(
            url,
            config.serving.shared_state_fail_open,
            metrics.cluster.shared_state_failures.clone(),
        )
        .map_err(|error| anyhow::anyhow!("serving.shared_state: {error}"))?,
    };
    let engines = Arc::new(Engines::new(
        objects.clone(),
        model_keys.clone(),
        engine_options,
        config.data_dir.join("tmp"),
        metrics.clone(),
        Arc::new(limits),
        Arc::new(crate::endpoints::Endpoints::from_config(&config.serving.endpoints)),
    ));
    let lookups = Arc::new(Lookups::new(store.clone()));
    let state = AppState {
        config: Arc::new(config),
        store,
        pdp,
        objects,
        checkpoints,
        metrics,
        job_kinds: Arc::new(job_kinds),
        admission,
        pii_secret,
        pending_objects: Arc::default(),
        model_keys,
        engines,
        lookups,
        inference_log,
        drift: Arc::default(),
    };
    Ok(Opened { state, new_admin_key })
}

/// The object store the configuration names: a local directory (by default inside the data
/// directory) or an S3 bucket.
pub fn object_store(config: &Config) -> Result<ContentStore, factory_objects::ObjectError> {
    match &config.objects {
        ObjectSettings::Local { path } => ContentStore::local(&local_objects_dir(config, path.as_deref())),
        ObjectSettings::S3(s3) => ContentStore::s3(&S3Settings {
            bucket: s3.bucket.clone(),
            endpoint: s3.endpoint.clone(),
            region: s3.region.clone(),
            access_key_id: s3.access_key_id.clone(),
            secret_access_key: s3.secret_access_key.clone(),
            allow_http: s3.allow_http,
            prefix: s3.prefix.clone(),
        }),
    }
}

/// Where a local object store keeps its files: the configured path, or `objects` in the data
/// directory.
pub fn local_objects_dir(config: &Config, path: Option<&std::path::Path>) -> std::path::PathBuf {
    path.map_or_else(|| config.data_dir.join("objects"), std::path::Path::to_path_buf)
}

/// Writes `contents` to `path` readable by the owner only, never leaving a partial file.
pub fn write_private_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    let staging = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&staging)
        .with_context(|| format!("cannot write {}", staging.display()))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&staging, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// A 256-bit secret kept hex-encoded in a mode-0600 file, created on first use.
fn load_or_create_secret(path: &Path) -> anyhow::Result<[u8; 32]> {
    if path.exists() {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let bytes = factory_core::secrets::decode_hex_secret(text.trim())
            .ok_or_else(|| anyhow::anyhow!("{} does not hold a 64-digit hex secret", path.display()))?;
        return Ok(bytes);
    }
    let secret = factory_core::secrets::random_bytes();
    write_private_file(path, &format!("{}\n", factory_core::secrets::encode_hex(&secret)))?;
    Ok(secret)
}

/// The registry's signing key (its own, so audit and artifact keys can be rotated and
/// guarded apart), and the keys whose model signatures this installation trusts.
fn model_keys(config: &Config) -> anyhow::Result<crate::registry::ModelKeys> {
    let base = config.audit.origin.strip_suffix("/audit").unwrap_or(&config.audit.origin);
    let name = format!("{base}/models");
    let signer = load_or_create_signer(&config.data_dir, &name, MODEL_SIGNING_KEY_FILE, MODEL_VERIFIER_KEY_FILE)?;
    let mut trusted = vec![signer.verifier()];
    for (index, key) in config.registry.trusted_keys.iter().enumerate() {
        let verifier = NoteVerifier::from_verifier_key(key)
            .map_err(|e| anyhow::anyhow!("registry.trusted_keys[{index}] is not a verifier key: {e}"))?;
        trusted.push(verifier);
    }
    Ok(crate::registry::ModelKeys { signer, trusted })
}

fn load_or_create_signer(
    data_dir: &Path,
    origin: &str,
    secret_file: &str,
    public_file: &str,
) -> anyhow::Result<NoteSigner> {
    let key_path = data_dir.join(secret_file);
    let signer = if key_path.exists() {
        let text = std::fs::read_to_string(&key_path).with_context(|| format!("cannot read {}", key_path.display()))?;
        NoteSigner::from_secret_key_text(text.trim())
            .map_err(|e| anyhow::anyhow!("{} is not a valid signing key: {e}", key_path.display()))?
    } else {
        let signer = NoteSigner::generate(origin, factory_core::secrets::random_bytes())
            .map_err(|e| anyhow::anyhow!("audit.origin {origin:?} cannot name a signing key: {e}"))?;
        write_private_file(&key_path, &signer.secret_key_text())?;
        signer
    };
    std::fs::write(data_dir.join(public_file), format!("{}\n", signer.verifier_key()))?;
    Ok(signer)
}

/// Creates the platform admin through the governed path (as the `system` principal) when
/// none exists, writes its secret to `admin.key` (mode 0600) and returns it.
async fn bootstrap_platform_admin(
    store: &Store,
    pdp: &dyn factory_core::PolicyDecisionPoint,
    data_dir: &Path,
) -> anyhow::Result<Option<String>> {
    if store.has_platform_admin().await? {
        return Ok(None);
    }
    let request = AccessRequest::new(&Principal::system(), Action::KeyCreate, Resource::platform())
        .with_context("role", Role::Admin.as_str());
    let mut change = store.begin_change(pdp, request, "bootstrap").await?;
    let issued = change.create_api_key(None, Role::Admin, "platform admin, created at first start", None).await?;
    let details = serde_json::json!({ "key": issued.key.id, "role": "admin", "scope": "platform" });
    change.commit(details.clone(), Event::new("key.created", details)).await?;
    write_private_file(&data_dir.join(ADMIN_KEY_FILE), &format!("{}\n", issued.secret))?;
    Ok(Some(issued.secret))
}
