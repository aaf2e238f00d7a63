//! Training runs through the real server: a tokenizer and a small Llama trained on a governed
//! dataset version, metrics and artifacts read back, and a run whose server is killed with
//! -9 resuming from its checkpoint to the very losses an uninterrupted run produces.

use serde_json::{json, Value};

use crate::support::{call, eventually, log_tail, shakespeare, tenant_with_keys, text_dataset, Server};

/// Waits for `run` to end; when it does not, the assertion shows the server log's tail.
async fn finished(url: &str, key: &str, run: &str, log: &std::path::Path) -> Value {
    let path = format!("/api/v1/runs/{run}");
    let done = eventually(420, || async {
        let state = call(url, "GET", &path, Some(key), None).await.body["state"].clone();
        state == "succeeded" || state == "dead" || state == "cancelled"
    })
    .await;
    let reply = call(url, "GET", &path, Some(key), None).await;
    if !done {
        panic!("run {run} did not finish: {}\nserver log, last lines:\n{}", reply.text, log_tail(log, 60));
    }
    assert_eq!(reply.body["state"], "succeeded", "{}", reply.text);
    reply.body
}

async fn losses(url: &str, key: &str, run: &str) -> Vec<(i64, f64)> {
    let reply = call(url, "GET", &format!("/api/v1/runs/{run}/metrics?limit=10000"), Some(key), None).await;
    reply.body["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["kind"] == "train")
        .map(|m| (m["step"].as_i64().unwrap(), m["metrics"]["loss"].as_f64().unwrap()))
        .collect()
}

/// Long enough that the kill below lands well before the end: a checkpoint every 10 steps.
const STEPS: u64 = 150;

fn pretrain_body(steps: u64, seed: u64) -> Value {
    json!({
        "kind": "pretrain", "dataset": "plays", "version": 1, "seed": seed,
        "tokenizer": { "vocab_size": 320 },
        "model": { "config": {
            "vocab_size": 320, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64
        } },
        "train": { "steps": steps, "seq_len": 32, "batch_size": 4, "warmup_steps": 3,
                   "eval_every": 10, "checkpoint_every": 10, "eval_windows": 8 }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_is_trained_on_governed_text_and_resumes_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let server_log = dir.path().join("server.log");
    let env = [("FACTORY_JOBS__LEASE_SECS", "2"), ("FACTORY_JOBS__WORKERS", "1")];
    let server = Server::start(dir.path(), &["--jurisdiction", "eu"], &env);
    let keys = tenant_with_keys(&server, "acme", &["engineer", "app"]).await;
    let (engineer, app) = (keys[0].1.clone(), keys[1].1.clone());
    let url = server.url.clone();
    text_dataset(&url, &engineer, "plays", "internal", shakespeare(120_000)).await;

    // Bad specs are refused before anything is queued; applications may not train.
    let bad = call(
        &url,
        "POST",
        "/api/v1/runs",
        Some(&engineer),
        Some(json!({ "kind": "finetune-ish", "dataset": "plays", "version": 1 })),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    let bad = call(
        &url,
        "POST",
        "/api/v1/runs",
        Some(&engineer),
        Some(json!({ "kind": "tokenizer", "dataset": "plays", "version": 1, "tokenizer": { "vocab_size": 10 } })),
    )
    .await;
    assert!(bad.status == 400 && bad.text.contains("vocab_size"), "{}", bad.text);
    let missing = call(
        &url,
        "POST",
        "/api/v1/runs",
        Some(&engineer),
        Some(json!({ "kind": "tokenizer", "dataset": "plays", "version": 9 })),
    )
    .await;
    assert_eq!(missing.status, 404, "{}", missing.text);
    let refused = call(
        &url,
        "POST",
        "/api/v1/runs",
        Some(&app),
        Some(json!({ "kind": "tokenizer", "dataset": "plays", "version": 1 })),
    )
    .await;
    assert_eq!(refused.status, 403, "{}", refused.text);

    // A tokenizer run stores a Hugging Face tokenizer.json.
    let run = call(
        &url,
        "POST",
        "/api/v1/runs",
        Some(&engineer),
        Some(json!({ "kind": "tokenizer", "dataset": "plays", "version": 1, "tokenizer": { "vocab_size": 320 } })),
    )
    .await;
    assert_eq!(run.status, 201, "{}", run.text);
    let done = finished(&url, &engineer, run.body["id"].as_str().unwrap(), &server_log).await;
    assert_eq!(done["result"]["vocab_size"], 320);
    let tokenizer = done["result"]["artifacts"]["tokenizer"].as_str().unwrap().to_string();
    let stored = std::fs::read(dir.path().join("objects/objects").join(&tokenizer[..2]).join(&tokenizer[2..])).unwrap();
    let json: Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(json["model"]["type"], "BPE");

    // An uninterrupted pretraining run: loss falls, validation is reported, artifacts stored.
    let run = call(&url, "POST", "/api/v1/runs", Some(&engineer), Some(pretrain_body(STEPS, 7))).await;
    assert_eq!(run.status, 201, "{}", run.text);
    let reference = run.body["id"].as_str().unwrap().to_string();
    let done = finished(&url, &engineer, &reference, &server_log).await;
    assert!(done["result"]["eval"]["perplexity"].as_f64().unwrap().is_finite(), "{done}");
    assert!(done["result"]["artifacts"]["weights"].is_string());
    let uninterrupted = losses(&url, &engineer, &reference).await;
    assert_eq!(uninterrupted.len(), STEPS as usize);
    let first: f64 = uninterrupted[..5].iter().map(|(_, l)| l).sum::<f64>() / 5.0;
    let last: f64 = uninterrupted[STEPS as usize - 5..].iter().map(|(_, l)| l).sum::<f64>() / 5.0;
    assert!(last < first - 0.3, "loss falls: {first:.3} -> {last:.3}");
    let metrics =
        call(&url, "GET", &format!("/api/v1/runs/{reference}/metrics?after={}", STEPS - 5), Some(&engineer), None)
            .await;
    let evals: Vec<i64> = metrics.body["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["kind"] == "eval")
        .map(|m| m["step"].as_i64().unwrap())
        .collect();
    assert_eq!(evals, vec![STEPS as i64]);

    // The same run again, killed with -9 once it has checkpointed: after a restart the job is
    // claimed again, resumes from its last checkpoint, and every loss equals the reference.
    let run = call(&url, "POST", "/api/v1/runs", Some(&engineer), Some(pretrain_body(STEPS, 7))).await;
    let resumed = run.body["id"].as_str().unwrap().to_string();
    let metrics_path = format!("/api/v1/runs/{resumed}/metrics");
    let checkpointed = eventually(120, || async {
        let reply = call(&url, "GET", &metrics_path, Some(&engineer), None).await;
        reply.body["metrics"].as_array().is_some_and(|m| m.iter().filter(|m| m["kind"] == "train").count() >= 21)
    })
    .await;
    assert!(checkpointed, "the run never passed its second checkpoint");
    server.kill();
    let restarted = Server::start(dir.path(), &["--jurisdiction", "eu"], &env);
    let done = finished(&restarted.url, &engineer, &resumed, &server_log).await;
    assert_eq!(done["attempts"], 2, "{done}");
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(log.contains("resuming a run from its checkpoint"), "the second attempt resumed");
    assert_eq!(losses(&restarted.url, &engineer, &resumed).await, uninterrupted);

    // Preemption: with the one worker busy on a priority-0 run, a priority-10 job makes the run
    // checkpoint and yield; the urgent job finishes first, and the run resumes from its
    // checkpoint without losing an attempt. (Long enough that it cannot finish first.)
    let url = restarted.url.clone();
    const LONG: u64 = 1500;
    let run = call(&url, "POST", "/api/v1/runs", Some(&engineer), Some(pretrain_body(LONG, 7))).await;
    let yielding = run.body["id"].as_str().unwrap().to_string();
    let metrics_path = format!("/api/v1/runs/{yielding}/metrics");
    let started = eventually(120, || async {
        let reply = call(&url, "GET", &metrics_path, Some(&engineer), None).await;
        reply.body["metrics"].as_array().is_some_and(|m| m.iter().filter(|m| m["kind"] == "train").count() >= 10)
    })
    .await;
    assert!(started, "the run never started");
    let urgent = call(
        &url,
        "POST",
        "/api/v1/tenants/acme/jobs",
        Some(&engineer),
        Some(json!({ "kind": "platform.sleep", "payload": { "millis": 200 }, "priority": 10 })),
    )
    .await;
    assert_eq!(urgent.status, 201, "{}", urgent.text);
    let urgent_path = format!("/api/v1/jobs/{}", urgent.body["id"].as_str().unwrap());
    let urgent_done = eventually(120, || async {
        call(&url, "GET", &urgent_path, Some(&engineer), None).await.body["state"] == "succeeded"
    })
    .await;
    assert!(urgent_done, "the urgent job did not run");
    let meanwhile = call(&url, "GET", &format!("/api/v1/runs/{yielding}"), Some(&engineer), None).await;
    assert_ne!(meanwhile.body["state"], "succeeded", "the urgent job ran before the run ended: {}", meanwhile.text);
    let done = finished(&url, &engineer, &yielding, &server_log).await;
    assert_eq!(done["attempts"], 1, "yielding costs no attempt: {done}");
    let steps: Vec<i64> = losses(&url, &engineer, &yielding).await.into_iter().map(|(step, _)| step).collect();
    assert_eq!(steps, (1..=LONG as i64).collect::<Vec<_>>(), "every step once, resumed where it yielded");
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(log.contains("yielded the worker to higher-priority work"), "the run yielded");

    // Quotas: only platform admins set them; past its compute-seconds a tenant's new runs get
    // 429 with Retry-After.
    let quota_path = "/api/v1/tenants/acme/quota";
    let own = call(&url, "PUT", quota_path, Some(&engineer), Some(json!({ "compute_seconds": 1000000 }))).await;
    assert_eq!(own.status, 403, "{}", own.text);
    let set = call(&url, "PUT", quota_path, Some(&restarted.admin_key), Some(json!({ "compute_seconds": 0 }))).await;
    assert_eq!(set.status, 200, "{}", set.text);
    assert!(set.body["quota"]["used_compute_seconds"].as_f64().unwrap() > 0.0, "{}", set.text);
    let spent = call(&url, "POST", "/api/v1/runs", Some(&engineer), Some(pretrain_body(5, 1))).await;
    assert_eq!(spent.status, 429, "{}", spent.text);
    assert_eq!(spent.body["error"]["code"], "quota_exceeded");
    let lifted = call(&url, "PUT", quota_path, Some(&restarted.admin_key), Some(json!({}))).await;
    assert_eq!(lifted.status, 200, "{}", lifted.text);

    // The CLI starts a run and follows it to the end.
    let env = [("FACTORY_URL", restarted.url.as_str()), ("FACTORY_API_KEY", engineer.as_str())];
    let (ok, stdout, stderr) = crate::support::cli(
        &[
            "run",
            "create",
            "--kind",
            "pretrain",
            "--dataset",
            "plays@1",
            "--vocab-size",
            "300",
            "--train",
            r#"{"steps": 12, "seq_len": 32, "batch_size": 2, "eval_every": 6}"#,
            "--follow",
        ],
        &env,
    );
    assert!(ok, "{stdout}{stderr}");
    let run: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(run["state"], "succeeded", "{stdout}");
    let (ok, stdout, _) = crate::support::cli(&["run", "metrics", run["id"].as_str().unwrap()], &env);
    assert!(ok && stdout.contains("validation_loss"), "{stdout}");
}
