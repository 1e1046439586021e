//! [`Libp2pNetworkEngine`]: the [`NetworkEngine`] over rust-libp2p.
//!
//! The swarm runs in a task of its own ([`crate::swarm`]); the engine
//! talks to it through a bounded command queue, and opens and accepts
//! `/pluresdb/sync/1` streams through `libp2p_stream`'s control, outside
//! the swarm task. Each sync stream runs the admission handshake
//! ([`crate::handshake`]) and, once admitted, becomes a [`crate::link`].

use crate::admission::HandshakeSlot;
use crate::behaviour::SYNC_PROTOCOL;
use crate::dht::{DhtPeer, DhtPeers};
use crate::handshake::{self, Role};
use crate::link::{self, Link, Opened};
use crate::relay::RelayAccess;
use crate::swarm::{self, Command};
use futures::{AsyncReadExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use pluresdb_net::admission::{Admission, HandshakeBudget, Source};
use pluresdb_net::link::Lane;
use pluresdb_net::{
    ErrorCode, Frame, NetworkConfig, NetworkEngine, NetworkError, NetworkMessage, PeerInfo, PeerManager, ReceiveLimits, Result, SyncHandle,
};
use pluresdb_security::{AccessPolicy, Identity, PeerId};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch, Notify};

/// The port the libp2p engine listens on by default: TCP and QUIC-v1 (UDP)
/// on 34570, WebSocket on TCP 34571. The QUIC engine has UDP 34569.
pub const DEFAULT_LIBP2P_PORT: u16 = 34570;

/// How long a peer that refused this node's sync stream (`access_denied`)
/// is not sent another unasked (by redials and DHT discovery) nor
/// redialled: long enough that a DHT node of another network is not
/// pestered, short enough that one given the secret meanwhile is found.
pub const REFUSED_FOR: Duration = Duration::from_secs(10 * 60);

/// Times a circuit through a relay is asked for before the dial fails:
/// the waits between them add up to 2.5 s, for a relay that admits this
/// node's link late (a loaded machine took longer than the 0.75 s of
/// three attempts once in the relay tests).
const CIRCUIT_ATTEMPTS: u32 = 5;

/// How often, by default, a peer reached only through relays is dialled
/// directly (see [`Libp2pNetworkEngine::with_direct_redial`]).
pub const DIRECT_REDIAL_INTERVAL: Duration = Duration::from_secs(60);
/// How many times a sync stream whose connection closed as it opened is
/// opened again while the peer stays connected (hole punching replaced
/// the relayed connection), and the wait before each (times the attempt).
const REOPEN_ATTEMPTS: u32 = 3;
const REOPEN_DELAY: Duration = Duration::from_millis(50);

/// The wait before asking for a circuit again, times the attempt number.
const CIRCUIT_RETRY_DELAY: Duration = Duration::from_millis(250);

/// Commands queued for the swarm task at most.
const COMMAND_QUEUE: usize = 256;

/// The longest the engine waits for its listeners to report their
/// addresses at start.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(5);

/// The first delay between DHT lookups; it doubles up to the discovery
/// interval.
pub const FIRST_DHT_INTERVAL: Duration = Duration::from_millis(500);

/// The libp2p engine. Cheap to clone: clones share one swarm and one set of
/// links.
///
/// ```no_run
/// # async fn demo() -> pluresdb_net::Result<()> {
/// use pluresdb_libp2p::Libp2pNetworkEngine;
/// use pluresdb_net::{NetworkConfig, NetworkEngine, PeerManager, SyncHandle};
/// use std::sync::Arc;
///
/// let (sync_engine, _events) = SyncHandle::channel(1024);
/// let mut engine = Libp2pNetworkEngine::new(NetworkConfig::default(), Arc::new(PeerManager::new()), sync_engine);
/// engine.start().await?;
/// println!("listening on {:?}", engine.listen_addresses());
/// let peer = engine.connect_peer("/ip4/192.168.1.100/tcp/34570").await?;
/// # let _ = peer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Libp2pNetworkEngine {
    shared: Arc<Shared>,
}

/// This node's keys, fixed at `initialize` (the access policy may change).
#[derive(Clone)]
pub(crate) struct Keys {
    pub(crate) identity: Identity,
    pub(crate) keypair: Keypair,
    pub(crate) peer_id: pluresdb_security::PeerId,
    pub(crate) libp2p_id: libp2p::PeerId,
    pub(crate) peer_id_text: String,
    pub(crate) policy: AccessPolicy,
}

struct Settings {
    identity: Option<Identity>,
    policy: Option<AccessPolicy>,
    limits: ReceiveLimits,
    listen: Option<Vec<Multiaddr>>,
    dht: Option<bool>,
    dht_interval: Option<Duration>,
    relay: Option<RelayAccess>,
    hole_punching: bool,
    direct_redial: Option<Duration>,
}

pub(crate) struct Shared {
    pub(crate) config: NetworkConfig,
    pub(crate) peers: Arc<PeerManager>,
    pub(crate) sync: SyncHandle,
    settings: Mutex<Settings>,
    keys: Mutex<Option<Arc<Keys>>>,
    state: Mutex<State>,
    pub(crate) view: Mutex<View>,
    shutdown: watch::Sender<bool>,
    /// Woken whenever a link is registered or removed, or an opening ends.
    links_changed: Notify,
    /// Held while a link's arrival or departure is reported (peer registry
    /// and sync events), so that a link ending and the next one starting
    /// are reported in the order they happened: a departure reported after
    /// the next arrival would leave the peer linked but listed, and known to
    /// the sync layer, as disconnected.
    pub(crate) link_reports: tokio::sync::Mutex<()>,
    /// Woken whenever the swarm task records a new connection.
    pub(crate) connections_changed: Notify,
    /// Incoming connections without a sync link (see [`crate::admission`]).
    pub(crate) unlinked: crate::admission::UnlinkedConnections,
}

struct State {
    running: Option<Running>,
    links: HashMap<PeerId, Link>,
    /// Peers this node is opening a sync stream to.
    opening: HashSet<PeerId>,
    /// Incoming sync streams in their handshake (see [`crate::admission`]).
    handshakes: HandshakeBudget,
    /// Aborts each incoming handshake in flight, by its budget slot.
    evictions: HashMap<u64, oneshot::Sender<()>>,
    next_id: u64,
}

