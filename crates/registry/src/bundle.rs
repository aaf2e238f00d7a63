//! Air-gap bundles: a POSIX tar holding `manifest.note` (the signed manifest) and every file
//! it names, under its manifest path. Writing is exposed as header/padding pieces so a server
//! can stream a bundle one file at a time; reading is strict, because a bundle comes from
//! outside: only regular files with plain names, no duplicates, nothing unlisted, every digest
//! checked before anything is trusted.

use std::collections::BTreeMap;
use std::io::Read;

use factory_audit::checkpoint::NoteVerifier;

use crate::manifest::{verify_file, ModelManifest};
use crate::RegistryError;

pub const BUNDLE_MANIFEST: &str = "manifest.note";
const BLOCK: usize = 512;

/// The 512-byte ustar header of a regular file.
pub fn tar_header(path: &str, size: u64) -> Result<Vec<u8>, RegistryError> {
    let mut header = tar::Header::new_ustar();
    header.set_path(path).map_err(|e| RegistryError::Bundle(format!("{path}: {e}")))?;
    header.set_size(size);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mtime(0);
    header.set_cksum();
    Ok(header.as_bytes().to_vec())
}

/// The zero bytes that round a file of `size` bytes up to whole blocks.
pub fn tar_padding(size: u64) -> Vec<u8> {
    vec![0; (BLOCK - (size as usize % BLOCK)) % BLOCK]
}

/// The two zero blocks that end an archive.
pub fn tar_end() -> Vec<u8> {
    vec![0; 2 * BLOCK]
}

/// A bundle as read: the signed manifest and the files, not yet verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    pub note: String,
    pub files: BTreeMap<String, Vec<u8>>,
}

/// Reads a bundle of at most `max_bytes` of file content.
/// The files of a Hugging Face directory the registry keeps when importing one (`import-hf`):
/// what the client sends and the server accepts, and nothing else. The sentence-transformers
/// files describe BERT encoders (their pooling is taken to be the mean).
pub const HF_FILES: &[&str] = &[
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
];

/// A sharded checkpoint's index: which shard holds each tensor.
pub const HF_SHARD_INDEX: &str = "model.safetensors.index.json";

/// Whether `path` is a file an `import-hf` keeps: one of [`HF_FILES`], a sharded checkpoint's
/// index, or one of its shards (`model-00001-of-00004.safetensors`).
pub fn is_hf_file(path: &str) -> bool {
    HF_FILES.contains(&path) || path == HF_SHARD_INDEX || is_shard(path)
}

fn is_shard(path: &str) -> bool {
    let Some(numbers) = path.strip_prefix("model-").and_then(|rest| rest.strip_suffix(".safetensors")) else {
        return false;
    };
    let digits = |part: &str| part.len() == 5 && part.bytes().all(|b| b.is_ascii_digit());
    numbers.split_once("-of-").is_some_and(|(this, of)| digits(this) && digits(of))
}

/// The shards a sharded checkpoint's index names, each once, in order: every one a shard's
/// file name (nothing that reaches outside the directory).
pub fn shard_names(index: &[u8]) -> Result<Vec<String>, RegistryError> {
    let bad = |message: String| RegistryError::Bundle(format!("{HF_SHARD_INDEX}: {message}"));
    let index: serde_json::Value = serde_json::from_slice(index).map_err(|e| bad(e.to_string()))?;
    let map = index["weight_map"].as_object().ok_or_else(|| bad("no weight_map".to_string()))?;
    let mut names = std::collections::BTreeSet::new();
    for (tensor, shard) in map {
        let shard = shard
            .as_str()
            .filter(|shard| is_shard(shard))
            .ok_or_else(|| bad(format!("{tensor}: {shard} is not a shard name (model-NNNNN-of-NNNNN.safetensors)")))?;
        names.insert(shard.to_string());
    }
    if names.is_empty() {
        return Err(bad("the weight_map names no shard".to_string()));
    }
    Ok(names.into_iter().collect())
}

pub fn read_bundle(reader: impl Read, max_bytes: u64) -> Result<Bundle, RegistryError> {
    let bad = |message: String| RegistryError::Bundle(message);
    let mut archive = tar::Archive::new(reader);
    let mut note = None;
    let mut files = BTreeMap::new();
    let mut total = 0u64;
    for entry in archive.entries().map_err(|e| bad(format!("not a tar archive: {e}")))? {
        let mut entry = entry.map_err(|e| bad(format!("unreadable entry: {e}")))?;
        let path = entry.path().map_err(|e| bad(format!("entry path: {e}")))?.to_string_lossy().into_owned();
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(bad(format!("{path}: only regular files may be bundled")));
        }
        if !plain_name(&path) {
            return Err(bad(format!("{path}: entries must be plain file names")));
        }
        total = total.saturating_add(entry.size());
        if total > max_bytes {
            return Err(bad(format!("the bundle holds more than {max_bytes} bytes")));
        }
        // A header may claim more than follows: reserve no more than a modest start up front.
        let mut bytes = Vec::with_capacity(entry.size().min(64 << 20) as usize);
        entry.read_to_end(&mut bytes).map_err(|e| bad(format!("{path}: {e}")))?;
        if path == BUNDLE_MANIFEST {
            let text = String::from_utf8(bytes).map_err(|_| bad(format!("{BUNDLE_MANIFEST} is not UTF-8")))?;
            if note.replace(text).is_some() {
                return Err(bad(format!("{BUNDLE_MANIFEST} appears twice")));
            }
        } else if files.insert(path.clone(), bytes).is_some() {
            return Err(bad(format!("{path} appears twice")));
        }
    }
    let note = note.ok_or_else(|| bad(format!("no {BUNDLE_MANIFEST}")))?;
    Ok(Bundle { note, files })
}

fn plain_name(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 100
        && !path.starts_with('.')
        && path.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl Bundle {
    /// Checks the signature against the trusted keys and every file against its digest; the
    /// bundle must hold exactly the files the manifest lists.
    pub fn verify(&self, trusted: &[NoteVerifier]) -> Result<(ModelManifest, String), RegistryError> {
        let (manifest, signer) = ModelManifest::open(&self.note, trusted)?;
        for file in &manifest.files {
            let bytes = self
                .files
                .get(&file.path)
                .ok_or_else(|| RegistryError::Bundle(format!("{} is listed but missing", file.path)))?;
            verify_file(file, bytes)?;
        }
        if let Some(extra) = self.files.keys().find(|path| manifest.file(path).is_none()) {
            return Err(RegistryError::Bundle(format!("{extra} is not listed in the manifest")));
        }
        Ok((manifest, signer))
    }
}
