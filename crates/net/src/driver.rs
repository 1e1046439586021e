//! How a `DataSyncEngine` is run over a [`NetworkEngine`]: [`SyncPort`],
//! the one loop body every driver uses (the node runtime's writer, and
//! [`SyncDriver`], a small task for examples, tests and benches).
//!
//! The contract (see `DataSyncEngine`'s docs for the engine's side):
//!
//! - [`PeerEvent::Connected`] -> `DataSyncEngine::peer_connected`,
//!   [`PeerEvent::Message`] -> `handle_input`, [`PeerEvent::Disconnected`]
//!   -> `peer_disconnected` ([`apply`]);
//! - at `poll_timeout`, `handle_timeout`;
//! - after each of those (and after anything else that changes the
//!   engine, such as a local write), everything `poll_transmit` returns
//!   goes to `NetworkEngine::send_message` as
//!   [`NetworkMessage::EncodedSync`]. A refused send (`PeerBusy`, peer
//!   gone) is dropped: the sync engine resends what a peer did not
//!   acknowledge.
//!
//! The network names peers by [`PeerId`]; the sync engine by text labels
//! (it runs in browsers and simulators too, where peers are "a" and "b").
//! A port writes a peer's label once, when it connects, and keeps both
//! ways of the mapping while it stays connected, so neither a message in
//! nor a transmit out pays a base58 encode or an Ed25519 key decode.
//!
//! A driver's loop is then: [`SyncPort::flush`] (or
//! [`take_transmits`](SyncPort::take_transmits) and
//! [`send`](SyncPort::send) when the engine sits behind a lock), wait for
//! [`SyncPort::next`] together with whatever else the driver serves, and
//! hand a [`SyncWake`] to the engine: [`SyncPort::apply`] for an event,
//! `handle_timeout` for the timer.
//!
//! A port made with [`SyncPort::preparing`] decodes and checks each
//! message (encodings, digests, signatures: [`Inbound::prepare`]) on a
//! thread of its own before the driver takes it, so that the thread that
//! owns the replica only merges and writes, and the next message is made
//! ready while the current one commits. Only while the driver waits in
//! [`SyncPort::next`] with nothing pending does the next event come to it
//! straight, unprepared (one at a time: what comes before the driver took
//! it is prepared): the driver checks it itself, as it would have
//! waited for the thread anyway, and a single write from a peer reaches
//! it without a second thread's wakeup on the way.

use crate::engine::NetworkEngine;
use crate::events::{DirectRoute, PeerEvent, PeerEvents};
use crate::message::NetworkMessage;
use pluresdb_core::OpVerifier;
use pluresdb_core::Store;
use pluresdb_security::PeerId;
use pluresdb_sync::{DataSyncEngine, Inbound, Transmit};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Mutex, Notify};
use tokio::task::JoinHandle;

/// Peer events applied in one turn at most, when none of them gives the
/// engine anything to send (see [`SyncPort::apply`]).
pub const MAX_EVENTS_PER_TURN: usize = 256;

/// The longest a driver sleeps when the sync engine has no timer.
pub const IDLE_WAKE: Duration = Duration::from_secs(60);

/// Milliseconds since the Unix epoch: the sync engine's time.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What woke a driver up, from [`SyncPort::next`].
// An event holds a `PeerId` (its verified key, ~220 bytes); a wake is
// matched as soon as it is returned, and boxing it would allocate per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum SyncWake {
    /// A peer event: hand it to [`SyncPort::apply`].
    Event(PortEvent),
    /// The sync engine's timer is due (or `IDLE_WAKE` (60 s) passed): call
    /// `handle_timeout`.
    Timer,
    /// Every [`crate::SyncHandle`] is gone: no event will come again (later
    /// calls wait for the timer only).
    Closed,
}

/// A peer event on its way to the sync engine: as the network delivered
/// it, or a message decoded and checked ahead (see [`SyncPort::preparing`]).
#[derive(Debug)]
pub struct PortEvent(PortEventKind);

#[derive(Debug)]
enum PortEventKind {
    Peer(PeerEvent),
    Prepared {
        peer_id: PeerId,
        inbound: Inbound,
        /// The message as received, kept until it is applied: it holds its
        /// room in the peer's share of the queue (`SyncHandle`), which so
        /// bounds the messages prepared and waiting too.
        _received: bytes::Bytes,
    },
}

impl PortEvent {
    /// The network's event, unless it is a message that was prepared.
    pub fn peer_event(&self) -> Option<&PeerEvent> {
        match &self.0 {
            PortEventKind::Peer(event) => Some(event),
            PortEventKind::Prepared { .. } => None,
        }
    }
}

impl From<PeerEvent> for PortEvent {
    fn from(event: PeerEvent) -> Self {
        Self(PortEventKind::Peer(event))
    }
}

/// Where a port's events come from.
enum Source {
    /// Straight from the network.
    Direct(PeerEvents),
    /// From the thread that prepares messages (`None` once it ended), or,
    /// while the port waited with nothing pending, straight from the
    /// network (`route`: it holds at most one event, older than any the
    /// thread holds, so it is read first).
    Prepared { ready: Option<tokio::sync::mpsc::UnboundedReceiver<PortEvent>>, route: DirectRoute },
}

