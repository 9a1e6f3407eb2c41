//! Keep-alive HTTP/1.1 connections to one endpoint. Idle connections wait in a lock-free
//! bounded queue; a request takes one (or connects) before anything of the request is
//! handed over, so a failed connect leaves the request whole for a retry elsewhere.
//!
//! A [`sweeper`] per service closes idle connections once they pass `timeouts.idle` or
//! their upstream closes them, as Envoy's and HAProxy's idle timeouts do: a checkout
//! skips such connections anyway, but without traffic nothing would check out, and the
//! upstream would see them held (or the proxy keep them half-closed) for ever.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use shoal_config::Timeouts;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::client::Connection;
use crate::periodic::{self, Periodic};
use crate::service::ServiceHandle;

/// How often a service's idle connections are looked over: one is closed at most this
/// long after its idle timeout passed or its upstream closed it.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

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
}

struct Idle {
    connection: Connection,
    since: Instant,
}

pub(crate) struct Pool {
    address: SocketAddr,
    idle: ArrayQueue<Idle>,
}

impl Pool {
    pub(crate) fn new(address: SocketAddr) -> Pool {
        Pool {
            address,
            idle: ArrayQueue::new(MAX_IDLE),
        }
    }

    /// An idle connection ready for a request, or a new one. The timeouts are the
    /// service's as the request found them, so a reload's new ones apply to the endpoints
    /// that stay as well.
    pub(crate) async fn checkout(&self, timeouts: &Timeouts) -> Result<Connection, ConnectError> {
        while let Some(idle) = self.idle.pop() {
            if idle.since.elapsed() < timeouts.idle && idle.connection.is_open() {
                return Ok(idle.connection);
            }
        }
        self.connect(timeouts.connect).await
    }

    async fn connect(&self, timeout: Duration) -> Result<Connection, ConnectError> {
        let address = self.address;
        let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| ConnectError::Timeout(address))?
            .map_err(|source| ConnectError::Io { address, source })?;
        // Proxied requests are small writes that must not wait for Nagle.
        stream
            .set_nodelay(true)
            .map_err(|source| ConnectError::Io { address, source })?;
        Ok(Connection::new(stream))
    }

    /// How many connections wait idle.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.idle.len()
    }

    /// Keeps a connection whose response was read to its end (at `now`) for the next
    /// request. A full queue drops (closes) it: enough are idle already.
    pub(crate) fn checkin(&self, connection: Connection, now: Instant) {
        let _ = self.idle.push(Idle {
            connection,
            since: now,
        });
    }

    /// Closes the idle connections idle for `idle` or longer, or closed by the upstream,
    /// and puts the others back. A request meanwhile may find none and connect anew: the
    /// queue is looked over in microseconds, once a second.
    fn sweep(&self, idle: Duration) {
        for _ in 0..self.idle.len() {
            let Some(entry) = self.idle.pop() else {
                break;
            };
            if entry.since.elapsed() < idle && entry.connection.is_open() {
                let _ = self.idle.push(entry);
            }
        }
    }
}

/// Sweeps the pools of `service`'s endpoints every [`SWEEP_EVERY`] with its current
/// `timeouts.idle`, until shutdown, the service's end, or the handle drops.
pub(crate) fn sweeper(service: &Arc<ServiceHandle>, shutdown: watch::Receiver<bool>) -> Periodic {
    periodic::every(service, SWEEP_EVERY, shutdown, |service| async move {
        let idle = service.settings().timeouts.idle;
        for upstream in &service.snapshot().endpoints {
            upstream.pool.sweep(idle);
        }
    })
}
