//! DNS-discovered upstreams (`upstreams.dns`): one task per service re-resolves its name
//! every `refresh` and hands the service the new endpoint set when it changed.
//!
//! - `a` / `aaaa`: every address of the name's A / AAAA records, at the configured `port`.
//! - `srv`: the SRV targets of the lowest priority (RFC 2782: a client tries those first),
//!   resolved to their addresses (A, then AAAA when a target has none), at the ports the
//!   records give; the configured `port` is not used. When no target of that priority has an
//!   address, the next priority's targets are used. Weights are not used: the targets of a
//!   priority are balanced over alike. A target of `.` (the record saying "no service here")
//!   is skipped.
//! - `refresh` alone sets the pace: record TTLs neither shorten nor lengthen it. The resolver
//!   cache is cleared before each round, so a round always asks the nameserver.
//! - With `nameserver: ip:port` exactly that server is asked (UDP, TCP when an answer is
//!   truncated), with no search domains and no hosts file; otherwise /etc/resolv.conf (and
//!   /etc/hosts) as the system resolver would.
//! - Endpoints are named by their address, as static upstreams are, so an address that stays
//!   across rounds keeps its pool, health and statistics, and one listed both statically and
//!   in DNS is one endpoint. Static upstreams of the same service stay in the set.
//! - A failed round (NXDOMAIN, timeout, no records) keeps the last good set, counts in
//!   `shoal_dns_resolution_failures_total{service}`, and logs at warn on the first failure
//!   of a streak, at debug after. But a name that the nameserver says has no records
//!   (NXDOMAIN, or an empty answer) [`GONE_AFTER`] rounds in a row is gone: its endpoints
//!   leave the set (the static ones stay) until it resolves again. One such answer can be a
//!   zone being reloaded, for which HAProxy holds a vanished name's servers (`hold nx`);
//!   a name deleted for good must stop getting traffic, as Envoy's strict DNS drops it.
//!
//! The first round runs before [`Proxy::bind`](crate::Proxy::bind) starts accepting (and
//! before a reload routes to a service it adds), so a service starts with its endpoints; a
//! first round that fails does not fail start-up (the service answers 503 until a round
//! succeeds). A reload that changes a service's `dns` block restarts its task.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfigGroup, ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{ResolveError, TokioResolver};
use prometheus::proto::LabelPair;
use prometheus::{IntCounter, IntCounterVec, Opts};
use shoal_config::{Dns, DnsRecord, Service};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::endpoint::Endpoint;
use crate::metrics::prune;
use crate::service::ServiceHandle;

/// Rounds in a row whose answer is "no such records" after which a name's endpoints go.
const GONE_AFTER: u32 = 3;

/// A zero `refresh` (only in a config that skipped validation) would re-resolve in a busy
/// loop; this is the least time between rounds.
const MIN_REFRESH: Duration = Duration::from_millis(10);

/// DNS discovery of a proxy: the failure counter its tasks share, and [`Discovery::spawn`]
/// to start one service's task.
pub(crate) struct Discovery {
    failures: IntCounterVec,
}

/// What one service's task needs.
struct Watcher {
    service: Arc<ServiceHandle>,
    dns: Dns,
    /// The service's static upstreams, kept in every set handed over.
    static_: BTreeSet<SocketAddr>,
    failures: IntCounter,
}

/// A running discovery task. It ends on the proxy's shutdown, or when this is dropped
/// (the service left the config, or its `dns` block changed on a reload).
pub(crate) struct Task {
    task: JoinHandle<()>,
    first_round: Option<oneshot::Receiver<()>>,
}

