//! Log setup: `tracing` to stderr, levels from `RUST_LOG` (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal: a log file, a pipe or a replica's captured
    // output must read `key=value` as written, or `grep addr=` finds nothing.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        // A line that cannot be written is dropped. Reported, it went to `eprintln!`, which
        // panics when stderr is a pipe whose reader has gone (`shoal up 2>&1 | head`): the
        // task that logged died with it, the autoscaler's or shutdown's.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
