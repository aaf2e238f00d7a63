//! `POST /api/v1/tenants/{tenant}/keys` (the secret is returned once) and
//! `DELETE /api/v1/keys/{id}` on the wire; `service::keys` does the checking.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use factory_store::identity::{ApiKey, IssuedKey};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{committed_response, millis_to_text, parse_tenant};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, Caller};
use crate::service::keys::{self, NewKey};
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
    let key = NewKey { role: body.role, description: body.description, expires_at: body.expires_at };
    let created = keys::create(&state, &caller, &tenant, key).await?;
    let IssuedKey { key, secret } = created.value;
    Ok(committed_response(StatusCode::CREATED, Json(KeyView::new(key, Some(secret))), created.committed))
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
    let revoked = keys::revoke(&state, &caller, &id).await?;
    Ok(committed_response(StatusCode::OK, Json(KeyView::new(revoked.value, None)), revoked.committed))
}
