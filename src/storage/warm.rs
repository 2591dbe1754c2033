//! Bringing a fetch's cold segment bytes into the page cache off the shard.
//!
//! A fetch below a partition's tail cache reads the segment file: a pread scan of batch
//! headers to find the fetch offset, then sendfile of the range. Both are synchronous, and
//! O_DIRECT appends leave nothing in the page cache, so when the bytes are cold both wait for
//! the device on the shard's thread, and every other partition of the shard waits too (the
//! stall detector caught `pread` in `find_batch` holding a shard 26-71 ms while the device was
//! slow). So before such a read the fetch asks [`ColdRange::of`] whether the range is in
//! the page cache (a one-byte `preadv2(RWF_NOWAIT)` at each end, which never waits) and, if
//! not, has a blocking-pool thread read it ([`ColdRange::warm_all`]); the read on the shard then
//! finds it in memory. A range already cached costs two such syscalls.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

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
}

impl ColdRange {
    /// `Some` when `[position, position + len)` of `file` is not in the page cache at its
    /// first or last byte. Never waits for the device.
    pub fn of(file: Arc<File>, position: u64, len: usize) -> Option<ColdRange> {
        if len == 0 {
            return None;
        }
        let last = position + len as u64 - 1;
        if is_cached(&file, position) && is_cached(&file, last) {
            return None;
        }
        Some(ColdRange {
            file,
            position,
            len,
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

    /// The range's length in bytes.
    pub fn bytes(&self) -> usize {
        self.len
    }
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

    /// A file just written through the page cache is cached; after POSIX_FADV_DONTNEED it is
    /// not (where the filesystem drops clean pages on request, as ext4 does), and warming
    /// brings it back.
    #[test]
    fn cold_ranges_are_found_and_warmed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("segment.log");
        let mut file = File::create(&path).expect("create");
        file.write_all(&vec![7u8; 3 << 20]).expect("write");
        file.sync_all().expect("sync");
        let file = Arc::new(File::open(&path).expect("open"));
        let len = 3 << 20;
        // Written through the page cache: every byte still there.
        assert!(ColdRange::of(file.clone(), 0, len).is_none());
        assert!(ColdRange::of(file.clone(), 0, 0).is_none());
        // SAFETY: fadvise on an open fd.
        let dropped =
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(dropped, 0);
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
}
