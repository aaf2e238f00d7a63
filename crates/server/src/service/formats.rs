//! Model versions in llama.cpp's format: `quantize` registers a new version whose weights are
//! another version's in GGUF blocks (its lineage names the source, its residency is the
//! source's), and `export_gguf` hands a version out as one GGUF file that llama.cpp and Ollama
//! load as it is.
//!
//! Both widen the source to `f32` first (a GGUF version's blocks, or a safetensors version's
//! weights) and write the file under the spool directory, never whole in memory twice.

use std::io::{BufWriter, Seek, Write};

use bytes::Bytes;
use factory_core::{Action, Jurisdiction, TenantName};
use factory_model::gguf::{self, GgufVocabulary};
use factory_model::quantized::GgmlDType;
use factory_model::{DType, Device, Llama, LlamaConfig, Weights};
use factory_registry::{Lineage, ModelManifest, Origin, Residency};
use factory_store::models::ModelVersion;
use factory_tokenizer::Tokenizer;
use futures::stream::BoxStream;

use super::access::audit_read;
use super::models::{open_manifest, register, resolve};
use super::Recorded;
use crate::caller::Caller;
use crate::registry::{self, Draft, DraftFile, FileSource, Signing, GGUF_FILE};
use crate::service_error::{ErrorKind, ServiceError};
use crate::state::AppState;

/// The block types `quantize` writes, by the names llama.cpp's tools use.
pub const QUANTIZE_TYPES: &[(&str, GgmlDType)] = &[
    ("q8_0", GgmlDType::Q8_0),
    ("q6_k", GgmlDType::Q6K),
    ("q5_k", GgmlDType::Q5K),
    ("q4_k", GgmlDType::Q4K),
    ("q4_0", GgmlDType::Q4_0),
    ("f16", GgmlDType::F16),
];

fn block_type(name: &str) -> Result<GgmlDType, ServiceError> {
    QUANTIZE_TYPES.iter().find(|(known, _)| *known == name).map(|(_, kind)| *kind).ok_or_else(|| {
        let known: Vec<&str> = QUANTIZE_TYPES.iter().map(|(name, _)| *name).collect();
        ServiceError::invalid(format!("type {name:?} is not one the factory writes ({})", known.join(", ")))
            .at_param("type")
    })
}

/// Registers `name@reference` quantized to `kind` as the next version of `name`
/// (`model.register`, after `model.read` of the source).
pub async fn quantize(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    reference: &str,
    kind: &str,
) -> Result<Recorded<ModelVersion>, ServiceError> {
    let kind = block_type(kind)?;
    let source = resolve(state, caller, tenant, name, reference, Action::ModelRead).await?;
    let (manifest, _) = open_manifest(state, &source).await?;
    let (model, vocabulary) = widened(state, &manifest).await?;
    let source_reference = manifest.reference();
    let title = source_reference.clone();
    let (file, summary) = tokio::task::spawn_blocking({
        let dir = state.spool_dir();
        move || written(dir, |out| gguf::write_llama(out, &model, kind, &title, &vocabulary))
    })
    .await
    .map_err(ServiceError::fault)??;
    let mut lease = state.pending_objects.lease(state.store.clone(), state.objects.clone());
    let receipt = state
        .objects
        .put_stream(tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file)))
        .await
        .map_err(ServiceError::fault)?;
    lease.hold(receipt.digest).await;
    let draft = Draft {
        tenant: tenant.clone(),
        name: name.to_string(),
        version: None,
        architecture: summary.architecture.clone(),
        parameters: summary.parameters,
        residency: Residency {
            jurisdiction: manifest.residency.jurisdiction.clone(),
            classification: manifest.residency.classification,
            derived_from: format!("quantized from {source_reference}"),
        },
        lineage: Lineage {
            origin: Origin::Quantized,
            run: None,
            datasets: manifest.lineage.datasets.clone(),
            base_model: Some(source_reference.clone()),
            code_version: registry::code_version(),
            config: serde_json::json!({ "gguf": summary, "quantized": { "from": source_reference, "type": format!("{kind:?}").to_lowercase() } }),
            seed: None,
        },
        evals: serde_json::json!({}),
        files: vec![DraftFile { path: GGUF_FILE.to_string(), source: FileSource::Stored(receipt.digest.to_string()) }],
        signing: Signing::Sign { intended_use: None },
    };
    let registered = register(state, &caller.principal, &caller.request_id, Action::ModelRegister, draft).await;
    match &registered {
        Ok(_) => lease.keep().await,
        Err(_) => lease.discard().await,
    }
    let (version, committed) = registered?;
    Ok(Recorded { value: version, committed })
}

/// A GGUF export: the file's bytes, and its name.
pub struct GgufExport {
    pub version: i64,
    pub bytes: BoxStream<'static, Result<Bytes, std::io::Error>>,
}

