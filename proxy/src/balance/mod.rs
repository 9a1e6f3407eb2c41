//! Choosing an endpoint for a request. Each policy of SPEC.md's `balance` has its module;
//! they all pick an index into one endpoint-set snapshot and skip the endpoints a request
//! has already tried, so a retry goes elsewhere when there is anywhere else to go.

pub(crate) mod consistent_hash;
pub(crate) mod least_request;
pub(crate) mod p2c_ewma;
pub(crate) mod round_robin;

use std::sync::Arc;

use rand::Rng;
use shoal_config::{Balance, HashOn};

use crate::endpoint::EndpointSet;

/// Indices of endpoints already tried by one request (none on the first attempt, so the
/// common path never allocates).
#[derive(Debug, Default)]
pub(crate) struct Tried(Vec<usize>);

impl Tried {
    pub(crate) fn contains(&self, index: usize) -> bool {
        self.0.contains(&index)
    }

    pub(crate) fn insert(&mut self, index: usize) {
        if !self.contains(index) {
            self.0.push(index);
        }
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    /// The same endpoints as indices into `to`, a newer snapshot of the set `from` was:
    /// endpoints that stayed keep their place in the list, gone ones leave it.
    fn remap(&self, from: &EndpointSet, to: &EndpointSet) -> Tried {
        Tried(
            self.0
                .iter()
                .filter_map(|&index| {
                    let endpoint = from.endpoints.get(index)?;
                    to.endpoints.iter().position(|e| Arc::ptr_eq(e, endpoint))
                })
                .collect(),
        )
    }
}

/// Moves a retry to `now`, the service's newest endpoint set, with the endpoints it has
/// `tried` carried over: a retry also considers endpoints that became ready since the
/// request or connection began (a scale-out under way, or the replicas after the first when
/// a service comes up from zero and its held requests overwhelm that one).
pub(crate) fn refresh(now: Arc<EndpointSet>, set: &mut Arc<EndpointSet>, tried: &mut [&mut Tried]) {
    if Arc::ptr_eq(&now, set) {
        return;
    }
    for tried in tried {
        **tried = tried.remap(set, &now);
    }
    *set = now;
}

/// A service's balancing policy and the state it needs between requests.
pub(crate) enum Balancer {
    RoundRobin(round_robin::RoundRobin),
    LeastRequest,
    P2cEwma,
    ConsistentHash(HashOn),
}

impl Balancer {
    pub(crate) fn new(balance: Balance, hash_on: Option<&HashOn>) -> Balancer {
        match balance {
            Balance::RoundRobin => Balancer::RoundRobin(round_robin::RoundRobin::default()),
            Balance::LeastRequest => Balancer::LeastRequest,
            Balance::P2cEwma => Balancer::P2cEwma,
            // Validation requires `hash_on` with consistent_hash; the client address is
            // the sensible default should a config reach here without it.
            Balance::ConsistentHash => {
                Balancer::ConsistentHash(hash_on.cloned().unwrap_or(HashOn::ClientIp))
            }
        }
    }

    /// What consistent hashing hashes, when this balancer hashes.
    pub(crate) fn hash_on(&self) -> Option<&HashOn> {
        match self {
            Balancer::ConsistentHash(on) => Some(on),
            _ => None,
        }
    }

    pub(crate) fn wants_table(&self) -> bool {
        matches!(self, Balancer::ConsistentHash(_))
    }

    /// Picks an endpoint not in `tried`; `key` is the request's hash for consistent hashing
    /// (`None` when the request lacks what is hashed: then any endpoint will do).
    ///
    /// Endpoints failing health checks or ejected as outliers are skipped. When *no*
    /// endpoint of the set is available, all of them are balanced over instead (panic
    /// routing, as Envoy does below its panic threshold): a service whose every endpoint
    /// looks bad is more likely misjudged (a wrong health path, a shared dependency down)
    /// than better off answering 503 to everything.
    pub(crate) fn pick(
        &self,
        set: &EndpointSet,
        key: Option<u64>,
        tried: &Tried,
        retry: bool,
    ) -> Option<usize> {
        let endpoints = &set.endpoints;
        let usable = |i: usize| !tried.contains(i) && endpoints[i].available();
        if let Some(index) = self.pick_where(set, key, &usable, retry) {
            return Some(index);
        }
        if endpoints.iter().any(|u| u.available()) {
            // Some are available but this request has tried them all.
            return None;
        }
        self.pick_where(set, key, &|i: usize| !tried.contains(i), retry)
    }

