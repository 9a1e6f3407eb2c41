//! TCP listeners (`protocol: tcp`): every accepted connection is balanced on its own to an
//! endpoint of the listener's service, then bytes are relayed both ways until both sides
//! are done.
//!
//! - Balancing uses the service's balancer; `consistent_hash` hashes the client IP (the
//!   only key a byte stream has; validation rejects other `hash_on` values here).
//! - A failed connect (refused, or over `timeouts.connect`) is retried on another endpoint,
//!   each endpoint at most once, and counted in `shoal_upstream_connect_errors_total` and
//!   `shoal_upstream_retries_total`.
//! - Half-close: when one side finishes sending (EOF), the other side's write half is shut
//!   down and the opposite direction keeps flowing; the connection closes when both
//!   directions are done, or at once when either side resets.
//! - `timeouts.idle` closes a connection on which nothing moved either way for that long;
//!   `limits.max_connections` caps the listener's open connections.
//! - A connection counts in the service's in-flight requests (and as one request for
//!   rps), so the autoscaler sees TCP load, and in its endpoint's in-flight count, so
//!   `least_request` and drains see it too.
//! - A container service with no endpoint (scaled to zero) holds new connections in its
//!   hold queue ([`crate::activator`]) until a replica is ready, like HTTP requests; held
//!   connections count as queued, not in flight.
//! - With `tls`, TLS is terminated (no ALPN) and the decrypted bytes are relayed through
//!   user-space buffers. Plain connections are relayed with splice(2) through a pipe per
//!   direction, which never copies the bytes to user space: pushing 1 GiB over loopback
//!   (tests/tcp_bench.rs, median of 5, 2 cores) went from 567 MB/s with 16 KiB
//!   read/write buffers to 874 MB/s spliced (1485–1632 MB/s without the proxy). The
//!   price is two pipes (four descriptors) per connection.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::proto::LabelPair;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use shoal_config::HashOn;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::accept::{self, stopped, Slot};
use crate::balance::consistent_hash::hash_bytes;
use crate::balance::{refresh, Tried};
use crate::endpoint::InFlight;
use crate::io::Reset;
use crate::metrics::prune;
use crate::service::{ServiceHandle, ServiceInFlight, ServiceKind};
use crate::tls::Acceptor;

/// Most bytes one splice(2) moves: the default pipe capacity, so a read never waits
/// on a full pipe.
const PIPE_CHUNK: usize = 64 * 1024;

/// Bytes read per system call and direction when TLS is terminated (plain connections
/// splice): one full TLS record, and a connection's two buffers stay at 32 KiB.
const BUFFER: usize = 16 * 1024;

/// The connection-level metrics of SPEC.md (`shoal_tcp_*`), and TLS handshake failures
/// on any listener.
pub(crate) struct L4Metrics {
    connections: IntCounterVec,
    active: IntGaugeVec,
    bytes: IntCounterVec,
    handshake_errors: IntCounterVec,
}

impl L4Metrics {
    pub(crate) fn register(registry: &Registry) -> Result<L4Metrics, prometheus::Error> {
        let connections = IntCounterVec::new(
            Opts::new(
                "shoal_tcp_connections_total",
                "Connections accepted on TCP listeners, by listener and service",
            ),
            &["listener", "service"],
        )?;
        let active = IntGaugeVec::new(
            Opts::new(
                "shoal_tcp_connections_active",
                "Connections open on TCP listeners",
            ),
            &["listener"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "shoal_tcp_bytes_total",
                "Bytes relayed by TCP listeners: rx from clients, tx to clients",
            ),
            &["listener", "direction"],
        )?;
        let handshake_errors = IntCounterVec::new(
            Opts::new(
                "shoal_tls_handshake_errors_total",
                "TLS handshakes that failed or timed out, by listener",
            ),
            &["listener"],
        )?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(active.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(handshake_errors.clone()))?;
        Ok(L4Metrics {
            connections,
            active,
            bytes,
            handshake_errors,
        })
    }

    /// Drops the series that `running` refuses (see [`crate::metrics::running_series`]):
    /// `tcp` for those of `tcp` listeners, `any` for TLS handshakes, which both protocols
    /// count.
    pub(crate) fn retain(
        &self,
        tcp: &dyn Fn(&LabelPair) -> bool,
        any: &dyn Fn(&LabelPair) -> bool,
    ) {
        prune(&self.connections, tcp);
        prune(&self.active, tcp);
        prune(&self.bytes, tcp);
        prune(&self.handshake_errors, any);
    }

    /// Counts a failed TLS handshake (rare enough to look the series up each time).
    pub(crate) fn handshake_failed(&self, listener: &str) {
        self.handshake_errors.with_label_values(&[listener]).inc();
    }
}

/// Everything a TCP listener needs while serving.
pub(crate) struct TcpState {
    pub(crate) name: String,
    pub(crate) tls: Option<Arc<Acceptor>>,
    service: Arc<ServiceHandle>,
    l4: Arc<L4Metrics>,
    connections: IntCounter,
    active: IntGauge,
    rx: IntCounter,
    tx: IntCounter,
}

