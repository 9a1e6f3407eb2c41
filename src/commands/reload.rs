//! `shoal reload`: ask the daemon to reload its config file; print what changed, or the
//! errors (exit 2) while the old config keeps serving.

use anyhow::bail;
use http::{Method, StatusCode};

use crate::{admin_client, EXIT_USAGE};

pub fn run(admin: &str, token: Option<&str>, json: bool) -> anyhow::Result<i32> {
    let (status, body) = admin_client::request(admin, Method::POST, "/api/v1/reload", None, token)?;
    if json {
        println!("{body}");
    }
    let lines = |key: &str| -> Vec<String> {
        body[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    match status {
        StatusCode::OK => {
            if !json {
                let changed = lines("changed");
                if changed.is_empty() {
                    println!("reloaded: nothing changed");
                }
                for line in changed {
                    println!("{line}");
                }
            }
            Ok(0)
        }
        StatusCode::BAD_REQUEST => {
            if !json {
                eprintln!("the new config was rejected; the old one keeps serving:");
                for line in lines("errors") {
                    eprintln!("{line}");
                }
            }
            Ok(EXIT_USAGE)
        }
        other => bail!("the daemon answered {other}: {body}"),
    }
}
