//! A service as the proxy sees it: its balancer over a swappable endpoint set, its retry
//! policy, timeouts and limits, and its load.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;

use arc_swap::ArcSwap;
use serde::Serialize;
use shoal_config::{Health, Limits, Service, Timeouts};

use crate::activator::Activator;
use crate::balance::Balancer;
use crate::endpoint::{Endpoint, EndpointSet, Upstream};
use crate::load::{LoadSnapshot, Window};
use crate::metrics::{Metrics, ServiceMetrics};
use crate::outlier::OutlierPolicy;
use crate::retry::RetryPolicy;

/// Where a service's endpoints come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceKind {
    /// External addresses from `upstreams:`.
    Upstreams,
    /// Replicas run by shoal from `container:`.
    Container,
}

/// The live handle of one service, shared by every route to it. The reconciler and health
/// checker hand it new endpoint sets; the autoscaler reads its load.
pub struct ServiceHandle {
    name: String,
    kind: ServiceKind,
    pub(crate) balancer: Balancer,
    endpoints: ArcSwap<EndpointSet>,
    /// Endpoints that left the set while requests may still run on them, so a drain can
    /// tell when they are done. Touched only on set changes and drain polls, never per request.
    retired: Mutex<Vec<Weak<Upstream>>>,
    pub(crate) retry: RetryPolicy,
    pub(crate) timeouts: Timeouts,
    pub(crate) limits: Limits,
    pub(crate) metrics: ServiceMetrics,
    pub(crate) window: Window,
    /// The hold queue; requests only wait in it for container services.
    pub(crate) activator: Activator,
    /// Active checks, run by the proxy for upstream services only.
    pub(crate) health: Health,
    pub(crate) outlier: OutlierPolicy,
}

impl ServiceHandle {
    pub(crate) fn new(name: &str, config: &Service, metrics: &Metrics) -> ServiceHandle {
        let kind = if config.container.is_some() {
            ServiceKind::Container
        } else {
            ServiceKind::Upstreams
        };
        let balancer = Balancer::new(config.balance, config.hash_on.as_ref());
        let metrics = metrics.service(name);
        let activator = Activator::new(
            config.limits.max_queued_requests,
            config.scale.cold_start_timeout,
            metrics.queued.clone(),
        );
        let outlier = OutlierPolicy::new(&config.outlier, metrics.ejections.clone());
        let handle = ServiceHandle {
            name: name.to_string(),
            kind,
            endpoints: ArcSwap::from_pointee(EndpointSet::new(Vec::new(), balancer.wants_table())),
            retired: Mutex::new(Vec::new()),
            balancer,
            retry: RetryPolicy::new(&config.retries),
            timeouts: config.timeouts.clone(),
            limits: config.limits.clone(),
            metrics,
            window: Window::new(),
            activator,
            health: config.health.clone(),
            outlier,
        };
        if let Some(upstreams) = &config.upstreams {
            handle.set_endpoints(
                upstreams
                    .static_
                    .iter()
                    .copied()
                    .map(Endpoint::new)
                    .collect(),
            );
        }
        handle
    }

