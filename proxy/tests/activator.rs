//! The hold queue of container services: requests wait for a first endpoint (scale from
//! zero), bounded in time and in number, and the reconciler is told at once.

mod common;

use std::time::{Duration, Instant};

use shoal_proxy::Endpoint;

use common::*;

/// YAML for listener `web` → container service `svc` scaled to zero, with `scale` keys
/// and `extra` service keys.
fn container(scale: &str, extra: &str) -> String {
    format!(
        "listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\", service: svc }}\nservices:\n  svc:\n    container: {{ host: true, command: [/bin/server] }}\n    scale: {{ min: 0, initial: 0{scale} }}\n{extra}"
    )
}

#[tokio::test]
async fn held_request_is_released_by_set_endpoints() {
    let backend = echo_backend("replica").await;
    let p = proxy(&container("", "")).await;
    let service = p.proxy.service("svc").unwrap();
    let mut demand = service.demand();
    assert_eq!(*demand.borrow_and_update(), 0);

    let addr = p.addr;
    let request = tokio::spawn(async move { get(addr, "/").await });
    // The reconciler's wake-up fires as soon as the request is held.
    tokio::time::timeout(Duration::from_secs(5), demand.changed())
        .await
        .expect("demand fired")
        .unwrap();
    assert_eq!(*demand.borrow(), 1);
    assert_eq!(service.queued(), 1);
    assert_eq!(service.load().queued, 1);
    // Held requests are queued, not in flight: the autoscaler adds the two.
    assert_eq!(service.load().in_flight, 0);
    assert_eq!(
        metric(&p.registry, "shoal_requests_queued", &[("service", "svc")]),
        1.0
    );
    assert!(!request.is_finished());
    // Held a while: that time is the autoscaler's queue, not the request's busy time.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let busy_before = service.load().busy;

    service.set_endpoints(vec![Endpoint {
        id: "svc-1".to_string(),
        address: backend.addr,
    }]);
    let answer = tokio::time::timeout(Duration::from_secs(5), request)
        .await
        .expect("released")
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "replica");
    let busy = service.load().busy - busy_before;
    assert!(busy < Duration::from_millis(90), "busy {busy:?}");
    assert_eq!(service.queued(), 0);
    assert_eq!(
        metric(&p.registry, "shoal_requests_queued", &[("service", "svc")]),
        0.0
    );
    // Once a replica is there, requests go straight through.
    assert_eq!(get(p.addr, "/").await.status, 200);
    assert_eq!(*demand.borrow(), 1);
}

/// Whether the service counts `count` failed connects within 5 s.
async fn refused_connects(p: &TestProxy, count: f64) -> bool {
    eventually(Duration::from_secs(5), || {
        metric(
            &p.registry,
            "shoal_upstream_connect_errors_total",
            &[("service", "svc")],
        ) >= count
    })
    .await
}

#[tokio::test]
async fn a_request_every_replica_refused_waits_for_the_next() {
    // The one replica died under the request (its port refuses connections): rather than
    // a 502, the request waits for the replica that replaces it, as a held request would.
    let backend = echo_backend("next").await;
    let p = proxy(&container("", "")).await;
    let service = p.proxy.service("svc").unwrap();
    let endpoint = |id: &str, address| Endpoint {
        id: id.to_string(),
        address,
    };
    service.set_endpoints(vec![endpoint("svc-1", dead_addr().await)]);
    let addr = p.addr;
    let request = tokio::spawn(async move { get(addr, "/").await });
    assert!(refused_connects(&p, 1.0).await);
    assert!(!request.is_finished(), "answered before a replica came");
    service.set_endpoints(vec![endpoint("svc-1", backend.addr)]);
    let answer = tokio::time::timeout(Duration::from_secs(5), request)
        .await
        .expect("the request went on with the new replica")
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "next");
    // With its retries used up while another replica is there to try, it gets its 502 at
    // once: `attempts` still bounds the tries among the replicas it has.
    let p = proxy(&container(
        ", cold_start_timeout: 10s",
        "    balance: round_robin\n    retries: { attempts: 0 }\n",
    ))
    .await;
    let service = p.proxy.service("svc").unwrap();
    service.set_endpoints(vec![
        endpoint("svc-1", dead_addr().await),
        endpoint("svc-2", backend.addr),
    ]);
    let started = Instant::now();
    assert_eq!(get(p.addr, "/").await.status, 502);
    assert!(started.elapsed() < Duration::from_secs(5), "it waited");
    // With none to come before `cold_start_timeout`, it gets its 502 then.
    let p = proxy(&container(", cold_start_timeout: 200ms", "")).await;
    let service = p.proxy.service("svc").unwrap();
    service.set_endpoints(vec![endpoint("svc-1", dead_addr().await)]);
    let started = Instant::now();
    let answer = get(p.addr, "/").await;
    assert_eq!(answer.status, 502);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn a_lone_replica_that_refused_a_connect_is_tried_again() {
    // The replica stays listed (it is ready: a SYN dropped from its full accept queue, say):
    // no next replica will come, so the request tries it again rather than wait the
    // `cold_start_timeout` out.
    listed_replicas_are_tried_again(1).await;
}