#[derive(Clone)]
pub(crate) struct Running {
    pub(crate) commands: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
    tasks: TaskCounter,
    receive_limits: ReceiveLimits,
}

/// What the swarm task tells the rest of the engine.
#[derive(Default)]
pub(crate) struct View {
    /// The addresses the node listens on.
    pub(crate) listen: Vec<Multiaddr>,
    /// Each connected peer's connections, oldest first.
    pub(crate) connections: HashMap<libp2p::PeerId, Vec<OpenConnection>>,
    /// The latest ping round trip per peer.
    pub(crate) rtt: HashMap<libp2p::PeerId, Duration>,
    /// Peers found under the network's DHT key.
    pub(crate) dht: DhtPeers,
    /// Where each connected peer says it listens (identify), at most 8.
    pub(crate) identified: HashMap<libp2p::PeerId, Vec<Multiaddr>>,
    /// Peers that refused this node's sync stream (`access_denied`), and
    /// when.
    pub(crate) refused: HashMap<libp2p::PeerId, Instant>,
    /// NAT traversal: reachability, relays, upgrades.
    pub(crate) nat: NatView,
}

/// What the engine knows of its reachability and its relays.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct NatView {
    /// AutoNAT's verdict: `unknown`, `public` or `private`.
    pub reachability: Reachability,
    /// Relays this node holds a reservation on now.
    pub reserved_on: Vec<String>,
    /// Relayed connections turned into direct ones (by DCUtR or a direct
    /// dial while relayed).
    pub upgrades: u64,
    /// Hole punches that failed (DCUtR gave up on a relayed connection).
    pub upgrade_failures: u64,
    /// Reservations the relay server of this node accepted (new ones,
    /// not renewals) and refused.
    pub reservations_accepted: u64,
    /// Reservations refused (limits, or not a member).
    pub reservations_denied: u64,
    /// Circuits the relay server refused (limits, not a member, or no
    /// reservation of the destination).
    pub circuits_denied: u64,
}

/// Whether this node is reachable from outside, as AutoNAT found.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reachability {
    /// Not known yet (no probe answered).
    #[default]
    Unknown,
    /// A peer dialled this node back.
    Public,
    /// Peers could not dial this node back: it is behind a NAT or a
    /// firewall.
    Private,
}

impl Reachability {
    /// `unknown`, `public` or `private`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reachability::Unknown => "unknown",
            Reachability::Public => "public",
            Reachability::Private => "private",
        }
    }
}

impl State {
    /// Whether a sync link to `peer` fits: links and this node's own
    /// openings are under `max_connections`, or `peer` already has one of
    /// them (a replacement or a simultaneous open takes no more room).
    fn has_sync_room(&self, peer: &PeerId, max_connections: usize) -> bool {
        self.links.contains_key(peer) || self.opening.contains(peer) || self.links.len() + self.opening.len() < max_connections
    }
}

/// A connection as the swarm task reports it.
pub(crate) struct OpenConnection {
    pub(crate) id: libp2p::swarm::ConnectionId,
    /// The remote address (`/p2p/<id>` alone for an incoming circuit).
    pub(crate) remote: Multiaddr,
    /// What its incoming sync handshakes are charged to.
    pub(crate) source: Source,
}

/// Counts running tasks, so `stop` can wait for them.
#[derive(Clone)]
pub(crate) struct TaskCounter(Arc<watch::Sender<usize>>);

pub(crate) struct TaskGuard(Arc<watch::Sender<usize>>);

impl TaskCounter {
    fn new() -> Self {
        Self(Arc::new(watch::channel(0).0))
    }

    pub(crate) fn enter(&self) -> TaskGuard {
        self.0.send_modify(|n| *n += 1);
        TaskGuard(self.0.clone())
    }

