//! cgroups v1 and v2, always beneath shoal's own cgroup (`<own>/shoal/<id>.<state dir tag>`).
//!
//! The mode is detected with `statfs("/sys/fs/cgroup")` like runc: cgroup2 magic means the
//! unified hierarchy; anything else (tmpfs with v1 mounts, possibly a v2 tree at
//! `unified/` without controllers) is treated as v1.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::spec::Resources;

/// CFS period used to express `cpus` as a quota.
const CPU_PERIOD_US: u64 = 100_000;
/// v1 controllers the runtime uses; each can be mounted alone or co-mounted.
const V1_CONTROLLERS: [&str; 4] = ["cpu", "cpuacct", "memory", "pids"];

/// Which cgroup hierarchy the host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupMode {
    /// Legacy or hybrid: one hierarchy per controller.
    V1,
    /// Unified hierarchy.
    V2,
}

impl CgroupMode {
    /// Detect the host's mode (hybrid counts as v1).
    pub fn detect() -> CgroupMode {
        match nix::sys::statfs::statfs("/sys/fs/cgroup") {
            Ok(st) if st.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => {
                CgroupMode::V2
            }
            _ => CgroupMode::V1,
        }
    }
}

/// A container's cgroup: one directory per v1 controller, or one v2 directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroup {
    pub mode: CgroupMode,
    /// v1: `(controller, dir)` for cpu, cpuacct, memory, pids (co-mounted ones share a dir);
    /// v2: a single `("", dir)`.
    pub dirs: Vec<(String, PathBuf)>,
}

fn cg_err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Cgroup {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn write(path: &Path, value: &str) -> Result<(), Error> {
    fs::write(path, value).map_err(|e| cg_err(path, format!("writing {value:?}: {e}")))
}

/// The `/proc/self/cgroup` path of a v1 controller or (`None`) the v2 entry.
pub(crate) fn own_path(proc_cgroup: &str, controller: Option<&str>) -> Option<String> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let _id = parts.next()?;
        let ctrls = parts.next()?;
        let path = parts.next()?;
        let hit = match controller {
            None => ctrls.is_empty(),
            Some(c) => ctrls.split(',').any(|x| x == c),
        };
        hit.then(|| path.to_string())
    })
}

/// Mount point and mount root of the v1 hierarchy carrying `controller`, from mountinfo.
pub(crate) fn v1_mount(mountinfo: &str, controller: &str) -> Option<(PathBuf, String)> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let mut post = post.split(' ');
        if post.next()? != "cgroup" {
            return None;
        }
        let _source = post.next()?;
        let super_opts = post.next()?;
        if !super_opts.split(',').any(|o| o == controller) {
            return None;
        }
        let fields: Vec<&str> = pre.split(' ').collect();
        let root = fields.get(3)?;
        let mount_point = fields.get(4)?;
        Some((PathBuf::from(mount_point), root.to_string()))
    })
}

/// Join a mount point with our cgroup path, allowing for a mount whose root is not `/`
/// (inside a cgroup namespace, or bind-mounted sub-hierarchies).
fn under_mount(mount_point: &Path, mount_root: &str, own: &str) -> PathBuf {
    let rel = if mount_root == "/" {
        own
    } else {
        own.strip_prefix(mount_root).unwrap_or(own)
    };
    mount_point.join(rel.trim_start_matches('/'))
}

/// v2 `cpu.max` value for a number of cores.
pub(crate) fn v2_cpu_max(cpus: f64) -> String {
    format!("{} {CPU_PERIOD_US}", cpu_quota_us(cpus))
}

fn cpu_quota_us(cpus: f64) -> u64 {
    ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1000)
}

