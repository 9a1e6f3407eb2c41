//! shoal's HTTP/2 server: many streams on one connection, bodies both ways through flow
//! control, trailers, a stream the client resets, idle connections, shutdown.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{Reason, SendStream};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Barrier, Notify};

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

/// Sends `request`, with a body to follow unless `end`: the response to come, and the
/// request's stream (to send the body on, or to reset it).
async fn start(
    client: &SendRequest<Bytes>,
    request: Request<()>,
    end: bool,
) -> (ResponseFuture, SendStream<Bytes>) {
    client
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(request, end)
        .unwrap()
}

/// Sends a GET for `path`: the response to come, and the request's stream (to reset it).
async fn start_get(client: &SendRequest<Bytes>, path: &str) -> (ResponseFuture, SendStream<Bytes>) {
    let request = Request::get(format!("http://a.example{path}"))
        .body(())
        .unwrap();
    start(client, request, true).await
}

/// Sends a GET for `path` and reads the response whole: status, headers, body, trailers.
async fn get_h2(
    client: &mut SendRequest<Bytes>,
    path: &str,
) -> (http::response::Parts, Bytes, Option<http::HeaderMap>) {
    let (response, _) = start_get(client, path).await;
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
    // The backend answers only once all 40 requests are with it at the same time, so streams
    // served one after another would never be answered.
    let all_in = Arc::new(Barrier::new(40));
    let b = backend("paths", move |req, _| {
        let all_in = all_in.clone();
        async move {
            all_in.wait().await;
            Response::new(Full::new(Bytes::from(req.uri().path().to_string())))
        }
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
        let (i, (parts, body, _)) = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .expect("the streams were not served concurrently")
            .unwrap();
        assert_eq!(parts.status, 200);
        assert_eq!(body, format!("/s{i}"));
        assert!(parts.headers.contains_key("date"), "{:?}", parts.headers);
        assert!(parts.headers.contains_key("x-request-id"));
        assert_eq!(
            parts.headers["content-length"],
            format!("/s{i}").len().to_string()
        );
    }
    assert_eq!(b.hits.load(Ordering::SeqCst), 40);
}

#[tokio::test]
async fn streams_built_in_finished_streams_boxes_get_their_own_answers() {
    // Rounds of concurrent streams on one connection, with a stream reset midway through
    // each: every stream after the first round runs in a box an earlier one handed back.
    let b = backend("paths", |req, _| async move {
        if req.uri().path().starts_with("/slow") {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Response::new(Full::new(Bytes::from(req.uri().path().to_string())))
    })
    .await;
    let p = proxy(&single(&[b.addr], "")).await;
    let (client, _driver) = h2_client(p.addr).await;
    for round in 0..6 {
        let (_slow, mut slow_stream) = start_get(&client, &format!("/slow{round}")).await;
        let requests: Vec<_> = (0..6)
            .map(|i| {
                let mut client = client.clone();
                tokio::spawn(async move { get_h2(&mut client, &format!("/r{round}s{i}")).await })
            })
            .collect();
        slow_stream.send_reset(Reason::CANCEL);
        for (i, request) in requests.into_iter().enumerate() {
            let (parts, body, _) = tokio::time::timeout(Duration::from_secs(10), request)
                .await
                .expect("a stream got no answer")
                .unwrap();
            assert_eq!(parts.status, 200);
            assert_eq!(body, format!("/r{round}s{i}"));
            assert_eq!(parts.headers["content-length"], body.len().to_string());
        }
    }
}

#[tokio::test]
async fn large_bodies_stream_both_ways_within_flow_control() {
    // More than shoal's window (1 MiB) and hyper's client's (2 MiB a stream), so both
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
async fn a_client_that_reads_nothing_holds_back_the_upstream() {
    // An endless upstream body to a client whose window (64 KiB) is never opened again: shoal
    // must stop reading the upstream once its send buffer and the sockets are full, rather
    // than queue the body for the client.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let written = Arc::new(AtomicUsize::new(0));
    let counter = written.clone();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        stream.write_all(head).await.unwrap();
        let mut chunk = b"10000\r\n".to_vec();
        chunk.extend_from_slice(&[b'x'; 0x10000]);
        chunk.extend_from_slice(b"\r\n");
        while stream.write_all(&chunk).await.is_ok() {
            counter.fetch_add(0x10000, Ordering::SeqCst);
        }
    });
    let p = proxy(&single(&[up], "")).await;
    let (client, _driver) = h2_client(p.addr).await;
    let (response, _) = start_get(&client, "/endless").await;
    let mut body = response.await.unwrap().into_body();
    // The upstream stalls: its count stays put for half a second.
    let mut last = usize::MAX;
    let mut stalled = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = written.load(Ordering::SeqCst);
        if now == last {
            stalled = true;
            break;
        }
        last = now;
    }
    assert!(stalled, "the upstream was read without end ({last} bytes)");
    assert!(
        last < 64 << 20,
        "{last} bytes read for a client that took none"
    );
    // Opening the window lets the body flow again.
    let mut taken = 0;
    while taken < 4 << 20 {
        let data = body.data().await.expect("the body ended").unwrap();
        body.flow_control().release_capacity(data.len()).unwrap();
        taken += data.len();
    }
    assert!(written.load(Ordering::SeqCst) > last);
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
    let answers = echo_backend("echo").await;
    // `/stuck/…` goes to the backend that never answers, the rest to one that does.
    let yaml = format!(
        "listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\", routes: [{{ match: {{ path_prefix: /stuck }}, service: stuck }}, {{ match: {{ path_prefix: / }}, service: echo }}] }}\n\
         services:\n  stuck:\n    upstreams: {{ static: [\"{}\"] }}\n  echo:\n    upstreams: {{ static: [\"{}\"] }}\n",
        b.addr, answers.addr
    );
    let p = proxy(&yaml).await;
    let (mut client, _driver) = h2_client(p.addr).await;
    let (_response, mut stream) = start_get(&client, "/stuck/1").await;
    let hits = b.hits.clone();
    assert!(eventually(Duration::from_secs(5), || hits.load(Ordering::SeqCst) == 1).await);
    stream.send_reset(Reason::CANCEL);
    tokio::time::timeout(Duration::from_secs(5), gone.recv())
        .await
        .expect("the upstream request outlived its stream");
    // Only that stream ended: the connection serves the next one.
    let (parts, body, _) = get_h2(&mut client, "/after").await;
    assert_eq!(parts.status, 200);
    assert_eq!(body, "echo");
}

