//! shoal's own HTTP/1.1 server loop: keep-alive and pipelining, HTTP/1.0 clients, bodies
//! re-framed for the client, request bodies that stream, `Expect: 100-continue`, clients
//! that leave.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use common::*;

/// A backend answering the request's path, then its body.
async fn path_backend() -> Backend {
    backend("paths", |req, _| async move {
        let path = req.uri().path().to_string();
        let expect = req.headers().get("expect").cloned();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let mut text = path.into_bytes();
        text.extend_from_slice(&body);
        let mut response = Response::new(Full::new(Bytes::from(text)));
        if let Some(expect) = expect {
            response.headers_mut().insert("x-upstream-expect", expect);
        }
        response
    })
    .await
}

/// Writes `input`, reads until the proxy closes the connection (failing after 10 s).
async fn exchange(addr: SocketAddr, input: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(input).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("the proxy did not close the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// The positions of `needles` in `text`, which must all be there, in this order.
fn in_order(text: &str, needles: &[&str]) {
    let mut from = 0;
    for needle in needles {
        let at = text[from..]
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing after byte {from} of:\n{text}"));
        from += at + needle.len();
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let b = path_backend().await;
    let p = proxy(&single(&[b.addr], "")).await;
    let text = exchange(
        p.addr,
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n\
          POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody\
          GET /three HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    in_order(
        &text,
        &[
            "HTTP/1.1 200",
            "\r\n\r\n/one",
            "HTTP/1.1 200",
            "\r\n\r\n/twobody",
            "HTTP/1.1 200",
            "connection: close",
            "\r\n\r\n/three",
        ],
    );
    assert_eq!(text.matches("HTTP/1.1 200").count(), 3, "{text}");
    assert_eq!(text.matches("date: ").count(), 3, "{text}");
}

#[tokio::test]
async fn http10_clients_keep_the_connection_only_when_they_ask() {
    let b = path_backend().await;
    let p = proxy(&single(&[b.addr], "")).await;
    let text = exchange(
        p.addr,
        b"GET /kept HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /last HTTP/1.0\r\n\r\n",
    )
    .await;
    in_order(
        &text,
        &[
            "connection: keep-alive",
            "\r\n\r\n/kept",
            "connection: close",
            "\r\n\r\n/last",
        ],
    );
}

/// A higher HTTP/1 minor version is served as HTTP/1.1 (RFC 9112 §2.3, as nginx does); a
/// request line in another form is still a 400.
#[tokio::test]
async fn a_higher_http1_minor_version_is_served_as_http11() {
    let b = path_backend().await;
    let p = proxy(&single(&[b.addr], "")).await;
    let text = exchange(
        p.addr,
        b"GET /two HTTP/1.2\r\nHost: a\r\n\r\nGET /nine HTTP/1.9\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    in_order(
        &text,
        &[
            "HTTP/1.1 200",
            "\r\n\r\n/two",
            "HTTP/1.1 200",
            "\r\n\r\n/nine",
        ],
    );
    for line in [
        &b"GET / HTTP/2.0"[..],
        b"GET / HTTP/1.x",
        b"GET / HTTP/1.12",
    ] {
        let mut request = line.to_vec();
        request.extend_from_slice(b"\r\nHost: a\r\n\r\n");
        let text = exchange(p.addr, &request).await;
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    }
}

/// An upstream that answers every request on a connection with a chunked body, "hello"
/// then " world".
async fn chunked_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                                       5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn bodies_of_unknown_length_are_chunked_or_close_delimited() {
    let up = chunked_upstream().await;
    let p = proxy(&single(&[up], "")).await;
    let text = exchange(
        p.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        text.matches("transfer-encoding: chunked\r\n").count(),
        2,
        "{text}"
    );
    assert_eq!(text.matches("hello\r\n").count(), 2, "{text}");
    assert!(text.ends_with("0\r\n\r\n"), "{text}");
    // hyper's client reads the chunks back as the body
    assert_eq!(get(p.addr, "/").await.text(), "hello world");

    // HTTP/1.0 has no chunked coding: the body ends where the connection does
    let text = exchange(p.addr, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").await;
    assert!(!text.contains("transfer-encoding"), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nhello world"), "{text}");
}

#[tokio::test]
async fn streamed_bodies_keep_the_connection_for_the_next_request() {
    let b = path_backend().await;
    let p = proxy(&single(&[b.addr], "")).await;
    // A chunked request body streams; the request after it is still answered.
    let text = exchange(
        p.addr,
        b"GET /plain HTTP/1.1\r\nHost: a\r\n\r\n\
          POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
          GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    in_order(
        &text,
        &["\r\n\r\n/plain", "\r\n\r\n/chunkedhello", "\r\n\r\n/after"],
    );
    // So does a body over the size read whole.
    let mut big = b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'x', 100_000));
    big.extend_from_slice(b"GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let text = exchange(p.addr, &big).await;
    in_order(&text, &["content-length: 100004", "/big", "\r\n\r\n/after"]);
}

/// An upstream that answers each request's head with `answer`, then breaks the connection
/// off: with a reset if `reset`, else with a close.
async fn breaking_upstream(answer: &'static [u8], reset: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(answer).await;
                if reset {
                    // Time for the answer to be passed on before the reset.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let _ = stream.set_zero_linger();
                }
            });
        }
    });
    up
}

#[tokio::test]
async fn an_upstream_body_cut_short_reaches_the_client_cut_short() {
    // Its length says so: what came is passed on, then the connection ends. It was dropped
    // whole when the upstream's end came right after its last bytes.
    let up = breaking_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial",
        false,
    )
    .await;
    let p = proxy(&single(&[up], "    retries: { attempts: 0 }\n")).await;
    for _ in 0..20 {
        let text = exchange(p.addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
        in_order(
            &text,
            &["HTTP/1.1 200", "content-length: 100", "\r\n\r\npartial"],
        );
    }
    // To an HTTP/1.0 client the connection's end is the body's: a reset, not a close that
    // would make it look complete.
    let up = breaking_upstream(b"HTTP/1.1 200 OK\r\n\r\npartial", true).await;
    let p = proxy(&single(&[up], "    retries: { attempts: 0 }\n")).await;
    let mut stream = TcpStream::connect(p.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(error) => return Err(error),
            }
        }
    })
    .await
    .expect("the connection did not end");
    let kind = end.map_err(|error| error.kind());
    assert_eq!(
        kind,
        Err(std::io::ErrorKind::ConnectionReset),
        "{}",
        String::from_utf8_lossy(&seen)
    );
}