impl Source {
    async fn recv(&mut self) -> Option<PortEvent> {
        match self {
            Source::Direct(events) => events.recv().await.map(PortEvent::from),
            Source::Prepared { ready, route } => loop {
                let Some(prepared) = ready.as_mut() else {
                    // The network's handles are gone: nothing is sent
                    // straight any more either.
                    return route.try_recv().map(PortEvent::from);
                };
                tokio::select! {
                    biased;
                    Some(event) = route.recv() => return Some(PortEvent::from(event)),
                    event = prepared.recv() => match event {
                        Some(event) => {
                            route.took_queued();
                            return Some(event);
                        }
                        None => *ready = None,
                    },
                }
            },
        }
    }

    fn try_recv(&mut self) -> Option<PortEvent> {
        match self {
            Source::Direct(events) => events.try_recv().map(PortEvent::from),
            Source::Prepared { ready, route } => {
                if let Some(event) = route.try_recv() {
                    return Some(PortEvent::from(event));
                }
                let event = ready.as_mut()?.try_recv().ok()?;
                route.took_queued();
                Some(event)
            }
        }
    }

    /// Marks the port as waiting for events (a preparing port's next event
    /// then comes straight) until the mark is dropped.
    fn waiting(&self) -> Option<crate::events::Waiting> {
        match self {
            Source::Direct(_) => None,
            Source::Prepared { route, .. } => Some(route.waiting()),
        }
    }
}

/// Where a sync engine meets a network engine: the peer events it takes
/// and the engine its messages go out through. Without a network
/// ([`SyncPort::offline`]) it only keeps time, and transmits are dropped.
pub struct SyncPort<E: NetworkEngine + ?Sized> {
    network: Option<Arc<E>>,
    events: Option<Source>,
    labels: PeerLabels,
    /// An event taken from the queue to see whether it joined the batches
    /// before it, which it did not: the next to apply.
    carried: Option<PortEvent>,
}

/// Batches of operations from one peer applied in one commit at most (see
/// [`SyncPort::apply`]). More would leave the sender's window (four
/// batches) empty while they commit.
pub const MAX_BATCHES_TOGETHER: usize = 2;

/// The sync engine's label (the text form) of each connected peer, and
/// the peer of each label: entries live from a peer's `Connected` to its
/// `Disconnected`, so there are at most as many as connected peers.
#[derive(Debug, Default)]
struct PeerLabels {
    by_peer: HashMap<PeerId, String>,
    by_label: HashMap<String, PeerId>,
}

impl PeerLabels {
    /// `peer`'s label, kept from now until [`remove`](Self::remove).
    fn insert(&mut self, peer: PeerId) -> &str {
        let labels = &mut self.by_label;
        self.by_peer.entry(peer).or_insert_with(|| {
            let label = peer.to_string();
            labels.insert(label.clone(), peer);
            label
        })
    }

    /// `peer`'s label, forgotten from now on.
    fn remove(&mut self, peer: &PeerId) -> String {
        match self.by_peer.remove(peer) {
            Some(label) => {
                self.by_label.remove(&label);
                label
            }
            None => peer.to_string(),
        }
    }

    /// `peer`'s label: kept since it connected, else written out (a
    /// message is never delivered outside its peer's connection, so that
    /// is only for a misbehaving engine).
    fn label(&self, peer: &PeerId) -> std::borrow::Cow<'_, str> {
        match self.by_peer.get(peer) {
            Some(label) => std::borrow::Cow::Borrowed(label),
            None => std::borrow::Cow::Owned(peer.to_string()),
        }
    }

    /// The peer `label` names: the connected one, else the label parsed (a
    /// transmit for a peer that just left, whose send will fail anyway);
    /// `None` when it is no peer id.
    fn peer(&self, label: &str) -> Option<PeerId> {
        match self.by_label.get(label) {
            Some(peer) => Some(*peer),
            None => label.parse().ok(),
        }
    }
}

impl<E: NetworkEngine + ?Sized> SyncPort<E> {
    /// A port onto `network`, taking its `events`.
    pub fn new(network: Arc<E>, events: PeerEvents) -> Self {
        Self { network: Some(network), events: Some(Source::Direct(events)), labels: PeerLabels::default(), carried: None }
    }

    /// A port onto `network` whose messages are decoded and checked with
    /// `verifier` (the replica's: [`pluresdb_core::Database::verifier`],
    /// whose results the replica trusts) on a thread of the port's own,
    /// in the order they came, ahead of the driver; except that while the
    /// driver waits in [`next`](Self::next) with nothing queued, the next
    /// event comes to it straight (see the module docs). The thread calls
    /// `idle` (if given) each time it runs out of messages, before it
    /// waits: the node gives back there what a burst freed on it. The
    /// thread ends when the network's handles or the port are gone.
    pub fn preparing(
        network: Arc<E>,
        events: PeerEvents,
        verifier: Option<Arc<dyn OpVerifier>>,
        idle: Option<fn()>,
    ) -> std::io::Result<Self> {
        let (ready, receiver) = tokio::sync::mpsc::unbounded_channel();
        let route = events.route_direct();
        std::thread::Builder::new().name("pluresdb-prepare".into()).spawn(move || prepare(events, &ready, verifier.as_deref(), idle))?;
        Ok(Self {
            network: Some(network),
            events: Some(Source::Prepared { ready: Some(receiver), route }),
            labels: PeerLabels::default(),
            carried: None,
        })
    }

