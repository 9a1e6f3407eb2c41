//! shoal's HTTP/1.1 client to upstreams. The common exchange, a request whose body is empty
//! or held whole, is written by the request's own task straight into a pooled connection,
//! and the response head is parsed where it was read, its header values sharing the read
//! buffer: no connection task, no hand-off between tasks. Profiles showed hyper's client
//! (its connection task, its channels and its head parse) taking a third of the proxy's
//! instructions per request.
//!
//! A request that streams its body or asks for an Upgrade goes through hyper's client
//! instead, which writes the body while reading the response and hands over the upgraded
//! socket. Once hyper is done with a connection that is not a tunnel, and its response
//! body was read to its end, it goes back to the pool ([`Handback`]).

use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use smallvec::SmallVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::body::RequestBody;
use crate::decode::{DecodeError, Decoded, Decoder, MAX_CHUNK_LINE};
use crate::headers::{self, tokens, Added, KEEP_ALIVE, PROXY_CONNECTION};
use crate::pool::Pool;

/// The largest response head or trailer section accepted, as a request head's default limit
/// (`max_request_header_bytes`); Envoy's `max_response_headers_kb` is 60 KiB, nginx's and
/// HAProxy's buffers smaller still. A larger head is a 502: passed on, it is more than
/// clients take (curl stops at 100 KB a field, HTTP/2 clients at 64 KiB a list).
const MAX_HEAD: usize = 64 * 1024;
/// Header fields accepted in a response head, as hyper's client.
const MAX_HEADERS: usize = 100;
/// Fields whose places are noted without an allocation; a head with more allocates.
const FIELDS_INLINE: usize = 32;
/// Room made for each read: a small response arrives whole in one.
const READ_SIZE: usize = 16 * 1024;

/// Errors of the upstream side; the body's error type, too.
pub(crate) type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Why an exchange with an upstream failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("the upstream closed the connection before its response was complete")]
    Closed,
    #[error("malformed response from the upstream: {0}")]
    Malformed(&'static str),
    #[error(
        "response head or trailers over {MAX_HEAD} bytes, or chunk-size line over {MAX_CHUNK_LINE}"
    )]
    TooLarge,
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
}

impl From<DecodeError> for ClientError {
    fn from(error: DecodeError) -> ClientError {
        match error {
            DecodeError::Malformed(what) => ClientError::Malformed(what),
            DecodeError::TooLarge => ClientError::TooLarge,
        }
    }
}

impl ClientError {
    /// The error of the request's own body, when that is what failed as hyper's client
    /// read it: the client sent a malformed body, went away in the middle of it or stalled,
    /// which says nothing about the upstream.
    pub(crate) fn client_body(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // hyper marks an error of the body it was given as the user's, with that error as
        // its cause.
        match self {
            ClientError::Hyper(e) if e.is_user() => std::error::Error::source(e),
            _ => None,
        }
    }
}

/// A failed exchange.
pub(crate) struct Failed {
    pub(crate) error: ClientError,
    /// None of the request reached the upstream: it can go again on another connection.
    pub(crate) unsent: bool,
}

/// One keep-alive connection to an upstream.
pub(crate) struct Connection {
    stream: TcpStream,
    /// Bytes read and not yet consumed.
    read: BytesMut,
    /// The request being written; kept to reuse its allocation.
    write: Vec<u8>,
}

impl Connection {
    pub(crate) fn new(stream: TcpStream) -> Connection {
        Connection {
            stream,
            read: BytesMut::new(),
            write: Vec::new(),
        }
    }

