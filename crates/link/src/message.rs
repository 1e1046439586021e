//! [`NetworkMessage`]: what peers say to each other over any transport, and
//! how each message becomes a [`Frame`].
//!
//! The sync messages mirror `pluresdb_sync::SyncMessage` and travel in
//! `sync` frames in its encoding; the others (handshake, heartbeat,
//! goodbye, error) are small CBOR maps. `docs/protocol.md` ("Frames") is
//! normative.

use crate::codec::{CodecError, Frame, FrameKind};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use pluresdb_core::cbor::{self, Reader};
use pluresdb_core::{OperationWithMetadata, VersionVector};
use pluresdb_sync::{OriginRange, SyncMessage};
use std::fmt;

/// The version of the PluresDB peer protocol (handshake and message
/// meanings) this code speaks; sent in [`Hello`]. The frame format has its
/// own version byte ([`crate::codec::FRAME_VERSION`]).
pub const PROTOCOL_VERSION: u16 = 1;

/// The largest proof accepted in a [`Hello`] (an HMAC-SHA256 is 32 bytes).
const MAX_PROOF_BYTES: usize = 64;

/// The first message on a connection, sent by both sides: who the sender
/// is, where it listens, and its proof that it holds the network secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The sender's [`PROTOCOL_VERSION`].
    pub protocol_version: u16,
    /// The sender's peer id. Informational: the receiver takes the peer id
    /// from the TLS certificate and refuses a `Hello` that names another.
    pub peer_id: String,
    /// Addresses the sender accepts connections on (`quic://host:port`),
    /// for peer exchange and reconnection.
    pub listen_addresses: Vec<String>,
    /// `pluresdb_security::secret::prove` over this connection's handshake
    /// transcripts, or `None` when the sender has no network secret.
    pub proof: Option<Vec<u8>>,
}

/// One peer in a [`NetworkMessage::PeerExchange`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangedPeer {
    /// The peer's id.
    pub peer_id: String,
    /// Where it accepts connections (`quic://ip:port`).
    pub addresses: Vec<String>,
}

/// The most peers one `PeerExchange` may carry.
pub const MAX_EXCHANGED_PEERS: usize = 64;

/// The most addresses a peer may have in a `PeerExchange`.
pub const MAX_EXCHANGED_ADDRESSES: usize = 8;

/// Why a peer's input was refused; sent in an `Error` frame and used as the
/// QUIC application close code of the connection that follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The frame or protocol version is not one this node speaks.
    UnsupportedVersion,
    /// Bytes that are not a frame, an unknown frame kind, an oversized
    /// frame, or a payload that does not decode.
    BadFrame,
    /// The access policy refused the peer (no valid network-secret proof,
    /// not on the allowlist).
    AccessDenied,
    /// The peer sent faster than its rate limit.
    RateLimited,
    /// This node is at its connection limit, or a newer connection attempt
    /// took this one's place among the handshakes in flight.
    TooManyConnections,
    /// The handshake did not complete within the handshake timeout.
    HandshakeTimeout,
    /// A frame that is valid but not allowed at this point (e.g. a sync
    /// frame before the handshake, a second `Hello`).
    UnexpectedMessage,
    /// A code this version does not know.
    Other(u16),
}

impl ErrorCode {
    /// The code on the wire (and as QUIC application close code).
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::UnsupportedVersion => 1,
            ErrorCode::BadFrame => 2,
            ErrorCode::AccessDenied => 3,
            ErrorCode::RateLimited => 4,
            ErrorCode::TooManyConnections => 5,
            ErrorCode::HandshakeTimeout => 6,
            ErrorCode::UnexpectedMessage => 7,
            ErrorCode::Other(code) => code,
        }
    }

    /// The code with wire value `code`.
    pub fn from_code(code: u16) -> Self {
        match code {
            1 => ErrorCode::UnsupportedVersion,
            2 => ErrorCode::BadFrame,
            3 => ErrorCode::AccessDenied,
            4 => ErrorCode::RateLimited,
            5 => ErrorCode::TooManyConnections,
            6 => ErrorCode::HandshakeTimeout,
            7 => ErrorCode::UnexpectedMessage,
            other => ErrorCode::Other(other),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorCode::UnsupportedVersion => f.write_str("unsupported_version"),
            ErrorCode::BadFrame => f.write_str("bad_frame"),
            ErrorCode::AccessDenied => f.write_str("access_denied"),
            ErrorCode::RateLimited => f.write_str("rate_limited"),
            ErrorCode::TooManyConnections => f.write_str("too_many_connections"),
            ErrorCode::HandshakeTimeout => f.write_str("handshake_timeout"),
            ErrorCode::UnexpectedMessage => f.write_str("unexpected_message"),
            ErrorCode::Other(code) => write!(f, "error {code}"),
        }
    }
}

