//! [`WebRtcNetworkEngine`]: browser pages link to a node over a WebRTC
//! data channel (str0m, sans-IO), signalled over the page's WebSocket link
//! ([`crate::websocket`]), carrying the same link frames as that link
//! through the same [`SocketLink`]: ids proved by signature, the network
//! secret, then sync (`docs/browser.md`, "WebRTC to the node").
//!
//! How a page comes to use it: when the WebSocket engine admits a page it
//! says the node takes WebRTC ([`crate::websocket::WEBRTC_OFFERED`]); the
//! page sends an SDP offer as a `signal` frame addressed to the node's own
//! peer id; the WebSocket engine hands it here ([`NodeSignal`]); this
//! engine answers with one host candidate (its UDP socket; ICE-lite: the
//! browser checks, the node answers) and runs the session on its one UDP
//! socket. Once the data channel's link is established the page's sync
//! moves to it (`SyncHandle` prefers a page's WebRTC link to its
//! WebSocket); when it fails, sync falls back to the WebSocket.
//!
//! The link on the channel binds both DTLS fingerprints from the SDP into
//! its identity proofs ([`webrtc_channel_binding`]): whoever rewrote the
//! SDP in transit to sit in the middle of DTLS makes the link fail.
//!
//! Limits (each refused with a reason, the node and other sessions going
//! on): [`WebRtcLimits`] sessions in all and per IP address, one session
//! per page (a new offer replaces it), the handshake (ICE, DTLS, SCTP and
//! the link's) within `handshake_timeout` of the offer, data channels per
//! session, remote candidates per session, data-channel messages of at
//! most [`CHANNEL_CHUNK_BYTES`] and frames of at most one frame's size,
//! binary messages only; a datagram no session takes is dropped.

use crate::engine::{identity_and_policy, NetworkEngine, Result};
use crate::events::{PeerEvent, SyncHandle};
use crate::link::{outgoing, LinkEvent, Now, LINGER};
use crate::message::NetworkMessage;
use crate::peer::{Direction, PeerInfo, PeerManager, PeerStats, Transport};
use crate::websocket::{NodeSignal, NODE_SIGNALS};
use crate::{NetworkConfig, NetworkError, ReceiveLimits};
use bytes::Bytes;
use chrono::Utc;
use pluresdb_link::codec::CHANNEL_CHUNK_BYTES;
use pluresdb_link::socket::{webrtc_channel_binding, Side, SocketLink, SocketLinkConfig};
use pluresdb_link::{Frame, FrameDecoder};
use pluresdb_security::{AccessPolicy, Identity, PeerId};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use str0m::change::SdpOffer;
use str0m::channel::ChannelId;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

/// Bytes of frames queued for one page before `send_message` answers
/// `PeerBusy`: two of the largest frames.
pub const OUTBOUND_BYTES: usize = 2 * crate::MAX_FRAME_BYTES;

/// Commands queued for the engine's task.
const COMMANDS: usize = 4_096;

/// The largest datagram read (larger ones are cut and then refused).
const DATAGRAM_BYTES: usize = 2_048;

/// What one node takes of WebRTC sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebRtcLimits {
    /// Sessions at once, being set up or up. Default 64.
    pub max_sessions: usize,
    /// Sessions at once from one IP address (as the page's WebSocket
    /// came from). Default 8.
    pub max_sessions_per_ip: usize,
    /// Data channels a session may open: the first carries the link, the
    /// others are closed, and one past this many ends the session.
    /// Default 4.
    pub max_channels_per_session: usize,
    /// Remote ICE candidates a session takes; more are ignored. Default 32.
    pub max_candidates: usize,
}

impl Default for WebRtcLimits {
    fn default() -> Self {
        Self { max_sessions: 64, max_sessions_per_ip: 8, max_channels_per_session: 4, max_candidates: 32 }
    }
}

/// The node's WebRTC engine for browser pages (see the module docs).
#[derive(Clone)]
pub struct WebRtcNetworkEngine {
    shared: Arc<Shared>,
}

