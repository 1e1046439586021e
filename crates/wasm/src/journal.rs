//! [`JournalStore`]: the page's [`Store`], a [`MemoryStore`] whose every
//! committed [`WriteBatch`] is also kept as a journal entry (bytes) for the
//! page to write to IndexedDB.
//!
//! IndexedDB is asynchronous and the core's `Store` is not, so the split
//! is: the core commits into memory at once, and the JavaScript side takes
//! the entries ([`Outbox::take`]) and writes them in one
//! IndexedDB transaction; a write's promise resolves only when that
//! transaction has completed. Opening replays the stored entries in order
//! into a fresh memory store ([`JournalStore::replay`]), which rebuilds
//! exactly the state that was committed: every change a store sees arrives
//! as a batch.
//!
//! An entry is the CBOR of [`Entry`]: the batch's fields, operations as
//! their encoded bodies.

use pluresdb_core::{EncodedOps, Error, ForwardingStore, MemoryStore, NodeRecord, OpId, OperationWithMetadata, Stamp, Store, WriteBatch};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, MutexGuard};

/// The most entries held for the page to take: a page that never flushes
/// (a bug) gets an error instead of growing without bound.
pub const MAX_PENDING_ENTRIES: usize = 100_000;

/// One committed batch, as stored.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    truncate: Vec<(String, u64)>,
    /// `(origin, seq, encoded body)` in commit order.
    ops: Vec<(String, u64, Bytes)>,
    nodes: Vec<Bytes>,
    version_vector: Vec<(String, u64)>,
    meta: Vec<(String, Bytes)>,
    deferred: Vec<Stamp>,
    released: Vec<Stamp>,
}

/// A byte string that CBOR writes as one (not as an array of numbers).
#[derive(Debug)]
struct Bytes(Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        deserializer.deserialize_bytes(Visitor)
    }
}

/// Encodes `batch` as a journal entry.
pub fn encode_entry(batch: &WriteBatch) -> Vec<u8> {
    let entry = Entry {
        truncate: batch.truncate.clone(),
        ops: batch.ops.iter().map(|(id, body)| (id.origin.to_string(), id.seq, Bytes(body.to_vec()))).collect(),
        nodes: batch
            .nodes
            .iter()
            .map(|record| {
                let mut out = Vec::new();
                record.encode_into(&mut out);
                Bytes(out)
            })
            .collect(),
        version_vector: batch.version_vector.clone(),
        meta: batch.meta.iter().map(|(key, value)| (key.clone(), Bytes(value.clone()))).collect(),
        deferred: batch.deferred.clone(),
        released: batch.released.clone(),
    };
    pluresdb_core::codec::encode(&entry)
}

/// Decodes a journal entry back into the batch it was made from.
pub fn decode_entry(bytes: &[u8]) -> Result<WriteBatch, Error> {
    let entry: Entry = pluresdb_core::codec::decode(bytes, "journal entry")?;
    let mut ops = EncodedOps::new();
    for (origin, seq, body) in entry.ops {
        let op = OperationWithMetadata::decode_body(OpId { origin: Arc::from(origin), seq }, &body.0)?;
        ops.push(&op);
    }
    let nodes = entry.nodes.iter().map(|bytes| NodeRecord::decode(&bytes.0)).collect::<Result<_, _>>()?;
    Ok(WriteBatch {
        truncate: entry.truncate,
        ops,
        nodes,
        version_vector: entry.version_vector,
        meta: entry.meta.into_iter().map(|(key, value)| (key, value.0)).collect(),
        deferred: entry.deferred,
        released: entry.released,
        // Secondary indexes are not journaled: the browser replica creates
        // none (only a node's API does), so its batches carry no entries.
        ..WriteBatch::default()
    })
}

/// The entries a [`JournalStore`] committed and the page has not taken
/// yet. A handle: the store (inside the `Database`) adds, the page takes.
#[derive(Clone, Debug, Default)]
pub struct Outbox(Arc<Mutex<Vec<Vec<u8>>>>);

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, Vec<Vec<u8>>> {
        // A panic while holding the lock leaves a list that is still valid.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The entries committed since the last call, oldest first.
    pub fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.lock())
    }

    /// How many entries wait to be taken.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none wait.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A memory store that journals its commits (see the module docs).
#[derive(Debug, Default)]
pub struct JournalStore {
    memory: MemoryStore,
    outbox: Outbox,
}

