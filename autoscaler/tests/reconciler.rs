//! The reconciler against a fake driver and a fake endpoint sink, in paused tokio time so
//! back-offs and intervals pass instantly and deterministically.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_autoscaler::{
    Desired, Drain, Endpoints, Exit, Load, Reconciler, ReplicaDriver, ReplicaMetrics, ScaleRefused,
    Started, Stats,
};
use shoal_config::{Restart, Service};
use tokio::sync::watch;

/// The fake world: which replicas run, which addresses answer probes, what is published.
#[derive(Default)]
struct World {
    next_port: AtomicU16,
    running: Mutex<HashMap<String, watch::Sender<Option<Exit>>>>,
    unhealthy: Mutex<HashSet<SocketAddr>>,
    published: Mutex<Vec<(String, SocketAddr)>>,
    in_flight: Mutex<HashMap<String, usize>>,
    starts: Mutex<Vec<String>>,
    removed: Mutex<Vec<String>>,
    /// Replicas gone for good (`forget`).
    forgotten: Mutex<Vec<String>>,
    fail_start: Mutex<bool>,
    /// New replicas exit (status 1) as soon as they run.
    exit_at_start: AtomicBool,
    load: Mutex<Load>,
    /// The container spec version new replicas start from, and each replica's version.
    version: AtomicU16,
    versions: Mutex<HashMap<String, u16>>,
    /// The most replicas running at once.
    peak: AtomicU16,
    /// Health checks reported: (passed, failed).
    checks: Mutex<(u64, u64)>,
    /// CPU seconds every replica reports above the base 0.5.
    cpu_extra: Mutex<f64>,
    demand: DemandSender,
    /// The reconciler's last word: no replica can become ready.
    unstartable: AtomicBool,
    /// Readings taken at autoscaler ticks (`tick_load`).
    tick_loads: AtomicUsize,
}

/// The proxy's demand signal, faked.
struct DemandSender(watch::Sender<u64>);

impl Default for DemandSender {
    fn default() -> Self {
        DemandSender(watch::channel(0).0)
    }
}

impl DemandSender {
    fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }

    fn bump(&self) {
        self.0.send_modify(|n| *n += 1);
    }
}

struct FakeHandle {
    id: String,
    exit: watch::Receiver<Option<Exit>>,
}

#[derive(Clone)]
struct FakeDriver(Arc<World>);

impl ReplicaDriver for FakeDriver {
    type Handle = FakeHandle;

    async fn start(&self, id: &str) -> anyhow::Result<Started<FakeHandle>> {
        if *self.0.fail_start.lock().unwrap() {
            anyhow::bail!("image not found");
        }
        let port = 10_000 + self.0.next_port.fetch_add(1, Ordering::SeqCst);
        let exit = self
            .0
            .exit_at_start
            .load(Ordering::SeqCst)
            .then_some(Exit::Code(1));
        let (tx, rx) = watch::channel(exit);
        self.0.running.lock().unwrap().insert(id.to_string(), tx);
        self.0.starts.lock().unwrap().push(id.to_string());
        let running = self.0.running.lock().unwrap().len() as u16;
        self.0.peak.fetch_max(running, Ordering::SeqCst);
        let version = self.0.version.load(Ordering::SeqCst);
        self.0
            .versions
            .lock()
            .unwrap()
            .insert(id.to_string(), version);
        Ok(Started {
            handle: FakeHandle {
                id: id.to_string(),
                exit: rx,
            },
            address: ([127, 0, 0, 1], port).into(),
        })
    }

    async fn wait(&self, handle: &FakeHandle) -> Exit {
        let mut exit = handle.exit.clone();
        loop {
            if let Some(e) = *exit.borrow() {
                return e;
            }
            if exit.changed().await.is_err() {
                return Exit::Signal(9);
            }
        }
    }

    async fn stop(&self, handle: &FakeHandle) {
        if let Some(tx) = self.0.running.lock().unwrap().get(&handle.id) {
            let _ = tx.send(Some(Exit::Signal(15)));
        }
    }

    async fn remove(&self, handle: &FakeHandle) {
        self.0.running.lock().unwrap().remove(&handle.id);
        self.0.removed.lock().unwrap().push(handle.id.clone());
    }

    fn forget(&self, id: &str) {
        self.0.forgotten.lock().unwrap().push(id.to_string());
    }

    async fn probe(&self, address: SocketAddr) -> bool {
        !self.0.unhealthy.lock().unwrap().contains(&address)
    }

    fn stats(&self, _: &FakeHandle) -> Option<Stats> {
        Some(Stats {
            cpu_seconds: 0.5 + *self.0.cpu_extra.lock().unwrap(),
            memory_bytes: 1 << 20,
        })
    }
}

#[derive(Clone)]
struct FakeEndpoints(Arc<World>);

impl Endpoints for FakeEndpoints {
    fn publish(&self, ready: Vec<(String, SocketAddr)>) {
        *self.0.published.lock().unwrap() = ready;
    }

