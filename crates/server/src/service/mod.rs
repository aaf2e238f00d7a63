//! The service layer: one typed function per use case (create a run, register a version, move
//! an alias, update a deployment, ingest a version, answer a completion, ...). Each takes the
//! caller and typed inputs and returns a typed answer or a [`ServiceError`]; each state change
//! goes through the store's governed path (authorize -> write -> audit record -> outbox event
//! in one transaction) and hands back the [`Committed`] record that proves it.
//!
//! Services know nothing of HTTP: the handlers in `api` decode a request into these inputs and
//! encode the answers (and errors) onto the wire. Pipelines, rollouts, drift monitors and the
//! canary call the same functions, never a handler. A service may use the parts `AppState` is
//! built from and the other services; nothing here imports `api`, the orchestration modules or
//! the router.

pub mod access;
pub mod audit;
pub mod batches;
pub mod datasets;
pub mod deployments;
pub mod feedback;
pub mod formats;
pub mod imports;
pub mod inference;
pub mod jobs;
pub mod keys;
pub mod models;
pub mod ops;
pub mod orphans;
pub mod pipelines;
pub mod run_spec;
pub mod runs;
pub mod sessions;
pub mod tenants;

#[cfg(test)]
mod tests;

use factory_store::Committed;

pub use crate::caller::Caller;
pub use crate::service_error::{ErrorKind, ServiceError};

/// A use case's answer with the audit record of the change that made it.
pub struct Recorded<T> {
    pub value: T,
    pub committed: Committed,
}
