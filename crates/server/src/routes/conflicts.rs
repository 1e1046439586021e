//! Conflicts: fields that concurrent writes left with several values, and
//! resolving one.

use super::nodes::{page_size, IdPath};
use crate::docs::{conflicts_doc, ConflictListDoc, ErrorDoc, NodeConflictsDoc, ReceiptDoc, ResolveRequest};
use crate::error::{parse_json, rejected, ApiError};
use crate::ApiState;
use axum::extract::rejection::{QueryRejection, StringRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use pluresdb_core::{KeepAll, Store};
use pluresdb_runtime::WriteKind;
use serde::Deserialize;
use utoipa::IntoParams;

/// Records read per scan while looking for conflicts.
const SCAN_CHUNK: usize = 1_000;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConflictQuery {
    /// Only ids that start with this.
    #[serde(default)]
    prefix: String,
    /// Start after this id (the `next_after` of the previous page).
    after: Option<String>,
    /// Nodes per page, 1 to 10,000 (default 100).
    #[param(minimum = 1, maximum = 10_000)]
    limit: Option<usize>,
}

/// Nodes whose fields hold concurrent values, whichever resolver the node
/// shows them with.
#[utoipa::path(get, path = "/conflicts", operation_id = "list_conflicts", tag = "conflicts", params(ConflictQuery),
    responses((status = 200, body = ConflictListDoc), (status = 400, body = ErrorDoc)))]
pub async fn list(
    State(state): State<ApiState>,
    query: Result<Query<ConflictQuery>, QueryRejection>,
) -> Result<Json<ConflictListDoc>, ApiError> {
    let Query(q) = query.map_err(rejected)?;
    let limit = page_size(q.limit)?;
    let store = state.handle.reader().store();
    let mut nodes = Vec::new();
    let mut cursor = q.after;
    'scan: loop {
        let records = store.scan_nodes(&q.prefix, cursor.as_deref(), SCAN_CHUNK)?;
        let Some(last) = records.last() else { break };
        cursor = Some(last.id.clone());
        for node in records.iter().filter_map(|r| r.view(&KeepAll)) {
            if !node.conflicts.is_empty() {
                nodes.push(NodeConflictsDoc { id: node.id.clone(), conflicts: conflicts_doc(&node.conflicts) });
                if nodes.len() == limit {
                    break 'scan;
                }
            }
        }
        if records.len() < SCAN_CHUNK {
            break;
        }
    }
    let next_after = if nodes.len() == limit { nodes.last().map(|n| n.id.clone()) } else { None };
    Ok(Json(ConflictListDoc { nodes, next_after }))
}

/// Resolves a conflict: writes the field's value from now on, superseding
/// every concurrent value this node holds for it.
#[utoipa::path(post, path = "/nodes/{id}/resolve", tag = "conflicts", params(("id" = String, Path, description = "Node id")),
    request_body = ResolveRequest,
    responses((status = 200, body = ReceiptDoc), (status = 400, body = ErrorDoc), (status = 404, body = ErrorDoc),
        (status = 409, description = "The field has no concurrent values", body = ErrorDoc), (status = 413, body = ErrorDoc),
        (status = 507, description = "The disk is full: nothing was written; the node takes writes again by itself once space is freed", body = ErrorDoc,
            headers(("Retry-After" = u64, description = "Seconds after which to retry"))),
        (status = 503, description = "The store cannot write after an I/O error (or is being reopened): the write is not acknowledged; the node recovers by itself", body = ErrorDoc,
            headers(("Retry-After" = u64, description = "Seconds after which to retry")))))]
pub async fn resolve(
    State(state): State<ApiState>,
    id: IdPath,
    body: Result<String, StringRejection>,
) -> Result<Json<ReceiptDoc>, ApiError> {
    let Path(id) = id.map_err(rejected)?;
    let request: ResolveRequest = parse_json(body, "{\"field\": ..., \"value\": ...}")?;
    let record = state.handle.reader().record(&id)?;
    let node = record.and_then(|r| r.view(&KeepAll)).ok_or_else(|| ApiError::not_found(format!("no node {id:?}")))?;
    if !node.conflicts.contains_key(&request.field) {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("{id}.{} has no concurrent values to resolve", request.field)));
    }
    let mut fields = serde_json::Map::new();
    fields.insert(request.field, request.value);
    let receipt = state.handle.write(WriteKind::Update, id.clone(), fields.into()).await?;
    Ok(Json(ReceiptDoc::new(&id, &receipt)))
}
