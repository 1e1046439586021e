//! A js-libp2p peer (tests/js-libp2p/check-node.mjs: js-libp2p 3 with
//! noise, yamux, TCP, WebSocket, identify and kad-dht, a client nobody here
//! wrote) dials a real `pluresdb serve` over TCP and over WebSocket and
//! checks what it sees: identify lists the sync protocol, a Kademlia lookup
//! through the node finds peers and the node's own record, and the sync
//! protocol refuses it (no network secret) with an `error` frame.
//!
//! Needs `npm ci` in tests/js-libp2p (`.ci/run` does it; it installs Node 22
//! as node_modules/.bin/node). Without it the test says so and skips, except
//! with `CI=true`, where it fails.

mod common;

use common::{run_with_deadline, Node};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Each step of the script (a dial, identify, a lookup) must finish within
/// this; the whole script within [`SCRIPT_DEADLINE`].
const STEP_TIMEOUT_MS: u64 = 20_000;
const SCRIPT_DEADLINE: Duration = Duration::from_secs(180);

/// The installed script and its Node 22, or `None` (after saying why) when
/// the packages are not installed and the test may skip.
fn script() -> Option<(PathBuf, PathBuf)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("js-libp2p");
    let node = dir.join("node_modules").join(".bin").join("node");
    let installed = node.exists() && dir.join("node_modules").join("libp2p").join("package.json").exists();
    if !installed {
        let on_ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            !on_ci,
            "CI=true, but the npm packages of the js-libp2p test are not installed (run `npm ci` in {}; .ci/run does)",
            dir.display()
        );
        eprintln!("js-libp2p interop skipped: the npm packages are not installed (run `npm ci` in {})", dir.display());
        return None;
    }
    Some((node, dir.join("check-node.mjs")))
}

/// The node's libp2p TCP and WebSocket addresses from its start line
/// (`/ip4/127.0.0.1/tcp/N/p2p/ID`, `/ip4/127.0.0.1/tcp/M/ws/p2p/ID`), without
/// the `/p2p/ID` part, and its peer id.
fn libp2p_addresses(started: &serde_json::Value) -> (String, Vec<String>) {
    let peer_id = started["peer_id"].as_str().expect("the start line names the peer id").to_owned();
    let suffix = format!("/p2p/{peer_id}");
    let listen: Vec<String> = started["listen"]
        .as_array()
        .expect("the start line lists the addresses")
        .iter()
        .filter_map(|a| a.as_str())
        .filter(|a| a.starts_with('/') && a.contains("/tcp/"))
        .map(|a| a.strip_suffix(suffix.as_str()).unwrap_or_else(|| panic!("{a} does not end in {suffix}")).to_owned())
        .collect();
    (peer_id, listen)
}

/// js-libp2p dials the node over TCP and over WebSocket: identify lists
/// `/pluresdb/sync/1` (and Kademlia, ping), the node answers a Kademlia
/// lookup with a JS peer that connected to it and its own record is found
/// through the DHT, and a sync stream without the network secret gets an
/// `error` frame `access_denied` with a message and no sync message. The
/// node serves its API as before afterwards.
#[test]
fn a_js_libp2p_peer_identifies_looks_up_and_is_refused_sync_over_tcp_and_websocket() {
    let Some((node_binary, script)) = script() else { return };
    let dir = tempfile::tempdir().unwrap();
    // `serve` as a user runs it (both engines), on loopback with OS ports.
    let node = Node::start(dir.path());
    let (peer_id, addresses) = libp2p_addresses(&node.started);
    let tcp: Vec<&String> = addresses.iter().filter(|a| !a.contains("/ws")).collect();
    let ws: Vec<&String> = addresses.iter().filter(|a| a.ends_with("/ws")).collect();
    if tcp.is_empty() || ws.is_empty() {
        let _ = node.stop();
        panic!("no TCP or no WebSocket address in the start line's {addresses:?}");
    }

    let mut run = Command::new(&node_binary);
    run.current_dir(script.parent().expect("the script's directory"));
    run.arg(&script).args(["--peer-id", &peer_id, "--timeout-ms", &STEP_TIMEOUT_MS.to_string()]);
    run.args(["--addr", tcp[0], "--addr", ws[0]]);
    let (succeeded, out, err) = run_with_deadline(run, SCRIPT_DEADLINE);
    eprintln!("check-node.mjs:\n{out}{err}");

    // Every finding is gathered first, so the node is stopped before any
    // assertion fails.
    let mut problems = Vec::new();
    if !succeeded {
        problems.push(format!("the script failed: {err}"));
    }
    for transport in ["tcp", "ws"] {
        for check in ["connect", "identify", "sync refused", "kad"] {
            let line = format!("ok {transport} {check}: ");
            if !out.lines().any(|l| l.starts_with(&line)) {
                problems.push(format!("no `{line}` line"));
            }
        }
        let refused = format!("ok {transport} sync refused: error frame code 3 (access_denied): \"");
        if !out.lines().any(|l| l.starts_with(&refused)) {
            problems.push(format!("no access_denied over {transport}"));
        }
    }
    if !out.lines().any(|l| l == "all 8 checks passed") {
        problems.push("not all 8 checks passed".to_owned());
    }
    let (status, _) = node.request("GET", "/status", "");
    if status != 200 {
        problems.push(format!("the node's API answered {status} afterwards"));
    }
    let (clean, stderr) = node.stop();
    if !clean || stderr.contains("panicked") {
        problems.push(format!("the node did not stop cleanly: {stderr}"));
    }
    assert!(problems.is_empty(), "{}\n{out}", problems.join("\n"));
}
