//! The wire framing: versioned, length-prefixed frames, and a streaming
//! [`FrameDecoder`] that reads them from untrusted bytes.
//!
//! A frame is a 6-byte header and a payload:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format version, [`FRAME_VERSION`] (1) |
//! | 1 | kind, a [`FrameKind`] |
//! | 4 | payload length, unsigned big-endian, at most [`MAX_PAYLOAD_BYTES`] |
//! | length | payload (its encoding depends on the kind; see [`crate::message`]) |
//!
//! `docs/protocol.md` ("Frames") is the normative description.

use bytes::{Buf, Bytes, BytesMut};
use std::fmt;

/// The frame format version this code writes and reads.
pub const FRAME_VERSION: u8 = 1;

/// Bytes in a frame header: version, kind, 32-bit length.
pub const HEADER_LEN: usize = 6;

/// The largest payload a frame may carry: the sync protocol's largest
/// message ([`pluresdb_sync::MAX_MESSAGE_BYTES`], 16 MiB), so any sync
/// message fits in one frame.
pub const MAX_PAYLOAD_BYTES: usize = pluresdb_sync::MAX_MESSAGE_BYTES;

/// The largest frame, header included.
pub const MAX_FRAME_BYTES: usize = HEADER_LEN + MAX_PAYLOAD_BYTES;

/// The most bytes sent in one WebRTC data-channel message. A data channel
/// carries the link's frames as one ordered byte stream cut into messages
/// of at most this size (a browser refuses to send a message over the
/// other side's `max-message-size`, 256 KiB in Chromium, and a frame may be
/// 16 MiB); the receiver reads the frames back with a [`FrameDecoder`],
/// which refuses a frame over the limit from its header on.
pub const CHANNEL_CHUNK_BYTES: usize = 64 * 1024;

/// What a frame's payload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// The handshake message ([`crate::Hello`]), CBOR.
    Hello = 1,
    /// A liveness message, CBOR.
    Heartbeat = 2,
    /// One encoded `pluresdb_sync::SyncMessage`, exactly as
    /// `SyncMessage::encode` writes it (so the sync engine's output is
    /// framed without re-encoding).
    Sync = 3,
    /// "I am closing this connection, and why", CBOR.
    Goodbye = 4,
    /// "Your input was refused, and why" (the connection closes next), CBOR.
    Error = 5,
    /// Peer exchange: other peers of the network and where they listen,
    /// CBOR.
    Peers = 6,
    /// Signalling for a direct link between two peers of one node (WebRTC
    /// offers, answers, candidates), which the node relays, CBOR.
    Signal = 7,
}

impl FrameKind {
    /// Every kind, in code order.
    pub const ALL: [FrameKind; 7] = [
        FrameKind::Hello,
        FrameKind::Heartbeat,
        FrameKind::Sync,
        FrameKind::Goodbye,
        FrameKind::Error,
        FrameKind::Peers,
        FrameKind::Signal,
    ];

    /// The kind with code `code`, if there is one.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| *kind as u8 == code)
    }

    /// The kind's code on the wire.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for FrameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            FrameKind::Hello => "hello",
            FrameKind::Heartbeat => "heartbeat",
            FrameKind::Sync => "sync",
            FrameKind::Goodbye => "goodbye",
            FrameKind::Error => "error",
            FrameKind::Peers => "peers",
            FrameKind::Signal => "signal",
        };
        f.write_str(name)
    }
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// What the payload is.
    pub kind: FrameKind,
    /// The payload bytes (shared with the decoder's buffer, not copied).
    pub payload: Bytes,
}

impl Frame {
    /// A frame of `kind` carrying `payload`.
    pub fn new(kind: FrameKind, payload: impl Into<Bytes>) -> Self {
        Self { kind, payload: payload.into() }
    }

    /// The frame's header.
    pub fn header(&self) -> Result<[u8; HEADER_LEN], CodecError> {
        encode_header(self.kind, self.payload.len())
    }

    /// The whole frame as one buffer (header and payload). Writers that can
    /// send two buffers use [`header`](Self::header) and the payload instead,
    /// which copies nothing.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&self.header()?);
        out.extend_from_slice(&self.payload);
        Ok(out)
    }
}