    /// Whether an idle connection can take a request: nothing arrived on it since its last
    /// response, not even the end of the stream. The last read of that response drained
    /// the socket and cleared its readiness ([`Connection::poll_fill`]), so as long as the
    /// runtime has seen no event on it since, no syscall is needed to tell; after an event
    /// the socket is read to see what came.
    pub(crate) fn is_open(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads what the socket has into `read`; 0 at the end of the stream. A read that
    /// leaves room in the buffer has drained the socket, and the runtime clears its
    /// readiness then (reading again would only return EAGAIN).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_SIZE / 4 {
            self.read.reserve(READ_SIZE);
        }
        std::pin::pin!(self.stream.read_buf(&mut self.read)).poll(cx)
    }

    /// Reads more, failing at the end of the stream.
    async fn fill(&mut self) -> Result<(), ClientError> {
        match poll_fn(|cx| self.poll_fill(cx)).await? {
            0 => Err(ClientError::Closed),
            _ => Ok(()),
        }
    }

    /// Writes the request and reads the response head. The body is read as the returned
    /// response's body is polled.
    async fn exchange(
        mut self,
        parts: &Parts,
        added: &Added,
        body: &RequestBody,
    ) -> Result<Response<UpstreamBody>, Failed> {
        encode(parts, added, body, &mut self.write);
        // Only a write that took nothing leaves the request unsent.
        let written = match self.stream.write(&self.write).await {
            Ok(0) => {
                return Err(Failed {
                    error: ClientError::Closed,
                    unsent: true,
                })
            }
            Ok(n) => n,
            Err(error) => {
                return Err(Failed {
                    error: error.into(),
                    unsent: true,
                })
            }
        };
        let asked = Asked::of(parts);
        let sent = if written < self.write.len() {
            self.write_rest(written).await
        } else {
            Ok(true)
        };
        // The copy of a large body is not kept for the connection's idle life.
        if self.write.capacity() > READ_SIZE {
            self.write = Vec::new();
        }
        let whole = matches!(sent, Ok(true));
        let response = match sent {
            Ok(_) => self.read_response(asked).await,
            // An upstream that answered and closed without reading the rest reset the
            // connection, and the answer may still be there to read.
            Err(error) => self.read_response(asked).await.map_err(|_| error.into()),
        };
        response
            .map(|mut response| {
                // Half a request leaves the connection in no state for another.
                response.body_mut().reusable &= whole;
                response.map(UpstreamBody::Relay)
            })
            .map_err(|error| Failed {
                error,
                unsent: false,
            })
    }

    /// Writes the request from `from` on, unless the upstream answers first, as one that
    /// refuses a body without reading it does (hyper's client reads while it writes too):
    /// `Ok(false)`, and the answer is for [`Self::read_response`].
    async fn write_rest(&mut self, from: usize) -> io::Result<bool> {
        let (mut reader, mut writer) = self.stream.split();
        let mut byte = [0u8; 1];
        tokio::select! {
            biased;
            sent = writer.write_all(&self.write[from..]) => sent.map(|()| true),
            answered = reader.peek(&mut byte) => answered.map(|_| false),
        }
    }

    /// Reads until a final response head, skipping interim (1xx) ones.
    async fn read_response(mut self, asked: Asked) -> Result<Response<Relay>, ClientError> {
        loop {
            match self.parse_head()? {
                Some(head) if head.status.is_informational() => {
                    if head.status == StatusCode::SWITCHING_PROTOCOLS {
                        return Err(ClientError::Malformed(
                            "101 Switching Protocols to a request without Upgrade",
                        ));
                    }
                }
                Some(head) => return head.into_response(self, asked),
                None if self.read.len() >= MAX_HEAD => return Err(ClientError::TooLarge),
                None => self.fill().await?,
            }
        }
    }

    /// Parses one response head off the front of `read`, `None` while it is incomplete.
    fn parse_head(&mut self) -> Result<Option<Head>, ClientError> {
        let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let parse = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            &self.read,
            &mut slots,
        );
        let len = match parse {
            Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
                return Err(ClientError::TooLarge)
            }
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ClientError::Malformed("more than 100 header fields"))
            }
            Err(_) => return Err(ClientError::Malformed("invalid response head")),
        };
        let status = StatusCode::from_u16(parsed.code.unwrap_or(0))
            .map_err(|_| ClientError::Malformed("invalid status code"))?;
        let version = if parsed.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // Where each field sits (name start and end, value start and end), so the values
        // can share the head's bytes once it is split off the buffer instead of each being
        // copied. A head is at most MAX_HEAD bytes (checked above), so offsets fit in u32.
        let base = self.read.as_ptr() as usize;
        let offset = |part: &[u8]| (part.as_ptr() as usize - base) as u32;
        // Only the fields there are get written: zeroing an array of the maximum count
        // (1.6 KB) wrote to memory that was not in the cache, on every response.
        let fields: SmallVec<[(u32, u32, u32, u32); FIELDS_INLINE]> = parsed
            .headers
            .iter()
            .map(|field| {
                let (name, value) = (offset(field.name.as_bytes()), offset(field.value));
                (
                    name,
                    name + field.name.len() as u32,
                    value,
                    value + field.value.len() as u32,
                )
            })
            .collect();
        let bytes = self.read.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(fields.len());
        let mut framing = Framing::default();
        for &(name_start, name_end, value_start, value_end) in &fields {
            let name = HeaderName::from_bytes(&bytes[name_start as usize..name_end as usize])
                .map_err(|_| ClientError::Malformed("invalid header name"))?;
            let value = HeaderValue::from_maybe_shared(
                bytes.slice(value_start as usize..value_end as usize),
            )
            .map_err(|_| ClientError::Malformed("invalid header value"))?;
            framing.note(&name, &value);
            // Left out here rather than removed again with the other hop-by-hop fields:
            // each removal from the map moves the fields after it.
            if only_framing(&name, &value) {
                continue;
            }
            headers.append(name, value);
        }
        Ok(Some(Head {
            status,
            version,
            headers,
            framing,
        }))
    }
}

