//! The admin API on `admin.listen`: metrics, liveness, readiness, status JSON and scaling.
//!
//! Routes are few and fixed, so they are matched by hand rather than through a router crate.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus::{Encoder, Registry, TextEncoder};
use serde_json::{json, Value};
use shoal_autoscaler::{Desired, ScaleRefused};

use crate::daemon::Daemon;
use tokio::net::TcpListener;

type Body = Full<Bytes>;

/// Request bodies the admin API accepts are tiny JSON documents.
const MAX_BODY: usize = 64 * 1024;
/// The pause after a failed accept (descriptors used up, say), as the proxy's listeners take,
/// so the loop neither spins a core nor floods the log.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// Binds the admin listener, before any replica starts: a taken address (another shoal on
/// it, most often) then fails start-up with nothing to clean up.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await.map_err(|cause| {
        anyhow::anyhow!(
            "cannot bind the admin API on {addr}: {cause}{}",
            shoal_proxy::bind_hint(&cause, "`admin.listen`")
        )
    })?;
    tracing::info!(%addr, "admin API listening");
    Ok(listener)
}

/// Answers the admin API on `listener` (from [`bind`]) until the process ends.
pub fn serve(listener: TcpListener, state: Arc<Daemon>) {
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(%err, "admin accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(req, &state).await) }
                });
                if let Err(err) = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%err, "admin connection ended with an error");
                }
            });
        }
    });
}

async fn handle(req: Request<Incoming>, state: &Daemon) -> Response<Body> {
    if req.method() != Method::HEAD {
        return route(req, state).await;
    }
    // A HEAD answer is the GET one without its body. hyper leaves the body out over
    // HTTP/1.1 but not over HTTP/2 (the admin API speaks both), so it is dropped here; the
    // length stays.
    let (mut parts, body) = route(req, state).await.into_parts();
    if let Some(length) = hyper::body::Body::size_hint(&body).exact() {
        parts
            .headers
            .entry(header::CONTENT_LENGTH)
            .or_insert_with(|| http::HeaderValue::from(length));
    }
    Response::from_parts(parts, Full::new(Bytes::new()))
}

async fn route(req: Request<Incoming>, state: &Daemon) -> Response<Body> {
    if req.method() == Method::POST && !authorized(&req, state) {
        let mut response = json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": "this endpoint needs `Authorization: Bearer <token>` (admin.token_file)"}),
        );
        // A 401 names the scheme the client must use (RFC 9110 §11.6.1).
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        return response;
    }
    let path = req.uri().path().to_string();
    let Some(allow) = methods(&path) else {
        return json_response(StatusCode::NOT_FOUND, json!({"error": "no such endpoint"}));
    };
    // HEAD is routed as GET (`handle` drops the body).
    let method = match *req.method() {
        Method::HEAD => Method::GET,
        ref method => method.clone(),
    };
    if !allow.split(", ").any(|m| m == method.as_str()) {
        let mut response = json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": format!("{path} takes {allow}")}),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, http::HeaderValue::from_static(allow));
        return response;
    }
    if method == Method::POST && path == "/api/v1/reload" {
        return match state.reload().await {
            Ok(changed) => json_response(StatusCode::OK, json!({ "changed": changed })),
            Err(errors) => json_response(StatusCode::BAD_REQUEST, json!({ "errors": errors })),
        };
    }
    if method == Method::POST {
        if let Some(name) = path
            .strip_prefix("/api/v1/services/")
            .and_then(|rest| rest.strip_suffix("/scale"))
        {
            return scale(req, state, name).await;
        }
    }
    match (&method, path.as_str()) {
        (&Method::GET, "/metrics") => metrics(&state.registry),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") => {
            if state.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, "ready")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready")
            }
        }
        (&Method::GET, "/api/v1/status") => {
            json_response(StatusCode::OK, json!({ "services": services(state) }))
        }
        (&Method::GET, _) if path.starts_with("/api/v1/services/") => {
            let name = &path["/api/v1/services/".len()..];
            match services(state).into_iter().find(|s| s["name"] == name) {
                Some(service) => json_response(StatusCode::OK, service),
                None => json_response(
                    StatusCode::NOT_FOUND,
                    json!({"error": format!("no service named `{name}`")}),
                ),
            }
        }
        _ => json_response(StatusCode::NOT_FOUND, json!({"error": "no such endpoint"})),
    }
}

