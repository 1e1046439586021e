//! The PluresDB handshake on a fresh QUIC connection: each side sends a
//! [`Hello`] with its network-secret proof on the control stream, checks
//! the other's against its access policy, and confirms admission with a
//! first `Heartbeat` (or refuses with an `Error` frame and closes).
//!
//! The proof is `secret::prove` over two transcripts, one per side:
//! `exporter || peer id bytes`, where `exporter` is 32 bytes of TLS keying
//! material exported from this connection (RFC 5705/8446, label
//! [`EXPORTER_LABEL`]). The exporter is unique to the TLS session and
//! known only to its two ends, so a proof cannot be replayed on another
//! connection or relayed by a man in the middle (who would have two TLS
//! sessions with different exporters); the peer ids are the ones the TLS
//! certificates proved, and their order in `prove` fixes the direction.

use super::stream::{self, close_code, next_frame, ReadFailure};
use super::Keys;
use crate::codec::{CodecError, FrameDecoder, FrameKind};
use crate::error::NetworkError;
use crate::message::{ErrorCode, Hello, NetworkMessage, PROTOCOL_VERSION};
use crate::peer::Direction;
use pluresdb_security::{secret, tls, PeerId};
use quinn::{Connection, RecvStream, SendStream};
use rustls::pki_types::CertificateDer;
use std::time::Duration;

/// The TLS exporter label for handshake transcripts.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-pluresdb-hello-v1";

/// The largest frame payload accepted before the handshake completes.
pub const HANDSHAKE_MAX_PAYLOAD: usize = 64 * 1024;

/// How long a refusing side waits for the peer to read its `Error` frame
/// and close, before closing itself.
pub const LINGER: Duration = Duration::from_millis(500);

/// A connection whose handshake succeeded.
pub struct Handshaken {
    /// The peer id, from the certificate.
    pub peer_id: String,
    /// The peer's `Hello`.
    pub hello: Hello,
    /// The control stream's sending half.
    pub send: SendStream,
    /// The control stream's receiving half.
    pub recv: RecvStream,
    /// The control stream's decoder, holding any bytes read past the
    /// handshake.
    pub decoder: FrameDecoder,
    /// Whether the peer proved it holds the network secret.
    pub proof_ok: bool,
}

/// A failed handshake: the error, and the refusal to send the peer if
/// this side is the one refusing.
struct Failure {
    error: NetworkError,
    refusal: Option<Refusal>,
}

/// An `Error` frame to send before closing. The receiving half is kept
/// open until then: dropping it would tell the peer to stop sending
/// (STOP_SENDING) before it reads why.
struct Refusal {
    send: SendStream,
    _recv: RecvStream,
    code: ErrorCode,
    message: String,
}

impl Failure {
    fn refuse(error: NetworkError, send: SendStream, recv: RecvStream, code: ErrorCode, message: String) -> Self {
        Failure { error, refusal: Some(Refusal { send, _recv: recv, code, message }) }
    }
}

impl From<NetworkError> for Failure {
    fn from(error: NetworkError) -> Self {
        Failure { error, refusal: None }
    }
}

/// The peer id proven by the connection's TLS handshake.
pub fn peer_id_of(connection: &Connection) -> Result<PeerId, String> {
    let identity = connection.peer_identity().ok_or("the peer presented no certificate")?;
    let certificates = identity.downcast::<Vec<CertificateDer<'static>>>().map_err(|_| "the peer identity is not a certificate chain")?;
    tls::peer_id_of_certificates(&certificates).map_err(|err| err.to_string())
}

