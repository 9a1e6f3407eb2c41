//! What a container should be: the runtime's mirror of SPEC's `container:` block and of the
//! `shoal run` options, plus the parsers both the CLI and the config mapping use.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Where the container's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RootFs {
    /// An OCI image layout (directory or tar) or a `docker save` tar.
    Image(PathBuf),
    /// An unpacked root filesystem directory, bind-mounted as the root.
    Dir(PathBuf),
    /// No image: the host's /usr /bin /sbin /lib* read-only, a minimal /etc, private /tmp.
    Host,
}

/// Network mode (SPEC `network:`, `shoal run --net`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Own network namespace with only `lo`.
    #[default]
    None,
    /// The host's network namespace; the runtime picks a free 127.0.0.1 port, passed as PORT.
    Host,
    /// Own network namespace plus a veth pair with an address from `runtime.subnet`.
    Isolated,
}

impl std::str::FromStr for Network {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "none" => Ok(Network::None),
            "host" => Ok(Network::Host),
            "isolated" => Ok(Network::Isolated),
            other => Err(Error::InvalidSpec(format!(
                "unknown network mode {other:?} (expected none, host or isolated)"
            ))),
        }
    }
}

/// cgroup limits; `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Resources {
    /// CPU quota in cores (0.5 = half a core), enforced with CFS quota.
    pub cpus: Option<f64>,
    /// Memory limit in bytes; exceeding it gets the workload OOM-killed.
    pub memory: Option<u64>,
    /// Maximum number of tasks (processes and threads).
    pub pids: Option<u64>,
}

/// An extra mount inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mount {
    /// Bind a host path (file or directory) to `target`.
    Bind {
        source: PathBuf,
        target: PathBuf,
        readonly: bool,
    },
    /// A fresh tmpfs at `target`, optionally capped at `size` bytes; always `nosuid` and
    /// `nodev`.
    Tmpfs {
        target: PathBuf,
        size: Option<u64>,
        /// The mode of its root directory (default 1777, as `/tmp`'s).
        #[serde(default)]
        mode: Option<u32>,
        #[serde(default)]
        readonly: bool,
        #[serde(default)]
        noexec: bool,
    },
}

impl Mount {
    /// A writable tmpfs at `target` that may hold programs, as the config's `type: tmpfs`
    /// makes it.
    pub fn tmpfs(target: PathBuf, size: Option<u64>) -> Mount {
        Mount::Tmpfs {
            target,
            size,
            mode: None,
            readonly: false,
            noexec: false,
        }
    }
}

/// A tmpfs root directory's mode: octal, at most 07777.
fn parse_mode(text: &str) -> Option<u32> {
    u32::from_str_radix(text, 8).ok().filter(|m| *m <= 0o7777)
}

/// Where the workload's stdio goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Stdio {
    /// Stdout and stderr are captured to `state_dir/containers/<id>/output.log` (capped and
    /// rotated); stdin is /dev/null. For daemon-managed replicas.
    #[default]
    Capture,
    /// The caller's stdin/stdout/stderr are the container's (`shoal run`).
    Inherit,
}

/// Everything needed to create a container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Container id; generated when `None`. Must be unique within the state directory.
    pub name: Option<String>,
    /// Service label (shown by `shoal ps`, used for metrics by the daemon).
    pub service: Option<String>,
    pub rootfs: RootFs,
    /// Command and arguments; empty means the image's Entrypoint + Cmd.
    pub command: Vec<String>,
    /// Extra environment, on top of the image's Env.
    pub env: BTreeMap<String, String>,
    /// Working directory; the image's WorkingDir or `/` when `None`.
    pub workdir: Option<String>,
    /// `UID[:GID]` or a user name from the container's /etc/passwd; image's User or root.
    pub user: Option<String>,
    /// The port the workload listens on inside the container (for `address()` and `PORT`).
    pub port: Option<u16>,
    pub network: Network,
    pub resources: Resources,
    pub mounts: Vec<Mount>,
    /// Mount the root filesystem read-only.
    pub read_only: bool,
    pub stop_signal: i32,
    pub stop_timeout: Duration,
    /// Defaults to the container id.
    pub hostname: Option<String>,
    pub stdio: Stdio,
}

impl ContainerSpec {
    /// A spec with SPEC defaults for everything but the root filesystem and command.
    pub fn new(rootfs: RootFs, command: Vec<String>) -> Self {
        ContainerSpec {
            name: None,
            service: None,
            rootfs,
            command,
            env: BTreeMap::new(),
            workdir: None,
            user: None,
            port: None,
            network: Network::None,
            resources: Resources {
                pids: Some(1024),
                ..Resources::default()
            },
            mounts: Vec::new(),
            read_only: false,
            stop_signal: libc::SIGTERM,
            stop_timeout: Duration::from_secs(10),
            hostname: None,
            stdio: Stdio::Capture,
        }
    }
}

/// Parse a size as the config does (`512`, `64Ki`, `128Mi`, `1Gi`, Docker's `64m`), of
/// more than 0 bytes.
pub fn parse_size(s: &str) -> Result<u64, Error> {
    shoal_config::units::parse_size(s)
        .and_then(|v| {
            if v == 0 {
                Err(format!("invalid size {s:?}: must be more than 0"))
            } else {
                Ok(v)
            }
        })
        .map_err(Error::InvalidSpec)
}

