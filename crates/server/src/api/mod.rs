//! HTTP handlers, one module per resource, and the wire types (bodies, queries, OpenAPI
//! schemas) beside them. A handler decodes the request, calls one use case of `service` and
//! encodes its answer; what it may decide itself is only what HTTP is about.

pub mod audit;
pub mod batches;
pub mod console;
pub mod datasets;
pub mod deployments;
pub mod feedback;
pub mod jobs;
pub mod keys;
pub mod models;
pub mod openai;
pub mod ops;
pub mod pipelines;
#[cfg(test)]
mod proptests;
pub mod runs;
pub mod tenants;

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use factory_store::Committed;

pub use crate::service::access::{parse_tenant, tenant_of};

pub const AUDIT_INDEX_HEADER: &str = "x-factory-audit-index";

/// A governed write's response: the body plus the index of the audit record that proves it.
pub fn committed_response(status: StatusCode, body: impl IntoResponse, committed: Committed) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(HeaderName::from_static(AUDIT_INDEX_HEADER), HeaderValue::from(committed.audit_index));
    response
}

pub fn millis_to_text(millis: i64) -> String {
    factory_core::time::millis_to_rfc3339(millis)
}
