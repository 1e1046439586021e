//! Throughput and latency of the HTTP and WebSocket API of a node, against
//! the same replica used directly, all in one process.
//!
//! A node is started as `pluresdb serve` starts it (a signed replica on
//! redb, the runtime's writer, the API on a multi-thread tokio runtime) on
//! 127.0.0.1:0. A load generator on its own tokio runtime drives it over 64
//! keep-alive HTTP/1.1 connections, written by hand over `TcpStream` (one
//! request at a time per connection), and 100 WebSocket subscribers of
//! `/changes`. The baselines run afterwards on an equally prepared replica:
//! `Reader::get` on one thread, `Handle::write` from 64 tasks (the same group
//! commit without HTTP), and `Database::put` (one transaction per write).
//!
//! Run with `cargo bench --bench api`; `PLURESDB_BENCH_SECS` sets the
//! measured seconds per figure (default 5, after a 1 s warm-up). The load
//! generator shares the machine's two cores with the node, so the HTTP
//! figures are what one box does serving itself.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use futures_util::StreamExt;
use pluresdb_core::{Database, OperationType, OperationWithMetadata, Reader};
use pluresdb_runtime::{Handle, RuntimeOptions, WriteKind};
use pluresdb_security::{Identity, NetworkSecret, OpSignatureVerifier};
use pluresdb_store_redb::RedbStore;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Concurrent HTTP connections (and runtime writer tasks).
const CONNECTIONS: u64 = 64;
/// Nodes written before the read figures are taken.
const PRELOAD: u64 = 100_000;
/// Nodes per `POST /import` request (~1.4 MB of NDJSON, under the 2 MiB cap).
const IMPORT_BATCH: u64 = 10_000;
const WARMUP: Duration = Duration::from_secs(1);
/// WebSocket subscribers of `/changes`.
const SUBSCRIBERS: usize = 100;
/// Writes whose changes every subscriber must receive.
const FEED_WRITES: u64 = 20_000;
/// The feed's default buffer per subscriber (`RuntimeOptions::watch_buffer`).
const FEED_BUFFER: u64 = 4_096;
/// In the paced fan-out run, how far writers may get ahead of the slowest
/// subscriber: half the buffer, so nobody lags.
const PACE_WINDOW: u64 = FEED_BUFFER / 2;
/// Any single request, connection or message wait.
const STEP_DEADLINE: Duration = Duration::from_secs(10);
/// A whole fan-out run.
const FANOUT_DEADLINE: Duration = Duration::from_secs(120);
const TARGET_READS: f64 = 20_000.0;
const TARGET_WRITES: f64 = 10_000.0;

type Replica = Database<RedbStore>;

