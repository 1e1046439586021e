//! Operations: the unit of change that replicas exchange and store.

use crate::clock::Hlc;
use crate::error::Error;
use crate::signing::{OpDigest, OpSignature};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// The longest node id accepted, in bytes of UTF-8.
pub const MAX_NODE_ID_BYTES: usize = 512;

/// The largest value accepted in one operation, in bytes of compact JSON.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// The kind of change an operation makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OperationType {
    /// Creates the node, or replaces it entirely: fields the value does not
    /// name are removed.
    CreateNode,
    /// Sets the named fields and leaves the others as they are; a field set
    /// to `null` is removed (as in JSON Merge Patch). Creates the node if it
    /// does not exist.
    UpdateNode,
    /// Deletes the node. A later create or update brings it back with only
    /// the fields that write sets.
    DeleteNode,
}

impl fmt::Display for OperationType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OperationType::CreateNode => "create",
            OperationType::UpdateNode => "update",
            OperationType::DeleteNode => "delete",
        })
    }
}

/// Names one operation: the peer that made it and its position in that
/// peer's sequence (1, 2, 3, ... without gaps).
///
/// The origin is shared (`Arc<str>`): a replica holds it in every stamp of
/// every value that origin wrote, and copies are reference-counted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "(Arc<str>, u64)", into = "(Arc<str>, u64)")]
pub struct OpId {
    /// The peer id of the author.
    pub origin: Arc<str>,
    /// The author's sequence number for this operation, from 1.
    pub seq: u64,
}

impl OpId {
    /// Builds an op id.
    pub fn new(origin: impl Into<Arc<str>>, seq: u64) -> Self {
        Self { origin: origin.into(), seq }
    }
}

impl From<(Arc<str>, u64)> for OpId {
    fn from((origin, seq): (Arc<str>, u64)) -> Self {
        Self { origin, seq }
    }
}

impl From<OpId> for (Arc<str>, u64) {
    fn from(id: OpId) -> Self {
        (id.origin, id.seq)
    }
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.origin, self.seq)
    }
}

/// The total order that merge decisions use: timestamp first, then origin,
/// then sequence. Two distinct operations never compare equal.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// When the operation was made.
    pub hlc: Hlc,
    /// Which operation it was.
    pub id: OpId,
}

/// An operation with everything a replica needs to apply it in any order.
///
/// Serialized with named fields in human-readable formats (JSON) and as a
/// compact array in binary ones (CBOR on disk and on the wire).
#[derive(Clone, Debug, PartialEq)]
pub struct OperationWithMetadata {
    /// Author and sequence number. A sequence number of 0 means the operation
    /// has not been stamped by a replica yet (see [`OperationWithMetadata::new`]).
    pub id: OpId,
    /// What the operation does.
    pub operation: OperationType,
    /// The node it changes.
    pub node_id: String,
    /// The value (create), the fields (update) or `null` (delete).
    pub data: Value,
    /// The author's hybrid-logical-clock time.
    pub timestamp: Hlc,
    /// For each field this operation writes, the operations whose values of
    /// that field the author had seen and replaces. Values not listed here
    /// that the author had not seen are concurrent with this write and go to
    /// the conflict resolver.
    pub supersedes: BTreeMap<String, Vec<OpId>>,
    /// The digest of the previous operation from the same origin (zero for
    /// the first): each origin's log is a hash chain (see [`crate::signing`]).
    pub prev: OpDigest,
    /// The origin's signature over this operation's digest, on the last
    /// operation of each commit and at least every [`crate::SIGN_EVERY`]-th.
    pub signature: Option<OpSignature>,
}

/// The human-readable form of an operation.
#[derive(Serialize, Deserialize)]
struct NamedOperation<I, T, S, D, V, P> {
    id: I,
    #[serde(rename = "type")]
    operation: T,
    node_id: S,
    data: D,
    timestamp: V,
    #[serde(default)]
    supersedes: P,
    #[serde(default)]
    prev: OpDigest,
    #[serde(default)]
    signature: Option<OpSignature>,
}

/// The binary form: `[origin, seq, type, node_id, data, timestamp, supersedes, prev, signature]`.
type CompactOperation<A, S, D, P> = (A, u64, u8, S, D, Hlc, P, OpDigest, Option<OpSignature>);

/// The binary form without the id: `[type, node_id, data, timestamp, supersedes, prev, signature]`.
type CompactBody<S, D, P> = (u8, S, D, Hlc, P, OpDigest, Option<OpSignature>);

