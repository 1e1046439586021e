//! Two `pluresdb serve` processes on loopback, measured as a user's app
//! meets them: `cargo bench --bench two_process`.
//!
//! Node A and node B are the release binary, started the way the README
//! starts them (B joins A with the ticket `pluresdb invite` prints); the
//! bench talks to them only through their HTTP API and the `/changes`
//! WebSocket. It prints, each beside its target and the limit of this
//! machine measured in the same run (raw redb, raw quinn, an HTTP round
//! trip that writes nothing):
//!
//! 1. memory: the resident size of both processes after 50,000 records
//!    were written on A and replicated to B, at the moment B holds the last
//!    one (the figure of record) and 2 s later;
//! 2. throughput: 100,000 ~100-byte records `POST /import`ed on A (5,000 a
//!    request), until B holds them all;
//! 3. latency: sequential `PUT /nodes/{id}` on A over one keep-alive
//!    connection, each timed to its answer and to its change event on a
//!    WebSocket of B's `/changes`, with where the time goes (from the
//!    nodes' `/metrics`: A's commit, B's apply);
//! 4. catch-up: a fresh node C joins A holding 1,000,000 operations
//!    (`PLURESDB_BENCH_CATCHUP=N` changes the count): time until C holds
//!    them all, and C's resident size after.
//!
//! `PLURESDB_BENCH_QUICK=1` scales every count down by 10 for a smoke run;
//! `PLURESDB_BENCH_LATENCY_ONLY=1` runs phase 3 alone (on nodes that hold
//! only its own writes: for comparing builds, not for the figures of record);
//! `PLURESDB_BENCH_BIN=path` runs another `pluresdb` binary (an earlier
//! build, to compare before and after on the same machine).
//! Every wait has a deadline.

#[path = "support/baselines.rs"]
mod baselines;
#[path = "support/report.rs"]
mod report;
use report::{ms, quantile, verdict};
#[path = "support/http.rs"]
mod http;

use anyhow::{anyhow, bail, Context};
use futures_util::StreamExt;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const MEMORY_RECORDS: usize = 50_000;
const THROUGHPUT_RECORDS: usize = 100_000;
/// Records per `POST /import` request (~650 KB of NDJSON, under the 2 MiB cap).
const IMPORT_BATCH: usize = 5_000;
const LATENCY_SAMPLES: usize = 2_000;
const LATENCY_WARMUP: usize = 100;
const DEFAULT_CATCHUP: usize = 1_000_000;
/// How long the memory phase waits before its second, idle reading.
const SETTLE: Duration = Duration::from_secs(2);
/// How often a wait polls a node's `/status`.
const POLL: Duration = Duration::from_millis(2);

/// A `pluresdb serve` process.
struct Node {
    child: Child,
    api: SocketAddr,
    /// Where peers reach it.
    listen: String,
    dir: tempfile::TempDir,
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 where it
/// cannot be asked).
fn clock_ticks_per_sec() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The `pluresdb` binary the nodes run.
fn binary() -> std::ffi::OsString {
    std::env::var_os("PLURESDB_BENCH_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_pluresdb").into())
}

