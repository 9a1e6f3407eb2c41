//! The replica metrics of SPEC.md, registered once and resolved per service.

use prometheus::{
    exponential_buckets, CounterVec, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec,
    IntGaugeVec, Opts, Registry,
};

/// The `reason` label values of `shoal_container_exits_total` (see `Exit::reason`).
const EXIT_REASONS: [&str; 3] = ["exited", "signaled", "oom"];

/// Every replica-level metric family; one per daemon.
#[derive(Clone)]
pub struct ReplicaMetrics {
    replicas: IntGaugeVec,
    desired: IntGaugeVec,
    starts: IntCounterVec,
    exits: IntCounterVec,
    cpu: CounterVec,
    memory: GaugeVec,
    cold_start: HistogramVec,
    decisions: IntCounterVec,
    panic: IntGaugeVec,
}

impl ReplicaMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<ReplicaMetrics> {
        let metrics = ReplicaMetrics {
            replicas: IntGaugeVec::new(
                Opts::new("shoal_replicas", "Replicas by state"),
                &["service", "state"],
            )?,
            desired: IntGaugeVec::new(
                Opts::new("shoal_replicas_desired", "Replicas the service should have"),
                &["service"],
            )?,
            starts: IntCounterVec::new(
                Opts::new("shoal_container_starts_total", "Replica containers started"),
                &["service"],
            )?,
            exits: IntCounterVec::new(
                Opts::new(
                    "shoal_container_exits_total",
                    "Replica containers that ended",
                ),
                &["service", "reason"],
            )?,
            cpu: CounterVec::new(
                Opts::new(
                    "shoal_container_cpu_seconds_total",
                    "CPU time used by a replica",
                ),
                &["service", "replica"],
            )?,
            memory: GaugeVec::new(
                Opts::new("shoal_container_memory_bytes", "Memory used by a replica"),
                &["service", "replica"],
            )?,
            cold_start: HistogramVec::new(
                HistogramOpts::new(
                    "shoal_cold_start_seconds",
                    "From a replica's start request to its first passing health check",
                )
                .buckets(exponential_buckets(0.005, 2.0, 14)?),
                &["service"],
            )?,
            decisions: IntCounterVec::new(
                Opts::new(
                    "shoal_scale_decisions_total",
                    "Autoscaler decisions that changed the desired replica count",
                ),
                &["service", "direction"],
            )?,
            panic: IntGaugeVec::new(
                Opts::new(
                    "shoal_autoscaler_panic",
                    "1 while the service's autoscaler is in panic mode",
                ),
                &["service"],
            )?,
        };
        registry.register(Box::new(metrics.decisions.clone()))?;
        registry.register(Box::new(metrics.panic.clone()))?;
        registry.register(Box::new(metrics.replicas.clone()))?;
        registry.register(Box::new(metrics.desired.clone()))?;
        registry.register(Box::new(metrics.starts.clone()))?;
        registry.register(Box::new(metrics.exits.clone()))?;
        registry.register(Box::new(metrics.cpu.clone()))?;
        registry.register(Box::new(metrics.memory.clone()))?;
        registry.register(Box::new(metrics.cold_start.clone()))?;
        Ok(metrics)
    }

    /// Label handles for one service, resolved once.
    pub fn service(&self, service: &str) -> ServiceMetrics {
        // Every exit reason from the start, at 0, like the handles below: a series that
        // appears only once it moves reads as missing until then.
        for reason in EXIT_REASONS {
            self.exits.with_label_values(&[service, reason]);
        }
        ServiceMetrics {
            service: service.to_string(),
            starting: self.replicas.with_label_values(&[service, "starting"]),
            ready: self.replicas.with_label_values(&[service, "ready"]),
            draining: self.replicas.with_label_values(&[service, "draining"]),
            desired: self.desired.with_label_values(&[service]),
            starts: self.starts.with_label_values(&[service]),
            cold_start: self.cold_start.with_label_values(&[service]),
            scaled_up: self.decisions.with_label_values(&[service, "up"]),
            scaled_down: self.decisions.with_label_values(&[service, "down"]),
            panic: self.panic.with_label_values(&[service]),
            families: self.clone(),
        }
    }
}

/// One service's metric handles.
pub struct ServiceMetrics {
    service: String,
    pub starting: prometheus::IntGauge,
    pub ready: prometheus::IntGauge,
    pub draining: prometheus::IntGauge,
    pub desired: prometheus::IntGauge,
    pub starts: prometheus::IntCounter,
    pub cold_start: prometheus::Histogram,
    pub scaled_up: prometheus::IntCounter,
    pub scaled_down: prometheus::IntCounter,
    pub panic: prometheus::IntGauge,
    families: ReplicaMetrics,
}

impl ServiceMetrics {
    pub fn exit(&self, reason: &str) {
        self.families
            .exits
            .with_label_values(&[&self.service, reason])
            .inc();
    }

    /// Brings a replica's CPU counter and memory gauge up to `cpu_seconds` / `memory_bytes`.
    pub fn usage(&self, replica: &str, cpu_seconds: f64, memory_bytes: u64) {
        let cpu = self
            .families
            .cpu
            .with_label_values(&[&self.service, replica]);
        let delta = cpu_seconds - cpu.get();
        if delta > 0.0 {
            cpu.inc_by(delta);
        }
        self.families
            .memory
            .with_label_values(&[&self.service, replica])
            .set(memory_bytes as f64);
    }

    /// Drops every series of the service (it is stopping: removed by a reload, or shoal is
    /// shutting down), so that scrapes stop reporting it.
    pub fn forget_service(&self) {
        let families = &self.families;
        let service = self.service.as_str();
        for state in ["starting", "ready", "draining"] {
            let _ = families.replicas.remove_label_values(&[service, state]);
        }
        for direction in ["up", "down"] {
            let _ = families
                .decisions
                .remove_label_values(&[service, direction]);
        }
        for reason in EXIT_REASONS {
            let _ = families.exits.remove_label_values(&[service, reason]);
        }
        let _ = families.desired.remove_label_values(&[service]);
        let _ = families.starts.remove_label_values(&[service]);
        let _ = families.cold_start.remove_label_values(&[service]);
        let _ = families.panic.remove_label_values(&[service]);
    }

    /// Drops a removed replica's series so that scrapes stop reporting it.
    pub fn forget(&self, replica: &str) {
        let _ = self
            .families
            .cpu
            .remove_label_values(&[&self.service, replica]);
        let _ = self
            .families
            .memory
            .remove_label_values(&[&self.service, replica]);
    }
}
