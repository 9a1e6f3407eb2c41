//! Active health checks (SPEC.md `health:`): an HTTP GET whose status must fall in
//! `expect`, or a TCP connect when there is no `http`.
//!
//! [`probe`] is one check, shared with the container reconciler, which checks replicas and
//! hands the proxy only the ready ones. For services with `upstreams:` the proxy checks
//! every endpoint itself: [`spawn`] starts one task per service that probes all endpoints
//! every `interval` (each bounded by `timeout`). `unhealthy_threshold` failures in a row
//! take an endpoint out of balancing, `healthy_threshold` passes in a row bring it back.
//!
//! Upstream endpoints start healthy, before their first check: shoal must serve from the
//! moment it starts, and an upstream that is down is taken out after `unhealthy_threshold`
//! checks (meanwhile failed connects are retried elsewhere and count towards outlier
//! ejection). An endpoint that stays across [`ServiceHandle::set_endpoints`] keeps its
//! state; a new one starts healthy too.
//!
//! [`ServiceHandle::set_endpoints`]: crate::ServiceHandle::set_endpoints

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use shoal_config::{Health, HttpCheck};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::periodic::{self, Periodic};
use crate::service::{ServiceHandle, ServiceKind};

/// One check against `address`: with `http`, a GET of its path (`Host` is the address)
/// whose status must be in `expect`; without, a TCP connect. The caller bounds it with the
/// check timeout.
pub async fn probe(address: SocketAddr, http: Option<&HttpCheck>) -> bool {
    let Ok(stream) = TcpStream::connect(address).await else {
        return false;
    };
    let Some(check) = http else {
        return true;
    };
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await
    else {
        return false;
    };
    let connection = tokio::spawn(connection);
    let request = Request::get(check.path.as_str())
        .header(http::header::HOST, address.to_string())
        .header(http::header::USER_AGENT, "shoal-health-check")
        .body(Empty::new());
    let passed = match request {
        Ok(request) => sender
            .send_request(request)
            .await
            .is_ok_and(|response| check.expect.contains(response.status().as_u16())),
        Err(_) => false,
    };
    // One check, one connection: the body is not needed.
    connection.abort();
    passed
}

/// One endpoint's health as the checks see it.
pub(crate) struct HealthState {
    healthy: AtomicBool,
    passes: AtomicU32,
    failures: AtomicU32,
}

impl Default for HealthState {
    fn default() -> Self {
        HealthState {
            healthy: AtomicBool::new(true),
            passes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
        }
    }
}

impl HealthState {
    #[inline]
    pub(crate) fn healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    /// Counts one check; returns the new state when this check changed it. Only the
    /// service's checker task writes here, so the counters need no read-modify-write.
    fn record(&self, passed: bool, config: &Health) -> Option<bool> {
        let (run, other) = if passed {
            (&self.passes, &self.failures)
        } else {
            (&self.failures, &self.passes)
        };
        other.store(0, Relaxed);
        let count = run.load(Relaxed).saturating_add(1);
        run.store(count, Relaxed);
        let threshold = if passed {
            config.healthy_threshold
        } else {
            config.unhealthy_threshold
        };
        if self.healthy() != passed && count >= threshold {
            self.healthy.store(passed, Relaxed);
            return Some(passed);
        }
        None
    }
}

/// Starts checking the endpoints of `service` when it is an upstream service, with its
/// current `health` settings, every `interval` (endpoints start healthy, so the first
/// round waits one interval like the rest); dropping the handle stops the checks (a reload
/// removed the service or changed its `health`), and so do shutdown and the service's end.
pub(crate) fn spawn(
    service: &Arc<ServiceHandle>,
    shutdown: watch::Receiver<bool>,
) -> Option<Periodic> {
    let settings = service.settings();
    if settings.kind != ServiceKind::Upstreams {
        return None;
    }
    let config = Arc::new(settings.health.clone());
    let interval = config.interval;
    Some(periodic::every(
        service,
        interval,
        shutdown,
        move |service| {
            let config = Arc::clone(&config);
            async move { check_all(&service, &config).await }
        },
    ))
}

/// One round: every endpoint of the current set checked at once.
async fn check_all(service: &ServiceHandle, config: &Health) {
    let set = service.snapshot();
    let mut checks = JoinSet::new();
    for upstream in set.endpoints.iter().cloned() {
        let http = config.http.clone();
        let timeout = config.timeout;
        checks.spawn(async move {
            let address = upstream.endpoint().address;
            let passed = tokio::time::timeout(timeout, probe(address, http.as_ref()))
                .await
                .unwrap_or(false);
            (upstream, passed)
        });
    }
    while let Some(checked) = checks.join_next().await {
        // A probe cannot panic short of a bug in hyper; that endpoint just skips a round.
        let Ok((upstream, passed)) = checked else {
            continue;
        };
        service.record_health_check(passed);
        match upstream.health.record(passed, config) {
            Some(true) => tracing::info!(
                service = service.name(),
                endpoint = %upstream.endpoint().id,
                "endpoint passes its health checks again"
            ),
            Some(false) => tracing::warn!(
                service = service.name(),
                endpoint = %upstream.endpoint().id,
                failures = config.unhealthy_threshold,
                "endpoint failed its health checks; not balanced over"
            ),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_flip_the_state() {
        let config = Health {
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            ..Health::default()
        };
        let state = HealthState::default();
        assert!(state.healthy());
        assert_eq!(state.record(false, &config), None);
        assert_eq!(state.record(false, &config), None);
        assert_eq!(state.record(true, &config), None);
        assert_eq!(state.record(false, &config), None);
        assert_eq!(state.record(false, &config), None);
        assert_eq!(state.record(false, &config), Some(false));
        assert!(!state.healthy());
        assert_eq!(state.record(false, &config), None);
        assert_eq!(state.record(true, &config), None);
        assert_eq!(state.record(true, &config), Some(true));
        assert!(state.healthy());
    }
}
