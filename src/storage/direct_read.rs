//! Reading a fetch's cold segment bytes with O_DIRECT into memory, off the shard.
//!
//! Segments are written with O_DIRECT, so a consumer catching up reads bytes the page cache has
//! never held. Through the page cache (warm them, then sendfile: `storage::warm`) each such
//! byte lands in a page the kernel has just allocated, and the first CPU to touch that page
//! pays for it. On a VM whose balloon reports free pages to the host (virtio-balloon free page
//! reporting, as on the benchmark machines) that is a host-side fault per page: the consumer's
//! `recv` copy out of those pages ran at 1.1 GB/s, 89 % of the client's CPU, and bounded a 2 GiB
//! catch-up read at 0.6 GB/s; the same bytes read a second time went at 7.8 GB/s
//! (docs/benchmarks.md, "What bounds W4 cold"). An O_DIRECT read instead lands in a buffer of this process's
//! heap whose pages stay mapped from one read to the next, so nobody pays that fault, and the
//! page cache is left to what it serves well.
//!
//! What it costs: the bytes are sent with a copy into the socket (writev of memory chunks, as
//! the tail cache's are) instead of sendfile's page references, and they are held in memory
//! until the response is written. [`DirectReadBudget`] bounds the latter per shard
//! (`fetch.cold.read.buffer.bytes`); a read that would exceed it warms the page cache instead,
//! as before. And the page cache keeps nothing of what was read: a second consumer of the same
//! backlog reads the device again, where through the page cache it found the bytes in memory
//! while free memory held them (7.8 GB/s against 1.3 here). Bytes already in the page cache
//! are still sent from there with sendfile.

use std::alloc::Layout;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::warm::ColdRange;
use super::PAGE_BYTES;

/// `fetch.cold.read.buffer.bytes` unless set: the most cold-read bytes one shard holds in
/// memory at once (read, not yet written to the clients' sockets). A fetch of 8 MiB for each
/// of 8 partitions holds 64 MiB until it is sent.
pub const DEFAULT_BUFFER_BYTES: usize = 256 << 20;

/// O_DIRECT's alignment for offsets, lengths and buffers: the page size, which every block
/// size a Linux file system uses for data divides.
const ALIGN: usize = PAGE_BYTES as usize;

/// Cold-read buffers are sized in steps of this, so that the reads of one consumer, which ask
/// for the same `max_bytes` every time, reuse each other's buffers.
const SIZE_STEP_BYTES: usize = 1 << 20;

/// The most free buffer bytes a shard keeps for its next cold reads (and at most half its
/// budget).
const POOL_MAX_BYTES: usize = 128 << 20;

/// How many cold-read bytes a shard holds, and the freed buffers it keeps for the next reads.
/// Shared with the threads that read and the shards that write the responses (a buffer is
/// released wherever its last slice is dropped).
///
/// Why a pool of its own: a buffer freed to malloc went back to the kernel (glibc trims a
/// thread arena's top past its threshold, and every blocking-pool thread has an arena), and the
/// next read's buffer was fresh pages: the kernel zeroed each (`clear_page_erms`, 58 % of the
/// broker's samples in a cold catch-up read) and, on a VM that reports free pages to its host,
/// the host faulted each in again, the very cost O_DIRECT reads are here to avoid.
#[derive(Debug)]
pub struct DirectReadBudget {
    held_bytes: AtomicUsize,
    limit_bytes: usize,
    /// Freed buffers, by size: reused by the next read of the same size step.
    free: Mutex<FreeBuffers>,
    pool_limit_bytes: usize,
}

#[derive(Debug, Default)]
struct FreeBuffers {
    buffers: Vec<Allocation>,
    bytes: usize,
}

/// A page-aligned heap allocation, not in use.
#[derive(Debug)]
struct Allocation {
    ptr: std::ptr::NonNull<u8>,
    layout: Layout,
}

// SAFETY: exclusively owned heap memory. Free, nothing else refers to it; in a `DirectBuffer`,
// after the read it is only read, through shared `Bytes` slices, from whichever thread holds
// them.
unsafe impl Send for Allocation {}

impl Allocation {
    fn new(size: usize) -> Option<Allocation> {
        let layout = Layout::from_size_align(size, ALIGN).ok()?;
        if size == 0 {
            return None;
        }
        // SAFETY: the layout's size is non-zero. Not zeroed: only the bytes a read filled are
        // ever exposed (`DirectBuffer::filled`).
        let ptr = std::ptr::NonNull::new(unsafe { std::alloc::alloc(layout) })?;
        Some(Allocation { ptr, layout })
    }

