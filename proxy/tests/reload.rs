//! Hot reload: `Proxy::apply` moves a running proxy to a new config without dropping
//! connections, and a failed apply changes nothing.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{backend, echo_backend, get, Backend};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use shoal_proxy::Proxy;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

const WITHIN: Duration = Duration::from_secs(5);

/// A backend answering its name; `/slow` waits for a permit of `gate` first, so a test
/// holds a request in flight for exactly as long as it wants.
async fn gated(name: &str, gate: Arc<Semaphore>) -> Backend {
    backend(name, move |req, name| {
        let gate = gate.clone();
        async move {
            if req.uri().path().ends_with("/slow") {
                let _permit = gate.acquire().await.unwrap();
            }
            Response::builder()
                .header("x-backend", name.as_str())
                .body(Full::new(Bytes::from(name)))
                .unwrap()
        }
    })
    .await
}

struct Running {
    proxy: Arc<Proxy>,
    /// Holds the proxy's metrics for as long as it runs.
    registry: prometheus::Registry,
}

async fn start(yaml: &str) -> Running {
    let registry = prometheus::Registry::new();
    let proxy = Proxy::new(&config(yaml), &registry).unwrap();
    proxy.bind().await.unwrap();
    Running { proxy, registry }
}

fn config(yaml: &str) -> shoal_config::Config {
    shoal_config::parse(yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
}

async fn apply(proxy: &Arc<Proxy>, yaml: &str) -> Vec<String> {
    proxy.apply(&config(yaml), Path::new("")).await.unwrap()
}

fn upstream(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!("  {name}:\n    upstreams: {{ static: [\"{addr}\"] }}\n{extra}")
}

/// A port free a moment ago.
fn free_port() -> SocketAddr {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

/// A keep-alive HTTP/1.1 connection.
async fn connection(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

fn request(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "example.com")
        .body(Full::default())
        .unwrap()
}

async fn refused(addr: SocketAddr) -> bool {
    let deadline = tokio::time::Instant::now() + WITHIN;
    while tokio::time::Instant::now() < deadline {
        if TcpStream::connect(addr).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// The series in `registry` with a label whose value is `value`, as `family{label=value}`.
fn series_naming(registry: &prometheus::Registry, value: &str) -> Vec<String> {
    let mut found = Vec::new();
    for family in registry.gather() {
        for series in family.get_metric() {
            for pair in series.get_label() {
                if pair.value() == value {
                    found.push(format!("{}{{{}={value}}}", family.name(), pair.name()));
                }
            }
        }
    }
    found
}

async fn until_hits(backend: &Backend, n: usize) {
    assert!(
        common::eventually(WITHIN, || backend.hits.load(Ordering::SeqCst) >= n).await,
        "the request never reached the backend"
    );
}

#[tokio::test]
async fn route_change_applies_to_new_requests_while_in_flight_finishes() {
    let gate = Arc::new(Semaphore::new(0));
    let a = gated("a", gate.clone()).await;
    let b = gated("b", gate.clone()).await;
    let services = format!(
        "services:\n{}{}",
        upstream("a", a.addr, ""),
        upstream("b", b.addr, "")
    );
    let before =
        format!("listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\", service: a }}\n{services}");
    let running = start(&before).await;
    let addr = running.proxy.local_addr("web").unwrap();
    assert_eq!(get(addr, "/").await.text(), "a");

    let slow = tokio::spawn(async move { get(addr, "/slow").await });
    until_hits(&a, 2).await;
    let after = format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    routes:\n      - match: {{ path_prefix: /b }}\n        service: b\n      - service: a\n{services}"
    );
    let changed = apply(&running.proxy, &after).await;
    assert_eq!(changed, vec!["listener web: routes changed".to_string()]);
    assert_eq!(
        running.proxy.local_addr("web"),
        Some(addr),
        "kept its socket"
    );
    assert_eq!(get(addr, "/b/x").await.text(), "b");
    assert_eq!(get(addr, "/x").await.text(), "a");

    gate.add_permits(1);
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, 200);
    assert_eq!(slow.text(), "a");
}

#[tokio::test]
async fn services_are_added_and_removed_and_removed_ones_finish_in_flight_requests() {
    let gate = Arc::new(Semaphore::new(0));
    let a = gated("a", gate.clone()).await;
    let b = gated("b", gate.clone()).await;
    let c = gated("c", gate.clone()).await;
    let before = format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    routes:\n      - match: {{ path_prefix: /b }}\n        service: b\n      - service: a\nservices:\n{}{}",
        upstream("a", a.addr, ""),
        upstream("b", b.addr, "")
    );
    let running = start(&before).await;
    let addr = running.proxy.local_addr("web").unwrap();
    let slow = tokio::spawn(async move { get(addr, "/b/slow").await });
    until_hits(&b, 1).await;

    let after = format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    routes:\n      - match: {{ path_prefix: /c }}\n        service: c\n      - service: a\nservices:\n{}{}",
        upstream("a", a.addr, ""),
        upstream("c", c.addr, "")
    );
    let changed = apply(&running.proxy, &after).await;
    assert_eq!(
        changed,
        vec![
            "listener web: routes changed".to_string(),
            "service c: added".to_string(),
            "service b: removed".to_string(),
        ]
    );
    assert!(running.proxy.service("b").is_none());
    assert!(running.proxy.service("c").is_some());
    assert_eq!(get(addr, "/c/x").await.text(), "c");
    // `/b` now falls through to the default route; with no default it would be a 404.
    assert_eq!(get(addr, "/b/x").await.text(), "a");

    gate.add_permits(1);
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, 200);
    assert_eq!(slow.text(), "b");
    // Answered after its service went, it makes no series of that service again.
    let left = series_naming(&running.registry, "b");
    assert!(left.is_empty(), "series of the removed service: {left:?}");

    let only_c = format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    routes:\n      - match: {{ path_prefix: /c }}\n        service: c\nservices:\n{}",
        upstream("c", c.addr, "")
    );
    apply(&running.proxy, &only_c).await;
    assert_eq!(get(addr, "/x").await.status, 404);
    assert_eq!(get(addr, "/c/x").await.text(), "c");
}

