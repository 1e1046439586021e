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
use pluresdb_core::{CompactSpan, OpVerifier, OperationWithMetadata, ReceivedOp};

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
    /// Operations that came in exactly the form the encoder writes keep
    /// their bytes as op-log bodies and are hashed from them
    /// ([`ReceivedOp::check_all_kept`]).
    pub fn prepare(peer: &str, bytes: &[u8], verifier: Option<&dyn OpVerifier>) -> Self {
        Self::decode(peer, bytes, |ops, spans| ReceivedOp::check_all_kept(ops, bytes, spans, verifier))
    }

    /// Decodes only: the replica checks the operations as it applies them.
    pub(crate) fn unchecked(peer: &str, bytes: &[u8]) -> Self {
        Self::decode(peer, bytes, |ops, _| ops.into_iter().map(ReceivedOp::unchecked).collect())
    }

    fn decode(peer: &str, bytes: &[u8], check: impl FnOnce(Vec<OperationWithMetadata>, &[Option<CompactSpan>]) -> Vec<ReceivedOp>) -> Self {
        let decoded = SyncMessage::decode_kept(peer, bytes).map(|(mut message, spans)| {
            let received = match &mut message {
                SyncMessage::DataSync { operations, .. } => check(std::mem::take(operations), &spans),
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

#[cfg(test)]
mod tests {
    use super::*;
    use pluresdb_core::{Hlc, OperationType, VersionVector};

    #[test]
    fn operations_keep_the_bytes_they_came_in_only_when_the_encoder_wrote_them() {
        let ops: Vec<OperationWithMetadata> = (1..=3)
            .map(|seq| {
                let data = serde_json::json!({"f": 0.5, "n": seq, "s": "x"});
                let mut op = OperationWithMetadata::new(OperationType::UpdateNode, format!("n:{seq}"), data, "origin");
                op.id.seq = seq;
                op.timestamp = Hlc::new(1_700_000_000_000, 0);
                op
            })
            .collect();
        let message = SyncMessage::DataSync { from_peer: "origin".into(), operations: ops.clone(), version_vector: VersionVector::new() };
        // Ours, and serde's (ciborium writes 0.5 as a half float, which only
        // serde reads).
        let (ours, theirs) = (message.encode(), pluresdb_core::codec::encode(&message));
        assert_ne!(ours, theirs);
        let (_, spans) = SyncMessage::decode_kept("origin", &ours).unwrap();
        assert!(spans.len() == ops.len() && spans.iter().all(Option::is_some), "{spans:?}");
        let (_, spans) = SyncMessage::decode_kept("origin", &theirs).unwrap();
        assert!(spans.is_empty(), "{spans:?}");
        for bytes in [&ours, &theirs] {
            let Ok(Decoded { received, .. }) = Inbound::prepare("origin", bytes, None).decoded else { panic!("not decoded") };
            assert_eq!(received.len(), ops.len());
            for (received, op) in received.iter().zip(&ops) {
                let mut body = Vec::new();
                op.encode_body(&mut body);
                assert_eq!(received.body(), Some(&body[..]));
                assert_eq!(received.digest(), op.digest());
            }
        }
    }
}
