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
//! # The shard's budget
//! Every cache also counts against its shard's `log.tail.cache.bytes` ([`set_shard_budget`]):
//! the caches of one shard (one thread) are registered in a thread-local [`ShardCaches`], and
//! a push that takes the shard over its budget clears the least recently used other caches
//! (appended to or read longest ago), then the oldest batches of its own. So the sum stays
//! under the budget however many partitions the shard has; the per-partition cap only keeps
//! one busy partition from taking it all. Idle partitions also give their cache back on their
//! own (`PartitionLog::release_if_idle`).
//!
//! # Unwritten batches
//! A log with a journal (`storage::journal`) shows consumers batches before their segment
//! write, and until that write this cache is the only place to read them from. So no cap and
//! no budget evicts a batch the log has not written (`keep_from`, raised by the writer as
//! writes land: [`TailCache::unpin_below`]): the shard may go over its budget by what is
//! journaled and not yet written, which the journal's ring bounds. Such *pinned* bytes are
//! counted apart, and only the rest is held to the budget, so a push never walks caches it
//! cannot shed (while a device hold left more unwritten than the budget, every push used to
//! walk all of the shard's caches). A cache holding only pinned batches leaves the eviction
//! order until it is used or written again.
//!
//! The cache covers a contiguous offset range ending at the log end offset; a batch that does
//! not fit the cap, or does not follow the last cached one, clears it. Only batches wholly
//! below the caller's limit (the high watermark for consumers, the written offset for replica
//! fetches) are served. A truncation drops the batches above its cut. Owned by the partition's
//! shard, like the log.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::{Rc, Weak};

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

/// One partition's cache: owned by its log, registered with its shard's [`ShardCaches`].
#[derive(Debug)]
pub struct TailCache {
    data: Rc<RefCell<CacheData>>,
    id: u64,
}

#[derive(Debug)]
struct CacheData {
    cap_bytes: usize,
    batches: VecDeque<CachedBatch>,
    cost_bytes: usize,
    /// Batches ending at or above this offset are not written yet and may be visible (a
    /// journaled log's high watermark runs ahead of its written offset): no cap or budget
    /// evicts them, since a reader could get them from nowhere else until they are written.
    /// `i64::MAX`: nothing is pinned. The log's written offset as of its last push or write
    /// (it may lag the mark, which keeps more than needed, never less).
    keep_from: i64,
    /// The pinned batches: always the newest `pinned_count` (offsets only grow), costing
    /// `pinned_bytes` of `cost_bytes`.
    pinned_count: usize,
    pinned_bytes: usize,
}

impl Default for CacheData {
    fn default() -> Self {
        CacheData {
            cap_bytes: 0,
            batches: VecDeque::new(),
            cost_bytes: 0,
            keep_from: i64::MAX,
            pinned_count: 0,
            pinned_bytes: 0,
        }
    }
}

/// The tail caches of the shard on this thread: their total, checked against the shard's
/// budget, and the order they were last used in.
#[derive(Debug)]
struct ShardCaches {
    budget_bytes: usize,
    used_bytes: usize,
    /// Of `used_bytes`, what is pinned (not written yet): outside the budget's reach.
    pinned_bytes: usize,
    next_id: u64,
    /// Use counter: each push or read of a cache takes the next value.
    clock: u64,
    caches: HashMap<u64, (Weak<RefCell<CacheData>>, u64)>,
    /// `last use -> cache id`, oldest first: the eviction order.
    by_last_use: BTreeMap<u64, u64>,
}

impl Default for ShardCaches {
    fn default() -> Self {
        ShardCaches {
            budget_bytes: usize::MAX,
            used_bytes: 0,
            pinned_bytes: 0,
            next_id: 0,
            clock: 0,
            caches: HashMap::new(),
            by_last_use: BTreeMap::new(),
        }
    }
}

thread_local! {
    static SHARD_CACHES: RefCell<ShardCaches> = RefCell::new(ShardCaches::default());
}

/// Sets the budget of the tail caches on this thread (the shard's `log.tail.cache.bytes`);
/// until then they are bounded only by their own caps. Evicts at once if they exceed it.
pub fn set_shard_budget(bytes: usize) {
    SHARD_CACHES.with(|caches| {
        let mut caches = caches.borrow_mut();
        caches.budget_bytes = bytes;
        caches.evict_over_budget(None);
    });
}

