//! Laying out one segment write in its O_DIRECT buffers.
//!
//! An O_DIRECT write carries whole pages from aligned memory, so the writer copies the
//! segment's partial last page (the tail) and the queued batches into DMA buffers and writes
//! them from the tail's page on. Usually that is one buffer and one write. It is two, the
//! rewritten tail page and the rest, when the rest goes to blocks the file system holds as
//! *unwritten* ([`should_split`]).
//!
//! Why: the blocks a background `fallocate` reserved ahead of the writes (`preallocate.rs`)
//! are unwritten extents in ext4 (they read as zeros). A single write that covers the tail's
//! block, already written, and unwritten blocks after it is not a pure overwrite, so ext4
//! wants the inode lock exclusively for it; under io_uring's non-blocking first attempt that
//! is `EAGAIN`, and the write is handed to an io_uring worker thread: a thread wake-up, a
//! context switch and the worker's cancellation bookkeeping for every write of a fresh segment
//! (kernel 6.18, traced with `io_uring:io_uring_queue_async_work`: every segment write of W3 at
//! 100,000 msgs/s). Split at the page boundary, the first write is an overwrite and the second
//! lies wholly in unwritten blocks; both complete without a worker. The two are submitted
//! together, adjacent, so the block layer can merge them into one device request.

use crate::record_batch::{self, HEADER_LEN};

use super::{stream_copy, PAGE_BYTES};

/// Whether a write starting at `write_position` (page-aligned), `buffer_bytes` long, that
/// begins by rewriting a partial tail page (`tail_bytes` > 0), should be split after that page:
/// when the rest starts at or above `written_blocks_end`, the end of the blocks known to hold
/// written data (a fresh segment's own writes; a recycled or reopened file's size at its
/// opening). Below it the whole write is an overwrite already, and one request is cheaper.
/// Only a matter of speed: either way the same bytes reach the same places.
pub(crate) fn should_split(
    write_position: u64,
    buffer_bytes: u64,
    tail_bytes: u64,
    written_blocks_end: u64,
) -> bool {
    debug_assert_eq!(write_position % PAGE_BYTES, 0);
    tail_bytes > 0 && buffer_bytes > PAGE_BYTES && write_position + PAGE_BYTES >= written_blocks_end
}

/// The bytes of one write, `first` then `rest` (empty unless the write is split), addressed
/// as one contiguous range from the write's position.
pub(crate) struct Staging<'a> {
    first: &'a mut [u8],
    rest: &'a mut [u8],
}

impl<'a> Staging<'a> {
    pub(crate) fn new(first: &'a mut [u8], rest: Option<&'a mut [u8]>) -> Staging<'a> {
        Staging {
            first,
            rest: rest.unwrap_or_default(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.first.len() + self.rest.len()
    }

    /// Copies `src` to `[at, at + src.len())`.
    pub(crate) fn put(&mut self, at: usize, src: &[u8]) {
        assert!(
            at + src.len() <= self.len(),
            "staged write overflows its buffers"
        );
        let split = self.first.len();
        let (to_first, to_rest) = src.split_at(src.len().min(split.saturating_sub(at)));
        stream_copy::copy(&mut self.first[at.min(split)..][..to_first.len()], to_first);
        if !to_rest.is_empty() {
            // It starts where `first` ends or, for a put wholly past it, further on.
            let rest_at = (at + to_first.len()) - split;
            stream_copy::copy(&mut self.rest[rest_at..][..to_rest.len()], to_rest);
        }
    }

    /// Copies a batch to `at` with the header fields the leader owns (base offset, leader
    /// epoch) set, leaving `batch` itself as the producer sent it.
    pub(crate) fn put_batch(
        &mut self,
        at: usize,
        batch: &[u8],
        base_offset: i64,
        leader_epoch: i32,
    ) {
        assert!(batch.len() >= HEADER_LEN, "a batch shorter than its header");
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&batch[..HEADER_LEN]);
        record_batch::assign(&mut header, base_offset, leader_epoch);
        self.put(at, &header);
        self.put(at + HEADER_LEN, &batch[HEADER_LEN..]);
    }

