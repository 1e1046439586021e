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

/// The longest origin (peer id) accepted, in bytes of UTF-8: in operation
/// ids and in the ids an operation supersedes. A peer id in its text form
/// (`12D3KooW...`) is 52 bytes; the rest is room for other key types.
pub const MAX_ORIGIN_BYTES: usize = 128;

/// The most values one update may supersede in one field.
///
/// An update supersedes the values of the field it had seen: one after
/// sequential writes, `k` after `k` replicas wrote the field concurrently
/// and none has written it since. 256 concurrent unmerged writers of one
/// field is far beyond any honest network; a writer that finds more live
/// values supersedes the newest 256 (the rest stay as concurrent values and
/// the next writes replace them), so it never produces an operation that
/// peers refuse.
pub const MAX_SUPERSEDED_PER_FIELD: usize = 256;

/// The most values one update may supersede over all its fields: an update
/// that rewrites 4,096 fields that all hold values is far beyond what
/// applications write in one update (they replace a node with a create).
/// A writer over the limit supersedes the values of its first fields up to
/// it (the others keep their values as concurrent ones). With [`MAX_ORIGIN_BYTES`] this bounds the supersession
/// list of one operation to about 560 KiB.
pub const MAX_SUPERSEDED_PER_OP: usize = 4_096;

/// The largest operation accepted, in bytes of its compact (CBOR) encoding,
/// the form it travels in. An operation within the other limits (a value of
/// at most [`MAX_VALUE_BYTES`] of JSON is at most 2.25 times that in CBOR,
/// when it is all short floats; [`MAX_SUPERSEDED_PER_OP`] ids of at most
/// [`MAX_ORIGIN_BYTES`]; a node id of at most [`MAX_NODE_ID_BYTES`]) stays
/// under it, and a sync message (16 MiB) always has room for one, so every
/// operation a replica accepts can be relayed.
pub const MAX_OP_BYTES: usize = 3 * 1024 * 1024;

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
#[derive(Clone, Debug, Serialize, Deserialize)]
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

// Compared as (origin, seq), the origin by its text. Ids of one origin
// mostly share one allocation, and `Arc<str>` compares the text even then
// (std's pointer shortcut is for sized types only): the shortcut here saves
// a string comparison in every stamp the merge and the record encoder
// compare.
impl PartialEq for OpId {
    fn eq(&self, other: &Self) -> bool {
        self.seq == other.seq && (Arc::ptr_eq(&self.origin, &other.origin) || self.origin == other.origin)
    }
}

impl Eq for OpId {}

impl Ord for OpId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let origin = match Arc::ptr_eq(&self.origin, &other.origin) {
            true => std::cmp::Ordering::Equal,
            false => self.origin.cmp(&other.origin),
        };
        origin.then(self.seq.cmp(&other.seq))
    }
}

impl PartialOrd for OpId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::hash::Hash for OpId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.origin.hash(state);
        self.seq.hash(state);
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

/// The first byte of every op-log body: the head of a 7-item array.
pub(crate) const BODY_HEAD: u8 = 0x87;

/// Where an operation read by [`OperationWithMetadata::read_compact_kept`]
/// lies in the bytes it was read from, which are exactly its compact form
/// as [`OperationWithMetadata::encode_compact`] writes it. Only that reader
/// makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactSpan {
    /// Where the compact form starts (its 9-item array head).
    start: usize,
    /// Where its fields after the id start (the op-log body without its
    /// array head).
    fields: usize,
    /// Where it ends.
    end: usize,
    /// How many bytes its value takes.
    value_len: usize,
}

impl CompactSpan {
    /// The compact form, and the fields after its id, in `bytes` (those the
    /// span was read from); `None` when they cannot be.
    pub(crate) fn parts<'b>(&self, bytes: &'b [u8]) -> Option<(&'b [u8], &'b [u8])> {
        let compact = bytes.get(self.start..self.end)?;
        let fields = compact.get(self.fields.checked_sub(self.start)?..)?;
        Some((compact, fields))
    }

    /// What [`OperationWithMetadata::validate`] would compute of the
    /// operation read: the length of its compact form, and a bound of its
    /// value's length as compact JSON.
    pub(crate) fn sizes(&self) -> KnownSizes {
        KnownSizes { encoded: self.end - self.start, value_json_bound: self.value_len.saturating_mul(JSON_PER_CBOR_BYTE) }
    }
}

