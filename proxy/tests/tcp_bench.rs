//! A bulk-transfer measurement of the TCP relay, run by hand:
//! `cargo test --release -p shoal-proxy --test tcp_bench -- --ignored --nocapture`.
//! It pushes 1 GiB client → proxy → sink over loopback five times and prints the median
//! MB/s, with the same transfer straight to the sink (no proxy) for reference.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const TOTAL: usize = 1 << 30;
const RUNS: usize = 5;

/// A sink that reads each connection to EOF and reports how many bytes it got.
async fn sink() -> (SocketAddr, mpsc::UnboundedReceiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (done, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let done = done.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 256 * 1024];
                let mut total = 0;
                while let Ok(n) = stream.read(&mut buffer).await {
                    if n == 0 {
                        break;
                    }
                    total += n;
                }
                // Health checks may connect too; only transfers are reported.
                if total > 0 {
                    let _ = done.send(total);
                }
            });
        }
    });
    (addr, received)
}

async fn transfer(addr: SocketAddr, received: &mut mpsc::UnboundedReceiver<usize>) -> f64 {
    let chunk = vec![0x5au8; 256 * 1024];
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut sent = 0;
    while sent < TOTAL {
        stream.write_all(&chunk).await.unwrap();
        sent += chunk.len();
    }
    stream.shutdown().await.unwrap();
    let got = received.recv().await.unwrap();
    assert_eq!(got, TOTAL);
    TOTAL as f64 / 1e6 / started.elapsed().as_secs_f64()
}

fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand in release mode"]
async fn bulk_throughput() {
    let (addr, mut received) = sink().await;
    let mut direct = Vec::new();
    for _ in 0..RUNS {
        direct.push(transfer(addr, &mut received).await);
    }
    let proxy = common::proxy(&format!(
        "listeners:\n  - {{ name: tcp, bind: \"127.0.0.1:0\", protocol: tcp, service: svc }}\nservices:\n  svc:\n    upstreams: {{ static: [\"{addr}\"] }}\n"
    ))
    .await;
    let mut proxied = Vec::new();
    for _ in 0..RUNS {
        proxied.push(transfer(proxy.addr, &mut received).await);
    }
    println!(
        "1 GiB over loopback, median of {RUNS}: direct {:.0} MB/s, through the proxy {:.0} MB/s (runs {proxied:.0?})",
        median(direct),
        median(proxied.clone())
    );
    proxy.proxy.shutdown(Duration::from_secs(1)).await;
}
