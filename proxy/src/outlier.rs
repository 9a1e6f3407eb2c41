//! Passive outlier detection (SPEC.md `outlier:`), for both kinds of service: an endpoint
//! that fails `consecutive_failures` requests in a row is ejected — skipped by every
//! balancer — for a while, then returns on its own.
//!
//! - A failure is a failed connect, a reset or broken response, a 5xx status from the
//!   upstream, or no answer within the request timeout: what Envoy's `consecutive_5xx`
//!   counts, its own 504 included, so that a hung endpoint that still accepts connections
//!   leaves the balancer. Any other answer resets the count.
//! - The n-th ejection in a row lasts `ejection × 2^(n-1)`, capped at [`MAX_EJECTION`] (or
//!   at `ejection` itself when that is longer). The count of ejections decays: after
//!   [`CLEAN_PERIODS`] × `ejection` without one, the next counts as the first again.
//! - At most `max_ejected_percent` of a service's endpoints are ejected at once, rounded
//!   down but never below one endpoint, as Envoy does ("will eject at least one host
//!   regardless of the value"): otherwise a service of fewer than `100 /
//!   max_ejected_percent` endpoints could never eject anything. `max_ejected_percent: 0`
//!   turns ejection off. Should every endpoint end up ejected or unhealthy, the balancer
//!   routes over all of them (panic routing, see [`crate::balance`]).
//! - An ejected endpoint returns when its time is up, noticed lazily by the next pick that
//!   looks at it; there is no timer per endpoint.
//!
//! Everything a request touches is an atomic on the endpoint. The only lock serialises
//! ejection decisions (so that two endpoints crossing the threshold together cannot both
//! pass the percentage check), and it is taken only when an endpoint reaches the
//! threshold.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use prometheus::IntCounter;
use shoal_config::Outlier;

use crate::endpoint::{now_ns, EndpointSet};

/// The longest ejection, however often an endpoint is ejected (Envoy's default
/// `max_ejection_time`).
pub(crate) const MAX_EJECTION: Duration = Duration::from_secs(300);
/// How many ejection times without an ejection make an endpoint's next ejection count as
/// its first again.
pub(crate) const CLEAN_PERIODS: u64 = 10;

/// One endpoint's failures and ejection.
#[derive(Default)]
pub(crate) struct OutlierState {
    /// Failures since the last success.
    failures: AtomicU32,
    /// When the current ejection ends (nanoseconds on [`now_ns`]'s clock); 0 when the
    /// endpoint is not ejected, so the common check is one load and no clock read.
    ejected_until: AtomicU64,
    /// When the last ejection ended or will end, kept for the decay of `times_ejected`.
    last_ejection_end: AtomicU64,
    times_ejected: AtomicU32,
}

impl OutlierState {
    /// Whether the endpoint is ejected now; an ejection whose time is up is cleared here.
    #[inline]
    pub(crate) fn ejected(&self) -> bool {
        let until = self.ejected_until.load(Relaxed);
        if until == 0 {
            return false;
        }
        if now_ns() < until {
            return true;
        }
        // Back in rotation; whichever pick notices first clears it (a racing new ejection
        // wins the compare-exchange and stays).
        let _ = self
            .ejected_until
            .compare_exchange(until, 0, Relaxed, Relaxed);
        false
    }

    fn success(&self) {
        // Skip the store in the common case so a healthy endpoint's cache line is not
        // written by every response.
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
    }

    /// Counts a failure; returns the failures in a row.
    fn failure(&self) -> u32 {
        self.failures.fetch_add(1, Relaxed).saturating_add(1)
    }
}

/// A service's outlier rules.
pub(crate) struct OutlierPolicy {
    consecutive_failures: u32,
    ejection: Duration,
    max_ejected_percent: u32,
    ejections: IntCounter,
    /// Serialises ejection decisions; see the module docs.
    deciding: Mutex<()>,
}

impl OutlierPolicy {
    pub(crate) fn new(config: &Outlier, ejections: IntCounter) -> OutlierPolicy {
        OutlierPolicy {
            consecutive_failures: config.consecutive_failures.max(1),
            ejection: config.ejection,
            max_ejected_percent: config.max_ejected_percent.min(100),
            ejections,
            deciding: Mutex::new(()),
        }
    }

    /// Records the outcome of a request to endpoint `index` of `set`.
    #[inline]
    pub(crate) fn record(&self, service: &str, set: &EndpointSet, index: usize, success: bool) {
        let Some(upstream) = set.endpoints.get(index) else {
            return;
        };
        let state = &upstream.outlier;
        if success {
            state.success();
        } else if state.failure() >= self.consecutive_failures {
            self.eject(service, set, index);
        }
    }

