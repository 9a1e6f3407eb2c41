//! The accept loop every listener runs (HTTP and TCP alike): the listener's connection
//! limit, the count of open connections that shutdown waits for, and back-off after a
//! failed accept.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

/// How long the accept loop waits after an accept error (out of file descriptors, usually)
/// before trying again, so it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Counts the live connections of every listener so shutdown can wait for them.
#[derive(Default)]
pub(crate) struct Connections {
    active: AtomicUsize,
    none_left: Notify,
}

impl Connections {
    fn open(self: &Arc<Self>) -> ConnectionGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard(self.clone())
    }

    /// Resolves once no connection is open.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.none_left.notified();
            if self.active.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

struct ConnectionGuard(Arc<Connections>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_left.notify_waiters();
        }
    }
}

/// One listener's open connections, against a limit read at every accept: a reload's new
/// `max_connections` applies to the next connection. Lowering it closes nothing; new
/// connections are refused until enough of the open ones have ended.
#[derive(Default)]
struct Limit {
    open: AtomicUsize,
}

impl Limit {
    fn try_open(self: &Arc<Self>, max: usize) -> Option<LimitSlot> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(LimitSlot(self.clone()))
    }
}

struct LimitSlot(Arc<Limit>);

impl Drop for LimitSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Held by a connection for as long as it is open: its place under the listener's limit
/// and in the count shutdown drains.
pub(crate) struct Slot {
    _limit: LimitSlot,
    _open: ConnectionGuard,
}

/// What a listener does with the connections it accepts.
pub(crate) trait Serve: Send + Sync + 'static {
    fn name(&self) -> &str;

    /// The limit for the next connection, from the latest config.
    fn max_connections(&self) -> usize;

    /// Serves one connection until it ends or `shutdown` says stop; dropping `slot` frees
    /// its place.
    fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        client: SocketAddr,
        shutdown: watch::Receiver<bool>,
        slot: Slot,
    ) -> impl Future<Output = ()> + Send + 'static;
}

/// Accepts connections on `listener` until shutdown and serves each one that fits under
/// the limit; the others are closed at once. At shutdown the connections the kernel has
/// already completed are taken off the queue and served too (told to stop, they answer the
/// request they bring with `connection: close`): closing the socket would reset them, with
/// the request their client has sent unanswered. Clients that reconnect at once after a
/// `connection: close` are the usual ones.
pub(crate) async fn run<L: Serve>(
    listener: TcpListener,
    state: Arc<L>,
    connections: Arc<Connections>,
    shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Limit::default());
    let mut stop = shutdown.clone();
    let admit = |stream: TcpStream, client: SocketAddr| {
        let Some(limit) = limit.try_open(state.max_connections()) else {
            tracing::debug!(listener = %state.name(), %client, "connection limit reached; closing");
            return;
        };
        let slot = Slot {
            _limit: limit,
            _open: connections.open(),
        };
        crate::timeslice::spawn(state.clone().serve(stream, client, shutdown.clone(), slot));
    };
    loop {
        let accepted = tokio::select! {
            _ = stopped(&mut stop) => {
                for (stream, client) in queued(&listener) {
                    admit(stream, client);
                }
                return;
            }
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, client)) => admit(stream, client),
            Err(error) => {
                tracing::warn!(listener = %state.name(), %error, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// The connections waiting in `listener`'s accept queue, taken without waiting: through a
/// duplicate of the socket, which is non-blocking as tokio made it, so `accept` ends with
/// `WouldBlock` once the queue is empty.
fn queued(listener: &TcpListener) -> Vec<(TcpStream, SocketAddr)> {
    let Ok(socket) = listener.as_fd().try_clone_to_owned() else {
        return Vec::new();
    };
    let socket = std::net::TcpListener::from(socket);
    let mut queued = Vec::new();
    while let Ok((stream, client)) = socket.accept() {
        let stream = stream
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(stream));
        if let Ok(stream) = stream {
            queued.push((stream, client));
        }
    }
    queued
}

/// Resolves when shutdown begins (or the proxy is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The borrow `wait_for` returns must not live across an await (it is not Send).
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}
