//! Keep-alive HTTP/1.1 connections to one endpoint. Idle connections wait in a lock-free
//! bounded queue; a request takes one (or connects) before anything of the request is
//! handed over, so a failed connect leaves the request whole for a retry elsewhere.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::RequestBody;

/// A connection's request half.
pub(crate) type Sender = http1::SendRequest<RequestBody>;

/// Idle connections kept per endpoint; more than this many idle at once are closed.
const MAX_IDLE: usize = 1024;

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(SocketAddr),
    #[error("connect to {address}: {source}")]
    Io {
        address: SocketAddr,
        source: io::Error,
    },
    #[error("HTTP handshake with {address}: {source}")]
    Handshake {
        address: SocketAddr,
        source: hyper::Error,
    },
}

struct Idle {
    sender: Sender,
    since: Instant,
}

pub(crate) struct Pool {
    address: SocketAddr,
    connect_timeout: Duration,
    idle_timeout: Duration,
    idle: ArrayQueue<Idle>,
}

impl Pool {
    pub(crate) fn new(
        address: SocketAddr,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Pool {
        Pool {
            address,
            connect_timeout,
            idle_timeout,
            idle: ArrayQueue::new(MAX_IDLE),
        }
    }

    /// An idle connection ready for a request, or a new one.
    pub(crate) async fn checkout(&self) -> Result<Sender, ConnectError> {
        while let Some(idle) = self.idle.pop() {
            if idle.since.elapsed() < self.idle_timeout && idle.sender.is_ready() {
                return Ok(idle.sender);
            }
        }
        self.connect().await
    }

    async fn connect(&self) -> Result<Sender, ConnectError> {
        let address = self.address;
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| ConnectError::Timeout(address))?
            .map_err(|source| ConnectError::Io { address, source })?;
        // Proxied requests are small writes that must not wait for Nagle.
        stream
            .set_nodelay(true)
            .map_err(|source| ConnectError::Io { address, source })?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ConnectError::Handshake { address, source })?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%address, %error, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Returns a connection whose response was read to the end. hyper may still be
    /// finishing that exchange (it becomes ready a moment later): then a small task waits
    /// for it, at most the idle timeout, rather than throwing the connection away.
    pub(crate) fn checkin(self: &Arc<Self>, mut sender: Sender) {
        if sender.is_closed() {
            return;
        }
        if sender.is_ready() {
            self.keep(sender);
            return;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(pool.idle_timeout, sender.ready()).await {
                pool.keep(sender);
            }
        });
    }

    fn keep(&self, sender: Sender) {
        // A full queue drops (closes) the connection: enough are idle already.
        let _ = self.idle.push(Idle {
            sender,
            since: Instant::now(),
        });
    }
}
