//! shoal's own errors: each gets SPEC's status and `x-shoal-error`, never panics the proxy,
//! and shows in the metrics.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::*;

fn requests(p: &TestProxy, service: &str, code: &str) -> f64 {
    metric(
        &p.registry,
        "shoal_http_requests_total",
        &[("listener", "web"), ("service", service), ("code", code)],
    )
}

#[tokio::test]
async fn connect_failure_is_retried_on_another_endpoint() {
    let dead = dead_addr().await;
    let live = echo_backend("live").await;
    // Outlier ejection (tests/outlier.rs) would take the dead endpoint out after five
    // failures; this test is about the retry, so it is off.
    let p = proxy(&single(
        &[dead, live.addr],
        "    balance: round_robin\n    outlier: { max_ejected_percent: 0 }\n",
    ))
    .await;
    for _ in 0..6 {
        let answer = get(p.addr, "/").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("x-backend"), Some("live"));
    }
    // Round robin sends every other first attempt to the dead endpoint (a retry uses up no
    // turn); without outlier ejection each of those pays one failed connect.
    let connect_errors = metric(
        &p.registry,
        "shoal_upstream_connect_errors_total",
        &[("service", "svc")],
    );
    assert_eq!(connect_errors, 3.0);
    assert_eq!(
        metric(
            &p.registry,
            "shoal_upstream_retries_total",
            &[("service", "svc")]
        ),
        3.0
    );
    assert_eq!(requests(&p, "svc", "200"), 6.0);
}

#[tokio::test]
async fn p2c_ewma_steers_away_from_a_refusing_endpoint() {
    let dead = dead_addr().await;
    let live = echo_backend("live").await;
    let p = proxy(&single(&[dead, live.addr], "")).await;
    for _ in 0..20 {
        assert_eq!(get(p.addr, "/").await.status, 200);
    }
    // the first failed connect makes the dead endpoint look slow; later requests avoid it
    let connect_errors = metric(
        &p.registry,
        "shoal_upstream_connect_errors_total",
        &[("service", "svc")],
    );
    assert!(connect_errors <= 2.0, "{connect_errors} failed connects");
}

#[tokio::test]
async fn connect_failure_is_retried_even_for_post() {
    let dead = dead_addr().await;
    let live = echo_backend("live").await;
    // Outlier ejection (tests/outlier.rs) would take the dead endpoint out after five
    // failures; this test is about the retry, so it is off.
    let p = proxy(&single(
        &[dead, live.addr],
        "    balance: round_robin\n    outlier: { max_ejected_percent: 0 }\n",
    ))
    .await;
    for _ in 0..2 {
        let answer = send(
            p.addr,
            Request::post("/")
                .header("host", "x")
                .body(Full::new(Bytes::from("payload")))
                .unwrap(),
        )
        .await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.text(), "payload");
    }
}

#[tokio::test]
async fn connect_failure_retries_follow_on_and_attempts() {
    let live = echo_backend("live").await;
    // Without `connect_failure` in `on`, a refused connect is the answer: round robin
    // sends every other request to the dead endpoint.
    let dead = dead_addr().await;
    let p = proxy(&single(
        &[dead, live.addr],
        "    balance: round_robin\n    outlier: { max_ejected_percent: 0 }\n    retries: { on: [reset, 503] }\n",
    ))
    .await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get(p.addr, "/").await.status);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 502, 502]);
    assert_eq!(
        metric(
            &p.registry,
            "shoal_upstream_retries_total",
            &[("service", "svc")]
        ),
        0.0
    );

    // With it, `attempts` caps the retries: three dead endpoints ahead of the live one and
    // one retry allowed leave the first request short of it.
    let dead: Vec<_> = [dead_addr().await, dead_addr().await, dead_addr().await].into();
    let p = proxy(&single(
        &[dead[0], dead[1], dead[2], live.addr],
        "    balance: round_robin\n    outlier: { max_ejected_percent: 0 }\n    retries: { attempts: 1 }\n",
    ))
    .await;
    let answer = get(p.addr, "/").await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.header("x-shoal-error"), Some("upstream_unreachable"));
    assert_eq!(
        metric(
            &p.registry,
            "shoal_upstream_connect_errors_total",
            &[("service", "svc")]
        ),
        2.0
    );
}

