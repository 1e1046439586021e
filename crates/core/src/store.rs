//! The storage interface a [`Database`](crate::Database) runs on, and an
//! in-memory implementation.
//!
//! A store is plain storage: all merge logic lives in the core, so every
//! store behaves the same. Writes arrive as one [`WriteBatch`] that the store
//! must make durable atomically: when [`Store::commit`] returns `Ok`, the whole
//! batch survives a crash; when it fails or the process dies first, none of
//! it is visible.

use crate::born::BornRecords;
use crate::error::Error;
use crate::index::IndexEntry;
use crate::node::NodeRecord;
use crate::operation::{OpId, OperationWithMetadata, Stamp};
use crate::signing::{OpDigest, OpSignature};
use crate::version_vector::VersionVector;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

/// New operations for the op log, encoded once by the core: each
/// operation's [`body`](OperationWithMetadata::encode_body) back to back,
/// with its id beside it. Each origin's operations are in sequence order.
#[derive(Clone, Debug, Default)]
pub struct EncodedOps {
    ids: Vec<OpId>,
    ends: Vec<usize>,
    bytes: Vec<u8>,
}

impl EncodedOps {
    /// No operations.
    pub fn new() -> Self {
        Self::default()
    }

    /// No operations, with room for `ops` of them holding `bytes` in all
    /// (a batch's buffers are then allocated once instead of regrown).
    pub fn with_capacity(ops: usize, bytes: usize) -> Self {
        Self { ids: Vec::with_capacity(ops), ends: Vec::with_capacity(ops), bytes: Vec::with_capacity(bytes) }
    }

    /// The bytes of every body together.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// Appends `op`.
    pub fn push(&mut self, op: &OperationWithMetadata) {
        op.encode_body(&mut self.bytes);
        self.ids.push(op.id.clone());
        self.ends.push(self.bytes.len());
    }

    /// Appends `op`, which must not be signed yet, and returns its digest.
    /// The digest is computed over the bytes just written (the canonical
    /// form is the body with the id in front), so the operation is encoded
    /// once; [`sign_last`](Self::sign_last) then adds a signature.
    pub fn push_unsigned(&mut self, op: &OperationWithMetadata) -> OpDigest {
        let start = self.bytes.len();
        op.encode_body(&mut self.bytes);
        self.ids.push(op.id.clone());
        self.ends.push(self.bytes.len());
        crate::signing::digest_of_body(&op.id, &self.bytes[start..])
    }

    /// Appends `op` (signed or not) and returns its digest, from one
    /// encoding: the unsigned body is hashed, then the signature, if any,
    /// is filled in.
    pub fn push_with_digest(&mut self, op: &OperationWithMetadata) -> OpDigest {
        let start = self.bytes.len();
        op.encode_body_unsigned(&mut self.bytes);
        self.ids.push(op.id.clone());
        self.ends.push(self.bytes.len());
        let digest = crate::signing::digest_of_body(&op.id, &self.bytes[start..]);
        if let Some(signature) = &op.signature {
            self.sign_last(signature);
        }
        digest
    }

    /// Appends the operation `id` whose body is [`BODY_HEAD`] followed by
    /// `fields` (the fields after the id of its compact form, as received).
    ///
    /// [`BODY_HEAD`]: crate::operation::BODY_HEAD
    pub(crate) fn push_fields(&mut self, id: &OpId, fields: &[u8]) {
        self.bytes.reserve(1 + fields.len());
        self.bytes.push(crate::operation::BODY_HEAD);
        self.bytes.extend_from_slice(fields);
        self.ids.push(id.clone());
        self.ends.push(self.bytes.len());
    }

    /// Appends an operation already encoded as `body` (by this type, or
    /// read back from a store's op log).
    pub fn push_encoded(&mut self, id: &OpId, body: &[u8]) {
        self.bytes.extend_from_slice(body);
        self.ids.push(id.clone());
        self.ends.push(self.bytes.len());
    }

