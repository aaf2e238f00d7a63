//! `factory up`: load and validate the configuration, open everything, serve until SIGTERM or
//! Ctrl-C, then drain and exit 0.

use factory_config::{Config, FlagOverrides};
use tracing_subscriber::EnvFilter;

use crate::cli::UpArgs;

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let flags = FlagOverrides {
        data_dir: args.data_dir,
        listen: args.listen,
        database_url: args.database_url,
        jurisdiction: args.jurisdiction,
    };
    let config = Config::load(args.config.as_deref(), std::env::vars(), &flags)?;
    init_logging(config.server.json_logs);
    if config.server.otlp_endpoint.is_some() {
        anyhow::bail!("server.otlp_endpoint: OpenTelemetry export is not available in this build yet; remove the key");
    }
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
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let address = listener.local_addr()?;
    // Tests and scripts read this line to learn the port when listening on port 0.
    println!("factory listening on http://{address}");
    tracing::info!(%address, data_dir = %data_dir.display(), "factory is up");
    factory_server::serve(opened.state, listener, shutdown_signal()).await?;
    tracing::info!("factory stopped");
    Ok(())
}

fn init_logging(json: bool) {
    let filter =
        EnvFilter::try_from_env("FACTORY_LOG").unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
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
