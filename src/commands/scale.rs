//! `shoal scale SERVICE N|auto`: pin a replica count or hand it back to the autoscaler.

use anyhow::bail;
use http::Method;

use crate::admin_client;

pub fn run(
    admin: &str,
    token: Option<&str>,
    service: &str,
    replicas: &str,
    json: bool,
) -> anyhow::Result<i32> {
    let value = match replicas {
        "auto" => serde_json::json!("auto"),
        n => match n.parse::<u32>() {
            Ok(n) => serde_json::json!(n),
            Err(_) => bail!("`{n}` is neither a replica count nor `auto`"),
        },
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
        bail!("{reason}");
    }
    if json {
        println!("{body}");
    } else {
        match replicas {
            "auto" => println!("{service}: replica count handed back to the autoscaler"),
            n => println!("{service}: pinned to {n} replicas"),
        }
    }
    Ok(0)
}
