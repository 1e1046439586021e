//! The node's web UI (crates/server/ui, embedded in the binary, served at
//! `/` of the API): its page and assets over HTTP, and the pages in a real
//! browser (Debian's headless Chromium driven by playwright-core,
//! `clients/js/test/web_ui.mjs`; no browser is downloaded).
//!
//! The browser tests need `chromium` and `npm ci` in clients/js (Node 22
//! and playwright-core); without them they say which and skip, except with
//! `CI=true`, where they fail. The HTTP tests always run.
//! `PLURESDB_UI_SCREENSHOTS=$PWD/docs/ui cargo test --test web_ui` retakes
//! the README's screenshots.

mod common;

use common::{concurrent_names, run_with_deadline, Node};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A browser scenario ends within this on a loaded two-core machine, or is
/// killed and fails.
const SCENARIO_DEADLINE: Duration = Duration::from_secs(240);

/// The budget for the first load of the UI, gzipped.
const FIRST_LOAD_BUDGET: usize = 300 * 1024;

/// What the first load fetches.
const FIRST_LOAD: &[&str] = &["/", "/ui/app.js", "/ui/style.css", "/ui/vendor/preact-htm.js"];

fn host(node: &Node) -> String {
    format!("Host: {}", node.api)
}

/// `GET /` is the page, as HTML, checked again on each load (`no-cache`
/// with an `ETag`, 304 when unchanged), framed by no one and loading only
/// from its own origin; each asset has its type; the first load is under
/// its gzipped budget.
#[test]
fn the_page_and_its_assets_are_served_with_their_types_and_caching() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(dir.path(), &["--no-network"]);
    let page = node.exchange("GET", "/", &[&host(&node)], "");
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(page.body.starts_with("<!doctype html>"), "{}", page.body);
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    let csp = page.header("content-security-policy").expect("a Content-Security-Policy");
    for directive in ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    let etag = page.header("etag").expect("an ETag").to_owned();
    let again = node.exchange("GET", "/", &[&host(&node), &format!("If-None-Match: {etag}")], "");
    assert_eq!(again.status, 304);
    assert_eq!(again.body, "");
    let stale = node.exchange("GET", "/", &[&host(&node), "If-None-Match: \"0000000000000000\""], "");
    assert_eq!(stale.status, 200);

    let mut gzipped = 0;
    for path in FIRST_LOAD {
        let answer = node.exchange("GET", path, &[&host(&node)], "");
        assert_eq!(answer.status, 200, "GET {path}: {}", answer.body);
        let expected = match path.rsplit('.').next() {
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            _ => "text/html; charset=utf-8",
        };
        assert_eq!(answer.header("content-type"), Some(expected), "GET {path}");
        assert_eq!(answer.header("cache-control"), Some("no-cache"), "GET {path}");
        assert!(answer.header("etag").is_some(), "GET {path} has no ETag");
        gzipped += gzip_size(answer.body.as_bytes());
    }
    assert!(gzipped < FIRST_LOAD_BUDGET, "the first load is {gzipped} bytes gzipped");
    eprintln!("first load: {gzipped} bytes gzipped");
    let (clean, stderr) = node.stop();
    assert!(clean, "{stderr}");
}

/// Paths outside the embedded set are 404 whatever they try: `..` (raw
/// and percent-encoded), encoded slashes, a directory, files that are in
/// the source folder but not embedded, case variants; the node keeps
/// serving afterwards.
#[test]
fn asset_paths_outside_the_embedded_set_are_404() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(dir.path(), &["--no-network"]);
    for path in [
        "/ui/",
        "/ui",
        "/ui/../Cargo.toml",
        "/ui/../ui/app.js",
        "/ui/vendor/../app.js",
        "/ui/%2e%2e/Cargo.toml",
        "/ui/..%2fCargo.toml",
        "/ui/..%2F..%2FCargo.toml",
        "/ui/vendor%2Fpreact-htm.js",
        "/ui/vendor%2fpreact-htm.js",
        "/ui/%61pp.js",
        "/ui/app.js/",
        "/ui//app.js",
        "/ui/APP.JS",
        "/ui/index.html",
        "/ui/vendor/LICENSE-htm",
        "/ui/vendor/README.md",
        "/ui/vendor/",
        "/index.html",
        "/app.js",
    ] {
        let answer = node.exchange("GET", path, &[&host(&node)], "");
        assert_eq!(answer.status, 404, "GET {path}: {}", answer.body);
        assert_eq!(answer.header("content-type"), Some("application/json"), "GET {path}");
    }
    assert_eq!(node.exchange("GET", "/ui/app.js", &[&host(&node)], "").status, 200);
    let (clean, stderr) = node.stop();
    assert!(clean, "{stderr}");
}

