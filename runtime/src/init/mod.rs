//! The container side: what runs after the runtime re-execs the shoal binary with
//! [`crate::INIT_ARG`], or forks PID 1 itself ([`forked_pid1`]).
//!
//! Two processes, both single-threaded (so forking and running Rust after fork is safe):
//!
//! * the **shim** (this process): reads the [`InitConfig`], unshares the namespaces, forks the
//!   container's PID 1, reports its host pid, copies captured output to the log file, waits
//!   for PID 1 and reports how it ended if PID 1 could not (killed by a signal). When the
//!   runtime forks PID 1 itself there is no shim: PID 1 enters the other namespaces, and the
//!   runtime has the pid from the fork and how PID 1 ended from `waitpid`;
//! * **PID 1** ([`pid1`]): waits for the runtime's go (cgroup made, network ready), joins
//!   the container's cgroup, builds the root filesystem and pivots into it, drops privileges, forks and execs
//!   the workload, then reaps zombies and forwards signals until the workload exits.

mod pid1;
mod rootfs;
mod security;

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::sched::CloneFlags;
use nix::sys::signal::{signal, SigHandler, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

use crate::protocol::{self, InitConfig, ToRuntime, INIT_SOCK_FD};
use crate::spec::{Network, Stdio};

/// The shim's and PID 1's process name (`comm`), whichever way they were started: how
/// `ps` shows them and how stale cleanup recognises a shim.
pub const PROCESS_NAME: &std::ffi::CStr = c"shoal-init";

/// Entry point of the hidden init mode; returns the process exit status.
///
/// Call it first thing in `main` when `argv[1]` is [`crate::INIT_ARG`], before any thread
/// or async runtime exists.
pub fn main() -> i32 {
    run_as(shim)
}

/// Entry point of a runtime's forked child that is already the first process of the
/// container's pid namespace (see `launch`): PID 1 without a shim.
pub(crate) fn forked_pid1() -> i32 {
    run_as(|sock| {
        let mut pending = Vec::new();
        let cfg = read_config(sock, &mut pending)?;
        let _ = nix::unistd::setsid();
        nix::sched::unshare(namespaces(&cfg)).map_err(|e| format!("unshare namespaces: {e}"))?;
        if cfg.network == Network::Isolated {
            protocol::send(sock, &ToRuntime::Entered)
                .map_err(|e| format!("reporting the namespaces: {e}"))?;
        }
        Ok(pid1::run(&cfg, sock, pending, None))
    })
}

pub(crate) use pid1::held_signals;

/// Run `role` on the runtime's socket at fd 3; a setup error it returns goes to the runtime.
fn run_as(role: impl FnOnce(&mut UnixStream) -> Result<i32, String>) -> i32 {
    // SAFETY: PR_SET_NAME copies at most 16 bytes from a NUL-terminated string.
    unsafe { libc::prctl(libc::PR_SET_NAME, PROCESS_NAME.as_ptr()) };
    // What the container gets (the files init makes in it, then the workload) has the same
    // modes whoever started shoal, under whatever umask: 0022, as runc gives every
    // container whose spec names none.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    // SAFETY: the runtime passes its end of the socketpair as fd 3 and nothing else in this
    // fresh process owns that descriptor.
    let mut sock = unsafe { UnixStream::from_raw_fd(INIT_SOCK_FD) };
    if let Err(e) = set_cloexec(INIT_SOCK_FD) {
        eprintln!("shoal init: fd {INIT_SOCK_FD} is not the runtime socket: {e}");
        return 1;
    }
    let code = match role(&mut sock) {
        Ok(code) => code,
        Err(message) => {
            let _ = protocol::send(
                &mut sock,
                &ToRuntime::Error {
                    message,
                    exit_code: 1,
                },
            );
            1
        }
    };
    // The socket is left for the kernel to close as this process exits, after its memory
    // (and with it its command line) is gone. The runtime takes the end of the socket as
    // the container's end, so by then nothing of the shim may still run: closed here, the
    // shim was still alive for a moment after `delete` returned.
    let _ = sock.into_raw_fd();
    code
}

fn set_cloexec(fd: i32) -> std::io::Result<()> {
    // SAFETY: fcntl on an integer fd has no memory-safety preconditions.
    let r = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Read one message line. Whole chunks are read; what arrives past the line's end stays in
/// `pending` for the next call. A forked PID 1 finds its go right behind the config; PID 1
/// forked by the shim inherits what the shim read past the config, which is nothing (the
/// runtime sends the go only once the shim has reported the pid).
fn read_line(sock: &mut UnixStream, pending: &mut Vec<u8>) -> Result<Option<String>, String> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let rest = pending.split_off(end + 1);
            let mut line = std::mem::replace(pending, rest);
            line.pop();
            return String::from_utf8(line)
                .map(Some)
                .map_err(|e| format!("runtime sent invalid UTF-8: {e}"));
        }
        match sock.read(&mut chunk) {
            Ok(0) if pending.is_empty() => return Ok(None),
            Ok(0) => return Err("the runtime closed the socket in the middle of a message".into()),
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading from the runtime: {e}")),
        }
    }
}

