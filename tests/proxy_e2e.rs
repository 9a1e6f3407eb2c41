//! End-to-end tests of the HTTP proxy: the real `shoal up` in front of real `shoal
//! demo-backend` processes and hand-written misbehaving upstreams, over real sockets.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use support::*;

/// A config with one listener `web` on a fresh port in front of the given services.
fn config(listener: u16, listener_body: &str, services: &str) -> String {
    format!(
        "admin: {{ listen: \"{{ADMIN}}\" }}\nlisteners:\n  - name: web\n    bind: 127.0.0.1:{listener}\n{listener_body}\nservices:\n{services}"
    )
}

fn static_service(name: &str, balance: &str, upstreams: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "  {name}:\n    upstreams: {{ static: [{}] }}\n    balance: {balance}\n{extra}",
        list.join(", ")
    )
}

fn who(response: &Response) -> String {
    response
        .body
        .trim()
        .strip_prefix("hello from ")
        .unwrap_or(&response.body)
        .to_string()
}

fn three_backends() -> (Vec<Proc>, Vec<SocketAddr>) {
    let mut procs = Vec::new();
    let mut addrs = Vec::new();
    for name in ["b1", "b2", "b3"] {
        let (proc, addr) = demo_backend(name);
        procs.push(proc);
        addrs.push(addr);
    }
    (procs, addrs)
}

#[test]
fn round_robin_rotates_exactly() {
    let (_backends, addrs) = three_backends();
    let port = free_port();
    let daemon = Daemon::start(&config(
        port,
        "    service: web",
        &static_service("web", "round_robin", &addrs, ""),
    ));
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
    let order: Vec<String> = (0..9)
        .map(|_| who(&http_get(proxy, "/", &[]).expect("GET /")))
        .collect();
    let first: std::collections::HashSet<&String> = order[..3].iter().collect();
    assert_eq!(
        first.len(),
        3,
        "first three requests hit three backends: {order:?}"
    );
    for (i, backend) in order.iter().enumerate() {
        assert_eq!(backend, &order[i % 3], "round robin order broke: {order:?}");
    }
    drop(daemon);
}

/// Sends `total` GETs from `threads` concurrent clients and counts answers per backend.
fn spread(proxy: SocketAddr, total: usize, threads: usize) -> HashMap<String, usize> {
    let per_thread = total / threads;
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                (0..per_thread)
                    .map(|_| who(&http_get(proxy, "/", &[]).expect("GET /")))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut counts = HashMap::new();
    for handle in handles {
        for backend in handle.join().expect("client thread") {
            *counts.entry(backend).or_insert(0) += 1;
        }
    }
    counts
}

fn slow_backend_gets_little_traffic(balance: &str) {
    let (_b1, a1) = demo_backend("fast1");
    let (_b2, a2) = demo_backend("fast2");
    let slow = odd_backend("slow", Misbehaviour::Slow(Duration::from_millis(150)));
    let port = free_port();
    let _daemon = Daemon::start(&config(
        port,
        "    service: web",
        &static_service("web", balance, &[a1, a2, slow], ""),
    ));
    let counts = spread(([127, 0, 0, 1], port).into(), 180, 6);
    let total: usize = counts.values().sum();
    let slow_share = *counts.get("slow").unwrap_or(&0) as f64 / total as f64;
    assert_eq!(total, 180);
    assert!(
        slow_share < 0.2,
        "{balance}: the slow backend got {:.0}% of requests (an even spread is 33%): {counts:?}",
        slow_share * 100.0
    );
}

#[test]
fn p2c_ewma_avoids_a_slow_backend() {
    slow_backend_gets_little_traffic("p2c_ewma");
}

#[test]
fn least_request_avoids_a_slow_backend() {
    slow_backend_gets_little_traffic("least_request");
}

