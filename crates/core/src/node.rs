//! Nodes: the stored merge state of one node ([`NodeRecord`]) and the view an
//! application reads ([`Node`]).

use crate::clock::Hlc;
use crate::operation::{OpId, Stamp};
use crate::resolver::ConflictResolver;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The key of a link property: `{"#": "other:id"}` is an edge to `other:id`.
pub const LINK_KEY: &str = "#";

/// One value written to a field, with the stamp of the operation that wrote it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldValue {
    /// The JSON value; `null` means the field was removed.
    pub value: Value,
    /// The operation that wrote it.
    pub stamp: Stamp,
}

/// The newest operation that replaced or deleted the whole node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reset {
    /// The create or delete operation.
    pub stamp: Stamp,
    /// `true` for a delete (a tombstone), `false` for a create.
    pub deleted: bool,
}

/// A value that an applied operation superseded before the operation that
/// wrote it arrived. When the target arrives, its value for `field` is dead
/// on arrival.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PendingSupersession {
    /// The field.
    pub field: String,
    /// The operation whose value is superseded.
    pub target: OpId,
    /// The operation that superseded it.
    pub by: Stamp,
}

/// The merge state of one node, as stored.
///
/// It is a function of the set of operations applied to the node and not of
/// their order: see [`crate::merge`]. For each field it keeps every value no
/// applied operation has superseded (usually one; several after concurrent
/// writes), so a conflict resolver can choose among them when the node is
/// read and an application can see and resolve conflicts.
///
/// Serialized with named fields in human-readable formats and, in binary
/// ones, as a compact array where each distinct stamp is written once.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct NodeRecord {
    /// The node id.
    pub id: String,
    /// The newest create or delete; values older than it are gone.
    pub reset: Option<Reset>,
    /// For each field, its live values in ascending stamp order.
    pub fields: BTreeMap<String, Vec<FieldValue>>,
    /// Supersessions whose target has not arrived yet, sorted.
    pub pending: Vec<PendingSupersession>,
}

#[derive(Serialize, Deserialize)]
struct NamedRecord<S, R, F, P> {
    id: S,
    reset: R,
    fields: F,
    pending: P,
}

/// `(hlc, origin, seq)`
type CompactStamp<A> = (Hlc, A, u64);
/// `[id, reset: [stamp index, deleted]?, stamps, fields: [[name, [[value, stamp index]]]], pending: [[field, target, stamp index]]]`
type CompactRecord<S, A, V, T> = (S, Option<(u32, bool)>, Vec<CompactStamp<A>>, Vec<(S, Vec<(V, u32)>)>, Vec<(S, T, u32)>);

/// The length of the array of a record as a store keeps it (see
/// [`NodeRecord::encode_stored`]); the layout with the id has five.
const STORED_LEN: usize = 4;

/// Why a stored record was not read.
enum Unstored {
    /// Truncated, or an item of the wrong type.
    Malformed,
    /// An origin number past the end of the store's table.
    Origin(u64),
}

impl From<crate::cbor::Unreadable> for Unstored {
    fn from(_: crate::cbor::Unreadable) -> Self {
        Self::Malformed
    }
}

impl Serialize for NodeRecord {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            return NamedRecord { id: &self.id, reset: &self.reset, fields: &self.fields, pending: &self.pending }.serialize(serializer);
        }
        // Each distinct stamp once, sorted, referred to by index.
        let mut stamps: Vec<&Stamp> = self
            .reset
            .iter()
            .map(|r| &r.stamp)
            .chain(self.fields.values().flatten().map(|v| &v.stamp))
            .chain(self.pending.iter().map(|p| &p.by))
            .collect();
        stamps.sort();
        stamps.dedup();
        // Every stamp looked up is in the table: it was built from them.
        let index = |stamp: &Stamp| stamps.binary_search(&stamp).unwrap_or(0) as u32;
        // Written straight from the record, without building the tuple.
        let compact = (
            &self.id,
            self.reset.as_ref().map(|r| (index(&r.stamp), r.deleted)),
            SeqOf::new(stamps.iter().map(|s| (s.hlc, &*s.id.origin, s.id.seq))),
            SeqOf::new(self.fields.iter().map(|(name, values)| (name, SeqOf::new(values.iter().map(|v| (&v.value, index(&v.stamp))))))),
            SeqOf::new(self.pending.iter().map(|p| (&p.field, &p.target, index(&p.by)))),
        );
        compact.serialize(serializer)
    }
}

