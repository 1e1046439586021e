//! How a node process asks the kernel for memory.

/// Keeps this process off transparent huge pages, with which the kernel
/// faults memory in 2 MiB at a time: a node with 250 idle peers held 57-66
/// KiB per peer that way and 45 KiB without, and replication and catch-up
/// were no slower (benches/replication.rs). Call it first thing in `main`.
/// What was allocated before `main` is not covered: mimalloc is built with
/// its `no_thp` feature so that it does not ask for huge pages on its arenas
/// (the workspace's Cargo.toml), which a kernel in `madvise` mode (Debian's
/// default) would otherwise grant for the first arena pages.
pub fn avoid_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and changes only how
    // the kernel backs this process's memory; a failure (old kernel) leaves
    // the default, which is harmless.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// What the writer and prepare threads call as they go idle; see
/// [`set_idle_hook`].
static IDLE_HOOK: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets what the runtime's writer thread calls each time it goes idle
/// (its async runtime parks), and the thread that prepares peers' messages
/// each time it runs out of them, once per process: the node gives back
/// there what those threads freed during a burst (commit groups, peers'
/// batches), which its allocator keeps with the thread that freed it.
pub fn set_idle_hook(hook: fn()) {
    let _ = IDLE_HOOK.set(hook);
    // The store's applier thread too (see `pluresdb_store_redb::set_idle_hook`).
    pluresdb_store_redb::set_idle_hook(hook);
}

/// Calls the hook of [`set_idle_hook`], if one is set.
pub(crate) fn idle() {
    if let Some(hook) = IDLE_HOOK.get() {
        hook();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Runtime, RuntimeOptions, WriteKind};
    use pluresdb_core::Database;
    use pluresdb_store_redb::RedbStore;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::time::{Duration, Instant};

    static IDLE_CALLS: AtomicUsize = AtomicUsize::new(0);

    fn count_idle() {
        IDLE_CALLS.fetch_add(1, SeqCst);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_writer_calls_the_idle_hook_after_its_work() {
        set_idle_hook(count_idle);
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(RedbStore::open(dir.path()).unwrap(), "a").unwrap();
        let runtime = Runtime::start(db, RuntimeOptions::default()).unwrap();
        let handle = runtime.handle();
        for i in 0..10 {
            handle.write(WriteKind::Put, format!("n{i}"), serde_json::json!({"i": i})).await.unwrap();
        }
        // Counted after the writes were answered: the writer parks after them.
        let answered = IDLE_CALLS.load(SeqCst);
        handle.write(WriteKind::Put, "last".into(), serde_json::json!({})).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while IDLE_CALLS.load(SeqCst) <= answered {
            assert!(Instant::now() < deadline, "the writer never called the idle hook after a write");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        runtime.shutdown().await;
    }
}