/// Serialises a request with an empty or whole body, body included: the client's fields,
/// then those this hop adds.
fn encode(parts: &Parts, added: &Added, body: &RequestBody, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    added.write(out);
    let body = match body {
        RequestBody::Buffered(body) => Some(body),
        _ => None,
    };
    if let Some(body) = body {
        if !parts.headers.contains_key(header::CONTENT_LENGTH) {
            out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
    if let Some(body) = body {
        out.extend_from_slice(body);
    }
}

/// Sends the request (`parts` and `body`) on `connection`; the response comes back once its
/// head is in. shoal's own client borrows the request, so it stays where the caller keeps
/// it, to be sent again if need be: every move of it was a copy of a few hundred bytes into
/// memory the request had not touched yet. hyper's client takes it, leaving `body` `None`
/// unless it hands the request back unsent. A `body` already `None` is not sent again.
pub(crate) async fn send(
    connection: Connection,
    pool: &Arc<Pool>,
    parts: &mut Parts,
    added: &Added,
    body: &mut Option<RequestBody>,
    upgrade: bool,
) -> Result<Response<UpstreamBody>, Failed> {
    let own = body
        .as_ref()
        .filter(|held| !upgrade && !matches!(held, RequestBody::Stream(_)));
    if let Some(held) = own {
        return connection.exchange(parts, added, held).await;
    }
    // Boxed: hyper's state would otherwise grow every request's future by twice the size of
    // the exchange on shoal's own client, which most requests take.
    let handback = (!upgrade).then(|| Arc::new(Handback::to(pool)));
    Box::pin(through_hyper(connection, parts, added, body, handback)).await
}

/// Sends the request on `connection` with hyper's client. `handback`, for a request that
/// cannot become a tunnel, takes the connection back to its pool after the exchange.
async fn through_hyper(
    connection: Connection,
    parts: &mut Parts,
    added: &Added,
    body: &mut Option<RequestBody>,
    handback: Option<Arc<Handback>>,
) -> Result<Response<UpstreamBody>, Failed> {
    let Some(taken) = body.take() else {
        return Err(Failed {
            error: ClientError::Closed,
            unsent: false,
        });
    };
    // hyper writes the fields of the map alone. Inserted, not appended: a request handed
    // back unsent comes here again with them already in.
    added.put_into(&mut parts.headers);
    // Parts without a header or an extension: nothing is allocated for them.
    let (empty, ()) = Request::new(()).into_parts();
    let request = Request::from_parts(std::mem::replace(parts, empty), taken);
    let handshake = http1::Builder::new()
        .handshake(TokioIo::new(connection.stream))
        .await;
    let (mut sender, connection) = match handshake {
        Ok(pair) => pair,
        Err(error) => {
            hand_back(request, parts, body);
            return Err(Failed {
                error: error.into(),
                unsent: true,
            });
        }
    };
    match handback.clone() {
        Some(handback) => crate::timeslice::spawn(async move {
            // Once the exchange is over and the sender gone, hyper hands the socket back
            // without closing it.
            match connection.without_shutdown().await {
                Ok(parts) if parts.read_buf.is_empty() => {
                    handback.connection(Connection::new(parts.io.into_inner()));
                }
                Ok(_) => {}
                Err(error) => tracing::debug!(%error, "upstream connection ended with an error"),
            }
        }),
        None => crate::timeslice::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        }),
    };
    match sender.try_send_request(request).await {
        Ok(response)
            if response
                .headers()
                .get_all(header::TRANSFER_ENCODING)
                .iter()
                .any(headers::is_coded) =>
        {
            // As on shoal's own client: hyper decodes only chunked.
            Err(Failed {
                error: ClientError::Malformed("a transfer coding other than chunked"),
                unsent: false,
            })
        }
        Ok(mut response) => {
            // hyper's client checks that repeated lengths agree, and passes them on as they
            // came.
            Framing::of_lengths(response.headers()).merge_lengths(response.headers_mut());
            if let Some(handback) = &handback {
                if keeps_alive(&response) {
                    handback.keep_alive();
                }
            }
            Ok(response.map(|body| UpstreamBody::Hyper(HyperBody::new(body, handback))))
        }
        Err(mut error) => {
            let request = error.take_message();
            let unsent = request.is_some();
            if let Some(request) = request {
                hand_back(request, parts, body);
            }
            Err(Failed {
                unsent,
                error: error.into_error().into(),
            })
        }
    }
}

/// Whether an upstream's response leaves its connection open for another request: HTTP/1.1
/// without `close`, not a switch of protocols, and with a body that does not end with the
/// connection.
fn keeps_alive<B>(response: &Response<B>) -> bool {
    let framing = Framing::of(response.headers());
    let status = response.status();
    let framed = framing.length.is_some()
        || framing.transfer_encoding
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    response.version() == Version::HTTP_11
        && !framing.close
        && framed
        && status != StatusCode::SWITCHING_PROTOCOLS
}

/// Takes a connection hyper's client drove back to its endpoint's pool, once hyper has
/// finished with it and the response body has been read to its end (in either order), if
/// the upstream keeps it alive. Until all three are known it holds what it has; dropped
/// short of them, the connection closes.
struct Handback {
    pool: Arc<Pool>,
    state: Mutex<Handing>,
}

#[derive(Default)]
struct Handing {
    keep_alive: bool,
    body_read: bool,
    connection: Option<Connection>,
}

impl Handback {
    fn to(pool: &Arc<Pool>) -> Handback {
        Handback {
            pool: pool.clone(),
            state: Mutex::default(),
        }
    }

    fn keep_alive(&self) {
        self.update(|handing| handing.keep_alive = true);
    }

    fn body_read(&self) {
        self.update(|handing| handing.body_read = true);
    }

    fn connection(&self, connection: Connection) {
        self.update(|handing| handing.connection = Some(connection));
    }

    fn update(&self, change: impl FnOnce(&mut Handing)) {
        // A panic elsewhere while it was held leaves nothing this could break.
        let mut handing = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        change(&mut handing);
        if handing.keep_alive && handing.body_read {
            if let Some(connection) = handing.connection.take() {
                self.pool.checkin(connection, Instant::now());
            }
        }
    }
}

/// A response body hyper's client reads, which tells its [`Handback`] when it has been read
/// to its end.
pub(crate) struct HyperBody {
    body: Incoming,
    handback: Option<Arc<Handback>>,
    ended: bool,
}

impl HyperBody {
    fn new(body: Incoming, handback: Option<Arc<Handback>>) -> HyperBody {
        HyperBody {
            body,
            handback,
            ended: false,
        }
    }
}

