//! PluresDB security: who a node is ([`Identity`], [`PeerId`]), how it talks
//! privately with a peer ([`NetworkEncryption`]), which peers it admits
//! ([`NetworkSecret`], [`AccessPolicy`], [`Ticket`]) and how much it takes
//! from each ([`Limits`], [`RateLimiter`]). Sans-IO and wasm-portable: no
//! sockets, files or clock reads; time comes in as an argument, and
//! randomness only from the platform source (or from bytes the caller
//! passes, for determinism).
//!
//! ```
//! use pluresdb_security::{Identity, NetworkEncryption, SecurityError};
//!
//! // Two nodes, each with its identity (from fixed seeds here; a node uses
//! // `Identity::generate()` once and keeps `to_bytes()` in its data dir).
//! let mut alice = NetworkEncryption::from_identity(Identity::from_seed([1; 32]));
//! let mut bob = NetworkEncryption::from_identity(Identity::from_seed([2; 32]));
//! alice.initialize_with_session_seed([11; 32]); // `initialize().await` draws it at random
//! bob.initialize_with_session_seed([22; 32]);
//!
//! // They exchange key bundles (a network engine does this in its handshake),
//! // each naming the other by peer id.
//! let alice_id = alice.peer_id().unwrap().to_string();
//! let bob_id = bob.peer_id().unwrap().to_string();
//! assert!(alice_id.starts_with("12D3KooW"));
//! alice.add_peer(&bob_id, &bob.public_key_bundle()?)?;
//! bob.add_peer(&alice_id, &alice.public_key_bundle()?)?;
//!
//! let sealed = alice.encrypt(&bob_id, b"Hello, secure world!")?;
//! assert_eq!(bob.decrypt(&alice_id, &sealed)?, b"Hello, secure world!");
//! // The same ciphertext again is a replay.
//! assert!(matches!(bob.decrypt(&alice_id, &sealed), Err(SecurityError::Replayed { .. })));
//!
//! let signature = alice.sign(b"op")?;
//! assert!(bob.verify(&alice_id, b"op", &signature)?);
//! # Ok::<(), SecurityError>(())
//! ```
//!
//! With the `tls` cargo feature (off by default: not for the browser build),
//! the [`tls`] module makes TLS 1.3 certificates that carry the node key and
//! rustls configs that check peer ids, for the QUIC engine.

pub mod encryption;
mod error;
pub mod identity;
pub mod limits;
pub mod ops;
mod replay;
pub mod secret;
pub mod ticket;
#[cfg(feature = "tls")]
pub mod tls;

pub use encryption::{
    NetworkEncryption, DEFAULT_REKEY_INTERVAL, HEADER_LEN, MAX_EPOCH_SKIP, PUBLIC_KEY_BUNDLE_LEN, REPLAY_WINDOW, TAG_LEN,
};
pub use error::SecurityError;
pub use identity::{Identity, PeerId, IDENTITY_BYTES, PEER_ID_BYTES};
pub use limits::{Limits, RateLimit, RateLimiter};
pub use ops::OpSignatureVerifier;
pub use secret::{AccessDenied, AccessMode, AccessPolicy, NetworkSecret};
pub use ticket::{Ticket, MAX_ADDRESS_LEN, MAX_TICKET_ADDRESSES, MAX_TICKET_TEXT, TICKET_PREFIX};
