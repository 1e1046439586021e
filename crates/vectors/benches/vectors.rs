//! The vector index: 100,000 vectors of 384 dimensions (seeded, clustered
//! like text embeddings), against brute force in the same run.
//!
//! `cargo bench -p pluresdb-vectors --bench vectors` (release). Scale down
//! with `PLURESDB_BENCH_VECTORS` (default 100,000), `PLURESDB_BENCH_DIM`
//! (384) and `PLURESDB_BENCH_QUERIES` (1,000).
//!
//! Prints: insert rate, memory, recall@10 against brute force (target >=
//! 0.95), query p50/p99 (target p99 <= 5 ms), for cosine.

use pluresdb_vectors::{distance, Metric, VectorDef, VectorIndex};
use serde_json::{json, Map, Value};
use std::time::{Duration, Instant};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

/// A seeded generator of uniform numbers in [-0.5, 0.5).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }
}

/// `n` vectors around 1,000 random centres (embeddings cluster by topic).
fn vectors(n: usize, dimension: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng(seed);
    let centres: Vec<Vec<f32>> = (0..1_000).map(|_| (0..dimension).map(|_| rng.next()).collect()).collect();
    (0..n)
        .map(|i| {
            let centre = &centres[(i * 7_919) % centres.len()];
            centre.iter().map(|c| c + 0.35 * rng.next()).collect()
        })
        .collect()
}

/// Resident memory of this process, in MiB (Linux).
fn rss_mib() -> f64 {
    let text = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = text.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0.0);
    pages * 4_096.0 / (1024.0 * 1024.0)
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1_000.0)
}

fn main() {
    let n = env("PLURESDB_BENCH_VECTORS", 100_000);
    let dimension = env("PLURESDB_BENCH_DIM", 384);
    let queries = env("PLURESDB_BENCH_QUERIES", 1_000);
    println!("vectors bench: {n} x {dimension} (f32), {queries} queries, cosine, k = 10");
    let data = vectors(n, dimension, 1);
    let values: Vec<Map<String, Value>> = data.iter().map(|v| json!({"e": v}).as_object().cloned().unwrap_or_default()).collect();
    let before = rss_mib();
    let def = VectorDef { name: "bench".into(), prefix: "d:".into(), field: "e".into(), dimension, metric: Metric::Cosine };
    let mut index = VectorIndex::new(def, n);
    let started = Instant::now();
    for (i, value) in values.iter().enumerate() {
        index.upsert(&format!("d:{i:07}"), Some(value));
    }
    let inserting = started.elapsed();
    let grown = rss_mib() - before;
    println!(
        "insert: {n} vectors in {:.1} s ({:.0} vectors/s, one at a time, as writes arrive); memory +{grown:.0} MiB ({:.0} MiB of raw f32)",
        inserting.as_secs_f64(),
        n as f64 / inserting.as_secs_f64(),
        (n * dimension * 4) as f64 / (1024.0 * 1024.0)
    );
    let probes = vectors(queries, dimension, 2);
    let mut times = Vec::with_capacity(queries);
    let mut hits = 0usize;
    let recall_queries = queries.min(200);
    for (q, probe) in probes.iter().enumerate() {
        let started = Instant::now();
        let found = index.search(probe, 10, |_| true).unwrap_or_default();
        times.push(started.elapsed());
        if q < recall_queries {
            let mut brute: Vec<(f32, usize)> = data.iter().enumerate().map(|(i, v)| (distance(Metric::Cosine, probe, v), i)).collect();
            brute.select_nth_unstable_by(9, |a, b| a.0.total_cmp(&b.0));
            let truth: Vec<String> = brute[..10].iter().map(|(_, i)| format!("d:{i:07}")).collect();
            hits += found.iter().filter(|(id, _)| truth.contains(id)).count();
        }
    }
    times.sort();
    let p = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
    println!("recall@10 against brute force: {:.3} ({recall_queries} queries; target >= 0.95)", hits as f64 / (recall_queries * 10) as f64);
    println!("query: p50 {} p99 {} (target p99 <= 5 ms)", ms(p(0.5)), ms(p(0.99)));
    // Brute force for comparison: one query over every vector.
    let started = Instant::now();
    let probe = &probes[0];
    let mut best = f32::MAX;
    for v in &data {
        best = best.min(distance(Metric::Cosine, probe, v));
    }
    println!("brute force: one query over {n} vectors in {} (nearest {best:.3})", ms(started.elapsed()));
}
