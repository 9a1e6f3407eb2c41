//! Starting a container's init: a re-exec of the shoal binary in init mode (the *shim*,
//! which forks the container's PID 1), or — when the caller asked for it and is
//! single-threaded — a plain fork that becomes the container's PID 1 directly.
//!
//! The fork is what `shoal run` uses: its CLI has no runtime threads when it starts the
//! container, so no lock can be held at the fork and running Rust in the child is safe
//! (the rule in ARCHITECTURE.md is about multi-threaded processes). It saves one start of
//! the binary per container (loading, relocating and faulting in ~280 pages, 2–3 ms here),
//! and, with no shim between, one more fork and one more process exit on the way out. The
//! CLI makes its next child the first process of a new pid namespace (`unshare`), forks,
//! and takes its own pid namespace back for later children (`setns`), so the fork is PID 1.
//! A multi-threaded caller, the daemon, always re-execs.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::OnceLock;

use nix::sched::{CloneFlags, CpuSet};
use nix::sys::signal::{
    kill, sigaction, sigprocmask, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal,
};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::container::ExitStatus;
use crate::error::{Error, IoContext};
use crate::protocol::INIT_SOCK_FD;
use crate::INIT_ARG;

/// The process the runtime started for a container; a child of this process either way.
#[derive(Debug)]
pub(crate) enum Init {
    /// The re-exec'd shim, which forks PID 1 and reports its pid.
    Shim(tokio::process::Child),
    /// The container's PID 1 itself, forked from this process; the pidfd becomes readable
    /// when it exits.
    Pid1 { pid: Pid, exited: AsyncFd<OwnedFd> },
}

/// Start the container's init with `theirs` (the init's end of the socketpair) as its fd 3;
/// `ours` is the runtime's end, which the init must not hold. Captured output needs the
/// shim (it copies the output to the log), so only inherited stdio is forked.
pub(crate) fn start(
    init_binary: Option<&Path>,
    id: &str,
    capture: bool,
    fork_allowed: bool,
    theirs: OwnedFd,
    ours: BorrowedFd<'_>,
) -> Result<Init, Error> {
    if fork_allowed && !capture && init_binary.is_none() && pidfd_supported() && single_threaded() {
        return forked(theirs, ours);
    }
    spawned(init_binary, id, capture, theirs)
}

impl Init {
    pub(crate) fn pid(&self) -> Option<i32> {
        match self {
            Init::Shim(child) => child.id().and_then(|p| i32::try_from(p).ok()),
            Init::Pid1 { pid, .. } => Some(pid.as_raw()),
        }
    }

    pub(crate) fn is_pid1(&self) -> bool {
        matches!(self, Init::Pid1 { .. })
    }

    pub(crate) fn kill(&mut self) {
        match self {
            Init::Shim(child) => {
                let _ = child.start_kill();
            }
            // Not yet reaped, so the pid cannot have been reused.
            Init::Pid1 { pid, .. } => {
                let _ = kill(*pid, Signal::SIGKILL);
            }
        }
    }

    /// The shim's end, once it comes: cancel-safe, and [`Init::wait`] still returns it
    /// after. A forked PID 1 never ends here: its end is the end of the socket.
    pub(crate) async fn shim_ended(&mut self) -> ExitStatus {
        match self {
            Init::Shim(child) => shim_status(child.wait().await),
            Init::Pid1 { .. } => std::future::pending().await,
        }
    }

    /// Wait for the process to exit: its code or signal, neither if the wait failed.
    pub(crate) async fn wait(self) -> ExitStatus {
        match self {
            Init::Shim(mut child) => shim_status(child.wait().await),
            Init::Pid1 { pid, exited } => {
                // Readable means exited, so the waitpid below returns at once.
                if exited.readable().await.is_err() {
                    return ExitStatus::default();
                }
                loop {
                    match waitpid(pid, None) {
                        Ok(WaitStatus::Exited(_, code)) => {
                            return ExitStatus {
                                code: Some(code),
                                ..ExitStatus::default()
                            }
                        }
                        Ok(WaitStatus::Signaled(_, sig, _)) => {
                            return ExitStatus {
                                signal: Some(sig as i32),
                                ..ExitStatus::default()
                            }
                        }
                        Err(nix::errno::Errno::EINTR) => {}
                        Ok(_) | Err(_) => return ExitStatus::default(),
                    }
                }
            }
        }
    }
}

fn shim_status(waited: std::io::Result<std::process::ExitStatus>) -> ExitStatus {
    waited.map_or_else(
        |_| ExitStatus::default(),
        |s| ExitStatus {
            code: s.code(),
            signal: std::os::unix::process::ExitStatusExt::signal(&s),
            ..ExitStatus::default()
        },
    )
}

fn spawned(
    init_binary: Option<&Path>,
    id: &str,
    capture: bool,
    theirs: OwnedFd,
) -> Result<Init, Error> {
    let mut cmd = std::process::Command::new(init_binary.unwrap_or(Path::new("/proc/self/exe")));
    cmd.arg(INIT_ARG).arg(id).env_clear();
    if capture {
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
    }
    let fd = theirs.as_raw_fd();
    // SAFETY: only dup2/fcntl run between fork and exec; both are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if fd == INIT_SOCK_FD {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, INIT_SOCK_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = tokio::process::Command::from(cmd)
        .spawn()
        .ctx(|| "starting the container init (re-exec of the shoal binary)".into())?;
    Ok(Init::Shim(child))
}

