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

use crate::operation::OperationWithMetadata;
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
        let mut encoded = EncodedOps::new();
        let digests: Vec<OpDigest> = ops.iter().map(|op| encoded.push_with_digest(op)).collect();
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
                let valid = op.validate().is_ok();
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
            Some(checked) => Self::mirroring(Source::Shared(checked.bodies.clone())),
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
        Self { source: Source::None, mirrored: 0, copying: true, encoded: EncodedOps::with_capacity(ops, bytes) }
    }

    fn mirroring(source: Source) -> Self {
        Self { source, mirrored: 0, copying: false, encoded: EncodedOps::new() }
    }

    /// The buffer mirrored, if any.
    pub(crate) fn source(&self) -> Option<&EncodedOps> {
        self.source.buffer()
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

    /// Starts copying, in room for the whole buffer, unless it did.
    fn copy(&mut self) {
        if !self.copying {
            if let Some(source) = self.source() {
                self.encoded = source.copy_first(self.mirrored, source.len(), source.byte_len());
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
    use crate::signing::OpSigner;

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
