//! `factory run create --follow`, `factory train --wait` and `factory run logs -f`: start a
//! training run and watch it, step by step, with a progress bar showing loss and throughput,
//! until it succeeds, fails or is cancelled.

use std::time::Duration;

use anyhow::{anyhow, Context};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{json, Value};

use crate::args::{CreateRunArgs, Remote, TrainArgs};
use crate::client::call;

pub async fn create(args: &CreateRunArgs) -> anyhow::Result<()> {
    let remote = &args.remote;
    let (dataset, version) = dataset_reference(&args.dataset)?;
    let train: Value = serde_json::from_str(&args.train).context("--train is not valid JSON")?;
    let mut body = json!({
        "kind": args.kind, "dataset": dataset, "version": version, "seed": args.seed,
        "tokenizer": { "vocab_size": args.vocab_size }, "train": train,
    });
    if args.kind == "pretrain" {
        body["model"] = json!({ "preset": args.preset });
    }
    if let Some(tenant) = args.tenant.name() {
        body["tenant"] = json!(tenant);
    }
    let run = call(remote, Method::POST, "/api/v1/runs", Some(body)).await?;
    let id = run["id"].as_str().unwrap_or_default().to_string();
    if !args.follow {
        println!("{}", serde_json::to_string_pretty(&run)?);
        return Ok(());
    }
    eprintln!("run {id} queued");
    follow(remote, &id).await.map(|_| ())
}