/// A `key value` field of files like `memory.events`, `memory.oom_control`, `cpu.stat`.
pub(crate) fn keyed_value(content: &str, key: &str) -> Option<u64> {
    content.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// The parent directories `<own>/shoal` for each controller (v1) or the unified tree (v2).
fn parents(mode: CgroupMode) -> Result<Vec<(String, PathBuf)>, Error> {
    // v2's is read once per process: the first create may move shoal into a `daemon` leaf
    // (see `v2_enable_controllers`), after which /proc/self/cgroup names that leaf, and the
    // next create would nest one level deeper each time.
    static V2_PARENT: OnceLock<PathBuf> = OnceLock::new();
    if let (CgroupMode::V2, Some(parent)) = (mode, V2_PARENT.get()) {
        return Ok(vec![(String::new(), parent.clone())]);
    }
    let proc_cgroup = fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| cg_err(Path::new("/proc/self/cgroup"), e))?;
    match mode {
        CgroupMode::V2 => {
            let own = own_path(&proc_cgroup, None)
                .ok_or_else(|| cg_err(Path::new("/proc/self/cgroup"), "no cgroup v2 entry"))?;
            let dir = Path::new("/sys/fs/cgroup").join(own.trim_start_matches('/'));
            let parent = V2_PARENT.get_or_init(|| dir.join("shoal"));
            Ok(vec![(String::new(), parent.clone())])
        }
        CgroupMode::V1 => {
            let mountinfo = fs::read_to_string("/proc/self/mountinfo")
                .map_err(|e| cg_err(Path::new("/proc/self/mountinfo"), e))?;
            let mut out = Vec::new();
            for c in V1_CONTROLLERS {
                let (mp, root) = v1_mount(&mountinfo, c).ok_or_else(|| {
                    cg_err(
                        Path::new("/sys/fs/cgroup"),
                        format!("the {c} controller is not mounted (needed for container limits)"),
                    )
                })?;
                let own = own_path(&proc_cgroup, Some(c)).ok_or_else(|| {
                    cg_err(Path::new("/proc/self/cgroup"), format!("no entry for {c}"))
                })?;
                out.push((c.to_string(), under_mount(&mp, &root, &own).join("shoal")));
            }
            Ok(out)
        }
    }
}

/// v2 only lets a cgroup hand controllers to children while it holds no processes, so when
/// shoal's own cgroup is not the root, shoal moves its own processes into a `daemon` leaf
/// beside `shoal/` — still inside its own subtree.
fn v2_enable_controllers(own: &Path) -> Result<(), Error> {
    let available = fs::read_to_string(own.join("cgroup.controllers")).unwrap_or_default();
    let wanted: Vec<String> = ["cpu", "memory", "pids"]
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let value = wanted.join(" ");
    let ctl = own.join("cgroup.subtree_control");
    let leaf = own.join("daemon");
    // A child forked while the others move (a container's shim starting its PID 1) can be
    // left behind once; the next round moves it.
    let mut rounds = 0;
    loop {
        match write(&ctl, &value) {
            Ok(()) => return Ok(()),
            Err(e) if rounds == 3 => return Err(e),
            Err(_) => {}
        }
        if rounds == 0 {
            fs::create_dir_all(&leaf).map_err(|e| cg_err(&leaf, e))?;
        }
        let procs = fs::read_to_string(own.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace() {
            // A process that exited meanwhile cannot be moved; that is fine.
            let _ = fs::write(leaf.join("cgroup.procs"), pid);
        }
        rounds += 1;
    }
}

/// Locks the shared `shoal/` parent's own parent (a cgroup never removed) with `flock`,
/// which orders threads and processes alike (a daemon and `shoal run` in the same cgroup).
/// Held while a container's cgroup is made beneath `shoal/`, and while a deleted container
/// removes `shoal/` once empty: without it, a delete could remove `shoal/` between a
/// create's making it (on v2, and handing it controllers) and making the container's
/// directory in it, which would then come up again without controllers. Best effort: a
/// cgroup that cannot be locked is used without, and so is one whose holder keeps it
/// longer than [`SHARED_PARENT_WAIT`] (a `shoal run` stopped with Ctrl-Z in its start must
/// not stop every other container's).
fn lock_shared_parent(shoal: &Path) -> Option<Flock<fs::File>> {
    let mut dir = fs::File::open(shoal.parent()?).ok()?;
    let deadline = Instant::now() + SHARED_PARENT_WAIT;
    loop {
        match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Some(lock),
            Err((again, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                dir = again;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((_, e)) => {
                tracing::warn!(dir = %shoal.display(), error = %e, "cgroup parent not locked");
                return None;
            }
        }
    }
}

/// How long a container's cgroup waits for the shared parent's lock: its holders keep it
/// for a few `mkdir`s or `rmdir`s, so a wait this long means a holder that is stopped.
const SHARED_PARENT_WAIT: Duration = Duration::from_secs(5);

/// `pids.max` for a workload limited to `pids`: one more for shoal's init, which runs in
/// the cgroup as PID 1 where Docker's workload (without `--init`) is PID 1 itself, so
/// that `pids: 1` runs one process as `--pids-limit 1` does.
fn with_init(pids: u64) -> String {
    pids.saturating_add(1).to_string()
}

/// Makes a container's cgroup directory. One that is there already and holds processes
/// is another container's (the runtime names each after its state directory too, so this
/// takes a shoal that names them otherwise): using it would put the two under one limit,
/// and deleting this container would kill the other. An empty one is a leftover (of a run
/// that crashed, or a delete that found it busy), and is used.
fn make_own(dir: &Path) -> Result<(), Error> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            if procs.trim().is_empty() {
                Ok(())
            } else {
                Err(cg_err(
                    dir,
                    "already holds processes (of an earlier run of this container that \
                     would not stop, or of another runtime's); stop them or choose another name",
                ))
            }
        }
        Err(e) => Err(cg_err(dir, e)),
    }
}

