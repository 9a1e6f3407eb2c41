//! The internals that the criterion micro-benchmarks in `proxy/benches` measure, behind a
//! narrow public door: a bench target is a separate crate and sees only the public API.
//! Not part of shoal's API; nothing else uses it.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::Registry;
use shoal_config::{Balance, HashOn};

use crate::balance::{Balancer, Tried};
use crate::endpoint::{Endpoint, EndpointSet, Upstream};
use crate::load::Window;
use crate::metrics::{Metrics, RequestMetrics};

/// A balancer over a fixed set of healthy loopback endpoints.
pub struct Balancing {
    balancer: Balancer,
    set: EndpointSet,
    tried: Tried,
}

impl Balancing {
    /// `endpoints` endpoints on 127.0.0.1; consistent hashing hashes the client address.
    pub fn new(balance: Balance, endpoints: u16) -> Balancing {
        let balancer = Balancer::new(balance, Some(&HashOn::ClientIp));
        let upstreams = (0..endpoints)
            .map(|i| {
                let address = SocketAddr::from((Ipv4Addr::LOCALHOST, 20_000 + i));
                Arc::new(Upstream::new(Endpoint::new(address)))
            })
            .collect();
        let set = EndpointSet::new(upstreams, balancer.wants_table());
        Balancing {
            balancer,
            set,
            tried: Tried::default(),
        }
    }

    /// A first attempt's pick; `key` is the request's hash for consistent hashing.
    pub fn pick(&self, key: u64) -> Option<usize> {
        self.balancer.pick(&self.set, Some(key), &self.tried, false)
    }
}

/// What one finished request records: its status count and duration in the Prometheus
/// families, and its arrival and latency in the service's load window.
pub struct Recording {
    metrics: Arc<RequestMetrics>,
    window: Window,
}

impl Recording {
    pub fn new() -> Result<Recording, prometheus::Error> {
        let metrics = Metrics::register(&Registry::new())?;
        Ok(Recording {
            metrics: metrics.requests("web", "api"),
            window: Window::new(),
        })
    }

    pub fn record(&self, status: u16, elapsed: Duration) {
        let now = Instant::now();
        self.window.record_request(now);
        self.metrics.count(status);
        self.metrics.observe(elapsed.as_secs_f64());
        self.window.record_latency(now, elapsed, elapsed);
    }
}