#[test]
fn consistent_hash_pins_keys_and_remaps_about_one_in_n() {
    let (mut backends, addrs) = three_backends();
    let port = free_port();
    let _daemon = Daemon::start(&config(
        port,
        "    service: web",
        &static_service(
            "web",
            "consistent_hash",
            &addrs,
            "    hash_on: header:x-user\n",
        ),
    ));
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
    let lookup = |key: &str| who(&http_get(proxy, "/", &[("x-user", key)]).expect("GET /"));
    let keys: Vec<String> = (0..240).map(|i| format!("user-{i}")).collect();
    let before: Vec<String> = keys.iter().map(|k| lookup(k)).collect();
    for _ in 0..5 {
        assert_eq!(
            lookup(&keys[0]),
            before[0],
            "a key must stay on its backend"
        );
    }
    let on_b3 = before.iter().filter(|b| *b == "b3").count();
    let share = on_b3 as f64 / keys.len() as f64;
    assert!((0.15..0.55).contains(&share), "b3 holds {share:.2} of keys");

    drop(backends.remove(2));
    let after: Vec<String> = keys.iter().map(|k| lookup(k)).collect();
    for (i, key) in keys.iter().enumerate() {
        if before[i] == "b3" {
            assert_ne!(after[i], "b3", "{key} still answered by a dead backend");
        } else {
            assert_eq!(
                after[i], before[i],
                "{key} moved although its backend lives"
            );
        }
    }
}

