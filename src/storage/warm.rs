//! Bringing a fetch's cold segment bytes into the page cache off the shard.
//!
//! A fetch below a partition's tail cache reads the segment file: a pread scan of batch
//! headers to find the fetch offset, then sendfile of the range. Both are synchronous, and
//! O_DIRECT appends leave nothing in the page cache, so when the bytes are cold both wait for
//! the device on the shard's thread, and every other partition of the shard waits too (the
//! stall detector caught `pread` in `find_batch` holding a shard 26-71 ms while the device was
//! slow). So before such a read the fetch asks [`ColdRange::of`] whether the whole range is in
//! the page cache and, if not, has a blocking-pool thread read it ([`ColdRange::warm_all`]);
//! the read on the shard then finds it in memory.
//!
//! The question costs three system calls that never wait: a one-byte `preadv2(RWF_NOWAIT)` at
//! each end of the range (EAGAIN when that byte would have to come from the device, or is
//! still coming from it), then `cachestat(2)` (Linux 6.5) for the middle: the kernel counts the
//! range's cached pages without reading them. Neither is enough alone. The ends miss a range
//! evicted in the middle. `cachestat` counts pages a readahead has put in the cache but not yet
//! read, so a catch-up reader, whose next range is usually such a readahead in flight, read on
//! the shard and waited: 3-7 stalls per 2 GiB catch-up read with `cachestat` alone, none with
//! the ends' probes (docs/benchmarks.md, "The tail cache's window, and cold reads off the
//! shard"). Where `cachestat` is missing (an older kernel, a seccomp filter) the ends decide.

use std::fs::File;
use std::os::fd::AsRawFd;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::PAGE_BYTES;

/// Bytes past the fetch's own `max_bytes` warmed too: the header scan starts at the sparse
/// index entry at or below the fetch offset (`log.index.interval.bytes`, 4 KiB by default,
/// apart) and may read a batch header past the range.
pub const SCAN_SLACK_BYTES: usize = 64 << 10;

/// The bytes one warming read moves at a time (its buffer, on the blocking thread).
const WARM_PIECE_BYTES: usize = 1 << 20;

/// A range of a segment file a fetch is about to read, not (wholly) in the page cache.
#[derive(Debug)]
pub struct ColdRange {
    file: Arc<File>,
    position: u64,
    len: usize,
    /// The [`super::segment::Segment::id`] of the segment the range is of (0: not said).
    segment: u64,
}

impl ColdRange {
    /// `Some` when some page of `[position, position + len)` of `file` is not in the page
    /// cache, or its first or last byte is not readable without waiting. Never waits for the
    /// device.
    pub fn of(file: Arc<File>, position: u64, len: usize) -> Option<ColdRange> {
        ColdRange::check(file, position, len, true)
    }

    /// [`Self::of`] asking only `cachestat(2)`, where the kernel has it: no probe that could
    /// start a read. A buffered read that misses, even with `RWF_NOWAIT`, starts the kernel's
    /// read-ahead (up to twice the device's `read_ahead_kb` on a sequential descriptor) before
    /// it returns EAGAIN; for a range about to be read with O_DIRECT that is a second read of
    /// it from the device, into pages nobody asked for. What `cachestat` cannot tell (a
    /// read-ahead in flight counts as cached) only matters where something starts one, which
    /// with cold reads into memory nothing on the fetch path does.
    pub fn of_counted(file: Arc<File>, position: u64, len: usize) -> Option<ColdRange> {
        ColdRange::check(file, position, len, false)
    }

    /// [`Self::of`] (`probe_ends`) or [`Self::of_counted`]; without `cachestat` the ends'
    /// probes are all there is to ask.
    fn check(file: Arc<File>, position: u64, len: usize, probe_ends: bool) -> Option<ColdRange> {
        if len == 0 {
            return None;
        }
        let last = position + len as u64 - 1;
        let pages_spanned = last / PAGE_BYTES - position / PAGE_BYTES + 1;
        let ends_cached = || is_cached(&file, position) && is_cached(&file, last);
        let counted = || cached_pages(&file, position, len as u64);
        let cached = if probe_ends {
            // The ends first: cachestat counts pages whose read is still in flight (readahead
            // puts them in the cache before reading them), which a read would wait for; a
            // readahead in flight is at the end of what a sequential reader has cached, where
            // the probe sees it.
            ends_cached() && counted().is_none_or(|n| n == pages_spanned)
        } else {
            counted().map_or_else(ends_cached, |n| n == pages_spanned)
        };
        (!cached).then_some(ColdRange {
            file,
            position,
            len,
            segment: 0,
        })
    }

