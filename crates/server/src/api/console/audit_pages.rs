//! The audit pages: the latest signed checkpoint (every key may see it: it holds only hashes),
//! a search of the records (by tenant, principal, action and time, a page at a time, for keys
//! that may read the log), and a record with its inclusion proof, which the page's script
//! checks in the browser itself (SHA-256 and Ed25519 through WebCrypto) against a public key
//! the auditor may replace with the one they hold, so no one need trust the server's word.

use axum::extract::{Path, Query};
use axum::response::Response;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use factory_core::TenantName;
use factory_store::AuditSearch;
use serde::Deserialize;

use super::{segment, Shown, Visit};
use crate::service::audit;
use crate::service_error::{ErrorKind, ServiceError};

/// The search form's fields, as typed (empty fields match everything).
#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    from: Option<String>,
    tenant: Option<String>,
    principal: Option<String>,
    action: Option<String>,
    /// `YYYY-MM-DD`, from the start of that UTC day.
    since: Option<String>,
    /// `YYYY-MM-DD`, up to the end of that UTC day.
    until: Option<String>,
}

/// Records shown per page of the audit log.
const AUDIT_PAGE: u32 = 50;
/// The longest search term accepted.
const MAX_TERM: usize = 200;

fn term(value: &Option<String>, field: &str) -> Result<Option<String>, ServiceError> {
    match value.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) if text.len() > MAX_TERM => {
            Err(ServiceError::invalid(format!("{field}: at most {MAX_TERM} characters")))
        }
        Some(text) => Ok(Some(text.to_string())),
    }
}

/// Milliseconds at the start of the UTC day `YYYY-MM-DD`, plus `days`.
fn day_start(value: &Option<String>, field: &str, days: i64) -> Result<Option<i64>, ServiceError> {
    let Some(text) = term(value, field)? else { return Ok(None) };
    let date = chrono::NaiveDate::parse_from_str(&text, "%Y-%m-%d")
        .map_err(|_| ServiceError::invalid(format!("{field}: a date as YYYY-MM-DD")))?;
    let start = date.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp_millis()).unwrap_or_default();
    Ok(Some(start + days * 86_400_000))
}

impl AuditQuery {
    fn search(&self) -> Result<(AuditSearch, u64), ServiceError> {
        let tenant = term(&self.tenant, "tenant")?
            .map(|t| TenantName::new(&t).map_err(|e| ServiceError::invalid(format!("tenant: {e}"))))
            .transpose()?;
        let from = match term(&self.from, "from")? {
            Some(text) => text.parse().map_err(|_| ServiceError::invalid("from: a record index"))?,
            None => 0,
        };
        let search = AuditSearch {
            tenant,
            principal: term(&self.principal, "principal")?,
            action: term(&self.action, "action")?,
            since: day_start(&self.since, "since", 0)?,
            until: day_start(&self.until, "until", 1)?,
        };
        Ok((search, from))
    }

    /// The link to the page of results from `from`, keeping the search.
    fn page_link(&self, from: u64) -> String {
        let mut link = format!("/console/audit?from={from}");
        for (key, value) in [
            ("tenant", &self.tenant),
            ("principal", &self.principal),
            ("action", &self.action),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
                link.push_str(&format!("&{key}={}", segment(value)));
            }
        }
        link
    }
}

pub async fn audit_page(
    visit: Visit,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (query, malformed) = match query {
        Ok(Query(query)) => (query, None),
        Err(rejection) => (AuditQuery::default(), Some(rejection.body_text())),
    };
    visit
        .signed_page("/console/audit", async |state, caller| {
            if let Some(problem) = malformed {
                return Err(ServiceError::invalid(format!("the search: {problem}")));
            }
            let checkpoint = audit::checkpoint(state, caller).await?;
            let (search, from) = query.search()?;
            let (records, next, readable) = match audit::search(state, caller, search, from, Some(AUDIT_PAGE)).await {
                Ok(page) => {
                    let records: Vec<minijinja::Value> = page
                        .entries
                        .iter()
                        .map(|entry| {
                            let record = &entry.record;
                            minijinja::context! {
                                index => record.index, time => record.time, tenant => record.tenant,
                                principal => record.principal, action => record.action, resource => record.resource,
                                decision => format!("{:?}", record.decision).to_lowercase(),
                                href => format!("/console/audit/records/{}", record.index),
                            }
                        })
                        .collect();
                    (records, page.next.map(|next| query.page_link(next)), true)
                }
                Err(error) if error.kind == ErrorKind::Forbidden => (Vec::new(), None, false),
                Err(error) => return Err(error),
            };
            let context = minijinja::context! {
                checkpoint => checkpoint, records => records, next => next, readable => readable,
                platform => caller.principal.tenant.is_none(),
                query => minijinja::context! {
                    tenant => query.tenant, principal => query.principal, action => query.action,
                    since => query.since, until => query.until,
                },
            };
            Ok(Shown::new("audit.html", context))
        })
        .await
}

/// A record, its canonical bytes, a signed checkpoint, the proof that the checkpoint's tree
/// holds the record, and the key that verifies the checkpoint: all the browser needs to check.
pub async fn audit_record_page(visit: Visit, Path(index): Path<u64>) -> Response {
    visit
        .signed_page("/console/audit", async |state, caller| {
            let proven = audit::proven_record(state, caller, index).await?;
            let record = &proven.entry.record;
            let inclusion = &proven.inclusion;
            let context = minijinja::context! {
                index => record.index, time => record.time, tenant => record.tenant, principal => record.principal,
                action => record.action, resource => record.resource,
                decision => format!("{:?}", record.decision).to_lowercase(), policies => record.policies,
                request_id => record.request_id, details_digest => record.details_digest,
                details => serde_json::to_string_pretty(&proven.entry.details).unwrap_or_default(),
                canonical => proven.canonical, checkpoint => proven.checkpoint, public_key => proven.public_key,
                size => inclusion.size, leaf_hash => BASE64.encode(inclusion.leaf_hash),
                proof => inclusion.proof.iter().map(|h| BASE64.encode(h)).collect::<Vec<_>>().join(" "),
            };
            Ok(Shown::new("audit_record.html", context))
        })
        .await
}
