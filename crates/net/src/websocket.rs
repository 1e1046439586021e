//! [`WebSocketNetworkEngine`]: browser pages link to a node over a
//! WebSocket (a page has neither QUIC nor Noise), speaking the link
//! protocol of every transport through [`SocketLink`]: each side proves
//! its peer id by a signature over the socket's binding, then the same
//! admission (network-secret proof, access policy), heartbeats and receive
//! limits as QUIC and libp2p (`docs/protocol.md`, "WebSocket link").
//!
//! The engine only accepts: pages dial nodes, a node dials no page
//! ([`NetworkEngine::connect_peer`] says so). Abuse limits: at most
//! `max_handshakes` sockets in their handshake (`max_handshakes_per_ip`
//! from one address), the handshake within `handshake_timeout` (WebSocket
//! upgrade included), messages of at most one frame's size, at most
//! `max_connections` admitted pages; a page over a limit or sending what is
//! not the protocol gets an `error` frame and the socket closes, and the
//! node and its other links go on.

use crate::engine::{identity_and_policy, NetworkEngine, Result};
use crate::events::{PeerEvent, SyncHandle};
use crate::link::{outgoing, LinkEnd, LinkEvent, Now, LINGER};
use crate::message::{ErrorCode, NetworkMessage};
use crate::peer::{Direction, PeerInfo, PeerManager, Transport};
use crate::{NetworkConfig, NetworkError, ReceiveLimits, MAX_FRAME_BYTES};
use bytes::Bytes;
use chrono::Utc;
use futures_util::{SinkExt, StreamExt};
use pluresdb_link::socket::{Side, SocketLink, SocketLinkConfig};
use pluresdb_link::Frame;
use pluresdb_security::{AccessPolicy, Identity, PeerId};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Frames queued per page before `send_message` answers `PeerBusy`.
pub const OUTBOUND_FRAMES: usize = 1_024;

/// Signals addressed to the node itself, waiting for the WebRTC engine;
/// more are dropped (the page's attempt fails and it stays on WebSocket).
pub const NODE_SIGNALS: usize = 256;

/// What the node tells an admitted page when it takes WebRTC: the page
/// then offers a data channel to the node (`docs/browser.md`).
pub const WEBRTC_OFFERED: &str = r#"{"type":"webrtc"}"#;

/// A signal a page addressed to the node itself (its WebRTC offer and
/// candidates), for the node's WebRTC engine, with the way back.
#[derive(Debug)]
pub struct NodeSignal {
    /// The page, as its WebSocket link proved it.
    pub page: PeerId,
    /// The page's address on the WebSocket.
    pub page_addr: SocketAddr,
    /// The node's address that the page reached: the node's WebRTC
    /// candidate takes its IP when its UDP socket listens on every one.
    pub node_addr: SocketAddr,
    /// The signal (JSON text, as the page wrote it).
    pub data: Bytes,
    /// Signals back to the page, over its WebSocket link.
    pub reply: SignalReply,
}

/// Sends signals from the node to one page over its WebSocket link.
#[derive(Clone, Debug)]
pub struct SignalReply {
    node: PeerId,
    out: mpsc::Sender<Frame>,
}

impl SignalReply {
    /// Queues `data` for the page; `false` if its link is gone or full.
    pub fn send(&self, data: Bytes) -> bool {
        self.out.try_send(NetworkMessage::Signal { peer: self.node.to_string(), data }.to_frame()).is_ok()
    }
}

/// The node's engine for browser pages (see the module docs).
#[derive(Clone)]
pub struct WebSocketNetworkEngine {
    shared: Arc<Shared>,
}

