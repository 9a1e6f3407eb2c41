//! The container's PID 1: finish the setup inside the new namespaces, start the workload,
//! then reap zombies and forward signals until it exits.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::sys::signal::{
    kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal,
};
use nix::sys::socket::{AddressFamily, SockFlag, SockType};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::{read_line, rootfs, security};
use crate::protocol::{self, InitConfig, ToInit, ToRuntime};
use crate::spec::Network;

/// Signals PID 1 passes on to the workload: every one a `stop_signal` or `shoal run` may
/// send it.
const FORWARDED: [Signal; 11] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
    Signal::SIGALRM,
    Signal::SIGABRT,
    Signal::SIGPWR,
];

/// The signals PID 1 holds back from its first instruction: as a pid namespace's init it
/// silently drops signals it has no handler for, while blocked ones stay pending, so a stop
/// requested during setup is forwarded to the workload as soon as it exists. The shim (or a
/// runtime forking PID 1 itself) blocks them before forking PID 1 (the mask is inherited),
/// so no window is left in which a signal sent right after the runtime learns PID 1's pid
/// is lost.
pub(crate) fn held_signals() -> SigSet {
    let mut mask = SigSet::empty();
    for s in FORWARDED {
        mask.add(s);
    }
    mask.add(Signal::SIGCHLD);
    mask
}

/// A setup failure and the exit status to report it with.
struct Failure {
    message: String,
    code: i32,
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Failure {
            message: message.to_string(),
            code: 1,
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure { message, code: 1 }
    }
}

/// `pending` holds what the runtime sent past the config (see `read_line`).
pub(super) fn run(
    cfg: &InitConfig,
    sock: &mut UnixStream,
    mut pending: Vec<u8>,
    out: Option<OwnedFd>,
) -> i32 {
    match setup_and_run(cfg, sock, &mut pending, out) {
        Ok(code) => code,
        Err(f) => {
            let _ = protocol::send(
                sock,
                &ToRuntime::Error {
                    message: f.message,
                    exit_code: f.code,
                },
            );
            f.code
        }
    }
}

/// Brings `lo` up in the container's own network namespace, as Docker's and runc's
/// networkless containers have it: a workload may still talk to itself on 127.0.0.1 (the
/// kernel gives `lo` its addresses as it comes up). Isolated containers get it from the
/// runtime with the rest of their network.
fn loopback_up() -> Result<(), String> {
    let sock = nix::sys::socket::socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket for bringing lo up: {e}"))?;
    // SAFETY: an all-zero ifreq is valid (an empty name and no flags).
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, from) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *to = *from as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write an ifreq, which `request` is, for
    // the whole of each call; its flags member is the one these requests use.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) < 0 {
            return Err(format!(
                "reading lo's flags: {}",
                std::io::Error::last_os_error()
            ));
        }
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &request) < 0 {
            return Err(format!(
                "bringing lo up: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

fn setup_and_run(
    cfg: &InitConfig,
    sock: &mut UnixStream,
    pending: &mut Vec<u8>,
    out: Option<OwnedFd>,
) -> Result<i32, Failure> {
    // Blocked since before the fork that made this process (see `held_signals`).
    let mask = held_signals();
    let line =
        read_line(sock, pending)?.ok_or("the runtime went away before starting the container")?;
    let ToInit::Go { address } =
        serde_json::from_str(&line).map_err(|e| format!("bad message from the runtime: {e}"))?;
    // The runtime makes the cgroup while this process starts, and sends the go once it is
    // there. Joined before anything of the container runs, so nothing escapes its limits;
    // the runtime does not wait for it (a failure arrives as this container's setup error).
    cfg.cgroup
        .join_self()
        .map_err(|e| format!("joining the container's cgroup: {e}"))?;
    // Not dumpable from here on, as runc makes its init: the container's root (without
    // CAP_SYS_PTRACE) then cannot open this host binary's /proc/1/environ (the environment
    // of whoever started shoal), /proc/1/exe, /proc/1/maps or /proc/1/mem. Only after the
    // go: until then the runtime opens /proc/<pid>/ns/net to set up the network, which an
    // undumpable process refuses to a root without CAP_SYS_PTRACE. The workload's exec
    // makes it dumpable again.
    nix::sys::prctl::set_dumpable(false)
        .map_err(|e| format!("making the container's init undumpable: {e}"))?;

    // A cgroup namespace rooted at the cgroup joined above hides the host's hierarchy from
    // the workload.
    nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
        .map_err(|e| format!("unshare cgroup namespace: {e}"))?;
    nix::unistd::sethostname(&cfg.hostname).map_err(|e| format!("sethostname: {e}"))?;
    if cfg.network == Network::None {
        loopback_up()?;
    }
    // The workload, not its init, is what the OOM killer should pick.
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");

    rootfs::setup(cfg, address)?;

    let user = security::resolve_user(cfg.user.as_deref())?;
    let mut env = cfg.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home));
    }
    let program = find_program(&cfg.args[0], &cfg.cwd, &env)?;
    let argv = to_cstrings(&cfg.args)?;
    let envp = to_cstrings(&env)?;
    let path = CString::new(program.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("program path {program:?} contains a NUL byte"))?;
    let stdin_null = match out {
        Some(_) => {
            Some(std::fs::File::open("/dev/null").map_err(|e| format!("opening /dev/null: {e}"))?)
        }
        None => None,
    };

    security::restrict()?;

    // SAFETY: PID 1 is single-threaded (forked from the single-threaded shim).
    let child = match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            let f = exec_workload(cfg, &user, &path, &argv, &envp, out, stdin_null, &mask);
            let _ = protocol::send(
                sock,
                &ToRuntime::Error {
                    message: f.message,
                    exit_code: f.code,
                },
            );
            std::process::exit(f.code);
        }
        ForkResult::Parent { child } => child,
    };
    drop(out);
    Ok(supervise(child, sock, &mask))
}

