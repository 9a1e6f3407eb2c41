//! End-to-end tests of `shoal run`, `shoal ps`, `shoal logs` through the real binary (root).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

/// Root is needed for namespaces and cgroups: skip without it, unless CI says it must run.
fn root_or_skip() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but not root"
    );
    eprintln!("skipping: container tests need root");
    false
}

/// A busybox rootfs and a state directory of its own in a temp dir, and any `shoal run`
/// started in the background; dropping it kills the run, lets `shoal ps` remove what the
/// run could not, and removes the directory: nothing is left in the default `/run/shoal`.
struct Fixture {
    dir: PathBuf,
    child: Option<Child>,
}

impl Fixture {
    fn new() -> Fixture {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("shoal-cli-test-{}-{n}", std::process::id()));
        let bin = dir.join("rootfs/bin");
        std::fs::create_dir_all(&bin).unwrap();
        assert!(
            Path::new("/bin/busybox").exists(),
            "apt-get install busybox-static"
        );
        std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
        for applet in ["sh", "sleep", "tail", "echo", "true"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        let state = dir.join("state");
        std::fs::write(
            dir.join("shoal.yaml"),
            // JSON's quoting is YAML's too, whatever the temp directory's name holds.
            format!(
                "runtime:\n  state_dir: {}\n",
                serde_json::Value::from(state.to_string_lossy())
            ),
        )
        .unwrap();
        Fixture { dir, child: None }
    }

    /// The binary, with this fixture's config (and so its state directory).
    fn shoal(&self) -> Command {
        let mut cmd = Command::new(SHOAL);
        cmd.env("SHOAL_CONFIG", self.dir.join("shoal.yaml"));
        cmd
    }

    fn state_file(&self, name: &str) -> PathBuf {
        self.dir
            .join("state/containers")
            .join(name)
            .join("state.json")
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Start `shoal run --name NAME -- sleep 1000` and return its state once it is running.
    fn run_in_background(&mut self, name: &str) -> serde_json::Value {
        self.child = Some(
            self.shoal()
                .arg("run")
                .arg("--rootfs")
                .arg(self.rootfs())
                .args(["--name", name, "--", "sleep", "1000"])
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = std::fs::read_to_string(self.state_file(name)).unwrap_or_default();
            if s.contains("\"running\"") {
                return serde_json::from_str(&s).unwrap();
            }
            assert!(Instant::now() < deadline, "container never started");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let rootfs = self.rootfs();
        let mut cmd = self.shoal();
        cmd.arg("run").arg("--rootfs").arg(&rootfs).args(args);
        cmd.output().unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            let _ = self.shoal().arg("ps").output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn run_propagates_exit_status_and_output() {
    if !root_or_skip() {
        return;
    }
    let f = Fixture::new();
    let o = f.run(&["--", "/bin/sh", "-c", "echo out-$(hostname); exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("out-"));
    let o = f.run(&[
        "--name",
        "cli-named",
        "--",
        "/bin/sh",
        "-c",
        "kill -TERM $$",
    ]);
    assert_eq!(o.status.code(), Some(143));
    assert!(
        !f.state_file("cli-named").exists(),
        "run did not remove its container"
    );
}

/// The CPUs a process may run on, as `/proc/<pid>/status` lists them.
fn cpus_allowed(status: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
        .expect("Cpus_allowed_list")
}

/// The workload may run on the CPUs `shoal run` may, whatever the CLI does with its own
/// while the container starts (it moves itself off PID 1's CPU): the whole set, and a set
/// of one CPU.
#[test]
fn run_keeps_the_callers_cpu_set() {
    if !root_or_skip() {
        return;
    }
    let f = Fixture::new();
    let own = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).expect("affinity");
    let first = (0..nix::sched::CpuSet::count())
        .find(|&cpu| own.is_set(cpu).unwrap_or(false))
        .expect("a CPU this test may run on");
    let mut one = nix::sched::CpuSet::new();
    one.set(first).expect("a CPU set of one");
    let script = "while read -r k v; do [ \"$k\" = Cpus_allowed_list: ] && echo \"$v\"; done < /proc/self/status; true";
    for set in [own, one] {
        let mut cmd = f.shoal();
        cmd.arg("run")
            .arg("--rootfs")
            .arg(f.rootfs())
            .args(["--", "/bin/sh", "-c", script]);
        // SAFETY: sched_setaffinity is async-signal-safe and touches only the child.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                    .map_err(std::io::Error::from)
            });
        }
        let o = cmd.output().expect("shoal run");
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let mut probe = Command::new("cat");
        probe.arg("/proc/self/status");
        // SAFETY: as above.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut probe, move || {
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                    .map_err(std::io::Error::from)
            });
        }
        let expected = cpus_allowed(&String::from_utf8_lossy(
            &probe.output().expect("cat").stdout,
        ));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            expected,
            "the workload's CPUs differ from its caller's"
        );
    }
}

