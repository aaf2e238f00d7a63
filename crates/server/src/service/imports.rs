//! Importing model versions from outside: an air-gap bundle another installation exported
//! (kept with its signature, if a trusted key made it), or a Hugging Face directory (checked to
//! load, then signed here). Who may import, and the declared residency, are decided before a
//! byte of the upload is read; the upload is spooled to disk (bounded) and parsed on the
//! blocking pool, and the version is registered through `models::register`.

use bytes::Bytes;
use factory_core::{AccessRequest, Action, Classification, Jurisdiction, Resource, TenantName};
use factory_model::gguf::Inspected;
use factory_registry::{read_bundle, tar_header, Lineage, Origin, Residency};
use factory_store::models::ModelVersion;
use futures::StreamExt;

use super::access::{authorize_as, hide_foreign_refusal, site_facts};
use super::models::{register, valid_model_name};
use super::Recorded;
use crate::caller::Caller;
use crate::registry::{Draft, DraftFile, FileSource, Signing, GGUF_FILE};
use crate::service_error::{ErrorKind, ServiceError};
use crate::state::AppState;

/// The most an import may carry. Imports are held in memory while they are verified (twice,
/// briefly), so this bounds their memory: a ~400M-parameter f32 model fits. Streaming imports
/// to disk would lift it.
pub const MAX_IMPORT_BYTES: u64 = 2 << 30;

/// What an importer declares of a model from outside: where it may live, how secret it is.
pub struct Declared {
    pub jurisdiction: String,
    /// public, internal (default), confidential or secret.
    pub classification: Option<String>,
    /// Goes into the model card.
    pub intended_use: Option<String>,
}

/// Spools an import's body to a file under the data directory, refusing it once it passes
/// `limit` bytes: the upload is held on disk, not in memory, while it arrives, and is
/// then read from the file once.
async fn spool<E: std::fmt::Display>(
    state: &AppState,
    body: impl futures::Stream<Item = Result<Bytes, E>> + Unpin,
    limit: u64,
) -> Result<std::fs::File, ServiceError> {
    use tokio::io::AsyncWriteExt;
    let dir = state.spool_dir();
    let file = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        tempfile::tempfile_in(&dir)
    })
    .await
    .map_err(ServiceError::fault)?
    .map_err(|e| ServiceError::internal(format!("spooling the import: {e}")))?;
    let mut file = tokio::fs::File::from_std(file);
    let mut stream = body;
    let mut received = 0u64;
    while let Some(chunk) =
        stream.next().await.transpose().map_err(|e| ServiceError::invalid(format!("upload: {e}")))?
    {
        received += chunk.len() as u64;
        if received > limit {
            return Err(ServiceError::new(ErrorKind::TooLarge, format!("imports are limited to {limit} bytes")));
        }
        file.write_all(&chunk).await.map_err(|e| ServiceError::internal(format!("spooling the import: {e}")))?;
    }
    file.flush().await.map_err(|e| ServiceError::internal(format!("spooling the import: {e}")))?;
    let mut file = file.into_std().await;
    std::io::Seek::rewind(&mut file).map_err(|e| ServiceError::internal(format!("spooling the import: {e}")))?;
    Ok(file)
}

