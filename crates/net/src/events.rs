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
use pluresdb_security::PeerId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
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
        peer_id: PeerId,
        /// The peer's address (`ip:port`).
        address: String,
        /// The transport.
        transport: Transport,
    },
    /// The connection to `peer_id` is gone.
    Disconnected {
        /// The peer id.
        peer_id: PeerId,
        /// Why (goodbye, timeout, refused input, local stop, ...).
        reason: String,
    },
    /// `peer_id` sent a sync message: `bytes` is one encoded
    /// `pluresdb_sync::SyncMessage`, to pass to
    /// `DataSyncEngine::handle_input(peer, &bytes, now)` as is (`peer`
    /// the text form of `peer_id`, which [`crate::SyncPort`] keeps per
    /// connected peer rather than writing it out per message).
    Message {
        /// The sender, verified from its certificate.
        peer_id: PeerId,
        /// The encoded sync message.
        bytes: Bytes,
    },
}

/// The sending side: engines hold a clone and deliver events through it.
///
/// Several engines may run side by side over one sync engine (QUIC and
/// libp2p): each gets its own handle from [`for_engine`](Self::for_engine),
/// and a peer connected through more than one of them is still one peer
/// to the sync engine. Its first link carries its sync session; the
/// others' `Connected` and `Disconnected` are not passed on (their
/// messages are), and when the link in use goes while another is up, the
/// sync engine sees the peer disconnect and connect again over the other
/// (a fresh sync session, so nothing in flight on the lost link is
/// counted on). [`route`](Self::route) says which engine carries a peer.
#[derive(Clone, Debug)]
pub struct SyncHandle {
    // Unbounded as a channel, bounded by what may enter it: messages only
    // with their peer's share (below), and at most three other events per
    // connection (connected, replaced, disconnected).
    events: mpsc::UnboundedSender<PeerEvent>,
    shares: Arc<Shares>,
    links: Arc<Mutex<HashMap<PeerId, PeerLinks>>>,
    engine: usize,
    router: Arc<Router>,
}

/// Which way each event goes to the driver: through the queue (and the
/// thread that prepares messages, when the driver has one), or straight
/// to the driver when it has opened a direct route
/// ([`PeerEvents::route_direct`]). A driver that waits for events with
/// nothing pending takes the next one straight, without a second thread's
/// wakeup on its way; a busy one has it prepared meanwhile.
///
/// Order: an event goes straight only when no event is pending either way
/// (every one queued or sent straight before it was taken by the driver),
/// so the straight way holds at most one event, older than any queued
/// one, and the driver takes it first (see `DirectRoute`): it takes them
/// in the order they were delivered. Events that come while one sent
/// straight is not taken yet are queued: a driver that falls behind a
/// stream of messages has them prepared by the other thread, instead of
/// each one waiting straight behind the last and the thread idling.
#[derive(Debug, Default)]
struct Router {
    /// The direct route's sender, once the driver opened it; held while an
    /// event's way is chosen and it is sent, so the counts below are exact.
    direct: Mutex<Option<mpsc::UnboundedSender<PeerEvent>>>,
    /// Events sent to the queue and not yet taken by the driver.
    queued: AtomicUsize,
    /// Events sent straight and not yet taken by the driver.
    straight: AtomicUsize,
    /// Whether the driver is waiting for an event.
    driver_waits: AtomicBool,
}

/// The driver's end of the direct route (see [`PeerEvents::route_direct`]).
#[derive(Debug)]
pub(crate) struct DirectRoute {
    events: mpsc::UnboundedReceiver<PeerEvent>,
    router: Arc<Router>,
}

impl DirectRoute {
    /// The next event sent straight.
    pub(crate) async fn recv(&mut self) -> Option<PeerEvent> {
        let event = self.events.recv().await;
        if event.is_some() {
            self.router.straight.fetch_sub(1, SeqCst);
        }
        event
    }

    /// The next event sent straight, if one is waiting.
    pub(crate) fn try_recv(&mut self) -> Option<PeerEvent> {
        let event = self.events.try_recv().ok();
        if event.is_some() {
            self.router.straight.fetch_sub(1, SeqCst);
        }
        event
    }

