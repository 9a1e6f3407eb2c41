//! Upgrade pass-through: the 101 goes back to the client and the upgraded connection is
//! spliced both ways.

mod common;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use h2::client::SendRequest;
use http::Response;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use common::*;

/// The requests to service `svc` counted with status `code`.
fn requests_answered(p: &TestProxy, code: &str) -> f64 {
    let labels = [("service", "svc"), ("code", code)];
    metric(&p.registry, "shoal_http_requests_total", &labels)
}

/// A WebSocket server echoing text messages.
async fn websocket_echo() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() && ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    upstream
}

#[tokio::test]
async fn websocket_passes_through() {
    let p = proxy(&single(&[websocket_echo().await], "")).await;
    let stream = TcpStream::connect(p.addr).await.unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async("ws://example.com/chat", stream)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    for text in ["hello", "through", "shoal"] {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed, Message::text(text));
    }
    ws.close(None).await.unwrap();
    assert_eq!(requests_answered(&p, "101"), 1.0);
}

/// A backend that answers an Upgrade to `echo` with a 101 and echoes the tunnel's bytes.
async fn echo_upgrade_backend() -> Backend {
    backend("echo", |mut req, _name| async move {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        });
        Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(Full::default())
            .unwrap()
    })
    .await
}

#[tokio::test]
async fn raw_upgrade_is_spliced_both_ways() {
    let up = echo_upgrade_backend().await;
    let p = proxy(&single(&[up.addr], "")).await;
    // Bytes sent before the 101 (a client that does not wait) are the tunnel's first.
    let (mut stream, head) = ask_for_echo(p.addr, b"early").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert_eq!(through_tunnel(&mut stream, b"", 5).await, b"early");
    assert_eq!(through_tunnel(&mut stream, b"ping", 4).await, b"ping");
}

/// Connects and asks for an Upgrade to `echo`, sending `early` right behind the request;
/// returns the connection and the answer's head, lower-cased (empty if the connection
/// closed first).
async fn ask_for_echo(addr: std::net::SocketAddr, early: &[u8]) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n";
    // A connection over the limit may be closed before the request is all written.
    let _ = stream.write_all(&[&request[..], early].concat()).await;
    let read = tokio::time::timeout(Duration::from_secs(5), read_head(&mut stream));
    let head = read.await.expect("no answer nor close").unwrap_or_default();
    (stream, String::from_utf8_lossy(&head).to_ascii_lowercase())
}

/// Writes `out` into a tunnel, then reads `len` bytes from it.
async fn through_tunnel(stream: &mut TcpStream, out: &[u8], len: usize) -> Vec<u8> {
    stream.write_all(out).await.unwrap();
    let mut buf = vec![0u8; len];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf))
        .await
        .expect("the tunnel stalled")
        .expect("the tunnel broke");
    buf
}

/// Reads a message head byte by byte, so that nothing after it is read.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await?;
        head.push(byte[0]);
    }
    Ok(head)
}

/// An upstream that answers CONNECT with 200 and then echoes the tunnel's bytes; it sends
/// the request line it got as the tunnel's first bytes. Its 200 carries a Content-Length,
/// which a client must ignore there (RFC 9110 §9.3.6) and the proxy must not pass on. The receiver hears of each tunnel
/// that has ended (the proxy closed it, or half-closed it and the echo was done). A CONNECT
/// to `refused:443` gets a 403 with a body instead, and no tunnel; other methods a 200.
async fn connect_upstream() -> (std::net::SocketAddr, mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (ended, ends) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let ended = ended.clone();
            tokio::spawn(async move {
                let Ok(head) = read_head(&mut stream).await else {
                    return;
                };
                let line = head
                    .split(|&b| b == b'\r')
                    .next()
                    .unwrap_or_default()
                    .to_vec();
                let plain: &[u8] = if line.starts_with(b"CONNECT refused:443 ") {
                    b"HTTP/1.1 403 Forbidden\r\ncontent-length: 3\r\n\r\nno\n"
                } else if !line.starts_with(b"CONNECT ") {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"
                } else {
                    b""
                };
                if !plain.is_empty() {
                    let _ = stream.write_all(plain).await;
                    return;
                }
                let mut answer =
                    b"HTTP/1.1 200 Connection Established\r\ncontent-length: 4\r\n\r\n".to_vec();
                answer.extend_from_slice(&line);
                answer.push(b'\n');
                if stream.write_all(&answer).await.is_err() {
                    return;
                }
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = ended.send(());
            });
        }
    });
    (address, ends)
}

