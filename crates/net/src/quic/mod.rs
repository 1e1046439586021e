//! [`QuicNetworkEngine`]: the [`NetworkEngine`] over QUIC (quinn 0.11,
//! rustls with ring).
//!
//! One quinn endpoint (one UDP socket) both listens and dials. Connections
//! use mutual TLS 1.3 with certificates that carry the node keys
//! (`pluresdb_security::tls`), so each side learns the other's peer id from
//! the handshake itself. Then the PluresDB handshake ([`handshake`]) checks
//! the network-secret proof against the [`AccessPolicy`]; an admitted
//! connection becomes a [`link`]: a control stream for small frames, a
//! bulk stream for `DataSync`, heartbeats, receive limits.

mod address;
mod admission;
mod backoff;
mod handshake;
mod link;
mod stream;

pub use address::{resolve, strip_scheme, QUIC_SCHEME};
pub use backoff::{Backoff, INITIAL_DELAY, MAX_DELAY};
pub use handshake::{EXPORTER_LABEL, HANDSHAKE_MAX_PAYLOAD};
pub use stream::CLOSE_NORMAL;

use crate::codec::{Frame, MAX_PAYLOAD_BYTES};
use crate::config::{NetworkConfig, ReceiveLimits};
use crate::engine::{NetworkEngine, Result};
use crate::error::NetworkError;
use crate::events::SyncHandle;
use crate::message::{ErrorCode, NetworkMessage};
use crate::peer::{Direction, PeerInfo, PeerManager};
use admission::{Admission, HandshakeBudget};
use link::Link;
use pluresdb_security::{tls, AccessPolicy, Identity, NetworkSecret, PeerId};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, IdleTimeout, TransportConfig, VarInt};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;

/// Frames queued per peer on the control stream before `send_message`
/// answers [`NetworkError::PeerBusy`].
pub const CONTROL_QUEUE_FRAMES: usize = 1_024;

/// `DataSync` frames queued per peer on the bulk stream before
/// `send_message` answers [`NetworkError::PeerBusy`]. The sync engine keeps
/// at most 4 batches in flight per peer, so this is only reached when a
/// peer reads slower than it is sent to.
pub const BULK_QUEUE_FRAMES: usize = 16;

/// The connection receive window (bytes in flight from the peer, over all
/// its streams) until the peer is admitted: enough for the handshake's
/// frames (at most 64 KiB each), small enough that the handshakes in
/// flight hold little memory.
const HANDSHAKE_RECEIVE_WINDOW: u32 = 256 * 1024;

/// The connection receive window of an admitted peer: large enough for a
/// full sync batch in flight on loopback and LAN.
const LINK_RECEIVE_WINDOW: u32 = 32 * 1024 * 1024;

/// The bulk streams an admitted peer may have open at once: one, plus one
/// being replaced. Until admission it may open none.
const LINK_UNI_STREAMS: u32 = 2;

/// Connection attempts quinn keeps waiting for the accept loop, and the
/// bytes it buffers for each and for all of them. The accept loop decides
/// on each at once, so these only matter under a flood; beyond them quinn
/// refuses new attempts itself.
const MAX_INCOMING: usize = 1_024;
const INCOMING_BUFFER_BYTES: u64 = 64 * 1024;
const INCOMING_BUFFER_TOTAL_BYTES: u64 = 4 * 1024 * 1024;

/// The QUIC engine. Cheap to clone: clones share one endpoint and one set
/// of connections (hand a clone to the sync driver, keep one to stop it).
///
/// ```no_run
/// # async fn demo() -> pluresdb_net::Result<()> {
/// use pluresdb_net::{NetworkConfig, NetworkEngine, PeerManager, QuicNetworkEngine, SyncHandle};
/// use std::sync::Arc;
///
/// let peer_manager = Arc::new(PeerManager::new());
/// let (sync_engine, _events) = SyncHandle::channel(1024);
/// let mut engine = QuicNetworkEngine::new(NetworkConfig::default(), peer_manager, sync_engine);
/// engine.initialize().await?;
/// engine.start().await?;
/// let peer_id = engine.connect_peer("quic://192.168.1.100:34569").await?;
/// # let _ = peer_id;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct QuicNetworkEngine {
    shared: Arc<Shared>,
}

