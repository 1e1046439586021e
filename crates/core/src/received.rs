//! Operations received from a peer, checked ahead of the replica.
//!
//! Before a received operation can be applied, the replica encodes it
//! (for its digest and for the op log), hashes it, and checks the
//! signatures of the batch. None of that depends on what the replica
//! holds, so a node does it on another thread while its writer commits
//! the previous batch ([`ReceivedOp::check_all`]); the writer then only
//! links the chain, merges and writes. Operations that were not checked
//! ahead ([`ReceivedOp::unchecked`]) are checked by the replica itself, as
//! before.

use crate::operation::{CompactSpan, OperationWithMetadata};
use crate::signing::{OpDigest, OpVerifier};
use crate::store::EncodedOps;
use std::sync::Arc;

/// A received operation, possibly with its encoding, digest and signature
/// check already done.
#[derive(Clone, Debug)]
pub struct ReceivedOp {
    /// The operation as it arrived.
    pub op: OperationWithMetadata,
    checked: Option<Checked>,
}

#[derive(Clone, Debug)]
struct Checked {
    /// The op-log bodies ([`OperationWithMetadata::encode_body`], signature
    /// included) of the batch it came in, shared by the batch's operations
    /// (one buffer to free instead of one per operation, on the thread
    /// that applies them), and which of them is its own.
    bodies: Arc<EncodedOps>,
    index: usize,
    digest: OpDigest,
    signature: SignatureCheck,
    /// It passed [`OperationWithMetadata::validate`].
    valid: bool,
}

/// What the check ahead found of an operation's signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureCheck {
    /// The operation carries none.
    Unsigned,
    /// It verifies against its origin's key.
    Valid,
    /// It does not (or the origin names no key).
    Invalid,
    /// Nobody checked it (no verifier was given).
    NotChecked,
}

impl ReceivedOp {
    /// `op`, to be checked by the replica that applies it.
    pub fn unchecked(op: OperationWithMetadata) -> Self {
        Self { op, checked: None }
    }

    /// Validates, encodes and hashes every operation and checks every signature with
    /// `verifier`, which must be the verifier of the replica that will
    /// apply them (it trusts these results instead of checking again).
    /// Without a verifier the signatures are left [`SignatureCheck::NotChecked`].
    pub fn check_all(ops: Vec<OperationWithMetadata>, verifier: Option<&dyn OpVerifier>) -> Vec<ReceivedOp> {
        Self::check_all_kept(ops, &[], &[], verifier)
    }

