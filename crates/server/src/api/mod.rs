//! HTTP handlers, one module per resource. Handlers parse and validate input, build the
//! access request, and go through the store's governed path; they never write directly.

pub mod audit;
pub mod datasets;
pub mod deployments;
pub mod feedback;
pub mod jobs;
pub mod keys;
pub mod models;
pub mod openai;
pub mod ops;
pub mod pipelines;
pub mod runs;
pub mod tenants;

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use factory_core::TenantName;
use factory_store::{Committed, StoreError};

use crate::error::ApiError;
use crate::extract::Caller;

pub const AUDIT_INDEX_HEADER: &str = "x-factory-audit-index";

/// A governed write's response: the body plus the index of the audit record that proves it.
pub fn committed_response(status: StatusCode, body: impl IntoResponse, committed: Committed) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(HeaderName::from_static(AUDIT_INDEX_HEADER), HeaderValue::from(committed.audit_index));
    response
}

/// A denial on another tenant's resource reads as "not found": a tenant must not learn what
/// exists elsewhere. The denial itself is already in the audit log.
pub fn hide_foreign(caller: &Caller, owner: Option<&TenantName>, error: StoreError) -> ApiError {
    hide_foreign_refusal(caller, owner, error.into())
}

/// [`hide_foreign`] for errors already mapped to HTTP (a denial is a 403).
pub fn hide_foreign_refusal(caller: &Caller, owner: Option<&TenantName>, error: ApiError) -> ApiError {
    let foreign = caller.principal.tenant.is_some() && owner != caller.principal.tenant.as_ref();
    if error.status == axum::http::StatusCode::FORBIDDEN && foreign {
        return ApiError::no_such_resource();
    }
    error
}

/// Asks the policies whether the caller may make `request` on a resource of `owner`; a
/// refusal is audited, and reads as 404 when the resource is another tenant's.
pub async fn authorize_as(
    state: &crate::state::AppState,
    caller: &Caller,
    request: &factory_core::AccessRequest,
    owner: &TenantName,
) -> Result<(), ApiError> {
    state
        .store
        .authorize(state.pdp.as_ref(), request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(caller, Some(owner), e))?;
    Ok(())
}

/// Records a read of governed bytes (weights, raw or PII-bearing rows, a download) as the
/// audit record of a change that writes nothing else, decided again by the policies: one
/// record per request, before the bytes leave. Its event lets a watcher see reads as they
/// happen.
pub async fn audit_read(
    state: &crate::state::AppState,
    caller: &Caller,
    request: factory_core::AccessRequest,
    owner: &TenantName,
    event: &str,
    details: serde_json::Value,
) -> Result<Committed, ApiError> {
    let change = state
        .store
        .begin_change(state.pdp.as_ref(), request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(caller, Some(owner), e))?;
    Ok(change.commit(details.clone(), factory_store::Event::new(event, details)).await?)
}

/// Checks `value` against the name rule of `T` (one of core's slug types), naming `field` in
/// the refusal: every kind of name has one rule and one message.
pub fn valid_name<T: std::str::FromStr<Err = factory_core::NameError>>(
    field: &str,
    value: &str,
) -> Result<(), ApiError> {
    value.parse::<T>().map(|_| ()).map_err(|e| ApiError::invalid(format!("{field}: {e}")))
}

pub fn parse_tenant(name: &str) -> Result<TenantName, ApiError> {
    TenantName::new(name).map_err(|e| ApiError::invalid(format!("tenant: {e}")))
}

pub fn millis_to_text(millis: i64) -> String {
    factory_core::time::millis_to_rfc3339(millis)
}
