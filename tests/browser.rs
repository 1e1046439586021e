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

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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

/// Runs `command` to its end or until `deadline` (then kills it).
fn run_with_deadline(mut command: Command, deadline: Duration) -> (bool, String, String) {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start node");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let give_up = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break Some(status);
        }
        if Instant::now() > give_up {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    match status {
        Some(status) => (status.success(), out, err),
        None => (false, out, format!("{err}\n(killed after {deadline:?})")),
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
