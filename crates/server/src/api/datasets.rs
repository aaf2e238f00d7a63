//! Governed datasets on the wire: define, ingest versions by streaming, read back manifests,
//! rows, Parquet and profiles. The use cases are `service::datasets`; these handlers decode,
//! call one of them and encode.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use factory_datasets::{ColumnSpec, DedupMode, Format, IngestErrorKind, OnError, PiiPolicy};
use factory_store::datasets::Dataset;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{committed_response, millis_to_text, tenant_of};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use crate::service::datasets::{self, IngestFailure, Ingested, LoadedManifest, NewDataset, Parquet, Upload};
use crate::state::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TenantQuery {
    /// Platform keys name the tenant; tenant keys act in their own tenant.
    pub tenant: Option<String>,
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
    let new = NewDataset {
        name: body.name,
        classification: body.classification,
        jurisdiction: body.jurisdiction,
        site: body.site,
        owner: body.owner,
        retention_days: body.retention_days,
        description: body.description,
        tags: body.tags,
        pii_policy: body.pii_policy,
        schema: body.schema,
    };
    let created = datasets::create(&state, &caller, &tenant, new).await?;
    Ok(committed_response(StatusCode::CREATED, Json(DatasetView::from(created.value)), created.committed))
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
    let visible = datasets::list(&state, &caller, &tenant).await?;
    Ok(Json(DatasetList { datasets: visible.into_iter().map(DatasetView::from).collect() }))
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
    let (dataset, versions) = datasets::show(&state, &caller, &tenant, &name).await?;
    let versions = versions
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
        derived_from: Vec::new(),
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
    let loaded = datasets::manifest(&state, &caller, &tenant, &name, version).await?;
    Ok(Json(manifest_view(&loaded)))
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
    let manifest = datasets::profile(&state, &caller, &tenant, &name, version).await?;
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
    let read = datasets::rows(&state, &caller, &tenant, &name, version, query.offset, limit).await?;
    let body = Json(serde_json::json!({
        "version": version,
        "offset": query.offset,
        "rows": read.rows,
        "masked_columns": read.masked_columns,
    }));
    Ok(match read.committed {
        Some(committed) => committed_response(StatusCode::OK, body, committed),
        None => body.into_response(),
    })
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
    let download = datasets::download(&state, &caller, &tenant, &name, version).await?;
    let filename = format!("{name}-v{version}.parquet");
    let headers = [
        (header::CONTENT_TYPE, "application/vnd.apache.parquet".to_string()),
        (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{filename}\"")),
    ];
    let body = match download.value {
        Parquet::Shard(stream) => Body::from_stream(stream.map_err(std::io::Error::from)),
        Parquet::Spooled(file) => Body::from_stream(tokio_util::io::ReaderStream::new(file)),
    };
    Ok(committed_response(StatusCode::OK, (headers, body), download.committed))
}
