//! The balancer's pick for a request's first attempt, for each policy over 3 and 32
//! healthy endpoints.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use shoal_config::Balance;
use shoal_proxy::bench::Balancing;

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for (name, balance) in [
        ("round_robin", Balance::RoundRobin),
        ("least_request", Balance::LeastRequest),
        ("p2c_ewma", Balance::P2cEwma),
        ("consistent_hash", Balance::ConsistentHash),
    ] {
        for endpoints in [3, 32] {
            let balancing = Balancing::new(balance, endpoints);
            let mut key = 0u64;
            group.bench_function(BenchmarkId::new(name, endpoints), |b| {
                b.iter(|| {
                    // a different key each time, as different clients would hash
                    key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    black_box(balancing.pick(black_box(key)))
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // 8 benchmarks in about 20 s
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = pick
}
criterion_main!(benches);
