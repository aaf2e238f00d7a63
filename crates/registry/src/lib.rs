//! What a registered model is, independent of where it is stored: the manifest that names
//! every file by digest and carries lineage, residency and evaluations; its Ed25519 signature
//! (a C2SP signed note, the same format as the audit log's checkpoints); the generated model
//! card; and the air-gap bundle, a plain tar that carries a signed model between
//! installations.
//!
//! Architecture Invariant: pure. No I/O beyond bytes in and out, no knowledge of the object
//! store, the database or HTTP; the server decides where files live and who may see them.

mod bundle;
mod card;
mod manifest;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use bundle::{
    is_hf_file, read_bundle, shard_names, tar_end, tar_header, tar_padding, Bundle, BUNDLE_MANIFEST, HF_FILES,
    HF_SHARD_INDEX,
};
pub use card::model_card;
pub use manifest::{
    file_digest, sign, strictest_residency, verify_file, DatasetInput, Lineage, ModelFile, ModelManifest, Origin,
    Residency, MANIFEST_FORMAT,
};

pub use factory_audit::checkpoint::{NoteSigner, NoteVerifier};

/// Why a manifest, a file or a bundle was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("manifest: {0}")]
    Manifest(String),
    #[error("signature: {0}")]
    Signature(String),
    #[error("the manifest is signed by {0}, which this installation does not trust")]
    UntrustedSigner(String),
    #[error("file {path}: expected digest {expected} ({expected_size} bytes), found {actual} ({actual_size} bytes)")]
    DigestMismatch { path: String, expected: String, actual: String, expected_size: u64, actual_size: u64 },
    #[error("bundle: {0}")]
    Bundle(String),
    #[error("residency: {0}")]
    Residency(String),
}
