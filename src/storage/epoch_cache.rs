//! The leader epoch cache: at which offset each leader epoch's batches start. Followers ask
//! the leader for the end offset of their latest epoch (OffsetForLeaderEpoch) and truncate
//! whatever they hold past it, which is how diverging suffixes are found without trusting the
//! high watermark.
//!
//! Persisted as Kafka's `leader-epoch-checkpoint` text file in the partition directory:
//! ```text
//! 0            <- version
//! 2            <- entry count
//! 0 0          <- epoch start_offset
//! 3 150
//! ```
//! The file is replaced atomically (a temporary file renamed over it), with blocking `std::fs`
//! calls on the shard's thread, and only where it must hold what the log no longer shows:
//! truncations write and fsync it before they go on (they are rare), and so does a segment
//! roll's closing if an epoch changed, because closed segments are not rescanned on open.
//! Retention (every partition, every run) only moves the first entry in memory: opening fits
//! the file to the log start anyway. A new leader epoch
//! ([`LeaderEpochCache::assign`], at every leader change, so on every partition of a restarting
//! broker) is kept in memory only until then: 10,000 partitions would pay 20,000 fsyncs (25 s
//! here) before serving, and even without fsync ext4 starts a device write for every rename
//! over an existing file. Opening a log instead fits the checkpoint to the log and adds the
//! epochs that the active segment's batches carry beyond it (the recovery scan reads them
//! anyway), as Kafka's log recovery does. An epoch that no batch carries only says where a
//! leader started, and opening drops it (it starts at the log end) whether or not the file had
//! it; before the log grows past an entry that opening dropped, the file is rewritten without
//! it ([`LeaderEpochCache::before_append`]).
//!
//! Entries strictly increase in both epoch and start offset. Batches with a negative leader
//! epoch (none assigned) add no entry, as in Kafka.

use std::io::{self, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::segment::Segment;
use super::StorageError;

/// The checkpoint's file name in the partition directory (Kafka's).
pub const CHECKPOINT_FILE: &str = "leader-epoch-checkpoint";

/// The only checkpoint format version Kafka has written.
const CHECKPOINT_VERSION: i64 = 0;

/// A checkpoint is a few bytes per leader change; anything larger is not one of ours, and a
/// corrupt file must not size an allocation.
const MAX_CHECKPOINT_BYTES: u64 = 1 << 20;

/// One leader epoch and the offset of its first batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: i32,
    pub start_offset: i64,
}

/// The epochs of one partition log, in memory and in its checkpoint file.
#[derive(Debug)]
pub struct LeaderEpochCache {
    /// The checkpoint file's path.
    path: PathBuf,
    entries: Vec<EpochEntry>,
    /// The file may not hold `entries` durably yet ([`Self::assign`] writes without fsync,
    /// opening fits entries to the log without writing): [`Self::sync`] writes and syncs it.
    dirty: bool,
    /// Opening dropped entries at or past the log end without writing the file: the next
    /// append rewrites it first (else batches appended there at an older epoch would sit under
    /// an entry that opening no longer drops).
    file_has_dropped_entries: bool,
}

impl LeaderEpochCache {
    /// A cache of `entries` (strictly increasing) kept in `dir`; nothing is written.
    pub fn new(dir: &Path, entries: Vec<EpochEntry>) -> LeaderEpochCache {
        assert_increasing(&entries);
        LeaderEpochCache {
            path: dir.join(CHECKPOINT_FILE),
            entries,
            dirty: false,
            file_has_dropped_entries: false,
        }
    }

