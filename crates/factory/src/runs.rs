//! `factory run create --follow`: start a training run and watch it, step by step, with a
//! progress bar showing loss and throughput, until it succeeds, fails or is cancelled.

use std::time::Duration;

use anyhow::{anyhow, Context};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{json, Value};

use crate::cli::Remote;
use crate::client::call;

pub struct CreateArgs {
    pub kind: String,
    pub dataset: String,
    pub seed: u64,
    pub vocab_size: usize,
    pub preset: String,
    pub train: String,
    pub follow: bool,
    pub tenant: Option<String>,
}

pub async fn create(remote: &Remote, args: CreateArgs) -> anyhow::Result<()> {
    let (dataset, version) = args
        .dataset
        .split_once('@')
        .and_then(|(name, version)| Some((name.to_string(), version.parse::<i64>().ok()?)))
        .ok_or_else(|| anyhow!("--dataset: expected NAME@VERSION, e.g. plays@1"))?;
    let train: Value = serde_json::from_str(&args.train).context("--train is not valid JSON")?;
    let mut body = json!({
        "kind": args.kind, "dataset": dataset, "version": version, "seed": args.seed,
        "tokenizer": { "vocab_size": args.vocab_size }, "train": train,
    });
    if args.kind == "pretrain" {
        body["model"] = json!({ "preset": args.preset });
    }
    if let Some(tenant) = &args.tenant {
        body["tenant"] = json!(tenant);
    }
    let run = call(remote, Method::POST, "/api/v1/runs", Some(body)).await?;
    let id = run["id"].as_str().unwrap_or_default().to_string();
    if !args.follow {
        println!("{}", serde_json::to_string_pretty(&run)?);
        return Ok(());
    }
    eprintln!("run {id} queued");
    let steps = run["payload"]["train"]["steps"].as_u64().filter(|_| args.kind == "pretrain");
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
                    bar.set_message(format!(
                        "loss {:.3}  lr {:.2e}  {:.0} tokens/s",
                        row["metrics"]["loss"].as_f64().unwrap_or(f64::NAN),
                        row["metrics"]["learning_rate"].as_f64().unwrap_or(f64::NAN),
                        row["metrics"]["tokens_per_second"].as_f64().unwrap_or(0.0)
                    ));
                }
                Some("eval") => bar.println(format!(
                    "step {step}: validation loss {:.3}, perplexity {:.1}",
                    row["metrics"]["validation_loss"].as_f64().unwrap_or(f64::NAN),
                    row["metrics"]["perplexity"].as_f64().unwrap_or(f64::NAN)
                )),
                _ => {}
            }
        }
        let state = metrics["state"].as_str().unwrap_or_default().to_string();
        if matches!(state.as_str(), "succeeded" | "dead" | "cancelled") {
            bar.finish_and_clear();
            let run = call(remote, Method::GET, &format!("/api/v1/runs/{id}"), None).await?;
            println!("{}", serde_json::to_string_pretty(&run)?);
            return match state.as_str() {
                "succeeded" => Ok(()),
                other => Err(anyhow!("run {id} ended {other}: {}", run["last_error"].as_str().unwrap_or(""))),
            };
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