/// Serializes an iterator as a sequence, once.
struct SeqOf<I>(std::cell::Cell<Option<I>>);

impl<I> SeqOf<I> {
    fn new(iter: I) -> Self {
        Self(std::cell::Cell::new(Some(iter)))
    }
}

impl<I> Serialize for SeqOf<I>
where
    I: Iterator,
    I::Item: Serialize,
{
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.take() {
            Some(iter) => serializer.collect_seq(iter),
            None => Err(serde::ser::Error::custom("sequence serialized twice")),
        }
    }
}

impl<'de> Deserialize<'de> for NodeRecord {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let named = NamedRecord::<String, Option<Reset>, BTreeMap<String, Vec<FieldValue>>, Vec<PendingSupersession>>::deserialize(
                deserializer,
            )?;
            return Ok(Self { id: named.id, reset: named.reset, fields: named.fields, pending: named.pending });
        }
        let (id, reset, stamps, fields, pending): CompactRecord<String, Arc<str>, Value, OpId> = Deserialize::deserialize(deserializer)?;
        let stamps: Vec<Stamp> = stamps.into_iter().map(|(hlc, origin, seq)| Stamp { hlc, id: OpId { origin, seq } }).collect();
        let stamp =
            |i: u32| stamps.get(i as usize).cloned().ok_or_else(|| serde::de::Error::custom(format_args!("stamp index {i} out of range")));
        Ok(Self {
            reset: reset.map(|(i, deleted)| Ok::<_, D::Error>(Reset { stamp: stamp(i)?, deleted })).transpose()?,
            fields: fields
                .into_iter()
                .map(|(name, values)| {
                    let values =
                        values.into_iter().map(|(value, i)| Ok(FieldValue { value, stamp: stamp(i)? })).collect::<Result<_, D::Error>>()?;
                    Ok((name, values))
                })
                .collect::<Result<_, D::Error>>()?,
            pending: pending
                .into_iter()
                .map(|(field, target, i)| Ok(PendingSupersession { field, target, by: stamp(i)? }))
                .collect::<Result<_, D::Error>>()?,
            id,
        })
    }
}

impl NodeRecord {
    /// Whether no operation has left anything in the record (no reset, no
    /// value, no pending supersession): what a node no applied operation
    /// touched looks like.
    pub fn is_blank(&self) -> bool {
        self.reset.is_none() && self.fields.is_empty() && self.pending.is_empty()
    }

    /// Decodes a stored record (what [`encode_into`](Self::encode_into) or
    /// the binary `Serialize` wrote): the direct reader first, serde for
    /// anything it does not take (and for the precise error).
    pub fn decode(bytes: &[u8]) -> Result<Self, crate::Error> {
        let mut reader = crate::cbor::Reader::new(bytes);
        match Self::read_compact(&mut reader) {
            Ok(record) if reader.is_done() => Ok(record),
            _ => crate::codec::decode(bytes, "node record"),
        }
    }

    fn read_compact(reader: &mut crate::cbor::Reader<'_>) -> Result<Self, crate::cbor::Unreadable> {
        if reader.array()? != 5 {
            return Err(crate::cbor::Unreadable);
        }
        let id = reader.text()?.to_owned();
        let origin = |reader: &mut crate::cbor::Reader<'_>| -> Result<Arc<str>, Unstored> { Ok(Arc::from(reader.text()?)) };
        Self::read_parts(reader, id, origin).map_err(|_| crate::cbor::Unreadable)
    }

