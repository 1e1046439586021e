//! The change feed of a replica: local and remote changes, in apply order.

use pluresdb_core::{Database, FeedEvent, MemoryStore, OperationType};
use serde_json::json;

#[test]
fn subscribers_see_local_and_remote_changes_in_apply_order() {
    let mut a = Database::open(MemoryStore::new(), "peer-a").unwrap();
    let mut b = Database::open(MemoryStore::new(), "peer-b").unwrap();
    let mut first = a.subscribe(100);
    let mut second = a.subscribe(100);

    a.put("n:1", json!({"x": 1}), 10).unwrap();
    b.put("n:2", json!({"y": 2}), 11).unwrap();
    b.delete("n:2", 12).unwrap();
    a.apply_remote(b.ops_after("peer-b", 0, 10).unwrap(), 20).unwrap();
    a.update("n:1", json!({"x": 3}), 13).unwrap();
    // A duplicate delivery is not a change.
    a.apply_remote(b.ops_after("peer-b", 0, 10).unwrap(), 20).unwrap();

    let drain = |sub: &mut pluresdb_core::Subscription| {
        std::iter::from_fn(|| sub.try_next())
            .map(|event| match event {
                FeedEvent::Change(c) => {
                    (c.seq, c.op.node_id.clone(), c.op.operation, c.node.as_ref().map(|n| serde_json::Value::Object(n.value.clone())))
                }
                FeedEvent::Lagged { missed } => panic!("lagged by {missed}"),
            })
            .collect::<Vec<_>>()
    };
    let seen = drain(&mut first);
    assert_eq!(
        seen,
        vec![
            (1, "n:1".into(), OperationType::CreateNode, Some(json!({"x": 1}))),
            (2, "n:2".into(), OperationType::CreateNode, Some(json!({"y": 2}))),
            (3, "n:2".into(), OperationType::DeleteNode, None),
            (4, "n:1".into(), OperationType::UpdateNode, Some(json!({"x": 3}))),
        ]
    );
    assert_eq!(drain(&mut second), seen, "every subscriber sees the same order");
}

#[test]
fn a_failed_commit_publishes_nothing() {
    let mut a = Database::open(MemoryStore::new(), "peer-a").unwrap();
    let mut sub = a.subscribe(10);
    assert!(a.put("n:1", json!([1]), 10).is_err());
    assert!(sub.try_next().is_none());
}
