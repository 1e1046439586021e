//! The OpenAPI document (`GET /openapi.json`) against the node that serves
//! it: every documented operation is called on a real `pluresdb serve`
//! process, with good and bad input, and each answer's status must be one
//! the document lists for the operation and its body must validate against
//! that response's schema. The document must list every route the server
//! answers, and the sample table below must cover every operation the
//! document lists, so neither can drift without this test failing.

mod common;

use common::{concurrent_names, Node};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Every wait in these tests ends by this deadline.
const DEADLINE: Duration = Duration::from_secs(30);

/// The routes `pluresdb_server::router` serves, `METHOD /path`. The
/// document must list exactly these.
const ROUTES: &[&str] = &[
    "GET /health",
    "GET /metrics",
    "GET /openapi.json",
    "GET /nodes",
    "GET /nodes/{id}",
    "PUT /nodes/{id}",
    "PATCH /nodes/{id}",
    "DELETE /nodes/{id}",
    "GET /nodes/{id}/history",
    "POST /nodes/{id}/resolve",
    "GET /conflicts",
    "POST /import",
    "GET /changes",
    "GET /peers",
    "POST /peers",
    "DELETE /peers/{peer_id}",
    "GET /peers/discovered",
    "GET /status",
    "GET /status/rates",
    "GET /network",
    "GET /network/invite",
    "GET /trust",
    "PUT /trust/mode",
    "PUT /trust/peers/{peer_id}",
    "DELETE /trust/peers/{peer_id}",
    "GET /indexes",
    "POST /indexes",
    "GET /indexes/{name}",
    "DELETE /indexes/{name}",
    "POST /query",
    "GET /vectors",
    "POST /vectors",
    "DELETE /vectors/{name}",
    "POST /vectors/{name}/search",
];

/// The web UI's routes (`GET /` and `GET /ui/{*path}`): static assets,
/// not API operations, so not in the document.
const UI_ROUTES: &[&str] = &["/", "/ui/{path}"];

/// The methods probed on every documented path.
const METHODS: &[&str] = &["GET", "PUT", "POST", "PATCH", "DELETE"];