    /// A copy of the first `len` operations (all, if there are fewer), with
    /// room for `ops` operations holding `bytes` in all.
    pub fn copy_first(&self, len: usize, ops: usize, bytes: usize) -> Self {
        let len = len.min(self.ids.len());
        let end = len.checked_sub(1).map_or(0, |last| self.ends[last]);
        let mut copy = Self::with_capacity(ops.max(len), bytes.max(end));
        copy.ids.extend_from_slice(&self.ids[..len]);
        copy.ends.extend_from_slice(&self.ends[..len]);
        copy.bytes.extend_from_slice(&self.bytes[..end]);
        copy
    }

    /// The room it has (operations, bytes), for tests of how it grows.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> (usize, usize) {
        (self.ids.capacity().min(self.ends.capacity()), self.bytes.capacity())
    }

    /// Keeps the first `len` operations.
    pub fn truncate(&mut self, len: usize) {
        if len < self.ids.len() {
            self.ids.truncate(len);
            self.ends.truncate(len);
            self.bytes.truncate(self.ends.last().copied().unwrap_or(0));
        }
    }

    /// The `i`-th operation's id and body.
    pub fn get(&self, i: usize) -> Option<(&OpId, &[u8])> {
        let id = self.ids.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some((id, &self.bytes[start..self.ends[i]]))
    }

    /// Adds `signature` to the operation appended last (by
    /// [`push_unsigned`](Self::push_unsigned)).
    pub fn sign_last(&mut self, signature: &OpSignature) {
        // The body ends with the signature slot, written as null.
        if self.bytes.last() == Some(&crate::cbor::NULL) && !self.ends.is_empty() {
            self.bytes.pop();
            crate::cbor::bytes(&mut self.bytes, &signature.0);
            if let Some(end) = self.ends.last_mut() {
                *end = self.bytes.len();
            }
        }
    }

    /// The number of operations.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Each operation's id and encoded body, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&OpId, &[u8])> + '_ {
        self.ids.iter().enumerate().map(|(i, id)| {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            (id, &self.bytes[start..self.ends[i]])
        })
    }
}

/// Everything one atomic, durable commit writes.
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    /// Op-log suffixes to drop first: `(origin, seq)` removes that origin's
    /// operations from `seq` on (the losing branch of a fork). New
    /// operations of the origin then continue from `seq`.
    pub truncate: Vec<(String, u64)>,
    /// New operations for the op log.
    pub ops: EncodedOps,
    /// Node records to insert or replace.
    pub nodes: Vec<NodeRecord>,
    /// Version-vector entries that moved, forwards or (after a truncation)
    /// backwards: `(origin, highest applied seq)`; 0 removes the entry.
    pub version_vector: Vec<(String, u64)>,
    /// Metadata to insert or replace.
    pub meta: Vec<(String, Vec<u8>)>,
    /// Operations of this or an earlier batch's op log that are held but
    /// not merged into their nodes yet (stamped beyond the replica's clock
    /// horizon), to record as deferred.
    pub deferred: Vec<Stamp>,
    /// Deferred operations this batch merges into their nodes, to forget.
    pub released: Vec<Stamp>,
    /// Indexes (by number) whose every entry goes, first (a dropped index).
    pub index_dropped: Vec<u32>,
    /// Index entries to remove, then
    pub index_removed: Vec<IndexEntry>,
    /// index entries to insert (see [`crate::index`]).
    pub index_added: Vec<IndexEntry>,
}

/// A range of one index's entries, ordered by (key, node id). A bound
/// `(key, "")` lies before every entry of `key` (node ids are never empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexRange {
    /// The index's number.
    pub index: u32,
    /// Where the range starts.
    pub lower: Bound<(Vec<u8>, String)>,
    /// Where it ends.
    pub upper: Bound<(Vec<u8>, String)>,
    /// Read from the upper end down.
    pub descending: bool,
}

/// Durable storage for node records, the op log of every origin, the
/// version vector and small metadata.
pub trait Store {
    /// Reads the records of `ids`, in the same order; `None` where no
    /// operation has touched the node.
    fn nodes(&self, ids: &[&str]) -> Result<Vec<Option<NodeRecord>>, Error>;