/// A value of ~100 bytes of JSON.
fn value_json(i: u64) -> String {
    format!(r#"{{"name":"User {i}","email":"user{i}@example.org","age":{},"city":"Lisbon","active":true,"score":{}}}"#, i % 97, i % 1_000)
}

fn value(i: u64) -> serde_json::Value {
    serde_json::from_str(&value_json(i)).expect("the value is valid JSON")
}

/// xorshift64*: random ids without a dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// When a measurement runs: warm-up until `from`, measured until `until`.
#[derive(Clone, Copy)]
struct Window {
    from: Instant,
    until: Instant,
}

impl Window {
    fn starting_now(secs: Duration) -> Self {
        let from = Instant::now() + WARMUP;
        Self { from, until: from + secs }
    }

    fn seconds(&self) -> f64 {
        (self.until - self.from).as_secs_f64()
    }
}

/// Operations finished inside a window and their latencies.
#[derive(Default)]
struct Sample {
    ops: u64,
    failed: u64,
    first_failure: Option<String>,
    latencies_us: Vec<u32>,
}

impl Sample {
    fn record(&mut self, window: &Window, started: Instant, outcome: Result<(), String>) {
        let finished = Instant::now();
        if started < window.from || finished > window.until {
            return;
        }
        match outcome {
            Ok(()) => {
                self.ops += 1;
                self.latencies_us.push((finished - started).as_micros().min(u32::MAX as u128) as u32);
            }
            Err(why) => {
                self.failed += 1;
                self.first_failure.get_or_insert(why);
            }
        }
    }

    fn merge(&mut self, other: Sample) {
        self.ops += other.ops;
        self.failed += other.failed;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
        self.latencies_us.extend(other.latencies_us);
    }

    fn figure(mut self, window: &Window) -> Figure {
        self.latencies_us.sort_unstable();
        let at = |q: f64| -> f64 {
            match self.latencies_us.len() {
                0 => f64::NAN,
                n => f64::from(self.latencies_us[((n as f64 * q) as usize).min(n - 1)]) / 1_000.0,
            }
        };
        Figure {
            rate: self.ops as f64 / window.seconds(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            failed: self.failed,
            first_failure: self.first_failure,
        }
    }
}

/// A throughput with request latencies.
struct Figure {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    failed: u64,
    first_failure: Option<String>,
}

/// Sums the samples of concurrent tasks; a task that failed outright
/// (its connection broke) is counted and its error kept.
async fn gather(tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Sample>>>) -> Sample {
    let mut total = Sample::default();
    for task in tasks {
        match task.await.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(sample) => total.merge(sample),
            Err(err) => {
                total.failed += 1;
                total.first_failure.get_or_insert(format!("a connection failed: {err:#}"));
            }
        }
    }
    total
}

#[path = "support/http.rs"]
mod http;

/// Opens a fresh replica in `dir` as `pluresdb serve` does: its writes
/// signed with a new identity, peers' writes verified.
fn open_replica(dir: &std::path::Path) -> anyhow::Result<Replica> {
    let store = RedbStore::open(dir)?;
    let identity = Identity::generate()?;
    let peer_id = identity.peer_id().to_string();
    Ok(Database::open(store, peer_id)?.with_signer(Arc::new(identity)).with_verifier(Arc::new(OpSignatureVerifier)))
}

/// A node serving the API: its server runtime, address and stop signal.
struct Node {
    server: tokio::runtime::Runtime,
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Node {
    fn start(db: Replica) -> anyhow::Result<Self> {
        let server = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr, served) = server.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let runtime = pluresdb_runtime::Runtime::start(db, RuntimeOptions::default())?;
            let state = pluresdb_server::ApiState::new(runtime.handle(), NetworkSecret::generate()?, "unused".into(), false);
            let served = tokio::spawn(async move {
                let served = pluresdb_server::serve(listener, state, async {
                    let _ = stopped.await;
                })
                .await;
                runtime.shutdown().await;
                served
            });
            anyhow::Ok((addr, served))
        })?;
        Ok(Self { server, addr, stop, served })
    }

    /// Stops serving (the client's connections must be closed by then) and
    /// lets the writer close the replica.
    fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        let served = self.served;
        let result = self.server.block_on(async { tokio::time::timeout(Duration::from_secs(30), served).await });
        self.server.shutdown_timeout(Duration::from_secs(5));
        match result {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(err))) => Err(err).context("the API server failed"),
            Ok(Err(err)) => Err(err).context("the server task failed"),
            Err(_) => anyhow::bail!("the node did not stop within 30 s"),
        }
    }
}

/// Loads `PRELOAD` nodes `bench:0..` through `POST /import`.
async fn http_preload(addr: SocketAddr) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut conn = http::Connection::open(addr).await?;
    let mut body = String::new();
    for first in (0..PRELOAD).step_by(IMPORT_BATCH as usize) {
        body.clear();
        for i in first..(first + IMPORT_BATCH).min(PRELOAD) {
            let _ = writeln!(body, r#"{{"id":"bench:{i}","value":{}}}"#, value_json(i));
        }
        let status = conn.request("POST", "/import", "application/x-ndjson", body.as_bytes()).await?;
        if status != 200 {
            anyhow::bail!("import failed: {}", http::describe(status, conn.body()));
        }
    }
    Ok(started.elapsed())
}

