//! The audit log's read side on the wire: checkpoints, the public key, inclusion and
//! consistency proofs (hashes in base64), and the records themselves; `service::audit` does
//! the checking.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiQuery, Caller};
use crate::service::audit::{self, Consistency, Inclusion};
use crate::state::AppState;

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

#[utoipa::path(get, path = "/api/v1/audit/checkpoint", tag = "audit",
    responses((status = 200, description = "A signed checkpoint of the log as it is now (C2SP tlog-checkpoint)", body = String, content_type = "text/plain"),
        (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn checkpoint(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    Ok(text(audit::checkpoint(&state, &caller).await?))
}

#[utoipa::path(get, path = "/api/v1/audit/public-key", tag = "audit",
    responses((status = 200, description = "The checkpoint verifier key (C2SP signed-note vkey)", body = String, content_type = "text/plain"),
        (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn public_key(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    Ok(text(format!("{}\n", audit::public_key(&state, &caller).await?)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct InclusionQuery {
    /// The record's index.
    pub index: u64,
    /// The tree size the proof is for (a checkpoint's size).
    pub size: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InclusionProof {
    pub index: u64,
    pub size: u64,
    /// Base64 RFC 6962 leaf hash of the record.
    pub leaf_hash: String,
    /// Base64 root of the tree of `size` records.
    pub root: String,
    /// Base64 hashes, leaf to root.
    pub proof: Vec<String>,
}

impl From<Inclusion> for InclusionProof {
    fn from(inclusion: Inclusion) -> Self {
        InclusionProof {
            index: inclusion.index,
            size: inclusion.size,
            leaf_hash: BASE64.encode(inclusion.leaf_hash),
            root: BASE64.encode(inclusion.root),
            proof: inclusion.proof.iter().map(|h| BASE64.encode(h)).collect(),
        }
    }
}

#[utoipa::path(get, path = "/api/v1/audit/proof/inclusion", tag = "audit", params(InclusionQuery),
    responses((status = 200, body = InclusionProof), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn inclusion(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<InclusionQuery>,
) -> Result<Json<InclusionProof>, ApiError> {
    Ok(Json(audit::inclusion(&state, &caller, query.index, query.size).await?.into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    pub old: u64,
    pub new: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConsistencyProof {
    pub old: u64,
    pub new: u64,
    pub old_root: String,
    pub new_root: String,
    pub proof: Vec<String>,
}

impl From<Consistency> for ConsistencyProof {
    fn from(consistency: Consistency) -> Self {
        ConsistencyProof {
            old: consistency.old,
            new: consistency.new,
            old_root: BASE64.encode(consistency.old_root),
            new_root: BASE64.encode(consistency.new_root),
            proof: consistency.proof.iter().map(|h| BASE64.encode(h)).collect(),
        }
    }
}

#[utoipa::path(get, path = "/api/v1/audit/proof/consistency", tag = "audit", params(ConsistencyQuery),
    responses((status = 200, body = ConsistencyProof), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn consistency(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ConsistencyQuery>,
) -> Result<Json<ConsistencyProof>, ApiError> {
    Ok(Json(audit::consistency(&state, &caller, query.old, query.new).await?.into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RecordsQuery {
    /// First index to return.
    #[serde(default)]
    pub from: u64,
    /// At most this many records (1 to 1000, default 100).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecordView {
    /// The canonical record (its bytes are the Merkle leaf).
    #[schema(value_type = Object)]
    pub record: serde_json::Value,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecordsPage {
    pub records: Vec<RecordView>,
    /// The `from` of the next page, absent at the end.
    pub next: Option<u64>,
}

impl From<audit::RecordsPage> for RecordsPage {
    fn from(page: audit::RecordsPage) -> Self {
        let records = page
            .entries
            .into_iter()
            .map(|entry| RecordView {
                record: serde_json::to_value(&entry.record).unwrap_or(serde_json::Value::Null),
                details: entry.details,
            })
            .collect();
        RecordsPage { records, next: page.next }
    }
}

#[utoipa::path(get, path = "/api/v1/audit/records", tag = "audit", params(RecordsQuery),
    responses((status = 200, body = RecordsPage), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn records(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<RecordsQuery>,
) -> Result<Json<RecordsPage>, ApiError> {
    Ok(Json(audit::records(&state, &caller, query.from, query.limit).await?.into()))
}