/// A message between peers.
///
/// The four sync variants mirror [`SyncMessage`] (convert with `From` /
/// `TryFrom`); [`EncodedSync`](NetworkMessage::EncodedSync) carries a
/// `SyncMessage` already encoded (what `DataSyncEngine::poll_transmit`
/// returns), which is framed as is, without decoding or re-encoding.
#[derive(Clone, Debug, PartialEq)]
pub enum NetworkMessage {
    /// The handshake message.
    Hello(Hello),
    /// "I am alive": sent every `heartbeat_interval`; the first one after
    /// the `Hello` also says "I admitted you" (see `docs/protocol.md`).
    Heartbeat {
        /// The sender's peer id.
        peer_id: String,
        /// The sender's clock when it sent the heartbeat (milliseconds on
        /// the wire).
        timestamp: DateTime<Utc>,
    },
    /// `SyncMessage::SyncRequest`.
    SyncRequest {
        /// The sender's peer id.
        from_peer: String,
        /// Names the round.
        round: u64,
        /// What the sender has applied, of the origins in `origins`.
        version_vector: VersionVector,
        /// The origins the vector describes.
        origins: OriginRange,
    },
    /// `SyncMessage::DataSync`.
    DataSync {
        /// The sender's peer id.
        from_peer: String,
        /// The operations.
        operations: Vec<OperationWithMetadata>,
        /// What the sender has applied.
        version_vector: VersionVector,
    },
    /// `SyncMessage::SyncDone`.
    SyncDone {
        /// The sender's peer id.
        from_peer: String,
        /// The round answered.
        round: u64,
        /// What the sender held when the round began, of the origins in
        /// `origins`.
        version_vector: VersionVector,
        /// The origins the round covered.
        origins: OriginRange,
    },
    /// `SyncMessage::SyncAck`.
    SyncAck {
        /// The sender's peer id.
        from_peer: String,
        /// What the sender has durably applied.
        version_vector: VersionVector,
    },
    /// One `SyncMessage` in its encoding (`SyncMessage::encode`, or a
    /// `Transmit`'s bytes), sent in a `sync` frame as is.
    EncodedSync(Bytes),
    /// "I am closing this connection": the last frame before a clean close.
    Goodbye {
        /// Why, for the peer's log.
        reason: String,
    },
    /// Peer exchange: other peers of the sender's network and the addresses
    /// they accept connections on, so the receiver can reach them directly.
    /// At most [`MAX_EXCHANGED_PEERS`] peers of at most
    /// [`MAX_EXCHANGED_ADDRESSES`] addresses each.
    PeerExchange {
        /// The peers.
        peers: Vec<ExchangedPeer>,
        /// "Tell me your peers": the receiver answers with a `PeerExchange`
        /// of its own.
        request: bool,
    },
    /// "Your input was refused": the connection closes after it.
    Error {
        /// What kind of refusal.
        code: ErrorCode,
        /// A human-readable explanation.
        message: String,
    },
    /// Signalling for a direct link between two peers linked to one node
    /// (a WebRTC offer, answer or candidate, opaque to the node): sent to
    /// the node naming the peer it is for; the node passes it on naming the
    /// peer it came from. At most [`MAX_SIGNAL_BYTES`] of data.
    Signal {
        /// To the node: the recipient; from the node: the sender (as the
        /// node authenticated it).
        peer: String,
        /// The signalling payload.
        data: Bytes,
    },
}

/// The most data one `signal` frame carries (an SDP offer with its
/// candidates is a few KiB).
pub const MAX_SIGNAL_BYTES: usize = 64 * 1024;

