//! Local write and read throughput of a PluresDB replica on the redb store,
//! against the same records written straight into redb in the same run.
//!
//! Run with `cargo bench --bench store` (add `-- --records N` to change the
//! size of the batched runs).

use pluresdb_core::{Database, OperationType, OperationWithMetadata};
use pluresdb_store_redb::RedbStore;
use redb::{ReadableDatabase, TableDefinition};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const RAW: TableDefinition<&str, &[u8]> = TableDefinition::new("raw");
const BATCH: usize = 1_000;

fn record(i: usize) -> (String, Value) {
    let id = format!("user:{i:08}");
    let value = json!({
        "name": format!("User {i}"),
        "email": format!("user{i}@example.org"),
        "age": i % 97,
        "friend": {"#": format!("user:{:08}", (i * 7919) % 1_000_003)},
    });
    (id, value)
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

struct Figures {
    single: f64,
    batched: f64,
    read: f64,
}

fn raw_redb(records: &[(String, Vec<u8>)], singles: usize) -> Figures {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = redb::Database::create(dir.path().join("raw.redb")).expect("create redb");

    let start = Instant::now();
    for (id, bytes) in &records[..singles] {
        let txn = db.begin_write().expect("begin");
        txn.open_table(RAW).expect("table").insert(id.as_str(), bytes.as_slice()).expect("insert");
        txn.commit().expect("commit");
    }
    let single = rate(singles, start.elapsed());

    let start = Instant::now();
    for chunk in records[singles..].chunks(BATCH) {
        let txn = db.begin_write().expect("begin");
        {
            let mut table = txn.open_table(RAW).expect("table");
            for (id, bytes) in chunk {
                table.insert(id.as_str(), bytes.as_slice()).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
    let batched = rate(records.len() - singles, start.elapsed());

    // One read transaction per read, as a replica's get does.
    let start = Instant::now();
    for (id, _) in records {
        let txn = db.begin_read().expect("begin read");
        let table = txn.open_table(RAW).expect("table");
        let value = table.get(id.as_str()).expect("get").expect("present");
        let parsed: Value = serde_json::from_slice(value.value()).expect("json");
        std::hint::black_box(parsed);
    }
    let read = rate(records.len(), start.elapsed());
    Figures { single, batched, read }
}

fn replica(records: &[(String, Value)], singles: usize) -> Figures {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut db = Database::open(RedbStore::open(dir.path()).expect("open store"), "bench-peer").expect("open replica");
    let now = 1_700_000_000_000u64;

    let start = Instant::now();
    for (id, value) in &records[..singles] {
        db.put(id, value.clone(), now).expect("put");
    }
    let single = rate(singles, start.elapsed());

    let start = Instant::now();
    for chunk in records[singles..].chunks(BATCH) {
        let ops = chunk
            .iter()
            .map(|(id, value)| OperationWithMetadata::new(OperationType::CreateNode, id.clone(), value.clone(), "bench-peer"))
            .collect();
        db.commit_local(ops, now).expect("commit");
    }
    let batched = rate(records.len() - singles, start.elapsed());

    let start = Instant::now();
    for (id, _) in records {
        std::hint::black_box(db.get(id).expect("get").expect("present"));
    }
    let read = rate(records.len(), start.elapsed());
    Figures { single, batched, read }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let count = args.iter().position(|a| a == "--records").and_then(|i| args.get(i + 1)).and_then(|n| n.parse().ok()).unwrap_or(200_000);
    let singles = 2_000.min(count / 2);

    let records: Vec<(String, Value)> = (0..count + singles).map(record).collect();
    let raw_records: Vec<(String, Vec<u8>)> =
        records.iter().map(|(id, v)| (id.clone(), serde_json::to_vec(v).expect("json encodes"))).collect();
    let avg = raw_records.iter().map(|(_, b)| b.len()).sum::<usize>() / raw_records.len();

    println!("PluresDB local store benchmark: {count} batched records ({BATCH} per transaction), {singles} single-write transactions, ~{avg} bytes of JSON each");
    let raw = raw_redb(&raw_records, singles);
    let ours = replica(&records, singles);
    println!("{:<34} {:>14} {:>14} {:>8}", "", "pluresdb", "raw redb", "ratio");
    for (name, a, b) in [
        ("writes, 1 per transaction (ops/s)", ours.single, raw.single),
        ("writes, 1,000 per transaction", ours.batched, raw.batched),
        ("point reads (ops/s)", ours.read, raw.read),
    ] {
        println!("{name:<34} {a:>14.0} {b:>14.0} {:>7.0}%", 100.0 * a / b);
    }
    println!("target: batched writes >= 50% of raw redb");
}
