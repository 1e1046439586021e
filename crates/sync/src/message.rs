//! The sync protocol's messages and their encoding. `docs/protocol.md`
//! describes the exchange.

use crate::error::SyncError;
use pluresdb_core::{OperationWithMetadata, VersionVector};
use serde::{Deserialize, Serialize};

/// The largest encoded message accepted.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// A batch is closed once its operations reach this many encoded bytes (a
/// single larger operation still travels alone).
pub const BATCH_BYTE_BUDGET: usize = 4 * 1024 * 1024;

/// The highest sequence number a version vector may claim. No origin
/// writes 2^48 operations; a larger claim is a broken or hostile peer.
pub const MAX_PLAUSIBLE_SEQ: u64 = 1 << 48;

/// One message of the sync protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SyncMessage {
    /// "This is what I hold; send me what I lack." Starts round `round`.
    SyncRequest {
        /// The sender's peer id.
        from_peer: String,
        /// Names the round, so its `SyncDone` can be matched.
        round: u64,
        /// What the sender has applied.
        version_vector: VersionVector,
    },
    /// Operations the receiver lacks, each origin's in sequence order, at
    /// most `max_batch_size` of them. `version_vector` is what the sender
    /// holds, which tells the receiver what not to send back.
    DataSync {
        /// The sender's peer id.
        from_peer: String,
        /// The operations.
        operations: Vec<OperationWithMetadata>,
        /// What the sender has applied.
        version_vector: VersionVector,
    },
    /// Everything the requester lacked when round `round` began has been
    /// sent; the round is complete once the requester holds `version_vector`.
    SyncDone {
        /// The sender's peer id.
        from_peer: String,
        /// The round answered.
        round: u64,
        /// What the sender held when the round began.
        version_vector: VersionVector,
    },
    /// "I have durably applied everything in `version_vector`." Sent after
    /// each applied batch; the sender drops those operations from its
    /// pending queue for this peer.
    SyncAck {
        /// The sender's peer id.
        from_peer: String,
        /// What the sender has durably applied.
        version_vector: VersionVector,
    },
}

impl SyncMessage {
    /// The peer id the message claims to come from.
    pub fn from_peer(&self) -> &str {
        match self {
            SyncMessage::SyncRequest { from_peer, .. }
            | SyncMessage::DataSync { from_peer, .. }
            | SyncMessage::SyncDone { from_peer, .. }
            | SyncMessage::SyncAck { from_peer, .. } => from_peer,
        }
    }

    /// The message's version vector.
    pub fn version_vector(&self) -> &VersionVector {
        match self {
            SyncMessage::SyncRequest { version_vector, .. }
            | SyncMessage::DataSync { version_vector, .. }
            | SyncMessage::SyncDone { version_vector, .. }
            | SyncMessage::SyncAck { version_vector, .. } => version_vector,
        }
    }

    /// Encodes the message as CBOR. `DataSync`, the message that carries
    /// the bulk of the traffic, is written directly (the same shape serde
    /// writes: a one-entry map from the variant name to a map of fields).
    pub fn encode(&self) -> Vec<u8> {
        use pluresdb_core::cbor;
        let SyncMessage::DataSync { from_peer, operations, version_vector } = self else {
            return pluresdb_core::codec::encode(self);
        };
        let mut out = Vec::with_capacity(64 + operations.len() * 160);
        cbor::map(&mut out, 1);
        cbor::text(&mut out, "DataSync");
        cbor::map(&mut out, 3);
        cbor::text(&mut out, "from_peer");
        cbor::text(&mut out, from_peer);
        cbor::text(&mut out, "operations");
        cbor::array(&mut out, operations.len());
        for op in operations {
            op.encode_compact(&mut out);
        }
        cbor::text(&mut out, "version_vector");
        cbor::map(&mut out, version_vector.len());
        for (origin, seq) in version_vector.iter() {
            cbor::text(&mut out, origin);
            cbor::unsigned(&mut out, seq);
        }
        out
    }

    /// Decodes a message received from `peer`, refusing oversized input.
    pub fn decode(peer: &str, bytes: &[u8]) -> Result<Self, SyncError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(SyncError::MessageTooLarge { peer: peer.to_owned(), size: bytes.len(), limit: MAX_MESSAGE_BYTES });
        }
        if let Some(message) = read_message(bytes) {
            return Ok(message);
        }
        pluresdb_core::codec::decode(bytes, "sync message")
            .map_err(|err| SyncError::Decode { peer: peer.to_owned(), reason: err.to_string() })
    }
}

