//! API keys as use cases: issue a key in a tenant (its secret is handed back once and stored
//! nowhere) and revoke one. Both are governed changes (`key.created`, `key.revoked`).

use factory_core::{AccessRequest, Action, Resource, Role, TenantName};
use factory_store::identity::{ApiKey, IssuedKey};
use factory_store::Event;

use super::access::hide_foreign;
use super::Recorded;
use crate::caller::Caller;
use crate::service_error::ServiceError;
use crate::state::AppState;

/// A key to issue, as a client asks for it.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// One of admin, steward, engineer, app, auditor.
    pub role: String,
    pub description: String,
    /// Expiry as RFC 3339, e.g. `2027-01-01T00:00:00Z`.
    pub expires_at: Option<String>,
}

/// Milliseconds since the epoch of an RFC 3339 expiry.
fn parse_expiry(text: &str) -> Result<i64, ServiceError> {
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map_err(|e| {
        ServiceError::invalid(format!("expires_at: {e}; expected RFC 3339 such as 2027-01-01T00:00:00Z"))
    })?;
    Ok((parsed.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// Issues a key of `key.role` in `tenant` (`key.created`); the secret is in the answer only.
pub async fn create(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    key: NewKey,
) -> Result<Recorded<IssuedKey>, ServiceError> {
    let role: Role = key.role.parse().map_err(|e| ServiceError::invalid(format!("role: {e}")))?;
    let expires_at = key.expires_at.as_deref().map(parse_expiry).transpose()?;
    if key.description.len() > 1024 {
        return Err(ServiceError::invalid("description: at most 1024 bytes"));
    }
    let request = AccessRequest::new(&caller.principal, Action::KeyCreate, Resource::tenant(tenant))
        .with_context("role", role.as_str());
    let mut change = state
        .store
        .begin_change(state.pdp.as_ref(), request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(caller, Some(tenant), e))?;
    let issued = change.create_api_key(Some(tenant), role, &key.description, expires_at).await?;
    let payload = serde_json::json!({ "key": issued.key.id, "tenant": tenant, "role": role });
    let committed = change.commit(payload.clone(), Event::new("key.created", payload)).await?;
    Ok(Recorded { value: issued, committed })
}

/// Revokes the key `id` (`key.revoked`); another tenant's key reads as no such resource.
pub async fn revoke(state: &AppState, caller: &Caller, id: &str) -> Result<Recorded<ApiKey>, ServiceError> {
    let key = state.store.api_key(id).await?.ok_or_else(ServiceError::no_such_resource)?;
    let request = AccessRequest::new(&caller.principal, Action::KeyRevoke, Resource::api_key(id, key.tenant.as_ref()));
    let mut change = state
        .store
        .begin_change(state.pdp.as_ref(), request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(caller, key.tenant.as_ref(), e))?;
    let revoked = change.revoke_api_key(id).await?;
    let payload = serde_json::json!({ "key": id, "tenant": key.tenant });
    let committed = change.commit(payload.clone(), Event::new("key.revoked", payload)).await?;
    Ok(Recorded { value: revoked, committed })
}