struct Shared {
    config: NetworkConfig,
    listen: SocketAddr,
    limits: WebRtcLimits,
    peers: Arc<PeerManager>,
    sync: SyncHandle,
    state: Mutex<State>,
    signals: mpsc::Sender<NodeSignal>,
    /// Datagrams no session took (junk, or for a session gone).
    dropped_datagrams: AtomicU64,
}

#[derive(Default)]
struct State {
    identity: Option<Identity>,
    policy: Option<AccessPolicy>,
    local_addr: Option<SocketAddr>,
    signal_rx: Option<mpsc::Receiver<NodeSignal>>,
    commands: Option<mpsc::Sender<Command>>,
    shutdown: Option<watch::Sender<bool>>,
    stopped: Option<tokio::task::JoinHandle<()>>,
    /// Pages whose link is up, with the bytes queued for them.
    links: HashMap<PeerId, Arc<AtomicUsize>>,
    /// Sessions being set up or up, for the limits' counts (kept by the
    /// task, read by tests and `/network`).
    sessions: usize,
}

enum Command {
    Send(PeerId, Frame),
    Close(PeerId, String),
    Policy(AccessPolicy),
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl WebRtcNetworkEngine {
    /// An engine that will take its UDP socket at `listen` (port 0: one
    /// from the OS), reporting to `peers` and `sync`.
    pub fn new(config: NetworkConfig, listen: SocketAddr, peers: Arc<PeerManager>, sync: SyncHandle) -> Self {
        let (signals, signal_rx) = mpsc::channel(NODE_SIGNALS);
        let state = State { signal_rx: Some(signal_rx), ..State::default() };
        let shared = Shared {
            config,
            listen,
            limits: WebRtcLimits::default(),
            peers,
            sync,
            state: Mutex::new(state),
            signals,
            dropped_datagrams: AtomicU64::new(0),
        };
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

    /// Runs with `limits` (before [`start`](NetworkEngine::start)).
    pub fn with_limits(self, limits: WebRtcLimits) -> Self {
        let mut shared = Arc::try_unwrap(self.shared).unwrap_or_else(|_| panic!("with_limits is called before the engine is shared"));
        shared.limits = limits;
        Self { shared: Arc::new(shared) }
    }

    /// Changes who is admitted from now on; pages the new policy refuses
    /// are closed.
    pub fn set_access_policy(&self, policy: AccessPolicy) {
        let commands = {
            let mut state = lock(&self.shared.state);
            state.policy = Some(policy.clone());
            state.commands.clone()
        };
        if let Some(commands) = commands {
            let _ = commands.try_send(Command::Policy(policy));
        }
    }

    /// Where signals addressed to the node go: give it to the WebSocket
    /// engine ([`crate::WebSocketNetworkEngine::with_node_signals`]).
    pub fn signal_sender(&self) -> mpsc::Sender<NodeSignal> {
        self.shared.signals.clone()
    }

    /// The UDP socket's address, once started.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        lock(&self.shared.state).local_addr
    }

    /// Sessions being set up or up now.
    pub fn session_count(&self) -> usize {
        lock(&self.shared.state).sessions
    }

    /// Datagrams no session took since the start.
    pub fn dropped_datagrams(&self) -> u64 {
        self.shared.dropped_datagrams.load(Ordering::Relaxed)
    }
}

#[async_trait::async_trait]
impl NetworkEngine for WebRtcNetworkEngine {
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
        let listen = self.shared.listen;
        let bind_error = |source| NetworkError::Bind { address: listen.to_string(), source };
        let socket = UdpSocket::bind(listen).await.map_err(bind_error)?;
        let local = socket.local_addr().map_err(bind_error)?;
        let (shutdown, stopped) = watch::channel(false);
        let (commands, command_rx) = mpsc::channel(COMMANDS);
        let signal_rx = {
            let mut state = lock(&self.shared.state);
            state.local_addr = Some(local);
            state.shutdown = Some(shutdown);
            state.commands = Some(commands);
            state.signal_rx.take()
        };
        let Some(signal_rx) = signal_rx else { return Err(NetworkError::AlreadyRunning) };
        tracing::info!(address = %local, "browser pages connect over WebRTC (UDP)");
        let task = tokio::spawn(run(self.shared.clone(), socket, local, signal_rx, command_rx, stopped));
        lock(&self.shared.state).stopped = Some(task);
        Ok(())
    }

