//! The scaling policy: pure math from observations to a replica count, with its reason.
//!
//! A [`Policy`] is built from a service's `scale:` block and fed one [`Observation`] per
//! `tick`; each call returns a [`Decision`] saying how many replicas the service should have,
//! the inputs that led there, and a sentence a person can read. Nothing here does I/O or reads
//! a clock: time is the `at` the caller passes in (monotonic time since start, or simulated
//! time in `shoal simulate` and the tests), so a policy can be replayed against a trace.
//!
//! - `metric: concurrency` and `metric: rps` follow Knative's autoscaler ([`knative`]):
//!   stable and panic windows, panic only scales up.
//! - `metric: cpu` follows the Kubernetes HPA rule ([`hpa`]) with `tolerance`.
//!
//! Both then go through the same steps, in this order: the rate limits
//! (`scale_up_rate`, `scale_down_rate`), no scale-down in panic, `scale_down_delay`, scale to
//! zero (`zero_grace`) and activation from zero, no going below `initial` before that many
//! replicas have been ready at once (or a whole `window` has passed), and finally `min`/`max`.
//!
//! ```
//! use std::time::Duration;
//! use shoal_autoscaler::policy::{Observation, Policy};
//!
//! let scale = shoal_config::Scale::default(); // concurrency, target 100 × 0.7
//! let mut policy = Policy::new(&scale);
//! assert_eq!(policy.current(), 1); // scale.initial
//! let decision = policy.observe(Observation {
//!     at: Duration::from_secs(1),
//!     value: 600.0,
//!     requests: true,
//!     ready: 1,
//!     starting: 0,
//! });
//! // Windows not yet full average what they have: 600 / (100 × 0.7) → 9.
//! assert_eq!(decision.to, 9);
//! assert!(decision.panic);
//! assert_eq!(decision.reason, "panic, 9 ≥ 2.0 × 1 ready: 6s concurrency 600.0 / (target 100 × 0.7) → 9 (+8)");
//! ```

mod hpa;
mod knative;

use std::time::Duration;

use shoal_config::{Scale, ScaleMetric};

/// Float noise must not add a replica: 140.0 / 70.0 may come out a hair above 2.
const CEIL_SLACK: f64 = 1e-9;

/// What the service looked like over the tick that ended at `at`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// When the tick ended: monotonic (or simulated) time since the service started. Must
    /// not go backwards; ticks are expected `scale.tick` apart.
    pub at: Duration,
    /// The load over the tick, in the unit of `scale.metric`:
    /// - `concurrency`: in-flight requests averaged over the tick, **including requests held
    ///   in the activator's queue** (waiting for a replica) — that is how traffic reaches a
    ///   service at zero replicas;
    /// - `rps`: requests per second over the tick, including held ones;
    /// - `cpu`: CPU use as a percentage of `resources.cpus`, summed over the ready replicas
    ///   (three ready replicas at 80% each: 240). See [`cpu_percent`].
    pub value: f64,
    /// Whether the service had any request over the tick: in flight (an open tunnel too),
    /// finished within it, or held. With `min: 0` a service goes to zero after `zero_grace`
    /// without one whatever its metric: CPU that replicas use on their own (health checks,
    /// timers) is not traffic, and would otherwise keep one replica for ever.
    pub requests: bool,
    /// Replicas taking traffic (passed their first health check).
    pub ready: u32,
    /// Replicas started but not ready yet. They carry no load and report no CPU.
    pub starting: u32,
}

/// What a decision was computed from, for `shoal status`, logs and `shoal simulate`.
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    /// This tick's [`Observation::value`].
    pub observed: f64,
    /// Concurrency/rps: the average over the stable `window`; `None` for cpu.
    pub stable: Option<f64>,
    /// Concurrency/rps: the average over `panic_window`; `None` for cpu.
    pub panic: Option<f64>,
    /// Cpu: average utilisation per ready replica over `target` (1.0 is on target);
    /// `None` for concurrency/rps, and for cpu while no replica is ready.
    pub ratio: Option<f64>,
    /// What one replica should carry: `target × utilization` (concurrency/rps), or `target`
    /// (cpu, in percent).
    pub per_replica: f64,
    /// The metric rule's own count (in panic: the higher of the stable and panic desires;
    /// cpu: the HPA recommendation), before rate limits, delay, zero and bounds.
    pub desired_raw: u32,
    pub ready: u32,
    pub starting: u32,
}

