//! Vector indexes: k-nearest-neighbour search over f32 vectors that nodes
//! hold in a field, on an HNSW graph (`hnsw_rs`; docs/vector-search.md says
//! why that crate).
//!
//! ```
//! use pluresdb_vectors::{Metric, VectorDef, VectorIndex};
//! use serde_json::json;
//!
//! let def = VectorDef { name: "doc:embedding".into(), prefix: "doc:".into(), field: "embedding".into(), dimension: 2, metric: Metric::Cosine };
//! let mut index = VectorIndex::new(def, 16);
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

use hnsw_rs::prelude::{Distance, Hnsw};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// The largest dimension an index takes.
pub const MAX_DIMENSION: usize = 4_096;
/// The most neighbours one search returns.
pub const MAX_K: usize = 1_000;
/// Neighbours kept per point and layer (HNSW's M).
const CONNECTIONS: usize = 24;
/// Candidates explored per insert.
const EF_CONSTRUCTION: usize = 200;
/// Candidates explored per search, at least (more for a larger k).
const EF_SEARCH: usize = 96;
/// Layers of the graph at most.
const LAYERS: usize = 16;

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

/// Distances for the graph, written here rather than taken from the
/// crate: its dot product asserts normalized input (a panic on user data)
/// and its cosine asserts on rounding; the graph itself asserts that no
/// distance is negative.
#[derive(Clone, Copy, Default)]
pub struct CosineDistance;
#[derive(Clone, Copy, Default)]
pub struct DotDistance;
#[derive(Clone, Copy, Default)]
pub struct L2Distance;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl Distance<f32> for CosineDistance {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        let (na, nb) = (dot(a, a), dot(b, b));
        if na <= 0.0 || nb <= 0.0 {
            // A zero vector has no direction: as far as anything.
            return 1.0;
        }
        (1.0 - dot(a, b) / (na.sqrt() * nb.sqrt())).max(0.0)
    }
}

impl Distance<f32> for DotDistance {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        // Softplus of the negated product: monotone, never negative.
        let x = -f64::from(dot(a, b));
        let softplus = if x > 30.0 { x } else { x.exp().ln_1p() };
        softplus as f32
    }
}

impl Distance<f32> for L2Distance {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt()
    }
}

/// The distance of `metric` between two vectors (brute force, and what a
/// search reports).
pub fn distance(metric: Metric, a: &[f32], b: &[f32]) -> f32 {
    match metric {
        Metric::Cosine => CosineDistance.eval(a, b),
        Metric::Dot => DotDistance.eval(a, b),
        Metric::L2 => L2Distance.eval(a, b),
    }
}

