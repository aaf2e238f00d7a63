//! Governed datasets: define, ingest versions by streaming, read back manifests, rows, Parquet
//! and profiles.
//!
//! An ingest runs in three steps so that no lock is held while bytes stream in: authorize (a
//! refusal is audited), stream the upload into content-addressed shards and a manifest, then
//! make the version visible in one governed transaction. A failed or interrupted ingest leaves
//! no version, and its shards are deleted unless another version references them.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use factory_core::{AccessRequest, Action, Classification, Jurisdiction, Principal, Resource, Role, SiteKind};
use factory_datasets::{ColumnSpec, DedupMode, Format, IngestErrorKind, OnError, PiiPolicy, VersionManifest};
use factory_objects::ObjectDigest;
use factory_store::datasets::Dataset;
use factory_store::Event;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{committed_response, hide_foreign, millis_to_text, tenant_of};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use crate::service::datasets::{
    self, authorize_on, dataset_resource, find_dataset_for, load_manifest, residency, IngestFailure, Ingested,
    LoadedManifest, Upload,
};
use crate::state::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TenantQuery {
    /// Platform keys name the tenant; tenant keys act in their own tenant.
    pub tenant: Option<String>,
}

/// Bounds on what a dataset's catalogue entry carries, like a key's description: every list
/// and show returns them, so an unbounded one would weigh on every reader.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;
pub const MAX_TAGS: usize = 32;
pub const MAX_TAG_BYTES: usize = 64;

