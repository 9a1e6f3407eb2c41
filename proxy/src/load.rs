//! Per-service load over a rolling window: requests per second, retries (for the retry
//! budget) and a latency histogram for p99, all in atomics so recording a request takes no
//! lock. The window is [`SLOTS`] one-second slots reused round-robin; a slot is reset by
//! the first request that lands in it in a new second. Racing requests at a second's edge
//! can be lost or counted in the wrong second — fine for autoscaling and budgets, which
//! only need the rate, and cheaper than any exact scheme.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Seconds in the window: ten whole seconds plus the current, partial one.
pub(crate) const SLOTS: usize = 11;
/// The most of one request's duration counted in [`LoadSnapshot::busy`]. `busy` is there for
/// the requests the autoscaler's in-flight samples (every 100 ms) miss; a longer one shows
/// in them while it runs, and counting its whole duration in the tick it ends in would read
/// one 15 s request as 15 in flight for that tick.
const BUSY_CAP: Duration = Duration::from_millis(100);
/// Latency bins: four per power of two of microseconds, from 1 µs to about 2^27 µs (134 s).
const BINS: usize = 28 * 4;

/// What the autoscaler and `/api/v1/status` read about a service's load.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct LoadSnapshot {
    /// Requests routed to the service and not yet finished, except held ones (`queued`).
    pub in_flight: u64,
    /// Requests per second over the last ten whole seconds.
    pub rps: f64,
    /// Requests in the last whole second: what the autoscaler's windows average (Knative's
    /// per-second buckets; averaging `rps` again would blunt the panic window).
    #[serde(skip)]
    pub rps_last_second: f64,
    /// 99th percentile of request duration (to the end of the response), over the last ten
    /// seconds and the current one; 0 when there were no requests. The upper bound of its
    /// histogram bin (a quarter of an octave wide), but never more than the longest request
    /// seen, so that requests alike in length read as their length, not up to 25% more.
    pub p99_ms: f64,
    /// Requests held waiting for a ready endpoint (container services scaled to zero);
    /// they are not in `in_flight` until released.
    pub queued: u64,
    /// The summed durations of every request finished so far, each counted up to
    /// [`BUSY_CAP`] and only since the autoscaler's reading before it ended
    /// ([`ServiceHandle::tick_load`](crate::ServiceHandle::tick_load)): for requests that
    /// short, the time-integral of the in-flight count over them, the autoscaler's exact
    /// concurrency over a tick, where sampling `in_flight` misses requests shorter than the
    /// sampling period. Never more than that integral, so never more than the most requests
    /// in flight: a request that spans two ticks counting whole in the second read 50 in
    /// flight as 50.01, one replica too many once rounded up.
    #[serde(skip)]
    pub busy: Duration,
}

struct Slot {
    /// The second this slot holds, plus one; 0 means never used.
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    latency: [AtomicU64; BINS],
    /// The longest request of the second, in microseconds.
    longest_us: AtomicU64,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            second: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            longest_us: AtomicU64::new(0),
        }
    }
}

/// Sums over the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Totals {
    pub(crate) requests: u64,
    pub(crate) retries: u64,
}

pub(crate) struct Window {
    start: Instant,
    slots: Box<[Slot]>,
    /// Nanoseconds: see [`LoadSnapshot::busy`].
    busy: AtomicU64,
    /// When the autoscaler last read `busy` (nanoseconds since `start`).
    tick: AtomicU64,
}