    /// [`check_all`](Self::check_all) of operations read from `wire` by
    /// [`OperationWithMetadata::read_compact_kept`], `spans[i]` what it
    /// gave for `ops[i]`: an operation received in exactly the form the
    /// encoder writes keeps those bytes as its op-log body and is hashed
    /// from them, without being encoded again; the others (no span, or
    /// none given) are encoded as [`check_all`](Self::check_all) does. The
    /// bodies and digests are the same either way.
    pub fn check_all_kept(
        ops: Vec<OperationWithMetadata>,
        wire: &[u8],
        spans: &[Option<CompactSpan>],
        verifier: Option<&dyn OpVerifier>,
    ) -> Vec<ReceivedOp> {
        // Each kept operation's span, fields after its id and digest's
        // message.
        let kept: Vec<_> = ops
            .iter()
            .enumerate()
            .map(|(i, op)| {
                let span = spans.get(i).copied().flatten()?;
                let (compact, fields) = span.parts(wire)?;
                let message = crate::signing::digest_message(compact, op.signature.is_some())?;
                Some((span, fields, message))
            })
            .collect();
        // Room for every body: a kept one is its fields behind a 1-byte head.
        let bytes = kept.iter().map(|kept| kept.map_or(160, |(_, fields, _)| 1 + fields.len())).sum();
        let mut encoded = EncodedOps::with_capacity(ops.len(), bytes);
        // The kept ones' digests, hashed side by side into their places;
        // the others' are computed as each is encoded.
        let mut digests = vec![OpDigest::default(); ops.len()];
        crate::hash_batch::hash_into(|i| kept[i].map(|(_, _, message)| message), &mut digests);
        for ((op, kept), digest) in ops.iter().zip(&kept).zip(&mut digests) {
            match kept {
                Some((_, fields, _)) => encoded.push_fields(&op.id, fields),
                None => *digest = encoded.push_with_digest(op),
            }
            // What the kept bytes stand for: the encoder's output.
            #[cfg(debug_assertions)]
            {
                let mut body = Vec::new();
                op.encode_body(&mut body);
                debug_assert_eq!(encoded.get(encoded.len() - 1).map(|(_, kept)| kept), Some(&body[..]), "{op:?}");
                debug_assert_eq!(*digest, op.digest(), "{op:?}");
            }
        }
        let mut checks: Vec<SignatureCheck> = ops
            .iter()
            .map(|op| match (op.signature.is_some(), verifier.is_some()) {
                (false, _) => SignatureCheck::Unsigned,
                (true, true) => SignatureCheck::Valid,
                (true, false) => SignatureCheck::NotChecked,
            })
            .collect();
        if let Some(verifier) = verifier {
            // One batch check. A verifier names one failing item per call:
            // that one is marked, the rest of its origin is left to the
            // replica (as the replica's own check refuses an origin's run
            // at its first bad signature), and the others are checked
            // again. So a batch costs at most one check per origin.
            let mut pending: Vec<usize> = (0..ops.len()).filter(|&i| checks[i] == SignatureCheck::Valid).collect();
            while !pending.is_empty() {
                let items: Vec<_> = pending.iter().filter_map(|&i| Some((&*ops[i].id.origin, digests[i], ops[i].signature?))).collect();
                let Err(bad) = verifier.verify(&items) else { break };
                let Some(&failed) = pending.get(bad) else {
                    // A verifier that names no item: trust none of them.
                    for &i in &pending {
                        checks[i] = SignatureCheck::NotChecked;
                    }
                    break;
                };
                checks[failed] = SignatureCheck::Invalid;
                let origin = &ops[failed].id.origin;
                pending.retain(|&i| {
                    if i != failed && ops[i].id.origin != *origin {
                        return true;
                    }
                    if i != failed {
                        checks[i] = SignatureCheck::NotChecked;
                    }
                    false
                });
            }
        }
        let bodies = Arc::new(encoded);
        ops.into_iter()
            .enumerate()
            .map(|(i, op)| {
                // What a kept operation's bytes tell of its sizes, which
                // validation then does not compute.
                let known = kept[i].map(|(span, _, _)| span.sizes());
                let valid = op.validate_with(known).is_ok();
                #[cfg(debug_assertions)]
                debug_assert_eq!(valid, op.validate().is_ok(), "{op:?}");
                let checked = Checked { bodies: bodies.clone(), index: i, digest: digests[i], signature: checks[i], valid };
                Self { op, checked: Some(checked) }
            })
            .collect()
    }

    /// Its digest: from the check ahead, else computed now.
    pub fn digest(&self) -> OpDigest {
        match &self.checked {
            Some(checked) => checked.digest,
            None => self.op.digest(),
        }
    }

    /// Its op-log body from the check ahead (the bytes it was received in,
    /// or its encoding); `None` when it was not checked ahead.
    pub fn body(&self) -> Option<&[u8]> {
        let checked = self.checked.as_ref()?;
        checked.bodies.get(checked.index).map(|(_, body)| body)
    }

    /// Whether the check ahead found it valid
    /// ([`OperationWithMetadata::validate`]); `false` when it was not
    /// checked ahead or is invalid (the replica then validates it, and
    /// reports why).
    pub fn is_valid(&self) -> bool {
        self.checked.as_ref().is_some_and(|checked| checked.valid)
    }

    /// What the check ahead found of its signature.
    pub fn signature_check(&self) -> SignatureCheck {
        match &self.checked {
            Some(checked) => checked.signature,
            None if self.op.signature.is_none() => SignatureCheck::Unsigned,
            None => SignatureCheck::NotChecked,
        }
    }

    /// Appends it to `encoded` (reusing the body of the check ahead) and
    /// returns its digest.
    pub(crate) fn push_into(&self, encoded: &mut EncodedOps) -> OpDigest {
        match &self.checked {
            Some(checked) => match checked.bodies.get(checked.index) {
                Some((_, body)) => {
                    encoded.push_encoded(&self.op.id, body);
                    checked.digest
                }
                // Unreachable: `check_all` encoded every operation.
                None => encoded.push_with_digest(&self.op),
            },
            None => encoded.push_with_digest(&self.op),
        }
    }
}

