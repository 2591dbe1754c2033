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
//!
//! [`tune_system_allocator`] also sets two glibc malloc parameters at start-up, so that the
//! data path's large buffers (request frames of a few hundred KiB, O_DIRECT staging buffers)
//! are recycled instead of mapped and unmapped; see its doc for why and what it costs.

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

/// Allocations below this come from malloc's heaps (glibc's default starts at 128 KiB and
/// only grows as mapped chunks are freed); 32 MiB is the largest value glibc accepts.
pub const MALLOC_MMAP_THRESHOLD_BYTES: usize = 32 << 20;

/// Free memory at the top of a malloc heap is returned to the kernel only above this.
pub const MALLOC_TRIM_THRESHOLD_BYTES: usize = 64 << 20;

/// Free memory a heap keeps when it is trimmed, and the most a thread's arena may have free
/// at the end of its previous heap for glibc to still unmap an emptied heap: at glibc's heap
/// size (64 MiB), a thread's heaps are never unmapped or shrunk.
pub const MALLOC_TOP_PAD_BYTES: usize = 64 << 20;

/// Keeps the data path's large buffers in malloc's heaps: a mapping threshold above any
/// buffer the data path allocates, a trim threshold that keeps a freed buffer's pages, and a
/// top pad that keeps a shard's heaps once a backlog has grown them.
///
/// Why: Produce frames of 200-700 KiB come and go at thousands a second (W3: 3,400 a second at
/// 830k msgs/s). With glibc's defaults each shard's arena kept handing their pages back (the
/// frame above the mapping threshold was unmapped, or the heap top trimmed) and faulting fresh
/// ones in: 1,280 page faults a second in W3 at 830k msgs/s, each unmap also a TLB-shootdown
/// IPI to the other core, which on a VM is an exit. With these two values: 18 faults in 8 s,
/// and the broker's CPU per GB about 5 % lower (docs/benchmarks.md, "Page faults from
/// malloc's defaults").
///
/// The top pad: a shard's arena is a chain of 64 MiB heaps. When the shard catches up after
/// its device held a write for 100-150 ms, it holds a few hundred MiB more than usual (larger
/// Produce frames, larger writes), and its arena grows new heaps. glibc unmaps a heap as soon
/// as it is empty again, whatever the trim threshold, so each backlog faulted its memory in
/// afresh: 40,000-110,000 page faults in a fraction of a second on the shard that is already
/// behind, a fifth of its time while it catches up (W3 at 1.3 M msgs/s, docs/benchmarks.md,
/// "What fills the shard in a spike"). glibc unmaps an emptied heap only when the free space
/// it would leave behind exceeds the top pad, so a pad of a whole heap keeps them.
///
/// Cost: a thread's arena keeps the heaps of its largest backlog, and up to
/// [`MALLOC_TRIM_THRESHOLD_BYTES`] free at the main heap's top, resident (glibc has one arena
/// per thread that allocates, up to 8 per core). `malloc_trim`, which the shards call when
/// their partitions go idle, still gives free pages back. Returns false (and changes nothing)
/// where the C library is not glibc.
pub fn tune_system_allocator() -> bool {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only sets malloc's global parameters; it returns 1 on success.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES as i32) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD_BYTES as i32) == 1
                && libc::mallopt(libc::M_TOP_PAD, MALLOC_TOP_PAD_BYTES as i32) == 1
        }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    /// Page faults this thread has taken so far.
    #[cfg(target_env = "gnu")]
    fn thread_minor_faults() -> i64 {
        // SAFETY: getrusage fills the struct we pass.
        unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut usage), 0);
            usage.ru_minflt
        }
    }

    /// A fresh buffer of `size` bytes with every page touched, as a received frame's.
    #[cfg(target_env = "gnu")]
    fn touched(size: usize) -> Vec<u8> {
        let mut buffer = vec![0u8; size];
        for page in (0..size).step_by(4096) {
            buffer[page] = 1;
        }
        buffer
    }

    /// The broker's pattern of request frames: buffers of 200-704 KiB, each touched whole and
    /// freed a few buffers later, on a thread of its own (its own malloc arena, like a shard).
    /// With glibc's defaults the steady state takes about six page faults per buffer (12,000
    /// for these 2,000); tuned, the freed buffers are reused.
    #[cfg(target_env = "gnu")]
    #[test]
    fn large_buffers_are_recycled_without_page_faults() {
        assert!(super::tune_system_allocator());
        let faults = std::thread::spawn(|| {
            let mut live = std::collections::VecDeque::new();
            let mut before = 0;
            for i in 0..4000usize {
                if i == 2000 {
                    before = thread_minor_faults();
                }
                live.push_back(touched((200 << 10) + (i * 37 % 64) * (8 << 10)));
                if live.len() > 8 {
                    live.pop_front();
                }
            }
            thread_minor_faults() - before
        })
        .join()
        .expect("allocating thread");
        // Other tests share malloc arenas with this thread, so a few faults are possible.
        assert!(
            faults < 500,
            "{faults} page faults for 2,000 recycled buffers"
        );
    }

    /// A shard catching up after a device hold: besides its usual small buffers, 30 buffers of
    /// 5-8 MiB (200 MiB, a few heaps of its arena) live at once, then freed; later a second
    /// backlog of the same size. With only the mapping and trim thresholds set, glibc unmapped
    /// the emptied heaps after the first backlog and the second faulted its ~50,000 pages in
    /// again; with the top pad it reuses them.
    #[cfg(target_env = "gnu")]
    #[test]
    fn a_second_backlog_reuses_the_first_ones_memory() {
        assert!(super::tune_system_allocator());
        let backlog = || -> Vec<Vec<u8>> {
            (0..30usize)
                .map(|i| touched((5 << 20) + (i * 97 % 3072) * 1024))
                .collect()
        };
        let faults = std::thread::spawn(move || {
            let steady: Vec<Vec<u8>> = (0..8usize)
                .map(|i| touched((200 << 10) + i * 4096))
                .collect();
            drop(backlog());
            // Small buffers come and go between the backlogs, as Produce frames do.
            let mut live = std::collections::VecDeque::new();
            for i in 0..2000usize {
                live.push_back(touched((64 << 10) + (i * 37 % 64) * 4096));
                if live.len() > 16 {
                    live.pop_front();
                }
            }
            let before = thread_minor_faults();
            drop(backlog());
            drop(steady);
            thread_minor_faults() - before
        })
        .join()
        .expect("allocating thread");
        assert!(
            faults < 5_000,
            "{faults} page faults for a backlog whose memory the arena had before"
        );
    }

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
