//! Node records born of one operation, written from its bytes.
//!
//! Most operations a replica receives in a catch-up create a node it does
//! not hold. Merged into the empty record ([`crate::merge`]), such an
//! operation leaves a record that is a plain function of it: its stamp as
//! the only one (and as the reset for a create), and each field of its
//! value with the value it writes. The stored form of that record
//! ([`NodeRecord::encode_stored`]) repeats, field by field, the bytes of
//! the operation's op-log body: a name is the same text, a value the same
//! CBOR ([`crate::cbor::value`] writes both). So the writer need not build
//! the record (a map node and a vector of one value per field) only for the
//! store to walk it again: it names the operation ([`BornRecords`]), and
//! the store writes the record from the body ([`BornRecord::encode_stored`],
//! byte for byte what encoding the merged record writes).

use crate::merge;
use crate::node::NodeRecord;
use crate::operation::{OpId, OperationType, OperationWithMetadata, BODY_HEAD};
use crate::store::EncodedOps;
use crate::Error;
use std::sync::Arc;

/// The operations of a batch (by their place in its [`EncodedOps`]) each of
/// which alone makes the record of its node: see [`BornRecord`]. Only the
/// replica makes them, of operations it read as born records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BornRecords {
    ops: Vec<(usize, Parts)>,
}

impl BornRecords {
    /// The number of records.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Each record, read from `ops` (the batch's bodies), in node id order
    /// (a batch's records are: a store that numbers origins as it first
    /// writes them numbers them in that order). An operation that is not
    /// in `ops` or not a born record is an error (never the case for
    /// records the replica named).
    pub fn read<'a>(&self, ops: &'a EncodedOps) -> Result<Vec<BornRecord<'a>>, Error> {
        let mut records = self
            .ops
            .iter()
            .map(|&(at, parts)| {
                let (id, body) = ops.get(at).ok_or_else(|| unborn(at, "not in the batch"))?;
                BornRecord::from_parts(id, body, parts).ok_or_else(|| unborn(at, "not the body it was read from"))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        // Usually in order already (a batch of creates in id order).
        if !records.is_sorted_by(|a, b| a.node_id <= b.node_id) {
            records.sort_by(|a, b| a.node_id.cmp(b.node_id));
        }
        Ok(records)
    }

    /// Each record, built (for a store that keeps records as they are).
    pub fn records(&self, ops: &EncodedOps) -> Result<Vec<NodeRecord>, Error> {
        self.read(ops)?.iter().map(BornRecord::to_record).collect()
    }
}

/// Of the operations at each place of the batch's bodies with their parts.
impl FromIterator<(usize, Parts)> for BornRecords {
    fn from_iter<I: IntoIterator<Item = (usize, Parts)>>(ops: I) -> Self {
        Self { ops: ops.into_iter().collect() }
    }
}

fn unborn(at: usize, why: &str) -> Error {
    Error::Decode { what: "born record", reason: format!("operation {at} of the batch: {why}") }
}

/// Where a born record's parts lie in its operation's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Parts {
    create: bool,
    hlc: u64,
    node_id: (usize, usize),
    /// The value's fields (after the map's head), `fields` of them.
    data: (usize, usize),
    fields: usize,
}

impl Parts {
    /// Reads an op-log body ([`OperationWithMetadata::encode_body`]); `None`
    /// unless it is a create or an update of one field or more, that
    /// supersedes nothing, whose value is an object with its keys in
    /// strictly ascending order (as the encoder writes a map: the record's
    /// fields are in that order). Texts are not checked as UTF-8 here
    /// ([`BornRecord::from_parts`] checks the node id's).
    pub(crate) fn read(body: &[u8]) -> Option<Self> {
        let mut reader = crate::cbor::Reader::new(body);
        if body.first() != Some(&BODY_HEAD) || reader.array().ok()? != 7 {
            return None;
        }
        let create = match OperationType::from_code(u8::try_from(reader.unsigned().ok()?).ok()?)? {
            OperationType::CreateNode => true,
            OperationType::UpdateNode => false,
            OperationType::DeleteNode => return None,
        };
        let node_len = reader.text_bytes().ok()?.len();
        let node_id = (reader.position() - node_len, reader.position());
        let fields = reader.map().ok()?;
        if fields == 0 && !create {
            // Leaves the record blank: nothing is stored.
            return None;
        }
        let start = reader.position();
        let mut previous: Option<&[u8]> = None;
        for _ in 0..fields {
            let key = reader.text_bytes().ok()?;
            if previous.is_some_and(|previous| previous >= key) {
                return None;
            }
            previous = Some(key);
            reader.skip().ok()?;
        }
        let data = (start, reader.position());
        let hlc = reader.unsigned().ok()?;
        if reader.map().ok()? != 0 {
            return None;
        }
        Some(Self { create, hlc, node_id, data, fields })
    }
}