    async fn idle(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
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
    /// A link the peer opened while sync links are at `max_connections`.
    Full,
    /// The engine is stopping.
    Stopped,
}

/// Resolves once `shutdown` says stop (or its engine is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Locks a mutex, taking over a poisoned one (every update is a single
/// insert, removal or store, so the data stays consistent).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub(crate) fn keys(&self) -> Option<Arc<Keys>> {
        lock(&self.keys).clone()
    }

    pub(crate) fn running(&self) -> Result<Running> {
        self.state().running.clone().ok_or(NetworkError::NotRunning)
    }

    pub(crate) fn next_link_id(&self) -> u64 {
        let mut state = self.state();
        state.next_id += 1;
        state.next_id
    }

    pub(crate) fn receive_limits(&self) -> ReceiveLimits {
        self.state().running.as_ref().map(|running| running.receive_limits).unwrap_or_default()
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// The latest ping round trip to `peer`.
    pub(crate) fn rtt_of(&self, peer: &libp2p::PeerId) -> Option<Duration> {
        lock(&self.view).rtt.get(peer).copied()
    }

    /// Registers `link` as the link to its peer. A second link to a peer
    /// is settled alike on both ends: one opened by the same node as the
    /// existing one replaces it (the opener came back: the old one is
    /// stale); otherwise the one opened by the node with the smaller peer
    /// id stays (key byte order, which is their text order: see the QUIC
    /// engine's registry).
    ///
    /// A link the peer opened to a peer not linked yet is refused
    /// ([`Registration::Full`]) while links and this node's own openings
    /// are at `max_connections`.
    pub(crate) fn register(&self, link: Link) -> Registration {
        let mut state = self.state();
        if state.running.is_none() {
            return Registration::Stopped;
        }
        let opened_by_peer = link.opener == link.peer_id;
        let registration = match state.links.get(&link.peer_id) {
            None if opened_by_peer && !state.has_sync_room(&link.peer_id, self.config.max_connections) => return Registration::Full,
            None => Registration::Fresh,
            Some(existing) if existing.opener == link.opener || link.opener < existing.opener => {
                existing.close("replaced by a newer connection");
                Registration::Replaced
            }
            Some(_) => return Registration::Duplicate,
        };
        if let Ok(peer) = crate::identity::to_libp2p(&link.peer_id) {
            self.unlinked.linked(peer);
        }
        state.links.insert(link.peer_id, link);
        drop(state);
        self.links_changed.notify_waiters();
        registration
    }

    /// Removes the link `id` of `peer` if it is still the registered one;
    /// returns whether it was.
    pub(crate) fn unregister(&self, peer: &PeerId, id: u64) -> bool {
        let mut state = self.state();
        let current = state.links.get(peer).is_some_and(|link| link.id == id);
        if current {
            state.links.remove(peer);
            if let Ok(peer) = crate::identity::to_libp2p(peer) {
                self.unlinked.unlinked(&peer);
            }
        }
        drop(state);
        self.links_changed.notify_waiters();
        current
    }

    fn is_linked(&self, peer: &PeerId) -> bool {
        self.state().links.contains_key(peer)
    }

    /// Whether `peer` (libp2p's form) is linked; a peer whose id is no
    /// Ed25519 key never is.
    pub(crate) fn is_linked_peer(&self, peer: &libp2p::PeerId) -> bool {
        crate::identity::from_libp2p(peer).is_some_and(|peer| self.is_linked(&peer))
    }

    pub(crate) fn has_links(&self) -> bool {
        !self.state().links.is_empty()
    }

    /// The remote address of the newest connection to `peer`, waiting (at
    /// most `wait`) for the swarm task to record one: a stream may reach
    /// the engine before the event that reports its connection.
    pub(crate) async fn address_of_connected(&self, peer: &libp2p::PeerId, wait: Duration) -> String {
        self.connection_of(peer, wait).await.map(|(address, _)| address).unwrap_or_default()
    }

    /// The remote address and [`Source`] of the newest connection to
    /// `peer`, waiting as [`address_of_connected`](Self::address_of_connected)
    /// does; `None` if none was recorded by then. (`libp2p_stream` does
    /// not say which connection a stream came on; a peer has at most two.)
    pub(crate) async fn connection_of(&self, peer: &libp2p::PeerId, wait: Duration) -> Option<(String, Source)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.connections_changed.notified();
            let newest =
                lock(&self.view).connections.get(peer).and_then(|list| list.last()).map(|open| (open.remote.to_string(), open.source));
            if newest.is_some() || tokio::time::timeout_at(deadline, notified).await.is_err() {
                return newest;
            }
        }
    }

    /// The remote address of the newest connection to `peer`.
    pub(crate) fn address_of(&self, peer: &libp2p::PeerId) -> String {
        lock(&self.view).connections.get(peer).and_then(|list| list.last()).map(|open| open.remote.to_string()).unwrap_or_default()
    }

    /// Takes a slot of the handshake budget for a sync stream from
    /// `source`, evicting an older handshake if the budget says so.
    fn admit_handshake(self: &Arc<Self>, source: Source) -> std::result::Result<HandshakeSlot, String> {
        let mut state = self.state();
        // The connection is established (TCP or QUIC, then Noise): its
        // address is proven, so the budget never asks for a Retry.
        match state.handshakes.admit(source, true, true) {
            Admission::Accept { id, evict } => {
                if let Some(cancel) = evict.and_then(|victim| state.evictions.remove(&victim)) {
                    let _ = cancel.send(());
                }
                let (cancel, evicted) = oneshot::channel();
                state.evictions.insert(id, cancel);
                Ok(HandshakeSlot::new(self.clone(), id, evicted))
            }
            Admission::Refuse(reason) => {
                Err(format!("{reason} (limit {}, {} per address)", self.config.max_handshakes, self.config.max_handshakes_per_ip))
            }
            Admission::Retry => Err(format!("too many handshakes in flight (limit {})", self.config.max_handshakes)),
        }
    }

    /// Gives back handshake slot `id` (its handshake ended, it was
    /// evicted, or its peer was admitted).
    pub(crate) fn release_handshake(&self, id: u64) {
        let mut state = self.state();
        state.handshakes.release(id);
        state.evictions.remove(&id);
    }

    /// This node's listen addresses as a `hello` carries them.
    pub(crate) fn hello_addresses(&self) -> Vec<String> {
        lock(&self.view).listen.iter().take(32).map(Multiaddr::to_string).collect()
    }

    /// Opens a sync stream to `peer` (connected, or dialled by
    /// `libp2p_stream` from known addresses), runs the handshake as its
    /// initiator and starts the link. Returns once the peer is linked
    /// (by this stream or by one it opened at the same time).
    pub(crate) async fn open_link(self: &Arc<Self>, peer: libp2p::PeerId) -> Result<PeerId> {
        let Some(remote) = crate::identity::from_libp2p(&peer) else {
            let address = self.address_of(&peer);
            return Err(NetworkError::Handshake { peer: peer.to_string(), address, reason: "not an Ed25519 peer".to_owned() });
        };
        // One opening per peer at a time; a second caller waits for it.
        loop {
            let notified = self.links_changed.notified();
            {
                let mut state = self.state();
                if state.links.contains_key(&remote) {
                    return Ok(remote);
                }
                if state.running.is_none() {
                    return Err(NetworkError::NotRunning);
                }
                if !state.has_sync_room(&remote, self.config.max_connections) {
                    return Err(NetworkError::TooManyConnections { limit: self.config.max_connections });
                }
                if state.opening.insert(remote) {
                    break;
                }
            }
            notified.await;
        }
        let mut result = self.open_link_once(peer).await;
        let mut reopened = 0;
        while matches!(result, Err(NetworkError::Connect { .. } | NetworkError::ConnectionLost { .. })) {
            // The connection the stream was opened on closed under the
            // handshake while another stays: a relayed one replaced by a
            // direct one when hole punching finished first (the stream may
            // also land on the closing one until the swarm reports it
            // closed). The peer may have linked over the direct one
            // meanwhile; if not, the stream is opened again.
            if self.state().links.contains_key(&remote) {
                result = Ok(remote);
                break;
            }
            if reopened == REOPEN_ATTEMPTS || !lock(&self.view).connections.contains_key(&peer) {
                break;
            }
            reopened += 1;
            tracing::debug!(%peer, attempt = reopened, "the sync stream's connection closed as it opened; opening it on another");
            tokio::time::sleep(REOPEN_DELAY * reopened).await;
            result = self.open_link_once(peer).await;
        }
        let denied =
            matches!(&result, Err(NetworkError::Refused { code: ErrorCode::AccessDenied, .. }) | Err(NetworkError::AccessDenied(_)));
        {
            let mut view = lock(&self.view);
            if denied {
                // A DHT node of another network, most likely (a bootstrap):
                // it stays a DHT neighbour, not a sync peer.
                if view.refused.len() >= crate::dht::MAX_DHT_PEERS {
                    view.refused.retain(|_, at| at.elapsed() < REFUSED_FOR);
                }
                view.refused.insert(peer, Instant::now());
            } else if result.is_ok() {
                view.refused.remove(&peer);
            }
        }
        self.state().opening.remove(&remote);
        self.links_changed.notify_waiters();
        result
    }

    async fn open_link_once(self: &Arc<Self>, peer: libp2p::PeerId) -> Result<PeerId> {
        let peer_text = peer.to_string();
        let running = self.running()?;
        let timeout = self.config.handshake_timeout;
        let mut control = running.control.clone();
        let stream = match tokio::time::timeout(timeout, control.open_stream(peer, SYNC_PROTOCOL)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                return Err(NetworkError::Connect { address: self.address_of(&peer), reason: format!("{peer_text}: {err}") });
            }
            Err(_) => return Err(NetworkError::HandshakeTimeout { address: self.address_of(&peer), after: timeout }),
        };
        let opened = Opened { peer, address: self.address_of(&peer), role: Role::Initiator, stream, slot: None };
        let (admitted_tx, admitted_rx) = oneshot::channel();
        let guard = running.tasks.enter();
        let shared = self.clone();
        tokio::spawn(async move {
            link::run(shared, opened, Some(admitted_tx)).await;
            drop(guard);
        });
        // The peer may link over another stream while this one is in its
        // handshake: both ends open one again when hole punching replaces
        // a relayed connection, and a stream on the closed relayed
        // connection may hear nothing until its handshake deadline. Either
        // way the peer is linked, which is what the caller asked for.
        let remote = crate::identity::from_libp2p(&peer);
        tokio::select! {
            admitted = admitted_rx => match admitted {
                Ok(result) => result,
                Err(_) => Err(NetworkError::ConnectionLost { peer: peer_text, reason: "the link closed as it opened".to_owned() }),
            },
            linked = self.linked(remote) => Ok(linked),
        }
    }

    /// Waits until `peer` has a registered link (forever for `None`).
    async fn linked(&self, peer: Option<PeerId>) -> PeerId {
        let Some(peer) = peer else { return std::future::pending().await };
        loop {
            // Created before the check, so a link registered in between
            // still wakes it.
            let notified = self.links_changed.notified();
            if self.state().links.contains_key(&peer) {
                return peer;
            }
            notified.await;
        }
    }

    /// Whether `peer` refused this node's sync stream within
    /// [`REFUSED_FOR`].
    pub(crate) fn refused_recently(&self, peer: &libp2p::PeerId) -> bool {
        lock(&self.view).refused.get(peer).is_some_and(|at| at.elapsed() < REFUSED_FOR)
    }

    /// Opens the sync link to `peer` again once the current one has ended
    /// (waiting at most `wait` for that): its connection through a relay
    /// closed while a direct one stays, and the link may have run over the
    /// relayed one. If the link is still up after `wait`, it ran over the
    /// direct connection and nothing is done. Both ends do this; the link
    /// table settles the two streams to one.
    pub(crate) fn spawn_relink(self: &Arc<Self>, peer: libp2p::PeerId, wait: Duration) {
        let Ok(running) = self.running() else { return };
        let guard = running.tasks.enter();
        let shared = self.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + wait;
            let mut shutdown = shared.shutdown_signal();
            loop {
                let notified = shared.links_changed.notified();
                if !shared.is_linked_peer(&peer) {
                    break;
                }
                tokio::select! {
                    timed_out = tokio::time::timeout_at(deadline, notified) => {
                        if timed_out.is_err() {
                            drop(guard);
                            return;
                        }
                    }
                    () = stopped(&mut shutdown) => {
                        drop(guard);
                        return;
                    }
                }
            }
            if let Err(err) = shared.open_link(peer).await {
                tracing::info!(%peer, error = %err, "no sync link over the direct connection");
            }
            drop(guard);
        });
    }

    /// Starts opening a sync stream to `peer` in the background, unless it
    /// is linked or refused this node recently (`connect_peer` still
    /// tries).
    pub(crate) fn spawn_open_link(self: &Arc<Self>, peer: libp2p::PeerId) {
        let Ok(running) = self.running() else { return };
        if self.is_linked_peer(&peer) || self.refused_recently(&peer) {
            return;
        }
        let guard = running.tasks.enter();
        let shared = self.clone();
        tokio::spawn(async move {
            if let Err(err) = shared.open_link(peer).await {
                tracing::info!(%peer, error = %err, "no sync link over libp2p");
            }
            drop(guard);
        });
    }
}

