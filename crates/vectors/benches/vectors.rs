//! The vector index: 100,000 vectors of 384 dimensions against brute force
//! in the same run, on two seeded data sets:
//!
//! - "embedding-like" (the headline): 200 topics in a 24-dimensional
//!   latent space, mapped into 384 dimensions by a fixed random linear map,
//!   plus 384-dimensional noise at 1/10 of the signal's scale per
//!   component. Real text embeddings have this shape: clustered by topic,
//!   and of an intrinsic dimension far below the vector's length.
//! - "near-uniform": 1,000 centres with noise of 0.35 per component, which
//!   in 384 dimensions is close to uniform: no structure for a graph to
//!   follow, HNSW's hardest case. Kept for honesty, not as the target.
//!
//! The first is loaded the way a node builds an index from its store
//! (`VectorIndex::load`, on every core), the second one vector at a time,
//! the way writes arrive.
//!
//! `cargo bench -p pluresdb-vectors --bench vectors` (release). Scale down
//! with `PLURESDB_BENCH_VECTORS` (default 100,000), `PLURESDB_BENCH_DIM`
//! (384) and `PLURESDB_BENCH_QUERIES` (1,000); `PLURESDB_BENCH_SETS`
//! (`embedding,uniform`) picks the data sets; `PLURESDB_BENCH_M`,
//! `PLURESDB_BENCH_EF_CONSTRUCTION`, `PLURESDB_BENCH_EF_SEARCH` and
//! `PLURESDB_BENCH_EF_PER_K` override the graph's parameters (defaults:
//! `Params::default()`, what a node uses).
//!
//! Prints per set: insert rate, memory, recall@10 against brute force
//! (target >= 0.95), query p50/p99 (target p99 <= 5 ms), brute force time,
//! for cosine.

use pluresdb_vectors::{distance, dot, Metric, Params, VectorDef, VectorIndex};
use serde_json::{json, Map, Value};
use std::time::{Duration, Instant};

const K: usize = 10;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

/// A seeded generator.
struct Rng(u64);

impl Rng {
    /// Uniform in [-0.5, 0.5).
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    /// About normal (mean 0, deviation 1): the sum of 12 uniforms.
    fn normal(&mut self) -> f32 {
        (0..12).map(|_| self.next()).sum()
    }
}

/// The two data sets (see the file's docs); documents and queries come
/// from the same distribution, queries with another seed.
#[derive(Clone, Copy, Debug)]
enum Set {
    EmbeddingLike,
    NearUniform,
}

const LATENT: usize = 24;
const TOPICS: usize = 200;

