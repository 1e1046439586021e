//! The seed's QUIC example, made to run on one machine: a first node
//! listens on loopback, and the seed's snippet (second node) connects to it
//! and sends it a heartbeat.
//!
//! `cargo run -p pluresdb-net --example quic` (set `RUST_LOG=pluresdb_net=info`
//! to see the engines' logs). `tests/example.rs` runs the same code.

use pluresdb_net::{NetworkConfig, NetworkEngine, NetworkMessage, PeerEvent, PeerManager, QuicNetworkEngine, SyncHandle};
use pluresdb_security::{AccessPolicy, NetworkSecret, PeerId};
use std::sync::Arc;
use std::time::Duration;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Runs both nodes; returns the peer id the second one connected to.
pub async fn run() -> Result<PeerId, Error> {
    // Both nodes are in one network: they share its secret (a real node
    // gets it from `pluresdb invite`'s ticket).
    let secret = NetworkSecret::generate()?;

    // The first node, standing in for "192.168.1.100": it listens on a
    // loopback port the OS picks.
    let (first_handle, mut first_events) = SyncHandle::channel(64);
    let mut first = QuicNetworkEngine::new(NetworkConfig::loopback(), Arc::new(PeerManager::new()), first_handle)
        .with_access_policy(AccessPolicy::with_secret(secret.clone()));
    first.initialize().await?;
    first.start().await?;
    let first_address = first.local_addr().ok_or("the first node is not listening")?.to_string();

    // ---- the seed's snippet ----
    // Create QUIC network engine
    let config = NetworkConfig {
        port: 0, // the seed's 34569; 0 lets the OS pick, so two nodes share a machine
        bind_address: "127.0.0.1".to_string(),
        enable_quic: true,
        enable_encryption: true,
        max_connections: 100,
        ..NetworkConfig::default()
    };
    let peer_manager = Arc::new(PeerManager::new());
    let (sync_engine, _events) = SyncHandle::channel(64);

    let mut engine =
        QuicNetworkEngine::new(config, peer_manager.clone(), sync_engine).with_access_policy(AccessPolicy::with_secret(secret));
    engine.initialize().await?;
    engine.start().await?;

    // Connect to a peer
    let peer_id = engine.connect_peer(&first_address).await?;

    // Send a message
    let message = NetworkMessage::Heartbeat { peer_id: "local".to_string(), timestamp: chrono::Utc::now() };
    engine.send_message(&peer_id, message).await?;
    // ---- end of the seed's snippet ----

    println!("connected to {peer_id} at {first_address}; heartbeat sent");
    assert_eq!(Some(peer_id), first.peer_id(), "the peer id is the one the first node's certificate proves");

    // The first node sees the second connect, under its verified id.
    let second_id = engine.peer_id().ok_or("no peer id")?;
    match tokio::time::timeout(Duration::from_secs(10), first_events.recv()).await {
        Ok(Some(PeerEvent::Connected { peer_id, address, .. })) if peer_id == second_id => {
            println!("the first node admitted {peer_id} from {address}");
        }
        other => return Err(format!("expected the second node to connect, got {other:?}").into()),
    }
    for peer in engine.get_connected_peers().await? {
        println!("peer {} at {} over {}, rtt {:?}", peer.peer_id, peer.address, peer.transport, peer.rtt);
    }

    engine.stop().await?;
    first.stop().await?;
    Ok(peer_id)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    run().await.map(|_| ())
}
