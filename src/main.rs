//! `pluresdb`: the command line of PluresDB. Run `pluresdb --help`.

#[cfg(unix)]
#[global_allocator]
static GLOBAL: memory::NodeAllocator = memory::NodeAllocator;
#[cfg(not(unix))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod api_client;
mod cli;
mod commands;
mod config;
mod config_file;
mod instance;
mod keys;
mod memory;
mod node;
mod query_cli;
mod replica;

use clap::Parser;
use std::process::ExitCode;

/// Bad input the CLI itself detects (invalid JSON, a bad import line, ...).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

/// A thing the user asked for that does not exist.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotFound(pub String);

/// Something the running node cannot do (no network transport, stopping).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// The running node's store cannot write (its disk is full: 507).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreCannotWrite(pub String);

fn main() -> ExitCode {
    pluresdb_runtime::avoid_huge_pages();
    memory::return_freed_memory_sooner();
    let cli = cli::Cli::parse();
    let config = match config::load(&cli) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::from(exit_code(&err));
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&config.log.value).unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match commands::run(cli, &config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

/// Maps an error to the exit codes documented in `--help`.
fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<NotFound>() {
            return 3;
        }
        if cause.is::<InvalidInput>() {
            return 2;
        }
        if cause.is::<Unavailable>() {
            return 4;
        }
        if cause.is::<StoreCannotWrite>() || cause.downcast_ref::<pluresdb_runtime::Error>().is_some_and(|e| e.storage_fault().is_some()) {
            return 5;
        }
        if let Some(core) = cause.downcast_ref::<pluresdb_core::Error>() {
            if core.storage_fault().is_some() {
                return 5;
            }
            if matches!(core, pluresdb_core::Error::NotFound { .. }) {
                return 3;
            }
            if core.is_invalid_input() {
                return 2;
            }
        }
    }
    1
}
