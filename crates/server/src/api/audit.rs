//! The audit log's read side: checkpoints, the public key, inclusion and consistency proofs,
//! and the records themselves.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use factory_core::{AccessRequest, Action, Resource};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiQuery, Caller};
use crate::state::AppState;

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn allow(state: &AppState, caller: &Caller, action: Action) -> Result<(), ApiError> {
    let request = AccessRequest::new(&caller.principal, action, Resource::audit_log());
    state.store.authorize(state.pdp.as_ref(), &request, &caller.request_id).await?;
    Ok(())
}

#[utoipa::path(get, path = "/api/v1/audit/checkpoint", tag = "audit",
    responses((status = 200, description = "A signed checkpoint of the log as it is now (C2SP tlog-checkpoint)", body = String, content_type = "text/plain"),
        (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn checkpoint(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    allow(&state, &caller, Action::AuditProof).await?;
    Ok(text(state.store.issue_checkpoint(&state.checkpoints).await?))
}

#[utoipa::path(get, path = "/api/v1/audit/public-key", tag = "audit",
    responses((status = 200, description = "The checkpoint verifier key (C2SP signed-note vkey)", body = String, content_type = "text/plain"),
        (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn public_key(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    allow(&state, &caller, Action::AuditProof).await?;
    Ok(text(format!("{}\n", state.checkpoints.signer.verifier_key())))
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

#[utoipa::path(get, path = "/api/v1/audit/proof/inclusion", tag = "audit", params(InclusionQuery),
    responses((status = 200, body = InclusionProof), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn inclusion(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<InclusionQuery>,
) -> Result<Json<InclusionProof>, ApiError> {
    allow(&state, &caller, Action::AuditProof).await?;
    let size = state.store.audit_size().await?;
    if query.size > size || query.index >= query.size {
        return Err(ApiError::invalid(format!(
            "index must be below size and size at most the log's size {size} (got index {}, size {})",
            query.index, query.size
        )));
    }
    let (leaf, proof) = state.store.inclusion_proof(query.index, query.size).await?;
    let root = state.store.audit_root(query.size).await?;
    Ok(Json(InclusionProof {
        index: query.index,
        size: query.size,
        leaf_hash: BASE64.encode(leaf),
        root: BASE64.encode(root),
        proof: proof.iter().map(|h| BASE64.encode(h)).collect(),
    }))
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

#[utoipa::path(get, path = "/api/v1/audit/proof/consistency", tag = "audit", params(ConsistencyQuery),
    responses((status = 200, body = ConsistencyProof), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn consistency(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ConsistencyQuery>,
) -> Result<Json<ConsistencyProof>, ApiError> {
    allow(&state, &caller, Action::AuditProof).await?;
    let size = state.store.audit_size().await?;
    if query.old == 0 || query.old > query.new || query.new > size {
        return Err(ApiError::invalid(format!(
            "need 0 < old <= new <= {size} (the log's size); got old {}, new {}",
            query.old, query.new
        )));
    }
    let proof = state.store.consistency_proof(query.old, query.new).await?;
    Ok(Json(ConsistencyProof {
        old: query.old,
        new: query.new,
        old_root: BASE64.encode(state.store.audit_root(query.old).await?),
        new_root: BASE64.encode(state.store.audit_root(query.new).await?),
        proof: proof.iter().map(|h| BASE64.encode(h)).collect(),
    }))
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

#[utoipa::path(get, path = "/api/v1/audit/records", tag = "audit", params(RecordsQuery),
    responses((status = 200, body = RecordsPage), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn records(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<RecordsQuery>,
) -> Result<Json<RecordsPage>, ApiError> {
    allow(&state, &caller, Action::AuditRead).await?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit: must be between 1 and 1000"));
    }
    // Tenant auditors see their own tenant's records only.
    let entries = state.store.audit_records(query.from, limit, caller.principal.tenant.as_ref()).await?;
    let next = if entries.len() == limit as usize { entries.last().map(|e| e.record.index + 1) } else { None };
    let records = entries
        .into_iter()
        .map(|entry| RecordView {
            record: serde_json::to_value(&entry.record).unwrap_or(serde_json::Value::Null),
            details: entry.details,
        })
        .collect();
    Ok(Json(RecordsPage { records, next }))
}
