//! The node's allocator (mimalloc, and mappings of their own for large
//! blocks), and how it gives freed memory back.

use std::os::raw::{c_int, c_long};

/// mimalloc's `mi_option_purge_delay` (position 15 of `mi_option_e` in
/// mimalloc v3's `mimalloc.h`, which the `mimalloc` crate builds): how long
/// memory freed in whole pages stays committed before it is returned to
/// the kernel.
const MI_OPTION_PURGE_DELAY: c_int = 15;

/// The node's purge delay, in milliseconds. mimalloc v3 waits 1 s and
/// purges only when later allocations look, so the memory of a burst
/// (import bodies, sync batches, commit groups) stayed resident in a node
/// that went quiet: 6-15 MiB of a node's RSS after syncing 50,000 records
/// (benches/two_process.rs). 100 ms returns it (10 ms returned no more),
/// with no change in import or catch-up time that the bench could tell
/// from noise.
pub const PURGE_DELAY_MS: c_long = 100;

/// How often at most a thread that goes idle gives back what it freed.
const COLLECT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

extern "C" {
    fn mi_option_set(option: c_int, value: c_long);
    fn mi_collect(force: bool);
    #[cfg(test)]
    fn mi_option_get(option: c_int) -> c_long;
}

/// Sets the purge delay to [`PURGE_DELAY_MS`] unless `MIMALLOC_PURGE_DELAY`
/// says otherwise. Call it first thing in `main`.
pub fn return_freed_memory_sooner() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: mi_option_set takes plain integers; mimalloc reads the
    // option each time it schedules a purge.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) }
}

/// Gives back to the kernel what this thread freed, and what the arenas
/// hold free, at most once every [`COLLECT_EVERY`] on each thread. For the
/// async runtime's workers, called as they go idle (`on_thread_park`):
/// mimalloc keeps a thread's emptied pages with that thread until it
/// allocates or collects again, so a node that went quiet after a burst (an
/// import, a catch-up) kept what the burst freed: 9-10 MiB after 50,000
/// records, which its next requests gave back. Busy workers rarely park,
/// so a burst pays for at most one collection a second per worker.
pub fn collect_when_idle() {
    thread_local! {
        static LAST: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
    }
    let now = std::time::Instant::now();
    if LAST.get().is_some_and(|last| now.duration_since(last) < COLLECT_EVERY) {
        return;
    }
    LAST.set(Some(now));
    #[cfg(unix)]
    mapped::unmap_kept();
    // SAFETY: collects this thread's heap and purges the arenas' free
    // ranges; safe on any thread at any time.
    unsafe { mi_collect(true) }
}

/// Large blocks: mapped for themselves ([`NodeAllocator`]).
#[cfg(unix)]
mod mapped {
    /// Blocks of at least this many bytes are not mimalloc's (see
    /// [`NodeAllocator`]).
    const MAP_AT: usize = 128 << 10;

    /// The size of the smallest mapped block, as a shift: `MAP_AT` is a power
    /// of two.
    const CLASS_SHIFT: u32 = MAP_AT.trailing_zeros();

    /// Mapped blocks are rounded up to a power of two from `MAP_AT` (128 KiB)
    /// to 32 MiB, so that a freed one fits the next request of about its size;
    /// larger ones are mapped to their own size and never kept.
    const CLASSES: usize = 9;

    /// Freed mapped blocks kept for reuse: at most this many bytes in all...
    const KEEP_BYTES: usize = 8 << 20;

    /// ... and this many of each size.
    const KEEP_EACH: usize = 8;

    /// Freed mapped blocks kept for reuse, by size class.
    struct Kept {
        blocks: [[usize; KEEP_EACH]; CLASSES],
        counts: [usize; CLASSES],
        bytes: usize,
    }

    static KEPT: std::sync::Mutex<Kept> = std::sync::Mutex::new(Kept { blocks: [[0; KEEP_EACH]; CLASSES], counts: [0; CLASSES], bytes: 0 });

