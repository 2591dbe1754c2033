//! The tail cache: the most recent batches of one partition, kept in memory so that a consumer
//! tailing the log is served without touching the device.
//!
//! Appends are O_DIRECT, so freshly written bytes are not in the page cache, and sendfile from
//! the segment would read them from the device synchronously, blocking the shard's thread (the
//! whole executor). The cache holds what `append` received instead, without copying large
//! batches: the producer's `Bytes` for bytes `16..`, plus a 16-byte owned head with the
//! broker-assigned `base_offset` and `partition_leader_epoch` patched in (the only bytes that
//! differ from what the producer sent; both are outside the CRC). Reads return those pieces
//! as memory chunks, which the connection writes with writev.
//!
//! # Memory accounting
//! A slice of a request buffer keeps the whole buffer alive. Large batches (at least
//! [`COPY_BELOW_BYTES`]) are kept as slices anyway: copying them would cost a memcpy per byte
//! on the hot produce path, and a large batch is a large share of its request, so pinning the
//! rest costs little. Their cost is counted as the slice length (plus [`ENTRY_OVERHEAD_BYTES`]),
//! so the budget is approximate: when one request carries large batches for several
//! partitions, the buffer lives until the last of those partitions evicts its slice, which can
//! hold up to about one request per partition beyond the budget. Smaller batches are copied
//! whole, with the head patched, into an exact-size buffer. Measured on W5 (1,000 partitions,
//! 100-byte records, 64 KiB batches, many partitions per request) with a 16 KiB threshold:
//! slices pinned whole requests, RSS grew ~160 KiB per partition beyond the cap and produce
//! throughput fell by a third (fresh, page-faulting request buffers instead of reused ones);
//! a memcpy of up to 128 KiB, from a heap allocation that malloc reuses, costs far less.
//!
//! The cache covers a contiguous offset range ending at the log end offset; a batch that does
//! not fit the cap, or does not follow the last cached one, clears it. Only batches wholly
//! below the caller's limit (the high watermark for consumers, the written offset for replica
//! fetches) are served. A truncation drops the batches above its cut. Owned by the partition's
//! shard, like the log.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// Bytes of the batch header that the leader rewrites: base offset, length, leader epoch.
pub const HEAD_BYTES: usize = 16;

/// Batches smaller than this are copied into an owned buffer instead of keeping a slice of the
/// producer's request alive.
pub const COPY_BELOW_BYTES: usize = 128 * 1024;

/// Per-entry bookkeeping counted against the cap: the entry's offsets and `Bytes` handles, the
/// head allocation, and the `VecDeque` slot.
pub const ENTRY_OVERHEAD_BYTES: usize = 128;

#[derive(Debug)]
struct CachedBatch {
    base_offset: i64,
    last_offset: i64,
    /// The patched first 16 bytes, or (small batches) the whole patched batch.
    head: Bytes,
    /// The producer's bytes `16..`; empty when `head` is the whole batch.
    body: Bytes,
}

impl CachedBatch {
    fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    fn cost(&self) -> usize {
        self.len() + ENTRY_OVERHEAD_BYTES
    }
}

/// Memory chunks of whole batches (the first possibly cut, see [`TailCache::read`]).
#[derive(Debug)]
pub struct CachedRead {
    pub chunks: Vec<Bytes>,
    pub len: usize,
}

#[derive(Debug, Default)]
pub struct TailCache {
    cap_bytes: usize,
    batches: VecDeque<CachedBatch>,
    cost_bytes: usize,
}

impl TailCache {
    pub fn new(cap_bytes: usize) -> TailCache {
        TailCache {
            cap_bytes,
            batches: VecDeque::new(),
            cost_bytes: 0,
        }
    }

    /// Bytes counted against the cap (batch bytes plus per-entry overhead).
    pub fn cost_bytes(&self) -> usize {
        self.cost_bytes
    }

    pub fn cap_bytes(&self) -> usize {
        self.cap_bytes
    }

    pub fn batch_count(&self) -> usize {
        self.batches.len()
    }

    /// Lowest offset cached, if any.
    pub fn start_offset(&self) -> Option<i64> {
        self.batches.front().map(|b| b.base_offset)
    }

