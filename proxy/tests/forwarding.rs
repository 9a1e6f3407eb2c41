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
