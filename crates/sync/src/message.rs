//! The sync protocol's messages and their encoding. `docs/protocol.md`
//! describes the exchange.

use crate::error::SyncError;
use pluresdb_core::{CompactSpan, EncodedOps, OperationWithMetadata, VersionVector};
use serde::{Deserialize, Serialize};

/// The largest encoded message accepted.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// A batch is closed once its operations reach this many encoded bytes,
/// then cut back to end at an operation the receiver can authenticate (see
/// [`MAX_BATCH_BYTES`]).
pub const BATCH_BYTE_BUDGET: usize = 4 * 1024 * 1024;

/// The most entries a version vector in one message holds. A replica that
/// holds more origins describes them in pages (`SyncRequest` and `SyncDone`
/// carry an [`OriginRange`]); `DataSync` and `SyncAck` name only the
/// origins of the batch they send or acknowledge. So no message grows with
/// the number of origins that ever wrote: a vector takes at most about
/// 140 KiB (1,024 origins of at most 128 bytes).
pub const MAX_VECTOR_ENTRIES: usize = 1_024;

/// The most encoded operation bytes one `DataSync` carries. A batch that
/// reaches [`BATCH_BYTE_BUDGET`] without an operation the receiver can
/// authenticate (one signed, or the newest of its origin) is extended to
/// the next such operation, up to this: room for the budget, a run of
/// unsigned operations (under `pluresdb_core::SIGN_EVERY_BYTES` for logs
/// written by this version) and two operations of at most
/// `pluresdb_core::MAX_OP_BYTES`, with the message's vector and framing
/// still under [`MAX_MESSAGE_BYTES`].
pub const MAX_BATCH_BYTES: usize = 12 * 1024 * 1024;

/// The highest sequence number a version vector may claim. No origin
/// writes 2^48 operations; a larger claim is a broken or hostile peer.
pub const MAX_PLAUSIBLE_SEQ: u64 = 1 << 48;

/// A range of origins, in the byte order of their ids: those after `after`
/// (from the first when `None`) through `through` (to the last when
/// `None`). A `SyncRequest` and its `SyncDone` cover one range; the
/// default is every origin (what a message without one means).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginRange {
    /// The range starts after this origin.
    #[serde(default)]
    pub after: Option<String>,
    /// The range ends with this origin.
    #[serde(default)]
    pub through: Option<String>,
}

impl OriginRange {
    /// Every origin.
    pub fn all() -> Self {
        Self::default()
    }

    /// Whether the range is every origin.
    pub fn is_all(&self) -> bool {
        self.after.is_none() && self.through.is_none()
    }

    /// Whether `origin` is in the range.
    pub fn contains(&self, origin: &str) -> bool {
        self.after.as_deref().is_none_or(|after| origin > after) && self.through.as_deref().is_none_or(|through| origin <= through)
    }
}

/// One message of the sync protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SyncMessage {
    /// "This is what I hold; send me what I lack." Starts round `round`.
    SyncRequest {
        /// The sender's peer id.
        from_peer: String,
        /// Names the round, so its `SyncDone` can be matched.
        round: u64,
        /// What the sender has applied, for the origins in `origins`
        /// (at most [`MAX_VECTOR_ENTRIES`]).
        version_vector: VersionVector,
        /// The origins the vector describes (absent: all).
        #[serde(default, skip_serializing_if = "OriginRange::is_all")]
        origins: OriginRange,
    },
    /// Operations the receiver lacks, each origin's in sequence order, at
    /// most `max_batch_size` of them. `version_vector` is what the sender
    /// holds of the batch's origins, which tells the receiver what not to
    /// send back.
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
        /// What the sender held when the round began, of the origins in
        /// `origins`.
        version_vector: VersionVector,
        /// The origins the round covered: the request's, or its first part
        /// when the sender holds more than [`MAX_VECTOR_ENTRIES`] of them
        /// (the requester asks for the rest in its next round). Absent: all.
        #[serde(default, skip_serializing_if = "OriginRange::is_all")]
        origins: OriginRange,
    },
    /// "I have durably applied everything in `version_vector`." Sent after
    /// each applied batch, naming the batch's origins; the sender drops
    /// those operations from its pending queue for this peer.
    SyncAck {
        /// The sender's peer id.
        from_peer: String,
        /// What the sender has durably applied.
        version_vector: VersionVector,
    },
    /// The newest operation the sender holds of each origin, named by
    /// its sequence number (`version_vector`) and the first 8 bytes of its
    /// digest (`heads`, big-endian). Sent after each `SyncRequest`: two
    /// replicas that hold as many of an origin's operations but different
    /// ones (a fork that no operation sent has shown yet) find out here.
    ChainHeads {
        /// The sender's peer id.
        from_peer: String,
        /// What the sender has applied.
        version_vector: VersionVector,
        /// Origin -> the first 8 bytes of the digest of its operation at
        /// the sequence number in `version_vector`.
        heads: std::collections::BTreeMap<String, u64>,
    },
}

