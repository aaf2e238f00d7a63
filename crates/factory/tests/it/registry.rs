//! The model registry through the real binary and CLI: `factory train` registers a signed
//! version with lineage, residency derived from its data and eval scores; `model verify`
//! checks it on the client and catches a tampered object; aliases move; a fine-tune starts
//! from an alias; a Hugging Face directory made by `transformers` imports; and a bundle moves
//! to a second installation that trusts the first's key, while a tampered bundle is refused.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::support::{call, cli, shakespeare, tenant_with_keys, text_dataset, Server};

/// The object file holding `digest` in a local object store (fanned out by its first two
/// hex digits).
fn object_file(root: &Path, digest: &str) -> PathBuf {
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            let parent = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if path.is_dir() {
                pending.push(path);
            } else if format!("{parent}{name}") == digest {
                return path;
            }
        }
    }
    panic!("no object {digest} under {}", root.display());
}

fn flip_last_byte(path: &Path) -> Vec<u8> {
    let original = std::fs::read(path).unwrap();
    let mut changed = original.clone();
    *changed.last_mut().unwrap() ^= 0x01;
    std::fs::write(path, &changed).unwrap();
    original
}

/// A tar's entries as (name, data offset, size).
fn tar_entries(tar: &[u8]) -> Vec<(String, usize, usize)> {
    let mut entries = Vec::new();
    let mut offset = 0;
    while offset + 512 <= tar.len() && tar[offset] != 0 {
        let header = &tar[offset..offset + 512];
        let name = String::from_utf8_lossy(&header[..100]).trim_end_matches('\0').to_string();
        let size_text = String::from_utf8_lossy(&header[124..136]).trim_matches(|c| c == '\0' || c == ' ').to_string();
        let size = usize::from_str_radix(&size_text, 8).unwrap();
        entries.push((name, offset + 512, size));
        offset += 512 + size.div_ceil(512) * 512;
    }
    entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_registered_signed_verified_aliased_fine_tuned_and_moved_between_installations() {
    let dir = tempfile::tempdir().unwrap();
    let data_a = dir.path().join("a");
    let server = Server::start(&data_a, &["--jurisdiction", "eu"], &[("FACTORY_JOBS__WORKERS", "1")]);
    let keys = tenant_with_keys(&server, "acme", &["engineer", "app"]).await;
    let (engineer, app) = (keys[0].1.clone(), keys[1].1.clone());
    let url = server.url.clone();
    text_dataset(&url, &engineer, "plays", "confidential", shakespeare(80_000)).await;

    // `factory train` with a config file and an eval set, waiting with a progress bar.
    let config = dir.path().join("small.json");
    std::fs::write(
        &config,
        json!({
            "model": { "config": {
                "vocab_size": 320, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64
            } },
            "tokenizer": { "vocab_size": 320 },
            "train": { "seq_len": 32, "batch_size": 4, "warmup_steps": 3, "eval_every": 10,
                       "checkpoint_every": 0, "eval_windows": 4 }
        })
        .to_string(),
    )
    .unwrap();
    let eval_set = dir.path().join("recall.jsonl");
    std::fs::write(
        &eval_set,
        "{\"prompt\": \"First Citizen:\", \"expected\": \"Citizen\"}\n{\"prompt\": \"ROMEO:\", \"expected\": \"love\"}\n",
    )
    .unwrap();
    let env = [("FACTORY_URL", url.as_str()), ("FACTORY_API_KEY", engineer.as_str())];
    let (ok, stdout, stderr) = cli(
        &[
            "train",
            "--dataset",
            "plays@1",
            "--name",
            "bard",
            "--config",
            config.to_str().unwrap(),
            "--max-steps",
            "20",
            "--seed",
            "4",
            "--eval-set",
            eval_set.to_str().unwrap(),
            "--wait",
        ],
        &env,
    );
    assert!(ok, "factory train failed:\n{stdout}\n{stderr}");
    assert!(stderr.contains("registered bard@1"), "{stderr}");

    // The version: every file by digest, lineage, residency derived from the data, evals.
    let version = call(&url, "GET", "/api/v1/models/bard/versions/1", Some(&engineer), None).await;
    assert_eq!(version.status, 200, "{}", version.text);
    let manifest = &version.body["manifest"];
    let paths: Vec<&str> = manifest["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    for expected in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "generation_config.json",
        "tokenizer_config.json",
        "README.md",
    ] {
        assert!(paths.contains(&expected), "{expected} missing from {paths:?}");
    }
    assert_eq!(
        manifest["residency"],
        json!({ "jurisdiction": "eu", "classification": "confidential", "derived_from": "training data" })
    );
    assert_eq!(manifest["lineage"]["datasets"][0]["name"], "plays");
    assert_eq!(manifest["lineage"]["seed"], 4);
    assert_eq!(manifest["lineage"]["origin"], "trained");
    assert_eq!(manifest["lineage"]["config"]["train"]["steps"], 20);
    assert!(manifest["evals"]["validation_perplexity"].as_f64().unwrap() > 1.0, "{manifest}");
    assert!(manifest["evals"]["recall.contains"].is_number(), "{manifest}");
    let run = version.body["run"].as_str().unwrap().to_string();
    let metrics = call(&url, "GET", &format!("/api/v1/runs/{run}/metrics"), Some(&engineer), None).await;
    assert!(metrics.body["metrics"].as_array().unwrap().iter().any(|m| m["kind"] == "eval_sets"), "{}", metrics.text);
    let card = call(&url, "GET", "/api/v1/models/bard/versions/1/files/README.md", Some(&engineer), None).await;
    assert!(card.text.contains("`plays@1` (eu, confidential)") && card.text.contains("## Limits"), "{}", card.text);

    // Registering the same run twice is a conflict; applications may not read confidential weights.
    let again = call(&url, "POST", "/api/v1/models/bard/versions", Some(&engineer), Some(json!({ "run": run }))).await;
    assert_eq!(again.status, 409, "{}", again.text);
    let refused = call(&url, "GET", "/api/v1/models/bard/versions/1", Some(&app), None).await;
    assert_eq!(refused.status, 403, "{}", refused.text);

    // Verification on the client, against the key file of installation A.
    let key_a = std::fs::read_to_string(data_a.join("model-signing.pub")).unwrap().trim().to_string();
    let (ok, stdout, stderr) = cli(&["model", "verify", "bard@1", "--key", &key_a], &env);
    assert!(ok && stdout.contains("bard@1 verified: 6 files"), "{stdout}\n{stderr}");

    // Aliases move through the governed path, and resolve.
    let alias =
        call(&url, "PUT", "/api/v1/models/bard/aliases/production", Some(&engineer), Some(json!({ "version": 1 })))
            .await;
    assert_eq!(alias.status, 200, "{}", alias.text);
    assert!(alias.body["previous"].is_null());
    let by_alias = call(&url, "GET", "/api/v1/models/bard/versions/production", Some(&engineer), None).await;
    assert_eq!((by_alias.body["version"].as_i64(), by_alias.body["aliases"].clone()), (Some(1), json!(["production"])));
    let missing =
        call(&url, "PUT", "/api/v1/models/bard/aliases/staging", Some(&engineer), Some(json!({ "version": 7 }))).await;
    assert_eq!(missing.status, 404, "{}", missing.text);

    // A fine-tune starts from the alias, keeps the tokenizer and registers bard@2.
    let (ok, stdout, stderr) = cli(
        &[
            "train",
            "--dataset",
            "plays@1",
            "--name",
            "bard",
            "--base",
            "bard@production",
            "--config",
            config.to_str().unwrap(),
            "--max-steps",
            "5",
            "--wait",
        ],
        &env,
    );
    assert!(ok && stderr.contains("registered bard@2"), "{stdout}\n{stderr}");
    let tuned = call(&url, "GET", "/api/v1/models/bard/versions/2", Some(&engineer), None).await;
    assert_eq!(tuned.body["manifest"]["lineage"]["origin"], "fine_tuned", "{}", tuned.text);
    assert_eq!(tuned.body["manifest"]["lineage"]["base_model"], "bard@1");
    let file_digest = |body: &Value, path: &str| {
        body["manifest"]["files"].as_array().unwrap().iter().find(|f| f["path"] == path).unwrap()["digest"].clone()
    };
    assert_eq!(file_digest(&tuned.body, "tokenizer.json"), file_digest(&version.body, "tokenizer.json"));
    assert_ne!(file_digest(&tuned.body, "model.safetensors"), file_digest(&version.body, "model.safetensors"));

    // A LoRA fine-tune keeps its adapters beside the merged weights.
    let lora_config = dir.path().join("lora.json");
    std::fs::write(
        &lora_config,
        json!({ "train": { "seq_len": 32, "batch_size": 4, "checkpoint_every": 0, "eval_every": 0, "eval_windows": 4,
                           "lora": { "rank": 4, "alpha": 8.0, "target_modules": ["q_proj", "v_proj"] } } })
        .to_string(),
    )
    .unwrap();
    let config_arg = lora_config.to_str().unwrap();
    let (ok, stdout, stderr) = cli(
        &[
            "train",
            "--dataset",
            "plays@1",
            "--name",
            "bard",
            "--base",
            "bard@1",
            "--config",
            config_arg,
            "--max-steps",
            "5",
            "--wait",
        ],
        &env,
    );
    assert!(ok && stderr.contains("registered bard@3"), "{stdout}\n{stderr}");
    let adapted = call(&url, "GET", "/api/v1/models/bard/versions/3", Some(&engineer), None).await;
    let adapter_config =
        call(&url, "GET", "/api/v1/models/bard/versions/3/files/adapter_config.json", Some(&engineer), None).await;
    assert_eq!(
        (adapter_config.body["r"].clone(), adapter_config.body["base_model_name_or_path"].clone()),
        (json!(4), json!("bard@1"))
    );
    assert!(file_digest(&adapted.body, "adapter_model.safetensors").is_string(), "{}", adapted.text);
    let (ok, stdout, _) = cli(&["model", "verify", "bard@3", "--key", &key_a], &env);
    assert!(ok && stdout.contains("bard@3 verified: 8 files"), "{stdout}");
    // A new model can reuse a registered model's tokenizer instead of training one.
    let (ok, stdout, stderr) = cli(
        &[
            "train",
            "--dataset",
            "plays@1",
            "--name",
            "sonnet",
            "--tokenizer",
            "bard@1",
            "--config",
            config.to_str().unwrap(),
            "--max-steps",
            "3",
            "--wait",
        ],
        &env,
    );
    assert!(ok && stderr.contains("registered sonnet@1"), "{stdout}\n{stderr}");
    let sonnet = call(&url, "GET", "/api/v1/models/sonnet/versions/1", Some(&engineer), None).await;
    assert_eq!(file_digest(&sonnet.body, "tokenizer.json"), file_digest(&version.body, "tokenizer.json"));
    let pretrain_lora = call(
        &url,
        "POST",
        "/api/v1/runs",
        Some(&engineer),
        Some(json!({ "kind": "pretrain", "dataset": "plays", "version": 1, "train": { "lora": { "rank": 4, "alpha": 8.0 } } })),
    )
    .await;
    assert_eq!(pretrain_lora.status, 400, "{}", pretrain_lora.text);

    // A Llama directory written by `transformers` imports; a jurisdiction the tenant does not
    // allow is refused by the residency policy.
    let hf_dir = dir.path().join("hf");
    std::fs::create_dir_all(&hf_dir).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/tiny-llama");
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(name), hf_dir.join(name)).unwrap();
    }
    let tokenizer =
        call(&url, "GET", "/api/v1/models/bard/versions/1/files/tokenizer.json", Some(&engineer), None).await;
    std::fs::write(hf_dir.join("tokenizer.json"), tokenizer.text).unwrap();
    let hf = hf_dir.to_str().unwrap();
    let (ok, stdout, stderr) = cli(&["model", "import-hf", hf, "--name", "outsider", "--jurisdiction", "us"], &env);
    assert!(!ok && stderr.contains("403"), "{stdout}\n{stderr}");
    let (ok, stdout, stderr) = cli(&["model", "import-hf", hf, "--name", "outsider", "--jurisdiction", "eu"], &env);
    assert!(ok, "{stdout}\n{stderr}");
    let imported: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!((imported["origin"].as_str(), imported["version"].as_i64()), (Some("imported"), Some(1)));
    let (ok, stdout, _) = cli(&["model", "verify", "outsider@1", "--key", &key_a], &env);
    assert!(ok, "{stdout}");

    // The audit log holds every registry act.
    let records = call(&url, "GET", "/api/v1/audit/records?from=0&limit=1000", Some(&server.admin_key), None).await;
    let actions: Vec<&str> =
        records.body["records"].as_array().unwrap().iter().filter_map(|r| r["record"]["action"].as_str()).collect();
    for expected in ["model.register", "model.alias", "model.import"] {
        assert!(actions.contains(&expected), "{expected} not audited: {actions:?}");
    }

    // Export, and move to installation B, which trusts A's key.
    let bundle = dir.path().join("bard-1.tar");
    let (ok, stdout, stderr) = cli(&["model", "export", "bard@1", "--out", bundle.to_str().unwrap()], &env);
    assert!(ok, "{stdout}\n{stderr}");
    let data_b = dir.path().join("b");
    let trusted = format!("[\"{key_a}\"]");
    let server_b =
        Server::start(&data_b, &["--jurisdiction", "eu"], &[("FACTORY_REGISTRY__TRUSTED_KEYS", trusted.as_str())]);
    let keys_b = tenant_with_keys(&server_b, "acme", &["engineer"]).await;
    let env_b = [("FACTORY_URL", server_b.url.as_str()), ("FACTORY_API_KEY", keys_b[0].1.as_str())];

    // A bundle with one flipped weight byte is refused, and nothing of it is registered.
    let original = std::fs::read(&bundle).unwrap();
    let (_, offset, size) =
        tar_entries(&original).into_iter().find(|(name, _, _)| name == "model.safetensors").unwrap();
    let mut tampered = original.clone();
    tampered[offset + size - 1] ^= 0x01;
    let tampered_path = dir.path().join("tampered.tar");
    std::fs::write(&tampered_path, &tampered).unwrap();
    let (ok, stdout, stderr) = cli(&["model", "import", tampered_path.to_str().unwrap()], &env_b);
    assert!(!ok && stderr.contains("422") && stderr.contains("model.safetensors"), "{stdout}\n{stderr}");
    let none = call(&server_b.url, "GET", "/api/v1/models/bard", Some(&keys_b[0].1), None).await;
    assert_eq!(none.status, 404, "{}", none.text);

    let (ok, stdout, stderr) = cli(&["model", "import", bundle.to_str().unwrap()], &env_b);
    assert!(ok, "{stdout}\n{stderr}");
    let (ok, stdout, stderr) = cli(&["model", "verify", "bard@1", "--key", &key_a], &env_b);
    assert!(ok && stdout.contains("verified"), "{stdout}\n{stderr}");
    let moved = call(&server_b.url, "GET", "/api/v1/models/bard/versions/1", Some(&keys_b[0].1), None).await;
    assert_eq!(moved.body["manifest"], version.body["manifest"], "the signed manifest travels unchanged");
    // B's own key did not sign it, so a check against B's key alone fails.
    let key_b = std::fs::read_to_string(data_b.join("model-signing.pub")).unwrap().trim().to_string();
    let (ok, _, stderr) = cli(&["model", "verify", "bard@1", "--key", &key_b], &env_b);
    assert!(!ok && stderr.contains("FAILED"), "{stderr}");
    server_b.terminate();

    // A weight object changed on A's disk: verify fails, and the bundle refuses to leave.
    let weights = file_digest(&version.body, "model.safetensors");
    let object = object_file(&data_a.join("objects"), weights.as_str().unwrap());
    let saved = flip_last_byte(&object);
    let (ok, stdout, stderr) = cli(&["model", "verify", "bard@1", "--key", &key_a], &env);
    assert!(!ok && stdout.contains("FAILED") && stderr.contains("FAILED"), "{stdout}\n{stderr}");
    let report = call(&url, "POST", "/api/v1/models/bard/versions/1/verify", Some(&engineer), None).await;
    assert_eq!(report.body["verified"], false, "{}", report.text);
    let export = call(&url, "GET", "/api/v1/models/bard/versions/1/bundle", Some(&engineer), None).await;
    assert_eq!(export.status, 422, "{}", export.text);
    std::fs::write(&object, saved).unwrap();
    let report = call(&url, "POST", "/api/v1/models/bard/versions/1/verify", Some(&engineer), None).await;
    assert_eq!(report.body["verified"], true, "{}", report.text);

    let (ok, stdout, _) = cli(&["model", "list"], &env);
    assert!(
        ok && stdout.contains("\"bard\"") && stdout.contains("\"outsider\"") && stdout.contains("\"sonnet\""),
        "{stdout}"
    );
    server.terminate();
}