/// An upstream that answers each connection's first request as soon as its head is in,
/// like nginx's `return`, closing the connection as it does when it will not read the body,
/// then reads on to the end of the connection.
async fn early_answering_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let answer =
                    b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nearly";
                if stream.write_all(answer).await.is_err() || stream.shutdown().await.is_err() {
                    return;
                }
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    up
}

#[tokio::test]
async fn a_body_answered_before_its_end_is_finished_and_the_connection_kept() {
    let mut chunked =
        b"POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..30 {
        chunked.extend_from_slice(b"2710\r\n");
        chunked.extend(std::iter::repeat_n(b'x', 10_000));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let mut big = b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 300000\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'x', 300_000));
    for mut input in [chunked, big] {
        // An upstream of its own for each: it answers one request a connection.
        let p = proxy(&single(&[early_answering_upstream().await], "")).await;
        input.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let text = exchange(p.addr, &input).await;
        assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
        assert_eq!(text.matches("connection: close").count(), 1, "{text}");
    }
}

#[tokio::test]
async fn an_uploader_that_pauses_is_still_served() {
    // After a streamed body the connection reads with room for the next one; a pause of
    // over 100 ms gives that room back while it waits. Either way the next request counts.
    let b = path_backend().await;
    let p = proxy(&single(&[b.addr], "")).await;
    let mut stream = TcpStream::connect(p.addr).await.unwrap();
    let mut big = b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 70000\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'x', 70_000));
    stream.write_all(&big).await.unwrap();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 65536];
    while !String::from_utf8_lossy(&seen).ends_with('x') || seen.len() < 70_000 {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("no answer")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    // The pause is what this test is about: the connection waits through it either way.
    tokio::time::sleep(Duration::from_millis(250)).await;
    stream
        .write_all(b"GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("the proxy did not close the connection")
        .unwrap();
    let text = String::from_utf8_lossy(&rest);
    in_order(&text, &["HTTP/1.1 200", "\r\n\r\n/after"]);
}

#[tokio::test]
async fn after_a_streamed_body_or_a_refused_upgrade_bad_and_slow_heads_get_shoals_answers() {
    // hyper's server used to take the connection over after either: a malformed head then
    // got its bare 400, and a slow one was closed without a 408.
    let b = path_backend().await;
    let p = proxy(&single(&[b.addr], "    timeouts: { header_read: 300ms }\n")).await;
    let chunked =
        &b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"[..];
    let mut big = b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 70000\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'x', 70_000));
    let refused =
        &b"GET /u HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"[..];
    for first in [chunked, &big, refused] {
        let text = exchange(p.addr, &[first, b"GARBAGE\r\n\r\n"].concat()).await;
        in_order(
            &text,
            &["HTTP/1.1 200", "HTTP/1.1 400", "x-shoal-error: bad_request"],
        );
        let text = exchange(p.addr, &[first, b"GET / HTTP/1.1\r\nHost: a\r\n"].concat()).await;
        in_order(
            &text,
            &[
                "HTTP/1.1 200",
                "HTTP/1.1 408",
                "x-shoal-error: header_timeout",
            ],
        );
    }
}

