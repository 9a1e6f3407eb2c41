//! shoal's own HTTP/1.1 server. Each request is parsed where it was read, answered by
//! [`forward::respond`], and the response is written with one write when its body is in
//! already (a small upstream body is read with its head). A body of known length up to
//! [`MAX_HELD_BODY`] is read whole with its head; a larger or chunked one streams, read off
//! the connection as the upstream side takes it ([`Feed`]), also while the response is
//! written, with `100 Continue` sent when it is first wanted if the client asked for that.
//! An Upgrade or CONNECT request that the upstream accepts (a 101, or a 2xx to CONNECT)
//! turns the connection into a tunnel to the upstream ([`splice`]); one it refuses is
//! answered as any other, and the connection goes on.
//!
//! Why not hyper's server: its dispatcher, body channel and vectored writes were
//! the largest part of the instructions, and one of the syscalls, per request that shoal
//! spent beyond HAProxy (BENCHMARKS.md has the figures).

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll, Poll::Ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, Sleep};
use tokio_util::io::poll_read_buf;
use tokio_util::sync::PollSender;

use crate::accept::stopped;
use crate::body::{ClientBody, FedFrame, RequestBody, ResponseBody};
use crate::client::BodyError;
use crate::date;
use crate::decode::{Decoded, Decoder};
use crate::errors::OwnError;
use crate::forward::{self, Downstream, Opened, Tunnel};
use crate::headers;
use crate::io::{Prefixed, Reset};
use crate::preread::{self, MAX_HEADERS};
use crate::retry::MAX_HELD_BODY;
use crate::route::ConnectionSettings;

/// Body data at least this large is written from where it is instead of being copied
/// behind the head.
const DIRECT_WRITE: usize = 16 * 1024;

/// Output gathered from a body's ready frames is written once it is this large.
const FLUSH_AT: usize = 64 * 1024;

/// A connection's buffers grown past this for one large message are let go after it.
const KEEP_BUFFER: usize = 64 * 1024;

/// Room made for each read of a request body that streams: a body of a few hundred KB
/// waiting in the socket is taken in one or two reads, as hyper's server, whose read buffer
/// grows to 400 KB, took it (with 64 KiB, 100 kB bodies took 50% more reads).
const BODY_READ: usize = 256 * 1024;

/// How long a connection that streamed a request body keeps room for the next one's body
/// while it waits for it; then its read buffer shrinks back.
const UPLOAD_PAUSE: Duration = Duration::from_millis(100);

/// The interim response to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How long a connection that is told to stop between requests (shutdown, or its listener
/// removed or replaced by a reload) waits for a request already on its way: a client that
/// reuses an idle keep-alive connection cannot know that it is being closed, and one closed
/// under it loses that request, or gets a reset. Such a request is served with `connection:
/// close`, as Envoy and HAProxy answer the next request while draining.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(1);