#[tokio::test]
async fn balance_changes_from_round_robin_to_consistent_hash() {
    let gate = Arc::new(Semaphore::new(0));
    let mut backends = Vec::new();
    for name in ["b1", "b2", "b3"] {
        backends.push(gated(name, gate.clone()).await);
    }
    let list: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    let yaml = |balance: &str| {
        format!(
            "listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\", service: svc }}\nservices:\n  svc:\n    upstreams: {{ static: [{}] }}\n{balance}",
            list.join(", ")
        )
    };
    let running = start(&yaml("    balance: round_robin\n")).await;
    let addr = running.proxy.local_addr("web").unwrap();
    let handle = running.proxy.service("svc").unwrap();

    let changed = apply(
        &running.proxy,
        &yaml("    balance: consistent_hash\n    hash_on: \"header:x-user\"\n"),
    )
    .await;
    assert_eq!(
        changed,
        ["service svc: balance round_robin → consistent_hash on header:x-user"]
    );
    assert!(Arc::ptr_eq(&handle, &running.proxy.service("svc").unwrap()));

    let mut seen = std::collections::BTreeSet::new();
    for user in 0..30 {
        let mut first = None;
        for _ in 0..3 {
            let answer = common::send(
                addr,
                Request::get("/")
                    .header("host", "example.com")
                    .header("x-user", format!("user-{user}"))
                    .body(Full::default())
                    .unwrap(),
            )
            .await;
            let name = answer.text();
            assert_eq!(first.get_or_insert_with(|| name.clone()), &name);
        }
        seen.extend(first);
    }
    assert!(seen.len() > 1, "keys spread over the endpoints: {seen:?}");
}

#[tokio::test]
async fn a_rebound_listener_serves_on_the_new_port_and_lets_the_old_connections_finish() {
    let gate = Arc::new(Semaphore::new(0));
    let a = gated("a", gate.clone()).await;
    let services = format!("services:\n{}", upstream("a", a.addr, ""));
    let running = start(&format!(
        "listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\", service: a }}\n{services}"
    ))
    .await;
    let old = running.proxy.local_addr("web").unwrap();
    let mut keep_alive = connection(old).await;
    let answer = keep_alive.send_request(request("/")).await.unwrap();
    assert_eq!(answer.status(), 200);
    answer.into_body().collect().await.unwrap();
    let in_flight = tokio::spawn(keep_alive.send_request(request("/slow")));
    until_hits(&a, 2).await;

    let new = free_port();
    let changed = apply(
        &running.proxy,
        &format!("listeners:\n  - {{ name: web, bind: \"{new}\", service: a }}\n{services}"),
    )
    .await;
    assert_eq!(
        changed,
        vec![format!("listener web: rebound {old} → {new}")]
    );
    assert_eq!(running.proxy.local_addr("web"), Some(new));
    assert_eq!(get(new, "/").await.text(), "a");
    assert!(refused(old).await, "the old port still accepts");

    gate.add_permits(1);
    let answer = in_flight.await.unwrap().unwrap();
    assert_eq!(answer.status(), 200);
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"a");
}

