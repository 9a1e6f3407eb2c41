//! `least_request`: the endpoint with the fewest requests in flight. A full scan, started
//! at a random endpoint so that ties spread instead of piling onto the first endpoint.

use std::sync::Arc;

use rand::Rng;

use crate::endpoint::Upstream;

/// Picks among the endpoints `ok` accepts.
pub(crate) fn pick(endpoints: &[Arc<Upstream>], ok: &impl Fn(usize) -> bool) -> Option<usize> {
    let n = endpoints.len();
    if n == 0 {
        return None;
    }
    let start = rand::rng().random_range(0..n);
    (0..n)
        .map(|offset| (start + offset) % n)
        .filter(|i| ok(*i))
        .min_by_key(|i| endpoints[*i].in_flight())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{testing, Tried};

    #[test]
    fn avoids_the_loaded_endpoint() {
        let set = testing::set(3, false);
        let busy: Vec<_> = (0..5).map(|_| set.endpoints[1].begin()).collect();
        let one = set.endpoints[0].begin();
        for _ in 0..100 {
            assert_eq!(
                pick(&set.endpoints, &testing::untried(&Tried::default())),
                Some(2)
            );
        }
        drop(one);
        for _ in 0..100 {
            assert_ne!(
                pick(&set.endpoints, &testing::untried(&Tried::default())),
                Some(1)
            );
        }
        drop(busy);
        assert_eq!(set.endpoints[1].in_flight(), 0);
    }

    #[test]
    fn ties_spread_over_all_endpoints() {
        let set = testing::set(4, false);
        let mut seen = [0usize; 4];
        for _ in 0..400 {
            seen[pick(&set.endpoints, &testing::untried(&Tried::default())).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&count| count > 40), "{seen:?}");
    }
}
