//! shoal's HTTP/2 server: the h2 crate's framing, HPACK and flow control, with every stream
//! of a connection served inside the connection's own task. hyper's server gave each stream
//! a task of its own, and the connection wrote each response as soon as that task had
//! queued it: about one write per response. Here the ready streams run first and the
//! connection then writes what they all queued with one write.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::ext::Protocol;
use h2::server::{Builder, SendResponse};
use h2::{Reason, RecvStream, SendStream};
use http::header::{
    InvalidHeaderValue, CONNECTION, CONTENT_LENGTH, DATE, SEC_WEBSOCKET_KEY, UPGRADE,
};
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body;
use hyper_util::rt::TokioIo;
use rand::Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, Sleep};

use crate::accept::stopped;
use crate::body::{ClientBody, RequestBody, ResponseBody};
use crate::date;
use crate::errors::OwnError;
use crate::forward::{self, Downstream, Opened, Tunnel};
use crate::headers;
use crate::preread::MAX_HEADERS;
use crate::route::ConnectionSettings;

/// Flow-control windows offered to clients, per stream and per connection: hyper's server
/// defaults, which shoal used before it had this server.
const WINDOW: u32 = 1024 * 1024;
/// Streams a client may have open at once (hyper's default); more are refused.
const MAX_STREAMS: u32 = 200;
/// Response bytes queued per stream before its body waits (hyper's default).
const MAX_SEND_BUFFER: usize = 400 * 1024;
/// Room for each read from a tunnel's upstream (one frame's worth).
const TUNNEL_READ: usize = 16 * 1024;
/// A response's last data up to this size is queued without waiting for window (one frame's
/// worth, the default SETTINGS_MAX_FRAME_SIZE).
const SMALL_LAST_PIECE: usize = 16 * 1024;
/// Boxes of finished streams a connection keeps for its next ones (see [`in_box`]), until it
/// closes: enough for a client's usual handful of concurrent streams, few enough that a
/// burst of them leaves at most about 23 KiB behind (h2's own buffers for a connection are
/// larger).
const SPARE_STREAMS: usize = 8;
/// After GOAWAY with no stream open, how long the client has to answer h2's PING (which
/// tells that no request of its is still on the way) before the connection is closed on it:
/// Envoy's default drain time between its two GOAWAYs.
const GOAWAY_GRACE: Duration = Duration::from_secs(5);
/// Streams shoal may reset for a client's errors before it ends the connection (hyper's
/// default; the h2 crate's guard against a client provoking resets without end).
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Serves HTTP/2 on `io`, which starts with the client's connection preface, until the
/// client leaves, or GOAWAY (on shutdown, or after `settings.idle` with no stream open) has
/// let the streams in flight finish.
pub(crate) async fn serve<S>(
    io: S,
    downstream: Arc<Downstream>,
    settings: &ConnectionSettings,
    shutdown: &watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut stop_watch = shutdown.clone();
    let stop = stopped(&mut stop_watch);
    tokio::pin!(stop);
    let handshake = builder(settings).handshake::<_, Bytes>(io);
    let mut connection = tokio::select! {
        () = &mut stop => return,
        handshake = tokio::time::timeout(settings.header_read, handshake) => match handshake {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => {
                tracing::debug!(%error, "HTTP/2 handshake failed");
                return;
            }
            Err(_elapsed) => {
                tracing::debug!("HTTP/2 handshake timed out");
                return;
            }
        },
    };

    let mut streams = FuturesUnordered::new();
    // The boxes of finished streams, for the next ones.
    let mut spare = Vec::new();
    // Since when no stream has been open (None while one is).
    let mut quiet_since = Some(Instant::now());
    let mut ending = Ending::Open;
    // As in [`crate::http1`]: one timer, moved on only when it fires early (or when GOAWAY
    // brings the end closer).
    let timer = tokio::time::sleep(settings.idle);
    tokio::pin!(timer);
    let ended = poll_fn(|cx| {
        if matches!(ending, Ending::Open) && stop.as_mut().poll(cx).is_ready() {
            ending = go_away(&mut connection, timer.as_mut());
        }
        loop {
            // The streams first, so that the connection's poll below writes what they all
            // queued in one go; then new streams, which run at once.
            while let Poll::Ready(Some(done)) = streams.poll_next_unpin(cx) {
                if spare.len() < SPARE_STREAMS {
                    spare.push(done);
                }
            }
            let mut accepted = false;
            loop {
                match connection.poll_accept(cx) {
                    Poll::Ready(Some(Ok((request, respond)))) => {
                        let downstream = downstream.clone();
                        let stream =
                            in_box(&mut spare, || serve_stream(downstream, request, respond));
                        streams.push(HandsBack(Some(stream)));
                        accepted = true;
                    }
                    Poll::Ready(Some(Err(error))) => return Poll::Ready(Err(error)),
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => break,
                }
            }
            if !accepted {
                break;
            }
            quiet_since = None;
        }
        if !streams.is_empty() {
            quiet_since = None;
            return Poll::Pending;
        }
        let since = *quiet_since.get_or_insert_with(Instant::now);
        // Config durations are at most a year, so the sums fit the clock.
        let due = match ending {
            Ending::Open => since + settings.idle,
            Ending::GoingAway(at) => at.max(since) + GOAWAY_GRACE,
        };
        if timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if due > now {
                timer.as_mut().reset(due);
                let _ = timer.as_mut().poll(cx);
            } else if matches!(ending, Ending::Open) {
                ending = go_away(&mut connection, timer.as_mut());
                // The connection has a frame to write, and the timer a new deadline.
                cx.waker().wake_by_ref();
            } else {
                // The client had its grace: the connection is dropped, which closes it
                // even if the client reads nothing more.
                return Poll::Ready(Ok(()));
            }
        }
        Poll::Pending
    })
    .await;
    if let Err(error) = ended {
        tracing::debug!(%error, "HTTP/2 connection ended with an error");
    }
}

