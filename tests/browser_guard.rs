//! What a web page can make the browser send to a node's loopback API, as
//! attacks: each test is one way a page (or a DNS-rebound name) would read
//! or write the node, against a real `pluresdb serve` process; and the
//! requests that must keep working (the node's own pages, origins in
//! `allowed_origins`, the CLI and curl, which send no `Origin`).

mod common;

use common::Node;
use serde_json::Value;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};

/// Every wait in these tests ends by this deadline.
const DEADLINE: Duration = Duration::from_secs(30);

const EVIL: &str = "http://evil.example";

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Opens `/changes{query}` with extra request headers. `Ok` with the
/// socket and the subprotocol the node chose, or `Err` with the status and
/// body of the refusal.
fn open_changes(
    rt: &tokio::runtime::Runtime,
    node: &Node,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<(Socket, Option<String>), (u16, Value)> {
    let mut request = format!("ws://{}/changes{query}", node.api).into_client_request().unwrap();
    for (name, value) in headers {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request.headers_mut().insert(name, HeaderValue::from_str(value).unwrap());
    }
    let connected = rt.block_on(async { tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(request)).await.unwrap() });
    match connected {
        Ok((socket, response)) => {
            let protocol = response.headers().get("sec-websocket-protocol").map(|p| p.to_str().unwrap().to_owned());
            Ok((socket, protocol))
        }
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().map(|b| serde_json::from_slice(b).unwrap_or(Value::Null)).unwrap_or(Value::Null);
            Err((response.status().as_u16(), body))
        }
        Err(other) => panic!("the WebSocket failed otherwise: {other}"),
    }
}

/// The first message of an open change feed.
fn first_message(rt: &tokio::runtime::Runtime, socket: &mut Socket) -> Value {
    use futures_util::StreamExt;
    rt.block_on(async {
        loop {
            match tokio::time::timeout(DEADLINE, socket.next()).await.expect("no message before the deadline") {
                Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
                Some(Ok(_)) => continue,
                other => panic!("the socket ended: {other:?}"),
            }
        }
    })
}

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_default()
}

/// A page on any site opens `ws://127.0.0.1:PORT/changes` (browsers apply
/// no CORS to WebSockets) to read the whole op log.
#[test]
fn a_foreign_page_cannot_read_the_change_feed_over_a_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let node = Node::start(dir.path());
    assert_eq!(node.request("PUT", "/nodes/secret:1", r#"{"pin":"1234"}"#).0, 200);

    let (status, body) = open_changes(&rt, &node, "?from=%7B%7D", &[("origin", EVIL)]).map(|_| ()).unwrap_err();
    assert_eq!(status, 403, "{body}");
    assert!(error_of(&body).contains("http://evil.example") && error_of(&body).contains("allowed_origins"), "{body}");
    // Browsers send `null` from sandboxed frames and files: foreign too.
    assert_eq!(open_changes(&rt, &node, "", &[("origin", "null")]).map(|_| ()).unwrap_err().0, 403);

    // The node's own page (its web UI) reads the feed.
    let own = format!("http://{}", node.api);
    let (mut socket, _) = open_changes(&rt, &node, "?from=%7B%7D", &[("origin", &own)]).unwrap();
    assert_eq!(first_message(&rt, &mut socket)["type"], "subscribed");
    assert!(node.stop().0);
}

/// A page POSTs NDJSON to /import as `text/plain`, which needs no
/// preflight, to write data that replicates to every peer.
#[test]
fn a_foreign_page_cannot_import_with_a_text_plain_post() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let host = format!("Host: {}", node.api);
    let line = "{\"id\":\"planted:1\",\"value\":{\"by\":\"page\"}}\n";

    let answer = node.exchange("POST", "/import", &[&host, "Origin: http://evil.example", "Content-Type: text/plain"], line);
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(answer.header("access-control-allow-origin").is_none(), "no CORS answer to a foreign page");
    // Even a page the node allows may not send a body any page could send
    // unasked: it is never taken as JSON.
    let own = format!("Origin: http://{}", node.api);
    for kind in ["text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
        let answer = node.exchange("POST", "/import", &[&host, &own, &format!("Content-Type: {kind}")], line);
        assert_eq!(answer.status, 415, "{kind}: {}", answer.body);
        assert!(error_of(&answer.json()).contains("application/json"), "{}", answer.body);
    }
    assert_eq!(node.exchange("POST", "/import", &[&host, &own], line).status, 415, "a body without a type");
    assert_eq!(node.exchange("PUT", "/nodes/planted:2", &[&host, &own, "Content-Type: text/plain"], "{}").status, 415);

    assert_eq!(node.request("GET", "/nodes/planted:1", "").0, 404, "nothing was written");
    assert_eq!(node.request("GET", "/nodes/planted:2", "").0, 404, "nothing was written");
    assert_eq!(node.request("GET", "/status", "").1["operations_held"], 0);
    assert!(node.stop().0);
}

