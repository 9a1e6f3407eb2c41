//! Prometheus metrics of SPEC.md's table that the HTTP proxy owns.
//!
//! Label handles are resolved when the proxy is built (one [`RequestMetrics`] per listener ×
//! service pair, one [`ServiceMetrics`] per service), never per request. The `code` label is
//! the one label only known per request: its counters are resolved on first use of a status
//! and cached in a fixed array indexed by status, so a request never formats a label. After
//! a reload, the series of listeners and services that no longer run are dropped
//! ([`running_series`]), and their handles retired: a request still in flight there when it
//! ends makes no series again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::proto::LabelPair;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Latency buckets in seconds: sub-millisecond for a local hop up to the default request
/// timeout, since that is the range a proxy in front of services sees.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The metric families, registered once.
#[derive(Clone)]
pub(crate) struct Metrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGaugeVec,
    queued: IntGaugeVec,
    connect_errors: IntCounterVec,
    retries: IntCounterVec,
    health_checks: IntCounterVec,
    ejections: IntCounterVec,
    /// Every [`RequestMetrics`] handed out and still held, for [`Metrics::retain`].
    issued: Arc<Mutex<Vec<Weak<RequestMetrics>>>>,
}

impl Metrics {
    pub(crate) fn register(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "shoal_http_requests_total",
                "HTTP requests answered, by listener, service and status code",
            ),
            &["listener", "service", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "shoal_http_request_duration_seconds",
                "Time from the request head to the end of the response body",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["listener", "service"],
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "shoal_requests_in_flight",
                "Requests routed to a service and not yet finished, except those held (shoal_requests_queued)",
            ),
            &["service"],
        )?;
        let queued = IntGaugeVec::new(
            Opts::new(
                "shoal_requests_queued",
                "Requests held waiting for a ready endpoint",
            ),
            &["service"],
        )?;
        let connect_errors = IntCounterVec::new(
            Opts::new(
                "shoal_upstream_connect_errors_total",
                "Failed connection attempts to a service's endpoints",
            ),
            &["service"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "shoal_upstream_retries_total",
                "Requests sent again to an endpoint after a failed attempt",
            ),
            &["service"],
        )?;
        // Counts the active checks of upstream services and, through
        // `ServiceHandle::record_health_check`, the container reconciler's replica probes:
        // one family, one owner.
        let health_checks = IntCounterVec::new(
            Opts::new(
                "shoal_health_checks_total",
                "Active health checks of a service's endpoints, by result",
            ),
            &["service", "result"],
        )?;
        let ejections = IntCounterVec::new(
            Opts::new(
                "shoal_outlier_ejections_total",
                "Endpoints taken out of balancing after consecutive failures",
            ),
            &["service"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(queued.clone()))?;
        registry.register(Box::new(connect_errors.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(health_checks.clone()))?;
        registry.register(Box::new(ejections.clone()))?;
        Ok(Metrics {
            requests,
            duration,
            in_flight,
            queued,
            connect_errors,
            retries,
            health_checks,
            ejections,
            issued: Arc::default(),
        })
    }

    pub(crate) fn service(&self, service: &str) -> ServiceMetrics {
        // Every series exists from the start so dashboards see 0 rather than no data.
        ServiceMetrics {
            in_flight: self.in_flight.with_label_values(&[service]),
            queued: self.queued.with_label_values(&[service]),
            connect_errors: self.connect_errors.with_label_values(&[service]),
            retries: self.retries.with_label_values(&[service]),
            health_passed: self.health_checks.with_label_values(&[service, "pass"]),
            health_failed: self.health_checks.with_label_values(&[service, "fail"]),
            ejections: self.ejections.with_label_values(&[service]),
        }
    }

    /// Drops the series that `running` refuses (see [`running_series`]).
    pub(crate) fn retain(&self, running: &dyn Fn(&LabelPair) -> bool) {
        // Retired first, so that a request ending meanwhile finds its pair retired rather
        // than making the series pruned below again.
        let label = |name: &str, value: &str| {
            let mut pair = LabelPair::default();
            pair.set_name(name.to_string());
            pair.set_value(value.to_string());
            pair
        };
        let mut issued = self.issued.lock().unwrap_or_else(PoisonError::into_inner);
        issued.retain(|handle| {
            let Some(handle) = handle.upgrade() else {
                return false;
            };
            let runs = running(&label("listener", &handle.listener))
                && running(&label("service", &handle.service));
            if !runs {
                handle.retired.store(true, Ordering::SeqCst);
            }
            runs
        });
        drop(issued);
        prune(&self.requests, running);
        prune(&self.duration, running);
        prune(&self.in_flight, running);
        prune(&self.queued, running);
        prune(&self.connect_errors, running);
        prune(&self.retries, running);
        prune(&self.health_checks, running);
        prune(&self.ejections, running);
    }

    /// Handles for requests on `listener` answered for `service` ("" when no service was
    /// chosen, e.g. no route or a malformed request).
    pub(crate) fn requests(&self, listener: &str, service: &str) -> Arc<RequestMetrics> {
        let handle = Arc::new(RequestMetrics {
            listener: listener.to_string(),
            service: service.to_string(),
            family: self.requests.clone(),
            duration: self.duration.with_label_values(&[listener, service]),
            codes: (0..STATUS_SLOTS).map(|_| OnceLock::new()).collect(),
            retired: AtomicBool::new(false),
        });
        self.issued
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::downgrade(&handle));
        handle
    }
}

