//! Choosing an endpoint for a request. Each policy of SPEC.md's `balance` has its module;
//! they all pick an index into one endpoint-set snapshot and skip the endpoints a request
//! has already tried, so a retry goes elsewhere when there is anywhere else to go.

pub(crate) mod consistent_hash;
pub(crate) mod least_request;
pub(crate) mod p2c_ewma;
pub(crate) mod round_robin;

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

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }
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
    pub(crate) fn pick(&self, set: &EndpointSet, key: Option<u64>, tried: &Tried) -> Option<usize> {
        let n = set.endpoints.len();
        if n == 0 || (0..n).all(|i| tried.contains(i)) {
            return None;
        }
        match self {
            Balancer::RoundRobin(rr) => rr.pick(n, tried),
            Balancer::LeastRequest => least_request::pick(&set.endpoints, tried),
            Balancer::P2cEwma => p2c_ewma::pick(&set.endpoints, tried),
            Balancer::ConsistentHash(_) => match (key, &set.table) {
                (Some(key), Some(table)) => table.pick(key, tried),
                _ => random(n, tried),
            },
        }
    }
}

/// Any endpoint not yet tried, uniformly.
pub(crate) fn random(n: usize, tried: &Tried) -> Option<usize> {
    let mut rng = rand::rng();
    if tried.is_empty() {
        return Some(rng.random_range(0..n));
    }
    let left: Vec<usize> = (0..n).filter(|i| !tried.contains(*i)).collect();
    if left.is_empty() {
        None
    } else {
        Some(left[rng.random_range(0..left.len())])
    }
}

/// Two distinct endpoints not yet tried, chosen at random (or the only one left).
pub(crate) fn two_choices(n: usize, tried: &Tried) -> Option<(usize, usize)> {
    let mut rng = rand::rng();
    if tried.is_empty() {
        if n == 1 {
            return Some((0, 0));
        }
        let a = rng.random_range(0..n);
        let mut b = rng.random_range(0..n - 1);
        if b >= a {
            b += 1;
        }
        return Some((a, b));
    }
    let left: Vec<usize> = (0..n).filter(|i| !tried.contains(*i)).collect();
    match left.len() {
        0 => None,
        1 => Some((left[0], left[0])),
        len => {
            let a = rng.random_range(0..len);
            let mut b = rng.random_range(0..len - 1);
            if b >= a {
                b += 1;
            }
            Some((left[a], left[b]))
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::endpoint::{Endpoint, EndpointSet, Upstream};

    /// A set of `n` endpoints on unroutable test addresses (nothing connects to them).
    pub(crate) fn set(n: usize, table: bool) -> EndpointSet {
        let endpoints: Vec<Endpoint> = (0..n)
            .map(|i| Endpoint::new(format!("127.0.0.1:{}", 20000 + i).parse().unwrap()))
            .collect();
        let upstreams = endpoints
            .into_iter()
            .map(|e| {
                Arc::new(Upstream::new(
                    e,
                    Duration::from_secs(1),
                    Duration::from_secs(60),
                ))
            })
            .collect();
        EndpointSet::new(upstreams, table)
    }
}
