//! Real `pluresdb serve` processes replicating over QUIC on loopback: three
//! nodes converge, a stopped node catches up, a killed node resumes, and a
//! node outside the network is refused.

mod common;

use common::{cli, held, invite, version, wait_until, Node};
use serde_json::json;
use std::path::Path;

/// A ticket to `node`'s network, naming its QUIC address.
fn ticket(dir: &Path, node: &Node) -> String {
    invite(dir, &node.listen.clone().expect("the node listens for peers"))
}

#[test]
fn three_nodes_converge_on_writes_made_everywhere() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = Node::start(dirs[0].path());
    let t = ticket(dirs[0].path(), &a);
    let b = Node::start_with(dirs[1].path(), &["--join", &t]);
    let c = Node::start_with(dirs[2].path(), &["--join", &t]);
    for (i, node) in [&a, &b, &c].into_iter().enumerate() {
        for n in 0..20 {
            assert_eq!(node.request("PUT", &format!("/nodes/n:{i}:{n}"), &json!({"by": i, "n": n}).to_string()).0, 200);
        }
    }
    // B and C know only A: A relays between them.
    wait_until("all three hold 60 operations", || [&a, &b, &c].iter().all(|n| held(n) == 60));
    assert_eq!(version(&a), version(&b));
    assert_eq!(version(&b), version(&c));
    assert_eq!(c.request("GET", "/nodes/n:1:19", "").1["value"], json!({"by": 1, "n": 19}));
    let peers = a.request("GET", "/peers", "").1;
    assert_eq!(peers["peers"].as_array().unwrap().iter().filter(|p| p["connected"] == true).count(), 2, "{peers}");
    for node in [c, b, a] {
        assert!(node.stop().0);
    }
}