/// Bytes the tail caches on this thread hold, counted as against their caps.
pub fn shard_used_bytes() -> usize {
    SHARD_CACHES.with(|caches| caches.borrow().used_bytes)
}

impl ShardCaches {
    fn touch(&mut self, id: u64) {
        self.clock += 1;
        let clock = self.clock;
        if let Some((_, last_use)) = self.caches.get_mut(&id) {
            // 0: out of the order (cleared, or only pinned batches left); no key is 0.
            if *last_use != 0 {
                self.by_last_use.remove(last_use);
            }
            *last_use = clock;
            self.by_last_use.insert(clock, id);
        }
    }

    /// Bytes over the budget that eviction could free: pinned bytes do not count.
    fn evictable_excess(&self) -> usize {
        (self.used_bytes - self.pinned_bytes).saturating_sub(self.budget_bytes)
    }

    /// Clears the least recently used caches other than `keep` (all but their pinned batches)
    /// while the unpinned bytes are over the budget; returns the bytes still over it (what
    /// `keep` must shed itself).
    fn evict_over_budget(&mut self, keep: Option<u64>) -> usize {
        let mut kept = None;
        while self.evictable_excess() > 0 {
            let Some((last_use, id)) = self.by_last_use.pop_first() else {
                break;
            };
            if Some(id) == keep {
                kept = Some(last_use);
                continue;
            }
            if let Some(data) = self.caches.get(&id).and_then(|(weak, _)| weak.upgrade()) {
                let mut data = data.borrow_mut();
                let before = data.cost_bytes;
                data.shed(0);
                self.used_bytes -= before - data.cost_bytes;
            }
            // Cleared, or holding only pinned batches: out of the order until the cache is
            // used or written again (`touch`), so no push walks it meanwhile.
            if let Some((_, last)) = self.caches.get_mut(&id) {
                *last = 0;
            }
        }
        if let (Some(last_use), Some(id)) = (kept, keep) {
            self.by_last_use.insert(last_use, id);
        }
        self.evictable_excess()
    }
}

impl Drop for TailCache {
    fn drop(&mut self) {
        let (cost, pinned) = {
            let data = self.data.borrow();
            (data.cost_bytes, data.pinned_bytes)
        };
        let id = self.id;
        // The thread's registry may be gone already at thread exit.
        let _ = SHARD_CACHES.try_with(|caches| {
            let mut caches = caches.borrow_mut();
            caches.used_bytes -= cost;
            caches.pinned_bytes -= pinned;
            if let Some((_, last_use)) = caches.caches.remove(&id) {
                if last_use != 0 {
                    caches.by_last_use.remove(&last_use);
                }
            }
        });
    }
}

impl TailCache {
    pub fn new(cap_bytes: usize) -> TailCache {
        let data = Rc::new(RefCell::new(CacheData {
            cap_bytes,
            ..CacheData::default()
        }));
        let id = SHARD_CACHES.with(|caches| {
            let mut caches = caches.borrow_mut();
            let id = caches.next_id;
            caches.next_id += 1;
            caches.caches.insert(id, (Rc::downgrade(&data), 0));
            id
        });
        TailCache { data, id }
    }

    /// Bytes counted against the cap (batch bytes plus per-entry overhead).
    pub fn cost_bytes(&self) -> usize {
        self.data.borrow().cost_bytes
    }

    pub fn cap_bytes(&self) -> usize {
        self.data.borrow().cap_bytes
    }

    pub fn batch_count(&self) -> usize {
        self.data.borrow().batches.len()
    }

    /// Lowest offset cached, if any.
    pub fn start_offset(&self) -> Option<i64> {
        self.data.borrow().batches.front().map(|b| b.base_offset)
    }

    /// Runs `change` on the data and accounts its size change to the shard.
    fn change<R>(&mut self, change: impl FnOnce(&mut CacheData) -> R) -> R {
        let mut data = self.data.borrow_mut();
        let before = (data.cost_bytes, data.pinned_bytes);
        let result = change(&mut data);
        let after = (data.cost_bytes, data.pinned_bytes);
        drop(data);
        if before != after {
            SHARD_CACHES.with(|caches| {
                let mut caches = caches.borrow_mut();
                caches.used_bytes = caches.used_bytes + after.0 - before.0;
                caches.pinned_bytes = caches.pinned_bytes + after.1 - before.1;
            });
        }
        result
    }

