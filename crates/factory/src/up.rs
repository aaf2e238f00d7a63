//! `factory up`: load and validate the configuration, open everything, serve until SIGTERM or
//! Ctrl-C, then drain and exit 0.

use factory_config::{Config, FlagOverrides};
use factory_telemetry::{TelemetrySettings, DEFAULT_FILTER};

use crate::args::{UpArgs, WorkerArgs};

/// The configuration `up` (and `doctor`) run with: the file, the environment, the flags.
fn configuration(args: UpArgs) -> anyhow::Result<Config> {
    let flags = FlagOverrides {
        data_dir: args.data_dir,
        listen: args.listen,
        database_url: args.database_url,
        jurisdiction: args.jurisdiction,
        roles: args.role,
    };
    Ok(Config::load(args.config.as_deref(), std::env::vars(), &flags)?)
}

/// `factory doctor`: probes what the configuration connects to and prints a line per
/// dependency; fails when any of them is wrong.
pub async fn doctor(args: UpArgs) -> anyhow::Result<()> {
    let config = configuration(args)?;
    let checks = factory_server::doctor::check(&config).await;
    for check in &checks {
        let verdict = match check.ok {
            Some(true) => "ok",
            Some(false) => "FAIL",
            None => "-",
        };
        println!("{verdict:<5}{:<14}{}", check.name, check.detail);
    }
    let failed: Vec<&str> = checks.iter().filter(|check| check.ok == Some(false)).map(|check| check.name).collect();
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} failed: {}", if failed.len() == 1 { "a check" } else { "checks" }, failed.join(", "))
    }
}

/// `factory worker --job ID`: one job in a Slurm step, through the same factory as the
/// processes that serve it.
pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let config = configuration(args.up)?;
    let telemetry = factory_telemetry::init(&TelemetrySettings {
        json_logs: config.server.json_logs,
        otlp_endpoint: config.server.otlp_endpoint.clone(),
        service_name: "factory-worker".to_string(),
        filter: DEFAULT_FILTER.to_string(),
    })?;
    let opened = factory_server::open_beside(config).await?;
    let outcome = factory_server::run_slurm_step(opened.state, &args.job).await;
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    outcome
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let config = configuration(args)?;
    // Held until `serve` returns: dropping it stops exporting spans.
    let telemetry = factory_telemetry::init(&TelemetrySettings {
        json_logs: config.server.json_logs,
        otlp_endpoint: config.server.otlp_endpoint.clone(),
        service_name: "factory".to_string(),
        filter: DEFAULT_FILTER.to_string(),
    })?;
    let listen = config.listen;
    let data_dir = config.data_dir.clone();
    let opened = factory_server::open(config).await?;
    if let Some(secret) = &opened.new_admin_key {
        println!(
            "Created the platform admin. Its API key is shown once and saved to {}:",
            data_dir.join("admin.key").display()
        );
        println!("  {secret}");
    }
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let address = listener.local_addr()?;
    // Tests and scripts read this line to learn the port when listening on port 0.
    println!("factory listening on http://{address}");
    tracing::info!(%address, data_dir = %data_dir.display(), "factory is up");
    factory_server::serve(opened.state, listener, shutdown_signal()).await?;
    tracing::info!("factory stopped");
    // The last spans (the drain's included) are sent now. Flushing blocks on the collector, so
    // it runs off the async workers; a collector that is down costs a warning, not the exit code.
    match tokio::task::spawn_blocking(move || telemetry.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "spans may be lost"),
        Err(error) => tracing::warn!(%error, "cannot flush the exported spans"),
    }
    Ok(())
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