/// The UI's routes pass the same checks as the API: a rebound `Host` is
/// refused 403, a token in the URL 400; with the token required, the page
/// itself (which holds no data) loads without it and the API it calls
/// still answers 401.
#[test]
fn the_page_is_behind_the_host_check_and_asks_for_the_token_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(dir.path(), &["--no-network", "--require-token"]);
    assert_eq!(node.exchange("GET", "/", &["Host: evil.example"], "").status, 403);
    assert_eq!(node.exchange("GET", "/ui/app.js", &["Host: evil.example"], "").status, 403);
    assert_eq!(node.exchange("GET", "/?token=x", &[&host(&node)], "").status, 400);
    assert_eq!(node.exchange("GET", "/", &[&host(&node)], "").status, 200);
    assert_eq!(node.exchange("GET", "/ui/app.js", &[&host(&node)], "").status, 200);
    assert_eq!(node.exchange("GET", "/status", &[&host(&node)], "").status, 401);
    let (clean, stderr) = node.stop();
    assert!(clean, "{stderr}");
}

fn gzip_size(bytes: &[u8]) -> usize {
    let mut child = Command::new("gzip").arg("-9c").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("gzip");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().expect("gzip runs");
    writer.join().expect("writer").expect("gzip reads its input");
    assert!(output.status.success());
    output.stdout.len()
}

// ---- In the browser ----

fn package() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients").join("js")
}

/// Node 22, installed by `npm ci` in clients/js as its lock file pins it.
fn node_js() -> PathBuf {
    package().join("node_modules").join(".bin").join("node")
}

/// Whether the browser tests can run (else they skip, or fail on CI).
fn browser_ready() -> bool {
    let mut missing = Vec::new();
    if !Path::new("/usr/bin/chromium").exists() {
        missing.push("chromium (apt-get install chromium)");
    }
    if !node_js().exists() || !package().join("node_modules/playwright-core/package.json").exists() {
        missing.push("Node 22 and playwright-core (npm ci in clients/js)");
    }
    if missing.is_empty() {
        return true;
    }
    let missing = missing.join(", ");
    assert!(!std::env::var("CI").is_ok_and(|v| v == "true"), "CI=true, but the web UI tests cannot run without: {missing}");
    eprintln!("web UI browser tests skipped: missing {missing}");
    false
}

/// Runs `scenario` of clients/js/test/web_ui.mjs; returns its `RESULT`.
/// With `PLURESDB_UI_SCREENSHOTS=DIR` the scenarios also save the
/// screenshots of docs/ui there.
fn scenario(name: &str, args: &[String]) -> serde_json::Value {
    let screenshots = std::env::var("PLURESDB_UI_SCREENSHOTS").ok().map(|dir| format!("screenshots={dir}"));
    let mut command = Command::new(node_js());
    command.current_dir(package()).arg("test/web_ui.mjs").arg(name).args(args).args(screenshots);
    let (ok, out, err) = run_with_deadline(command, SCENARIO_DEADLINE);
    eprintln!("{name}:\n{out}{err}");
    assert!(ok, "scenario {name} failed or ran out of time:\n{out}\n{err}");
    let line = out.lines().find_map(|l| l.strip_prefix("RESULT ")).unwrap_or_else(|| panic!("no RESULT line:\n{out}"));
    serde_json::from_str(line).expect("the RESULT line is JSON")
}

/// In Chromium: the Status page shows the node's peer id and version; the
/// Peers page loads; on the Data page an invalid value is refused with the
/// parser's message and a non-object with its own, then a node is created,
/// listed and opened (its link to a missing node marked), and it arrives on
/// the Live page (watching its prefix); a write made with the CLI
/// (`pluresdb put`, through the node's API) appears on both without a
/// reload; the node is edited (two operations in its
/// history) and its link followed; the server's 400 for a bad id is shown;
/// a node is deleted, leaves the list and its deletion shows on Live; the
/// Status page charts the writes, and again after a reload (the node keeps
/// the last minutes' counts: GET /status/rates counts the 4); no page logs
/// an error; the first load is under 300 KB gzipped.
#[test]
fn in_a_browser_status_shows_the_node_and_a_node_created_on_data_arrives_on_live() {
    if !browser_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(dir.path(), &["--no-network"]);
    let peer_id = node.started["peer_id"].as_str().expect("a peer id").to_owned();
    let args = [
        format!("api={}", node.api),
        format!("peer_id={peer_id}"),
        format!("cli={}", env!("CARGO_BIN_EXE_pluresdb")),
        format!("data_dir={}", dir.path().display()),
    ];
    let result = std::panic::catch_unwind(|| scenario("status_data_live", &args));
    let (clean, stderr) = node.stop();
    let result = result.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(clean, "{stderr}");
    let gzipped = result["first_load_gzip_bytes"].as_u64().expect("the first load's weight");
    assert!(gzipped > 0 && gzipped < FIRST_LOAD_BUDGET as u64, "{result}");
}

