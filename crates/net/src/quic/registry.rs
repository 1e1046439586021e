//! What the QUIC engine's tasks share: the node's keys and settings, the
//! table of links (one per peer, duplicates settled), the dials it keeps
//! up, the connection and handshake budgets, and the counter `stop` waits
//! on.

use crate::admission::HandshakeBudget;
use crate::codec::Frame;
use crate::config::{NetworkConfig, ReceiveLimits};
use crate::events::SyncHandle;
use crate::link::silent_after;
use crate::peer::PeerManager;
use pluresdb_security::{AccessPolicy, Identity, PeerId};
use quinn::{Endpoint, TransportConfig};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, oneshot, watch, Notify};

/// This node's keys and TLS configuration, fixed at `initialize` (the
/// access policy may change later).
#[derive(Clone)]
pub(crate) struct Keys {
    pub(crate) identity: Identity,
    pub(crate) peer_id: PeerId,
    pub(crate) peer_id_text: String,
    pub(crate) policy: AccessPolicy,
    pub(super) server: quinn::ServerConfig,
    pub(super) transport: Arc<TransportConfig>,
}

/// What the builders set before `initialize`.
pub(super) struct Settings {
    pub(super) identity: Option<Identity>,
    pub(super) policy: Option<AccessPolicy>,
    pub(super) limits: ReceiveLimits,
}

pub(crate) struct Shared {
    pub(crate) config: NetworkConfig,
    pub(crate) peers: Arc<PeerManager>,
    pub(crate) sync: SyncHandle,
    pub(super) settings: Mutex<Settings>,
    pub(super) keys: Mutex<Option<Arc<Keys>>>,
    state: Mutex<State>,
    /// Woken whenever a link is registered or removed.
    pub(crate) links_changed: Notify,
    /// Whether each new link asks its peer for the peers it knows.
    pub(crate) ask_for_peers: AtomicBool,
}

pub(super) struct State {
    pub(super) running: Option<Running>,
    pub(super) links: HashMap<PeerId, LinkHandle>,
    /// This node's dials not yet links; they count against
    /// `max_connections`.
    pub(super) dialling: usize,
    /// Incoming connections not yet admitted (see [`crate::admission`]).
    pub(super) handshakes: HandshakeBudget,
    /// Aborts each incoming handshake in flight, by its budget slot.
    pub(super) evictions: HashMap<u64, oneshot::Sender<()>>,
    pub(super) next_id: u64,
    pub(super) dials: HashMap<u64, Dial>,
}

impl State {
    /// Stops redialling `peer` and closes its link with `reason`; returns
    /// whether there was a link and whether there was a dial.
    pub(super) fn disconnect(&mut self, peer: &PeerId, reason: &str) -> (bool, bool) {
        let mut dial_found = false;
        self.dials.retain(|_, dial| {
            let matches = dial.peer.as_ref() == Some(peer);
            if matches {
                let _ = dial.cancel.send(true);
                tracing::debug!(address = %dial.address, "stopped redialling");
            }
            dial_found |= matches;
            !matches
        });
        let link = self.links.get(peer);
        if let Some(link) = link {
            link.close(reason);
        }
        (link.is_some(), dial_found)
    }
}

/// The running engine: its endpoint and what its tasks watch.
#[derive(Clone)]
pub(crate) struct Running {
    pub(super) endpoint: Endpoint,
    pub(super) local_addr: SocketAddr,
    pub(super) shutdown: watch::Sender<bool>,
    pub(super) tasks: TaskCounter,
    pub(super) receive_limits: ReceiveLimits,
}

/// A peer this node dialled and keeps dialling.
pub(super) struct Dial {
    pub(super) address: String,
    pub(super) peer: Option<PeerId>,
    pub(super) cancel: watch::Sender<bool>,
}

/// A registered link, as the link table holds it: the queues its writers
/// read and a way to close it.
pub(crate) struct LinkHandle {
    /// Unique among this engine's links.
    pub(crate) id: u64,
    pub(crate) peer_id: PeerId,
    /// The peer id of the node that dialled this connection.
    pub(crate) dialler: PeerId,
    pub(crate) control: mpsc::Sender<Frame>,
    pub(crate) bulk: mpsc::Sender<Frame>,
    /// Whether the peer proved the network secret in the handshake, so a
    /// changed access policy can be checked against the links it admitted.
    pub(crate) proof_ok: bool,
    pub(super) closer: watch::Sender<Option<String>>,
}

impl LinkHandle {
    /// Asks the link's task to say goodbye with `reason` and close.
    pub(crate) fn close(&self, reason: &str) {
        let _ = self.closer.send(Some(reason.to_owned()));
    }
}

/// Counts running connection tasks, so `stop` can wait for them.
#[derive(Clone)]
pub(crate) struct TaskCounter(Arc<watch::Sender<usize>>);

pub(crate) struct TaskGuard(Arc<watch::Sender<usize>>);

impl TaskCounter {
    pub(super) fn new() -> Self {
        Self(Arc::new(watch::channel(0).0))
    }