/// Accepts `/pluresdb/sync/1` streams until the engine stops; each runs
/// its handshake in its own task, within the handshake budget (see
/// [`crate::admission`]).
async fn accept_streams(shared: Arc<Shared>, mut incoming: libp2p_stream::IncomingStreams, running: Running, _guard: TaskGuard) {
    let mut shutdown = shared.shutdown_signal();
    loop {
        let (peer, stream) = tokio::select! {
            next = incoming.next() => match next {
                Some(next) => next,
                None => break,
            },
            () = crate::engine::stopped(&mut shutdown) => break,
        };
        let guard = running.tasks.enter();
        let shared = shared.clone();
        tokio::spawn(async move {
            accept_stream(shared, peer, stream).await;
            drop(guard);
        });
    }
}

/// Runs one incoming sync stream: refused at once with
/// `too_many_connections` if the handshake budget has no room for it,
/// else its handshake in its budget slot and, once admitted, its link.
async fn accept_stream(shared: Arc<Shared>, peer: libp2p::PeerId, stream: libp2p::Stream) {
    // The stream may come before the event that reports its connection.
    let (address, source) = shared.connection_of(&peer, handshake::LINGER).await.unwrap_or((String::new(), Source::Unaddressed));
    // A peer whose id is no Ed25519 key takes no room: its handshake
    // fails at once (see `link::drive`).
    let room =
        crate::identity::from_libp2p(&peer).is_none_or(|remote| shared.state().has_sync_room(&remote, shared.config.max_connections));
    if !room {
        let message = format!("too many connections (limit {})", shared.config.max_connections);
        tracing::debug!(%peer, %address, "{message}; refusing a sync stream");
        refuse(stream, ErrorCode::TooManyConnections, &message).await;
        return;
    }
    let slot = match shared.admit_handshake(source) {
        Ok(slot) => slot,
        Err(message) => {
            tracing::debug!(%peer, %address, "{message}; refusing a sync stream");
            refuse(stream, ErrorCode::TooManyConnections, &message).await;
            return;
        }
    };
    let opened = Opened { peer, address, role: Role::Responder, stream, slot: Some(slot) };
    link::run(shared, opened, None).await;
}