/// `GET /nodes/bench:{random preloaded id}` from every connection.
async fn http_reads(addr: SocketAddr, secs: Duration) -> anyhow::Result<Figure> {
    let window = Window::starting_now(secs);
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        tasks.push(tokio::spawn(async move {
            let mut conn = http::Connection::open(addr).await?;
            let mut rng = Rng::new(c + 1);
            let mut sample = Sample::default();
            let mut path = String::new();
            while Instant::now() < window.until {
                path.clear();
                let _ = write!(path, "/nodes/bench:{}", rng.below(PRELOAD));
                let started = Instant::now();
                let status = conn.request("GET", &path, "", b"").await?;
                let outcome = if status == 200 { Ok(()) } else { Err(http::describe(status, conn.body())) };
                sample.record(&window, started, outcome);
            }
            anyhow::Ok(sample)
        }));
    }
    Ok(gather(tasks).await.figure(&window))
}

/// `PUT /nodes/bench:{n}` of new nodes from every connection, each its own ids.
async fn http_writes(addr: SocketAddr, secs: Duration) -> anyhow::Result<Figure> {
    let window = Window::starting_now(secs);
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        tasks.push(tokio::spawn(async move {
            let mut conn = http::Connection::open(addr).await?;
            let mut sample = Sample::default();
            let mut path = String::new();
            let mut n = PRELOAD + c;
            while Instant::now() < window.until {
                path.clear();
                let _ = write!(path, "/nodes/bench:{n}");
                let body = value_json(n);
                n += CONNECTIONS;
                let started = Instant::now();
                let status = conn.request("PUT", &path, "application/json", body.as_bytes()).await?;
                let outcome = if status == 200 { Ok(()) } else { Err(http::describe(status, conn.body())) };
                sample.record(&window, started, outcome);
            }
            anyhow::Ok(sample)
        }));
    }
    Ok(gather(tasks).await.figure(&window))
}

