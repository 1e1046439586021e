//! [`Database`]: one replica: a store, its clock, its version vector, the
//! merge rule, a conflict resolver and the change feed.

use crate::clock::{Hlc, HybridLogicalClock};
use crate::codec;
use crate::error::Error;
use crate::feed::{ChangeFeed, Subscription};
use crate::merge;
use crate::node::{Node, NodeRecord};
use crate::operation::{validate_node_id, validate_value, OpId, OperationType, OperationWithMetadata};
use crate::reader::{self, Traversal};
use crate::resolver::{ConflictResolver, LastWriterWins};
use crate::signing::{OpDigest, OpSignature, OpSigner, OpVerifier, SIGN_EVERY};
use crate::store::{EncodedOps, Store, WriteBatch};
use crate::version_vector::VersionVector;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// The metadata key under which the newest clock reading is kept, so a
/// reopened replica never issues a timestamp it issued before.
const CLOCK_META_KEY: &str = "hlc";

/// What a committed local write was assigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The operation's id: this replica's peer id and its sequence number.
    pub id: OpId,
    /// Its hybrid-logical-clock timestamp.
    pub timestamp: Hlc,
}

/// What [`Database::apply_remote`] did with a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Operations applied.
    pub applied: usize,
    /// Operations skipped because the replica already held them.
    pub duplicates: usize,
    /// Operations not applied yet because no signed operation after them
    /// (from the same origin) was in the batch to authenticate them.
    pub held_back: usize,
}

/// One replica of the graph.
///
/// All writes go through [`Store::commit`] in one atomic, durable batch per
/// call; a call that returns `Ok` has made its writes durable (for a durable
/// store), and a call that fails has changed nothing.
///
/// Time is an argument (`now_ms`, milliseconds since the Unix epoch), never
/// read from a clock here, so a replica runs the same in a simulator.
pub struct Database<S> {
    store: S,
    peer_id: Arc<str>,
    clock: HybridLogicalClock,
    version_vector: VersionVector,
    resolver: Arc<dyn ConflictResolver>,
    feed: ChangeFeed,
    signer: Option<Arc<dyn OpSigner>>,
    verifier: Option<Arc<dyn OpVerifier>>,
    /// The digest of the newest operation of each origin, as far as known.
    heads: HashMap<Arc<str>, OpDigest>,
}

/// Marks a batch as local writes to stamp at wall time `now_ms`.
struct LocalStamp {
    now_ms: u64,
}

impl<S: Store> Database<S> {
    /// Opens a replica whose local writes are authored by `peer_id`, with
    /// last-writer-wins conflict resolution.
    pub fn open(store: S, peer_id: impl Into<Arc<str>>) -> Result<Self, Error> {
        let version_vector = store.version_vector()?;
        let last = match store.meta(CLOCK_META_KEY)? {
            Some(bytes) => codec::decode::<Hlc>(&bytes, "clock reading")?,
            None => Hlc::ZERO,
        };
        Ok(Self {
            store,
            peer_id: peer_id.into(),
            clock: HybridLogicalClock::resume_after(last),
            version_vector,
            resolver: Arc::new(LastWriterWins),
            feed: ChangeFeed::new(),
            signer: None,
            verifier: None,
            heads: HashMap::new(),
        })
    }

    /// Uses `resolver` to choose among concurrent values when reading.
    pub fn with_resolver(mut self, resolver: Arc<dyn ConflictResolver>) -> Self {
        self.resolver = resolver;
        self
    }

    /// Signs local writes with `signer` (the key of this replica's peer id).
    pub fn with_signer(mut self, signer: Arc<dyn OpSigner>) -> Self {
        self.signer = Some(signer);
        self
    }

    /// Checks the hash chain and the signatures of every operation from
    /// peers with `verifier`, refusing what does not verify.
    pub fn with_verifier(mut self, verifier: Arc<dyn OpVerifier>) -> Self {
        self.verifier = Some(verifier);
        self
    }

