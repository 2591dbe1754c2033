//! What the log itself knows of producers and transactions ([`ProducerTracker`]), and its
//! snapshot files `<offset:020>.snapshot` (Kafka's `ProducerStateManager` snapshots).
//!
//! The tracker follows the batches as the writer task writes them (so at a roll it holds
//! exactly the state of every batch below the new segment's base), and recovery rebuilds it
//! the same way from the batches it scans. At each roll the writer saves it as
//! `<new base>.snapshot`; recovery loads the newest valid snapshot at or below the active
//! segment's base and scans forward only from there, so its work does not grow with the number
//! of closed segments. The partition's own table (`shard::producer_state`), which follows
//! appends rather than writes, is rebuilt from the tracker at open and after a truncation.
//!
//! File layout (big endian): magic `BRKPSNAP`, version u8 (1), offset i64, producer count u32,
//! per producer: id i64, batch count u8, per batch: base offset i64, epoch i16, first and last
//! sequence i32, max timestamp i64; then open transaction count u32, per transaction:
//! producer id i64, first offset i64; last a CRC-32C (u32) of everything before it. A file
//! that fails the CRC or the length checks is logged and skipped: recovery uses an older one,
//! or scans from the log start.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};

use super::segment;
use super::txn_index::TxnIndexEntry;
use crate::record_batch::BatchHeader;

/// Batches per producer kept: Kafka deduplicates against the last five batches of each
/// producer, so older ones carry no state.
pub const PRODUCER_BATCHES_KEPT: usize = 5;
pub const EXTENSION: &str = "snapshot";
const MAGIC: &[u8; 8] = b"BRKPSNAP";
const VERSION: u8 = 1;
const BATCH_BYTES: usize = 8 + 2 + 4 + 4 + 8;
/// Far above real state (a million producers with five batches each is 140 MB): a larger
/// file is damage and is never read into memory.
const MAX_FILE_BYTES: u64 = 256 << 20;

/// Producers' last batches and open transactions, as of some offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerTracker {
    /// The last batches of each producer, oldest first (data batches only: markers carry no
    /// sequence numbers).
    producers: HashMap<i64, VecDeque<BatchHeader>>,
    /// Producers whose transaction has no marker yet, with its first batch's offset.
    open: HashMap<i64, i64>,
}

impl ProducerTracker {
    /// Takes one batch written at `header.base_offset`; `read_marker` reads a control batch's
    /// commit flag. Returns the index entry of an abort marker.
    pub fn record(
        &mut self,
        header: &BatchHeader,
        read_marker: impl FnOnce() -> Option<bool>,
    ) -> Option<TxnIndexEntry> {
        if !header.has_producer_id() {
            return None;
        }
        if !header.is_control() {
            let kept = self.producers.entry(header.producer_id).or_default();
            if kept.len() == PRODUCER_BATCHES_KEPT {
                kept.pop_front();
            }
            kept.push_back(*header);
            if header.is_transactional() {
                self.open
                    .entry(header.producer_id)
                    .or_insert(header.base_offset);
            }
            return None;
        }
        if !header.is_transactional() {
            return None;
        }
        let first = self.open.remove(&header.producer_id);
        match read_marker() {
            Some(false) => first.map(|first_offset| TxnIndexEntry {
                producer_id: header.producer_id,
                first_offset,
                last_offset: header.base_offset,
                last_stable_offset: self.first_open_offset().unwrap_or(header.base_offset + 1),
            }),
            Some(true) => None,
            None => {
                tracing::warn!(offset = header.base_offset, "unreadable transaction marker");
                None
            }
        }
    }

    /// The first offset of the oldest open transaction.
    pub fn first_open_offset(&self) -> Option<i64> {
        self.open.values().copied().min()
    }

    /// Open transactions: producer id to first offset.
    pub fn open_transactions(&self) -> &HashMap<i64, i64> {
        &self.open
    }

    /// Every kept batch, oldest first.
    pub fn producer_batches(&self) -> Vec<BatchHeader> {
        let mut batches: Vec<BatchHeader> = self.producers.values().flatten().copied().collect();
        batches.sort_unstable_by_key(|h| h.base_offset);
        batches
    }