    /// Reads up to `limit` records whose id starts with `prefix` and sorts
    /// after `after` (when given), in id order. Includes deleted nodes.
    fn scan_nodes(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<NodeRecord>, Error>;

    /// Reads up to `limit` operations of `origin` with a sequence number
    /// greater than `after_seq`, in sequence order. This is what sync asks
    /// for, so it must not scan other origins' operations.
    fn ops_after(&self, origin: &str, after_seq: u64, limit: usize) -> Result<Vec<OperationWithMetadata>, Error>;

    /// Appends to `out` what [`ops_after`](Self::ops_after) reads, as the
    /// op log holds it (each operation's body, undecoded): what a sender
    /// passes on. Stores that keep bodies return them as they are.
    fn op_bodies_after(&self, origin: &str, after_seq: u64, limit: usize, out: &mut EncodedOps) -> Result<(), Error> {
        for op in self.ops_after(origin, after_seq, limit)? {
            out.push(&op);
        }
        Ok(())
    }

    /// Reads the operations `ids`, in the same order.
    fn ops(&self, ids: &[OpId]) -> Result<Vec<Option<OperationWithMetadata>>, Error>;

    /// Reads the version vector.
    fn version_vector(&self) -> Result<VersionVector, Error>;

    /// Reads a metadata value.
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, Error>;

    /// Reads up to `limit` deferred operations (see
    /// [`WriteBatch::deferred`]) in stamp order, starting at `from`
    /// (inclusive) or at the first.
    fn deferred(&self, from: Option<&Stamp>, limit: usize) -> Result<Vec<Stamp>, Error>;

    /// The number of deferred operations.
    fn deferred_count(&self) -> Result<u64, Error>;

    /// Reads up to `limit` entries of an index in `range`, as (key, node id).
    fn index_range(&self, range: &IndexRange, limit: usize) -> Result<Vec<(Vec<u8>, String)>, Error>;

    /// How many records have an id that starts with `prefix` (deleted ones
    /// included): progress of an index build.
    fn count_nodes(&self, prefix: &str) -> Result<u64, Error> {
        let mut count = 0u64;
        let mut after: Option<String> = None;
        loop {
            let page = self.scan_nodes(prefix, after.as_deref(), 4_096)?;
            count += page.len() as u64;
            match page.last() {
                Some(last) if page.len() == 4_096 => after = Some(last.id.clone()),
                _ => return Ok(count),
            }
        }
    }

    /// Writes `batch` atomically and durably. A fault of the medium is
    /// [`Error::StoreFault`]: the batch is then not visible, or (an error at
    /// the very end, such as a failed fsync after the commit record was
    /// written) visible after [`recover`](Self::recover); the caller reads
    /// the store again after recovering to learn which.
    fn commit(&mut self, batch: &WriteBatch) -> Result<(), Error>;

    /// [`commit`](Self::commit) for a caller that is done with the batch's
    /// node records: they are freed (`batch.nodes` is left empty, whatever
    /// the outcome) when the store chooses. A store that waits for its
    /// medium during a commit (a sync) frees them then, so that freeing a
    /// batch's records (a tenth of a writer's time, ~16 blocks a record)
    /// comes off the commit's path; by default they are freed after it.
    fn commit_and_free_records(&mut self, batch: &mut WriteBatch) -> Result<(), Error> {
        let result = self.commit(batch);
        batch.nodes = Vec::new();
        result
    }

    /// [`commit_and_free_records`](Self::commit_and_free_records) for
    /// records best freed one by one as the store is done reading each
    /// (while it is still in the cache) rather than all together later: a
    /// received batch's, most of whose blocks another thread (the one that
    /// decoded them) allocated. By default the same as
    /// `commit_and_free_records`.
    fn commit_and_free_records_early(&mut self, batch: &mut WriteBatch) -> Result<(), Error> {
        self.commit_and_free_records(batch)
    }

    /// [`commit_and_free_records_early`](Self::commit_and_free_records_early)
    /// of a received batch with the records `born` of one of its operations
    /// each ([`BornRecords`]: nodes that had none, whose records are a
    /// function of the operation's op-log body in `batch.ops`), besides
    /// `batch.nodes`. A store that encodes records writes those from the
    /// bodies ([`crate::BornRecord::encode_stored`]); by default they are
    /// built and committed with the others.
    fn commit_received(&mut self, batch: &mut WriteBatch, born: &BornRecords) -> Result<(), Error> {
        commit_born_as_records(self, batch, born)
    }

    /// Makes the store usable again after an [`Error::StoreFault`] (redb,
    /// for one, refuses every write after an I/O error until the file is
    /// closed and opened again). Fails while the cause lasts; everything
    /// committed before stays. Stores that need nothing do nothing.
    fn recover(&mut self) -> Result<(), Error> {
        Ok(())
    }
}

/// A store made of another: every [`Store`] call goes to
/// [`inner`](Self::inner) except the few a wrapper changes here (the
/// commits, reading operations back, recovering), so the list of store
/// calls is written once, in the [`Store`] implementation every
/// `ForwardingStore` gets.
///
/// The three commits default to what [`Store`]'s do: both
/// `commit_and_free_records*` go through this wrapper's
/// [`forward_commit`](Self::forward_commit), so a wrapper that changes it
/// changes every commit. A wrapper that changes nothing of a commit
/// forwards all three, so that the inner store's own ways of freeing
/// records stay.
pub trait ForwardingStore {
    /// The store that does the work.
    type Inner: Store + ?Sized;

