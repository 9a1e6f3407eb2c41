//! End-to-end tests of container-backed services (root): the real daemon runs replicas of
//! `shoal demo-backend` as containers, under continuous load, and must lose no request when
//! a replica is killed, frozen or scaled away, and leave nothing behind when it stops.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::*;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A daemon with container services plus what the tests need to reach it.
struct Services {
    // Dropped first: the daemon's graceful stop removes its replicas before the state
    // directory goes.
    daemon: Daemon,
    proxy: SocketAddr,
    state_dir: PathBuf,
    config: PathBuf,
    _state: Option<TempDir>,
}

/// One container service `web` (with `network` networking) running the demo backend, plus
/// any `extra` services; a listener `web` in front of `web`. `web` adds service-level keys.
fn services(network: &str, web: &str, extra: &str, runtime: &str) -> Services {
    services_running("[/shoal, demo-backend]", network, web, extra, runtime)
}

/// [`services`] with `web`'s replicas running `command`.
fn services_running(
    command: &str,
    network: &str,
    web: &str,
    extra: &str,
    runtime: &str,
) -> Services {
    let port = free_port();
    let dir = TempDir::new("services-state");
    let state_dir = dir.path().to_path_buf();
    let config = format!(
        "admin: {{ listen: \"{{ADMIN}}\" }}
runtime: {{ state_dir: {state}{runtime} }}
listeners:
  - {{ name: web, bind: \"127.0.0.1:{port}\", service: web }}
services:
  web:
    container:
      host: true
      command: {command}
      network: {network}
      mounts: [{{ type: bind, source: {shoal}, target: /shoal, readonly: true }}]
      stop_timeout: 2s
{web}
    health: {{ http: {{ path: /healthz }}, interval: 200ms, timeout: 150ms, unhealthy_threshold: 2 }}
    timeouts: {{ request: 10s }}
    drain_timeout: 10s
{extra}",
        state = state_dir.display(),
        shoal = SHOAL,
    );
    let daemon = Daemon::start(&config);
    let path = daemon.dir.path().join("shoal.yaml");
    Services {
        daemon,
        proxy: ([127, 0, 0, 1], port).into(),
        state_dir,
        config: path,
        _state: Some(dir),
    }
}

impl Services {
    fn status(&self, service: &str) -> Value {
        let response = http_get(
            self.daemon.admin,
            &format!("/api/v1/services/{service}"),
            &[],
        )
        .expect("status");
        serde_json::from_str(&response.body).expect("status JSON")
    }

    fn wait_ready(&self, service: &str, ready: u64) -> Value {
        eventually(
            Duration::from_secs(30),
            &format!("{service} to have {ready} ready replicas"),
            || {
                let status = self.status(service);
                let replicas = &status["replicas"];
                (replicas["ready"] == ready
                    && replicas["starting"] == 0
                    && replicas["draining"] == 0
                    && status["endpoints"]
                        .as_array()
                        .is_some_and(|e| e.len() as u64 == ready))
                .then_some(status)
            },
        )
    }

    fn shoal(&self, args: &[&str]) -> (i32, String) {
        let output = Command::new(SHOAL)
            .args(args)
            .args(["--admin", &format!("http://{}", self.daemon.admin)])
            .args(["-c", self.config.to_str().expect("utf-8 path")])
            .output()
            .expect("run shoal");
        (
            output.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    }

    /// Host pids of every process of replica `id` (its init and workload). A replica that
    /// status lists may still be starting, its pid not yet recorded: waited for.
    fn replica_pids(&self, id: &str) -> Vec<i32> {
        let init = eventually(
            Duration::from_secs(10),
            &format!("{id}'s pid in shoal ps"),
            || {
                let (code, out) = self.shoal(&["ps", "--json"]);
                assert_eq!(code, 0, "{out}");
                let ps: Value = serde_json::from_str(&out).expect("ps JSON");
                ps["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["id"] == id)
                    .and_then(|c| c["pid"].as_i64())
            },
        ) as i32;
        let mut pids = vec![init];
        pids.extend(descendants(init));
        pids
    }

    /// Stops the daemon with SIGTERM and checks that no trace of its replicas is left.
    fn stop_and_check_clean(mut self, replica_ids: &[String]) {
        // The check below can find a replica's cgroup: it finds those still running (read
        // again after a miss, for a replica deleted meanwhile).
        let running = |id: &String| {
            let state = self
                .state_dir
                .join("containers")
                .join(id)
                .join("state.json");
            std::fs::read_to_string(state).is_ok_and(|s| s.contains("\"running\""))
        };
        for id in replica_ids.iter().filter(|id| running(id)) {
            assert!(
                find_cgroup("/sys/fs/cgroup", id, 6).is_some() || !running(id),
                "no cgroup found for running replica {id}"
            );
        }
        self.daemon.proc.signal(libc::SIGTERM);
        let code = self.daemon.proc.wait_exit(Duration::from_secs(30));
        assert_eq!(code, Some(Some(0)), "daemon exit:\n{}", self.daemon.log());
        assert_clean(&self.state_dir, replica_ids);
        // Not even an empty directory of the run is left; the image caches may stay.
        let left: Vec<String> = std::fs::read_dir(&self.state_dir)
            .map(|dir| dir.flatten().collect::<Vec<_>>())
            .unwrap_or_default()
            .iter()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name != "layers" && name != "images")
            .collect();
        assert!(
            left.is_empty(),
            "left in {}: {left:?}",
            self.state_dir.display()
        );
    }
}

fn descendants(pid: i32) -> Vec<i32> {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let mut out = Vec::new();
    for child in children
        .split_whitespace()
        .filter_map(|c| c.parse::<i32>().ok())
    {
        out.push(child);
        out.extend(descendants(child));
    }
    out
}

/// No process, state entry, mount or cgroup of these replicas remains.
fn assert_clean(state_dir: &Path, replica_ids: &[String]) {
    let entries = std::fs::read_dir(state_dir.join("containers"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(entries, 0, "state entries left in {}", state_dir.display());
    let kept_logs = std::fs::read_dir(state_dir.join("logs"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(kept_logs, 0, "kept logs left in {}", state_dir.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(state_dir.to_string_lossy().as_ref()),
        "mounts left under {}",
        state_dir.display()
    );
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        for id in replica_ids {
            let marker = format!("SHOAL_REPLICA={id}");
            let hit = cmdline.split(|b| *b == 0).any(|a| a == id.as_bytes())
                || environ.split(|b| *b == 0).any(|a| a == marker.as_bytes());
            assert!(!hit, "process {:?} of {id} left behind", entry.file_name());
        }
    }
    for id in replica_ids {
        assert!(
            find_cgroup("/sys/fs/cgroup", id, 6).is_none(),
            "cgroup of {id} left behind"
        );
    }
}

/// A cgroup directory of container `id` under `root`: named `<id>.<8 hex digits>` (the
/// runtime's state directory tag), up to `depth` levels down.
fn find_cgroup(root: &str, id: &str, depth: usize) -> Option<PathBuf> {
    let entries = std::fs::read_dir(root).ok()?;
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        let name = entry.file_name();
        let tag = name
            .to_str()
            .and_then(|n| n.strip_prefix(id))
            .and_then(|rest| rest.strip_prefix('.'));
        if tag.is_some_and(|t| t.len() == 8 && t.chars().all(|c| c.is_ascii_hexdigit())) {
            return Some(path);
        }
        if depth > 0 {
            if let Some(found) = find_cgroup(path.to_str()?, id, depth - 1) {
                return Some(found);
            }
        }
    }
    None
}

fn replica_ids(status: &Value) -> Vec<String> {
    status["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["id"].as_str().map(str::to_string))
        .collect()
}

/// Clients sending GETs continuously (a few hundred per second) until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(proxy: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..4)
            .map(|_| {
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match http_get(proxy, "/", &[]) {
                            Ok(r) if r.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => failures.lock().expect("lock").push(format!(
                                "{} {:?}",
                                r.status,
                                r.header("x-shoal-error")
                            )),
                            Err(e) => failures.lock().expect("lock").push(e.to_string()),
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            threads,
        }
    }

    /// Waits until `more` further requests succeeded, so the load spans what comes next.
    fn wait_for(&self, more: usize) {
        let target = self.ok.load(Ordering::Relaxed) + more;
        eventually(Duration::from_secs(30), "requests to flow", || {
            (self.ok.load(Ordering::Relaxed) >= target).then_some(())
        });
    }

    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("load thread");
        }
        let failures = self.failures.lock().expect("lock").clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

#[test]
fn killed_replica_is_replaced_without_failed_requests() {
    if !require(is_root(), "root (containers)") {
        return;
    }
    let svc = services("host", "    scale: { min: 3, initial: 3 }", "", "");
    let status = svc.wait_ready("web", 3);
    let victim = replica_ids(&status)[0].clone();
    let load = Load::start(svc.proxy);
    load.wait_for(200);
    for pid in svc.replica_pids(&victim) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let back = |victim: &str| {
        eventually(
            Duration::from_secs(30),
            &format!("the killed replica {victim} to be back"),
            || {
                let status = svc.status("web");
                let row = status["endpoints"]
                    .as_array()?
                    .iter()
                    .find(|e| e["id"] == victim)?
                    .clone();
                (row["restarts"] == 1
                    && row["state"] == "ready"
                    && status["replicas"]["ready"] == 3)
                    .then_some(())
            },
        )
    };
    back(&victim);
    load.wait_for(200);
    // `kill PID` of the workload alone: the demo backend ends by the SIGTERM, which
    // `restart: on_failure` restarts as it would a crash.
    let second = replica_ids(&svc.status("web"))
        .into_iter()
        .find(|id| *id != victim)
        .expect("another replica");
    for pid in &svc.replica_pids(&second)[1..] {
        // SAFETY: as above.
        unsafe { libc::kill(*pid, libc::SIGTERM) };
    }
    back(&second);
    load.wait_for(200);
    let (ok, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {failures:?}",
        failures.len(),
        ok + failures.len()
    );
    let metrics = svc.daemon.metrics();
    assert!(
        metric_value(
            &metrics,
            "shoal_container_exits_total",
            &[("service", "web"), ("reason", "signaled")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
    let mut ids = replica_ids(&svc.status("web"));
    ids.push(victim);
    svc.stop_and_check_clean(&ids);
}

#[test]
fn frozen_replica_is_ejected_and_gets_still_succeed() {
    if !require(is_root(), "root (containers)") {
        return;
    }
    let svc = services("host", "    scale: { min: 2, initial: 2 }", "", "");
    let status = svc.wait_ready("web", 2);
    let frozen = replica_ids(&status)[0].clone();
    let pids = svc.replica_pids(&frozen);
    for pid in &pids {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(*pid, libc::SIGSTOP) };
    }
    eventually(
        Duration::from_secs(20),
        "the frozen replica to leave the balancer",
        || {
            let status = svc.status("web");
            let row = status["endpoints"]
                .as_array()?
                .iter()
                .find(|e| e["id"] == frozen.as_str())?
                .clone();
            (row["state"] != "ready").then_some(())
        },
    );
    for _ in 0..30 {
        let response = http_get(svc.proxy, "/", &[]).expect("GET");
        assert_eq!(response.status, 200, "{response:?}");
        assert!(
            !response.body.contains(&frozen),
            "served by the frozen replica"
        );
    }
    for pid in &pids {
        // SAFETY: as above; lets the stop signal reach it.
        unsafe { libc::kill(*pid, libc::SIGCONT) };
    }
    let mut ids = replica_ids(&svc.status("web"));
    ids.push(frozen);
    svc.stop_and_check_clean(&ids);
}

#[test]
fn scaling_in_under_load_fails_no_request() {
    if !require(is_root(), "root (containers)") {
        return;
    }
    let svc = services("host", "    scale: { min: 3, initial: 3 }", "", "");
    let before = replica_ids(&svc.wait_ready("web", 3));
    let load = Load::start(svc.proxy);
    load.wait_for(200);
    let (code, out) = svc.shoal(&["scale", "web", "1"]);
    assert_eq!(code, 0, "{out}");
    let status = svc.wait_ready("web", 1);
    assert_eq!(status["replicas"]["pinned"], 1);
    load.wait_for(200);
    let (code, out) = svc.shoal(&["scale", "web", "2"]);
    assert_eq!(code, 0, "{out}");
    svc.wait_ready("web", 2);
    load.wait_for(200);
    let (ok, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {failures:?}",
        failures.len(),
        ok + failures.len()
    );
    // A count past `scale.max`, or no count at all, is bad usage (exit 2).
    let (code, out) = svc.shoal(&["scale", "web", "99"]);
    assert_eq!(code, 2, "above max must be refused: {out}");
    assert!(out.contains("max"), "{out}");
    let (code, out) = svc.shoal(&["scale", "web", "many"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("neither a replica count nor `auto`"), "{out}");
    let mut ids = before;
    ids.extend(replica_ids(&svc.status("web")));
    svc.stop_and_check_clean(&ids);
}

#[test]
fn a_draining_replica_shows_the_requests_it_still_serves() {
    if !require(is_root(), "root (containers)") {
        return;
    }
    let svc = services(
        "host",
        "    scale: { min: 2, initial: 2 }\n    balance: round_robin",
        "",
        "",
    );
    let before = replica_ids(&svc.wait_ready("web", 2));
    // One slow request on each replica (round robin), then one replica is scaled in. The
    // requests last 8 s (under the 10 s request timeout) so that the checks below, a
    // `shoal scale` and the drain all happen while they are in flight, even on a slow host.
    let proxy = svc.proxy;
    let slow: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || http_get(proxy, "/sleep?ms=8000", &[])))
        .collect();
    eventually(
        Duration::from_secs(10),
        "both slow requests in flight",
        || {
            let status = svc.status("web");
            let rows = status["endpoints"].as_array()?;
            rows.iter().all(|r| r["in_flight"] == 1).then_some(())
        },
    );
    let (code, out) = svc.shoal(&["scale", "web", "1"]);
    assert_eq!(code, 0, "{out}");
    eventually(
        Duration::from_secs(10),
        "a draining replica with 1 in flight",
        || {
            let status = svc.status("web");
            status["endpoints"]
                .as_array()?
                .iter()
                .any(|r| r["state"] == "draining" && r["in_flight"] == 1)
                .then_some(())
        },
    );
    for request in slow {
        let response = request
            .join()
            .expect("slow request thread")
            .expect("slow request");
        assert_eq!(response.status, 200, "{response:?}");
    }
    let mut ids = before;
    ids.extend(replica_ids(&svc.status("web")));
    svc.stop_and_check_clean(&ids);
}

#[test]
fn crashing_replica_backs_off_while_others_serve() {
    if !require(is_root(), "root (containers)") {
        return;
    }
    let crashy = "  crashy:\n    container: { host: true, command: [/bin/sh, -c, \"echo crashing >&2; exit 3\"] }\n    health: { interval: 200ms, timeout: 150ms }\n";
    let svc = services("host", "    scale: { min: 2, initial: 2 }", crashy, "");
    svc.wait_ready("web", 2);
    let row = eventually(Duration::from_secs(20), "crashy to back off", || {
        let status = svc.status("crashy");
        let row = status["endpoints"].as_array()?.first()?.clone();
        (row["state"] == "backoff" && row["restarts"].as_u64()? >= 2).then_some(row)
    });
    assert_eq!(row["last_exit"], "exited with status 3", "{row}");
    // Between runs its container is gone, but the last run's output is kept.
    let (code, out) = svc.shoal(&["logs", row["id"].as_str().expect("id")]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("crashing"), "{out}");
    for _ in 0..10 {
        assert_eq!(http_get(svc.proxy, "/", &[]).expect("GET").status, 200);
    }
    let metrics = svc.daemon.metrics();
    let exits = metric_value(
        &metrics,
        "shoal_container_exits_total",
        &[("service", "crashy"), ("reason", "exited")],
    );
    assert!(exits.unwrap_or(0.0) >= 2.0, "{metrics}");
    let (code, out) = svc.shoal(&["status"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("backoff"), "{out}");
    let mut ids = replica_ids(&svc.status("web"));
    ids.extend(replica_ids(&svc.status("crashy")));
    svc.stop_and_check_clean(&ids);
}

/// `shoal logs -f` prints a run's output to its last line, written just before it ends (its
/// container, and the output with it, goes within milliseconds of the exit).
#[test]
fn logs_follow_prints_a_run_to_its_last_line() {
    if !require(is_root(), "root (containers)") {
        return;
    }
    let talker = "  talker:\n    container: { host: true, restart: never, command: [/bin/sh, -c, \"echo first; sleep 2; echo last-words; exit 3\"] }\n";
    let svc = services("host", "", talker, "");
    svc.wait_ready("web", 1);
    let id = eventually(Duration::from_secs(10), "talker to print", || {
        let id = replica_ids(&svc.status("talker")).into_iter().next()?;
        let (code, out) = svc.shoal(&["logs", &id]);
        (code == 0 && out.contains("first")).then_some(id)
    });
    let mut follower = Command::new(SHOAL)
        .args(["logs", "-f", &id])
        .args(["-c", svc.config.to_str().expect("utf-8 path")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run shoal logs -f");
    let status = eventually(
        Duration::from_secs(30),
        "shoal logs -f to end with the run",
        || follower.try_wait().ok().flatten(),
    );
    let mut out = String::new();
    std::io::Read::read_to_string(&mut follower.stdout.take().expect("stdout"), &mut out)
        .expect("read shoal logs -f");
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("first") && out.contains("last-words"), "{out}");
    let mut ids = replica_ids(&svc.status("web"));
    ids.push(id);
    svc.stop_and_check_clean(&ids);
}

/// A replica that never passes a check (nothing listens) is stopped after its start
/// deadline (30 s, the floor under a 1 s `cold_start_timeout`) and restarted, as a ready one
/// failing its checks would be, while the other service keeps serving.
#[test]
fn a_replica_that_never_comes_up_is_restarted() {
    if !require(is_root(), "root (containers)") {
        return;
    }
    let stuck = "  stuck:\n    container: { host: true, command: [/bin/sleep, \"1000\"], stop_timeout: 1s }\n    health: { interval: 200ms, timeout: 150ms, unhealthy_threshold: 2 }\n    scale: { cold_start_timeout: 1s }\n";
    let svc = services("host", "", stuck, "");
    svc.wait_ready("web", 1);
    let row = eventually(Duration::from_secs(60), "stuck to be restarted", || {
        let status = svc.status("stuck");
        let row = status["endpoints"].as_array()?.first()?.clone();
        (row["restarts"].as_u64()? >= 1).then_some(row)
    });
    assert_ne!(row["state"], "ready", "{row}");
    let metrics = svc.daemon.metrics();
    let stopped = metric_value(
        &metrics,
        "shoal_container_exits_total",
        &[("service", "stuck"), ("reason", "signaled")],
    );
    assert!(stopped.unwrap_or(0.0) >= 1.0, "{metrics}");
    let failed = metric_value(
        &metrics,
        "shoal_health_checks_total",
        &[("service", "stuck"), ("result", "fail")],
    );
    assert!(failed.unwrap_or(0.0) >= 2.0, "{metrics}");
    assert_eq!(http_get(svc.proxy, "/", &[]).expect("GET").status, 200);
    let mut ids = replica_ids(&svc.status("web"));
    ids.extend(replica_ids(&svc.status("stuck")));
    svc.stop_and_check_clean(&ids);
}

#[test]
fn sigterm_drains_and_leaves_nothing_isolated_mode() {
    if !require(is_root(), "root (containers)") {
        return;
    }
    // Every host-side veth of this test carries an address from its own subnet.
    let veths = || {
        let out = Command::new("ip")
            .args(["-4", "-o", "addr"])
            .output()
            .expect("ip addr");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (text.matches("inet 10.214.0.").count(), text)
    };
    let svc = services(
        "isolated",
        "    scale: { min: 2, initial: 2 }",
        "",
        ", subnet: 10.214.0.0/24",
    );
    let status = svc.wait_ready("web", 2);
    let address = status["endpoints"][0]["address"]
        .as_str()
        .expect("address")
        .to_string();
    assert!(address.starts_with("10.214.0."), "{status}");
    let (count, listing) = veths();
    assert_eq!(count, 2, "one host-side veth per replica:\n{listing}");
    let proxy = svc.proxy;
    let clients: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(move || http_get(proxy, "/sleep?ms=1000", &[])))
        .collect();
    eventually(Duration::from_secs(10), "three requests in flight", || {
        let metrics = svc.daemon.metrics();
        (metric_value(&metrics, "shoal_requests_in_flight", &[("service", "web")]) == Some(3.0))
            .then_some(())
    });
    let ids = replica_ids(&status);
    svc.stop_and_check_clean(&ids);
    for client in clients {
        let response = client.join().expect("client").expect("answer during drain");
        assert_eq!(response.status, 200);
    }
    let (count, listing) = veths();
    assert_eq!(count, 0, "veth pairs left behind:\n{listing}");
}

#[test]
fn sigkill_of_the_daemon_is_cleaned_up_by_the_next_start() {
    if !require(is_root(), "root (containers)") {
        return;
    }
    let mut svc = services("host", "    scale: { min: 2, initial: 2 }", "", "");
    let ids = replica_ids(&svc.wait_ready("web", 2));
    svc.daemon.proc.signal(libc::SIGKILL);
    // Not reaped yet, as under a supervisor that restarts before it waits: the dead daemon
    // is a zombie whose /proc entry still carries its start time.
    let stat = format!("/proc/{}/stat", svc.daemon.proc.pid());
    eventually(
        Duration::from_secs(10),
        "the killed daemon a zombie",
        || {
            std::fs::read_to_string(&stat)
                .ok()?
                .contains(") Z ")
                .then_some(())
        },
    );
    let config = std::fs::read_to_string(&svc.config).expect("config");
    let restarted = Daemon::start(&config.replace(&svc.daemon.admin.to_string(), "{ADMIN}"));
    let again = Services {
        daemon: restarted,
        proxy: svc.proxy,
        state_dir: svc.state_dir.clone(),
        config: svc.config.clone(),
        _state: svc._state.take(),
    };
    let status = again.wait_ready("web", 2);
    assert_eq!(http_get(again.proxy, "/", &[]).expect("GET").status, 200);
    // The old replicas are gone; only the new ones run.
    for id in &ids {
        assert!(!replica_ids(&status).contains(id));
    }
    assert_clean_of(&ids);
    svc.daemon
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("killed daemon reaped");
    let mut all = ids;
    all.extend(replica_ids(&status));
    again.stop_and_check_clean(&all);
}

#[test]
fn a_killed_daemons_replicas_are_removed_by_a_start_without_container_services() {
    if !require(is_root(), "root (containers)") {
        return;
    }
    let mut svc = services("isolated", "    scale: { min: 1, initial: 1 }", "", "");
    let ids = replica_ids(&svc.wait_ready("web", 1));
    let _cleanup = LeftoversRemoved(svc.config.clone());
    kill_and_reap(&mut svc.daemon);
    // The same state directory, now under a plain load balancer: it has no runtime of its
    // own to open, yet it must remove what the dead run left there.
    let (_backend, balancer) = balancer_on(&svc.state_dir);
    assert_clean(&svc.state_dir, &ids);
    assert!(
        balancer
            .log()
            .contains("removed containers left by a previous run"),
        "{}",
        balancer.log()
    );
}

/// A killed daemon whose only replica had exited leaves that run's output kept under
/// `logs/` and no container: a later daemon without container services drops it too.
#[test]
fn a_killed_daemons_kept_logs_are_dropped_by_a_start_without_container_services() {
    if !require(is_root(), "root (containers)") {
        return;
    }
    let once = "  once:\n    container: { host: true, restart: never, command: [/bin/sh, -c, \"echo ran; exit 1\"] }\n    health: { interval: 200ms, timeout: 150ms }\n";
    let mut svc = services("host", "    scale: { min: 0, initial: 0 }", once, "");
    eventually(Duration::from_secs(20), "once to have exited", || {
        let status = svc.status("once");
        (status["endpoints"].as_array()?.first()?["state"] == "exited").then_some(())
    });
    let kept = svc.state_dir.join("logs");
    assert!(
        std::fs::read_dir(&kept).is_ok_and(|mut d| d.next().is_some()),
        "no kept log in {}",
        kept.display()
    );
    kill_and_reap(&mut svc.daemon);
    let (_backend, _balancer) = balancer_on(&svc.state_dir);
    assert_clean(&svc.state_dir, &[]);
}

/// An isolated replica killed in the middle of a large response: its socket still had data
/// to send, which the kernel goes on sending from the dead process's orphaned socket into a
/// namespace whose link the runtime then removes. The client is cut as soon as the replica
/// is gone, as with a host-network replica, not when a timeout (here a minute) runs out.
#[test]
fn an_isolated_replica_killed_mid_response_cuts_it_at_once() {
    use std::io::{Read, Write};
    if !require(is_root(), "root (containers)") {
        return;
    }
    let www = TempDir::new("www");
    std::fs::write(www.path().join("healthz"), "ok\n").expect("write");
    std::fs::write(www.path().join("big"), vec![b'x'; 64 << 20]).expect("write");
    let state = TempDir::new("services-state");
    let port = free_port();
    let daemon = Daemon::start(&format!(
        "admin: {{ listen: \"{{ADMIN}}\" }}
runtime: {{ state_dir: {state} }}
listeners:
  - {{ name: web, bind: \"127.0.0.1:{port}\", service: web }}
services:
  web:
    container:
      host: true
      network: isolated
      command: [/bin/busybox, httpd, -f, -p, \"8080\", -h, /www]
      mounts: [{{ type: bind, source: {www}, target: /www, readonly: true }}]
      restart: never
    health: {{ http: {{ path: /healthz }}, interval: 200ms, timeout: 150ms }}
    timeouts: {{ idle: 60s, request: 60s }}
",
        state = state.path().display(),
        www = www.path().display(),
    ));
    let config = daemon.dir.path().join("shoal.yaml");
    let svc = Services {
        daemon,
        proxy: ([127, 0, 0, 1], port).into(),
        state_dir: state.path().to_path_buf(),
        config,
        _state: Some(state),
    };
    let id = replica_ids(&svc.wait_ready("web", 1))[0].clone();
    let mut client = std::net::TcpStream::connect(svc.proxy).expect("connect");
    client
        .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send");
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    // The answer is under way; then the client stops reading for a while, so that the
    // replica's socket fills with what it has yet to send.
    let mut got = vec![0u8; 1 << 20];
    client.read_exact(&mut got).expect("the first MiB");
    let pids = svc.replica_pids(&id);
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pids[0], libc::SIGKILL) };
    eventually(Duration::from_secs(10), "the replica to be gone", || {
        let status = svc.status("web");
        (status["endpoints"][0]["state"] == "exited").then_some(())
    });
    let cut = std::time::Instant::now();
    let mut rest = Vec::new();
    let ended = client.read_to_end(&mut rest);
    assert!(
        rest.len() + got.len() < 64 << 20,
        "the whole body came ({ended:?})"
    );
    // Read at full speed, what the proxy still held comes at once; then the cut.
    assert!(
        cut.elapsed() < Duration::from_secs(20),
        "cut after {:?} ({ended:?})",
        cut.elapsed()
    );
    svc.stop_and_check_clean(&[id]);
}

fn kill_and_reap(daemon: &mut Daemon) {
    daemon.proc.signal(libc::SIGKILL);
    daemon
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("killed daemon reaped");
}

/// A daemon with no container service, a plain load balancer, on `state_dir`.
fn balancer_on(state_dir: &Path) -> (Proc, Daemon) {
    let (backend, address) = demo_backend("lb");
    let balancer = Daemon::start(&format!(
        "admin: {{ listen: \"{{ADMIN}}\" }}\nruntime: {{ state_dir: {} }}\nlisteners:\n  - {{ name: web, bind: \"127.0.0.1:{}\", service: lb }}\nservices:\n  lb:\n    upstreams: {{ static: [\"{address}\"] }}\n",
        state_dir.display(),
        free_port()
    ));
    (backend, balancer)
}

/// A start that fails is as clean as a stop: when the listener's address is taken, the
/// replicas already started are stopped and removed before `shoal up` exits 1.
#[test]
fn an_up_that_cannot_bind_its_listener_leaves_no_replica() {
    if !require(is_root(), "root (containers)") {
        return;
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("address").port();
    let state = TempDir::new("unbound-state");
    let dir = TempDir::new("unbound");
    let config = dir.path().join("shoal.yaml");
    std::fs::write(
        &config,
        format!(
            "admin: {{ listen: \"127.0.0.1:{admin}\" }}
runtime: {{ state_dir: {state} }}
listeners:
  - {{ name: web, bind: \"127.0.0.1:{port}\", service: unbound }}
services:
  unbound:
    container:
      host: true
      command: [/shoal, demo-backend]
      network: host
      mounts: [{{ type: bind, source: {shoal}, target: /shoal, readonly: true }}]
      stop_timeout: 2s
    scale: {{ min: 2, initial: 2 }}
",
            admin = free_port(),
            state = state.path().display(),
            shoal = SHOAL,
        ),
    )
    .expect("write config");
    let log = dir.path().join("shoal.log");
    let child = Command::new(SHOAL)
        .args(["up", "-c"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start shoal up");
    let mut up = Proc {
        child,
        name: "shoal".into(),
    };
    let code = up.wait_exit(Duration::from_secs(30));
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(code, Some(Some(1)), "{log}");
    assert!(
        log.contains(&format!("cannot bind listener `web` on 127.0.0.1:{port}")),
        "{log}"
    );
    // The replicas the daemon got to start, by their ids in its log.
    let started: Vec<String> = log
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("replica="))
        .map(str::to_string)
        .collect();
    assert_clean(state.path(), &started);
}

/// When dropped, removes what dead owners left in the state directory of the config at this
/// path (`shoal ps` does that first): a test that kills a daemon leaves nothing behind even
/// when it fails before a new daemon has cleaned up.
struct LeftoversRemoved(PathBuf);

impl Drop for LeftoversRemoved {
    fn drop(&mut self) {
        let _ = Command::new(SHOAL)
            .arg("ps")
            .arg("-c")
            .arg(&self.0)
            .output();
    }
}

/// Processes and cgroups of these replicas are gone (their state dir is shared with a new run).
fn assert_clean_of(ids: &[String]) {
    for id in ids {
        assert!(
            find_cgroup("/sys/fs/cgroup", id, 6).is_none(),
            "cgroup of {id} left behind"
        );
    }
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        for id in ids {
            let marker = format!("SHOAL_REPLICA={id}");
            assert!(
                !environ.split(|b| *b == 0).any(|a| a == marker.as_bytes()),
                "process of {id} survived the daemon's SIGKILL and restart"
            );
        }
    }
}

/// Scale from zero and back, with the real policy and real containers: the first request is
/// held while a replica starts, a step of concurrent requests scales out to the expected
/// count, the service returns to zero after `window` + `zero_grace`, and no request fails.
#[test]
fn scales_from_zero_out_and_back_to_zero_without_failing_a_request() {
    if !require(is_root(), "root (containers)") {
        return;
    }
    let svc = services(
        "host",
        "    scale: { min: 0, max: 4, initial: 0, target: 5, utilization: 1.0, window: 4s, panic_window: 1s, zero_grace: 2s, tick: 500ms, cold_start_timeout: 20s }",
        "",
        "",
    );
    assert_eq!(svc.status("web")["replicas"]["desired"], 0);
    let first = http_get(svc.proxy, "/", &[]).expect("the held request");
    assert_eq!(first.status, 200, "{first:?}");
    assert!(first.body.starts_with("hello from web-"), "{}", first.body);

    // 20 clients each keeping one 300 ms request in flight: 20 / target 5 = 4 replicas.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let (stop, failures, proxy) = (stop.clone(), failures.clone(), svc.proxy);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match http_get(proxy, "/sleep?ms=300", &[]) {
                        Ok(r) if r.status == 200 => {}
                        Ok(r) => failures.lock().expect("lock").push(format!(
                            "{} {:?}",
                            r.status,
                            r.header("x-shoal-error")
                        )),
                        Err(e) => failures.lock().expect("lock").push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    let scaled = svc.wait_ready("web", 4);
    assert_eq!(scaled["replicas"]["desired"], 4);
    let decision = &scaled["scale"]["last_decision"];
    assert!(
        decision["reason"]
            .as_str()
            .is_some_and(|r| r.contains("concurrency")),
        "{scaled}"
    );
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("client");
    }
    let failed = failures.lock().expect("lock").clone();
    assert!(
        failed.is_empty(),
        "requests failed while scaling out: {failed:?}"
    );

    let idle = eventually(
        Duration::from_secs(40),
        "the service to return to zero",
        || {
            let status = svc.status("web");
            (status["replicas"]["desired"] == 0 && status["endpoints"].as_array()?.is_empty())
                .then_some(status)
        },
    );
    assert!(
        idle["scale"]["last_decision"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("zero_grace")),
        "{idle}"
    );
    let metrics = svc.daemon.metrics();
    for (labels, what) in [
        (&[("service", "web"), ("direction", "up")][..], "scale-ups"),
        (
            &[("service", "web"), ("direction", "down")][..],
            "scale-downs",
        ),
    ] {
        let count = metric_value(&metrics, "shoal_scale_decisions_total", labels).unwrap_or(0.0);
        assert!(count >= 1.0, "no {what} counted:\n{metrics}");
    }
    let cold = metric_value(
        &metrics,
        "shoal_cold_start_seconds_count",
        &[("service", "web")],
    )
    .unwrap_or(0.0);
    assert!(cold >= 4.0, "cold starts not recorded:\n{metrics}");

    // And back up again from zero.
    let again = http_get(svc.proxy, "/", &[]).expect("held again");
    assert_eq!(again.status, 200, "{again:?}");
    svc.stop_and_check_clean(&[]);
}

/// A replica that takes long to start: a full hold queue answers 503 at once, and a held
/// request past `cold_start_timeout` gets 503 with `retry-after`.
#[test]
fn hold_queue_limits_and_cold_start_timeout() {
    if !require(is_root(), "root (containers)") {
        return;
    }
    let svc = services_running(
        "[/bin/sh, -c, \"sleep 30; exec /shoal demo-backend\"]",
        "host",
        "    scale: { min: 0, max: 1, initial: 0, cold_start_timeout: 1500ms }\n    limits: { max_queued_requests: 1 }",
        "",
        "",
    );
    let proxy = svc.proxy;
    let held = std::thread::spawn(move || http_get(proxy, "/", &[]));
    eventually(Duration::from_secs(10), "one request held", || {
        (svc.status("web")["load"]["queued"] == 1).then_some(())
    });
    let refused = http_get(svc.proxy, "/", &[]).expect("an answer");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(
        refused.header("x-shoal-error"),
        Some("queue_full"),
        "{refused:?}"
    );
    assert!(
        !held.is_finished(),
        "the full queue must answer before the held request does"
    );
    let timed_out = held.join().expect("client").expect("an answer");
    assert_eq!(timed_out.status, 503, "{timed_out:?}");
    assert_eq!(
        timed_out.header("x-shoal-error"),
        Some("cold_start_timeout"),
        "{timed_out:?}"
    );
    assert!(timed_out.header("retry-after").is_some(), "{timed_out:?}");
    let metrics = svc.daemon.metrics();
    assert_eq!(
        metric_value(&metrics, "shoal_requests_queued", &[("service", "web")]),
        Some(0.0),
        "{metrics}"
    );
    let ids = replica_ids(&svc.status("web"));
    svc.stop_and_check_clean(&ids);
}

/// A service a reload removed is still stopping its replicas (this one ignores SIGTERM, so
/// its stop waits out `stop_timeout`) when the daemon gets SIGTERM: the daemon waits for
/// that too, and leaves nothing behind.
#[test]
fn shutdown_waits_for_services_a_reload_removed() {
    if !require(is_root(), "root (containers)") {
        return;
    }
    let stubborn = "  stubborn:\n    container: { host: true, command: [/bin/sh, -c, \"trap '' TERM; while :; do sleep 1; done\"], stop_timeout: 3s }\n";
    let svc = services("host", "", stubborn, "");
    svc.wait_ready("web", 1);
    let ids = eventually(
        Duration::from_secs(10),
        "stubborn's replica running",
        || {
            let ids = replica_ids(&svc.status("stubborn"));
            (!ids.is_empty()).then_some(ids)
        },
    );
    let pids = svc.replica_pids(&ids[0]);
    let original = std::fs::read_to_string(&svc.config).expect("config");
    // The same reload adds a service that starts at zero, which says so.
    let lazy = "  lazy:\n    container: { host: true, command: [/bin/true] }\n    scale: { min: 0, initial: 0 }\n";
    std::fs::write(&svc.config, original.replace(stubborn, lazy)).expect("write config");
    let (code, out) = svc.shoal(&["reload"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("service stubborn: replicas draining and stopping"),
        "{out}"
    );
    assert!(
        out.contains("service lazy: added at 0 replicas (the first request starts one)"),
        "{out}"
    );
    // Removed while still at zero, it has nothing to drain, and says so.
    std::fs::write(&svc.config, original.replace(stubborn, "")).expect("write config");
    let (code, out) = svc.shoal(&["reload"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("service lazy: removed (it had no replicas)"),
        "{out}"
    );
    let mut all = replica_ids(&svc.status("web"));
    all.extend(ids);
    svc.stop_and_check_clean(&all);
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} of the removed service outlived the daemon"
        );
    }
}

/// A reload that makes a container service an `upstreams` one: once its replicas are gone,
/// its static upstream serves; the replaced reconciler, which publishes as it drains, does
/// not leave the service without endpoints.
#[test]
fn a_container_service_reloaded_as_upstreams_serves_its_static_upstream() {
    if !require(is_root(), "root (containers)") {
        return;
    }
    let svc = services("host", "", "", "");
    let ids = replica_ids(&svc.wait_ready("web", 1));
    let pids = svc.replica_pids(&ids[0]);
    let (_backend, addr) = demo_backend("static-one");
    let original = std::fs::read_to_string(&svc.config).expect("config");
    let (Some(start), Some(end)) = (
        original.find("    container:\n"),
        original.find("    health:"),
    ) else {
        panic!("unexpected config:\n{original}");
    };
    let reloaded = format!(
        "{}    upstreams: {{ static: [\"{addr}\"] }}\n{}",
        &original[..start],
        &original[end..]
    );
    std::fs::write(&svc.config, reloaded).expect("write config");
    let (code, out) = svc.shoal(&["reload"]);
    assert_eq!(code, 0, "{out}");
    eventually(Duration::from_secs(20), "the replica to stop", || {
        pids.iter()
            .all(|pid| !Path::new(&format!("/proc/{pid}")).exists())
            .then_some(())
    });
    let status = svc.status("web");
    let endpoints: Vec<&str> = status["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["address"].as_str())
        .collect();
    assert_eq!(endpoints, [addr.to_string()], "{status}");
    for _ in 0..5 {
        let answer = http_get(svc.proxy, "/", &[]).expect("GET /");
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(answer.body.contains("static-one"), "{}", answer.body);
    }
    svc.stop_and_check_clean(&ids);
}

/// Under continuous load, reloads that change a route, add and remove a service, and change
/// the container's command (rolled one replica at a time) fail no request.
#[test]
fn reloads_under_load_fail_no_request() {
    if !require(is_root(), "root (containers)") {
        return;
    }
    let svc = services("host", "    scale: { min: 2, initial: 2 }", "", "");
    let before = replica_ids(&svc.wait_ready("web", 2));
    let original = std::fs::read_to_string(&svc.config).expect("config");
    let load = Load::start(svc.proxy);
    load.wait_for(100);
    let reload = |text: &str| {
        std::fs::write(&svc.config, text).expect("write config");
        let (code, out) = svc.shoal(&["reload"]);
        assert_eq!(code, 0, "{out}");
        out
    };

    // Add a service `extra` and route /extra to it; everything else still goes to web.
    let (_b, extra) = demo_backend("extra");
    let with_extra = original
        .replace(
            "service: web }",
            "routes: [{ match: { path_prefix: /extra }, service: extra }, { service: web }] }",
        )
        .replace(
            "services:\n",
            &format!("services:\n  extra:\n    upstreams: {{ static: [\"{extra}\"] }}\n"),
        );
    let out = reload(&with_extra);
    assert!(out.contains("extra"), "{out}");
    assert_eq!(
        http_get(svc.proxy, "/extra", &[]).expect("GET").body.trim(),
        "/extra not found on extra"
    );
    load.wait_for(100);

    // Change the replicas' command: they roll, one at a time.
    let rolled = with_extra.replace(
        "command: [/shoal, demo-backend]",
        "command: [/shoal, demo-backend, --bind, 127.0.0.1]",
    );
    let out = reload(&rolled);
    assert!(out.contains("rolling"), "{out}");
    let after = eventually(Duration::from_secs(60), "every replica replaced", || {
        let status = svc.status("web");
        let ids = replica_ids(&status);
        (status["replicas"]["ready"] == 2
            && ids.len() == 2
            && ids.iter().all(|id| !before.contains(id)))
        .then_some(ids)
    });
    load.wait_for(100);

    // Remove `extra` again.
    let out = reload(
        &rolled
            .replace(
                &format!("  extra:\n    upstreams: {{ static: [\"{extra}\"] }}\n"),
                "",
            )
            .replace(
                "routes: [{ match: { path_prefix: /extra }, service: extra }, { service: web }] }",
                "service: web }",
            ),
    );
    assert!(out.contains("extra"), "{out}");
    load.wait_for(100);
    let (ok, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {failures:?}",
        failures.len(),
        ok + failures.len()
    );
    let mut ids = before;
    ids.extend(after);
    svc.stop_and_check_clean(&ids);
}
