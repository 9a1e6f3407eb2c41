//! The typed configuration: one struct per YAML block of SPEC.md, with SPEC's defaults.
//!
//! Every struct denies unknown keys so that a typo is an error rather than a silently
//! ignored setting. Durations are `std::time::Duration` and sizes are bytes (`u64`), parsed
//! from the human forms (`250ms`, `64Mi`) by [`crate::units`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::units::{de_duration, de_opt_nameserver, de_opt_size, de_size, de_unique_keys};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Proxy worker threads; 0 means one per core.
    pub workers: usize,
    pub admin: Admin,
    pub runtime: Runtime,
    pub listeners: Vec<Listener>,
    /// Services by name, in name order.
    #[serde(deserialize_with = "de_unique_keys")]
    pub services: BTreeMap<String, Service>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    pub listen: SocketAddr,
    /// When set, mutating admin endpoints need `Authorization: Bearer <token>`.
    pub token_file: Option<PathBuf>,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            listen: SocketAddr::from(([127, 0, 0, 1], 9900)),
            token_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    /// `None` means the platform default: `/run/shoal` as root, `$XDG_RUNTIME_DIR/shoal` otherwise.
    pub state_dir: Option<PathBuf>,
    /// CIDR the `network: isolated` replicas take their addresses from.
    pub subnet: String,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            state_dir: None,
            subnet: "10.213.0.0/16".to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Http,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub bind: SocketAddr,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub tls: Option<Tls>,
    /// The single service behind the listener (tcp, or http without routes).
    #[serde(default)]
    pub service: Option<String>,
    /// http only; first match wins; a rule without `match` is the default.
    #[serde(default)]
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub certificates: Vec<Certificate>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub sni: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default, rename = "match")]
    pub matches: Option<RouteMatch>,
    pub service: String,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteMatch {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    #[serde(deserialize_with = "de_unique_keys")]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Service {
    /// Exactly one of `container` and `upstreams` is set (checked by validation).
    pub container: Option<Container>,
    pub upstreams: Option<Upstreams>,
    pub balance: Balance,
    pub hash_on: Option<HashOn>,
    pub health: Health,
    pub outlier: Outlier,
    pub retries: Retries,
    pub timeouts: Timeouts,
    pub limits: Limits,
    #[serde(deserialize_with = "de_duration")]
    pub drain_timeout: Duration,
    pub scale: Scale,
}

