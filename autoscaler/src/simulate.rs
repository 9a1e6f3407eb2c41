//! `shoal simulate`: the real [`Policy`] against a load trace, in simulated time.
//!
//! A [`Trace`] is a step function of load over time, read from CSV lines `seconds,value`:
//!
//! ```text
//! # seconds,concurrency — a comment; a header line is allowed too
//! seconds,value
//! 0,10
//! 30,250      # from 30s on the load is 250 …
//! 90,0        # … until 90s; the simulation ends at the last point
//! ```
//!
//! Between points the value holds. The load before the first point is 0, and the
//! simulation stops at the last point's time. The value is in the unit of `scale.metric`:
//! in-flight requests (concurrency) or requests per second (rps), offered to the service
//! whatever its replica count (requests wait in the activator at zero). For `metric: cpu` it
//! is the CPU demand in percent of one replica's `resources.cpus` (250: two and a half
//! replicas busy); ready replicas saturate at 100% each, and starting ones report nothing.
//!
//! Every `scale.tick` the simulation averages the load over the tick, feeds the policy, and
//! applies its decision: a replica requested at `t` is ready at `t + ready_delay`; a
//! scale-down removes starting replicas first, then ready ones at once (draining is not
//! modelled).

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use shoal_config::{Scale, ScaleMetric};

use crate::policy::{Observation, Policy};

/// A simulation longer than this many ticks is refused rather than left to run for hours.
pub const MAX_TICKS: u64 = 10_000_000;

/// A load trace: points in time order; the value holds until the next point.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    points: Vec<(Duration, f64)>,
}

/// A line of a trace that could not be read. `line` counts from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for TraceError {}

impl Trace {
    /// Reads `seconds,value` lines. Blank lines and `#` comments (whole-line or trailing)
    /// are skipped, and so is a first line that is not numeric (a header). Times must not go
    /// backwards (two points at one time: the later wins); values must be finite and not
    /// negative; the last point must be after 0, since it is where the simulation ends.
    pub fn parse(text: &str) -> Result<Trace, TraceError> {
        let mut points: Vec<(Duration, f64)> = Vec::new();
        let mut header_allowed = true;
        let mut last_line = 0;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let fields: Vec<&str> = content.split(',').map(str::trim).collect();
            let header = std::mem::replace(&mut header_allowed, false);
            let err = |message: String| TraceError { line, message };
            let [seconds, value] = fields[..] else {
                return Err(err(format!(
                    "expected 2 columns `seconds,value`, found {}",
                    fields.len()
                )));
            };
            let Ok(seconds) = seconds.parse::<f64>() else {
                if header && value.parse::<f64>().is_err() {
                    continue;
                }
                return Err(err(format!("`{seconds}` is not a number of seconds")));
            };
            let at = Duration::try_from_secs_f64(seconds).map_err(|_| {
                err(format!(
                    "`{seconds}` seconds: a time must be a finite number, 0 or more"
                ))
            })?;
            let value = match value.parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => v,
                _ => {
                    return Err(err(format!(
                        "`{value}` is not a load: a finite number, 0 or more"
                    )))
                }
            };
            if let Some(&(previous, _)) = points.last() {
                if at < previous {
                    return Err(err(format!(
                        "{seconds}s comes before the previous point ({}s); times must not go backwards",
                        previous.as_secs_f64()
                    )));
                }
            }
            points.push((at, value));
            last_line = line;
        }
        match points.last() {
            None => Err(TraceError {
                line: text.lines().count().max(1),
                message: "no `seconds,value` lines".to_owned(),
            }),
            Some(&(end, _)) if end.is_zero() => Err(TraceError {
                line: last_line,
                message: "the trace ends at 0s: the last point's time is where the simulation stops (add e.g. `120,0`)"
                    .to_owned(),
            }),
            Some(_) => Ok(Trace { points }),
        }
    }

    /// Where the simulation stops: the last point's time.
    pub fn end(&self) -> Duration {
        self.points.last().map_or(Duration::ZERO, |&(at, _)| at)
    }

    /// The load at `t` (0 before the first point).
    pub fn value_at(&self, t: Duration) -> f64 {
        match self.points.partition_point(|&(at, _)| at <= t) {
            0 => 0.0,
            i => self.points[i - 1].1,
        }
    }

    /// The time-average of the load over `(from, to]`, as the proxy measures a tick.
    pub fn mean(&self, from: Duration, to: Duration) -> f64 {
        if to <= from {
            return self.value_at(to);
        }
        let mut sum = 0.0;
        let mut t = from;
        let mut value = self.value_at(from);
        let next = self.points.partition_point(|&(at, _)| at <= from);
        for &(at, v) in self.points[next..].iter().take_while(|&&(at, _)| at < to) {
            sum += value * (at - t).as_secs_f64();
            t = at;
            value = v;
        }
        sum += value * (to - t).as_secs_f64();
        sum / (to - from).as_secs_f64()
    }

    /// The first load step: the time of the first point where the load rises above the
    /// value before it. The load at 0s is the baseline, not a step.
    pub fn first_rise(&self) -> Option<Duration> {
        let mut previous = self.value_at(Duration::ZERO);
        for &(at, value) in &self.points {
            if value > previous {
                return Some(at);
            }
            previous = value;
        }
        None
    }
}