/// How far a connection is on its way out.
#[derive(Clone, Copy)]
enum Ending {
    Open,
    /// GOAWAY went out at this time (shutdown, or idle for `idle`): the streams in flight
    /// finish, then h2 closes once the client has answered its PING, or shoal does
    /// [`GOAWAY_GRACE`] after the last stream.
    GoingAway(Instant),
}

/// Sends GOAWAY and arms `timer` for the end of its grace.
fn go_away<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut h2::server::Connection<S, Bytes>,
    timer: Pin<&mut Sleep>,
) -> Ending {
    connection.graceful_shutdown();
    let now = Instant::now();
    timer.reset(now + GOAWAY_GRACE);
    Ending::GoingAway(now)
}

fn builder(settings: &ConnectionSettings) -> Builder {
    let mut builder = Builder::new();
    builder
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_concurrent_streams(MAX_STREAMS)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        // WebSockets over HTTP/2 (RFC 8441), passed on as HTTP/1.1 Upgrades.
        .enable_connect_protocol()
        // HPACK's accounting adds 32 bytes a field to the bytes of its name and value; twice
        // the HTTP/1 limit leaves room for that, and the service checks its own limit. The
        // floor lets shoal answer a head far over a small limit itself (431 with its error
        // header, counted), as over HTTP/1; past the list size the h2 crate's bare 431 bounds
        // what a client makes it keep (one head at a time on a connection). The default
        // limit (64 KiB, so 128 KiB) is above the floor.
        .max_header_list_size(
            u32::try_from(
                settings
                    .max_header_bytes
                    .saturating_mul(2)
                    .max(MIN_HEADER_LIST),
            )
            .unwrap_or(u32::MAX),
        );
    builder
}

/// The least header list size offered to clients, whatever `max_request_header_bytes`.
const MIN_HEADER_LIST: u64 = 64 * 1024;

/// A stream's future in its own allocation: a box a finished stream handed back, or a new
/// one. The future is several KiB (the whole exchange with the upstream lives in it): too
/// large for the allocator's per-thread cache, so a new box took its slow path, about 650
/// instructions, and as many again to free it. `FuturesUnordered::push` would copy the future
/// three times on its way into the task it allocates; allocating first and writing after
/// lets the compiler build the future in the box, so only the few bytes it starts with are
/// written, and `push` moves a pointer.
fn in_box<F: Future>(spare: &mut Vec<Pin<Box<F>>>, make: impl FnOnce() -> F) -> Pin<Box<F>> {
    match spare.pop() {
        Some(mut reused) => {
            reused.as_mut().set(make());
            reused
        }
        None => Box::into_pin(Box::write(Box::new_uninit(), make())),
    }
}

/// A stream's boxed future, which hands its box back when it is done (see [`in_box`]).
struct HandsBack<F>(Option<Pin<Box<F>>>);

