//! The `shoal` binary: CLI and daemon wiring only; the work is done by the crates.

mod admin;
mod admin_client;
mod cli;
mod commands;
mod daemon;
mod logging;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

/// Exit statuses from SPEC.md: 0 success, 1 failure at run time, 2 bad usage or invalid config.
pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

fn main() -> ExitCode {
    // A container's init re-execs this binary; it must run before anything else (no
    // threads, no runtime) because it unshares namespaces of a single-threaded process.
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(shoal_runtime::INIT_ARG))
    {
        std::process::exit(shoal_runtime::init::main());
    }

    let cli = Cli::parse();
    logging::init(cli.log_format);
    let code = match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("shoal: {err:#}");
            EXIT_FAILURE
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Up => daemon::up(&cli.config),
        Command::Validate => commands::validate::run(&cli.config, cli.json),
        Command::Status { ref service } => {
            commands::status::run(&cli.admin, service.as_deref(), cli.json)
        }
        Command::DemoBackend(args) => commands::demo_backend::run(args),
    }
}
