//! The replica reconciler: one task per container service that, every `scale.tick`, feeds
//! the scaling policy the service's load and applies its decision; keeps that many replicas
//! running, admits a replica to the balancer after its first passing health check, ejects
//! and restarts failed ones with back-off, and drains replicas before stopping them.
//!
//! Everything that waits (starting, exits, probes, drains, back-off) runs in small spawned
//! tasks that report back as events, so the state below is owned by the one task and needs
//! no locks. Events carry the replica's generation so that news about an earlier process of
//! a restarted replica is ignored.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use shoal_config::{Container, Health, Restart, ScaleMetric, Service};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::backoff;
use crate::driver::{Endpoints, Exit, ReplicaDriver, Started, Stats};
use crate::health::{HealthCounter, Verdict};
use crate::metrics::{ReplicaMetrics, ServiceMetrics};
use crate::policy::{cpu_percent, Decision, Direction, Observation, Policy};
use crate::status::{LastDecision, ReplicaStatus, ScaleStatus, ServiceReplicas};

/// While a replica starts it is probed at once, then after `STARTUP_PROBE_FIRST_GAP`, each
/// gap half as long again as the one before, up to `STARTUP_PROBE_INTERVAL` (or
/// `health.interval` if shorter). Probes at 0, 1, 2.5, 4.8, 8.1, 13.2, 20.8 ms… let a
/// replica that listens after 10 ms take traffic 3 ms later, not the 10 ms on average that a
/// fixed 20 ms period costs, while a slow starter is probed no more often than before.
const STARTUP_PROBE_FIRST_GAP: Duration = Duration::from_millis(1);
const STARTUP_PROBE_INTERVAL: Duration = Duration::from_millis(20);
/// How often draining replicas are checked for in-flight requests, and stats refreshed.
const DRAIN_POLL: Duration = Duration::from_millis(25);
const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// In-flight requests are sampled this often and averaged over each tick, so the
/// concurrency the policy sees is time-weighted rather than one instant's count.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// Who decides the replica count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Desired {
    /// Pinned by `shoal scale SERVICE N`.
    Pinned(u32),
    /// Decided by the scaling policy.
    Auto,
}

/// The handle the daemon keeps for one service's reconciler task.
pub struct Reconciler {
    control: mpsc::UnboundedSender<Control>,
    status: Arc<ArcSwap<ServiceReplicas>>,
    /// `scale.max` as last applied (a reload may change it), for refusing a pin above it.
    max: AtomicU32,
}

/// Why [`Reconciler::scale`] refused a count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScaleRefused {
    /// The count is above `scale.max`: the caller's mistake.
    AboveMax { asked: u32, max: u32 },
    /// The service is stopping; nothing scales it any more.
    ShuttingDown,
}

impl std::fmt::Display for ScaleRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScaleRefused::AboveMax { asked, max } => write!(
                f,
                "{asked} replicas is above this service's scale.max of {max}"
            ),
            ScaleRefused::ShuttingDown => f.write_str("the service is shutting down"),
        }
    }
}

enum Control {
    Scale(Desired),
    Update { service: Box<Service> },
    Shutdown(oneshot::Sender<()>, Drain),
}

/// Whether [`Reconciler::shutdown`] lets the requests in flight on its replicas finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Each ready replica drains for up to `drain_timeout` before it is stopped: the
    /// service was removed while the proxy goes on serving.
    Wait,
    /// Replicas are stopped at once: the daemon's shutdown has drained the proxy for the
    /// drain timeout already, and requests still in flight are cut, not waited for twice.
    Over,
}

impl Reconciler {
    /// Starts the reconciler task of container service `name` on the current tokio runtime.
    pub fn spawn<D: ReplicaDriver, E: Endpoints>(
        name: &str,
        service: &Service,
        driver: D,
        endpoints: E,
        metrics: &ReplicaMetrics,
    ) -> Reconciler {
        let (control, control_rx) = mpsc::unbounded_channel();
        let (events, events_rx) = mpsc::unbounded_channel();
        let status = Arc::new(ArcSwap::from_pointee(ServiceReplicas::default()));
        let restart = service
            .container
            .as_ref()
            .map_or(Restart::default(), |c| c.restart);
        let cpus = service.container.as_ref().and_then(|c| c.resources.cpus);
        // The proxy's service can be older than this reconciler (a reload made an upstreams
        // service a container one again): what it finished before is not this one's load.
        let busy_before = endpoints.tick_load().busy;
        let actor = Actor {
            name: name.to_string(),
            driver: Arc::new(driver),
            endpoints: Arc::new(endpoints),
            min: service.scale.min,
            max: service.scale.max,
            policy: Policy::new(&service.scale),
            metric: service.scale.metric,
            cpus,
            container: service.container.clone(),
            tick: service.scale.tick,
            born: Instant::now(),
            last_tick: Instant::now(),
            samples: (0, 0, 0),
            busy_before,
            cpu_seen: HashMap::new(),
            panic: false,
            last_decision: None,
            health: service.health.clone(),
            start_deadline: start_deadline(service),
            restart,
            drain_timeout: service.drain_timeout,
            desired: Desired::Auto,
            replicas: BTreeMap::new(),
            events,
            metrics: metrics.service(name),
            status: status.clone(),
            shutdown: None,
        };
        tokio::spawn(actor.run(control_rx, events_rx));
        Reconciler {
            control,
            status,
            max: AtomicU32::new(service.scale.max),
        }
    }

