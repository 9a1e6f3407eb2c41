//! A service as the proxy sees it: its balancer over a swappable endpoint set, its retry
//! policy, timeouts and limits, and its load.

use std::sync::{Arc, Mutex, Weak};

use tokio::sync::watch;

use arc_swap::ArcSwap;
use serde::Serialize;
use shoal_config::{Health, Limits, Service, Timeouts, Upstreams};

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

/// What a reload may change about a service, swapped whole: a request reads it once
/// ([`ServiceHandle::settings`]) and keeps that view to its end, so it never sees half of
/// an old config and half of a new one.
pub(crate) struct Settings {
    pub(crate) kind: ServiceKind,
    pub(crate) balancer: Balancer,
    pub(crate) retry: RetryPolicy,
    pub(crate) timeouts: Timeouts,
    pub(crate) limits: Limits,
    /// Active checks, run by the proxy for upstream services only.
    pub(crate) health: Health,
    pub(crate) outlier: OutlierPolicy,
}

impl Settings {
    fn new(config: &Service, metrics: &ServiceMetrics) -> Settings {
        Settings {
            kind: if config.container.is_some() {
                ServiceKind::Container
            } else {
                ServiceKind::Upstreams
            },
            balancer: Balancer::new(config.balance, config.hash_on.as_ref()),
            retry: RetryPolicy::new(&config.retries),
            timeouts: config.timeouts.clone(),
            limits: config.limits.clone(),
            health: config.health.clone(),
            outlier: OutlierPolicy::new(&config.outlier, metrics.ejections.clone()),
        }
    }
}

/// The live handle of one service, shared by every route to it. The reconciler and health
/// checker hand it new endpoint sets; the autoscaler reads its load. A reload keeps the
/// handle of a service that stays (by name) and swaps its [`Settings`] inside.
pub struct ServiceHandle {
    name: String,
    settings: ArcSwap<Settings>,
    /// The config the settings were built from, to tell what a reload changes. Only
    /// touched by reloads.
    config: Mutex<Service>,
    endpoints: ArcSwap<EndpointSet>,
    /// Endpoints that left the set while requests may still run on them, so a drain can
    /// tell when they are done. Touched only on set changes and drain polls, never per request.
    retired: Mutex<Vec<Weak<Upstream>>>,
    pub(crate) metrics: ServiceMetrics,
    pub(crate) window: Window,
    /// The hold queue; requests only wait in it for container services.
    pub(crate) activator: Activator,
}

impl ServiceHandle {
    pub(crate) fn new(name: &str, config: &Service, metrics: &Metrics) -> ServiceHandle {
        let metrics = metrics.service(name);
        let settings = Settings::new(config, &metrics);
        let activator = Activator::new(
            config.limits.max_queued_requests,
            config.scale.cold_start_timeout,
            metrics.queued.clone(),
        );
        let handle = ServiceHandle {
            name: name.to_string(),
            endpoints: ArcSwap::from_pointee(EndpointSet::new(
                Vec::new(),
                settings.balancer.wants_table(),
            )),
            settings: ArcSwap::from_pointee(settings),
            config: Mutex::new(config.clone()),
            retired: Mutex::new(Vec::new()),
            metrics,
            window: Window::new(),
            activator,
        };
        if let Some(upstreams) = &config.upstreams {
            handle.set_endpoints(static_endpoints(upstreams));
        }
        handle
    }

