//! [`NetworkEngine`]: what every transport (QUIC, libp2p, WebRTC) offers
//! the node runtime, as in the seed.

use crate::message::NetworkMessage;
use crate::peer::PeerInfo;
use crate::NetworkError;
use pluresdb_security::{AccessPolicy, Identity, NetworkSecret, PeerId};

/// The result of network operations.
pub type Result<T, E = NetworkError> = std::result::Result<T, E>;

/// A transport's engine: it listens, dials, authenticates peers, carries
/// [`NetworkMessage`]s and reports peers to the [`crate::PeerManager`] and
/// to the sync driver (through a [`crate::SyncHandle`]).
#[async_trait::async_trait]
pub trait NetworkEngine: Send + Sync {
    /// Prepares the engine (keys, TLS configuration); no sockets yet.
    async fn initialize(&mut self) -> Result<()>;
    /// Binds and starts accepting; dials the bootstrap nodes.
    async fn start(&mut self) -> Result<()>;
    /// Says goodbye to every peer, closes every connection and the socket.
    async fn stop(&mut self) -> Result<()>;
    /// Queues `message` for `peer_id`; fails at once with
    /// [`NetworkError::PeerBusy`] when the peer's queue is full.
    async fn send_message(&self, peer_id: &PeerId, message: NetworkMessage) -> Result<()>;
    /// Queues `message` for every connected peer (peers whose queue is
    /// full are skipped).
    async fn broadcast_message(&self, message: NetworkMessage) -> Result<()>;
    /// Dials `address`, completes the handshake and returns the peer id.
    async fn connect_peer(&self, address: &str) -> Result<PeerId>;
    /// Closes the connection to `peer_id` and stops redialling it.
    async fn disconnect_peer(&self, peer_id: &PeerId) -> Result<()>;
    /// The peers connected now.
    async fn get_connected_peers(&self) -> Result<Vec<PeerInfo>>;
    /// Whether `peer_id` is connected now.
    async fn is_peer_connected(&self, peer_id: &PeerId) -> bool;

    /// Dials `address`, where discovery says `peer_id` listens, and checks
    /// that the peer there is `peer_id`. Unlike [`connect_peer`](Self::connect_peer)
    /// the engine does not redial it: discovery decides when to try again
    /// (the address may have moved). The default connects and disconnects
    /// again if another peer answered.
    async fn dial_discovered(&self, peer_id: &PeerId, address: &str) -> Result<PeerId> {
        let found = self.connect_peer(address).await?;
        if found != *peer_id {
            let _ = self.disconnect_peer(&found).await;
            return Err(NetworkError::Connect { address: address.to_owned(), reason: format!("expected peer {peer_id}, found {found}") });
        }
        Ok(found)
    }
}

/// The identity and access policy an engine runs with: those it was given,
/// else a fresh identity and a policy with a fresh network secret (so an
/// engine given no policy syncs with no one until it is given the secret).
pub fn identity_and_policy(identity: Option<Identity>, policy: Option<AccessPolicy>) -> Result<(Identity, AccessPolicy)> {
    let identity = match identity {
        Some(identity) => identity,
        None => Identity::generate().map_err(NetworkError::Tls)?,
    };
    let policy = match policy {
        Some(policy) => policy,
        None => AccessPolicy::with_secret(NetworkSecret::generate().map_err(NetworkError::Tls)?),
    };
    Ok((identity, policy))
}
