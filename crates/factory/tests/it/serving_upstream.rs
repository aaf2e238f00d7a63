//! Deployments whose variants call an OpenAI-compatible upstream (a second factory): a proxy,
//! its relayed stream metered, a fallback when the upstream is down, a shadow that gets a copy,
//! and residency and allowlists for where requests would go.

use serde_json::{json, Value};

use crate::support::{
    call, cli, cli_env, inference_logged, shakespeare, tenant_with_keys, text_dataset, train_tiny_model, Server,
    ServingFactory,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_variants_relay_fall_back_and_shadow() {
    let dir = tempfile::tempdir().unwrap();
    // A second factory serves as an OpenAI-compatible upstream.
    let upstream = Server::start(&dir.path().join("upstream"), &["--jurisdiction", "eu"], &[]);
    let partner = tenant_with_keys(&upstream, "partner", &["engineer", "app"]).await;
    let up = upstream.url.clone();
    text_dataset(&up, &partner[0].1, "plays", "internal", shakespeare(30_000)).await;
    train_tiny_model(&up, &partner[0].1, dir.path(), "poet", "5").await;
    let (ok, stdout, stderr) = cli(&["deploy", "create", "verse", "--variant", "poet@1"], &cli_env(&up, &partner[0].1));
    assert!(ok, "{stdout}\n{stderr}");

    // The partner factory, and a port nothing listens on (a variant that is down).
    let upstreams = format!("[{up:?}, \"http://127.0.0.1:9\"]");
    let env = [
        ("UPSTREAM_KEY_PARTNER", partner[1].1.as_str()),
        ("FACTORY_SERVING__UPSTREAMS", upstreams.as_str()),
        ("FACTORY_SECRETS__ACME", "[\"UPSTREAM_KEY_PARTNER\"]"),
    ];
    let ServingFactory { dir: _factory_dir, server: _server, url, engineer, app } =
        ServingFactory::start(&env, 1).await;
    let client = reqwest::Client::new();
    let logged = |deployment: &'static str, status: &'static str| inference_logged(&url, &engineer, deployment, status);

    // Upstream variants: a proxy to the partner factory, a fallback when the upstream is down,
    // a shadow that gets a copy, and residency for where requests would go.
    let partner_variant = |role: &str, jurisdiction: &str| {
        json!({ "upstream": { "url": format!("{up}/v1"), "model": "verse", "jurisdiction": jurisdiction,
                              "api_key_env": "UPSTREAM_KEY_PARTNER", "timeout_ms": 20000 }, "role": role })
    };
    let deploy = |name: &str, variants: Value| {
        call(&url, "POST", "/api/v1/deployments", Some(&engineer), Some(json!({ "name": name, "variants": variants })))
    };
    let proxy = deploy("proxy", json!([partner_variant("primary", "eu")])).await;
    assert_eq!(proxy.status, 201, "{}", proxy.text);
    let secret = json!([{ "upstream": { "url": format!("{up}/v1"), "model": "verse", "jurisdiction": "eu",
                                        "api_key_env": "FACTORY_DATABASE_URL" } }]);
    assert_eq!(deploy("leaky", secret).await.status, 400, "only UPSTREAM_KEY_* variables are sent upstream");
    let elsewhere = json!([{ "upstream": { "url": "https://evil.example/v1", "model": "m", "jurisdiction": "eu" } }]);
    assert_eq!(deploy("elsewhere", elsewhere).await.status, 403, "only allowlisted upstreams");
    let outside = deploy("abroad", json!([partner_variant("primary", "us")])).await;
    assert_eq!(outside.status, 403, "an upstream outside the tenant's jurisdictions is refused: {}", outside.text);
    let chat_body = |model: &str, stream: bool| json!({ "model": model, "messages": [{ "role": "user", "content": "Sing." }], "max_tokens": 6, "stream": stream });
    let proxied = client
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(&app)
        .json(&chat_body("proxy", false))
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), 200);
    assert!(proxied.headers()["x-factory-model"].to_str().unwrap().starts_with("upstream:verse@"));
    let proxied: Value = proxied.json().await.unwrap();
    assert_eq!(
        (proxied["model"].as_str(), proxied["object"].as_str()),
        (Some("proxy"), Some("chat.completion")),
        "{proxied}"
    );
    let streamed = client
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(&app)
        .json(&chat_body("proxy", true))
        .send()
        .await
        .unwrap();
    let streamed = streamed.text().await.unwrap();
    assert!(streamed.trim_end().ends_with("data: [DONE]"));
    assert!(!streamed.contains("\"usage\":{"), "usage is passed on only when the client asks: {streamed}");
    // The relayed stream is metered with the upstream's own usage figures.
    let metered = crate::support::eventually(10, || async {
        let reply = call(&url, "GET", "/api/v1/deployments/proxy/inferences", Some(&engineer), None).await;
        let rows = reply.body["inferences"].as_array().cloned().unwrap_or_default();
        rows.len() >= 2 && rows.iter().all(|r| r["status"] == "ok" && r["prompt_tokens"].as_i64() > Some(0))
    })
    .await;
    assert!(metered, "the streamed upstream answer is metered");
    let resilient = deploy(
        "resilient",
        json!([
            { "upstream": { "url": "http://127.0.0.1:9/v1", "model": "gone", "jurisdiction": "eu", "timeout_ms": 3000 } },
            { "model": "bard@1", "role": "fallback" }
        ]),
    )
    .await;
    assert_eq!(resilient.status, 201, "{}", resilient.text);
    let answered = client
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(&app)
        .json(&chat_body("resilient", false))
        .send()
        .await
        .unwrap();
    assert_eq!((answered.status().as_u16(), answered.headers()["x-factory-model"].to_str().unwrap()), (200, "bard@1"));
    let shadowed = deploy("shadowed", json!([{ "model": "bard@1" }, partner_variant("shadow", "eu")])).await;
    assert_eq!(shadowed.status, 201, "{}", shadowed.text);
    let partner_log = || async {
        let reply =
            call(&up, "GET", "/api/v1/deployments/verse/inferences?limit=1000", Some(&partner[0].1), None).await;
        reply.body["inferences"].as_array().map(|rows| rows.len()).unwrap_or(0)
    };
    let before = partner_log().await;
    let answered = client
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(&app)
        .json(&chat_body("shadowed", false))
        .send()
        .await
        .unwrap();
    assert_eq!((answered.status().as_u16(), answered.headers()["x-factory-model"].to_str().unwrap()), (200, "bard@1"));
    assert!(crate::support::eventually(20, || async { partner_log().await > before }).await, "the shadow got its copy");
    assert!(logged("shadowed", "shadow").await, "the shadow's answer is logged");
    assert!(logged("resilient", "upstream_error").await, "the failed upstream attempt is logged");
    upstream.terminate();
}
