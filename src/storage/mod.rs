//! Partition logs: segments, sparse indexes, O_DIRECT appends, recovery, retention.
//!
//! One [`PartitionLog`] per topic-partition, owned by the shard (glommio executor, one core) that
//! leads or follows that partition. Nothing here is `Send`: other cores reach a log only through
//! messages to its shard, except for [`ReadSlice::file`], a read-only handle to written bytes,
//! which may be sent anywhere for sendfile (see the invariants for when those bytes change).
//!
//! # Layout
//! - [`log`]: [`PartitionLog`], the public API: appends (synchronous offset assignment; a
//!   follower's as the leader sent them), waits, the epoch cache, lifecycle; `log/read.rs`
//!   the fetch path, `log/truncate.rs` follower truncation, `log/retention.rs` segment deletion.
//! - [`writer`]: the per-partition writer task: coalesces queued batches into aligned O_DIRECT
//!   writes, rolls segments, group-commits fdatasync.
//! - [`segment`]: one `<base_offset:020>.log` file with its in-memory sparse indexes and the
//!   pread-based header scans used by reads, and the kernel read-ahead hints for consumers.
//! - [`index`]: the `.index` / `.timeindex` entry formats, lookups, staleness checks.
//! - [`recovery`]: rebuilds a log on open (and the segment a truncation cuts); `recovery/scan.rs`
//!   [`scan_valid_prefix`] and the buffered chunked scan, `recovery/direct.rs` the O_DIRECT
//!   scan of the active segment (several reads in flight, page-cache residency).
//! - [`retention`]: which closed segments time and size retention delete.
//! - [`cleaner`]: log compaction (`cleanup.policy=compact`): latest record per key in closed
//!   segments, rewritten with their offsets and swapped in crash-safely.
//! - [`notify`]: cancel-safe waits on the written offset, the durable offset and the high
//!   watermark; the high watermark's bound; truncation of pending waits.
//! - [`epoch_cache`]: the leader epoch cache (`leader-epoch-checkpoint`): which leader epoch
//!   starts at which offset, for OffsetForLeaderEpoch and follower truncation.
//! - [`timestamp`]: record-level timestamp search inside one uncompressed batch.
//! - [`txn_index`]: `<base>.txnindex`, the aborted transactions whose markers a segment holds.
//! - [`producer_snapshot`]: the log's producer state (`ProducerTracker`, fed by the writer)
//!   and its `<offset>.snapshot` files, written at each roll; recovery starts from the newest.
//! - [`reaper`]: unlinks the files of deleted segments no new segment reused, one at a time at
//!   a bounded rate per shard (freeing blocks all at once stalled the shard's writes).
//! - [`tail_cache`]: the newest batches in memory (the producer's `Bytes`), so tailing
//!   consumers never wait for the device: O_DIRECT appends leave the page cache empty.
//! - [`journal`]: the shard's ring of appended batches in a shared tmpfs mapping: what makes an
//!   acks=1 append safe from the process's death before its segment write; replayed at open.
//! - [`warm`]: a fetch below the tail cache whose bytes are not in the page cache has them
//!   read on a blocking-pool thread first, so its reads on the shard do not wait for the device.
//!
//! # On disk (Kafka's naming)
//! `<dir>/<base_offset:020>.log` holds whole RecordBatch v2 batches back to back. The active
//! (last) segment may carry zero padding past its logical end, because O_DIRECT writes whole
//! 4 KiB pages; recovery cuts it. `.index` holds 8-byte entries (relative offset i32 BE, file
//! position i32 BE), `.timeindex` 12-byte entries (timestamp i64 BE, relative offset i32 BE).
//! Index files are derived data: written with buffered writes when a segment is closed, trusted
//! only for closed segments and only after a staleness check, rebuilt otherwise.
//!
//! `<dir>/<base_offset:020>.txnindex` (only for segments with abort markers) holds Kafka's
//! 34-byte aborted-transaction entries; `<dir>/<offset:020>.snapshot` the producer state at
//! that offset (this broker's own format, CRC-32C; Kafka's name). Both are synced when written
//! at a roll; a damaged one is rebuilt by scanning from an older snapshot.
//!
//! `<dir>/leader-epoch-checkpoint` is Kafka's text file: a version line `0`, an entry count,
//! then one `epoch start_offset` line per entry.
//!
//! # Watermarks
//! - written: every offset below it is in the segment file (replica fetches read up to here);
//! - durable: also fdatasync'd (acks=all on an unreplicated log waits for this);
//! - journaled: written or in the shard's [`journal`] (acks=1 waits for this); `written`
//!   without a journal;
//! - high watermark: visible to consumers. It follows `journaled` unless the replication
//!   layer bounds it ([`PartitionLog::set_high_watermark_bound`]) to what followers wrote.
//!
//! # Invariants
//! - `log_start_offset <= high_watermark <= journaled <= log_end_offset`,
//!   `durable <= written <= journaled`. Consumers read `[written, high watermark)` from the
//!   tail cache only, never from a file.
//! - Bytes below the written offset change only by truncation ([`PartitionLog::truncate_to`],
//!   a follower removing a divergent suffix): a sendfile racing it finds a short file and fails
//!   that one response (Kafka has the same race). Retention and deletion only unlink files;
//!   the log cleaner ([`cleaner`]) renames a new file over a closed segment, so open handles
//!   keep the old bytes.
//! - Every byte of a segment below its logical size holds whole valid batches with strictly
//!   increasing offsets; closed segments are truncated to their logical size and fdatasync'd.
//! - A segment is never larger than `i32::MAX` bytes and never spans more than `i32::MAX`
//!   offsets, so index entries fit Kafka's i32 fields.