    /// Ejects endpoint `index` unless it is ejected already or the service's share of
    /// ejected endpoints is used up.
    fn eject(&self, service: &str, set: &EndpointSet, index: usize) {
        if self.max_ejected_percent == 0 || self.ejection.is_zero() {
            return;
        }
        let _deciding = self.deciding.lock().unwrap_or_else(|e| e.into_inner());
        let upstream = &set.endpoints[index];
        let state = &upstream.outlier;
        if state.ejected() {
            return;
        }
        let n = set.endpoints.len();
        let allowed = (n * self.max_ejected_percent as usize / 100).max(1);
        let ejected = set.endpoints.iter().filter(|u| u.outlier.ejected()).count();
        if ejected >= allowed {
            return;
        }
        let now = now_ns();
        let base = duration_ns(self.ejection);
        let decayed = state
            .last_ejection_end
            .load(Relaxed)
            .saturating_add(base.saturating_mul(CLEAN_PERIODS));
        if now >= decayed {
            state.times_ejected.store(0, Relaxed);
        }
        let times = state.times_ejected.fetch_add(1, Relaxed).saturating_add(1);
        let length = ejection_length(self.ejection, times);
        let until = now.saturating_add(duration_ns(length)).max(1);
        state.failures.store(0, Relaxed);
        state.last_ejection_end.store(until, Relaxed);
        state.ejected_until.store(until, Relaxed);
        self.ejections.inc();
        tracing::warn!(
            service,
            endpoint = %upstream.endpoint().id,
            address = %upstream.endpoint().address,
            ejection = ?length,
            times,
            "endpoint ejected after consecutive failures"
        );
    }
}

/// How long the `times`-th ejection in a row lasts.
pub(crate) fn ejection_length(base: Duration, times: u32) -> Duration {
    let cap = MAX_EJECTION.max(base);
    // 2^20 × any base is past the cap already; the shift stays in range.
    let factor = 1u32 << times.saturating_sub(1).min(20);
    base.checked_mul(factor).map_or(cap, |d| d.min(cap))
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing;

    fn policy(consecutive_failures: u32, max_ejected_percent: u32) -> OutlierPolicy {
        OutlierPolicy::new(
            &Outlier {
                consecutive_failures,
                ejection: Duration::from_secs(10),
                max_ejected_percent,
            },
            IntCounter::new("ejections", "test").unwrap(),
        )
    }

    #[test]
    fn ejection_doubles_and_is_capped() {
        let base = Duration::from_secs(10);
        assert_eq!(ejection_length(base, 1), base);
        assert_eq!(ejection_length(base, 2), Duration::from_secs(20));
        assert_eq!(ejection_length(base, 3), Duration::from_secs(40));
        assert_eq!(ejection_length(base, 10), MAX_EJECTION);
        assert_eq!(ejection_length(base, u32::MAX), MAX_EJECTION);
        let long = Duration::from_secs(600);
        assert_eq!(ejection_length(long, 3), long);
    }

    #[test]
    fn consecutive_failures_eject_and_success_resets() {
        let set = testing::set(4, false);
        let policy = policy(3, 50);
        policy.record("svc", &set, 0, false);
        policy.record("svc", &set, 0, false);
        policy.record("svc", &set, 0, true);
        policy.record("svc", &set, 0, false);
        policy.record("svc", &set, 0, false);
        assert!(!set.endpoints[0].outlier.ejected());
        policy.record("svc", &set, 0, false);
        assert!(set.endpoints[0].outlier.ejected());
        assert_eq!(policy.ejections.get(), 1);
        assert_eq!(set.endpoints[0].outlier.times_ejected.load(Relaxed), 1);
    }

    #[test]
    fn share_of_ejected_endpoints_is_bounded() {
        let set = testing::set(4, false);
        let policy = policy(1, 50);
        for index in 0..4 {
            policy.record("svc", &set, index, false);
        }
        let ejected = set.endpoints.iter().filter(|u| u.outlier.ejected()).count();
        assert_eq!(ejected, 2);

        // One endpoint at 50% rounds down to none, but one may always be ejected.
        let one = testing::set(1, false);
        policy.record("svc", &one, 0, false);
        assert!(one.endpoints[0].outlier.ejected());

        let off = testing::set(2, false);
        let disabled = self::policy(1, 0);
        disabled.record("svc", &off, 0, false);
        assert!(!off.endpoints[0].outlier.ejected());
    }

    #[test]
    fn repeated_ejections_double_and_the_count_decays() {
        let set = testing::set(2, false);
        let policy = OutlierPolicy::new(
            &Outlier {
                consecutive_failures: 1,
                ejection: Duration::from_millis(2),
                max_ejected_percent: 50,
            },
            IntCounter::new("ejections", "test").unwrap(),
        );
        let state = &set.endpoints[0].outlier;
        policy.record("svc", &set, 0, false);
        assert_eq!(state.times_ejected.load(Relaxed), 1);
        // Back after 2 ms, ejected again well within the clean period of 20 ms.
        std::thread::sleep(Duration::from_millis(3));
        policy.record("svc", &set, 0, false);
        assert_eq!(state.times_ejected.load(Relaxed), 2);
        // After 4 ms more and then the clean period, the next ejection is a first again.
        std::thread::sleep(Duration::from_millis(30));
        policy.record("svc", &set, 0, false);
        assert_eq!(state.times_ejected.load(Relaxed), 1);
        assert_eq!(policy.ejections.get(), 3);
    }

    #[test]
    fn expired_ejection_returns_the_endpoint() {
        let set = testing::set(2, false);
        let state = &set.endpoints[0].outlier;
        state
            .ejected_until
            .store(now_ns().saturating_sub(1).max(1), Relaxed);
        assert!(!state.ejected());
        assert_eq!(state.ejected_until.load(Relaxed), 0);
    }
}
