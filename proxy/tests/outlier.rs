//! Passive outlier detection: endpoints failing in a row are ejected for a while, never
//! more than `max_ejected_percent` of a service, and come back.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;

use common::*;

async fn failing(name: &str) -> Backend {
    backend(name, |_req, _name| async {
        Response::builder()
            .status(503)
            .body(Full::new(Bytes::from("busy")))
            .unwrap()
    })
    .await
}

fn ejections(p: &TestProxy) -> f64 {
    metric(
        &p.registry,
        "shoal_outlier_ejections_total",
        &[("service", "svc")],
    )
}

fn states(p: &TestProxy) -> Vec<(String, &'static str, bool)> {
    p.proxy.status()[0]
        .endpoints
        .iter()
        .map(|e| (e.address.clone(), e.state, e.healthy))
        .collect()
}

#[tokio::test]
async fn five_failures_in_a_row_eject_until_the_ejection_ends() {
    let bad = failing("bad").await;
    let good = echo_backend("good").await;
    // No status retries, so every answer of the bad endpoint reaches the client.
    let p = proxy(&single(
        &[bad.addr, good.addr],
        "    balance: round_robin\n    retries: { attempts: 0 }\n    outlier: { consecutive_failures: 5, ejection: 1s, max_ejected_percent: 50 }\n",
    ))
    .await;
    let mut statuses = Vec::new();
    while bad.hits.load(Ordering::SeqCst) < 5 {
        statuses.push(get(p.addr, "/").await.status.as_u16());
        assert!(statuses.len() <= 10, "{statuses:?}");
    }
    assert_eq!(ejections(&p), 1.0);
    let bad_addr = bad.addr.to_string();
    assert!(states(&p).contains(&(bad_addr.clone(), "ejected", false)));

    // While ejected, round robin sends everything to the other endpoint.
    for _ in 0..6 {
        let answer = get(p.addr, "/").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("x-backend"), Some("good"));
    }
    assert_eq!(bad.hits.load(Ordering::SeqCst), 5);

    // It returns after the ejection (noticed by the next pick).
    let back = eventually(Duration::from_secs(5), || {
        states(&p).contains(&(bad_addr.clone(), "ready", true))
    })
    .await;
    assert!(back, "{:?}", states(&p));
    for _ in 0..4 {
        get(p.addr, "/").await;
    }
    assert!(bad.hits.load(Ordering::SeqCst) > 5);
}

#[tokio::test]
async fn a_success_resets_the_count() {
    // Fails every other request: never two failures in a row.
    let answered = Arc::new(AtomicUsize::new(0));
    let flaky = backend("flaky", move |_req, _name| {
        let n = answered.fetch_add(1, Ordering::SeqCst);
        async move {
            let status = if n.is_multiple_of(2) { 500 } else { 200 };
            Response::builder()
                .status(status)
                .body(Full::new(Bytes::new()))
                .unwrap()
        }
    })
    .await;
    let p = proxy(&single(
        &[flaky.addr],
        "    retries: { attempts: 0 }\n    outlier: { consecutive_failures: 2, ejection: 10s }\n",
    ))
    .await;
    for _ in 0..10 {
        get(p.addr, "/").await;
    }
    assert_eq!(flaky.hits.load(Ordering::SeqCst), 10);
    assert_eq!(ejections(&p), 0.0);
}

#[tokio::test]
async fn at_most_half_of_the_endpoints_are_ejected() {
    let a = failing("a").await;
    let b = failing("b").await;
    let p = proxy(&single(
        &[a.addr, b.addr],
        "    balance: round_robin\n    retries: { attempts: 0 }\n    outlier: { consecutive_failures: 5, ejection: 10s, max_ejected_percent: 50 }\n",
    ))
    .await;
    for _ in 0..30 {
        assert_eq!(get(p.addr, "/").await.status, 503);
    }
    assert_eq!(ejections(&p), 1.0);
    let ejected = states(&p).iter().filter(|s| s.1 == "ejected").count();
    assert_eq!(ejected, 1, "{:?}", states(&p));
    // The one left takes everything after the ejection.
    let (a_hits, b_hits) = (a.hits.load(Ordering::SeqCst), b.hits.load(Ordering::SeqCst));
    assert_eq!(a_hits + b_hits, 30);
    assert!(a_hits.min(b_hits) <= 5, "{a_hits} {b_hits}");
}

#[tokio::test]
async fn connect_failures_eject_too() {
    let dead = dead_addr().await;
    let live = echo_backend("live").await;
    let p = proxy(&single(
        &[dead, live.addr],
        "    balance: round_robin\n    outlier: { consecutive_failures: 3, ejection: 10s }\n",
    ))
    .await;
    for _ in 0..10 {
        assert_eq!(get(p.addr, "/").await.status, 200);
    }
    // Three failed connects (each retried on the live endpoint), then no more.
    let connect_errors = metric(
        &p.registry,
        "shoal_upstream_connect_errors_total",
        &[("service", "svc")],
    );
    assert_eq!(connect_errors, 3.0);
    assert_eq!(ejections(&p), 1.0);
}

#[tokio::test]
async fn requests_that_time_out_eject_too() {
    let hung = backend("hung", |_req, _name| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Response::new(Full::new(Bytes::from("late")))
    })
    .await;
    let live = echo_backend("live").await;
    let p = proxy(&single(
        &[hung.addr, live.addr],
        "    balance: round_robin\n    retries: { attempts: 0 }\n    timeouts: { request: 1s }\n    outlier: { consecutive_failures: 3, ejection: 10s }\n",
    ))
    .await;
    let mut timed_out = 0;
    while hung.hits.load(Ordering::SeqCst) < 3 {
        let answer = get(p.addr, "/").await;
        if answer.status == 504 {
            assert_eq!(answer.header("x-shoal-error"), Some("upstream_timeout"));
            timed_out += 1;
        }
        assert!(timed_out <= 3, "the hung endpoint was not ejected");
    }
    assert_eq!(ejections(&p), 1.0);
    for _ in 0..6 {
        assert_eq!(get(p.addr, "/").await.status, 200);
    }
    assert_eq!(hung.hits.load(Ordering::SeqCst), 3);
}
