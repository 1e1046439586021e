//! Timestamps from the future (issue 13, section 3): an operation stamped
//! years ahead or at `u64::MAX` does not drag the receiver's clock, is held
//! and synced like any other, and takes effect only when the receiver's
//! wall clock reaches it, on every replica alike, so honest writers are
//! never locked out of the fields it touched.

use pluresdb_core::{codec, Database, FeedEvent, Hlc, MemoryStore, Store, WriteBatch, CLOCK_META_KEY, DEFAULT_MAX_CLOCK_DRIFT};
use serde_json::{json, Value};
use std::time::Duration;

const NOW: u64 = 1_700_000_000_000;
const YEAR_MS: u64 = 365 * 24 * 3_600_000;

fn drift_ms() -> u64 {
    DEFAULT_MAX_CLOCK_DRIFT.as_millis() as u64
}

fn replica(peer: &str) -> Database<MemoryStore> {
    Database::open(MemoryStore::new(), peer).unwrap()
}

/// A replica whose clock was left at `last` (a store restored with a
/// clock reading from the future, or a member that stamps far ahead on
/// purpose): its writes carry timestamps after `last` while its wall clock
/// is that far ahead too.
fn replica_with_clock(peer: &str, last: Hlc) -> Database<MemoryStore> {
    let mut store = MemoryStore::new();
    store.commit(&WriteBatch { meta: vec![(CLOCK_META_KEY.to_owned(), codec::encode(&last))], ..WriteBatch::default() }).unwrap();
    Database::open(store, peer).unwrap()
}

fn value(db: &Database<MemoryStore>, id: &str) -> Option<Value> {
    db.get(id).unwrap().map(|node| Value::Object(node.value))
}

/// Sends `to` everything `from` holds that `to` lacks, at `to`'s wall time `now`.
fn sync(from: &Database<MemoryStore>, to: &mut Database<MemoryStore>, now: u64) {
    let missing: Vec<(String, u64)> =
        from.version_vector().missing_from(to.version_vector()).map(|(o, after, _)| (o.to_owned(), after)).collect();
    for (origin, after) in missing {
        to.apply_remote(from.ops_after(&origin, after, usize::MAX).unwrap(), now).unwrap();
    }
}

/// The largest wall time a timestamp holds (year 10889).
const MAX_WALL_MS: u64 = u64::MAX >> 16;

#[test]
fn an_operation_at_u64_max_is_kept_and_synced_but_locks_no_one_out() {
    // Mallory's wall clock reads the end of time.
    let mut mallory = replica_with_clock("mallory", Hlc::from_u64(u64::MAX - 1));
    let mut bob = replica("bob");
    let mut carol = replica("carol");
    bob.put("doc:1", json!({"title": "draft", "body": "b"}), NOW).unwrap();
    sync(&bob, &mut mallory, MAX_WALL_MS);
    let receipt = mallory.update("doc:1", json!({"title": "pwned"}), MAX_WALL_MS).unwrap();
    assert_eq!(receipt.timestamp, Hlc::from_u64(u64::MAX));

    let report = bob.apply_remote(mallory.ops_after("mallory", 0, 10).unwrap(), NOW + 2).unwrap();
    assert_eq!((report.applied, report.deferred), (1, 1));
    assert!(bob.clock().wall_ms() <= NOW + 2 + drift_ms(), "bob's clock was dragged to {}", bob.clock());
    assert_eq!(bob.version_vector().get("mallory"), 1, "held and counted");
    assert_eq!(value(&bob, "doc:1").unwrap()["title"], "draft");

    // Bob writes the field after receiving it: his write wins everywhere.
    let later = bob.update("doc:1", json!({"title": "final"}), NOW + 3).unwrap();
    assert!(later.timestamp.wall_ms() <= NOW + 3 + drift_ms());
    // Carol gets everything through Bob (synced onward).
    sync(&bob, &mut carol, NOW + 4);
    sync(&bob, &mut mallory, MAX_WALL_MS);
    assert_eq!(carol.ops_after("mallory", 0, 10).unwrap(), mallory.ops_after("mallory", 0, 10).unwrap());
    for db in [&bob, &carol] {
        assert_eq!(value(db, "doc:1"), Some(json!({"title": "final", "body": "b"})), "{}", db.peer_id());
        assert_eq!(db.deferred_count(), 1, "{}", db.peer_id());
        assert_eq!(db.version_vector(), mallory.version_vector());
    }
    // By Mallory's clock it is the year 10889: its own write is the newest.
    assert_eq!(value(&mallory, "doc:1").unwrap()["title"], "pwned");
    // Nothing ever makes it due.
    assert_eq!(carol.apply_due(NOW + 100 * YEAR_MS).unwrap(), 0);
    assert_eq!(carol.next_due_ms(), Some((u64::MAX >> 16) - drift_ms()));

    // The skew is reported per origin.
    let report = carol.clock_report(NOW + 4);
    assert_eq!(report.deferred_operations, 1);
    assert_eq!(report.origins[0].origin, "mallory");
    assert!(report.origins[0].max_ahead_ms > 1_000 * YEAR_MS as i64, "{report:?}");
    assert!(report.origins.iter().filter(|o| o.origin == "bob").all(|o| o.max_ahead_ms <= 0), "{report:?}");
}

