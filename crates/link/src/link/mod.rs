//! [`Link`]: the PluresDB link protocol to one peer as a sans-IO state
//! machine, the same for every transport (QUIC today, libp2p and WebRTC
//! next). A transport authenticates the peer (TLS, Noise, DTLS), gives the
//! link the peer's id and a 32-byte value bound to that session, and then
//! only moves bytes and time in and frames out; everything else the link
//! decides:
//!
//! - **Admission**: both sides send a `hello` at once, with a proof of the
//!   network secret over the session binding and both peer ids; each checks
//!   the other's version, peer id and proof against its
//!   [`AccessPolicy`], and confirms admission with a first `heartbeat` (or
//!   refuses with an `error` frame). Frames are limited to
//!   [`HANDSHAKE_MAX_PAYLOAD`] until then.
//! - **Liveness**: a `heartbeat` every `heartbeat_interval` carrying the
//!   sender's wall clock; optionally, a link that hears nothing for
//!   `idle_timeout` closes (for transports without an idle timeout of
//!   their own).
//! - **Receive limits**: every frame counts against the peer's
//!   [`ReceiveLimits`] (frames and KiB per second, largest payload); a peer
//!   over them, or sending bytes that are not frames, is refused with an
//!   `error` frame whose code says why.
//! - **Peer exchange**: asking on admission and every
//!   [`EXCHANGE_ASK_INTERVAL`] (if the node looks for peers), answering at
//!   most once per [`EXCHANGE_ANSWER_INTERVAL`].
//! - **Goodbye** on a local close; the peer's `goodbye` or `error` ends the
//!   link.
//!
//! The machine never reads a clock or a socket: time comes in as [`Now`],
//! input as bytes with the [`Lane`] they arrived on, and the caller polls
//! what to do: [`Link::poll_transmit`] (a frame and its lane),
//! [`Link::poll_event`] (admitted, established, a sync message, peers
//! learned, closed...) and [`Link::poll_timeout`] (when to call
//! [`Link::handle_timeout`]). quinn-proto is the model.
//!
//! **Lanes.** [`Lane::Control`] carries every frame but `DataSync`
//! messages, which go on [`Lane::Bulk`], so that megabytes of catch-up data
//! never delay a heartbeat or an acknowledgement on a transport that can
//! keep them apart (QUIC: two streams, control at a higher priority; a
//! multiplexed byte stream such as yamux: two streams). A transport with a
//! single ordered byte stream writes both lanes to it, control first, and
//! feeds everything it reads as [`Lane::Control`] (the control lane accepts
//! sync frames of every kind).
//!
//! A complete exchange between two machines, with the wire replaced by
//! moving the transmits across:
//!
//! ```
//! use pluresdb_link::link::{Link, LinkConfig, LinkEvent, Now};
//! use pluresdb_security::{AccessPolicy, Identity, NetworkSecret};
//! use std::time::Duration;
//!
//! let secret = NetworkSecret::generate().unwrap();
//! let (a, b) = (Identity::generate().unwrap().peer_id(), Identity::generate().unwrap().peer_id());
//! let now = Now::system();
//! let config = |local, remote| LinkConfig {
//!     // QUIC: TLS keying material exported from the connection.
//!     binding: [7; 32],
//!     ..LinkConfig::new(local, remote, AccessPolicy::with_secret(secret.clone()), now.instant + Duration::from_secs(5))
//! };
//! let mut links = [Link::new(config(a, b), now), Link::new(config(b, a), now)];
//! for _ in 0..2 {
//!     for from in 0..2 {
//!         while let Some(transmit) = links[from].poll_transmit() {
//!             let bytes = transmit.frame.to_bytes().unwrap();
//!             links[1 - from].handle_input(transmit.lane, &bytes, now);
//!         }
//!     }
//! }
//! for link in &mut links {
//!     assert!(matches!(link.poll_event(), Some(LinkEvent::PeerAdmitted { proof_ok: true, .. })));
//!     assert!(matches!(link.poll_event(), Some(LinkEvent::Established)));
//! }
//! ```
//!
//! Calling contract: after every `handle_*` call and after [`Link::close`],
//! take every event (in order: an event may concern the transport, such as
//! [`LinkEvent::PeerAdmitted`], before the frames that follow it are
//! written) and every transmit, and set the timer to `poll_timeout`. Write
//! the link's transmits ahead of anything the node sends on the link
//! itself: when the peer's `hello` and heartbeat arrive in one read,
//! [`LinkEvent::Established`] comes while this side's admission heartbeat
//! is still queued, and a sync message written before it is refused by the
//! peer (`unexpected_message`). After
//! [`LinkEvent::Closed`], write the transmits still queued (a `goodbye` or
//! an `error`, so the peer learns why), give the peer a moment to read them
//! (QUIC: [`LINGER`]), then close the transport with
//! [`LinkEnd::close_code`]; later input is ignored.