#[tokio::test]
async fn listeners_are_added_and_removed() {
    let a = gated("a", Arc::new(Semaphore::new(0))).await;
    let services = format!("services:\n{}", upstream("a", a.addr, ""));
    let running = start(&format!(
        "listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\", service: a }}\n  - {{ name: old, bind: \"127.0.0.2:0\", service: a }}\n{services}"
    ))
    .await;
    let web = running.proxy.local_addr("web").unwrap();
    let old = running.proxy.local_addr("old").unwrap();
    assert_eq!(get(old, "/").await.text(), "a");
    let mut idle = connection(web).await;

    let changed = apply(
        &running.proxy,
        &format!(
            "listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\", service: a }}\n  - {{ name: admin2, bind: \"127.0.0.3:0\", service: a }}\n{services}"
        ),
    )
    .await;
    let admin2 = running.proxy.local_addr("admin2").unwrap();
    assert_eq!(
        changed,
        vec![
            format!("listener admin2: added on {admin2}"),
            "listener old: removed".to_string(),
        ]
    );
    assert_eq!(get(admin2, "/").await.text(), "a");
    assert!(running.proxy.local_addr("old").is_none());
    assert!(refused(old).await, "a removed listener still accepts");
    let left = series_naming(&running.registry, "old");
    assert!(left.is_empty(), "series of the removed listener: {left:?}");
    assert!(!series_naming(&running.registry, "admin2").is_empty());
    // The kept listener's connections were not touched.
    let answer = idle.send_request(request("/")).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(running.proxy.local_addr("web"), Some(web));
}

#[tokio::test]
async fn a_renamed_listener_takes_its_address_over() {
    // Before, the new name's bind found the address still held by the old name, and the
    // reload failed with "Address already in use".
    let gate = Arc::new(Semaphore::new(0));
    let a = gated("a", gate.clone()).await;
    let services = format!("services:\n{}", upstream("a", a.addr, ""));
    let address = free_port();
    let running = start(&format!(
        "listeners:\n  - {{ name: web, bind: \"{address}\", service: a }}\n{services}"
    ))
    .await;
    let mut kept = connection(address).await;
    let in_flight = tokio::spawn(kept.send_request(request("/slow")));
    until_hits(&a, 1).await;

    let changed = apply(
        &running.proxy,
        &format!("listeners:\n  - {{ name: edge, bind: \"{address}\", service: a }}\n{services}"),
    )
    .await;
    assert_eq!(
        changed,
        vec![
            format!("listener edge: added on {address}"),
            "listener web: removed".to_string(),
        ]
    );
    assert_eq!(running.proxy.local_addr("edge"), Some(address));
    assert!(running.proxy.local_addr("web").is_none());
    // The old listener's request in flight finishes.
    gate.add_permits(1);
    let answer = in_flight.await.unwrap().unwrap();
    assert_eq!(answer.status(), 200);
    // New connections reach the new listener, whose routes the next reload changes.
    let a2 = gated("a2", Arc::new(Semaphore::new(0))).await;
    apply(
        &running.proxy,
        &format!(
            "listeners:\n  - {{ name: edge, bind: \"{address}\", service: a }}\nservices:\n{}",
            upstream("a", a2.addr, "")
        ),
    )
    .await;
    assert_eq!(get(address, "/").await.text(), "a2");
}

#[tokio::test]
async fn a_failed_apply_changes_nothing() {
    let a = gated("a", Arc::new(Semaphore::new(0))).await;
    let b = gated("b", Arc::new(Semaphore::new(0))).await;
    let before = format!(
        "listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\", service: a }}\nservices:\n{}",
        upstream("a", a.addr, "")
    );
    let running = start(&before).await;
    let web = running.proxy.local_addr("web").unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();

    let after = format!(
        "listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\", service: b }}\n  - {{ name: extra, bind: \"{taken_addr}\", service: b }}\nservices:\n{}{}",
        upstream("a", a.addr, "    timeouts: { request: 1s }\n"),
        upstream("b", b.addr, "")
    );
    let error = running
        .proxy
        .apply(&config(&after), Path::new(""))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("extra"),
        "the error names the listener: {error}"
    );
    assert_eq!(get(web, "/").await.text(), "a", "routes were swapped");
    assert!(running.proxy.service("b").is_none(), "a service was added");
    assert!(running.proxy.local_addr("extra").is_none());
    for never_ran in ["b", "extra"] {
        let left = series_naming(&running.registry, never_ran);
        assert!(left.is_empty(), "series of what never ran: {left:?}");
    }
    assert_eq!(running.proxy.local_addr("web"), Some(web));

    // With the port free the same config applies, so nothing stayed half-done.
    drop(taken);
    let changed = apply(&running.proxy, &after).await;
    assert!(
        changed.contains(&"service b: added".to_string()),
        "{changed:?}"
    );
    assert!(
        changed.contains(&"service a: timeouts changed".to_string()),
        "{changed:?}"
    );
    assert_eq!(get(web, "/").await.text(), "b");
}

