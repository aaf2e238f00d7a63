//! `factory`: one binary that runs the whole factory (`up`) and talks to a running one.
//!
//! The binary stays thin: it parses flags, dispatches to `server`, `client` or `verify`, and
//! maps errors to exit codes (0 success, 1 failure, 2 usage, as clap does).

mod chat;
mod cli;
mod client;
mod demo;
mod models;
mod runs;
mod transfer;
mod up;
mod verify;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
