#![allow(clippy::unwrap_used)]

use factory_core::{Classification, Jurisdiction};

use super::*;

fn jurisdiction(name: &str) -> Jurisdiction {
    Jurisdiction::new(name).unwrap()
}

fn signer(name: &str, seed: u8) -> NoteSigner {
    NoteSigner::generate(name, [seed; 32]).unwrap()
}

/// A signed-looking manifest of `files` (also what the property tests mutate).
pub(crate) fn manifest(files: &[(&str, &[u8])]) -> ModelManifest {
    ModelManifest {
        format: MANIFEST_FORMAT.to_string(),
        tenant: "acme".to_string(),
        name: "bard".to_string(),
        version: 3,
        created_at: 1,
        architecture: "llama".to_string(),
        parameters: 1_234_567,
        residency: Residency {
            jurisdiction: jurisdiction("eu"),
            classification: Classification::Confidential,
            derived_from: "training data".to_string(),
        },
        lineage: Lineage {
            origin: Origin::Trained,
            run: Some("run_1".to_string()),
            datasets: vec![DatasetInput {
                name: "plays".to_string(),
                version: 2,
                jurisdiction: jurisdiction("eu"),
                classification: Classification::Confidential,
            }],
            base_model: None,
            code_version: "factory 0.1.0".to_string(),
            config: serde_json::json!({"hidden_size": 64}),
            seed: Some(7),
        },
        evals: serde_json::json!({"validation_perplexity": 12.5}),
        files: files
            .iter()
            .map(|(path, bytes)| ModelFile {
                path: path.to_string(),
                digest: file_digest(bytes),
                size: bytes.len() as u64,
            })
            .collect(),
    }
}

fn bundle_bytes(note: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (path, bytes) in std::iter::once((BUNDLE_MANIFEST, note.as_bytes())).chain(files.iter().copied()) {
        out.extend(tar_header(path, bytes.len() as u64).unwrap());
        out.extend_from_slice(bytes);
        out.extend(tar_padding(bytes.len() as u64));
    }
    out.extend(tar_end());
    out
}

const FILES: &[(&str, &[u8])] = &[("config.json", b"{\"hidden_size\": 64}"), ("model.safetensors", b"weights")];

#[test]
fn a_signed_manifest_opens_only_with_a_trusted_key_and_unchanged_text() {
    let ours = signer("factory.local/models", 1);
    let note = sign(&manifest(FILES), &ours).unwrap();
    let (opened, key) = ModelManifest::open(&note, &[signer("other/models", 2).verifier(), ours.verifier()]).unwrap();
    assert_eq!(opened, manifest(FILES));
    assert_eq!(key, ours.verifier_key());

    let untrusted = ModelManifest::open(&note, &[signer("other/models", 2).verifier()]).unwrap_err();
    assert_eq!(untrusted, RegistryError::UntrustedSigner("factory.local/models".to_string()));

    let tampered = note.replace("\"version\":3", "\"version\":4");
    assert_ne!(tampered, note);
    let error = ModelManifest::open(&tampered, &[ours.verifier()]).unwrap_err();
    assert!(matches!(error, RegistryError::Signature(_)), "{error:?}");
}

#[test]
fn files_must_match_their_digest_and_size() {
    let manifest = manifest(FILES);
    let weights = manifest.file("model.safetensors").unwrap();
    verify_file(weights, b"weights").unwrap();
    let error = verify_file(weights, b"weightz").unwrap_err();
    assert!(matches!(error, RegistryError::DigestMismatch { ref path, .. } if path == "model.safetensors"));
}

#[test]
fn bundles_round_trip_and_refuse_any_tampering() {
    let ours = signer("factory.local/models", 1);
    let note = sign(&manifest(FILES), &ours).unwrap();
    let bytes = bundle_bytes(&note, FILES);
    let bundle = read_bundle(bytes.as_slice(), 1 << 20).unwrap();
    let (opened, _) = bundle.verify(&[ours.verifier()]).unwrap();
    assert_eq!(opened.reference(), "bard@3");

    // A changed weight byte.
    let swapped = bundle_bytes(&note, &[FILES[0], ("model.safetensors", b"weightz")]);
    let error = read_bundle(swapped.as_slice(), 1 << 20).unwrap().verify(&[ours.verifier()]).unwrap_err();
    assert!(matches!(error, RegistryError::DigestMismatch { .. }), "{error:?}");
    // A file left out, one smuggled in.
    let missing = bundle_bytes(&note, &FILES[..1]);
    let error = read_bundle(missing.as_slice(), 1 << 20).unwrap().verify(&[ours.verifier()]).unwrap_err();
    assert!(error.to_string().contains("model.safetensors is listed but missing"), "{error}");
    let extra = bundle_bytes(&note, &[FILES[0], FILES[1], ("payload.py", b"import os")]);
    let error = read_bundle(extra.as_slice(), 1 << 20).unwrap().verify(&[ours.verifier()]).unwrap_err();
    assert!(error.to_string().contains("payload.py is not listed"), "{error}");
    // A manifest re-signed by a key nobody trusts, to cover a changed digest.
    let forged = sign(&manifest(&[FILES[0], ("model.safetensors", b"weightz")]), &signer("attacker", 9)).unwrap();
    let forged = bundle_bytes(&forged, &[FILES[0], ("model.safetensors", b"weightz")]);
    let error = read_bundle(forged.as_slice(), 1 << 20).unwrap().verify(&[ours.verifier()]).unwrap_err();
    assert_eq!(error, RegistryError::UntrustedSigner("attacker".to_string()));
    // Paths that climb out, and bundles over the limit.
    let climbing = bundle_bytes(&note, &[("..evil", b"x")]);
    assert!(read_bundle(climbing.as_slice(), 1 << 20).is_err());
    assert!(read_bundle(bytes.as_slice(), 10).unwrap_err().to_string().contains("more than 10 bytes"));
    assert!(read_bundle(&b"not a tar at all"[..], 1 << 20).is_err());
}

#[test]
fn residency_is_the_strictest_of_the_inputs() {
    let (eu, de) = (jurisdiction("eu"), jurisdiction("de"));
    let inputs = [(&eu, Classification::Internal), (&eu, Classification::Secret), (&eu, Classification::Public)];
    assert_eq!(strictest_residency(inputs).unwrap(), (eu.clone(), Classification::Secret));
    let mixed = strictest_residency([(&eu, Classification::Internal), (&de, Classification::Internal)]);
    assert!(matches!(mixed, Err(RegistryError::Residency(_))));
    assert!(strictest_residency([]).is_err());
}

#[test]
fn the_card_states_data_parameters_evals_use_and_limits() {
    let card = model_card(&manifest(FILES), None);
    for expected in [
        "# bard@3",
        "1,234,567 parameters",
        "`plays@2` (eu, confidential)",
        "- seed: 7",
        "validation_perplexity: 12.5",
        "## Intended use",
        "## Limits",
        "only in `eu`",
        "factory model verify bard@3",
    ] {
        assert!(card.contains(expected), "{expected:?} missing from:\n{card}");
    }
}