use crate::codec::{CodecError, Frame, FrameDecoder, FrameKind, HEADER_LEN, MAX_PAYLOAD_BYTES};
use crate::error::NetworkError;
use crate::limits::ReceiveLimits;
use crate::message::{ErrorCode, ExchangedPeer, Hello, NetworkMessage, MAX_EXCHANGED_ADDRESSES, PROTOCOL_VERSION};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use pluresdb_security::{secret, AccessDenied, AccessPolicy, PeerId, RateLimiter};
use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;
use web_time::Instant;

#[cfg(test)]
mod tests;

/// The largest frame payload accepted before the handshake completes.
pub const HANDSHAKE_MAX_PAYLOAD: usize = 64 * 1024;

/// How long a closing side gives the peer to read its last frame (a
/// `goodbye` or an `error`) and close, before closing itself.
pub const LINGER: Duration = Duration::from_millis(500);

/// The most peers one answer to a peer exchange request names: small enough
/// for one datagram (a bigger one makes quinn keep a bigger send buffer on
/// every connection); a newcomer learns the rest from the peers it dials.
pub const EXCHANGE_ANSWER_PEERS: usize = 8;

/// How often a node that looks for peers asks each connected peer again.
pub const EXCHANGE_ASK_INTERVAL: Duration = Duration::from_secs(30);

/// How often a link answers peer exchange requests at most.
pub const EXCHANGE_ANSWER_INTERVAL: Duration = Duration::from_secs(10);

/// The transport close code of a clean close (after a `goodbye`, or a
/// link lost without a word); refusals close with their [`ErrorCode`].
pub const CLOSE_NORMAL: u32 = 0;

/// How long a link may hear nothing before a new connection from its peer
/// replaces it: one and a half heartbeat intervals and a second. An honest
/// peer that still holds the link sends a heartbeat well within that; one
/// that moved or restarted has let go of it.
pub fn silent_after(heartbeat_interval: Duration) -> Duration {
    heartbeat_interval * 3 / 2 + Duration::from_secs(1)
}

/// The current time, as a link needs it: a monotonic instant for its timers
/// and the wall clock that heartbeats carry. The caller reads the clocks
/// (the machine never does), so tests can run a link on a made-up clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time, for deadlines and rate limits.
    pub instant: Instant,
    /// The wall clock, for the timestamps heartbeats carry.
    pub wall: DateTime<Utc>,
}

impl Now {
    /// Reads the system's clocks (for drivers; the link itself never calls
    /// this). In a browser: `performance.now()` and `Date.now()`.
    pub fn system() -> Self {
        let since_epoch = web_time::SystemTime::now().duration_since(web_time::UNIX_EPOCH).unwrap_or_default();
        let wall = i64::try_from(since_epoch.as_micros()).ok().and_then(DateTime::<Utc>::from_timestamp_micros).unwrap_or_default();
        Self { instant: Instant::now(), wall }
    }

    /// This time moved forward by `by` on both clocks.
    pub fn after(self, by: Duration) -> Self {
        let wall = chrono::Duration::from_std(by).ok().and_then(|by| self.wall.checked_add_signed(by)).unwrap_or(self.wall);
        Self { instant: self.instant + by, wall }
    }
}

/// Which of a link's two ordered channels a frame travels on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Handshake, heartbeats, goodbye, errors, peer exchange, and every
    /// sync message but `DataSync`: small frames that must not wait.
    Control,
    /// `DataSync` messages only, in order among themselves.
    Bulk,
}

/// A frame to write, and the lane to write it on.
#[derive(Clone, Debug, PartialEq)]
pub struct Transmit {
    /// The lane.
    pub lane: Lane,
    /// The frame (header and payload: [`Frame::header`], then the payload
    /// as is).
    pub frame: Frame,
}