    /// The policy's pick among the endpoints `ok` accepts, for a request's first try or a
    /// `retry`.
    fn pick_where(
        &self,
        set: &EndpointSet,
        key: Option<u64>,
        ok: &impl Fn(usize) -> bool,
        retry: bool,
    ) -> Option<usize> {
        let n = set.endpoints.len();
        // Usually stops at the first endpoint; saves the policies a fruitless full probe
        // (the hash table has 65537 entries).
        if !(0..n).any(ok) {
            return None;
        }
        match self {
            Balancer::RoundRobin(rr) => rr.pick(n, ok, retry),
            Balancer::LeastRequest => least_request::pick(&set.endpoints, ok),
            Balancer::P2cEwma => p2c_ewma::pick(&set.endpoints, ok),
            Balancer::ConsistentHash(_) => match (key, &set.table) {
                (Some(key), Some(table)) => table.pick(key, ok),
                _ => random(n, ok),
            },
        }
    }
}

/// The `k`-th of `n` endpoints that `ok` accepts.
fn nth_ok(n: usize, ok: &impl Fn(usize) -> bool, k: usize) -> Option<usize> {
    (0..n).filter(|i| ok(*i)).nth(k)
}

/// Any endpoint `ok` accepts, uniformly. One random draw when it is accepted (the common
/// case); otherwise a draw among the accepted ones by rank, which keeps the pick uniform
/// without allocating.
pub(crate) fn random(n: usize, ok: &impl Fn(usize) -> bool) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let mut rng = rand::rng();
    let first = rng.random_range(0..n);
    if ok(first) {
        return Some(first);
    }
    let left = (0..n).filter(|i| ok(*i)).count();
    if left == 0 {
        return None;
    }
    nth_ok(n, ok, rng.random_range(0..left))
}

/// Two distinct endpoints `ok` accepts, chosen uniformly (or the only one left). As in
/// [`random`], one draw in the common case and a draw by rank otherwise.
pub(crate) fn two_choices(n: usize, ok: &impl Fn(usize) -> bool) -> Option<(usize, usize)> {
    let mut rng = rand::rng();
    if n >= 2 {
        let (a, b) = distinct_pair(&mut rng, n);
        if ok(a) && ok(b) {
            return Some((a, b));
        }
    }
    let left = (0..n).filter(|i| ok(*i)).count();
    match left {
        0 => None,
        1 => nth_ok(n, ok, 0).map(|i| (i, i)),
        len => {
            let (a, b) = distinct_pair(&mut rng, len);
            Some((nth_ok(n, ok, a)?, nth_ok(n, ok, b)?))
        }
    }
}

/// Two distinct numbers below `n` (at least 2), uniformly.
fn distinct_pair(rng: &mut impl Rng, n: usize) -> (usize, usize) {
    let a = rng.random_range(0..n);
    let mut b = rng.random_range(0..n - 1);
    if b >= a {
        b += 1;
    }
    (a, b)
}