/// One row of the timeline: the state after the tick at `at`, recorded when the desired
/// count, the ready count or panic changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    #[serde(serialize_with = "seconds")]
    pub at: Duration,
    /// The load averaged over the tick.
    pub load: f64,
    pub desired: u32,
    pub ready: u32,
    pub starting: u32,
    pub panic: bool,
    /// The policy's reason, when its decision changed the count or panic.
    pub reason: Option<String>,
}

/// The totals of one simulation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
    /// The highest desired count.
    pub peak_replicas: u32,
    pub peak_ready: u32,
    /// Replicas (ready or starting) × seconds: what the trace cost.
    pub replica_seconds: f64,
    /// Seconds in which the load per ready replica was above `target` (any load at zero
    /// ready counts).
    pub over_target_seconds: f64,
    pub panic_seconds: f64,
    pub scale_ups: u32,
    pub scale_downs: u32,
    /// When the load first rose.
    #[serde(serialize_with = "opt_seconds")]
    pub first_load_step: Option<Duration>,
    /// From the first rise of the load to the first scale-up at or after it.
    #[serde(serialize_with = "opt_seconds")]
    pub time_to_first_scale_up: Option<Duration>,
}

/// The result of [`simulate`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Simulation {
    pub timeline: Vec<Change>,
    pub summary: Summary,
}

/// Why a simulation was not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimulateError {
    /// `scale.tick` is zero: simulated time would not move.
    ZeroTick,
    /// The trace is longer than [`MAX_TICKS`] ticks.
    TooLong { ticks: u64 },
}

impl fmt::Display for SimulateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimulateError::ZeroTick => write!(f, "scale.tick is 0: simulated time cannot move"),
            SimulateError::TooLong { ticks } => write!(
                f,
                "the trace spans {ticks} ticks, more than {MAX_TICKS}: shorten it or raise scale.tick"
            ),
        }
    }
}

impl std::error::Error for SimulateError {}