/// A page POSTs to /peers (or resolves a conflict) to make the node dial an
/// address of its choosing or write a value.
#[test]
fn a_foreign_page_cannot_make_the_node_dial_or_write() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let host = format!("Host: {}", node.api);
    for (path, body) in [("/peers", r#"{"address":"127.0.0.1:9"}"#), ("/nodes/user:1/resolve", r#"{"field":"name","value":"x"}"#)] {
        for kind in ["text/plain", "application/json"] {
            let answer = node.exchange("POST", path, &[&host, "Origin: http://evil.example", &format!("Content-Type: {kind}")], body);
            assert_eq!(answer.status, 403, "POST {path} as {kind}: {}", answer.body);
        }
    }
    // A preflight from the foreign page is refused too: no CORS grant.
    let preflight = node.exchange("OPTIONS", "/peers", &[&host, "Origin: http://evil.example", "Access-Control-Request-Method: POST"], "");
    assert_eq!(preflight.status, 403);
    assert!(preflight.header("access-control-allow-origin").is_none());
    let discovered = node.request("GET", "/peers/discovered", "").1;
    assert!(!discovered.to_string().contains("127.0.0.1:9"), "the node never heard of the address: {discovered}");
    assert_eq!(node.request("GET", "/peers", "").1["peers"], serde_json::json!([]));
    assert!(node.stop().0);
}

/// DNS rebinding: a page's own name re-resolves to 127.0.0.1, so the page
/// is same-origin with the API; its requests carry `Host: evil.example`.
#[test]
fn a_rebound_name_is_not_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let node = Node::start(dir.path());
    let port = node.api.rsplit(':').next().unwrap().to_owned();
    for host in [format!("evil.example:{port}"), "evil.example".to_owned(), format!("127.0.0.1.evil.example:{port}")] {
        let answer = node.exchange("GET", "/nodes", &[&format!("Host: {host}")], "");
        assert_eq!(answer.status, 403, "Host {host}: {}", answer.body);
        assert!(error_of(&answer.json()).contains("api_hosts"), "{}", answer.body);
        // Same-origin after rebinding: the page sends its own origin.
        let write = node.exchange(
            "PUT",
            "/nodes/rebound:1",
            &[&format!("Host: {host}"), &format!("Origin: http://{host}"), "Content-Type: application/json"],
            "{}",
        );
        assert_eq!(write.status, 403, "{}", write.body);
    }
    let (status, _) = open_changes(&rt, &node, "", &[("host", &format!("evil.example:{port}"))]).map(|_| ()).unwrap_err();
    assert_eq!(status, 403);
    assert_eq!(node.request("GET", "/nodes/rebound:1", "").0, 404);

    // The node's own names, with its port.
    for host in [node.api.clone(), format!("localhost:{port}"), format!("[::1]:{port}")] {
        assert_eq!(node.exchange("GET", "/health", &[&format!("Host: {host}")], "").status, 200, "{host}");
    }
    assert!(node.stop().0);

    // A name the operator gives the node (a reverse proxy's) is its own.
    let node = Node::start_with_env(dir.path(), &["--api-host", "db.example.com"], &[("PLURESDB_API_HOSTS", "ignored.example")]);
    let port = node.api.rsplit(':').next().unwrap().to_owned();
    assert_eq!(node.exchange("GET", "/health", &["Host: db.example.com"], "").status, 200);
    let page = ["Host: db.example.com", "Origin: https://db.example.com", "Content-Type: application/json"];
    assert_eq!(node.exchange("PUT", "/nodes/proxied:1", &page, "{}").status, 200, "the proxied page is the node's own");
    assert_eq!(node.exchange("GET", "/health", &[&format!("Host: evil.example:{port}")], "").status, 403);
    assert_eq!(node.exchange("GET", "/health", &["Host: ignored.example"], "").status, 403, "the flag replaces the environment");
    assert!(node.stop().0);
}

