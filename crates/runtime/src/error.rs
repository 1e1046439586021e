//! The runtime's error type.

/// What a runtime call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The replica refused the request or its store failed.
    #[error(transparent)]
    Core(#[from] pluresdb_core::Error),
    /// The sync engine failed.
    #[error(transparent)]
    Sync(pluresdb_sync::SyncError),
    /// The runtime is shutting down or has stopped.
    #[error("the node is shutting down")]
    Stopped,
    /// The node runs no network transport, so it cannot do `action`.
    #[error("cannot {action}: no network transport is enabled in this node")]
    NoTransport { action: String },
    /// No connection to this peer.
    #[error("peer {peer_id} is not connected")]
    NotConnected { peer_id: String },
    /// The network engine failed (a peer unreachable, refused, ...).
    #[error(transparent)]
    Network(pluresdb_net::NetworkError),
    /// Discovery failed.
    #[error(transparent)]
    Discovery(pluresdb_discovery::DiscoveryError),
    /// The store cannot write now (a full disk, an I/O error): the write is
    /// not acknowledged. The node retries by itself and takes writes again
    /// once the cause has gone.
    #[error(
        "the store cannot write ({fault}): {reason}; the write is not acknowledged (retry it); reads still work, and the node \
         takes writes again by itself once the cause is gone (free disk space)"
    )]
    StoreUnavailable { fault: pluresdb_core::StorageFault, reason: String },
    /// The writer thread could not be started.
    #[error("cannot start the writer thread")]
    Thread(#[source] std::io::Error),
}

impl Error {
    /// The store fault behind the error, if the store cannot write now.
    pub fn storage_fault(&self) -> Option<pluresdb_core::StorageFault> {
        match self {
            Error::StoreUnavailable { fault, .. } => Some(*fault),
            Error::Core(core) => core.storage_fault(),
            _ => None,
        }
    }

    /// Whether the caller's input is at fault (not the node).
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, Error::Core(e) if e.is_invalid_input())
    }
}
