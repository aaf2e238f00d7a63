//! What a deployment refuses to serve: a model whose bytes were tampered with, and, by
//! residency, a model where no site may serve it, at deploy time and at call time.

use serde_json::json;

use crate::support::{call, cli, tenant_with_keys, train_tiny_model, Server, ServingFactory};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_models_and_models_without_a_serving_site_are_refused() {
    let ServingFactory { dir, server, url, engineer, app: _app } = ServingFactory::start(&[], 1).await;

    // A tampered model is refused at deploy time.
    train_tiny_model(&url, &engineer, dir.path(), "lyric", "3").await;
    let version = call(&url, "GET", "/api/v1/models/lyric/versions/1", Some(&engineer), None).await;
    let weights = version.body["manifest"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "model.safetensors")
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let object = dir.path().join("a/objects/objects").join(&weights[..2]).join(&weights[2..]);
    let mut bytes = std::fs::read(&object).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&object, bytes).unwrap();
    let tampered = call(
        &url,
        "POST",
        "/api/v1/deployments",
        Some(&engineer),
        Some(json!({ "name": "lyrics", "variants": [{ "model": "lyric@1" }] })),
    )
    .await;
    assert_eq!(tampered.status, 422, "{}", tampered.text);
    assert!(tampered.text.contains("model.safetensors"), "{}", tampered.text);
    server.terminate();

    // Residency at deploy and call time: an installation serving in eu deploys a model; after it
    // restarts with an eu site that only stores, calls are refused (403, audited) and so is a
    // new deployment.
    let vault_dir = dir.path().join("b");
    let vault = Server::start(&vault_dir, &["--jurisdiction", "eu"], &[]);
    let keys = tenant_with_keys(&vault, "acme", &["engineer", "app"]).await;
    let hf = dir.path().join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/tiny-llama");
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(name), hf.join(name)).unwrap();
    }
    let tokenizer = std::fs::read_dir(dir.path().join("a/objects/objects"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .find(|p| {
            std::fs::read(p).is_ok_and(|b| b.starts_with(b"{") && String::from_utf8_lossy(&b).contains("\"BPE\""))
        })
        .unwrap();
    std::fs::copy(tokenizer, hf.join("tokenizer.json")).unwrap();
    let vault_env = [("FACTORY_URL", vault.url.as_str()), ("FACTORY_API_KEY", keys[0].1.as_str())];
    let (ok, stdout, stderr) =
        cli(&["model", "import-hf", hf.to_str().unwrap(), "--name", "base", "--jurisdiction", "eu"], &vault_env);
    assert!(ok, "{stdout}\n{stderr}\nserver log, last lines:\n{}", vault.log_tail(60));
    let (ok, stdout, stderr) = cli(&["deploy", "create", "chat", "--variant", "base@1"], &vault_env);
    assert!(ok, "{stdout}\n{stderr}");
    vault.terminate();
    let sites = r#"[{ name = "vault", jurisdiction = "eu", kinds = ["storage", "compute"] }]"#;
    let vault = Server::start(&vault_dir, &["--jurisdiction", "eu"], &[("FACTORY_SITES", sites)]);
    let body = json!({ "model": "chat", "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 2 });
    let called = call(&vault.url, "POST", "/v1/chat/completions", Some(&keys[1].1), Some(body)).await;
    assert_eq!(called.status, 403, "{}", called.text);
    let vault_env = [("FACTORY_URL", vault.url.as_str()), ("FACTORY_API_KEY", keys[0].1.as_str())];
    let (ok, _, stderr) = cli(&["deploy", "create", "again", "--variant", "base@1"], &vault_env);
    assert!(!ok && stderr.contains("403"), "{stderr}");
    let records = call(&vault.url, "GET", "/api/v1/audit/records?limit=1000", Some(&vault.admin_key), None).await;
    let denied = |action: &str, policy: &str| {
        records.body["records"].as_array().unwrap().iter().any(|r| {
            r["record"]["action"] == action
                && r["record"]["decision"] == "deny"
                && r["record"]["policies"] == json!([policy])
        })
    };
    assert!(denied("deployment.invoke", "deployment-call-residency"), "the refused call is audited");
    assert!(denied("deployment.create", "deployment-residency"), "the refused deployment is audited");
    vault.terminate();
}
