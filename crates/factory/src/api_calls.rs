//! The subcommands that are one API call each (`tenant`, `key`, `job`, `audit checkpoint`,
//! `dataset create`, `deploy`, `feedback`, `pipeline list` and the like): the flags become a
//! method, a path and a JSON body, and the answer is printed. Subcommands with more to do than
//! one call (streaming, following, verifying) have their own modules.

use anyhow::{anyhow, Context};
use reqwest::Method;
use serde_json::{json, Value};

use crate::args::{
    AuditCommand, Command, DatasetCommand, DeployCommand, DriftCommand, JobCommand, KeyCommand, ModelCommand,
    ObjectsCommand, PipelineCommand, ProofCommand, Remote, RunCommand, TenantCommand, TenantFlag,
};
use crate::client::{call, send_bytes, tenant_query};

/// Sends the one request `command` stands for and prints the answer: JSON pretty-printed, text
/// as it came.
pub async fn run(command: Command) -> anyhow::Result<()> {
    let (remote, method, path, body) = request_for(command)?;
    let output = call(&remote, method, &path, body).await?;
    match output {
        Value::String(text) => print!("{text}"),
        value => println!("{}", serde_json::to_string_pretty(&value)?),
    }
    Ok(())
}

type Request = (Remote, Method, String, Option<Value>);

