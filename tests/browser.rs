//! The browser package (`clients/js`: crates/wasm behind a small JS API,
//! stored in IndexedDB) in a real browser: Debian's headless Chromium,
//! driven over CDP by playwright-core (`clients/js/test/browser.mjs`, one
//! scenario per test here; no browser is downloaded).
//!
//! Needs the wasm toolchain (`apt-get install rustc-web cargo-web
//! rust-web-src lld`), `wasm-bindgen` (`cargo install wasm-bindgen-cli
//! --locked --version 0.2.108`), `chromium`, and `npm ci` in clients/js
//! (playwright-core, and Node 22 as node_modules/.bin/node). `.ci/run` installs them all; without one the tests say which
//! and skip, except with `CI=true`, where they fail.

mod common;

use common::{invite, run_with_deadline, Node};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// A scenario (a browser start, a few thousand writes, a restart) ends
/// within this on a loaded two-core machine, or is killed and fails.
const SCENARIO_DEADLINE: Duration = Duration::from_secs(300);

fn package() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients").join("js")
}

/// Node 22, installed by `npm ci` in clients/js as its lock file pins it.
fn node() -> PathBuf {
    package().join("node_modules").join(".bin").join("node")
}

fn wasm_bindgen() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    [std::env::var_os("WASM_BINDGEN").map(PathBuf::from), Some(home.join(".cargo/bin/wasm-bindgen"))]
        .into_iter()
        .flatten()
        .find(|p| p.exists())
}

