//! [`SocketLink`]: the link protocol over a message transport that
//! authenticates nothing itself, a WebSocket between a browser page and a
//! node. It adds the step that TLS (QUIC) and Noise (libp2p) do for the
//! other transports, proving each side's peer id, then runs the same
//! [`Link`] machine, so admission (the network-secret proof), heartbeats,
//! receive limits and peer exchange are the native rules exactly.
//!
//! Every transport message (a WebSocket binary message) carries one whole
//! frame. The exchange (`docs/protocol.md`, "WebSocket link"):
//!
//! 1. **Nonces.** Each side sends a `hello` with `proof: null` and a
//!    `nonce` (32 random bytes, 64 hex digits), as libp2p's first step.
//!    Both compute the binding `SHA-256("pluresdb/socket-binding/v1" ||
//!    client nonce || server nonce)` (the client opened the socket).
//! 2. **Identities.** Each side sends a second `hello` with a `signature`
//!    (64 bytes, 128 hex digits): its Ed25519 signature over
//!    `"pluresdb/socket-identity/v1" || binding || its peer id bytes ||
//!    the other's peer id bytes`, the peer ids as the first `hello`s named
//!    them. A signature that does not verify under the key of the peer id
//!    the peer named is refused (`access_denied`): a page cannot claim
//!    another peer's id.
//! 3. **Link.** From there the socket is the link of every transport,
//!    [`Link`] with the binding above: `hello` with the secret proof,
//!    admission, heartbeats.
//!
//! Over a WebRTC data channel both ends also know the DTLS certificates'
//! fingerprints from the SDP (their own and the other's): given as
//! [`SocketLinkConfig::channel_binding`] ([`webrtc_channel_binding`]), they
//! go into the binding (`SHA-256("pluresdb/socket-binding/v1/channel" ||
//! client nonce || server nonce || length || fingerprints)`), so that
//! whoever relayed the signalling and swapped a fingerprint to sit in the
//! middle of the DTLS connection makes both signatures fail.
//!
//! A signature is fresh (the verifier's nonce is in the binding) and names
//! both ends, so it cannot be replayed or relayed. Over plain `ws://` the
//! frames after the handshake are not encrypted: a man in the middle
//! cannot join (it holds no key and no secret), but can read the frames
//! and cut the link; across networks serve the link over `wss://` (TLS).

use crate::codec::{Frame, FrameDecoder, FrameKind};
use crate::link::{codec_error_code, outgoing, Link, LinkConfig, LinkEnd, LinkEvent, Now, Refusal, HANDSHAKE_MAX_PAYLOAD};
use crate::message::{self, encode_hello_with, hello_hex_field, ErrorCode, Hello, NetworkMessage, HELLO_NONCE_KEY, PROTOCOL_VERSION};
use crate::{NetworkError, ReceiveLimits};
use bytes::Bytes;
use pluresdb_core::cbor;
use pluresdb_security::{AccessPolicy, Identity, PeerId};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::time::Duration;
use web_time::Instant;

/// The label of the socket binding.
pub const BINDING_LABEL: &[u8] = b"pluresdb/socket-binding/v1";

/// The label of the identity signatures.
pub const SIGNATURE_LABEL: &[u8] = b"pluresdb/socket-identity/v1";

/// The key of the identity signature in the second `hello`.
pub const HELLO_SIGNATURE_KEY: &str = "signature";

/// Which end of the socket this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// This side opened the socket (a page).
    Client,
    /// This side accepted it (a node).
    Server,
}

/// The binding of a socket whose client sent `client` and server `server`.
pub fn binding(client: &[u8; 32], server: &[u8; 32]) -> [u8; 32] {
    Sha256::new().chain_update(BINDING_LABEL).chain_update(client).chain_update(server).finalize().into()
}

/// The label of a binding that includes the transport's own keys.
pub const CHANNEL_BINDING_LABEL: &[u8] = b"pluresdb/socket-binding/v1/channel";

/// The binding of a socket whose transport has keys of its own (`channel`,
/// as both ends see them): the nonces and those keys.
pub fn binding_with_channel(client: &[u8; 32], server: &[u8; 32], channel: &[u8]) -> [u8; 32] {
    let length = u64::try_from(channel.len()).unwrap_or(u64::MAX).to_be_bytes();
    Sha256::new()
        .chain_update(CHANNEL_BINDING_LABEL)
        .chain_update(client)
        .chain_update(server)
        .chain_update(length)
        .chain_update(channel)
        .finalize()
        .into()
}