/// `name@reference` as one GGUF file bound for `destination` (`model.export`, audited as
/// `model.exported` before the first byte leaves; refused, and the refusal audited, unless the
/// destination is where the model may live): a GGUF version's own file, or a safetensors
/// version written in `f32` (so llama.cpp computes what the factory computes).
pub async fn export_gguf(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    reference: &str,
    destination: &str,
) -> Result<Recorded<GgufExport>, ServiceError> {
    use futures::StreamExt;
    let version = resolve(state, caller, tenant, name, reference, Action::ModelExport).await?;
    let destination = Jurisdiction::new(destination)
        .map_err(|e| ServiceError::invalid(format!("destination: {e}")).at_param("destination"))?;
    let request = super::access::export_request(state, caller, tenant, &version, Some(&destination)).await?;
    let (manifest, _) = open_manifest(state, &version).await?;
    let file = if manifest.file(GGUF_FILE).is_some() {
        registry::fetch_to_file(&state.objects, &manifest, GGUF_FILE, state.spool_dir()).await?
    } else {
        let (model, vocabulary) = widened(state, &manifest).await?;
        let title = manifest.reference();
        let dir = state.spool_dir();
        tokio::task::spawn_blocking(move || {
            written(dir, |out| gguf::write_llama(out, &model, GgmlDType::F32, &title, &vocabulary))
        })
        .await
        .map_err(ServiceError::fault)??
        .0
    };
    let details = serde_json::json!({
        "tenant": tenant, "model": name, "version": version.version, "manifest": version.manifest_digest,
        "format": "gguf", "destination": destination,
    });
    let committed = audit_read(state, caller, request, tenant, "model.exported", details).await?;
    let bytes = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file)).boxed();
    Ok(Recorded { value: GgufExport { version: version.version, bytes }, committed })
}

/// A verified version's weights widened to `f32`, with its vocabulary as GGUF lists it.
async fn widened(state: &AppState, manifest: &ModelManifest) -> Result<(Llama, GgufVocabulary), ServiceError> {
    let unservable =
        |e: String| ServiceError::new(ErrorKind::UnservableModel, format!("{}: {e}", manifest.reference()));
    if manifest.file(GGUF_FILE).is_some() {
        let file = registry::fetch_to_file(&state.objects, manifest, GGUF_FILE, state.spool_dir()).await?;
        return tokio::task::spawn_blocking(move || {
            let (model, inspected) = gguf::read_llama(&mut std::io::BufReader::new(file)).map_err(|e| e.to_string())?;
            Ok((model, GgufVocabulary::of(inspected)))
        })
        .await
        .map_err(ServiceError::fault)?
        .map_err(unservable);
    }
    if manifest.architecture != "llama" && manifest.file("config.json").is_none() {
        return Err(unservable("only generative models are written as GGUF".to_string()));
    }
    let fetch = |path: &'static str| registry::fetch_file(&state.objects, manifest, path);
    let (config, weights, tokenizer) =
        (fetch("config.json").await?, fetch("model.safetensors").await?, fetch("tokenizer.json").await?);
    let tokenizer_config = match manifest.file("tokenizer_config.json") {
        Some(_) => Some(fetch("tokenizer_config.json").await?),
        None => None,
    };
    tokio::task::spawn_blocking(move || {
        let config = LlamaConfig::from_json(&String::from_utf8_lossy(&config)).map_err(|e| e.to_string())?;
        let weights =
            Weights::from_safetensors(&config, &weights, DType::F32, &Device::Cpu).map_err(|e| e.to_string())?;
        let tokenizer = Tokenizer::from_json(&String::from_utf8_lossy(&tokenizer)).map_err(|e| e.to_string())?;
        let bpe = tokenizer.to_gguf_bpe().map_err(|e| e.to_string())?;
        let end_of_text = tokenizer.token_id(factory_tokenizer::END_OF_TEXT);
        let chat_template = tokenizer_config
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .and_then(|config| config["chat_template"].as_str().map(str::to_string));
        let vocabulary = GgufVocabulary {
            model: "gpt2".to_string(),
            pre: bpe.pre,
            tokens: bpe.tokens,
            merges: bpe.merges,
            token_types: bpe.token_types,
            scores: Vec::new(),
            bos: config.bos_token_id.or(end_of_text),
            eos: config.eos_token_id.or(end_of_text),
            chat_template,
        };
        let model = Llama::new(config, weights).map_err(|e| e.to_string())?;
        Ok((model, vocabulary))
    })
    .await
    .map_err(ServiceError::fault)?
    .map_err(unservable)
}

/// A GGUF file `write` writes to an unnamed file under `dir`, read back from its start, with
/// the summary an import of it would record.
pub(crate) fn written(
    dir: std::path::PathBuf,
    write: impl FnOnce(&mut BufWriter<std::fs::File>) -> Result<(), gguf::GgufError>,
) -> Result<(std::fs::File, gguf::GgufSummary), ServiceError> {
    let spool = |e: std::io::Error| ServiceError::internal(format!("writing the GGUF file: {e}"));
    std::fs::create_dir_all(&dir).map_err(spool)?;
    let file = tempfile::tempfile_in(&dir).map_err(spool)?;
    let mut out = BufWriter::new(file);
    write(&mut out).map_err(|e| ServiceError::new(ErrorKind::UnservableModel, format!("writing GGUF: {e}")))?;
    out.flush().map_err(spool)?;
    let mut file = out.into_inner().map_err(|e| spool(e.into_error()))?;
    file.rewind().map_err(spool)?;
    // What was written is checked like an import: a file the factory itself refuses never registers.
    let summary =
        gguf::inspect(&mut file).map_err(|e| ServiceError::internal(format!("the written GGUF: {e}")))?.summary;
    file.rewind().map_err(spool)?;
    Ok((file, summary))
}