/// Reads a message with the core's direct CBOR reader; `None` for
/// anything it does not take (serde then reads it or reports the error).
fn read_message(bytes: &[u8]) -> Option<SyncMessage> {
    use pluresdb_core::cbor::Reader;
    let mut reader = Reader::new(bytes);
    if reader.map().ok()? != 1 {
        return None;
    }
    let variant = reader.text().ok()?;
    let fields = reader.map().ok()?;
    let (mut from_peer, mut operations, mut version_vector, mut round) = (None, None, None, None);
    for _ in 0..fields {
        match reader.text().ok()? {
            "from_peer" => from_peer = Some(reader.text().ok()?.to_owned()),
            "round" => round = Some(reader.unsigned().ok()?),
            "operations" => {
                let count = reader.array().ok()?;
                let mut ops: Vec<OperationWithMetadata> =
                    Vec::with_capacity(pluresdb_core::cbor::capacity_for::<OperationWithMetadata>(count));
                for _ in 0..count {
                    let previous = ops.last().map(|op| &op.id.origin);
                    ops.push(OperationWithMetadata::read_compact(&mut reader, previous).ok()?);
                }
                operations = Some(ops);
            }
            "version_vector" => {
                let mut vv = VersionVector::new();
                for _ in 0..reader.map().ok()? {
                    let origin = reader.text().ok()?;
                    vv.advance(origin, reader.unsigned().ok()?);
                }
                version_vector = Some(vv);
            }
            _ => return None,
        }
    }
    if !reader.is_done() {
        return None;
    }
    let (from_peer, version_vector) = (from_peer?, version_vector?);
    match (variant, fields) {
        ("DataSync", 3) => Some(SyncMessage::DataSync { from_peer, operations: operations?, version_vector }),
        ("SyncRequest", 3) => Some(SyncMessage::SyncRequest { from_peer, round: round?, version_vector }),
        ("SyncDone", 3) => Some(SyncMessage::SyncDone { from_peer, round: round?, version_vector }),
        ("SyncAck", 2) => Some(SyncMessage::SyncAck { from_peer, version_vector }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn random_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = SyncMessage::decode("p", &bytes);
        }

        #[test]
        fn corrupting_a_valid_message_never_panics(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
            let mut op = OperationWithMetadata::new(pluresdb_core::OperationType::UpdateNode, "n:1".into(), serde_json::json!({"a": [1, "x", {"b": null}]}), "p");
            op.id.seq = 1;
            let msg = SyncMessage::DataSync { from_peer: "p".into(), operations: vec![op.clone(), op], version_vector: VersionVector::new() };
            let mut bytes = msg.encode();
            for (at, byte) in flips {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            let _ = SyncMessage::decode("p", &bytes);
        }
    }

    #[test]
    fn messages_round_trip_and_garbage_is_an_error() {
        let mut op = OperationWithMetadata::new(pluresdb_core::OperationType::CreateNode, "n:1".into(), serde_json::json!({"a": 1}), "p");
        op.id.seq = 1;
        let vv: VersionVector = [("p".to_string(), 1)].into_iter().collect();
        let msg = SyncMessage::DataSync { from_peer: "p".into(), operations: vec![op], version_vector: vv };
        assert_eq!(SyncMessage::decode("p", &msg.encode()).unwrap(), msg);
        assert_eq!(msg.encode(), pluresdb_core::codec::encode(&msg), "the direct writer writes what serde writes");
        assert_eq!(read_message(&msg.encode()), Some(msg.clone()), "the direct reader takes what the writer writes");
        for other in [
            SyncMessage::SyncRequest { from_peer: "p".into(), round: 7, version_vector: msg.version_vector().clone() },
            SyncMessage::SyncDone { from_peer: "p".into(), round: 300, version_vector: VersionVector::new() },
            SyncMessage::SyncAck { from_peer: "p".into(), version_vector: msg.version_vector().clone() },
        ] {
            assert_eq!(read_message(&other.encode()), Some(other.clone()), "the direct reader takes serde's {other:?}");
        }
        for cut in 0..msg.encode().len() {
            assert!(SyncMessage::decode("p", &msg.encode()[..cut]).is_err());
        }
        assert!(matches!(SyncMessage::decode("p", &vec![0u8; MAX_MESSAGE_BYTES + 1]), Err(SyncError::MessageTooLarge { .. })));
    }
}
