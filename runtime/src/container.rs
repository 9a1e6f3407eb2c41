//! The runtime API: create, start, wait, signal, stop, stats, delete, list, cleanup.

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::UnixStream;
use tokio::sync::watch;

use crate::cgroup::Cgroup;
use crate::error::{Error, IoContext};
use crate::image;
use crate::launch::{self, Init};
use crate::network::{self, Lease};
use crate::previous_log;
use crate::protocol::{InitConfig, RootPlan, ToInit, ToRuntime};
use crate::spec::{validate_id, ContainerSpec, Mount, Network, RootFs, Stdio};
use crate::stale;
use crate::state::{self, ContainerInfo, ContainerState, NetRecord};
use crate::{RuntimeSettings, INIT_ARG};

/// Size at which captured output rotates (`output.log` → `output.log.1`).
const LOG_CAP: u64 = 1 << 20;
/// How long the init may take to report its pid.
const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often what is left of a container whose shim was killed is killed again, until its
/// end is seen.
const SHIM_GONE_SWEEP: Duration = Duration::from_millis(100);

/// Runtime configuration.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// `runtime.state_dir`.
    pub state_dir: PathBuf,
    /// `runtime.subnet`.
    pub subnet: String,
    /// Binary to re-exec as the container init; `/proc/self/exe` when `None`. Its `main`
    /// must dispatch [`crate::INIT_ARG`] to [`crate::init::main`].
    pub init_binary: Option<PathBuf>,
    /// Fork this process to start the init instead of re-exec'ing the binary, while it is
    /// single-threaded (`shoal run`); ignored with `init_binary` or once other threads
    /// exist. See `launch`.
    pub fork_init: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig::from(&RuntimeSettings::default())
    }
}

impl From<&RuntimeSettings> for RuntimeConfig {
    fn from(s: &RuntimeSettings) -> Self {
        RuntimeConfig {
            state_dir: s.state_dir.clone(),
            subnet: s.subnet.clone(),
            init_binary: None,
            fork_init: false,
        }
    }
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExitStatus {
    /// Exit code when the workload exited normally.
    pub code: Option<i32>,
    /// Signal number when it was killed.
    pub signal: Option<i32>,
    /// The memory cgroup OOM-killed a process that [`Container::new_oom_kills`] had not yet
    /// settled (all of them when nothing polled it): taken for the main process's own kill.
    pub oom: bool,
    /// Setup failed before the workload ran (e.g. "command not found: foo").
    pub error: Option<String>,
}

impl ExitStatus {
    /// Shell-style status: the code, or 128+N for signal N.
    pub fn code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 1,
        }
    }

    /// Whether the OOM killer ended the main process: it died of SIGKILL, and the memory
    /// cgroup OOM-killed something (see [`ExitStatus::oom`]).
    pub fn oom_killed(&self) -> bool {
        self.oom && self.signal == Some(libc::SIGKILL)
    }

    /// Metric label per SPEC: `oom`, `signaled` or `exited`.
    pub fn reason(&self) -> &'static str {
        if self.oom_killed() {
            "oom"
        } else if self.signal.is_some() {
            "signaled"
        } else {
            "exited"
        }
    }
}

/// Resource usage of a running container.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Stats {
    pub cpu_seconds: f64,
    pub memory_bytes: u64,
}

/// Entry point: owns a state directory and creates containers in it.
#[derive(Debug, Clone)]
pub struct Runtime {
    config: Arc<RuntimeConfig>,
    /// Ends the name of each container's cgroup (see [`cgroup_tag`]).
    cgroup_tag: Arc<str>,
}

impl Runtime {
    /// Check privileges and the subnet, and create the state directory.
    pub fn new(config: RuntimeConfig) -> Result<Runtime, Error> {
        if !nix::unistd::geteuid().is_root() {
            return Err(Error::NotRoot);
        }
        network::parse_subnet(&config.subnet)?;
        let containers = config.state_dir.join("containers");
        fs::create_dir_all(&containers).ctx(|| format!("creating {}", containers.display()))?;
        Ok(Runtime {
            cgroup_tag: cgroup_tag(&config.state_dir).into(),
            config: Arc::new(config),
        })
    }

