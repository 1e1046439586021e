//! The sync engine between a few in-process replicas: delta transfer,
//! relay, restart, conflicts and hostile input.

use pluresdb_core::{Database, MemoryStore, OperationType, OperationWithMetadata, Store};
use pluresdb_sync::{DataSyncEngine, SyncConfig, SyncError, SyncMessage};
use serde_json::json;

const T0: u64 = 1_700_000_000_000;

type Engine<S = MemoryStore> = DataSyncEngine<S>;

fn engine(peer: &str, config: SyncConfig) -> Engine {
    let mut e = DataSyncEngine::with_database(config, Database::open(MemoryStore::new(), peer).unwrap()).unwrap();
    e.start(T0);
    e
}

fn put(peer: &str, id: &str, value: serde_json::Value) -> OperationWithMetadata {
    OperationWithMetadata::new(OperationType::CreateNode, id.into(), value, peer)
}

/// Delivers every message between the engines (by peer id) until none has
/// anything to send; returns the number of delivery rounds.
fn settle<S: Store>(engines: &mut [(&str, &mut Engine<S>)], now: u64) -> usize {
    let mut rounds = 0;
    loop {
        let mut moved = false;
        for i in 0..engines.len() {
            while let Some(t) = engines[i].1.poll_transmit() {
                let from = engines[i].0.to_owned();
                let Some(to) = engines.iter().position(|(name, _)| *name == t.peer) else { continue };
                engines[to].1.handle_input(&from, &t.bytes, now).unwrap();
                moved = true;
            }
        }
        if !moved {
            return rounds;
        }
        rounds += 1;
    }
}

#[test]
fn a_peer_with_a_million_ops_in_common_receives_only_the_ten_new_ones() {
    let config = SyncConfig::default();
    let mut a = engine("peer-a", config.clone());
    let ops: Vec<OperationWithMetadata> = (0..1_000_000u32).map(|i| put("peer-a", &format!("n:{i}"), json!({"i": i}))).collect();
    for chunk in ops.chunks(50_000) {
        a.write(chunk.to_vec(), T0).unwrap();
    }
    // B starts from a copy of A's store: a million operations in common.
    let common = a.database().store().clone();
    let mut b = DataSyncEngine::with_database(config, Database::open(common, "peer-b").unwrap()).unwrap();
    b.start(T0);
    let new: Vec<_> = (0..10).map(|i| put("peer-a", &format!("new:{i}"), json!({"i": i}))).collect();
    a.write(new, T0 + 1).unwrap();
    let written = a.database().ops_after("peer-a", 1_000_000, 100).unwrap();
    assert_eq!(written.len(), 10);
    let op_bytes: usize = written.iter().map(|op| pluresdb_core::codec::encode(op).len()).sum();

    a.peer_connected("peer-b", T0 + 2);
    b.peer_connected("peer-a", T0 + 2);
    settle(&mut [("peer-a", &mut a), ("peer-b", &mut b)], T0 + 2);

    assert_eq!(a.database().version_vector(), b.database().version_vector());
    let sent = a.status().traffic;
    assert_eq!(sent.ops_sent, 10, "only the new operations travel");
    assert!(sent.bytes_sent < 2 * op_bytes as u64 + 2_000, "{} bytes sent for {op_bytes} bytes of operations", sent.bytes_sent);
    assert_eq!(b.status().traffic.ops_sent, 0);
}

#[test]
fn a_small_delta_takes_one_round_trip_and_is_pushed_in_real_time() {
    let mut a = engine("peer-a", SyncConfig::default());
    let mut b = engine("peer-b", SyncConfig::default());
    a.write(vec![put("peer-a", "x", json!({"v": 1}))], T0).unwrap();
    a.peer_connected("peer-b", T0);
    b.peer_connected("peer-a", T0);
    // b's request reaches a, a's answer reaches b: one round trip (plus the
    // acknowledgements that travel back).
    let rounds = settle(&mut [("peer-b", &mut b), ("peer-a", &mut a)], T0);
    assert!(rounds <= 3, "{rounds} delivery rounds");
    assert!(b.database().get("x").unwrap().is_some());
    assert_eq!(b.status().peers[0].last_sync_ms, Some(T0), "b's round with a completed");

    // A later write is pushed without waiting for a round.
    a.write(vec![put("peer-a", "y", json!({"v": 2}))], T0 + 5).unwrap();
    let pushed = a.poll_transmit().unwrap();
    assert!(
        matches!(SyncMessage::decode("peer-a", &pushed.bytes).unwrap(), SyncMessage::DataSync { operations, .. } if operations.len() == 1)
    );
    b.handle_input("peer-a", &pushed.bytes, T0 + 5).unwrap();
    assert!(b.database().get("y").unwrap().is_some());
    // b acknowledges; a's pending queue for b empties.
    assert_eq!(a.status().pending_operations, 1);
    let ack = b.poll_transmit().unwrap();
    a.handle_input("peer-b", &ack.bytes, T0 + 6).unwrap();
    assert_eq!(a.status().pending_operations, 0);
}