impl Drop for HyperBody {
    fn drop(&mut self) {
        if let Some(handback) = &self.handback {
            if self.ended || self.body.is_end_stream() {
                handback.body_read();
            }
        }
    }
}

/// Puts a request hyper's client did not send back where [`send`] took it from.
fn hand_back(request: Request<RequestBody>, parts: &mut Parts, body: &mut Option<RequestBody>) {
    let (kept_parts, kept_body) = request.into_parts();
    *parts = kept_parts;
    *body = Some(kept_body);
}

/// A parsed response head.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
}

impl Head {
    /// The response, its body framed as RFC 9112 §6.3 says.
    fn into_response(
        self,
        connection: Connection,
        asked: Asked,
    ) -> Result<Response<Relay>, ClientError> {
        let Head {
            status,
            version,
            mut headers,
            framing,
        } = self;
        let mut reusable = !framing.close && (version == Version::HTTP_11 || framing.keep_alive);
        let state =
            if asked.head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
            {
                Decoder::Done
            } else if asked.connect && status.is_success() {
                // The connection is a tunnel now, which a request without Upgrade never asks
                // for: it is not read as a body, nor reused.
                reusable = false;
                Decoder::Done
            } else if framing.coded {
                // nginx answers this 502 too ("upstream sent unknown Transfer-Encoding").
                return Err(ClientError::Malformed(
                    "a transfer coding other than chunked",
                ));
            } else if framing.transfer_encoding {
                // With a length as well, neither is to be trusted for what follows, and the
                // length must not go on (RFC 9112 §6.3); HTTP/1.0 has no transfer codings.
                reusable &= framing.length.is_none() && version == Version::HTTP_11;
                headers.remove(header::CONTENT_LENGTH);
                if framing.chunked {
                    Decoder::chunked()
                } else {
                    Decoder::UntilClose
                }
            } else if let Some(error) = framing.invalid_length {
                return Err(ClientError::Malformed(error));
            } else {
                match framing.length {
                    Some(n) => Decoder::length(n),
                    None => Decoder::UntilClose,
                }
            };
        reusable &= !matches!(state, Decoder::UntilClose);
        if !framing.transfer_encoding {
            framing.merge_lengths(&mut headers);
        }
        let mut response = Response::new(Relay {
            connection: Some(connection),
            state,
            reusable,
        });
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

/// What about the request decides how its response is framed.
#[derive(Clone, Copy)]
struct Asked {
    head: bool,
    connect: bool,
}

impl Asked {
    fn of(parts: &Parts) -> Asked {
        Asked {
            head: parts.method == Method::HEAD,
            connect: parts.method == Method::CONNECT,
        }
    }
}

/// What the head says about the body and the connection.
#[derive(Default)]
struct Framing {
    length: Option<u64>,
    /// What is wrong with the Content-Length, an error only when it frames the body.
    invalid_length: Option<&'static str>,
    /// The length came more than once (a list, or several fields).
    length_repeated: bool,
    transfer_encoding: bool,
    /// `chunked` is the last transfer coding.
    chunked: bool,
    /// A transfer coding other than chunked: shoal does not decode it, and cannot pass it
    /// on as it came (the client side frames the body anew, and HTTP/2 has no codings).
    coded: bool,
    close: bool,
    keep_alive: bool,
}

impl Framing {
    /// The framing of all of `headers`.
    fn of(headers: &HeaderMap) -> Framing {
        let mut framing = Framing::default();
        for (name, value) in headers {
            framing.note(name, value);
        }
        framing
    }

    /// The framing of `headers`' Content-Length fields alone.
    fn of_lengths(headers: &HeaderMap) -> Framing {
        let mut framing = Framing::default();
        for value in headers.get_all(header::CONTENT_LENGTH) {
            framing.note(&header::CONTENT_LENGTH, value);
        }
        framing
    }

    /// Repeated equal lengths go on as one (RFC 9112 §6.3 lets a recipient merge them, and
    /// HTTP/2 clients refuse a repeated one); differing ones, which only a bodiless answer
    /// gets this far with, say nothing and go.
    fn merge_lengths(&self, headers: &mut HeaderMap) {
        if !self.length_repeated {
            return;
        }
        match (self.length, self.invalid_length) {
            (Some(length), None) => {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            }
            _ => {
                headers.remove(header::CONTENT_LENGTH);
            }
        }
    }

    fn note(&mut self, name: &HeaderName, value: &HeaderValue) {
        if name == header::CONTENT_LENGTH {
            self.length_repeated |= self.length.is_some() || self.invalid_length.is_some();
            // A list of equal values is one length (RFC 9110 §8.6); differing ones are an error.
            for part in value.as_bytes().split(|&b| b == b',') {
                let part = part.trim_ascii();
                let length = std::str::from_utf8(part)
                    .ok()
                    .filter(|digits| {
                        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
                    })
                    .and_then(|digits| digits.parse::<u64>().ok());
                match length {
                    None => self.invalid_length = Some("invalid Content-Length"),
                    Some(length) if self.length.is_some_and(|seen| seen != length) => {
                        self.invalid_length = Some("conflicting Content-Length");
                        self.length_repeated = true;
                    }
                    Some(length) => {
                        self.length_repeated |= self.length.is_some();
                        self.length = Some(length);
                    }
                }
            }
        } else if name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
            self.chunked = tokens(value)
                .last()
                .is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked"));
            self.coded |= headers::is_coded(value);
        } else if name == header::CONNECTION {
            for token in tokens(value) {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
}

/// Whether a response field is hop-by-hop and says nothing beyond what [`Framing`] keeps of
/// it: Transfer-Encoding, Keep-Alive, Proxy-Connection, and a Connection with only `close` or
/// `keep-alive` (one that names other fields stays, for those to be removed with it).
fn only_framing(name: &HeaderName, value: &HeaderValue) -> bool {
    if name == header::CONNECTION {
        tokens(value).all(|token| {
            token.eq_ignore_ascii_case(b"close") || token.eq_ignore_ascii_case(b"keep-alive")
        })
    } else {
        name == header::TRANSFER_ENCODING || name == KEEP_ALIVE || name == PROXY_CONNECTION
    }
}

/// A response body from an upstream.
pub(crate) enum UpstreamBody {
    Relay(Relay),
    Hyper(HyperBody),
}

impl UpstreamBody {
    /// The connection, when the body was read to its end and the connection can take
    /// another request.
    pub(crate) fn take_reusable(&mut self) -> Option<Connection> {
        match self {
            UpstreamBody::Relay(relay) => relay.take_reusable(),
            UpstreamBody::Hyper(_) => None,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            UpstreamBody::Relay(relay) => relay.poll_frame(cx).map_err(Into::into),
            UpstreamBody::Hyper(hyper) => {
                let polled = Pin::new(&mut hyper.body).poll_frame(cx);
                hyper.ended |= matches!(polled, Poll::Ready(None));
                polled.map_err(Into::into)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Relay(relay) => relay.state.is_done(),
            UpstreamBody::Hyper(hyper) => hyper.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Relay(relay) => match relay.state.remaining() {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
            UpstreamBody::Hyper(hyper) => hyper.body.size_hint(),
        }
    }
}

/// A response body read from the connection by whoever polls it.
pub(crate) struct Relay {
    connection: Option<Connection>,
    state: Decoder,
    /// The connection may take another request once the body has been read.
    reusable: bool,
}

impl Relay {
    fn take_reusable(&mut self) -> Option<Connection> {
        let done = self.state.is_done();
        // Bytes after the response would be the start of an answer nobody asked for.
        let clean = self.connection.as_ref().is_some_and(|c| c.read.is_empty());
        if done && clean && self.reusable {
            self.connection.take()
        } else {
            None
        }
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientError>>> {
        match self.poll_step(cx) {
            Poll::Ready(Err(error)) => {
                self.connection = None;
                self.state = Decoder::Done;
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(Ok(frame)) => Poll::Ready(frame.map(Ok)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_step(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Frame<Bytes>>, ClientError>> {
        loop {
            let Some(connection) = self.connection.as_mut() else {
                return Poll::Ready(Ok(None));
            };
            match self.state.decode(&mut connection.read, MAX_HEAD)? {
                Decoded::Frame(frame) => return Poll::Ready(Ok(Some(frame))),
                Decoded::End => return Poll::Ready(Ok(None)),
                Decoded::More => {}
            }
            if ready!(connection.poll_fill(cx))? == 0 && !self.state.end_of_input() {
                return Poll::Ready(Err(ClientError::Closed));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use http_body_util::BodyExt;
    use shoal_config::Timeouts;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    use super::*;

    /// An upstream that answers each request on its one connection with the next of
    /// `answers`, then closes; it returns the requests it read.
    async fn upstream(answers: &[&'static [u8]]) -> (SocketAddr, JoinHandle<Vec<Vec<u8>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let answers = answers.to_vec();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut requests = Vec::new();
            let mut pending = Vec::new();
            for answer in answers {
                let request = loop {
                    if let Some(length) = complete_request(&pending) {
                        break pending.drain(..length).collect::<Vec<u8>>();
                    }
                    let mut chunk = [0u8; 4096];
                    let n = stream.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "the client closed before its request was complete");
                    pending.extend_from_slice(&chunk[..n]);
                };
                requests.push(request);
                stream.write_all(answer).await.unwrap();
            }
            requests
        });
        (address, task)
    }

    /// The length of the first whole request in `bytes` (head and Content-Length body).
    fn complete_request(bytes: &[u8]) -> Option<usize> {
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let mut request = httparse::Request::new(&mut slots);
        let httparse::Status::Complete(head) = request.parse(bytes).unwrap() else {
            return None;
        };
        let body = request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map_or(0, |h| {
                std::str::from_utf8(h.value).unwrap().parse().unwrap()
            });
        (bytes.len() >= head + body).then_some(head + body)
    }

    async fn connect(address: SocketAddr) -> Connection {
        Connection::new(TcpStream::connect(address).await.unwrap())
    }

    fn get(method: Method) -> Request<RequestBody> {
        let mut request = Request::new(RequestBody::Empty);
        *request.method_mut() = method;
        *request.uri_mut() = "/path?q=1".parse().unwrap();
        request
            .headers_mut()
            .insert(header::HOST, HeaderValue::from_static("example"));
        request
    }

    /// Reads the body to its end: its data, its trailers, and the connection if reusable.
    async fn read_body(
        mut body: UpstreamBody,
    ) -> Result<(Vec<u8>, Option<HeaderMap>, Option<Connection>), BodyError> {
        let (mut data, mut trailers) = (Vec::new(), None);
        while let Some(frame) = body.frame().await {
            match frame?.into_data() {
                Ok(bytes) => data.extend_from_slice(&bytes),
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        Ok((data, trailers, body.take_reusable()))
    }

    async fn exchange(
        connection: Connection,
        request: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, ClientError> {
        let (parts, body) = request.into_parts();
        connection
            .exchange(&parts, &Added::default(), &body)
            .await
            .map_err(|failed| failed.error)
    }

    #[tokio::test]
    async fn a_length_body_is_relayed_and_its_connection_reused() {
        let (address, upstream) = upstream(&[
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-One: a\r\n\r\nhello",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 4\r\n\r\ngone",
        ])
        .await;
        let response = exchange(connect(address).await, get(Method::GET))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-one"], "a");
        assert_eq!(response.body().size_hint().exact(), Some(5));
        let (data, _, connection) = read_body(response.into_body()).await.unwrap();
        assert_eq!(data, b"hello");
        let connection = connection.expect("the connection is reusable");
        assert!(connection.is_open());

        let response = exchange(connection, get(Method::GET)).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let (data, _, _) = read_body(response.into_body()).await.unwrap();
        assert_eq!(data, b"gone");
        let requests = upstream.await.unwrap();
        assert_eq!(
            requests[0],
            b"GET /path?q=1 HTTP/1.1\r\nhost: example\r\n\r\n".to_vec()
        );
        assert_eq!(requests.len(), 2);
    }

    #[tokio::test]
    async fn a_whole_body_goes_with_its_length() {
        let (address, upstream) = upstream(&[b"HTTP/1.1 204 No Content\r\n\r\n"]).await;
        let mut request = get(Method::POST);
        *request.body_mut() = RequestBody::Buffered(Bytes::from_static(b"abc"));
        let response = exchange(connect(address).await, request).await.unwrap();
        let (data, _, connection) = read_body(response.into_body()).await.unwrap();
        assert!(data.is_empty());
        assert!(connection.is_some());
        assert_eq!(
            upstream.await.unwrap()[0],
            b"POST /path?q=1 HTTP/1.1\r\nhost: example\r\ncontent-length: 3\r\n\r\nabc".to_vec()
        );
    }

    #[tokio::test]
    async fn an_idle_connection_keeps_no_copy_of_a_large_body() {
        let (address, upstream) = upstream(&[b"HTTP/1.1 204 No Content\r\n\r\n"]).await;
        let mut request = get(Method::PUT);
        *request.body_mut() = RequestBody::Buffered(Bytes::from(vec![b'x'; 60_000]));
        let response = exchange(connect(address).await, request).await.unwrap();
        let (_, _, connection) = read_body(response.into_body()).await.unwrap();
        assert!(connection.expect("reusable").write.capacity() <= READ_SIZE);
        assert_eq!(upstream.await.unwrap()[0].len(), 60_000 + 64);
    }

    #[tokio::test]
    async fn a_chunked_body_is_decoded_with_its_trailers() {
        let (address, _upstream) =
            upstream(&[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n"])
            .await;
        let response = exchange(connect(address).await, get(Method::GET))
            .await
            .unwrap();
        let (data, trailers, connection) = read_body(response.into_body()).await.unwrap();
        assert_eq!(data, b"hello world");
        assert_eq!(trailers.expect("trailers")["x-sum"], "11");
        assert!(connection.is_some());
    }

    #[tokio::test]
    async fn a_body_without_length_runs_to_the_close() {
        let (address, _upstream) = upstream(&[b"HTTP/1.0 200 OK\r\n\r\nuntil the end"]).await;
        let response = exchange(connect(address).await, get(Method::GET))
            .await
            .unwrap();
        assert_eq!(response.version(), Version::HTTP_10);
        let (data, _, connection) = read_body(response.into_body()).await.unwrap();
        assert_eq!(data, b"until the end");
        assert!(
            connection.is_none(),
            "a close-delimited body ends its connection"
        );
    }

    #[tokio::test]
    async fn interim_responses_are_skipped() {
        let (address, _upstream) = upstream(&[
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
              HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        ])
        .await;
        let response = exchange(connect(address).await, get(Method::GET))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(!response.headers().contains_key("link"));
        let (data, _, _) = read_body(response.into_body()).await.unwrap();
        assert_eq!(data, b"ok");
    }

    #[tokio::test]
    async fn a_head_response_has_no_body_whatever_its_length_says() {
        let (address, _upstream) =
            upstream(&[b"HTTP/1.1 200 OK\r\ncontent-length: 42\r\n\r\n"]).await;
        let response = exchange(connect(address).await, get(Method::HEAD))
            .await
            .unwrap();
        assert_eq!(response.headers()[header::CONTENT_LENGTH], "42");
        assert!(response.body().is_end_stream());
        let (data, _, connection) = read_body(response.into_body()).await.unwrap();
        assert!(data.is_empty());
        assert!(connection.is_some());
    }

    #[tokio::test]
    async fn connection_close_ends_the_connection_after_the_body() {
        let (address, _upstream) =
            upstream(&[b"HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 2\r\n\r\nok"])
                .await;
        let response = exchange(connect(address).await, get(Method::GET))
            .await
            .unwrap();
        let (data, _, connection) = read_body(response.into_body()).await.unwrap();
        assert_eq!(data, b"ok");
        assert!(connection.is_none());
    }

    #[tokio::test]
    async fn hop_by_hop_fields_that_only_frame_are_left_out() {
        let (address, _upstream) = upstream(&[
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
              Proxy-Connection: keep-alive\r\nTransfer-Encoding: chunked\r\nX-Kept: 1\r\n\r\n\
              2\r\nok\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: x-private, close\r\nX-Private: 1\r\n\
              content-length: 0\r\n\r\n",
        ])
        .await;
        let response = exchange(connect(address).await, get(Method::GET))
            .await
            .unwrap();
        let names: Vec<&str> = response.headers().keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-kept"]);
        let (data, _, connection) = read_body(response.into_body()).await.unwrap();
        assert_eq!(data, b"ok");

        let response = exchange(connection.expect("reusable"), get(Method::GET))
            .await
            .unwrap();
        // One that names another field stays, for the two to be removed together.
        assert!(response.headers().contains_key(header::CONNECTION));
        assert!(response.headers().contains_key("x-private"));
        let (_, _, connection) = read_body(response.into_body()).await.unwrap();
        assert!(connection.is_none(), "its close was noted");
    }

    #[tokio::test]
    async fn malformed_heads_are_refused() {
        for answer in [
            &b"HTTP/1.1 2x0 OK\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nx",
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: +1\r\n\r\nx",
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
            // Codings shoal does not decode, which its client side would frame anew.
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nxyz",
        ] {
            let (address, _upstream) = upstream(&[answer]).await;
            let error = exchange(connect(address).await, get(Method::GET)).await;
            assert!(
                matches!(error, Err(ClientError::Malformed(_))),
                "{:?} was taken",
                String::from_utf8_lossy(answer)
            );
        }
    }

    #[tokio::test]
    async fn a_head_over_the_limit_is_refused() {
        let field = "a".repeat(MAX_HEAD);
        let over = format!("HTTP/1.1 200 OK\r\nx-big: {field}\r\ncontent-length: 2\r\n\r\nok");
        let (address, _upstream) = upstream(&[over.leak().as_bytes()]).await;
        let error = exchange(connect(address).await, get(Method::GET)).await;
        assert!(
            matches!(error, Err(ClientError::TooLarge)),
            "a head over the limit was taken"
        );
        // Just under it passes.
        let field = "a".repeat(MAX_HEAD - 100);
        let under = format!("HTTP/1.1 200 OK\r\nx-big: {field}\r\ncontent-length: 2\r\n\r\nok");
        let (address, _upstream) = upstream(&[under.leak().as_bytes()]).await;
        let response = exchange(connect(address).await, get(Method::GET)).await;
        assert!(response.is_ok(), "{:?}", response.err());
    }

    #[tokio::test]
    async fn malformed_chunks_are_refused() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;a\x01\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5 x\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10000000000000000\r\n",
        ] {
            let (address, _upstream) = upstream(&[answer]).await;
            let response = exchange(connect(address).await, get(Method::GET))
                .await
                .unwrap();
            let error = read_body(response.into_body()).await.err();
            assert!(
                error.is_some_and(|e| e.to_string().contains("chunk")),
                "{:?} was taken",
                String::from_utf8_lossy(answer)
            );
        }
        // Leading zeros and blanks before an extension are fine.
        let (address, _upstream) = upstream(&[
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0005 ;x=\"y\"\r\nhello\r\n0\r\n\r\n",
        ])
        .await;
        let response = exchange(connect(address).await, get(Method::GET))
            .await
            .unwrap();
        let (data, _, _) = read_body(response.into_body()).await.unwrap();
        assert_eq!(data, b"hello");
    }

    #[tokio::test]
    async fn a_length_beside_a_transfer_coding_is_dropped_and_the_connection_too() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"[..],
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ] {
            let (address, _upstream) = upstream(&[answer]).await;
            let response = exchange(connect(address).await, get(Method::GET))
                .await
                .unwrap();
            assert!(!response.headers().contains_key(header::CONTENT_LENGTH));
            let (data, _, connection) = read_body(response.into_body()).await.unwrap();
            assert_eq!(data, b"ok");
            assert!(connection.is_none());
        }
    }

    #[tokio::test]
    async fn a_bodiless_answer_may_carry_any_length() {
        let (address, _upstream) =
            upstream(&[b"HTTP/1.1 304 Not Modified\r\ncontent-length: 1, 2\r\n\r\n"]).await;
        let response = exchange(connect(address).await, get(Method::GET))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert!(!response.headers().contains_key(header::CONTENT_LENGTH));
        assert!(read_body(response.into_body()).await.unwrap().2.is_some());
    }

    #[tokio::test]
    async fn repeated_equal_lengths_go_on_as_one() {
        const ANSWER: &[u8] =
            b"HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\ncontent-length: 3\r\n\r\nabc";
        // shoal's own client, then hyper's (which sends upgrade requests)
        for upgrade in [false, true] {
            let (address, _upstream) = upstream(&[ANSWER]).await;
            let (mut parts, body) = get(Method::GET).into_parts();
            let response = send(
                connect(address).await,
                &Arc::new(Pool::new(address)),
                &mut parts,
                &Added::default(),
                &mut Some(body),
                upgrade,
            )
            .await
            .map_err(|failed| failed.error)
            .unwrap();
            let lengths: Vec<_> = response
                .headers()
                .get_all(header::CONTENT_LENGTH)
                .iter()
                .collect();
            assert_eq!(lengths, ["3"], "upgrade: {upgrade}");
            let (data, _, connection) = read_body(response.into_body()).await.unwrap();
            assert_eq!(data, b"abc");
            // hyper's client keeps its connections to itself
            assert_eq!(connection.is_some(), !upgrade);
        }
    }

    #[tokio::test]
    async fn a_connection_hyper_drove_for_a_streamed_body_goes_back_to_the_pool() {
        let (address, upstream) = upstream(&[
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nyes",
        ])
        .await;
        let pool = Arc::new(Pool::new(address));
        let (frames, receiver) = tokio::sync::mpsc::channel(2);
        frames
            .send(Ok(Some(Frame::data(Bytes::from_static(b"hello")))))
            .await
            .unwrap();
        frames.send(Ok(None)).await.unwrap();
        let body = RequestBody::Stream(crate::body::ClientBody::http1(receiver, Some(5), None));
        let (mut parts, _) = get(Method::POST).into_parts();
        let response = send(
            connect(address).await,
            &pool,
            &mut parts,
            &Added::default(),
            &mut Some(body),
            false,
        )
        .await
        .map_err(|failed| failed.error)
        .unwrap();
        let (data, _, _) = read_body(response.into_body()).await.unwrap();
        assert_eq!(data, b"ok");
        // hyper's connection task hands it back once it has finished.
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while pool.idle() == 0 {
            assert!(Instant::now() < deadline, "the connection never came back");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // The upstream answers on its one connection only.
        let connection = pool.checkout(&Timeouts::default()).await.unwrap();
        let response = exchange(connection, get(Method::GET)).await.unwrap();
        assert_eq!(read_body(response.into_body()).await.unwrap().0, b"yes");
        let requests = upstream.await.unwrap();
        assert!(requests[0].ends_with(b"\r\n\r\nhello"));
    }

    #[test]
    fn only_a_framed_http11_answer_leaves_its_connection_for_another() {
        let answer = |status: u16, version: Version, fields: &[(&str, &str)]| {
            let mut response = Response::new(());
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            *response.version_mut() = version;
            for (name, value) in fields {
                response.headers_mut().append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            response
        };
        let length = [("content-length", "2")];
        assert!(keeps_alive(&answer(200, Version::HTTP_11, &length)));
        assert!(keeps_alive(&answer(
            200,
            Version::HTTP_11,
            &[("transfer-encoding", "chunked")]
        )));
        assert!(keeps_alive(&answer(204, Version::HTTP_11, &[])));
        // Until the connection ends, a switch of protocols, `close`, HTTP/1.0
        assert!(!keeps_alive(&answer(200, Version::HTTP_11, &[])));
        assert!(!keeps_alive(&answer(101, Version::HTTP_11, &length)));
        let close = [("content-length", "2"), ("connection", "keep-alive, close")];
        assert!(!keeps_alive(&answer(200, Version::HTTP_11, &close)));
        assert!(!keeps_alive(&answer(200, Version::HTTP_10, &length)));
    }

    #[tokio::test]
    async fn an_answer_before_the_whole_body_is_passed_on() {
        // An upstream that refuses a body after its head, without reading it: once the
        // socket buffers are full the request cannot be written whole. Whether it then
        // closes (and resets what it did not read) or waits, its answer is the response.
        for close in [true, false] {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let listener = socket.listen(1).unwrap();
            let address = listener.local_addr().unwrap();
            let _upstream = tokio::spawn(async move {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut byte = [0u8; 1];
                    stream.read_exact(&mut byte).await.unwrap();
                    head.push(byte[0]);
                }
                let refusal = b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 4\r\n\r\nbig\n";
                stream.write_all(refusal).await.unwrap();
                if !close {
                    std::future::pending::<()>().await;
                }
            });
            let mut request = get(Method::POST);
            *request.body_mut() = RequestBody::Buffered(Bytes::from(vec![b'x'; 8 << 20]));
            let response = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                exchange(connect(address).await, request),
            )
            .await
            .expect("the answer was not read while the body was being written");
            let response = response.unwrap_or_else(|error| panic!("close: {close}: {error}"));
            assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
            let (data, _, connection) = read_body(response.into_body()).await.unwrap();
            assert_eq!(data, b"big\n");
            assert!(
                connection.is_none(),
                "a connection with half a request is reused"
            );
        }
    }

    #[tokio::test]
    async fn a_tunnel_opened_by_connect_is_neither_read_nor_reused() {
        let (address, _upstream) =
            upstream(&[b"HTTP/1.1 200 Connection Established\r\n\r\ntunnel bytes"]).await;
        let response = exchange(connect(address).await, get(Method::CONNECT))
            .await
            .unwrap();
        let (data, _, connection) = read_body(response.into_body()).await.unwrap();
        assert!(data.is_empty());
        assert!(connection.is_none());
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"[..],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabXY",
        ] {
            let (address, upstream) = upstream(&[answer]).await;
            let response = exchange(connect(address).await, get(Method::GET))
                .await
                .unwrap();
            // The upstream closes once it has answered.
            upstream.await.unwrap();
            assert!(read_body(response.into_body()).await.is_err());
        }
    }

    #[tokio::test]
    async fn a_connection_closed_by_the_upstream_is_not_open() {
        let (address, upstream) =
            upstream(&[b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"]).await;
        let response = exchange(connect(address).await, get(Method::GET))
            .await
            .unwrap();
        let (_, _, connection) = read_body(response.into_body()).await.unwrap();
        let connection = connection.expect("reusable until the upstream closes it");
        upstream.await.unwrap();
        connection.stream.readable().await.unwrap();
        assert!(!connection.is_open());
    }
}
