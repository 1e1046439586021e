//! The page's links: one to a node (a [`SocketLink`] over the WebSocket
//! the JS client opens) and direct ones to other pages (the same
//! [`SocketLink`] over a WebRTC data channel, signalled through the node),
//! all feeding the replica's sync engine. The JS side only moves messages
//! and sets the timer:
//!
//! - each message from a socket or channel:
//!   [`BrowserReplica::handle_message`] with the link's name (`"node"`, or
//!   the other page's peer id);
//! - a socket or channel closed: [`BrowserReplica::handle_lost`];
//! - then store the journal ([`BrowserReplica::take_journal`]) and only
//!   after it is in IndexedDB send [`BrowserReplica::take_messages`]: the
//!   operations a peer sent are acknowledged after they are stored, never
//!   before;
//! - call [`BrowserReplica::handle_timeout`] after
//!   [`BrowserReplica::next_timeout_ms`].
//!
//! The page joins with a ticket (`pluresdb invite`): its secret is the
//! page's network secret on every link (the node and other pages must
//! prove it too), and its peer id the node the page expects on the socket.

use crate::replica::BrowserReplica;
use crate::BrowserError;
use bytes::Bytes;
use pluresdb_link::link::{outgoing, LinkEvent, Now};
use pluresdb_link::socket::{webrtc_channel_binding, Side, SocketLink, SocketLinkConfig};
use pluresdb_link::{FrameDecoder, NetworkMessage, CHANNEL_CHUNK_BYTES};
use pluresdb_security::{AccessPolicy, NetworkSecret, PeerId, Ticket};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, VecDeque};

/// Frames queued per link before the page stops taking sync messages from
/// the engine for it (the engine resends in its next round).
pub const MAX_QUEUED_MESSAGES: usize = 4_096;

/// The name of the link to the node.
pub const NODE_LINK: &str = "node";

/// The most direct links to other pages at once.
pub const MAX_CHANNELS: usize = 16;

/// Signals from the node kept for the page to take.
const MAX_SIGNALS: usize = 256;

/// One link.
pub(crate) struct Session {
    link: SocketLink,
    /// The peer's id (text), once the link is up.
    peer: Option<String>,
    /// Why the link ended, once it did.
    ended: Option<String>,
    /// Messages to send: one frame each on the WebSocket, pieces of the
    /// frame stream (at most [`CHANNEL_CHUNK_BYTES`]) on a data channel.
    queued: Vec<Vec<u8>>,
    /// A data channel's frame stream being read back into frames; `None`
    /// on the WebSocket (one frame per message).
    decoder: Option<FrameDecoder>,
}

impl Session {
    fn new(link: SocketLink) -> Self {
        Self { link, peer: None, ended: None, queued: Vec::new(), decoder: None }
    }

    fn over_channel(link: SocketLink) -> Self {
        Self { decoder: Some(FrameDecoder::new()), ..Self::new(link) }
    }

    /// Queues one frame (header and payload) to send.
    fn queue(&mut self, frame: Vec<u8>) {
        if self.decoder.is_some() && frame.len() > CHANNEL_CHUNK_BYTES {
            self.queued.extend(frame.chunks(CHANNEL_CHUNK_BYTES).map(<[u8]>::to_vec));
        } else {
            self.queued.push(frame);
        }
    }

    /// One message received: a frame, or on a data channel the next piece
    /// of the frame stream (whole frames go to the link as they complete).
    fn receive(&mut self, bytes: &[u8]) {
        let Some(decoder) = &mut self.decoder else {
            self.link.handle_message(bytes, Now::system());
            return;
        };
        decoder.extend(bytes);
        loop {
            match decoder.decode() {
                Ok(Some(frame)) => match frame.to_bytes() {
                    Ok(whole) => self.link.handle_message(&whole, Now::system()),
                    Err(err) => return self.link.close(&format!("bad frame on the data channel: {err}")),
                },
                Ok(None) => return,
                Err(err) => return self.link.close(&format!("bad frame on the data channel: {err}")),
            }
        }
    }

    fn is_up(&self) -> bool {
        self.ended.is_none() && self.link.is_established()
    }

    fn state(&self) -> Value {
        match &self.ended {
            Some(reason) => json!({"state": "closed", "reason": reason}),
            None if self.link.is_established() => json!({"state": "connected", "peer": self.peer}),
            None => json!({"state": "connecting"}),
        }
    }
}