    /// The digest of the newest operation of `origin` this replica holds
    /// (zero when it holds none).
    fn head(&mut self, origin: &Arc<str>) -> Result<OpDigest, Error> {
        if let Some(head) = self.heads.get(origin) {
            return Ok(*head);
        }
        let held = self.version_vector.get(origin);
        let head = match held {
            0 => OpDigest::default(),
            _ => match self.store.ops_after(origin, held - 1, 1)?.pop() {
                Some(op) => op.digest(),
                None => return Err(Error::Decode { what: "op log", reason: format!("operation {origin}/{held} is missing") }),
            },
        };
        self.heads.insert(origin.clone(), head);
        Ok(head)
    }

    /// The peer id that authors this replica's local writes.
    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    /// Sets the peer id that authors local writes. Only possible while the
    /// replica holds no write authored under its current id.
    pub fn set_peer_id(&mut self, peer_id: impl Into<Arc<str>>) -> Result<(), Error> {
        let peer_id = peer_id.into();
        if self.version_vector.get(&self.peer_id) > 0 {
            return Err(Error::ForeignOrigin { origin: peer_id.to_string(), local: self.peer_id.to_string() });
        }
        self.peer_id = peer_id;
        Ok(())
    }

    /// The resolver in use.
    pub fn resolver(&self) -> &dyn ConflictResolver {
        &*self.resolver
    }

    /// For each origin, the highest sequence number applied.
    pub fn version_vector(&self) -> &VersionVector {
        &self.version_vector
    }

    /// The newest timestamp this replica issued or observed.
    pub fn clock(&self) -> Hlc {
        self.clock.last()
    }

    /// The underlying store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Closes the replica and hands back its store.
    pub fn into_store(self) -> S {
        self.store
    }

    /// Writes metadata entries (for layers above the core, such as the sync
    /// engine's record of what each peer acknowledged) in one durable commit.
    /// The core's own keys are refused.
    pub fn commit_meta(&mut self, entries: Vec<(String, Vec<u8>)>) -> Result<(), Error> {
        if let Some((key, _)) = entries.iter().find(|(key, _)| key == CLOCK_META_KEY) {
            return Err(Error::ReservedKey { key: key.clone() });
        }
        self.store.commit(&WriteBatch { meta: entries, ..WriteBatch::default() })
    }

    /// Subscribes to every change applied from now on, buffering at most
    /// `capacity` of them (see [`crate::feed`]).
    pub fn subscribe(&self, capacity: usize) -> Subscription {
        self.feed.subscribe(capacity)
    }

    /// Creates or replaces the node `id` with `value` (a JSON object).
    pub fn put(&mut self, id: &str, value: Value, now_ms: u64) -> Result<Receipt, Error> {
        self.write_one(OperationType::CreateNode, id, value, now_ms)
    }

    /// Sets the fields of `fields` on node `id`, creating it if needed; a
    /// field set to `null` is removed.
    pub fn update(&mut self, id: &str, fields: Value, now_ms: u64) -> Result<Receipt, Error> {
        self.write_one(OperationType::UpdateNode, id, fields, now_ms)
    }

    /// Deletes node `id`; fails with [`Error::NotFound`] if it does not exist.
    pub fn delete(&mut self, id: &str, now_ms: u64) -> Result<Receipt, Error> {
        validate_node_id(id)?;
        if self.get(id)?.is_none() {
            return Err(Error::NotFound { id: id.to_owned() });
        }
        self.write_one(OperationType::DeleteNode, id, Value::Null, now_ms)
    }

    fn write_one(&mut self, kind: OperationType, id: &str, data: Value, now_ms: u64) -> Result<Receipt, Error> {
        let op = OperationWithMetadata::new(kind, id.to_owned(), data, self.peer_id.clone());
        let mut ops = self.commit_local(vec![op], now_ms)?;
        ops.pop().ok_or_else(|| Error::Decode { what: "commit result", reason: "no operation returned".into() })
    }

