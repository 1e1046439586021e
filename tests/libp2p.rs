//! Real `pluresdb serve` processes on loopback syncing over the libp2p
//! engine: two nodes with the QUIC engine off (both directions, catch-up
//! after a restart, nothing acknowledged lost to kill -9), and a QUIC-only
//! and a libp2p-only node that converge through a node running both.

mod common;

use common::{cli, held, invite, version, wait_until, Node};
use serde_json::{json, Value};

/// `node`'s listen address that `pick` chooses among those it lists.
fn listen_address(node: &Node, pick: impl Fn(&str) -> bool) -> String {
    let network = node.request("GET", "/network", "").1;
    let addresses: Vec<&str> = network["listen_addresses"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    addresses.iter().find(|a| pick(a)).unwrap_or_else(|| panic!("no such address in {addresses:?}")).to_string()
}

/// The node's libp2p TCP address (`/ip4/127.0.0.1/tcp/N/p2p/...`).
fn libp2p_tcp(node: &Node) -> String {
    listen_address(node, |a| a.starts_with("/ip4/") && a.contains("/tcp/") && !a.contains("/ws"))
}

/// The transports `node`'s connected peers are linked over, by peer id.
fn transports(node: &Node) -> Vec<(String, String)> {
    let peers = node.request("GET", "/peers", "").1;
    peers["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["connected"] == true)
        .map(|p| (p["peer_id"].as_str().unwrap_or("").to_owned(), p["transport"].as_str().unwrap_or("").to_owned()))
        .collect()
}

#[test]
fn two_nodes_sync_over_libp2p_alone_through_restarts_and_kill_9() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::start_with(da.path(), &["--no-quic"]);
    let t = invite(da.path(), &libp2p_tcp(&a));
    let b = Node::start_with(db.path(), &["--no-quic", "--join", &t]);

    // Both directions.
    assert_eq!(a.request("PUT", "/nodes/from:a", r#"{"by":"a"}"#).0, 200);
    assert_eq!(b.request("PUT", "/nodes/from:b", r#"{"by":"b"}"#).0, 200);
    wait_until("each holds the other's write", || {
        b.request("GET", "/nodes/from:a", "").0 == 200 && a.request("GET", "/nodes/from:b", "").0 == 200
    });
    assert!(transports(&a).iter().all(|(_, transport)| transport == "libp2p"), "{:?}", transports(&a));
    assert_eq!(transports(&b).len(), 1);

    // B stops; both write meanwhile; B comes back without --join and
    // redials A over libp2p.
    assert!(b.stop().0);
    for n in 0..50 {
        assert_eq!(a.request("PUT", &format!("/nodes/a:{n}"), "{}").0, 200);
    }
    let offline = cli(db.path(), &["put", "b:offline", r#"{"written":"offline"}"#]);
    assert!(offline.status.success(), "{}", String::from_utf8_lossy(&offline.stderr));
    let mut b = Node::start_with(db.path(), &["--no-quic"]);
    wait_until("both hold 53 operations", || held(&a) == 53 && held(&b) == 53);
    assert_eq!(version(&a), version(&b));
    assert_eq!(a.request("GET", "/nodes/b:offline", "").1["value"]["written"], "offline");

    // A large import on A reaches B while B is killed in the middle of it:
    // what B acknowledged survives, and it catches up after a restart.
    let total = 5_000u64;
    let lines: Vec<String> =
        (0..total).map(|i| json!({"id": format!("bulk:{i:05}"), "value": {"i": i, "pad": "x".repeat(64)}}).to_string()).collect();
    assert_eq!(a.request("POST", "/import", &lines.join("\n")).0, 200);
    wait_until("B has applied part of the import", || held(&b) > 53);
    let partial = held(&b);
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let b = Node::start_with(db.path(), &["--no-quic"]);
    assert!(held(&b) >= partial, "what B acknowledged survives the kill");
    wait_until("B holds everything", || held(&b) == 53 + total);
    assert_eq!(version(&a), version(&b));
    assert!(b.stop().0);
    assert!(a.stop().0);
}

#[test]
fn a_quic_only_and_a_libp2p_only_node_converge_through_a_node_running_both() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let b = Node::start(dirs[1].path());
    let quic_address = b.listen.clone().expect("B listens over QUIC");
    assert!(!quic_address.starts_with('/'), "QUIC's address comes first: {quic_address}");
    let a = Node::start_with(dirs[0].path(), &["--no-libp2p", "--join", &invite(dirs[1].path(), &quic_address)]);
    let c = Node::start_with(dirs[2].path(), &["--no-quic", "--join", &invite(dirs[1].path(), &libp2p_tcp(&b))]);

    assert_eq!(a.request("PUT", "/nodes/from:a", r#"{"by":"a"}"#).0, 200);
    assert_eq!(c.request("PUT", "/nodes/from:c", r#"{"by":"c"}"#).0, 200);
    wait_until("the write on A reaches C and the write on C reaches A", || {
        c.request("GET", "/nodes/from:a", "").0 == 200 && a.request("GET", "/nodes/from:c", "").0 == 200
    });
    let on_b: Vec<String> = transports(&b).into_iter().map(|(_, transport)| transport).collect();
    assert!(on_b.contains(&"quic".to_owned()) && on_b.contains(&"libp2p".to_owned()), "B links A over QUIC and C over libp2p: {on_b:?}");
    wait_until("all three hold the same operations", || version(&a) == version(&b) && version(&b) == version(&c));
    for node in [c, a, b] {
        assert!(node.stop().0);
    }
}

/// `pluresdb invite` with no address names every address the node listens
/// on, its multiaddrs included: a node that runs only libp2p joins with it.
#[test]
fn an_invite_ticket_carries_the_multiaddrs_a_libp2p_only_node_joins_by() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::start(da.path());
    let out = cli(da.path(), &["--json", "invite"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    let b = Node::start_with(db.path(), &["--no-quic", "--join", answer["ticket"].as_str().unwrap()]);
    assert_eq!(b.request("PUT", "/nodes/joined", "{}").0, 200);
    wait_until("A holds B's write", || a.request("GET", "/nodes/joined", "").0 == 200);
    assert_eq!(transports(&b).into_iter().map(|(_, transport)| transport).collect::<Vec<_>>(), ["libp2p"]);
    assert!(b.stop().0);
    assert!(a.stop().0);
}
