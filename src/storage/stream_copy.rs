//! Copying into an O_DIRECT write buffer with non-temporal (streaming) stores.
//!
//! Every byte a producer sends is copied once in user space, from its request buffer into the
//! aligned buffer of the segment write (`staging.rs`). The CPU reads that buffer never again:
//! the device takes it by DMA. An ordinary copy first reads each destination cache line in
//! (read-for-ownership) and leaves it in the cache, pushing out lines the shard will use;
//! streaming stores write whole lines straight to memory. Measured on this project's 2-vCPU
//! EPYC VMs: a plain copy of 128 KiB-700 KiB pieces ran at 15-16 GB/s, the streaming copy at
//! 21-23 GB/s (docs/benchmarks.md, "The staging copy").
//!
//! Below [`STREAMING_MIN_BYTES`] the plain copy is used: a small piece fits the cache anyway,
//! and the fence that ends a streaming copy costs more than it saves.

/// Pieces at least this long are copied with streaming stores.
pub(crate) const STREAMING_MIN_BYTES: usize = 16 * 1024;

/// Copies `src` to `dst` (the same length).
pub(crate) fn copy(dst: &mut [u8], src: &[u8]) {
    assert_eq!(
        dst.len(),
        src.len(),
        "copy between slices of different lengths"
    );
    #[cfg(target_arch = "x86_64")]
    if dst.len() >= STREAMING_MIN_BYTES && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        unsafe { copy_streaming_avx2(dst, src) };
        return;
    }
    dst.copy_from_slice(src);
}

/// Plain copies up to the first 32-byte aligned destination address, streaming stores of
/// 128 bytes at a time from there, a plain copy of what is left, then a store fence: the
/// streaming stores are weakly ordered, and the write that follows hands this memory to the
/// kernel and the device.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn copy_streaming_avx2(dst: &mut [u8], src: &[u8]) {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_stream_si256, _mm_sfence};
    const STEP: usize = 128;
    let len = dst.len();
    let head = dst.as_ptr().align_offset(32).min(len);
    dst[..head].copy_from_slice(&src[..head]);
    let body_end = head + (len - head) / STEP * STEP;
    let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
    let mut at = head;
    while at < body_end {
        // SAFETY: `at + STEP <= body_end <= len`, both slices are `len` long, and `d + at` is
        // 32-byte aligned (`head` aligned it and STEP is a multiple of 32), as streaming
        // stores require; loads may be unaligned.
        unsafe {
            let a = _mm256_loadu_si256(s.add(at).cast::<__m256i>());
            let b = _mm256_loadu_si256(s.add(at + 32).cast::<__m256i>());
            let c = _mm256_loadu_si256(s.add(at + 64).cast::<__m256i>());
            let e = _mm256_loadu_si256(s.add(at + 96).cast::<__m256i>());
            _mm256_stream_si256(d.add(at).cast::<__m256i>(), a);
            _mm256_stream_si256(d.add(at + 32).cast::<__m256i>(), b);
            _mm256_stream_si256(d.add(at + 64).cast::<__m256i>(), c);
            _mm256_stream_si256(d.add(at + 96).cast::<__m256i>(), e);
        }
        at += STEP;
    }
    dst[body_end..].copy_from_slice(&src[body_end..]);
    _mm_sfence();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_every_length_and_alignment_exactly() {
        let source: Vec<u8> = (0..STREAMING_MIN_BYTES * 3)
            .map(|i| (i * 131 % 251) as u8 + 1)
            .collect();
        let mut target = vec![0u8; source.len() + 64];
        for dst_offset in [0, 1, 5, 31, 32, 33] {
            for src_offset in [0, 3, 32] {
                for len in [
                    0,
                    1,
                    127,
                    STREAMING_MIN_BYTES - 1,
                    STREAMING_MIN_BYTES,
                    STREAMING_MIN_BYTES + 129,
                    2 * STREAMING_MIN_BYTES + 31,
                ] {
                    target.fill(0);
                    copy(
                        &mut target[dst_offset..dst_offset + len],
                        &source[src_offset..src_offset + len],
                    );
                    assert_eq!(
                        target[dst_offset..dst_offset + len],
                        source[src_offset..src_offset + len],
                        "dst +{dst_offset}, src +{src_offset}, {len} bytes"
                    );
                    assert!(
                        target[..dst_offset].iter().all(|&b| b == 0)
                            && target[dst_offset + len..].iter().all(|&b| b == 0),
                        "bytes outside the target range changed: dst +{dst_offset}, {len} bytes"
                    );
                }
            }
        }
    }
}
