//! shoal-config: the YAML schema of SPEC.md, its defaults, validation and error locations.
//!
//! ```
//! let config = shoal_config::parse(
//!     "listeners: [{ name: web, bind: 127.0.0.1:8080, service: web }]\n\
//!      services: { web: { upstreams: { static: [127.0.0.1:9001] } } }\n",
//!     "shoal.yaml",
//! )
//! .unwrap();
//! assert_eq!(config.listeners[0].service.as_deref(), Some("web"));
//!
//! let errors = shoal_config::parse("workers: 0\nadmin: { lisen: 1 }\n", "shoal.yaml").unwrap_err();
//! assert_eq!(
//!     errors.to_string(),
//!     "shoal.yaml:2:10: admin: unknown key `lisen`; did you mean `listen`?\n"
//! );
//! ```
//!
//! Reading a file goes: `${VAR}` interpolation while deserializing (see [`interpolate`]),
//! then [`validate`], which reports every problem of meaning at once with its dotted path.

mod error;
pub mod interpolate;
pub mod schema;
mod summary;
#[cfg(test)]
mod tests;
pub mod units;
mod validate;

use std::path::Path;

use serde::Deserialize;

pub use error::{ConfigError, ConfigErrors, Location};
pub use schema::*;
pub use validate::{parse_subnet, parse_user, signal_name};

/// Reads, interpolates from the process environment, deserializes and validates a config
/// file. An unreadable file is one error naming the file and the OS error.
///
/// `${PORT}` and `${SHOAL_REPLICA}` inside `services.*.container.command` and `.env` are left
/// in place for the runtime to fill in per replica ([`interpolate::replica_vars`]).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::at_path(&file, "", format!("cannot read the config file: {e}"))
    })?;
    parse(&text, &file)
}

/// Like [`load`] for text already read; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigErrors> {
    parse_with_env(text, file, &|name| std::env::var(name).ok())
}

/// Like [`parse`], with variables looked up by `env` instead of the process environment
/// (for tests, and for callers that hold the environment elsewhere).
pub fn parse_with_env(
    text: &str,
    file: &str,
    env: interpolate::Env<'_>,
) -> Result<Config, ConfigErrors> {
    let config = deserialize(text, env).map_err(|e| error::from_yaml(&e, file))?;
    validate::validate(&config, file)?;
    Ok(config)
}

fn deserialize(text: &str, env: interpolate::Env<'_>) -> Result<Config, serde_yaml_ng::Error> {
    // An empty file (or one of only comments) is the all-defaults config, not an error.
    let blank = text
        .lines()
        .all(|line| line.trim().is_empty() || line.trim_start().starts_with('#'));
    if blank {
        return Ok(Config::default());
    }
    Config::deserialize(interpolate::Interpolating::new(
        serde_yaml_ng::Deserializer::from_str(text),
        env,
    ))
}
