//! The merge laws, checked over random histories: applying the same set of
//! operations in any order, grouping and number of times gives the same
//! state, for every built-in conflict resolver and a user-supplied one.
//!
//! Histories are made the way real replicas make them: three replicas write
//! (with skewed clocks) and sync with each other at random moments, so
//! writes are sometimes sequential and sometimes concurrent.

use pluresdb_core::merge;
use pluresdb_core::{
    ConflictResolver, Database, FieldValue, FirstWriterWins, FnResolver, Hlc, KeepAll, LastWriterWins, MemoryStore, Node, NodeRecord, OpId,
    OperationType, OperationWithMetadata, Store,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

const PEERS: [&str; 3] = ["peer-a", "peer-b", "peer-c"];
const NODES: [&str; 2] = ["n:1", "n:2"];
const FIELDS: [&str; 3] = ["x", "y", "z"];
/// The receivers' wall time: every operation written here is due.
const NOW: u64 = 1_000_000;

#[derive(Clone, Debug)]
enum Action {
    Write { peer: usize, node: usize, kind: u8, fields: u8, value: i64, tick: u64 },
    Sync { from: usize, to: usize },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (0..3usize, 0..2usize, 0..10u8, 1..8u8, -3..4i64, 0..3u64)
            .prop_map(|(peer, node, kind, fields, value, tick)| Action::Write { peer, node, kind, fields, value, tick }),
        1 => (0..3usize, 0..3usize).prop_map(|(from, to)| Action::Sync { from, to }),
    ]
}

type Replica = Database<MemoryStore>;

fn replica(peer: &str) -> Replica {
    Database::open(MemoryStore::new(), peer).expect("memory store opens")
}

/// Brings `to` up to date with what `from` holds, origin by origin.
fn sync(from: &Replica, to: &mut Replica) {
    let missing: Vec<(String, u64)> =
        from.version_vector().missing_from(to.version_vector()).map(|(o, after, _)| (o.to_owned(), after)).collect();
    for (origin, after) in missing {
        let ops = from.ops_after(&origin, after, usize::MAX).expect("read op log");
        to.apply_remote(ops, NOW).expect("in-order ops apply");
    }
}

/// Runs the actions on three replicas and returns every operation written.
fn history(actions: &[Action]) -> Vec<OperationWithMetadata> {
    let mut replicas: Vec<Replica> = PEERS.iter().map(|p| replica(p)).collect();
    // Each peer's wall clock is skewed differently; peer-c runs far ahead.
    let mut wall = [1_000u64, 990, 50_000];
    for action in actions {
        match *action {
            Action::Write { peer, node, kind, fields, value, tick } => {
                wall[peer] += tick;
                let id = NODES[node];
                let data: Map<String, Value> = FIELDS
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| fields & (1 << i) != 0)
                    .map(|(i, f)| (f.to_string(), if value == 0 && i == 0 { Value::Null } else { json!(value * 10 + i as i64) }))
                    .collect();
                let db = &mut replicas[peer];
                let result = match kind {
                    0 => db.delete(id, wall[peer]).map(|_| ()),
                    1..=2 => db.put(id, Value::Object(data), wall[peer]).map(|_| ()),
                    _ => db.update(id, Value::Object(data), wall[peer]).map(|_| ()),
                };
                if let Err(err) = result {
                    assert!(matches!(err, pluresdb_core::Error::NotFound { .. }), "unexpected {err}");
                }
            }
            Action::Sync { from, to } if from != to => {
                let (a, b) = if from < to { replicas.split_at_mut(to) } else { replicas.split_at_mut(from) };
                let (src, dst) = if from < to { (&a[from], &mut b[0]) } else { (&b[0], &mut a[to]) };
                sync(src, dst);
            }
            Action::Sync { .. } => {}
        }
    }
    let mut ops = Vec::new();
    for (i, peer) in PEERS.iter().enumerate() {
        ops.extend(replicas[i].ops_after(peer, 0, usize::MAX).expect("read op log"));
    }
    ops
}

