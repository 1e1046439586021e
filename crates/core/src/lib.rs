//! PluresDB core: the data model and merge rules of a local-first graph
//! database, independent of any network or storage engine.
//!
//! A [`Database`] is one replica. Local writes become
//! [`OperationWithMetadata`] values with a per-origin sequence number and a
//! hybrid-logical-clock timestamp; remote operations are applied in any
//! order (per origin in sequence) and every replica that holds the same set
//! of operations shows the same state. Concurrent writes to a field are kept
//! and a [`ConflictResolver`] chooses which one readers see
//! ([`LastWriterWins`] by default).
//!
//! ```
//! use pluresdb_core::{Database, MemoryStore, OperationType, OperationWithMetadata};
//! use serde_json::json;
//!
//! # fn main() -> Result<(), pluresdb_core::Error> {
//! let mut alice = Database::open(MemoryStore::new(), "alice")?;
//! let mut bob = Database::open(MemoryStore::new(), "bob")?;
//!
//! alice.put("user:123", json!({"name": "Alice", "friend": {"#": "user:456"}}), 1_000)?;
//! bob.commit_local(
//!     vec![OperationWithMetadata::new(OperationType::CreateNode, "user:456".into(), json!({"name": "Bob"}), "bob")],
//!     1_001,
//! )?;
//!
//! // Exchange what the other lacks, in any order: both converge.
//! alice.apply_remote(bob.ops_after("bob", 0, 1_000)?, 1_002)?;
//! bob.apply_remote(alice.ops_after("alice", 0, 1_000)?, 1_002)?;
//! assert_eq!(alice.version_vector(), bob.version_vector());
//!
//! let friend = bob.follow("user:123", &["friend"])?;
//! assert!(matches!(friend, pluresdb_core::Traversal::Reached(node) if node.value["name"] == "Bob"));
//! # Ok(())
//! # }
//! ```
//!
//! The crate does no I/O and reads no clock: time is passed in as `now_ms`,
//! and storage sits behind the [`Store`] trait ([`MemoryStore`] here, the
//! durable redb store in `pluresdb-store-redb`). It builds for wasm32.

mod born;
pub mod cbor;
pub mod clock;
pub mod codec;
mod database;
mod error;
pub mod feed;
mod hash_batch;
pub mod index;
pub mod merge;
mod node;
mod operation;
pub mod query;
mod reader;
mod received;
pub mod resolver;
pub mod signing;
mod store;
mod version_vector;

pub use born::{BornRecord, BornRecords};
pub use clock::{Hlc, HybridLogicalClock, DEFAULT_MAX_CLOCK_DRIFT};
pub use database::{ApplyReport, ClockReport, Database, Fork, ForkOutcome, OriginSkew, Receipt, Refusal, RefusalReason, CLOCK_META_KEY};
pub use error::{error_chain, Error, StorageFault};
pub use feed::{Change, ChangeFeed, FeedEvent, Subscription};
pub use index::{IndexDef, IndexEntry, IndexKind, IndexSpec, IndexState};
pub use node::{link_target, FieldValue, Node, NodeRecord, PendingSupersession, Reset, LINK_KEY};
pub use operation::{
    validate_node_id, validate_value, CompactSpan, OpId, OperationType, OperationWithMetadata, Stamp, MAX_NODE_ID_BYTES, MAX_OP_BYTES,
    MAX_ORIGIN_BYTES, MAX_SUPERSEDED_PER_FIELD, MAX_SUPERSEDED_PER_OP, MAX_VALUE_BYTES,
};
pub use query::{Query, QueryPage};
pub use reader::{Reader, Traversal};
pub use received::{ReceivedOp, SignatureCheck};
pub use resolver::{builtin_resolver, ConflictResolver, FirstWriterWins, FnResolver, KeepAll, LastWriterWins};
pub use signing::{OpDigest, OpSignature, OpSigner, OpVerifier, SIGN_EVERY, SIGN_EVERY_BYTES};
#[cfg(feature = "test-support")]
pub use store::ObservedStore;
pub use store::{EncodedOps, ForwardingStore, IndexRange, MemoryStore, Store, WriteBatch};
pub use version_vector::VersionVector;