struct Shared {
    config: NetworkConfig,
    listen: SocketAddr,
    peers: Arc<PeerManager>,
    sync: SyncHandle,
    state: Mutex<State>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct State {
    identity: Option<Identity>,
    policy: Option<AccessPolicy>,
    local_addr: Option<SocketAddr>,
    shutdown: Option<watch::Sender<bool>>,
    links: HashMap<PeerId, Registered>,
    handshakes: usize,
    handshakes_per_ip: HashMap<IpAddr, usize>,
    /// Where signals addressed to the node go (the WebRTC engine), if it
    /// runs.
    node_signals: Option<mpsc::Sender<NodeSignal>>,
}

struct Registered {
    id: u64,
    out: mpsc::Sender<Frame>,
    close: watch::Sender<Option<String>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl WebSocketNetworkEngine {
    /// An engine that will listen on `listen` (port 0: one from the OS),
    /// reporting to `peers` and `sync`.
    pub fn new(config: NetworkConfig, listen: SocketAddr, peers: Arc<PeerManager>, sync: SyncHandle) -> Self {
        let shared = Shared { config, listen, peers, sync, state: Mutex::new(State::default()), next_id: AtomicU64::new(1) };
        Self { shared: Arc::new(shared) }
    }

    /// Runs with this node identity (default: a fresh one).
    pub fn with_identity(self, identity: Identity) -> Self {
        lock(&self.shared.state).identity = Some(identity);
        self
    }

    /// Admits pages by `policy` (default: a fresh secret nobody holds).
    pub fn with_access_policy(self, policy: AccessPolicy) -> Self {
        lock(&self.shared.state).policy = Some(policy);
        self
    }

    /// Hands the signals pages address to the node itself to `signals`
    /// (the WebRTC engine's `signal_sender`), and tells each admitted page
    /// that the node takes WebRTC.
    pub fn with_node_signals(self, signals: mpsc::Sender<NodeSignal>) -> Self {
        lock(&self.shared.state).node_signals = Some(signals);
        self
    }

    /// Changes who is admitted from now on; admitted pages that the new
    /// policy refuses are closed.
    pub fn set_access_policy(&self, policy: AccessPolicy) {
        let mut state = lock(&self.shared.state);
        for (peer, link) in &state.links {
            if policy.admits(&peer.to_string(), true).is_err() {
                let _ = link.close.send(Some("the access rule changed".to_owned()));
            }
        }
        state.policy = Some(policy);
    }

    /// Where the engine listens, once started.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        lock(&self.shared.state).local_addr
    }

    /// The URL pages connect to, once started.
    pub fn url(&self) -> Option<String> {
        self.local_addr().map(|addr| format!("ws://{addr}/"))
    }
}

#[async_trait::async_trait]
impl NetworkEngine for WebSocketNetworkEngine {
    async fn initialize(&mut self) -> Result<()> {
        let mut state = lock(&self.shared.state);
        let (identity, policy) = identity_and_policy(state.identity.take(), state.policy.take())?;
        state.identity = Some(identity);
        state.policy = Some(policy);
        Ok(())
    }

    async fn start(&mut self) -> Result<()> {
        if lock(&self.shared.state).shutdown.is_some() {
            return Err(NetworkError::AlreadyRunning);
        }
        self.initialize().await?;
        let listener = TcpListener::bind(self.shared.listen)
            .await
            .map_err(|source| NetworkError::Bind { address: self.shared.listen.to_string(), source })?;
        let local = listener.local_addr().map_err(|source| NetworkError::Bind { address: self.shared.listen.to_string(), source })?;
        let (shutdown, stopped) = watch::channel(false);
        {
            let mut state = lock(&self.shared.state);
            state.local_addr = Some(local);
            state.shutdown = Some(shutdown);
        }
        tracing::info!(address = %local, "browser pages connect over WebSocket");
        tokio::spawn(accept_loop(self.shared.clone(), listener, stopped));
        Ok(())
    }

    async fn stop(&mut self) -> Result<()> {
        let (shutdown, links) = {
            let mut state = lock(&self.shared.state);
            (state.shutdown.take(), state.links.len())
        };
        let Some(shutdown) = shutdown else { return Err(NetworkError::NotRunning) };
        let _ = shutdown.send(true);
        // Each link says goodbye and unregisters; wait (bounded) for them.
        let deadline = tokio::time::Instant::now() + LINGER * 2;
        while links > 0 && !lock(&self.shared.state).links.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Ok(())
    }