fn request_for(command: Command) -> anyhow::Result<Request> {
    Ok(match command {
        Command::Tenant(TenantCommand::Create { name, jurisdictions, remote }) => (
            remote,
            Method::POST,
            "/api/v1/tenants".to_string(),
            Some(json!({ "name": name, "jurisdictions": jurisdictions })),
        ),
        Command::Tenant(TenantCommand::Show { name, remote }) => {
            (remote, Method::GET, format!("/api/v1/tenants/{name}"), None)
        }
        Command::Tenant(TenantCommand::Quota { name, max_concurrent_jobs, compute_seconds, remote }) => (
            remote,
            Method::PUT,
            format!("/api/v1/tenants/{name}/quota"),
            Some(json!({ "max_concurrent_jobs": max_concurrent_jobs, "compute_seconds": compute_seconds })),
        ),
        Command::Key(KeyCommand::Create { tenant, role, description, expires_at, remote }) => (
            remote,
            Method::POST,
            format!("/api/v1/tenants/{tenant}/keys"),
            Some(json!({ "role": role, "description": description, "expires_at": expires_at })),
        ),
        Command::Key(KeyCommand::Revoke { id, remote }) => (remote, Method::DELETE, format!("/api/v1/keys/{id}"), None),
        Command::Job(JobCommand::Enqueue { tenant, kind, payload, priority, remote }) => {
            let payload: Value = serde_json::from_str(&payload).context("--payload is not valid JSON")?;
            (
                remote,
                Method::POST,
                format!("/api/v1/tenants/{tenant}/jobs"),
                Some(json!({ "kind": kind, "payload": payload, "priority": priority })),
            )
        }
        Command::Job(JobCommand::Show { id, remote }) => (remote, Method::GET, format!("/api/v1/jobs/{id}"), None),
        Command::Job(JobCommand::Cancel { id, remote }) => {
            (remote, Method::POST, format!("/api/v1/jobs/{id}/cancel"), None)
        }
        Command::Audit(AuditCommand::Checkpoint { remote }) => {
            (remote, Method::GET, "/api/v1/audit/checkpoint".to_string(), None)
        }
        Command::Audit(AuditCommand::Proof(ProofCommand::Inclusion { index, size, remote })) => {
            (remote, Method::GET, format!("/api/v1/audit/proof/inclusion?index={index}&size={size}"), None)
        }
        Command::Audit(AuditCommand::Proof(ProofCommand::Consistency { old, new, remote })) => {
            (remote, Method::GET, format!("/api/v1/audit/proof/consistency?old={old}&new={new}"), None)
        }
        Command::Audit(AuditCommand::Records { from, limit, remote }) => {
            (remote, Method::GET, format!("/api/v1/audit/records?from={from}&limit={limit}"), None)
        }
        Command::Dataset(DatasetCommand::Create {
            name,
            classification,
            jurisdiction,
            description,
            tags,
            pii,
            tenant,
            remote,
        }) => (
            remote,
            Method::POST,
            format!("/api/v1/datasets{}", tenant_query(tenant.name(), "?")),
            Some(json!({
                "name": name, "classification": classification, "jurisdiction": jurisdiction,
                "description": description, "tags": tags, "pii_policy": { "default": pii },
            })),
        ),
        Command::Dataset(DatasetCommand::List { tenant, remote }) => {
            (remote, Method::GET, format!("/api/v1/datasets{}", tenant_query(tenant.name(), "?")), None)
        }
        Command::Dataset(DatasetCommand::Show { name, tenant, remote }) => {
            (remote, Method::GET, format!("/api/v1/datasets/{name}{}", tenant_query(tenant.name(), "?")), None)
        }
        Command::Dataset(DatasetCommand::Rows { name, version, offset, limit, tenant, remote }) => (
            remote,
            Method::GET,
            format!(
                "/api/v1/datasets/{name}/versions/{version}/rows?offset={offset}&limit={limit}{}",
                tenant_query(tenant.name(), "&")
            ),
            None,
        ),
        Command::Run(RunCommand::Show { id, remote }) => (remote, Method::GET, format!("/api/v1/runs/{id}"), None),
        Command::Run(RunCommand::Metrics { id, after, remote }) => {
            (remote, Method::GET, format!("/api/v1/runs/{id}/metrics?after={after}"), None)
        }
        Command::Run(RunCommand::Cancel { id, remote }) => {
            (remote, Method::POST, format!("/api/v1/runs/{id}/cancel"), None)
        }
        Command::Model(ModelCommand::List { tenant, remote }) => {
            (remote, Method::GET, format!("/api/v1/models{}", tenant_query(tenant.name(), "?")), None)
        }
        Command::Model(ModelCommand::Show { model, tenant, remote }) => {
            let path = match model.split_once('@') {
                Some((name, version)) => format!("/api/v1/models/{name}/versions/{version}"),
                None => format!("/api/v1/models/{model}"),
            };
            (remote, Method::GET, format!("{path}{}", tenant_query(tenant.name(), "?")), None)
        }
        Command::Model(ModelCommand::Quantize { model, kind, tenant, remote }) => {
            let (name, version) =
                model.split_once('@').ok_or_else(|| anyhow!("{model:?} is not NAME@VERSION or NAME@ALIAS"))?;
            let path = format!("/api/v1/models/{name}/versions/{version}/quantize{}", tenant_query(tenant.name(), "?"));
            (remote, Method::POST, path, Some(json!({ "type": kind })))
        }
        Command::Model(ModelCommand::Alias { model, alias, version, tenant, remote }) => (
            remote,
            Method::PUT,
            format!("/api/v1/models/{model}/aliases/{alias}{}", tenant_query(tenant.name(), "?")),
            Some(json!({ "version": version })),
        ),
        Command::Deploy(DeployCommand::Create { name, variants, tenant, remote }) => (
            remote,
            Method::POST,
            format!("/api/v1/deployments{}", tenant_query(tenant.name(), "?")),
            Some(json!({ "name": name, "variants": parse_variants(&variants)? })),
        ),
        Command::Deploy(DeployCommand::SetWeights { name, variants, tenant, remote }) => (
            remote,
            Method::PUT,
            format!("/api/v1/deployments/{name}{}", tenant_query(tenant.name(), "?")),
            Some(json!({ "variants": parse_variants(&variants)? })),
        ),
        Command::Deploy(DeployCommand::List { tenant, remote }) => {
            (remote, Method::GET, format!("/api/v1/deployments{}", tenant_query(tenant.name(), "?")), None)
        }
        Command::Deploy(DeployCommand::Show { name, tenant, remote }) => {
            (remote, Method::GET, format!("/api/v1/deployments/{name}{}", tenant_query(tenant.name(), "?")), None)
        }
        Command::Deploy(DeployCommand::Delete { name, tenant, remote }) => {
            (remote, Method::DELETE, format!("/api/v1/deployments/{name}{}", tenant_query(tenant.name(), "?")), None)
        }
        Command::Feedback { inference, episode, metric, value, remote } => {
            let value: Value = serde_json::from_str(&value).unwrap_or(Value::String(value));
            (
                remote,
                Method::POST,
                "/api/v1/feedback".to_string(),
                Some(json!({ "inference_id": inference, "episode_id": episode, "metric": metric, "value": value })),
            )
        }
        Command::Pipeline(PipelineCommand::List { tenant, remote }) => {
            (remote, Method::GET, format!("/api/v1/pipelines{}", tenant_query(tenant.name(), "?")), None)
        }
        Command::Pipeline(PipelineCommand::Show { name, tenant, remote }) => {
            (remote, Method::GET, format!("/api/v1/pipelines/{name}{}", tenant_query(tenant.name(), "?")), None)
        }
        Command::Pipeline(PipelineCommand::Runs { name, tenant, remote }) => {
            (remote, Method::GET, format!("/api/v1/pipelines/{name}/runs{}", tenant_query(tenant.name(), "?")), None)
        }
        Command::Pipeline(PipelineCommand::Trigger { name, tenant, remote }) => {
            (remote, Method::POST, format!("/api/v1/pipelines/{name}/runs{}", tenant_query(tenant.name(), "?")), None)
        }
        Command::Drift(DriftCommand::Show { deployment, tenant, remote }) => (
            remote,
            Method::GET,
            format!("/api/v1/deployments/{deployment}/drift{}", tenant_query(tenant.name(), "?")),
            None,
        ),
        Command::Objects(ObjectsCommand::Sweep { grace_secs, remote }) => {
            let query = grace_secs.map(|g| format!("?grace_secs={g}")).unwrap_or_default();
            (remote, Method::POST, format!("/api/v1/objects/sweep{query}"), None)
        }
        Command::Up(_)
        | Command::Doctor(_)
        | Command::Worker(_)
        | Command::Config(_)
        | Command::Audit(AuditCommand::Verify(_))
        | Command::Run(RunCommand::Create(_) | RunCommand::Logs { .. })
        | Command::Train(_)
        | Command::Chat(_)
        | Command::Batch(_)
        | Command::Demo(_)
        | Command::Pipeline(PipelineCommand::Apply { .. })
        | Command::Model(
            ModelCommand::Verify { .. }
            | ModelCommand::Export { .. }
            | ModelCommand::Import { .. }
            | ModelCommand::ImportHf(_)
            | ModelCommand::ImportGguf(_),
        )
        | Command::Dataset(DatasetCommand::Ingest(_) | DatasetCommand::Download { .. }) => {
            return Err(anyhow!("this command does not talk to a server"))
        }
    })
}

