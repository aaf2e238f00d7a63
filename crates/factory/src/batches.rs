//! `factory batch run|show|cancel`: a batch over a dataset version, followed with a progress
//! bar over its requests until it ends; the answers land as a new dataset version.

use std::time::Duration;

use anyhow::{anyhow, Context};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{json, Value};

use crate::args::{BatchRunArgs, Remote};
use crate::client::call;

pub async fn run(args: &BatchRunArgs) -> anyhow::Result<()> {
    let (dataset, version) = args
        .dataset
        .split_once('@')
        .and_then(|(name, version)| Some((name.to_string(), version.parse::<i64>().ok()?)))
        .ok_or_else(|| anyhow!("--dataset: expected NAME@VERSION, e.g. reviews@1"))?;
    let template = std::fs::read_to_string(&args.template)
        .with_context(|| format!("cannot read the template {}", args.template.display()))?;
    let request: Value = serde_json::from_str(&args.request).context("--request is not valid JSON")?;
    if !request.is_object() {
        return Err(anyhow!("--request must be a JSON object"));
    }
    let output = args.output.clone().unwrap_or_else(|| format!("{dataset}-answers"));
    let body = json!({
        "dataset": dataset, "version": version, "template": template, "output": output, "request": request,
    });
    let path = format!("/api/v1/deployments/{}/batches", args.deployment);
    let batch = call(&args.remote, Method::POST, &path, Some(body)).await?;
    let id = batch["id"].as_str().unwrap_or_default().to_string();
    if args.no_wait {
        println!("{}", serde_json::to_string_pretty(&batch)?);
        return Ok(());
    }
    eprintln!("batch {id} queued");
    let finished = follow(&args.remote, &id).await?;
    println!("{}", serde_json::to_string_pretty(&finished)?);
    match finished["status"].as_str() {
        Some("completed") => {
            let made = &finished["output_dataset"];
            eprintln!(
                "answers are {}@{} ({} rows)",
                made["dataset"].as_str().unwrap_or(""),
                made["version"],
                made["rows"]
            );
            Ok(())
        }
        other => Err(anyhow!("batch {id} ended {}", other.unwrap_or("?"))),
    }
}

/// Polls a batch, a bar over its requests, until it reaches a state it never leaves.
async fn follow(remote: &Remote, id: &str) -> anyhow::Result<Value> {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} requests  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    loop {
        let batch = call(remote, Method::GET, &format!("/v1/batches/{id}"), None).await?;
        let counts = &batch["request_counts"];
        bar.set_length(counts["total"].as_u64().unwrap_or(0));
        bar.set_position(counts["completed"].as_u64().unwrap_or(0) + counts["failed"].as_u64().unwrap_or(0));
        let status = batch["status"].as_str().unwrap_or_default();
        bar.set_message(format!("{status}, {} failed", counts["failed"]));
        if matches!(status, "completed" | "failed" | "expired" | "cancelled") {
            bar.finish_and_clear();
            return Ok(batch);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn show(remote: &Remote, id: &str) -> anyhow::Result<()> {
    let batch = call(remote, Method::GET, &format!("/v1/batches/{id}"), None).await?;
    println!("{}", serde_json::to_string_pretty(&batch)?);
    Ok(())
}

pub async fn cancel(remote: &Remote, id: &str) -> anyhow::Result<()> {
    let batch = call(remote, Method::POST, &format!("/v1/batches/{id}/cancel"), None).await?;
    println!("{}", serde_json::to_string_pretty(&batch)?);
    Ok(())
}
