//! The runtime's error type: each variant says what failed and, where it helps, what to do.

use std::path::PathBuf;

/// Errors returned by the runtime API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A container spec or CLI value is invalid (bad size, unknown signal, bad mount …).
    #[error("{0}")]
    InvalidSpec(String),

    /// The root filesystem directory given with `--rootfs` / `rootfs:` is unusable.
    #[error("rootfs {path}: {reason}")]
    Rootfs { path: PathBuf, reason: String },

    /// The image could not be read, verified or unpacked.
    #[error("image {path}: {reason}")]
    Image { path: PathBuf, reason: String },

    /// A container with this id or name already exists in the state directory.
    #[error("a container named {0:?} already exists (stop it or pick another name)")]
    NameInUse(String),

    /// No container with this id or name is known.
    #[error("no such container: {0}")]
    NotFound(String),

    /// cgroup setup, limits or stats failed.
    #[error("cgroup {path}: {reason}")]
    Cgroup { path: PathBuf, reason: String },

    /// veth/address/route setup for an isolated container failed.
    #[error("network: {0}")]
    Network(String),

    /// The container's init reported a failure before the workload ran.
    #[error("{message}")]
    Init {
        /// What went wrong inside the container.
        message: String,
        /// Exit status a CLI should use (127: command not found, 126: not executable).
        exit_code: i32,
    },

    /// An I/O error with the file or operation it concerns.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// The operation needs root (namespaces, cgroups and mounts do).
    #[error("the container runtime needs root privileges (run shoal as root)")]
    NotRoot,
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Attach context to `std::io::Result`s.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|e| Error::io(context(), e))
    }
}

impl<T> IoContext<T> for nix::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|e| Error::io(context(), std::io::Error::from(e)))
    }
}
