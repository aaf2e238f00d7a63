//! The model registry: register a version from a run, import one (an air-gap bundle or a
//! Hugging Face directory), read versions, their signed manifests and files, verify them,
//! export bundles, and move aliases. Versions are immutable and signed; every write is one
//! governed change.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use factory_core::{AccessRequest, Action, Classification, Jurisdiction, Resource};
use factory_registry::{read_bundle, tar_end, tar_header, tar_padding, Lineage, ModelManifest, Origin, Residency};
use factory_store::models::ModelVersion;
use factory_store::Event;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::datasets::TenantQuery;
use super::{authorize_as, committed_response, hide_foreign_refusal, millis_to_text, tenant_of};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use crate::registry::{Draft, DraftFile, FileSource, Signing};
use crate::service::access::site_facts;
use crate::service::models::{
    self, aliases_of, authorize_model, resolve, valid_model_name, verify_version, AliasMove, Verification,
};
use crate::state::AppState;

/// The most an import may carry. Imports are held in memory while they are verified (twice,
/// briefly), so this bounds their memory: a ~400M-parameter f32 model fits. Streaming imports
/// to disk would lift it.
const MAX_IMPORT_BYTES: u64 = 2 << 30;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelVersionView {
    pub name: String,
    pub version: i64,
    pub tenant: String,
    /// trained, fine_tuned or imported.
    pub origin: String,
    pub run: Option<String>,
    pub jurisdiction: String,
    pub classification: String,
    pub parameters: i64,
    pub manifest_digest: String,
    pub signer: String,
    #[schema(value_type = Object)]
    pub evals: serde_json::Value,
    /// Aliases pointing at this version.
    pub aliases: Vec<String>,
    pub created_by: String,
    pub created_at: String,
}