enum Graph {
    Cosine(Hnsw<'static, f32, CosineDistance>),
    Dot(Hnsw<'static, f32, DotDistance>),
    L2(Hnsw<'static, f32, L2Distance>),
}

/// One vector index in memory. See the [crate docs](crate).
pub struct VectorIndex {
    def: VectorDef,
    graph: Graph,
    /// The node of each point (by data id), and whether it is live.
    points: Vec<(String, bool)>,
    /// Each node's live point.
    live: HashMap<String, usize>,
    /// Nodes whose value was not indexed, with why.
    skipped: HashMap<String, String>,
    last_skip: Option<String>,
}

impl VectorIndex {
    /// An empty index for `def` (checked by the caller), sized for about
    /// `capacity` points.
    pub fn new(def: VectorDef, capacity: usize) -> Self {
        let capacity = capacity.max(1_024);
        let graph = match def.metric {
            Metric::Cosine => Graph::Cosine(Hnsw::new(CONNECTIONS, capacity, LAYERS, EF_CONSTRUCTION, CosineDistance)),
            Metric::Dot => Graph::Dot(Hnsw::new(CONNECTIONS, capacity, LAYERS, EF_CONSTRUCTION, DotDistance)),
            Metric::L2 => Graph::L2(Hnsw::new(CONNECTIONS, capacity, LAYERS, EF_CONSTRUCTION, L2Distance)),
        };
        Self { def, graph, points: Vec::new(), live: HashMap::new(), skipped: HashMap::new(), last_skip: None }
    }

    /// The definition.
    pub fn def(&self) -> &VectorDef {
        &self.def
    }

    /// Points that searches can find.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether no point is live.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Nodes under the prefix whose field is not a vector of the index's
    /// dimension, and the last reason seen.
    pub fn skipped(&self) -> (usize, Option<&str>) {
        (self.skipped.len(), self.last_skip.as_deref())
    }

    /// Whether dead points are a quarter of the graph or more (then build
    /// it again from the nodes).
    pub fn needs_rebuild(&self) -> bool {
        let dead = self.points.len() - self.live.len();
        dead >= 1_024 && dead * 4 >= self.points.len()
    }

    /// Takes node `id`'s new value (`None`: deleted or absent); a node
    /// outside the prefix is ignored. Returns whether the index changed.
    pub fn upsert(&mut self, id: &str, value: Option<&Map<String, Value>>) -> bool {
        if !id.starts_with(&self.def.prefix) {
            return false;
        }
        let vector = match value.map(|v| self.def.vector_of(v)) {
            Some(Ok(vector)) => vector,
            Some(Err(err)) => {
                let reason = format!("{id}: {err}");
                self.skipped.insert(id.to_owned(), reason.clone());
                self.last_skip = Some(reason);
                None
            }
            None => None,
        };
        if vector.is_some() || value.is_none() {
            self.skipped.remove(id);
        }
        let old = self.live.remove(id);
        if let Some(old) = old {
            self.points[old].1 = false;
        }
        let Some(vector) = vector else { return old.is_some() };
        let point = self.points.len();
        match &self.graph {
            Graph::Cosine(g) => g.insert_slice((&vector, point)),
            Graph::Dot(g) => g.insert_slice((&vector, point)),
            Graph::L2(g) => g.insert_slice((&vector, point)),
        }
        self.points.push((id.to_owned(), true));
        self.live.insert(id.to_owned(), point);
        true
    }

    /// The `k` live points nearest `vector` whose node `accept` takes, as
    /// (node id, distance), nearest first.
    pub fn search(&self, vector: &[f32], k: usize, accept: impl Fn(&str) -> bool) -> Result<Vec<(String, f32)>, VectorError> {
        if vector.len() != self.def.dimension {
            return Err(VectorError::Dimension { expected: self.def.dimension, found: vector.len() });
        }
        if let Some(at) = vector.iter().position(|x| !x.is_finite()) {
            return Err(VectorError::NotANumber { at });
        }
        let k = k.clamp(1, MAX_K);
        let ef = EF_SEARCH.max(2 * k);
        let filter = |point: &usize| self.points.get(*point).is_some_and(|(id, live)| *live && accept(id));
        let found = match &self.graph {
            Graph::Cosine(g) => g.search_filter(vector, k, ef, Some(&filter)),
            Graph::Dot(g) => g.search_filter(vector, k, ef, Some(&filter)),
            Graph::L2(g) => g.search_filter(vector, k, ef, Some(&filter)),
        };
        let mut out: Vec<(String, f32)> = found
            .into_iter()
            .filter_map(|n| self.points.get(n.d_id).filter(|(_, live)| *live).map(|(id, _)| (id.clone(), n.distance)))
            .collect();
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
            let mut index = VectorIndex::new(def(metric, 8), 100);
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
        let mut index = VectorIndex::new(def(Metric::L2, 2), 10);
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
        assert!(last.unwrap().contains("component 1"), "{last:?}");
        assert!(index.skipped.get("d:1").unwrap().contains("3 components; this index takes 2"));
        // Outside the prefix: ignored.
        assert!(!index.upsert("x:1", Some(&value(json!({"e": [1.0, 1.0]})))));
        assert_eq!(index.search(&[1.0], 1, |_| true), Err(VectorError::Dimension { expected: 2, found: 1 }));
        assert_eq!(index.search(&[1.0, f32::NAN], 1, |_| true), Err(VectorError::NotANumber { at: 1 }));
        // A filter narrows the answer.
        index.upsert("d:4", Some(&value(json!({"e": [1.0, 1.0]}))));
        index.upsert("d:5", Some(&value(json!({"e": [1.1, 1.0]}))));
        assert_eq!(index.search(&[1.0, 1.0], 1, |id| id != "d:4").unwrap()[0].0, "d:5");
    }
}