impl Cgroup {
    /// Where `<own>/shoal/<name>` is for every controller, without making anything: the
    /// init needs the paths before the runtime makes the directories (see [`Cgroup::make`]).
    pub fn plan(name: &str) -> Result<Cgroup, Error> {
        let mode = CgroupMode::detect();
        let dirs = parents(mode)?
            .into_iter()
            .map(|(ctrl, parent)| (ctrl, parent.join(name)))
            .collect();
        Ok(Cgroup { mode, dirs })
    }

    /// Make the planned directories and apply the limits. On an error, what this call made
    /// is removed again (the directory of another container is not among it).
    pub fn make(&self, resources: &Resources) -> Result<(), Error> {
        let shared = self
            .dirs
            .first()
            .and_then(|(_, d)| lock_shared_parent(d.parent()?));
        let mut made = Cgroup {
            mode: self.mode,
            dirs: Vec::new(),
        };
        let created = (|| {
            for (ctrl, dir) in &self.dirs {
                let parent = dir
                    .parent()
                    .ok_or_else(|| cg_err(dir, "a cgroup directory has no parent"))?;
                if self.mode == CgroupMode::V2 {
                    let own = parent.parent().unwrap_or(Path::new("/sys/fs/cgroup"));
                    v2_enable_controllers(own)?;
                }
                fs::create_dir_all(parent).map_err(|e| cg_err(parent, e))?;
                if self.mode == CgroupMode::V2 {
                    v2_enable_controllers(parent)?;
                }
                // Co-mounted controllers (`cpu,cpuacct`) share one directory.
                if !made.dirs.iter().any(|(_, d)| d == dir) {
                    make_own(dir)?;
                }
                made.dirs.push((ctrl.clone(), dir.clone()));
            }
            Ok(())
        })();
        drop(shared);
        if let Err(e) = created.and_then(|()| self.apply(resources)) {
            made.remove();
            return Err(e);
        }
        Ok(())
    }