/// A writer answers its callers between the commit and the push: a write
/// left unpushed is durable and queues nothing, and the push then sends
/// it (with any other write committed meanwhile) in one message.
#[test]
fn an_unpushed_write_is_durable_and_goes_out_with_the_next_push() {
    let mut a = engine("peer-a", SyncConfig::default());
    let mut b = engine("peer-b", SyncConfig::default());
    a.peer_connected("peer-b", T0);
    b.peer_connected("peer-a", T0);
    settle(&mut [("peer-b", &mut b), ("peer-a", &mut a)], T0);

    let receipts = a.write_unpushed(vec![put("peer-a", "x", json!({"v": 1}))], T0 + 1).unwrap();
    assert_eq!(receipts.len(), 1);
    assert_eq!(a.database().store().ops_after("peer-a", 0, 10).unwrap().len(), 1, "committed to the store");
    assert!(a.poll_transmit().is_none(), "nothing queued before the push");
    a.write_unpushed(vec![put("peer-a", "y", json!({"v": 2}))], T0 + 2).unwrap();
    a.push(T0 + 2);
    let pushed = a.poll_transmit().expect("the push queues the writes");
    assert!(a.poll_transmit().is_none());
    match SyncMessage::decode("peer-a", &pushed.bytes).unwrap() {
        SyncMessage::DataSync { operations, .. } => assert_eq!(operations.len(), 2),
        other => panic!("expected the writes, got {other:?}"),
    }
    b.handle_input("peer-a", &pushed.bytes, T0 + 3).unwrap();
    assert!(b.database().get("x").unwrap().is_some() && b.database().get("y").unwrap().is_some());
}

#[test]
fn operations_are_relayed_across_a_line_of_peers() {
    let (mut a, mut b, mut c) =
        (engine("a", SyncConfig::default()), engine("b", SyncConfig::default()), engine("c", SyncConfig::default()));
    a.peer_connected("b", T0);
    b.peer_connected("a", T0);
    b.peer_connected("c", T0);
    c.peer_connected("b", T0);
    settle(&mut [("a", &mut a), ("b", &mut b), ("c", &mut c)], T0);
    a.write(vec![put("a", "from-a", json!({}))], T0 + 1).unwrap();
    c.write(vec![put("c", "from-c", json!({}))], T0 + 1).unwrap();
    settle(&mut [("a", &mut a), ("b", &mut b), ("c", &mut c)], T0 + 1);
    for e in [&a, &b, &c] {
        assert!(e.database().get("from-a").unwrap().is_some() && e.database().get("from-c").unwrap().is_some());
    }
    // Nothing travels twice to the same peer: a sent its op once, c once.
    assert_eq!(a.status().traffic.ops_sent, 1);
    assert_eq!(c.status().traffic.ops_sent, 1);
    assert_eq!(b.status().traffic.ops_sent, 2, "b relays each op once, to the other side");
}

#[test]
fn without_conflict_resolution_concurrent_values_stay_visible() {
    let config = SyncConfig { enable_conflict_resolution: false, ..SyncConfig::default() };
    let (mut a, mut b) = (engine("a", config.clone()), engine("b", config));
    a.write(vec![put("a", "doc", json!({"title": "one"}))], T0).unwrap();
    b.write(vec![put("b", "doc2", json!({}))], T0).unwrap();
    a.peer_connected("b", T0);
    b.peer_connected("a", T0);
    settle(&mut [("a", &mut a), ("b", &mut b)], T0);
    a.peer_disconnected("b");
    b.peer_disconnected("a");
    let update =
        |peer: &str, title: &str| OperationWithMetadata::new(OperationType::UpdateNode, "doc".into(), json!({"title": title}), peer);
    a.write(vec![update("a", "from a")], T0 + 10).unwrap();
    b.write(vec![update("b", "from b")], T0 + 11).unwrap();
    a.peer_connected("b", T0 + 20);
    b.peer_connected("a", T0 + 20);
    settle(&mut [("a", &mut a), ("b", &mut b)], T0 + 20);
    for e in [&a, &b] {
        let node = e.database().get("doc").unwrap().unwrap();
        assert_eq!(node.conflicts["title"].len(), 2, "both concurrent values are kept");
    }
}

