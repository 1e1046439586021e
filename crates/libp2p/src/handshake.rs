//! The nonce step that starts a `/pluresdb/sync/1` stream, before the link
//! machine ([`pluresdb_net::link::Link`]) runs the admission handshake.
//!
//! Noise authenticates both peer ids but, unlike TLS, exports no keying
//! material to bind a proof to the session. So the session binding is made
//! on the stream itself from two fresh nonces:
//!
//! 1. Each side first sends a `hello` with `proof: null` and a `nonce` (32
//!    random bytes as 64 lowercase hex digits; a key the QUIC engine does
//!    not use, and decoders skip keys they do not know).
//! 2. On the peer's first frame (a `hello` with a `nonce`, else an `error`
//!    frame and the stream closes) both compute the binding
//!    `SHA-256("pluresdb/libp2p-binding/v1" || initiator's nonce ||
//!    responder's nonce)` (the initiator opened the stream).
//! 3. From there the stream is the link protocol of every transport: each
//!    side sends its `hello` with the proof over `binding || peer id
//!    bytes` (the QUIC rule with the TLS exporter replaced by the
//!    binding), checks the peer's against its access policy (`error`
//!    `access_denied` and close on refusal), and confirms with a first
//!    `heartbeat`.
//!
//! A proof is fresh because the verifier's own nonce is in it (a recorded
//! proof never matches a new nonce), and it cannot be relayed because the
//! noise-authenticated ids of both ends are in it: a man in the middle
//! talks to each side under its own id, so a proof made for it names it,
//! not the peer it relays to.

use crate::frames::{self, codec_error_code, error_frame};
use bytes::Bytes;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use pluresdb_net::codec::{CodecError, FRAME_VERSION, HEADER_LEN};
use pluresdb_net::link::HANDSHAKE_MAX_PAYLOAD;
use pluresdb_net::{ErrorCode, Frame, FrameKind, Hello, NetworkError, NetworkMessage};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// The label of the session binding (see the module docs).
pub const BINDING_LABEL: &[u8] = b"pluresdb/libp2p-binding/v1";

/// How long a refusing side waits for the peer to read its `error` frame.
pub(crate) const LINGER: Duration = Duration::from_millis(500);

/// Which side opened the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// This node opened the stream.
    Initiator,
    /// The peer opened it.
    Responder,
}

/// A `hello` frame as the libp2p handshake sends it: the QUIC engine's
/// fields and the `nonce` ([`pluresdb_net::message::encode_hello_with_nonce`]).
pub fn hello_frame(hello: &Hello, nonce: &[u8; 32]) -> Frame {
    Frame::new(FrameKind::Hello, Bytes::from(pluresdb_net::message::encode_hello_with_nonce(hello, nonce)))
}

/// The `nonce` of a hello payload, if it has one (64 hex digits: 32
/// bytes); [`pluresdb_net::message::hello_nonce`], which is fuzzed
/// (`fuzz/fuzz_targets/hello_nonce.rs`).
pub fn nonce_of(payload: &[u8]) -> Option<[u8; 32]> {
    pluresdb_net::message::hello_nonce(payload)
}

/// The session binding of a stream whose initiator sent `initiator` and
/// responder `responder`.
pub fn binding(initiator: &[u8; 32], responder: &[u8; 32]) -> [u8; 32] {
    Sha256::new().chain_update(BINDING_LABEL).chain_update(initiator).chain_update(responder).finalize().into()
}

/// One side's transcript: `binding || peer id bytes` (what the link
/// machine proves over; here for clients that speak the protocol by hand).
pub fn transcript(binding: &[u8; 32], peer: &pluresdb_security::PeerId) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + pluresdb_security::PEER_ID_BYTES);
    out.extend_from_slice(binding);
    out.extend_from_slice(&peer.to_bytes());
    out
}

/// Runs the nonce step as `role` until `deadline` and returns the session
/// binding. Reads exactly the peer's first frame, so every byte after it
/// is left for the link machine. On a refusal by this side, sends the
/// `error` frame, closes the writer and reads on until the peer closes
/// (at most [`LINGER`]) so it can read why.
pub(crate) async fn exchange_nonces<R, W>(
    local: &Hello,
    peer: &str,
    role: Role,
    reader: &mut R,
    writer: &mut W,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<[u8; 32], NetworkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let step = async {
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).map_err(|err| Failure::from(NetworkError::Config(format!("no randomness for the nonce: {err}"))))?;
        frames::write_frame(writer, &hello_frame(local, &nonce)).await.map_err(|err| Failure::from(lost(peer, &err)))?;
        let theirs = read_nonce(reader, peer).await?;
        Ok::<_, Failure>(match role {
            Role::Initiator => binding(&nonce, &theirs),
            Role::Responder => binding(&theirs, &nonce),
        })
    };
    let failure = match tokio::time::timeout_at(deadline, step).await {
        Ok(Ok(binding)) => return Ok(binding),
        Ok(Err(failure)) => failure,
        Err(_) => Failure {
            error: NetworkError::HandshakeTimeout { address: peer.to_owned(), after: timeout },
            refusal: Some((ErrorCode::HandshakeTimeout, format!("handshake did not complete within {timeout:?}"))),
        },
    };
    if let Some((code, message)) = failure.refusal {
        let _ = tokio::time::timeout(LINGER, frames::write_frame(writer, &error_frame(code, &message))).await;
        let _ = tokio::time::timeout(LINGER, writer.close()).await;
        let mut chunk = [0u8; 1024];
        let drain = async { while matches!(reader.read(&mut chunk).await, Ok(n) if n > 0) {} };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }
    Err(failure.error)
}