/// Runs the handshake until `deadline`, the end of the connection's
/// `timeout` for getting admitted. On refusal (by either side) the
/// connection is closed with the refusal's code and reason.
pub async fn run(
    keys: &Keys,
    connection: &Connection,
    direction: Direction,
    listen_addresses: Vec<String>,
    max_payload: usize,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<Handshaken, NetworkError> {
    let address = connection.remote_address().to_string();
    let peer = match peer_id_of(connection) {
        Ok(peer) => peer,
        Err(reason) => {
            connection.close(close_code(ErrorCode::AccessDenied), reason.as_bytes());
            return Err(NetworkError::Handshake { peer: address.clone(), address, reason });
        }
    };
    let exchange = exchange(keys, connection, direction, listen_addresses, &peer, &address);
    let failure = match tokio::time::timeout_at(deadline, exchange).await {
        Ok(Ok(mut done)) => {
            done.decoder.set_max_payload(max_payload);
            return Ok(done);
        }
        Ok(Err(failure)) => failure,
        Err(_) => {
            let reason = format!("handshake did not complete within {timeout:?}");
            connection.close(close_code(ErrorCode::HandshakeTimeout), reason.as_bytes());
            return Err(NetworkError::HandshakeTimeout { address, after: timeout });
        }
    };
    if let Some(refusal) = failure.refusal {
        refuse(connection, refusal.send, refusal.code, &refusal.message).await;
    }
    Err(failure.error)
}

/// Sends `Error { code, message }`, gives the peer [`LINGER`] to read it
/// and close, then closes with `code`.
pub async fn refuse(connection: &Connection, mut send: SendStream, code: ErrorCode, message: &str) {
    let frame = NetworkMessage::Error { code, message: message.to_owned() };
    let written = tokio::time::timeout(LINGER, stream::write_message(&mut send, &frame)).await;
    if matches!(written, Ok(Ok(_))) {
        let _ = send.finish();
        let _ = tokio::time::timeout(LINGER, connection.closed()).await;
    }
    connection.close(close_code(code), message.as_bytes());
}

fn transcript(exporter: &[u8; 32], peer: &PeerId) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + pluresdb_security::PEER_ID_BYTES);
    out.extend_from_slice(exporter);
    out.extend_from_slice(&peer.to_bytes());
    out
}

async fn exchange(
    keys: &Keys,
    connection: &Connection,
    direction: Direction,
    listen_addresses: Vec<String>,
    peer: &PeerId,
    address: &str,
) -> Result<Handshaken, Failure> {
    let peer_text = peer.to_string();
    let handshake_error = |reason: String| NetworkError::Handshake { peer: peer_text.clone(), address: address.to_owned(), reason };
    let opened = match direction {
        Direction::Dialled => connection.open_bi().await,
        Direction::Accepted => connection.accept_bi().await,
    };
    let (mut send, mut recv) = opened.map_err(|err| stream::connection_ended(&peer_text, &err))?;
    // Control frames go ahead of bulk data (see `link`).
    let _ = send.set_priority(1);

    let mut exporter = [0u8; 32];
    connection
        .export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
        .map_err(|_| handshake_error("TLS keying material export failed".to_owned()))?;
    let ours = transcript(&exporter, &keys.peer_id);
    let theirs = transcript(&exporter, peer);
    let proof = keys.policy.secret.as_ref().map(|secret| secret::prove(secret, &ours, &theirs).to_vec());
    let hello = Hello { protocol_version: PROTOCOL_VERSION, peer_id: keys.peer_id_text.clone(), listen_addresses, proof };
    stream::write_message(&mut send, &NetworkMessage::Hello(hello)).await.map_err(|err| stream::write_failed(&peer_text, &err))?;

    let mut decoder = FrameDecoder::with_max_payload(HANDSHAKE_MAX_PAYLOAD);
    let their_hello = match read_message(connection, &mut recv, &mut decoder, &peer_text).await {
        Ok(NetworkMessage::Hello(hello)) => hello,
        Ok(other) => {
            let message = format!("expected a hello frame, got a {} frame", other.kind());
            return Err(Failure::refuse(handshake_error(message.clone()), send, recv, ErrorCode::UnexpectedMessage, message));
        }
        Err(ReadOutcome::Failed(error)) => return Err(error.into()),
        Err(ReadOutcome::Refuse(code, message)) => {
            return Err(Failure::refuse(handshake_error(message.clone()), send, recv, code, message));
        }
    };
    if their_hello.protocol_version != PROTOCOL_VERSION {
        let error =
            NetworkError::UnsupportedVersion { peer: peer_text.clone(), version: their_hello.protocol_version, ours: PROTOCOL_VERSION };
        let message = error.to_string();
        return Err(Failure::refuse(error, send, recv, ErrorCode::UnsupportedVersion, message));
    }
    if their_hello.peer_id != peer_text {
        let message = format!("hello names peer {}, but the certificate is {peer_text}", their_hello.peer_id);
        return Err(Failure::refuse(handshake_error(message.clone()), send, recv, ErrorCode::UnexpectedMessage, message));
    }
    let proof_ok = match (&keys.policy.secret, &their_hello.proof) {
        (Some(secret), Some(proof)) => secret::verify(secret, &ours, &theirs, proof),
        _ => false,
    };
    if let Err(denied) = keys.policy.admits(&peer_text, proof_ok) {
        let message = denied.to_string();
        tracing::warn!(peer = %peer_text, %address, reason = %message, "refused a peer");
        return Err(Failure::refuse(NetworkError::AccessDenied(denied), send, recv, ErrorCode::AccessDenied, message));
    }

    // Admitted: open the connection up to a link's limits, then say so
    // with the first heartbeat (the peer sends sync frames only after it).
    super::admit_transport(connection);
    let admitted = NetworkMessage::Heartbeat { peer_id: keys.peer_id_text.clone(), timestamp: chrono::Utc::now() };
    stream::write_message(&mut send, &admitted).await.map_err(|err| stream::write_failed(&peer_text, &err))?;
    match read_message(connection, &mut recv, &mut decoder, &peer_text).await {
        Ok(NetworkMessage::Heartbeat { .. }) => {}
        Ok(other) => {
            let message = format!("expected a heartbeat frame after hello, got a {} frame", other.kind());
            return Err(Failure::refuse(handshake_error(message.clone()), send, recv, ErrorCode::UnexpectedMessage, message));
        }
        Err(ReadOutcome::Failed(error)) => return Err(error.into()),
        Err(ReadOutcome::Refuse(code, message)) => {
            return Err(Failure::refuse(handshake_error(message.clone()), send, recv, code, message));
        }
    }
    Ok(Handshaken { peer_id: peer_text, hello: their_hello, send, recv, decoder, proof_ok })
}

