//! The shape of every authorization question the factory asks: who (principal) wants to do
//! what (action) to which thing (resource), and the answer with the policies that decided it.
//!
//! The policy engine lives in `factory-authz`; the metadata store only needs the
//! `PolicyDecisionPoint` trait, so it can refuse to open a write transaction without a decision.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::names::{Classification, Jurisdiction, Role, TenantName};

/// The caller as the policy engine sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// Stable identifier written into audit records: an API key id, or `system`.
    pub id: String,
    /// `None` for platform-scoped principals (the platform admin and the factory itself).
    pub tenant: Option<TenantName>,
    pub role: Role,
}

impl Principal {
    /// The factory acting on its own behalf (dispatcher, workers, periodic checkpoints).
    pub fn system() -> Self {
        Principal { id: "system".to_string(), tenant: None, role: Role::Admin }
    }

    pub fn is_platform(&self) -> bool {
        self.tenant.is_none()
    }
}

/// Every kind of thing a policy can be written about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ResourceKind {
    Platform,
    Tenant,
    ApiKey,
    AuditLog,
    Job,
    Dataset,
    Model,
    Deployment,
    Pipeline,
    File,
    Batch,
    Session,
}

impl ResourceKind {
    /// The Cedar entity type name.
    pub fn entity_type(self) -> &'static str {
        match self {
            ResourceKind::Platform => "Platform",
            ResourceKind::Tenant => "Tenant",
            ResourceKind::ApiKey => "ApiKey",
            ResourceKind::AuditLog => "AuditLog",
            ResourceKind::Job => "Job",
            ResourceKind::Dataset => "Dataset",
            ResourceKind::Model => "Model",
            ResourceKind::Deployment => "Deployment",
            ResourceKind::Pipeline => "Pipeline",
            ResourceKind::File => "File",
            ResourceKind::Batch => "Batch",
            ResourceKind::Session => "Session",
        }
    }
}

/// The thing acted upon, with the attributes policies decide on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    pub kind: ResourceKind,
    pub id: String,
    /// The owning tenant; `None` for platform-wide resources.
    pub tenant: Option<TenantName>,
    pub classification: Classification,
    pub jurisdiction: Option<Jurisdiction>,
}

impl Resource {
    pub fn platform() -> Self {
        Resource {
            kind: ResourceKind::Platform,
            id: "platform".to_string(),
            tenant: None,
            classification: Classification::Internal,
            jurisdiction: None,
        }
    }

    pub fn audit_log() -> Self {
        Resource { kind: ResourceKind::AuditLog, id: "audit".to_string(), ..Resource::platform() }
    }

    pub fn tenant(name: &TenantName) -> Self {
        Resource {
            kind: ResourceKind::Tenant,
            id: name.to_string(),
            tenant: Some(name.clone()),
            classification: Classification::Internal,
            jurisdiction: None,
        }
    }

    pub fn api_key(id: &str, tenant: Option<&TenantName>) -> Self {
        Resource {
            kind: ResourceKind::ApiKey,
            id: id.to_string(),
            tenant: tenant.cloned(),
            classification: Classification::Confidential,
            jurisdiction: None,
        }
    }

    /// A dataset, named `<tenant>/<name>` so ids never collide across tenants.
    pub fn dataset(
        tenant: &TenantName,
        name: &str,
        classification: Classification,
        jurisdiction: &Jurisdiction,
    ) -> Self {
        Resource {
            kind: ResourceKind::Dataset,
            id: format!("{tenant}/{name}"),
            tenant: Some(tenant.clone()),
            classification,
            jurisdiction: Some(jurisdiction.clone()),
        }
    }

    /// A tenant's dataset catalogue as a whole, for listing.
    pub fn dataset_catalogue(tenant: &TenantName) -> Self {
        Resource {
            kind: ResourceKind::Dataset,
            id: format!("{tenant}/*"),
            tenant: Some(tenant.clone()),
            classification: Classification::Public,
            jurisdiction: None,
        }
    }

    /// A registered model, named `<tenant>/<name>`; its classification and jurisdiction come
    /// from the data it was trained on (or, for an imported model, from its importer).
    pub fn model(
        tenant: &TenantName,
        name: &str,
        classification: Classification,
        jurisdiction: Option<&Jurisdiction>,
    ) -> Self {
        Resource {
            kind: ResourceKind::Model,
            id: format!("{tenant}/{name}"),
            tenant: Some(tenant.clone()),
            classification,
            jurisdiction: jurisdiction.cloned(),
        }
    }

    /// A deployment, named `<tenant>/<name>`. Calling a model reveals no training data, so a
    /// deployment is internal whatever its models' classification: applications may call it.
    pub fn deployment(tenant: &TenantName, name: &str) -> Self {
        Resource {
            kind: ResourceKind::Deployment,
            id: format!("{tenant}/{name}"),
            tenant: Some(tenant.clone()),
            classification: Classification::Internal,
            jurisdiction: None,
        }
    }

