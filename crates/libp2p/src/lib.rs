//! PluresDB's libp2p engine: [`Libp2pNetworkEngine`], the
//! [`pluresdb_net::NetworkEngine`] over rust-libp2p, beside the QUIC
//! engine. TCP (noise + yamux), QUIC-v1 and WebSocket; identify, ping and
//! Kademlia open to any peer within connection limits; the sync protocol as
//! the stream protocol `/pluresdb/sync/1`, carrying the frames of
//! `docs/protocol.md` after the same admission rule as QUIC; DHT discovery
//! of the network's nodes under a key derived from its secret; circuit
//! relays (serving members, using any), DCUtR hole punching and AutoNAT
//! ([`relay`]).
//!
//! Two nodes of one network on loopback: the second dials the first by a
//! multiaddr, and a sync message crosses.
//!
//! ```
//! use pluresdb_libp2p::Libp2pNetworkEngine;
//! use pluresdb_net::{NetworkConfig, NetworkEngine, PeerEvent, PeerManager, SyncHandle};
//! use pluresdb_security::{AccessPolicy, NetworkSecret};
//! use pluresdb_sync::SyncMessage;
//! use std::sync::Arc;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let secret = NetworkSecret::generate()?;
//! let node = |secret: &NetworkSecret| {
//!     let (handle, events) = SyncHandle::channel(64);
//!     let engine = Libp2pNetworkEngine::new(NetworkConfig::loopback(), Arc::new(PeerManager::new()), handle)
//!         .with_access_policy(AccessPolicy::with_secret(secret.clone()));
//!     (engine, events)
//! };
//! let (mut first, mut first_events) = node(&secret);
//! let (mut second, _second_events) = node(&secret);
//! first.start().await?; // TCP, QUIC-v1 and WebSocket on 127.0.0.1, ports from the OS
//! second.start().await?;
//!
//! let address = first.dial_addresses()[0].to_string(); // /ip4/127.0.0.1/tcp/N/p2p/12D3KooW...
//! let first_id = second.connect_peer(&address).await?; // noise proves the id, the hellos the secret
//! assert_eq!(Some(first_id), first.peer_id());
//! let second_id = second.peer_id().unwrap();
//! assert!(matches!(first_events.recv().await, Some(PeerEvent::Connected { peer_id, .. }) if peer_id == second_id));
//!
//! // The sync engine names peers by their text form (`12D3KooW...`).
//! let ack = SyncMessage::SyncAck { from_peer: second_id.to_string(), version_vector: Default::default() };
//! second.send_message(&first_id, ack.clone().into()).await?;
//! match first_events.recv().await {
//!     Some(PeerEvent::Message { peer_id, bytes }) => assert_eq!(SyncMessage::decode(&peer_id.to_string(), &bytes)?, ack),
//!     other => panic!("{other:?}"),
//! }
//! second.stop().await?;
//! assert!(matches!(first_events.recv().await, Some(PeerEvent::Disconnected { .. })));
//! first.stop().await?;
//! # Ok(())
//! # }
//! ```

mod admission;
mod behaviour;
pub mod dht;
mod engine;
mod frames;
pub mod handshake;
pub mod identity;
mod link;
pub mod relay;
mod swarm;

pub use behaviour::{IDENTIFY_PROTOCOL_VERSION, KAD_PROTOCOL, SYNC_PROTOCOL};
pub use dht::{network_key, DhtPeer};
pub use engine::{
    Libp2pNetworkEngine, NatView, Reachability, DEFAULT_LIBP2P_PORT, DIRECT_REDIAL_INTERVAL, FIRST_DHT_INTERVAL, REFUSED_FOR,
};
pub use libp2p::Multiaddr;
pub use link::{BULK_QUEUE_FRAMES, CONTROL_QUEUE_FRAMES};
pub use relay::RelayAccess;
