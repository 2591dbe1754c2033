//! The O_DIRECT scan of the active segment on open (`scan_file_direct`): several aligned
//! reads in flight, batches validated in place, chunks already in the page cache (per
//! `mincore`, `Residency`) copied from it instead of read from the device again.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::rc::Rc;

use futures::StreamExt;
use glommio::io::DmaFile;

use super::scan::{scan_batches, FileScan, OffsetBounds, ScanStop};
use crate::record_batch::{BatchError, BatchHeader, LOG_OVERHEAD};
use crate::storage::segment::read_at_most;
use crate::storage::{StorageError, PAGE_BYTES};

/// Scans `file` (opened with O_DIRECT) from `start` (a batch boundary) to `end` like
/// [`scan_file`], with `reads_in_flight` aligned reads of `read_bytes` queued ahead of the
/// scan. Batches are validated in place in the read buffers; only a batch split by a chunk
/// boundary is copied, into a carry buffer completed from the next chunk.
///
/// With `page_cache` (a buffered handle to the same file), a chunk whose pages are all in the
/// page cache is copied from there instead (memory speed, where O_DIRECT would read the device
/// again): after a process crash or a clean restart, whatever consumers read recently is
/// still cached.
pub(crate) async fn scan_file_direct(
    file: &DmaFile,
    page_cache: Option<&File>,
    (start, end): (u64, u64),
    (read_bytes, reads_in_flight): (usize, usize),
    max_batch_bytes: usize,
    bounds: &mut OffsetBounds,
    mut on_batch: impl FnMut(u64, &BatchHeader),
) -> Result<FileScan, StorageError> {
    if start >= end {
        return Ok(FileScan {
            valid_end: start,
            stop: None,
        });
    }
    let align = file.alignment().max(1);
    let read_bytes = (read_bytes as u64).max(align).next_multiple_of(align);
    let first_read = start - start % align;
    let residency = page_cache.and_then(|f| Residency::map(f, end));
    let residency = residency.as_ref();
    // Buffers for copied chunks, reused: a fresh 2 MiB buffer per chunk costs a page fault
    // per 4 KiB, as much as the copy itself.
    let spare_buffers: Rc<RefCell<Vec<Vec<u8>>>> = Rc::default();
    let reads = (first_read..end)
        .step_by(read_bytes as usize)
        .map(|position| {
            let len = read_bytes.min((end - position).next_multiple_of(align));
            let spare_buffers = spare_buffers.clone();
            async move {
                let cached =
                    page_cache.filter(|_| residency.is_some_and(|r| r.all_resident(position, len)));
                let read = match cached {
                    Some(buffered) => {
                        let mut bytes = spare_buffers.borrow_mut().pop().unwrap_or_default();
                        bytes.resize(len as usize, 0);
                        read_at_most(buffered, &mut bytes, position).map(|n| {
                            bytes.truncate(n);
                            Chunk::Cached(CopiedChunk {
                                bytes,
                                spares: spare_buffers,
                            })
                        })
                    }
                    None => file
                        .read_at_aligned(position, len as usize)
                        .await
                        .map(Chunk::Direct)
                        .map_err(io::Error::from),
                };
                (position, len as usize, read)
            }
        });
    // `buffered` keeps `reads_in_flight` reads submitted (in order), so the device is busy
    // while this task validates the chunk it was handed.
    let mut reads = futures::stream::iter(reads).buffered(reads_in_flight.max(1));

    // File bytes [carry_start, carry_start + carry.len()) begin a batch that the previous
    // chunk cut; every byte before carry_start is validated.
    let mut carry: Vec<u8> = Vec::new();
    let mut carry_start = start;
    while let Some((position, requested, read)) = reads.next().await {
        let chunk = read?;
        let chunk = chunk.bytes();
        // A short read means the file is shorter than `end`: treat it as the end.
        let at_end = position + requested as u64 >= end || chunk.len() < requested;
        let from = (carry_start + carry.len() as u64 - position) as usize;
        let to = chunk.len().min((end - position) as usize);
        let mut data = &chunk[from.min(to)..to];
        let mut data_position = position + from as u64;

        // First finish the batch the previous chunk cut, taking only the bytes it needs.
        while !carry.is_empty() {
            let (valid, stop) = scan_batches(&carry, max_batch_bytes, bounds, |p, h| {
                on_batch(carry_start + p as u64, h)
            });
            match stop {
                None => {
                    carry_start += valid as u64;
                    carry.clear();
                }
                Some(ScanStop::Invalid(BatchError::Truncated)) if !data.is_empty() => {
                    debug_assert_eq!(valid, 0, "the carry holds at most one batch");
                    let take = (batch_len_so_far(&carry) - carry.len()).min(data.len());
                    carry.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    data_position += take as u64;
                }
                Some(ScanStop::Invalid(BatchError::Truncated)) if !at_end => break,
                stop => {
                    return Ok(FileScan {
                        valid_end: carry_start + valid as u64,
                        stop,
                    })
                }
            }
        }
        if !carry.is_empty() {
            continue; // the cut batch is longer than this whole chunk
        }

        let (valid, stop) = scan_batches(data, max_batch_bytes, bounds, |p, h| {
            on_batch(data_position + p as u64, h)
        });
        carry_start = data_position + valid as u64;
        match stop {
            Some(ScanStop::Invalid(BatchError::Truncated)) if !at_end => {
                // Shorter than max_batch_bytes: a longer length field stops as BadLength.
                carry.extend_from_slice(&data[valid..]);
            }
            None if !at_end => {}
            stop => {
                return Ok(FileScan {
                    valid_end: carry_start,
                    stop,
                })
            }
        }
    }
    unreachable!("the last read is at or past `end`, so the loop returns")
}

