//! The vector index: 100,000 vectors of 384 dimensions against brute force
//! in the same run, on three seeded data sets (queries are drawn with
//! another seed):
//!
//! - `embedding` (the headline): shaped like text embeddings. 200 topics
//!   in a 24-dimensional latent space (topic centres ~N(0, 1) per latent
//!   component, documents ~N(0, 0.5²) around their topic), mapped into 384
//!   dimensions by a fixed random linear map, plus independent noise of
//!   1/10 of the signal's deviation per component. Real embeddings are
//!   like this: clustered by topic, with an intrinsic dimension far below
//!   the vector's length.
//! - `clusters`: the set of the first version of this bench, generated
//!   exactly as it was (1,000 uniform centres in [-0.5, 0.5)^384, uniform
//!   noise of width 0.35 per component; its queries lie around 1,000 other
//!   centres, so they are far from every cluster), inserted one at a time
//!   as writes arrive: the before/after comparison.
//! - `uniform`: independent uniform components, no structure at all:
//!   HNSW's worst case, reported for honesty, not as the target.
//!
//! `embedding` and `uniform` are loaded the way a node builds an index
//! from its store at start (`VectorIndex::load`, pages of 1,000 on every
//! core): that time is the start time of a node with such an index.
//!
//! `cargo bench -p pluresdb-vectors --bench vectors` (release). Scale down
//! with `PLURESDB_BENCH_VECTORS` (default 100,000), `PLURESDB_BENCH_DIM`
//! (384) and `PLURESDB_BENCH_QUERIES` (1,000); `PLURESDB_BENCH_SETS`
//! (`embedding,clusters,uniform`) picks the data sets; `PLURESDB_BENCH_M`,
//! `PLURESDB_BENCH_EF_CONSTRUCTION`, `PLURESDB_BENCH_EF_SEARCH` and
//! `PLURESDB_BENCH_EF_PER_K` override the graph's parameters (defaults:
//! `Params::default()`, what a node uses); `PLURESDB_BENCH_EF_SWEEP`
//! (e.g. `64,128,256,512`) also measures recall and CPU time at each of
//! those candidate counts on the same graph.
//!
//! Prints per set: insert rate (wall and per CPU second), memory,
//! recall@10 against brute force (target >= 0.95), query p50/p99 in wall
//! time (target p99 <= 5 ms) and in the thread's CPU time (what the wall
//! time is on a machine with a core free: on a shared machine the wall p99
//! is mostly waiting for a core), brute force time, for cosine.

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
    Embedding,
    Clusters,
    Uniform,
}

const LATENT: usize = 24;
const TOPICS: usize = 200;