/// The channel binding of a WebRTC data channel: the DTLS fingerprints of
/// the client (the side that offered) and of the server, each as SDP
/// writes it (`sha-256 AB:CD:...`), compared without regard to case or
/// spacing.
pub fn webrtc_channel_binding(client_fingerprint: &str, server_fingerprint: &str) -> Vec<u8> {
    let canonical = |fingerprint: &str| fingerprint.split_whitespace().collect::<Vec<_>>().join(" ").to_ascii_lowercase();
    format!("webrtc-dtls\n{}\n{}", canonical(client_fingerprint), canonical(server_fingerprint)).into_bytes()
}

/// What `signer` signs to prove its id to `other` on a socket with
/// `binding`.
pub fn identity_transcript(binding: &[u8; 32], signer: &PeerId, other: &PeerId) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIGNATURE_LABEL.len() + 32 + 2 * pluresdb_security::PEER_ID_BYTES);
    out.extend_from_slice(SIGNATURE_LABEL);
    out.extend_from_slice(binding);
    out.extend_from_slice(&signer.to_bytes());
    out.extend_from_slice(&other.to_bytes());
    out
}

/// What a socket link needs from the node (or page) and the transport.
#[derive(Clone, Debug)]
pub struct SocketLinkConfig {
    /// This side's key: it signs the identity step.
    pub identity: Identity,
    /// Which end this is.
    pub side: Side,
    /// 32 fresh random bytes (the caller draws them: the machine reads no
    /// entropy source).
    pub nonce: [u8; 32],
    /// The peer this side expects (a page dialling a node it knows), or
    /// `None` to take whoever proves an id (a node accepting pages).
    pub expected_peer: Option<PeerId>,
    /// Who is admitted (mode, secret, allowlist).
    pub policy: AccessPolicy,
    /// Where this side accepts connections, told to the peer.
    pub listen_addresses: Vec<String>,
    /// When the whole handshake (identities and admission) must be done.
    pub handshake_deadline: Instant,
    /// How long that is, for the error's wording.
    pub handshake_timeout: Duration,
    /// The interval between heartbeats.
    pub heartbeat_interval: Duration,
    /// Close when nothing arrives for this long (a WebSocket has no idle
    /// timeout of its own).
    pub idle_timeout: Option<Duration>,
    /// What the peer may send once admitted.
    pub limits: ReceiveLimits,
    /// The transport's own keys as this side sees both ends (WebRTC: see
    /// [`webrtc_channel_binding`]), bound into the identity signatures;
    /// `None` for a transport without (a WebSocket).
    pub channel_binding: Option<Vec<u8>>,
}

impl SocketLinkConfig {
    /// A configuration with the link defaults (5 s handshake and
    /// heartbeats, 30 s idle timeout).
    pub fn new(identity: Identity, side: Side, nonce: [u8; 32], policy: AccessPolicy, now: Now) -> Self {
        Self {
            identity,
            side,
            nonce,
            expected_peer: None,
            policy,
            listen_addresses: Vec::new(),
            handshake_deadline: now.instant + Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(5),
            idle_timeout: Some(Duration::from_secs(30)),
            limits: ReceiveLimits::default(),
            channel_binding: None,
        }
    }
}

/// Where the socket stands.
#[derive(Debug)]
enum Phase {
    /// Waiting for the peer's nonce.
    Nonce,
    /// Waiting for the peer's signature; its claimed id and the binding.
    Signature { peer: Box<PeerId>, binding: [u8; 32] },
    /// The link protocol runs.
    Link(Box<Link>),
    /// Over (a refusal or a timeout before the link ran).
    Closed,
}

/// The link protocol over one socket (see the module docs): bytes of one
/// message in, frames (one message each) and [`LinkEvent`]s out, the same
/// calling contract as [`Link`].
#[derive(Debug)]
pub struct SocketLink {
    config: Option<Box<SocketLinkConfig>>,
    phase: Phase,
    local: PeerId,
    transmits: VecDeque<Frame>,
    events: VecDeque<LinkEvent>,
}

impl SocketLink {
    /// A socket link starting at `now`: its nonce `hello` is queued.
    pub fn new(config: SocketLinkConfig) -> Self {
        let local = config.identity.peer_id();
        let hello = plain_hello(&local);
        let mut payload = encode_hello_with(&hello, 1);
        cbor::text(&mut payload, HELLO_NONCE_KEY);
        cbor::text(&mut payload, &message::hex(&config.nonce));
        let mut transmits = VecDeque::new();
        transmits.push_back(Frame::new(FrameKind::Hello, Bytes::from(payload)));
        Self { config: Some(Box::new(config)), phase: Phase::Nonce, local, transmits, events: VecDeque::new() }
    }

    /// The peer's id once it proved it.
    pub fn remote_peer(&self) -> Option<PeerId> {
        match &self.phase {
            Phase::Link(link) => link.remote_peer().parse().ok(),
            _ => None,
        }
    }