    fn dir(&self, ctrl: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| self.mode == CgroupMode::V2 || c == ctrl)
            .map(|(_, d)| d.as_path())
    }

    fn apply(&self, r: &Resources) -> Result<(), Error> {
        match self.mode {
            CgroupMode::V1 => {
                if let (Some(mem), Some(d)) = (r.memory, self.dir("memory")) {
                    write(&d.join("memory.limit_in_bytes"), &mem.to_string())?;
                    // Without this a host with swap would page the workload out instead of
                    // OOM-killing it at the limit.
                    let memsw = d.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        write(&memsw, &mem.to_string())?;
                    }
                }
                if let (Some(cpus), Some(d)) = (r.cpus, self.dir("cpu")) {
                    write(&d.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write(&d.join("cpu.cfs_quota_us"), &cpu_quota_us(cpus).to_string())?;
                }
                if let (Some(pids), Some(d)) = (r.pids, self.dir("pids")) {
                    write(&d.join("pids.max"), &with_init(pids))?;
                }
            }
            CgroupMode::V2 => {
                let d = &self.dirs[0].1;
                if let Some(mem) = r.memory {
                    write(&d.join("memory.max"), &mem.to_string())?;
                    let swap = d.join("memory.swap.max");
                    if swap.exists() {
                        write(&swap, "0")?;
                    }
                }
                if let Some(cpus) = r.cpus {
                    write(&d.join("cpu.max"), &v2_cpu_max(cpus))?;
                }
                if let Some(pids) = r.pids {
                    write(&d.join("pids.max"), &with_init(pids))?;
                }
            }
        }
        Ok(())
    }

    /// Move the calling process into the cgroup (every controller). The caller must be
    /// single-threaded: on v1 this moves its only thread through `tasks`, which the kernel
    /// does without the global threadgroup lock that a `cgroup.procs` write takes (entering
    /// that lock waits for an RCU grace period, about 10 ms, on every container start). v2
    /// cannot move a lone thread between domain cgroups, so there it is `cgroup.procs`.
    pub fn join_self(&self) -> Result<(), Error> {
        let file = match self.mode {
            CgroupMode::V1 => "tasks",
            CgroupMode::V2 => "cgroup.procs",
        };
        for (_, d) in &self.dirs {
            write(&d.join(file), "0")?;
        }
        Ok(())
    }

    /// CPU time used by the cgroup, in seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        match self.mode {
            CgroupMode::V1 => {
                let ns: u64 = fs::read_to_string(self.dir("cpuacct")?.join("cpuacct.usage"))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?;
                Some(ns as f64 / 1e9)
            }
            CgroupMode::V2 => {
                let stat = fs::read_to_string(self.dirs[0].1.join("cpu.stat")).ok()?;
                Some(keyed_value(&stat, "usage_usec")? as f64 / 1e6)
            }
        }
    }

    /// Memory in use, without reclaimable inactive file cache (what `docker stats` shows).
    pub fn memory_bytes(&self) -> Option<u64> {
        let (usage_file, inactive_key) = match self.mode {
            CgroupMode::V1 => ("memory.usage_in_bytes", "total_inactive_file"),
            CgroupMode::V2 => ("memory.current", "inactive_file"),
        };
        let d = self.dir("memory")?;
        let usage: u64 = fs::read_to_string(d.join(usage_file))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let stat = fs::read_to_string(d.join("memory.stat")).unwrap_or_default();
        let inactive = keyed_value(&stat, inactive_key).unwrap_or(0);
        Some(usage.saturating_sub(inactive))
    }

    /// Number of OOM kills inside the cgroup.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = match self.mode {
            CgroupMode::V1 => ("memory.oom_control", "oom_kill"),
            CgroupMode::V2 => ("memory.events", "oom_kill"),
        };
        self.dir("memory")
            .and_then(|d| fs::read_to_string(d.join(file)).ok())
            .and_then(|c| keyed_value(&c, key))
            .unwrap_or(0)
    }

    /// Current number of tasks (used by tests and `ps`).
    pub fn pids_current(&self) -> Option<u64> {
        fs::read_to_string(self.dir("pids")?.join("pids.current"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn procs(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .dirs
            .iter()
            .filter_map(|(_, d)| fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|c| {
                c.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Remove the directories if nothing runs in them any more, without waiting: true when
    /// they are gone. A container that exited cleanly needs no more than this.
    pub fn try_remove(&self) -> bool {
        if !self.remove_dirs() {
            return false;
        }
        self.remove_parents();
        true
    }

    /// SIGKILL everything still in the cgroup and remove its directories (and the shared
    /// `shoal/` parent once empty). Best effort: waits up to 5 s for processes to go.
    pub fn remove(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            self.kill_all();
            if self.remove_dirs() {
                break;
            }
            if Instant::now() > deadline {
                tracing::warn!(dirs = ?self.dirs, "cgroup still busy after 5s; leaving it");
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.remove_parents();
    }

    /// SIGKILLs everything in the cgroup now (nothing when it is empty). Only the
    /// members listed are signalled, so a pid reused outside is safe.
    pub fn kill_all(&self) {
        if self.mode == CgroupMode::V2 {
            for (_, d) in &self.dirs {
                let kill = d.join("cgroup.kill");
                if kill.exists() {
                    let _ = fs::write(&kill, "1");
                }
            }
        }
        for pid in self.procs() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// One attempt at every directory; true when none is left.
    fn remove_dirs(&self) -> bool {
        let mut left = false;
        for (_, d) in &self.dirs {
            match fs::remove_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(_) => left = true,
            }
        }
        !left
    }

    fn remove_parents(&self) {
        let _shared = self
            .dirs
            .first()
            .and_then(|(_, d)| lock_shared_parent(d.parent()?));
        for (_, d) in &self.dirs {
            if let Some(parent) = d.parent() {
                // Fails while other containers exist, which is what we want.
                let _ = fs::remove_dir(parent);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_parent_lock_excludes_a_second_holder() {
        let own = tempfile::tempdir().unwrap();
        let shoal = own.path().join("shoal");
        let held = lock_shared_parent(&shoal).expect("lock");
        let again = fs::File::open(own.path()).unwrap();
        assert!(Flock::lock(again, FlockArg::LockExclusiveNonblock).is_err());
        drop(held);
        let again = fs::File::open(own.path()).unwrap();
        assert!(Flock::lock(again, FlockArg::LockExclusiveNonblock).is_ok());
    }

    const PROC_CGROUP: &str = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n2:cpuacct:/\n1:cpu:/\n0::/user.slice/x.scope\n";

    #[test]
    fn own_paths() {
        assert_eq!(
            own_path(PROC_CGROUP, Some("memory")).as_deref(),
            Some("/process_api/abc")
        );
        assert_eq!(own_path(PROC_CGROUP, Some("cpu")).as_deref(), Some("/"));
        assert_eq!(
            own_path(PROC_CGROUP, None).as_deref(),
            Some("/user.slice/x.scope")
        );
        assert_eq!(
            own_path("4:cpu,cpuacct:/a\n", Some("cpuacct")).as_deref(),
            Some("/a")
        );
        assert_eq!(own_path(PROC_CGROUP, Some("blkio")), None);
    }

    #[test]
    fn mounts() {
        let mi = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                  32 31 0:29 /sub /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                  41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let (mp, root) = v1_mount(mi, "memory").unwrap();
        assert_eq!(mp, PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(
            under_mount(&mp, &root, "/process_api/abc"),
            PathBuf::from("/sys/fs/cgroup/memory/process_api/abc")
        );
        let (mp, root) = v1_mount(mi, "cpuacct").unwrap();
        assert_eq!(
            under_mount(&mp, &root, "/sub/x"),
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/x")
        );
        assert!(v1_mount(mi, "pids").is_none());
    }

    #[test]
    fn limits_and_stats_formats() {
        assert_eq!(v2_cpu_max(0.5), "50000 100000");
        assert_eq!(v2_cpu_max(2.0), "200000 100000");
        assert_eq!(cpu_quota_us(0.001), 1000);
        let events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\n";
        assert_eq!(keyed_value(events, "oom_kill"), Some(1));
        assert_eq!(keyed_value(events, "oom"), Some(2));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed_value(v1, "oom_kill"), Some(3));
        assert_eq!(
            keyed_value("usage_usec 1500000\n", "usage_usec"),
            Some(1_500_000)
        );
    }
}
