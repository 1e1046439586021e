//! [`CombinedNetworkEngine`]: several engines (QUIC, libp2p) run side by
//! side as one, over one sync engine.
//!
//! Each engine listens, dials and admits peers on its own and delivers its
//! events through its own [`SyncHandle::for_engine`] handle onto the one
//! queue; the handles agree on which link carries each peer's sync session
//! (see [`SyncHandle`]). This engine sends through that link, dials an
//! address with the engine whose transport it names, and lists each peer
//! once.

use crate::engine::{NetworkEngine, Result};
use crate::events::SyncHandle;
use crate::message::NetworkMessage;
use crate::peer::{PeerInfo, Transport};
use crate::NetworkError;
use pluresdb_security::PeerId;

/// Engines run together; see the module docs.
///
/// ```
/// use pluresdb_net::{CombinedNetworkEngine, NetworkConfig, PeerManager, QuicNetworkEngine, SyncHandle, Transport};
/// use std::sync::Arc;
///
/// let (sync, events) = SyncHandle::channel(64);
/// let quic = QuicNetworkEngine::new(NetworkConfig::loopback(), Arc::new(PeerManager::new()), sync.for_engine(0));
/// // A second engine would take `engine.next_sync_handle()` and be added second.
/// let engine = CombinedNetworkEngine::new(sync).with_engine(Transport::Quic, Box::new(quic));
/// assert_eq!(engine.transports(), vec![Transport::Quic]);
/// # drop(events);
/// ```
pub struct CombinedNetworkEngine {
    sync: SyncHandle,
    engines: Vec<(Transport, Box<dyn NetworkEngine>)>,
}

impl CombinedNetworkEngine {
    /// No engines yet; `sync` is the handle the others were made from
    /// (with [`SyncHandle::for_engine`]).
    pub fn new(sync: SyncHandle) -> Self {
        Self { sync, engines: Vec::new() }
    }

    /// The handle the next engine added must deliver through:
    /// `sync.for_engine(n)`, `n` the number of engines added so far.
    pub fn next_sync_handle(&self) -> SyncHandle {
        self.sync.for_engine(self.engines.len())
    }

    /// Adds `engine`, which must deliver through the
    /// [`next_sync_handle`](Self::next_sync_handle) taken before.
    pub fn with_engine(mut self, transport: Transport, engine: Box<dyn NetworkEngine>) -> Self {
        self.engines.push((transport, engine));
        self
    }

    /// The engines' transports, in the order they were added.
    pub fn transports(&self) -> Vec<Transport> {
        self.engines.iter().map(|(transport, _)| *transport).collect()
    }

    /// The transport an address names: a multiaddr (`/ip4/...`) is
    /// libp2p's, `webrtc://` WebRTC's, anything else (`host:port`,
    /// `quic://host:port`) QUIC's.
    pub fn transport_of(address: &str) -> Transport {
        let address = address.trim();
        if address.starts_with('/') {
            Transport::Libp2p
        } else if address.starts_with("webrtc://") {
            Transport::WebRtc
        } else {
            Transport::Quic
        }
    }

    /// The engine that dials `address`.
    fn engine_for(&self, address: &str) -> Result<&dyn NetworkEngine> {
        let transport = Self::transport_of(address);
        self.engines.iter().find(|(candidate, _)| *candidate == transport).map(|(_, engine)| engine.as_ref()).ok_or_else(|| {
            NetworkError::InvalidAddress {
                address: address.to_owned(),
                reason: format!("it is a {} address and this node runs no {} engine", transport.as_str(), transport.as_str()),
            }
        })
    }
}

#[async_trait::async_trait]
impl NetworkEngine for CombinedNetworkEngine {
    async fn initialize(&mut self) -> Result<()> {
        for (_, engine) in &mut self.engines {
            engine.initialize().await?;
        }
        Ok(())
    }

    /// Starts every engine; if one fails, the ones started are stopped
    /// again and the error returned.
    async fn start(&mut self) -> Result<()> {
        for started in 0..self.engines.len() {
            if let Err(err) = self.engines[started].1.start().await {
                for (_, engine) in &mut self.engines[..started] {
                    let _ = engine.stop().await;
                }
                return Err(err);
            }
        }
        Ok(())
    }

    async fn stop(&mut self) -> Result<()> {
        let mut first_error = None;
        for (_, engine) in &mut self.engines {
            if let Err(err) = engine.stop().await {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Sends over the link the peer's sync session uses; if that link went
    /// a moment ago, over another one that is up.
    async fn send_message(&self, peer_id: &PeerId, message: NetworkMessage) -> Result<()> {
        let in_use = self.sync.route(peer_id).ok_or_else(|| NetworkError::PeerNotConnected(peer_id.to_string()))?;
        let Some((_, engine)) = self.engines.get(in_use) else { return Err(NetworkError::PeerNotConnected(peer_id.to_string())) };
        match engine.send_message(peer_id, message.clone()).await {
            Err(NetworkError::PeerNotConnected(_)) => match self.sync.route(peer_id) {
                Some(now) if now != in_use => match self.engines.get(now) {
                    Some((_, engine)) => engine.send_message(peer_id, message).await,
                    None => Err(NetworkError::PeerNotConnected(peer_id.to_string())),
                },
                _ => Err(NetworkError::PeerNotConnected(peer_id.to_string())),
            },
            other => other,
        }
    }

    /// Queues `message` once for every peer, over its link in use (peers
    /// whose queue is full are skipped).
    async fn broadcast_message(&self, message: NetworkMessage) -> Result<()> {
        for (peer, in_use) in self.sync.routes() {
            if let Some((_, engine)) = self.engines.get(in_use) {
                match engine.send_message(&peer, message.clone()).await {
                    Ok(()) | Err(NetworkError::PeerBusy { .. } | NetworkError::PeerNotConnected(_)) => {}
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(())
    }

    async fn connect_peer(&self, address: &str) -> Result<PeerId> {
        self.engine_for(address)?.connect_peer(address).await
    }

    async fn dial_discovered(&self, peer_id: &PeerId, address: &str) -> Result<PeerId> {
        self.engine_for(address)?.dial_discovered(peer_id, address).await
    }

    /// Closes the peer's links on every engine.
    async fn disconnect_peer(&self, peer_id: &PeerId) -> Result<()> {
        let mut disconnected = false;
        let mut first_error = None;
        for (_, engine) in &self.engines {
            match engine.disconnect_peer(peer_id).await {
                Ok(()) => disconnected = true,
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        match first_error {
            Some(err) if !disconnected => Err(err),
            _ => Ok(()),
        }
    }

    /// Each connected peer once, as the engine whose link its sync session
    /// uses sees it.
    async fn get_connected_peers(&self) -> Result<Vec<PeerInfo>> {
        let mut peers = Vec::new();
        for (number, (_, engine)) in self.engines.iter().enumerate() {
            let mut theirs = engine.get_connected_peers().await?;
            theirs.retain(|peer| self.sync.route(&peer.peer_id) == Some(number));
            peers.append(&mut theirs);
        }
        Ok(peers)
    }

    async fn is_peer_connected(&self, peer_id: &PeerId) -> bool {
        for (_, engine) in &self.engines {
            if engine.is_peer_connected(peer_id).await {
                return true;
            }
        }
        false
    }
}