/// The op-log bodies of a batch's operations as they are kept, collected
/// without copying while they are a buffer's own, in its order.
///
/// The check ahead encodes a received batch into one buffer, shared by its
/// operations; the replica keeps those that continue its chains (usually
/// all of them, in the order they came: `check_runs`), then applies those
/// not held back (`apply_with`, from the buffer `check_runs` made). While
/// each body kept is the next of the buffer, nothing is copied, and
/// [`finish`](Self::finish) hands the buffer itself over, cut after the last
/// kept one (a shared buffer once every operation that shared it is gone).
/// The first that is not (another origin, a skipped duplicate, an operation
/// not checked ahead) copies the ones before it, with room for the rest, and
/// from then on they are appended.
pub(crate) struct KeptBodies {
    source: Source,
    /// `source[..mirrored]` are the bodies kept so far, while not `copying`.
    mirrored: usize,
    copying: bool,
    encoded: EncodedOps,
    /// Room for the bodies of every operation of the batch (operations,
    /// bytes), made when copying starts: a batch whose operations came in
    /// several buffers (two received batches applied in one commit) is
    /// then copied once, not regrown as the second buffer's are appended.
    room: (usize, usize),
}

/// The buffer a [`KeptBodies`] mirrors.
enum Source {
    Shared(Arc<EncodedOps>),
    Owned(EncodedOps),
    None,
}

impl Source {
    fn buffer(&self) -> Option<&EncodedOps> {
        match self {
            Source::Shared(shared) => Some(shared),
            Source::Owned(own) => Some(own),
            Source::None => None,
        }
    }
}

impl KeptBodies {
    /// For the received batch `ops`; `guess` is a body size for operations
    /// not checked ahead.
    pub(crate) fn new(ops: &[ReceivedOp], guess: usize) -> Self {
        match ops.first().and_then(|first| first.checked.as_ref()) {
            Some(checked) => {
                // Each buffer's bytes once (its operations come together),
                // and a guess for any operation not checked ahead.
                let mut bytes = 0;
                let mut last: Option<&Arc<EncodedOps>> = None;
                for received in ops {
                    match &received.checked {
                        Some(checked) if last.is_some_and(|last| Arc::ptr_eq(last, &checked.bodies)) => {}
                        Some(checked) => {
                            bytes += checked.bodies.byte_len();
                            last = Some(&checked.bodies);
                        }
                        None => bytes += guess,
                    }
                }
                let mut kept = Self::mirroring(Source::Shared(checked.bodies.clone()));
                kept.room = (ops.len(), bytes);
                kept
            }
            None => Self::copying(ops.len(), ops.len() * guess),
        }
    }

    /// Mirroring `bodies`, which the caller keeps in its order.
    pub(crate) fn over(bodies: EncodedOps) -> Self {
        Self::mirroring(Source::Owned(bodies))
    }

    /// Of nothing: every body is appended, in room for `ops` of them holding
    /// `bytes` in all.
    pub(crate) fn copying(ops: usize, bytes: usize) -> Self {
        Self { source: Source::None, mirrored: 0, copying: true, encoded: EncodedOps::with_capacity(ops, bytes), room: (ops, bytes) }
    }

    fn mirroring(source: Source) -> Self {
        Self { source, mirrored: 0, copying: false, encoded: EncodedOps::new(), room: (0, 0) }
    }

    /// The buffer mirrored, if any.
    pub(crate) fn source(&self) -> Option<&EncodedOps> {
        self.source.buffer()
    }

    /// How many bodies are kept so far.
    pub(crate) fn len(&self) -> usize {
        if self.copying {
            self.encoded.len()
        } else {
            self.mirrored
        }
    }

    /// The `at`-th body kept, with its operation's id.
    pub(crate) fn get(&self, at: usize) -> Option<(&crate::OpId, &[u8])> {
        if self.copying {
            self.encoded.get(at)
        } else {
            self.source.buffer().filter(|_| at < self.mirrored).and_then(|source| source.get(at))
        }
    }

    /// Keeps the `at`-th body of the buffer mirrored as the next.
    pub(crate) fn keep(&mut self, at: usize) {
        if !self.copying && at == self.mirrored {
            self.mirrored += 1;
            return;
        }
        self.copy();
        if let Some((id, body)) = self.source.buffer().and_then(|source| source.get(at)) {
            self.encoded.push_encoded(id, body);
        }
    }