impl Node {
    fn start(name: &str, join: Option<&str>) -> anyhow::Result<Node> {
        let dir = tempfile::Builder::new().prefix(&format!("pluresdb-bench-{name}-")).tempdir()?;
        // As a user's data directory is: private (or the node warns).
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let mut command = Command::new(binary());
        command
            .args(["--json", "--data-dir"])
            .arg(dir.path())
            .args(["serve", "--api-addr", "127.0.0.1:0", "--bind", "127.0.0.1", "--port", "0", "--no-mdns"])
            .env_remove("PLURESDB_API_ADDR")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(ticket) = join {
            command.args(["--join", ticket]);
        }
        let mut child = command.spawn().context("cannot start pluresdb serve")?;
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().context("no stdout")?).read_line(&mut line)?;
        let started: Value = serde_json::from_str(&line).with_context(|| format!("{name}: no start line: {line:?}"))?;
        let api = started["api"].as_str().context("no api address")?.trim_start_matches("http://").parse()?;
        let listen = started["listen"].as_array().and_then(|l| l.first()).and_then(Value::as_str).context("no peer address")?.to_owned();
        Ok(Node { child, api, listen, dir })
    }

    /// CPU time the process has used so far, all threads, user and system:
    /// what a phase costs it, which other load on the machine changes far
    /// less than it changes wall time.
    fn cpu_secs(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // The fields after the command name (which may hold spaces) in ")".
        let fields: Vec<&str> = stat.rsplit_once(')').context("odd /proc stat")?.1.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).context("odd /proc stat");
        // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
        Ok((ticks(11)? + ticks(12)?) / clock_ticks_per_sec())
    }

    /// The process's resident memory, split as the kernel counts it.
    fn memory(&self) -> anyhow::Result<Memory> {
        let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", self.child.id()))?;
        let mib = |field: &str| -> anyhow::Result<f64> {
            let kib: f64 = rollup
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("no {field} in smaps_rollup"))?;
            Ok(kib / 1024.0)
        };
        Ok(Memory { rss: mib("Rss:")?, anon: mib("Anonymous:")? })
    }

    /// A ticket to A's network naming its peer address.
    fn invite(&self) -> anyhow::Result<String> {
        let out = Command::new(binary())
            .args(["--json", "--data-dir"])
            .arg(self.dir.path())
            .args(["invite", "--address", &self.listen])
            .output()?;
        if !out.status.success() {
            bail!("invite failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let answer: Value = serde_json::from_slice(&out.stdout)?;
        Ok(answer["ticket"].as_str().context("no ticket")?.to_owned())
    }
}

/// Resident memory in MiB: all of it, and the anonymous part (the heap:
/// the store's page cache, buffers, what the allocator has not returned);
/// the rest is file pages, mostly the binary's code, shared with the page
/// cache.
struct Memory {
    rss: f64,
    anon: f64,
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1} MiB ({:.1} anonymous, {:.1} file)", self.rss, self.anon, self.rss - self.anon)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get_json(connection: &mut http::Connection, path: &str) -> anyhow::Result<Value> {
    let status = connection.request("GET", path, "", b"").await?;
    if status != 200 {
        bail!("GET {path}: {}", http::describe(status, connection.body()));
    }
    Ok(serde_json::from_slice(connection.body())?)
}

async fn held(connection: &mut http::Connection) -> anyhow::Result<u64> {
    Ok(get_json(connection, "/status").await?["operations_held"].as_u64().unwrap_or(0))
}

