//! Feeds arbitrary bytes to the request decoder the broker runs on every frame it reads.
//! It must return a value or an error, never panic, abort or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOCATOR: broker::alloc::GuardedAllocator = broker::alloc::GuardedAllocator;

fuzz_target!(|data: &[u8]| {
    let _ = broker::protocol::decode_request(bytes::Bytes::copy_from_slice(data));
});
