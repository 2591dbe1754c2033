//! The aborted-transaction index of a segment, `<base_offset:020>.txnindex` (Kafka's
//! `TransactionIndex`): one entry per abort marker whose marker batch lies in the segment,
//! saying which offsets the aborted transaction spans. read_committed fetches report these so
//! that clients drop the aborted records.
//!
//! Entry layout (Kafka's, 34 bytes, big endian): version i16 (0), producer id i64, first
//! offset i64, last offset i64 (the marker's), last stable offset i64 (the partition's LSO once
//! the marker was written). The file exists only for segments that hold an abort marker; a
//! segment without one has none. It is written and fdatasync'd when its segment closes (roll,
//! clean close, idle release) and before the producer-state snapshot of that roll, so a
//! snapshot at offset S vouches for the `.txnindex` files of every segment below S; the active
//! segment's entries are rebuilt by recovery's scan after a crash.
//!
//! A file whose size is not a multiple of the entry, or whose entries do not fit the segment
//! (wrong version, marker outside the segment, first offset above the marker, out of order),
//! is refused by [`decode`]; recovery then rebuilds it by scanning from an older snapshot.

use std::io;
use std::path::{Path, PathBuf};

/// Bytes of one entry on disk.
pub const ENTRY_BYTES: usize = 2 + 8 + 8 + 8 + 8;
/// The only entry version Kafka defines.
const ENTRY_VERSION: i16 = 0;
pub const EXTENSION: &str = "txnindex";

/// One aborted transaction: its records span `first_offset..=last_offset` (the abort marker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnIndexEntry {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
    /// The last stable offset once the marker was written: no transaction that started below
    /// it is still open, so a reader collecting aborts below an offset can stop at the first
    /// entry whose `last_stable_offset` reaches it.
    pub last_stable_offset: i64,
}

/// The index file of the segment whose log file is `log_path`.
pub fn path_for(log_path: &Path) -> PathBuf {
    log_path.with_extension(EXTENSION)
}

pub fn encode(entries: &[TxnIndexEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_BYTES);
    for e in entries {
        out.extend_from_slice(&ENTRY_VERSION.to_be_bytes());
        out.extend_from_slice(&e.producer_id.to_be_bytes());
        out.extend_from_slice(&e.first_offset.to_be_bytes());
        out.extend_from_slice(&e.last_offset.to_be_bytes());
        out.extend_from_slice(&e.last_stable_offset.to_be_bytes());
    }
    out
}

/// Decodes and checks the entries of the segment spanning `base_offset..next_offset`.
pub fn decode(
    bytes: &[u8],
    base_offset: i64,
    next_offset: i64,
) -> Result<Vec<TxnIndexEntry>, String> {
    if !bytes.len().is_multiple_of(ENTRY_BYTES) {
        return Err(format!(
            "{} bytes is not a whole number of {ENTRY_BYTES}-byte entries",
            bytes.len()
        ));
    }
    let i64_at = |chunk: &[u8], at: usize| {
        i64::from_be_bytes(chunk[at..at + 8].try_into().expect("8 bytes"))
    };
    let mut entries: Vec<TxnIndexEntry> = Vec::with_capacity(bytes.len() / ENTRY_BYTES);
    for chunk in bytes.chunks_exact(ENTRY_BYTES) {
        let version = i16::from_be_bytes([chunk[0], chunk[1]]);
        let entry = TxnIndexEntry {
            producer_id: i64_at(chunk, 2),
            first_offset: i64_at(chunk, 10),
            last_offset: i64_at(chunk, 18),
            last_stable_offset: i64_at(chunk, 26),
        };
        if version != ENTRY_VERSION {
            return Err(format!("entry version {version}"));
        }
        if entry.last_offset < base_offset || entry.last_offset >= next_offset {
            return Err(format!(
                "marker offset {} outside the segment {base_offset}..{next_offset}",
                entry.last_offset
            ));
        }
        if entry.first_offset < 0 || entry.first_offset > entry.last_offset {
            return Err(format!(
                "first offset {} above the marker {}",
                entry.first_offset, entry.last_offset
            ));
        }
        if entries
            .last()
            .is_some_and(|p| p.last_offset >= entry.last_offset)
        {
            return Err("entries out of marker order".into());
        }
        entries.push(entry);
    }
    Ok(entries)
}

/// Reads the index of a segment: `Ok(empty)` when there is no file, `Err` when it is damaged.
/// A file larger than its log cannot be an index of it and is never read into memory.
pub fn read(
    log_path: &Path,
    base_offset: i64,
    next_offset: i64,
    log_bytes: u64,
) -> Result<Vec<TxnIndexEntry>, String> {
    let path = path_for(log_path);
    let len = match std::fs::metadata(&path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    if len > log_bytes {
        return Err(format!("{len} bytes, larger than its log"));
    }
    let bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
    decode(&bytes, base_offset, next_offset)
}

/// Replaces the segment's index with `entries` (removes it when there are none), durably:
/// written to a temporary file, fdatasync'd, renamed. Blocking.
pub fn write_durably(log_path: &Path, entries: &[TxnIndexEntry]) -> io::Result<()> {
    let path = path_for(log_path);
    if entries.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let tmp = path.with_extension("txnindex.tmp");
    {
        let file = std::fs::File::create(&tmp)?;
        io::Write::write_all(&mut &file, &encode(entries))?;
        file.sync_data()?;
    }
    std::fs::rename(&tmp, &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(first: i64, last: i64) -> TxnIndexEntry {
        TxnIndexEntry {
            producer_id: 7,
            first_offset: first,
            last_offset: last,
            last_stable_offset: last + 1,
        }
    }

    #[test]
    fn entries_round_trip_in_kafkas_layout() {
        let entries = vec![entry(3, 110), entry(90, 150)];
        let bytes = encode(&entries);
        assert_eq!(bytes.len(), 2 * ENTRY_BYTES);
        assert_eq!(&bytes[..2], &[0, 0], "version 0 first");
        assert_eq!(&bytes[2..10], &7i64.to_be_bytes());
        assert_eq!(decode(&bytes, 100, 200).unwrap(), entries);
    }

    #[test]
    fn damaged_files_are_refused() {
        let bytes = encode(&[entry(3, 110), entry(90, 150)]);
        assert!(decode(&bytes[..ENTRY_BYTES + 5], 100, 200).is_err(), "torn");
        assert!(decode(&bytes, 120, 200).is_err(), "marker below the base");
        assert!(decode(&bytes, 100, 150).is_err(), "marker past the end");
        let mut flipped = bytes.clone();
        flipped[1] = 1;
        assert!(decode(&flipped, 100, 200).is_err(), "version");
        let swapped = encode(&[entry(90, 150), entry(3, 110)]);
        assert!(decode(&swapped, 100, 200).is_err(), "order");
        assert!(decode(&encode(&[entry(120, 110)]), 100, 200).is_err());
    }

    #[test]
    fn files_are_written_read_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("00000000000000000100.log");
        assert_eq!(read(&log, 100, 200, 1 << 20).unwrap(), vec![]);
        write_durably(&log, &[entry(3, 110)]).unwrap();
        assert_eq!(read(&log, 100, 200, 1 << 20).unwrap(), vec![entry(3, 110)]);
        assert!(read(&log, 100, 200, 10).is_err(), "larger than the log");
        write_durably(&log, &[]).unwrap();
        assert!(!path_for(&log).exists());
    }
}