/// In Chromium: node A's Peers page connects to node B (same network, no
/// discovery) by its QUIC address through the form, and lists B connected
/// over QUIC; B's row shows when it last synced, that it lacks nothing
/// and the bytes each way (as A's /peers answers them) once a write of A
/// reached B; cut off (A in allowlist mode), B's row shows the 3
/// operations A wrote since (so does the Status page's pending per peer),
/// and 0 again once reconnected (B then holds them); the
/// page shows A's trust mode and listen address, and makes
/// an invite ticket once given the token (which an invite always needs),
/// with its QR code: the code the page draws decodes (rqrr) to exactly the
/// ticket `pluresdb invite` prints for A; a ticket too long for a QR code
/// is still shown, with why it has none.
#[test]
fn in_a_browser_the_peers_page_connects_a_second_node_and_lists_it() {
    if !browser_ready() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (root.path().join("a"), root.path().join("b"));
    let quiet = ["--no-mdns", "--no-libp2p"];
    let a = Node::start_with(&dir_a, &quiet);
    std::fs::create_dir_all(&dir_b).unwrap();
    std::fs::copy(dir_a.join("network.secret"), dir_b.join("network.secret")).unwrap();
    let b = Node::start_with(&dir_b, &quiet);
    let peer_b = b.started["peer_id"].as_str().expect("a peer id").to_owned();
    let address_b = b.listen.clone().expect("B listens on QUIC");
    let address_a = a.listen.clone().expect("A listens on QUIC");
    let token = std::fs::read_to_string(dir_a.join("api.token")).expect("api.token");
    let qr_pixels = root.path().join("qr.grey");
    let args = [
        format!("api={}", a.api),
        format!("peer_b={peer_b}"),
        format!("address_b={address_b}"),
        format!("api_b={}", b.api),
        format!("address_a={address_a}"),
        format!("token={}", token.trim()),
        format!("qr_pixels={}", qr_pixels.display()),
    ];
    let result = std::panic::catch_unwind(|| scenario("peers_connect", &args));
    // What `pluresdb invite` prints for A, while A runs.
    let invite =
        Command::new(env!("CARGO_BIN_EXE_pluresdb")).arg("--data-dir").arg(&dir_a).arg("invite").output().expect("pluresdb invite");
    let (clean_b, stderr_b) = b.stop();
    let (clean_a, stderr_a) = a.stop();
    let result = result.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(clean_a && clean_b, "{stderr_a}\n{stderr_b}");
    assert_eq!(result["connected"], 1);
    assert!(invite.status.success(), "pluresdb invite: {}", String::from_utf8_lossy(&invite.stderr));
    let printed = String::from_utf8(invite.stdout).expect("a ticket is text");
    let decoded = decode_qr(&qr_pixels, &result);
    assert_eq!(decoded, printed.trim(), "the QR code on the Peers page is not the ticket `pluresdb invite` prints");
    assert_eq!(result["ticket"], printed.trim(), "the ticket shown is not the one `pluresdb invite` prints");
}

/// The text of the one QR code in the grey levels the page drew
/// (`width` x `height` bytes, a row at a time, from the scenario's result).
fn decode_qr(pixels: &Path, result: &serde_json::Value) -> String {
    let grey = std::fs::read(pixels).expect("the scenario saved the QR code's pixels");
    let width = result["qr_width"].as_u64().expect("qr_width") as usize;
    let height = result["qr_height"].as_u64().expect("qr_height") as usize;
    assert_eq!(grey.len(), width * height, "{result}");
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(width, height, |x, y| grey[y * width + x]);
    let grids = image.detect_grids();
    assert_eq!(grids.len(), 1, "QR codes found in the image the page drew: {}", grids.len());
    let (_, text) = grids[0].decode().expect("the QR code decodes");
    text
}