impl SyncMessage {
    /// The peer id the message claims to come from.
    pub fn from_peer(&self) -> &str {
        match self {
            SyncMessage::SyncRequest { from_peer, .. }
            | SyncMessage::DataSync { from_peer, .. }
            | SyncMessage::SyncDone { from_peer, .. }
            | SyncMessage::SyncAck { from_peer, .. }
            | SyncMessage::ChainHeads { from_peer, .. } => from_peer,
        }
    }

    /// The message's version vector.
    pub fn version_vector(&self) -> &VersionVector {
        match self {
            SyncMessage::SyncRequest { version_vector, .. }
            | SyncMessage::DataSync { version_vector, .. }
            | SyncMessage::SyncDone { version_vector, .. }
            | SyncMessage::SyncAck { version_vector, .. }
            | SyncMessage::ChainHeads { version_vector, .. } => version_vector,
        }
    }

    /// Encodes the message as CBOR. `DataSync`, the message that carries
    /// the bulk of the traffic, is written directly (the same shape serde
    /// writes: a one-entry map from the variant name to a map of fields).
    pub fn encode(&self) -> Vec<u8> {
        let SyncMessage::DataSync { from_peer, operations, version_vector } = self else {
            return pluresdb_core::codec::encode(self);
        };
        let mut out = data_sync_head(from_peer, operations.len(), operations.len() * 160);
        for op in operations {
            op.encode_compact(&mut out);
        }
        data_sync_tail(&mut out, version_vector);
        out
    }

    /// Encodes the `DataSync` of operations read from a store's op log
    /// ([`pluresdb_core::Database::op_bodies_after`]): the same bytes as
    /// [`encode`](Self::encode) of the decoded operations, written without
    /// decoding them. Fails only on a stored body that cannot be read.
    pub fn encode_stored_data_sync(
        from_peer: &str,
        operations: &EncodedOps,
        version_vector: &VersionVector,
    ) -> Result<Vec<u8>, pluresdb_core::Error> {
        let body_bytes: usize = operations.iter().map(|(_, body)| body.len() + 16).sum();
        let mut out = data_sync_head(from_peer, operations.len(), body_bytes);
        for (id, body) in operations.iter() {
            OperationWithMetadata::encode_compact_from_body(id, body, &mut out)?;
        }
        data_sync_tail(&mut out, version_vector);
        Ok(out)
    }

    /// Decodes a message received from `peer`, refusing oversized input.
    pub fn decode(peer: &str, bytes: &[u8]) -> Result<Self, SyncError> {
        Self::decode_kept(peer, bytes).map(|(message, _)| message)
    }

    /// [`decode`](Self::decode), and for a `DataSync`, where each of its
    /// operations lies in `bytes` when it came in exactly the form the
    /// encoder writes ([`OperationWithMetadata::read_compact_kept`]; empty
    /// when none did or serde read the message).
    pub(crate) fn decode_kept(peer: &str, bytes: &[u8]) -> Result<(Self, Vec<Option<CompactSpan>>), SyncError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(SyncError::MessageTooLarge { peer: peer.to_owned(), size: bytes.len(), limit: MAX_MESSAGE_BYTES });
        }
        if let Some(read) = read_message(bytes) {
            return Ok(read);
        }
        pluresdb_core::codec::decode(bytes, "sync message")
            .map(|message| (message, Vec::new()))
            .map_err(|err| SyncError::Decode { peer: peer.to_owned(), reason: err.to_string() })
    }
}

/// The start of a `DataSync` written directly (the same shape serde
/// writes: a one-entry map from the variant name to a map of fields), up
/// to its operations.
fn data_sync_head(from_peer: &str, count: usize, capacity: usize) -> Vec<u8> {
    use pluresdb_core::cbor;
    let mut out = Vec::with_capacity(64 + capacity);
    cbor::map(&mut out, 1);
    cbor::text(&mut out, "DataSync");
    cbor::map(&mut out, 3);
    cbor::text(&mut out, "from_peer");
    cbor::text(&mut out, from_peer);
    cbor::text(&mut out, "operations");
    cbor::array(&mut out, count);
    out
}

