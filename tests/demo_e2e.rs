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
    assert!(printed.contains("shoal status"), "{printed}");
    assert!(
        http_get(web, "/", &[]).is_err(),
        "the listener must be closed"
    );
}
