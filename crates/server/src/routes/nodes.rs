//! Nodes: read, write, list, follow links, history.

use crate::docs::{ErrorDoc, HealthDoc, NodeDoc, NodeListDoc, OperationDoc, ReceiptDoc, StoreDoc};
use crate::error::{rejected, ApiError};
use crate::ApiState;
use axum::extract::rejection::{PathRejection, QueryRejection, StringRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use pluresdb_core::{Node, Reader, Traversal};
use pluresdb_runtime::WriteKind;
use pluresdb_store_redb::RedbStore as ReaderStore;
use serde::Deserialize;
use serde_json::Value;
use utoipa::IntoParams;

/// The most links one `follow` may cross.
pub const MAX_FOLLOW_HOPS: usize = 16;

/// The default and the largest page of `/nodes` and `/conflicts`.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 10_000;

pub(crate) type IdPath = Result<Path<String>, PathRejection>;
type Body = Result<String, StringRejection>;

/// The document of `node`, with whether each link target exists.
pub fn node_doc(reader: &Reader<ReaderStore>, node: &Node) -> Result<NodeDoc, ApiError> {
    Ok(NodeDoc::new(node, |to| reader.get(to).map(|n| n.is_some()))?)
}

/// Whether the node answers, and who it is.
/// It answers while the store cannot write (`status` is then `degraded`).
#[utoipa::path(get, path = "/health", tag = "meta", responses((status = 200, body = HealthDoc)))]
pub async fn health(State(state): State<ApiState>) -> Result<Json<HealthDoc>, ApiError> {
    let store = state.handle.stats().store_status();
    // A store being reopened cannot be read for a moment: the writer's
    // count then (it keeps the version vector in memory).
    let operations = match state.handle.reader().version_vector() {
        Ok(version_vector) => version_vector.total(),
        Err(_) => state.handle.sync_status().await?.operations_held,
    };
    let status = if store.degraded { "degraded" } else { "ok" };
    Ok(Json(HealthDoc { status: status.into(), peer_id: state.handle.peer_id().to_owned(), operations, store: StoreDoc::new(&store) }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only ids that start with this.
    #[serde(default)]
    prefix: String,
    /// Start after this id (the `next_after` of the previous page).
    after: Option<String>,
    /// Page size, 1 to 10,000 (default 100).
    #[param(minimum = 1, maximum = 10_000)]
    limit: Option<usize>,
}

pub(crate) fn page_size(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        n @ 1..=MAX_PAGE => Ok(n),
        n => Err(ApiError::bad_request(format!("limit {n} is out of range: 1 to {MAX_PAGE}"))),
    }
}

/// Lists existing nodes in id order, a page at a time.
#[utoipa::path(get, path = "/nodes", operation_id = "list_nodes", tag = "nodes", params(ListQuery),
    responses((status = 200, body = NodeListDoc), (status = 400, body = ErrorDoc)))]
pub async fn list(State(state): State<ApiState>, query: Result<Query<ListQuery>, QueryRejection>) -> Result<Json<NodeListDoc>, ApiError> {
    let Query(q) = query.map_err(rejected)?;
    let limit = page_size(q.limit)?;
    let reader = state.handle.reader();
    let nodes = reader.list(&q.prefix, q.after.as_deref(), limit)?;
    let next_after = if nodes.len() == limit { nodes.last().map(|n| n.id.clone()) } else { None };
    let nodes = nodes.iter().map(|n| node_doc(reader, n)).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(NodeListDoc { nodes, next_after }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GetQuery {
    /// Follow links: field names separated by dots (`friend.employer`), at
    /// most 16 hops; answers the node reached.
    follow: Option<String>,
}

/// A node, or the node reached by following links from it.
#[utoipa::path(get, path = "/nodes/{id}", tag = "nodes", params(("id" = String, Path, description = "Node id"), GetQuery),
    responses((status = 200, body = NodeDoc), (status = 400, body = ErrorDoc),
        (status = 404, description = "No such node, or a followed field is not a link or dangles", body = ErrorDoc)))]
pub async fn get_node(
    State(state): State<ApiState>,
    id: IdPath,
    query: Result<Query<GetQuery>, QueryRejection>,
) -> Result<Json<NodeDoc>, ApiError> {
    let (Path(id), Query(q)) = (id.map_err(rejected)?, query.map_err(rejected)?);
    let path: Vec<&str> = q.follow.as_deref().map(|f| f.split('.').filter(|s| !s.is_empty()).collect()).unwrap_or_default();
    if path.len() > MAX_FOLLOW_HOPS {
        return Err(ApiError::bad_request(format!("follow crosses {} links; the limit is {MAX_FOLLOW_HOPS}", path.len())));
    }
    let reader = state.handle.reader();
    match reader.follow(&id, &path)? {
        Traversal::Reached(node) => Ok(Json(node_doc(reader, &node)?)),
        Traversal::NotALink { from, field, .. } => {
            Err(ApiError::not_found(format!("{}.{field} is not a link (a link is {{\"#\": \"other:id\"}})", from.id)))
        }
        Traversal::Dangling { from, field, target, .. } => {
            Err(ApiError::not_found(format!("{}.{field} links to {target:?}, which does not exist (a dangling link)", from.id)))
        }
    }
}

