//! `factory-bench`: the spine's benchmarks, run on this machine and printed as one table.
//!
//! - authorization decision latency (p50/p99) for a realistic mix of requests;
//! - audited writes per second (change + audit record + outbox event, durable) on SQLite and on
//!   PostgreSQL, with concurrent writers;
//! - `factory audit verify` records per second on the log those writes produced;
//! - the latency of a governed write over HTTP (authorization in the request path) and the
//!   server's idle resident memory.
//!
//! Run it in release: `cargo run --release -p factory-bench`. No peer covers these paths, so the
//! figures are absolute; they are recorded in the issue notes to compare one run with the next.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::Parser;
use factory_authz::CedarAuthorizer;
use factory_core::{AccessRequest, Action, Classification, PolicyDecisionPoint, Principal, Resource, Role, TenantName};
use factory_store::{Event, Store};

#[derive(Debug, Parser)]
struct Args {
    /// Authorization decisions to time
    #[arg(long, default_value_t = 50_000)]
    decisions: usize,
    /// Seconds each write benchmark runs
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent writers
    #[arg(long, default_value_t = 8)]
    writers: usize,
    /// PostgreSQL server for the PostgreSQL figures (a fresh database is created and dropped)
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    /// The factory binary (defaults to the one beside this benchmark)
    #[arg(long)]
    factory_bin: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let factory_bin = match &args.factory_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("factory"),
    };
    let (p50, p99, mean) = authorization_latency(args.decisions)?;
    println!(
        "authz decision (in-process, {} requests): p50 {p50:.1} µs, p99 {p99:.1} µs, mean {mean:.1} µs",
        args.decisions
    );

    let dir = tempfile::tempdir()?;
    let sqlite_url = format!("sqlite://{}?mode=rwc", dir.path().join("metadata.db").display());
    let sqlite = audited_writes(&sqlite_url, args.writers, args.seconds).await?;
    println!("audited writes, SQLite: {:.0} writes/s ({} writes, {} writers)", sqlite.0, sqlite.1, args.writers);

    match create_postgres_database(&args.postgres_url).await {
        Ok((database_url, drop_database)) => {
            let postgres = audited_writes(&database_url, args.writers, args.seconds).await?;
            println!(
                "audited writes, PostgreSQL: {:.0} writes/s ({} writes, {} writers)",
                postgres.0, postgres.1, args.writers
            );
            drop_database.await?;
        }
        Err(error) => println!("audited writes, PostgreSQL: SKIPPED ({error})"),
    }

    if factory_bin.exists() {
        let verify = verify_speed(&factory_bin, dir.path()).await?;
        println!("audit verify: {verify}");
        let (p50, p99, rss) = http_and_rss(&factory_bin).await?;
        println!("governed write over HTTP (POST /api/v1/tenants, sequential): p50 {p50:.2} ms, p99 {p99:.2} ms");
        println!("server RSS idle: {:.1} MiB", rss as f64 / 1024.0);
    } else {
        println!("audit verify, HTTP and RSS: SKIPPED (no factory binary at {})", factory_bin.display());
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn authorization_latency(count: usize) -> anyhow::Result<(f64, f64, f64)> {
    let authorizer = CedarAuthorizer::with_defaults()?;
    let tenants: Vec<TenantName> = (0..8).map(|i| TenantName::new(format!("t{i}"))).collect::<Result<_, _>>()?;
    let roles = [Role::Admin, Role::Steward, Role::Engineer, Role::App, Role::Auditor];
    let mut requests = Vec::with_capacity(count);
    for i in 0..count {
        let principal = Principal {
            id: format!("key_{i}"),
            tenant: if i % 17 == 0 { None } else { Some(tenants[i % tenants.len()].clone()) },
            role: roles[i % roles.len()],
        };
        let owner = &tenants[(i / 3) % tenants.len()];
        let (action, mut resource) = match i % 5 {
            0 => (Action::TenantRead, Resource::tenant(owner)),
            1 => (Action::KeyCreate, Resource::tenant(owner)),
            2 => (Action::JobEnqueue, Resource::job(&format!("job_{i}"), owner)),
            3 => (Action::AuditRead, Resource::audit_log()),
            _ => (Action::KeyRevoke, Resource::api_key(&format!("key_{i}"), Some(owner))),
        };
        if i % 7 == 0 {
            resource.classification = Classification::Secret;
        }
        requests.push(AccessRequest::new(&principal, action, resource));
    }
    let mut samples = Vec::with_capacity(count);
    let mut allowed = 0;
    for request in &requests {
        let started = Instant::now();
        let decision = authorizer.decide(request);
        samples.push(started.elapsed().as_secs_f64() * 1e6);
        allowed += usize::from(decision.is_allowed());
    }
    if allowed == 0 || allowed == count {
        return Err(anyhow!("the request mix should contain both allows and denies"));
    }
    samples.sort_by(f64::total_cmp);
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    Ok((percentile(&samples, 0.5), percentile(&samples, 0.99), mean))
}

/// Governed tenant creations from `writers` tasks for `seconds`: each is a durable transaction
/// with the change, its audit record and its outbox event.
async fn audited_writes(url: &str, writers: usize, seconds: u64) -> anyhow::Result<(f64, u64)> {
    let store = Store::open(url).await?;
    let authorizer = Arc::new(CedarAuthorizer::with_defaults()?);
    let admin = Principal { id: "key_bench".to_string(), tenant: None, role: Role::Admin };
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let store = store.clone();
        let authorizer = authorizer.clone();
        let admin = admin.clone();
        tasks.push(tokio::spawn(async move {
            let mut written = 0u64;
            while Instant::now() < deadline {
                let name = TenantName::new(format!("w{writer}-{written}"))?;
                let request = AccessRequest::new(&admin, Action::TenantCreate, Resource::platform());
                let mut change = store.begin_change(authorizer.as_ref(), request, "bench").await?;
                change.create_tenant(&name, &[factory_core::Jurisdiction::new("eu")?]).await?;
                let details = serde_json::json!({ "tenant": name });
                change.commit(details.clone(), Event::new("tenant.created", details)).await?;
                written += 1;
            }
            anyhow::Ok(written)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    store.close().await;
    Ok((total as f64 / elapsed, total))
}

async fn create_postgres_database(
    admin_url: &str,
) -> anyhow::Result<(String, impl std::future::Future<Output = anyhow::Result<()>>)> {
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(admin_url).await.context("PostgreSQL unreachable")?;
    let name = format!("factory_bench_{}", std::process::id());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await?;
    let base = admin_url.rsplit_once('/').map(|(base, _)| base).unwrap_or(admin_url);
    let url = format!("{base}/{name}");
    let drop_database = async move {
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin).await?;
        Ok(())
    };
    Ok((url, drop_database))
}

/// Turns the SQLite benchmark database into a factory data directory (the factory adds its
/// keys and signs a checkpoint at start), then times `factory audit verify` on it.
async fn verify_speed(factory_bin: &Path, data_dir: &Path) -> anyhow::Result<String> {
    let mut server = start_factory(factory_bin, data_dir)?;
    server.stop()?;
    let started = Instant::now();
    let output = Command::new(factory_bin).args(["audit", "verify", "--data-dir"]).arg(data_dir).output()?;
    let elapsed = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() {
        return Err(anyhow!("verify failed: {stdout}{}", String::from_utf8_lossy(&output.stderr)));
    }
    Ok(format!("{stdout}; whole command {elapsed:.2} s"))
}

struct RunningFactory {
    child: std::process::Child,
    url: String,
    admin_key: String,
}

impl RunningFactory {
    fn stop(&mut self) -> anyhow::Result<()> {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status()?;
        self.child.wait()?;
        Ok(())
    }
}

fn start_factory(factory_bin: &Path, data_dir: &Path) -> anyhow::Result<RunningFactory> {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(factory_bin)
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("FACTORY_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        let line = lines.next().ok_or_else(|| anyhow!("the factory exited before listening"))??;
        if let Some(url) = line.strip_prefix("factory listening on ") {
            break url.to_string();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    let admin_key = std::fs::read_to_string(data_dir.join("admin.key"))?.trim().to_string();
    Ok(RunningFactory { child, url, admin_key })
}

async fn http_and_rss(factory_bin: &Path) -> anyhow::Result<(f64, f64, u64)> {
    let dir = tempfile::tempdir()?;
    let mut server = start_factory(factory_bin, dir.path())?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id()))?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS"))?;
    let client = reqwest::Client::new();
    let mut samples = Vec::new();
    for i in 0..2000 {
        let started = Instant::now();
        let response = client
            .post(format!("{}/api/v1/tenants", server.url))
            .bearer_auth(&server.admin_key)
            .json(&serde_json::json!({ "name": format!("h{i}"), "jurisdictions": ["eu"] }))
            .send()
            .await?;
        if response.status().as_u16() != 201 {
            return Err(anyhow!("unexpected status {}", response.status()));
        }
        samples.push(started.elapsed().as_secs_f64() * 1e3);
    }
    server.stop()?;
    samples.sort_by(f64::total_cmp);
    Ok((percentile(&samples, 0.5), percentile(&samples, 0.99), rss_kib))
}
