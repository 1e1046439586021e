//! Measuring what a decoder allocates: [`CountingAllocator`] (install it as
//! the `#[global_allocator]` of a fuzz target or test binary) and
//! [`measure`], which reports the largest single allocation and the peak of
//! live bytes while a closure runs on the current thread.
//!
//! The bound a decoder must stay under is [`allocation_bound`]: a length
//! read from the input is only a claim, so memory may follow the bytes that
//! actually arrived, never the counts they announce.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting per thread. Counting is per thread so
/// that tests running in parallel do not see each other's allocations.
pub struct CountingAllocator;

thread_local! {
    // Const-initialized and without destructors, so reading them inside the
    // allocator never allocates or registers anything.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

fn record_allocation(size: usize) {
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
    let _ = COUNT.try_with(|count| count.set(count.get() + 1));
    let _ = LIVE.try_with(|live| {
        let now = live.get() + size as isize;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn record_free(size: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get() - size as isize));
}

// SAFETY: every call is forwarded to `System` unchanged; the counters are
// thread-local cells that never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record_allocation(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record_allocation(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record_free(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record_free(layout.size());
        record_allocation(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// What [`measure`] saw.
#[derive(Debug)]
pub struct Measured<T> {
    /// What the closure returned.
    pub value: T,
    /// The largest single allocation (or reallocation's new size), bytes.
    pub largest_allocation: usize,
    /// The most bytes live at once, counted from the start of the closure.
    pub peak_live: usize,
    /// How many allocations the closure made.
    pub allocations: u64,
}

/// Runs `f` and reports what it allocated on this thread. Panics if
/// [`CountingAllocator`] is not the global allocator: a bound that is never
/// measured would be a check that cannot fail.
pub fn measure<T>(f: impl FnOnce() -> T) -> Measured<T> {
    LARGEST.with(|c| c.set(0));
    LIVE.with(|c| c.set(0));
    PEAK.with(|c| c.set(0));
    COUNT.with(|c| c.set(0));
    let value = f();
    let (largest_allocation, peak_live, allocations) =
        (LARGEST.with(Cell::get), PEAK.with(Cell::get).max(0) as usize, COUNT.with(Cell::get));
    let before = COUNT.with(Cell::get);
    drop(std::hint::black_box(vec![0u8; 1]));
    assert!(
        COUNT.with(Cell::get) > before,
        "allocations are not being counted: install pluresdb_fuzz_targets::CountingAllocator as the #[global_allocator]"
    );
    Measured { value, largest_allocation, peak_live, allocations }
}

/// The fixed part of [`allocation_bound`]: small buffers and tables that do
/// not depend on the input (a B-tree node is 0.6 KiB; a decoder reserves up
/// to `pluresdb_core::cbor::MAX_RESERVE_BYTES`, 64 KiB, on a claim).
pub const ALLOCATION_FLOOR: usize = 64 * 1024 + 4096;

/// Bytes of one allocation that one input byte can justify: the densest
/// input, an array of one-byte items (`[0, 0, 0, ...]`), decodes to one
/// `serde_json::Value` (32 bytes) per byte, and a vector that grows by
/// doubling holds up to twice what it has. A length that merely claims
/// items gets [`ALLOCATION_FLOOR`] at most.
pub const BYTES_PER_INPUT_BYTE: usize = 2 * std::mem::size_of::<serde_json::Value>();

/// The largest single allocation decoding `input_len` bytes may make.
pub fn allocation_bound(input_len: usize) -> usize {
    ALLOCATION_FLOOR.max(input_len.saturating_mul(BYTES_PER_INPUT_BYTE))
}

/// The fixed part of [`serde_allocation_bound`]: serde reserves up to
/// 1 MiB for the items a length claims (`size_hint::cautious`), which the
/// CBOR decoders' serde fallback (ciborium) passes on unchecked. It is
/// freed as soon as the claimed items fail to arrive.
pub const SERDE_ALLOCATION_FLOOR: usize = 1024 * 1024 + ALLOCATION_FLOOR;

/// The largest single allocation a decoder that may fall back to serde
/// may make decoding `input_len` bytes.
pub fn serde_allocation_bound(input_len: usize) -> usize {
    SERDE_ALLOCATION_FLOOR.max(allocation_bound(input_len))
}

/// Runs `decode` over `input` and panics if one of its allocations is over
/// [`allocation_bound`] of the input's length. Returns what it decoded.
pub fn within_bound<T>(what: &str, input: &[u8], decode: impl FnOnce() -> T) -> T {
    checked(what, input.len(), allocation_bound(input.len()), decode)
}

/// [`within_bound`] for decoders that fall back to serde, with
/// [`serde_allocation_bound`].
pub fn within_serde_bound<T>(what: &str, input: &[u8], decode: impl FnOnce() -> T) -> T {
    checked(what, input.len(), serde_allocation_bound(input.len()), decode)
}

fn checked<T>(what: &str, input_len: usize, bound: usize, decode: impl FnOnce() -> T) -> T {
    let measured = measure(decode);
    assert!(
        measured.largest_allocation <= bound,
        "{what}: one allocation of {} bytes decoding {input_len} input bytes (bound {bound})",
        measured.largest_allocation,
    );
    measured.value
}