/// The part of a `/changes` message the fan-out check reads. A plain
/// struct rather than the server's internally tagged `ChangeMessage`: serde
/// buffers a tagged enum's whole message before decoding it, and this
/// client shares the CPU with the node it measures.
#[derive(Deserialize)]
struct FeedMessage<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    version: Option<BTreeMap<String, u64>>,
    op: Option<FeedOp>,
    missed: Option<u64>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct FeedOp {
    seq: u64,
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// How a subscriber's run ended.
enum SubscriberEnd {
    /// It received every change.
    Complete,
    Lagged {
        missed: u64,
    },
    /// The socket closed, an error came, or nothing arrived in time.
    Broken(String),
}

struct SubscriberRun {
    /// The `seq` of each change received, in order.
    seqs: Vec<u64>,
    /// When the last one arrived.
    last_at: Option<Instant>,
    end: SubscriberEnd,
}

/// What one fan-out run saw.
struct FanOut {
    writes: u64,
    write_failures: u64,
    first_write_failure: Option<String>,
    complete: usize,
    lagged: usize,
    missed: u64,
    broken: Vec<String>,
    /// Complete subscribers whose order differs from the first complete one's.
    order_mismatches: usize,
    /// Complete subscribers whose seqs are not consecutive from the start.
    gaps: usize,
    /// Changes delivered to complete subscribers.
    delivered: u64,
    /// From the first write to the last delivery to a complete subscriber.
    elapsed: Duration,
    writes_elapsed: Duration,
}

impl FanOut {
    fn rate(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64()
    }
}

/// Connects a subscriber and waits for `subscribed`; returns the socket and
/// the sequence number the feed starts after.
async fn subscribe(addr: SocketAddr) -> anyhow::Result<(Socket, u64)> {
    let url = format!("ws://{addr}/changes");
    let (mut socket, _) = tokio::time::timeout(STEP_DEADLINE, tokio_tungstenite::connect_async(url.as_str()))
        .await
        .context("no WebSocket handshake in time")??;
    loop {
        let message = tokio::time::timeout(STEP_DEADLINE, socket.next()).await.context("no `subscribed` in time")?;
        match message {
            Some(Ok(Message::Text(text))) => match serde_json::from_str::<FeedMessage>(text.as_str())? {
                // One origin writes in this benchmark: the node's own.
                FeedMessage { kind: "subscribed", version: Some(version), .. } => {
                    return Ok((socket, version.values().copied().max().unwrap_or(0)))
                }
                _ => anyhow::bail!("the first message was not `subscribed`: {}", text.as_str()),
            },
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(err.into()),
            None => anyhow::bail!("the socket closed before `subscribed`"),
        }
    }
}

/// Reads changes until `expected` arrived, the subscriber lagged, the
/// socket broke, or the deadline; publishes its progress in `progress`
/// (`u64::MAX` once it stops, so writers no longer wait for it).
async fn receive(mut socket: Socket, expected: u64, progress: Arc<AtomicU64>, deadline: Instant) -> SubscriberRun {
    let mut run = SubscriberRun { seqs: Vec::with_capacity(expected as usize), last_at: None, end: SubscriberEnd::Complete };
    while (run.seqs.len() as u64) < expected {
        let wait = deadline.min(Instant::now() + STEP_DEADLINE);
        let message = match tokio::time::timeout_at(wait.into(), socket.next()).await {
            Ok(message) => message,
            Err(_) => {
                run.end = SubscriberEnd::Broken(format!("timed out after {} of {expected} changes", run.seqs.len()));
                break;
            }
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                run.end = SubscriberEnd::Broken(format!("closed ({frame:?}) after {} changes", run.seqs.len()));
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(err)) => {
                run.end = SubscriberEnd::Broken(format!("socket error after {} changes: {err}", run.seqs.len()));
                break;
            }
            None => {
                run.end = SubscriberEnd::Broken(format!("socket ended after {} changes", run.seqs.len()));
                break;
            }
        };
        match serde_json::from_str::<FeedMessage>(text.as_str()) {
            Ok(FeedMessage { kind: "change", op: Some(op), .. }) => {
                run.seqs.push(op.seq);
                run.last_at = Some(Instant::now());
                progress.store(run.seqs.len() as u64, Ordering::Relaxed);
            }
            Ok(FeedMessage { kind: "lagged", missed, .. }) => {
                run.end = SubscriberEnd::Lagged { missed: missed.unwrap_or(0) };
                break;
            }
            Ok(FeedMessage { kind: "error", error, .. }) => {
                run.end = SubscriberEnd::Broken(format!("error message: {}", error.unwrap_or_default()));
                break;
            }
            Ok(other) => {
                run.end = SubscriberEnd::Broken(format!("unexpected `{}` message", other.kind));
                break;
            }
            Err(err) => {
                run.end = SubscriberEnd::Broken(format!("undecodable message: {err}"));
                break;
            }
        }
    }
    progress.store(u64::MAX, Ordering::Relaxed);
    run
}