    /// Pins the replica count (within `0..=max`) or hands it back to the policy.
    pub fn scale(&self, desired: Desired) -> Result<(), ScaleRefused> {
        if let Desired::Pinned(asked) = desired {
            let max = self.max.load(Ordering::Relaxed);
            if asked > max {
                return Err(ScaleRefused::AboveMax { asked, max });
            }
        }
        self.control
            .send(Control::Scale(desired))
            .map_err(|_| ScaleRefused::ShuttingDown)
    }

    /// Applies a reloaded service config: new scale, health, restart and drain settings take
    /// effect at once. Replicas started from another container spec than the new one (the
    /// driver already starts replicas from it) are replaced one at a time: start a new one,
    /// wait until it is ready, then drain and stop an old one. Those started from the new
    /// spec stay, so a reload back to the spec that runs (after a rollout that stalled)
    /// only removes the replicas of the spec given up.
    pub fn update(&self, service: &Service) -> Result<(), String> {
        self.max.store(service.scale.max, Ordering::Relaxed);
        self.control
            .send(Control::Update {
                service: Box::new(service.clone()),
            })
            .map_err(|_| "the service is shutting down".to_string())
    }

    /// The latest snapshot of the service's replicas.
    pub fn status(&self) -> Arc<ServiceReplicas> {
        self.status.load_full()
    }

    /// Stops every replica, drained as `drain` says; resolves once all are removed.
    pub async fn shutdown(&self, drain: Drain) {
        let (done, wait) = oneshot::channel();
        if self.control.send(Control::Shutdown(done, drain)).is_ok() {
            let _ = wait.await;
        }
    }
}

enum Event<H> {
    Started {
        id: String,
        generation: u64,
        result: anyhow::Result<Started<H>>,
    },
    Exited {
        id: String,
        generation: u64,
        exit: Exit,
    },
    Removed {
        id: String,
        generation: u64,
    },
    Probe {
        id: String,
        generation: u64,
        passed: bool,
    },
    Drained {
        id: String,
        generation: u64,
    },
    RestartDue {
        id: String,
        generation: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Ended and not restarted (restart policy); its slot stays taken, as with Docker.
    Exited,
    /// Waiting out its restart back-off.
    Backoff,
    /// The driver is creating it.
    Launching,
    /// Running, not yet healthy: no traffic.
    Starting,
    /// Healthy and in the balancer.
    Ready,
    /// Out of the balancer, finishing its in-flight requests.
    Draining,
    /// Stop signal sent; waiting for the process to end.
    Stopping,
    /// Ended; the driver is releasing its resources.
    Removing,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Phase::Exited => "exited",
            Phase::Backoff => "backoff",
            Phase::Launching | Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
            Phase::Stopping | Phase::Removing => "stopping",
        }
    }
}

struct Replica<H> {
    generation: u64,
    phase: Phase,
    handle: Option<Arc<H>>,
    address: Option<SocketAddr>,
    restarts: u32,
    /// Consecutive restarts, for the back-off; forgotten after a long enough run.
    attempt: u32,
    requested_at: Instant,
    running_since: Option<Instant>,
    started_at: Option<SystemTime>,
    health: HealthCounter,
    healthy: bool,
    /// When a failed probe of this replica while it starts was last counted in
    /// `shoal_health_checks_total`.
    fail_counted_at: Option<Instant>,
    fast_probe: Arc<AtomicBool>,
    prober: Option<AbortHandle>,
    /// Being removed by a scale-in or shutdown: never restarted.
    retiring: bool,
    /// The last process was stopped for failing health checks, which counts as a failure.
    unhealthy_stop: bool,
    /// The container spec its current run started from.
    spec: Option<Container>,
    /// Started from a container spec that a reload replaced; rolled away one at a time.
    outdated: bool,
    last_exit: Option<Exit>,
    last_error: Option<String>,
    stats: Option<Stats>,
}

struct Actor<D: ReplicaDriver, E: Endpoints> {
    name: String,
    driver: Arc<D>,
    endpoints: Arc<E>,
    min: u32,
    max: u32,
    policy: Policy,
    metric: ScaleMetric,
    /// `resources.cpus`, the 100% of `metric: cpu`.
    cpus: Option<f64>,
    /// The container spec new runs start from (the driver's).
    container: Option<Container>,
    tick: Duration,
    born: Instant,
    last_tick: Instant,
    /// Sums of the in-flight and held samples in the current tick, and their number.
    samples: (u64, u64, u32),
    /// [`Load::busy`] at the last tick.
    busy_before: Duration,
    /// CPU seconds each replica had used at the previous tick (`metric: cpu`).
    cpu_seen: HashMap<String, f64>,
    panic: bool,
    last_decision: Option<LastDecision>,
    health: Health,
    /// How long a new replica may run without passing a check before it is restarted.
    start_deadline: Duration,
    restart: Restart,
    drain_timeout: Duration,
    desired: Desired,
    replicas: BTreeMap<String, Replica<D::Handle>>,
    events: mpsc::UnboundedSender<Event<D::Handle>>,
    metrics: ServiceMetrics,
    status: Arc<ArcSwap<ServiceReplicas>>,
    shutdown: Option<Vec<oneshot::Sender<()>>>,
}

