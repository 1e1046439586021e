//! Replication through two `QuicNetworkEngine`s on loopback:
//! `cargo bench -p pluresdb-net --bench quic`.
//!
//! Prints, for 100,000 signed ~100-byte JSON operations caught up from one
//! replica (memory store) to another:
//! - ops/s through QUIC (two engines, two `SyncDriver`s), beside the same
//!   catch-up between two in-process sync engines (no network: the limit
//!   the network layer can approach) and the same number of wire bytes in
//!   100-byte framed records over one raw quinn stream (the transport's
//!   limit), as ratios;
//! - p50/p99 write-to-peer latency of single writes on a connected pair
//!   (write on one side until the change feed of the other reports it).
//!
//! The engines run with receive limits raised above the defaults
//! (20,000 frames/s), which single-write pushes at full speed exceed.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use pluresdb_core::{Database, MemoryStore, OperationType, OperationWithMetadata};
use pluresdb_net::{NetworkConfig, NetworkEngine, PeerManager, QuicNetworkEngine, ReceiveLimits, SyncDriver, SyncHandle};
use pluresdb_security::{tls, AccessPolicy, Identity, NetworkSecret, OpSignatureVerifier, RateLimit};
use pluresdb_sync::{DataSyncEngine, SyncConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

const OPS: usize = 100_000;
const LATENCY_SAMPLES: usize = 2_000;

fn replica(seed: u8) -> DataSyncEngine<MemoryStore> {
    let identity = Identity::from_seed([seed; 32]);
    let db = Database::open(MemoryStore::new(), identity.peer_id().to_string())
        .expect("memory store")
        .with_signer(Arc::new(identity))
        .with_verifier(Arc::new(OpSignatureVerifier));
    DataSyncEngine::with_database(SyncConfig::default(), db).expect("engine")
}

/// ~100 bytes of JSON per operation.
fn op(origin: &str, i: usize) -> OperationWithMetadata {
    let data = serde_json::json!({"name": format!("User {i}"), "email": format!("user{i}@example.org"), "age": i % 97, "city": "Lisbon"});
    OperationWithMetadata::new(OperationType::CreateNode, format!("user:{i:08}"), data, origin)
}

fn filled(seed: u8, count: usize) -> DataSyncEngine<MemoryStore> {
    let mut sync = replica(seed);
    let origin = sync.peer_id().to_owned();
    for start in (0..count).step_by(1_000) {
        let batch = (start..(start + 1_000).min(count)).map(|i| op(&origin, i)).collect();
        sync.write(batch, pluresdb_net::now_ms()).expect("write");
    }
    sync
}

async fn engine(seed: u8, secret: &NetworkSecret) -> (QuicNetworkEngine, pluresdb_net::PeerEvents) {
    let (handle, events) = SyncHandle::channel(4_096);
    let limits = ReceiveLimits { frames: RateLimit { messages_per_second: 1_000_000, burst: 1_000_000 }, ..ReceiveLimits::default() };
    let mut engine = QuicNetworkEngine::new(NetworkConfig::loopback(), Arc::new(PeerManager::new()), handle)
        .with_identity(Identity::from_seed([seed; 32]))
        .with_access_policy(AccessPolicy::with_secret(secret.clone()))
        .with_receive_limits(limits);
    engine.start().await.expect("start");
    (engine, events)
}

async fn wait_for_total(driver: &SyncDriver<MemoryStore>, total: u64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while driver.with(|sync, _| sync.database().version_vector().total()).await < total {
        assert!(Instant::now() < deadline, "replication stalled");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// Catch-up of `OPS` operations through QUIC; returns the time and the
/// frame bytes sent by the source.
async fn quic_catch_up(secret: &NetworkSecret) -> (Duration, u64) {
    let source = filled(1, OPS);
    let (a, events_a) = engine(1, secret).await;
    let (b, events_b) = engine(2, secret).await;
    let driver_a = SyncDriver::spawn(Arc::new(a.clone()), source, events_a);
    let driver_b = SyncDriver::spawn(Arc::new(b.clone()), replica(2), events_b);
    let started = Instant::now();
    let peer = b.connect_peer(&a.local_addr().expect("bound").to_string()).await.expect("connect");
    wait_for_total(&driver_b, OPS as u64).await;
    let elapsed = started.elapsed();
    let sent = a.peer_manager().get(&b.peer_id().expect("id")).map_or(0, |info| info.bytes_sent);
    let _ = peer;
    driver_a.stop().await;
    driver_b.stop().await;
    let (mut a, mut b) = (a, b);
    b.stop().await.expect("stop");
    a.stop().await.expect("stop");
    (elapsed, sent)
}

/// The same catch-up between two in-process sync engines.
fn in_process_catch_up() -> Duration {
    let mut a = filled(1, OPS);
    let mut b = replica(2);
    let (id_a, id_b) = (a.peer_id().to_owned(), b.peer_id().to_owned());
    let now = pluresdb_net::now_ms();
    let started = Instant::now();
    a.start(now);
    b.start(now);
    a.peer_connected(&id_b, now);
    b.peer_connected(&id_a, now);
    loop {
        let mut idle = true;
        while let Some(t) = a.poll_transmit() {
            b.handle_input(&id_a, &t.bytes, now).expect("input");
            idle = false;
        }
        while let Some(t) = b.poll_transmit() {
            a.handle_input(&id_b, &t.bytes, now).expect("input");
            idle = false;
        }
        if idle {
            break;
        }
    }
    assert_eq!(b.database().version_vector().total(), OPS as u64);
    started.elapsed()
}

/// `records` framed records of `size` bytes over one raw quinn stream with
/// the same TLS; returns the time until the receiver has read them all.
async fn raw_quinn(records: usize, size: usize) -> Duration {
    let (server_id, client_id) = (Identity::from_seed([3; 32]), Identity::from_seed([4; 32]));
    let server_tls = quinn::crypto::rustls::QuicServerConfig::try_from(tls::server_config(&server_id).expect("tls")).expect("quic tls");
    let server = quinn::Endpoint::server(quinn::ServerConfig::with_crypto(Arc::new(server_tls)), "127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let client_tls =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls::client_config(&client_id, None).expect("tls")).expect("quic tls");
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("bind");
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(client_tls)));
    let addr = server.local_addr().expect("addr");
    let total = records * (4 + size);
    let receiver = tokio::spawn(async move {
        let connection = server.accept().await.expect("incoming").await.expect("connection");
        let mut recv = connection.accept_uni().await.expect("stream");
        let mut read = 0;
        while read < total {
            match recv.read_chunk(1 << 20, true).await.expect("read") {
                Some(chunk) => read += chunk.bytes.len(),
                None => break,
            }
        }
        read
    });
    let connection = client.connect(addr, "pluresdb").expect("connect").await.expect("connection");
    let mut record = (size as u32).to_be_bytes().to_vec();
    record.resize(4 + size, 7);
    let batch: Vec<u8> = record.iter().copied().cycle().take(record.len() * 1_000).collect();
    let started = Instant::now();
    let mut send = connection.open_uni().await.expect("stream");
    let mut sent = 0;
    while sent < records {
        let n = (records - sent).min(1_000);
        send.write_all(&batch[..n * record.len()]).await.expect("write");
        sent += n;
    }
    send.finish().expect("finish");
    assert_eq!(receiver.await.expect("receiver"), total);
    started.elapsed()
}

async fn latency(secret: &NetworkSecret) -> Vec<Duration> {
    let (a, events_a) = engine(5, secret).await;
    let (b, events_b) = engine(6, secret).await;
    let driver_a = SyncDriver::spawn(Arc::new(a.clone()), replica(5), events_a);
    let driver_b = SyncDriver::spawn(Arc::new(b.clone()), replica(6), events_b);
    let mut feed = driver_b.with(|sync, _| sync.database().subscribe(4_096)).await;
    a.connect_peer(&b.local_addr().expect("bound").to_string()).await.expect("connect");
    let origin = a.peer_id().expect("id").to_string();
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for i in 0..LATENCY_SAMPLES + 100 {
        let started = Instant::now();
        driver_a.with(|sync, now| sync.write(vec![op(&origin, i)], now).expect("write")).await;
        loop {
            match std::future::poll_fn(|cx| feed.poll_next(cx)).await {
                Some(pluresdb_core::FeedEvent::Change(_)) => break,
                Some(_) => continue,
                None => panic!("feed closed"),
            }
        }
        // The first writes warm up the connection and the stores.
        if i >= 100 {
            samples.push(started.elapsed());
        }
    }
    driver_a.stop().await;
    driver_b.stop().await;
    let (mut a, mut b) = (a, b);
    a.stop().await.expect("stop");
    b.stop().await.expect("stop");
    samples.sort();
    samples
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let secret = NetworkSecret::from_bytes([9; 32]);
    runtime.block_on(async {
        let (quic, bytes) = quic_catch_up(&secret).await;
        let local = in_process_catch_up();
        let per_op = (bytes as usize / OPS).max(1);
        let raw = raw_quinn(OPS, per_op.saturating_sub(4)).await;
        let rate = |d: Duration| OPS as f64 / d.as_secs_f64();
        println!("catch-up of {OPS} signed ops (~100-byte JSON each), memory stores:");
        println!(
            "  through QUIC engines:     {:>10.0} ops/s  ({:.2} s, {bytes} frame bytes, {per_op} B/op)",
            rate(quic),
            quic.as_secs_f64()
        );
        println!(
            "  in-process sync engines:  {:>10.0} ops/s  (QUIC reaches {:.0}% of it)",
            rate(local),
            100.0 * local.as_secs_f64() / quic.as_secs_f64()
        );
        println!(
            "  raw quinn, same bytes:    {:>10.0} records/s (QUIC engines reach {:.1}% of it)",
            rate(raw),
            100.0 * raw.as_secs_f64() / quic.as_secs_f64()
        );
        let samples = latency(&secret).await;
        let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        println!(
            "write-to-peer latency, single writes ({} samples): p50 {:.3} ms, p99 {:.3} ms",
            samples.len(),
            at(0.50).as_secs_f64() * 1e3,
            at(0.99).as_secs_f64() * 1e3
        );
    });
}
