//! Starting a container's shim: a re-exec of the shoal binary in init mode, or — when the
//! caller asked for it and is single-threaded — a plain fork that runs the same init code
//! without loading the binary again.
//!
//! The fork is what `shoal run` uses: its CLI has no runtime threads when it starts the
//! container, so no lock can be held at the fork and running Rust in the child is safe
//! (the rule in ARCHITECTURE.md is about multi-threaded processes). It saves one start of
//! the binary per container (loading, relocating and faulting in ~280 pages, 2–3 ms here).
//! A multi-threaded caller, the daemon, always re-execs.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::OnceLock;

use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::error::{Error, IoContext};
use crate::protocol::INIT_SOCK_FD;
use crate::INIT_ARG;

/// How the shim was started; it is a child of this process either way.
#[derive(Debug)]
pub(crate) enum Shim {
    Spawned(tokio::process::Child),
    /// The pidfd becomes readable when the shim exits.
    Forked {
        pid: Pid,
        exited: AsyncFd<OwnedFd>,
    },
}

/// Start the shim with `theirs` (the init's end of the socketpair) as its fd 3; `ours` is
/// the runtime's end, which the shim must not hold.
pub(crate) fn start(
    init_binary: Option<&Path>,
    id: &str,
    capture: bool,
    fork_allowed: bool,
    theirs: OwnedFd,
    ours: BorrowedFd<'_>,
) -> Result<Shim, Error> {
    if fork_allowed && init_binary.is_none() && pidfd_supported() && single_threaded() {
        return forked(capture, theirs, ours);
    }
    spawned(init_binary, id, capture, theirs)
}

impl Shim {
    pub(crate) fn pid(&self) -> Option<i32> {
        match self {
            Shim::Spawned(child) => child.id().and_then(|p| i32::try_from(p).ok()),
            Shim::Forked { pid, .. } => Some(pid.as_raw()),
        }
    }

    pub(crate) fn kill(&mut self) {
        match self {
            Shim::Spawned(child) => {
                let _ = child.start_kill();
            }
            // Not yet reaped, so the pid cannot have been reused.
            Shim::Forked { pid, .. } => {
                let _ = kill(*pid, Signal::SIGKILL);
            }
        }
    }

    /// Wait for the shim to exit; its exit code, or `None` if it was killed or the wait failed.
    pub(crate) async fn wait(self) -> Option<i32> {
        match self {
            Shim::Spawned(mut child) => child.wait().await.ok().and_then(|s| s.code()),
            Shim::Forked { pid, exited } => {
                // Readable means exited, so the waitpid below returns at once.
                if exited.readable().await.is_err() {
                    return None;
                }
                loop {
                    match waitpid(pid, None) {
                        Ok(WaitStatus::Exited(_, code)) => return Some(code),
                        Err(nix::errno::Errno::EINTR) => {}
                        Ok(_) | Err(_) => return None,
                    }
                }
            }
        }
    }
}

fn spawned(
    init_binary: Option<&Path>,
    id: &str,
    capture: bool,
    theirs: OwnedFd,
) -> Result<Shim, Error> {
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
    Ok(Shim::Spawned(child))
}

fn forked(capture: bool, theirs: OwnedFd, ours: BorrowedFd<'_>) -> Result<Shim, Error> {
    // Opened before the fork: the child must not inherit a stdio it cannot replace.
    let null = if capture {
        Some(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .ctx(|| "opening /dev/null for the container init".into())?,
        )
    } else {
        None
    };
    // SAFETY: `single_threaded` held just before, and only this thread can start another,
    // so no lock is held in the child.
    match unsafe { fork() }.ctx(|| "forking the container init".into())? {
        ForkResult::Child => {
            let code = become_shim(
                theirs.as_raw_fd(),
                ours.as_raw_fd(),
                null.as_ref().map(AsRawFd::as_raw_fd),
            );
            // SAFETY: _exit skips atexit handlers and stdio buffers copied from the parent.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            let exited = pidfd_open(child)
                .and_then(|fd| {
                    // SAFETY: the AsyncFd owns the OwnedFd, which keeps that descriptor open
                    // and unchanged until the AsyncFd is dropped.
                    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                        .map_err(|e| e.into_parts().1)
                })
                .map_err(|e| {
                    let _ = kill(child, Signal::SIGKILL);
                    let _ = waitpid(child, None);
                    Error::io("watching the container init (pidfd)", e)
                })?;
            Ok(Shim::Forked { pid: child, exited })
        }
    }
}

/// In the forked child: give it what a fresh exec would (default signal handlers, the
/// socket as fd 3 and nothing else open, null stdio when output is captured), then run the
/// init. The environment stays: nothing in the init reads it.
fn become_shim(sock: i32, runtime_end: i32, null: Option<i32>) -> i32 {
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
        // Both move above the slots they are headed for first, so neither can overwrite
        // the other whatever numbers they had (stdio may have been closed).
        let sock = libc::fcntl(sock, libc::F_DUPFD, 10);
        if sock < 0 {
            return 1;
        }
        if let Some(null) = null {
            let null = libc::fcntl(null, libc::F_DUPFD, 10);
            if null < 0 || (0..3).any(|std| libc::dup2(null, std) < 0) {
                return 1;
            }
        }
        if libc::dup2(sock, INIT_SOCK_FD) < 0 {
            return 1;
        }
        libc::syscall(
            libc::SYS_close_range,
            INIT_SOCK_FD as u32 + 1,
            u32::MAX,
            0u32,
        );
    }
    crate::init::main()
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