#[tokio::test]
async fn a_kept_service_keeps_its_handle_when_its_settings_change() {
    let a = gated("a", Arc::new(Semaphore::new(0))).await;
    let yaml = |extra: &str| {
        format!(
            "listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\", service: x }}\nservices:\n{}",
            upstream("x", a.addr, extra)
        )
    };
    let running = start(&yaml("")).await;
    let addr = running.proxy.local_addr("web").unwrap();
    let before = running.proxy.service("x").unwrap();
    let changed = apply(
        &running.proxy,
        &yaml("    timeouts: { request: 7s, connect: 2s }\n    retries: { attempts: 0 }\n"),
    )
    .await;
    assert_eq!(
        changed,
        vec![
            "service x: retries changed".to_string(),
            "service x: timeouts changed".to_string(),
        ]
    );
    let after = running.proxy.service("x").unwrap();
    assert!(Arc::ptr_eq(&before, &after));
    assert_eq!(get(addr, "/").await.text(), "a");
    // Applying the same config again changes nothing.
    let again = apply(
        &running.proxy,
        &yaml("    timeouts: { request: 7s, connect: 2s }\n    retries: { attempts: 0 }\n"),
    )
    .await;
    assert!(again.is_empty(), "{again:?}");
}

#[tokio::test]
async fn changed_upstream_timeouts_apply_to_the_endpoints_that_stay() {
    let a = gated("a", Arc::new(Semaphore::new(0))).await;
    let yaml = |idle: &str| {
        format!(
            "listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\", service: x }}\nservices:\n{}",
            upstream("x", a.addr, &format!("    timeouts: {{ idle: {idle} }}\n"))
        )
    };
    let running = start(&yaml("60s")).await;
    let addr = running.proxy.local_addr("web").unwrap();
    assert_eq!(get(addr, "/").await.text(), "a");
    assert_eq!(get(addr, "/").await.text(), "a");
    assert_eq!(
        a.connections.load(Ordering::SeqCst),
        1,
        "the pool reuses its connection"
    );
    apply(&running.proxy, &yaml("200ms")).await;
    // Past the new idle timeout, not the old one: the pooled connection is not taken again.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get(addr, "/").await.text(), "a");
    assert_eq!(a.connections.load(Ordering::SeqCst), 2);
}

