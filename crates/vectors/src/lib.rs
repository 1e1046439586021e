//! Vector indexes: k-nearest-neighbour search over f32 vectors that nodes
//! hold in a field, on an HNSW graph (`hnsw_rs`; docs/vector-search.md says
//! why that crate).
//!
//! ```
//! use pluresdb_vectors::{Metric, VectorDef, VectorIndex};
//! use serde_json::json;
//!
//! let def = VectorDef { name: "doc:embedding".into(), prefix: "doc:".into(), field: "embedding".into(), dimension: 2, metric: Metric::Cosine };
//! let index = VectorIndex::new(def, 16);
//! index.upsert("doc:1", Some(json!({"embedding": [1.0, 0.0]}).as_object().unwrap()));
//! index.upsert("doc:2", Some(json!({"embedding": [0.0, 1.0]}).as_object().unwrap()));
//! let nearest = index.search(&[0.9, 0.1], 1, |_| true).unwrap();
//! assert_eq!(nearest[0].0, "doc:1");
//! ```
//!
//! The graph has no deletes: an update or a delete marks the node's old
//! point dead (searches skip it), and [`VectorIndex::needs_rebuild`] says
//! when dead points are a quarter of the graph. A value that is not a list
//! of `dimension` finite numbers is not indexed: it is counted, with the
//! reason, in [`VectorIndex::skipped`].
//!
//! Every method takes `&self`: the graph links points under its own
//! per-point locks, and the index's bookkeeping (which point is whose) sits
//! behind a mutex held only around it, never during a graph insert or a
//! search. So inserts from several threads ([`VectorIndex::load`] uses
//! them all) and searches run at the same time.

use hnsw_rs::filter::FilterT;
use hnsw_rs::prelude::{Distance, Hnsw};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The largest dimension an index takes.
pub const MAX_DIMENSION: usize = 4_096;
/// The most neighbours one search returns.
pub const MAX_K: usize = 1_000;
/// Layers of the graph at most.
const LAYERS: usize = 16;
/// The most candidates one search explores before it falls back to the
/// graph's filtered search (a filter that few points pass).
const MAX_EF: usize = 4_096;

/// How the graph is built and searched. [`Params::default`] is what a
/// node uses (docs/vector-search.md has the measurements behind it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Neighbours kept per point and layer (HNSW's M; twice that on the
    /// bottom layer). More: better recall, slower inserts, more memory.
    pub connections: usize,
    /// Candidates explored per insert. More: a better graph, slower inserts.
    pub ef_construction: usize,
    /// Candidates explored per search, at least; a search for k explores
    /// `max(ef_search, ef_per_k * k)`.
    pub ef_search: usize,
    /// See `ef_search`.
    pub ef_per_k: usize,
}

impl Default for Params {
    fn default() -> Self {
        Self { connections: 16, ef_construction: 100, ef_search: 128, ef_per_k: 8 }
    }
}

impl Params {
    /// Keeps each parameter in the range the graph takes (it exits the
    /// process on more than 256 connections).
    fn bounded(self) -> Self {
        Self {
            connections: self.connections.clamp(4, 64),
            ef_construction: self.ef_construction.clamp(8, 1_024),
            ef_search: self.ef_search.clamp(1, MAX_EF),
            ef_per_k: self.ef_per_k.clamp(1, 64),
        }
    }
}

/// How distance is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// 1 - cosine similarity (0 for the same direction, 2 for opposite).
    Cosine,
    /// Larger dot products are nearer: ln(1 + e^-(a·b)), which orders as
    /// the negated product but stays positive (the graph needs that).
    Dot,
    /// Euclidean distance.
    L2,
}

/// A vector index's definition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VectorDef {
    /// Its name.
    pub name: String,
    /// Nodes whose id starts with this.
    pub prefix: String,
    /// The field (dot-separated path) that holds the vector.
    pub field: String,
    /// The number of components every vector has.
    pub dimension: usize,
    /// The distance.
    pub metric: Metric,
}

/// What is wrong with a definition or a search.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VectorError {
    /// A vector with another number of components.
    #[error("the vector has {found} components; this index takes {expected}")]
    Dimension { expected: usize, found: usize },
    /// A component that is not a finite number.
    #[error("component {at} of the vector is not a finite number")]
    NotANumber { at: usize },
    /// A definition out of bounds.
    #[error("{0}")]
    Invalid(String),
}