/// Serves requests on `stream`, whose first bytes (a complete request head, checked by
/// [`preread`]) are `buf`, until the connection ends or becomes a tunnel.
pub(crate) async fn serve<S>(
    mut stream: S,
    mut buf: BytesMut,
    downstream: &Downstream,
    settings: &ConnectionSettings,
    shutdown: &watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Reset + Unpin,
{
    // As with hyper's header timer before: one deadline for waiting for a request and for
    // reading its head. The timer is armed once and moved on only when it fires early, so
    // a request does not pay for a timer of its own.
    let timeout = settings.idle.max(settings.header_read);
    let timer = tokio::time::sleep(timeout);
    tokio::pin!(timer);
    let mut stop_watch = shutdown.clone();
    let stop = stopped(&mut stop_watch);
    tokio::pin!(stop);
    let mut stopping = false;
    // Set when told to stop between requests: the end of [`STOP_GRACE`].
    let mut stop_due = None;
    let mut out = Vec::with_capacity(4096);
    let mut fields = Vec::new();
    let limit = settings.max_header_bytes;
    // Set once a request's body has streamed, while the client keeps uploading: its next
    // request is read with room for its body too, so that a body already sent comes in one
    // read and goes upstream as one frame (100 kB uploads: 1.4x the requests at equal CPU
    // of reading the head into a few KiB). A client quiet for [`UPLOAD_PAUSE`] between
    // requests gives that room back.
    let mut uploads = false;
    loop {
        let since = Instant::now();
        let mut need = 0;
        // Once part of a head is in, the rest is due within `header_read`, and so is a body
        // still to come once its head is in (a request that comes whole, as nearly all do,
        // never moves the timer).
        let mut head_due = None;
        let request = loop {
            if buf.len() >= need {
                match parse(&mut buf, limit, &mut fields) {
                    Parse::Request(request) => break request,
                    Parse::Invalid(error) => {
                        refuse(&mut stream, downstream, error, since).await;
                        return;
                    }
                    Parse::Body(total) => {
                        need = total;
                        arm(&mut head_due, timer.as_mut(), settings.header_read);
                    }
                    Parse::Partial => {
                        if !between_requests(&buf) {
                            arm(&mut head_due, timer.as_mut(), settings.header_read);
                        }
                    }
                }
            }
            let roomy = uploads && buf.is_empty();
            if roomy {
                make_room(&mut buf);
            } else if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            tokio::select! {
                biased;
                read = stream.read_buf(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                () = &mut timer => {
                    // Config durations are at most a year, so the sum fits the clock.
                    let mut due = head_due.map_or(since + timeout, |head| head.min(since + timeout));
                    if let Some(stop) = stop_due.filter(|_| between_requests(&buf)) {
                        due = due.min(stop);
                    }
                    if due > Instant::now() {
                        timer.as_mut().reset(due);
                    } else if between_requests(&buf) {
                        if stop_due.is_some() {
                            crate::io::close_lingering(&mut stream).await;
                        }
                        return;
                    } else {
                        // `need` is set once the head is in and its body is awaited.
                        let error = if need > 0 {
                            OwnError::BodyTimeout
                        } else {
                            OwnError::HeaderTimeout
                        };
                        refuse(&mut stream, downstream, error, since).await;
                        return;
                    }
                }
                () = &mut stop, if !stopping => {
                    stopping = true;
                    if between_requests(&buf) {
                        let due = Instant::now() + STOP_GRACE;
                        stop_due = Some(due);
                        if due < timer.deadline() {
                            timer.as_mut().reset(due);
                        }
                    }
                }
                // An async block, so that the timer is made only when the branch is on.
                () = async { tokio::time::sleep_until(since + UPLOAD_PAUSE).await }, if roomy => {
                    buf = BytesMut::new();
                    uploads = false;
                }
            }
        };

        let ParsedRequest {
            mut parts,
            body,
            close,
            head,
            tunnel,
            mut feed,
        } = request;
        uploads |= feed.is_some();
        let version = parts.version;
        // Pinned where it is made: `tokio::pin!` of a variable would keep two slots of this
        // future's size in the connection's.
        let mut response = {
            let tunnel = if tunnel { Tunnel::Http1 } else { Tunnel::No };
            let mut answer = pin!(forward::respond(downstream, &mut parts, body, tunnel));
            tokio::select! {
                biased;
                response = &mut answer => response,
                () = gone(&mut stream, &mut buf, &mut feed) => return,
            }
        };
        if let Some(feed) = &mut feed {
            if let Err(error) = feed.settle_expectation(&mut stream).await {
                tracing::debug!(%error, "writing 100 Continue failed");
                return;
            }
        }
        // A body whose rest can never be read keeps the connection from another request,
        // and so does shoal's own refusal of a request whose body is not all in (a 408 for
        // a body that stalled, say), as nginx closes then; the rest of any other body still
        // to come is read after the response ([`Feed::finish`]).
        let cut_short = feed.as_ref().is_some_and(|feed| {
            feed.cut_short()
                || !feed.complete() && response.headers().contains_key(&headers::X_SHOAL_ERROR)
        });
        let keep_alive = !close && !cut_short && !*shutdown.borrow();
        // The upstream's side of a tunnel it opened.
        let opened = response.extensions_mut().remove::<Opened>();
        let asked = Asked {
            head,
            version,
            tunnel: opened.is_some(),
        };
        let written = write_response(
            &mut stream,
            &mut buf,
            &mut feed,
            &mut out,
            response,
            asked,
            keep_alive,
        )
        .await;
        if let Some(opened) = opened {
            match written {
                Ok(_) => {
                    // The connection's buffers are done with; the tunnel keeps its slot.
                    drop((out, fields));
                    splice(stream, buf, opened).await;
                }
                Err(error) => tracing::debug!(%error, "writing a tunnel's response failed"),
            }
            return;
        }
        // A body left partly unread leaves the connection in no state for another request,
        // unless the rest can be read now.
        let whole = match &mut feed {
            Some(feed) if !feed.complete() && matches!(written, Ok(true)) => {
                let finish = feed.finish(&mut stream, &mut buf);
                let due = settings.header_read;
                tokio::time::timeout(due, finish).await.unwrap_or(false)
            }
            Some(feed) => feed.complete(),
            None => true,
        };
        match written {
            Ok(true) if whole => {
                // A large head or body once must not keep its buffers for the connection's
                // idle life.
                if out.capacity() > KEEP_BUFFER {
                    out = Vec::with_capacity(4096);
                }
                if buf.is_empty() && buf.capacity() > KEEP_BUFFER {
                    buf = BytesMut::new();
                }
            }
            Ok(_) => {
                crate::io::close_lingering(&mut stream).await;
                return;
            }
            Err(error) => {
                tracing::debug!(%error, "writing a response failed");
                return;
            }
        }
    }
}

/// Relays between the client's connection, starting with what it sent after the request's
/// head (`early`), and the upstream's side of a tunnel, both ways: a side that closes is
/// passed on as a half-close, and the tunnel ends once both directions have. It keeps the
/// connection's slot, so it counts against `max_connections`, and shutdown waits for it
/// within the drain timeout, as for a TCP listener's connections.
async fn splice<S>(mut stream: S, early: BytesMut, opened: Opened)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The tunnel counts in flight until it ends.
    let Opened {
        upstream,
        held: _held,
    } = opened;
    let upstream = match upstream.await {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::debug!(%error, "the upstream's side of a tunnel failed");
            crate::io::close_lingering(&mut stream).await;
            return;
        }
    };
    // Copied, so that the tunnel does not keep the read buffer's whole allocation.
    let early = Bytes::copy_from_slice(&early);
    let mut client = Prefixed::new(early, stream);
    let mut upstream = TokioIo::new(upstream);
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(%error, "a tunnel ended with an error");
    }
}

/// Makes room in `buf` for a read of a streamed body: [`BODY_READ`] unless half of it is
/// left. Each frame passed on keeps the memory it was read into until the upstream has
/// written it, so this often takes a new allocation.
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < BODY_READ / 2 {
        buf.reserve(BODY_READ);
    }
}

/// While a streamed body waits (for the upstream side to take the frame before, or to want
/// the body at all), the client is still read, up to [`BODY_READ`] bytes in `buf`: a client
/// that leaves then is noticed at once, and its request and upstream connection go with
/// it, rather than when the upstream reads on or the request times out.
fn read_ahead<S: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    stream: &mut S,
    buf: &mut BytesMut,
) -> Poll<Result<(), Gone>> {
    while buf.len() < BODY_READ {
        ready!(poll_read_body(cx, stream, buf))?;
    }
    Poll::Pending
}

/// Reads more of a streamed body into `buf`; `Err` when the client's connection has ended.
fn poll_read_body<S: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    stream: &mut S,
    buf: &mut BytesMut,
) -> Poll<Result<(), Gone>> {
    make_room(buf);
    match ready!(poll_read_buf(Pin::new(stream), cx, buf)) {
        Ok(0) | Err(_) => Poll::Ready(Err(Gone)),
        Ok(_) => Poll::Ready(Ok(())),
    }
}

