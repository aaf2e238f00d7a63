//! Beyond one machine: gateway replicas that share their limits in the Redis on this machine,
//! and the outbox's events on the NATS JetStream on this machine, across crashes.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use serde_json::json;

use crate::support::{
    call, cli, cli_env, create_dataset, eventually, postgres_database, shakespeare, tenant_with_keys, text_dataset,
    train_tiny_model, HttpPeer, Server,
};

/// The address of a service the tests need, or `None` (reported as missing) when nothing answers.
fn reachable(variable: &str, default: &str, what: &str) -> Option<String> {
    let url = std::env::var(variable).unwrap_or_else(|_| default.to_string());
    let address = url.split("://").nth(1).unwrap_or(&url).trim_end_matches('/').to_string();
    let answers = address
        .parse()
        .is_ok_and(|address| std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok());
    if answers {
        Some(url)
    } else {
        factory_testkit::missing(&format!("{what} at {url}"));
        None
    }
}

/// A name no earlier run used (Redis and JetStream outlive a test).
fn fresh(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}{}x{nanos}", std::process::id())
}

fn metric(exposition: &str, name: &str) -> f64 {
    exposition.lines().find_map(|line| line.strip_prefix(name).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_sharing_redis_admit_one_limit_between_them() {
    let Some(redis) =
        reachable("FACTORY_TEST_REDIS_URL", "redis://127.0.0.1:6379", "Redis: shared limits are untested")
    else {
        return;
    };
    let name = format!("factory_shared_limits_{}", std::process::id());
    let Some((admin_pool, database_url)) = postgres_database(&name).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let start = |role: &str, env: &[(&str, &str)]| {
        Server::start(dir.path(), &["--database-url", &database_url, "--jurisdiction", "eu", "--role", role], env)
    };
    let control = start("api,worker", &[]);
    let keys = tenant_with_keys(&control, "acme", &["engineer", "app"]).await;
    let (engineer, app) = (keys[0].1.clone(), keys[1].1.clone());
    text_dataset(&control.url, &engineer, "plays", "internal", shakespeare(30_000)).await;
    train_tiny_model(&control.url, &engineer, dir.path(), "bard", "1").await;
    // Twelve requests a minute for the whole tenant, whichever gateway they reach.
    let deployment = fresh("limited");
    let spec = json!({ "name": deployment, "variants": [{ "model": "bard@1" }],
                       "limits": { "tenant_requests_per_minute": 12 } });
    let created = call(&control.url, "POST", "/api/v1/deployments", Some(&engineer), Some(spec)).await;
    assert_eq!(created.status, 201, "{}", created.text);

    let shared = [("FACTORY_SERVING__SHARED_STATE", redis.as_str())];
    let gateways: Vec<Server> = (0..3).map(|_| start("gateway", &shared)).collect();
    let client = reqwest::Client::new();
    let body = json!({ "model": deployment, "prompt": "KING:", "max_tokens": 1 });
    let started = Instant::now();
    let requests = (0..60)
        .map(|i| client.post(format!("{}/v1/completions", gateways[i % 3].url)).bearer_auth(&app).json(&body).send());
    let replies: Vec<reqwest::Response> =
        futures::future::join_all(requests).await.into_iter().map(Result::unwrap).collect();
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = replies.iter().filter(|reply| reply.status() == 200).count();
    let limited: Vec<&reqwest::Response> = replies.iter().filter(|reply| reply.status() == 429).collect();
    assert_eq!(admitted + limited.len(), 60, "{:?}", replies.iter().map(|r| r.status()).collect::<Vec<_>>());
    assert!(limited.iter().all(|reply| reply.headers().contains_key("retry-after")));
    // A minute's burst (12), plus one slot per 5 s that refills while the requests run: the
    // documented tolerance. Apart, three gateways would have admitted 36.
    let tolerance = (elapsed / 5.0).ceil() as usize;
    assert!(
        (12..=12 + tolerance).contains(&admitted),
        "{admitted} admitted in {elapsed:.1} s (limit 12 + {tolerance})"
    );

    // A gateway that cannot reach the shared state refuses (closed, the default) and says so in
    // its metrics; one configured to fail open serves.
    let cut_off = start("gateway", &[("FACTORY_SERVING__SHARED_STATE", "redis://127.0.0.1:1")]);
    let refused =
        client.post(format!("{}/v1/completions", cut_off.url)).bearer_auth(&app).json(&body).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let metrics = call(&cut_off.url, "GET", "/metrics", Some(&control.admin_key), None).await.text;
    assert!(metric(&metrics, "factory_shared_state_failures_total") >= 1.0, "{metrics}");
    assert!(cut_off.log_tail(50).contains("shared rate limits unreachable"), "{}", cut_off.log_tail(50));
    let open = start(
        "gateway",
        &[("FACTORY_SERVING__SHARED_STATE", "redis://127.0.0.1:1"), ("FACTORY_SERVING__SHARED_STATE_FAILURE", "open")],
    );
    let served =
        client.post(format!("{}/v1/completions", open.url)).bearer_auth(&app).json(&body).send().await.unwrap();
    assert_eq!(served.status(), 200);

    // `factory doctor` names what is wrong with a configuration, and passes a sound one.
    let doctor = |shared_state: &str| {
        let args = ["doctor", "--data-dir", dir.path().to_str().unwrap(), "--database-url", &database_url];
        cli(&args, &[("FACTORY_SERVING__SHARED_STATE", shared_state)])
    };
    let (ok, stdout, stderr) = doctor(&redis);
    assert!(ok && stdout.contains("ok   database") && stdout.contains("ok   shared_state"), "{stdout}{stderr}");
    let (ok, stdout, stderr) = doctor("redis://127.0.0.1:1");
    assert!(!ok && stdout.contains("FAIL shared_state") && stderr.contains("shared_state"), "{stdout}{stderr}");

    for server in gateways.into_iter().chain([cut_off, open, control]) {
        assert!(server.terminate().success());
    }
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin_pool).await.unwrap();
}

/// Every message of `stream`: (subject, Nats-Msg-Id, body).
async fn stream_messages(stream: &jetstream::stream::Stream) -> Vec<(String, i64, serde_json::Value)> {
    let mut stream = stream.clone();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut messages = Vec::new();
    for sequence in 1..=last {
        let Ok(message) = stream.get_raw_message(sequence).await else { continue };
        let id = message.headers.get("Nats-Msg-Id").map(|id| id.as_str().parse().unwrap()).unwrap_or(-1);
        let body = serde_json::from_slice(&message.payload).unwrap_or_default();
        messages.push((message.subject.to_string(), id, body));
    }
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_jetstream_once_each_in_commit_order_across_crashes() {
    let Some(nats) =
        reachable("FACTORY_TEST_NATS_URL", "nats://127.0.0.1:4222", "NATS: events on JetStream are untested")
    else {
        return;
    };
    let name = format!("factory_events_{}", std::process::id());
    let Some((admin_pool, database_url)) = postgres_database(&name).await else { return };
    let database = sqlx::AnyPool::connect(&database_url).await.unwrap();
    let (stream_name, prefix) = (fresh("FACTORY_TEST_"), fresh("factorytest"));
    let env = [
        ("FACTORY_EVENTS__NATS_URL", nats.as_str()),
        ("FACTORY_EVENTS__STREAM", &stream_name),
        ("FACTORY_EVENTS__SUBJECT_PREFIX", &prefix),
    ];
    let dir = tempfile::tempdir().unwrap();
    let start = || Server::start(dir.path(), &["--database-url", &database_url, "--jurisdiction", "eu"], &env);
    let server = start();
    let engineer = tenant_with_keys(&server, "acme", &["engineer"]).await[0].1.clone();
    for index in 0..5 {
        create_dataset(&server.url, &engineer, &format!("notes-{index}"), "internal").await;
    }
    let client = async_nats::connect(&nats).await.unwrap();
    let context = jetstream::new(client);
    let outbox_ids = || async {
        sqlx::query_scalar::<_, i64>("SELECT id FROM outbox ORDER BY id").fetch_all(&database).await.unwrap()
    };
    let published_all = || async {
        let Ok(stream) = context.get_stream(&stream_name).await else { return false };
        let published = stream_messages(&stream).await;
        published.len() == outbox_ids().await.len()
    };
    assert!(eventually(30, published_all).await, "{}", server.log_tail(30));

    // A crash between JetStream's acknowledgement and the cursor's write: the cursor is behind
    // what the stream holds, and the restarted publisher sends those events again.
    server.kill();
    sqlx::query("UPDATE outbox_cursors SET last_event_id = 0 WHERE subscriber = 'nats-jetstream'")
        .execute(&database)
        .await
        .unwrap();
    let republished = outbox_ids().await.len() as f64;
    let server = start();
    create_dataset(&server.url, &engineer, "after-restart", "internal").await;
    assert!(eventually(30, published_all).await, "{}", server.log_tail(30));
    let metrics = call(&server.url, "GET", "/metrics", Some(&server.admin_key), None).await.text;
    assert!(metric(&metrics, "factory_events_duplicate_total") >= republished, "{metrics}");

    // Killed in the middle of a burst of changes.
    let creations: Vec<_> = (0..20)
        .map(|index| {
            let (url, key) = (server.url.clone(), engineer.clone());
            tokio::spawn(async move {
                let body = json!({ "name": format!("burst-{index}"), "classification": "internal" });
                call(&url, "POST", "/api/v1/datasets", Some(&key), Some(body)).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.kill();
    for creation in creations {
        let _ = creation.await;
    }
    let server = start();
    assert!(eventually(30, published_all).await, "{}", server.log_tail(30));

    // Each committed event once, in commit order, on its tenant's subject.
    let stream = context.get_stream(&stream_name).await.unwrap();
    let published = stream_messages(&stream).await;
    let ids: Vec<i64> = published.iter().map(|(_, id, _)| *id).collect();
    assert_eq!(ids, outbox_ids().await, "the stream holds each outbox event once, in order");
    let topics: Vec<String> =
        sqlx::query_scalar("SELECT topic FROM outbox ORDER BY id").fetch_all(&database).await.unwrap();
    for ((subject, id, body), topic) in published.iter().zip(&topics) {
        assert_eq!(body["id"], *id);
        assert_eq!(body["topic"], topic.as_str());
        assert!(subject.starts_with(&format!("{prefix}.events.")) && subject.ends_with(topic.as_str()), "{subject}");
    }
    assert!(published.iter().any(|(subject, _, _)| subject.starts_with(&format!("{prefix}.events.acme."))));

    // A message on the tenant's trigger subject starts its pipeline; another tenant's does not.
    let file = dir.path().join("on-message.toml");
    std::fs::write(&file, "[[triggers]]\nsubject = \"retrain\"\n\n[[steps]]\nkind = \"gate\"\ncondition = \"true\"\n")
        .unwrap();
    let (ok, _, stderr) =
        cli(&["pipeline", "apply", "on-message", "--file", file.to_str().unwrap()], &cli_env(&server.url, &engineer));
    assert!(ok, "{stderr}");
    for tenant in ["globex", "acme"] {
        let payload = serde_json::to_vec(&json!({ "reason": format!("asked by {tenant}") })).unwrap();
        let subject = format!("{prefix}.triggers.{tenant}.retrain");
        context.publish(subject, payload.into()).await.unwrap().await.unwrap();
    }
    let runs = || async {
        call(&server.url, "GET", "/api/v1/pipelines/on-message/runs", Some(&engineer), None).await.body["runs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let started = eventually(30, || async { !runs().await.is_empty() }).await;
    assert!(started, "{}", server.log_tail(30));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let runs = runs().await;
    assert_eq!(runs.len(), 1, "only acme's message starts acme's pipeline: {runs:?}");
    assert_eq!(runs[0]["trigger"]["kind"], "message");
    assert_eq!(runs[0]["trigger"]["payload"]["reason"], "asked by acme");

    assert!(server.terminate().success());
    context.delete_stream(&stream_name).await.unwrap();
    database.close().await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin_pool).await.unwrap();
}

/// Whether the Slurm partition `factory` takes jobs here (`.ci/run` starts a single-node cluster
/// with `deploy/slurm/single-node.sh`).
fn slurm_partition_up() -> bool {
    let output =
        std::process::Command::new("sinfo").args(["--noheader", "--partition", "factory", "--format=%a"]).output();
    let up =
        output.is_ok_and(|output| output.status.success() && String::from_utf8_lossy(&output.stdout).contains("up"));
    if !up {
        factory_testkit::missing(
            "Slurm (partition factory; deploy/slurm/single-node.sh starts one): the Slurm executor",
        );
    }
    up
}

/// Slurm's state of job `id`, while Slurm remembers it.
fn slurm_state(id: u64) -> String {
    let output = std::process::Command::new("squeue")
        .args(["--noheader", "--states=all", "--format=%T", "--jobs", &id.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn slurm_run(steps: u64) -> serde_json::Value {
    json!({
        "kind": "pretrain", "dataset": "plays", "version": 1, "seed": 1, "tokenizer": { "vocab_size": 320 },
        "model": { "config": { "vocab_size": 320, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256 } },
        "train": { "steps": steps, "seq_len": 64, "batch_size": 8, "warmup_steps": 2, "eval_every": 0,
                   "checkpoint_every": 20, "eval_windows": 2 },
        "compute": { "cpus": 1, "memory_mb": 1500 },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_runs_as_slurm_jobs_resumes_after_an_outside_scancel_and_cancels_through_slurm() {
    if !slurm_partition_up() {
        return;
    }
    let name = format!("factory_slurm_{}", std::process::id());
    let Some((admin_pool, database_url)) = postgres_database(&name).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("FACTORY_COMPUTE__EXECUTOR", "slurm"),
        ("FACTORY_COMPUTE__SLURM__PARTITION", "factory"),
        ("FACTORY_COMPUTE__SLURM__CPUS", "1"),
        ("FACTORY_COMPUTE__SLURM__MEMORY_MB", "2000"),
        ("FACTORY_JOBS__LEASE_SECS", "6"),
    ];
    let server = Server::start(dir.path(), &["--database-url", &database_url, "--jurisdiction", "eu"], &env);
    let engineer = tenant_with_keys(&server, "acme", &["engineer"]).await[0].1.clone();
    text_dataset(&server.url, &engineer, "plays", "internal", shakespeare(30_000)).await;
    let run = |steps: u64| {
        let (url, key) = (server.url.clone(), engineer.clone());
        async move {
            let created = call(&url, "POST", "/api/v1/runs", Some(&key), Some(slurm_run(steps))).await;
            assert_eq!(created.status, 201, "{}", created.text);
            created.body["id"].as_str().unwrap().to_string()
        }
    };
    let show = |id: String| {
        let (url, key) = (server.url.clone(), engineer.clone());
        async move { call(&url, "GET", &format!("/api/v1/runs/{id}"), Some(&key), None).await.body }
    };

    // A run becomes a Slurm job; its step on the node trains it to the end, and the run records
    // the Slurm job and the node (`factory run show` prints them).
    let short = run(30).await;
    let finished = eventually(180, || async { show(short.clone()).await["state"] == "succeeded" }).await;
    let shown = show(short.clone()).await;
    let tail = std::fs::read_dir(dir.path().join("slurm")).map(|entries| entries.count()).unwrap_or(0);
    assert!(finished, "{shown}\n{}\n{tail} Slurm logs", server.log_tail(40));
    let placement = &shown["placement"];
    assert_eq!(placement["executor"], "slurm", "{shown}");
    assert_eq!(placement["partition"], "factory");
    let node = placement["node"].as_str().unwrap().to_string();
    let first_slurm_job = placement["slurm_job_id"].as_u64().unwrap();
    // The run succeeds before its step's process exits, so Slurm may still say RUNNING a moment.
    let completed = eventually(30, || async { slurm_state(first_slurm_job) == "COMPLETED" }).await;
    assert!(completed, "{}", slurm_state(first_slurm_job));
    let (ok, stdout, _) = cli(&["run", "show", &short], &cli_env(&server.url, &engineer));
    assert!(ok && stdout.contains("slurm_job_id") && stdout.contains(&node), "{stdout}");

    // `scancel` from outside, after a checkpoint: the executor sees the Slurm job end, and the
    // run resumes from its checkpoint in a new Slurm job.
    let long = run(100_000).await;
    let metrics_path = format!("/api/v1/runs/{long}/metrics");
    let checkpointed = eventually(180, || async {
        let metrics = call(&server.url, "GET", &metrics_path, Some(&engineer), None).await.body;
        metrics["metrics"].as_array().is_some_and(|rows| rows.iter().any(|row| row["step"].as_i64() >= Some(30)))
    });
    assert!(checkpointed.await, "{}\n{}", show(long.clone()).await, server.log_tail(40));
    let shown = show(long.clone()).await;
    let cancelled_outside = shown["placement"]["slurm_job_id"].as_u64().unwrap();
    assert_eq!(slurm_state(cancelled_outside), "RUNNING", "{shown}");
    let scancel = std::process::Command::new("scancel").arg(cancelled_outside.to_string()).status().unwrap();
    assert!(scancel.success());
    let resubmitted = eventually(60, || async {
        let shown = show(long.clone()).await;
        shown["placement"]["slurm_job_id"].as_u64().is_some_and(|id| id != cancelled_outside)
            && shown["placement"]["state"] == "RUNNING"
    });
    assert!(resubmitted.await, "{}\n{}", show(long.clone()).await, server.log_tail(40));
    let shown = show(long.clone()).await;
    let attempts = shown["placement"]["attempts"].as_array().unwrap();
    assert!(
        attempts.iter().any(|attempt| attempt["slurm_job_id"] == cancelled_outside && attempt["state"] == "CANCELLED"),
        "{shown}"
    );
    assert_eq!(shown["attempts"], 2, "{shown}");
    let slurm_log = |id: u64| {
        std::fs::read_to_string(dir.path().join("slurm").join(format!("{long}-{id}.log"))).unwrap_or_default()
    };
    let second = shown["placement"]["slurm_job_id"].as_u64().unwrap();
    let resumed = eventually(60, || async { slurm_log(second).contains("resuming a run from its checkpoint") }).await;
    assert!(resumed, "{}", slurm_log(second));

    // Cancelling the run through the factory ends its Slurm job.
    let cancelled = call(&server.url, "POST", &format!("/api/v1/runs/{long}/cancel"), Some(&engineer), None).await;
    assert!(cancelled.status < 300, "{}", cancelled.text);
    let ended = eventually(60, || async {
        show(long.clone()).await["state"] == "cancelled"
            && !["RUNNING", "PENDING"].contains(&slurm_state(second).as_str())
    });
    assert!(ended.await, "{}\n{}", show(long.clone()).await, slurm_state(second));

    // `factory doctor` checks the partition.
    let args = ["doctor", "--data-dir", dir.path().to_str().unwrap(), "--database-url", &database_url];
    let (ok, stdout, stderr) = cli(&args, &[("FACTORY_COMPUTE__EXECUTOR", "slurm")]);
    assert!(ok && stdout.contains("ok   slurm"), "{stdout}{stderr}");
    let (ok, stdout, _) =
        cli(&args, &[("FACTORY_COMPUTE__EXECUTOR", "slurm"), ("FACTORY_COMPUTE__SLURM__PARTITION", "gpu-h100")]);
    assert!(!ok && stdout.contains("FAIL slurm"), "{stdout}");

    assert!(server.terminate().success());
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin_pool).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_variant_served_elsewhere_is_balanced_over_healthy_replicas() {
    let answer = json!({
        "id": "chatcmpl-remote", "object": "chat.completion", "created": 1, "model": "bard",
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": "From afar." }, "finish_reason": "stop" }],
        "usage": { "prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5 },
    })
    .to_string();
    let json_header = "content-type: application/json\r\n";
    let (first, second) =
        (HttpPeer::start("200 OK", json_header, &answer).await, HttpPeer::start("200 OK", json_header, &answer).await);
    // Nothing listens on port 1: a replica that is down from the start.
    let endpoints = format!(
        "{{ pool = {{ urls = [\"{}/v1\", \"{}/v1\", \"http://127.0.0.1:1/v1\"], jurisdiction = \"eu\" }} }}",
        first.url, second.url
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--jurisdiction", "eu"], &[("FACTORY_SERVING__ENDPOINTS", &endpoints)]);
    let engineer = tenant_with_keys(&server, "acme", &["engineer"]).await[0].1.clone();
    let unknown = json!({ "name": "nowhere", "variants": [{ "endpoint": { "name": "elsewhere", "model": "bard" } }] });
    let refused = call(&server.url, "POST", "/api/v1/deployments", Some(&engineer), Some(unknown)).await;
    assert_eq!(refused.status, 400, "{}", refused.text);
    let remote = json!({ "name": "remote", "variants": [{ "endpoint": { "name": "pool", "model": "bard" } }] });
    assert_eq!(call(&server.url, "POST", "/api/v1/deployments", Some(&engineer), Some(remote)).await.status, 201);
    // The first health check has found the dead replica.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let chat = json!({ "model": "remote", "messages": [{ "role": "user", "content": "Hail" }] });
    let posts =
        |peer: &HttpPeer| peer.received().iter().filter(|r| r.head.starts_with("POST /v1/chat/completions")).count();
    for _ in 0..20 {
        let answered = call(&server.url, "POST", "/v1/chat/completions", Some(&engineer), Some(chat.clone())).await;
        assert_eq!(answered.status, 200, "{}", answered.text);
        assert_eq!(answered.body["choices"][0]["message"]["content"], "From afar.");
    }
    let (to_first, to_second) = (posts(&first), posts(&second));
    assert_eq!(to_first + to_second, 20);
    assert!(to_first >= 5 && to_second >= 5, "balanced: {to_first} and {to_second}");
    assert!(first.received().iter().any(|r| r.head.starts_with("GET /v1/models")), "health checks reach the replicas");
    // Each replica is asked for the model by the name it knows.
    let asked = first.received().into_iter().find(|r| r.head.starts_with("POST")).unwrap();
    let asked: serde_json::Value = serde_json::from_slice(&asked.body).unwrap();
    assert_eq!(asked["model"], "bard");

    // A replica that goes away gets no more requests once seen down; none fails meanwhile
    // beyond the request that found it gone.
    first.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = posts(&second);
    for _ in 0..10 {
        let answered = call(&server.url, "POST", "/v1/chat/completions", Some(&engineer), Some(chat.clone())).await;
        assert_eq!(answered.status, 200, "{}", answered.text);
    }
    assert_eq!(posts(&second), before + 10);
    assert!(server.terminate().success());
}

/// A run's training losses by step.
async fn train_losses(url: &str, key: &str, run: &str) -> Vec<(i64, f64)> {
    let reply = call(url, "GET", &format!("/api/v1/runs/{run}/metrics?limit=10000"), Some(key), None).await;
    let rows = reply.body["metrics"].as_array().cloned().unwrap_or_default();
    rows.iter()
        .filter(|row| row["kind"] == "train")
        .map(|row| (row["step"].as_i64().unwrap(), row["metrics"]["loss"].as_f64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_processes_of_a_cluster_lose_nothing_committed() {
    if !slurm_partition_up() {
        return;
    }
    let name = format!("factory_faults_{}", std::process::id());
    let Some((admin_pool, database_url)) = postgres_database(&name).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let lease = [("FACTORY_JOBS__LEASE_SECS", "6"), ("FACTORY_JOBS__WORKERS", "1")];
    let slurm = [
        ("FACTORY_JOBS__LEASE_SECS", "6"),
        ("FACTORY_JOBS__WORKERS", "1"),
        ("FACTORY_COMPUTE__EXECUTOR", "slurm"),
        ("FACTORY_COMPUTE__SLURM__CPUS", "1"),
        ("FACTORY_COMPUTE__SLURM__MEMORY_MB", "2000"),
    ];
    let start = |role: &str, env: &[(&str, &str)]| {
        Server::start(dir.path(), &["--database-url", &database_url, "--jurisdiction", "eu", "--role", role], env)
    };
    let api = start("api", &lease);
    let worker = start("worker", &lease);
    let gateways = [start("gateway", &lease), start("gateway", &lease)];
    let engineer = tenant_with_keys(&api, "acme", &["engineer"]).await[0].1.clone();
    text_dataset(&api.url, &engineer, "plays", "internal", shakespeare(30_000)).await;
    let show = |url: String, id: String| {
        let key = engineer.clone();
        async move { call(&url, "GET", &format!("/api/v1/runs/{id}"), Some(&key), None).await.body }
    };

    // The reference: an uninterrupted run on the in-process worker, registered as bard@1.
    let mut reference_body = slurm_run(120);
    reference_body["register"] = json!({ "name": "bard" });
    let created = call(&api.url, "POST", "/api/v1/runs", Some(&engineer), Some(reference_body)).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let reference = created.body["id"].as_str().unwrap().to_string();
    let done = eventually(240, || async { show(api.url.clone(), reference.clone()).await["state"] == "succeeded" });
    assert!(done.await, "{}\n{}", show(api.url.clone(), reference.clone()).await, worker.log_tail(30));
    let uninterrupted = train_losses(&api.url, &engineer, &reference).await;
    assert_eq!(uninterrupted.len(), 120);

    // The same run, its worker killed with -9 after a checkpoint; a worker whose executor is
    // Slurm takes it over when the lease ends, and it resumes to the very same losses.
    let created = call(&api.url, "POST", "/api/v1/runs", Some(&engineer), Some(slurm_run(120))).await;
    let resumed = created.body["id"].as_str().unwrap().to_string();
    let checkpointed = eventually(240, || async { train_losses(&api.url, &engineer, &resumed).await.len() >= 25 });
    assert!(checkpointed.await, "{}", worker.log_tail(30));
    worker.kill();
    let slurm_worker = start("worker", &slurm);
    let done = eventually(300, || async { show(api.url.clone(), resumed.clone()).await["state"] == "succeeded" });
    assert!(done.await, "{}\n{}", show(api.url.clone(), resumed.clone()).await, slurm_worker.log_tail(30));
    let shown = show(api.url.clone(), resumed.clone()).await;
    assert_eq!(shown["placement"]["executor"], "slurm", "{shown}");
    assert_eq!(train_losses(&api.url, &engineer, &resumed).await, uninterrupted);

    // A gateway killed mid-stream: the other answers meanwhile, and it answers again restarted.
    let deployment = json!({ "name": "chat", "variants": [{ "model": "bard@1" }] });
    assert_eq!(call(&api.url, "POST", "/api/v1/deployments", Some(&engineer), Some(deployment)).await.status, 201);
    let [doomed, survivor] = gateways;
    let client = reqwest::Client::new();
    let stream = json!({ "model": "chat", "messages": [{ "role": "user", "content": "To be" }], "max_tokens": 200,
                         "stream": true });
    let mut streaming = client
        .post(format!("{}/v1/chat/completions", doomed.url))
        .bearer_auth(&engineer)
        .json(&stream)
        .send()
        .await
        .unwrap();
    assert_eq!(streaming.status(), 200);
    assert!(streaming.chunk().await.unwrap().is_some(), "the stream started");
    doomed.kill();
    let cut = loop {
        match streaming.chunk().await {
            Ok(Some(_)) => continue,
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    // A tiny model may finish its answer before the kill lands; either way nothing is owed.
    eprintln!("the stream {}", if cut { "was cut by the kill" } else { "finished before the kill landed" });
    let chat = json!({ "model": "chat", "messages": [{ "role": "user", "content": "To be" }], "max_tokens": 4 });
    assert_eq!(
        call(&survivor.url, "POST", "/v1/chat/completions", Some(&engineer), Some(chat.clone())).await.status,
        200
    );
    let restarted_gateway = start("gateway", &lease);
    assert_eq!(
        call(&restarted_gateway.url, "POST", "/v1/chat/completions", Some(&engineer), Some(chat)).await.status,
        200
    );

    // The API killed mid-upload: no version of the dataset becomes visible, half or whole.
    create_dataset(&api.url, &engineer, "letters", "internal").await;
    let chunks = futures::stream::iter(0..400).then(|index| async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let line = format!("{{\"text\": \"letter {index} {}\"}}\n", "word ".repeat(200));
        Ok::<_, std::io::Error>(line.into_bytes())
    });
    let upload = client
        .post(format!("{}/api/v1/datasets/letters/versions?format=jsonl", api.url))
        .bearer_auth(&engineer)
        .body(reqwest::Body::wrap_stream(chunks))
        .send();
    let uploading = tokio::spawn(upload);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let logged = |checkpoint: String| checkpoint.lines().nth(1).and_then(|size| size.parse::<u64>().ok()).unwrap_or(0);
    let audit_before = logged(call(&api.url, "GET", "/api/v1/audit/checkpoint", Some(&api.admin_key), None).await.text);
    api.kill();
    assert!(uploading.await.unwrap().is_err(), "the upload was cut");
    let api = start("api", &lease);
    let letters = call(&api.url, "GET", "/api/v1/datasets/letters", Some(&engineer), None).await;
    assert_eq!(letters.body["latest_version"], 0, "{}", letters.text);

    // Every change committed before the kills is there, and the log verifies offline.
    for run in [&reference, &resumed] {
        assert_eq!(show(api.url.clone(), run.clone()).await["state"], "succeeded");
    }
    let audit_after = logged(call(&api.url, "GET", "/api/v1/audit/checkpoint", Some(&api.admin_key), None).await.text);
    assert!(audit_before > 0 && audit_after >= audit_before, "{audit_before} -> {audit_after}");
    for server in [survivor, restarted_gateway, slurm_worker, api] {
        assert!(server.terminate().success());
    }
    let args = ["audit", "verify", "--data-dir", dir.path().to_str().unwrap(), "--database-url", &database_url];
    let (ok, stdout, stderr) = cli(&args, &[]);
    assert!(ok && stdout.contains("audit log verified"), "{stdout}{stderr}");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin_pool).await.unwrap();
}