/// A body over the 2 MiB request limit.
fn huge_body() -> String {
    format!(r#"{{"blob":"{}"}}"#, "y".repeat(3 * 1024 * 1024))
}

/// An HTTP answer.
struct Answer {
    status: u16,
    /// The media type, without parameters (`text/plain`).
    content_type: Option<String>,
    body: String,
}

/// One HTTP/1.1 request to `api` (host:port) with the given content type.
fn exchange(api: &str, method: &str, path: &str, headers: &[String], content_type: &str, body: &[u8]) -> Answer {
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n{extra}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    Answer::exchange(api, &request, &format!("{method} {path}"))
}

impl Answer {
    /// The answer to `request`, the whole request as text.
    fn from_raw(api: &str, request: &str) -> Answer {
        Answer::exchange(api, request.as_bytes(), request.lines().next().unwrap_or_default())
    }

    fn exchange(api: &str, request: &[u8], what: &str) -> Answer {
        let mut stream = TcpStream::connect(api).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        // The server may answer (413) and close before reading a huge body; the
        // answer is still there to read.
        let _ = stream.write_all(request);
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{what}: no HTTP answer: {text:?}"));
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let content_type = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type").then(|| value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        });
        Answer { status, content_type, body: body.to_owned() }
    }
}

/// The OpenAPI document, and checks of answers against it.
struct Document(Value);

impl Document {
    /// The document of the node at `api`; `auth` is the token header, if any.
    fn fetch(api: &str, auth: Option<&str>) -> Document {
        let headers: Vec<String> = auth.into_iter().map(str::to_owned).collect();
        let answer = exchange(api, "GET", "/openapi.json", &headers, "application/json", b"");
        assert_eq!(answer.status, 200, "{}", answer.body);
        let doc: Value = serde_json::from_str(&answer.body).expect("the document is JSON");
        assert!(doc["openapi"].as_str().unwrap_or_default().starts_with("3.1"), "an OpenAPI 3.1 document");
        Document(doc)
    }

    /// Every operation, `METHOD /path`.
    fn operations(&self) -> BTreeSet<String> {
        let paths = self.0["paths"].as_object().expect("paths");
        paths
            .iter()
            .flat_map(|(path, item)| {
                let item = item.as_object().expect("a path item");
                METHODS.iter().filter(|m| item.contains_key(&m.to_ascii_lowercase())).map(move |m| format!("{m} {path}"))
            })
            .collect()
    }

    fn operation(&self, operation: &str) -> &Value {
        let (method, path) = operation.split_once(' ').unwrap();
        let op = &self.0["paths"][path][method.to_ascii_lowercase()];
        assert!(op.is_object(), "the document has no operation {operation}");
        op
    }

    /// A validator of `schema`, a schema of this document.
    fn validator(&self, schema: &Value) -> jsonschema::Validator {
        let mut root = schema.as_object().cloned().unwrap_or_else(|| panic!("a schema object: {schema}"));
        root.insert("components".into(), self.0["components"].clone());
        jsonschema::draft202012::new(&Value::Object(root)).unwrap_or_else(|e| panic!("a bad schema ({e}): {schema}"))
    }

    /// Checks `instance` against `schema`; the error names every violation.
    fn validate(&self, schema: &Value, instance: &Value) -> Result<(), String> {
        let validator = self.validator(schema);
        let errors: Vec<String> = validator.iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// `schema`, or the schema its `$ref` names.
    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match schema["$ref"].as_str().and_then(|r| r.strip_prefix('#')) {
            Some(pointer) => self.0.pointer(pointer).unwrap_or_else(|| panic!("{schema} refers to nothing")),
            None => schema,
        }
    }

    /// The schema of a component, by name.
    fn component(&self, name: &str) -> Value {
        json!({"$ref": format!("#/components/schemas/{name}")})
    }

    /// Checks that `answer` is one the document lists for `operation`:
    /// a documented status, a documented media type, and a body that
    /// validates against the schema of that media type.
    fn check(&self, operation: &str, request: &str, answer: &Answer) {
        let op = self.operation(operation);
        let Some(response) = op["responses"].get(answer.status.to_string()) else {
            let documented: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
            panic!("{request} ({operation}): status {} is not documented (only {documented:?}): {}", answer.status, answer.body);
        };
        let content = response["content"].as_object().cloned().unwrap_or_default();
        if content.is_empty() {
            assert!(answer.body.is_empty(), "{request}: status {} documents no body, got {:?}", answer.status, answer.body);
            return;
        }
        let media = answer.content_type.as_deref().unwrap_or_else(|| panic!("{request}: no content type"));
        let Some(media_doc) = content.get(media) else {
            panic!("{request}: content type {media} is not documented for {} (only {:?})", answer.status, content.keys());
        };
        match media {
            "application/json" => {
                let body: Value =
                    serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("{request}: not JSON ({e}): {}", answer.body));
                if let Some(schema) = media_doc.get("schema") {
                    if let Err(errors) = self.validate(schema, &body) {
                        panic!("{request}: the {} answer does not match its schema {schema}: {errors}\n{body}", answer.status);
                    }
                }
            }
            "text/plain" => check_prometheus_text(&answer.body).unwrap_or_else(|e| panic!("{request}: {e}\n{}", answer.body)),
            other => panic!("{request}: no check for documented content type {other}"),
        }
    }

    /// Checks that the request a sample makes is one the document allows:
    /// its query parameters are declared, and the body of a request that
    /// must succeed validates against the request body's schema.
    fn check_request(&self, case: &Case) {
        let op = self.operation(case.operation);
        let declared: BTreeSet<&str> =
            op["parameters"].as_array().into_iter().flatten().filter(|p| p["in"] == "query").filter_map(|p| p["name"].as_str()).collect();
        let query = case.path.split_once('?').map(|(_, q)| q).unwrap_or_default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            assert!(declared.contains(name), "{}: query parameter {name} is not declared (only {declared:?})", case.request());
            // A value outside the parameter's schema must be refused (400):
            // a schema stricter than the server would lie to clients.
            let param = op["parameters"].as_array().unwrap().iter().find(|p| p["in"] == "query" && p["name"] == name).unwrap();
            let schema = &param["schema"];
            let instance = match self.resolve(schema)["type"].as_str() {
                Some("integer") => value.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::from(value)),
                Some("boolean") => value.parse::<bool>().map(Value::from).unwrap_or_else(|_| Value::from(value)),
                _ => Value::from(value),
            };
            match self.validate(schema, &instance) {
                Ok(()) => {}
                Err(_) if case.status == 400 => {}
                Err(errors) => panic!(
                    "{}: {name}={value} is outside its documented schema {schema} ({errors}) but answers {}",
                    case.request(),
                    case.status
                ),
            }
        }
        let media = self.request_media_type(case.operation);
        if (200..300).contains(&case.status) && media == "application/json" && !case.body.is_empty() {
            let body: Value = serde_json::from_str(&case.body).unwrap();
            let schema = &op["requestBody"]["content"]["application/json"]["schema"];
            if let Err(errors) = self.validate(schema, &body) {
                panic!("{}: the sample body does not match the documented request body {schema}: {errors}", case.request());
            }
        }
    }

    /// The media type the operation's request body is documented with
    /// (`application/json` when it takes none).
    fn request_media_type(&self, operation: &str) -> String {
        let content = self.operation(operation)["requestBody"]["content"].as_object().cloned().unwrap_or_default();
        content.keys().next().cloned().unwrap_or_else(|| "application/json".into())
    }
}

