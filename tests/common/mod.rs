//! A real `pluresdb serve` process for integration tests, and a minimal
//! HTTP/1.1 client for it.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

pub struct Node {
    pub child: Child,
    /// The API address, host:port.
    pub api: String,
    /// Where peers reach the node (QUIC), if it runs a transport.
    pub listen: Option<String>,
    /// The whole start line (`serve --json`).
    pub started: Value,
}

impl Node {
    pub fn start(dir: &std::path::Path) -> Node {
        Node::start_with(dir, &[])
    }

    pub fn start_with(dir: &std::path::Path, extra: &[&str]) -> Node {
        Node::start_with_env(dir, extra, &[])
    }

    /// A node started with `extra` arguments and `env` variables.
    pub fn start_with_env(dir: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Node {
        Node::spawn(Node::command(dir, extra, env))
    }

    /// A node started under `umask` (as a shell sets it: `022`).
    pub fn start_with_umask(dir: &std::path::Path, extra: &[&str], umask: &str) -> Node {
        Node::spawn(with_umask(Node::command(dir, extra, &[]), umask))
    }

    /// The `serve` command line of [`Node::start_with_env`].
    pub fn command(dir: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pluresdb"));
        command
            .args(["--json", "--data-dir"])
            .arg(dir)
            .args(["serve", "--api-addr", "127.0.0.1:0", "--bind", "127.0.0.1", "--port", "0"])
            .args(extra)
            .env_remove("PLURESDB_API_ADDR")
            .env_remove("PLURESDB_ALLOWED_ORIGINS")
            .env_remove("PLURESDB_API_HOSTS")
            .envs(env.iter().copied());
        command
    }

    /// Starts `command` (a `serve`) and reads its start line.
    pub fn spawn(mut command: Command) -> Node {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut first).unwrap();
        let started: Value = serde_json::from_str(&first).unwrap_or_else(|e| {
            let mut stderr = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
            panic!("no start line ({e}): {first:?}; stderr: {stderr}")
        });
        let api = started["api"].as_str().unwrap().trim_start_matches("http://").to_owned();
        let listen = started["listen"].as_array().and_then(|l| l.first()).and_then(|a| a.as_str()).map(str::to_owned);
        Node { child, api, listen, started }
    }

    /// One HTTP/1.1 request; returns the status and the JSON body.
    pub fn request(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        self.request_with(method, path, body, &[])
    }

    /// A request with extra header lines (`"Authorization: Bearer x"`).
    pub fn request_with(&self, method: &str, path: &str, body: &str, headers: &[&str]) -> (u16, Value) {
        let (status, text) = self.request_text(method, path, body, headers);
        (status, serde_json::from_str(&text).unwrap_or_else(|_| json!({"raw": text})))
    }

    /// A request; returns the status and the body as text.
    pub fn request_text(&self, method: &str, path: &str, body: &str, headers: &[&str]) -> (u16, String) {
        let mut stream = TcpStream::connect(&self.api).unwrap();
        let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
        // The server may answer (413) and close before reading a huge body;
        // the answer is still there to read.
        let _ = write!(stream, "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", self.api, body.len());
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let text = String::from_utf8_lossy(&response);
        let status: u16 = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        (status, body.to_owned())
    }

    /// One HTTP/1.1 request with exactly these header lines (no `Host`
    /// unless given) and a `Content-Length`; returns the status, the
    /// header lines (names in lowercase) and the body.
    pub fn exchange(&self, method: &str, path: &str, headers: &[&str], body: &str) -> Answer {
        let mut stream = TcpStream::connect(&self.api).unwrap();
        let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
        let _ = write!(stream, "{method} {path} HTTP/1.1\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n{body}", body.len());
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let headers = head
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        Answer { status, headers, body: body.to_owned() }
    }

    pub fn stop(mut self) -> (bool, String) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let status = self.child.wait().unwrap();
        let mut stderr = String::new();
        self.child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        (status.success(), stderr)
    }
}

/// A node a test did not stop (it failed first) is killed, not left running.
impl Drop for Node {
    fn drop(&mut self) {
        // Nothing is sent to a child already waited for.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// Header lines, names in lowercase.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`null` if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// `command` run by a shell that first sets `umask`.
pub fn with_umask(command: Command, umask: &str) -> Command {
    let mut shell = Command::new("sh");
    shell.arg("-c").arg(format!("umask {umask} && exec \"$@\"")).arg("sh").arg(command.get_program()).args(command.get_args());
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => shell.env(name, value),
            None => shell.env_remove(name),
        };
    }
    shell
}

/// Runs the CLI on data directory `dir`.
pub fn cli(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pluresdb")).arg("--data-dir").arg(dir).args(args).output().unwrap()
}

/// Writes `user:1` concurrently from two replicas into data directory
/// `dir`, so its `name` has two values to resolve.
pub fn concurrent_names(dir: &std::path::Path) {
    let mut a = pluresdb_core::Database::open(pluresdb_store_redb::RedbStore::open(dir).unwrap(), "peer-a").unwrap();
    let mut b = pluresdb_core::Database::open(pluresdb_core::MemoryStore::new(), "peer-b").unwrap();
    a.update("user:1", serde_json::json!({"name": "Alice", "age": 1}), 1_000).unwrap();
    b.update("user:1", serde_json::json!({"name": "Alicia"}), 1_000).unwrap();
    a.apply_remote(b.ops_after("peer-b", 0, 10).unwrap(), 1_000).unwrap();
}

/// How long the process tests' waits for replication may take.
pub const REPLICATION_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits until `check` holds, failing with `what` at
/// [`REPLICATION_DEADLINE`].
pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + REPLICATION_DEADLINE;
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A ticket to the network of the node on `dir`, naming `address` only.
pub fn invite(dir: &std::path::Path, address: &str) -> String {
    let out = cli(dir, &["--json", "invite", "--address", address]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["ticket"].as_str().unwrap().to_owned()
}

/// How many operations `node` holds.
pub fn held(node: &Node) -> u64 {
    node.request("GET", "/status", "").1["operations_held"].as_u64().unwrap_or(0)
}

/// `node`'s version vector.
pub fn version(node: &Node) -> Value {
    node.request("GET", "/status", "").1["version_vector"].clone()
}

/// Runs `command` to its end or until `deadline` (then kills it); returns
/// whether it succeeded and its standard output and error.
pub fn run_with_deadline(mut command: Command, deadline: std::time::Duration) -> (bool, String, String) {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start the command");
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
    let give_up = std::time::Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break Some(status);
        }
        if std::time::Instant::now() > give_up {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    match status {
        Some(status) => (status.success(), out, err),
        None => (false, out, format!("{err}\n(killed after {deadline:?})")),
    }
}