#[tokio::test]
async fn a_connection_is_sent_away_only_when_idle() {
    let b = echo_backend("echo").await;
    let yaml = single(&[b.addr], "    timeouts: { idle: 300ms }\n").replace(
        "service: svc }",
        "routes: [{ match: { path_prefix: /svc }, service: svc }] }",
    );
    let p = proxy(&yaml).await;
    let (mut client, mut driver) = h2_client(p.addr).await;
    // A request every 50 ms for a second, three times the idle time: shoal's own 404s
    // (answered at once) and forwarded ones; the connection must stay.
    let started = std::time::Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(1) {
        let path = if sent % 2 == 0 { "/svc" } else { "/nowhere" };
        let (parts, _, _) = get_h2(&mut client, path).await;
        assert_eq!(parts.status, if sent % 2 == 0 { 200 } else { 404 });
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!driver.is_finished(), "a busy connection was closed");
    // Then nothing: GOAWAY, and the connection ends once h2's PING is answered.
    let ended = tokio::time::timeout(Duration::from_secs(10), &mut driver).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection stayed open");
    let refused = client.ready().await;
    assert!(refused.is_err(), "the connection still takes requests");
}

#[tokio::test]
async fn finished_bodies_get_no_content_length_and_failed_ones_a_reset() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    // One upstream connection per request (each answer closes it): a 204 that states a
    // length it must not (RFC 9110 §8.6), a 304, and a body that breaks off after 3 of its
    // 10 bytes.
    tokio::spawn(async move {
        for answer in [
            &b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"[..],
            &b"HTTP/1.1 304 Not Modified\r\netag: \"a\"\r\n\r\n"[..],
            &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"[..],
        ] {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            stream.write_all(answer).await.unwrap();
        }
    });
    let p = proxy(&single(&[up], "")).await;
    let (mut client, _driver) = h2_client(p.addr).await;
    for status in [204, 304] {
        let (parts, body, _) = get_h2(&mut client, "/").await;
        assert_eq!(parts.status, status);
        assert!(body.is_empty());
        assert!(
            !parts.headers.contains_key("content-length"),
            "{status}: {:?}",
            parts.headers
        );
    }
    let (response, _) = start_get(&client, "/broken").await;
    // The reset may come before the head has left (h2 drops a stream's queued frames when it
    // is reset) or after it.
    let failure = match response.await {
        Err(error) => Some(error),
        Ok(response) => {
            let mut body = response.into_body();
            let mut failure = None;
            while let Some(data) = body.data().await {
                if let Err(error) = data {
                    failure = Some(error);
                    break;
                }
            }
            failure
        }
    };
    let failure = failure.expect("a broken body ended as if complete");
    assert_eq!(failure.reason(), Some(Reason::INTERNAL_ERROR), "{failure}");
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
    let (response, mut stream) = start(&client, request, false).await;
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

/// Sends a POST to `authority` whose body waits for `100 Continue`: the response to come,
/// and the body's stream.
async fn start_expecting(
    client: &SendRequest<Bytes>,
    authority: &str,
) -> (ResponseFuture, SendStream<Bytes>) {
    let request = Request::post(format!("http://{authority}/up"))
        .header("expect", "100-continue")
        .body(())
        .unwrap();
    start(client, request, false).await
}

