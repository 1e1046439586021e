//! The PluresDB link protocol, portable to every target the database runs
//! on (native nodes and browser pages, wasm32): the frame [`codec`], the
//! [`message`]s peers exchange, and [`link::Link`], the sans-IO state
//! machine that runs admission (the network-secret proof), heartbeats,
//! receive limits and peer exchange over one authenticated connection.
//! Transports (QUIC, libp2p, a browser's WebSocket) only move its bytes and
//! pass time in; `pluresdb-net` re-exports all of it, so native code names
//! these types as `pluresdb_net::...`.
//!
//! The crate reads no clock and no socket, and builds with Rust 1.85 for
//! wasm32 (tests/wasm_portability.rs): the same code decides admission in
//! a node and in a page.
//!
//! A message through the codec and back:
//!
//! ```
//! use pluresdb_link::{FrameDecoder, NetworkMessage};
//!
//! let goodbye = NetworkMessage::Goodbye { reason: "done".into() };
//! let bytes = goodbye.to_frame().to_bytes().unwrap();
//! let mut decoder = FrameDecoder::new();
//! decoder.extend(&bytes);
//! let frame = decoder.decode().unwrap().unwrap();
//! assert_eq!(NetworkMessage::from_frame(&frame).unwrap(), goodbye);
//! ```

pub mod codec;
mod error;
mod limits;
pub mod link;
pub mod message;
pub mod socket;

pub use codec::{CodecError, Frame, FrameDecoder, FrameKind, CHANNEL_CHUNK_BYTES, MAX_FRAME_BYTES};
pub use error::NetworkError;
pub use limits::ReceiveLimits;
pub use message::{
    ErrorCode, ExchangedPeer, Hello, NetworkMessage, NotSyncMessage, MAX_EXCHANGED_ADDRESSES, MAX_EXCHANGED_PEERS, PROTOCOL_VERSION,
};
