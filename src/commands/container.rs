//! `shoal run`, `shoal ps`, `shoal logs`: the container runtime from the command line.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use shoal_runtime::{
    previous_log, ContainerInfo, ContainerSpec, Mount, Network, RootFs, Runtime, RuntimeConfig,
    RuntimeSettings, Stdio,
};
use tokio::signal::unix::{signal, SignalKind};

/// Run one container in the foreground like `docker run --rm`.
#[derive(clap::Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("root").required(true).args(["image", "rootfs", "host"])))]
pub struct RunArgs {
    /// OCI image layout (directory or tar) or `docker save` tar.
    pub image: Option<PathBuf>,
    /// Use this unpacked root filesystem directory instead of an image.
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// No image: the host's /usr /bin /lib* read-only, private /tmp /proc /dev.
    #[arg(long)]
    pub host: bool,
    /// Container id (also the hostname, but with --net host); generated when absent.
    #[arg(long, value_parser = name_arg)]
    pub name: Option<String>,
    /// Memory limit, e.g. 64Mi; the workload is OOM-killed above it.
    #[arg(long, value_parser = memory_arg)]
    pub memory: Option<u64>,
    /// CPU quota in cores, e.g. 0.5.
    #[arg(long, value_parser = cpus_arg)]
    pub cpus: Option<f64>,
    /// Maximum number of processes and threads (default 1024).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=shoal_config::MAX_PIDS))]
    pub pids: Option<u64>,
    /// Network: none (own namespace, only lo), host, or isolated (veth + address).
    #[arg(long, default_value = "none", value_parser = net_arg)]
    pub net: Network,
    /// Environment variable KEY=VALUE (or KEY to copy it from this environment, when set
    /// there).
    #[arg(long, short = 'e', value_name = "K=V", value_parser = env_arg)]
    pub env: Vec<EnvArg>,
    /// type=bind,source=S,target=T[,readonly] or type=tmpfs,target=T[,size=N][,mode=1777][,readonly].
    #[arg(long, value_parser = mount_arg)]
    pub mount: Vec<Mount>,
    /// A tmpfs at PATH[:OPTIONS], Docker's: size=64Mi, mode=1777, ro, noexec (always nosuid,nodev).
    #[arg(long, value_parser = tmpfs_arg)]
    pub tmpfs: Vec<Mount>,
    /// Mount the root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Hostname (default: the container id; with --net host the host's).
    #[arg(long, value_parser = hostname_arg)]
    pub hostname: Option<String>,
    /// Working directory inside the container (an absolute path).
    #[arg(long, short = 'w', value_parser = workdir_arg)]
    pub workdir: Option<String>,
    /// UID[:GID] or a user name from the container's /etc/passwd.
    #[arg(long, short = 'u', value_parser = user_arg)]
    pub user: Option<String>,
    /// Port the workload listens on (passed as PORT; isolated mode's address port).
    #[arg(long)]
    pub port: Option<u16>,
    /// Command and arguments (default: the image's Entrypoint/Cmd).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// List the containers the runtime knows.
#[derive(clap::Args, Debug, Clone)]
pub struct PsArgs {}

/// Show a replica's captured stdout/stderr.
#[derive(clap::Args, Debug, Clone)]
pub struct LogsArgs {
    /// Container id (or a unique prefix of one).
    pub replica: String,
    /// Keep printing new output until the container is gone.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
}

/// As in the config and with Docker: a relative one would have nothing to be relative to.
fn workdir_arg(s: &str) -> Result<String, String> {
    if s.starts_with('/') {
        Ok(s.to_string())
    } else {
        Err(format!("`{s}` must be an absolute path"))
    }
}

/// What sethostname(2) takes: 1 to 64 bytes, no NUL.
fn hostname_arg(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 64 || s.contains('\0') {
        return Err(format!(
            "`{s}` is not a hostname: give 1 to 64 characters (the kernel's limit)"
        ));
    }
    Ok(s.to_string())
}

fn name_arg(s: &str) -> Result<String, String> {
    shoal_runtime::validate_id(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn size_arg(s: &str) -> Result<u64, String> {
    shoal_runtime::parse_size(s).map_err(|e| e.to_string())
}

/// A memory limit, at least what a replica's config may have: below it even a static
/// binary fails to start, and the run would look like the workload's OOM.
fn memory_arg(s: &str) -> Result<u64, String> {
    let bytes = size_arg(s)?;
    if bytes < shoal_config::MIN_MEMORY {
        return Err(format!(
            "{bytes} bytes is below the minimum of {}Mi; write e.g. 64Mi",
            shoal_config::MIN_MEMORY >> 20
        ));
    }
    Ok(bytes)
}
/// A CPU quota of at most this host's cores, as `docker run --cpus` checks: more is no
/// limit at all, and most likely a typo.
fn cpus_arg(s: &str) -> Result<f64, String> {
    let cpus = shoal_runtime::parse_cpus(s).map_err(|e| e.to_string())?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    if cpus > cores as f64 {
        return Err(format!(
            "{cpus} cpus is more than this host's {cores} cores; use 0.01 to {cores}"
        ));
    }
    Ok(cpus)
}
fn net_arg(s: &str) -> Result<Network, String> {
    s.parse().map_err(|e: shoal_runtime::Error| e.to_string())
}
fn mount_arg(s: &str) -> Result<Mount, String> {
    shoal_runtime::parse_mount(s).map_err(|e| e.to_string())
}
fn tmpfs_arg(s: &str) -> Result<Mount, String> {
    shoal_runtime::parse_tmpfs(s).map_err(|e| e.to_string())
}
fn user_arg(s: &str) -> Result<String, String> {
    shoal_runtime::parse_user(s).map_err(|e| e.to_string())
}
/// One `--env`: its value is None for a bare `KEY` that this environment does not set,
/// which the container then does not get either (as with `docker run -e KEY`).
#[derive(Debug, Clone, PartialEq)]
pub struct EnvArg(String, Option<String>);

fn env_arg(s: &str) -> Result<EnvArg, String> {
    match s.split_once('=') {
        Some(("", _)) => Err(format!("invalid --env {s:?}: empty name")),
        Some((k, v)) => Ok(EnvArg(k.to_string(), Some(v.to_string()))),
        None => Ok(EnvArg(s.to_string(), std::env::var(s).ok())),
    }
}

/// `64Mi`-style rendering for messages.
fn fmt_size(bytes: u64) -> String {
    for (unit, size) in [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn spec_from(args: RunArgs) -> ContainerSpec {
    let rootfs = match (args.image, args.rootfs) {
        (Some(image), _) => RootFs::Image(image),
        (None, Some(dir)) => RootFs::Dir(dir),
        (None, None) => RootFs::Host,
    };
    let mut spec = ContainerSpec::new(rootfs, args.command);
    spec.name = args.name;
    spec.env = args
        .env
        .into_iter()
        .filter_map(|EnvArg(name, value)| Some((name, value?)))
        .collect();
    spec.workdir = args.workdir;
    spec.user = args.user;
    spec.port = args.port;
    spec.network = args.net;
    spec.resources.memory = args.memory;
    spec.resources.cpus = args.cpus;
    if args.pids.is_some() {
        spec.resources.pids = args.pids;
    }
    spec.mounts = args.mount.into_iter().chain(args.tmpfs).collect();
    spec.read_only = args.read_only;
    spec.hostname = args.hostname;
    spec.stdio = Stdio::Inherit;
    spec
}

/// The signals `shoal run` passes on to its container: the ones users and supervisors send
/// to stop or poke a process, as `docker run` forwards them (the set the container's PID 1
/// passes on). Job control (SIGTSTP and the like) stays the CLI's.
const FORWARDED: [Signal; 8] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGWINCH,
];

fn forwarded() -> SigSet {
    FORWARDED.iter().copied().collect()
}

/// Called first thing in `main`: holds the signals `shoal run` forwards until its handlers
/// exist ([`release_held_signals`]), so that one sent in its first milliseconds reaches the
/// container too instead of ending the CLI with no status. Every other command releases
/// them as soon as the command line is read.
pub fn hold_forwarded_signals() {
    // Cannot fail for SIG_BLOCK and a valid set; if it did, an early signal would only end
    // the CLI as it did before.
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&forwarded()), None);
}

/// Lets the held signals in: pending ones now reach the handlers, if installed.
pub fn release_held_signals() {
    let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&forwarded()), None);
}