/// Which series stay in /metrics after a reload: those whose `listener` and `service` labels
/// name a running listener and service. The others are of ones the reload removed, or made
/// by a rejected reload before it failed, and would show what does not exist. The series of
/// requests answered without a service (`service=""`) stay.
pub(crate) fn running_series<'a>(
    listener: impl Fn(&str) -> bool + 'a,
    service: impl Fn(&str) -> bool + 'a,
) -> impl Fn(&LabelPair) -> bool + 'a {
    move |pair| match pair.name() {
        "listener" => listener(pair.value()),
        "service" => pair.value().is_empty() || service(pair.value()),
        _ => true,
    }
}

/// Removes each series of `family` with a label that `running` refuses.
pub(crate) fn prune<T: MetricVecBuilder>(
    family: &MetricVec<T>,
    running: &dyn Fn(&LabelPair) -> bool,
) {
    for collected in family.collect() {
        for series in collected.get_metric() {
            if series.get_label().iter().all(running) {
                continue;
            }
            let labels: HashMap<&str, &str> = series
                .get_label()
                .iter()
                .map(|pair| (pair.name(), pair.value()))
                .collect();
            // Only fails for labels the family does not have, which these come from.
            let _ = family.remove(&labels);
        }
    }
}

/// Per-service handles.
pub(crate) struct ServiceMetrics {
    pub(crate) in_flight: IntGauge,
    pub(crate) queued: IntGauge,
    pub(crate) connect_errors: IntCounter,
    pub(crate) retries: IntCounter,
    pub(crate) health_passed: IntCounter,
    pub(crate) health_failed: IntCounter,
    pub(crate) ejections: IntCounter,
}

/// Statuses 100..=599 each get a slot.
const STATUS_SLOTS: usize = 500;

/// Per listener × service handles.
pub(crate) struct RequestMetrics {
    listener: String,
    service: String,
    family: IntCounterVec,
    duration: Histogram,
    codes: Box<[OnceLock<IntCounter>]>,
    /// Its listener or service was removed by a reload, and its series with them.
    retired: AtomicBool,
}

impl RequestMetrics {
    /// Counts one answered request with status `code`.
    pub(crate) fn count(&self, code: u16) {
        let index = usize::from(code).wrapping_sub(100);
        let Some(slot) = self.codes.get(index) else {
            // hyper cannot produce a status outside 100..=999, and 600..=999 are not
            // statuses anyone sends; count them without a cache.
            if let Some(counter) = self.counter(code) {
                counter.inc();
            }
            return;
        };
        if let Some(counter) = slot.get() {
            counter.inc();
        } else if let Some(counter) = self.counter(code) {
            slot.get_or_init(|| counter).inc();
        }
    }

    pub(crate) fn observe(&self, seconds: f64) {
        self.duration.observe(seconds);
    }

    /// The series for `code`; none once retired, when a request is counted nowhere, as
    /// it is on a counter made before.
    fn counter(&self, code: u16) -> Option<IntCounter> {
        if self.retired.load(Ordering::Relaxed) {
            return None;
        }
        let labels = [
            self.listener.as_str(),
            self.service.as_str(),
            &code.to_string(),
        ];
        let counter = self.family.with_label_values(&labels);
        // Retired meanwhile (the reload sets the flag before it prunes): the series made
        // after the prune goes again.
        if self.retired.load(Ordering::SeqCst) {
            let _ = self.family.remove_label_values(&labels);
            return None;
        }
        Some(counter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_counted_per_status() {
        let registry = Registry::new();
        let metrics = Metrics::register(&registry).unwrap();
        let requests = metrics.requests("web", "api");
        requests.count(200);
        requests.count(200);
        requests.count(404);
        requests.count(999);
        let family = registry
            .gather()
            .into_iter()
            .find(|f| f.name() == "shoal_http_requests_total")
            .unwrap();
        let mut seen: Vec<(String, u64)> = family
            .get_metric()
            .iter()
            .map(|m| {
                let code = m
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "code")
                    .unwrap()
                    .value()
                    .to_string();
                (code, m.get_counter().get_value() as u64)
            })
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            vec![
                ("200".to_string(), 2),
                ("404".to_string(), 1),
                ("999".to_string(), 1)
            ]
        );
    }
}