    /// Loads the checkpoint of a log that recovery just rebuilt, or rebuilds the entries from
    /// the segments when it is missing or corrupt (see [`rebuild_entries`]), then fits them to
    /// the log: entries starting at or after `log_end_offset` go (their batches were never
    /// written or were cut as a torn tail), and the earliest entry below `log_start_offset`
    /// moves up to it. Persists whatever changed.
    pub fn open(
        dir: &Path,
        segments: &[Rc<Segment>],
        active_epoch_starts: &[EpochEntry],
        (log_start_offset, log_end_offset): (i64, i64),
        max_batch_bytes: usize,
    ) -> Result<LeaderEpochCache, StorageError> {
        let path = dir.join(CHECKPOINT_FILE);
        let loaded = match read_checkpoint(&path) {
            // A log with batches always has an epoch unless its batches carry none; an empty
            // checkpoint beside one is a crash inside `truncate_fully_and_start_at`, which
            // clears the checkpoint before deleting the segments.
            Ok(entries) if entries.is_empty() && log_end_offset > log_start_offset => {
                Err("empty checkpoint beside a non-empty log".to_string())
            }
            other => other,
        };
        // `changed`: the file should be rewritten; `dirty`: it differs from the entries.
        let (mut cache, mut changed) = match loaded {
            Ok(entries) => (LeaderEpochCache::new(dir, entries), false),
            Err(reason) => {
                let entries = rebuild_entries(segments, active_epoch_starts, max_batch_bytes)?;
                let damaged = path.exists();
                if damaged {
                    tracing::warn!(path = %path.display(), %reason, epochs = entries.len(), "leader epoch checkpoint unusable; rebuilt from the segments");
                } else {
                    tracing::debug!(path = %path.display(), epochs = entries.len(), "no leader epoch checkpoint; rebuilt from the segments");
                }
                // A new, empty log needs no file (and 1,000 new partitions no 2,000 fsyncs):
                // its rebuild is as cheap next time. A damaged file is replaced.
                let write = !entries.is_empty() || damaged;
                (LeaderEpochCache::new(dir, entries), write)
            }
        };
        // Entries at or past the log end are epochs that never got a batch (every restart of
        // a leader leaves one) or whose batches recovery cut: every open drops them again, so
        // the file is rewritten only before the log grows past them (`assign`), not by every
        // partition of a restarting broker.
        let dropped = cache.truncate_from_end(log_end_offset);
        changed |= cache.truncate_from_start(log_start_offset);
        // Epochs the active segment's batches carry beyond the checkpoint: a new epoch is
        // written without fsync, so after a power loss the batches can be newer than the file.
        for start in active_epoch_starts.iter().filter(|_| !segments.is_empty()) {
            if start.start_offset < log_end_offset
                && cache
                    .latest_epoch()
                    .is_none_or(|latest| start.epoch > latest)
            {
                cache.push_epoch(*start);
                changed = true;
            }
        }
        // Not synced: every open fits the entries to the log again, and a segment closing
        // makes them durable ([`Self::sync`]).
        if changed {
            write_checkpoint(&cache.path, &cache.entries, false)?;
        }
        cache.dirty = changed || dropped;
        cache.file_has_dropped_entries = dropped && !changed;
        Ok(cache)
    }

    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub fn latest(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.latest().map(|e| e.epoch)
    }

    /// Records that `epoch` starts at `start_offset` (in memory; the file follows when a
    /// segment closes, see the module doc). `Ok(false)` when nothing changes: a negative epoch,
    /// or `epoch` is already the latest. An epoch below the latest is refused. Like Kafka,
    /// earlier entries starting at or after `start_offset` (epochs that never got a batch) are
    /// replaced.
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> Result<bool, StorageError> {
        if epoch < 0 {
            return Ok(false);
        }
        if let Some(latest) = self.latest() {
            if epoch < latest.epoch {
                return Err(StorageError::StaleLeaderEpoch {
                    latest: latest.epoch,
                    got: epoch,
                });
            }
            if epoch == latest.epoch {
                return Ok(false);
            }
        }
        self.push_epoch(EpochEntry {
            epoch,
            start_offset,
        });
        // In memory until a segment closes (see the module doc).
        self.dirty = true;
        Ok(true)
    }

    /// Called before every append: if opening dropped entries at the log end (see the module
    /// doc), the file loses them before the log grows past them; otherwise a batch appended
    /// there at an older epoch would sit under an entry that the next open keeps.
    pub fn before_append(&mut self) -> Result<(), StorageError> {
        if self.file_has_dropped_entries {
            write_checkpoint(&self.path, &self.entries, false)?;
            self.file_has_dropped_entries = false;
        }
        Ok(())
    }

    /// Appends a newer epoch; earlier entries starting at or after it (epochs that never got a
    /// batch) go, as Kafka does. Nothing is written.
    fn push_epoch(&mut self, entry: EpochEntry) {
        while self
            .entries
            .last()
            .is_some_and(|e| e.start_offset >= entry.start_offset)
        {
            self.entries.pop();
        }
        self.entries.push(entry);
        assert_increasing(&self.entries);
    }