    async fn send_message(&self, peer_id: &PeerId, message: NetworkMessage) -> Result<()> {
        let transmit = outgoing(&message)?;
        let out = lock(&self.shared.state).links.get(peer_id).map(|link| link.out.clone());
        let Some(out) = out else { return Err(NetworkError::PeerNotConnected(peer_id.to_string())) };
        out.try_send(transmit.frame).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => NetworkError::PeerBusy { peer: peer_id.to_string() },
            mpsc::error::TrySendError::Closed(_) => NetworkError::PeerNotConnected(peer_id.to_string()),
        })
    }

    async fn broadcast_message(&self, message: NetworkMessage) -> Result<()> {
        let transmit = outgoing(&message)?;
        let outs: Vec<_> = lock(&self.shared.state).links.values().map(|link| link.out.clone()).collect();
        for out in outs {
            let _ = out.try_send(transmit.frame.clone());
        }
        Ok(())
    }

    async fn connect_peer(&self, address: &str) -> Result<PeerId> {
        Err(NetworkError::Connect {
            address: address.to_owned(),
            reason: "the WebSocket engine only accepts browser pages; nodes dial nodes over QUIC or libp2p".to_owned(),
        })
    }

    async fn disconnect_peer(&self, peer_id: &PeerId) -> Result<()> {
        match lock(&self.shared.state).links.get(peer_id) {
            Some(link) => {
                let _ = link.close.send(Some("disconnected by the node".to_owned()));
                Ok(())
            }
            None => Err(NetworkError::PeerNotConnected(peer_id.to_string())),
        }
    }

    async fn get_connected_peers(&self) -> Result<Vec<PeerInfo>> {
        Ok(self.shared.peers.connected_peers())
    }

    async fn is_peer_connected(&self, peer_id: &PeerId) -> bool {
        lock(&self.shared.state).links.contains_key(peer_id)
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, mut stopped: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.changed() => return,
        };
        let (tcp, from) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::debug!(error = %err, "accepting a browser socket failed");
                continue;
            }
        };
        // The handshake budget: a page (or anything else) that opens
        // sockets without finishing them holds at most these.
        {
            let mut state = lock(&shared.state);
            let per_ip = state.handshakes_per_ip.get(&from.ip()).copied().unwrap_or(0);
            if state.handshakes >= shared.config.max_handshakes || per_ip >= shared.config.max_handshakes_per_ip {
                tracing::debug!(%from, "too many browser handshakes in flight; closing the socket");
                continue;
            }
            state.handshakes += 1;
            *state.handshakes_per_ip.entry(from.ip()).or_default() += 1;
        }
        tokio::spawn(serve_socket(shared.clone(), tcp, from, stopped.clone()));
    }
}

/// Gives a socket's handshake slot back, once.
struct HandshakeSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
    held: bool,
}

impl HandshakeSlot {
    fn release(&mut self) {
        if std::mem::take(&mut self.held) {
            let mut state = lock(&self.shared.state);
            state.handshakes = state.handshakes.saturating_sub(1);
            if let Some(count) = state.handshakes_per_ip.get_mut(&self.ip) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    state.handshakes_per_ip.remove(&self.ip);
                }
            }
        }
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.release();
    }
}