/// A token in the URL ends up in logs and browser history: refused, with
/// where it goes instead; the header and the WebSocket subprotocol work.
#[test]
fn a_token_in_the_url_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let node = Node::start_with(dir.path(), &["--require-token"]);
    let token = std::fs::read_to_string(dir.path().join("api.token")).unwrap().trim().to_owned();
    let (status, body) = node.request("GET", &format!("/nodes?token={token}"), "");
    assert_eq!(status, 400, "{body}");
    assert!(error_of(&body).contains("Authorization: Bearer"), "{body}");
    assert_eq!(node.request("GET", &format!("/health?access_token={token}"), "").0, 400);
    let (status, body) = open_changes(&rt, &node, &format!("?token={token}"), &[]).map(|_| ()).unwrap_err();
    assert_eq!(status, 400, "{body}");
    assert!(error_of(&body).contains("bearer.<token>"), "{body}");

    let auth = format!("Authorization: Bearer {token}");
    assert_eq!(node.request_with("GET", "/nodes", "", &[&auth]).0, 200);
    // A browser's WebSocket cannot set headers: it offers the token as a
    // subprotocol, and the node answers with it (or the browser fails).
    let protocol = format!("bearer.{token}");
    let (mut socket, chosen) = open_changes(&rt, &node, "", &[("sec-websocket-protocol", &protocol)]).unwrap();
    assert_eq!(chosen.as_deref(), Some(protocol.as_str()));
    assert_eq!(first_message(&rt, &mut socket)["type"], "subscribed");
    assert_eq!(open_changes(&rt, &node, "", &[("sec-websocket-protocol", "bearer.wrong")]).map(|_| ()).unwrap_err().0, 401);
    assert_eq!(open_changes(&rt, &node, "", &[]).map(|_| ()).unwrap_err().0, 401);
    let (mut socket, _) = open_changes(&rt, &node, "", &[("authorization", &format!("Bearer {token}"))]).unwrap();
    assert_eq!(first_message(&rt, &mut socket)["type"], "subscribed");
    assert!(node.stop().0);
}

