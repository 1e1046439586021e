//! Import: nodes from NDJSON, one `{"id": ..., "value": {...}}` per line.

use crate::docs::{ErrorDoc, ImportDoc, ImportErrorDoc, ImportRefusedDoc, ImportStoppedDoc};
use crate::error::{rejected, ApiError};
use crate::ApiState;
use axum::extract::rejection::{QueryRejection, StringRejection};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use utoipa::IntoParams;

/// One line of an NDJSON import or export.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: String,
    #[serde(deserialize_with = "read_value")]
    value: Value,
}

/// Reads a line's value as `serde_json::Value` does, except that an object
/// at the top is built from its entries at once rather than inserted key
/// by key into its sorted map (the same map: sorted, the last of equal
/// keys kept): ~12% of the line's parse, which was most of the import
/// route's CPU (5,000 lines of the two-process bench: 1.18 -> 1.03 us a line).
fn read_value<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
    deserializer.deserialize_any(TopValue)
}

struct TopValue;

impl<'de> Visitor<'de> for TopValue {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any valid JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Value::deserialize(deserializer)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Value, A::Error> {
        Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries: Vec<(String, Value)> = Vec::with_capacity(map.size_hint().unwrap_or(8).min(64));
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Value::Object(entries.into_iter().collect()))
    }
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

#[cfg(test)]
mod tests {
    use super::parse_line;
    use serde_json::{json, Value};

    /// The line's value reads as `serde_json::Value` reads it: key order,
    /// the last of repeated keys, nesting, numbers, and errors that name
    /// the same place.
    #[test]
    fn a_value_reads_as_serde_json_reads_it() {
        let values = [
            r##"{"b": 1, "a": [1, -2, 3.5, "x", null, true, {"z": 1, "y": 2}], "c": {"#": "n:2"}}"##,
            r#"{"a": 1, "a": 2, "b": {"k": 1, "k": 3}}"#,
            r#"{}"#,
            r#"{"e\u00e9": "\n", "big": 18446744073709551615, "neg": -9223372036854775808, "f": 2.15e-32}"#,
        ];
        for text in values {
            let expected: Value = serde_json::from_str(text).unwrap();
            let (id, value) = parse_line(&format!(r#"{{"id": "n:1", "value": {text}}}"#)).unwrap();
            assert_eq!((id.as_str(), &value), ("n:1", &expected), "{text}");
            assert_eq!(value.to_string(), expected.to_string(), "{text}");
        }
        assert_eq!(parse_line(r#"{"id": "n:1", "value": {"a": 1, "a": 2}}"#).unwrap().1, json!({"a": 2}));
        // As the plain derive read them (the route before it).
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Plain {
            id: String,
            value: Value,
        }
        for line in [
            r#"{"id": "n:1", "value": {"a": }}"#,
            r#"{"id": "n:1", "value": {"a": [1,]}}"#,
            r#"{"id": "n:1", "value": {"a": 1} "#,
            r#"{"id": "n:1", "value": {"a": 1}, "x": 2}"#,
            r#"{"id": "n:1", "value": {"a": 1}, "value": {}}"#,
            r#"{"id": "n:1"}"#,
            r#"{"id": "n:1", "value": {"a": "\q"}}"#,
        ] {
            let plain = serde_json::from_str::<Plain>(line).unwrap_err().to_string();
            assert_eq!(parse_line(line).unwrap_err(), plain, "{line}");
        }
        assert!(parse_line(r#"{"id": "n:1", "value": [1]}"#).unwrap_err().contains("an array"));
    }
}