use std::fmt;
use std::io;

pub mod clean_close;
pub mod cleaner;
pub mod direct_read;
pub mod epoch_cache;
mod extents;
pub mod index;
pub mod journal;
pub mod log;
pub mod notify;
pub mod preallocate;
pub mod producer_snapshot;
pub mod reaper;
pub mod recovery;
pub mod retention;
pub mod segment;
mod staging;
mod stream_copy;
pub mod tail_cache;
pub mod timestamp;
pub mod txn_index;
pub mod warm;
pub mod writer;

#[cfg(test)]
mod producer_recovery_tests;
#[cfg(test)]
mod replica_tests;
#[cfg(test)]
pub(crate) mod testutil;

pub use self::epoch_cache::EpochEntry;
pub use self::log::{LogStats, PartitionLog};
pub use self::recovery::{scan_valid_prefix, ScanResult, ScanStop};

/// O_DIRECT write granularity. The device may accept 512, but 4 KiB pages keep every write
/// aligned for any device we run on and match the page cache that sendfile reads from.
pub const PAGE_BYTES: u64 = 4096;

/// Per-partition log settings; names follow Kafka's topic/broker configs.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `log.segment.bytes`: roll before a batch would push the active segment past this.
    pub segment_bytes: u64,
    /// `log.roll.ms` / `segment.ms`: roll before a batch arriving when the active segment was
    /// created this long ago (in this process: a restart starts the clock again), so that
    /// retention and compaction, which never touch the active segment, reach quiet data too.
    pub segment_ms: i64,
    /// `log.retention.ms`; -1 = unlimited.
    pub retention_ms: i64,
    /// `log.retention.bytes`; -1 = unlimited.
    pub retention_bytes: i64,
    /// `log.index.interval.bytes`: bytes of batches between two sparse index entries.
    pub index_interval_bytes: u32,
    /// Upper bound for one batch (header included), used whenever a length is read from disk.
    pub max_batch_bytes: usize,
    /// Cap of this partition's tail cache (newest batches kept in memory); 0 disables it.
    /// The shard derives it from `log.tail.cache.bytes` (`Shard::log_config_for`).
    pub tail_cache_bytes: usize,
    /// `log.segment.delete.delay.ms` (Kafka's name and default, 60 s): how long a deleted
    /// segment's file waits for a new segment to reuse it before it is unlinked (paced, by the
    /// shard's [`reaper`]).
    pub file_delete_delay_ms: u64,
    /// `log.preallocate.ahead.bytes`: how far ahead of its writes the active segment's file is
    /// allocated ([`preallocate`]); 0 turns preallocation off.
    pub preallocate_ahead_bytes: u64,
    /// Leader appends go to the shard's journal too, if it has one ([`journal`]): acks=1 is
    /// answered, and consumers see the batch, once it is there, before its segment write.
    /// Set for client topics by the shard (`Shard::log_config_for`); internal logs wait for
    /// their writes (their appends wait for fdatasync anyway).
    pub journal: bool,
    /// Fetches read cold segment bytes into memory with O_DIRECT (`storage::direct_read`; set
    /// for client topics while `fetch.cold.read.buffer.bytes` is not 0, by
    /// `Shard::log_config_for`). Then nothing here brings segment bytes into the page cache
    /// ahead of a consumer, where the next fetch would find them "warm" and send them with
    /// sendfile, the path cold reads into memory replace: no read-ahead hints
    /// ([`segment::Segment::hint_read_ahead`]; after one hinted fallback a test consumer's
    /// backlog went two thirds through the page cache), and the cold check counts cached pages
    /// only ([`warm::ColdRange::of_counted`]), since its one-byte probes start the kernel's
    /// read-ahead on a miss and the device read each cold range twice.
    pub cold_reads_in_memory: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            // Kafka's log.roll.hours=168.
            segment_ms: 7 * 24 * 60 * 60 * 1000,
            retention_ms: 7 * 24 * 60 * 60 * 1000,
            retention_bytes: -1,
            index_interval_bytes: 4096,
            // Kafka's message.max.bytes default (1 MiB + 12 bytes of log overhead).
            max_batch_bytes: 1_048_588,
            tail_cache_bytes: 8 << 20,
            file_delete_delay_ms: 60_000,
            preallocate_ahead_bytes: preallocate::DEFAULT_AHEAD_BYTES,
            journal: false,
            cold_reads_in_memory: false,
        }
    }
}

