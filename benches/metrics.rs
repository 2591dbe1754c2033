//! What `/metrics` costs the hot path: everything a produce request now does for metrics
//! (two clock reads, the per-API/version cell, the shard cells, one histogram observation),
//! against doing nothing. Run: `cargo bench --bench metrics`.

use std::hint::black_box;
use std::time::Instant;

use broker::metrics::{shard_cells, BrokerStats, DETAIL};
use criterion::{criterion_group, criterion_main, Criterion};

fn per_request(c: &mut Criterion) {
    c.bench_function("metrics/per_request_all_counters", |b| {
        b.iter(|| {
            let read_at = Instant::now();
            DETAIL.requests.add(black_box(0), black_box(9));
            let cells = shard_cells(black_box(1));
            BrokerStats::add(&cells.request_bytes, black_box(1_048_576));
            BrokerStats::add(&cells.bytes_in, black_box(1_048_576));
            BrokerStats::add(&cells.messages_in, black_box(1024));
            BrokerStats::add(&cells.bytes_out, black_box(64));
            DETAIL.produce_latency.observe(read_at.elapsed());
        })
    });
    c.bench_function("metrics/histogram_observe", |b| {
        b.iter(|| {
            DETAIL
                .fetch_latency
                .observe(black_box(std::time::Duration::from_micros(700)))
        })
    });
}

criterion_group!(benches, per_request);
criterion_main!(benches);