/// The frame and lane for a message the node sends (a sync message, a
/// peer exchange, a heartbeat), checked against the frame size limit.
/// `Hello`, `Goodbye` and `Error` are the link's own to send.
pub fn outgoing(message: &NetworkMessage) -> Result<Transmit, NetworkError> {
    if matches!(message, NetworkMessage::Hello(_) | NetworkMessage::Goodbye { .. } | NetworkMessage::Error { .. }) {
        return Err(NetworkError::NotSendable { kind: message.kind() });
    }
    let frame = message.to_frame();
    if frame.payload.len() > MAX_PAYLOAD_BYTES {
        return Err(NetworkError::Codec {
            peer: "local".to_owned(),
            source: CodecError::Oversize { length: frame.payload.len(), limit: MAX_PAYLOAD_BYTES },
        });
    }
    let lane = if message.is_bulk() { Lane::Bulk } else { Lane::Control };
    Ok(Transmit { lane, frame })
}

/// The error code that answers bytes that are not frames.
pub fn codec_error_code(err: &CodecError) -> ErrorCode {
    match err {
        CodecError::UnknownVersion { .. } => ErrorCode::UnsupportedVersion,
        _ => ErrorCode::BadFrame,
    }
}

/// What a link needs to know from the node and the transport.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// This node's peer id.
    pub local_peer: PeerId,
    /// The peer's id, as the transport authenticated it (TLS certificate,
    /// Noise static key). A `hello` naming another is refused.
    pub remote_peer: PeerId,
    /// 32 bytes unique to this transport session and known only to its two
    /// ends, which the secret proofs are bound to (QUIC: the TLS exporter
    /// with label `EXPORTER-pluresdb-hello-v1`). A proof made for one
    /// session does not verify on another, so it cannot be replayed or
    /// relayed by a man in the middle, who would hold two sessions.
    pub binding: [u8; 32],
    /// Who is admitted (mode, secret, allowlist).
    pub policy: AccessPolicy,
    /// Where this node accepts connections, told to the peer in `hello`
    /// (at most 32 are sent).
    pub listen_addresses: Vec<String>,
    /// When the handshake must have completed (the transport's own
    /// handshake counts against the same `handshake_timeout`, so the
    /// transport computes it from when the connection began).
    pub handshake_deadline: Instant,
    /// How long the handshake may take in all (for the error's wording).
    pub handshake_timeout: Duration,
    /// The interval between heartbeats. Default: 5 s.
    pub heartbeat_interval: Duration,
    /// Close the link when nothing arrives for this long; `None` for a
    /// transport whose connections time out on their own (QUIC). Default:
    /// `None`.
    pub idle_timeout: Option<Duration>,
    /// What the peer may send once admitted.
    pub limits: ReceiveLimits,
    /// Whether to ask the peer for the peers it knows (peer exchange).
    /// Default: false.
    pub ask_for_peers: bool,
}

impl LinkConfig {
    /// A configuration with the defaults of `pluresdb_net::NetworkConfig` and
    /// [`ReceiveLimits`], a zero binding and no listen addresses.
    pub fn new(local_peer: PeerId, remote_peer: PeerId, policy: AccessPolicy, handshake_deadline: Instant) -> Self {
        Self {
            local_peer,
            remote_peer,
            binding: [0; 32],
            policy,
            listen_addresses: Vec::new(),
            handshake_deadline,
            handshake_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(5),
            idle_timeout: None,
            limits: ReceiveLimits::default(),
            ask_for_peers: false,
        }
    }
}

/// Something the driver of a link must act on.
#[derive(Clone, Debug, PartialEq)]
pub enum LinkEvent {
    /// This side's access policy admitted the peer; its first heartbeat
    /// ("admitted") is queued. A transport that holds strangers to small
    /// limits raises them now (QUIC: flow-control windows, bulk streams).
    PeerAdmitted {
        /// The peer's `hello` (listen addresses, for peer exchange).
        hello: Hello,
        /// Whether it proved the network secret (kept, so a changed access
        /// policy can be checked against it).
        proof_ok: bool,
    },
    /// The peer admitted this side too (its first heartbeat arrived): the
    /// link is up. Report the peer connected; sync messages may flow, and
    /// the bulk lane may be read.
    Established,
    /// A sync message from the peer: one encoded `SyncMessage`, for
    /// `DataSyncEngine::handle_input` as is.
    Sync(Bytes),
    /// A heartbeat the peer stamped `sent` by its wall clock (for the clock
    /// offset: see `PeerStats::record_heartbeat`).
    Heartbeat {
        /// The peer's clock when it sent the heartbeat.
        sent: DateTime<Utc>,
    },
    /// Peers the peer says it is connected to (hints: check and bound them,
    /// as `PeerManager::learn` does).
    PeersLearned(Vec<ExchangedPeer>),
    /// The peer asked for the peers this node knows, and this link may
    /// answer now: call [`Link::answer_peer_exchange`].
    PeerExchangeRequested,
    /// Signalling from the peer (a `signal` frame): to a node, for the
    /// peer named; to a page, from the peer named (relayed by the node).
    Signal {
        /// The peer named in the frame.
        peer: String,
        /// The payload, opaque to the link.
        data: Bytes,
    },
    /// The link is over; no event follows.
    Closed(LinkEnd),
}

