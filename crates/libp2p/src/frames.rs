//! Frames over a libp2p stream (any `futures` writer), written without
//! copying payloads.

use futures::{AsyncWrite, AsyncWriteExt};
use pluresdb_net::codec::CodecError;
use pluresdb_net::{ErrorCode, Frame, NetworkMessage};
use std::io;

/// The most bytes taken from a stream at once; the decoder sees every
/// piece before the next is read, so no more than a frame and one piece is
/// ever buffered.
pub(crate) const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Writes `frame` (header, then the payload as is) and flushes. Returns
/// the bytes written.
pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, frame: &Frame) -> io::Result<usize> {
    // Senders check sizes before queueing; a frame that cannot be framed
    // is dropped rather than sent malformed.
    let Ok(header) = frame.header() else { return Ok(0) };
    writer.write_all(&header).await?;
    writer.write_all(&frame.payload).await?;
    writer.flush().await?;
    Ok(header.len() + frame.payload.len())
}

/// The frame of an `Error` refusal.
pub(crate) fn error_frame(code: ErrorCode, message: &str) -> Frame {
    NetworkMessage::Error { code, message: message.to_owned() }.to_frame()
}

/// The error code that answers bytes that are not frames.
pub(crate) fn codec_error_code(err: &CodecError) -> ErrorCode {
    match err {
        CodecError::UnknownVersion { .. } => ErrorCode::UnsupportedVersion,
        _ => ErrorCode::BadFrame,
    }
}
