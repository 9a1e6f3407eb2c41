//! Helpers for the proxy's integration tests: tiny hyper backends, a proxy built from YAML,
//! a simple client, and metric readers. Everything listens on 127.0.0.1 ephemeral ports.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

use shoal_proxy::Proxy;

pub type Reply = Response<Full<Bytes>>;

/// A running test backend.
pub struct Backend {
    pub addr: SocketAddr,
    /// Requests served.
    pub hits: Arc<AtomicUsize>,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
}

/// Starts an HTTP/1.1 backend; `handler` gets the request and this backend's name.
pub async fn backend<F, Fut>(name: &str, handler: F) -> Backend
where
    F: Fn(Request<Incoming>, String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    let handler = Arc::new(handler);
    let name = name.to_string();
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            accepted.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            let name = name.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let fut = handler(req, name.clone());
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Backend {
        addr,
        hits,
        connections,
    }
}

/// A backend answering its name, with the request's headers as JSON in `x-echo`.
pub async fn echo_backend(name: &str) -> Backend {
    backend(name, |req, name| async move {
        let headers: BTreeMap<String, Vec<String>> = req
            .headers()
            .keys()
            .map(|k| {
                (
                    k.as_str().to_string(),
                    req.headers()
                        .get_all(k)
                        .iter()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .collect(),
                )
            })
            .collect();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Response::builder()
            .header("x-backend", name.as_str())
            .header("x-echo", serde_json::to_string(&headers).unwrap())
            .body(Full::new(if body.is_empty() {
                Bytes::from(name)
            } else {
                body
            }))
            .unwrap()
    })
    .await
}

/// A backend that never answers; the receiver hears when a request's handler is dropped,
/// which hyper does when the proxy closes the upstream connection.
pub async fn stuck_backend() -> (Backend, mpsc::UnboundedReceiver<()>) {
    let (dropped, gone) = mpsc::unbounded_channel::<()>();
    struct Report(mpsc::UnboundedSender<()>);
    impl Drop for Report {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
    let b = backend("stuck", move |_req, _| {
        let report = Report(dropped.clone());
        async move {
            let _report = report;
            std::future::pending::<()>().await;
            Response::new(Full::new(Bytes::new()))
        }
    })
    .await;
    (b, gone)
}

/// A backend that answers "finished" once `release` is notified, one request per
/// notification.
pub async fn held_backend(release: Arc<Notify>) -> Backend {
    backend("held", move |_req, _name| {
        let release = release.clone();
        async move {
            release.notified().await;
            Response::new(Full::new(Bytes::from("finished")))
        }
    })
    .await
}

/// An address nothing listens on (bound, then closed).
pub async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A running proxy.
pub struct TestProxy {
    pub proxy: Arc<Proxy>,
    pub registry: prometheus::Registry,
    pub addr: SocketAddr,
}

/// Builds and binds a proxy from YAML whose first listener binds 127.0.0.1:0.
pub async fn proxy(yaml: &str) -> TestProxy {
    let config = shoal_config::parse(yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"));
    let registry = prometheus::Registry::new();
    let proxy = Proxy::new(&config, &registry).unwrap();
    proxy.bind().await.unwrap();
    let addr = proxy.local_addr(&config.listeners[0].name).unwrap();
    TestProxy {
        proxy,
        registry,
        addr,
    }
}

/// YAML for listener `web` → service `svc` over `upstreams`, with `extra` service keys.
pub fn single(upstreams: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\", service: svc }}\nservices:\n  svc:\n    upstreams: {{ static: [{}] }}\n{extra}",
        list.join(", ")
    )
}

/// A response read whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The request headers the echo backend saw.
    pub fn echoed(&self) -> BTreeMap<String, Vec<String>> {
        serde_json::from_str(self.header("x-echo").unwrap()).unwrap()
    }
}

/// Sends one request over a fresh HTTP/1.1 connection.
pub async fn send(addr: SocketAddr, request: Request<Full<Bytes>>) -> Answer {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    send(
        addr,
        Request::get(path)
            .header("host", "example.com")
            .body(Full::default())
            .unwrap(),
    )
    .await
}

/// Sends one request over HTTP/2 with prior knowledge.
pub async fn send_h2(addr: SocketAddr, request: Request<Full<Bytes>>) -> Answer {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Writes raw bytes and reads until the server closes or `timeout`; returns the text.
pub async fn raw(addr: SocketAddr, input: &[u8], timeout: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(input).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of a counter or gauge with exactly these labels (0 when absent).
pub fn metric(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    for family in registry.gather() {
        if family.name() != name {
            continue;
        }
        for m in family.get_metric() {
            let matches = labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            });
            if matches {
                return match family.get_field_type() {
                    prometheus::proto::MetricType::COUNTER => m.get_counter().get_value(),
                    prometheus::proto::MetricType::GAUGE => m.get_gauge().get_value(),
                    prometheus::proto::MetricType::HISTOGRAM => {
                        m.get_histogram().get_sample_count() as f64
                    }
                    _ => 0.0,
                };
            }
        }
    }
    0.0
}

/// Polls `check` until it holds or `within` passes.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

/// An upstream that answers each request at once with `size` bytes while it reads the
/// request's body (of `Content-Length` bytes) on, as a streaming echo does. It reports how
/// much of the body it read.
pub async fn full_duplex_upstream(size: usize) -> (SocketAddr, mpsc::UnboundedReceiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let (report, read) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let (mut reader, mut writer) = stream.into_split();
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 65536];
        let head_end = loop {
            if let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        };
        let head = String::from_utf8_lossy(&seen[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0);
        let answer = tokio::spawn(async move {
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
            writer.write_all(head.as_bytes()).await?;
            writer.write_all(&vec![b'r'; size]).await
        });
        let mut body = seen.len() - head_end;
        while body < length {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body += n,
            }
        }
        let _ = report.send(body);
        let _ = answer.await;
    });
    (up, read)
}

/// Bytes each way in [`send_whole_body_then_read`]: more than the socket buffers on either
/// side of the proxy hold.
pub const SENT_BEFORE_READING: usize = 32 << 20;

/// Sends a POST of [`SENT_BEFORE_READING`] bytes, all of it, before it reads the response,
/// through a proxy to a [`full_duplex_upstream`] answering as many bytes (`read` is its
/// report): the proxy must read the body on while the client does not take the response
/// yet, or each waits on the other.
pub async fn send_whole_body_then_read<S>(mut stream: S, mut read: mpsc::UnboundedReceiver<usize>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    const SIZE: usize = SENT_BEFORE_READING;
    let exchange = async {
        let head = format!(
            "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&vec![b'q'; SIZE]).await?;
        // A TLS client may still hold the body's last records: reading does not send them.
        stream.flush().await?;
        let mut out = Vec::new();
        // A TLS client may see the connection end without close_notify after the body.
        let _ = stream.read_to_end(&mut out).await;
        Ok::<_, std::io::Error>(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("the client and the proxy wait on each other")
        .unwrap();
    let text = String::from_utf8_lossy(&out[..out.len().min(200)]).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        out.len() > SIZE && out.ends_with(b"rrrr"),
        "{} bytes: {text}",
        out.len()
    );
    assert_eq!(
        read.recv().await,
        Some(SIZE),
        "the upstream did not get the whole body"
    );
}
