//! `shoal scale SERVICE N|auto`: pin a replica count or hand it back to the autoscaler.

use anyhow::bail;
use http::{Method, StatusCode};

use crate::cli::Replicas;
use crate::{admin_client, EXIT_USAGE};

pub fn run(
    admin: &str,
    token: Option<&str>,
    service: &str,
    replicas: Replicas,
    json: bool,
) -> anyhow::Result<i32> {
    let value = match replicas {
        Replicas::Auto => serde_json::json!("auto"),
        Replicas::Pinned(n) => serde_json::json!(n),
    };
    let (status, body) = admin_client::request(
        admin,
        Method::POST,
        &format!("/api/v1/services/{service}/scale"),
        Some(serde_json::json!({ "replicas": value })),
        token,
    )?;
    if !status.is_success() {
        let reason = body["error"]
            .as_str()
            .map_or_else(|| body.to_string(), str::to_string);
        // The daemon refusing the count itself (400: past `scale.max`), or the service
        // named (404: none such; 409: not a container service, nothing to scale): bad
        // usage, as a count that is not a number is.
        if matches!(
            status,
            StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND | StatusCode::CONFLICT
        ) {
            eprintln!("shoal: {reason}");
            return Ok(EXIT_USAGE);
        }
        bail!("{reason}");
    }
    if json {
        println!("{body}");
    } else {
        match replicas {
            Replicas::Auto => println!("{service}: replica count handed back to the autoscaler"),
            Replicas::Pinned(n) => println!(
                "{service}: pinned to {n} replica{}",
                if n == 1 { "" } else { "s" }
            ),
        }
    }
    Ok(0)
}