#[tokio::test]
async fn a_malformed_chunk_is_400_and_closes_the_connection() {
    let b = path_backend().await;
    let p = proxy(&single(&[b.addr], "")).await;
    let text = exchange(
        p.addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\nzz\r\n\
          GET /after HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    in_order(
        &text,
        &[
            "HTTP/1.1 400",
            "x-shoal-error: bad_request",
            "connection: close",
        ],
    );
    assert!(!text.contains("/after"), "{text}");
}

#[tokio::test]
async fn expect_100_continue_is_answered_once_the_body_is_wanted() {
    let b = path_backend().await;
    let p = proxy(&single(&[b.addr], "")).await;
    for (head, body, answer) in [
        (
            &b"POST /small HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"[..],
            &b"hello"[..],
            "/smallhello",
        ),
        (
            b"POST /chunked HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
            "/chunkedhello",
        ),
    ] {
        let mut stream = TcpStream::connect(p.addr).await.unwrap();
        stream.write_all(head).await.unwrap();
        // The client sends nothing more until it is told to.
        let mut interim = [0u8; 25];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut interim))
            .await
            .expect("no 100 Continue")
            .unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        stream.write_all(body).await.unwrap();
        stream
            .write_all(b"GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
            .await
            .expect("the proxy did not close the connection")
            .unwrap();
        let text = String::from_utf8_lossy(&out);
        in_order(&text, &["HTTP/1.1 200", answer, "HTTP/1.1 200", "/after"]);
        assert!(!text.contains("100 Continue"), "one interim answer: {text}");
        // shoal answered the expectation: the upstream is not asked to answer it again.
        assert!(!text.contains("x-upstream-expect"), "{text}");
    }
}

#[tokio::test]
async fn a_request_refused_before_its_body_is_wanted_gets_no_100_continue() {
    let b = path_backend().await;
    let yaml = format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    routes:\n      - {{ match: {{ host: a }}, service: svc }}\nservices:\n  svc:\n    upstreams: {{ static: [\"{}\"] }}\n",
        b.addr
    );
    let p = proxy(&yaml).await;
    // The body never comes: the client waits for the interim answer, and gets the final.
    let text = exchange(
        p.addr,
        b"POST / HTTP/1.1\r\nHost: elsewhere\r\nExpect: 100-continue\r\nContent-Length: 100000\r\n\r\n",
    )
    .await;
    in_order(
        &text,
        &[
            "HTTP/1.1 404",
            "x-shoal-error: no_route",
            "connection: close",
        ],
    );
    assert!(!text.contains("100 Continue"), "{text}");
}

#[tokio::test]
async fn a_closing_connection_drains_what_the_client_still_sends() {
    // Closing a socket with unread input sends RST instead of FIN, and the RST discards
    // what the proxy's socket has not sent yet: the proxy shuts its side and drains first.
    let b = backend("large", |req, _| async move {
        let _ = req.into_body().collect().await;
        Response::new(Full::new(Bytes::from(vec![b'y'; LARGE])))
    })
    .await;
    let p = proxy(&single(&[b.addr], "")).await;
    // Without a body, and after one that streamed
    for (server, head) in [
        ("bodiless", &b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"[..]),
        (
            "chunked",
            b"POST / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n\
              2\r\nhi\r\n0\r\n\r\n",
        ),
    ] {
        let mut input = head.to_vec();
        input.extend(std::iter::repeat_n(b'x', 200_000));
        large_answer_then_close(p.addr, input, server).await;
    }
}

/// The response body of [`large_answer_then_close`].
const LARGE: usize = 4 << 20;

/// Sends `input`, then reads a response with a body of [`LARGE`] bytes and the end of
/// the connection, through a receive buffer small enough that much of the response is
/// still in the proxy's socket when it closes.
async fn large_answer_then_close(proxy: SocketAddr, input: Vec<u8>, server: &str) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let stream = socket.connect(proxy).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        write.write_all(&input).await?;
        write.shutdown().await
    });
    let mut out = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), read.read_to_end(&mut out))
        .await
        .expect("the proxy did not close the connection");
    let head_end = out.windows(4).position(|w| w == b"\r\n\r\n");
    let head = String::from_utf8_lossy(&out[..head_end.unwrap_or(out.len())]);
    assert!(
        ended.is_ok(),
        "{server} server: {ended:?} after {} bytes:\n{head}",
        out.len()
    );
    in_order(&head, &["HTTP/1.1 200", "connection: close"]);
    assert_eq!(out.len() - head.len() - 4, LARGE, "{server} server: {head}");
    let written = writer.await.unwrap();
    assert!(
        written.is_ok(),
        "{server} server refused the input: {written:?}"
    );
}

