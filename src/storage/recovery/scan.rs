//! The batch validator every scan uses ([`scan_valid_prefix`], the fuzz target, over
//! `scan_batches`), and the chunked buffered-pread scan of a file region (`scan_file`: closed
//! segments, and the active one when O_DIRECT reads are refused).

use std::fs::File;
use std::io;

use crate::record_batch::{validate, BatchError, BatchHeader};
use crate::storage::segment::read_at_most;

/// Why a scan stopped before the end of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanStop {
    /// The bytes at the stop position are not a whole valid batch (this includes a torn
    /// write, `Truncated`, and zero padding, `BadLength(0)`).
    Invalid(BatchError),
    /// The batch's offsets do not follow the previous batch, or overflow the allowed range.
    OffsetOutOfOrder {
        base_offset: i64,
        expected_at_least: i64,
    },
}

/// The valid prefix of a segment's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanResult {
    /// Length of the longest prefix made of whole valid batches.
    pub valid_bytes: usize,
    /// Headers of the batches in that prefix, in order.
    pub batches: Vec<BatchHeader>,
    /// `None` when every byte was valid.
    pub stop: Option<ScanStop>,
}

/// Offsets a scan accepts next; carried across chunks and segments.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OffsetBounds {
    /// The next batch's base offset must be at least this (previous last offset + 1).
    pub next_min: i64,
    /// No batch may end past this (segment base + i32::MAX for relative offsets).
    pub last_max: i64,
}

/// The length of the longest valid prefix of a segment's bytes (whole batches, magic 2, valid
/// lengths, CRC-32C ok, offsets non-negative and strictly increasing), plus its batch headers.
///
/// Pure, so it doubles as a fuzz target; allocation is bounded by `bytes.len()`.
pub fn scan_valid_prefix(bytes: &[u8], max_batch_bytes: usize) -> ScanResult {
    let mut bounds = OffsetBounds {
        next_min: 0,
        last_max: i64::MAX,
    };
    let mut batches = Vec::new();
    let (valid_bytes, stop) = scan_batches(bytes, max_batch_bytes, &mut bounds, |_, header| {
        batches.push(*header)
    });
    ScanResult {
        valid_bytes,
        batches,
        stop,
    }
}

/// Validates batches from the start of `bytes`, calling `on_batch(position, header)` for each
/// valid one. Returns the valid length and why it stopped (`None`: all bytes consumed).
pub(crate) fn scan_batches(
    bytes: &[u8],
    max_batch_bytes: usize,
    bounds: &mut OffsetBounds,
    mut on_batch: impl FnMut(usize, &BatchHeader),
) -> (usize, Option<ScanStop>) {
    let mut position = 0;
    while position < bytes.len() {
        let rest = &bytes[position..];
        // Parse first so a corrupt length is bounded before it is used to slice.
        let header = match BatchHeader::parse(rest, max_batch_bytes) {
            Ok(header) => header,
            Err(e) => return (position, Some(ScanStop::Invalid(e))),
        };
        if rest.len() < header.total_len() {
            return (position, Some(ScanStop::Invalid(BatchError::Truncated)));
        }
        let header = match validate(&rest[..header.total_len()], max_batch_bytes) {
            Ok(header) => header,
            Err(e) => return (position, Some(ScanStop::Invalid(e))),
        };
        // base_offset is outside the CRC, so it must be checked on its own.
        let last_offset = header
            .base_offset
            .checked_add(header.last_offset_delta as i64);
        match last_offset {
            Some(last) if header.base_offset >= bounds.next_min && last <= bounds.last_max => {
                on_batch(position, &header);
                bounds.next_min = last + 1;
                position += header.total_len();
            }
            _ => {
                let stop = ScanStop::OffsetOutOfOrder {
                    base_offset: header.base_offset,
                    expected_at_least: bounds.next_min,
                };
                return (position, Some(stop));
            }
        }
    }
    (position, None)
}