#[test]
fn an_operation_years_ahead_takes_effect_when_its_time_comes_and_later_writes_win_again() {
    let ahead = NOW + 3 * YEAR_MS;
    // The fast replica's wall clock reads three years ahead.
    let mut fast = replica("fast");
    let mut bob = replica("bob");
    fast.put("doc:1", json!({"title": "from the future"}), ahead).unwrap();
    bob.put("doc:1", json!({"title": "now"}), NOW).unwrap();
    bob.apply_remote(fast.ops_after("fast", 0, 10).unwrap(), NOW + 1).unwrap();
    assert_eq!(value(&bob, "doc:1").unwrap()["title"], "now");
    assert_eq!(bob.next_due_ms(), Some(ahead - drift_ms()));

    // Just before it is due, nothing changes; once due, it takes effect (it
    // is the newest write by its timestamp) and moves the clock.
    assert_eq!(bob.apply_due(ahead - drift_ms() - 1).unwrap(), 0);
    let mut feed = bob.subscribe(10);
    assert_eq!(bob.apply_due(ahead - drift_ms()).unwrap(), 1);
    assert_eq!(value(&bob, "doc:1").unwrap()["title"], "from the future");
    assert_eq!(bob.deferred_count(), 0);
    assert_eq!(bob.next_due_ms(), None);
    assert!(bob.clock() >= Hlc::new(ahead, 0));
    match feed.try_next() {
        Some(FeedEvent::Change(change)) => assert_eq!(change.op.id.origin.as_ref(), "fast"),
        other => panic!("the op that took effect is not in the feed: {other:?}"),
    }
    // Bob's next write comes after it, and wins.
    bob.update("doc:1", json!({"title": "after"}), ahead - drift_ms()).unwrap();
    assert_eq!(value(&bob, "doc:1").unwrap()["title"], "after");
}

#[test]
fn a_supersession_of_a_deferred_operation_waits_for_it() {
    // `near` runs 8 minutes ahead: within its own horizon, beyond Bob's.
    let near_ms = NOW + 8 * 60_000;
    let mut near = replica("near");
    let mut writer = replica("writer");
    let early = near.put("doc:1", json!({"x": 1, "y": 1}), near_ms).unwrap();
    // `writer`, also ahead, sees it and overwrites x (superseding it).
    writer.apply_remote(near.ops_after("near", 0, 10).unwrap(), near_ms).unwrap();
    writer.update("doc:1", json!({"x": 2}), near_ms).unwrap();

    // Bob gets the first op while it is beyond his horizon, the second once
    // both are due but before the first has been released.
    let mut bob = replica("bob");
    let report = bob.apply_remote(near.ops_after("near", 0, 10).unwrap(), NOW).unwrap();
    assert_eq!(report.deferred, 1);
    bob.apply_remote(writer.ops_after("writer", 0, 10).unwrap(), near_ms).unwrap();
    assert_eq!(bob.apply_due(near_ms).unwrap(), 1);

    // Carol gets both when both are due.
    let mut carol = replica("carol");
    sync(&writer, &mut carol, near_ms);
    assert_eq!(carol.deferred_count(), 0);
    assert_eq!(value(&bob, "doc:1"), Some(json!({"x": 2, "y": 1})));
    assert_eq!(bob.record("doc:1").unwrap(), carol.record("doc:1").unwrap());
    assert!(early.timestamp.wall_ms() > NOW + drift_ms());
}

#[test]
fn deferred_operations_survive_a_reopen_and_take_effect_once() {
    let ahead = NOW + YEAR_MS;
    let mut fast = replica("fast");
    for i in 0..3 {
        fast.put(&format!("n:{i}"), json!({"i": i}), ahead).unwrap();
    }
    let mut bob = replica("bob").with_max_clock_drift(Duration::from_secs(1));
    bob.apply_remote(fast.ops_after("fast", 0, 10).unwrap(), NOW).unwrap();
    assert_eq!(bob.deferred_count(), 3);

    let mut bob = Database::open(bob.into_store(), "bob").unwrap().with_max_clock_drift(Duration::from_secs(1));
    assert_eq!(bob.deferred_count(), 3, "the deferred ops are remembered");
    assert_eq!(bob.next_due_ms(), Some(ahead - 1_000));
    assert_eq!(bob.apply_due(ahead - 1_001).unwrap(), 0);
    // A duplicate delivery defers nothing twice.
    let report = bob.apply_remote(fast.ops_after("fast", 0, 10).unwrap(), NOW + 5).unwrap();
    assert_eq!((report.applied, report.deferred), (0, 0));
    assert_eq!(bob.deferred_count(), 3);

    assert_eq!(bob.apply_due(ahead + 2).unwrap(), 3);
    let bob = Database::open(bob.into_store(), "bob").unwrap();
    assert_eq!(bob.deferred_count(), 0, "released for good");
    assert_eq!(bob.store().deferred(None, 10).unwrap(), vec![]);
    let mut bob = bob;
    assert_eq!(bob.apply_due(u64::MAX).unwrap(), 0, "nothing applies twice");
    for i in 0..3 {
        assert_eq!(value(&bob, &format!("n:{i}")), Some(json!({"i": i})));
    }
}