fn forked(theirs: OwnedFd, ours: BorrowedFd<'_>) -> Result<Init, Error> {
    let own_pid_ns = std::fs::File::open("/proc/self/ns/pid")
        .ctx(|| "opening this process's pid namespace".into())?;
    // PID 1 starts with the signals it forwards blocked (see `init::held_signals`); this
    // process takes its own mask back right after the fork.
    let mut mask = SigSet::empty();
    sigprocmask(
        SigmaskHow::SIG_BLOCK,
        Some(&crate::init::held_signals()),
        Some(&mut mask),
    )
    .ctx(|| "blocking signals for the container init".into())?;
    let forked = nix::sched::unshare(CloneFlags::CLONE_NEWPID)
        .ctx(|| "unshare pid namespace".into())
        .and_then(|()| {
            // SAFETY: `single_threaded` held just before, and only this thread can start
            // another, so no lock is held in the child.
            unsafe { fork() }.ctx(|| "forking the container init".into())
        });
    let child = match forked {
        Ok(ForkResult::Child) => {
            let code = become_pid1(theirs.as_raw_fd(), ours.as_raw_fd());
            // SAFETY: _exit skips atexit handlers and stdio buffers copied from the parent.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => {
            step_aside(child);
            Ok(child)
        }
        Err(e) => Err(e),
    };
    // Later children (and threads, which the kernel refuses while the two differ) belong
    // to this process's own pid namespace again.
    let restored = nix::sched::setns(&own_pid_ns, CloneFlags::CLONE_NEWPID)
        .ctx(|| "returning to this process's pid namespace".into());
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&mask), None);
    let child = child?;
    let watched = restored.and_then(|()| {
        pidfd_open(child)
            .and_then(|fd| {
                // SAFETY: the AsyncFd owns the OwnedFd, which keeps that descriptor open
                // and unchanged until the AsyncFd is dropped.
                unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                    .map_err(|e| e.into_parts().1)
            })
            .map_err(|e| Error::io("watching the container init (pidfd)", e))
    });
    match watched {
        Ok(exited) => Ok(Init::Pid1 { pid: child, exited }),
        Err(e) => {
            let _ = kill(child, Signal::SIGKILL);
            let _ = waitpid(child, None);
            Err(e)
        }
    }
}

/// Moves this process off the CPU the kernel queued the new PID 1 on, when that is this
/// process's own and its set allows another. The kernel mostly queues a forked child on its
/// parent's CPU, where PID 1 would wait while this process makes the container's cgroup
/// (~0.5 ms here), though another core is idle: with the two apart, PID 1 makes its
/// namespaces meanwhile. This process moves, not PID 1: a set given to PID 1 would be its
/// workload's too, and one set explicitly keeps a process off CPUs its cpuset gains later.
/// This process starts no other child after.
fn step_aside(child: Pid) {
    let Ok(here) = nix::sched::sched_getcpu() else {
        return;
    };
    if cpu_of(child) != Some(here) {
        return;
    }
    let Ok(mut elsewhere) = nix::sched::sched_getaffinity(Pid::from_raw(0)) else {
        return;
    };
    if elsewhere.unset(here).is_err() {
        return;
    }
    if (0..CpuSet::count()).any(|cpu| elsewhere.is_set(cpu).unwrap_or(false)) {
        let _ = nix::sched::sched_setaffinity(Pid::from_raw(0), &elsewhere);
    }
}

/// The CPU a process is queued or running on (`processor`, the 39th field of its stat; the
/// name before the fields may hold spaces and parentheses, so they are read after its end).
fn cpu_of(pid: Pid) -> Option<usize> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(36)?
        .parse()
        .ok()
}

/// In the forked child: give it what a fresh exec would (default signal handlers, the
/// socket as fd 3 and nothing else open), then run PID 1. The environment stays: nothing
/// in the init reads it.
fn become_pid1(sock: i32, runtime_end: i32) -> i32 {
    let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: restoring SIG_DFL installs no handler code.
            let _ = unsafe { sigaction(sig, &dfl) };
        }
    }
    // SAFETY: plain descriptor calls on this single-threaded process's own table.
    unsafe {
        // Whatever its number: a copy kept here would hide the runtime's exit from the init.
        libc::close(runtime_end);
        if sock != INIT_SOCK_FD && libc::dup2(sock, INIT_SOCK_FD) < 0 {
            return 1;
        }
        libc::syscall(
            libc::SYS_close_range,
            INIT_SOCK_FD as u32 + 1,
            u32::MAX,
            0u32,
        );
    }
    crate::init::forked_pid1()
}

fn pidfd_open(pid: Pid) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(std::io::Error::other)?;
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// pidfd_open needs Linux 5.3; without it the shim is re-exec'd as before.
fn pidfd_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| pidfd_open(nix::unistd::getpid()).is_ok())
}

/// One thread in this process right now (`Threads:` in /proc/self/status).
fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .is_some_and(|n| n.trim() == "1")
    })
}