    fn kept() -> std::sync::MutexGuard<'static, Kept> {
        // Nothing panics while holding the lock; a poisoned one still holds
        // consistent counts.
        KEPT.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a block of this layout is mapped rather than mimalloc's. Called
    /// with the same layout on allocation and on release, so both agree.
    #[inline]
    fn is_mapped(size: usize, align: usize) -> bool {
        size >= MAP_AT && align <= 4096
    }

    /// The size class of a mapped block, or `None` for one mapped to its own size.
    #[inline]
    fn class_of(size: usize) -> Option<usize> {
        let shift = size.checked_next_power_of_two()?.trailing_zeros().max(CLASS_SHIFT);
        let class = (shift - CLASS_SHIFT) as usize;
        (class < CLASSES).then_some(class)
    }

    /// The length a mapped block of `size` bytes is mapped with.
    #[inline]
    fn mapped_len(size: usize) -> usize {
        class_of(size).map_or(size, |class| 1 << (class as u32 + CLASS_SHIFT))
    }

    /// A fresh anonymous mapping of `len` bytes (zeroed), or null.
    fn map(len: usize) -> *mut u8 {
        // SAFETY: a new private anonymous mapping: no address hint, no file.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        if p == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            p.cast()
        }
    }

    /// A kept block for `size` bytes, if there is one; it holds what its last
    /// owner left in it.
    fn take_kept(size: usize) -> Option<*mut u8> {
        let class = class_of(size)?;
        let mut kept = kept();
        let n = kept.counts[class].checked_sub(1)?;
        kept.counts[class] = n;
        kept.bytes -= 1 << (class as u32 + CLASS_SHIFT);
        Some(kept.blocks[class][n] as *mut u8)
    }

    /// A block for `size` bytes: a kept one (cleared if `zeroed`) or a new mapping.
    fn map_block(size: usize, zeroed: bool) -> *mut u8 {
        match take_kept(size) {
            Some(p) => {
                if zeroed {
                    // SAFETY: the block has at least `size` bytes, now ours alone.
                    unsafe { std::ptr::write_bytes(p, 0, size) };
                }
                p
            }
            None => map(mapped_len(size)),
        }
    }

    /// Keeps a freed mapped block for reuse if there is room, or unmaps it.
    ///
    /// # Safety
    /// `p` is a block of `size` bytes from [`map_block`], no longer used.
    unsafe fn unmap_block(p: *mut u8, size: usize) {
        if let Some(class) = class_of(size) {
            let len = 1usize << (class as u32 + CLASS_SHIFT);
            let mut kept = kept();
            let n = kept.counts[class];
            if n < KEEP_EACH && kept.bytes + len <= KEEP_BYTES {
                kept.blocks[class][n] = p as usize;
                kept.counts[class] = n + 1;
                kept.bytes += len;
                return;
            }
        }
        // SAFETY: mapped with this length (the caller's promise), and unused.
        unsafe { libc::munmap(p.cast(), mapped_len(size)) };
    }

    /// Unmaps every kept block.
    pub(super) fn unmap_kept() {
        let mut blocks = [[0usize; KEEP_EACH]; CLASSES];
        let mut counts = [0usize; CLASSES];
        {
            let mut kept = kept();
            std::mem::swap(&mut blocks, &mut kept.blocks);
            std::mem::swap(&mut counts, &mut kept.counts);
            kept.bytes = 0;
        }
        for (class, (blocks, &count)) in blocks.iter().zip(&counts).enumerate() {
            for &p in &blocks[..count] {
                // SAFETY: kept blocks are mapped with their class's length and unused.
                unsafe { libc::munmap(p as *mut libc::c_void, 1 << (class as u32 + CLASS_SHIFT)) };
            }
        }
    }

    /// The node's allocator: mimalloc for blocks under 128 KiB, and a mapping
    /// of its own for each larger block, which goes back to the kernel when it
    /// is freed, but for at most 8 MiB of them kept for reuse (until a thread
    /// next goes idle, [`collect_when_idle`](super::collect_when_idle)).
    ///
    /// mimalloc placed such blocks (a request body, a batch's encoded
    /// operations, a commit's log record: 128 KiB to a few MiB, several per
    /// batch) in fresh arena pages and purged the freed ones only after its
    /// purge delay, so a node in a burst held tens of MiB it had freed: node A
    /// 53.8-59.2 MiB and B 51.5-54.0 at the moment B held 50,000 records, against
    /// 35.0-37.0 and 37.9-41.9 with this allocator (benches/two_process.rs,
    /// alternated, load 5-5.7). Unmapping each at once instead cost ~25% more
    /// CPU per record (page faults on every new block); the blocks kept for
    /// reuse take that back (CPU per record and per caught-up operation within
    /// the same runs' noise).
    pub struct NodeAllocator;

    // SAFETY: mimalloc serves the blocks it is given; mapped blocks are told
    // apart by their layout, which the caller passes unchanged to `dealloc` and
    // `realloc`, are page-aligned (so any alignment up to 4096 holds) and at
    // least as long as asked (rounded up to their class).
    unsafe impl std::alloc::GlobalAlloc for NodeAllocator {
        #[inline]
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            if is_mapped(layout.size(), layout.align()) {
                map_block(layout.size(), false)
            } else {
                // SAFETY: the caller's layout, passed on.
                unsafe { mimalloc::MiMalloc.alloc(layout) }
            }
        }

        #[inline]
        unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
            if is_mapped(layout.size(), layout.align()) {
                map_block(layout.size(), true)
            } else {
                // SAFETY: the caller's layout, passed on.
                unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
            }
        }

        #[inline]
        unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
            if is_mapped(layout.size(), layout.align()) {
                // SAFETY: allocated with this layout, so mapped by `map_block`.
                unsafe { unmap_block(ptr, layout.size()) }
            } else {
                // SAFETY: allocated with this layout, so by mimalloc.
                unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
            }
        }

        #[inline]
        unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
            let (was, will) = (is_mapped(layout.size(), layout.align()), is_mapped(new_size, layout.align()));
            if !was && !will {
                // SAFETY: a mimalloc block and the caller's new size, passed on.
                return unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
            }
            if was && will && mapped_len(layout.size()) == mapped_len(new_size) {
                // The block's class holds the new size too.
                return ptr;
            }
            // SAFETY: the caller guarantees that the new size is valid for
            // this alignment.
            let new_layout = unsafe { std::alloc::Layout::from_size_align_unchecked(new_size, layout.align()) };
            // SAFETY: a valid, non-zero layout (new_size > 0 by the caller).
            let new = unsafe { self.alloc(new_layout) };
            if !new.is_null() {
                // SAFETY: both blocks hold at least the bytes copied and are
                // distinct; the old one is ours to free.
                unsafe {
                    std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
            }
            new
        }
    }
}