/// Parse a CPU count such as `0.5` or `2`.
pub fn parse_cpus(s: &str) -> Result<f64, Error> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.01 => Ok(v),
        _ => Err(Error::InvalidSpec(format!(
            "invalid cpus {s:?}: use a number of cores of at least 0.01, e.g. 0.5 or 2"
        ))),
    }
}

/// Parse a signal given as `SIGTERM`, `TERM` or a number.
pub fn parse_signal(s: &str) -> Result<i32, Error> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n)
            .map(|sig| sig as i32)
            .map_err(|_| Error::InvalidSpec(format!("invalid signal number {n}")));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map(|sig| sig as i32)
        .map_err(|_| Error::InvalidSpec(format!("unknown signal {s:?} (e.g. SIGTERM, SIGINT, 9)")))
}

/// Validate `UID[:GID]` or a user name (resolved later from the container's /etc/passwd),
/// by the config's rule ([`shoal_config::is_user`]).
pub fn parse_user(s: &str) -> Result<String, Error> {
    if !shoal_config::is_user(s) {
        return Err(Error::InvalidSpec(format!(
            "invalid user {s:?}: use UID[:GID] (e.g. 1000:1000) or a user name"
        )));
    }
    Ok(s.to_string())
}

/// Parse `--mount type=bind,source=S,target=T[,readonly]` or
/// `type=tmpfs,target=T[,size=N][,mode=1777][,readonly]` (`tmpfs-size`, `tmpfs-mode` as
/// Docker writes them).
pub fn parse_mount(s: &str) -> Result<Mount, Error> {
    let bad = |why: &str| {
        Error::InvalidSpec(format!(
            "invalid mount {s:?}: {why} (use type=bind,source=S,target=T[,readonly] or type=tmpfs,target=T[,size=64Mi][,mode=1777][,readonly])"
        ))
    };
    let mut kind = None;
    let mut source = None;
    let mut target = None;
    let mut readonly = false;
    let mut size = None;
    let mut mode = None;
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("type", v)) => kind = Some(v),
            Some(("source" | "src", v)) => source = Some(PathBuf::from(v)),
            Some(("target" | "dst" | "destination", v)) => target = Some(PathBuf::from(v)),
            // Docker's booleans (Go's ParseBool); anything else is an error, not "false".
            Some(("readonly" | "ro", v)) => {
                readonly = match v {
                    "1" | "t" | "T" | "true" | "TRUE" | "True" | "yes" => true,
                    "0" | "f" | "F" | "false" | "FALSE" | "False" | "no" => false,
                    _ => return Err(bad(&format!("{v:?} is not true or false"))),
                };
            }
            Some(("size" | "tmpfs-size", v)) => size = Some(parse_size(v)?),
            Some(("mode" | "tmpfs-mode", v)) => {
                mode =
                    Some(parse_mode(v).ok_or_else(|| bad(&format!("{v:?} is not an octal mode")))?)
            }
            None if part == "readonly" || part == "ro" => readonly = true,
            _ => return Err(bad(&format!("unknown option {part:?}"))),
        }
    }
    let target = target.ok_or_else(|| bad("target is missing"))?;
    if !target.is_absolute() {
        return Err(bad("target must be an absolute path"));
    }
    match kind {
        Some("bind") => {
            if size.is_some() || mode.is_some() {
                return Err(bad("size and mode are for type=tmpfs"));
            }
            let source = source.ok_or_else(|| bad("source is missing"))?;
            Ok(Mount::Bind {
                source,
                target,
                readonly,
            })
        }
        Some("tmpfs") => Ok(Mount::Tmpfs {
            target,
            size,
            mode,
            readonly,
            noexec: false,
        }),
        _ => Err(bad("type must be bind or tmpfs")),
    }
}

/// Parse `--tmpfs /tmp[:OPTIONS]` with Docker's options: `size=64Mi`, `mode=1777`, `rw` or
/// `ro`, `exec` or `noexec`. `nosuid` and `nodev` are always on; `suid` and `dev` are
/// refused rather than ignored.
pub fn parse_tmpfs(s: &str) -> Result<Mount, Error> {
    let (target, opts) = match s.split_once(':') {
        Some((t, o)) => (t, Some(o)),
        None => (s, None),
    };
    let bad = |opt: &str, why: &str| {
        Error::InvalidSpec(format!(
            "invalid tmpfs option {opt:?} in {s:?}: {why} (use /path[:size=64Mi,mode=1777,ro,noexec])"
        ))
    };
    let (mut size, mut mode, mut readonly, mut noexec) = (None, None, false, false);
    for opt in opts.into_iter().flat_map(|o| o.split(',')) {
        match opt.split_once('=') {
            Some(("size", v)) => size = Some(parse_size(v)?),
            Some(("mode", v)) => {
                mode = Some(parse_mode(v).ok_or_else(|| bad(opt, "not an octal mode"))?)
            }
            None => match opt {
                "rw" => readonly = false,
                "ro" => readonly = true,
                "exec" => noexec = false,
                "noexec" => noexec = true,
                "nosuid" | "nodev" => {}
                "suid" | "dev" => {
                    return Err(bad(opt, "a container's tmpfs is always nosuid,nodev"))
                }
                _ => return Err(bad(opt, "unknown option")),
            },
            Some(_) => return Err(bad(opt, "unknown option")),
        }
    }
    let target = PathBuf::from(target);
    if !target.is_absolute() {
        return Err(Error::InvalidSpec(format!(
            "tmpfs target {s:?} must be an absolute path"
        )));
    }
    Ok(Mount::Tmpfs {
        target,
        size,
        mode,
        readonly,
        noexec,
    })
}

