//! shoal's HTTP/1.1 client to upstreams. The common exchange, a request whose body is empty
//! or held whole, is written by the request's own task straight into a pooled connection,
//! and the response head is parsed where it was read, its header values sharing the read
//! buffer: no connection task, no hand-off between tasks. Profiles showed hyper's client
//! (its connection task, its channels and its head parse) taking a third of the proxy's
//! instructions per request.
//!
//! A request that streams its body or asks for an Upgrade goes through hyper's client
//! instead, which writes the body while reading the response and hands over the upgraded
//! socket. hyper then owns that connection, so it is not pooled again.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::body::RequestBody;

/// The largest response head, chunk-size line or trailer section accepted: hyper's
/// default read buffer limit, which applied before.
const MAX_HEAD: usize = 8192 + 4096 * 100;
/// Header fields accepted in a response head, as hyper's client.
const MAX_HEADERS: usize = 100;
/// Room made for each read: a small response arrives whole in one.
const READ_SIZE: usize = 16 * 1024;
/// A chunk-size line longer than this (extensions included) is refused.
const MAX_CHUNK_LINE: usize = 4096;

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
    #[error("response head or chunk framing over {MAX_HEAD} bytes")]
    TooLarge,
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
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
    /// response, not even the end of the stream. This reads the socket only when the
    /// runtime has seen it become readable.
    pub(crate) fn is_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Reads what the socket has into `read`; 0 at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            if self.read.capacity() - self.read.len() < READ_SIZE / 4 {
                self.read.reserve(READ_SIZE);
            }
            match self.stream.try_read_buf(&mut self.read) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.stream.poll_read_ready(cx))?;
                }
                result => return Poll::Ready(result),
            }
        }
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
        request: &Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, Failed> {
        encode(request, &mut self.write);
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
        let head_request = request.method() == Method::HEAD;
        let sent = self.stream.write_all(&self.write[written..]).await;
        let response = match sent {
            Ok(()) => self.read_response(head_request).await,
            Err(error) => Err(error.into()),
        };
        response
            .map(|response| response.map(UpstreamBody::Relay))
            .map_err(|error| Failed {
                error,
                unsent: false,
            })
    }

    /// Reads until a final response head, skipping interim (1xx) ones.
    async fn read_response(mut self, head_request: bool) -> Result<Response<Relay>, ClientError> {
        loop {
            match self.parse_head()? {
                Some(head) if head.status.is_informational() => {
                    if head.status == StatusCode::SWITCHING_PROTOCOLS {
                        return Err(ClientError::Malformed(
                            "101 Switching Protocols to a request without Upgrade",
                        ));
                    }
                }
                Some(head) => return Ok(head.into_response(self, head_request)),
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
        // copied. A head is at most MAX_HEAD bytes, so offsets fit in u32.
        let base = self.read.as_ptr() as usize;
        let offset = |part: &[u8]| (part.as_ptr() as usize - base) as u32;
        let mut fields = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        let count = parsed.headers.len();
        for (field, parsed) in fields.iter_mut().zip(parsed.headers.iter()) {
            let (name, value) = (offset(parsed.name.as_bytes()), offset(parsed.value));
            *field = (
                name,
                name + parsed.name.len() as u32,
                value,
                value + parsed.value.len() as u32,
            );
        }
        let bytes = self.read.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(count);
        let mut framing = Framing::default();
        for &(name_start, name_end, value_start, value_end) in &fields[..count] {
            let name = HeaderName::from_bytes(&bytes[name_start as usize..name_end as usize])
                .map_err(|_| ClientError::Malformed("invalid header name"))?;
            let value = HeaderValue::from_maybe_shared(
                bytes.slice(value_start as usize..value_end as usize),
            )
                .map_err(|_| ClientError::Malformed("invalid header value"))?;
            framing.note(&name, &value)?;
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

/// Serialises a request with an empty or whole body, body included.
fn encode(request: &Request<RequestBody>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(request.method().as_str().as_bytes());
    out.push(b' ');
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in request.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let body = match request.body() {
        RequestBody::Buffered(Some(body)) => Some(body),
        _ => None,
    };
    if let Some(body) = body {
        if !request.headers().contains_key(header::CONTENT_LENGTH) {
            out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
    if let Some(body) = body {
        out.extend_from_slice(body);
    }
}

/// Sends `request` on `connection`; the response comes back once its head is in. So does
/// the request, to be sent again if need be, unless hyper's client took it and sent it.
pub(crate) async fn send(
    connection: Connection,
    request: Request<RequestBody>,
    upgrade: bool,
) -> (
    Result<Response<UpstreamBody>, Failed>,
    Option<Request<RequestBody>>,
) {
    if upgrade || matches!(request.body(), RequestBody::Stream(_)) {
        return through_hyper(connection, request).await;
    }
    let result = connection.exchange(&request).await;
    (result, Some(request))
}

async fn through_hyper(
    connection: Connection,
    request: Request<RequestBody>,
) -> (
    Result<Response<UpstreamBody>, Failed>,
    Option<Request<RequestBody>>,
) {
    let handshake = http1::Builder::new()
        .handshake(TokioIo::new(connection.stream))
        .await;
    let (mut sender, connection) = match handshake {
        Ok(pair) => pair,
        Err(error) => {
            let failed = Failed {
                error: error.into(),
                unsent: true,
            };
            return (Err(failed), Some(request));
        }
    };
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "upstream connection ended with an error");
        }
    });
    match sender.try_send_request(request).await {
        Ok(response) => (Ok(response.map(UpstreamBody::Hyper)), None),
        Err(mut error) => {
            let request = error.take_message();
            let failed = Failed {
                unsent: request.is_some(),
                error: error.into_error().into(),
            };
            (Err(failed), request)
        }
    }
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
    fn into_response(self, connection: Connection, head_request: bool) -> Response<Relay> {
        let Head {
            status,
            version,
            headers,
            framing,
        } = self;
        let mut reusable =
            !framing.close && (version == Version::HTTP_11 || framing.keep_alive);
        let state = if head_request
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            State::Done
        } else if framing.transfer_encoding {
            // With both, the length is not to be trusted and neither is what follows.
            reusable &= framing.length.is_none();
            if framing.chunked {
                State::Chunked(Chunk::Size)
            } else {
                State::UntilClose
            }
        } else {
            match framing.length {
                Some(0) => State::Done,
                Some(n) => State::Length(n),
                None => State::UntilClose,
            }
        };
        reusable &= !matches!(state, State::UntilClose);
        let mut response = Response::new(Relay {
            connection: Some(connection),
            state,
            reusable,
        });
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        response
    }
}

/// What the head says about the body and the connection.
#[derive(Default)]
struct Framing {
    length: Option<u64>,
    transfer_encoding: bool,
    /// `chunked` is the last transfer coding.
    chunked: bool,
    close: bool,
    keep_alive: bool,
}

impl Framing {
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<(), ClientError> {
        if name == header::CONTENT_LENGTH {
            // A list of equal values is one length (RFC 9110 §8.6); differing ones are an error.
            let text = value
                .to_str()
                .map_err(|_| ClientError::Malformed("invalid Content-Length"))?;
            for part in text.split(',') {
                let length = part
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| ClientError::Malformed("invalid Content-Length"))?;
                if self.length.is_some_and(|seen| seen != length) {
                    return Err(ClientError::Malformed("conflicting Content-Length"));
                }
                self.length = Some(length);
            }
        } else if name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
            self.chunked = tokens(value)
                .last()
                .is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONNECTION {
            for token in tokens(value) {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        Ok(())
    }
}

/// The comma-separated tokens of a header value, trimmed.
fn tokens(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

/// A response body from an upstream.
pub(crate) enum UpstreamBody {
    Relay(Relay),
    Hyper(Incoming),
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
            UpstreamBody::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Relay(relay) => matches!(relay.state, State::Done),
            UpstreamBody::Hyper(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Relay(relay) => match relay.state {
                State::Done => SizeHint::with_exact(0),
                State::Length(n) => SizeHint::with_exact(n),
                _ => SizeHint::default(),
            },
            UpstreamBody::Hyper(body) => body.size_hint(),
        }
    }
}

/// A response body read from the connection by whoever polls it.
pub(crate) struct Relay {
    connection: Option<Connection>,
    state: State,
    /// The connection may take another request once the body has been read.
    reusable: bool,
}

enum State {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

impl Relay {
    fn take_reusable(&mut self) -> Option<Connection> {
        let done = matches!(self.state, State::Done);
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
                self.state = State::Done;
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(Ok(frame)) => Poll::Ready(frame.map(Ok)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Frame<Bytes>>, ClientError>> {
        loop {
            let Some(connection) = self.connection.as_mut() else {
                return Poll::Ready(Ok(None));
            };
            let read = &mut connection.read;
            match &mut self.state {
                State::Done => return Poll::Ready(Ok(None)),
                State::Length(remaining) | State::Chunked(Chunk::Data(remaining))
                    if !read.is_empty() =>
                {
                    let take = read.len().min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    let data = read.split_to(take).freeze();
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        self.state = match self.state {
                            State::Length(_) => State::Done,
                            _ => State::Chunked(Chunk::DataEnd),
                        };
                    }
                    return Poll::Ready(Ok(Some(Frame::data(data))));
                }
                State::UntilClose if !read.is_empty() => {
                    return Poll::Ready(Ok(Some(Frame::data(read.split().freeze()))));
                }
                State::UntilClose => {
                    if ready!(connection.poll_fill(cx))? == 0 {
                        self.state = State::Done;
                    }
                    continue;
                }
                State::Chunked(Chunk::Size) => {
                    if let Some(end) = find(read, b"\r\n") {
                        let size = chunk_size(&read[..end])?;
                        let _ = read.split_to(end + 2);
                        self.state = State::Chunked(match size {
                            0 => Chunk::Trailers,
                            n => Chunk::Data(n),
                        });
                        continue;
                    }
                    if read.len() > MAX_CHUNK_LINE {
                        return Poll::Ready(Err(ClientError::TooLarge));
                    }
                }
                State::Chunked(Chunk::DataEnd) if read.len() >= 2 => {
                    if &read[..2] != b"\r\n" {
                        return Poll::Ready(Err(ClientError::Malformed("chunk without CRLF")));
                    }
                    let _ = read.split_to(2);
                    self.state = State::Chunked(Chunk::Size);
                    continue;
                }
                State::Chunked(Chunk::Trailers) => {
                    if read.starts_with(b"\r\n") {
                        let _ = read.split_to(2);
                        self.state = State::Done;
                        return Poll::Ready(Ok(None));
                    }
                    if let Some(end) = find(read, b"\r\n\r\n") {
                        let section = read.split_to(end + 4);
                        self.state = State::Done;
                        return Poll::Ready(Ok(Some(Frame::trailers(trailers(&section)?))));
                    }
                    if read.len() > MAX_HEAD {
                        return Poll::Ready(Err(ClientError::TooLarge));
                    }
                }
                State::Length(_) | State::Chunked(Chunk::Data(_) | Chunk::DataEnd) => {}
            }
            if ready!(connection.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(ClientError::Closed));
            }
        }
    }
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// The size on a chunk-size line (hex digits, then optional extensions after `;`).
fn chunk_size(line: &[u8]) -> Result<u64, ClientError> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let invalid = || ClientError::Malformed("invalid chunk size");
    if digits.is_empty() || digits.len() > 16 {
        return Err(invalid());
    }
    let text = std::str::from_utf8(digits).map_err(|_| invalid())?;
    u64::from_str_radix(text, 16).map_err(|_| invalid())
}

/// The trailer fields of a chunked body (`section` ends with the blank line).
fn trailers(section: &[u8]) -> Result<HeaderMap, ClientError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let invalid = || ClientError::Malformed("invalid trailer section");
    let fields = match httparse::parse_headers(section, &mut slots) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        _ => return Err(invalid()),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| invalid())?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| invalid())?;
        map.append(name, value);
    }
    Ok(map)
}