    /// A port onto no network: [`next`](Self::next) only waits for the
    /// timer, and what the sync engine sends is dropped.
    pub fn offline() -> Self {
        Self { network: None, events: None, labels: PeerLabels::default(), carried: None }
    }

    /// Whether there is a network.
    pub fn is_online(&self) -> bool {
        self.network.is_some()
    }

    /// The network engine, if any.
    pub fn network(&self) -> Option<&Arc<E>> {
        self.network.as_ref()
    }

    /// Everything the sync engine has to send (for a driver that holds the
    /// engine behind a lock: take under the lock, [`send`](Self::send)
    /// after releasing it).
    pub fn take_transmits<S: Store>(sync: &mut DataSyncEngine<S>) -> Vec<Transmit> {
        std::iter::from_fn(|| sync.poll_transmit()).collect()
    }

    /// Sends `transmits`. A refused send (`PeerBusy`, peer gone) is logged
    /// and dropped: the sync engine resends whatever a peer does not
    /// acknowledge.
    pub async fn send(&self, transmits: Vec<Transmit>) {
        let Some(network) = &self.network else { return };
        for transmit in transmits {
            self.send_one(&**network, transmit).await;
        }
    }

    /// Sends everything the sync engine has to send (dropped offline).
    pub async fn flush<S: Store>(&self, sync: &mut DataSyncEngine<S>) {
        while let Some(transmit) = sync.poll_transmit() {
            if let Some(network) = &self.network {
                self.send_one(&**network, transmit).await;
            }
        }
    }

    async fn send_one(&self, network: &E, transmit: Transmit) {
        let Some(peer) = self.labels.peer(&transmit.peer) else {
            tracing::debug!(peer = %transmit.peer, "sync message for a label that is no peer id; dropped");
            return;
        };
        if let Err(err) = network.send_message(&peer, NetworkMessage::from(transmit)).await {
            tracing::debug!(%peer, error = %err, "sync message not sent; unacknowledged operations are resent");
        }
    }

    /// Waits for the next peer event, or until `deadline_ms` (the sync
    /// engine's `poll_timeout`; `IDLE_WAKE` (60 s) from now when `None`).
    /// Cancel-safe: dropped inside a `select!`, it loses no event.
    pub async fn next(&mut self, deadline_ms: Option<u64>) -> SyncWake {
        if let Some(event) = self.carried.take() {
            return SyncWake::Event(event);
        }
        let sleep = deadline_ms.map_or(IDLE_WAKE, |at| Duration::from_millis(at.saturating_sub(now_ms())));
        let Some(events) = self.events.as_mut() else {
            tokio::time::sleep(sleep).await;
            return SyncWake::Timer;
        };
        // Dropped when an event comes, the time is up, or the caller stops
        // waiting (the future is dropped): the port is then busy.
        let waiting = events.waiting();
        let received = tokio::select! {
            event = events.recv() => Some(event),
            () = tokio::time::sleep(sleep) => None,
        };
        drop(waiting);
        match received {
            Some(Some(event)) => SyncWake::Event(event),
            Some(None) => {
                self.events = None;
                SyncWake::Closed
            }
            None => SyncWake::Timer,
        }
    }

    /// Applies `first` and up to `MAX_EVENTS_PER_TURN` (256) events already
    /// queued behind it, until one gives the engine something to send;
    /// returns how many were applied. What an event produced goes out
    /// before the next is applied (the driver flushes between turns): an
    /// acknowledgement is what the sender's window waits for, and a turn
    /// over the four batches of a full window took as long as applying all
    /// of them, with nothing in flight meanwhile.
    ///
    /// A prepared batch of operations takes with it up to
    /// [`MAX_BATCHES_TOGETHER`] batches in all from the same peer queued
    /// right behind it, for the engine to apply in one commit where it can
    /// (`DataSyncEngine::handle_inbounds`): a receiver that falls behind
    /// then commits (and syncs) once for several batches.
    pub fn apply<S: Store>(&mut self, sync: &mut DataSyncEngine<S>, first: impl Into<PortEvent>) -> usize {
        let mut applied = self.apply_with_queued(sync, first.into());
        while applied <= MAX_EVENTS_PER_TURN && !sync.has_transmits() {
            let Some(event) = self.take_queued() else { break };
            applied += self.apply_with_queued(sync, event);
        }
        applied
    }

    /// The next event already queued, if any.
    fn take_queued(&mut self) -> Option<PortEvent> {
        self.carried.take().or_else(|| self.events.as_mut()?.try_recv())
    }