impl VectorDef {
    /// Checks the bounds: a dimension of 1 to [`MAX_DIMENSION`], a field path.
    pub fn check(&self) -> Result<(), VectorError> {
        if !(1..=MAX_DIMENSION).contains(&self.dimension) {
            return Err(VectorError::Invalid(format!("dimension {} is out of range: 1 to {MAX_DIMENSION}", self.dimension)));
        }
        if self.field.is_empty() || self.field.len() > 256 || self.field.split('.').any(str::is_empty) || self.field.split('.').count() > 8
        {
            return Err(VectorError::Invalid(format!("field {:?} must be 1 to 8 names separated by dots", self.field)));
        }
        if self.name.is_empty() || self.name.len() > 256 || self.name.chars().any(|c| c.is_control() || c == '/') {
            return Err(VectorError::Invalid(format!("the name {:?} must be 1 to 256 bytes without '/' or control characters", self.name)));
        }
        if self.prefix.len() > 256 {
            return Err(VectorError::Invalid("the prefix is longer than 256 bytes".into()));
        }
        Ok(())
    }

    /// The vector a node's value holds in the field: `Ok(None)` when the
    /// field is absent (or null), an error when it is not a vector of this
    /// index's dimension.
    pub fn vector_of(&self, value: &Map<String, Value>) -> Result<Option<Vec<f32>>, VectorError> {
        let mut steps = self.field.split('.');
        let Some(mut at) = steps.next().and_then(|step| value.get(step)) else { return Ok(None) };
        for step in steps {
            match at.as_object().and_then(|object| object.get(step)) {
                Some(next) => at = next,
                None => return Ok(None),
            }
        }
        match at {
            Value::Null => Ok(None),
            Value::Array(items) => parse(items, self.dimension).map(Some),
            _ => Err(VectorError::Invalid(format!("{} is not a list of numbers", self.field))),
        }
    }
}

/// Reads a JSON list as a vector of `dimension` finite f32.
pub fn parse(items: &[Value], dimension: usize) -> Result<Vec<f32>, VectorError> {
    if items.len() != dimension {
        return Err(VectorError::Dimension { expected: dimension, found: items.len() });
    }
    items
        .iter()
        .enumerate()
        .map(|(at, item)| match item.as_f64().map(|x| x as f32) {
            Some(x) if x.is_finite() => Ok(x),
            _ => Err(VectorError::NotANumber { at }),
        })
        .collect()
}

/// Sums in this many independent lanes: a single running sum is one long
/// chain of dependent adds that the compiler may not reorder (float
/// addition is not associative), which held a 384-dimension product to
/// one add per cycle-latency; separate lanes are SIMD adds.
const LANES: usize = 16;