impl<F: Future<Output = ()>> Future for HandsBack<F> {
    type Output = Pin<Box<F>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Pin<Box<F>>> {
        if let Some(stream) = &mut self.0 {
            if stream.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        // `None` once the box went back: `FuturesUnordered` polls no future after it is done.
        match self.0.take() {
            Some(stream) => Poll::Ready(stream),
            None => Poll::Pending,
        }
    }
}

/// Answers one stream. A client's RST_STREAM drops the request, and with it the upstream
/// exchange, as a client leaving does with HTTP/1. A CONNECT's stream carries its tunnel
/// once the upstream has answered it with a 2xx (RFC 9113 §8.5).
///
/// A function returning its future rather than an `async fn`: the future of an `async fn`
/// would hold the request both as its argument and as the parts taken from it, and copy one
/// into the other. Taken apart here, the parts are captured once and used where they are.
fn serve_stream(
    downstream: Arc<Downstream>,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) -> impl Future<Output = ()> {
    let (mut parts, stream) = request.into_parts();
    async move {
        // RFC 9113 §8.2.1: a value with whitespace at either end makes the request
        // malformed, a stream error. The h2 crate checks names and characters, not that.
        if parts.headers.values().any(|value| padded(value.as_bytes())) {
            respond.send_reset(Reason::PROTOCOL_ERROR);
            return;
        }
        // Told when the body is first read, for a client waiting on `Expect: 100-continue`.
        let mut wanted = None;
        // A CONNECT's stream is its tunnel's client side, not a body.
        let (body, tunnel, tunnel_in) = if parts.method == Method::CONNECT {
            if let Some(protocol) = parts.extensions.remove::<Protocol>() {
                if as_upgrade(&mut parts, &protocol).is_err() {
                    respond.send_reset(Reason::PROTOCOL_ERROR);
                    return;
                }
            }
            (RequestBody::Empty, Tunnel::Http2, Some(stream))
        } else if stream.is_end_stream() {
            (RequestBody::Empty, Tunnel::No, None)
        } else {
            // The h2 crate holds DATA to the first `content-length`; the upstream must get
            // that one alone. Repeated, they must agree (RFC 9110 §8.6), as on HTTP/1.
            let lengths = parts.headers.get_all(CONTENT_LENGTH);
            let mut values = lengths.iter();
            let first = values.next();
            let repeated = values.next().is_some();
            if repeated && lengths.iter().any(|l| Some(l) != first) {
                respond.send_reset(Reason::PROTOCOL_ERROR);
                return;
            }
            let length = first
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse().ok());
            if let Some(one) = first.filter(|_| repeated).cloned() {
                parts.headers.insert(CONTENT_LENGTH, one);
            }
            let told = headers::expects_continue(&parts.headers).then(|| {
                let (told, wait) = oneshot::channel();
                wanted = Some(wait);
                told
            });
            let body = RequestBody::Stream(ClientBody::h2(stream, length, told));
            (body, Tunnel::No, None)
        };
        // Pinned where it is made, and in a block: `tokio::pin!` of a variable kept two slots of
        // this future's size in the stream's, and both stayed while the body was sent.
        let response = if parts.headers.len() > MAX_HEADERS {
            // As many fields as an HTTP/1 head may carry (`preread::MAX_HEADERS`): the
            // upstream is spoken to in HTTP/1.1.
            Some(forward::refuse(
                &downstream,
                &mut parts.headers,
                OwnError::HeaderTooLarge,
            ))
        } else if parts.method != Method::CONNECT && !forward::path_fits(&parts.method, &parts.uri)
        {
            // RFC 9113 §8.3.1: `:path` is a path, or `*` for OPTIONS; anything else makes the
            // request malformed, as the same target does over HTTP/1 (the h2 crate takes
            // any). Forwarded, `?x` or `*` would reach the upstream as a GET's target.
            Some(forward::refuse(
                &downstream,
                &mut parts.headers,
                OwnError::BadRequest,
            ))
        } else if parts.uri.authority().is_none()
            && !headers::valid_hosts(&parts.headers, Version::HTTP_11)
        {
            // Without :authority, Host names the target's host; with neither the request is
            // malformed (RFC 9113 §8.3.1), as an HTTP/1.1 request without Host is.
            Some(forward::refuse(
                &downstream,
                &mut parts.headers,
                OwnError::BadRequest,
            ))
        } else {
            let mut answer = pin!(forward::respond(&downstream, &mut parts, body, tunnel));
            // The reset is looked for only when the answer is not ready yet: one h2 call fewer.
            poll_fn(|cx| match answer.as_mut().poll(cx) {
                Poll::Ready(response) => Poll::Ready(Some(response)),
                Poll::Pending => {
                    continue_once_wanted(&mut wanted, &mut respond, cx);
                    respond.poll_reset(cx).map(|_| None)
                }
            })
            .await
        };
        let Some(mut response) = response else {
            return;
        };
        // A body read while the answer was being made is owed its `100 Continue` before the
        // answer; one never read gets none, as with HTTP/1 (`http1::Feed::settle_expectation`).
        if wanted.as_mut().is_some_and(|wait| wait.try_recv().is_ok()) {
            send_continue(&mut respond);
        }
        let status = response.status();
        let headers = response.headers_mut();
        // RFC 9110 §8.6, as on HTTP/1 (`http1::write_response`): nghttp2 clients reset a 204
        // that states a length.
        if status == StatusCode::NO_CONTENT || status.is_informational() {
            headers.remove(CONTENT_LENGTH);
        }
        if !headers.contains_key(DATE) {
            headers.insert(DATE, date::with_now(HeaderValue::clone));
        }
        let tunnel_out = response.extensions_mut().remove::<Opened>();
        let end = response.body().is_end_stream() && tunnel_out.is_none();
        // Only for a body still to come: a finished one may be a HEAD's, a 204 or a 304, whose
        // length is not theirs to state; nor is a tunnel's.
        if !end && tunnel_out.is_none() && !response.headers().contains_key(CONTENT_LENGTH) {
            if let Some(length) = response.body().size_hint().exact() {
                response
                    .headers_mut()
                    .insert(CONTENT_LENGTH, HeaderValue::from(length));
            }
        }
        // The head goes to h2 and the body stays where it is, to be sent from there.
        let mut head = Response::new(());
        *head.status_mut() = status;
        *head.headers_mut() = std::mem::take(response.headers_mut());
        match respond.send_response(head, end) {
            Ok(send) => match (tunnel_in, tunnel_out) {
                // Boxed: a tunnel's state would otherwise grow every stream's future.
                (Some(from_client), Some(opened)) => {
                    // The answer is done with (counted and timed, as on HTTP/1); the
                    // tunnel counts in flight through `opened`.
                    drop(response);
                    Box::pin(splice(from_client, send, opened)).await;
                }
                _ if !end => send_body(send, response.body_mut()).await,
                _ => {}
            },
            Err(error) => {
                tracing::debug!(%error, "HTTP/2 response head not sent");
                respond.send_reset(Reason::INTERNAL_ERROR);
            }
        }
    }
}