impl JournalStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The store that `entries` (as stored, oldest first) describe. An
    /// entry that does not decode or apply is an error naming its
    /// position: a damaged journal is reported, never read as empty.
    pub fn replay<'a>(entries: impl IntoIterator<Item = &'a [u8]>) -> Result<Self, Error> {
        let mut memory = MemoryStore::new();
        for (position, bytes) in entries.into_iter().enumerate() {
            let damaged = |err: Error| Error::Decode { what: "journal entry", reason: format!("entry {position}: {err}") };
            let batch = decode_entry(bytes).map_err(damaged)?;
            memory.commit(&batch).map_err(damaged)?;
        }
        Ok(Self { memory, outbox: Outbox::default() })
    }

    /// Where this store's new entries wait for the page.
    pub fn outbox(&self) -> Outbox {
        self.outbox.clone()
    }
}

/// Every call goes to the memory store; a commit also leaves the batch's
/// entry for the page.
impl ForwardingStore for JournalStore {
    type Inner = MemoryStore;

    fn inner(&self) -> &MemoryStore {
        &self.memory
    }

    fn inner_mut(&mut self) -> &mut MemoryStore {
        &mut self.memory
    }

    fn forward_commit(&mut self, batch: &WriteBatch) -> Result<(), Error> {
        let mut pending = self.outbox.lock();
        if pending.len() >= MAX_PENDING_ENTRIES {
            let reason = format!("{MAX_PENDING_ENTRIES} committed batches wait to be written to IndexedDB; the page stopped flushing");
            return Err(Error::Storage(reason.into()));
        }
        self.memory.commit(batch)?;
        pending.push(encode_entry(batch));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pluresdb_core::Database;
    use pluresdb_security::{Identity, OpSignatureVerifier};
    use serde_json::json;

    fn replica(store: JournalStore, identity: &Identity) -> Database<JournalStore> {
        Database::open(store, identity.peer_id().to_string())
            .unwrap()
            .with_signer(Arc::new(identity.clone()))
            .with_verifier(Arc::new(OpSignatureVerifier))
    }

    #[test]
    fn a_replayed_journal_is_the_store_that_wrote_it() {
        let identity = Identity::from_seed([3; 32]);
        let store = JournalStore::new();
        let outbox = store.outbox();
        let mut db = replica(store, &identity);
        for i in 0..50u64 {
            db.put(&format!("note:{i}"), json!({"n": i, "link": {"#": "note:0"}}), 1_000 + i).unwrap();
        }
        db.update("note:7", json!({"n": "seven"}), 2_000).unwrap();
        db.delete("note:9", 2_001).unwrap();
        let entries = outbox.take();
        assert_eq!(entries.len(), 52, "one entry per committed write");

        let reopened = replica(JournalStore::replay(entries.iter().map(Vec::as_slice)).unwrap(), &identity);
        assert_eq!(reopened.version_vector(), db.version_vector());
        assert_eq!(reopened.list("", None, 1_000).unwrap(), db.list("", None, 1_000).unwrap());
        assert_eq!(reopened.history("note:7").unwrap(), db.history("note:7").unwrap());
        assert!(reopened.get("note:9").unwrap().is_none());
        // The reopened replica continues its own chain where it stopped.
        let mut reopened = reopened;
        let receipt = reopened.put("note:new", json!({}), 3_000).unwrap();
        assert_eq!(receipt.id.seq, 53);
    }

    #[test]
    fn a_damaged_entry_is_an_error_naming_it_not_an_empty_store() {
        let identity = Identity::from_seed([4; 32]);
        let store = JournalStore::new();
        let outbox = store.outbox();
        let mut db = replica(store, &identity);
        for i in 0..3 {
            db.put(&format!("n:{i}"), json!({"x": i}), i).unwrap();
        }
        let mut entries = outbox.take();
        // An entry lost from the middle: the next one does not apply.
        let gap = [&entries[0][..], &entries[2][..]];
        let err = JournalStore::replay(gap).unwrap_err().to_string();
        assert!(err.contains("entry 1"), "{err}");
        // A torn entry.
        let torn = entries[1].len() / 2;
        entries[1].truncate(torn);
        let err = JournalStore::replay(entries.iter().map(Vec::as_slice)).unwrap_err().to_string();
        assert!(err.contains("entry 1"), "{err}");
    }
}
