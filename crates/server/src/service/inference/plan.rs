//! Where a request goes, decided before anything runs: the caller may invoke the deployment
//! (`deployment.invoke`), the deployment exists, the caller is within its limits, and a
//! primary is drawn by weight (or by episode, so an episode's requests reach one variant),
//! with the fallbacks in order and the shadows that get a copy.

use std::sync::Arc;

use factory_core::{AccessRequest, Action, Resource, TenantName};

use crate::caller::Caller;
use crate::guardrails::Guardrails;
use crate::limits::{LimitsSpec, Refusal, Subject};
use crate::service_error::{ErrorKind, ServiceError};
use crate::serving::{LoggingSpec, VariantRole, VariantSpec};
use crate::state::AppState;

pub struct Plan {
    pub primary: VariantSpec,
    pub fallbacks: Vec<VariantSpec>,
    pub shadows: Vec<VariantSpec>,
    /// The deployment's limits with the scope and caller they are kept under.
    pub limits: Option<(LimitsSpec, String, Subject)>,
    pub logging: Option<LoggingSpec>,
    pub guardrails: Arc<Guardrails>,
    pub tenant: TenantName,
}

/// The tenant the caller's key belongs to: the OpenAI API serves a tenant's deployments.
pub fn tenant_of_key(caller: &Caller) -> Result<TenantName, ServiceError> {
    caller
        .principal
        .tenant
        .clone()
        .ok_or_else(|| ServiceError::invalid("the OpenAI API serves a tenant's deployments: use a tenant's API key"))
}

/// A deterministic draw in [0, 1) for an episode, so its requests reach one variant.
fn episode_draw(episode: &str) -> f64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(episode.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// Plans a request to `deployment` that offers the model the tools named `tools`.
pub async fn plan(
    state: &AppState,
    caller: &Caller,
    deployment: &str,
    episode: Option<&str>,
    tools: &[&str],
) -> Result<Plan, ServiceError> {
    let tenant = tenant_of_key(caller)?;
    let request =
        AccessRequest::new(&caller.principal, Action::DeploymentInvoke, Resource::deployment(&tenant, deployment));
    state.store.authorize(state.pdp.as_ref(), &request, &caller.request_id).await?;
    let deployed = state.lookups.deployment(&tenant, deployment).await?.ok_or_else(|| {
        ServiceError::new(ErrorKind::ModelNotFound, format!("The model `{deployment}` does not exist"))
    })?;
    let spec = &deployed.spec;
    // Each tool offered is its own question (`deployment.tool`), so a refusal names the tool
    // and is audited.
    for tool in tools {
        let allowed = spec.tools.as_ref().is_none_or(|tools| tools.allowed.iter().any(|name| name == tool));
        let request =
            AccessRequest::new(&caller.principal, Action::DeploymentTool, Resource::deployment(&tenant, deployment))
                .with_context("tool", *tool)
                .with_context("tool_allowed", allowed);
        state.store.authorize(state.pdp.as_ref(), &request, &caller.request_id).await?;
    }
    let draw = match episode {
        Some(episode) => episode_draw(episode),
        // A v4 UUID is 122 random bits; 53 of them make a uniform draw.
        None => (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64,
    };
    let limits = spec.limits.clone().map(|limits| {
        let scope = format!("{tenant}/{deployment}");
        (limits, scope, Subject { key: caller.principal.id.clone(), tenant: tenant.to_string() })
    });
    if let Some((limits, scope, subject)) = &limits {
        match state.engines.limits.admit(limits, scope, subject).await {
            Ok(()) => {}
            Err(Refusal::Wait(wait)) => {
                return Err(ServiceError::new(
                    ErrorKind::RateLimited,
                    format!("{deployment}: over its rate limit or budget; retry in {wait} s"),
                )
                .retry_after(wait));
            }
            Err(Refusal::Unavailable) => {
                return Err(ServiceError::overloaded(
                    format!("{deployment}: its rate limits cannot be checked now (shared state unreachable)"),
                    1,
                ));
            }
        }
    }
    // Rules that compare embeddings need this request's encoders, attached to a copy that
    // shares the compiled rules.
    let guardrails = if !deployed.guardrails.compares_embeddings() {
        deployed.guardrails.clone()
    } else {
        let mut guardrails = Guardrails::clone(&deployed.guardrails);
        attach_topic_encoders(state, &tenant, &mut guardrails).await?;
        Arc::new(guardrails)
    };
    Ok(Plan {
        primary: spec.pick(draw).clone(),
        fallbacks: spec.with_role(VariantRole::Fallback).cloned().collect(),
        shadows: spec.with_role(VariantRole::Shadow).cloned().collect(),
        limits,
        logging: spec.logging.clone(),
        guardrails,
        tenant,
    })
}

/// Loads the embedding models that denied topics compare texts under (verified, as any model),
/// with their examples' vectors computed once per model and examples.
async fn attach_topic_encoders(
    state: &AppState,
    tenant: &TenantName,
    guardrails: &mut Guardrails,
) -> Result<(), ServiceError> {
    for (index, rule, model, examples) in guardrails.semantic_topics() {
        let unusable = |why: String| ServiceError::new(ErrorKind::GuardrailUnavailable, why);
        let (name, reference) = model.split_once('@').unwrap_or_default();
        let version = crate::service::models::version_of(state, tenant, name, reference)
            .await?
            .ok_or_else(|| unusable(format!("guardrail {rule}: embedding model {model} does not exist")))?;
        let loaded = state.engines.get(&version).await?;
        let embedder = loaded
            .embedder
            .clone()
            .ok_or_else(|| unusable(format!("guardrail {rule}: {model} is not an embedding model")))?;
        let vectors =
            state.engines.topic_vectors(&version.manifest_digest, &embedder, &examples).await.map_err(unusable)?;
        guardrails.attach(index, embedder, vectors);
    }
    Ok(())
}

/// Refuses (403, audited) a variant whose jurisdiction the tenant no longer allows or, for our
/// own models, that no serving site covers any more.
pub async fn check_residency(
    state: &AppState,
    caller: &Caller,
    deployment: &str,
    jurisdiction: &factory_core::Jurisdiction,
    ours: bool,
) -> Result<(), ServiceError> {
    let tenant = tenant_of_key(caller)?;
    let (allowed, serving) =
        crate::service::access::site_facts(state, &tenant, jurisdiction, factory_core::SiteKind::Serving).await?;
    let request =
        AccessRequest::new(&caller.principal, Action::DeploymentInvoke, Resource::deployment(&tenant, deployment))
            .with_context("jurisdiction_allowed", allowed)
            .with_context("serving_site", serving || !ours);
    state.store.authorize(state.pdp.as_ref(), &request, &caller.request_id).await?;
    Ok(())
}