/// Checks the Prometheus text format: `# HELP name text`, `# TYPE name
/// kind`, and samples `name{labels} value` of declared metrics.
fn check_prometheus_text(text: &str) -> Result<(), String> {
    let is_name = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut typed = BTreeSet::new();
    let mut samples = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            if !is_name(name) {
                return Err(format!("bad HELP line {line:?}"));
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            match rest.split(' ').collect::<Vec<_>>()[..] {
                [name, "counter" | "gauge" | "histogram" | "summary" | "untyped"] if is_name(name) => {
                    typed.insert(name.to_owned());
                }
                _ => return Err(format!("bad TYPE line {line:?}")),
            }
        } else {
            let (series, value) = line.rsplit_once(' ').ok_or_else(|| format!("bad sample {line:?}"))?;
            value.parse::<f64>().map_err(|_| format!("bad sample value in {line:?}"))?;
            let name = match series.split_once('{') {
                Some((name, labels)) if labels.ends_with('}') => name,
                Some(_) => return Err(format!("bad labels in {line:?}")),
                None => series,
            };
            if !is_name(name) || !typed.contains(name) {
                return Err(format!("sample of an undeclared or bad metric: {line:?}"));
            }
            samples += 1;
        }
    }
    if samples == 0 {
        return Err("no samples".into());
    }
    Ok(())
}

/// A sample request and the status it must get.
struct Case {
    /// The documented operation it calls, `METHOD /path`.
    operation: &'static str,
    /// The path with parameters filled in, and the query.
    path: String,
    body: String,
    /// Whether to send the API token.
    token: bool,
    status: u16,
}

impl Case {
    fn method(&self) -> &'static str {
        self.operation.split_once(' ').unwrap().0
    }

    fn request(&self) -> String {
        format!("{} {}", self.method(), self.path.chars().take(80).collect::<String>())
    }
}

fn case(operation: &'static str, path: impl Into<String>, body: impl Into<String>, status: u16) -> Case {
    Case { operation, path: path.into(), body: body.into(), token: true, status }
}

fn without_token(mut c: Case) -> Case {
    c.token = false;
    c
}