#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use super::Tried;
    use crate::endpoint::{Endpoint, EndpointSet, Upstream};

    /// The policies' filter for endpoints not in `tried`.
    pub(crate) fn untried(tried: &Tried) -> impl Fn(usize) -> bool + '_ {
        |i| !tried.contains(i)
    }

    /// A set of `n` endpoints on unroutable test addresses (nothing connects to them).
    pub(crate) fn set(n: usize, table: bool) -> EndpointSet {
        let endpoints: Vec<Endpoint> = (0..n)
            .map(|i| Endpoint::new(format!("127.0.0.1:{}", 20000 + i).parse().unwrap()))
            .collect();
        let upstreams = endpoints
            .into_iter()
            .map(|e| Arc::new(Upstream::new(e)))
            .collect();
        EndpointSet::new(upstreams, table)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus::IntCounter;
    use shoal_config::Outlier;

    use super::*;
    use crate::outlier::OutlierPolicy;

    fn policies() -> Vec<Balancer> {
        vec![
            Balancer::new(Balance::RoundRobin, None),
            Balancer::new(Balance::LeastRequest, None),
            Balancer::new(Balance::P2cEwma, None),
            Balancer::new(Balance::ConsistentHash, Some(&HashOn::Path)),
        ]
    }

    /// Ejects endpoints `which` of `set` (one failure each, no share limit).
    fn eject(set: &EndpointSet, which: &[usize]) {
        let policy = OutlierPolicy::new(
            &Outlier {
                consecutive_failures: 1,
                ejection: Duration::from_secs(60),
                max_ejected_percent: 100,
            },
            IntCounter::new("ejections", "test").unwrap(),
        );
        for &index in which {
            policy.record("svc", set, index, false);
        }
    }

    #[test]
    fn every_policy_skips_ejected_endpoints() {
        for balancer in policies() {
            let set = EndpointSet::new(testing::set(4, true).endpoints, balancer.wants_table());
            eject(&set, &[1, 2]);
            let mut seen = [0usize; 4];
            for key in 0..400u64 {
                let key = consistent_hash::hash_bytes(&key.to_le_bytes());
                seen[balancer
                    .pick(&set, Some(key), &Tried::default(), false)
                    .unwrap()] += 1;
            }
            // (p2c_ewma may well always prefer one: idle endpoints tie on everything but age)
            assert_eq!((seen[1], seen[2]), (0, 0), "{seen:?}");

            // Retries still avoid them: with both available endpoints tried, nothing is left.
            let mut tried = Tried::default();
            tried.insert(0);
            tried.insert(3);
            assert_eq!(balancer.pick(&set, Some(7), &tried, true), None);
        }
    }

    #[test]
    fn hashed_keys_of_an_ejected_endpoint_move_and_come_back_stable() {
        let balancer = Balancer::new(Balance::ConsistentHash, Some(&HashOn::Path));
        let set = testing::set(4, true);
        let keys: Vec<u64> = (0..200u64)
            .map(|k| consistent_hash::hash_bytes(&k.to_le_bytes()))
            .collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|&k| {
                balancer
                    .pick(&set, Some(k), &Tried::default(), false)
                    .unwrap()
            })
            .collect();
        eject(&set, &[2]);
        for (key, owner) in keys.iter().zip(&before) {
            let now = balancer
                .pick(&set, Some(*key), &Tried::default(), false)
                .unwrap();
            // Keys of the others stay put; keys of the ejected one go elsewhere.
            if *owner == 2 {
                assert_ne!(now, 2);
            } else {
                assert_eq!(now, *owner);
            }
        }
    }

    #[test]
    fn all_unavailable_balances_over_all() {
        for balancer in policies() {
            let set = EndpointSet::new(testing::set(3, true).endpoints, balancer.wants_table());
            eject(&set, &[0, 1, 2]);
            let mut seen = [0usize; 3];
            for key in 0..300u64 {
                let key = consistent_hash::hash_bytes(&key.to_le_bytes());
                seen[balancer
                    .pick(&set, Some(key), &Tried::default(), false)
                    .unwrap()] += 1;
            }
            assert!(seen.iter().filter(|&&n| n > 0).count() >= 2, "{seen:?}");
        }
    }

    #[test]
    fn random_and_two_choices_stay_uniform_among_the_accepted() {
        let ok = |i: usize| i.is_multiple_of(2);
        let mut seen = [0usize; 6];
        for _ in 0..3000 {
            seen[random(6, &ok).unwrap()] += 1;
            let (a, b) = two_choices(6, &ok).unwrap();
            assert!(ok(a) && ok(b) && a != b);
        }
        for i in [0, 2, 4] {
            assert!((800..1200).contains(&seen[i]), "{seen:?}");
        }
        assert_eq!(seen[1] + seen[3] + seen[5], 0);
        assert_eq!(two_choices(6, &|i| i == 3), Some((3, 3)));
        assert_eq!(two_choices(6, &|_| false), None);
    }
}
