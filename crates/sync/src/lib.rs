//! PluresDB sync: the [`DataSyncEngine`] that keeps replicas converged, as a
//! sans-IO state machine, and a deterministic network [`sim`]ulator that
//! drives many of them.
//!
//! ```
//! use pluresdb_core::{OperationType, OperationWithMetadata};
//! use pluresdb_sync::{DataSyncEngine, SyncConfig};
//!
//! let mut a = DataSyncEngine::new(SyncConfig::default());
//! let mut b = DataSyncEngine::new(SyncConfig::default());
//! let now = 1_700_000_000_000;
//! a.write(vec![OperationWithMetadata::new(OperationType::CreateNode, "user:1".into(), serde_json::json!({"name": "Alice"}), "peer-a")], now).unwrap();
//! b.write(vec![OperationWithMetadata::new(OperationType::CreateNode, "user:2".into(), serde_json::json!({"name": "Bob"}), "peer-b")], now).unwrap();
//!
//! // Connect them through an in-memory "network": whatever one sends, the
//! // other handles, until neither has anything to say.
//! a.start(now);
//! b.start(now);
//! a.peer_connected("peer-b", now);
//! b.peer_connected("peer-a", now);
//! loop {
//!     let mut idle = true;
//!     while let Some(t) = a.poll_transmit() { b.handle_input("peer-a", &t.bytes, now).unwrap(); idle = false; }
//!     while let Some(t) = b.poll_transmit() { a.handle_input("peer-b", &t.bytes, now).unwrap(); idle = false; }
//!     if idle { break; }
//! }
//! assert_eq!(a.database().version_vector(), b.database().version_vector());
//! assert_eq!(a.database().get("user:2").unwrap().unwrap().value["name"], "Bob");
//! ```

mod config;
mod engine;
mod error;
mod inbound;
mod message;
pub mod sim;
mod status;
mod store_health;

pub use config::{SyncConfig, NODE_ACK_DELAY};
pub use engine::{DataSyncEngine, Transmit};
pub use error::SyncError;
pub use inbound::Inbound;
pub use message::{OriginRange, SyncMessage, BATCH_BYTE_BUDGET, MAX_BATCH_BYTES, MAX_MESSAGE_BYTES, MAX_PLAUSIBLE_SEQ, MAX_VECTOR_ENTRIES};
pub use status::{ForkEvent, ForkStatus, PeerSyncStatus, SyncStatus, Traffic};
pub use store_health::{StoreEvent, StoreStatus, MAX_RETRY_MS};