/// Whether `buf` holds no part of a request: empty, or the stray line ends RFC 9112 §2.2
/// lets a client send after a body.
fn between_requests(buf: &[u8]) -> bool {
    buf.iter().all(|&b| b == b'\r' || b == b'\n')
}

/// Resolves when the client closes or resets its connection, reading on the request's body
/// first while it streams ([`Feed::pump`]).
async fn gone<S>(stream: &mut S, buf: &mut BytesMut, feed: &mut Option<Box<Feed>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(feed) = feed {
        if feed.pump(stream, buf).await.is_err() {
            return;
        }
    }
    closed(stream, buf).await
}

/// Resolves when the client closes or resets its connection: a client that leaves takes
/// its request along (as with hyper's server and nginx, a half-close counts as leaving).
/// Once something of a next request is buffered, the client is not read again until that
/// request's turn, as hyper does, so the buffer stays bounded.
async fn closed<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) {
    if buf.is_empty() {
        if buf.capacity() == 0 {
            buf.reserve(4096);
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    std::future::pending().await
}

/// Answers a request that cannot be served with `error` and closes, counting it as the
/// first request's refusals are ([`preread`]).
async fn refuse<S>(stream: &mut S, downstream: &Downstream, error: OwnError, since: Instant)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let unrouted = &downstream.listener.unrouted;
    unrouted.count(error.status().as_u16());
    unrouted.observe(since.elapsed().as_secs_f64());
    preread::reject(stream, error).await;
}

/// A request parsed off the front of the connection's buffer.
struct ParsedRequest {
    parts: Parts,
    body: RequestBody,
    /// The client asked for the connection to close after the response.
    close: bool,
    /// A HEAD request: the response has no body whatever its headers say.
    head: bool,
    /// An Upgrade (but to h2c) in HTTP/1.1, or CONNECT: the connection becomes a tunnel
    /// if the upstream accepts.
    tunnel: bool,
    /// Where the body comes from when it streams. Boxed: most requests have none, and every
    /// request is moved a few times on its way.
    feed: Option<Box<Feed>>,
}

/// A request body that streams, read off the connection into the request's [`ClientBody`]
/// one frame at a time as the upstream side takes it: the channel holds one frame, so a
/// slow upstream slows the client down rather than filling memory.
struct Feed {
    frames: PollSender<FedFrame>,
    decoder: Decoder,
    /// The largest trailer section taken (the header limit).
    max_trailers: usize,
    /// Set while `Expect: 100-continue` waits for the body to be first read.
    wanted: Option<oneshot::Receiver<()>>,
    /// What is still to be written of [`CONTINUE`] once it is owed.
    interim: &'static [u8],
    /// [`CONTINUE`] has been written and is to be flushed.
    flush: bool,
    /// Nothing more goes into `frames`: the body ended, failed, or is no longer read.
    done: bool,
    /// The body is malformed.
    failed: bool,
    /// The client waited for `100 Continue`, and got the final response instead.
    unanswered: bool,
}

/// The client's connection ended.
struct Gone;

impl Feed {
    /// A body framed as `framing` says, for the request's body; `expecting` when the client
    /// waits for `100 Continue` before sending it. Kept out of [`parse`], which most requests
    /// go through without it.
    #[cold]
    fn start(framing: &Framing, expecting: bool, max_trailers: usize) -> (Box<Feed>, RequestBody) {
        let decoder = if framing.chunked {
            Decoder::chunked()
        } else {
            Decoder::length(framing.length)
        };
        let (frames, receiver) = mpsc::channel(1);
        let (wanted, waiting) = if expecting {
            let (tell, wanted) = oneshot::channel();
            (Some(wanted), Some(tell))
        } else {
            (None, None)
        };
        let body = ClientBody::http1(receiver, decoder.remaining(), waiting);
        let feed = Box::new(Feed {
            frames: PollSender::new(frames),
            decoder,
            max_trailers,
            wanted,
            interim: &[],
            flush: false,
            done: false,
            failed: false,
            unanswered: false,
        });
        (feed, RequestBody::Stream(body))
    }

    /// Whether the whole body has been read off the connection.
    fn complete(&self) -> bool {
        self.decoder.is_done()
    }

    /// Whether the rest of the body can never be read: it is malformed, or the client
    /// still waits for `100 Continue` and will not send it. (One that is merely not read
    /// any more is read and dropped after the response, [`Feed::finish`].)
    fn cut_short(&self) -> bool {
        self.failed || self.unanswered
    }

    /// Passes the body on as the channel takes it, until it has all gone (or failed, or is
    /// not read any more); `Err` when the client's connection ends first. Cancel-safe:
    /// bytes read and not yet passed on stay in `buf`.
    async fn pump<S>(&mut self, stream: &mut S, buf: &mut BytesMut) -> Result<(), Gone>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        std::future::poll_fn(|cx| self.poll_pump(cx, stream, buf)).await
    }

    /// [`Feed::pump`] as a poll, so that it can go on while a write of the response to the
    /// same stream waits ([`pumping`]). What it waits for (a slot in the channel,
    /// the expectation's answer, the client) is kept in `self`, not in a future.
    fn poll_pump<S>(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut S,
        buf: &mut BytesMut,
    ) -> Poll<Result<(), Gone>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        while !self.done {
            let Ready(reserved) = self.frames.poll_reserve(cx) else {
                return read_ahead(cx, stream, buf);
            };
            if reserved.is_err() {
                // The upstream side stopped reading: the rest stays unread.
                self.done = true;
                break;
            }
            let sent = match self.decoder.decode(buf, self.max_trailers) {
                Ok(Decoded::Frame(frame)) => Some(Ok(Some(frame))),
                Ok(Decoded::End) => {
                    self.done = true;
                    Some(Ok(None))
                }
                Err(error) => {
                    self.done = true;
                    self.failed = true;
                    Some(Err(error.into()))
                }
                Ok(Decoded::More) => None,
            };
            if let Some(item) = sent {
                // The slot is reserved, so this fails only when the receiver has just
                // gone, and then the body is not read any more either way.
                if self.frames.send_item(item).is_err() {
                    self.done = true;
                }
                continue;
            }
            if let Some(wanted) = &mut self.wanted {
                let Ready(answer) = Pin::new(wanted).poll(cx) else {
                    return read_ahead(cx, stream, buf);
                };
                if answer.is_err() {
                    // Answered without the body, which the client has not sent: `wanted`
                    // stays for `settle_expectation` to see.
                    self.done = true;
                    self.frames.abort_send();
                    return Poll::Ready(Ok(()));
                }
                self.wanted = None;
                self.interim = CONTINUE;
                self.flush = true;
            }
            // A write at a time, so that what is written is never written again.
            while !self.interim.is_empty() {
                match ready!(Pin::new(&mut *stream).poll_write(cx, self.interim)) {
                    Ok(0) | Err(_) => return Poll::Ready(Err(Gone)),
                    Ok(n) => self.interim = &self.interim[n..],
                }
            }
            if self.flush {
                // Over TLS the record may wait in a buffer; the client waits for it.
                if ready!(Pin::new(&mut *stream).poll_flush(cx)).is_err() {
                    return Poll::Ready(Err(Gone));
                }
                self.flush = false;
            }
            ready!(poll_read_body(cx, stream, buf))?;
        }
        Poll::Ready(Ok(()))
    }

    /// After the response, the rest of a body the upstream answered before reading to its
    /// end (nginx's `return` does): it goes on to the upstream while that reads, and what
    /// is left then is read and dropped, so that the connection can take another request,
    /// as with hyper's server and nginx. `false` when the body cannot be finished: it is
    /// malformed, the client still waits for `100 Continue`, or the client left. The caller
    /// gives it `header_read`, the time a client gets for a head or its body.
    async fn finish<S>(&mut self, stream: &mut S, buf: &mut BytesMut) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if self.pump(stream, buf).await.is_err() {
            return false;
        }
        loop {
            match self.decoder.decode(buf, self.max_trailers) {
                Ok(Decoded::End) => return true,
                Ok(Decoded::Frame(_)) => continue,
                Err(_) => return false,
                Ok(Decoded::More) if self.unanswered => return false,
                Ok(Decoded::More) => {}
            }
            let read = std::future::poll_fn(|cx| poll_read_body(cx, stream, buf));
            if read.await.is_err() {
                return false;
            }
        }
    }

    /// Once the response is ready, before its head: a client that waits for `100
    /// Continue` is told now if its body was wanted (the answer may have come before the
    /// pump saw that, or while it was writing the interim response), all of it before the
    /// head, as an interim response must come; nothing is written after. If its body was
    /// never wanted, the final response answers the expectation, and the connection closes
    /// after it ([`Feed::cut_short`]), as the client may never send that body.
    async fn settle_expectation<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> io::Result<()> {
        if let Some(mut wanted) = self.wanted.take() {
            if wanted.try_recv().is_ok() {
                self.interim = CONTINUE;
            } else {
                self.unanswered = true;
            }
        }
        let rest = std::mem::take(&mut self.interim);
        if !rest.is_empty() {
            stream.write_all(rest).await?;
        }
        Ok(())
    }
}

