//! PluresDB networking: the [`NetworkEngine`] trait every transport
//! implements, the [`NetworkMessage`]s peers exchange and their framing
//! [`codec`], the [`PeerManager`] registry, and [`QuicNetworkEngine`], the
//! QUIC transport (quinn, mutual TLS 1.3 with node keys, network-secret
//! admission).
//!
//! Two nodes of one network on loopback: the second dials the first, both
//! learn each other's verified peer id, and a sync message crosses.
//!
//! ```
//! use pluresdb_net::{NetworkConfig, NetworkEngine, PeerEvent, PeerManager, QuicNetworkEngine, SyncHandle};
//! use pluresdb_security::{AccessPolicy, NetworkSecret};
//! use pluresdb_sync::SyncMessage;
//! use std::sync::Arc;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let secret = NetworkSecret::generate()?;
//! let node = |secret: &NetworkSecret| {
//!     let (handle, events) = SyncHandle::channel(64);
//!     let engine = QuicNetworkEngine::new(NetworkConfig::loopback(), Arc::new(PeerManager::new()), handle)
//!         .with_access_policy(AccessPolicy::with_secret(secret.clone()));
//!     (engine, events)
//! };
//! let (mut first, mut first_events) = node(&secret);
//! let (mut second, _second_events) = node(&secret);
//! first.start().await?; // generates an identity, binds 127.0.0.1 on a free port
//! second.start().await?;
//!
//! let address = first.local_addr().unwrap().to_string();
//! let first_id = second.connect_peer(&address).await?; // TLS proves the id
//! assert_eq!(Some(first_id), first.peer_id());
//! let second_id = second.peer_id().unwrap();
//! assert!(matches!(first_events.recv().await, Some(PeerEvent::Connected { peer_id, .. }) if peer_id == second_id));
//!
//! // Sync messages (here an acknowledgement) arrive as encoded bytes, ready
//! // for `DataSyncEngine::handle_input`, which names peers by their text
//! // form (`12D3KooW...`).
//! let ack = SyncMessage::SyncAck { from_peer: second_id.to_string(), version_vector: Default::default() };
//! second.send_message(&first_id, ack.clone().into()).await?;
//! match first_events.recv().await {
//!     Some(PeerEvent::Message { peer_id, bytes }) => assert_eq!(SyncMessage::decode(&peer_id.to_string(), &bytes)?, ack),
//!     other => panic!("{other:?}"),
//! }
//!
//! second.stop().await?; // says goodbye; the first node sees it leave
//! assert!(matches!(first_events.recv().await, Some(PeerEvent::Disconnected { .. })));
//! first.stop().await?;
//! # Ok(())
//! # }
//! ```
//!
//! To replicate a `DataSyncEngine`, hand it the events and let it send
//! through the engine: [`SyncPort`] is that loop's body, which
//! [`SyncDriver`] (a minimal driver) and the node runtime's writer both
//! run. What a connection does once the transport has authenticated the
//! peer (admission, heartbeats, limits, peer exchange) is the sans-IO
//! [`link::Link`] that every engine drives. The wire format is in
//! `docs/protocol.md`, "Frames".

pub mod admission;
mod combined;
mod config;
mod driver;
mod engine;
mod events;
pub mod exchange;
mod peer;
// The link protocol (codec, messages, the sans-IO link machine) lives in
// the wasm-portable pluresdb-link, which browser pages run too; these
// paths stay as they were.
pub use pluresdb_link::{codec, link, message};
#[cfg(feature = "quic")]
pub mod quic;
#[cfg(feature = "webrtc")]
pub mod webrtc;
pub mod websocket;

pub use combined::CombinedNetworkEngine;
pub use config::{DiscoveryConfig, NetworkConfig, ReceiveLimits, DEFAULT_PORT};
pub use driver::{now_ms, PortEvent, SyncDriver, SyncPort, SyncWake};
pub use engine::{identity_and_policy, NetworkEngine, Result};
pub use events::{PeerEvent, PeerEvents, QueueLimits, SyncHandle};
pub use exchange::{usable_address, LearnedPeer, MAX_LEARNED_PEERS};
pub use peer::{Direction, PeerInfo, PeerManager, PeerStats, Transport, MAX_KNOWN_PEERS};
pub use pluresdb_link::codec::{CodecError, Frame, FrameDecoder, FrameKind, MAX_FRAME_BYTES};
pub use pluresdb_link::message::{
    ErrorCode, ExchangedPeer, Hello, NetworkMessage, NotSyncMessage, MAX_EXCHANGED_ADDRESSES, MAX_EXCHANGED_PEERS, PROTOCOL_VERSION,
};
pub use pluresdb_link::NetworkError;
#[cfg(feature = "quic")]
pub use quic::QuicNetworkEngine;
#[cfg(feature = "webrtc")]
pub use webrtc::{WebRtcLimits, WebRtcNetworkEngine};
pub use websocket::{NodeSignal, SignalReply, WebSocketNetworkEngine};

/// A peer id named by `name` (at most 32 bytes), for unit tests: the
/// sync engine's labels are text, the network's peers keys.
#[cfg(test)]
pub(crate) fn test_peer(name: &str) -> pluresdb_security::PeerId {
    let mut seed = [0u8; 32];
    seed[..name.len()].copy_from_slice(name.as_bytes());
    pluresdb_security::Identity::from_seed(seed).peer_id()
}
