//! Body types on both sides of the proxy. Bodies stream: the only copy ever held whole is a
//! small retryable request body (see [`crate::retry`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep};

use crate::client::{BodyError, UpstreamBody};
use crate::forward::Completion;

/// A request body going upstream.
pub(crate) enum RequestBody {
    Empty,
    /// Held whole (see [`crate::retry::MAX_HELD_BODY`]): shoal's client writes it from
    /// here, so the request can be sent again.
    Buffered(Bytes),
    /// The client's body, streamed through as it arrives. Boxed: most requests have none,
    /// and every request moves this enum several times on its way.
    Stream(Box<ClientBody>),
}

/// A client's body as its protocol delivers it, failing with [`ClientStalled`] once the
/// client has sent nothing of it for the time [`ClientBody::stall_after`] sets.
pub(crate) struct ClientBody {
    from: ClientStream,
    /// Told at the first read: a client that sent `Expect: 100-continue` is answered then,
    /// as hyper's server does, so one that is refused first never sends its body.
    wanted: Option<oneshot::Sender<()>>,
    idle: Option<Duration>,
    /// Armed the first time the body keeps its reader waiting, as [`ResponseBody`]'s is.
    quiet: Option<Pin<Box<Sleep>>>,
}

enum ClientStream {
    /// From shoal's HTTP/1 server ([`crate::http1`]), which reads it off the connection as
    /// this side takes it.
    Http1(Fed),
    /// An HTTP/2 stream's ([`crate::http2`]), with the length its `content-length` declared
    /// (the h2 crate holds the stream to it).
    H2 {
        stream: RecvStream,
        length: Option<u64>,
    },
}

/// What shoal's HTTP/1 server passes on of a body it reads: a frame, the end (`None`), or
/// the error that stopped it.
pub(crate) type FedFrame = Result<Option<Frame<Bytes>>, BodyError>;

/// A request body that shoal's HTTP/1 server feeds through a channel.
struct Fed {
    frames: mpsc::Receiver<FedFrame>,
    /// The bytes still to come, when a length says.
    remaining: Option<u64>,
    ended: bool,
}

/// The client's connection ended before its request body did.
#[derive(Debug, thiserror::Error)]
#[error("the client's connection ended in the middle of its request body")]
struct ClientLeft;

impl Fed {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let fed = ready!(self.frames.poll_recv(cx));
        if !matches!(fed, Some(Ok(Some(_)))) {
            self.ended = true;
        }
        Poll::Ready(match fed {
            Some(Ok(Some(frame))) => {
                if let (Some(remaining), Some(data)) = (self.remaining.as_mut(), frame.data_ref()) {
                    *remaining = remaining.saturating_sub(data.len() as u64);
                    // The whole length is in: the end the server may not have sent yet (its
                    // channel was full) is no longer needed.
                    self.ended = *remaining == 0;
                }
                Some(Ok(frame))
            }
            Some(Ok(None)) => None,
            Some(Err(error)) => Some(Err(error)),
            // The server stopped without saying how the body ended: its connection did.
            None => Some(Err(ClientLeft.into())),
        })
    }
}

/// The client stopped in the middle of its request body.
#[derive(Debug, thiserror::Error)]
#[error("the client sent nothing more of its request body for {0:?} (timeouts.header_read)")]
pub(crate) struct ClientStalled(Duration);

impl ClientBody {
    /// The body shoal's HTTP/1 server sends into `frames`, of `length` bytes if that is
    /// known; `wanted` is told when it is first read.
    pub(crate) fn http1(
        frames: mpsc::Receiver<FedFrame>,
        length: Option<u64>,
        wanted: Option<oneshot::Sender<()>>,
    ) -> Box<ClientBody> {
        let fed = Fed {
            frames,
            remaining: length,
            ended: false,
        };
        ClientBody::from(ClientStream::Http1(fed), wanted)
    }

    /// An HTTP/2 stream's body, of `length` bytes if its `content-length` says; `wanted` is
    /// told when it is first read.
    pub(crate) fn h2(
        stream: RecvStream,
        length: Option<u64>,
        wanted: Option<oneshot::Sender<()>>,
    ) -> Box<ClientBody> {
        ClientBody::from(ClientStream::H2 { stream, length }, wanted)
    }

    fn from(from: ClientStream, wanted: Option<oneshot::Sender<()>>) -> Box<ClientBody> {
        Box::new(ClientBody {
            from,
            wanted,
            idle: None,
            quiet: None,
        })
    }

