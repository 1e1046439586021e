//! Forks: two different operations of one origin under one sequence number
//! (a restored backup or a copied data directory writing with the same
//! key). Every replica settles them alike, whatever it received first, and
//! other origins keep applying.

use pluresdb_core::signing::stand_in::{NamedSigner, NamedVerifier};
use pluresdb_core::{Database, ForkOutcome, MemoryStore, OperationType, OperationWithMetadata, Store};
use serde_json::json;
use std::sync::Arc;

/// Wall time when operations are received (after every write made here).
const NOW: u64 = 1_000_000;

fn replica(peer: &str, store: MemoryStore) -> Database<MemoryStore> {
    Database::open(store, peer).unwrap().with_signer(Arc::new(NamedSigner(peer.into()))).with_verifier(Arc::new(NamedVerifier))
}

/// Writes `n` updates to nodes `n:0`..`n:3` (and a delete of `n:1`) on `db`
/// at time `t`, each in its own commit.
fn write(db: &mut Database<MemoryStore>, n: usize, t: u64, tag: &str) {
    for i in 0..n {
        let (kind, data) = match i % 5 {
            4 => (OperationType::DeleteNode, serde_json::Value::Null),
            2 => (OperationType::CreateNode, json!({"tag": tag, "i": i})),
            _ => (OperationType::UpdateNode, json!({"tag": tag, format!("f{}", i % 3): i})),
        };
        let op = OperationWithMetadata::new(kind, format!("n:{}", i % 4), data, db.peer_id().to_owned());
        db.commit_local(vec![op], t + i as u64).unwrap();
    }
}

fn records(db: &Database<MemoryStore>) -> Vec<pluresdb_core::NodeRecord> {
    db.store().scan_nodes("", None, usize::MAX).unwrap()
}

/// A replica of `a` made at its 5th operation, then both write on: the
/// original's branch (older timestamps) wins everywhere.
fn two_branches() -> (Vec<OperationWithMetadata>, Vec<OperationWithMetadata>) {
    let mut original = replica("a", MemoryStore::new());
    write(&mut original, 5, 1_000, "base");
    let mut copy = replica("a", original.store().clone());
    write(&mut original, 6, 2_000, "original");
    write(&mut copy, 4, 3_000, "copy");
    (original.ops_after("a", 0, 100).unwrap(), copy.ops_after("a", 0, 100).unwrap())
}

#[test]
fn replicas_settle_a_fork_alike_in_either_order() {
    let (original, copy) = two_branches();
    // A reference that only ever saw the winning branch.
    let mut reference = replica("r", MemoryStore::new());
    reference.apply_remote(original.clone(), NOW).unwrap();

    // One replica holds the winner first: the copy's branch is refused.
    let mut b = replica("b", MemoryStore::new());
    b.apply_remote(original.clone(), NOW).unwrap();
    let report = b.apply_remote(copy.clone(), NOW).unwrap();
    assert_eq!(report.forks.len(), 1, "{report:?}");
    assert_eq!((&*report.forks[0].origin, report.forks[0].seq), ("a", 6));
    assert_eq!(report.forks[0].outcome, ForkOutcome::Kept);

    // Another holds the loser first: it drops it and takes the winner.
    let mut c = replica("c", MemoryStore::new());
    c.apply_remote(copy.clone(), NOW).unwrap();
    let report = c.apply_remote(original.clone(), NOW).unwrap();
    assert_eq!(report.forks.len(), 1, "{report:?}");
    match &report.forks[0].outcome {
        ForkOutcome::Replaced { dropped } => assert_eq!(dropped.iter().map(|op| op.id.seq).collect::<Vec<_>>(), [6, 7, 8, 9]),
        other => panic!("expected the copy's branch to be replaced, got {other:?}"),
    }
    for db in [&b, &c] {
        assert_eq!(db.version_vector(), reference.version_vector());
        assert_eq!(records(db), records(&reference), "records rebuilt without the losing branch");
        assert_eq!(db.ops_after("a", 0, 100).unwrap(), original);
    }
}

#[test]
fn a_fork_of_one_origin_does_not_hold_up_the_others() {
    let (original, copy) = two_branches();
    let mut other = replica("o", MemoryStore::new());
    write(&mut other, 3, 5_000, "other");
    let mut b = replica("b", MemoryStore::new());
    b.apply_remote(copy, NOW).unwrap();
    let mut batch = original[7..].to_vec();
    batch.extend(other.ops_after("o", 0, 10).unwrap());
    let report = b.apply_remote(batch, NOW).unwrap();
    // a's ops 8.. do not join b's chain (the fork is at 6, before the batch).
    assert_eq!(report.unjoined, vec![("a".into(), 8)]);
    assert_eq!(report.applied, 3, "o's operations apply: {report:?}");
    assert_eq!(b.version_vector().get("o"), 3);
    // Asked from earlier, the sender's operations settle the fork.
    let report = b.apply_remote(original[4..].to_vec(), NOW).unwrap();
    assert_eq!(report.forks.len(), 1, "{report:?}");
    assert_eq!(b.ops_after("a", 0, 100).unwrap(), original);
}

/// What a replica sends a peer of each origin after each sequence number
/// (`op_bodies_after`, served from the newest commit's copy when it holds
/// the run) is byte for byte what its op log holds, through local commits
/// of several operations, received runs, a fork that drops a branch, and
/// after the copy is let go.
#[test]
fn operations_sent_from_the_newest_commit_are_the_op_logs() {
    fn same_as_the_op_log(db: &Database<MemoryStore>, when: &str) {
        let held = db.version_vector();
        for (origin, head) in held.iter() {
            for after in 0..=head + 1 {
                for limit in [1, 2, 3, 100] {
                    let (mut sent, mut stored) = (pluresdb_core::EncodedOps::new(), pluresdb_core::EncodedOps::new());
                    db.op_bodies_after(origin, after, limit, &mut sent).unwrap();
                    db.store().op_bodies_after(origin, after, limit, &mut stored).unwrap();
                    let pairs =
                        |ops: &pluresdb_core::EncodedOps| ops.iter().map(|(id, body)| (id.clone(), body.to_vec())).collect::<Vec<_>>();
                    assert_eq!(pairs(&sent), pairs(&stored), "{when}: {origin} after {after}, limit {limit}");
                }
            }
        }
    }
    let mut b = replica("b", MemoryStore::new());
    for round in 0..3 {
        let ops =
            (0..3).map(|i| OperationWithMetadata::new(OperationType::UpdateNode, format!("b:{i}"), json!({"round": round}), "b")).collect();
        b.commit_local(ops, 1_000 + round).unwrap();
        same_as_the_op_log(&b, "local commits");
    }
    let (original, copy) = two_branches();
    for chunk in copy.chunks(4) {
        b.apply_remote(chunk.to_vec(), NOW).unwrap();
        same_as_the_op_log(&b, "received runs");
    }
    // The original's branch replaces the copy's from a's 6th operation on.
    let report = b.apply_remote(original, NOW).unwrap();
    assert!(matches!(report.forks[0].outcome, ForkOutcome::Replaced { .. }), "{report:?}");
    same_as_the_op_log(&b, "after a fork");
    b.forget_recent_ops();
    same_as_the_op_log(&b, "after the copy is let go");
}