async fn serve_socket(shared: Arc<Shared>, tcp: TcpStream, from: SocketAddr, mut stopped: watch::Receiver<bool>) {
    let mut slot = HandshakeSlot { shared: shared.clone(), ip: from.ip(), held: true };
    let node_addr = tcp.local_addr().unwrap_or(from);
    let config = &shared.config;
    let started = tokio::time::Instant::now();
    let deadline = started + config.handshake_timeout;
    let limits = ReceiveLimits::default();
    let ws_config = WebSocketConfig::default().max_message_size(Some(MAX_FRAME_BYTES)).max_frame_size(Some(MAX_FRAME_BYTES));
    let mut ws = match tokio::time::timeout_at(deadline, tokio_tungstenite::accept_async_with_config(tcp, Some(ws_config))).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(err)) => {
            tracing::debug!(%from, error = %err, "not a WebSocket upgrade");
            return;
        }
        Err(_) => {
            tracing::debug!(%from, "the WebSocket upgrade did not complete in time");
            return;
        }
    };
    let (identity, policy) = {
        let state = lock(&shared.state);
        (state.identity.clone(), state.policy.clone())
    };
    let (Some(identity), Some(policy)) = (identity, policy) else { return };
    let node_id = identity.peer_id();
    let mut nonce = [0u8; 32];
    if getrandom::fill(&mut nonce).is_err() {
        tracing::warn!("no randomness for a browser socket's nonce; closing it");
        return;
    }
    let now = Now::system();
    let mut socket_config = SocketLinkConfig::new(identity, Side::Server, nonce, policy, now);
    socket_config.handshake_deadline = deadline.into_std();
    socket_config.handshake_timeout = config.handshake_timeout;
    socket_config.heartbeat_interval = config.heartbeat_interval;
    socket_config.idle_timeout = Some(config.connection_timeout);
    socket_config.limits = limits;
    let mut machine = SocketLink::new(socket_config);

    let (out_tx, mut out_rx) = mpsc::channel::<Frame>(OUTBOUND_FRAMES);
    let reply = SignalReply { node: node_id, out: out_tx.clone() };
    let (close_tx, mut close_rx) = watch::channel::<Option<String>>(None);
    let mut close_tx = Some(close_tx);
    let mut out_tx = Some(out_tx);
    let mut registered: Option<(PeerId, u64, Arc<crate::PeerStats>)> = None;
    let mut signals = SignalBudget::new(Now::system());
    let mut proof_ok = false;
    let end = 'run: loop {
        while let Some(event) = machine.poll_event() {
            match event {
                LinkEvent::PeerAdmitted { proof_ok: ok, .. } => proof_ok = ok,
                LinkEvent::Established => {
                    // Registered before the admitting heartbeat goes out:
                    // a page that sees itself connected can be reached
                    // (another page's signal to it was dropped when it came
                    // in between). What others queue for it meanwhile is
                    // sent by this task, after the heartbeat.
                    let registering = match machine.remote_peer() {
                        Some(peer) => match (out_tx.take(), close_tx.take()) {
                            (Some(out), Some(close)) => {
                                slot.release();
                                let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
                                let mut state = lock(&shared.state);
                                let replaced = if !state.links.contains_key(&peer) && state.links.len() >= config.max_connections {
                                    None
                                } else {
                                    Some(state.links.insert(peer, Registered { id, out, close }))
                                };
                                Some((peer, id, replaced))
                            }
                            _ => None,
                        },
                        None => None,
                    };
                    while let Some(frame) = machine.poll_transmit() {
                        if send(&mut ws, &frame).await.is_err() {
                            machine.handle_lost("the socket failed");
                        }
                    }
                    let Some((peer, id, replaced)) = registering else { continue };
                    match replaced {
                        None => {
                            let reason = format!("too many connections (limit {})", config.max_connections);
                            tracing::debug!(%peer, %from, "{reason}; refusing the page");
                            let frame = NetworkMessage::Error { code: ErrorCode::TooManyConnections, message: reason.clone() }.to_frame();
                            let _ = send(&mut ws, &frame).await;
                            machine.close(&reason);
                        }
                        Some(old) => {
                            if let Some(old) = &old {
                                let _ = old.close.send(Some("replaced by a newer connection".to_owned()));
                            }
                            let stats = connected(&shared, peer, from, old.is_some()).await;
                            tracing::info!(%peer, %from, proof_ok, "browser page connected over WebSocket");
                            registered = Some((peer, id, stats));
                            if lock(&shared.state).node_signals.is_some() {
                                reply.send(Bytes::from_static(WEBRTC_OFFERED.as_bytes()));
                            }
                            announce_pages(&shared, &node_id);
                        }
                    }
                }
                LinkEvent::Sync(bytes) => {
                    if let Some((peer, _, _)) = &registered {
                        shared.sync.deliver(PeerEvent::Message { peer_id: *peer, bytes }).await;
                    }
                }
                LinkEvent::Heartbeat { sent } => {
                    if let Some((_, _, stats)) = &registered {
                        stats.record_heartbeat(sent, std::time::Duration::ZERO, Utc::now());
                    }
                }
                // Pages cannot dial the peers a node knows (QUIC, libp2p
                // addresses): nothing to tell or learn.
                LinkEvent::PeersLearned(_) => {}
                LinkEvent::PeerExchangeRequested => machine.answer_peer_exchange(Vec::new()),
                LinkEvent::Signal { peer: to, data } => {
                    if let Some((page, _, _)) = &registered {
                        let to_node = to == node_id.to_string();
                        if !signals.admits(page, Now::system()) {
                            tracing::debug!(%page, %to, "signal over the page's budget; dropped");
                        } else if to_node {
                            let signal = NodeSignal { page: *page, page_addr: from, node_addr, data, reply: reply.clone() };
                            to_webrtc_engine(&shared, signal);
                        } else {
                            relay_signal(&shared, page, &to, data);
                        }
                    }
                }
                LinkEvent::Closed(end) => break 'run end,
            }
        }
        while let Some(frame) = machine.poll_transmit() {
            if send(&mut ws, &frame).await.is_err() {
                machine.handle_lost("the socket failed");
            }
        }
        if machine.is_closed() {
            continue;
        }
        let timer = machine.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    if let Some((_, _, stats)) = &registered {
                        stats.record_received(bytes.len(), Utc::now());
                    }
                    machine.handle_message(&bytes, Now::system());
                }
                // Text is not the protocol: its bytes are refused as frames.
                Some(Ok(Message::Text(text))) => machine.handle_message(text.as_bytes(), Now::system()),
                Some(Ok(Message::Close(_))) | None => machine.handle_lost("the page closed the socket"),
                Some(Ok(_)) => {}
                Some(Err(err)) => machine.handle_lost(&format!("socket failed: {err}")),
            },
            Some(frame) = out_rx.recv(), if registered.is_some() => {
                if send(&mut ws, &frame).await.is_err() {
                    machine.handle_lost("the socket failed");
                }
            }
            () = sleep_until(timer) => machine.handle_timeout(Now::system()),
            changed = close_rx.changed(), if registered.is_some() => {
                let reason = match changed {
                    Ok(()) => close_rx.borrow().clone().unwrap_or_else(|| "closed".to_owned()),
                    Err(_) => "closed".to_owned(),
                };
                machine.close(&reason);
            }
            _ = stopped.changed() => machine.close("node shutting down"),
        }
    };
    // The last frames (a goodbye or an error) go out, then the socket closes.
    while let Some(frame) = machine.poll_transmit() {
        if tokio::time::timeout(LINGER, send(&mut ws, &frame)).await.is_err() {
            break;
        }
    }
    let _ = tokio::time::timeout(LINGER, ws.close(None)).await;
    match registered {
        Some((peer, id, _)) => {
            let removed = {
                let mut state = lock(&shared.state);
                match state.links.get(&peer) {
                    Some(link) if link.id == id => state.links.remove(&peer).is_some(),
                    _ => false,
                }
            };
            if removed {
                announce_pages(&shared, &node_id);
                shared.peers.peer_disconnected(&peer);
                tracing::info!(%peer, reason = %end, "browser page disconnected");
                shared.sync.deliver(PeerEvent::Disconnected { peer_id: peer, reason: end.to_string() }).await;
            }
        }
        None => {
            if !matches!(end, LinkEnd::Local(_)) {
                tracing::info!(%from, reason = %end, "browser socket refused in its handshake");
            }
        }
    }
}

