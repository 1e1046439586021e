//! How a replica hands a batch's node records to its store: a local
//! batch's to be freed while the store waits for its medium, a received
//! batch's to be freed one by one as the store encodes them.

use pluresdb_core::{Database, MemoryStore, ObservedStore, OperationType, OperationWithMetadata, Store};
use serde_json::json;

#[test]
fn local_batches_free_their_records_while_syncing_and_received_ones_as_each_is_encoded() {
    let mut a = Database::open(ObservedStore::new(MemoryStore::new()), "a").unwrap();
    let ops = (0..3).map(|i| OperationWithMetadata::new(OperationType::CreateNode, format!("n:{i}"), json!({"i": i}), "a")).collect();
    a.commit_local(ops, 1_000).unwrap();
    let a_commits = a.store().commits.clone();
    assert_eq!(a_commits, [("while syncing", 3)]);

    let mut b = Database::open(ObservedStore::new(MemoryStore::new()), "b").unwrap();
    let received = a.store().ops_after("a", 0, usize::MAX).unwrap();
    assert_eq!(b.apply_remote(received, 1_000).unwrap().applied, 3);
    assert_eq!(b.store().commits, [("as encoded", 3)]);
    assert_eq!(b.get("n:2").unwrap().map(|node| node.value), a.get("n:2").unwrap().map(|node| node.value));
}