    /// Makes the checkpoint file hold the entries durably, if it may not.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if self.dirty {
            self.persist()?;
        }
        Ok(())
    }

    /// Kafka's OffsetForLeaderEpoch answer for `epoch` (`LeaderEpochFileCache.endOffsetFor`):
    /// - the latest cached epoch: `(epoch, log_end_offset)`;
    /// - otherwise, with `next` the first cached epoch above `epoch`: the largest cached epoch
    ///   at or below `epoch` (or `epoch` itself when every cached epoch is above it) and
    ///   `next`'s start offset, where the requested epoch ends at the latest;
    /// - `None` (UNDEFINED_EPOCH / UNDEFINED_EPOCH_OFFSET) for a negative epoch, an empty cache,
    ///   or an epoch above every cached one.
    pub fn end_offset_for(&self, epoch: i32, log_end_offset: i64) -> Option<(i32, i64)> {
        if epoch < 0 {
            return None;
        }
        let latest = self.latest()?;
        if epoch == latest.epoch {
            return Some((epoch, log_end_offset));
        }
        let above = self.entries.partition_point(|e| e.epoch <= epoch);
        let next = self.entries.get(above)?;
        let floor_epoch = above
            .checked_sub(1)
            .map_or(epoch, |i| self.entries[i].epoch);
        Some((floor_epoch, next.start_offset))
    }

    /// Removes the entries starting at or after `end_offset`. Returns whether any went; the
    /// caller persists.
    pub fn truncate_from_end(&mut self, end_offset: i64) -> bool {
        let keep = self
            .entries
            .partition_point(|e| e.start_offset < end_offset);
        let changed = keep < self.entries.len();
        self.entries.truncate(keep);
        changed
    }

    /// The log now starts at `start_offset`: entries below it go, except the last of them,
    /// which moves up to `start_offset` (its epoch still covers the first batches). Returns
    /// whether anything changed; the caller persists.
    pub fn truncate_from_start(&mut self, start_offset: i64) -> bool {
        let below = self
            .entries
            .partition_point(|e| e.start_offset < start_offset);
        let Some(last_below) = below.checked_sub(1) else {
            return false;
        };
        let at_start = self
            .entries
            .get(below)
            .is_some_and(|e| e.start_offset == start_offset);
        if at_start {
            // An epoch starts exactly at the new start: every earlier one is gone.
            self.entries.drain(..below);
        } else {
            self.entries[last_below].start_offset = start_offset;
            self.entries.drain(..last_below);
        }
        true
    }

    /// Replaces every entry, persisting first; on an I/O error nothing changed.
    pub fn replace(&mut self, entries: Vec<EpochEntry>) -> Result<(), StorageError> {
        assert_increasing(&entries);
        write_checkpoint(&self.path, &entries, true)?;
        self.entries = entries;
        self.dirty = false;
        self.file_has_dropped_entries = false;
        Ok(())
    }

    /// Writes the entries to the checkpoint file, durably.
    pub fn persist(&mut self) -> Result<(), StorageError> {
        write_checkpoint(&self.path, &self.entries, true)?;
        self.dirty = false;
        self.file_has_dropped_entries = false;
        Ok(())
    }
}

