//! [`SyncHandle`] and [`PeerEvent`]: how a network engine hands peers and
//! their sync messages to whoever drives the node's `DataSyncEngine`.
//!
//! The channel is bounded and the engine awaits each send: a consumer that
//! falls behind stops the engine from reading, and QUIC flow control then
//! stops the peer from sending. Memory stays bounded whatever the peers do.

use crate::peer::Transport;
use bytes::Bytes;
use tokio::sync::mpsc;

/// Something that happened with a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    /// A connection to `peer_id` completed its handshake and admission.
    /// For each peer, a `Connected` comes before its messages and a
    /// `Disconnected` after them.
    Connected {
        /// The peer id, verified from the peer's certificate.
        peer_id: String,
        /// The peer's address (`ip:port`).
        address: String,
        /// The transport.
        transport: Transport,
    },
    /// The connection to `peer_id` is gone.
    Disconnected {
        /// The peer id.
        peer_id: String,
        /// Why (goodbye, timeout, refused input, local stop, ...).
        reason: String,
    },
    /// `peer_id` sent a sync message: `bytes` is one encoded
    /// `pluresdb_sync::SyncMessage`, to pass to
    /// `DataSyncEngine::handle_input(peer_id, &bytes, now)` as is.
    Message {
        /// The sender, verified from its certificate.
        peer_id: String,
        /// The encoded sync message.
        bytes: Bytes,
    },
}

/// The sending side: engines hold a clone and deliver events through it.
#[derive(Clone, Debug)]
pub struct SyncHandle {
    events: mpsc::Sender<PeerEvent>,
}

/// The receiving side, read by the sync driver.
#[derive(Debug)]
pub struct PeerEvents {
    events: mpsc::Receiver<PeerEvent>,
}

impl SyncHandle {
    /// A handle and its receiver, holding at most `capacity` undelivered
    /// events (at least 1).
    pub fn channel(capacity: usize) -> (SyncHandle, PeerEvents) {
        let (events, receiver) = mpsc::channel(capacity.max(1));
        (SyncHandle { events }, PeerEvents { events: receiver })
    }

    /// Delivers `event`, waiting while the channel is full. Returns `false`
    /// when the receiver is gone (the event is dropped: nobody listens).
    pub async fn deliver(&self, event: PeerEvent) -> bool {
        self.events.send(event).await.is_ok()
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.events.is_closed()
    }
}

impl PeerEvents {
    /// The next event; `None` once every [`SyncHandle`] is dropped and the
    /// queue is empty.
    pub async fn recv(&mut self) -> Option<PeerEvent> {
        self.events.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<PeerEvent> {
        self.events.try_recv().ok()
    }
}