/// `shoal run`: returns the container's exit status (128+N when killed by signal N, so 137
/// when the OOM killer took it; 127 when the command does not exist).
pub fn run(args: RunArgs, rt: &RuntimeSettings) -> anyhow::Result<i32> {
    // A usage error (exit 2, as clap's own): clap requires one of IMAGE, --rootfs and
    // --host, but only an image can bring its own command.
    if args.image.is_none() && args.command.is_empty() {
        eprintln!("shoal run: give the command to run after `--`: only an image can bring its own");
        return Ok(crate::EXIT_USAGE);
    }
    let memory = args.memory;
    let spec = spec_from(args);
    // This CLI has no other threads when it starts the container, so the init can be a
    // fork of it rather than a second start of the binary.
    let runtime = Runtime::new(RuntimeConfig {
        fork_init: true,
        ..RuntimeConfig::from(rt)
    })?;
    current_thread()?.block_on(async move {
        // Installed before the container exists, so an early Ctrl-C cannot orphan it: the
        // signals go to the container instead (see `FORWARDED`). Held since `main` began;
        // one that came meanwhile is delivered here and forwarded once the container runs.
        let mut signals = Vec::new();
        for sig in FORWARDED {
            let raw = sig as i32;
            let handler = signal(SignalKind::from_raw(raw)).context("installing signal handlers")?;
            signals.push((raw, handler));
        }
        release_held_signals();
        let container = match runtime.create(spec.clone()).await {
            // The name may be a leftover of a `shoal run` that was killed: removed (as
            // `shoal ps` would) when its owner is gone, here or by another process that
            // got to it first, and then the name is free. A live container's name stays
            // taken, and the second create says so.
            Err(shoal_runtime::Error::NameInUse(name)) => {
                runtime.cleanup_stale().await;
                runtime.wait_released(&name).await;
                runtime.create(spec).await?
            }
            created => created?,
        };
        if let Err(e) = container.start().await {
            let _ = container.delete().await;
            return Err(e.into());
        }
        let status = loop {
            let forwarded = async {
                let futs = signals.iter_mut().map(|(n, s)| {
                    let n = *n;
                    Box::pin(async move {
                        s.recv().await;
                        n
                    })
                });
                futures_util::future::select_all(futs).await.0
            };
            tokio::select! {
                status = container.wait() => break status,
                sig = forwarded => {
                    tracing::debug!(sig, "forwarding signal to the container");
                    let _ = container.signal(sig);
                }
            }
        };
        if let Err(e) = container.delete().await {
            eprintln!("shoal: removing container {}: {e}", container.id());
        }
        // As with Docker, the status is the main process's own (137 when the OOM killer
        // took it); an OOM kill of another process of the container is reported beside it.
        if status.oom {
            let limit = memory.map_or_else(|| "unknown".to_string(), fmt_size);
            eprintln!(
                "shoal: a process of the container was killed by the OOM killer (memory limit {limit})"
            );
        }
        if let Some(err) = &status.error {
            eprintln!("shoal: {err}");
        }
        Ok(status.code())
    })
}