/// Whether a field value starts or ends with whitespace.
fn padded(value: &[u8]) -> bool {
    matches!(value.first(), Some(b' ' | b'\t')) || matches!(value.last(), Some(b' ' | b'\t'))
}

/// Answers `Expect: 100-continue` once the request's body has been first read (`wanted`
/// told), as shoal's HTTP/1 server does: a request refused before then is not sent its body.
fn continue_once_wanted(
    wanted: &mut Option<oneshot::Receiver<()>>,
    respond: &mut SendResponse<Bytes>,
    cx: &mut Context<'_>,
) {
    let Some(wait) = wanted else { return };
    match Pin::new(wait).poll(cx) {
        Poll::Ready(Ok(())) => {
            *wanted = None;
            send_continue(respond);
        }
        // The body was dropped unread: no interim answer is owed.
        Poll::Ready(Err(_)) => *wanted = None,
        Poll::Pending => {}
    }
}

fn send_continue(respond: &mut SendResponse<Bytes>) {
    let mut interim = Response::new(());
    *interim.status_mut() = StatusCode::CONTINUE;
    if let Err(error) = respond.send_informational(interim) {
        tracing::debug!(%error, "HTTP/2 100 Continue not sent");
    }
}

/// Turns an extended CONNECT (RFC 8441) into the HTTP/1.1 Upgrade request it stands for, as
/// upstreams speak HTTP/1.1: a GET asking to switch to `protocol`, and for a WebSocket the
/// handshake key that HTTP/2 does without. Err: `protocol` cannot be a header value.
fn as_upgrade(parts: &mut Parts, protocol: &Protocol) -> Result<(), InvalidHeaderValue> {
    let upgrade = HeaderValue::from_str(protocol.as_str())?;
    parts.method = Method::GET;
    if protocol.as_str().eq_ignore_ascii_case("websocket") {
        let key: [u8; 16] = rand::rng().random();
        let key = base64::engine::general_purpose::STANDARD.encode(key);
        parts
            .headers
            .insert(SEC_WEBSOCKET_KEY, HeaderValue::from_str(&key)?);
    }
    parts.headers.insert(UPGRADE, upgrade);
    parts
        .headers
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    Ok(())
}

