//! `pluresdb serve` run as a user runs it: the HTTP API over a real
//! process, its errors, and a clean stop on SIGTERM.

mod common;

use common::{cli, Node};
use serde_json::{json, Value};
use std::process::Command;

#[test]
fn serve_answers_the_api_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());

    let (status, health) = node.request("GET", "/health", "");
    assert_eq!(status, 200);
    assert!(health["peer_id"].as_str().unwrap().starts_with("12D3KooW"));

    assert_eq!(node.request("PUT", "/nodes/user:1", r##"{"name":"Alice","friend":{"#":"user:2"}}"##).0, 200);
    assert_eq!(node.request("GET", "/nodes/user:1?follow=friend", "").0, 404, "dangling link");
    assert_eq!(node.request("PUT", "/nodes/user:2", r#"{"name":"Bob"}"#).0, 200);
    assert_eq!(node.request("GET", "/nodes/user:1?follow=friend", "").1["value"]["name"], "Bob");
    assert_eq!(node.request("PATCH", "/nodes/user:1", r#"{"age":3,"name":null}"#).0, 200);
    assert_eq!(node.request("GET", "/nodes/user:1", "").1["value"], json!({"age": 3, "friend": {"#": "user:2"}}));
    let (_, listed) = node.request("GET", "/nodes?prefix=user:&limit=1", "");
    assert_eq!(listed["nodes"][0]["id"], "user:1");
    assert_eq!(listed["next_after"], "user:1");
    assert_eq!(node.request("GET", "/nodes/user:1/history", "").1.as_array().unwrap().len(), 2);

    // Bad input: JSON errors with the right status; the node keeps serving.
    for (method, path, body, status, needle) in [
        ("PUT", "/nodes/x", "[1]", 400, "must be a JSON object"),
        ("PUT", "/nodes/x", "{bad", 400, "not valid JSON"),
        ("GET", "/nodes/missing", "", 404, "not found"),
        ("GET", "/no/such/route", "", 404, "no such route"),
        ("GET", "/nodes?limit=many", "", 400, "limit"),
        ("DELETE", "/nodes/missing", "", 404, "not found"),
    ] {
        let (got, body) = node.request(method, path, body);
        assert_eq!(got, status, "{method} {path}: {body}");
        assert!(body["error"].as_str().unwrap_or_default().contains(needle), "{method} {path}: {body}");
    }
    let huge = format!(r#"{{"blob":"{}"}}"#, "y".repeat(3 * 1024 * 1024));
    let (got, body) = node.request("PUT", "/nodes/big", &huge);
    assert_eq!(got, 413, "{body}");
    assert!(body["error"].is_string());
    assert_eq!(node.request("DELETE", "/nodes/user:2", "").0, 200);

    let (clean, stderr) = node.stop();
    assert!(clean, "exit after SIGTERM: {stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");

    // Every answered write is durable: the CLI reads it back.
    let out = Command::new(env!("CARGO_BIN_EXE_pluresdb"))
        .arg("--json")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["get", "user:1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let node: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(node["value"]["age"], 3);
}

#[test]
fn the_cli_goes_through_the_running_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let d = dir.path();

    let put = cli(d, &["--json", "put", "team a/1", r##"{"name":"Ops","lead":{"#":"user:9"}}"##]);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    assert!(cli(d, &["put", "user:9", r#"{"name":"Ada"}"#]).status.success());
    assert!(cli(d, &["update", "user:9", r#"{"age":36}"#]).status.success());

    let got: Value = serde_json::from_slice(&cli(d, &["--json", "get", "team a/1", "--follow", "lead"]).stdout).unwrap();
    assert_eq!(got["value"], json!({"name": "Ada", "age": 36}));
    let text = String::from_utf8(cli(d, &["get", "team a/1"]).stdout).unwrap();
    assert!(text.contains("link lead -> user:9") && !text.contains("dangling"), "{text}");
    let listed: Value = serde_json::from_slice(&cli(d, &["--json", "list", "--prefix", "user:"]).stdout).unwrap();
    assert_eq!(listed["nodes"][0]["id"], "user:9");
    let history = String::from_utf8(cli(d, &["history", "user:9"]).stdout).unwrap();
    assert_eq!(history.lines().count(), 2, "{history}");
    assert!(history.contains("\tcreate\t") && history.contains("\tupdate\t"), "{history}");
    let health = node.request("GET", "/health", "").1;
    let id: Value = serde_json::from_slice(&cli(d, &["--json", "id"]).stdout).unwrap();
    assert_eq!(id["peer_id"], health["peer_id"]);

    // The node's errors keep their exit codes.
    assert_eq!(cli(d, &["get", "missing"]).status.code(), Some(3));
    assert_eq!(cli(d, &["put", "x", "[1]"]).status.code(), Some(2));
    assert!(cli(d, &["delete", "user:9"]).status.success());
    assert_eq!(node.request("GET", "/nodes/user:9", "").0, 404, "the node saw the CLI's delete");
    // Every command works through the node, export and import included.
    let export = cli(d, &["export"]);
    assert!(export.status.success());
    let exported = String::from_utf8(export.stdout).unwrap();
    assert_eq!(exported.lines().count(), 1, "{exported}");
    assert!(exported.contains("team a/1"), "{exported}");
    let file = dir.path().join("copy.ndjson");
    std::fs::write(&file, exported.replace("team a/1", "team b/1")).unwrap();
    assert!(cli(d, &["import", file.to_str().unwrap()]).status.success());
    assert_eq!(node.request("GET", "/nodes/team%20b%2F1", "").1["value"]["name"], "Ops");

    let (clean, _) = node.stop();
    assert!(clean);
    assert!(!dir.path().join("api.addr").exists(), "the address file goes with the node");
}

#[test]
fn serve_join_adopts_the_network_of_a_ticket() {
    let root = tempfile::tempdir().unwrap();
    let (a, b, c) = (root.path().join("a"), root.path().join("b"), root.path().join("c"));
    let ticket_of = |dir: &std::path::Path| -> String {
        let out = cli(dir, &["--json", "invite", "--address", "127.0.0.1:34569"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["ticket"].as_str().unwrap().to_owned()
    };
    let ticket = ticket_of(&a);
    let node = Node::start_with(&b, &["--join", &ticket]);
    let (clean, stderr) = node.stop();
    assert!(clean && stderr.contains("joined the network of 12D3KooW"), "{stderr}");
    let secret = |t: &str| t.parse::<pluresdb_security::Ticket>().unwrap().secret;
    assert_eq!(secret(&ticket_of(&b)), secret(&ticket), "b now holds a's network secret");

    // A node that already has a network of its own is not silently moved.
    ticket_of(&c);
    let out = Command::new(env!("CARGO_BIN_EXE_pluresdb"))
        .arg("--data-dir")
        .arg(&c)
        .args(["serve", "--api-addr", "127.0.0.1:0", "--bind", "127.0.0.1", "--port", "0", "--join", &ticket])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already belongs to another network"));
    let out = Command::new(env!("CARGO_BIN_EXE_pluresdb"))
        .arg("--data-dir")
        .arg(&c)
        .args(["serve", "--join", "pluresdb1garbage"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[cfg(unix)]
fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Under the usual umask (022, files 0644 by default), nothing in the
/// data directory is readable by other users.
#[cfg(unix)]
#[test]
fn a_new_data_directory_and_its_files_are_owner_only() {
    let root = tempfile::tempdir().unwrap();
    let d = &root.path().join("data");
    let out = common::with_umask(
        {
            let mut put = Command::new(env!("CARGO_BIN_EXE_pluresdb"));
            put.arg("--data-dir").arg(d).args(["put", "n:1", "{}"]);
            put
        },
        "022",
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(mode(d), 0o700, "the data directory");
    for file in ["pluresdb.redb", "pluresdb.wal", "identity.key", "network.secret"] {
        assert_eq!(mode(&d.join(file)), 0o600, "{file}");
    }
    let node = Node::start_with_umask(d, &[], "022");
    for file in ["pluresdb.redb", "pluresdb.wal", "api.addr", "api.token", "identity.key", "network.secret"] {
        assert_eq!(mode(&d.join(file)), 0o600, "{file} while the node runs");
    }
    assert!(node.stop().0);
}

/// Files left readable by others (an older version, a copy, a restore)
/// are made owner-only, and the node starts.
#[cfg(unix)]
#[test]
fn existing_files_readable_by_others_are_made_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let node = Node::start(d);
    assert_eq!(node.request("PUT", "/nodes/kept", "{}").0, 200);
    let token = std::fs::read_to_string(d.join("api.token")).unwrap();
    assert!(node.stop().0);
    set_mode(&d.join("pluresdb.redb"), 0o644);
    set_mode(&d.join("pluresdb.wal"), 0o644);
    set_mode(&d.join("api.token"), 0o644);
    // A node killed before it removed its address file, under umask 022.
    std::fs::write(d.join("api.addr"), "127.0.0.1:1\n").unwrap();
    set_mode(&d.join("api.addr"), 0o644);

    let node = Node::start(d);
    for file in ["pluresdb.redb", "pluresdb.wal", "api.token", "api.addr"] {
        assert_eq!(mode(&d.join(file)), 0o600, "{file}");
    }
    assert_eq!(std::fs::read_to_string(d.join("api.token")).unwrap(), token, "the same token");
    assert_eq!(node.request("GET", "/nodes/kept", "").0, 200);
    let (clean, stderr) = node.stop();
    assert!(clean, "{stderr}");
    assert!(stderr.contains("api.token") && stderr.contains("owner-only"), "the token's exposure is reported: {stderr}");
}

/// A data directory other users can read gets a warning naming the fix.
#[cfg(unix)]
#[test]
fn a_data_directory_others_can_read_gets_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    set_mode(d, 0o700);
    assert!(cli(d, &["put", "n:1", "{}"]).status.success());
    let quiet = cli(d, &["get", "n:1"]);
    assert!(quiet.stderr.is_empty(), "no warning for a private directory: {}", String::from_utf8_lossy(&quiet.stderr));
    set_mode(d, 0o755);
    let out = cli(d, &["get", "n:1"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("WARN") && stderr.contains("other users") && stderr.contains("chmod 700"), "{stderr}");
    let node = Node::start(d);
    let (clean, stderr) = node.stop();
    assert!(clean && stderr.contains("chmod 700"), "serve warns too: {stderr}");
}

/// A key file that is a symbolic link is refused, not followed: whoever
/// can place a link would choose the node's identity or network (or make it
/// write its new key where the link points).
#[cfg(unix)]
#[test]
fn key_files_are_not_followed_through_symlinks() {
    let root = tempfile::tempdir().unwrap();
    let (d, elsewhere) = (root.path().join("data"), root.path().join("elsewhere"));
    assert!(cli(&elsewhere, &["id"]).status.success());
    for file in ["identity.key", "network.secret"] {
        std::fs::create_dir_all(&d).unwrap();
        set_mode(&d, 0o700);
        assert!(cli(&d, &["id"]).status.success());
        std::fs::remove_file(d.join(file)).unwrap();
        std::os::unix::fs::symlink(elsewhere.join(file), d.join(file)).unwrap();
        let out = cli(&d, &["id"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{file}: {stderr}");
        assert!(stderr.contains(file) && stderr.contains("symbolic link"), "{file}: {stderr}");

        // A dangling link: the node does not create its key where it points.
        let target = root.path().join(format!("planted-{file}"));
        std::fs::remove_file(d.join(file)).unwrap();
        std::os::unix::fs::symlink(&target, d.join(file)).unwrap();
        let out = cli(&d, &["id"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("symbolic link"), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(!target.exists(), "nothing written through the link");
        std::fs::remove_dir_all(&d).unwrap();
    }
}

/// Whether `text` holds a ticket (which carries the network secret).
fn holds_a_ticket(text: &str) -> bool {
    text.split(|c: char| c.is_whitespace() || c == '"').any(|word| word.parse::<pluresdb_security::Ticket>().is_ok())
}

/// `serve` tells where the node is (peer id, API, QUIC addresses) but does
/// not print the network secret at every start, to terminals, logs and
/// service journals; `invite` makes tickets.
#[test]
fn serve_prints_its_peer_id_and_addresses_but_no_ticket() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pluresdb"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["serve", "--api-addr", "127.0.0.1:0", "--bind", "127.0.0.1", "--port", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    let text = first + &rest;
    let peer_id = cli(dir.path(), &["id"]);
    let peer_id = String::from_utf8(peer_id.stdout).unwrap();
    assert!(text.contains(peer_id.trim()), "{text}");
    assert!(text.contains("HTTP API on http://127.0.0.1:") && text.contains("peers connect over QUIC to 127.0.0.1:"), "{text}");
    assert!(text.contains("pluresdb invite"), "says how to make a ticket: {text}");
    assert!(!holds_a_ticket(&text), "no ticket at start: {text}");

    let node = Node::start(dir.path());
    let (clean, stderr) = node.stop();
    assert!(clean && !holds_a_ticket(&stderr), "{stderr}");
    let mut json = Command::new(env!("CARGO_BIN_EXE_pluresdb"));
    json.arg("--json").arg("--data-dir").arg(dir.path()).args(["serve", "--api-addr", "127.0.0.1:0", "--port", "0"]);
    let node = Node::spawn(json);
    assert!(node.listen.is_some(), "the start line lists the QUIC addresses");
    let (clean, _) = node.stop();
    assert!(clean);
}

/// The ticket need not be on the command line (where it stays in the shell
/// history and the process list): `--join-file FILE`, or `--join -` to read
/// it from standard input.
#[test]
fn serve_reads_the_ticket_from_a_file_or_standard_input() {
    let root = tempfile::tempdir().unwrap();
    let (a, b, c) = (root.path().join("a"), root.path().join("b"), root.path().join("c"));
    let out = cli(&a, &["invite", "--address", "127.0.0.1:34569"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let file = root.path().join("ticket.txt");
    std::fs::write(&file, &out.stdout).unwrap();
    let secret = |dir: &std::path::Path| std::fs::read_to_string(dir.join("network.secret")).unwrap();

    let node = Node::start_with(&b, &["--join-file", file.to_str().unwrap()]);
    let (clean, stderr) = node.stop();
    assert!(clean && stderr.contains("joined the network of 12D3KooW"), "{stderr}");
    assert_eq!(secret(&b), secret(&a));

    let mut command = Node::command(&c, &["--join", "-"], &[]);
    command.stdin(std::fs::File::open(&file).unwrap());
    let node = Node::spawn(command);
    let (clean, stderr) = node.stop();
    assert!(clean && stderr.contains("joined the network of 12D3KooW"), "{stderr}");
    assert_eq!(secret(&c), secret(&a));

    // Clear errors for a missing file, an empty input, and both flags.
    for (args, stdin, needle) in [
        (vec!["--join-file", "/nonexistent/ticket"], "", "cannot read the ticket"),
        (vec!["--join", "-"], "", "no ticket"),
        (vec!["--join", "-"], "garbage\n", "does not parse"),
        (vec!["--join", "x", "--join-file", "y"], "", "cannot be used with"),
    ] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pluresdb"));
        command.arg("--data-dir").arg(root.path().join("d")).args(["serve", "--api-addr", "127.0.0.1:0", "--port", "0"]).args(&args);
        let mut child = command.stdin(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

/// mDNS that cannot start (no daemon, no multicast: simulated with the
/// binary's PLURESDB_TEST_MDNS_FAILURE hook, which fails the mDNS start as
/// the daemon does) costs the node its LAN discovery, not its life: it
/// says so and runs on, and peers still connect.
#[test]
fn serve_runs_on_without_mdns_when_mdns_cannot_start() {
    let root = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (root.path().join("a"), root.path().join("b"));
    let b = Node::start(&dir_b);
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::copy(dir_b.join("network.secret"), dir_a.join("network.secret")).unwrap();
    // Bound to every interface, so the node would run mDNS.
    let mut command = Command::new(env!("CARGO_BIN_EXE_pluresdb"));
    command
        .arg("--json")
        .arg("--data-dir")
        .arg(&dir_a)
        .args(["serve", "--api-addr", "127.0.0.1:0", "--bind", "0.0.0.0", "--port", "0"])
        .env_remove("PLURESDB_MDNS")
        .env("PLURESDB_TEST_MDNS_FAILURE", "no multicast interface (simulated)");
    let a = Node::spawn(command);
    assert_eq!(a.request("GET", "/health", "").0, 200);
    let (status, connected) = a.request("POST", "/peers", &json!({"address": b.listen.clone().unwrap()}).to_string());
    assert_eq!(status, 200, "{connected}");
    let discovered = a.request("GET", "/peers/discovered", "").1;
    assert_eq!(discovered["discovering"], true, "bootstrap and peer exchange go on: {discovered}");
    let (clean, stderr) = a.stop();
    assert!(clean, "{stderr}");
    assert!(stderr.contains("mDNS is off") && stderr.contains("no multicast interface (simulated)"), "says so, and why: {stderr}");
    assert!(b.stop().0);
}

/// `serve` with settings of the engines that cannot work ends at once with
/// exit code 2 and the reason, before any engine listens, and what the
/// data directory holds is untouched.
#[test]
fn serve_refuses_bad_engine_settings_with_the_reason_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    assert!(cli(dir.path(), &["put", "kept", r#"{"v":1}"#]).status.success());
    let serve = |extra: &[&str], env: &[(&str, &str)]| {
        // Bounded: a serve that runs instead of refusing is killed and fails the test.
        let mut child =
            Node::command(dir.path(), extra, env).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                panic!("serve {extra:?} {env:?} ran instead of refusing");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = serve(&["--libp2p-listen", "/ip4/127.0.0.1/tcp/notaport"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("is not a multiaddr"), "{stderr}");
    let (code, stderr) = serve(&[], &[("PLURESDB_LIBP2P", "maybe")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("PLURESDB_LIBP2P") && stderr.contains("is not true or false"), "{stderr}");
    std::fs::write(dir.path().join("pluresdb.toml"), "dht = \"yes\"\n").unwrap();
    let (code, stderr) = serve(&[], &[]);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("dht"), "names the key: {stderr}");
    std::fs::remove_file(dir.path().join("pluresdb.toml")).unwrap();
    // The relay runs on the libp2p engine: not without it.
    let (code, stderr) = serve(&["--relay", "--no-libp2p"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("relay") && stderr.contains("libp2p"), "{stderr}");
    let (code, stderr) = serve(&[], &[("PLURESDB_RELAY", "maybe")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("PLURESDB_RELAY") && stderr.contains("is not true or false"), "{stderr}");
    assert_eq!(serde_json::from_slice::<Value>(&cli(dir.path(), &["--json", "get", "kept"]).stdout).unwrap()["value"], json!({"v": 1}));
}

/// `relay` is read from pluresdb.toml, PLURESDB_RELAY and `--relay`, the
/// later overriding the earlier, and `config show` says where it came
/// from.
#[test]
fn the_relay_setting_comes_from_the_file_the_environment_or_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let show = |env: &[(&str, &str)]| -> Value {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pluresdb"));
        command.arg("--data-dir").arg(dir.path()).args(["--json", "config", "show"]).env_remove("PLURESDB_RELAY").envs(env.iter().copied());
        let out = command.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["relay"].clone()
    };
    assert_eq!(show(&[]), json!({"value": false, "source": "default"}));
    std::fs::write(dir.path().join("pluresdb.toml"), "relay = true\n").unwrap();
    assert_eq!(show(&[]), json!({"value": true, "source": "config file"}));
    assert_eq!(show(&[("PLURESDB_RELAY", "false")]), json!({"value": false, "source": "environment"}));
}

/// `store_cache_mib` (the store's page cache, the part of a node's memory
/// that grows with its data) is 4 MiB unless pluresdb.toml or
/// PLURESDB_STORE_CACHE_MIB says otherwise; `config show` says which, a
/// value out of 1..=65536 is refused with exit code 2 and the reason, and
/// the replica opens with the smallest cache and keeps its data.
#[test]
fn the_store_cache_is_4_mib_unless_set_and_out_of_range_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pluresdb"));
        command.arg("--data-dir").arg(dir.path()).arg("--json").args(args).env_remove("PLURESDB_STORE_CACHE_MIB").envs(env.iter().copied());
        command.output().unwrap()
    };
    let show = |env: &[(&str, &str)]| -> Value {
        let out = run(&["config", "show"], env);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["store_cache_mib"].clone()
    };
    assert_eq!(show(&[]), json!({"value": 4, "source": "default"}));
    std::fs::write(dir.path().join("pluresdb.toml"), "store_cache_mib = 64\n").unwrap();
    assert_eq!(show(&[]), json!({"value": 64, "source": "config file"}));
    assert_eq!(show(&[("PLURESDB_STORE_CACHE_MIB", "1")]), json!({"value": 1, "source": "environment"}));
    for (env, named) in [("0", "PLURESDB_STORE_CACHE_MIB"), ("65537", "PLURESDB_STORE_CACHE_MIB"), ("lots", "PLURESDB_STORE_CACHE_MIB")] {
        let out = run(&["config", "show"], &[("PLURESDB_STORE_CACHE_MIB", env)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env}: {stderr}");
        assert!(stderr.contains(named), "{env}: {stderr}");
    }
    std::fs::write(dir.path().join("pluresdb.toml"), "store_cache_mib = 0\n").unwrap();
    let out = run(&["config", "show"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("store_cache_mib"), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_file(dir.path().join("pluresdb.toml")).unwrap();
    // A 1 MiB cache still stores and reads back 3 MB (pages beyond it are read from the file).
    let value = json!({"text": "x".repeat(100_000)});
    let lines: String = (0..30).map(|i| format!("{}\n", json!({"id": format!("n{i:02}"), "value": value}))).collect();
    let file = dir.path().join("in.ndjson");
    std::fs::write(&file, &lines).unwrap();
    let small = [("PLURESDB_STORE_CACHE_MIB", "1")];
    let out = run(&["import", file.to_str().unwrap()], &small);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["export"], &small);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exported: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(exported.len(), 30);
    assert!(exported.iter().all(|n| n["value"] == value), "every node reads back whole");
}

/// One PUT on a fresh connection; `None` when the node is gone (refused,
/// reset) instead of a panic, since the test kills it mid-stream.
fn put_or_gone(api: &str, id: &str, body: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(api).ok()?;
    write!(stream, "PUT /nodes/{id} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    String::from_utf8_lossy(&answer).split_whitespace().nth(1)?.parse().ok()
}

/// A node killed with SIGKILL (no shutdown, nothing flushed on the way
/// out) while several clients write keeps every write it answered, three
/// times in a row: new nodes from each client, and one node each client
/// overwrites, which holds at least the last value answered (a later write
/// that was not answered may be there too).
#[test]
fn answered_writes_survive_repeated_kill_9_in_the_middle_of_writes() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    const CLIENTS: usize = 3;
    // (id, value) of every answered new node; per client, the last value of
    // its overwritten node that was answered.
    let mut answered: Vec<(String, u64)> = Vec::new();
    let mut last_overwrite = [0u64; CLIENTS];
    for round in 0..3u64 {
        let node = Node::start(dir.path());
        let acks: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
        let overwrites: Arc<Mutex<[u64; CLIENTS]>> = Arc::new(Mutex::new(last_overwrite));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let (api, acks, overwrites) = (node.api.clone(), acks.clone(), overwrites.clone());
                std::thread::spawn(move || {
                    for i in 0.. {
                        let id = format!("kill:{round}:{client}:{i:05}");
                        match put_or_gone(&api, &id, &format!(r#"{{"i":{i}}}"#)) {
                            Some(200) => acks.lock().unwrap().push((id, i)),
                            Some(status) => panic!("PUT {id}: {status}"),
                            None => return,
                        }
                        let value = round * 1_000_000 + i + 1;
                        match put_or_gone(&api, &format!("kill:overwritten:{client}"), &format!(r#"{{"v":{value}}}"#)) {
                            Some(200) => overwrites.lock().unwrap()[client] = value,
                            Some(status) => panic!("PUT overwrite: {status}"),
                            None => return,
                        }
                    }
                })
            })
            .collect();
        common::wait_until("writes answered before the kill", || acks.lock().unwrap().len() >= 150);
        let mut node = node;
        node.child.kill().unwrap(); // SIGKILL
        node.child.wait().unwrap();
        for client in clients {
            client.join().unwrap();
        }
        answered.extend(acks.lock().unwrap().drain(..));
        last_overwrite = *overwrites.lock().unwrap();
    }
    let node = Node::start(dir.path());
    for (id, i) in &answered {
        let (status, body) = node.request("GET", &format!("/nodes/{id}"), "");
        assert_eq!(status, 200, "{id} was answered before a kill and is gone: {body}");
        assert_eq!(body["value"]["i"], *i, "{id}: {body}");
    }
    for (client, last) in last_overwrite.iter().enumerate() {
        let (status, body) = node.request("GET", &format!("/nodes/kill:overwritten:{client}"), "");
        assert_eq!(status, 200, "{body}");
        let held = body["value"]["v"].as_u64().unwrap();
        assert!(held >= *last, "client {client}: {held} held, {last} was answered");
    }
    assert!(answered.len() >= 450, "{}", answered.len());
    assert_eq!(node.request("PUT", "/nodes/after:kills", r#"{"ok":true}"#).0, 200);
    assert!(node.stop().0);
}

/// The node's memory is in 4 KiB pages, none in transparent huge pages:
/// mimalloc is built not to ask for them on its arenas (its `no_thp`
/// feature) and the node turns them off for itself first thing in `main`.
/// Before, the arena pages mimalloc touched before `main` came in 2 MiB at a
/// time (2-4 MiB of an idle node's RSS; 3-8 MiB after syncing 50,000
/// records, benches/two_process.rs). Checked where the kernel hands out huge
/// pages only when asked (`madvise`, this machine's and Debian's default);
/// under `always` a process cannot keep what runs before `main` off them.
#[test]
#[cfg(target_os = "linux")]
fn the_node_holds_no_transparent_huge_pages() {
    let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if !mode.contains("[madvise]") {
        eprintln!("skipped: transparent huge pages are {:?} here, not [madvise]", mode.trim());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    // Some work, so that the allocator grows its arenas past what start-up took.
    let value = json!({"text": "x".repeat(1_000)});
    let lines: String = (0..1_000).map(|i| format!("{}\n", json!({"id": format!("n{i:04}"), "value": value}))).collect();
    assert_eq!(node.request("POST", "/import", &lines).0, 200);
    let pid = node.child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.lines().any(|line| line.split_whitespace().eq(["THP_enabled:", "0"])), "{status}");
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let huge_kib: u64 = rollup
        .lines()
        .find_map(|line| line.strip_prefix("AnonHugePages:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("AnonHugePages in smaps_rollup");
    assert_eq!(huge_kib, 0, "{rollup}");
    let (clean, stderr) = node.stop();
    assert!(clean, "{stderr}");
}
