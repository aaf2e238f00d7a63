//! `POST /api/v1/tenants`, `GET /api/v1/tenants/{tenant}` and its compute quota.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use factory_core::{AccessRequest, Action, Jurisdiction, Resource, TenantName};
use factory_store::identity::Tenant;
use factory_store::Event;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{committed_response, hide_foreign, millis_to_text, parse_tenant};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, Caller};
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// 1 to 63 characters of a-z, 0-9, '-' or '_'.
    pub name: String,
    /// Jurisdictions the tenant's data and models may live in, e.g. `["eu", "de"]`.
    pub jurisdictions: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TenantView {
    pub name: String,
    pub jurisdictions: Vec<String>,
    pub created_at: String,
    pub created_by: String,
    /// Limits on scarce compute and current use (absent on creation).
    #[schema(value_type = Option<Object>)]
    pub quota: Option<factory_store::jobs::TenantQuota>,
}

impl From<Tenant> for TenantView {
    fn from(tenant: Tenant) -> Self {
        TenantView {
            name: tenant.name.to_string(),
            jurisdictions: tenant.jurisdictions.iter().map(|j| j.to_string()).collect(),
            created_at: millis_to_text(tenant.created_at),
            created_by: tenant.created_by,
            quota: None,
        }
    }
}

#[utoipa::path(post, path = "/api/v1/tenants", tag = "identity", request_body = CreateTenant,
    responses((status = 201, body = TenantView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateTenant>,
) -> Result<Response, ApiError> {
    let name = TenantName::new(&body.name).map_err(|e| ApiError::invalid(format!("name: {e}")))?;
    if body.jurisdictions.is_empty() {
        return Err(ApiError::invalid("jurisdictions: at least one jurisdiction is required"));
    }
    let jurisdictions = body
        .jurisdictions
        .iter()
        .enumerate()
        .map(|(i, j)| Jurisdiction::new(j).map_err(|e| ApiError::invalid(format!("jurisdictions[{i}]: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let request = AccessRequest::new(&caller.principal, Action::TenantCreate, Resource::platform());
    let mut change = state.store.begin_change(state.pdp.as_ref(), request, &caller.request_id).await?;
    let tenant = change.create_tenant(&name, &jurisdictions).await?;
    let payload = serde_json::json!({ "tenant": name, "jurisdictions": jurisdictions });
    let committed = change.commit(payload.clone(), Event::new("tenant.created", payload)).await?;
    Ok(committed_response(StatusCode::CREATED, Json(TenantView::from(tenant)), committed))
}

#[utoipa::path(get, path = "/api/v1/tenants/{tenant}", tag = "identity",
    params(("tenant" = String, Path, description = "tenant name")),
    responses((status = 200, body = TenantView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(tenant): ApiPath<String>,
) -> Result<Json<TenantView>, ApiError> {
    let tenant = parse_tenant(&tenant)?;
    let request = AccessRequest::new(&caller.principal, Action::TenantRead, Resource::tenant(&tenant));
    state
        .store
        .authorize(state.pdp.as_ref(), &request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(&caller, Some(&tenant), e))?;
    let found = state.store.tenant(&tenant).await?;
    let mut view: TenantView =
        found.map(TenantView::from).ok_or_else(|| ApiError::not_found(format!("tenant {tenant} does not exist")))?;
    view.quota = Some(state.store.tenant_quota(&tenant).await?);
    Ok(Json(view))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetQuota {
    /// Jobs of the tenant running at once; absent or null for no limit.
    pub max_concurrent_jobs: Option<i64>,
    /// Worker-seconds all the tenant's jobs may use; absent or null for no limit. New jobs
    /// past it get 429, queued ones wait.
    pub compute_seconds: Option<i64>,
}

#[utoipa::path(put, path = "/api/v1/tenants/{tenant}/quota", tag = "identity", request_body = SetQuota,
    params(("tenant" = String, Path, description = "tenant name")),
    responses((status = 200, body = TenantView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_quota(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(tenant): ApiPath<String>,
    ApiJson(body): ApiJson<SetQuota>,
) -> Result<Response, ApiError> {
    let tenant = parse_tenant(&tenant)?;
    let found = state.store.tenant(&tenant).await?;
    let request = AccessRequest::new(&caller.principal, Action::TenantQuota, Resource::tenant(&tenant));
    let mut change = state
        .store
        .begin_change(state.pdp.as_ref(), request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(&caller, Some(&tenant), e))?;
    let found = found.ok_or_else(|| ApiError::not_found(format!("tenant {tenant} does not exist")))?;
    change.set_tenant_quota(body.max_concurrent_jobs, body.compute_seconds).await?;
    let details = serde_json::json!({
        "tenant": tenant, "max_concurrent_jobs": body.max_concurrent_jobs, "compute_seconds": body.compute_seconds,
    });
    let committed = change.commit(details.clone(), Event::new("tenant.quota.set", details)).await?;
    let mut view = TenantView::from(found);
    view.quota = Some(state.store.tenant_quota(&tenant).await?);
    Ok(committed_response(StatusCode::OK, Json(view), committed))
}
