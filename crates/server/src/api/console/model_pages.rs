//! A model's pages: its versions and aliases (an alias is moved through a confirmation page),
//! and a version's card, evals, files with their digests, signature status (verified on the
//! server each time the page is shown) and lineage from the data through the run to the
//! deployments that serve it.

use axum::extract::Path;
use axum::response::Response;
use axum::Form;
use serde::Deserialize;

use super::plot::{self, Node};
use super::{segment, when, Shown, Visit};
use crate::service::{deployments, models};
use crate::service_error::ErrorKind;

fn model_href(name: &str) -> String {
    format!("/console/models/{}", segment(name))
}

pub async fn model_page(visit: Visit, Path(name): Path<String>) -> Response {
    visit
        .tenant_page("/console/models", async |state, caller, tenant| {
            let versions = models::show(state, caller, tenant, &name).await?;
            let rows: Vec<minijinja::Value> = versions
                .iter()
                .rev()
                .map(|(v, aliases)| {
                    minijinja::context! {
                        version => v.version, origin => v.origin, parameters => v.parameters,
                        classification => v.classification.to_string(), jurisdiction => v.jurisdiction.to_string(),
                        aliases => aliases, evals => serde_json::to_string(&v.evals).unwrap_or_default(),
                        created => when(v.created_at),
                        href => format!("{}/versions/{}", model_href(&name), v.version),
                    }
                })
                .collect();
            let mut aliases: Vec<&String> = versions.iter().flat_map(|(_, aliases)| aliases).collect();
            aliases.sort();
            let context = minijinja::context! {
                name => name, versions => rows, aliases => aliases,
                confirm_url => format!("{}/aliases/confirm", model_href(&name)),
            };
            Ok(Shown::new("model.html", context))
        })
        .await
}

#[derive(Debug, Deserialize)]
pub struct AliasForm {
    csrf: String,
    alias: String,
    version: i64,
}

/// The confirmation of an alias move: what it points at now and where it would point. Nothing
/// changes until the confirmation's own form is sent.
pub async fn confirm_alias(visit: Visit, Path(name): Path<String>, Form(form): Form<AliasForm>) -> Response {
    visit
        .tenant_page("/console/models", async |state, caller, tenant| {
            models::valid_alias(&form.alias)?;
            let versions = models::show(state, caller, tenant, &name).await?;
            if !versions.iter().any(|(v, _)| v.version == form.version) {
                return Err(crate::service_error::ServiceError::not_found(format!(
                    "model {name} has no version {}",
                    form.version
                )));
            }
            let current = versions.iter().find(|(_, aliases)| aliases.contains(&form.alias)).map(|(v, _)| v.version);
            let context = minijinja::context! {
                name => name, alias => form.alias, version => form.version, current => current,
                action => model_href(&name) + "/aliases", back => model_href(&name),
            };
            Ok(Shown::new("confirm.html", context))
        })
        .await
}

/// Moves the alias (`model.alias`), as the API's alias move does.
pub async fn move_alias(visit: Visit, Path(name): Path<String>, Form(form): Form<AliasForm>) -> Response {
    visit
        .tenant_action(&form.csrf, async |state, caller, tenant| {
            models::move_alias(state, caller, tenant, &name, &form.alias, form.version).await?;
            Ok(model_href(&name))
        })
        .await
}

pub async fn model_version_page(visit: Visit, Path((name, version)): Path<(String, i64)>) -> Response {
    visit
        .tenant_page("/console/models", async |state, caller, tenant| {
            let reference = version.to_string();
            let (stored, manifest, aliases) = models::detail(state, caller, tenant, &name, &reference).await?;
            // Checked as a deployment checks it before loading: signature and every file.
            let verification = models::verify_version(state, &stored).await;
            let card = match models::file(state, caller, tenant, &name, &reference, "README.md").await {
                Ok(read) => Some(String::from_utf8_lossy(&read.value).into_owned()),
                Err(error) if matches!(error.kind, ErrorKind::Forbidden | ErrorKind::NotFound) => None,
                Err(error) => return Err(error),
            };
            // The deployments that serve this version, by number or by one of its aliases.
            let names: Vec<String> = std::iter::once(reference.clone())
                .chain(aliases.iter().cloned())
                .map(|r| format!("{name}@{r}"))
                .collect();
            let serving: Vec<String> = match deployments::list(state, caller, tenant).await {
                Ok(all) => all
                    .into_iter()
                    .filter(|d| {
                        d.spec["variants"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|v| v["model"].as_str().is_some_and(|model| names.iter().any(|n| n == model)))
                    })
                    .map(|d| d.name)
                    .collect(),
                Err(error) if error.kind == ErrorKind::Forbidden => Vec::new(),
                Err(error) => return Err(error),
            };
            let lineage = &manifest.lineage;
            let graph = lineage_graph(&name, version, lineage, &serving);
            let files: Vec<minijinja::Value> = manifest
                .files
                .iter()
                .map(|f| minijinja::context! { path => f.path, digest => f.digest, size => f.size })
                .collect();
            let evals: Vec<(String, String)> = manifest
                .evals
                .as_object()
                .into_iter()
                .flatten()
                .map(|(key, value)| (key.clone(), value.to_string()))
                .collect();
            let context = minijinja::context! {
                name => name, version => version, origin => stored.origin, parameters => manifest.parameters,
                architecture => manifest.architecture, created => when(stored.created_at), by => stored.created_by,
                classification => manifest.residency.classification.to_string(),
                jurisdiction => manifest.residency.jurisdiction.to_string(),
                residency_from => manifest.residency.derived_from, aliases => aliases,
                verified => verification.verified, signer => verification.signer, problem => verification.error,
                manifest_digest => stored.manifest_digest, files => files, evals => evals, card => card,
                code_version => lineage.code_version, seed => lineage.seed,
                config => serde_json::to_string_pretty(&lineage.config).unwrap_or_default(),
                lineage => minijinja::Value::from_safe_string(graph), serving => serving,
                model_href => model_href(&name),
            };
            Ok(Shown::new("model_version.html", context))
        })
        .await
}

/// The lineage graph of `name@version`: the data and base model it came from, the run that
/// trained it, and the deployments that serve it, each linked to its page.
fn lineage_graph(name: &str, version: i64, lineage: &factory_registry::Lineage, serving: &[String]) -> String {
    let data: Vec<Node> = lineage
        .datasets
        .iter()
        .map(|d| Node {
            label: format!("{}@{}", d.name, d.version),
            href: Some(format!("/console/datasets/{}/versions/{}", segment(&d.name), d.version)),
        })
        .chain(lineage.base_model.iter().map(|base| Node::plain(&format!("base {base}"))))
        .collect();
    let run: Vec<Node> = lineage
        .run
        .iter()
        .map(|run| Node { label: format!("run {run}"), href: Some(format!("/console/jobs/{}", segment(run))) })
        .collect();
    let this = vec![Node::plain(&format!("{name}@{version}"))];
    let served: Vec<Node> = serving
        .iter()
        .map(|d| Node { label: d.clone(), href: Some(format!("/console/deployments/{}", segment(d))) })
        .collect();
    let columns: Vec<Vec<Node>> = [data, run, this, served].into_iter().filter(|c| !c.is_empty()).collect();
    plot::lineage("Lineage: data, run, this version, deployments", &columns)
}
