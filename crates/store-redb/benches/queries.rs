//! Secondary indexes and queries on the redb store, against a full scan
//! and raw redb in the same run.
//!
//! `cargo bench -p pluresdb-store-redb --bench queries` (release). Sizes
//! scale down for a quick run: `PLURESDB_BENCH_NODES` (default 1,000,000
//! nodes queried), `PLURESDB_BENCH_WRITES` (default 100,000 writes per
//! write-throughput run), `PLURESDB_BENCH_QUERIES` (default 1,000 queries
//! per kind).
//!
//! Prints: indexed point and range query p50/p99 against a full scan of the
//! same query; the index build time; write throughput with 0, 1 and 3
//! indexes against the same records written straight into redb, and the
//! rate of updates of those nodes (each changes every indexed field), per
//! second and per CPU second.

use pluresdb_core::query::Query;
use pluresdb_core::{Database, IndexSpec, OperationType, OperationWithMetadata};
use pluresdb_store_redb::RedbStore;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const PEER_ID: &str = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
/// Writes per commit when loading and in the write-throughput runs.
const BATCH: usize = 1_000;
/// Nodes indexed per build step (as a running node does).
const BUILD_STEP: usize = 2_000;
/// The range of `score`: each value is held by about nodes / SCORES nodes.
const SCORES: u64 = 1_000_000;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

/// A deterministic spread of `i`.
fn mix(i: u64) -> u64 {
    let mut x = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn record(prefix: &str, i: usize) -> (String, Value) {
    let id = format!("{prefix}{i:08}");
    let value = json!({
        "name": format!("User {i}"),
        "age": i % 97,
        "score": mix(i as u64) % SCORES,
        "friend": {"#": format!("{prefix}{:08}", mix(i as u64 + 1) % 1_000_000)},
    });
    (id, value)
}

fn load(db: &mut Database<RedbStore>, prefix: &str, n: usize, now: &mut u64) -> Duration {
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(BATCH) {
        let ops = chunk
            .iter()
            .map(|&i| {
                let (id, value) = record(prefix, i);
                OperationWithMetadata::new(OperationType::CreateNode, id, value, PEER_ID)
            })
            .collect();
        *now += 1;
        db.commit_local(ops, *now).expect("commit");
    }
    started.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1_000.0)
}

/// Runs `make(i)` queries `count` times; returns p50, p99 and the average
/// number of nodes answered.
fn time_queries(db: &Database<RedbStore>, count: usize, make: impl Fn(usize) -> Query, expect: &str) -> (Duration, Duration, f64) {
    let mut times = Vec::with_capacity(count);
    let mut answered = 0usize;
    for i in 0..count {
        let query = make(i);
        let started = Instant::now();
        let page = db.query(&query).expect("query");
        times.push(started.elapsed());
        answered += page.nodes.len();
        let method = page.plan.select.as_ref().map(|a| a.method.as_str()).unwrap_or_default();
        assert_eq!(method, expect, "{query:?}");
    }
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.99), answered as f64 / count as f64)
}

fn query(value: Value) -> Query {
    serde_json::from_value(value).expect("a query")
}

fn build(db: &mut Database<RedbStore>, spec: &IndexSpec) -> Duration {
    let started = Instant::now();
    let name = db.create_index(spec).expect("create index").name;
    while !db.build_index_step(&name, BUILD_STEP).expect("build step").is_ready() {}
    started.elapsed()
}

fn field(prefix: &str, name: &str) -> IndexSpec {
    IndexSpec { prefix: prefix.into(), field: Some(name.into()), ..IndexSpec::default() }
}

