//! Graceful shutdown: no new connections, in-flight requests finish.

mod common;

use std::sync::Arc;
use std::time::Duration;

use http::Response;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use common::*;

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let release = Arc::new(Notify::new());
    let held = held_backend(release.clone()).await;
    let p = proxy(&single(&[held.addr], "")).await;
    let addr = p.addr;
    let request = tokio::spawn(async move { get(addr, "/").await });
    let hits = held.hits.clone();
    assert!(
        eventually(Duration::from_secs(5), || hits
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1)
        .await
    );

    let proxy = p.proxy.clone();
    let shutdown = tokio::spawn(async move { proxy.shutdown(Duration::from_secs(10)).await });
    // the listener closes: new connections are refused
    let mut refused = false;
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "still accepting after shutdown began");
    assert!(
        !shutdown.is_finished(),
        "shutdown returned with a request in flight"
    );

    release.notify_one();
    let answer = request.await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "finished");
    // the connection does not stay open for another request
    assert_eq!(answer.header("connection"), Some("close"));
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown did not return after the request finished")
        .unwrap();
}

#[tokio::test]
async fn shutdown_gives_up_after_the_drain_timeout() {
    let stuck = backend("stuck", |_req, _name| async {
        std::future::pending::<()>().await;
        Response::new(Full::default())
    })
    .await;
    let p = proxy(&single(&[stuck.addr], "")).await;
    let addr = p.addr;
    tokio::spawn(async move { get(addr, "/").await });
    let hits = stuck.hits.clone();
    assert!(
        eventually(Duration::from_secs(5), || hits
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1)
        .await
    );
    tokio::time::timeout(
        Duration::from_secs(5),
        p.proxy.shutdown(Duration::from_millis(200)),
    )
    .await
    .expect("shutdown ignored its drain timeout");
}

#[tokio::test]
async fn requests_held_at_the_drain_timeout_get_a_503() {
    let p = proxy(
        "listeners:\n  - { name: web, bind: \"127.0.0.1:0\", service: svc }\nservices:\n  svc:\n    container: { host: true, command: [/bin/server] }\n    scale: { min: 0, initial: 0 }\n",
    )
    .await;
    let service = p.proxy.service("svc").unwrap();
    let addr = p.addr;
    let held = tokio::spawn(async move { get(addr, "/").await });
    assert!(eventually(Duration::from_secs(5), || service.queued() == 1).await);
    tokio::time::timeout(
        Duration::from_secs(5),
        p.proxy.shutdown(Duration::from_millis(200)),
    )
    .await
    .expect("shutdown ignored its drain timeout");
    let answer = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(answer.status, 503);
    assert_eq!(answer.header("x-shoal-error"), Some("no_endpoints"));
    assert_eq!(answer.header("retry-after"), Some("1"));
}

/// A keep-alive client that sends its next request just as shutdown begins (it cannot know)
/// is answered, with `connection: close`, rather than losing it to a closed connection.
#[tokio::test]
async fn a_request_sent_on_an_idle_connection_as_shutdown_begins_is_served() {
    let backend = echo_backend("up").await;
    let p = proxy(&single(&[backend.addr], "")).await;
    let mut client = TcpStream::connect(p.addr).await.unwrap();
    let request = b"GET / HTTP/1.1\r\nhost: test\r\n\r\n";
    client.write_all(request).await.unwrap();
    let first = read_response(&mut client).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");

    let proxy = p.proxy.clone();
    let shutdown = tokio::spawn(async move { proxy.shutdown(Duration::from_secs(10)).await });
    // Shutdown has begun (and the idle connection has been told) once new connections
    // are refused.
    assert!(
        eventually(Duration::from_secs(5), || std::net::TcpStream::connect(
            p.addr
        )
        .is_err())
        .await
    );
    client.write_all(request).await.unwrap();
    let mut second = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut second))
        .await
        .expect("answered and closed")
        .expect("closed cleanly, not reset");
    let second = String::from_utf8_lossy(&second);
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(
        second.to_ascii_lowercase().contains("connection: close"),
        "{second}"
    );
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown returned")
        .unwrap();
}

/// Reads one response with a Content-Length body.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    while !bytes.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        bytes.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("a content-length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    bytes.extend(body);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A client connected (and its request sent) just before shutdown, still in the kernel's
/// accept queue, is served and told to close, not reset with its request unanswered.
#[tokio::test]
async fn a_connection_still_in_the_accept_queue_at_shutdown_is_served() {
    use std::io::{Read, Write};

    let backend = echo_backend("up").await;
    let p = proxy(&single(&[backend.addr], "")).await;
    // Blocking calls: the proxy's accept loop does not run before shutdown begins.
    let mut client = std::net::TcpStream::connect(p.addr).unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        p.proxy.shutdown(Duration::from_secs(5)),
    )
    .await
    .expect("shutdown returned");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = Vec::new();
    client
        .read_to_end(&mut answer)
        .expect("answered, not reset");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
}
