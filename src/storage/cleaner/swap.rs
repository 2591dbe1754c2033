//! Putting cleaned segments in place so that a crash at any point loses nothing, as Kafka
//! does it: `<base>.log.cleaned` (written and fsync'ed) → `<base>.log.swap` → `<base>.log`.
//!
//! - `.cleaned` files are an unfinished run: recovery deletes them (roll back); the old
//!   segments are untouched.
//! - Once every cleaned file of a run is renamed to `.swap` and the directory synced, the run
//!   is committed: recovery finishes it by renaming each `.swap` over its `.log`.
//! - The old segment's index files go before the rename (they describe the old bytes); the
//!   cleaned segment's are written after it. Missing index files are rebuilt on open.
//!
//! `rename(2)` over the old `.log` is atomic and leaves the old file's inode alive for every
//! descriptor still open on it: a sendfile in progress on another shard keeps sending the old
//! bytes, which stay valid batches at the same offsets.

use std::io;
use std::path::{Path, PathBuf};

use crate::storage::segment::Segment;

pub const CLEANED_SUFFIX: &str = ".cleaned";
pub const SWAP_SUFFIX: &str = ".swap";

fn with_suffix(log_path: &Path, suffix: &str) -> PathBuf {
    let mut name = log_path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// `<base>.log.cleaned`.
pub fn cleaned_path(log_path: &Path) -> PathBuf {
    with_suffix(log_path, CLEANED_SUFFIX)
}

/// `<base>.log.swap`.
pub fn swap_path(log_path: &Path) -> PathBuf {
    with_suffix(log_path, SWAP_SUFFIX)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Renames one committed `.swap` over its `.log`, dropping the old index files first.
fn finish_one(log_path: &Path) -> io::Result<()> {
    remove_if_present(&log_path.with_extension("index"))?;
    remove_if_present(&log_path.with_extension("timeindex"))?;
    std::fs::rename(swap_path(log_path), log_path)
}

/// Commits a run whose cleaned files are written and fsync'ed, then puts them in place and
/// writes their index files. Blocking.
pub fn commit(dir: &Path, cleaned: &[Segment]) -> io::Result<()> {
    for segment in cleaned {
        std::fs::rename(
            cleaned_path(segment.log_path()),
            swap_path(segment.log_path()),
        )?;
    }
    sync_dir(dir)?;
    #[cfg(test)]
    if crash_after_swap_rename(dir) {
        return Err(io::Error::other("injected crash after the .swap renames"));
    }
    for segment in cleaned {
        finish_one(segment.log_path())?;
    }
    sync_dir(dir)?;
    for segment in cleaned {
        segment.persist_indexes()?;
    }
    Ok(())
}

/// Removes the `.cleaned` files of a run that did not commit (blocking).
pub fn abandon(cleaned: &[Segment]) -> io::Result<()> {
    for segment in cleaned {
        remove_if_present(&cleaned_path(segment.log_path()))?;
    }
    Ok(())
}

/// At open, before segments are listed: rolls back unfinished runs (deletes `.cleaned`) and
/// finishes committed ones (each `.swap` renamed over its `.log`). Returns how many swaps it
/// finished.
pub fn recover(dir: &Path) -> io::Result<usize> {
    let mut finished = 0;
    let mut changed = false;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(log_name) = name.strip_suffix(SWAP_SUFFIX) {
            finish_one(&dir.join(log_name))?;
            tracing::info!(segment = %dir.join(log_name).display(), "finished an interrupted log cleaner swap");
            finished += 1;
            changed = true;
        } else if name.ends_with(CLEANED_SUFFIX) {
            std::fs::remove_file(&path)?;
            tracing::info!(file = %path.display(), "rolled back an unfinished log cleaner run");
            changed = true;
        }
    }
    if changed {
        sync_dir(dir)?;
    }
    Ok(finished)
}

/// Directories whose next [`commit`] stops after its `.swap` renames, as a crash there would
/// (fault injection for tests; `commit` runs on the blocking pool, hence a global).
#[cfg(test)]
static CRASH_AFTER_SWAP_RENAME: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

#[cfg(test)]
pub fn inject_crash_after_swap_rename(dir: &Path) {
    CRASH_AFTER_SWAP_RENAME
        .lock()
        .unwrap()
        .push(dir.to_path_buf());
}

#[cfg(test)]
fn crash_after_swap_rename(dir: &Path) -> bool {
    let mut dirs = CRASH_AFTER_SWAP_RENAME.lock().unwrap();
    let found = dirs.iter().position(|d| d == dir);
    found.map(|i| dirs.remove(i)).is_some()
}