impl Window {
    pub(crate) fn new() -> Window {
        Window {
            start: Instant::now(),
            slots: (0..SLOTS).map(|_| Slot::new()).collect(),
            busy: AtomicU64::new(0),
            tick: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    /// The window's second that `at` falls in; the request path passes the instants it
    /// has read anyway instead of reading the clock again.
    fn second_of(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_secs()
    }

    /// The slot for `second`, reset first if it still holds an older second.
    fn slot(&self, second: u64) -> &Slot {
        let slot = &self.slots[(second % SLOTS as u64) as usize];
        let tag = second + 1;
        let seen = slot.second.load(Relaxed);
        if seen != tag
            && slot
                .second
                .compare_exchange(seen, tag, Relaxed, Relaxed)
                .is_ok()
        {
            slot.requests.store(0, Relaxed);
            slot.retries.store(0, Relaxed);
            slot.longest_us.store(0, Relaxed);
            for bin in &slot.latency {
                bin.store(0, Relaxed);
            }
        }
        slot
    }

    pub(crate) fn record_request(&self, at: Instant) {
        self.record_request_at(self.second_of(at));
    }

    pub(crate) fn record_retry(&self) {
        self.slot(self.now()).retries.fetch_add(1, Relaxed);
    }

    /// A request that ended at `at` after `elapsed`, the last `in_flight` of it in flight
    /// (the rest held in the queue, which the autoscaler counts apart).
    pub(crate) fn record_latency(&self, at: Instant, elapsed: Duration, in_flight: Duration) {
        let since_start = at.saturating_duration_since(self.start);
        self.record_latency_at(since_start.as_secs(), elapsed);
        let since_tick = since_start.saturating_sub(Duration::from_nanos(self.tick.load(Relaxed)));
        let busy = in_flight.min(BUSY_CAP).min(since_tick);
        let nanos = u64::try_from(busy.as_nanos()).unwrap_or(u64::MAX);
        self.busy.fetch_add(nanos, Relaxed);
    }

    /// See [`LoadSnapshot::busy`].
    pub(crate) fn busy(&self) -> Duration {
        Duration::from_nanos(self.busy.load(Relaxed))
    }

    /// [`Window::busy`] for the autoscaler's tick, which requests finishing from now on
    /// count from.
    pub(crate) fn tick_busy(&self) -> Duration {
        let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.tick.store(now, Relaxed);
        self.busy()
    }

    fn record_request_at(&self, second: u64) {
        self.slot(second).requests.fetch_add(1, Relaxed);
    }

    fn record_latency_at(&self, second: u64, elapsed: Duration) {
        let slot = self.slot(second);
        slot.latency[bin_of(elapsed)].fetch_add(1, Relaxed);
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        // Read first: a request longer than every other of its second is rare.
        if us > slot.longest_us.load(Relaxed) {
            slot.longest_us.fetch_max(us, Relaxed);
        }
    }

    /// Slots holding one of the last [`SLOTS`] seconds up to `now`, and whether each is
    /// the current (partial) second.
    fn recent(&self, now: u64) -> impl Iterator<Item = (&Slot, bool)> {
        self.slots.iter().filter_map(move |slot| {
            let tag = slot.second.load(Relaxed);
            let second = tag.checked_sub(1)?;
            (second <= now && now - second < SLOTS as u64).then_some((slot, second == now))
        })
    }

    /// Requests and retries in the window, the current second included.
    pub(crate) fn totals(&self) -> Totals {
        let mut totals = Totals::default();
        for (slot, _) in self.recent(self.now()) {
            totals.requests += slot.requests.load(Relaxed);
            totals.retries += slot.retries.load(Relaxed);
        }
        totals
    }

    /// Requests per second over the whole seconds of the window (fewer right after start).
    pub(crate) fn rps(&self) -> f64 {
        self.rps_at(self.now())
    }

    /// Requests in the last whole second.
    pub(crate) fn rps_last_second(&self) -> f64 {
        self.rps_last_second_at(self.now())
    }

    fn rps_last_second_at(&self, now: u64) -> f64 {
        let Some(last) = now.checked_sub(1) else {
            return 0.0;
        };
        self.recent(last)
            .find(|(_, current)| *current)
            .map_or(0.0, |(slot, _)| slot.requests.load(Relaxed) as f64)
    }

    fn rps_at(&self, now: u64) -> f64 {
        let whole = now.min(SLOTS as u64 - 1);
        if whole == 0 {
            return 0.0;
        }
        let requests: u64 = self
            .recent(now)
            .filter(|(_, current)| !current)
            .map(|(slot, _)| slot.requests.load(Relaxed))
            .sum();
        requests as f64 / whole as f64
    }

    /// The 99th percentile latency in milliseconds over the window (upper bound of its bin).
    pub(crate) fn p99_ms(&self) -> f64 {
        self.p99_ms_at(self.now())
    }

    fn p99_ms_at(&self, now: u64) -> f64 {
        let mut bins = [0u64; BINS];
        let mut longest_us = 0;
        for (slot, _) in self.recent(now) {
            for (sum, bin) in bins.iter_mut().zip(&slot.latency) {
                *sum += bin.load(Relaxed);
            }
            longest_us = longest_us.max(slot.longest_us.load(Relaxed));
        }
        let total: u64 = bins.iter().sum();
        if total == 0 {
            return 0.0;
        }
        // The smallest bin at which at least 99% of samples are at or below it.
        let rank = total - total / 100;
        let mut seen = 0;
        for (index, count) in bins.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return upper_bound_us(index).min(longest_us) as f64 / 1000.0;
            }
        }
        upper_bound_us(BINS - 1).min(longest_us) as f64 / 1000.0
    }
}