    /// Caches one batch just assigned `[base_offset, last_offset]`; evicts oldest-first, and
    /// other partitions' caches (least recently used first) if the shard is over its budget,
    /// but never a batch ending at or above `keep_from` (not written yet, and visible: see
    /// `CacheData::keep_from`; `i64::MAX` pins nothing). `batch` is the producer's bytes,
    /// whole and validated (at least a header long).
    pub fn push(
        &mut self,
        batch: &Bytes,
        base_offset: i64,
        last_offset: i64,
        leader_epoch: i32,
        keep_from: i64,
    ) {
        self.change(|data| {
            data.set_keep_from(keep_from);
            data.push(batch, base_offset, last_offset, leader_epoch)
        });
        let id = self.id;
        let over = SHARD_CACHES.with(|caches| {
            let mut caches = caches.borrow_mut();
            caches.touch(id);
            caches.evict_over_budget(Some(id))
        });
        if over > 0 {
            // Only this cache is left to shed.
            self.change(|data| data.shed(data.cost_bytes.saturating_sub(over)));
        }
    }

    /// The log wrote every offset below `written`: batches below it are no longer pinned
    /// (a journaled log's writer calls this after each write). A cache that had left the
    /// eviction order holding only pinned batches re-enters it.
    pub fn unpin_below(&mut self, written: i64) {
        let unpinned = self.change(|data| {
            let before = data.pinned_count;
            data.set_keep_from(written);
            data.pinned_count < before
        });
        if unpinned {
            let id = self.id;
            SHARD_CACHES.with(|caches| {
                let mut caches = caches.borrow_mut();
                if caches.caches.get(&id).is_some_and(|(_, last)| *last == 0) {
                    caches.touch(id);
                }
            });
        }
    }

    /// Bytes of this cache not written yet (pinned; tests, diagnostics).
    pub fn pinned_bytes(&self) -> usize {
        self.data.borrow().pinned_bytes
    }

    /// Drops batches wholly below `offset` (the log start moved past them).
    pub fn evict_below(&mut self, offset: i64) {
        self.change(|data| data.evict_below(offset));
    }

    /// Drops the batches at and above `offset` (a truncation cut there, at a batch boundary).
    pub fn truncate_from(&mut self, offset: i64) {
        self.change(|data| data.truncate_from(offset));
    }

    pub fn clear(&mut self) {
        self.change(CacheData::clear);
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
        let read = self
            .data
            .borrow()
            .read(offset, max_bytes, min_one_batch, limit_offset)?;
        let id = self.id;
        SHARD_CACHES.with(|caches| caches.borrow_mut().touch(id));
        Some(read)
    }
}

impl CacheData {
    fn push(&mut self, batch: &Bytes, base_offset: i64, last_offset: i64, leader_epoch: i32) {
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
        let patch = |head: &mut [u8]| crate::record_batch::assign(head, base_offset, leader_epoch);
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
        if entry.last_offset >= self.keep_from {
            self.pinned_count += 1;
            self.pinned_bytes += entry.cost();
        }
        self.batches.push_back(entry);
        self.shed(self.cap_bytes);
    }

    /// Moves the pin to `keep_from`, recounting the pinned batches (the newest ones).
    fn set_keep_from(&mut self, keep_from: i64) {
        self.keep_from = keep_from;
        // Raised: the oldest pinned batches may be written now.
        while self.pinned_count > 0 {
            let oldest_pinned = &self.batches[self.batches.len() - self.pinned_count];
            if oldest_pinned.last_offset >= keep_from {
                break;
            }
            self.pinned_bytes -= oldest_pinned.cost();
            self.pinned_count -= 1;
        }
        // Lowered (a truncation moved the written offset back): more are pinned.
        while self.pinned_count < self.batches.len() {
            let newest_unpinned = &self.batches[self.batches.len() - self.pinned_count - 1];
            if newest_unpinned.last_offset < keep_from {
                break;
            }
            self.pinned_bytes += newest_unpinned.cost();
            self.pinned_count += 1;
        }
    }

    /// Drops the oldest batches until the cost is at most `target_bytes`, stopping at the
    /// first pinned one (`keep_from`).
    fn shed(&mut self, target_bytes: usize) {
        while self.cost_bytes > target_bytes
            && self
                .batches
                .front()
                .is_some_and(|b| b.last_offset < self.keep_from)
        {
            self.pop_front();
        }
    }