impl OperationWithMetadata {
    /// Appends the binary (CBOR) encoding of everything but the id, for
    /// containers that store the id once for many operations (the op-log
    /// segments of a store).
    ///
    /// Written directly by the crate's CBOR writer rather than through
    /// serde, because the store encodes every operation it commits. The
    /// bytes are what serde gives ciborium for the `CompactBody` tuple
    /// (except that floats are never shortened to 16 bits), which
    /// [`decode_body`](Self::decode_body) reads.
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        crate::cbor::array(out, 7);
        self.encode_body_fields(out, true);
    }

    /// Appends the binary (CBOR) form of the whole operation, the same bytes
    /// its `Serialize` impl gives a binary serializer, without going through
    /// serde (the sync engine encodes every operation it sends).
    pub fn encode_compact(&self, out: &mut Vec<u8>) {
        self.encode_compact_with(out, true);
    }

    /// The canonical bytes that [`digest`](Self::digest) hashes: the compact
    /// form with the signature written as null.
    /// [`encode_body`](Self::encode_body) with the signature slot null
    /// (what the digest covers).
    pub(crate) fn encode_body_unsigned(&self, out: &mut Vec<u8>) {
        crate::cbor::array(out, 7);
        self.encode_body_fields(out, false);
    }

    pub(crate) fn encode_compact_unsigned(&self, out: &mut Vec<u8>) {
        self.encode_compact_with(out, false);
    }

    fn encode_compact_with(&self, out: &mut Vec<u8>, with_signature: bool) {
        crate::cbor::array(out, 9);
        crate::cbor::text(out, &self.id.origin);
        crate::cbor::unsigned(out, self.id.seq);
        self.encode_body_fields(out, with_signature);
    }

    /// Reads the binary form written by [`encode_compact`](Self::encode_compact)
    /// (and by `Serialize` for binary formats) from `reader`, reusing
    /// `origin` when the operation's origin is the same string. Fails on
    /// anything outside the subset the reader takes; callers then fall back
    /// to serde.
    pub fn read_compact(reader: &mut crate::cbor::Reader<'_>, origin: Option<&Arc<str>>) -> Result<Self, crate::cbor::Unreadable> {
        if reader.array()? != 9 {
            return Err(crate::cbor::Unreadable);
        }
        let text = reader.text()?;
        let origin = match origin {
            Some(known) if &**known == text => known.clone(),
            _ => Arc::from(text),
        };
        let seq = reader.unsigned()?;
        Self::read_body_fields(reader, OpId { origin, seq })
    }

    fn read_body_fields(reader: &mut crate::cbor::Reader<'_>, id: OpId) -> Result<Self, crate::cbor::Unreadable> {
        let code = u8::try_from(reader.unsigned()?).map_err(|_| crate::cbor::Unreadable)?;
        let operation = OperationType::from_code(code).ok_or(crate::cbor::Unreadable)?;
        let node_id = reader.text()?.to_owned();
        let data = reader.value()?;
        let timestamp = Hlc::from_u64(reader.unsigned()?);
        let mut supersedes = BTreeMap::new();
        for _ in 0..reader.map()? {
            let field = reader.text()?.to_owned();
            let count = reader.array()?;
            let mut ids = Vec::with_capacity(crate::cbor::capacity_for::<OpId>(count));
            for _ in 0..count {
                if reader.array()? != 2 {
                    return Err(crate::cbor::Unreadable);
                }
                let origin: Arc<str> = Arc::from(reader.text()?);
                ids.push(OpId { origin, seq: reader.unsigned()? });
            }
            supersedes.insert(field, ids);
        }
        let prev = OpDigest(reader.bytes()?.try_into().map_err(|_| crate::cbor::Unreadable)?);
        let signature =
            if reader.null() { None } else { Some(OpSignature(reader.bytes()?.try_into().map_err(|_| crate::cbor::Unreadable)?)) };
        Ok(Self { id, operation, node_id, data, timestamp, supersedes, prev, signature })
    }

    fn encode_body_fields(&self, out: &mut Vec<u8>, with_signature: bool) {
        use crate::cbor;
        cbor::unsigned(out, u64::from(self.operation.code()));
        cbor::text(out, &self.node_id);
        cbor::value(out, &self.data);
        cbor::unsigned(out, self.timestamp.as_u64());
        cbor::map(out, self.supersedes.len());
        for (field, ids) in &self.supersedes {
            cbor::text(out, field);
            cbor::array(out, ids.len());
            for id in ids {
                cbor::array(out, 2);
                cbor::text(out, &id.origin);
                cbor::unsigned(out, id.seq);
            }
        }
        cbor::bytes(out, &self.prev.0);
        match (&self.signature, with_signature) {
            (Some(signature), true) => cbor::bytes(out, &signature.0),
            _ => cbor::null(out),
        }
    }

    /// Decodes what [`encode_body`](Self::encode_body) wrote, with the id
    /// the container supplies.
    pub fn decode_body(id: OpId, bytes: &[u8]) -> Result<Self, Error> {
        let mut reader = crate::cbor::Reader::new(bytes);
        let fast = reader.array().ok().filter(|&n| n == 7).and_then(|_| Self::read_body_fields(&mut reader, id.clone()).ok());
        match fast {
            Some(op) if reader.is_done() => return Ok(op),
            // Anything the fast reader does not take, serde reads or reports.
            _ => {}
        }
        let (code, node_id, data, timestamp, supersedes, prev, signature): CompactBody<String, Value, BTreeMap<String, Vec<OpId>>> =
            crate::codec::decode(bytes, "operation")?;
        let operation = OperationType::from_code(code)
            .ok_or_else(|| Error::Decode { what: "operation", reason: format!("unknown operation type {code}") })?;
        Ok(Self { id, operation, node_id, data, timestamp, supersedes, prev, signature })
    }
}