/// How many signals a page may have relayed: a burst for one WebRTC
/// negotiation (an offer or answer and its candidates), then a few a
/// second. Over it, signals are dropped (the page's negotiation fails and
/// it retries), the link stays.
const SIGNALS_BURST: u32 = 64;
const SIGNALS_PER_SECOND: u32 = 8;

struct SignalBudget {
    limiter: pluresdb_security::RateLimiter,
    started: std::time::Instant,
}

impl SignalBudget {
    fn new(now: Now) -> Self {
        let limit = pluresdb_security::RateLimit { messages_per_second: SIGNALS_PER_SECOND, burst: SIGNALS_BURST };
        Self { limiter: pluresdb_security::RateLimiter::new(limit), started: now.instant }
    }
}

impl SignalBudget {
    /// Whether one more signal from `page` is within its budget.
    fn admits(&mut self, page: &PeerId, now: Now) -> bool {
        let now_ms = u64::try_from(now.instant.saturating_duration_since(self.started).as_millis()).unwrap_or(u64::MAX);
        self.limiter.check(&page.to_string(), now_ms).is_ok()
    }
}

/// Passes a page's signal on to the page it names, naming the sender as
/// this link authenticated it; a signal for a peer that is not a linked
/// page is dropped.
fn relay_signal(shared: &Shared, from: &PeerId, to: &str, data: Bytes) {
    let Ok(to) = to.parse::<PeerId>() else { return };
    let out = lock(&shared.state).links.get(&to).map(|link| link.out.clone());
    let Some(out) = out else {
        tracing::debug!(%from, %to, "signal for a peer that is not a linked page; dropped");
        return;
    };
    let frame = NetworkMessage::Signal { peer: from.to_string(), data }.to_frame();
    let _ = out.try_send(frame);
}