    /// The store calls go to.
    fn inner(&self) -> &Self::Inner;

    /// The store calls go to, for writing.
    fn inner_mut(&mut self) -> &mut Self::Inner;

    /// [`Store::ops_after`].
    fn forward_ops_after(&self, origin: &str, after_seq: u64, limit: usize) -> Result<Vec<OperationWithMetadata>, Error> {
        self.inner().ops_after(origin, after_seq, limit)
    }

    /// [`Store::commit`].
    fn forward_commit(&mut self, batch: &WriteBatch) -> Result<(), Error> {
        self.inner_mut().commit(batch)
    }

    /// [`Store::commit_and_free_records`]; by default through
    /// [`forward_commit`](Self::forward_commit).
    fn forward_commit_and_free_records(&mut self, batch: &mut WriteBatch) -> Result<(), Error> {
        let result = self.forward_commit(batch);
        batch.nodes = Vec::new();
        result
    }

    /// [`Store::commit_and_free_records_early`]; by default
    /// [`forward_commit_and_free_records`](Self::forward_commit_and_free_records).
    fn forward_commit_and_free_records_early(&mut self, batch: &mut WriteBatch) -> Result<(), Error> {
        self.forward_commit_and_free_records(batch)
    }

    /// [`Store::commit_received`]; by default as [`Store`]'s: the born
    /// records built and committed through
    /// [`forward_commit_and_free_records_early`](Self::forward_commit_and_free_records_early).
    fn forward_commit_received(&mut self, batch: &mut WriteBatch, born: &BornRecords) -> Result<(), Error>
    where
        Self: Sized,
    {
        commit_born_as_records(self, batch, born)
    }