    /// The service's name from the config.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> ServiceKind {
        self.kind
    }

    /// Replaces the endpoints balanced over. Endpoints that stay (same id and address) keep
    /// their pooled connections, in-flight counts, latency estimates, health and outlier
    /// state; requests already sent to a removed endpoint finish on it. New endpoints start
    /// healthy and not ejected.
    pub fn set_endpoints(&self, endpoints: Vec<Endpoint>) {
        let current = self.endpoints.load();
        let upstreams = endpoints
            .into_iter()
            .map(|endpoint| {
                current
                    .endpoints
                    .iter()
                    .find(|u| u.endpoint() == &endpoint)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Upstream::new(
                            endpoint,
                            self.timeouts.connect,
                            self.timeouts.idle,
                        ))
                    })
            })
            .collect::<Vec<_>>();
        let leaving = current
            .endpoints
            .iter()
            .filter(|u| !upstreams.iter().any(|kept| Arc::ptr_eq(kept, u)))
            .map(Arc::downgrade);
        {
            let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
            retired.retain(|w| w.strong_count() > 0);
            retired.extend(leaving);
        }
        let ready = !upstreams.is_empty();
        self.endpoints.store(Arc::new(EndpointSet::new(
            upstreams,
            self.balancer.wants_table(),
        )));
        if ready {
            self.activator.published();
        }
    }

    /// Changes whenever a request starts waiting in the hold queue (the value counts the
    /// requests ever held), so the reconciler can start a replica at once rather than at
    /// its next tick: `while demand.changed().await.is_ok() { … }`. Only container
    /// services hold requests; for the others it never changes.
    pub fn demand(&self) -> watch::Receiver<u64> {
        self.activator.demand()
    }

    /// Counts one health check of an endpoint of this service in
    /// `shoal_health_checks_total`: the container reconciler reports its replica probes
    /// here; the proxy's own checks of upstream services count themselves.
    pub fn record_health_check(&self, passed: bool) {
        if passed {
            self.metrics.health_passed.inc();
        } else {
            self.metrics.health_failed.inc();
        }
    }

    /// Requests held now waiting for a ready endpoint (also in [`ServiceHandle::load`]).
    pub fn queued(&self) -> u64 {
        self.activator.queued()
    }

    /// Requests in flight to endpoint `id`, whether it is still balanced over or has just
    /// been removed and is finishing its last requests (a drain polls this).
    pub fn in_flight(&self, id: &str) -> usize {
        let current = self.endpoints.load();
        if let Some(upstream) = current.endpoints.iter().find(|u| u.endpoint().id == id) {
            return usize::try_from(upstream.in_flight()).unwrap_or(usize::MAX);
        }
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired.retain(|w| w.strong_count() > 0);
        retired
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|u| u.endpoint().id == id)
            .map(|u| usize::try_from(u.in_flight()).unwrap_or(usize::MAX))
            .sum()
    }

    /// The endpoints balanced over now.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.endpoints
            .load()
            .endpoints
            .iter()
            .map(|u| u.endpoint().clone())
            .collect()
    }

    /// The service's load now: requests in flight, requests per second and p99 latency over
    /// the last ten seconds, requests queued. A held request is in `queued`, not in
    /// `in_flight`: the autoscaler's concurrency is their sum.
    pub fn load(&self) -> LoadSnapshot {
        LoadSnapshot {
            in_flight: u64::try_from(self.metrics.in_flight.get()).unwrap_or(0),
            rps: self.window.rps(),
            p99_ms: self.window.p99_ms(),
            queued: self.activator.queued(),
        }
    }

    /// The service's part of `/api/v1/status`.
    pub fn status(&self) -> ServiceStatus {
        ServiceStatus {
            name: self.name.clone(),
            kind: self.kind,
            load: self.load(),
            endpoints: self
                .endpoints
                .load()
                .endpoints
                .iter()
                .map(|u| EndpointStatus {
                    id: u.endpoint().id.clone(),
                    address: u.endpoint().address.to_string(),
                    state: u.state(),
                    healthy: u.available(),
                    in_flight: u.in_flight(),
                })
                .collect(),
        }
    }

    pub(crate) fn snapshot(&self) -> Arc<EndpointSet> {
        self.endpoints.load_full()
    }

    /// Counts a request in flight on the service until the guard drops.
    pub(crate) fn enter(self: &Arc<Self>) -> ServiceInFlight {
        self.metrics.in_flight.inc();
        ServiceInFlight(self.clone())
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.timeouts.request
    }
}

/// A request in flight on a service.
pub(crate) struct ServiceInFlight(Arc<ServiceHandle>);

impl ServiceInFlight {
    pub(crate) fn service(&self) -> &Arc<ServiceHandle> {
        &self.0
    }
}

impl Drop for ServiceInFlight {
    fn drop(&mut self) {
        self.0.metrics.in_flight.dec();
    }
}

/// One service in `/api/v1/status`, with the parts the proxy knows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub kind: ServiceKind,
    pub load: LoadSnapshot,
    pub endpoints: Vec<EndpointStatus>,
}

/// One endpoint in `/api/v1/status`. `state` is `ready`, `unhealthy` (failing the proxy's
/// health checks, upstream services only) or `ejected` (an outlier, for now); `healthy` is
/// whether balancers pick it. Container replicas that are not ready are not in the set at
/// all: whoever calls [`ServiceHandle::set_endpoints`] leaves them out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointStatus {
    pub id: String,
    pub address: String,
    pub state: &'static str,
    pub healthy: bool,
    pub in_flight: u64,
}