    /// Caches one batch just assigned `[base_offset, last_offset]`; evicts oldest-first.
    /// `batch` is the producer's bytes, whole and validated (at least a header long).
    pub fn push(&mut self, batch: &Bytes, base_offset: i64, last_offset: i64, leader_epoch: i32) {
        if self.cap_bytes == 0 || batch.len() < HEAD_BYTES {
            return;
        }
        if self
            .batches
            .back()
            .is_some_and(|b| b.last_offset + 1 != base_offset)
        {
            self.clear();
        }
        let patch = |head: &mut [u8]| {
            head[0..8].copy_from_slice(&base_offset.to_be_bytes());
            head[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
        };
        let entry = if batch.len() < COPY_BELOW_BYTES {
            let mut whole = BytesMut::from(&batch[..]);
            patch(&mut whole[..HEAD_BYTES]);
            CachedBatch {
                base_offset,
                last_offset,
                head: whole.freeze(),
                body: Bytes::new(),
            }
        } else {
            let mut head = [0u8; HEAD_BYTES];
            head.copy_from_slice(&batch[..HEAD_BYTES]);
            patch(&mut head);
            CachedBatch {
                base_offset,
                last_offset,
                head: Bytes::copy_from_slice(&head),
                body: batch.slice(HEAD_BYTES..),
            }
        };
        if entry.cost() > self.cap_bytes {
            // Keeping older batches would leave a hole at the tail: start over empty.
            self.clear();
            return;
        }
        self.cost_bytes += entry.cost();
        self.batches.push_back(entry);
        while self.cost_bytes > self.cap_bytes {
            self.pop_front();
        }
    }

    /// Drops batches wholly below `offset` (the log start moved past them).
    pub fn evict_below(&mut self, offset: i64) {
        while self.batches.front().is_some_and(|b| b.last_offset < offset) {
            self.pop_front();
        }
    }

    /// Drops the batches at and above `offset` (a truncation cut there, at a batch boundary).
    pub fn truncate_from(&mut self, offset: i64) {
        while let Some(last) = self.batches.back() {
            if last.last_offset < offset {
                break;
            }
            if last.base_offset < offset {
                // The cut falls inside this batch (the log cuts at batch boundaries, so this
                // is defensive): keep nothing rather than a batch that no longer exists.
                self.clear();
                return;
            }
            self.pop_back();
        }
    }

    fn pop_back(&mut self) {
        if let Some(b) = self.batches.pop_back() {
            self.cost_bytes -= b.cost();
        }
    }

    pub fn clear(&mut self) {
        self.batches = VecDeque::new();
        self.cost_bytes = 0;
    }

    fn pop_front(&mut self) {
        if let Some(b) = self.batches.pop_front() {
            self.cost_bytes -= b.cost();
        }
    }

    /// The batches from the one holding `offset`, only those wholly below `limit_offset` (the
    /// high watermark or the written offset), up to `max_bytes`. With `min_one_batch` the first
    /// batch is whole even if larger (KIP-74); without it a first batch larger than `max_bytes`
    /// is cut (as a file read would be). `None` when `offset` is not cached (or nothing cached
    /// is below the limit): the caller reads the file.
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one_batch: bool,
        limit_offset: i64,
    ) -> Option<CachedRead> {
        let first = self.batches.front()?;
        if offset < first.base_offset || offset >= limit_offset {
            return None;
        }
        let start = self.batches.partition_point(|b| b.last_offset < offset);
        let mut chunks = Vec::new();
        let mut len = 0usize;
        for batch in self.batches.range(start..) {
            if batch.last_offset >= limit_offset {
                break;
            }
            let batch_len = batch.len();
            if len + batch_len > max_bytes {
                if len == 0 && min_one_batch {
                    // KIP-74: the first batch whole.
                } else if len == 0 && max_bytes > 0 {
                    let head_len = batch.head.len().min(max_bytes);
                    chunks.push(batch.head.slice(..head_len));
                    if max_bytes > head_len {
                        chunks.push(batch.body.slice(..max_bytes - head_len));
                    }
                    len = max_bytes;
                    break;
                } else {
                    break;
                }
            }
            chunks.push(batch.head.clone());
            if !batch.body.is_empty() {
                chunks.push(batch.body.clone());
            }
            len += batch_len;
        }
        if len == 0 {
            return None;
        }
        Some(CachedRead { chunks, len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake batch: 16 head bytes (base offset 0, length, epoch -1) then `len - 16` bytes of
    /// `fill`.
    fn fake(len: usize, fill: u8) -> Bytes {
        let mut v = vec![fill; len];
        v[0..8].copy_from_slice(&0i64.to_be_bytes());
        v[8..12].copy_from_slice(&((len - 12) as i32).to_be_bytes());
        v[12..16].copy_from_slice(&(-1i32).to_be_bytes());
        Bytes::from(v)
    }

    fn concat(read: &CachedRead) -> Vec<u8> {
        let v: Vec<u8> = read.chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(v.len(), read.len);
        v
    }

    #[test]
    fn patches_the_head_and_keeps_large_batches_as_slices() {
        let mut cache = TailCache::new(1 << 20);
        let large = fake(COPY_BELOW_BYTES, 7);
        cache.push(&large, 100, 109, 3);
        let read = cache.read(105, 1 << 20, true, 110).unwrap();
        assert_eq!(read.chunks.len(), 2, "head + the producer's slice");
        assert_eq!(
            read.chunks[1].as_ptr(),
            large[HEAD_BYTES..].as_ptr(),
            "not copied"
        );
        let bytes = concat(&read);
        assert_eq!(&bytes[0..8], &100i64.to_be_bytes());
        assert_eq!(&bytes[8..12], &large[8..12]);
        assert_eq!(&bytes[12..16], &3i32.to_be_bytes());
        assert_eq!(&bytes[16..], &large[16..]);

        let small = fake(100, 9);
        cache.push(&small, 110, 110, 3);
        let read = cache.read(110, 1 << 20, true, 111).unwrap();
        assert_eq!(read.chunks.len(), 1, "small batches are copied whole");
        assert_ne!(read.chunks[0].as_ptr(), small.as_ptr());
        assert_eq!(&concat(&read)[0..8], &110i64.to_be_bytes());
    }

    #[test]
    fn hits_misses_and_the_high_watermark() {
        let mut cache = TailCache::new(1 << 20);
        assert!(cache.read(0, 100, true, 10).is_none(), "empty");
        for i in 0..10 {
            cache.push(&fake(100, i as u8), 10 + i * 2, 11 + i * 2, 0);
        }
        assert!(cache.read(9, 10_000, true, 30).is_none(), "below the cache");
        assert!(
            cache.read(30, 10_000, true, 30).is_none(),
            "at the high watermark"
        );
        // Offset 13 is inside the second batch: served from its start.
        let read = cache.read(13, 10_000, true, 30).unwrap();
        assert_eq!(read.len, 9 * 100);
        assert_eq!(&concat(&read)[0..8], &12i64.to_be_bytes());
        // Only batches wholly below the high watermark.
        let read = cache.read(13, 10_000, true, 16).unwrap();
        assert_eq!(read.len, 2 * 100);
        // max_bytes: whole batches only.
        let read = cache.read(10, 350, true, 30).unwrap();
        assert_eq!(read.len, 300);
    }

    #[test]
    fn kip_74_first_batch_whole_or_cut_without_it() {
        let mut cache = TailCache::new(1 << 20);
        cache.push(&fake(COPY_BELOW_BYTES + 100, 1), 0, 4, 0);
        cache.push(&fake(100, 2), 5, 5, 0);
        let read = cache.read(0, 10, true, 6).unwrap();
        assert_eq!(read.len, COPY_BELOW_BYTES + 100, "the first batch whole");
        let read = cache.read(0, 10, false, 6).unwrap();
        assert_eq!(read.len, 10, "cut like a file read");
        let read = cache.read(0, 20, false, 6).unwrap();
        assert_eq!(read.len, 20);
        assert!(cache.read(0, 0, false, 6).is_none());
    }

    #[test]
    fn evicts_oldest_first_within_the_cap() {
        let cost = 1000 + ENTRY_OVERHEAD_BYTES;
        let mut cache = TailCache::new(cost * 5);
        for i in 0..20 {
            cache.push(&fake(1000, 0), i, i, 0);
            assert!(cache.cost_bytes() <= cache.cap_bytes());
        }
        assert_eq!(cache.batch_count(), 5);
        assert_eq!(cache.start_offset(), Some(15));
        assert!(cache.read(14, 1 << 20, true, 20).is_none(), "evicted");
        assert_eq!(cache.read(15, 1 << 20, true, 20).unwrap().len, 5000);
        cache.evict_below(17);
        assert_eq!(cache.start_offset(), Some(17));
        assert_eq!(cache.cost_bytes(), 3 * cost);
        // A batch larger than the cap clears the cache: no hole at the tail.
        cache.push(&fake(cost * 6, 0), 20, 20, 0);
        assert_eq!((cache.batch_count(), cache.cost_bytes()), (0, 0));
        cache.push(&fake(1000, 0), 21, 21, 0);
        assert_eq!(cache.start_offset(), Some(21));
        // A gap also starts over.
        cache.push(&fake(1000, 0), 30, 30, 0);
        assert_eq!(cache.start_offset(), Some(30));
        assert_eq!(cache.batch_count(), 1);
        // A truncation drops the batches at and above its cut.
        for i in 31..35 {
            cache.push(&fake(1000, 0), i, i, 0);
        }
        cache.truncate_from(33);
        assert_eq!((cache.batch_count(), cache.cost_bytes()), (3, 3 * cost));
        assert!(cache.read(32, 1 << 20, true, 40).is_some());
        assert!(cache.read(33, 1 << 20, true, 40).is_none());
        cache.push(&fake(1000, 0), 33, 34, 0);
        assert_eq!(cache.read(30, 1 << 20, true, 40).unwrap().len, 4000);
        cache.truncate_from(34);
        assert_eq!(cache.batch_count(), 0, "a cut inside a batch clears");
        // Disabled.
        let mut off = TailCache::new(0);
        off.push(&fake(1000, 0), 0, 0, 0);
        assert_eq!(off.batch_count(), 0);
    }
}