    fn free(self) {
        // SAFETY: allocated in `new` with this layout, and `self` owned it.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

impl DirectReadBudget {
    /// A shard's budget of `limit_bytes` (0: no cold reads into memory).
    pub fn new(limit_bytes: usize) -> Arc<DirectReadBudget> {
        Arc::new(DirectReadBudget {
            held_bytes: AtomicUsize::new(0),
            limit_bytes,
            free: Mutex::new(FreeBuffers::default()),
            pool_limit_bytes: (limit_bytes / 2).min(POOL_MAX_BYTES),
        })
    }

    /// Bytes held by reads now (not counting the free buffers kept).
    pub fn held_bytes(&self) -> usize {
        self.held_bytes.load(Ordering::Relaxed)
    }

    /// Bytes of free buffers kept for the next reads.
    pub fn pooled_bytes(&self) -> usize {
        self.lock_free().bytes
    }

    /// Gives the kept free buffers back to malloc (the shard's partitions went idle).
    pub fn release_free(&self) {
        let released = std::mem::take(&mut *self.lock_free());
        released.buffers.into_iter().for_each(Allocation::free);
    }

    fn lock_free(&self) -> std::sync::MutexGuard<'_, FreeBuffers> {
        // A panic while holding the lock leaves a list that is still consistent.
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `bytes` from the budget unless that would exceed it.
    fn try_take(&self, bytes: usize) -> bool {
        self.held_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|&n| n <= self.limit_bytes)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        let before = self.held_bytes.fetch_sub(bytes, Ordering::AcqRel);
        debug_assert!(before >= bytes, "gave back more than was taken");
    }

    /// A buffer of `size` bytes (a multiple of the size step) from the pool or malloc.
    fn allocate(&self, size: usize) -> Option<Allocation> {
        {
            let mut free = self.lock_free();
            if let Some(i) = free.buffers.iter().position(|a| a.layout.size() == size) {
                free.bytes -= size;
                // `remove`, not `swap_remove`: the list stays oldest first for `recycle`.
                return Some(free.buffers.remove(i));
            }
        }
        Allocation::new(size)
    }

    /// Keeps `allocation` for the next read if the pool has room, else frees it. When full,
    /// the oldest buffers of other sizes make room first (a consumer changed its `max_bytes`).
    fn recycle(&self, allocation: Allocation) {
        let size = allocation.layout.size();
        if size > self.pool_limit_bytes {
            return allocation.free();
        }
        let mut evicted = Vec::new();
        {
            let mut free = self.lock_free();
            while free.bytes + size > self.pool_limit_bytes {
                let Some(i) = free.buffers.iter().position(|a| a.layout.size() != size) else {
                    break;
                };
                let old = free.buffers.remove(i);
                free.bytes -= old.layout.size();
                evicted.push(old);
            }
            if free.bytes + size <= self.pool_limit_bytes {
                free.bytes += size;
                free.buffers.push(allocation);
            } else {
                evicted.push(allocation);
            }
        }
        evicted.into_iter().for_each(Allocation::free);
    }
}

/// A cold read's buffer, charged to a budget until dropped: the owner of the [`Bytes`] a cold
/// read returns.
struct DirectBuffer {
    allocation: Option<Allocation>,
    /// Bytes read into it (a prefix of its size).
    filled: usize,
    budget: Arc<DirectReadBudget>,
}

impl DirectBuffer {
    /// At least `size` bytes; `None` when the budget or the allocator refuses.
    fn new(size: usize, budget: &Arc<DirectReadBudget>) -> Option<DirectBuffer> {
        let size = size.checked_next_multiple_of(SIZE_STEP_BYTES)?;
        if size == 0 || !budget.try_take(size) {
            return None;
        }
        let Some(allocation) = budget.allocate(size) else {
            budget.give_back(size);
            return None;
        };
        Some(DirectBuffer {
            allocation: Some(allocation),
            filled: 0,
            budget: budget.clone(),
        })
    }

    fn allocation(&self) -> &Allocation {
        self.allocation.as_ref().expect("held until dropped")
    }