    /// Whether both sides admitted each other and the link is not over.
    pub fn is_established(&self) -> bool {
        matches!(&self.phase, Phase::Link(link) if link.is_established())
    }

    /// Whether the link is over.
    pub fn is_closed(&self) -> bool {
        match &self.phase {
            Phase::Closed => true,
            Phase::Link(link) => link.is_closed(),
            _ => false,
        }
    }

    /// Takes one message from the peer.
    pub fn handle_message(&mut self, bytes: &[u8], now: Now) {
        match &mut self.phase {
            Phase::Closed => {}
            Phase::Link(link) => {
                link.handle_input(crate::link::Lane::Control, bytes, now);
                self.pump();
            }
            Phase::Nonce | Phase::Signature { .. } => match one_frame(bytes) {
                Ok(frame) => self.on_handshake_frame(frame, now),
                Err(refusal) => self.refuse(refusal),
            },
        }
    }

    /// The transport failed or closed.
    pub fn handle_lost(&mut self, reason: &str) {
        match &mut self.phase {
            Phase::Link(link) => {
                link.handle_lost(reason);
                self.pump();
            }
            Phase::Closed => {}
            _ => self.end(LinkEnd::Lost(reason.to_owned())),
        }
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Now) {
        match &mut self.phase {
            Phase::Link(link) => {
                link.handle_timeout(now);
                self.pump();
            }
            Phase::Closed => {}
            _ => {
                if let Some(config) = &self.config {
                    if now.instant >= config.handshake_deadline {
                        let after = config.handshake_timeout;
                        self.end(LinkEnd::HandshakeTimeout(after));
                    }
                }
            }
        }
    }

    /// Closes the link (a `goodbye` once the link runs).
    pub fn close(&mut self, reason: &str) {
        match &mut self.phase {
            Phase::Link(link) => {
                link.close(reason);
                self.pump();
            }
            Phase::Closed => {}
            _ => self.end(LinkEnd::Local(reason.to_owned())),
        }
    }

    /// Queues an encoded sync message for the peer: one frame, checked
    /// against the frame size limit. Only once established.
    pub fn send_sync(&mut self, bytes: Bytes) -> Result<(), NetworkError> {
        let peer = self.remote_peer().map(|p| p.to_string()).unwrap_or_default();
        if !self.is_established() {
            return Err(NetworkError::PeerNotConnected(peer));
        }
        let transmit = outgoing(&NetworkMessage::EncodedSync(bytes))?;
        self.transmits.push_back(transmit.frame);
        Ok(())
    }

    /// Answers a [`LinkEvent::PeerExchangeRequested`].
    pub fn answer_peer_exchange(&mut self, peers: Vec<message::ExchangedPeer>) {
        if let Phase::Link(link) = &mut self.phase {
            link.answer_peer_exchange(peers);
            self.pump();
        }
    }

