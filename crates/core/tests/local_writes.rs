//! Local batches of writes: what a replica refuses before it writes.

use pluresdb_core::{Database, Error, MemoryStore, OperationType, OperationWithMetadata};
use serde_json::json;

fn creates(origin: &str, count: usize) -> Vec<OperationWithMetadata> {
    (0..count).map(|i| OperationWithMetadata::new(OperationType::CreateNode, format!("n:{i}"), json!({"i": i}), origin)).collect()
}

#[test]
fn a_batch_under_a_peer_id_that_is_no_valid_origin_is_refused_whole_at_its_first_write() {
    for peer_id in ["", "p\u{1}q", &"p".repeat(1_000)] {
        let mut db = Database::open(MemoryStore::new(), peer_id).unwrap();
        let ops = creates(peer_id, 3);
        let first = ops[0].id.clone();
        match db.commit_local(ops, 1_000) {
            Err(Error::InvalidOperation { id, reason }) => {
                assert_eq!(id, first, "{peer_id:?}");
                assert!(reason.starts_with("its origin"), "{reason}");
            }
            other => panic!("{peer_id:?}: {other:?}"),
        }
        assert_eq!(db.version_vector().get(peer_id), 0, "nothing was written");
    }
    // A valid one writes the batch.
    let mut db = Database::open(MemoryStore::new(), "p").unwrap();
    assert_eq!(db.commit_local(creates("p", 3), 1_000).unwrap().len(), 3);
}