/// Runs the policy of `scale` against `trace`; see the [module docs](self).
pub fn simulate(
    scale: &Scale,
    trace: &Trace,
    ready_delay: Duration,
) -> Result<Simulation, SimulateError> {
    let tick = scale.tick;
    if tick.is_zero() {
        return Err(SimulateError::ZeroTick);
    }
    let ticks = u64::try_from(trace.end().as_nanos() / tick.as_nanos()).unwrap_or(u64::MAX);
    if ticks > MAX_TICKS {
        return Err(SimulateError::TooLong { ticks });
    }

    let mut policy = Policy::new(scale);
    let mut cluster = Cluster::default();
    cluster.resize(policy.current(), Duration::ZERO, ready_delay);
    let mut timeline = vec![Change {
        at: Duration::ZERO,
        load: trace.value_at(Duration::ZERO),
        desired: policy.current(),
        ready: cluster.ready,
        starting: cluster.starting(),
        panic: false,
        reason: Some(format!("initial {} (scale.initial)", policy.current())),
    }];
    let first_load_step = trace.first_rise();
    let mut summary = Summary {
        duration: trace.end(),
        peak_replicas: policy.current(),
        peak_ready: 0,
        replica_seconds: 0.0,
        over_target_seconds: 0.0,
        panic_seconds: 0.0,
        scale_ups: 0,
        scale_downs: 0,
        first_load_step,
        time_to_first_scale_up: None,
    };
    let tick_secs = tick.as_secs_f64();
    let mut panic = false;

    let mut at = Duration::ZERO;
    for _ in 0..ticks {
        let previous = at;
        at += tick;
        let ready_before = cluster.ready;
        cluster.promote(at);
        let load = trace.mean(previous, at);
        let value = match scale.metric {
            ScaleMetric::Cpu => load.min(100.0 * f64::from(cluster.ready)),
            ScaleMetric::Concurrency | ScaleMetric::Rps => load,
        };
        let decision = policy.observe(Observation {
            at,
            value,
            // A trace has the metric alone: its zero stands for no requests.
            requests: value > 0.0,
            ready: cluster.ready,
            starting: cluster.starting(),
        });

        summary.replica_seconds += f64::from(cluster.ready + cluster.starting()) * tick_secs;
        if load > scale.target * f64::from(cluster.ready) {
            summary.over_target_seconds += tick_secs;
        }
        if decision.panic {
            summary.panic_seconds += tick_secs;
        }
        if decision.to > decision.from {
            summary.scale_ups += 1;
            if summary.time_to_first_scale_up.is_none() {
                summary.time_to_first_scale_up = first_load_step
                    .filter(|&step| step <= at)
                    .map(|step| at - step);
            }
        } else if decision.to < decision.from {
            summary.scale_downs += 1;
        }

        cluster.resize(decision.to, at, ready_delay);
        summary.peak_replicas = summary.peak_replicas.max(decision.to);
        summary.peak_ready = summary.peak_ready.max(cluster.ready);

        let decided = decision.to != decision.from || decision.panic != panic;
        panic = decision.panic;
        if decided || cluster.ready != ready_before {
            timeline.push(Change {
                at,
                load,
                desired: decision.to,
                ready: cluster.ready,
                starting: cluster.starting(),
                panic: decision.panic,
                reason: decided.then_some(decision.reason),
            });
        }
    }
    Ok(Simulation { timeline, summary })
}

/// The simulated replicas: how many are ready, and when the starting ones will be.
#[derive(Debug, Default)]
struct Cluster {
    ready: u32,
    /// `(ready at, how many)` per scale-up, oldest first.
    starting: Vec<(Duration, u32)>,
}

impl Cluster {
    fn starting(&self) -> u32 {
        self.starting
            .iter()
            .fold(0u32, |sum, &(_, n)| sum.saturating_add(n))
    }

    fn promote(&mut self, at: Duration) {
        let mut promoted = 0u32;
        self.starting.retain(|&(ready_at, n)| {
            let ready = ready_at <= at;
            if ready {
                promoted = promoted.saturating_add(n);
            }
            !ready
        });
        self.ready = self.ready.saturating_add(promoted);
    }

    /// Starts replicas that will be ready at `at + ready_delay`, or removes the newest
    /// starting ones first, then ready ones.
    fn resize(&mut self, to: u32, at: Duration, ready_delay: Duration) {
        let total = self.ready.saturating_add(self.starting());
        if to > total {
            self.starting
                .push((at.saturating_add(ready_delay), to - total));
            return;
        }
        let mut excess = total - to;
        while excess > 0 {
            let Some(newest) = self.starting.last_mut() else {
                break;
            };
            let removed = newest.1.min(excess);
            newest.1 -= removed;
            excess -= removed;
            if newest.1 == 0 {
                self.starting.pop();
            }
        }
        self.ready = self.ready.saturating_sub(excess);
    }
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn opt_seconds<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}
