//! Log setup: `tracing` to stderr, levels from `RUST_LOG` (default `info`).

use std::io::IsTerminal;

use tracing::level_filters::{LevelFilter, STATIC_MAX_LEVEL};
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

pub fn init(format: LogFormat) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => {
            EnvFilter::try_new(held_to(&directives, STATIC_MAX_LEVEL))
                .unwrap_or_else(|_| EnvFilter::new("info"))
        }
        _ => EnvFilter::new("info"),
    };
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

/// `RUST_LOG`'s directives with each level held to `max`, the most this build logs (a
/// release build stops at debug). tracing-subscriber warns about a level above it on
/// stderr, in colour and outside `--log-format json`, and logs no more for it.
fn held_to(directives: &str, max: LevelFilter) -> String {
    if max >= LevelFilter::TRACE {
        return directives.to_owned();
    }
    let level = |text: &str| text.trim().parse::<LevelFilter>().ok();
    directives
        .split(',')
        .map(|directive| {
            let (target, given) = match directive.rsplit_once('=') {
                // `target=level`; an `=` inside a span's fields is not a level's.
                Some((target, given)) if level(given).is_some() => (Some(target), given),
                _ if level(directive).is_some() => (None, directive),
                // A bare target enables every level for it.
                _ => (Some(directive), "trace"),
            };
            match level(given) {
                Some(wanted) if wanted > max => match target {
                    Some(target) => format!("{target}={max}"),
                    None => max.to_string(),
                },
                _ => directive.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_held_to_what_the_build_logs() {
        let debug = LevelFilter::DEBUG;
        assert_eq!(held_to("trace", debug), "debug");
        assert_eq!(
            held_to("info,shoal_proxy=trace", debug),
            "info,shoal_proxy=debug"
        );
        assert_eq!(held_to("shoal_autoscaler", debug), "shoal_autoscaler=debug");
        assert_eq!(held_to("warn,h2=debug", debug), "warn,h2=debug");
        assert_eq!(held_to("5", debug), "debug");
        assert_eq!(held_to("trace", LevelFilter::TRACE), "trace");
    }
}
