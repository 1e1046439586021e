//! [`SyncHandle`] and [`PeerEvent`]: how a network engine hands peers and
//! their sync messages to whoever drives the node's `DataSyncEngine`.
//!
//! Each peer has its own share of the queue: at most a number of messages
//! and of bytes ([`QueueLimits`]) delivered and not yet consumed. A message
//! counts until its bytes are dropped (after `handle_input`), not only
//! until it is taken off the queue. The engine awaits each delivery, so a
//! peer that fills its share stops being read, and QUIC flow control then
//! stops it from sending; other peers, whose shares are their own, go on.
//! Memory stays bounded whatever the peers do: their number (the
//! connection limit) times one share.

use crate::peer::Transport;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// What one peer may have queued for the sync engine and not yet consumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Messages. Default: 1,024.
    pub messages_per_peer: usize,
    /// Payload bytes. A message larger than this waits until the peer has
    /// nothing else queued, then takes the whole share, so a message of
    /// any size the frame limit allows gets through. Default: 8 MiB (two
    /// full sync batches).
    pub bytes_per_peer: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self { messages_per_peer: 1_024, bytes_per_peer: 8 * 1024 * 1024 }
    }
}

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
    // Unbounded as a channel, bounded by what may enter it: messages only
    // with their peer's share (below), and at most three other events per
    // connection (connected, replaced, disconnected).
    events: mpsc::UnboundedSender<PeerEvent>,
    shares: Arc<Shares>,
}

/// The peers' shares of the queue, by peer id. An entry lives as long as
/// its peer has messages outstanding; dead ones are swept as new ones come.
#[derive(Debug)]
struct Shares {
    limits: QueueLimits,
    peers: Mutex<HashMap<String, Weak<Share>>>,
}

/// One peer's share: permits for messages and for bytes.
#[derive(Debug)]
struct Share {
    messages: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
}

/// A message's payload together with the share it holds; dropping the
/// last `Bytes` that refers to it gives the share back.
struct Counted {
    payload: Bytes,
    _message: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
    _share: Arc<Share>,
}

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        &self.payload
    }
}

/// The receiving side, read by the sync driver.
#[derive(Debug)]
pub struct PeerEvents {
    events: mpsc::UnboundedReceiver<PeerEvent>,
}

impl SyncHandle {
    /// A handle and its receiver; each peer may have at most `capacity`
    /// (at least 1) messages and [`QueueLimits::default`]'s bytes queued.
    pub fn channel(capacity: usize) -> (SyncHandle, PeerEvents) {
        Self::with_limits(QueueLimits { messages_per_peer: capacity, ..QueueLimits::default() })
    }

    /// A handle and its receiver with each peer's share set by `limits`
    /// (each at least 1).
    pub fn with_limits(limits: QueueLimits) -> (SyncHandle, PeerEvents) {
        let limits = QueueLimits {
            messages_per_peer: limits.messages_per_peer.clamp(1, Semaphore::MAX_PERMITS),
            bytes_per_peer: limits.bytes_per_peer.clamp(1, Semaphore::MAX_PERMITS),
        };
        let (events, receiver) = mpsc::unbounded_channel();
        let shares = Arc::new(Shares { limits, peers: Mutex::new(HashMap::new()) });
        (SyncHandle { events, shares }, PeerEvents { events: receiver })
    }

    /// Delivers `event`. A message first waits for room in its peer's
    /// share (see the module docs). Returns `false` when the receiver is
    /// gone (the event is dropped: nobody listens).
    pub async fn deliver(&self, event: PeerEvent) -> bool {
        let event = match event {
            PeerEvent::Message { peer_id, bytes } => {
                let Some(bytes) = self.count(&peer_id, bytes).await else { return false };
                PeerEvent::Message { peer_id, bytes }
            }
            other => other,
        };
        self.events.send(event).is_ok()
    }

