//! Counters a running node keeps for its metrics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Monotonic counters (and a few gauges), updated without locks, and the
/// store's health.
#[derive(Debug, Default)]
pub struct Stats {
    /// Local writes committed.
    pub local_ops: AtomicU64,
    /// Operations from peers applied.
    pub remote_ops: AtomicU64,
    /// Transactions committed by the writer.
    pub commits: AtomicU64,
    /// Commits that failed (their writes were answered with the error).
    pub failed_commits: AtomicU64,
    /// Microseconds the writer spent committing local writes (merge, encode,
    /// sign, the durable transaction), summed over `commits`.
    pub commit_us: AtomicU64,
    /// Peer messages that applied operations, and the microseconds the
    /// writer spent handling them (decode, verify, merge, the durable
    /// transaction, the acknowledgement): where a write's trip to a peer
    /// spends its time on the receiving side.
    pub remote_applies: AtomicU64,
    pub remote_apply_us: AtomicU64,
    /// Watchers open now.
    pub watchers: AtomicU64,
    /// Watchers ended because they fell behind.
    pub lagged_watchers: AtomicU64,
    /// Changes delivered to watchers.
    pub delivered_changes: AtomicU64,
    /// The store's health as the writer last published it.
    store: std::sync::Mutex<pluresdb_sync::StoreStatus>,
}

impl Stats {
    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Relaxed);
    }

    /// Whether the store can write, its fault if not, and its fault and
    /// recovery counts (published by the writer, read without waiting for it).
    pub fn store_status(&self) -> pluresdb_sync::StoreStatus {
        self.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub(crate) fn set_store_status(&self, status: pluresdb_sync::StoreStatus) {
        *self.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = status;
    }
}
