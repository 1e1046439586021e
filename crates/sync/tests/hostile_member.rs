//! A member of the network (or a bug) cannot stop replication: claims about
//! origins that never wrote are not kept, no message grows with the number
//! of origins, and every batch that goes out can be authenticated by its
//! receiver, whatever the size of the values.

use pluresdb_core::signing::stand_in::{NamedSigner, NamedVerifier};
use pluresdb_core::{Database, Hlc, MemoryStore, OpSigner, OperationType, OperationWithMetadata, Store, VersionVector};
use pluresdb_sync::{DataSyncEngine, OriginRange, SyncConfig, SyncMessage, MAX_MESSAGE_BYTES, MAX_VECTOR_ENTRIES};
use serde_json::json;
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;

/// The largest message that carries no operations: a vector of
/// `MAX_VECTOR_ENTRIES` origins of at most 128 bytes, and a range.
const CONTROL_MESSAGE_BOUND: usize = MAX_VECTOR_ENTRIES * (2 + 128 + 9) + 1024;

type Engine = DataSyncEngine<MemoryStore>;

fn engine_on(store: MemoryStore, peer: &str, signed: bool) -> Engine {
    let mut db = Database::open(store, peer).unwrap();
    if signed {
        db = db.with_signer(Arc::new(NamedSigner(peer.to_owned()))).with_verifier(Arc::new(NamedVerifier));
    }
    let mut e = DataSyncEngine::with_database(SyncConfig::default(), db).unwrap();
    e.start(T0);
    e
}

fn engine(peer: &str) -> Engine {
    engine_on(MemoryStore::new(), peer, false)
}

fn put(peer: &str, id: &str, value: serde_json::Value) -> OperationWithMetadata {
    OperationWithMetadata::new(OperationType::CreateNode, id.into(), value, peer)
}

/// A name shaped like a peer id (`12D3KooW` and 44 more characters).
fn fake_origin(i: usize) -> String {
    format!("12D3KooW{i:044}")
}

/// Checks what a message may be: every vector within `MAX_VECTOR_ENTRIES`,
/// a message without operations within `CONTROL_MESSAGE_BOUND`, any
/// message within `MAX_MESSAGE_BYTES`. Returns the message.
fn check_bounded(bytes: &[u8]) -> SyncMessage {
    assert!(bytes.len() <= MAX_MESSAGE_BYTES, "a message of {} bytes", bytes.len());
    let message = SyncMessage::decode("any", bytes).unwrap();
    assert!(message.version_vector().len() <= MAX_VECTOR_ENTRIES, "a {} naming {} origins", kind(&message), message.version_vector().len());
    if !matches!(message, SyncMessage::DataSync { ref operations, .. } if !operations.is_empty()) {
        assert!(bytes.len() <= CONTROL_MESSAGE_BOUND, "a {} of {} bytes", kind(&message), bytes.len());
    }
    message
}

fn kind(message: &SyncMessage) -> &'static str {
    match message {
        SyncMessage::SyncRequest { .. } => "SyncRequest",
        SyncMessage::DataSync { .. } => "DataSync",
        SyncMessage::SyncDone { .. } => "SyncDone",
        SyncMessage::SyncAck { .. } => "SyncAck",
        SyncMessage::ChainHeads { .. } => "ChainHeads",
    }
}

/// Delivers messages between the named engines, checking each, until none
/// has anything to send or `max_deliveries` were made (a livelock). Messages
/// to peers not in the list are checked and dropped. Returns the number of
/// deliveries.
fn settle(engines: &mut [(&str, &mut Engine)], now: u64, max_deliveries: usize) -> usize {
    let mut delivered = 0;
    loop {
        let mut moved = false;
        for i in 0..engines.len() {
            while let Some(t) = engines[i].1.poll_transmit() {
                check_bounded(&t.bytes);
                let from = engines[i].0.to_owned();
                let Some(to) = engines.iter().position(|(name, _)| *name == t.peer) else { continue };
                engines[to].1.handle_input(&from, &t.bytes, now).unwrap();
                moved = true;
                delivered += 1;
                if delivered >= max_deliveries {
                    return delivered;
                }
            }
        }
        if !moved {
            return delivered;
        }
    }
}

fn acked_record(engine: &Engine) -> Vec<u8> {
    engine.database().store().meta("sync.acked").unwrap().unwrap_or_default()
}

