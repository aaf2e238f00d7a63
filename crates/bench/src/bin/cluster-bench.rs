//! The measurements of `bench/cluster.sh`, each printing one JSON line:
//!
//! - `decisions`: what one shared limit decision costs (the gateway's Redis script: a rate and a
//!   budget read, decided and charged atomically), p50/p99 in microseconds, sequential and with
//!   concurrent callers, beside a bare Redis PING on the same connection kind.
//! - `load`: open-loop chat completions at a fixed rate spread round-robin over gateway URLs;
//!   achieved rate, p50/p99 latency and errors (a 429 is an error here: the limits are set so
//!   none is due).
//! - `job-start`: jobs of 1 ms enqueued one after another; from enqueue to the job running on
//!   its executor (for Slurm, the node's step holding the lease) and to its success.
//! - `events`: governed changes (API keys created) at a fixed rate while a NATS subscriber on the
//!   event subjects records when each change's event arrives; published events per second and
//!   the lag from the change's answer to its event.
//!
//!   cargo run --release -p factory-bench --bin cluster-bench -- decisions --redis redis://127.0.0.1:6379

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use factory_cluster::shared_limits::{Budget, Rate, SharedLimits};
use futures::StreamExt;
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Decisions {
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        #[arg(long, default_value_t = 20_000)]
        n: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    Load {
        /// Gateway base URLs (`http://host:port`), used in turn.
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        #[arg(long)]
        key: String,
        #[arg(long)]
        model: String,
        #[arg(long)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    JobStart {
        #[command(flatten)]
        factory: Factory,
        #[arg(long, default_value_t = 10)]
        n: usize,
    },
    Events {
        /// Its key must be allowed to create keys in the tenant.
        #[command(flatten)]
        factory: Factory,
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats: String,
        #[arg(long, default_value = "factory")]
        subject_prefix: String,
        #[arg(long)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// Deletes the stream the `events` measurement's factory created.
    DeleteStream {
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats: String,
        #[arg(long)]
        stream: String,
    },
}

/// The factory a measurement talks to: its API, a key and the tenant it works in.
#[derive(Debug, clap::Args)]
struct Factory {
    #[arg(long)]
    api: String,
    #[arg(long)]
    key: String,
    #[arg(long)]
    tenant: String,
}

/// The `q` quantile (nearest rank) of `values`, sorted here.
fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

fn micros(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1e6
}

async fn decisions(redis: &str, n: usize, concurrency: usize) -> anyhow::Result<serde_json::Value> {
    let limits = Arc::new(SharedLimits::new(redis)?);
    let scope = format!("bench-{}", std::process::id());
    // Generous limits: every decision admits, so each is the full read-decide-charge script.
    let rates = Arc::new(vec![Rate { key: "requests".into(), per_minute: u32::MAX, units: 1.0 }]);
    let budget = Arc::new(Budget { key: "budget".into(), amount: 1e12, window_secs: 86_400 });
    limits.ping().await?;
    let mut pings = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        limits.ping().await?;
        pings.push(micros(started));
    }
    let mut sequential = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let wait = limits.admit(&scope, &rates, Some(&budget)).await?;
        anyhow::ensure!(wait.is_none(), "a decision under generous limits refused");
        sequential.push(micros(started));
    }
    let started_all = Instant::now();
    let per_caller = n / concurrency;
    let callers = (0..concurrency).map(|_| {
        let (limits, rates, budget, scope) = (limits.clone(), rates.clone(), budget.clone(), scope.clone());
        tokio::spawn(async move {
            let mut taken = Vec::with_capacity(per_caller);
            for _ in 0..per_caller {
                let started = Instant::now();
                limits.admit(&scope, &rates, Some(&budget)).await?;
                taken.push(micros(started));
            }
            anyhow::Ok(taken)
        })
    });
    let mut concurrent = Vec::new();
    for caller in futures::future::join_all(callers).await {
        concurrent.extend(caller??);
    }
    let concurrent_per_s = concurrent.len() as f64 / started_all.elapsed().as_secs_f64();
    Ok(json!({
        "measure": "decisions", "n": n, "concurrency": concurrency,
        "ping_us": { "p50": quantile(&mut pings, 0.5), "p99": quantile(&mut pings, 0.99) },
        "decision_us": { "p50": quantile(&mut sequential, 0.5), "p99": quantile(&mut sequential, 0.99) },
        "concurrent_decision_us": { "p50": quantile(&mut concurrent, 0.5), "p99": quantile(&mut concurrent, 0.99) },
        "concurrent_decisions_per_s": concurrent_per_s,
    }))
}

