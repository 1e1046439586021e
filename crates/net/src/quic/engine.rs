//! The [`NetworkEngine`] methods of [`QuicNetworkEngine`]: life cycle
//! (initialize, start, stop), sending, and the peers it is linked to.

use super::accept::accept_loop;
use super::registry::{lock, Running, TaskCounter};
use super::transport::{self, wait_until_released};
use super::QuicNetworkEngine;
use crate::codec::Frame;
use crate::engine::{NetworkEngine, Result};
use crate::link::{self, Lane, CLOSE_NORMAL, LINGER};
use crate::message::NetworkMessage;
use crate::peer::PeerInfo;
use crate::NetworkError;
use pluresdb_security::PeerId;
use quinn::{Endpoint, VarInt};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

#[async_trait::async_trait]
impl NetworkEngine for QuicNetworkEngine {
    /// Checks the configuration, takes the identity and access policy (or
    /// generates an identity and a fresh network secret) and builds the TLS
    /// configuration. Idempotent.
    async fn initialize(&mut self) -> Result<()> {
        if self.shared.keys().is_some() {
            return Ok(());
        }
        let config = &self.shared.config;
        config.check()?;
        let (identity, policy) = {
            let settings = lock(&self.shared.settings);
            (settings.identity.clone(), settings.policy.clone())
        };
        let (identity, policy) = crate::engine::identity_and_policy(identity, policy)?;
        let keys = transport::keys(config, identity, policy)?;
        *lock(&self.shared.keys) = Some(Arc::new(keys));
        Ok(())
    }

    /// Binds `bind_address:port`, starts accepting, and dials the bootstrap
    /// nodes (in the background, redialling with backoff).
    async fn start(&mut self) -> Result<()> {
        self.initialize().await?;
        let keys = self.keys()?;
        let config = &self.shared.config;
        let ip: IpAddr = config
            .bind_address
            .parse()
            .map_err(|err| NetworkError::Config(format!("bind_address {:?} is not an IP address: {err}", config.bind_address)))?;
        let bind = SocketAddr::new(ip, config.port);
        let running = {
            let mut state = self.shared.state();
            if state.running.is_some() {
                return Err(NetworkError::AlreadyRunning);
            }
            let endpoint =
                Endpoint::server(keys.server.clone(), bind).map_err(|source| NetworkError::Bind { address: bind.to_string(), source })?;
            let local_addr = endpoint.local_addr().map_err(|source| NetworkError::Bind { address: bind.to_string(), source })?;
            let receive_limits = lock(&self.shared.settings).limits;
            let running = Running { endpoint, local_addr, shutdown: watch::channel(false).0, tasks: TaskCounter::new(), receive_limits };
            state.running = Some(running.clone());
            running
        };
        tracing::info!(peer = %keys.peer_id_text, address = %running.local_addr, "QUIC engine listening");
        tokio::spawn(accept_loop(self.shared.clone(), running.clone(), running.tasks.enter()));
        for address in config.bootstrap_nodes.clone() {
            let (id, cancel) = self.add_dial(&address, None);
            self.supervise(id, address, None, cancel);
        }
        Ok(())
    }

    /// Sends `Goodbye` on every link and closes it (each delivers a
    /// `PeerEvent::Disconnected`), stops redialling, and closes the
    /// endpoint. Waits up to `connection_timeout` for the links to finish;
    /// keep reading `PeerEvents` meanwhile.
    async fn stop(&mut self) -> Result<()> {
        let (running, dials) = {
            let mut state = self.shared.state();
            let Some(running) = state.running.take() else { return Ok(()) };
            (running, std::mem::take(&mut state.dials))
        };
        for dial in dials.values() {
            let _ = dial.cancel.send(true);
        }
        let _ = running.shutdown.send(true);
        if tokio::time::timeout(self.shared.config.connection_timeout, running.tasks.idle()).await.is_err() {
            tracing::warn!("connections still closing after the connection timeout; closing the endpoint anyway");
        }
        running.endpoint.close(VarInt::from_u32(CLOSE_NORMAL), b"node shutting down");
        let _ = tokio::time::timeout(LINGER, running.endpoint.wait_idle()).await;
        let local_addr = running.local_addr;
        drop(running);
        wait_until_released(local_addr).await;
        tracing::info!(address = %local_addr, "QUIC engine stopped");
        Ok(())
    }

