//! `factory`: one binary that runs the whole factory (`up`) and talks to a running one.
//!
//! The binary stays thin: it parses flags (`args`), dispatches each subcommand to the command
//! module that implements it, and maps errors to exit codes (0 success, 1 failure, 2 usage, as
//! clap does). This is the top of the CLI's layers, `args` -> `client` -> commands -> here
//! (`ARCHITECTURE.md`, "The CLI's layers"), and the only module that imports the commands;
//! the test below keeps it that way.

mod api_calls;
mod args;
mod batches;
mod chat;
mod client;
mod config_file;
mod demo;
mod models;
mod runs;
mod transfer;
mod up;
mod verify;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{
    AuditCommand, BatchCommand, Cli, Command, ConfigCommand, DatasetCommand, ModelCommand, PipelineCommand, RunCommand,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Hands each subcommand to the module that implements it; every subcommand that is one API
/// call goes to `api_calls`.
async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up(args) => crate::up::run(args).await,
        Command::Doctor(args) => crate::up::doctor(args).await,
        Command::Worker(args) => crate::up::worker(args).await,
        Command::Config(ConfigCommand::Check { file }) => crate::config_file::check(&file),
        Command::Config(ConfigCommand::Example) => {
            crate::config_file::example();
            Ok(())
        }
        Command::Audit(AuditCommand::Verify(args)) => crate::verify::run(args).await,
        Command::Dataset(DatasetCommand::Ingest(args)) => crate::transfer::ingest(&args).await,
        Command::Dataset(DatasetCommand::Download { name, version, output, tenant, remote }) => {
            crate::transfer::download(&remote, &name, version, &output, tenant.name()).await
        }
        Command::Run(RunCommand::Create(args)) => crate::runs::create(&args).await,
        Command::Run(RunCommand::Logs { id, follow, remote }) => crate::runs::logs(&remote, &id, follow).await,
        Command::Train(args) => crate::runs::train(&args).await,
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Pipeline(PipelineCommand::Apply { name, file, tenant, remote }) => {
            crate::api_calls::apply_pipeline(&name, &file, &tenant, &remote).await
        }
        Command::Chat(args) => crate::chat::run(&args).await,
        Command::Batch(BatchCommand::Run(args)) => crate::batches::run(&args).await,
        Command::Batch(BatchCommand::Show(batch)) => crate::batches::show(&batch.remote, &batch.id).await,
        Command::Batch(BatchCommand::Cancel(batch)) => crate::batches::cancel(&batch.remote, &batch.id).await,
        Command::Model(ModelCommand::Verify { model, key, tenant, remote }) => {
            crate::models::verify(&remote, &model, key.as_deref(), tenant.name()).await
        }
        Command::Model(ModelCommand::Export { model, out, format, destination, tenant, remote }) => {
            crate::models::export(&remote, &model, &out, format, destination.as_deref(), tenant.name()).await
        }
        Command::Model(ModelCommand::Import { file, tenant, remote }) => {
            crate::models::import(&remote, &file, tenant.name()).await
        }
        Command::Model(ModelCommand::ImportHf(args)) => crate::models::import_hf(&args).await,
        Command::Model(ModelCommand::ImportGguf(args)) => crate::models::import_gguf(&args).await,
        other => crate::api_calls::run(other).await,
    }
}

#[cfg(test)]
mod tests {
    /// The CLI's layers from the bottom up, as `ARCHITECTURE.md` ("The CLI's layers") draws
    /// them: a module imports only its own layer and those below it.
    const LAYERS: &[&[&str]] = &[
        // The clap types, importing nothing from the crate.
        &["args"],
        // The HTTP calls every command shares.
        &["client"],
        // One module per kind of work; only `main.rs` (`crate`) picks among them.
        &["api_calls", "batches", "chat", "config_file", "models", "runs", "transfer", "up", "verify"],
        // The demo drives the whole loop and ends in `audit verify`, so it sits above `verify`.
        &["demo"],
        &["crate"],
    ];

    #[test]
    fn the_cli_imports_only_down_its_layers() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let problems = factory_testkit::modules::check(&src, LAYERS);
        assert!(problems.is_empty(), "the CLI's modules break their layers:\n{}", problems.join("\n"));
    }
}