    /// A pipeline, named `<tenant>/<name>`.
    pub fn pipeline(tenant: &TenantName, name: &str) -> Self {
        Resource { kind: ResourceKind::Pipeline, ..Resource::deployment(tenant, name) }
    }

    /// A file of the Batch API, named by its id. It holds requests to the tenant's deployments
    /// or their answers, which applications make and read: internal, like a deployment.
    pub fn file(tenant: &TenantName, id: &str) -> Self {
        Resource { kind: ResourceKind::File, id: id.to_string(), ..Resource::deployment(tenant, "") }
    }

    /// A batch of requests, named by its id.
    pub fn batch(tenant: &TenantName, id: &str) -> Self {
        Resource { kind: ResourceKind::Batch, id: id.to_string(), ..Resource::deployment(tenant, "") }
    }

    /// A console session of key `key_id`: internal, like what any key may call, so that every
    /// key (applications' too) may sign in; what the session then does is decided per action.
    pub fn session(key_id: &str, tenant: Option<&TenantName>) -> Self {
        Resource {
            kind: ResourceKind::Session,
            id: key_id.to_string(),
            tenant: tenant.cloned(),
            classification: Classification::Internal,
            jurisdiction: None,
        }
    }

    pub fn job(id: &str, tenant: &TenantName) -> Self {
        Resource {
            kind: ResourceKind::Job,
            id: id.to_string(),
            tenant: Some(tenant.clone()),
            classification: Classification::Internal,
            jurisdiction: None,
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}::{:?}", self.kind.entity_type(), self.id)
    }
}

macro_rules! actions {
    ($($variant:ident => $text:literal),+ $(,)?) => {
        /// Every action the API can take. Cedar action ids are the dotted names.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum Action {
            $($variant),+
        }

        impl Action {
            pub const ALL: &'static [Action] = &[$(Action::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Action::$variant => $text),+
                }
            }
        }
    };
}

actions! {
    TenantCreate => "tenant.create",
    TenantRead => "tenant.read",
    TenantQuota => "tenant.quota",
    KeyCreate => "key.create",
    KeyRevoke => "key.revoke",
    AuditRead => "audit.read",
    AuditProof => "audit.proof",
    AuditCheckpoint => "audit.checkpoint",
    JobEnqueue => "job.enqueue",
    JobRead => "job.read",
    JobCancel => "job.cancel",
    JobRun => "job.run",
    DatasetCreate => "dataset.create",
    DatasetRead => "dataset.read",
    DatasetIngest => "dataset.ingest",
    DatasetReadRows => "dataset.read_rows",
    DatasetDownload => "dataset.download",
    ObjectsCollect => "objects.collect",
    MetricsRead => "metrics.read",
    ModelRegister => "model.register",
    ModelRead => "model.read",
    ModelAlias => "model.alias",
    ModelExport => "model.export",
    ModelImport => "model.import",
    DeploymentCreate => "deployment.create",
    DeploymentUpdate => "deployment.update",
    DeploymentDelete => "deployment.delete",
    DeploymentRead => "deployment.read",
    DeploymentInvoke => "deployment.invoke",
    DeploymentTool => "deployment.tool",
    FeedbackCreate => "feedback.create",
    DriftRecord => "drift.record",
    PipelineWrite => "pipeline.write",
    PipelineRead => "pipeline.read",
    PipelineTrigger => "pipeline.trigger",
    PipelineRun => "pipeline.run",
    FileUpload => "file.upload",
    FileRead => "file.read",
    FileDelete => "file.delete",
    BatchCreate => "batch.create",
    BatchRead => "batch.read",
    BatchCancel => "batch.cancel",
    BatchRun => "batch.run",
    SessionOpen => "session.open",
    SessionClose => "session.close",
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One authorization question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessRequest {
    pub principal: Principal,
    pub action: Action,
    pub resource: Resource,
    /// Extra facts the policies may look at (for example the role a new key would get).
    pub context: serde_json::Map<String, serde_json::Value>,
}

impl AccessRequest {
    pub fn new(principal: &Principal, action: Action, resource: Resource) -> Self {
        AccessRequest { principal: principal.clone(), action, resource, context: serde_json::Map::new() }
    }

    pub fn with_context(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.context.insert(key.to_string(), value.into());
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

/// The answer, with the ids of the policies that determined it (for the audit record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub effect: Effect,
    pub policies: Vec<String>,
    /// Policy evaluation errors; a policy that errors does not apply, so these explain denials.
    pub errors: Vec<String>,
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        self.effect == Effect::Allow
    }
}

/// Anything that can answer an access request: the Cedar authorizer in production.
pub trait PolicyDecisionPoint: Send + Sync {
    fn decide(&self, request: &AccessRequest) -> Decision;
}