impl OperationType {
    fn code(self) -> u8 {
        match self {
            OperationType::CreateNode => 0,
            OperationType::UpdateNode => 1,
            OperationType::DeleteNode => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(OperationType::CreateNode),
            1 => Some(OperationType::UpdateNode),
            2 => Some(OperationType::DeleteNode),
            _ => None,
        }
    }
}

impl Serialize for OperationWithMetadata {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            NamedOperation {
                id: &self.id,
                operation: self.operation,
                node_id: &self.node_id,
                data: &self.data,
                timestamp: self.timestamp,
                supersedes: &self.supersedes,
                prev: self.prev,
                signature: self.signature,
            }
            .serialize(serializer)
        } else {
            let compact: CompactOperation<_, _, _, _> = (
                &*self.id.origin,
                self.id.seq,
                self.operation.code(),
                &self.node_id,
                &self.data,
                self.timestamp,
                &self.supersedes,
                self.prev,
                self.signature,
            );
            compact.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for OperationWithMetadata {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let named = NamedOperation::<OpId, OperationType, String, Value, Hlc, BTreeMap<String, Vec<OpId>>>::deserialize(deserializer)?;
            Ok(Self {
                id: named.id,
                operation: named.operation,
                node_id: named.node_id,
                data: named.data,
                timestamp: named.timestamp,
                supersedes: named.supersedes,
                prev: named.prev,
                signature: named.signature,
            })
        } else {
            let (origin, seq, code, node_id, data, timestamp, supersedes, prev, signature): CompactOperation<
                Arc<str>,
                String,
                Value,
                BTreeMap<String, Vec<OpId>>,
            > = Deserialize::deserialize(deserializer)?;
            let operation =
                OperationType::from_code(code).ok_or_else(|| serde::de::Error::custom(format_args!("unknown operation type {code}")))?;
            Ok(Self { id: OpId { origin, seq }, operation, node_id, data, timestamp, supersedes, prev, signature })
        }
    }
}

impl OperationWithMetadata {
    /// An operation authored by `origin_peer` that a replica stamps (sequence
    /// number, timestamp, superseded values) when it commits it as a local
    /// write.
    pub fn new(operation: OperationType, node_id: String, data: Value, origin_peer: impl Into<Arc<str>>) -> Self {
        Self {
            id: OpId::new(origin_peer, 0),
            operation,
            node_id,
            data,
            timestamp: Hlc::ZERO,
            supersedes: BTreeMap::new(),
            prev: OpDigest::default(),
            signature: None,
        }
    }

    /// Whether a replica has assigned this operation its sequence number.
    pub fn is_stamped(&self) -> bool {
        self.id.seq != 0
    }

    /// The stamp that orders this operation against others.
    pub fn stamp(&self) -> Stamp {
        Stamp { hlc: self.timestamp, id: self.id.clone() }
    }

    /// Checks what every replica requires of an operation before applying
    /// it: a valid node id, an object value for creates and updates within
    /// [`MAX_VALUE_BYTES`], and a stamped id.
    pub fn validate(&self) -> Result<(), Error> {
        validate_node_id(&self.node_id)?;
        if self.id.origin.is_empty() {
            return Err(Error::InvalidOperation { id: self.id.clone(), reason: "empty origin".into() });
        }
        if !self.is_stamped() {
            return Err(Error::InvalidOperation { id: self.id.clone(), reason: "sequence number 0 (never stamped)".into() });
        }
        match self.operation {
            OperationType::CreateNode | OperationType::UpdateNode => validate_value(&self.data)?,
            OperationType::DeleteNode => {
                if !self.data.is_null() {
                    return Err(Error::InvalidOperation { id: self.id.clone(), reason: "a delete carries no value".into() });
                }
            }
        }
        Ok(())
    }
}

