#![allow(clippy::unwrap_used)]

use factory_core::{Classification, Jurisdiction, Role, TenantName};

use super::*;

fn tenant(name: &str) -> TenantName {
    TenantName::new(name).unwrap()
}

fn key(tenant_name: Option<&str>, role: Role) -> Principal {
    Principal { id: format!("key_{role}"), tenant: tenant_name.map(tenant), role }
}

fn check(principal: &Principal, action: Action, resource: Resource, expected: Effect, expected_policies: &[&str]) {
    let authorizer = CedarAuthorizer::with_defaults().unwrap();
    let decision = authorizer.decide(&AccessRequest::new(principal, action, resource.clone()));
    assert!(decision.errors.is_empty(), "{:?}", decision.errors);
    assert_eq!(decision.effect, expected, "{principal:?} {action} {resource}");
    assert_eq!(decision.policies, expected_policies, "{principal:?} {action} {resource}");
}

#[test]
fn default_policies_validate_and_carry_ids() {
    let authorizer = CedarAuthorizer::with_defaults().unwrap();
    let ids = authorizer.policy_ids();
    assert!(ids.contains(&"tenant-isolation".to_string()), "{ids:?}");
    assert!(ids.iter().all(|id| !id.starts_with("policy")), "{ids:?}");
}

#[test]
fn platform_admin_may_create_tenants_and_tenant_keys_may_not() {
    check(&key(None, Role::Admin), Action::TenantCreate, Resource::platform(), Effect::Allow, &["platform-admin"]);
    check(&key(Some("acme"), Role::Admin), Action::TenantCreate, Resource::platform(), Effect::Deny, &[]);
}

#[test]
fn tenant_isolation_forbids_other_tenants_even_for_their_admins() {
    let other = Resource::tenant(&tenant("globex"));
    check(&key(Some("acme"), Role::Admin), Action::TenantRead, other.clone(), Effect::Deny, &["tenant-isolation"]);
    check(&key(Some("acme"), Role::Admin), Action::KeyCreate, other, Effect::Deny, &["tenant-isolation"]);
    let own = Resource::tenant(&tenant("acme"));
    check(&key(Some("acme"), Role::Admin), Action::KeyCreate, own.clone(), Effect::Allow, &["tenant-admin"]);
    check(&key(Some("acme"), Role::Engineer), Action::TenantRead, own.clone(), Effect::Allow, &["tenant-member-read"]);
    check(&key(Some("acme"), Role::Engineer), Action::KeyCreate, own, Effect::Deny, &[]);
}

#[test]
fn app_keys_never_touch_confidential_resources() {
    let key_resource = Resource::api_key("key_x", Some(&tenant("acme")));
    check(&key(Some("acme"), Role::App), Action::KeyRevoke, key_resource, Effect::Deny, &["app-clearance"]);
    let mut secret_job = Resource::job("job_1", &tenant("acme"));
    secret_job.classification = Classification::Secret;
    secret_job.jurisdiction = Some(Jurisdiction::new("de").unwrap());
    check(&key(Some("acme"), Role::App), Action::JobRead, secret_job, Effect::Deny, &["app-clearance"]);
}

#[test]
fn anyone_may_fetch_proofs_but_only_auditors_read_records() {
    check(
        &key(Some("acme"), Role::App),
        Action::AuditProof,
        Resource::audit_log(),
        Effect::Allow,
        &["anyone-verifies"],
    );
    check(&key(Some("acme"), Role::App), Action::AuditRead, Resource::audit_log(), Effect::Deny, &[]);
    check(
        &key(Some("acme"), Role::Auditor),
        Action::AuditRead,
        Resource::audit_log(),
        Effect::Allow,
        &["auditor-read-log"],
    );
}