/// The most page ids one `pages` signal lists (about 55 bytes each, well
/// under the signal's 64 KiB).
pub const MAX_ANNOUNCED_PAGES: usize = 256;

/// Tells every linked page which other pages are linked to this node now
/// (a `signal` from the node's own id, `{"type":"pages","pages":[ids]}`),
/// so that apps can open direct links without exchanging ids themselves.
/// Sent when a page is admitted or leaves; a page whose queue is full
/// misses one list and gets the next.
fn announce_pages(shared: &Shared, node: &PeerId) {
    let links: Vec<(PeerId, mpsc::Sender<Frame>)> =
        lock(&shared.state).links.iter().map(|(peer, link)| (*peer, link.out.clone())).collect();
    for (page, out) in &links {
        let others: Vec<String> =
            links.iter().filter(|(other, _)| other != page).take(MAX_ANNOUNCED_PAGES).map(|(other, _)| other.to_string()).collect();
        let data = serde_json::json!({"type": "pages", "pages": others}).to_string();
        let _ = out.try_send(NetworkMessage::Signal { peer: node.to_string(), data: Bytes::from(data) }.to_frame());
    }
}

/// Hands a signal addressed to the node to its WebRTC engine; without
/// one, or with its queue full, it is dropped.
fn to_webrtc_engine(shared: &Shared, signal: NodeSignal) {
    let sink = lock(&shared.state).node_signals.clone();
    match sink {
        Some(sink) => {
            if sink.try_send(signal).is_err() {
                tracing::debug!("the WebRTC engine's signal queue is full; signal dropped");
            }
        }
        None => tracing::debug!(page = %signal.page, "a signal for this node, which runs no WebRTC engine; dropped"),
    }
}

async fn send(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>, frame: &Frame) -> std::result::Result<(), ()> {
    let mut bytes = Vec::with_capacity(crate::codec::HEADER_LEN + frame.payload.len());
    bytes.extend_from_slice(&frame.header().map_err(|_| ())?);
    bytes.extend_from_slice(&frame.payload);
    ws.send(Message::Binary(Bytes::from(bytes))).await.map_err(|_| ())
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reports an admitted page to the peer registry and the sync engine.
async fn connected(shared: &Shared, peer: PeerId, from: SocketAddr, replaced: bool) -> Arc<crate::PeerStats> {
    let now = Utc::now();
    let info = PeerInfo {
        peer_id: peer,
        address: from.to_string(),
        transport: Transport::WebSocket,
        direction: Direction::Accepted,
        listen_addresses: Vec::new(),
        connected_at: now,
        last_seen: now,
        rtt: None,
        bytes_sent: 0,
        bytes_received: 0,
        connected: true,
    };
    let stats = shared.peers.peer_connected(info);
    if replaced {
        shared.sync.deliver(PeerEvent::Disconnected { peer_id: peer, reason: "replaced by a newer connection".to_owned() }).await;
    }
    shared.sync.deliver(PeerEvent::Connected { peer_id: peer, address: from.to_string(), transport: Transport::WebSocket }).await;
    stats
}