#[test]
fn upstream_sees_forwarded_headers_and_request_id() {
    let (_b, addr) = demo_backend("b1");
    let port = free_port();
    let _daemon = Daemon::start(&config(
        port,
        "    service: web",
        &static_service("web", "round_robin", &[addr], ""),
    ));
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
    let response = http_get(proxy, "/headers", &[("Host", "shop.example")]).expect("GET");
    assert_eq!(response.status, 200);
    let seen = response.body.to_ascii_lowercase();
    assert!(seen.contains("x-forwarded-for: 127.0.0.1"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: http"), "{seen}");
    assert!(seen.contains("x-request-id: "), "{seen}");
    assert!(
        response.header("x-request-id").is_some(),
        "response lacks x-request-id"
    );

    let given = http_get(proxy, "/headers", &[("x-request-id", "trace-42")]).expect("GET");
    assert!(
        given.body.contains("x-request-id: trace-42"),
        "{}",
        given.body
    );

    // An absolute-form target's authority replaces the client's Host (RFC 9112 §3.2.2),
    // without the credentials it may carry, which are not part of a Host.
    for (target, host) in [
        ("http://shop.example/headers", "shop.example"),
        (
            "http://user:secret@shop.example:8080/headers",
            "shop.example:8080",
        ),
    ] {
        let request =
            format!("GET {target} HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n");
        let answer = raw_request(proxy, request.as_bytes(), Duration::from_secs(10)).expect("GET");
        let seen = answer.body.to_ascii_lowercase();
        for header in ["host", "x-forwarded-host"] {
            let line = format!("{header}: {host}");
            assert!(seen.lines().any(|l| l == line), "{line} in\n{seen}");
        }
        assert!(
            !seen.contains("other.example") && !seen.contains("secret"),
            "{seen}"
        );
    }
}

#[test]
fn routes_match_host_path_and_headers_in_order() {
    let (_a, api) = demo_backend("api");
    let (_c, canary) = demo_backend("canary");
    let (_w, web) = demo_backend("web");
    let port = free_port();
    let routes = "    routes:\n      - match: { host: api.example.com, path_prefix: /v1, headers: { x-canary: \"1\" } }\n        service: canary\n      - match: { host: api.example.com }\n        service: api\n      - service: web";
    let services = [
        static_service("api", "round_robin", &[api], ""),
        static_service("canary", "round_robin", &[canary], ""),
        static_service("web", "round_robin", &[web], ""),
    ]
    .join("");
    let _daemon = Daemon::start(&config(port, routes, &services));
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
    // The backends have no /v1 paths: their 404 names the replica that answered.
    let get = |path: &str, headers: &[(&str, &str)]| {
        let body = http_get(proxy, path, headers).expect("GET").body;
        body.trim()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(
        get("/v1/x", &[("Host", "api.example.com"), ("x-canary", "1")]),
        "canary"
    );
    assert_eq!(
        get("/v2/x", &[("Host", "api.example.com"), ("x-canary", "1")]),
        "api"
    );
    assert_eq!(get("/v1/x", &[("Host", "api.example.com")]), "api");
    assert_eq!(get("/v1/x", &[("Host", "other.example.com")]), "web");
}

/// One listener routing by path to well-behaved, missing, silent and resetting upstreams,
/// with short timeouts, so each of shoal's own error statuses can be provoked.
fn error_daemon() -> (Daemon, SocketAddr, Proc) {
    let (backend, web) = demo_backend("web");
    let dead: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let silent = odd_backend("silent", Misbehaviour::Silent);
    let reset = odd_backend("reset", Misbehaviour::Reset);
    let tight = "    timeouts: { connect: 300ms, request: 500ms, header_read: 500ms }\n    limits: { max_request_header_bytes: 2Ki }\n";
    let routes = "    routes:\n      - match: { path_prefix: /web }\n        service: web\n      - match: { path_prefix: /dead }\n        service: dead\n      - match: { path_prefix: /silent }\n        service: silent\n      - match: { path_prefix: /reset }\n        service: reset";
    let services = [
        static_service("web", "round_robin", &[web], tight),
        static_service("dead", "round_robin", &[dead], tight),
        static_service("silent", "round_robin", &[silent], tight),
        static_service("reset", "round_robin", &[reset], tight),
    ]
    .join("");
    let port = free_port();
    let daemon = Daemon::start(&config(port, routes, &services));
    (daemon, ([127, 0, 0, 1], port).into(), backend)
}

fn assert_own_error(response: &Response, status: u16) {
    assert_eq!(response.status, status, "{response:?}");
    assert!(
        response.header("x-shoal-error").is_some(),
        "a {status} from shoal must carry x-shoal-error: {response:?}"
    );
}

#[test]
fn own_errors_have_spec_statuses_and_show_in_metrics() {
    let (daemon, proxy, _backend) = error_daemon();
    assert_eq!(
        http_get(proxy, "/web/", &[]).expect("GET").status,
        404 /* demo backend's own 404 */
    );
    assert_own_error(&http_get(proxy, "/nowhere", &[]).expect("GET"), 404);
    assert_own_error(&http_get(proxy, "/dead", &[]).expect("GET"), 502);
    assert_own_error(&http_get(proxy, "/reset", &[]).expect("GET"), 502);
    assert_own_error(&http_get(proxy, "/silent", &[]).expect("GET"), 504);
    let big = "x".repeat(4096);
    assert_own_error(
        &http_get(proxy, "/web/", &[("x-big", &big)]).expect("GET"),
        431,
    );
    let malformed = raw_request(proxy, b"GARBAGE\r\n\r\n", Duration::from_secs(5)).expect("answer");
    assert_own_error(&malformed, 400);
    // A body whose chunk size is not hex fails as it streams to the upstream: the client's
    // fault (400), not the upstream's (502).
    let bad_chunk = raw_request(
        proxy,
        b"POST /web/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        Duration::from_secs(5),
    )
    .expect("answer to a malformed chunked body");
    assert_own_error(&bad_chunk, 400);
    assert_eq!(bad_chunk.header("x-shoal-error"), Some("bad_request"));
    let slow_head = raw_request(
        proxy,
        b"GET /web/ HTTP/1.1\r\nHost: x\r\n",
        Duration::from_secs(5),
    )
    .expect("answer to an unfinished head");
    assert_own_error(&slow_head, 408);

    let metrics = daemon.metrics();
    for (service, code) in [
        ("dead", "502"),
        ("reset", "502"),
        ("silent", "504"),
        ("web", "400"),
    ] {
        let count = metric_value(
            &metrics,
            "shoal_http_requests_total",
            &[("service", service), ("code", code)],
        );
        assert_eq!(count, Some(1.0), "{service} {code} in metrics:\n{metrics}");
    }
    for code in ["404", "431", "400", "408"] {
        let count =
            metric_value(&metrics, "shoal_http_requests_total", &[("code", code)]).unwrap_or(0.0);
        assert!(count >= 1.0, "code {code} missing from metrics:\n{metrics}");
    }
    let connect_errors = metric_value(
        &metrics,
        "shoal_upstream_connect_errors_total",
        &[("service", "dead")],
    );
    assert!(
        connect_errors.unwrap_or(0.0) >= 1.0,
        "connect errors not counted:\n{metrics}"
    );
}

#[test]
fn bad_input_does_not_leak_connections() {
    let (daemon, proxy, _backend) = error_daemon();
    for _ in 0..5 {
        http_get(proxy, "/web/", &[]).expect("warm-up");
    }
    let baseline = daemon.open_fds();
    for _ in 0..10 {
        let _ = http_get(proxy, "/dead", &[]);
        let _ = http_get(proxy, "/reset", &[]);
        let _ = http_get(proxy, "/silent", &[]);
        let _ = http_get(proxy, "/nowhere", &[]);
        let _ = raw_request(proxy, b"GARBAGE\r\n\r\n", Duration::from_secs(5));
    }
    assert_eq!(
        http_get(proxy, "/web/", &[]).expect("still serving").status,
        404
    );
    eventually(
        Duration::from_secs(10),
        "file descriptors back to baseline",
        || (daemon.open_fds() <= baseline + 2).then_some(()),
    );
}

#[test]
fn request_counter_equals_requests_sent() {
    let (_b, addr) = demo_backend("b1");
    let port = free_port();
    let daemon = Daemon::start(&config(
        port,
        "    service: web",
        &static_service("web", "p2c_ewma", &[addr], ""),
    ));
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
    for _ in 0..25 {
        assert_eq!(http_get(proxy, "/", &[]).expect("GET").status, 200);
    }
    let metrics = daemon.metrics();
    let labels = [("listener", "web"), ("service", "web"), ("code", "200")];
    assert_eq!(
        metric_value(&metrics, "shoal_http_requests_total", &labels),
        Some(25.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "shoal_http_request_duration_seconds_count",
            &[("service", "web")]
        ),
        Some(25.0),
        "{metrics}"
    );
    assert!(metrics.contains("shoal_build_info{version="), "{metrics}");
}

#[test]
fn h2c_prior_knowledge_client_is_served() {
    let (_b, addr) = demo_backend("b1");
    let port = free_port();
    let _daemon = Daemon::start(&config(
        port,
        "    service: web",
        &static_service("web", "round_robin", &[addr], ""),
    ));
    h2c_client().block_on(|client| async move {
        for _ in 0..3 {
            let response = client
                .get(format!("http://127.0.0.1:{port}/"))
                .send()
                .await
                .expect("h2c request");
            assert_eq!(response.version(), reqwest::Version::HTTP_2);
            assert_eq!(response.status(), 200);
            assert_eq!(response.text().await.expect("body"), "hello from b1\n");
        }
    });
}

#[test]
fn websocket_echo_passes_through() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let (_b, addr) = demo_backend("b1");
    let port = free_port();
    let _daemon = Daemon::start(&config(
        port,
        "    service: web",
        &static_service("web", "round_robin", &[addr], ""),
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (mut ws, response) =
            tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
                .await
                .expect("websocket handshake through shoal");
        assert_eq!(response.status(), 101);
        for text in ["ping", "pong", "a longer message"] {
            ws.send(Message::text(text)).await.expect("send");
            let echoed = ws.next().await.expect("an answer").expect("a message");
            assert_eq!(echoed.into_text().expect("text").as_str(), text);
        }
        ws.close(None).await.expect("close");
    });
}

#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let (_b, addr) = demo_backend("b1");
    let port = free_port();
    let mut daemon = Daemon::start(&config(
        port,
        "    service: web",
        &static_service("web", "round_robin", &[addr], "    drain_timeout: 20s\n"),
    ));
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
    let clients: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(move || http_get(proxy, "/sleep?ms=1500", &[])))
        .collect();
    eventually(Duration::from_secs(10), "three requests in flight", || {
        let metrics = daemon.metrics();
        (metric_value(&metrics, "shoal_requests_in_flight", &[("service", "web")]) == Some(3.0))
            .then_some(())
    });
    daemon.proc.signal(libc::SIGTERM);
    for client in clients {
        let response = client.join().expect("client").expect("answer during drain");
        assert_eq!(response.status, 200);
        assert!(
            response.body.starts_with("slept 1500ms"),
            "{}",
            response.body
        );
    }
    let code = daemon.proc.wait_exit(Duration::from_secs(20));
    assert_eq!(
        code,
        Some(Some(0)),
        "shoal must exit 0 after draining:\n{}",
        daemon.log()
    );
}