/// The methods an endpoint takes (for `Allow`), or `None` for no such endpoint.
fn methods(path: &str) -> Option<&'static str> {
    match path {
        "/metrics" | "/healthz" | "/readyz" | "/api/v1/status" => Some("GET, HEAD"),
        "/api/v1/reload" => Some("POST"),
        _ => {
            // `/api/v1/services/{name}` and `…/{name}/scale`, a name being one segment: a
            // trailing slash or more segments is no endpoint (404), as elsewhere.
            let service = path.strip_prefix("/api/v1/services/")?;
            let (name, scale) = match service.strip_suffix("/scale") {
                Some(name) => (name, true),
                None => (service, false),
            };
            if name.is_empty() || name.contains('/') {
                return None;
            }
            Some(if scale { "POST" } else { "GET, HEAD" })
        }
    }
}

/// SPEC's status JSON: the proxy's view of each service (load, balanced endpoints), with
/// the replica view of container services folded in (every replica, in flight from the proxy).
fn services(state: &Daemon) -> Vec<Value> {
    state
        .proxy
        .status()
        .into_iter()
        .map(|service| {
            let mut value = json!(service);
            let name = value["name"].as_str().unwrap_or_default().to_string();
            match state.container_service(&name) {
                Some(service) => {
                    let replicas = service.reconciler.status();
                    // From the proxy's service, which also counts the requests a draining
                    // replica (no longer balanced over) is still finishing.
                    let handle = state.proxy.service(&name);
                    let balanced = value["endpoints"].take();
                    let rows: Vec<Value> = replicas
                        .replicas
                        .iter()
                        .map(|r| {
                            let mut row = json!(r);
                            row["in_flight"] =
                                json!(handle.as_ref().map_or(0, |h| h.in_flight(&r.id)));
                            mark_ejected(&mut row, &balanced);
                            row
                        })
                        .collect();
                    value["kind"] = json!("container");
                    value["replicas"] = json!(*replicas);
                    value["replicas"]["ready"] = json!(ready_not_ejected(replicas.ready, &rows));
                    value["scale"] = json!(replicas.scale);
                    value["endpoints"] = json!(rows);
                }
                None => {
                    let endpoints = match value["endpoints"].take() {
                        Value::Array(endpoints) => endpoints,
                        _ => Vec::new(),
                    };
                    // Ready as for replicas: passing its health checks (and not ejected).
                    let ready = endpoints
                        .iter()
                        .filter(|e| e["healthy"].as_bool() == Some(true))
                        .count();
                    value["replicas"] = json!({
                        "desired": endpoints.len(), "ready": ready, "starting": 0, "draining": 0,
                        "min": null, "max": null, "pinned": null
                    });
                    // The same keys as a container service's, empty where shoal neither
                    // scales nor runs these endpoints, so that clients read one shape.
                    value["scale"] = Value::Null;
                    let rows: Vec<Value> = endpoints
                        .into_iter()
                        .map(|mut row| {
                            row["restarts"] = json!(0);
                            for key in ["started_at", "cpu_seconds", "memory_bytes", "last_exit"] {
                                row[key] = Value::Null;
                            }
                            row
                        })
                        .collect();
                    value["endpoints"] = json!(rows);
                }
            }
            value
        })
        .collect()
}

/// A ready replica that the proxy's outlier detection has ejected shows as `ejected` and
/// not healthy, as an ejected `upstreams` endpoint does: it gets no traffic until the
/// ejection ends, although its health checks pass.
fn mark_ejected(row: &mut Value, balanced: &Value) {
    let ejected = balanced.as_array().into_iter().flatten().any(|endpoint| {
        endpoint["id"] == row["id"] && endpoint["state"].as_str() == Some("ejected")
    });
    if ejected && row["state"].as_str() == Some("ready") {
        row["state"] = json!("ejected");
        row["healthy"] = json!(false);
    }
}

/// The ready replicas less those [`mark_ejected`] marked: an ejected replica is not counted
/// ready, as for `upstreams` endpoints.
fn ready_not_ejected(ready: u32, rows: &[Value]) -> usize {
    let ejected = rows.iter().filter(|r| r["state"] == "ejected").count();
    (ready as usize).saturating_sub(ejected)
}

