//! Property tests (issue 16, point 22): a bundle comes from outside, so arbitrary bytes and
//! mutated real bundles fed to `read_bundle` must end in a clean error or in a bundle within
//! the byte limit, never in a panic; and `Bundle::verify` must never accept a bundle whose
//! signed manifest or files differ from what was signed.
//!
//! 64 cases per property by default (seconds); `FACTORY_PROPTEST_CASES=10000` runs longer.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

const FILES: &[(&str, &[u8])] = &[
    ("config.json", b"{\"hidden_size\": 64, \"vocab_size\": 32}"),
    ("model.safetensors", b"weights, not really"),
    ("tokenizer.json", b"{}"),
];

fn signer() -> &'static NoteSigner {
    static SIGNER: OnceLock<NoteSigner> = OnceLock::new();
    SIGNER.get_or_init(|| NoteSigner::generate("factory.local/models", [7; 32]).unwrap())
}

fn original_manifest() -> ModelManifest {
    crate::tests::manifest(FILES)
}

fn original_note() -> &'static str {
    static NOTE: OnceLock<String> = OnceLock::new();
    NOTE.get_or_init(|| sign(&original_manifest(), signer()).unwrap())
}

fn original_files() -> BTreeMap<String, Vec<u8>> {
    FILES.iter().map(|(path, bytes)| (path.to_string(), bytes.to_vec())).collect()
}

/// A bundle as `factory model export` writes it.
fn bundle_bytes(note: &[u8], files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let entries = std::iter::once((BUNDLE_MANIFEST, note)).chain(files.iter().map(|(p, b)| (p.as_str(), b.as_slice())));
    for (path, bytes) in entries {
        out.extend(tar_header(path, bytes.len() as u64).unwrap());
        out.extend_from_slice(bytes);
        out.extend(tar_padding(bytes.len() as u64));
    }
    out.extend(tar_end());
    out
}

fn original_bundle() -> &'static Vec<u8> {
    static BUNDLE: OnceLock<Vec<u8>> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let files: Vec<(String, Vec<u8>)> = original_files().into_iter().collect();
        bundle_bytes(original_note().as_bytes(), &files)
    })
}

/// The reading property: a bundle within the limit, made only of plain names, or an error
/// that says what is wrong.
fn check_read(bytes: &[u8], max_bytes: u64) -> Result<Option<Bundle>, TestCaseError> {
    match read_bundle(bytes, max_bytes) {
        Ok(bundle) => {
            let held = bundle.note.len() as u64 + bundle.files.values().map(|b| b.len() as u64).sum::<u64>();
            prop_assert!(held <= max_bytes, "{held} bytes read under a limit of {max_bytes}");
            prop_assert!(held <= bytes.len() as u64, "{held} bytes read from {} bytes", bytes.len());
            for path in bundle.files.keys() {
                prop_assert!(path != BUNDLE_MANIFEST && !path.starts_with('.') && !path.contains('/'), "{path:?}");
            }
            Ok(Some(bundle))
        }
        Err(error) => {
            prop_assert!(matches!(error, RegistryError::Bundle(_)), "{error:?}");
            prop_assert!(error.to_string().len() > "bundle: ".len());
            Ok(None)
        }
    }
}

/// The verifying property: whatever verifies is exactly what was signed.
fn check_verify(bundle: &Bundle) -> Result<(), TestCaseError> {
    let trusted = [signer().verifier()];
    if let Ok((manifest, key)) = bundle.verify(&trusted) {
        prop_assert_eq!(manifest, original_manifest());
        prop_assert_eq!(&bundle.files, &original_files());
        prop_assert_eq!(key, signer().verifier_key());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: factory_testkit::proptest_cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_read_cleanly(bytes in vec(any::<u8>(), 0..4096), max_bytes in 0..4096u64) {
        if let Some(bundle) = check_read(&bytes, max_bytes)? {
            check_verify(&bundle)?;
        }
    }

    /// Tar headers whose fields were changed (sizes, types, names, checksums) reach deeper
    /// into the reader than random bytes do.
    #[test]
    fn mutated_bundles_read_cleanly_and_verify_only_unchanged(
        mutations in vec((any::<usize>(), any::<u8>(), 0..4u8), 1..16),
        max_bytes in prop_oneof![Just(1u64 << 20), 0..2048u64],
    ) {
        let bytes = factory_testkit::mutate(original_bundle().clone(), &mutations);
        if let Some(bundle) = check_read(&bytes, max_bytes)? {
            check_verify(&bundle)?;
        }
    }

    /// A well-formed tar around a changed manifest note or changed file bytes: only the
    /// signature and the digests stand between it and an import.
    #[test]
    fn changed_notes_and_files_never_verify(
        note_mutations in vec((any::<usize>(), any::<u8>(), 0..4u8), 0..4),
        file in 0..FILES.len(),
        file_mutations in vec((any::<usize>(), any::<u8>(), 0..4u8), 0..4),
        extra in prop::option::of(((0..100u32).prop_map(|n| format!("extra{n}.json")), vec(any::<u8>(), 0..16))),
        drop_file in any::<bool>(),
    ) {
        let note = factory_testkit::mutate(original_note().as_bytes().to_vec(), &note_mutations);
        let mut files: Vec<(String, Vec<u8>)> = original_files().into_iter().collect();
        files[file].1 = factory_testkit::mutate(files[file].1.clone(), &file_mutations);
        if drop_file {
            files.remove(file);
        }
        files.extend(extra);
        files.sort();
        files.dedup_by(|a, b| a.0 == b.0);
        let bytes = bundle_bytes(&note, &files);
        if let Some(bundle) = check_read(&bytes, 1 << 20)? {
            check_verify(&bundle)?;
        }
    }
}

#[test]
fn the_original_bundle_reads_and_verifies() {
    let bundle = read_bundle(original_bundle().as_slice(), 1 << 20).unwrap();
    let (manifest, _) = bundle.verify(&[signer().verifier()]).unwrap();
    assert_eq!(manifest, original_manifest());
}
