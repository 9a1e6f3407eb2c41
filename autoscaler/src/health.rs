//! Consecutive-result counting for active health checks (SPEC `health:` thresholds).

/// What a probe result changes for a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Enough consecutive passes: the replica may take traffic.
    Healthy,
    /// Enough consecutive failures: eject it.
    Unhealthy,
    /// Not enough evidence to change anything.
    Unchanged,
}

/// Counts consecutive passes and failures against the configured thresholds.
#[derive(Debug, Clone)]
pub struct HealthCounter {
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    passes: u32,
    failures: u32,
}

impl HealthCounter {
    pub fn new(healthy_threshold: u32, unhealthy_threshold: u32) -> Self {
        HealthCounter {
            healthy_threshold: healthy_threshold.max(1),
            unhealthy_threshold: unhealthy_threshold.max(1),
            passes: 0,
            failures: 0,
        }
    }

    pub fn record(&mut self, passed: bool) -> Verdict {
        if passed {
            self.passes = self.passes.saturating_add(1);
            self.failures = 0;
            if self.passes >= self.healthy_threshold {
                return Verdict::Healthy;
            }
        } else {
            self.failures = self.failures.saturating_add(1);
            self.passes = 0;
            if self.failures >= self.unhealthy_threshold {
                return Verdict::Unhealthy;
            }
        }
        Verdict::Unchanged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_need_consecutive_results() {
        let mut counter = HealthCounter::new(2, 3);
        assert_eq!(counter.record(true), Verdict::Unchanged);
        assert_eq!(counter.record(true), Verdict::Healthy);
        assert_eq!(counter.record(false), Verdict::Unchanged);
        assert_eq!(counter.record(false), Verdict::Unchanged);
        assert_eq!(counter.record(true), Verdict::Unchanged);
        assert_eq!(counter.record(false), Verdict::Unchanged);
        assert_eq!(counter.record(false), Verdict::Unchanged);
        assert_eq!(counter.record(false), Verdict::Unhealthy);
    }
}
