//! The core's CBOR decoders: JSON values ([`Reader::value`]), operations
//! (`read_compact`, `decode_body` and the serde fallback) and stored node
//! records. Operations arrive from peers; records and op-log bodies come
//! from the store, which may be a restored backup.

use crate::alloc::{within_bound, within_serde_bound};
use pluresdb_core::cbor::{self, Reader};
use pluresdb_core::{codec, FieldValue, Hlc, LastWriterWins, NodeRecord, OpId, OperationType, OperationWithMetadata, Reset, Stamp};
use pluresdb_core::{OpDigest, OpSignature, PendingSupersession, ReceivedOp};
use serde_json::{json, Value};
use std::sync::Arc;

fn encode_value(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    cbor::value(&mut out, value);
    out
}

/// A JSON value in CBOR: the direct reader and serde agree, and what either
/// reads re-encodes to bytes both read back as the same value.
pub fn check_value(input: &[u8]) {
    let fast = within_bound("cbor::Reader::value", input, || Reader::new(input).value());
    let serde = within_bound("codec::decode::<Value>", input, || codec::decode::<Value>(input, "value"));
    if let Ok(value) = &fast {
        // The direct reader takes a subset of what serde takes, and reads it
        // the same way (both stop after the first item).
        match &serde {
            Ok(theirs) => assert_eq!(value, theirs, "the direct reader and serde disagree"),
            Err(err) => panic!("the direct reader read {value:?} but serde refused it: {err}"),
        }
    }
    if let Ok(value) = serde {
        value_round_trips(&value);
    }
}

fn value_round_trips(value: &Value) {
    let bytes = encode_value(value);
    let mut reader = Reader::new(&bytes);
    assert_eq!(reader.value().as_ref(), Ok(value), "the direct reader does not read back what the writer wrote");
    assert!(reader.is_done(), "the writer wrote bytes the reader left over");
    assert_eq!(codec::decode::<Value>(&bytes, "value").ok().as_ref(), Some(value), "serde does not read back what the writer wrote");
}