/// `MODEL[=WEIGHT]` flags as deployment variants.
fn parse_variants(flags: &[String]) -> anyhow::Result<Vec<Value>> {
    flags
        .iter()
        .map(|flag| {
            let (model, weight) = match flag.rsplit_once('=') {
                Some((model, weight)) => {
                    let weight: f64 = weight
                        .parse()
                        .map_err(|_| anyhow!("--variant {flag}: the weight after '=' is not a number"))?;
                    (model, weight)
                }
                None => (flag.as_str(), 1.0),
            };
            Ok(json!({ "model": model, "weight": weight }))
        })
        .collect()
}

/// `factory pipeline apply`: the TOML declaration is sent as it is, for the server to parse.
pub async fn apply_pipeline(
    name: &str,
    file: &std::path::Path,
    tenant: &TenantFlag,
    remote: &Remote,
) -> anyhow::Result<()> {
    let source = std::fs::read_to_string(file).map_err(|e| anyhow!("cannot read {}: {e}", file.display()))?;
    let path = format!("/api/v1/pipelines/{name}{}", tenant_query(tenant.name(), "?"));
    let applied = send_bytes(remote, Method::PUT, &path, "application/toml", source).await?;
    println!("{}", serde_json::to_string_pretty(&applied)?);
    Ok(())
}