#[test]
fn extra_policy_files_are_validated_and_named_by_source() {
    let extra = vec![(
        "site.cedar".to_string(),
        r#"@id("no-jobs-in-us") forbid (principal, action == Action::"job.enqueue", resource) when { resource.jurisdiction == "us" };"#
            .to_string(),
    )];
    let authorizer = CedarAuthorizer::new(&extra).unwrap();
    let mut job = Resource::job("job_1", &tenant("acme"));
    job.jurisdiction = Some(Jurisdiction::new("us").unwrap());
    let decision = authorizer.decide(&AccessRequest::new(&key(Some("acme"), Role::Engineer), Action::JobEnqueue, job));
    assert_eq!(decision.effect, Effect::Deny);
    assert_eq!(decision.policies, vec!["site.cedar:no-jobs-in-us".to_string()]);

    let invalid =
        vec![("bad.cedar".to_string(), "permit (principal, action, resource) when { principal.nope };".to_string())];
    let error = CedarAuthorizer::new(&invalid).err().unwrap().to_string();
    assert!(error.contains("nope"), "{error}");
    let unparsable = vec![("broken.cedar".to_string(), "permit (".to_string())];
    let error = CedarAuthorizer::new(&unparsable).err().unwrap().to_string();
    assert!(error.starts_with("broken.cedar:"), "{error}");
}

fn dataset(tenant_name: &str, classification: Classification) -> Resource {
    Resource::dataset(&tenant(tenant_name), "corpus", classification, &Jurisdiction::new("eu").unwrap())
}

fn decide_with(principal: &Principal, action: Action, resource: Resource, context: &[(&str, bool)]) -> Decision {
    let authorizer = CedarAuthorizer::with_defaults().unwrap();
    let mut request = AccessRequest::new(principal, action, resource);
    for (key, value) in context {
        request = request.with_context(key, *value);
    }
    let decision = authorizer.decide(&request);
    assert!(decision.errors.is_empty(), "{:?}", decision.errors);
    decision
}

#[test]
fn residency_refuses_datasets_outside_allowed_jurisdictions() {
    let engineer = key(Some("acme"), Role::Engineer);
    let resource = dataset("acme", Classification::Internal);
    let allowed = [("jurisdiction_allowed", true), ("storage_site", true)];
    let decision = decide_with(&engineer, Action::DatasetCreate, resource.clone(), &allowed);
    assert_eq!((decision.effect, decision.policies), (Effect::Allow, vec!["tenant-data-writers".to_string()]));
    for context in [
        [("jurisdiction_allowed", false), ("storage_site", true)],
        [("jurisdiction_allowed", true), ("storage_site", false)],
    ] {
        let decision = decide_with(&engineer, Action::DatasetCreate, resource.clone(), &context);
        assert_eq!((decision.effect, decision.policies), (Effect::Deny, vec!["residency".to_string()]));
    }
    let app = key(Some("acme"), Role::App);
    assert_eq!(decide_with(&app, Action::DatasetCreate, resource, &allowed).effect, Effect::Deny);
}

#[test]
fn rows_follow_classification_and_raw_pii_stays_with_stewards() {
    let engineer = key(Some("acme"), Role::Engineer);
    let steward = key(Some("acme"), Role::Steward);
    let clean = [("raw_pii", false)];
    let raw = [("raw_pii", true)];
    let internal = dataset("acme", Classification::Internal);
    assert_eq!(decide_with(&engineer, Action::DatasetReadRows, internal.clone(), &clean).effect, Effect::Allow);
    let decision = decide_with(&engineer, Action::DatasetDownload, internal.clone(), &raw);
    assert_eq!(decision.policies, vec!["raw-pii-stewards-only".to_string()]);
    assert_eq!(decide_with(&steward, Action::DatasetDownload, internal, &raw).effect, Effect::Allow);
    let secret = dataset("acme", Classification::Secret);
    let decision = decide_with(&engineer, Action::DatasetReadRows, secret.clone(), &clean);
    assert_eq!(decision.policies, vec!["classification-clearance".to_string()]);
    assert_eq!(decide_with(&steward, Action::DatasetReadRows, secret, &clean).effect, Effect::Allow);
    let auditor = key(Some("acme"), Role::Auditor);
    let catalogue = decide_with(&auditor, Action::DatasetRead, dataset("acme", Classification::Secret), &[]);
    assert_eq!(catalogue.effect, Effect::Allow);
    let other = decide_with(&steward, Action::DatasetRead, dataset("globex", Classification::Public), &[]);
    assert_eq!(other.policies, vec!["tenant-isolation".to_string()]);
}