/// Why a link ended.
#[derive(Clone, Debug, PartialEq)]
pub enum LinkEnd {
    /// This node closed it ([`Link::close`]); a `goodbye` is queued.
    Local(String),
    /// This node refused the peer; an `error` frame is queued.
    Refused(Refusal),
    /// The peer said goodbye.
    PeerGoodbye(String),
    /// The peer refused this node (its `error` frame).
    PeerRefused {
        /// The refusal's code.
        code: ErrorCode,
        /// The peer's explanation.
        message: String,
    },
    /// The transport failed or the peer's control lane ended without a
    /// word ([`Link::handle_lost`], [`Link::handle_finish`]).
    Lost(String),
    /// The handshake did not complete by the deadline.
    HandshakeTimeout(Duration),
    /// Nothing arrived for the idle timeout.
    Idle(Duration),
}

/// Why this node refused a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The peer's `hello` has another protocol version.
    Version {
        /// The peer's id.
        peer: String,
        /// The peer's version.
        theirs: u16,
    },
    /// The access policy refused the peer.
    Denied(AccessDenied),
    /// The peer's input: bytes that are not frames, a frame not allowed
    /// here, too much of it.
    Input {
        /// What kind of refusal.
        code: ErrorCode,
        /// What was wrong.
        message: String,
    },
}

impl Refusal {
    /// The code sent in the `error` frame and closed with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::Version { .. } => ErrorCode::UnsupportedVersion,
            Refusal::Denied(_) => ErrorCode::AccessDenied,
            Refusal::Input { code, .. } => *code,
        }
    }

    /// The explanation sent in the `error` frame.
    pub fn message(&self) -> String {
        match self {
            Refusal::Version { peer, theirs } => format!("{peer} speaks protocol version {theirs}; this node speaks {PROTOCOL_VERSION}"),
            Refusal::Denied(denied) => denied.to_string(),
            Refusal::Input { message, .. } => message.clone(),
        }
    }
}

impl LinkEnd {
    /// The transport close code: 0 ([`CLOSE_NORMAL`]) for a clean end, the
    /// refusal's code otherwise.
    pub fn close_code(&self) -> u32 {
        match self {
            LinkEnd::Local(_) | LinkEnd::PeerGoodbye(_) | LinkEnd::Lost(_) | LinkEnd::Idle(_) => CLOSE_NORMAL,
            LinkEnd::Refused(refusal) => u32::from(refusal.code().code()),
            LinkEnd::PeerRefused { code, .. } => u32::from(code.code()),
            LinkEnd::HandshakeTimeout(_) => u32::from(ErrorCode::HandshakeTimeout.code()),
        }
    }

    /// The error a caller that waited for the link to come up (a dial)
    /// gets: `peer` is the peer id, `address` where it was reached.
    pub fn into_error(self, peer: &str, address: &str) -> NetworkError {
        let handshake = |reason: String| NetworkError::Handshake { peer: peer.to_owned(), address: address.to_owned(), reason };
        match self {
            LinkEnd::Refused(Refusal::Version { theirs, .. }) => {
                NetworkError::UnsupportedVersion { peer: peer.to_owned(), version: theirs, ours: PROTOCOL_VERSION }
            }
            LinkEnd::Refused(Refusal::Denied(denied)) => NetworkError::AccessDenied(denied),
            LinkEnd::Refused(Refusal::Input { message, .. }) => handshake(message),
            LinkEnd::PeerRefused { code, message } => NetworkError::Refused { peer: peer.to_owned(), code, reason: message },
            LinkEnd::HandshakeTimeout(after) => NetworkError::HandshakeTimeout { address: address.to_owned(), after },
            LinkEnd::Local(reason) | LinkEnd::PeerGoodbye(reason) | LinkEnd::Lost(reason) => {
                NetworkError::ConnectionLost { peer: peer.to_owned(), reason }
            }
            LinkEnd::Idle(after) => {
                NetworkError::ConnectionLost { peer: peer.to_owned(), reason: format!("nothing received for {after:?}") }
            }
        }
    }
}