    fn in_flight(&self, id: &str) -> usize {
        self.0
            .in_flight
            .lock()
            .unwrap()
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    fn load(&self) -> Load {
        *self.0.load.lock().unwrap()
    }

    fn tick_load(&self) -> Load {
        self.0.tick_loads.fetch_add(1, Ordering::SeqCst);
        self.load()
    }

    fn health_checked(&self, passed: bool) {
        let mut checks = self.0.checks.lock().unwrap();
        if passed {
            checks.0 += 1;
        } else {
            checks.1 += 1;
        }
    }

    fn startable(&self, startable: bool) {
        self.0.unstartable.store(!startable, Ordering::SeqCst);
    }

    fn demand(&self) -> watch::Receiver<u64> {
        self.0.demand.subscribe()
    }
}

impl World {
    fn published_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .published
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    fn crash(&self, id: &str, exit: Exit) {
        if let Some(tx) = self.running.lock().unwrap().get(id) {
            let _ = tx.send(Some(exit));
        }
    }
}

/// A container spec other than the one [`service`] gives by default.
const NEW_SPEC: &str = "    container: { host: true, command: [/bin/new] }\n";

fn service(yaml: &str) -> Service {
    let container = if yaml.contains("container:") {
        ""
    } else {
        "    container: { host: true, command: [/bin/true] }\n"
    };
    let text = format!(
        "listeners: [{{ name: web, bind: \"127.0.0.1:1\", service: web }}]\nservices:\n  web:\n{container}{yaml}"
    );
    shoal_config::parse(&text, "test.yaml")
        .expect("valid config")
        .services["web"]
        .clone()
}

fn setup(yaml: &str) -> (Arc<World>, Reconciler) {
    let (world, reconciler, _) = setup_with_registry(yaml);
    (world, reconciler)
}

/// [`setup`], with the registry its metrics are in.
fn setup_with_registry(yaml: &str) -> (Arc<World>, Reconciler, prometheus::Registry) {
    let world = Arc::new(World::default());
    let registry = prometheus::Registry::new();
    let metrics = ReplicaMetrics::new(&registry).expect("metrics");
    let reconciler = Reconciler::spawn(
        "web",
        &service(yaml),
        FakeDriver(world.clone()),
        FakeEndpoints(world.clone()),
        &metrics,
    );
    (world, reconciler, registry)
}

/// [`setup`], with the first replica's address (the fake driver's first port) failing its
/// health checks from the start.
fn setup_first_replica_unhealthy(yaml: &str) -> (Arc<World>, Reconciler) {
    let world = Arc::new(World::default());
    world
        .unhealthy
        .lock()
        .unwrap()
        .insert(([127, 0, 0, 1], 10_000).into());
    let registry = prometheus::Registry::new();
    let reconciler = Reconciler::spawn(
        "web",
        &service(yaml),
        FakeDriver(world.clone()),
        FakeEndpoints(world.clone()),
        &ReplicaMetrics::new(&registry).expect("metrics"),
    );
    (world, reconciler)
}

/// The service's series in `registry`, as `name{labels}` lines.
fn service_series(registry: &prometheus::Registry) -> Vec<String> {
    let mut text = Vec::new();
    prometheus::Encoder::encode(
        &prometheus::TextEncoder::new(),
        &registry.gather(),
        &mut text,
    )
    .expect("encode");
    String::from_utf8(text)
        .expect("utf-8")
        .lines()
        .filter(|l| l.contains("service=\"web\""))
        .map(str::to_string)
        .collect()
}

/// Lets the reconciler run until `check` holds (time is paused, so this is exact).
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("never reached: {what}");
}

#[tokio::test(start_paused = true)]
async fn starts_initial_replicas_and_admits_them_once_healthy() {
    let (world, reconciler) = setup("    scale: { initial: 2 }\n");
    until("two ready replicas", || world.published_ids().len() == 2).await;
    let status = reconciler.status();
    assert_eq!((status.desired, status.ready, status.starting), (2, 2, 0));
    assert!(status
        .replicas
        .iter()
        .all(|r| r.id.starts_with("web-") && r.healthy));
    // Usage is read at the start, not only at the next once-a-second refresh.
    assert!(
        status
            .replicas
            .iter()
            .all(|r| r.cpu_seconds == Some(0.5) && r.memory_bytes == Some(1 << 20)),
        "{:?}",
        status.replicas
    );
}

