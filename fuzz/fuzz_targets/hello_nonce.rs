//! The `hello_nonce` target: `pluresdb_fuzz_targets` holds its checks, which
//! `cargo test` also runs briefly (crates/fuzz-targets/tests/short_run.rs).
#![no_main]

use pluresdb_fuzz_targets::{target, CountingAllocator};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

libfuzzer_sys::fuzz_target!(|input: &[u8]| (target("hello_nonce").check)(input));