impl fmt::Display for LinkEnd {
    /// The reason a `PeerEvent::Disconnected` gives.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkEnd::Local(reason) | LinkEnd::Lost(reason) => f.write_str(reason),
            LinkEnd::Refused(refusal) => write!(f, "refused the peer ({}): {}", refusal.code(), refusal.message()),
            LinkEnd::PeerGoodbye(reason) => write!(f, "peer said goodbye: {reason}"),
            LinkEnd::PeerRefused { code, message } => write!(f, "refused by the peer ({code}): {message}"),
            LinkEnd::HandshakeTimeout(after) => write!(f, "handshake did not complete within {after:?}"),
            LinkEnd::Idle(after) => write!(f, "nothing received for {after:?}"),
        }
    }
}

/// Where a link stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for the peer's `hello`.
    AwaitHello,
    /// The peer is admitted; waiting for its first heartbeat.
    AwaitAdmission,
    /// Both sides admitted each other.
    Established,
    /// Over.
    Closed,
}

/// The part of [`LinkConfig`] a link keeps for its whole life.
#[derive(Clone, Copy, Debug)]
struct Settings {
    handshake_deadline: Instant,
    handshake_timeout: Duration,
    heartbeat_interval: Duration,
    idle_timeout: Option<Duration>,
    limits: ReceiveLimits,
    ask_for_peers: bool,
}

/// The part of [`LinkConfig`] only the handshake needs.
#[derive(Debug)]
struct Admission {
    policy: AccessPolicy,
    /// This side's transcript (binding, own peer id) and the peer's.
    ours: Vec<u8>,
    theirs: Vec<u8>,
}

/// The link protocol with one peer (see the module docs).
#[derive(Debug)]
pub struct Link {
    settings: Settings,
    /// What checking the peer's `hello` needs; dropped once it is checked.
    admission: Option<Box<Admission>>,
    /// The peer id in text form, as `hello`s and rate limiters use it.
    remote_text: String,
    local_text: String,
    state: State,
    control: FrameDecoder,
    /// Made on the first bulk input: most links never carry bulk data
    /// for long, and a node holds many idle ones.
    bulk: Option<Box<FrameDecoder>>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<LinkEvent>,
    proof_ok: bool,
    started: Instant,
    last_received: Instant,
    next_heartbeat: Option<Instant>,
    last_ask: Instant,
    last_answer: Option<Instant>,
    frames: RateLimiter,
    kib: RateLimiter,
}