    /// Whether `state_dir` holds containers (live or left by a run that died), or logs kept
    /// by a run that died: what a process that has no containers to run opens the runtime
    /// for, to clean up (a run killed while its replicas were exited leaves only their
    /// kept logs).
    pub fn holds_containers_or_logs(state_dir: &Path) -> bool {
        [
            state_dir.join("containers"),
            state_dir.join(stale::REMOVING),
        ]
        .iter()
        .any(|dir| fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()))
            || previous_log::any_stale(state_dir)
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.config.state_dir
    }

    /// Where containers' directories are, one per name.
    fn containers_dir(&self) -> PathBuf {
        self.config.state_dir.join("containers")
    }

    /// Where the directories of containers being released are (see [`stale`]).
    fn removing_dir(&self) -> PathBuf {
        self.config.state_dir.join(stale::REMOVING)
    }

    /// Where every container's init mounts its root, each in its own mount namespace. One
    /// directory made once and kept: a mount point of its own in each container's directory
    /// cost every removal an `rmdir` of a former mount point, 0.15-0.25 ms of `shoal run`'s
    /// 5.5 ms on this machine's disk-backed state directory.
    fn root_mount(&self) -> PathBuf {
        self.config.state_dir.join("root")
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.containers_dir().join(id)
    }

    /// Prepare a container: state directory, image layers, where its cgroup will be, network
    /// lease. Nothing runs until [`Container::start`], which makes the cgroup. Image unpacking
    /// happens on the blocking pool.
    pub async fn create(&self, spec: ContainerSpec) -> Result<Container, Error> {
        let id = match &spec.name {
            Some(n) => {
                validate_id(n)?;
                n.clone()
            }
            None => format!("{:012x}", rand::random::<u64>() >> 16),
        };
        check_spec(&spec)?;
        // In the state file from its first save on, though `start` makes it: a crash at any
        // point after leaves a cgroup that cleanup finds (and removes if it was made). This
        // process's own record has it only once made (see `handshake`), so that a delete
        // before leaves a directory of that name alone.
        let cgroup = Cgroup::plan(&format!("{id}.{}", self.cgroup_tag))?;
        let dir = self.container_dir(&id);
        // The name is taken and its live owner recorded under the names lock, so that a
        // cleaner never takes this container for the dead one it read before (see stale).
        let names = stale::lock_names(&self.containers_dir()).await;
        // A dead owner's container of this name that is still being released keeps the
        // name until it is gone: its cgroup would be this one's.
        if stale::being_removed(&self.removing_dir(), &id) {
            return Err(Error::NameInUse(id));
        }
        if dir.symlink_metadata().is_ok() {
            return Err(Error::NameInUse(id));
        }
        let staged = match stale::stage(&self.containers_dir(), &id, names.held()) {
            Ok(staged) => staged,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::NameInUse(id))
            }
            Err(e) => {
                return Err(Error::io(
                    format!("creating the directory of container {id}"),
                    e,
                ))
            }
        };
        let mut info = ContainerInfo {
            id: id.clone(),
            service: spec.service.clone(),
            owner_pid: std::process::id() as i32,
            owner_start: state::process_start_time(std::process::id() as i32).unwrap_or(0),
            shim_pid: None,
            pid: None,
            state: ContainerState::Created,
            created_at: state::now_secs(),
            started_at: None,
            address: None,
            cgroup: None,
            net: None,
        };
        // Ownership is recorded before the directory has the container's name, so a crash
        // from here on leaves something cleanup_stale recognises (a staged directory it
        // removes, or a container whose owner died), never a name taken by no one.
        let saved = state::save(
            &staged,
            &ContainerInfo {
                cgroup: Some(cgroup.clone()),
                ..info.clone()
            },
        );
        let placed = saved.and_then(|()| {
            match stale::publish(&staged, &dir).ctx(|| format!("naming {}", dir.display()))? {
                true => Ok(()),
                false => Err(Error::NameInUse(id.clone())),
            }
        });
        if let Err(e) = placed {
            // Under the lock still: once it is free, a staged directory of this name may be
            // another create's.
            let _ = fs::remove_dir_all(&staged);
            return Err(e);
        }
        drop(names);
        let prepared = self.prepare(&id, &dir, spec, cgroup, &mut info).await;
        match prepared {
            Ok(c) => Ok(c),
            Err(e) => {
                release(&info).await;
                let _ = fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    async fn prepare(
        &self,
        id: &str,
        dir: &Path,
        spec: ContainerSpec,
        cgroup: Cgroup,
        info: &mut ContainerInfo,
    ) -> Result<Container, Error> {
        let root_mount = self.root_mount();
        fs::create_dir_all(&root_mount).ctx(|| format!("creating {}", root_mount.display()))?;
        let (root, img) = match &spec.rootfs {
            RootFs::Dir(p) => {
                let p = fs::canonicalize(p).map_err(|e| Error::Rootfs {
                    path: p.clone(),
                    reason: format!("{e} (give an existing root filesystem directory)"),
                })?;
                if !p.is_dir() {
                    return Err(Error::Rootfs {
                        path: p,
                        reason: "not a directory".into(),
                    });
                }
                (RootPlan::Dir(p), image::Image::default())
            }
            RootFs::Host => (RootPlan::Host, image::Image::default()),
            RootFs::Image(path) => {
                let state_dir = self.config.state_dir.clone();
                let path = path.clone();
                let img = tokio::task::spawn_blocking(move || image::load(&state_dir, &path))
                    .await
                    .map_err(|e| Error::io("unpacking the image", std::io::Error::other(e)))??;
                let upper = dir.join("upper");
                let work = dir.join("work");
                fs::create_dir(&upper).ctx(|| format!("creating {}", upper.display()))?;
                fs::create_dir(&work).ctx(|| format!("creating {}", work.display()))?;
                // The container's `/` takes the upper directory's mode: 0755 whatever the
                // umask of whoever started shoal, or a non-root workload could open nothing.
                fs::set_permissions(&upper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                    .ctx(|| format!("setting the mode of {}", upper.display()))?;
                let plan = RootPlan::Overlay {
                    lowers: img.lowers.clone(),
                    upper,
                    work,
                };
                (plan, img)
            }
        };

        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert(
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
        for kv in &img.env {
            if let Some((k, v)) = kv.split_once('=') {
                env.insert(k.into(), v.into());
            }
        }
        let hostname = hostname_for(&spec, id);
        env.insert("HOSTNAME".into(), hostname.clone());
        env.insert("SHOAL_REPLICA".into(), id.to_string());

        let mut lease = None;
        let mut address = None;
        match spec.network {
            Network::Host => {
                let port = free_port()?;
                env.insert("PORT".into(), port.to_string());
                address = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
            }
            Network::Isolated => {
                let l = network::allocate(&self.config.state_dir, &self.config.subnet, id)?;
                info.net = Some(NetRecord {
                    host_if: l.host_if.clone(),
                    lease: l.path.clone(),
                });
                let port = spec.port.unwrap_or(8080);
                env.insert("PORT".into(), port.to_string());
                address = Some(SocketAddr::from((l.container_ip, port)));
                lease = Some(l);
            }
            Network::None => {
                if let Some(port) = spec.port {
                    env.insert("PORT".into(), port.to_string());
                }
            }
        }
        // `${PORT}` and `${SHOAL_REPLICA}` in the given command and env are this container's
        // own (SPEC: filled in per replica); the port is only known here.
        let port = env.get("PORT").and_then(|p| p.parse::<u16>().ok());
        let expand = |text: &str| match port {
            Some(port) => shoal_config::interpolate::replica_vars(text, port, id),
            None => text.to_string(),
        };
        for (k, v) in &spec.env {
            env.insert(k.clone(), expand(v));
        }

        let mut args = img.entrypoint.clone();
        if spec.command.is_empty() {
            args.extend(img.cmd.iter().cloned());
        } else {
            args.extend(spec.command.iter().map(|a| expand(a)));
        }
        if args.is_empty() {
            return Err(Error::InvalidSpec(
                "no command given and the image defines no Entrypoint or Cmd".into(),
            ));
        }

        let init = InitConfig {
            id: id.to_string(),
            hostname,
            root,
            root_mount,
            dir: dir.to_path_buf(),
            cgroup: cgroup.clone(),
            read_only: spec.read_only,
            mounts: spec.mounts.clone(),
            network: spec.network,
            args,
            env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd: spec
                .workdir
                .clone()
                .or(img.workdir)
                .unwrap_or_else(|| "/".into()),
            user: spec.user.clone().or(img.user),
            stdio: spec.stdio,
            log_path: dir.join("output.log"),
            log_cap: LOG_CAP,
        };
        // Saved by `start` before the veth that `net` names exists: a crash before that
        // leaves a lease whose container directory cleanup_stale removes, and then the
        // lease with it.
        info.address = address.map(|a| a.to_string());
        let (exit_tx, _) = watch::channel(None);
        Ok(Container {
            inner: Arc::new(Inner {
                id: id.to_string(),
                dir: dir.to_path_buf(),
                spec,
                init,
                cgroup,
                lease,
                address,
                init_binary: self.config.init_binary.clone(),
                fork_init: self.config.fork_init,
                info: Mutex::new(info.clone()),
                exit: exit_tx,
                oom_polled: AtomicU64::new(0),
                oom_settled: AtomicU64::new(0),
            }),
        })
    }

    /// Containers recorded in the state directory (by any process).
    pub fn list(&self) -> Vec<ContainerInfo> {
        let mut out: Vec<ContainerInfo> = fs::read_dir(self.containers_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| !stale::is_staged(e))
            .filter_map(|e| state::load(&e.path()))
            .collect();
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        out
    }

    /// Waits while container `id`, whose owner died, is being released by another process
    /// (see [`stale`]): until that is done its name stays taken. At most 10 s, so that a
    /// cleaner that died meanwhile (the next [`Runtime::cleanup_stale`] takes its work
    /// over) cannot hold the caller for ever.
    pub async fn wait_released(&self, id: &str) {
        let removing = self.removing_dir();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while stale::being_removed(&removing, id) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Remove what containers whose owner process died left behind: their processes,
    /// cgroups, veths, address leases and state. Returns the ids removed. Each is first
    /// claimed (see [`stale`]), so that of several processes cleaning up at once only one
    /// releases it.
    pub async fn cleanup_stale(&self) -> Vec<String> {
        let containers = self.containers_dir();
        let removing = self.removing_dir();
        let mut claimed = Vec::new();
        {
            let names = stale::lock_names(&containers).await;
            for entry in fs::read_dir(&containers).into_iter().flatten().flatten() {
                // Under the lock, a staged directory is a create's that died before it named
                // its container (nothing else of the container exists yet); without it, one
                // that is young may be a create's on its way.
                if stale::is_staged(&entry) {
                    if names.held() || older_than_a_create(&entry) {
                        let _ = fs::remove_dir_all(entry.path());
                    }
                    continue;
                }
                match stale::claim_if_dead(&entry.path(), &removing) {
                    stale::Found::Claimed(container) => claimed.push(*container),
                    stale::Found::Live => {}
                    stale::Found::Unreadable => {
                        // This shoal's creates name a directory only with its state in it;
                        // an older shoal made its directory without the lock and before
                        // its state, so one that is young may still be on its way.
                        if older_than_a_create(&entry) {
                            let _ = fs::remove_dir_all(entry.path());
                        }
                    }
                }
            }
        }
        claimed.extend(stale::orphaned(&removing));
        for cache in ["images", "layers"] {
            image::remove_abandoned(&self.config.state_dir.join(cache));
        }
        let mut removed = Vec::new();
        for stale::Claimed { dir, info } in claimed {
            tracing::info!(id = %info.id, owner = info.owner_pid, "removing container left by a dead owner");
            if let Some(shim) = info.shim_pid {
                if is_our_shim(shim) {
                    let _ = kill(Pid::from_raw(shim), Signal::SIGKILL);
                }
            }
            release(&info).await;
            let _ = fs::remove_dir_all(&dir);
            removed.push(info.id);
        }
        if removing.exists() {
            // Only once empty, and under the lock, where no claim is moving one in.
            let _names = stale::lock_names(&containers).await;
            let _ = fs::remove_dir(&removing);
        }
        self.release_orphan_leases();
        previous_log::remove_stale(&self.config.state_dir);
        removed
    }

    /// Removes the state directory's empty subdirectories (`containers/`, `root/`, `net/`,
    /// `logs/`, `removing/`) once it holds no container, this process's or another's: what
    /// a clean shutdown leaves is the directory itself and the image caches. Under the
    /// names lock, which a create holds while it makes its container's directory: the
    /// others are made and used only while that one exists, and are made again as needed.
    pub async fn tidy(&self) {
        let containers = self.containers_dir();
        let _names = stale::lock_names(&containers).await;
        let empty = |dir: &Path| fs::read_dir(dir).map_or(true, |mut e| e.next().is_none());
        if !empty(&containers) || !empty(&self.removing_dir()) {
            return;
        }
        // Each only if empty: `logs/` keeps the output of a replica restarting elsewhere.
        for dir in [
            self.root_mount(),
            self.config.state_dir.join("net"),
            previous_log::logs_dir(&self.config.state_dir),
            self.removing_dir(),
            containers,
        ] {
            let _ = fs::remove_dir(dir);
        }
    }

    /// Keeps the output of `container`'s run, which is about to be deleted, for
    /// `shoal logs` while a replica of the same name restarts.
    pub fn keep_output(&self, container: &Container) -> Result<(), Error> {
        previous_log::keep(&self.config.state_dir, container.id(), &container.inner.dir)
            .ctx(|| format!("keeping the output of {}", container.id()))
    }

    /// Drops the kept output of replica `id`, which is gone for good.
    pub fn forget_output(&self, id: &str) {
        previous_log::forget(&self.config.state_dir, id);
    }

    /// Leases whose container directory no longer exists.
    fn release_orphan_leases(&self) {
        let net = self.config.state_dir.join("net");
        let removing = self.removing_dir();
        for entry in fs::read_dir(net).into_iter().flatten().flatten() {
            let owner = fs::read_to_string(entry.path()).unwrap_or_default();
            let orphan = if owner.is_empty() {
                // A lease is made empty and then given its owner's name: a young empty one
                // may be a create's that is on its way.
                older_than_a_create(&entry)
            } else {
                // A container being released keeps its lease until its veth is gone: the
                // veth's name comes from the lease.
                !self.container_dir(&owner).exists() && !stale::being_removed(&removing, &owner)
            };
            if orphan {
                network::release(&entry.path());
            }
        }
    }

    /// Number of image layers this process has unpacked (the cache makes repeats free).
    pub fn layers_unpacked(&self) -> u64 {
        image::LAYERS_UNPACKED.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn check_spec(spec: &ContainerSpec) -> Result<(), Error> {
    for m in &spec.mounts {
        let target = match m {
            Mount::Bind { source, target, .. } => {
                if !source.exists() {
                    return Err(Error::InvalidSpec(format!(
                        "bind mount source {} does not exist",
                        source.display()
                    )));
                }
                target
            }
            Mount::Tmpfs { target, .. } => target,
        };
        if !target.is_absolute()
            || target
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(Error::InvalidSpec(format!(
                "mount target {} must be an absolute path without '..'",
                target.display()
            )));
        }
    }
    if let Some(u) = &spec.user {
        crate::spec::parse_user(u)?;
    }
    Ok(())
}

/// Whether `entry` was last changed longer ago than any create takes between making it
/// and finishing it (a directory and its first state, a lease and its owner's name).
fn older_than_a_create(entry: &fs::DirEntry) -> bool {
    entry
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > Duration::from_secs(60))
}

/// Ask the kernel for a free loopback port (host networking passes it as PORT).
fn free_port() -> Result<u16, Error> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).ctx(|| "picking a free port".into())?;
    Ok(l.local_addr().ctx(|| "picking a free port".into())?.port())
}

/// A pid is only killed by cleanup when it is still one of our shims (pids get reused):
/// named [`crate::init::PROCESS_NAME`], or, for a shim of an older shoal, re-exec'd with
/// [`INIT_ARG`].
fn is_our_shim(pid: i32) -> bool {
    let named = fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|c| c.trim_end().as_bytes() == crate::init::PROCESS_NAME.to_bytes());
    named
        || fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == INIT_ARG.as_bytes()))
}