    /// Commits local writes in one durable transaction: each operation gets
    /// this replica's next sequence number, a timestamp, and the values it
    /// replaces. Their origin must be this replica's peer id. Returns what
    /// each was assigned; [`ops_after`](Self::ops_after) reads them back.
    pub fn commit_local(&mut self, ops: Vec<OperationWithMetadata>, now_ms: u64) -> Result<Vec<Receipt>, Error> {
        for op in &ops {
            if op.id.origin != self.peer_id {
                return Err(Error::ForeignOrigin { origin: op.id.origin.to_string(), local: self.peer_id.to_string() });
            }
            if op.is_stamped() {
                return Err(Error::InvalidOperation {
                    id: op.id.clone(),
                    reason: "a local write must not carry a sequence number yet".into(),
                });
            }
            validate_node_id(&op.node_id)?;
            if op.operation != OperationType::DeleteNode {
                validate_value(&op.data)?;
            }
        }
        self.apply(ops, Some(LocalStamp { now_ms }))
    }

    /// Applies operations received from peers in one durable transaction.
    /// Operations already held are skipped; an operation whose predecessor
    /// from the same origin is neither held nor earlier in the batch fails
    /// the whole batch with [`Error::SequenceGap`], as does any invalid
    /// operation. Nothing is written when it fails.
    pub fn apply_remote(&mut self, ops: Vec<OperationWithMetadata>) -> Result<ApplyReport, Error> {
        for op in &ops {
            op.validate()?;
        }
        let total = ops.len();
        let (ops, held_back, encoded) = match self.verifier.clone() {
            Some(verifier) => self.authenticate(ops, &*verifier)?,
            None => (ops, 0, EncodedOps::new()),
        };
        let applied = self.apply_with(ops, None, encoded)?.len();
        Ok(ApplyReport { applied, duplicates: total - held_back - applied, held_back })
    }

    /// Checks that each origin's new operations continue its hash chain and
    /// that their signatures verify; keeps, per origin, the operations up to
    /// the last signed one (the rest wait for a batch that authenticates
    /// them). Fails on a broken chain or a bad signature.
    fn authenticate(
        &mut self,
        ops: Vec<OperationWithMetadata>,
        verifier: &dyn OpVerifier,
    ) -> Result<(Vec<OperationWithMetadata>, usize, EncodedOps), Error> {
        // The new operations, encoded once: for the digest here and for the
        // op log when they are applied.
        let mut encoded = EncodedOps::new();
        // Per origin: the next sequence number and the head of the chain.
        let mut chains: HashMap<Arc<str>, (u64, OpDigest)> = HashMap::new();
        let mut signed = Vec::new();
        let mut last_signed: HashMap<Arc<str>, u64> = HashMap::new();
        for op in &ops {
            if !chains.contains_key(&op.id.origin) {
                let head = self.head(&op.id.origin)?;
                chains.insert(op.id.origin.clone(), (self.version_vector.get(&op.id.origin) + 1, head));
            }
            let Some((next, head)) = chains.get_mut(&op.id.origin) else { continue };
            if op.id.seq != *next {
                // A duplicate, or a gap that `apply` reports.
                continue;
            }
            if op.prev != *head {
                return Err(Error::BrokenChain { id: op.id.clone() });
            }
            *head = encoded.push_with_digest(op);
            *next += 1;
            if let Some(signature) = op.signature {
                signed.push((op.id.clone(), *head, signature));
                last_signed.insert(op.id.origin.clone(), op.id.seq);
            }
        }
        let items: Vec<(&str, OpDigest, OpSignature)> = signed.iter().map(|(id, digest, sig)| (&*id.origin, *digest, *sig)).collect();
        if let Err(bad) = verifier.verify(&items) {
            let id = signed.get(bad).map(|(id, _, _)| id.clone()).unwrap_or_else(|| OpId::new("", 0));
            return Err(Error::BadSignature { id });
        }
        let before = ops.len();
        let held = |op: &OperationWithMetadata| {
            op.id.seq <= self.version_vector.get(&op.id.origin) || last_signed.get(&op.id.origin).is_some_and(|&last| op.id.seq <= last)
        };
        let kept: Vec<OperationWithMetadata> = ops.into_iter().filter(|op| held(op)).collect();
        // The chain heads of these origins move with the commit; read them
        // again when next needed.
        for origin in last_signed.keys() {
            self.heads.remove(origin);
        }
        let held_back = before - kept.len();
        Ok((kept, held_back, encoded))
    }