fn check_catalogue_text(description: &str, tags: &[String], owner: Option<&str>) -> Result<(), ApiError> {
    if description.len() > MAX_DESCRIPTION_BYTES {
        return Err(ApiError::invalid(format!("description: at most {MAX_DESCRIPTION_BYTES} bytes")));
    }
    if tags.len() > MAX_TAGS {
        return Err(ApiError::invalid(format!("tags: at most {MAX_TAGS} tags")));
    }
    if let Some(index) = tags.iter().position(|t| t.is_empty() || t.len() > MAX_TAG_BYTES) {
        return Err(ApiError::invalid(format!("tags[{index}]: 1 to {MAX_TAG_BYTES} bytes")));
    }
    if owner.is_some_and(|o| o.is_empty() || o.len() > MAX_TAG_BYTES * 2) {
        return Err(ApiError::invalid(format!("owner: 1 to {} bytes", MAX_TAG_BYTES * 2)));
    }
    Ok(())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDataset {
    pub name: String,
    /// public, internal, confidential or secret.
    pub classification: String,
    /// Where the data may live; defaults to the tenant's first allowed jurisdiction.
    pub jurisdiction: Option<String>,
    /// The storage site; defaults to the first storage site in the jurisdiction.
    pub site: Option<String>,
    pub owner: Option<String>,
    pub retention_days: Option<i64>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// `{"default": "mask", "columns": {"email": "drop_column"}}`; treatments are keep, mask,
    /// hash and drop_column. Defaults to masking.
    #[schema(value_type = Option<Object>)]
    pub pii_policy: Option<PiiPolicy>,
    /// A declared schema, `[{"name": "text", "type": "string"}]`; inferred when absent.
    #[schema(value_type = Option<Vec<Object>>)]
    pub schema: Option<Vec<ColumnSpec>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DatasetView {
    pub tenant: String,
    pub name: String,
    pub classification: String,
    pub jurisdiction: String,
    pub site: String,
    pub owner: String,
    pub retention_days: Option<i64>,
    pub description: String,
    pub tags: Vec<String>,
    #[schema(value_type = Object)]
    pub pii_policy: serde_json::Value,
    #[schema(value_type = Option<Vec<Object>>)]
    pub schema: Option<serde_json::Value>,
    pub latest_version: i64,
    pub created_at: String,
    pub created_by: String,
}

impl From<Dataset> for DatasetView {
    fn from(d: Dataset) -> Self {
        DatasetView {
            tenant: d.tenant.to_string(),
            name: d.name,
            classification: d.classification.to_string(),
            jurisdiction: d.jurisdiction.to_string(),
            site: d.site,
            owner: d.owner,
            retention_days: d.retention_days,
            description: d.description,
            tags: d.tags,
            pii_policy: d.pii_policy,
            schema: d.declared_schema,
            latest_version: d.latest_version,
            created_at: millis_to_text(d.created_at),
            created_by: d.created_by,
        }
    }
}

#[utoipa::path(post, path = "/api/v1/datasets", tag = "datasets", request_body = CreateDataset, params(TenantQuery),
    responses((status = 201, body = DatasetView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<TenantQuery>,
    ApiJson(body): ApiJson<CreateDataset>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    super::valid_name::<factory_core::DatasetName>("name", &body.name)?;
    let classification: Classification =
        body.classification.parse().map_err(|e| ApiError::invalid(format!("classification: {e}")))?;
    let catalogue = AccessRequest::new(&caller.principal, Action::DatasetRead, Resource::dataset_catalogue(&tenant));
    state
        .store
        .authorize(state.pdp.as_ref(), &catalogue, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(&caller, Some(&tenant), e))?;
    let tenant_record = state
        .store
        .tenant(&tenant)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("tenant {tenant} does not exist")))?;
    let jurisdiction = match &body.jurisdiction {
        Some(j) => Jurisdiction::new(j).map_err(|e| ApiError::invalid(format!("jurisdiction: {e}")))?,
        None => {
            tenant_record.jurisdictions.first().cloned().ok_or_else(|| ApiError::invalid("jurisdiction: required"))?
        }
    };
    let site = match &body.site {
        Some(site) => site.clone(),
        None => state
            .config
            .sites
            .iter()
            .find(|s| s.jurisdiction == jurisdiction && s.kinds.contains(&SiteKind::Storage))
            .map(|s| s.name.clone())
            .unwrap_or_default(),
    };
    check_catalogue_text(&body.description, &body.tags, body.owner.as_deref())?;
    if body.retention_days.is_some_and(|d| d <= 0) {
        return Err(ApiError::invalid("retention_days: must be positive"));
    }
    if let Some(schema) = &body.schema {
        if schema.is_empty() {
            return Err(ApiError::invalid("schema: declare at least one column"));
        }
    }
    let (jurisdiction_allowed, storage_site) = residency(&state, &tenant, &jurisdiction, &site).await?;
    let resource = Resource::dataset(&tenant, &body.name, classification, &jurisdiction);
    let request = AccessRequest::new(&caller.principal, Action::DatasetCreate, resource)
        .with_context("jurisdiction_allowed", jurisdiction_allowed)
        .with_context("storage_site", storage_site);
    let mut change = state
        .store
        .begin_change(state.pdp.as_ref(), request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(&caller, Some(&tenant), e))?;
    let dataset = Dataset {
        tenant: tenant.clone(),
        name: body.name.clone(),
        classification,
        jurisdiction,
        site,
        owner: body.owner.clone().unwrap_or_else(|| caller.principal.id.clone()),
        retention_days: body.retention_days,
        description: body.description,
        tags: body.tags,
        pii_policy: serde_json::to_value(body.pii_policy.unwrap_or_default()).unwrap_or_default(),
        declared_schema: body.schema.map(|s| serde_json::to_value(s).unwrap_or_default()),
        latest_version: 0,
        created_at: factory_core::time::now_millis(),
        created_by: caller.principal.id.clone(),
    };
    change.create_dataset(&dataset).await?;
    let payload = serde_json::json!({
        "tenant": tenant, "dataset": dataset.name, "classification": dataset.classification,
        "jurisdiction": dataset.jurisdiction, "site": dataset.site,
    });
    let committed = change.commit(payload.clone(), Event::new("dataset.created", payload)).await?;
    Ok(committed_response(StatusCode::CREATED, Json(DatasetView::from(dataset)), committed))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DatasetList {
    pub datasets: Vec<DatasetView>,
}

#[utoipa::path(get, path = "/api/v1/datasets", tag = "datasets", params(TenantQuery),
    responses((status = 200, body = DatasetList), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<TenantQuery>,
) -> Result<Json<DatasetList>, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    let catalogue = AccessRequest::new(&caller.principal, Action::DatasetRead, Resource::dataset_catalogue(&tenant));
    state
        .store
        .authorize(state.pdp.as_ref(), &catalogue, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(&caller, Some(&tenant), e))?;
    let mut visible = Vec::new();
    for dataset in state.store.datasets(&tenant).await? {
        // The catalogue shows what the caller may read; refusals here are not audited one by
        // one, since listing reveals nothing the caller could not ask for by name.
        let resource = Resource::dataset(&dataset.tenant, &dataset.name, dataset.classification, &dataset.jurisdiction);
        let request = AccessRequest::new(&caller.principal, Action::DatasetRead, resource);
        if factory_core::PolicyDecisionPoint::decide(state.pdp.as_ref(), &request).is_allowed() {
            visible.push(DatasetView::from(dataset));
        }
    }
    Ok(Json(DatasetList { datasets: visible }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DatasetDetail {
    #[serde(flatten)]
    pub dataset: DatasetView,
    pub versions: Vec<VersionSummary>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VersionSummary {
    pub version: i64,
    pub manifest_digest: String,
    pub rows: i64,
    pub bytes: i64,
    pub source_digest: String,
    pub created_at: String,
    pub created_by: String,
}

#[utoipa::path(get, path = "/api/v1/datasets/{name}", tag = "datasets", params(("name" = String, Path), TenantQuery),
    responses((status = 200, body = DatasetDetail), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<TenantQuery>,
) -> Result<Json<DatasetDetail>, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    let dataset = find_dataset_for(&state, &caller, &tenant, &name).await?;
    let versions = state
        .store
        .dataset_versions(&tenant, &name)
        .await?
        .into_iter()
        .map(|v| VersionSummary {
            version: v.version,
            manifest_digest: v.manifest_digest,
            rows: v.rows,
            bytes: v.bytes,
            source_digest: v.source_digest,
            created_at: millis_to_text(v.created_at),
            created_by: v.created_by,
        })
        .collect();
    Ok(Json(DatasetDetail { dataset: dataset.into(), versions }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct IngestQuery {
    /// jsonl, csv, parquet or text.
    pub format: String,
    /// The column language models train on (text uploads: `text`).
    pub text_column: Option<String>,
    /// fail (default) or skip.
    pub on_error: Option<String>,
    /// text uploads: one record per paragraph (blank-line separated) instead of per line.
    pub paragraphs: Option<bool>,
    /// off (default), flag or remove.
    pub dedup: Option<String>,
    /// Largest accepted row in bytes (default 1 MiB).
    pub max_row_bytes: Option<usize>,
    /// Most rows per Parquet shard (default 1,000,000; at least 100).
    pub shard_rows: Option<u64>,
    pub tenant: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IngestReport {
    pub version: i64,
    pub manifest_digest: String,
    pub rows: u64,
    pub rows_skipped: u64,
    #[schema(value_type = Vec<Object>)]
    pub errors: serde_json::Value,
    #[schema(value_type = Object)]
    pub pii: serde_json::Value,
    #[schema(value_type = Object)]
    pub dedup: serde_json::Value,
    pub shards: usize,
    pub source_digest: String,
}

#[utoipa::path(post, path = "/api/v1/datasets/{name}/versions", tag = "datasets", params(("name" = String, Path), IngestQuery),
    request_body(content = Vec<u8>, description = "The data, streamed; gzip and zstd are recognised", content_type = "application/octet-stream"),
    responses((status = 201, body = IngestReport), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn ingest(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<IngestQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    let format: Format = query.format.parse().map_err(|e| ApiError::invalid(format!("format: {e}")))?;
    let on_error = match query.on_error.as_deref() {
        None | Some("fail") => OnError::Fail,
        Some("skip") => OnError::Skip,
        Some(other) => return Err(ApiError::invalid(format!("on_error: {other:?} is invalid; expected fail or skip"))),
    };
    let dedup: DedupMode = match &query.dedup {
        Some(mode) => mode.parse().map_err(|e| ApiError::invalid(format!("dedup: {e}")))?,
        None => DedupMode::Off,
    };
    let upload = Upload {
        format,
        text_column: query.text_column,
        on_error,
        paragraphs: query.paragraphs,
        dedup,
        max_row_bytes: query.max_row_bytes,
        shard_rows: query.shard_rows,
    };
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    match datasets::ingest(&state, &caller, &tenant, &name, upload, reader).await {
        Ok(ingested) => {
            let report = IngestReport::from(ingested.value);
            Ok(committed_response(StatusCode::CREATED, Json(report), ingested.committed))
        }
        Err(IngestFailure::Service(error)) => Err(error.into()),
        Err(IngestFailure::Data(error)) => {
            let (status, code) = match error.kind {
                IngestErrorKind::Rejected => (StatusCode::UNPROCESSABLE_ENTITY, "rejected"),
                IngestErrorKind::Input => (StatusCode::BAD_REQUEST, "bad_upload"),
                IngestErrorKind::Sink => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            };
            let body = serde_json::json!({ "error": { "code": code, "message": error.message, "rows": error.errors } });
            Ok((status, Json(body)).into_response())
        }
    }
}

impl From<Ingested> for IngestReport {
    fn from(ingested: Ingested) -> Self {
        IngestReport {
            version: ingested.version,
            manifest_digest: ingested.manifest_digest,
            rows: ingested.rows,
            rows_skipped: ingested.rows_skipped,
            errors: ingested.errors,
            pii: ingested.pii,
            dedup: ingested.dedup,
            shards: ingested.shards,
            source_digest: ingested.source_digest,
        }
    }
}

/// The manifest as `GET .../versions/{version}` shows it: the stored fields and the row's.
fn manifest_view(loaded: &LoadedManifest) -> serde_json::Value {
    let mut view = serde_json::to_value(&loaded.manifest).unwrap_or_default();
    view["version"] = loaded.version.into();
    view["manifest_digest"] = loaded.digest.clone().into();
    view["created_at"] = millis_to_text(loaded.created_at).into();
    view
}

fn sees_raw_pii(principal: &Principal) -> bool {
    matches!(principal.role, Role::Steward | Role::Admin)
}

#[utoipa::path(get, path = "/api/v1/datasets/{name}/versions/{version}", tag = "datasets",
    params(("name" = String, Path), ("version" = i64, Path), TenantQuery),
    responses((status = 200, description = "The version's manifest", body = Object), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn manifest(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, version)): ApiPath<(String, i64)>,
    ApiQuery(query): ApiQuery<TenantQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    let dataset = find_dataset_for(&state, &caller, &tenant, &name).await?;
    let mut loaded = load_manifest(&state, &dataset, version).await?;
    // The manifest needs only dataset.read; its profile quotes values, which are shown only as
    // far as the caller could read them as rows.
    let raw_columns = loaded.manifest.raw_pii_columns();
    let rows = AccessRequest::new(&caller.principal, Action::DatasetReadRows, dataset_resource(&dataset))
        .with_context("raw_pii", !raw_columns.is_empty());
    if factory_core::PolicyDecisionPoint::decide(state.pdp.as_ref(), &rows).is_allowed() {
        guard_profile_pii(&caller, &mut loaded.manifest, &raw_columns);
    } else {
        factory_datasets::strip_profile_values(&mut loaded.manifest.profile);
    }
    Ok(Json(manifest_view(&loaded)))
}

/// Masks the PII a profile quotes from columns whose PII was kept, for roles that see such
/// columns masked in rows too.
fn guard_profile_pii(caller: &Caller, manifest: &mut VersionManifest, raw_columns: &[String]) {
    if !raw_columns.is_empty() && !sees_raw_pii(&caller.principal) {
        factory_datasets::mask_profile_pii(&mut manifest.profile, raw_columns, manifest.text_column.as_deref());
    }
}

#[utoipa::path(get, path = "/api/v1/datasets/{name}/versions/{version}/profile", tag = "datasets",
    params(("name" = String, Path), ("version" = i64, Path), TenantQuery),
    responses((status = 200, description = "Column profiles, PII report and dedup report", body = Object), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn profile(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, version)): ApiPath<(String, i64)>,
    ApiQuery(query): ApiQuery<TenantQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    let dataset = find_dataset_for(&state, &caller, &tenant, &name).await?;
    let mut manifest = load_manifest(&state, &dataset, version).await?.manifest;
    // A profile quotes values: it is authorized like the rows, and masked like them.
    let raw_columns = manifest.raw_pii_columns();
    authorize_on(&state, &caller, &dataset, Action::DatasetReadRows, &[("raw_pii", !raw_columns.is_empty())]).await?;
    guard_profile_pii(&caller, &mut manifest, &raw_columns);
    Ok(Json(serde_json::json!({
        "version": version,
        "rows": manifest.rows,
        "profile": manifest.profile,
        "pii": manifest.pii,
        "dedup": manifest.dedup,
    })))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RowsQuery {
    #[serde(default)]
    pub offset: u64,
    /// 1 to 1000, default 100.
    pub limit: Option<u64>,
    pub tenant: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/datasets/{name}/versions/{version}/rows", tag = "datasets",
    params(("name" = String, Path), ("version" = i64, Path), RowsQuery),
    responses((status = 200, description = "Rows as JSON objects; PII columns masked for roles that may not see them", body = Object),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn rows(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, version)): ApiPath<(String, i64)>,
    ApiQuery(query): ApiQuery<RowsQuery>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit: must be between 1 and 1000"));
    }
    let dataset = find_dataset_for(&state, &caller, &tenant, &name).await?;
    let manifest = load_manifest(&state, &dataset, version).await?.manifest;
    let raw_columns = manifest.raw_pii_columns();
    authorize_on(&state, &caller, &dataset, Action::DatasetReadRows, &[("raw_pii", !raw_columns.is_empty())]).await?;
    let shards = manifest.shards;
    let mut skip = query.offset;
    let mut wanted = limit;
    let mut rows = Vec::new();
    for shard in shards {
        if wanted == 0 {
            break;
        }
        if skip >= shard.rows {
            skip -= shard.rows;
            continue;
        }
        let digest: ObjectDigest = shard.digest.parse().map_err(|_| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "manifest names an invalid shard")
        })?;
        let bytes = state.objects.get(&digest).await.map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("reading a shard: {e}"))
        })?;
        let (from, take) = (skip as usize, wanted as usize);
        let mut page = tokio::task::spawn_blocking(move || factory_datasets::read::shard_rows(bytes, from, take))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?;
        skip = 0;
        wanted -= page.len() as u64;
        rows.append(&mut page);
    }
    let masked = !raw_columns.is_empty() && !sees_raw_pii(&caller.principal);
    if masked {
        factory_datasets::mask_pii_columns(&mut rows, &raw_columns);
    }
    let masked_columns = if masked { raw_columns.clone() } else { Vec::new() };
    let read = serde_json::json!({
        "tenant": tenant, "dataset": name, "version": version, "offset": query.offset, "rows": rows.len(),
        "masked_columns": masked_columns,
    });
    let body = Json(serde_json::json!({
        "version": version,
        "offset": query.offset,
        "rows": rows,
        "masked_columns": masked_columns,
    }));
    if raw_columns.is_empty() {
        return Ok(body.into_response());
    }
    // Rows of a version that kept PII are audited per request, masked or not.
    let request = AccessRequest::new(&caller.principal, Action::DatasetReadRows, dataset_resource(&dataset))
        .with_context("raw_pii", true);
    let committed = super::audit_read(&state, &caller, request, &tenant, "dataset.rows.read", read).await?;
    Ok(committed_response(StatusCode::OK, body, committed))
}

#[utoipa::path(get, path = "/api/v1/datasets/{name}/versions/{version}/download", tag = "datasets",
    params(("name" = String, Path), ("version" = i64, Path), TenantQuery),
    responses((status = 200, description = "The version as one zstd Parquet file", content_type = "application/vnd.apache.parquet"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn download(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, version)): ApiPath<(String, i64)>,
    ApiQuery(query): ApiQuery<TenantQuery>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&caller, query.tenant.as_deref())?;
    let dataset = find_dataset_for(&state, &caller, &tenant, &name).await?;
    let manifest = load_manifest(&state, &dataset, version).await?.manifest;
    let raw = !manifest.raw_pii_columns().is_empty();
    authorize_on(&state, &caller, &dataset, Action::DatasetDownload, &[("raw_pii", raw)]).await?;
    let shards = manifest.shards;
    let digests =
        shards.iter().map(|s| s.digest.parse::<ObjectDigest>()).collect::<Result<Vec<_>, _>>().map_err(|_| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "manifest names an invalid shard")
        })?;
    // Every download is audited, before the first byte leaves.
    let request = AccessRequest::new(&caller.principal, Action::DatasetDownload, dataset_resource(&dataset))
        .with_context("raw_pii", raw);
    let read = serde_json::json!({
        "tenant": tenant, "dataset": name, "version": version, "raw_pii": raw, "shards": digests.len(),
    });
    let committed = super::audit_read(&state, &caller, request, &tenant, "dataset.downloaded", read).await?;
    let filename = format!("{name}-v{version}.parquet");
    let headers = [
        (header::CONTENT_TYPE, "application/vnd.apache.parquet".to_string()),
        (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{filename}\"")),
    ];
    if let [only] = digests.as_slice() {
        // One shard is already a complete Parquet file: stream it, verified as it goes.
        let stream = state.objects.open_stream(only).await.map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("reading a shard: {e}"))
        })?;
        let body = Body::from_stream(stream.map_err(std::io::Error::from));
        return Ok(committed_response(StatusCode::OK, (headers, body), committed));
    }
    // Several shards are rewritten into one file, spooled to disk to bound memory.
    let objects = state.objects.clone();
    let runtime = tokio::runtime::Handle::current();
    let spool_dir = state.spool_dir();
    let spooled = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&spool_dir).map_err(|e| e.to_string())?;
        let mut file = tempfile::tempfile_in(&spool_dir).map_err(|e| e.to_string())?;
        let shards = digests.iter().map(|digest| runtime.block_on(objects.get(digest)).map_err(|e| e.to_string()));
        factory_datasets::read::merge_shards(shards, &mut file)?;
        std::io::Seek::rewind(&mut file).map_err(|e| e.to_string())?;
        Ok::<_, String>(file)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?;
    let file = tokio::fs::File::from_std(spooled);
    let stream = tokio_util::io::ReaderStream::new(file);
    Ok(committed_response(StatusCode::OK, (headers, Body::from_stream(stream)), committed))
}
