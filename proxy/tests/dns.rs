//! DNS-discovered upstreams against a real dnsmasq (Debian package `dnsmasq-base`, which
//! `dnsmasq` pulls in, without the system service), started per test on a free loopback
//! port and serving A records from a hosts file the test rewrites (then SIGHUPs dnsmasq to
//! re-read) and SRV records from its command line. Backends listen
//! on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (all loopback on Linux) so one A record set with
//! one `port` maps to distinct backends.
//!
//! Without /usr/sbin/dnsmasq the tests print why and pass, except under CI=true, where
//! they fail.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, TcpListener as StdTcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use common::*;

const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// A dnsmasq child, killed on drop; its files live in `dir`, removed on drop.
struct Dnsmasq {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Dnsmasq {
    /// Starts dnsmasq answering `hosts` (lines of a hosts file) and `srv` records
    /// (`name,target,port`), authoritative for `.test`. `None` when dnsmasq is not
    /// installed outside CI.
    fn start(hosts: &str, srv: &[String]) -> Option<Dnsmasq> {
        if !Path::new(DNSMASQ).exists() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{DNSMASQ} is missing: install the Debian package `dnsmasq-base`");
            }
            eprintln!("skipping: {DNSMASQ} is missing (apt-get install dnsmasq-base)");
            return None;
        }
        let dir = temp_dir();
        std::fs::write(dir.join("hosts"), hosts).unwrap();
        // A port picked free can be taken before dnsmasq binds it: try a few.
        for _ in 0..5 {
            let port = free_port();
            let mut command = Command::new(DNSMASQ);
            command
                .arg("--keep-in-foreground")
                .arg(format!("--port={port}"))
                .arg("--listen-address=127.0.0.1")
                .arg("--bind-interfaces")
                .arg("--no-resolv")
                .arg("--no-hosts")
                .arg("--local=/test/")
                .arg(format!("--addn-hosts={}", dir.join("hosts").display()))
                .arg(format!("--pid-file={}", dir.join("pid").display()))
                .arg(format!("--log-facility={}", dir.join("log").display()))
                .arg("--log-queries");
            // As root dnsmasq would switch to `nobody`; staying root keeps the SIGHUP
            // re-read of the hosts file and the log simple.
            if unsafe { libc::geteuid() } == 0 {
                command.arg("--user=root");
            }
            for record in srv {
                command.arg(format!("--srv-host={record}"));
            }
            let mut child = command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            if ready(&mut child, port) {
                return Some(Dnsmasq { child, port, dir });
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("dnsmasq did not start; its log:\n{}", log(&dir));
    }

    fn nameserver(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Replaces the hosts file and makes dnsmasq re-read it.
    fn set_hosts(&self, hosts: &str) {
        let next = self.dir.join("hosts.next");
        std::fs::write(&next, hosts).unwrap();
        std::fs::rename(&next, self.dir.join("hosts")).unwrap();
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    }

    /// Kills dnsmasq now (the directory stays until drop).
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("dnsmasq log:\n{}", log(&self.dir));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until dnsmasq accepts TCP on `port` (it opens UDP and TCP together); false when it
/// exited (say the port was taken) or took too long.
fn ready(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("log")).unwrap_or_default()
}

fn temp_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!(
        "shoal-dns-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A loopback port free for both UDP and TCP right now.
fn free_port() -> u16 {
    loop {
        let tcp = StdTcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Listeners on the same port of 127.0.0.1, 127.0.0.2 and 127.0.0.3.
async fn same_port_listeners() -> (u16, [TcpListener; 3]) {
    loop {
        let first = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = first.local_addr().unwrap().port();
        let (Ok(second), Ok(third)) = (
            TcpListener::bind(("127.0.0.2", port)).await,
            TcpListener::bind(("127.0.0.3", port)).await,
        ) else {
            continue;
        };
        return (port, [first, second, third]);
    }
}

/// An HTTP/1.1 backend on `listener` answering `x-backend: <its IP>` once `gate` (if
/// any) gives a permit; counts the requests it got in `hits`.
fn serve(listener: TcpListener, gate: Option<Arc<Semaphore>>) -> Arc<AtomicUsize> {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let name = listener.local_addr().unwrap().ip().to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (name, counter, gate) = (name.clone(), counter.clone(), gate.clone());
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let (name, gate) = (name.clone(), gate.clone());
                    async move {
                        if let Some(gate) = gate {
                            let _permit = gate.acquire().await;
                        }
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .header("x-backend", name.as_str())
                                .body(Full::new(Bytes::from(name)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    hits
}

/// Proxy YAML: listener `web` → service `svc` discovered through `dns` (a flow mapping's
/// inside), refreshed every 200ms, balanced round robin so sequential requests visit every
/// endpoint.
fn config(dns: &str) -> String {
    format!(
        "listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\", service: svc }}\nservices:\n  svc:\n    upstreams: {{ dns: {{ {dns}, refresh: 200ms }} }}\n    balance: round_robin\n"
    )
}

fn addresses(p: &TestProxy) -> BTreeSet<SocketAddr> {
    let service = p.proxy.service("svc").unwrap();
    service.endpoints().into_iter().map(|e| e.address).collect()
}

fn set(port: u16, ips: &[[u8; 4]]) -> BTreeSet<SocketAddr> {
    ips.iter()
        .map(|ip| SocketAddr::new(IpAddr::from(*ip), port))
        .collect()
}

/// The backends that answered `n` requests.
async fn answered_by(p: &TestProxy, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let answer = get(p.addr, "/").await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        seen.insert(answer.header("x-backend").unwrap().to_string());
    }
    seen
}

fn failures(p: &TestProxy) -> f64 {
    metric(
        &p.registry,
        "shoal_dns_resolution_failures_total",
        &[("service", "svc")],
    )
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn a_records_follow_the_hosts_file() {
    let (port, [_, two, three]) = same_port_listeners().await;
    serve(two, None);
    serve(three, None);
    let Some(dns) = Dnsmasq::start("127.0.0.2 web.test\n127.0.0.3 web.test\n", &[]) else {
        return;
    };
    let p = proxy(&config(&format!(
        "name: web.test, port: {port}, type: a, nameserver: \"{}\"",
        dns.nameserver()
    )))
    .await;
    // resolved before bind returned
    assert_eq!(addresses(&p), set(port, &[[127, 0, 0, 2], [127, 0, 0, 3]]));
    let ids: BTreeSet<String> = p
        .proxy
        .service("svc")
        .unwrap()
        .endpoints()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(
        ids,
        names(&[&format!("127.0.0.2:{port}"), &format!("127.0.0.3:{port}")])
    );
    assert_eq!(
        answered_by(&p, 20).await,
        names(&["127.0.0.2", "127.0.0.3"])
    );

    dns.set_hosts("127.0.0.3 web.test\n");
    let one = set(port, &[[127, 0, 0, 3]]);
    assert!(eventually(Duration::from_secs(10), || addresses(&p) == one).await);
    assert_eq!(answered_by(&p, 10).await, names(&["127.0.0.3"]));

    dns.set_hosts("127.0.0.2 web.test\n127.0.0.3 web.test\n");
    let two = set(port, &[[127, 0, 0, 2], [127, 0, 0, 3]]);
    assert!(eventually(Duration::from_secs(10), || addresses(&p) == two).await);
    assert_eq!(failures(&p), 0.0);
    p.proxy.shutdown(Duration::from_secs(1)).await;
}

/// Two answering upstreams, on 127.0.0.1 and 127.0.0.2 at ports of their own.
async fn two_srv_targets() -> (SocketAddr, SocketAddr) {
    let first = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let (a, b) = (first.local_addr().unwrap(), second.local_addr().unwrap());
    serve(first, None);
    serve(second, None);
    (a, b)
}

#[tokio::test]
async fn srv_records_give_endpoints_at_their_ports() {
    let (a, b) = two_srv_targets().await;
    let Some(dns) = Dnsmasq::start(
        "127.0.0.1 one.test\n127.0.0.2 two.test\n",
        &[
            format!("_http._tcp.web.test,one.test,{}", a.port()),
            format!("_http._tcp.web.test,two.test,{}", b.port()),
        ],
    ) else {
        return;
    };
    // `port` is not used for SRV: the records give the ports.
    let p = proxy(&config(&format!(
        "name: _http._tcp.web.test, port: 1, type: srv, nameserver: \"{}\"",
        dns.nameserver()
    )))
    .await;
    assert_eq!(addresses(&p), BTreeSet::from([a, b]));
    assert_eq!(
        answered_by(&p, 20).await,
        names(&["127.0.0.1", "127.0.0.2"])
    );

    // a target that loses its address leaves; the other stays
    dns.set_hosts("127.0.0.2 two.test\n");
    assert!(
        eventually(Duration::from_secs(10), || addresses(&p)
            == BTreeSet::from([b]))
        .await
    );
    assert_eq!(answered_by(&p, 5).await, names(&["127.0.0.2"]));
    p.proxy.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn srv_targets_of_the_lowest_priority_get_the_traffic() {
    let (a, b) = two_srv_targets().await;
    // dnsmasq's --srv-host: name, target, port, priority; `two` is the fallback.
    let Some(dns) = Dnsmasq::start(
        "127.0.0.1 one.test\n127.0.0.2 two.test\n",
        &[
            format!("_http._tcp.web.test,two.test,{},10", b.port()),
            format!("_http._tcp.web.test,one.test,{},0", a.port()),
        ],
    ) else {
        return;
    };
    let p = proxy(&config(&format!(
        "name: _http._tcp.web.test, type: srv, nameserver: \"{}\"",
        dns.nameserver()
    )))
    .await;
    assert_eq!(addresses(&p), BTreeSet::from([a]));
    assert_eq!(answered_by(&p, 10).await, names(&["127.0.0.1"]));

    // the first priority's target loses its address: the next priority's takes over
    dns.set_hosts("127.0.0.2 two.test\n");
    assert!(
        eventually(Duration::from_secs(10), || addresses(&p)
            == BTreeSet::from([b]))
        .await
    );
    // and hands back when it returns
    dns.set_hosts("127.0.0.1 one.test\n127.0.0.2 two.test\n");
    assert!(
        eventually(Duration::from_secs(10), || addresses(&p)
            == BTreeSet::from([a]))
        .await
    );
    p.proxy.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn failures_keep_the_last_good_set_and_are_counted_until_the_name_is_gone() {
    let (port, [_, two, three]) = same_port_listeners().await;
    serve(two, None);
    serve(three, None);
    let Some(mut dns) = Dnsmasq::start("127.0.0.2 web.test\n127.0.0.3 web.test\n", &[]) else {
        return;
    };
    let p = proxy(&config(&format!(
        "name: web.test, port: {port}, type: a, nameserver: \"{}\"",
        dns.nameserver()
    )))
    .await;
    let both = set(port, &[[127, 0, 0, 2], [127, 0, 0, 3]]);
    assert_eq!(addresses(&p), both);

    // NXDOMAIN: the endpoints stay for two rounds, and go at the third
    dns.set_hosts("");
    assert!(eventually(Duration::from_secs(10), || addresses(&p).is_empty()).await);
    assert_eq!(failures(&p), 3.0);
    assert_eq!(get(p.addr, "/").await.status, 503);
    // and come back with the name
    dns.set_hosts("127.0.0.2 web.test\n127.0.0.3 web.test\n");
    assert!(eventually(Duration::from_secs(10), || addresses(&p) == both).await);

    // the nameserver is gone (timeouts): the endpoints still stay
    dns.stop();
    let before = failures(&p);
    assert!(eventually(Duration::from_secs(30), || failures(&p) > before).await);
    assert_eq!(addresses(&p), both);
    assert_eq!(
        answered_by(&p, 20).await,
        names(&["127.0.0.2", "127.0.0.3"])
    );
    p.proxy.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_failed_first_resolution_starts_empty_until_the_name_resolves() {
    let (port, [_, two, _]) = same_port_listeners().await;
    serve(two, None);
    let Some(dns) = Dnsmasq::start("", &[]) else {
        return;
    };
    let p = proxy(&config(&format!(
        "name: web.test, port: {port}, type: a, nameserver: \"{}\"",
        dns.nameserver()
    )))
    .await;
    assert!(addresses(&p).is_empty());
    assert!(failures(&p) >= 1.0);
    let answer = get(p.addr, "/").await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.header("x-shoal-error"), Some("no_endpoints"));

    dns.set_hosts("127.0.0.2 web.test\n");
    let one = set(port, &[[127, 0, 0, 2]]);
    assert!(eventually(Duration::from_secs(10), || addresses(&p) == one).await);
    assert_eq!(answered_by(&p, 3).await, names(&["127.0.0.2"]));
    p.proxy.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_request_in_flight_on_a_leaving_endpoint_finishes() {
    let (port, [_, two, three]) = same_port_listeners().await;
    let gate = Arc::new(Semaphore::new(0));
    let held = serve(two, Some(gate.clone()));
    serve(three, None);
    let Some(dns) = Dnsmasq::start("127.0.0.2 web.test\n", &[]) else {
        return;
    };
    let p = proxy(&config(&format!(
        "name: web.test, port: {port}, type: a, nameserver: \"{}\"",
        dns.nameserver()
    )))
    .await;
    let addr = p.addr;
    let in_flight = tokio::spawn(async move { get(addr, "/").await });
    assert!(eventually(Duration::from_secs(5), || held.load(Ordering::SeqCst) == 1).await);

    dns.set_hosts("127.0.0.3 web.test\n");
    let moved = set(port, &[[127, 0, 0, 3]]);
    assert!(eventually(Duration::from_secs(10), || addresses(&p) == moved).await);
    assert_eq!(answered_by(&p, 5).await, names(&["127.0.0.3"]));

    gate.add_permits(1);
    let answer = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-backend"), Some("127.0.0.2"));
    p.proxy.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_silent_nameserver_does_not_hold_the_listeners_back() {
    // A nameserver that answers nothing: UDP queries are dropped, TCP connections wait in
    // the backlog. The resolver alone would give up only after its timeouts (about 10 s).
    // The TCP port of the UDP socket's number may be taken (an outgoing connection of a test
    // running beside this one): then another pair is tried.
    let (_udp, _tcp, port) = (0..100)
        .find_map(|_| {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let port = udp.local_addr().unwrap().port();
            let tcp = std::net::TcpListener::bind(("127.0.0.1", port)).ok()?;
            Some((udp, tcp, port))
        })
        .expect("a port free for both UDP and TCP");
    let started = std::time::Instant::now();
    let p = proxy(&config(&format!(
        "name: web.test, port: 80, type: a, nameserver: \"127.0.0.1:{port}\""
    )))
    .await;
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(6), "bind waited {waited:?}");
    assert!(addresses(&p).is_empty());
    let answer = get(p.addr, "/").await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.header("x-shoal-error"), Some("no_endpoints"));
    p.proxy.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_reload_that_drops_dns_leaves_the_static_upstreams() {
    let (port, [one, two, _]) = same_port_listeners().await;
    serve(one, None);
    serve(two, None);
    let Some(dns) = Dnsmasq::start("127.0.0.2 web.test\n", &[]) else {
        return;
    };
    let yaml = |dns: &str| {
        format!(
            "listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\", service: svc }}\nservices:\n  svc:\n    upstreams: {{ static: [\"127.0.0.1:{port}\"]{dns} }}\n    balance: round_robin\n"
        )
    };
    let p = proxy(&yaml(&format!(
        ", dns: {{ name: web.test, port: {port}, type: a, nameserver: \"{}\", refresh: 200ms }}",
        dns.nameserver()
    )))
    .await;
    assert_eq!(addresses(&p), set(port, &[[127, 0, 0, 1], [127, 0, 0, 2]]));
    let without = shoal_config::parse(&yaml(""), "test.yaml").unwrap();
    p.proxy.apply(&without, Path::new("")).await.unwrap();
    assert_eq!(addresses(&p), set(port, &[[127, 0, 0, 1]]));
    assert_eq!(answered_by(&p, 10).await, names(&["127.0.0.1"]));
    p.proxy.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_reload_that_changes_the_static_part_applies_it_at_once() {
    let (port, [one, two, three]) = same_port_listeners().await;
    serve(one, None);
    serve(two, None);
    serve(three, None);
    let Some(dns) = Dnsmasq::start("127.0.0.2 web.test\n", &[]) else {
        return;
    };
    let yaml = |static_ip: &str| {
        format!(
            "listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\", service: svc }}\nservices:\n  svc:\n    upstreams: {{ static: [\"{static_ip}:{port}\"], dns: {{ name: web.test, port: {port}, type: a, nameserver: \"{}\", refresh: 200ms }} }}\n    balance: round_robin\n",
            dns.nameserver()
        )
    };
    let p = proxy(&yaml("127.0.0.1")).await;
    assert_eq!(addresses(&p), set(port, &[[127, 0, 0, 1], [127, 0, 0, 2]]));
    let moved = shoal_config::parse(&yaml("127.0.0.3"), "test.yaml").unwrap();
    // The nameserver is gone: nothing but the reload itself can change the set.
    drop(dns);
    p.proxy.apply(&moved, Path::new("")).await.unwrap();
    assert_eq!(addresses(&p), set(port, &[[127, 0, 0, 2], [127, 0, 0, 3]]));
    assert_eq!(
        answered_by(&p, 10).await,
        names(&["127.0.0.2", "127.0.0.3"])
    );
    p.proxy.shutdown(Duration::from_secs(1)).await;
}