/// This node's keys and TLS configuration, fixed at `initialize` (the
/// access policy may change later).
#[derive(Clone)]
pub(crate) struct Keys {
    pub(crate) identity: Identity,
    pub(crate) peer_id: PeerId,
    pub(crate) peer_id_text: String,
    pub(crate) policy: AccessPolicy,
    server: quinn::ServerConfig,
    transport: Arc<TransportConfig>,
}

struct Settings {
    identity: Option<Identity>,
    policy: Option<AccessPolicy>,
    limits: ReceiveLimits,
}

pub(crate) struct Shared {
    pub(crate) config: NetworkConfig,
    pub(crate) peers: Arc<PeerManager>,
    pub(crate) sync: SyncHandle,
    settings: Mutex<Settings>,
    keys: Mutex<Option<Arc<Keys>>>,
    state: Mutex<State>,
    /// Woken whenever a link is registered or removed.
    pub(crate) links_changed: Notify,
    /// Whether each new link asks its peer for the peers it knows.
    pub(crate) ask_for_peers: std::sync::atomic::AtomicBool,
}

struct State {
    running: Option<Running>,
    links: HashMap<String, Link>,
    /// This node's dials not yet links; they count against
    /// `max_connections`.
    dialling: usize,
    /// Incoming connections not yet admitted (see [`admission`]).
    handshakes: HandshakeBudget,
    /// Aborts each incoming handshake in flight, by its budget slot.
    evictions: HashMap<u64, oneshot::Sender<()>>,
    next_id: u64,
    dials: HashMap<u64, Dial>,
}

