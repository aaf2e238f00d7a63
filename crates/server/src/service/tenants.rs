//! Tenants as use cases: create one (with the jurisdictions its data and models may live in),
//! read one with its compute quota, and set that quota. The writes are governed changes
//! (`tenant.created`, `tenant.quota.set`).

use factory_core::{AccessRequest, Action, Jurisdiction, Resource, TenantName};
use factory_store::identity::Tenant;
use factory_store::jobs::TenantQuota;
use factory_store::Event;

use super::access::{authorize_as, hide_foreign};
use super::Recorded;
use crate::caller::Caller;
use crate::service_error::ServiceError;
use crate::state::AppState;

/// A tenant to create, as a client names it.
#[derive(Debug, Clone)]
pub struct NewTenant {
    pub name: String,
    pub jurisdictions: Vec<String>,
}

/// A tenant with its limits on scarce compute and its current use.
#[derive(Debug, Clone)]
pub struct TenantAccount {
    pub tenant: Tenant,
    pub quota: TenantQuota,
}

/// The limits to set; `None` is no limit.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub max_concurrent_jobs: Option<i64>,
    pub compute_seconds: Option<i64>,
}

fn does_not_exist(tenant: &TenantName) -> ServiceError {
    ServiceError::not_found(format!("tenant {tenant} does not exist"))
}

/// Creates the tenant `new.name` (`tenant.created`).
pub async fn create(state: &AppState, caller: &Caller, new: NewTenant) -> Result<Recorded<Tenant>, ServiceError> {
    let name = TenantName::new(&new.name).map_err(|e| ServiceError::invalid(format!("name: {e}")))?;
    if new.jurisdictions.is_empty() {
        return Err(ServiceError::invalid("jurisdictions: at least one jurisdiction is required"));
    }
    let jurisdictions = new
        .jurisdictions
        .iter()
        .enumerate()
        .map(|(i, j)| Jurisdiction::new(j).map_err(|e| ServiceError::invalid(format!("jurisdictions[{i}]: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let request = AccessRequest::new(&caller.principal, Action::TenantCreate, Resource::platform());
    let mut change = state.store.begin_change(state.pdp.as_ref(), request, &caller.request_id).await?;
    let tenant = change.create_tenant(&name, &jurisdictions).await?;
    let payload = serde_json::json!({ "tenant": name, "jurisdictions": jurisdictions });
    let committed = change.commit(payload.clone(), Event::new("tenant.created", payload)).await?;
    Ok(Recorded { value: tenant, committed })
}

/// `tenant` with its quota, as the caller may read it.
pub async fn show(state: &AppState, caller: &Caller, tenant: &TenantName) -> Result<TenantAccount, ServiceError> {
    let request = AccessRequest::new(&caller.principal, Action::TenantRead, Resource::tenant(tenant));
    authorize_as(state, caller, &request, tenant).await?;
    let found = state.store.tenant(tenant).await?.ok_or_else(|| does_not_exist(tenant))?;
    let quota = state.store.tenant_quota(tenant).await?;
    Ok(TenantAccount { tenant: found, quota })
}

/// Sets `tenant`'s compute quota (`tenant.quota.set`) and answers the tenant with it.
pub async fn set_quota(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    quota: Quota,
) -> Result<Recorded<TenantAccount>, ServiceError> {
    let found = state.store.tenant(tenant).await?;
    let request = AccessRequest::new(&caller.principal, Action::TenantQuota, Resource::tenant(tenant));
    let mut change = state
        .store
        .begin_change(state.pdp.as_ref(), request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(caller, Some(tenant), e))?;
    // Whether it exists is told only to a caller who may set its quota.
    let found = found.ok_or_else(|| does_not_exist(tenant))?;
    change.set_tenant_quota(quota.max_concurrent_jobs, quota.compute_seconds).await?;
    let details = serde_json::json!({
        "tenant": tenant, "max_concurrent_jobs": quota.max_concurrent_jobs, "compute_seconds": quota.compute_seconds,
    });
    let committed = change.commit(details.clone(), Event::new("tenant.quota.set", details)).await?;
    let quota = state.store.tenant_quota(tenant).await?;
    Ok(Recorded { value: TenantAccount { tenant: found, quota }, committed })
}
