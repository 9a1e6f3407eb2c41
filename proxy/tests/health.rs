//! Active health checks of upstream services: HTTP and TCP checks take failing endpoints
//! out of balancing after `unhealthy_threshold` and bring them back after
//! `healthy_threshold`; with every endpoint failing, all are balanced over anyway.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use shoal_config::{HttpCheck, StatusRange};
use shoal_proxy::Endpoint;

use common::*;

/// A backend whose `/healthz` answers 500 while `sick` is set; `served` counts the other
/// requests (those the proxy forwards).
struct Patient {
    backend: Backend,
    sick: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
}

async fn patient(name: &str, sick: bool) -> Patient {
    let sick = Arc::new(AtomicBool::new(sick));
    let served = Arc::new(AtomicUsize::new(0));
    let (flag, count) = (sick.clone(), served.clone());
    let backend = backend(name, move |req, name| {
        let status = if req.uri().path() == "/healthz" {
            if flag.load(Ordering::SeqCst) {
                500
            } else {
                200
            }
        } else {
            count.fetch_add(1, Ordering::SeqCst);
            200
        };
        async move {
            Response::builder()
                .status(status)
                .header("x-backend", name.as_str())
                .body(Full::new(Bytes::from(name)))
                .unwrap()
        }
    })
    .await;
    Patient {
        backend,
        sick,
        served,
    }
}

const HTTP_CHECKS: &str = "    health: { http: { path: /healthz, expect: \"200-299\" }, interval: 100ms, timeout: 80ms, unhealthy_threshold: 2, healthy_threshold: 2 }\n    outlier: { max_ejected_percent: 0 }\n";

fn state_of(p: &TestProxy, address: SocketAddr) -> Option<(&'static str, bool)> {
    p.proxy.status()[0]
        .endpoints
        .iter()
        .find(|e| e.address == address.to_string())
        .map(|e| (e.state, e.healthy))
}

fn checks(p: &TestProxy, result: &str) -> f64 {
    metric(
        &p.registry,
        "shoal_health_checks_total",
        &[("service", "svc"), ("result", result)],
    )
}

#[tokio::test]
async fn failing_http_check_takes_the_endpoint_out_until_it_recovers() {
    let a = patient("a", false).await;
    let b = patient("b", false).await;
    let p = proxy(&single(
        &[a.backend.addr, b.backend.addr],
        &format!("    balance: round_robin\n{HTTP_CHECKS}"),
    ))
    .await;
    for _ in 0..4 {
        assert_eq!(get(p.addr, "/").await.status, 200);
    }
    assert_eq!(a.served.load(Ordering::SeqCst), 2);

    a.sick.store(true, Ordering::SeqCst);
    let out = eventually(Duration::from_secs(5), || {
        state_of(&p, a.backend.addr) == Some(("unhealthy", false))
    })
    .await;
    assert!(out, "{:?}", state_of(&p, a.backend.addr));
    let before = a.served.load(Ordering::SeqCst);
    for _ in 0..6 {
        assert_eq!(get(p.addr, "/").await.header("x-backend"), Some("b"));
    }
    assert_eq!(a.served.load(Ordering::SeqCst), before);
    assert!(checks(&p, "fail") >= 2.0);

    a.sick.store(false, Ordering::SeqCst);
    let back = eventually(Duration::from_secs(5), || {
        state_of(&p, a.backend.addr) == Some(("ready", true))
    })
    .await;
    assert!(back, "{:?}", state_of(&p, a.backend.addr));
    for _ in 0..4 {
        get(p.addr, "/").await;
    }
    assert!(a.served.load(Ordering::SeqCst) > before);
    assert!(checks(&p, "pass") >= 2.0);
}

#[tokio::test]
async fn tcp_check_finds_a_closed_port() {
    let dead = dead_addr().await;
    let live = echo_backend("live").await;
    let p = proxy(&single(
        &[dead, live.addr],
        "    balance: round_robin\n    health: { interval: 100ms, timeout: 80ms, unhealthy_threshold: 1 }\n    outlier: { max_ejected_percent: 0 }\n",
    ))
    .await;
    let out = eventually(Duration::from_secs(5), || {
        state_of(&p, dead) == Some(("unhealthy", false))
    })
    .await;
    assert!(out, "{:?}", state_of(&p, dead));
    assert_eq!(state_of(&p, live.addr), Some(("ready", true)));
    // No request pays a failed connect to it any more.
    let connect_errors = || {
        metric(
            &p.registry,
            "shoal_upstream_connect_errors_total",
            &[("service", "svc")],
        )
    };
    let before = connect_errors();
    for _ in 0..6 {
        assert_eq!(get(p.addr, "/").await.status, 200);
    }
    assert_eq!(connect_errors(), before);
}

#[tokio::test]
async fn all_unhealthy_still_serves_and_state_survives_set_endpoints() {
    let a = patient("a", true).await;
    let p = proxy(&single(&[a.backend.addr], HTTP_CHECKS)).await;
    let out = eventually(Duration::from_secs(5), || {
        state_of(&p, a.backend.addr) == Some(("unhealthy", false))
    })
    .await;
    assert!(out);
    // Panic routing: the only endpoint is failing its checks, and still gets the traffic.
    let answer = get(p.addr, "/").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-backend"), Some("a"));

    // A new set that keeps the endpoint keeps its state; the newcomer starts healthy.
    let b = patient("b", false).await;
    let service = p.proxy.service("svc").unwrap();
    service.set_endpoints(vec![
        Endpoint::new(a.backend.addr),
        Endpoint::new(b.backend.addr),
    ]);
    assert_eq!(state_of(&p, a.backend.addr), Some(("unhealthy", false)));
    assert_eq!(state_of(&p, b.backend.addr), Some(("ready", true)));
    for _ in 0..4 {
        assert_eq!(get(p.addr, "/").await.header("x-backend"), Some("b"));
    }
}

#[tokio::test]
async fn shutdown_stops_the_checks() {
    let a = patient("a", false).await;
    let p = proxy(&single(&[a.backend.addr], HTTP_CHECKS)).await;
    assert!(eventually(Duration::from_secs(5), || checks(&p, "pass") >= 1.0).await);
    p.proxy.shutdown(Duration::from_millis(100)).await;
    // A check already under way may still land; after that, none.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let after = checks(&p, "pass");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(checks(&p, "pass"), after);
}

#[tokio::test]
async fn probe_checks_status_range_or_connects() {
    let a = patient("a", false).await;
    let check = HttpCheck {
        path: "/healthz".to_string(),
        expect: StatusRange {
            low: 200,
            high: 299,
        },
    };
    assert!(shoal_proxy::health::probe(a.backend.addr, Some(&check)).await);
    assert!(shoal_proxy::health::probe(a.backend.addr, None).await);
    a.sick.store(true, Ordering::SeqCst);
    assert!(!shoal_proxy::health::probe(a.backend.addr, Some(&check)).await);
    let dead = dead_addr().await;
    assert!(!shoal_proxy::health::probe(dead, None).await);
    assert!(!shoal_proxy::health::probe(dead, Some(&check)).await);
}