/// One chunk of a [`scan_file_direct`] scan.
enum Chunk {
    Direct(glommio::io::ReadResult),
    Cached(CopiedChunk),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Direct(read) => read,
            Chunk::Cached(copied) => &copied.bytes,
        }
    }
}

/// A chunk copied from the page cache; its buffer goes back to `spares` when dropped.
struct CopiedChunk {
    bytes: Vec<u8>,
    spares: Rc<RefCell<Vec<Vec<u8>>>>,
}

impl Drop for CopiedChunk {
    fn drop(&mut self) {
        self.spares
            .borrow_mut()
            .push(std::mem::take(&mut self.bytes));
    }
}

/// Which pages of a file are in the page cache: `mincore` on a shared read-only mapping that
/// is never dereferenced (so it cannot fault, nor raise SIGBUS if the file shrinks).
struct Residency {
    addr: std::ptr::NonNull<libc::c_void>,
    len: usize,
}

impl Residency {
    /// Maps the first `len` bytes of `file`; `None` if that fails (residency then unknown, and
    /// every chunk is read with O_DIRECT).
    fn map(file: &File, len: u64) -> Option<Residency> {
        use std::os::fd::AsRawFd;
        let len = usize::try_from(len).ok().filter(|&l| l > 0)?;
        // SAFETY: a new PROT_READ mapping of an open file; the kernel picks the address.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return None;
        }
        Some(Residency {
            addr: std::ptr::NonNull::new(addr)?,
            len,
        })
    }

    /// True when every page of `[position, position + len)` (clamped to the mapping) is
    /// cached.
    fn all_resident(&self, position: u64, len: u64) -> bool {
        let page = PAGE_BYTES as usize;
        let Ok(from) = usize::try_from(position) else {
            return false;
        };
        let from = from - from % page;
        let to = self.len.min(from.saturating_add(len as usize));
        if from >= to {
            return false;
        }
        let mut pages = vec![0u8; (to - from).div_ceil(page)];
        // SAFETY: `from` is page-aligned and `[from, to)` lies inside the mapping; `pages`
        // has one byte per page of that range, as mincore writes.
        let rc = unsafe {
            libc::mincore(
                self.addr.as_ptr().cast::<u8>().add(from).cast(),
                to - from,
                pages.as_mut_ptr(),
            )
        };
        rc == 0 && pages.iter().all(|p| p & 1 == 1)
    }
}

