//! Generates the client from `clients/openapi.json` (the document a node
//! serves, kept fresh by tests/openapi_tools.rs) with progenitor.
//!
//! The node serves OpenAPI 3.1; progenitor reads only 3.0 (its parser,
//! `openapiv3`, knows no 3.1), so the document is first rewritten into the
//! 3.0 form of the same contract, by rules that hold for any document, not
//! by names of this one:
//!
//! - `"type": [T, "null"]` becomes `"type": T, "nullable": true`;
//! - a `oneOf` or `anyOf` of `{"type": "null"}` and one schema S becomes S,
//!   nullable (a reference S as `allOf: [S]`, since 3.0 ignores siblings
//!   of `$ref`);
//! - `propertyNames` (3.1's way to say a map's keys are strings, which 3.0's
//!   are anyway) and the license's SPDX `identifier` are dropped;
//! - a request body of a media type progenitor does not know (`POST
//!   /import`'s `application/x-ndjson`) whose schema is a string is sent as
//!   raw bytes, `application/octet-stream` with `format: binary`
//!   (progenitor's only raw body type; the node reads such a body whatever
//!   its type, except from a web page);
//! - an operation whose error answers (4xx, 5xx) have different JSON
//!   schemas (`POST /import`: a stopped import's document, or an error)
//!   gives each of them the union (`anyOf`) of those schemas: progenitor
//!   allows one error type per operation.
//!
//! Any other 3.1 construct is refused here, so a document that needs a new
//! rule fails the build rather than generating a wrong client.

use serde_json::{json, Map, Value};
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let source = manifest.join("..").join("openapi.json");
    println!("cargo:rerun-if-changed={}", source.display());
    let text = std::fs::read_to_string(&source).unwrap_or_else(|e| panic!("cannot read {}: {e}", source.display()));
    let document: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", source.display()));
    let downgraded = downgrade(document).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
    let spec: openapiv3::OpenAPI =
        serde_json::from_value(downgraded).unwrap_or_else(|e| panic!("progenitor's parser refuses the 3.0 form of the document: {e}"));
    let tokens =
        progenitor::Generator::default().generate_tokens(&spec).unwrap_or_else(|e| panic!("progenitor cannot generate a client: {e}"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("client.rs");
    std::fs::write(&out, tokens.to_string()).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}

/// The OpenAPI 3.0 form of a 3.1 document (the rules are in the module's
/// documentation).
fn downgrade(mut document: Value) -> Result<Value, String> {
    let version = document["openapi"].as_str().unwrap_or_default();
    if !version.starts_with("3.1.") {
        return Err(format!("an OpenAPI 3.1 document was expected, not {version:?}"));
    }
    document["openapi"] = json!("3.0.3");
    if let Some(license) = document.pointer_mut("/info/license").and_then(Value::as_object_mut) {
        license.remove("identifier");
    }
    if let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) {
        for operation in paths.values_mut().filter_map(Value::as_object_mut).flat_map(|item| item.values_mut()) {
            if let Some(content) = operation.pointer_mut("/requestBody/content").and_then(Value::as_object_mut) {
                raw_bodies_as_bytes(content);
            }
            if let Some(responses) = operation.get_mut("responses").and_then(Value::as_object_mut) {
                one_error_schema(responses);
            }
        }
    }
    walk(&mut document, "#")?;
    Ok(document)
}

/// Media types of request bodies progenitor knows.
const KNOWN_BODIES: &[&str] = &["application/json", "application/octet-stream", "application/x-www-form-urlencoded", "text/plain"];

/// A request body of another media type, a string, becomes bytes.
fn raw_bodies_as_bytes(content: &mut Map<String, Value>) {
    let unknown: Vec<String> = content
        .iter()
        .filter(|(media, body)| !KNOWN_BODIES.contains(&media.as_str()) && body["schema"]["type"] == "string")
        .map(|(media, _)| media.clone())
        .collect();
    for media in unknown {
        if let Some(mut body) = content.remove(&media) {
            body["schema"]["format"] = json!("binary");
            content.entry("application/octet-stream").or_insert(body);
        }
    }
}

/// Gives every error answer of an operation with JSON error answers of
/// several schemas the union of them.
fn one_error_schema(responses: &mut Map<String, Value>) {
    let is_error = |status: &str| status.starts_with('4') || status.starts_with('5');
    let mut schemas: Vec<Value> = Vec::new();
    for (status, response) in responses.iter() {
        if let Some(schema) = response.pointer("/content/application~1json/schema").filter(|_| is_error(status)) {
            if !schemas.contains(schema) {
                schemas.push(schema.clone());
            }
        }
    }
    if schemas.len() < 2 {
        return;
    }
    let union = json!({ "anyOf": schemas });
    for (status, response) in responses.iter_mut() {
        if let Some(schema) = response.pointer_mut("/content/application~1json/schema").filter(|_| is_error(status)) {
            *schema = union.clone();
        }
    }
}

/// Rewrites every schema under `value` (found anywhere: components,
/// parameters, bodies); `at` names where, for errors.
fn walk(value: &mut Value, at: &str) -> Result<(), String> {
    match value {
        Value::Object(map) => {
            rewrite_schema(map, at)?;
            for (key, child) in map.iter_mut() {
                walk(child, &format!("{at}/{key}"))?;
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                walk(child, &format!("{at}/{i}"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The rules for one object, when it is a schema.
fn rewrite_schema(map: &mut Map<String, Value>, at: &str) -> Result<(), String> {
    map.remove("propertyNames");
    if let Some(Value::Array(types)) = map.get("type") {
        let named: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
        let nullable = named.len() < types.len();
        match named.as_slice() {
            [one] => {
                map.insert("type".into(), one.clone());
                if nullable {
                    map.insert("nullable".into(), json!(true));
                }
            }
            _ => return Err(format!("{at}: type {types:?} has no OpenAPI 3.0 form")),
        }
    }
    for combinator in ["oneOf", "anyOf"] {
        let Some(Value::Array(options)) = map.get(combinator) else { continue };
        let is_null = |o: &Value| o.get("type") == Some(&json!("null")) && o.as_object().is_some_and(|o| o.len() == 1);
        if !options.iter().any(is_null) {
            continue;
        }
        let rest: Vec<Value> = options.iter().filter(|o| !is_null(o)).cloned().collect();
        let [schema] = rest.as_slice() else {
            return Err(format!("{at}: a {combinator} of null and several schemas has no OpenAPI 3.0 form"));
        };
        map.remove(combinator);
        match schema {
            Value::Object(s) if s.contains_key("$ref") => {
                map.insert("allOf".into(), json!([{"$ref": s["$ref"]}]));
            }
            Value::Object(s) => {
                for (key, v) in s {
                    map.entry(key.clone()).or_insert_with(|| v.clone());
                }
            }
            other => return Err(format!("{at}: {other} is not a schema")),
        }
        map.insert("nullable".into(), json!(true));
    }
    if map.get("type") == Some(&json!("null")) {
        return Err(format!("{at}: a null type on its own has no OpenAPI 3.0 form"));
    }
    Ok(())
}