/// `allowed_origins` (flag, environment or config file) lets a named page
/// use the API, with CORS answers; other pages stay out.
#[test]
fn allowed_origins_lets_a_named_origin_in() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    std::fs::write(dir.path().join("pluresdb.toml"), "allowed_origins = [\"https://notes.example\"]\n").unwrap();
    let node = Node::start_with(dir.path(), &["--allowed-origin", "http://localhost:3000"]);
    let host = format!("Host: {}", node.api);
    let app = "Origin: http://localhost:3000";

    let preflight = node.exchange(
        "OPTIONS",
        "/nodes/app:1",
        &[&host, app, "Access-Control-Request-Method: PUT", "Access-Control-Request-Headers: content-type"],
        "",
    );
    assert_eq!(preflight.status, 204, "{}", preflight.body);
    assert_eq!(preflight.header("access-control-allow-origin"), Some("http://localhost:3000"));
    assert!(preflight.header("access-control-allow-methods").unwrap().contains("PUT"));
    assert!(preflight.header("access-control-allow-headers").unwrap().contains("content-type"));

    let put = node.exchange("PUT", "/nodes/app:1", &[&host, app, "Content-Type: application/json"], r#"{"by":"app"}"#);
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(put.header("access-control-allow-origin"), Some("http://localhost:3000"));
    let import = node.exchange("POST", "/import", &[&host, app, "Content-Type: application/x-ndjson"], "{\"id\":\"app:2\",\"value\":{}}\n");
    assert_eq!(import.status, 200, "{}", import.body);
    let (mut socket, _) = open_changes(&rt, &node, "", &[("origin", "http://localhost:3000")]).unwrap();
    assert_eq!(first_message(&rt, &mut socket)["type"], "subscribed");

    // The flag replaces the file's list (flags, then environment, then file).
    assert_eq!(node.exchange("GET", "/nodes", &[&host, "Origin: https://notes.example"], "").status, 403);
    for other in ["http://localhost:3001", "https://localhost:3000", EVIL] {
        assert_eq!(node.exchange("GET", "/nodes", &[&host, &format!("Origin: {other}")], "").status, 403, "{other}");
    }
    assert!(node.stop().0);

    // From the file alone, and from the environment.
    let node = Node::start(dir.path());
    assert_eq!(node.exchange("GET", "/nodes", &[&format!("Host: {}", node.api), "Origin: https://notes.example"], "").status, 200);
    assert!(node.stop().0);
    let node = Node::start_with_env(dir.path(), &[], &[("PLURESDB_ALLOWED_ORIGINS", "http://a.example:8000, http://b.example")]);
    let host = format!("Host: {}", node.api);
    assert_eq!(node.exchange("GET", "/nodes", &[&host, "Origin: http://b.example"], "").status, 200);
    assert_eq!(node.exchange("GET", "/nodes", &[&host, "Origin: http://a.example:8000"], "").status, 200);
    assert_eq!(node.exchange("GET", "/nodes", &[&host, "Origin: https://notes.example"], "").status, 403);
    assert!(node.stop().0);

    // A setting that is not an origin stops the node with a clear error.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pluresdb"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["serve", "--api-addr", "127.0.0.1:0", "--no-network", "--allowed-origin", "localhost:3000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an origin"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The CLI, curl and the README's examples send no `Origin`: they work as
/// before, whatever the body's type (curl's `-d` sends a form type).
#[test]
fn requests_without_an_origin_work_as_curl_sends_them() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let node = Node::start(dir.path());
    let port = node.api.rsplit(':').next().unwrap().to_owned();
    let curl = |method: &str, path: &str, body: &str| {
        let host = format!("Host: localhost:{port}");
        let headers: Vec<&str> = if body.is_empty() {
            vec![&host, "User-Agent: curl/8.5.0", "Accept: */*"]
        } else {
            vec![&host, "User-Agent: curl/8.5.0", "Accept: */*", "Content-Type: application/x-www-form-urlencoded"]
        };
        node.exchange(method, path, &headers, body)
    };
    assert_eq!(curl("PUT", "/nodes/user:123", r##"{"name":"Alice","friend":{"#":"user:456"}}"##).status, 200);
    assert_eq!(curl("GET", "/nodes/user:123", "").json()["value"]["name"], "Alice");
    assert_eq!(curl("GET", "/nodes?prefix=user:", "").json()["nodes"][0]["id"], "user:123");
    assert_eq!(curl("GET", "/nodes/user:123?follow=friend", "").status, 404, "dangling");
    assert_eq!(curl("POST", "/import", "{\"id\":\"user:456\",\"value\":{\"name\":\"Bob\"}}\n").json()["imported"], 1);
    assert_eq!(curl("GET", "/nodes/user:123?follow=friend", "").json()["value"]["name"], "Bob");
    assert_eq!(curl("GET", "/openapi.json", "").status, 200);
    assert_eq!(curl("GET", "/metrics", "").status, 200);
    assert_eq!(node.exchange("GET", "/health", &[], "").status, 200, "no Host at all (HTTP/1.0 style)");
    // The CLI goes through the running node.
    let out = common::cli(dir.path(), &["--json", "get", "user:123", "--follow", "friend"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (mut socket, _) = open_changes(&rt, &node, "?prefix=user:", &[]).unwrap();
    assert_eq!(first_message(&rt, &mut socket)["type"], "subscribed");
    assert!(node.stop().0);
}
