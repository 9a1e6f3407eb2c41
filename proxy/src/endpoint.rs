//! Endpoints: what a service balances over. [`Endpoint`] is the public description handed
//! in by whoever knows the replicas; [`Upstream`] is the proxy's live state for one
//! (in-flight count, latency estimate, health, outlier state, connection pool), kept across
//! endpoint-set updates for as long as the endpoint stays in the set.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::balance::consistent_hash::Table;
use crate::balance::p2c_ewma::PeakEwma;
use crate::health::HealthState;
use crate::outlier::OutlierState;
use crate::pool::Pool;

/// Nanoseconds since a process-wide origin on the monotonic clock, so per-endpoint times
/// (latency samples, ejection ends) fit in atomics.
pub(crate) fn now_ns() -> u64 {
    ns_at(Instant::now())
}

/// [`now_ns`] of an instant already read.
pub(crate) fn ns_at(at: Instant) -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(at.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX)
}

/// One address a service can send requests to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// A stable name: the replica id for containers, the address for static upstreams.
    /// Consistent hashing hashes it, so a key follows the id, not the position in the set.
    pub id: String,
    pub address: SocketAddr,
}

impl Endpoint {
    /// An endpoint named by its address, as static upstreams are.
    pub fn new(address: SocketAddr) -> Endpoint {
        Endpoint {
            id: address.to_string(),
            address,
        }
    }
}

/// The proxy's state for one endpoint.
pub(crate) struct Upstream {
    endpoint: Endpoint,
    in_flight: AtomicU64,
    ewma: PeakEwma,
    pub(crate) health: HealthState,
    pub(crate) outlier: OutlierState,
    pub(crate) pool: Arc<Pool>,
}

impl Upstream {
    pub(crate) fn new(endpoint: Endpoint) -> Upstream {
        let pool = Arc::new(Pool::new(endpoint.address));
        Upstream {
            endpoint,
            in_flight: AtomicU64::new(0),
            ewma: PeakEwma::default(),
            health: HealthState::default(),
            outlier: OutlierState::default(),
            pool,
        }
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    pub(crate) fn ewma(&self) -> &PeakEwma {
        &self.ewma
    }

    /// Whether balancers may pick the endpoint: it passes its health checks and is not
    /// ejected. Two loads when it is; a clock read only while it is ejected.
    #[inline]
    pub(crate) fn available(&self) -> bool {
        self.health.healthy() && !self.outlier.ejected()
    }

    /// The endpoint's `state` in `/api/v1/status`.
    pub(crate) fn state(&self) -> &'static str {
        if !self.health.healthy() {
            "unhealthy"
        } else if self.outlier.ejected() {
            "ejected"
        } else {
            "ready"
        }
    }

    /// Counts a request in flight until the returned guard drops.
    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(self.clone())
    }
}

/// One request in flight on an endpoint.
pub(crate) struct InFlight(Arc<Upstream>);

impl InFlight {
    pub(crate) fn upstream(&self) -> &Arc<Upstream> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// The endpoints of a service at one moment, swapped whole when they change.
pub(crate) struct EndpointSet {
    pub(crate) endpoints: Vec<Arc<Upstream>>,
    /// The consistent-hash table, when the service hashes.
    pub(crate) table: Option<Table>,
}

impl EndpointSet {
    pub(crate) fn new(endpoints: Vec<Arc<Upstream>>, table: bool) -> EndpointSet {
        let table = table.then(|| Table::build(endpoints.iter().map(|u| u.endpoint.id.as_str())));
        EndpointSet { endpoints, table }
    }
}