    fn evict_below(&mut self, offset: i64) {
        while self.batches.front().is_some_and(|b| b.last_offset < offset) {
            self.pop_front();
        }
    }

    fn truncate_from(&mut self, offset: i64) {
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
            if self.pinned_count > 0 {
                self.pinned_count -= 1;
                self.pinned_bytes -= b.cost();
            }
        }
    }

    fn clear(&mut self) {
        self.batches = VecDeque::new();
        self.cost_bytes = 0;
        self.pinned_count = 0;
        self.pinned_bytes = 0;
    }

    fn pop_front(&mut self) {
        let all_pinned = self.pinned_count == self.batches.len();
        if let Some(b) = self.batches.pop_front() {
            self.cost_bytes -= b.cost();
            if all_pinned {
                self.pinned_count -= 1;
                self.pinned_bytes -= b.cost();
            }
        }
    }

    fn read(
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
        cache.push(&large, 100, 109, 3, i64::MAX);
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
        cache.push(&small, 110, 110, 3, i64::MAX);
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
            cache.push(&fake(100, i as u8), 10 + i * 2, 11 + i * 2, 0, i64::MAX);
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
        cache.push(&fake(COPY_BELOW_BYTES + 100, 1), 0, 4, 0, i64::MAX);
        cache.push(&fake(100, 2), 5, 5, 0, i64::MAX);
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
            cache.push(&fake(1000, 0), i, i, 0, i64::MAX);
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
        cache.push(&fake(cost * 6, 0), 20, 20, 0, i64::MAX);
        assert_eq!((cache.batch_count(), cache.cost_bytes()), (0, 0));
        cache.push(&fake(1000, 0), 21, 21, 0, i64::MAX);
        assert_eq!(cache.start_offset(), Some(21));
        // A gap also starts over.
        cache.push(&fake(1000, 0), 30, 30, 0, i64::MAX);
        assert_eq!(cache.start_offset(), Some(30));
        assert_eq!(cache.batch_count(), 1);
        // A truncation drops the batches at and above its cut.
        for i in 31..35 {
            cache.push(&fake(1000, 0), i, i, 0, i64::MAX);
        }
        cache.truncate_from(33);
        assert_eq!((cache.batch_count(), cache.cost_bytes()), (3, 3 * cost));
        assert!(cache.read(32, 1 << 20, true, 40).is_some());
        assert!(cache.read(33, 1 << 20, true, 40).is_none());
        cache.push(&fake(1000, 0), 33, 34, 0, i64::MAX);
        assert_eq!(cache.read(30, 1 << 20, true, 40).unwrap().len, 4000);
        cache.truncate_from(34);
        assert_eq!(cache.batch_count(), 0, "a cut inside a batch clears");
        // Disabled.
        let mut off = TailCache::new(0);
        off.push(&fake(1000, 0), 0, 0, 0, i64::MAX);
        assert_eq!(off.batch_count(), 0);
    }

    /// The caches of one shard stay under its budget together: a push over it clears the
    /// least recently used other cache (appended to or read longest ago), and a cache alone
    /// over it sheds its own oldest batches. Dropping a cache returns its bytes.
    #[test]
    fn a_shard_budget_bounds_all_its_caches_evicting_the_least_recently_used() {
        // A thread of its own: the budget is per thread (per shard).
        std::thread::spawn(|| {
            let cost = 1000 + ENTRY_OVERHEAD_BYTES;
            set_shard_budget(5 * cost);
            let mut a = TailCache::new(4 * cost);
            let mut b = TailCache::new(4 * cost);
            let mut c = TailCache::new(4 * cost);
            a.push(&fake(1000, 1), 0, 0, 0, i64::MAX);
            a.push(&fake(1000, 1), 1, 1, 0, i64::MAX);
            b.push(&fake(1000, 2), 0, 0, 0, i64::MAX);
            b.push(&fake(1000, 2), 1, 1, 0, i64::MAX);
            assert_eq!(shard_used_bytes(), 4 * cost);
            // `a` is read: now `b` is the least recently used.
            assert!(a.read(0, 1 << 20, true, 2).is_some());
            c.push(&fake(1000, 3), 0, 0, 0, i64::MAX);
            assert_eq!(shard_used_bytes(), 5 * cost, "at the budget, not over");
            c.push(&fake(1000, 3), 1, 1, 0, i64::MAX);
            assert_eq!(b.batch_count(), 0, "the least recently used went");
            assert_eq!((a.batch_count(), c.batch_count()), (2, 2));
            assert_eq!(shard_used_bytes(), 4 * cost);
            // Alone over the budget: its own oldest batches go.
            drop(a);
            drop(b);
            assert_eq!(shard_used_bytes(), 2 * cost);
            set_shard_budget(3 * cost);
            for i in 2..6 {
                c.push(&fake(1000, 3), i, i, 0, i64::MAX);
                assert!(shard_used_bytes() <= 3 * cost);
            }
            assert_eq!(c.start_offset(), Some(3));
            c.clear();
            assert_eq!(shard_used_bytes(), 0);
        })
        .join()
        .unwrap();
    }

    /// Batches not written yet (at or above `keep_from`) are never evicted: neither by the
    /// partition's cap nor by the shard's budget when another cache pushes; and they do not
    /// count against the budget, so they take nothing from the other caches. Once written
    /// (`unpin_below`, or a later push with a higher `keep_from`), they go as usual.
    #[test]
    fn unwritten_batches_stay_whatever_the_cap_and_the_budget() {
        std::thread::spawn(|| {
            let cost = 1000 + ENTRY_OVERHEAD_BYTES;
            set_shard_budget(4 * cost);
            let mut a = TailCache::new(2 * cost);
            let mut b = TailCache::new(4 * cost);
            // Written below 1 only: batches 1..4 are pinned, over a's cap of two.
            for i in 0..4 {
                a.push(&fake(1000, 1), i, i, 0, 1);
            }
            assert_eq!(a.start_offset(), Some(1));
            assert_eq!(a.batch_count(), 3);
            assert_eq!(a.pinned_bytes(), 3 * cost);
            // b fills the budget beside them: a keeps its unwritten batches, b all of its own.
            for i in 0..3 {
                b.push(&fake(1000, 2), i, i, 0, i64::MAX);
            }
            assert_eq!((a.batch_count(), b.batch_count()), (3, 3));
            assert_eq!(shard_used_bytes(), 6 * cost);
            // Written up to 3: a's first two go out of the budget's shelter, and b's next push
            // evicts a (the least recently used) rather than its own.
            a.unpin_below(3);
            assert_eq!(a.pinned_bytes(), cost);
            b.push(&fake(1000, 2), 3, 3, 0, i64::MAX);
            assert_eq!((a.batch_count(), a.start_offset()), (1, Some(3)));
            assert_eq!(b.batch_count(), 4);
            // Written up to 5: the cap applies again.
            a.push(&fake(1000, 1), 4, 4, 0, 4);
            a.push(&fake(1000, 1), 5, 5, 0, 5);
            assert_eq!(a.batch_count(), 2);
            assert_eq!(a.start_offset(), Some(4));
        })
        .join()
        .unwrap();
    }

    /// A cache left holding only unwritten batches leaves the eviction order, so later pushes
    /// over the budget do not walk it again; once written, it is back in the order.
    #[test]
    fn a_cache_of_only_pinned_batches_leaves_the_eviction_order_until_written() {
        std::thread::spawn(|| {
            let cost = 1000 + ENTRY_OVERHEAD_BYTES;
            set_shard_budget(2 * cost);
            let mut pinned = TailCache::new(10 * cost);
            let mut busy = TailCache::new(10 * cost);
            for i in 0..3 {
                pinned.push(&fake(1000, 1), i, i, 0, 0);
            }
            let in_order = |cache: &TailCache| {
                SHARD_CACHES.with(|c| c.borrow().by_last_use.values().any(|&id| id == cache.id))
            };
            for i in 0..3 {
                busy.push(&fake(1000, 2), i, i, 0, i64::MAX);
            }
            // The third push went over the budget: the walk found nothing to shed in `pinned`
            // and took it out of the order; `busy` shed its own oldest.
            assert!(!in_order(&pinned));
            assert_eq!((pinned.batch_count(), busy.batch_count()), (3, 2));
            pinned.unpin_below(3);
            assert!(in_order(&pinned));
            busy.push(&fake(1000, 2), 3, 3, 0, i64::MAX);
            assert_eq!((pinned.batch_count(), busy.batch_count()), (0, 2));
            assert_eq!(shard_used_bytes(), 2 * cost);
        })
        .join()
        .unwrap();
    }
}