/// Container ids double as hostnames, cgroup and directory names: keep them tame.
pub fn validate_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !id.starts_with('.')
        && !id.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidSpec(format!(
            "invalid container name {id:?}: use 1-63 letters, digits, '-', '_' or '.', not starting with '.' or '-'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("64Ki").unwrap(), 64 * 1024);
        assert_eq!(parse_size("128Mi").unwrap(), 128 << 20);
        assert_eq!(parse_size("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("1.5g").unwrap(), 3 << 29);
        for bad in ["", "Mi", "12Xi", "-1", "0", "1.5", "99999999999999Ti"] {
            assert!(parse_size(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn cpus_and_signals() {
        assert_eq!(parse_cpus("0.5").unwrap(), 0.5);
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("abc").is_err());
        assert_eq!(parse_signal("SIGTERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("int").unwrap(), libc::SIGINT);
        assert_eq!(parse_signal("9").unwrap(), libc::SIGKILL);
        assert!(parse_signal("SIGNOPE").is_err());
    }

    #[test]
    fn mounts() {
        assert_eq!(
            parse_mount("type=bind,source=/data,target=/d,readonly").unwrap(),
            Mount::Bind {
                source: "/data".into(),
                target: "/d".into(),
                readonly: true
            }
        );
        assert_eq!(
            parse_tmpfs("/tmp:size=64Mi").unwrap(),
            Mount::tmpfs("/tmp".into(), Some(64 << 20))
        );
        // Docker's --tmpfs options.
        assert_eq!(
            parse_tmpfs("/run:rw,noexec,nosuid,size=65536k,mode=755").unwrap(),
            Mount::Tmpfs {
                target: "/run".into(),
                size: Some(64 << 20),
                mode: Some(0o755),
                readonly: false,
                noexec: true,
            }
        );
        assert_eq!(
            parse_tmpfs("/t:ro").unwrap(),
            Mount::Tmpfs {
                target: "/t".into(),
                size: None,
                mode: None,
                readonly: true,
                noexec: false,
            }
        );
        for (bad, why) in [
            ("/t:suid", "always nosuid,nodev"),
            ("/t:dev", "always nosuid,nodev"),
            ("/t:mode=999", "not an octal mode"),
            ("/t:mode=17777", "not an octal mode"),
            ("/t:uid=1", "unknown option"),
            ("/t:bogus", "unknown option"),
        ] {
            let error = parse_tmpfs(bad).unwrap_err().to_string();
            assert!(error.contains(why), "{bad}: {error}");
        }
        // --mount's tmpfs takes readonly and Docker's tmpfs-size and tmpfs-mode.
        assert_eq!(
            parse_mount("type=tmpfs,target=/t,tmpfs-size=1Mi,tmpfs-mode=700,readonly").unwrap(),
            Mount::Tmpfs {
                target: "/t".into(),
                size: Some(1 << 20),
                mode: Some(0o700),
                readonly: true,
                noexec: false,
            }
        );
        assert!(parse_mount("type=bind,target=/d").is_err());
        // Not ignored: a tmpfs option on a bind, a boolean that is neither.
        for (bad, why) in [
            (
                "type=bind,source=/s,target=/d,tmpfs-mode=700",
                "for type=tmpfs",
            ),
            ("type=bind,source=/s,target=/d,size=1Mi", "for type=tmpfs"),
            (
                "type=tmpfs,target=/d,readonly=bogus",
                "is not true or false",
            ),
        ] {
            let error = parse_mount(bad).unwrap_err().to_string();
            assert!(error.contains(why), "{bad}: {error}");
        }
        assert_eq!(
            parse_mount("type=tmpfs,target=/d,readonly=TRUE").unwrap(),
            Mount::Tmpfs {
                target: "/d".into(),
                size: None,
                mode: None,
                readonly: true,
                noexec: false,
            }
        );
        assert!(parse_mount("type=nfs,target=/d").is_err());
        assert!(parse_mount("type=tmpfs,target=rel").is_err());
    }

    #[test]
    fn users_and_ids() {
        assert!(parse_user("1000:1000").is_ok());
        assert!(parse_user("nobody").is_ok());
        assert!(parse_user("1000:").is_err());
        assert!(parse_user("a b").is_err());
        assert!(validate_id("web-1").is_ok());
        assert!(validate_id("../x").is_err());
        assert!(validate_id("").is_err());
    }
}
