//! Concurrency and rps: Knative's autoscaler (`pkg/autoscaler/scaling/autoscaler.go`).
//!
//! Every tick's value is a sample. The stable desire is `ceil(average over window /
//! (target × utilization))`, the panic desire the same over `panic_window`; both are clamped
//! by the rate limits (in [`super`]). Panic starts when the panic desire reaches `panic_threshold` × ready
//! replicas on a tick with requests, and ends once it has stayed below that for a whole stable window; while in
//! panic the count takes the higher of the two desires and never goes down.

use std::collections::VecDeque;
use std::time::Duration;

use shoal_config::Scale;

use super::{ceil_count, secs, within, Inputs, Observation, Proposal};

#[derive(Debug, Clone)]
pub(super) struct Knative {
    metric: &'static str,
    target: f64,
    utilization: f64,
    window: Duration,
    panic_window: Duration,
    threshold: f64,
    /// `(at, value)` of the samples still inside the stable window (which holds the panic
    /// window: validation keeps `panic_window <= window`, and `keep` takes the longer).
    samples: VecDeque<(Duration, f64)>,
    keep: Duration,
    tick: Duration,
    /// While panicking: when it started.
    panic_since: Option<Duration>,
    /// The last tick whose panic desire was at or over the threshold.
    last_over: Option<Duration>,
}

impl Knative {
    pub(super) fn new(scale: &Scale) -> Knative {
        Knative {
            metric: scale.metric.as_str(),
            target: scale.target,
            utilization: scale.utilization,
            window: scale.window,
            panic_window: scale.panic_window,
            threshold: scale.panic_threshold,
            samples: VecDeque::new(),
            keep: scale.window.max(scale.panic_window),
            tick: scale.tick,
            panic_since: None,
            last_over: None,
        }
    }

    /// What one replica should carry.
    pub(super) fn per_replica(&self) -> f64 {
        self.target * self.utilization
    }

    pub(super) fn panicking(&self) -> bool {
        self.panic_since.is_some()
    }

    /// Requests waiting at zero need `desired` replicas (between ticks): the panic rule
    /// applies with no replica ready, as it would at the next tick, so that the replicas
    /// this starts are not taken away again at the tick after they are ready, when the
    /// stable window still holds the idle time before the activation (Knative panics on
    /// activation the same way).
    pub(super) fn activated(&mut self, at: Duration, desired: u32) {
        if f64::from(desired) >= self.threshold {
            self.panic_since.get_or_insert(at);
            self.last_over = Some(at);
        }
    }

    pub(super) fn propose(&mut self, obs: &Observation) -> Proposal {
        let at = obs.at;
        while self
            .samples
            .front()
            .is_some_and(|&(t, _)| !within(t, at, self.keep, self.tick))
        {
            self.samples.pop_front();
        }
        self.samples.push_back((at, obs.value));
        let stable = self.average(at, self.window);
        let panic = self.average(at, self.panic_window);

        let per_replica = self.per_replica();
        let stable_raw = ceil_count(stable, per_replica);
        let panic_raw = ceil_count(panic, per_replica);
        // Knative counts at least one ready pod here, so that a service whose replicas are
        // all starting can still panic. A tick without any request is no burst: the load
        // the panic window still holds from before would otherwise read as one against the
        // fewer replicas the idle rule leaves, and start replicas with no traffic.
        let over =
            obs.requests && f64::from(panic_raw) >= self.threshold * f64::from(obs.ready.max(1));
        let mut calmed = false;
        if over {
            self.panic_since.get_or_insert(at);
            self.last_over = Some(at);
        } else if self.panic_since.is_some()
            && self
                .last_over
                .is_none_or(|last| at.saturating_sub(last) >= self.window)
        {
            self.panic_since = None;
            calmed = true;
        }

        let target = format!(" / (target {} × {})", self.target, self.utilization);
        // In panic the higher desire wins: in some edge cases the stable window wants more.
        let (count, basis) = match self.panic_since {
            None => (
                stable_raw,
                format!(
                    "{}stable {} {stable:.1} over {}{target}",
                    if calmed {
                        format!(
                            "panic over ({} below {:?} × ready): ",
                            secs(self.window),
                            self.threshold
                        )
                    } else {
                        String::new()
                    },
                    self.metric,
                    secs(self.window)
                ),
            ),
            Some(_) if over => (
                stable_raw.max(panic_raw),
                format!(
                    "panic, {panic_raw} ≥ {:?} × {} ready: {} {} {panic:.1}{target}",
                    self.threshold,
                    obs.ready,
                    secs(self.panic_window),
                    self.metric
                ),
            ),
            Some(since) => (
                stable_raw.max(panic_raw),
                format!(
                    "in panic for {}: {} {} {panic:.1}{target}",
                    secs(at.saturating_sub(since)),
                    secs(self.panic_window),
                    self.metric
                ),
            ),
        };
        Proposal {
            count,
            panic: self.panic_since.is_some(),
            inputs: Inputs {
                observed: obs.value,
                stable: Some(stable),
                panic: Some(panic),
                ratio: None,
                per_replica,
                desired_raw: count,
                ready: obs.ready,
                starting: obs.starting,
            },
            basis,
            steps: Vec::new(),
        }
    }

    /// The mean of the samples in the window of length `span` ending at `at`; a window not
    /// yet full averages what it has.
    fn average(&self, at: Duration, span: Duration) -> f64 {
        let (sum, n) = self
            .samples
            .iter()
            .rev()
            .take_while(|&&(t, _)| within(t, at, span, self.tick))
            .fold((0.0, 0u32), |(sum, n), &(_, v)| (sum + v, n + 1));
        if n == 0 {
            0.0
        } else {
            sum / f64::from(n)
        }
    }
}