/// A peer claims, in acknowledgements, requests and data messages, to hold
/// 300,000 origins that never wrote. Before, every claim went into what the
/// victim keeps for that peer and writes to its store (`sync.acked`, read
/// back at every start): 18 MB here, growing with every claim. Now claims
/// about origins the victim does not hold are dropped, what it writes stays
/// small, no message it sends grows, and replication goes on.
#[test]
fn fake_origins_claimed_by_a_peer_are_dropped_and_no_message_grows() {
    let (mut victim, mut friend) = (engine("victim"), engine("friend"));
    victim.write(vec![put("victim", "mine", json!({"v": 1}))], T0).unwrap();
    victim.peer_connected("friend", T0);
    friend.peer_connected("victim", T0);
    settle(&mut [("victim", &mut victim), ("friend", &mut friend)], T0, 1_000);
    victim.peer_connected("mallory", T0);

    let claims = 300_000;
    for (page, start) in (0..claims).step_by(1_000).enumerate() {
        let version_vector: VersionVector = (start..start + 1_000).map(|i| (fake_origin(i), 5)).chain([("victim".to_owned(), 1)]).collect();
        let from_peer = "mallory".to_owned();
        let message = match page % 3 {
            0 => SyncMessage::SyncAck { from_peer, version_vector },
            1 => SyncMessage::SyncRequest { from_peer, round: page as u64, version_vector, origins: OriginRange::all() },
            _ => SyncMessage::DataSync { from_peer, operations: vec![], version_vector },
        };
        victim.handle_input("mallory", &message.encode(), T0 + 1).unwrap();
        while let Some(t) = victim.poll_transmit() {
            check_bounded(&t.bytes);
        }
    }

    victim.flush_acked().unwrap();
    let record = acked_record(&victim);
    assert!(record.len() < 1_000, "sync.acked is {} bytes", record.len());

    // More than a message may name is refused outright.
    let flood: VersionVector = (0..MAX_VECTOR_ENTRIES + 1).map(|i| (fake_origin(i), 1)).collect();
    let flood = SyncMessage::SyncAck { from_peer: "mallory".into(), version_vector: flood }.encode();
    let err = victim.handle_input("mallory", &flood, T0 + 1).unwrap_err();
    assert!(err.to_string().contains("1025 origins"), "{err}");

    // Replication with the honest peer goes on, every message bounded.
    victim.write(vec![put("victim", "later", json!({"v": 2}))], T0 + 2).unwrap();
    friend.write(vec![put("friend", "theirs", json!({"v": 3}))], T0 + 2).unwrap();
    settle(&mut [("victim", &mut victim), ("friend", &mut friend)], T0 + 2, 1_000);
    for e in [&victim, &friend] {
        for id in ["mine", "later", "theirs"] {
            assert!(e.database().get(id).unwrap().is_some(), "{id} on {}", e.peer_id());
        }
    }

    // A restart reads the small record back.
    victim.flush_acked().unwrap();
    let store = victim.into_database().unwrap().into_store();
    let mut victim = engine_on(store, "victim", false);
    victim.peer_connected("mallory", T0 + 3);
    victim.handle_timeout(T0 + 3);
    while let Some(t) = victim.poll_transmit() {
        check_bounded(&t.bytes);
    }
}

/// A data directory written by an older version may hold, per peer, claims
/// about origins the replica never held and sequence numbers beyond what it
/// holds. It loads, and what it writes back is only what it could hold.
#[test]
fn sync_acked_with_junk_from_an_older_version_loads_filtered() {
    let mut db = Database::open(MemoryStore::new(), "victim").unwrap();
    db.commit_local(vec![put("victim", "a", json!({})), put("victim", "b", json!({}))], T0).unwrap();
    let junk: VersionVector = (0..300_000).map(|i| (fake_origin(i), 7)).chain([("victim".to_owned(), 1)]).collect();
    let acked: std::collections::BTreeMap<String, VersionVector> = [("friend".to_owned(), junk)].into_iter().collect();
    db.commit_meta(vec![("sync.acked".into(), pluresdb_core::codec::encode(&acked))]).unwrap();
    assert!(acked_record_of(&db).len() > 10_000_000);

    let mut victim = DataSyncEngine::with_database(SyncConfig::default(), db).unwrap();
    victim.start(T0);
    assert_eq!(victim.status().pending_operations, 1, "the friend acknowledged the first write");
    let mut friend = engine("friend");
    let first = victim.database().ops_after("victim", 0, 1).unwrap();
    friend.write(first, T0).unwrap();
    victim.peer_connected("friend", T0);
    friend.peer_connected("victim", T0);
    settle(&mut [("victim", &mut victim), ("friend", &mut friend)], T0, 1_000);
    victim.flush_acked().unwrap();
    let written: std::collections::BTreeMap<String, VersionVector> =
        pluresdb_core::codec::decode(&acked_record(&victim), "acknowledged").unwrap();
    let expected: VersionVector = [("victim".to_owned(), 2)].into_iter().collect();
    assert_eq!(written.get("friend"), Some(&expected), "what the friend holds of the victim's origins, junk gone");
    assert!(friend.database().get("b").unwrap().is_some());
}

fn acked_record_of(db: &Database<MemoryStore>) -> Vec<u8> {
    db.store().meta("sync.acked").unwrap().unwrap_or_default()
}

