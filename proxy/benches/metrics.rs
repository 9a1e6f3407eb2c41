//! What one finished request records: status counter, duration histogram, and the load
//! window's request and latency counts.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use shoal_proxy::bench::Recording;

fn record(c: &mut Criterion) {
    let recording = match Recording::new() {
        Ok(recording) => recording,
        Err(error) => panic!("registering the metrics failed: {error}"),
    };
    c.bench_function("record_one_request", |b| {
        b.iter(|| recording.record(black_box(200), black_box(Duration::from_micros(850))))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = record
}
criterion_main!(benches);