    /// `payload`, holding room in `peer`'s share until it is dropped;
    /// waits for the room. `None` when the receiver is gone.
    async fn count(&self, peer: &str, payload: Bytes) -> Option<Bytes> {
        let share = self.shares.share(peer);
        let limits = self.shares.limits;
        let size = u32::try_from(payload.len().clamp(1, limits.bytes_per_peer)).unwrap_or(u32::MAX);
        let message = tokio::select! {
            permit = share.messages.clone().acquire_owned() => permit.ok()?,
            () = self.events.closed() => return None,
        };
        let bytes = tokio::select! {
            permit = share.bytes.clone().acquire_many_owned(size) => permit.ok()?,
            () = self.events.closed() => return None,
        };
        Some(Bytes::from_owner(Counted { payload, _message: message, _bytes: bytes, _share: share }))
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.events.is_closed()
    }
}

impl Shares {
    /// `peer`'s share, made if it has none in use.
    fn share(&self, peer: &str) -> Arc<Share> {
        // Every update is one insert or removal: a panic elsewhere cannot
        // leave the map half-changed.
        let mut peers = self.peers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(share) = peers.get(peer).and_then(Weak::upgrade) {
            return share;
        }
        peers.retain(|_, share| share.strong_count() > 0);
        let share = Arc::new(Share {
            messages: Arc::new(Semaphore::new(self.limits.messages_per_peer)),
            bytes: Arc::new(Semaphore::new(self.limits.bytes_per_peer)),
        });
        peers.insert(peer.to_owned(), Arc::downgrade(&share));
        share
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::{pin, Pin};
    use std::task::{Context, Waker};

    fn message(peer: &str, len: usize) -> PeerEvent {
        PeerEvent::Message { peer_id: peer.to_owned(), bytes: Bytes::from(vec![len as u8; len]) }
    }

    fn is_pending<F: Future>(future: Pin<&mut F>) -> bool {
        future.poll(&mut Context::from_waker(Waker::noop())).is_pending()
    }

    #[tokio::test]
    async fn a_peer_waits_while_its_share_is_in_use_and_others_do_not() {
        let (handle, mut events) = SyncHandle::with_limits(QueueLimits { messages_per_peer: 3, bytes_per_peer: 10 });
        assert!(handle.deliver(message("a", 6)).await);
        {
            // 6 + 6 bytes is over a's share: the second waits...
            let mut second = pin!(handle.deliver(message("a", 6)));
            assert!(is_pending(second.as_mut()));
            // ...while b, and events that carry no payload, do not.
            assert!(handle.deliver(message("b", 10)).await);
            assert!(handle.deliver(PeerEvent::Disconnected { peer_id: "a".into(), reason: "test".into() }).await);
            // Taking the first off the queue is not enough: its bytes count
            // until they are dropped.
            let Some(PeerEvent::Message { bytes: first, .. }) = events.recv().await else { panic!("a's first message") };
            assert!(is_pending(second.as_mut()));
            drop(first);
            assert!(second.await);
        }
        let mut kept = Vec::new();
        while let Some(event) = events.try_recv() {
            kept.push(event);
        }
        assert_eq!(kept.len(), 3, "b's message, the disconnect, a's second message");
        drop(kept);
        // A message larger than the share waits for an empty share, then
        // takes all of it.
        assert!(handle.deliver(message("a", 4)).await);
        let mut big = pin!(handle.deliver(message("a", 100)));
        assert!(is_pending(big.as_mut()));
        drop(events.try_recv());
        assert!(big.await);
        let mut after = pin!(handle.deliver(message("a", 1)));
        assert!(is_pending(after.as_mut()));
        // Messages count too, whatever their size; and a delivery waiting
        // when the receiver goes returns false.
        drop(events.try_recv());
        assert!(after.await);
        assert!(handle.deliver(message("c", 0)).await);
        assert!(handle.deliver(message("c", 0)).await);
        assert!(handle.deliver(message("c", 0)).await);
        let mut fourth = pin!(handle.deliver(message("c", 0)));
        assert!(is_pending(fourth.as_mut()));
        drop(events);
        assert!(!fourth.await);
    }
}