impl NetworkMessage {
    /// The frame kind this message travels in.
    pub fn kind(&self) -> FrameKind {
        match self {
            NetworkMessage::Hello(_) => FrameKind::Hello,
            NetworkMessage::Heartbeat { .. } => FrameKind::Heartbeat,
            NetworkMessage::SyncRequest { .. }
            | NetworkMessage::DataSync { .. }
            | NetworkMessage::SyncDone { .. }
            | NetworkMessage::SyncAck { .. }
            | NetworkMessage::EncodedSync(_) => FrameKind::Sync,
            NetworkMessage::Goodbye { .. } => FrameKind::Goodbye,
            NetworkMessage::Error { .. } => FrameKind::Error,
            NetworkMessage::PeerExchange { .. } => FrameKind::Peers,
            NetworkMessage::Signal { .. } => FrameKind::Signal,
        }
    }

    /// Whether this is bulk data (a `DataSync`, encoded or not), which
    /// travels on the bulk stream rather than the control stream.
    pub fn is_bulk(&self) -> bool {
        match self {
            NetworkMessage::DataSync { .. } => true,
            NetworkMessage::EncodedSync(bytes) => is_encoded_data_sync(bytes),
            _ => false,
        }
    }

    /// The message as a frame. Sync messages are encoded with
    /// `SyncMessage::encode`; an [`EncodedSync`](Self::EncodedSync) payload
    /// is shared, not copied.
    pub fn to_frame(&self) -> Frame {
        let payload: Bytes = match self {
            NetworkMessage::Hello(hello) => encode_hello(hello).into(),
            NetworkMessage::Heartbeat { peer_id, timestamp } => {
                let mut out = Vec::with_capacity(32 + peer_id.len());
                cbor::map(&mut out, 2);
                cbor::text(&mut out, "peer_id");
                cbor::text(&mut out, peer_id);
                cbor::text(&mut out, "timestamp_ms");
                cbor::unsigned(&mut out, u64::try_from(timestamp.timestamp_millis()).unwrap_or(0));
                out.into()
            }
            NetworkMessage::EncodedSync(bytes) => bytes.clone(),
            NetworkMessage::SyncRequest { .. }
            | NetworkMessage::DataSync { .. }
            | NetworkMessage::SyncDone { .. }
            | NetworkMessage::SyncAck { .. } => match self.as_sync_message() {
                Some(message) => message.encode().into(),
                None => unreachable!("the four sync variants convert"),
            },
            NetworkMessage::Goodbye { reason } => {
                let mut out = Vec::with_capacity(16 + reason.len());
                cbor::map(&mut out, 1);
                cbor::text(&mut out, "reason");
                cbor::text(&mut out, reason);
                out.into()
            }
            NetworkMessage::PeerExchange { peers, request } => encode_peers(peers, *request).into(),
            NetworkMessage::Signal { peer, data } => {
                let mut out = Vec::with_capacity(24 + peer.len() + data.len());
                cbor::map(&mut out, 2);
                cbor::text(&mut out, "peer");
                cbor::text(&mut out, peer);
                cbor::text(&mut out, "data");
                cbor::bytes(&mut out, data);
                out.into()
            }
            NetworkMessage::Error { code, message } => {
                let mut out = Vec::with_capacity(24 + message.len());
                cbor::map(&mut out, 2);
                cbor::text(&mut out, "code");
                cbor::unsigned(&mut out, u64::from(code.code()));
                cbor::text(&mut out, "message");
                cbor::text(&mut out, message);
                out.into()
            }
        };
        Frame { kind: self.kind(), payload }
    }

