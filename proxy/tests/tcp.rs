//! TCP listeners: echo through the proxy, half-close both ways, per-connection balancing,
//! connect retries, idle timeout, the connection limit, TLS termination and the
//! `shoal_tcp_*` metrics. Everything listens on 127.0.0.1 ephemeral ports.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use common::{dead_addr, eventually, metric, TestProxy};

/// An upstream that echoes every byte and half-closes when its client does.
struct Echo {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

async fn echo() -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut read, mut write) = stream.into_split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    Echo { addr, connections }
}

async fn tcp_proxy(upstreams: &[SocketAddr], service: &str) -> TestProxy {
    let list: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
    common::proxy(&format!(
        "listeners:\n  - {{ name: tcp, bind: \"127.0.0.1:0\", protocol: tcp, service: svc }}\nservices:\n  svc:\n    upstreams: {{ static: [{}] }}\n{service}",
        list.join(", ")
    ))
    .await
}

/// Sends `payload`, half-closes, and reads until the proxy closes; both at once, so a
/// payload bigger than the socket buffers cannot deadlock.
async fn round_trip(addr: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let payload = payload.to_vec();
    let writer = tokio::spawn(async move {
        write.write_all(&payload).await.unwrap();
        write.shutdown().await.unwrap();
        write
    });
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), read.read_to_end(&mut out))
        .await
        .expect("the proxy closed the connection")
        .unwrap();
    drop(writer.await.unwrap());
    out
}

fn tcp_metric(proxy: &TestProxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(&proxy.registry, name, labels)
}

#[tokio::test]
async fn echo_with_client_half_close_and_metrics() {
    let upstream = echo().await;
    let proxy = tcp_proxy(&[upstream.addr], "").await;
    // Bigger than any socket buffer, so the relay's flow control is exercised too.
    let payload: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let echoed = round_trip(proxy.addr, &payload).await;
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload);
    assert_eq!(round_trip(proxy.addr, b"").await, b"");

    let labels = [("listener", "tcp"), ("service", "svc")];
    assert_eq!(
        tcp_metric(&proxy, "shoal_tcp_connections_total", &labels),
        2.0
    );
    let bytes = payload.len() as f64;
    assert!(
        eventually(Duration::from_secs(2), || {
            tcp_metric(
                &proxy,
                "shoal_tcp_connections_active",
                &[("listener", "tcp")],
            ) == 0.0
                && tcp_metric(&proxy, "shoal_requests_in_flight", &[("service", "svc")]) == 0.0
        })
        .await
    );
    assert_eq!(
        tcp_metric(
            &proxy,
            "shoal_tcp_bytes_total",
            &[("listener", "tcp"), ("direction", "rx")]
        ),
        bytes
    );
    assert_eq!(
        tcp_metric(
            &proxy,
            "shoal_tcp_bytes_total",
            &[("listener", "tcp"), ("direction", "tx")]
        ),
        bytes
    );
}

#[tokio::test]
async fn upstream_half_close_keeps_the_client_direction_open() {
    // The upstream greets, closes its sending side at once, then counts what it receives.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (received, mut counts) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (mut read, mut write) = stream.into_split();
        write.write_all(b"hello").await.unwrap();
        write.shutdown().await.unwrap();
        let mut all = Vec::new();
        read.read_to_end(&mut all).await.unwrap();
        received.send(all.len()).unwrap();
    });
    let proxy = tcp_proxy(&[addr], "").await;

    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    let mut greeting = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut greeting))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(greeting, b"hello");
    // EOF from the upstream did not close the other direction.
    let data = vec![7u8; 256 * 1024];
    client.write_all(&data).await.unwrap();
    client.shutdown().await.unwrap();
    let count = tokio::time::timeout(Duration::from_secs(5), counts.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(count, data.len());
}

#[tokio::test]
async fn a_reset_is_passed_on_both_ways() {
    // The upstream sends part of an answer, waits for the client to have it, then resets;
    // a second connection's upstream reports how its connection ended.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ended, mut endings) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.write_all(b"partial").await.unwrap();
        let mut ack = [0u8; 3];
        stream.read_exact(&mut ack).await.unwrap();
        stream.set_zero_linger().unwrap();
        drop(stream);

        let (mut stream, _) = listener.accept().await.unwrap();
        let mut rest = Vec::new();
        ended
            .send(stream.read_to_end(&mut rest).await.map_err(|e| e.kind()))
            .unwrap();
    });
    let proxy = tcp_proxy(&[addr], "").await;

    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    let mut partial = [0u8; 7];
    client.read_exact(&mut partial).await.unwrap();
    assert_eq!(&partial, b"partial");
    client.write_all(b"ack").await.unwrap();
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest))
        .await
        .expect("the proxy ended the connection");
    assert_eq!(
        end.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );

    // A client that resets: the upstream's connection is reset too, not closed cleanly.
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client.write_all(b"x").await.unwrap();
    client.set_zero_linger().unwrap();
    drop(client);
    let end = tokio::time::timeout(Duration::from_secs(5), endings.recv())
        .await
        .expect("the upstream's connection ended")
        .unwrap();
    assert_eq!(end, Err(std::io::ErrorKind::ConnectionReset));
}

