//! shoal-autoscaler: sizes each container-backed service from its load and keeps it there.
//!
//! - [`policy`] is the pure scaling math (Knative-style concurrency/rps, HPA-style cpu):
//!   observations and a clock in, a decision with its reason out.
//! - [`reconciler`] runs one task per service: every `scale.tick` it feeds the policy the
//!   live load and applies the decision; it starts, health-checks, restarts and drains
//!   replicas. It reaches the world only through two small traits in [`driver`] — a
//!   [`driver::ReplicaDriver`] (start, wait, stop, remove, probe, stats) and an
//!   [`driver::Endpoints`] sink (publish the ready set, read load and in-flight counts) — which
//!   the binary implements with the runtime and the proxy, and the tests with fakes.
//! - [`simulate`] replays a load trace through the policy in simulated time (`shoal simulate`).

pub mod backoff;
pub mod driver;
pub mod health;
pub mod metrics;
pub mod policy;
pub mod reconciler;
pub mod simulate;
pub mod status;

pub use driver::{Endpoints, Exit, Load, ReplicaDriver, Started, Stats};
pub use metrics::ReplicaMetrics;
pub use policy::{Decision, Observation, Policy};
pub use reconciler::{Desired, Drain, Reconciler, ScaleRefused};
pub use status::{LastDecision, ReplicaStatus, ScaleStatus, ServiceReplicas};
