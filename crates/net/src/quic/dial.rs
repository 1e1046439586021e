//! Dialling: one attempt (QUIC handshake, then the link's), and the
//! supervision that keeps a dialled peer connected, redialling with
//! [`Backoff`] whenever its link drops.

use super::backoff::Backoff;
use super::handshake::{self, Terms};
use super::registry::{Dial, Shared};
use super::transport::listen_addresses;
use super::{address, link, stream, QuicNetworkEngine};
use crate::engine::Result;
use crate::peer::Direction;
use crate::NetworkError;
use pluresdb_security::{tls, PeerId};
use quinn::crypto::rustls::QuicClientConfig;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

impl QuicNetworkEngine {
    /// Dials `address` and runs the handshake; returns the peer id once the
    /// connection is a link. The QUIC handshake and the hello exchange
    /// together must finish within `handshake_timeout`.
    pub(super) async fn dial(&self, address: &str, expected: Option<PeerId>) -> Result<PeerId> {
        let keys = self.keys()?;
        let running = self.running()?;
        let addr = address::resolve(address, running.local_addr).await?;
        let slot =
            Shared::reserve_dial(&self.shared).ok_or(NetworkError::TooManyConnections { limit: self.shared.config.max_connections })?;
        let tls = tls::client_config(&keys.identity, expected).map_err(NetworkError::Tls)?;
        let crypto = QuicClientConfig::try_from(tls).map_err(|err| NetworkError::Config(format!("QUIC client TLS config: {err}")))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(keys.transport.clone());
        let connecting = running
            .endpoint
            .connect_with(client, addr, "pluresdb")
            .map_err(|err| NetworkError::Connect { address: address.to_owned(), reason: err.to_string() })?;
        let timeout = self.shared.config.handshake_timeout;
        let deadline = Instant::now() + timeout;
        let connection = match tokio::time::timeout_at(deadline, connecting).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(err)) => {
                return Err(match stream::connection_ended(address, &err) {
                    refused @ NetworkError::Refused { .. } => refused,
                    _ => NetworkError::Connect { address: address.to_owned(), reason: err.to_string() },
                })
            }
            Err(_) => return Err(NetworkError::Connect { address: address.to_owned(), reason: format!("no answer within {timeout:?}") }),
        };
        let terms = Terms {
            direction: Direction::Dialled,
            listen_addresses: listen_addresses(running.local_addr),
            limits: running.receive_limits,
            ask_for_peers: self.shared.ask_for_peers.load(Ordering::Relaxed),
            deadline,
        };
        let done = handshake::run(&keys, &self.shared.config, &connection, terms).await?;
        let peer_id = done.peer_id;
        link::start(self.shared.clone(), &running, connection, done, Direction::Dialled, slot);
        Ok(peer_id)
    }

    /// Keeps `address` connected: waits while its peer is connected,
    /// redials with [`Backoff`] when it is not, until cancelled (by
    /// `disconnect_peer` or `stop`).
    pub(super) fn supervise(&self, dial_id: u64, address: String, mut peer: Option<PeerId>, mut cancel: watch::Receiver<bool>) {
        let engine = self.clone();
        let mut shutdown = match self.running() {
            Ok(running) => running.shutdown.subscribe(),
            Err(_) => return,
        };
        tokio::spawn(async move {
            let mut backoff = Backoff::new();
            // A bootstrap node (peer unknown yet) is dialled at once.
            let mut immediate = peer.is_none();
            loop {
                // Wait while the peer is connected.
                loop {
                    let changed = engine.shared.links_changed.notified();
                    let connected = peer.is_some_and(|p| engine.shared.state().links.contains_key(&p));
                    if !connected {
                        break;
                    }
                    backoff.reset();
                    tokio::select! {
                        _ = changed => {}
                        _ = cancel.wait_for(|c| *c) => return,
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                }
                let delay = if std::mem::take(&mut immediate) { Duration::ZERO } else { backoff.next_delay() };
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.wait_for(|c| *c) => return,
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                if peer.is_some_and(|p| engine.shared.state().links.contains_key(&p)) {
                    continue;
                }
                let attempt = tokio::select! {
                    result = engine.dial(&address, peer) => result,
                    _ = cancel.wait_for(|c| *c) => return,
                    _ = shutdown.wait_for(|s| *s) => return,
                };
                match attempt {
                    Ok(found) => {
                        tracing::info!(%address, peer = %found, "redialled peer");
                        if let Some(dial) = engine.shared.state().dials.get_mut(&dial_id) {
                            dial.peer = Some(found);
                        }
                        peer = Some(found);
                    }
                    Err(NetworkError::NotRunning) => return,
                    Err(err) => tracing::debug!(%address, error = %err, "redial failed"),
                }
            }
        });
    }

    /// Registers a dial to keep up; returns its id and cancel receiver.
    pub(super) fn add_dial(&self, address: &str, peer: Option<PeerId>) -> (u64, watch::Receiver<bool>) {
        let (cancel, cancelled) = watch::channel(false);
        let mut state = self.shared.state();
        state.next_id += 1;
        let id = state.next_id;
        state.dials.insert(id, Dial { address: address.to_owned(), peer, cancel });
        (id, cancelled)
    }
}