#[tokio::test]
async fn connect_opens_a_tunnel_through_the_upstream() {
    let (upstream, _ends) = connect_upstream().await;
    let p = proxy(&single(&[upstream], "")).await;
    let mut stream = TcpStream::connect(p.addr).await.unwrap();
    stream
        .write_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut stream).await.unwrap();
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    // a tunnel's answer has no body, so no framing either
    assert!(!head.contains("content-length"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    let line = b"CONNECT example.com:443 HTTP/1.1\n";
    let got = through_tunnel(&mut stream, b"", line.len()).await;
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(line));
    assert_eq!(through_tunnel(&mut stream, b"ping", 4).await, b"ping");

    // A refusal is an answer like any other, and the connection goes on (after it: what
    // follows a CONNECT is the tunnel's if it opens).
    let mut stream = TcpStream::connect(p.addr).await.unwrap();
    stream
        .write_all(b"CONNECT refused:443 HTTP/1.1\r\nHost: refused:443\r\n\r\n")
        .await
        .unwrap();
    let head = String::from_utf8(read_head(&mut stream).await.unwrap()).unwrap();
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let mut body = [0u8; 3];
    stream.read_exact(&mut body).await.unwrap();
    assert_eq!(&body, b"no\n");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut out))
        .await
        .expect("no answer")
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[tokio::test]
async fn connect_over_http2_tunnels_through_its_stream() {
    let (upstream, mut ends) = connect_upstream().await;
    let p = proxy(&single(&[upstream], "")).await;
    let stream = TcpStream::connect(p.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    // A CONNECT to `target`, answered.
    async fn open(
        client: &SendRequest<Bytes>,
        target: &str,
    ) -> (http::Response<h2::RecvStream>, h2::SendStream<Bytes>) {
        let request = http::Request::connect(target).body(()).unwrap();
        let (response, to_tunnel) = client
            .clone()
            .ready()
            .await
            .unwrap()
            .send_request(request, false)
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .expect("no answer")
            .unwrap();
        (response, to_tunnel)
    }
    let (response, mut to_tunnel) = open(&client, "example.com:443").await;
    assert_eq!(response.status(), 200);
    assert!(!response.headers().contains_key("content-length"));
    assert_eq!(in_flight(&p), (1, 1), "an open tunnel is in flight");
    let mut from_tunnel = response.into_body();
    // What the tunnel brings, until `len` bytes or its end.
    async fn read(from_tunnel: &mut h2::RecvStream, len: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < len {
            let next = tokio::time::timeout(Duration::from_secs(5), from_tunnel.data()).await;
            let Some(data) = next.expect("the tunnel stalled") else {
                break;
            };
            let data = data.unwrap();
            from_tunnel
                .flow_control()
                .release_capacity(data.len())
                .unwrap();
            got.extend_from_slice(&data);
        }
        got
    }
    let line = b"CONNECT example.com:443 HTTP/1.1\n";
    assert_eq!(
        String::from_utf8_lossy(&read(&mut from_tunnel, line.len()).await),
        String::from_utf8_lossy(line)
    );
    to_tunnel
        .send_data(Bytes::from_static(b"ping"), false)
        .unwrap();
    assert_eq!(read(&mut from_tunnel, 4).await, b"ping");
    // Ending the stream half-closes the upstream connection, whose end ends the stream back.
    to_tunnel
        .send_data(Bytes::from_static(b"last"), true)
        .unwrap();
    assert_eq!(read(&mut from_tunnel, usize::MAX).await, b"last");
    assert!(from_tunnel.is_end_stream());
    let wait = Duration::from_secs(5);
    tokio::time::timeout(wait, ends.recv())
        .await
        .expect("the first tunnel is still open");
    assert!(eventually(wait, || in_flight(&p) == (0, 0)).await);

    // A client that resets the stream closes the upstream connection.
    let (_, mut to_tunnel) = open(&client, "example.com:443").await;
    to_tunnel.send_reset(h2::Reason::CANCEL);
    tokio::time::timeout(wait, ends.recv())
        .await
        .expect("the reset tunnel is still open");

    // A refusal is an answer like any other: its body, and the stream's end.
    let (response, _) = open(&client, "refused:443").await;
    assert_eq!(response.status(), 403);
    let mut body = response.into_body();
    assert_eq!(read(&mut body, usize::MAX).await, b"no\n");
    assert!(body.is_end_stream());
}

#[tokio::test]
async fn websocket_over_http2_reaches_an_http1_upstream() {
    let p = proxy(&single(&[websocket_echo().await], "")).await;
    let stream = TcpStream::connect(p.addr).await.unwrap();
    let (client, mut connection) = h2::client::handshake(stream).await.unwrap();
    let mut ping = connection.ping_pong().unwrap();
    tokio::spawn(connection);
    // The PONG comes after the proxy's SETTINGS, which must offer extended CONNECT.
    ping.ping(h2::Ping::opaque()).await.unwrap();
    let mut client = client.ready().await.unwrap();
    assert!(client.is_extended_connect_protocol_enabled());
    // RFC 8441: CONNECT with :protocol, no Sec-WebSocket-Key; the answer is a 200
    let mut request = http::Request::connect("http://a.example/chat")
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap();
    request
        .extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    let (response, mut to_socket) = client.send_request(request, false).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("no answer")
        .unwrap();
    assert_eq!(response.status(), 200, "{response:?}");
    for hop in ["upgrade", "connection", "sec-websocket-accept"] {
        assert!(!response.headers().contains_key(hop), "{response:?}");
    }
    let mut from_socket = response.into_body();
    // A masked text frame "hi" (RFC 6455 §5.2), echoed back unmasked.
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | 2];
    frame.extend_from_slice(&mask);
    frame.extend(b"hi".iter().zip(mask).map(|(b, m)| b ^ m));
    to_socket.send_data(Bytes::from(frame), false).unwrap();
    let mut echoed = Vec::new();
    while echoed.len() < 4 {
        let data = tokio::time::timeout(Duration::from_secs(5), from_socket.data())
            .await
            .expect("no echo")
            .expect("the stream ended")
            .unwrap();
        from_socket
            .flow_control()
            .release_capacity(data.len())
            .unwrap();
        echoed.extend_from_slice(&data);
    }
    assert_eq!(echoed, [0x81, 2, b'h', b'i']);
    // counted as what the client got
    assert_eq!(requests_answered(&p, "200"), 1.0);
}