/// The request body as JSON, with a clear error when it is not.
pub(crate) fn parse_body(id: &str, body: &str) -> Result<Value, ApiError> {
    serde_json::from_str(body).map_err(|err| ApiError::bad_request(format!("the body for {id:?} is not valid JSON: {err}")))
}

async fn write(state: &ApiState, kind: WriteKind, id: String, value: Value) -> Result<Json<ReceiptDoc>, ApiError> {
    let receipt = state.handle.write(kind, id.clone(), value).await?;
    Ok(Json(ReceiptDoc::new(&id, &receipt)))
}

/// Creates a node or replaces its whole value.
#[utoipa::path(put, path = "/nodes/{id}", tag = "nodes", params(("id" = String, Path, description = "Node id (1 to 512 bytes)")),
    request_body(content = Object, description = "The value: a JSON object of at most 1 MiB"),
    responses((status = 200, body = ReceiptDoc), (status = 400, body = ErrorDoc), (status = 413, body = ErrorDoc),
        (status = 507, description = "The disk is full: nothing was written; the node takes writes again by itself once space is freed", body = ErrorDoc,
            headers(("Retry-After" = u64, description = "Seconds after which to retry"))),
        (status = 503, description = "The store cannot write after an I/O error (or is being reopened): the write is not acknowledged; the node recovers by itself", body = ErrorDoc,
            headers(("Retry-After" = u64, description = "Seconds after which to retry")))))]
pub async fn put_node(State(state): State<ApiState>, id: IdPath, body: Body) -> Result<Json<ReceiptDoc>, ApiError> {
    let (Path(id), body) = (id.map_err(rejected)?, body.map_err(rejected)?);
    let value = parse_body(&id, &body)?;
    write(&state, WriteKind::Put, id, value).await
}

/// Sets some fields of a node (creating it if needed); a field set to `null` is removed.
#[utoipa::path(patch, path = "/nodes/{id}", tag = "nodes", params(("id" = String, Path, description = "Node id")),
    request_body(content = Object, description = "The fields to set"),
    responses((status = 200, body = ReceiptDoc), (status = 400, body = ErrorDoc), (status = 413, body = ErrorDoc),
        (status = 507, description = "The disk is full: nothing was written; the node takes writes again by itself once space is freed", body = ErrorDoc,
            headers(("Retry-After" = u64, description = "Seconds after which to retry"))),
        (status = 503, description = "The store cannot write after an I/O error (or is being reopened): the write is not acknowledged; the node recovers by itself", body = ErrorDoc,
            headers(("Retry-After" = u64, description = "Seconds after which to retry")))))]
pub async fn patch_node(State(state): State<ApiState>, id: IdPath, body: Body) -> Result<Json<ReceiptDoc>, ApiError> {
    let (Path(id), body) = (id.map_err(rejected)?, body.map_err(rejected)?);
    let value = parse_body(&id, &body)?;
    write(&state, WriteKind::Update, id, value).await
}

/// Deletes a node (a newer write brings it back).
#[utoipa::path(delete, path = "/nodes/{id}", tag = "nodes", params(("id" = String, Path, description = "Node id")),
    responses((status = 200, body = ReceiptDoc), (status = 400, body = ErrorDoc), (status = 404, body = ErrorDoc),
        (status = 507, description = "The disk is full: nothing was written; the node takes writes again by itself once space is freed", body = ErrorDoc,
            headers(("Retry-After" = u64, description = "Seconds after which to retry"))),
        (status = 503, description = "The store cannot write after an I/O error (or is being reopened): the write is not acknowledged; the node recovers by itself", body = ErrorDoc,
            headers(("Retry-After" = u64, description = "Seconds after which to retry")))))]
pub async fn delete_node(State(state): State<ApiState>, id: IdPath) -> Result<Json<ReceiptDoc>, ApiError> {
    let Path(id) = id.map_err(rejected)?;
    write(&state, WriteKind::Delete, id, Value::Null).await
}

/// The operations that produced a node's current value, oldest first.
#[utoipa::path(get, path = "/nodes/{id}/history", tag = "nodes", params(("id" = String, Path, description = "Node id")),
    responses((status = 200, body = Vec<OperationDoc>), (status = 400, body = ErrorDoc), (status = 404, body = ErrorDoc)))]
pub async fn history(State(state): State<ApiState>, id: IdPath) -> Result<Json<Vec<OperationDoc>>, ApiError> {
    let Path(id) = id.map_err(rejected)?;
    let ops = state.handle.reader().history(&id)?;
    Ok(Json(ops.iter().map(OperationDoc::from).collect()))
}