    fn size(&self) -> usize {
        self.allocation().layout.size()
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.allocation().ptr.as_ptr()
    }
}

impl AsRef<[u8]> for DirectBuffer {
    fn as_ref(&self) -> &[u8] {
        debug_assert!(self.filled <= self.size());
        // SAFETY: the first `filled` bytes were written by the read and the allocation lives
        // as long as `self`.
        unsafe { std::slice::from_raw_parts(self.allocation().ptr.as_ptr(), self.filled) }
    }
}

impl Drop for DirectBuffer {
    fn drop(&mut self) {
        if let Some(allocation) = self.allocation.take() {
            let size = allocation.layout.size();
            self.budget.recycle(allocation);
            self.budget.give_back(size);
        }
    }
}

/// Segment bytes read into memory for one partition's fetch: `bytes` are the bytes from
/// `position` of the segment whose [`super::segment::Segment::id`] is `segment`, as they were
/// when read (which tells whether the segment a fetch reads is still the one read).
#[derive(Clone, Debug)]
pub struct Prefetched {
    pub segment: u64,
    pub position: u64,
    pub bytes: Bytes,
}

impl Prefetched {
    /// The bytes `[position, position + len)` of the file, if these hold all of them.
    pub fn slice(&self, position: u64, len: u64) -> Option<Bytes> {
        let start = usize::try_from(position.checked_sub(self.position)?).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        (end <= self.bytes.len()).then(|| self.bytes.slice(start..end))
    }

    /// The bytes from `position` to the end of what was read, if `position` is within it.
    pub fn bytes_from(&self, position: u64) -> Option<&[u8]> {
        let start = usize::try_from(position.checked_sub(self.position)?).ok()?;
        self.bytes.get(start..)
    }
}

impl ColdRange {
    /// Reads the range with O_DIRECT into a buffer charged to `budget`. Blocking: run it on a
    /// blocking-pool thread. When the budget is spent, or the file refuses O_DIRECT or the
    /// read fails, warms the page cache instead (the fetch then reads the file as before) and
    /// returns `None`.
    pub fn read_direct(&self, budget: &Arc<DirectReadBudget>) -> Option<Prefetched> {
        let read = self.try_read_direct(budget);
        if read.is_none() {
            ColdRange::warm_all(std::slice::from_ref(self));
        }
        read
    }