/// Relays a CONNECT tunnel between its stream and the upstream's connection, each way until
/// that way's sender ends it. A failure either way ends both; one on the upstream's side
/// resets the stream with CONNECT_ERROR (RFC 9113 §8.5).
async fn splice(mut from_client: RecvStream, mut to_client: SendStream<Bytes>, opened: Opened) {
    // The tunnel counts in flight until it ends.
    let Opened {
        upstream,
        held: _held,
    } = opened;
    let upstream = match upstream.await {
        Ok(upstream) => TokioIo::new(upstream),
        Err(error) => {
            tracing::debug!(%error, "upstream tunnel not opened");
            to_client.send_reset(Reason::CONNECT_ERROR);
            return;
        }
    };
    let (mut from_upstream, mut to_upstream) = tokio::io::split(upstream);
    let inbound = async {
        while let Some(data) = from_client.data().await {
            let data =
                data.map_err(|error| tracing::debug!(%error, "tunnel: client stream failed"))?;
            let n = data.len();
            to_upstream
                .write_all(&data)
                .await
                .map_err(|error| tracing::debug!(%error, "tunnel: upstream write failed"))?;
            let _ = from_client.flow_control().release_capacity(n);
        }
        let _ = to_upstream.shutdown().await;
        Ok::<(), ()>(())
    };
    let outbound = async {
        let mut buf = BytesMut::new();
        loop {
            buf.reserve(TUNNEL_READ);
            // A client that resets the stream while the upstream is quiet ends the tunnel.
            let read = tokio::select! {
                read = from_upstream.read_buf(&mut buf) => read,
                _ = poll_fn(|cx| to_client.poll_reset(cx)) => return Err(()),
            };
            let Ok(n) =
                read.inspect_err(|error| tracing::debug!(%error, "tunnel: upstream read failed"))
            else {
                to_client.send_reset(Reason::CONNECT_ERROR);
                return Err(());
            };
            let end = n == 0;
            send_data(&mut to_client, buf.split().freeze(), end)
                .await
                .map_err(|Gone| ())?;
            if end {
                return Ok::<(), ()>(());
            }
        }
    };
    let _ = tokio::try_join!(inbound, outbound);
}

/// Sends a response body within the client's flow-control window, then its trailers.
async fn send_body(mut send: SendStream<Bytes>, body: &mut ResponseBody) {
    loop {
        let frame = poll_fn(|cx| match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
            Poll::Pending => send.poll_reset(cx).map(|_| None),
        })
        .await;
        let frame = match frame {
            None => return,
            Some(None) => {
                let _ = send.send_data(Bytes::new(), true);
                return;
            }
            Some(Some(Err(error))) => {
                tracing::debug!(%error, "upstream body failed; resetting the HTTP/2 stream");
                send.send_reset(Reason::INTERNAL_ERROR);
                return;
            }
            Some(Some(Ok(frame))) => frame,
        };
        match frame.into_data() {
            Ok(data) => {
                let end = body.is_end_stream();
                if send_data(&mut send, data, end).await.is_err() || end {
                    return;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = send.send_trailers(trailers);
                }
                return;
            }
        }
    }
}

/// The stream was reset or the connection is gone.
struct Gone;

/// Sends `data` as the window allows; `end` ends the stream with its last piece.
async fn send_data(send: &mut SendStream<Bytes>, mut data: Bytes, end: bool) -> Result<(), Gone> {
    if data.is_empty() && !end {
        return Ok(());
    }
    // A small last piece is left to h2 to send as the window allows: what it may hold back
    // is bounded, and the stream ends with it, so there is no more to hold back.
    if end && data.len() <= SMALL_LAST_PIECE {
        return send.send_data(data, true).map_err(|_| Gone);
    }
    send.reserve_capacity(data.len());
    while !data.is_empty() {
        let capacity = poll_fn(|cx| match send.poll_reset(cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => send.poll_capacity(cx),
        })
        .await;
        let granted = match capacity {
            Some(Ok(granted)) => granted,
            Some(Err(_)) | None => return Err(Gone),
        };
        let piece = data.split_to(granted.min(data.len()));
        send.send_data(piece, end && data.is_empty())
            .map_err(|_| Gone)?;
    }
    Ok(())
}
