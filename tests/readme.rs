//! The README says only what is true: its curl session and its CLI session
//! are run as written (parsed out of README.md, the blocks marked
//! `<!-- tests/readme.rs runs this block -->`) against a real `pluresdb
//! serve`, each command must succeed and its answer is checked; the Rust
//! version it names is the one the binary needs; the files it names are in
//! the repository.
//!
//! The curl session needs curl, and wscat from `tests/openapi-tools`
//! (`npm ci` there; `.ci/run` does both). Without them the test says so
//! and skips, except with `CI=true`, where it fails.

mod common;

use common::Node;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The line in README.md before each block this test runs.
const MARKER: &str = "<!-- tests/readme.rs runs this block -->";

/// The API address the README's examples use (the default).
const README_API: &str = "localhost:34570";

/// How long a live command (the change feed) is given for each message.
const MESSAGE_DEADLINE: Duration = Duration::from_secs(30);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn readme() -> String {
    std::fs::read_to_string(root().join("README.md")).unwrap()
}

/// The commands of each marked block, in order: one command a line,
/// comment-only and blank lines left out.
fn marked_blocks(readme: &str) -> Vec<Vec<String>> {
    let mut blocks = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if line.trim() != MARKER {
            continue;
        }
        assert_eq!(lines.next().map(str::trim), Some("```sh"), "a marked block must follow the marker at once, fenced as sh");
        let mut commands = Vec::new();
        for line in lines.by_ref() {
            if line.trim() == "```" {
                break;
            }
            assert!(!line.trim_end().ends_with('\\'), "one command a line: {line:?}");
            if !line.trim().is_empty() && !line.trim_start().starts_with('#') {
                commands.push(line.to_owned());
            }
        }
        blocks.push(commands);
    }
    blocks
}

/// The marked block whose first command starts with `first`.
fn block(first: &str) -> Vec<String> {
    let blocks = marked_blocks(&readme());
    let found: Vec<Vec<String>> = blocks.into_iter().filter(|b| b.first().is_some_and(|c| c.starts_with(first))).collect();
    assert_eq!(found.len(), 1, "README.md must mark exactly one block starting with {first:?} with {MARKER}");
    found.into_iter().next().unwrap()
}

/// Whether `program` runs; `None` after saying why it is missing (a
/// failure with `CI=true`).
fn require(program: &Path, how: &str) -> Option<()> {
    if Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Some(());
    }
    let on_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(!on_ci, "CI=true, but {} does not run ({how}; .ci/run does)", program.display());
    eprintln!("SKIPPED: {} does not run ({how})", program.display());
    None
}

/// `bash -c command` with `env`, in `cwd`.
fn shell(command: &str, cwd: &Path, env: &[(&str, String)]) -> Command {
    let mut shell = Command::new("bash");
    shell.args(["-o", "pipefail", "-c", command]).current_dir(cwd);
    for (name, value) in env {
        shell.env(name, value);
    }
    shell
}

/// The `METHOD /path?query` a curl command line of the README sends.
fn curl_request(command: &str, api: &str) -> String {
    let words: Vec<String> = command.split_whitespace().map(|w| w.trim_matches('\'').to_owned()).collect();
    let method = words.iter().position(|w| w == "-X").and_then(|i| words.get(i + 1)).cloned().unwrap_or_else(|| "GET".into());
    let url = words.iter().find(|w| w.starts_with(api)).unwrap_or_else(|| panic!("no URL of the node in {command:?}"));
    format!("{method} {}", &url[api.len()..])
}