#[test]
fn one_worker_serves_requests_side_by_side_and_drains() {
    let (_b, addr) = demo_backend("b1");
    let port = free_port();
    let services = static_service("web", "round_robin", &[addr], "    drain_timeout: 20s\n");
    // `workers: 1` runs the daemon on tokio's current-thread scheduler.
    let mut daemon = Daemon::start(&format!(
        "workers: 1\n{}",
        config(port, "    service: web", &services)
    ));
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
    let slow = std::thread::spawn(move || http_get(proxy, "/sleep?ms=5000", &[]));
    eventually(
        Duration::from_secs(10),
        "the slow request in flight",
        || {
            let metrics = daemon.metrics();
            (metric_value(&metrics, "shoal_requests_in_flight", &[("service", "web")]) == Some(1.0))
                .then_some(())
        },
    );
    let quick = http_get(proxy, "/", &[]).expect("an answer beside the slow request");
    assert_eq!(quick.status, 200);
    assert_eq!(quick.body, "hello from b1\n");
    assert!(
        !slow.is_finished(),
        "the quick request waited for the slow one on the one worker"
    );
    daemon.proc.signal(libc::SIGTERM);
    let slow = slow.join().expect("client").expect("answer during drain");
    assert_eq!(slow.status, 200);
    assert!(slow.body.starts_with("slept 5000ms"), "{}", slow.body);
    let code = daemon.proc.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(Some(0)), "shoal must exit 0:\n{}", daemon.log());
}

