//! `round_robin`: endpoints in turn, from one shared counter.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

#[derive(Debug, Default)]
pub(crate) struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// The next of `n` endpoints that `ok` accepts. A `retry` takes the one after the turn
    /// without using a turn up: if it did, with one of two endpoints down, every request's
    /// retry would hand the next request's first try to the endpoint that is down.
    pub(crate) fn pick(&self, n: usize, ok: &impl Fn(usize) -> bool, retry: bool) -> Option<usize> {
        if retry {
            let from = self.next.load(Relaxed);
            return (0..n).map(|k| from.wrapping_add(k) % n).find(|i| ok(*i));
        }
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
            .map(|_| rr.pick(3, &untried(&Tried::default()), false).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn skips_tried_endpoints() {
        let rr = RoundRobin::default();
        let mut tried = Tried::default();
        tried.insert(0);
        tried.insert(1);
        assert_eq!(rr.pick(3, &untried(&tried), true), Some(2));
        assert_eq!(rr.pick(3, &untried(&tried), true), Some(2));
        tried.insert(2);
        assert_eq!(rr.pick(3, &untried(&tried), true), None);
    }

    #[test]
    fn retries_leave_the_turns_alone() {
        // Endpoint 0 of 2 refuses every connection: half the first tries go to it, not all.
        let rr = RoundRobin::default();
        let mut to_the_dead_one = 0;
        for _ in 0..10 {
            let first = rr.pick(2, &untried(&Tried::default()), false);
            if first == Some(0) {
                to_the_dead_one += 1;
                let mut tried = Tried::default();
                tried.insert(0);
                assert_eq!(rr.pick(2, &untried(&tried), true), Some(1));
            }
        }
        assert_eq!(to_the_dead_one, 5);
    }
}