#[tokio::test]
async fn an_h2c_upgrade_is_served_as_plain_http1() {
    let a = echo_backend("a").await;
    let p = proxy(&single(&[a.addr], "")).await;
    // First on a fresh connection, then after an Upgrade the upstream refused.
    let h2c = "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n";
    let refused = "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
    for prefix in ["", refused] {
        let request =
            format!("{prefix}{h2c}GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let text = raw(p.addr, request.as_bytes(), Duration::from_secs(5)).await;
        assert!(!text.contains(" 101 "), "{text}");
        let answers = text.matches("HTTP/1.1 200").count();
        assert_eq!(answers, if prefix.is_empty() { 2 } else { 3 }, "{text}");
        let upgrade_sent = text
            .lines()
            .filter(|l| l.starts_with("x-echo:"))
            .any(|l| l.contains("h2c") || l.contains("http2-settings"));
        assert!(!upgrade_sent, "{text}");
    }
}

#[tokio::test]
async fn a_tunnel_keeps_its_connection_slot_and_counts_in_flight() {
    let up = echo_upgrade_backend().await;
    let p = proxy(&single(&[up.addr], "    limits: { max_connections: 1 }\n")).await;
    let (mut stream, head) = ask_for_echo(p.addr, b"").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert_eq!(through_tunnel(&mut stream, b"ping", 4).await, b"ping");
    // While the tunnel is open, a second connection is over the limit: closed unanswered.
    let (_, head) = ask_for_echo(p.addr, b"").await;
    assert_eq!(head, "", "a second connection was served");
    assert_eq!(through_tunnel(&mut stream, b"pong", 4).await, b"pong");
    // An open tunnel is a request in flight (a WebSocket keeps a service from idling to zero,
    // and a draining replica waits for it), until it ends.
    assert_eq!(in_flight(&p), (1, 1));
    drop(stream);
    assert!(eventually(Duration::from_secs(5), || in_flight(&p) == (0, 0)).await);
}

/// Requests in flight on the proxy's one service, and on its first endpoint.
fn in_flight(p: &TestProxy) -> (u64, u64) {
    let status = &p.proxy.status()[0];
    (status.load.in_flight, status.endpoints[0].in_flight)
}
