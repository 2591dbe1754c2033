//! The clean-close record: what a log's clean close leaves in its directory so the next open
//! trusts the active segment instead of scanning it (Kafka's `.kafka_cleanshutdown` plus its
//! producer-state snapshot, per partition).
//!
//! Without it, opening a log CRC-checks its whole active segment (to find a torn tail and
//! rebuild the producer state): a restart of a broker whose active segments hold 7 GB took
//! 5.4 s to the ready line, all of it that scan. A clean close has fdatasync'd the segment, cut
//! its padding, written its index files and synced the leader epoch checkpoint; the record
//! adds the segment's size and next offset and the idempotent producers' state. The producer
//! state with open transactions is in the producer-state snapshot at the next offset
//! (`producer_snapshot`) and the aborted ones in the segment's `.txnindex`, both written by
//! the close: without a valid snapshot there the open scans as after a crash.
//!
//! The record is written without fsync and never trusted blindly: it is taken (read and
//! unlinked) at open and used only if its CRC holds, it names the active segment, and the
//! segment's file is exactly the recorded size with the last index entry and the batches
//! after it ending at the recorded next offset (`recovery::recover_log`). Any append after the
//! record was written makes the file longer (O_DIRECT writes whole pages past the logical
//! end), so a crash later falls back to the full scan. A truncation unlinks the record first.

use std::io;
use std::path::Path;

use crate::record_batch::BatchHeader;

/// In the partition's directory.
pub const FILE_NAME: &str = "clean-close";

const MAGIC: &[u8; 8] = b"BRKCLOSE";
const VERSION: u8 = 1;
const FIXED_BYTES: usize = 8 + 1 + 8 + 8 + 8 + 4;
const PRODUCER_BATCH_BYTES: usize = 8 + 8 + 2 + 4 + 4;
const CRC_BYTES: usize = 4;
/// Far above any real record (a producer's five batches are 130 bytes): a larger file is
/// damage, not state, and is never read into memory.
const MAX_FILE_BYTES: u64 = 64 << 20;

/// What a clean close knew about the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanClose {
    pub active_base_offset: i64,
    pub active_size_bytes: u64,
    pub next_offset: i64,
    /// The idempotent producers' last batches, oldest first (informational since the clean
    /// close also writes a producer-state snapshot at `next_offset`, which the open requires).
    pub producer_batches: Vec<BatchHeader>,
}

impl CleanClose {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            FIXED_BYTES + self.producer_batches.len() * PRODUCER_BATCH_BYTES + CRC_BYTES,
        );
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.active_base_offset.to_be_bytes());
        out.extend_from_slice(&self.active_size_bytes.to_be_bytes());
        out.extend_from_slice(&self.next_offset.to_be_bytes());
        out.extend_from_slice(&(self.producer_batches.len() as u32).to_be_bytes());
        for batch in &self.producer_batches {
            out.extend_from_slice(&batch.base_offset.to_be_bytes());
            out.extend_from_slice(&batch.producer_id.to_be_bytes());
            out.extend_from_slice(&batch.producer_epoch.to_be_bytes());
            out.extend_from_slice(&batch.base_sequence.to_be_bytes());
            out.extend_from_slice(&batch.last_sequence().to_be_bytes());
        }
        let crc = crate::checksum::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<CleanClose, String> {
        if bytes.len() < FIXED_BYTES + CRC_BYTES {
            return Err("shorter than its fixed fields".into());
        }
        let (body, crc) = bytes.split_at(bytes.len() - CRC_BYTES);
        if crate::checksum::crc32c(body).to_be_bytes() != crc {
            return Err("CRC mismatch".into());
        }
        if &body[..8] != MAGIC || body[8] != VERSION {
            return Err("unknown magic or version".into());
        }
        let mut reader = Reader { bytes: &body[9..] };
        let active_base_offset = reader.i64();
        let active_size_bytes = reader.i64() as u64;
        let next_offset = reader.i64();
        let count = reader.i32() as u32 as usize;
        if reader.bytes.len() != count * PRODUCER_BATCH_BYTES {
            return Err("producer batch count does not match the length".into());
        }
        let producer_batches = (0..count)
            .map(|_| {
                let base_offset = reader.i64();
                let producer_id = reader.i64();
                let producer_epoch = reader.i16();
                let first_sequence = reader.i32();
                let last_sequence = reader.i32();
                BatchHeader::for_producer_state(
                    producer_id,
                    producer_epoch,
                    (first_sequence, last_sequence),
                    base_offset,
                )
            })
            .collect();
        Ok(CleanClose {
            active_base_offset,
            active_size_bytes,
            next_offset,
            producer_batches,
        })
    }

    /// Writes the record into `dir` (replacing any). Not synced: a lost record costs the next
    /// open a scan, nothing else.
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        let tmp = dir.join(format!("{FILE_NAME}.tmp"));
        std::fs::write(&tmp, self.encode())?;
        std::fs::rename(&tmp, dir.join(FILE_NAME))
    }
}

/// Reads and removes the record in `dir`: `None` if there is none or it is damaged (logged).
/// Removed whatever it holds, so it can only ever describe the close just before this open.
pub fn take(dir: &Path) -> Option<CleanClose> {
    let path = dir.join(FILE_NAME);
    let bytes = match std::fs::metadata(&path) {
        Ok(meta) if meta.len() <= MAX_FILE_BYTES => std::fs::read(&path).ok(),
        Ok(_) => None,
        Err(_) => return None,
    };
    remove(dir);
    match CleanClose::decode(&bytes?) {
        Ok(record) => Some(record),
        Err(reason) => {
            tracing::warn!(path = %path.display(), %reason, "clean-close record unusable; scanning the log");
            None
        }
    }
}