fn custom_resolver() -> Arc<dyn ConflictResolver> {
    // "The largest number wins", ties to the newest.
    Arc::new(FnResolver::new("largest", |_: &str, _: &str, values: &[FieldValue]| {
        let key = |i: usize| (values[i].value.as_i64().unwrap_or(i64::MIN), i);
        (0..values.len()).max_by_key(|&i| key(i)).unwrap_or(0)
    }))
}

fn resolvers() -> Vec<Arc<dyn ConflictResolver>> {
    vec![Arc::new(LastWriterWins), Arc::new(FirstWriterWins), Arc::new(KeepAll), custom_resolver()]
}

/// Everything that must be equal between converged replicas: the stored
/// records, the version vector, and the view under every resolver.
#[derive(Debug, PartialEq)]
struct Observed {
    records: Vec<NodeRecord>,
    version_vector: Vec<(String, u64)>,
    views: Vec<Vec<Option<Node>>>,
}

fn observe(db: &Replica) -> Observed {
    let records = db.store().scan_nodes("", None, usize::MAX).expect("scan");
    // What a durable store would read back must be the same record.
    for record in &records {
        let bytes = pluresdb_core::codec::encode(record);
        assert_eq!(&pluresdb_core::codec::decode::<NodeRecord>(&bytes, "record").expect("decodes"), record);
        let mut direct = Vec::new();
        record.encode_into(&mut direct);
        assert_eq!(&NodeRecord::decode(&direct).expect("decodes"), record);
    }
    let views = resolvers().iter().map(|r| records.iter().map(|rec| rec.view(&**r)).collect()).collect();
    let version_vector = db.version_vector().iter().map(|(o, s)| (o.to_owned(), s)).collect();
    Observed { records, version_vector, views }
}

/// Interleaves the per-origin logs in an order chosen by `choices`, keeping
/// each origin's operations in sequence.
fn interleave(ops: &[OperationWithMetadata], choices: &[usize]) -> Vec<OperationWithMetadata> {
    let mut origins: Vec<&str> = ops.iter().map(|op| &*op.id.origin).collect();
    origins.sort_unstable();
    origins.dedup();
    let mut logs: Vec<std::collections::VecDeque<OperationWithMetadata>> =
        origins.iter().map(|p| ops.iter().filter(|op| &*op.id.origin == *p).cloned().collect()).collect();
    let mut out = Vec::with_capacity(ops.len());
    let mut choice = choices.iter().cycle();
    while logs.iter().any(|l| !l.is_empty()) {
        let live: Vec<usize> = (0..logs.len()).filter(|&i| !logs[i].is_empty()).collect();
        let pick = live[choice.next().copied().unwrap_or(0) % live.len()];
        out.extend(logs[pick].pop_front());
    }
    out
}