    /// From now on, the body fails once the client has sent nothing of it for `idle`.
    pub(crate) fn stall_after(&mut self, idle: Duration) {
        self.idle = Some(idle);
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(wanted) = this.wanted.take() {
            let _ = wanted.send(());
        }
        let polled = match &mut this.from {
            ClientStream::Http1(fed) => fed.poll_frame(cx),
            ClientStream::H2 { stream, .. } => poll_h2(stream, cx),
        };
        match this.idle {
            Some(idle) => unless_stalled(polled, &mut this.quiet, idle, cx, || {
                ClientStalled(idle).into()
            }),
            None => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.from {
            ClientStream::Http1(fed) => fed.ended,
            ClientStream::H2 { stream, .. } => stream.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.from {
            ClientStream::Http1(Fed {
                remaining: Some(n), ..
            }) => SizeHint::with_exact(*n),
            ClientStream::Http1(_) => SizeHint::default(),
            ClientStream::H2 {
                length: Some(n), ..
            } => SizeHint::with_exact(*n),
            ClientStream::H2 { length: None, .. } => SizeHint::default(),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match this {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Buffered(_) => match std::mem::replace(this, RequestBody::Empty) {
                RequestBody::Buffered(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                _ => Poll::Ready(None),
            },
            RequestBody::Stream(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Buffered(_) => false,
            RequestBody::Stream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Buffered(data) => SizeHint::with_exact(data.len() as u64),
            RequestBody::Stream(body) => body.size_hint(),
        }
    }
}

/// A body's frame as `polled`, or the error `stalled` makes once the body has kept its
/// reader waiting for `idle` since its last frame. The timer is armed the first time the
/// body keeps its reader waiting (most bodies are whole by the time they are read and never
/// need one), and moved on with every frame after.
fn unless_stalled(
    polled: Poll<Option<Result<Frame<Bytes>, BodyError>>>,
    quiet: &mut Option<Pin<Box<Sleep>>>,
    idle: Duration,
    cx: &mut Context<'_>,
    stalled: impl FnOnce() -> BodyError,
) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    if polled.is_pending() {
        let timer = quiet.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        return match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(stalled()))),
            Poll::Pending => Poll::Pending,
        };
    }
    if let Some(timer) = quiet {
        timer.as_mut().reset(Instant::now() + idle);
    }
    polled
}

/// An HTTP/2 stream's next frame: data, whose window opens again as soon as the bytes move
/// on (the upstream write that takes them is the back-pressure, as with HTTP/1), then its
/// trailers.
fn poll_h2(
    stream: &mut RecvStream,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    if let Some(data) = ready!(stream.poll_data(cx)) {
        return Poll::Ready(Some(data.map_err(Into::into).map(|data| {
            let _ = stream.flow_control().release_capacity(data.len());
            Frame::data(data)
        })));
    }
    let trailers = ready!(stream.poll_trailers(cx)).map_err(Into::into);
    Poll::Ready(trailers.map(|t| t.map(Frame::trailers)).transpose())
}

/// A response body going back to the client. When it is dropped — after the last frame, or
/// early because the client went away — it finishes the request's bookkeeping (metrics,
/// in-flight counts) and, if the upstream's body was read to its end on a connection that
/// stays open, hands that connection back to its pool.
pub struct ResponseBody {
    inner: Inner,
    ended: bool,
    completion: Option<Completion>,
}

enum Inner {
    Upstream {
        body: UpstreamBody,
        /// How long the upstream may send nothing more of its body (`timeouts.idle`).
        idle: Duration,
        /// Armed the first time the body keeps its reader waiting; most are whole by the
        /// time they are read and never need a timer.
        quiet: Option<Pin<Box<Sleep>>>,
    },
    Own(Option<Bytes>),
}

/// The upstream stalled in the middle of its response body.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing more of its response body for {0:?} (timeouts.idle)")]
struct BodyStalled(Duration);

impl ResponseBody {
    /// The upstream's `body`, which fails once the upstream has sent nothing of it for
    /// `idle`.
    pub(crate) fn upstream(
        body: UpstreamBody,
        idle: Duration,
        completion: Completion,
    ) -> ResponseBody {
        ResponseBody {
            inner: Inner::Upstream {
                body,
                idle,
                quiet: None,
            },
            ended: false,
            completion: Some(completion),
        }
    }

    pub(crate) fn own(text: &'static str, completion: Option<Completion>) -> ResponseBody {
        ResponseBody {
            inner: Inner::Own(Some(Bytes::from_static(text.as_bytes()))),
            ended: false,
            completion,
        }
    }

    fn inner_ended(&self) -> bool {
        match &self.inner {
            Inner::Upstream { body, .. } => body.is_end_stream(),
            Inner::Own(data) => data.is_none(),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            Inner::Upstream { body, idle, quiet } => {
                let idle = *idle;
                unless_stalled(Pin::new(body).poll_frame(cx), quiet, idle, cx, || {
                    BodyStalled(idle).into()
                })
            }
            Inner::Own(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        if let Poll::Ready(None) = polled {
            this.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner_ended()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream { body, .. } => body.size_hint(),
            Inner::Own(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(completion) = self.completion.take() {
            let reusable = match &mut self.inner {
                Inner::Upstream { body, .. } => body.take_reusable(),
                Inner::Own(_) => None,
            };
            completion.finish(reusable);
        }
    }
}