#[test]
fn signals_during_start_are_acted_on_once_up() {
    // A nameserver that never answers holds the listeners back for the first DNS round's
    // wait (2 s) while the admin API already answers: the daemon is starting.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a silent nameserver");
    let nameserver = silent.local_addr().expect("its address");
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let dir = TempDir::new("starting");
    let path = dir.path().join("shoal.yaml");
    std::fs::write(
        &path,
        format!(
            "admin: {{ listen: \"{admin}\" }}\nlisteners:\n  - {{ name: web, bind: \"127.0.0.1:{}\", service: web }}\nservices:\n  web:\n    upstreams: {{ dns: {{ name: web.test, port: 80, type: a, nameserver: \"{nameserver}\" }} }}\n",
            free_port()
        ),
    )
    .expect("write the config");
    let mut daemon = Proc {
        child: std::process::Command::new(SHOAL)
            .args(["up", "-c"])
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start shoal up"),
        name: "shoal".into(),
    };
    eventually(Duration::from_secs(10), "the admin API up", || {
        http_get(admin, "/healthz", &[])
            .ok()
            .filter(|r| r.status == 200)
    });
    let ready = http_get(admin, "/readyz", &[]).expect("readyz");
    assert_eq!(ready.status, 503, "still starting: {ready:?}");
    daemon.signal(libc::SIGHUP);
    daemon.signal(libc::SIGTERM);
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(20)),
        Some(Some(0)),
        "a signal while starting must not end the daemon abruptly"
    );
}

/// Listener `web` on `port` in front of service `web` with the one upstream `upstream`.
fn one_upstream(port: u16, upstream: SocketAddr) -> String {
    config(
        port,
        "    service: web",
        &static_service("web", "round_robin", &[upstream], ""),
    )
}

