//! shoal-autoscaler: keeps each container-backed service at its desired replica count.
//!
//! The reconciler ([`reconciler`]) starts, health-checks, restarts and drains replicas. It
//! reaches the world only through two small traits in [`driver`] — a [`driver::ReplicaDriver`]
//! (start, wait, stop, remove, probe, stats) and an [`driver::Endpoints`] sink (publish the
//! ready set, read in-flight counts) — which the binary implements with the runtime and the
//! proxy, and the tests with fakes.

pub mod backoff;
pub mod driver;
pub mod health;
pub mod metrics;
pub mod policy;
pub mod reconciler;
pub mod simulate;
pub mod status;

pub use driver::{Endpoints, Exit, ReplicaDriver, Started, Stats};
pub use metrics::ReplicaMetrics;
pub use policy::{Decision, Observation, Policy};
pub use reconciler::{Desired, Reconciler};
pub use status::{ReplicaStatus, ServiceReplicas};
