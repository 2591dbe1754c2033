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
use crate::storage::txn_index::{self, TxnIndexEntry};

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

/// `<first>.log.cleaned.members` / `<first>.log.swap.members`: the other segments a merged
/// copy replaces, one `.log` file name per line.
fn members_path(stage_path: &Path) -> PathBuf {
    with_suffix(stage_path, MEMBERS_SUFFIX)
}

pub const MEMBERS_SUFFIX: &str = ".members";

/// Removes a segment's `.log` and index files.
fn remove_segment_files(log_path: &Path) -> io::Result<()> {
    remove_if_present(&log_path.with_extension("index"))?;
    remove_if_present(&log_path.with_extension("timeindex"))?;
    remove_if_present(&txn_index::path_for(log_path))?;
    remove_if_present(log_path)
}

/// Finishes one committed `.swap`: the members it replaces go, then the old index files of
/// its first segment, then the rename over `<first>.log`, then the members list.
fn finish_one(dir: &Path, log_path: &Path) -> io::Result<()> {
    let members = members_path(&swap_path(log_path));
    if let Ok(list) = std::fs::read_to_string(&members) {
        for name in list.lines().filter(|l| !l.is_empty()) {
            remove_segment_files(&dir.join(name))?;
        }
    }
    remove_if_present(&log_path.with_extension("index"))?;
    remove_if_present(&log_path.with_extension("timeindex"))?;
    std::fs::rename(swap_path(log_path), log_path)?;
    remove_if_present(&members)
}

/// One cleaned copy to put in place: the new segment and the `.log` paths of the other
/// segments it replaces (empty unless it merges several).
pub struct Replacement {
    pub segment: Segment,
    pub members: Vec<PathBuf>,
}

/// Commits a run whose cleaned files are written and fsync'ed, then puts them in place and
/// writes their index files. Blocking.
pub fn commit(dir: &Path, cleaned: &[Replacement]) -> io::Result<()> {
    for replacement in cleaned {
        if replacement.members.is_empty() {
            continue;
        }
        merge_txn_indexes(replacement)?;
        let names: Vec<String> = replacement
            .members
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        let path = members_path(&cleaned_path(replacement.segment.log_path()));
        std::fs::write(&path, names.join("\n"))?;
        std::fs::File::open(&path)?.sync_all()?;
    }
    for replacement in cleaned {
        let log_path = replacement.segment.log_path();
        if !replacement.members.is_empty() {
            std::fs::rename(
                members_path(&cleaned_path(log_path)),
                members_path(&swap_path(log_path)),
            )?;
        }
        std::fs::rename(cleaned_path(log_path), swap_path(log_path))?;
    }
    sync_dir(dir)?;
    #[cfg(test)]
    if crash_after_swap_rename(dir) {
        return Err(io::Error::other("injected crash after the .swap renames"));
    }
    for replacement in cleaned {
        finish_one(dir, replacement.segment.log_path())?;
    }
    sync_dir(dir)?;
    for replacement in cleaned {
        replacement.segment.persist_indexes()?;
    }
    Ok(())
}

/// Removes the `.cleaned` files of a run that did not commit (blocking).
/// Gives a merged segment the aborted transactions of all its members (the cleaner keeps
/// transactional batches and markers whole, so every entry stays true), durably, before the
/// merge commits. Should the merge then roll back, the first segment's index names markers
/// beyond its end: recovery refuses it and rebuilds it by scanning.
fn merge_txn_indexes(replacement: &Replacement) -> io::Result<()> {
    let first = replacement.segment.log_path();
    let mut entries: Vec<TxnIndexEntry> = Vec::new();
    for log_path in std::iter::once(first).chain(replacement.members.iter().map(PathBuf::as_path)) {
        match std::fs::read(txn_index::path_for(log_path)) {
            Ok(bytes) => {
                entries.extend(txn_index::decode(&bytes, 0, i64::MAX).map_err(io::Error::other)?)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if entries.is_empty() {
        return Ok(());
    }
    entries.sort_unstable_by_key(|e| e.last_offset);
    txn_index::write_durably(first, &entries)
}

pub fn abandon(cleaned: &[Segment]) -> io::Result<()> {
    for segment in cleaned {
        remove_if_present(&cleaned_path(segment.log_path()))?;
        remove_if_present(&members_path(&cleaned_path(segment.log_path())))?;
    }
    Ok(())
}

/// At open, before segments are listed: rolls back unfinished runs (deletes `.cleaned` files
/// and their members lists) and finishes committed ones (each `.swap` renamed over its
/// `.log`, the segments it merged removed). Returns how many swaps it finished.
pub fn recover(dir: &Path) -> io::Result<usize> {
    let mut names: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        if let Some(name) = entry?.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    let mut finished = 0;
    let mut changed = false;
    for name in &names {
        if name.ends_with(CLEANED_SUFFIX)
            || name.ends_with(&format!("{CLEANED_SUFFIX}{MEMBERS_SUFFIX}"))
        {
            remove_if_present(&dir.join(name))?;
            tracing::info!(file = %dir.join(name).display(), "rolled back an unfinished log cleaner run");
            changed = true;
        } else if let Some(log_name) = name.strip_suffix(SWAP_SUFFIX) {
            finish_one(dir, &dir.join(log_name))?;
            tracing::info!(segment = %dir.join(log_name).display(), "finished an interrupted log cleaner swap");
            finished += 1;
            changed = true;
        }
    }
    // A members list left after its swap was finished (a crash just before its removal):
    // its members are gone already; removing them again is harmless.
    for name in &names {
        if let Some(swap_name) = name.strip_suffix(MEMBERS_SUFFIX) {
            if swap_name.ends_with(SWAP_SUFFIX) && !dir.join(swap_name).exists() {
                let path = dir.join(name);
                if let Ok(list) = std::fs::read_to_string(&path) {
                    for member in list.lines().filter(|l| !l.is_empty()) {
                        remove_segment_files(&dir.join(member))?;
                    }
                }
                remove_if_present(&path)?;
                changed = true;
            }
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