/// A replica that holds operations of thousands of origins (each a member
/// that wrote once) describes them in pages: no message names more than
/// `MAX_VECTOR_ENTRIES` origins, and a fresh peer still receives
/// everything. Before, every request, `DataSync`, `SyncDone` and `SyncAck`
/// carried the whole vector (at ~300,000 origins, over 16 MiB: nothing
/// could be sent any more).
#[test]
fn a_replica_with_thousands_of_origins_syncs_in_bounded_pages() {
    let origins = 2_600;
    let mut a = engine("peer-a");
    let ops: Vec<OperationWithMetadata> = (0..origins)
        .map(|i| {
            let mut op = put(&fake_origin(i), &format!("n:{i}"), json!({"i": i}));
            op.id.seq = 1;
            op.timestamp = Hlc::new(T0, 0);
            op
        })
        .collect();
    a.write(ops, T0).unwrap();
    a.write(vec![put("peer-a", "a", json!({}))], T0).unwrap();
    let mut b = engine("peer-b");
    b.write(vec![put("peer-b", "b", json!({}))], T0).unwrap();

    a.peer_connected("peer-b", T0);
    b.peer_connected("peer-a", T0);
    let mut ranged = 0;
    let mut delivered = 0;
    let mut deliver = |from: &mut Engine, to: &mut Engine| {
        let mut moved = false;
        while let Some(t) = from.poll_transmit() {
            if let SyncMessage::SyncRequest { origins, .. } | SyncMessage::SyncDone { origins, .. } = check_bounded(&t.bytes) {
                ranged += usize::from(!origins.is_all());
            }
            to.handle_input(from.peer_id(), &t.bytes, T0).unwrap();
            moved = true;
            delivered += 1;
        }
        assert!(delivered < 10_000, "no end to the exchange");
        moved
    };
    while deliver(&mut a, &mut b) | deliver(&mut b, &mut a) {}
    assert_eq!(a.database().version_vector(), b.database().version_vector());
    assert_eq!(b.database().version_vector().len(), origins + 2);
    assert!(ranged >= 4, "{ranged} ranged requests and answers");
    // Both rounds completed (every page).
    for e in [&a, &b] {
        assert_eq!(e.status().peers[0].last_sync_ms, Some(T0), "{}", e.peer_id());
    }
}

/// Honest traffic: one group commit of six values of ~1 MiB. Before, the
/// batch was cut at the 4 MiB budget with no signed operation in it (only
/// the commit's last was signed), the receiver held it back, asked again,
/// and was sent the same batch forever.
#[test]
fn a_group_commit_of_large_values_replicates() {
    let mut a = engine_on(MemoryStore::new(), "peer-a", true);
    let mut b = engine_on(MemoryStore::new(), "peer-b", true);
    let big = |i: usize| put("peer-a", &format!("big:{i}"), json!({"blob": "x".repeat(1_040_000 + i)}));
    a.write((0..6).map(big).collect(), T0).unwrap();
    a.peer_connected("peer-b", T0);
    b.peer_connected("peer-a", T0);
    let delivered = settle(&mut [("peer-a", &mut a), ("peer-b", &mut b)], T0, 200);
    assert!(delivered < 200, "still exchanging after {delivered} messages: a livelock");
    assert_eq!(b.database().version_vector().get("peer-a"), 6);
    for i in 0..6 {
        assert_eq!(b.database().get(&format!("big:{i}")).unwrap().unwrap().value["blob"].as_str().map(str::len), Some(1_040_000 + i));
    }
}

/// A log written before the byte rule: six ~1 MiB operations of which only
/// the last is signed. The sender extends the batch past the budget to that
/// signed operation, so the receiver can authenticate it.
#[test]
fn an_unsigned_run_over_the_budget_is_sent_whole_to_its_signature() {
    let signer = NamedSigner("old".into());
    let mut ops = Vec::new();
    let mut prev = Default::default();
    for i in 1..=6u64 {
        let mut op = put("old", &format!("old:{i}"), json!({"blob": "y".repeat(1_040_000)}));
        op.id.seq = i;
        op.timestamp = Hlc::new(T0, i as u16);
        op.prev = prev;
        if i == 6 {
            op.signature = Some(signer.sign(&op.digest()));
        }
        prev = op.digest();
        ops.push(op);
    }
    let mut a = engine_on(MemoryStore::new(), "peer-a", true);
    let mut b = engine_on(MemoryStore::new(), "peer-b", true);
    a.write(ops, T0).unwrap();
    assert_eq!(a.database().version_vector().get("old"), 6);
    a.peer_connected("peer-b", T0);
    b.peer_connected("peer-a", T0);
    let delivered = settle(&mut [("peer-a", &mut a), ("peer-b", &mut b)], T0, 200);
    assert!(delivered < 200, "still exchanging after {delivered} messages: a livelock");
    assert_eq!(b.database().version_vector().get("old"), 6);
}