async fn load(
    targets: &[String],
    key: &str,
    model: &str,
    rate: f64,
    seconds: f64,
) -> anyhow::Result<serde_json::Value> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).timeout(Duration::from_secs(30)).build()?;
    let total = (rate * seconds).round() as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let body = json!({ "model": model, "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 1 });
    let started = Instant::now();
    let mut requests = Vec::with_capacity(total);
    for i in 0..total {
        // Open loop: each request leaves at its time whether or not earlier ones have answered.
        tokio::time::sleep_until((started + interval * i as u32).into()).await;
        let url = format!("{}/v1/chat/completions", targets[i % targets.len()]);
        let request = client.post(url).bearer_auth(key).json(&body);
        requests.push(tokio::spawn(async move {
            let sent = Instant::now();
            let answered = request.send().await;
            let ok = match answered {
                Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
                Err(_) => false,
            };
            (ok, sent.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    let mut errors = 0;
    for request in requests {
        let (ok, ms) = request.await?;
        if ok {
            latencies.push(ms);
        } else {
            errors += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(json!({
        "measure": "load", "gateways": targets.len(), "offered_per_s": rate,
        "achieved_per_s": latencies.len() as f64 / elapsed, "errors": errors,
        "p50_ms": quantile(&mut latencies, 0.5), "p99_ms": quantile(&mut latencies, 0.99),
    }))
}

async fn job_start(factory: &Factory, n: usize) -> anyhow::Result<serde_json::Value> {
    let Factory { api, key, tenant } = factory;
    let client = reqwest::Client::new();
    let (mut to_running, mut to_succeeded) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let enqueued = Instant::now();
        let created: serde_json::Value = client
            .post(format!("{api}/api/v1/tenants/{tenant}/jobs"))
            .bearer_auth(key)
            .json(&json!({ "kind": "platform.sleep", "payload": { "millis": 1 } }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let id = created["id"].as_str().ok_or_else(|| anyhow::anyhow!("no job id in {created}"))?.to_string();
        let mut running = None;
        loop {
            let job: serde_json::Value =
                client.get(format!("{api}/api/v1/jobs/{id}")).bearer_auth(key).send().await?.json().await?;
            // On Slurm the job is running once the node's step holds the lease (`slurm:ID@NODE`);
            // before that the submitter holds it while Slurm queues the step.
            let worker = job["worker"].as_str().unwrap_or_default();
            let on_executor = !worker.starts_with("slurm:") || worker.contains('@');
            if running.is_none() && job["state"] == "running" && on_executor {
                running = Some(enqueued.elapsed().as_secs_f64() * 1000.0);
            }
            match job["state"].as_str() {
                Some("succeeded") => {
                    let done = enqueued.elapsed().as_secs_f64() * 1000.0;
                    to_running.push(running.unwrap_or(done));
                    to_succeeded.push(done);
                    break;
                }
                Some("queued" | "running") => {}
                other => anyhow::bail!("job {id} ended {other:?}: {job}"),
            }
            anyhow::ensure!(enqueued.elapsed() < Duration::from_secs(300), "job {id} did not finish in 300 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(json!({
        "measure": "job-start", "n": n,
        "to_running_ms": { "p50": quantile(&mut to_running, 0.5), "max": quantile(&mut to_running, 1.0) },
        "to_succeeded_ms": { "p50": quantile(&mut to_succeeded, 0.5), "max": quantile(&mut to_succeeded, 1.0) },
    }))
}

async fn events(
    factory: &Factory,
    nats: &str,
    prefix: &str,
    rate: f64,
    seconds: f64,
) -> anyhow::Result<serde_json::Value> {
    let Factory { api, key, tenant } = factory;
    let nats = async_nats::connect(nats).await?;
    let mut subscription = nats.subscribe(format!("{prefix}.events.{tenant}.>")).await?;
    nats.flush().await?;
    // When each event arrived, by the id of the key its change created.
    let arrivals = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<String, Instant>::new()));
    let first_seen = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let listener = {
        let (arrivals, first_seen) = (arrivals.clone(), first_seen.clone());
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                let now = Instant::now();
                let Ok(event) = serde_json::from_slice::<serde_json::Value>(&message.payload) else { continue };
                let Some(id) = event["payload"]["key"].as_str() else { continue };
                first_seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_or_insert(now);
                arrivals.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id.to_string(), now);
            }
        })
    };
    let client = reqwest::Client::new();
    let total = (rate * seconds).round() as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let mut changes = Vec::with_capacity(total);
    for i in 0..total {
        tokio::time::sleep_until((started + interval * i as u32).into()).await;
        let request =
            client.post(format!("{api}/api/v1/tenants/{tenant}/keys")).bearer_auth(key).json(&json!({ "role": "app" }));
        changes.push(tokio::spawn(async move {
            let answer: serde_json::Value = request.send().await?.error_for_status()?.json().await?;
            let id = answer["id"].as_str().ok_or_else(|| anyhow::anyhow!("no key id in {answer}"))?.to_string();
            anyhow::Ok((id, Instant::now()))
        }));
    }
    let mut committed = Vec::with_capacity(total);
    for change in changes {
        committed.push(change.await??);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrivals.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len() < committed.len()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    listener.abort();
    let arrivals = arrivals.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut lags = Vec::new();
    let mut last = None::<Instant>;
    for (id, answered) in &committed {
        if let Some(arrived) = arrivals.get(id) {
            lags.push(arrived.saturating_duration_since(*answered).as_secs_f64() * 1000.0);
            last = Some(last.map_or(*arrived, |l: Instant| l.max(*arrived)));
        }
    }
    let first = first_seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).unwrap_or(started);
    let span = last.map_or(f64::NAN, |last| last.duration_since(first).as_secs_f64());
    Ok(json!({
        "measure": "events", "offered_per_s": rate, "changes": committed.len(), "events_seen": lags.len(),
        "missing": committed.len() - lags.len(),
        "published_per_s": lags.len() as f64 / span,
        "lag_ms": { "p50": quantile(&mut lags.clone(), 0.5), "p99": quantile(&mut lags, 0.99) },
    }))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let line = match Args::parse().command {
        Command::Decisions { redis, n, concurrency } => decisions(&redis, n, concurrency).await?,
        Command::Load { targets, key, model, rate, seconds } => load(&targets, &key, &model, rate, seconds).await?,
        Command::JobStart { factory, n } => job_start(&factory, n).await?,
        Command::Events { factory, nats, subject_prefix, rate, seconds } => {
            events(&factory, &nats, &subject_prefix, rate, seconds).await?
        }
        Command::DeleteStream { nats, stream } => {
            let jetstream = async_nats::jetstream::new(async_nats::connect(nats).await?);
            jetstream.delete_stream(&stream).await?;
            json!({ "deleted": stream })
        }
    };
    println!("{line}");
    Ok(())
}