#[tokio::test]
async fn a_request_waiting_for_a_replica_tries_every_listed_one_each_round() {
    // Both refuse until the second answers: the request, waiting, tries both each round
    // rather than take its used-up retries for a 502 while the other is still listed.
    listed_replicas_are_tried_again(2).await;
}

/// `count` listed replicas refuse a request's connects until the last starts listening:
/// the request, waiting for a next replica that does not come, gets its answer from it.
async fn listed_replicas_are_tried_again(count: usize) {
    let p = proxy(&container(", cold_start_timeout: 20s", "")).await;
    let service = p.proxy.service("svc").unwrap();
    let mut addresses: Vec<std::net::SocketAddr> = Vec::new();
    while addresses.len() < count {
        let address = dead_addr().await;
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    service.set_endpoints(addresses.iter().map(|a| Endpoint::new(*a)).collect());
    let addr = p.addr;
    let request = tokio::spawn(async move { get(addr, "/").await });
    // Each refused, then at least one more round began.
    assert!(refused_connects(&p, count as f64 + 1.0).await);
    assert!(!request.is_finished(), "answered while waiting");
    let last = addresses[count - 1];
    answer_once(tokio::net::TcpListener::bind(last).await.unwrap(), "back");
    // Well before `cold_start_timeout` would end the wait.
    let answer = tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .expect("the listed replicas were tried again")
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "back");
}

/// Answers one request on `listener` with `body`, whatever it asks.
fn answer_once(listener: tokio::net::TcpListener, body: &'static str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if stream.read(&mut byte).await.unwrap() == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(answer.as_bytes()).await.unwrap();
    });
}

#[tokio::test]
async fn held_request_keeps_its_body() {
    let backend = echo_backend("replica").await;
    let p = proxy(&container("", "")).await;
    let service = p.proxy.service("svc").unwrap();
    let addr = p.addr;
    let request = tokio::spawn(async move {
        send(
            addr,
            http::Request::post("/upload")
                .header("host", "example.com")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    b"payload",
                )))
                .unwrap(),
        )
        .await
    });
    assert!(eventually(Duration::from_secs(5), || service.queued() == 1).await);
    service.set_endpoints(vec![Endpoint::new(backend.addr)]);
    let answer = request.await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "payload");
}

