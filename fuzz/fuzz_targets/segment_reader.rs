//! Feeds arbitrary bytes to the segment scanner that recovery runs over a log's tail. The
//! valid prefix it reports must be made of whole batches that each validate on their own.
#![no_main]

use libfuzzer_sys::fuzz_target;

const MAX_BATCH_BYTES: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let scan = broker::storage::scan_valid_prefix(data, MAX_BATCH_BYTES);
    assert!(scan.valid_bytes <= data.len());
    let mut position = 0;
    for header in &scan.batches {
        let end = position + header.total_len();
        assert!(end <= scan.valid_bytes);
        broker::record_batch::validate(&data[position..end], MAX_BATCH_BYTES)
            .expect("the scanner only keeps valid batches");
        position = end;
    }
    assert_eq!(position, scan.valid_bytes);
});