    /// Applies `event`, with the batches of its peer queued behind it when
    /// it is a prepared batch (see [`apply`](Self::apply)); returns how
    /// many events that took.
    fn apply_with_queued<S: Store>(&mut self, sync: &mut DataSyncEngine<S>, event: PortEvent) -> usize {
        let (peer_id, first, first_received) = match event.0 {
            PortEventKind::Prepared { peer_id, inbound, _received } if inbound.is_data() => (peer_id, inbound, _received),
            other => {
                apply(sync, &mut self.labels, PortEvent(other));
                return 1;
            }
        };
        let mut inbounds = vec![first];
        // Their room in the peer's share of the queue is held until they
        // are applied.
        let mut received = vec![first_received];
        while inbounds.len() < MAX_BATCHES_TOGETHER {
            let Some(next) = self.take_queued() else { break };
            match next.0 {
                PortEventKind::Prepared { peer_id: from, inbound, _received } if from == peer_id && inbound.is_data() => {
                    inbounds.push(inbound);
                    received.push(_received);
                }
                other => {
                    self.carried = Some(PortEvent(other));
                    break;
                }
            }
        }
        let count = inbounds.len();
        if let Err(err) = sync.handle_inbounds(&self.labels.label(&peer_id), inbounds, now_ms()) {
            tracing::debug!(peer = %peer_id, error = %err, "sync message refused");
        }
        drop(received);
        count
    }
}

struct DriverShared<S: Store> {
    sync: Mutex<DataSyncEngine<S>>,
    wake: Notify,
    stop: Notify,
}

/// Runs a `DataSyncEngine` over a network engine in a tokio task, with a
/// [`SyncPort`]; the node runtime's writer uses the same port inside its
/// own loop (group commit, clock correction, forks).
pub struct SyncDriver<S: Store> {
    shared: Arc<DriverShared<S>>,
    task: JoinHandle<()>,
}

impl<S: Store + Send + 'static> SyncDriver<S> {
    /// Starts `sync` (if it is not) and spawns the task that feeds it
    /// `events` and sends its output through `network`.
    pub fn spawn<E: NetworkEngine + ?Sized + 'static>(network: Arc<E>, mut sync: DataSyncEngine<S>, events: PeerEvents) -> Self {
        if !sync.is_active() {
            sync.start(now_ms());
        }
        let shared = Arc::new(DriverShared { sync: Mutex::new(sync), wake: Notify::new(), stop: Notify::new() });
        let task = tokio::spawn(drive(SyncPort::new(network, events), shared.clone()));
        Self { shared, task }
    }

    /// Runs `f` on the sync engine (with the current time), e.g. a local
    /// write, then lets the driver send what it produced.
    pub async fn with<R>(&self, f: impl FnOnce(&mut DataSyncEngine<S>, u64) -> R) -> R {
        let result = {
            let mut sync = self.shared.sync.lock().await;
            f(&mut sync, now_ms())
        };
        self.shared.wake.notify_one();
        result
    }

    /// Stops the task and hands back the sync engine.
    pub async fn stop(self) -> Option<DataSyncEngine<S>> {
        self.shared.stop.notify_one();
        let _ = self.task.await;
        Arc::try_unwrap(self.shared).ok().map(|shared| shared.sync.into_inner())
    }
}

async fn drive<E: NetworkEngine + ?Sized, S: Store + Send>(mut port: SyncPort<E>, shared: Arc<DriverShared<S>>) {
    loop {
        // The engine is locked only to take its output: `with` must not
        // wait for sends.
        let (transmits, deadline) = {
            let mut sync = shared.sync.lock().await;
            (SyncPort::<E>::take_transmits(&mut sync), sync.poll_timeout())
        };
        port.send(transmits).await;
        tokio::select! {
            wake = port.next(deadline) => match wake {
                SyncWake::Event(event) => {
                    let mut sync = shared.sync.lock().await;
                    port.apply(&mut sync, event);
                }
                SyncWake::Timer => shared.sync.lock().await.handle_timeout(now_ms()),
                SyncWake::Closed => break,
            },
            _ = shared.wake.notified() => {}
            _ = shared.stop.notified() => break,
        }
    }
}

/// Feeds one peer event to a sync engine (the contract above), naming the
/// peer by its label; refused messages are logged and counted by the
/// engine.
fn apply<S: Store>(sync: &mut DataSyncEngine<S>, labels: &mut PeerLabels, event: PortEvent) {
    let now = now_ms();
    let (peer_id, result) = match event.0 {
        PortEventKind::Peer(PeerEvent::Connected { peer_id, .. }) => return sync.peer_connected(labels.insert(peer_id), now),
        PortEventKind::Peer(PeerEvent::Disconnected { peer_id, .. }) => return sync.peer_disconnected(&labels.remove(&peer_id)),
        PortEventKind::Peer(PeerEvent::Message { peer_id, bytes }) => (peer_id, sync.handle_input(&labels.label(&peer_id), &bytes, now)),
        PortEventKind::Prepared { peer_id, inbound, _received } => (peer_id, sync.handle_inbound(&labels.label(&peer_id), inbound, now)),
    };
    if let Err(err) = result {
        tracing::debug!(peer = %peer_id, error = %err, "sync message refused");
    }
}

