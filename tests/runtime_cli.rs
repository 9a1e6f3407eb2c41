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

/// A busybox rootfs in a temp dir, and any `shoal run` started in the background; dropping
/// it kills the run and lets `shoal ps` remove what the run could not.
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
        Fixture { dir, child: None }
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    fn run(&self, args: &[&str]) -> Output {
        let rootfs = self.rootfs();
        let mut cmd = Command::new(SHOAL);
        cmd.arg("run").arg("--rootfs").arg(&rootfs).args(args);
        cmd.output().unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            let _ = Command::new(SHOAL).arg("ps").output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn state_file(name: &str) -> PathBuf {
    PathBuf::from("/run/shoal/containers")
        .join(name)
        .join("state.json")
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
        !state_file("cli-named").exists(),
        "run did not remove its container"
    );
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
    assert!(stderr(&o).contains("invalid size"), "{}", stderr(&o));

    let o = Command::new(SHOAL)
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
}

#[test]
fn run_forwards_signals_and_ps_lists_it() {
    if !root_or_skip() {
        return;
    }
    let mut f = Fixture::new();
    let name = format!("cli-sig-{}", std::process::id());
    let rootfs = f.rootfs();
    f.child = Some(
        Command::new(SHOAL)
            .arg("run")
            .arg("--rootfs")
            .arg(&rootfs)
            .args(["--name", &name, "--", "sleep", "1000"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(state_file(&name)).is_ok_and(|s| s.contains("\"running\"")) {
        assert!(Instant::now() < deadline, "container never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ps = Command::new(SHOAL).args(["ps", "--json"]).output().unwrap();
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
    assert!(!state_file(&name).exists());

    let o = Command::new(SHOAL).args(["logs", &name]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no such container"), "{}", stderr(&o));
}
