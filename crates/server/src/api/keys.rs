//! `POST /api/v1/tenants/{tenant}/keys` (the secret is returned once) and
//! `DELETE /api/v1/keys/{id}`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use factory_core::{AccessRequest, Action, Resource, Role};
use factory_store::identity::ApiKey;
use factory_store::Event;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{committed_response, hide_foreign, millis_to_text, parse_tenant};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, Caller};
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// One of admin, steward, engineer, app, auditor.
    pub role: String,
    #[serde(default)]
    pub description: String,
    /// Expiry as RFC 3339, e.g. `2027-01-01T00:00:00Z`.
    pub expires_at: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    pub tenant: Option<String>,
    pub role: String,
    pub description: String,
    pub created_at: String,
    pub created_by: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    /// Present only in the response that created the key; it is stored nowhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl KeyView {
    fn new(key: ApiKey, secret: Option<String>) -> Self {
        KeyView {
            id: key.id,
            tenant: key.tenant.map(|t| t.to_string()),
            role: key.role.to_string(),
            description: key.description,
            created_at: millis_to_text(key.created_at),
            created_by: key.created_by,
            expires_at: key.expires_at.map(millis_to_text),
            revoked_at: key.revoked_at.map(millis_to_text),
            secret,
        }
    }
}

fn parse_expiry(text: &str) -> Result<i64, ApiError> {
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| ApiError::invalid(format!("expires_at: {e}; expected RFC 3339 such as 2027-01-01T00:00:00Z")))?;
    Ok((parsed.unix_timestamp_nanos() / 1_000_000) as i64)
}

#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/keys", tag = "identity", request_body = CreateKey,
    params(("tenant" = String, Path, description = "tenant name")),
    responses((status = 201, body = KeyView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(tenant): ApiPath<String>,
    ApiJson(body): ApiJson<CreateKey>,
) -> Result<Response, ApiError> {
    let tenant = parse_tenant(&tenant)?;
    let role: Role = body.role.parse().map_err(|e| ApiError::invalid(format!("role: {e}")))?;
    let expires_at = body.expires_at.as_deref().map(parse_expiry).transpose()?;
    if body.description.len() > 1024 {
        return Err(ApiError::invalid("description: at most 1024 bytes"));
    }
    let request = AccessRequest::new(&caller.principal, Action::KeyCreate, Resource::tenant(&tenant))
        .with_context("role", role.as_str());
    let mut change = state
        .store
        .begin_change(state.pdp.as_ref(), request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(&caller, Some(&tenant), e))?;
    let issued = change.create_api_key(Some(&tenant), role, &body.description, expires_at).await?;
    let payload = serde_json::json!({ "key": issued.key.id, "tenant": tenant, "role": role });
    let committed = change.commit(payload.clone(), Event::new("key.created", payload)).await?;
    Ok(committed_response(StatusCode::CREATED, Json(KeyView::new(issued.key, Some(issued.secret))), committed))
}

#[utoipa::path(delete, path = "/api/v1/keys/{id}", tag = "identity",
    params(("id" = String, Path, description = "key id")),
    responses((status = 200, body = KeyView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let key = state.store.api_key(&id).await?.ok_or_else(ApiError::no_such_resource)?;
    let request = AccessRequest::new(&caller.principal, Action::KeyRevoke, Resource::api_key(&id, key.tenant.as_ref()));
    let mut change = state
        .store
        .begin_change(state.pdp.as_ref(), request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(&caller, key.tenant.as_ref(), e))?;
    let revoked = change.revoke_api_key(&id).await?;
    let payload = serde_json::json!({ "key": id, "tenant": key.tenant });
    let committed = change.commit(payload.clone(), Event::new("key.revoked", payload)).await?;
    Ok(committed_response(StatusCode::OK, Json(KeyView::new(revoked, None)), committed))
}