/// Checks what a curl command of the README answered. Every request the
/// README makes must have a check here, so the README cannot show an
/// example whose answer nobody looked at.
fn check_curl_answer(request: &str, out: &str) -> Result<(), String> {
    let json = || serde_json::from_str::<Value>(out).map_err(|e| format!("not JSON ({e})"));
    let ok = |holds: bool, what: &str| if holds { Ok(()) } else { Err(format!("expected {what}")) };
    match request {
        "PUT /nodes/user:123" | "PUT /nodes/user:456" => {
            let receipt = json()?;
            ok(receipt["id"] == request.trim_start_matches("PUT /nodes/") && receipt["op"].is_string(), "a receipt for the node")
        }
        "GET /nodes/user:123" => {
            let node = json()?;
            ok(node["value"]["name"] == "Alice" && node["links"][0]["to"] == "user:456", "Alice, with her link to user:456")
        }
        "GET /nodes?prefix=user:" => {
            let page = json()?;
            let ids: Vec<&str> = page["nodes"].as_array().into_iter().flatten().filter_map(|n| n["id"].as_str()).collect();
            ok(ids.contains(&"user:123") && ids.iter().all(|id| id.starts_with("user:")), "the user: nodes")
        }
        "GET /nodes/user:123?follow=friend" => ok(json()?["value"]["name"] == "Bob", "Bob, reached through the link"),
        "GET /openapi.json" => {
            let doc = json()?;
            ok(
                doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")) && doc["paths"]["/nodes/{id}"].is_object(),
                "the OpenAPI document",
            )
        }
        "PUT /nodes/user:dan" | "PUT /nodes/user:eve" | "PUT /nodes/doc:1" | "PUT /nodes/doc:2" => {
            ok(json()?["op"].is_string(), "a receipt")
        }
        "POST /vectors" => {
            let index = json()?;
            ok(index["name"] == "doc:embedding" && index["points"] == 2, "the vector index doc:embedding with both documents")
        }
        "POST /vectors/doc:embedding/search" => ok(json()?["neighbours"][0]["node"]["id"] == "doc:1", "doc:1 (cats), nearest [1, 0, 0]"),
        "POST /indexes?wait=true" => {
            let index = json()?;
            ok(index["name"] == "user:age" && index["state"] == "ready", "the index user:age, built")
        }
        "GET /indexes" => ok(json()?[0]["name"] == "user:age", "the index listed"),
        "POST /query" => {
            let page = json()?;
            let ids: Vec<&str> = page["nodes"].as_array().into_iter().flatten().filter_map(|n| n["id"].as_str()).collect();
            ok(ids == ["user:dan"] && page["plan"]["select"]["method"].is_string(), "Dan (aged 45; Eve's report), with the plan")
        }
        "GET /metrics" => ok(out.contains("# TYPE pluresdb_") && out.lines().any(|l| l.starts_with("pluresdb_")), "Prometheus metrics"),
        other => Err(format!("this test has no check for the README's {other}: add one to check_curl_answer")),
    }
}

/// A live command (the change feed): started, then each line it prints is
/// read with a deadline while the test writes through the API.
struct Live {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    /// Kept open: wscat stops when its input ends.
    _input: std::process::ChildStdin,
}

impl Live {
    fn start(mut command: Command) -> Live {
        let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
        let input = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Live { child, lines, _input: input }
    }

