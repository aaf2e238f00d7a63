//! Registering model versions: the one path by which a trained, fine-tuned or imported model
//! becomes a version. Files go to the object store under a lease, the manifest is built (with
//! the generated model card) and signed, and one governed change inserts the version row, the
//! references to every object, the audit record and `model.version.created`.

use bytes::Bytes;
use factory_core::{AccessRequest, Action, Principal, Resource, SiteKind, TenantName};
use factory_objects::ObjectDigest;
use factory_registry::{
    model_card, sign, Lineage, ModelFile, ModelManifest, NoteSigner, NoteVerifier, Residency, MANIFEST_FORMAT,
};
use factory_store::models::{ModelVersion, NewModelVersion};
use factory_store::{Committed, Event};

use crate::error::ApiError;
use crate::state::AppState;

pub struct ModelKeys {
    pub signer: NoteSigner,
    /// This installation's own key first, then `registry.trusted_keys`.
    pub trusted: Vec<NoteVerifier>,
}

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

/// Whether the tenant allows `jurisdiction`, and whether a site of `kind` (storage for the
/// registry, serving for deployments) sits inside it: the facts residency policies decide on.
pub async fn site_facts(
    state: &AppState,
    tenant: &TenantName,
    jurisdiction: &factory_core::Jurisdiction,
    kind: SiteKind,
) -> Result<(bool, bool), ApiError> {
    let allowed = state.lookups.tenant(state, tenant).await?.is_some_and(|t| t.jurisdictions.contains(jurisdiction));
    let site = state.config.sites.iter().any(|s| &s.jurisdiction == jurisdiction && s.kinds.contains(&kind));
    Ok((allowed, site))
}

fn internal(message: impl std::fmt::Display) -> ApiError {
    ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", message.to_string())
}