fn uptime(info: &ContainerInfo) -> String {
    let Some(start) = info.started_at else {
        return "-".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let s = now.saturating_sub(start);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, s % 3600 / 60),
    }
}

/// `shoal ps`: removes leftovers of dead owners first, then lists.
pub fn ps(_args: PsArgs, rt: &RuntimeSettings, json: bool) -> anyhow::Result<i32> {
    let runtime = Runtime::new(RuntimeConfig::from(rt))?;
    current_thread()?.block_on(runtime.cleanup_stale());
    let list = runtime.list();
    let mut out = std::io::stdout().lock();
    if json {
        let containers: Vec<serde_json::Value> = list
            .iter()
            .map(|c| {
                serde_json::json!({
                    "id": c.id,
                    "service": c.service,
                    "pid": c.pid,
                    "state": c.state.to_string(),
                    "started_at": c.started_at.map(shoal_runtime::rfc3339),
                    "cpu_seconds": c.cpu_seconds().unwrap_or(0.0),
                    "memory_bytes": c.memory_bytes().unwrap_or(0),
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::json!({ "containers": containers }))?;
    } else {
        writeln!(
            out,
            "{:<20} {:<12} {:>8} {:<8} {:>8} {:>8} {:>10}",
            "ID", "SERVICE", "PID", "STATE", "UPTIME", "CPU", "MEMORY"
        )?;
        for c in &list {
            writeln!(
                out,
                "{:<20} {:<12} {:>8} {:<8} {:>8} {:>7.2}s {:>10}",
                c.id,
                c.service.as_deref().unwrap_or("-"),
                c.pid.map_or("-".to_string(), |p| p.to_string()),
                c.state.to_string(),
                uptime(c),
                c.cpu_seconds().unwrap_or(0.0),
                fmt_size(c.memory_bytes().unwrap_or(0)),
            )?;
        }
    }
    Ok(0)
}

/// The replica or container named by `name`, its id or a unique prefix of it: one that runs
/// now, or one whose earlier run's output is kept while it restarts.
fn find_replica(rt: &RuntimeSettings, name: &str) -> anyhow::Result<String> {
    let running = std::fs::read_dir(rt.state_dir.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned());
    let mut ids: Vec<String> = running.chain(previous_log::ids(&rt.state_dir)).collect();
    ids.sort();
    ids.dedup();
    if ids.iter().any(|id| id == name) {
        return Ok(name.to_string());
    }
    ids.retain(|id| id.starts_with(name));
    match ids.as_slice() {
        [one] => Ok(one.clone()),
        [] => anyhow::bail!("no such container: {name} (see `shoal ps`)"),
        _ => anyhow::bail!(
            "{name} matches {} containers; give more of the id",
            ids.len()
        ),
    }
}

fn last_lines(data: &[u8], n: usize) -> &[u8] {
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let start = body
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(n.saturating_sub(1))
        .map_or(0, |(i, _)| i + 1);
    if n == 0 {
        return &data[data.len()..];
    }
    &data[start..]
}

/// `shoal logs`: the captured output (the previous run's, then this run's rotated part and
/// the rest), optionally following it.
pub fn logs(args: LogsArgs, rt: &RuntimeSettings) -> anyhow::Result<i32> {
    let id = find_replica(rt, &args.replica)?;
    let dir = rt.state_dir.join("containers").join(&id);
    let log = dir.join("output.log");
    // The previous run's output (kept while a replica restarts), then this run's.
    let mut data = previous_log::find(&rt.state_dir, &id)
        .and_then(|kept| std::fs::read(kept).ok())
        .unwrap_or_default();
    // A run that ended mid-line does not run into the next one's first line.
    if data.last().is_some_and(|b| *b != b'\n') {
        data.push(b'\n');
    }
    data.extend(std::fs::read(dir.join("output.log.1")).unwrap_or_default());
    let mut current = std::fs::File::open(&log).ok();
    if let Some(f) = &mut current {
        f.read_to_end(&mut data)
            .with_context(|| format!("reading {}", log.display()))?;
    }
    // A container of no service is a `shoal run`'s, whose output goes to that command's
    // own terminal; a replica's is captured.
    if current.is_none() && data.is_empty() && of_no_service(&dir) {
        eprintln!(
            "shoal: the output of {id} is not captured: `shoal run` passes it to its own terminal"
        );
        return Ok(crate::EXIT_FAILURE);
    }
    let shown = match args.tail {
        Some(n) => last_lines(&data, n),
        None => &data,
    };
    let mut out = std::io::stdout().lock();
    out.write_all(shown)?;
    out.flush()?;
    if args.follow {
        follow(&dir, &log, current, &mut out)?;
    }
    Ok(0)
}

/// Whether the container in `dir` belongs to no service, by its state file.
fn of_no_service(dir: &Path) -> bool {
    std::fs::read(dir.join("state.json"))
        .ok()
        .and_then(|s| serde_json::from_slice::<serde_json::Value>(&s).ok())
        .is_some_and(|state| state["service"].is_null())
}

/// Prints what is added to the run's output until its container is gone. The file read is
/// kept open: when the run ends, its output is moved away (or deleted) with the container,
/// and what it wrote last is still read from the open file then. A rotation, or a new run,
/// puts a new file at `log`, taken up from its start once the old one is read to its end.
fn follow(
    dir: &Path,
    log: &Path,
    mut current: Option<std::fs::File>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let identity = |m: &std::fs::Metadata| (m.dev(), m.ino());
    loop {
        // Looked at first: once the container is gone, nothing more is written, so one
        // last read below gets the rest.
        let running = dir.exists();
        if let Some(f) = &mut current {
            std::io::copy(f, out).with_context(|| format!("reading {}", log.display()))?;
            out.flush()?;
        }
        if !running {
            return Ok(());
        }
        let reading = current.as_ref().and_then(|f| f.metadata().ok());
        if let Ok(at_path) = std::fs::metadata(log) {
            if reading.is_none_or(|r| identity(&r) != identity(&at_path)) {
                // What reached the old file before its writer moved on is read first.
                if let Some(f) = &mut current {
                    std::io::copy(f, out)?;
                }
                current = std::fs::File::open(log).ok();
                continue;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_lines() {
        assert_eq!(last_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(last_lines(b"a\nb\nc", 1), b"c");
        assert_eq!(last_lines(b"a\n", 5), b"a\n");
        assert_eq!(last_lines(b"a\nb\n", 0), b"");
    }

    #[test]
    fn sizes_and_env() {
        assert_eq!(fmt_size(64 << 20), "64Mi");
        assert_eq!(fmt_size(1000), "1000");
        assert_eq!(
            env_arg("A=b=c").unwrap(),
            EnvArg("A".into(), Some("b=c".into()))
        );
        assert!(env_arg("=x").is_err());
        // A bare name copies this environment's value, or is left out when unset here.
        assert_eq!(
            env_arg("PATH").unwrap(),
            EnvArg("PATH".into(), std::env::var("PATH").ok())
        );
        assert_eq!(
            env_arg("SHOAL_TEST_SURELY_UNSET").unwrap(),
            EnvArg("SHOAL_TEST_SURELY_UNSET".into(), None)
        );
    }
}