#[tokio::test]
async fn cold_start_timeout_answers_503_with_retry_after() {
    let p = proxy(&container(", cold_start_timeout: 200ms", "")).await;
    let started = Instant::now();
    let answer = get(p.addr, "/").await;
    let waited = started.elapsed();
    assert_eq!(answer.status, 503);
    assert_eq!(answer.header("x-shoal-error"), Some("cold_start_timeout"));
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    let service = p.proxy.service("svc").unwrap();
    assert_eq!(service.queued(), 0);
    // Its wait shows in the service's latency, as an answered held request's does.
    let p99 = service.load().p99_ms;
    assert!(p99 >= 200.0, "p99_ms {p99}");
    assert_eq!(
        metric(
            &p.registry,
            "shoal_http_requests_total",
            &[("service", "svc"), ("code", "503")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_service_that_cannot_start_a_replica_holds_nothing() {
    // The default cold_start_timeout (30 s) would outlast the test.
    let p = proxy(&container("", "")).await;
    let service = p.proxy.service("svc").unwrap();
    let addr = p.addr;
    let held = tokio::spawn(async move { get(addr, "/").await });
    assert!(eventually(Duration::from_secs(5), || service.queued() == 1).await);

    // The reconciler says no replica can become ready: the held request is answered now,
    // and later ones are not held.
    service.set_startable(false);
    for answer in [
        tokio::time::timeout(Duration::from_secs(5), held)
            .await
            .expect("released")
            .unwrap(),
        tokio::time::timeout(Duration::from_secs(5), get(p.addr, "/"))
            .await
            .expect("answered at once"),
    ] {
        assert_eq!(answer.status, 503);
        assert_eq!(answer.header("x-shoal-error"), Some("no_endpoints"));
        assert_eq!(answer.header("retry-after"), Some("1"));
    }
    assert_eq!(service.queued(), 0);

    // Once one can again, requests wait for it.
    service.set_startable(true);
    let held = tokio::spawn(async move { get(addr, "/").await });
    assert!(eventually(Duration::from_secs(5), || service.queued() == 1).await);
    held.abort();
}

#[tokio::test]
async fn full_queue_answers_503_at_once() {
    let p = proxy(&container("", "    limits: { max_queued_requests: 1 }\n")).await;
    let service = p.proxy.service("svc").unwrap();
    let addr = p.addr;
    let first = tokio::spawn(async move { get(addr, "/").await });
    assert!(eventually(Duration::from_secs(5), || service.queued() == 1).await);

    let started = Instant::now();
    let second = get(p.addr, "/").await;
    assert_eq!(second.status, 503);
    assert_eq!(second.header("x-shoal-error"), Some("queue_full"));
    assert_eq!(second.header("retry-after"), Some("1"));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(service.queued(), 1);

    // The first one still waits, and a client giving up leaves the queue.
    assert!(!first.is_finished());
    first.abort();
    assert!(eventually(Duration::from_secs(5), || service.queued() == 0).await);
}

#[tokio::test]
async fn upstream_services_do_not_hold() {
    let backend = echo_backend("b").await;
    let p = proxy(&single(&[backend.addr], "")).await;
    let service = p.proxy.service("svc").unwrap();
    let demand = service.demand();
    service.set_endpoints(Vec::new());
    let answer = get(p.addr, "/").await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.header("x-shoal-error"), Some("no_endpoints"));
    assert_eq!(service.queued(), 0);
    assert!(!demand.has_changed().unwrap());
}

/// A reload that removes a container service answers its held requests at once: no
/// replica of it will come, and waiting out `cold_start_timeout` (30 s by default) only
/// delays the 503.
#[tokio::test]
async fn held_requests_of_a_service_a_reload_removes_get_503_at_once() {
    let other = echo_backend("other").await;
    let p = proxy(&container("", "")).await;
    let service = p.proxy.service("svc").unwrap();
    let addr = p.addr;
    let held = tokio::spawn(async move { get(addr, "/").await });
    assert!(eventually(Duration::from_secs(5), || service.queued() == 1).await);

    let after = format!(
        "listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\", service: st }}\nservices:\n  st:\n    upstreams: {{ static: [\"{}\"] }}\n",
        other.addr
    );
    let started = Instant::now();
    p.proxy
        .apply(
            &shoal_config::parse(&after, "test.yaml").unwrap(),
            std::path::Path::new(""),
        )
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("answered well before cold_start_timeout")
        .unwrap();
    assert_eq!(answer.status, 503);
    assert_eq!(answer.header("x-shoal-error"), Some("no_endpoints"));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(service.queued(), 0);
    // The listener goes to the new service.
    assert_eq!(get(p.addr, "/").await.text(), "other");
}