impl ModelVersionView {
    fn new(version: ModelVersion, aliases: Vec<String>) -> Self {
        ModelVersionView {
            name: version.name,
            version: version.version,
            tenant: version.tenant.to_string(),
            origin: version.origin,
            run: version.run_id,
            jurisdiction: version.jurisdiction.to_string(),
            classification: version.classification.to_string(),
            parameters: version.parameters,
            manifest_digest: version.manifest_digest,
            signer: version.signer,
            evals: version.evals,
            aliases,
            created_by: version.created_by,
            created_at: millis_to_text(version.created_at),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelSummary {
    pub name: String,
    pub versions: usize,
    pub latest: i64,
    /// alias -> version.
    #[schema(value_type = Object)]
    pub aliases: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelSummary>,
}

#[utoipa::path(get, path = "/api/v1/models", tag = "models", params(TenantQuery),
    responses((status = 200, body = ModelList), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<TenantQuery>,
) -> Result<Json<ModelList>, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    authorize_model(&state, &caller, &tenant, "*", None, Action::ModelRead).await?;
    let versions = state.store.model_versions(&tenant, None).await?;
    let mut models: Vec<ModelSummary> = Vec::new();
    for version in versions {
        match models.last_mut() {
            Some(summary) if summary.name == version.name => {
                summary.versions += 1;
                summary.latest = summary.latest.max(version.version);
            }
            _ => models.push(ModelSummary {
                name: version.name.clone(),
                versions: 1,
                latest: version.version,
                aliases: serde_json::Map::new(),
            }),
        }
    }
    for summary in &mut models {
        for alias in state.store.model_aliases(&tenant, &summary.name).await? {
            summary.aliases.insert(alias.alias, alias.version.into());
        }
    }
    Ok(Json(ModelList { models }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelDetail {
    pub name: String,
    pub versions: Vec<ModelVersionView>,
}

#[utoipa::path(get, path = "/api/v1/models/{name}", tag = "models", params(("name" = String, Path), TenantQuery),
    responses((status = 200, body = ModelDetail), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<TenantQuery>,
) -> Result<Json<ModelDetail>, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    authorize_model(&state, &caller, &tenant, &name, None, Action::ModelRead).await?;
    let versions = state.store.model_versions(&tenant, Some(&name)).await?;
    if versions.is_empty() {
        return Err(ApiError::not_found(format!("model {name} does not exist")));
    }
    let aliases = state.store.model_aliases(&tenant, &name).await?;
    let versions = versions
        .into_iter()
        .map(|v| {
            let names = aliases.iter().filter(|a| a.version == v.version).map(|a| a.alias.clone()).collect();
            ModelVersionView::new(v, names)
        })
        .collect();
    Ok(Json(ModelDetail { name, versions }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterVersion {
    /// A succeeded pretrain or finetune run.
    pub run: String,
    /// Goes into the model card.
    pub intended_use: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/models/{name}/versions", tag = "models", request_body = RegisterVersion,
    params(("name" = String, Path), TenantQuery),
    responses((status = 201, body = ModelVersionView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn register(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<TenantQuery>,
    ApiJson(body): ApiJson<RegisterVersion>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    let registered = models::register_run(&state, &caller, &tenant, &name, &body.run, body.intended_use).await?;
    let view = ModelVersionView::new(registered.value, Vec::new());
    Ok(committed_response(StatusCode::CREATED, Json(view), registered.committed))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VersionDetail {
    #[serde(flatten)]
    pub version: ModelVersionView,
    /// The signed manifest's content (files, lineage, residency, evals).
    #[schema(value_type = Object)]
    pub manifest: ModelManifest,
}

#[utoipa::path(get, path = "/api/v1/models/{name}/versions/{version}", tag = "models",
    params(("name" = String, Path), ("version" = String, Path, description = "A number or an alias"), TenantQuery),
    responses((status = 200, body = VersionDetail), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn version(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, reference)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<TenantQuery>,
) -> Result<Json<VersionDetail>, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    let version = resolve(&state, &caller, &tenant, &name, &reference, Action::ModelRead).await?;
    let (manifest, _) = models::open_manifest(&state, &version).await?;
    let aliases = aliases_of(&state, &version).await?;
    Ok(Json(VersionDetail { version: ModelVersionView::new(version, aliases), manifest }))
}

#[utoipa::path(get, path = "/api/v1/models/{name}/versions/{version}/manifest", tag = "models",
    params(("name" = String, Path), ("version" = String, Path), TenantQuery),
    responses((status = 200, description = "The signed manifest (a C2SP signed note)", body = String),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn signed_manifest(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, reference)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<TenantQuery>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    let version = resolve(&state, &caller, &tenant, &name, &reference, Action::ModelRead).await?;
    let digest = version.manifest_digest.parse().map_err(|_| ApiError::invalid("stored manifest digest"))?;
    // Served as stored, unverified: whoever asks for the signed note verifies it themselves.
    let note = state.objects.get(&digest).await.map_err(|e| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "verification_failed", format!("manifest: {e}"))
    })?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], note).into_response())
}

#[utoipa::path(get, path = "/api/v1/models/{name}/versions/{version}/files/{path}", tag = "models",
    params(("name" = String, Path), ("version" = String, Path), ("path" = String, Path), TenantQuery),
    responses((status = 200, description = "The file's bytes", body = Vec<u8>), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn file(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, reference, path)): ApiPath<(String, String, String)>,
    ApiQuery(query): ApiQuery<TenantQuery>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    let version = resolve(&state, &caller, &tenant, &name, &reference, Action::ModelExport).await?;
    let digest = version.manifest_digest.parse().map_err(|_| ApiError::invalid("stored manifest digest"))?;
    let note = state.objects.get(&digest).await.map_err(|e| ApiError::invalid(format!("manifest: {e}")))?;
    // Unverified on purpose (the object store checks each object against its digest on read):
    // `factory model verify` fetches the files to check them against the signed manifest.
    let text = String::from_utf8_lossy(&note);
    let body = text.split("\n\n").next().unwrap_or_default();
    let manifest: ModelManifest =
        serde_json::from_str(body).map_err(|e| ApiError::invalid(format!("stored manifest: {e}")))?;
    let entry =
        manifest.file(&path).ok_or_else(|| ApiError::not_found(format!("{name}@{reference} has no file {path}")))?;
    let digest = entry.digest.parse().map_err(|_| ApiError::invalid("manifest digest"))?;
    let bytes =
        state.objects.get(&digest).await.map_err(|e| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "verification_failed", format!("{path}: {e}"))
        })?;
    let resource = Resource::model(&tenant, &name, version.classification, Some(&version.jurisdiction));
    let request = AccessRequest::new(&caller.principal, Action::ModelExport, resource);
    let details = serde_json::json!({
        "tenant": tenant, "model": name, "version": version.version, "file": path, "digest": entry.digest,
    });
    let committed = super::audit_read(&state, &caller, request, &tenant, "model.file.read", details).await?;
    let headers = [(header::CONTENT_TYPE, "application/octet-stream")];
    Ok(committed_response(StatusCode::OK, (headers, bytes), committed))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VerifyReport {
    pub model: String,
    pub verified: bool,
    pub signer: Option<String>,
    pub files: Vec<String>,
    pub error: Option<String>,
}

impl From<Verification> for VerifyReport {
    fn from(found: Verification) -> Self {
        let Verification { model, verified, signer, files, error } = found;
        VerifyReport { model, verified, signer, files, error }
    }
}

#[utoipa::path(post, path = "/api/v1/models/{name}/versions/{version}/verify", tag = "models",
    params(("name" = String, Path), ("version" = String, Path), TenantQuery),
    responses((status = 200, body = VerifyReport), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn verify(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, reference)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<TenantQuery>,
) -> Result<Json<VerifyReport>, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    let version = resolve(&state, &caller, &tenant, &name, &reference, Action::ModelRead).await?;
    Ok(Json(verify_version(&state, &version).await.into()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetAlias {
    /// A version number of this model.
    pub version: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AliasView {
    pub model: String,
    pub alias: String,
    pub version: i64,
    pub previous: Option<i64>,
}

#[utoipa::path(put, path = "/api/v1/models/{name}/aliases/{alias}", tag = "models", request_body = SetAlias,
    params(("name" = String, Path), ("alias" = String, Path), TenantQuery),
    responses((status = 200, body = AliasView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_alias(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, alias)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<TenantQuery>,
    ApiJson(body): ApiJson<SetAlias>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    let moved = models::move_alias(&state, &caller, &tenant, &name, &alias, body.version).await?;
    let AliasMove { model, alias, version, previous } = moved.value;
    Ok(committed_response(StatusCode::OK, Json(AliasView { model, alias, version, previous }), moved.committed))
}

#[utoipa::path(get, path = "/api/v1/models/{name}/versions/{version}/bundle", tag = "models",
    params(("name" = String, Path), ("version" = String, Path), TenantQuery),
    responses((status = 200, description = "An air-gap bundle (tar)", body = Vec<u8>), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn bundle(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, reference)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<TenantQuery>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    let version = resolve(&state, &caller, &tenant, &name, &reference, Action::ModelExport).await?;
    // Nothing leaves unless it verifies: a tampered store must not export a tampered model
    // under our signature.
    let (manifest, _) = models::open_manifest(&state, &version).await?;
    let digest = version.manifest_digest.parse().map_err(|_| ApiError::invalid("stored manifest digest"))?;
    let note = state.objects.get(&digest).await.map_err(|e| ApiError::invalid(format!("manifest: {e}")))?;
    for file in &manifest.files {
        models::fetch_file(&state, &manifest, &file.path).await?;
    }
    // The export is a governed act: it is audited before the first byte leaves.
    let resource = Resource::model(&tenant, &name, version.classification, Some(&version.jurisdiction));
    let request = AccessRequest::new(&caller.principal, Action::ModelExport, resource);
    let change = state.store.begin_change(state.pdp.as_ref(), request, &caller.request_id).await?;
    let details = serde_json::json!({
        "tenant": tenant, "model": name, "version": version.version, "manifest": version.manifest_digest,
    });
    change.commit(details.clone(), Event::new("model.exported", details)).await?;

    let mut head = tar_header(factory_registry::BUNDLE_MANIFEST, note.len() as u64).map_err(internal)?;
    head.extend_from_slice(&note);
    head.extend(tar_padding(note.len() as u64));
    let entries = manifest.files.clone();
    let objects = state.objects.clone();
    let files = futures::stream::iter(entries).then(move |file| {
        let objects = objects.clone();
        async move {
            let digest = file.digest.parse().map_err(|_| std::io::Error::other("bad digest"))?;
            let bytes = objects.get(&digest).await.map_err(std::io::Error::other)?;
            factory_registry::verify_file(&file, &bytes).map_err(std::io::Error::other)?;
            let mut chunk = tar_header(&file.path, file.size).map_err(std::io::Error::other)?;
            chunk.extend_from_slice(&bytes);
            chunk.extend(tar_padding(file.size));
            Ok::<Bytes, std::io::Error>(Bytes::from(chunk))
        }
    });
    let stream = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(Bytes::from(head)) })
        .chain(files)
        .chain(futures::stream::once(async { Ok(Bytes::from(tar_end())) }));
    let filename = format!("{name}-{}.tar", version.version);
    let headers = [
        (header::CONTENT_TYPE, "application/x-tar".to_string()),
        (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{filename}\"")),
    ];
    Ok((headers, Body::from_stream(stream)).into_response())
}

fn internal(error: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", error.to_string())
}

/// Spools an import's body to a file under the data directory, refusing it once it passes
/// [`MAX_IMPORT_BYTES`]: the upload is held on disk, not in memory, while it arrives, and is
/// then read from the file once.
async fn spool_body(state: &AppState, body: Body) -> Result<std::fs::File, ApiError> {
    use tokio::io::AsyncWriteExt;
    let dir = state.spool_dir();
    let file = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        tempfile::tempfile_in(&dir)
    })
    .await
    .map_err(internal)?
    .map_err(|e| ApiError::internal(format!("spooling the import: {e}")))?;
    let mut file = tokio::fs::File::from_std(file);
    let mut stream = body.into_data_stream();
    let mut received = 0u64;
    while let Some(chunk) = stream.try_next().await.map_err(|e| ApiError::invalid(format!("upload: {e}")))? {
        received += chunk.len() as u64;
        if received > MAX_IMPORT_BYTES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("imports are limited to {MAX_IMPORT_BYTES} bytes"),
            ));
        }
        file.write_all(&chunk).await.map_err(|e| ApiError::internal(format!("spooling the import: {e}")))?;
    }
    file.flush().await.map_err(|e| ApiError::internal(format!("spooling the import: {e}")))?;
    let mut file = file.into_std().await;
    std::io::Seek::rewind(&mut file).map_err(|e| ApiError::internal(format!("spooling the import: {e}")))?;
    Ok(file)
}

