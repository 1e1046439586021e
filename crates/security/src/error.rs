//! The security crate's error type.

/// What went wrong. Errors about a peer's bytes (a ciphertext, a key, a
/// ticket) concern that input only: the state of every other peer session is
/// unchanged, and a refused ciphertext does not move the replay window.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// [`NetworkEncryption`](crate::NetworkEncryption) was used before
    /// `initialize` gave it its keys.
    #[error("network encryption is not initialized")]
    NotInitialized,
    /// No key was added for this peer with `add_peer_key`.
    #[error("no key is known for peer {0}")]
    UnknownPeer(String),
    /// A peer's public key bundle is unusable.
    #[error("key for peer {peer} is unusable: {reason}")]
    BadKey { peer: String, reason: &'static str },
    /// A ciphertext is shorter than its header and tag.
    #[error("ciphertext from {peer} is {len} bytes; the smallest possible is {min}")]
    Truncated { peer: String, len: usize, min: usize },
    /// A ciphertext header names a format version this code does not know.
    #[error("ciphertext from {peer} has unknown format version {version}")]
    UnsupportedVersion { peer: String, version: u8 },
    /// The ciphertext, its header or its key epoch does not authenticate
    /// under the peer's key: it was altered, or was not sealed for us.
    #[error("ciphertext from {peer} failed authentication (tampered, or sealed with another key)")]
    AuthenticationFailed { peer: String },
    /// This message counter was already accepted from the peer.
    #[error("message {counter} from {peer} was already received (replay)")]
    Replayed { peer: String, counter: u64 },
    /// The message is older than the replay window (or than the previous key
    /// epoch), so whether it is a replay can no longer be told.
    #[error("message {counter} from {peer} is older than the replay window (newest seen: {newest})")]
    TooOld { peer: String, counter: u64, newest: u64 },
    /// The header claims a key epoch too far ahead of the current one.
    #[error("message from {peer} claims key epoch {epoch}; the current is {current}")]
    EpochOutOfRange { peer: String, epoch: u32, current: u32 },
    /// The 2^64 message counter (or 2^32 key epochs) of a session is used
    /// up; the session must be renewed by exchanging fresh keys.
    #[error("the session with {peer} has sent its last possible message")]
    SessionExhausted { peer: String },
    /// Text or bytes that are not a peer id.
    #[error("invalid peer id: {0}")]
    InvalidPeerId(&'static str),
    /// Serialized identity key bytes that do not decode.
    #[error("identity key bytes are corrupt: {0}")]
    CorruptIdentity(&'static str),
    /// Text that is not a network secret.
    #[error("invalid network secret: {0}")]
    InvalidSecret(&'static str),
    /// Text that is not a join ticket.
    #[error("invalid ticket: {0}")]
    InvalidTicket(&'static str),
    /// The access policy refused a peer.
    #[error(transparent)]
    AccessDenied(#[from] crate::AccessDenied),
    /// A peer sent faster than its rate limit allows.
    #[error("peer {peer} exceeds its rate limit; retry in {retry_after_ms} ms")]
    RateLimited { peer: String, retry_after_ms: u64 },
    /// The platform has no randomness source (or it failed).
    #[error("no randomness available: {0}")]
    Randomness(getrandom::Error),
    /// A peer's TLS certificate is not what a PluresDB node presents: not
    /// exactly one well-formed X.509 certificate, not self-signed by the key
    /// it carries, or outside its validity period.
    #[error("peer certificate refused: {reason}")]
    Certificate { reason: String },
    /// A peer's TLS certificate carries a key that is not Ed25519, so it
    /// names no peer id.
    #[error("peer certificate refused: its key is not Ed25519, so it names no peer id")]
    CertificateKeyNotEd25519,
    /// The peer proved it holds the key of peer id `found`, but the
    /// connection was meant for `expected` (both in `12D3KooW...` text form,
    /// like every peer in this enum).
    #[error("peer is {found}, but {expected} was expected")]
    PeerIdMismatch { expected: String, found: String },
    /// Building this node's certificate or TLS configuration failed (`step`
    /// says which); a local fault, not a peer's.
    #[error("TLS setup failed while {step}: {reason}")]
    TlsSetup { step: &'static str, reason: String },
}

impl SecurityError {
    /// The peer the error is about, if any.
    pub fn peer(&self) -> Option<&str> {
        match self {
            SecurityError::UnknownPeer(peer)
            | SecurityError::BadKey { peer, .. }
            | SecurityError::Truncated { peer, .. }
            | SecurityError::UnsupportedVersion { peer, .. }
            | SecurityError::AuthenticationFailed { peer }
            | SecurityError::Replayed { peer, .. }
            | SecurityError::TooOld { peer, .. }
            | SecurityError::EpochOutOfRange { peer, .. }
            | SecurityError::SessionExhausted { peer }
            | SecurityError::RateLimited { peer, .. }
            | SecurityError::PeerIdMismatch { expected: peer, .. } => Some(peer),
            SecurityError::AccessDenied(denied) => denied.peer(),
            SecurityError::NotInitialized
            | SecurityError::InvalidPeerId(_)
            | SecurityError::CorruptIdentity(_)
            | SecurityError::InvalidSecret(_)
            | SecurityError::InvalidTicket(_)
            | SecurityError::Randomness(_)
            | SecurityError::Certificate { .. }
            | SecurityError::CertificateKeyNotEd25519
            | SecurityError::TlsSetup { .. } => None,
        }
    }
}

/// Fills `N` bytes from the platform's randomness source (the OS, or
/// `crypto.getRandomValues` in browsers). The only place the crate draws
/// randomness; every caller also has a variant that takes the bytes.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], SecurityError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(SecurityError::Randomness)?;
    Ok(bytes)
}
