//! Cedar authorization: the schema, the default policies and the decision point every API
//! action passes through.
//!
//! Architecture Invariant: this is the only crate that knows Cedar. Everything else speaks
//! `factory_core::AccessRequest` and `Decision`, so policies can change without touching callers.

use std::path::Path;
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Entities, EntityId, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, Request, Schema,
    ValidationMode, Validator,
};
use factory_core::{AccessRequest, Action, Decision, Effect, PolicyDecisionPoint, Principal, Resource, ResourceKind};
use serde_json::json;

const DEFAULT_POLICIES: &str = include_str!("default_policies.cedar");

/// What can go wrong while loading policies; every message names the policy source.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy schema is invalid: {0}")]
    Schema(String),
    #[error("{source_name}: {message}")]
    Parse { source_name: String, message: String },
    #[error("{source_name}: policy {id:?} is defined twice")]
    DuplicateId { source_name: String, id: String },
    #[error("policies do not validate against the schema: {0}")]
    Validation(String),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

/// The loaded, validated policy set and schema.
pub struct CedarAuthorizer {
    schema: Schema,
    policies: PolicySet,
    authorizer: Authorizer,
}

impl CedarAuthorizer {
    /// The default policies only.
    pub fn with_defaults() -> Result<Self, PolicyError> {
        Self::new(&[])
    }

    /// The default policies plus extra policy files (from the config's `authz.policy_files`).
    pub fn from_files(paths: &[impl AsRef<Path>]) -> Result<Self, PolicyError> {
        let mut sources = Vec::new();
        for path in paths {
            let path = path.as_ref();
            let text = std::fs::read_to_string(path)
                .map_err(|e| PolicyError::Io { path: path.display().to_string(), message: e.to_string() })?;
            sources.push((path.display().to_string(), text));
        }
        Self::new(&sources)
    }

    /// Default policies plus `(source name, policy text)` pairs.
    pub fn new(extra: &[(String, String)]) -> Result<Self, PolicyError> {
        let (schema, _warnings) =
            Schema::from_cedarschema_str(&schema_text()).map_err(|e| PolicyError::Schema(format!("{e:?}")))?;
        let mut policies = PolicySet::new();
        add_policies(&mut policies, "default_policies.cedar", DEFAULT_POLICIES, "")?;
        for (source_name, text) in extra {
            add_policies(&mut policies, source_name, text, &format!("{source_name}:"))?;
        }
        let validation = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        if !validation.validation_passed() {
            let messages: Vec<String> = validation.validation_errors().map(|e| e.to_string()).collect();
            return Err(PolicyError::Validation(messages.join("; ")));
        }
        Ok(CedarAuthorizer { schema, policies, authorizer: Authorizer::new() })
    }

    /// The schema in Cedar's human-readable syntax, served for policy authors.
    pub fn schema_source() -> String {
        schema_text()
    }

    pub fn policy_ids(&self) -> Vec<String> {
        self.policies.policies().map(|p| p.id().to_string()).collect()
    }

    fn decide_inner(&self, request: &AccessRequest) -> Result<Decision, String> {
        let principal_uid = uid("Caller", &request.principal.id)?;
        let resource_uid = uid(request.resource.kind.entity_type(), &request.resource.id)?;
        let action_uid = uid("Action", request.action.as_str())?;
        let entities = Entities::from_json_value(
            json!([principal_entity(&request.principal), resource_entity(&request.resource)]),
            Some(&self.schema),
        )
        .map_err(|e| format!("entities: {e}"))?;
        let context = Context::from_json_value(
            serde_json::Value::Object(request.context.clone()),
            Some((&self.schema, &action_uid)),
        )
        .map_err(|e| format!("context: {e}"))?;
        let cedar_request = Request::new(principal_uid, action_uid, resource_uid, context, Some(&self.schema))
            .map_err(|e| format!("request: {e}"))?;
        let response = self.authorizer.is_authorized(&cedar_request, &self.policies, &entities);
        let effect = match response.decision() {
            cedar_policy::Decision::Allow => Effect::Allow,
            cedar_policy::Decision::Deny => Effect::Deny,
        };
        let mut policies: Vec<String> = response.diagnostics().reason().map(|id| id.to_string()).collect();
        policies.sort();
        let errors = response.diagnostics().errors().map(|e| e.to_string()).collect();
        Ok(Decision { effect, policies, errors })
    }
}

