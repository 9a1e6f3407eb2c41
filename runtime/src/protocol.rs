//! Typed messages between the runtime and the container's init, one JSON object per line
//! over a socketpair that the init finds at fd [`INIT_SOCK_FD`].
//!
//! runtime → shim: [`InitConfig`]; shim → runtime: [`ToRuntime::Pid`]; runtime → init:
//! [`ToInit::Go`] (after the network is ready); init → runtime:
//! [`ToRuntime::Error`] on a setup failure, and finally [`ToRuntime::Exited`]. A PID 1 the
//! runtime forked itself reports no pid (the runtime has it from the fork): it gets the
//! config and the go back to back, or, with isolated networking, reports
//! [`ToRuntime::Entered`] between them.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cgroup::Cgroup;
use crate::spec::{Mount, Network, Stdio};

/// The init's end of the socketpair.
pub const INIT_SOCK_FD: i32 = 3;

/// How the init builds the root filesystem.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RootPlan {
    /// Bind-mount this directory as the root.
    Dir(PathBuf),
    /// overlayfs: `lowers` top-most first; `upper` and `work` in the container's directory.
    Overlay {
        lowers: Vec<PathBuf>,
        upper: PathBuf,
        work: PathBuf,
    },
    /// A tmpfs root with read-only binds of the host's system directories.
    Host,
}

/// Everything the init needs, sent as the first line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitConfig {
    pub id: String,
    pub hostname: String,
    pub root: RootPlan,
    /// Mount point for the new root: `<state dir>/root`, the same for every container, which
    /// mounts its own there in its own mount namespace.
    pub root_mount: PathBuf,
    /// The container's directory in the state directory (`containers/<id>`): its state, its
    /// captured output and its own /etc files.
    pub dir: PathBuf,
    /// Joined by PID 1 itself before anything else runs.
    pub cgroup: Cgroup,
    pub read_only: bool,
    pub mounts: Vec<Mount>,
    pub network: Network,
    /// Program and arguments (already merged with the image's Entrypoint/Cmd).
    pub args: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    pub cwd: String,
    pub user: Option<String>,
    pub stdio: Stdio,
    /// Captured output file (for [`Stdio::Capture`]) and its rotation size.
    pub log_path: PathBuf,
    pub log_cap: u64,
}

/// Messages from the runtime to the init.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToInit {
    /// Network ready: continue. For isolated networking the address is
    /// already configured from the host side; it is passed for /etc/hosts.
    Go { address: Option<Ipv4Addr> },
}

/// Messages from the init to the runtime.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToRuntime {
    /// Host pid of the container's PID 1.
    Pid(i32),
    /// A PID 1 the runtime forked itself has entered the container's namespaces; sent only
    /// with isolated networking, which the runtime then sets up inside.
    Entered,
    /// Setup failed; `exit_code` is what a CLI should exit with.
    Error { message: String, exit_code: i32 },
    /// The workload ended.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
}

/// Write one message as a JSON line.
pub fn send<T: Serialize>(w: &mut impl Write, msg: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg)?;
    line.push(b'\n');
    w.write_all(&line)?;
    w.flush()
}
