//! The OpenAPI document a fresh node serves, checked by tools nobody here
//! wrote, and the clients generated from it:
//!
//! - `openapi-spec-validator` (PyPI) and Redocly's `lint` (npm) accept it;
//! - `clients/openapi.json`, the copy users generate clients from without
//!   running a node, is that document;
//! - `clients/types/api.d.ts` is what `openapi-typescript` generates from it,
//!   and `clients/types/usage.ts` (code written against those types)
//!   compiles with `tsc --strict`, so an API change breaks the build of the
//!   browser package and the web UI, not their users.
//!
//! The tools are pinned in `tests/openapi-tools/` (`package-lock.json`,
//! `requirements.txt`); `.ci/run` installs them (`npm ci` there, and a
//! Python venv at `tests/openapi-tools/venv`). Without them a test says so
//! and skips, except with `CI=true`, where it fails.
//!
//! After an API change, `PLURESDB_UPDATE_CLIENTS=1 cargo test --test
//! openapi_tools` rewrites `clients/openapi.json` and
//! `clients/types/api.d.ts`; the diff is the API change, for review.

mod common;

use common::Node;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Problems Redocly's recommended rules report that are not mistakes of the
/// document, each with the reason; any other problem fails the test.
const REDOCLY_ALLOWED: &[(&str, &str, &str)] = &[
    (
        "operation-2xx-response",
        "#/paths/~1changes/get/responses",
        "GET /changes is a WebSocket: its success is the upgrade, 101 Switching Protocols",
    ),
    (
        "no-unused-components",
        "#/components/schemas/ChangeMessage",
        "ChangeMessage is the message of the /changes WebSocket, which OpenAPI has no place for; clients need its schema",
    ),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tools_dir() -> PathBuf {
    root().join("tests").join("openapi-tools")
}

/// `path` if it exists; otherwise `None` after saying why (or a failure
/// with `CI=true`).
fn installed(path: PathBuf, how: &str) -> Option<PathBuf> {
    if path.exists() {
        return Some(path);
    }
    let on_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(!on_ci, "CI=true, but {} is not installed ({how}; .ci/run does)", path.display());
    eprintln!("SKIPPED: {} is not installed ({how})", path.display());
    None
}

/// An npm tool of `tests/openapi-tools` (after `npm ci` there).
fn npm_tool(name: &str) -> Option<PathBuf> {
    let bin = tools_dir().join("node_modules").join(".bin");
    // The tools run on the Node 22 the lock file installs beside them.
    installed(bin.join("node"), "run `npm ci` in tests/openapi-tools")?;
    installed(bin.join(name), "run `npm ci` in tests/openapi-tools")
}

/// A command running an npm tool with its Node first on the PATH, and with
/// no telemetry or update checks (the tools must not call home).
fn npm_command(tool: &Path) -> Command {
    let bin = tool.parent().expect("node_modules/.bin");
    let path = std::env::join_paths(
        std::iter::once(bin.to_path_buf()).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .expect("a PATH");
    let mut command = Command::new(tool);
    command.env("PATH", path).env("REDOCLY_TELEMETRY", "off").env("REDOCLY_SUPPRESS_UPDATE_NOTICE", "true").env("NO_COLOR", "1");
    command
}

fn run(mut command: Command) -> Output {
    command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The document a fresh node serves (`GET /openapi.json`), parsed and as
/// the pretty-printed text clients are generated from.
fn served_document() -> (Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(dir.path(), &["--no-network"]);
    let (status, body) = node.request_text("GET", "/openapi.json", "", &[]);
    let (clean, stderr) = node.stop();
    assert!(clean, "{stderr}");
    assert_eq!(status, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).expect("the document is JSON");
    let pretty = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    (doc, pretty)
}

/// Writes the served document to a file in `dir`; returns its path.
fn document_file(dir: &Path) -> PathBuf {
    let path = dir.join("openapi.json");
    std::fs::write(&path, served_document().1).unwrap();
    path
}

/// Compares `generated` with the committed file `relative` (under the
/// repository root), or rewrites the file with `PLURESDB_UPDATE_CLIENTS=1`.
fn check_committed(relative: &str, generated: &str) {
    let path = root().join(relative);
    if std::env::var("PLURESDB_UPDATE_CLIENTS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, generated).unwrap();
        eprintln!("rewrote {relative}");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let first = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(committed.lines().count().min(generated.lines().count()));
        let around = |text: &str| text.lines().skip(first).take(5).collect::<Vec<_>>().join("\n");
        panic!(
            "{relative} is not what the node's document gives (first difference at line {}):\ncommitted:\n{}\ngenerated:\n{}\n\
             If the API change is meant, regenerate: PLURESDB_UPDATE_CLIENTS=1 cargo test --test openapi_tools",
            first + 1,
            around(&committed),
            around(generated)
        );
    }
}

#[test]
fn the_committed_document_is_the_one_a_node_serves() {
    let (_, pretty) = served_document();
    check_committed("clients/openapi.json", &pretty);
}

#[test]
fn openapi_spec_validator_from_pypi_accepts_the_served_document() {
    let venv = tools_dir().join("venv").join("bin");
    let how = "python3 -m venv tests/openapi-tools/venv, then its pip install --no-deps -r tests/openapi-tools/requirements.txt";
    let Some(validator) = installed(venv.join("openapi-spec-validator"), how) else { return };
    let dir = tempfile::tempdir().unwrap();
    let doc = document_file(dir.path());
    let mut validate = Command::new(validator);
    validate.arg(&doc);
    let output = run(validate);
    let (out, err) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success() && out.contains(": OK"), "openapi-spec-validator refused the document:\n{out}{err}");
}

#[test]
fn redocly_lint_finds_nothing_in_the_served_document_but_the_websocket() {
    let Some(redocly) = npm_tool("redocly") else { return };
    let dir = tempfile::tempdir().unwrap();
    let doc = document_file(dir.path());
    let mut lint = npm_command(&redocly);
    lint.current_dir(dir.path()).args(["lint", "--format=json"]).arg(&doc);
    let output = run(lint);
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("redocly lint printed no JSON report ({e}):\n{}{}", text(&output.stdout), text(&output.stderr)));
    let problems = report["problems"].as_array().expect("a list of problems");
    let mut unexpected = Vec::new();
    let mut seen = Vec::new();
    for problem in problems {
        let rule = problem["ruleId"].as_str().unwrap_or_default();
        let pointer = problem["location"][0]["pointer"].as_str().unwrap_or_default();
        if REDOCLY_ALLOWED.iter().any(|(r, p, _)| *r == rule && *p == pointer) {
            seen.push((rule.to_owned(), pointer.to_owned()));
        } else {
            unexpected.push(format!("{} {rule} at {pointer}: {}", problem["severity"], problem["message"]));
        }
    }
    assert!(unexpected.is_empty(), "redocly lint found:\n{}", unexpected.join("\n"));
    // An allowance the linter no longer needs goes: the list stays exact.
    for (rule, pointer, why) in REDOCLY_ALLOWED {
        assert!(seen.iter().any(|(r, p)| r == rule && p == pointer), "{rule} at {pointer} ({why}) is no longer reported: drop it");
    }
    // Redocly's exit status agrees: only warnings are left.
    assert!(output.status.success(), "redocly lint failed:\n{}", text(&output.stderr));
}

#[test]
fn the_committed_typescript_types_are_what_openapi_typescript_generates() {
    let Some(generator) = npm_tool("openapi-typescript") else { return };
    let dir = tempfile::tempdir().unwrap();
    let doc = document_file(dir.path());
    let out = dir.path().join("api.d.ts");
    let mut generate = npm_command(&generator);
    generate.current_dir(dir.path()).arg(&doc).arg("--output").arg(&out);
    let output = run(generate);
    assert!(output.status.success(), "openapi-typescript failed:\n{}{}", text(&output.stdout), text(&output.stderr));
    check_committed("clients/types/api.d.ts", &std::fs::read_to_string(&out).unwrap());
}

#[test]
fn code_written_against_the_typescript_types_compiles() {
    let Some(tsc) = npm_tool("tsc") else { return };
    let types = root().join("clients").join("types");
    let mut compile = npm_command(&tsc);
    compile.current_dir(&types).args([
        "--noEmit",
        "--strict",
        "--target",
        "es2022",
        "--module",
        "es2022",
        "--moduleResolution",
        "bundler",
        "usage.ts",
    ]);
    let output = run(compile);
    assert!(output.status.success(), "tsc refused clients/types/usage.ts:\n{}{}", text(&output.stdout), text(&output.stderr));
}
