//! shoal's HTTP/2 server: many streams on one connection, bodies both ways through flow
//! control, trailers, a stream the client resets, idle connections, shutdown.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::Reason;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

use common::*;

/// An h2 client connection to `addr`, driven in the background; its task ends with the
/// connection.
async fn h2_client(addr: SocketAddr) -> (SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, driver)
}

/// Sends a GET for `path` and reads the response whole: status, headers, body, trailers.
async fn get_h2(
    client: &mut SendRequest<Bytes>,
    path: &str,
) -> (http::response::Parts, Bytes, Option<http::HeaderMap>) {
    let request = Request::get(format!("http://a.example{path}"))
        .body(())
        .unwrap();
    let (response, _) = client
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(request, true)
        .unwrap();
    let (parts, mut body) = response.await.unwrap().into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap();
    (parts, Bytes::from(data), trailers)
}

#[tokio::test]
async fn concurrent_streams_on_one_connection_get_their_own_answers() {
    let b = backend("paths", |req, _| async move {
        Response::new(Full::new(Bytes::from(req.uri().path().to_string())))
    })
    .await;
    let p = proxy(&single(&[b.addr], "")).await;
    let (client, _driver) = h2_client(p.addr).await;
    let requests: Vec<_> = (0..40)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move { (i, get_h2(&mut client, &format!("/s{i}")).await) })
        })
        .collect();
    for request in requests {
        let (i, (parts, body, _)) = request.await.unwrap();
        assert_eq!(parts.status, 200);
        assert_eq!(body, format!("/s{i}"));
        assert!(parts.headers.contains_key("date"), "{:?}", parts.headers);
        assert!(parts.headers.contains_key("x-request-id"));
    }
    assert_eq!(b.hits.load(Ordering::SeqCst), 40);
}

#[tokio::test]
async fn large_bodies_stream_both_ways_within_flow_control() {
    // More than the default window of the client (64 KiB) and of shoal (1 MiB), so both
    // directions wait for WINDOW_UPDATEs on the way.
    let b = echo_backend("echo").await;
    let p = proxy(&single(&[b.addr], "")).await;
    let sent: Bytes = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let request = Request::post("http://a.example/upload")
        .body(Full::new(sent.clone()))
        .unwrap();
    let answer = send_h2(p.addr, request).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.len(), sent.len());
    assert!(answer.body == sent, "the echoed body differs");
    assert_eq!(
        answer.header("content-length"),
        Some(sent.len().to_string().as_str())
    );
}

#[tokio::test]
async fn upstream_trailers_reach_http2_clients() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
                       5\r\nhello\r\n0\r\nx-sum: 5\r\n\r\n";
        stream.write_all(answer).await.unwrap();
        let _ = stream.read(&mut buf).await;
    });
    let p = proxy(&single(&[up], "")).await;
    let (mut client, _driver) = h2_client(p.addr).await;
    let (parts, body, trailers) = get_h2(&mut client, "/t").await;
    assert_eq!(parts.status, 200);
    assert_eq!(body, "hello");
    assert!(!parts.headers.contains_key("transfer-encoding"));
    let trailers = trailers.expect("no trailers");
    assert_eq!(trailers["x-sum"], "5");
}

#[tokio::test]
async fn a_stream_the_client_resets_takes_its_request_along() {
    let (b, mut gone) = stuck_backend().await;
    let p = proxy(&single(&[b.addr], "")).await;
    let (client, _driver) = h2_client(p.addr).await;
    let request = Request::get("http://a.example/").body(()).unwrap();
    let (_response, mut stream) = client
        .ready()
        .await
        .unwrap()
        .send_request(request, true)
        .unwrap();
    let hits = b.hits.clone();
    assert!(eventually(Duration::from_secs(5), || hits.load(Ordering::SeqCst) == 1).await);
    stream.send_reset(Reason::CANCEL);
    tokio::time::timeout(Duration::from_secs(5), gone.recv())
        .await
        .expect("the upstream request outlived its stream");
}

#[tokio::test]
async fn an_idle_connection_is_sent_away() {
    let b = echo_backend("echo").await;
    let p = proxy(&single(&[b.addr], "    timeouts: { idle: 300ms }\n")).await;
    let (mut client, driver) = h2_client(p.addr).await;
    let (parts, _, _) = get_h2(&mut client, "/").await;
    assert_eq!(parts.status, 200);
    // The connection ends (GOAWAY, then close) once nothing has been in flight for `idle`.
    tokio::time::timeout(Duration::from_secs(10), driver)
        .await
        .expect("the idle HTTP/2 connection stayed open")
        .unwrap();
}

#[tokio::test]
async fn shutdown_finishes_streams_in_flight_then_closes() {
    let release = Arc::new(Notify::new());
    let held = held_backend(release.clone()).await;
    let p = proxy(&single(&[held.addr], "")).await;
    let (mut client, driver) = h2_client(p.addr).await;
    let request = tokio::spawn(async move { get_h2(&mut client, "/held").await });
    let hits = held.hits.clone();
    assert!(eventually(Duration::from_secs(5), || hits.load(Ordering::SeqCst) == 1).await);

    let proxy = p.proxy.clone();
    let shutdown = tokio::spawn(async move { proxy.shutdown(Duration::from_secs(10)).await });
    // shutdown has begun once the listener refuses new connections
    let addr = p.addr;
    assert!(
        eventually(Duration::from_secs(5), || std::net::TcpStream::connect(
            addr
        )
        .is_err())
        .await,
        "still accepting after shutdown began"
    );
    assert!(
        !shutdown.is_finished(),
        "shutdown returned with a stream in flight"
    );
    release.notify_one();
    let (parts, body, _) = tokio::time::timeout(Duration::from_secs(5), request)
        .await
        .expect("the stream in flight was not finished")
        .unwrap();
    assert_eq!(parts.status, 200);
    assert_eq!(body, "finished");
    tokio::time::timeout(Duration::from_secs(5), driver)
        .await
        .expect("the connection stayed open after shutdown")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown did not return")
        .unwrap();
}

#[tokio::test]
async fn a_request_body_is_streamed_to_the_upstream() {
    // A body of unknown length (no content-length) is not held: the upstream sees the
    // first part before the client has sent the rest.
    let (seen, mut first) = mpsc::unbounded_channel::<Bytes>();
    let b = backend("stream", move |req, _| {
        let seen = seen.clone();
        async move {
            let mut body = req.into_body();
            let mut all = Vec::new();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    let _ = seen.send(data.clone());
                    all.extend_from_slice(&data);
                }
            }
            Response::new(Full::new(Bytes::from(all)))
        }
    })
    .await;
    let p = proxy(&single(&[b.addr], "")).await;
    let (client, _driver) = h2_client(p.addr).await;
    let request = Request::post("http://a.example/up").body(()).unwrap();
    let (response, mut stream) = client
        .ready()
        .await
        .unwrap()
        .send_request(request, false)
        .unwrap();
    stream.send_data(Bytes::from("first "), false).unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), first.recv())
        .await
        .expect("the upstream did not see the first part")
        .unwrap();
    assert_eq!(got, "first ");
    stream.send_data(Bytes::from("second"), true).unwrap();
    let (parts, mut body) = response.await.unwrap().into_parts();
    assert_eq!(parts.status, 200);
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        data.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(data, b"first second");
}
