//! Sync throughput between two in-process replicas, through the encoded
//! messages (no network): `cargo bench -p pluresdb-sync --bench sync`.
//!
//! Both nodes sign their writes and verify each other's (hash chains and
//! commit signatures), as nodes do.
//!
//! Prints ops/s for a full sync of 100,000 operations (memory stores, then
//! durable redb stores, beside raw batched redb writes of the same records
//! as the limit), wire bytes per operation against the operations' own
//! encoded size, and the round trips a small delta takes. First, what a
//! receiver spends per operation checking a batch ahead of its writer
//! (`PLURESDB_BENCH_PREPARE_ONLY=1` stops after it).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use pluresdb_core::{Database, EncodedOps, MemoryStore, OperationType, OperationWithMetadata, Store};
use pluresdb_security::{Identity, OpSignatureVerifier};
use pluresdb_store_redb::RedbStore;
use pluresdb_sync::{DataSyncEngine, Inbound, SyncConfig, SyncMessage};
use serde_json::{json, Value};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

const T0: u64 = 1_700_000_000_000;
/// The two nodes' keys: they sign their writes and verify each other's, as
/// nodes do.
fn identity(peer: &str) -> Identity {
    Identity::from_seed(if peer == PEER_A.as_str() { [1; 32] } else { [2; 32] })
}
static PEER_A: LazyLock<String> = LazyLock::new(|| Identity::from_seed([1; 32]).peer_id().to_string());
static PEER_B: LazyLock<String> = LazyLock::new(|| Identity::from_seed([2; 32]).peer_id().to_string());

fn value(i: usize) -> Value {
    json!({"name": format!("User {i}"), "email": format!("user{i}@example.org"), "age": i % 97, "friend": {"#": format!("user:{:08}", (i * 7919) % 1_000_003)}})
}

fn ops(n: usize) -> Vec<OperationWithMetadata> {
    (0..n).map(|i| OperationWithMetadata::new(OperationType::CreateNode, format!("user:{i:08}"), value(i), PEER_A.as_str())).collect()
}

/// Delivers messages in phases (everything sent in one phase arrives in the
/// next), as a network with a fixed latency would; returns the phases until
/// nothing is left to send.
fn settle<S: Store>(
    a: &mut DataSyncEngine<S>,
    b: &mut DataSyncEngine<S>,
    mut done: impl FnMut(&DataSyncEngine<S>) -> bool,
) -> (usize, Option<usize>) {
    let mut phase = 0;
    let mut done_at = None;
    loop {
        let from_a: Vec<_> = std::iter::from_fn(|| a.poll_transmit()).collect();
        let from_b: Vec<_> = std::iter::from_fn(|| b.poll_transmit()).collect();
        if from_a.is_empty() && from_b.is_empty() {
            return (phase, done_at);
        }
        phase += 1;
        for t in from_a {
            b.handle_input(&PEER_A, &t.bytes, T0).expect("b accepts");
        }
        for t in from_b {
            a.handle_input(&PEER_B, &t.bytes, T0).expect("a accepts");
        }
        if done_at.is_none() && done(b) {
            done_at = Some(phase);
        }
    }
}

struct Run {
    ops_per_s: f64,
    wire_bytes: u64,
    op_bytes: u64,
}

fn full_sync<S: Store>(mut a: DataSyncEngine<S>, mut b: DataSyncEngine<S>, n: usize) -> Run {
    a.write(ops(n), T0).expect("write");
    let written = a.database().ops_after(&PEER_A, 0, n).expect("read back");
    let op_bytes: u64 = written.iter().map(|op| pluresdb_core::codec::encode(op).len() as u64).sum();
    drop(written);
    a.start(T0);
    b.start(T0);
    let start = Instant::now();
    a.peer_connected(&PEER_B, T0);
    b.peer_connected(&PEER_A, T0);
    settle(&mut a, &mut b, |_| false);
    let elapsed = start.elapsed();
    assert_eq!(a.database().version_vector(), b.database().version_vector(), "converged");
    Run { ops_per_s: n as f64 / elapsed.as_secs_f64(), wire_bytes: a.status().traffic.bytes_sent, op_bytes }
}

fn signed<S: Store>(db: Database<S>, peer: &str) -> DataSyncEngine<S> {
    let db = db.with_signer(Arc::new(identity(peer))).with_verifier(Arc::new(OpSignatureVerifier));
    DataSyncEngine::with_database(SyncConfig::default(), db).expect("engine")
}

fn memory_engine(peer: &str) -> DataSyncEngine<MemoryStore> {
    signed(Database::open(MemoryStore::new(), peer).expect("open"), peer)
}

fn redb_engine(dir: &std::path::Path, peer: &str) -> DataSyncEngine<RedbStore> {
    signed(Database::open(RedbStore::open(dir).expect("open store"), peer).expect("open"), peer)
}

