//! The process's global allocator: the system allocator, except that very large requests are
//! served by `mmap(MAP_NORESERVE)`.
//!
//! Why: the `kafka-protocol` decoders reserve `Vec` capacity from array counts read off the
//! wire before checking that the bytes exist. A hostile count (say 2^31 topics in a Metadata
//! request) would ask for hundreds of GiB; the system allocator refuses, and Rust aborts the
//! process on allocation failure. Reserving address space with MAP_NORESERVE costs no memory
//! (pages are only touched as elements are actually decoded, which the frame length bounds),
//! so the decoder runs into the end of the frame and returns an error instead. Frames
//! themselves are bounded by `socket.request.max.bytes` before any of this runs.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at or above this size are mapped rather than taken from malloc.
const HUGE_ALLOCATION_BYTES: usize = 1 << 30;
const PAGE_BYTES: usize = 4096;

pub struct GuardedAllocator;

fn is_huge(size: usize, align: usize) -> bool {
    size >= HUGE_ALLOCATION_BYTES && align <= PAGE_BYTES
}

unsafe fn map(size: usize) -> *mut u8 {
    // SAFETY: anonymous private mapping; no file, no fixed address.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

// SAFETY: every pointer is released by the same mechanism that produced it, decided by the
// layout size, which Rust passes back unchanged to dealloc/realloc.
unsafe impl GlobalAlloc for GuardedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_huge(layout.size(), layout.align()) {
            unsafe { map(layout.size()) }
        } else {
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_huge(layout.size(), layout.align()) {
            unsafe { map(layout.size()) } // anonymous mappings are zero-filled
        } else {
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_huge(layout.size(), layout.align()) {
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        if !is_huge(layout.size(), align) && !is_huge(new_size, align) {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: align came from a valid layout and new_size is non-zero per the trait contract.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, align) };
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn absurd_reservations_do_not_abort() {
        // 256 GiB of address space, far beyond the machine's memory.
        let v: Vec<u64> = Vec::with_capacity(32 << 30);
        assert!(v.capacity() >= 32 << 30);
        let mut small = vec![1u8; 10];
        small.reserve(2 << 30);
        small.push(2);
        assert_eq!(&small[..2], &[1, 1]);
        small.shrink_to_fit();
        assert_eq!(small.len(), 11);
    }
}
