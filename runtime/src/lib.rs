//! shoal-runtime: shoal's bundled container runtime.
//!
//! Containers are Linux namespaces (mount, pid, uts, ipc, cgroup and optionally network),
//! cgroups (v1 or v2, always beneath shoal's own cgroup), an overlayfs or bind-mounted root
//! and `pivot_root`. No Docker, containerd or runc is involved.
//!
//! # Process model
//!
//! The caller may be a multi-threaded tokio daemon, so it never forks to run Rust code.
//! [`Container::start`] spawns `/proc/self/exe` (or [`RuntimeConfig::init_binary`]) with the
//! hidden first argument [`INIT_ARG`]; the binary's `main` must hand that straight to
//! [`init::main`]. That single-threaded process (the *shim*) unshares the namespaces and
//! forks the container's PID 1 (a minimal init that sets up mounts, drops privileges, forks
//! the workload, reaps zombies and forwards signals). A caller that is single-threaded when
//! it starts the container and attaches its stdio may set [`RuntimeConfig::fork_init`] to
//! fork PID 1 itself instead, with no shim (the threads are counted at every start; with
//! more than one it re-execs). The runtime talks to them over a socketpair with JSON lines
//! (see `protocol`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), shoal_runtime::Error> {
//! use shoal_runtime::{ContainerSpec, RootFs, Runtime, RuntimeConfig};
//! let runtime = Runtime::new(RuntimeConfig::default())?;
//! let spec = ContainerSpec::new(RootFs::Host, vec!["/bin/true".into()]);
//! let container = runtime.create(spec).await?;
//! container.start().await?;
//! let status = container.wait().await;
//! container.delete().await?;
//! assert_eq!(status.code(), 0);
//! # Ok(()) }
//! ```

mod cgroup;
mod container;
mod error;
mod image;
pub mod init;
mod launch;
mod network;
pub mod previous_log;
mod protocol;
mod spec;
mod stale;
mod state;

pub use cgroup::CgroupMode;
pub use container::{Container, ExitStatus, Runtime, RuntimeConfig, Stats};
pub use error::Error;
pub use image::check_image;
pub use network::interface_exists;
pub use spec::{
    parse_cpus, parse_mount, parse_signal, parse_size, parse_tmpfs, parse_user, validate_id,
    ContainerSpec, Mount, Network, Resources, RootFs, Stdio,
};
pub use state::{rfc3339, ContainerInfo, ContainerState};

use std::path::PathBuf;

/// First argument that makes the shoal binary act as a container's init instead of the CLI.
pub const INIT_ARG: &str = "__shoal-container-init";

/// Where the runtime keeps its state and which addresses isolated containers get
/// (SPEC: `runtime.state_dir`, `runtime.subnet`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSettings {
    /// `containers/<id>/` (state, logs, overlay upper dirs), `layers/`, `images/`, `net/`.
    pub state_dir: PathBuf,
    /// IPv4 network in CIDR notation; each isolated container gets a /30 from it.
    pub subnet: String,
}

impl Default for RuntimeSettings {
    /// SPEC defaults: `/run/shoal` as root, `$XDG_RUNTIME_DIR/shoal` otherwise (falling back to
    /// `/tmp/shoal-<uid>` when that is unset); subnet `10.213.0.0/16`.
    fn default() -> Self {
        let uid = nix::unistd::geteuid();
        let state_dir = if uid.is_root() {
            PathBuf::from("/run/shoal")
        } else {
            match std::env::var_os("XDG_RUNTIME_DIR") {
                Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("shoal"),
                _ => PathBuf::from(format!("/tmp/shoal-{uid}")),
            }
        };
        RuntimeSettings {
            state_dir,
            subnet: "10.213.0.0/16".to_string(),
        }
    }
}