impl TcpState {
    pub(crate) fn new(
        name: String,
        service: Arc<ServiceHandle>,
        tls: Option<Arc<Acceptor>>,
        l4: Arc<L4Metrics>,
    ) -> TcpState {
        TcpState {
            connections: l4.connections.with_label_values(&[&name, service.name()]),
            active: l4.active.with_label_values(&[&name]),
            rx: l4.bytes.with_label_values(&[&name, "rx"]),
            tx: l4.bytes.with_label_values(&[&name, "tx"]),
            name,
            tls,
            service,
            l4,
        }
    }
}

impl accept::Serve for TcpState {
    fn name(&self) -> &str {
        &self.name
    }

    fn max_connections(&self) -> usize {
        self.service.settings().limits.max_connections
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

/// Keeps `shoal_tcp_connections_active` right however a connection ends.
struct Active(IntGauge);

impl Active {
    fn new(gauge: &IntGauge) -> Active {
        gauge.inc();
        Active(gauge.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves one connection: TLS handshake (if any), upstream connect, relay. Shutdown
/// interrupts only the first two; a relaying connection is left to finish within the
/// proxy's drain.
async fn serve(
    stream: TcpStream,
    client: SocketAddr,
    state: Arc<TcpState>,
    mut shutdown: watch::Receiver<bool>,
    _slot: Slot,
) {
    state.connections.inc();
    let _active = Active::new(&state.active);
    let service = &state.service;
    service.window.record_request(Instant::now());
    let _ = stream.set_nodelay(true);
    let Some(tls) = state.tls.clone() else {
        if let Some(connected) = connect_unless_stopped(service, client, &mut shutdown).await {
            relay_spliced(stream, connected.stream, &state).await;
        }
        return;
    };
    let handshake =
        tokio::time::timeout(service.settings().timeouts.header_read, tls.accept(stream));
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
    if let Some(connected) = connect_unless_stopped(service, client, &mut shutdown).await {
        relay(stream, connected.stream, &state).await;
    }
}

async fn connect_unless_stopped(
    service: &Arc<ServiceHandle>,
    client: SocketAddr,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Connected> {
    tokio::select! {
        _ = stopped(shutdown) => None,
        connected = connect(service, client.ip()) => connected,
    }
}

/// An upstream connection, counted in flight on its endpoint and its service (so drains,
/// least_request and the autoscaler see it) for as long as this lives.
struct Connected {
    stream: TcpStream,
    _endpoint: InFlight,
    _service: ServiceInFlight,
}

/// Connects to an endpoint of `service`, trying each endpoint at most once and retrying a
/// failed connect as `retries` allows for HTTP (`connect_failure` in `on`, at most
/// `attempts` times); each connect counts for outlier ejection. A container
/// service without endpoints (scaled to zero, or starting) holds the connection in its
/// queue, as it holds HTTP requests, until a replica is ready or `cold_start_timeout`.
async fn connect(service: &Arc<ServiceHandle>, client: IpAddr) -> Option<Connected> {
    let mut set = service.snapshot();
    if set.endpoints.is_empty() && service.kind() == ServiceKind::Container {
        set = match service.activator.hold(|| service.snapshot()).await {
            Ok(set) => set,
            Err(error) => {
                tracing::debug!(service = service.name(), %client, reason = error.reason(), "no endpoint for a held connection; closing it");
                return None;
            }
        };
    }
    let service_in_flight = service.enter();
    let settings = service.settings();
    let key = match settings.balancer.hash_on() {
        Some(HashOn::ClientIp) => Some(match client.to_canonical() {
            IpAddr::V4(ip) => hash_bytes(&ip.octets()),
            IpAddr::V6(ip) => hash_bytes(&ip.octets()),
        }),
        _ => None,
    };
    let connect_timeout = settings.timeouts.connect;
    let mut tried = Tried::default();
    let mut retries = 0;
    // Not `tried.is_empty()`: a refreshed set may have dropped what was tried.
    let mut first = true;
    while let Some(index) = settings.balancer.pick(&set, key, &tried, !first) {
        if !std::mem::take(&mut first) {
            if !settings.retry.allows_connect_retry(retries) {
                break;
            }
            retries += 1;
            service.metrics.retries.inc();
        }
        tried.insert(index);
        let upstream = &set.endpoints[index];
        // Counted from the connect on, so least_request sees connections being opened.
        let in_flight = upstream.begin();
        let address = upstream.endpoint().address;
        let started = Instant::now();
        let error = match tokio::time::timeout(connect_timeout, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                upstream.ewma().observe(started.elapsed());
                settings.outlier.record(service.name(), &set, index, true);
                return Some(Connected {
                    stream,
                    _endpoint: in_flight,
                    _service: service_in_flight,
                });
            }
            Ok(Err(error)) => error,
            Err(_elapsed) => io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
        };
        tracing::debug!(service = service.name(), %address, %error, "upstream connect failed");
        service.metrics.connect_errors.inc();
        settings.outlier.record(service.name(), &set, index, false);
        // As for HTTP: a refusing endpoint looks as slow as the connect timeout to
        // p2c_ewma, so the next connections avoid it.
        upstream.ewma().observe(connect_timeout);
        refresh(service.snapshot(), &mut set, &mut [&mut tried]);
    }
    if first {
        tracing::debug!(service = service.name(), %client, "no endpoint; closing the connection");
    } else {
        tracing::debug!(service = service.name(), %client, "no endpoint could be reached; closing the connection");
    }
    None
}

/// When anything last moved on a connection, as nanoseconds since it started.
struct Activity {
    start: Instant,
    last: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(now, Relaxed);
    }

    /// Resolves once nothing has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_nanos(self.last.load(Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// Relays both ways with half-close until both directions end, either side fails, or
/// the connection idles out. A client that breaks off resets the upstream connection; a
/// TLS client of an upstream that breaks off gets no close_notify, which TLS clients take
/// for a cut-off stream.
async fn relay<C>(client: C, upstream: TcpStream, state: &TcpState)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let activity = Activity::new();
    let both = async {
        tokio::try_join!(
            pump(&mut client_read, &mut upstream_write, &state.rx, &activity),
            pump(&mut upstream_read, &mut client_write, &state.tx, &activity),
        )
    };
    // A side that broke off is passed on as a reset, not as a clean end that would make a
    // cut-off stream look complete (as Envoy and HAProxy pass a reset on).
    if relayed(both, &activity, state).await == Ended::Broken {
        upstream_read.as_ref().reset_on_close();
    }
}

/// How a relay ended.
#[derive(PartialEq)]
enum Ended {
    /// Both directions ended, or the connection idled out.
    Closed,
    /// One side failed: reset, or an error reading or writing.
    Broken,
}

/// Runs both directions of a relay until they end or the connection idles out.
async fn relayed(
    both: impl Future<Output = io::Result<((), ())>>,
    activity: &Activity,
    state: &TcpState,
) -> Ended {
    tokio::select! {
        result = both => match result {
            Ok(_) => Ended::Closed,
            Err(error) => {
                tracing::debug!(listener = %state.name, %error, "tcp connection ended with an error");
                Ended::Broken
            }
        },
        _ = activity.idle_for(state.service.settings().timeouts.idle) => {
            tracing::debug!(listener = %state.name, "tcp connection idle; closing");
            Ended::Closed
        }
    }
}

/// Copies one direction; on EOF shuts down the writer's sending side (the half-close).
async fn pump<R, W>(
    reader: &mut R,
    writer: &mut W,
    bytes: &IntCounter,
    activity: &Activity,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; BUFFER];
    loop {
        let n = reader.read(&mut buffer).await?;
        if n == 0 {
            writer.shutdown().await?;
            return Ok(());
        }
        activity.touch();
        writer.write_all(&buffer[..n]).await?;
        // A TLS writer may hold the last record until flushed; for TCP this is free.
        writer.flush().await?;
        bytes.inc_by(n as u64);
        activity.touch();
    }
}

/// Relays two plain TCP sockets with splice(2): bytes move socket → pipe → socket inside
/// the kernel, never copied to user space. Same half-close, error and idle rules as
/// [`relay`].
async fn relay_spliced(client: TcpStream, upstream: TcpStream, state: &TcpState) {
    let activity = Activity::new();
    let both = async {
        tokio::try_join!(
            splice_pump(&client, &upstream, &state.rx, &activity),
            splice_pump(&upstream, &client, &state.tx, &activity),
        )
    };
    if relayed(both, &activity, state).await == Ended::Broken {
        client.reset_on_close();
        upstream.reset_on_close();
    }
}

/// A pipe for splice(2), both ends non-blocking.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the two-element array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        Ok(unsafe {
            Pipe {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        })
    }
}