/// The preparing thread of [`SyncPort::preparing`]: messages decoded and
/// checked, every event passed on in order.
fn prepare(
    mut events: PeerEvents,
    ready: &tokio::sync::mpsc::UnboundedSender<PortEvent>,
    verifier: Option<&dyn OpVerifier>,
    idle: Option<fn()>,
) {
    loop {
        let event = match events.try_recv() {
            Some(event) => event,
            None => {
                if let Some(idle) = idle {
                    idle();
                }
                match events.blocking_recv() {
                    Some(event) => event,
                    None => break,
                }
            }
        };
        let event = match event {
            PeerEvent::Message { peer_id, bytes } => {
                let inbound = Inbound::prepare(&peer_id.to_string(), &bytes, verifier);
                PortEvent(PortEventKind::Prepared { peer_id, inbound, _received: bytes })
            }
            other => PortEvent::from(other),
        };
        if ready.send(event).is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Result;
    use crate::events::SyncHandle;
    use crate::peer::{PeerInfo, Transport};
    use crate::NetworkError;
    use bytes::Bytes;
    use pluresdb_sync::SyncConfig;

    /// A network engine that records what it is asked to send.
    #[derive(Default)]
    struct Recorder {
        sent: std::sync::Mutex<Vec<(PeerId, NetworkMessage)>>,
    }

    #[async_trait::async_trait]
    impl NetworkEngine for Recorder {
        async fn initialize(&mut self) -> Result<()> {
            Ok(())
        }
        async fn start(&mut self) -> Result<()> {
            Ok(())
        }
        async fn stop(&mut self) -> Result<()> {
            Ok(())
        }
        async fn send_message(&self, peer_id: &PeerId, message: NetworkMessage) -> Result<()> {
            self.sent.lock().unwrap().push((*peer_id, message));
            Ok(())
        }
        async fn broadcast_message(&self, _message: NetworkMessage) -> Result<()> {
            Ok(())
        }
        async fn connect_peer(&self, address: &str) -> Result<PeerId> {
            Err(NetworkError::Connect { address: address.to_owned(), reason: "a recorder dials no one".to_owned() })
        }
        async fn disconnect_peer(&self, _peer_id: &PeerId) -> Result<()> {
            Ok(())
        }
        async fn get_connected_peers(&self) -> Result<Vec<PeerInfo>> {
            Ok(Vec::new())
        }
        async fn is_peer_connected(&self, _peer_id: &PeerId) -> bool {
            false
        }
    }

    fn connected(peer: &str) -> PeerEvent {
        PeerEvent::Connected { peer_id: crate::test_peer(peer), address: "127.0.0.1:1".to_owned(), transport: Transport::Quic }
    }

    #[tokio::test]
    async fn a_port_hands_over_events_in_order_then_says_when_every_handle_is_gone() {
        let (handle, events) = SyncHandle::channel(16);
        let mut port = SyncPort::new(Arc::new(Recorder::default()), events);
        assert!(handle.deliver(connected("a")).await);
        assert!(handle.deliver(PeerEvent::Message { peer_id: crate::test_peer("a"), bytes: Bytes::from_static(b"x") }).await);
        drop(handle);
        let SyncWake::Event(first) = port.next(None).await else { panic!("an event") };
        assert!(matches!(first.peer_event(), Some(PeerEvent::Connected { .. })));
        let SyncWake::Event(second) = port.next(None).await else { panic!("an event") };
        assert!(matches!(second.peer_event(), Some(PeerEvent::Message { .. })));
        assert!(matches!(port.next(None).await, SyncWake::Closed));
        // From then on only the timer wakes it.
        assert!(matches!(port.next(Some(now_ms())).await, SyncWake::Timer));
    }

    /// A preparing port hands events over in the order they came, its
    /// messages decoded ahead (a message that is no sync message is refused
    /// and counted as one handed over raw is), and says when every handle
    /// is gone.
    #[tokio::test]
    async fn a_preparing_port_hands_over_events_in_order_with_messages_decoded_ahead() {
        let (handle, events) = SyncHandle::channel(16);
        let mut port = SyncPort::preparing(Arc::new(Recorder::default()), events, None, Some(count_idle)).unwrap();
        let mut sync = DataSyncEngine::new(SyncConfig::default());
        sync.start(now_ms());
        assert!(handle.deliver(connected("a")).await);
        assert!(handle.deliver(PeerEvent::Message { peer_id: crate::test_peer("a"), bytes: Bytes::from_static(b"x") }).await);
        assert!(handle.deliver(PeerEvent::Disconnected { peer_id: crate::test_peer("a"), reason: "bye".into() }).await);
        drop(handle);
        let mut received = Vec::new();
        for _ in 0..3 {
            let SyncWake::Event(event) = port.next(None).await else { panic!("an event") };
            received.push(event);
        }
        assert!(matches!(received[0].peer_event(), Some(PeerEvent::Connected { .. })));
        assert!(received[1].peer_event().is_none(), "the message was prepared: {:?}", received[1]);
        assert!(matches!(received[2].peer_event(), Some(PeerEvent::Disconnected { .. })));
        for event in received {
            port.apply(&mut sync, event);
        }
        let a = crate::test_peer("a").to_string();
        let peer = sync.status().peers.into_iter().find(|p| p.peer_id == a).expect("a's status");
        assert_eq!((peer.traffic.errors, peer.traffic.bytes_received, peer.connected), (1, 1, false), "the junk was refused and counted");
        assert!(matches!(port.next(None).await, SyncWake::Closed));
        assert!(IDLE_CALLS.load(std::sync::atomic::Ordering::Relaxed) >= 1, "the thread called its idle hook before it waited");
    }

    /// The payload of a message event, as it came or as it was prepared.
    fn payload(event: &PortEvent) -> (&[u8], bool) {
        match &event.0 {
            PortEventKind::Peer(PeerEvent::Message { bytes, .. }) => (bytes, false),
            PortEventKind::Prepared { _received, .. } => (_received, true),
            PortEventKind::Peer(other) => panic!("not a message: {other:?}"),
        }
    }

    /// While a preparing port waits with nothing pending, the next event
    /// comes straight (unprepared); those that come before the port took
    /// it, and while the port is at work, are prepared (a port that falls
    /// behind a stream of messages has them all prepared, not each one
    /// straight behind the last): the port takes them in the order they
    /// came.
    #[tokio::test]
    async fn a_waiting_preparing_port_takes_the_next_events_straight_in_order() {
        use std::future::Future;
        let (handle, events) = SyncHandle::channel(16);
        let mut port = SyncPort::preparing(Arc::new(Recorder::default()), events, None, None).unwrap();
        let message =
            |text: &'static str| PeerEvent::Message { peer_id: crate::test_peer("a"), bytes: Bytes::from_static(text.as_bytes()) };
        {
            let mut next = std::pin::pin!(port.next(None));
            let waker = std::task::Waker::noop();
            assert!(next.as_mut().poll(&mut std::task::Context::from_waker(waker)).is_pending());
            assert!(handle.deliver(message("one")).await);
        }
        // "one" is not taken yet: "two" is prepared, and taken after it.
        assert!(handle.deliver(message("two")).await);
        let mut received = Vec::new();
        for _ in 0..2 {
            let SyncWake::Event(event) = port.next(None).await else { panic!("an event") };
            received.push(event);
        }
        // At work, nothing pending: prepared.
        assert!(handle.deliver(message("three")).await);
        {
            let mut next = std::pin::pin!(port.next(None));
            let waker = std::task::Waker::noop();
            // Taken at once if the thread prepared it already; else waiting,
            // with "three" still queued.
            if let std::task::Poll::Ready(SyncWake::Event(event)) = next.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
                received.push(event);
            }
            assert!(handle.deliver(message("four")).await);
        }
        while received.len() < 4 {
            let SyncWake::Event(event) = port.next(None).await else { panic!("an event") };
            received.push(event);
        }
        let seen: Vec<(&[u8], bool)> = received.iter().map(payload).collect();
        assert_eq!(seen, [(&b"one"[..], false), (b"two", true), (b"three", true), (b"four", true)]);
        drop(handle);
        assert!(matches!(port.next(None).await, SyncWake::Closed));
    }

    static IDLE_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    fn count_idle() {
        IDLE_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    #[tokio::test]
    async fn one_turn_applies_a_bounded_burst_of_queued_events() {
        let (handle, events) = SyncHandle::channel(1_024);
        let mut port = SyncPort::new(Arc::new(Recorder::default()), events);
        let mut sync = DataSyncEngine::new(SyncConfig::default());
        assert!(handle.deliver(connected("a")).await);
        for _ in 0..300 {
            // Not a sync message: each is refused and counted.
            assert!(handle.deliver(PeerEvent::Message { peer_id: crate::test_peer("a"), bytes: Bytes::from_static(b"?") }).await);
        }
        let SyncWake::Event(first) = port.next(None).await else { panic!("an event") };
        assert_eq!(port.apply(&mut sync, first), MAX_EVENTS_PER_TURN + 1);
        let errors: u64 = sync.status().peers.iter().map(|peer| peer.traffic.errors).sum();
        assert_eq!(errors, MAX_EVENTS_PER_TURN as u64);
        let SyncWake::Event(next) = port.next(None).await else { panic!("the rest is still queued") };
        assert_eq!(port.apply(&mut sync, next), 300 - MAX_EVENTS_PER_TURN);
    }

    /// A receiver with a sender's window of batches queued applies one,
    /// and its acknowledgement goes out (the driver flushes between turns)
    /// before the next is applied: the sender refills its window meanwhile.
    #[tokio::test]
    async fn a_turn_ends_at_the_first_event_that_gives_the_engine_something_to_send() {
        use pluresdb_core::{OperationType, OperationWithMetadata};
        let now = now_ms();
        let config = SyncConfig { max_batch_size: 256, ..SyncConfig::default() };
        let (a, c) = (crate::test_peer("a"), crate::test_peer("c"));
        let engine = |id: &str| {
            let db = pluresdb_core::Database::open(pluresdb_core::MemoryStore::new(), id).unwrap();
            DataSyncEngine::with_database(config.clone(), db).unwrap()
        };
        let mut sender = engine(&a.to_string());
        sender.start(now);
        let ops = (0..3 * 256)
            .map(|i| {
                OperationWithMetadata::new(OperationType::CreateNode, format!("n{i}"), serde_json::json!({ "i": i }), sender.peer_id())
            })
            .collect();
        sender.write(ops, now).unwrap();
        let (handle, events) = SyncHandle::channel(64);
        let mut port = SyncPort::new(Arc::new(Recorder::default()), events);
        let mut receiver = engine(&c.to_string());
        receiver.start(now);
        // The receiver asks the sender for what it lacks.
        assert!(handle.deliver(PeerEvent::Connected { peer_id: a, address: "127.0.0.1:1".to_owned(), transport: Transport::Quic }).await);
        let SyncWake::Event(event) = port.next(None).await else { panic!("an event") };
        port.apply(&mut receiver, event);
        let requests = SyncPort::<Recorder>::take_transmits(&mut receiver);
        sender.peer_connected(&c.to_string(), now);
        for request in requests {
            sender.handle_input(&c.to_string(), &request.bytes, now).unwrap();
        }
        // The sender's batches are queued at the receiver at once.
        let mut batches = 0;
        while let Some(transmit) = sender.poll_transmit() {
            if matches!(pluresdb_sync::SyncMessage::decode("a", &transmit.bytes), Ok(pluresdb_sync::SyncMessage::DataSync { .. })) {
                batches += 1;
                assert!(handle.deliver(PeerEvent::Message { peer_id: a, bytes: transmit.bytes.into() }).await);
            }
        }
        assert_eq!(batches, 3);
        // One batch a turn, each acknowledged before the next is applied.
        for applied in 1..=3 {
            let SyncWake::Event(event) = port.next(None).await else { panic!("an event") };
            assert_eq!(port.apply(&mut receiver, event), 1, "turn {applied}");
            assert!(receiver.has_transmits());
            assert_eq!(receiver.database().version_vector().total(), 256 * applied);
            SyncPort::<Recorder>::take_transmits(&mut receiver);
        }
    }

    /// Prepared batches of one peer queued one behind the other are applied
    /// two at a time, in one commit with one acknowledgement; an event
    /// taken from the queue that does not join them is the next applied.
    #[tokio::test]
    async fn prepared_batches_queued_together_are_applied_two_at_a_time_and_what_follows_waits_its_turn() {
        use pluresdb_core::{OperationType, OperationWithMetadata};
        let now = now_ms();
        let config = SyncConfig { max_batch_size: 256, ..SyncConfig::default() };
        let (a, b, c) = (crate::test_peer("a"), crate::test_peer("b"), crate::test_peer("c"));
        let engine = |id: &str| {
            let db = pluresdb_core::Database::open(pluresdb_core::MemoryStore::new(), id).unwrap();
            let mut engine = DataSyncEngine::with_database(config.clone(), db).unwrap();
            engine.start(now);
            engine
        };
        let mut sender = engine(&a.to_string());
        let ops = (0..4 * 256)
            .map(|i| {
                OperationWithMetadata::new(OperationType::CreateNode, format!("n{i}"), serde_json::json!({ "i": i }), sender.peer_id())
            })
            .collect();
        sender.write(ops, now).unwrap();
        let mut receiver = engine(&c.to_string());
        // A preparing port whose queue the test fills itself.
        let (_handle, events) = SyncHandle::channel(64);
        let (queue, ready) = tokio::sync::mpsc::unbounded_channel();
        let source = Source::Prepared { ready: Some(ready), route: events.route_direct() };
        let mut port: SyncPort<Recorder> =
            SyncPort { network: Some(Arc::new(Recorder::default())), events: Some(source), labels: PeerLabels::default(), carried: None };
        let connect = |peer| PeerEvent::Connected { peer_id: peer, address: "127.0.0.1:1".to_owned(), transport: Transport::Quic };
        queue.send(PortEvent::from(connect(a))).unwrap();
        let SyncWake::Event(event) = port.next(None).await else { panic!("an event") };
        port.apply(&mut receiver, event);
        sender.peer_connected(&c.to_string(), now);
        for request in SyncPort::<Recorder>::take_transmits(&mut receiver) {
            sender.handle_input(&c.to_string(), &request.bytes, now).unwrap();
        }
        let mut batches = Vec::new();
        while let Some(transmit) = sender.poll_transmit() {
            if matches!(pluresdb_sync::SyncMessage::decode("a", &transmit.bytes), Ok(pluresdb_sync::SyncMessage::DataSync { .. })) {
                batches.push(transmit.bytes);
            }
        }
        assert_eq!(batches.len(), 4, "the sender's window");
        let prepared = |bytes: &Vec<u8>| {
            let inbound = Inbound::prepare(&a.to_string(), bytes, None);
            PortEvent(PortEventKind::Prepared { peer_id: a, inbound, _received: Bytes::from(bytes.clone()) })
        };
        // Two batches, another peer connecting, the last two batches.
        for event in
            [prepared(&batches[0]), prepared(&batches[1]), PortEvent::from(connect(b)), prepared(&batches[2]), prepared(&batches[3])]
        {
            queue.send(event).unwrap();
        }
        let acks = |receiver: &mut DataSyncEngine<pluresdb_core::MemoryStore>| {
            SyncPort::<Recorder>::take_transmits(receiver)
                .iter()
                .filter(|t| matches!(pluresdb_sync::SyncMessage::decode("c", &t.bytes), Ok(pluresdb_sync::SyncMessage::SyncAck { .. })))
                .count()
        };
        let held = |receiver: &DataSyncEngine<pluresdb_core::MemoryStore>| receiver.database().version_vector().total();
        let SyncWake::Event(event) = port.next(None).await else { panic!("an event") };
        assert_eq!(port.apply(&mut receiver, event), 2, "the first two batches in one turn");
        assert_eq!((held(&receiver), acks(&mut receiver)), (512, 1), "applied together, acknowledged once");
        // The connect that was taken to see whether it joined them comes next.
        let SyncWake::Event(event) = port.next(None).await else { panic!("an event") };
        assert!(matches!(event.peer_event(), Some(PeerEvent::Connected { peer_id, .. }) if *peer_id == b));
        // It gives the engine something to send (a request to b): its own turn.
        assert_eq!(port.apply(&mut receiver, event), 1);
        SyncPort::<Recorder>::take_transmits(&mut receiver);
        let SyncWake::Event(event) = port.next(None).await else { panic!("an event") };
        assert_eq!(port.apply(&mut receiver, event), 2);
        assert_eq!((held(&receiver), acks(&mut receiver)), (1_024, 1));
    }

    #[tokio::test]
    async fn transmits_go_to_their_peer_and_an_offline_port_drops_them() {
        let network = Arc::new(Recorder::default());
        let mut port = SyncPort::new(network.clone(), SyncHandle::channel(1).1);
        let mut sync = DataSyncEngine::new(SyncConfig::default());
        sync.start(now_ms());
        let a = crate::test_peer("a");
        port.apply(&mut sync, connected("a"));
        port.flush(&mut sync).await;
        let sent = network.sent.lock().unwrap().clone();
        assert!(!sent.is_empty() && sent.iter().all(|(peer, message)| *peer == a && message.kind() == crate::FrameKind::Sync), "{sent:?}");

        let offline = SyncPort::<Recorder>::offline();
        assert!(!offline.is_online());
        sync.peer_disconnected(&a.to_string());
        sync.peer_connected(&a.to_string(), now_ms());
        offline.flush(&mut sync).await;
        assert!(sync.poll_transmit().is_none());
        assert_eq!(network.sent.lock().unwrap().len(), sent.len());
    }

    #[tokio::test]
    async fn the_sync_engine_knows_a_peer_by_its_id_text_from_connect_to_disconnect() {
        let network = Arc::new(Recorder::default());
        let mut port = SyncPort::new(network.clone(), SyncHandle::channel(1).1);
        let mut sync = DataSyncEngine::new(SyncConfig::default());
        sync.start(now_ms());
        let (a, b) = (crate::test_peer("a"), crate::test_peer("b"));
        port.apply(&mut sync, connected("a"));
        port.apply(&mut sync, connected("b"));
        let labels: Vec<String> = sync.status().peers.iter().map(|peer| peer.peer_id.clone()).collect();
        assert_eq!(labels.len(), 2);
        assert!(labels.contains(&a.to_string()) && labels.contains(&b.to_string()), "{labels:?}");
        assert_eq!((port.labels.by_peer.len(), port.labels.by_label.len()), (2, 2));
        port.flush(&mut sync).await;
        let to: std::collections::BTreeSet<PeerId> = network.sent.lock().unwrap().iter().map(|(peer, _)| *peer).collect();
        assert_eq!(to, [a, b].into_iter().collect(), "each transmit goes to the peer its label names");

        port.apply(&mut sync, PeerEvent::Disconnected { peer_id: a, reason: "goodbye".to_owned() });
        assert!(sync.status().peers.iter().any(|peer| peer.peer_id == a.to_string() && !peer.connected));
        assert_eq!((port.labels.by_peer.len(), port.labels.by_label.len()), (1, 1), "a peer's label lives while it is connected");
        // A label that names no peer cannot be sent to.
        assert_eq!(port.labels.peer("a"), None);
        assert_eq!(port.labels.peer(&a.to_string()), Some(a));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_timer_a_port_wakes_after_the_idle_wake() {
        let mut port = SyncPort::<Recorder>::offline();
        let started = tokio::time::Instant::now();
        assert!(matches!(port.next(None).await, SyncWake::Timer));
        assert!(started.elapsed() >= IDLE_WAKE);
    }
}