/// Seeds for [`check_value`]: values of every kind the writer writes.
pub fn value_seeds() -> Vec<Vec<u8>> {
    let values = [
        json!(null),
        json!({"a": [0, 23, 24, 255, 256, 65_535, 65_536, 4_294_967_296u64, u64::MAX], "b": [-1, -25, -257, i64::MIN]}),
        json!({"f": [0.5, -0.0, 1.1, 3.4e38, 1e300, 16_777_217.0], "t": true, "n": null}),
        json!({"#": "user:1", "s": "x".repeat(300), "u": "é ✓ 🙂", "": []}),
        json!([[[[{"deep": [[[]]]}]]]]),
        json!([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        json!([{"": 0}, {"": 0}, {"": 0}]),
    ];
    let mut seeds: Vec<Vec<u8>> = values.iter().map(encode_value).collect();
    // What other encoders write and only serde reads: a half float, a tag,
    // indefinite lengths.
    seeds.push(vec![0xf9, 0x3c, 0x00]);
    seeds.push(vec![0xc1, 0x1a, 0x65, 0x53, 0xf1, 0x00]);
    seeds.push(vec![0x9f, 0x01, 0xbf, 0x61, b'a', 0x02, 0xff, 0xff]);
    seeds
}

fn sample_operation(seq: u64, operation: OperationType, data: Value) -> OperationWithMetadata {
    let mut op = OperationWithMetadata::new(operation, format!("user:{seq}"), data, "12D3KooWOrigin");
    op.id.seq = seq;
    op.timestamp = Hlc::new(1_700_000_000_000 + seq, (seq % 7) as u16);
    op
}

fn sample_operations() -> Vec<OperationWithMetadata> {
    let mut update = sample_operation(2, OperationType::UpdateNode, json!({"name": "Ada", "tags": ["a", "b"], "n": -3, "x": 2.5}));
    update.supersedes.insert("name".into(), vec![OpId::new("12D3KooWOrigin", 1), OpId::new("12D3KooWOther", 9)]);
    update.supersedes.insert("tags".into(), vec![]);
    update.prev = OpDigest([7; 32]);
    update.signature = Some(OpSignature([9; 64]));
    vec![
        sample_operation(1, OperationType::CreateNode, json!({"name": "Ada", "friend": {"#": "user:2"}})),
        update,
        sample_operation(3, OperationType::DeleteNode, Value::Null),
    ]
}

fn compact(op: &OperationWithMetadata) -> Vec<u8> {
    let mut out = Vec::new();
    op.encode_compact(&mut out);
    out
}

fn body(op: &OperationWithMetadata) -> Vec<u8> {
    let mut out = Vec::new();
    op.encode_body(&mut out);
    out
}

fn compact_round_trips(op: &OperationWithMetadata) {
    let bytes = compact(op);
    let mut reader = Reader::new(&bytes);
    assert_eq!(OperationWithMetadata::read_compact(&mut reader, None).as_ref(), Ok(op), "read_compact(encode_compact(op)) != op");
    assert!(reader.is_done());
    assert_eq!(codec::decode::<OperationWithMetadata>(&bytes, "operation").ok().as_ref(), Some(op), "serde misreads encode_compact");
}

fn body_round_trips(op: &OperationWithMetadata) {
    let bytes = body(op);
    assert_eq!(OperationWithMetadata::decode_body(op.id.clone(), &bytes).ok().as_ref(), Some(op), "decode_body(encode_body(op)) != op");
}

/// An operation in its compact form (as peers send it) and as an op-log
/// body (as the store keeps it): every decoder that takes the bytes gives
/// an operation that round-trips and that validation and hashing handle.
pub fn check_operation(input: &[u8]) {
    let mut reader = Reader::new(input);
    let fast = within_bound("read_compact", input, || OperationWithMetadata::read_compact(&mut reader, None));
    let fast_whole = fast.is_ok() && reader.is_done();
    let serde =
        within_serde_bound("codec::decode::<OperationWithMetadata>", input, || codec::decode::<OperationWithMetadata>(input, "operation"));
    let from_body = within_serde_bound("decode_body", input, || OperationWithMetadata::decode_body(OpId::new("12D3KooWOrigin", 5), input));
    if let Ok(op) = &fast {
        compact_round_trips(op);
        if fast_whole {
            assert_eq!(serde.as_ref().ok(), Some(op), "read_compact and serde disagree");
        }
        check_kept(input);
    }
    for op in serde.iter().chain(from_body.iter()) {
        compact_round_trips(op);
        body_round_trips(op);
        let _ = op.validate();
        let _ = op.digest();
    }
}

/// What a receiver keeps of an operation read from `input`
/// (`read_compact_kept`, then the check ahead): bytes marked as the
/// encoder's are exactly what it writes for the operation read, and the
/// body and digest kept are those of encoding it again, whichever form it
/// came in.
fn check_kept(input: &[u8]) {
    let mut reader = Reader::noting_form(input);
    let Ok((op, span)) = OperationWithMetadata::read_compact_kept(&mut reader, None) else {
        panic!("read_compact_kept refused what read_compact read")
    };
    let (encoded, encoded_body) = (compact(&op), body(&op));
    if span.is_some() {
        assert_eq!(&input[..reader.position()], &encoded[..], "bytes kept as the encoder's are not what it writes");
    }
    let checked = ReceivedOp::check_all_kept(vec![op.clone()], input, &[span], None);
    assert_eq!(checked[0].body(), Some(&encoded_body[..]), "the kept body is not the encoder's");
    assert_eq!(checked[0].digest(), op.digest(), "the kept digest is not the encoded operation's");
}

/// Seeds for [`check_operation`]: compact forms and op-log bodies, and
/// compact forms other than the encoder's (a long head, a float wider than
/// it needs), which a receiver encodes again instead of keeping.
pub fn operation_seeds() -> Vec<Vec<u8>> {
    let ops = sample_operations();
    let mut seeds: Vec<Vec<u8>> = ops.iter().flat_map(|op| [compact(op), body(op)]).collect();
    let mut long_head = compact(&ops[0]);
    long_head.splice(..1, [0x98, 0x09]);
    seeds.push(long_head);
    let mut wide_float = compact(&ops[1]);
    let at = wide_float.windows(5).position(|w| w == [0xfa, 0x40, 0x20, 0, 0]).expect("the update holds 2.5 as an f32");
    wide_float.splice(at..at + 5, [0xfb, 0x40, 0x04, 0, 0, 0, 0, 0, 0]);
    seeds.push(wide_float);
    seeds
}

/// The table of origins a store's records name by number, for the checks.
fn stored_origins() -> Vec<Arc<str>> {
    vec![Arc::from("a"), Arc::from("12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN")]
}

/// A node record as a store keeps it, in either layout: what decodes
/// re-encodes (with origins by number where the table has them) to bytes
/// that decode the same, and no input panics or allocates past the bound.
fn check_stored_node_record(input: &[u8]) {
    let origins = stored_origins();
    let decoded = within_serde_bound("NodeRecord::decode_stored", input, || NodeRecord::decode_stored("n", input, &origins));
    let Ok(record) = decoded else { return };
    let mut bytes = Vec::new();
    record.encode_stored(&mut bytes, |origin| origins.iter().position(|o| o == origin).map(|i| i as u32));
    let again = NodeRecord::decode_stored(&record.id, &bytes, &origins);
    assert_eq!(again.as_ref().ok(), Some(&record), "decode_stored(encode_stored(record)) != record");
}

/// A stored node record: what decodes re-encodes to a record that decodes
/// the same, and reading it (the view a resolver picks) never panics.
pub fn check_node_record(input: &[u8]) {
    check_stored_node_record(input);
    let decoded = within_serde_bound("NodeRecord::decode", input, || NodeRecord::decode(input));
    let Ok(record) = decoded else { return };
    let mut bytes = Vec::new();
    record.encode_into(&mut bytes);
    assert_eq!(NodeRecord::decode(&bytes).as_ref().ok(), Some(&record), "decode(encode(record)) != record");
    assert_eq!(codec::decode::<NodeRecord>(&bytes, "node record").ok().as_ref(), Some(&record), "serde misreads encode_into");
    let _ = record.view(&LastWriterWins);
    let _ = record.updated_at();
}

/// Seeds for [`check_node_record`]: a live record with a conflict and a
/// pending supersession, and a tombstone.
pub fn node_record_seeds() -> Vec<Vec<u8>> {
    let stamp = |ms, origin: &str, seq| Stamp { hlc: Hlc::new(ms, 0), id: OpId::new(origin, seq) };
    let mut live = NodeRecord::empty("user:1");
    live.reset = Some(Reset { stamp: stamp(10, "a", 1), deleted: false });
    live.fields.insert("name".into(), vec![FieldValue { value: json!("Ada"), stamp: stamp(10, "a", 1) }]);
    live.fields.insert(
        "age".into(),
        vec![FieldValue { value: json!(36), stamp: stamp(11, "a", 2) }, FieldValue { value: json!(37.5), stamp: stamp(11, "b", 1) }],
    );
    live.pending.push(PendingSupersession { field: "age".into(), target: OpId::new("c", 4), by: stamp(12, "b", 2) });
    let mut tombstone = NodeRecord::empty("user:2");
    tombstone.reset = Some(Reset { stamp: stamp(20, "a", 3), deleted: true });
    let origins = stored_origins();
    [live, tombstone, NodeRecord::empty("user:3")]
        .iter()
        .flat_map(|record| {
            let mut with_id = Vec::new();
            record.encode_into(&mut with_id);
            let mut stored = Vec::new();
            record.encode_stored(&mut stored, |origin| origins.iter().position(|o| o == origin).map(|i| i as u32));
            [with_id, stored]
        })
        .collect()
}