/// Sends `error {code, message}`, closes the writer and reads on (at most
/// [`handshake::LINGER`]) so the peer reads it.
async fn refuse(stream: libp2p::Stream, code: ErrorCode, message: &str) {
    use futures::AsyncWriteExt;
    let (mut reader, mut writer) = stream.split();
    let frame = crate::frames::error_frame(code, message);
    let _ = tokio::time::timeout(handshake::LINGER, crate::frames::write_frame(&mut writer, &frame)).await;
    let _ = tokio::time::timeout(handshake::LINGER, writer.close()).await;
    // Reading on until the peer closes (at most LINGER) lets it read why:
    // dropping the reader first would stop its writes (QUIC's
    // STOP_SENDING), which it may see before the error frame.
    let mut chunk = [0u8; 1024];
    let drain = async { while matches!(reader.read(&mut chunk).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(handshake::LINGER, drain).await;
}

impl Libp2pNetworkEngine {
    /// An engine with `config` that reports peers to `peer_manager` and
    /// delivers peer events through `sync_engine`. It listens on
    /// [`with_listen_addresses`](Self::with_listen_addresses), or by
    /// default on `config.bind_address` with TCP and QUIC-v1 on
    /// [`DEFAULT_LIBP2P_PORT`] and WebSocket on the next port (all on
    /// ports the OS picks when `config.port` is 0). Bootstrap nodes are
    /// the entries of `config.bootstrap_nodes` that are multiaddrs.
    pub fn new(config: NetworkConfig, peer_manager: Arc<PeerManager>, sync_engine: SyncHandle) -> Self {
        let handshakes = HandshakeBudget::new(config.max_handshakes, config.max_handshakes_per_ip);
        let unlinked = crate::admission::UnlinkedConnections::new(config.max_connections, config.max_handshakes_per_ip);
        let shared = Shared {
            config,
            peers: peer_manager,
            sync: sync_engine,
            settings: Mutex::new(Settings {
                identity: None,
                policy: None,
                limits: ReceiveLimits::default(),
                listen: None,
                dht: None,
                dht_interval: None,
                relay: None,
                hole_punching: true,
                direct_redial: Some(DIRECT_REDIAL_INTERVAL),
            }),
            keys: Mutex::new(None),
            state: Mutex::new(State {
                running: None,
                links: HashMap::new(),
                opening: HashSet::new(),
                handshakes,
                evictions: HashMap::new(),
                next_id: 0,
            }),
            view: Mutex::new(View::default()),
            shutdown: watch::channel(false).0,
            links_changed: Notify::new(),
            link_reports: tokio::sync::Mutex::new(()),
            unlinked,
            connections_changed: Notify::new(),
        };
        Self { shared: Arc::new(shared) }
    }

    /// Uses `identity` as this node's key; its peer id names the node on
    /// every engine. Without it, `initialize` generates one.
    pub fn with_identity(self, identity: Identity) -> Self {
        lock(&self.shared.settings).identity = Some(identity);
        self
    }

    /// Admits peers to sync by `policy`. Without it, `initialize` creates
    /// a fresh network secret (so the node syncs with no one until given
    /// the secret).
    pub fn with_access_policy(self, policy: AccessPolicy) -> Self {
        lock(&self.shared.settings).policy = Some(policy);
        self
    }

    /// Applies `limits` to what each peer may send on its sync stream.
    pub fn with_receive_limits(self, limits: ReceiveLimits) -> Self {
        lock(&self.shared.settings).limits = limits;
        self
    }

    /// Listens on `addresses` (`/ip4/0.0.0.0/tcp/34570`,
    /// `/ip4/0.0.0.0/udp/34570/quic-v1`, `/ip4/0.0.0.0/tcp/34571/ws`, ...)
    /// instead of the defaults.
    pub fn with_listen_addresses(self, addresses: Vec<Multiaddr>) -> Self {
        lock(&self.shared.settings).listen = Some(addresses);
        self
    }

    /// Takes part in the Kademlia DHT and finds the network's nodes there
    /// (see [`crate::dht`]), or neither. Default: take part when
    /// `config.enable_dht` or `config.discovery.enable_dht`, look for the
    /// network's nodes when `config.discovery.enable_dht`.
    pub fn with_dht(self, enabled: bool) -> Self {
        lock(&self.shared.settings).dht = Some(enabled);
        self
    }

    /// The longest time between DHT lookups (they start at
    /// [`FIRST_DHT_INTERVAL`] and double up to it). Default:
    /// `config.discovery.discovery_interval`.
    pub fn with_dht_interval(self, interval: Duration) -> Self {
        lock(&self.shared.settings).dht_interval = Some(interval);
        self
    }

    /// Serves as a circuit relay (v2) for `access` (see [`crate::relay`]
    /// for the limits). Only for a node others can reach: one with a
    /// public address, or on the same network as its users.
    pub fn with_relay_server(self, access: RelayAccess) -> Self {
        lock(&self.shared.settings).relay = Some(access);
        self
    }

    /// Tries (or not) to turn relayed connections into direct ones with
    /// DCUtR hole punching. Default: on.
    pub fn with_hole_punching(self, enabled: bool) -> Self {
        lock(&self.shared.settings).hole_punching = enabled;
        self
    }

    /// How often a peer reached only through relays is dialled at the
    /// direct addresses it listens on, to upgrade the connection when a NAT
    /// that stopped hole punching lets a direct one through later (`None`:
    /// never). Default: [`DIRECT_REDIAL_INTERVAL`].
    pub fn with_direct_redial(self, every: Option<Duration>) -> Self {
        lock(&self.shared.settings).direct_redial = every;
        self
    }

    /// Asks the relay at `relay_address` (a multiaddr ending in
    /// `/p2p/<relay>`) for a reservation and listens through it once it is
    /// granted, whether or not this node is linked with the relay (the
    /// engine reserves on linked relays by itself). Returns once the
    /// request is under way; [`nat`](Self::nat) tells when it is granted.
    pub async fn reserve_on(&self, relay_address: &str) -> Result<()> {
        let invalid = |reason: &str| NetworkError::InvalidAddress { address: relay_address.to_owned(), reason: reason.to_owned() };
        let address: Multiaddr = relay_address.parse().map_err(|err| invalid(&format!("not a multiaddr: {err}")))?;
        let Some(Protocol::P2p(relay)) = address.iter().last() else {
            return Err(invalid("does not end in /p2p/<relay peer id>"));
        };
        let running = self.shared.running()?;
        let (reply, answer) = oneshot::channel();
        let address = crate::relay::reservation_address(address, relay);
        running.commands.send(Command::Reserve { relay, address, reply }).await.map_err(|_| NetworkError::NotRunning)?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(NetworkError::Connect { address: relay_address.to_owned(), reason }),
            Err(_) => Err(NetworkError::NotRunning),
        }
    }

    /// Reachability, relays and upgrade counts (see [`NatView`]).
    pub fn nat(&self) -> NatView {
        lock(&self.shared.view).nat.clone()
    }

    /// The addresses through relays this node listens on (each ends in
    /// `/p2p-circuit`; [`dial_addresses`](Self::dial_addresses) has them
    /// with this node's id after).
    pub fn relayed_addresses(&self) -> Vec<Multiaddr> {
        self.listen_addresses().into_iter().filter(crate::relay::is_relayed).collect()
    }

    /// Whether the connections to `peer` (text form) go through a relay:
    /// `Some(relay)` if every one of them does, `None` if one is direct
    /// or there is none.
    pub fn relayed_via(&self, peer: &str) -> Option<String> {
        let peer: libp2p::PeerId = peer.parse().ok()?;
        let view = lock(&self.shared.view);
        let connections = view.connections.get(&peer)?;
        if connections.iter().any(|open| !crate::relay::is_relayed(&open.remote)) {
            return None;
        }
        connections.iter().find_map(|open| crate::relay::relay_of(&open.remote)).map(|relay| relay.to_string())
    }

    /// This node's peer id, once initialized.
    pub fn peer_id(&self) -> Option<PeerId> {
        self.shared.keys().map(|keys| keys.peer_id)
    }

    /// This node's identity, once initialized.
    pub fn identity(&self) -> Option<Identity> {
        self.shared.keys().map(|keys| keys.identity.clone())
    }

    /// The access policy in force, once initialized.
    pub fn access_policy(&self) -> Option<AccessPolicy> {
        self.shared.keys().map(|keys| keys.policy.clone())
    }

    /// The peer registry this engine reports to.
    pub fn peer_manager(&self) -> &Arc<PeerManager> {
        &self.shared.peers
    }

    /// The addresses the node listens on, while running (with the ports
    /// the OS chose). Dial one with `/p2p/<peer id>` after it to insist on
    /// this node: see [`dial_addresses`](Self::dial_addresses).
    pub fn listen_addresses(&self) -> Vec<Multiaddr> {
        lock(&self.shared.view).listen.clone()
    }

    /// [`listen_addresses`](Self::listen_addresses), each with
    /// `/p2p/<peer id>` appended: what a peer or a ticket dials.
    pub fn dial_addresses(&self) -> Vec<Multiaddr> {
        let Some(keys) = self.shared.keys() else { return Vec::new() };
        self.listen_addresses()
            .into_iter()
            .map(|address| match address.iter().last() {
                Some(Protocol::P2p(peer)) if peer == keys.libp2p_id => address,
                _ => address.with(Protocol::P2p(keys.libp2p_id)),
            })
            .collect()
    }

    /// The peers found under the network's DHT key (source `dht`), newest
    /// address first. The engine dials them itself.
    pub fn dht_peers(&self) -> Vec<DhtPeer> {
        lock(&self.shared.view).dht.list(Instant::now())
    }

    /// How many incoming sync streams are in their handshake (at most
    /// `config.max_handshakes`).
    pub fn handshakes_in_flight(&self) -> usize {
        self.shared.state().handshakes.in_flight()
    }

    /// How many incoming connections without a sync link are open (DHT
    /// neighbours, peers before their sync handshake; at most
    /// `config.max_connections`, `config.max_handshakes_per_ip` from one
    /// address).
    pub fn unlinked_connections(&self) -> usize {
        self.shared.unlinked.in_budget()
    }

    /// How many libp2p connections are open (sync links, DHT neighbours and
    /// connections in their sync handshake).
    pub fn connection_count(&self) -> usize {
        lock(&self.shared.view).connections.values().map(Vec::len).sum()
    }

    /// Admits peers by `policy` from now on, and closes the links of peers
    /// it no longer admits (they are told why, and not redialled).
    pub fn set_access_policy(&self, policy: AccessPolicy) {
        lock(&self.shared.settings).policy = Some(policy.clone());
        {
            let mut keys = lock(&self.shared.keys);
            if let Some(current) = keys.as_ref() {
                *keys = Some(Arc::new(Keys { policy: policy.clone(), ..Keys::clone(current) }));
            }
        }
        let state = self.shared.state();
        for link in state.links.values() {
            if let Err(denied) = policy.admits(&link.peer_id.to_string(), link.proof_ok) {
                tracing::info!(peer = %link.peer_id, reason = %denied, "the access rule no longer admits a connected peer; disconnecting it");
                link.close(&format!("no longer admitted: {denied}"));
                if let (Some(running), Ok(peer)) = (state.running.as_ref(), crate::identity::to_libp2p(&link.peer_id)) {
                    let _ = running.commands.try_send(Command::Forget { peer });
                }
            }
        }
    }

    fn default_listen_addresses(&self) -> Result<Vec<Multiaddr>> {
        let config = &self.shared.config;
        let ip: IpAddr = config
            .bind_address
            .parse()
            .map_err(|err| NetworkError::Config(format!("bind_address {:?} is not an IP address: {err}", config.bind_address)))?;
        let (port, ws_port) = if config.port == 0 { (0, 0) } else { (DEFAULT_LIBP2P_PORT, DEFAULT_LIBP2P_PORT + 1) };
        let ip = match ip {
            IpAddr::V4(ip) => Protocol::Ip4(ip),
            IpAddr::V6(ip) => Protocol::Ip6(ip),
        };
        let base = Multiaddr::empty().with(ip);
        Ok(vec![
            base.clone().with(Protocol::Tcp(port)),
            base.clone().with(Protocol::Udp(port)).with(Protocol::QuicV1),
            base.with(Protocol::Tcp(ws_port)).with(Protocol::Ws(std::borrow::Cow::Borrowed("/"))),
        ])
    }

    async fn dial(&self, address: &str, expected: Option<libp2p::PeerId>, redial: bool) -> Result<PeerId> {
        let running = self.shared.running()?;
        let mut multiaddr: Multiaddr = address
            .parse()
            .map_err(|err| NetworkError::InvalidAddress { address: address.to_owned(), reason: format!("not a multiaddr: {err}") })?;
        let named = match multiaddr.iter().last() {
            Some(Protocol::P2p(peer)) => {
                multiaddr.pop();
                Some(peer)
            }
            _ => None,
        };
        if let (Some(named), Some(expected)) = (named, expected) {
            if named != expected {
                return Err(NetworkError::InvalidAddress {
                    address: address.to_owned(),
                    reason: format!("names peer {named}, expected {expected}"),
                });
            }
        }
        let expected = expected.or(named);
        if let Some(relay) = crate::relay::relay_address(&multiaddr) {
            // The relay carries circuits for its members only: be one
            // first (a sync link with it), then open the circuit.
            let relay_peer = crate::relay::relay_of(&multiaddr);
            if !relay_peer.is_some_and(|peer| self.shared.is_linked_peer(&peer)) {
                let relay_text = relay.to_string();
                if let Err(err) = Box::pin(self.dial(&relay_text, None, true)).await {
                    tracing::info!(relay = %relay_text, error = %err, "no sync link with the relay; trying the circuit anyway");
                }
            }
        }
        // A relay may refuse a circuit asked for just as this node's link
        // with it came up (it admits the link a moment after this node
        // does): a circuit is asked for up to CIRCUIT_ATTEMPTS times.
        let attempts = if crate::relay::is_relayed(&multiaddr) { CIRCUIT_ATTEMPTS } else { 1 };
        let mut attempt = 0;
        let peer = loop {
            attempt += 1;
            let (reply, answer) = oneshot::channel();
            let command = Command::Dial { address: multiaddr.clone(), expected, redial, reply };
            running.commands.send(command).await.map_err(|_| NetworkError::NotRunning)?;
            match answer.await {
                Ok(Ok(peer)) => break peer,
                Ok(Err(reason)) if attempt >= attempts => return Err(NetworkError::Connect { address: address.to_owned(), reason }),
                Ok(Err(reason)) => {
                    tracing::debug!(%address, attempt, %reason, "circuit refused or failed; asking again");
                    tokio::time::sleep(CIRCUIT_RETRY_DELAY * attempt).await;
                }
                Err(_) => return Err(NetworkError::NotRunning),
            }
        };
        self.shared.open_link(peer).await
    }
}

#[async_trait::async_trait]
impl NetworkEngine for Libp2pNetworkEngine {
    /// Checks the configuration and settles the keys: the given identity
    /// and policy, or fresh ones.
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
        let (identity, policy) = pluresdb_net::identity_and_policy(identity, policy)?;
        let keypair = crate::identity::keypair(&identity)?;
        let peer_id = identity.peer_id();
        let libp2p_id = keypair.public().to_peer_id();
        let keys = Keys { peer_id_text: peer_id.to_string(), identity, keypair, peer_id, libp2p_id, policy };
        *lock(&self.shared.keys) = Some(Arc::new(keys));
        Ok(())
    }

    /// Builds the swarm, listens, starts the swarm task, and dials the
    /// bootstrap nodes (redialled with backoff when their connection
    /// drops).
    async fn start(&mut self) -> Result<()> {
        self.initialize().await?;
        let keys = self.shared.keys().ok_or(NetworkError::NotRunning)?;
        if self.shared.state().running.is_some() {
            return Err(NetworkError::AlreadyRunning);
        }
        let (listen, dht, discover, dht_interval, receive_limits, relay, hole_punching, direct_redial) = {
            let settings = lock(&self.shared.settings);
            let config = &self.shared.config;
            (
                settings.listen.clone(),
                settings.dht.unwrap_or(config.enable_dht || config.discovery.enable_dht),
                settings.dht.unwrap_or(config.discovery.enable_dht),
                settings.dht_interval.unwrap_or(config.discovery.discovery_interval),
                settings.limits,
                settings.relay,
                settings.hole_punching,
                settings.direct_redial,
            )
        };
        let listen = match listen {
            Some(listen) => listen,
            None => self.default_listen_addresses()?,
        };
        let relay_config = relay.map(|access| match access {
            RelayAccess::Open => crate::relay::server_config(None, None),
            RelayAccess::Members => {
                // Members are the peers linked for sync right now (asked at
                // each reservation, renewal and circuit). Weak: the swarm
                // must not keep the engine alive.
                let member = |shared: std::sync::Weak<Shared>| {
                    crate::relay::members_only(move |peer| shared.upgrade().is_some_and(|shared| shared.is_linked_peer(peer)))
                };
                let shared = Arc::downgrade(&self.shared);
                crate::relay::server_config(Some(member(shared.clone())), Some(member(shared)))
            }
        });
        let features = crate::behaviour::Features { dht, relay: relay_config, hole_punching, unlinked: self.shared.unlinked.clone() };
        let mut swarm = crate::behaviour::build_swarm(&keys.keypair, &self.shared.config, features)?;
        let mut control = swarm.behaviour().sync.new_control();
        let incoming = control.accept(SYNC_PROTOCOL).map_err(|_| NetworkError::AlreadyRunning)?;
        let bound = swarm::listen(&mut swarm, &listen, LISTEN_TIMEOUT).await?;
        lock(&self.shared.view).listen = bound.clone();
        let _ = self.shared.shutdown.send(false);
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let running = Running { commands, control, tasks: TaskCounter::new(), receive_limits };
        self.shared.state().running = Some(running.clone());
        tracing::info!(peer = %keys.peer_id_text, addresses = ?bound, dht, relay = ?relay, "libp2p engine listening");

        let dht_key = if discover { keys.policy.secret.as_ref().map(crate::dht::network_key) } else { None };
        if discover && dht_key.is_none() {
            tracing::warn!("DHT discovery needs a network secret; this node takes part in the DHT but looks for no peers");
        }
        let task = swarm::SwarmTask::new(self.shared.clone(), swarm, command_rx, dht_key, dht_interval, relay.is_some(), direct_redial);
        let guard = running.tasks.enter();
        tokio::spawn(async move {
            task.run().await;
            drop(guard);
        });
        let guard = running.tasks.enter();
        tokio::spawn(accept_streams(self.shared.clone(), incoming, running.clone(), guard));

        for address in self.shared.config.bootstrap_nodes.clone() {
            if !address.starts_with('/') {
                tracing::debug!(%address, "not a multiaddr; a bootstrap node for the QUIC engine");
                continue;
            }
            let engine = self.clone();
            let guard = running.tasks.enter();
            tokio::spawn(async move {
                if let Err(err) = engine.dial(&address, None, true).await {
                    tracing::info!(%address, error = %err, "bootstrap node: no sync link (it may be a DHT node of another network)");
                }
                drop(guard);
            });
        }
        Ok(())
    }

    /// Says goodbye on every link, stops the swarm (closing every
    /// connection and listener). Waits up to `connection_timeout`.
    async fn stop(&mut self) -> Result<()> {
        let Some(running) = self.shared.state().running.take() else { return Ok(()) };
        let _ = self.shared.shutdown.send(true);
        if tokio::time::timeout(self.shared.config.connection_timeout, running.tasks.idle()).await.is_err() {
            tracing::warn!("libp2p tasks still running after the connection timeout");
        }
        let mut view = lock(&self.shared.view);
        view.listen.clear();
        view.connections.clear();
        tracing::info!("libp2p engine stopped");
        Ok(())
    }

    async fn send_message(&self, peer_id: &PeerId, message: NetworkMessage) -> Result<()> {
        let transmit = pluresdb_net::link::outgoing(&message)?;
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
        let transmit = pluresdb_net::link::outgoing(&message)?;
        let queues: Vec<(PeerId, mpsc::Sender<Frame>)> = {
            let state = self.shared.state();
            if state.running.is_none() {
                return Err(NetworkError::NotRunning);
            }
            let queue = |link: &Link| match transmit.lane {
                Lane::Bulk => link.bulk.clone(),
                Lane::Control => link.control.clone(),
            };
            state.links.values().map(|link| (link.peer_id, queue(link))).collect()
        };
        for (peer, queue) in queues {
            if let Err(err) = enqueue(&queue, &peer, transmit.frame.clone()) {
                tracing::debug!(%peer, error = %err, "broadcast skipped a peer");
            }
        }
        Ok(())
    }

    /// Dials `address` (a multiaddr, with or without `/p2p/<peer id>`),
    /// opens the sync stream, runs the admission handshake and returns the
    /// peer id. The peer is redialled with backoff whenever its
    /// connection drops, until `disconnect_peer` or `stop`.
    async fn connect_peer(&self, address: &str) -> Result<PeerId> {
        self.dial(address, None, true).await
    }

    /// Dials once, requiring `peer_id` (noise checks it); no redialling.
    async fn dial_discovered(&self, peer_id: &PeerId, address: &str) -> Result<PeerId> {
        let expected = crate::identity::to_libp2p(peer_id)?;
        self.dial(address, Some(expected), false).await
    }

    /// Says goodbye on the peer's link, stops redialling it and closes its
    /// connections.
    async fn disconnect_peer(&self, peer_id: &PeerId) -> Result<()> {
        let running = self.shared.running()?;
        let peer = crate::identity::to_libp2p(peer_id).map_err(|_| NetworkError::PeerNotConnected(peer_id.to_string()))?;
        let linked = {
            let state = self.shared.state();
            state.links.get(peer_id).map(|link| link.close("disconnected by the local node")).is_some()
        };
        let connected = lock(&self.shared.view).connections.contains_key(&peer);
        let _ = running.commands.send(Command::Forget { peer }).await;
        if linked {
            // The goodbye goes out before the connection closes.
            let deadline = tokio::time::Instant::now() + handshake::LINGER * 2;
            while self.shared.is_linked(peer_id) && tokio::time::Instant::now() < deadline {
                let notified = self.shared.links_changed.notified();
                let _ = tokio::time::timeout_at(deadline, notified).await;
            }
        }
        let _ = running.commands.send(Command::Disconnect { peer }).await;
        if linked || connected {
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
        self.shared.is_linked(peer_id)
    }
}

fn enqueue(queue: &mpsc::Sender<Frame>, peer: &PeerId, frame: Frame) -> Result<()> {
    queue.try_send(frame).map_err(|err| match err {
        mpsc::error::TrySendError::Full(_) => NetworkError::PeerBusy { peer: peer.to_string() },
        mpsc::error::TrySendError::Closed(_) => NetworkError::PeerNotConnected(peer.to_string()),
    })
}