/// The sample requests, in the order they run: each operation with good
/// input first where it matters, then bad input. `peer` is a valid peer id
/// that is not connected; the data directory holds `user:1` whose `name`
/// has two concurrent values.
fn cases(peer: &str) -> Vec<Case> {
    let long_id = "x".repeat(600);
    let deep = ["f"; 17].join(".");
    let huge = huge_body();
    vec![
        case("GET /health", "/health", "", 200),
        case("GET /openapi.json", "/openapi.json", "", 200),
        case("PUT /nodes/{id}", "/nodes/user:2", r##"{"name":"Bob","friend":{"#":"user:3"}}"##, 200),
        case("PUT /nodes/{id}", "/nodes/x", "{bad", 400),
        case("PUT /nodes/{id}", "/nodes/x", "[1]", 400),
        case("PUT /nodes/{id}", format!("/nodes/{long_id}"), "{}", 400),
        case("PUT /nodes/{id}", "/nodes/big", huge.clone(), 413),
        case("PATCH /nodes/{id}", "/nodes/user:2", r#"{"age":3,"nick":null}"#, 200),
        case("PATCH /nodes/{id}", "/nodes/user:2", "{bad", 400),
        case("PATCH /nodes/{id}", "/nodes/big", huge.clone(), 413),
        case("GET /nodes/{id}", "/nodes/user:1", "", 200),
        case("GET /nodes/{id}", "/nodes/user:2", "", 200),
        case("GET /nodes/{id}", "/nodes/user:2?follow=friend", "", 404),
        case("GET /nodes/{id}", "/nodes/missing", "", 404),
        case("GET /nodes/{id}", format!("/nodes/user:2?follow={deep}"), "", 400),
        case("GET /nodes/{id}", format!("/nodes/{long_id}"), "", 400),
        case("GET /nodes", "/nodes", "", 200),
        case("GET /nodes", "/nodes?prefix=user:&limit=1", "", 200),
        case("GET /nodes", "/nodes?prefix=user:&after=user:1&limit=10", "", 200),
        case("GET /nodes", "/nodes?limit=10000", "", 200),
        case("GET /nodes", "/nodes?limit=0", "", 400),
        case("GET /nodes", "/nodes?limit=10001", "", 400),
        case("GET /nodes", "/nodes?limit=many", "", 400),
        case("GET /nodes/{id}/history", "/nodes/user:2/history", "", 200),
        case("GET /nodes/{id}/history", "/nodes/missing/history", "", 404),
        case("GET /nodes/{id}/history", format!("/nodes/{long_id}/history"), "", 400),
        case("GET /conflicts", "/conflicts", "", 200),
        case("GET /conflicts", "/conflicts?prefix=user:&limit=1", "", 200),
        case("GET /conflicts", "/conflicts?limit=10000", "", 200),
        case("GET /conflicts", "/conflicts?limit=0", "", 400),
        case("POST /nodes/{id}/resolve", "/nodes/user:1/resolve", r#"{"field":"age","value":2}"#, 409),
        case("POST /nodes/{id}/resolve", "/nodes/user:9/resolve", r#"{"field":"name","value":"x"}"#, 404),
        case("POST /nodes/{id}/resolve", "/nodes/user:1/resolve", r#"{"field":"name"}"#, 400),
        case("POST /nodes/{id}/resolve", "/nodes/user:1/resolve", "{bad", 400),
        case("POST /nodes/{id}/resolve", "/nodes/user:1/resolve", huge.clone(), 413),
        case("POST /nodes/{id}/resolve", "/nodes/user:1/resolve", r#"{"field":"name","value":"Ali"}"#, 200),
        case("POST /import", "/import", "{\"id\":\"imp:1\",\"value\":{\"a\":1}}\n\n{\"id\":\"imp:2\",\"value\":{}}\n", 200),
        case("POST /import", "/import?on_error=skip&first_line=10", "{\"id\":\"imp:3\",\"value\":{}}\nnot json\n", 200),
        case("POST /import", "/import?on_error=stop", "{\"id\":\"imp:4\",\"value\":{}}\n{\"id\":\"\",\"value\":{}}\n", 400),
        case("POST /import", "/import?on_error=sideways", "", 400),
        case("POST /import", "/import", huge.clone(), 413),
        case("GET /changes", "/changes", "", 400),
        case("GET /changes", "/changes?id=a&prefix=b", "", 400),
        case("GET /peers", "/peers", "", 200),
        case("POST /peers", "/peers", r#"{"address":"127.0.0.1:9"}"#, 503),
        case("POST /peers", "/peers", r#"{"addr":"x"}"#, 400),
        case("POST /peers", "/peers", r#"{"address":" "}"#, 400),
        case("POST /peers", "/peers", huge.clone(), 413),
        case("DELETE /peers/{peer_id}", format!("/peers/{peer}"), "", 404),
        case("DELETE /peers/{peer_id}", "/peers/not-a-peer", "", 400),
        case("GET /peers/discovered", "/peers/discovered", "", 200),
        case("GET /status", "/status", "", 200),
        case("GET /status/rates", "/status/rates", "", 200),
        case("GET /status/rates", "/status/rates?minutes=1", "", 200),
        case("GET /status/rates", "/status/rates?minutes=0", "", 400),
        case("GET /status/rates", "/status/rates?minutes=16", "", 400),
        case("GET /status/rates", "/status/rates?minutes=many", "", 400),
        case("GET /status/rates", "/status/rates?minutes=99999999999999999999999", "", 400),
        case("GET /network", "/network", "", 200),
        case("GET /network/invite", "/network/invite?addresses=127.0.0.1:34569", "", 200),
        case("GET /network/invite", "/network/invite", "", 200),
        case("GET /network/invite", "/network/invite?qr=svg", "", 200),
        case("GET /network/invite", "/network/invite?qr=png", "", 400),
        // 12 addresses of 200 characters: a ticket, but too long for a QR code.
        case("GET /network/invite", format!("/network/invite?qr=svg&addresses={}", vec!["a".repeat(200); 12].join(",")), "", 400),
        without_token(case("GET /network/invite", "/network/invite?qr=svg", "", 401)),
        case("GET /trust", "/trust", "", 200),
        case("PUT /trust/mode", "/trust/mode", r#"{"mode":"allowlist"}"#, 200),
        case("PUT /trust/mode", "/trust/mode", r#"{"mode":"sideways"}"#, 400),
        case("PUT /trust/mode", "/trust/mode", "{bad", 400),
        case("PUT /trust/mode", "/trust/mode", huge.clone(), 413),
        without_token(case("PUT /trust/mode", "/trust/mode", r#"{"mode":"open"}"#, 401)),
        case("PUT /trust/mode", "/trust/mode", r#"{"mode":"secret"}"#, 200),
        case("PUT /trust/peers/{peer_id}", format!("/trust/peers/{peer}"), "", 200),
        case("PUT /trust/peers/{peer_id}", "/trust/peers/not-a-peer", "", 400),
        without_token(case("PUT /trust/peers/{peer_id}", format!("/trust/peers/{peer}"), "", 401)),
        case("DELETE /trust/peers/{peer_id}", format!("/trust/peers/{peer}"), "", 200),
        case("DELETE /trust/peers/{peer_id}", format!("/trust/peers/{peer}"), "", 404),
        case("DELETE /trust/peers/{peer_id}", "/trust/peers/not-a-peer", "", 400),
        without_token(case("DELETE /trust/peers/{peer_id}", format!("/trust/peers/{peer}"), "", 401)),
        case("POST /indexes", "/indexes", r#"{"prefix":"user:","field":"age"}"#, 202),
        case("POST /indexes", "/indexes?wait=true", r#"{"links":true}"#, 201),
        case("POST /indexes", "/indexes", r#"{"prefix":"user:","field":"age"}"#, 400),
        case("POST /indexes", "/indexes", r#"{"prefix":"user:"}"#, 400),
        case("POST /indexes", "/indexes?wait=maybe", r#"{"field":"a"}"#, 400),
        case("POST /indexes", "/indexes", huge.clone(), 413),
        case("GET /indexes", "/indexes", "", 200),
        case("GET /indexes/{name}", "/indexes/user:age", "", 200),
        case("GET /indexes/{name}", "/indexes/missing", "", 404),
        case("POST /query", "/query", r#"{"prefix":"user:","where":[{"field":"age","op":">","value":1}],"limit":10}"#, 200),
        case("POST /query", "/query", r#"{"prefix":"user:","steps":[{"direction":"in"},{"direction":"out","field":"friend"}]}"#, 200),
        case("POST /query", "/query", r#"{"where":[{"field":"age","op":"~","value":1}]}"#, 400),
        case("POST /query", "/query", "{bad", 400),
        case("POST /query", "/query", huge.clone(), 413),
        case("PUT /nodes/{id}", "/nodes/vec:1", r#"{"e":[1.0,0.5]}"#, 200),
        case("POST /vectors", "/vectors", r#"{"prefix":"vec:","field":"e","dimension":2,"metric":"l2"}"#, 201),
        case("POST /vectors", "/vectors", r#"{"prefix":"vec:","field":"e","dimension":2}"#, 400),
        case("POST /vectors", "/vectors", r#"{"field":"e","dimension":0}"#, 400),
        case("POST /vectors", "/vectors", huge.clone(), 413),
        case("GET /vectors", "/vectors", "", 200),
        case("POST /vectors/{name}/search", "/vectors/vec:e/search", r#"{"vector":[1.0,0.4],"k":3,"prefix":"vec:"}"#, 200),
        case("POST /vectors/{name}/search", "/vectors/vec:e/search", r#"{"vector":[1.0]}"#, 400),
        case("POST /vectors/{name}/search", "/vectors/missing/search", r#"{"vector":[1.0]}"#, 404),
        case("POST /vectors/{name}/search", "/vectors/vec:e/search", huge.clone(), 413),
        case("DELETE /vectors/{name}", "/vectors/vec:e", "", 200),
        case("DELETE /vectors/{name}", "/vectors/vec:e", "", 404),
        case("DELETE /indexes/{name}", "/indexes/%23links", "", 200),
        case("DELETE /indexes/{name}", "/indexes/%23links", "", 404),
        case("GET /changes", "/changes?query=%7B%22sort%22%3A%7B%22field%22%3A%22a%22%7D%7D", "", 400),
        case("DELETE /nodes/{id}", "/nodes/user:2", "", 200),
        case("DELETE /nodes/{id}", "/nodes/missing", "", 404),
        case("DELETE /nodes/{id}", format!("/nodes/{long_id}"), "", 400),
        // Last, so it counts the answers above.
        case("GET /metrics", "/metrics", "", 200),
    ]
}

fn token_header(dir: &std::path::Path) -> String {
    let token = std::fs::read_to_string(dir.join("api.token")).unwrap();
    format!("Authorization: Bearer {}", token.trim())
}

/// Runs `c` against the node and checks the answer against the document.
fn run(node: &Node, doc: &Document, auth: &str, c: &Case) -> Answer {
    doc.check_request(c);
    let headers = if c.token { vec![auth.to_owned()] } else { Vec::new() };
    let media = doc.request_media_type(c.operation);
    let answer = exchange(&node.api, c.method(), &c.path, &headers, &media, c.body.as_bytes());
    assert_eq!(answer.status, c.status, "{}: {}", c.request(), answer.body);
    doc.check(c.operation, &c.request(), &answer);
    answer
}

#[test]
fn every_operation_answers_as_the_document_says() {
    let dir = tempfile::tempdir().unwrap();
    concurrent_names(dir.path());
    let node = Node::start_with(dir.path(), &["--no-network"]);
    let auth = token_header(dir.path());
    let doc = Document::fetch(&node.api, None);

    // The document lists exactly the routes the server has, once each.
    let documented = doc.operations();
    let routes: BTreeSet<String> = ROUTES.iter().map(|r| r.to_string()).collect();
    assert_eq!(documented, routes, "the document and the router disagree");
    let mut ids = BTreeMap::new();
    for operation in &documented {
        let id = doc.operation(operation)["operationId"].as_str().unwrap_or_else(|| panic!("{operation} has no operationId"));
        if let Some(other) = ids.insert(id.to_owned(), operation.clone()) {
            panic!("operationId {id:?} is used by {other} and {operation}");
        }
    }
    // No method but the documented ones is answered on a documented path,
    // and paths outside the document are not routes.
    for path in doc.0["paths"].as_object().unwrap().keys() {
        let concrete = path.replace("{id}", "probe").replace("{peer_id}", "probe");
        for method in METHODS.iter().filter(|m| !documented.contains(&format!("{m} {path}"))) {
            let answer = exchange(&node.api, method, &concrete, std::slice::from_ref(&auth), "application/json", b"{}");
            assert_eq!(answer.status, 405, "{method} {concrete} is answered but not documented: {}", answer.body);
        }
    }
    for path in ["/node", "/nodes/a/b", "/trust/peers", "/network/invites", "/ui/openapi.json"] {
        let answer = exchange(&node.api, "GET", path, std::slice::from_ref(&auth), "application/json", b"");
        assert_eq!(answer.status, 404, "GET {path} is answered but not documented: {}", answer.body);
    }
    // The only routes outside the document: the web UI's page and assets
    // (HTML, JS, CSS; not API operations; tests/web_ui.rs checks them).
    for path in UI_ROUTES {
        assert!(!doc.0["paths"].as_object().unwrap().contains_key(*path), "{path} is the web UI's, not an operation");
    }
    let page = exchange(&node.api, "GET", "/", std::slice::from_ref(&auth), "application/json", b"");
    assert_eq!((page.status, page.content_type.as_deref()), (200, Some("text/html")), "GET / is not the web UI");

    // Every documented operation has samples, and every sample calls a
    // documented operation.
    let health: Value = serde_json::from_str(&exchange(&node.api, "GET", "/health", &[], "application/json", b"").body).unwrap();
    let own_id = health["peer_id"].as_str().unwrap().to_owned();
    let cases = cases(&own_id);
    let covered: BTreeSet<String> = cases.iter().map(|c| c.operation.to_owned()).collect();
    assert_eq!(covered, documented, "the sample table and the document disagree");
    for c in &cases {
        assert!(documented.contains(c.operation), "{} calls an undocumented operation", c.request());
    }

    // Every sample answers as documented; answers carry data where it
    // matters (links, conflicts, import errors), so the schemas are
    // checked against more than empty lists.
    let mut bodies: BTreeMap<String, Value> = BTreeMap::new();
    for c in &cases {
        let answer = run(&node, &doc, &auth, c);
        if answer.content_type.as_deref() == Some("application/json") {
            bodies.insert(c.request(), serde_json::from_str(&answer.body).unwrap());
        }
    }
    assert_eq!(bodies["GET /nodes/user:2"]["links"], json!([{"field": "friend", "to": "user:3", "exists": false}]));
    assert_eq!(bodies["GET /conflicts"]["nodes"][0]["conflicts"]["name"].as_array().map(Vec::len), Some(2));
    assert_eq!(bodies["POST /import?on_error=skip&first_line=10"]["errors"][0]["line"], 11);
    assert_eq!(bodies["POST /import?on_error=stop"]["imported"], 1);

    check_change_feed(&node, &doc);
    let (clean, stderr) = node.stop();
    assert!(clean, "{stderr}");
}

/// `GET /changes` with a WebSocket upgrade: the documented 101, then
/// messages that validate against the `ChangeMessage` schema.
fn check_change_feed(node: &Node, doc: &Document) {
    let schema = doc.component("ChangeMessage");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let url = format!("ws://{}/changes?prefix=feed:", node.api);
        let (mut socket, response) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url)).await.unwrap().unwrap();
        let status = response.status().as_u16().to_string();
        assert!(doc.operation("GET /changes")["responses"].get(&status).is_some(), "status {status} is not documented");
        let subscribed = next_message(&mut socket).await;
        assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
        doc.validate(&schema, &subscribed).unwrap_or_else(|e| panic!("{e}: {subscribed}"));
        for (method, body) in [("PUT", r##"{"n":1,"to":{"#":"feed:2"}}"##), ("DELETE", "")] {
            assert_eq!(exchange(&node.api, method, "/nodes/feed:1", &[], "application/json", body.as_bytes()).status, 200);
            let change = next_message(&mut socket).await;
            assert_eq!(change["type"], "change", "{change}");
            doc.validate(&schema, &change).unwrap_or_else(|e| panic!("{e}: {change}"));
        }
    });
}

/// The next JSON message of a change feed.
async fn next_message<S>(socket: &mut S) -> Value
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(DEADLINE, socket.next()).await.expect("no message before the deadline") {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("the socket ended early: {other:?}"),
        }
    }
}

#[test]
fn with_a_required_token_every_route_but_health_answers_401_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(dir.path(), &["--no-network", "--require-token"]);
    let doc = Document::fetch(&node.api, Some(&token_header(dir.path())));
    let mut first: BTreeMap<&str, Case> = BTreeMap::new();
    for c in cases("12D3KooWCuz1qxU21drH9ZfsouXG6AQrPBb3MuVBoPbWCnsVNVe4") {
        first.entry(c.operation).or_insert(c);
    }
    for (operation, mut c) in first {
        c.token = false;
        c.status = if operation == "GET /health" { 200 } else { 401 };
        run(&node, &doc, "", &c);
    }
    let (clean, stderr) = node.stop();
    assert!(clean, "{stderr}");
}

/// The checks in front of every route answer as documented: a foreign
/// `Origin` or `Host` 403, a token in the URL 400, and a page's body of a
/// type any page may send unasked 415.
#[test]
fn browser_refusals_answer_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(dir.path(), &["--no-network"]);
    let doc = Document::fetch(&node.api, None);
    let mut first: BTreeMap<&str, Case> = BTreeMap::new();
    for c in cases("12D3KooWCuz1qxU21drH9ZfsouXG6AQrPBb3MuVBoPbWCnsVNVe4") {
        first.entry(c.operation).or_insert(c);
    }
    let own_origin = format!("Origin: http://{}", node.api);
    for (operation, c) in &first {
        let method = c.method();
        let media = doc.request_media_type(operation);
        let foreign = exchange(&node.api, method, &c.path, &["Origin: http://evil.example".into()], &media, c.body.as_bytes());
        assert_eq!(foreign.status, 403, "{operation} from a foreign page: {}", foreign.body);
        doc.check(operation, &format!("{} (foreign origin)", c.request()), &foreign);

        let separator = if c.path.contains('?') { '&' } else { '?' };
        let in_url = format!("{}{separator}token=abc", c.path);
        let answer = exchange(&node.api, method, &in_url, &[], &media, c.body.as_bytes());
        assert_eq!(answer.status, 400, "{operation} with a token in the URL: {}", answer.body);
        doc.check(operation, &format!("{} (token in the URL)", c.request()), &answer);

        if method != "GET" {
            let answer = exchange(&node.api, method, &c.path, std::slice::from_ref(&own_origin), "text/plain", b"{}");
            assert_eq!(answer.status, 415, "{operation} from a page as text/plain: {}", answer.body);
            doc.check(operation, &format!("{} (text/plain from a page)", c.request()), &answer);
        }
    }
    // DNS rebinding: a name that is not the node's.
    let rebound = Answer::from_raw(&node.api, "GET /health HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n");
    assert_eq!(rebound.status, 403);
    doc.check("GET /health", "GET /health (Host: evil.example)", &rebound);
    let (clean, stderr) = node.stop();
    assert!(clean, "{stderr}");
}

/// Peers over the QUIC transport: connecting, listing and disconnecting
/// answer as documented, and so does an address that cannot be reached.
#[test]
fn peer_connections_answer_as_documented() {
    let root = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (root.path().join("a"), root.path().join("b"));
    let a = Node::start(&a_dir);
    let a_auth = token_header(&a_dir);
    let doc = Document::fetch(&a.api, None);
    let invite = run(&a, &doc, &a_auth, &case("GET /network/invite", "/network/invite", "", 200));
    let ticket: Value = serde_json::from_str(&invite.body).unwrap();
    let b = Node::start_with(&b_dir, &["--join", ticket["ticket"].as_str().unwrap()]);
    let b_auth = token_header(&b_dir);

    let network: Value = serde_json::from_str(&run(&a, &doc, &a_auth, &case("GET /network", "/network", "", 200)).body).unwrap();
    let address = network["listen_addresses"][0].as_str().expect("a listens for peers").to_owned();
    let connected = run(&b, &doc, &b_auth, &case("POST /peers", "/peers", json!({"address": address}).to_string(), 200));
    let a_id = serde_json::from_str::<Value>(&connected.body).unwrap()["peer_id"].as_str().unwrap().to_owned();
    assert_eq!(a_id, network["peer_id"]);
    // The answer to the connect can come before the peer list shows the
    // connection; wait for it (every answer checked against the document).
    let listed = wait_for(|| {
        let peers: Value = serde_json::from_str(&run(&b, &doc, &b_auth, &case("GET /peers", "/peers", "", 200)).body).unwrap();
        peers["peers"].as_array().unwrap().iter().any(|p| p["peer_id"] == a_id && p["connected"] == true)
    });
    assert!(listed, "b never listed a as connected");
    run(&b, &doc, &b_auth, &case("GET /status", "/status", "", 200));
    let discovered = run(&b, &doc, &b_auth, &case("GET /peers/discovered", "/peers/discovered", "", 200));
    let discovered: Value = serde_json::from_str(&discovered.body).unwrap();
    assert_eq!(discovered["discovering"], true, "{discovered}");
    run(&b, &doc, &b_auth, &case("DELETE /peers/{peer_id}", format!("/peers/{a_id}"), "", 200));
    run(&b, &doc, &b_auth, &case("POST /peers", "/peers", r#"{"address":"no port"}"#, 400));

    for node in [a, b] {
        let (clean, stderr) = node.stop();
        assert!(clean, "{stderr}");
    }
}

/// Polls `condition` until it holds or the deadline passes; whether it held.
fn wait_for(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + DEADLINE;
    while std::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn prometheus_text_is_checked() {
    assert!(check_prometheus_text("# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 2\na_total 3\n").is_ok());
    assert!(check_prometheus_text("# TYPE a gauge\nb 1\n").is_err(), "undeclared metric");
    assert!(check_prometheus_text("# TYPE a gauge\na one\n").is_err(), "bad value");
    assert!(check_prometheus_text("{\"error\":\"x\"}").is_err());
}
