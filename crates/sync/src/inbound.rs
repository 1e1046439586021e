//! A peer's message made ready for the engine ahead of it.
//!
//! Decoding a message and checking its operations (encoding, digests,
//! signatures) does not depend on the replica, so a node does it on
//! another thread ([`Inbound::prepare`]) while the thread that owns the
//! replica applies the previous message ([`DataSyncEngine::handle_inbound`]).
//!
//! [`DataSyncEngine::handle_inbound`]: crate::DataSyncEngine::handle_inbound

use crate::error::SyncError;
use crate::message::SyncMessage;
use pluresdb_core::{OpVerifier, ReceivedOp};

/// A message received from a peer, decoded (or refused) and its operations
/// checked ahead.
#[derive(Debug)]
pub struct Inbound {
    size: usize,
    pub(crate) decoded: Result<Decoded, SyncError>,
}

#[derive(Debug)]
pub(crate) struct Decoded {
    /// The message; a `DataSync`'s operations are in `received` instead.
    pub message: SyncMessage,
    pub received: Vec<ReceivedOp>,
}

impl Inbound {
    /// Decodes `bytes` from `peer` and, for operations, encodes, hashes and
    /// verifies them with `verifier`: the replica's own verifier
    /// ([`pluresdb_core::Database::verifier`]), whose results the replica
    /// then trusts. Without one, the replica checks them itself.
    pub fn prepare(peer: &str, bytes: &[u8], verifier: Option<&dyn OpVerifier>) -> Self {
        Self::decode(peer, bytes, |ops| ReceivedOp::check_all(ops, verifier))
    }

    /// Decodes only: the replica checks the operations as it applies them.
    pub(crate) fn unchecked(peer: &str, bytes: &[u8]) -> Self {
        Self::decode(peer, bytes, |ops| ops.into_iter().map(ReceivedOp::unchecked).collect())
    }

    fn decode(peer: &str, bytes: &[u8], check: impl FnOnce(Vec<pluresdb_core::OperationWithMetadata>) -> Vec<ReceivedOp>) -> Self {
        let decoded = SyncMessage::decode(peer, bytes).map(|mut message| {
            let received = match &mut message {
                SyncMessage::DataSync { operations, .. } => check(std::mem::take(operations)),
                _ => Vec::new(),
            };
            Decoded { message, received }
        });
        Self { size: bytes.len(), decoded }
    }

    /// Whether it is a batch of operations (a `DataSync` that decoded).
    pub fn is_data(&self) -> bool {
        matches!(&self.decoded, Ok(Decoded { message: SyncMessage::DataSync { .. }, .. }))
    }

    /// The size of the message as received, in bytes.
    pub fn size(&self) -> usize {
        self.size
    }
}
