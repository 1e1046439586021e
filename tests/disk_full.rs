//! A full disk as a user meets it: `pluresdb serve` with its data directory
//! on a small tmpfs that other files fill, while the node takes writes and
//! while it catches up with a peer. While full, writes answer 507 with the
//! reason and `Retry-After`, reads go on, `/health`, `/status` and
//! `/metrics` say so, and a peer's operations are not acknowledged; once
//! space is freed the node takes writes and syncs again by itself, and
//! after a restart every acknowledged write is there and the replicas agree.
//!
//! The last test needs no root: a file-size limit on the node stands in for
//! a failing disk (another I/O error than a full one).
//!
//! Mounting a tmpfs needs root: without it each test says so and passes
//! (skipped), as the lab tests do; as root under `CI=true` a tmpfs that
//! cannot be mounted fails the test. The mounts are removed when a test
//! ends, also when it fails.

mod common;

use common::{cli, held, invite, version, wait_until, Node};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A tmpfs of a given size mounted on a temporary directory, unmounted on
/// drop (lazily if a process still holds a file in it).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts one, or says why the test is skipped (`None`).
    fn mount(size: &str) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: mounting a tmpfs needs root; run as root to test a full disk");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            // As the lab tests: CI runs as root to run these, so there a
            // missing right to mount is a failure, not a skip.
            let on_ci = std::env::var("CI").is_ok_and(|v| v == "true");
            assert!(!on_ci, "CI=true, but root cannot mount a tmpfs here");
            eprintln!("SKIPPED: root cannot mount a tmpfs here (a container without CAP_SYS_ADMIN?)");
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the filesystem with a file of zeros until it is full.
    fn fill(&self) -> Filler {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 16 * 1024];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) if err.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(err) => panic!("filling the tmpfs: {err}"),
            }
        }
        // Page by page: what the last chunk left.
        let page = [0u8; 4096];
        while file.write(&page).is_ok_and(|n| n > 0) {}
        Filler { path }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount =
            |args: &[&str]| std::process::Command::new("umount").args(args).arg(self.dir.path()).status().is_ok_and(|s| s.success());
        if !umount(&[]) && !umount(&["-l"]) {
            eprintln!("could not unmount the tmpfs at {}", self.dir.path().display());
        }
    }
}

/// The file that fills a tmpfs.
struct Filler {
    path: PathBuf,
}

impl Filler {
    /// Frees `bytes` of it (all with `u64::MAX`).
    fn free(&self, bytes: u64) {
        let file = std::fs::OpenOptions::new().write(true).open(&self.path).unwrap();
        let len = file.metadata().unwrap().len();
        file.set_len(len.saturating_sub(bytes)).unwrap();
    }
}

/// A node that is killed if the test ends without stopping it (so its
/// tmpfs can be unmounted).
struct Serving(Option<Node>);

impl Serving {
    fn node(&self) -> &Node {
        self.0.as_ref().unwrap()
    }

    fn stop(mut self) -> (bool, String) {
        self.0.take().unwrap().stop()
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(node) = self.0.as_mut() {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
    }
}

/// Subscribes to `path` (a `/changes` query) and counts the change
/// messages until `expected` have come.
fn replayed_changes(node: &Node, path: &str, expected: usize) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{}{path}", node.api)).await.unwrap();
        let mut seen = 0;
        while seen < expected {
            let message = tokio::time::timeout(common::REPLICATION_DEADLINE, socket.next()).await.expect("a change before the deadline");
            match message {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => {
                    let message: Value = serde_json::from_str(&text).unwrap();
                    match message["type"].as_str() {
                        Some("change") => seen += 1,
                        Some("subscribed") => {}
                        _ => panic!("{message}"),
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("the change feed ended after {seen} changes: {other:?}"),
            }
        }
        seen
    })
}

fn value(i: usize) -> String {
    json!({"i": i, "pad": "p".repeat(1_000)}).to_string()
}

fn health(node: &Node) -> Value {
    node.request("GET", "/health", "").1
}