    /// [`Store::recover`].
    fn forward_recover(&mut self) -> Result<(), Error> {
        self.inner_mut().recover()
    }
}

impl<F: ForwardingStore> Store for F {
    fn nodes(&self, ids: &[&str]) -> Result<Vec<Option<NodeRecord>>, Error> {
        self.inner().nodes(ids)
    }
    fn scan_nodes(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<NodeRecord>, Error> {
        self.inner().scan_nodes(prefix, after, limit)
    }
    fn ops_after(&self, origin: &str, after_seq: u64, limit: usize) -> Result<Vec<OperationWithMetadata>, Error> {
        ForwardingStore::forward_ops_after(self, origin, after_seq, limit)
    }
    fn op_bodies_after(&self, origin: &str, after_seq: u64, limit: usize, out: &mut EncodedOps) -> Result<(), Error> {
        self.inner().op_bodies_after(origin, after_seq, limit, out)
    }
    fn ops(&self, ids: &[OpId]) -> Result<Vec<Option<OperationWithMetadata>>, Error> {
        self.inner().ops(ids)
    }
    fn version_vector(&self) -> Result<VersionVector, Error> {
        self.inner().version_vector()
    }
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.inner().meta(key)
    }
    fn deferred(&self, from: Option<&Stamp>, limit: usize) -> Result<Vec<Stamp>, Error> {
        self.inner().deferred(from, limit)
    }
    fn deferred_count(&self) -> Result<u64, Error> {
        self.inner().deferred_count()
    }
    fn index_range(&self, range: &IndexRange, limit: usize) -> Result<Vec<(Vec<u8>, String)>, Error> {
        self.inner().index_range(range, limit)
    }
    fn count_nodes(&self, prefix: &str) -> Result<u64, Error> {
        self.inner().count_nodes(prefix)
    }
    fn commit(&mut self, batch: &WriteBatch) -> Result<(), Error> {
        ForwardingStore::forward_commit(self, batch)
    }
    fn commit_and_free_records(&mut self, batch: &mut WriteBatch) -> Result<(), Error> {
        ForwardingStore::forward_commit_and_free_records(self, batch)
    }
    fn commit_and_free_records_early(&mut self, batch: &mut WriteBatch) -> Result<(), Error> {
        ForwardingStore::forward_commit_and_free_records_early(self, batch)
    }
    fn commit_received(&mut self, batch: &mut WriteBatch, born: &BornRecords) -> Result<(), Error> {
        ForwardingStore::forward_commit_received(self, batch, born)
    }
    fn recover(&mut self) -> Result<(), Error> {
        ForwardingStore::forward_recover(self)
    }
}

impl<S: Store + ?Sized> ForwardingStore for Box<S> {
    type Inner = S;
    fn inner(&self) -> &S {
        self
    }
    fn inner_mut(&mut self) -> &mut S {
        self
    }
    fn forward_commit_and_free_records(&mut self, batch: &mut WriteBatch) -> Result<(), Error> {
        (**self).commit_and_free_records(batch)
    }
    fn forward_commit_and_free_records_early(&mut self, batch: &mut WriteBatch) -> Result<(), Error> {
        (**self).commit_and_free_records_early(batch)
    }
    fn forward_commit_received(&mut self, batch: &mut WriteBatch, born: &BornRecords) -> Result<(), Error> {
        (**self).commit_received(batch, born)
    }
}

/// [`Store::commit_received`] of a store that keeps records as they are:
/// the born records built and committed with the others.
fn commit_born_as_records<S: Store + ?Sized>(store: &mut S, batch: &mut WriteBatch, born: &BornRecords) -> Result<(), Error> {
    match born.records(&batch.ops) {
        Ok(records) => {
            // In node id order, as a batch's records are.
            batch.nodes.extend(records);
            batch.nodes.sort_by(|a, b| a.id.cmp(&b.id));
            store.commit_and_free_records_early(batch)
        }
        Err(err) => {
            batch.nodes = Vec::new();
            Err(err)
        }
    }
}

/// A store in memory, for tests and simulations. Nothing survives the value.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    nodes: BTreeMap<String, NodeRecord>,
    /// Each origin's operations as encoded bodies, seq 1 at index 0.
    ops: BTreeMap<Arc<str>, Vec<Vec<u8>>>,
    version_vector: VersionVector,
    meta: BTreeMap<String, Vec<u8>>,
    deferred: BTreeSet<Stamp>,
    /// (index, key, node id) of every index entry.
    index: BTreeSet<(u32, Vec<u8>, String)>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemoryStore {
    fn nodes(&self, ids: &[&str]) -> Result<Vec<Option<NodeRecord>>, Error> {
        Ok(ids.iter().map(|id| self.nodes.get(*id).cloned()).collect())
    }

    fn scan_nodes(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<NodeRecord>, Error> {
        use std::ops::Bound;
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after.to_owned()),
            _ => Bound::Included(prefix.to_owned()),
        };
        Ok(self
            .nodes
            .range((start, Bound::Unbounded))
            .take_while(|(id, _)| id.starts_with(prefix))
            .take(limit)
            .map(|(_, record)| record.clone())
            .collect())
    }