    /// The shared write path: merge every operation into its node's record,
    /// then commit ops, records, version vector and clock in one batch.
    fn apply(&mut self, ops: Vec<OperationWithMetadata>, local: Option<LocalStamp>) -> Result<Vec<Receipt>, Error> {
        self.apply_with(ops, local, EncodedOps::new())
    }

    /// [`apply`](Self::apply), reusing the bodies in `pre` for received
    /// operations that `authenticate` already encoded (in the same order).
    fn apply_with(&mut self, ops: Vec<OperationWithMetadata>, local: Option<LocalStamp>, pre: EncodedOps) -> Result<Vec<Receipt>, Error> {
        let mut reused = 0;
        let mut records = self.load_records(&ops)?;
        let position = |records: &[NodeRecord], id: &str| records.binary_search_by(|r| r.id.as_str().cmp(id));
        let mut version_vector = self.version_vector.clone();
        let mut clock = self.clock.clone();
        let publish = self.feed.has_subscribers();
        let mut changes = Vec::new();
        let mut encoded = EncodedOps::new();
        let mut receipts = Vec::with_capacity(ops.len());
        let count = ops.len();
        let mut local_head = match &local {
            Some(_) => {
                let origin = self.peer_id.clone();
                Some(self.head(&origin)?)
            }
            None => None,
        };

        for (index, mut op) in ops.into_iter().enumerate() {
            let next = version_vector.get(&op.id.origin) + 1;
            let at = match position(&records, &op.node_id) {
                Ok(at) => at,
                Err(at) => {
                    records.insert(at, NodeRecord::empty(&op.node_id));
                    at
                }
            };
            let record = &mut records[at];
            if let Some(local) = &local {
                op.id.seq = next;
                op.timestamp = clock.tick(local.now_ms);
                if op.operation == OperationType::UpdateNode {
                    op.supersedes = superseded_by_write(record, &op.data);
                }
                // Link the chain; sign the commit's last operation and every
                // SIGN_EVERY-th.
                op.prev = local_head.unwrap_or_default();
                let digest = encoded.push_unsigned(&op);
                if let Some(signer) = &self.signer {
                    if index + 1 == count || op.id.seq % SIGN_EVERY == 0 {
                        let signature = signer.sign(&digest);
                        encoded.sign_last(&signature);
                        op.signature = Some(signature);
                    }
                }
                local_head = Some(digest);
            } else if op.id.seq < next {
                continue;
            } else if op.id.seq > next {
                return Err(Error::SequenceGap { origin: op.id.origin.to_string(), expected: next, found: op.id.seq });
            } else {
                clock.observe(op.timestamp);
                // `pre` holds these operations in the same order, plus any
                // that were held back: skip those.
                while pre.get(reused).is_some_and(|(id, _)| *id != op.id) {
                    reused += 1;
                }
                match pre.get(reused) {
                    Some((id, body)) => {
                        encoded.push_encoded(id, body);
                        reused += 1;
                    }
                    None => encoded.push(&op),
                }
            }
            // The operation is encoded for the op log (above); now move its
            // values into the record.
            let (id, timestamp) = (op.id.clone(), op.timestamp);
            let change = publish.then(|| op.clone());
            merge::apply_owned(record, op, |id: &OpId| version_vector.contains(&id.origin, id.seq));
            version_vector.advance(&id.origin, id.seq);
            receipts.push(Receipt { id, timestamp });
            if let Some(op) = change {
                changes.push((op, record.view(&*self.resolver)));
            }
        }
        if receipts.is_empty() {
            return Ok(receipts);
        }

        let moved = version_vector
            .iter()
            .filter(|&(origin, seq)| self.version_vector.get(origin) != seq)
            .map(|(origin, seq)| (origin.to_owned(), seq))
            .collect();
        let batch = WriteBatch {
            ops: encoded,
            nodes: records,
            version_vector: moved,
            meta: vec![(CLOCK_META_KEY.to_owned(), codec::encode(&clock.last()))],
        };
        self.store.commit(&batch)?;

        self.version_vector = version_vector;
        self.clock = clock;
        match local_head {
            Some(head) => {
                self.heads.insert(self.peer_id.clone(), head);
            }
            // Remote operations moved these origins' chains: read the heads
            // again when next needed.
            None => {
                for receipt in &receipts {
                    self.heads.remove(&receipt.id.origin);
                }
            }
        }
        self.feed.publish(changes);
        Ok(receipts)
    }

