//! Helpers for the QUIC engine tests: engines on loopback with OS-chosen
//! ports, and waiting on events or conditions with deadlines.

#![allow(dead_code)]

use pluresdb_net::{
    NetworkConfig, NetworkEngine, PeerEvent, PeerEvents, PeerManager, QueueLimits, QuicNetworkEngine, ReceiveLimits, SyncHandle,
};
use pluresdb_security::{AccessPolicy, Identity, NetworkSecret, PeerId};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long any one wait in these tests may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The network secret the test nodes share.
pub fn secret() -> NetworkSecret {
    NetworkSecret::from_bytes([42; 32])
}

/// Loopback settings with short timeouts.
pub fn config() -> NetworkConfig {
    NetworkConfig {
        connection_timeout: Duration::from_secs(5),
        heartbeat_interval: Duration::from_millis(500),
        ..NetworkConfig::loopback()
    }
}

/// A running engine and what the test needs of it.
pub struct Node {
    pub engine: QuicNetworkEngine,
    pub events: PeerEvents,
    pub peers: Arc<PeerManager>,
    pub id: PeerId,
    pub addr: SocketAddr,
}

/// Options for [`start`].
pub struct Options {
    pub seed: u8,
    pub policy: AccessPolicy,
    pub config: NetworkConfig,
    pub limits: ReceiveLimits,
    /// Each peer's share of the queue of sync messages.
    pub queue: QueueLimits,
    /// Ask new peers for the peers they know (peer exchange).
    pub ask_for_peers: bool,
}

impl Options {
    pub fn new(seed: u8) -> Self {
        Self {
            seed,
            policy: AccessPolicy::with_secret(secret()),
            config: config(),
            limits: ReceiveLimits::default(),
            queue: QueueLimits::default(),
            ask_for_peers: false,
        }
    }
}

/// Starts a node whose identity comes from `seed`, in the test network.
pub async fn node(seed: u8) -> Node {
    start(Options::new(seed)).await
}

pub async fn start(options: Options) -> Node {
    // `RUST_LOG=pluresdb_net=debug cargo test` shows the engines' logs.
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
    let peers = Arc::new(PeerManager::new());
    let (handle, events) = SyncHandle::with_limits(options.queue);
    let identity = Identity::from_seed([options.seed; 32]);
    let mut engine = QuicNetworkEngine::new(options.config, peers.clone(), handle)
        .with_identity(identity.clone())
        .with_access_policy(options.policy)
        .with_receive_limits(options.limits)
        .with_peer_exchange(options.ask_for_peers);
    engine.initialize().await.expect("initialize");
    engine.start().await.expect("start");
    let addr = engine.local_addr().expect("bound address");
    Node { engine, events, peers, id: identity.peer_id(), addr }
}

/// The next event matching `want`, skipping others; panics at the deadline.
pub async fn event(events: &mut PeerEvents, what: &str, want: impl Fn(&PeerEvent) -> bool) -> PeerEvent {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) if want(&event) => return event,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("event channel closed while waiting for {what}"),
            Err(_) => panic!("no {what} within {DEADLINE:?}"),
        }
    }
}

pub async fn connected(events: &mut PeerEvents, peer: &PeerId) -> PeerEvent {
    event(events, &format!("Connected({peer})"), |e| matches!(e, PeerEvent::Connected { peer_id, .. } if peer_id == peer)).await
}

pub async fn disconnected(events: &mut PeerEvents, peer: &PeerId) -> String {
    match event(events, &format!("Disconnected({peer})"), |e| matches!(e, PeerEvent::Disconnected { peer_id, .. } if peer_id == peer)).await
    {
        PeerEvent::Disconnected { reason, .. } => reason,
        _ => unreachable!(),
    }
}

pub async fn message(events: &mut PeerEvents, peer: &PeerId) -> bytes::Bytes {
    match event(events, &format!("Message({peer})"), |e| matches!(e, PeerEvent::Message { peer_id, .. } if peer_id == peer)).await {
        PeerEvent::Message { bytes, .. } => bytes,
        _ => unreachable!(),
    }
}

/// Waits until `condition` holds, re-checking every few milliseconds (the
/// condition, not the interval, is what the test waits for).
pub async fn until(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition().await {
        assert!(Instant::now() < deadline, "{what}: not true within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Connects `a` to `b` and waits until both sides report the link.
pub async fn link(a: &mut Node, b: &mut Node) {
    let found = a.engine.connect_peer(&b.addr.to_string()).await.expect("connect");
    assert_eq!(found, b.id, "the dialler verified the listener's id");
    connected(&mut a.events, &b.id).await;
    connected(&mut b.events, &a.id).await;
}