fn read_config(sock: &mut UnixStream, pending: &mut Vec<u8>) -> Result<InitConfig, String> {
    let line =
        read_line(sock, pending)?.ok_or("the runtime closed the socket before sending a config")?;
    serde_json::from_str(&line).map_err(|e| format!("bad init config: {e}"))
}

/// The namespaces besides the pid namespace, which only a child can enter.
fn namespaces(cfg: &InitConfig) -> CloneFlags {
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    if cfg.network != Network::Host {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    flags
}

fn shim(sock: &mut UnixStream) -> Result<i32, String> {
    let mut pending = Vec::new();
    let cfg = read_config(sock, &mut pending)?;

    // A session of our own keeps terminal job-control signals (Ctrl-C) away from the
    // container; `shoal run` forwards them explicitly, once.
    let _ = nix::unistd::setsid();

    let log_pipe = match cfg.stdio {
        Stdio::Capture => {
            // The log is written by names relative to its directory, made this process's
            // working directory before PID 1 exists: PID 1's pivot_root moves the root of
            // the whole mount namespace, the shim's included, but leaves a working directory
            // outside the old root alone.
            std::env::set_current_dir(&cfg.dir)
                .map_err(|e| format!("entering {}: {e}", cfg.dir.display()))?;
            Some(
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                    .map_err(|e| format!("creating the output pipe: {e}"))?,
            )
        }
        Stdio::Inherit => None,
    };

    nix::sched::unshare(namespaces(&cfg) | CloneFlags::CLONE_NEWPID)
        .map_err(|e| format!("unshare namespaces: {e}"))?;
    // The shim itself never unblocks them; it ignores or does not expect them anyway.
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&pid1::held_signals()), None)
        .map_err(|e| format!("sigprocmask: {e}"))?;

    // SAFETY: this process is single-threaded (a fresh exec, no runtime started).
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            let out = log_pipe.map(|(r, w)| {
                drop(r);
                w
            });
            std::process::exit(pid1::run(&cfg, sock, pending, out));
        }
        ForkResult::Parent { child } => {
            protocol::send(sock, &ToRuntime::Pid(child.as_raw()))
                .map_err(|e| format!("reporting the container pid: {e}"))?;
            // The runtime signals PID 1 directly; the shim must outlive it to report back.
            for sig in [
                Signal::SIGINT,
                Signal::SIGTERM,
                Signal::SIGHUP,
                Signal::SIGQUIT,
            ] {
                // SAFETY: SIG_IGN installs no Rust handler.
                let _ = unsafe { signal(sig, SigHandler::SigIgn) };
            }
            if let Some((r, w)) = log_pipe {
                drop(w);
                pump_log(r, &cfg);
            }
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                    Ok(WaitStatus::Signaled(_, sig, _)) => {
                        let _ = protocol::send(
                            sock,
                            &ToRuntime::Exited {
                                code: None,
                                signal: Some(sig as i32),
                            },
                        );
                        return Ok(128 + sig as i32);
                    }
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(format!("waiting for the container: {e}")),
                }
            }
        }
    }
}

/// Copy the workload's output to `output.log` until every writer is gone, rotating to
/// `output.log.1` when the file reaches the cap so a chatty replica cannot fill the disk.
fn pump_log(r: OwnedFd, cfg: &InitConfig) {
    let mut pipe = File::from(r);
    let log = Path::new(cfg.log_path.file_name().unwrap_or(OsStr::new("output.log")));
    let rotated = log.with_extension("log.1");
    let open = || OpenOptions::new().create(true).append(true).open(log);
    let mut file = open().ok();
    let mut size = file
        .as_ref()
        .and_then(|f| f.metadata().ok())
        .map_or(0, |m| m.len());
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if size + n as u64 > cfg.log_cap {
            let _ = std::fs::rename(log, &rotated);
            file = open().ok();
            size = 0;
        }
        // Keep draining even when the log cannot be written, or the workload would block.
        if let Some(f) = file.as_mut() {
            if f.write_all(&buf[..n]).is_ok() {
                size += n as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_together_are_kept_for_the_next_read() {
        let (mut runtime, mut init) = UnixStream::pair().unwrap();
        // A forked PID 1 gets the config and the go in one read.
        runtime.write_all(b"{\"config\":1}\n{\"go\":2}\n").unwrap();
        let mut pending = Vec::new();
        let first = read_line(&mut init, &mut pending).unwrap();
        assert_eq!(first.as_deref(), Some("{\"config\":1}"));
        assert_eq!(pending, b"{\"go\":2}\n");
        let second = read_line(&mut init, &mut pending).unwrap();
        assert_eq!(second.as_deref(), Some("{\"go\":2}"));
        assert!(pending.is_empty());

        runtime.write_all(b"{\"split\"").unwrap();
        runtime.write_all(b":3}\n").unwrap();
        let third = read_line(&mut init, &mut pending).unwrap();
        assert_eq!(third.as_deref(), Some("{\"split\":3}"));

        runtime.write_all(b"{\"cut\"").unwrap();
        drop(runtime);
        assert!(read_line(&mut init, &mut pending).is_err());
        pending.clear();
        assert_eq!(read_line(&mut init, &mut pending), Ok(None));
    }
}