#[cfg(unix)]
pub use mapped::NodeAllocator;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_is_set_on_mimallocs_purge_delay_option() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            eprintln!("MIMALLOC_PURGE_DELAY is set: the node keeps it, nothing to check");
            return;
        }
        // SAFETY: reads an option by its number (plain integers).
        let before = unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) };
        // mimalloc v3's default for purge_delay: the number names that option.
        assert_eq!(before, 1_000, "option {MI_OPTION_PURGE_DELAY} is not mimalloc's purge_delay (or its default changed)");
        return_freed_memory_sooner();
        assert_eq!(unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }, PURGE_DELAY_MS);
    }

    /// The process's resident set, in bytes.
    fn resident() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    /// The tests that read the process's resident set, one at a time.
    static RESIDENT_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn a_thread_that_goes_idle_gives_back_what_it_freed() {
        let _one = RESIDENT_TESTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        std::thread::spawn(|| {
            let before = resident();
            let mut burst = vec![1u8; 64 << 20];
            for page in burst.chunks_mut(4096) {
                page[0] = 2;
            }
            assert!(resident() >= before + (56 << 20), "the burst is resident");
            let touched = resident();
            drop(std::hint::black_box(burst));
            collect_when_idle();
            let after = resident();
            assert!(after + (48 << 20) <= touched, "64 MiB freed, {} of {} MiB still resident", after >> 20, touched >> 20);
        })
        .join()
        .unwrap();
    }

    #[cfg(unix)]
    fn layout(size: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(size, 8).unwrap()
    }

    #[cfg(unix)]
    #[test]
    fn large_blocks_go_back_when_freed_but_a_few_kept_until_idle() {
        use std::alloc::GlobalAlloc;
        let _one = RESIDENT_TESTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // On a thread of its own, which has not collected yet.
        std::thread::spawn(|| {
            let before = resident();
            let blocks: Vec<*mut u8> = (0..32)
                .map(|_| {
                    // SAFETY: a valid layout; the block is written within its size.
                    let p = unsafe { NodeAllocator.alloc(layout(1 << 20)) };
                    assert!(!p.is_null());
                    for page in 0..256 {
                        unsafe { *p.add(page * 4096) = 1 };
                    }
                    p
                })
                .collect();
            let touched = resident();
            assert!(touched >= before + (28 << 20), "32 MiB of blocks are resident");
            for p in blocks {
                // SAFETY: allocated above with this layout.
                unsafe { NodeAllocator.dealloc(p, layout(1 << 20)) };
            }
            let freed = resident();
            // At most KEEP_BYTES (8 MiB) stay mapped for reuse; the rest is
            // unmapped at once, without waiting for a purge.
            assert!(freed + (20 << 20) <= touched, "32 MiB freed, {} of {} MiB still resident", freed >> 20, touched >> 20);
            collect_when_idle();
            let idle = resident();
            assert!(idle + (28 << 20) <= touched, "idle, {} of {} MiB still resident", idle >> 20, touched >> 20);
        })
        .join()
        .unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn large_blocks_keep_their_bytes_when_resized_and_are_cleared_when_asked() {
        use std::alloc::GlobalAlloc;
        let byte = |i: usize| (i % 251) as u8;
        let mut size = 64 << 10;
        // SAFETY: valid layouts throughout; each block is read and written
        // within its size and freed with the layout it has.
        unsafe {
            let mut p = NodeAllocator.alloc(layout(size));
            assert!(!p.is_null());
            (0..size).for_each(|i| *p.add(i) = byte(i));
            // From mimalloc's sizes to mapped ones, across classes, within
            // one class, smaller, and back to mimalloc's.
            for new in [100 << 10, 300 << 10, 1_500_000, 1_600_000, 700_000, 50 << 10] {
                p = NodeAllocator.realloc(p, layout(size), new);
                assert!(!p.is_null());
                let kept = size.min(new);
                assert!((0..kept).all(|i| *p.add(i) == byte(i)), "{size} -> {new} bytes lost what the block held");
                (kept..new).for_each(|i| *p.add(i) = byte(i));
                size = new;
            }
            NodeAllocator.dealloc(p, layout(size));
            // A freed block is kept with what it held: zeroed allocation
            // clears it.
            let dirty = NodeAllocator.alloc(layout(256 << 10));
            std::ptr::write_bytes(dirty, 0xab, 256 << 10);
            NodeAllocator.dealloc(dirty, layout(256 << 10));
            let zeroed = NodeAllocator.alloc_zeroed(layout(256 << 10));
            assert!((0..256 << 10).all(|i| *zeroed.add(i) == 0), "a block asked zeroed holds old bytes");
            NodeAllocator.dealloc(zeroed, layout(256 << 10));
        }
    }
}
