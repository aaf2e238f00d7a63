//! Vocabulary shared by every factory crate: names, roles, classifications, the shape of an
//! access request and its decision, and small helpers for time, digests and secrets.
//!
//! This crate must stay light (no I/O, no async, no heavy dependencies) because every other crate
//! depends on it and a change here rebuilds the whole workspace.

pub mod access;
pub mod names;
pub mod secrets;
pub mod time;

pub use access::{AccessRequest, Action, Decision, Effect, PolicyDecisionPoint, Principal, Resource, ResourceKind};
pub use names::{
    AliasName, Classification, DatasetName, DeploymentName, Jurisdiction, ModelName, NameError, PipelineName, Role,
    SiteKind, TenantName,
};
