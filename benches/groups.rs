//! Offset commit latency at the group coordinator: validate, encode the offsets record, append
//! it to the offsets log and wait for its fdatasync (the acks=all rule), as an OffsetCommit
//! does once it reaches the group's shard. The network hop is not included.
//!
//! Run: `cargo bench --bench groups` (`BENCH_DIR=/path` to pick the disk; default: a temp dir
//! under the current directory). Each measurement runs inside a fresh glommio executor.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use broker::groups::coordinator::CommitEntry;
use broker::groups::{GroupConfig, GroupCoordinator};
use broker::storage::LogConfig;
use criterion::{criterion_group, criterion_main, Criterion};

fn on_executor<F, Fut, R>(body: F) -> R
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = R> + 'static,
    R: Send + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .spawn(|| async move { body().await })
        .unwrap()
        .join()
        .unwrap()
}

fn bench_root() -> tempfile::TempDir {
    let base = std::env::var_os("BENCH_DIR").map_or_else(|| PathBuf::from("."), PathBuf::from);
    tempfile::Builder::new()
        .prefix("groups-bench")
        .tempdir_in(base)
        .unwrap()
}

fn coordinator(dir: PathBuf) -> Rc<GroupCoordinator> {
    let config = GroupConfig {
        // Every group in one offsets partition: concurrent commits share its fdatasync.
        offsets_topic_partitions: 1,
        ..GroupConfig::default()
    };
    Rc::new(GroupCoordinator::new(
        0,
        1,
        dir,
        &LogConfig::default(),
        config,
        false,
    ))
}

/// A consumer's commit: one group, `partitions` offsets.
fn entries(partitions: i32, offset: i64) -> Vec<CommitEntry> {
    (0..partitions)
        .map(|p| CommitEntry {
            topic: "orders".into(),
            partition: p,
            offset,
            leader_epoch: 0,
            metadata: None,
        })
        .collect()
}

fn offset_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("offset_commit");
    group.sample_size(20);
    // One consumer committing 8 partitions, waiting for each answer: the latency a client sees
    // (minus the network).
    group.bench_function("sequential_8_partitions", |bench| {
        bench.iter_custom(|iters| {
            on_executor(move || async move {
                let root = bench_root();
                let groups = coordinator(root.path().to_path_buf());
                let start = Instant::now();
                for i in 0..iters {
                    let result = groups
                        .commit("g".into(), String::new(), None, -1, entries(8, i as i64))
                        .await;
                    assert!(result.unwrap().iter().all(Option::is_none));
                }
                let elapsed = start.elapsed();
                groups.close().await;
                elapsed
            })
        })
    });
    // 32 groups committing at once: the per-commit cost when commits share fdatasyncs.
    group.bench_function("concurrent_32_groups_8_partitions", |bench| {
        bench.iter_custom(|iters| {
            on_executor(move || async move {
                let root = bench_root();
                let groups = coordinator(root.path().to_path_buf());
                let rounds = iters.div_ceil(32);
                let start = Instant::now();
                for round in 0..rounds {
                    let commits = (0..32).map(|g| {
                        let groups = groups.clone();
                        async move {
                            groups
                                .commit(
                                    format!("g{g}"),
                                    String::new(),
                                    None,
                                    -1,
                                    entries(8, round as i64),
                                )
                                .await
                        }
                    });
                    for result in futures::future::join_all(commits).await {
                        assert!(result.unwrap().iter().all(Option::is_none));
                    }
                }
                let elapsed = start.elapsed();
                groups.close().await;
                elapsed.mul_f64(iters as f64 / (rounds * 32) as f64)
            })
        })
    });
    group.finish();
}

criterion_group!(benches, offset_commit);
criterion_main!(benches);
