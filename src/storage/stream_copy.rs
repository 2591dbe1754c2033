//! Copying into an O_DIRECT write buffer with non-temporal (streaming) stores.
//!
//! Every byte a producer sends is copied once in user space, from its request buffer into the
//! aligned buffer of the segment write (`staging.rs`). glibc's `memcpy` copies pieces of this
//! size with `rep movsb`, and on this project's EPYC VMs that took 6 % of a shard's CPU in one
//! run and 35 % in the next for the same bytes (`perf annotate`: 94 % of the samples on that
//! one instruction; `rep movsb` on recent AMD cores is known to be slow for some relative
//! alignments of source and destination, and a batch's are arbitrary). This copy uses vector
//! loads and streaming stores instead, which also skip reading each destination line in first:
//! nothing reads the buffer again but the device, by DMA. A standalone copy of 128-700 KiB
//! pieces: `memcpy` 15-16 GB/s, this 21-23 GB/s; in the shard, 4.8-5.4 % of its samples in
//! each of three profiled runs (docs/benchmarks.md, "The client on a CPU of its own, and two
//! copies that cost more than their bytes").
//!
//! Pieces under [`STREAMING_MIN_BYTES`] are left to `memcpy`: they are under or near its
//! `rep movsb` range, and each streaming copy ends with a fence. The floor was not tuned.

/// Pieces at least this long are copied with streaming stores.
const STREAMING_MIN_BYTES: usize = 16 * 1024;

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