impl Default for Service {
    fn default() -> Self {
        Service {
            container: None,
            upstreams: None,
            balance: Balance::default(),
            hash_on: None,
            health: Health::default(),
            outlier: Outlier::default(),
            retries: Retries::default(),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            drain_timeout: Duration::from_secs(30),
            scale: Scale::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Container {
    /// OCI image layout (directory or tar) or a `docker save` tar.
    pub image: Option<PathBuf>,
    /// An unpacked root filesystem directory.
    pub rootfs: Option<PathBuf>,
    /// No image: the host's system directories read-only.
    pub host: bool,
    pub command: Vec<String>,
    #[serde(deserialize_with = "de_unique_keys")]
    pub env: BTreeMap<String, String>,
    pub workdir: String,
    /// `"USER[:GROUP]"`, numbers or names ([`crate::is_user`]).
    pub user: Option<String>,
    /// Where the app listens inside the container.
    pub port: u16,
    pub network: Network,
    pub resources: Resources,
    pub mounts: Vec<Mount>,
    pub read_only: bool,
    pub stop_signal: String,
    #[serde(deserialize_with = "de_duration")]
    pub stop_timeout: Duration,
    pub restart: Restart,
}

impl Default for Container {
    fn default() -> Self {
        Container {
            image: None,
            rootfs: None,
            host: false,
            command: Vec::new(),
            env: BTreeMap::new(),
            workdir: "/".to_string(),
            user: None,
            port: 8080,
            network: Network::default(),
            resources: Resources::default(),
            mounts: Vec::new(),
            read_only: false,
            stop_signal: "SIGTERM".to_string(),
            stop_timeout: Duration::from_secs(10),
            restart: Restart::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// Own network namespace and a veth pair with an address from `runtime.subnet`.
    #[default]
    Isolated,
    /// The host's network; the runtime picks a free 127.0.0.1 port and passes it as `PORT`.
    Host,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    pub cpus: Option<f64>,
    #[serde(deserialize_with = "de_opt_size")]
    pub memory: Option<u64>,
    pub pids: Option<u64>,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpus: None,
            memory: None,
            pids: Some(1024),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "MountAsWritten")]
pub enum Mount {
    Bind {
        source: PathBuf,
        target: PathBuf,
        readonly: bool,
    },
    Tmpfs {
        target: PathBuf,
        size: Option<u64>,
    },
}

/// A mount as written: one map for both kinds, read as a struct so that an unknown or
/// missing key is reported at the mount's own place in the list (`mounts[1]`, its line).
/// serde's internally tagged enums read the map into a buffer first, and their errors
/// lost both.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MountAsWritten {
    #[serde(rename = "type")]
    kind: MountKind,
    source: Option<PathBuf>,
    target: PathBuf,
    readonly: Option<bool>,
    #[serde(default, deserialize_with = "de_opt_size")]
    size: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum MountKind {
    Bind,
    Tmpfs,
}

impl TryFrom<MountAsWritten> for Mount {
    type Error = String;

    fn try_from(mount: MountAsWritten) -> Result<Mount, String> {
        let MountAsWritten {
            kind,
            source,
            target,
            readonly,
            size,
        } = mount;
        match kind {
            MountKind::Bind => {
                if size.is_some() {
                    return Err(
                        "`size` is for tmpfs mounts; a bind mount is its source's size".into(),
                    );
                }
                let source = source.ok_or("a bind mount needs `source`, the host path to mount")?;
                Ok(Mount::Bind {
                    source,
                    target,
                    readonly: readonly.unwrap_or(false),
                })
            }
            MountKind::Tmpfs => {
                if source.is_some() || readonly.is_some() {
                    return Err("`source` and `readonly` are for bind mounts; a tmpfs takes `target` and `size`".into());
                }
                Ok(Mount::Tmpfs { target, size })
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    Always,
    #[default]
    OnFailure,
    Never,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Upstreams {
    #[serde(rename = "static")]
    pub static_: Vec<SocketAddr>,
    pub dns: Option<Dns>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    pub name: String,
    /// For `a`/`aaaa` records (SRV records carry their own ports).
    #[serde(default = "default_dns_port")]
    pub port: u16,
    #[serde(default, rename = "type")]
    pub record: DnsRecord,
    #[serde(default = "default_dns_refresh", deserialize_with = "de_duration")]
    pub refresh: Duration,
    /// `IP` (port 53, as in resolv.conf and HAProxy's `nameserver`) or `IP:PORT`.
    #[serde(default, deserialize_with = "de_opt_nameserver")]
    pub nameserver: Option<SocketAddr>,
}

fn default_dns_port() -> u16 {
    80
}

fn default_dns_refresh() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DnsRecord {
    #[default]
    A,
    Aaaa,
    Srv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
    LeastRequest,
    #[default]
    P2cEwma,
    ConsistentHash,
}

/// What `consistent_hash` hashes: `client_ip | header:NAME | cookie:NAME | path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    ClientIp,
    Header(String),
    Cookie(String),
    Path,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    /// Without `http`, a TCP connect check.
    pub http: Option<HttpCheck>,
    #[serde(deserialize_with = "de_duration")]
    pub interval: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            http: None,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy_threshold: 1,
            unhealthy_threshold: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    #[serde(default = "default_health_path")]
    pub path: String,
    #[serde(default)]
    pub expect: StatusRange,
}

fn default_health_path() -> String {
    "/healthz".to_string()
}

/// An inclusive range of HTTP statuses, written `"200-399"` or `"200"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub low: u16,
    pub high: u16,
}

impl Default for StatusRange {
    fn default() -> Self {
        StatusRange {
            low: 200,
            high: 399,
        }
    }
}

impl StatusRange {
    pub fn contains(&self, status: u16) -> bool {
        (self.low..=self.high).contains(&status)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Outlier {
    pub consecutive_failures: u32,
    #[serde(deserialize_with = "de_duration")]
    pub ejection: Duration,
    pub max_ejected_percent: u32,
}

impl Default for Outlier {
    fn default() -> Self {
        Outlier {
            consecutive_failures: 5,
            ejection: Duration::from_secs(10),
            max_ejected_percent: 50,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retries {
    pub attempts: u32,
    pub on: Vec<RetryOn>,
    pub budget_percent: u32,
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            attempts: 2,
            on: vec![
                RetryOn::ConnectFailure,
                RetryOn::Reset,
                RetryOn::Status(502),
                RetryOn::Status(503),
                RetryOn::Status(504),
            ],
            budget_percent: 20,
        }
    }
}

/// A condition under which a request is retried: `connect_failure`, `reset`, or a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    ConnectFailure,
    Reset,
    Status(u16),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    #[serde(deserialize_with = "de_duration")]
    pub connect: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub request: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub idle: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub header_read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(1),
            request: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            header_read: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_connections: usize,
    #[serde(deserialize_with = "de_size")]
    pub max_request_header_bytes: u64,
    pub max_queued_requests: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_request_header_bytes: 64 * 1024,
            max_queued_requests: 1000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScaleMetric {
    #[default]
    Concurrency,
    Rps,
    Cpu,
}

impl ScaleMetric {
    /// The name as written in the config (`concurrency`, `rps`, `cpu`).
    pub fn as_str(self) -> &'static str {
        match self {
            ScaleMetric::Concurrency => "concurrency",
            ScaleMetric::Rps => "rps",
            ScaleMetric::Cpu => "cpu",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scale {
    pub min: u32,
    pub max: u32,
    /// As written; absent means 1, raised to `min` (see [`Scale::initial`]).
    pub initial: Option<u32>,
    pub metric: ScaleMetric,
    pub target: f64,
    pub utilization: f64,
    pub tolerance: f64,
    #[serde(deserialize_with = "de_duration")]
    pub window: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub panic_window: Duration,
    pub panic_threshold: f64,
    pub scale_up_rate: f64,
    pub scale_down_rate: f64,
    #[serde(deserialize_with = "de_duration")]
    pub scale_down_delay: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub zero_grace: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub cold_start_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub tick: Duration,
}

impl Scale {
    /// The replicas a service starts with: `initial` as written (validated to lie within
    /// `min..=max`), else SPEC's 1, raised to `min` as Knative's `min-scale` wins over its
    /// default `initial-scale` of 1.
    pub fn initial(&self) -> u32 {
        self.initial.unwrap_or(1).max(self.min).min(self.max)
    }
}

impl Default for Scale {
    fn default() -> Self {
        Scale {
            min: 1,
            max: 10,
            initial: None,
            metric: ScaleMetric::default(),
            target: 100.0,
            utilization: 0.7,
            tolerance: 0.1,
            window: Duration::from_secs(60),
            panic_window: Duration::from_secs(6),
            panic_threshold: 2.0,
            scale_up_rate: 1000.0,
            scale_down_rate: 2.0,
            scale_down_delay: Duration::ZERO,
            zero_grace: Duration::from_secs(30),
            cold_start_timeout: Duration::from_secs(30),
            tick: Duration::from_secs(1),
        }
    }
}