    /// The next line, as JSON.
    fn next(&self, what: &str) -> Value {
        let line = self.lines.recv_timeout(MESSAGE_DEADLINE).unwrap_or_else(|e| panic!("no {what} from the change feed ({e})"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("the change feed printed {line:?}, not JSON ({e})"))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The README's curl session (nodes, links, the document, metrics, the
/// change feed) against a node on its own port: every request succeeds
/// (curl with `--fail-with-body`) and answers what the README says.
#[test]
fn the_readme_curl_session_runs_against_a_node() {
    let commands = block("curl -X PUT localhost:34570/nodes/user:123");
    let tools = root().join("tests").join("openapi-tools").join("node_modules").join(".bin");
    let Some(()) = require(Path::new("curl"), "install curl") else { return };
    let Some(()) = require(&tools.join("wscat"), "run `npm ci` in tests/openapi-tools") else { return };

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = Node::start_with(&data, &["--no-network"]);
    let port = node.api.rsplit(':').next().unwrap().to_owned();
    let api = format!("localhost:{port}");
    // curl's own configuration: fail on an error status (printing the
    // answer), no progress meter.
    std::fs::write(dir.path().join(".curlrc"), "fail-with-body\nsilent\nshow-error\n").unwrap();
    let path =
        std::env::join_paths(std::iter::once(tools).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()))).unwrap();
    let env = [("CURL_HOME", dir.path().display().to_string()), ("PATH", path.to_string_lossy().into_owned())];

    let mut problems = Vec::new();
    let mut feeds = 0;
    for readme_command in &commands {
        assert!(readme_command.contains(README_API), "{readme_command:?} does not name the node at {README_API}");
        let command = readme_command.replace(README_API, &api);
        if command.starts_with("wscat ") {
            feeds += 1;
            problems.extend(check_change_feed(&node, shell(&command, dir.path(), &env)).err().map(|e| format!("{readme_command}: {e}")));
            continue;
        }
        assert!(command.starts_with("curl "), "the curl session runs curl and wscat only: {readme_command:?}");
        let output = shell(&command, dir.path(), &env).output().unwrap();
        let out = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            problems.push(format!("{readme_command}: failed ({}): {out}{}", output.status, String::from_utf8_lossy(&output.stderr)));
            continue;
        }
        if let Err(e) = check_curl_answer(&curl_request(&command, &api), &out) {
            problems.push(format!("{readme_command}: {e}; it answered {}", out.chars().take(300).collect::<String>()));
        }
    }
    let (clean, stderr) = node.stop();
    assert!(problems.is_empty(), "the README's curl session:\n{}", problems.join("\n"));
    assert_eq!(feeds, 1, "the session shows the change feed once");
    assert!(clean, "{stderr}");
}

