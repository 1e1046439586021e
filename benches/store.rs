//! Local write and read throughput of a PluresDB replica on the redb store,
//! against the same records written straight into redb in the same run.
//!
//! Run with `cargo bench --bench store` (add `-- --records N` to change the
//! size of the batched runs).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use pluresdb_core::{Database, OperationType, OperationWithMetadata};
use pluresdb_store_redb::RedbStore;
use redb::{ReadableDatabase, TableDefinition};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const RAW: TableDefinition<&str, &[u8]> = TableDefinition::new("raw");
const BATCH: usize = 1_000;
const ROUNDS: usize = 5;
const WARMUP: usize = 1;
/// A peer id of the real length (libp2p's textual Ed25519 form).
const PEER_ID: &str = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";

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

/// The baseline: each record's value serialized as JSON and inserted under
/// its id, in the same transactions as the replica's writes.
mod raw {
    use super::*;

    pub fn open(dir: &std::path::Path) -> redb::Database {
        redb::Database::create(dir.join("raw.redb")).expect("create redb")
    }

    pub fn write(db: &redb::Database, records: &[(String, Value)], per_txn: usize) -> f64 {
        let start = Instant::now();
        for chunk in records.chunks(per_txn) {
            let txn = db.begin_write().expect("begin");
            {
                let mut table = txn.open_table(RAW).expect("table");
                for (id, value) in chunk {
                    let bytes = serde_json::to_vec(value).expect("json encodes");
                    table.insert(id.as_str(), bytes.as_slice()).expect("insert");
                }
            }
            txn.commit().expect("commit");
        }
        rate(records.len(), start.elapsed())
    }

    /// One read transaction per read, as a replica's get does.
    pub fn read(db: &redb::Database, records: &[(String, Value)]) -> f64 {
        let start = Instant::now();
        for (id, _) in records {
            let txn = db.begin_read().expect("begin read");
            let table = txn.open_table(RAW).expect("table");
            let value = table.get(id.as_str()).expect("get").expect("present");
            let parsed: Value = serde_json::from_slice(value.value()).expect("json");
            std::hint::black_box(parsed);
        }
        rate(records.len(), start.elapsed())
    }
}

/// A replica on the redb store. It takes ownership of its input, as an
/// application handing values over would, so the copies are made before the
/// clock starts.
mod replica {
    use super::*;

    pub type Replica = Database<RedbStore>;

    pub fn open(dir: &std::path::Path) -> Replica {
        Database::open(RedbStore::open(dir).expect("open store"), PEER_ID).expect("open replica")
    }

    pub fn write(db: &mut Replica, records: &[(String, Value)], per_txn: usize) -> f64 {
        let now = 1_700_000_000_000u64;
        let batches: Vec<Vec<OperationWithMetadata>> = records
            .chunks(per_txn)
            .map(|chunk| {
                chunk
                    .iter()
                    .map(|(id, value)| OperationWithMetadata::new(OperationType::CreateNode, id.clone(), value.clone(), PEER_ID))
                    .collect()
            })
            .collect();
        let start = Instant::now();
        for ops in batches {
            db.commit_local(ops, now).expect("commit");
        }
        rate(records.len(), start.elapsed())
    }

    pub fn read(db: &Replica, records: &[(String, Value)]) -> f64 {
        let start = Instant::now();
        for (id, _) in records {
            std::hint::black_box(db.get(id).expect("get").expect("present"));
        }
        rate(records.len(), start.elapsed())
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let count = args.iter().position(|a| a == "--records").and_then(|i| args.get(i + 1)).and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let singles = 2_000.min(count / 2);

    let records: Vec<(String, Value)> = (0..count + singles).map(record).collect();
    let avg = records.iter().map(|(_, v)| v.to_string().len()).sum::<usize>() / records.len();

    println!("PluresDB local store benchmark: {count} records in transactions of {BATCH}, {singles} in single-write transactions, ~{avg} bytes of JSON each");
    println!("{WARMUP} warm-up round, then {ROUNDS} rounds, each writing and reading the same records into raw redb and into a replica; figures are medians, ratios the median of the per-round ratios");
    let mut rounds: Vec<(Figures, Figures)> = Vec::new();
    for round in 0..WARMUP + ROUNDS {
        let dir = tempfile::tempdir().expect("temp dir");
        let raw_db = raw::open(dir.path());
        let mut db = replica::open(dir.path());
        let (mut raw_single, mut ours_single) = (f64::NAN, f64::NAN);
        if round == WARMUP {
            raw_single = raw::write(&raw_db, &records[count..], 1);
            ours_single = replica::write(&mut db, &records[count..], 1);
        }
        let raw_batched = raw::write(&raw_db, &records[..count], BATCH);
        let ours_batched = replica::write(&mut db, &records[..count], BATCH);
        let raw_read = raw::read(&raw_db, &records[..count]);
        let ours_read = replica::read(&db, &records[..count]);
        if round < WARMUP {
            continue;
        }
        println!(
            "  round {}: batched writes {ours_batched:.0} vs {raw_batched:.0} ops/s ({:.0}%)",
            round - WARMUP + 1,
            100.0 * ours_batched / raw_batched
        );
        rounds.push((
            Figures { single: ours_single, batched: ours_batched, read: ours_read },
            Figures { single: raw_single, batched: raw_batched, read: raw_read },
        ));
    }
    println!("{:<34} {:>14} {:>14} {:>8}", "", "pluresdb", "raw redb", "ratio");
    type Pick = fn(&Figures) -> f64;
    let rows: [(&str, Pick); 3] = [
        ("writes, 1 per transaction (ops/s)", |f| f.single),
        ("writes, 1,000 per transaction", |f| f.batched),
        ("point reads (ops/s)", |f| f.read),
    ];
    for (name, pick) in rows {
        let valid: Vec<&(Figures, Figures)> = rounds.iter().filter(|(o, _)| !pick(o).is_nan()).collect();
        let ours = median(valid.iter().map(|(o, _)| pick(o)).collect());
        let raw = median(valid.iter().map(|(_, r)| pick(r)).collect());
        let ratio = median(valid.iter().map(|(o, r)| pick(o) / pick(r)).collect());
        println!("{name:<34} {ours:>14.0} {raw:>14.0} {:>7.0}%", 100.0 * ratio);
    }
    println!("target (issue 18): batched writes >= 60% of raw redb");
}
