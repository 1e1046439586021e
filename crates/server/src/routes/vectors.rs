//! Vector indexes and k-nearest-neighbour search: `/vectors`.

use crate::docs::{ErrorDoc, NodeDoc};
use crate::error::{rejected, ApiError};
use crate::routes::nodes::{node_doc, IdPath};
use crate::routes::queries::ConditionDoc;
use crate::ApiState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use pluresdb_runtime::VectorStatus;
use pluresdb_vectors::{Metric, VectorDef};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A vector index and its state.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VectorIndexDoc {
    /// Its name.
    pub name: String,
    /// The nodes it covers: ids that start with this.
    pub prefix: String,
    /// The field (dot-separated path) that holds each node's vector.
    pub field: String,
    /// The number of components of every vector.
    pub dimension: usize,
    /// `cosine` (1 - cosine similarity), `dot` (ln(1 + e^-(a·b)): larger
    /// products are nearer) or `l2` (Euclidean).
    pub metric: String,
    /// Vectors searches can find.
    pub points: usize,
    /// Nodes under the prefix whose field is not a list of `dimension`
    /// finite numbers (not indexed).
    pub skipped: usize,
    /// Why the last of them was skipped.
    pub last_skip: Option<String>,
    /// Still reading the stored nodes (searches answer from what is in).
    pub building: bool,
    /// How long building from the store took (at creation, or at the
    /// node's start), in ms.
    pub built_ms: Option<u64>,
    /// Builds from the store since the node started: the first, and one
    /// each time updates and deletes left a quarter of the graph's points
    /// dead.
    pub builds: u64,
    /// Times the node's vector indexes fell behind a burst of changes and
    /// caught up by replaying the op log (no build).
    pub caught_up: u64,
}

fn metric_name(metric: Metric) -> &'static str {
    match metric {
        Metric::Cosine => "cosine",
        Metric::Dot => "dot",
        Metric::L2 => "l2",
    }
}

impl From<&VectorStatus> for VectorIndexDoc {
    fn from(s: &VectorStatus) -> Self {
        VectorIndexDoc {
            name: s.def.name.clone(),
            prefix: s.def.prefix.clone(),
            field: s.def.field.clone(),
            dimension: s.def.dimension,
            metric: metric_name(s.def.metric).into(),
            points: s.points,
            skipped: s.skipped,
            last_skip: s.last_skip.clone(),
            building: s.building,
            built_ms: s.built_ms,
            builds: s.builds,
            caught_up: s.caught_up,
        }
    }
}

/// What to index.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VectorSpecDoc {
    /// A name (default: the prefix and the field).
    #[serde(default)]
    pub name: Option<String>,
    /// Index nodes whose id starts with this.
    #[serde(default)]
    pub prefix: String,
    /// The field that holds the vector (a list of numbers).
    pub field: String,
    /// The number of components, 1 to 4,096.
    pub dimension: usize,
    /// `cosine` (default), `dot` or `l2`.
    #[serde(default)]
    pub metric: Option<String>,
}

/// A k-nearest-neighbour search.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VectorSearchDoc {
    /// The query vector (the index's dimension).
    pub vector: Vec<f64>,
    /// How many neighbours, 1 to 1,000 (default 10).
    #[serde(default)]
    pub k: Option<usize>,
    /// Only nodes whose id starts with this.
    #[serde(default)]
    pub prefix: String,
    /// Only nodes that pass these conditions (as in `POST /query`).
    #[serde(default, rename = "where")]
    pub conditions: Vec<ConditionDoc>,
}

/// A neighbour.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NeighbourDoc {
    /// The node.
    pub node: NodeDoc,
    /// Its distance to the query vector (see the index's metric).
    pub distance: f32,
}

/// The nearest nodes, nearest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NeighboursDoc {
    pub neighbours: Vec<NeighbourDoc>,
}

/// The vector indexes.
#[utoipa::path(get, path = "/vectors", operation_id = "list_vector_indexes", tag = "queries", responses((status = 200, body = Vec<VectorIndexDoc>)))]
pub async fn list(State(state): State<ApiState>) -> Result<Json<Vec<VectorIndexDoc>>, ApiError> {
    Ok(Json(state.handle.vector_indexes().iter().map(VectorIndexDoc::from).collect()))
}

