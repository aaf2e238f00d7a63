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
            VariantSpec {
                model: Some(follows.clone()),
                upstream: None,
                endpoint: None,
                weight: 1.0,
                role: VariantRole::Primary,
            },
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use bytes::Bytes;
    use factory_core::{Action, Classification, Jurisdiction, Role};
    use factory_registry::{Lineage, Origin, Residency};

    use super::*;
    use crate::registry::{Draft, DraftFile, FileSource, Signing};
    use crate::service::ErrorKind;
    use crate::testing::TestFactory;

    /// Registers version `n` of `tenant`'s model `bard` (signed, verifiable; its files need only
    /// verify, since nothing here serves it).
    async fn register(factory: &TestFactory, caller: &Caller, n: u8) -> i64 {
        let tenant = caller.principal.tenant.clone().unwrap();
        let draft = Draft {
            tenant,
            name: "bard".to_string(),
            version: None,
            architecture: "llama".to_string(),
            parameters: 1,
            residency: Residency {
                jurisdiction: Jurisdiction::new("eu").unwrap(),
                classification: Classification::Internal,
                derived_from: "declared at import".to_string(),
            },
            lineage: Lineage {
                origin: Origin::Imported,
                run: None,
                datasets: Vec::new(),
                base_model: None,
                code_version: crate::registry::code_version(),
                config: serde_json::json!({}),
                seed: None,
            },
            evals: serde_json::json!({}),
            files: vec![DraftFile { path: "config.json".into(), source: FileSource::Bytes(Bytes::from(vec![n; 8])) }],
            signing: Signing::Sign { intended_use: None },
        };
        let (version, _) =
            models::register(&factory.state, &caller.principal, &caller.request_id, Action::ModelImport, draft)
                .await
                .unwrap();
        version.version
    }

    fn serving(model: &str) -> DeploymentSpec {
        DeploymentSpec {
            variants: vec![VariantSpec {
                model: Some(model.to_string()),
                upstream: None,
                endpoint: None,
                weight: 1.0,
                role: VariantRole::Primary,
            }],
            limits: None,
            guardrails: Vec::new(),
            logging: None,
            drift: None,
            tools: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn promotion_moves_the_alias_and_routes_deployments_through_the_services() {
        let factory = TestFactory::open().await;
        let state = &factory.state;
        let engineer = factory.caller("acme", Role::Engineer).await;
        let tenant = engineer.principal.tenant.clone().unwrap();
        assert_eq!((register(&factory, &engineer, 1).await, register(&factory, &engineer, 2).await), (1, 2));
        models::move_alias(state, &engineer, &tenant, "bard", "production", 1).await.unwrap();
        deployments::create(state, &engineer, &tenant, "chat", serving("bard@production")).await.unwrap();
        deployments::create(state, &engineer, &tenant, "pinned", serving("bard@1")).await.unwrap();

        let promotion = promote(state, &engineer, &tenant, "chat", "production", "bard@2", None).await.unwrap();
        assert_eq!((promotion.previous_version, promotion.promoted.as_str()), (Some(1), "bard@2"));
        let now = models::version_of(state, &tenant, "bard", "production").await.unwrap().unwrap();
        assert_eq!(now.version, 2, "the alias moved");
        let followed = deployments::spec(state, &engineer, &tenant, "chat").await.unwrap();
        assert_eq!(followed, serving("bard@production"), "a variant that follows the alias keeps following it");

        // A variant pinned to a version is pointed at the candidate.
        promote(state, &engineer, &tenant, "pinned", "production", "bard@2", None).await.unwrap();
        assert_eq!(deployments::spec(state, &engineer, &tenant, "pinned").await.unwrap(), serving("bard@2"));

        // Who may not move the alias changes nothing: the refusal comes before any write.
        let app = factory.caller("acme", Role::App).await;
        let refused = promote(state, &app, &tenant, "pinned", "production", "bard@1", None).await.err().unwrap();
        assert_eq!(refused.kind, ErrorKind::Forbidden, "{}", refused.message);
        assert_eq!(models::version_of(state, &tenant, "bard", "production").await.unwrap().unwrap().version, 2);

        // Another tenant's deployment and model are not found, whether they exist or not.
        let outsider = factory.caller("globex", Role::Engineer).await;
        let foreign = promote(state, &outsider, &tenant, "chat", "production", "bard@1", None).await.err().unwrap();
        assert_eq!((foreign.kind, foreign.message.as_str()), (ErrorKind::NotFound, "no such resource"));
    }
}