/// Runs in the workload's process; only returns on failure.
#[allow(clippy::too_many_arguments)]
fn exec_workload(
    cfg: &InitConfig,
    user: &security::User,
    path: &CString,
    argv: &[CString],
    envp: &[CString],
    out: Option<OwnedFd>,
    stdin_null: Option<std::fs::File>,
    mask: &SigSet,
) -> Failure {
    let _ = std::fs::write("/proc/self/oom_score_adj", "0");
    // Dispositions the shim ignored survive exec; the workload gets the defaults back.
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
            // SAFETY: restoring SIG_DFL installs no handler code.
            let _ = unsafe { sigaction(sig, &dfl) };
        }
    }
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(mask), None);
    if let (Some(out), Some(null)) = (out, stdin_null) {
        // SAFETY: dup2 onto the standard descriptors of this single-threaded process.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(out.as_raw_fd(), 1);
            libc::dup2(out.as_raw_fd(), 2);
        }
    }
    if let Err(message) = security::switch_user(user) {
        return Failure { message, code: 1 };
    }
    if let Err(e) = nix::unistd::chdir(cfg.cwd.as_str()) {
        return Failure {
            message: format!("working directory {}: {e}", cfg.cwd),
            code: 1,
        };
    }
    // Nothing the runtime or the shim had open may leak into the workload; close-on-exec
    // keeps the socket usable for reporting an exec failure below.
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes descriptor flags.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
    let err = nix::unistd::execve(path, argv, envp).unwrap_err();
    let code = if err == nix::errno::Errno::ENOENT {
        127
    } else {
        126
    };
    Failure {
        message: format!("cannot execute {}: {err}", cfg.args[0]),
        code,
    }
}

/// Reap every child; forward signals to the workload; exit with its status.
fn supervise(child: Pid, sock: &mut UnixStream, mask: &SigSet) -> i32 {
    loop {
        let sig = match mask.wait() {
            Ok(s) => s,
            Err(_) => continue,
        };
        if sig != Signal::SIGCHLD {
            let _ = kill(child, sig);
            continue;
        }
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => {
                    let _ = protocol::send(
                        sock,
                        &ToRuntime::Exited {
                            code: Some(code),
                            signal: None,
                        },
                    );
                    return code;
                }
                Ok(WaitStatus::Signaled(pid, s, _)) if pid == child => {
                    let _ = protocol::send(
                        sock,
                        &ToRuntime::Exited {
                            code: None,
                            signal: Some(s as i32),
                        },
                    );
                    return 128 + s as i32;
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

fn to_cstrings(items: &[String]) -> Result<Vec<CString>, String> {
    items
        .iter()
        .map(|s| CString::new(s.as_bytes()).map_err(|_| format!("{s:?} contains a NUL byte")))
        .collect()
}

/// Resolve the program like execvp would from the working directory `cwd`, so a missing
/// command is reported with exit 127 and a clear message instead of a bare ENOENT.
fn find_program(name: &str, cwd: &str, env: &[String]) -> Result<PathBuf, Failure> {
    let not_found = || Failure {
        message: format!("command not found: {name}"),
        code: 127,
    };
    let check = |p: &Path| -> Option<Result<PathBuf, Failure>> {
        let meta = std::fs::metadata(p).ok()?;
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            Some(Ok(p.to_path_buf()))
        } else {
            Some(Err(Failure {
                message: format!("{} is not an executable file", p.display()),
                code: 126,
            }))
        }
    };
    if name.contains('/') {
        // A relative path (`./run.sh`) starts at the working directory, where the
        // workload will run; an absolute one is kept as it is.
        return check(&Path::new(cwd).join(name)).unwrap_or_else(|| Err(not_found()));
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        if let Some(Ok(p)) = check(&Path::new(dir).join(name)) {
            return Ok(p);
        }
    }
    Err(not_found())
}