impl PolicyDecisionPoint for CedarAuthorizer {
    fn decide(&self, request: &AccessRequest) -> Decision {
        // A request the schema rejects is a bug in the caller, never a reason to allow.
        self.decide_inner(request).unwrap_or_else(|message| Decision {
            effect: Effect::Deny,
            policies: Vec::new(),
            errors: vec![message],
        })
    }
}

fn uid(type_name: &str, id: &str) -> Result<EntityUid, String> {
    let type_name = EntityTypeName::from_str(type_name).map_err(|e| e.to_string())?;
    Ok(EntityUid::from_type_name_and_id(type_name, EntityId::new(id)))
}

fn principal_entity(principal: &Principal) -> serde_json::Value {
    json!({
        "uid": { "type": "Caller", "id": principal.id },
        "attrs": {
            "tenant": principal.tenant.as_ref().map(|t| t.as_str()).unwrap_or(""),
            "platform": principal.is_platform(),
            "role": principal.role.as_str(),
        },
        "parents": [],
    })
}

fn resource_entity(resource: &Resource) -> serde_json::Value {
    json!({
        "uid": { "type": resource.kind.entity_type(), "id": resource.id },
        "attrs": {
            "tenant": resource.tenant.as_ref().map(|t| t.as_str()).unwrap_or(""),
            "platform": resource.tenant.is_none(),
            "classification": resource.classification.as_str(),
            "level": resource.classification.level(),
            "jurisdiction": resource.jurisdiction.as_ref().map(|j| j.as_str()).unwrap_or(""),
        },
        "parents": [],
    })
}

/// Which resource types each action applies to; the schema is generated from this table so
/// that adding an `Action` without deciding its resources fails to compile.
fn action_resources(action: Action) -> &'static [ResourceKind] {
    match action {
        Action::TenantCreate => &[ResourceKind::Platform],
        Action::TenantRead | Action::TenantQuota => &[ResourceKind::Tenant],
        Action::KeyCreate => &[ResourceKind::Tenant, ResourceKind::Platform],
        Action::KeyRevoke => &[ResourceKind::ApiKey],
        Action::AuditRead | Action::AuditProof | Action::AuditCheckpoint => &[ResourceKind::AuditLog],
        Action::JobEnqueue | Action::JobRead | Action::JobCancel | Action::JobRun => &[ResourceKind::Job],
        Action::DatasetCreate
        | Action::DatasetRead
        | Action::DatasetIngest
        | Action::DatasetReadRows
        | Action::DatasetDownload => &[ResourceKind::Dataset],
        Action::ObjectsCollect | Action::MetricsRead => &[ResourceKind::Platform],
        Action::ModelRegister | Action::ModelRead | Action::ModelAlias | Action::ModelExport | Action::ModelImport => {
            &[ResourceKind::Model]
        }
        Action::DeploymentCreate
        | Action::DeploymentUpdate
        | Action::DeploymentDelete
        | Action::DeploymentRead
        | Action::DeploymentInvoke
        | Action::DeploymentTool
        | Action::FeedbackCreate
        | Action::DriftRecord => &[ResourceKind::Deployment],
        Action::PipelineWrite | Action::PipelineRead | Action::PipelineTrigger | Action::PipelineRun => {
            &[ResourceKind::Pipeline]
        }
        Action::FileUpload | Action::FileRead | Action::FileDelete => &[ResourceKind::File],
        Action::BatchCreate | Action::BatchRead | Action::BatchCancel | Action::BatchRun => &[ResourceKind::Batch],
        Action::SessionOpen | Action::SessionClose => &[ResourceKind::Session],
    }
}