#[test]
fn hostile_input_is_refused_for_that_peer_only_and_changes_nothing() {
    let config = SyncConfig { max_batch_size: 256, ..SyncConfig::default() };
    let mut victim = engine("victim", config.clone());
    let mut friend = engine("friend", config.clone());
    victim.write(vec![put("victim", "mine", json!({"v": 1}))], T0).unwrap();
    victim.peer_connected("mallory", T0);
    victim.peer_connected("friend", T0);
    friend.peer_connected("victim", T0);
    let before = victim.database().store().scan_nodes("", None, usize::MAX).unwrap();

    let signed = |seq: u64, node: &str| {
        let mut op = put("mallory", node, json!({"x": 1}));
        op.id.seq = seq;
        op.timestamp = pluresdb_core::Hlc::new(T0, 0);
        op
    };
    let vv = |n: u64| [("mallory".to_string(), n)].into_iter().collect::<pluresdb_core::VersionVector>();
    let data = |ops: Vec<OperationWithMetadata>, n: u64| {
        SyncMessage::DataSync { from_peer: "mallory".into(), operations: ops, version_vector: vv(n) }.encode()
    };

    type Expect = fn(&SyncError) -> bool;
    let cases: Vec<(Vec<u8>, Expect)> = vec![
        (b"\xff\x00garbage".to_vec(), |e| matches!(e, SyncError::Decode { .. })),
        (data((1..=257).map(|s| signed(s, "n")).collect(), 257), |e| matches!(e, SyncError::BatchTooLarge { size: 257, limit: 256, .. })),
        (data(vec![signed(1, "")], 1), |e| matches!(e, SyncError::InvalidOperation { .. })),
        (data(vec![], u64::MAX), |e| matches!(e, SyncError::AbsurdVersionVector { .. })),
        (SyncMessage::SyncAck { from_peer: "friend".into(), version_vector: vv(0) }.encode(), |e| {
            matches!(e, SyncError::WrongSender { .. })
        }),
    ];
    for (bytes, expected) in &cases {
        let err = victim.handle_input("mallory", bytes, T0).unwrap_err();
        assert!(expected(&err), "unexpected error {err}");
    }
    assert_eq!(victim.database().store().scan_nodes("", None, usize::MAX).unwrap(), before, "nothing stored changed");
    let mallory = victim.status().peers.into_iter().find(|p| p.peer_id == "mallory").unwrap();
    assert_eq!(mallory.traffic.errors, cases.len() as u64);
    assert!(mallory.last_error.unwrap().contains("claims to come from friend"));

    // An op after a gap is not applied; the victim asks for what is missing.
    victim.handle_input("mallory", &data(vec![signed(3, "gap")], 3), T0).unwrap();
    assert!(victim.database().get("gap").unwrap().is_none());
    let asked = std::iter::from_fn(|| victim.poll_transmit())
        .filter(|t| t.peer == "mallory")
        .map(|t| SyncMessage::decode("victim", &t.bytes).unwrap());
    assert!(asked.into_iter().any(|m| matches!(m, SyncMessage::SyncRequest { .. })));

    // The friend is unaffected.
    victim.write(vec![put("victim", "later", json!({}))], T0 + 1).unwrap();
    settle(&mut [("victim", &mut victim), ("friend", &mut friend)], T0 + 1);
    assert!(friend.database().get("mine").unwrap().is_some() && friend.database().get("later").unwrap().is_some());
}