    pub fn encode(&self, offset: i64) -> Vec<u8> {
        let batches: usize = self.producers.values().map(VecDeque::len).sum();
        let mut out = Vec::with_capacity(
            8 + 1
                + 8
                + 4
                + self.producers.len() * 9
                + batches * BATCH_BYTES
                + 4
                + self.open.len() * 16
                + 4,
        );
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        let mut ids: Vec<&i64> = self.producers.keys().collect();
        ids.sort_unstable();
        for id in ids {
            let kept = &self.producers[id];
            out.extend_from_slice(&id.to_be_bytes());
            out.push(kept.len() as u8);
            for h in kept {
                out.extend_from_slice(&h.base_offset.to_be_bytes());
                out.extend_from_slice(&h.producer_epoch.to_be_bytes());
                out.extend_from_slice(&h.base_sequence.to_be_bytes());
                out.extend_from_slice(&h.last_sequence().to_be_bytes());
                out.extend_from_slice(&h.max_timestamp.to_be_bytes());
            }
        }
        out.extend_from_slice(&(self.open.len() as u32).to_be_bytes());
        let mut open: Vec<(&i64, &i64)> = self.open.iter().collect();
        open.sort_unstable();
        for (id, first) in open {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&first.to_be_bytes());
        }
        let crc = crate::checksum::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Decodes a snapshot file's bytes: the tracker and the offset it is the state at.
    pub fn decode(bytes: &[u8]) -> Result<(i64, ProducerTracker), String> {
        if bytes.len() < 8 + 1 + 8 + 4 + 4 + 4 {
            return Err("shorter than its fixed fields".into());
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crate::checksum::crc32c(body).to_be_bytes() != crc {
            return Err("CRC mismatch".into());
        }
        if &body[..8] != MAGIC || body[8] != VERSION {
            return Err("unknown magic or version".into());
        }
        let mut r = Reader(&body[9..]);
        let offset = r.i64()?;
        let producer_count = r.u32()? as usize;
        let mut tracker = ProducerTracker::default();
        for _ in 0..producer_count {
            let id = r.i64()?;
            let count = r.u8()? as usize;
            if count == 0 || count > PRODUCER_BATCHES_KEPT {
                return Err(format!("producer {id} with {count} batches"));
            }
            let mut kept = VecDeque::with_capacity(count);
            for _ in 0..count {
                let base_offset = r.i64()?;
                let epoch = r.i16()?;
                let first_sequence = r.i32()?;
                let last_sequence = r.i32()?;
                let max_timestamp = r.i64()?;
                if base_offset >= offset {
                    return Err(format!("batch at {base_offset}, not below {offset}"));
                }
                let mut header = BatchHeader::for_producer_state(
                    id,
                    epoch,
                    (first_sequence, last_sequence),
                    base_offset,
                );
                header.max_timestamp = max_timestamp;
                kept.push_back(header);
            }
            tracker.producers.insert(id, kept);
        }
        let open_count = r.u32()? as usize;
        for _ in 0..open_count {
            let id = r.i64()?;
            let first = r.i64()?;
            if first >= offset {
                return Err(format!(
                    "transaction starting at {first}, not below {offset}"
                ));
            }
            tracker.open.insert(id, first);
        }
        if !r.0.is_empty() {
            return Err("trailing bytes".into());
        }
        Ok((offset, tracker))
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        if self.0.len() < N {
            return Err("truncated".into());
        }
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        Ok(head.try_into().expect("N bytes"))
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take::<1>()?[0])
    }
    fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_be_bytes(self.take()?))
    }
    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_be_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.take()?))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_be_bytes(self.take()?))
    }
}

pub fn path_for(dir: &Path, offset: i64) -> PathBuf {
    dir.join(segment::file_name(offset, EXTENSION))
}

/// The offsets of the snapshot files in `dir`, ascending.
pub fn list(dir: &Path) -> io::Result<Vec<i64>> {
    let mut offsets = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(offset) = name
            .strip_suffix(".snapshot")
            .filter(|digits| digits.len() == 20)
            .and_then(|digits| digits.parse::<i64>().ok())
        {
            offsets.push(offset);
        }
    }
    offsets.sort_unstable();
    Ok(offsets)
}

/// Reads the snapshot at `offset`; `Err` (for the caller to log) when missing or damaged.
pub fn read(dir: &Path, offset: i64) -> Result<ProducerTracker, String> {
    let path = path_for(dir, offset);
    let len = std::fs::metadata(&path).map_err(|e| e.to_string())?.len();
    if len > MAX_FILE_BYTES {
        return Err(format!("{len} bytes"));
    }
    let bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
    let (recorded, tracker) = ProducerTracker::decode(&bytes)?;
    if recorded != offset {
        return Err(format!("records offset {recorded}, named {offset}"));
    }
    Ok(tracker)
}

/// Writes `bytes` (an encoded snapshot) as the snapshot at `offset`, durably: temporary file,
/// fdatasync, rename. Blocking: callers run it on the blocking-work thread. The directory is
/// not synced: a rename lost in a machine crash costs recovery a longer scan from an older
/// snapshot, never state.
pub fn write_durably(dir: &Path, offset: i64, bytes: &[u8]) -> io::Result<()> {
    write(dir, offset, bytes, true)
}

/// [`write_durably`] without the fdatasync: for a clean close's snapshot, which (like the
/// clean-close record) costs only a scan when lost or torn; thousands of partitions closing
/// must not pay a sync each.
pub fn write_unsynced(dir: &Path, offset: i64, bytes: &[u8]) -> io::Result<()> {
    write(dir, offset, bytes, false)
}