/// The next interim response to `response`, or `None` when the final one comes first.
async fn interim(response: &mut ResponseFuture) -> Option<http::StatusCode> {
    let next = std::future::poll_fn(|cx| response.poll_informational(cx));
    tokio::time::timeout(Duration::from_secs(10), next)
        .await
        .expect("neither an interim nor a final answer within 10 s")
        .map(|interim| interim.unwrap().status())
}

#[tokio::test]
async fn expect_100_continue_is_answered_once_the_body_is_wanted() {
    let b = echo_backend("echo").await;
    let p = proxy(&single(&[b.addr], "")).await;
    let (client, _driver) = h2_client(p.addr).await;
    let (mut response, mut body) = start_expecting(&client, "a.example").await;
    assert_eq!(
        interim(&mut response).await,
        Some(http::StatusCode::CONTINUE)
    );
    body.send_data(Bytes::from("hello"), true).unwrap();
    let (parts, mut answer) = response.await.unwrap().into_parts();
    assert_eq!(parts.status, 200);
    // shoal answered the expectation: the upstream is not asked to answer it again.
    let echoed = parts.headers["x-echo"].to_str().unwrap();
    assert!(!echoed.contains("\"expect\""), "{echoed}");
    let mut data = Vec::new();
    while let Some(chunk) = answer.data().await {
        data.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(data, b"hello");
}

#[tokio::test]
async fn a_request_refused_before_its_body_is_wanted_gets_no_100_continue() {
    let b = echo_backend("echo").await;
    let yaml = format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    routes:\n      - {{ match: {{ host: a }}, service: svc }}\nservices:\n  svc:\n    upstreams: {{ static: [\"{}\"] }}\n",
        b.addr
    );
    let p = proxy(&yaml).await;
    let (client, _driver) = h2_client(p.addr).await;
    let (mut response, _body) = start_expecting(&client, "elsewhere").await;
    assert_eq!(interim(&mut response).await, None);
    let parts = response.await.unwrap().into_parts().0;
    assert_eq!(parts.status, 404);
    assert_eq!(parts.headers["x-shoal-error"], "no_route");
}

/// A head far over a small `max_request_header_bytes` still gets shoal's own 431, with its
/// error header: the list size offered to clients has a floor, so the h2 crate's bare 431 is
/// left for heads past it.
#[tokio::test]
async fn a_head_far_over_a_small_limit_gets_shoals_431() {
    let b = echo_backend("echo").await;
    let p = proxy(&single(
        &[b.addr],
        "    limits: { max_request_header_bytes: 1Ki }\n",
    ))
    .await;
    let (client, _driver) = h2_client(p.addr).await;
    let big = Request::get("http://a.example/")
        .header("x-big", "a".repeat(4000))
        .body(())
        .unwrap();
    let (response, _) = start(&client, big, true).await;
    let (parts, _) = response.await.unwrap().into_parts();
    assert_eq!(parts.status, 431);
    assert_eq!(parts.headers["x-shoal-error"], "header_too_large");
}

#[tokio::test]
async fn malformed_fields_get_a_stream_error_and_a_head_too_many_fields_431() {
    let b = echo_backend("echo").await;
    let p = proxy(&single(&[b.addr], "")).await;
    let (client, _driver) = h2_client(p.addr).await;
    // RFC 9113 §8.2.1: whitespace at either end of a value; the connection goes on.
    let padded = Request::get("http://a.example/")
        .header("x-a", " v")
        .body(())
        .unwrap();
    let (response, _) = start(&client, padded, true).await;
    let error = response.await.expect_err("a padded value was taken");
    assert_eq!(error.reason(), Some(Reason::PROTOCOL_ERROR), "{error}");
    // As many fields as an HTTP/1 head may carry, then 431.
    let mut many = Request::get("http://a.example/");
    for i in 0..300 {
        many = many.header(format!("x-{i}"), "1");
    }
    let (response, _) = start(&client, many.body(()).unwrap(), true).await;
    let answer = response.await.unwrap();
    assert_eq!(answer.status(), 431);
    // Two equal lengths go upstream as one.
    let twice = Request::post("http://a.example/")
        .header("content-length", "2")
        .header("content-length", "2")
        .body(())
        .unwrap();
    let (response, mut body) = start(&client, twice, false).await;
    body.send_data(Bytes::from("ok"), true).unwrap();
    let (parts, _) = response.await.unwrap().into_parts();
    assert_eq!(parts.status, 200);
    let echoed = parts.headers["x-echo"].to_str().unwrap();
    assert!(echoed.contains("\"content-length\":[\"2\"]"), "{echoed}");
}

#[tokio::test]
async fn a_client_that_never_answers_is_closed_after_the_grace() {
    // A raw client: the preface and its SETTINGS, then silence. It never acknowledges
    // shoal's SETTINGS nor answers the PING that follows GOAWAY, so h2 alone would wait for
    // ever; shoal closes 5 s after going away.
    let b = echo_backend("echo").await;
    let p = proxy(&single(&[b.addr], "    timeouts: { idle: 200ms }\n")).await;
    let mut stream = TcpStream::connect(p.addr).await.unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut seen)).await;
    assert!(closed.is_ok(), "the silent client's connection stayed open");
    // A GOAWAY frame (type 7) went out before the close.
    let frames = frame_types(&seen);
    assert!(frames.contains(&7), "no GOAWAY among frames {frames:?}");
}

#[tokio::test]
async fn a_request_naming_no_host_gets_400() {
    // Raw HEADERS frames, since h2's client always sends :authority. Each block is
    // `:method: GET`, `:scheme: http`, `:path: /` from HPACK's static table; stream 3 adds
    // `host: a.example` (a literal with the static table's name).
    let b = echo_backend("echo").await;
    let p = proxy(&single(&[b.addr], "")).await;
    let mut stream = TcpStream::connect(p.addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0".to_vec();
    // END_STREAM | END_HEADERS
    out.extend_from_slice(b"\0\0\x03\x01\x05\0\0\0\x01\x82\x86\x84");
    out.extend_from_slice(b"\0\0\x0f\x01\x05\0\0\0\x03\x82\x86\x84\x0f\x17\x09a.example");
    stream.write_all(&out).await.unwrap();
    let mut statuses = Vec::new();
    let mut seen = Vec::new();
    while statuses.len() < 2 {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("no answer to both streams within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "connection closed after frames {:?}",
            frame_types(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
        statuses = header_blocks(&seen)
            .into_iter()
            .map(|(id, block)| (id, block[0]))
            .collect();
    }
    statuses.sort();
    // HPACK's static table: index 12 is `:status: 400`, 8 is `:status: 200`.
    assert_eq!(
        statuses,
        [(1, 0x8c), (3, 0x88)],
        "(stream, first byte of its block)"
    );
    assert_eq!(
        b.hits.load(Ordering::SeqCst),
        1,
        "only the request with a host went on"
    );
}

/// Each HEADERS frame in `bytes` (a server's output from its first frame) as its stream and
/// its header block.
fn header_blocks(mut bytes: &[u8]) -> Vec<(u32, Vec<u8>)> {
    let mut blocks = Vec::new();
    while bytes.len() >= 9 {
        let length =
            usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        if bytes.len() < 9 + length {
            break;
        }
        if bytes[3] == 1 {
            let id = u32::from_be_bytes([bytes[5] & 0x7f, bytes[6], bytes[7], bytes[8]]);
            blocks.push((id, bytes[9..9 + length].to_vec()));
        }
        bytes = &bytes[9 + length..];
    }
    blocks
}

/// The types of the HTTP/2 frames in `bytes`, a server's output from its first frame.
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let length =
            usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        types.push(bytes[3]);
        bytes = &bytes[(9 + length).min(bytes.len())..];
    }
    types
}

/// A backend answering with the request's target as it came.
async fn target_backend() -> Backend {
    backend("target", |req, _| async move {
        Response::new(Full::new(Bytes::from(req.uri().to_string())))
    })
    .await
}

/// RFC 9113 §8.3.1: `:path` is a path, or `*` for OPTIONS. Anything else is refused as the
/// same target is over HTTP/1, not forwarded as a GET's target.
#[tokio::test]
async fn a_path_that_is_no_path_is_400() {
    let b = target_backend().await;
    let p = proxy(&single(&[b.addr], "")).await;
    let (mut client, _driver) = h2_client(p.addr).await;
    let request = |method: http::Method, target: &str| {
        let uri = http::Uri::builder()
            .scheme("http")
            .authority("a.example")
            .path_and_query(target)
            .build()
            .unwrap();
        Request::builder().method(method).uri(uri).body(()).unwrap()
    };
    for target in ["?x=1", "*"] {
        let (response, _) = start(&client, request(http::Method::GET, target), true).await;
        let response = response.await.unwrap();
        assert_eq!(response.status(), 400, "{target}");
        assert_eq!(response.headers()["x-shoal-error"], "bad_request");
    }
    assert_eq!(b.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    let (response, _) = start(&client, request(http::Method::OPTIONS, "*"), true).await;
    let (parts, mut body) = response.await.unwrap().into_parts();
    assert_eq!(parts.status, 200);
    assert_eq!(body.data().await.unwrap().unwrap(), "*");
    let (parts, body, _) = get_h2(&mut client, "/ok?x=1").await;
    assert_eq!((parts.status.as_u16(), &body[..]), (200, &b"/ok?x=1"[..]));
}
