//! The `shoal` binary: CLI and daemon wiring only; the work is done by the crates.

mod admin;
mod admin_client;
mod cli;
mod commands;
mod daemon;
mod logging;
mod replicas;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
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

    commands::container::hold_forwarded_signals();
    let cli = Cli::from_command_line();
    if !matches!(cli.command, Command::Run(_)) {
        commands::container::release_held_signals();
    }
    if cli.command.only_reports() {
        end_quietly_on_a_closed_pipe();
    }
    logging::init(cli.log_format);
    let code = match run(cli) {
        Ok(code) => code,
        Err(err) => {
            // Not `eprintln!`, which panics on a stderr that is gone: the status still tells.
            let _ = writeln!(std::io::stderr(), "shoal: {err:#}");
            EXIT_FAILURE
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Rust ignores SIGPIPE, so printing to a reader that has gone (`shoal ps | head -1`)
/// fails, and `println!` panics. A command that only prints a report ends at once instead,
/// as Unix tools do; the daemon and `run`, which write to sockets and containers, keep
/// ignoring it.
fn end_quietly_on_a_closed_pipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: single-threaded at this point, and the default action runs no handler code.
    // It cannot fail for a valid signal and action; if it did, a closed pipe would only
    // end the command with an error as before.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    // Only the default `./shoal.yaml` may be absent: a file the user named is meant to be
    // read, and without it `shoal run` would use another state directory than asked.
    if cli.config_named && cli.reads_config_if_present() && !cli.config.exists() {
        eprintln!(
            "{}: cannot read the config file: it does not exist (named by -c or SHOAL_CONFIG)",
            cli.config.display()
        );
        return Ok(EXIT_USAGE);
    }
    match cli.command {
        Command::Up => daemon::up(&cli.config),
        Command::Demo => commands::demo::run(),
        Command::Validate => commands::validate::run(&cli.config, cli.json),
        Command::Status { ref service } => {
            let admin = shoal_config::admin_settings(&cli.config);
            let Some(url) = admin_url(&cli, &admin) else {
                return Ok(EXIT_USAGE);
            };
            commands::status::run(&url, service.as_deref(), cli.json)
        }
        Command::Scale {
            ref service,
            replicas,
        } => {
            let admin = shoal_config::admin_settings(&cli.config);
            let Some(url) = admin_url(&cli, &admin) else {
                return Ok(EXIT_USAGE);
            };
            commands::scale::run(
                &url,
                admin_token(&cli, &admin)?.as_deref(),
                service,
                replicas,
                cli.json,
            )
        }
        Command::Reload => {
            let admin = shoal_config::admin_settings(&cli.config);
            // A file that does not parse cannot say where its daemon listens: its errors are
            // printed here (the daemon would answer the same ones) rather than sent to the
            // default address, where no daemon of this file may be.
            if !cli.admin_named
                && admin.listen.is_none()
                && !shoal_config::parses_as_yaml(&cli.config)
            {
                if let Err(errors) = shoal_config::load(&cli.config) {
                    eprint!("{errors}");
                    return Ok(EXIT_USAGE);
                }
            }
            let Some(url) = admin_url(&cli, &admin) else {
                return Ok(EXIT_USAGE);
            };
            let token = admin_token(&cli, &admin)?;
            commands::reload::run(&url, token.as_deref(), cli.json)
        }
        Command::Run(args) => match runtime_settings(&cli.config) {
            Ok(settings) => commands::container::run(*args, &settings),
            Err(code) => Ok(code),
        },
        Command::Ps(args) => match runtime_settings(&cli.config) {
            Ok(settings) => commands::container::ps(args, &settings, cli.json),
            Err(code) => Ok(code),
        },
        Command::Logs(args) => match runtime_settings(&cli.config) {
            Ok(settings) => commands::container::logs(args, &settings),
            Err(code) => Ok(code),
        },
        Command::Simulate(args) => commands::simulate::run(args, &cli.config, cli.json),
        Command::DemoBackend(args) => commands::demo_backend::run(args),
    }
}

/// The runtime's state dir and subnet: from the config when there is one, else SPEC's
/// defaults. Err: the config does not validate; its errors are printed, and the
/// error is the exit status for an invalid config.
fn runtime_settings(path: &std::path::Path) -> Result<shoal_runtime::RuntimeSettings, i32> {
    let mut settings = shoal_runtime::RuntimeSettings::default();
    if path.exists() {
        let config = shoal_config::load(path).map_err(|errors| {
            eprint!("{errors}");
            EXIT_USAGE
        })?;
        // Relative to the config's directory, as the daemon reads it.
        if let Some(dir) = config.runtime.state_dir {
            let base = daemon::config_dir(path).map_err(|error| {
                eprintln!("shoal: {error:#}");
                EXIT_FAILURE
            })?;
            settings.state_dir = base.join(dir);
        }
        settings.subnet = config.runtime.subnet;
    }
    Ok(settings)
}

/// Where the daemon's admin API is: `--admin` or `SHOAL_ADMIN` when given, else the
/// config's `admin.listen` when it sets one (the daemon that file configures listens
/// there, and the config's token is meant for it), else SPEC's default.
/// None: `--admin` or `SHOAL_ADMIN` cannot name a daemon (bad usage; said on stderr).
fn admin_url(cli: &Cli, admin: &shoal_config::AdminSettings) -> Option<String> {
    if !cli.admin_named {
        if let Some(listen) = admin.listen {
            return Some(format!("http://{}", reachable(listen)));
        }
    }
    match cli.admin.parse::<http::Uri>() {
        Ok(url) if url.scheme_str() == Some("http") && url.authority().is_some() => {
            Some(cli.admin.clone())
        }
        _ => {
            eprintln!(
                "shoal: `{}` is not a valid admin URL: give one like http://127.0.0.1:9900 (--admin or SHOAL_ADMIN)",
                cli.admin
            );
            None
        }
    }
}

/// The address to connect to for a daemon listening on `listen`: a wildcard one is
/// reached on the loopback address of its family.
fn reachable(listen: std::net::SocketAddr) -> std::net::SocketAddr {
    let ip = match listen.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    std::net::SocketAddr::new(ip, listen.port())
}

/// The admin bearer token for mutating commands: `SHOAL_ADMIN_TOKEN`, else the config's
/// `admin.token_file` when a config is found.
fn admin_token(cli: &Cli, admin: &shoal_config::AdminSettings) -> anyhow::Result<Option<String>> {
    if let Ok(token) = std::env::var("SHOAL_ADMIN_TOKEN") {
        return Ok(Some(token));
    }
    // Read without validating the rest: `shoal reload` of a file with errors must still
    // authenticate, to print what the daemon finds wrong with it.
    match &admin.token_file {
        Some(file) => {
            let base = cli.config.parent().unwrap_or(std::path::Path::new("."));
            let token = std::fs::read_to_string(base.join(file))
                .with_context(|| format!("cannot read admin.token_file {}", file.display()))?;
            Ok(Some(token.trim().to_string()))
        }
        None => Ok(None),
    }
}