/// Eight hex digits of the state directory's sha256. Container names are unique within one
/// state directory only, and shoals with different ones share the v1 `cpu` and `pids`
/// hierarchies (and, in one cgroup, the v2 tree): with this in its cgroup's name, a
/// container of one never lands in, or kills with its delete, the other's of that name.
fn cgroup_tag(state_dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    let dir = fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    image::hex(&Sha256::digest(dir.as_os_str().as_encoded_bytes())[..4])
}

/// The container's hostname: the one asked for; else with host networking the host's own,
/// as Docker gives a `--network host` container; else its id.
fn hostname_for(spec: &ContainerSpec, id: &str) -> String {
    if let Some(name) = &spec.hostname {
        return name.clone();
    }
    if spec.network == Network::Host {
        if let Ok(name) = nix::unistd::gethostname() {
            if let Some(name) = name.to_str().filter(|n| !n.is_empty()) {
                return name.to_string();
            }
        }
    }
    id.to_string()
}

/// Says once that this host cannot abort connections (a kernel without
/// `CONFIG_INET_DIAG_DESTROY`, no `tcp_diag`, or no CAP_NET_ADMIN), and what it costs.
fn cannot_abort(id: &str, errno: nix::errno::Errno) {
    use nix::errno::Errno::{ENOENT, EOPNOTSUPP, EPERM};
    static SAID: std::sync::Once = std::sync::Once::new();
    if matches!(errno, EOPNOTSUPP | EPERM | ENOENT) {
        SAID.call_once(|| {
            tracing::warn!(%errno, "cannot abort the connections to a removed isolated container: a client whose replica dies in the middle of a response waits for timeouts.idle");
        });
    } else {
        tracing::debug!(id, %errno, "cannot abort connections to the container");
    }
}