/// CPU time this process has used (user and system), in seconds (Linux;
/// 100 ticks a second): on a machine shared with other work, writes per
/// CPU second compare runs better than writes per second.
fn cpu_seconds() -> f64 {
    let text = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = text.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks = |at: usize| fields.get(at).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Rates of one write run: per second and per CPU second.
struct Rate {
    per_second: f64,
    per_cpu_second: f64,
}

/// Writes `n` new nodes in commits of [`BATCH`] with `indexes` (ready)
/// covering them, then updates each (a field every index covers changes);
/// returns both rates.
fn write_rate(dir: &std::path::Path, n: usize, indexes: &[IndexSpec]) -> (Rate, Rate) {
    let mut db = Database::open(RedbStore::open(dir).expect("open"), PEER_ID).expect("open replica");
    for spec in indexes {
        build(&mut db, spec);
    }
    let mut now = 1_700_000_000_000;
    let cpu = cpu_seconds();
    let elapsed = load(&mut db, "w:", n, &mut now);
    let created = Rate { per_second: n as f64 / elapsed.as_secs_f64(), per_cpu_second: n as f64 / (cpu_seconds() - cpu).max(0.01) };
    let (started, cpu) = (Instant::now(), cpu_seconds());
    for chunk in (0..n).collect::<Vec<_>>().chunks(BATCH) {
        let ops = chunk
            .iter()
            .map(|&i| {
                let (id, _) = record("w:", i);
                let value = json!({"age": i % 89, "score": mix(i as u64 + 7) % SCORES, "name": format!("Renamed {i}")});
                OperationWithMetadata::new(OperationType::UpdateNode, id, value, PEER_ID)
            })
            .collect();
        now += 1;
        db.commit_local(ops, now).expect("commit");
    }
    let updated =
        Rate { per_second: n as f64 / started.elapsed().as_secs_f64(), per_cpu_second: n as f64 / (cpu_seconds() - cpu).max(0.01) };
    (created, updated)
}

/// The same records written straight into redb (JSON values under their
/// ids), in transactions of [`BATCH`].
fn raw_rate(dir: &std::path::Path, n: usize) -> f64 {
    const RAW: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("raw");
    std::fs::create_dir_all(dir).expect("bench directory");
    let db = redb::Database::create(dir.join("raw.redb")).expect("create redb");
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(BATCH) {
        let txn = db.begin_write().expect("begin");
        {
            let mut table = txn.open_table(RAW).expect("table");
            for &i in chunk {
                let (id, value) = record("w:", i);
                table.insert(id.as_str(), serde_json::to_vec(&value).expect("json").as_slice()).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let nodes = env("PLURESDB_BENCH_NODES", 1_000_000);
    let writes = env("PLURESDB_BENCH_WRITES", 100_000);
    let queries = env("PLURESDB_BENCH_QUERIES", 1_000);
    println!("queries bench: {nodes} nodes, {writes} writes per write run, {queries} queries per kind");

    let dir = tempfile::tempdir().expect("temp dir");
    let mut db = Database::open(RedbStore::open(&dir.path().join("q")).expect("open"), PEER_ID).expect("open replica");
    let mut now = 1_700_000_000_000;
    let loaded = load(&mut db, "user:", nodes, &mut now);
    println!(
        "load: {nodes} nodes in {:.1} s ({:.0} writes/s, commits of {BATCH}, no index)",
        loaded.as_secs_f64(),
        nodes as f64 / loaded.as_secs_f64()
    );

    // Full scans first (no index yet): the same queries as below.
    let scans = queries.clamp(1, 5);
    let point =
        |i: usize| query(json!({"prefix": "user:", "where": [{"field": "score", "op": "=", "value": mix(i as u64 * 31) % SCORES}]}));
    let range = |i: usize| {
        let low = mix(i as u64 * 17) % (SCORES - 1_000);
        query(json!({"prefix": "user:", "where": [{"field": "score", "op": "between", "value": [low, low + 999]}], "limit": 100}))
    };
    let (scan_p50, scan_p99, _) = time_queries(&db, scans, point, "scan");
    let (scan_range_p50, scan_range_p99, _) = time_queries(&db, scans, range, "scan");

    let built = build(&mut db, &field("user:", "score"));
    println!(
        "index build: user:score over {nodes} nodes in {:.1} s ({:.0} nodes/s, steps of {BUILD_STEP})",
        built.as_secs_f64(),
        nodes as f64 / built.as_secs_f64()
    );
    let (p50, p99, hits) = time_queries(&db, queries, point, "index");
    println!(
        "point query (score = x, ~{hits:.1} nodes): index p50 {} p99 {}; full scan p50 {} p99 {} ({scans} runs)",
        ms(p50),
        ms(p99),
        ms(scan_p50),
        ms(scan_p99)
    );
    let (p50, p99, hits) = time_queries(&db, queries, range, "index");
    println!(
        "range query (score between x and x+999, first 100; ~{hits:.1} nodes): index p50 {} p99 {}; full scan p50 {} p99 {} ({scans} runs)",
        ms(p50),
        ms(p99),
        ms(scan_range_p50),
        ms(scan_range_p99)
    );
    drop(db);

    let raw = raw_rate(&dir.path().join("raw"), writes);
    println!("write throughput, commits of {BATCH} new nodes: raw redb {raw:.0} writes/s");
    let all = [field("", "age"), field("", "score"), field("", "name")];
    for count in [0, 1, 3] {
        let (created, updated) = write_rate(&dir.path().join(format!("w{count}")), writes, &all[..count]);
        println!(
            "  with {count} index(es): {:.0} writes/s ({:.2} of raw redb; {:.0} per CPU s); updates of those nodes {:.0}/s ({:.0} per CPU s)",
            created.per_second,
            created.per_second / raw,
            created.per_cpu_second,
            updated.per_second,
            updated.per_cpu_second
        );
    }
}