#[utoipa::path(post, path = "/api/v1/models/import", tag = "models", params(TenantQuery),
    request_body(content = Vec<u8>, description = "An air-gap bundle from `factory model export`", content_type = "application/x-tar"),
    responses((status = 201, body = ModelVersionView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn import_bundle(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<TenantQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    // Who may import at all is decided before a byte is read; the model's own residency is
    // decided once the bundle says what it is.
    let request = AccessRequest::new(
        &caller.principal,
        Action::ModelImport,
        Resource::model(&tenant, "*", Classification::Public, None),
    )
    .with_context("jurisdiction_allowed", true)
    .with_context("storage_site", true);
    authorize_as(&state, &caller, &request, &tenant).await?;
    let spooled = spool_body(&state, body).await?;
    let trusted = state.model_keys.trusted.clone();
    let (bundle, manifest, signer) = tokio::task::spawn_blocking(move || {
        let bundle = read_bundle(std::io::BufReader::new(spooled), MAX_IMPORT_BYTES)
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "verification_failed", e.to_string()))?;
        let (manifest, signer) = bundle
            .verify(&trusted)
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "verification_failed", e.to_string()))?;
        // Signed by a trusted installation is not the same as safe to run here.
        check_chat_template(&bundle.files)?;
        Ok::<_, ApiError>((bundle, manifest, signer))
    })
    .await
    .map_err(internal)??;
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
    let (version, committed) =
        models::register(&state, &caller.principal, &caller.request_id, Action::ModelImport, draft)
            .await
            .map_err(|e| hide_foreign_refusal(&caller, Some(&tenant), e))?;
    Ok(committed_response(StatusCode::CREATED, Json(ModelVersionView::new(version, Vec::new())), committed))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct HfImportQuery {
    pub tenant: Option<String>,
    /// Where the model may live: imported models declare it (trained ones derive it).
    pub jurisdiction: String,
    /// public, internal (default), confidential or secret.
    pub classification: Option<String>,
    /// Goes into the model card.
    pub intended_use: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/models/{name}/import-hf", tag = "models", params(("name" = String, Path), HfImportQuery),
    request_body(content = Vec<u8>, description = "A tar of the directory's files (config.json, model.safetensors, tokenizer.json, ...)", content_type = "application/x-tar"),
    responses((status = 201, body = ModelVersionView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn import_hf(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<HfImportQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    valid_model_name(&name)?;
    let jurisdiction: Jurisdiction =
        query.jurisdiction.parse().map_err(|e| ApiError::invalid(format!("jurisdiction: {e}")))?;
    let classification: Classification = query
        .classification
        .as_deref()
        .unwrap_or("internal")
        .parse()
        .map_err(|e| ApiError::invalid(format!("classification: {e}")))?;
    // Decided before a byte is read: the caller, the tenant and the declared residency.
    let (allowed, storage) = site_facts(&state, &tenant, &jurisdiction, factory_core::SiteKind::Storage).await?;
    let resource = Resource::model(&tenant, &name, classification, Some(&jurisdiction));
    let request = AccessRequest::new(&caller.principal, Action::ModelImport, resource)
        .with_context("jurisdiction_allowed", allowed)
        .with_context("storage_site", storage);
    authorize_as(&state, &caller, &request, &tenant).await?;
    let spooled = spool_body(&state, body).await?;
    let (files, parameters, config, architecture) =
        tokio::task::spawn_blocking(move || check_hf_directory(spooled)).await.map_err(internal)??;
    let draft = Draft {
        tenant: tenant.clone(),
        name,
        version: None,
        architecture,
        parameters,
        residency: Residency { jurisdiction, classification, derived_from: "declared at import".to_string() },
        lineage: Lineage {
            origin: Origin::Imported,
            run: None,
            datasets: Vec::new(),
            base_model: None,
            code_version: crate::registry::code_version(),
            config,
            seed: None,
        },
        evals: serde_json::json!({}),
        files,
        signing: Signing::Sign { intended_use: query.intended_use },
    };
    let (version, committed) =
        models::register(&state, &caller.principal, &caller.request_id, Action::ModelImport, draft)
            .await
            .map_err(|e| hide_foreign_refusal(&caller, Some(&tenant), e))?;
    Ok(committed_response(StatusCode::CREATED, Json(ModelVersionView::new(version, Vec::new())), committed))
}

/// Reads a tar of a Hugging Face directory and checks that the factory can run it: a Llama
/// (generation) or a BERT encoder (embeddings) whose every weight the config implies is present
/// with its shape, and whose tokenizer loads. Returns the files, the parameter count, the
/// config for the lineage, and the architecture.
fn check_hf_directory(spooled: std::fs::File) -> Result<(Vec<DraftFile>, u64, serde_json::Value, String), ApiError> {
    let bundle_files = read_plain_tar(std::io::BufReader::new(spooled))?;
    for path in bundle_files.keys() {
        if !factory_registry::HF_FILES.contains(&path.as_str()) {
            return Err(ApiError::invalid(format!(
                "{path}: not a file the registry keeps (expected {})",
                factory_registry::HF_FILES.join(", ")
            )));
        }
    }
    let need = |path: &str| {
        bundle_files.get(path).ok_or_else(|| ApiError::invalid(format!("{path} is missing from the directory")))
    };
    let config_text = String::from_utf8_lossy(need("config.json")?).into_owned();
    let config_value: serde_json::Value =
        serde_json::from_str(&config_text).map_err(|e| ApiError::invalid(format!("config.json: {e}")))?;
    let tokenizer = String::from_utf8_lossy(need("tokenizer.json")?).into_owned();
    let weights = need("model.safetensors")?;
    let (parameters, architecture) = if config_value["model_type"] == "bert" {
        let embedder = factory_engine::embed::Embedder::load(&config_text, weights, &tokenizer, 512)
            .map_err(|e| ApiError::invalid(format!("bert model: {e}")))?;
        (embedder.parameter_count() as u64, "bert".to_string())
    } else {
        let config = factory_model::LlamaConfig::from_json(&config_text)
            .map_err(|e| ApiError::invalid(format!("config.json: {e}")))?;
        factory_model::Weights::from_safetensors(
            &config,
            weights,
            factory_model::DType::F32,
            &factory_model::Device::Cpu,
        )
        .map_err(|e| ApiError::invalid(format!("model.safetensors: {e}")))?;
        factory_tokenizer::Tokenizer::from_json(&tokenizer)
            .map_err(|e| ApiError::invalid(format!("tokenizer.json: {e}")))?;
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
fn check_chat_template(files: &std::collections::BTreeMap<String, Vec<u8>>) -> Result<(), ApiError> {
    let Some(bytes) = files.get("tokenizer_config.json") else {
        return Ok(());
    };
    let config: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_chat_template", format!("tokenizer_config.json: {e}"))
    })?;
    match &config["chat_template"] {
        serde_json::Value::Null => Ok(()),
        serde_json::Value::String(template) => crate::chat_template::validate(template, factory_tokenizer::END_OF_TEXT)
            .map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "bad_chat_template",
                    format!("tokenizer_config.json: {e}"),
                )
            }),
        _ => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_chat_template",
            "tokenizer_config.json: chat_template must be one template (a string)",
        )),
    }
}