    /// The driver took an event that went through the queue.
    pub(crate) fn took_queued(&self) {
        self.router.queued.fetch_sub(1, SeqCst);
    }

    /// Marks the driver as waiting for events until the mark is dropped.
    pub(crate) fn waiting(&self) -> Waiting {
        self.router.driver_waits.store(true, SeqCst);
        Waiting(self.router.clone())
    }
}

/// See [`DirectRoute::waiting`].
pub(crate) struct Waiting(Arc<Router>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.driver_waits.store(false, SeqCst);
    }
}

/// A peer's links, one per engine at most (each engine keeps one link per
/// peer), in the order they connected.
#[derive(Debug, Default)]
struct PeerLinks {
    /// The engine whose link the sync engine was told of.
    in_use: usize,
    /// Each up link's engine and its `Connected` event.
    up: Vec<(usize, PeerEvent)>,
}

/// The peers' shares of the queue, by peer id. An entry lives as long as
/// its peer has messages outstanding; dead ones are swept as new ones come.
#[derive(Debug)]
struct Shares {
    limits: QueueLimits,
    peers: Mutex<HashMap<PeerId, Weak<Share>>>,
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
    router: Arc<Router>,
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
        let links = Arc::new(Mutex::new(HashMap::new()));
        let router = Arc::new(Router::default());
        (SyncHandle { events, shares, links, engine: 0, router: router.clone() }, PeerEvents { events: receiver, router })
    }

    /// A handle onto the same queue for engine number `engine` of several
    /// that run side by side (see the type's docs); the handle from
    /// [`channel`](Self::channel) is engine 0. Each engine must deliver,
    /// for every peer, `Connected` and `Disconnected` in turn.
    pub fn for_engine(&self, engine: usize) -> SyncHandle {
        SyncHandle { engine, ..self.clone() }
    }

    /// The number of the engine whose link to `peer` the sync engine uses,
    /// or `None` when no engine has one.
    pub fn route(&self, peer: &PeerId) -> Option<usize> {
        lock(&self.links).get(peer).map(|links| links.in_use)
    }

    /// The peers with a link up, each with the number of the engine whose
    /// link the sync engine uses.
    pub fn routes(&self) -> Vec<(PeerId, usize)> {
        lock(&self.links).iter().map(|(peer, links)| (*peer, links.in_use)).collect()
    }

    /// Delivers `event`. A message first waits for room in its peer's
    /// share (see the module docs). Returns `false` when the receiver is
    /// gone (the event is dropped: nobody listens).
    pub async fn deliver(&self, event: PeerEvent) -> bool {
        match event {
            PeerEvent::Message { peer_id, bytes } => {
                let Some(bytes) = self.count(&peer_id, bytes).await else { return false };
                self.send(PeerEvent::Message { peer_id, bytes })
            }
            // Decided and queued under the lock, so that the sync engine
            // sees the links of all engines come and go in one order.
            PeerEvent::Connected { ref peer_id, .. } => {
                let mut links = lock(&self.links);
                let peer = links.entry(*peer_id).or_default();
                peer.up.retain(|(engine, _)| *engine != self.engine);
                peer.up.push((self.engine, event.clone()));
                if peer.up.len() > 1 {
                    // A page's WebRTC link takes over from its WebSocket
                    // one: the page opened it to the node as the better
                    // path (the WebSocket stays as the fallback).
                    let in_use = peer.up.iter().find(|(engine, _)| *engine == peer.in_use).map(|(_, connected)| transport_of(connected));
                    if transport_of(&event) == Some(Transport::WebRtc) && in_use == Some(Some(Transport::WebSocket)) {
                        peer.in_use = self.engine;
                        tracing::info!(peer = %peer_id, engine = self.engine, "the page's WebRTC link takes over its sync from the WebSocket");
                        let moved = PeerEvent::Disconnected { peer_id: *peer_id, reason: "moved to the WebRTC link".to_owned() };
                        return self.send(moved) && self.send(event);
                    }
                    tracing::debug!(peer = %peer_id, engine = self.engine, in_use = peer.in_use, "a second link to a connected peer: kept as a fallback");
                    return !self.events.is_closed();
                }
                peer.in_use = self.engine;
                self.send(event)
            }
            PeerEvent::Disconnected { peer_id, reason } => {
                let mut links = lock(&self.links);
                let Some(peer) = links.get_mut(&peer_id) else {
                    return self.send(PeerEvent::Disconnected { peer_id, reason });
                };
                peer.up.retain(|(engine, _)| *engine != self.engine);
                if peer.in_use != self.engine {
                    return !self.events.is_closed();
                }
                let Some((engine, connected)) = peer.up.first().cloned() else {
                    links.remove(&peer_id);
                    return self.send(PeerEvent::Disconnected { peer_id, reason });
                };
                peer.in_use = engine;
                tracing::info!(peer = %peer_id, %reason, engine, "the link in use is gone; syncing over another");
                self.send(PeerEvent::Disconnected { peer_id, reason }) && self.send(connected)
            }
        }
    }

    /// Sends `event` to the driver, straight or through the queue (see
    /// [`Router`]); `false` when the driver is gone.
    fn send(&self, event: PeerEvent) -> bool {
        let router = &self.router;
        let direct = lock(&router.direct);
        if let Some(direct) = direct.as_ref() {
            let straight = router.straight.load(SeqCst) == 0 && router.queued.load(SeqCst) == 0 && router.driver_waits.load(SeqCst);
            if straight {
                router.straight.fetch_add(1, SeqCst);
                if direct.send(event).is_ok() {
                    return true;
                }
                router.straight.fetch_sub(1, SeqCst);
                return false;
            }
        }
        router.queued.fetch_add(1, SeqCst);
        self.events.send(event).is_ok()
    }

    /// `payload`, holding room in `peer`'s share until it is dropped;
    /// waits for the room. `None` when the receiver is gone.
    async fn count(&self, peer: &PeerId, payload: Bytes) -> Option<Bytes> {
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

fn transport_of(event: &PeerEvent) -> Option<Transport> {
    match event {
        PeerEvent::Connected { transport, .. } => Some(*transport),
        _ => None,
    }
}

/// `mutex`'s guard; a panic while it was held cannot leave the maps
/// half-changed (each update is one insert, retain or removal).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shares {
    /// `peer`'s share, made if it has none in use.
    fn share(&self, peer: &PeerId) -> Arc<Share> {
        let mut peers = lock(&self.peers);
        if let Some(share) = peers.get(peer).and_then(Weak::upgrade) {
            return share;
        }
        peers.retain(|_, share| share.strong_count() > 0);
        let share = Arc::new(Share {
            messages: Arc::new(Semaphore::new(self.limits.messages_per_peer)),
            bytes: Arc::new(Semaphore::new(self.limits.bytes_per_peer)),
        });
        peers.insert(*peer, Arc::downgrade(&share));
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

    /// [`recv`](Self::recv) for a thread outside the async runtime (it
    /// blocks the thread; it panics inside an async context).
    pub fn blocking_recv(&mut self) -> Option<PeerEvent> {
        self.events.blocking_recv()
    }

    /// Opens a second way to the driver, beside this queue (which a thread
    /// of the driver's then reads and prepares): while the driver waits
    /// with nothing pending, the next event comes to it straight (see
    /// [`Router`]). The driver says when it waits
    /// ([`DirectRoute::waiting`]), counts each event it takes from the
    /// queue's end ([`DirectRoute::took_queued`]), and takes the event sent
    /// straight, if there is one, before any from the queue's end.
    pub(crate) fn route_direct(&self) -> DirectRoute {
        let (sender, events) = mpsc::unbounded_channel();
        *lock(&self.router.direct) = Some(sender);
        DirectRoute { events, router: self.router.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_peer as peer;
    use std::future::Future;
    use std::pin::{pin, Pin};
    use std::task::{Context, Waker};

    fn message(peer: &str, len: usize) -> PeerEvent {
        PeerEvent::Message { peer_id: crate::test_peer(peer), bytes: Bytes::from(vec![len as u8; len]) }
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
            assert!(handle.deliver(PeerEvent::Disconnected { peer_id: peer("a"), reason: "test".into() }).await);
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

    fn connected(peer: &str, address: &str, transport: Transport) -> PeerEvent {
        PeerEvent::Connected { peer_id: crate::test_peer(peer), address: address.to_owned(), transport }
    }

    fn disconnected(peer: &str, reason: &str) -> PeerEvent {
        PeerEvent::Disconnected { peer_id: crate::test_peer(peer), reason: reason.to_owned() }
    }

    fn drain(events: &mut PeerEvents) -> Vec<PeerEvent> {
        std::iter::from_fn(|| events.try_recv()).collect()
    }

    #[tokio::test]
    async fn a_peer_linked_through_two_engines_is_one_peer_to_the_sync_engine() {
        let (handle, mut events) = SyncHandle::channel(8);
        let (quic, libp2p) = (handle.for_engine(0), handle.for_engine(1));
        let over_quic = connected("p", "127.0.0.1:1", Transport::Quic);
        let over_libp2p = connected("p", "/ip4/127.0.0.1/tcp/2", Transport::Libp2p);

        assert!(libp2p.deliver(over_libp2p.clone()).await);
        assert!(quic.deliver(over_quic.clone()).await);
        assert_eq!(drain(&mut events), vec![over_libp2p.clone()], "the second link is not a second peer");
        assert_eq!(handle.route(&peer("p")), Some(1), "the first link carries the sync session");

        // Messages come through whichever link the peer sends them on.
        assert!(quic.deliver(message("p", 1)).await);
        assert!(libp2p.deliver(message("p", 2)).await);
        assert_eq!(drain(&mut events).len(), 2);

        // The link in use goes: the peer leaves and comes back over the other.
        assert!(libp2p.deliver(disconnected("p", "timed out")).await);
        assert_eq!(drain(&mut events), vec![disconnected("p", "timed out"), over_quic.clone()]);
        assert_eq!(handle.route(&peer("p")), Some(0));

        // A fallback link going is not news; the last link going is.
        assert!(libp2p.deliver(over_libp2p.clone()).await);
        assert!(libp2p.deliver(disconnected("p", "closed")).await);
        assert_eq!(drain(&mut events), vec![]);
        assert!(quic.deliver(disconnected("p", "goodbye")).await);
        assert_eq!(drain(&mut events), vec![disconnected("p", "goodbye")]);
        assert_eq!(handle.route(&peer("p")), None);
        assert!(handle.routes().is_empty(), "nothing is kept for a peer with no link");
    }

    #[tokio::test]
    async fn one_engine_replacing_its_link_is_seen_as_before() {
        let (handle, mut events) = SyncHandle::channel(8);
        let first = connected("p", "127.0.0.1:1", Transport::Quic);
        let second = connected("p", "127.0.0.1:3", Transport::Quic);
        for event in [first.clone(), disconnected("p", "replaced"), second.clone(), disconnected("p", "goodbye")] {
            assert!(handle.deliver(event).await);
        }
        assert_eq!(drain(&mut events), vec![first, disconnected("p", "replaced"), second, disconnected("p", "goodbye")]);
    }

    #[tokio::test]
    async fn a_pages_webrtc_link_takes_over_its_sync_from_the_websocket_and_falls_back_to_it() {
        let (handle, mut events) = SyncHandle::channel(8);
        let (websocket, webrtc) = (handle.for_engine(0), handle.for_engine(1));
        let over_websocket = connected("page", "127.0.0.1:1", Transport::WebSocket);
        let over_webrtc = connected("page", "127.0.0.1:2", Transport::WebRtc);

        assert!(websocket.deliver(over_websocket.clone()).await);
        assert!(webrtc.deliver(over_webrtc.clone()).await);
        assert_eq!(drain(&mut events), vec![over_websocket.clone(), disconnected("page", "moved to the WebRTC link"), over_webrtc.clone()]);
        assert_eq!(handle.route(&peer("page")), Some(1));

        // WebRTC fails: back to the WebSocket, with a fresh session.
        assert!(webrtc.deliver(disconnected("page", "ICE failed")).await);
        assert_eq!(drain(&mut events), vec![disconnected("page", "ICE failed"), over_websocket]);
        assert_eq!(handle.route(&peer("page")), Some(0));
    }
}