// Returned once per request and taken apart at once: boxing the request would cost an
// allocation for each.
#[allow(clippy::large_enum_variant)]
enum Parse {
    /// The head is not complete yet.
    Partial,
    /// The head is complete; so is its body once the buffer holds this many bytes.
    Body(usize),
    Request(ParsedRequest),
    Invalid(OwnError),
}

/// Where a field's name and value sit in the head, to be sliced once the head is split off
/// the buffer. Heads are at most a few MiB (the header limit), so offsets fit in u32.
#[derive(Clone, Copy)]
struct Field {
    name: (u32, u32),
    value: (u32, u32),
}

/// What the fields say about the body and the connection.
#[derive(Default)]
struct Framing {
    length: u64,
    close: bool,
    keep_alive: bool,
    /// Transfer-Encoding, which `check_fields` has let through only as `chunked`.
    chunked: bool,
    /// `Expect: 100-continue`.
    expects_continue: bool,
    /// An Upgrade other than to h2c.
    upgrade: bool,
    /// `Connection: upgrade`, without which an Upgrade is not asked for (RFC 9110 §7.8).
    connection_upgrade: bool,
}

impl Framing {
    fn note(&mut self, name: &str, value: &[u8]) {
        if name.eq_ignore_ascii_case("content-length") {
            // Checked by `check_fields`: digits that fit a u64, equal when repeated (so
            // the fallback is never taken).
            self.length = std::str::from_utf8(value.trim_ascii())
                .ok()
                .and_then(|digits| digits.parse().ok())
                .unwrap_or(u64::MAX);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                self.connection_upgrade |= token.eq_ignore_ascii_case(b"upgrade");
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            self.chunked = true;
        } else if name.eq_ignore_ascii_case("upgrade") {
            self.upgrade |= !headers::is_h2c(value);
        } else if name.eq_ignore_ascii_case("expect") {
            self.expects_continue |= value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }
}

/// Parses the request at the front of `buf`; a whole request is split off, or its head
/// when its body streams. `fields` is the connection's, kept to reuse its allocation.
fn parse(buf: &mut BytesMut, limit: u64, fields: &mut Vec<Field>) -> Parse {
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) if len as u64 > limit => {
            return Parse::Invalid(OwnError::HeaderTooLarge)
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() as u64 > limit => {
            return Parse::Invalid(OwnError::HeaderTooLarge)
        }
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parse::Invalid(OwnError::HeaderTooLarge),
        Err(httparse::Error::Version) if preread::as_http11(buf) => {
            return parse(buf, limit, fields)
        }
        Err(_) => return Parse::Invalid(OwnError::BadRequest),
    };
    if let Err(error) = preread::check_fields(&parsed) {
        return Parse::Invalid(error);
    }
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return Parse::Invalid(OwnError::BadRequest);
    };
    let base = buf.as_ptr() as usize;
    let span = |part: &[u8]| {
        let start = (part.as_ptr() as usize - base) as u32;
        (start, start + part.len() as u32)
    };
    let mut framing = Framing::default();
    fields.clear();
    for parsed in parsed.headers.iter() {
        framing.note(parsed.name, parsed.value);
        fields.push(Field {
            name: span(parsed.name.as_bytes()),
            value: span(parsed.value),
        });
    }
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // A client that waits for 100 Continue is owed one only by HTTP/1.1 (RFC 9110 §10.1.1).
    let expecting = framing.expects_continue && version == Version::HTTP_11;
    let streams =
        framing.chunked || framing.length > MAX_HELD_BODY || expecting && framing.length > 0;
    // What follows the head of a request whose body streams is that body, not a tunnel's
    // bytes: such a request is forwarded without its Upgrade, and a CONNECT's 2xx refused.
    let tunnel = !streams
        && (method == "CONNECT"
            || framing.upgrade && framing.connection_upgrade && version == Version::HTTP_11);
    let total = if streams {
        len
    } else {
        len + framing.length as usize
    };
    if buf.len() < total {
        return Parse::Body(total);
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parse::Invalid(OwnError::BadRequest);
    };
    let target = span(path.as_bytes());

    let head = buf.split_to(len).freeze();
    let (body, feed) = if streams {
        // Nothing is owed to a client that has sent some of its body already.
        let (feed, body) = Feed::start(&framing, expecting && buf.is_empty(), limit as usize);
        (body, Some(feed))
    } else {
        let body = match framing.length {
            0 => RequestBody::Empty,
            n => RequestBody::Buffered(buf.split_to(n as usize).freeze()),
        };
        (body, None)
    };
    let slice = |(start, end): (u32, u32)| head.slice(start as usize..end as usize);
    let uri = match Uri::from_maybe_shared(slice(target)) {
        Ok(uri) if target_fits(&method, &uri) => uri,
        _ => return Parse::Invalid(OwnError::BadRequest),
    };
    // Room for the headers the proxy adds (request id, X-Forwarded-*).
    let mut headers = HeaderMap::with_capacity(fields.len() + 4);
    let mut length_seen = false;
    for field in fields.iter() {
        let name = HeaderName::from_bytes(&slice(field.name));
        let value = HeaderValue::from_maybe_shared(slice(field.value));
        let (Ok(name), Ok(value)) = (name, value) else {
            return Parse::Invalid(OwnError::BadRequest);
        };
        // Repeated lengths are equal (`check_fields`): one goes on (RFC 9110 §8.6).
        if name == header::CONTENT_LENGTH {
            if length_seen {
                continue;
            }
            length_seen = true;
        }
        headers.append(name, value);
    }
    let close = framing.close || (version == Version::HTTP_10 && !framing.keep_alive);
    let head_request = method == Method::HEAD;
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    let (parts, ()) = request.into_parts();
    Parse::Request(ParsedRequest {
        parts,
        body,
        close,
        head: head_request,
        tunnel,
        feed,
    })
}