    pub(crate) fn enter(&self) -> TaskGuard {
        self.0.send_modify(|n| *n += 1);
        TaskGuard(self.0.clone())
    }

    pub(super) async fn idle(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// What a connection in its handshake holds: one of this node's dials
/// (against `max_connections`) or a slot of the incoming handshake budget.
/// Released on drop.
pub(crate) struct Slot {
    shared: Arc<Shared>,
    kind: SlotKind,
}

#[derive(Clone, Copy)]
enum SlotKind {
    Dial,
    Incoming(u64),
}

impl Slot {
    /// The slot of incoming handshake `id` of the budget.
    pub(super) fn incoming(shared: Arc<Shared>, id: u64) -> Self {
        Self { shared, kind: SlotKind::Incoming(id) }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.shared.state();
        match self.kind {
            SlotKind::Dial => state.dialling = state.dialling.saturating_sub(1),
            SlotKind::Incoming(id) => {
                state.handshakes.release(id);
                state.evictions.remove(&id);
            }
        }
    }
}

/// What registering a new link did.
pub(crate) enum Registration {
    /// No other link to the peer existed.
    Fresh,
    /// It replaced an older link to the same peer, which is being closed.
    Replaced,
    /// Another link to the peer wins; this one must close.
    Duplicate,
    /// An accepted link to a new peer while the node is at
    /// `max_connections` (its dials took the room during the handshake).
    Full,
    /// The engine is stopping.
    Stopped,
}

impl Shared {
    pub(super) fn new(config: NetworkConfig, peers: Arc<PeerManager>, sync: SyncHandle) -> Self {
        let handshakes = HandshakeBudget::new(config.max_handshakes, config.max_handshakes_per_ip);
        Shared {
            config,
            peers,
            sync,
            settings: Mutex::new(Settings { identity: None, policy: None, limits: ReceiveLimits::default() }),
            keys: Mutex::new(None),
            state: Mutex::new(State {
                running: None,
                links: HashMap::new(),
                dialling: 0,
                handshakes,
                evictions: HashMap::new(),
                next_id: 0,
                dials: HashMap::new(),
            }),
            links_changed: Notify::new(),
            ask_for_peers: AtomicBool::new(false),
        }
    }

    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// A slot against `max_connections` for a dial, or `None` at the limit.
    /// Incoming handshakes have their own budget and never take these.
    pub(super) fn reserve_dial(shared: &Arc<Shared>) -> Option<Slot> {
        let mut state = shared.state();
        if state.links.len() + state.dialling >= shared.config.max_connections {
            return None;
        }
        state.dialling += 1;
        Some(Slot { shared: shared.clone(), kind: SlotKind::Dial })
    }

    /// Registers `link` for its peer, settling duplicates: of two links
    /// between the same nodes, the one dialled by the node with the smaller
    /// peer id wins (both ends decide alike); a link dialled by the same
    /// node as the existing one replaces it (the peer redialled, so the old
    /// one is stale); and so does any new link while the old one has heard
    /// nothing for [`silent_after`] (the peer moved or restarted and the
    /// old connection has not timed out yet; the peer has let go of it, or
    /// it would still be sending heartbeats). Peer ids compare by key bytes,
    /// which is their text order (docs/protocol.md says text order): every
    /// Ed25519 peer id is 52 base58 digits of one fixed-length number, and
    /// the base58 alphabet is in ASCII order.
    pub(crate) fn register(&self, link: LinkHandle) -> Registration {
        let silent = self.peers.get(&link.peer_id).is_some_and(|info| {
            let quiet = chrono::Utc::now().signed_duration_since(info.last_seen);
            quiet.to_std().is_ok_and(|quiet| quiet > silent_after(self.config.heartbeat_interval))
        });
        let mut state = self.state();
        if state.running.is_none() {
            return Registration::Stopped;
        }
        let accepted = link.dialler == link.peer_id;
        let registration = match state.links.get(&link.peer_id) {
            None if accepted && state.links.len() + state.dialling >= self.config.max_connections => return Registration::Full,
            None => Registration::Fresh,
            Some(old) if old.dialler == link.dialler || link.dialler < old.dialler || silent => {
                old.close("replaced by a newer connection");
                Registration::Replaced
            }
            Some(_) => return Registration::Duplicate,
        };
        state.links.insert(link.peer_id, link);
        drop(state);
        self.links_changed.notify_waiters();
        registration
    }

    /// Removes link `id` of `peer` if it is still the current one; returns
    /// whether it was.
    pub(crate) fn unregister(&self, peer: &PeerId, id: u64) -> bool {
        let mut state = self.state();
        let current = state.links.get(peer).is_some_and(|link| link.id == id);
        if current {
            state.links.remove(peer);
        }
        drop(state);
        self.links_changed.notify_waiters();
        current
    }

    pub(crate) fn next_link_id(&self) -> u64 {
        let mut state = self.state();
        state.next_id += 1;
        state.next_id
    }

    /// The node's keys, once initialized.
    pub(super) fn keys(&self) -> Option<Arc<Keys>> {
        lock(&self.keys).clone()
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent (plain inserts and
    // removals), so a panic elsewhere does not make it unusable.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