    /// Reads what follows the id in both layouts: reset, stamp table,
    /// fields, pending supersessions; `origin` reads a stamp's origin.
    fn read_parts(
        reader: &mut crate::cbor::Reader<'_>,
        id: String,
        origin: impl Fn(&mut crate::cbor::Reader<'_>) -> Result<Arc<str>, Unstored>,
    ) -> Result<Self, Unstored> {
        use crate::cbor::Unreadable;
        let reset = if reader.null() {
            None
        } else {
            if reader.array()? != 2 {
                return Err(Unreadable.into());
            }
            Some((reader.unsigned()?, reader.boolean()?))
        };
        let count = reader.array()?;
        let mut stamps = Vec::with_capacity(crate::cbor::capacity_for::<Stamp>(count));
        for _ in 0..count {
            if reader.array()? != 3 {
                return Err(Unreadable.into());
            }
            let hlc = Hlc::from_u64(reader.unsigned()?);
            let origin = origin(reader)?;
            stamps.push(Stamp { hlc, id: OpId { origin, seq: reader.unsigned()? } });
        }
        let stamp = |i: u64| usize::try_from(i).ok().and_then(|i| stamps.get(i)).cloned().ok_or(Unreadable);
        let reset = reset.map(|(i, deleted)| Ok::<_, Unreadable>(Reset { stamp: stamp(i)?, deleted })).transpose()?;
        let mut fields = BTreeMap::new();
        for _ in 0..reader.array()? {
            if reader.array()? != 2 {
                return Err(Unreadable.into());
            }
            let name = reader.text()?.to_owned();
            let count = reader.array()?;
            let mut values = Vec::with_capacity(crate::cbor::capacity_for::<FieldValue>(count));
            for _ in 0..count {
                if reader.array()? != 2 {
                    return Err(Unreadable.into());
                }
                let value = reader.value()?;
                values.push(FieldValue { value, stamp: stamp(reader.unsigned()?)? });
            }
            fields.insert(name, values);
        }
        let mut pending = Vec::new();
        for _ in 0..reader.array()? {
            if reader.array()? != 3 {
                return Err(Unreadable.into());
            }
            let field = reader.text()?.to_owned();
            if reader.array()? != 2 {
                return Err(Unreadable.into());
            }
            let origin: Arc<str> = Arc::from(reader.text()?);
            let target = OpId { origin, seq: reader.unsigned()? };
            pending.push(PendingSupersession { field, target, by: stamp(reader.unsigned()?)? });
        }
        Ok(Self { id, reset, fields, pending })
    }

    /// Decodes a record as a store keeps it (what
    /// [`encode_stored`](Self::encode_stored) wrote under the key `id`),
    /// with `origins` the store's table of origins; also takes a record in
    /// the layout of [`encode_into`](Self::encode_into), which stores wrote
    /// before (its own id is then the one returned). A record that is
    /// neither, or that names an origin past the end of `origins`, is an
    /// error.
    pub fn decode_stored(id: &str, bytes: &[u8], origins: &[Arc<str>]) -> Result<Self, crate::Error> {
        let mut reader = crate::cbor::Reader::new(bytes);
        let mut peek = crate::cbor::Reader::new(bytes);
        if peek.array() != Ok(STORED_LEN) {
            return Self::decode(bytes);
        }
        let origin = |reader: &mut crate::cbor::Reader<'_>| -> Result<Arc<str>, Unstored> {
            if !reader.next_is_unsigned() {
                return Ok(Arc::from(reader.text()?));
            }
            let i = reader.unsigned()?;
            usize::try_from(i).ok().and_then(|i| origins.get(i)).cloned().ok_or(Unstored::Origin(i))
        };
        let read = reader.array().map_err(Unstored::from).and_then(|_| Self::read_parts(&mut reader, id.to_owned(), origin));
        let reason = match read {
            Ok(record) if reader.is_done() => return Ok(record),
            Ok(_) => "bytes after its end".to_owned(),
            Err(Unstored::Malformed) => "not a stored record (truncated, or an item of the wrong type)".to_owned(),
            Err(Unstored::Origin(i)) => format!("origin {i} is not in the store's table of {} origins", origins.len()),
        };
        Err(crate::Error::Decode { what: "node record", reason: format!("{id}: {reason}") })
    }