/// The README's change feed (`wscat -c 'ws://.../changes?prefix=user:'`):
/// it says `subscribed`, then shows a change to a `user:` node written
/// meanwhile, and nothing of other nodes.
fn check_change_feed(node: &Node, command: Command) -> Result<(), String> {
    let feed = Live::start(command);
    let subscribed = feed.next("subscribed message");
    if subscribed["type"] != "subscribed" {
        return Err(format!("the first message is not `subscribed`: {subscribed}"));
    }
    for (id, value) in [("other:1", r#"{"n":1}"#), ("user:789", r#"{"name":"Carol"}"#)] {
        let (status, body) = node.request("PUT", &format!("/nodes/{id}"), value);
        assert_eq!(status, 200, "{body}");
    }
    let change = feed.next("change");
    if change["type"] != "change" || change["op"]["node_id"] != "user:789" || change["node"]["value"]["name"] != "Carol" {
        return Err(format!("expected the change to user:789 (and nothing of other:1), got {change}"));
    }
    Ok(())
}

/// The README's CLI session, run line by line through a shell against a
/// running node (so every command goes through its API): each command
/// exits 0 and prints what the README says it does.
#[test]
fn the_readme_cli_session_runs_against_a_node() {
    let commands = block("alias pluresdb=");
    // The alias builds and runs this repository's binary; the test runs the
    // binary cargo built for it instead.
    assert_eq!(commands[0], "alias pluresdb='cargo run --release --quiet --'");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = Node::start_with(&data, &["--no-network"]);
    let env = [("PLURESDB_DATA_DIR", data.display().to_string()), ("PLURESDB_BIN", env!("CARGO_BIN_EXE_pluresdb").to_owned())];
    let mut problems = Vec::new();
    for readme_command in &commands[1..] {
        assert!(readme_command.starts_with("pluresdb "), "the CLI session runs pluresdb only: {readme_command:?}");
        let command = format!("pluresdb() {{ \"$PLURESDB_BIN\" \"$@\"; }}\n{readme_command}");
        let output = shell(&command, dir.path(), &env).output().unwrap();
        let (out, err) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        if !output.status.success() {
            problems.push(format!("{readme_command}: failed ({}): {out}{err}", output.status));
            continue;
        }
        if let Err(e) = check_cli_answer(readme_command, &out, dir.path()) {
            problems.push(format!("{readme_command}: {e}; it printed {out}{err}"));
        }
    }
    let (clean, stderr) = node.stop();
    assert!(problems.is_empty(), "the README's CLI session:\n{}", problems.join("\n"));
    assert!(clean, "{stderr}");
    // "created on first use": the node made the network secret.
    assert!(data.join("network.secret").is_file(), "the data directory holds network.secret");
}

/// The README's Queries section: its CLI block and its curl block, run
/// against one node (the CLI through the node's API), each answer checked.
#[test]
fn the_readme_query_sessions_run_against_a_node() {
    let cli_commands = block("pluresdb put user:ann");
    let curl_commands = block("curl -X PUT localhost:34570/nodes/user:dan");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = Node::start_with(&data, &["--no-network"]);
    let env = [("PLURESDB_DATA_DIR", data.display().to_string()), ("PLURESDB_BIN", env!("CARGO_BIN_EXE_pluresdb").to_owned())];
    let mut problems = Vec::new();
    for readme_command in &cli_commands {
        let command = format!("pluresdb() {{ \"$PLURESDB_BIN\" \"$@\"; }}\n{readme_command}");
        let output = shell(&command, dir.path(), &env).output().unwrap();
        let (out, err) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        if !output.status.success() {
            problems.push(format!("{readme_command}: failed ({}): {out}{err}", output.status));
            continue;
        }
        if let Err(e) = check_cli_answer(readme_command, &out, dir.path()) {
            problems.push(format!("{readme_command}: {e}; it printed {out}{err}"));
        }
    }
    // The curl block on a node of its own (its index is the CLI block's too).
    let (clean, stderr) = node.stop();
    assert!(clean, "{stderr}");
    let data = dir.path().join("curl-data");
    let node = Node::start_with(&data, &["--no-network"]);
    if require(Path::new("curl"), "install curl").is_some() {
        let port = node.api.rsplit(':').next().unwrap().to_owned();
        let api = format!("localhost:{port}");
        std::fs::write(dir.path().join(".curlrc"), "fail-with-body\nsilent\nshow-error\n").unwrap();
        let env = [("CURL_HOME", dir.path().display().to_string())];
        for readme_command in &curl_commands {
            assert!(readme_command.starts_with("curl ") && readme_command.contains(README_API), "{readme_command:?}");
            let command = readme_command.replace(README_API, &api);
            let output = shell(&command, dir.path(), &env).output().unwrap();
            let out = String::from_utf8_lossy(&output.stdout);
            if !output.status.success() {
                problems.push(format!("{readme_command}: failed ({}): {out}{}", output.status, String::from_utf8_lossy(&output.stderr)));
                continue;
            }
            if let Err(e) = check_curl_answer(&curl_request(&command, &api), &out) {
                problems.push(format!("{readme_command}: {e}; it answered {}", out.chars().take(300).collect::<String>()));
            }
        }
    }
    let (clean, stderr) = node.stop();
    assert!(problems.is_empty(), "the README's Queries section:\n{}", problems.join("\n"));
    assert!(clean, "{stderr}");
}

/// Checks what a command of the README's CLI session printed (or wrote,
/// for `export > file`), by its subcommand. Every subcommand the README
/// runs must have a check here.
fn check_cli_answer(command: &str, out: &str, cwd: &Path) -> Result<(), String> {
    let words: Vec<&str> = command.split('#').next().unwrap_or_default().split_whitespace().collect();
    let ok = |holds: bool, what: &str| if holds { Ok(()) } else { Err(format!("expected {what}")) };
    match words.get(1..).unwrap_or_default() {
        ["put", id, _] | ["update", id, _] | ["delete", id] => ok(out.contains(id), "the node written named"),
        ["get", "user:123"] => ok(out.contains("Alice") && out.contains("user:456"), "Alice and her link"),
        ["get", "user:123", "--follow", "friend"] => ok(out.contains("Bob"), "Bob, reached through the link"),
        ["list", "--prefix", "user:"] => ok(out.contains("user:123") && out.contains("user:456"), "both users"),
        ["history", "user:123"] => ok(out.contains("create") && out.contains("update"), "the create and the update"),
        ["export", ">", file] => {
            let text = std::fs::read_to_string(cwd.join(file)).map_err(|e| format!("no {file}: {e}"))?;
            ok(
                text.lines().any(|l| l.contains("\"user:456\"")) && !text.contains("\"user:123\""),
                "user:456 exported, deleted user:123 not",
            )
        }
        ["import", _] => ok(out.contains("imported 1 nodes"), "one node imported"),
        ["conflicts"] => ok(!out.contains("user:"), "no conflicts"),
        ["id"] => ok(out.trim().starts_with("12D3KooW"), "the peer id"),
        ["invite", "--address", _] => ok(out.trim().starts_with("pluresdb") && out.trim().len() > 40, "a ticket"),
        ["trust", "add", peer] => ok(out.contains(peer), "the peer allowed"),
        ["index", "create", ..] => ok(out.contains("is ready"), "the index built"),
        ["index", "list"] => ok(out.contains("user:age") && out.contains("#links") && out.contains("ready"), "both indexes, ready"),
        ["query", "--prefix", "user:", "--where", "'age", ">=", "30'", "--sort", "age", "--desc"] => {
            let ids: Vec<&str> = out.lines().filter_map(|l| l.split('\t').next()).collect();
            ok(ids == ["user:bob", "user:ann"], "Bob (51) then Ann (34)")
        }
        ["query", "--prefix", "user:", "--where", "'name", "=", "Bob'", "--step", "in:manager"] => {
            let ids: Vec<&str> = out.lines().filter_map(|l| l.split('\t').next()).collect();
            ok(ids == ["user:ann", "user:cid"], "Ann and Cid, who have Bob as manager")
        }
        ["query", "--prefix", "user:", "--where", "'age", ">", "30'", "--explain"] => {
            ok(out.contains("index user:age"), "the plan names the index")
        }
        other => Err(format!("this test has no check for `pluresdb {}`: add one to check_cli_answer", other.join(" "))),
    }
}

/// The Rust version the README asks for is the one the binary needs (the
/// package's `rust-version`; the workspace's 1.85 is for the browser-portable
/// crates only).
#[test]
fn the_readme_names_the_rust_version_the_binary_needs() {
    let manifest: toml::Table = std::fs::read_to_string(root().join("Cargo.toml")).unwrap().parse().unwrap();
    let needed = manifest["package"]["rust-version"].as_str().expect("the package's rust-version");
    let text = readme();
    let asked = format!("Rust {needed} or newer");
    assert!(text.contains(&asked), "README.md must say {asked:?} (Cargo.toml's rust-version)");
    let other_versions: Vec<&str> = text
        .match_indices("Rust 1.")
        .map(|(i, _)| &text[i..(i + 9).min(text.len())])
        .filter(|v| !v.starts_with(&format!("Rust {needed}")))
        .collect();
    assert!(other_versions.iter().all(|v| v.starts_with("Rust 1.85")), "README.md names other Rust versions: {other_versions:?}");
}

/// Every repository path the README names (a link, or a path in backticks
/// under one of the top-level directories) exists, inside the repository.
#[test]
fn every_path_the_readme_names_is_in_the_repository() {
    let text = readme();
    // The repository's top-level directories (a fresh clone's).
    let top = ["benches/", "clients/", "crates/", "docs/", "fuzz/", "src/", "tests/"];
    let mut named = Vec::new();
    for (i, _) in text.match_indices("](") {
        let rest = &text[i + 2..];
        let target = &rest[..rest.find(')').unwrap_or(rest.len())];
        if !target.contains("://") {
            named.push(target.split('#').next().unwrap_or_default().to_owned());
        }
    }
    for (n, piece) in text.split('`').enumerate() {
        if n % 2 == 1 && (piece.starts_with("../") || top.iter().any(|t| piece.starts_with(t))) && !piece.contains(' ') {
            named.push(piece.to_owned());
        }
    }
    assert!(named.len() > 10, "the README names files: {named:?}");
    let repo = root().canonicalize().unwrap();
    let missing: Vec<&String> =
        named.iter().filter(|p| root().join(p).canonicalize().map(|full| !full.starts_with(&repo)).unwrap_or(true)).collect();
    assert!(missing.is_empty(), "README.md names paths that are not in the repository: {missing:?}");
}

/// The error statuses the README lists are those the API's document lists
/// (`clients/openapi.json`, which tests/openapi_tools.rs keeps equal to
/// what a node serves).
#[test]
fn the_readme_lists_the_error_statuses_of_the_api_document() {
    let text = readme();
    let intro = "Errors are `{\"error\": ...}` with ";
    let start = text.find(intro).unwrap_or_else(|| panic!("README.md lists the error statuses after {intro:?}")) + intro.len();
    let sentence = &text[start..start + text[start..].find('.').unwrap_or(text.len() - start)];
    let listed: BTreeSet<&str> = sentence.split(|c: char| !c.is_ascii_digit()).filter(|w| w.len() == 3).collect();
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(root().join("clients").join("openapi.json")).unwrap()).unwrap();
    let mut documented = BTreeSet::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for operation in item.as_object().unwrap().values() {
            let statuses = operation["responses"].as_object().into_iter().flat_map(|r| r.keys());
            documented.extend(statuses.filter(|s| s.starts_with('4') || s.starts_with('5')).cloned());
        }
    }
    let documented: BTreeSet<&str> = documented.iter().map(String::as_str).collect();
    assert_eq!(listed, documented, "README.md's error statuses and the document's disagree");
}

