//! `POST /api/v1/tenants`, `GET /api/v1/tenants/{tenant}` and its compute quota on the wire;
//! `service::tenants` does the checking.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use factory_store::identity::Tenant;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{committed_response, millis_to_text, parse_tenant};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, Caller};
use crate::service::tenants::{self, NewTenant, Quota, TenantAccount};
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

impl From<TenantAccount> for TenantView {
    fn from(account: TenantAccount) -> Self {
        TenantView { quota: Some(account.quota), ..TenantView::from(account.tenant) }
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
    let tenant = NewTenant { name: body.name, jurisdictions: body.jurisdictions };
    let created = tenants::create(&state, &caller, tenant).await?;
    Ok(committed_response(StatusCode::CREATED, Json(TenantView::from(created.value)), created.committed))
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
    Ok(Json(tenants::show(&state, &caller, &tenant).await?.into()))
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
    let quota = Quota { max_concurrent_jobs: body.max_concurrent_jobs, compute_seconds: body.compute_seconds };
    let set = tenants::set_quota(&state, &caller, &tenant, quota).await?;
    Ok(committed_response(StatusCode::OK, Json(TenantView::from(set.value)), set.committed))
}