/// One decision of the policy. `to` is the replica count the service should have now.
#[must_use = "a decision does nothing until its `to` is applied"]
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub at: Duration,
    /// The desired count before this decision.
    pub from: u32,
    /// The desired count after it (equal to `from` when nothing changes).
    pub to: u32,
    /// In Knative's panic mode (the `shoal_autoscaler_panic` gauge); always false for cpu.
    pub panic: bool,
    /// A sentence such as
    /// `stable concurrency 142.0 over 60s / (target 100 × 0.7) → 3 (+1)`.
    pub reason: String,
    pub inputs: Inputs,
}

/// Which way a decision moved the count (the `direction` label of
/// `shoal_scale_decisions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

impl Direction {
    /// The way a count moved from `from` to `to`; `None` when it did not.
    pub fn between(from: u32, to: u32) -> Option<Direction> {
        match to.cmp(&from) {
            std::cmp::Ordering::Greater => Some(Direction::Up),
            std::cmp::Ordering::Less => Some(Direction::Down),
            std::cmp::Ordering::Equal => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

impl Decision {
    /// `None` when the count did not change.
    pub fn direction(&self) -> Option<Direction> {
        Direction::between(self.from, self.to)
    }
}

/// CPU use over an interval as a percentage of `cpus` cores (one core when the container
/// has no CPU limit): the unit of [`Observation::value`] for `metric: cpu`.
///
/// ```
/// # use std::time::Duration;
/// // 0.25 CPU-seconds in one second of a half-core container: 50%.
/// assert_eq!(shoal_autoscaler::policy::cpu_percent(0.25, Duration::from_secs(1), Some(0.5)), 50.0);
/// ```
pub fn cpu_percent(cpu_seconds: f64, elapsed: Duration, cpus: Option<f64>) -> f64 {
    let cores = cpus.filter(|c| c.is_finite() && *c > 0.0).unwrap_or(1.0);
    let elapsed = elapsed.as_secs_f64();
    if elapsed <= 0.0 || !cpu_seconds.is_finite() {
        return 0.0;
    }
    (cpu_seconds / elapsed / cores * 100.0).max(0.0)
}

/// The scaling policy of one service. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Policy {
    scale: Scale,
    rule: Rule,
    current: u32,
    /// Start of the current run of zero-load ticks (the start of the first such tick).
    idle_since: Option<Duration>,
    /// `(at, count)` of recent counts, for `scale_down_delay`.
    delayed: std::collections::VecDeque<(Duration, u32)>,
    /// Whether `scale.initial` replicas have been ready at once (Knative's "scale target
    /// initialized"), or a whole `window` has been observed without that; until then no
    /// decision goes below `initial`.
    initialized: bool,
    /// The time of the first observation.
    first_at: Option<Duration>,
}

#[derive(Debug, Clone)]
enum Rule {
    Knative(knative::Knative),
    Hpa(hpa::Hpa),
}

/// What a metric rule proposes, before the shared steps.
struct Proposal {
    count: u32,
    panic: bool,
    inputs: Inputs,
    /// The reason so far, e.g. `stable concurrency 142.0 over 60s / (target 100 × 0.7)`.
    basis: String,
    /// What the rule did to its own count (holding in panic, tolerance, stabilisation).
    steps: Vec<String>,
}

/// The bounds the rate limits put on one decision.
#[derive(Debug, Clone, Copy)]
struct RateLimits {
    floor: u32,
    cap: u32,
}

impl RateLimits {
    fn apply(self, count: u32) -> u32 {
        count.max(self.floor).min(self.cap)
    }
}

impl Policy {
    /// A policy for a service with this `scale:` block. Values outside what validation
    /// allows do not panic; they make for odd decisions.
    pub fn new(scale: &Scale) -> Policy {
        let rule = match scale.metric {
            ScaleMetric::Concurrency | ScaleMetric::Rps => {
                Rule::Knative(knative::Knative::new(scale))
            }
            ScaleMetric::Cpu => Rule::Hpa(hpa::Hpa::new(scale)),
        };
        Policy {
            current: scale.initial(),
            scale: scale.clone(),
            rule,
            idle_since: None,
            delayed: std::collections::VecDeque::new(),
            initialized: false,
            first_at: None,
        }
    }

    /// The desired count now: `scale.initial` (within `min..=max`) before any observation,
    /// then the `to` of the last decision.
    pub fn current(&self) -> u32 {
        self.current
    }

    /// Whether the last decision was in panic mode.
    pub fn panicking(&self) -> bool {
        match &self.rule {
            Rule::Knative(k) => k.panicking(),
            Rule::Hpa(_) => false,
        }
    }

    /// Tells the policy the count someone else set (e.g. after `shoal scale SERVICE N` was
    /// handed back with `auto`), so that the next decision starts from there.
    pub fn set_current(&mut self, replicas: u32) {
        self.current = replicas;
        // Someone else has set the count: `initial` has had its turn, and the counts the
        // delay held were the policy's own, which that count replaces (while a pin lasts
        // they are worked out from the pinned count; released, they would raise an idle
        // service above the count it was left at).
        self.initialized = true;
        self.delayed.clear();
    }

    /// One tick: records the observation and decides the count.
    pub fn observe(&mut self, obs: Observation) -> Decision {
        let obs = Observation {
            value: if obs.value.is_finite() {
                obs.value.max(0.0)
            } else {
                0.0
            },
            ..obs
        };
        let from = self.current;
        let limits = self.rate_limits(obs.ready);
        let proposal = match &mut self.rule {
            Rule::Knative(k) => k.propose(&obs),
            Rule::Hpa(h) => h.propose(&obs, from),
        };
        let Proposal {
            mut count,
            mut panic,
            inputs,
            basis,
            mut steps,
        } = proposal;

        let limited = limits.apply(count);
        if limited > count {
            steps.push(format!(
                "at most ÷{} of {} ready",
                self.scale.scale_down_rate, obs.ready
            ));
        } else if limited < count {
            steps.push(format!(
                "at most ×{} of {} ready",
                self.scale.scale_up_rate, obs.ready
            ));
        }
        count = limited;
        if panic && count < from {
            steps.push(format!("not scaling down in panic, holding {from}"));
            count = from;
        }

        // Zero, and back from zero, are decided on this tick's load, not on the windows.
        if obs.requests {
            self.idle_since = None;
        } else if self.idle_since.is_none() {
            self.idle_since = Some(obs.at.saturating_sub(self.scale.tick));
        }
        let idle = self.idle_since.map(|since| obs.at.saturating_sub(since));
        // Where a rule below replaces the basis, the count it stands for replaces the raw one.
        let (mut basis, mut raw) = (basis, inputs.desired_raw);
        let grace = self.scale.zero_grace.max(self.scale.scale_down_delay);
        let at_zero = (obs.ready == 0 && obs.value > 0.0) || (from == 0 && obs.value <= 0.0);
        let idle_long =
            idle.filter(|idle| self.scale.min == 0 && !panic && !at_zero && *idle >= grace);
        if let Some(idle) = idle_long {
            basis = format!(
                "idle for {} (zero_grace{})",
                secs(idle),
                if self.scale.scale_down_delay > self.scale.zero_grace {
                    ", scale_down_delay"
                } else {
                    ""
                }
            );
            steps.clear();
            (count, raw) = (0, 0);
            // Going to zero is a scale-in like any other: at most ÷scale_down_rate of the
            // ready replicas per decision (Knative's floor applies to it too), and held by
            // `scale_down_delay` below while a higher count was asked for within it (the
            // windows' before the idle rule took over, or a panic's), as Knative's delay
            // window holds every count.
            if limits.floor > 0 {
                steps.push(format!(
                    "at most ÷{} of {} ready",
                    self.scale.scale_down_rate, obs.ready
                ));
                count = limits.floor;
            }
        }

        count = self.delay(obs.at, count, &mut steps);

        if obs.ready == 0 && obs.value > 0.0 {
            let waiting = self.waiting_count(obs.value);
            if from == 0 {
                basis = format!(
                    "activate: {} {:.1} waiting at 0 ready{}",
                    self.scale.metric.as_str(),
                    obs.value,
                    self.per_replica_text()
                );
                steps.clear();
                (count, raw) = (waiting, waiting);
                // As the activator's wake-up between ticks does (see `activate`): the panic
                // window, which still holds the idle time, would not say so on its own.
                if let Rule::Knative(k) = &mut self.rule {
                    k.activated(obs.at, waiting);
                    panic = k.panicking();
                }
            } else if waiting > count {
                steps.push(format!(
                    "{:.1} waiting at 0 ready needs {waiting}",
                    obs.value
                ));
                count = waiting;
            }
        } else if from == 0 && obs.value <= 0.0 {
            basis = "no traffic at 0 replicas".to_owned();
            steps.clear();
            (count, raw) = (0, 0);
        } else if let Some(idle) = idle.filter(|_| self.scale.min == 0 && !panic) {
            if idle < grace && count == 0 {
                steps.push(format!(
                    "idle {} < {} (zero_grace)",
                    secs_below(idle),
                    secs(grace)
                ));
                count = 1;
            }
        } else if count == 0 && obs.value > 0.0 {
            // Load too light to round up to a replica still needs one while it lasts.
            steps.push("load > 0 needs 1".to_owned());
            count = 1;
        }

        // As Knative holds a new revision at its initial scale until that many replicas have
        // been ready at once: the service starts at `initial` however short the windows'
        // history is, and only then do they scale it in. Replicas that never all come up (a
        // crash loop, a host too small) end the hold after one full stable window, when the
        // windows have a whole window's data to decide on.
        let initial = self.scale.initial();
        let first_at = *self.first_at.get_or_insert(obs.at);
        if !self.initialized {
            if obs.ready >= initial || obs.at.saturating_sub(first_at) >= self.scale.window {
                self.initialized = true;
            } else if count < initial {
                steps.push(format!(
                    "holding initial {initial} until as many are ready ({} so far)",
                    obs.ready
                ));
                count = initial;
            }
        }

        let bounded = count.max(self.scale.min).min(self.scale.max);
        if bounded > count {
            steps.push(format!("min {}", self.scale.min));
        } else if bounded < count {
            steps.push(format!("max {}", self.scale.max));
        }
        let to = bounded;
        self.current = to;

        Decision {
            at: obs.at,
            from,
            to,
            panic,
            reason: sentence(&basis, raw, &steps, from, to),
            inputs,
        }
    }

    /// Requests are waiting with no replica ready, now (between ticks): the activator calls
    /// this so that a cold start begins at once rather than at the next tick. The count
    /// becomes `max(1, ceil(queued / (target × utilization)))` (cpu: 1), within `min..=max`,
    /// when that is more than are already on the way: a burst that arrives while the
    /// first replica starts gets its replicas now too. `ended` replicas ended for good
    /// (their `restart` policy did not restart them): they keep their slots and serve
    /// nothing, so the count needed is that many more. That count enters panic as the next
    /// tick's would (see `Knative::activated`). Records no sample:
    /// the queued requests are counted again in the next tick's [`Observation::value`].
    pub fn activate(&mut self, at: Duration, queued: u32, ended: u32) -> Decision {
        let from = self.current;
        self.idle_since = None;
        let waiting = self.waiting_count(f64::from(queued));
        let needed = waiting.saturating_add(ended);
        let on_the_way = from.saturating_sub(ended);
        let (to, reason) = if queued > 0 && needed > from && from < self.scale.max {
            // Panic is judged on the requests waiting, as the next tick's would be: not on
            // the slots ended replicas hold.
            if let Rule::Knative(k) = &mut self.rule {
                k.activated(at, waiting);
            }
            let to = needed.max(self.scale.min).min(self.scale.max);
            let basis = if from == 0 {
                format!(
                    "activate: {} waiting at 0 replicas{}",
                    requests(queued),
                    self.per_replica_text()
                )
            } else if ended > 0 {
                format!(
                    "activate: {} waiting, {} ended for good, {} on the way{}",
                    requests(queued),
                    replicas(ended),
                    on_the_way,
                    self.per_replica_text()
                )
            } else {
                format!(
                    "activate: {} waiting, {} on the way{}",
                    requests(queued),
                    replicas(from),
                    self.per_replica_text()
                )
            };
            (to, sentence(&basis, needed, &[], from, to))
        } else {
            let basis = format!(
                "{} waiting, {} on the way",
                requests(queued),
                replicas(on_the_way)
            );
            (from, sentence(&basis, from, &[], from, from))
        };
        self.current = to;
        Decision {
            at,
            from,
            to,
            panic: self.panicking(),
            reason,
            inputs: Inputs {
                observed: f64::from(queued),
                stable: None,
                panic: None,
                ratio: None,
                per_replica: self.per_replica(),
                desired_raw: waiting,
                // The activator calls this when nothing is ready; what is starting is what
                // was desired.
                ready: 0,
                starting: from,
            },
        }
    }

    /// Knative's `MaxScaleUpRate`/`MaxScaleDownRate`, relative to the ready replicas. From
    /// zero ready there is no cap: a cold service goes straight to what the load needs.
    fn rate_limits(&self, ready: u32) -> RateLimits {
        let ready = f64::from(ready);
        let cap = if ready == 0.0 {
            u32::MAX
        } else {
            to_count((ready * self.scale.scale_up_rate).ceil())
        };
        RateLimits {
            floor: to_count((ready / self.scale.scale_down_rate).floor()),
            cap,
        }
    }

    /// `scale_down_delay`: the highest count over the delay, so a dip shorter than the delay
    /// does not remove replicas.
    fn delay(&mut self, at: Duration, count: u32, steps: &mut Vec<String>) -> u32 {
        let delay = self.scale.scale_down_delay;
        if delay.is_zero() {
            return count;
        }
        while self
            .delayed
            .front()
            .is_some_and(|&(t, _)| !within(t, at, delay, self.scale.tick))
        {
            self.delayed.pop_front();
        }
        self.delayed.push_back((at, count));
        let held = self.delayed.iter().map(|&(_, c)| c).max().unwrap_or(count);
        if held > count {
            steps.push(format!("scale_down_delay {} holds {held}", secs(delay)));
        }
        held
    }

    /// Replicas for load that is all waiting (nothing ready): at least one.
    fn waiting_count(&self, value: f64) -> u32 {
        match self.rule {
            Rule::Knative(_) => ceil_count(value, self.per_replica()).max(1),
            Rule::Hpa(_) => 1,
        }
    }

    fn per_replica(&self) -> f64 {
        match &self.rule {
            Rule::Knative(k) => k.per_replica(),
            Rule::Hpa(_) => self.scale.target,
        }
    }

    fn per_replica_text(&self) -> String {
        match self.rule {
            Rule::Knative(_) => format!(
                " / (target {} × {})",
                self.scale.target, self.scale.utilization
            ),
            Rule::Hpa(_) => String::new(),
        }
    }
}

/// `basis[ = raw, step, step] → to (+n)`: the raw count is shown only when steps changed it.
fn sentence(basis: &str, raw: u32, steps: &[String], from: u32, to: u32) -> String {
    let change = match to.cmp(&from) {
        std::cmp::Ordering::Greater => format!("+{}", to - from),
        std::cmp::Ordering::Less => format!("-{}", from - to),
        std::cmp::Ordering::Equal => "no change".to_owned(),
    };
    if steps.is_empty() {
        format!("{basis} → {to} ({change})")
    } else {
        format!("{basis} = {raw}, {} → {to} ({change})", steps.join(", "))
    }
}

/// `ceil(value / per)` as a count; the division of a load by a positive target.
fn ceil_count(value: f64, per: f64) -> u32 {
    to_count((value / per - CEIL_SLACK).ceil())
}

/// A non-negative float to a count, saturating (NaN is 0).
fn to_count(x: f64) -> u32 {
    // `as` saturates at the bounds and maps NaN to 0, which is what a count wants.
    x.max(0.0) as u32
}

/// Whether a sample taken at `t` still falls in the window of length `span` ending at `at`:
/// a sample covers the tick before it, so the window holds the last `n = ceil(span / tick)`
/// samples, and a window not yet full holds all of them. It is counted in ticks from half a
/// tick before the n-th sample, `(at - n·tick + tick/2, at]`: a real tick comes a little
/// early or late, and on an exact edge a sample would drop in and out with that jitter (a
/// 2 s window of 1 s ticks averaged 2 samples on one tick and 3 on the next).
fn within(t: Duration, at: Duration, span: Duration, tick: Duration) -> bool {
    if tick.is_zero() {
        return t.checked_add(span).is_none_or(|end| end > at);
    }
    let ticks = span.as_nanos().div_ceil(tick.as_nanos());
    let whole = u32::try_from(ticks).ok().and_then(|n| tick.checked_mul(n));
    match whole.and_then(|whole| t.checked_add(whole)) {
        Some(end) => end > at.saturating_add(tick / 2),
        None => true,
    }
}

/// `60s`, `1.5s`, `0.25s`: short, and exact for whole seconds.
fn secs(d: Duration) -> String {
    // Tenths at most: `idle for 4s`, not the clock's `3.9998349539999998s`.
    let tenths = (d.as_secs_f64() * 10.0).round() / 10.0;
    format!("{tenths}s")
}

/// [`secs`] rounded down: for a time said to be short of another, which rounding to the
/// nearest tenth could make equal to it (`idle 10s < 10s`).
fn secs_below(d: Duration) -> String {
    let tenths = (d.as_secs_f64() * 10.0).floor() / 10.0;
    format!("{tenths}s")
}

/// "1 request", "2 requests".
fn requests(n: u32) -> String {
    format!("{n} request{}", if n == 1 { "" } else { "s" })
}

/// "1 replica", "2 replicas".
fn replicas(n: u32) -> String {
    format!("{n} replica{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_read_as_a_person_writes_them() {
        assert_eq!(secs(Duration::from_secs(30)), "30s");
        assert_eq!(secs(Duration::from_millis(500)), "0.5s");
        assert_eq!(secs(Duration::from_nanos(3_999_834_953)), "4s");
    }

    #[test]
    fn ceil_count_ignores_float_noise() {
        assert_eq!(ceil_count(140.0, 70.0), 2);
        assert_eq!(ceil_count(0.1 + 0.2, 0.3), 1);
        assert_eq!(ceil_count(140.1, 70.0), 3);
        assert_eq!(ceil_count(0.0, 70.0), 0);
        assert_eq!(ceil_count(1.0, 0.0), u32::MAX);
    }

    #[test]
    fn windows_hold_whole_ticks() {
        let s = Duration::from_secs;
        let tick = s(1);
        assert!(within(s(1), s(60), s(60), tick));
        assert!(!within(s(0), s(60), s(60), tick));
        assert!(within(s(0), s(30), s(60), tick));
        // Ticks early or late by less than half a tick: the 2 s window ending at the tick of
        // 60 s holds the ticks of 59 s and 60 s, whichever way each was off.
        let ms = Duration::from_millis;
        assert!(!within(ms(58_020), ms(59_980), s(2), tick));
        assert!(!within(ms(57_980), ms(60_020), s(2), tick));
        assert!(within(ms(58_980), ms(60_020), s(2), tick));
        assert!(within(ms(59_020), ms(59_980), s(2), tick));
        // A window that is not a whole number of ticks holds as many as it did before:
        // 5 s of 2 s ticks, the last 3 samples.
        let two = s(2);
        assert!(within(s(56), s(60), s(5), two));
        assert!(!within(s(54), s(60), s(5), two));
    }

    #[test]
    fn cpu_percent_of_the_limit() {
        let s = Duration::from_secs(2);
        assert_eq!(cpu_percent(1.0, s, None), 50.0);
        assert_eq!(cpu_percent(1.0, s, Some(0.5)), 100.0);
        assert_eq!(cpu_percent(1.0, Duration::ZERO, None), 0.0);
        assert_eq!(cpu_percent(f64::NAN, s, None), 0.0);
    }

    #[test]
    fn secs_reads_well() {
        assert_eq!(secs(Duration::from_secs(60)), "60s");
        assert_eq!(secs(Duration::from_millis(1500)), "1.5s");
        assert_eq!(secs_below(Duration::from_millis(9_960)), "9.9s");
    }
}