/// Four bins per power of two: the exponent picks the octave, the next two bits the quarter.
fn bin_of(elapsed: Duration) -> usize {
    let us = u64::try_from(elapsed.as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    let exponent = 63 - us.leading_zeros() as usize;
    let quarter = if exponent >= 2 {
        ((us >> (exponent - 2)) & 3) as usize
    } else {
        (us << (2 - exponent)) as usize & 3
    };
    (exponent * 4 + quarter).min(BINS - 1)
}

/// The largest microsecond value that falls into `bin` (rounded up to the next bin's start).
fn upper_bound_us(bin: usize) -> u64 {
    let next = bin + 1;
    let exponent = next / 4;
    let quarter = (next % 4) as u64;
    (1u64 << exponent) + ((quarter << exponent) >> 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_grow_with_latency_and_bound_it() {
        let mut last = 0;
        for us in [1u64, 2, 3, 5, 10, 100, 999, 1000, 5000, 123_456, 10_000_000] {
            let bin = bin_of(Duration::from_micros(us));
            assert!(bin >= last, "{us} µs went to bin {bin} below {last}");
            assert!(upper_bound_us(bin) >= us, "{us} µs above its bin's bound");
            // within 25% + rounding of the true value
            assert!(upper_bound_us(bin) as f64 <= us as f64 * 1.26 + 1.0);
            last = bin;
        }
    }

    #[test]
    fn busy_sums_the_durations_of_finished_requests() {
        let window = Window::new();
        assert_eq!(window.busy(), Duration::ZERO);
        let now = window.start + Duration::from_secs(30);
        window.record_latency(now, Duration::from_micros(400), Duration::from_micros(400));
        window.record_latency(now, Duration::from_millis(2), Duration::from_millis(2));
        assert_eq!(window.busy(), Duration::from_micros(2400));
        // A long request counts up to the cap: the in-flight samples saw it while it ran.
        window.record_latency(now, Duration::from_secs(15), Duration::from_secs(15));
        assert_eq!(window.busy(), Duration::from_micros(2400) + BUSY_CAP);
    }

    #[test]
    fn busy_counts_a_held_request_only_since_its_release() {
        let window = Window::new();
        let now = window.start + Duration::from_secs(30);
        // Held 900 ms, then in flight 20 ms: the autoscaler counted the 900 ms as queued.
        window.record_latency(now, Duration::from_millis(920), Duration::from_millis(20));
        assert_eq!(window.busy(), Duration::from_millis(20));
    }

    #[test]
    fn busy_counts_a_request_only_since_the_autoscaler_s_last_reading() {
        let window = Window::new();
        window.tick.store(5_000_000_000, Relaxed);
        let tick = window.start + Duration::from_secs(5);
        // 80 ms long, ended 30 ms after the reading: the 50 ms before were the last tick's.
        window.record_latency(
            tick + Duration::from_millis(30),
            Duration::from_millis(80),
            Duration::from_millis(80),
        );
        assert_eq!(window.busy(), Duration::from_millis(30));
        // A reading moves the mark to now: a request ending at once counts (almost) nothing.
        assert_eq!(window.tick_busy(), Duration::from_millis(30));
        window.record_latency(
            Instant::now(),
            Duration::from_millis(80),
            Duration::from_millis(80),
        );
        assert!(
            window.busy() < Duration::from_millis(40),
            "{:?}",
            window.busy()
        );
    }

    #[test]
    fn rps_of_the_last_whole_second() {
        let window = Window::new();
        assert_eq!(window.rps_last_second_at(0), 0.0);
        for _ in 0..7 {
            window.record_request_at(3);
        }
        window.record_request_at(4);
        assert_eq!(window.rps_last_second_at(4), 7.0);
        assert_eq!(window.rps_last_second_at(5), 1.0);
        // a second without requests reads 0, not what its slot held before
        assert_eq!(window.rps_last_second_at(6), 0.0);
        assert_eq!(window.rps_last_second_at(4 + SLOTS as u64), 0.0);
    }

    #[test]
    fn rps_counts_whole_seconds_only() {
        let window = Window::new();
        for second in 0..5 {
            for _ in 0..10 {
                window.record_request_at(second);
            }
        }
        // at second 5, seconds 0..=4 are whole: 50 requests over 5 s
        assert_eq!(window.rps_at(5), 10.0);
        // the partial current second does not count
        window.record_request_at(5);
        assert_eq!(window.rps_at(5), 10.0);
        // later, old seconds fall out of the window
        assert_eq!(window.rps_at(20), 0.0);
        // a steady rate reads as itself over a full window
        let steady = Window::new();
        for second in 0..30 {
            for _ in 0..7 {
                steady.record_request_at(second);
            }
        }
        assert_eq!(steady.rps_at(29), 7.0);
    }

    #[test]
    fn instants_count_in_their_own_second() {
        let window = Window::new();
        window.record_request(window.start + Duration::from_millis(2500));
        window.record_latency(
            window.start + Duration::from_secs(2),
            Duration::from_millis(7),
            Duration::from_millis(7),
        );
        assert_eq!(window.slot(2).requests.load(Relaxed), 1);
        let latencies: u64 = window
            .slot(2)
            .latency
            .iter()
            .map(|bin| bin.load(Relaxed))
            .sum();
        assert_eq!(latencies, 1);
        // an instant from before the window counts in its first second
        let before = window.start.checked_sub(Duration::from_millis(1)).unwrap();
        window.record_request(before);
        assert_eq!(window.slot(0).requests.load(Relaxed), 1);
    }

    #[test]
    fn slots_are_reused_for_new_seconds() {
        let window = Window::new();
        window.record_request_at(3);
        window.record_request_at(3 + SLOTS as u64);
        let slot = window.slot(3 + SLOTS as u64);
        assert_eq!(slot.requests.load(Relaxed), 1);
    }

    #[test]
    fn p99_follows_the_slow_tail() {
        let window = Window::new();
        for _ in 0..990 {
            window.record_latency_at(1, Duration::from_millis(2));
        }
        assert!((2.0..2.6).contains(&window.p99_ms_at(1)));
        for _ in 0..20 {
            window.record_latency_at(1, Duration::from_millis(300));
        }
        let p99 = window.p99_ms_at(1);
        assert!((300.0..380.0).contains(&p99), "p99 {p99}");
        assert_eq!(Window::new().p99_ms_at(1), 0.0);
    }

    #[test]
    fn p99_is_never_more_than_the_longest_request() {
        let window = Window::new();
        // 170 ms falls in the bin that ends at 196.608 ms.
        for _ in 0..100 {
            window.record_latency_at(1, Duration::from_millis(170));
        }
        assert_eq!(window.p99_ms_at(1), 170.0);
    }
}