/// Every link of the page.
#[derive(Default)]
pub(crate) struct Links {
    node: Option<Session>,
    channels: BTreeMap<String, Session>,
    /// The network's secret, from the ticket.
    secret: Option<NetworkSecret>,
    /// Signals the node relayed: the sending page and the payload.
    signals: VecDeque<(String, Vec<u8>)>,
}

impl Links {
    fn get_mut(&mut self, name: &str) -> Option<&mut Session> {
        if name == NODE_LINK {
            self.node.as_mut()
        } else {
            self.channels.get_mut(name)
        }
    }

    /// Whether a link other than `name` is up to `peer` (the node over
    /// both the WebSocket and a data channel).
    fn other_link_to(&self, name: &str, peer: &str) -> bool {
        let node = self.node.iter().filter(|_| name != NODE_LINK);
        let channels = self.channels.iter().filter(|(n, _)| n.as_str() != name).map(|(_, s)| s);
        node.chain(channels).any(|s| s.is_up() && s.peer.as_deref() == Some(peer))
    }

    fn names(&self) -> Vec<String> {
        self.node.iter().map(|_| NODE_LINK.to_owned()).chain(self.channels.keys().cloned()).collect()
    }
}

impl BrowserReplica {
    /// Starts a link to the node of `ticket` over a socket the page has
    /// just opened: the page's first message is queued. Any earlier link
    /// to a node is closed. `nonce` is 32 fresh random bytes.
    pub fn connect(&mut self, ticket: &str, nonce: [u8; 32], now_ms: u64) -> Result<(), BrowserError> {
        let ticket: Ticket = ticket.trim().parse().map_err(|err| BrowserError::Argument(format!("not a ticket: {err}")))?;
        self.disconnect("replaced by a new link");
        let policy = AccessPolicy::with_secret(ticket.secret.clone());
        let mut config = SocketLinkConfig::new(self.identity.clone(), Side::Client, nonce, policy, Now::system());
        config.expected_peer = Some(ticket.peer_id);
        self.links.secret = Some(ticket.secret);
        self.links.node = Some(Session::new(SocketLink::new(config)));
        self.after_input(now_ms);
        Ok(())
    }

    /// Closes the link to the node (a `goodbye` is queued for the socket).
    pub fn disconnect(&mut self, reason: &str) {
        if let Some(session) = &mut self.links.node {
            session.link.close(reason);
        }
        self.after_input(0);
    }

    /// Starts a direct link to page `peer` over a data channel that just
    /// opened; `initiator` for the page that asked for it. Needs the
    /// network's secret (a ticket given to [`connect`](Self::connect)).
    ///
    /// `fingerprints` are the DTLS certificate fingerprints of this page
    /// and of the other end, as the local and the remote SDP give them
    /// (`sha-256 AB:CD:...`): they are bound into the link's identity
    /// proofs, so a relay that swapped one to sit in the middle of the DTLS
    /// connection makes the link fail.
    pub fn open_channel(
        &mut self,
        peer: &str,
        initiator: bool,
        nonce: [u8; 32],
        fingerprints: Option<(&str, &str)>,
        now_ms: u64,
    ) -> Result<(), BrowserError> {
        let expected: PeerId = peer.parse().map_err(|err| BrowserError::Argument(format!("not a peer id {peer:?}: {err}")))?;
        let secret = self.links.secret.clone().ok_or_else(|| BrowserError::Argument("join a network (connect) first".to_owned()))?;
        if !self.links.channels.contains_key(peer) && self.links.channels.len() >= MAX_CHANNELS {
            return Err(BrowserError::Argument(format!("at most {MAX_CHANNELS} direct links")));
        }
        let side = if initiator { Side::Client } else { Side::Server };
        let mut config = SocketLinkConfig::new(self.identity.clone(), side, nonce, AccessPolicy::with_secret(secret), Now::system());
        config.expected_peer = Some(expected);
        config.channel_binding = fingerprints.map(|(local, remote)| match side {
            Side::Client => webrtc_channel_binding(local, remote),
            Side::Server => webrtc_channel_binding(remote, local),
        });
        if let Some(old) = self.links.channels.insert(peer.to_owned(), Session::over_channel(SocketLink::new(config))) {
            if let Some(old_peer) = old.peer.filter(|_| old.ended.is_none()) {
                self.engine.peer_disconnected(&old_peer);
                if self.links.other_link_to(peer, &old_peer) {
                    self.engine.peer_connected(&old_peer, now_ms);
                }
            }
        }
        self.after_input(now_ms);
        Ok(())
    }

