//! Cpu: the Kubernetes HPA rule (`pkg/controller/podautoscaler/replica_calculator.go` and
//! the scale-down stabilisation of `horizontal.go`).
//!
//! `ratio = average utilisation per ready replica / target`. Within `tolerance` of 1 nothing
//! changes; otherwise the recommendation is `ceil(ratio × ready)`. Replicas not ready yet
//! report no CPU: when scaling up they count as idle (0%), so that the replicas already on
//! their way are not ordered twice. A scale-down takes the highest recommendation of the last
//! `window`, so that one quiet tick does not remove replicas.

use std::collections::VecDeque;
use std::time::Duration;

use shoal_config::Scale;

use super::{ceil_count, secs, within, Inputs, Observation, Proposal};

/// Floating-point slack on `tolerance`, far below any difference a load can make.
const TOLERANCE_SLACK: f64 = 1e-9;

#[derive(Debug, Clone)]
pub(super) struct Hpa {
    target: f64,
    tolerance: f64,
    window: Duration,
    tick: Duration,
    /// `(at, recommendation)` over the last `window`.
    recommendations: VecDeque<(Duration, u32)>,
}

impl Hpa {
    pub(super) fn new(scale: &Scale) -> Hpa {
        Hpa {
            target: scale.target,
            tolerance: scale.tolerance,
            window: scale.window,
            tick: scale.tick,
            recommendations: VecDeque::new(),
        }
    }

    pub(super) fn propose(&mut self, obs: &Observation, from: u32) -> Proposal {
        let mut steps = Vec::new();
        let (recommendation, ratio, basis) = if obs.ready == 0 {
            (
                from,
                None,
                "cpu: no ready replica to measure, holding".to_owned(),
            )
        } else {
            let ready = f64::from(obs.ready);
            let per_ready = obs.value / ready;
            let ratio = per_ready / self.target;
            let mut basis = format!(
                "cpu {per_ready:.1}% per ready replica ({} ready) / target {}% = ratio {ratio:.2}",
                obs.ready, self.target
            );
            let counting_starting = obs.value / (ready + f64::from(obs.starting)) / self.target;
            // A ratio of exactly 1 ± tolerance (55% of 50 is 1.1) is within it: the
            // arithmetic's last bit must not decide (1.1 - 1 is 0.10000000000000009).
            let tolerance = self.tolerance + TOLERANCE_SLACK;
            let recommendation = if (ratio - 1.0).abs() <= tolerance {
                basis.push_str(&format!(" within tolerance {}, holding", self.tolerance));
                from
            } else if ratio > 1.0 && obs.starting > 0 && counting_starting <= 1.0 + tolerance {
                basis.push_str(&format!(
                    ", {counting_starting:.2} counting {} starting at 0%, holding",
                    obs.starting
                ));
                from
            } else {
                // ceil(ratio × ready), which is also ceil(ratio' × (ready + starting)) when
                // the starting replicas count at 0%.
                let recommendation = ceil_count(obs.value, self.target);
                // Fewer ready than desired (a crash, a slow start) must not turn a load over
                // target into a scale-down, nor one under target into a scale-up.
                if (ratio > 1.0 && recommendation < from) || (ratio < 1.0 && recommendation > from)
                {
                    basis.push_str(&format!(" but {from} are desired, holding"));
                    from
                } else {
                    recommendation
                }
            };
            (recommendation, Some(ratio), basis)
        };

        let at = obs.at;
        while self
            .recommendations
            .front()
            .is_some_and(|&(t, _)| !within(t, at, self.window, self.tick))
        {
            self.recommendations.pop_front();
        }
        self.recommendations.push_back((at, recommendation));
        let count = if recommendation >= from {
            recommendation
        } else {
            let highest = self
                .recommendations
                .iter()
                .map(|&(_, r)| r)
                .max()
                .unwrap_or(recommendation)
                .min(from);
            if highest > recommendation {
                steps.push(format!(
                    "highest over the last {} is {highest}",
                    secs(self.window)
                ));
            }
            highest
        };

        Proposal {
            count,
            panic: false,
            inputs: Inputs {
                observed: obs.value,
                stable: None,
                panic: None,
                ratio,
                per_replica: self.target,
                desired_raw: recommendation,
                ready: obs.ready,
                starting: obs.starting,
            },
            basis,
            steps,
        }
    }
}