    /// Reads a frame's payload as a message. A `sync` frame becomes the
    /// matching sync variant (decoded); receivers that hand sync payloads to
    /// a `DataSyncEngine` skip this and pass the payload bytes on.
    pub fn from_frame(frame: &Frame) -> Result<Self, CodecError> {
        let bad = |reason: &str| CodecError::BadPayload { kind: frame.kind, reason: reason.to_owned() };
        match frame.kind {
            FrameKind::Hello => decode_hello(&frame.payload).map(NetworkMessage::Hello).ok_or_else(|| bad("not a hello map")),
            FrameKind::Heartbeat => {
                let (peer_id, ms) = decode_heartbeat(&frame.payload).ok_or_else(|| bad("not a heartbeat map"))?;
                let timestamp =
                    i64::try_from(ms).ok().and_then(DateTime::<Utc>::from_timestamp_millis).ok_or_else(|| bad("timestamp out of range"))?;
                Ok(NetworkMessage::Heartbeat { peer_id, timestamp })
            }
            FrameKind::Sync => {
                let message = SyncMessage::decode("peer", &frame.payload).map_err(|err| bad(&err.to_string()))?;
                Ok(message.into())
            }
            FrameKind::Goodbye => {
                let reason = decode_goodbye(&frame.payload).ok_or_else(|| bad("not a goodbye map"))?;
                Ok(NetworkMessage::Goodbye { reason })
            }
            FrameKind::Error => {
                let (code, message) = decode_error(&frame.payload).ok_or_else(|| bad("not an error map"))?;
                Ok(NetworkMessage::Error { code, message })
            }
            FrameKind::Peers => {
                let (peers, request) = decode_peers(&frame.payload).ok_or_else(|| bad("not a peers map (or over the limits)"))?;
                Ok(NetworkMessage::PeerExchange { peers, request })
            }
            FrameKind::Signal => {
                let (peer, data) = decode_signal(&frame.payload).ok_or_else(|| bad("not a signal map (or over 64 KiB of data)"))?;
                Ok(NetworkMessage::Signal { peer, data })
            }
        }
    }

    /// The sync message this is, if it is one of the four sync variants
    /// (an [`EncodedSync`](Self::EncodedSync) needs decoding: use
    /// `SyncMessage::try_from`).
    fn as_sync_message(&self) -> Option<SyncMessage> {
        Some(match self.clone() {
            NetworkMessage::SyncRequest { from_peer, round, version_vector, origins } => {
                SyncMessage::SyncRequest { from_peer, round, version_vector, origins }
            }
            NetworkMessage::DataSync { from_peer, operations, version_vector } => {
                SyncMessage::DataSync { from_peer, operations, version_vector }
            }
            NetworkMessage::SyncDone { from_peer, round, version_vector, origins } => {
                SyncMessage::SyncDone { from_peer, round, version_vector, origins }
            }
            NetworkMessage::SyncAck { from_peer, version_vector } => SyncMessage::SyncAck { from_peer, version_vector },
            _ => return None,
        })
    }
}

/// Whether `bytes` (an encoded `SyncMessage`) is a `DataSync`: its CBOR
/// starts with a one-entry map keyed by the text "DataSync", which is how
/// `SyncMessage::encode` (and serde) write that variant.
pub fn is_encoded_data_sync(bytes: &[u8]) -> bool {
    bytes.get(..10) == Some(b"\xa1\x68DataSync".as_slice())
}

impl From<SyncMessage> for NetworkMessage {
    fn from(message: SyncMessage) -> Self {
        match message {
            SyncMessage::SyncRequest { from_peer, round, version_vector, origins } => {
                NetworkMessage::SyncRequest { from_peer, round, version_vector, origins }
            }
            SyncMessage::DataSync { from_peer, operations, version_vector } => {
                NetworkMessage::DataSync { from_peer, operations, version_vector }
            }
            SyncMessage::SyncDone { from_peer, round, version_vector, origins } => {
                NetworkMessage::SyncDone { from_peer, round, version_vector, origins }
            }
            SyncMessage::SyncAck { from_peer, version_vector } => NetworkMessage::SyncAck { from_peer, version_vector },
            // Mirrored by no variant of its own: sent in its encoding.
            other @ SyncMessage::ChainHeads { .. } => NetworkMessage::EncodedSync(other.encode().into()),
        }
    }
}

impl From<pluresdb_sync::Transmit> for NetworkMessage {
    /// The transmit's bytes, as an [`NetworkMessage::EncodedSync`] (its
    /// `peer` is the destination, which `send_message` takes separately).
    fn from(transmit: pluresdb_sync::Transmit) -> Self {
        NetworkMessage::EncodedSync(transmit.bytes.into())
    }
}

/// A [`NetworkMessage`] that is not a sync message, or an
/// [`NetworkMessage::EncodedSync`] that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("not a sync message: {0}")]
pub struct NotSyncMessage(pub String);

