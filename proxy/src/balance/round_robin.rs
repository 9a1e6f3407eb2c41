//! `round_robin`: endpoints in turn, from one shared counter.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

#[derive(Debug, Default)]
pub(crate) struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// The next of `n` endpoints that `ok` accepts.
    pub(crate) fn pick(&self, n: usize, ok: &impl Fn(usize) -> bool) -> Option<usize> {
        (0..n)
            .map(|_| self.next.fetch_add(1, Relaxed) % n)
            .find(|i| ok(*i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{testing::untried, Tried};

    #[test]
    fn visits_endpoints_in_order() {
        let rr = RoundRobin::default();
        let picks: Vec<usize> = (0..7)
            .map(|_| rr.pick(3, &untried(&Tried::default())).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn skips_tried_endpoints() {
        let rr = RoundRobin::default();
        let mut tried = Tried::default();
        tried.insert(0);
        tried.insert(1);
        assert_eq!(rr.pick(3, &untried(&tried)), Some(2));
        assert_eq!(rr.pick(3, &untried(&tried)), Some(2));
        tried.insert(2);
        assert_eq!(rr.pick(3, &untried(&tried)), None);
    }
}