    /// Appends the record as a store keeps it under its id: the layout of
    /// [`encode_into`](Self::encode_into) without the id (an array of
    /// four: the key holds it) and with each stamp's origin written as its
    /// number in the store's table of origins where `origin_index` gives
    /// one (a peer id is 52 characters, a third of a record written by one
    /// operation), as text where it does not. Pending supersessions keep
    /// their target's origin as text (their operation has not arrived).
    /// [`NodeRecord::decode_stored`] reads it back.
    ///
    /// An older build that reads it fails with a decode error for the node
    /// (its decoder takes arrays of five only) and does not overwrite it.
    pub fn encode_stored(&self, out: &mut Vec<u8>, mut origin_index: impl FnMut(&Arc<str>) -> Option<u32>) {
        crate::cbor::array(out, STORED_LEN);
        self.write_parts(out, |out, origin| match origin_index(origin) {
            Some(i) => crate::cbor::unsigned(out, u64::from(i)),
            None => crate::cbor::text(out, origin),
        });
    }

    /// Appends the binary (CBOR) encoding of the record: what the
    /// [`Serialize`] impl gives ciborium, byte for byte except that floats
    /// are never shortened to 16 bits, written directly because the store
    /// encodes a record per write and serde's path cost a sixth of a batched
    /// commit. [`NodeRecord::decode`] reads it back.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        crate::cbor::array(out, 5);
        crate::cbor::text(out, &self.id);
        self.write_parts(out, |out, origin| crate::cbor::text(out, origin));
    }

    /// Appends what follows the id in both layouts; `origin` writes a
    /// stamp's origin.
    fn write_parts(&self, out: &mut Vec<u8>, mut origin: impl FnMut(&mut Vec<u8>, &Arc<str>)) {
        use crate::cbor;
        // The stamp table, as in `serialize`: each distinct stamp once,
        // sorted. Usually every value was written by the same operation
        // (a create, or a node written once), so check for that before
        // collecting and sorting.
        let mut all = self
            .reset
            .iter()
            .map(|r| &r.stamp)
            .chain(self.fields.values().flatten().map(|v| &v.stamp))
            .chain(self.pending.iter().map(|p| &p.by));
        // The table of one stamp is not allocated (a record per write).
        let one: [&Stamp; 1];
        let sorted: Vec<&Stamp>;
        let stamps: &[&Stamp] = match all.next() {
            None => &[],
            Some(first) if all.clone().all(|s| s == first) => {
                one = [first];
                &one
            }
            Some(first) => {
                let mut stamps: Vec<&Stamp> = std::iter::once(first).chain(all).collect();
                stamps.sort();
                stamps.dedup();
                sorted = stamps;
                &sorted
            }
        };
        // Every stamp looked up is in the table: it was built from them.
        let index = |stamp: &Stamp| match stamps {
            [_] => 0,
            _ => stamps.binary_search(&stamp).unwrap_or(0) as u64,
        };

        match &self.reset {
            Some(reset) => {
                cbor::array(out, 2);
                cbor::unsigned(out, index(&reset.stamp));
                cbor::boolean(out, reset.deleted);
            }
            None => cbor::null(out),
        }
        cbor::array(out, stamps.len());
        for stamp in stamps {
            cbor::array(out, 3);
            cbor::unsigned(out, stamp.hlc.as_u64());
            origin(out, &stamp.id.origin);
            cbor::unsigned(out, stamp.id.seq);
        }
        cbor::array(out, self.fields.len());
        for (name, values) in &self.fields {
            cbor::array(out, 2);
            cbor::text(out, name);
            cbor::array(out, values.len());
            for v in values {
                cbor::array(out, 2);
                cbor::value(out, &v.value);
                cbor::unsigned(out, index(&v.stamp));
            }
        }
        cbor::array(out, self.pending.len());
        for p in &self.pending {
            cbor::array(out, 3);
            cbor::text(out, &p.field);
            cbor::array(out, 2);
            cbor::text(out, &p.target.origin);
            cbor::unsigned(out, p.target.seq);
            cbor::unsigned(out, index(&p.by));
        }
    }

    /// A record for a node no operation has touched.
    pub fn empty(id: impl Into<String>) -> Self {
        Self { id: id.into(), ..Self::default() }
    }

    /// Whether the node exists: it was created, or fields were written to
    /// it, after its newest delete.
    pub fn exists(&self) -> bool {
        match &self.reset {
            Some(reset) if !reset.deleted => true,
            _ => !self.fields.is_empty(),
        }
    }

    /// The operations that produced the current state: the newest create or
    /// delete and every operation with a live field value, in stamp order.
    pub fn contributing_ops(&self) -> Vec<&Stamp> {
        let mut stamps: Vec<&Stamp> = self.reset.iter().map(|r| &r.stamp).collect();
        stamps.extend(self.fields.values().flatten().map(|v| &v.stamp));
        stamps.sort();
        stamps.dedup();
        stamps
    }

    /// The newest timestamp among the operations that produced the state.
    pub fn updated_at(&self) -> Hlc {
        self.contributing_ops().last().map(|s| s.hlc).unwrap_or(Hlc::ZERO)
    }

    /// What an application sees: the fields with the resolver's choice among
    /// concurrent values, or `None` if the node does not exist.
    pub fn view(&self, resolver: &dyn ConflictResolver) -> Option<Node> {
        if !self.exists() {
            return None;
        }
        let mut value = Map::new();
        let mut conflicts = BTreeMap::new();
        for (field, candidates) in &self.fields {
            let winner = match candidates.len() {
                0 => continue,
                1 => &candidates[0],
                n => {
                    if resolver.keeps_conflicts() {
                        conflicts.insert(field.clone(), candidates.clone());
                    }
                    let pick = resolver.pick(&self.id, field, candidates);
                    &candidates[pick.min(n - 1)]
                }
            };
            if !winner.value.is_null() {
                value.insert(field.clone(), winner.value.clone());
            }
        }
        Some(Node { id: self.id.clone(), value, updated_at: self.updated_at(), conflicts })
    }
}

