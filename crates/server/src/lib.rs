//! PluresDB's HTTP API, served by `pluresdb serve`.
//!
//! Nodes over REST, JSON in and out:
//!
//! | route | does |
//! |---|---|
//! | `GET /health` | `{"status": "ok", "peer_id": ...}` |
//! | `GET /nodes?prefix=&after=&limit=` | lists nodes in id order (`next_after` pages on) |
//! | `GET /nodes/{id}?follow=a.b` | a node, or the node reached by following links |
//! | `PUT /nodes/{id}` | creates or replaces a node (body: a JSON object) |
//! | `PATCH /nodes/{id}` | sets fields; `null` removes one |
//! | `DELETE /nodes/{id}` | deletes a node |
//! | `GET /nodes/{id}/history` | the operations that produced the node's value |
//!
//! Errors are `{"error": "..."}` with 400 (bad input), 404 (no such node or
//! route), 413 (body over 2 MiB) or 500 (storage). The rest of the API
//! (WebSocket change feed, peers, sync status, metrics, OpenAPI, tokens for
//! non-loopback binding) comes with the API issue.

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use pluresdb_core::{error_chain, Database, Error as CoreError, Node, OperationType, Receipt, Traversal};
use pluresdb_store_redb::RedbStore;
use serde::Deserialize;
use serde_json::{json, Value};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::Mutex;

/// The largest request body accepted (a node value is at most 1 MiB of JSON).
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// The default address of the API: loopback only.
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:34570";

/// The replica the API serves. One writer at a time; commits are durable
/// before a request is answered. (A commit holds the lock through its
/// fsync; group commit across requests comes with the API issue.)
pub type SharedReplica = Arc<Mutex<Database<RedbStore>>>;

/// The router with every route, for a replica.
pub fn router(replica: SharedReplica) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/nodes", get(list))
        .route("/nodes/{id}", get(get_node).put(put_node).patch(patch_node).delete(delete_node))
        .route("/nodes/{id}/history", get(history))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such route".into()) })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(replica)
}

/// Serves the API on `listener` until `shutdown` completes, then finishes
/// the requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    replica: SharedReplica,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(replica)).with_graceful_shutdown(shutdown).await
}

/// Whether `addr` may be served without an API token: loopback only.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// An error answer: status and message.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<CoreError> for ApiError {
    fn from(err: CoreError) -> Self {
        let status = match &err {
            CoreError::NotFound { .. } => StatusCode::NOT_FOUND,
            e if e.is_invalid_input() => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %error_chain(&err), "request failed");
        }
        ApiError(status, error_chain(&err))
    }
}

/// Turns axum's extractor rejections (body too large, bad query or path)
/// into JSON errors with the same status.
fn rejected(rejection: impl IntoResponse + std::fmt::Display) -> ApiError {
    let text = rejection.to_string();
    ApiError(rejection.into_response().status(), text)
}

type Body = Result<String, axum::extract::rejection::StringRejection>;
type IdPath = Result<Path<String>, axum::extract::rejection::PathRejection>;

/// The request body as JSON, with a clear error when it is not.
fn parse_body(id: &str, body: &str) -> Result<Value, ApiError> {
    serde_json::from_str(body).map_err(|err| ApiError(StatusCode::BAD_REQUEST, format!("the body for {id:?} is not valid JSON: {err}")))
}

/// Milliseconds since the Unix epoch: the wall time that stamps local
/// writes (the core reads no clock itself).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A node as the API and the CLI show it: id, value, update time, links
/// (with whether each target exists) and conflicts, if any.
pub fn node_json(db: &Database<RedbStore>, node: &Node) -> Result<Value, CoreError> {
    let mut links = Vec::new();
    for (field, to) in node.links() {
        links.push(json!({"field": field, "to": to, "exists": db.get(to)?.is_some()}));
    }
    let mut out = json!({"id": node.id, "value": node.value, "updated_at": node.updated_at.to_string(), "links": links});
    if !node.conflicts.is_empty() {
        out["conflicts"] = serde_json::to_value(&node.conflicts).unwrap_or(Value::Null);
    }
    Ok(out)
}

fn receipt_json(id: &str, receipt: &Receipt) -> Json<Value> {
    Json(json!({"id": id, "op": receipt.id.to_string(), "timestamp": receipt.timestamp.to_string()}))
}

async fn health(State(replica): State<SharedReplica>) -> Json<Value> {
    let db = replica.lock().await;
    Json(json!({"status": "ok", "peer_id": db.peer_id(), "operations": db.version_vector().total()}))
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
}

async fn list(
    State(replica): State<SharedReplica>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(rejected)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let db = replica.lock().await;
    let nodes = db.list(&q.prefix, q.after.as_deref(), limit)?;
    let next = if nodes.len() == limit { nodes.last().map(|n| n.id.clone()) } else { None };
    let docs = nodes.iter().map(|n| node_json(&db, n)).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({"nodes": docs, "next_after": next})))
}

#[derive(Deserialize)]
struct GetQuery {
    /// Fields to follow, separated by dots.
    follow: Option<String>,
}

async fn get_node(
    State(replica): State<SharedReplica>,
    id: IdPath,
    query: Result<Query<GetQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let (Path(id), Query(q)) = (id.map_err(rejected)?, query.map_err(rejected)?);
    let path: Vec<&str> = q.follow.as_deref().map(|f| f.split('.').filter(|s| !s.is_empty()).collect()).unwrap_or_default();
    let db = replica.lock().await;
    match db.follow(&id, &path)? {
        Traversal::Reached(node) => Ok(Json(node_json(&db, &node)?)),
        Traversal::NotALink { from, field, .. } => Err(ApiError(StatusCode::NOT_FOUND, format!("{}.{field} is not a link", from.id))),
        Traversal::Dangling { from, field, target, .. } => {
            Err(ApiError(StatusCode::NOT_FOUND, format!("{}.{field} links to {target:?}, which does not exist", from.id)))
        }
    }
}

async fn write(replica: &SharedReplica, kind: OperationType, id: &str, body: &str) -> Result<Json<Value>, ApiError> {
    let value = if kind == OperationType::DeleteNode { Value::Null } else { parse_body(id, body)? };
    let mut db = replica.lock().await;
    let receipt = match kind {
        OperationType::CreateNode => db.put(id, value, now_ms())?,
        OperationType::UpdateNode => db.update(id, value, now_ms())?,
        OperationType::DeleteNode => db.delete(id, now_ms())?,
    };
    Ok(receipt_json(id, &receipt))
}

async fn put_node(State(replica): State<SharedReplica>, id: IdPath, body: Body) -> Result<Json<Value>, ApiError> {
    let (Path(id), body) = (id.map_err(rejected)?, body.map_err(rejected)?);
    write(&replica, OperationType::CreateNode, &id, &body).await
}

async fn patch_node(State(replica): State<SharedReplica>, id: IdPath, body: Body) -> Result<Json<Value>, ApiError> {
    let (Path(id), body) = (id.map_err(rejected)?, body.map_err(rejected)?);
    write(&replica, OperationType::UpdateNode, &id, &body).await
}

async fn delete_node(State(replica): State<SharedReplica>, id: IdPath) -> Result<Json<Value>, ApiError> {
    let Path(id) = id.map_err(rejected)?;
    write(&replica, OperationType::DeleteNode, &id, "").await
}

async fn history(State(replica): State<SharedReplica>, id: IdPath) -> Result<Json<Value>, ApiError> {
    let Path(id) = id.map_err(rejected)?;
    let db = replica.lock().await;
    let ops = db.history(&id)?;
    Ok(Json(serde_json::to_value(&ops).map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?))
}
