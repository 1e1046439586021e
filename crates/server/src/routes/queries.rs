//! Secondary indexes and queries: `/indexes`, `/query`.

use crate::docs::{ErrorDoc, NodeDoc};
use crate::error::{rejected, ApiError};
use crate::routes::nodes::{node_doc, IdPath};
use crate::ApiState;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pluresdb_core::{IndexDef, IndexKind, IndexSpec, IndexState};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

/// The longest `POST /indexes?wait=true` waits for a build.
pub const MAX_BUILD_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// A secondary index and how far its build is.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IndexDoc {
    /// Its name (unique on the node).
    pub name: String,
    /// The nodes it covers: ids that start with this.
    pub prefix: String,
    /// `field` (the value of a field) or `links` (back-links).
    #[serde(rename = "type")]
    pub kind: String,
    /// The field path of a field index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// `building` (queries do not use it yet) or `ready`.
    pub state: String,
    /// Nodes the build has read so far (while building).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indexed: Option<u64>,
    /// Nodes under the prefix when the build started (while building).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// The resolver whose view of each node it holds.
    pub resolver: String,
}

impl From<&IndexDef> for IndexDoc {
    fn from(def: &IndexDef) -> Self {
        let (kind, field) = match &def.kind {
            IndexKind::Field { field } => ("field", Some(field.clone())),
            IndexKind::Links => ("links", None),
        };
        let (state, indexed, total) = match &def.state {
            IndexState::Building { indexed, total, .. } => ("building", Some(*indexed), Some(*total)),
            IndexState::Ready => ("ready", None, None),
        };
        IndexDoc {
            name: def.name.clone(),
            prefix: def.prefix.clone(),
            kind: kind.into(),
            field,
            state: state.into(),
            indexed,
            total,
            resolver: def.resolver.clone(),
        }
    }
}

/// What to index.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IndexSpecDoc {
    /// A name; by default the prefix and the field (`user:age`) or the
    /// prefix and `#links`.
    #[serde(default)]
    pub name: Option<String>,
    /// Index nodes whose id starts with this (default: all).
    #[serde(default)]
    pub prefix: String,
    /// The field path (`age`, `address.city`; at most 8 names).
    #[serde(default)]
    pub field: Option<String>,
    /// A back-link index (who links to a node) instead of a field.
    #[serde(default)]
    pub links: bool,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CreateQuery {
    /// Answer once the build is done (at most 60 s; then 202 with the
    /// progress) instead of at once.
    #[serde(default)]
    wait: bool,
}

/// The indexes, with the progress of those being built.
#[utoipa::path(get, path = "/indexes", operation_id = "list_indexes", tag = "queries", responses((status = 200, body = Vec<IndexDoc>)))]
pub async fn list(State(state): State<ApiState>) -> Result<Json<Vec<IndexDoc>>, ApiError> {
    Ok(Json(state.handle.indexes()?.iter().map(IndexDoc::from).collect()))
}

/// One index.
#[utoipa::path(get, path = "/indexes/{name}", operation_id = "get_index", tag = "queries", params(("name" = String, Path, description = "Index name")),
    responses((status = 200, body = IndexDoc), (status = 404, body = ErrorDoc)))]
pub async fn get_index(State(state): State<ApiState>, name: IdPath) -> Result<Json<IndexDoc>, ApiError> {
    let Path(name) = name.map_err(rejected)?;
    let indexes = state.handle.indexes()?;
    let def = indexes.iter().find(|d| d.name == name).ok_or_else(|| ApiError::not_found(format!("no index named {name:?}")))?;
    Ok(Json(def.into()))
}

/// Creates an index and builds it over the stored nodes, a slice per
/// commit, while writes go on; every write keeps it from then on (in the
/// same transaction), local or replicated. Answers 202 at once (or, with
/// `wait`, 201 once built); `GET /indexes/{name}` shows the progress.
#[utoipa::path(post, path = "/indexes", operation_id = "create_index", tag = "queries", params(CreateQuery), request_body = IndexSpecDoc,
    responses((status = 201, description = "Created and built (with `wait`)", body = IndexDoc),
        (status = 202, description = "Created; the build goes on", body = IndexDoc),
        (status = 400, description = "A bad spec, an index of that name or over the same, or too many indexes", body = ErrorDoc),
        (status = 404, description = "The index was dropped while `wait` waited for its build", body = ErrorDoc),
        (status = 413, body = ErrorDoc)))]
pub async fn create(
    State(state): State<ApiState>,
    query: Result<Query<CreateQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (Query(q), body) = (query.map_err(rejected)?, body.map_err(rejected)?);
    let doc: IndexSpecDoc = serde_json::from_slice(&body).map_err(|err| ApiError::bad_request(format!("not an index spec: {err}")))?;
    let spec = IndexSpec { name: doc.name, prefix: doc.prefix, field: doc.field, links: doc.links };
    let def = state.handle.create_index(spec).await?;
    if !q.wait {
        return Ok((StatusCode::ACCEPTED, Json(IndexDoc::from(&def))).into_response());
    }
    let deadline = tokio::time::Instant::now() + MAX_BUILD_WAIT;
    loop {
        let now = state.handle.indexes()?.into_iter().find(|d| d.name == def.name);
        match now {
            Some(def) if def.is_ready() => return Ok((StatusCode::CREATED, Json(IndexDoc::from(&def))).into_response()),
            Some(def) if tokio::time::Instant::now() >= deadline => {
                return Ok((StatusCode::ACCEPTED, Json(IndexDoc::from(&def))).into_response())
            }
            Some(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            None => return Err(ApiError::not_found(format!("index {:?} was dropped while it was built", def.name))),
        }
    }
}

/// Drops an index and its entries.
#[utoipa::path(delete, path = "/indexes/{name}", operation_id = "drop_index", tag = "queries", params(("name" = String, Path, description = "Index name")),
    responses((status = 200, description = "The dropped index", body = IndexDoc), (status = 404, body = ErrorDoc)))]
