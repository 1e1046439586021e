//! The network crate's error type.

use crate::codec::CodecError;
use crate::message::ErrorCode;
use pluresdb_security::{AccessDenied, SecurityError};
use std::time::Duration;

/// What went wrong, naming the step and the peer or address concerned.
/// Errors about one peer concern that peer only: the engine keeps serving
/// the others.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The configuration cannot work (e.g. `enable_encryption: false` for
    /// QUIC, a bind address that is not an IP address).
    #[error("invalid network configuration: {0}")]
    Config(String),
    /// A method that needs a started engine was called before `start` or
    /// after `stop`.
    #[error("the network engine is not running")]
    NotRunning,
    /// `start` was called on a running engine.
    #[error("the network engine is already running")]
    AlreadyRunning,
    /// The address is not `host:port` or `quic://host:port`, or does not
    /// resolve.
    #[error("invalid peer address {address:?}: {reason}")]
    InvalidAddress {
        /// The address given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Binding the UDP socket failed.
    #[error("cannot listen on {address}")]
    Bind {
        /// The address bound.
        address: String,
        #[source]
        source: std::io::Error,
    },
    /// Building this node's keys or TLS configuration failed.
    #[error("TLS setup failed")]
    Tls(#[source] SecurityError),
    /// Dialling failed before a connection existed, or the connection
    /// failed during the QUIC/TLS handshake (unreachable, wrong peer id in
    /// the certificate, timeout, ...).
    #[error("cannot connect to {address}: {reason}")]
    Connect {
        /// The address dialled.
        address: String,
        /// Why, as quinn and rustls report it.
        reason: String,
    },
    /// The PluresDB handshake (the `Hello` exchange) failed.
    #[error("handshake with {peer} at {address} failed: {reason}")]
    Handshake {
        /// The peer id from its certificate.
        peer: String,
        /// Its address.
        address: String,
        /// What went wrong.
        reason: String,
    },
    /// The handshake did not complete in time.
    #[error("handshake with {address} did not complete within {after:?}")]
    HandshakeTimeout {
        /// The peer's address.
        address: String,
        /// The handshake timeout.
        after: Duration,
    },
    /// The peer refused this node: it sent an `Error` frame or closed the
    /// connection with a PluresDB error code.
    #[error("{peer} refused the connection ({code}): {reason}")]
    Refused {
        /// The peer id (or address, if the refusal came before the
        /// handshake told who it is).
        peer: String,
        /// The refusal's code.
        code: ErrorCode,
        /// The peer's explanation.
        reason: String,
    },
    /// This node's access policy refused the peer.
    #[error("refused the peer")]
    AccessDenied(#[from] AccessDenied),
    /// The peer speaks a protocol version this node does not.
    #[error("{peer} speaks protocol version {version}; this node speaks {ours}")]
    UnsupportedVersion {
        /// The peer id.
        peer: String,
        /// Its version.
        version: u16,
        /// Ours.
        ours: u16,
    },
    /// The peer is not connected.
    #[error("peer {0} is not connected")]
    PeerNotConnected(String),
    /// The peer's outbound queue is full: the message was not queued. The
    /// sync engine resends what is not acknowledged, so dropping it loses
    /// nothing; callers may also retry later.
    #[error("peer {peer} is busy: its outbound queue is full")]
    PeerBusy {
        /// The peer id.
        peer: String,
    },
    /// The message is the engine's own to send (`Hello`, `Goodbye`,
    /// `Error`); use `connect_peer` / `disconnect_peer` instead.
    #[error("{kind} messages are sent by the engine itself")]
    NotSendable {
        /// The message's frame kind.
        kind: crate::codec::FrameKind,
    },
    /// The connection limit is reached.
    #[error("connection limit of {limit} reached")]
    TooManyConnections {
        /// `max_connections`.
        limit: usize,
    },
    /// A peer's bytes are not valid frames.
    #[error("bad frame from {peer}")]
    Codec {
        /// The peer id or address.
        peer: String,
        #[source]
        source: CodecError,
    },
    /// The connection to the peer is gone.
    #[error("connection to {peer} lost: {reason}")]
    ConnectionLost {
        /// The peer id.
        peer: String,
        /// Why.
        reason: String,
    },
}

impl NetworkError {
    /// The peer (id, or address before the handshake) the error is about,
    /// if any.
    pub fn peer(&self) -> Option<&str> {
        match self {
            NetworkError::Connect { address: peer, .. }
            | NetworkError::Handshake { peer, .. }
            | NetworkError::HandshakeTimeout { address: peer, .. }
            | NetworkError::Refused { peer, .. }
            | NetworkError::UnsupportedVersion { peer, .. }
            | NetworkError::PeerNotConnected(peer)
            | NetworkError::PeerBusy { peer }
            | NetworkError::Codec { peer, .. }
            | NetworkError::ConnectionLost { peer, .. }
            | NetworkError::InvalidAddress { address: peer, .. } => Some(peer),
            NetworkError::AccessDenied(denied) => denied.peer(),
            NetworkError::Config(_)
            | NetworkError::NotRunning
            | NetworkError::AlreadyRunning
            | NetworkError::Bind { .. }
            | NetworkError::Tls(_)
            | NetworkError::NotSendable { .. }
            | NetworkError::TooManyConnections { .. } => None,
        }
    }
}