    async fn send_message(&self, peer_id: &PeerId, message: NetworkMessage) -> Result<()> {
        let transmit = link::outgoing(&message)?;
        let queue = {
            let state = self.shared.state();
            let link = state.links.get(peer_id).ok_or_else(|| NetworkError::PeerNotConnected(peer_id.to_string()))?;
            match transmit.lane {
                Lane::Bulk => link.bulk.clone(),
                Lane::Control => link.control.clone(),
            }
        };
        enqueue(&queue, peer_id, transmit.frame)
    }

    async fn broadcast_message(&self, message: NetworkMessage) -> Result<()> {
        let transmit = link::outgoing(&message)?;
        let queues: Vec<(PeerId, mpsc::Sender<Frame>)> = {
            let state = self.shared.state();
            if state.running.is_none() {
                return Err(NetworkError::NotRunning);
            }
            let bulk = transmit.lane == Lane::Bulk;
            state.links.values().map(|link| (link.peer_id, if bulk { link.bulk.clone() } else { link.control.clone() })).collect()
        };
        for (peer, queue) in queues {
            if let Err(err) = enqueue(&queue, &peer, transmit.frame.clone()) {
                tracing::debug!(%peer, error = %err, "broadcast skipped a peer");
            }
        }
        Ok(())
    }

    /// Dials `address` (`host:port` or `quic://host:port`), verifies the
    /// peer (TLS certificate, then network secret and access policy) and
    /// returns its peer id. The peer is redialled with backoff whenever the
    /// connection drops, until `disconnect_peer` or `stop`.
    async fn connect_peer(&self, address: &str) -> Result<PeerId> {
        let peer = self.dial(address, None).await?;
        let supervised = self.shared.state().dials.values().any(|dial| dial.peer == Some(peer));
        if !supervised {
            let (id, cancel) = self.add_dial(address, Some(peer));
            self.supervise(id, address.to_owned(), Some(peer), cancel);
        }
        Ok(peer)
    }

    /// Dials once, with the TLS handshake requiring `peer_id`'s
    /// certificate; no redialling.
    async fn dial_discovered(&self, peer_id: &PeerId, address: &str) -> Result<PeerId> {
        self.dial(address, Some(*peer_id)).await
    }

    async fn disconnect_peer(&self, peer_id: &PeerId) -> Result<()> {
        let (link_found, dial_found) = self.shared.state().disconnect(peer_id, "disconnected by the local node");
        if link_found || dial_found {
            Ok(())
        } else {
            Err(NetworkError::PeerNotConnected(peer_id.to_string()))
        }
    }

    async fn get_connected_peers(&self) -> Result<Vec<PeerInfo>> {
        let ids: Vec<PeerId> = self.shared.state().links.keys().copied().collect();
        let mut peers: Vec<PeerInfo> = ids.iter().filter_map(|id| self.shared.peers.get(id)).collect();
        peers.sort_by_key(|peer| peer.peer_id);
        Ok(peers)
    }

    async fn is_peer_connected(&self, peer_id: &PeerId) -> bool {
        self.shared.state().links.contains_key(peer_id)
    }
}

fn enqueue(queue: &mpsc::Sender<Frame>, peer: &PeerId, frame: Frame) -> Result<()> {
    queue.try_send(frame).map_err(|err| match err {
        mpsc::error::TrySendError::Full(_) => NetworkError::PeerBusy { peer: peer.to_string() },
        mpsc::error::TrySendError::Closed(_) => NetworkError::PeerNotConnected(peer.to_string()),
    })
}