/// Subscribes `SUBSCRIBERS` sockets to `/changes`, then writes
/// `FEED_WRITES` nodes over `CONNECTIONS` connections and checks that every
/// subscriber received every change in the same order. With `pace`, writers
/// stay at most that many writes ahead of the slowest live subscriber.
async fn ws_fanout(addr: SocketAddr, tag: &str, pace: Option<u64>) -> anyhow::Result<FanOut> {
    let deadline = Instant::now() + FANOUT_DEADLINE;
    let mut sockets = Vec::new();
    let mut connecting = Vec::new();
    for _ in 0..SUBSCRIBERS {
        connecting.push(tokio::spawn(subscribe(addr)));
    }
    for task in connecting {
        sockets.push(task.await??);
    }
    let progress: Arc<Vec<Arc<AtomicU64>>> = Arc::new((0..SUBSCRIBERS).map(|_| Arc::new(AtomicU64::new(0))).collect());
    let mut subscribers = Vec::new();
    let mut starts = Vec::new();
    for (i, (socket, start)) in sockets.into_iter().enumerate() {
        starts.push(start);
        subscribers.push(tokio::spawn(receive(socket, FEED_WRITES, progress[i].clone(), deadline)));
    }

    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut writers = Vec::new();
    for c in 0..CONNECTIONS {
        let (progress, issued, tag) = (progress.clone(), issued.clone(), tag.to_owned());
        writers.push(tokio::spawn(async move {
            let mut conn = http::Connection::open(addr).await?;
            let mut sample = Sample::default();
            let whole = Window { from: Instant::now(), until: deadline };
            let mut path = String::new();
            for n in (c..FEED_WRITES).step_by(CONNECTIONS as usize) {
                if let Some(window) = pace {
                    while Instant::now() < deadline {
                        let slowest = progress.iter().map(|p| p.load(Ordering::Relaxed)).min().unwrap_or(u64::MAX);
                        if issued.load(Ordering::Relaxed).saturating_sub(slowest) < window {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                if Instant::now() >= deadline {
                    break;
                }
                issued.fetch_add(1, Ordering::Relaxed);
                path.clear();
                let _ = write!(path, "/nodes/{tag}:{n}");
                let body = value_json(n);
                let t = Instant::now();
                let status = conn.request("PUT", &path, "application/json", body.as_bytes()).await?;
                let outcome = if status == 200 { Ok(()) } else { Err(http::describe(status, conn.body())) };
                sample.record(&whole, t, outcome);
            }
            anyhow::Ok(sample)
        }));
    }
    let written = gather(writers).await;
    let writes_elapsed = started.elapsed();

    let mut runs = Vec::new();
    for task in subscribers {
        runs.push(task.await?);
    }
    let mut fanout = FanOut {
        writes: written.ops,
        write_failures: written.failed,
        first_write_failure: written.first_failure,
        complete: 0,
        lagged: 0,
        missed: 0,
        broken: Vec::new(),
        order_mismatches: 0,
        gaps: 0,
        delivered: 0,
        elapsed: Duration::ZERO,
        writes_elapsed,
    };
    let mut reference: Option<&[u64]> = None;
    for (run, start) in runs.iter().zip(&starts) {
        match &run.end {
            SubscriberEnd::Complete => {
                fanout.complete += 1;
                fanout.delivered += run.seqs.len() as u64;
                if let Some(at) = run.last_at {
                    fanout.elapsed = fanout.elapsed.max(at - started);
                }
                if !run.seqs.iter().zip(start + 1..).all(|(seq, want)| *seq == want) {
                    fanout.gaps += 1;
                }
                match reference {
                    None => reference = Some(&run.seqs),
                    Some(first) if first != run.seqs.as_slice() => fanout.order_mismatches += 1,
                    Some(_) => {}
                }
            }
            SubscriberEnd::Lagged { missed } => {
                fanout.lagged += 1;
                fanout.missed += missed;
            }
            SubscriberEnd::Broken(why) => fanout.broken.push(why.clone()),
        }
    }
    Ok(fanout)
}

/// Writes `PRELOAD` nodes as `/import` does: transactions of `IMPORT_BATCH`
/// creates.
fn direct_preload(db: &mut Replica) -> anyhow::Result<()> {
    let peer = db.peer_id().to_owned();
    for first in (0..PRELOAD).step_by(IMPORT_BATCH as usize) {
        let ops = (first..(first + IMPORT_BATCH).min(PRELOAD))
            .map(|i| OperationWithMetadata::new(OperationType::CreateNode, format!("bench:{i}"), value(i), peer.as_str()))
            .collect();
        db.commit_local(ops, pluresdb_runtime::now_ms())?;
    }
    Ok(())
}

/// `Reader::get` of random preloaded nodes on one thread, through a read
/// handle on the store as the server's reader is.
fn direct_reads(db: &Replica, secs: Duration) -> Figure {
    let reader = Reader::new(db.store().read_handle(), db.shared_resolver());
    let window = Window::starting_now(secs);
    let mut rng = Rng::new(7);
    let mut sample = Sample::default();
    let mut id = String::new();
    while Instant::now() < window.until {
        id.clear();
        let _ = write!(id, "bench:{}", rng.below(PRELOAD));
        let started = Instant::now();
        let outcome = match reader.get(&id) {
            Ok(Some(node)) => {
                std::hint::black_box(node);
                Ok(())
            }
            Ok(None) => Err(format!("{id} is missing")),
            Err(err) => Err(pluresdb_core::error_chain(&err)),
        };
        sample.record(&window, started, outcome);
    }
    sample.figure(&window)
}

/// `Database::put`: one durable transaction per write, on one thread.
fn single_writes(db: &mut Replica, secs: Duration) -> Figure {
    let window = Window::starting_now(secs);
    let mut sample = Sample::default();
    let mut n = 2 * PRELOAD;
    while Instant::now() < window.until {
        let id = format!("bench:{n}");
        let v = value(n);
        n += 1;
        let started = Instant::now();
        let outcome = db.put(&id, v, pluresdb_runtime::now_ms()).map(drop).map_err(|err| pluresdb_core::error_chain(&err));
        sample.record(&window, started, outcome);
    }
    sample.figure(&window)
}

/// `Handle::write` from `CONNECTIONS` tasks: the runtime's group commit
/// without HTTP.
async fn runtime_writes(handle: Handle, secs: Duration) -> Figure {
    let window = Window::starting_now(secs);
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let handle = handle.clone();
        tasks.push(tokio::spawn(async move {
            let mut sample = Sample::default();
            let mut n = 3 * PRELOAD + c;
            while Instant::now() < window.until {
                let (id, v) = (format!("bench:{n}"), value(n));
                n += CONNECTIONS;
                let started = Instant::now();
                let outcome = handle.write(WriteKind::Put, id, v).await.map(drop).map_err(|err| err.to_string());
                sample.record(&window, started, outcome);
            }
            anyhow::Ok(sample)
        }));
    }
    gather(tasks).await.figure(&window)
}

/// What the node's API did.
struct ApiFigures {
    preload: Duration,
    reads: Figure,
    writes: Figure,
    fanout: FanOut,
    paced: FanOut,
}

fn measure_api(secs: Duration) -> anyhow::Result<ApiFigures> {
    let dir = tempfile::tempdir()?;
    let node = Node::start(open_replica(dir.path())?)?;
    // Named apart from the server's workers, so a profile tells them apart.
    let client = tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("bench-client").enable_all().build()?;
    let addr = node.addr;
    let figures = client.block_on(async {
        let preload = http_preload(addr).await?;
        let reads = http_reads(addr, secs).await?;
        let writes = http_writes(addr, secs).await?;
        let fanout = ws_fanout(addr, "feed", None).await?;
        let paced = ws_fanout(addr, "paced", Some(PACE_WINDOW)).await?;
        anyhow::Ok(ApiFigures { preload, reads, writes, fanout, paced })
    });
    // Every client socket is closed once its task has ended.
    client.shutdown_timeout(Duration::from_secs(5));
    node.stop()?;
    figures
}

struct Baselines {
    reads: Figure,
    single: Figure,
    runtime: Figure,
}

fn measure_baselines(secs: Duration) -> anyhow::Result<Baselines> {
    let dir = tempfile::tempdir()?;
    let mut db = open_replica(dir.path())?;
    direct_preload(&mut db)?;
    let reads = direct_reads(&db, secs);
    let single = single_writes(&mut db, secs);
    let server = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let runtime = server.block_on(async {
        let node = pluresdb_runtime::Runtime::start(db, RuntimeOptions::default())?;
        let figure = runtime_writes(node.handle(), secs).await;
        node.shutdown().await;
        anyhow::Ok(figure)
    })?;
    Ok(Baselines { reads, single, runtime })
}

fn row(name: &str, f: &Figure) {
    println!("{name:<44} {:>12.0} {:>9.3} {:>9.3}", f.rate, f.p50_ms, f.p99_ms);
    if f.failed > 0 {
        println!("    {} failed; first: {}", f.failed, f.first_failure.as_deref().unwrap_or("?"));
    }
}

fn fanout_rows(name: &str, f: &FanOut) {
    println!(
        "{name:<44} {:>12.0}   ({} changes x {} complete subscribers in {:.2} s; writes took {:.2} s)",
        f.rate(),
        f.delivered / f.complete.max(1) as u64,
        f.complete,
        f.elapsed.as_secs_f64(),
        f.writes_elapsed.as_secs_f64()
    );
    println!(
        "    subscribers: {} complete, {} lagged ({} changes missed), {} broken; order mismatches {}, gaps {}; writes {} ok, {} failed",
        f.complete,
        f.lagged,
        f.missed,
        f.broken.len(),
        f.order_mismatches,
        f.gaps,
        f.writes,
        f.write_failures
    );
    if let Some(why) = &f.first_write_failure {
        println!("    first write failure: {why}");
    }
    for why in f.broken.iter().take(3) {
        println!("    broken subscriber: {why}");
    }
}

fn percent(a: f64, b: f64) -> String {
    format!("{:.0}%", 100.0 * a / b)
}

fn main() -> anyhow::Result<()> {
    let secs = std::env::var("PLURESDB_BENCH_SECS").ok().and_then(|s| s.parse::<f64>().ok()).unwrap_or(5.0);
    let secs = Duration::from_secs_f64(secs.max(0.1));
    println!(
        "PluresDB API benchmark: {CONNECTIONS} keep-alive HTTP/1.1 connections, {} s warm-up + {:.1} s per figure, {PRELOAD} preloaded nodes, ~{} bytes of JSON per value",
        WARMUP.as_secs(),
        secs.as_secs_f64(),
        value_json(PRELOAD).len()
    );
    let api = measure_api(secs)?;
    let base = measure_baselines(secs)?;

    println!("preload: {PRELOAD} nodes over POST /import in {:.2} s", api.preload.as_secs_f64());
    println!("{:<44} {:>12} {:>9} {:>9}", "", "ops/s", "p50 ms", "p99 ms");
    row("HTTP GET /nodes/{id} (64 connections)", &api.reads);
    row("Reader::get (1 thread, no HTTP)", &base.reads);
    println!("    HTTP reads / direct reads: {}", percent(api.reads.rate, base.reads.rate));
    row("HTTP PUT /nodes/{id} (64 connections)", &api.writes);
    row("Handle::write (64 tasks, no HTTP)", &base.runtime);
    row("Database::put (1 write per transaction)", &base.single);
    println!(
        "    HTTP writes / runtime writes: {}; HTTP writes / single-transaction writes: {}",
        percent(api.writes.rate, base.runtime.rate),
        percent(api.writes.rate, base.single.rate)
    );
    println!("{:<44} {:>12}", "", "deliveries/s");
    fanout_rows("WS /changes, 100 subscribers, unpaced", &api.fanout);
    fanout_rows(&format!("WS /changes, writers <= {PACE_WINDOW} ahead"), &api.paced);
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "target: >= {TARGET_READS:.0} reads/s over HTTP at 64 connections: {:.0} ({})",
        api.reads.rate,
        met(api.reads.rate >= TARGET_READS)
    );
    println!(
        "target: >= {TARGET_WRITES:.0} writes/s over HTTP at 64 connections: {:.0} ({})",
        api.writes.rate,
        met(api.writes.rate >= TARGET_WRITES)
    );
    Ok(())
}