fn lost(peer: &str, err: &std::io::Error) -> NetworkError {
    NetworkError::ConnectionLost { peer: peer.to_owned(), reason: format!("sync stream failed: {err}") }
}

/// How the nonce step failed: the error, and the refusal to send the peer
/// if this side is the one refusing.
struct Failure {
    error: NetworkError,
    refusal: Option<(ErrorCode, String)>,
}

impl From<NetworkError> for Failure {
    fn from(error: NetworkError) -> Self {
        Failure { error, refusal: None }
    }
}

impl Failure {
    fn refuse(peer: &str, code: ErrorCode, message: String) -> Self {
        let error = NetworkError::Handshake { peer: peer.to_owned(), address: String::new(), reason: message.clone() };
        Failure { error, refusal: Some((code, message)) }
    }
}

/// Reads the peer's first frame, byte-exact: a `hello` with a nonce.
async fn read_nonce<R: AsyncRead + Unpin>(reader: &mut R, peer: &str) -> Result<[u8; 32], Failure> {
    let mut header = [0u8; HEADER_LEN];
    reader.read_exact(&mut header).await.map_err(|err| Failure::from(lost(peer, &err)))?;
    if header[0] != FRAME_VERSION {
        let err = CodecError::UnknownVersion { version: header[0] };
        return Err(Failure::refuse(peer, codec_error_code(&err), err.to_string()));
    }
    let Some(kind) = FrameKind::from_code(header[1]) else {
        let err = CodecError::UnknownKind { kind: header[1] };
        return Err(Failure::refuse(peer, codec_error_code(&err), err.to_string()));
    };
    let length = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
    if length > HANDSHAKE_MAX_PAYLOAD {
        let err = CodecError::Oversize { length, limit: HANDSHAKE_MAX_PAYLOAD };
        return Err(Failure::refuse(peer, codec_error_code(&err), err.to_string()));
    }
    let mut payload = vec![0u8; length];
    reader.read_exact(&mut payload).await.map_err(|err| Failure::from(lost(peer, &err)))?;
    let frame = Frame::new(kind, payload);
    match NetworkMessage::from_frame(&frame) {
        Ok(NetworkMessage::Hello(_)) => match nonce_of(&frame.payload) {
            Some(nonce) => Ok(nonce),
            None => Err(Failure::refuse(
                peer,
                ErrorCode::BadFrame,
                "the first hello on /pluresdb/sync/1 must carry a nonce (64 hex digits); see docs/protocol.md, libp2p".to_owned(),
            )),
        },
        Ok(NetworkMessage::Error { code, message }) => {
            Err(Failure::from(NetworkError::Refused { peer: peer.to_owned(), code, reason: message }))
        }
        Ok(other) => {
            Err(Failure::refuse(peer, ErrorCode::UnexpectedMessage, format!("expected a hello frame, got a {} frame", other.kind())))
        }
        Err(err) => Err(Failure::refuse(peer, codec_error_code(&err), err.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pluresdb_net::PROTOCOL_VERSION;

    #[test]
    fn the_hello_carries_the_nonce_and_reads_as_a_plain_hello() {
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            peer_id: "12D3KooWx".into(),
            listen_addresses: vec!["/ip4/127.0.0.1/tcp/1".into()],
            proof: Some(vec![9; 32]),
        };
        let frame = hello_frame(&hello, &[5; 32]);
        assert_eq!(NetworkMessage::from_frame(&frame).unwrap(), NetworkMessage::Hello(hello));
        assert_eq!(nonce_of(&frame.payload), Some([5; 32]));
        let plain = NetworkMessage::Hello(Hello { protocol_version: 1, peer_id: "x".into(), listen_addresses: vec![], proof: None });
        assert_eq!(nonce_of(&plain.to_frame().payload), None, "a QUIC hello has no nonce");
    }

    #[test]
    fn the_binding_is_ordered_and_fresh() {
        assert_eq!(binding(&[1; 32], &[2; 32]), binding(&[1; 32], &[2; 32]));
        assert_ne!(binding(&[1; 32], &[2; 32]), binding(&[2; 32], &[1; 32]));
        assert_ne!(binding(&[1; 32], &[2; 32]), binding(&[1; 32], &[3; 32]));
    }
}