fn vectors(set: Set, n: usize, dimension: usize, seed: u64) -> Vec<Vec<f32>> {
    // The structure (centres, map) comes from a fixed seed shared by
    // documents and queries; the draws from `seed`.
    let mut shape = Rng(1);
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    match set {
        Set::NearUniform => {
            let centres: Vec<Vec<f32>> = (0..1_000).map(|_| (0..dimension).map(|_| shape.next()).collect()).collect();
            (0..n)
                .map(|_| {
                    let centre = &centres[((rng.next() + 0.5) * centres.len() as f32) as usize % centres.len()];
                    centre.iter().map(|c| c + 0.35 * rng.next()).collect()
                })
                .collect()
        }
        Set::EmbeddingLike => {
            let map: Vec<Vec<f32>> = (0..dimension).map(|_| (0..LATENT).map(|_| shape.normal()).collect()).collect();
            let topics: Vec<Vec<f32>> = (0..TOPICS).map(|_| (0..LATENT).map(|_| shape.normal()).collect()).collect();
            // Signal per component: about sqrt(LATENT * (1 + 0.5²)).
            let noise = 0.1 * (LATENT as f32 * 1.25).sqrt();
            (0..n)
                .map(|_| {
                    let topic = &topics[((rng.next() + 0.5) * TOPICS as f32) as usize % TOPICS];
                    let latent: Vec<f32> = topic.iter().map(|t| t + 0.5 * rng.normal()).collect();
                    map.iter().map(|row| dot(row, &latent) + noise * rng.normal()).collect()
                })
                .collect()
        }
    }
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

fn id(i: usize) -> String {
    format!("d:{i:07}")
}

fn run(set: Set, n: usize, dimension: usize, queries: usize, params: Params) {
    let data = vectors(set, n, dimension, 1);
    let values: Vec<Map<String, Value>> = data.iter().map(|v| json!({"e": v}).as_object().cloned().unwrap_or_default()).collect();
    let ids: Vec<String> = (0..n).map(id).collect();
    let before = rss_mib();
    let def = VectorDef { name: "bench".into(), prefix: "d:".into(), field: "e".into(), dimension, metric: Metric::Cosine };
    let index = VectorIndex::with_params(def, n, params);
    let started = Instant::now();
    let how = match set {
        Set::EmbeddingLike => {
            // As a node builds from its store: pages of 1,000, each on every core.
            for (ids, values) in ids.chunks(1_000).zip(values.chunks(1_000)) {
                let page: Vec<(&str, &Map<String, Value>)> = ids.iter().map(String::as_str).zip(values).collect();
                index.load(&page);
            }
            format!("loaded as from the store, on {} threads", rayon::current_num_threads())
        }
        Set::NearUniform => {
            for (id, value) in ids.iter().zip(&values) {
                index.upsert(id, Some(value));
            }
            "one at a time, as writes arrive".to_owned()
        }
    };
    let inserting = started.elapsed();
    let grown = rss_mib() - before;
    println!(
        "[{set:?}] insert: {n} vectors in {:.1} s ({:.0} vectors/s, {how}); memory +{grown:.0} MiB ({:.0} MiB of raw f32)",
        inserting.as_secs_f64(),
        n as f64 / inserting.as_secs_f64(),
        (n * dimension * 4) as f64 / (1024.0 * 1024.0)
    );
    let probes = vectors(set, queries, dimension, 2);
    let mut times = Vec::with_capacity(queries);
    let mut hits = 0usize;
    let recall_queries = queries.min(200);
    let mut brute_time = Duration::ZERO;
    for (q, probe) in probes.iter().enumerate() {
        let started = Instant::now();
        let found = index.search(probe, K, |_| true).unwrap_or_default();
        times.push(started.elapsed());
        if q < recall_queries {
            let started = Instant::now();
            let mut brute: Vec<(f32, usize)> = data.iter().enumerate().map(|(i, v)| (distance(Metric::Cosine, probe, v), i)).collect();
            brute.select_nth_unstable_by(K - 1, |a, b| a.0.total_cmp(&b.0));
            brute_time += started.elapsed();
            let truth: Vec<String> = brute[..K].iter().map(|(_, i)| id(*i)).collect();
            hits += found.iter().filter(|(id, _)| truth.contains(id)).count();
        }
    }
    times.sort();
    let p = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "[{set:?}] recall@{K} against brute force: {:.3} ({recall_queries} queries; target >= 0.95)",
        hits as f64 / (recall_queries * K) as f64
    );
    println!("[{set:?}] query: p50 {} p99 {} (target p99 <= 5 ms)", ms(p(0.5)), ms(p(0.99)));
    println!("[{set:?}] brute force: {} per query over {n} vectors (cosine with norms, the same distance function)", ms(brute_time / recall_queries as u32));
}

fn main() {
    let n = env("PLURESDB_BENCH_VECTORS", 100_000);
    let dimension = env("PLURESDB_BENCH_DIM", 384);
    let queries = env("PLURESDB_BENCH_QUERIES", 1_000).max(1);
    let base = Params::default();
    let params = Params {
        connections: env("PLURESDB_BENCH_M", base.connections),
        ef_construction: env("PLURESDB_BENCH_EF_CONSTRUCTION", base.ef_construction),
        ef_search: env("PLURESDB_BENCH_EF_SEARCH", base.ef_search),
        ef_per_k: env("PLURESDB_BENCH_EF_PER_K", base.ef_per_k),
    };
    let sets = std::env::var("PLURESDB_BENCH_SETS").unwrap_or_else(|_| "embedding,uniform".into());
    println!("vectors bench: {n} x {dimension} (f32), {queries} queries, cosine, k = {K}, {params:?}");
    for set in sets.split(',') {
        match set.trim() {
            "embedding" => run(Set::EmbeddingLike, n, dimension, queries, params),
            "uniform" => run(Set::NearUniform, n, dimension, queries, params),
            other => eprintln!("unknown set {other:?}: embedding or uniform"),
        }
    }
}