pub async fn drop_index(State(state): State<ApiState>, name: IdPath) -> Result<Json<IndexDoc>, ApiError> {
    let Path(name) = name.map_err(rejected)?;
    let def = state.handle.drop_index(&name).await?;
    Ok(Json(IndexDoc::from(&def)))
}

/// A query (see `POST /query`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryDoc {
    /// Only nodes whose id starts with this.
    #[serde(default)]
    pub prefix: String,
    /// Conditions every selected node passes (all of them).
    #[serde(default, rename = "where")]
    pub conditions: Vec<ConditionDoc>,
    /// Order by an indexed field (a ready index on it must cover the prefix).
    #[serde(default)]
    pub sort: Option<SortDoc>,
    /// Page size, 1 to 10,000 (default 100).
    #[serde(default)]
    pub limit: Option<usize>,
    /// The `next` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Graph steps from the selected nodes, at most 8.
    #[serde(default)]
    pub steps: Vec<StepDoc>,
}

/// A condition on a field.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConditionDoc {
    /// A dot-separated field path (`age`, `address.city`, `friend.#`).
    pub field: String,
    /// `=`, `!=`, `<`, `<=`, `>`, `>=`, `between` ([low, high], both
    /// included), `prefix` (a string), `exists` (true or false), `in` (a
    /// list of at most 1,000). Order compares numbers with numbers and
    /// strings with strings; other pairs never pass. A missing field passes
    /// only `exists: false`.
    pub op: String,
    /// The operand.
    #[serde(default)]
    pub value: Value,
}

/// A sort order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SortDoc {
    /// The field (nodes without it are left out).
    pub field: String,
    /// Largest first.
    #[serde(default)]
    pub descending: bool,
}

/// A graph step: to the nodes each node links to (`out`) or that link to
/// it (`in`, back-links: a `links` index makes it fast).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StepDoc {
    /// `out` or `in`.
    pub direction: String,
    /// Only links in this (top-level) field.
    #[serde(default)]
    pub field: Option<String>,
    /// Only nodes reached whose id starts with this.
    #[serde(default)]
    pub prefix: String,
    /// Conditions the nodes reached pass.
    #[serde(default, rename = "where")]
    pub conditions: Vec<ConditionDoc>,
}

/// How a stage of a query read its candidates.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AccessDoc {
    /// `index`, `scan` or (an out step) `links`.
    pub method: String,
    /// The index used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    /// What was read.
    pub detail: String,
}

/// How the query ran (`explain`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PlanDoc {
    /// The selection.
    pub select: Option<AccessDoc>,
    /// Each graph step.
    pub steps: Vec<AccessDoc>,
}

/// A page of a query's answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QueryPageDoc {
    /// The nodes, as the resolver in effect presents them.
    pub nodes: Vec<NodeDoc>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next: Option<String>,
    /// Which index or scan each stage used.
    pub plan: PlanDoc,
}

fn access_doc(access: pluresdb_core::query::Access) -> AccessDoc {
    AccessDoc { method: access.method, index: access.index, detail: access.detail }
}

/// Finds nodes by their fields and links: conditions, a sort by an
/// indexed field, pages with a cursor, and graph steps (out links,
/// back-links) with conditions at each hop. Uses a ready index where one
/// applies and scans otherwise; `plan` says which. Every node answered is
/// checked against the conditions as the resolver presents it.
#[utoipa::path(post, path = "/query", operation_id = "query", tag = "queries", request_body = QueryDoc,
    responses((status = 200, body = QueryPageDoc),
        (status = 400, description = "What is wrong with the query: an unknown operator, an operand of the wrong type, a limit out of range, too many conditions, steps or values in a list, a query over 64 KiB, a sort without an index, a cursor from another query, a graph step that reaches over 100,000 nodes", body = ErrorDoc),
        (status = 413, body = ErrorDoc)))]
pub async fn query(State(state): State<ApiState>, body: Result<Bytes, BytesRejection>) -> Result<Json<QueryPageDoc>, ApiError> {
    let body = body.map_err(rejected)?;
    let query = pluresdb_core::Query::from_json(&body)?;
    let reader = state.handle.shared_reader();
    // A scan can take a while: off the async workers.
    let page = tokio::task::spawn_blocking(move || reader.query(&query).map(|page| (page, reader)))
        .await
        .map_err(|err| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the query stopped: {err}")))??;
    let (page, reader) = page;
    let nodes = page.nodes.iter().map(|n| node_doc(&reader, n)).collect::<Result<Vec<_>, _>>()?;
    let plan = PlanDoc { select: page.plan.select.map(access_doc), steps: page.plan.steps.into_iter().map(access_doc).collect() };
    Ok(Json(QueryPageDoc { nodes, next: page.next, plan }))
}