enum ReadOutcome {
    /// The peer refused us, or the connection failed.
    Failed(NetworkError),
    /// The peer's input is bad: refuse it with this code and message.
    Refuse(ErrorCode, String),
}

/// Reads one handshake message. An `Error` frame from the peer is its
/// refusal: the connection is closed and the refusal returned.
async fn read_message(
    connection: &Connection,
    recv: &mut RecvStream,
    decoder: &mut FrameDecoder,
    peer: &str,
) -> Result<NetworkMessage, ReadOutcome> {
    let frame = match next_frame(recv, decoder).await {
        Ok(Some(frame)) => frame,
        Ok(None) => {
            return Err(ReadOutcome::Failed(NetworkError::ConnectionLost {
                peer: peer.to_owned(),
                reason: "the peer closed the control stream during the handshake".to_owned(),
            }))
        }
        Err(ReadFailure::Codec(err)) => return Err(refusal_for(&err)),
        Err(ReadFailure::Stream(err)) => return Err(ReadOutcome::Failed(stream::read_failed(peer, &err))),
    };
    if matches!(frame.kind, FrameKind::Sync) {
        return Err(ReadOutcome::Refuse(ErrorCode::UnexpectedMessage, "sync frame before the handshake completed".to_owned()));
    }
    match NetworkMessage::from_frame(&frame) {
        Ok(NetworkMessage::Error { code, message }) => {
            connection.close(close_code(code), message.as_bytes());
            Err(ReadOutcome::Failed(NetworkError::Refused { peer: peer.to_owned(), code, reason: message }))
        }
        Ok(message) => Ok(message),
        Err(err) => Err(refusal_for(&err)),
    }
}

/// The refusal for bytes that are not frames.
fn refusal_for(err: &CodecError) -> ReadOutcome {
    ReadOutcome::Refuse(codec_error_code(err), err.to_string())
}

/// The error code that answers bytes that are not frames.
pub fn codec_error_code(err: &CodecError) -> ErrorCode {
    match err {
        CodecError::UnknownVersion { .. } => ErrorCode::UnsupportedVersion,
        _ => ErrorCode::BadFrame,
    }
}