/// `POST /api/v1/services/{name}/scale` with `{"replicas": N}` or `{"replicas": "auto"}`.
async fn scale(req: Request<Incoming>, state: &Daemon, name: &str) -> Response<Body> {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) if err.is::<LengthLimitError>() => {
            return json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": format!("the request body is over {MAX_BODY} bytes; send {{\"replicas\": N}}")}),
            )
        }
        Err(err) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("cannot read the request body: {err}")}),
            )
        }
    };
    let Some(service) = state.container_service(name) else {
        let known = state.proxy.status().iter().any(|s| s.name == name);
        let error = if known {
            format!("service `{name}` fronts external upstreams; only container services scale")
        } else {
            format!("no service named `{name}`")
        };
        let status = if known {
            StatusCode::CONFLICT
        } else {
            StatusCode::NOT_FOUND
        };
        return json_response(status, json!({ "error": error }));
    };
    let Some(desired) = desired_count(&body) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "send {\"replicas\": N} or {\"replicas\": \"auto\"}"}),
        );
    };
    match service.reconciler.scale(desired) {
        Ok(()) => {
            let replicas = match desired {
                Desired::Pinned(n) => json!(n),
                Desired::Auto => json!("auto"),
            };
            json_response(
                StatusCode::OK,
                json!({"service": name, "replicas": replicas}),
            )
        }
        Err(refused) => {
            // A count past `max` is the caller's mistake; a service on its way out is not.
            let status = match refused {
                ScaleRefused::AboveMax { .. } => StatusCode::BAD_REQUEST,
                ScaleRefused::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            };
            json_response(status, json!({ "error": refused.to_string() }))
        }
    }
}

fn authorized(req: &Request<Incoming>, state: &Daemon) -> bool {
    let Some(token) = &state.token else {
        return true;
    };
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_credentials)
        .is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
}

/// The credentials of a `Bearer` authorization; the scheme's name is case-insensitive
/// (RFC 9110 §11.1).
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim())
}

/// Compares without an early exit, so response timing does not reveal the token's prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn metrics(registry: &Registry) -> Response<Body> {
    let mut buffer = Vec::new();
    let encoder = TextEncoder::new();
    match encoder.encode(&registry.gather(), &mut buffer) {
        Ok(()) => Response::builder()
            .header(header::CONTENT_TYPE, encoder.format_type())
            .body(Full::new(Bytes::from(buffer)))
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed")),
        Err(err) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {err}"),
        ),
    }
}

/// A plain-text answer: SPEC's bodies exactly (`ok`), without a trailing newline.
fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// The count a scale body asks for: `{"replicas": N}`, N a whole number (`2` or `2.0`, as
/// JSON writers differ), or `{"replicas": "auto"}`. Any other key is refused, as the config
/// refuses unknown keys: a misspelt one may be meant.
fn desired_count(body: &[u8]) -> Option<Desired> {
    let value = serde_json::from_slice::<Value>(body).ok()?;
    if value.as_object()?.len() != 1 {
        return None;
    }
    match &value["replicas"] {
        Value::String(auto) if auto == "auto" => Some(Desired::Auto),
        n => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(f))
                    .map(|f| f as u64)
            })
            .and_then(|n| u32::try_from(n).ok())
            .map(Desired::Pinned),
    }
}

#[cfg(test)]
mod tests {
    use super::{constant_time_eq, desired_count, mark_ejected, ready_not_ejected};
    use serde_json::json;
    use shoal_autoscaler::Desired;

    #[test]
    fn a_scale_body_asks_for_a_whole_count_or_auto() {
        let ask = |body: &str| desired_count(body.as_bytes());
        assert_eq!(ask(r#"{"replicas": 2}"#), Some(Desired::Pinned(2)));
        assert_eq!(ask(r#"{"replicas": 2.0}"#), Some(Desired::Pinned(2)));
        assert_eq!(ask(r#"{"replicas": "auto"}"#), Some(Desired::Auto));
        for bad in [
            r#"{"replicas": 2.5}"#,
            r#"{"replicas": -1}"#,
            r#"{"replicas": "3"}"#,
            r#"{"replicas": 1e12}"#,
            r#"{}"#,
            r#"{"replicas": 2, "x": 1}"#,
            r#"[2]"#,
            "not json",
        ] {
            assert_eq!(ask(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_ejected_replica_shows_ejected() {
        let balanced = json!([{"id": "web-1", "state": "ejected", "healthy": false},
                              {"id": "web-2", "state": "ready", "healthy": true}]);
        let mut rows = [
            json!({"id": "web-1", "state": "ready", "healthy": true}),
            json!({"id": "web-2", "state": "ready", "healthy": true}),
            json!({"id": "web-3", "state": "draining", "healthy": false}),
        ];
        for row in &mut rows {
            mark_ejected(row, &balanced);
        }
        assert_eq!(
            rows[0],
            json!({"id": "web-1", "state": "ejected", "healthy": false})
        );
        assert_eq!(
            rows[1],
            json!({"id": "web-2", "state": "ready", "healthy": true})
        );
        assert_eq!(rows[2]["state"], "draining");
        assert_eq!(ready_not_ejected(2, &rows), 1);
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
