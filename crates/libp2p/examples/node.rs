//! A libp2p-only PluresDB network node without a store: it listens on
//! loopback (or `--bind`), prints its peer id and dial addresses as one JSON
//! line, dials the given peers, takes part in the DHT, and prints every
//! peer event until Ctrl-C. For trying the engine by hand and for clients
//! written elsewhere (js-libp2p) to talk to.
//!
//! ```text
//! cargo run -p pluresdb-libp2p --example node -- --secret <64 hex digits> [--bind 0.0.0.0] [--port 0]
//!     [--dial /ip4/127.0.0.1/tcp/34570/p2p/12D3KooW...]... [--no-dht]
//! ```
//!
//! Without `--secret` the node makes up a network of its own (and prints
//! nothing of the secret); with `--open` it admits anyone.

use pluresdb_libp2p::Libp2pNetworkEngine;
use pluresdb_net::{NetworkConfig, NetworkEngine, PeerEvent, PeerManager, SyncHandle};
use pluresdb_security::{AccessMode, AccessPolicy, NetworkSecret};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = NetworkConfig::loopback();
    let mut policy = AccessPolicy::with_secret(NetworkSecret::generate()?);
    let mut dial = Vec::new();
    let mut dht = true;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--secret" => policy = AccessPolicy::with_secret(value()?.parse()?),
            "--open" => policy = AccessPolicy { mode: AccessMode::Open, ..policy },
            "--bind" => config.bind_address = value()?,
            "--port" => config.port = value()?.parse()?,
            "--dial" => dial.push(value()?),
            "--no-dht" => dht = false,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    config.discovery.enable_dht = dht;
    let (handle, mut events) = SyncHandle::channel(1024);
    let mut engine = Libp2pNetworkEngine::new(config, Arc::new(PeerManager::new()), handle).with_access_policy(policy);
    engine.start().await?;
    let listen: Vec<String> = engine.dial_addresses().iter().map(|address| format!("\"{address}\"")).collect();
    println!("{{\"peer_id\":\"{}\",\"listen\":[{}]}}", engine.peer_id().map(|id| id.to_string()).unwrap_or_default(), listen.join(","));
    for address in dial {
        match engine.connect_peer(&address).await {
            Ok(peer) => eprintln!("connected to {peer} at {address}"),
            Err(err) => eprintln!("cannot connect to {address}: {err}"),
        }
    }
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(PeerEvent::Connected { peer_id, address, .. }) => eprintln!("connected: {peer_id} at {address}"),
                Some(PeerEvent::Disconnected { peer_id, reason }) => eprintln!("disconnected: {peer_id}: {reason}"),
                Some(PeerEvent::Message { peer_id, bytes }) => eprintln!("sync message from {peer_id}: {} bytes", bytes.len()),
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    engine.stop().await?;
    Ok(())
}
