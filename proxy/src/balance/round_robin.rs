//! `round_robin`: endpoints in turn, from one shared counter.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::Tried;

#[derive(Debug, Default)]
pub(crate) struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    pub(crate) fn pick(&self, n: usize, tried: &Tried) -> Option<usize> {
        (0..n)
            .map(|_| self.next.fetch_add(1, Relaxed) % n)
            .find(|i| !tried.contains(*i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visits_endpoints_in_order() {
        let rr = RoundRobin::default();
        let picks: Vec<usize> = (0..7)
            .map(|_| rr.pick(3, &Tried::default()).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn skips_tried_endpoints() {
        let rr = RoundRobin::default();
        let mut tried = Tried::default();
        tried.insert(0);
        tried.insert(1);
        assert_eq!(rr.pick(3, &tried), Some(2));
        assert_eq!(rr.pick(3, &tried), Some(2));
        tried.insert(2);
        assert_eq!(rr.pick(3, &tried), None);
    }
}