/// Result of scanning a file region.
#[derive(Debug)]
pub(crate) struct FileScan {
    /// File position where the valid batches end.
    pub valid_end: u64,
    pub stop: Option<ScanStop>,
}

/// Scans `file` from `start` (a batch boundary) to `end`, reading `chunk_bytes` at a time and
/// carrying a batch split by a chunk boundary over to the next read.
pub(crate) fn scan_file(
    file: &File,
    (start, end): (u64, u64),
    chunk_bytes: usize,
    max_batch_bytes: usize,
    bounds: &mut OffsetBounds,
    mut on_batch: impl FnMut(u64, &BatchHeader),
) -> io::Result<FileScan> {
    if start >= end {
        return Ok(FileScan {
            valid_end: start,
            stop: None,
        });
    }
    // The carried-over part of a batch is shorter than max_batch_bytes, so a chunk one byte
    // larger always makes progress and always fits a whole valid batch.
    let chunk_bytes = chunk_bytes.max(max_batch_bytes + 1);
    let capacity = chunk_bytes.min((end - start) as usize);
    let mut buf = vec![0u8; capacity];
    let mut filled = 0usize; // bytes of `buf` holding file data
    let mut buf_position = start; // file position of buf[0]
    let mut read_position = start;
    loop {
        let want = (capacity - filled).min((end - read_position) as usize);
        let n = read_at_most(file, &mut buf[filled..filled + want], read_position)?;
        filled += n;
        read_position += n as u64;
        // A short read means the file is shorter than `end`: treat it as the end.
        let at_end = read_position >= end || n < want;
        let (valid, stop) = scan_batches(&buf[..filled], max_batch_bytes, bounds, |p, h| {
            on_batch(buf_position + p as u64, h)
        });
        match stop {
            Some(ScanStop::Invalid(BatchError::Truncated)) if !at_end => {
                buf.copy_within(valid..filled, 0);
                filled -= valid;
                buf_position += valid as u64;
            }
            None if !at_end => {
                filled = 0;
                buf_position += valid as u64;
            }
            stop => {
                return Ok(FileScan {
                    valid_end: buf_position + valid as u64,
                    stop,
                })
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::record_batch::{assign, tests::make_batch};

    fn log_bytes(batches: &[(i64, i32)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(base, count) in batches {
            let mut b = make_batch(count, -1, -1);
            assign(&mut b, base, 0);
            out.extend(b);
        }
        out
    }

    #[test]
    fn whole_valid_log_is_accepted() {
        let bytes = log_bytes(&[(0, 2), (2, 3), (10, 1)]);
        let scan = scan_valid_prefix(&bytes, 1 << 20);
        assert_eq!(scan.valid_bytes, bytes.len());
        assert_eq!(scan.stop, None);
        let bases: Vec<i64> = scan.batches.iter().map(|h| h.base_offset).collect();
        assert_eq!(bases, vec![0, 2, 10]);
    }

    #[test]
    fn torn_crc_and_padding_cut_at_the_bad_batch() {
        let bytes = log_bytes(&[(0, 2), (2, 3)]);
        let first_len = make_batch(2, -1, -1).len();
        for cut in [first_len + 1, first_len + 20, bytes.len() - 1] {
            let scan = scan_valid_prefix(&bytes[..cut], 1 << 20);
            assert_eq!(scan.valid_bytes, first_len, "cut at {cut}");
            assert_eq!(scan.stop, Some(ScanStop::Invalid(BatchError::Truncated)));
        }
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let scan = scan_valid_prefix(&flipped, 1 << 20);
        assert_eq!(scan.valid_bytes, first_len);
        assert!(matches!(
            scan.stop,
            Some(ScanStop::Invalid(BatchError::CrcMismatch { .. }))
        ));
        let mut padded = bytes.clone();
        padded.resize(8192, 0);
        let scan = scan_valid_prefix(&padded, 1 << 20);
        assert_eq!(scan.valid_bytes, bytes.len());
        assert_eq!(scan.stop, Some(ScanStop::Invalid(BatchError::BadLength(0))));
    }

    #[test]
    fn offsets_must_increase_and_not_overflow() {
        let bytes = log_bytes(&[(5, 2), (6, 1)]);
        let scan = scan_valid_prefix(&bytes, 1 << 20);
        assert_eq!(scan.batches.len(), 1);
        assert_eq!(
            scan.stop,
            Some(ScanStop::OffsetOutOfOrder {
                base_offset: 6,
                expected_at_least: 7
            })
        );
        let bytes = log_bytes(&[(i64::MAX, 2)]);
        assert_eq!(scan_valid_prefix(&bytes, 1 << 20).valid_bytes, 0);
        let bytes = log_bytes(&[(-3, 1)]);
        assert_eq!(scan_valid_prefix(&bytes, 1 << 20).valid_bytes, 0);
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic fuzz: random bytes and random cuts of a valid log.
        let valid = log_bytes(&[(0, 3), (3, 1), (4, 7)]);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let mut bytes = valid.clone();
            for _ in 0..(next() % 4) {
                let i = (next() as usize) % bytes.len();
                bytes[i] = next() as u8;
            }
            let cut = (next() as usize) % (bytes.len() + 1);
            let scan = scan_valid_prefix(&bytes[..cut], 1 << 20);
            assert!(scan.valid_bytes <= cut);
            let again = scan_valid_prefix(&bytes[..scan.valid_bytes], 1 << 20);
            assert_eq!(
                again.valid_bytes, scan.valid_bytes,
                "the valid prefix is valid"
            );
            assert_eq!(again.stop, None);
        }
    }

    #[test]
    fn chunked_file_scan_matches_the_pure_scan() {
        let mut bytes = Vec::new();
        for i in 0..200 {
            let mut b = make_batch(1 + i % 5, -1, -1);
            let base = scan_valid_prefix(&bytes, 1 << 20)
                .batches
                .last()
                .map_or(0, |h| h.last_offset() + 1);
            assign(&mut b, base, 0);
            bytes.extend(b);
        }
        let valid_len = bytes.len();
        bytes.extend_from_slice(&[0u8; 100]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        let mut bounds = OffsetBounds {
            next_min: 0,
            last_max: i64::MAX,
        };
        let mut seen = Vec::new();
        // Chunks of ~300 bytes split batches across reads again and again.
        let scan = scan_file(
            &file,
            (0, bytes.len() as u64),
            0,
            300,
            &mut bounds,
            |p, h| seen.push((p, h.base_offset)),
        )
        .unwrap();
        let expected: Vec<(u64, i64)> = {
            let pure = scan_valid_prefix(&bytes, 300);
            let mut position = 0u64;
            pure.batches
                .iter()
                .map(|h| {
                    let at = position;
                    position += h.total_len() as u64;
                    (at, h.base_offset)
                })
                .collect()
        };
        assert_eq!(seen, expected);
        assert_eq!(scan.valid_end, valid_len as u64);
        assert_eq!(seen.len(), 200);
        assert_eq!(scan.stop, Some(ScanStop::Invalid(BatchError::BadLength(0))));
    }

    /// What the pure scan says about `bytes`: (valid length, stop, (position, base) per batch).
    pub(crate) fn pure_scan(bytes: &[u8], max: usize) -> (u64, Option<ScanStop>, Vec<(u64, i64)>) {
        let scan = scan_valid_prefix(bytes, max);
        let mut position = 0u64;
        let batches = scan
            .batches
            .iter()
            .map(|h| {
                let at = position;
                position += h.total_len() as u64;
                (at, h.base_offset)
            })
            .collect();
        (scan.valid_bytes as u64, scan.stop, batches)
    }
}