/// Polls `node` until it holds at least `count` operations.
async fn wait_held(node: &Node, count: u64, limit: Duration, what: &str) -> anyhow::Result<Duration> {
    let mut connection = http::Connection::open(node.api).await?;
    let started = Instant::now();
    loop {
        let now = held(&mut connection).await?;
        if now >= count {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            bail!("{what}: {now} of {count} operations after {:.0} s", limit.as_secs_f64());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls until `node` lists a connected peer.
async fn wait_linked(node: &Node) -> anyhow::Result<String> {
    let mut connection = http::Connection::open(node.api).await?;
    let started = Instant::now();
    loop {
        let peers = get_json(&mut connection, "/peers").await?;
        let linked = peers["peers"].as_array().and_then(|list| list.iter().find(|p| p["connected"].as_bool() == Some(true)));
        if let Some(peer) = linked {
            return Ok(peer["transport"].as_str().unwrap_or("?").to_owned());
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("no peer linked after 30 s: {peers}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Imports `count` records `prefix:N` (from `start`) on `node`,
/// `IMPORT_BATCH` a request, over one connection; returns the time.
async fn import(node: &Node, prefix: &str, start: usize, count: usize) -> anyhow::Result<Duration> {
    let bodies: Vec<Vec<u8>> = (start..start + count)
        .collect::<Vec<_>>()
        .chunks(IMPORT_BATCH)
        .map(|chunk| {
            let mut body = Vec::with_capacity(chunk.len() * 140);
            for &i in chunk {
                let line = serde_json::json!({"id": format!("{prefix}:{i:08}"), "value": baselines::value(i)});
                body.extend_from_slice(line.to_string().as_bytes());
                body.push(b'\n');
            }
            body
        })
        .collect();
    let mut connection = http::Connection::open(node.api).await?;
    let started = Instant::now();
    for body in &bodies {
        let status = connection.request("POST", "/import", "application/x-ndjson", body).await?;
        if status != 200 {
            bail!("POST /import: {}", http::describe(status, connection.body()));
        }
    }
    Ok(started.elapsed())
}

/// The counters of `/metrics` that split a write's time.
#[derive(Clone, Copy, Default)]
struct Counters {
    commits: f64,
    commit_us: f64,
    applies: f64,
    apply_us: f64,
}

async fn counters(node: &Node) -> anyhow::Result<Counters> {
    let mut connection = http::Connection::open(node.api).await?;
    let status = connection.request("GET", "/metrics", "", b"").await?;
    if status != 200 {
        bail!("GET /metrics: {status}");
    }
    let text = String::from_utf8_lossy(connection.body()).into_owned();
    let read = |name: &str| -> f64 {
        text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
    };
    Ok(Counters {
        commits: read("pluresdb_commits_total"),
        commit_us: read("pluresdb_commit_microseconds_total"),
        applies: read("pluresdb_remote_applies_total"),
        apply_us: read("pluresdb_remote_apply_microseconds_total"),
    })
}

struct Latency {
    answered: Vec<Duration>,
    to_peer: Vec<Duration>,
    http_rtt: Vec<Duration>,
    /// Mean per commit on A, per applied message on B, over the samples.
    a_commit: Duration,
    b_apply: Duration,
}

async fn latency(a: &Node, b: &Node, samples: usize) -> anyhow::Result<Latency> {
    let url = format!("ws://{}/changes?prefix=lat:", b.api);
    let (mut socket, _) =
        tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(url.as_str())).await.context("no WebSocket")??;
    let mut connection = http::Connection::open(a.api).await?;
    // What an HTTP round trip costs that writes nothing.
    let mut http_rtt = Vec::with_capacity(samples);
    for i in 0..LATENCY_WARMUP + samples {
        let started = Instant::now();
        let status = connection.request("GET", "/health", "", b"").await?;
        if status != 200 {
            bail!("GET /health: {status}");
        }
        if i >= LATENCY_WARMUP {
            http_rtt.push(started.elapsed());
        }
    }
    let (mut a_before, mut b_before) = (Counters::default(), Counters::default());
    let mut answered = Vec::with_capacity(samples);
    let mut to_peer = Vec::with_capacity(samples);
    for i in 0..LATENCY_WARMUP + samples {
        if i == LATENCY_WARMUP {
            // The split covers the measured writes only.
            (a_before, b_before) = (counters(a).await?, counters(b).await?);
        }
        let id = format!("lat:{i:08}");
        let body = baselines::value(i).to_string();
        let started = Instant::now();
        let status = connection.request("PUT", &format!("/nodes/{id}"), "application/json", body.as_bytes()).await?;
        let answer = started.elapsed();
        if !(200..300).contains(&status) {
            bail!("PUT /nodes/{id}: {}", http::describe(status, connection.body()));
        }
        let arrived = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(message) = socket.next().await {
                if let Message::Text(text) = message? {
                    // Cheap: the id is unique in the text of its own event only.
                    if text.as_str().contains(&id) {
                        return anyhow::Ok(started.elapsed());
                    }
                }
            }
            Err(anyhow!("B's /changes closed"))
        })
        .await
        .with_context(|| format!("write {id} did not reach B's /changes within 10 s"))??;
        if i >= LATENCY_WARMUP {
            answered.push(answer);
            to_peer.push(arrived);
        }
    }
    let (a_after, b_after) = (counters(a).await?, counters(b).await?);
    let mean = |us: f64, n: f64| Duration::from_secs_f64(if n > 0.0 { us / n / 1e6 } else { 0.0 });
    let a_commit = mean(a_after.commit_us - a_before.commit_us, a_after.commits - a_before.commits);
    let b_apply = mean(b_after.apply_us - b_before.apply_us, b_after.applies - b_before.applies);
    answered.sort();
    to_peer.sort();
    http_rtt.sort();
    Ok(Latency { answered, to_peer, http_rtt, a_commit, b_apply })
}

/// Phase 3: `samples` sequential PUTs on A, each to its answer and to its
/// event on B's `/changes`, with where the time goes.
async fn latency_phase(a: &Node, b: &Node, samples: usize) -> anyhow::Result<()> {
    println!("3. latency: {samples} sequential PUTs on A (one keep-alive connection), each to its answer and to its event on B's /changes");
    let l = latency(a, b, samples).await?;
    let quinn_rtt = baselines::raw_quinn_rtt(samples).await?;
    let (rtt50, rtt99) = (quantile(&l.http_rtt, 0.5), quantile(&l.http_rtt, 0.99));
    let (put50, put99) = (quantile(&l.answered, 0.5), quantile(&l.answered, 0.99));
    let (peer50, peer99) = (quantile(&l.to_peer, 0.5), quantile(&l.to_peer, 0.99));
    let q50 = quantile(&quinn_rtt, 0.5);
    println!("  HTTP round trip, no write (GET /health): p50 {:.3} ms, p99 {:.3} ms", ms(rtt50), ms(rtt99));
    println!(
        "  PUT answered (durable on A):             p50 {:.3} ms, p99 {:.3} ms   target p50 <= HTTP round trip + 0.3 ms ({:.3}): {}",
        ms(put50),
        ms(put99),
        ms(rtt50) + 0.3,
        verdict(put50 <= rtt50 + Duration::from_micros(300))
    );
    println!(
        "  PUT to event on B's /changes:            p50 {:.3} ms, p99 {:.3} ms   target p50 <= 1 ms: {}",
        ms(peer50),
        ms(peer99),
        verdict(peer50 <= Duration::from_millis(1))
    );
    println!("  raw quinn round trip:                    p50 {:.3} ms   (PUT to event = {:.1}x)", ms(q50), ms(peer50) / ms(q50).max(1e-9));
    let (redb_single, fdatasync) = (baselines::raw_redb_single_commits(samples / 2)?, baselines::raw_fdatasync(samples / 2)?);
    println!(
        "  raw redb, one insert a durable txn:      p50 {:.3} ms; fdatasync of 100 B: p50 {:.3} ms",
        ms(quantile(&redb_single, 0.5)),
        ms(quantile(&fdatasync, 0.5))
    );
    println!("  where the time goes (p50 of the trip; means from /metrics):");
    println!("    HTTP request and answer          {:.3} ms", ms(rtt50));
    println!("    A's commit (merge, sign, fsync)  {:.3} ms (mean)", ms(l.a_commit));
    println!("    rest of the PUT (queue, reply)   {:.3} ms", (ms(put50) - ms(rtt50) - ms(l.a_commit)).max(0.0));
    println!("    B's apply (decode, verify, fsync){:.3} ms (mean)", ms(l.b_apply));
    println!("    frame, network, event delivery   {:.3} ms\n", (ms(peer50) - ms(put50) - ms(l.b_apply)).max(0.0));
    Ok(())
}

async fn run() -> anyhow::Result<()> {
    let scale = if std::env::var_os("PLURESDB_BENCH_QUICK").is_some() { 10 } else { 1 };
    let catchup: usize = std::env::var("PLURESDB_BENCH_CATCHUP").ok().and_then(|n| n.parse().ok()).unwrap_or(DEFAULT_CATCHUP / scale);
    let (memory_records, throughput_records, samples) = (MEMORY_RECORDS / scale, THROUGHPUT_RECORDS / scale, LATENCY_SAMPLES / scale);

    println!("PluresDB, two `pluresdb serve` processes on loopback (release build), driven through their HTTP API");
    let a = Node::start("a", None)?;
    let ticket = a.invite()?;
    let b = Node::start("b", Some(&ticket))?;
    let transport = wait_linked(&b).await?;
    println!("(B joined A's ticket; linked over {transport})\n");

    if std::env::var_os("PLURESDB_BENCH_LATENCY_ONLY").is_some() {
        return latency_phase(&a, &b, samples).await;
    }

    println!("1. memory after {memory_records} records written on A and replicated to B");
    import(&a, "mem", 0, memory_records).await?;
    wait_held(&b, memory_records as u64, Duration::from_secs(120), "B catching up").await?;
    let (a_rss, b_rss) = (a.memory()?, b.memory()?);
    println!("  RSS: A {a_rss}, B {b_rss}   target <= 50 MB: {}", verdict(a_rss.rss.max(b_rss.rss) * 1.048_576 <= 50.0));
    // The reading of record is the one above, taken as B holds the last
    // record, while A may still hold its import burst; this one shows what
    // the nodes hold once that burst is over (the store cache full).
    tokio::time::sleep(SETTLE).await;
    println!("  {} s later: A {}, B {}", SETTLE.as_secs(), a.memory()?, b.memory()?);
    println!(
        "  (store cache: the default store_cache_mib, {} MiB of pages, which redb's allocations make ~2x that in RSS)\n",
        pluresdb_store_redb::DEFAULT_CACHE_BYTES >> 20
    );

    println!("2. throughput: {throughput_records} records POSTed to A's /import ({IMPORT_BATCH} a request) until B holds them");
    let before = memory_records as u64;
    let b_waits = wait_held(&b, before + throughput_records as u64, Duration::from_secs(300), "B replicating");
    let cpu_before = (a.cpu_secs()?, b.cpu_secs()?);
    let (imported, replicated) = tokio::join!(import(&a, "bulk", 0, throughput_records), b_waits);
    let (imported, replicated) = (imported?, replicated?);
    let cpu_used = (a.cpu_secs()? - cpu_before.0, b.cpu_secs()? - cpu_before.1);
    let import_rate = throughput_records as f64 / imported.as_secs_f64();
    let replicated_rate = throughput_records as f64 / replicated.as_secs_f64();
    let redb = baselines::raw_redb(throughput_records)?;
    let redb_rate = throughput_records as f64 / redb.as_secs_f64();
    let quinn = baselines::raw_quinn_stream(throughput_records, 199).await?;
    let quinn_rate = throughput_records as f64 / quinn.as_secs_f64();
    println!("  imported on A (answers):   {import_rate:>9.0} records/s");
    println!(
        "  replicated to B:           {replicated_rate:>9.0} records/s   target >= 250000 (replication), >= 150000 (import then replicated): {} / {}",
        verdict(replicated_rate >= 250_000.0),
        verdict(replicated_rate >= 150_000.0)
    );
    println!(
        "  raw redb, 1000/txn:        {redb_rate:>9.0} writes/s    replication reaches {:.1}% of it   target >= 30%: {}",
        100.0 * replicated_rate / redb_rate,
        verdict(replicated_rate >= 0.3 * redb_rate)
    );
    println!(
        "  raw quinn, 199-B records:  {quinn_rate:>9.0} records/s   replication reaches {:.1}% of it",
        100.0 * replicated_rate / quinn_rate
    );
    let per_record = |secs: f64| secs * 1e6 / throughput_records as f64;
    println!(
        "  CPU per record (all threads): A {:.1} us, B {:.1} us; raw redb {:.1} us a write (wall)\n",
        per_record(cpu_used.0),
        per_record(cpu_used.1),
        redb.as_secs_f64() * 1e6 / throughput_records as f64
    );

    latency_phase(&a, &b, samples).await?;

    println!("4. catch-up: a fresh node C joins A holding {catchup} more operations (PLURESDB_BENCH_CATCHUP=N to change)");
    drop(b);
    let loaded = import(&a, "catchup", 0, catchup).await?;
    println!("  (A imported them in {:.1} s)", loaded.as_secs_f64());
    let total = {
        let mut connection = http::Connection::open(a.api).await?;
        held(&mut connection).await?
    };
    let started = Instant::now();
    let a_cpu_before = a.cpu_secs()?;
    let c = Node::start("c", Some(&ticket))?;
    wait_held(&c, total, Duration::from_secs(600), "C catching up").await?;
    let took = started.elapsed();
    let (a_cpu, c_cpu) = (a.cpu_secs()? - a_cpu_before, c.cpu_secs()?);
    let c_rss = c.memory()?;
    println!(
        "  C held all {total} operations {:.2} s after it started ({:.0} ops/s)   target <= 3 s for 1,000,000: {}",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64(),
        if catchup < DEFAULT_CATCHUP { "not judged (fewer than 1,000,000)" } else { verdict(took <= Duration::from_secs(3)) }
    );
    println!(
        "  CPU per operation (all threads): A sending {:.2} us, C receiving {:.2} us",
        a_cpu * 1e6 / total as f64,
        c_cpu * 1e6 / total as f64
    );
    println!("  RSS: C {} after the sync, A {}   target <= 100 MB: {}", c_rss, a.memory()?, verdict(c_rss.rss * 1.048_576 <= 100.0));
    Ok(())
}

fn main() {
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start a runtime: {err}");
            std::process::exit(1);
        }
    };
    if let Err(err) = runtime.block_on(run()) {
        eprintln!("two_process bench failed: {err:#}");
        std::process::exit(1);
    }
}
