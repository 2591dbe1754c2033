//! Where a segment file's extents start, so that no O_DIRECT write spans two of them.
//!
//! io_uring first tries a write without blocking. ext4 takes an O_DIRECT write that way only
//! if it is a pure overwrite of one mapped extent (`ext4_overwrite_io`: one block mapping must
//! cover the whole range); a write that crosses from one extent into the next, even when both
//! hold written blocks, needs the inode lock exclusively, fails with `EAGAIN`, and io_uring
//! hands it to a worker thread: a thread wake-up on the shard's CPU and a hop back for the
//! completion. A reused segment file on a file system whose free space is fragmented is made
//! of extents of a few MiB (traced at W3's 1.3 M msgs/s: extents of 512-3,840 blocks, and about
//! one segment write in ten punted, each right after ext4 looked up an extent ending inside
//! it). So the writer cuts a write where an extent starts ([`ExtentStarts::cuts_within`]) and
//! submits the pieces together; the block layer merges adjacent ones again.
//!
//! Only a matter of speed: a stale or missing map gives a write that ext4 hands to a worker,
//! never different bytes on disk.

use std::io;
use std::os::fd::RawFd;

use super::PAGE_BYTES;

/// `FS_IOC_FIEMAP`: `_IOWR('f', 11, struct fiemap)`.
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
/// The extent is the file's last.
const FIEMAP_EXTENT_LAST: u32 = 0x1;
/// Extents asked for per call.
const EXTENTS_PER_CALL: usize = 64;
/// A file mapped in more extents than this is mapped only this far (the rest of its writes
/// are cut nowhere): a bound on the work and memory one query takes.
const MAX_EXTENTS: usize = 4096;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    fe_logical: u64,
    fe_physical: u64,
    fe_length: u64,
    fe_reserved64: [u64; 2],
    fe_flags: u32,
    fe_reserved: [u32; 3],
}

#[repr(C)]
struct Fiemap {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
    fm_extents: [FiemapExtent; EXTENTS_PER_CALL],
}

/// The extents of one file from some offset on, as the file system reported them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExtentStarts {
    /// The offset the map starts at.
    from: u64,
    /// Where the last extent reported ends: the map says nothing about offsets beyond.
    end: u64,
    /// Offsets in `(from, end)` where an extent starts, ascending.
    starts: Vec<u64>,
}

impl ExtentStarts {
    /// The extents of the file `fd` at or after `from` (a blocking `ioctl`: the file system may
    /// read its extent tree from the disk).
    pub(crate) fn read(fd: RawFd, from: u64) -> io::Result<ExtentStarts> {
        let mut extents = Vec::new();
        let mut at = from;
        loop {
            let mut map = Fiemap {
                fm_start: at,
                fm_length: u64::MAX - at,
                fm_flags: 0,
                fm_mapped_extents: 0,
                fm_extent_count: EXTENTS_PER_CALL as u32,
                fm_reserved: 0,
                fm_extents: [FiemapExtent::default(); EXTENTS_PER_CALL],
            };
            // SAFETY: `map` is a `struct fiemap` with room for `fm_extent_count` extents, which
            // is all the kernel writes.
            if unsafe { libc::ioctl(fd, FS_IOC_FIEMAP as _, &mut map as *mut Fiemap) } < 0 {
                return Err(io::Error::last_os_error());
            }
            let mapped = (map.fm_mapped_extents as usize).min(EXTENTS_PER_CALL);
            let got = &map.fm_extents[..mapped];
            extents.extend(got.iter().map(|e| (e.fe_logical, e.fe_length)));
            let last = got.last();
            let done = mapped < EXTENTS_PER_CALL
                || last.is_none_or(|e| e.fe_flags & FIEMAP_EXTENT_LAST != 0)
                || extents.len() >= MAX_EXTENTS;
            match last {
                Some(e) if !done => at = e.fe_logical + e.fe_length,
                _ => break,
            }
        }
        Ok(ExtentStarts::from_extents(from, &extents))
    }

    /// [`Self::read`] on the shard's blocking pool, off its event loop. `fd` must stay open
    /// until this resolves (the caller owns it and awaits here).
    pub(crate) async fn read_off_loop(fd: RawFd, from: u64) -> io::Result<ExtentStarts> {
        glommio::executor()
            .spawn_blocking(move || ExtentStarts::read(fd, from))
            .await
    }