/// Imports an air-gap bundle (`model.import`) into `tenant`, keeping its version number and
/// its signature, which must be a trusted key's.
pub async fn bundle<E: std::fmt::Display>(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    body: impl futures::Stream<Item = Result<Bytes, E>> + Unpin,
) -> Result<Recorded<ModelVersion>, ServiceError> {
    // Who may import at all is decided before a byte is read; the model's own residency is
    // decided once the bundle says what it is.
    let request = AccessRequest::new(
        &caller.principal,
        Action::ModelImport,
        Resource::model(tenant, "*", Classification::Public, None),
    )
    .with_context("jurisdiction_allowed", true)
    .with_context("storage_site", true);
    authorize_as(state, caller, &request, tenant).await?;
    let spooled = spool(state, body, MAX_IMPORT_BYTES).await?;
    let trusted = state.model_keys.trusted.clone();
    let (bundle, manifest, signer) = tokio::task::spawn_blocking(move || {
        let bundle = read_bundle(std::io::BufReader::new(spooled), MAX_IMPORT_BYTES)
            .map_err(|e| ServiceError::new(ErrorKind::VerificationFailed, e.to_string()))?;
        let (manifest, signer) =
            bundle.verify(&trusted).map_err(|e| ServiceError::new(ErrorKind::VerificationFailed, e.to_string()))?;
        // Signed by a trusted installation is not the same as safe to run here.
        check_chat_template(&bundle.files)?;
        Ok::<_, ServiceError>((bundle, manifest, signer))
    })
    .await
    .map_err(ServiceError::fault)??;
    valid_model_name(&manifest.name)?;
    let note = bundle.note.clone();
    let files = bundle
        .files
        .into_iter()
        .map(|(path, bytes)| DraftFile { path, source: FileSource::Bytes(Bytes::from(bytes)) })
        .collect();
    let draft = Draft {
        tenant: tenant.clone(),
        name: manifest.name.clone(),
        version: Some(manifest.version),
        architecture: manifest.architecture.clone(),
        parameters: manifest.parameters,
        residency: manifest.residency.clone(),
        lineage: manifest.lineage.clone(),
        evals: manifest.evals.clone(),
        files,
        signing: Signing::Signed { note, manifest: Box::new(manifest), signer },
    };
    let (version, committed) = register(state, &caller.principal, &caller.request_id, Action::ModelImport, draft)
        .await
        .map_err(|e| hide_foreign_refusal(caller, Some(tenant), e))?;
    Ok(Recorded { value: version, committed })
}

/// Decides, before a byte of the upload is read, that the caller may import `name` with the
/// residency it declares (`model.import`): the name, the declared jurisdiction and
/// classification, and the residency facts the policies decide on.
async fn authorize_declared(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    declared: &Declared,
) -> Result<(Jurisdiction, Classification), ServiceError> {
    valid_model_name(name)?;
    let jurisdiction: Jurisdiction =
        declared.jurisdiction.parse().map_err(|e| ServiceError::invalid(format!("jurisdiction: {e}")))?;
    let classification: Classification = declared
        .classification
        .as_deref()
        .unwrap_or("internal")
        .parse()
        .map_err(|e| ServiceError::invalid(format!("classification: {e}")))?;
    let (allowed, storage) = site_facts(state, tenant, &jurisdiction, factory_core::SiteKind::Storage).await?;
    let resource = Resource::model(tenant, name, classification, Some(&jurisdiction));
    let request = AccessRequest::new(&caller.principal, Action::ModelImport, resource)
        .with_context("jurisdiction_allowed", allowed)
        .with_context("storage_site", storage);
    authorize_as(state, caller, &request, tenant).await?;
    Ok((jurisdiction, classification))
}

/// What an import from outside becomes: the next version of `name`, with the declared
/// residency, an `imported` lineage carrying `config`, signed here.
struct Imported {
    architecture: String,
    parameters: u64,
    config: serde_json::Value,
    files: Vec<DraftFile>,
}

async fn register_declared(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    (jurisdiction, classification): (Jurisdiction, Classification),
    declared: Declared,
    imported: Imported,
) -> Result<Recorded<ModelVersion>, ServiceError> {
    let draft = Draft {
        tenant: tenant.clone(),
        name: name.to_string(),
        version: None,
        architecture: imported.architecture,
        parameters: imported.parameters,
        residency: Residency { jurisdiction, classification, derived_from: "declared at import".to_string() },
        lineage: Lineage {
            origin: Origin::Imported,
            run: None,
            datasets: Vec::new(),
            base_model: None,
            code_version: crate::registry::code_version(),
            config: imported.config,
            seed: None,
        },
        evals: serde_json::json!({}),
        files: imported.files,
        signing: Signing::Sign { intended_use: declared.intended_use },
    };
    let (version, committed) = register(state, &caller.principal, &caller.request_id, Action::ModelImport, draft)
        .await
        .map_err(|e| hide_foreign_refusal(caller, Some(tenant), e))?;
    Ok(Recorded { value: version, committed })
}

/// Imports a Hugging Face directory (a tar of its files) as the next version of `tenant`'s
/// model `name` (`model.import`), with the residency the importer declares.
pub async fn hugging_face<E: std::fmt::Display>(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    declared: Declared,
    body: impl futures::Stream<Item = Result<Bytes, E>> + Unpin,
) -> Result<Recorded<ModelVersion>, ServiceError> {
    let residency = authorize_declared(state, caller, tenant, name, &declared).await?;
    let spooled = spool(state, body, MAX_IMPORT_BYTES).await?;
    let (files, parameters, config, architecture) =
        tokio::task::spawn_blocking(move || check_hf_directory(spooled)).await.map_err(ServiceError::fault)??;
    let imported = Imported { architecture, parameters, config, files };
    register_declared(state, caller, tenant, name, residency, declared, imported).await
}

