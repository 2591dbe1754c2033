//! Unlinking segment files at a bounded rate, beside the shard's work.
//!
//! Freeing a file's blocks is work for the file system and, on a file system mounted with
//! online discard (`-o discard`, common on cloud disks), for the device: the freed extents are
//! trimmed when the journal commits. Unlinking many segments at once (one retention run of
//! Kafka's default 5 minute interval can delete hundreds) held every write queued behind that
//! commit: W3 at 731,543 msgs/s with retention deleting about 1.5 GB every 5 s showed
//! end-to-end latency of 300-500 ms for seconds after each run, while the shards themselves
//! stayed responsive (docs/benchmarks.md, "Retention bursts"). So retention keeps deleted
//! segments' files for reuse (`PartitionLog::recycled_segments`) and only those no roll took
//! go here, to be unlinked one at a time, each followed by a pause proportional to the space
//! it freed: at most [`UNLINK_BYTES_PER_SEC`] per shard.
//!
//! One queue per shard (thread-local: a shard is one thread): the files of every partition the
//! shard owns share the budget. The queue lives in memory only: a file still waiting when the
//! process stops keeps its recycled name and the partition's next open deletes it.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

/// How fast one shard gives blocks back to the file system. Retention that keeps reusing its
/// files (the steady state) unlinks nothing; this bounds the bursts: a partition whose
/// production slowed down, a retention limit lowered, DeleteRecords far ahead.
pub const UNLINK_BYTES_PER_SEC: u64 = 256 << 20;

thread_local! {
    static QUEUE: RefCell<VecDeque<PathBuf>> = const { RefCell::new(VecDeque::new()) };
    /// Whether this thread's executor runs the task draining [`QUEUE`].
    static DRAINING: Cell<bool> = const { Cell::new(false) };
}

/// Queues `paths` for unlinking on this shard, oldest first; returns at once. Must run on a
/// glommio executor (it starts the draining task when none runs).
pub fn unlink_later(paths: Vec<PathBuf>) {
    if paths.is_empty() {
        return;
    }
    QUEUE.with(|q| q.borrow_mut().extend(paths));
    if !DRAINING.with(Cell::get) {
        DRAINING.with(|d| d.set(true));
        glommio::spawn_local(drain()).detach();
    }
}

/// Files queued on this shard and not unlinked yet.
pub fn pending() -> usize {
    QUEUE.with(|q| q.borrow().len())
}

async fn drain() {
    // Clears the flag however the task ends (an executor dropping it on exit included).
    struct Draining;
    impl Drop for Draining {
        fn drop(&mut self) {
            DRAINING.with(|d| d.set(false));
        }
    }
    let _draining = Draining;
    while let Some(path) = QUEUE.with(|q| q.borrow_mut().pop_front()) {
        let shown = path.display().to_string();
        let freed = glommio::executor()
            .spawn_blocking(move || unlink(path))
            .await;
        match freed {
            Ok(0) => {}
            Ok(freed_bytes) => {
                let pause =
                    Duration::from_secs_f64(freed_bytes as f64 / UNLINK_BYTES_PER_SEC as f64);
                glommio::timer::sleep(pause).await;
            }
            // The file stays; a partition's next open deletes leftover recycled files.
            Err(error) => tracing::warn!(file = %shown, %error, "cannot delete a segment file"),
        }
    }
}

/// Unlinks `path`; returns the bytes of blocks it held (0 if it was gone already).
fn unlink(path: PathBuf) -> io::Result<u64> {
    let allocated_bytes = match std::fs::metadata(&path) {
        Ok(meta) => meta.blocks() * 512,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(allocated_bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testutil::run;

    #[test]
    fn queued_files_are_unlinked_in_order_and_missing_ones_are_skipped() {
        run(|| async {
            let dir = tempfile::tempdir().unwrap();
            let paths: Vec<PathBuf> = (0..5)
                .map(|i| dir.path().join(format!("{i}.reuse")))
                .collect();
            for path in &paths[1..] {
                std::fs::write(path, vec![7u8; 64 << 10]).unwrap();
            }
            let keep = dir.path().join("keep.log");
            std::fs::write(&keep, b"not queued").unwrap();
            // paths[0] never existed: skipped, not an error.
            unlink_later(paths.clone());
            assert!(pending() > 0);
            while paths.iter().any(|p| p.exists()) {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            while pending() > 0 {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            assert!(keep.exists());
            // A second batch starts the draining task again.
            std::fs::write(&paths[0], b"again").unwrap();
            unlink_later(vec![paths[0].clone()]);
            while paths[0].exists() {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
        });
    }
}