/// Removes the record (a truncation changes what it describes). Missing is fine.
pub fn remove(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(FILE_NAME));
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.bytes.split_at(N);
        self.bytes = rest;
        head.try_into().expect("N bytes")
    }
    fn i16(&mut self) -> i16 {
        i16::from_be_bytes(self.take())
    }
    fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.take())
    }
    fn i64(&mut self) -> i64 {
        i64::from_be_bytes(self.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> CleanClose {
        CleanClose {
            active_base_offset: 1_000,
            active_size_bytes: 123_456,
            next_offset: 2_345,
            producer_batches: vec![
                BatchHeader::for_producer_state(7, 2, (0, 4), 1_100),
                BatchHeader::for_producer_state(9, 0, (i32::MAX - 1, 1), 1_200),
            ],
        }
    }

    #[test]
    fn round_trips() {
        let bytes = record().encode();
        assert_eq!(CleanClose::decode(&bytes), Ok(record()));
    }

    #[test]
    fn any_damage_is_refused() {
        let bytes = record().encode();
        for cut in 0..bytes.len() {
            assert!(CleanClose::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert!(CleanClose::decode(&flipped).is_err(), "bit flip at {at}");
        }
    }

    #[test]
    fn take_reads_once() {
        let dir = tempfile::tempdir().unwrap();
        record().write(dir.path()).unwrap();
        assert_eq!(take(dir.path()), Some(record()));
        assert_eq!(take(dir.path()), None, "taken: gone");
        std::fs::write(dir.path().join(FILE_NAME), b"garbage").unwrap();
        assert_eq!(take(dir.path()), None);
        assert!(!dir.path().join(FILE_NAME).exists());
    }

    mod with_log {
        use super::super::*;
        use crate::storage::log::tests::{append, consume_all, small_config};
        use crate::storage::testutil::{batch, build_batch, run};
        use crate::storage::PartitionLog;

        /// What idempotence checks read of the log's producer state.
        fn producer_state(log: &PartitionLog) -> Vec<(i64, i16, i32, i32, i64)> {
            log.recovered_producer_batches()
                .iter()
                .map(|h| {
                    let sequences = (h.base_sequence, h.last_sequence());
                    (
                        h.producer_id,
                        h.producer_epoch,
                        sequences.0,
                        sequences.1,
                        h.base_offset,
                    )
                })
                .collect()
        }

        /// A clean close's record makes the next open skip the scan and restore the producer
        /// state; appends after that open (then a crash) invalidate it: the scan is back and
        /// loses nothing.
        #[test]
        fn a_clean_close_is_trusted_once_and_never_after_more_appends() {
            run(|| async {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("t-0");
                let config = small_config();
                let log = PartitionLog::open(path.clone(), config.clone())
                    .await
                    .unwrap();
                for i in 0..40 {
                    append(&log, batch(3, 70, 1_000 + i));
                }
                let producer_offset =
                    append(&log, build_batch(1_000, &[0; 10], 10, 42, 0)).base_offset;
                let end = log.log_end_offset();
                log.wait_written(end, false).await.unwrap();
                let before = consume_all(&log, 0, 4096);
                log.close_clean().await.unwrap();
                assert!(path.join(FILE_NAME).exists());

                let log = PartitionLog::open(path.clone(), config.clone())
                    .await
                    .unwrap();
                assert!(log.opened_after_clean_close());
                assert!(!path.join(FILE_NAME).exists(), "taken at open");
                assert_eq!(log.log_end_offset(), end);
                assert_eq!(producer_state(&log), vec![(42, 0, 0, 9, producer_offset)]);
                assert_eq!(consume_all(&log, 0, 4096), before);
                // Appends continue where the log ended, across the trusted tail page.
                assert_eq!(append(&log, batch(2, 10, 5_000)).base_offset, end);
                log.wait_written(end + 2, false).await.unwrap();
                let with_more = consume_all(&log, 0, 4096);
                log.close_clean().await.unwrap();
                let saved = std::fs::read(path.join(FILE_NAME)).unwrap();

                // Opened again, appended to, crashed, with the old record back in place (an
                // unlink that never reached the disk): the file is longer than recorded.
                let log = PartitionLog::open(path.clone(), config.clone())
                    .await
                    .unwrap();
                assert!(log.opened_after_clean_close());
                append(&log, batch(5, 10, 6_000));
                log.wait_written(end + 7, false).await.unwrap();
                let crashed = consume_all(&log, 0, 4096);
                assert_eq!(&crashed[..with_more.len()], &with_more[..]);
                drop(log);
                std::fs::write(path.join(FILE_NAME), saved).unwrap();
                let log = PartitionLog::open(path.clone(), config).await.unwrap();
                assert!(
                    !log.opened_after_clean_close(),
                    "the record no longer matches"
                );
                assert_eq!(log.log_end_offset(), end + 7);
                assert_eq!(consume_all(&log, 0, 4096), crashed);
                // Closed cleanly without a write since that scan: the index files the scan
                // rebuilt in memory reach the disk too, or the next open would scan again.
                let index = path.join(format!("{:020}.index", 0));
                std::fs::write(&index, b"").unwrap();
                log.close_clean().await.unwrap();
                assert!(std::fs::metadata(&index).unwrap().len() > 0);
                let log = PartitionLog::open(path.clone(), small_config())
                    .await
                    .unwrap();
                assert!(log.opened_after_clean_close());
                assert_eq!(consume_all(&log, 0, 4096), crashed);
                log.close().await.unwrap();
            });
        }
    }
}