    /// The next frame to send, as one message.
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        self.transmits.pop_front()
    }

    /// The next thing to act on.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    /// When to call [`SocketLink::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Link(link) => link.poll_timeout(),
            Phase::Closed => None,
            _ => self.config.as_ref().map(|config| config.handshake_deadline),
        }
    }

    fn on_handshake_frame(&mut self, frame: Frame, now: Now) {
        let hello = match NetworkMessage::from_frame(&frame) {
            Ok(NetworkMessage::Hello(hello)) => hello,
            Ok(NetworkMessage::Error { code, message }) => {
                self.end(LinkEnd::PeerRefused { code, message });
                return;
            }
            Ok(other) => {
                self.refuse_input(ErrorCode::UnexpectedMessage, format!("expected a hello frame, got a {} frame", other.kind()));
                return;
            }
            Err(err) => {
                self.refuse_input(codec_error_code(&err), err.to_string());
                return;
            }
        };
        if hello.protocol_version != PROTOCOL_VERSION {
            self.refuse(Refusal::Version { peer: hello.peer_id.clone(), theirs: hello.protocol_version });
            return;
        }
        match std::mem::replace(&mut self.phase, Phase::Closed) {
            Phase::Nonce => self.on_nonce(hello, &frame.payload),
            Phase::Signature { peer, binding } => self.on_signature(hello, &frame.payload, *peer, binding, now),
            other => self.phase = other,
        }
    }

    fn on_nonce(&mut self, hello: Hello, payload: &[u8]) {
        let Some(config) = self.config.as_deref() else { return };
        let Some(theirs) = hello_hex_field::<32>(payload, HELLO_NONCE_KEY) else {
            self.refuse_input(ErrorCode::UnexpectedMessage, "the first hello has no nonce (64 hex digits)".to_owned());
            return;
        };
        let peer: PeerId = match hello.peer_id.parse() {
            Ok(peer) => peer,
            Err(err) => {
                self.refuse_input(ErrorCode::UnexpectedMessage, format!("hello names no valid peer id: {err}"));
                return;
            }
        };
        if let Some(expected) = config.expected_peer {
            if expected != peer {
                self.refuse_input(ErrorCode::UnexpectedMessage, format!("expected peer {expected}, the hello names {peer}"));
                return;
            }
        }
        if peer == self.local {
            self.refuse_input(ErrorCode::UnexpectedMessage, "the hello names this node's own peer id".to_owned());
            return;
        }
        let (client, server) = match config.side {
            Side::Client => (&config.nonce, &theirs),
            Side::Server => (&theirs, &config.nonce),
        };
        let binding = match &config.channel_binding {
            Some(channel) => binding_with_channel(client, server, channel),
            None => binding(client, server),
        };
        let signature = config.identity.sign(&identity_transcript(&binding, &self.local, &peer));
        let mut payload = encode_hello_with(&plain_hello(&self.local), 2);
        cbor::text(&mut payload, HELLO_NONCE_KEY);
        cbor::text(&mut payload, &message::hex(&config.nonce));
        cbor::text(&mut payload, HELLO_SIGNATURE_KEY);
        cbor::text(&mut payload, &message::hex(&signature));
        self.transmits.push_back(Frame::new(FrameKind::Hello, Bytes::from(payload)));
        self.phase = Phase::Signature { peer: Box::new(peer), binding };
    }

    fn on_signature(&mut self, hello: Hello, payload: &[u8], peer: PeerId, binding: [u8; 32], now: Now) {
        let signature = hello_hex_field::<64>(payload, HELLO_SIGNATURE_KEY);
        let verified = hello.peer_id == peer.to_string()
            && signature.is_some_and(|signature| peer.verify(&identity_transcript(&binding, &peer, &self.local), &signature));
        if !verified {
            let denied = format!("peer {peer} did not prove its id (no valid signature over this socket's binding)");
            self.refuse_input(ErrorCode::AccessDenied, denied);
            return;
        }
        let Some(config) = self.config.take() else { return };
        let SocketLinkConfig {
            policy,
            listen_addresses,
            handshake_deadline,
            handshake_timeout,
            heartbeat_interval,
            idle_timeout,
            limits,
            ..
        } = *config;
        let link_config = LinkConfig {
            binding,
            listen_addresses,
            handshake_timeout,
            heartbeat_interval,
            idle_timeout,
            limits,
            ask_for_peers: false,
            ..LinkConfig::new(self.local, peer, policy, handshake_deadline)
        };
        self.phase = Phase::Link(Box::new(Link::new(link_config, now)));
        self.pump();
    }

    /// Moves the link's frames and events out.
    fn pump(&mut self) {
        if let Phase::Link(link) = &mut self.phase {
            while let Some(transmit) = link.poll_transmit() {
                self.transmits.push_back(transmit.frame);
            }
            while let Some(event) = link.poll_event() {
                self.events.push_back(event);
            }
        }
    }

    fn refuse_input(&mut self, code: ErrorCode, message: String) {
        self.refuse(Refusal::Input { code, message });
    }

    fn refuse(&mut self, refusal: Refusal) {
        let frame = NetworkMessage::Error { code: refusal.code(), message: refusal.message() }.to_frame();
        self.transmits.push_back(frame);
        self.end(LinkEnd::Refused(refusal));
    }

    fn end(&mut self, end: LinkEnd) {
        self.phase = Phase::Closed;
        self.config = None;
        self.events.push_back(LinkEvent::Closed(end));
    }
}

fn plain_hello(local: &PeerId) -> Hello {
    Hello { protocol_version: PROTOCOL_VERSION, peer_id: local.to_string(), listen_addresses: Vec::new(), proof: None }
}

/// The one frame a handshake message holds: anything else (part of a
/// frame, two frames, bytes that are not a frame) is refused.
fn one_frame(bytes: &[u8]) -> Result<Frame, Refusal> {
    let mut decoder = FrameDecoder::with_max_payload(HANDSHAKE_MAX_PAYLOAD);
    decoder.extend(bytes);
    let refusal = |message: String| Refusal::Input { code: ErrorCode::BadFrame, message };
    match decoder.decode() {
        Ok(Some(frame)) if decoder.buffered() == 0 => Ok(frame),
        Ok(Some(_)) => Err(refusal("a handshake message holds more than one frame".to_owned())),
        Ok(None) => Err(refusal("a handshake message holds part of a frame".to_owned())),
        Err(err) => Err(Refusal::Input { code: codec_error_code(&err), message: err.to_string() }),
    }
}

#[cfg(test)]
mod tests;
