//! How a node process asks the kernel for memory.

/// Keeps this process off transparent huge pages. mimalloc (the node's
/// allocator) asks for them on its arenas, and the kernel then faults memory
/// in 2 MiB at a time: a node with 250 idle peers held 57-66 KiB per peer
/// that way and 45 KiB without, and replication and catch-up were no slower
/// (benches/replication.rs). Call it first thing in `main`.
pub fn avoid_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and changes only how
    // the kernel backs this process's memory; a failure (old kernel) leaves
    // the default, which is harmless.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
