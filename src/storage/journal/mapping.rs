//! A file mapped into memory, unmapped when dropped: the journal's ring (shared, read-write,
//! written only by its shard through `&mut`) and the previous runs' files at recovery (private,
//! read-only, read from `Bytes` slices).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

#[derive(Debug)]
pub(super) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a mapping is plain memory. A writable one is written only through `bytes_mut`, which
// takes `&mut self` (its one owner, the shard); a read-only one is never written. Moving one to
// another thread (to unmap it there) or reading a read-only one from several is sound.
unsafe impl Send for Mapping {}
// SAFETY: as above: shared references only read.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// `len` bytes of `file` from its start, shared and writable (the journal's ring: the
    /// kernel keeps what is stored in it if the process dies).
    pub(super) fn shared_writable(file: &File, len: usize) -> io::Result<Mapping> {
        Self::map(
            file,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
    }

    /// `len` bytes of `file` from its start, read-only (a previous run's journal file).
    pub(super) fn read_only(file: &File, len: usize) -> io::Result<Mapping> {
        Self::map(file, len, libc::PROT_READ, libc::MAP_PRIVATE)
    }

    fn map(file: &File, len: usize, prot: libc::c_int, flags: libc::c_int) -> io::Result<Mapping> {
        // SAFETY: a new mapping of a file we opened (with the access `prot` needs), sized to
        // at least `len` by the caller.
        let ptr =
            unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, file.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { ptr, len })
    }

    pub(super) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The mapped bytes, to store into (a writable mapping only).
    pub(super) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live mapping of `len` bytes until Drop; `&mut self` makes this the
        // only reference through this owner.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` is a live mapping of `len` readable bytes until Drop.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping `map` created, with its length; nothing borrowed from it outlives
        // its owner (`Bytes::from_owner` drops the owner after the last slice).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
