//! When a failed attempt is sent again (SPEC.md "retries"):
//!
//! - a failed connect is retried on another endpoint when `on` lists `connect_failure`, at
//!   most `attempts` times: nothing reached the upstream, so it is safe for any request, and
//!   it costs the upstreams nothing, so it is outside the budget (each endpoint is tried at
//!   most once per request);
//! - a request handed back unsent (none of it was written: a pooled connection closed under
//!   it) is resent;
//! - a reset connection or a status listed in `on` is retried only for idempotent methods
//!   whose body is at most [`MAX_HELD_BODY`] (held in memory so it can be sent again), at
//!   most `attempts` times, and only while the service's retries in the last ten seconds
//!   stay under `budget_percent` of its requests, so a failing upstream is not hit by a
//!   retry storm.

use http::Method;
use shoal_config::{Retries, RetryOn};

use crate::load::Totals;

/// The largest request body read whole before the request goes upstream (when its length
/// is known): for retries, and for shoal's own client (see [`crate::client`]).
pub(crate) const MAX_HELD_BODY: u64 = 64 * 1024;

/// Retries the budget allows per window even at low traffic, so a service seeing a request
/// a minute still gets its retry (Envoy's retry budget has the same floor).
const MIN_RETRIES_PER_WINDOW: u64 = 3;

pub(crate) struct RetryPolicy {
    /// Retries after the first attempt, of every kind together.
    attempts: u32,
    on_connect_failure: bool,
    on_reset: bool,
    statuses: Vec<u16>,
    budget_percent: u32,
}

impl RetryPolicy {
    pub(crate) fn new(config: &Retries) -> RetryPolicy {
        RetryPolicy {
            attempts: config.attempts,
            on_connect_failure: config.on.contains(&RetryOn::ConnectFailure),
            on_reset: config.on.contains(&RetryOn::Reset),
            statuses: config
                .on
                .iter()
                .filter_map(|on| match on {
                    RetryOn::Status(status) => Some(*status),
                    _ => None,
                })
                .collect(),
            budget_percent: config.budget_percent,
        }
    }

    /// Whether any response or reset could be retried, i.e. whether holding a request's
    /// body for a second attempt can pay off.
    pub(crate) fn may_replay(&self, method: &Method) -> bool {
        self.attempts > 0
            && self.budget_percent > 0
            && (self.on_reset || !self.statuses.is_empty())
            && is_idempotent(method)
    }

    pub(crate) fn on_status(&self, status: u16) -> bool {
        self.statuses.contains(&status)
    }

    pub(crate) fn on_reset(&self) -> bool {
        self.on_reset
    }

    /// Whether failed connects are retried at all (`connect_failure` in `on`).
    pub(crate) fn retries_connects(&self) -> bool {
        self.on_connect_failure
    }

    /// Whether a failed connect may be retried after `done` retries of this request; the
    /// budget does not apply, as nothing reached an upstream.
    pub(crate) fn allows_connect_retry(&self, done: u32) -> bool {
        self.on_connect_failure && done < self.attempts
    }

    /// Whether one more retry fits: `done` retries so far for this request, `totals` the
    /// service's requests and retries in the window.
    pub(crate) fn allows(&self, done: u32, totals: Totals) -> bool {
        done < self.attempts && budget_allows(totals, self.budget_percent)
    }
}

/// RFC 9110 §9.2.2: methods whose repetition has the same effect as one request.
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The budget: retries may be at most `percent`% of requests in the window (with a small
/// floor), counting the retry being considered.
pub(crate) fn budget_allows(totals: Totals, percent: u32) -> bool {
    if percent == 0 {
        return false;
    }
    let cap = (totals.requests * u64::from(percent) / 100).max(MIN_RETRIES_PER_WINDOW);
    totals.retries < cap
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(requests: u64, retries: u64) -> Totals {
        Totals { requests, retries }
    }

    #[test]
    fn budget_caps_retries_at_a_share_of_requests() {
        assert!(budget_allows(totals(100, 19), 20));
        assert!(!budget_allows(totals(100, 20), 20));
        assert!(budget_allows(totals(1000, 199), 20));
        assert!(!budget_allows(totals(1000, 200), 20));
        assert!(budget_allows(totals(1000, 999), 100));
    }

    #[test]
    fn budget_has_a_floor_and_zero_disables() {
        assert!(budget_allows(totals(1, 0), 20));
        assert!(budget_allows(totals(1, 2), 20));
        assert!(!budget_allows(totals(1, 3), 20));
        assert!(!budget_allows(totals(1000, 0), 0));
    }

    #[test]
    fn attempts_limit_each_request() {
        let policy = RetryPolicy::new(&Retries::default());
        assert!(policy.allows(0, totals(10, 0)));
        assert!(policy.allows(1, totals(10, 0)));
        assert!(!policy.allows(2, totals(10, 0)));
    }

    #[test]
    fn only_idempotent_methods_replay() {
        let policy = RetryPolicy::new(&Retries::default());
        assert!(policy.may_replay(&Method::GET));
        assert!(policy.may_replay(&Method::PUT));
        assert!(!policy.may_replay(&Method::POST));
        assert!(!policy.may_replay(&Method::PATCH));
        assert!(policy.on_status(503));
        assert!(!policy.on_status(500));
        assert!(policy.on_reset());
        let none = RetryPolicy::new(&Retries {
            attempts: 0,
            ..Retries::default()
        });
        assert!(!none.may_replay(&Method::GET));
    }
}
