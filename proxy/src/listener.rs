//! HTTP listeners: serving one connection (TLS handshake when the listener has `tls`, first
//! head pre-read, then shoal's HTTP/1.1 server ([`crate::http1`]), which hands what it does
//! not serve itself to hyper's, or shoal's HTTP/2 server ([`crate::http2`])) until it ends
//! or the proxy shuts down. Accepting is [`crate::accept`]'s.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::accept::{self, stopped, Slot};
use crate::forward::Downstream;
use crate::http1;
use crate::http2;
use crate::io::{Prefixed, Reset};
use crate::metrics::RequestMetrics;
use crate::preread::{self, Preread, Protocol};
use crate::route::{ConnectionSettings, Routes};
use crate::tcp::L4Metrics;
use crate::tls::Acceptor;

/// Everything an HTTP listener needs while serving.
pub(crate) struct ListenerState {
    pub(crate) name: String,
    /// Compiled once per config; a reload swaps them for the requests (and the
    /// connections) after it, while requests already routed finish where they went.
    pub(crate) routes: ArcSwap<Routes>,
    /// Metrics for requests answered before a service is known (service label "").
    pub(crate) unrouted: Arc<RequestMetrics>,
    /// TLS termination, when the listener has `tls`.
    pub(crate) tls: Option<Arc<Acceptor>>,
    /// `https` behind TLS, else `http`: what `X-Forwarded-Proto` should say.
    pub(crate) scheme: &'static str,
    /// The bind address, as the Host of a request that names none (HTTP/1.0 allows it;
    /// upstreams are spoken to in HTTP/1.1, which does not): the authority the client
    /// reached, as far as the listener knows it (`0.0.0.0:…` for a wildcard bind).
    pub(crate) address: HeaderValue,
    /// Handshake failures are counted here.
    pub(crate) l4: Arc<L4Metrics>,
}

impl ListenerState {
    pub(crate) fn new(
        name: String,
        routes: Routes,
        unrouted: Arc<RequestMetrics>,
        tls: Option<Arc<Acceptor>>,
        l4: Arc<L4Metrics>,
        bind: SocketAddr,
    ) -> ListenerState {
        ListenerState {
            address: HeaderValue::try_from(bind.to_string())
                .unwrap_or(HeaderValue::from_static("localhost")),
            name,
            routes: ArcSwap::from_pointee(routes),
            unrouted,
            scheme: if tls.is_some() { "https" } else { "http" },
            tls,
            l4,
        }
    }

    /// Settles the connection settings on the services' settings as they are now: a
    /// reload builds a listener before it reconfigures the services the listener sends to.
    pub(crate) fn refresh_connection_settings(&self) {
        let mut routes = Routes::clone(&self.routes.load());
        routes.refresh_connection_settings();
        self.routes.store(Arc::new(routes));
    }
}

impl accept::Serve for ListenerState {
    fn name(&self) -> &str {
        &self.name
    }

    fn max_connections(&self) -> usize {
        self.routes.load().connection.max_connections
    }

    fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        client: SocketAddr,
        shutdown: watch::Receiver<bool>,
        slot: Slot,
    ) -> impl Future<Output = ()> + Send + 'static {
        serve(stream, client, self, shutdown, slot)
    }
}

/// Serves one connection; its slot is given back when it ends.
async fn serve(
    stream: TcpStream,
    client: SocketAddr,
    state: Arc<ListenerState>,
    mut shutdown: watch::Receiver<bool>,
    _slot: Slot,
) {
    let _ = stream.set_nodelay(true);
    let settings = state.routes.load().connection;
    let Some(tls) = state.tls.clone() else {
        return serve_http(stream, client, state, settings, shutdown).await;
    };
    // The handshake is the first thing a TLS client sends, so it shares the head's
    // deadline: a client that stalls in it holds a connection slot no longer.
    let handshake = tokio::time::timeout(settings.header_read, tls.accept(stream));
    let stream = tokio::select! {
        _ = stopped(&mut shutdown) => return,
        handshake = handshake => match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                state.l4.handshake_failed(&state.name);
                tracing::debug!(listener = %state.name, %client, %error, "TLS handshake failed");
                return;
            }
            Err(_elapsed) => {
                state.l4.handshake_failed(&state.name);
                tracing::debug!(listener = %state.name, %client, "TLS handshake timed out");
                return;
            }
        },
    };
    serve_http(stream, client, state, settings, shutdown).await;
}

/// Serves HTTP on a (plain or decrypted) connection. The protocol is what the client
/// speaks: over TLS that is what ALPN negotiated (`h2` clients send the HTTP/2 preface,
/// others an HTTP/1 head), in cleartext HTTP/2 needs prior knowledge.
async fn serve_http<S>(
    mut stream: S,
    client: SocketAddr,
    state: Arc<ListenerState>,
    settings: ConnectionSettings,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Reset + Unpin + Send + 'static,
{
    let start = Instant::now();
    // Told to stop before the first request is in, the connection still waits a moment for
    // a request on its way (see [`http1::STOP_GRACE`]), which is then served and the
    // connection closed.
    let read = {
        let read = preread::read_head(&mut stream, settings.header_read, settings.max_header_bytes);
        tokio::pin!(read);
        tokio::select! {
            read = &mut read => Some(read),
            _ = stopped(&mut shutdown) => tokio::time::timeout(http1::STOP_GRACE, read).await.ok(),
        }
    };
    let (protocol, prefix) = match read {
        Some(Preread::Ready(protocol, prefix)) => (protocol, prefix),
        Some(Preread::Closed) => return,
        Some(Preread::Reject(error)) => {
            state.unrouted.count(error.status().as_u16());
            state.unrouted.observe(start.elapsed().as_secs_f64());
            preread::reject(&mut stream, error).await;
            return;
        }
        None => {
            crate::io::close_lingering(&mut stream).await;
            return;
        }
    };
    let downstream = Arc::new(Downstream::new(state.clone(), client));
    match protocol {
        Protocol::Http1 => http1::serve(stream, prefix, &downstream, &settings, &shutdown).await,
        Protocol::Http2 => {
            let io = Prefixed::new(prefix.freeze(), stream);
            http2::serve(io, downstream, &settings, &shutdown).await;
        }
    }
}