impl Task {
    /// Resolves once the task's first round has finished (successful or not), or at once
    /// when that was awaited before.
    pub(crate) async fn first_round(&mut self) {
        if let Some(first_round) = self.first_round.take() {
            // An error only means the task stopped (shutdown) before its first round ended.
            let _ = first_round.await;
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Discovery {
    /// Registers the failure counter in `registry`.
    pub(crate) fn new(registry: &prometheus::Registry) -> Result<Discovery, prometheus::Error> {
        let failures = IntCounterVec::new(
            Opts::new(
                "shoal_dns_resolution_failures_total",
                "DNS resolutions of upstreams.dns that failed (the last good endpoint set stayed)",
            ),
            &["service"],
        )?;
        registry.register(Box::new(failures.clone()))?;
        Ok(Discovery { failures })
    }

    /// Drops the series that `running` refuses (see [`crate::metrics::running_series`]).
    pub(crate) fn retain(&self, running: &dyn Fn(&LabelPair) -> bool) {
        prune(&self.failures, running);
    }

    /// Starts re-resolving `config`'s `upstreams.dns` for `service`, when it has one. The
    /// task ends when `shutdown` turns true (or its sender is gone) or the [`Task`] drops.
    pub(crate) fn spawn(
        &self,
        service: &Arc<ServiceHandle>,
        config: &Service,
        shutdown: watch::Receiver<bool>,
    ) -> Option<Task> {
        let upstreams = config.upstreams.as_ref()?;
        let watcher = Arc::new(Watcher {
            service: service.clone(),
            dns: upstreams.dns.clone()?,
            static_: upstreams.static_.iter().copied().collect(),
            failures: self.failures.with_label_values(&[service.name()]),
        });
        let (done, first_round) = oneshot::channel();
        Some(Task {
            task: tokio::spawn(watcher.run(shutdown, done)),
            first_round: Some(first_round),
        })
    }
}

impl Watcher {
    async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>, done: oneshot::Sender<()>) {
        let mut done = Some(done);
        let mut resolver = None;
        // The set last handed to the service: its static upstreams, which
        // `ServiceHandle::new` (or a reload) set, or the last resolved set when a reload
        // restarted this task, which then moves on from there.
        let mut current: BTreeSet<SocketAddr> = self
            .service
            .endpoints()
            .into_iter()
            .map(|e| e.address)
            .collect();
        let mut failing = false;
        let mut gone_rounds = 0;
        let refresh = self.dns.refresh.max(MIN_REFRESH);
        loop {
            let round = tokio::select! {
                round = self.round(&mut resolver) => round,
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            match round {
                Ok(resolved) => {
                    gone_rounds = 0;
                    if failing {
                        tracing::info!(service = %self.service.name(), name = %self.dns.name, "DNS resolution works again");
                        failing = false;
                    }
                    let next: BTreeSet<SocketAddr> =
                        self.static_.iter().copied().chain(resolved).collect();
                    if next != current {
                        tracing::info!(service = %self.service.name(), name = %self.dns.name, endpoints = ?next, "DNS endpoints changed");
                        self.service
                            .set_endpoints(next.iter().copied().map(Endpoint::new).collect());
                        current = next;
                    }
                }
                Err(error) => {
                    self.failures.inc();
                    if error.says_gone() {
                        gone_rounds += 1;
                    }
                    if gone_rounds >= GONE_AFTER && current != self.static_ {
                        tracing::warn!(service = %self.service.name(), name = %self.dns.name, %error, rounds = gone_rounds, "DNS name has no records; its endpoints are removed");
                        self.service.set_endpoints(
                            self.static_.iter().copied().map(Endpoint::new).collect(),
                        );
                        current = self.static_.clone();
                        failing = true;
                    } else if failing {
                        tracing::debug!(service = %self.service.name(), name = %self.dns.name, %error, "DNS resolution still fails; keeping the last good endpoints");
                    } else {
                        tracing::warn!(service = %self.service.name(), name = %self.dns.name, %error, endpoints = current.len(), "DNS resolution failed; keeping the last good endpoints");
                        failing = true;
                    }
                }
            }
            if let Some(done) = done.take() {
                let _ = done.send(());
            }
            tokio::select! {
                _ = tokio::time::sleep(refresh) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// One resolution round. The resolver is built on first use and again after a round
    /// that could not build it (say /etc/resolv.conf was missing), then kept.
    async fn round(
        &self,
        resolver: &mut Option<TokioResolver>,
    ) -> Result<Vec<SocketAddr>, Failure> {
        let resolver = match resolver {
            Some(resolver) => resolver,
            None => resolver.insert(build_resolver(&self.dns)?),
        };
        // Answers cached by the last round must not outlive it: `refresh` sets the pace.
        resolver.clear_cache();
        let name = self.dns.name.as_str();
        let addresses: Vec<SocketAddr> = match self.dns.record {
            DnsRecord::A => {
                let port = self.dns.port;
                let lookup = resolver.ipv4_lookup(name).await?;
                lookup
                    .iter()
                    .map(|a| SocketAddr::new(IpAddr::V4(a.0), port))
                    .collect()
            }
            DnsRecord::Aaaa => {
                let port = self.dns.port;
                let lookup = resolver.ipv6_lookup(name).await?;
                lookup
                    .iter()
                    .map(|aaaa| SocketAddr::new(IpAddr::V6(aaaa.0), port))
                    .collect()
            }
            DnsRecord::Srv => {
                let lookup = resolver.srv_lookup(name).await?;
                let mut records: Vec<_> = lookup
                    .iter()
                    .filter(|srv| !srv.target().is_root())
                    .collect();
                records.sort_by_key(|srv| srv.priority());
                let mut addresses = Vec::new();
                for (at, srv) in records.iter().enumerate() {
                    // A priority's targets are all resolved; a lower priority (a larger
                    // number) is only reached when none of them had an address.
                    if at > 0
                        && records[at - 1].priority() != srv.priority()
                        && !addresses.is_empty()
                    {
                        break;
                    }
                    match resolver.lookup_ip(srv.target().clone()).await {
                        Ok(ips) => {
                            addresses.extend(ips.iter().map(|ip| SocketAddr::new(ip, srv.port())))
                        }
                        // A target without addresses is left out; the others still count.
                        Err(error) if error.is_no_records_found() => {
                            tracing::debug!(service = %self.service.name(), target = %srv.target(), "SRV target has no addresses");
                        }
                        // Anything else (a timeout) fails the round rather than drop a
                        // target that may well still be there.
                        Err(error) => return Err(error.into()),
                    }
                }
                addresses
            }
        };
        if addresses.is_empty() {
            return Err(Failure::Empty);
        }
        Ok(addresses)
    }
}

fn build_resolver(dns: &Dns) -> Result<TokioResolver, ResolveError> {
    let mut builder = match dns.nameserver {
        Some(server) => {
            // UDP and TCP to the one server; its NXDOMAIN is final.
            let servers =
                NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
            let mut builder = TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), servers),
                TokioConnectionProvider::default(),
            );
            builder.options_mut().use_hosts_file = ResolveHosts::Never;
            builder
        }
        None => TokioResolver::builder_tokio()?,
    };
    // One try per server, each within the refresh interval (1 to 5 s): with the resolver's
    // own defaults (5 s, two attempts, over UDP and then TCP) a silent nameserver made a
    // round last 15 to 25 s, however short `refresh`, before it counted as failed.
    let options = builder.options_mut();
    options.timeout = dns.refresh.clamp(MIN_QUERY_TIMEOUT, MAX_QUERY_TIMEOUT);
    options.attempts = 1;
    Ok(builder.build())
}

/// Bounds of a DNS query's timeout, which follows `refresh`.
const MIN_QUERY_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a round found no endpoints.
enum Failure {
    Resolve(ResolveError),
    /// The name resolved, but to no usable address.
    Empty,
}

impl Failure {
    /// Whether the nameserver answered that the name has no such records (NXDOMAIN, or no
    /// error and no answer), rather than failing to answer.
    fn says_gone(&self) -> bool {
        match self {
            Failure::Empty => true,
            Failure::Resolve(error) => error.proto().is_some_and(|proto| {
                matches!(
                    proto.kind(),
                    ProtoErrorKind::NoRecordsFound {
                        response_code: ResponseCode::NXDomain | ResponseCode::NoError,
                        ..
                    }
                )
            }),
        }
    }
}

impl From<ResolveError> for Failure {
    fn from(error: ResolveError) -> Failure {
        Failure::Resolve(error)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Resolve(error) => error.fmt(f),
            Failure::Empty => f.write_str("no addresses in the answer"),
        }
    }
}