/// Drops an engine in the middle of a sync (no clean shutdown), reopens
/// its durable store and finishes: nothing lost, nothing applied twice.
#[test]
fn a_restart_in_the_middle_of_a_sync_loses_nothing_and_applies_nothing_twice() {
    use pluresdb_store_redb::RedbStore;
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let config = SyncConfig { max_batch_size: 100, ..SyncConfig::default() };
    let open = |dir: &std::path::Path, peer: &str| {
        let mut e = DataSyncEngine::with_database(config.clone(), Database::open(RedbStore::open(dir).unwrap(), peer).unwrap()).unwrap();
        e.start(T0);
        e
    };
    let mut a = open(dir_a.path(), "a");
    let ops: Vec<_> = (0..2_000u32).map(|i| put("a", &format!("n:{i:05}"), json!({"i": i}))).collect();
    a.write(ops, T0).unwrap();

    let mut b = open(dir_b.path(), "b");
    a.peer_connected("b", T0);
    b.peer_connected("a", T0);
    // Deliver a few batches to b, then b "crashes".
    for _ in 0..6 {
        if let Some(t) = a.poll_transmit() {
            b.handle_input("a", &t.bytes, T0).unwrap();
        }
        while let Some(t) = b.poll_transmit() {
            a.handle_input("b", &t.bytes, T0).unwrap();
        }
    }
    let partial = b.database().version_vector().get("a");
    assert!(partial > 0 && partial < 2_000, "{partial}");
    drop(b);
    a.peer_disconnected("b");

    let mut b = open(dir_b.path(), "b");
    assert_eq!(b.database().version_vector().get("a"), partial, "what was acknowledged survived");
    a.peer_connected("b", T0 + 10);
    b.peer_connected("a", T0 + 10);
    settle(&mut [("a", &mut a), ("b", &mut b)], T0 + 10);
    assert_eq!(b.database().version_vector(), a.database().version_vector());
    let nodes = b.database().list("n:", None, 5_000).unwrap();
    assert_eq!(nodes.len(), 2_000);
    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(b.database().history(&node.id).unwrap().len(), 1, "{} applied once", node.id);
        assert_eq!(node.value["i"], i);
    }

    // a restarts too: what b acknowledged is not pending any more.
    a.flush_acked().unwrap();
    drop(a);
    let a = open(dir_a.path(), "a");
    assert_eq!(a.status().pending_operations, 0);
}

#[test]
fn a_forged_operation_is_refused_by_the_engine_and_counted() {
    use pluresdb_security::{Identity, OpSignatureVerifier};
    use std::sync::Arc;
    let (alice, mallory) = (Identity::from_seed([1; 32]), Identity::from_seed([66; 32]));
    let (alice_id, mallory_id) = (alice.peer_id().to_string(), mallory.peer_id().to_string());
    let signed_engine = |identity: Identity| {
        let id = identity.peer_id().to_string();
        let db =
            Database::open(MemoryStore::new(), id).unwrap().with_signer(Arc::new(identity)).with_verifier(Arc::new(OpSignatureVerifier));
        let mut e = DataSyncEngine::with_database(SyncConfig::default(), db).unwrap();
        e.start(T0);
        e
    };
    let mut a = signed_engine(alice);
    a.write(vec![put(&alice_id, "doc", json!({"owner": "alice"}))], T0).unwrap();
    let genuine = a.database().ops_after(&alice_id, 0, 10).unwrap();

    let mut victim = signed_engine(Identity::from_seed([2; 32]));
    victim.peer_connected(&mallory_id, T0);
    // Mallory relays Alice's op with the data changed, and then claims it
    // as her own.
    let mut altered = genuine.clone();
    altered[0].data = json!({"owner": "mallory"});
    let mut claimed = genuine.clone();
    claimed[0].id.origin = mallory_id.as_str().into();
    for ops in [altered, claimed] {
        let bytes = SyncMessage::DataSync { from_peer: mallory_id.clone(), operations: ops, version_vector: Default::default() }.encode();
        // Refused for that origin only (other origins in the same batch
        // would apply), and counted for the peer that sent it.
        victim.handle_input(&mallory_id, &bytes, T0).unwrap();
        let status = victim.status();
        let error = status.peers.iter().find(|p| p.peer_id == mallory_id).unwrap().last_error.clone().unwrap_or_default();
        assert!(error.contains("does not verify"), "{error}");
    }
    assert!(victim.database().get("doc").unwrap().is_none());
    let status = victim.status();
    assert_eq!(status.peers.iter().find(|p| p.peer_id == mallory_id).unwrap().traffic.errors, 2);

    // The genuine op, relayed by the same peer, applies.
    let bytes = SyncMessage::DataSync { from_peer: mallory_id.clone(), operations: genuine, version_vector: Default::default() }.encode();
    victim.handle_input(&mallory_id, &bytes, T0).unwrap();
    assert_eq!(victim.database().get("doc").unwrap().unwrap().value["owner"], "alice");
}

