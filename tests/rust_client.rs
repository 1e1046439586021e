//! The Rust client that progenitor generates from the node's OpenAPI
//! document (`clients/rust`, `pluresdb-client`) calls a real `pluresdb
//! serve` that requires its token: writes, reads, links, pages, history,
//! an NDJSON import, conflicts, trust, status and metrics answer as the
//! generated types say, and errors arrive as the document's error types
//! with their status.

mod common;

use common::{concurrent_names, Node};
use pluresdb_client::{types, Client, Error};
use serde_json::{json, Map, Value};

fn object(value: Value) -> Map<String, Value> {
    value.as_object().cloned().expect("an object")
}

/// The status and message of an error answer the document describes.
fn refused<T: std::fmt::Debug>(result: Result<T, Error<types::ErrorDoc>>) -> (u16, String) {
    match result {
        Err(Error::ErrorResponse(answer)) => (answer.status().as_u16(), answer.into_inner().error),
        other => panic!("expected an error answer, got {other:?}"),
    }
}

#[test]
fn the_generated_rust_client_calls_a_node_that_requires_its_token() {
    let dir = tempfile::tempdir().unwrap();
    concurrent_names(dir.path());
    let node = Node::start_with(dir.path(), &["--no-network", "--require-token"]);
    let token = std::fs::read_to_string(dir.path().join("api.token")).unwrap();
    let base = format!("http://{}", node.api);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(calls(&base, &token))));
    let (clean, stderr) = node.stop();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    assert!(clean, "{stderr}");
}

async fn calls(base: &str, token: &str) {
    let node = Client::with_token(base, token).unwrap();

    let health = node.health().await.unwrap().into_inner();
    assert_eq!(health.status, "ok");
    assert!(health.peer_id.starts_with("12D3KooW"), "{}", health.peer_id);

    // Writes answer with receipts; a link is followed.
    let put = node.put_node("user:2", &object(json!({"name": "Bob", "friend": {"#": "user:3"}}))).await.unwrap();
    assert_eq!(put.status().as_u16(), 200);
    let receipt = put.into_inner();
    assert_eq!(receipt.id, "user:2");
    assert!(receipt.op.starts_with(&health.peer_id), "{}", receipt.op);
    node.put_node("user:3", &object(json!({"name": "Carol"}))).await.unwrap();
    node.patch_node("user:2", &object(json!({"age": 3}))).await.unwrap();
    let bob = node.get_node("user:2", None).await.unwrap().into_inner();
    assert_eq!(bob.value["age"], 3);
    assert_eq!(bob.links.len(), 1);
    assert!(bob.links[0].exists && bob.links[0].to == "user:3" && bob.links[0].field == "friend");
    let carol = node.get_node("user:2", Some("friend")).await.unwrap().into_inner();
    assert_eq!(carol.value["name"], "Carol");

    // Pages: limit and next_after, as typed parameters.
    let limit = std::num::NonZeroU64::new(1);
    let first = node.list_nodes(None, limit, Some("user:")).await.unwrap().into_inner();
    assert_eq!(first.nodes.len(), 1);
    let after = first.next_after.expect("more pages");
    let second = node.list_nodes(Some(&after), limit, Some("user:")).await.unwrap().into_inner();
    assert!(second.nodes[0].id > after, "{} after {after}", second.nodes[0].id);

    let history = node.history("user:2").await.unwrap().into_inner();
    let kinds: Vec<&str> = history.iter().map(|op| op.type_.as_str()).collect();
    assert_eq!(kinds, ["create", "update"]);

    // NDJSON import, with a bad line skipped and named.
    let ndjson = "{\"id\":\"imp:1\",\"value\":{\"n\":1}}\nnot json\n";
    let import = node.import(Some(10), Some(types::OnError::Skip), ndjson.to_owned()).await.unwrap().into_inner();
    assert_eq!((import.imported, import.skipped), (1, 1));
    assert_eq!(import.errors[0].line, 11);
    // A stopped import answers its own document (400).
    let stopped = node.import(None, Some(types::OnError::Stop), "nope\n".to_owned()).await;
    match stopped {
        Err(Error::ErrorResponse(answer)) => {
            assert_eq!(answer.status().as_u16(), 400);
            let body = serde_json::to_value(answer.into_inner()).unwrap();
            assert_eq!(body["line"], 1, "{body}");
        }
        other => panic!("expected a 400, got {other:?}"),
    }

    // Conflicts written before the node started, then resolved.
    let conflicts = node.list_conflicts(None, None, None).await.unwrap().into_inner();
    assert_eq!(conflicts.nodes[0].id, "user:1");
    assert_eq!(conflicts.nodes[0].conflicts["name"].len(), 2);
    let resolve = types::ResolveRequest { field: "name".into(), value: json!("Alice") };
    node.resolve("user:1", &resolve).await.unwrap();
    assert!(node.list_conflicts(None, None, None).await.unwrap().into_inner().nodes.is_empty());

    // Trust and status.
    let peer = "12D3KooWCuz1qxU21drH9ZfsouXG6AQrPBb3MuVBoPbWCnsVNVe4";
    let allowed = node.trust_add(peer).await.unwrap().into_inner();
    assert!(allowed.allowed && allowed.changed);
    assert_eq!(node.trust().await.unwrap().into_inner().allowlist, [peer]);
    let status = node.status().await.unwrap().into_inner();
    assert_eq!(status.peer_id, health.peer_id);
    assert!(status.operations_held >= 6, "{}", status.operations_held);

    // The document and the metrics.
    let document = node.openapi_json().await.unwrap().into_inner();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    let metrics = node.metrics().await.unwrap().into_inner();
    let mut text = Vec::new();
    let mut stream = metrics.into_inner();
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        text.extend_from_slice(&chunk.unwrap());
    }
    assert!(String::from_utf8_lossy(&text).contains("# TYPE pluresdb_"));

    // Errors are the document's error type, with their status.
    let (status, message) = refused(node.get_node("missing", None).await);
    assert_eq!(status, 404, "{message}");
    assert!(message.contains("missing"), "{message}");
    let (status, message) = refused(node.trust_add("not-a-peer").await);
    assert_eq!(status, 400, "{message}");
    let (status, _) = refused(node.delete_node(&"x".repeat(600)).await);
    assert_eq!(status, 400);
    let (status, _) = refused(Client::new(base).status().await);
    assert_eq!(status, 401, "without the token");
    let (status, _) = refused(Client::with_token(base, "wrong").unwrap().status().await);
    assert_eq!(status, 401, "with a wrong token");

    node.delete_node("user:2").await.unwrap();
    let (status, _) = refused(node.get_node("user:2", None).await);
    assert_eq!(status, 404);
}