    async fn stop(&mut self) -> Result<()> {
        let (shutdown, task) = {
            let mut state = lock(&self.shared.state);
            (state.shutdown.take(), state.stopped.take())
        };
        let Some(shutdown) = shutdown else { return Err(NetworkError::NotRunning) };
        let _ = shutdown.send(true);
        if let Some(task) = task {
            let _ = tokio::time::timeout(LINGER * 2, task).await;
        }
        Ok(())
    }

    async fn send_message(&self, peer_id: &PeerId, message: NetworkMessage) -> Result<()> {
        let transmit = outgoing(&message)?;
        let (queued, commands) = {
            let state = lock(&self.shared.state);
            (state.links.get(peer_id).cloned(), state.commands.clone())
        };
        let (Some(queued), Some(commands)) = (queued, commands) else { return Err(NetworkError::PeerNotConnected(peer_id.to_string())) };
        let size = crate::codec::HEADER_LEN + transmit.frame.payload.len();
        if queued.load(Ordering::Relaxed) + size > OUTBOUND_BYTES {
            return Err(NetworkError::PeerBusy { peer: peer_id.to_string() });
        }
        queued.fetch_add(size, Ordering::Relaxed);
        commands.try_send(Command::Send(*peer_id, transmit.frame)).map_err(|err| {
            queued.fetch_sub(size, Ordering::Relaxed);
            match err {
                mpsc::error::TrySendError::Full(_) => NetworkError::PeerBusy { peer: peer_id.to_string() },
                mpsc::error::TrySendError::Closed(_) => NetworkError::PeerNotConnected(peer_id.to_string()),
            }
        })
    }

    async fn broadcast_message(&self, message: NetworkMessage) -> Result<()> {
        let peers: Vec<PeerId> = lock(&self.shared.state).links.keys().copied().collect();
        for peer in peers {
            let _ = self.send_message(&peer, message.clone()).await;
        }
        Ok(())
    }

    async fn connect_peer(&self, address: &str) -> Result<PeerId> {
        Err(NetworkError::Connect {
            address: address.to_owned(),
            reason: "the WebRTC engine only answers browser pages' offers; nodes dial nodes over QUIC or libp2p".to_owned(),
        })
    }

