//! Errors: [`ProxyError`] for the embedding program, and [`OwnError`], the responses shoal
//! itself answers with (each carries `x-shoal-error: <reason>`, as SPEC.md promises).

use std::io;
use std::net::SocketAddr;

use http::{HeaderValue, StatusCode};

/// What can go wrong building or starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A listener or route names a service that the config does not define.
    #[error("listener `{listener}` refers to service `{service}`, which is not defined under `services`")]
    UnknownService { listener: String, service: String },
    /// A listener has neither `service` nor `routes`.
    #[error("listener `{listener}` has neither `service` nor `routes`: it would answer 404 to everything")]
    NoService { listener: String },
    /// A route's header match is not a valid header name or value.
    #[error(
        "listener `{listener}`: route header match `{name}: {value}` is not a valid HTTP header"
    )]
    BadHeaderMatch {
        listener: String,
        name: String,
        value: String,
    },
    /// The metrics could not be registered (usually: registered twice in one registry).
    #[error("cannot register the proxy metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A listener's address could not be bound. The cause is in the message rather than
    /// the error chain, which would print it twice.
    #[error("cannot bind listener `{listener}` on {address}: {cause}{}", bind_hint(.cause, "the listener's `bind`"))]
    Bind {
        listener: String,
        address: SocketAddr,
        cause: io::Error,
    },
    /// The config asks for something this build of the proxy does not do yet.
    #[error("listener `{listener}`: {what} is not supported yet by this build")]
    Unsupported {
        listener: String,
        what: &'static str,
    },
    /// `bind` was called twice.
    #[error("the proxy's listeners are already bound")]
    AlreadyBound,
    /// `apply` was called after `shutdown`.
    #[error("the proxy is shutting down; the new config was not applied")]
    ShutDown,
}

/// What to do about an address that cannot be bound; `key` names the setting that gives it.
pub fn bind_hint(cause: &io::Error, key: &str) -> String {
    match cause.kind() {
        io::ErrorKind::AddrInUse => format!(
            "; another process listens there (another shoal? `ss -ltnp` shows which): stop \
             it, or change {key}"
        ),
        io::ErrorKind::PermissionDenied => format!(
            "; a port below 1024 needs root or CAP_NET_BIND_SERVICE: run as root, or give \
             {key} a higher port"
        ),
        io::ErrorKind::AddrNotAvailable => format!(
            "; no interface of this host has that address: give {key} one it has, or 0.0.0.0"
        ),
        _ => String::new(),
    }
}

/// A response shoal answers itself instead of the upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnError {
    /// No route matched the request: 404.
    NoRoute,
    /// The service has no endpoint to send to: 503 with `retry-after`.
    NoEndpoints,
    /// A held request saw no ready endpoint within `scale.cold_start_timeout`: 503 with
    /// `retry-after`.
    ColdStartTimeout,
    /// `limits.max_queued_requests` requests were already held: 503 with `retry-after`.
    QueueFull,
    /// Every connect attempt failed: 502.
    UpstreamUnreachable,
    /// The upstream closed or reset the connection, or spoke broken HTTP: 502.
    UpstreamReset,
    /// No response head within `timeouts.request`: 504.
    UpstreamTimeout,
    /// The request head is larger than `limits.max_request_header_bytes`: 431.
    HeaderTooLarge,
    /// The request head was not read within `timeouts.header_read`: 408.
    HeaderTimeout,
    /// The client sent nothing more of its request body for `timeouts.header_read`: 408.
    BodyTimeout,
    /// The request is not valid HTTP: 400.
    BadRequest,
    /// The request's body has a transfer coding other than chunked: 501.
    NotImplemented,
}

impl OwnError {
    pub fn status(self) -> StatusCode {
        match self {
            OwnError::NoRoute => StatusCode::NOT_FOUND,
            OwnError::NoEndpoints | OwnError::ColdStartTimeout | OwnError::QueueFull => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            OwnError::UpstreamUnreachable | OwnError::UpstreamReset => StatusCode::BAD_GATEWAY,
            OwnError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            OwnError::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            OwnError::HeaderTimeout | OwnError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            OwnError::BadRequest => StatusCode::BAD_REQUEST,
            OwnError::NotImplemented => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// The `x-shoal-error` value.
    pub fn reason(self) -> &'static str {
        match self {
            OwnError::NoRoute => "no_route",
            OwnError::NoEndpoints => "no_endpoints",
            OwnError::ColdStartTimeout => "cold_start_timeout",
            OwnError::QueueFull => "queue_full",
            OwnError::UpstreamUnreachable => "upstream_unreachable",
            OwnError::UpstreamReset => "upstream_reset",
            OwnError::UpstreamTimeout => "upstream_timeout",
            OwnError::HeaderTooLarge => "header_too_large",
            OwnError::HeaderTimeout => "header_timeout",
            OwnError::BodyTimeout => "body_timeout",
            OwnError::BadRequest => "bad_request",
            OwnError::NotImplemented => "not_implemented",
        }
    }

    /// A one-line body for humans reading curl output.
    pub fn body(self) -> &'static str {
        match self {
            OwnError::NoRoute => "shoal: no route matches this request\n",
            OwnError::NoEndpoints => "shoal: the service has no ready endpoint\n",
            OwnError::ColdStartTimeout => "shoal: no replica became ready in time\n",
            OwnError::QueueFull => "shoal: too many requests are waiting for a replica\n",
            OwnError::UpstreamUnreachable => "shoal: cannot connect to any upstream\n",
            OwnError::UpstreamReset => {
                "shoal: the upstream closed the connection or sent a malformed response\n"
            }
            OwnError::UpstreamTimeout => "shoal: the upstream did not answer in time\n",
            OwnError::HeaderTooLarge => "shoal: request header too large\n",
            OwnError::HeaderTimeout => "shoal: request header not received in time\n",
            OwnError::BodyTimeout => "shoal: request body not received in time\n",
            OwnError::BadRequest => "shoal: malformed request\n",
            OwnError::NotImplemented => "shoal: only the chunked transfer coding is supported\n",
        }
    }

    /// Whether the answer carries `retry-after: 1`: the service has nothing to send to
    /// right now but expects to soon (a replica is starting or will be).
    pub fn retry_after(self) -> bool {
        matches!(
            self,
            OwnError::NoEndpoints | OwnError::ColdStartTimeout | OwnError::QueueFull
        )
    }

    pub fn reason_header(self) -> HeaderValue {
        HeaderValue::from_static(self.reason())
    }

    /// The whole HTTP/1.1 response as bytes, for errors answered before a request could be
    /// read (a malformed, oversized or slow head); it always closes the connection. It is
    /// dated, as every other answer is (RFC 9110 §6.6.1).
    pub fn raw_response(self) -> Vec<u8> {
        let status = self.status();
        let body = self.body();
        let date =
            crate::date::with_now(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nx-shoal-error: {}\r\ndate: {date}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            self.reason(),
            body.len()
        );
        if self.retry_after() {
            out.push_str("retry-after: 1\r\n");
        }
        out.push_str("\r\n");
        out.push_str(body);
        out.into_bytes()
    }
}
