//! The replica metrics of SPEC.md, registered once and resolved per service.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
    /// How many [`ServiceMetrics`] of each service name are live: a reload can remove a
    /// service and add it back while the removed copy still drains, and the copy that
    /// finishes must not drop the series the new one updates.
    holders: Arc<Mutex<HashMap<String, usize>>>,
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
            holders: Arc::default(),
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
        *self
            .holders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(service.to_string())
            .or_default() += 1;
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
            cpu_last: Mutex::default(),
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
    /// Each replica's CPU seconds at its last reading, of its current run: a restart keeps
    /// the replica's id (and counter) but starts a new cgroup from zero.
    cpu_last: Mutex<HashMap<String, f64>>,
}

impl ServiceMetrics {
    pub fn exit(&self, reason: &str) {
        self.families
            .exits
            .with_label_values(&[&self.service, reason])
            .inc();
    }

    /// Adds a replica's CPU use since its last reading to its counter, and sets its memory
    /// gauge.
    pub fn usage(&self, replica: &str, cpu_seconds: f64, memory_bytes: u64) {
        self.cpu(replica, cpu_seconds);
        self.families
            .memory
            .with_label_values(&[&self.service, replica])
            .set(memory_bytes as f64);
    }

    /// Adds a replica's CPU use since its last reading to its counter (a reading below the
    /// last one is a new run's, whose whole use is new).
    pub fn cpu(&self, replica: &str, cpu_seconds: f64) {
        let last = self
            .cpu_last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(replica.to_string(), cpu_seconds)
            .unwrap_or(0.0);
        let used = if cpu_seconds >= last {
            cpu_seconds - last
        } else {
            cpu_seconds
        };
        if used > 0.0 {
            self.families
                .cpu
                .with_label_values(&[&self.service, replica])
                .inc_by(used);
        }
    }

    /// Drops every series of the service (it is stopping: removed by a reload, or shoal is
    /// shutting down), so that scrapes stop reporting it; unless a reload has added the
    /// service again, whose handles are the same series.
    pub fn forget_service(&self) {
        let families = &self.families;
        let service = self.service.as_str();
        {
            let mut holders = families.holders.lock().unwrap_or_else(|e| e.into_inner());
            let left = holders.get_mut(service).map_or(0, |count| {
                *count = count.saturating_sub(1);
                *count
            });
            if left > 0 {
                return;
            }
            holders.remove(service);
        }
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

    /// A replica's new run (its first, or a restart) is about to start: its CPU readings
    /// start again from zero, and all of them are new use.
    pub fn new_run(&self, replica: &str) {
        self.cpu_last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(replica);
    }

    /// Drops the memory gauge of a replica whose container ended: no memory is in use until
    /// it runs again. Its CPU counter stays, as counters do.
    pub fn ended(&self, replica: &str) {
        let _ = self
            .families
            .memory
            .remove_label_values(&[&self.service, replica]);
    }

    /// Drops a removed replica's series so that scrapes stop reporting it.
    pub fn forget(&self, replica: &str) {
        self.cpu_last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(replica);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn value(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let families = registry.gather();
        let family = families.iter().find(|family| family.name() == name)?;
        let metric = family.get_metric().iter().find(|metric| {
            labels.iter().all(|(k, v)| {
                metric
                    .get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })?;
        Some(match family.get_field_type() {
            prometheus::proto::MetricType::COUNTER => metric.get_counter().get_value(),
            _ => metric.get_gauge().get_value(),
        })
    }

    #[test]
    fn cpu_keeps_counting_across_a_replica_restart() {
        let registry = Registry::new();
        let metrics = ReplicaMetrics::new(&registry).unwrap().service("web");
        let cpu = |r: &Registry| {
            value(
                r,
                "shoal_container_cpu_seconds_total",
                &[("service", "web"), ("replica", "web-1")],
            )
        };
        metrics.usage("web-1", 2.0, 1);
        metrics.usage("web-1", 2.5, 1);
        assert_eq!(cpu(&registry), Some(2.5));
        // Restarted: the new run's cgroup counts from zero.
        metrics.usage("web-1", 0.25, 1);
        metrics.usage("web-1", 1.0, 1);
        assert_eq!(cpu(&registry), Some(3.5));
        // A run announced as new counts whole even when it reads more than the last.
        metrics.new_run("web-1");
        metrics.usage("web-1", 1.5, 1);
        assert_eq!(cpu(&registry), Some(5.0));
    }

    #[test]
    fn a_removed_copy_that_finishes_keeps_the_series_of_the_service_added_again() {
        let registry = Registry::new();
        let families = ReplicaMetrics::new(&registry).unwrap();
        let removed = families.service("web");
        let added_again = families.service("web");
        added_again.ready.set(2);
        removed.forget_service();
        let ready = [("service", "web"), ("state", "ready")];
        assert_eq!(value(&registry, "shoal_replicas", &ready), Some(2.0));
        added_again.forget_service();
        assert_eq!(value(&registry, "shoal_replicas", &ready), None);
    }
}