/// In Chromium: the trust mode and the allowlist are changed on the Peers
/// page (with the token, asked for once) and node A's behaviour follows:
/// a node S of another network (which admits A) is refused while A is in
/// secret mode, connects once the page allows its id, is dropped and
/// refused again once the page removes it, and connects after the page switches A to
/// open; a bad peer id shows the API's 400; /trust agrees at each step.
#[test]
fn in_a_browser_the_allowlist_and_trust_mode_are_changed_and_the_node_follows() {
    if !browser_ready() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (dir_a, dir_s) = (root.path().join("a"), root.path().join("s"));
    let quiet = ["--no-mdns", "--no-libp2p"];
    let a = Node::start_with(&dir_a, &quiet);
    let s = Node::start_with(&dir_s, &quiet);
    let peer_a = a.started["peer_id"].as_str().expect("a peer id").to_owned();
    let peer_s = s.started["peer_id"].as_str().expect("a peer id").to_owned();
    // S admits A by its id (S's own choice, not under test).
    let token_s = std::fs::read_to_string(dir_s.join("api.token")).expect("api.token");
    let allowed =
        s.exchange("PUT", &format!("/trust/peers/{peer_a}"), &[&host(&s), &format!("Authorization: Bearer {}", token_s.trim())], "");
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    let token = std::fs::read_to_string(dir_a.join("api.token")).expect("api.token");
    let args = [
        format!("api={}", a.api),
        format!("peer_s={peer_s}"),
        format!("address_s={}", s.listen.clone().expect("S listens on QUIC")),
        format!("token={}", token.trim()),
    ];
    let result = std::panic::catch_unwind(|| scenario("trust_changed", &args));
    let (clean_s, stderr_s) = s.stop();
    let (clean_a, stderr_a) = a.stop();
    let result = result.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(clean_a && clean_s, "{stderr_a}\n{stderr_s}");
    assert_eq!((result["refused"].as_u64(), result["connected"].as_u64()), (Some(2), Some(2)), "{result}");
}

/// In Chromium: the Conflicts page shows a field's two concurrent values
/// (written by two replicas) side by side with their writers, and one
/// click resolves it: the page then shows no conflict and the node holds
/// the value kept.
#[test]
fn in_a_browser_a_conflict_is_shown_side_by_side_and_resolved_with_one_click() {
    if !browser_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    concurrent_names(dir.path());
    let node = Node::start_with(dir.path(), &["--no-network"]);
    let result = std::panic::catch_unwind(|| scenario("conflict_resolved", &[format!("api={}", node.api)]));
    let (clean, stderr) = node.stop();
    let result = result.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(clean, "{stderr}");
    assert_eq!(result["resolved"], 1);
}

/// In Chromium: the Data page imports a 2,500-line NDJSON file of 7.4 MB
/// as a stream (the test makes reading a file whole fail) in parts of at
/// most 1 MiB, the progress bar moving by bytes; skips and names its bad
/// line (2000) and its line longer than the API takes (1500); keeps
/// multi-byte text and the last line (no newline) intact; and exports the
/// prefix back as NDJSON holding all 2,498 nodes.
#[test]
fn in_a_browser_a_file_is_imported_with_progress_and_exported() {
    if !browser_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(dir.path(), &["--no-network"]);
    let result = std::panic::catch_unwind(|| scenario("import_export", &[format!("api={}", node.api)]));
    let (clean, stderr) = node.stop();
    let result = result.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(clean, "{stderr}");
    assert_eq!((result["imported"].as_u64(), result["exported"].as_u64()), (Some(2498), Some(2498)), "{result}");
}

/// In Chromium: the Graph page of a node shows its links out two hops
/// deep (a missing target marked) and a link in; a wheel notch zooms by
/// 1.2 (in and out) and a drag from an empty corner moves every node with
/// the pointer to the pixel, without recentring; a click recentres on a
/// neighbour (the old centre then links in), a double-click opens a node
/// on the Data page (without recentring first).
#[test]
fn in_a_browser_the_graph_shows_links_out_and_in_and_opens_a_node() {
    if !browser_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(dir.path(), &["--no-network"]);
    let result = std::panic::catch_unwind(|| scenario("graph", &[format!("api={}", node.api)]));
    let (clean, stderr) = node.stop();
    let result = result.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(clean, "{stderr}");
    assert_eq!(result["nodes"], 5);
}

/// In Chromium, with the token required: the page asks for it once, and
/// after a reload of the tab it does not ask again (sessionStorage).
#[test]
fn in_a_browser_the_token_is_asked_once_per_tab() {
    if !browser_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(dir.path(), &["--no-network", "--require-token"]);
    let peer_id = node.started["peer_id"].as_str().expect("a peer id").to_owned();
    let token = std::fs::read_to_string(dir.path().join("api.token")).expect("api.token");
    let args = [format!("api={}", node.api), format!("peer_id={peer_id}"), format!("token={}", token.trim())];
    let result = std::panic::catch_unwind(|| scenario("token_asked_once", &args));
    let (clean, stderr) = node.stop();
    let result = result.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(clean, "{stderr}");
    assert_eq!(result["asked"], 1);
}
