//! [`SyncConfig`]: how a [`DataSyncEngine`](crate::DataSyncEngine) syncs.

use std::time::Duration;

/// Sync settings, with the seed's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncConfig {
    /// Run a periodic anti-entropy exchange with every connected peer and
    /// push local writes to peers as they happen. Default: `true`.
    pub enable_auto_sync: bool,
    /// Time between anti-entropy exchanges with a peer. Default: 10 s.
    pub sync_interval: Duration,
    /// The most operations in one `DataSync` message, sent or accepted.
    /// Default: 1,000; at least `pluresdb_core::SIGN_EVERY` (256), so that a
    /// batch can always end at a signed operation.
    pub max_batch_size: usize,
    /// Show concurrent writes through the database's resolver (`true`:
    /// last-writer-wins unless `Database::with_resolver` chose another), or
    /// keep every concurrent value visible as a conflict (`false`).
    /// Default: `true`.
    pub enable_conflict_resolution: bool,
    /// A sync round (request to completion) or a batch awaiting its
    /// acknowledgement that makes no progress for this long is abandoned and
    /// retried later with exponential backoff. Default: 30 s.
    pub sync_timeout: Duration,
    /// How far past this replica's wall clock a received timestamp may lie
    /// and still take effect at once; an operation stamped later is stored
    /// and synced but takes effect when the wall clock reaches it, and it
    /// never moves the replica's clock further than this. Default: 5 min
    /// (`pluresdb_core::DEFAULT_MAX_CLOCK_DRIFT`).
    pub max_clock_drift: Duration,
    /// How long the acknowledgement of a small batch (under a quarter of
    /// `max_batch_size` operations received since the last one, no gap, no
    /// fork, nothing refused) may wait, so that a live write's
    /// acknowledgement does not go out (and its sender does not handle it)
    /// while the next write is on its way: those that come meanwhile are
    /// acknowledged together. What is acknowledged stays durable first; a
    /// sender's window (four batches) never waits for a delayed one.
    /// Default: zero (at once); the node runtime sets a few milliseconds.
    pub ack_delay: Duration,
}

/// The [`SyncConfig::ack_delay`] of a node ([`SyncConfig::node`]): with one
/// live write every half millisecond, about one acknowledgement for ten.
pub const NODE_ACK_DELAY: Duration = Duration::from_millis(5);

impl SyncConfig {
    /// The settings a node runs with (the runtime's and the network's
    /// defaults): [`Default`]'s, with acknowledgements of small batches
    /// delayed by [`NODE_ACK_DELAY`].
    pub fn node() -> Self {
        Self { ack_delay: NODE_ACK_DELAY, ..Self::default() }
    }
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            enable_auto_sync: true,
            sync_interval: Duration::from_secs(10),
            max_batch_size: 1_000,
            enable_conflict_resolution: true,
            sync_timeout: Duration::from_secs(30),
            max_clock_drift: pluresdb_core::DEFAULT_MAX_CLOCK_DRIFT,
            ack_delay: Duration::ZERO,
        }
    }
}