/// Starts the `header_read` deadline of a request under way, unless it has one already.
fn arm(due: &mut Option<Instant>, timer: Pin<&mut Sleep>, header_read: Duration) {
    if due.is_none() {
        let at = Instant::now() + header_read;
        *due = Some(at);
        if at < timer.deadline() {
            timer.reset(at);
        }
    }
}

/// What about the request decides how the response is written.
#[derive(Clone, Copy)]
struct Asked {
    head: bool,
    version: Version,
    /// The response opens a tunnel: what follows its head is the tunnel's, and the
    /// upstream's `Connection: upgrade` stands.
    tunnel: bool,
}

/// How the response's body is delimited on the client connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Delimit {
    /// No body: HEAD, 1xx, 204, 304.
    None,
    /// By its Content-Length.
    Length,
    Chunked,
    /// By closing the connection (an HTTP/1.0 client, a body of unknown length).
    Close,
}

/// Writes `response` and its body. `Ok(true)` when the connection can take another
/// request; an error (the client's, or the body's) leaves the response cut short, and the
/// connection must close.
async fn write_response<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    feed: &mut Option<Box<Feed>>,
    out: &mut Vec<u8>,
    response: Response<ResponseBody>,
    asked: Asked,
    mut keep_alive: bool,
) -> io::Result<bool>
where
    S: AsyncRead + AsyncWrite + Reset + Unpin,
{
    let (head, mut body) = response.into_parts();
    let status = head.status;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // Whether Date and Content-Length are there is noted on the way: two lookups would hash
    // each name again.
    let (mut dated, mut has_length) = (false, false);
    // RFC 9110 §8.6: no Content-Length in a 1xx or 204, though an upstream sent one.
    let no_length = status.is_informational() || status == StatusCode::NO_CONTENT;
    for (name, value) in &head.headers {
        dated |= name == header::DATE;
        has_length |= name == header::CONTENT_LENGTH;
        if no_length && name == header::CONTENT_LENGTH {
            continue;
        }
        // It announces trailers, which HTTP/1 clients are not sent (`write_body`).
        if name == header::TRAILER {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !dated {
        put_date(out);
    }
    let delimit = if asked.head
        || asked.tunnel
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Delimit::None
    } else if has_length {
        Delimit::Length
    } else if let Some(length) = body.size_hint().exact() {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa_u64(length, &mut [0; 20]));
        out.extend_from_slice(b"\r\n");
        Delimit::Length
    } else if asked.version == Version::HTTP_11 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Delimit::Chunked
    } else {
        Delimit::Close
    };
    keep_alive &= delimit != Delimit::Close;
    if asked.tunnel {
        // The upstream's `Connection: upgrade` is among the headers written.
    } else if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if asked.version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if delimit != Delimit::None {
        let chunked = delimit == Delimit::Chunked;
        let written = write_body(stream, buf, feed, out, &mut body, chunked).await;
        if let Err(error) = written {
            // What came of an upstream body that broke off went out without its end: a
            // length or chunked framing shows the client it is cut short, and an end that
            // is the connection's is made a reset, or it would look complete.
            if delimit == Delimit::Close && error.get_ref().is_some_and(|e| e.is::<BodyBroke>()) {
                stream.reset_on_close();
            }
            return Err(error);
        }
    }
    write_out(stream, buf, feed, out).await?;
    Ok(keep_alive)
}

