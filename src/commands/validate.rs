//! `shoal validate`: a summary of a good config, or every error with its location (exit 2).
//! Beyond the config crate's checks it opens the TLS certificates and keys and the admin
//! token file, and looks for the containers' images and root filesystems. Certificates that are expired or not valid yet are warnings, on stderr (and
//! in `--json`'s `warnings`): they are served (see [`shoal_proxy::tls_validity_warnings`]).

use std::path::Path;

use shoal_config::{Config, ConfigError, ConfigErrors, Location, Mount, Protocol, Tls};

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
                    "listeners": listeners_json(&config),
                    "services": services_json(&config),
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
                let details: Vec<serde_json::Value> = errors.0.iter().map(error_json).collect();
                let errors: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                println!(
                    "{}",
                    serde_json::json!({ "valid": false, "errors": errors, "details": details })
                );
            } else {
                eprint!("{errors}");
            }
            Ok(EXIT_USAGE)
        }
    }
}

/// The listeners of `--json`'s summary, as data.
fn listeners_json(config: &Config) -> Vec<serde_json::Value> {
    config
        .listeners
        .iter()
        .map(|l| {
            let protocol = match l.protocol {
                Protocol::Http => "http",
                Protocol::Tcp => "tcp",
            };
            let routes: Vec<&str> = l.routes.iter().map(|r| r.service.as_str()).collect();
            serde_json::json!({
                "name": l.name,
                "bind": l.bind.to_string(),
                "protocol": protocol,
                "tls": l.tls.is_some(),
                "service": l.service,
                "routes": routes,
            })
        })
        .collect()
}

/// The services of `--json`'s summary, as data.
fn services_json(config: &Config) -> Vec<serde_json::Value> {
    config
        .services
        .iter()
        .map(|(name, service)| {
            let kind = if service.container.is_some() {
                "container"
            } else {
                "upstreams"
            };
            serde_json::json!({ "name": name, "kind": kind })
        })
        .collect()
}

/// One error of `--json`'s `details`: its file, and its line and column or its dotted path.
fn error_json(error: &ConfigError) -> serde_json::Value {
    let (line, column) = match &error.location {
        Location::Syntax { line, column } => (Some(*line), Some(*column)),
        Location::Path(_) => (None, None),
    };
    let path = error.path();
    serde_json::json!({
        "file": error.file,
        "line": line,
        "column": column,
        "path": path,
        "message": error.message,
    })
}

/// What is served but worth knowing: TLS certificates expired or not valid yet, and bind
/// mount sources that are missing. Docker refuses a missing source; here it is a warning,
/// not an error, because a source may be made after the config is written (the examples'
/// `${SHOAL_BIN:-…}`), but until it exists every replica of its service fails to start.
fn warnings(config: &Config, path: &Path) -> Vec<ConfigError> {
    let mut warnings = tls_findings(config, path, shoal_proxy::tls_validity_warnings);
    let base = path.parent().unwrap_or(Path::new("."));
    for (name, service) in &config.services {
        let mounts = service.container.iter().flat_map(|c| c.mounts.iter());
        for (i, mount) in mounts.enumerate() {
            let Mount::Bind { source, .. } = mount else {
                continue;
            };
            // Only a missing one: another error (a directory this user may not search) may
            // not be the daemon's, which runs as another user.
            let missing = std::fs::metadata(base.join(source)).err().filter(|err| {
                use std::io::ErrorKind::{NotADirectory, NotFound};
                matches!(err.kind(), NotFound | NotADirectory)
            });
            if let Some(err) = missing {
                warnings.push(ConfigError {
                    file: path.display().to_string(),
                    location: Location::Path(format!(
                        "services.{name}.container.mounts[{i}].source"
                    )),
                    message: format!(
                        "cannot read {}: {err}; the service's replicas cannot start until it exists",
                        source.display()
                    ),
                });
            }
        }
    }
    warnings
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
            check(tls, base).into_iter().map(move |message| {
                // A message about one certificate starts with its place in the list.
                let (at, message) = match message.split_once(": ") {
                    Some((entry, rest)) if entry.starts_with("certificates[") => {
                        (format!("listeners[{i}].tls.{entry}"), rest.to_string())
                    }
                    _ => (format!("listeners[{i}].tls"), message),
                };
                ConfigError {
                    file: path.display().to_string(),
                    location: Location::Path(at),
                    message,
                }
            })
        })
        .collect()
}

/// Loads and validates `path`, including the files the daemon reads at start (TLS
/// certificates and keys, the admin token) and the containers' images and root
/// filesystems, relative to the config's directory: a reload naming a missing one is
/// rejected, rather than starting a rollout that can never finish.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    shoal_config::load_checking(path, |config| outside(config, path)).map_err(|mut errors| {
        // Most often the default `./shoal.yaml` of a directory that has none.
        if !path.exists() {
            if let Some(error) = errors.0.first_mut() {
                error.message.push_str(
                    "; name the config with `-c FILE` or SHOAL_CONFIG, or try `shoal demo`",
                );
            }
        }
        errors
    })
}

/// The errors of the files `config` (read from `path`) names.
fn outside(config: &Config, path: &Path) -> Vec<ConfigError> {
    let base = path.parent().unwrap_or(Path::new("."));
    let mut errors = tls_findings(config, path, shoal_proxy::check_tls);
    if let Some(file) = &config.admin.token_file {
        let problem = match std::fs::read_to_string(base.join(file)) {
            Err(err) => Some(format!("cannot read {}: {err}", file.display())),
            // No token could match it: every POST to the admin API would get 401.
            Ok(token) if token.trim().is_empty() => Some(format!(
                "{} is empty: write the token the admin API's POSTs must bring into it",
                file.display()
            )),
            Ok(_) => None,
        };
        if let Some(message) = problem {
            errors.push(ConfigError {
                file: path.display().to_string(),
                location: Location::Path("admin.token_file".into()),
                message,
            });
        }
    }
    errors.extend(missing_container_files(config, path, base));
    errors
}

/// An error for each container `image` that is not one ([`shoal_runtime::check_image`])
/// and each `rootfs` that is not a directory.
fn missing_container_files(config: &Config, path: &Path, base: &Path) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for (name, service) in &config.services {
        let Some(container) = &service.container else {
            continue;
        };
        let image = container.image.as_ref().and_then(|image| {
            let problem = shoal_runtime::check_image(&base.join(image)).err()?;
            Some(("image", problem))
        });
        let rootfs = container.rootfs.as_ref().and_then(|rootfs| {
            let problem = match std::fs::metadata(base.join(rootfs)) {
                Err(err) => format!("cannot read {}: {err}", rootfs.display()),
                Ok(meta) if !meta.is_dir() => format!(
                    "{} is not a directory: `rootfs` names an unpacked root filesystem; a \
                     tar is an `image`",
                    rootfs.display()
                ),
                Ok(_) => return None,
            };
            Some(("rootfs", problem))
        });
        for (key, message) in image.into_iter().chain(rootfs) {
            errors.push(ConfigError {
                file: path.display().to_string(),
                location: Location::Path(format!("services.{name}.container.{key}")),
                message,
            });
        }
    }
    errors
}