fn vectors(set: Set, n: usize, dimension: usize, seed: u64) -> Vec<Vec<f32>> {
    // The structure (centres, map) comes from a fixed seed shared by
    // documents and queries; the draws from `seed`.
    let mut shape = Rng(1);
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    match set {
        Set::Uniform => (0..n).map(|_| (0..dimension).map(|_| rng.next()).collect()).collect(),
        Set::Clusters => {
            // Exactly the first version's generator: centres and points
            // from one seeded stream (so the queries, seed 2, lie around
            // other centres than the data).
            let mut rng = Rng(seed);
            let centres: Vec<Vec<f32>> = (0..1_000).map(|_| (0..dimension).map(|_| rng.next()).collect()).collect();
            (0..n)
                .map(|i| {
                    let centre = &centres[(i * 7_919) % centres.len()];
                    centre.iter().map(|c| c + 0.35 * rng.next()).collect()
                })
                .collect()
        }
        Set::Embedding => {
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

/// CPU time this process has used (user and system, every thread), in
/// seconds (Linux; 100 ticks a second). On a machine shared with other
/// work, the insert rate per CPU second says more than the wall time.
fn cpu_seconds() -> f64 {
    let text = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = text.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks = |at: usize| fields.get(at).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes only into the timespec it is given.
    let done = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if done != 0 {
        return Duration::ZERO;
    }
    Duration::new(u64::try_from(now.tv_sec).unwrap_or(0), u32::try_from(now.tv_nsec).unwrap_or(0))
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
    let cpu_before = cpu_seconds();
    let how = match set {
        Set::Embedding | Set::Uniform => {
            // As a node builds from its store: pages of 1,000, each on every core.
            for (ids, values) in ids.chunks(1_000).zip(values.chunks(1_000)) {
                let page: Vec<(&str, &Map<String, Value>)> = ids.iter().map(String::as_str).zip(values).collect();
                index.load(&page);
            }
            format!("loaded as from the store, on {} threads", rayon::current_num_threads())
        }
        Set::Clusters => {
            for (id, value) in ids.iter().zip(&values) {
                index.upsert(id, Some(value));
            }
            "one at a time, as writes arrive".to_owned()
        }
    };
    let inserting = started.elapsed();
    let cpu = cpu_seconds() - cpu_before;
    let grown = rss_mib() - before;
    println!(
        "[{set:?}] insert: {n} vectors in {:.1} s ({:.0} vectors/s, {how}; {cpu:.1} CPU s, {:.0} vectors per CPU s); memory +{grown:.0} MiB ({:.0} MiB of raw f32)",
        inserting.as_secs_f64(),
        n as f64 / inserting.as_secs_f64(),
        n as f64 / cpu.max(0.01),
        (n * dimension * 4) as f64 / (1024.0 * 1024.0)
    );
    let probes = vectors(set, queries, dimension, 2);
    let mut times = Vec::with_capacity(queries);
    let mut cpu_times = Vec::with_capacity(queries);
    let mut hits = 0usize;
    let recall_queries = queries.min(200);
    let mut brute_time = Duration::ZERO;
    let mut truths: Vec<Vec<String>> = Vec::with_capacity(recall_queries);
    for (q, probe) in probes.iter().enumerate() {
        let (started, cpu_started) = (Instant::now(), thread_cpu());
        let found = index.search(probe, K, |_| true).unwrap_or_default();
        times.push(started.elapsed());
        cpu_times.push(thread_cpu().saturating_sub(cpu_started));
        if q < recall_queries {
            let started = Instant::now();
            let mut brute: Vec<(f32, usize)> = data.iter().enumerate().map(|(i, v)| (distance(Metric::Cosine, probe, v), i)).collect();
            brute.select_nth_unstable_by(K - 1, |a, b| a.0.total_cmp(&b.0));
            brute_time += started.elapsed();
            let truth: Vec<String> = brute[..K].iter().map(|(_, i)| id(*i)).collect();
            hits += found.iter().filter(|(id, _)| truth.contains(id)).count();
            truths.push(truth);
        }
    }
    times.sort();
    cpu_times.sort();
    let p = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
    let cpu_p = |q: f64| cpu_times[((cpu_times.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "[{set:?}] recall@{K} against brute force: {:.3} ({recall_queries} queries; target >= 0.95)",
        hits as f64 / (recall_queries * K) as f64
    );
    println!(
        "[{set:?}] query: p50 {} p99 {} (target p99 <= 5 ms); in CPU time p50 {} p99 {}",
        ms(p(0.5)),
        ms(p(0.99)),
        ms(cpu_p(0.5)),
        ms(cpu_p(0.99))
    );
    println!(
        "[{set:?}] brute force: {} per query over {n} vectors (cosine with norms, the same distance function)",
        ms(brute_time / recall_queries as u32)
    );
    // Recall and time against the candidates explored, on the same graph.
    for ef in sweep() {
        let (mut hits, mut times) = (0usize, Vec::with_capacity(recall_queries));
        for (probe, truth) in probes.iter().zip(&truths) {
            let started = thread_cpu();
            let found = index.search_with_ef(probe, K, ef, |_| true).unwrap_or_default();
            times.push(thread_cpu().saturating_sub(started));
            hits += found.iter().filter(|(id, _)| truth.contains(id)).count();
        }
        times.sort();
        println!(
            "[{set:?}]   ef {ef}: recall@{K} {:.3}, CPU time p50 {} p99 {}",
            hits as f64 / (recall_queries * K) as f64,
            ms(times[times.len() / 2]),
            ms(times[((times.len() as f64 - 1.0) * 0.99).round() as usize])
        );
    }
}

/// `PLURESDB_BENCH_EF_SWEEP`: candidate counts to measure recall at (none
/// by default), e.g. `32,64,128,256`.
fn sweep() -> Vec<usize> {
    std::env::var("PLURESDB_BENCH_EF_SWEEP").unwrap_or_default().split(',').filter_map(|ef| ef.trim().parse().ok()).collect()
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
    let sets = std::env::var("PLURESDB_BENCH_SETS").unwrap_or_else(|_| "embedding,clusters,uniform".into());
    println!("vectors bench: {n} x {dimension} (f32), {queries} queries, cosine, k = {K}, {params:?}");
    for set in sets.split(',') {
        match set.trim() {
            "embedding" => run(Set::Embedding, n, dimension, queries, params),
            "clusters" => run(Set::Clusters, n, dimension, queries, params),
            "uniform" => run(Set::Uniform, n, dimension, queries, params),
            other => eprintln!("unknown set {other:?}: embedding, clusters or uniform"),
        }
    }
}