/// Registers `draft` as `principal` (`model.register`, or `model.import` for imports).
pub async fn register(
    state: &AppState,
    principal: &Principal,
    request_id: &str,
    action: Action,
    draft: Draft,
) -> Result<(ModelVersion, Committed), ApiError> {
    let residency = &draft.residency;
    let (allowed, storage) = site_facts(state, &draft.tenant, &residency.jurisdiction, SiteKind::Storage).await?;
    let resource = Resource::model(&draft.tenant, &draft.name, residency.classification, Some(&residency.jurisdiction));
    let request = AccessRequest::new(principal, action, resource)
        .with_context("jurisdiction_allowed", allowed)
        .with_context("storage_site", storage);
    // Refuse before storing anything; the change below asks again inside its transaction.
    state.store.authorize(state.pdp.as_ref(), &request, request_id).await?;

    let mut lease = state.pending_objects.lease(state.store.clone(), state.objects.clone());
    let mut files = Vec::with_capacity(draft.files.len() + 1);
    for file in draft.files {
        let (digest, size) = match file.source {
            FileSource::Stored(digest) => {
                let parsed: ObjectDigest = digest.parse().map_err(internal)?;
                (digest, state.objects.size(&parsed).await.map_err(internal)?)
            }
            FileSource::Bytes(bytes) => {
                let digest = ObjectDigest::of(&bytes);
                lease.hold(digest).await;
                let size = bytes.len() as u64;
                state.objects.put_bytes(bytes).await.map_err(internal)?;
                (digest.to_string(), size)
            }
        };
        files.push(ModelFile { path: file.path, digest, size });
    }

    let mut change = state.store.begin_change(state.pdp.as_ref(), request, request_id).await?;
    let version = match draft.version {
        Some(version) => version,
        None => change.next_model_version(&draft.tenant, &draft.name).await?,
    };
    let (note, manifest, signer) = match draft.signing {
        Signing::Signed { note, manifest, signer } => (note, *manifest, signer),
        Signing::Sign { intended_use } => {
            files.sort_by(|a, b| a.path.cmp(&b.path));
            let mut manifest = ModelManifest {
                format: MANIFEST_FORMAT.to_string(),
                tenant: draft.tenant.to_string(),
                name: draft.name.clone(),
                version,
                created_at: factory_core::time::now_millis(),
                architecture: draft.architecture.clone(),
                parameters: draft.parameters,
                residency: draft.residency.clone(),
                lineage: draft.lineage,
                evals: draft.evals,
                files,
            };
            let card = Bytes::from(model_card(&manifest, intended_use.as_deref()));
            let card_digest = ObjectDigest::of(&card);
            lease.hold(card_digest).await;
            let card_size = card.len() as u64;
            state.objects.put_bytes(card).await.map_err(internal)?;
            manifest.files.push(ModelFile {
                path: "README.md".to_string(),
                digest: card_digest.to_string(),
                size: card_size,
            });
            let keys = &state.model_keys;
            let note = sign(&manifest, &keys.signer).map_err(internal)?;
            (note, manifest, keys.signer.verifier_key())
        }
    };
    let note = Bytes::from(note);
    let note_digest = ObjectDigest::of(&note);
    lease.hold(note_digest).await;
    state.objects.put_bytes(note).await.map_err(internal)?;

    let mut objects: Vec<String> = manifest.files.iter().map(|f| f.digest.clone()).collect();
    objects.push(note_digest.to_string());
    let new = NewModelVersion {
        version: Some(version),
        origin: serde_json::to_value(manifest.lineage.origin)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        run_id: manifest.lineage.run.clone(),
        jurisdiction: manifest.residency.jurisdiction.clone(),
        classification: manifest.residency.classification,
        parameters: manifest.parameters as i64,
        manifest_digest: note_digest.to_string(),
        signer,
        evals: manifest.evals.clone(),
        objects,
    };
    let stored = change.add_model_version(&draft.tenant, &draft.name, version, &new).await?;
    let details = serde_json::json!({
        "tenant": draft.tenant, "model": draft.name, "version": version, "origin": stored.origin,
        "run": stored.run_id, "manifest": stored.manifest_digest, "signer": stored.signer,
        "jurisdiction": stored.jurisdiction, "classification": stored.classification,
        "datasets": manifest.lineage.datasets, "base_model": manifest.lineage.base_model,
    });
    let committed = change.commit(details.clone(), Event::new("model.version.created", details)).await?;
    lease.keep().await;
    Ok((stored, committed))
}

/// Loads a version's signed manifest and checks its signature against the trusted keys.
pub async fn open_manifest(state: &AppState, version: &ModelVersion) -> Result<(ModelManifest, String), ApiError> {
    let digest: ObjectDigest = version.manifest_digest.parse().map_err(internal)?;
    let note = state.objects.get(&digest).await.map_err(|e| {
        ApiError::new(axum::http::StatusCode::UNPROCESSABLE_ENTITY, "verification_failed", format!("manifest: {e}"))
    })?;
    let note = String::from_utf8(note.to_vec()).map_err(|_| internal("the stored manifest is not UTF-8"))?;
    let (manifest, signer) = ModelManifest::open(&note, &state.model_keys.trusted).map_err(|e| {
        ApiError::new(axum::http::StatusCode::UNPROCESSABLE_ENTITY, "verification_failed", e.to_string())
    })?;
    if manifest.name != version.name || manifest.version != version.version {
        return Err(ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "verification_failed",
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
pub async fn fetch_file(state: &AppState, manifest: &ModelManifest, path: &str) -> Result<Bytes, ApiError> {
    let file = manifest.file(path).ok_or_else(|| ApiError::not_found(format!("the model has no file {path}")))?;
    let digest: ObjectDigest = file.digest.parse().map_err(internal)?;
    let failed = |message: String| {
        ApiError::new(axum::http::StatusCode::UNPROCESSABLE_ENTITY, "verification_failed", format!("{path}: {message}"))
    };
    let bytes = state.objects.get(&digest).await.map_err(|e| failed(e.to_string()))?;
    factory_registry::verify_file(file, &bytes).map_err(|e| failed(e.to_string()))?;
    Ok(bytes)
}