/// One splice(2) call, non-blocking.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: splice only reads and writes the kernel objects behind the descriptors,
    // which the caller keeps open for the duration of the call; null offsets mean "the
    // current position", as sockets and pipes require.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Moves one direction through a pipe until EOF, then shuts down `to`'s sending side.
/// The pipe is emptied before the next read, so EAGAIN on the read side always means
/// the socket has nothing, and on the write side that the socket is full.
async fn splice_pump(
    from: &TcpStream,
    to: &TcpStream,
    bytes: &IntCounter,
    activity: &Activity,
) -> io::Result<()> {
    let pipe = Pipe::new()?;
    let (source, sink) = (from.as_raw_fd(), to.as_raw_fd());
    loop {
        let n = from
            .async_io(Interest::READABLE, || {
                splice(source, pipe.write.as_raw_fd(), PIPE_CHUNK)
            })
            .await?;
        if n == 0 {
            // SAFETY: shutdown on a descriptor `to` keeps open; it only changes the
            // socket's state.
            if unsafe { libc::shutdown(sink, libc::SHUT_WR) } < 0 {
                return Err(io::Error::last_os_error());
            }
            return Ok(());
        }
        activity.touch();
        let mut left = n;
        while left > 0 {
            left -= to
                .async_io(Interest::WRITABLE, || {
                    splice(pipe.read.as_raw_fd(), sink, left)
                })
                .await?;
        }
        bytes.inc_by(n as u64);
        activity.touch();
    }
}