fn metric(node: &Node, name: &str) -> Option<u64> {
    let (_, text) = node.request_text("GET", "/metrics", "", &[]);
    text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' ')).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// Writes until a write is refused; returns the ids acknowledged and the
/// refusal.
fn write_until_refused(node: &Node, prefix: &str, from: usize) -> (Vec<String>, common::Answer) {
    let mut acknowledged = Vec::new();
    for i in from..from + 100_000 {
        let id = format!("{prefix}:{i:06}");
        let body = value(i);
        let answer =
            node.exchange("PUT", &format!("/nodes/{id}"), &[&format!("Host: {}", node.api), "Content-Type: application/json"], &body);
        if answer.status != 200 {
            return (acknowledged, answer);
        }
        acknowledged.push(id);
    }
    panic!("100,000 writes went through a full disk");
}

#[test]
fn a_full_disk_refuses_writes_clearly_and_the_node_takes_them_again_by_itself() {
    let Some(tmpfs) = Tmpfs::mount("24m") else { return };
    let dir = tmpfs.path().join("data");
    let node = Serving(Some(Node::start(&dir)));
    let mut acknowledged = Vec::new();
    for i in 0..200 {
        let id = format!("before:{i:06}");
        assert_eq!(node.node().request("PUT", &format!("/nodes/{id}"), &value(i)).0, 200);
        acknowledged.push(id);
    }

    // Other files fill the disk; the node goes on taking writes while redb
    // has room inside its file, then refuses them.
    let filler = tmpfs.fill();
    let (taken, refused) = write_until_refused(node.node(), "filling", 0);
    eprintln!("{} writes acknowledged after the disk was filled, then: {} {}", taken.len(), refused.status, refused.body);
    acknowledged.extend(taken);
    assert_eq!(refused.status, 507, "{}", refused.body);
    assert!(refused.json()["error"].as_str().unwrap().contains("the disk is full"), "{}", refused.body);
    let retry_after: u64 = refused.header("retry-after").expect("507 carries Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry_after));

    // While full: reads work, the node says it is degraded, imports and the
    // CLI are refused with the reason (exit code 5).
    let n = node.node();
    wait_until("/health says degraded", || health(n)["status"] == "degraded");
    let h = health(n);
    assert_eq!((h["store"]["writable"].clone(), h["store"]["fault"].clone()), (json!(false), json!("disk_full")), "{h}");
    assert_eq!(n.request("GET", "/nodes/before:000007", "").1["value"]["i"], 7);
    assert_eq!(n.request("GET", "/nodes?prefix=before:&limit=1000", "").1["nodes"].as_array().unwrap().len(), 200);
    let status = n.request("GET", "/status", "").1;
    assert_eq!(status["store"]["writable"], false, "{status}");
    assert_eq!(metric(n, "pluresdb_store_degraded"), Some(1));
    // The change feed replays from the store while it cannot write.
    assert_eq!(replayed_changes(n, "/changes?prefix=before:&from=%7B%7D", 200), 200);
    assert!(metric(n, "pluresdb_store_faults_total").unwrap() >= 1);
    let import = n.exchange(
        "POST",
        "/import",
        &[&format!("Host: {}", n.api), "Content-Type: application/x-ndjson"],
        &format!("{}\n", json!({"id": "imported:1", "value": {"pad": "i".repeat(2_000)}})),
    );
    assert_eq!(import.status, 507, "{}", import.body);
    let out = cli(&dir, &["put", "cli:1", &value(1)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("the disk is full"), "{stderr}");
    assert!(metric(n, "pluresdb_store_refused_total{what=\"local_writes\"}").unwrap() >= 1);

    // Space is freed: writes resume without a restart.
    filler.free(u64::MAX);
    let freed = Instant::now();
    let mut resumed_after = None;
    let deadline = freed + Duration::from_secs(60);
    while resumed_after.is_none() {
        assert!(Instant::now() < deadline, "writes did not resume within 60 s of freeing space");
        let id = format!("after:{:06}", acknowledged.len());
        if n.request("PUT", &format!("/nodes/{id}"), &value(0)).0 == 200 {
            acknowledged.push(id);
            resumed_after = Some(freed.elapsed());
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    eprintln!("writes resumed {} ms after space was freed", resumed_after.unwrap().as_millis());
    for i in 0..50 {
        let id = format!("after:more:{i:03}");
        assert_eq!(n.request("PUT", &format!("/nodes/{id}"), &value(i)).0, 200);
        acknowledged.push(id);
    }
    wait_until("/health says ok", || health(n)["status"] == "ok");
    assert!(metric(n, "pluresdb_store_recoveries_total").unwrap() >= 1);
    let (clean, stderr) = node.stop();
    assert!(clean, "{stderr}");
    assert!(stderr.contains("the store cannot write") && stderr.contains("the store writes again"), "{stderr}");

    // After a restart every acknowledged write is there, each once.
    let node = Serving(Some(Node::start(&dir)));
    let n = node.node();
    for id in &acknowledged {
        assert_eq!(n.request("GET", &format!("/nodes/{id}"), "").0, 200, "acknowledged write {id} is lost");
    }
    let own = n.request("GET", "/network", "").1["peer_id"].as_str().unwrap().to_owned();
    let held_own = version(n)[&own].as_u64().unwrap();
    assert_eq!(held_own, acknowledged.len() as u64, "operations held = acknowledged writes (nothing applied twice, nothing lost)");
    assert!(node.stop().0);
}

#[test]
fn a_peer_catching_up_into_a_full_disk_pauses_and_resumes_by_itself() {
    let Some(tmpfs) = Tmpfs::mount("64m") else { return };
    let source_dir = tempfile::tempdir().unwrap();
    let a = Serving(Some(Node::start(source_dir.path())));
    // About 5 MB of operations for B to catch up with.
    const NODES: usize = 4_000;
    for batch in 0..(NODES / 500) {
        let lines: String = (batch * 500..(batch + 1) * 500)
            .map(|i| format!("{}\n", json!({"id": format!("a:{i:06}"), "value": {"i": i, "pad": "a".repeat(1_000)}})))
            .collect();
        let answer =
            a.node().exchange("POST", "/import", &[&format!("Host: {}", a.node().api), "Content-Type: application/x-ndjson"], &lines);
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let a_held = held(a.node());
    assert_eq!(a_held, NODES as u64);

    // B starts on a disk with about 6 MB free and joins A.
    let filler = tmpfs.fill();
    filler.free(6 * 1024 * 1024);
    let ticket = invite(source_dir.path(), a.node().listen.as_deref().unwrap());
    let b_dir = tmpfs.path().join("data");
    let b = Serving(Some(Node::start_with(&b_dir, &["--join", &ticket])));
    wait_until("B's disk fills while it catches up", || health(b.node())["status"] == "degraded");
    let b_held_full = held(b.node());
    assert!(b_held_full < a_held, "B stored everything on a full disk?");
    assert!(b_held_full > 0, "B stored nothing before its disk filled: the test does not fill it mid-sync");
    let refused = b.node().request("PUT", "/nodes/b:while-full", "{}");
    assert_eq!(refused.0, 507, "{}", refused.1);
    // A keeps what B has not acknowledged for it.
    let pending = a.node().request("GET", "/status", "").1["pending_operations"].as_u64().unwrap();
    assert!(pending > 0, "A thinks B holds everything");

    filler.free(u64::MAX);
    let freed = Instant::now();
    let deadline = Instant::now() + common::REPLICATION_DEADLINE;
    while held(b.node()) != a_held {
        if Instant::now() > deadline {
            let dump = |n: &Node| n.request("GET", "/status", "").1.to_string();
            let (a_status, b_status) = (dump(a.node()), dump(b.node()));
            let (_, stderr) = b.stop();
            panic!("B did not catch up after space was freed.\nA: {a_status}\nB: {b_status}\nB's log: {stderr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let caught_up = freed.elapsed();
    let status = b.node().request("GET", "/status", "").1;
    eprintln!(
        "B held {b_held_full} of {a_held} operations while full; it caught up {} ms after space was freed; {} operations \
         were not stored while full and were sent again ({} faults, {} recoveries)",
        caught_up.as_millis(),
        status["store"]["ops_not_stored"],
        status["store"]["faults"],
        status["store"]["recoveries"],
    );
    assert!(status["store"]["ops_not_stored"].as_u64().unwrap() > 0, "{status}");
    // Both ways again.
    assert_eq!(b.node().request("PUT", "/nodes/b:after", r#"{"from":"b"}"#).0, 200);
    wait_until("A holds B's write", || a.node().request("GET", "/nodes/b:after", "").0 == 200);
    assert!(b.stop().0);

    // After a restart B holds exactly what A holds.
    let b = Serving(Some(Node::start_with(&b_dir, &["--join", &ticket])));
    wait_until("B and A agree", || version(b.node()) == version(a.node()));
    assert_eq!(b.node().request("GET", &format!("/nodes/a:{:06}", NODES - 1), "").1["value"]["i"], NODES - 1);
    assert!(b.stop().0);
    assert!(a.stop().0);
}

/// Sets the file-size limit (`RLIMIT_FSIZE`) of process `pid` (this user's).
fn set_file_size_limit(pid: u32, bytes: u64) {
    let limit = libc::rlimit { rlim_cur: bytes, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: prlimit reads the struct we own; a null old-limit pointer is allowed.
    let done = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_FSIZE, &limit, std::ptr::null_mut()) };
    assert_eq!(done, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// An I/O error other than a full disk, without root: the node's data file
/// may not grow past a file-size limit (its writes fail with EFBIG, as a
/// failing disk fails with EIO). Writes answer 503 with `Retry-After` and
/// the reason, reads go on, and once the limit is lifted writes resume by
/// themselves; after a restart every acknowledged write is there.
#[test]
fn an_io_error_refuses_writes_with_503_and_writes_resume_once_it_passes() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let mut command = Node::command(dir.path(), &[], &[]);
    // SAFETY: only async-signal-safe calls between fork and exec. An
    // ignored SIGXFSZ stays ignored across exec: a write past the limit then
    // fails with EFBIG instead of killing the node.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let node = Serving(Some(Node::spawn(command)));
    let n = node.node();
    let mut acknowledged = Vec::new();
    for i in 0..100 {
        let id = format!("before:{i:06}");
        assert_eq!(n.request("PUT", &format!("/nodes/{id}"), &value(i)).0, 200);
        acknowledged.push(id);
    }
    let size = std::fs::metadata(dir.path().join("pluresdb.redb")).unwrap().len();
    set_file_size_limit(n.child.id(), size + 256 * 1024);

    let (taken, refused) = write_until_refused(n, "limited", 0);
    acknowledged.extend(taken);
    assert_eq!(refused.status, 503, "{}", refused.body);
    let error = refused.json()["error"].as_str().unwrap().to_owned();
    assert!(error.contains("the store cannot write (an I/O error)") && error.contains("File too large"), "{error}");
    assert!(refused.header("retry-after").is_some_and(|s| s.parse::<u64>().is_ok()));
    assert_eq!(n.request("GET", "/nodes/before:000042", "").1["value"]["i"], 42, "reads go on");
    assert!(metric(n, "pluresdb_store_faults_total").unwrap() >= 1);

    set_file_size_limit(n.child.id(), libc::RLIM_INFINITY);
    wait_until("writes resume", || {
        let id = format!("after:{:06}", acknowledged.len());
        let taken = n.request("PUT", &format!("/nodes/{id}"), &value(0)).0 == 200;
        if taken {
            acknowledged.push(id);
        }
        taken
    });
    for i in 0..20 {
        let id = format!("after:more:{i:03}");
        assert_eq!(n.request("PUT", &format!("/nodes/{id}"), &value(i)).0, 200);
        acknowledged.push(id);
    }
    assert!(metric(n, "pluresdb_store_recoveries_total").unwrap() >= 1);
    assert!(node.stop().0);

    let node = Serving(Some(Node::start(dir.path())));
    for id in &acknowledged {
        assert_eq!(node.node().request("GET", &format!("/nodes/{id}"), "").0, 200, "acknowledged write {id} is lost");
    }
    assert!(node.stop().0);
}