impl TryFrom<NetworkMessage> for SyncMessage {
    type Error = NotSyncMessage;

    fn try_from(message: NetworkMessage) -> Result<Self, Self::Error> {
        if let NetworkMessage::EncodedSync(bytes) = &message {
            return SyncMessage::decode("peer", bytes).map_err(|err| NotSyncMessage(err.to_string()));
        }
        let kind = message.kind();
        message.as_sync_message().ok_or_else(|| NotSyncMessage(format!("a {kind} message")))
    }
}

fn encode_hello(hello: &Hello) -> Vec<u8> {
    encode_hello_with(hello, 0)
}

/// The CBOR map of `hello` as a `Hello` frame carries it, sized for
/// `extra` more entries that the caller appends (the libp2p handshake's
/// `nonce`); decoders skip entries they do not know.
pub fn encode_hello_with(hello: &Hello, extra: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + 80 * extra);
    cbor::map(&mut out, 4 + extra);
    cbor::text(&mut out, "protocol_version");
    cbor::unsigned(&mut out, u64::from(hello.protocol_version));
    cbor::text(&mut out, "peer_id");
    cbor::text(&mut out, &hello.peer_id);
    cbor::text(&mut out, "listen_addresses");
    cbor::array(&mut out, hello.listen_addresses.len());
    for address in &hello.listen_addresses {
        cbor::text(&mut out, address);
    }
    cbor::text(&mut out, "proof");
    match &hello.proof {
        Some(proof) => cbor::bytes(&mut out, proof),
        None => cbor::null(&mut out),
    }
    out
}

/// The key of the nonce in the libp2p handshake's first `hello` (see
/// `docs/protocol.md`, "libp2p").
pub const HELLO_NONCE_KEY: &str = "nonce";

/// A `Hello` payload with a `nonce` entry after the hello's own: 32 bytes
/// as 64 lowercase hex digits. Text, not a byte string, because the hello
/// decoders of older versions skip unknown keys only when their values are
/// JSON-like (text, numbers, arrays, maps).
pub fn encode_hello_with_nonce(hello: &Hello, nonce: &[u8; 32]) -> Vec<u8> {
    let mut out = encode_hello_with(hello, 1);
    cbor::text(&mut out, HELLO_NONCE_KEY);
    cbor::text(&mut out, &hex(nonce));
    out
}

/// The `nonce` of a `Hello` payload (untrusted bytes from the peer), if it
/// has one: 64 hex digits (either case) at the key [`HELLO_NONCE_KEY`] of
/// the payload's map. Reads the map's entries up to that key and stops
/// there; anything malformed before it, or a nonce of another length or
/// alphabet, is `None`.
pub fn hello_nonce(payload: &[u8]) -> Option<[u8; 32]> {
    hello_hex_field(payload, HELLO_NONCE_KEY)
}

/// The value at `key` of a `Hello` payload (untrusted bytes), if it is
/// `N` bytes as `2 * N` hex digits (either case). Reads the map's entries
/// up to that key and stops there; anything malformed before it, or a
/// value of another length or alphabet, is `None`.
pub fn hello_hex_field<const N: usize>(payload: &[u8], key: &str) -> Option<[u8; N]> {
    let mut reader = Reader::new(payload);
    for _ in 0..reader.map().ok()? {
        match reader.text().ok()? {
            found if found == key => return unhex(reader.text().ok()?),
            // The one byte string of a hello (`value` reads JSON-like
            // items only).
            "proof" => {
                if !reader.null() {
                    reader.bytes().ok()?;
                }
            }
            _ => {
                reader.value().ok()?;
            }
        }
    }
    None
}

/// `bytes` as lowercase hex digits.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let digit = |byte: u8| char::from(byte).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        // Digits only: `from_str_radix` would also take a sign.
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// The most listen addresses a `Hello` may carry.
pub(crate) const MAX_LISTEN_ADDRESSES: usize = 32;

