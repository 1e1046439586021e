//! The API of a real `pluresdb serve` process: tokens, conflicts, the
//! change feed over WebSockets (order, lag and resume, floods) and the
//! config file.

mod common;

use common::{cli, concurrent_names, wait_until, Node};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Every wait in these tests ends by this deadline.
const DEADLINE: Duration = Duration::from_secs(30);

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn subscribe(node: &Node, query: &str) -> Socket {
    let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/changes{query}", node.api)).await.unwrap();
    socket
}

/// The next JSON message, or `None` once the socket closes.
async fn next_message(socket: &mut Socket) -> Option<Value> {
    loop {
        match tokio::time::timeout(DEADLINE, socket.next()).await.expect("no message before the deadline") {
            Some(Ok(Message::Text(text))) => return Some(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

/// Reads `n` change messages; returns their `op` ids.
async fn changes(socket: &mut Socket, n: usize) -> Vec<String> {
    let mut ops = Vec::new();
    while ops.len() < n {
        let message = next_message(socket).await.expect("the socket closed early");
        assert_eq!(message["type"], "change", "{message}");
        ops.push(message["op"]["op"].as_str().unwrap().to_owned());
    }
    ops
}

#[test]
fn a_token_guards_the_api_when_required() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(dir.path(), &["--require-token"]);
    let token = std::fs::read_to_string(dir.path().join("api.token")).unwrap().trim().to_owned();
    assert_eq!(token.len(), 64);

    assert_eq!(node.request("GET", "/health", "").0, 200, "health needs no token");
    let (status, body) = node.request("GET", "/nodes", "");
    assert_eq!(status, 401);
    assert!(body["error"].as_str().unwrap().contains("api.token"), "{body}");
    assert_eq!(node.request_with("GET", "/nodes", "", &["Authorization: Bearer wrong"]).0, 401);
    let auth = format!("Authorization: Bearer {token}");
    assert_eq!(node.request_with("PUT", "/nodes/a", "{}", &[&auth]).0, 200);
    assert_eq!(node.request_with("GET", "/nodes/a", "", &[&auth]).1["id"], "a");
    assert_eq!(node.request("GET", &format!("/nodes/a?token={token}"), "").0, 400, "never in the URL (tests/browser_guard.rs)");

    // The CLI on the same data directory reads the token file.
    let out = cli(dir.path(), &["--json", "get", "a"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(node.stop().0);
}

#[test]
fn invites_and_allowlist_changes_need_the_token_even_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let token = std::fs::read_to_string(dir.path().join("api.token")).unwrap().trim().to_owned();
    let auth = format!("Authorization: Bearer {token}");
    assert_eq!(node.request("GET", "/network/invite", "").0, 401);
    assert_eq!(node.request("PUT", "/trust/mode", r#"{"mode":"open"}"#).0, 401);
    assert_eq!(node.request("GET", "/trust", "").0, 200, "reading the allowlist is not sensitive");
    let (status, invite) = node.request_with("GET", "/network/invite?addresses=127.0.0.1:34569", "", &[&auth]);
    assert_eq!(status, 200);
    assert!(invite["ticket"].as_str().unwrap().starts_with("pluresdb"));
    assert_eq!(node.request_with("PUT", "/trust/mode", r#"{"mode":"sideways"}"#, &[&auth]).0, 400);
    assert_eq!(node.request_with("PUT", "/trust/mode", r#"{"mode":"allowlist"}"#, &[&auth]).1["mode"], "allowlist");
    assert_eq!(node.request_with("PUT", "/trust/peers/not-a-peer", "", &[&auth]).0, 400);
    // The CLI goes through the node with the token.
    let out = cli(dir.path(), &["--json", "trust", "list"]);
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap()["mode"], "allowlist");
    let out = cli(dir.path(), &["--json", "invite"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(node.stop().0);
}

/// `GET /status/rates` counts the node's writes in its last bucket, from
/// the history the node keeps (not from when someone started to look).
#[test]
fn the_rates_of_the_last_minutes_count_the_writes_made() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(dir.path(), &["--no-network"]);
    for id in ["r:1", "r:2", "r:3"] {
        assert_eq!(node.request("PUT", &format!("/nodes/{id}"), r#"{"a":1}"#).0, 200);
    }
    let (status, rates) = node.request("GET", "/status/rates", "");
    assert_eq!(status, 200, "{rates}");
    assert_eq!(rates["step_s"], 10);
    let buckets = rates["buckets"].as_array().unwrap();
    assert!(!buckets.is_empty() && buckets.len() <= 91, "{rates}");
    let sum = |field: &str| buckets.iter().map(|b| b[field].as_u64().unwrap()).sum::<u64>();
    assert_eq!((sum("local_ops"), sum("remote_ops"), sum("ops_sent")), (3, 0, 0), "{rates}");
    let (status, body) = node.request("GET", "/status/rates?minutes=16", "");
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("1 to 15"), "{body}");
    assert!(node.stop().0);
}

#[test]
fn without_a_transport_peers_and_connect_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(dir.path(), &["--no-network"]);
    assert_eq!(node.request("GET", "/peers", "").1, json!({"peers": []}));
    let (status, body) = node.request("POST", "/peers", r#"{"address":"127.0.0.1:9"}"#);
    assert_eq!(status, 503);
    assert!(body["error"].as_str().unwrap().contains("no network transport"), "{body}");
    assert_eq!(node.request("POST", "/peers", r#"{"addr":"x"}"#).0, 400, "a wrong field is bad input");
    let (_, status_doc) = node.request("GET", "/status", "");
    assert_eq!(status_doc["peers_connected"], 0);
    let (_, network) = node.request("GET", "/network", "");
    assert_eq!(network["access_mode"], "secret");
    assert_eq!(network["network_tag"].as_str().unwrap().len(), 16);
    let out = cli(dir.path(), &["connect", "127.0.0.1:9"]);
    assert_eq!(out.status.code(), Some(4), "unavailable: {}", String::from_utf8_lossy(&out.stderr));
    let (status, metrics) = node.request_text("GET", "/metrics", "", &[]);
    assert_eq!(status, 200);
    assert!(metrics.contains("pluresdb_peers_connected 0"), "{metrics}");
    assert!(node.stop().0);
}

/// A peer id in a path is parsed once, at the API: a malformed one is a
/// 400 that names it and says what is wrong, a well-formed one of no
/// connected peer a 404; the node serves on.
#[test]
fn a_malformed_peer_id_in_a_path_is_refused_naming_it_and_the_node_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let token = std::fs::read_to_string(dir.path().join("api.token")).unwrap().trim().to_owned();
    let auth = format!("Authorization: Bearer {token}");
    for (method, path) in [("DELETE", "/peers/not-a-peer"), ("PUT", "/trust/peers/not-a-peer"), ("DELETE", "/trust/peers/not-a-peer")] {
        let (status, body) = node.request_with(method, path, "", &[&auth]);
        assert_eq!(status, 400, "{method} {path}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("\"not-a-peer\" is not a peer id: invalid peer id: not base58btc"), "{method} {path}: {error}");
    }
    // Base58 of the right alphabet, but an RSA-style id: not an Ed25519 key.
    let (status, body) = node.request("DELETE", "/peers/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", "");
    assert_eq!(status, 400, "{body}");
    let absent = "12D3KooWEChVMMMzV8acJ53mJHrw1pQ27UAGkCxWXLJutbeUMvVu";
    let (status, body) = node.request("DELETE", &format!("/peers/{absent}"), "");
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains(&format!("peer {absent} is not connected")), "{body}");
    assert_eq!(node.request("GET", "/peers", "").0, 200, "the node serves on");
    assert!(node.stop().0);
}

#[test]
fn conflicts_are_listed_and_resolved() {
    let dir = tempfile::tempdir().unwrap();
    concurrent_names(dir.path());
    let node = Node::start(dir.path());
    let (_, listed) = node.request("GET", "/conflicts", "");
    let values = &listed["nodes"][0]["conflicts"]["name"];
    assert_eq!(listed["nodes"][0]["id"], "user:1", "{listed}");
    assert_eq!(values.as_array().unwrap().len(), 2, "{listed}");
    assert_eq!(node.request("POST", "/nodes/user:1/resolve", r#"{"field":"age","value":2}"#).0, 409, "age has no conflict");
    assert_eq!(node.request("POST", "/nodes/user:9/resolve", r#"{"field":"name","value":"x"}"#).0, 404);
    assert_eq!(node.request("POST", "/nodes/user:1/resolve", r#"{"field":"name"}"#).0, 400);
    assert_eq!(node.request("POST", "/nodes/user:1/resolve", r#"{"field":"name","value":"Ali"}"#).0, 200);
    assert_eq!(node.request("GET", "/conflicts", "").1["nodes"], json!([]));
    assert_eq!(node.request("GET", "/nodes/user:1", "").1["value"]["name"], "Ali");
    assert!(node.stop().0);
}

#[test]
fn subscribers_see_every_change_in_one_order() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let rt = runtime();
    let (mut all, mut users, mut one) =
        rt.block_on(async { (subscribe(&node, "").await, subscribe(&node, "?prefix=user:").await, subscribe(&node, "?id=user:3").await) });
    for socket in [&mut all, &mut users, &mut one] {
        let first = rt.block_on(next_message(socket)).unwrap();
        assert_eq!(first["type"], "subscribed", "{first}");
    }
    // Writers on several threads race; every subscriber must see the
    // node's one order.
    let id_of = |t: usize, i: usize| if i.is_multiple_of(2) { format!("user:{}", (t * 25 + i) % 7) } else { format!("item:{t}-{i}") };
    let ids: Vec<String> = (0..4).flat_map(|t| (0..25).map(move |i| id_of(t, i))).collect();
    let (n_users, n_user3) = (ids.iter().filter(|id| id.starts_with("user:")).count(), ids.iter().filter(|id| *id == "user:3").count());
    std::thread::scope(|scope| {
        for t in 0..4 {
            let node = &node;
            scope.spawn(move || {
                for i in 0..25 {
                    let id = id_of(t, i);
                    assert_eq!(node.request("PATCH", &format!("/nodes/{id}"), &format!(r#"{{"n":{i},"t":{t}}}"#)).0, 200);
                }
            });
        }
    });
    let (every, user_ops, user3) = rt.block_on(async {
        let every = changes(&mut all, 100).await;
        let user_ops = changes(&mut users, n_users).await;
        (every, user_ops, changes(&mut one, n_user3).await)
    });
    let mut unique = every.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 100, "each change once");
    let seq = |op: &String| op.rsplit('/').next().unwrap().parse::<u64>().unwrap();
    assert!(every.windows(2).all(|w| seq(&w[0]) < seq(&w[1])), "one writer's changes arrive in the order applied");
    let in_all: Vec<&String> = every.iter().filter(|op| user_ops.contains(op)).collect();
    assert_eq!(in_all, user_ops.iter().collect::<Vec<_>>(), "the prefix subscriber sees the same order");
    assert!(user3.iter().all(|op| user_ops.contains(op)));
    assert!(node.stop().0);
}

#[test]
fn a_subscriber_that_lags_resumes_with_nothing_missed_or_repeated() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path()).unwrap();
    std::fs::write(dir.path().join("pluresdb.toml"), "watch_buffer = 8\n").unwrap();
    let node = Node::start(dir.path());
    let rt = runtime();
    let mut socket = rt.block_on(subscribe(&node, "?prefix=n:"));
    let subscribed = rt.block_on(next_message(&mut socket)).unwrap();
    let mut position: BTreeMap<String, u64> = serde_json::from_value(subscribed["version"].clone()).unwrap();

    // One import commits 1,000 changes at once: far more than 8.
    let lines: String = (0..1_000).map(|i| format!("{}\n", json!({"id": format!("n:{i:04}"), "value": {"i": i}}))).collect();
    assert_eq!(node.request("POST", "/import", &lines).1["imported"], 1_000);
    assert_eq!(node.request("PUT", "/other", "{}").0, 404, "not a node route");

    let mut seen = Vec::new();
    let mut resumes = 0;
    loop {
        match rt.block_on(next_message(&mut socket)) {
            Some(m) if m["type"] == "change" => {
                let (origin, seq) = (m["op"]["origin"].as_str().unwrap().to_owned(), m["op"]["seq"].as_u64().unwrap());
                let entry = position.entry(origin).or_default();
                *entry = (*entry).max(seq);
                seen.push(m["op"]["node_id"].as_str().unwrap().to_owned());
                if seen.len() == 1_000 {
                    break;
                }
            }
            Some(m) if m["type"] == "lagged" => {
                assert!(m["missed"].as_u64().unwrap() > 0);
                let resume: BTreeMap<String, u64> = serde_json::from_value(m["resume_from"].clone()).unwrap();
                assert_eq!(resume, position, "the node resumes from what the client has seen");
                assert_eq!(rt.block_on(next_message(&mut socket)), None, "the socket closes after lagged");
                resumes += 1;
                let from = serde_json::to_string(&position).unwrap();
                let query = format!(
                    "?prefix=n:&from={}",
                    from.replace('"', "%22").replace('{', "%7B").replace('}', "%7D").replace(':', "%3A").replace(',', "%2C")
                );
                socket = rt.block_on(subscribe(&node, &query));
                assert_eq!(rt.block_on(next_message(&mut socket)).unwrap()["type"], "subscribed");
            }
            other => panic!("unexpected {other:?} after {} changes", seen.len()),
        }
    }
    assert!(resumes >= 1, "a buffer of 8 must lag on 1,000 changes");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 1_000, "every change once, none repeated");
    let (_, metrics) = node.request_text("GET", "/metrics", "", &[]);
    assert!(!metrics.contains("pluresdb_watch_lagged_total 0"), "{metrics}");
    assert!(node.stop().0);
}

#[test]
fn a_flooding_websocket_client_is_cut_off_and_the_node_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let rt = runtime();
    rt.block_on(async {
        let mut socket = subscribe(&node, "").await;
        assert_eq!(next_message(&mut socket).await.unwrap()["type"], "subscribed");
        let mut sent = 0;
        // The node closes the socket after its burst allowance (100).
        while sent < 10_000 && socket.send(Message::Text("hello".into())).await.is_ok() {
            sent += 1;
        }
        let mut closed_with_error = false;
        while let Some(message) = next_message(&mut socket).await {
            if message["type"] == "error" {
                closed_with_error = message["error"].as_str().unwrap().contains("too many messages");
            }
        }
        assert!(closed_with_error, "the flood gets an error before the close");
    });
    assert_eq!(node.request("GET", "/health", "").0, 200);
    assert_eq!(node.request("GET", "/changes?id=a&prefix=b", "").0, 400, "a bad subscription is a clear error");
    assert!(node.stop().0);
}

#[test]
fn settings_come_from_flags_then_environment_then_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("pluresdb.toml"),
        "api_addr = \"127.0.0.1:40000\"\nresolver = \"keep-all\"\nbootstrap = [\"10.9.9.9:34569\"]\nmdns = false\n",
    )
    .unwrap();
    let show = |args: &[&str], env: &[(&str, &str)]| -> Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pluresdb"))
            .arg("--data-dir")
            .arg(d)
            .args(args)
            .args(["--json", "config", "show"])
            .env_remove("PLURESDB_API_ADDR")
            .env_remove("PLURESDB_RESOLVER")
            .env_remove("PLURESDB_BOOTSTRAP")
            .env_remove("PLURESDB_MDNS")
            .env_remove("PLURESDB_MDNS_INTERFACES")
            .env_remove("PLURESDB_MAX_CLOCK_DRIFT")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let from_file = show(&[], &[]);
    assert_eq!(from_file["api_addr"], json!({"value": "127.0.0.1:40000", "source": "config file"}));
    assert_eq!(from_file["resolver"]["value"], "keep-all");
    assert_eq!(from_file["log"]["source"], "default");
    assert_eq!(from_file["bootstrap"], json!({"value": ["10.9.9.9:34569"], "source": "config file"}));
    assert_eq!(from_file["mdns"], json!({"value": false, "source": "config file"}));
    let env_bootstrap = show(&[], &[("PLURESDB_BOOTSTRAP", "10.1.1.1:1, 10.2.2.2:2"), ("PLURESDB_MDNS", "true")]);
    assert_eq!(env_bootstrap["bootstrap"], json!({"value": ["10.1.1.1:1", "10.2.2.2:2"], "source": "environment"}));
    assert_eq!(env_bootstrap["mdns"], json!({"value": true, "source": "environment"}));
    assert_eq!(from_file["mdns_interfaces"], json!({"value": [], "source": "default"}));
    let interfaces = show(&[], &[("PLURESDB_MDNS_INTERFACES", "eth0, wlan0")]);
    assert_eq!(interfaces["mdns_interfaces"], json!({"value": ["eth0", "wlan0"], "source": "environment"}));
    let from_env = show(&[], &[("PLURESDB_RESOLVER", "fww")]);
    assert_eq!(from_env["resolver"], json!({"value": "first-writer-wins", "source": "environment"}));
    let from_flag = show(&["--resolver", "lww"], &[("PLURESDB_RESOLVER", "fww")]);
    assert_eq!(from_flag["resolver"], json!({"value": "last-writer-wins", "source": "flag"}));
    assert_eq!(from_file["max_clock_drift"], json!({"value": "5m", "source": "default"}));
    let drift = show(&[], &[("PLURESDB_MAX_CLOCK_DRIFT", "90s")]);
    assert_eq!(drift["max_clock_drift"], json!({"value": "90s", "source": "environment"}));
    for bad in ["5", "0s", "400d", "5 parsecs"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pluresdb"))
            .arg("--data-dir")
            .arg(d)
            .args(["config", "show"])
            .env("PLURESDB_MAX_CLOCK_DRIFT", bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("PLURESDB_MAX_CLOCK_DRIFT"), "{}", String::from_utf8_lossy(&out.stderr));
    }

    std::fs::write(d.join("pluresdb.toml"), "api_adr = \"127.0.0.1:1\"\n").unwrap();
    let out = cli(d, &["config", "show"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `api_adr`"), "{}", String::from_utf8_lossy(&out.stderr));
    let missing = cli(d, &["--config", "/nonexistent/pluresdb.toml", "config", "show"]);
    assert_eq!(missing.status.code(), Some(2), "a config file named on the command line must exist");
}

#[test]
fn a_change_written_on_one_node_arrives_over_the_websocket_of_the_other() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::start(dir_a.path());
    let listen = a.listen.clone().expect("the node listens for peers");
    let invite = cli(dir_a.path(), &["--json", "invite", "--address", &listen]);
    assert!(invite.status.success(), "{}", String::from_utf8_lossy(&invite.stderr));
    let ticket = serde_json::from_slice::<Value>(&invite.stdout).unwrap()["ticket"].as_str().unwrap().to_owned();
    let rt = runtime();
    let mut socket = rt.block_on(subscribe(&a, "?prefix=shared:"));
    assert_eq!(rt.block_on(next_message(&mut socket)).unwrap()["type"], "subscribed");

    // B joins A's network with the ticket and connects to it by itself.
    let b = Node::start_with(dir_b.path(), &["--join", &ticket]);
    let b_id = b.request("GET", "/health", "").1["peer_id"].as_str().unwrap().to_owned();
    assert_eq!(b.request("PUT", "/nodes/shared:1", r#"{"from":"b"}"#).0, 200);
    let change = rt.block_on(next_message(&mut socket)).expect("the change arrives");
    assert_eq!(change["type"], "change", "{change}");
    assert_eq!(change["op"]["origin"], b_id.as_str());
    assert_eq!(change["node"]["value"], json!({"from": "b"}));
    assert_eq!(a.request("GET", "/nodes/shared:1", "").1["value"]["from"], "b");

    // And back: A's write reaches B; both report the link.
    assert_eq!(a.request("PUT", "/nodes/shared:2", r#"{"from":"a"}"#).0, 200);
    let deadline = std::time::Instant::now() + DEADLINE;
    while b.request("GET", "/nodes/shared:2", "").0 != 200 {
        assert!(std::time::Instant::now() < deadline, "A's write never reached B");
        std::thread::yield_now();
    }
    let peers = b.request("GET", "/peers", "").1;
    assert_eq!(peers["peers"][0]["connected"], true, "{peers}");
    assert_eq!(a.request("GET", "/status", "").1["transports"], json!(["quic", "libp2p"]));
    let (_, metrics) = a.request_text("GET", "/metrics", "", &[]);
    assert!(metrics.contains("pluresdb_ops_applied_total{source=\"remote\"} 1"), "{metrics}");
    // Where a write's time goes: A applied one peer message and committed
    // its own write, each timed.
    let counter = |text: &str, name: &str| -> u64 {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or_else(|| panic!("no {name}:\n{text}"))
    };
    assert_eq!(counter(&metrics, "pluresdb_remote_applies_total"), 1, "{metrics}");
    assert!(counter(&metrics, "pluresdb_remote_apply_microseconds_total") > 0, "{metrics}");
    assert!(counter(&metrics, "pluresdb_commits_total") >= 1, "{metrics}");
    assert!(counter(&metrics, "pluresdb_commit_microseconds_total") > 0, "{metrics}");
    assert!(b.stop().0);
    assert!(a.stop().0);
}

/// `serve --resolver R` on two nodes that wrote the same field while apart:
/// once they connect, each shows the value R picks (and, with keep-all,
/// both values as a conflict), in `GET` and in the change the live feed
/// sends for the other node's write alike.
#[test]
fn every_resolver_shows_a_conflict_alike_in_get_and_the_change_feed() {
    let rt = runtime();
    for resolver in ["last-writer-wins", "first-writer-wins", "keep-all"] {
        let root = tempfile::tempdir().unwrap();
        let (dir_a, dir_b) = (root.path().join("a"), root.path().join("b"));
        let a = Node::start_with(&dir_a, &["--resolver", resolver]);
        // B is of A's network but does not connect yet.
        std::fs::create_dir_all(&dir_b).unwrap();
        std::fs::copy(dir_a.join("network.secret"), dir_b.join("network.secret")).unwrap();
        let b = Node::start_with(&dir_b, &["--resolver", resolver]);
        let write = |node: &Node, name: &str| {
            let (status, receipt) = node.request("PATCH", "/nodes/user:1", &json!({"name": name}).to_string());
            assert_eq!(status, 200, "{receipt}");
            let hlc: pluresdb_core::Hlc = receipt["timestamp"].as_str().unwrap().parse().unwrap();
            let origin = receipt["op"].as_str().unwrap().split('/').next().unwrap().to_owned();
            (hlc, origin, name.to_owned())
        };
        let (from_a, from_b) = (write(&a, "from a"), write(&b, "from b"));
        let (older, newer) = if from_a < from_b { (&from_a, &from_b) } else { (&from_b, &from_a) };
        let shown = if resolver == "first-writer-wins" { &older.2 } else { &newer.2 };

        let (mut feed_a, mut feed_b) = rt.block_on(async { (subscribe(&a, "?id=user:1").await, subscribe(&b, "?id=user:1").await) });
        for feed in [&mut feed_a, &mut feed_b] {
            assert_eq!(rt.block_on(next_message(feed)).unwrap()["type"], "subscribed");
        }
        let address = a.listen.clone().unwrap();
        assert_eq!(b.request("POST", "/peers", &json!({"address": address}).to_string()).0, 200);
        for (node, feed, other) in [(&a, &mut feed_a, &from_b), (&b, &mut feed_b, &from_a)] {
            let change = rt.block_on(next_message(feed)).expect("the other node's write arrives");
            assert_eq!(change["type"], "change", "{change}");
            assert_eq!(change["op"]["origin"], other.1.as_str(), "{change}");
            let (status, got) = node.request("GET", "/nodes/user:1", "");
            assert_eq!(status, 200);
            assert_eq!(got["value"]["name"], shown.as_str(), "{resolver}: GET shows what the resolver picks: {got}");
            assert_eq!(change["node"], got, "{resolver}: the change feed shows the node as GET does");
            let conflicts = got["conflicts"]["name"].as_array().map_or(0, Vec::len);
            assert_eq!(conflicts, if resolver == "keep-all" { 2 } else { 0 }, "{resolver}: {got}");
        }
        assert!(b.stop().0);
        assert!(a.stop().0);
    }
}

/// An index made through the API is built over the nodes stored before,
/// kept by later writes and deletes, used by queries (the plan says so),
/// still there after a restart, and gone after a drop; the CLI sees the
/// same.
#[test]
fn an_index_is_built_kept_used_survives_a_restart_and_drops() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(dir.path(), &["--no-network"]);
    for i in 0..50 {
        let (status, body) = node.request("PUT", &format!("/nodes/user:{i:02}"), &json!({"age": i, "name": format!("n{i}")}).to_string());
        assert_eq!(status, 200, "{body}");
    }
    let (status, index) = node.request("POST", "/indexes?wait=true", r#"{"prefix":"user:","field":"age"}"#);
    assert_eq!((status, index["state"].as_str()), (201, Some("ready")), "{index}");
    assert_eq!(index["name"], "user:age");
    let (status, body) = node.request("POST", "/indexes", r#"{"prefix":"user:","field":"age"}"#);
    assert_eq!(status, 400, "the same index twice: {body}");
    // Kept by writes after the build: an update, a delete, a new node.
    assert_eq!(node.request("PATCH", "/nodes/user:45", r#"{"age":3}"#).0, 200);
    assert_eq!(node.request("DELETE", "/nodes/user:46", "").0, 200);
    assert_eq!(node.request("PUT", "/nodes/user:99", r#"{"age":47}"#).0, 200);
    let query = r#"{"prefix":"user:","where":[{"field":"age","op":">=","value":44}],"sort":{"field":"age"}}"#;
    let ids =
        |page: &Value| -> Vec<String> { page["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap().to_owned()).collect() };
    let (status, page) = node.request("POST", "/query", query);
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids(&page), ["user:44", "user:47", "user:99", "user:48", "user:49"]);
    assert_eq!(page["plan"]["select"]["index"], "user:age", "{page}");
    let (clean, stderr) = node.stop();
    assert!(clean, "{stderr}");

    let node = Node::start_with(dir.path(), &["--no-network"]);
    let (status, list) = node.request("GET", "/indexes", "");
    assert_eq!((status, list[0]["state"].as_str()), (200, Some("ready")), "{list}");
    let (_, page) = node.request("POST", "/query", query);
    assert_eq!(ids(&page), ["user:44", "user:47", "user:99", "user:48", "user:49"], "after a restart");
    assert_eq!(node.request("DELETE", "/indexes/user:age", "").0, 200);
    assert_eq!(node.request("DELETE", "/indexes/user:age", "").0, 404);
    let (status, body) = node.request("POST", "/query", query);
    assert_eq!(status, 400, "a sort without an index: {body}");
    assert!(body["error"].as_str().unwrap().contains("index create"), "{body}");
    // The CLI goes through the running node.
    let out = cli(dir.path(), &["index", "create", "--prefix", "user:", "age"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(dir.path(), &["query", "--prefix", "user:", "--where", "age > 47", "--explain"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("index user:age"), "{}", String::from_utf8_lossy(&out.stdout));
    let out = cli(dir.path(), &["query", "--prefix", "user:", "--where", "age > 47"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().map(|l| l.split('\t').next().unwrap()).collect::<Vec<_>>(),
        ["user:48", "user:49"]
    );
    let (clean, stderr) = node.stop();
    assert!(clean, "{stderr}");
}

/// Each kind of bad query is answered 400 with what is wrong, and the node
/// serves on.
#[test]
fn bad_queries_are_400_with_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(dir.path(), &["--no-network"]);
    let steps: Vec<Value> = (0..9).map(|_| json!({"direction": "out"})).collect();
    let conditions: Vec<Value> = (0..33).map(|_| json!({"field": "a", "op": "exists"})).collect();
    let cases = [
        ("not json".to_owned(), "not a query"),
        (json!({"where": [{"field": "age", "op": "~", "value": 1}]}).to_string(), "unknown operator"),
        (json!({"where": [{"field": "age", "op": "<", "value": true}]}).to_string(), "compares numbers or strings"),
        (json!({"where": [{"field": "a..b", "op": "=", "value": 1}]}).to_string(), "field path"),
        (json!({"where": [{"field": "a", "op": "in", "value": (0..1_001).collect::<Vec<_>>()}]}).to_string(), "at most 1000"),
        (json!({"limit": 0}).to_string(), "out of range"),
        (json!({"limit": 10_001}).to_string(), "out of range"),
        (json!({"steps": steps}).to_string(), "depth"),
        (json!({"where": conditions}).to_string(), "conditions"),
        (json!({"cursor": "nonsense"}).to_string(), "cursor"),
        (json!({"sort": {"field": "age"}}).to_string(), "needs a ready index"),
        (json!({"unknown": 1}).to_string(), "unknown field"),
        (format!("{{\"prefix\": \"{}\"}}", "x".repeat(70_000)), "limit is 65536"),
    ];
    for (body, expected) in cases {
        let (status, answer) = node.request("POST", "/query", &body);
        assert_eq!(status, 400, "{}: {answer}", &body[..body.len().min(80)]);
        assert!(answer["error"].as_str().unwrap_or_default().contains(expected), "{expected:?} in {answer}");
    }
    for (body, expected) in
        [(r#"{"field":"a","links":true}"#, "not both"), (r#"{"prefix":"user:"}"#, "give a field"), ("[", "not an index spec")]
    {
        let (status, answer) = node.request("POST", "/indexes", body);
        assert_eq!(status, 400, "{answer}");
        assert!(answer["error"].as_str().unwrap_or_default().contains(expected), "{expected:?} in {answer}");
    }
    assert_eq!(node.request("GET", "/health", "").0, 200);
    let (clean, stderr) = node.stop();
    assert!(clean, "{stderr}");
}

/// `/changes?query=...` follows a query: a change that makes a node pass
/// comes with `matches: true`, one that makes a passing node fail (or
/// deletes it) with `matches: false`, and changes to nodes that neither
/// pass nor passed do not come at all. A node that passed before the
/// subscription is known to have passed.
#[test]
fn the_change_feed_follows_a_live_query() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(dir.path(), &["--no-network"]);
    assert_eq!(node.request("PUT", "/nodes/user:old", r#"{"age":50}"#).0, 200);
    let query = r#"{"prefix":"user:","where":[{"field":"age","op":">=","value":40}]}"#;
    let encoded: String = query.bytes().map(|b| format!("%{b:02X}")).collect();
    let rt = runtime();
    let mut socket = rt.block_on(subscribe(&node, &format!("?query={encoded}")));
    assert_eq!(rt.block_on(next_message(&mut socket)).unwrap()["type"], "subscribed");
    let writes = [
        ("PUT", "user:young", r#"{"age":20}"#),
        ("PUT", "other:1", r#"{"age":90}"#),
        ("PUT", "user:a", r#"{"age":41}"#),
        ("PATCH", "user:a", r#"{"age":42}"#),
        ("PATCH", "user:a", r#"{"age":30}"#),
        ("PATCH", "user:young", r#"{"name":"still young"}"#),
        ("DELETE", "user:old", ""),
    ];
    for (method, id, body) in writes {
        assert_eq!(node.request(method, &format!("/nodes/{id}"), body).0, 200, "{method} {id}");
    }
    let mut seen = Vec::new();
    for _ in 0..4 {
        let message = rt.block_on(next_message(&mut socket)).unwrap();
        assert_eq!(message["type"], "change", "{message}");
        seen.push((message["op"]["node_id"].as_str().unwrap().to_owned(), message["matches"].as_bool().unwrap()));
    }
    let expected = [("user:a", true), ("user:a", true), ("user:a", false), ("user:old", false)];
    assert_eq!(seen, expected.map(|(id, m)| (id.to_owned(), m)));
    // Sorting and steps are not for live queries.
    let (status, body) = node.request("GET", "/changes?query=%7B%22steps%22%3A%5B%7B%22direction%22%3A%22in%22%7D%5D%7D", "");
    assert_eq!(status, 400, "{body}");
    assert!(node.stop().0);
}

/// A vector index is built over the stored nodes, follows later writes,
/// updates and deletes, reports values that are not vectors of its
/// dimension (and keeps serving), refuses bad searches with 400, and is
/// built again from the store after a restart.
#[test]
fn vector_search_follows_writes_and_reports_bad_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(dir.path(), &["--no-network"]);
    let put = |node: &Node, id: &str, value: Value| assert_eq!(node.request("PUT", &format!("/nodes/{id}"), &value.to_string()).0, 200);
    for i in 0..20 {
        let angle = i as f64 / 20.0 * std::f64::consts::FRAC_PI_2;
        put(&node, &format!("doc:{i:02}"), json!({"e": [angle.cos(), angle.sin(), 0.0], "n": i}));
    }
    put(&node, "doc:short", json!({"e": [1.0, 0.0]}));
    put(&node, "doc:text", json!({"e": [1.0, "x", 0.0]}));
    let (status, index) = node.request("POST", "/vectors", r#"{"prefix":"doc:","field":"e","dimension":3}"#);
    assert_eq!(status, 201, "{index}");
    assert_eq!(
        (index["name"].as_str(), index["points"].as_u64(), index["skipped"].as_u64()),
        (Some("doc:e"), Some(20), Some(2)),
        "{index}"
    );
    assert!(index["last_skip"].as_str().unwrap().contains("doc:"), "{index}");
    let search = |node: &Node, body: Value| {
        let (status, answer) = node.request("POST", "/vectors/doc:e/search", &body.to_string());
        assert_eq!(status, 200, "{answer}");
        answer["neighbours"].as_array().unwrap().iter().map(|n| n["node"]["id"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    assert_eq!(search(&node, json!({"vector": [1.0, 0.0, 0.0], "k": 2})), ["doc:00", "doc:01"]);
    assert_eq!(search(&node, json!({"vector": [0.0, 1.0, 0.0], "k": 1})), ["doc:19"]);
    // Conditions narrow the neighbours.
    assert_eq!(
        search(&node, json!({"vector": [1.0, 0.0, 0.0], "k": 2, "where": [{"field": "n", "op": ">=", "value": 10}]})),
        ["doc:10", "doc:11"]
    );
    // Later writes: a new nearest, a moved node, a delete.
    put(&node, "doc:new", json!({"e": [0.0, 0.0, 1.0]}));
    wait_until("the index takes doc:new", || search(&node, json!({"vector": [0.0, 0.0, 1.0], "k": 1})) == ["doc:new"]);
    put(&node, "doc:19", json!({"e": [0.0, 0.1, 1.0]}));
    assert_eq!(node.request("DELETE", "/nodes/doc:new", "").0, 200);
    wait_until("the index follows the update and the delete", || search(&node, json!({"vector": [0.0, 0.0, 1.0], "k": 1})) == ["doc:19"]);
    for (body, expected) in [
        (json!({"vector": [1.0, 0.0]}), "2 components; this index takes 3"),
        (json!({"vector": [1.0, 0.0, 0.0], "k": 0}), "out of range"),
        (json!({"vector": [1.0, "x", 0.0]}), "not a vector search"),
        (json!({"vector": [1.0, 0.0, 0.0], "where": [{"field": "n", "op": "~"}]}), "unknown operator"),
    ] {
        let (status, answer) = node.request("POST", "/vectors/doc:e/search", &body.to_string());
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(expected), "{expected:?} in {answer}");
    }
    assert_eq!(node.request("POST", "/vectors", r#"{"field":"e","dimension":0}"#).0, 400);
    assert_eq!(node.request("POST", "/vectors", r#"{"field":"e","dimension":3,"metric":"manhattan"}"#).0, 400);
    assert_eq!(node.request("POST", "/vectors/missing/search", r#"{"vector":[1]}"#).0, 404);
    let (clean, stderr) = node.stop();
    assert!(clean, "{stderr}");

    // Built again from the store at start.
    let node = Node::start_with(dir.path(), &["--no-network"]);
    wait_until("the vector index is built at start", || {
        let list = node.request("GET", "/vectors", "").1;
        list[0]["building"] == false && list[0]["built_ms"].is_u64()
    });
    assert_eq!(node.request("GET", "/vectors", "").1[0]["points"], 20);
    assert_eq!(search(&node, json!({"vector": [0.0, 0.0, 1.0], "k": 1})), ["doc:19"]);
    assert_eq!(node.request("DELETE", "/vectors/doc:e", "").0, 200);
    assert_eq!(node.request("POST", "/vectors/doc:e/search", r#"{"vector":[1,0,0]}"#).0, 404);
    let (clean, stderr) = node.stop();
    assert!(clean, "{stderr}");
}