#[tokio::test]
async fn a_small_body_sent_after_its_head_is_waited_for() {
    let b = path_backend().await;
    let p = proxy(&single(&[b.addr], "")).await;
    let mut stream = TcpStream::connect(p.addr).await.unwrap();
    stream
        .write_all(
            b"POST /late HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 6\r\n\r\nfir",
        )
        .await
        .unwrap();
    stream.flush().await.unwrap();
    // Whenever the rest arrives, the request is the same; arriving later exercises the wait.
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(b"st!").await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut out))
        .await
        .expect("no answer")
        .unwrap();
    assert!(out.ends_with("\r\n\r\n/latefirst!"), "{out}");
}

#[tokio::test]
async fn a_client_that_leaves_takes_its_request_along() {
    let (b, mut gone) = stuck_backend().await;
    let p = proxy(&single(&[b.addr], "")).await;
    let mut stream = TcpStream::connect(p.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let hits = b.hits.clone();
    assert!(
        eventually(Duration::from_secs(5), || hits
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1)
        .await
    );
    drop(stream);
    tokio::time::timeout(Duration::from_secs(5), gone.recv())
        .await
        .expect("the upstream request outlived its client");
}

#[tokio::test]
async fn a_client_that_leaves_mid_body_releases_the_upstream() {
    // The upstream sends a head and one chunk, then nothing; it reports when the proxy
    // closes its connection.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let (closed, mut gone) = mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n";
        stream.write_all(head).await.unwrap();
        // read until the proxy closes: 0 bytes or an error
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        let _ = closed.send(());
    });
    let p = proxy(&single(&[up], "")).await;
    let mut stream = TcpStream::connect(p.addr).await.unwrap();
    stream
        .write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("first") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("no body")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    drop(stream);
    tokio::time::timeout(Duration::from_secs(5), gone.recv())
        .await
        .expect("the upstream connection outlived the client");
}

#[tokio::test]
async fn a_client_that_sends_its_whole_body_before_reading_is_answered() {
    let (up, read) = full_duplex_upstream(SENT_BEFORE_READING).await;
    let p = proxy(&single(&[up], "")).await;
    let stream = TcpStream::connect(p.addr).await.unwrap();
    send_whole_body_then_read(stream, read).await;
}

/// An absolute-form target with an empty path goes upstream in origin form with `/` for the
/// path (RFC 9112 §3.2.1), its query kept.
#[tokio::test]
async fn an_absolute_target_without_a_path_goes_up_as_slash() {
    let b = backend("target", |req, _| async move {
        Response::new(Full::new(Bytes::from(req.uri().to_string())))
    })
    .await;
    let p = proxy(&single(&[b.addr], "")).await;
    for (target, seen) in [
        ("http://a?x=1", "/?x=1"),
        ("http://a", "/"),
        ("http://a/p?q", "/p?q"),
    ] {
        let text = raw(
            p.addr,
            format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        assert!(text.starts_with("HTTP/1.1 200"), "{target}: {text}");
        assert!(text.ends_with(seen), "{target}: {text}");
    }
}