    /// A map that cuts nothing anywhere: for a file system that cannot say (no FIEMAP), so
    /// that the writer does not ask again for every write.
    pub(crate) fn unknown() -> ExtentStarts {
        ExtentStarts {
            from: 0,
            end: u64::MAX,
            starts: Vec::new(),
        }
    }

    /// The map of `(logical offset, length)` extents, ascending, from `from` on.
    fn from_extents(from: u64, extents: &[(u64, u64)]) -> ExtentStarts {
        let end = extents
            .iter()
            .map(|&(logical, length)| logical.saturating_add(length))
            .max()
            .unwrap_or(from)
            .max(from);
        let starts = extents
            .iter()
            .map(|&(logical, _)| logical)
            .filter(|&start| start > from && start < end)
            .collect();
        ExtentStarts { from, end, starts }
    }

    /// Whether the map says where extents start all through `[from, to)`.
    pub(crate) fn covers(&self, from: u64, to: u64) -> bool {
        self.from <= from && to <= self.end
    }

    /// Where the map ends: the end of the last extent it holds.
    #[cfg(test)]
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// The page-aligned offsets in `(from, to)` where an extent starts, relative to `from`:
    /// where a write of `[from, to)` is cut so that each piece lies in one extent.
    pub(crate) fn cuts_within(&self, from: u64, to: u64) -> impl Iterator<Item = usize> + '_ {
        let first = self.starts.partition_point(|&start| start <= from);
        self.starts[first..]
            .iter()
            .take_while(move |&&start| start < to)
            .filter(|&&start| start.is_multiple_of(PAGE_BYTES))
            .map(move |&start| (start - from) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    const MIB: u64 = 1 << 20;

    #[test]
    fn cuts_fall_where_extents_start_inside_the_write() {
        let map = ExtentStarts::from_extents(0, &[(0, 2 * MIB), (2 * MIB, MIB), (3 * MIB, MIB)]);
        assert_eq!(map.end(), 4 * MIB);
        assert!(map.covers(MIB, 4 * MIB));
        assert!(!map.covers(MIB, 4 * MIB + 1));
        let cuts = |from, to| map.cuts_within(from, to).collect::<Vec<_>>();
        assert_eq!(cuts(MIB, 4 * MIB), vec![MIB as usize, 2 * MIB as usize]);
        assert_eq!(
            cuts(2 * MIB, 3 * MIB),
            Vec::<usize>::new(),
            "one whole extent"
        );
        assert_eq!(cuts(0, 2 * MIB + 4096), vec![2 * MIB as usize]);
        assert_eq!(cuts(3 * MIB, 8 * MIB), Vec::<usize>::new());
    }

    #[test]
    fn a_map_read_from_the_middle_starts_there() {
        let map = ExtentStarts::from_extents(3 * MIB, &[(2 * MIB, 2 * MIB), (4 * MIB, MIB)]);
        assert!(map.covers(3 * MIB, 5 * MIB));
        assert!(!map.covers(2 * MIB, 3 * MIB));
        assert_eq!(
            map.cuts_within(3 * MIB, 5 * MIB).collect::<Vec<_>>(),
            vec![MIB as usize]
        );
        let empty = ExtentStarts::from_extents(7, &[]);
        assert!(empty.covers(7, 7) && !empty.covers(7, 8));
    }

    /// A real file: what the file system reports covers what was allocated, and its cuts are
    /// offsets inside the write where an extent starts (how many depends on the free space).
    #[test]
    fn a_file_map_covers_its_allocated_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("f")).unwrap();
        let bytes = 8 * MIB;
        assert_eq!(
            unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, bytes as libc::off_t) },
            0
        );
        let map = match ExtentStarts::read(file.as_raw_fd(), 0) {
            Ok(map) => map,
            // A file system without FIEMAP (tmpfs before 6.x): the writer then cuts nowhere.
            Err(error) if error.raw_os_error() == Some(libc::EOPNOTSUPP) => return,
            Err(error) => panic!("{error}"),
        };
        assert!(map.covers(0, bytes), "{map:?}");
        for cut in map.cuts_within(0, bytes) {
            assert!(cut > 0 && (cut as u64) < bytes && (cut as u64).is_multiple_of(PAGE_BYTES));
        }
        let from_middle = ExtentStarts::read(file.as_raw_fd(), 5 * MIB).unwrap();
        assert!(from_middle.covers(5 * MIB, bytes), "{from_middle:?}");
    }
}