/// B and C joined through A only; A tells each about the other (peer
/// exchange), they connect directly, and keep syncing once A is gone.
#[test]
fn nodes_that_know_one_node_learn_the_others_from_it() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = Node::start(dirs[0].path());
    let t = ticket(dirs[0].path(), &a);
    let b = Node::start_with(dirs[1].path(), &["--join", &t]);
    let c = Node::start_with(dirs[2].path(), &["--join", &t]);
    let id = |node: &Node| node.request("GET", "/network", "").1["peer_id"].as_str().unwrap().to_owned();
    let (a_id, b_id, c_id) = (id(&a), id(&b), id(&c));
    let connected_to = |node: &Node, peer: &str| {
        node.request("GET", "/peers", "").1["peers"].as_array().unwrap().iter().any(|p| p["peer_id"] == peer && p["connected"] == true)
    };
    wait_until("B and C connect to each other", || connected_to(&b, &c_id) && connected_to(&c, &b_id));
    // C, the later one, asked A for its peers and dialled B.
    let found = c.request("GET", "/peers/discovered", "").1;
    let b_entry = found["peers"].as_array().unwrap().iter().find(|p| p["peer_id"] == b_id).cloned();
    let b_entry = b_entry.unwrap_or_else(|| panic!("C lists B as discovered: {found}"));
    assert!(b_entry["methods"].as_array().unwrap().contains(&json!("exchange")), "{b_entry}");
    assert_eq!(b_entry["via"], a_id, "{b_entry}");
    assert_eq!(b_entry["same_network"], true);
    assert_eq!(b_entry["connected"], true);

    // Without A, B and C still replicate over their own link.
    assert!(a.stop().0);
    assert_eq!(b.request("PUT", "/nodes/after-a", r#"{"from":"b"}"#).0, 200);
    wait_until("C holds B's write", || c.request("GET", "/nodes/after-a", "").0 == 200);
    for node in [c, b] {
        assert!(node.stop().0);
    }
}

#[test]
fn a_stopped_node_catches_up_when_it_comes_back() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::start(da.path());
    let t = ticket(da.path(), &a);
    let b = Node::start_with(db.path(), &["--join", &t]);
    assert_eq!(b.request("PUT", "/nodes/before", "{}").0, 200);
    wait_until("A holds B's write", || a.request("GET", "/nodes/before", "").0 == 200);
    assert!(b.stop().0);

    // Both sides write while B is down (B's CLI opens its directory).
    for n in 0..50 {
        assert_eq!(a.request("PUT", &format!("/nodes/a:{n}"), "{}").0, 200);
    }
    let offline = cli(db.path(), &["put", "b:offline", r#"{"written":"offline"}"#]);
    assert!(offline.status.success(), "{}", String::from_utf8_lossy(&offline.stderr));

    // B comes back without --join: it redials the node it knew.
    let b = Node::start(db.path());
    wait_until("both hold 52 operations", || held(&a) == 52 && held(&b) == 52);
    assert_eq!(version(&a), version(&b));
    assert_eq!(a.request("GET", "/nodes/b:offline", "").1["value"]["written"], "offline");
    assert!(b.stop().0);
    assert!(a.stop().0);
}

#[test]
fn a_node_killed_during_a_large_sync_resumes_and_loses_nothing() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::start(da.path());
    let total = 20_000u64;
    let lines: String =
        (0..total).map(|i| format!("{}\n", json!({"id": format!("bulk:{i:06}"), "value": {"i": i, "pad": "x".repeat(64)}}))).collect();
    for chunk in lines.lines().collect::<Vec<_>>().chunks(5_000) {
        let body = chunk.join("\n");
        assert_eq!(a.request("POST", "/import", &body).0, 200);
    }
    let t = ticket(da.path(), &a);
    let mut b = Node::start_with(db.path(), &["--join", &t]);
    wait_until("B has applied part of the sync", || held(&b) > 0);
    let partial = held(&b);
    b.child.kill().unwrap();
    b.child.wait().unwrap();

    let b = Node::start(db.path());
    assert!(held(&b) >= partial, "what B acknowledged survives the kill");
    wait_until("B holds everything", || held(&b) == total);
    assert_eq!(version(&a), version(&b));
    assert_eq!(b.request("GET", "/nodes/bulk:019999", "").1["value"]["i"], total - 1);
    assert!(b.stop().0);
    assert!(a.stop().0);
}

#[test]
fn a_node_without_the_network_secret_is_refused() {
    let (da, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::start(da.path());
    let stranger = Node::start(dc.path());
    let address = a.listen.clone().unwrap();
    let (status, body) = stranger.request("POST", "/peers", &json!({"address": address}).to_string());
    assert_eq!(status, 502, "{body}");
    assert!(body["error"].as_str().unwrap().contains("secret"), "{body}");
    assert_eq!(stranger.request("PUT", "/nodes/secret:1", "{}").0, 200);
    assert_eq!(a.request("GET", "/peers", "").1["peers"], json!([]), "A never synced with it");
    assert_eq!(a.request("GET", "/nodes/secret:1", "").0, 404);

    // Allowlisting each other (while both run) lets them sync after all.
    let id = |node: &Node| node.request("GET", "/health", "").1["peer_id"].as_str().unwrap().to_owned();
    for (dir, other) in [(da.path(), id(&stranger)), (dc.path(), id(&a))] {
        let out = cli(dir, &["trust", "add", &other]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let (status, body) = stranger.request("POST", "/peers", &json!({"address": address}).to_string());
    assert_eq!(status, 200, "{body}");
    wait_until("A holds the allowlisted node's write", || a.request("GET", "/nodes/secret:1", "").0 == 200);
    assert!(stranger.stop().0);
    assert!(a.stop().0);
}

/// An index created on A answers queries over nodes written on B: B's
/// writes from before the index (built over what A holds) and after it
/// (kept as A applies B's operations, in the same transaction), B's
/// updates and deletes included; back-links and vector search too.
#[test]
fn an_index_on_one_node_answers_queries_over_data_written_on_the_other() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::start(da.path());
    let t = ticket(da.path(), &a);
    let b = Node::start_with(db.path(), &["--join", &t]);
    for i in 0..30 {
        let value = json!({"age": i, "boss": {"#": "user:boss"}});
        assert_eq!(b.request("PUT", &format!("/nodes/user:{i:02}"), &value.to_string()).0, 200);
    }
    wait_until("A holds B's 30 writes", || held(&a) == 30);
    let (status, index) = a.request("POST", "/indexes?wait=true", r#"{"prefix":"user:","field":"age"}"#);
    assert_eq!((status, index["state"].as_str()), (201, Some("ready")), "{index}");
    assert_eq!(a.request("POST", "/indexes?wait=true", r#"{"links":true}"#).0, 201);
    // After the index: more of B's writes, an update and a delete.
    for i in 30..40 {
        assert_eq!(b.request("PUT", &format!("/nodes/user:{i:02}"), &json!({"age": i}).to_string()).0, 200);
    }
    assert_eq!(b.request("PATCH", "/nodes/user:05", r#"{"age":35}"#).0, 200);
    assert_eq!(b.request("DELETE", "/nodes/user:36", "").0, 200);
    wait_until("A holds B's 42 writes", || held(&a) == 42);
    let query = r#"{"prefix":"user:","where":[{"field":"age","op":">=","value":34}],"sort":{"field":"age"}}"#;
    let (status, page) = a.request("POST", "/query", query);
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["plan"]["select"]["index"], "user:age", "{page}");
    let ids: Vec<&str> = page["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["user:34", "user:05", "user:35", "user:37", "user:38", "user:39"]);
    // Who has user:boss as boss: B's first 30 nodes (user:05 kept its link).
    let back = r#"{"where":[],"prefix":"user:boss","steps":[{"direction":"in","field":"boss"}],"limit":100}"#;
    assert_eq!(b.request("PUT", "/nodes/user:boss", "{}").0, 200);
    wait_until("A holds user:boss", || a.request("GET", "/nodes/user:boss", "").0 == 200);
    let (status, page) = a.request("POST", "/query", back);
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["plan"]["steps"][0]["index"], "#links", "{page}");
    assert_eq!(page["nodes"].as_array().unwrap().len(), 30, "{page}");
    // A vector index on A finds vectors written on B, and follows B's update.
    assert_eq!(a.request("POST", "/vectors", r#"{"prefix":"v:","field":"e","dimension":2}"#).0, 201);
    assert_eq!(b.request("PUT", "/nodes/v:1", r#"{"e":[1.0,0.0]}"#).0, 200);
    assert_eq!(b.request("PUT", "/nodes/v:2", r#"{"e":[0.0,1.0]}"#).0, 200);
    let nearest =
        |node: &Node| node.request("POST", "/vectors/v:e/search", r#"{"vector":[1.0,0.1],"k":1}"#).1["neighbours"][0]["node"]["id"].clone();
    wait_until("A finds B's v:1 nearest", || nearest(&a) == "v:1");
    assert_eq!(b.request("PUT", "/nodes/v:1", r#"{"e":[-1.0,0.0]}"#).0, 200);
    wait_until("A follows B's update: v:2 is nearest", || nearest(&a) == "v:2");
    for node in [b, a] {
        assert!(node.stop().0);
    }
}