fn assert_increasing(entries: &[EpochEntry]) {
    for pair in entries.windows(2) {
        assert!(
            pair[0].epoch < pair[1].epoch && pair[0].start_offset < pair[1].start_offset,
            "leader epoch entries must strictly increase: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
}

/// Kafka's checkpoint text for `entries`.
pub fn encode(entries: &[EpochEntry]) -> String {
    let mut text = format!("{CHECKPOINT_VERSION}\n{}\n", entries.len());
    for e in entries {
        text.push_str(&format!("{} {}\n", e.epoch, e.start_offset));
    }
    text
}

/// Parses checkpoint text, refusing anything that is not whole, version 0, with the announced
/// number of strictly increasing, non-negative entries.
pub fn decode(text: &str) -> Result<Vec<EpochEntry>, String> {
    let mut lines = text.lines();
    let mut next_line = |what: &str| lines.next().ok_or_else(|| format!("missing {what}"));
    let version: i64 = next_line("version")?
        .trim()
        .parse()
        .map_err(|e| format!("version: {e}"))?;
    if version != CHECKPOINT_VERSION {
        return Err(format!("unknown version {version}"));
    }
    let count: usize = next_line("entry count")?
        .trim()
        .parse()
        .map_err(|e| format!("entry count: {e}"))?;
    // No reservation from `count`: it is read from disk; the lines bound the work.
    let mut entries = Vec::new();
    for line in lines.by_ref().take(count) {
        let mut fields = line.split_whitespace();
        let (Some(epoch), Some(start), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(format!("malformed entry {line:?}"));
        };
        let epoch: i32 = epoch.parse().map_err(|e| format!("epoch {epoch:?}: {e}"))?;
        let start_offset: i64 = start
            .parse()
            .map_err(|e| format!("start offset {start:?}: {e}"))?;
        if epoch < 0 || start_offset < 0 {
            return Err(format!("negative entry {line:?}"));
        }
        let entry = EpochEntry {
            epoch,
            start_offset,
        };
        if let Some(previous) = entries.last() {
            let previous: &EpochEntry = previous;
            if entry.epoch <= previous.epoch || entry.start_offset <= previous.start_offset {
                return Err(format!(
                    "entries not increasing: {previous:?} then {entry:?}"
                ));
            }
        }
        entries.push(entry);
    }
    if entries.len() != count {
        return Err(format!(
            "{} entries, the header says {count}",
            entries.len()
        ));
    }
    if lines.any(|l| !l.trim().is_empty()) {
        return Err("trailing lines after the entries".into());
    }
    Ok(entries)
}

/// The entries of the checkpoint at `path`, or why it cannot be used (missing included).
fn read_checkpoint(path: &Path) -> Result<Vec<EpochEntry>, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if len > MAX_CHECKPOINT_BYTES {
        return Err(format!("{len} bytes, larger than any checkpoint"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    decode(&text)
}

/// Atomically replaces the checkpoint: temporary file, rename; with `sync`, the file is
/// fsync'd before the rename and the directory after it.
fn write_checkpoint(path: &Path, entries: &[EpochEntry], sync: bool) -> io::Result<()> {
    let temporary = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(encode(entries).as_bytes())?;
        if sync {
            file.sync_all()?;
        }
    }
    std::fs::rename(&temporary, path)?;
    if sync {
        sync_dir_of(path)?;
    }
    Ok(())
}

fn sync_dir_of(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Rebuilds the entries of a log whose checkpoint is missing or corrupt (a log written before
/// the checkpoint existed, or a damaged file) from the leader epochs its batches carry.
///
/// `active_epoch_starts` are the epoch changes the recovery scan of the active (last) segment
/// saw, which costs nothing more. A closed segment costs one header read for its first batch;
/// it is scanned header by header only when its first epoch differs from the next segment's,
/// i.e. when an epoch starts inside it (epochs never decrease along a log, so equal first
/// epochs mean one epoch throughout). Leader changes are rare, so this reads a few headers
/// per segment plus the segments where leadership changed.
pub fn rebuild_entries(
    segments: &[Rc<Segment>],
    active_epoch_starts: &[EpochEntry],
    max_batch_bytes: usize,
) -> Result<Vec<EpochEntry>, StorageError> {
    let mut entries: Vec<EpochEntry> = Vec::new();
    let mut add = |epoch: i32, start_offset: i64| {
        if epoch >= 0 && entries.last().is_none_or(|e| epoch > e.epoch) {
            entries.push(EpochEntry {
                epoch,
                start_offset,
            });
        }
    };
    let Some((_active, closed)) = segments.split_last() else {
        return Ok(Vec::new());
    };
    let first_epochs: Vec<Option<(i32, i64)>> = closed
        .iter()
        .map(|s| first_batch_epoch(s, max_batch_bytes))
        .collect::<Result<_, _>>()?;
    let active_first_epoch = active_epoch_starts.first().map(|e| e.epoch);
    for (i, segment) in closed.iter().enumerate() {
        let Some((first_epoch, first_offset)) = first_epochs[i] else {
            continue; // an empty closed segment
        };
        let next_first_epoch = first_epochs[i + 1..]
            .iter()
            .find_map(|f| f.map(|(epoch, _)| epoch))
            .or(active_first_epoch);
        if next_first_epoch == Some(first_epoch) {
            add(first_epoch, first_offset);
            continue;
        }
        segment.scan_headers(0, segment.size_bytes(), max_batch_bytes, |_, header| {
            add(header.partition_leader_epoch, header.base_offset);
            ControlFlow::<()>::Continue(())
        })?;
    }
    for e in active_epoch_starts {
        add(e.epoch, e.start_offset);
    }
    Ok(entries)
}

/// The leader epoch and base offset of a segment's first batch.
fn first_batch_epoch(
    segment: &Segment,
    max_batch_bytes: usize,
) -> Result<Option<(i32, i64)>, StorageError> {
    segment.scan_headers(0, segment.size_bytes(), max_batch_bytes, |_, header| {
        ControlFlow::Break((header.partition_leader_epoch, header.base_offset))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(list: &[(i32, i64)]) -> Vec<EpochEntry> {
        list.iter()
            .map(|&(epoch, start_offset)| EpochEntry {
                epoch,
                start_offset,
            })
            .collect()
    }

    fn cache(dir: &Path, list: &[(i32, i64)]) -> LeaderEpochCache {
        LeaderEpochCache::new(dir, entries(list))
    }

    #[test]
    fn checkpoint_text_round_trips_and_rejects_damage() {
        let list = entries(&[(0, 0), (3, 150), (7, 9_000_000_000)]);
        let text = encode(&list);
        assert_eq!(text, "0\n3\n0 0\n3 150\n7 9000000000\n");
        assert_eq!(decode(&text).unwrap(), list);
        assert_eq!(decode("0\n0\n").unwrap(), vec![]);
        assert_eq!(
            decode("0\n1\n5 10").unwrap(),
            entries(&[(5, 10)]),
            "no final newline"
        );
        for bad in [
            "",
            "1\n0\n",
            "0\n",
            "0\n2\n0 0\n",
            "0\n1\n0 0\n1 5\n",
            "0\n2\n3 10\n2 20\n",
            "0\n2\n2 10\n3 10\n",
            "0\n1\n-1 0\n",
            "0\n1\n1 x\n",
            "0\n1\n1 2 3\n",
            "0\nlots\n",
            "0\n1\n0 0\n\n7\n",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn assign_appends_newer_epochs_and_refuses_older_ones_sync_persists() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cache(dir.path(), &[]);
        assert_eq!(c.latest_epoch(), None);
        assert!(!c.assign(-1, 0).unwrap(), "no epoch: nothing to record");
        assert!(c.assign(2, 0).unwrap());
        assert!(!c.assign(2, 50).unwrap(), "same epoch: no change");
        assert!(c.assign(5, 100).unwrap());
        assert!(matches!(
            c.assign(4, 120),
            Err(StorageError::StaleLeaderEpoch { latest: 5, got: 4 })
        ));
        // An epoch that never got a batch is replaced by the next starting at the same offset.
        assert!(c.assign(6, 100).unwrap());
        assert_eq!(c.entries(), entries(&[(2, 0), (6, 100)]));
        assert!(
            !dir.path().join(CHECKPOINT_FILE).exists(),
            "kept in memory until a segment closes"
        );
        c.sync().unwrap();
        let on_disk = std::fs::read_to_string(dir.path().join(CHECKPOINT_FILE)).unwrap();
        assert_eq!(decode(&on_disk).unwrap(), c.entries());
        assert!(!dir.path().join("leader-epoch-checkpoint.tmp").exists());
    }

    #[test]
    fn end_offsets_follow_kafka() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path(), &[(1, 10), (3, 50), (6, 80)]);
        let leo = 120;
        assert_eq!(
            c.end_offset_for(6, leo),
            Some((6, 120)),
            "latest: the log end"
        );
        assert_eq!(c.end_offset_for(3, leo), Some((3, 80)));
        assert_eq!(
            c.end_offset_for(4, leo),
            Some((3, 80)),
            "largest epoch <= 4"
        );
        assert_eq!(c.end_offset_for(5, leo), Some((3, 80)));
        assert_eq!(c.end_offset_for(1, leo), Some((1, 50)));
        assert_eq!(
            c.end_offset_for(0, leo),
            Some((0, 10)),
            "below every epoch: the requested epoch ends where the first known starts"
        );
        assert_eq!(c.end_offset_for(7, leo), None, "above every epoch");
        assert_eq!(c.end_offset_for(-1, leo), None);
        assert_eq!(cache(dir.path(), &[]).end_offset_for(0, leo), None);
    }

    #[test]
    fn truncation_from_either_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cache(dir.path(), &[(1, 10), (3, 50), (6, 80)]);
        assert!(!c.truncate_from_end(81));
        assert!(c.truncate_from_end(80), "an entry starting at the end goes");
        assert_eq!(c.entries(), entries(&[(1, 10), (3, 50)]));
        assert!(!c.truncate_from_start(10));
        assert!(
            c.truncate_from_start(30),
            "the earliest moves up to the start"
        );
        assert_eq!(c.entries(), entries(&[(1, 30), (3, 50)]));
        assert!(c.truncate_from_start(50));
        assert_eq!(c.entries(), entries(&[(3, 50)]));
        assert!(c.truncate_from_start(70));
        assert_eq!(c.entries(), entries(&[(3, 70)]));
        assert!(c.truncate_from_end(0));
        assert!(c.entries().is_empty());
        assert!(!c.truncate_from_start(100));
    }

    /// A new epoch is written without fsync: after a power loss the checkpoint may lack the
    /// newest epochs that the active segment's batches carry. Opening adds them, and `sync`
    /// (when a segment closes) writes them durably.
    #[test]
    fn epochs_newer_than_the_checkpoint_come_from_the_active_segment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000000.log");
        std::fs::write(&path, b"").unwrap();
        let segment = Rc::new(Segment::new(
            dir.path(),
            0,
            None,
            crate::storage::index::OffsetIndex::default(),
            crate::storage::index::TimeIndex::default(),
        ));
        std::fs::write(
            dir.path().join(CHECKPOINT_FILE),
            encode(&entries(&[(1, 0), (2, 40)])),
        )
        .unwrap();
        let active = entries(&[(2, 40), (3, 70), (5, 90)]);
        let mut c =
            LeaderEpochCache::open(dir.path(), &[segment], &active, (0, 100), 1 << 20).unwrap();
        assert_eq!(c.entries(), entries(&[(1, 0), (2, 40), (3, 70), (5, 90)]));
        assert!(c.dirty, "written, not synced, until a segment closes");
        let on_disk = std::fs::read_to_string(dir.path().join(CHECKPOINT_FILE)).unwrap();
        assert_eq!(decode(&on_disk).unwrap(), c.entries());
        c.sync().unwrap();
        assert!(!c.dirty);
        assert!(c.assign(7, 100).unwrap());
        assert!(c.dirty, "a new epoch is kept in memory");
        let on_disk = std::fs::read_to_string(dir.path().join(CHECKPOINT_FILE)).unwrap();
        assert_eq!(decode(&on_disk).unwrap().len(), 4);
        c.sync().unwrap();
        let on_disk = std::fs::read_to_string(dir.path().join(CHECKPOINT_FILE)).unwrap();
        assert_eq!(
            decode(&on_disk).unwrap(),
            c.entries(),
            "until a segment closes"
        );
    }

    #[test]
    fn a_missing_or_corrupt_checkpoint_is_rebuilt_and_fitted_to_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let starts = entries(&[(2, 40), (4, 60)]);
        // Missing: rebuilt from the active segment's epoch starts (no segments here).
        let c = LeaderEpochCache::open(dir.path(), &[], &starts, (0, 100), 1 << 20).unwrap();
        assert!(
            c.entries().is_empty(),
            "no segments: nothing to rebuild from"
        );
        // A checkpoint with an entry past the log end and one below the log start.
        std::fs::write(
            dir.path().join(CHECKPOINT_FILE),
            encode(&entries(&[(1, 0), (2, 40), (4, 60), (9, 100)])),
        )
        .unwrap();
        let c = LeaderEpochCache::open(dir.path(), &[], &[], (50, 100), 1 << 20).unwrap();
        assert_eq!(c.entries(), entries(&[(2, 50), (4, 60)]));
        let on_disk = std::fs::read_to_string(dir.path().join(CHECKPOINT_FILE)).unwrap();
        assert_eq!(
            decode(&on_disk).unwrap(),
            c.entries(),
            "the fitted entries persisted"
        );
    }
}
