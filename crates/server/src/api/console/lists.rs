//! The lists of a tenant's objects: datasets, jobs, models, deployments and pipelines, each a
//! table from one service call, each row linking to the object's own page.

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::response::Response;
use factory_core::TenantName;
use serde::Deserialize;

use super::{segment, when, Shown, Visit};
use crate::caller::Caller;
use crate::service::{datasets, deployments, jobs, models, pipelines};
use crate::service_error::ServiceError;
use crate::state::AppState;

/// The lists the console shows of a tenant's objects, each from one service call.
#[derive(Debug, Clone, Copy)]
enum Listing {
    Datasets,
    Jobs,
    Models,
    Deployments,
    Pipelines,
}

/// A cell of a table: text, or a time the page's script shows in the reader's zone.
fn time_cell(millis: i64) -> minijinja::Value {
    minijinja::context! { time => when(millis) }
}

impl Listing {
    /// Its link, title, columns and what an empty list says.
    fn shape(self) -> (&'static str, &'static str, &'static [&'static str], &'static str) {
        match self {
            Listing::Datasets => (
                "/console/datasets",
                "Datasets",
                &["Name", "Classification", "Jurisdiction", "Latest version", "Created"],
                "No datasets this key may see.",
            ),
            Listing::Jobs => {
                ("/console/jobs", "Jobs", &["Job", "Kind", "State", "Priority", "Attempts", "Created"], "No jobs.")
            }
            Listing::Models => ("/console/models", "Models", &["Name", "Versions", "Latest", "Aliases"], "No models."),
            Listing::Deployments => {
                ("/console/deployments", "Deployments", &["Name", "Revision", "Variants", "Updated"], "No deployments.")
            }
            Listing::Pipelines => {
                ("/console/pipelines", "Pipelines", &["Name", "Revision", "Updated"], "No pipelines.")
            }
        }
    }

    /// The rows of page `page` (from 0), as the caller may see them, and whether more follow.
    async fn rows(
        self,
        state: &AppState,
        caller: &Caller,
        tenant: &TenantName,
        page: u32,
    ) -> Result<(Vec<Vec<minijinja::Value>>, bool), ServiceError> {
        let rows = match self {
            Listing::Datasets => window(datasets::list(state, caller, tenant).await?, page)
                .map(|d| {
                    let (classification, jurisdiction) = (d.classification.to_string(), d.jurisdiction.to_string());
                    vec![
                        link(&d.name, format!("/console/datasets/{}", segment(&d.name))),
                        classification.into(),
                        jurisdiction.into(),
                        d.latest_version.into(),
                        time_cell(d.created_at),
                    ]
                })
                .collect(),
            Listing::Jobs => jobs::page(state, caller, tenant, page.saturating_mul(PAGE_ROWS), PAGE_ROWS + 1)
                .await?
                .iter()
                .map(|j| {
                    vec![
                        link(&j.id, format!("/console/jobs/{}", segment(&j.id))),
                        j.kind.as_str().into(),
                        j.state.as_str().into(),
                        j.priority.into(),
                        j.attempts.into(),
                        time_cell(j.created_at),
                    ]
                })
                .collect(),
            Listing::Models => window(models::list(state, caller, tenant).await?, page)
                .map(|m| {
                    let aliases: Vec<String> =
                        m.aliases.iter().map(|(alias, version)| format!("{alias} → {version}")).collect();
                    vec![
                        link(&m.name, format!("/console/models/{}", segment(&m.name))),
                        m.versions.into(),
                        m.latest.into(),
                        aliases.join(", ").into(),
                    ]
                })
                .collect(),
            Listing::Deployments => window(deployments::list(state, caller, tenant).await?, page)
                .map(|d| {
                    let variants: Vec<String> = d.spec["variants"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|v| {
                            let target = v["model"].as_str().or(v["upstream"]["url"].as_str()).unwrap_or("?");
                            format!("{target} ({} {})", v["role"].as_str().unwrap_or("primary"), v["weight"])
                        })
                        .collect();
                    vec![
                        link(&d.name, format!("/console/deployments/{}", segment(&d.name))),
                        d.revision.into(),
                        variants.join(", ").into(),
                        time_cell(d.updated_at),
                    ]
                })
                .collect(),
            Listing::Pipelines => window(pipelines::list(state, caller, tenant).await?, page)
                .map(|p| {
                    vec![
                        link(&p.name, format!("/console/pipelines/{}", segment(&p.name))),
                        p.revision.into(),
                        time_cell(p.updated_at),
                    ]
                })
                .collect(),
        };
        let mut rows: Vec<Vec<minijinja::Value>> = rows;
        let more = rows.len() > PAGE_ROWS as usize;
        rows.truncate(PAGE_ROWS as usize);
        Ok((rows, more))
    }

    /// The page: the list of the signed-in key's tenant, as a table, a page at a time.
    async fn page(self, visit: Visit, query: Result<Query<PageQuery>, QueryRejection>) -> Response {
        let (href, title, columns, empty) = self.shape();
        visit
            .tenant_page(href, async |state, caller, tenant| {
                let Query(PageQuery { page }) =
                    query.map_err(|e| ServiceError::invalid(format!("page: {}", e.body_text())))?;
                let page = page.unwrap_or(0);
                let (rows, more) = self.rows(state, caller, tenant, page).await?;
                let caption = format!("{title} of {tenant} this key may see, page {}", page + 1);
                let context = minijinja::context! {
                    title => title, caption => caption, columns => columns, rows => rows, empty => empty,
                    previous => page.checked_sub(1).map(|p| format!("{href}?page={p}")),
                    next => more.then(|| format!("{href}?page={}", page + 1)),
                };
                Ok(Shown::new("table.html", context))
            })
            .await
    }
}

/// Rows on one page of a list.
const PAGE_ROWS: u32 = 50;

/// The page's query: which page, from 0.
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    page: Option<u32>,
}

/// The items of page `page`, and one more when more follow (so the caller can tell).
fn window<T>(items: Vec<T>, page: u32) -> impl Iterator<Item = T> {
    let skip = page as usize * PAGE_ROWS as usize;
    items.into_iter().skip(skip).take(PAGE_ROWS as usize + 1)
}

/// A cell that links to an object's page.
fn link(text: &str, href: String) -> minijinja::Value {
    minijinja::context! { text => text, href => href }
}

pub async fn datasets(visit: Visit, query: Result<Query<PageQuery>, QueryRejection>) -> Response {
    Listing::Datasets.page(visit, query).await
}

pub async fn jobs_page(visit: Visit, query: Result<Query<PageQuery>, QueryRejection>) -> Response {
    Listing::Jobs.page(visit, query).await
}

pub async fn models_page(visit: Visit, query: Result<Query<PageQuery>, QueryRejection>) -> Response {
    Listing::Models.page(visit, query).await
}

pub async fn deployments_page(visit: Visit, query: Result<Query<PageQuery>, QueryRejection>) -> Response {
    Listing::Deployments.page(visit, query).await
}

pub async fn pipelines_page(visit: Visit, query: Result<Query<PageQuery>, QueryRejection>) -> Response {
    Listing::Pipelines.page(visit, query).await
}
