//! Unlinking segment files at a bounded rate, beside the shard's work.
//!
//! Freeing a file's blocks is work for the file system and, on a file system mounted with
//! online discard (`-o discard`, common on cloud disks), for the device: the freed extents are
//! trimmed when the journal commits. Unlinking many segments at once (one retention run of
//! Kafka's default 5 minute interval can delete hundreds) held every write queued behind that
//! commit: W3 at 731,543 msgs/s with retention deleting about 1.5 GB every 5 s showed
//! end-to-end latency of 300-500 ms for seconds after each run, while the shards themselves
//! stayed responsive (docs/benchmarks.md, "A retention run that deletes many segments at
//! once"). So retention keeps deleted
//! segments' files for reuse (`PartitionLog::recycled_segments`) and only those no roll took
//! go here, to be unlinked one at a time, each followed by a pause proportional to the space
//! it freed: at most [`UNLINK_BYTES_PER_SEC`] per shard. A large file (a 1 GiB segment) is
//! first shrunk [`FREE_STEP_BYTES`] at a time with the same pauses: unlinked whole, it held
//! the writes as long as a burst of small ones did.
//!
//! A deleted partition (topic deletion, a replica moved away) goes the same way: its directory
//! is renamed to `<dir>.<uuid>-delete` at once (Kafka's name; a topic created again under the
//! same name gets a fresh directory) and its files are unlinked here, then the directory.
//! A fetch still sending from such a file when the reaper shrinks it finds the segment shorter
//! than the fetched range and closes its connection, as when a follower truncates; the bytes it
//! did send are the file's own. Recycled files have no readers left (only those are recycled).
//!
//! One queue per shard (thread-local: a shard is one thread): the files of every partition the
//! shard owns share the budget. The queue lives in memory only: a file still waiting when the
//! process stops keeps its recycled name and the partition's next open deletes it; a `-delete`
//! directory is queued again at the next start ([`remove_deleted_dirs_later`]).

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

/// A file larger than this is shrunk by this much at a time (truncate, pause, again) before
/// its unlink: one 1 GiB segment unlinked at once stalled writes as long as many small ones.
pub const FREE_STEP_BYTES: u64 = 64 << 20;

/// What a directory being deleted is renamed to end with (Kafka's suffix).
pub const DELETED_DIR_SUFFIX: &str = "-delete";

/// What the reaper has left to do, in order.
#[derive(Debug)]
enum Doomed {
    File(PathBuf),
    /// A directory whose files are queued next, then the directory itself.
    Dir(PathBuf),
    /// A directory whose files went before it.
    EmptiedDir(PathBuf),
}

thread_local! {
    static QUEUE: RefCell<VecDeque<Doomed>> = const { RefCell::new(VecDeque::new()) };
    /// Whether this thread's executor runs the task draining [`QUEUE`].
    static DRAINING: Cell<bool> = const { Cell::new(false) };
}

/// Queues `paths` for unlinking on this shard, oldest first; returns at once. Must run on a
/// glommio executor (it starts the draining task when none runs).
pub fn unlink_later(paths: Vec<PathBuf>) {
    enqueue(paths.into_iter().map(Doomed::File));
}

/// Renames `dir` to a unique `<dir>.<uuid>-delete` (on the blocking thread) and queues it:
/// its files are unlinked at the shard's pace, then it goes. Returns once renamed; `Ok` if
/// `dir` did not exist. Must run on a glommio executor.
pub async fn remove_dir_later(dir: PathBuf) -> io::Result<()> {
    let renamed = glommio::executor()
        .spawn_blocking(move || -> io::Result<Option<PathBuf>> {
            let mut name = dir.file_name().unwrap_or_default().to_os_string();
            name.push(format!(
                ".{}{DELETED_DIR_SUFFIX}",
                uuid::Uuid::new_v4().simple()
            ));
            let doomed = dir.with_file_name(name);
            match std::fs::rename(&dir, &doomed) {
                Ok(()) => Ok(Some(doomed)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await?;
    enqueue(renamed.map(Doomed::Dir));
    Ok(())
}

/// Queues the `-delete` directories a previous run left in `data_dir` (it stopped before the
/// reaper got to them). Must run on a glommio executor.
pub fn remove_deleted_dirs_later(data_dir: &std::path::Path) -> io::Result<usize> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(data_dir)? {
        let entry = entry?;
        let is_doomed = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(DELETED_DIR_SUFFIX));
        if is_doomed && entry.file_type()?.is_dir() {
            dirs.push(Doomed::Dir(entry.path()));
        }
    }
    let count = dirs.len();
    enqueue(dirs);
    Ok(count)
}

fn enqueue(items: impl IntoIterator<Item = Doomed>) {
    let before = pending();
    QUEUE.with(|q| q.borrow_mut().extend(items));
    if pending() == before {
        return;
    }
    if !DRAINING.with(Cell::get) {
        DRAINING.with(|d| d.set(true));
        glommio::spawn_local(drain()).detach();
    }
}

/// Files and directories queued on this shard and not removed yet.
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
    while let Some(doomed) = QUEUE.with(|q| q.borrow_mut().pop_front()) {
        let path = match doomed {
            Doomed::File(path) => path,
            Doomed::Dir(dir) => {
                let shown = dir.display().to_string();
                let listed = glommio::executor()
                    .spawn_blocking(move || list_files(dir))
                    .await;
                match listed {
                    Ok((dir, files)) => QUEUE.with(|q| {
                        let mut q = q.borrow_mut();
                        q.push_front(Doomed::EmptiedDir(dir));
                        for file in files.into_iter().rev() {
                            q.push_front(Doomed::File(file));
                        }
                    }),
                    Err(error) => {
                        tracing::warn!(dir = %shown, %error, "cannot list a deleted directory")
                    }
                }
                continue;
            }
            Doomed::EmptiedDir(dir) => {
                let shown = dir.display().to_string();
                let removed = glommio::executor()
                    .spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                        _ => Ok(()),
                    })
                    .await;
                if let Err(error) = removed {
                    tracing::warn!(dir = %shown, %error, "cannot remove a deleted directory");
                }
                continue;
            }
        };
        let shown = path.display().to_string();
        let freed = glommio::executor()
            .spawn_blocking(move || free_step(path))
            .await;
        match freed {
            Ok((_, Some(path))) => QUEUE.with(|q| q.borrow_mut().push_front(Doomed::File(path))),
            Ok((0, None)) => {}
            Ok((freed_bytes, None)) => {
                let pause =
                    Duration::from_secs_f64(freed_bytes as f64 / UNLINK_BYTES_PER_SEC as f64);
                glommio::timer::sleep(pause).await;
            }
            // The file stays; a partition's next open deletes leftover recycled files.
            Err(error) => tracing::warn!(file = %shown, %error, "cannot delete a segment file"),
        }
    }
}