    /// The config the service runs with now.
    pub(crate) fn config(&self) -> Service {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The service's current settings; a request reads them once.
    #[inline]
    pub(crate) fn settings(&self) -> arc_swap::Guard<Arc<Settings>> {
        self.settings.load()
    }

    /// Moves the service to `config` (a reload that keeps it): settings are swapped for
    /// new requests (in-flight ones finish with the view they took), a changed balancer
    /// gets the endpoint set rebuilt for it, changed static upstreams become the endpoint
    /// set unless DNS discovery owns it. Returns one line per change, for the reload
    /// report; empty when nothing changed. Restarting the health checker and DNS task is
    /// the caller's part ([`ServiceChange`] says which).
    pub(crate) fn reconfigure(&self, config: &Service) -> ServiceChange {
        let mut old = self.config.lock().unwrap_or_else(|e| e.into_inner());
        let mut change = ServiceChange::default();
        if *old == *config {
            return change;
        }
        let name = &self.name;
        let line = |what: String| format!("service {name}: {what}");
        if old.balance != config.balance || old.hash_on != config.hash_on {
            change.lines.push(line(format!(
                "balance {} → {}",
                balance_name(&old),
                balance_name(config)
            )));
        }
        let kind = |s: &Service| {
            if s.container.is_some() {
                "container"
            } else {
                "upstreams"
            }
        };
        if kind(&old) != kind(config) {
            change
                .lines
                .push(line(format!("kind {} → {}", kind(&old), kind(config))));
        }
        for (changed, what) in [
            (old.retries != config.retries, "retries"),
            (old.timeouts != config.timeouts, "timeouts"),
            (old.limits != config.limits, "limits"),
            (old.outlier != config.outlier, "outlier detection"),
            (
                old.scale.cold_start_timeout != config.scale.cold_start_timeout,
                "cold_start_timeout",
            ),
            // A container service's is the reconciler's to report.
            (
                old.drain_timeout != config.drain_timeout && config.container.is_none(),
                "drain_timeout",
            ),
        ] {
            if changed {
                change.lines.push(line(format!("{what} changed")));
            }
        }
        let static_ = |s: &Service| s.upstreams.as_ref().map(|u| u.static_.clone());
        let dns = |s: &Service| s.upstreams.as_ref().and_then(|u| u.dns.clone());
        let static_changed = static_(&old) != static_(config);
        if static_changed {
            change.lines.push(line("upstreams changed".to_string()));
        }
        change.dns = dns(&old) != dns(config) || (static_changed && dns(config).is_some());
        if dns(&old) != dns(config) {
            change.lines.push(line("DNS discovery changed".to_string()));
        }
        change.health = old.health != config.health || kind(&old) != kind(config);
        if old.health != config.health {
            change.lines.push(line("health checks changed".to_string()));
        }
        if change.lines.is_empty() {
            // Something without effect on the proxy (say a container's image): the
            // reconciler reports it.
            *old = config.clone();
            return change;
        }

        let settings = Settings::new(config, &self.metrics);
        let table = settings.balancer.wants_table();
        self.settings.store(Arc::new(settings));
        self.activator.configure(
            config.limits.max_queued_requests,
            config.scale.cold_start_timeout,
        );
        let dns_dropped = dns(&old).is_some() && dns(config).is_none();
        let endpoints = match &config.upstreams {
            // A container service that became an upstream one starts from its static part
            // (DNS adds to it); the other way round, from nothing until the reconciler
            // publishes replicas.
            Some(upstreams) if kind(&old) != kind(config) => Some(static_endpoints(upstreams)),
            None if kind(&old) != kind(config) => Some(Vec::new()),
            // Without DNS (any more), the static part alone is the set.
            Some(upstreams) if (static_changed || dns_dropped) && upstreams.dns.is_none() => {
                Some(static_endpoints(upstreams))
            }
            // With DNS, the static part changes at once and what was resolved stays until
            // the restarted discovery task's first round replaces it (a nameserver that is
            // down then keeps a removed static address out all the same).
            Some(upstreams) if static_changed => {
                let old_static = static_(&old).unwrap_or_default();
                let current = self.endpoints.load();
                let resolved = current
                    .endpoints
                    .iter()
                    .map(|u| u.endpoint().address)
                    .filter(|address| {
                        !old_static.contains(address) && !upstreams.static_.contains(address)
                    });
                let mut endpoints = static_endpoints(upstreams);
                endpoints.extend(resolved.map(Endpoint::new));
                Some(endpoints)
            }
            _ => None,
        };
        *old = config.clone();
        drop(old);
        match endpoints {
            Some(endpoints) => self.set_endpoints(endpoints),
            None if self.endpoints.load().table.is_some() != table => {
                // The same endpoints, with (or without) the hash table the new balancer
                // wants. Until this store, a hashing request finds no table and picks at
                // random, which the balancer allows.
                let current = self.endpoints.load_full();
                self.endpoints
                    .store(Arc::new(EndpointSet::new(current.endpoints.clone(), table)));
            }
            None => {}
        }
        change
    }

    /// The service's name from the config.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> ServiceKind {
        self.settings.load().kind
    }