/// Why bytes are not a frame. Every variant is fatal for the stream it came
/// from: framing cannot resynchronise, so the connection is closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The version byte is not one this code reads. The peer is sent an
    /// `Error` frame (code `unsupported_version`) before the connection
    /// closes, so it can tell the operator to upgrade.
    #[error("frame format version {version} is not supported (this node speaks version {FRAME_VERSION})")]
    UnknownVersion {
        /// The version byte received.
        version: u8,
    },
    /// The kind byte names no frame kind.
    #[error("frame kind {kind} is unknown")]
    UnknownKind {
        /// The kind byte received.
        kind: u8,
    },
    /// The length prefix exceeds the limit; nothing of the payload is
    /// buffered.
    #[error("frame of {length} bytes exceeds the limit of {limit} bytes")]
    Oversize {
        /// The payload length claimed.
        length: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame: {buffered} of {expected} bytes received")]
    Truncated {
        /// Bytes of the unfinished frame received.
        buffered: usize,
        /// Bytes the frame needs (the header alone while it is incomplete).
        expected: usize,
    },
    /// The payload does not decode as its kind says.
    #[error("{kind} frame payload does not decode: {reason}")]
    BadPayload {
        /// The frame's kind.
        kind: FrameKind,
        /// What is wrong with it.
        reason: String,
    },
}

/// The header of a frame of `kind` with a payload of `payload_len` bytes.
pub fn encode_header(kind: FrameKind, payload_len: usize) -> Result<[u8; HEADER_LEN], CodecError> {
    if payload_len > MAX_PAYLOAD_BYTES {
        return Err(CodecError::Oversize { length: payload_len, limit: MAX_PAYLOAD_BYTES });
    }
    let len = (payload_len as u32).to_be_bytes();
    Ok([FRAME_VERSION, kind.code(), len[0], len[1], len[2], len[3]])
}

/// Reads frames out of a byte stream that arrives in arbitrary pieces.
///
/// Feed it with [`extend`](Self::extend) and take frames with
/// [`decode`](Self::decode) until it returns `Ok(None)`; at the end of the
/// stream, [`finish`](Self::finish) reports a frame left unfinished. It
/// never panics, whatever the input: the header is checked as soon as its
/// bytes are there (the version from the first byte, the kind from the
/// second, the length from the sixth), so an unknown version or an
/// oversized length is refused before any of the payload is buffered.
///
/// After an error the decoder is spent: every later call returns the same
/// error, and further input is dropped.
#[derive(Debug)]
pub struct FrameDecoder {
    buffer: BytesMut,
    max_payload: usize,
    failed: Option<CodecError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder accepting payloads up to [`MAX_PAYLOAD_BYTES`].
    pub fn new() -> Self {
        Self::with_max_payload(MAX_PAYLOAD_BYTES)
    }

    /// A decoder accepting payloads up to `limit` bytes (at most
    /// [`MAX_PAYLOAD_BYTES`]).
    pub fn with_max_payload(limit: usize) -> Self {
        Self { buffer: BytesMut::new(), max_payload: limit.min(MAX_PAYLOAD_BYTES), failed: None }
    }

    /// Changes the payload limit for frames not yet started, e.g. a small
    /// one during the handshake and the full one after it.
    pub fn set_max_payload(&mut self, limit: usize) {
        self.max_payload = limit.min(MAX_PAYLOAD_BYTES);
    }