    /// Reads the ranges into the page cache, through one buffer. Blocking: run it on a
    /// blocking-pool thread. Errors are left to the reads that follow (they report them as
    /// they always did).
    pub fn warm_all(ranges: &[ColdRange]) {
        let longest = ranges.iter().map(|r| r.len).max().unwrap_or(0);
        let mut buffer = vec![0u8; WARM_PIECE_BYTES.min(longest)];
        for range in ranges {
            range.warm(&mut buffer);
        }
    }

    fn warm(&self, buffer: &mut [u8]) {
        let mut done = 0usize;
        while done < self.len {
            let piece = buffer.len().min(self.len - done);
            match super::segment::read_at_most(
                &self.file,
                &mut buffer[..piece],
                self.position + done as u64,
            ) {
                Ok(n) if n == piece => done += n,
                _ => return, // end of file (a truncation) or an error: nothing more to warm
            }
        }
    }

    /// The range as of the segment `id` ([`super::segment::Segment::id`]): what is read of it
    /// into memory says so, and serves only that segment.
    pub fn of_segment(mut self, id: u64) -> ColdRange {
        self.segment = id;
        self
    }

    /// The file, the range's first byte's position, its length and its segment's id.
    pub(super) fn parts(&self) -> (&Arc<File>, u64, usize, u64) {
        (&self.file, self.position, self.len, self.segment)
    }

    /// The range's length in bytes.
    pub fn bytes(&self) -> usize {
        self.len
    }
}

/// `cachestat(2)`'s system call number: 451 in the table every architecture has shared since
/// Linux 6.5 (x86-64's included); the libc crate does not name it for every target.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const SYS_CACHESTAT: libc::c_long = 451;

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
/// Set once `cachestat` failed as missing or refused: the ends' probes from then on.
static CACHESTAT_UNAVAILABLE: AtomicBool = AtomicBool::new(false);

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[repr(C)]
struct CachestatRange {
    offset: u64,
    len: u64,
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// How many pages of `[position, position + len)` of `file` the page cache holds, or `None`
/// where the kernel cannot say (then the caller probes the ends).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn cached_pages(file: &File, position: u64, len: u64) -> Option<u64> {
    if CACHESTAT_UNAVAILABLE.load(Ordering::Relaxed) {
        return None;
    }
    let range = CachestatRange {
        offset: position,
        len,
    };
    let mut stat = Cachestat::default();
    // SAFETY: both structs are live, `repr(C)` and laid out as the kernel's; the fd is open for
    // the call's duration.
    let done = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const CachestatRange,
            &mut stat as *mut Cachestat,
            0,
        )
    };
    if done == 0 {
        return Some(stat.nr_cache);
    }
    let error = std::io::Error::last_os_error();
    if matches!(
        error.raw_os_error(),
        Some(libc::ENOSYS | libc::EPERM | libc::EOPNOTSUPP)
    ) {
        CACHESTAT_UNAVAILABLE.store(true, Ordering::Relaxed);
        tracing::debug!(%error, "cachestat unavailable: cold fetch ranges found by their ends");
    }
    None
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn cached_pages(_file: &File, _position: u64, _len: u64) -> Option<u64> {
    None
}