    /// Where a body that is not the buffer's is appended (the ones kept
    /// before it are copied there first).
    pub(crate) fn appended(&mut self) -> &mut EncodedOps {
        self.copy();
        &mut self.encoded
    }

    /// Keeps `received`'s body and returns its digest.
    pub(crate) fn push(&mut self, received: &ReceivedOp) -> OpDigest {
        if let (Source::Shared(shared), Some(checked)) = (&self.source, &received.checked) {
            if Arc::ptr_eq(shared, &checked.bodies) {
                let digest = checked.digest;
                self.keep(checked.index);
                return digest;
            }
        }
        received.push_into(self.appended())
    }

    /// Starts copying, in room for the whole buffer (and the rest of the
    /// batch), unless it did.
    fn copy(&mut self) {
        if !self.copying {
            if let Some(source) = self.source() {
                let (ops, bytes) = self.room;
                self.encoded = source.copy_first(self.mirrored, ops.max(source.len()), bytes.max(source.byte_len()));
            }
            self.copying = true;
        }
    }

    /// The bodies kept, in the order they were. Free of copying while they
    /// were the buffer's own, and for a shared buffer, when every operation
    /// that shared it has been dropped by now.
    pub(crate) fn finish(self) -> EncodedOps {
        if self.copying {
            return self.encoded;
        }
        match self.source {
            Source::Shared(shared) => match Arc::try_unwrap(shared) {
                Ok(mut own) => {
                    own.truncate(self.mirrored);
                    own
                }
                Err(shared) => shared.copy_first(self.mirrored, self.mirrored, shared.byte_len()),
            },
            Source::Owned(mut own) => {
                own.truncate(self.mirrored);
                own
            }
            Source::None => self.encoded,
        }
    }
}

#[cfg(all(test, feature = "test-support"))]
mod tests {
    use super::*;
    use crate::operation::OperationType;
    use crate::signing::stand_in::{NamedSigner, NamedVerifier};
    use crate::signing::{OpSignature, OpSigner};
    use crate::OpId;

    fn signed(origin: &str, seq: u64, sign: bool) -> OperationWithMetadata {
        let mut op = OperationWithMetadata::new(OperationType::CreateNode, format!("n:{seq}"), serde_json::json!({"v": seq}), origin);
        op.id.seq = seq;
        if sign {
            op.signature = Some(NamedSigner(origin.into()).sign(&op.digest()));
        }
        op
    }

    #[test]
    fn the_check_ahead_gives_the_digests_and_bodies_the_replica_would_compute() {
        let ops = vec![signed("a", 1, false), signed("a", 2, true), signed("b", 1, true)];
        let checked = ReceivedOp::check_all(ops.clone(), Some(&NamedVerifier));
        let (mut ahead, mut here) = (crate::store::EncodedOps::new(), crate::store::EncodedOps::new());
        for (received, op) in checked.iter().zip(&ops) {
            assert_eq!(received.digest(), op.digest());
            assert_eq!(received.push_into(&mut ahead), here.push_with_digest(op));
        }
        for i in 0..ops.len() {
            assert_eq!(ahead.get(i), here.get(i));
        }
        let checks: Vec<_> = checked.iter().map(ReceivedOp::signature_check).collect();
        assert_eq!(checks, [SignatureCheck::Unsigned, SignatureCheck::Valid, SignatureCheck::Valid]);
    }

    /// Two batches checked ahead apart and applied in one commit: the
    /// bodies kept are the batch's, copied into room made once for both.
    #[test]
    fn bodies_of_two_buffers_are_copied_once_into_room_for_both() {
        let first: Vec<_> = (1..=40).map(|seq| signed("a", seq, seq == 40)).collect();
        let second: Vec<_> = (41..=90).map(|seq| signed("a", seq, seq == 90)).collect();
        let mut batch = ReceivedOp::check_all(first.clone(), Some(&NamedVerifier));
        batch.extend(ReceivedOp::check_all(second.clone(), Some(&NamedVerifier)));
        let mut kept = KeptBodies::new(&batch, 128);
        for received in &batch {
            assert_eq!(kept.push(received), received.digest());
        }
        let (ops, bytes) = (kept.encoded.len(), kept.encoded.byte_len());
        assert_eq!(kept.encoded.capacity(), (ops, bytes), "room for both buffers at once, not regrown");
        drop(batch);
        let finished = kept.finish();
        let mut expected = crate::store::EncodedOps::new();
        for op in first.iter().chain(&second) {
            expected.push(op);
        }
        assert_eq!(finished.len(), 90);
        for i in 0..90 {
            assert_eq!(finished.get(i), expected.get(i));
        }
    }

