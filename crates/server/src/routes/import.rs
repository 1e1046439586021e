//! Import: nodes from NDJSON, one `{"id": ..., "value": {...}}` per line.

use crate::docs::{ErrorDoc, ImportDoc, ImportErrorDoc, ImportRefusedDoc, ImportStoppedDoc};
use crate::error::{rejected, ApiError};
use crate::ApiState;
use axum::extract::rejection::{QueryRejection, StringRejection};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use utoipa::IntoParams;

/// One line of an NDJSON import or export.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: String,
    value: Value,
}

/// The length of the shortest valid line, `{"id":"x","value":{}}`.
const SHORTEST_LINE: usize = 21;

/// What to do with a bad line.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Import the lines before it and stop (400).
    #[default]
    Stop,
    /// Report it and go on.
    Skip,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// `stop` (default) or `skip`.
    #[serde(default)]
    on_error: OnError,
    /// The number of the body's first line in the whole file (default 1),
    /// so errors name the right line when a client sends a file in parts.
    first_line: Option<u64>,
}

/// Parses and checks one line of an NDJSON import: `{"id": ..., "value":
/// {...}}` with a valid node id and value. Returns the id and the value.
pub fn parse_line(text: &str) -> Result<(String, Value), String> {
    let line: Line = serde_json::from_str(text).map_err(|err| err.to_string())?;
    pluresdb_core::validate_node_id(&line.id).map_err(|e| e.to_string())?;
    pluresdb_core::validate_value(&line.value).map_err(|e| e.to_string())?;
    Ok((line.id, line.value))
}

/// Creates or replaces the nodes of an NDJSON body in one durable
/// transaction. Blank lines are ignored.
#[utoipa::path(post, path = "/import", tag = "nodes", params(ImportQuery),
    request_body(content = String, content_type = "application/x-ndjson", description = "One {\"id\": ..., \"value\": {...}} per line (at most 2 MiB per request)"),
    responses((status = 200, body = ImportDoc),
        (status = 400, description = "A bad line with on_error=stop (the lines before it are imported), or a bad query", body = ImportRefusedDoc),
        (status = 413, body = ErrorDoc),
        (status = 507, description = "The disk is full: nothing was written; the node takes writes again by itself once space is freed", body = ErrorDoc,
            headers(("Retry-After" = u64, description = "Seconds after which to retry"))),
        (status = 503, description = "The store cannot write after an I/O error (or is being reopened): the write is not acknowledged; the node recovers by itself", body = ErrorDoc,
            headers(("Retry-After" = u64, description = "Seconds after which to retry")))))]
pub async fn import(
    State(state): State<ApiState>,
    query: Result<Query<ImportQuery>, QueryRejection>,
    body: Result<String, StringRejection>,
) -> Result<Response, ApiError> {
    let (Query(q), body) = (query.map_err(rejected)?, body.map_err(rejected)?);
    let first = q.first_line.unwrap_or(1);
    // An entry a line, sized once (growing it copied the nodes parsed so
    // far), for at most as many lines as the shortest valid line fits in the
    // body (a body of blank lines reserves no more than one of nodes would).
    let lines = body.bytes().filter(|&b| b == b'\n').count() + 1;
    let mut nodes = Vec::with_capacity(lines.min(body.len() / SHORTEST_LINE + 1));
    let mut errors = Vec::new();
    let mut stopped = None;
    for (index, text) in body.lines().enumerate() {
        if text.trim().is_empty() {
            continue;
        }
        let line = first + index as u64;
        match parse_line(text) {
            Ok(node) => nodes.push(node),
            Err(error) if q.on_error == OnError::Skip => errors.push(ImportErrorDoc { line, error }),
            Err(error) => {
                stopped = Some((line, error));
                break;
            }
        }
    }
    // The text is parsed: not kept while the nodes are committed.
    drop(body);
    let imported = if nodes.is_empty() { 0 } else { state.handle.import(nodes).await? as u64 };
    if let Some((line, error)) = stopped {
        let doc = ImportStoppedDoc { error: format!("line {line}: {error}"), line, imported };
        return Ok((StatusCode::BAD_REQUEST, Json(doc)).into_response());
    }
    Ok(Json(ImportDoc { imported, skipped: errors.len() as u64, errors }).into_response())
}
