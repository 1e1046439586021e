//! Hash chains and signatures on operations, with a stand-in signature
//! scheme (a keyed hash per origin name); the security crate supplies the
//! Ed25519 one.

use pluresdb_core::signing::stand_in::{NamedSigner, NamedVerifier};
use pluresdb_core::{
    Database, MemoryStore, ObservedStore, OpDigest, OpSignature, OperationType, OperationWithMetadata, ReceivedOp, RefusalReason, Store,
    SIGN_EVERY,
};
use serde_json::json;
use std::sync::Arc;

/// The receiver's wall time: every operation here is due.
const NOW: u64 = 3_000;

fn replica(peer: &str) -> Database<MemoryStore> {
    Database::open(MemoryStore::new(), peer).unwrap().with_signer(Arc::new(NamedSigner(peer.into()))).with_verifier(Arc::new(NamedVerifier))
}

fn write(db: &mut Database<MemoryStore>, n: usize, t: u64) {
    let ops = (0..n)
        .map(|i| OperationWithMetadata::new(OperationType::UpdateNode, format!("n:{}", i % 7), json!({"i": i}), db.peer_id().to_owned()))
        .collect();
    db.commit_local(ops, t).unwrap();
}

#[test]
fn logs_are_chained_and_signed_per_commit() {
    let mut a = replica("a");
    write(&mut a, 600, 1_000);
    write(&mut a, 3, 2_000);
    let log = a.ops_after("a", 0, 1_000).unwrap();
    assert_eq!(log[0].prev, OpDigest::default());
    for pair in log.windows(2) {
        assert_eq!(pair[1].prev, pair[0].digest(), "{} links to {}", pair[1].id, pair[0].id);
    }
    let signed: Vec<u64> = log.iter().filter(|op| op.signature.is_some()).map(|op| op.id.seq).collect();
    assert_eq!(signed, vec![SIGN_EVERY, 2 * SIGN_EVERY, 600, 603], "every SIGN_EVERY-th and each commit's last");

    let mut b = replica("b");
    let report = b.apply_remote(log.clone(), NOW).unwrap();
    assert_eq!((report.applied, report.held_back), (603, 0));
    assert_eq!(b.version_vector(), a.version_vector());
}

/// A commit of large values is signed at least every `SIGN_EVERY_BYTES`, so
/// the run a receiver must get in one batch to authenticate it stays under
/// 1 MiB plus one operation, whatever a commit writes.
#[test]
fn a_commit_of_large_values_is_signed_every_mebibyte() {
    let mut a = replica("a");
    let ops = (0..6)
        .map(|i| OperationWithMetadata::new(OperationType::CreateNode, format!("big:{i}"), json!({"blob": "x".repeat(1_040_000)}), "a"))
        .collect();
    a.commit_local(ops, 1_000).unwrap();
    write(&mut a, 3, 2_000);
    let log = a.ops_after("a", 0, 100).unwrap();
    let signed: Vec<u64> = log.iter().filter(|op| op.signature.is_some()).map(|op| op.id.seq).collect();
    assert_eq!(signed, vec![2, 4, 6, 9], "every second ~1 MB op, and each commit's last");
    let mut unsigned = 0;
    for op in &log {
        unsigned = if op.signature.is_some() { 0 } else { unsigned + op.encoded_len() };
        assert!(unsigned < pluresdb_core::SIGN_EVERY_BYTES);
    }
    let mut b = replica("b");
    assert_eq!(b.apply_remote(log, NOW).unwrap().applied, 9);
}

#[test]
fn an_unsigned_tail_waits_for_the_operation_that_signs_it() {
    let mut a = replica("a");
    write(&mut a, 300, 1_000);
    let log = a.ops_after("a", 0, 1_000).unwrap();
    let mut b = replica("b");
    let report = b.apply_remote(log[..280].to_vec(), NOW).unwrap();
    assert_eq!((report.applied, report.held_back), (256, 24), "ops 257..280 wait for a signature");
    let report = b.apply_remote(log[256..].to_vec(), NOW).unwrap();
    assert_eq!((report.applied, report.held_back), (44, 0));
    assert_eq!(b.version_vector(), a.version_vector());
}