    /// Any operation, with every width of head in its id and fields.
    fn arb_op() -> impl proptest::strategy::Strategy<Value = OperationWithMetadata> {
        use proptest::prelude::*;
        let origin = prop_oneof![Just("p".to_string()), "[a-z]{1,30}", "[a-z]{250,260}"];
        let id = (origin.clone(), any::<u64>()).prop_map(|(origin, seq)| OpId::new(origin, seq));
        let supersedes = proptest::collection::btree_map(".{0,8}", proptest::collection::vec(id.clone(), 0..3), 0..30);
        let signature = proptest::option::of(any::<[u8; 32]>().prop_map(|half| {
            let mut signature = [0u8; 64];
            signature[..32].copy_from_slice(&half);
            OpSignature(signature)
        }));
        (id, 0u8..3, ".{1,40}", crate::cbor::tests::arb_json(), any::<u64>(), supersedes, any::<[u8; 32]>(), signature).prop_map(
            |(id, code, node_id, data, hlc, supersedes, prev, signature)| OperationWithMetadata {
                id,
                operation: OperationType::from_code(code).unwrap_or(OperationType::CreateNode),
                node_id,
                data,
                timestamp: crate::Hlc::from_u64(hlc),
                supersedes,
                prev: OpDigest(prev),
                signature,
            },
        )
    }

    /// Checks `ops[i]` read from `wire` with `spans[i]` as the replica
    /// would: the same bodies and digests as encoding them again.
    fn assert_kept_as_encoded(ops: &[OperationWithMetadata], wire: &[u8], spans: &[Option<CompactSpan>]) {
        let checked = ReceivedOp::check_all_kept(ops.to_vec(), wire, spans, Some(&NamedVerifier));
        let again = ReceivedOp::check_all(ops.to_vec(), Some(&NamedVerifier));
        for ((kept, encoded), op) in checked.iter().zip(&again).zip(ops) {
            let mut body = Vec::new();
            op.encode_body(&mut body);
            assert_eq!(kept.body(), Some(&body[..]), "{op:?}");
            assert_eq!(encoded.body(), Some(&body[..]), "{op:?}");
            assert_eq!(kept.digest(), op.digest(), "{op:?}");
            assert_eq!(kept.signature_check(), encoded.signature_check());
            assert_eq!(kept.is_valid(), op.validate().is_ok(), "{op:?}");
            // A record born of it is written from the body kept in the
            // bytes of the record merged from it.
            if let Some(born) = crate::BornRecord::read(&op.id, &body) {
                let mut record = crate::NodeRecord::empty(&op.node_id);
                crate::merge::apply_owned(&mut record, op.clone(), |_| false);
                let (mut merged, mut written) = (Vec::new(), Vec::new());
                record.encode_stored(&mut merged, |_| None);
                born.encode_stored(&mut written, |_| None).unwrap();
                assert_eq!(written, merged, "{op:?}");
            }
        }
    }

