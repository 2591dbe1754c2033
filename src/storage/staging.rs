//! Laying out one segment write in its O_DIRECT buffers.
//!
//! An O_DIRECT write carries whole pages from aligned memory, so the writer copies the
//! segment's partial last page (the tail) and the queued batches into DMA buffers and writes
//! them from the tail's page on. Usually that is one buffer and one write. It is cut after the
//! rewritten tail page when the rest goes to blocks the file system holds as *unwritten*
//! ([`should_split`]), and where a new extent of the file starts ([`super::extents`]).
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

/// The bytes of one write laid out over its pieces, one buffer per O_DIRECT write, addressed
/// as one contiguous range from the write's position. Usually one piece; more where the write
/// is cut ([`should_split`], [`super::extents`]).
pub(crate) struct Staging<'a> {
    pieces: Vec<&'a mut [u8]>,
    /// Where each piece starts in the range, ascending; `starts[0] == 0`.
    starts: Vec<usize>,
    len: usize,
}

impl<'a> Staging<'a> {
    pub(crate) fn new(pieces: Vec<&'a mut [u8]>) -> Staging<'a> {
        let mut starts = Vec::with_capacity(pieces.len());
        let mut len = 0;
        for piece in &pieces {
            starts.push(len);
            len += piece.len();
        }
        Staging {
            pieces,
            starts,
            len,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The piece holding offset `at` (the last piece for `at == len`).
    fn piece_at(&self, at: usize) -> usize {
        self.starts.partition_point(|&start| start <= at).max(1) - 1
    }

    /// Copies `src` to `[at, at + src.len())`.
    pub(crate) fn put(&mut self, at: usize, src: &[u8]) {
        assert!(
            at + src.len() <= self.len,
            "staged write overflows its buffers"
        );
        let mut done = 0;
        let mut index = self.piece_at(at);
        while done < src.len() {
            let offset = at + done - self.starts[index];
            let piece = &mut self.pieces[index];
            let n = (piece.len() - offset).min(src.len() - done);
            stream_copy::copy(&mut piece[offset..offset + n], &src[done..done + n]);
            done += n;
            index += 1;
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
        assert!(from <= self.len, "zeroing past the staged write");
        let first = self.piece_at(from);
        for (index, piece) in self.pieces.iter_mut().enumerate().skip(first) {
            let offset = from.saturating_sub(self.starts[index]).min(piece.len());
            piece[offset..].fill(0);
        }
    }

    /// A copy of `[from, to)`.
    pub(crate) fn copy_out(&self, from: usize, to: usize) -> Vec<u8> {
        assert!(
            from <= to && to <= self.len,
            "range outside the staged write"
        );
        let mut out = Vec::with_capacity(to - from);
        let mut index = self.piece_at(from);
        while out.len() < to - from {
            let offset = from + out.len() - self.starts[index];
            let piece = &self.pieces[index];
            let n = (piece.len() - offset).min(to - from - out.len());
            out.extend_from_slice(&piece[offset..offset + n]);
            index += 1;
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

    /// A write split in two at `split_at`, as the writer cuts a tail rewrite.
    fn two<'a>(first: &'a mut [u8], rest: &'a mut [u8]) -> Staging<'a> {
        Staging::new(vec![first, rest])
    }

    #[test]
    fn puts_land_at_the_same_place_split_or_not() {
        let source: Vec<u8> = (0..200u32).map(|i| (i % 251) as u8 + 1).collect();
        for split_at in [0usize, 1, 7, 64, 199, 200] {
            let (mut first, mut rest) = (vec![0u8; split_at], vec![0u8; 200 - split_at]);
            let mut staging = two(&mut first, &mut rest);
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
            two(&mut first, &mut rest).zero_from(from);
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
            two(&mut first, &mut rest).put_batch(0, &batch, 1234, 7);
            assert_eq!(joined(&first, &rest), expected, "split at {split_at}");
        }
        assert_eq!(batch[..8], [0xAA; 8], "the producer's bytes are left alone");
    }

    #[test]
    #[should_panic(expected = "overflows")]
    fn a_put_past_the_end_is_refused() {
        let mut first = vec![0u8; 4];
        Staging::new(vec![&mut first]).put(2, &[1, 2, 3]);
    }

    /// Cut in many places, some pieces empty or one byte long, the staged bytes are the same.
    #[test]
    fn many_pieces_hold_the_same_bytes_as_one() {
        let source: Vec<u8> = (0..300u32).map(|i| (i % 253) as u8 + 1).collect();
        for cuts in [
            vec![],
            vec![1],
            vec![10, 10, 11],
            vec![0, 64, 128, 192, 299],
            vec![300],
        ] {
            let mut bounds = vec![0];
            bounds.extend(&cuts);
            bounds.push(300);
            let mut buffers: Vec<Vec<u8>> =
                bounds.windows(2).map(|w| vec![7u8; w[1] - w[0]]).collect();
            let mut staging = Staging::new(buffers.iter_mut().map(|b| b.as_mut_slice()).collect());
            assert_eq!(staging.len(), 300);
            for (from, to) in [(0, 5), (5, 200), (200, 250)] {
                staging.put(from, &source[from..to]);
            }
            staging.zero_from(250);
            let mut expected = source.clone();
            expected[250..].fill(0);
            assert_eq!(staging.copy_out(0, 300), expected, "cuts {cuts:?}");
            assert_eq!(staging.copy_out(9, 123), expected[9..123], "cuts {cuts:?}");
            assert_eq!(buffers.concat(), expected, "cuts {cuts:?}");
        }
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
