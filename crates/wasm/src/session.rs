//! The page's link to a node: a [`SocketLink`] (client side) over the
//! WebSocket the JS client opens, feeding the replica's sync engine. The JS
//! side only moves messages and sets the timer:
//!
//! - each message from the socket: [`BrowserReplica::handle_message`];
//! - the socket closed or failed: [`BrowserReplica::handle_lost`];
//! - then store the journal ([`BrowserReplica::take_journal`]) and only
//!   after it is in IndexedDB send [`BrowserReplica::take_messages`]: the
//!   node's operations are acknowledged after they are stored, never
//!   before;
//! - call [`BrowserReplica::handle_timeout`] after
//!   [`BrowserReplica::next_timeout_ms`].
//!
//! The page joins with a ticket (`pluresdb invite`): its secret is the
//! page's network secret (the node must prove it too), and its peer id the
//! node the page expects on the socket.

use crate::replica::BrowserReplica;
use crate::BrowserError;
use bytes::Bytes;
use pluresdb_link::link::{LinkEvent, Now};
use pluresdb_link::socket::{Side, SocketLink, SocketLinkConfig};
use pluresdb_security::{AccessPolicy, Ticket};
use serde_json::{json, Value};

/// Frames queued for the socket before the page stops taking sync
/// messages from the engine (the engine keeps what it could not send and
/// resends it in its next round).
pub const MAX_QUEUED_MESSAGES: usize = 4_096;

/// The link to one node.
pub(crate) struct Session {
    link: SocketLink,
    /// The node's peer id (text), once the link is up.
    peer: Option<String>,
    /// Why the link ended, once it did.
    ended: Option<String>,
    /// Frames for the socket, one message each.
    queued: Vec<Vec<u8>>,
}

impl BrowserReplica {
    /// Starts a link to the node of `ticket` over a socket the page has
    /// just opened: the page's first message is queued. Any earlier link
    /// is closed. `nonce` is 32 fresh random bytes.
    pub fn connect(&mut self, ticket: &str, nonce: [u8; 32], now_ms: u64) -> Result<(), BrowserError> {
        let ticket: Ticket = ticket.trim().parse().map_err(|err| BrowserError::Argument(format!("not a ticket: {err}")))?;
        self.disconnect("replaced by a new link");
        let mut config =
            SocketLinkConfig::new(self.identity.clone(), Side::Client, nonce, AccessPolicy::with_secret(ticket.secret), Now::system());
        config.expected_peer = Some(ticket.peer_id);
        self.session = Some(Session { link: SocketLink::new(config), peer: None, ended: None, queued: Vec::new() });
        self.after_input(now_ms);
        Ok(())
    }

    /// Closes the link (a `goodbye` is queued for the socket).
    pub fn disconnect(&mut self, reason: &str) {
        if let Some(session) = &mut self.session {
            session.link.close(reason);
        }
        self.after_input(0);
    }

    /// One message from the socket.
    pub fn handle_message(&mut self, bytes: &[u8], now_ms: u64) {
        if let Some(session) = &mut self.session {
            session.link.handle_message(bytes, Now::system());
        }
        self.after_input(now_ms);
    }

    /// The socket closed or failed.
    pub fn handle_lost(&mut self, reason: &str, now_ms: u64) {
        if let Some(session) = &mut self.session {
            session.link.handle_lost(reason);
        }
        self.after_input(now_ms);
    }

    /// Runs the link's and the sync engine's timers.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        if let Some(session) = &mut self.session {
            session.link.handle_timeout(Now::system());
        }
        self.engine.handle_timeout(now_ms);
        // What the node acknowledged, kept so a reload resends only what it
        // lacks; a store that fails refuses it (and the write after it).
        let _ = self.engine.flush_acked();
        self.after_input(now_ms);
    }

    /// In how many milliseconds to call [`handle_timeout`](Self::handle_timeout).
    pub fn next_timeout_ms(&self, now_ms: u64) -> Option<u64> {
        let engine = self.engine.poll_timeout().map(|at| at.saturating_sub(now_ms));
        let link = self.session.as_ref().and_then(|s| s.link.poll_timeout()).map(|at| {
            let left = at.saturating_duration_since(web_time::Instant::now());
            u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
        });
        match (engine, link) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The frames to send on the socket, in order (one message each). Take
    /// them only once the journal taken before is stored.
    pub fn take_messages(&mut self) -> Vec<Vec<u8>> {
        self.session.as_mut().map(|s| std::mem::take(&mut s.queued)).unwrap_or_default()
    }

    /// Whether the socket should be closed: the link ended and its last
    /// frames were taken.
    pub fn link_ended(&self) -> Option<String> {
        self.session.as_ref().filter(|s| s.queued.is_empty()).and_then(|s| s.ended.clone())
    }

    /// `{"state": "none" | "connecting" | "connected" | "closed", "peer", "reason"}`.
    pub fn link_status(&self) -> Value {
        match &self.session {
            None => json!({"state": "none"}),
            Some(session) if session.ended.is_some() => json!({"state": "closed", "reason": session.ended}),
            Some(session) if session.link.is_established() => json!({"state": "connected", "peer": session.peer}),
            Some(_) => json!({"state": "connecting"}),
        }
    }

    /// Moves events and frames between the link and the sync engine until
    /// neither has more.
    pub(crate) fn after_input(&mut self, now_ms: u64) {
        let Some(session) = &mut self.session else {
            // No link: the engine's transmits are for no one.
            while self.engine.poll_transmit().is_some() {}
            return;
        };
        loop {
            let mut moved = false;
            while let Some(event) = session.link.poll_event() {
                moved = true;
                match event {
                    LinkEvent::Established => {
                        if let Some(peer) = session.link.remote_peer() {
                            let peer = peer.to_string();
                            self.engine.peer_connected(&peer, now_ms);
                            session.peer = Some(peer);
                        }
                    }
                    LinkEvent::Sync(bytes) => {
                        if let Some(peer) = &session.peer {
                            if let Err(err) = self.engine.handle_input(peer, &bytes, now_ms) {
                                session.link.close(&format!("bad sync message from the node: {err}"));
                            }
                        }
                    }
                    LinkEvent::PeerExchangeRequested => session.link.answer_peer_exchange(Vec::new()),
                    LinkEvent::Closed(end) => {
                        if let Some(peer) = session.peer.take() {
                            self.engine.peer_disconnected(&peer);
                        }
                        session.ended = Some(end.to_string());
                    }
                    LinkEvent::PeerAdmitted { .. } | LinkEvent::Heartbeat { .. } | LinkEvent::PeersLearned(_) => {}
                }
            }
            while session.queued.len() < MAX_QUEUED_MESSAGES {
                let Some(transmit) = self.engine.poll_transmit() else { break };
                moved = true;
                if session.peer.as_deref() == Some(transmit.peer.as_str()) {
                    // Too big for a frame: the engine's batches are bounded
                    // below that, so this is a bug; the round repairs it.
                    let _ = session.link.send_sync(Bytes::from(transmit.bytes));
                }
            }
            while let Some(frame) = session.link.poll_transmit() {
                moved = true;
                let mut bytes = Vec::with_capacity(pluresdb_link::codec::HEADER_LEN + frame.payload.len());
                if let Ok(header) = frame.header() {
                    bytes.extend_from_slice(&header);
                    bytes.extend_from_slice(&frame.payload);
                    session.queued.push(bytes);
                }
            }
            if !moved {
                return;
            }
        }
    }
}