fn decode_hello(bytes: &[u8]) -> Option<Hello> {
    let mut reader = Reader::new(bytes);
    let (mut version, mut peer_id, mut addresses, mut proof) = (None, None, None, None);
    for _ in 0..reader.map().ok()? {
        match reader.text().ok()? {
            "protocol_version" => version = Some(u16::try_from(reader.unsigned().ok()?).ok()?),
            "peer_id" => peer_id = Some(reader.text().ok()?.to_owned()),
            "listen_addresses" => {
                let count = reader.array().ok()?;
                if count > MAX_LISTEN_ADDRESSES {
                    return None;
                }
                let mut list = Vec::with_capacity(count);
                for _ in 0..count {
                    list.push(reader.text().ok()?.to_owned());
                }
                addresses = Some(list);
            }
            "proof" => {
                proof = Some(if reader.null() {
                    None
                } else {
                    let proof = reader.bytes().ok()?;
                    if proof.len() > MAX_PROOF_BYTES {
                        return None;
                    }
                    Some(proof.to_vec())
                })
            }
            // Fields added by later versions are skipped.
            _ => {
                reader.value().ok()?;
            }
        }
    }
    if !reader.is_done() {
        return None;
    }
    Some(Hello { protocol_version: version?, peer_id: peer_id?, listen_addresses: addresses.unwrap_or_default(), proof: proof? })
}

fn encode_peers(peers: &[ExchangedPeer], request: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + peers.len() * 96);
    cbor::map(&mut out, 2);
    cbor::text(&mut out, "request");
    cbor::boolean(&mut out, request);
    cbor::text(&mut out, "peers");
    cbor::array(&mut out, peers.len());
    for peer in peers {
        cbor::map(&mut out, 2);
        cbor::text(&mut out, "peer_id");
        cbor::text(&mut out, &peer.peer_id);
        cbor::text(&mut out, "addresses");
        cbor::array(&mut out, peer.addresses.len());
        for address in &peer.addresses {
            cbor::text(&mut out, address);
        }
    }
    out
}

/// Reads a `peers` payload (the peers, and whether it asks for the
/// receiver's); `None` if it does not decode or is over
/// [`MAX_EXCHANGED_PEERS`] / [`MAX_EXCHANGED_ADDRESSES`].
fn decode_peers(bytes: &[u8]) -> Option<(Vec<ExchangedPeer>, bool)> {
    let mut reader = Reader::new(bytes);
    let (mut peers, mut request) = (None, false);
    for _ in 0..reader.map().ok()? {
        match reader.text().ok()? {
            "request" => request = reader.boolean().ok()?,
            "peers" => {
                let count = reader.array().ok()?;
                if count > MAX_EXCHANGED_PEERS {
                    return None;
                }
                let mut list = Vec::with_capacity(count);
                for _ in 0..count {
                    list.push(decode_exchanged_peer(&mut reader)?);
                }
                peers = Some(list);
            }
            _ => {
                reader.value().ok()?;
            }
        }
    }
    reader.is_done().then_some((peers?, request))
}

fn decode_exchanged_peer(reader: &mut Reader<'_>) -> Option<ExchangedPeer> {
    let (mut peer_id, mut addresses) = (None, None);
    for _ in 0..reader.map().ok()? {
        match reader.text().ok()? {
            "peer_id" => peer_id = Some(reader.text().ok()?.to_owned()),
            "addresses" => {
                let count = reader.array().ok()?;
                if count > MAX_EXCHANGED_ADDRESSES {
                    return None;
                }
                let mut list = Vec::with_capacity(count);
                for _ in 0..count {
                    list.push(reader.text().ok()?.to_owned());
                }
                addresses = Some(list);
            }
            _ => {
                reader.value().ok()?;
            }
        }
    }
    Some(ExchangedPeer { peer_id: peer_id?, addresses: addresses? })
}

fn decode_heartbeat(bytes: &[u8]) -> Option<(String, u64)> {
    let mut reader = Reader::new(bytes);
    let (mut peer_id, mut ms) = (None, None);
    for _ in 0..reader.map().ok()? {
        match reader.text().ok()? {
            "peer_id" => peer_id = Some(reader.text().ok()?.to_owned()),
            "timestamp_ms" => ms = Some(reader.unsigned().ok()?),
            _ => {
                reader.value().ok()?;
            }
        }
    }
    reader.is_done().then_some((peer_id?, ms?))
}