    fn ops_after(&self, origin: &str, after_seq: u64, limit: usize) -> Result<Vec<OperationWithMetadata>, Error> {
        let Some((origin, log)) = self.ops.get_key_value(origin) else { return Ok(Vec::new()) };
        // The log of an origin holds seq 1, 2, 3, ... at index seq - 1.
        let start = usize::try_from(after_seq).unwrap_or(usize::MAX).min(log.len());
        log[start..]
            .iter()
            .take(limit)
            .enumerate()
            .map(|(i, body)| OperationWithMetadata::decode_body(OpId { origin: origin.clone(), seq: (start + i + 1) as u64 }, body))
            .collect()
    }

    fn op_bodies_after(&self, origin: &str, after_seq: u64, limit: usize, out: &mut EncodedOps) -> Result<(), Error> {
        let Some((origin, log)) = self.ops.get_key_value(origin) else { return Ok(()) };
        let start = usize::try_from(after_seq).unwrap_or(usize::MAX).min(log.len());
        for (i, body) in log[start..].iter().take(limit).enumerate() {
            out.push_encoded(&OpId { origin: origin.clone(), seq: (start + i + 1) as u64 }, body);
        }
        Ok(())
    }

    fn ops(&self, ids: &[OpId]) -> Result<Vec<Option<OperationWithMetadata>>, Error> {
        ids.iter()
            .map(|id| {
                let index = usize::try_from(id.seq.checked_sub(1)?).ok()?;
                let body = self.ops.get(&id.origin)?.get(index)?;
                Some(OperationWithMetadata::decode_body(id.clone(), body))
            })
            .map(Option::transpose)
            .collect()
    }