/// Whether a new connection gets an answer (a connection over the limit is closed at once).
async fn answered(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    if stream
        .write_all(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    match tokio::time::timeout(WITHIN, stream.read_exact(&mut head)).await {
        Ok(Ok(_)) => &head == b"HTTP/1.1 200",
        Ok(Err(_)) => false,
        Err(_elapsed) => panic!("neither answered nor closed within {WITHIN:?}"),
    }
}

#[tokio::test]
async fn a_changed_connection_limit_applies_to_the_next_connection() {
    let a = gated("a", Arc::new(Semaphore::new(0))).await;
    let yaml = |max: usize| {
        format!(
            "listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\", service: x }}\nservices:\n{}",
            upstream(
                "x",
                a.addr,
                &format!("    limits: {{ max_connections: {max} }}\n")
            )
        )
    };
    let running = start(&yaml(1)).await;
    let addr = running.proxy.local_addr("web").unwrap();
    let mut first = connection(addr).await;
    assert!(first.send_request(request("/")).await.is_ok());
    assert!(
        !answered(addr).await,
        "a second connection over the limit of 1"
    );

    apply(&running.proxy, &yaml(2)).await;
    let mut second = connection(addr).await;
    assert!(second.send_request(request("/")).await.is_ok());

    // Lowering the limit closes nothing but refuses new connections while two are open.
    apply(&running.proxy, &yaml(1)).await;
    assert!(
        !answered(addr).await,
        "a third connection over the limit of 1"
    );
    assert!(first.send_request(request("/")).await.is_ok());
    assert!(second.send_request(request("/")).await.is_ok());
}

/// A listener the reload adds (or rebuilds) takes the limits the same reload gives its
/// services, not the ones they had before it.
#[tokio::test]
async fn an_added_listener_takes_the_reloads_connection_limit() {
    let a = gated("a", Arc::new(Semaphore::new(0))).await;
    let yaml = |listeners: &str, max: usize| {
        format!(
            "listeners:\n{listeners}services:\n{}",
            upstream(
                "x",
                a.addr,
                &format!("    limits: {{ max_connections: {max} }}\n")
            )
        )
    };
    let web = "  - { name: web, bind: \"127.0.0.1:0\", service: x }\n";
    let running = start(&yaml(web, 2)).await;
    apply(
        &running.proxy,
        &yaml(
            &format!("{web}  - {{ name: more, bind: \"127.0.0.1:0\", service: x }}\n"),
            1,
        ),
    )
    .await;
    let addr = running.proxy.local_addr("more").unwrap();
    let mut first = connection(addr).await;
    assert!(first.send_request(request("/")).await.is_ok());
    assert!(
        !answered(addr).await,
        "a second connection over the reload's limit of 1"
    );
}

/// A container service reloaded as one with DNS upstreams starts from its static part: its
/// replicas' addresses are not taken for resolved ones (the nameserver here never answers).
#[tokio::test]
async fn a_container_service_reloaded_with_dns_starts_from_its_static_upstreams() {
    let a = gated("a", Arc::new(Semaphore::new(0))).await;
    let head =
        "listeners:\n  - { name: web, bind: \"127.0.0.1:0\", service: x }\nservices:\n  x:\n";
    let running = start(&format!(
        "{head}    container: {{ host: true, command: [/bin/true] }}\n"
    ))
    .await;
    let service = running.proxy.service("x").unwrap();
    let replica = free_port();
    service.set_replica_endpoints(vec![shoal_proxy::Endpoint::new(replica)]);
    apply(
        &running.proxy,
        &format!(
            "{head}    upstreams: {{ static: [\"{}\"], dns: {{ name: x.test, nameserver: \"127.0.0.1:9\", refresh: 1s }} }}\n",
            a.addr
        ),
    )
    .await;
    let addresses: Vec<SocketAddr> = service.endpoints().into_iter().map(|e| e.address).collect();
    assert_eq!(addresses, [a.addr]);
}

#[tokio::test]
async fn a_listener_that_changes_protocol_keeps_no_series_of_the_other() {
    let a = echo_backend("a").await;
    let yaml = |protocol: &str| {
        format!(
            "listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\", protocol: {protocol}, service: a }}\nservices:\n{}",
            upstream("a", a.addr, "")
        )
    };
    let families = |running: &Running, prefix: &str| -> Vec<String> {
        series_naming(&running.registry, "web")
            .into_iter()
            .filter(|series| series.starts_with(prefix))
            .collect()
    };
    let running = start(&yaml("http")).await;
    // An HTTP request through either: relayed as bytes by the tcp one.
    let served = |running: &Running| running.proxy.local_addr("web").unwrap();
    assert_eq!(get(served(&running), "/").await.status, 200);
    apply(&running.proxy, &yaml("tcp")).await;
    assert_eq!(get(served(&running), "/").await.status, 200);
    assert!(!families(&running, "shoal_tcp_").is_empty());
    assert_eq!(families(&running, "shoal_http_"), Vec::<String>::new());
    apply(&running.proxy, &yaml("http")).await;
    assert_eq!(families(&running, "shoal_tcp_"), Vec::<String>::new());
}

#[tokio::test]
async fn a_tcp_listener_s_new_service_is_reported_as_such() {
    let (a, b) = (free_port(), free_port());
    let yaml = |service: &str| {
        format!(
            "listeners:\n  - {{ name: raw, bind: \"127.0.0.1:0\", protocol: tcp, service: {service} }}\nservices:\n{}{}",
            upstream("a", a, ""),
            upstream("b", b, "")
        )
    };
    let running = start(&yaml("a")).await;
    let address = running.proxy.local_addr("raw").unwrap();
    let changed = apply(&running.proxy, &yaml("b")).await;
    assert_eq!(
        changed,
        vec![format!(
            "listener raw: service changed; rebuilt on {address}, its open connections finish"
        )]
    );
}
