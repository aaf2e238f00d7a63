//! The Batch API on the wire, as OpenAI defines it: `/v1/files` (multipart upload, list, show,
//! content, delete) and `/v1/batches` (create, list, show, cancel); and, beyond OpenAI,
//! `POST /api/v1/deployments/{name}/batches`, a batch over a dataset version whose answers
//! become a new version of a dataset. `service::batches` does the work.

use axum::body::Body;
use axum::extract::{Multipart, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use factory_store::batches::{Batch, StoredFile};
use futures::TryStreamExt;
use serde::Deserialize;
use utoipa::ToSchema;

use super::committed_response;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use crate::service::batches::{self, DatasetSource, NewFileBatch, Page};
use crate::service::inference::invalid_param;
use crate::state::AppState;

/// OpenAI's file object.
fn file_json(file: &StoredFile) -> serde_json::Value {
    serde_json::json!({
        "id": file.id, "object": "file", "bytes": file.bytes, "created_at": file.created_at / 1000,
        "filename": file.filename, "purpose": file.purpose, "status": "processed", "status_details": null,
        "expires_at": null,
    })
}

/// OpenAI's batch object (a dataset batch adds `source` and `output_dataset`).
fn batch_json(batch: &Batch) -> serde_json::Value {
    let seconds = |millis: Option<i64>| millis.map(|millis| millis / 1000);
    let asked = &batch.request;
    let mut json = serde_json::json!({
        "id": asked.id, "object": "batch", "endpoint": asked.endpoint, "errors": batch.errors,
        "input_file_id": asked.input_file_id, "completion_window": asked.completion_window, "status": batch.status,
        "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id,
        "created_at": batch.created_at / 1000, "in_progress_at": seconds(batch.in_progress_at),
        "expires_at": asked.expires_at / 1000, "finalizing_at": seconds(batch.finalizing_at),
        "completed_at": seconds(batch.completed_at), "failed_at": seconds(batch.failed_at),
        "expired_at": seconds(batch.expired_at), "cancelling_at": seconds(batch.cancelling_at),
        "cancelled_at": seconds(batch.cancelled_at),
        "request_counts": { "total": batch.total, "completed": batch.completed, "failed": batch.failed },
        "metadata": asked.metadata,
    });
    if let Some(source) = &asked.source {
        json["source"] = source.clone();
        json["output_dataset"] = batch.output_dataset.clone().unwrap_or_default();
    }
    json
}

/// OpenAI's list page.
fn page<T>(page: &Page<T>, id: impl Fn(&T) -> &str, json: impl Fn(&T) -> serde_json::Value) -> Response {
    let items = &page.items;
    let data: Vec<serde_json::Value> = items.iter().map(json).collect();
    Json(serde_json::json!({
        "object": "list", "data": data, "first_id": items.first().map(&id), "last_id": items.last().map(&id),
        "has_more": page.has_more,
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub after: Option<String>,
    pub limit: Option<i64>,
    pub purpose: Option<String>,
}

/// `POST /v1/files`: a form with `purpose` and `file`, in either order (the Python client sends
/// `purpose` first, the Node client `file`); the file streams to the store as it arrives.
pub async fn upload_file(
    State(state): State<AppState>,
    caller: Caller,
    mut multipart: Multipart,
) -> Result<Response, ApiError> {
    let malformed = |e: axum::extract::multipart::MultipartError| ApiError::invalid(format!("multipart: {e}"));
    let (mut purpose, mut received) = (None, None);
    while let Some(mut field) = multipart.next_field().await.map_err(malformed)? {
        match field.name().map(str::to_string).as_deref() {
            Some("purpose") => purpose = Some(small_field(&mut field, "purpose").await?),
            Some("file") if received.is_none() => {
                if let Some(purpose) = &purpose {
                    batches::check_purpose(purpose)?;
                }
                let filename = field.file_name().unwrap_or("upload.jsonl").to_string();
                let body = field.map_err(std::io::Error::other);
                received = Some(batches::receive_file(&state, &caller, &filename, body).await?);
            }
            _ => {}
        }
    }
    let Some(received) = received else {
        return Err(invalid_param("file", "the form has no file").into());
    };
    let recorded = batches::record_file(&state, &caller, received, purpose.as_deref().unwrap_or_default()).await?;
    Ok(committed_response(StatusCode::OK, Json(file_json(&recorded.value)), recorded.committed))
}

/// A short text field of a form, read at most `MAX_FIELD_BYTES` at a time.
async fn small_field(field: &mut axum::extract::multipart::Field<'_>, name: &str) -> Result<String, ApiError> {
    const MAX_FIELD_BYTES: usize = 64;
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| invalid_param(name, &e.to_string()))? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MAX_FIELD_BYTES {
            return Err(invalid_param(name, &format!("at most {MAX_FIELD_BYTES} bytes")).into());
        }
    }
    String::from_utf8(bytes).map_err(|_| invalid_param(name, "not UTF-8").into())
}

pub async fn list_files(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let limit = query.limit.unwrap_or(batches::MAX_PAGE).clamp(1, batches::MAX_PAGE);
    let files = batches::list_files(&state, &caller, query.purpose.as_deref(), query.after.as_deref(), limit).await?;
    Ok(page(&files, |file| &file.id, file_json))
}

pub async fn show_file(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let file = batches::show_file(&state, &caller, &id).await?;
    Ok(Json(file_json(&file)).into_response())
}

pub async fn file_content(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let (file, stream) = batches::file_content(&state, &caller, &id).await?;
    let headers =
        [(header::CONTENT_TYPE, "application/jsonl".to_string()), (header::CONTENT_LENGTH, file.bytes.to_string())];
    Ok((headers, Body::from_stream(stream)).into_response())
}

pub async fn delete_file(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let recorded = batches::delete_file(&state, &caller, &id).await?;
    let body = Json(serde_json::json!({ "id": id, "object": "file", "deleted": true }));
    Ok(committed_response(StatusCode::OK, body, recorded.committed))
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewFileBatch>,
) -> Result<Response, ApiError> {
    let recorded = batches::create(&state, &caller, body).await?;
    Ok(committed_response(StatusCode::OK, Json(batch_json(&recorded.value)), recorded.committed))
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let limit = query.limit.unwrap_or(20).clamp(1, batches::MAX_PAGE);
    let found = batches::list(&state, &caller, query.after.as_deref(), limit).await?;
    Ok(page(&found, |batch| &batch.request.id, batch_json))
}

pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let batch = batches::show(&state, &caller, &id).await?;
    Ok(Json(batch_json(&batch)).into_response())
}

pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let recorded = batches::cancel(&state, &caller, &id).await?;
    Ok(committed_response(StatusCode::OK, Json(batch_json(&recorded.value)), recorded.committed))
}

/// A batch over a dataset version.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetBatch {
    /// The dataset whose rows are asked about, and its version.
    pub dataset: String,
    pub version: i64,
    /// Each row's message: a minijinja template whose variables are the row's columns.
    pub template: String,
    /// The dataset the answers become the next version of (defined when missing).
    pub output: String,
    /// Fields every request carries besides the message (`max_tokens`, `temperature`, ...).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub request: serde_json::Map<String, serde_json::Value>,
}

#[utoipa::path(post, path = "/api/v1/deployments/{name}/batches", tag = "serving", request_body = DatasetBatch,
    params(("name" = String, Path)),
    responses((status = 201, description = "The batch, validating", body = Object), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_from_dataset(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(deployment): ApiPath<String>,
    ApiJson(body): ApiJson<DatasetBatch>,
) -> Result<Response, ApiError> {
    let source = DatasetSource {
        dataset: body.dataset,
        version: body.version,
        template: body.template,
        output: body.output,
        deployment: deployment.clone(),
        request: body.request,
        derived_from: Vec::new(),
    };
    let recorded = batches::create_from_dataset(&state, &caller, &deployment, source).await?;
    Ok(committed_response(StatusCode::CREATED, Json(batch_json(&recorded.value)), recorded.committed))
}