impl State {
    /// Stops redialling `peer` and closes its link with `reason`; returns
    /// whether there was a link and whether there was a dial.
    fn disconnect(&mut self, peer: &str, reason: &str) -> (bool, bool) {
        let mut dial_found = false;
        self.dials.retain(|_, dial| {
            let matches = dial.peer.as_deref() == Some(peer);
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

#[derive(Clone)]
struct Running {
    endpoint: Endpoint,
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: TaskCounter,
    receive_limits: ReceiveLimits,
}

/// A peer this node dialled and keeps dialling.
struct Dial {
    address: String,
    peer: Option<String>,
    cancel: watch::Sender<bool>,
}

/// Counts running connection tasks, so `stop` can wait for them.
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

impl QuicNetworkEngine {
    /// An engine with `config` that reports peers to `peer_manager` and
    /// delivers peer events through `sync_engine` (see [`SyncHandle`]).
    /// Give it keys with [`with_identity`](Self::with_identity) and
    /// [`with_access_policy`](Self::with_access_policy), or let
    /// `initialize` generate them.
    pub fn new(config: NetworkConfig, peer_manager: Arc<PeerManager>, sync_engine: SyncHandle) -> Self {
        let handshakes = HandshakeBudget::new(config.max_handshakes, config.max_handshakes_per_ip);
        let shared = Shared {
            config,
            peers: peer_manager,
            sync: sync_engine,
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
            ask_for_peers: std::sync::atomic::AtomicBool::new(false),
        };
        Self { shared: Arc::new(shared) }
    }

    /// Uses `identity` as this node's key (its peer id names the node).
    /// Without it, `initialize` generates one.
    pub fn with_identity(self, identity: Identity) -> Self {
        lock(&self.shared.settings).identity = Some(identity);
        self
    }

    /// Admits peers by `policy`. Without it, `initialize` creates a fresh
    /// network secret and admits only peers that prove it (so a node
    /// without a policy talks to no one until it is given the secret).
    pub fn with_access_policy(self, policy: AccessPolicy) -> Self {
        lock(&self.shared.settings).policy = Some(policy);
        self
    }

    /// Applies `limits` to what each peer may send (default:
    /// [`ReceiveLimits::default`]). Takes effect at the next `start`.
    pub fn with_receive_limits(self, limits: ReceiveLimits) -> Self {
        lock(&self.shared.settings).limits = limits;
        self
    }

    /// Asks every newly connected peer for the peers it knows (peer
    /// exchange), which then show in the [`PeerManager`]'s learned peers for
    /// discovery to dial. Off by default: a node that does not look for
    /// peers has no use for them. Requests from peers are answered either
    /// way.
    pub fn with_peer_exchange(self, ask: bool) -> Self {
        self.shared.ask_for_peers.store(ask, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// This node's peer id, once initialized.
    pub fn peer_id(&self) -> Option<String> {
        lock(&self.shared.keys).as_ref().map(|keys| keys.peer_id_text.clone())
    }

    /// This node's identity, once initialized (for the runtime to keep a
    /// generated one).
    pub fn identity(&self) -> Option<Identity> {
        lock(&self.shared.keys).as_ref().map(|keys| keys.identity.clone())
    }

    /// Admits peers by `policy` from now on (the allowlist or the mode
    /// changed), and closes the connections of peers it no longer admits
    /// (they are told why, and are not redialled).
    pub fn set_access_policy(&self, policy: AccessPolicy) {
        lock(&self.shared.settings).policy = Some(policy.clone());
        {
            let mut keys = lock(&self.shared.keys);
            if let Some(current) = keys.as_ref() {
                *keys = Some(Arc::new(Keys { policy: policy.clone(), ..Keys::clone(current) }));
            }
        }
        let mut state = self.shared.state();
        let refused: Vec<(String, String)> = state
            .links
            .values()
            .filter_map(|link| policy.admits(&link.peer_id, link.proof_ok).err().map(|denied| (link.peer_id.clone(), denied.to_string())))
            .collect();
        for (peer, reason) in refused {
            tracing::info!(%peer, %reason, "the access rule no longer admits a connected peer; disconnecting it");
            state.disconnect(&peer, &format!("no longer admitted: {reason}"));
        }
    }

    /// Closes every connection with `reason` and keeps redialling what was
    /// dialled: for when this node's own address changed and connections
    /// still send from the old one (they would only notice at the idle
    /// timeout). Peers found by discovery are dialled again by it.
    pub fn close_links(&self, reason: &str) {
        let state = self.shared.state();
        for link in state.links.values() {
            link.close(reason);
        }
    }

    /// The access policy in force, once initialized (it holds the network
    /// secret a fresh node generated).
    pub fn access_policy(&self) -> Option<AccessPolicy> {
        lock(&self.shared.keys).as_ref().map(|keys| keys.policy.clone())
    }

    /// The address the endpoint is bound to, while running (with port 0 in
    /// the config, the port the OS chose).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared.state().running.as_ref().map(|running| running.local_addr)
    }

    /// How many incoming connections are in their handshake (QUIC or
    /// hello), out of `max_handshakes`.
    pub fn handshakes_in_flight(&self) -> usize {
        self.shared.state().handshakes.in_flight()
    }

    /// The peer registry this engine reports to.
    pub fn peer_manager(&self) -> &Arc<PeerManager> {
        &self.shared.peers
    }

    fn keys(&self) -> Result<Arc<Keys>> {
        lock(&self.shared.keys).clone().ok_or(NetworkError::NotRunning)
    }

    fn running(&self) -> Result<Running> {
        self.shared.state().running.clone().ok_or(NetworkError::NotRunning)
    }

    /// Dials `address` and runs the handshake; returns the peer id once the
    /// connection is a link. The QUIC handshake and the hello exchange
    /// together must finish within `handshake_timeout`.
    async fn dial(&self, address: &str, expected: Option<PeerId>) -> Result<String> {
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
        let listen = listen_addresses(running.local_addr);
        let limits = running.receive_limits;
        let done = handshake::run(&keys, &connection, Direction::Dialled, listen, limits.max_payload, deadline, timeout).await?;
        let peer_id = done.peer_id.clone();
        link::start(self.shared.clone(), &running, connection, done, Direction::Dialled, slot);
        Ok(peer_id)
    }

    /// Keeps `address` connected: waits while its peer is connected,
    /// redials with [`Backoff`] when it is not, until cancelled (by
    /// `disconnect_peer` or `stop`).
    fn supervise(&self, dial_id: u64, address: String, mut peer: Option<String>, mut cancel: watch::Receiver<bool>) {
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
                    let connected = peer.as_deref().is_some_and(|p| engine.shared.state().links.contains_key(p));
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
                if peer.as_deref().is_some_and(|p| engine.shared.state().links.contains_key(p)) {
                    continue;
                }
                let expected = peer.as_deref().and_then(|p| p.parse::<PeerId>().ok());
                let attempt = tokio::select! {
                    result = engine.dial(&address, expected) => result,
                    _ = cancel.wait_for(|c| *c) => return,
                    _ = shutdown.wait_for(|s| *s) => return,
                };
                match attempt {
                    Ok(found) => {
                        tracing::info!(%address, peer = %found, "redialled peer");
                        if let Some(dial) = engine.shared.state().dials.get_mut(&dial_id) {
                            dial.peer = Some(found.clone());
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
    fn add_dial(&self, address: &str, peer: Option<String>) -> (u64, watch::Receiver<bool>) {
        let (cancel, cancelled) = watch::channel(false);
        let mut state = self.shared.state();
        state.next_id += 1;
        let id = state.next_id;
        state.dials.insert(id, Dial { address: address.to_owned(), peer, cancel });
        (id, cancelled)
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// A slot against `max_connections` for a dial, or `None` at the limit.
    /// Incoming handshakes have their own budget and never take these.
    fn reserve_dial(shared: &Arc<Shared>) -> Option<Slot> {
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
    /// nothing for [`Shared::silent_after`] (the peer moved or restarted and
    /// the old connection has not timed out yet; the peer has let go of it,
    /// or it would still be sending heartbeats).
    pub(crate) fn register(&self, link: Link) -> Registration {
        let silent = self.peers.get(&link.peer_id).is_some_and(|info| {
            let quiet = chrono::Utc::now().signed_duration_since(info.last_seen);
            quiet.to_std().is_ok_and(|quiet| quiet > self.silent_after())
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
        state.links.insert(link.peer_id.clone(), link);
        drop(state);
        self.links_changed.notify_waiters();
        registration
    }

    /// How long a link may hear nothing before a new connection from its
    /// peer replaces it: one and a half heartbeat intervals and a second.
    fn silent_after(&self) -> Duration {
        self.config.heartbeat_interval * 3 / 2 + Duration::from_secs(1)
    }

    /// Removes link `id` of `peer` if it is still the current one; returns
    /// whether it was.
    pub(crate) fn unregister(&self, peer: &str, id: u64) -> bool {
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
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent (plain inserts and
    // removals), so a panic elsewhere does not make it unusable.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What this node tells peers it listens on.
fn listen_addresses(local: SocketAddr) -> Vec<String> {
    vec![address::quic_url(local)]
}

/// The transport parameters of every connection, as they stand until the
/// peer is admitted: a small connection receive window and no bulk
/// streams, so a connection that has proven nothing holds little memory.
/// [`admit_transport`] opens them up once the handshake admitted the peer.
/// The stream receive window is fixed for a connection's life in quinn; it
/// is set for admitted links, and the connection window bounds it before.
fn transport_config(config: &NetworkConfig) -> Result<TransportConfig> {
    let mut transport = TransportConfig::default();
    let idle = IdleTimeout::try_from(config.connection_timeout)
        .map_err(|_| NetworkError::Config(format!("connection_timeout {:?} is too long", config.connection_timeout)))?;
    transport.max_idle_timeout(Some(idle));
    // Heartbeats keep links alive; QUIC keep-alives cover the handshake and
    // a heartbeat interval configured longer than the timeout.
    transport.keep_alive_interval(Some(config.heartbeat_interval.min(config.connection_timeout / 2).max(Duration::from_millis(10))));
    // One control stream each way; bulk streams only after admission.
    transport.max_concurrent_bidi_streams(VarInt::from_u32(1));
    transport.max_concurrent_uni_streams(VarInt::from_u32(0));
    transport.stream_receive_window(VarInt::from_u32(8 * 1024 * 1024));
    transport.receive_window(VarInt::from_u32(HANDSHAKE_RECEIVE_WINDOW));
    transport.send_window(32 * 1024 * 1024);
    Ok(transport)
}

/// Raises the limits of [`transport_config`] to an admitted link's.
pub(crate) fn admit_transport(connection: &quinn::Connection) {
    connection.set_receive_window(VarInt::from_u32(LINK_RECEIVE_WINDOW));
    connection.set_max_concurrent_uni_streams(VarInt::from_u32(LINK_UNI_STREAMS));
}

#[async_trait::async_trait]
impl NetworkEngine for QuicNetworkEngine {
    /// Checks the configuration, takes the identity and access policy (or
    /// generates an identity and a fresh network secret) and builds the TLS
    /// configuration. Idempotent.
    async fn initialize(&mut self) -> Result<()> {
        if lock(&self.shared.keys).is_some() {
            return Ok(());
        }
        let config = &self.shared.config;
        if !config.enable_encryption {
            return Err(NetworkError::Config("QUIC always encrypts (TLS 1.3); enable_encryption must be true".to_owned()));
        }
        if config.max_connections == 0 {
            return Err(NetworkError::Config("max_connections must be at least 1".to_owned()));
        }
        if config.connection_timeout.is_zero() || config.heartbeat_interval.is_zero() || config.handshake_timeout.is_zero() {
            return Err(NetworkError::Config("connection_timeout, handshake_timeout and heartbeat_interval must be positive".to_owned()));
        }
        if config.max_handshakes == 0 || config.max_handshakes_per_ip == 0 {
            return Err(NetworkError::Config("max_handshakes and max_handshakes_per_ip must be at least 1".to_owned()));
        }
        let (identity, policy) = {
            let settings = lock(&self.shared.settings);
            (settings.identity.clone(), settings.policy.clone())
        };
        let identity = match identity {
            Some(identity) => identity,
            None => Identity::generate().map_err(NetworkError::Tls)?,
        };
        let policy = match policy {
            Some(policy) => policy,
            None => AccessPolicy::with_secret(NetworkSecret::generate().map_err(NetworkError::Tls)?),
        };
        let transport = Arc::new(transport_config(config)?);
        let tls = tls::server_config(&identity).map_err(NetworkError::Tls)?;
        let crypto = QuicServerConfig::try_from(tls).map_err(|err| NetworkError::Config(format!("QUIC server TLS config: {err}")))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server
            .transport_config(transport.clone())
            .max_incoming(MAX_INCOMING)
            .incoming_buffer_size(INCOMING_BUFFER_BYTES)
            .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL_BYTES);
        let peer_id = identity.peer_id();
        let keys = Keys { peer_id_text: peer_id.to_string(), peer_id, identity, policy, server, transport };
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
        let _ = tokio::time::timeout(handshake::LINGER, running.endpoint.wait_idle()).await;
        let local_addr = running.local_addr;
        drop(running);
        wait_until_released(local_addr).await;
        tracing::info!(address = %local_addr, "QUIC engine stopped");
        Ok(())
    }

    async fn send_message(&self, peer_id: &str, message: NetworkMessage) -> Result<()> {
        let frame = checked_frame(&message)?;
        let queue = {
            let state = self.shared.state();
            let link = state.links.get(peer_id).ok_or_else(|| NetworkError::PeerNotConnected(peer_id.to_owned()))?;
            if message.is_bulk() {
                link.bulk.clone()
            } else {
                link.control.clone()
            }
        };
        enqueue(&queue, peer_id, frame)
    }

    async fn broadcast_message(&self, message: NetworkMessage) -> Result<()> {
        let frame = checked_frame(&message)?;
        let queues: Vec<(String, mpsc::Sender<Frame>)> = {
            let state = self.shared.state();
            if state.running.is_none() {
                return Err(NetworkError::NotRunning);
            }
            let bulk = message.is_bulk();
            state.links.values().map(|link| (link.peer_id.clone(), if bulk { link.bulk.clone() } else { link.control.clone() })).collect()
        };
        for (peer, queue) in queues {
            if let Err(err) = enqueue(&queue, &peer, frame.clone()) {
                tracing::debug!(%peer, error = %err, "broadcast skipped a peer");
            }
        }
        Ok(())
    }

    /// Dials `address` (`host:port` or `quic://host:port`), verifies the
    /// peer (TLS certificate, then network secret and access policy) and
    /// returns its peer id. The peer is redialled with backoff whenever the
    /// connection drops, until `disconnect_peer` or `stop`.
    async fn connect_peer(&self, address: &str) -> Result<String> {
        let peer = self.dial(address, None).await?;
        let supervised = self.shared.state().dials.values().any(|dial| dial.peer.as_deref() == Some(peer.as_str()));
        if !supervised {
            let (id, cancel) = self.add_dial(address, Some(peer.clone()));
            self.supervise(id, address.to_owned(), Some(peer.clone()), cancel);
        }
        Ok(peer)
    }

    /// Dials once, with the TLS handshake requiring `peer_id`'s
    /// certificate; no redialling.
    async fn dial_discovered(&self, peer_id: &str, address: &str) -> Result<String> {
        let expected = peer_id
            .parse::<PeerId>()
            .map_err(|err| NetworkError::Connect { address: address.to_owned(), reason: format!("not a peer id {peer_id:?}: {err}") })?;
        self.dial(address, Some(expected)).await
    }

    async fn disconnect_peer(&self, peer_id: &str) -> Result<()> {
        let (link_found, dial_found) = self.shared.state().disconnect(peer_id, "disconnected by the local node");
        if link_found || dial_found {
            Ok(())
        } else {
            Err(NetworkError::PeerNotConnected(peer_id.to_owned()))
        }
    }

    async fn get_connected_peers(&self) -> Result<Vec<PeerInfo>> {
        let ids: Vec<String> = self.shared.state().links.keys().cloned().collect();
        let mut peers: Vec<PeerInfo> = ids.iter().filter_map(|id| self.shared.peers.get(id)).collect();
        peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        Ok(peers)
    }

    async fn is_peer_connected(&self, peer_id: &str) -> bool {
        self.shared.state().links.contains_key(peer_id)
    }
}

/// Waits (at most [`handshake::LINGER`]) until the UDP port is free again.
/// quinn closes the socket in its endpoint driver task once the last
/// handle and connection are gone, which may be a moment after `stop`
/// drops them; a node restarted in the same process on the same port
/// needs it closed.
async fn wait_until_released(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + handshake::LINGER;
    while std::net::UdpSocket::bind(addr).is_err() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The frame for a message callers may send, checked against the frame
/// size limit.
fn checked_frame(message: &NetworkMessage) -> Result<Frame> {
    if matches!(message, NetworkMessage::Hello(_) | NetworkMessage::Goodbye { .. } | NetworkMessage::Error { .. }) {
        return Err(NetworkError::NotSendable { kind: message.kind() });
    }
    let frame = message.to_frame();
    if frame.payload.len() > MAX_PAYLOAD_BYTES {
        return Err(NetworkError::Codec {
            peer: "local".to_owned(),
            source: crate::codec::CodecError::Oversize { length: frame.payload.len(), limit: MAX_PAYLOAD_BYTES },
        });
    }
    Ok(frame)
}

fn enqueue(queue: &mpsc::Sender<Frame>, peer: &str, frame: Frame) -> Result<()> {
    queue.try_send(frame).map_err(|err| match err {
        mpsc::error::TrySendError::Full(_) => NetworkError::PeerBusy { peer: peer.to_owned() },
        mpsc::error::TrySendError::Closed(_) => NetworkError::PeerNotConnected(peer.to_owned()),
    })
}

/// Accepts incoming connections until the engine stops: each attempt is
/// retried, refused or given a slot of the handshake budget (see
/// [`admission`]) at once, and handshakes run in their own tasks.
async fn accept_loop(shared: Arc<Shared>, running: Running, _guard: TaskGuard) {
    let mut shutdown = running.shutdown.subscribe();
    loop {
        let incoming = tokio::select! {
            incoming = running.endpoint.accept() => incoming,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let Some(incoming) = incoming else { break };
        let remote = incoming.remote_address();
        let at_capacity;
        let (id, evicted) = {
            let mut state = shared.state();
            // A node at its connection limit still tells a caller why, if
            // it can do so without taking another handshake's place.
            at_capacity = state.links.len() + state.dialling >= shared.config.max_connections;
            match state.handshakes.admit(remote.ip(), incoming.remote_address_validated(), !at_capacity) {
                Admission::Accept { id, evict } => {
                    if let Some(cancel) = evict.and_then(|victim| state.evictions.remove(&victim)) {
                        let _ = cancel.send(());
                    }
                    let (cancel, cancelled) = oneshot::channel();
                    state.evictions.insert(id, cancel);
                    (id, cancelled)
                }
                Admission::Retry => {
                    drop(state);
                    tracing::trace!(%remote, "asked an incoming connection to prove its address (QUIC Retry)");
                    if let Err(err) = incoming.retry() {
                        err.into_incoming().refuse();
                    }
                    continue;
                }
                Admission::Refuse(reason) => {
                    drop(state);
                    tracing::debug!(%remote, %reason, "refused an incoming connection before its handshake");
                    incoming.refuse();
                    continue;
                }
            }
        };
        let slot = Slot { shared: shared.clone(), kind: SlotKind::Incoming(id) };
        let guard = running.tasks.enter();
        let mut shutdown = running.shutdown.subscribe();
        let accept = accept_one(shared.clone(), running.clone(), incoming, slot, evicted, at_capacity);
        tokio::spawn(async move {
            tokio::select! {
                _ = accept => {}
                _ = shutdown.wait_for(|s| *s) => {}
            }
            drop(guard);
        });
    }
}

/// Runs one incoming connection's handshake in its budget `slot`: the QUIC
/// handshake, then the hello exchange, both within `handshake_timeout`,
/// unless a newer attempt takes the slot (`evicted`). With `at_capacity`
/// the connection is closed with `too_many_connections` right after the
/// QUIC handshake.
async fn accept_one(
    shared: Arc<Shared>,
    running: Running,
    incoming: quinn::Incoming,
    slot: Slot,
    mut evicted: oneshot::Receiver<()>,
    at_capacity: bool,
) {
    let remote = incoming.remote_address();
    let timeout = shared.config.handshake_timeout;
    let deadline = Instant::now() + timeout;
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(err) => {
            tracing::debug!(%remote, error = %err, "incoming connection failed");
            return;
        }
    };
    // Dropping `connecting` closes the connection.
    let connection = tokio::select! {
        connected = tokio::time::timeout_at(deadline, connecting) => match connected {
            Ok(Ok(connection)) => connection,
            Ok(Err(err)) => {
                tracing::debug!(%remote, error = %err, "incoming connection failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%remote, "incoming connection timed out in the QUIC handshake");
                return;
            }
        },
        _ = &mut evicted => {
            tracing::debug!(%remote, "incoming connection gave its handshake slot to a newer one");
            return;
        }
    };
    if at_capacity {
        let reason = format!("too many connections (limit {})", shared.config.max_connections);
        tracing::warn!(%remote, "{reason}; closing the new connection");
        connection.close(stream::close_code(ErrorCode::TooManyConnections), reason.as_bytes());
        return;
    }
    let Some(keys) = lock(&shared.keys).clone() else { return };
    let listen = listen_addresses(running.local_addr);
    let handshake = handshake::run(&keys, &connection, Direction::Accepted, listen, running.receive_limits.max_payload, deadline, timeout);
    tokio::select! {
        done = handshake => match done {
            Ok(done) => link::start(shared, &running, connection, done, Direction::Accepted, slot),
            Err(err) => tracing::warn!(%remote, error = %err, "incoming handshake failed"),
        },
        _ = &mut evicted => {
            tracing::debug!(%remote, "incoming handshake gave its slot to a newer one");
            connection.close(stream::close_code(ErrorCode::TooManyConnections), b"too many handshakes in flight");
        }
    }
}
