//! Feeds arbitrary bytes to the reader of a previous run's journal file, which start-up trusts
//! for acknowledged batches: the fuzzer's bytes are the two header slots and the ring. Every
//! entry it returns must be a batch that validates on its own; nothing may panic.
#![no_main]

use broker::storage::journal::{parse, FILE_HEADER_BYTES, FILE_MAGIC, SLOT_OFFSETS};
use libfuzzer_sys::fuzz_target;

const MAX_BATCH_BYTES: usize = 1 << 20;
const SLOT_BYTES: usize = 24;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 * SLOT_BYTES {
        return;
    }
    let (slots, ring) = data.split_at(2 * SLOT_BYTES);
    let ring = &ring[..ring.len() / 8 * 8];
    let header = FILE_HEADER_BYTES as usize;
    let mut file = vec![0u8; header + ring.len()];
    file[0..8].copy_from_slice(&FILE_MAGIC);
    file[8..16].copy_from_slice(&(ring.len() as u64).to_le_bytes());
    for (i, &at) in SLOT_OFFSETS.iter().enumerate() {
        file[at..at + SLOT_BYTES].copy_from_slice(&slots[i * SLOT_BYTES..(i + 1) * SLOT_BYTES]);
    }
    file[header..].copy_from_slice(ring);
    if let Ok(entries) = parse(&file, MAX_BATCH_BYTES) {
        for (name, batch) in entries {
            assert!(name.len() <= 512);
            broker::record_batch::validate(&batch, MAX_BATCH_BYTES)
                .expect("the journal reader only returns valid batches");
        }
    }
});