    #[test]
    fn a_kept_operation_is_valid_exactly_when_it_validates() {
        // Values around the limit, in escaped control characters (six bytes
        // of JSON each) and in plain ones.
        let limit = crate::operation::MAX_VALUE_BYTES;
        let values = [
            serde_json::json!({"s": "a".repeat(limit - 8)}),
            serde_json::json!({"s": "a".repeat(limit - 7)}),
            serde_json::json!({"s": "\u{1}".repeat((limit - 8) / 6)}),
            serde_json::json!({"s": "\u{1}".repeat((limit - 8) / 6 + 1)}),
            serde_json::json!({"n": 1}),
            serde_json::json!(["not", "an", "object"]),
        ];
        let mut ops = Vec::new();
        let mut wire = vec![0x80 + values.len() as u8];
        for (i, value) in values.into_iter().enumerate() {
            let mut op = signed("a", 1 + i as u64, false);
            op.data = value;
            op.encode_compact(&mut wire);
            ops.push(op);
        }
        let mut reader = crate::cbor::Reader::noting_form(&wire);
        assert_eq!(reader.array(), Ok(ops.len()));
        let spans: Vec<_> = ops.iter().map(|_| OperationWithMetadata::read_compact_kept(&mut reader, None).unwrap().1).collect();
        assert!(spans.iter().all(Option::is_some));
        let checked = ReceivedOp::check_all_kept(ops.clone(), &wire, &spans, None);
        let valid: Vec<bool> = checked.iter().map(ReceivedOp::is_valid).collect();
        assert_eq!(valid, [true, false, true, false, true, false]);
        for (received, op) in checked.iter().zip(&ops) {
            assert_eq!(received.is_valid(), op.validate().is_ok());
        }
    }