#[test]
fn reload_applies_a_valid_config_and_rejects_an_invalid_one() {
    let (_b1, one) = demo_backend("b1");
    let (_b2, two) = demo_backend("b2");
    let port = free_port();
    let config_for = |upstream: SocketAddr| one_upstream(port, upstream);
    let daemon = Daemon::start(&config_for(one));
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
    let path = daemon.dir.path().join("shoal.yaml");
    let write = |text: &str| {
        std::fs::write(&path, text.replace("{ADMIN}", &daemon.admin.to_string()))
            .expect("write config")
    };
    let reload = || {
        let output = std::process::Command::new(SHOAL)
            .args(["reload", "--admin", &format!("http://{}", daemon.admin)])
            .output()
            .expect("shoal reload");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    assert_eq!(who(&http_get(proxy, "/", &[]).expect("GET")), "b1");
    let metrics = daemon.metrics();
    for result in ["success", "failure"] {
        assert_eq!(
            metric_value(
                &metrics,
                "shoal_config_reloads_total",
                &[("result", result)]
            ),
            Some(0.0),
            "both results are exported before the first reload:\n{metrics}"
        );
    }

    // `workers` is read at start: the reload says it waits for a restart.
    write(&format!("workers: 2\n{}", config_for(two)));
    let (code, out) = reload();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("web"), "reload must say what changed: {out}");
    assert!(
        out.contains("workers: changes take effect after a restart"),
        "{out}"
    );
    assert_eq!(who(&http_get(proxy, "/", &[]).expect("GET")), "b2");

    write(&config_for(two).replace("balance: round_robin", "balance: round_robbin"));
    let (code, out) = reload();
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("did you mean `round_robin`"), "{out}");
    assert_eq!(
        who(&http_get(proxy, "/", &[]).expect("GET")),
        "b2",
        "the old config keeps serving"
    );

    write(&config_for(one));
    daemon.proc.signal(libc::SIGHUP);
    eventually(Duration::from_secs(10), "SIGHUP to reload", || {
        (who(&http_get(proxy, "/", &[]).ok()?) == "b1").then_some(())
    });
    let metrics = daemon.metrics();
    assert_eq!(
        metric_value(
            &metrics,
            "shoal_config_reloads_total",
            &[("result", "success")]
        ),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "shoal_config_reloads_total",
            &[("result", "failure")]
        ),
        Some(1.0),
        "{metrics}"
    );
}

#[test]
fn a_reload_whose_container_service_cannot_start_changes_nothing() {
    let (_b1, one) = demo_backend("b1");
    let (_b2, two) = demo_backend("b2");
    let port = free_port();
    let daemon = Daemon::start(&one_upstream(port, one));
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
    // Moves `web` to b2 and adds a container service whose runtime cannot open its state
    // directory (nothing can be created under /proc, not even by root).
    let broken = format!(
        "{}  box:\n    container:\n      host: true\n      command: [/bin/true]\nruntime: {{ state_dir: /proc/shoal-no-such-dir }}\n",
        one_upstream(port, two)
    );
    std::fs::write(
        daemon.dir.path().join("shoal.yaml"),
        broken.replace("{ADMIN}", &daemon.admin.to_string()),
    )
    .expect("write config");
    let output = std::process::Command::new(SHOAL)
        .args(["reload", "--admin", &format!("http://{}", daemon.admin)])
        .output()
        .expect("shoal reload");
    let out = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{out}");
    assert!(out.contains("runtime.state_dir"), "{out}");
    assert_eq!(
        who(&http_get(proxy, "/", &[]).expect("GET")),
        "b1",
        "the proxy keeps the running config:\n{}",
        daemon.log()
    );
}

#[test]
fn upstream_status_counts_only_healthy_endpoints_as_ready() {
    let (_b1, live) = demo_backend("b1");
    let dead: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let health = "    health: { http: { path: /healthz }, interval: 200ms, timeout: 150ms, unhealthy_threshold: 1 }\n";
    let daemon = Daemon::start(&config(
        free_port(),
        "    service: web",
        &static_service("web", "round_robin", &[live, dead], health),
    ));
    let status = eventually(
        Duration::from_secs(10),
        "the dead endpoint unhealthy",
        || {
            let resp = http_get(daemon.admin, "/api/v1/services/web", &[]).ok()?;
            let status: serde_json::Value = serde_json::from_str(&resp.body).ok()?;
            let endpoints = status["endpoints"].as_array()?;
            endpoints
                .iter()
                .any(|e| e["address"] == dead.to_string() && e["healthy"] == false)
                .then_some(status)
        },
    );
    assert_eq!(status["replicas"]["desired"], 2, "{status}");
    assert_eq!(status["replicas"]["ready"], 1, "{status}");
    // The keys of a container service's status, empty.
    assert!(status.get("scale").is_some_and(Value::is_null), "{status}");
    for endpoint in status["endpoints"].as_array().expect("endpoints") {
        assert_eq!(endpoint["restarts"], 0, "{status}");
        for key in ["started_at", "cpu_seconds", "memory_bytes", "last_exit"] {
            assert!(
                endpoint.get(key).is_some_and(Value::is_null),
                "{key}: {status}"
            );
        }
    }
}