/// The upstream's body broke off in the middle of a response.
#[derive(Debug, thiserror::Error)]
#[error("response body: {0}")]
struct BodyBroke(BodyError);

enum Next {
    Frame(Option<Result<Frame<Bytes>, BodyError>>),
    /// The body has nothing ready: what is gathered goes out first.
    Flush,
}

/// Appends the body to `out` as its frames come, writing whenever the body has to be
/// waited for; what is left in `out` at the end is the caller's to write. While it waits,
/// the request's body streams on (an upstream may answer while it reads), and a client
/// that leaves ends the response ([`gone`]); so it does while a write waits
/// ([`pumping`]). Trailers are dropped, as by hyper's server for clients that did not ask
/// for them.
async fn write_body<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    feed: &mut Option<Box<Feed>>,
    out: &mut Vec<u8>,
    body: &mut ResponseBody,
    chunked: bool,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let frame = std::future::poll_fn(|cx| match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(Next::Frame(frame)),
            Poll::Pending if !out.is_empty() => Poll::Ready(Next::Flush),
            Poll::Pending => Poll::Pending,
        });
        let next = tokio::select! {
            biased;
            next = frame => next,
            () = gone(&mut *stream, &mut *buf, &mut *feed) => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the client closed its connection",
                ))
            }
        };
        let data = match next {
            Next::Flush => {
                write_out(stream, buf, feed, out).await?;
                continue;
            }
            Next::Frame(None) => {
                if chunked {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                return Ok(());
            }
            Next::Frame(Some(Err(error))) => {
                write_out(stream, buf, feed, out).await?;
                return Err(io::Error::other(BodyBroke(error)));
            }
            Next::Frame(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
        };
        if chunked {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        }
        if data.len() >= DIRECT_WRITE {
            write_out(stream, buf, feed, out).await?;
            write_all(stream, buf, feed, &data).await?;
            // Over TLS a write can leave records buffered; a body that pauses after this
            // frame must not hold its end back.
            flush(stream, buf, feed).await?;
        } else {
            out.extend_from_slice(&data);
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= FLUSH_AT {
            write_out(stream, buf, feed, out).await?;
        }
    }
}

/// Writes what is gathered in `out` and flushes it ([`write_all`]).
async fn write_out<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    feed: &mut Option<Box<Feed>>,
    out: &mut Vec<u8>,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if !out.is_empty() {
        write_all(stream, buf, feed, out).await?;
        out.clear();
    }
    flush(stream, buf, feed).await
}

/// Writes all of `data` to the client, reading on a request body that still streams while
/// the client does not take it ([`pumping`]).
async fn write_all<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    feed: &mut Option<Box<Feed>>,
    mut data: &[u8],
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    pumping(stream, buf, feed, |mut stream, cx| {
        while !data.is_empty() {
            match ready!(stream.as_mut().poll_write(cx, data)) {
                Ok(0) => return Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => data = &data[n..],
                Err(error) => return Ready(Err(error)),
            }
        }
        Ready(Ok(()))
    })
    .await
}

/// Flushes what the stream holds (TLS records) to the client, as [`write_all`] writes.
async fn flush<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    feed: &mut Option<Box<Feed>>,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    pumping(stream, buf, feed, |stream, cx| stream.poll_flush(cx)).await
}

/// Runs `io`, a write to the client, to its end. While the client does not take what is
/// written, a request body that still streams is read on ([`Feed::poll_pump`]): a client
/// may send all of its body before it reads any of the response, while its upstream
/// answers as it reads that body (a streaming echo does), and a proxy that stopped reading
/// the body until the response was taken would leave each side waiting on the other.
/// hyper's server, too, reads while a write waits.
async fn pumping<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    feed: &mut Option<Box<Feed>>,
    mut io: impl FnMut(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<()>>,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    std::future::poll_fn(|cx| {
        if let Ready(written) = io(Pin::new(&mut *stream), cx) {
            return Ready(written);
        }
        if let Some(feed) = feed {
            if let Ready(Err(Gone)) = feed.poll_pump(cx, stream, buf) {
                return Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the client closed its connection",
                )));
            }
        }
        Poll::Pending
    })
    .await
}

/// The decimal digits of `n`, written into `digits`.
fn itoa_u64(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &digits[at..];
        }
    }
}

/// Appends a `date` field for now.
fn put_date(out: &mut Vec<u8>) {
    out.extend_from_slice(b"date: ");
    date::with_now(|value| out.extend_from_slice(value.as_bytes()));
    out.extend_from_slice(b"\r\n");
}

