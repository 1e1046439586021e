//! [`SyncStatus`]: what [`DataSyncEngine::get_sync_status`](crate::DataSyncEngine::get_sync_status) reports.

use pluresdb_core::ClockReport;
use serde::Serialize;

/// Counters for one peer, or summed over all peers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Traffic {
    /// Operations sent in `DataSync` messages (including resends).
    pub ops_sent: u64,
    /// Operations received in `DataSync` messages (including duplicates).
    pub ops_received: u64,
    /// Encoded message bytes sent.
    pub bytes_sent: u64,
    /// Encoded message bytes received.
    pub bytes_received: u64,
    /// Messages or rounds that failed (refused input, timeouts).
    pub errors: u64,
}

impl Traffic {
    pub(crate) fn add(&mut self, other: &Traffic) {
        self.ops_sent += other.ops_sent;
        self.ops_received += other.ops_received;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.errors += other.errors;
    }
}

/// The sync state with one peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerSyncStatus {
    /// The peer id.
    pub peer_id: String,
    /// Whether a connection to the peer is up.
    pub connected: bool,
    /// When the last sync round with the peer completed (the engine's time,
    /// milliseconds since the Unix epoch).
    pub last_sync_ms: Option<u64>,
    /// Local operations the peer has not acknowledged.
    pub pending_operations: u64,
    /// Traffic and errors with this peer.
    pub traffic: Traffic,
    /// The most recent error with this peer.
    pub last_error: Option<String>,
}

/// The forks met of one origin: two different operations under one of its
/// sequence numbers (see `docs/protocol.md`, "Forks").
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ForkStatus {
    /// The origin whose log forked.
    pub origin: String,
    /// How many forks of it this replica settled.
    pub count: u64,
    /// The sequence number of the latest one.
    pub last_seq: u64,
    /// The peer that sent the other branch.
    pub last_peer: String,
    /// When (the engine's time, milliseconds since the Unix epoch).
    pub last_ms: u64,
}

/// One fork settled, as [`DataSyncEngine::poll_fork`](crate::DataSyncEngine::poll_fork) reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ForkEvent {
    /// The origin whose log forked.
    pub origin: String,
    /// The first sequence number at which the branches differ.
    pub seq: u64,
    /// The peer that sent the other branch.
    pub peer: String,
    /// Whether this replica's branch won (`false`: it dropped its own
    /// operations from `seq` on and took the peer's).
    pub kept: bool,
    /// Operations this replica dropped.
    pub dropped: usize,
    /// Whether the origin is this replica's own: its dropped writes are
    /// written again under its id.
    pub own: bool,
}

/// The state of a sync engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SyncStatus {
    /// Whether the engine is started.
    pub is_active: bool,
    /// Operations not yet acknowledged, summed over known peers.
    pub pending_operations: u64,
    /// Operations this replica holds.
    pub operations_held: u64,
    /// Per peer, in peer id order.
    pub peers: Vec<PeerSyncStatus>,
    /// Summed over all peers.
    pub traffic: Traffic,
    /// The replica's clock: drift bound, correction, operations from the
    /// future held back, and how far ahead each origin's operations came.
    pub clock: ClockReport,
    /// Per origin that forked, in origin order.
    pub forks: Vec<ForkStatus>,
    /// Whether the store can write (see `docs/protocol.md`, "Storage faults").
    pub store: crate::StoreStatus,
}