impl LogConfig {
    /// Rejects settings the on-disk format cannot represent (positions are i32 in the index).
    pub fn validate(&self) -> Result<(), StorageError> {
        let header_len = crate::record_batch::HEADER_LEN;
        if self.segment_bytes < PAGE_BYTES || self.segment_bytes > i32::MAX as u64 {
            return Err(StorageError::InvalidConfig(format!(
                "segment_bytes {} outside [{PAGE_BYTES}, {}]",
                self.segment_bytes,
                i32::MAX
            )));
        }
        if self.index_interval_bytes == 0 {
            return Err(StorageError::InvalidConfig(
                "index_interval_bytes must be > 0".into(),
            ));
        }
        if self.max_batch_bytes < header_len || self.max_batch_bytes > i32::MAX as usize {
            return Err(StorageError::InvalidConfig(format!(
                "max_batch_bytes {} outside [{header_len}, {}]",
                self.max_batch_bytes,
                i32::MAX
            )));
        }
        Ok(())
    }
}

/// Errors of the storage layer.
#[derive(Debug)]
pub enum StorageError {
    Io(io::Error),
    OffsetOutOfRange {
        requested: i64,
        log_start: i64,
        log_end: i64,
    },
    /// The log was closed or deleted.
    Closed,
    /// A batch handed to `append` is larger than `max_batch_bytes` or disagrees with its header.
    InvalidBatch(String),
    /// Bytes on disk below the written offset do not parse; the segment needs recovery.
    Corrupt {
        segment_base_offset: i64,
        position: u64,
        reason: String,
    },
    InvalidConfig(String),
    /// `append_replica` got a batch that does not start at the log end offset.
    NonMonotonicOffset {
        expected: i64,
        got: i64,
    },
    /// A batch's leader epoch is below the latest one in the log's epoch cache (a follower
    /// must truncate diverging data first; a leader never appends with an older epoch).
    StaleLeaderEpoch {
        latest: i32,
        got: i32,
    },
    /// The offset waited for was removed by a truncation, which left the log ending at
    /// `log_end` (a demoted leader's produce waiters get this, never success).
    Truncated {
        offset: i64,
        log_end: i64,
    },
    /// A truncation is in progress; appends are refused until it ends.
    Truncating,
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Io(e) => write!(f, "storage i/o error: {e}"),
            StorageError::OffsetOutOfRange {
                requested,
                log_start,
                log_end,
            } => {
                write!(
                    f,
                    "offset {requested} out of range [{log_start}, {log_end}]"
                )
            }
            StorageError::Closed => write!(f, "log is closed"),
            StorageError::InvalidBatch(why) => write!(f, "invalid batch: {why}"),
            StorageError::Corrupt {
                segment_base_offset,
                position,
                reason,
            } => write!(
                f,
                "corrupt segment {segment_base_offset:020}.log at position {position}: {reason}"
            ),
            StorageError::InvalidConfig(why) => write!(f, "invalid log config: {why}"),
            StorageError::NonMonotonicOffset { expected, got } => write!(
                f,
                "replica batch starts at offset {got}, the log ends at {expected}"
            ),
            StorageError::StaleLeaderEpoch { latest, got } => write!(
                f,
                "batch leader epoch {got} is below the log's latest epoch {latest}"
            ),
            StorageError::Truncated { offset, log_end } => write!(
                f,
                "offset {offset} was removed by a truncation to offset {log_end}"
            ),
            StorageError::Truncating => write!(f, "log is being truncated"),
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for StorageError {
    fn from(e: io::Error) -> Self {
        StorageError::Io(e)
    }
}

impl<T> From<glommio::GlommioError<T>> for StorageError {
    fn from(e: glommio::GlommioError<T>) -> Self {
        StorageError::Io(e.into())
    }
}

/// Which watermark a read or a wait for data stops at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadLimit {
    /// Consumers: only what the high watermark makes visible.
    HighWatermark,
    /// Replica fetches: everything written to the segment files.
    Written,
    /// read_committed consumers: below the high watermark and below this offset (the last
    /// stable offset).
    Below(i64),
}