#[tokio::test]
async fn round_robin_spreads_connections_evenly() {
    let upstreams = [echo().await, echo().await, echo().await];
    let addrs: Vec<SocketAddr> = upstreams.iter().map(|u| u.addr).collect();
    let proxy = tcp_proxy(&addrs, "    balance: round_robin\n").await;
    for i in 0..30 {
        let message = format!("message {i}");
        assert_eq!(
            round_trip(proxy.addr, message.as_bytes()).await,
            message.as_bytes()
        );
    }
    let counts: Vec<usize> = upstreams
        .iter()
        .map(|u| u.connections.load(Ordering::SeqCst))
        .collect();
    assert_eq!(counts, vec![10, 10, 10]);
}

#[tokio::test]
async fn a_dead_endpoint_is_retried_elsewhere() {
    let live = [echo().await, echo().await];
    let dead = dead_addr().await;
    let proxy = tcp_proxy(
        &[live[0].addr, dead, live[1].addr],
        "    balance: round_robin\n",
    )
    .await;
    for i in 0..30 {
        let message = format!("message {i}");
        assert_eq!(
            round_trip(proxy.addr, message.as_bytes()).await,
            message.as_bytes(),
            "connection {i}"
        );
    }
    let served: usize = live
        .iter()
        .map(|u| u.connections.load(Ordering::SeqCst))
        .sum();
    assert_eq!(served, 30);
    let errors = tcp_metric(
        &proxy,
        "shoal_upstream_connect_errors_total",
        &[("service", "svc")],
    );
    assert!(errors >= 1.0, "{errors}");
    assert_eq!(
        tcp_metric(
            &proxy,
            "shoal_upstream_retries_total",
            &[("service", "svc")]
        ),
        errors
    );
}

#[tokio::test]
async fn a_refusing_endpoint_is_ejected() {
    let live = echo().await;
    let dead = dead_addr().await;
    let proxy = tcp_proxy(
        &[dead, live.addr],
        "    balance: round_robin\n    outlier: { consecutive_failures: 2 }\n",
    )
    .await;
    for i in 0..10 {
        let message = format!("message {i}");
        assert_eq!(
            round_trip(proxy.addr, message.as_bytes()).await,
            message.as_bytes()
        );
    }
    // Two refused connects eject it; the connections after that go to the live one only.
    let ejections = tcp_metric(
        &proxy,
        "shoal_outlier_ejections_total",
        &[("service", "svc")],
    );
    assert_eq!(ejections, 1.0);
    assert_eq!(
        tcp_metric(
            &proxy,
            "shoal_upstream_connect_errors_total",
            &[("service", "svc")]
        ),
        2.0
    );
}

#[tokio::test]
async fn every_endpoint_dead_closes_the_connection() {
    let proxy = tcp_proxy(&[dead_addr().await, dead_addr().await], "").await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    // Closing with the client's bytes unread may reset rather than end the stream.
    let _ = client.write_all(b"anyone?").await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut out))
        .await
        .expect("the connection is closed");
    assert!(read.is_err() || out.is_empty());
    assert_eq!(
        tcp_metric(
            &proxy,
            "shoal_upstream_connect_errors_total",
            &[("service", "svc")]
        ),
        2.0
    );
}

#[tokio::test]
async fn consistent_hash_keeps_a_client_on_one_endpoint() {
    let upstreams = [echo().await, echo().await, echo().await];
    let addrs: Vec<SocketAddr> = upstreams.iter().map(|u| u.addr).collect();
    let proxy = tcp_proxy(
        &addrs,
        "    balance: consistent_hash\n    hash_on: client_ip\n",
    )
    .await;
    for _ in 0..12 {
        assert_eq!(round_trip(proxy.addr, b"x").await, b"x");
    }
    let mut counts: Vec<usize> = upstreams
        .iter()
        .map(|u| u.connections.load(Ordering::SeqCst))
        .collect();
    counts.sort();
    assert_eq!(counts, vec![0, 0, 12]);
}