impl<D: ReplicaDriver, E: Endpoints> Actor<D, E> {
    async fn run(
        mut self,
        mut control: mpsc::UnboundedReceiver<Control>,
        mut events: mpsc::UnboundedReceiver<Event<D::Handle>>,
    ) {
        let mut stats = tokio::time::interval(STATS_INTERVAL);
        stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sample = tokio::time::interval(SAMPLE_INTERVAL);
        sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval_at(Instant::now() + self.tick, self.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut demand = self.endpoints.demand();
        // The count a service starts at is its first decision: status shows it until the
        // policy or an operator makes another. It is not counted as a scale-up.
        let initial = self.target();
        self.remember(
            0,
            initial,
            format!("started at {initial} (scale.initial within min..=max)"),
        );
        self.reconcile();
        loop {
            tokio::select! {
                message = control.recv() => match message {
                    Some(Control::Scale(desired)) => {
                        let (from, before) = (self.target(), self.desired);
                        if desired == Desired::Auto && matches!(before, Desired::Pinned(_)) {
                            // The policy carries on from the count the pin left behind (on
                            // a service not pinned, `auto` changes nothing).
                            self.policy.set_current(from);
                        }
                        self.desired = desired;
                        // An operator's count is a decision too, recorded like the policy's
                        // (a pin is held to `max`, which a reload may have lowered since).
                        let to = self.target();
                        let reason = match desired {
                            Desired::Pinned(_) => format!("pinned to {to} by `shoal scale`"),
                            Desired::Auto => "handed back to the autoscaler by `shoal scale`".to_string(),
                        };
                        // The same pin again changes nothing, and keeps the last decision.
                        if desired != before || to != from {
                            self.record(from, to, false, reason);
                        }
                    }
                    Some(Control::Update { service }) => {
                        self.update(&service);
                        if tick.period() != self.tick {
                            tick = tokio::time::interval_at(Instant::now() + self.tick, self.tick);
                            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        }
                    }
                    Some(Control::Shutdown(done, drain)) => {
                        if drain == Drain::Over {
                            self.drain_timeout = Duration::ZERO;
                            // Those draining already (a scale-in, a rollout) stop now too.
                            let draining: Vec<String> = self
                                .replicas
                                .iter()
                                .filter(|(_, r)| r.phase == Phase::Draining)
                                .map(|(id, _)| id.clone())
                                .collect();
                            for id in draining {
                                self.stop(&id);
                            }
                        }
                        self.wind_down().push(done);
                    }
                    None => {
                        self.wind_down();
                    }
                },
                Some(event) = events.recv() => {
                    self.handle(event);
                    // Requests held when the last replica that could serve them ended.
                    self.activate();
                }
                _ = stats.tick() => self.refresh_stats(),
                _ = sample.tick() => {
                    let load = self.endpoints.load();
                    let (in_flight, queued, count) = self.samples;
                    self.samples = (in_flight + load.in_flight, queued + load.queued, count + 1);
                    continue;
                }
                // A retiring service scales to nothing; its ticks would only move the proxy
                // service's reading (`tick_load`) under the reconciler that replaced it.
                _ = tick.tick(), if self.shutdown.is_none() => self.autoscale(),
                Ok(()) = demand.changed() => self.activate(),
            }
            self.reconcile();
            if self.shutdown.is_some() && self.replicas.is_empty() {
                self.metrics.forget_service();
                for done in self.shutdown.take().unwrap_or_default() {
                    let _ = done.send(());
                }
                self.publish_status();
                return;
            }
        }
    }

    /// The service is retiring: it scales to nothing, so it is no longer in panic. Returns
    /// who waits for the end.
    fn wind_down(&mut self) -> &mut Vec<oneshot::Sender<()>> {
        self.panic = false;
        self.metrics.panic.set(0);
        self.shutdown.get_or_insert_with(Vec::new)
    }

    fn target(&self) -> u32 {
        if self.shutdown.is_some() {
            return 0;
        }
        match self.desired {
            Desired::Pinned(n) => n.min(self.max),
            Desired::Auto => self.policy.current(),
        }
    }

    /// One policy step: observe the tick's load and apply the decision.
    fn autoscale(&mut self) {
        let now = Instant::now();
        let elapsed = now - self.last_tick;
        self.last_tick = now;
        let load = self.endpoints.tick_load();
        let (in_flight, queued, count) = std::mem::take(&mut self.samples);
        let average = |sum: u64, now: u64| {
            if count > 0 {
                sum as f64 / f64::from(count)
            } else {
                now as f64
            }
        };
        let sampled = average(in_flight, load.in_flight);
        // Held requests over the tick, as in-flight ones are, or those held now if more (a
        // burst at the tick's end): in the tick that lets them go they are neither held at
        // its end nor in flight for most of it, and read as no load at all.
        let queued = average(queued, load.queued).max(load.queued as f64);
        // The requests that finished in the tick, by their durations: samples every 100 ms
        // miss short ones (a steady 5 requests/s of 1 ms each samples as 0, and a `min: 0`
        // service went to zero under it), while long ones show in the samples before they
        // finish. The larger of the two, as neither counts what the other misses.
        let finished = load.busy.saturating_sub(self.busy_before);
        self.busy_before = load.busy;
        let concurrency = if elapsed.is_zero() {
            sampled
        } else {
            sampled.max(finished.as_secs_f64() / elapsed.as_secs_f64())
        };
        let value = match self.metric {
            ScaleMetric::Concurrency => concurrency + queued,
            ScaleMetric::Rps => load.rps + load.queued as f64,
            ScaleMetric::Cpu => self.cpu_load(elapsed),
        };
        let ready = self.count(&[Phase::Ready]);
        let starting = self.count(&[Phase::Launching, Phase::Starting]);
        let decision = self.policy.observe(Observation {
            at: now - self.born,
            value,
            requests: concurrency > 0.0 || load.rps > 0.0 || queued > 0.0,
            ready,
            starting,
        });
        self.apply(decision);
    }

    /// Requests are waiting for a replica: let the policy wake the service now, not at the
    /// next tick.
    fn activate(&mut self) {
        // A retiring service starts nothing: requests its proxy service holds are for the
        // reconciler that replaced it (a reload made it an upstreams service and back).
        if self.shutdown.is_some() {
            return;
        }
        let queued = self.endpoints.load().queued;
        if queued == 0 || self.count(&[Phase::Ready]) > 0 {
            return;
        }
        let at = Instant::now() - self.born;
        // Replicas that ended for good keep their slots: the waiting requests need a new one
        // in the room below `max` (what `set_startable` promised them). One at a time: a
        // replacement that ends for good too is not replaced again, or a crashing service
        // would be restarted on every event, without back-off, against its `restart`
        // policy; the slot comes back once a scale-in removes an ended replica. A rollout
        // replaces outdated ones itself.
        let ended = self
            .replicas
            .values()
            .filter(|r| r.phase == Phase::Exited && !r.retiring && !r.outdated)
            .count()
            .min(1);
        let decision = self.policy.activate(
            at,
            u32::try_from(queued).unwrap_or(u32::MAX),
            u32::try_from(ended).unwrap_or(u32::MAX),
        );
        self.apply(decision);
    }

    /// CPU use over the last tick as a percentage of `resources.cpus`, summed over the ready
    /// replicas; replicas still starting report nothing (the HPA rule).
    fn cpu_load(&mut self, elapsed: Duration) -> f64 {
        let mut total = 0.0;
        let mut seen = HashMap::new();
        for (id, replica) in &self.replicas {
            if replica.phase != Phase::Ready {
                continue;
            }
            let Some(stats) = replica.handle.as_ref().and_then(|h| self.driver.stats(h)) else {
                continue;
            };
            if let Some(before) = self.cpu_seen.get(id) {
                // A replica restarted within the tick reads less than before: no use known.
                total += cpu_percent((stats.cpu_seconds - before).max(0.0), elapsed, self.cpus);
            }
            seen.insert(id.clone(), stats.cpu_seconds);
        }
        self.cpu_seen = seen;
        total
    }

    fn apply(&mut self, decision: Decision) {
        self.panic = decision.panic;
        self.metrics.panic.set(i64::from(decision.panic));
        if let Desired::Pinned(n) = self.desired {
            // A pin overrides the decision; the policy keeps observing from the pinned count.
            self.policy.set_current(n.min(self.max));
            return;
        }
        // Every decision with its inputs, also those that hold the count (a hold within
        // `tolerance`, in panic, by `scale_down_delay`): at debug level, once a tick.
        tracing::debug!(service = %self.name, from = decision.from, to = decision.to, panic = decision.panic, inputs = ?decision.inputs, "scaling decision: {}", decision.reason);
        if decision.direction().is_some() {
            self.record(decision.from, decision.to, decision.panic, decision.reason);
        }
    }

    /// Logs a decision, counts it by direction and keeps it as the last one (status JSON).
    fn record(&mut self, from: u32, to: u32, panic: bool, reason: String) {
        match Direction::between(from, to) {
            Some(Direction::Up) => self.metrics.scaled_up.inc(),
            Some(Direction::Down) => self.metrics.scaled_down.inc(),
            None => {}
        }
        tracing::info!(service = %self.name, from, to, panic, "scaling: {reason}");
        self.remember(from, to, reason);
    }

    /// Keeps a decision as the last one (status JSON, `shoal status`).
    fn remember(&mut self, from: u32, to: u32, reason: String) {
        self.last_decision = Some(LastDecision {
            at: rfc3339(SystemTime::now()),
            from,
            to,
            reason,
        });
    }

    fn count(&self, phases: &[Phase]) -> u32 {
        self.replicas
            .values()
            .filter(|r| phases.contains(&r.phase))
            .count() as u32
    }

    fn update(&mut self, service: &Service) {
        let current = self.target();
        self.policy = Policy::new(&service.scale);
        self.policy
            .set_current(current.clamp(service.scale.min, service.scale.max));
        self.min = service.scale.min;
        self.max = service.scale.max;
        // A reload whose min or max moves the count decides it, and is recorded as the
        // policy's and the operator's decisions are.
        let to = self.target();
        if to != current {
            let reason = format!(
                "scale.min..=max is {}..={} after a reload",
                self.min, self.max
            );
            self.record(current, to, false, reason);
        }
        self.metric = service.scale.metric;
        self.tick = service.scale.tick;
        self.health = service.health.clone();
        self.start_deadline = start_deadline(service);
        self.drain_timeout = service.drain_timeout;
        if let Some(container) = &service.container {
            self.restart = container.restart;
            self.cpus = container.resources.cpus;
        }
        self.container = service.container.clone();
        let mut rolling = false;
        for replica in self.replicas.values_mut().filter(|r| !r.retiring) {
            let outdated = replica.spec != self.container;
            rolling |= outdated && !replica.outdated;
            replica.outdated = outdated;
        }
        if rolling {
            // Replicas already on the new spec: it is one they ran before (a rollback), and
            // only the others go.
            if self.replicas.values().any(|r| !r.retiring && !r.outdated) {
                tracing::info!(service = %self.name, "rolling back: removing the replicas of the spec given up");
            } else {
                tracing::info!(service = %self.name, "rolling replicas to a new container spec");
            }
        }
    }

    /// Starts or retires replicas until the non-retiring ones match the target.
    fn reconcile(&mut self) {
        let target = self.target() as usize;
        let active: Vec<(Phase, Instant, String)> = self
            .replicas
            .iter()
            .filter(|(_, r)| !r.retiring)
            .map(|(id, r)| (r.phase, r.requested_at, id.clone()))
            .collect();
        if target > 0 && self.replicas.values().any(|r| r.outdated && !r.retiring) {
            // A rollout does not hold growth back: the replicas a higher target adds start
            // at once, on the new spec (the one spec there is to start from); the rollout
            // then goes on one replica at a time.
            for _ in active.len()..target {
                let id = self.new_id();
                self.launch(&id);
            }
            self.roll(target, active.len().max(target));
        } else if active.len() < target {
            for _ in active.len()..target {
                let id = self.new_id();
                self.launch(&id);
            }
        } else if active.len() > target {
            // Cheapest to lose first: ended, backing off, starting, then the newest ready.
            let mut victims = active;
            victims.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            let excess = victims.len() - target;
            for (_, _, id) in victims.into_iter().take(excess) {
                self.retire(&id);
            }
        }
        self.publish_status();
    }

    /// One step of a rolling update: while a fresh replica is on its way, or an old one is
    /// still draining, nothing happens; then, with a free slot, one more fresh replica starts
    /// (a surge of one), and with a replica too many, an outdated one is retired (drained if
    /// ready). So at most `target + 1` replicas run, and a fresh replica that cannot start
    /// stalls the rollout with the old ones still serving: until it is ready, whatever its
    /// phase (starting, exited and being removed, backing off, or exited for good), no old
    /// replica is retired for it.
    fn roll(&mut self, target: usize, active: usize) {
        let step_in_progress = self.replicas.values().any(|r| {
            (r.retiring && r.outdated) || (!r.retiring && !r.outdated && r.phase != Phase::Ready)
        });
        if step_in_progress {
            return;
        }
        if active <= target {
            let id = self.new_id();
            self.launch(&id);
            return;
        }
        let victim = self
            .replicas
            .iter()
            .filter(|(_, r)| r.outdated && !r.retiring)
            .min_by_key(|(_, r)| (r.phase == Phase::Ready, r.requested_at))
            .map(|(id, _)| id.clone());
        if let Some(id) = victim {
            self.retire(&id);
        }
    }

    fn new_id(&self) -> String {
        loop {
            let id = format!("{}-{:04x}", self.name, rand::random::<u16>());
            if !self.replicas.contains_key(&id) {
                return id;
            }
        }
    }

    fn launch(&mut self, id: &str) {
        // A new run's cgroup counts its CPU from zero.
        self.metrics.new_run(id);
        let replica = self
            .replicas
            .entry(id.to_string())
            .or_insert_with(|| Replica {
                generation: 0,
                phase: Phase::Launching,
                handle: None,
                address: None,
                restarts: 0,
                attempt: 0,
                requested_at: Instant::now(),
                running_since: None,
                started_at: None,
                health: HealthCounter::new(0, 0),
                healthy: false,
                fail_counted_at: None,
                fast_probe: Arc::new(AtomicBool::new(true)),
                prober: None,
                retiring: false,
                unhealthy_stop: false,
                spec: None,
                outdated: false,
                last_exit: None,
                last_error: None,
                stats: None,
            });
        replica.generation += 1;
        replica.phase = Phase::Launching;
        replica.requested_at = Instant::now();
        // A new replica takes traffic after its first passing check (SPEC; Envoy ignores
        // `healthy_threshold` for a new host's first check too). Once ready, only
        // `unhealthy_threshold` matters: a replica that fails it is restarted.
        replica.health = HealthCounter::new(1, self.health.unhealthy_threshold);
        replica.healthy = false;
        replica.fail_counted_at = None;
        replica.unhealthy_stop = false;
        // Every process starts from the driver's current spec, so a restart is up to date.
        replica.spec = self.container.clone();
        replica.outdated = false;
        replica.fast_probe = Arc::new(AtomicBool::new(true));
        let generation = replica.generation;
        let (driver, events, id) = (self.driver.clone(), self.events.clone(), id.to_string());
        tracing::info!(service = %self.name, replica = %id, "starting replica");
        tokio::spawn(async move {
            let result = driver.start(&id).await;
            let _ = events.send(Event::Started {
                id,
                generation,
                result,
            });
        });
    }

    fn retire(&mut self, id: &str) {
        let Some(replica) = self.replicas.get_mut(id) else {
            return;
        };
        replica.retiring = true;
        match replica.phase {
            Phase::Exited | Phase::Backoff => self.forget(id),
            Phase::Starting => self.stop(id),
            Phase::Ready => {
                tracing::info!(service = %self.name, replica = %id, "draining replica");
                replica.phase = Phase::Draining;
                let generation = replica.generation;
                self.publish_endpoints();
                let (endpoints, events, id) =
                    (self.endpoints.clone(), self.events.clone(), id.to_string());
                let deadline = Instant::now() + self.drain_timeout;
                tokio::spawn(async move {
                    while endpoints.in_flight(&id) > 0 && Instant::now() < deadline {
                        tokio::time::sleep(DRAIN_POLL).await;
                    }
                    let _ = events.send(Event::Drained { id, generation });
                });
            }
            // Launching stops once started; the rest are already on their way out.
            Phase::Launching | Phase::Draining | Phase::Stopping | Phase::Removing => {}
        }
    }

    /// The replica is gone for good: no status row, series or kept output remain.
    fn forget(&mut self, id: &str) {
        self.replicas.remove(id);
        self.metrics.forget(id);
        self.driver.forget(id);
    }

    /// Sends the stop signal (SIGKILL after the timeout); the exit watcher reports the end.
    fn stop(&mut self, id: &str) {
        let Some(replica) = self.replicas.get_mut(id) else {
            return;
        };
        replica.phase = Phase::Stopping;
        if let Some(prober) = replica.prober.take() {
            prober.abort();
        }
        if let Some(handle) = replica.handle.clone() {
            let driver = self.driver.clone();
            tokio::spawn(async move { driver.stop(&handle).await });
        }
    }

    fn handle(&mut self, event: Event<D::Handle>) {
        let (id, generation) = match &event {
            Event::Started { id, generation, .. }
            | Event::Exited { id, generation, .. }
            | Event::Removed { id, generation }
            | Event::Probe { id, generation, .. }
            | Event::Drained { id, generation }
            | Event::RestartDue { id, generation } => (id.clone(), *generation),
        };
        if self
            .replicas
            .get(&id)
            .is_none_or(|r| r.generation != generation)
        {
            return;
        }
        match event {
            Event::Started { result, .. } => self.started(&id, result),
            Event::Exited { exit, .. } => self.exited(&id, exit),
            Event::Removed { .. } => self.removed(&id),
            Event::Probe { passed, .. } => self.probed(&id, passed),
            Event::Drained { .. } => {
                if self
                    .replicas
                    .get(&id)
                    .is_some_and(|r| r.phase == Phase::Draining)
                {
                    self.stop(&id);
                }
            }
            Event::RestartDue { .. } => {
                if self
                    .replicas
                    .get(&id)
                    .is_some_and(|r| r.phase == Phase::Backoff)
                {
                    self.launch(&id);
                }
            }
        }
    }

    fn started(&mut self, id: &str, result: anyhow::Result<Started<D::Handle>>) {
        let Some(replica) = self.replicas.get_mut(id) else {
            return;
        };
        let started = match result {
            Ok(started) => started,
            Err(err) => {
                tracing::warn!(service = %self.name, replica = %id, "replica failed to start: {err:#}");
                replica.last_error = Some(format!("failed to start: {err:#}"));
                replica.last_exit = None;
                replica.handle = None;
                // Nothing runs: the back-off must not take the previous run's time for
                // this one's and reset itself after a long run.
                replica.running_since = None;
                // No process ran: neither a start nor an exit is counted, so exits never
                // outnumber starts.
                self.removed(id);
                return;
            }
        };
        self.metrics.starts.inc();
        let handle = Arc::new(started.handle);
        replica.handle = Some(handle.clone());
        replica.address = Some(started.address);
        replica.running_since = Some(Instant::now());
        replica.started_at = Some(SystemTime::now());
        replica.last_error = None;
        // Read at once, not at the next refresh: a replica's status shows its usage as
        // numbers from its start.
        replica.stats = self.driver.stats(&handle);
        let generation = replica.generation;

        let (driver, events, watched) = (self.driver.clone(), self.events.clone(), id.to_string());
        tokio::spawn(async move {
            let exit = driver.wait(&handle).await;
            let _ = events.send(Event::Exited {
                id: watched,
                generation,
                exit,
            });
        });

        if replica.retiring {
            self.stop(id);
            return;
        }
        replica.phase = Phase::Starting;
        let fast = replica.fast_probe.clone();
        let prober = self.spawn_prober(id, generation, started.address, fast);
        if let Some(replica) = self.replicas.get_mut(id) {
            replica.prober = Some(prober);
        }
    }

    fn spawn_prober(
        &self,
        id: &str,
        generation: u64,
        address: SocketAddr,
        fast: Arc<AtomicBool>,
    ) -> AbortHandle {
        let (driver, events, id) = (self.driver.clone(), self.events.clone(), id.to_string());
        let (interval, timeout) = (self.health.interval, self.health.timeout);
        let startup = STARTUP_PROBE_INTERVAL.min(interval);
        tokio::spawn(async move {
            let mut startup_gap = STARTUP_PROBE_FIRST_GAP.min(startup);
            loop {
                let passed = tokio::time::timeout(timeout, driver.probe(address))
                    .await
                    .unwrap_or(false);
                let event = Event::Probe {
                    id: id.clone(),
                    generation,
                    passed,
                };
                if events.send(event).is_err() {
                    return;
                }
                let period = if fast.load(Ordering::Relaxed) {
                    let gap = startup_gap;
                    startup_gap = (gap * 3 / 2).min(startup);
                    gap
                } else {
                    interval
                };
                tokio::time::sleep(period).await;
            }
        })
        .abort_handle()
    }

    fn probed(&mut self, id: &str, passed: bool) {
        let Some(replica) = self.replicas.get_mut(id) else {
            return;
        };
        if !matches!(replica.phase, Phase::Starting | Phase::Ready) {
            return;
        }
        // While starting, a failed probe mostly means "not listening yet", and probes come
        // every few milliseconds: one failure is counted per `interval` (the checks' own
        // cadence) once the replica has run that long, so a quick cold start counts none and
        // a replica that never comes up shows its failures.
        let count = passed || replica.phase == Phase::Ready || {
            let since = replica.fail_counted_at.or(replica.running_since);
            since.is_some_and(|at| at.elapsed() >= self.health.interval)
        };
        if count {
            if !passed && replica.phase == Phase::Starting {
                replica.fail_counted_at = Some(Instant::now());
            }
            self.endpoints.health_checked(passed);
        }
        match (replica.phase, replica.health.record(passed)) {
            (Phase::Starting, Verdict::Healthy) => {
                replica.phase = Phase::Ready;
                replica.healthy = true;
                replica.fast_probe.store(false, Ordering::Relaxed);
                self.metrics
                    .cold_start
                    .observe(replica.requested_at.elapsed().as_secs_f64());
                tracing::info!(service = %self.name, replica = %id, address = ?replica.address, "replica ready");
                self.publish_endpoints();
            }
            (Phase::Ready, Verdict::Unhealthy) => {
                replica.healthy = false;
                replica.unhealthy_stop = true;
                tracing::warn!(service = %self.name, replica = %id, "replica failed its health checks; ejecting and {} it", self.after_failed_checks());
                self.stop(id);
                self.publish_endpoints();
            }
            (Phase::Starting, Verdict::Unhealthy)
                if replica
                    .running_since
                    .is_some_and(|at| at.elapsed() >= self.start_deadline) =>
            {
                replica.unhealthy_stop = true;
                tracing::warn!(service = %self.name, replica = %id, deadline = ?self.start_deadline, "replica passed no health check in time; {} it", self.after_failed_checks());
                self.stop(id);
            }
            _ => {}
        }
    }

    /// What happens to a replica stopped for failing its health checks, per `restart`.
    fn after_failed_checks(&self) -> &'static str {
        match self.restart {
            Restart::Always | Restart::OnFailure => "restarting",
            Restart::Never => "stopping",
        }
    }