/// Release the host-side resources recorded in a state file.
async fn release(info: &ContainerInfo) {
    if let Some(cg) = &info.cgroup {
        if !cg.try_remove() {
            let cg = cg.clone();
            // Removal polls until processes are gone; keep that off the async workers.
            let _ = tokio::task::spawn_blocking(move || cg.remove()).await;
        }
    }
    if let Some(net) = &info.net {
        // Its processes are gone; what they left unsent must not leave the host's end of
        // their connections waiting once the link goes (see `network::abort`). Only while
        // the veth is there: its /30 route keeps the address this container's, which
        // another state directory's container may have once it is gone.
        let address = info
            .address
            .as_deref()
            .and_then(|a| a.parse::<SocketAddrV4>().ok())
            .filter(|_| network::interface_exists(&net.host_if));
        if let Some(address) = address {
            let ip = *address.ip();
            match tokio::task::spawn_blocking(move || network::abort_connections_to(ip)).await {
                Ok(Ok(aborted)) if aborted > 0 => {
                    tracing::debug!(id = %info.id, aborted, "aborted connections to the container")
                }
                Ok(Err(errno)) => cannot_abort(&info.id, errno),
                Ok(Ok(_)) | Err(_) => {}
            }
        }
        if let Err(e) = network::teardown(&net.host_if).await {
            tracing::warn!(id = %info.id, error = %e, "removing veth");
        }
        network::release(&net.lease);
    }
}