/// Shows a run's progress (a bar over its steps, validation lines above it) until it ends;
/// prints the final run and fails unless it succeeded.
pub async fn follow(remote: &Remote, id: &str) -> anyhow::Result<Value> {
    let run = call(remote, Method::GET, &format!("/api/v1/runs/{id}"), None).await?;
    let trains = run["kind"].as_str() != Some("training.tokenizer");
    let steps = run["payload"]["train"]["steps"].as_u64().filter(|_| trains);
    let bar = match steps {
        Some(steps) => ProgressBar::new(steps),
        None => ProgressBar::new_spinner(),
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut last_step = 0i64;
    loop {
        let metrics = call(remote, Method::GET, &format!("/api/v1/runs/{id}/metrics?after={last_step}"), None).await?;
        for row in metrics["metrics"].as_array().into_iter().flatten() {
            let step = row["step"].as_i64().unwrap_or(0);
            match row["kind"].as_str() {
                Some("train") => {
                    last_step = last_step.max(step);
                    bar.set_position(step as u64);
                    bar.set_message(step_line(row));
                }
                Some("eval") => bar.println(eval_line(row)),
                _ => {}
            }
        }
        let state = metrics["state"].as_str().unwrap_or_default().to_string();
        if matches!(state.as_str(), "succeeded" | "dead" | "cancelled") {
            bar.finish_and_clear();
            let run = call(remote, Method::GET, &format!("/api/v1/runs/{id}"), None).await?;
            println!("{}", serde_json::to_string_pretty(&run)?);
            return match state.as_str() {
                "succeeded" => Ok(run),
                other => Err(anyhow!("run {id} ended {other}: {}", run["last_error"].as_str().unwrap_or(""))),
            };
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn step_line(row: &Value) -> String {
    format!(
        "loss {:.3}  lr {:.2e}  {:.0} tokens/s",
        row["metrics"]["loss"].as_f64().unwrap_or(f64::NAN),
        row["metrics"]["learning_rate"].as_f64().unwrap_or(f64::NAN),
        row["metrics"]["tokens_per_second"].as_f64().unwrap_or(0.0)
    )
}

fn eval_line(row: &Value) -> String {
    format!(
        "step {}: validation loss {:.3}, perplexity {:.1}",
        row["step"],
        row["metrics"]["validation_loss"].as_f64().unwrap_or(f64::NAN),
        row["metrics"]["perplexity"].as_f64().unwrap_or(f64::NAN)
    )
}

/// `factory run logs ID [-f]`: one line per recorded step and validation; with `follow`,
/// keeps printing until the run ends.
pub async fn logs(remote: &Remote, id: &str, follow: bool) -> anyhow::Result<()> {
    let mut last_step = 0i64;
    loop {
        let metrics = call(remote, Method::GET, &format!("/api/v1/runs/{id}/metrics?after={last_step}"), None).await?;
        for row in metrics["metrics"].as_array().into_iter().flatten() {
            let step = row["step"].as_i64().unwrap_or(0);
            last_step = last_step.max(step);
            match row["kind"].as_str() {
                Some("train") => println!("step {step}: {}", step_line(row)),
                Some("eval") => println!("{}", eval_line(row)),
                Some(other) => println!("step {step}: {other} {}", row["metrics"]),
                None => {}
            }
        }
        let state = metrics["state"].as_str().unwrap_or_default();
        if !follow || matches!(state, "succeeded" | "dead" | "cancelled") {
            println!("run {id} is {state}");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn dataset_reference(text: &str) -> anyhow::Result<(String, i64)> {
    text.split_once('@')
        .and_then(|(name, version)| Some((name.to_string(), version.parse::<i64>().ok()?)))
        .ok_or_else(|| anyhow!("--dataset: expected NAME@VERSION, e.g. plays@1"))
}

/// Reads an eval set file: JSON lines of `{"prompt": ..., "expected": ...}`.
fn read_eval_set(path: &std::path::Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut items = Vec::new();
    for (index, line) in text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()) {
        let item: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JSON object", path.display(), index + 1))?;
        if !item["prompt"].is_string() || !item["expected"].is_string() {
            return Err(anyhow!("{}:{}: needs string fields prompt and expected", path.display(), index + 1));
        }
        items.push(json!({ "prompt": item["prompt"], "expected": item["expected"] }));
    }
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("eval").to_string();
    Ok(json!({ "name": name, "items": items }))
}

/// `factory train`: a pretrain (or, with --base, finetune) run that registers its model as
/// the next version of --name.
pub async fn train(args: &TrainArgs) -> anyhow::Result<()> {
    let remote = &args.remote;
    let (dataset, version) = dataset_reference(&args.dataset)?;
    // --config holds any of model, train, tokenizer and eval_sets; flags win over it.
    let mut body = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str::<Value>(&text).with_context(|| format!("{} is not valid JSON", path.display()))?
        }
        None => json!({}),
    };
    if !body.is_object() {
        return Err(anyhow!("--config must hold a JSON object"));
    }
    body["kind"] = json!(if args.base.is_some() { "finetune" } else { "pretrain" });
    body["dataset"] = json!(dataset);
    body["version"] = json!(version);
    body["seed"] = json!(args.seed);
    body["register"] = json!({ "name": args.name, "intended_use": args.intended_use });
    if let Some(base) = &args.base {
        body["base"] = json!(base);
    } else if args.preset.is_some() || body.get("model").is_none() {
        body["model"] = json!({ "preset": args.preset.as_deref().unwrap_or("tiny") });
    }
    if let Some(tokenizer) = &args.tokenizer {
        body["tokenizer_from"] = json!(tokenizer);
    }
    if let Some(vocab_size) = args.vocab_size {
        body["tokenizer"] = json!({ "vocab_size": vocab_size });
    }
    if body.get("train").is_none() {
        body["train"] = json!({});
    }
    if let Some(steps) = args.max_steps {
        body["train"]["steps"] = json!(steps);
    }
    if let Some(seconds) = args.max_seconds {
        body["train"]["max_seconds"] = json!(seconds);
    }
    if let Some(path) = &args.eval_set {
        body["eval_sets"] = json!([read_eval_set(path)?]);
    }
    if let Some(tenant) = args.tenant.name() {
        body["tenant"] = json!(tenant);
    }
    let run = call(remote, Method::POST, "/api/v1/runs", Some(body)).await?;
    let id = run["id"].as_str().unwrap_or_default().to_string();
    if !args.wait {
        println!("{}", serde_json::to_string_pretty(&run)?);
        eprintln!("run {id} queued; it registers {} when it succeeds (follow it: factory run logs -f {id})", args.name);
        return Ok(());
    }
    eprintln!("run {id} queued");
    let finished = follow(remote, &id).await?;
    let model = &finished["result"]["model"];
    eprintln!("registered {}@{}", model["name"].as_str().unwrap_or_default(), model["version"]);
    Ok(())
}
