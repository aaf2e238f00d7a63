//! Changing what a deployment serves, as a pipeline's author: through the same handlers the
//! HTTP API uses, so each change is authorized, audited and published like a user's.

use axum::extract::State;
use factory_core::TenantName;

use crate::api;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use crate::serving::{DeploymentSpec, VariantRole, VariantSpec};
use crate::state::AppState;

/// Calls a handler as the pipeline's author and reads its JSON answer.
pub(crate) async fn answer(response: Result<axum::response::Response, ApiError>) -> Result<serde_json::Value, String> {
    let response = response.map_err(|e| e.message)?;
    let bytes = axum::body::to_bytes(response.into_body(), 16 << 20).await.map_err(|e| e.to_string())?;
    Ok(serde_json::from_slice(&bytes).unwrap_or_default())
}

pub(crate) fn tenant_query(tenant: &TenantName) -> ApiQuery<api::datasets::TenantQuery> {
    ApiQuery(api::datasets::TenantQuery { tenant: Some(tenant.to_string()) })
}

/// The deployment's spec now, as the author may read it.
pub(crate) async fn deployment_spec(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
) -> Result<DeploymentSpec, String> {
    let view = answer(
        api::deployments::show(State(state.clone()), caller.clone(), ApiPath(name.to_string()), tenant_query(tenant))
            .await
            .map(axum::response::IntoResponse::into_response),
    )
    .await?;
    serde_json::from_value(view["spec"].clone()).map_err(|e| format!("deployment {name}: {e}"))
}

/// Points `name@alias` at `version`, as the caller may.
pub(crate) async fn set_alias(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    alias: &str,
    version: i64,
) -> Result<serde_json::Value, String> {
    answer(
        api::models::set_alias(
            State(state.clone()),
            caller.clone(),
            ApiPath((name.to_string(), alias.to_string())),
            tenant_query(tenant),
            ApiJson(api::models::SetAlias { version }),
        )
        .await,
    )
    .await
}

pub(crate) async fn put_deployment(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    name: &str,
    spec: DeploymentSpec,
) -> Result<(), String> {
    let body = api::deployments::UpdateDeployment::from(spec);
    answer(
        api::deployments::update(
            State(state.clone()),
            caller.clone(),
            ApiPath(name.to_string()),
            tenant_query(tenant),
            ApiJson(body),
        )
        .await,
    )
    .await?;
    Ok(())
}

/// Moves `alias` to the candidate and routes all primary traffic to the stable variant (which
/// follows the alias; a variant pinned to a version is pointed at the candidate). `original`
/// is the spec to restore the routing from (the one before a canary).
pub(crate) async fn promote(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    deployment: &str,
    alias: &str,
    candidate: &str,
    original: Option<DeploymentSpec>,
) -> Result<serde_json::Value, String> {
    let (name, version) = candidate.split_once('@').ok_or(format!("{candidate:?} is not NAME@VERSION"))?;
    let number: i64 = version.parse().map_err(|_| format!("{candidate:?} is not NAME@VERSION"))?;
    let previous = api::models::version_of(state, tenant, name, alias).await.map_err(|e| e.message)?.map(|v| v.version);
    set_alias(state, caller, tenant, name, alias, number).await?;
    let mut spec = match original {
        Some(spec) => spec,
        None => deployment_spec(state, caller, tenant, deployment).await?,
    };
    let follows = format!("{name}@{alias}");
    let mut routed = false;
    for variant in spec.variants.iter_mut().filter(|v| v.role == VariantRole::Primary) {
        let Some(model) = &variant.model else { continue };
        if !routed && (model == &follows || model.split_once('@').is_some_and(|(n, _)| n == name)) {
            variant.model = Some(if model == &follows { follows.clone() } else { candidate.to_string() });
            variant.weight = 1.0;
            routed = true;
        } else {
            variant.weight = 0.0;
        }
    }
    if !routed {
        spec.variants.insert(
            0,
            VariantSpec { model: Some(follows.clone()), upstream: None, weight: 1.0, role: VariantRole::Primary },
        );
    }
    spec.variants.retain(|v| v.role != VariantRole::Primary || v.weight > 0.0);
    put_deployment(state, caller, tenant, deployment, spec.clone()).await?;
    Ok(serde_json::json!({
        "promoted": candidate, "alias": alias, "previous_version": previous, "deployment": deployment,
        "variants": spec.variants.iter().map(|v| serde_json::json!({ "model": v.label(), "weight": v.weight })).collect::<Vec<_>>(),
    }))
}