fn write(dir: &Path, offset: i64, bytes: &[u8], sync: bool) -> io::Result<()> {
    let path = path_for(dir, offset);
    let tmp = path.with_extension("snapshot.tmp");
    {
        let file = std::fs::File::create(&tmp)?;
        io::Write::write_all(&mut &file, bytes)?;
        if sync {
            file.sync_data()?;
        }
    }
    std::fs::rename(&tmp, &path)
}

/// Removes the snapshots `doomed` selects. Missing files are fine.
pub fn remove_where(dir: &Path, doomed: impl Fn(i64) -> bool) -> io::Result<()> {
    for offset in list(dir)? {
        if doomed(offset) {
            match std::fs::remove_file(path_for(dir, offset)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record_batch::tests::make_batch;

    pub(crate) fn header(
        pid: i64,
        seq: i32,
        count: i32,
        base_offset: i64,
        txn: bool,
    ) -> BatchHeader {
        let mut h = BatchHeader::parse(&make_batch(count, pid, seq), 1 << 20).unwrap();
        h.base_offset = base_offset;
        h.producer_epoch = 2;
        if txn {
            h.attributes |= 0x10;
        }
        h
    }

    fn marker(pid: i64, at: i64) -> BatchHeader {
        let mut h = header(pid, -1, 1, at, true);
        h.attributes |= 0x20;
        h
    }

    fn sample() -> (ProducerTracker, Vec<TxnIndexEntry>) {
        let mut tracker = ProducerTracker::default();
        let mut aborts = Vec::new();
        for i in 0..8 {
            tracker.record(&header(1, i * 3, 3, i as i64 * 3, false), || None);
        }
        tracker.record(&header(2, 0, 2, 30, true), || None);
        tracker.record(&header(3, 0, 2, 32, true), || None);
        aborts.extend(tracker.record(&marker(2, 34), || Some(false)));
        tracker.record(&header(4, i32::MAX - 1, 3, 35, true), || None);
        (tracker, aborts)
    }

    #[test]
    fn aborts_carry_their_range_and_the_stable_offset() {
        let (tracker, aborts) = sample();
        assert_eq!(
            aborts,
            vec![TxnIndexEntry {
                producer_id: 2,
                first_offset: 30,
                last_offset: 34,
                last_stable_offset: 32,
            }]
        );
        assert_eq!(tracker.first_open_offset(), Some(32));
        assert_eq!(tracker.producers[&1].len(), PRODUCER_BATCHES_KEPT);
    }

    #[test]
    fn snapshots_round_trip() {
        let (tracker, _) = sample();
        let bytes = tracker.encode(38);
        let (offset, decoded) = ProducerTracker::decode(&bytes).unwrap();
        assert_eq!(offset, 38);
        // Rebuilt headers carry only what idempotence needs; compare what the table reads.
        let key = |t: &ProducerTracker| {
            t.producer_batches()
                .iter()
                .map(|h| {
                    (
                        h.producer_id,
                        h.producer_epoch,
                        h.base_sequence,
                        h.last_sequence(),
                        h.base_offset,
                        h.max_timestamp,
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(key(&decoded), key(&tracker));
        assert_eq!(decoded.open, tracker.open);
        assert_eq!(decoded.encode(38), bytes, "stable encoding");
    }

    #[test]
    fn damaged_snapshots_are_refused_and_files_round_trip() {
        let (tracker, _) = sample();
        let bytes = tracker.encode(38);
        for cut in [0, 10, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                ProducerTracker::decode(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        for at in [3, 12, 30, bytes.len() - 2] {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x40;
            assert!(ProducerTracker::decode(&flipped).is_err(), "flip at {at}");
        }
        assert!(
            ProducerTracker::decode(&tracker.encode(20)).is_err(),
            "batches above the offset"
        );

        let dir = tempfile::tempdir().unwrap();
        write_durably(dir.path(), 38, &bytes).unwrap();
        write_durably(dir.path(), 7, &ProducerTracker::default().encode(7)).unwrap();
        std::fs::write(path_for(dir.path(), 50), b"garbage").unwrap();
        assert_eq!(list(dir.path()).unwrap(), vec![7, 38, 50]);
        assert_eq!(read(dir.path(), 38).unwrap().open, tracker.open);
        assert!(read(dir.path(), 50).is_err());
        std::fs::copy(path_for(dir.path(), 38), path_for(dir.path(), 40)).unwrap();
        assert!(read(dir.path(), 40).is_err(), "named for another offset");
        remove_where(dir.path(), |o| o < 38).unwrap();
        assert_eq!(list(dir.path()).unwrap(), vec![38, 40, 50]);
    }
}
