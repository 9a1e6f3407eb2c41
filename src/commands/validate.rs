//! `shoal validate`: a summary of a good config, or every error with its location (exit 2).
//! Beyond the config crate's checks it opens the TLS certificates and keys and the admin
//! token file. Certificates that are expired or not valid yet are warnings, on stderr (and
//! in `--json`'s `warnings`): they are served (see [`shoal_proxy::tls_validity_warnings`]).

use std::path::Path;

use shoal_config::{Config, ConfigError, ConfigErrors, Location, Tls};

use crate::EXIT_USAGE;

pub fn run(path: &Path, json: bool) -> anyhow::Result<i32> {
    match load(path) {
        Ok(config) => {
            let warnings: Vec<String> = warnings(&config, path)
                .iter()
                .map(ToString::to_string)
                .collect();
            if json {
                let summary = serde_json::json!({
                    "valid": true,
                    "summary": config.summary(),
                    "warnings": warnings,
                });
                println!("{summary}");
            } else {
                println!("{}: valid", path.display());
                print!("{}", config.summary());
                for warning in warnings {
                    eprintln!("warning: {warning}");
                }
            }
            Ok(0)
        }
        Err(errors) => {
            if json {
                let errors: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                println!(
                    "{}",
                    serde_json::json!({ "valid": false, "errors": errors })
                );
            } else {
                eprint!("{errors}");
            }
            Ok(EXIT_USAGE)
        }
    }
}

/// What is served but worth knowing: TLS certificates expired or not valid yet.
fn warnings(config: &Config, path: &Path) -> Vec<ConfigError> {
    tls_findings(config, path, shoal_proxy::tls_validity_warnings)
}

/// `check`'s messages for each listener's `tls` block, located at it.
fn tls_findings(
    config: &Config,
    path: &Path,
    check: fn(&Tls, &Path) -> Vec<String>,
) -> Vec<ConfigError> {
    let base = path.parent().unwrap_or(Path::new("."));
    config
        .listeners
        .iter()
        .enumerate()
        .filter_map(|(i, listener)| Some((i, listener.tls.as_ref()?)))
        .flat_map(|(i, tls)| {
            check(tls, base)
                .into_iter()
                .map(move |message| ConfigError {
                    file: path.display().to_string(),
                    location: Location::Path(format!("listeners[{i}].tls")),
                    message,
                })
        })
        .collect()
}

/// Loads and validates `path`, including the files the daemon reads at start (TLS
/// certificates and keys, the admin token), relative to the config's directory.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let config = shoal_config::load(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut errors = tls_findings(&config, path, shoal_proxy::check_tls);
    if let Some(file) = &config.admin.token_file {
        if let Err(err) = std::fs::read_to_string(base.join(file)) {
            errors.push(ConfigError {
                file: path.display().to_string(),
                location: Location::Path("admin.token_file".into()),
                message: format!("cannot read {}: {err}", file.display()),
            });
        }
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}