/// The most a GGUF import may carry: it is streamed to disk and into the object store, never
/// held in memory, so the bound is the disk's (a 70B model at 4 bits is about 40 GB).
pub const MAX_GGUF_BYTES: u64 = 64 << 30;

/// Imports a GGUF file as the next version of `tenant`'s model `name` (`model.import`), with
/// the residency the importer declares. The file is checked whole (`factory_model::gguf`): an
/// architecture and tensor types the factory runs, every tensor inside the file, a vocabulary
/// it can tokenize with, a chat template that compiles and renders in the sandbox. Its summary
/// (hyper-parameters, RoPE, tokenizer, tensor types) goes into the lineage.
pub async fn gguf<E: std::fmt::Display>(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    declared: Declared,
    body: impl futures::Stream<Item = Result<Bytes, E>> + Unpin,
) -> Result<Recorded<ModelVersion>, ServiceError> {
    let residency = authorize_declared(state, caller, tenant, name, &declared).await?;
    let spooled = spool(state, body, MAX_GGUF_BYTES).await?;
    let (spooled, summary) = tokio::task::spawn_blocking(move || {
        let unprocessable = |e: String| ServiceError::new(ErrorKind::Unprocessable, format!("GGUF: {e}"));
        let mut spooled = spooled;
        let Inspected { summary, vocabulary } =
            factory_model::gguf::inspect(&mut spooled).map_err(|e| unprocessable(e.to_string()))?;
        // The vocabulary must make a tokenizer this factory runs: a byte-level one's
        // pre-tokenizer known and its merges naming its tokens, a SentencePiece one's scores
        // one per piece.
        crate::serving::gguf_tokenizer(&summary, &vocabulary).map_err(unprocessable)?;
        if let Some(template) = &summary.chat_template {
            crate::chat_template::validate(template, factory_tokenizer::END_OF_TEXT)
                .map_err(|e| ServiceError::new(ErrorKind::BadChatTemplate, format!("tokenizer.chat_template: {e}")))?;
        }
        std::io::Seek::rewind(&mut spooled).map_err(ServiceError::fault)?;
        Ok::<_, ServiceError>((spooled, summary))
    })
    .await
    .map_err(ServiceError::fault)??;
    // Streamed into the object store, held by a lease until the version commits.
    let mut lease = state.pending_objects.lease(state.store.clone(), state.objects.clone());
    let file = tokio::fs::File::from_std(spooled);
    let receipt =
        state.objects.put_stream(tokio_util::io::ReaderStream::new(file)).await.map_err(ServiceError::fault)?;
    lease.hold(receipt.digest).await;
    let imported = Imported {
        architecture: summary.architecture.clone(),
        parameters: summary.parameters,
        config: serde_json::json!({ "gguf": summary }),
        files: vec![DraftFile { path: GGUF_FILE.to_string(), source: FileSource::Stored(receipt.digest.to_string()) }],
    };
    let registered = register_declared(state, caller, tenant, name, residency, declared, imported).await;
    match &registered {
        Ok(_) => lease.keep().await,
        Err(_) => lease.discard().await,
    }
    registered
}

