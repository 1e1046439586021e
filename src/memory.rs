//! How the node's allocator (mimalloc) gives freed memory back.

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
    // SAFETY: collects this thread's heap and purges the arenas' free
    // ranges; safe on any thread at any time.
    unsafe { mi_collect(true) }
}

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

    #[test]
    fn a_thread_that_goes_idle_gives_back_what_it_freed() {
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
}