impl Drop for Residency {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `map` created; nothing borrows it.
        unsafe { libc::munmap(self.addr.as_ptr(), self.len) };
    }
}

/// How long the partial batch in `bytes` (a `Truncated` scan result) will be once whole: its
/// length field when present (already checked against `max_batch_bytes`), else the bytes up
/// to that field.
fn batch_len_so_far(bytes: &[u8]) -> usize {
    if bytes.len() < LOG_OVERHEAD {
        return LOG_OVERHEAD;
    }
    let length = i32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes"));
    LOG_OVERHEAD + length as usize
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use glommio::io::OpenOptions;

    use super::*;
    use crate::record_batch::assign;
    use crate::storage::recovery::scan::tests::pure_scan;

    /// Batches of 1..=12 records with values of 0..=1500 bytes: many are longer than a 4 KiB
    /// read, so chunk boundaries fall in every part of a batch, headers included.
    fn varied_log(count: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut next = 0i64;
        for i in 0..count {
            let mut b = crate::storage::testutil::build_batch(
                1_000,
                &vec![0; 1 + i % 12],
                (i * 397) % 1501,
                -1,
                -1,
            );
            assign(&mut b, next, 0);
            next += 1 + (i % 12) as i64;
            bytes.extend(b);
        }
        bytes
    }

    async fn direct_scan(
        file: &DmaFile,
        page_cache: Option<&File>,
        range: (u64, u64),
        reads: (usize, usize),
        max: usize,
    ) -> (u64, Option<ScanStop>, Vec<(u64, i64)>) {
        let mut bounds = OffsetBounds {
            next_min: 0,
            last_max: i64::MAX,
        };
        let mut seen = Vec::new();
        let scan = scan_file_direct(file, page_cache, range, reads, max, &mut bounds, |p, h| {
            seen.push((p, h.base_offset))
        })
        .await
        .unwrap();
        (scan.valid_end, scan.stop, seen)
    }

    /// Writes `bytes` and leaves only every other 8 KiB of it in the page cache, so a scan
    /// that may copy cached chunks mixes them with O_DIRECT reads.
    fn write_half_cached(path: &Path, bytes: &[u8]) -> File {
        use std::os::fd::AsRawFd;
        std::fs::write(path, bytes).unwrap();
        let file = File::open(path).unwrap();
        file.sync_all().unwrap(); // clean pages, which DONTNEED drops
        let advise = |at: usize, len: usize, advice| {
            // SAFETY: advice on an open descriptor.
            let rc =
                unsafe { libc::posix_fadvise(file.as_raw_fd(), at as i64, len as i64, advice) };
            assert_eq!(rc, 0);
        };
        // Whole file: DONTNEED skips large folios the range covers only in part.
        advise(0, 0, libc::POSIX_FADV_DONTNEED);
        // No read-ahead on this descriptor: a pread caches just the pages it reads.
        advise(0, 0, libc::POSIX_FADV_RANDOM);
        let mut page = [0u8; 8192];
        for at in (0..bytes.len()).step_by(16384) {
            read_at_most(&file, &mut page, at as u64).unwrap();
        }
        file
    }

    #[test]
    fn direct_scan_matches_the_pure_scan_at_every_chunk_boundary() {
        crate::storage::testutil::run(|| async {
            let valid = varied_log(24);
            // A flipped CRC byte in a batch that straddles a chunk boundary, then garbage.
            let straddling = pure_scan(&valid, 1 << 20)
                .2
                .windows(2)
                .find(|w| w[0].0 / 4096 != (w[1].0 - 1) / 4096 && w[0].0 > 3 * 4096)
                .map(|w| w[0].0 as usize)
                .unwrap();
            let start = pure_scan(&valid, 1 << 20).2[2].0;
            let dir = tempfile::tempdir().unwrap();
            let files = [
                ("valid", valid.clone()),
                ("padded", {
                    let mut b = valid.clone();
                    b.resize(valid.len().next_multiple_of(4096) + 4096, 0);
                    b
                }),
                ("flipped", {
                    let mut b = valid.clone();
                    b[straddling + 4000] ^= 0x40;
                    b.extend_from_slice(&[0xA5; 3000]);
                    b
                }),
            ];
            for (name, bytes) in files {
                let path = dir.path().join(name);
                let cached = write_half_cached(&path, &bytes);
                let file = OpenOptions::new().read(true).dma_open(&path).await.unwrap();
                // Both kinds of chunk really occur.
                glommio::executor().io_stats();
                let whole = direct_scan(
                    &file,
                    Some(&cached),
                    (0, bytes.len() as u64),
                    (4096, 2),
                    1 << 20,
                )
                .await;
                let (direct_reads, _) = glommio::executor().io_stats().all_rings().file_reads();
                let chunks = bytes.len().div_ceil(4096) as u64;
                assert!(
                    direct_reads > 0 && direct_reads < chunks,
                    "{direct_reads} of {chunks}"
                );
                assert_eq!(whole, pure_scan(&bytes, 1 << 20));
                // Torn tails at, just before and just after each 4 KiB boundary (a chunk
                // boundary for every read size below), and a few in between.
                let mut cuts = vec![bytes.len()];
                for boundary in (0..=bytes.len()).step_by(4096) {
                    for delta in [-62i64, -61, -13, -12, -11, -1, 0, 1, 11, 12, 13, 61, 62] {
                        let cut = boundary as i64 + delta;
                        if (0..=bytes.len() as i64).contains(&cut) {
                            cuts.push(cut as usize);
                        }
                    }
                    cuts.push((boundary + 1777).min(bytes.len()));
                }
                for &cut in &cuts {
                    let expected = pure_scan(&bytes[..cut], 1 << 20);
                    for reads in [(4096, 1), (4096, 3), (12288, 2), (1 << 20, 4)] {
                        for page_cache in [None, Some(&cached)] {
                            let range = (0, cut as u64);
                            let got = direct_scan(&file, page_cache, range, reads, 1 << 20).await;
                            let cache = page_cache.is_some();
                            assert_eq!(got, expected, "{name}: cut {cut}, {reads:?}, {cache}");
                        }
                    }
                }
                // A scan from a batch boundary that is not page-aligned (a closed segment's
                // last index entry), with a small max_batch_bytes.
                assert!(!start.is_multiple_of(4096) && start < straddling as u64);
                let mut expected = pure_scan(&bytes[start as usize..], 4000);
                expected.0 += start;
                for b in &mut expected.2 {
                    b.0 += start;
                }
                let mut bounds = OffsetBounds {
                    next_min: 0,
                    last_max: i64::MAX,
                };
                let mut seen = Vec::new();
                let scan = scan_file_direct(
                    &file,
                    Some(&cached),
                    (start, bytes.len() as u64),
                    (4096, 2),
                    4000,
                    &mut bounds,
                    |p, h| seen.push((p, h.base_offset)),
                )
                .await
                .unwrap();
                assert_eq!(
                    (scan.valid_end, scan.stop, seen),
                    expected,
                    "{name} from {start}"
                );
                file.close().await.unwrap();
            }
        });
    }

    #[test]
    fn direct_scan_stops_at_a_short_file() {
        crate::storage::testutil::run(|| async {
            let bytes = varied_log(20);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("x.log");
            let cut = bytes.len() - 100;
            let cached = write_half_cached(&path, &bytes[..cut]);
            let file = OpenOptions::new().read(true).dma_open(&path).await.unwrap();
            // Asked for more than the file holds, as when it shrank after its size was read.
            for page_cache in [None, Some(&cached)] {
                let range = (0, bytes.len() as u64 + 5000);
                let got = direct_scan(&file, page_cache, range, (4096, 3), 1 << 20).await;
                assert_eq!(got, pure_scan(&bytes[..cut], 1 << 20));
                let empty = direct_scan(&file, page_cache, (700, 700), (4096, 3), 1 << 20).await;
                assert_eq!(empty, (700, None, vec![]));
            }
            file.close().await.unwrap();
        });
    }
}