/// The regular files in `dir`, largest last (the small index files go first); the directory is
/// handed back for the step after.
fn list_files(dir: PathBuf) -> io::Result<(PathBuf, Vec<PathBuf>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() {
            files.push((meta.len(), entry.path()));
        }
    }
    files.sort();
    Ok((dir, files.into_iter().map(|(_, path)| path).collect()))
}

/// One step of freeing `path`: a file holding more than [`FREE_STEP_BYTES`] of blocks loses
/// its last [`FREE_STEP_BYTES`] (`truncate(2)` by path: if a roll renamed the file into a new
/// segment meanwhile, the name is gone and nothing happens) and is handed back for the next
/// step; a smaller one is unlinked. Returns the bytes of blocks freed.
fn free_step(path: PathBuf) -> io::Result<(u64, Option<PathBuf>)> {
    let meta = match std::fs::metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, None)),
        Err(e) => return Err(e),
    };
    let allocated_bytes = meta.blocks() * 512;
    if allocated_bytes > FREE_STEP_BYTES && meta.len() > FREE_STEP_BYTES {
        let c_path =
            std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
                .map_err(io::Error::other)?;
        let shorter = (meta.len() - FREE_STEP_BYTES) as libc::off_t;
        // SAFETY: a NUL-terminated path; truncate(2) touches nothing of ours.
        if unsafe { libc::truncate(c_path.as_ptr(), shorter) } != 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::NotFound => Ok((0, None)),
                _ => Err(e),
            };
        }
        return Ok((FREE_STEP_BYTES, Some(path)));
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok((allocated_bytes, None)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((0, None)),
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

    #[test]
    fn a_large_file_shrinks_in_steps_before_its_unlink() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.reuse");
        let file = std::fs::File::create(&path).unwrap();
        let len = 2 * FREE_STEP_BYTES + 4096;
        // Blocks really allocated (a sparse file would be unlinked at once).
        let fd = std::os::unix::io::AsRawFd::as_raw_fd(&file);
        assert_eq!(unsafe { libc::fallocate(fd, 0, 0, len as libc::off_t) }, 0);
        let (freed, again) = free_step(path.clone()).unwrap();
        assert_eq!(
            (freed, again.as_deref()),
            (FREE_STEP_BYTES, Some(path.as_path()))
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            FREE_STEP_BYTES + 4096
        );
        let (_, again) = free_step(path.clone()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096);
        let (_, again) = free_step(again.unwrap()).unwrap();
        assert!(again.is_none());
        assert!(!path.exists());
        // Gone already: nothing to do.
        assert_eq!(free_step(path).unwrap(), (0, None));
    }

    #[test]
    fn a_directory_is_renamed_at_once_then_emptied_and_removed() {
        run(|| async {
            let data = tempfile::tempdir().unwrap();
            let dir = data.path().join("t-0");
            std::fs::create_dir(&dir).unwrap();
            for name in [
                "00000000000000000000.log",
                "00000000000000000000.index",
                "x.reuse",
            ] {
                std::fs::write(dir.join(name), vec![1u8; 8192]).unwrap();
            }
            remove_dir_later(dir.clone()).await.unwrap();
            // The name is free at once: a topic created again gets an empty directory.
            assert!(!dir.exists());
            std::fs::create_dir(&dir).unwrap();
            while std::fs::read_dir(data.path()).unwrap().count() > 1 {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            assert!(dir.exists(), "the new directory is not touched");
            // A directory that does not exist is fine.
            remove_dir_later(data.path().join("t-9")).await.unwrap();
            assert_eq!(pending(), 0);
        });
    }

    #[test]
    fn deleted_directories_left_by_a_previous_run_are_removed() {
        run(|| async {
            let data = tempfile::tempdir().unwrap();
            let left = data.path().join(format!("t-0.abc{DELETED_DIR_SUFFIX}"));
            std::fs::create_dir(&left).unwrap();
            std::fs::write(left.join("00000000000000000000.log"), b"old").unwrap();
            let live = data.path().join("t-1");
            std::fs::create_dir(&live).unwrap();
            assert_eq!(remove_deleted_dirs_later(data.path()).unwrap(), 1);
            while left.exists() {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            assert!(live.exists());
        });
    }
}