#[tokio::test]
async fn other_balancers_serve_connections() {
    for balance in ["least_request", "p2c_ewma"] {
        let upstreams = [echo().await, echo().await];
        let addrs: Vec<SocketAddr> = upstreams.iter().map(|u| u.addr).collect();
        let proxy = tcp_proxy(&addrs, &format!("    balance: {balance}\n")).await;
        for _ in 0..10 {
            assert_eq!(round_trip(proxy.addr, b"y").await, b"y", "{balance}");
        }
    }
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let upstream = echo().await;
    let proxy = tcp_proxy(&[upstream.addr], "    timeouts: { idle: 300ms }\n").await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    // Traffic keeps it open past the idle timeout...
    let mut last = std::time::Instant::now();
    for _ in 0..4 {
        client.write_all(b"ping").await.unwrap();
        let mut pong = [0u8; 4];
        client.read_exact(&mut pong).await.unwrap();
        last = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // ...silence closes it.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), client.read_to_end(&mut rest))
        .await
        .expect("idle connection closed")
        .unwrap();
    assert!(rest.is_empty());
    assert!(last.elapsed() >= Duration::from_millis(280));
}

#[tokio::test]
async fn connection_limit_closes_the_excess() {
    let upstream = echo().await;
    let proxy = tcp_proxy(&[upstream.addr], "    limits: { max_connections: 2 }\n").await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        client.write_all(b"ok").await.unwrap();
        let mut back = [0u8; 2];
        client.read_exact(&mut back).await.unwrap();
        open.push(client);
    }
    let mut third = TcpStream::connect(proxy.addr).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), third.read_to_end(&mut out))
        .await
        .expect("the excess connection is closed");
    assert!(read.is_err() || out.is_empty());
    drop(open);
    assert!(
        eventually(Duration::from_secs(2), || {
            tcp_metric(
                &proxy,
                "shoal_tcp_connections_active",
                &[("listener", "tcp")],
            ) == 0.0
        })
        .await
    );
    assert_eq!(round_trip(proxy.addr, b"again").await, b"again");
}

#[tokio::test]
async fn shutdown_stops_accepting_and_drains() {
    let upstream = echo().await;
    let proxy = tcp_proxy(&[upstream.addr], "").await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client.write_all(b"before").await.unwrap();
    let mut back = [0u8; 6];
    client.read_exact(&mut back).await.unwrap();

    let shutdown = {
        let proxy = proxy.proxy.clone();
        tokio::spawn(async move { proxy.shutdown(Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(TcpStream::connect(proxy.addr).await.is_err());
    // The open connection still works while draining, and shutdown waits for it.
    client.write_all(b"during").await.unwrap();
    client.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"during");
    assert!(!shutdown.is_finished());
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), shutdown)
        .await
        .expect("shutdown returns once the connection is done")
        .unwrap();
}

#[tokio::test]
async fn tls_is_terminated_and_half_close_still_works() {
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

    let dir = std::env::temp_dir().join(format!("shoal-tcp-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["db.example.com".to_string()]).unwrap();
    std::fs::write(dir.join("db.pem"), generated.cert.pem()).unwrap();
    std::fs::write(dir.join("db.key"), generated.key_pair.serialize_pem()).unwrap();
    let upstream = echo().await;
    let proxy = common::proxy(&format!(
        "listeners:\n  - name: tcp\n    bind: \"127.0.0.1:0\"\n    protocol: tcp\n    service: svc\n    tls: {{ certificates: [{{ cert: \"{0}/db.pem\", key: \"{0}/db.key\" }}] }}\nservices:\n  svc:\n    upstreams: {{ static: [\"{1}\"] }}\n",
        dir.display(),
        upstream.addr
    ))
    .await;

    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(generated.cert.der().to_vec()))
        .unwrap();
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("db.example.com").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), None);
    let (mut read, mut write) = tokio::io::split(stream);
    let payload: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 13) as u8).collect();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        write.write_all(&sent).await.unwrap();
        write.shutdown().await.unwrap();
        write
    });
    let mut echoed = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), read.read_to_end(&mut echoed))
        .await
        .expect("the proxy closed the connection")
        .unwrap();
    drop(writer.await.unwrap());
    assert!(echoed == payload, "{} bytes back", echoed.len());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tcp listener in front of a container service scaled to zero.
async fn zero_proxy(scale: &str) -> TestProxy {
    common::proxy(&format!(
        "listeners:\n  - {{ name: tcp, bind: \"127.0.0.1:0\", protocol: tcp, service: svc }}\nservices:\n  svc:\n    container: {{ host: true, command: [/bin/server] }}\n    scale: {{ min: 0, initial: 0{scale} }}\n"
    ))
    .await
}

#[tokio::test]
async fn connections_are_held_while_scaling_from_zero() {
    let proxy = zero_proxy("").await;
    let upstream = echo().await;
    let client = tokio::spawn(round_trip(proxy.addr, b"held, then served"));
    assert!(
        eventually(Duration::from_secs(2), || {
            tcp_metric(&proxy, "shoal_requests_queued", &[("service", "svc")]) == 1.0
        })
        .await
    );
    assert!(!client.is_finished());
    proxy
        .proxy
        .service("svc")
        .unwrap()
        .set_endpoints(vec![shoal_proxy::Endpoint::new(upstream.addr)]);
    assert_eq!(client.await.unwrap(), b"held, then served");
    assert_eq!(
        tcp_metric(&proxy, "shoal_requests_queued", &[("service", "svc")]),
        0.0
    );
}

#[tokio::test]
async fn a_held_connection_is_closed_after_the_cold_start_timeout() {
    let proxy = zero_proxy(", cold_start_timeout: 200ms").await;
    let started = std::time::Instant::now();
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), client.read_to_end(&mut out))
        .await
        .expect("closed after the cold start timeout");
    assert!(read.is_err() || out.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(180));
}