    fn exited(&mut self, id: &str, exit: Exit) {
        let Some(replica) = self.replicas.get_mut(id) else {
            return;
        };
        let was_ready = replica.phase == Phase::Ready;
        if let Some(prober) = replica.prober.take() {
            prober.abort();
        }
        replica.phase = Phase::Removing;
        replica.healthy = false;
        replica.last_exit = Some(exit);
        replica.stats = None;
        // The run's last CPU reading, taken before its cgroup goes: what it used since the
        // last refresh would otherwise never be counted.
        if let Some(stats) = replica.handle.as_ref().and_then(|h| self.driver.stats(h)) {
            self.metrics.cpu(id, stats.cpu_seconds);
        }
        self.metrics.ended(id);
        self.metrics.exit(exit.reason());
        if !replica.retiring && !replica.unhealthy_stop {
            tracing::warn!(service = %self.name, replica = %id, "replica {exit}");
        }
        let generation = replica.generation;
        let handle = replica.handle.take();
        if was_ready {
            self.publish_endpoints();
        }
        match handle {
            Some(handle) => {
                let (driver, events, id) =
                    (self.driver.clone(), self.events.clone(), id.to_string());
                tokio::spawn(async move {
                    driver.remove(&handle).await;
                    let _ = events.send(Event::Removed { id, generation });
                });
            }
            None => self.removed(id),
        }
    }

