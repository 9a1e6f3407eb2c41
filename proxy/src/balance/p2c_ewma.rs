//! `p2c_ewma` (the default): power of two choices over a peak-EWMA latency estimate, as
//! linkerd2-proxy does. Each endpoint keeps an estimate of its response latency that jumps
//! up at once to a slower sample (the "peak") and decays towards faster ones with a 10 s
//! time constant; a pick draws two endpoints at random and takes the one with the lower
//! estimate × (in-flight + 1). Latency is sampled when the response head arrives. An
//! endpoint with no sample yet is tried at once, one request at a time, as Finagle's
//! balancer does: started at linkerd's default of 30 ms instead, a new endpoint lost every
//! pick to endpoints answering in a millisecond until that had decayed, some 40 s.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::two_choices;
use crate::endpoint::{now_ns, ns_at, Upstream};

/// How fast the estimate forgets: the time constant of the exponential decay.
const DECAY: Duration = Duration::from_secs(10);
/// The cost of each request in flight to an endpoint that has not answered yet: more than
/// any estimate, so that it gets its second request only once its first has answered (or
/// when every endpoint is as new).
const UNKNOWN_PENALTY_NS: f64 = 1e12;

/// A peak-EWMA latency estimate in two atomics. Concurrent updates may lose one sample to
/// another; the estimate stays a sensible latency either way.
pub(crate) struct PeakEwma {
    rtt_ns: AtomicU64,
    stamp_ns: AtomicU64,
}

impl Default for PeakEwma {
    /// No sample yet: an estimate of 0, which the first sample replaces (it is the peak).
    fn default() -> Self {
        PeakEwma {
            rtt_ns: AtomicU64::new(0f64.to_bits()),
            stamp_ns: AtomicU64::new(now_ns()),
        }
    }
}

impl PeakEwma {
    /// The estimate decayed by the time since the last sample: an endpoint that has not
    /// been used for a while (perhaps because it was slow) looks cheaper and gets probed.
    fn decayed(&self, now: u64) -> (f64, f64) {
        let rtt = f64::from_bits(self.rtt_ns.load(Relaxed));
        let elapsed = now.saturating_sub(self.stamp_ns.load(Relaxed)) as f64;
        let weight = (-elapsed / DECAY.as_nanos() as f64).exp();
        (rtt * weight, weight)
    }

    /// No sample has come yet.
    fn unsampled(&self) -> bool {
        f64::from_bits(self.rtt_ns.load(Relaxed)) == 0.0
    }

    pub(crate) fn observe(&self, rtt: Duration) {
        self.observe_at(rtt, Instant::now());
    }

    /// A sample taken at `at`, an instant the caller has read anyway.
    pub(crate) fn observe_at(&self, rtt: Duration, at: Instant) {
        let now = ns_at(at);
        let sample = rtt.as_nanos() as f64;
        let (estimate, weight) = self.decayed(now);
        let next = if sample > estimate {
            sample
        } else {
            estimate * weight + sample * (1.0 - weight)
        };
        self.rtt_ns.store(next.to_bits(), Relaxed);
        self.stamp_ns.store(now, Relaxed);
    }
}

fn cost(endpoint: &Upstream, now: u64) -> f64 {
    let in_flight = endpoint.in_flight() as f64;
    let ewma = endpoint.ewma();
    // Never answered (the stored estimate, not the decayed one, which reaches 0 after some
    // hours without a sample): free while idle, dearer than any other while it is tried.
    if ewma.unsampled() {
        return in_flight * UNKNOWN_PENALTY_NS;
    }
    ewma.decayed(now).0 * (in_flight + 1.0)
}

/// Picks among the endpoints `ok` accepts.
pub(crate) fn pick(endpoints: &[Arc<Upstream>], ok: &impl Fn(usize) -> bool) -> Option<usize> {
    let (a, b) = two_choices(endpoints.len(), ok)?;
    if a == b {
        return Some(a);
    }
    // One clock read serves both estimates (and none is needed when there is no choice).
    let now = now_ns();
    if cost(&endpoints[a], now) <= cost(&endpoints[b], now) {
        Some(a)
    } else {
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{testing, Tried};

    impl PeakEwma {
        fn estimate_ns(&self) -> f64 {
            self.decayed(now_ns()).0
        }
    }

    #[test]
    fn peak_jumps_up_and_decays_slowly() {
        let ewma = PeakEwma::default();
        assert_eq!(ewma.estimate_ns(), 0.0);
        ewma.observe(Duration::from_millis(500));
        let peak = ewma.estimate_ns();
        assert!(peak > 490e6, "{peak}");
        ewma.observe(Duration::from_millis(1));
        // one fast sample right after barely moves a 10 s average
        assert!(ewma.estimate_ns() > 400e6);
    }

    #[test]
    fn avoids_the_slow_endpoint() {
        let set = testing::set(2, false);
        set.endpoints[0].ewma().observe(Duration::from_millis(400));
        set.endpoints[1].ewma().observe(Duration::from_millis(5));
        for _ in 0..100 {
            assert_eq!(
                pick(&set.endpoints, &testing::untried(&Tried::default())),
                Some(1)
            );
        }
    }

    #[test]
    fn avoids_the_loaded_endpoint_of_equal_latency() {
        let set = testing::set(2, false);
        let _busy: Vec<_> = (0..3).map(|_| set.endpoints[1].begin()).collect();
        for _ in 0..100 {
            assert_eq!(
                pick(&set.endpoints, &testing::untried(&Tried::default())),
                Some(0)
            );
        }
    }

    #[test]
    fn a_new_endpoint_is_tried_at_once_one_request_at_a_time() {
        let set = testing::set(2, false);
        // The first answers in a millisecond; the second has not answered yet.
        set.endpoints[0].ewma().observe(Duration::from_millis(1));
        let untried = Tried::default();
        assert_eq!(pick(&set.endpoints, &testing::untried(&untried)), Some(1));
        let _trying = set.endpoints[1].begin();
        for _ in 0..100 {
            assert_eq!(pick(&set.endpoints, &testing::untried(&untried)), Some(0));
        }
    }

    #[test]
    fn slow_endpoints_still_lose_among_many() {
        let set = testing::set(5, false);
        set.endpoints[2].ewma().observe(Duration::from_secs(2));
        let mut slow = 0;
        for _ in 0..1000 {
            if pick(&set.endpoints, &testing::untried(&Tried::default())) == Some(2) {
                slow += 1;
            }
        }
        assert_eq!(slow, 0);
    }

    #[test]
    fn respects_tried() {
        let set = testing::set(3, false);
        let mut tried = Tried::default();
        tried.insert(0);
        tried.insert(2);
        for _ in 0..20 {
            assert_eq!(pick(&set.endpoints, &testing::untried(&tried)), Some(1));
        }
    }
}
