//! How a replica hands a batch's node records to its store: a local
//! batch's to be freed while the store waits for its medium, a received
//! batch's to be freed one by one as the store encodes them; records born
//! of one operation (local or received) as those operations, unbuilt.

use pluresdb_core::{Database, MemoryStore, ObservedStore, OperationType, OperationWithMetadata, Store};
use serde_json::json;

#[test]
fn local_batches_free_their_records_while_syncing_and_received_ones_as_each_is_encoded() {
    let creates = |from: i32| -> Vec<OperationWithMetadata> {
        (from..from + 3).map(|i| OperationWithMetadata::new(OperationType::CreateNode, format!("n:{i}"), json!({"i": i}), "a")).collect()
    };
    let mut a = Database::open(ObservedStore::new(MemoryStore::new()), "a").unwrap();
    // A subscriber takes each change with its record: records are built.
    let subscriber = a.subscribe(16);
    a.commit_local(creates(0), 1_000).unwrap();
    drop(subscriber);
    // Without: each record is born of its create.
    a.commit_local(creates(3), 1_001).unwrap();
    let a_commits = a.store().commits.clone();
    assert_eq!(a_commits, [("while syncing", 3), ("born", 3)]);

    let mut b = Database::open(ObservedStore::new(MemoryStore::new()), "b").unwrap();
    let received = a.store().ops_after("a", 0, usize::MAX).unwrap();
    assert_eq!(b.apply_remote(received, 1_000).unwrap().applied, 6);
    assert_eq!(b.store().commits, [("born", 6)]);
    for id in ["n:2", "n:5"] {
        assert_eq!(b.get(id).unwrap().map(|node| node.value), a.get(id).unwrap().map(|node| node.value));
    }
    assert_eq!(a.get("n:4").unwrap().map(|node| serde_json::Value::Object(node.value)), Some(json!({"i": 4})));
}
