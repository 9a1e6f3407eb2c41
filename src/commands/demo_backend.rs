//! `shoal demo-backend`: the small HTTP workload the demo and the tests run.
//!
//! `GET /` → `hello from <replica>`; `/healthz` → 200; `/sleep?ms=N`; `/cpu?ms=N` burns CPU;
//! `/status/NNN` answers that status; `POST /echo` returns the body; `/ws` is a WebSocket echo
//! (not in SPEC; the proxy's Upgrade tests need a real peer). `/headers` returns the request
//! headers as text, so tests can see what the proxy forwarded.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use nix::sys::signal;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Port to listen on; defaults to `$PORT`, then 8080.
    #[arg(long)]
    port: Option<u16>,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
}

type Body = Full<Bytes>;

pub fn run(args: Args) -> anyhow::Result<i32> {
    let port = match args.port {
        Some(port) => port,
        None => match std::env::var("PORT") {
            Ok(text) => text
                .parse()
                .with_context(|| format!("PORT={text} is not a port number"))?,
            Err(_) => 8080,
        },
    };
    let replica: Arc<str> = std::env::var("SHOAL_REPLICA")
        .unwrap_or_else(|_| "demo-backend".to_string())
        .into();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let stopped_by = runtime.block_on(serve(SocketAddr::new(args.bind, port), replica))?;
    drop(runtime);
    // Ended by the signal, as a server without a handler would be: a replica that something
    // other than shoal stops (`kill PID`) has failed for `restart: on_failure`, which an exit
    // status of 0 would tell it had not.
    // SAFETY: the runtime, whose handler this replaces, is gone; no other thread is left.
    unsafe { signal::signal(stopped_by, signal::SigHandler::SigDfl) }
        .context("cannot restore the signal's default action")?;
    signal::raise(stopped_by).context("cannot end by the signal")?;
    Ok(128 + stopped_by as i32)
}

/// Serves until SIGTERM or SIGINT, which it returns.
async fn serve(addr: SocketAddr, replica: Arc<str>) -> anyhow::Result<signal::Signal> {
    // The proxy's own backlog: a replica meets the same bursts of new connections.
    let listener = shoal_proxy::listen(addr)
        .with_context(|| format!("cannot listen on {addr}; is the port in use?"))?;
    tracing::info!(%addr, %replica, "demo backend listening");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(%err, "accept failed");
                    continue;
                }
            },
            _ = terminate.recv() => return Ok(signal::Signal::SIGTERM),
            _ = tokio::signal::ctrl_c() => return Ok(signal::Signal::SIGINT),
        };
        let replica = replica.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(req, replica.clone()));
            let mut conn = auto::Builder::new(TokioExecutor::new());
            // A client that sends its request and then shuts its side (`nc -N`, socat, a
            // test of a tcp listener's half-close) still gets the answer, as from nginx.
            conn.http1().half_close(true);
            if let Err(err) = conn
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%err, "connection ended with an error");
            }
        });
    }
}

async fn handle(req: Request<Incoming>, replica: Arc<str>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let ms = query_ms(req.uri().query());
    let response = match (req.method().as_str(), path.as_str()) {
        (_, "/sleep" | "/cpu") if ms.is_err() => text(
            StatusCode::BAD_REQUEST,
            "use ?ms=N, N a whole number\n".to_string(),
        ),
        // HEAD as GET: hyper leaves the body out.
        ("GET" | "HEAD", "/") => text(StatusCode::OK, format!("hello from {replica}\n")),
        (_, "/healthz") => text(StatusCode::OK, "ok\n".to_string()),
        (_, "/sleep") => {
            let ms = ms.unwrap_or_default();
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(StatusCode::OK, format!("slept {ms}ms on {replica}\n"))
        }
        (_, "/cpu") => {
            let ms = ms.unwrap_or_default();
            let burned = tokio::task::spawn_blocking(move || burn(Duration::from_millis(ms)))
                .await
                .unwrap_or(0);
            text(
                StatusCode::OK,
                format!("burned {ms}ms ({burned} rounds) on {replica}\n"),
            )
        }
        ("POST", "/echo") => match req.into_body().collect().await {
            Ok(body) => Response::new(Full::new(body.to_bytes())),
            Err(err) => text(
                StatusCode::BAD_REQUEST,
                format!("cannot read body: {err}\n"),
            ),
        },
        (_, "/echo") => {
            let mut response = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "POST a body to /echo\n".to_string(),
            );
            response.headers_mut().insert(
                hyper::header::ALLOW,
                hyper::header::HeaderValue::from_static("POST"),
            );
            response
        }
        (_, "/headers") => {
            let mut out = String::new();
            for (name, value) in req.headers() {
                out.push_str(&format!(
                    "{name}: {}\n",
                    String::from_utf8_lossy(value.as_bytes())
                ));
            }
            text(StatusCode::OK, out)
        }
        ("GET", "/ws") => websocket(req),
        (_, p) if p.starts_with("/status/") => match p["/status/".len()..].parse::<u16>() {
            Ok(code) => match StatusCode::from_u16(code) {
                Ok(status) => text(status, format!("status {code} from {replica}\n")),
                Err(_) => text(StatusCode::BAD_REQUEST, format!("{code} is not a status\n")),
            },
            Err(_) => text(StatusCode::BAD_REQUEST, "use /status/NNN\n".to_string()),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            format!("{path} not found on {replica}\n"),
        ),
    };
    Ok(response)
}

/// `ms=N` of a query: 0 when absent, an error when it is not a whole number.
fn query_ms(query: Option<&str>) -> Result<u64, ()> {
    match query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("ms="))
    {
        Some(value) => value.parse().map_err(|_| ()),
        None => Ok(0),
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

/// Spins for `budget` of CPU time, so `/cpu` loads a core the way real work would.
fn burn(budget: Duration) -> u64 {
    let start = Instant::now();
    let mut rounds: u64 = 0;
    while start.elapsed() < budget {
        rounds = std::hint::black_box(rounds.wrapping_add(1));
    }
    rounds
}

/// Answers the WebSocket handshake and echoes every message on the upgraded connection.
fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return text(
            StatusCode::BAD_REQUEST,
            "missing sec-websocket-key\n".to_string(),
        );
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(%err, "websocket upgrade failed");
                return;
            }
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(message)) = ws.next().await {
            if message.is_close() || ws.send(message).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(Full::new(Bytes::new()))
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, String::new()))
}