fn model(tenant_name: &str, classification: Classification) -> Resource {
    Resource::model(&tenant(tenant_name), "assistant", classification, Some(&Jurisdiction::new("eu").unwrap()))
}

#[test]
fn models_follow_roles_residency_and_clearance() {
    let engineer = key(Some("acme"), Role::Engineer);
    let allowed = [("jurisdiction_allowed", true), ("storage_site", true)];
    let internal = model("acme", Classification::Internal);
    let decision = decide_with(&engineer, Action::ModelRegister, internal.clone(), &allowed);
    assert_eq!((decision.effect, decision.policies), (Effect::Allow, vec!["tenant-model-writers".to_string()]));
    let outside = [("jurisdiction_allowed", false), ("storage_site", true)];
    let decision = decide_with(&engineer, Action::ModelImport, internal.clone(), &outside);
    assert_eq!((decision.effect, decision.policies), (Effect::Deny, vec!["model-residency".to_string()]));
    let app = key(Some("acme"), Role::App);
    assert_eq!(decide_with(&app, Action::ModelAlias, internal.clone(), &[]).effect, Effect::Deny);
    assert_eq!(decide_with(&app, Action::ModelRead, model("acme", Classification::Public), &[]).effect, Effect::Allow);
    let auditor = key(Some("acme"), Role::Auditor);
    assert_eq!(decide_with(&auditor, Action::ModelExport, internal, &[]).effect, Effect::Deny);
    let secret = model("acme", Classification::Secret);
    let decision = decide_with(&engineer, Action::ModelExport, secret.clone(), &[]);
    assert_eq!(decision.policies, vec!["model-export-clearance".to_string()]);
    let steward = key(Some("acme"), Role::Steward);
    assert_eq!(decide_with(&steward, Action::ModelExport, secret, &[]).effect, Effect::Allow);
    let foreign = decide_with(&engineer, Action::ModelRead, model("globex", Classification::Public), &[]);
    assert_eq!(foreign.policies, vec!["tenant-isolation".to_string()]);
}

#[test]
fn calls_are_refused_where_residency_no_longer_holds() {
    let app = key(Some("acme"), Role::App);
    let deployment = Resource::deployment(&tenant("acme"), "chat");
    assert_eq!(decide_with(&app, Action::DeploymentInvoke, deployment.clone(), &[]).effect, Effect::Allow);
    let fine = [("jurisdiction_allowed", true), ("serving_site", true)];
    assert_eq!(decide_with(&app, Action::DeploymentInvoke, deployment.clone(), &fine).effect, Effect::Allow);
    let moved = [("jurisdiction_allowed", true), ("serving_site", false)];
    let decision = decide_with(&app, Action::DeploymentInvoke, deployment, &moved);
    assert_eq!((decision.effect, decision.policies), (Effect::Deny, vec!["deployment-call-residency".to_string()]));
}

#[test]
fn exports_go_only_where_the_model_may_live() {
    let engineer = key(Some("acme"), Role::Engineer);
    let resource = model("acme", Classification::Internal);
    let plain = decide_with(&engineer, Action::ModelExport, resource.clone(), &[]);
    assert_eq!(plain.effect, Effect::Allow, "an export that names no destination is a registry move");
    let inside = decide_with(&engineer, Action::ModelExport, resource.clone(), &[("destination_allowed", true)]);
    assert_eq!(inside.effect, Effect::Allow);
    let outside = decide_with(&engineer, Action::ModelExport, resource, &[("destination_allowed", false)]);
    assert_eq!((outside.effect, outside.policies), (Effect::Deny, vec!["model-export-residency".to_string()]));
}
