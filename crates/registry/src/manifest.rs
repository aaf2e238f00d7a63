//! The model manifest and its signature.
//!
//! The signed text is the manifest as one line of JSON followed by a newline, so what was
//! signed is exactly what is parsed: there is no canonicalisation step to get wrong.

use factory_audit::checkpoint::{CheckpointError, NoteSigner, NoteVerifier};
use factory_core::{Classification, Jurisdiction};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::RegistryError;

pub const MANIFEST_FORMAT: &str = "factory.model-manifest/v1";

/// Everything a model version is: its files by digest and the facts that govern it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    pub format: String,
    pub tenant: String,
    pub name: String,
    pub version: i64,
    pub created_at: i64,
    /// `llama` for every model the factory trains or imports today.
    pub architecture: String,
    pub parameters: u64,
    pub residency: Residency,
    pub lineage: Lineage,
    /// Held-out perplexity and eval-set scores, as the run recorded them.
    pub evals: serde_json::Value,
    pub files: Vec<ModelFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub path: String,
    /// Hex SHA-256 of the file's bytes, which is also its object key.
    pub digest: String,
    pub size: u64,
}

/// Where a model may live and who may see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Residency {
    pub jurisdiction: Jurisdiction,
    pub classification: Classification,
    /// `training data` for trained and fine-tuned models (never declared by hand), or
    /// `declared at import` for a model brought in from outside.
    pub derived_from: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Trained,
    FineTuned,
    Imported,
    /// Another version's weights in quantized blocks (`base_model` names it).
    Quantized,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lineage {
    pub origin: Origin,
    /// The training run, for trained and fine-tuned models.
    pub run: Option<String>,
    pub datasets: Vec<DatasetInput>,
    /// `name@version` of the model a fine-tune started from.
    pub base_model: Option<String>,
    /// The factory build that produced the weights.
    pub code_version: String,
    /// The model config and training settings as the run used them.
    pub config: serde_json::Value,
    pub seed: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetInput {
    pub name: String,
    pub version: i64,
    pub jurisdiction: Jurisdiction,
    pub classification: Classification,
}

impl ModelManifest {
    /// The manifest's signed-note text: one line of JSON and a newline.
    pub fn note_text(&self) -> String {
        let mut text = serde_json::to_string(self).unwrap_or_default();
        text.push('\n');
        text
    }

    pub fn file(&self, path: &str) -> Option<&ModelFile> {
        self.files.iter().find(|f| f.path == path)
    }

    /// `name@version`.
    pub fn reference(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// Opens a signed manifest with whichever trusted key signed it. A note signed by none of
    /// them is untrusted; a signature by a trusted key that does not verify means the text was
    /// changed after signing.
    pub fn open(note: &str, trusted: &[NoteVerifier]) -> Result<(ModelManifest, String), RegistryError> {
        for verifier in trusted {
            match verifier.open(note) {
                Ok(text) => {
                    let manifest: ModelManifest =
                        serde_json::from_str(text).map_err(|e| RegistryError::Manifest(e.to_string()))?;
                    if manifest.format != MANIFEST_FORMAT {
                        return Err(RegistryError::Manifest(format!("unknown format {:?}", manifest.format)));
                    }
                    return Ok((manifest, verifier.verifier_key()));
                }
                Err(CheckpointError::NoSignature { .. }) => continue,
                Err(other) => return Err(RegistryError::Signature(other.to_string())),
            }
        }
        let signers: Vec<&str> = note
            .lines()
            .filter_map(|line| line.strip_prefix("\u{2014} "))
            .filter_map(|line| line.split(' ').next())
            .collect();
        match signers.is_empty() {
            true => Err(RegistryError::Signature("the manifest carries no signature".to_string())),
            false => Err(RegistryError::UntrustedSigner(signers.join(", "))),
        }
    }
}

/// Signs `manifest` as a signed note.
pub fn sign(manifest: &ModelManifest, signer: &NoteSigner) -> Result<String, RegistryError> {
    signer.sign_text(&manifest.note_text()).map_err(|e| RegistryError::Signature(e.to_string()))
}

/// Hex SHA-256 of `bytes`.
pub fn file_digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks `bytes` against the manifest's entry for them.
pub fn verify_file(file: &ModelFile, bytes: &[u8]) -> Result<(), RegistryError> {
    let actual = file_digest(bytes);
    if actual != file.digest || bytes.len() as u64 != file.size {
        return Err(RegistryError::DigestMismatch {
            path: file.path.clone(),
            expected: file.digest.clone(),
            actual,
            expected_size: file.size,
            actual_size: bytes.len() as u64,
        });
    }
    Ok(())
}

/// The residency a model inherits from everything it learned from: the highest
/// classification, and the one jurisdiction all inputs share. Inputs from different
/// jurisdictions have no place where all of them may live, so they are refused rather than
/// silently widened.
pub fn strictest_residency<'a>(
    inputs: impl IntoIterator<Item = (&'a Jurisdiction, Classification)>,
) -> Result<(Jurisdiction, Classification), RegistryError> {
    let mut result: Option<(Jurisdiction, Classification)> = None;
    for (jurisdiction, classification) in inputs {
        result = match result {
            None => Some((jurisdiction.clone(), classification)),
            Some((held, _)) if &held != jurisdiction => {
                return Err(RegistryError::Residency(format!(
                "inputs are bound to different jurisdictions ({held} and {jurisdiction}); no site may hold their model"
            )))
            }
            Some((held, strictest)) => Some((held, strictest.max(classification))),
        };
    }
    result.ok_or_else(|| RegistryError::Residency("a trained model needs at least one input to derive it from".into()))
}