/// Whether a request's target has a form its method may use (RFC 9112 §3.2): a path
/// (origin form), a whole URI (absolute form), `*` for OPTIONS, and `host:port` (authority
/// form) for CONNECT alone. Taken for a host, `GET noslash` would route by it, over `Host`.
fn target_fits(method: &Method, uri: &Uri) -> bool {
    if *method == Method::CONNECT {
        return uri.scheme().is_none() && uri.authority().is_some();
    }
    match (uri.scheme(), uri.authority()) {
        (Some(_), Some(_)) => true,
        (None, None) => uri.path().starts_with('/') || *method == Method::OPTIONS && uri == "*",
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that takes everything written to it and sends nothing.
    #[derive(Default)]
    struct Sink(Vec<u8>);

    impl AsyncRead for Sink {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Sink {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().0.extend_from_slice(data);
            Poll::Ready(Ok(data.len()))
        }

        fn poll_flush(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl Reset for Sink {
        fn reset_on_close(&self) {}
    }

    fn parse_all(input: &[u8]) -> (Parse, BytesMut) {
        let mut buf = BytesMut::from(input);
        let parsed = parse(&mut buf, 1024, &mut Vec::new());
        (parsed, buf)
    }

    fn request(input: &[u8]) -> (ParsedRequest, BytesMut) {
        match parse_all(input) {
            (Parse::Request(request), rest) => (request, rest),
            _ => panic!("not a request: {}", String::from_utf8_lossy(input)),
        }
    }

    #[test]
    fn a_request_is_split_off_with_its_body() {
        let (get, rest) =
            request(b"GET /a?b HTTP/1.1\r\nHost: x\r\nX-One: 1\r\nX-One: 2\r\n\r\nGET /next");
        assert_eq!(get.parts.method, Method::GET);
        assert_eq!(get.parts.uri, "/a?b");
        assert_eq!(get.parts.version, Version::HTTP_11);
        assert_eq!(get.parts.headers.get_all("x-one").iter().count(), 2);
        assert!(matches!(get.body, RequestBody::Empty));
        assert!(!get.close && !get.head);
        assert_eq!(&rest[..], b"GET /next");

        let (post, rest) =
            request(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcdef");
        assert!(matches!(post.body, RequestBody::Buffered(ref b) if b == "abc"));
        assert_eq!(&rest[..], b"def");
        // Equal lengths repeated are one (RFC 9110 §8.6).
        let (post, _) = request(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        );
        assert_eq!(
            post.parts.headers.get_all("content-length").iter().count(),
            1
        );
        let (head, _) =
            request(b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive, close\r\n\r\n");
        assert!(head.head && head.close);
    }

    #[test]
    fn http10_closes_unless_asked_to_keep_alive() {
        assert!(request(b"GET / HTTP/1.0\r\n\r\n").0.close);
        let (kept, _) = request(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(!kept.close);
        // close wins over keep-alive
        let (both, _) = request(b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n");
        assert!(both.close);
        assert_eq!(kept.parts.version, Version::HTTP_10);
    }

    #[test]
    fn incomplete_requests_wait_and_keep_their_bytes() {
        let partial = b"GET / HTTP/1.1\r\nHost: x\r\n";
        let (parsed, rest) = parse_all(partial);
        assert!(matches!(parsed, Parse::Partial));
        assert_eq!(&rest[..], partial);
        let head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n";
        let mut input = head.to_vec();
        input.extend_from_slice(b"four");
        let (parsed, rest) = parse_all(&input);
        assert!(matches!(parsed, Parse::Body(total) if total == head.len() + 10));
        assert_eq!(rest.len(), input.len());
    }

    #[test]
    fn upgrades_and_connect_may_open_tunnels() {
        let tunnel = |input: &[u8]| request(input).0.tunnel;
        assert!(tunnel(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        ));
        assert!(tunnel(b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n"));
        // Not asked for: an Upgrade without `Connection: upgrade`, in HTTP/1.0, or to h2c;
        // nor by a request whose body streams, since what follows its head is that body.
        assert!(!tunnel(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n"
        ));
        assert!(!tunnel(
            b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        ));
        assert!(!tunnel(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
        ));
        assert!(!tunnel(
            b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
    }

    #[test]
    fn chunked_large_and_expecting_bodies_stream() {
        let streamed = |input: &[u8]| {
            let (request, rest) = request(input);
            let feed = request.feed.expect("a body that streams");
            assert!(matches!(request.body, RequestBody::Stream(_)));
            (feed, rest)
        };
        // What came of the body with the head stays in the buffer, to be read from there.
        let (feed, rest) =
            streamed(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel");
        assert!(feed.decoder.remaining().is_none() && feed.wanted.is_none());
        assert_eq!(&rest[..], b"5\r\nhel");
        let (feed, _) = streamed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n");
        assert_eq!(feed.decoder.remaining(), Some(65537));
        // 100 Continue is owed only while none of the body has come, and only to HTTP/1.1.
        let expecting =
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n";
        let (feed, _) = streamed(expecting);
        assert!(feed.wanted.is_some());
        let (feed, _) = streamed(&[&expecting[..], b"a"].concat());
        assert!(feed.wanted.is_none());
        let (http10, _) = request(
            b"POST / HTTP/1.0\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\na",
        );
        assert!(http10.feed.is_none());
        // Without a body there is nothing to wait for.
        let (empty, _) = request(b"GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n");
        assert!(empty.feed.is_none());
    }

    #[tokio::test]
    async fn a_100_continue_owed_goes_before_the_final_response_or_not_at_all() {
        let expecting =
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n";
        // The body was read (so the client is owed its interim answer) but the response
        // came before the pump saw that: the whole interim answer goes before the head.
        let (mut wanted, _) = request(expecting);
        let RequestBody::Stream(mut body) = wanted.body else {
            panic!("the body does not stream");
        };
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        let feed = wanted.feed.as_mut().expect("a feed");
        let mut sink = Sink::default();
        feed.settle_expectation(&mut sink).await.unwrap();
        assert_eq!(sink.0, CONTINUE);
        assert!(!feed.cut_short());
        // Nothing is written later: the expectation is settled.
        assert!(feed.wanted.is_none() && feed.interim.is_empty());

        // Never read: no interim answer, and the connection closes after the response.
        let (mut unread, _) = request(expecting);
        let feed = unread.feed.as_mut().expect("a feed");
        let mut sink = Sink::default();
        feed.settle_expectation(&mut sink).await.unwrap();
        assert!(sink.0.is_empty());
        assert!(feed.cut_short());
    }

    #[tokio::test]
    async fn a_client_that_leaves_while_its_body_waits_is_noticed() {
        // The request's body is never read on the upstream side: after its first frame the
        // body waits for the channel (chunked), or for `100 Continue` to be wanted.
        let chunked = &b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"[..];
        let expecting =
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n";
        for (head, sent) in [
            (chunked, &b"5\r\nhello\r\n5\r\nworld\r\n"[..]),
            (expecting, b""),
        ] {
            let (mut request, mut buf) = request(head);
            let (mut client, mut server) = tokio::io::duplex(64 * 1024);
            client.write_all(sent).await.unwrap();
            drop(client);
            let feed = request.feed.as_mut().expect("a feed");
            let pumped =
                tokio::time::timeout(Duration::from_secs(5), feed.pump(&mut server, &mut buf))
                    .await
                    .expect("the client's leaving went unnoticed");
            assert!(pumped.is_err(), "{}", String::from_utf8_lossy(head));
            // The upstream side's end of the body was there all along.
            drop(request.body);
        }
    }

    #[test]
    fn every_target_form_is_taken_with_its_method() {
        for input in [
            &b"GET /a?b HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET http://a/b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
        ] {
            assert!(
                matches!(parse_all(input).0, Parse::Request(_)),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn bad_requests_are_refused() {
        let invalid = |input: &[u8]| match parse_all(input).0 {
            Parse::Invalid(error) => error,
            _ => panic!("accepted: {}", String::from_utf8_lossy(input)),
        };
        for input in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n",
            b"NOT A REQUEST\r\n\r\n",
            // Targets in a form their method may not use (RFC 9112 §3.2).
            b"GET noslash HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET a:80 HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"CONNECT http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(
                invalid(input),
                OwnError::BadRequest,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 1100));
        assert_eq!(invalid(&big), OwnError::HeaderTooLarge);
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(invalid(&big), OwnError::HeaderTooLarge);
    }

    async fn written(response: Response<ResponseBody>, asked: Asked, keep: bool) -> (String, bool) {
        let (mut sink, mut buf) = (Sink::default(), BytesMut::new());
        let mut out = Vec::new();
        let kept = write_response(
            &mut sink, &mut buf, &mut None, &mut out, response, asked, keep,
        )
        .await
        .unwrap();
        (String::from_utf8(sink.0).unwrap(), kept)
    }

    fn own(status: StatusCode) -> Response<ResponseBody> {
        let mut response = Response::new(ResponseBody::own("oops\n", None));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert("x-shoal-error", HeaderValue::from_static("test"));
        response
    }

    const HTTP11: Asked = Asked {
        head: false,
        version: Version::HTTP_11,
        tunnel: false,
    };

    #[tokio::test]
    async fn responses_get_a_length_a_date_and_the_connection_they_leave() {
        let (text, kept) = written(own(StatusCode::NOT_FOUND), HTTP11, true).await;
        assert!(kept);
        assert!(
            text.starts_with("HTTP/1.1 404 Not Found\r\nx-shoal-error: test\r\ndate: "),
            "{text}"
        );
        assert!(
            text.ends_with(" GMT\r\ncontent-length: 5\r\n\r\noops\n"),
            "{text}"
        );

        let (text, kept) = written(own(StatusCode::BAD_GATEWAY), HTTP11, false).await;
        assert!(!kept);
        assert!(
            text.contains("\r\nconnection: close\r\n\r\noops\n"),
            "{text}"
        );

        let http10 = Asked {
            version: Version::HTTP_10,
            ..HTTP11
        };
        let (text, _) = written(own(StatusCode::OK), http10, true).await;
        assert!(text.contains("\r\nconnection: keep-alive\r\n"), "{text}");

        let mut announced = own(StatusCode::OK);
        announced.headers_mut().insert(
            header::TRAILER,
            http::HeaderValue::from_static("x-checksum"),
        );
        let (text, _) = written(announced, HTTP11, true).await;
        assert!(!text.contains("trailer"), "{text}");
    }

    #[tokio::test]
    async fn bodiless_responses_have_no_body() {
        let head = Asked {
            head: true,
            ..HTTP11
        };
        let (text, kept) = written(own(StatusCode::OK), head, true).await;
        assert!(kept);
        assert!(text.ends_with("GMT\r\n\r\n"), "{text}");
        for status in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED] {
            let (text, _) = written(own(status), HTTP11, true).await;
            assert!(text.ends_with("GMT\r\n\r\n"), "{text}");
            assert!(!text.contains("content-length"), "{text}");
        }
        // An upstream's length on a 204 is not passed on.
        let mut response = own(StatusCode::NO_CONTENT);
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        let (text, _) = written(response, HTTP11, true).await;
        assert!(!text.contains("content-length"), "{text}");
    }

    #[tokio::test]
    async fn a_tunnels_answer_is_its_head_alone() {
        let tunnel = Asked {
            tunnel: true,
            ..HTTP11
        };
        let mut response = own(StatusCode::OK);
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        let (text, _) = written(response, tunnel, false).await;
        assert!(text.ends_with("GMT\r\n\r\n"), "{text}");
        assert!(text.contains("\r\nconnection: upgrade\r\n"), "{text}");
        assert!(
            !text.contains("close") && !text.contains("length"),
            "{text}"
        );
    }

    #[test]
    fn stray_line_ends_are_not_a_request() {
        assert!(between_requests(b""));
        assert!(between_requests(b"\r\n"));
        assert!(!between_requests(b"\r\nG"));
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0, 7, 10, 65536, u64::MAX] {
            assert_eq!(itoa_u64(n, &mut [0; 20]), n.to_string().as_bytes());
        }
    }
}