    #[test]
    fn operations_received_as_the_encoder_writes_them_keep_those_bytes() {
        use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
        let config = Config { cases: 512, failure_persistence: None, ..Config::default() };
        let mut runner = TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
        let pair = (arb_op(), arb_op());
        runner
            .run(&pair, |(first, second)| {
                // Two operations in an array, as a message holds them.
                let mut wire = vec![0x82];
                first.encode_compact(&mut wire);
                second.encode_compact(&mut wire);
                let mut reader = crate::cbor::Reader::noting_form(&wire);
                assert_eq!(reader.array(), Ok(2));
                let mut ops = Vec::new();
                let mut spans = Vec::new();
                for expected in [&first, &second] {
                    let start = reader.position();
                    let (op, span) = OperationWithMetadata::read_compact_kept(&mut reader, None).unwrap();
                    assert_eq!(&op, expected);
                    let span = span.expect("the encoder's bytes are canonical");
                    let mut compact = Vec::new();
                    op.encode_compact(&mut compact);
                    let (kept, fields) = span.parts(&wire).unwrap();
                    assert_eq!(kept, &compact[..]);
                    assert_eq!(start + compact.len(), reader.position());
                    assert_eq!(fields[0], compact[compact.len() - fields.len()]);
                    ops.push(op);
                    spans.push(Some(span));
                }
                assert!(reader.is_done());
                assert_kept_as_encoded(&ops, &wire, &spans);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn operations_received_in_another_form_are_encoded_again() {
        let mut op = OperationWithMetadata::new(
            OperationType::UpdateNode,
            "node".into(),
            serde_json::json!({"k1": 1, "k2": -1, "kf": 0.5, "ks": "text"}),
            "origin",
        );
        op.id.seq = 5;
        op.timestamp = crate::Hlc::new(1_700_000_000_000, 3);
        op.supersedes.insert("k1".into(), vec![OpId::new("other", 3)]);
        op.supersedes.insert("k2".into(), vec![OpId::new("other", 4)]);
        op.prev = OpDigest([7; 32]);
        // Each: bytes of the encoder's form and what a peer may send instead.
        let variants: [(&[u8], &[u8]); 14] = [
            // the operation's array head
            (b"\x89\x66", b"\x98\x09\x66"),
            // the sequence number
            (b"origin\x05", b"origin\x18\x05"),
            // the node id's length
            (b"\x64node", b"\x78\x04node"),
            // the value's map head
            (b"\xa4\x62k1", b"\xb8\x04\x62k1"),
            // the value's keys out of order
            (b"\x62k1\x01\x62k2\x20", b"\x62k2\x20\x62k1\x01"),
            // a key twice
            (b"\x62k1\x01\x62k2\x20", b"\x62k1\x01\x62k1\x20"),
            // a negative integer
            (b"\x62k2\x20", b"\x62k2\x38\x00"),
            // an integer
            (b"\x62k1\x01", b"\x62k1\x19\x00\x01"),
            // an f64 that an f32 holds
            (b"\xfa\x3f\x00\x00\x00", b"\xfb\x3f\xe0\x00\x00\x00\x00\x00\x00"),
            // NaN (null in JSON)
            (b"\xfa\x3f\x00\x00\x00", b"\xfa\x7f\xc0\x00\x00"),
            // a text's length
            (b"\x64text", b"\x79\x00\x04text"),
            // superseded fields out of order
            (b"\x62k1\x81\x82\x65other\x03\x62k2\x81\x82\x65other\x04", b"\x62k2\x81\x82\x65other\x04\x62k1\x81\x82\x65other\x03"),
            // prev's length
            (b"\x58\x20\x07", b"\x59\x00\x20\x07"),
            // a superseded list's head
            (b"\x62k1\x81\x82", b"\x62k1\x98\x01\x82"),
        ];
        for signature in [None, Some(NamedSigner("origin".into()).sign(&op.digest()))] {
            op.signature = signature;
            let mut canonical = Vec::new();
            op.encode_compact(&mut canonical);
            let mut variants = variants.to_vec();
            if signature.is_some() {
                variants.push((b"\x58\x40", b"\x59\x00\x40"));
            }
            for (ours, theirs) in variants {
                let at =
                    canonical.windows(ours.len()).position(|w| w == ours).unwrap_or_else(|| panic!("{ours:02x?} not in {canonical:02x?}"));
                assert_eq!(canonical.windows(ours.len()).filter(|w| *w == ours).count(), 1, "{ours:02x?}");
                let mut wire = canonical[..at].to_vec();
                wire.extend_from_slice(theirs);
                wire.extend_from_slice(&canonical[at + ours.len()..]);
                let mut reader = crate::cbor::Reader::noting_form(&wire);
                let (read, span) = OperationWithMetadata::read_compact_kept(&mut reader, None).unwrap();
                assert!(reader.is_done());
                assert_eq!(span, None, "{theirs:02x?} is not what the encoder writes");
                let mut again = Vec::new();
                read.encode_compact(&mut again);
                assert_ne!(again, wire, "{theirs:02x?} is not what the encoder writes");
                // Read, it is kept as the encoder's bytes, under their digest.
                assert_kept_as_encoded(&[read], &wire, &[span]);
            }
        }
    }

    #[test]
    fn an_invalid_operation_checked_ahead_is_still_refused_by_the_replica() {
        let mut bad = signed("a", 2, true);
        bad.data = serde_json::json!(["not", "an", "object"]);
        let checked = ReceivedOp::check_all(vec![signed("a", 1, false), bad], Some(&NamedVerifier));
        let valid: Vec<bool> = checked.iter().map(ReceivedOp::is_valid).collect();
        assert_eq!(valid, [true, false]);
        assert!(!ReceivedOp::unchecked(signed("a", 1, false)).is_valid());
        let mut db = crate::Database::open(crate::MemoryStore::new(), "b").unwrap().with_verifier(std::sync::Arc::new(NamedVerifier));
        let refused = db.apply_received(checked, 1_000).unwrap_err();
        assert!(matches!(refused, crate::Error::ValueNotObject { .. }), "{refused:?}");
        assert_eq!(db.version_vector().get("a"), 0, "nothing of the batch is applied");
    }

    #[test]
    fn a_bad_signature_is_marked_and_other_origins_stay_valid() {
        let mut ops = vec![signed("a", 1, true), signed("b", 1, true), signed("c", 1, true), signed("d", 1, true)];
        // Signed by someone else than its origin: forged.
        ops[1].signature = Some(NamedSigner("mallory".into()).sign(&ops[1].digest()));
        ops[3].signature = Some(NamedSigner("mallory".into()).sign(&ops[3].digest()));
        let checks: Vec<_> = ReceivedOp::check_all(ops.clone(), Some(&NamedVerifier)).iter().map(ReceivedOp::signature_check).collect();
        use SignatureCheck::{Invalid, Valid};
        assert_eq!(checks, [Valid, Invalid, Valid, Invalid]);
        // The rest of a failing origin's operations are left to the replica.
        let same_origin = vec![signed("a", 1, true), ops[1].clone(), signed("b", 2, true)];
        let checks: Vec<_> = ReceivedOp::check_all(same_origin, Some(&NamedVerifier)).iter().map(ReceivedOp::signature_check).collect();
        assert_eq!(checks, [Valid, Invalid, SignatureCheck::NotChecked]);
        let unchecked: Vec<_> = ReceivedOp::check_all(ops, None).iter().map(ReceivedOp::signature_check).collect();
        assert!(unchecked.iter().all(|c| *c == SignatureCheck::NotChecked), "{unchecked:?}");
    }
}