/// A tar of plain files (no manifest), with the bundle reader's checks on names and sizes.
fn read_plain_tar(tar: impl std::io::Read) -> Result<std::collections::BTreeMap<String, Vec<u8>>, ApiError> {
    // The bundle reader wants a manifest entry; give it an empty one in front so the same strict
    // checks (regular files, plain names, no duplicates, a size limit) apply.
    let manifest = tar_header(factory_registry::BUNDLE_MANIFEST, 0).map_err(internal)?;
    let bundle = read_bundle(std::io::Read::chain(manifest.as_slice(), tar), MAX_IMPORT_BYTES)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    Ok(bundle.files)
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SigningKeys {
    /// This installation's model-signing verifier key: give it to installations that import
    /// its bundles (`registry.trusted_keys`).
    pub verifier_key: String,
    pub trusted: Vec<String>,
}

#[utoipa::path(get, path = "/api/v1/models/signing-key", tag = "models",
    responses((status = 200, body = SigningKeys)),
    security(("bearer" = [])))]
pub async fn signing_key(State(state): State<AppState>, _caller: Caller) -> Json<SigningKeys> {
    let keys = &state.model_keys;
    Json(SigningKeys {
        verifier_key: keys.signer.verifier_key(),
        trusted: keys.trusted.iter().map(|k| k.verifier_key()).collect(),
    })
}