#[tokio::test]
async fn all_endpoints_down_is_502() {
    let p = proxy(&single(&[dead_addr().await, dead_addr().await], "")).await;
    let answer = get(p.addr, "/").await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.header("x-shoal-error"), Some("upstream_unreachable"));
    assert!(answer.header("x-request-id").is_some());
    assert_eq!(
        metric(
            &p.registry,
            "shoal_upstream_connect_errors_total",
            &[("service", "svc")]
        ),
        2.0
    );
    assert_eq!(requests(&p, "svc", "502"), 1.0);
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let slow = backend("slow", |_req, _name| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Response::new(Full::default())
    })
    .await;
    let p = proxy(&single(&[slow.addr], "    timeouts: { request: 200ms }\n")).await;
    let answer = get(p.addr, "/").await;
    assert_eq!(answer.status, 504);
    assert_eq!(answer.header("x-shoal-error"), Some("upstream_timeout"));
    assert_eq!(requests(&p, "svc", "504"), 1.0);
    assert!(
        eventually(Duration::from_secs(5), || metric(
            &p.registry,
            "shoal_requests_in_flight",
            &[("service", "svc")]
        ) == 0.0)
        .await
    );
}

#[tokio::test]
async fn no_route_is_404() {
    let a = echo_backend("a").await;
    let yaml = format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    routes:\n      - {{ match: {{ host: api.example.com, path_prefix: /v1 }}, service: api }}\n      - {{ match: {{ headers: {{ x-canary: \"1\" }} }}, service: api }}\nservices:\n  api:\n    upstreams: {{ static: [\"{}\"] }}\n",
        a.addr
    );
    let p = proxy(&yaml).await;
    let routed = send(
        p.addr,
        Request::get("/v1/users")
            .header("host", "api.example.com:8080")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(routed.status, 200);
    let canary = send(
        p.addr,
        Request::get("/")
            .header("host", "other")
            .header("x-canary", "1")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(canary.status, 200);
    let unrouted = send(
        p.addr,
        Request::get("/v2")
            .header("host", "api.example.com")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(unrouted.status, 404);
    assert_eq!(unrouted.header("x-shoal-error"), Some("no_route"));
    assert_eq!(requests(&p, "", "404"), 1.0);
    assert_eq!(requests(&p, "api", "200"), 2.0);
}

#[tokio::test]
async fn malformed_request_is_400() {
    let a = echo_backend("a").await;
    let p = proxy(&single(&[a.addr], "")).await;
    let text = raw(p.addr, b"GARBAGE\r\n\r\n", Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("x-shoal-error: bad_request"), "{text}");
    assert!(
        text.contains("\r\ndate: "),
        "dated as every answer is: {text}"
    );
    let text = raw(
        p.addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(requests(&p, "", "400"), 2.0);
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn invalid_host_or_length_is_400_and_a_coding_501_whatever_came_before() {
    let a = echo_backend("a").await;
    let p = proxy(&single(&[a.addr], "")).await;
    // On a fresh connection, after a streamed body, and after an Upgrade the upstream
    // refused (which once handed the connection to hyper's server): all answer SPEC's 400
    // with its error header.
    for prefix in [
        &b""[..],
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    ] {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a:port\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            // An http URI's host may not be empty (RFC 9110 §4.2.1).
            b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
        ] {
            let text = raw(p.addr, &[prefix, bad].concat(), Duration::from_secs(5)).await;
            let input = String::from_utf8_lossy(bad);
            assert!(text.contains("HTTP/1.1 400"), "{input}: {text}");
            assert!(
                text.contains("x-shoal-error: bad_request"),
                "{input}: {text}"
            );
        }
        // A coding shoal does not decode: 501, after each too.
        let coded =
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n";
        let text = raw(p.addr, &[prefix, coded].concat(), Duration::from_secs(5)).await;
        assert!(text.contains("HTTP/1.1 501"), "{text}");
        assert!(text.contains("x-shoal-error: not_implemented"), "{text}");
    }
    assert_eq!(requests(&p, "", "501"), 3.0);
    let text = raw(
        p.addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(text.contains("x-shoal-error: bad_request"), "{text}");
    for good in ["a", "a:80", "127.0.0.1:8080", "[::1]:8080", "[::1]"] {
        let request = format!("GET / HTTP/1.1\r\nHost: {good}\r\nConnection: close\r\n\r\n");
        let text = raw(p.addr, request.as_bytes(), Duration::from_secs(5)).await;
        assert!(text.starts_with("HTTP/1.1 200"), "Host: {good}: {text}");
    }
    // HTTP/1.0 may leave Host out; the upstream, spoken to in HTTP/1.1, gets the listener's
    // address (nginx sends its own), not a request without one.
    let text = raw(p.addr, b"GET / HTTP/1.0\r\n\r\n", Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"host\":[\"127.0.0.1:0\"]"), "{text}");
}

#[tokio::test]
async fn malformed_request_on_a_keep_alive_connection_is_400_and_counted() {
    let a = echo_backend("a").await;
    let p = proxy(&single(&[a.addr], "")).await;
    let text = raw(
        p.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGARBAGE\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("HTTP/1.1 400"), "{text}");
    assert!(text.contains("x-shoal-error: bad_request"), "{text}");
    assert!(eventually(Duration::from_secs(5), || requests(&p, "", "400") == 1.0).await);
}

#[tokio::test]
async fn big_header_is_431_and_one_at_the_limit_passes() {
    let a = echo_backend("a").await;
    let p = proxy(&single(
        &[a.addr],
        "    limits: { max_request_header_bytes: 1Ki }\n",
    ))
    .await;
    let mut head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 4000));
    head.extend_from_slice(b"\r\n\r\n");
    let text = raw(p.addr, &head, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    assert!(text.contains("x-shoal-error: header_too_large"), "{text}");
    assert_eq!(requests(&p, "", "431"), 1.0);

    // The limit is on what the client sent: the x-request-id shoal adds does not count.
    let mut head = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Big: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 1024 - head.len() - 4));
    head.extend_from_slice(b"\r\n\r\n");
    assert_eq!(head.len(), 1024);
    let text = raw(p.addr, &head, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(a.hits.load(Ordering::SeqCst), 1);
}

/// A service's own limit, below its listener's (which its other service sets), counts the
/// head as the listener does: 1024 bytes pass, 1025 do not.
#[tokio::test]
async fn a_routed_services_header_limit_counts_every_byte() {
    let a = echo_backend("a").await;
    // Not an echo: a 64 KiB head echoed back would be over the limit of a response's head.
    let b = backend("b", |_, name| async move {
        Response::new(Full::new(Bytes::from(name)))
    })
    .await;
    let p = proxy(&format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    routes:\n      - {{ match: {{ path_prefix: /small }}, service: small }}\n      - {{ service: big }}\nservices:\n  small:\n    upstreams: {{ static: [\"{}\"] }}\n    limits: {{ max_request_header_bytes: 1Ki }}\n  big:\n    upstreams: {{ static: [\"{}\"] }}\n",
        a.addr, b.addr
    ))
    .await;
    for (size, status) in [(1024, "200"), (1025, "431")] {
        let mut head = b"GET /small HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Big: ".to_vec();
        head.extend(std::iter::repeat_n(b'a', size - head.len() - 4));
        head.extend_from_slice(b"\r\n\r\n");
        assert_eq!(head.len(), size);
        let text = raw(p.addr, &head, Duration::from_secs(5)).await;
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status}")),
            "{size}: {text}"
        );
    }
    assert_eq!(a.hits.load(Ordering::SeqCst), 1);

    // A service with the listener's own limit is not judged again by the estimate, which
    // takes every field as `name: value`: a head at the limit whose fields have no space
    // after the colon passes, as it passed the listener.
    let mut head = b"GET /big HTTP/1.1\r\nHost:a\r\nConnection:close\r\nX-Big:".to_vec();
    head.extend(std::iter::repeat_n(b'a', 65536 - head.len() - 4));
    head.extend_from_slice(b"\r\n\r\n");
    assert_eq!(head.len(), 65536);
    let text = raw(p.addr, &head, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(b.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn big_header_on_a_keep_alive_connection_is_431() {
    let a = echo_backend("a").await;
    let p = proxy(&single(
        &[a.addr],
        "    limits: { max_request_header_bytes: 1Ki }\n",
    ))
    .await;
    let mut input =
        b"GET /small HTTP/1.1\r\nHost: a\r\n\r\nGET /big HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    input.extend(std::iter::repeat_n(b'a', 4000));
    input.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    let text = raw(p.addr, &input, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("HTTP/1.1 431"), "{text}");
    assert!(text.contains("x-shoal-error: header_too_large"), "{text}");
    // Refused before routing, like an oversized first head.
    assert_eq!(requests(&p, "", "431"), 1.0);
}

#[tokio::test]
async fn slow_header_is_408() {
    let a = echo_backend("a").await;
    let p = proxy(&single(&[a.addr], "    timeouts: { header_read: 200ms }\n")).await;
    let text = raw(
        p.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("x-shoal-error: header_timeout"), "{text}");
    assert!(
        text.contains("\r\ndate: "),
        "dated as every answer is: {text}"
    );
    assert_eq!(requests(&p, "", "408"), 1.0);
}

#[tokio::test]
async fn a_client_whose_body_stalls_gets_408_after_header_read() {
    // A body that streams (chunked; and over 64 KiB on HTTP/2, so not read whole first),
    // then stops with the connection left open: the client's doing, before the request
    // timeout would blame the upstream with a 504.
    let a = echo_backend("a").await;
    let p = proxy(&single(
        &[a.addr],
        "    timeouts: { header_read: 300ms, request: 20s }\n",
    ))
    .await;
    // Chunked (streamed), then a small body of known length (read whole before the request
    // goes on).
    for head in [
        &b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
    ] {
        let text = raw(p.addr, head, Duration::from_secs(10)).await;
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("x-shoal-error: body_timeout"), "{text}");
        // The rest of the body is not waited for.
        assert!(text.contains("connection: close"), "{text}");
    }

    let stream = TcpStream::connect(p.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::post("http://a/")
        .header("content-length", "100000")
        .body(())
        .unwrap();
    let (response, mut body) = client
        .ready()
        .await
        .unwrap()
        .send_request(request, false)
        .unwrap();
    body.send_data(Bytes::from_static(b"some of it"), false)
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("no answer")
        .unwrap();
    assert_eq!(response.status(), 408);
    assert_eq!(response.headers()["x-shoal-error"], "body_timeout");
    assert_eq!(requests(&p, "svc", "408"), 2.0);
    // The small body was refused before it was routed.
    assert_eq!(requests(&p, "", "408"), 1.0);
}

#[tokio::test]
async fn a_body_that_stalls_is_cut_after_the_idle_timeout() {
    // Three bytes of the ten promised, then nothing, with the connection left open.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
                    .await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    let p = proxy(&single(&[upstream], "    timeouts: { idle: 300ms }\n")).await;
    let started = std::time::Instant::now();
    let text = raw(
        p.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    // The client gets what came and then the end of the connection, not a wait for the
    // rest: its read ends long before its own 10 s limit.
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("\r\n\r\nabc"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the connection stayed open for {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn slow_header_on_a_keep_alive_connection_is_408() {
    let a = echo_backend("a").await;
    let p = proxy(&single(
        &[a.addr],
        "    timeouts: { header_read: 300ms, idle: 30s }\n",
    ))
    .await;
    let started = std::time::Instant::now();
    // A whole request, then the start of a second one that never ends: `header_read`, not
    // the 30 s `idle`, bounds the wait for the rest of its head.
    let text = raw(
        p.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n",
        Duration::from_secs(20),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("HTTP/1.1 408"), "{text}");
    assert!(text.contains("x-shoal-error: header_timeout"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered after {:?}",
        started.elapsed()
    );
}

/// An upstream that accepts, reads the request, and resets the connection.
async fn resetting_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                // SO_LINGER 0: closing sends RST instead of FIN. (Deprecated because a
                // non-zero linger blocks on drop; zero never blocks.)
                #[allow(deprecated)]
                let _ = stream.set_linger(Some(Duration::ZERO));
                drop(stream);
            });
        }
    });
    addr
}

#[tokio::test]
async fn resetting_upstream_is_502_and_counted() {
    let p = proxy(&single(&[resetting_upstream().await], "")).await;
    for _ in 0..3 {
        let answer = get(p.addr, "/").await;
        assert_eq!(answer.status, 502);
        assert_eq!(answer.header("x-shoal-error"), Some("upstream_reset"));
    }
    assert_eq!(requests(&p, "svc", "502"), 3.0);
    // GET is idempotent and `reset` is in the default `on`: retried, within the budget
    let retries = metric(
        &p.registry,
        "shoal_upstream_retries_total",
        &[("service", "svc")],
    );
    assert!((1.0..=6.0).contains(&retries), "{retries}");
    // the proxy still serves
    let answer = get(p.addr, "/").await;
    assert_eq!(answer.status, 502);
}

#[tokio::test]
async fn upstream_that_closes_without_answering_is_502() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream.write_all(b"HTTP/1.1 2").await;
        }
    });
    let p = proxy(&single(&[addr], "    retries: { attempts: 0 }\n")).await;
    let answer = get(p.addr, "/").await;
    assert_eq!(answer.status, 502);
    assert_eq!(requests(&p, "svc", "502"), 1.0);
}

#[tokio::test]
async fn retryable_status_is_retried_for_get_but_not_post() {
    let flaky = backend("flaky", |_req, _name| async {
        Response::builder()
            .status(503)
            .body(Full::new(Bytes::from("busy")))
            .unwrap()
    })
    .await;
    let good = echo_backend("good").await;
    let p = proxy(&single(
        &[flaky.addr, good.addr],
        // Without outlier ejection (see tests/outlier.rs), so that the flaky endpoint keeps
        // its turn.
        "    balance: round_robin\n    retries: { budget_percent: 100 }\n    outlier: { max_ejected_percent: 0 }\n",
    ))
    .await;
    for _ in 0..4 {
        let answer = get(p.addr, "/").await;
        assert_eq!(answer.status, 200);
    }
    let mut codes = Vec::new();
    for _ in 0..4 {
        let answer = send(
            p.addr,
            Request::post("/")
                .header("host", "x")
                .body(Full::new(Bytes::from("x")))
                .unwrap(),
        )
        .await;
        codes.push(answer.status.as_u16());
    }
    codes.sort();
    assert_eq!(codes, vec![200, 200, 503, 503]);
}

#[tokio::test]
async fn retry_budget_caps_status_retries() {
    let failing = backend("failing", |_req, _name| async {
        Response::builder()
            .status(503)
            .body(Full::default())
            .unwrap()
    })
    .await;
    let p = proxy(&single(
        &[failing.addr],
        "    retries: { attempts: 2, budget_percent: 20 }\n",
    ))
    .await;
    for _ in 0..50 {
        assert_eq!(get(p.addr, "/").await.status, 503);
    }
    let retries = metric(
        &p.registry,
        "shoal_upstream_retries_total",
        &[("service", "svc")],
    );
    // 20% of 50 requests, not 2 × 50
    assert!((3.0..=11.0).contains(&retries), "{retries}");
    assert_eq!(requests(&p, "svc", "503"), 50.0);
}

#[tokio::test]
async fn connection_limit_closes_extra_connections() {
    let a = echo_backend("a").await;
    let p = proxy(&single(&[a.addr], "    limits: { max_connections: 1 }\n")).await;
    let mut first = TcpStream::connect(p.addr).await.unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    first.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    // the first connection is still open: a second one is closed without an answer
    let text = raw(
        p.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(text, "");
    // once it closes, its slot is free again
    drop(first);
    let mut answered = String::new();
    for _ in 0..100 {
        answered = raw(
            p.addr,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        if !answered.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
}