    /// The process is gone and its resources released: forget it, restart it, or leave it exited.
    fn removed(&mut self, id: &str) {
        let Some(replica) = self.replicas.get_mut(id) else {
            return;
        };
        if replica.retiring || self.shutdown.is_some() {
            self.forget(id);
            return;
        }
        let failed = replica.unhealthy_stop
            || replica.last_error.is_some()
            || replica.last_exit.is_some_and(|e| !e.is_success());
        let restart = match self.restart {
            Restart::Always => true,
            Restart::OnFailure => failed,
            Restart::Never => false,
        };
        if !restart {
            replica.phase = Phase::Exited;
            return;
        }
        if replica
            .running_since
            .is_some_and(|since| since.elapsed() >= backoff::RESET_AFTER)
        {
            replica.attempt = 0;
        }
        let delay = backoff::delay(replica.attempt);
        replica.attempt = replica.attempt.saturating_add(1);
        replica.restarts = replica.restarts.saturating_add(1);
        replica.phase = Phase::Backoff;
        tracing::info!(service = %self.name, replica = %id, ?delay, restarts = replica.restarts, "restarting replica after back-off");
        let generation = replica.generation;
        let (events, id) = (self.events.clone(), id.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = events.send(Event::RestartDue { id, generation });
        });
    }

    fn publish_endpoints(&self) {
        let ready = self
            .replicas
            .iter()
            .filter(|(_, r)| r.phase == Phase::Ready)
            .filter_map(|(id, r)| Some((id.clone(), r.address?)))
            .collect();
        self.endpoints.publish(ready);
    }

    fn refresh_stats(&mut self) {
        for (id, replica) in &mut self.replicas {
            replica.stats = replica.handle.as_ref().and_then(|h| self.driver.stats(h));
            if let Some(stats) = replica.stats {
                self.metrics
                    .usage(id, stats.cpu_seconds, stats.memory_bytes);
            }
        }
    }

    fn publish_status(&self) {
        let count = |phases: &[Phase]| self.count(phases);
        let replicas: Vec<ReplicaStatus> = self
            .replicas
            .iter()
            .map(|(id, r)| ReplicaStatus {
                id: id.clone(),
                state: r.phase.label(),
                address: r.address.map(|a| a.to_string()),
                healthy: r.healthy,
                restarts: r.restarts,
                started_at: r.started_at.map(rfc3339),
                cpu_seconds: r.stats.map(|s| s.cpu_seconds),
                memory_bytes: r.stats.map(|s| s.memory_bytes),
                last_exit: r
                    .last_error
                    .clone()
                    .or_else(|| r.last_exit.map(|e| e.to_string())),
            })
            .collect();
        let snapshot = ServiceReplicas {
            desired: self.target(),
            ready: count(&[Phase::Ready]),
            starting: count(&[Phase::Launching, Phase::Starting]),
            draining: count(&[Phase::Draining, Phase::Stopping, Phase::Removing]),
            min: self.min,
            max: self.max,
            // The pin in effect: one above a reload's lower `max` holds at `max`, and comes
            // back if `max` goes up again.
            pinned: match self.desired {
                Desired::Pinned(n) => Some(n.min(self.max)),
                Desired::Auto => None,
            },
            replicas,
            scale: ScaleStatus {
                metric: self.metric.as_str(),
                panic: self.panic,
                last_decision: self.last_decision.clone(),
            },
        };
        // Replicas that ended for good in every slot the service may fill, or a pin to zero:
        // none becomes ready until a reload or `shoal scale` changes that.
        let ended = self
            .replicas
            .values()
            .filter(|r| r.phase == Phase::Exited && !r.retiring)
            .count();
        let slots = match self.desired {
            Desired::Pinned(n) => n.min(self.max),
            Desired::Auto => self.max,
        };
        self.endpoints.startable(ended < slots as usize);
        self.metrics.desired.set(i64::from(snapshot.desired));
        self.metrics.ready.set(i64::from(snapshot.ready));
        self.metrics.starting.set(i64::from(snapshot.starting));
        self.metrics.draining.set(i64::from(snapshot.draining));
        self.status.store(Arc::new(snapshot));
    }
}

/// A replica that has run this long without passing a health check is restarted like a
/// ready one that fails them (SPEC: failing `unhealthy_threshold` checks restarts a replica).
/// Not before `unhealthy_threshold` checks' worth of `interval`, nor before
/// `scale.cold_start_timeout`, the wait SPEC already grants a cold start, nor before
/// [`MIN_START_DEADLINE`].
fn start_deadline(service: &Service) -> Duration {
    let checks = service
        .health
        .interval
        .saturating_mul(service.health.unhealthy_threshold.max(1));
    checks
        .max(service.scale.cold_start_timeout)
        .max(MIN_START_DEADLINE)
}

/// What Kubernetes' default liveness probe allows a container (3 failures 10 s apart): a
/// short `cold_start_timeout`, which is how long a held request waits, must not make an
/// application that takes a few seconds to listen restart forever.
const MIN_START_DEADLINE: Duration = Duration::from_secs(30);

/// Formats a wall-clock time as RFC 3339 UTC (`2026-01-01T00:00:00Z`).
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}