    /// The records of every node the batch touches, sorted by id.
    fn load_records(&self, ops: &[OperationWithMetadata]) -> Result<Vec<NodeRecord>, Error> {
        let mut ids: Vec<&str> = ops.iter().map(|op| op.node_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let found = self.store.nodes(&ids)?;
        Ok(ids.into_iter().zip(found).map(|(id, record)| record.unwrap_or_else(|| NodeRecord::empty(id))).collect())
    }

    /// Reads node `id` as the resolver presents it; `None` if it does not
    /// exist.
    pub fn get(&self, id: &str) -> Result<Option<Node>, Error> {
        reader::get(&self.store, &*self.resolver, id)
    }

    /// Reads the stored merge state of node `id`, including deleted nodes.
    pub fn record(&self, id: &str) -> Result<Option<NodeRecord>, Error> {
        reader::record(&self.store, id)
    }

    /// Follows links from node `id` through `path`, a field name per hop.
    /// Returns the node reached, or the first hop that fails.
    pub fn follow(&self, id: &str, path: &[&str]) -> Result<Traversal, Error> {
        reader::follow(&self.store, &*self.resolver, id, path)
    }

    /// Lists up to `limit` existing nodes whose id starts with `prefix`, in id
    /// order, starting after `after` (for pagination).
    pub fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Node>, Error> {
        reader::list(&self.store, &*self.resolver, prefix, after, limit)
    }

    /// The operations that produced node `id`'s current state (its newest
    /// create or delete and every write whose value is still live), oldest
    /// first. Works for deleted nodes too; fails with [`Error::NotFound`] for
    /// a node no operation has touched.
    pub fn history(&self, id: &str) -> Result<Vec<OperationWithMetadata>, Error> {
        reader::history(&self.store, id)
    }

    /// The resolver, shared (for a [`Reader`](crate::Reader) over another
    /// handle of the same store).
    pub fn shared_resolver(&self) -> Arc<dyn ConflictResolver> {
        self.resolver.clone()
    }

    /// Up to `limit` operations of `origin` after sequence number
    /// `after_seq`, in order: what a peer that has applied up to `after_seq`
    /// lacks.
    pub fn ops_after(&self, origin: &str, after_seq: u64, limit: usize) -> Result<Vec<OperationWithMetadata>, Error> {
        self.store.ops_after(origin, after_seq, limit)
    }
}

/// For an update, the values it replaces: in each field it writes, every
/// value the replica currently holds (a write made after seeing them).
fn superseded_by_write(record: &NodeRecord, data: &Value) -> std::collections::BTreeMap<String, Vec<OpId>> {
    let Value::Object(fields) = data else {
        return Default::default();
    };
    fields
        .keys()
        .filter_map(|field| {
            let values = record.fields.get(field)?;
            Some((field.clone(), values.iter().map(|v| v.stamp.id.clone()).collect()))
        })
        .collect()
}