    fn version_vector(&self) -> Result<VersionVector, Error> {
        Ok(self.version_vector.clone())
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.meta.get(key).cloned())
    }

    fn deferred(&self, from: Option<&Stamp>, limit: usize) -> Result<Vec<Stamp>, Error> {
        let stamps: Box<dyn Iterator<Item = &Stamp>> = match from {
            Some(from) => Box::new(self.deferred.range(from..)),
            None => Box::new(self.deferred.iter()),
        };
        Ok(stamps.take(limit).cloned().collect())
    }

    fn deferred_count(&self) -> Result<u64, Error> {
        Ok(self.deferred.len() as u64)
    }

    fn index_range(&self, range: &IndexRange, limit: usize) -> Result<Vec<(Vec<u8>, String)>, Error> {
        let at = |bound: &Bound<(Vec<u8>, String)>| match bound {
            Bound::Included((key, id)) => Bound::Included((range.index, key.clone(), id.clone())),
            Bound::Excluded((key, id)) => Bound::Excluded((range.index, key.clone(), id.clone())),
            Bound::Unbounded => Bound::Unbounded,
        };
        let (lower, upper) = (at(&range.lower), at(&range.upper));
        // Unbounded ends stay inside the index.
        let lower = match lower {
            Bound::Unbounded => Bound::Included((range.index, Vec::new(), String::new())),
            bound => bound,
        };
        let upper = match upper {
            Bound::Unbounded => match range.index.checked_add(1) {
                Some(next) => Bound::Excluded((next, Vec::new(), String::new())),
                None => Bound::Unbounded,
            },
            bound => bound,
        };
        if !valid_range(&lower, &upper) {
            return Ok(Vec::new());
        }
        let entries = self.index.range((lower, upper));
        let pick = |(_, key, id): &(u32, Vec<u8>, String)| (key.clone(), id.clone());
        Ok(match range.descending {
            true => entries.rev().take(limit).map(pick).collect(),
            false => entries.take(limit).map(pick).collect(),
        })
    }

    fn commit(&mut self, batch: &WriteBatch) -> Result<(), Error> {
        // Check first so that a refused batch changes nothing.
        let mut next: BTreeMap<&str, u64> = BTreeMap::new();
        for (origin, from) in &batch.truncate {
            let held = self.ops.get(origin.as_str()).map_or(0, |l| l.len() as u64);
            next.insert(origin, (*from).clamp(1, held + 1));
        }
        for (id, _) in batch.ops.iter() {
            let expected = next.entry(&id.origin).or_insert_with(|| self.ops.get(&id.origin).map_or(0, |l| l.len() as u64) + 1);
            if id.seq != *expected {
                return Err(Error::SequenceGap { origin: id.origin.to_string(), expected: *expected, found: id.seq });
            }
            *expected += 1;
        }
        for (origin, from) in &batch.truncate {
            if let Some(log) = self.ops.get_mut(origin.as_str()) {
                log.truncate(usize::try_from(from.saturating_sub(1)).unwrap_or(usize::MAX));
            }
        }
        for (id, body) in batch.ops.iter() {
            self.ops.entry(id.origin.clone()).or_default().push(body.to_vec());
        }
        for record in &batch.nodes {
            self.nodes.insert(record.id.clone(), record.clone());
        }
        for (origin, seq) in &batch.version_vector {
            self.version_vector.set(origin, *seq);
        }
        self.meta.extend(batch.meta.iter().cloned());
        for stamp in &batch.released {
            self.deferred.remove(stamp);
        }
        self.deferred.extend(batch.deferred.iter().cloned());
        for number in &batch.index_dropped {
            self.index.retain(|(index, _, _)| index != number);
        }
        for entry in &batch.index_removed {
            self.index.remove(&(entry.index, entry.key.clone(), entry.id.clone()));
        }
        for entry in &batch.index_added {
            self.index.insert((entry.index, entry.key.clone(), entry.id.clone()));
        }
        Ok(())
    }
}

/// Whether a range's ends are in order (a BTreeMap panics on one that is
/// not, and a query can ask for `> 5 and < 3`).
pub(crate) fn valid_range<T: Ord>(lower: &Bound<T>, upper: &Bound<T>) -> bool {
    match (lower, upper) {
        (Bound::Included(l), Bound::Included(u)) => l <= u,
        (Bound::Included(l) | Bound::Excluded(l), Bound::Excluded(u) | Bound::Included(u)) => l < u,
        _ => true,
    }
}

/// A store that forwards every call to another and notes how it was used:
/// which entry point committed each batch, and how often the op log was
/// read back decoded ([`Store::ops_after`]). For tests of how a replica
/// uses its store.
#[cfg(feature = "test-support")]
#[derive(Debug, Default)]
pub struct ObservedStore<S = MemoryStore> {
    /// The store that does the work.
    pub inner: S,
    /// Per commit: `"commit"`, `"while syncing"`
    /// ([`Store::commit_and_free_records`]) or `"as encoded"`
    /// ([`Store::commit_and_free_records_early`]), and the batch's number
    /// of node records; or `"born"` ([`Store::commit_received`]) and its
    /// number of records born of one operation.
    pub commits: Vec<(&'static str, usize)>,
    ops_after_calls: std::sync::atomic::AtomicUsize,
}

#[cfg(feature = "test-support")]
impl<S> ObservedStore<S> {
    /// Observing `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner, commits: Vec::new(), ops_after_calls: Default::default() }
    }