/// The context record each action's requests carry. Residency facts (is the jurisdiction one
/// the tenant allows, is there a storage site in it) are computed by the caller from the
/// configuration and decided on here, so every refusal names the `residency` policy.
fn action_context(action: Action) -> &'static str {
    match action {
        Action::DatasetCreate | Action::DatasetIngest => "{ jurisdiction_allowed: Bool, storage_site: Bool }",
        Action::DatasetReadRows | Action::DatasetDownload => "{ raw_pii: Bool }",
        Action::ModelRegister | Action::ModelImport => "{ jurisdiction_allowed: Bool, storage_site: Bool }",
        // An export that names its destination says whether the model may live there.
        Action::ModelExport => "{ destination_allowed?: Bool }",
        Action::DeploymentCreate | Action::DeploymentUpdate => "{ jurisdiction_allowed: Bool, serving_site: Bool }",
        // Residency is checked again per variant at call time (sites and tenants change).
        Action::DeploymentInvoke => "{ jurisdiction_allowed?: Bool, serving_site?: Bool }",
        // A tool a request offers the model: its name, and whether the deployment allows it.
        Action::DeploymentTool => "{ tool: String, tool_allowed: Bool }",
        _ => "{ role?: String }",
    }
}

const RESOURCE_KINDS: &[ResourceKind] = &[
    ResourceKind::Platform,
    ResourceKind::Tenant,
    ResourceKind::ApiKey,
    ResourceKind::AuditLog,
    ResourceKind::Job,
    ResourceKind::Dataset,
    ResourceKind::Model,
    ResourceKind::Deployment,
    ResourceKind::Pipeline,
    ResourceKind::File,
    ResourceKind::Batch,
    ResourceKind::Session,
];

fn schema_text() -> String {
    let mut text = String::from(
        "// Generated from factory-authz: principals are API keys or the factory itself.\n\
         entity Caller = { tenant: String, platform: Bool, role: String };\n",
    );
    for kind in RESOURCE_KINDS {
        text.push_str(&format!(
            "entity {} = {{ tenant: String, platform: Bool, classification: String, level: Long, jurisdiction: String }};\n",
            kind.entity_type()
        ));
    }
    for action in Action::ALL {
        let resources: Vec<&str> = action_resources(*action).iter().map(|k| k.entity_type()).collect();
        text.push_str(&format!(
            "action \"{}\" appliesTo {{ principal: [Caller], resource: [{}], context: {} }};\n",
            action.as_str(),
            resources.join(", "),
            action_context(*action)
        ));
    }
    text
}

/// Parses `text` and adds its policies under their `@id("...")` annotation (prefixed), or
/// `<prefix>policyN` when a policy has none, so decisions name policies people can find.
fn add_policies(set: &mut PolicySet, source_name: &str, text: &str, prefix: &str) -> Result<(), PolicyError> {
    let parsed = PolicySet::from_str(text)
        .map_err(|e| PolicyError::Parse { source_name: source_name.to_string(), message: format!("{e:?}") })?;
    let mut parsed_policies: Vec<Policy> = parsed.policies().cloned().collect();
    // PolicySet iteration order is unspecified; sort so unnamed policies get stable names.
    parsed_policies.sort_by_key(|p| p.id().to_string());
    for policy in parsed_policies {
        let name = match policy.annotation("id") {
            Some(id) => format!("{prefix}{id}"),
            None => format!("{prefix}{}", policy.id()),
        };
        if set.policy(&PolicyId::new(&name)).is_some() {
            return Err(PolicyError::DuplicateId { source_name: source_name.to_string(), id: name });
        }
        set.add(policy.new_id(PolicyId::new(&name)))
            .map_err(|e| PolicyError::Parse { source_name: source_name.to_string(), message: e.to_string() })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
