//! `shoal demo` (root): the built-in config serves on 127.0.0.1:8080 from container
//! replicas, prints what to try, and stops cleanly on SIGINT.

mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

#[test]
fn demo_serves_from_containers_and_stops_cleanly() {
    // SAFETY: geteuid has no preconditions.
    if !require(
        unsafe { libc::geteuid() } == 0,
        "root (the demo runs containers)",
    ) {
        return;
    }
    let child = Command::new(SHOAL)
        .arg("demo")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start shoal demo");
    let mut demo = Proc {
        child,
        name: "demo".into(),
    };
    let admin: SocketAddr = ([127, 0, 0, 1], 9900).into();
    let web: SocketAddr = ([127, 0, 0, 1], 8080).into();
    wait_http_ok(admin, "/readyz", Duration::from_secs(20));
    let response = eventually(Duration::from_secs(30), "a replica to answer", || {
        http_get(web, "/", &[]).ok().filter(|r| r.status == 200)
    });
    assert!(
        response.body.starts_with("hello from hello-"),
        "{}",
        response.body
    );

    // Host networking shares the host's interfaces: the replica listens on loopback only.
    let status = http_get(admin, "/api/v1/services/hello", &[]).expect("service status");
    let status: serde_json::Value = serde_json::from_str(&status.body).expect("status JSON");
    let replica: SocketAddr = status["endpoints"][0]["address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no replica address in {status}"));
    let listening = listening_addresses(replica.port());
    assert_eq!(listening, ["127.0.0.1"], "replica port {}", replica.port());

    let status = Command::new(SHOAL)
        .arg("status")
        .output()
        .expect("shoal status");
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{table}");
    assert!(table.lines().any(|l| l.starts_with("hello")), "{table}");

    demo.signal(libc::SIGINT);
    assert_eq!(
        demo.wait_exit(Duration::from_secs(30)),
        Some(Some(0)),
        "demo exit"
    );
    let mut printed = String::new();
    if let Some(mut out) = demo.child.stdout.take() {
        out.read_to_string(&mut printed).expect("demo output");
    }
    assert!(printed.contains("curl http://127.0.0.1:8080/"), "{printed}");
    // The hints name shoal as it was started, so they work where it is not on PATH.
    assert!(printed.contains(&format!("{SHOAL} status")), "{printed}");
    assert!(
        http_get(web, "/", &[]).is_err(),
        "the listener must be closed"
    );
}

/// The local addresses of the IPv4 and IPv6 TCP sockets listening on `port` in this network
/// namespace, from /proc/net/tcp and tcp6.
fn listening_addresses(port: u16) -> Vec<String> {
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ...; 0A is LISTEN
            let (Some(local), Some("0A")) = (fields.get(1), fields.get(3).copied()) else {
                continue;
            };
            let Some((address, hex_port)) = local.split_once(':') else {
                continue;
            };
            if u16::from_str_radix(hex_port, 16) != Ok(port) {
                continue;
            }
            found.push(match u32::from_str_radix(address, 16) {
                // IPv4, in the kernel's byte order (little-endian here)
                Ok(v4) if address.len() == 8 => {
                    std::net::Ipv4Addr::from(v4.swap_bytes()).to_string()
                }
                _ => address.to_string(),
            });
        }
    }
    found
}