/// Reads a tar of a Hugging Face directory and checks that the factory can run it: a Llama
/// (generation) or a BERT encoder (embeddings) whose every weight the config implies is present
/// with its shape, and whose tokenizer loads. Returns the files, the parameter count, the
/// config for the lineage, and the architecture.
fn check_hf_directory(
    spooled: std::fs::File,
) -> Result<(Vec<DraftFile>, u64, serde_json::Value, String), ServiceError> {
    let bundle_files = read_plain_tar(std::io::BufReader::new(spooled))?;
    for path in bundle_files.keys() {
        if !factory_registry::is_hf_file(path) {
            return Err(ServiceError::invalid(format!(
                "{path}: not a file the registry keeps (expected {}, or a sharded checkpoint's index and shards)",
                factory_registry::HF_FILES.join(", ")
            )));
        }
    }
    let need = |path: &str| {
        bundle_files.get(path).ok_or_else(|| ServiceError::invalid(format!("{path} is missing from the directory")))
    };
    let config_text = String::from_utf8_lossy(need("config.json")?).into_owned();
    let config_value: serde_json::Value =
        serde_json::from_str(&config_text).map_err(|e| ServiceError::invalid(format!("config.json: {e}")))?;
    let tokenizer = String::from_utf8_lossy(need("tokenizer.json")?).into_owned();
    let (parameters, architecture) = if config_value["model_type"] == "bert" {
        let weights = need("model.safetensors")?;
        let embedder = factory_engine::embed::Embedder::load(&config_text, weights, &tokenizer, 512)
            .map_err(|e| ServiceError::invalid(format!("bert model: {e}")))?;
        (embedder.parameter_count() as u64, "bert".to_string())
    } else {
        let config = factory_model::LlamaConfig::from_json(&config_text)
            .map_err(|e| ServiceError::invalid(format!("config.json: {e}")))?;
        // One file, or the shards its index names (each present, and nothing else named).
        let shards = match bundle_files.get(factory_registry::HF_SHARD_INDEX) {
            None => vec!["model.safetensors".to_string()],
            Some(index) => factory_registry::shard_names(index).map_err(|e| ServiceError::invalid(e.to_string()))?,
        };
        let present: Vec<&[u8]> =
            shards.iter().map(|shard| need(shard).map(Vec::as_slice)).collect::<Result<_, _>>()?;
        if let Some(stray) = bundle_files.keys().find(|path| path.ends_with(".safetensors") && !shards.contains(path)) {
            return Err(ServiceError::invalid(format!("{stray}: a weights file the checkpoint does not name")));
        }
        // Checked in the type it is stored in: a half-precision checkpoint is never widened.
        let dtype = factory_model::stored_dtype(present[0])
            .map_err(|e| ServiceError::invalid(format!("{}: {e}", shards[0])))?;
        factory_model::Weights::from_safetensors_shards(&config, &present, dtype, &factory_model::Device::Cpu)
            .map_err(|e| ServiceError::invalid(format!("the weights: {e}")))?;
        factory_tokenizer::Tokenizer::from_json(&tokenizer)
            .map_err(|e| ServiceError::invalid(format!("tokenizer.json: {e}")))?;
        (config.parameter_count() as u64, "llama".to_string())
    };
    check_chat_template(&bundle_files)?;
    let files = bundle_files
        .into_iter()
        .map(|(path, bytes)| DraftFile { path, source: FileSource::Bytes(Bytes::from(bytes)) })
        .collect();
    Ok((files, parameters, serde_json::json!({ "model": config_value }), architecture))
}

/// A model's chat template is code that runs on every chat call: it must compile and render a
/// conversation within the sandbox's budgets before the model is registered.
fn check_chat_template(files: &std::collections::BTreeMap<String, Vec<u8>>) -> Result<(), ServiceError> {
    let Some(bytes) = files.get("tokenizer_config.json") else {
        return Ok(());
    };
    let config: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ServiceError::new(ErrorKind::BadChatTemplate, format!("tokenizer_config.json: {e}")))?;
    match &config["chat_template"] {
        serde_json::Value::Null => Ok(()),
        serde_json::Value::String(template) => crate::chat_template::validate(template, factory_tokenizer::END_OF_TEXT)
            .map_err(|e| ServiceError::new(ErrorKind::BadChatTemplate, format!("tokenizer_config.json: {e}"))),
        _ => Err(ServiceError::new(
            ErrorKind::BadChatTemplate,
            "tokenizer_config.json: chat_template must be one template (a string)",
        )),
    }
}

/// A tar of plain files (no manifest), with the bundle reader's checks on names and sizes.
fn read_plain_tar(tar: impl std::io::Read) -> Result<std::collections::BTreeMap<String, Vec<u8>>, ServiceError> {
    // The bundle reader wants a manifest entry; give it an empty one in front so the same strict
    // checks (regular files, plain names, no duplicates, a size limit) apply.
    let manifest = tar_header(factory_registry::BUNDLE_MANIFEST, 0).map_err(ServiceError::fault)?;
    let bundle = read_bundle(std::io::Read::chain(manifest.as_slice(), tar), MAX_IMPORT_BYTES)
        .map_err(|e| ServiceError::invalid(e.to_string()))?;
    Ok(bundle.files)
}