/// Creates a vector index over a field holding f32 vectors of a fixed
/// dimension and builds it from the stored nodes; answers once built. It
/// then follows every write, local or replicated, and is built again from
/// the store at each start (`built_ms`).
#[utoipa::path(post, path = "/vectors", operation_id = "create_vector_index", tag = "queries", request_body = VectorSpecDoc,
    responses((status = 201, body = VectorIndexDoc),
        (status = 400, description = "A bad spec (dimension, field, metric), a name in use, or too many vector indexes", body = ErrorDoc),
        (status = 413, body = ErrorDoc)))]
pub async fn create(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<VectorIndexDoc>), ApiError> {
    let body = body.map_err(rejected)?;
    let spec: VectorSpecDoc =
        serde_json::from_slice(&body).map_err(|err| ApiError::bad_request(format!("not a vector index spec: {err}")))?;
    let metric = match spec.metric.as_deref().unwrap_or("cosine") {
        "cosine" => Metric::Cosine,
        "dot" => Metric::Dot,
        "l2" => Metric::L2,
        other => return Err(ApiError::bad_request(format!("unknown metric {other:?}: use cosine, dot or l2"))),
    };
    let name = spec.name.unwrap_or_else(|| format!("{}{}", spec.prefix, spec.field));
    let def = VectorDef { name, prefix: spec.prefix, field: spec.field, dimension: spec.dimension, metric };
    let status = state.handle.create_vector_index(def).await?;
    Ok((StatusCode::CREATED, Json(VectorIndexDoc::from(&status))))
}

/// Drops a vector index.
#[utoipa::path(delete, path = "/vectors/{name}", operation_id = "drop_vector_index", tag = "queries", params(("name" = String, Path, description = "Vector index name")),
    responses((status = 200, body = VectorIndexDoc), (status = 404, body = ErrorDoc)))]
pub async fn drop_index(State(state): State<ApiState>, name: IdPath) -> Result<Json<VectorIndexDoc>, ApiError> {
    let Path(name) = name.map_err(rejected)?;
    Ok(Json(VectorIndexDoc::from(&state.handle.drop_vector_index(&name).await?)))
}

/// The k nodes nearest a vector, optionally only those under a prefix or
/// passing conditions, nearest first.
#[utoipa::path(post, path = "/vectors/{name}/search", operation_id = "vector_search", tag = "queries", params(("name" = String, Path, description = "Vector index name")),
    request_body = VectorSearchDoc,
    responses((status = 200, body = NeighboursDoc),
        (status = 400, description = "A vector of another dimension or with a component that is not a finite number, k out of range, a bad condition", body = ErrorDoc),
        (status = 404, body = ErrorDoc), (status = 413, body = ErrorDoc)))]
pub async fn search(
    State(state): State<ApiState>,
    name: IdPath,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<NeighboursDoc>, ApiError> {
    let (Path(name), body) = (name.map_err(rejected)?, body.map_err(rejected)?);
    let doc: VectorSearchDoc = serde_json::from_slice(&body).map_err(|err| ApiError::bad_request(format!("not a vector search: {err}")))?;
    let k = match doc.k.unwrap_or(10) {
        k @ 1..=pluresdb_vectors::MAX_K => k,
        k => return Err(ApiError::bad_request(format!("k {k} is out of range: 1 to {}", pluresdb_vectors::MAX_K))),
    };
    let conditions =
        doc.conditions.into_iter().map(|c| pluresdb_core::query::Condition { field: c.field, op: c.op, value: c.value }).collect();
    let query = pluresdb_core::Query { prefix: doc.prefix, conditions, ..pluresdb_core::Query::default() }.check()?;
    let vector: Vec<f32> = doc.vector.iter().map(|&x| x as f32).collect();
    let handle = state.handle.clone();
    let found = tokio::task::spawn_blocking(move || handle.vector_search(&name, &vector, k, Some(&query)))
        .await
        .map_err(|err| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the search stopped: {err}")))??;
    let reader = state.handle.reader();
    let neighbours = found
        .iter()
        .map(|(node, distance)| Ok(NeighbourDoc { node: node_doc(reader, node)?, distance: *distance }))
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Json(NeighboursDoc { neighbours }))
}
