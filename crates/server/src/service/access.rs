//! What every use case asks before it acts: which tenant a request is about, whether the
//! policies allow it (a refusal on another tenant's resource reads as "no such resource"), the
//! residency facts they decide on, and the audit record of a governed read.

use factory_core::{AccessRequest, Action, Jurisdiction, Resource, SiteKind, TenantName};
use factory_store::{Committed, StoreError};

use crate::caller::Caller;
use crate::service_error::{ErrorKind, ServiceError};
use crate::state::AppState;

/// The tenant a request is about: the one named (policies decide whether the caller may act
/// there, so a foreign tenant is refused and audited like any denial), else the caller's own.
pub fn tenant_of(caller: &Caller, requested: Option<&str>) -> Result<TenantName, ServiceError> {
    match (&caller.principal.tenant, requested) {
        (_, Some(requested)) => parse_tenant(requested),
        (Some(own), None) => Ok(own.clone()),
        (None, None) => Err(ServiceError::invalid("tenant: platform keys must name the tenant (?tenant=...)")),
    }
}

pub fn parse_tenant(name: &str) -> Result<TenantName, ServiceError> {
    TenantName::new(name).map_err(|e| ServiceError::invalid(format!("tenant: {e}")))
}

/// Checks `value` against the name rule of `T` (one of core's slug types), naming `field` in
/// the refusal: every kind of name has one rule and one message.
pub fn valid_name<T: std::str::FromStr<Err = factory_core::NameError>>(
    field: &str,
    value: &str,
) -> Result<(), ServiceError> {
    value.parse::<T>().map(|_| ()).map_err(|e| ServiceError::invalid(format!("{field}: {e}")))
}

/// A denial on another tenant's resource reads as "not found": a tenant must not learn what
/// exists elsewhere. The denial itself is already in the audit log.
pub fn hide_foreign(caller: &Caller, owner: Option<&TenantName>, error: StoreError) -> ServiceError {
    hide_foreign_refusal(caller, owner, error.into())
}

/// [`hide_foreign`] for errors already in the services' terms.
pub fn hide_foreign_refusal(caller: &Caller, owner: Option<&TenantName>, error: ServiceError) -> ServiceError {
    let foreign = caller.principal.tenant.is_some() && owner != caller.principal.tenant.as_ref();
    let refusal =
        matches!(error.kind, ErrorKind::Forbidden | ErrorKind::UpstreamNotAllowed | ErrorKind::SecretNotGranted);
    if refusal && foreign {
        return ServiceError::no_such_resource();
    }
    error
}

/// Asks the policies whether the caller may make `request` on a resource of `owner`; a
/// refusal is audited, and reads as "not found" when the resource is another tenant's.
pub async fn authorize_as(
    state: &AppState,
    caller: &Caller,
    request: &AccessRequest,
    owner: &TenantName,
) -> Result<(), ServiceError> {
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
    state: &AppState,
    caller: &Caller,
    request: AccessRequest,
    owner: &TenantName,
    event: &str,
    details: serde_json::Value,
) -> Result<Committed, ServiceError> {
    let change = state
        .store
        .begin_change(state.pdp.as_ref(), request, &caller.request_id)
        .await
        .map_err(|e| hide_foreign(caller, Some(owner), e))?;
    Ok(change.commit(details.clone(), factory_store::Event::new(event, details)).await?)
}

/// The request to export `version`, with whether `destination` (when the export names one) is
/// where the model may live: its own jurisdiction, allowed to its tenant.
pub async fn export_request(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    version: &factory_store::models::ModelVersion,
    destination: Option<&Jurisdiction>,
) -> Result<AccessRequest, ServiceError> {
    let resource = Resource::model(tenant, &version.name, version.classification, Some(&version.jurisdiction));
    let request = AccessRequest::new(&caller.principal, Action::ModelExport, resource);
    let Some(destination) = destination else {
        return Ok(request);
    };
    let (allowed, _) = site_facts(state, tenant, destination, SiteKind::Storage).await?;
    Ok(request.with_context("destination_allowed", allowed && destination == &version.jurisdiction))
}

/// Whether the tenant allows `jurisdiction`, and whether a site of `kind` (storage for the
/// registry, serving for deployments) sits inside it: the facts residency policies decide on.
pub async fn site_facts(
    state: &AppState,
    tenant: &TenantName,
    jurisdiction: &Jurisdiction,
    kind: SiteKind,
) -> Result<(bool, bool), ServiceError> {
    let allowed = state.lookups.tenant(tenant).await?.is_some_and(|t| t.jurisdictions.contains(jurisdiction));
    let site = state.config.sites.iter().any(|s| &s.jurisdiction == jurisdiction && s.kinds.contains(&kind));
    Ok((allowed, site))
}