/// What is missing to run the browser tests, if anything.
fn missing() -> Option<String> {
    let mut missing = Vec::new();
    if !Path::new("/usr/lib/rustlib/src/rust/library/Cargo.lock").exists() || !Path::new("/usr/bin/wasm-ld").exists() {
        missing.push("the wasm toolchain (apt-get install rustc-web cargo-web rust-web-src lld)");
    }
    if wasm_bindgen().is_none() {
        missing.push("wasm-bindgen (cargo install wasm-bindgen-cli --locked --version 0.2.108)");
    }
    if !Path::new("/usr/bin/chromium").exists() {
        missing.push("chromium (apt-get install chromium)");
    }
    if !node().exists() || !package().join("node_modules/playwright-core/package.json").exists() {
        missing.push("Node 22 and playwright-core (npm ci in clients/js)");
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// Builds the package once per test run (`npm run build`'s script); `None`
/// when the tools are missing and the tests may skip.
fn built() -> Option<()> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    if let Some(missing) = missing() {
        let on_ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(!on_ci, "CI=true, but the browser tests cannot run without: {missing}");
        eprintln!("browser tests skipped: missing {missing}");
        return None;
    }
    let result = BUILT.get_or_init(|| {
        let mut build = Command::new(node());
        build.current_dir(package()).arg("scripts/build.mjs");
        if let Some(path) = wasm_bindgen() {
            build.env("WASM_BINDGEN", path);
        }
        let (ok, out, err) = run_with_deadline(build, SCENARIO_DEADLINE * 2);
        if ok {
            Ok(())
        } else {
            Err(format!("building the package failed:\n{out}\n{err}"))
        }
    });
    match result {
        Ok(()) => Some(()),
        Err(err) => panic!("{err}"),
    }
}

/// Runs `scenario` of clients/js/test/browser.mjs; returns its `RESULT`.
fn scenario(name: &str, args: &[&str]) -> Option<serde_json::Value> {
    built()?;
    let mut run = Command::new(node());
    run.current_dir(package()).arg("test/browser.mjs").arg(name).args(args);
    let (ok, out, err) = run_with_deadline(run, SCENARIO_DEADLINE);
    eprintln!("{name}:\n{out}{err}");
    assert!(ok, "scenario {name} failed:\n{out}\n{err}");
    let line = out.lines().find_map(|l| l.strip_prefix("RESULT ")).unwrap_or_else(|| panic!("no RESULT line:\n{out}"));
    Some(serde_json::from_str(line).expect("the RESULT line is JSON"))
}

/// A page writes 1,000 records offline, reloads, and has all of them, as
/// the same peer id, its next write continuing its own sequence (1001).
#[test]
fn a_page_writes_1000_records_offline_reloads_and_still_has_them() {
    let Some(result) = scenario("offline_writes_survive_reload", &[]) else { return };
    assert_eq!(result["records"], 1000);
}

/// Every write whose promise resolved (one at a time, and concurrent ones
/// sharing IndexedDB transactions) is there after Chromium is killed with
/// SIGKILL and started again on the same profile.
#[test]
fn acknowledged_writes_survive_the_browser_being_killed() {
    let Some(result) = scenario("acknowledged_writes_survive_a_browser_kill", &[]) else { return };
    assert_eq!(result["acknowledged"], result["after_restart"]);
}

/// A value that is not an object, an empty id, fields that are not an
/// object, resolving a missing node and a zero page size are each refused
/// with a message, and the database keeps working; a second tab opening
/// the same database is refused (two writers would reuse sequence numbers).
#[test]
fn bad_input_from_the_page_is_refused_and_the_database_keeps_working() {
    let Some(result) = scenario("bad_input_is_refused_and_the_database_keeps_working", &[]) else { return };
    assert_eq!(result["refusals"].as_array().map(Vec::len), Some(5));
}

/// `watch(prefix)` delivers the stored changes under its prefix, in order,
/// with the node after each (null after a delete), and nothing after it
/// is stopped.
#[test]
fn watch_delivers_stored_changes_under_its_prefix() {
    let Some(result) = scenario("watch_sees_stored_changes", &[]) else { return };
    assert_eq!(result["changes"], 3);
}

/// The example app (clients/js/example): a note added through its form is
/// listed, is still there after a reload, and can be ticked done.
#[test]
fn the_example_notes_app_keeps_a_note_across_a_reload() {
    let Some(result) = scenario("example_app_keeps_notes", &[]) else { return };
    assert_eq!(result["notes"], 1);
}

/// A node with the browser link on, and what a page needs to join it: the
/// link's URL, a ticket, the API address.
fn browser_node(dir: &Path) -> (Node, Vec<String>) {
    let node = Node::start_with(dir, &["--no-mdns", "--no-libp2p", "--browser-listen", "127.0.0.1:0"]);
    let url = node.started["browser"].as_str().unwrap_or_else(|| panic!("no browser URL in {}", node.started)).to_owned();
    let ticket = invite(dir, node.listen.as_deref().expect("a QUIC address"));
    let args = vec![format!("url={url}"), format!("ticket={ticket}"), format!("api={}", node.api), format!("node_pid={}", node.child.id())];
    (node, args)
}

/// Runs `name` against a fresh browser node; stops the node (cleanly)
/// before any assertion.
fn with_node(name: &str, ticket: impl FnOnce(&str) -> String) -> Option<(serde_json::Value, Node)> {
    built()?;
    let dir = tempfile::tempdir().unwrap();
    let (node, mut args) = browser_node(dir.path());
    let given = args[1].trim_start_matches("ticket=").to_owned();
    args[1] = format!("ticket={}", ticket(&given));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = std::panic::catch_unwind(|| scenario(name, &args));
    match result {
        Ok(result) => Some((result?, node)),
        Err(panic) => {
            let (_, stderr) = node.stop();
            eprintln!("node stderr:\n{stderr}");
            std::panic::resume_unwind(panic)
        }
    }
}

/// A page in Chromium links to a native node with the node's ticket and
/// they sync both ways: the page's write arrives on the node's `/changes`
/// with the page's peer id as its origin, a write through the node's API
/// arrives in the page, and the page lists the node as its peer.
#[test]
fn a_page_and_a_native_node_sync_both_ways_in_chromium() {
    let Some((result, node)) = with_node("page_and_node_sync_both_ways", str::to_owned) else { return };
    let (_, history) = node.request("GET", "/nodes/page:1/history", "");
    let (clean, stderr) = node.stop();
    let page = result["peer_id"].as_str().expect("the page's peer id");
    assert!(history.to_string().contains(page), "the node holds page:1 as the page's operation: {history}");
    assert!(clean, "{stderr}");
}

/// A page syncs, goes offline, writes 50 records while the node takes 50
/// through its API, reloads (its offline writes come back from IndexedDB),
/// reconnects: the page holds the node's 50, the node the page's 50 and the
/// write made before going offline.
#[test]
fn an_offline_page_converges_with_the_node_after_reconnecting() {
    let Some((result, node)) = with_node("offline_page_converges_after_reconnecting", str::to_owned) else { return };
    let (clean, stderr) = node.stop();
    assert_eq!((result["offline_after_reload"].as_u64(), result["on_node"].as_u64()), (Some(50), Some(50)));
    assert!(clean, "{stderr}");
}

/// A page whose ticket carries another network's secret is refused by the
/// node (`access_denied`) and its status says why; the node is unharmed.
#[test]
fn a_page_without_the_network_secret_is_refused_in_chromium() {
    let forge = |ticket: &str| {
        let real: pluresdb_security::Ticket = ticket.parse().expect("a ticket");
        let secret = pluresdb_security::NetworkSecret::generate().unwrap();
        pluresdb_security::Ticket { peer_id: real.peer_id, addresses: real.addresses, secret }.to_text().unwrap()
    };
    let Some((result, node)) = with_node("page_without_the_secret_is_refused", forge) else { return };
    let (status, peers) = node.request("GET", "/peers", "");
    let (clean, stderr) = node.stop();
    assert!(result["reason"].as_str().is_some_and(|r| !r.is_empty()), "{result}");
    assert_eq!(status, 200);
    assert!(!peers.to_string().contains("websocket"), "no page is linked: {peers}");
    assert!(clean, "{stderr}");
}

/// Two pages in separate browser contexts (their own storage and peer ids)
/// linked to one node: a write in either reaches the other through the
/// node, which relays operations between its peers. (Not WebRTC: pages do
/// not link to each other directly yet, see docs/browser.md.)
#[test]
fn two_pages_sync_with_each_other_through_the_node() {
    let Some((result, node)) = with_node("two_pages_sync_through_the_node", str::to_owned) else { return };
    let (_, a) = node.request("GET", "/nodes/shared:a", "");
    let (_, b) = node.request("GET", "/nodes/shared:b", "");
    let (clean, stderr) = node.stop();
    assert_eq!(result["pages"].as_array().map(Vec::len), Some(2));
    assert_eq!((a["value"]["by"].as_str(), b["value"]["by"].as_str()), (Some("a"), Some("b")));
    assert!(clean, "{stderr}");
}

/// Two pages in separate browser contexts, both linked to a node, open a
/// direct WebRTC link, page a using b's id as the node announced it (the
/// node tells its pages which pages are linked; the app passes no id)
/// (the node relays the offer, answer and candidates;
/// the pages prove their ids and the network secret over the data channel
/// as on every link). Then the node stops (SIGTERM): the pages keep
/// syncing both ways over the direct link.
#[test]
fn two_pages_keep_syncing_over_webrtc_after_the_node_is_gone() {
    let Some((result, node)) = with_node("two_pages_keep_syncing_over_webrtc_without_the_node", str::to_owned) else { return };
    let (clean, stderr) = node.stop();
    assert_eq!(result["direct_link"], "connected", "{result}");
    assert_eq!(result["node_link_after_stop"], "closed", "{result}");
    assert_eq!(result["announced"], result["pages"][1], "a linked to b by the id the node announced: {result}");
    assert_eq!(result["pages_after_stop"], serde_json::json!([]), "{result}");
    assert!(clean, "the node did not stop cleanly: {stderr}");
}

/// `connectPeer` retries: page b is off the node when page a asks for a
/// direct link, so the node drops a's offer and a's first attempt times
/// out. The attempt is dropped (status shows `retrying` with the reason),
/// b comes back, and a later attempt links them: the promise resolves, both
/// list the WebRTC link, and a write crosses it. (Before, one failed
/// attempt stayed in place and every later `connectPeer` did nothing.)
#[test]
fn a_failed_direct_link_attempt_is_dropped_and_retried_until_the_pages_link() {
    let Some((result, node)) = with_node("direct_link_retries_after_a_failed_attempt", str::to_owned) else { return };
    let (clean, stderr) = node.stop();
    assert_eq!(result["linked"]["state"], "connected", "{result}");
    assert!(result["linked"]["attempts"].as_u64().is_some_and(|n| n >= 2), "{result}");
    assert!(clean, "{stderr}");
}

/// A node started with --browser-listen also takes WebRTC (str0m, one UDP
/// socket): the page in Chromium, once linked over WebSocket, opens a data
/// channel to the node (offer and answer over the WebSocket's signal
/// frames) and the link there proves ids and the secret again; sync moves
/// to it. The node's `/peers` lists the page over `webrtc`, the page the
/// node over `webrtc`, and writes cross both ways.
#[test]
fn a_page_and_a_native_node_sync_over_webrtc_in_chromium() {
    let Some((result, node)) = with_node("page_and_node_sync_over_webrtc", str::to_owned) else { return };
    let (clean, stderr) = node.stop();
    assert_eq!(result["node_lists_page_as"], "webrtc", "{result}");
    assert!(clean, "{stderr}");
}

/// WebRTC between the page and the node cannot connect (the page takes
/// only TURN-relayed candidates and has no TURN server, as where no UDP
/// gets through): the page's WebRTC attempts to the node fail, its status
/// says `failed`, and the page and the node sync both ways over the
/// WebSocket, which the node lists as the page's transport.
#[test]
fn a_page_without_udp_to_the_node_falls_back_to_the_websocket_link() {
    let Some((result, node)) = with_node("page_falls_back_to_websocket_without_udp", str::to_owned) else { return };
    let (clean, stderr) = node.stop();
    assert_eq!(result["webrtc_to_node"]["state"], "failed", "{result}");
    assert_eq!(result["node_lists_page_as"], "websocket", "{result}");
    assert!(clean, "{stderr}");
}
