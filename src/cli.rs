//! The command line: global options and one subcommand per SPEC.md "Command line" row.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "shoal",
    version,
    about = "A self-scaling service edge: L4/L7 proxy, bundled container runtime and autoscaler"
)]
pub struct Cli {
    /// Config file.
    #[arg(
        short,
        long,
        global = true,
        env = "SHOAL_CONFIG",
        default_value = "./shoal.yaml"
    )]
    pub config: PathBuf,

    /// Whether `config` was named (`-c`, `SHOAL_CONFIG`) rather than the default.
    #[arg(skip)]
    pub config_named: bool,

    /// Where the daemon's admin API listens.
    #[arg(
        long,
        global = true,
        env = "SHOAL_ADMIN",
        default_value = "http://127.0.0.1:9900"
    )]
    pub admin: String,

    /// Whether `admin` was named (`--admin`, `SHOAL_ADMIN`) rather than the default.
    #[arg(skip)]
    pub admin_named: bool,

    /// Print data as JSON.
    #[arg(long, global = true)]
    pub json: bool,

    /// Log line format; `RUST_LOG` sets the levels.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (SIGINT/SIGTERM drain and stop).
    Up,
    /// Check a config; print a summary, or every error with its location.
    Validate,
    /// Show services and their endpoints from a running daemon.
    Status {
        /// Only this service.
        service: Option<String>,
    },
    /// The built-in demo: a listener on 127.0.0.1:8080 in front of container replicas.
    Demo,
    /// Pin a service's replica count (`N`), or hand it back to the autoscaler (`auto`).
    Scale {
        service: String,
        /// A count within 0..=scale.max, or `auto`.
        #[arg(value_parser = parse_replicas)]
        replicas: Replicas,
    },
    /// Ask the daemon to reload its config file; print what changed or the errors.
    Reload,
    /// Run one container in the foreground, like `docker run --rm`.
    Run(Box<crate::commands::container::RunArgs>),
    /// Containers the runtime knows in its state directory.
    Ps(crate::commands::container::PsArgs),
    /// A replica's captured stdout/stderr.
    Logs(crate::commands::container::LogsArgs),
    /// Run each container service's scaling policy against a load trace, in simulated time.
    Simulate(crate::commands::simulate::SimulateArgs),
    /// The small HTTP server the demo and tests run as a workload.
    DemoBackend(crate::commands::demo_backend::Args),
}

impl Cli {
    /// Parses the command line, noting whether the config file was named.
    pub fn from_command_line() -> Cli {
        let matches = match <Cli as clap::CommandFactory>::command().try_get_matches() {
            Ok(matches) => matches,
            Err(error) => with_run_hint(error).exit(),
        };
        let mut cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
            Ok(cli) => cli,
            Err(error) => error.exit(),
        };
        let named = |id| matches.value_source(id) != Some(clap::parser::ValueSource::DefaultValue);
        cli.config_named = named("config");
        cli.admin_named = named("admin");
        cli
    }

    /// Whether the command reads the config file when there is one, and does without it
    /// otherwise (the others need one, or none). `status` reads only the admin address
    /// from it, so not when one is given.
    pub fn reads_config_if_present(&self) -> bool {
        match self.command {
            Command::Status { .. } => !self.admin_named,
            _ => self.command.reads_config_if_present(),
        }
    }
}

/// `docker run IMAGE CMD` takes the command without `--`; `shoal run` (as SPEC has it) needs
/// one, so a word clap does not expect there gets a tip saying so. A word clap took for an
/// image beside --rootfs or --host gets it only when no `--` follows (with one, the image
/// is the mistake).
fn with_run_hint(mut error: clap::Error) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let names = |kind| match error.get(kind) {
        Some(ContextValue::String(arg)) => vec![arg.clone()],
        Some(ContextValue::Strings(args)) => args.clone(),
        _ => Vec::new(),
    };
    // A word past the image, or a word beside --rootfs or --host (which clap takes for an
    // image).
    let misplaced = match error.kind() {
        ErrorKind::UnknownArgument => names(ContextKind::InvalidArg)
            .iter()
            .any(|arg| !arg.starts_with('-')),
        ErrorKind::ArgumentConflict => {
            names(ContextKind::InvalidArg)
                .into_iter()
                .chain(names(ContextKind::PriorArg))
                .any(|arg| arg == "[IMAGE]")
                && !std::env::args_os().any(|arg| arg == "--")
        }
        _ => false,
    };
    if !misplaced {
        return error;
    }
    let parsed = <Cli as clap::CommandFactory>::command()
        .ignore_errors(true)
        .try_get_matches();
    if parsed.is_ok_and(|m| m.subcommand_name() == Some("run")) {
        error.insert(
            ContextKind::Suggested,
            ContextValue::StyledStrs(vec![
                "give the command after `--`: shoal run (IMAGE | --rootfs DIR | --host) -- CMD \
                 [ARG...]"
                    .into(),
            ]),
        );
    }
    error
}

impl Command {
    /// Whether the command reads the config file when there is one, and does without it
    /// otherwise (the others need one, or none).
    fn reads_config_if_present(&self) -> bool {
        matches!(
            self,
            Command::Scale { .. }
                | Command::Reload
                | Command::Run(_)
                | Command::Ps(_)
                | Command::Logs(_)
        )
    }

    /// Whether the command only prints a report (and may be piped into `head`).
    pub fn only_reports(&self) -> bool {
        matches!(
            self,
            Command::Validate
                | Command::Status { .. }
                | Command::Scale { .. }
                | Command::Reload
                | Command::Ps(_)
                | Command::Logs(_)
                | Command::Simulate(_)
        )
    }
}

/// `shoal scale`'s count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replicas {
    Pinned(u32),
    /// Handed back to the autoscaler.
    Auto,
}

/// Parsed by clap, so that anything else is a usage error (exit 2) before the daemon is asked.
fn parse_replicas(text: &str) -> Result<Replicas, String> {
    match text {
        "auto" => Ok(Replicas::Auto),
        n => n
            .parse()
            .map(Replicas::Pinned)
            .map_err(|_| format!("`{n}` is neither a replica count nor `auto`")),
    }
}