    /// The payload limit in force.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Appends received bytes. Call [`decode`](Self::decode) after each
    /// piece: the decoder checks headers only there, so pushing a stream's
    /// whole content without decoding would buffer all of it.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buffer.extend_from_slice(bytes);
        }
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or the
    /// reason the stream is not a sequence of frames.
    pub fn decode(&mut self) -> Result<Option<Frame>, CodecError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        match self.read_frame() {
            Ok(frame) => Ok(frame),
            Err(err) => {
                self.buffer = BytesMut::new();
                self.failed = Some(err.clone());
                Err(err)
            }
        }
    }

    fn read_frame(&mut self) -> Result<Option<Frame>, CodecError> {
        let Some(&version) = self.buffer.first() else { return Ok(None) };
        if version != FRAME_VERSION {
            return Err(CodecError::UnknownVersion { version });
        }
        let Some(&kind) = self.buffer.get(1) else { return Ok(None) };
        let kind = FrameKind::from_code(kind).ok_or(CodecError::UnknownKind { kind })?;
        let Some(len) = self.buffer.get(2..HEADER_LEN) else { return Ok(None) };
        let length = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if length > self.max_payload {
            return Err(CodecError::Oversize { length, limit: self.max_payload });
        }
        let total = HEADER_LEN + length;
        if self.buffer.len() < total {
            // Room for more of this frame, but no more than has arrived: the
            // length is only a claim, and six bytes must not reserve 16 MiB.
            // The buffer doubles, so a large frame still streams in with
            // few copies.
            let missing = total - self.buffer.len();
            self.buffer.reserve(missing.min(self.buffer.len()));
            return Ok(None);
        }
        self.buffer.advance(HEADER_LEN);
        let payload = self.buffer.split_to(length).freeze();
        Ok(Some(Frame { kind, payload }))
    }

    /// Checks that the stream ended between frames. Call once the stream
    /// is finished and [`decode`](Self::decode) has returned `Ok(None)`.
    pub fn finish(&self) -> Result<(), CodecError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        if self.buffer.is_empty() {
            return Ok(());
        }
        let expected = match self.buffer.get(2..HEADER_LEN) {
            Some(len) => HEADER_LEN + u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize,
            None => HEADER_LEN,
        };
        Err(CodecError::Truncated { buffered: self.buffer.len(), expected })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: FrameKind, payload: &[u8]) -> Vec<u8> {
        Frame::new(kind, payload.to_vec()).to_bytes().unwrap()
    }

    #[test]
    fn frames_round_trip_byte_by_byte() {
        let mut stream = frame(FrameKind::Sync, b"hello");
        stream.extend(frame(FrameKind::Heartbeat, b""));
        let mut decoder = FrameDecoder::new();
        let mut frames = Vec::new();
        for byte in &stream {
            decoder.extend(std::slice::from_ref(byte));
            while let Some(frame) = decoder.decode().unwrap() {
                frames.push(frame);
            }
        }
        decoder.finish().unwrap();
        assert_eq!(frames, [Frame::new(FrameKind::Sync, &b"hello"[..]), Frame::new(FrameKind::Heartbeat, Bytes::new())]);
    }

    #[test]
    fn header_errors_are_seen_before_the_payload() {
        let mut decoder = FrameDecoder::new();
        decoder.extend(&[2]);
        assert_eq!(decoder.decode(), Err(CodecError::UnknownVersion { version: 2 }));
        assert_eq!(decoder.decode(), Err(CodecError::UnknownVersion { version: 2 }), "the decoder stays failed");

        let mut decoder = FrameDecoder::new();
        decoder.extend(&[1, 0]);
        assert_eq!(decoder.decode(), Err(CodecError::UnknownKind { kind: 0 }));

        let mut decoder = FrameDecoder::with_max_payload(10);
        decoder.extend(&[1, 3, 0, 0, 0, 11]);
        assert_eq!(decoder.decode(), Err(CodecError::Oversize { length: 11, limit: 10 }));
        assert_eq!(decoder.buffered(), 0);

        let mut decoder = FrameDecoder::new();
        decoder.extend(&[1, 3, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(decoder.decode(), Err(CodecError::Oversize { length: 0xffff_ffff, .. })));
    }

    #[test]
    fn a_stream_ending_inside_a_frame_is_truncated() {
        let mut decoder = FrameDecoder::new();
        decoder.extend(&frame(FrameKind::Goodbye, b"bye")[..7]);
        assert_eq!(decoder.decode(), Ok(None));
        assert_eq!(decoder.finish(), Err(CodecError::Truncated { buffered: 7, expected: 9 }));
        let mut decoder = FrameDecoder::new();
        decoder.extend(&[1, 4]);
        assert_eq!(decoder.decode(), Ok(None));
        assert_eq!(decoder.finish(), Err(CodecError::Truncated { buffered: 2, expected: HEADER_LEN }));
    }

    #[test]
    fn oversized_payloads_are_not_encoded() {
        assert!(matches!(encode_header(FrameKind::Sync, MAX_PAYLOAD_BYTES + 1), Err(CodecError::Oversize { .. })));
        assert_eq!(encode_header(FrameKind::Sync, MAX_PAYLOAD_BYTES).unwrap()[2..], (MAX_PAYLOAD_BYTES as u32).to_be_bytes());
        assert_eq!(MAX_FRAME_BYTES, 16 * 1024 * 1024 + 6);
    }
}
