//! The replica half of SPEC's `/api/v1/status` JSON.

use serde::Serialize;

/// One service's replicas as the admin API shows them.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ServiceReplicas {
    pub desired: u32,
    pub ready: u32,
    pub starting: u32,
    pub draining: u32,
    pub min: u32,
    pub max: u32,
    /// A count pinned by `shoal scale`, or null when the autoscaler decides.
    pub pinned: Option<u32>,
    #[serde(skip)]
    pub replicas: Vec<ReplicaStatus>,
    #[serde(skip)]
    pub scale: ScaleStatus,
}

/// SPEC's `scale` object: the metric, panic mode and the last decision that changed the count.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ScaleStatus {
    pub metric: &'static str,
    pub panic: bool,
    pub last_decision: Option<LastDecision>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LastDecision {
    /// RFC 3339 time of the decision.
    pub at: String,
    pub from: u32,
    pub to: u32,
    pub reason: String,
}

/// One replica: SPEC's endpoint row, less what the proxy adds (in-flight).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReplicaStatus {
    pub id: String,
    /// `starting`, `ready`, `draining`, `stopping`, `backoff` or `exited`.
    pub state: &'static str,
    pub address: Option<String>,
    pub healthy: bool,
    pub restarts: u32,
    /// RFC 3339 time the current process started.
    pub started_at: Option<String>,
    pub cpu_seconds: Option<f64>,
    pub memory_bytes: Option<u64>,
    /// Why the last process ended, when one did.
    pub last_exit: Option<String>,
}