#[test]
fn run_reports_errors_clearly() {
    if !root_or_skip() {
        return;
    }
    let f = Fixture::new();
    let o = f.run(&["--", "no-such-command"]);
    assert_eq!(o.status.code(), Some(127));
    assert!(
        stderr(&o).contains("command not found: no-such-command"),
        "{}",
        stderr(&o)
    );

    let o = f.run(&["--memory", "12Q", "--", "true"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown size unit `Q` in `12Q`"),
        "{}",
        stderr(&o)
    );

    // Bad usage, found before anything starts: exit 2.
    for args in [&["--pids", "0", "--", "true"][..], &[]] {
        let o = f.run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
    let o = f.shoal().args(["run", "--", "true"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("required"), "{}", stderr(&o));

    let o = f
        .shoal()
        .args(["run", "--rootfs", "/nonexistent/rootfs", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/nonexistent/rootfs"), "{}", stderr(&o));
}

#[test]
fn run_reports_oom() {
    if !root_or_skip() {
        return;
    }
    let f = Fixture::new();
    let o = f.run(&["--memory", "16Mi", "--", "tail", "/dev/zero"]);
    assert_eq!(o.status.code(), Some(137));
    assert!(
        stderr(&o).contains("killed by the OOM killer (memory limit 16Mi)"),
        "{}",
        stderr(&o)
    );
    // A child the OOM killer takes does not replace the main process's own status.
    let o = f.run(&[
        "--memory",
        "16Mi",
        "--",
        "sh",
        "-c",
        "tail /dev/zero; exit 5",
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("killed by the OOM killer (memory limit 16Mi)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn run_forwards_signals_and_ps_lists_it() {
    if !root_or_skip() {
        return;
    }
    let mut f = Fixture::new();
    let name = format!("cli-sig-{}", std::process::id());
    f.run_in_background(&name);
    let ps = f.shoal().args(["ps", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&ps.stdout).expect("ps --json output");
    let me = v["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == name.as_str())
        .expect("ps lists the running container")
        .clone();
    assert_eq!(me["state"], "running");
    assert!(me["pid"].as_i64().is_some() && me["started_at"].is_string());

    let mut child = f.child.take().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    assert!(!f.state_file(&name).exists());

    let o = f.shoal().args(["logs", &name]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no such container"), "{}", stderr(&o));
}

/// Signals other than the stopping ones reach the container too (`docker run` forwards
/// them): SIGUSR1 ends `sleep` there, and `run` exits with its status, leaving nothing.
#[test]
fn run_forwards_user_signals() {
    if !root_or_skip() {
        return;
    }
    let mut f = Fixture::new();
    let name = format!("cli-usr1-{}", std::process::id());
    f.run_in_background(&name);
    let mut child = f.child.take().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGUSR1), "{status:?}");
    assert!(!f.state_file(&name).exists());
}

/// A signal that comes before `shoal run` has its handlers is held (from the start of
/// `main`) and reaches the workload once it runs: the CLI exits 128+N like `docker run`,
/// not killed by the signal itself with no status. Here the signal is held from the exec
/// on and sent at once, so it is pending when the handlers come; before, a SIGTERM in
/// the CLI's first ~2 ms ended it.
#[test]
fn run_forwards_a_signal_that_came_before_its_handlers() {
    if !root_or_skip() {
        return;
    }
    let mut f = Fixture::new();
    let mut cmd = f.shoal();
    cmd.arg("run")
        .arg("--rootfs")
        .arg(f.rootfs())
        .args(["--", "sleep", "1000"])
        .stdout(Stdio::null());
    // SAFETY: sigprocmask is async-signal-safe and changes only the child's mask.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            let mut term = nix::sys::signal::SigSet::empty();
            term.add(nix::sys::signal::Signal::SIGTERM);
            nix::sys::signal::sigprocmask(
                nix::sys::signal::SigmaskHow::SIG_BLOCK,
                Some(&term),
                None,
            )
            .map_err(std::io::Error::from)
        });
    }
    // Kept in the fixture, whose drop kills it and removes its container if this fails.
    let child = f.child.insert(cmd.spawn().expect("spawn shoal run"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal shoal run");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for shoal run") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the held SIGTERM never reached the container"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status:?}");
}

/// A forked PID 1 enters its network namespace after the fork; the runtime sets up an
/// isolated container's veth only once it has, so the interface is the container's and the
/// host's set of interfaces is the same afterwards.
#[test]
fn run_isolated_network_is_the_containers_own() {
    if !root_or_skip() {
        return;
    }
    let f = Fixture::new();
    let host_links = links();
    let o = f.run(&[
        "--net",
        "isolated",
        "--",
        "/bin/sh",
        "-c",
        "cat /proc/net/dev /proc/net/route",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("eth0:"), "no eth0 in the container: {out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("eth0\t00000000\t") || l.starts_with("eth0 00000000")),
        "no default route through eth0: {out}"
    );
    assert_eq!(links(), host_links, "the host's interfaces changed");
}

fn links() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `shoal run` forks its container's PID 1 directly, with no re-exec of the binary and no
/// shim; a PID 1 left by a killed run is removed with its container by the next `shoal ps`.
#[test]
fn a_killed_runs_forked_pid1_is_removed_by_ps() {
    if !root_or_skip() {
        return;
    }
    let mut f = Fixture::new();
    let name = format!("cli-fork-{}", std::process::id());
    let state = f.run_in_background(&name);
    assert!(
        state["shim_pid"].is_null(),
        "a forked PID 1 needs no shim: {state}"
    );
    let pid1 = state["pid"].as_i64().expect("state records PID 1");
    let cmdline = std::fs::read(format!("/proc/{pid1}/cmdline")).unwrap();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    assert_eq!(
        args.get(1),
        Some(&&b"run"[..]),
        "PID 1 is not a fork of `shoal run`"
    );
    assert!(!args.contains(&shoal_runtime::INIT_ARG.as_bytes()));
    let comm = std::fs::read_to_string(format!("/proc/{pid1}/comm")).unwrap();
    assert_eq!(comm.trim_end(), "shoal-init");
    let parent = std::fs::read_to_string(format!("/proc/{pid1}/stat")).unwrap();
    let ppid = parent
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().nth(1));
    let cli = f.child.as_ref().unwrap().id().to_string();
    assert_eq!(ppid, Some(cli.as_str()), "PID 1 is not the CLI's child");

    let mut child = f.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let ps = f.shoal().args(["ps", "--json"]).output().unwrap();
    assert!(ps.status.success(), "{}", stderr(&ps));
    assert!(
        !f.state_file(&name).exists(),
        "ps left the dead run's state"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    // Killed by ps, PID 1 is reaped by this process's subreaper or init; its /proc entry
    // goes once it is neither running nor a zombie.
    while alive(pid1) {
        assert!(Instant::now() < deadline, "ps left PID 1 running");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A name stays taken while its run lives, and is free again once that run was killed,
/// without a `shoal ps` in between.
#[test]
fn a_killed_runs_name_can_be_used_again() {
    if !root_or_skip() {
        return;
    }
    let mut f = Fixture::new();
    let name = format!("cli-again-{}", std::process::id());
    f.run_in_background(&name);
    let taken = f.run(&["--name", &name, "--", "true"]);
    assert_eq!(taken.status.code(), Some(1), "{}", stderr(&taken));
    assert!(
        stderr(&taken).contains("already exists"),
        "{}",
        stderr(&taken)
    );
    let mut child = f.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let again = f.run(&["--name", &name, "--", "true"]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert!(
        !f.state_file(&name).exists(),
        "the second run left its state"
    );
}

/// `shoal logs` of a `shoal run` container says its output is not captured, rather than
/// printing nothing.
#[test]
fn logs_of_a_run_say_its_output_is_on_its_terminal() {
    if !root_or_skip() {
        return;
    }
    let mut f = Fixture::new();
    let name = format!("cli-logs-{}", std::process::id());
    f.run_in_background(&name);
    let logs = f.shoal().args(["logs", &name]).output().unwrap();
    assert_eq!(logs.status.code(), Some(1), "{}", stderr(&logs));
    assert!(stderr(&logs).contains("not captured"), "{}", stderr(&logs));
}

/// Running or stopped, not a zombie awaiting its reaper.
fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}
