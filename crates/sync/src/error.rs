//! The sync crate's error type.

/// What went wrong with a peer's input or a local request. Errors about a
/// peer's input concern that peer only: the engine keeps serving the others
/// and nothing stored is changed by a refused message.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The bytes are not a sync message.
    #[error("message from {peer} does not decode: {reason}")]
    Decode { peer: String, reason: String },
    /// The message is larger than [`crate::MAX_MESSAGE_BYTES`].
    #[error("message from {peer} is {size} bytes; the limit is {limit}")]
    MessageTooLarge { peer: String, size: usize, limit: usize },
    /// The message names a sender other than the connection's peer.
    #[error("message from {peer} claims to come from {claimed}")]
    WrongSender { peer: String, claimed: String },
    /// More operations than `max_batch_size` in one message.
    #[error("{peer} sent {size} operations in one batch; the limit is {limit}")]
    BatchTooLarge { peer: String, size: usize, limit: usize },
    /// A version vector claims an impossible sequence number.
    #[error("{peer} claims to hold {origin}/{seq}, beyond any plausible sequence number")]
    AbsurdVersionVector { peer: String, origin: String, seq: u64 },
    /// A version vector names more origins than a message may
    /// ([`crate::MAX_VECTOR_ENTRIES`]).
    #[error("{peer} sent a version vector of {count} origins; the limit is {limit}")]
    TooManyOrigins { peer: String, count: usize, limit: usize },
    /// An operation in a batch is malformed; the batch was not applied.
    #[error("{peer} sent an invalid operation")]
    InvalidOperation {
        peer: String,
        #[source]
        source: pluresdb_core::Error,
    },
    /// The peer is not connected.
    #[error("peer {0} is not connected")]
    NotConnected(String),
    /// The local replica refused a local write (bad input).
    #[error("local write refused")]
    LocalWrite(#[source] pluresdb_core::Error),
    /// The store failed.
    #[error("storage failed")]
    Storage(#[source] pluresdb_core::Error),
    /// The store cannot write (a full disk, an I/O error) and has not been
    /// recovered yet: nothing was written. The engine retries with backoff.
    #[error("the store cannot write ({fault}): {reason}")]
    StoreUnavailable { fault: pluresdb_core::StorageFault, reason: String },
}

impl SyncError {
    /// The store fault behind the error, if the store's medium failed (a
    /// full disk, an I/O error), now or earlier and not yet recovered.
    pub fn storage_fault(&self) -> Option<pluresdb_core::StorageFault> {
        match self {
            SyncError::StoreUnavailable { fault, .. } => Some(*fault),
            SyncError::LocalWrite(core) | SyncError::Storage(core) => core.storage_fault(),
            _ => None,
        }
    }

    /// The peer the error is about, if any.
    pub fn peer(&self) -> Option<&str> {
        match self {
            SyncError::Decode { peer, .. }
            | SyncError::MessageTooLarge { peer, .. }
            | SyncError::WrongSender { peer, .. }
            | SyncError::BatchTooLarge { peer, .. }
            | SyncError::AbsurdVersionVector { peer, .. }
            | SyncError::TooManyOrigins { peer, .. }
            | SyncError::InvalidOperation { peer, .. } => Some(peer),
            SyncError::NotConnected(peer) => Some(peer),
            SyncError::LocalWrite(_) | SyncError::Storage(_) | SyncError::StoreUnavailable { .. } => None,
        }
    }
}

pub(crate) use pluresdb_core::error_chain;