#[derive(Debug)]
struct Inner {
    id: String,
    dir: PathBuf,
    spec: ContainerSpec,
    init: InitConfig,
    cgroup: Cgroup,
    lease: Option<Lease>,
    address: Option<SocketAddr>,
    init_binary: Option<PathBuf>,
    fork_init: bool,
    info: Mutex<ContainerInfo>,
    exit: watch::Sender<Option<ExitStatus>>,
    /// The cgroup's OOM kills at the last poll of [`Container::new_oom_kills`], and the
    /// count two polls in a row agreed on.
    oom_polled: AtomicU64,
    oom_settled: AtomicU64,
}

/// A container created by [`Runtime::create`]. Cheap to clone; all clones are one container.
#[derive(Debug, Clone)]
pub struct Container {
    inner: Arc<Inner>,
}

impl Container {
    /// The container id (also its hostname unless one was set).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The spec it was created from.
    pub fn spec(&self) -> &ContainerSpec {
        &self.inner.spec
    }

    /// Where the workload can be reached: `<container ip>:<port>` for isolated networking
    /// (port defaults to 8080), `127.0.0.1:<PORT>` for host networking, `None` otherwise.
    pub fn address(&self) -> Option<SocketAddr> {
        self.inner.address
    }

    /// Host pid of the container's PID 1, once started.
    pub fn pid(&self) -> Option<i32> {
        self.lock_info().pid
    }