/// Whether the byte at `position` is in the page cache: a one-byte read that fails with EAGAIN
/// instead of waiting for the device. Where RWF_NOWAIT is not supported, `true` (the caller then
/// reads as before).
fn is_cached(file: &File, position: u64) -> bool {
    let mut byte = 0u8;
    let iov = libc::iovec {
        iov_base: (&mut byte as *mut u8).cast(),
        iov_len: 1,
    };
    let Ok(offset) = libc::off_t::try_from(position) else {
        return true;
    };
    // SAFETY: one iovec over a live local byte; the fd is open for the call's duration.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    if n >= 0 {
        return true; // read it (or end of file): nothing to wait for
    }
    std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A 3 MiB file written through the page cache (so all of it is cached), its length, and
    /// the directory that keeps it.
    fn written_through_the_page_cache() -> (tempfile::TempDir, Arc<File>, usize) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("segment.log");
        let len = 3 << 20;
        let mut file = File::create(&path).expect("create");
        file.write_all(&vec![7u8; len]).expect("write");
        file.sync_all().expect("sync");
        (dir, Arc::new(File::open(&path).expect("open")), len)
    }

    /// Asks the kernel to drop `[offset, offset + len)` of `file` from the page cache (`len`
    /// 0: to the end); clean pages go where the filesystem honours it, as ext4 does.
    fn drop_from_page_cache(file: &File, offset: i64, len: i64) {
        // SAFETY: fadvise on an open fd.
        let dropped = unsafe {
            libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED)
        };
        assert_eq!(dropped, 0);
    }

    /// A file just written through the page cache is cached; after POSIX_FADV_DONTNEED it is
    /// not (where the filesystem drops clean pages on request, as ext4 does), and warming
    /// brings it back.
    #[test]
    fn cold_ranges_are_found_and_warmed() {
        let (_dir, file, len) = written_through_the_page_cache();
        // Written through the page cache: every byte still there.
        assert!(ColdRange::of(file.clone(), 0, len).is_none());
        assert!(ColdRange::of(file.clone(), 0, 0).is_none());
        drop_from_page_cache(&file, 0, 0);
        let Some(cold) = ColdRange::of(file.clone(), 4096, len - 4096) else {
            eprintln!("!!! SKIPPED: this filesystem keeps clean pages after DONTNEED");
            return;
        };
        assert_eq!(cold.bytes(), len - 4096);
        ColdRange::warm_all(&[cold]);
        assert!(
            ColdRange::of(file.clone(), 4096, len - 4096).is_none(),
            "warmed bytes are cached"
        );
    }

    /// A range cached at both ends but evicted in the middle is cold: what the ends' probes
    /// alone missed (a catch-up read would have waited for the device on the shard).
    #[test]
    fn a_range_evicted_in_the_middle_is_cold() {
        let (_dir, file, len) = written_through_the_page_cache();
        if cached_pages(&file, 0, len as u64).is_none() {
            eprintln!("!!! SKIPPED: no cachestat(2) here (Linux 6.5+)");
            return;
        }
        assert_eq!(cached_pages(&file, 0, len as u64), Some(768));
        assert_eq!(cached_pages(&file, 100, 3996), Some(1), "one page spanned");
        assert_eq!(cached_pages(&file, 4000, 200), Some(2), "two pages spanned");
        assert!(ColdRange::of(file.clone(), 0, len).is_none());
        drop_from_page_cache(&file, 1 << 20, 1 << 20);
        if cached_pages(&file, 1 << 20, 1 << 20) == Some(256) {
            eprintln!("!!! SKIPPED: this filesystem keeps clean pages after DONTNEED");
            return;
        }
        assert!(is_cached(&file, 0) && is_cached(&file, len as u64 - 1));
        let cold = ColdRange::of(file.clone(), 0, len).expect("the middle is not cached");
        ColdRange::warm_all(&[cold]);
        assert_eq!(cached_pages(&file, 0, len as u64), Some(768));
        assert!(ColdRange::of(file.clone(), 0, len).is_none());
    }

    /// `of_counted` finds a cold range by counting alone and brings nothing of it into the page
    /// cache doing so.
    #[test]
    fn counting_finds_a_cold_range_without_reading_it() {
        let (_dir, file, len) = written_through_the_page_cache();
        if cached_pages(&file, 0, len as u64).is_none() {
            eprintln!("!!! SKIPPED: no cachestat(2) here (Linux 6.5+)");
            return;
        }
        assert!(
            ColdRange::of_counted(file.clone(), 0, len).is_none(),
            "all cached"
        );
        drop_from_page_cache(&file, 0, 0);
        assert_eq!(cached_pages(&file, 0, len as u64), Some(0), "dropped");
        let cold = ColdRange::of_counted(file.clone(), 4096, 1 << 20).expect("cold");
        assert_eq!(cold.bytes(), 1 << 20);
        assert_eq!(
            cached_pages(&file, 0, len as u64),
            Some(0),
            "the check read nothing"
        );
        // `ColdRange::of` would fail this: on Linux 6.18 its probe's miss starts a
        // read-ahead (seen by an earlier version of this test, left out as kernel-specific).
    }
}
