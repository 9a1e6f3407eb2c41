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

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use error::{ConfigError, ConfigErrors, Location};
pub use schema::*;
pub use validate::{is_user, parse_subnet, signal_name, MAX_PIDS, MIN_MEMORY};

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

/// The config's `admin` keys the CLI needs, read on their own (see [`admin_settings`]).
#[derive(Debug, Default, PartialEq)]
pub struct AdminSettings {
    /// `admin.listen`, when the file sets it.
    pub listen: Option<SocketAddr>,
    /// `admin.token_file`, when the file sets it.
    pub token_file: Option<PathBuf>,
}

/// Whether the file at `path` is YAML at all (before variables and the schema): when it is
/// not, nothing in it, not even its admin address, can be read. An unreadable file counts
/// as YAML here: what is wrong with it is for whoever reads it to say.
pub fn parses_as_yaml(path: &Path) -> bool {
    std::fs::read_to_string(path).map_or(true, |text| {
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text).is_ok()
    })
}

/// `admin.listen` and `admin.token_file` of the config file at `path`, read without the
/// rest: the CLI talks to the daemon that file configures, and needs the token to ask it
/// to reload a file that does not validate, so that it can print the errors the daemon
/// finds in it. Nothing is set when the file cannot be read.
pub fn admin_settings(path: &Path) -> AdminSettings {
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        admin: Option<Admin>,
    }
    #[derive(Deserialize)]
    struct Admin {
        // Text, so that a listen address that does not parse costs the token nothing.
        #[serde(default)]
        listen: Option<String>,
        #[serde(default)]
        token_file: Option<PathBuf>,
    }
    let Ok(text) = std::fs::read_to_string(path) else {
        return AdminSettings::default();
    };
    let env = |name: &str| std::env::var(name).ok();
    let file = File::deserialize(interpolate::Interpolating::new(
        serde_yaml_ng::Deserializer::from_str(&text),
        &env,
    ));
    match file.ok().and_then(|f| f.admin) {
        Some(admin) => AdminSettings {
            listen: admin.listen.and_then(|l| l.trim().parse().ok()),
            token_file: admin.token_file,
        },
        None => AdminSettings::default(),
    }
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
    let config = deserialize(text, env).map_err(|e| every_schema_error(text, env, file, &e))?;
    validate::validate(&config, file)?;
    Ok(config)
}

/// At most this many errors of reading are reported for one file.
const MAX_SCHEMA_ERRORS: usize = 50;

/// serde stops at the first error; whoever fixes the file wants them all, as `validate`
/// lists every error of meaning. So the file is read again as a YAML tree (when its syntax
/// allows), and each error's value is taken out of it (the unknown key,
/// or the value of the wrong type or name, which then takes its default) before the tree is
/// written back out and read again, until it reads or an error repeats. The first error
/// keeps its line and column; the ones found after it are placed by their dotted path.
fn every_schema_error(
    text: &str,
    env: interpolate::Env<'_>,
    file: &str,
    first: &serde_yaml_ng::Error,
) -> ConfigErrors {
    let mut errors = vec![error::from_yaml(first, file)];
    // The tree keeps `${VAR}` as written: read back through the interpolation, as the file
    // was, an interpolated number is a number again, not the string it was substituted as.
    let Ok(mut tree) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) else {
        return ConfigErrors(errors);
    };
    let mut found = error::path_and_message(first);
    while errors.len() < MAX_SCHEMA_ERRORS {
        let (path, message) = &found;
        if !take_out(&mut tree, path.as_deref().unwrap_or_default(), message) {
            break;
        }
        let Ok(rewritten) = serde_yaml_ng::to_string(&tree) else {
            break;
        };
        let Err(next) = deserialize(&rewritten, env) else {
            break;
        };
        let next_found = error::path_and_message(&next);
        // A value taken out that had no default shows up as missing: not the user's error.
        if next_found == found || next_found.1.starts_with("missing field") {
            break;
        }
        errors.push(error::from_rewritten_yaml(&next, file));
        found = next_found;
    }
    ConfigErrors(errors)
}

/// Takes the value an error is about out of `tree`: for an unknown key, that key of the
/// mapping at `path`; otherwise the value at `path` itself, if it is a mapping's. False when
/// there is no such value.
fn take_out(tree: &mut serde_yaml_ng::Value, path: &str, message: &str) -> bool {
    let mut steps = path_steps(path);
    if let Some(key) = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
    {
        steps.push(Step::Key(key.to_string()));
    }
    let Some(last) = steps.pop() else {
        return false;
    };
    let mut node = tree;
    for step in &steps {
        let next = match step {
            Step::Key(key) => node.get_mut(key.as_str()),
            Step::Index(index) => node.get_mut(*index),
        };
        let Some(next) = next else {
            return false;
        };
        node = next;
    }
    // A list item is left alone: taking it out would shift the indexes of those after it,
    // and with them the paths of their errors.
    match (last, node) {
        (Step::Key(key), serde_yaml_ng::Value::Mapping(map)) => map.remove(key.as_str()).is_some(),
        _ => false,
    }
}

enum Step {
    Key(String),
    Index(usize),
}

/// `listeners[0].routes[1].service` as keys and list indexes.
fn path_steps(path: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut pieces = part.split('[');
        if let Some(key) = pieces.next().filter(|k| !k.is_empty()) {
            steps.push(Step::Key(key.to_string()));
        }
        for index in pieces {
            if let Ok(index) = index.trim_end_matches(']').parse() {
                steps.push(Step::Index(index));
            }
        }
    }
    steps
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
