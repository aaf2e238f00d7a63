//! `factory demo`: the whole loop on a fresh data directory, through the public API only.
//!
//! It starts `factory up` as a child process, then acts as a tenant's engineer and its
//! application would: ingest tinyshakespeare, train and register a model, deploy it with drift
//! monitors, declare a retraining pipeline, send OpenAI-style requests with feedback, switch the
//! traffic to another kind of text (Twain), and watch drift fire, the pipeline fine-tune,
//! evaluate, gate, canary and promote (or roll back, with the reason). The users giving feedback
//! are simulated (named as such below): a user likes an answer whose words are more typical of
//! the kind of text they asked in than of the other kind.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::args::{DemoArgs, VerifyArgs};

struct Scale {
    pretrain_steps: u64,
    pretrain_seconds: f64,
    finetune_steps: u64,
    window: usize,
    baseline: usize,
    feedback_baseline: usize,
    feedback_window: usize,
    canary_requests: u64,
    canary_feedback: u64,
}

const FULL: Scale = Scale {
    pretrain_steps: 1500,
    pretrain_seconds: 200.0,
    finetune_steps: 400,
    window: 60,
    baseline: 120,
    feedback_baseline: 80,
    feedback_window: 40,
    canary_requests: 60,
    canary_feedback: 40,
};

/// For the test suite: the same loop, smaller.
const QUICK: Scale = Scale {
    pretrain_steps: 120,
    pretrain_seconds: 60.0,
    finetune_steps: 60,
    window: 40,
    baseline: 80,
    feedback_baseline: 50,
    feedback_window: 30,
    canary_requests: 40,
    canary_feedback: 25,
};

struct Api {
    url: String,
    key: String,
    client: reqwest::Client,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut request = self.client.request(method, format!("{}{path}", self.url)).bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            return Err(crate::client::error_message(status, &text).context(path.to_string()));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn upload(
        &self,
        path: &str,
        body: Vec<u8>,
        content_type: &str,
        method: reqwest::Method,
    ) -> anyhow::Result<Value> {
        let response = self
            .client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.key)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            return Err(crate::client::error_message(status, &text).context(path.to_string()));
        }
        Ok(serde_json::from_str(&text)?)
    }
}

/// The report: what happened, when, and where to look.
struct Report {
    started: Instant,
    phase: Instant,
}

impl Report {
    fn step(&mut self, what: &str, detail: &str) {
        let now = Instant::now();
        println!(
            "[{:>6.1}s] {what:<34} {:>6.1}s  {detail}",
            now.duration_since(self.started).as_secs_f64(),
            now.duration_since(self.phase).as_secs_f64()
        );
        let _ = std::io::stdout().flush();
        self.phase = now;
    }
}

fn corpora(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let candidates = [
        explicit,
        std::env::var_os("FACTORY_SHARED_DATA").map(PathBuf::from),
        Some(PathBuf::from("shared/data")),
        Some(PathBuf::from("../shared/data")),
        std::env::current_exe().ok().and_then(|e| e.parent().map(|p| p.join("../../../shared/data"))),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|dir| dir.join("tinyshakespeare.txt").is_file() && dir.join("twain-tom-sawyer-en.txt").is_file())
        .ok_or_else(|| anyhow!("tinyshakespeare.txt and twain-tom-sawyer-en.txt not found: pass --corpora DIR or set FACTORY_SHARED_DATA"))
}

/// Shakespeare's lines, and Twain's paragraphs cut into pieces of about a line's size.
fn texts(dir: &Path) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).with_context(|| format!("reading {name}"));
    let shakespeare: Vec<String> =
        read("tinyshakespeare.txt")?.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
    let twain_text = read("twain-tom-sawyer-en.txt")?;
    let twain: Vec<String> = twain_text
        .lines()
        .map(str::trim)
        .filter(|l| l.len() > 40)
        .flat_map(|p| p.split_whitespace().collect::<Vec<_>>().chunks(10).map(|c| c.join(" ")).collect::<Vec<_>>())
        .filter(|piece| piece.split_whitespace().count() >= 4)
        .collect();
    Ok((shakespeare, twain))
}

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'').filter(|w| !w.is_empty()).map(|w| w.to_lowercase())
}

/// The simulated users' taste: unigram frequencies of both kinds of text.
struct Judge {
    shakespeare: HashMap<String, f64>,
    twain: HashMap<String, f64>,
}