#[tokio::test(start_paused = true)]
async fn an_unhealthy_new_replica_gets_no_traffic() {
    let (world, reconciler) = setup_first_replica_unhealthy("");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(world.published_ids().is_empty());
    assert_eq!(reconciler.status().starting, 1);
    world.unhealthy.lock().unwrap().clear();
    until("admitted once healthy", || world.published_ids().len() == 1).await;
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_never_passes_counts_a_failure_per_interval() {
    let (world, _reconciler) = setup_first_replica_unhealthy("    health: { interval: 1s }\n");
    tokio::time::sleep(Duration::from_millis(5500)).await;
    // Probed every 20 ms while it starts; counted once a second, as a running checker would.
    let (passed, failed) = *world.checks.lock().unwrap();
    assert_eq!(passed, 0);
    assert!(
        (4..=6).contains(&failed),
        "{failed} failures counted in 5.5 s"
    );
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_never_passes_is_restarted_after_the_start_deadline() {
    // Deadline: the longest of 30 s, cold_start_timeout (2 s) and 15 checks 3 s apart (45 s).
    let (world, reconciler) = setup_first_replica_unhealthy(
        "    health: { interval: 3s, unhealthy_threshold: 15 }\n    scale: { cold_start_timeout: 2s }\n",
    );
    let begun = tokio::time::Instant::now();
    first_removed_at(&world, begun, Duration::from_secs(45)).await;
    // Its replacement (the fake driver's next address) passes and takes traffic.
    until("replaced and ready", || world.published_ids().len() == 1).await;
    let status = reconciler.status();
    assert_eq!(status.replicas[0].restarts, 1);
    assert_eq!(world.starts.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_slow_replica_is_not_restarted_before_the_cold_start_timeout() {
    // Deadline: the longest of 30 s, cold_start_timeout (40 s) and 2 checks 1 s apart.
    not_restarted_before(
        "    health: { interval: 1s, unhealthy_threshold: 2 }\n    scale: { cold_start_timeout: 40s }\n",
        Duration::from_secs(40),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_short_cold_start_timeout_still_gives_a_replica_30_seconds() {
    not_restarted_before(
        "    health: { interval: 500ms, unhealthy_threshold: 3 }\n    scale: { cold_start_timeout: 2s }\n",
        Duration::from_secs(30),
    )
    .await;
}

/// A first replica that never passes a check is left alone until `deadline`, then stopped.
async fn not_restarted_before(yaml: &str, deadline: Duration) {
    let (world, reconciler) = setup_first_replica_unhealthy(yaml);
    let begun = tokio::time::Instant::now();
    tokio::time::sleep(deadline - Duration::from_millis(100)).await;
    assert!(world.removed.lock().unwrap().is_empty(), "stopped too soon");
    assert_eq!(reconciler.status().starting, 1);
    first_removed_at(&world, begun, deadline).await;
}

/// Waits for the first replica's removal and checks it came `deadline` after `begun`
/// (within the 100 ms a paused clock's polling adds).
async fn first_removed_at(world: &World, begun: tokio::time::Instant, deadline: Duration) {
    until("the first process removed", || {
        !world.removed.lock().unwrap().is_empty()
    })
    .await;
    let waited = begun.elapsed();
    assert!(
        (deadline..deadline + Duration::from_millis(100)).contains(&waited),
        "stopped after {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_replica_takes_traffic_after_its_first_passing_check() {
    let (world, _reconciler) = setup("    health: { healthy_threshold: 3 }\n");
    // Time is paused and probes of a starting replica come at 0, 1, 2.5… ms: admitted at the
    // first, the replica sees at most the one probe already under way before it is seen
    // ready, not the three that `healthy_threshold` asks of an endpoint coming back.
    until("one ready", || world.published_ids().len() == 1).await;
    let (passed, failed) = *world.checks.lock().unwrap();
    assert!(
        passed < 3 && failed == 0,
        "{passed} passed, {failed} failed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_crashed_replica_leaves_at_once_and_restarts_with_backoff() {
    let (world, reconciler) = setup("    scale: { initial: 2 }\n");
    // Pinned, so that the idle policy does not scale the crashed replica's slot away.
    reconciler.scale(Desired::Pinned(2)).expect("pin");
    until("two ready", || world.published_ids().len() == 2).await;
    let victim = world.published_ids()[0].clone();
    world.crash(&victim, Exit::Code(1));
    until("victim unpublished", || {
        !world.published_ids().contains(&victim)
    })
    .await;
    let status = reconciler.status();
    let row = status
        .replicas
        .iter()
        .find(|r| r.id == victim)
        .expect("still listed");
    assert_eq!(row.state, "backoff");
    assert_eq!(row.restarts, 1);
    assert_eq!(row.last_exit.as_deref(), Some("exited with status 1"));
    until("victim back", || world.published_ids().contains(&victim)).await;
    assert!(
        world.removed.lock().unwrap().contains(&victim),
        "resources released before restart"
    );
    assert!(
        world.forgotten.lock().unwrap().is_empty(),
        "a restarted replica keeps its earlier output"
    );

    // A second crash right away waits 2 s, not 1 s.
    world.crash(&victim, Exit::Oom);
    until("victim unpublished again", || {
        !world.published_ids().contains(&victim)
    })
    .await;
    let before = tokio::time::Instant::now();
    until("victim back again", || {
        world.published_ids().contains(&victim)
    })
    .await;
    assert!(before.elapsed() >= Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn failing_health_checks_eject_and_restart() {
    let (world, reconciler) =
        setup("    health: { interval: 1s, timeout: 500ms, unhealthy_threshold: 2 }\n");
    until("one ready", || world.published_ids().len() == 1).await;
    let address = world.published.lock().unwrap()[0].1;
    world.unhealthy.lock().unwrap().insert(address);
    until("ejected", || world.published_ids().is_empty()).await;
    world.unhealthy.lock().unwrap().clear();
    until("replaced and ready", || world.published_ids().len() == 1).await;
    let (passed, failed) = *world.checks.lock().unwrap();
    assert!(
        passed >= 1 && failed >= 2,
        "checks reported: {passed} passed, {failed} failed"
    );
    assert_eq!(reconciler.status().replicas[0].restarts, 1);
}

#[tokio::test(start_paused = true)]
async fn scale_in_drains_before_stopping() {
    let (world, reconciler) = setup("    scale: { initial: 3 }\n    drain_timeout: 30s\n");
    reconciler.scale(Desired::Pinned(3)).expect("pin");
    until("three ready", || world.published_ids().len() == 3).await;
    for id in world.published_ids() {
        world.in_flight.lock().unwrap().insert(id, 1);
    }
    reconciler.scale(Desired::Pinned(1)).expect("scale");
    until("two leave the balancer", || {
        world.published_ids().len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        world.running.lock().unwrap().len(),
        3,
        "stopped with requests in flight"
    );
    assert_eq!(reconciler.status().draining, 2);
    world.in_flight.lock().unwrap().clear();
    until("drained ones stopped", || {
        world.running.lock().unwrap().len() == 1
    })
    .await;
    until("drained ones forgotten", || {
        world.forgotten.lock().unwrap().len() == 2
    })
    .await;
    let status = reconciler.status();
    assert_eq!(
        (status.desired, status.ready, status.pinned),
        (1, 1, Some(1))
    );
    // The operator's count is recorded as a decision, as the policy's are.
    let decision = status
        .scale
        .last_decision
        .clone()
        .expect("the pin as a decision");
    assert_eq!((decision.from, decision.to), (3, 1));
    assert_eq!(decision.reason, "pinned to 1 by `shoal scale`");
    // The same pin again changes nothing, and the decision stays the one that moved the count.
    reconciler.scale(Desired::Pinned(1)).expect("pin again");
    // Handled before the clock (paused) moves on: the reconciler waits for nothing else.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = reconciler.status().scale.last_decision.clone();
    assert_eq!(again.map(|d| (d.from, d.to)), Some((3, 1)));
    assert_eq!(
        reconciler.scale(Desired::Pinned(11)),
        Err(ScaleRefused::AboveMax { asked: 11, max: 10 })
    );
    // A reload's new `max` bounds the next pin.
    reconciler
        .update(&service(
            "    scale: { initial: 3, max: 12 }\n    drain_timeout: 30s\n",
        ))
        .expect("update");
    reconciler
        .scale(Desired::Pinned(11))
        .expect("within the new max");
}

#[tokio::test(start_paused = true)]
async fn a_pin_above_a_lower_max_shows_the_count_in_effect() {
    let (world, reconciler) = setup("    scale: { initial: 1, max: 10 }\n");
    until("one ready", || world.published_ids().len() == 1).await;
    reconciler.scale(Desired::Pinned(6)).expect("pin");
    for (max, desired) in [(3, 3), (12, 6)] {
        let yaml = format!("    scale: {{ initial: 1, max: {max} }}\n");
        reconciler.update(&service(&yaml)).expect("update");
        until("the reload applied", || reconciler.status().max == max).await;
        let status = reconciler.status();
        assert_eq!(
            (status.desired, status.pinned),
            (desired, Some(desired)),
            "max {max}"
        );
    }
}

/// Crashes the one replica of a `restart: never` service and waits until it is exited.
async fn crash_for_good(world: &World, reconciler: &Reconciler) {
    until("one ready", || world.published_ids().len() == 1).await;
    let id = world.published_ids()[0].clone();
    world.crash(&id, Exit::Code(3));
    until("exited", || {
        reconciler
            .status()
            .replicas
            .first()
            .is_some_and(|r| r.state == "exited")
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn restart_never_leaves_an_exited_replica() {
    let (world, reconciler) =
        setup("    container: { host: true, command: [/bin/true], restart: never }\n");
    crash_for_good(&world, &reconciler).await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(world.starts.lock().unwrap().len(), 1);
    // The autoscaler may still add replicas up to max: requests may wait for one.
    assert!(!world.unstartable.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn a_service_whose_every_slot_ended_for_good_tells_the_proxy() {
    let never = "    container: { host: true, command: [/bin/true], restart: never }\n";
    let (world, reconciler) = setup(&format!("{never}    scale: {{ max: 1 }}\n"));
    assert!(!world.unstartable.load(Ordering::SeqCst));
    crash_for_good(&world, &reconciler).await;
    // Its only slot is taken by a replica that will not run again: held requests would
    // wait for nothing.
    assert!(world.unstartable.load(Ordering::SeqCst));
    // A reload with room for another replica changes that.
    reconciler
        .update(&service(&format!("{never}    scale: {{ max: 2 }}\n")))
        .expect("update");
    until("startable again", || {
        !world.unstartable.load(Ordering::SeqCst)
    })
    .await;
    // Pinned to zero, nothing starts either.
    reconciler.scale(Desired::Pinned(0)).expect("within max");
    until("pinned to zero", || {
        world.unstartable.load(Ordering::SeqCst)
    })
    .await;
    reconciler.scale(Desired::Auto).expect("auto");
    until("auto again", || !world.unstartable.load(Ordering::SeqCst)).await;
}

/// With room below `max`, a request held after the only replica ended for good starts a
/// new one beside it, rather than waiting `cold_start_timeout` for nothing.
#[tokio::test(start_paused = true)]
async fn a_held_request_starts_a_replica_beside_one_ended_for_good() {
    let never = "    container: { host: true, command: [/bin/true], restart: never }\n";
    let (world, reconciler) = setup(&format!("{never}    scale: {{ max: 3 }}\n"));
    crash_for_good(&world, &reconciler).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(world.starts.lock().unwrap().len(), 1, "restart: never");
    world.load.lock().unwrap().queued = 1;
    world.demand.bump();
    until("a new replica for the held request", || {
        world.published_ids().len() == 1
    })
    .await;
    assert_eq!(world.starts.lock().unwrap().len(), 2);
    let status = reconciler.status();
    let decision = status.scale.last_decision.clone().expect("a decision");
    assert!(
        decision.reason.contains("1 replica ended for good"),
        "{decision:?}"
    );
    // One request does not put the service in panic (the slot an ended replica holds is
    // not load).
    assert!(!status.scale.panic, "{decision:?}");
    // A replacement that ends for good too is not replaced again while the request waits:
    // no restarts without back-off against `restart: never`.
    let id = world.published_ids()[0].clone();
    world.crash(&id, Exit::Code(3));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(world.starts.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_ended_replica_has_no_memory_series() {
    let (world, reconciler, registry) = setup_with_registry(
        "    container: { host: true, command: [/bin/true], restart: never }\n",
    );
    let memory = |registry: &prometheus::Registry| {
        service_series(registry)
            .into_iter()
            .filter(|l| l.starts_with("shoal_container_memory_bytes"))
            .count()
    };
    until("its memory reported", || memory(&registry) == 1).await;
    crash_for_good(&world, &reconciler).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(memory(&registry), 0, "{:#?}", service_series(&registry));
}

#[tokio::test(start_paused = true)]
async fn failed_starts_after_a_long_run_still_back_off() {
    let (world, reconciler) = setup("");
    until("one ready", || world.published_ids().len() == 1).await;
    let id = world.published_ids()[0].clone();
    // Up for longer than the back-off's reset time, then it crashes and cannot start again.
    tokio::time::sleep(Duration::from_secs(11 * 60)).await;
    *world.fail_start.lock().unwrap() = true;
    world.crash(&id, Exit::Code(1));
    tokio::time::sleep(Duration::from_secs(20)).await;
    // 1 s after the long run, then 2, 4, 8 s between failed starts: four or five restarts
    // in 20 s, not one a second.
    let restarts = reconciler.status().replicas[0].restarts;
    assert!((3..=6).contains(&restarts), "{restarts} restarts in 20 s");
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_cannot_start_backs_off() {
    let (world, reconciler, registry) = setup_with_registry("");
    *world.fail_start.lock().unwrap() = true;
    until("in back-off", || {
        reconciler
            .status()
            .replicas
            .first()
            .is_some_and(|r| r.state == "backoff" && r.restarts >= 2)
    })
    .await;
    let status = reconciler.status();
    assert!(status.replicas[0]
        .last_exit
        .as_deref()
        .is_some_and(|e| e.contains("image not found")));
    // Nothing ran, so nothing started or exited.
    let series = service_series(&registry);
    for line in [
        "shoal_container_starts_total{service=\"web\"} 0",
        "shoal_container_exits_total{reason=\"exited\",service=\"web\"} 0",
    ] {
        assert!(series.iter().any(|l| l == line), "{line} in {series:#?}");
    }
    *world.fail_start.lock().unwrap() = false;
    until("recovers", || world.published_ids().len() == 1).await;
}

#[tokio::test(start_paused = true)]
async fn a_run_that_ends_has_its_last_cpu_counted() {
    let (world, _reconciler, registry) = setup_with_registry("");
    until("one ready", || world.published_ids().len() == 1).await;
    let id = world.published_ids()[0].clone();
    let counted = |registry: &prometheus::Registry| {
        let name =
            format!("shoal_container_cpu_seconds_total{{replica=\"{id}\",service=\"web\"}} ");
        service_series(registry)
            .iter()
            .find_map(|l| l.strip_prefix(&name).map(str::to_string))
    };
    until("the first reading counted", || {
        counted(&registry).as_deref() == Some("0.5")
    })
    .await;
    // It used more after its last once-a-second reading, then ended (status 0: no restart).
    *world.cpu_extra.lock().unwrap() = 0.25;
    world.crash(&id, Exit::Code(0));
    until("removed", || world.removed.lock().unwrap().contains(&id)).await;
    assert_eq!(counted(&registry).as_deref(), Some("0.75"));
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_and_removes_everything() {
    let (world, reconciler, registry) = setup_with_registry("    scale: { initial: 3 }\n");
    until("three ready", || world.published_ids().len() == 3).await;
    // Every exit reason is exported from the start, at 0.
    let series = service_series(&registry);
    for reason in ["exited", "signaled", "oom"] {
        let line = format!("shoal_container_exits_total{{reason=\"{reason}\",service=\"web\"}} 0");
        assert!(series.contains(&line), "{line} in {series:#?}");
    }
    reconciler.shutdown(Drain::Wait).await;
    assert!(world.running.lock().unwrap().is_empty());
    assert!(world.published_ids().is_empty());
    assert_eq!(world.removed.lock().unwrap().len(), 3);
    assert_eq!(world.forgotten.lock().unwrap().len(), 3);
    // A stopped service (removed by a reload, say) leaves no series behind.
    assert_eq!(service_series(&registry), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_after_the_proxys_drain_stops_replicas_with_requests_in_flight_at_once() {
    for (drain, waited) in [(Drain::Over, false), (Drain::Wait, true)] {
        let (world, reconciler) = setup("    scale: { initial: 2 }\n    drain_timeout: 30s\n");
        until("two ready", || world.published_ids().len() == 2).await;
        for id in world.published_ids() {
            world.in_flight.lock().unwrap().insert(id, 1);
        }
        let begun = tokio::time::Instant::now();
        reconciler.shutdown(drain).await;
        assert!(world.running.lock().unwrap().is_empty());
        assert_eq!(
            begun.elapsed() >= Duration::from_secs(30),
            waited,
            "{drain:?}: stopped after {:?}",
            begun.elapsed()
        );
    }
}

/// A service that is retiring (a reload removed it, or made it an upstreams service) takes
/// no more load readings while it drains: they would move the proxy service's marker under
/// the reconciler that replaced it. Nor does it start replicas for requests its proxy
/// service holds (they are the new reconciler's), or stay in panic.
#[tokio::test(start_paused = true)]
async fn a_retiring_service_takes_no_more_load_readings_and_starts_nothing() {
    let (world, reconciler, registry) =
        setup_with_registry("    scale: { initial: 1 }\n    drain_timeout: 30s\n");
    until("one ready", || world.published_ids().len() == 1).await;
    for id in world.published_ids() {
        world.in_flight.lock().unwrap().insert(id, 1);
    }
    let starts = world.starts.lock().unwrap().len();
    let readings = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The spawn's reading, and the ticks' before the shutdown.
        let first = world.tick_loads.load(Ordering::SeqCst);
        world.load.lock().unwrap().queued = 500;
        world.demand.0.send_modify(|demand| *demand += 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let draining = service_series(&registry);
        tokio::time::sleep(Duration::from_secs(18)).await;
        (first, world.tick_loads.load(Ordering::SeqCst), draining)
    };
    let ((), (first, later, draining)) = tokio::join!(reconciler.shutdown(Drain::Wait), readings);
    assert!(first > 0, "no reading at all");
    assert_eq!(first, later, "readings taken while draining");
    assert_eq!(
        world.starts.lock().unwrap().len(),
        starts,
        "started while draining"
    );
    for series in [
        "shoal_autoscaler_panic{",
        "shoal_scale_decisions_total{direction=\"up\"",
    ] {
        let line = draining.iter().find(|line| line.starts_with(series));
        assert!(
            line.is_some_and(|line| line.ends_with(" 0")),
            "{draining:#?}"
        );
    }
}

#[test]
fn restart_policy_parses() {
    let svc = service("    container: { host: true, command: [/bin/true], restart: always }\n");
    assert_eq!(svc.container.expect("container").restart, Restart::Always);
}

#[tokio::test(start_paused = true)]
async fn load_scales_out_and_back_in_through_the_policy() {
    let (world, reconciler) = setup(
        "    scale: { min: 1, max: 8, initial: 1, target: 10, utilization: 1.0, window: 10s, panic_window: 2s, tick: 1s, scale_down_rate: 8 }\n",
    );
    until("one ready", || world.published_ids().len() == 1).await;
    // The starting count is the first decision shown.
    let first = reconciler.status().scale.last_decision.clone();
    let first = first.expect("the initial count as a decision");
    assert_eq!((first.from, first.to), (0, 1), "{first:?}");
    assert!(first.reason.contains("scale.initial"), "{first:?}");
    world.load.lock().unwrap().in_flight = 40;
    until("four ready", || world.published_ids().len() == 4).await;
    let status = reconciler.status();
    assert_eq!(status.desired, 4);
    let decision = status.scale.last_decision.clone().expect("a decision");
    assert_eq!((decision.from, decision.to), (1, 4), "{decision:?}");
    assert!(decision.reason.contains("concurrency"), "{decision:?}");
    assert_eq!(status.scale.metric, "concurrency");

    *world.load.lock().unwrap() = Load::default();
    until("back to one", || {
        world.published_ids().len() == 1 && reconciler.status().desired == 1
    })
    .await;

    // A pin overrides the policy until handed back.
    reconciler.scale(Desired::Pinned(3)).expect("pin");
    until("three pinned", || world.published_ids().len() == 3).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(reconciler.status().desired, 3);
    reconciler.scale(Desired::Auto).expect("auto");
    until("policy takes over again", || {
        reconciler.status().desired == 1
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn short_requests_keep_a_service_from_zero() {
    let (world, reconciler) = setup(
        "    scale: { min: 0, max: 4, initial: 1, zero_grace: 2s, window: 6s, panic_window: 2s }\n",
    );
    until("one ready", || world.published_ids().len() == 1).await;
    // Five requests a second of 1 ms each: never in flight when the load is sampled, but
    // each one's duration counts.
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        world.load.lock().unwrap().busy += Duration::from_millis(1);
        assert_eq!(
            reconciler.status().desired,
            1,
            "went to zero under steady traffic"
        );
    }
    // Without traffic it goes to zero after zero_grace.
    until("to zero once idle", || reconciler.status().desired == 0).await;
}

#[tokio::test(start_paused = true)]
async fn queued_requests_wake_a_service_at_zero() {
    let (world, reconciler) = setup(
        "    scale: { min: 0, max: 4, initial: 0, target: 10, utilization: 1.0, zero_grace: 5s, window: 10s, panic_window: 2s }\n",
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        world.starts.lock().unwrap().len(),
        0,
        "nothing starts without traffic"
    );
    world.load.lock().unwrap().queued = 1;
    world.demand.bump();
    // Woken at once, not at the next tick: the replica starts before a tick could pass.
    until("a start for the held request", || {
        world.starts.lock().unwrap().len() == 1
    })
    .await;
    let woke = tokio::time::Instant::now();
    until("a replica for the held request", || {
        world.published_ids().len() == 1
    })
    .await;
    assert!(woke.elapsed() < Duration::from_millis(500));
    *world.load.lock().unwrap() = Load::default();
    until("back to zero after zero_grace", || {
        let status = reconciler.status();
        status.desired == 0 && world.running.lock().unwrap().is_empty()
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_moves_the_count_is_a_recorded_decision() {
    let (world, reconciler) = setup("    scale: { min: 0, max: 2, initial: 0 }\n");
    assert_eq!(reconciler.status().desired, 0);
    reconciler
        .update(&service("    scale: { min: 1, max: 2, initial: 1 }\n"))
        .expect("update");
    until("one ready", || world.published_ids().len() == 1).await;
    let decision = reconciler.status().scale.last_decision.clone();
    let decision = decision.expect("the reload's count as a decision");
    assert_eq!((decision.from, decision.to), (0, 1), "{decision:?}");
    assert_eq!(decision.reason, "scale.min..=max is 1..=2 after a reload");
    // A reload that leaves the count alone decides nothing.
    reconciler
        .update(&service("    scale: { min: 1, max: 3, initial: 1 }\n"))
        .expect("update");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(reconciler.status().scale.last_decision, Some(decision));
}

#[tokio::test(start_paused = true)]
async fn a_fresh_replica_that_exits_stalls_the_rollout_with_the_old_one_serving() {
    let (world, reconciler) = setup("    scale: { min: 1, max: 1, initial: 1 }\n");
    until("one ready", || world.published_ids().len() == 1).await;
    let old = world.published_ids();
    world.version.store(1, Ordering::SeqCst);
    world.exit_at_start.store(true, Ordering::SeqCst);
    reconciler
        .update(&service(&format!(
            "{NEW_SPEC}    scale: {{ min: 1, max: 1, initial: 1 }}\n"
        )))
        .expect("update");
    // Each fresh replica exits as soon as it runs, again after every back-off: the old one
    // keeps serving throughout.
    for _ in 0..2_000 {
        assert_eq!(
            world.published_ids(),
            old,
            "the old replica left the balancer for a fresh one that exits"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        world.starts.lock().unwrap().len() >= 3,
        "the fresh replica was retried"
    );
}

#[tokio::test(start_paused = true)]
async fn going_back_to_the_running_spec_keeps_its_replica() {
    let scale = "    scale: { min: 1, max: 1, initial: 1 }\n";
    let (world, reconciler) = setup(scale);
    until("one ready", || world.published_ids().len() == 1).await;
    let old = world.published_ids();
    world.exit_at_start.store(true, Ordering::SeqCst);
    reconciler
        .update(&service(&format!("{NEW_SPEC}{scale}")))
        .expect("update");
    until("the new spec's replica tried", || {
        world.starts.lock().unwrap().len() >= 2
    })
    .await;
    // The new spec cannot start; the operator puts the old one back.
    world.exit_at_start.store(false, Ordering::SeqCst);
    let starts = world.starts.lock().unwrap().len();
    reconciler.update(&service(scale)).expect("update");
    // Long enough (in paused time) for a rollout to start, ready and swap in a replica.
    for _ in 0..400 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            world.published_ids(),
            old,
            "the old replica left the balancer"
        );
    }
    assert_eq!(
        world.running.lock().unwrap().keys().collect::<Vec<_>>(),
        vec![&old[0]]
    );
    assert_eq!(reconciler.status().replicas.len(), 1);
    assert!(
        world.starts.lock().unwrap().len() <= starts + 1,
        "replicas were started after going back: {:?}",
        world.starts.lock().unwrap()
    );
}

#[tokio::test(start_paused = true)]
async fn a_stalled_rollout_does_not_hold_growth_back() {
    let (world, reconciler) = setup("    scale: { min: 1, max: 4, initial: 1 }\n");
    until("one ready", || world.published_ids().len() == 1).await;
    world.version.store(1, Ordering::SeqCst);
    world.exit_at_start.store(true, Ordering::SeqCst);
    reconciler
        .update(&service(&format!(
            "{NEW_SPEC}    scale: {{ min: 1, max: 4, initial: 1 }}\n"
        )))
        .expect("update");
    until("the rollout stalled", || {
        world.starts.lock().unwrap().len() >= 2
    })
    .await;
    // The new spec works again, but the stalled replica waits out its back-off: the two
    // slots a pin to 4 adds (beside the old replica and the stalled one) start now, not
    // once the rollout has moved on.
    world.exit_at_start.store(false, Ordering::SeqCst);
    let starts = world.starts.lock().unwrap().len();
    reconciler.scale(Desired::Pinned(4)).expect("within max");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(world.starts.lock().unwrap().len(), starts + 2);
    until("four ready", || world.published_ids().len() == 4).await;
}

#[tokio::test(start_paused = true)]
async fn a_changed_spec_rolls_one_replica_at_a_time() {
    let (world, reconciler) = setup("    scale: { min: 3, initial: 3 }\n");
    until("three ready", || world.published_ids().len() == 3).await;
    let old = world.published_ids();
    world.version.store(1, Ordering::SeqCst);
    reconciler
        .update(&service(&format!(
            "{NEW_SPEC}    scale: {{ min: 3, initial: 3 }}\n"
        )))
        .expect("update");
    let on_new = |world: &World| {
        let versions = world.versions.lock().unwrap();
        world
            .published_ids()
            .iter()
            .all(|id| versions.get(id) == Some(&1))
    };
    world.peak.store(0, Ordering::SeqCst);
    for _ in 0..10_000 {
        let published = world.published_ids().len();
        assert!(
            published >= 3,
            "capacity dropped to {published} during the rollout"
        );
        if on_new(&world) && published == 3 && world.running.lock().unwrap().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(on_new(&world), "not every replica was replaced");
    assert_eq!(
        world.peak.load(Ordering::SeqCst),
        4,
        "a surge of exactly one replica"
    );
    assert!(old.iter().all(|id| !world.published_ids().contains(id)));
    assert_eq!(reconciler.status().ready, 3);
}

/// The proxy's service can be older than its reconciler (a reload made an upstreams service
/// a container one again): the requests it finished before are not this reconciler's load.
#[tokio::test(start_paused = true)]
async fn requests_finished_before_the_reconciler_are_not_its_load() {
    let world = Arc::new(World::default());
    world.load.lock().unwrap().busy = Duration::from_secs(600);
    let registry = prometheus::Registry::new();
    let reconciler = Reconciler::spawn(
        "web",
        &service("    scale: { min: 1, max: 4, initial: 1, target: 10 }\n"),
        FakeDriver(world.clone()),
        FakeEndpoints(world.clone()),
        &ReplicaMetrics::new(&registry).expect("metrics"),
    );
    until("one ready replica", || world.published_ids().len() == 1).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let status = reconciler.status();
    assert_eq!(status.desired, 1, "{:?}", status.scale.last_decision);
    assert!(!status.scale.panic, "{:?}", status.scale.last_decision);
}

/// Held requests count for the time they wait, as in-flight ones do: in the tick that lets
/// them go they are neither held at its end nor in flight for most of it, and that tick read
/// as no load, so a steady load was scaled in and out again (an outside audit: 5 → 4 → 5).
#[tokio::test(start_paused = true)]
async fn requests_let_go_late_in_a_tick_still_count_for_it() {
    let (world, reconciler) = setup(
        "    scale: { min: 1, max: 10, initial: 1, target: 10, utilization: 1.0, window: 2s, panic_window: 1s, tick: 1s }\n",
    );
    let begun = tokio::time::Instant::now();
    world.load.lock().unwrap().queued = 30;
    until("three ready", || world.published_ids().len() == 3).await;
    // Long past the panic; the held requests go in flight 50 ms before the tick at 10 s.
    tokio::time::sleep_until(begun + Duration::from_millis(9_950)).await;
    assert_eq!(reconciler.status().desired, 3);
    {
        let mut load = world.load.lock().unwrap();
        load.queued = 0;
        load.in_flight = 30;
    }
    for id in world.published_ids() {
        world.in_flight.lock().unwrap().insert(id, 10);
    }
    // The steady 30 holds 3 through the tick that let them go and after it.
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let status = reconciler.status();
        assert_eq!(status.desired, 3, "{:?}", status.scale.last_decision);
    }
}

/// `shoal scale SERVICE auto` on a service the autoscaler already runs changes nothing:
/// what `scale_down_delay` holds stays held.
#[tokio::test(start_paused = true)]
async fn auto_on_a_service_not_pinned_keeps_the_delay() {
    let (world, reconciler) = setup(
        "    scale: { min: 1, max: 10, initial: 1, target: 10, utilization: 1.0, window: 2s, panic_window: 1s, scale_down_delay: 10s }\n",
    );
    world.load.lock().unwrap().in_flight = 40;
    until("four ready", || world.published_ids().len() == 4).await;
    // Past the panic the burst began, then the load goes: the delay holds 4 for 10 s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    world.load.lock().unwrap().in_flight = 0;
    tokio::time::sleep(Duration::from_secs(2)).await;
    reconciler.scale(Desired::Auto).expect("auto");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = reconciler.status();
    assert_eq!(status.desired, 4, "{:?}", status.scale.last_decision);
}
