//! Start, restart and stop; operations endpoints; bad input; configuration; the CLI; logs and
//! traces; and the same lifecycle on PostgreSQL.

use factory_telemetry::receiver::TraceReceiver;
use serde_json::json;

use crate::support::{call, cli, eventually, postgres_database, shakespeare, tenant_with_keys, text_dataset, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart_and_sigterm_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--jurisdiction", "de"], &[]);
    let admin = server.admin_key.clone();
    let mode = std::fs::metadata(dir.path().join("admin.key")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
    assert_eq!(admin.len(), 3 + 64, "a 256-bit secret, hex encoded");
    tenant_with_keys(&server, "acme", &["engineer"]).await;
    let status = server.terminate();
    assert_eq!(status.code(), Some(0));

    let again = Server::start(dir.path(), &[], &[]);
    assert_eq!(again.admin_key, admin, "the platform admin is created once");
    let tenant = call(&again.url, "GET", "/api/v1/tenants/acme", Some(&admin), None).await;
    assert_eq!(tenant.status, 200);
    assert_eq!(tenant.body["jurisdictions"], json!(["eu"]));
    assert_eq!(again.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_endpoints_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[], &[("FACTORY_SERVER__REQUEST_BODY_LIMIT_BYTES", "2048")]);
    let url = server.url.clone();
    let admin = server.admin_key.clone();

    assert_eq!(call(&url, "GET", "/healthz", None, None).await.status, 200);
    assert_eq!(call(&url, "GET", "/readyz", None, None).await.body["status"], "ready");
    let document = call(&url, "GET", "/api/v1/openapi.json", None, None).await;
    assert!(document.body["openapi"].as_str().unwrap().starts_with("3."));
    assert!(document.body["paths"]["/api/v1/tenants/{tenant}/keys"]["post"].is_object());

    // Request ids: generated, or kept from the client, and echoed.
    let client = reqwest::Client::new();
    let response = client.get(format!("{url}/healthz")).header("x-request-id", "trace-me-42").send().await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-me-42");
    let response = client.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(response.headers()["x-request-id"].len(), 36);

    // Bad input: clear JSON errors naming the problem, and nothing written.
    let bad_json = client
        .post(format!("{url}/api/v1/tenants"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{\"name\": \"acme\",")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_json.status().as_u16(), 400);
    let body: serde_json::Value = bad_json.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("line 1"), "{body}");
    let unknown_field = call(
        &url,
        "POST",
        "/api/v1/tenants",
        Some(&admin),
        Some(json!({ "name": "a", "jurisdictions": ["eu"], "x": 1 })),
    )
    .await;
    assert_eq!(unknown_field.status, 422, "{}", unknown_field.text);
    assert!(unknown_field.text.contains("unknown field"), "{}", unknown_field.text);
    let bad_name =
        call(&url, "POST", "/api/v1/tenants", Some(&admin), Some(json!({ "name": "Not OK", "jurisdictions": ["eu"] })))
            .await;
    assert_eq!(bad_name.status, 400);
    assert!(bad_name.body["error"]["message"].as_str().unwrap().starts_with("name:"), "{}", bad_name.text);
    let bad_role = call(&url, "POST", "/api/v1/tenants/acme/keys", Some(&admin), Some(json!({ "role": "root" }))).await;
    assert_eq!(bad_role.status, 400);
    assert!(bad_role.text.contains("admin, steward, engineer, app, auditor"), "{}", bad_role.text);
    let too_large = call(
        &url,
        "POST",
        "/api/v1/tenants",
        Some(&admin),
        Some(json!({ "name": "big", "jurisdictions": vec!["eu"; 2000] })),
    )
    .await;
    assert_eq!(too_large.status, 413, "{}", too_large.text);
    assert_eq!(too_large.body["error"]["code"], "payload_too_large");
    let unknown_kind = {
        tenant_with_keys(&server, "acme", &[]).await;
        call(&url, "POST", "/api/v1/tenants/acme/jobs", Some(&admin), Some(json!({ "kind": "mine.bitcoin" }))).await
    };
    assert_eq!(unknown_kind.status, 400);
    assert!(unknown_kind.text.contains("platform.sleep"), "{}", unknown_kind.text);
    let proof = call(&url, "GET", "/api/v1/audit/proof/inclusion?index=5&size=2", Some(&admin), None).await;
    assert_eq!(proof.status, 400, "{}", proof.text);
    let no_route = call(&url, "GET", "/api/v1/nothing", Some(&admin), None).await;
    assert_eq!((no_route.status, no_route.body["error"]["code"].as_str()), (404, Some("not_found")));
    let records = call(&url, "GET", "/api/v1/audit/records?limit=100", Some(&admin), None).await;
    let tenants_created =
        records.body["records"].as_array().unwrap().iter().filter(|r| r["record"]["action"] == "tenant.create").count();
    assert_eq!(tenants_created, 1, "rejected requests wrote nothing");

    let metrics = call(&url, "GET", "/metrics", Some(&admin), None).await;
    for family in [
        "factory_http_requests_total{",
        "factory_http_request_duration_seconds_bucket{",
        "factory_authz_decisions_total{action=\"tenant.create\",effect=\"allow\"}",
        "factory_authz_decision_duration_seconds_count",
        "factory_audit_log_records",
    ] {
        assert!(metrics.text.contains(family), "{family} missing from\n{}", metrics.text);
    }
    assert!(metrics.text.contains("route=\"/api/v1/tenants\""), "{}", metrics.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_a_running_factory() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[], &[]);
    let env = [("FACTORY_URL", server.url.as_str()), ("FACTORY_API_KEY", server.admin_key.as_str())];
    let (ok, stdout, stderr) = cli(&["tenant", "create", "acme", "--jurisdiction", "eu", "--jurisdiction", "de"], &env);
    assert!(ok, "{stdout}{stderr}");
    let (ok, stdout, _) = cli(&["tenant", "show", "acme"], &env);
    assert!(ok && stdout.contains("\"de\""), "{stdout}");
    let (ok, stdout, stderr) = cli(&["key", "create", "--tenant", "acme", "--role", "auditor"], &env);
    assert!(ok, "{stderr}");
    let key: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let secret = key["secret"].as_str().unwrap();
    let auditor_env = [("FACTORY_URL", server.url.as_str()), ("FACTORY_API_KEY", secret)];
    let (ok, stdout, _) = cli(&["audit", "records"], &auditor_env);
    assert!(ok && stdout.contains("key.create"), "{stdout}");
    let (ok, stdout, _) = cli(&["audit", "checkpoint"], &env);
    assert!(ok && stdout.starts_with("factory.local/audit\n"), "{stdout}");
    let (ok, stdout, _) = cli(&["audit", "proof", "inclusion", "--index", "1", "--size", "3"], &env);
    assert!(ok && stdout.contains("\"proof\""), "{stdout}");
    let (ok, stdout, _) = cli(&["audit", "proof", "consistency", "--old", "1", "--new", "3"], &env);
    assert!(ok && stdout.contains("\"new_root\""), "{stdout}");
    let (ok, _, stderr) = cli(&["key", "revoke", key["id"].as_str().unwrap()], &env);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = cli(&["audit", "records"], &auditor_env);
    assert!(!ok && stderr.contains("401"), "a revoked key is refused: {stderr}");
    let (ok, _, stderr) = cli(&["tenant", "show", "acme"], &[("FACTORY_URL", server.url.as_str())]);
    assert!(!ok && stderr.contains("no API key"), "{stderr}");
    let (ok, _, stderr) = cli(&["tenant", "show", "acme", "--url", "http://127.0.0.1:1", "--api-key", "x"], &[]);
    assert!(!ok && stderr.contains("cannot reach"), "{stderr}");
    let (ok, stdout, _) = cli(&["audit", "--help"], &[]);
    assert!(ok && stdout.contains("verify"), "{stdout}");
}

#[test]
fn config_check_names_every_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    let (ok, example, _) = cli(&["config", "example"], &[]);
    assert!(ok);
    std::fs::write(&good, example).unwrap();
    let (ok, stdout, stderr) = cli(&["config", "check", good.to_str().unwrap()], &[]);
    assert!(ok, "{stdout}{stderr}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "listen = 8080\n[[sites]]\nname = \"x\"\njurisdiction = \"eu\"\nkinds = [\"gpu\"]\n[jobs]\nworkerz = 3\n",
    )
    .unwrap();
    let (ok, _, stderr) = cli(&["config", "check", bad.to_str().unwrap()], &[]);
    assert!(!ok);
    for expected in
        ["listen: expected a string", "sites[0].kinds[0]", "storage, compute, serving", "jobs.workerz: unknown key"]
    {
        assert!(stderr.contains(expected), "{expected:?} missing from {stderr}");
    }
    // The same validation guards `up`.
    let (ok, _, stderr) =
        cli(&["up", "--config", bad.to_str().unwrap(), "--data-dir", dir.path().to_str().unwrap()], &[]);
    assert!(!ok && stderr.contains("jobs.workerz"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_traced_to_an_otlp_collector_and_logged_as_json() {
    let dir = tempfile::tempdir().unwrap();
    // A collector that is not a URL stops `up` before anything is opened.
    let (ok, _, stderr) = cli(
        &["up", "--data-dir", dir.path().join("never").to_str().unwrap(), "--listen", "127.0.0.1:0"],
        &[("FACTORY_SERVER__OTLP_ENDPOINT", "collector:4318")],
    );
    assert!(!ok && stderr.contains("server.otlp_endpoint"), "{stderr}");
    assert!(!dir.path().join("never").exists());

    let receiver = TraceReceiver::start().unwrap();
    let server = Server::start(
        dir.path(),
        &[],
        &[("FACTORY_SERVER__OTLP_ENDPOINT", receiver.endpoint()), ("FACTORY_SERVER__JSON_LOGS", "true")],
    );
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/tenants", server.url))
        .bearer_auth(&server.admin_key)
        .header("x-request-id", "otlp-e2e-1")
        .json(&json!({ "name": "traced", "jurisdictions": ["eu"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    // SIGTERM: the server drains, then flushes the spans still batched before it exits.
    assert_eq!(server.terminate().code(), Some(0));

    let spans = receiver.spans().unwrap();
    let span = spans
        .iter()
        .find(|span| span.attributes.get("request_id").map(String::as_str) == Some("otlp-e2e-1"))
        .unwrap_or_else(|| panic!("no span carries the request id: {spans:#?}"));
    assert_eq!(span.name, "request");
    assert_eq!(span.attributes["method"], "POST");
    assert_eq!(span.attributes["path"], "/api/v1/tenants");
    assert_eq!(span.resource["service.name"], "factory");

    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(lines.iter().all(serde_json::Value::is_object), "{log}");
    assert!(
        lines.iter().any(|line| line["span"]["request_id"] == "otlp-e2e-1"),
        "no log line names the request: {log}"
    );
    assert!(lines.iter().any(|line| line["fields"]["message"] == "factory stopped"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_factory_runs_on_postgresql() {
    let name = format!("factory_it_{}", std::process::id());
    let Some((admin_pool, database_url)) = postgres_database(&name).await else { return };

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--database-url", &database_url], &[]);
    tenant_with_keys(&server, "acme", &["engineer"]).await;
    let admin = server.admin_key.clone();
    assert!(server.terminate().success());
    let again = Server::start(dir.path(), &["--database-url", &database_url], &[]);
    assert_eq!(call(&again.url, "GET", "/api/v1/tenants/acme", Some(&admin), None).await.status, 200);
    assert!(again.terminate().success());
    let (ok, stdout, stderr) =
        cli(&["audit", "verify", "--data-dir", dir.path().to_str().unwrap(), "--database-url", &database_url], &[]);
    assert!(ok && stdout.contains("audit log verified: 3 records"), "{stdout}{stderr}");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin_pool).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_a_worker_and_a_gateway_process_share_one_factory() {
    let name = format!("factory_roles_{}", std::process::id());
    let Some((admin_pool, database_url)) = postgres_database(&name).await else { return };
    // One data directory: one object store and the admin key, shared as a cluster shares S3.
    let dir = tempfile::tempdir().unwrap();
    let start = |role: &str| {
        Server::start(dir.path(), &["--database-url", &database_url, "--jurisdiction", "eu", "--role", role], &[])
    };
    let api = start("api");
    let worker = start("worker");
    let gateway = start("gateway");
    for (server, roles) in [(&api, json!(["api"])), (&worker, json!(["worker"])), (&gateway, json!(["gateway"]))] {
        let ready = call(&server.url, "GET", "/readyz", None, None).await;
        assert_eq!(ready.body["roles"], roles, "{}", ready.text);
    }
    let keys = tenant_with_keys(&api, "acme", &["engineer"]).await;
    let engineer = keys[0].1.clone();
    // Each process serves only its roles' routes.
    assert_eq!(call(&api.url, "GET", "/v1/models", Some(&engineer), None).await.status, 404);
    assert_eq!(call(&gateway.url, "GET", "/api/v1/datasets", Some(&engineer), None).await.status, 404);
    assert_eq!(call(&worker.url, "GET", "/api/v1/datasets", Some(&engineer), None).await.status, 404);
    assert_eq!(call(&gateway.url, "GET", "/v1/models", Some(&engineer), None).await.status, 200);

    // The API takes the run; only the worker runs jobs; the gateway serves what it registered.
    text_dataset(&api.url, &engineer, "plays", "internal", shakespeare(30_000)).await;
    let run = call(
        &api.url,
        "POST",
        "/api/v1/runs",
        Some(&engineer),
        Some(json!({
            "kind": "pretrain", "dataset": "plays", "version": 1, "seed": 1, "tokenizer": { "vocab_size": 320 },
            "model": { "config": { "vocab_size": 320, "hidden_size": 32, "intermediate_size": 64,
                                   "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                   "max_position_embeddings": 256 } },
            "train": { "steps": 10, "seq_len": 32, "batch_size": 4, "warmup_steps": 2, "eval_every": 0,
                       "checkpoint_every": 0, "eval_windows": 2 },
            "register": { "name": "bard" },
        })),
    )
    .await;
    assert_eq!(run.status, 201, "{}", run.text);
    let path = format!("/api/v1/runs/{}", run.body["id"].as_str().unwrap());
    let trained = eventually(120, || async {
        call(&api.url, "GET", &path, Some(&engineer), None).await.body["state"] == "succeeded"
    });
    assert!(
        trained.await,
        "{}\n{}",
        call(&api.url, "GET", &path, Some(&engineer), None).await.text,
        worker.log_tail(20)
    );
    let deployment = json!({ "name": "chat", "variants": [{ "model": "bard@1" }] });
    assert_eq!(call(&api.url, "POST", "/api/v1/deployments", Some(&engineer), Some(deployment)).await.status, 201);
    let body = json!({ "model": "chat", "messages": [{ "role": "user", "content": "To be" }], "max_tokens": 4 });
    let answer = call(&gateway.url, "POST", "/v1/chat/completions", Some(&engineer), Some(body)).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    // The gateway's inference log reaches the database the API reads.
    let logged = eventually(30, || async {
        let log = call(&api.url, "GET", "/api/v1/deployments/chat/inferences", Some(&engineer), None).await;
        log.body["inferences"].as_array().is_some_and(|rows| rows.len() == 1)
    });
    assert!(logged.await);
    for server in [gateway, worker, api] {
        assert!(server.terminate().success());
    }
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin_pool).await.unwrap();
}