/// The text of `text` from `start` to the first `end` after it.
fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text.find(start).unwrap_or_else(|| panic!("README.md has no {start:?}")) + start.len();
    let to = text[from..].find(end).unwrap_or_else(|| panic!("README.md has no {end:?} after {start:?}"));
    &text[from..from + to]
}

/// The settings the README lists are those `pluresdb config show` prints.
#[test]
fn the_readme_lists_every_setting_config_show_prints() {
    let text = readme();
    let sentence = between(&text, "Settings come from", "`pluresdb config show` prints");
    let listed: BTreeSet<String> = sentence
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        .map(str::to_owned)
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let out = common::cli(dir.path(), &["--json", "config", "show"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    // `file` is where the settings came from, not a setting.
    let settings: BTreeSet<String> = shown.as_object().unwrap().keys().filter(|k| *k != "file").cloned().collect();
    assert_eq!(listed, settings, "README.md's settings and `pluresdb config show`'s disagree");
}

/// The exit codes the README lists are those `pluresdb --help` lists.
#[test]
fn the_readme_lists_the_exit_codes_of_the_binary() {
    let text = readme();
    let listed: BTreeSet<String> = between(&text, "lists the exit codes (", ")")
        .split(',')
        .filter_map(|part| part.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let help = Command::new(env!("CARGO_BIN_EXE_pluresdb")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let section = help.split_once("Exit codes:").map(|(_, rest)| rest).unwrap_or_else(|| panic!("no exit codes in {help}"));
    let codes: BTreeSet<String> = section
        .lines()
        .skip(1)
        .take_while(|line| line.starts_with(' '))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|word| word.chars().all(|c| c.is_ascii_digit()))
        .map(str::to_owned)
        .collect();
    assert!(codes.len() >= 5, "pluresdb --help lists exit codes: {help}");
    assert_eq!(listed, codes, "README.md's exit codes and `pluresdb --help`'s disagree");
}

#[test]
fn marked_blocks_are_parsed_by_command() {
    let text = format!("x\n{MARKER}\n```sh\n# comment\ncurl a   # trailing\n\ncurl b\n```\n```sh\nnot marked\n```\n");
    assert_eq!(marked_blocks(&text), vec![vec!["curl a   # trailing".to_owned(), "curl b".to_owned()]]);
    assert_eq!(curl_request("curl -X PUT localhost:1/nodes/a -d '{}'", "localhost:1"), "PUT /nodes/a");
    assert_eq!(curl_request("curl 'localhost:1/nodes?prefix=a'   # x", "localhost:1"), "GET /nodes?prefix=a");
    assert!(check_curl_answer("DELETE /nodes/x", "{}").is_err(), "a request without a check fails");
}
