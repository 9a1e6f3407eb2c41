//! The reconciler's two windows on the world, implemented by the binary (runtime + proxy)
//! and by fakes in tests.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

/// How a replica's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exited by itself with this status.
    Code(i32),
    /// Killed by this signal (not the OOM killer).
    Signal(i32),
    /// Killed by the kernel's OOM killer at its memory limit.
    Oom,
}

impl Exit {
    pub fn is_success(self) -> bool {
        self == Exit::Code(0)
    }

    /// The `reason` label of `shoal_container_exits_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Exit::Code(_) => "exited",
            Exit::Signal(_) => "signaled",
            Exit::Oom => "oom",
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exited with status {code}"),
            Exit::Signal(signal) => write!(f, "killed by signal {signal}"),
            Exit::Oom => write!(f, "killed by the OOM killer at its memory limit"),
        }
    }
}

/// A replica that has started: the driver's handle and where it serves.
pub struct Started<H> {
    pub handle: H,
    pub address: SocketAddr,
}

/// Resource use of one replica.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    pub cpu_seconds: f64,
    pub memory_bytes: u64,
}

/// Starts and stops the replicas of one service.
pub trait ReplicaDriver: Send + Sync + 'static {
    type Handle: Send + Sync + 'static;

    /// Creates and starts replica `id`; returns once its process runs.
    fn start(&self, id: &str)
        -> impl Future<Output = anyhow::Result<Started<Self::Handle>>> + Send;

    /// Resolves when the replica's process has ended.
    fn wait(&self, handle: &Self::Handle) -> impl Future<Output = Exit> + Send;

    /// Sends the stop signal, then SIGKILL after the stop timeout; resolves once it has ended.
    fn stop(&self, handle: &Self::Handle) -> impl Future<Output = ()> + Send;

    /// Releases everything the ended replica held (cgroups, mounts, network, state), but
    /// keeps its output for a later run of the same replica to show.
    fn remove(&self, handle: &Self::Handle) -> impl Future<Output = ()> + Send;

    /// Replica `id` is gone for good (scaled in, or shut down): drops what `remove` kept.
    fn forget(&self, id: &str);

    /// One health check against `address`; true when it passed within the check timeout.
    fn probe(&self, address: SocketAddr) -> impl Future<Output = bool> + Send;

    /// Current CPU and memory use, when known.
    fn stats(&self, handle: &Self::Handle) -> Option<Stats>;
}

/// A service's load as the proxy sees it at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Load {
    /// Requests in flight to the service's replicas now.
    pub in_flight: u64,
    /// Requests in the last whole second (the policy's windows average these).
    pub rps: f64,
    /// Requests held in the activator's queue, waiting for a ready replica.
    pub queued: u64,
    /// The summed durations of all requests finished so far (only its growth over a tick
    /// matters): the exact time-integral of in-flight requests that sampling misses.
    pub busy: Duration,
}

/// Where the ready replicas of a service are published for the balancer, and where its
/// load is read from.
pub trait Endpoints: Send + Sync + 'static {
    /// Replaces the balanced set with these `(replica id, address)` pairs.
    fn publish(&self, ready: Vec<(String, SocketAddr)>);

    /// Requests the proxy currently has in flight to this replica.
    fn in_flight(&self, id: &str) -> usize;

    /// The service's load now.
    fn load(&self) -> Load;

    /// [`Endpoints::load`] at an autoscaler tick: requests that finish from now on count in
    /// [`Load::busy`] only for their time after it.
    fn tick_load(&self) -> Load;

    /// Counts one active health check of a replica (`shoal_health_checks_total`).
    fn health_checked(&self, passed: bool);

    /// Whether a replica may still become ready without an operator's action: false while
    /// every slot the service may fill is taken by a replica that ended for good (its
    /// `restart` policy did not restart it), or `shoal scale` pinned it to zero, so that
    /// requests need not wait for one.
    fn startable(&self, startable: bool);

    /// Changes whenever a request starts waiting for a ready replica, so a service at zero
    /// can start one at once instead of at its next tick.
    fn demand(&self) -> tokio::sync::watch::Receiver<u64>;
}