fn raw_redb(n: usize) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = redb::Database::create(dir.path().join("raw.redb")).expect("create");
    const TABLE: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("raw");
    let records: Vec<(String, Value)> = (0..n).map(|i| (format!("user:{i:08}"), value(i))).collect();
    let start = Instant::now();
    for chunk in records.chunks(1_000) {
        let txn = db.begin_write().expect("begin");
        {
            let mut table = txn.open_table(TABLE).expect("table");
            for (id, v) in chunk {
                table.insert(id.as_str(), serde_json::to_vec(v).expect("json").as_slice()).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// The receiver's check ahead of a batch ([`Inbound::prepare`]: decoding a
/// `DataSync`, hashing its operations and verifying their signatures, on
/// the thread before the writer) per operation: the best of `rounds` over
/// the messages a sender makes of `n` operations written 1,000 a commit
/// (signed at each commit's end and every 256th), as a node sends them
/// (bodies from the op log, 1,000 a message). The results are dropped
/// after the clock stops (the writer frees them in a node).
fn prepare_cost(n: usize, rounds: usize) -> f64 {
    let mut a = memory_engine(&PEER_A);
    let all = ops(n);
    for chunk in all.chunks(1_000) {
        a.write(chunk.to_vec(), T0).expect("write");
    }
    let vv = a.database().version_vector().clone();
    let mut messages = Vec::new();
    let mut after = 0;
    while after < n as u64 {
        let mut bodies = EncodedOps::new();
        a.database().op_bodies_after(&PEER_A, after, 1_000, &mut bodies).expect("read");
        after += bodies.len() as u64;
        messages.push(SyncMessage::encode_stored_data_sync(&PEER_A, &bodies, &vv).expect("encode"));
    }
    let verifier = OpSignatureVerifier;
    let mut best = f64::MAX;
    for _ in 0..rounds {
        let start = Instant::now();
        let prepared: Vec<Inbound> = messages.iter().map(|bytes| Inbound::prepare(&PEER_A, bytes, Some(&verifier))).collect();
        best = best.min(start.elapsed().as_secs_f64());
        assert!(prepared.iter().all(Inbound::is_data), "every message decodes");
    }
    best * 1e6 / n as f64
}

fn main() {
    let n = 100_000;
    let prepare = prepare_cost(n, 7);
    println!("{:<52} {:>12}", "check ahead of a received batch (us/op, best of 7)", format!("{prepare:.3}"));
    if std::env::var_os("PLURESDB_BENCH_PREPARE_ONLY").is_some() {
        return;
    }
    println!(
        "PluresDB sync benchmark: full sync of {n} operations (batches of 1,000) between two in-process replicas, through encoded messages"
    );

    let memory = full_sync(memory_engine(&PEER_A), memory_engine(&PEER_B), n);
    let (dir_a, dir_b) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    let durable = full_sync(redb_engine(dir_a.path(), &PEER_A), redb_engine(dir_b.path(), &PEER_B), n);
    let raw = raw_redb(n);

    println!("{:<52} {:>12}", "full sync, memory stores (ops/s)", format!("{:.0}", memory.ops_per_s));
    println!(
        "{:<52} {:>12}   {:.0}% of raw redb",
        "full sync, durable redb stores (ops/s)",
        format!("{:.0}", durable.ops_per_s),
        100.0 * durable.ops_per_s / raw
    );
    println!("{:<52} {:>12}", "raw redb, same records, 1,000 per transaction", format!("{raw:.0}"));
    println!(
        "{:<52} {:>12}   {:.3}x the operations' own encoding ({:.1} bytes/op)",
        "wire bytes per operation",
        format!("{:.1}", memory.wire_bytes as f64 / n as f64),
        memory.wire_bytes as f64 / memory.op_bytes as f64,
        memory.op_bytes as f64 / n as f64
    );

    // A small delta between replicas that share everything else.
    let mut a = memory_engine(&PEER_A);
    a.write(ops(1_000), T0).expect("write");
    let shared = a.database().store().clone();
    let mut b = signed(Database::open(shared, PEER_B.as_str()).expect("open"), &PEER_B);
    a.write(
        (0..10)
            .map(|i| OperationWithMetadata::new(OperationType::UpdateNode, format!("user:{i:08}"), json!({"age": 1}), PEER_A.as_str()))
            .collect(),
        T0,
    )
    .expect("write");
    a.start(T0);
    b.start(T0);
    a.peer_connected(&PEER_B, T0);
    b.peer_connected(&PEER_A, T0);
    let target = a.database().version_vector().clone();
    let (_, done) = settle(&mut a, &mut b, |b| b.database().version_vector() == &target);
    let phases = done.unwrap_or(usize::MAX);
    println!("{:<52} {:>12}   ({} one-way deliveries)", "round trips for a 10-op delta", format!("{:.1}", phases as f64 / 2.0), phases);
    println!("targets: >= 200,000 ops/s in-process; wire bytes <= 1.3x; a small delta in one round trip");
}
