//! Endpoint sets swapped at run time, load as the autoscaler reads it, and pooled
//! connections under concurrent load.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::Response;
use http_body_util::Full;
use shoal_proxy::Endpoint;
use tokio::sync::Semaphore;

use common::*;

#[tokio::test]
async fn set_endpoints_moves_traffic_and_empty_is_503() {
    let old = echo_backend("old").await;
    let new = echo_backend("new").await;
    let p = proxy(&single(&[old.addr], "")).await;
    assert_eq!(get(p.addr, "/").await.header("x-backend"), Some("old"));

    let service = p.proxy.service("svc").unwrap();
    service.set_endpoints(vec![Endpoint {
        id: "replica-1".to_string(),
        address: new.addr,
    }]);
    for _ in 0..3 {
        assert_eq!(get(p.addr, "/").await.header("x-backend"), Some("new"));
    }
    assert_eq!(p.proxy.status()[0].endpoints[0].id, "replica-1");

    service.set_endpoints(Vec::new());
    let answer = get(p.addr, "/").await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.header("x-shoal-error"), Some("no_endpoints"));
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert!(p.proxy.service("nope").is_none());
}

#[tokio::test]
async fn load_shows_requests_in_flight() {
    let release = Arc::new(Semaphore::new(0));
    let gate = release.clone();
    let held = backend("held", move |_req, _name| {
        let gate = gate.clone();
        async move {
            let _permit = gate.acquire().await;
            Response::new(Full::default())
        }
    })
    .await;
    let p = proxy(&single(&[held.addr], "")).await;
    let service = p.proxy.service("svc").unwrap();
    let addr = p.addr;
    let requests: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { get(addr, "/").await }))
        .collect();
    // the service counts a request once routed, the endpoint once sent to it
    assert!(
        eventually(Duration::from_secs(5), || service.load().in_flight == 3
            && p.proxy.status()[0].endpoints[0].in_flight == 3)
        .await
    );
    assert_eq!(
        metric(
            &p.registry,
            "shoal_requests_in_flight",
            &[("service", "svc")]
        ),
        3.0
    );
    release.add_permits(3);
    for request in requests {
        assert_eq!(request.await.unwrap().status, 200);
    }
    assert!(eventually(Duration::from_secs(5), || service.load().in_flight == 0).await);
    let load = service.load();
    assert_eq!(load.queued, 0);
    assert!(load.p99_ms > 0.0, "{load:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_share_pooled_connections() {
    let a = echo_backend("a").await;
    let b = echo_backend("b").await;
    let p = proxy(&single(&[a.addr, b.addr], "")).await;
    let addr = p.addr;
    let clients: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let mut codes = Vec::new();
                for _ in 0..25 {
                    codes.push(get(addr, "/").await.status.as_u16());
                }
                codes
            })
        })
        .collect();
    for client in clients {
        assert!(client.await.unwrap().iter().all(|&code| code == 200));
    }
    let served = a.hits.load(Ordering::SeqCst) + b.hits.load(Ordering::SeqCst);
    assert_eq!(served, 200);
    let connections = a.connections.load(Ordering::SeqCst) + b.connections.load(Ordering::SeqCst);
    // at most about one connection per concurrent client, not one per request
    assert!(
        connections <= 24,
        "{connections} upstream connections for 200 requests"
    );
    assert_eq!(
        metric(
            &p.registry,
            "shoal_http_requests_total",
            &[("service", "svc"), ("code", "200")]
        ),
        200.0
    );
}

#[tokio::test]
async fn a_retry_finds_an_endpoint_that_came_up_during_the_request() {
    // An endpoint whose accept queue is full: a connect to it waits out the connect timeout
    // (the kernel drops the SYN), so the request is still on its first try below.
    let stuck = tokio::net::TcpSocket::new_v4().unwrap();
    stuck.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let stuck = stuck.listen(0).unwrap();
    let stuck_addr = stuck.local_addr().unwrap();
    let mut queued = Vec::new();
    for _ in 0..3 {
        let connect = tokio::net::TcpStream::connect(stuck_addr);
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(200), connect).await {
            queued.push(stream);
        }
    }
    let fresh = echo_backend("fresh").await;
    let p = proxy(&single(&[stuck_addr], "    timeouts: { connect: 500ms }\n")).await;
    let service = p.proxy.service("svc").unwrap();
    let addr = p.addr;
    let answer = tokio::spawn(async move { get(addr, "/").await });
    // Routed means its endpoint set is taken: it goes on to the connect without a pause.
    assert!(eventually(Duration::from_secs(5), || service.load().in_flight == 1).await);
    // A scale-out: a second endpoint is ready while the first try waits.
    service.set_endpoints(vec![Endpoint::new(stuck_addr), Endpoint::new(fresh.addr)]);
    let answer = answer.await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("x-backend"), Some("fresh"));
    let counted = |name| metric(&p.registry, name, &[("service", "svc")]);
    assert_eq!(counted("shoal_upstream_connect_errors_total"), 1.0);
    assert_eq!(counted("shoal_upstream_retries_total"), 1.0);
}
