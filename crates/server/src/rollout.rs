//! Changing what a deployment serves, as a pipeline's author: promotion moves an alias to the
//! candidate and routes the deployment's primary traffic to it, through the same use cases the
//! HTTP API calls (`service::models::move_alias`, `service::deployments::update`), so each
//! change is authorized, audited and published like a user's.

use factory_core::TenantName;
use serde::Serialize;

use crate::caller::Caller;
use crate::service::{deployments, models, ServiceError};
use crate::serving::{DeploymentSpec, VariantRole, VariantSpec};
use crate::state::AppState;

/// What a promotion did: the alias it moved (and from which version) and the routing it left.
#[derive(Debug, Clone, Serialize)]
pub struct Promotion {
    pub promoted: String,
    pub alias: String,
    pub previous_version: Option<i64>,
    pub deployment: String,
    pub variants: Vec<RoutedVariant>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoutedVariant {
    pub model: String,
    pub weight: f64,
}

/// Moves `alias` to the candidate and routes all primary traffic to the stable variant (which
/// follows the alias; a variant pinned to a version is pointed at the candidate). `original`
/// is the spec to restore the routing from (the one before a canary).
pub async fn promote(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    deployment: &str,
    alias: &str,
    candidate: &str,
    original: Option<DeploymentSpec>,
) -> Result<Promotion, ServiceError> {
    let (name, version) = models::split_reference(candidate)?;
    let number: i64 =
        version.parse().map_err(|_| ServiceError::invalid(format!("{candidate:?} is not NAME@VERSION")))?;
    let previous = models::version_of(state, tenant, name, alias).await?.map(|v| v.version);
    models::move_alias(state, caller, tenant, name, alias, number).await?;
    let mut spec = match original {
        Some(spec) => spec,
        None => deployments::spec(state, caller, tenant, deployment).await?,
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
    let variants = spec.variants.iter().map(|v| RoutedVariant { model: v.label(), weight: v.weight }).collect();
    deployments::update(state, caller, tenant, deployment, spec).await?;
    Ok(Promotion {
        promoted: candidate.to_string(),
        alias: alias.to_string(),
        previous_version: previous,
        deployment: deployment.to_string(),
        variants,
    })
}