    fn try_read_direct(&self, budget: &Arc<DirectReadBudget>) -> Option<Prefetched> {
        let (file, position, len, segment) = self.parts();
        let start = position - position % ALIGN as u64;
        let end = (position + len as u64).next_multiple_of(ALIGN as u64);
        let size = usize::try_from(end - start).ok()?;
        let mut buffer = DirectBuffer::new(size, budget)?;
        let base = buffer.as_mut_ptr();
        let direct = open_direct(file)?;
        let mut filled = 0usize;
        while filled < size {
            // SAFETY: writes at most `size - filled` bytes into the buffer past `filled`; the
            // buffer, its offset and the length are page-aligned (O_DIRECT's rule).
            let n = unsafe {
                libc::pread(
                    direct.as_raw_fd(),
                    base.add(filled).cast(),
                    size - filled,
                    libc::off_t::try_from(start + filled as u64).ok()?,
                )
            };
            match n {
                0 => break, // end of file: the range ends in the file's last block
                n if n > 0 => {
                    filled += n as usize;
                    if !filled.is_multiple_of(ALIGN) {
                        break; // a short read ends at the end of file
                    }
                }
                _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
                _ => {
                    let error = std::io::Error::last_os_error();
                    tracing::debug!(%error, "O_DIRECT read of a cold fetch range failed");
                    return None;
                }
            }
        }
        buffer.filled = filled;
        let skip = (position - start) as usize;
        if filled <= skip {
            return None;
        }
        let bytes = Bytes::from_owner(buffer).slice(skip..filled.min(skip + len));
        Some(Prefetched {
            segment,
            position,
            bytes,
        })
    }
}

/// A second descriptor of `file`'s inode, opened with O_DIRECT: through /proc, so that it is
/// the same file even if the segment was renamed or unlinked since (retention, compaction).
fn open_direct(file: &File) -> Option<File> {
    let path = format!("/proc/self/fd/{}\0", file.as_raw_fd());
    // SAFETY: a NUL-terminated path; the descriptor returned is owned by the `File` below.
    let fd = unsafe {
        libc::open(
            path.as_ptr().cast(),
            libc::O_RDONLY | libc::O_DIRECT | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let error = std::io::Error::last_os_error();
        tracing::debug!(%error, "no O_DIRECT descriptor for a cold fetch range");
        return None;
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    Some(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A file of `len` bytes, each its position modulo 251, synced to the device and dropped
    /// from the page cache, so that `ColdRange::of` finds every range of it cold.
    fn cold_file(len: usize) -> (tempfile::TempDir, Arc<File>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut file = File::create(&path).unwrap();
        file.write_all(&bytes).unwrap();
        file.sync_all().unwrap();
        let file = File::open(&path).unwrap();
        // SAFETY: advice on an open descriptor.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        (dir, Arc::new(file))
    }

    fn expected(position: u64, len: usize) -> Vec<u8> {
        (position..position + len as u64)
            .map(|i| (i % 251) as u8)
            .collect()
    }

    /// An unaligned range in the middle, and one that runs past the end of the file: the
    /// bytes are the file's, exactly the range's (clipped at the end), and the budget is
    /// charged while they are held and given back when the last slice goes.
    #[test]
    fn reads_unaligned_ranges_and_gives_the_budget_back() {
        let (_dir, file) = cold_file(3 << 20);
        let budget = DirectReadBudget::new(64 << 20);
        let range = ColdRange::of(file.clone(), 4_097, 1_000_000).expect("cold");
        let read = range.read_direct(&budget).expect("an O_DIRECT read");
        assert_eq!(read.position, 4_097);
        assert_eq!(&read.bytes[..], &expected(4_097, 1_000_000)[..]);
        assert!(budget.held_bytes() >= 1_000_000);
        let middle = read.slice(5_000, 10).unwrap();
        assert_eq!(&middle[..], &expected(5_000, 10)[..]);
        assert!(read.slice(4_096, 10).is_none(), "before the range");
        assert!(read.slice(1_004_000, 200).is_none(), "past the range");
        drop(read);
        assert!(budget.held_bytes() > 0, "a slice still holds the buffer");
        drop(middle);
        assert_eq!(budget.held_bytes(), 0);

        let tail = (3 << 20) - 100;
        let range = ColdRange::of(file, tail, 50_000).expect("cold");
        let read = range.read_direct(&budget).expect("an O_DIRECT read");
        assert_eq!(&read.bytes[..], &expected(tail, 100)[..]);
    }

    /// A spent budget reads nothing into memory: the range is warmed into the page cache
    /// instead, for the file path.
    #[test]
    fn a_spent_budget_falls_back_to_the_page_cache() {
        let (_dir, file) = cold_file(1 << 20);
        let budget = DirectReadBudget::new(64 << 10);
        let range = ColdRange::of(file.clone(), 0, 512 << 10).expect("cold");
        assert!(range.read_direct(&budget).is_none());
        assert_eq!(budget.held_bytes(), 0);
        assert!(
            ColdRange::of(file, 0, 512 << 10).is_none(),
            "warmed instead"
        );
    }

    /// A freed buffer is kept for the next read of the same size step and handed out again
    /// (not allocated anew); the pool never holds more than half the budget, and
    /// `release_free` empties it.
    #[test]
    fn freed_buffers_are_reused_within_the_pool_bound() {
        let (_dir, file) = cold_file(8 << 20);
        let budget = DirectReadBudget::new(8 << 20);
        let read_at = |position: u64, len: usize| {
            ColdRange::of(file.clone(), position, len)
                .expect("cold")
                .read_direct(&budget)
                .expect("an O_DIRECT read")
        };
        let first = read_at(0, 1_500_000); // a 2 MiB buffer
        let address = first.bytes.as_ptr() as usize;
        drop(first);
        assert_eq!(budget.pooled_bytes(), 2 << 20, "kept");
        let again = read_at(4096, 1_500_000); // the same step: the same buffer
        assert_eq!(again.bytes.as_ptr() as usize, address);
        assert_eq!(budget.pooled_bytes(), 0, "handed out");
        assert_eq!(&again.bytes[..], &expected(4096, 1_500_000)[..]);
        let larger = read_at(2 << 20, 3_000_000); // 3 MiB: with 2 held, 5 of 8
        drop(again);
        drop(larger);
        assert!(budget.pooled_bytes() <= 4 << 20, "at most half the budget");
        assert_eq!(budget.held_bytes(), 0);
        budget.release_free();
        assert_eq!(budget.pooled_bytes(), 0);
    }
}