impl Judge {
    fn new(shakespeare: &[String], twain: &[String]) -> Judge {
        let counts = |lines: &[String]| {
            let mut counts: HashMap<String, f64> = HashMap::new();
            for line in lines {
                for word in words(line) {
                    *counts.entry(word).or_default() += 1.0;
                }
            }
            let total: f64 = counts.values().sum();
            counts.values_mut().for_each(|c| *c /= total);
            counts
        };
        Judge { shakespeare: counts(shakespeare), twain: counts(twain) }
    }

    /// Thumbs up when the answer's words are more typical of the kind of text asked in.
    fn likes(&self, answer: &str, asked_in_twain: bool) -> bool {
        let floor = 1e-6;
        let score: f64 = words(answer)
            .map(|w| {
                let (t, s) =
                    (self.twain.get(&w).copied().unwrap_or(floor), self.shakespeare.get(&w).copied().unwrap_or(floor));
                (t / s).ln()
            })
            .sum();
        if asked_in_twain {
            score > 0.0
        } else {
            score <= 0.0
        }
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let scale = if args.quick { &QUICK } else { &FULL };
    let started = Instant::now();
    let mut report = Report { started, phase: started };
    let data_dir = args.data_dir.clone();
    if data_dir.join("factory.db").exists() || data_dir.join("admin.key").exists() {
        bail!("{} already holds a factory; the demo needs a fresh directory", data_dir.display());
    }
    std::fs::create_dir_all(data_dir.join("inputs"))?;
    let (shakespeare, twain) = texts(&corpora(args.corpora.clone())?)?;
    std::fs::write(data_dir.join("inputs/shakespeare.txt"), shakespeare.join("\n"))?;
    std::fs::write(data_dir.join("inputs/twain.txt"), twain.join("\n"))?;
    let judge = Arc::new(Judge::new(&shakespeare, &twain));

    // A webhook receiver for the pipeline's `notify` step, checking the HMAC signature.
    let webhook = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let webhook_url = format!("http://{}/hooks/factory", webhook.local_addr()?);
    let webhook_secret = hex::encode(factory_core::secrets::random_bytes());
    let received = Arc::new(tokio::sync::Mutex::new(Vec::<(bool, Value)>::new()));
    tokio::spawn(receive_webhooks(webhook, webhook_secret.clone(), received.clone()));

    let config = format!(
        "data_dir = {data_dir:?}\nlisten = \"127.0.0.1:{port}\"\n\n[jobs]\nworkers = 3\n\n[drift]\ninterval_ms = 500\n\n\
         [pipelines]\nwebhooks = [{webhook_url:?}]\n\n[secrets]\ndemo = [\"WEBHOOK_SECRET_DEMO\"]\n\n[feedback.metrics]\nthumbs_up = {{ type = \"boolean\", better = \"higher\", level = \"inference\" }}\n",
        data_dir = data_dir.display().to_string(),
        port = args.port,
    );
    std::fs::write(data_dir.join("factory.toml"), config)?;
    let executable = std::env::current_exe()?;
    let mut server = tokio::process::Command::new(&executable)
        .args(["up", "--config"])
        .arg(data_dir.join("factory.toml"))
        .env("WEBHOOK_SECRET_DEMO", &webhook_secret)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(data_dir.join("server.log"))?)
        .kill_on_drop(true)
        .spawn()
        .context("starting factory up")?;
    let stdout = server.stdout.take().ok_or_else(|| anyhow!("no stdout from factory up"))?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let url = loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .context("factory up did not start within 60 s")??
            .ok_or_else(|| anyhow!("factory up exited; see {}", data_dir.join("server.log").display()))?;
        if let Some(url) = line.strip_prefix("factory listening on ") {
            break url.trim().to_string();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let admin_key = std::fs::read_to_string(data_dir.join("admin.key"))?.trim().to_string();
    let client = reqwest::Client::new();
    let admin = Api { url: url.clone(), key: admin_key, client: client.clone() };
    report.step("factory up", &format!("{url} (log: {})", data_dir.join("server.log").display()));

    let outcome =
        drive(&admin, scale, &data_dir, &judge, &twain, &shakespeare, &webhook_url, &received, &mut report).await;
    if let Err(error) = &outcome {
        println!("the demo failed: {error:#}");
    }
    if args.serve && outcome.is_ok() {
        println!("\nThe factory is still serving at {url} (Ctrl-C stops it). Try:");
        println!("  export FACTORY_URL={url} FACTORY_API_KEY=$(cat {})", data_dir.join("engineer.key").display());
        println!("  factory chat bard --message 'The boys went down to the river'");
        println!("  factory drift show bard");
        println!("  factory pipeline runs retrain");
        tokio::signal::ctrl_c().await?;
    }
    // SIGTERM: the server drains and signs a last checkpoint.
    if let Some(pid) = server.id() {
        let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), server.wait()).await;
    outcome?;
    crate::verify::run(VerifyArgs {
        data_dir: data_dir.clone(),
        database_url: None,
        public_key: None,
        // The published checkpoints in the data directory are read anyway; the demo's factory
        // signs at the default interval.
        checkpoints: Vec::new(),
        checkpoint_interval_secs: 60,
    })
    .await
    .context("factory audit verify")?;
    report.step("factory audit verify", "the audit log verifies");
    println!(
        "\nDone in {:.1} s. Data, models and logs are in {}.",
        started.elapsed().as_secs_f64(),
        data_dir.display()
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    admin: &Api,
    scale: &Scale,
    data_dir: &Path,
    judge: &Arc<Judge>,
    twain: &[String],
    shakespeare: &[String],
    webhook_url: &str,
    received: &Arc<tokio::sync::Mutex<Vec<(bool, Value)>>>,
    report: &mut Report,
) -> anyhow::Result<()> {
    admin.post("/api/v1/tenants", json!({ "name": "demo", "jurisdictions": ["local"] })).await?;
    let issued =
        admin.post("/api/v1/tenants/demo/keys", json!({ "role": "engineer", "description": "demo engineer" })).await?;
    let engineer_key = issued["secret"].as_str().ok_or_else(|| anyhow!("no key secret"))?.to_string();
    std::fs::write(data_dir.join("engineer.key"), format!("{engineer_key}\n"))?;
    let app =
        admin.post("/api/v1/tenants/demo/keys", json!({ "role": "app", "description": "demo application" })).await?;
    let app_key = app["secret"].as_str().ok_or_else(|| anyhow!("no key secret"))?.to_string();
    let api = Api { url: admin.url.clone(), key: engineer_key, client: admin.client.clone() };
    let app = Arc::new(Api { url: admin.url.clone(), key: app_key, client: admin.client.clone() });
    report.step("tenant, engineer and app keys", "tenant demo (jurisdiction local)");

    for (name, file) in [("shakespeare", "shakespeare.txt"), ("twain", "twain.txt")] {
        api.post(
            "/api/v1/datasets",
            json!({ "name": name, "classification": "internal", "description": "demo corpus" }),
        )
        .await?;
        let bytes = std::fs::read(data_dir.join("inputs").join(file))?;
        let version = api
            .upload(
                &format!("/api/v1/datasets/{name}/versions?format=text&on_error=skip"),
                bytes,
                "text/plain",
                reqwest::Method::POST,
            )
            .await?;
        report.step(&format!("ingest {name}"), &format!("{name}@{} rows {}", version["version"], version["rows"]));
    }

    let run = api
        .post(
            "/api/v1/runs",
            json!({
                "kind": "pretrain", "dataset": "shakespeare", "version": 1, "seed": 1,
                "tokenizer": { "vocab_size": 512 }, "model": { "preset": "tiny" },
                "train": { "steps": scale.pretrain_steps, "max_seconds": scale.pretrain_seconds, "seq_len": 64,
                           "batch_size": 16, "learning_rate": 0.003, "min_learning_rate": 0.0003,
                           "warmup_steps": 20, "eval_every": 50 },
                "register": { "name": "bard", "intended_use": "demo: continue lines of verse" },
            }),
        )
        .await?;
    let run_id = run["id"].as_str().unwrap_or_default().to_string();
    let finished = wait_for_run(&api, &run_id).await?;
    report.step(
        "train tokenizer + model, register",
        &format!(
            "run {run_id}: bard@{} validation loss {:.3} (factory run show {run_id})",
            finished["result"]["model"]["version"],
            finished["result"]["eval"]["validation_loss"].as_f64().unwrap_or(f64::NAN)
        ),
    );
    api.call(reqwest::Method::PUT, "/api/v1/models/bard/aliases/production", Some(json!({ "version": 1 }))).await?;
    api.post(
        "/api/v1/deployments",
        json!({
            "name": "bard", "variants": [{ "model": "bard@production", "weight": 1 }],
            "logging": { "sample_rate": 1.0 },
            "drift": { "settings": { "window": scale.window, "every": 5, "baseline": scale.baseline,
                        "feedback_baseline": scale.feedback_baseline, "feedback_window": scale.feedback_window } },
        }),
    )
    .await?;
    let pipeline = format!(
        r#"description = "Retrain bard on what users ask now, when drift or feedback says so"

[[triggers]]
event = "drift.detected"
deployment = "bard"

[[triggers]]
event = "feedback.degraded"
deployment = "bard"

[[steps]]
name = "finetune"
kind = "finetune"
base = "bard@production"
dataset = "twain@latest"
register = "bard"
run = {{ seed = 2, train = {{ steps = {steps}, seq_len = 64, batch_size = 16, learning_rate = 0.002, min_learning_rate = 0.0002, warmup_steps = 10, eval_every = 50 }} }}

[[steps]]
name = "evaluate"
kind = "evaluate"
dataset = "twain@latest"
against = "bard@production"
seq_len = 64

[[steps]]
name = "gate"
kind = "gate"
condition = "candidate.perplexity <= production.perplexity * 1.02"

[[steps]]
name = "canary"
kind = "canary"
deployment = "bard"
weight = 0.5
min_requests = {requests}
min_feedback = {feedback}
metric = "thumbs_up"
alpha = 0.01
max_duration_secs = 240

[[steps]]
name = "notify"
kind = "notify"
when = "always"
url = "{webhook_url}"
secret_env = "WEBHOOK_SECRET_DEMO"
"#,
        steps = scale.finetune_steps,
        requests = scale.canary_requests,
        feedback = scale.canary_feedback,
    );
    api.upload("/api/v1/pipelines/retrain", pipeline.into_bytes(), "application/toml", reqwest::Method::PUT).await?;
    report.step(
        "deploy bard, declare pipeline",
        "deployment bard -> bard@production, drift monitors on; pipeline retrain",
    );

    // Traffic: the application asks, the simulated users judge.
    let stop = Arc::new(AtomicBool::new(false));
    let asked_twain = Arc::new(AtomicBool::new(false));
    // Answered requests only: a failed call is counted apart, never as traffic the monitors saw.
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let liked = Arc::new(tokio::sync::Mutex::new(Vec::<(bool, bool)>::new()));
    let traffic = {
        let (app, judge, stop, asked_twain, sent, failed, liked) = (
            app.clone(),
            judge.clone(),
            stop.clone(),
            asked_twain.clone(),
            sent.clone(),
            failed.clone(),
            liked.clone(),
        );
        let (shakespeare, twain) = (shakespeare.to_vec(), twain.to_vec());
        tokio::spawn(async move {
            let mut rng = factory_drift::stats::Resampler::new(42);
            while !stop.load(Ordering::SeqCst) {
                let in_twain = asked_twain.load(Ordering::SeqCst);
                let pool = if in_twain { &twain } else { &shakespeare };
                let prompt = pool[rng.draw(pool.len(), 1)[0]].clone();
                let answer = app
                    .post(
                        "/v1/completions",
                        json!({ "model": "bard", "prompt": format!("{prompt}\n"), "max_tokens": 16, "temperature": 0.8 }),
                    )
                    .await;
                let Ok(answer) = answer else {
                    failed.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                sent.fetch_add(1, Ordering::SeqCst);
                let text = answer["choices"][0]["text"].as_str().unwrap_or_default();
                let up = judge.likes(text, in_twain);
                liked.lock().await.push((in_twain, up));
                let id = answer["id"].as_str().unwrap_or_default();
                let _ = app
                    .post("/api/v1/feedback", json!({ "inference_id": id, "metric": "thumbs_up", "value": up }))
                    .await;
            }
        })
    };

    // Phase 1: Shakespeare, until the monitors have their baselines and a few windows.
    let phase_one = (scale.baseline.max(scale.window) + 3 * scale.window) as u64;
    while sent.load(Ordering::SeqCst) < phase_one {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drift = wait_drift_ready(&api, scale).await?;
    let likes_before = share_liked(&liked, false).await;
    report.step(
        "traffic: Shakespeare prompts",
        &format!(
            "{} requests answered ({} failed), {:.0} % thumbs up from the simulated users, {} drift alarms (factory drift show bard)",
            sent.load(Ordering::SeqCst),
            failed.load(Ordering::SeqCst),
            likes_before * 100.0,
            drift["alarms"].as_array().map_or(0, Vec::len)
        ),
    );
    if drift["alarms"].as_array().is_some_and(|a| !a.is_empty()) {
        println!("  note: alarms before the shift: {}", drift["alarms"]);
    }

    // Phase 2: the users now ask in another kind of text.
    let observed_at_shift = drift["status"]["observed"].as_u64().unwrap_or(0);
    let sent_at_shift = sent.load(Ordering::SeqCst);
    asked_twain.store(true, Ordering::SeqCst);
    let alarm = loop {
        let drift = api.get("/api/v1/deployments/bard/drift").await?;
        let alarms = drift["alarms"].as_array().cloned().unwrap_or_default();
        if let Some(first) = alarms.iter().rfind(|a| a["observed"].as_u64().unwrap_or(0) > observed_at_shift) {
            break first.clone();
        }
        if sent.load(Ordering::SeqCst) > sent_at_shift + 600 {
            bail!("no drift detected within 600 requests of the shift");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let delay = alarm["observed"].as_u64().unwrap_or(0).saturating_sub(observed_at_shift);
    report.step(
        "shift to Twain: drift detected",
        &format!(
            "{} fired after {delay} requests (statistic {:.3} > threshold {:.3})",
            alarm["monitor"].as_str().unwrap_or("?"),
            alarm["statistic"].as_f64().unwrap_or(f64::NAN),
            alarm["threshold"].as_f64().unwrap_or(f64::NAN)
        ),
    );

    // The pipeline runs on its own; the demo only watches.
    let run = loop {
        let runs = api.get("/api/v1/pipelines/retrain/runs").await?;
        if let Some(run) = runs["runs"].as_array().and_then(|r| r.first()).cloned() {
            break run;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let run_id = run["id"].as_str().unwrap_or_default().to_string();
    report.step("pipeline retrain started", &format!("run {run_id}, trigger {}", run["trigger"]["topic"]));
    let mut reported = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    let run = loop {
        let run = api.get(&format!("/api/v1/pipelines/retrain/runs/{run_id}")).await?;
        let steps = run["steps"].as_array().cloned().unwrap_or_default();
        for step in steps.iter().skip(reported) {
            report.step(&format!("  step {}", step["name"].as_str().unwrap_or("?")), &describe(step));
        }
        reported = steps.len();
        if run["status"] != "running" {
            break run;
        }
        if Instant::now() > deadline {
            bail!("the pipeline run did not finish within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    stop.store(true, Ordering::SeqCst);
    let _ = traffic.await;
    let likes_after = share_liked(&liked, true).await;
    report.step(
        "pipeline retrain finished",
        &format!(
            "status {}{}; Twain prompts {:.0} % thumbs up from the simulated users overall; {} coalesced triggers",
            run["status"].as_str().unwrap_or("?"),
            run["reason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default(),
            likes_after * 100.0,
            run["coalesced"].as_array().map_or(0, Vec::len)
        ),
    );
    let deployment = api.get("/api/v1/deployments/bard").await?;
    let production = api.get("/api/v1/models/bard/versions/production").await?;
    report.step(
        "serving now",
        &format!("bard -> {} ; bard@production = version {}", deployment["spec"]["variants"], production["version"]),
    );
    let hooks = received.lock().await.clone();
    match hooks.last() {
        Some((true, body)) => report.step("webhook", &format!("received, HMAC verified (failed: {})", body["failed"])),
        Some((false, _)) => bail!("the webhook's HMAC signature did not verify"),
        None => bail!("the notify step's webhook never arrived"),
    }
    if run["status"] != "succeeded" && run["status"] != "rolled_back" {
        bail!("the pipeline run ended {}: {}", run["status"], run["reason"]);
    }
    println!(
        "\nFigures: drift detection delay {delay} requests after the shift ({} monitor); pipeline {}.",
        alarm["monitor"].as_str().unwrap_or("?"),
        run["status"].as_str().unwrap_or("?")
    );
    println!("Where to look: factory drift show bard · factory pipeline runs retrain · factory model list · factory audit verify --data-dir {}", data_dir.display());
    Ok(())
}

fn describe(step: &Value) -> String {
    let ok = if step["ok"] == true { "ok" } else { "FAILED" };
    let detail = match step["kind"].as_str() {
        Some("train" | "finetune") => {
            format!(
                "{} from run {} (validation loss {:.3})",
                step["model"].as_str().unwrap_or("?"),
                step["run"].as_str().unwrap_or("?"),
                step["validation_loss"].as_f64().unwrap_or(f64::NAN)
            )
        }
        Some("evaluate") => format!(
            "held-out perplexity on {}: candidate {} {:.2}, production {} {:.2}",
            step["dataset"].as_str().unwrap_or("?"),
            step["candidate"]["model"].as_str().unwrap_or("?"),
            step["candidate"]["perplexity"].as_f64().unwrap_or(f64::NAN),
            step["production"]["model"].as_str().unwrap_or("?"),
            step["production"]["perplexity"].as_f64().unwrap_or(f64::NAN)
        ),
        Some("gate") => format!("{} -> {}", step["condition"].as_str().unwrap_or("?"), step["passed"]),
        Some("canary") => format!(
            "{}: {} ; stable {} vs candidate {} ; evidence {}",
            step["decision"].as_str().unwrap_or("?"),
            step["reason"].as_str().unwrap_or(""),
            step["arms"]["stable"],
            step["arms"]["candidate"],
            step["evidence"]
        ),
        Some("notify") => format!("{} answered {}", step["url"].as_str().unwrap_or("?"), step["status"]),
        _ => step.to_string(),
    };
    let error = step["error"].as_str().map(|e| format!(" error: {e}")).unwrap_or_default();
    format!("{ok} in {}s: {detail}{error}", step["seconds"])
}

async fn share_liked(liked: &tokio::sync::Mutex<Vec<(bool, bool)>>, twain: bool) -> f64 {
    let liked = liked.lock().await;
    let judged: Vec<bool> = liked.iter().filter(|(t, _)| *t == twain).map(|(_, up)| *up).collect();
    judged.iter().filter(|up| **up).count() as f64 / judged.len().max(1) as f64
}

async fn wait_for_run(api: &Api, id: &str) -> anyhow::Result<Value> {
    loop {
        let run = api.get(&format!("/api/v1/runs/{id}")).await?;
        match run["state"].as_str() {
            Some("succeeded") => return Ok(run),
            Some("dead" | "cancelled") => bail!("run {id} ended {}: {}", run["state"], run["last_error"]),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Waits until the monitors have judged a full window since their baseline.
async fn wait_drift_ready(api: &Api, scale: &Scale) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let drift = api.get("/api/v1/deployments/bard/drift").await?;
        let status = &drift["status"];
        let observed = status["observed"].as_u64().unwrap_or(0) as usize;
        if status["baseline_ready"] == true && observed >= scale.baseline + scale.window {
            return Ok(drift);
        }
        if Instant::now() > deadline {
            bail!("the drift monitors did not get ready: {drift}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Accepts webhook POSTs and checks `x-factory-signature` (HMAC-SHA256 of the body).
async fn receive_webhooks(
    listener: tokio::net::TcpListener,
    secret: String,
    received: Arc<tokio::sync::Mutex<Vec<(bool, Value)>>>,
) {
    use hmac::Mac;
    while let Ok((mut socket, _)) = listener.accept().await {
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 8192];
        let (head, body) = loop {
            let Ok(read) = socket.read(&mut chunk).await else { break (String::new(), Vec::new()) };
            if read == 0 {
                break (String::new(), Vec::new());
            }
            buffer.extend_from_slice(&chunk[..read]);
            let Some(split) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = String::from_utf8_lossy(&buffer[..split]).to_string();
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if buffer.len() >= split + 4 + length {
                break (head, buffer[split + 4..split + 4 + length].to_vec());
            }
        };
        let signature = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("x-factory-signature:").map(|v| v.trim().to_string()))
            .unwrap_or_default();
        let verified = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
            .map(|mut mac| {
                mac.update(&body);
                format!("sha256={}", hex::encode(mac.finalize().into_bytes())) == signature
            })
            .unwrap_or(false);
        received.lock().await.push((verified, serde_json::from_slice(&body).unwrap_or_default()));
        let _ = socket.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
    }
}