    /// How many times [`Store::ops_after`] was called.
    pub fn ops_after_calls(&self) -> usize {
        self.ops_after_calls.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(feature = "test-support")]
impl<S: Store> ForwardingStore for ObservedStore<S> {
    type Inner = S;
    fn inner(&self) -> &S {
        &self.inner
    }
    fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }
    fn forward_ops_after(&self, origin: &str, after_seq: u64, limit: usize) -> Result<Vec<OperationWithMetadata>, Error> {
        self.ops_after_calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.ops_after(origin, after_seq, limit)
    }
    fn forward_commit(&mut self, batch: &WriteBatch) -> Result<(), Error> {
        self.commits.push(("commit", batch.nodes.len()));
        self.inner.commit(batch)
    }
    fn forward_commit_and_free_records(&mut self, batch: &mut WriteBatch) -> Result<(), Error> {
        self.commits.push(("while syncing", batch.nodes.len()));
        self.inner.commit_and_free_records(batch)
    }
    fn forward_commit_and_free_records_early(&mut self, batch: &mut WriteBatch) -> Result<(), Error> {
        self.commits.push(("as encoded", batch.nodes.len()));
        self.inner.commit_and_free_records_early(batch)
    }
    fn forward_commit_received(&mut self, batch: &mut WriteBatch, born: &BornRecords) -> Result<(), Error> {
        self.commits.push(("born", born.len()));
        self.inner.commit_received(batch, born)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operation::OperationType;

    #[test]
    fn a_wrapper_that_changes_only_its_commit_sees_every_commit_and_a_box_keeps_the_inner_stores_own() {
        // Changes only the plain commit: the two that free records go
        // through it, so none bypasses the wrapper.
        #[derive(Default)]
        struct Counting {
            inner: MemoryStore,
            commits: usize,
        }
        impl ForwardingStore for Counting {
            type Inner = MemoryStore;
            fn inner(&self) -> &MemoryStore {
                &self.inner
            }
            fn inner_mut(&mut self) -> &mut MemoryStore {
                &mut self.inner
            }
            fn forward_commit(&mut self, batch: &WriteBatch) -> Result<(), Error> {
                self.commits += 1;
                self.inner.commit(batch)
            }
        }
        let batch = || WriteBatch { nodes: vec![NodeRecord::empty("n")], meta: vec![("k".into(), b"v".to_vec())], ..WriteBatch::default() };
        let mut counting = Counting::default();
        counting.commit(&batch()).unwrap();
        let mut freed = batch();
        counting.commit_and_free_records(&mut freed).unwrap();
        assert!(freed.nodes.is_empty());
        counting.commit_and_free_records_early(&mut batch()).unwrap();
        assert_eq!(counting.commits, 3);
        assert_eq!(counting.meta("k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(counting.nodes(&["n"]).unwrap(), vec![Some(NodeRecord::empty("n"))]);

        // A box forwards each kind of commit as it came.
        let mut boxed = Box::new(ObservedStore::new(MemoryStore::new()));
        Store::commit(&mut boxed, &batch()).unwrap();
        Store::commit_and_free_records(&mut boxed, &mut batch()).unwrap();
        Store::commit_and_free_records_early(&mut boxed, &mut batch()).unwrap();
        Store::ops_after(&boxed, "p", 0, 10).unwrap();
        let observed = &*boxed;
        assert_eq!(observed.commits, vec![("commit", 1), ("while syncing", 1), ("as encoded", 1)]);
        assert_eq!(observed.ops_after_calls(), 1);
    }

    #[test]
    fn a_copy_of_the_first_operations_holds_what_pushing_them_again_holds() {
        let mut all = EncodedOps::new();
        for seq in 1..=5u64 {
            let mut op = OperationWithMetadata::new(OperationType::CreateNode, format!("n{seq}"), serde_json::json!({ "v": seq }), "p");
            op.id.seq = seq;
            all.push(&op);
        }
        for len in [0, 1, 3, 5, 9] {
            let mut pushed = EncodedOps::new();
            (0..len).filter_map(|i| all.get(i)).for_each(|(id, body)| pushed.push_encoded(id, body));
            let copy = all.copy_first(len, 8, 1024);
            assert_eq!(copy.len(), len.min(5));
            assert_eq!(
                (0..copy.len()).map(|i| copy.get(i)).collect::<Vec<_>>(),
                (0..pushed.len()).map(|i| pushed.get(i)).collect::<Vec<_>>()
            );
        }
    }
}