    /// Replaces the endpoints balanced over. Endpoints that stay (same id and address) keep
    /// their pooled connections, in-flight counts, latency estimates, health and outlier
    /// state; requests already sent to a removed endpoint finish on it. New endpoints start
    /// healthy and not ejected.
    pub fn set_endpoints(&self, endpoints: Vec<Endpoint>) {
        let current = self.endpoints.load();
        let settings = self.settings.load();
        let upstreams = endpoints
            .into_iter()
            .map(|endpoint| {
                current
                    .endpoints
                    .iter()
                    .find(|u| u.endpoint() == &endpoint)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Upstream::new(endpoint)))
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
            settings.balancer.wants_table(),
        )));
        if ready {
            self.activator.published();
        }
    }

    /// Replaces the endpoints with a container service's ready replicas. Ignored once a
    /// reload has made it an `upstreams` service: its endpoints are then the config's, and
    /// the replaced reconciler still publishes while its replicas drain. The config's lock
    /// is held throughout, so a reload's own set never lands between check and store.
    pub fn set_replica_endpoints(&self, endpoints: Vec<Endpoint>) {
        let config = self.config.lock().unwrap_or_else(|e| e.into_inner());
        if config.container.is_some() {
            self.set_endpoints(endpoints);
        }
    }

    /// Tells the hold queue whether a replica may still become ready without an operator's
    /// action (a reload, `shoal scale`): when none can, requests are not held for one.
    pub fn set_startable(&self, startable: bool) {
        self.activator.set_startable(startable);
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
            rps_last_second: self.window.rps_last_second(),
            p99_ms: self.window.p99_ms(),
            queued: self.activator.queued(),
            busy: self.window.busy(),
        }
    }

    /// [`ServiceHandle::load`] for the autoscaler's tick: requests finishing from now on
    /// count in [`LoadSnapshot::busy`] only for their time after this reading.
    pub fn tick_load(&self) -> LoadSnapshot {
        LoadSnapshot {
            busy: self.window.tick_busy(),
            ..self.load()
        }
    }

    /// The service's part of `/api/v1/status`.
    pub fn status(&self) -> ServiceStatus {
        ServiceStatus {
            name: self.name.clone(),
            kind: self.kind(),
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
}

/// What [`ServiceHandle::reconfigure`] changed, and which of the service's tasks must
/// restart for it.
#[derive(Debug, Default)]
pub(crate) struct ServiceChange {
    pub(crate) lines: Vec<String>,
    /// The DNS discovery task (its block, or the static part it keeps, changed).
    pub(crate) dns: bool,
    /// The health checker (its config, or the kind of service, changed).
    pub(crate) health: bool,
}

/// The endpoints of `upstreams.static`.
fn static_endpoints(upstreams: &Upstreams) -> Vec<Endpoint> {
    upstreams
        .static_
        .iter()
        .copied()
        .map(Endpoint::new)
        .collect()
}

fn balance_name(config: &Service) -> String {
    let name = match config.balance {
        shoal_config::Balance::RoundRobin => "round_robin",
        shoal_config::Balance::LeastRequest => "least_request",
        shoal_config::Balance::P2cEwma => "p2c_ewma",
        shoal_config::Balance::ConsistentHash => "consistent_hash",
    };
    match (&config.balance, &config.hash_on) {
        (shoal_config::Balance::ConsistentHash, Some(on)) => format!("{name} on {on}"),
        _ => name.to_string(),
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
