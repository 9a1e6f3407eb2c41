//! A small test runner for container tests.
//!
//! Containers re-exec the current binary as their init, so `main` must dispatch
//! `INIT_ARG` before anything else; libtest's harness cannot do that, hence this runner.
//! Each test gets its own state directory and tokio runtime; after the test (passed,
//! failed or panicked) every container it created is deleted and the state directory
//! removed, so a failure leaves nothing behind either.

pub mod image;

use std::os::unix::fs::symlink;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shoal_runtime::{Container, ContainerSpec, ExitStatus, Runtime, RuntimeConfig};

pub type TestFn = fn(&Env) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>;

/// Per-test environment.
pub struct Env {
    pub runtime: Runtime,
    /// Kept for its Drop: removes the state directory.
    _state: tempfile::TempDir,
    pub scratch: tempfile::TempDir,
    created: Mutex<Vec<Container>>,
}

impl Env {
    /// Create and remember a container so teardown can remove it whatever happens.
    pub async fn create(&self, spec: ContainerSpec) -> Container {
        let c = self.runtime.create(spec).await.expect("create container");
        self.created.lock().unwrap().push(c.clone());
        c
    }

    /// Create, start, wait, and return the status and captured output.
    pub async fn run(&self, spec: ContainerSpec) -> (ExitStatus, String) {
        let c = self.create(spec).await;
        c.start().await.expect("start container");
        let status = tokio::time::timeout(Duration::from_secs(30), c.wait())
            .await
            .expect("container did not exit within 30s");
        let out = std::fs::read_to_string(c.log_path()).unwrap_or_default();
        self.delete_clean(&c).await;
        (status, out)
    }

    /// Delete a container and check it left nothing on the host.
    pub async fn delete_clean(&self, c: &Container) {
        let cgroups = c.cgroup_dirs();
        let veth = c.host_interface();
        c.delete().await.expect("delete container");
        for d in &cgroups {
            assert!(!d.exists(), "cgroup {} left behind", d.display());
        }
        if let Some(v) = veth {
            assert!(!shoal_runtime::interface_exists(&v), "veth {v} left behind");
        }
        let dir = self.runtime.state_dir().join("containers").join(c.id());
        assert!(!dir.exists(), "state {} left behind", dir.display());
        assert_no_processes(c.id());
        assert_no_mounts(self.runtime.state_dir());
        let leases = std::fs::read_dir(self.runtime.state_dir().join("net"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(leases, 0, "address lease left behind");
    }
}

/// No shim or init of this container is alive any more.
pub fn assert_no_processes(id: &str) {
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let ours =
            args.contains(&shoal_runtime::INIT_ARG.as_bytes()) && args.contains(&id.as_bytes());
        assert!(
            !ours,
            "process {:?} of container {id} left behind",
            entry.file_name()
        );
    }
}

/// No mount on the host refers to the state directory.
pub fn assert_no_mounts(state_dir: &Path) {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let s = state_dir.to_string_lossy();
    assert!(!mi.contains(s.as_ref()), "mount under {s} left on the host");
}

/// Poll `cond` until it holds or `timeout` passes.
pub async fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A root filesystem with Debian's static busybox and a symlink per applet.
pub fn busybox_rootfs(dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(busybox(), bin.join("busybox")).unwrap();
    let list = std::process::Command::new(busybox())
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = symlink("busybox", bin.join(applet));
        }
    }
    for d in ["etc", "tmp", "proc", "dev", "sys", "root"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/tmp:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\napp:x:1000:\n").unwrap();
}

/// Debian's busybox-static (`apt-get install busybox-static`).
pub fn busybox() -> PathBuf {
    let p = PathBuf::from("/bin/busybox");
    assert!(
        p.exists(),
        "tests need /bin/busybox: apt-get install busybox-static"
    );
    p
}

/// Run the tests named on the command line (all when none), like libtest's filter.
pub fn main(tests: &[(&str, TestFn)]) {
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(shoal_runtime::INIT_ARG))
    {
        std::process::exit(shoal_runtime::init::main());
    }
    if !nix::unistd::geteuid().is_root() {
        if std::env::var("CI").as_deref() == Ok("true") {
            eprintln!("container tests need root, and CI=true: failing");
            std::process::exit(1);
        }
        println!("skipping container tests: they need root");
        return;
    }
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let selected: Vec<_> = tests
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    println!("running {} container tests", selected.len());
    let mut failed = Vec::new();
    for (i, (name, test)) in selected.iter().enumerate() {
        let started = Instant::now();
        let ok = run_one(i, test);
        println!(
            "test {name} ... {} ({:.1}s)",
            if ok { "ok" } else { "FAILED" },
            started.elapsed().as_secs_f64()
        );
        if !ok {
            failed.push(*name);
        }
    }
    if failed.is_empty() {
        println!("test result: ok. {} passed", selected.len());
    } else {
        println!("test result: FAILED. failures: {failed:?}");
        std::process::exit(1);
    }
}

fn run_one(index: usize, test: &TestFn) -> bool {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let state = tempfile::Builder::new()
        .prefix("shoal-rt-test")
        .tempdir()
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(RuntimeConfig {
        state_dir: state.path().to_path_buf(),
        // A distinct /24 per test keeps concurrent test binaries' addresses apart.
        subnet: format!(
            "10.213.{}.0/24",
            100 + (std::process::id() as usize + index) % 150
        ),
        init_binary: None,
        fork_init: false,
    })
    .unwrap();
    let env = Env {
        runtime,
        _state: state,
        scratch,
        created: Mutex::new(Vec::new()),
    };
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| rt.block_on(test(&env))));
    // Teardown whatever the outcome.
    let created = std::mem::take(&mut *env.created.lock().unwrap());
    rt.block_on(async {
        for c in created {
            let _ = c.delete().await;
        }
    });
    result.is_ok()
}
