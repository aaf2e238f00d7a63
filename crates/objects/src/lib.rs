//! The factory's content-addressed object store.
//!
//! Governance records (audit entries, lineage, approvals) name artefacts by SHA-256, so the bytes
//! behind a name must be immutable and checkable. This crate stores blobs under their digest on
//! top of the `object_store` crate, in a local directory by default or in an S3-compatible bucket
//! by configuration, with atomic writes, verified reads and collection of abandoned uploads.

mod digest;
mod error;
mod store;
mod verify;

#[cfg(test)]
mod tests;

pub use digest::ObjectDigest;
pub use error::{ObjectError, ObjectErrorKind, Result};
pub use store::{ContentStore, PutReceipt, S3Settings, StoredObject, PART_SIZE};
pub use verify::VerifiedStream;
