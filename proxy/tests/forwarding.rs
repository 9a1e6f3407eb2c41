//! Forwarding, balancing and header rewriting against real backends.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn round_robin_forwards_and_rewrites_headers() {
    let a = echo_backend("a").await;
    let b = echo_backend("b").await;
    let p = proxy(&single(&[a.addr, b.addr], "    balance: round_robin\n")).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let answer = get(p.addr, "/hello?x=1").await;
        assert_eq!(answer.status, 200);
        seen.push(answer.header("x-backend").unwrap().to_string());
        let echoed = answer.echoed();
        assert_eq!(echoed["x-forwarded-for"], vec!["127.0.0.1"]);
        assert_eq!(echoed["x-forwarded-proto"], vec!["http"]);
        assert_eq!(echoed["x-forwarded-host"], vec!["example.com"]);
        assert_eq!(echoed["host"], vec!["example.com"]);
        let id = &echoed["x-request-id"][0];
        assert_eq!(answer.header("x-request-id"), Some(id.as_str()));
    }
    assert_eq!(seen, vec!["a", "b", "a", "b"]);
    assert_eq!(
        metric(
            &p.registry,
            "shoal_http_requests_total",
            &[("listener", "web"), ("service", "svc"), ("code", "200")]
        ),
        4.0
    );
    p.proxy.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn h2c_prior_knowledge_clients_are_served() {
    let a = echo_backend("a").await;
    let p = proxy(&single(&[a.addr], "")).await;
    let answer = send_h2(
        p.addr,
        http::Request::get("http://example.com/h2")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(http_body_util::Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, 200);
    let echoed = answer.echoed();
    assert_eq!(echoed["host"], vec!["example.com"]);
    assert_eq!(echoed["cookie"], vec!["a=1; b=2"]);
    assert!(answer.header("x-request-id").is_some());
    assert_eq!(
        metric(
            &p.registry,
            "shoal_http_requests_total",
            &[("service", "svc"), ("code", "200")]
        ),
        1.0
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let up = backend("up", |_req, _name| async {
        http::Response::builder()
            .header("connection", "x-upstream-private")
            .header("x-upstream-private", "1")
            .header("keep-alive", "timeout=5")
            .header("x-public", "yes")
            .body(http_body_util::Full::default())
            .unwrap()
    })
    .await;
    let echo = echo_backend("echo").await;
    let p = proxy(&single(&[echo.addr], "")).await;
    let answer = send(
        p.addr,
        http::Request::get("/")
            .header("host", "x")
            .header("connection", "x-secret")
            .header("x-secret", "1")
            .header("proxy-connection", "keep-alive")
            .header("te", "trailers")
            .header("x-request-id", "given-id")
            .body(http_body_util::Full::default())
            .unwrap(),
    )
    .await;
    let echoed = answer.echoed();
    assert!(!echoed.contains_key("x-secret"));
    assert!(!echoed.contains_key("proxy-connection"));
    assert_eq!(echoed["te"], vec!["trailers"]);
    assert_eq!(echoed["x-request-id"], vec!["given-id"]);
    assert_eq!(answer.header("x-request-id"), Some("given-id"));

    let p = proxy(&single(&[up.addr], "")).await;
    let answer = get(p.addr, "/").await;
    assert_eq!(answer.header("x-public"), Some("yes"));
    assert!(answer.header("x-upstream-private").is_none());
    assert!(answer.header("keep-alive").is_none());
}

#[tokio::test]
async fn bodies_stream_both_ways() {
    let a = echo_backend("a").await;
    let p = proxy(&single(&[a.addr], "")).await;
    let big = bytes::Bytes::from(vec![b'z'; 3 << 20]);
    let answer = send(
        p.addr,
        http::Request::post("/echo")
            .header("host", "x")
            .body(http_body_util::Full::new(big.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.len(), big.len());
    assert_eq!(answer.body, big);
}

#[tokio::test]
async fn consistent_hash_on_header_is_sticky() {
    let backends = [
        echo_backend("a").await,
        echo_backend("b").await,
        echo_backend("c").await,
    ];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let p = proxy(&single(
        &addrs,
        "    balance: consistent_hash\n    hash_on: header:x-user\n",
    ))
    .await;
    let mut owners = std::collections::BTreeSet::new();
    for user in 0..20 {
        let mut first = None;
        for _ in 0..3 {
            let answer = send(
                p.addr,
                http::Request::get("/")
                    .header("host", "x")
                    .header("x-user", format!("user-{user}"))
                    .body(http_body_util::Full::default())
                    .unwrap(),
            )
            .await;
            let backend = answer.header("x-backend").unwrap().to_string();
            assert_eq!(first.get_or_insert(backend.clone()), &backend);
        }
        owners.insert(first.unwrap());
    }
    assert!(owners.len() >= 2, "20 users all on {owners:?}");
}

#[tokio::test]
async fn keep_alive_connections_are_reused() {
    let a = echo_backend("a").await;
    let p = proxy(&single(&[a.addr], "")).await;
    for _ in 0..5 {
        assert_eq!(get(p.addr, "/").await.status, 200);
    }
    // the backend accepted one connection for five requests
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 5);
    assert_eq!(a.connections.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Small bodies are read whole and go on the same connection, whatever the method.
    let post = |body: bytes::Bytes| {
        http::Request::post("/echo")
            .header("host", "x")
            .body(http_body_util::Full::new(body))
            .unwrap()
    };
    for _ in 0..3 {
        let answer = send(p.addr, post(bytes::Bytes::from_static(b"small"))).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, "small");
    }
    assert_eq!(a.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    // A streamed body goes through hyper's client on the pooled connection, which comes
    // back to the pool once its response has been read (before the client has all of it).
    let big = bytes::Bytes::from(vec![b'z'; 1 << 20]);
    for _ in 0..2 {
        assert_eq!(send(p.addr, post(big.clone())).await.status, 200);
    }
    assert_eq!(get(p.addr, "/").await.status, 200);
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 11);
    assert_eq!(a.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn request_counters_equal_requests_sent() {
    let a = echo_backend("a").await;
    let yaml = format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    routes:\n      - {{ match: {{ path_prefix: /api }}, service: svc }}\nservices:\n  svc:\n    upstreams: {{ static: [\"{}\"] }}\n",
        a.addr
    );
    let p = proxy(&yaml).await;
    for i in 0..30 {
        let path = if i % 3 == 0 { "/other" } else { "/api/x" };
        get(p.addr, path).await;
    }
    let ok = metric(
        &p.registry,
        "shoal_http_requests_total",
        &[("service", "svc"), ("code", "200")],
    );
    let missing = metric(
        &p.registry,
        "shoal_http_requests_total",
        &[("service", ""), ("code", "404")],
    );
    assert_eq!((ok, missing), (20.0, 10.0));
    assert!(
        eventually(Duration::from_secs(5), || {
            metric(
                &p.registry,
                "shoal_http_request_duration_seconds",
                &[("service", "svc")],
            ) == 20.0
                && metric(
                    &p.registry,
                    "shoal_requests_in_flight",
                    &[("service", "svc")],
                ) == 0.0
        })
        .await
    );
    let status = p.proxy.status();
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].name, "svc");
    assert_eq!(status[0].endpoints[0].id, a.addr.to_string());
    let json = serde_json::to_value(&status[0]).unwrap();
    assert_eq!(json["kind"], "upstreams");
    assert_eq!(json["load"]["queued"], 0);
    assert_eq!(json["endpoints"][0]["state"], "ready");
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_not_used() {
    // Each connection gets one answer that claims nothing about closing, then is closed.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
        }
    });
    // Without retries a POST sent on the closed connection would fail.
    let p = proxy(&single(&[addr], "    retries: { attempts: 0 }\n")).await;
    for _ in 0..3 {
        let answer = send(
            p.addr,
            http::Request::post("/")
                .header("host", "x")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))
                .unwrap(),
        )
        .await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, "ok");
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
}

/// Without traffic an idle pooled connection is still closed once `timeouts.idle` passes:
/// the upstream does not see it held for ever.
#[tokio::test]
async fn an_idle_pooled_connection_is_closed_after_the_idle_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = closed.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                // Kept open until the proxy closes it.
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
    });
    let p = proxy(&single(
        &[addr],
        "    timeouts: { idle: 300ms }\n    health: { interval: 1h }\n",
    ))
    .await;
    // The client keeps its connection: the request is over when its answer has come, and
    // its upstream connection then goes back to the pool.
    let mut client = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        while !answer.ends_with(b"ok") {
            let mut buf = [0u8; 1024];
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "{}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        closed.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "closed before the idle timeout"
    );
    assert!(
        eventually(Duration::from_secs(5), || closed
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1)
        .await,
        "the idle upstream connection is still open"
    );
}