/// A batch that continues a chain links to the head the replica knows
/// from the batch before (the digest of its last operation, kept when it
/// was committed), not to one read back from the op log; a fork that
/// replaces a suffix links the next batch to the winning branch's head.
#[test]
fn each_batch_links_to_the_head_the_last_one_left_without_reading_it_back() {
    let mut a = replica("a");
    for t in 0..4 {
        write(&mut a, 50, 1_000 + t);
    }
    let log = a.ops_after("a", 0, 1_000).unwrap();
    let mut b = Database::open(ObservedStore::new(MemoryStore::new()), "b")
        .unwrap()
        .with_signer(Arc::new(NamedSigner("b".into())))
        .with_verifier(Arc::new(NamedVerifier));
    for (i, batch) in log.chunks(50).enumerate() {
        let report = b.apply_received(ReceivedOp::check_all(batch.to_vec(), Some(&NamedVerifier)), NOW).unwrap();
        assert_eq!((report.applied, report.refused.len(), report.unjoined.len()), (50, 0, 0), "batch {i}: {report:?}");
    }
    assert_eq!(b.store().ops_after_calls(), 0, "no head was read back from the op log");
    assert_eq!(b.version_vector(), a.version_vector());

    // A forked branch (another instance of "a" from seq 151 on, stamped
    // earlier so it wins) replaces the suffix; the batch after it links to
    // the new head.
    let mut twin = replica("a");
    twin.apply_remote(log[..150].to_vec(), NOW).unwrap();
    write(&mut twin, 50, 900);
    write(&mut twin, 10, 901);
    let branch = twin.ops_after("a", 150, 1_000).unwrap();
    let report = b.apply_received(ReceivedOp::check_all(branch[..50].to_vec(), Some(&NamedVerifier)), NOW).unwrap();
    assert_eq!((report.applied, report.forks.len()), (50, 1), "{report:?}");
    let reads = b.store().ops_after_calls();
    let report = b.apply_received(ReceivedOp::check_all(branch[50..].to_vec(), Some(&NamedVerifier)), NOW).unwrap();
    assert_eq!((report.applied, report.unjoined.len()), (10, 0), "{report:?}");
    assert_eq!(b.store().ops_after_calls(), reads, "the winning branch's head was kept");
    assert_eq!(b.ops_after("a", 0, 1_000).unwrap(), twin.ops_after("a", 0, 1_000).unwrap());
}

/// Applies `ops` and returns why each refused origin was refused; checked
/// ahead of the replica (as a node does off its writer) they are refused
/// alike.
fn refusals(db: &mut Database<MemoryStore>, ops: Vec<OperationWithMetadata>) -> Vec<RefusalReason> {
    let ahead = db.apply_received(ReceivedOp::check_all(ops.clone(), Some(&NamedVerifier)), NOW).unwrap();
    assert_eq!(ahead.applied, 0, "{ahead:?}");
    let report = db.apply_remote(ops, NOW).unwrap();
    assert_eq!(report.applied, 0, "{report:?}");
    let reasons: Vec<RefusalReason> = report.refused.iter().map(|r| r.reason).collect();
    assert_eq!(ahead.refused.iter().map(|r| r.reason).collect::<Vec<_>>(), reasons, "checked ahead or not");
    reasons
}

/// A batch checked ahead of the replica applies exactly what the replica's
/// own checks apply: a forged origin is refused, the others applied.
#[test]
fn operations_checked_ahead_are_applied_and_refused_as_the_replica_would() {
    let mut a = replica("a");
    write(&mut a, 10, 1_000);
    let mut c = replica("c");
    write(&mut c, 5, 1_100);
    let mut forged = c.ops_after("c", 0, 100).unwrap();
    forged[4].signature = Some(OpSignature([2; 64]));
    let batch: Vec<OperationWithMetadata> = a.ops_after("a", 0, 100).unwrap().into_iter().chain(forged).collect();

    let (mut here, mut ahead) = (replica("b"), replica("b2"));
    let by_replica = here.apply_remote(batch.clone(), NOW).unwrap();
    let checked = ahead.apply_received(ReceivedOp::check_all(batch, Some(&NamedVerifier)), NOW).unwrap();
    assert_eq!((by_replica.applied, checked.applied), (10, 10));
    assert_eq!(checked.refused.len(), 1);
    assert_eq!((&*checked.refused[0].id.origin, checked.refused[0].reason), ("c", RefusalReason::BadSignature));
    assert_eq!(here.version_vector(), ahead.version_vector());
    assert_eq!(here.store().scan_nodes("", None, usize::MAX).unwrap(), ahead.store().scan_nodes("", None, usize::MAX).unwrap());
    assert_eq!(here.ops_after("a", 0, 100).unwrap(), ahead.ops_after("a", 0, 100).unwrap());
}