#[test]
fn an_operation_from_the_future_waits_for_its_time_on_the_engine_timer() {
    let hour = 3_600_000;
    let mut fast = engine("peer-fast", SyncConfig::default());
    let mut b = engine("peer-b", SyncConfig::default());
    fast.peer_connected("peer-b", T0);
    b.peer_connected("peer-fast", T0);
    // The fast peer's wall clock reads an hour ahead.
    fast.write(vec![put("peer-fast", "n:1", json!({"from": "the future"}))], T0 + hour).unwrap();
    settle(&mut [("peer-fast", &mut fast), ("peer-b", &mut b)], T0);
    assert_eq!(b.database().version_vector().get("peer-fast"), 1, "held and acknowledged");
    assert_eq!(b.status().pending_operations, 0);
    assert!(b.database().get("n:1").unwrap().is_none(), "not in effect an hour early");
    assert!(b.database().clock().wall_ms() <= T0 + 5 * 60_000);
    let clock = b.status().clock;
    assert_eq!(clock.deferred_operations, 1);
    assert_eq!(clock.origins[0].origin, "peer-fast");
    assert!(clock.origins[0].max_ahead_ms >= hour as i64 - 1, "{clock:?}");

    // Its time comes on the engine's own timer.
    b.peer_disconnected("peer-fast");
    b.handle_timeout(T0 + 2_000);
    let due = T0 + hour - 5 * 60_000;
    assert_eq!(b.poll_timeout(), Some(due));
    b.handle_timeout(due - 1);
    assert!(b.database().get("n:1").unwrap().is_none());
    b.handle_timeout(due);
    assert_eq!(b.database().get("n:1").unwrap().unwrap().value["from"], "the future");
    assert_eq!(b.status().clock.deferred_operations, 0);
}

/// A replica that signs its writes and checks its peers' with the stand-in
/// scheme.
fn signing_engine(peer: &str) -> Engine {
    use pluresdb_core::signing::stand_in::{NamedSigner, NamedVerifier};
    use std::sync::Arc;
    let db = Database::open(MemoryStore::new(), peer)
        .unwrap()
        .with_signer(Arc::new(NamedSigner(peer.into())))
        .with_verifier(Arc::new(NamedVerifier));
    let mut e = DataSyncEngine::with_database(SyncConfig::default(), db).unwrap();
    e.start(T0);
    e
}

/// The acknowledgements `engine` has to send: what each says it holds of
/// `origin`.
fn acks_of(engine: &mut Engine, origin: &str) -> Vec<u64> {
    std::iter::from_fn(|| engine.poll_transmit())
        .filter_map(|t| match SyncMessage::decode("x", &t.bytes).unwrap() {
            SyncMessage::SyncAck { version_vector, .. } => Some(version_vector.get(origin)),
            _ => None,
        })
        .collect()
}

#[test]
fn batches_queued_one_behind_the_other_are_applied_in_one_commit_unless_their_chains_break() {
    use pluresdb_core::signing::stand_in::NamedVerifier;
    use pluresdb_sync::Inbound;
    let mut a = signing_engine("peer-a");
    for start in [0, 256] {
        a.write((start..start + 256).map(|i| put("peer-a", &format!("n:{i}"), json!({"i": i}))).collect(), T0).unwrap();
    }
    let log = a.database().ops_after("peer-a", 0, 1_000).unwrap();
    let held = a.database().version_vector().clone();
    let message = |ops: &[OperationWithMetadata]| {
        SyncMessage::DataSync { from_peer: "peer-a".into(), operations: ops.to_vec(), version_vector: held.clone() }.encode()
    };
    let prepared = |bytes: &[u8]| Inbound::prepare("peer-a", bytes, Some(&NamedVerifier));
    let (first, second) = (message(&log[..256]), message(&log[256..]));

    // Together: both applied, one commit, one acknowledgement of all.
    let mut b = signing_engine("peer-b");
    b.handle_inbounds("peer-a", vec![prepared(&first), prepared(&second)], T0).unwrap();
    assert_eq!(b.database().version_vector().get("peer-a"), 512);
    assert_eq!(acks_of(&mut b, "peer-a"), [512]);
    assert_eq!(b.status().peers[0].traffic.ops_received, 512);

    // A second batch whose chain breaks inside: applied on their own, the
    // first is kept as it would be alone, the second refused.
    let mut broken = log[256..].to_vec();
    broken[10].prev = pluresdb_core::OpDigest([7; 32]);
    let mut c = signing_engine("peer-c");
    c.handle_inbounds("peer-a", vec![prepared(&first), prepared(&message(&broken))], T0).unwrap();
    assert_eq!(c.database().version_vector().get("peer-a"), 256);
    assert_eq!(acks_of(&mut c, "peer-a"), [256, 256]);
    assert_eq!(c.status().peers[0].traffic.errors, 1, "the broken chain is counted");
}