fn decode_signal(bytes: &[u8]) -> Option<(String, Bytes)> {
    let mut reader = Reader::new(bytes);
    let (mut peer, mut data) = (None, None);
    for _ in 0..reader.map().ok()? {
        match reader.text().ok()? {
            "peer" => peer = Some(reader.text().ok()?.to_owned()),
            "data" => data = Some(Bytes::copy_from_slice(reader.bytes().ok()?)),
            _ => {
                reader.value().ok()?;
            }
        }
    }
    let data = data.filter(|data| data.len() <= MAX_SIGNAL_BYTES)?;
    reader.is_done().then_some((peer?, data))
}

fn decode_goodbye(bytes: &[u8]) -> Option<String> {
    let mut reader = Reader::new(bytes);
    let mut reason = None;
    for _ in 0..reader.map().ok()? {
        match reader.text().ok()? {
            "reason" => reason = Some(reader.text().ok()?.to_owned()),
            _ => {
                reader.value().ok()?;
            }
        }
    }
    reader.is_done().then_some(reason?)
}

fn decode_error(bytes: &[u8]) -> Option<(ErrorCode, String)> {
    let mut reader = Reader::new(bytes);
    let (mut code, mut message) = (None, None);
    for _ in 0..reader.map().ok()? {
        match reader.text().ok()? {
            "code" => code = Some(ErrorCode::from_code(u16::try_from(reader.unsigned().ok()?).ok()?)),
            "message" => message = Some(reader.text().ok()?.to_owned()),
            _ => {
                reader.value().ok()?;
            }
        }
    }
    reader.is_done().then_some((code?, message?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pluresdb_core::OperationType;

    fn round_trip(message: NetworkMessage) {
        let frame = message.to_frame();
        let bytes = frame.to_bytes().unwrap();
        let mut decoder = crate::codec::FrameDecoder::new();
        decoder.extend(&bytes);
        let back = decoder.decode().unwrap().unwrap();
        assert_eq!(back, frame);
        assert_eq!(NetworkMessage::from_frame(&back).unwrap(), message);
    }

    #[test]
    fn every_message_round_trips() {
        let vv: VersionVector = [("p".to_string(), 3)].into_iter().collect();
        let mut op = OperationWithMetadata::new(OperationType::CreateNode, "n:1".into(), serde_json::json!({"a": 1}), "p");
        op.id.seq = 1;
        round_trip(NetworkMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            peer_id: "12D3KooWx".into(),
            listen_addresses: vec!["quic://127.0.0.1:1".into()],
            proof: Some(vec![7; 32]),
        }));
        round_trip(NetworkMessage::Hello(Hello { protocol_version: 9, peer_id: "x".into(), listen_addresses: vec![], proof: None }));
        let timestamp = DateTime::<Utc>::from_timestamp_millis(1_700_000_000_123).unwrap();
        round_trip(NetworkMessage::Heartbeat { peer_id: "local".into(), timestamp });
        round_trip(NetworkMessage::SyncRequest {
            from_peer: "p".into(),
            round: 4,
            version_vector: vv.clone(),
            origins: OriginRange::all(),
        });
        let page = OriginRange { after: Some("a".into()), through: Some("q".into()) };
        round_trip(NetworkMessage::SyncRequest { from_peer: "p".into(), round: 5, version_vector: vv.clone(), origins: page.clone() });
        round_trip(NetworkMessage::SyncDone { from_peer: "p".into(), round: 5, version_vector: vv.clone(), origins: page });
        round_trip(NetworkMessage::DataSync { from_peer: "p".into(), operations: vec![op], version_vector: vv.clone() });
        round_trip(NetworkMessage::SyncDone { from_peer: "p".into(), round: 4, version_vector: vv.clone(), origins: OriginRange::all() });
        round_trip(NetworkMessage::SyncAck { from_peer: "p".into(), version_vector: vv });
        round_trip(NetworkMessage::Goodbye { reason: "shutting down".into() });
        round_trip(NetworkMessage::Error { code: ErrorCode::RateLimited, message: "slow down".into() });
        round_trip(NetworkMessage::Error { code: ErrorCode::Other(999), message: String::new() });
        round_trip(NetworkMessage::PeerExchange {
            peers: vec![
                ExchangedPeer { peer_id: "a".into(), addresses: vec!["quic://10.0.0.1:34569".into()] },
                ExchangedPeer { peer_id: "b".into(), addresses: vec![] },
            ],
            request: false,
        });
        round_trip(NetworkMessage::PeerExchange { peers: vec![], request: true });
    }

    #[test]
    fn peer_exchanges_over_the_limits_are_refused() {
        let peer =
            |n: usize, addresses: usize| ExchangedPeer { peer_id: format!("p{n}"), addresses: vec!["quic://10.0.0.1:1".into(); addresses] };
        let too_many = NetworkMessage::PeerExchange { peers: (0..=MAX_EXCHANGED_PEERS).map(|n| peer(n, 1)).collect(), request: false };
        assert!(NetworkMessage::from_frame(&too_many.to_frame()).is_err());
        let too_wide = NetworkMessage::PeerExchange { peers: vec![peer(0, MAX_EXCHANGED_ADDRESSES + 1)], request: false };
        assert!(NetworkMessage::from_frame(&too_wide.to_frame()).is_err());
        let at_limits = NetworkMessage::PeerExchange {
            peers: (0..MAX_EXCHANGED_PEERS).map(|n| peer(n, MAX_EXCHANGED_ADDRESSES)).collect(),
            request: false,
        };
        assert!(NetworkMessage::from_frame(&at_limits.to_frame()).is_ok());
    }

    #[test]
    fn sync_messages_convert_both_ways_and_encoded_ones_are_framed_as_is() {
        let message = SyncMessage::SyncAck { from_peer: "p".into(), version_vector: VersionVector::new() };
        let network = NetworkMessage::from(message.clone());
        assert_eq!(SyncMessage::try_from(network.clone()).unwrap(), message);
        let encoded = NetworkMessage::EncodedSync(message.encode().into());
        assert_eq!(encoded.to_frame(), network.to_frame());
        assert_eq!(SyncMessage::try_from(encoded).unwrap(), message);
        assert!(SyncMessage::try_from(NetworkMessage::Goodbye { reason: String::new() }).is_err());

        let data = SyncMessage::DataSync { from_peer: "p".into(), operations: vec![], version_vector: VersionVector::new() };
        assert!(NetworkMessage::EncodedSync(data.encode().into()).is_bulk());
        assert!(NetworkMessage::from(data).is_bulk());
        assert!(!NetworkMessage::EncodedSync(message.encode().into()).is_bulk());
    }

    #[test]
    fn bad_payloads_are_typed_errors() {
        for kind in FrameKind::ALL {
            let err = NetworkMessage::from_frame(&Frame::new(kind, vec![0xff, 0x00])).unwrap_err();
            assert!(matches!(err, CodecError::BadPayload { kind: k, .. } if k == kind), "{kind}: {err}");
        }
    }

    #[test]
    fn the_hello_nonce_is_read_from_the_key_and_nothing_else() {
        let hello =
            Hello { protocol_version: PROTOCOL_VERSION, peer_id: "p".into(), listen_addresses: vec!["a".into()], proof: Some(vec![1; 32]) };
        let nonce: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
        let payload = encode_hello_with_nonce(&hello, &nonce);
        assert_eq!(hello_nonce(&payload), Some(nonce));
        assert_eq!(NetworkMessage::from_frame(&Frame::new(FrameKind::Hello, payload)).unwrap(), NetworkMessage::Hello(hello.clone()));
        // A hello without one, and nonces of the wrong length or alphabet.
        assert_eq!(hello_nonce(&encode_hello_with(&hello, 0)), None);
        let with = |text: &str| {
            let mut out = Vec::new();
            cbor::map(&mut out, 1);
            cbor::text(&mut out, HELLO_NONCE_KEY);
            cbor::text(&mut out, text);
            hello_nonce(&out)
        };
        assert_eq!(with(&"AB".repeat(32)), Some([0xab; 32]), "either case");
        assert_eq!(with(&"ab".repeat(31)), None);
        assert_eq!(with(&"ab".repeat(33)), None);
        assert_eq!(with(&format!("+f{}", "ab".repeat(31))), None, "a sign is not a digit");
        assert_eq!(with(&format!("é{}", "a".repeat(62))), None);
        assert_eq!(hello_nonce(&[0xa1, 0x65]), None, "truncated");
    }
}