#[test]
fn forged_operations_are_refused_and_change_nothing() {
    let mut a = replica("a");
    write(&mut a, 10, 1_000);
    let log = a.ops_after("a", 0, 100).unwrap();
    let mut b = replica("b");
    let before = b.store().scan_nodes("", None, usize::MAX).unwrap();

    // Valid JSON, wrong signature.
    let mut forged = log.clone();
    forged[9].signature = Some(OpSignature([1; 64]));
    assert_eq!(refusals(&mut b, forged), [RefusalReason::BadSignature]);

    // Altered data under the author's signature.
    let mut altered = log.clone();
    altered[9].data = json!({"i": 666});
    assert_eq!(refusals(&mut b, altered), [RefusalReason::BadSignature]);

    // An unsigned op in the middle altered: the chain breaks.
    let mut middle = log.clone();
    middle[3].data = json!({"i": 666});
    assert_eq!(refusals(&mut b, middle), [RefusalReason::BrokenChain]);

    // Right signature, wrong claimed origin: signed by "a", claims "mallory".
    let stolen: Vec<OperationWithMetadata> = log
        .iter()
        .map(|op| {
            let mut op = op.clone();
            op.id.origin = "mallory".into();
            op
        })
        .collect();
    let refused = refusals(&mut b, stolen);
    assert!(matches!(refused[..], [RefusalReason::BadSignature | RefusalReason::BrokenChain]), "{refused:?}");

    assert_eq!(b.store().scan_nodes("", None, usize::MAX).unwrap(), before, "nothing stored changed");
    assert!(b.version_vector().is_empty());
    assert_eq!(b.apply_remote(log, NOW).unwrap().applied, 10, "the genuine log still applies");
}

/// The op log of a batch checked ahead holds the same bodies as the
/// sender's whatever part of the batch is kept: all of it, all but an
/// unsigned tail, all but duplicates in front, two origins interleaved.
#[test]
fn a_batch_checked_ahead_logs_the_bodies_it_kept_whatever_part_it_kept() {
    let (mut a, mut c) = (replica("a"), replica("c"));
    write(&mut a, 300, 1_000);
    write(&mut c, 20, 1_100);
    let (log_a, log_c) = (a.ops_after("a", 0, 1_000).unwrap(), c.ops_after("c", 0, 100).unwrap());
    let bodies = |db: &Database<MemoryStore>, origin: &str| {
        let mut out = pluresdb_core::EncodedOps::new();
        db.op_bodies_after(origin, 0, usize::MAX, &mut out).unwrap();
        out.iter().map(|(id, body)| (id.clone(), body.to_vec())).collect::<Vec<_>>()
    };
    let (sent_a, sent_c) = (bodies(&a, "a"), bodies(&c, "c"));
    let mut b = replica("b");
    // All but a tail after the last signed operation (256).
    let report = b.apply_received(ReceivedOp::check_all(log_a[..280].to_vec(), Some(&NamedVerifier)), NOW).unwrap();
    assert_eq!((report.applied, report.held_back), (256, 24));
    assert_eq!(bodies(&b, "a"), sent_a[..256]);
    // Duplicates in front, then the rest.
    let report = b.apply_received(ReceivedOp::check_all(log_a[200..].to_vec(), Some(&NamedVerifier)), NOW).unwrap();
    assert_eq!((report.applied, report.duplicates), (44, 56));
    assert_eq!(bodies(&b, "a"), sent_a);
    // Two origins interleaved; the whole of a batch.
    let mut d = replica("d");
    let mixed: Vec<OperationWithMetadata> =
        log_c.iter().zip(&log_a).flat_map(|(c, a)| [c.clone(), a.clone()]).chain(log_a[20..].iter().cloned()).collect();
    assert_eq!(d.apply_received(ReceivedOp::check_all(mixed, Some(&NamedVerifier)), NOW).unwrap().applied, 320);
    assert_eq!((bodies(&d, "a"), bodies(&d, "c")), (sent_a.clone(), sent_c));
    let mut e = replica("e");
    assert_eq!(e.apply_received(ReceivedOp::check_all(log_a.clone(), Some(&NamedVerifier)), NOW).unwrap().applied, 300);
    assert_eq!(bodies(&e, "a"), sent_a);
}