/// a·b.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (chunks_a, chunks_b) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = chunks_a.remainder().iter().zip(chunks_b.remainder()).map(|(x, y)| x * y).sum();
    let mut lanes = [0f32; LANES];
    for (x, y) in chunks_a.zip(chunks_b) {
        for ((lane, x), y) in lanes.iter_mut().zip(x).zip(y) {
            *lane += x * y;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// |a - b|², in lanes as [`dot`].
pub fn squared_l2(a: &[f32], b: &[f32]) -> f32 {
    let (chunks_a, chunks_b) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = chunks_a.remainder().iter().zip(chunks_b.remainder()).map(|(x, y)| (x - y) * (x - y)).sum();
    let mut lanes = [0f32; LANES];
    for (x, y) in chunks_a.zip(chunks_b) {
        for ((lane, x), y) in lanes.iter_mut().zip(x).zip(y) {
            *lane += (x - y) * (x - y);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// A fingerprint of a vector's exact bits (to tell an unchanged vector).
fn fingerprint(vector: &[f32]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    vector.len().hash(&mut hasher);
    vector.iter().for_each(|x| x.to_bits().hash(&mut hasher));
    hasher.finish()
}

/// `v` scaled to length 1 (a zero vector stays zero: it has no
/// direction, and its cosine distance to anything is 1).
fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let norm = dot(&v, &v).sqrt();
    if norm > 0.0 && norm.is_finite() {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// The distances the graph uses, on vectors as [`VectorIndex`] stores
/// them (cosine: normalized once at insert, so a distance is one dot
/// product). Written here rather than taken from the crate: its dot
/// product asserts normalized input (a panic on user data) and its cosine
/// asserts on rounding; the graph itself asserts that no distance is
/// negative.
#[derive(Clone, Copy, Default)]
pub struct CosineDistance;
#[derive(Clone, Copy, Default)]
pub struct DotDistance;
/// The squared Euclidean distance (same order, no square root per step);
/// searches report its root.
#[derive(Clone, Copy, Default)]
pub struct SquaredL2Distance;

impl Distance<f32> for CosineDistance {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

fn softplus_of_negated(product: f32) -> f32 {
    // ln(1 + e^-p): monotone in -p, never negative. Finite components can
    // still give a product of inf - inf: that pair is as far as anything
    // (a NaN distance panics inside the graph).
    if product.is_nan() {
        return f32::MAX;
    }
    let x = -f64::from(product);
    (if x > 30.0 { x } else { x.exp().ln_1p() }) as f32
}

impl Distance<f32> for DotDistance {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        softplus_of_negated(dot(a, b))
    }
}

impl Distance<f32> for SquaredL2Distance {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        squared_l2(a, b)
    }
}

/// The distance of `metric` between two vectors as given (brute force, and
/// what a search reports).
pub fn distance(metric: Metric, a: &[f32], b: &[f32]) -> f32 {
    match metric {
        Metric::Cosine => {
            let (na, nb) = (dot(a, a), dot(b, b));
            if na <= 0.0 || nb <= 0.0 {
                // A zero vector has no direction: as far as anything.
                return 1.0;
            }
            (1.0 - dot(a, b) / (na.sqrt() * nb.sqrt())).max(0.0)
        }
        Metric::Dot => softplus_of_negated(dot(a, b)),
        Metric::L2 => squared_l2(a, b).sqrt(),
    }
}

enum Graph {
    Cosine(Hnsw<'static, f32, CosineDistance>),
    Dot(Hnsw<'static, f32, DotDistance>),
    L2(Hnsw<'static, f32, SquaredL2Distance>),
}

impl Graph {
    fn insert(&self, vector: &[f32], point: usize) {
        match self {
            Graph::Cosine(g) => g.insert_slice((vector, point)),
            Graph::Dot(g) => g.insert_slice((vector, point)),
            Graph::L2(g) => g.insert_slice((vector, point)),
        }
    }

    /// Up to `k` (point, graph distance), exploring `ef` candidates;
    /// `filter` makes the graph skip points (and explore much further).
    fn search(&self, vector: &[f32], k: usize, ef: usize, filter: Option<&dyn FilterT>) -> Vec<(usize, f32)> {
        let found = match self {
            Graph::Cosine(g) => g.search_filter(vector, k, ef, filter),
            Graph::Dot(g) => g.search_filter(vector, k, ef, filter),
            Graph::L2(g) => g.search_filter(vector, k, ef, filter),
        };
        found.into_iter().map(|n| (n.d_id, n.distance)).collect()
    }
}

/// Which point is whose.
#[derive(Default)]
struct Book {
    /// The node of each point (by data id), and whether it is live.
    points: Vec<(String, bool)>,
    /// Each node's live point, and its vector's fingerprint.
    live: HashMap<String, (usize, u64)>,
    /// Nodes whose value was not indexed, with why.
    skipped: HashMap<String, String>,
    last_skip: Option<String>,
    /// While loading from the store: the nodes changed since the load
    /// began (the load must not put back an older value of theirs).
    changed_while_loading: Option<HashSet<String>>,
}

/// Where an insert comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A change, newer than anything a load reads.
    Change,
    /// A load from the store, older than any change seen during it.
    Load,
}

/// One vector index in memory. See the [crate docs](crate).
pub struct VectorIndex {
    def: VectorDef,
    params: Params,
    graph: Graph,
    book: Mutex<Book>,
}

impl VectorIndex {
    /// An empty index for `def` (checked by the caller), sized for about
    /// `capacity` points, with the default [`Params`].
    pub fn new(def: VectorDef, capacity: usize) -> Self {
        Self::with_params(def, capacity, Params::default())
    }

    /// An empty index with other parameters (kept within bounds).
    pub fn with_params(def: VectorDef, capacity: usize, params: Params) -> Self {
        let params = params.bounded();
        let capacity = capacity.max(1_024);
        let (m, ef) = (params.connections, params.ef_construction);
        let graph = match def.metric {
            Metric::Cosine => Graph::Cosine(Hnsw::new(m, capacity, LAYERS, ef, CosineDistance)),
            Metric::Dot => Graph::Dot(Hnsw::new(m, capacity, LAYERS, ef, DotDistance)),
            Metric::L2 => Graph::L2(Hnsw::new(m, capacity, LAYERS, ef, SquaredL2Distance)),
        };
        Self { def, params, graph, book: Mutex::new(Book::default()) }
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The definition.
    pub fn def(&self) -> &VectorDef {
        &self.def
    }

    /// The parameters.
    pub fn params(&self) -> Params {
        self.params
    }

    /// Points that searches can find.
    pub fn len(&self) -> usize {
        self.book().live.len()
    }

    /// Whether no point is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Nodes under the prefix whose field is not a vector of the index's
    /// dimension, and the last reason seen.
    pub fn skipped(&self) -> (usize, Option<String>) {
        let book = self.book();
        (book.skipped.len(), book.last_skip.clone())
    }

    /// Whether dead points are a quarter of the graph or more (then build
    /// it again from the nodes).
    pub fn needs_rebuild(&self) -> bool {
        let book = self.book();
        let dead = book.points.len() - book.live.len();
        dead >= 1_024 && dead * 4 >= book.points.len()
    }

    /// Marks the start of a load from the store: from now until
    /// [`finish_loading`](Self::finish_loading), [`load`](Self::load) does
    /// not put back a node that [`upsert`](Self::upsert) changed meanwhile.
    pub fn start_loading(&self) {
        self.book().changed_while_loading = Some(HashSet::new());
    }

    /// See [`start_loading`](Self::start_loading).
    pub fn finish_loading(&self) {
        self.book().changed_while_loading = None;
    }

    /// Whether a load is under way.
    pub fn is_loading(&self) -> bool {
        self.book().changed_while_loading.is_some()
    }

    /// Whether node `id`'s live point is exactly the vector `value` holds
    /// (to check an index against the store).
    pub fn holds(&self, id: &str, value: &Map<String, Value>) -> bool {
        let Ok(Some(vector)) = self.def.vector_of(value) else { return false };
        let print = fingerprint(&self.prepared(vector));
        self.book().live.get(id).is_some_and(|(_, live)| *live == print)
    }

    /// The form the graph stores: cosine vectors normalized once here, so
    /// each distance during inserts and searches is one dot product.
    fn prepared(&self, vector: Vec<f32>) -> Vec<f32> {
        match self.def.metric {
            Metric::Cosine => normalized(vector),
            Metric::Dot | Metric::L2 => vector,
        }
    }

    /// Takes node `id`'s new value (`None`: deleted or absent); a node
    /// outside the prefix is ignored. Returns whether the index changed.
    pub fn upsert(&self, id: &str, value: Option<&Map<String, Value>>) -> bool {
        self.insert(id, value, Source::Change)
    }

    /// Takes nodes read from the store, inserting them on every core
    /// (rayon); a node changed by [`upsert`](Self::upsert) since
    /// [`start_loading`](Self::start_loading) keeps its newer value.
    pub fn load(&self, nodes: &[(&str, &Map<String, Value>)]) {
        nodes.par_iter().for_each(|(id, value)| {
            self.insert(id, Some(value), Source::Load);
        });
    }

    /// [`upsert`](Self::upsert)s several nodes (each id at most once: the
    /// order between two changes of one node would be lost) on every core.
    pub fn upsert_many(&self, changes: &[(&str, Option<&Map<String, Value>>)]) {
        changes.par_iter().for_each(|(id, value)| {
            self.insert(id, *value, Source::Change);
        });
    }

    fn insert(&self, id: &str, value: Option<&Map<String, Value>>, source: Source) -> bool {
        if !id.starts_with(&self.def.prefix) {
            return false;
        }
        let parsed = value.map(|v| self.def.vector_of(v).map(|vector| vector.map(|v| self.prepared(v))));
        // Claim a point (dead until linked), or retire the old one.
        let (point, vector, print) = {
            let mut book = self.book();
            match (&mut book.changed_while_loading, source) {
                (Some(changed), Source::Load) if changed.contains(id) => return false,
                (Some(changed), Source::Change) => {
                    changed.insert(id.to_owned());
                }
                _ => {}
            }
            let vector = match parsed {
                Some(Ok(vector)) => {
                    book.skipped.remove(id);
                    vector
                }
                Some(Err(err)) => {
                    let reason = format!("{id}: {err}");
                    book.skipped.insert(id.to_owned(), reason.clone());
                    book.last_skip = Some(reason);
                    None
                }
                None => {
                    book.skipped.remove(id);
                    None
                }
            };
            let Some(vector) = vector else {
                let old = book.live.remove(id);
                if let Some((old, _)) = old {
                    book.points[old].1 = false;
                }
                return old.is_some();
            };
            let print = fingerprint(&vector);
            if book.live.get(id).is_some_and(|(_, live)| *live == print) {
                // The same vector (a change to another field): the point
                // stays as it is, and the graph gains no dead point.
                return false;
            }
            book.points.push((id.to_owned(), false));
            (book.points.len() - 1, vector, print)
        };
        // The slow part, without the book's lock: searches and other
        // inserts go on meanwhile.
        self.graph.insert(&vector, point);
        let mut book = self.book();
        if source == Source::Load && book.changed_while_loading.as_ref().is_some_and(|c| c.contains(id)) {
            // A change came in while this was linked: it wins.
            return false;
        }
        if let Some((old, _)) = book.live.insert(id.to_owned(), (point, print)) {
            book.points[old].1 = false;
        }
        book.points[point].1 = true;
        true
    }

    /// The `k` live points nearest `vector` whose node `accept` takes, as
    /// (node id, distance), nearest first.
    ///
    /// The graph is searched without a filter (its filtered search never
    /// stops early and explores a large part of the graph), dead and
    /// refused points are dropped from what it returns, and the search is
    /// widened while fewer than `k` remain; past [`MAX_EF`] candidates it
    /// falls back to the graph's filtered search (a filter few nodes pass).
    pub fn search(&self, vector: &[f32], k: usize, accept: impl Fn(&str) -> bool) -> Result<Vec<(String, f32)>, VectorError> {
        let k = k.clamp(1, MAX_K);
        self.search_with_ef(vector, k, self.params.ef_search.max(self.params.ef_per_k * k), accept)
    }

    /// [`search`](Self::search) exploring `ef` candidates at first rather
    /// than what the parameters say (to measure recall against it).
    pub fn search_with_ef(
        &self,
        vector: &[f32],
        k: usize,
        ef: usize,
        accept: impl Fn(&str) -> bool,
    ) -> Result<Vec<(String, f32)>, VectorError> {
        if vector.len() != self.def.dimension {
            return Err(VectorError::Dimension { expected: self.def.dimension, found: vector.len() });
        }
        if let Some(at) = vector.iter().position(|x| !x.is_finite()) {
            return Err(VectorError::NotANumber { at });
        }
        let query = self.prepared(vector.to_vec());
        let k = k.clamp(1, MAX_K);
        let mut ef = ef.min(MAX_EF).max(k);
        let passing = |found: Vec<(usize, f32)>| -> Vec<(String, f32)> {
            let book = self.book();
            found
                .into_iter()
                .filter_map(|(point, d)| book.points.get(point).filter(|(id, live)| *live && accept(id)).map(|(id, _)| (id.clone(), d)))
                .collect()
        };
        let mut out = loop {
            let found = self.graph.search(&query, ef, ef, None);
            let exhausted = found.len() < ef;
            let out = passing(found);
            if out.len() >= k || exhausted {
                break out;
            }
            if ef >= MAX_EF {
                let filter = |point: &usize| {
                    let book = self.book();
                    book.points.get(*point).is_some_and(|(id, live)| *live && accept(id))
                };
                break passing(self.graph.search(&query, k, ef, Some(&filter)));
            }
            ef = (ef * 4).min(MAX_EF);
        };
        if self.def.metric == Metric::L2 {
            out.iter_mut().for_each(|(_, d)| *d = d.sqrt());
        }
        out.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        out.truncate(k);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn def(metric: Metric, dimension: usize) -> VectorDef {
        VectorDef { name: "v".into(), prefix: "d:".into(), field: "e".into(), dimension, metric }
    }

    /// A seeded spread of vectors.
    fn vectors(n: usize, dimension: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        (0..n).map(|_| (0..dimension).map(|_| next()).collect()).collect()
    }

    #[test]
    fn every_metric_finds_what_brute_force_finds_on_a_small_set() {
        for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
            let index = VectorIndex::new(def(metric, 8), 100);
            let points = vectors(300, 8, 7);
            for (i, v) in points.iter().enumerate() {
                assert!(index.upsert(&format!("d:{i:03}"), Some(json!({"e": v}).as_object().unwrap())));
            }
            let mut hits = 0;
            for query in vectors(20, 8, 99) {
                let mut brute: Vec<(String, f32)> =
                    points.iter().enumerate().map(|(i, v)| (format!("d:{i:03}"), distance(metric, &query, v))).collect();
                brute.sort_by(|a, b| a.1.total_cmp(&b.1));
                let found = index.search(&query, 5, |_| true).unwrap();
                hits += found.iter().filter(|(id, _)| brute[..5].iter().any(|(b, _)| b == id)).count();
            }
            assert!(hits >= 95, "{metric:?}: recall@5 {hits}/100");
        }
    }

    #[test]
    fn updates_deletes_and_bad_values_are_followed() {
        let index = VectorIndex::new(def(Metric::L2, 2), 10);
        let value = |v: Value| v.as_object().unwrap().clone();
        index.upsert("d:1", Some(&value(json!({"e": [0.0, 0.0]}))));
        index.upsert("d:2", Some(&value(json!({"e": [5.0, 5.0]}))));
        assert_eq!(index.search(&[0.1, 0.0], 1, |_| true).unwrap()[0].0, "d:1");
        // d:1 moves far away: d:2 is nearest now.
        index.upsert("d:1", Some(&value(json!({"e": [100.0, 100.0]}))));
        assert_eq!(index.search(&[0.1, 0.0], 1, |_| true).unwrap()[0].0, "d:2");
        index.upsert("d:2", None);
        assert_eq!(index.search(&[0.1, 0.0], 5, |_| true).unwrap().iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["d:1"]);
        // Wrong dimension, not numbers: not indexed, reported; the old point goes.
        index.upsert("d:1", Some(&value(json!({"e": [1.0, 2.0, 3.0]}))));
        index.upsert("d:3", Some(&value(json!({"e": [1.0, "x"]}))));
        assert!(index.is_empty());
        let (count, last) = index.skipped();
        assert_eq!(count, 2);
        assert!(last.as_deref().unwrap_or_default().contains("component 1"), "{last:?}");
        assert!(index.book().skipped.get("d:1").unwrap().contains("3 components; this index takes 2"));
        // Outside the prefix: ignored.
        assert!(!index.upsert("x:1", Some(&value(json!({"e": [1.0, 1.0]})))));
        assert_eq!(index.search(&[1.0], 1, |_| true), Err(VectorError::Dimension { expected: 2, found: 1 }));
        assert_eq!(index.search(&[1.0, f32::NAN], 1, |_| true), Err(VectorError::NotANumber { at: 1 }));
        // A filter narrows the answer.
        index.upsert("d:4", Some(&value(json!({"e": [1.0, 1.0]}))));
        index.upsert("d:5", Some(&value(json!({"e": [1.1, 1.0]}))));
        assert_eq!(index.search(&[1.0, 1.0], 1, |id| id != "d:4").unwrap()[0].0, "d:5");
        // L2 distances are reported as distances, not their squares.
        let found = index.search(&[1.0, 4.0], 1, |_| true).unwrap();
        assert_eq!(found[0].0, "d:4");
        assert!((found[0].1 - 3.0).abs() < 1e-5, "{found:?}");
    }

    #[test]
    fn a_load_does_not_put_back_what_a_change_replaced_meanwhile() {
        let index = VectorIndex::new(def(Metric::L2, 2), 10);
        let value = |v: Value| v.as_object().unwrap().clone();
        let (stale_1, stale_2, fresh) = (value(json!({"e": [0.0, 0.0]})), value(json!({"e": [9.0, 9.0]})), value(json!({"e": [5.0, 5.0]})));
        index.start_loading();
        assert!(index.is_loading());
        // d:1 changes and d:2 is deleted after the load read them.
        index.upsert("d:1", Some(&fresh));
        index.upsert("d:2", None);
        index.load(&[("d:1", &stale_1), ("d:2", &stale_2), ("d:3", &stale_1)]);
        index.finish_loading();
        assert_eq!(index.len(), 2);
        let found = index.search(&[0.0, 0.0], 5, |_| true).unwrap();
        let ids: Vec<&str> = found.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["d:3", "d:1"]);
        assert!((found[1].1 - 50f32.sqrt()).abs() < 1e-4, "d:1 kept its newer value: {found:?}");
        // After the load, a load's insert is an ordinary one again.
        index.load(&[("d:2", &stale_2)]);
        assert_eq!(index.len(), 3);
    }

    #[test]
    fn a_change_that_keeps_the_vector_adds_no_point() {
        let index = VectorIndex::new(def(Metric::Cosine, 2), 10);
        let value = |v: Value| v.as_object().unwrap().clone();
        assert!(index.upsert("d:1", Some(&value(json!({"e": [1.0, 2.0], "n": 0})))));
        for n in 1..2_000 {
            // Another field changes; the vector does not.
            assert!(!index.upsert("d:1", Some(&value(json!({"e": [1.0, 2.0], "n": n})))));
        }
        assert!(!index.needs_rebuild());
        assert_eq!(index.book().points.len(), 1);
        assert!(index.holds("d:1", &value(json!({"e": [1.0, 2.0]}))));
        assert!(index.upsert("d:1", Some(&value(json!({"e": [2.0, 1.0]})))));
        assert!(!index.holds("d:1", &value(json!({"e": [1.0, 2.0]}))));
        assert!(index.holds("d:1", &value(json!({"e": [2.0, 1.0]}))));
    }

    #[test]
    fn vectors_whose_products_overflow_are_far_not_a_panic() {
        // Finite f32 components whose products overflow to +inf and -inf:
        // their sum is NaN, which the graph refuses with a panic.
        for metric in [Metric::Dot, Metric::Cosine, Metric::L2] {
            let index = VectorIndex::new(def(metric, 2), 10);
            let value = |v: Value| v.as_object().cloned().unwrap_or_default();
            assert!(index.upsert("d:1", Some(&value(json!({"e": [1e30, 1e30]})))));
            assert!(index.upsert("d:2", Some(&value(json!({"e": [1e30, -1e30]})))));
            assert!(index.upsert("d:3", Some(&value(json!({"e": [1.0, 2.0]})))));
            let found = index.search(&[1e30, -1e30], 3, |_| true).unwrap();
            assert!(!found.is_empty(), "{metric:?}");
            assert!(found.iter().all(|(_, d)| !d.is_nan()), "{metric:?}: {found:?}");
        }
    }

    #[test]
    fn a_filter_few_points_pass_still_finds_them() {
        // 2,000 points; the filter takes every 500th: the search widens
        // until the graph has no more to give.
        let index = VectorIndex::new(def(Metric::Cosine, 8), 2_000);
        let points = vectors(2_000, 8, 11);
        let nodes: Vec<(String, Map<String, Value>)> =
            points.iter().enumerate().map(|(i, v)| (format!("d:{i:04}"), json!({"e": v}).as_object().unwrap().clone())).collect();
        let refs: Vec<(&str, &Map<String, Value>)> = nodes.iter().map(|(id, v)| (id.as_str(), v)).collect();
        index.load(&refs);
        let wanted = |id: &str| id.ends_with("000") || id.ends_with("500");
        let found = index.search(&points[3], 4, wanted).unwrap();
        let mut ids: Vec<&str> = found.iter().map(|(id, _)| id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["d:0000", "d:0500", "d:1000", "d:1500"]);
    }

    #[test]
    fn lane_sums_equal_plain_sums() {
        for dimension in [1, 7, 16, 17, 384, 385] {
            let v = vectors(2, dimension, dimension as u64);
            let plain: f32 = v[0].iter().zip(&v[1]).map(|(a, b)| a * b).sum();
            assert!((dot(&v[0], &v[1]) - plain).abs() < 1e-4, "{dimension}");
            let plain: f32 = v[0].iter().zip(&v[1]).map(|(a, b)| (a - b) * (a - b)).sum();
            assert!((squared_l2(&v[0], &v[1]) - plain).abs() < 1e-4, "{dimension}");
        }
    }
}
