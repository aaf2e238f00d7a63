//! Model versions as the registry keeps them: the keys that sign and verify them, a draft of a
//! version about to be registered (`service::models::register` is the one path that registers
//! it), and reading a version back only after its signature and every file's digest check out.

use bytes::Bytes;
use factory_core::TenantName;
use factory_objects::{ContentStore, ObjectDigest};
use factory_registry::{Lineage, ModelManifest, NoteSigner, NoteVerifier, Residency};
use factory_store::models::ModelVersion;
use factory_store::Store;

use crate::service_error::{ErrorKind, ServiceError};

pub struct ModelKeys {
    pub signer: NoteSigner,
    /// This installation's own key first, then `registry.trusted_keys`.
    pub trusted: Vec<NoteVerifier>,
}

/// The file a GGUF import keeps, whole, in the version.
pub const GGUF_FILE: &str = "model.gguf";
/// A LoRA fine-tune's adapters and their PEFT config, beside its merged weights.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

/// Where a file of a new version comes from.
pub enum FileSource {
    /// Already in the object store (a run's weights and tokenizer).
    Stored(String),
    Bytes(Bytes),
}

pub struct DraftFile {
    pub path: String,
    pub source: FileSource,
}

/// How the version gets its signature.
pub enum Signing {
    /// Build the manifest here, with a generated model card, and sign it with our key.
    Sign { intended_use: Option<String> },
    /// An imported bundle's manifest, already verified against a trusted key: kept verbatim so
    /// its provenance survives the move.
    Signed { note: String, manifest: Box<ModelManifest>, signer: String },
}

/// A version about to be registered.
pub struct Draft {
    pub tenant: TenantName,
    pub name: String,
    /// Imports keep the number they were given where they were made; others get the next one.
    pub version: Option<i64>,
    /// `llama` (generates text) or `bert` (embeds it).
    pub architecture: String,
    pub parameters: u64,
    pub residency: Residency,
    pub lineage: Lineage,
    pub evals: serde_json::Value,
    pub files: Vec<DraftFile>,
    pub signing: Signing,
}

/// The build that produced a model, for its lineage.
pub fn code_version() -> String {
    format!("factory {}", env!("CARGO_PKG_VERSION"))
}

/// Loads a version's signed manifest and checks its signature against the trusted keys.
pub async fn open_manifest(
    objects: &ContentStore,
    keys: &ModelKeys,
    version: &ModelVersion,
) -> Result<(ModelManifest, String), ServiceError> {
    let digest: ObjectDigest = version.manifest_digest.parse().map_err(ServiceError::fault)?;
    let note = objects
        .get(&digest)
        .await
        .map_err(|e| ServiceError::new(ErrorKind::VerificationFailed, format!("manifest: {e}")))?;
    let note =
        String::from_utf8(note.to_vec()).map_err(|_| ServiceError::internal("the stored manifest is not UTF-8"))?;
    let (manifest, signer) = ModelManifest::open(&note, &keys.trusted)
        .map_err(|e| ServiceError::new(ErrorKind::VerificationFailed, e.to_string()))?;
    if manifest.name != version.name || manifest.version != version.version {
        return Err(ServiceError::new(
            ErrorKind::VerificationFailed,
            format!(
                "the manifest names {} but the registry row is {}@{}",
                manifest.reference(),
                version.name,
                version.version
            ),
        ));
    }
    Ok((manifest, signer))
}

/// Fetches one file of a verified manifest, checking its digest and size.
pub async fn fetch_file(objects: &ContentStore, manifest: &ModelManifest, path: &str) -> Result<Bytes, ServiceError> {
    let file = manifest.file(path).ok_or_else(|| ServiceError::not_found(format!("the model has no file {path}")))?;
    let digest: ObjectDigest = file.digest.parse().map_err(ServiceError::fault)?;
    let failed = |message: String| ServiceError::new(ErrorKind::VerificationFailed, format!("{path}: {message}"));
    let bytes = objects.get(&digest).await.map_err(|e| failed(e.to_string()))?;
    factory_registry::verify_file(file, &bytes).map_err(|e| failed(e.to_string()))?;
    Ok(bytes)
}

/// A version's file streamed into an unnamed file under `dir`, its digest checked as it
/// arrives (the stream's last item fails on a mismatch): for files too large to hold in memory,
/// a GGUF model's. The file is read from its start.
pub async fn fetch_to_file(
    objects: &ContentStore,
    manifest: &ModelManifest,
    path: &str,
    dir: std::path::PathBuf,
) -> Result<std::fs::File, ServiceError> {
    let file = manifest.file(path).ok_or_else(|| ServiceError::not_found(format!("the model has no file {path}")))?;
    let digest: ObjectDigest = file.digest.parse().map_err(ServiceError::fault)?;
    spool_object(objects, &digest, Some(file.size), path, dir).await
}

/// The object `digest` streamed into an unnamed file under `dir` (`path` names it in errors),
/// its digest, and its size when one is `expected`, checked as it arrives; read from its start.
pub async fn spool_object(
    objects: &ContentStore,
    digest: &ObjectDigest,
    expected: Option<u64>,
    path: &str,
    dir: std::path::PathBuf,
) -> Result<std::fs::File, ServiceError> {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let failed = |message: String| ServiceError::new(ErrorKind::VerificationFailed, format!("{path}: {message}"));
    let spooled = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        tempfile::tempfile_in(&dir)
    })
    .await
    .map_err(ServiceError::fault)?
    .map_err(|e| ServiceError::internal(format!("spooling {path}: {e}")))?;
    let mut spooled = tokio::fs::File::from_std(spooled);
    let mut stream = objects.open_stream(digest).await.map_err(|e| failed(e.to_string()))?;
    let mut written = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| failed(e.to_string()))?;
        written += chunk.len() as u64;
        spooled.write_all(&chunk).await.map_err(|e| ServiceError::internal(format!("spooling {path}: {e}")))?;
    }
    if let Some(size) = expected.filter(|&size| size != written) {
        return Err(failed(format!("{written} bytes where the manifest lists {size}")));
    }
    spooled.flush().await.map_err(|e| ServiceError::internal(format!("spooling {path}: {e}")))?;
    let mut spooled = spooled.into_std().await;
    std::io::Seek::rewind(&mut spooled).map_err(|e| ServiceError::internal(format!("spooling {path}: {e}")))?;
    Ok(spooled)
}

/// The version `reference` (a number or an alias) of `name`, unauthorized: for lookups and the
/// factory's own bookkeeping, which authorize what they then do.
pub async fn version_of(
    store: &Store,
    tenant: &TenantName,
    name: &str,
    reference: &str,
) -> Result<Option<ModelVersion>, ServiceError> {
    let number = match reference.parse::<i64>() {
        Ok(number) => Some(number),
        Err(_) => {
            let aliases = store.model_aliases(tenant, name).await?;
            aliases.into_iter().find(|a| a.alias == reference).map(|a| a.version)
        }
    };
    Ok(match number {
        Some(number) => store.model_version(tenant, name, number).await?,
        None => None,
    })
}