    /// Zeros `[from, len)`: the padding past the logical end is zeros, not stale heap bytes
    /// (recovery cuts at the first invalid batch, which zeros are).
    pub(crate) fn zero_from(&mut self, from: usize) {
        let split = self.first.len();
        if from < split {
            self.first[from..].fill(0);
            self.rest.fill(0);
        } else {
            self.rest[from - split..].fill(0);
        }
    }

    /// A copy of `[from, to)`.
    pub(crate) fn copy_out(&self, from: usize, to: usize) -> Vec<u8> {
        assert!(
            from <= to && to <= self.len(),
            "range outside the staged write"
        );
        let split = self.first.len();
        let mut out = Vec::with_capacity(to - from);
        if from < split {
            out.extend_from_slice(&self.first[from..to.min(split)]);
        }
        if to > split {
            out.extend_from_slice(&self.rest[from.max(split) - split..to - split]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The staged bytes, whichever way they are split, as one vector.
    fn joined(first: &[u8], rest: &[u8]) -> Vec<u8> {
        [first, rest].concat()
    }

    #[test]
    fn puts_land_at_the_same_place_split_or_not() {
        let source: Vec<u8> = (0..200u32).map(|i| (i % 251) as u8 + 1).collect();
        for split_at in [0usize, 1, 7, 64, 199, 200] {
            let (mut first, mut rest) = (vec![0u8; split_at], vec![0u8; 200 - split_at]);
            let mut staging = Staging::new(&mut first, Some(&mut rest));
            assert_eq!(staging.len(), 200);
            // Pieces that start and end on either side of the split, and across it.
            for (from, to) in [(0, 3), (3, 60), (60, 61), (61, 130), (130, 200)] {
                staging.put(from, &source[from..to]);
            }
            for (from, to) in [(0, 200), (5, 150), (0, 0), (199, 200)] {
                assert_eq!(
                    staging.copy_out(from, to),
                    source[from..to],
                    "split at {split_at}"
                );
            }
            assert_eq!(joined(&first, &rest), source, "split at {split_at}");
        }
    }

    #[test]
    fn zero_from_clears_to_the_end_on_both_sides_of_the_split() {
        for (split_at, from) in [(10, 4), (10, 10), (10, 15), (0, 3)] {
            let (mut first, mut rest) = (vec![9u8; split_at], vec![9u8; 20 - split_at]);
            Staging::new(&mut first, Some(&mut rest)).zero_from(from);
            let all = joined(&first, &rest);
            assert!(all[..from].iter().all(|&b| b == 9));
            assert!(all[from..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn put_batch_sets_the_leaders_fields_even_when_the_header_straddles_the_split() {
        let mut batch = vec![0xAAu8; HEADER_LEN + 40];
        batch[8..12].copy_from_slice(&40i32.to_be_bytes());
        let mut expected = batch.clone();
        record_batch::assign(&mut expected, 1234, 7);
        for split_at in [0, 5, 10, 14, HEADER_LEN, HEADER_LEN + 40] {
            let total = HEADER_LEN + 40;
            let (mut first, mut rest) = (vec![0u8; split_at], vec![0u8; total - split_at]);
            Staging::new(&mut first, Some(&mut rest)).put_batch(0, &batch, 1234, 7);
            assert_eq!(joined(&first, &rest), expected, "split at {split_at}");
        }
        assert_eq!(batch[..8], [0xAA; 8], "the producer's bytes are left alone");
    }

    #[test]
    #[should_panic(expected = "overflows")]
    fn a_put_past_the_end_is_refused() {
        let mut first = vec![0u8; 4];
        Staging::new(&mut first, None).put(2, &[1, 2, 3]);
    }

    #[test]
    fn splits_only_a_tail_rewrite_followed_by_never_written_blocks() {
        let page = PAGE_BYTES;
        // A fresh segment: its written blocks end with the tail's page.
        assert!(should_split(8 * page, 17 * page, 100, 9 * page));
        // No partial page to rewrite: the write starts in unwritten blocks already.
        assert!(!should_split(8 * page, 17 * page, 0, 8 * page));
        // One page only: nothing to split.
        assert!(!should_split(8 * page, page, 100, 9 * page));
        // A recycled file: everything below its old size is written, a pure overwrite.
        assert!(!should_split(8 * page, 17 * page, 100, 64 * page));
        // Past the recycled file's old size, the same as a fresh one.
        assert!(should_split(64 * page, 17 * page, 100, 64 * page));
    }
}