/// Checks a node id: 1 to [`MAX_NODE_ID_BYTES`] bytes, no control characters.
pub fn validate_node_id(id: &str) -> Result<(), Error> {
    if id.is_empty() {
        return Err(Error::InvalidNodeId { id: id.to_owned(), reason: "it is empty".into() });
    }
    if id.len() > MAX_NODE_ID_BYTES {
        return Err(Error::InvalidNodeId {
            id: format!("{}...", truncate_utf8(id, 32)),
            reason: format!("it is {} bytes long; the limit is {MAX_NODE_ID_BYTES}", id.len()),
        });
    }
    if id.chars().any(char::is_control) {
        return Err(Error::InvalidNodeId { id: id.escape_debug().to_string(), reason: "it contains a control character".into() });
    }
    Ok(())
}

/// Checks a node value: a JSON object of at most [`MAX_VALUE_BYTES`].
pub fn validate_value(value: &Value) -> Result<(), Error> {
    if !value.is_object() {
        return Err(Error::ValueNotObject { found: json_kind(value) });
    }
    // Most values are far below the limit: a bound that does not read the
    // strings' bytes settles those without serializing them.
    if json_size_bound(value) <= MAX_VALUE_BYTES {
        return Ok(());
    }
    let size = json_size(value);
    if size > MAX_VALUE_BYTES {
        return Err(Error::ValueTooLarge { size, limit: MAX_VALUE_BYTES });
    }
    Ok(())
}

/// The name of a JSON value's kind, for error messages.
pub(crate) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An upper bound of the length of `value` as compact JSON that reads only
/// string lengths (a character takes at most 6 bytes escaped, `\u00XX`).
fn json_size_bound(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 32,
        Value::String(s) => 6 * s.len() + 2,
        Value::Array(items) => 2 + items.iter().map(|v| json_size_bound(v) + 1).sum::<usize>(),
        Value::Object(fields) => 2 + fields.iter().map(|(k, v)| 6 * k.len() + 4 + json_size_bound(v)).sum::<usize>(),
    }
}

/// The length of `value` as compact JSON, computed without allocating it.
fn json_size(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing to a counter cannot fail and a Value always serializes.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn node_ids_are_checked() {
        assert!(validate_node_id("user:123").is_ok());
        assert!(validate_node_id(&"x".repeat(MAX_NODE_ID_BYTES)).is_ok());
        let err = validate_node_id(&"é".repeat(MAX_NODE_ID_BYTES)).unwrap_err().to_string();
        assert!(err.contains("the limit is 512"), "{err}");
        assert!(validate_node_id("").is_err());
        assert!(validate_node_id("a\nb").is_err());
    }

    #[test]
    fn values_must_be_objects_within_the_limit() {
        assert!(validate_value(&json!({"a": 1})).is_ok());
        assert!(validate_value(&json!([1])).unwrap_err().to_string().contains("an array"));
        let big = json!({"a": "x".repeat(MAX_VALUE_BYTES)});
        assert!(matches!(validate_value(&big), Err(Error::ValueTooLarge { .. })));
    }

    #[test]
    fn the_written_body_is_what_serde_writes() {
        let mut op =
            OperationWithMetadata::new(OperationType::UpdateNode, "user:1".into(), json!({"a": [1, -2, "x", null, {"#": "u:2"}]}), "p");
        op.id.seq = 300;
        op.timestamp = Hlc::new(1_700_000_000_000, 3);
        op.supersedes.insert("a".into(), vec![OpId::new("other", 2), OpId::new("p", 299)]);
        op.supersedes.insert("b".into(), vec![]);
        let mut ours = Vec::new();
        op.prev = OpDigest([7; 32]);
        op.signature = Some(OpSignature([9; 64]));
        op.encode_body(&mut ours);
        op.prev = OpDigest([7; 32]);
        op.signature = Some(OpSignature([9; 64]));
        let body: CompactBody<_, _, _> = (op.operation.code(), &op.node_id, &op.data, op.timestamp, &op.supersedes, op.prev, op.signature);
        assert_eq!(ours, crate::codec::encode(&body));
        assert_eq!(OperationWithMetadata::decode_body(op.id.clone(), &ours).unwrap(), op);

        let mut whole = Vec::new();
        op.encode_compact(&mut whole);
        assert_eq!(whole, crate::codec::encode(&op));
        let mut reader = crate::cbor::Reader::new(&whole);
        assert_eq!(OperationWithMetadata::read_compact(&mut reader, None).unwrap(), op);
        assert!(reader.is_done());
    }

    #[test]
    fn stamps_order_by_time_then_origin_then_sequence() {
        let s = |t, o: &str, n| Stamp { hlc: Hlc::new(t, 0), id: OpId::new(o, n) };
        assert!(s(1, "b", 9) < s(2, "a", 1));
        assert!(s(1, "a", 9) < s(1, "b", 1));
        assert!(s(1, "a", 1) < s(1, "a", 2));
    }
}
