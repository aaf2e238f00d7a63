//! The model registry on the wire: register a version from a run, import one (an air-gap bundle
//! or a Hugging Face directory), read versions, their signed manifests and files, verify them,
//! export bundles, and move aliases. The use cases are `service::models` and
//! `service::imports`; these handlers decode, call one of them and encode.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use factory_registry::ModelManifest;
use factory_store::models::ModelVersion;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::datasets::TenantQuery;
use super::{committed_response, millis_to_text, tenant_of};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use crate::service::formats;
use crate::service::imports::{self, Declared};
use crate::service::models::{self, AliasMove, Verification};
use crate::state::AppState;

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
    let summaries = models::list(&state, &caller, &tenant).await?;
    let models = summaries
        .into_iter()
        .map(|s| ModelSummary {
            name: s.name,
            versions: s.versions,
            latest: s.latest,
            aliases: s.aliases.into_iter().map(|(alias, version)| (alias, version.into())).collect(),
        })
        .collect();
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
    let versions = models::show(&state, &caller, &tenant, &name).await?;
    let versions = versions.into_iter().map(|(version, aliases)| ModelVersionView::new(version, aliases)).collect();
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
    let (version, manifest, aliases) = models::detail(&state, &caller, &tenant, &name, &reference).await?;
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
    let note = models::signed_manifest(&state, &caller, &tenant, &name, &reference).await?;
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
    let read = models::file(&state, &caller, &tenant, &name, &reference, &path).await?;
    let headers = [(header::CONTENT_TYPE, "application/octet-stream")];
    Ok(committed_response(StatusCode::OK, (headers, read.value), read.committed))
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
    Ok(Json(models::verify(&state, &caller, &tenant, &name, &reference).await?.into()))
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

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BundleQuery {
    pub tenant: Option<String>,
    /// Where the bundle goes: when named, it must be the jurisdiction the model lives in.
    pub destination: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct GgufQuery {
    pub tenant: Option<String>,
    /// Where the file goes (it leaves the factory's governance): the jurisdiction the model
    /// lives in, or the export is refused.
    pub destination: String,
}

#[utoipa::path(get, path = "/api/v1/models/{name}/versions/{version}/bundle", tag = "models",
    params(("name" = String, Path), ("version" = String, Path), BundleQuery),
    responses((status = 200, description = "An air-gap bundle (tar)", body = Vec<u8>), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn bundle(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, reference)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<BundleQuery>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    let export = models::export(&state, &caller, &tenant, &name, &reference, query.destination.as_deref()).await?;
    let filename = format!("{name}-{}.tar", export.value.version);
    Ok(attachment(&filename, "application/x-tar", Body::from_stream(export.value.tar), export.committed))
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
    let imported = imports::bundle(&state, &caller, &tenant, body.into_data_stream()).await?;
    Ok(created_version(imported))
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

impl HfImportQuery {
    /// The tenant the import is for and what it declares of the model.
    fn declared(self, caller: &Caller) -> Result<(factory_core::TenantName, Declared), ApiError> {
        let tenant = tenant_of(caller, self.tenant.as_deref())?;
        let declared = Declared {
            jurisdiction: self.jurisdiction,
            classification: self.classification,
            intended_use: self.intended_use,
        };
        Ok((tenant, declared))
    }
}

/// A version an import created, as `201 Created` with its audit record.
fn created_version(imported: crate::service::Recorded<ModelVersion>) -> Response {
    let view = ModelVersionView::new(imported.value, Vec::new());
    committed_response(StatusCode::CREATED, Json(view), imported.committed)
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
    let (tenant, declared) = query.declared(&caller)?;
    let imported = imports::hugging_face(&state, &caller, &tenant, &name, declared, body.into_data_stream()).await?;
    Ok(created_version(imported))
}

#[utoipa::path(post, path = "/api/v1/models/{name}/import-gguf", tag = "models", params(("name" = String, Path), HfImportQuery),
    request_body(content = Vec<u8>, description = "A GGUF file (v2 or v3), streamed", content_type = "application/octet-stream"),
    responses((status = 201, body = ModelVersionView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn import_gguf(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<HfImportQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let (tenant, declared) = query.declared(&caller)?;
    let imported = imports::gguf(&state, &caller, &tenant, &name, declared, body.into_data_stream()).await?;
    Ok(created_version(imported))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuantizeRequest {
    /// The block type: q8_0, q6_k, q5_k, q4_k, q4_0 or f16.
    #[serde(rename = "type")]
    pub kind: String,
}

#[utoipa::path(post, path = "/api/v1/models/{name}/versions/{version}/quantize", tag = "models",
    params(("name" = String, Path), ("version" = String, Path), TenantQuery), request_body = QuantizeRequest,
    responses((status = 201, body = ModelVersionView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn quantize(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, reference)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<TenantQuery>,
    ApiJson(body): ApiJson<QuantizeRequest>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    let quantized = formats::quantize(&state, &caller, &tenant, &name, &reference, &body.kind).await?;
    Ok(created_version(quantized))
}

#[utoipa::path(get, path = "/api/v1/models/{name}/versions/{version}/gguf", tag = "models",
    params(("name" = String, Path), ("version" = String, Path), GgufQuery),
    responses((status = 200, description = "The version as one GGUF file", body = Vec<u8>),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn gguf(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, reference)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<GgufQuery>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    let export = formats::export_gguf(&state, &caller, &tenant, &name, &reference, &query.destination).await?;
    let filename = format!("{name}-{}.gguf", export.value.version);
    Ok(attachment(&filename, "application/octet-stream", Body::from_stream(export.value.bytes), export.committed))
}

/// A download named `filename`, as `200 OK` with its audit record.
fn attachment(filename: &str, content_type: &str, body: Body, committed: factory_store::Committed) -> Response {
    let headers = [
        (header::CONTENT_TYPE, content_type.to_string()),
        (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{filename}\"")),
    ];
    committed_response(StatusCode::OK, (headers, body), committed)
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
    let (verifier_key, trusted) = models::signing_keys(&state);
    Json(SigningKeys { verifier_key, trusted })
}