/// A node as an application reads it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The node id.
    pub id: String,
    /// The properties. A property `{"#": "other:id"}` links to another node.
    pub value: Map<String, Value>,
    /// The timestamp of the newest operation that contributes to the value.
    pub updated_at: Hlc,
    /// Fields that concurrent writes left with several values, each with all
    /// of them in stamp order. Only filled when the resolver keeps conflicts
    /// (see [`crate::KeepAll`]); write the field to resolve it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub conflicts: BTreeMap<String, Vec<FieldValue>>,
}

impl Node {
    /// The node this node's `field` links to, if that field is a link.
    pub fn link(&self, field: &str) -> Option<&str> {
        self.value.get(field).and_then(link_target)
    }

    /// Every link of this node as `(field, target id)`, in field order.
    pub fn links(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.value.iter().filter_map(|(field, v)| link_target(v).map(|to| (field.as_str(), to)))
    }
}

/// The target of a link value `{"#": "other:id"}`, or `None` if `value` is
/// not a link.
pub fn link_target(value: &Value) -> Option<&str> {
    match value {
        Value::Object(map) if map.len() == 1 => map.get(LINK_KEY).and_then(Value::as_str),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stamp(t: u64, origin: &str, seq: u64) -> Stamp {
        Stamp { hlc: Hlc::new(t, 0), id: OpId::new(origin, seq) }
    }

    fn written(record: &NodeRecord) -> Vec<u8> {
        let mut out = Vec::new();
        record.encode_into(&mut out);
        out
    }

    #[test]
    fn the_written_record_is_what_serde_writes() {
        let (a, b, c) = (stamp(10, "a", 1), stamp(20, "b", 1), stamp(15, "c", 7));
        let single = NodeRecord {
            id: "n".into(),
            reset: Some(Reset { stamp: a.clone(), deleted: false }),
            fields: [("x", json!(1)), ("y", json!({"#": "m"}))]
                .into_iter()
                .map(|(f, v)| (f.to_owned(), vec![FieldValue { value: v, stamp: a.clone() }]))
                .collect(),
            pending: vec![],
        };
        let mut several = single.clone();
        several.fields.insert(
            "z".into(),
            vec![FieldValue { value: json!("old"), stamp: c.clone() }, FieldValue { value: json!(-5), stamp: b.clone() }],
        );
        several.pending.push(PendingSupersession { field: "x".into(), target: OpId::new("d", 3), by: c.clone() });
        let tombstone = NodeRecord { reset: Some(Reset { stamp: b, deleted: true }), ..NodeRecord::empty("gone") };
        for record in [NodeRecord::empty("e"), single, several, tombstone] {
            let bytes = written(&record);
            assert_eq!(bytes, crate::codec::encode(&record), "{record:?}");
            assert_eq!(crate::codec::decode::<NodeRecord>(&bytes, "record").unwrap(), record);
            // The direct reader takes it, without falling back to serde.
            let mut reader = crate::cbor::Reader::new(&bytes);
            assert_eq!(NodeRecord::read_compact(&mut reader).unwrap(), record);
            assert!(reader.is_done());
        }
    }

    /// The records of `the_written_record_is_what_serde_writes`, with a
    /// stamp of a 52-character origin.
    fn sample_records() -> Vec<NodeRecord> {
        let peer = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
        let (a, b, c) = (stamp(10, peer, 1), stamp(20, "b", 1), stamp(15, "c", 7));
        let mut several = NodeRecord::empty("user:00000001");
        several.reset = Some(Reset { stamp: a.clone(), deleted: false });
        several.fields.insert("x".into(), vec![FieldValue { value: json!(1.5), stamp: a.clone() }]);
        several.fields.insert(
            "z".into(),
            vec![FieldValue { value: json!("old"), stamp: c.clone() }, FieldValue { value: json!({"#": "m"}), stamp: b.clone() }],
        );
        several.pending.push(PendingSupersession { field: "x".into(), target: OpId::new("d", 3), by: c });
        let mut single = NodeRecord::empty("s");
        single.fields.insert("v".into(), vec![FieldValue { value: json!(-7), stamp: a }]);
        let tombstone = NodeRecord { reset: Some(Reset { stamp: b, deleted: true }), ..NodeRecord::empty("gone") };
        vec![NodeRecord::empty("e"), single, several, tombstone]
    }

    fn stored(record: &NodeRecord, origins: &[Arc<str>]) -> Vec<u8> {
        let mut out = Vec::new();
        record.encode_stored(&mut out, |origin| origins.iter().position(|o| o == origin).map(|i| i as u32));
        out
    }

    #[test]
    fn a_record_written_in_the_layout_with_its_id_reads_back_as_stored() {
        // Written by `encode_into` before the stored layout existed: a
        // create of two fields by origin "a" (seq 1, t=10) under "user:1".
        let bytes: &[u8] = &[
            0x85, 0x66, b'u', b's', b'e', b'r', b':', b'1', 0x82, 0x00, 0xf4, 0x81, 0x83, 0x1a, 0x00, 0x0a, 0x00, 0x00, 0x61, b'a', 0x01,
            0x82, 0x82, 0x64, b'n', b'a', b'm', b'e', 0x81, 0x82, 0x63, b'A', b'd', b'a', 0x00, 0x82, 0x61, b'x', 0x81, 0x82, 0xfa, 0x3f,
            0xc0, 0x00, 0x00, 0x00, 0x80,
        ];
        let mut record = NodeRecord::empty("user:1");
        let a = stamp(10, "a", 1);
        record.reset = Some(Reset { stamp: a.clone(), deleted: false });
        record.fields.insert("name".into(), vec![FieldValue { value: json!("Ada"), stamp: a.clone() }]);
        record.fields.insert("x".into(), vec![FieldValue { value: json!(1.5), stamp: a }]);
        assert_eq!(written(&record), bytes, "the layout with the id is unchanged");
        assert_eq!(NodeRecord::decode_stored("user:1", bytes, &[]).unwrap(), record);
        for record in sample_records() {
            assert_eq!(NodeRecord::decode_stored(&record.id, &written(&record), &[]).unwrap(), record);
        }
    }

    #[test]
    fn the_stored_layout_leaves_out_the_id_and_the_origins_in_the_table() {
        let peer: Arc<str> = Arc::from("12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN");
        // "b" is in the table, "c" (and the pending target "d") are not.
        let origins: Vec<Arc<str>> = vec![Arc::from("b"), peer.clone()];
        for record in sample_records() {
            let bytes = stored(&record, &origins);
            let read = NodeRecord::decode_stored(&record.id, &bytes, &origins).unwrap();
            assert_eq!(read, record);
            // Stamps read from the table share its origins.
            for stamp in read.contributing_ops() {
                if let Some(known) = origins.iter().find(|o| **o == stamp.id.origin) {
                    assert!(Arc::ptr_eq(known, &stamp.id.origin));
                }
            }
            // The id, and each origin in the table but one byte of it.
            let text_len = |s: &str| {
                let mut out = Vec::new();
                crate::cbor::text(&mut out, s);
                out.len()
            };
            let mut table: Vec<&Stamp> = record.contributing_ops();
            table.extend(record.pending.iter().map(|p| &p.by));
            table.sort();
            table.dedup();
            let saved = text_len(&record.id)
                + table.iter().filter(|s| origins.contains(&s.id.origin)).map(|s| text_len(&s.id.origin) - 1).sum::<usize>();
            assert_eq!(bytes.len() + saved, written(&record).len(), "{record:?}");
            // With no table, every origin is written as text.
            assert_eq!(NodeRecord::decode_stored(&record.id, &stored(&record, &[]), &[]).unwrap(), record);
            // The decoder of the layout with the id, which older builds
            // read records with, refuses both rather than misread them.
            assert!(NodeRecord::decode(&bytes).is_err());
            assert!(NodeRecord::decode(&stored(&record, &[])).is_err());
        }
    }

    #[test]
    fn a_stored_record_naming_an_origin_past_the_table_is_an_error() {
        let origins: Vec<Arc<str>> = vec![Arc::from("a"), Arc::from("b"), Arc::from("c")];
        let record = &sample_records()[2];
        let bytes = stored(record, &origins);
        let err = NodeRecord::decode_stored(&record.id, &bytes, &origins[..1]).unwrap_err();
        assert!(err.to_string().contains("origin 2 is not in the store's table of 1 origins"), "{err}");
        // An index that does not fit a usize on any target.
        let mut huge = Vec::new();
        crate::cbor::array(&mut huge, 4);
        crate::cbor::null(&mut huge);
        crate::cbor::array(&mut huge, 1);
        crate::cbor::array(&mut huge, 3);
        crate::cbor::unsigned(&mut huge, 1);
        crate::cbor::unsigned(&mut huge, u64::MAX);
        crate::cbor::unsigned(&mut huge, 1);
        crate::cbor::array(&mut huge, 0);
        crate::cbor::array(&mut huge, 0);
        assert!(NodeRecord::decode_stored("n", &huge, &origins).is_err());
        huge[5] = 0x00;
        huge.truncate(6);
        huge.extend_from_slice(&[0x01, 0x80, 0x80]);
        assert!(NodeRecord::decode_stored("n", &huge, &origins).is_ok());
    }

    #[test]
    fn damaged_stored_records_are_errors_never_panics() {
        let origins: Vec<Arc<str>> = vec![Arc::from("b"), Arc::from("12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN")];
        for record in sample_records() {
            let bytes = stored(&record, &origins);
            for cut in 0..bytes.len() {
                assert!(NodeRecord::decode_stored(&record.id, &bytes[..cut], &origins).is_err(), "cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(NodeRecord::decode_stored(&record.id, &longer, &origins).is_err());
            for at in 0..bytes.len() {
                for flip in [0x01u8, 0x20, 0x80, 0xff] {
                    let mut damaged = bytes.clone();
                    damaged[at] ^= flip;
                    let _ = NodeRecord::decode_stored(&record.id, &damaged, &origins);
                }
            }
        }
    }

    #[test]
    fn written_floats_read_back() {
        let mut record = NodeRecord::empty("f");
        record.fields.insert("x".into(), vec![FieldValue { value: json!(1.5), stamp: stamp(1, "a", 1) }]);
        record.fields.insert("y".into(), vec![FieldValue { value: json!(0.1), stamp: stamp(2, "a", 2) }]);
        assert_eq!(crate::codec::decode::<NodeRecord>(&written(&record), "record").unwrap(), record);
    }
}