/// Result of a successful [`PartitionLog::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    /// -1: timestamps are the producer's (CreateTime); the broker never rewrites them.
    pub log_append_time_ms: i64,
}

/// What [`PartitionLog::read`] returns: whole batches (the last may be partial when
/// `max_bytes` cut it) either as a segment file range to sendfile, or as memory chunks from the
/// tail cache. `Send`: another shard's connection writes it.
#[derive(Debug, Clone)]
pub enum Records {
    File(ReadSlice),
    /// Chunks to write in order: the batches' patched heads and the producers' bytes.
    Memory {
        chunks: Vec<bytes::Bytes>,
        len: usize,
    },
}

impl Records {
    /// Appends the bytes to `buf` (a replay of an internal log: never on the fetch path).
    pub fn copy_into(&self, buf: &mut Vec<u8>) -> std::io::Result<()> {
        match self {
            Records::File(slice) => {
                let start = buf.len();
                buf.resize(start + slice.len, 0);
                std::os::unix::fs::FileExt::read_exact_at(
                    &*slice.file,
                    &mut buf[start..],
                    slice.position,
                )
            }
            Records::Memory { chunks, .. } => {
                for chunk in chunks {
                    buf.extend_from_slice(chunk);
                }
                Ok(())
            }
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Records::File(slice) => slice.len,
            Records::Memory { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cuts to at most `max_bytes` (clients drop a partial trailing batch).
    pub fn truncate(&mut self, max_bytes: usize) {
        match self {
            Records::File(slice) => slice.len = slice.len.min(max_bytes),
            Records::Memory { chunks, len } => {
                if *len <= max_bytes {
                    return;
                }
                let mut left = max_bytes;
                let mut keep = 0;
                for chunk in chunks.iter_mut() {
                    if left == 0 {
                        break;
                    }
                    if chunk.len() > left {
                        chunk.truncate(left);
                    }
                    left -= chunk.len();
                    keep += 1;
                }
                chunks.truncate(keep);
                *len = max_bytes;
            }
        }
    }
}

/// A byte range of one segment file holding whole batches (the last may be partial when
/// `max_bytes` cut it), to be sent to a socket with sendfile.
///
/// `file` is a plain (page-cache, not O_DIRECT) read-only handle, `Send + Sync`, so another core
/// may sendfile from it: written bytes change only by a follower's truncation, which a racing
/// sendfile sees as a short file. Deleting the segment
/// (retention) only unlinks the name; an open handle keeps the bytes readable. It is marked
/// `POSIX_FADV_SEQUENTIAL`, and `PartitionLog::read` may already have asked the kernel to read
/// the range and what follows it (see `Segment::hint_read_ahead`), so a catch-up consumer's
/// sendfile finds cold bytes on their way into the page cache.
#[derive(Debug, Clone)]
pub struct ReadSlice {
    pub file: std::sync::Arc<std::fs::File>,
    pub position: u64,
    pub len: usize,
}