    /// Queues signalling `data` for page `peer`, through the node.
    pub fn send_signal(&mut self, peer: &str, data: Vec<u8>) -> Result<(), BrowserError> {
        let session = self.links.node.as_mut().filter(|s| s.link.is_established());
        let session = session.ok_or_else(|| BrowserError::Argument("no link to a node to signal through".to_owned()))?;
        let message = NetworkMessage::Signal { peer: peer.to_owned(), data: Bytes::from(data) };
        let transmit = outgoing(&message).map_err(|err| BrowserError::Argument(err.to_string()))?;
        let mut bytes = Vec::with_capacity(pluresdb_link::codec::HEADER_LEN + transmit.frame.payload.len());
        let header = transmit.frame.header().map_err(|err| BrowserError::Argument(err.to_string()))?;
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&transmit.frame.payload);
        session.queued.push(bytes);
        Ok(())
    }

    /// The signals the node relayed since the last call: (sending page, data).
    pub fn take_signals(&mut self) -> Vec<(String, Vec<u8>)> {
        self.links.signals.drain(..).collect()
    }

    /// One message from link `name` (`"node"` or a page's peer id).
    pub fn handle_message(&mut self, name: &str, bytes: &[u8], now_ms: u64) {
        if let Some(session) = self.links.get_mut(name) {
            session.receive(bytes);
        }
        self.after_input(now_ms);
    }

    /// Link `name`'s socket or channel closed or failed.
    pub fn handle_lost(&mut self, name: &str, reason: &str, now_ms: u64) {
        if let Some(session) = self.links.get_mut(name) {
            session.link.handle_lost(reason);
        }
        self.after_input(now_ms);
    }

    /// Runs the links' and the sync engine's timers.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        let now = Now::system();
        for session in self.links.node.iter_mut().chain(self.links.channels.values_mut()) {
            session.link.handle_timeout(now);
        }
        self.engine.handle_timeout(now_ms);
        // What peers acknowledged, kept so a reload resends only what they
        // lack; a store that fails refuses it (and the write after it).
        let _ = self.engine.flush_acked();
        self.after_input(now_ms);
    }

    /// In how many milliseconds to call [`handle_timeout`](Self::handle_timeout).
    pub fn next_timeout_ms(&self, now_ms: u64) -> Option<u64> {
        let engine = self.engine.poll_timeout().map(|at| at.saturating_sub(now_ms));
        let now = web_time::Instant::now();
        let links = self.links.node.iter().chain(self.links.channels.values()).filter_map(|s| s.link.poll_timeout());
        let link = links.map(|at| u64::try_from(at.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)).min();
        match (engine, link) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The frames to send, in order per link: (link name, one message).
    /// Take them only once the journal taken before is stored.
    pub fn take_messages(&mut self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        if let Some(session) = &mut self.links.node {
            out.extend(session.queued.drain(..).map(|m| (NODE_LINK.to_owned(), m)));
        }
        for (name, session) in &mut self.links.channels {
            out.extend(session.queued.drain(..).map(|m| (name.clone(), m)));
        }
        out
    }

    /// The links that ended and whose last frames were taken, with why:
    /// close their sockets or channels. Ended direct links are forgotten.
    pub fn take_ended(&mut self) -> Vec<(String, String)> {
        let mut ended = Vec::new();
        if let Some(session) = &self.links.node {
            if let (true, Some(reason)) = (session.queued.is_empty(), &session.ended) {
                ended.push((NODE_LINK.to_owned(), reason.clone()));
            }
        }
        let done: Vec<String> =
            self.links.channels.iter().filter(|(_, s)| s.queued.is_empty() && s.ended.is_some()).map(|(name, _)| name.clone()).collect();
        for name in done {
            if let Some(session) = self.links.channels.remove(&name) {
                ended.push((name, session.ended.unwrap_or_default()));
            }
        }
        ended
    }

    /// The node link's state (`{"state": "none" | "connecting" |
    /// "connected" | "closed", "peer", "reason"}`) with `"channels"`: each
    /// direct link's state by peer id.
    pub fn link_status(&self) -> Value {
        let mut status = match &self.links.node {
            None => json!({"state": "none"}),
            Some(session) => session.state(),
        };
        let channels: Map<String, Value> = self.links.channels.iter().map(|(name, s)| (name.clone(), s.state())).collect();
        status["channels"] = Value::Object(channels);
        status
    }

    /// Moves events and frames between the links and the sync engine until
    /// none has more.
    pub(crate) fn after_input(&mut self, now_ms: u64) {
        loop {
            let mut moved = false;
            for name in self.links.names() {
                let events: Vec<LinkEvent> = match self.links.get_mut(&name) {
                    Some(session) => std::iter::from_fn(|| session.link.poll_event()).collect(),
                    None => continue,
                };
                for event in events {
                    moved = true;
                    self.on_link_event(&name, event, now_ms);
                }
            }
            while let Some(transmit) = self.engine.poll_transmit() {
                moved = true;
                // A data channel to the peer carries its sync rather than
                // the WebSocket: the page took WebRTC to the node because
                // it was offered, and the WebSocket stays as the fallback.
                let Links { node, channels, .. } = &mut self.links;
                let mut sessions = channels.values_mut().chain(node.iter_mut());
                let target = sessions.find(|s| s.is_up() && s.peer.as_deref() == Some(transmit.peer.as_str()));
                if let Some(session) = target.filter(|s| s.queued.len() < MAX_QUEUED_MESSAGES) {
                    // Too big for a frame cannot happen (the engine's
                    // batches are bounded below it); the round repairs it.
                    let _ = session.link.send_sync(Bytes::from(transmit.bytes));
                }
            }
            let Links { node, channels, .. } = &mut self.links;
            for session in node.iter_mut().chain(channels.values_mut()) {
                while let Some(frame) = session.link.poll_transmit() {
                    moved = true;
                    if let Ok(header) = frame.header() {
                        let mut bytes = Vec::with_capacity(header.len() + frame.payload.len());
                        bytes.extend_from_slice(&header);
                        bytes.extend_from_slice(&frame.payload);
                        session.queue(bytes);
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// One event of link `name`. A peer linked twice (the node over its
    /// WebSocket and a data channel) is one peer to the sync engine: when
    /// its second link comes up or one of two goes, the engine starts a
    /// fresh session with it, so nothing in flight on the other link is
    /// counted on.
    fn on_link_event(&mut self, name: &str, event: LinkEvent, now_ms: u64) {
        let Some(session) = self.links.get_mut(name) else { return };
        match event {
            LinkEvent::Established => {
                let Some(peer) = session.link.remote_peer().map(|p| p.to_string()) else { return };
                session.peer = Some(peer.clone());
                if self.links.other_link_to(name, &peer) {
                    self.engine.peer_disconnected(&peer);
                }
                self.engine.peer_connected(&peer, now_ms);
            }
            LinkEvent::Sync(bytes) => {
                let Some(peer) = session.peer.clone() else { return };
                if let Err(err) = self.engine.handle_input(&peer, &bytes, now_ms) {
                    if let Some(session) = self.links.get_mut(name) {
                        session.link.close(&format!("bad sync message: {err}"));
                    }
                }
            }
            LinkEvent::Signal { peer, data } => {
                // Only the node relays signals; a page that sends one
                // directly is ignored.
                if name == NODE_LINK && self.links.signals.len() < MAX_SIGNALS {
                    self.links.signals.push_back((peer, data.to_vec()));
                }
            }
            LinkEvent::PeerExchangeRequested => session.link.answer_peer_exchange(Vec::new()),
            LinkEvent::Closed(end) => {
                let peer = session.peer.take();
                session.ended = Some(end.to_string());
                if let Some(peer) = peer {
                    self.engine.peer_disconnected(&peer);
                    if self.links.other_link_to(name, &peer) {
                        self.engine.peer_connected(&peer, now_ms);
                    }
                }
            }
            LinkEvent::PeerAdmitted { .. } | LinkEvent::Heartbeat { .. } | LinkEvent::PeersLearned(_) => {}
        }
    }
}
