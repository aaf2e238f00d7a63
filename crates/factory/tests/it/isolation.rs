//! Tenant isolation: for every route of the API, a key of another tenant gets 401, 403 or 404
//! and never the other tenant's data, and nothing of the other tenant changes.

use std::collections::BTreeSet;

use serde_json::json;

use crate::support::{call, tenant_with_keys, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_key_never_reaches_data_on_any_route() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--jurisdiction", "eu"], &[]);
    let url = server.url.clone();
    let globex = tenant_with_keys(&server, "globex", &["admin", "engineer"]).await;
    let acme = tenant_with_keys(&server, "acme", &["admin", "engineer", "app", "auditor"]).await;
    let (globex_engineer_id, globex_engineer) = globex[1].clone();
    let job = call(
        &url,
        "POST",
        "/api/v1/tenants/globex/jobs",
        Some(&globex_engineer),
        Some(json!({ "kind": "platform.sleep", "payload": { "millis": 60000, "secret": "globex-payload" } })),
    )
    .await;
    assert_eq!(job.status, 201, "{}", job.text);
    let job_id = job.body["id"].as_str().unwrap().to_string();
    let created = call(
        &url,
        "POST",
        "/api/v1/datasets",
        Some(&globex_engineer),
        Some(json!({ "name": "gdata", "classification": "internal" })),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let ingested = crate::support::upload(
        &url,
        &globex_engineer,
        "/api/v1/datasets/gdata/versions?format=jsonl",
        b"{\"text\": \"globex-payload row\"}\n".to_vec(),
    )
    .await;
    assert_eq!(ingested.status, 201, "{}", ingested.text);
    let trainable = crate::support::upload(
        &url,
        &globex_engineer,
        "/api/v1/datasets/gdata/versions?format=jsonl&text_column=text",
        b"{\"text\": \"globex-payload row\"}\n".to_vec(),
    )
    .await;
    assert_eq!(trainable.status, 201, "{}", trainable.text);
    let run = call(
        &url,
        "POST",
        "/api/v1/runs",
        Some(&globex_engineer),
        Some(json!({ "kind": "tokenizer", "dataset": "gdata", "version": 2, "tokenizer": { "vocab_size": 300 } })),
    )
    .await;
    assert_eq!(run.status, 201, "{}", run.text);
    let run_id = run.body["id"].as_str().unwrap().to_string();

    // A model of globex's, imported from the transformers fixture with the tokenizer its run
    // trained (read from the object store on disk).
    let finished = crate::support::eventually(60, || async {
        call(&url, "GET", &format!("/api/v1/runs/{run_id}"), Some(&globex_engineer), None).await.body["state"]
            == "succeeded"
    })
    .await;
    assert!(finished, "the tokenizer run finishes");
    let result = call(&url, "GET", &format!("/api/v1/runs/{run_id}"), Some(&globex_engineer), None).await;
    let tokenizer_digest = result.body["result"]["artifacts"]["tokenizer"].as_str().unwrap().to_string();
    let tokenizer = dir.path().join("objects/objects").join(&tokenizer_digest[..2]).join(&tokenizer_digest[2..]);
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/tiny-llama");
    let mut files = Vec::new();
    for (name, path) in [
        ("config.json", fixture.join("config.json")),
        ("model.safetensors", fixture.join("model.safetensors")),
        ("tokenizer.json", tokenizer),
    ] {
        files.push((name, std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))));
    }
    let tar = crate::support::tar_of(&files);
    let imported = crate::support::upload(
        &url,
        &globex_engineer,
        "/api/v1/models/gmodel/import-hf?jurisdiction=eu&intended_use=globex-payload",
        tar,
    )
    .await;
    assert_eq!(imported.status, 201, "{}", imported.text);
    let deployed = call(
        &url,
        "POST",
        "/api/v1/deployments",
        Some(&globex_engineer),
        Some(json!({ "name": "gdeploy", "variants": [{ "model": "gmodel@1" }] })),
    )
    .await;
    assert_eq!(deployed.status, 201, "{}", deployed.text);

    // Every API route, with the globex resource it would touch.
    let routes: Vec<(&str, String, Option<serde_json::Value>)> = vec![
        ("POST", "/api/v1/tenants".to_string(), Some(json!({ "name": "globex2", "jurisdictions": ["eu"] }))),
        ("GET", "/api/v1/tenants/globex".to_string(), None),
        ("POST", "/api/v1/tenants/globex/keys".to_string(), Some(json!({ "role": "admin" }))),
        ("PUT", "/api/v1/tenants/globex/quota".to_string(), Some(json!({ "compute_seconds": 0 }))),
        ("DELETE", format!("/api/v1/keys/{globex_engineer_id}"), None),
        ("POST", "/api/v1/tenants/globex/jobs".to_string(), Some(json!({ "kind": "platform.sleep" }))),
        ("GET", "/api/v1/tenants/globex/jobs".to_string(), None),
        ("GET", format!("/api/v1/jobs/{job_id}"), None),
        ("POST", format!("/api/v1/jobs/{job_id}/cancel"), None),
        (
            "POST",
            "/api/v1/datasets?tenant=globex".to_string(),
            Some(json!({ "name": "x", "classification": "public" })),
        ),
        ("GET", "/api/v1/datasets?tenant=globex".to_string(), None),
        ("GET", "/api/v1/datasets/gdata?tenant=globex".to_string(), None),
        ("POST", "/api/v1/datasets/gdata/versions?format=text&tenant=globex".to_string(), None),
        ("GET", "/api/v1/datasets/gdata/versions/1".to_string(), None),
        ("GET", "/api/v1/datasets/gdata/versions/1/rows?tenant=globex".to_string(), None),
        ("GET", "/api/v1/datasets/gdata/versions/1/download".to_string(), None),
        ("GET", "/api/v1/datasets/gdata/versions/1/profile?tenant=globex".to_string(), None),
        (
            "POST",
            "/api/v1/deployments/gdeploy/batches".to_string(),
            Some(json!({ "dataset": "gdata", "version": 1, "template": "{{ text }}", "output": "x" })),
        ),
        ("POST", "/api/v1/objects/sweep?grace_secs=0".to_string(), None),
        (
            "POST",
            "/api/v1/runs".to_string(),
            Some(json!({ "kind": "tokenizer", "dataset": "gdata", "version": 2, "tenant": "globex" })),
        ),
        ("GET", format!("/api/v1/runs/{run_id}"), None),
        ("GET", format!("/api/v1/runs/{run_id}/metrics"), None),
        ("POST", format!("/api/v1/runs/{run_id}/cancel"), None),
        ("GET", "/api/v1/models?tenant=globex".to_string(), None),
        ("GET", "/api/v1/models/signing-key".to_string(), None),
        ("GET", "/api/v1/models/gmodel?tenant=globex".to_string(), None),
        ("POST", "/api/v1/models/gmodel/versions?tenant=globex".to_string(), Some(json!({ "run": run_id }))),
        ("GET", "/api/v1/models/gmodel/versions/1?tenant=globex".to_string(), None),
        ("GET", "/api/v1/models/gmodel/versions/1/manifest?tenant=globex".to_string(), None),
        ("GET", "/api/v1/models/gmodel/versions/1/files/README.md?tenant=globex".to_string(), None),
        ("POST", "/api/v1/models/gmodel/versions/1/verify?tenant=globex".to_string(), None),
        ("GET", "/api/v1/models/gmodel/versions/1/bundle?tenant=globex".to_string(), None),
        ("GET", "/api/v1/models/gmodel/versions/1/gguf?tenant=globex&destination=eu".to_string(), None),
        (
            "POST",
            "/api/v1/models/gmodel/versions/1/quantize?tenant=globex".to_string(),
            Some(json!({ "type": "q8_0" })),
        ),
        ("PUT", "/api/v1/models/gmodel/aliases/prod?tenant=globex".to_string(), Some(json!({ "version": 1 }))),
        ("POST", "/api/v1/models/import?tenant=globex".to_string(), None),
        ("POST", "/api/v1/models/gmodel/import-hf?jurisdiction=eu&tenant=globex".to_string(), None),
        ("POST", "/api/v1/models/gmodel/import-gguf?jurisdiction=eu&tenant=globex".to_string(), None),
        (
            "POST",
            "/api/v1/deployments?tenant=globex".to_string(),
            Some(json!({ "name": "x", "variants": [{ "model": "gmodel@1" }] })),
        ),
        ("GET", "/api/v1/deployments?tenant=globex".to_string(), None),
        ("GET", "/api/v1/deployments/gdeploy?tenant=globex".to_string(), None),
        (
            "PUT",
            "/api/v1/deployments/gdeploy?tenant=globex".to_string(),
            Some(json!({ "variants": [{ "model": "gmodel@1" }] })),
        ),
        ("GET", "/api/v1/deployments/gdeploy/inferences?tenant=globex".to_string(), None),
        ("GET", "/api/v1/deployments/gdeploy/feedback?tenant=globex".to_string(), None),
        ("GET", "/api/v1/deployments/gdeploy/drift?tenant=globex".to_string(), None),
        ("GET", "/api/v1/pipelines?tenant=globex".to_string(), None),
        (
            "PUT",
            "/api/v1/pipelines/gpipe?tenant=globex".to_string(),
            Some(json!("[[steps]]\nkind = 'gate'\ncondition = 'true'\n")),
        ),
        ("GET", "/api/v1/pipelines/gpipe?tenant=globex".to_string(), None),
        ("GET", "/api/v1/pipelines/gpipe/runs?tenant=globex".to_string(), None),
        ("POST", "/api/v1/pipelines/gpipe/runs?tenant=globex".to_string(), None),
        ("GET", "/api/v1/pipelines/gpipe/runs/prun_1?tenant=globex".to_string(), None),
        (
            "POST",
            "/api/v1/feedback?tenant=globex".to_string(),
            Some(json!({ "episode_id": "e", "metric": "thumbs", "value": true })),
        ),
        ("DELETE", "/api/v1/deployments/gdeploy?tenant=globex".to_string(), None),
        ("GET", "/api/v1/audit/records?from=0&limit=1000".to_string(), None),
        ("GET", "/api/v1/audit/checkpoint".to_string(), None),
        ("GET", "/api/v1/audit/public-key".to_string(), None),
        ("GET", "/api/v1/audit/proof/inclusion?index=0&size=1".to_string(), None),
        ("GET", "/api/v1/audit/proof/consistency?old=1&new=2".to_string(), None),
    ];

    // The list above must cover the whole API as the OpenAPI document describes it.
    let document = call(&url, "GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(document.status, 200);
    let documented: BTreeSet<String> = document.body["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(path, _)| path.starts_with("/api/v1/"))
        .flat_map(|(path, item)| item.as_object().unwrap().keys().map(move |m| format!("{} {path}", m.to_uppercase())))
        .collect();
    let tested: BTreeSet<String> = routes
        .iter()
        .map(|(method, path, _)| {
            let path = path.split('?').next().unwrap();
            let path = path
                .replace("/globex/", "/{tenant}/")
                .replace(&globex_engineer_id, "{id}")
                .replace(&job_id, "{id}")
                .replace(&run_id, "{id}")
                .replace("/gdata", "/{name}")
                .replace("/gmodel", "/{name}")
                .replace("/gdeploy", "/{name}")
                .replace("/gpipe", "/{name}")
                .replace("/runs/prun_1", "/runs/{id}")
                .replace("/files/README.md", "/files/{path}")
                .replace("/aliases/prod", "/aliases/{alias}")
                .replace("/versions/1", "/versions/{version}");
            let path = if path == "/api/v1/tenants/globex" { "/api/v1/tenants/{tenant}".to_string() } else { path };
            format!("{method} {path}")
        })
        .collect();
    assert_eq!(documented, tested, "every documented route must be in the isolation test");

    for (_, secret) in &acme {
        for (method, path, body) in &routes {
            let reply = call(&url, method, path, Some(secret), body.clone()).await;
            assert!(!reply.text.contains("globex-payload"), "{method} {path} leaked data: {}", reply.text);
            assert!(!reply.text.contains(&globex_engineer), "{method} {path} leaked a secret");
            if path == "/api/v1/models/signing-key" {
                // Public keys only, the same for every caller.
                assert_eq!(reply.status, 200, "{}", reply.text);
                continue;
            }
            if path.starts_with("/api/v1/audit/") {
                // Hashes and checkpoints reveal no tenant data; records are filtered.
                if path.starts_with("/api/v1/audit/records") && reply.status == 200 {
                    for record in reply.body["records"].as_array().unwrap() {
                        assert_eq!(record["record"]["tenant"], "acme", "{}", reply.text);
                    }
                } else {
                    assert!([200, 403].contains(&reply.status), "{method} {path}: {}", reply.text);
                }
                continue;
            }
            assert!([401, 403, 404].contains(&reply.status), "{method} {path} gave {}: {}", reply.status, reply.text);
            assert!(reply.body["error"]["code"].is_string(), "{method} {path}: error body {}", reply.text);
        }
    }

    // The OpenAI API only ever sees the caller's own tenant's deployments.
    for (_, secret) in &acme {
        let body = json!({ "model": "gdeploy", "messages": [{ "role": "user", "content": "hi" }] });
        let reply = call(&url, "POST", "/v1/chat/completions", Some(secret), Some(body)).await;
        assert!([403, 404].contains(&reply.status), "{}", reply.text);
        let models = call(&url, "GET", "/v1/models", Some(secret), None).await;
        assert!(!models.text.contains("gdeploy"), "{}", models.text);
    }

    // No key at all, and a made-up key, get 401 everywhere.
    for key in [None, Some("fk_0000")] {
        for (method, path, body) in &routes {
            let reply = call(&url, method, path, key, body.clone()).await;
            assert_eq!(reply.status, 401, "{method} {path}: {}", reply.text);
            assert_eq!(reply.body["error"]["code"], "unauthorized");
        }
    }

    // Nothing of globex changed: its key works, its job is untouched, no tenant was created.
    let own = call(&url, "GET", &format!("/api/v1/jobs/{job_id}"), Some(&globex_engineer), None).await;
    assert_eq!(own.status, 200);
    assert_eq!(own.body["cancel_requested"], false);
    assert_eq!(call(&url, "GET", "/api/v1/tenants/globex2", Some(&server.admin_key), None).await.status, 404);
    let jobs = call(&url, "GET", "/api/v1/tenants/globex/jobs", Some(&globex_engineer), None).await;
    assert_eq!(jobs.body["jobs"].as_array().unwrap().len(), 2, "the sleep job and the run: {}", jobs.text);
    let rows = call(&url, "GET", "/api/v1/datasets/gdata/versions/1/rows", Some(&globex_engineer), None).await;
    assert!(rows.text.contains("globex-payload"), "globex's data is intact: {}", rows.text);

    // Every denial is in the audit log, with the policy that decided it.
    let records = call(&url, "GET", "/api/v1/audit/records?limit=1000", Some(&server.admin_key), None).await;
    let denials: Vec<&serde_json::Value> =
        records.body["records"].as_array().unwrap().iter().filter(|r| r["record"]["decision"] == "deny").collect();
    assert!(denials.len() >= 4 * 7, "expected the denials to be audited, found {}", denials.len());
    assert!(denials.iter().any(|r| r["record"]["policies"] == json!(["tenant-isolation"])));
}