fn apply_in_batches(db: &mut Replica, ops: &[OperationWithMetadata], batch: usize) -> Result<(), TestCaseError> {
    for chunk in ops.chunks(batch.max(1)) {
        db.apply_remote(chunk.to_vec(), NOW).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    Ok(())
}

/// A hostile update: on a node, writing some fields, superseding ids that
/// may or may not exist (other origins' past and future writes), at any
/// time.
#[derive(Clone, Debug)]
struct Hostile {
    node: usize,
    fields: u8,
    targets: Vec<(usize, u64)>,
    time: u64,
}

fn hostile() -> impl Strategy<Value = Hostile> {
    (0..2usize, 1..8u8, proptest::collection::vec((0..4usize, 1..30u64), 0..6), 0..60_000u64)
        .prop_map(|(node, fields, targets, time)| Hostile { node, fields, targets, time })
}

/// The hostile updates as operations of origin `mallory`, in sequence.
fn hostile_ops(hostile: &[Hostile]) -> Vec<OperationWithMetadata> {
    hostile
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let seq = i as u64 + 1;
            let written: Vec<&str> = FIELDS.iter().enumerate().filter(|(b, _)| h.fields & (1 << b) != 0).map(|(_, f)| *f).collect();
            let data: Map<String, Value> = written.iter().map(|f| (f.to_string(), json!(format!("mallory {seq}")))).collect();
            let mut op = OperationWithMetadata::new(OperationType::UpdateNode, NODES[h.node].into(), Value::Object(data), "mallory");
            op.id.seq = seq;
            op.timestamp = Hlc::new(h.time, 0);
            let ids: Vec<OpId> = h
                .targets
                .iter()
                .filter_map(|&(origin, s)| match PEERS.get(origin) {
                    Some(peer) => Some(OpId::new(*peer, s)),
                    // Its own earlier writes only (validation refuses the rest).
                    None => (s < seq).then(|| OpId::new("mallory", s)),
                })
                .collect();
            if !ids.is_empty() {
                op.supersedes = written.iter().map(|f| (f.to_string(), ids.clone())).collect();
            }
            op.validate().expect("a hostile op that every replica accepts");
            op
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A member that supersedes whatever it likes (ops that do not exist
    /// yet, ops newer than its write, its own) cannot make replicas differ:
    /// any delivery order, any batching, any permutation of the merge
    /// function gives one state.
    #[test]
    fn hostile_supersessions_keep_convergence(
        actions in proptest::collection::vec(action(), 1..50),
        hostile in proptest::collection::vec(hostile(), 1..12),
        orders in proptest::collection::vec(proptest::collection::vec(0..4usize, 1..20), 3),
        batch in 1..8usize,
        seed in proptest::collection::vec(any::<prop::sample::Index>(), 70),
        times in proptest::collection::vec((0..60_000u64, any::<bool>()), 1..12),
    ) {
        let mut ops = history(&actions);
        ops.extend(hostile_ops(&hostile));
        // Notes whose target wrote another node are never met (and never
        // change a value): the states compared leave them out.
        let all: HashSet<OpId> = ops.iter().map(|op| op.id.clone()).collect();
        let unmet = |mut observed: Observed| {
            for record in &mut observed.records {
                record.pending.retain(|p| !all.contains(&p.target));
            }
            observed
        };
        let mut reference = replica("observer");
        apply_in_batches(&mut reference, &ops, ops.len())?;
        let expected = unmet(observe(&reference));
        for order in &orders {
            let mut db = replica("observer");
            apply_in_batches(&mut db, &interleave(&ops, order), batch)?;
            prop_assert_eq!(&unmet(observe(&db)), &expected);
        }
        // With operations deferred until due (a replica whose clock is
        // behind theirs) and released in between.
        let mut db = replica("observer").with_max_clock_drift(std::time::Duration::ZERO);
        let mut times = times.iter().cycle();
        for chunk in interleave(&ops, &orders[0]).chunks(batch) {
            let &(now, release) = times.next().unwrap_or(&(0, false));
            db.apply_remote(chunk.to_vec(), now).map_err(|e| TestCaseError::fail(e.to_string()))?;
            if release {
                db.apply_due(now).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
        }
        while db.apply_due(NOW).map_err(|e| TestCaseError::fail(e.to_string()))? > 0 {}
        prop_assert_eq!(&unmet(observe(&db)), &expected);

        let run = |ops: &[&OperationWithMetadata]| {
            let mut records: BTreeMap<String, NodeRecord> = BTreeMap::new();
            let mut applied: HashSet<OpId> = HashSet::new();
            for op in ops {
                if applied.insert(op.id.clone()) {
                    let record = records.entry(op.node_id.clone()).or_insert_with(|| NodeRecord::empty(op.node_id.clone()));
                    merge::apply(record, op, |id| applied.contains(id) && *id != op.id);
                }
            }
            records
        };
        let in_order: Vec<&OperationWithMetadata> = ops.iter().collect();
        let mut permuted = in_order.clone();
        for (i, index) in seed.iter().enumerate().take(permuted.len()) {
            let j = index.index(permuted.len());
            permuted.swap(i, j);
        }
        let unmet_records = |mut records: BTreeMap<String, NodeRecord>| {
            for record in records.values_mut() {
                record.pending.retain(|p| !all.contains(&p.target));
            }
            records
        };
        prop_assert_eq!(unmet_records(run(&permuted)), unmet_records(run(&in_order)));
    }

    /// Commutative and idempotent: any interleaving, any batching, with
    /// whole batches and single ops delivered again, gives one state.
    #[test]
    fn any_delivery_order_with_duplicates_converges(
        actions in proptest::collection::vec(action(), 1..60),
        orders in proptest::collection::vec(proptest::collection::vec(0..3usize, 1..20), 3),
        batch in 1..8usize,
        dups in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let ops = history(&actions);
        let mut reference = replica("observer");
        apply_in_batches(&mut reference, &ops, ops.len())?;
        let expected = observe(&reference);

        for order in &orders {
            let shuffled = interleave(&ops, order);
            let mut db = replica("observer");
            apply_in_batches(&mut db, &shuffled, batch)?;
            // Deliver everything again, then random single ops again.
            apply_in_batches(&mut db, &shuffled, batch + 1)?;
            for index in &dups {
                if !shuffled.is_empty() {
                    let op = shuffled[index.index(shuffled.len())].clone();
                    let report = db.apply_remote(vec![op], NOW).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(report.applied, 0);
                }
            }
            prop_assert_eq!(&observe(&db), &expected);
        }
        prop_assert_eq!(expected.version_vector.iter().map(|(_, s)| s).sum::<u64>(), ops.len() as u64);
    }

    /// Associative: merging replicas X, Y, Z as (X+Y)+Z or X+(Y+Z) gives
    /// the same state, where each holds a different prefix of every log.
    #[test]
    fn merging_replicas_is_associative(
        actions in proptest::collection::vec(action(), 1..60),
        cuts in proptest::collection::vec((0..40usize, 0..40usize, 0..40usize), 3),
    ) {
        let ops = history(&actions);
        let holding = |which: usize| {
            let mut db = replica(["x", "y", "z"][which]);
            for (p, peer) in PEERS.iter().enumerate() {
                let cut = [cuts[p].0, cuts[p].1, cuts[p].2][which];
                let log: Vec<_> = ops.iter().filter(|op| &*op.id.origin == *peer).take(cut).cloned().collect();
                db.apply_remote(log, NOW).expect("prefix applies");
            }
            db
        };
        let (mut x1, y1, z1) = (holding(0), holding(1), holding(2));
        sync(&y1, &mut x1);
        sync(&z1, &mut x1);
        let (x2, mut y2, z2) = (holding(0), holding(1), holding(2));
        sync(&z2, &mut y2);
        let mut x2 = x2;
        sync(&y2, &mut x2);
        prop_assert_eq!(observe(&x1), observe(&x2));
    }

    /// The merge function alone is order-independent even without per-origin
    /// order, for any permutation of the operations of one node.
    #[test]
    fn merge_function_is_order_independent(
        actions in proptest::collection::vec(action(), 1..60),
        seed in proptest::collection::vec(any::<prop::sample::Index>(), 60),
    ) {
        let ops = history(&actions);
        let run = |ops: &[&OperationWithMetadata]| {
            let mut records: BTreeMap<String, NodeRecord> = BTreeMap::new();
            let mut applied: HashSet<OpId> = HashSet::new();
            for op in ops {
                if applied.contains(&op.id) {
                    continue;
                }
                let record = records.entry(op.node_id.clone()).or_insert_with(|| NodeRecord::empty(op.node_id.clone()));
                merge::apply(record, op, |id| applied.contains(id));
                applied.insert(op.id.clone());
            }
            records
        };
        let in_order: Vec<&OperationWithMetadata> = ops.iter().collect();
        let mut permuted = in_order.clone();
        for (i, index) in seed.iter().enumerate().take(permuted.len()) {
            let j = index.index(permuted.len());
            permuted.swap(i, j);
        }
        let mut with_dups = permuted.clone();
        with_dups.extend(in_order.iter().rev());
        let expected = run(&in_order);
        prop_assert_eq!(&run(&permuted), &expected);
        prop_assert_eq!(&run(&with_dups), &expected);
        for (id, record) in &expected {
            prop_assert!(record.pending.is_empty(), "all targets arrived, yet {} keeps pending notes", id);
        }
    }

    /// Deferring is invisible in the end: a replica that receives the
    /// operations at wall times where some are beyond its horizon (no drift
    /// allowed; peer-c runs far ahead), and releases them whenever they
    /// are due, in any interleaving with new batches, ends in the state of
    /// one that received everything when it was due.
    #[test]
    fn deferring_operations_until_they_are_due_gives_the_same_state(
        actions in proptest::collection::vec(action(), 1..60),
        order in proptest::collection::vec(0..3usize, 1..20),
        batch in 1..8usize,
        times in proptest::collection::vec((0..60_000u64, any::<bool>()), 1..12),
    ) {
        let ops = history(&actions);
        let mut reference = replica("observer");
        apply_in_batches(&mut reference, &ops, ops.len())?;
        let expected = observe(&reference);

        let mut db = replica("observer").with_max_clock_drift(std::time::Duration::ZERO);
        let mut times = times.iter().cycle();
        for chunk in interleave(&ops, &order).chunks(batch) {
            let &(now, release) = times.next().unwrap_or(&(0, false));
            db.apply_remote(chunk.to_vec(), now).map_err(|e| TestCaseError::fail(e.to_string()))?;
            if release {
                db.apply_due(now).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
        }
        while db.apply_due(NOW).map_err(|e| TestCaseError::fail(e.to_string()))? > 0 {}
        prop_assert_eq!(db.deferred_count(), 0);
        prop_assert_eq!(&observe(&db), &expected);
    }
}

#[test]
fn concurrent_writes_are_conflicts_and_a_later_write_resolves_them() {
    let mut a = replica("peer-a").with_resolver(Arc::new(KeepAll));
    let mut b = replica("peer-b").with_resolver(Arc::new(KeepAll));
    a.put("doc:1", json!({"title": "draft"}), 1_000).unwrap();
    sync(&a, &mut b);
    a.update("doc:1", json!({"title": "from a"}), 2_000).unwrap();
    b.update("doc:1", json!({"title": "from b"}), 2_001).unwrap();
    sync(&a, &mut b);
    sync(&b, &mut a);
    let node = a.get("doc:1").unwrap().unwrap();
    assert_eq!(node.value["title"], "from b", "newest shown while in conflict");
    let titles: Vec<&Value> = node.conflicts["title"].iter().map(|v| &v.value).collect();
    assert_eq!(titles, vec![&json!("from a"), &json!("from b")]);

    // FWW on the same state shows the other value; a sequential update on
    // one replica is not a conflict at all.
    let fww = a.record("doc:1").unwrap().unwrap().view(&FirstWriterWins).unwrap();
    assert_eq!(fww.value["title"], "from a");

    a.update("doc:1", json!({"title": "merged"}), 3_000).unwrap();
    sync(&a, &mut b);
    for db in [&a, &b] {
        let node = db.get("doc:1").unwrap().unwrap();
        assert_eq!(node.value["title"], "merged");
        assert!(node.conflicts.is_empty());
    }
}

/// An update that names another origin's next write, before that write
/// exists, does not discard it: the write is made after (its author's clock
/// has seen the update), so its stamp is higher, and only older values are
/// superseded. Before, the write was dead on arrival on every replica,
/// including its author's, while the API answered 200.
#[test]
fn a_write_superseding_a_future_op_of_another_origin_does_not_discard_it() {
    let mut a = replica("peer-a").with_resolver(Arc::new(KeepAll));
    let mut b = replica("peer-b").with_resolver(Arc::new(KeepAll));
    a.put("doc:1", json!({"title": "draft"}), 1_000).unwrap();
    sync(&a, &mut b);
    // Mallory supersedes peer-b's next ten writes, before they exist.
    let base = a.ops_after("peer-a", 0, 1).unwrap().remove(0);
    let mut hostile = OperationWithMetadata::new(OperationType::UpdateNode, "doc:1".into(), json!({"title": "mine"}), "mallory");
    hostile.id.seq = 1;
    hostile.timestamp = Hlc::new(2_000, 0);
    let mut targets: Vec<OpId> = (1..=10).map(|s| OpId::new("peer-b", s)).collect();
    targets.push(base.id.clone());
    hostile.supersedes.insert("title".into(), targets);
    for db in [&mut a, &mut b] {
        db.apply_remote(vec![hostile.clone()], NOW).unwrap();
    }
    b.update("doc:1", json!({"title": "from b"}), 1_500).unwrap();
    sync(&b, &mut a);
    for db in [&a, &b] {
        let node = db.get("doc:1").unwrap().unwrap();
        // b had seen mallory's value and replaced it: no conflict.
        assert_eq!(node.value.get("title"), Some(&json!("from b")), "b's write survives");
        assert!(node.conflicts.is_empty(), "{:?}", node.conflicts);
    }
    // The same whatever arrives first.
    let mut c = replica("peer-c").with_resolver(Arc::new(KeepAll));
    sync(&b, &mut c);
    c.apply_remote(vec![hostile], NOW).unwrap();
    assert_eq!(c.record("doc:1").unwrap(), b.record("doc:1").unwrap());
}

/// A writer that sees more concurrent values in a field than an update may
/// supersede still writes an operation every peer accepts: it supersedes
/// the newest ones, and the next writes replace the rest.
#[test]
fn a_writer_facing_more_live_values_than_the_limit_writes_an_accepted_op() {
    let concurrent = pluresdb_core::MAX_SUPERSEDED_PER_FIELD + 44;
    let mut a = replica("peer-a").with_resolver(Arc::new(KeepAll));
    let writes: Vec<OperationWithMetadata> = (0..concurrent)
        .map(|i| {
            let mut op = OperationWithMetadata::new(OperationType::UpdateNode, "doc".into(), json!({"x": i}), format!("w{i:03}"));
            op.id.seq = 1;
            op.timestamp = Hlc::new(1_000 + i as u64, 0);
            op
        })
        .collect();
    a.apply_remote(writes.clone(), NOW).unwrap();
    assert_eq!(a.record("doc").unwrap().unwrap().fields["x"].len(), concurrent);
    a.update("doc", json!({"x": "merged"}), 5_000).unwrap();
    let op = a.ops_after("peer-a", 0, 1).unwrap().remove(0);
    assert_eq!(op.supersedes["x"].len(), pluresdb_core::MAX_SUPERSEDED_PER_FIELD);
    let mut b = replica("peer-b").with_resolver(Arc::new(KeepAll));
    b.apply_remote(writes, NOW).unwrap();
    b.apply_remote(vec![op], NOW).unwrap();
    assert_eq!(b.record("doc").unwrap(), a.record("doc").unwrap());
    assert_eq!(b.get("doc").unwrap().unwrap().value["x"], "merged");
    // The next write replaces what was left.
    a.update("doc", json!({"x": "again"}), 6_000).unwrap();
    assert_eq!(a.record("doc").unwrap().unwrap().fields["x"].len(), 1);
}

#[test]
fn a_gap_in_an_origin_sequence_is_refused_without_writing_anything() {
    let mut a = replica("peer-a");
    for i in 0..3 {
        a.put(&format!("n:{i}"), json!({"i": i}), 1_000 + i).unwrap();
    }
    let ops = a.ops_after("peer-a", 0, 10).unwrap();
    let mut b = replica("peer-b");
    let err = b.apply_remote(vec![ops[0].clone(), ops[2].clone()], NOW).unwrap_err();
    assert!(matches!(err, pluresdb_core::Error::SequenceGap { expected: 2, found: 3, .. }), "{err}");
    assert!(b.version_vector().is_empty());
    assert!(b.get("n:0").unwrap().is_none(), "the valid op before the gap was not committed either");
}