    /// The file captured stdout/stderr go to (with [`Stdio::Capture`]).
    pub fn log_path(&self) -> PathBuf {
        self.inner.init.log_path.clone()
    }

    fn lock_info(&self) -> std::sync::MutexGuard<'_, ContainerInfo> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.inner
            .info
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Start the container: spawn the init (which joins the cgroup itself), set up its
    /// network and let it run the workload. Returns once the workload is being started; setup errors
    /// inside the container (such as a missing command) surface in [`Container::wait`].
    pub async fn start(&self) -> Result<(), Error> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .ctx(|| "creating the init socketpair".into())?;
        // The config goes into the socket before the init exists, so the init reads it as
        // soon as it runs instead of waiting for this process to be scheduled again after
        // the fork. A config larger than the socket's buffer is finished in the handshake.
        let config = self.encoded_config()?;
        let sent = match nix::sys::socket::send(
            ours.as_raw_fd(),
            &config,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        ) {
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN) => 0,
            Err(e) => return Err(Error::io("sending the init config", e.into())),
        };
        let mut init = launch::start(
            self.inner.init_binary.as_deref(),
            &self.inner.id,
            self.inner.spec.stdio == Stdio::Capture,
            self.inner.fork_init,
            theirs,
            ours.as_fd(),
        )?;
        let sock = to_tokio(ours)?;
        let (read, mut write) = sock.into_split();
        let mut lines = BufReader::new(read);

        let started = self
            .handshake(&config[sent..], &mut lines, &mut write, &init)
            .await;
        if let Err(e) = started {
            let shim_started_pid1 = !init.is_pid1();
            init.kill();
            let _ = init.wait().await;
            // PID 1 outlives a killed shim; a forked PID 1 was just reaped above, and its pid
            // may already be someone else's.
            if let Some(pid) = self.pid().filter(|_| shim_started_pid1) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            // Nothing reports an exit now: without one, `wait` and `delete` would wait for it.
            let code = match &e {
                Error::Init { exit_code, .. } => *exit_code,
                _ => 1,
            };
            self.inner.exit.send_replace(Some(ExitStatus {
                code: Some(code),
                error: Some(e.to_string()),
                ..ExitStatus::default()
            }));
            return Err(e);
        }

        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            let mut status = ExitStatus::default();
            // Bytes, not a String: `read_until` keeps what it read in the buffer when the
            // shim's branch below wins, where `read_line` may lose it.
            let mut line = Vec::new();
            let mut shim_ended = None;
            // Messages until every holder of the socket (shim, PID 1, workload before exec)
            // is gone; the first Exited wins (PID 1's is more precise than the shim's).
            loop {
                let read = tokio::select! {
                    read = lines.read_until(b'\n', &mut line) => read,
                    // A shim ends on its own only after PID 1, and everything else of the
                    // container, ended. Killed from outside, it leaves PID 1 running
                    // unwatched (reparented, holding the socket): the rest goes too, as
                    // containerd ends a task whose shim died, and the socket's end follows.
                    ended = init.shim_ended(), if shim_ended.is_none() => {
                        shim_ended = Some(ended);
                        inner.cgroup.kill_all();
                        continue;
                    }
                    // PID 1 joins the cgroup itself, right after the go: one the shim
                    // left before it had is killed once it has.
                    () = tokio::time::sleep(SHIM_GONE_SWEEP), if shim_ended.is_some() => {
                        inner.cgroup.kill_all();
                        continue;
                    }
                };
                let Ok(n) = read else {
                    break;
                };
                if n == 0 {
                    break;
                }
                match serde_json::from_slice::<ToRuntime>(&line) {
                    Ok(ToRuntime::Exited { code, signal })
                        if status.code.is_none() && status.signal.is_none() =>
                    {
                        status.code = code;
                        status.signal = signal;
                    }
                    Ok(ToRuntime::Error { message, exit_code }) if status.error.is_none() => {
                        status.error = Some(message);
                        status.code = Some(exit_code);
                    }
                    _ => {}
                }
                line.clear();
            }
            // The socket ends when the shim exits, after it reaped PID 1, or when a forked
            // PID 1 exits; PID 1 only exits once nothing else of the container runs. So when
            // PID 1 reported, the status is complete: it is published before the init is
            // reaped, while its exit tears down the mount namespace (an RCU grace period).
            let mut init = Some(init);
            if status.code.is_none() && status.signal.is_none() {
                if let Some(init) = init.take() {
                    // A shim killed by a signal took the container with it: the container
                    // ended by that signal, as a PID 1 killed by one does. Any other end
                    // of a shim that did not report is a failure of the shim.
                    let by_signal_counts = init.is_pid1() || shim_ended.is_some();
                    let ended = match shim_ended {
                        Some(ended) => ended,
                        None => init.wait().await,
                    };
                    match ended.signal {
                        Some(signal) if by_signal_counts => status.signal = Some(signal),
                        _ => status.code = Some(ended.code.unwrap_or(1)),
                    }
                }
            }
            status.oom = inner.cgroup.oom_kills() > inner.oom_settled.load(Ordering::Relaxed);
            {
                let mut info = inner
                    .info
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                info.state = ContainerState::Stopped;
                let _ = state::save(&inner.dir, &info);
            }
            tracing::debug!(id = %inner.id, ?status, "container exited");
            inner.exit.send_replace(Some(status));
            if let Some(init) = init {
                init.wait().await;
            }
        });
        Ok(())
    }

    /// The init config as the protocol's first line.
    fn encoded_config(&self) -> Result<Vec<u8>, Error> {
        let mut msg = serde_json::to_vec(&self.inner.init)
            .map_err(|e| Error::io("encoding the init config", std::io::Error::other(e)))?;
        msg.push(b'\n');
        Ok(msg)
    }

    /// The init's next report; an error it reports, or silence for 10 s, fails the start.
    async fn next_report(&self, lines: &mut BufReader<OwnedReadHalf>) -> Result<ToRuntime, Error> {
        let mut line = String::new();
        let read = tokio::time::timeout(INIT_TIMEOUT, lines.read_line(&mut line))
            .await
            .map_err(|_| Error::Init {
                message: "the container init did not report within 10s".into(),
                exit_code: 1,
            })?
            .ctx(|| "reading from the container init".into())?;
        match serde_json::from_str::<ToRuntime>(&line) {
            Ok(ToRuntime::Error { message, exit_code }) => Err(Error::Init { message, exit_code }),
            Ok(report) if read > 0 => Ok(report),
            _ => Err(self.init_failed()),
        }
    }

    fn init_failed(&self) -> Error {
        Error::Init {
            message: format!(
                "the container init failed to start (is {} a shoal binary?)",
                self.inner
                    .init_binary
                    .as_deref()
                    .unwrap_or(Path::new("/proc/self/exe"))
                    .display()
            ),
            exit_code: 1,
        }
    }

    /// `unsent` is the part of the encoded config that did not fit into the socket before
    /// the init started.
    async fn handshake(
        &self,
        unsent: &[u8],
        lines: &mut BufReader<OwnedReadHalf>,
        write: &mut tokio::net::unix::OwnedWriteHalf,
        init: &Init,
    ) -> Result<(), Error> {
        // Made here, while the init starts (a shim's exec, the namespaces it enters), not
        // before: the init joins the cgroup only once the go below has come. Recorded as
        // this container's once made; a directory refused as another's is not, so that
        // the delete after leaves it alone.
        self.inner.cgroup.make(&self.inner.spec.resources)?;
        self.lock_info().cgroup = Some(self.inner.cgroup.clone());
        write
            .write_all(unsent)
            .await
            .ctx(|| "sending the init config".into())?;
        let (pid, shim_pid) = match init {
            Init::Pid1 { pid, .. } => (pid.as_raw(), None),
            Init::Shim(_) => match self.next_report(lines).await? {
                ToRuntime::Pid(pid) => (pid, init.pid()),
                _ => return Err(self.init_failed()),
            },
        };
        {
            let mut info = self.lock_info();
            info.pid = Some(pid);
            info.shim_pid = shim_pid;
        }
        if let Some(lease) = &self.inner.lease {
            // A forked PID 1 enters its network namespace itself, after the fork: until it
            // says so, its namespace is still this process's.
            if init.is_pid1() && !matches!(self.next_report(lines).await?, ToRuntime::Entered) {
                return Err(self.init_failed());
            }
            // The veth, once made, is something a crash would leave: recorded first.
            let info = self.lock_info().clone();
            state::save(&self.inner.dir, &info)?;
            network::setup(lease, pid).await?;
        }
        let go = ToInit::Go {
            address: self.inner.lease.as_ref().map(|l| l.container_ip),
        };
        let mut msg = serde_json::to_vec(&go)
            .map_err(|e| Error::io("encoding go", std::io::Error::other(e)))?;
        msg.push(b'\n');
        write
            .write_all(&msg)
            .await
            .ctx(|| "starting the container".into())?;
        let info = {
            let mut info = self.lock_info();
            info.state = ContainerState::Running;
            info.started_at = Some(state::now_secs());
            info.clone()
        };
        state::save(&self.inner.dir, &info)
    }

    /// Wait for the container to exit. Never blocks a runtime worker: the shim is a
    /// `tokio::process` child, a forked PID 1 is watched through a pidfd, and the init's
    /// report arrives over an async socket.
    /// Returns at once if it already exited; can be called any number of times.
    pub async fn wait(&self) -> ExitStatus {
        let mut rx = self.inner.exit.subscribe();
        let status = match rx.wait_for(Option::is_some).await {
            Ok(s) => s.clone().unwrap_or_default(),
            Err(_) => ExitStatus::default(),
        };
        status
    }

    /// The exit status if the container has exited.
    pub fn try_wait(&self) -> Option<ExitStatus> {
        self.inner.exit.borrow().clone()
    }

    /// Send a signal to the container's PID 1, which forwards it to the workload.
    pub fn signal(&self, sig: i32) -> Result<(), Error> {
        let pid = self
            .pid()
            .ok_or_else(|| Error::InvalidSpec(format!("container {} is not running", self.id())))?;
        if self.try_wait().is_some() {
            return Ok(());
        }
        let sig = Signal::try_from(sig)
            .map_err(|_| Error::InvalidSpec(format!("invalid signal number {sig}")))?;
        match kill(Pid::from_raw(pid), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(Error::io(
                format!("signalling container {}", self.id()),
                e.into(),
            )),
        }
    }

    /// Send `signal`, wait up to `timeout`, then SIGKILL; returns the exit status.
    pub async fn stop(&self, signal: i32, timeout: Duration) -> Result<ExitStatus, Error> {
        if self.pid().is_none() {
            return Ok(ExitStatus::default());
        }
        self.signal(signal)?;
        if let Ok(status) = tokio::time::timeout(timeout, self.wait()).await {
            return Ok(status);
        }
        self.signal(libc::SIGKILL)?;
        Ok(self.wait().await)
    }

    /// CPU seconds and memory in use, from the cgroup.
    pub fn stats(&self) -> Stats {
        Stats {
            cpu_seconds: self.inner.cgroup.cpu_seconds().unwrap_or(0.0),
            memory_bytes: self.inner.cgroup.memory_bytes().unwrap_or(0),
        }
    }

    /// OOM kills the memory cgroup made since the last call: how a supervisor that polls
    /// learns of a process killed at the limit while the container runs on (a child, a
    /// worker). A count that two polls in a row read is settled: a later SIGKILL of the main
    /// process is `oom` only when the count has grown past it. One poll is not enough: it can
    /// read the main process's own kill before that process's exit is reported. So a child's
    /// kill within about two polls of the main process's SIGKILL is taken for its own.
    pub fn new_oom_kills(&self) -> u64 {
        let now = self.inner.cgroup.oom_kills();
        let last = self.inner.oom_polled.swap(now, Ordering::Relaxed);
        if now == last {
            self.inner.oom_settled.store(now, Ordering::Relaxed);
        }
        now.saturating_sub(last)
    }

    /// Number of tasks in the container (`pids.current`), if known.
    pub fn pids(&self) -> Option<u64> {
        self.inner.cgroup.pids_current()
    }

    /// The cgroup directories (for diagnostics and tests).
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.inner
            .cgroup
            .dirs
            .iter()
            .map(|(_, d)| d.clone())
            .collect()
    }

    /// The host end of the veth pair, for isolated networking.
    pub fn host_interface(&self) -> Option<String> {
        self.inner.lease.as_ref().map(|l| l.host_if.clone())
    }

    /// Kill whatever still runs and remove the cgroup, veth, address lease and state.
    pub async fn delete(&self) -> Result<(), Error> {
        if let Some(pid) = self.pid() {
            if self.try_wait().is_none() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                let _ = tokio::time::timeout(Duration::from_secs(10), self.wait()).await;
            }
        }
        let info = self.lock_info().clone();
        release(&info).await;
        match fs::remove_dir_all(&self.inner.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(
                format!("removing {}", self.inner.dir.display()),
                e,
            )),
        }
    }
}

fn to_tokio(fd: OwnedFd) -> Result<UnixStream, Error> {
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true)
        .ctx(|| "configuring the init socket".into())?;
    UnixStream::from_std(std).ctx(|| "registering the init socket".into())
}

#[cfg(test)]
mod tests {
    use super::ExitStatus;

    #[test]
    fn oom_is_the_reason_only_when_it_ended_the_main_process() {
        let status = |code, signal, oom| ExitStatus {
            code,
            signal,
            oom,
            error: None,
        };
        assert_eq!(status(None, Some(libc::SIGKILL), true).reason(), "oom");
        // A helper process was OOM-killed earlier; the main one exited on its own.
        assert_eq!(status(Some(5), None, true).reason(), "exited");
        assert_eq!(status(None, Some(libc::SIGTERM), true).reason(), "signaled");
        assert_eq!(
            status(None, Some(libc::SIGKILL), false).reason(),
            "signaled"
        );
        assert_eq!(status(Some(0), None, false).reason(), "exited");
    }
}