/// With `ack_delay`, a small batch is acknowledged when the delay is up,
/// together with the batches that came meanwhile (one message for both); a
/// quarter of `max_batch_size` is acknowledged at once, with what waited;
/// a disconnect forgets what waited (the sender resends it); without a
/// delay each batch is acknowledged at once.
#[test]
fn small_batches_are_acknowledged_together_after_the_ack_delay_and_a_quarter_batch_at_once() {
    use std::time::Duration;
    let mut a = engine("peer-a", SyncConfig::default());
    a.write(vec![put("peer-a", "n:0", json!({"i": 0}))], T0).unwrap();
    a.write(vec![put("peer-a", "n:1", json!({"i": 1}))], T0).unwrap();
    a.write((2..66).map(|i| put("peer-a", &format!("n:{i}"), json!({ "i": i }))).collect(), T0).unwrap();
    a.write(vec![put("peer-a", "n:66", json!({"i": 66}))], T0).unwrap();
    let log = a.database().ops_after("peer-a", 0, 1_000).unwrap();
    assert_eq!(log.len(), 67);
    let held = a.database().version_vector().clone();
    let message = |ops: &[OperationWithMetadata]| {
        SyncMessage::DataSync { from_peer: "peer-a".into(), operations: ops.to_vec(), version_vector: held.clone() }.encode()
    };
    let config = SyncConfig { max_batch_size: 256, ack_delay: Duration::from_millis(5), ..SyncConfig::default() };
    let connected = |config: SyncConfig| {
        let mut b = engine("peer-b", config);
        b.peer_connected("peer-a", T0);
        while b.poll_transmit().is_some() {}
        b
    };

    let mut b = connected(config.clone());
    b.handle_input("peer-a", &message(&log[..1]), T0).unwrap();
    assert_eq!(acks_of(&mut b, "peer-a"), Vec::<u64>::new(), "a lone write waits");
    assert!(b.poll_timeout().is_some_and(|at| at <= T0 + 5), "{:?}", b.poll_timeout());
    b.handle_input("peer-a", &message(&log[1..2]), T0 + 2).unwrap();
    b.handle_timeout(T0 + 4);
    assert_eq!(acks_of(&mut b, "peer-a"), Vec::<u64>::new(), "not due before the first batch's delay is up");
    b.handle_timeout(T0 + 5);
    assert_eq!(acks_of(&mut b, "peer-a"), [2], "both batches in one acknowledgement");
    b.handle_timeout(T0 + 50);
    assert_eq!(acks_of(&mut b, "peer-a"), Vec::<u64>::new(), "nothing twice");

    // A quarter batch (64 of 256) goes at once, with the one that waited.
    let mut b = connected(config.clone());
    b.handle_input("peer-a", &message(&log[..1]), T0).unwrap();
    b.handle_input("peer-a", &message(&log[1..2]), T0).unwrap();
    assert_eq!(acks_of(&mut b, "peer-a"), Vec::<u64>::new());
    b.handle_input("peer-a", &message(&log[2..66]), T0 + 1).unwrap();
    assert_eq!(acks_of(&mut b, "peer-a"), [66]);

    // A disconnect forgets what waited.
    b.handle_input("peer-a", &message(&log[66..]), T0 + 2).unwrap();
    b.peer_disconnected("peer-a");
    b.peer_connected("peer-a", T0 + 3);
    b.handle_timeout(T0 + 100);
    assert_eq!(acks_of(&mut b, "peer-a"), Vec::<u64>::new());

    // Without a delay: at once.
    let mut c = connected(SyncConfig::default());
    c.handle_input("peer-a", &message(&log[..1]), T0).unwrap();
    assert_eq!(acks_of(&mut c, "peer-a"), [1]);
}
