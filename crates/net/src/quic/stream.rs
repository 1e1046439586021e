//! Frames over quinn streams: writing them without copying payloads, and
//! turning quinn's errors into [`NetworkError`]s that say who closed what
//! and why. Reading is the link's: it takes each chunk as it arrives.

use crate::codec::Frame;
use crate::link::CLOSE_NORMAL;
use crate::message::ErrorCode;
use crate::NetworkError;
use quinn::{ConnectionError, ReadError, SendStream, VarInt, WriteError};

/// The most bytes taken from a stream at once; the link decodes every
/// piece before the next is read, so no more than a frame and one piece is
/// ever buffered.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Writes `frame` (header, then the payload as is). Returns the bytes
/// written.
pub async fn write_frame(send: &mut SendStream, frame: &Frame) -> Result<usize, WriteError> {
    let header = match frame.header() {
        Ok(header) => header,
        // Senders check sizes before queueing; a frame that cannot be
        // framed is dropped rather than sent malformed.
        Err(_) => return Ok(0),
    };
    send.write_all(&header).await?;
    send.write_all(&frame.payload).await?;
    Ok(header.len() + frame.payload.len())
}

/// A quinn close code for `code`.
pub fn close_code(code: ErrorCode) -> VarInt {
    VarInt::from_u32(u32::from(code.code()))
}

/// The error for a connection that ended while talking to `peer` (an id,
/// or an address before the handshake said who it is): a PluresDB close
/// code from the peer is a refusal with its reason; anything else is a
/// lost connection.
pub fn connection_ended(peer: &str, err: &ConnectionError) -> NetworkError {
    match err {
        ConnectionError::ApplicationClosed(close) if close.error_code.into_inner() != u64::from(CLOSE_NORMAL) => NetworkError::Refused {
            peer: peer.to_owned(),
            code: ErrorCode::from_code(u16::try_from(close.error_code.into_inner()).unwrap_or(u16::MAX)),
            reason: String::from_utf8_lossy(&close.reason).into_owned(),
        },
        ConnectionError::ApplicationClosed(close) => NetworkError::ConnectionLost {
            peer: peer.to_owned(),
            reason: format!("closed by the peer: {}", String::from_utf8_lossy(&close.reason)),
        },
        other => NetworkError::ConnectionLost { peer: peer.to_owned(), reason: other.to_string() },
    }
}

/// The error for a failed read on a stream with `peer`.
pub fn read_failed(peer: &str, err: &ReadError) -> NetworkError {
    match err {
        ReadError::ConnectionLost(err) => connection_ended(peer, err),
        other => NetworkError::ConnectionLost { peer: peer.to_owned(), reason: format!("stream failed: {other}") },
    }
}

/// The error for a failed write on a stream with `peer`.
pub fn write_failed(peer: &str, err: &WriteError) -> NetworkError {
    match err {
        WriteError::ConnectionLost(err) => connection_ended(peer, err),
        other => NetworkError::ConnectionLost { peer: peer.to_owned(), reason: format!("stream failed: {other}") },
    }
}