/// The end of a `DataSync`: its version vector.
fn data_sync_tail(out: &mut Vec<u8>, version_vector: &VersionVector) {
    use pluresdb_core::cbor;
    cbor::text(out, "version_vector");
    cbor::map(out, version_vector.len());
    for (origin, seq) in version_vector.iter() {
        cbor::text(out, origin);
        cbor::unsigned(out, seq);
    }
}

/// Reads a message with the core's direct CBOR reader; `None` for
/// anything it does not take (serde then reads it or reports the error).
fn read_message(bytes: &[u8]) -> Option<(SyncMessage, Vec<Option<CompactSpan>>)> {
    use pluresdb_core::cbor::Reader;
    let mut reader = Reader::noting_form(bytes);
    let mut spans = Vec::new();
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
                spans = Vec::with_capacity(pluresdb_core::cbor::capacity_for::<Option<CompactSpan>>(count));
                for _ in 0..count {
                    let previous = ops.last().map(|op| &op.id.origin);
                    let (op, span) = OperationWithMetadata::read_compact_kept(&mut reader, previous).ok()?;
                    ops.push(op);
                    spans.push(span);
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
    let message = match (variant, fields) {
        ("DataSync", 3) => Some(SyncMessage::DataSync { from_peer, operations: operations?, version_vector }),
        // A message with a range (a fourth field) is left to serde.
        ("SyncRequest", 3) => Some(SyncMessage::SyncRequest { from_peer, round: round?, version_vector, origins: OriginRange::all() }),
        ("SyncDone", 3) => Some(SyncMessage::SyncDone { from_peer, round: round?, version_vector, origins: OriginRange::all() }),
        ("SyncAck", 2) => Some(SyncMessage::SyncAck { from_peer, version_vector }),
        _ => None,
    }?;
    Some((message, spans))
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
    fn ranged_requests_and_answers_round_trip() {
        let vv: VersionVector = [("b".to_string(), 3)].into_iter().collect();
        let origins = OriginRange { after: Some("a".into()), through: Some("c".into()) };
        assert!(origins.contains("b") && !origins.contains("a") && origins.contains("c") && !origins.contains("d"));
        assert!(OriginRange { after: None, through: Some("c".into()) }.contains(""));
        for msg in [
            SyncMessage::SyncRequest { from_peer: "p".into(), round: 1, version_vector: vv.clone(), origins: origins.clone() },
            SyncMessage::SyncDone {
                from_peer: "p".into(),
                round: 1,
                version_vector: vv.clone(),
                origins: OriginRange { after: None, through: Some("c".into()) },
            },
        ] {
            assert_eq!(SyncMessage::decode("p", &msg.encode()).unwrap(), msg);
        }
        // Without a range, the bytes are what a peer of the previous version
        // writes and reads.
        let all = SyncMessage::SyncRequest { from_peer: "p".into(), round: 1, version_vector: vv.clone(), origins: OriginRange::all() };
        #[derive(Serialize)]
        enum Previous {
            SyncRequest { from_peer: String, round: u64, version_vector: VersionVector },
        }
        let previous = Previous::SyncRequest { from_peer: "p".into(), round: 1, version_vector: vv };
        assert_eq!(all.encode(), pluresdb_core::codec::encode(&previous));
    }

    /// The largest operation the core accepts, with the largest vector a
    /// message carries, fits one message with room to spare: every
    /// operation can be relayed.
    #[test]
    fn the_largest_operation_and_vector_fit_one_message() {
        use pluresdb_core::{OpId, MAX_OP_BYTES, MAX_ORIGIN_BYTES, MAX_SUPERSEDED_PER_FIELD, MAX_SUPERSEDED_PER_OP, MAX_VALUE_BYTES};
        let origin = "o".repeat(MAX_ORIGIN_BYTES);
        let mut fields = serde_json::Map::new();
        let per_field = MAX_SUPERSEDED_PER_OP / MAX_SUPERSEDED_PER_FIELD;
        for i in 0..per_field {
            fields.insert(format!("f{i:02}"), serde_json::json!(0.1));
        }
        let items = (MAX_VALUE_BYTES - serde_json::to_vec(&fields).unwrap().len() - 20) / 4;
        fields.insert("floats".into(), serde_json::Value::Array(vec![serde_json::json!(0.1); items]));
        let mut op = OperationWithMetadata::new(pluresdb_core::OperationType::UpdateNode, "n".repeat(512), fields.into(), origin.as_str());
        op.id.seq = u64::MAX;
        let targets: Vec<OpId> = (1..=MAX_SUPERSEDED_PER_FIELD as u64).map(|s| OpId::new(origin.as_str(), s)).collect();
        op.supersedes = (0..per_field).map(|i| (format!("f{i:02}"), targets.clone())).collect();
        op.signature = Some(pluresdb_core::OpSignature([7; 64]));
        op.validate().unwrap();
        let vv: VersionVector = (0..MAX_VECTOR_ENTRIES).map(|i| (format!("{i:0128}"), u64::MAX)).collect();
        let two = SyncMessage::DataSync { from_peer: origin.clone(), operations: vec![op.clone(), op], version_vector: vv };
        let bytes = two.encode();
        assert!(bytes.len() > 2 * MAX_OP_BYTES * 5 / 6, "near the worst case: {} bytes", bytes.len());
        assert!(bytes.len() + MAX_BATCH_BYTES - 2 * MAX_OP_BYTES <= MAX_MESSAGE_BYTES, "{} bytes", bytes.len());
        assert_eq!(SyncMessage::decode("p", &bytes).unwrap(), two);
    }

    #[test]
    fn stored_operations_are_sent_as_their_decoded_form_would_be() {
        let mut ops = Vec::new();
        for (i, origin) in ["p", "p", "q"].into_iter().enumerate() {
            let mut op = OperationWithMetadata::new(
                pluresdb_core::OperationType::UpdateNode,
                format!("n:{i}"),
                serde_json::json!({"a": [1, "x", {"b": null}], "f": 0.1}),
                origin,
            );
            op.id.seq = 1 + i as u64;
            op.signature = (i == 1).then_some(pluresdb_core::OpSignature([7; 64]));
            ops.push(op);
        }
        let mut stored = EncodedOps::new();
        ops.iter().for_each(|op| stored.push(op));
        let vv: VersionVector = [("p".to_string(), 2), ("q".to_string(), 3)].into_iter().collect();
        let direct = SyncMessage::encode_stored_data_sync("me", &stored, &vv).unwrap();
        let message = SyncMessage::DataSync { from_peer: "me".into(), operations: ops, version_vector: vv.clone() };
        assert_eq!(direct, message.encode());
        assert_eq!(SyncMessage::decode("me", &direct).unwrap(), message);
        // A body that cannot be read is an error, not a message.
        let mut broken = EncodedOps::new();
        broken.push_encoded(&pluresdb_core::OpId::new("p", 1), &[0x86, 1]);
        assert!(SyncMessage::encode_stored_data_sync("me", &broken, &vv).is_err());
    }

    #[test]
    fn messages_round_trip_and_garbage_is_an_error() {
        let mut op = OperationWithMetadata::new(pluresdb_core::OperationType::CreateNode, "n:1".into(), serde_json::json!({"a": 1}), "p");
        op.id.seq = 1;
        let vv: VersionVector = [("p".to_string(), 1)].into_iter().collect();
        let msg = SyncMessage::DataSync { from_peer: "p".into(), operations: vec![op], version_vector: vv };
        assert_eq!(SyncMessage::decode("p", &msg.encode()).unwrap(), msg);
        assert_eq!(msg.encode(), pluresdb_core::codec::encode(&msg), "the direct writer writes what serde writes");
        assert_eq!(read_message(&msg.encode()).map(|(read, _)| read), Some(msg.clone()), "the direct reader takes what the writer writes");
        for other in [
            SyncMessage::SyncRequest {
                from_peer: "p".into(),
                round: 7,
                version_vector: msg.version_vector().clone(),
                origins: OriginRange::all(),
            },
            SyncMessage::SyncDone { from_peer: "p".into(), round: 300, version_vector: VersionVector::new(), origins: OriginRange::all() },
            SyncMessage::SyncAck { from_peer: "p".into(), version_vector: msg.version_vector().clone() },
        ] {
            assert_eq!(
                read_message(&other.encode()).map(|(read, _)| read),
                Some(other.clone()),
                "the direct reader takes serde's {other:?}"
            );
        }
        for cut in 0..msg.encode().len() {
            assert!(SyncMessage::decode("p", &msg.encode()[..cut]).is_err());
        }
        assert!(matches!(SyncMessage::decode("p", &vec![0u8; MAX_MESSAGE_BYTES + 1]), Err(SyncError::MessageTooLarge { .. })));
    }
}
