//! The CLI's side of the admin API: small JSON requests to a running daemon.

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Sends one request to the daemon at `admin` (e.g. `http://127.0.0.1:9900`) and returns the
/// status and the JSON body.
pub fn request(
    admin: &str,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
    token: Option<&str>,
) -> anyhow::Result<(StatusCode, serde_json::Value)> {
    let url = format!("{}{}", admin.trim_end_matches('/'), path);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let payload = match &body {
            Some(value) => Bytes::from(value.to_string()),
            None => Bytes::new(),
        };
        let mut builder = Request::builder().method(method).uri(&url);
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let req = builder
            .body(Full::new(payload))
            .with_context(|| format!("`{url}` is not a valid admin URL; check --admin"))?;
        let response = client.request(req).await.with_context(|| {
            format!("cannot reach the shoal daemon at {admin}; is `shoal up` running? (set --admin or SHOAL_ADMIN)")
        })?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED {
            bail!("{}", refused_token(admin, token.is_some()));
        }
        let bytes = response
            .into_body()
            .collect()
            .await
            .with_context(|| format!("reading the answer from {url}"))?
            .to_bytes();
        let value = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(value) => value,
                Err(_) if !status.is_success() => {
                    bail!("{url} answered {status}: {}", String::from_utf8_lossy(&bytes).trim())
                }
                Err(err) => return Err(err).with_context(|| format!("{url} did not answer JSON")),
            }
        };
        Ok((status, value))
    })
}

/// What to do about a 401: the daemon keeps the token it read at its start, so a CLI that
/// reads a changed `admin.token_file` brings a token the daemon does not know yet.
fn refused_token(admin: &str, sent: bool) -> String {
    if sent {
        format!(
            "the daemon at {admin} refused the admin token (401 Unauthorized). The CLI sends \
             SHOAL_ADMIN_TOKEN, else the token in the config's admin.token_file; the daemon \
             keeps the token it read at its start until it restarts, so after a change to \
             token_file set SHOAL_ADMIN_TOKEN to the daemon's token"
        )
    } else {
        format!(
            "the daemon at {admin} needs an admin token (401 Unauthorized): set \
             SHOAL_ADMIN_TOKEN, or name the daemon's config with -c so that its \
             admin.token_file is read"
        )
    }
}