/// The record one operation makes of a node that had none: a create, or an
/// update of at least one field, that supersedes nothing, read from its
/// op-log body ([`OperationWithMetadata::encode_body`]).
#[derive(Clone, Copy, Debug)]
pub struct BornRecord<'a> {
    id: &'a OpId,
    node_id: &'a str,
    body: &'a [u8],
    parts: Parts,
}

impl<'a> BornRecord<'a> {
    /// Reads the operation `id` whose body is `body`; `None` unless it is a
    /// create or an update of one field or more, that supersedes nothing,
    /// whose value is an object with its keys in strictly ascending order
    /// (as the encoder writes a map: the record's fields are in that order).
    pub fn read(id: &'a OpId, body: &'a [u8]) -> Option<Self> {
        Self::from_parts(id, body, Parts::read(body)?)
    }

    /// Of `body`, whose parts [`Parts::read`] found.
    pub(crate) fn from_parts(id: &'a OpId, body: &'a [u8], parts: Parts) -> Option<Self> {
        let node_id = std::str::from_utf8(body.get(parts.node_id.0..parts.node_id.1)?).ok()?;
        body.get(parts.data.0..parts.data.1)?;
        Some(Self { id, node_id, body, parts })
    }

    /// The node's id.
    pub fn node_id(&self) -> &'a str {
        self.node_id
    }

    /// Appends the record as [`NodeRecord::encode_stored`] writes the
    /// record the operation makes (with the same `origin_index`).
    ///
    /// Fails, having written part of it, only if the body no longer reads
    /// as [`read`](Self::read) found it (never for records the replica
    /// named); the caller then writes nothing of the batch.
    pub fn encode_stored(&self, out: &mut Vec<u8>, mut origin_index: impl FnMut(&Arc<str>) -> Option<u32>) -> Result<(), Error> {
        use crate::cbor;
        let parts = &self.parts;
        let unread = || Error::Decode { what: "born record", reason: format!("{}: its fields no longer read", self.node_id) };
        cbor::array(out, 4);
        // The reset: the one stamp, not a delete.
        if parts.create {
            cbor::array(out, 2);
            cbor::unsigned(out, 0);
            cbor::boolean(out, false);
        } else {
            cbor::null(out);
        }
        cbor::array(out, 1);
        cbor::array(out, 3);
        cbor::unsigned(out, parts.hlc);
        match origin_index(&self.id.origin) {
            Some(i) => cbor::unsigned(out, u64::from(i)),
            None => cbor::text(out, &self.id.origin),
        }
        cbor::unsigned(out, self.id.seq);
        cbor::array(out, parts.fields);
        // Each field: [name, [[value, stamp 0]]], name and value as the
        // body holds them (read once already: they are whole).
        let data = self.body.get(parts.data.0..parts.data.1).ok_or_else(unread)?;
        let mut reader = crate::cbor::Reader::new(data);
        for _ in 0..parts.fields {
            let key_at = reader.position();
            reader.skip().map_err(|_| unread())?;
            let value_at = reader.position();
            reader.skip().map_err(|_| unread())?;
            out.push(0x82);
            out.extend_from_slice(&data[key_at..value_at]);
            out.extend_from_slice(&[0x81, 0x82]);
            out.extend_from_slice(&data[value_at..reader.position()]);
            out.push(0x00);
        }
        if !reader.is_done() {
            return Err(unread());
        }
        cbor::array(out, 0);
        Ok(())
    }

    /// The record itself: the operation decoded and merged into an empty
    /// record.
    pub fn to_record(&self) -> Result<NodeRecord, Error> {
        let op = OperationWithMetadata::decode_body(self.id.clone(), self.body)?;
        let mut record = NodeRecord::empty(self.node_id);
        merge::apply_owned(&mut record, op, |_| false);
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Hlc;
    use proptest::prelude::*;
    use serde_json::json;

    /// What the writer stores for `op` merged into an empty record.
    fn merged_stored(op: &OperationWithMetadata, origins: &[Arc<str>]) -> (NodeRecord, Vec<u8>) {
        let mut record = NodeRecord::empty(&op.node_id);
        merge::apply_owned(&mut record, op.clone(), |_| false);
        let mut out = Vec::new();
        record.encode_stored(&mut out, |origin| origins.iter().position(|o| o == origin).map(|i| i as u32));
        (record, out)
    }

    /// Reads `op`'s body as a born record and checks that it writes the
    /// merged record's bytes; whether it was one.
    fn check(op: &OperationWithMetadata, origins: &[Arc<str>]) -> bool {
        let mut body = Vec::new();
        op.encode_body(&mut body);
        let Some(born) = BornRecord::read(&op.id, &body) else {
            return false;
        };
        let (record, expected) = merged_stored(op, origins);
        let mut out = Vec::new();
        born.encode_stored(&mut out, |origin| origins.iter().position(|o| o == origin).map(|i| i as u32)).unwrap();
        assert_eq!(out, expected, "{op:?}");
        assert_eq!(born.node_id(), op.node_id);
        assert_eq!(born.to_record().unwrap(), record);
        assert_eq!(NodeRecord::decode_stored(&op.node_id, &out, origins).unwrap(), record);
        true
    }

    fn op(kind: OperationType, data: serde_json::Value) -> OperationWithMetadata {
        let mut op = OperationWithMetadata::new(kind, "user:00000001".into(), data, "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN");
        op.id.seq = 77;
        op.timestamp = Hlc::new(1_700_000_000_000, 5);
        op
    }

    #[test]
    fn a_create_or_update_of_fields_alone_is_born_in_the_merged_records_bytes() {
        let origins: Vec<Arc<str>> = vec![Arc::from("b"), Arc::from("12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN")];
        let value = json!({"name": "Ada", "email": "ada@example.com", "age": 36, "city": null, "team": {"#": "team:1"},
            "f": 0.1, "g": 1.5, "n": -7, "big": u64::MAX, "list": [1, "two", [3.25], {"x": false}]});
        for kind in [OperationType::CreateNode, OperationType::UpdateNode] {
            for origins in [&origins[..], &[]] {
                assert!(check(&op(kind, value.clone()), origins));
                assert!(check(&op(kind, json!({"only": 1})), origins));
            }
        }
        // A create of nothing stamps the reset alone.
        assert!(check(&op(OperationType::CreateNode, json!({})), &origins));
    }

    #[test]
    fn what_is_not_born_of_one_operation_is_not_read_as_born() {
        // An update of nothing leaves the record blank; a delete is a
        // tombstone; supersessions may leave notes.
        assert!(!check(&op(OperationType::UpdateNode, json!({})), &[]));
        assert!(!check(&op(OperationType::DeleteNode, serde_json::Value::Null), &[]));
        let mut superseding = op(OperationType::UpdateNode, json!({"a": 1}));
        superseding.supersedes.insert("a".into(), vec![OpId::new("other", 1)]);
        assert!(!check(&superseding, &[]));
        // A body whose keys are not in ascending order (not what the
        // encoder writes) or that is not a body.
        let mut body = Vec::new();
        op(OperationType::CreateNode, json!({"a": 1, "b": 2})).encode_body(&mut body);
        let at = body.windows(2).position(|w| w == b"\x61a").unwrap();
        body[at + 1] = b'c';
        let id = OpId::new("o", 1);
        assert!(BornRecord::read(&id, &body).is_none());
        assert!(BornRecord::read(&id, &body[..body.len() / 2]).is_none());
        assert!(BornRecord::read(&id, &[]).is_none());
    }

    #[test]
    fn a_body_that_no_longer_reads_as_its_parts_fails_the_record_rather_than_cutting_it_short() {
        let op_with = |data| op(OperationType::CreateNode, data);
        let op = op_with(json!({"a": 1, "b": 2}));
        let mut body = Vec::new();
        op.encode_body(&mut body);
        let parts = Parts::read(&body).unwrap();
        let mut out = Vec::new();
        BornRecord::from_parts(&op.id, &body, parts).unwrap().encode_stored(&mut out, |_| None).unwrap();
        // The second key's head now claims more text than the value holds.
        let mut changed = body.clone();
        let at = changed.windows(2).position(|w| w == b"\x61b").unwrap();
        changed[at] = 0x6f;
        let born = BornRecord::from_parts(&op.id, &changed, parts).unwrap();
        assert!(matches!(born.encode_stored(&mut Vec::new(), |_| None), Err(Error::Decode { what: "born record", .. })));
        // Or the parts' two fields end before their span does (parts of
        // `{"a": 1, "b": 300}` over the body of `{"a": 1, "b": 2, "c": 3}`).
        let long = op_with(json!({"a": 1, "b": 300}));
        let mut long_body = Vec::new();
        long.encode_body(&mut long_body);
        let mut other = Vec::new();
        op_with(json!({"a": 1, "b": 2, "c": 3})).encode_body(&mut other);
        let born = BornRecord::from_parts(&long.id, &other, Parts::read(&long_body).unwrap()).unwrap();
        assert!(matches!(born.encode_stored(&mut Vec::new(), |_| None), Err(Error::Decode { what: "born record", .. })));
    }

    #[test]
    fn born_records_name_operations_of_the_batch() {
        let ops = [op(OperationType::CreateNode, json!({"a": 1})), op(OperationType::DeleteNode, serde_json::Value::Null)];
        let mut encoded = EncodedOps::new();
        for op in &ops {
            encoded.push(op);
        }
        let parts = |at: usize| Parts::read(encoded.get(at).unwrap().1);
        let born: BornRecords = [(0, parts(0).unwrap())].into_iter().collect();
        assert_eq!(born.records(&encoded).unwrap(), vec![merged_stored(&ops[0], &[]).0]);
        assert_eq!(born.len(), 1);
        assert_eq!(parts(1), None, "a delete");
        let born: BornRecords = [(0, parts(0).unwrap()), (2, parts(0).unwrap())].into_iter().collect();
        assert!(born.read(&encoded).is_err(), "past the batch");
    }

    /// Operations of every kind with random values (nested, floats, nulls,
    /// many fields) and supersessions.
    fn arb_op() -> impl Strategy<Value = OperationWithMetadata> {
        let origin = prop_oneof![Just("p".to_string()), "[a-z]{1,30}", "[a-z]{250,260}"];
        let fields = proptest::collection::btree_map(".{0,12}", crate::cbor::tests::arb_json(), 0..40);
        let data = prop_oneof![
            4 => fields.prop_map(|fields| serde_json::Value::Object(fields.into_iter().collect())),
            1 => crate::cbor::tests::arb_json(),
        ];
        let supersedes = proptest::collection::btree_map(
            ".{0,4}",
            proptest::collection::vec((origin.clone(), 1u64..9).prop_map(|(o, s)| OpId::new(o, s)), 1..3),
            0..2,
        );
        (origin, any::<u64>(), 0u8..3, ".{1,20}", data, any::<u64>(), prop::bool::weighted(0.8), supersedes).prop_map(
            |(origin, seq, code, node_id, data, hlc, plain, supersedes)| {
                let kind = OperationType::from_code(code).unwrap_or(OperationType::CreateNode);
                let mut op = OperationWithMetadata::new(kind, node_id, data, origin);
                op.id.seq = seq;
                op.timestamp = Hlc::from_u64(hlc);
                if !plain {
                    op.supersedes = supersedes;
                }
                op
            },
        )
    }

    #[test]
    fn a_born_record_writes_what_the_merge_and_encoder_write() {
        use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
        let config = Config { cases: 2048, failure_persistence: None, ..Config::default() };
        let mut runner = TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
        runner
            .run(&(arb_op(), any::<bool>()), |(op, known)| {
                let origins: Vec<Arc<str>> = if known { vec![Arc::from("q"), op.id.origin.clone()] } else { Vec::new() };
                let born = check(&op, &origins);
                // Born exactly when the operation is a create, or an update
                // of fields, of an object, superseding nothing.
                let fields = op.data.as_object().map(|fields| fields.len());
                let expected = op.supersedes.is_empty()
                    && match op.operation {
                        OperationType::CreateNode => fields.is_some(),
                        OperationType::UpdateNode => fields.is_some_and(|n| n > 0),
                        OperationType::DeleteNode => false,
                    };
                prop_assert_eq!(born, expected, "{:?}", op);
                Ok(())
            })
            .unwrap();
    }
}