    async fn disconnect_peer(&self, peer_id: &PeerId) -> Result<()> {
        let commands = {
            let state = lock(&self.shared.state);
            state.links.contains_key(peer_id).then(|| state.commands.clone()).flatten()
        };
        match commands {
            Some(commands) => {
                let _ = commands.try_send(Command::Close(*peer_id, "disconnected by the node".to_owned()));
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

/// One page's WebRTC session.
struct Session {
    /// The page, as its WebSocket link proved it; the data channel's link
    /// must prove the same id.
    page: PeerId,
    ip: IpAddr,
    rtc: Rtc,
    /// Where the page's datagrams arrive (the host candidate).
    local: SocketAddr,
    link: SocketLink,
    channel: Option<ChannelId>,
    channels_opened: usize,
    candidates: usize,
    deadline: Instant,
    decoder: FrameDecoder,
    /// Pieces of frames waiting for room in the channel.
    out: VecDeque<Vec<u8>>,
    /// Bytes queued by `send_message` and not yet written.
    queued: Arc<AtomicUsize>,
    /// When str0m wants `handle_input(Timeout)` next.
    rtc_at: Option<Instant>,
    /// The page's registration, once its link is up.
    stats: Option<Arc<PeerStats>>,
    ended: Option<String>,
}

impl Session {
    fn end(&mut self, reason: &str) {
        if self.ended.is_none() {
            tracing::debug!(page = %self.page, reason, "WebRTC session ends");
            self.link.close(reason);
            self.ended = Some(reason.to_owned());
        }
    }

    /// Queues one frame as pieces for the channel.
    fn queue(&mut self, frame: &Frame) {
        let Ok(header) = frame.header() else { return };
        let mut bytes = Vec::with_capacity(header.len() + frame.payload.len());
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&frame.payload);
        self.out.extend(bytes.chunks(CHANNEL_CHUNK_BYTES).map(<[u8]>::to_vec));
    }

    /// One data-channel message: a piece of the page's frame stream.
    fn receive(&mut self, bytes: &[u8]) {
        if bytes.len() > CHANNEL_CHUNK_BYTES {
            return self.end(&format!("a data-channel message of {} bytes (limit {CHANNEL_CHUNK_BYTES})", bytes.len()));
        }
        if let Some(stats) = &self.stats {
            stats.record_received(bytes.len(), Utc::now());
        }
        self.decoder.extend(bytes);
        loop {
            match self.decoder.decode() {
                Ok(Some(frame)) => match frame.to_bytes() {
                    Ok(whole) => self.link.handle_message(&whole, Now::system()),
                    Err(err) => return self.end(&format!("bad frame: {err}")),
                },
                Ok(None) => return,
                Err(err) => return self.end(&format!("bad frame on the data channel: {err}")),
            }
        }
    }
}

/// The engine's task: the UDP socket, every session, signals and commands.
async fn run(
    shared: Arc<Shared>,
    socket: UdpSocket,
    local: SocketAddr,
    mut signals: mpsc::Receiver<NodeSignal>,
    mut commands: mpsc::Receiver<Command>,
    mut stopped: watch::Receiver<bool>,
) {
    let crypto = Arc::new(str0m::crypto::from_feature_flags());
    let mut sessions: HashMap<PeerId, Session> = HashMap::new();
    let mut buf = vec![0u8; DATAGRAM_BYTES];
    loop {
        for session in sessions.values_mut() {
            drive(&shared, &socket, session).await;
        }
        finish_ended(&shared, &socket, &mut sessions).await;
        lock(&shared.state).sessions = sessions.len();
        let next = sessions.values_mut().filter_map(next_timeout).min();
        tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok((len, source)) => receive(&shared, &mut sessions, source, &buf[..len]),
                Err(err) => tracing::debug!(error = %err, "reading the WebRTC socket failed"),
            },
            Some(signal) = signals.recv() => on_signal(&shared, &crypto, local, &mut sessions, signal),
            Some(command) = commands.recv() => match command {
                Command::Send(peer, frame) => {
                    if let Some(session) = sessions.get_mut(&peer).filter(|s| s.stats.is_some()) {
                        session.queue(&frame);
                    } else if let Some(queued) = lock(&shared.state).links.get(&peer) {
                        queued.fetch_sub(crate::codec::HEADER_LEN + frame.payload.len(), Ordering::Relaxed);
                    }
                }
                Command::Close(peer, reason) => {
                    if let Some(session) = sessions.get_mut(&peer) {
                        session.end(&reason);
                    }
                }
                Command::Policy(policy) => {
                    for session in sessions.values_mut() {
                        if session.stats.is_some() && policy.admits(&session.page.to_string(), true).is_err() {
                            session.end("the access rule changed");
                        }
                    }
                }
            },
            () = sleep_until(next) => {
                let now = Instant::now();
                for session in sessions.values_mut() {
                    if session.stats.is_none() && now >= session.deadline {
                        session.end("the WebRTC handshake did not complete in time");
                    }
                    if session.rtc.handle_input(Input::Timeout(now)).is_err() {
                        session.end("the WebRTC session failed");
                    }
                    session.link.handle_timeout(Now::system());
                }
            }
            _ = stopped.changed() => break,
        }
    }
    // Goodbyes out (bounded), then every page is told it is gone.
    for session in sessions.values_mut() {
        session.end("node shutting down");
    }
    let linger = Instant::now() + LINGER;
    while Instant::now() < linger && sessions.values().any(|s| !s.out.is_empty()) {
        for session in sessions.values_mut() {
            drive(&shared, &socket, session).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    finish_ended(&shared, &socket, &mut sessions).await;
    lock(&shared.state).sessions = 0;
}

fn next_timeout(session: &mut Session) -> Option<Instant> {
    let link = session.link.poll_timeout();
    let deadline = session.stats.is_none().then_some(session.deadline);
    [link, deadline, session.rtc_at].into_iter().flatten().min()
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// A datagram: to the session that takes it, else dropped.
fn receive(shared: &Shared, sessions: &mut HashMap<PeerId, Session>, source: SocketAddr, bytes: &[u8]) {
    let now = Instant::now();
    for session in sessions.values_mut().filter(|s| s.ended.is_none()) {
        let Ok(receive) = Receive::new(Protocol::Udp, source, session.local, bytes) else { break };
        let input = Input::Receive(now, receive);
        if session.rtc.accepts(&input) {
            if let Err(err) = session.rtc.handle_input(input) {
                session.end(&format!("a datagram the WebRTC session refused: {err}"));
            }
            return;
        }
    }
    let dropped = shared.dropped_datagrams.fetch_add(1, Ordering::Relaxed);
    if dropped.is_power_of_two() {
        tracing::debug!(%source, dropped = dropped + 1, "a datagram no WebRTC session takes; dropped");
    }
}

/// A signal a page addressed to the node: an offer starts (or replaces)
/// its session, a candidate joins it; anything else gets an `error`.
fn on_signal(
    shared: &Shared,
    crypto: &Arc<str0m::crypto::CryptoProvider>,
    local: SocketAddr,
    sessions: &mut HashMap<PeerId, Session>,
    signal: NodeSignal,
) {
    let message: Value = serde_json::from_slice(&signal.data).unwrap_or(Value::Null);
    let attempt = message.get("attempt").cloned().unwrap_or(Value::Null);
    let refuse = |reason: String| {
        tracing::debug!(page = %signal.page, %reason, "WebRTC signal refused");
        signal.reply.send(Bytes::from(json!({"type": "error", "attempt": attempt, "message": reason}).to_string()));
    };
    match message.get("type").and_then(Value::as_str) {
        Some("offer") => {}
        Some("candidate") => {
            if let Some(session) = sessions.get_mut(&signal.page).filter(|s| s.ended.is_none()) {
                let text = message.pointer("/candidate/candidate").and_then(Value::as_str).unwrap_or("");
                if session.candidates < shared.limits.max_candidates && !text.is_empty() {
                    if let Ok(candidate) = Candidate::from_sdp_string(text) {
                        session.candidates += 1;
                        session.rtc.add_remote_candidate(candidate);
                    }
                }
            }
            return;
        }
        _ => return refuse("not a WebRTC signal this node takes (an offer or a candidate)".to_owned()),
    }
    let Some(sdp) = message.get("sdp").and_then(Value::as_str) else { return refuse("the offer has no sdp".to_owned()) };
    // One session per page: its new offer replaces the old session.
    if let Some(old) = sessions.get_mut(&signal.page) {
        old.end("replaced by the page's new offer");
    }
    let live = sessions.values().filter(|s| s.ended.is_none());
    let (total, from_ip) = live.fold((0, 0), |(t, i), s| (t + 1, i + usize::from(s.ip == signal.page_addr.ip())));
    if total >= shared.limits.max_sessions {
        return refuse(format!("too many WebRTC sessions (limit {})", shared.limits.max_sessions));
    }
    if from_ip >= shared.limits.max_sessions_per_ip {
        return refuse(format!("too many WebRTC sessions from {} (limit {})", signal.page_addr.ip(), shared.limits.max_sessions_per_ip));
    }
    let offer = match SdpOffer::from_sdp_string(sdp) {
        Ok(offer) => offer,
        Err(err) => return refuse(format!("not an SDP offer: {err}")),
    };
    let (identity, policy) = {
        let state = lock(&shared.state);
        (state.identity.clone(), state.policy.clone())
    };
    let (Some(identity), Some(policy)) = (identity, policy) else { return };
    let now = Instant::now();
    let mut rtc = RtcConfig::new().set_ice_lite(true).set_crypto_provider(crypto.clone()).build(now);
    // The page reaches the node's UDP socket at the IP it reached its
    // WebSocket on, when the socket listens on every address.
    let candidate_addr = if local.ip().is_unspecified() { SocketAddr::new(signal.node_addr.ip(), local.port()) } else { local };
    match Candidate::host(candidate_addr, "udp") {
        Ok(candidate) => {
            rtc.add_local_candidate(candidate);
        }
        Err(err) => return refuse(format!("no candidate at {candidate_addr}: {err}")),
    }
    let answer = match rtc.sdp_api().accept_offer(offer) {
        Ok(answer) => answer,
        Err(err) => return refuse(format!("the offer cannot be accepted: {err}")),
    };
    // The DTLS fingerprints from the SDP go into the link's proofs: a
    // relay that swapped one cannot sit in the middle of DTLS unseen.
    // (str0m checks the page's DTLS certificate against the offer's.)
    let local_fingerprint = sdp_fingerprint(rtc.direct_api().local_dtls_fingerprint());
    let Some(page_fingerprint) = fingerprint_in_sdp(sdp) else {
        return refuse("the offer has no DTLS fingerprint".to_owned());
    };
    let mut nonce = [0u8; 32];
    if getrandom::fill(&mut nonce).is_err() {
        return refuse("no randomness for the link".to_owned());
    }
    let config = &shared.config;
    let deadline = now + config.handshake_timeout;
    let mut link_config = SocketLinkConfig::new(identity, Side::Server, nonce, policy, Now::system());
    link_config.expected_peer = Some(signal.page);
    link_config.handshake_deadline = deadline;
    link_config.handshake_timeout = config.handshake_timeout;
    link_config.heartbeat_interval = config.heartbeat_interval;
    link_config.idle_timeout = Some(config.connection_timeout);
    link_config.limits = ReceiveLimits::default();
    link_config.channel_binding = Some(webrtc_channel_binding(&page_fingerprint, &local_fingerprint));
    let answer = json!({"type": "answer", "sdp": answer.to_sdp_string(), "attempt": attempt}).to_string();
    if !signal.reply.send(Bytes::from(answer)) {
        return;
    }
    let session = Session {
        page: signal.page,
        ip: signal.page_addr.ip(),
        rtc,
        local: candidate_addr,
        link: SocketLink::new(link_config),
        channel: None,
        channels_opened: 0,
        candidates: 0,
        deadline,
        decoder: FrameDecoder::new(),
        out: VecDeque::new(),
        queued: Arc::new(AtomicUsize::new(0)),
        rtc_at: None,
        stats: None,
        ended: None,
    };
    // The replaced session (if any) is finished by the loop; this one
    // takes its place under the page's id once that is done.
    if let Some(mut old) = sessions.insert(signal.page, session) {
        old.end("replaced by the page's new offer");
        if old.stats.is_some() {
            // Registered: unregister it now, without the loop's help.
            unregister_later(shared, old);
        }
    }
}

/// A DTLS fingerprint as SDP writes it: `sha-256 AB:CD:...`.
pub fn sdp_fingerprint(fingerprint: &str0m::config::Fingerprint) -> String {
    let hex: Vec<String> = fingerprint.bytes.iter().map(|b| format!("{b:02X}")).collect();
    format!("{} {}", fingerprint.hash_func, hex.join(":"))
}

/// The DTLS fingerprint an SDP names (`a=fingerprint:sha-256 AB:...`,
/// SHA-256 preferred), as `sha-256 AB:...`.
pub fn fingerprint_in_sdp(sdp: &str) -> Option<String> {
    let named: Vec<(&str, &str)> = sdp
        .lines()
        .filter_map(|line| line.trim().strip_prefix("a=fingerprint:"))
        .filter_map(|rest| {
            let mut parts = rest.split_whitespace();
            Some((parts.next()?, parts.next()?))
        })
        .collect();
    let (hash, value) = named.iter().find(|(hash, _)| hash.eq_ignore_ascii_case("sha-256")).or(named.first())?;
    Some(format!("{hash} {value}"))
}

/// A replaced session that was registered: the page's registration goes
/// (its new session registers again once up).
fn unregister_later(shared: &Shared, old: Session) {
    let page = old.page;
    lock(&shared.state).links.remove(&page);
    shared.peers.peer_disconnected(&page);
    let sync = shared.sync.clone();
    tokio::spawn(async move {
        sync.deliver(PeerEvent::Disconnected { peer_id: page, reason: "replaced by the page's new offer".to_owned() }).await;
    });
}

/// Moves a session on: its link's events and frames, the channel, and
/// str0m's output (datagrams out, events in).
async fn drive(shared: &Shared, socket: &UdpSocket, session: &mut Session) {
    for _round in 0..64 {
        let mut moved = false;
        while let Some(event) = session.link.poll_event() {
            moved = true;
            on_link_event(shared, session, event).await;
        }
        while let Some(frame) = session.link.poll_transmit() {
            moved = true;
            session.queue(&frame);
        }
        if let Some(id) = session.channel {
            while let Some(piece) = session.out.front() {
                let Some(mut channel) = session.rtc.channel(id) else { break };
                match channel.write(true, piece) {
                    Ok(true) => {
                        let len = piece.len();
                        session.out.pop_front();
                        if let Some(stats) = &session.stats {
                            stats.record_sent(len);
                        }
                        let _ = session.queued.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| Some(q.saturating_sub(len)));
                        moved = true;
                    }
                    Ok(false) => break,
                    Err(err) => {
                        session.end(&format!("writing the data channel failed: {err}"));
                        break;
                    }
                }
            }
        }
        loop {
            match session.rtc.poll_output() {
                Ok(Output::Timeout(at)) => {
                    session.rtc_at = Some(at);
                    break;
                }
                Ok(Output::Transmit(transmit)) => {
                    let _ = socket.try_send_to(&transmit.contents, transmit.destination);
                }
                Ok(Output::Event(event)) => {
                    moved = true;
                    on_rtc_event(shared, session, event);
                }
                Err(err) => {
                    session.end(&format!("the WebRTC session failed: {err}"));
                    break;
                }
            }
        }
        if !moved {
            break;
        }
    }
}

fn on_rtc_event(shared: &Shared, session: &mut Session, event: Event) {
    match event {
        Event::ChannelOpen(id, _label) => {
            session.channels_opened += 1;
            if session.channels_opened > shared.limits.max_channels_per_session {
                session.end(&format!("opened more than {} data channels", shared.limits.max_channels_per_session));
            } else if session.channel.is_none() {
                session.channel = Some(id);
            } else {
                // One channel carries the link; others are closed.
                session.rtc.direct_api().close_data_channel(id);
            }
        }
        Event::ChannelData(data) if Some(data.id) == session.channel => {
            if !data.binary {
                return session.end("text on the data channel (the link is binary)");
            }
            session.receive(&data.data);
        }
        Event::ChannelClose(id) if Some(id) == session.channel => session.link.handle_lost("the data channel closed"),
        Event::IceConnectionStateChange(IceConnectionState::Disconnected) => session.link.handle_lost("ICE disconnected"),
        _ => {}
    }
}

async fn on_link_event(shared: &Shared, session: &mut Session, event: LinkEvent) {
    match event {
        LinkEvent::Established => {
            let Some(peer) = session.link.remote_peer() else { return };
            let admitted = {
                let mut state = lock(&shared.state);
                if !state.links.contains_key(&peer) && state.links.len() >= shared.config.max_connections {
                    false
                } else {
                    state.links.insert(peer, session.queued.clone());
                    true
                }
            };
            if !admitted {
                return session.end(&format!("too many connections (limit {})", shared.config.max_connections));
            }
            let now = Utc::now();
            let info = PeerInfo {
                peer_id: peer,
                address: session.reply_address(),
                transport: Transport::WebRtc,
                direction: Direction::Accepted,
                listen_addresses: Vec::new(),
                connected_at: now,
                last_seen: now,
                rtt: None,
                bytes_sent: 0,
                bytes_received: 0,
                connected: true,
            };
            session.stats = Some(shared.peers.peer_connected(info));
            tracing::info!(%peer, "browser page connected over WebRTC");
            shared
                .sync
                .deliver(PeerEvent::Connected { peer_id: peer, address: session.reply_address(), transport: Transport::WebRtc })
                .await;
        }
        LinkEvent::Sync(bytes) => {
            if session.stats.is_some() {
                shared.sync.deliver(PeerEvent::Message { peer_id: session.page, bytes }).await;
            }
        }
        LinkEvent::Heartbeat { sent } => {
            if let Some(stats) = &session.stats {
                stats.record_heartbeat(sent, Duration::ZERO, Utc::now());
            }
        }
        LinkEvent::PeerExchangeRequested => session.link.answer_peer_exchange(Vec::new()),
        // Signals reach the node over the page's WebSocket, not here.
        LinkEvent::Signal { .. } | LinkEvent::PeersLearned(_) | LinkEvent::PeerAdmitted { .. } => {}
        LinkEvent::Closed(end) => {
            if session.ended.is_none() {
                session.ended = Some(end.to_string());
            }
        }
    }
}

/// Closes the session (SCTP shutdown and DTLS close_notify), which the
/// page sees at once. A session that only went silent was noticed when the
/// page's ICE gave up on the node, 20-30 s later, its sync waiting on a
/// dead link meanwhile.
fn close(socket: &UdpSocket, session: &mut Session) {
    if session.rtc.close().is_err() {
        return;
    }
    // Out now, without waiting for the page's replies: the session is
    // dropped after this. Bounded, though str0m ends the round with a
    // timeout after a few datagrams.
    for _ in 0..64 {
        match session.rtc.poll_output() {
            Ok(Output::Transmit(transmit)) => {
                let _ = socket.try_send_to(&transmit.contents, transmit.destination);
            }
            Ok(Output::Event(_)) => {}
            Ok(Output::Timeout(_)) | Err(_) => break,
        }
    }
}

impl Session {
    /// The page's address as the registry shows it: the IP its WebSocket
    /// came from (its UDP address is ICE's choice).
    fn reply_address(&self) -> String {
        self.ip.to_string()
    }
}

/// Removes ended sessions (their last frames were written to the channel
/// as far as it took them), closing them and unregistering their pages.
async fn finish_ended(shared: &Shared, socket: &UdpSocket, sessions: &mut HashMap<PeerId, Session>) {
    let done: Vec<PeerId> = sessions.iter().filter(|(_, s)| s.ended.is_some()).map(|(page, _)| *page).collect();
    for page in done {
        let Some(mut session) = sessions.remove(&page) else { continue };
        close(socket, &mut session);
        session.rtc.disconnect();
        let reason = session.ended.clone().unwrap_or_default();
        if session.stats.is_some() {
            lock(&shared.state).links.remove(&page);
            shared.peers.peer_disconnected(&page);
            tracing::info!(%page, %reason, "browser page's WebRTC link closed");
            shared.sync.deliver(PeerEvent::Disconnected { peer_id: page, reason }).await;
        }
    }
}