#[test]
fn a_corrected_wall_clock_stamps_and_judges_with_the_correction() {
    // This node's wall clock reads a year ahead; its peers told it so.
    let mut skewed = replica("skewed");
    skewed.set_wall_clock_offset(-(YEAR_MS as i64));
    let receipt = skewed.put("n:1", json!({"a": 1}), NOW + YEAR_MS).unwrap();
    assert_eq!(receipt.timestamp.wall_ms(), NOW);
    // An op stamped at its (wrong) wall time is from the future for it too.
    let mut fast = replica("fast");
    fast.put("n:2", json!({"b": 1}), NOW + YEAR_MS).unwrap();
    let report = skewed.apply_remote(fast.ops_after("fast", 0, 10).unwrap(), NOW + YEAR_MS).unwrap();
    assert_eq!(report.deferred, 1);
    assert_eq!(skewed.next_due_ms(), Some(NOW + 2 * YEAR_MS - drift_ms()));
    assert_eq!(skewed.clock_report(NOW + YEAR_MS).wall_clock_offset_ms, -(YEAR_MS as i64));
}

#[test]
fn a_node_that_wrote_while_its_clock_was_ahead_writes_with_corrected_time_once_corrected() {
    let mut skewed = replica("skewed");
    let mut bob = replica("bob");
    bob.put("n:0", json!({"by": "bob"}), NOW).unwrap();
    sync(&bob, &mut skewed, NOW + YEAR_MS);
    // Offline, its wall clock a year ahead.
    let early = skewed.put("n:1", json!({"when": "early"}), NOW + YEAR_MS).unwrap();
    assert_eq!(early.timestamp.wall_ms(), NOW + YEAR_MS);
    // Its peers tell it its clock is a year ahead: it writes with their time,
    // even after a restart.
    let mut skewed = Database::open(skewed.into_store(), "skewed").unwrap();
    skewed.set_wall_clock_offset(-(YEAR_MS as i64));
    let later = skewed.put("n:2", json!({"when": "later"}), NOW + YEAR_MS + 10).unwrap();
    assert_eq!(later.timestamp, Hlc::new(NOW + 10, 0));
    assert!(skewed.clock_report(NOW + YEAR_MS + 10).clock_ahead_ms <= 0);

    // Bob takes the later write at once, the early one when its time comes.
    let report = bob.apply_remote(skewed.ops_after("skewed", 0, 10).unwrap(), NOW + 20).unwrap();
    assert_eq!((report.applied, report.deferred), (2, 1));
    assert_eq!(value(&bob, "n:2"), Some(json!({"when": "later"})));
    assert_eq!(value(&bob, "n:1"), None);
    assert!(bob.clock().wall_ms() <= NOW + 20 + drift_ms());

    // The clock never steps back before what it observed from others.
    bob.put("n:3", json!({"by": "bob"}), NOW + 30).unwrap();
    sync(&bob, &mut skewed, NOW + YEAR_MS + 40);
    let after = skewed.put("n:4", json!({}), NOW + YEAR_MS - 10_000).unwrap();
    assert!(after.timestamp > Hlc::new(NOW + 30, 0), "{}", after.timestamp);
}

#[test]
fn thousands_of_deferred_operations_are_remembered_and_released_in_bounded_commits() {
    let ahead = NOW + YEAR_MS;
    let mut fast = replica("fast");
    let ops = (0..5_000u64)
        .map(|i| {
            let kind = if i % 2 == 0 { pluresdb_core::OperationType::CreateNode } else { pluresdb_core::OperationType::UpdateNode };
            pluresdb_core::OperationWithMetadata::new(kind, format!("n:{}", i / 2), json!({"i": i}), "fast")
        })
        .collect();
    fast.commit_local(ops, ahead).unwrap();
    let mut bob = replica("bob");
    bob.apply_remote(fast.ops_after("fast", 0, usize::MAX).unwrap(), NOW).unwrap();
    let mut bob = Database::open(bob.into_store(), "bob").unwrap();
    assert_eq!(bob.deferred_count(), 5_000);
    // An honest write meanwhile costs no look-up of them and is not held up.
    bob.put("n:0", json!({"by": "bob"}), NOW + 1).unwrap();
    let mut commits = 0;
    while bob.apply_due(ahead).unwrap() > 0 {
        commits += 1;
    }
    assert_eq!((commits, bob.deferred_count(), bob.next_due_ms()), (5, 0, None));
    let mut carol = replica("carol");
    carol.apply_remote(fast.ops_after("fast", 0, usize::MAX).unwrap(), ahead).unwrap();
    carol.apply_remote(bob.ops_after("bob", 0, 10).unwrap(), ahead).unwrap();
    for i in [0, 1, 2_499] {
        let id = format!("n:{i}");
        assert_eq!(bob.record(&id).unwrap(), carol.record(&id).unwrap(), "{id}");
    }
}