impl Link {
    /// A link starting its handshake at `now`: its `hello` is queued on the
    /// control lane.
    pub fn new(config: LinkConfig, now: Now) -> Self {
        let LinkConfig {
            local_peer,
            remote_peer,
            binding,
            policy,
            listen_addresses,
            handshake_deadline,
            handshake_timeout,
            heartbeat_interval,
            idle_timeout,
            limits,
            ask_for_peers,
        } = config;
        let local_text = local_peer.to_string();
        let remote_text = remote_peer.to_string();
        let ours = transcript(&binding, &local_peer);
        let theirs = transcript(&binding, &remote_peer);
        let proof = policy.secret.as_ref().map(|secret| secret::prove(secret, &ours, &theirs).to_vec());
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            peer_id: local_text.clone(),
            listen_addresses: listen_addresses.into_iter().take(crate::message::MAX_LISTEN_ADDRESSES).collect(),
            proof,
        };
        let mut transmits = VecDeque::new();
        transmits.push_back(Transmit { lane: Lane::Control, frame: NetworkMessage::Hello(hello).to_frame() });
        Self {
            settings: Settings { handshake_deadline, handshake_timeout, heartbeat_interval, idle_timeout, limits, ask_for_peers },
            admission: Some(Box::new(Admission { policy, ours, theirs })),
            remote_text,
            local_text,
            state: State::AwaitHello,
            control: FrameDecoder::with_max_payload(HANDSHAKE_MAX_PAYLOAD),
            bulk: None,
            transmits,
            events: VecDeque::new(),
            proof_ok: false,
            started: now.instant,
            last_received: now.instant,
            next_heartbeat: None,
            last_ask: now.instant,
            last_answer: None,
            frames: RateLimiter::new(limits.frames),
            kib: RateLimiter::new(limits.kib),
        }
    }

    /// The peer's id in text form.
    pub fn remote_peer(&self) -> &str {
        &self.remote_text
    }

    /// Whether the peer proved the network secret.
    pub fn proof_ok(&self) -> bool {
        self.proof_ok
    }

    /// Whether both sides admitted each other and the link is not over.
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// Whether the link is over.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// When the last frame arrived (the link's start before any).
    pub fn last_received(&self) -> Instant {
        self.last_received
    }

    /// Takes bytes the peer sent on `lane`, in order. The bulk lane is read
    /// only once the link is established; bulk input before that is
    /// refused.
    pub fn handle_input(&mut self, lane: Lane, bytes: &[u8], now: Now) {
        if self.state == State::Closed {
            return;
        }
        if lane == Lane::Bulk && self.state != State::Established {
            self.refuse_input(ErrorCode::UnexpectedMessage, "bulk data before the handshake completed".to_owned());
            return;
        }
        self.decoder(lane).extend(bytes);
        while self.state != State::Closed {
            match self.decoder(lane).decode() {
                Ok(Some(frame)) => self.on_frame(lane, frame, now),
                Ok(None) => break,
                Err(err) => {
                    self.refuse_input(codec_error_code(&err), err.to_string());
                    break;
                }
            }
        }
    }

    /// The peer finished `lane` cleanly. The control lane's end ends the
    /// link; a bulk lane may be followed by another (QUIC opens a new
    /// stream), which starts with a fresh frame. A lane that ends inside a
    /// frame is refused as `bad_frame`.
    pub fn handle_finish(&mut self, lane: Lane) {
        if self.state == State::Closed {
            return;
        }
        if let Err(err) = self.decoder(lane).finish() {
            self.refuse_input(codec_error_code(&err), err.to_string());
            return;
        }
        match lane {
            Lane::Control if self.state == State::Established => self.end(LinkEnd::Lost("the peer closed its control stream".to_owned())),
            Lane::Control => self.end(LinkEnd::Lost("the peer closed the control stream during the handshake".to_owned())),
            Lane::Bulk => self.bulk = None,
        }
    }

    /// The peer abandoned the bulk lane's current stream: what it held is
    /// dropped (the sync protocol resends it), and the next one starts with
    /// a fresh frame. On the control lane this is [`Link::handle_lost`].
    pub fn handle_reset(&mut self, lane: Lane, reason: &str) {
        match lane {
            Lane::Bulk => self.bulk = None,
            Lane::Control => self.handle_lost(reason),
        }
    }

    /// The transport failed, or was closed without a frame saying why.
    pub fn handle_lost(&mut self, reason: &str) {
        if self.state != State::Closed {
            self.end(LinkEnd::Lost(reason.to_owned()));
        }
    }

    /// Runs the timers due at `now`: the handshake deadline, heartbeats
    /// (and the periodic peer exchange request), the idle timeout.
    pub fn handle_timeout(&mut self, now: Now) {
        match self.state {
            State::Closed => {}
            State::AwaitHello | State::AwaitAdmission => {
                if now.instant >= self.settings.handshake_deadline {
                    self.end(LinkEnd::HandshakeTimeout(self.settings.handshake_timeout));
                }
            }
            State::Established => {
                if let Some(idle) = self.settings.idle_timeout {
                    if now.instant.saturating_duration_since(self.last_received) >= idle {
                        self.end(LinkEnd::Idle(idle));
                        return;
                    }
                }
                if self.next_heartbeat.is_some_and(|at| now.instant >= at) {
                    self.next_heartbeat = Some(now.instant + self.settings.heartbeat_interval);
                    self.queue_heartbeat(now);
                    // Peers that joined after this link came up are learned
                    // this way.
                    if now.instant.saturating_duration_since(self.last_ask) >= EXCHANGE_ASK_INTERVAL {
                        self.last_ask = now.instant;
                        self.ask_for_peers();
                    }
                }
            }
        }
    }

    /// Closes the link: a `goodbye` with `reason` is queued, then
    /// [`LinkEvent::Closed`] with [`LinkEnd::Local`].
    pub fn close(&mut self, reason: &str) {
        if self.state == State::Closed {
            return;
        }
        self.queue(Lane::Control, NetworkMessage::Goodbye { reason: reason.to_owned() });
        self.end(LinkEnd::Local(reason.to_owned()));
    }

    /// Answers the peer's request ([`LinkEvent::PeerExchangeRequested`])
    /// with `peers`: the first [`EXCHANGE_ANSWER_PEERS`] are sent, each with
    /// at most `MAX_EXCHANGED_ADDRESSES` addresses.
    pub fn answer_peer_exchange(&mut self, peers: Vec<ExchangedPeer>) {
        if self.state != State::Established {
            return;
        }
        let peers = peers
            .into_iter()
            .filter(|peer| peer.peer_id != self.remote_text)
            .take(EXCHANGE_ANSWER_PEERS)
            .map(|mut peer| {
                peer.addresses.truncate(MAX_EXCHANGED_ADDRESSES);
                peer
            })
            .collect();
        self.queue(Lane::Control, NetworkMessage::PeerExchange { peers, request: false });
    }

    /// The next frame to write.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let transmit = self.transmits.pop_front();
        if transmit.is_none() {
            // An idle link holds no buffers (a node has many).
            self.transmits = VecDeque::new();
        }
        transmit
    }

    /// The next thing to act on.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        let event = self.events.pop_front();
        if event.is_none() {
            self.events = VecDeque::new();
        }
        event
    }

    /// When to call [`Link::handle_timeout`] next; `None` once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closed => None,
            State::AwaitHello | State::AwaitAdmission => Some(self.settings.handshake_deadline),
            State::Established => {
                let idle = self.settings.idle_timeout.map(|idle| self.last_received + idle);
                match (self.next_heartbeat, idle) {
                    (Some(beat), Some(idle)) => Some(beat.min(idle)),
                    (beat, idle) => beat.or(idle),
                }
            }
        }
    }

    fn decoder(&mut self, lane: Lane) -> &mut FrameDecoder {
        let max_payload = self.settings.limits.max_payload;
        match lane {
            Lane::Control => &mut self.control,
            Lane::Bulk => self.bulk.get_or_insert_with(|| Box::new(FrameDecoder::with_max_payload(max_payload))),
        }
    }

    fn on_frame(&mut self, lane: Lane, frame: Frame, now: Now) {
        self.last_received = now.instant;
        match self.state {
            State::AwaitHello => self.on_handshake_frame(frame, true, now),
            State::AwaitAdmission => self.on_handshake_frame(frame, false, now),
            State::Established => self.on_link_frame(lane, frame, now),
            State::Closed => {}
        }
    }

    /// A frame before the link is established: the peer's `hello`, then its
    /// first heartbeat; its `error` is its refusal.
    fn on_handshake_frame(&mut self, frame: Frame, expect_hello: bool, now: Now) {
        if frame.kind == FrameKind::Sync {
            self.refuse_input(ErrorCode::UnexpectedMessage, "sync frame before the handshake completed".to_owned());
            return;
        }
        let message = match NetworkMessage::from_frame(&frame) {
            Ok(message) => message,
            Err(err) => {
                self.refuse_input(codec_error_code(&err), err.to_string());
                return;
            }
        };
        match message {
            NetworkMessage::Error { code, message } => self.end(LinkEnd::PeerRefused { code, message }),
            NetworkMessage::Hello(hello) if expect_hello => self.on_hello(hello, now),
            NetworkMessage::Heartbeat { .. } if !expect_hello => {
                self.state = State::Established;
                self.control.set_max_payload(self.settings.limits.max_payload);
                self.next_heartbeat = Some(now.instant + self.settings.heartbeat_interval);
                self.last_ask = now.instant;
                self.events.push_back(LinkEvent::Established);
                self.ask_for_peers();
            }
            other => {
                let message = if expect_hello {
                    format!("expected a hello frame, got a {} frame", other.kind())
                } else {
                    format!("expected a heartbeat frame after hello, got a {} frame", other.kind())
                };
                self.refuse_input(ErrorCode::UnexpectedMessage, message);
            }
        }
    }

    fn on_hello(&mut self, hello: Hello, now: Now) {
        if hello.protocol_version != PROTOCOL_VERSION {
            self.refuse(Refusal::Version { peer: self.remote_text.clone(), theirs: hello.protocol_version });
            return;
        }
        if hello.peer_id != self.remote_text {
            let message = format!("hello names peer {}, but the certificate is {}", hello.peer_id, self.remote_text);
            self.refuse_input(ErrorCode::UnexpectedMessage, message);
            return;
        }
        // Checked once: the admission state goes with this hello.
        let Some(admission) = self.admission.take() else { return };
        let proof_ok = match (&admission.policy.secret, &hello.proof) {
            (Some(secret), Some(proof)) => secret::verify(secret, &admission.ours, &admission.theirs, proof),
            _ => false,
        };
        if let Err(denied) = admission.policy.admits(&self.remote_text, proof_ok) {
            self.refuse(Refusal::Denied(denied));
            return;
        }
        self.state = State::AwaitAdmission;
        self.proof_ok = proof_ok;
        self.events.push_back(LinkEvent::PeerAdmitted { hello, proof_ok });
        // The first heartbeat says "admitted": the peer sends sync frames
        // only after it.
        self.queue_heartbeat(now);
    }

    fn on_link_frame(&mut self, lane: Lane, frame: Frame, now: Now) {
        if !self.within_limits(HEADER_LEN + frame.payload.len(), now) {
            return;
        }
        match frame.kind {
            FrameKind::Sync => self.events.push_back(LinkEvent::Sync(frame.payload)),
            kind if lane == Lane::Bulk => self.refuse_input(ErrorCode::UnexpectedMessage, format!("{kind} frame on the bulk stream")),
            FrameKind::Hello => self.refuse_input(ErrorCode::UnexpectedMessage, "hello frame after the handshake".to_owned()),
            FrameKind::Peers | FrameKind::Heartbeat | FrameKind::Goodbye | FrameKind::Error | FrameKind::Signal => {
                match NetworkMessage::from_frame(&frame) {
                    Ok(NetworkMessage::Signal { peer, data }) => self.events.push_back(LinkEvent::Signal { peer, data }),
                    Ok(NetworkMessage::PeerExchange { peers, request }) => {
                        if !peers.is_empty() {
                            self.events.push_back(LinkEvent::PeersLearned(peers));
                        }
                        if request {
                            self.on_exchange_request(now);
                        }
                    }
                    Ok(NetworkMessage::Heartbeat { timestamp, .. }) => self.events.push_back(LinkEvent::Heartbeat { sent: timestamp }),
                    Ok(NetworkMessage::Goodbye { reason }) => self.end(LinkEnd::PeerGoodbye(reason)),
                    Ok(NetworkMessage::Error { code, message }) => self.end(LinkEnd::PeerRefused { code, message }),
                    Ok(_) => {}
                    Err(err) => self.refuse_input(codec_error_code(&err), err.to_string()),
                }
            }
        }
    }

    /// At most one answer per [`EXCHANGE_ANSWER_INTERVAL`]; a request over
    /// that is dropped.
    fn on_exchange_request(&mut self, now: Now) {
        if self.last_answer.is_some_and(|at| now.instant.saturating_duration_since(at) < EXCHANGE_ANSWER_INTERVAL) {
            tracing::debug!(peer = %self.remote_text, "peer exchange request too soon after the last; ignored");
            return;
        }
        self.last_answer = Some(now.instant);
        self.events.push_back(LinkEvent::PeerExchangeRequested);
    }

    /// Counts a frame of `size` bytes against the peer's rate limits;
    /// refuses the peer and returns false when it is over one.
    fn within_limits(&mut self, size: usize, now: Now) -> bool {
        let now_ms = u64::try_from(now.instant.saturating_duration_since(self.started).as_millis()).unwrap_or(u64::MAX);
        if self.frames.check(&self.remote_text, now_ms).is_err() {
            let limit = self.settings.limits.frames;
            let message = format!("more than {} frames/s (burst {})", limit.messages_per_second, limit.burst);
            self.refuse_input(ErrorCode::RateLimited, message);
            return false;
        }
        let kib = u32::try_from(size.div_ceil(1024)).unwrap_or(u32::MAX);
        if self.kib.check_n(&self.remote_text, kib, now_ms).is_err() {
            let limit = self.settings.limits.kib;
            let message = format!("more than {} KiB/s (burst {} KiB)", limit.messages_per_second, limit.burst);
            self.refuse_input(ErrorCode::RateLimited, message);
            return false;
        }
        true
    }

    fn ask_for_peers(&mut self) {
        if self.settings.ask_for_peers {
            self.queue(Lane::Control, NetworkMessage::PeerExchange { peers: Vec::new(), request: true });
        }
    }

    fn queue_heartbeat(&mut self, now: Now) {
        self.queue(Lane::Control, NetworkMessage::Heartbeat { peer_id: self.local_text.clone(), timestamp: now.wall });
    }

    fn queue(&mut self, lane: Lane, message: NetworkMessage) {
        self.transmits.push_back(Transmit { lane, frame: message.to_frame() });
    }

    fn refuse_input(&mut self, code: ErrorCode, message: String) {
        self.refuse(Refusal::Input { code, message });
    }

    /// Queues an `error` frame saying why, and ends the link.
    fn refuse(&mut self, refusal: Refusal) {
        self.queue(Lane::Control, NetworkMessage::Error { code: refusal.code(), message: refusal.message() });
        self.end(LinkEnd::Refused(refusal));
    }

    fn end(&mut self, end: LinkEnd) {
        self.state = State::Closed;
        self.events.push_back(LinkEvent::Closed(end));
    }
}

/// One side's handshake transcript: the session binding, then the side's
/// binary peer id.
fn transcript(binding: &[u8; 32], peer: &PeerId) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + pluresdb_security::PEER_ID_BYTES);
    out.extend_from_slice(binding);
    out.extend_from_slice(&peer.to_bytes());
    out
}