/// A JSON value written as compact JSON takes at most this many bytes per
/// byte of its CBOR (as `cbor::value` writes it): a text byte becomes at
/// most 6 (`\u00XX`) and its string's head (at least a byte) pays for the
/// quotes; `false` takes 5 and its comma 1 for its one byte; every other
/// item takes less per byte, with a comma, colon or bracket paid for by its
/// head.
const JSON_PER_CBOR_BYTE: usize = 6;

/// Sizes of an operation known from how it was read (see
/// [`CompactSpan::sizes`]), which validation then need not compute.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KnownSizes {
    /// The length of its compact form.
    pub encoded: usize,
    /// At least the length of its value as compact JSON.
    pub value_json_bound: usize,
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
        Self::read_compact_at(reader, origin).map(|(op, _, _)| op)
    }

    /// [`read_compact`](Self::read_compact), and where the operation lies
    /// in the reader's bytes when they are exactly what
    /// [`encode_compact`](Self::encode_compact) writes for it (else
    /// `None`): a receiver then keeps those bytes as its op-log body and
    /// hashes them for its digest instead of encoding it again
    /// ([`crate::ReceivedOp::check_all_kept`]). The reader is one that
    /// notes the form ([`crate::cbor::Reader::noting_form`]).
    pub fn read_compact_kept(
        reader: &mut crate::cbor::Reader<'_, true>,
        origin: Option<&Arc<str>>,
    ) -> Result<(Self, Option<CompactSpan>), crate::cbor::Unreadable> {
        let start = reader.position();
        reader.start_canonical();
        let (op, fields, value_len) = Self::read_compact_at(reader, origin)?;
        let span = reader.is_canonical().then(|| CompactSpan { start, fields, end: reader.position(), value_len });
        Ok((op, span))
    }

    /// Reads the compact form; also returns where its fields after the id
    /// start and how many bytes its value took.
    fn read_compact_at<const NOTES_FORM: bool>(
        reader: &mut crate::cbor::Reader<'_, NOTES_FORM>,
        origin: Option<&Arc<str>>,
    ) -> Result<(Self, usize, usize), crate::cbor::Unreadable> {
        if reader.array()? != 9 {
            return Err(crate::cbor::Unreadable);
        }
        let text = reader.text()?;
        let origin = match origin {
            Some(known) if &**known == text => known.clone(),
            _ => Arc::from(text),
        };
        let seq = reader.unsigned()?;
        let fields = reader.position();
        let (op, value_len) = Self::read_body_fields(reader, OpId { origin, seq })?;
        Ok((op, fields, value_len))
    }

    /// Reads the fields after the id; also returns how many bytes the value took.
    fn read_body_fields<const NOTES_FORM: bool>(
        reader: &mut crate::cbor::Reader<'_, NOTES_FORM>,
        id: OpId,
    ) -> Result<(Self, usize), crate::cbor::Unreadable> {
        let code = u8::try_from(reader.unsigned()?).map_err(|_| crate::cbor::Unreadable)?;
        let operation = OperationType::from_code(code).ok_or(crate::cbor::Unreadable)?;
        let node_id = reader.text()?.to_owned();
        let value_start = reader.position();
        let data = reader.value()?;
        let value_len = reader.position() - value_start;
        let timestamp = Hlc::from_u64(reader.unsigned()?);
        let mut supersedes = BTreeMap::new();
        let mut previous: Option<&str> = None;
        for _ in 0..reader.map()? {
            let field = reader.text()?;
            // Written in the map's order, each field once.
            if NOTES_FORM {
                if previous.is_some_and(|previous| previous >= field) {
                    reader.not_canonical();
                }
                previous = Some(field);
            }
            let field = field.to_owned();
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
        Ok((Self { id, operation, node_id, data, timestamp, supersedes, prev, signature }, value_len))
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

    /// Appends the compact form of the operation `id` whose op-log body
    /// is `body` (what [`encode_body`](Self::encode_body) wrote, as a store
    /// returns it), without decoding it: the compact form is the body with
    /// the id in front, so a sender passes stored operations on as they
    /// are. A body in another shape is decoded and encoded again; one that
    /// cannot be decoded is an error and nothing is appended.
    pub fn encode_compact_from_body(id: &OpId, body: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        match body.split_first() {
            Some((&BODY_HEAD, fields)) => {
                crate::cbor::array(out, 9);
                crate::cbor::text(out, &id.origin);
                crate::cbor::unsigned(out, id.seq);
                out.extend_from_slice(fields);
            }
            _ => Self::decode_body(id.clone(), body)?.encode_compact(out),
        }
        Ok(())
    }

    /// The length [`encode_compact_from_body`](Self::encode_compact_from_body)
    /// appends for a body in the usual shape.
    pub fn compact_len_from_body(id: &OpId, body: &[u8]) -> usize {
        1 + text_len(&id.origin) + head_len(id.seq) + body.len().saturating_sub(1)
    }

    /// Whether the op-log body `body` carries a signature (its last field),
    /// found without decoding the rest; `None` when it is not a body.
    pub fn body_is_signed(body: &[u8]) -> Option<bool> {
        let mut reader = crate::cbor::Reader::new(body);
        if reader.array().ok()? != 7 {
            return None;
        }
        for _ in 0..6 {
            reader.skip().ok()?;
        }
        let signed = !reader.null();
        if signed {
            reader.bytes().ok()?;
        }
        reader.is_done().then_some(signed)
    }

    /// Decodes what [`encode_body`](Self::encode_body) wrote, with the id
    /// the container supplies.
    pub fn decode_body(id: OpId, bytes: &[u8]) -> Result<Self, Error> {
        let mut reader = crate::cbor::Reader::new(bytes);
        let fast =
            reader.array().ok().filter(|&n| n == 7).and_then(|_| Self::read_body_fields(&mut reader, id.clone()).ok().map(|(op, _)| op));
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

    pub(crate) fn from_code(code: u8) -> Option<Self> {
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
    /// it: a valid node id and origin (at most [`MAX_ORIGIN_BYTES`]), an
    /// object value for creates and updates within [`MAX_VALUE_BYTES`], a
    /// stamped id, supersessions only in an update and only of fields it
    /// writes (at most [`MAX_SUPERSEDED_PER_FIELD`] per field and
    /// [`MAX_SUPERSEDED_PER_OP`] in all, none of its own origin's later
    /// operations), and the whole operation within [`MAX_OP_BYTES`].
    pub fn validate(&self) -> Result<(), Error> {
        self.validate_with(None)
    }

    /// [`validate`](Self::validate), with the sizes it checks taken from
    /// `known` when given (they are then not computed); the same result.
    pub(crate) fn validate_with(&self, known: Option<KnownSizes>) -> Result<(), Error> {
        validate_node_id(&self.node_id)?;
        let invalid = |reason: String| Error::InvalidOperation { id: self.id.clone(), reason };
        check_origin(&self.id.origin).map_err(|reason| invalid(format!("its origin {reason}")))?;
        if !self.is_stamped() {
            return Err(invalid("sequence number 0 (never stamped)".into()));
        }
        match self.operation {
            OperationType::CreateNode | OperationType::UpdateNode => match known {
                // Within the limit by a bound, as `validate_value` finds it.
                Some(known) if self.data.is_object() && known.value_json_bound <= MAX_VALUE_BYTES => {}
                _ => validate_value(&self.data)?,
            },
            OperationType::DeleteNode => {
                if !self.data.is_null() {
                    return Err(invalid("a delete carries no value".into()));
                }
            }
        }
        self.check_supersedes().map_err(invalid)?;
        let size = known.map_or_else(|| self.encoded_len(), |known| known.encoded);
        if size > MAX_OP_BYTES {
            return Err(invalid(format!("it encodes to {size} bytes; the limit is {MAX_OP_BYTES}")));
        }
        Ok(())
    }

    /// The supersession rules of [`validate`](Self::validate); the reason
    /// when one is broken.
    fn check_supersedes(&self) -> Result<(), String> {
        if self.supersedes.is_empty() {
            return Ok(());
        }
        if self.operation != OperationType::UpdateNode {
            return Err(format!("a {} supersedes no values; only an update does", self.operation));
        }
        let Value::Object(written) = &self.data else {
            return Err("an update's value is an object".into());
        };
        let mut total = 0usize;
        for (field, targets) in &self.supersedes {
            let name = || truncate_utf8(field, 32).escape_debug().to_string();
            if !written.contains_key(field) {
                return Err(format!("it supersedes values of field \"{}\", which it does not write", name()));
            }
            if targets.is_empty() {
                return Err(format!("it lists field \"{}\" as superseding no value", name()));
            }
            if targets.len() > MAX_SUPERSEDED_PER_FIELD {
                return Err(format!(
                    "it supersedes {} values of field \"{}\"; the limit is {MAX_SUPERSEDED_PER_FIELD}",
                    targets.len(),
                    name()
                ));
            }
            total += targets.len();
            if total > MAX_SUPERSEDED_PER_OP {
                return Err(format!("it supersedes more than {MAX_SUPERSEDED_PER_OP} values"));
            }
            for target in targets {
                check_origin(&target.origin).map_err(|reason| format!("a superseded id's origin {reason}"))?;
                if target.seq == 0 {
                    return Err("it supersedes sequence number 0".into());
                }
                // An author can only have seen its own earlier writes.
                if target.origin == self.id.origin && target.seq >= self.id.seq {
                    return Err(format!("it supersedes {target}, which its origin wrote after it"));
                }
            }
        }
        Ok(())
    }

    /// The length of [`encode_compact`](Self::encode_compact)'s output,
    /// computed without writing it.
    pub fn encoded_len(&self) -> usize {
        let mut len = 1 + text_len(&self.id.origin) + head_len(self.id.seq) + 1 + text_len(&self.node_id);
        len += value_len(&self.data) + head_len(self.timestamp.as_u64()) + head_len(self.supersedes.len() as u64);
        for (field, ids) in &self.supersedes {
            len += text_len(field) + head_len(ids.len() as u64);
            len += ids.iter().map(|id| 1 + text_len(&id.origin) + head_len(id.seq)).sum::<usize>();
        }
        len += 2 + self.prev.0.len();
        len + if self.signature.is_some() { 2 + 64 } else { 1 }
    }
}

/// Whether `s` holds a control character (Unicode category Cc). Origins
/// and node ids are checked on every operation applied: printable ASCII,
/// which they nearly always are, settles it without decoding characters.
fn has_control(s: &str) -> bool {
    let printable_ascii = s.bytes().all(|b| (0x20..0x7f).contains(&b));
    !printable_ascii && s.chars().any(char::is_control)
}

/// Checks an origin: 1 to [`MAX_ORIGIN_BYTES`] bytes, no control
/// characters; the reason ("is empty", ...) when it fails.
pub(crate) fn check_origin(origin: &str) -> Result<(), String> {
    if origin.is_empty() {
        return Err("is empty".into());
    }
    if origin.len() > MAX_ORIGIN_BYTES {
        return Err(format!("is {} bytes long; the limit is {MAX_ORIGIN_BYTES}", origin.len()));
    }
    if has_control(origin) {
        return Err("contains a control character".into());
    }
    Ok(())
}

/// The length of a CBOR head with argument `n`, as `cbor::head` writes it.
fn head_len(n: u64) -> usize {
    match n {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

fn text_len(s: &str) -> usize {
    head_len(s.len() as u64) + s.len()
}

/// The length of `cbor::value`'s output for `v`.
fn value_len(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) => 1,
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                head_len(u)
            } else if let Some(i) = n.as_i64() {
                head_len(!(i as u64))
            } else if let Some(f) = n.as_f64() {
                if f64::from(f as f32).to_bits() == f.to_bits() {
                    5
                } else {
                    9
                }
            } else {
                1
            }
        }
        Value::String(s) => text_len(s),
        Value::Array(items) => head_len(items.len() as u64) + items.iter().map(value_len).sum::<usize>(),
        Value::Object(fields) => head_len(fields.len() as u64) + fields.iter().map(|(k, v)| text_len(k) + value_len(v)).sum::<usize>(),
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
    if has_control(id) {
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
    use serde_json::{json, Map};

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

    fn update(origin: &str, seq: u64, data: Value, supersedes: Vec<(&str, Vec<OpId>)>) -> OperationWithMetadata {
        let mut op = OperationWithMetadata::new(OperationType::UpdateNode, "n".into(), data, origin);
        op.id.seq = seq;
        op.timestamp = Hlc::new(1_700_000_000_000, 0);
        op.supersedes = supersedes.into_iter().map(|(f, ids)| (f.to_owned(), ids)).collect();
        op
    }

    fn refusal(op: &OperationWithMetadata) -> String {
        match op.validate() {
            Err(Error::InvalidOperation { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn supersessions_are_bounded_per_field_and_per_op() {
        let ids = |n: usize| (1..=n as u64).map(|s| OpId::new("other", s)).collect::<Vec<_>>();
        let ok = update("p", 9, json!({"x": 1}), vec![("x", ids(MAX_SUPERSEDED_PER_FIELD))]);
        assert!(ok.validate().is_ok());

        // One op naming a hundred thousand values (the quadratic merge of
        // old took hours for a few of those).
        let flood = update("p", 9, json!({"x": 1}), vec![("x", ids(100_000))]);
        assert!(refusal(&flood).contains("the limit is 256"), "{}", refusal(&flood));
        let per_field = update("p", 9, json!({"x": 1}), vec![("x", ids(MAX_SUPERSEDED_PER_FIELD + 1))]);
        assert!(refusal(&per_field).contains("supersedes 257 values of field \"x\""));

        let fields: Map<String, Value> = (0..17).map(|i| (format!("f{i:02}"), json!(i))).collect();
        let names: Vec<String> = fields.keys().cloned().collect();
        let per_op = update("p", 9, Value::Object(fields), names.iter().map(|f| (f.as_str(), ids(MAX_SUPERSEDED_PER_FIELD))).collect());
        assert!(refusal(&per_op).contains("more than 4096"), "{}", refusal(&per_op));

        // Only fields the update writes, only updates, never nothing, never
        // the author's own later writes, never a bad origin.
        assert!(refusal(&update("p", 9, json!({"x": 1}), vec![("y", ids(1))])).contains("does not write"));
        let mut create = update("p", 9, json!({"x": 1}), vec![("x", ids(1))]);
        create.operation = OperationType::CreateNode;
        assert!(refusal(&create).contains("only an update"));
        assert!(refusal(&update("p", 9, json!({"x": 1}), vec![("x", vec![])])).contains("superseding no value"));
        assert!(refusal(&update("p", 9, json!({"x": 1}), vec![("x", vec![OpId::new("p", 9)])])).contains("wrote after it"));
        assert!(update("p", 9, json!({"x": 1}), vec![("x", vec![OpId::new("p", 8)])]).validate().is_ok());
        assert!(refusal(&update("p", 9, json!({"x": 1}), vec![("x", vec![OpId::new("o", 0)])])).contains("sequence number 0"));
        let long = "o".repeat(MAX_ORIGIN_BYTES + 1);
        assert!(refusal(&update("p", 9, json!({"x": 1}), vec![("x", vec![OpId::new(long.as_str(), 1)])])).contains("the limit is 128"));
    }

    #[test]
    fn an_operation_is_bounded_as_a_whole() {
        // Old: any origin length, any number of superseded ids; an op of
        // 20 MiB validated and could never be relayed in a 16 MiB message.
        let huge_origin = "p".repeat(20 << 20);
        let op = update(&huge_origin, 1, json!({"x": 1}), vec![]);
        assert!(refusal(&op).contains("the limit is 128"));
        assert!(refusal(&update("", 1, json!({"x": 1}), vec![])).contains("empty"));
        assert!(refusal(&update("a\nb", 1, json!({"x": 1}), vec![])).contains("control"));

        // The largest operation every other limit allows: a value of 1 MiB
        // of JSON made of short floats (the worst case of CBOR against JSON),
        // a longest node id and origin, and every superseded id allowed, with
        // longest origins.
        let mut fields = Map::new();
        let per_field = MAX_SUPERSEDED_PER_OP / MAX_SUPERSEDED_PER_FIELD;
        for i in 0..per_field {
            fields.insert(format!("f{i:02}"), json!(0.1));
        }
        let json_len = |fields: &Map<String, Value>| serde_json::to_vec(fields).unwrap().len();
        let items = (MAX_VALUE_BYTES - json_len(&fields) - 10) / 4;
        fields.insert("floats".into(), Value::Array(vec![json!(0.1); items]));
        assert!(json_len(&fields) <= MAX_VALUE_BYTES);
        let origin = "o".repeat(MAX_ORIGIN_BYTES);
        let targets: Vec<OpId> = (1..=MAX_SUPERSEDED_PER_FIELD as u64).map(|s| OpId::new(origin.as_str(), u64::MAX - s)).collect();
        let names: Vec<String> = (0..per_field).map(|i| format!("f{i:02}")).collect();
        let mut op = update(&origin, u64::MAX, Value::Object(fields), names.iter().map(|f| (f.as_str(), targets.clone())).collect());
        op.node_id = "n".repeat(MAX_NODE_ID_BYTES);
        op.signature = Some(OpSignature([1; 64]));
        op.validate().unwrap();
        let mut bytes = Vec::new();
        op.encode_compact(&mut bytes);
        assert_eq!(op.encoded_len(), bytes.len());
        assert!(bytes.len() <= MAX_OP_BYTES, "{} bytes", bytes.len());
        assert!(bytes.len() > MAX_OP_BYTES * 5 / 6, "the bound is near the worst case: {} bytes", bytes.len());
    }

    #[test]
    fn the_computed_length_is_the_written_length() {
        let values = [
            json!({}),
            json!({"a": [1, -1, 23, 24, -25, 255, 256, 65535, 65536, 4294967295u64, 4294967296u64, u64::MAX, i64::MIN]}),
            json!({"s": "x".repeat(23), "t": "y".repeat(300), "u": "z".repeat(70_000), "f": [0.5, 0.1, 1e300, -2.5], "n": null, "b": true}),
            json!({"nested": {"deep": [[], {}, [null, false]]}}),
        ];
        for (i, data) in values.into_iter().enumerate() {
            let mut op = update("p", 1 + i as u64 * 1000, data, vec![]);
            op.timestamp = Hlc::new(1 << 40, 7);
            for signature in [None, Some(OpSignature([3; 64]))] {
                op.signature = signature;
                let mut bytes = Vec::new();
                op.encode_compact(&mut bytes);
                assert_eq!(op.encoded_len(), bytes.len(), "{op:?}");
            }
        }
    }

    #[test]
    fn a_stored_body_is_sent_as_the_operation_would_be_encoded() {
        let values = [json!({}), json!({"a": [1, -1, "x", null, {"#": "u:2"}], "s": "y".repeat(300), "f": [0.5, 1e300]})];
        for (i, data) in values.into_iter().enumerate() {
            let mut op = update("origin", 1 + i as u64 * 70_000, data, vec![("a", vec![OpId::new("other", 3)])]);
            op.prev = OpDigest([5; 32]);
            for signature in [None, Some(OpSignature([0xf6; 64])), Some(OpSignature([0x58; 64]))] {
                op.signature = signature;
                let mut body = Vec::new();
                op.encode_body(&mut body);
                assert_eq!(OperationWithMetadata::body_is_signed(&body), Some(signature.is_some()));
                let (mut direct, mut expected) = (Vec::new(), Vec::new());
                OperationWithMetadata::encode_compact_from_body(&op.id, &body, &mut direct).unwrap();
                op.encode_compact(&mut expected);
                assert_eq!(direct, expected);
                assert_eq!(OperationWithMetadata::compact_len_from_body(&op.id, &body), expected.len());
            }
        }
        // Not a body: refused, nothing appended.
        let mut out = vec![1];
        assert!(OperationWithMetadata::encode_compact_from_body(&OpId::new("o", 1), &[0x86, 0], &mut out).is_err());
        assert_eq!(out, [1]);
        for junk in [&[][..], &[0x87], &[0x87, 0, 0, 0, 0, 0, 0, 0xf6, 0], &[0x80]] {
            assert_eq!(OperationWithMetadata::body_is_signed(junk), None, "{junk:?}");
        }
    }

    fn json_len(value: &Value) -> usize {
        serde_json::to_vec(value).map(|json| json.len()).unwrap_or(usize::MAX)
    }

    fn cbor_len(value: &Value) -> usize {
        let mut bytes = Vec::new();
        crate::cbor::value(&mut bytes, value);
        bytes.len()
    }

    #[test]
    fn a_value_takes_at_most_six_json_bytes_per_cbor_byte() {
        // The worst cases: escaped control characters, and `false`s.
        let worst =
            [json!({"\u{1}": "\u{1}".repeat(30)}), json!([false, false, false]), json!(false), json!({"": [-24, 23, null, {}, []]})];
        for value in worst {
            assert!(json_len(&value) < JSON_PER_CBOR_BYTE * cbor_len(&value), "{value}");
        }
        // Tight: one less per byte does not hold.
        let escaped = json!("\u{1}".repeat(30));
        assert!(json_len(&escaped) > (JSON_PER_CBOR_BYTE - 1) * cbor_len(&escaped));
    }

    proptest::proptest! {
        #[test]
        fn any_value_takes_at_most_six_json_bytes_per_cbor_byte(value in crate::cbor::tests::arb_json(), control in "[\u{0}-\u{1f}\"\\\\]{0,40}") {
            let value = json!({control.clone(): [value, control]});
            proptest::prop_assert!(json_len(&value) < JSON_PER_CBOR_BYTE * cbor_len(&value), "{}", value);
        }
    }

    #[test]
    fn stamps_order_by_time_then_origin_then_sequence() {
        let s = |t, o: &str, n| Stamp { hlc: Hlc::new(t, 0), id: OpId::new(o, n) };
        assert!(s(1, "b", 9) < s(2, "a", 1));
        assert!(s(1, "a", 9) < s(1, "b", 1));
        assert!(s(1, "a", 1) < s(1, "a", 2));
    }

    proptest::proptest! {
        /// Ids compare, order and hash as their (origin text, seq) pairs,
        /// whether or not the two share the origin's allocation.
        #[test]
        fn ids_compare_as_origin_text_then_sequence(a in "[ab]{0,3}", b in "[ab]{0,3}", m in 0u64..3, n in 0u64..3, shared: bool) {
            use std::hash::{BuildHasher, RandomState};
            let x = OpId::new(a.as_str(), m);
            let y = match shared && a == b {
                true => OpId { origin: x.origin.clone(), seq: n },
                false => OpId::new(b.as_str(), n),
            };
            let (px, py) = ((a.as_str(), m), (b.as_str(), n));
            proptest::prop_assert_eq!(x == y, px == py);
            proptest::prop_assert_eq!(x.cmp(&y), px.cmp(&py));
            proptest::prop_assert_eq!(x.partial_cmp(&y), px.partial_cmp(&py));
            let hasher = RandomState::new();
            if x == y {
                proptest::prop_assert_eq!(hasher.hash_one(&x), hasher.hash_one(&y));
            }
        }
    }

    #[test]
    fn control_characters_are_found_in_ascii_and_beyond() {
        for c in (0..=0x10_ffff).filter_map(char::from_u32) {
            for s in [c.to_string(), format!("peer{c}"), format!("{c}é")] {
                assert_eq!(has_control(&s), s.chars().any(char::is_control), "{s:?}");
            }
        }
    }
}
