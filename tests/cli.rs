//! The `pluresdb` binary run as a user runs it: commands against a data
//! directory, their output, exit codes, and what survives errors and crashes.

mod common;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// A temporary directory only its owner can open, as a data directory
/// should be (the node warns about others, on standard error).
fn private_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    dir
}

fn pluresdb(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pluresdb"));
    cmd.arg("--data-dir").arg(dir).env_remove("PLURESDB_DATA_DIR").env_remove("PLURESDB_RESOLVER");
    cmd
}

fn run(dir: &Path, args: &[&str]) -> Output {
    pluresdb(dir).args(args).output().expect("run pluresdb")
}

fn ok_json(dir: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = run(dir, &all);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn fails_with(dir: &Path, args: &[&str], code: i32, message: &str) {
    let out = run(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(stderr.contains(message), "{args:?}: expected {message:?} in {stderr:?}");
    assert_eq!(stderr.trim().lines().count(), 1, "one-line error expected: {stderr:?}");
}

#[test]
fn put_get_follow_list_history_delete() {
    let dir = private_tempdir();
    let d = dir.path();
    ok_json(d, &["put", "user:123", r##"{"name":"Alice","friend":{"#":"user:456"}}"##]);

    let alice = ok_json(d, &["get", "user:123"]);
    assert_eq!(alice["value"], json!({"name": "Alice", "friend": {"#": "user:456"}}));
    assert_eq!(alice["links"], json!([{"field": "friend", "to": "user:456", "exists": false}]), "dangling link shown");
    let text = String::from_utf8(run(d, &["get", "user:123"]).stdout).unwrap();
    assert!(text.contains("friend -> user:456 (dangling"), "{text}");
    fails_with(d, &["get", "user:123", "--follow", "friend"], 3, "does not exist");

    ok_json(d, &["put", "user:456", r#"{"name":"Bob"}"#]);
    assert_eq!(ok_json(d, &["get", "user:123", "--follow", "friend"])["value"]["name"], "Bob");
    fails_with(d, &["get", "user:123", "--follow", "name"], 3, "is not a link");

    ok_json(d, &["put", "post:1", r#"{"title":"hi"}"#]);
    let listed = ok_json(d, &["list", "--prefix", "user:"]);
    let ids: Vec<&str> = listed["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["user:123", "user:456"]);
    let page = ok_json(d, &["list", "--limit", "1"]);
    assert_eq!(page["next_after"], "post:1");
    assert_eq!(ok_json(d, &["list", "--limit", "1", "--after", "post:1"])["nodes"][0]["id"], "user:123");

    ok_json(d, &["update", "user:123", r#"{"age":30,"name":null}"#]);
    assert_eq!(ok_json(d, &["get", "user:123"])["value"], json!({"age": 30, "friend": {"#": "user:456"}}));
    let history = ok_json(d, &["history", "user:123"]);
    let kinds: Vec<&str> = history.as_array().unwrap().iter().map(|op| op["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["create", "update"]);

    ok_json(d, &["delete", "user:123"]);
    fails_with(d, &["get", "user:123"], 3, "not found");
    let history = ok_json(d, &["history", "user:123"]);
    assert_eq!(history[0]["type"], "delete", "a deleted node's history is its tombstone");
    assert_eq!(ok_json(d, &["list", "--prefix", "user:"])["nodes"].as_array().unwrap().len(), 1);
    fails_with(d, &["delete", "user:123"], 3, "not found");
}

#[test]
fn bad_input_is_a_one_line_error_and_loses_nothing() {
    let dir = private_tempdir();
    let d = dir.path();
    ok_json(d, &["put", "keep:1", r#"{"v":1}"#]);
    fails_with(d, &["put", "keep:1", "{not json"], 2, "not valid JSON");
    fails_with(d, &["put", "keep:1", "[1,2]"], 2, "must be a JSON object, found an array");
    fails_with(d, &["put", "keep:1", "\"text\""], 2, "found a string");
    fails_with(d, &["put", "", "{}"], 2, "it is empty");
    let long = "x".repeat(513);
    fails_with(d, &["put", &long, "{}"], 2, "the limit is 512");
    let big = format!(r#"{{"blob":"{}"}}"#, "y".repeat(1024 * 1024));
    let mut put = pluresdb(d).args(["put", "keep:1", "-"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    put.stdin.take().unwrap().write_all(big.as_bytes()).unwrap();
    let out = put.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the limit is 1048576"));
    fails_with(d, &["get", "missing"], 3, "not found");
    assert_eq!(ok_json(d, &["get", "keep:1"])["value"], json!({"v": 1}));

    let out = run(d, &["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Exit codes") && help.contains("3  not found"), "{help}");
}

#[test]
fn a_locked_or_corrupted_data_directory_is_refused_untouched() {
    let dir = private_tempdir();
    let d = dir.path();
    ok_json(d, &["put", "a", "{}"]);

    // An import waiting on its standard input holds the directory open;
    // its first acknowledgement says it has opened the store.
    let mut holder =
        pluresdb(d).args(["--json", "import", "-", "--batch-size", "1"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = holder.stdin.take().unwrap();
    stdin.write_all(b"{\"id\":\"b\",\"value\":{}}\n").unwrap();
    let mut acks = BufReader::new(holder.stdout.take().unwrap()).lines();
    assert_eq!(acks.next().unwrap().unwrap(), r#"{"committed":1}"#);
    fails_with(d, &["get", "a"], 1, "in use by another process");
    drop(stdin);
    assert!(holder.wait().unwrap().success());
    assert_eq!(ok_json(d, &["get", "b"])["id"], "b");

    let file = d.join("pluresdb.redb");
    let garbage: Vec<u8> = (0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    std::fs::write(&file, &garbage).unwrap();
    fails_with(d, &["get", "a"], 1, "is corrupted");
    assert_eq!(std::fs::read(&file).unwrap(), garbage, "a corrupted file is never rewritten");
}

#[test]
fn import_reports_bad_lines_and_export_round_trips() {
    let dir = private_tempdir();
    let d = dir.path();
    let input = d.join("in.ndjson");
    std::fs::write(
        &input,
        "{\"id\":\"n:1\",\"value\":{\"a\":1}}\n\n{\"id\":\"n:2\",\"value\":[1]}\n{\"id\":\"n:3\",\"value\":{\"b\":{\"#\":\"n:1\"}}}\n",
    )
    .unwrap();
    let data = d.join("data");
    let out = run(&data, &["import", input.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 3") && stderr.contains("imported 1 nodes before it"), "{stderr}");

    let report = run(&data, &["--json", "import", "--on-error", "skip", input.to_str().unwrap()]);
    assert!(report.status.success());
    let last: Value = serde_json::from_slice(report.stdout.split(|&b| b == b'\n').rev().find(|l| !l.is_empty()).unwrap()).unwrap();
    assert_eq!(last, json!({"imported": 2, "skipped": 1}));
    assert!(String::from_utf8_lossy(&report.stderr).contains("line 3"));

    let exported = d.join("out.ndjson");
    assert!(run(&data, &["export", exported.to_str().unwrap()]).status.success());
    let copy = d.join("copy");
    assert!(run(&copy, &["import", exported.to_str().unwrap()]).status.success());
    let before = ok_json(&data, &["list"]);
    let after = ok_json(&copy, &["list"]);
    let values = |v: &Value| v["nodes"].as_array().unwrap().iter().map(|n| (n["id"].clone(), n["value"].clone())).collect::<Vec<_>>();
    assert_eq!(values(&before), values(&after));
}

/// Kills an import with SIGKILL in the middle of a stream of writes; every
/// batch it acknowledged must be there after a clean reopen.
#[test]
fn sigkill_during_writes_keeps_every_acknowledged_write() {
    let dir = private_tempdir();
    let d = dir.path();
    let mut child = pluresdb(d)
        .args(["--json", "import", "-", "--batch-size", "50"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        for i in 0..1_000_000u32 {
            let line = format!("{{\"id\":\"item:{i:07}\",\"value\":{{\"i\":{i},\"pad\":\"{}\"}}}}\n", "p".repeat(64));
            if stdin.write_all(line.as_bytes()).is_err() {
                return i;
            }
        }
        1_000_000
    });
    let mut acks = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acknowledged = 0u64;
    while acknowledged < 2_000 {
        let line = acks.next().expect("import ended early").unwrap();
        acknowledged = serde_json::from_str::<Value>(&line).unwrap()["committed"].as_u64().unwrap();
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let sent = writer.join().unwrap();
    assert!(u64::from(sent) > acknowledged);

    // Reopens cleanly; every acknowledged write is present, in order.
    let mut after: Option<String> = None;
    let mut present = 0u64;
    loop {
        let mut args = vec!["list", "--prefix", "item:", "--limit", "1000"];
        if let Some(a) = &after {
            args.extend(["--after", a.as_str()]);
        }
        let page = ok_json(d, &args);
        let nodes = page["nodes"].as_array().unwrap();
        for node in nodes {
            assert_eq!(node["id"], format!("item:{present:07}"), "writes are committed in order, without holes");
            assert_eq!(node["value"]["i"], present);
            present += 1;
        }
        match page["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert!(present >= acknowledged, "{present} present, {acknowledged} acknowledged");
    ok_json(d, &["put", "after:crash", "{}"]);
}

#[test]
fn the_node_identity_is_a_private_key_file_and_names_every_write() {
    let dir = private_tempdir();
    let d = &dir.path().join("data");
    let id = ok_json(d, &["id"])["peer_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("12D3KooW"), "{id}");
    assert_eq!(ok_json(d, &["id"])["peer_id"], id, "the id is stable");
    ok_json(d, &["put", "n:1", "{}"]);
    assert_eq!(ok_json(d, &["history", "n:1"])[0]["origin"], id, "writes are authored by the node's peer id");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = d.join("identity.key");
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(d).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        fails_with(d, &["id"], 1, "accessible to other users");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let good = std::fs::read(&key).unwrap();
        std::fs::write(&key, b"not a key").unwrap();
        fails_with(d, &["id"], 1, "is corrupted");
        std::fs::write(&key, &good).unwrap();
        assert_eq!(ok_json(d, &["id"])["peer_id"], id);
    }
}

#[test]
fn trust_and_invite() {
    let dir = private_tempdir();
    let d = dir.path();
    let peer = "12D3KooWEChVMMMzV8acJ53mJHrw1pQ27UAGkCxWXLJutbeUMvVu";
    ok_json(d, &["trust", "add", peer]);
    assert_eq!(ok_json(d, &["trust", "list"])["allowlist"], json!([peer]));
    fails_with(d, &["trust", "add", "12D3KooWnot-a-peer"], 2, "is not a peer id");
    fails_with(d, &["trust", "remove", "12D3KooWnot-a-peer"], 2, "\"12D3KooWnot-a-peer\" is not a peer id: invalid peer id: not base58btc");
    ok_json(d, &["trust", "remove", peer]);
    assert_eq!(ok_json(d, &["trust", "list"])["allowlist"], json!([]));
    fails_with(d, &["trust", "remove", peer], 3, "not on the allowlist");
    assert_eq!(ok_json(d, &["trust", "list"])["mode"], "secret", "the default");
    ok_json(d, &["trust", "mode", "open"]);
    assert_eq!(ok_json(d, &["trust", "list"])["mode"], "open");

    let ticket = ok_json(d, &["invite", "--address", "192.0.2.7:34569"])["ticket"].as_str().unwrap().to_owned();
    let parsed: pluresdb_security::Ticket = ticket.parse().unwrap();
    assert_eq!(parsed.peer_id.to_string(), ok_json(d, &["id"])["peer_id"]);
    assert_eq!(parsed.addresses, ["192.0.2.7:34569"]);
    let again: pluresdb_security::Ticket = ok_json(d, &["invite"])["ticket"].as_str().unwrap().parse().unwrap();
    assert_eq!(again.secret, parsed.secret, "the network secret is created once and kept");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(d.join("network.secret")).unwrap().permissions().mode() & 0o777, 0o600);
    }
}

/// Every command that names a peer checks the id before it asks the node
/// anything: bad input, exit code 2, one line naming the text and the
/// reason; the data directory is untouched.
#[test]
fn a_malformed_peer_id_on_the_command_line_is_refused_with_its_reason() {
    let dir = private_tempdir();
    let d = dir.path();
    ok_json(d, &["put", "user:1", r#"{"kept":true}"#]);
    let too_long = "1".repeat(80);
    let cases: [(&[&str], &str); 5] = [
        (&["disconnect", "not-a-peer"], "\"not-a-peer\" is not a peer id: invalid peer id: not base58btc"),
        (&["disconnect", &too_long], "is not a peer id: invalid peer id: too long"),
        // Base58, but an old RSA-style (sha256 multihash) id, not an Ed25519 key.
        (&["disconnect", "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"], "is not a peer id: invalid peer id: not 38 bytes"),
        (&["trust", "add", ""], "\"\" is not a peer id"),
        (&["trust", "remove", "12D3KooW"], "\"12D3KooW\" is not a peer id"),
    ];
    for (args, message) in cases {
        fails_with(d, args, 2, message);
    }
    assert_eq!(ok_json(d, &["get", "user:1"])["value"], json!({"kept": true}));
    assert_eq!(ok_json(d, &["trust", "list"])["allowlist"], json!([]));
}

/// `pluresdb watch` follows a live query on a running node: a line per
/// change that makes a node pass (`matches`) or stop passing
/// (`unmatches`), nothing for nodes that neither pass nor passed, and it
/// stops after --count. Without a running node, and for a bad query, it
/// says why in one line.
#[test]
fn watch_follows_a_live_query_on_a_running_node() {
    let dir = private_tempdir();
    let d = dir.path();
    fails_with(d, &["watch", "--prefix", "user:"], 4, "no node runs on");
    let node = common::Node::start_with(d, &["--no-network"]);
    let put = |id: &str, value: Value| assert_eq!(node.request("PUT", &format!("/nodes/{id}"), &value.to_string()).0, 200);
    put("user:1", json!({"age": 20}));
    let mut child = pluresdb(d)
        .args(["watch", "--prefix", "user:", "--where", "age > 30", "--count", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The subscription is live once it says so.
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = stderr.next().expect("watch printed nothing").unwrap();
    assert!(first.starts_with("watching the live query"), "{first}");
    put("user:1", json!({"age": 40})); // starts passing
    put("user:2", json!({"age": 10})); // never passes: not shown
    put("note:1", json!({"age": 50})); // outside the prefix: not shown
    put("user:3", json!({"age": 31})); // passes
    put("user:1", json!({"age": 5})); // stops passing
                                      // The watch ends by itself after 3 changes (or the test fails at the deadline).
    let (done, answer) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let output = answer.recv_timeout(std::time::Duration::from_secs(60)).expect("watch did not stop after --count 3").unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let seen: Vec<(String, String, Value)> = stdout
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 4, "{line}");
            (fields[1].to_owned(), fields[2].to_owned(), serde_json::from_str(fields[3]).unwrap())
        })
        .collect();
    let expected =
        [("user:1", "matches", json!({"age": 40})), ("user:3", "matches", json!({"age": 31})), ("user:1", "unmatches", json!({"age": 5}))];
    assert_eq!(seen, expected.map(|(id, mark, value)| (id.to_owned(), mark.to_owned(), value)));
    // Bad queries: refused by the CLI or by the node, exit code 2.
    fails_with(d, &["watch", "--where", "age ~ 3"], 2, "cannot read condition");
    fails_with(d, &["watch", r#"{"sort":{"field":"age"}}"#], 2, "a live query takes a prefix and conditions");
    let (clean, stderr) = node.stop();
    assert!(clean, "{stderr}");
}
