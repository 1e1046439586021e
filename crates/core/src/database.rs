//! [`Database`]: one replica: a store, its clock, its version vector, the
//! merge rule, a conflict resolver and the change feed.
//!
//! An operation stamped beyond the replica's clock horizon (its corrected
//! wall time plus the maximum clock drift, see [`crate::clock`]) is held
//! like any other (op log, version vector, synced onward) but takes effect
//! on its node only once the horizon reaches its timestamp
//! ([`Database::apply_due`]). Merging is order-independent, so deferring
//! an operation changes when replicas show it, not what they converge to;
//! and because every replica defers by the same rule, an operation stamped
//! years ahead (or at `u64::MAX`) shows nowhere instead of locking every
//! honest writer out of the fields it touched.

use crate::born::{BornRecord, BornRecords, Parts};
use crate::clock::{self, Hlc, HybridLogicalClock, DEFAULT_MAX_CLOCK_DRIFT};
use crate::codec;
use crate::error::Error;
use crate::feed::{ChangeFeed, Subscription};
use crate::index::{self, IndexDef, IndexSpec, IndexState, INDEXES_META_KEY};
use crate::merge;
use crate::node::{Node, NodeRecord};
use crate::operation::{
    validate_node_id, validate_value, OpId, OperationType, OperationWithMetadata, Stamp, MAX_SUPERSEDED_PER_FIELD, MAX_SUPERSEDED_PER_OP,
};
use crate::reader::{self, Traversal};
use crate::received::{KeptBodies, ReceivedOp, SignatureCheck};
use crate::resolver::{ConflictResolver, LastWriterWins};
use crate::signing::{OpDigest, OpSignature, OpSigner, OpVerifier, SIGN_EVERY, SIGN_EVERY_BYTES};
use crate::store::{EncodedOps, Store, WriteBatch};
use crate::version_vector::VersionVector;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// The metadata key under which the newest clock reading is kept, so a
/// reopened replica never issues a timestamp it issued before. Tools that
/// restore or inspect a store read it; only the core writes it.
pub const CLOCK_META_KEY: &str = "hlc";

/// The metadata key of the newest timestamp observed from others (the
/// clock steps back no further; see [`HybridLogicalClock::tick_within`]).
const OBSERVED_META_KEY: &str = "hlc.observed";

/// The most deferred operations [`Database::apply_due`] merges in one
/// commit (it is called again while more are due).
const MAX_DUE_PER_COMMIT: usize = 1_000;

/// The most origins whose clock skew a replica tracks (those seen furthest
/// ahead are kept).
const MAX_SKEW_ORIGINS: usize = 256;

/// What a committed local write was assigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The operation's id: this replica's peer id and its sequence number.
    pub id: OpId,
    /// Its hybrid-logical-clock timestamp.
    pub timestamp: Hlc,
}

/// What [`Database::apply_remote`] did with a batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ApplyReport {
    /// Operations applied.
    pub applied: usize,
    /// Operations skipped because the replica already held them.
    pub duplicates: usize,
    /// Operations not applied yet because no signed operation after them
    /// (from the same origin) was in the batch to authenticate them.
    pub held_back: usize,
    /// Of the applied operations, those stamped beyond this replica's clock
    /// horizon: held and synced, but in effect only once they are due (see
    /// [`Database::apply_due`]).
    pub deferred: usize,
    /// Forks met and resolved: an origin's received chain and the one this
    /// replica holds differ from some sequence number on.
    pub forks: Vec<Fork>,
    /// Origins whose received chain does not join the one held within the
    /// batch, with the lowest sequence number received: the two differ
    /// before it, so the sender must be asked for earlier operations to
    /// find where. Their operations were not applied.
    pub unjoined: Vec<(Arc<str>, u64)>,
    /// Origins whose operations were refused (a chain broken inside the
    /// batch, a signature that does not verify); the other origins' were
    /// applied.
    pub refused: Vec<Refusal>,
}

/// Two different operations of one origin under one sequence number: two
/// instances wrote with the same key (a restored backup, a copied data
/// directory). Every replica settles it the same way: from `seq` on, the
/// branch whose operation at `seq` sorts first by (timestamp, digest) is
/// kept and the other is dropped.
#[derive(Clone, Debug, PartialEq)]
pub struct Fork {
    /// The origin whose log forked.
    pub origin: Arc<str>,
    /// The first sequence number at which the two branches differ.
    pub seq: u64,
    /// Which branch this replica keeps.
    pub outcome: ForkOutcome,
}

/// How a [`Fork`] was settled on this replica.
#[derive(Clone, Debug, PartialEq)]
pub enum ForkOutcome {
    /// The branch this replica held wins; the sender holds the losing one
    /// and is to be sent this replica's operations from the fork on.
    Kept,
    /// The received branch wins: this replica dropped its operations from
    /// the fork on (here, so that their author can write them again) and
    /// applied the received ones.
    Replaced {
        /// The dropped operations, in sequence order.
        dropped: Vec<OperationWithMetadata>,
    },
}

/// An origin whose operations in a batch were refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The operation that failed the check.
    pub id: OpId,
    /// Why.
    pub reason: RefusalReason,
}

/// Why a [`Refusal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    /// Its `prev` is not the digest of the operation before it in the batch.
    BrokenChain,
    /// A signature does not verify against the origin's key.
    BadSignature,
}

impl Refusal {
    /// The refusal as the core's error.
    pub fn to_error(&self) -> Error {
        match self.reason {
            RefusalReason::BrokenChain => Error::BrokenChain { id: self.id.clone() },
            RefusalReason::BadSignature => Error::BadSignature { id: self.id.clone() },
        }
    }
}

/// One origin's share of a received batch, checked against what the
/// replica holds.
struct OriginRun {
    origin: Arc<str>,
    /// Operations to apply after the chain and signature checks (those
    /// continuing the held chain, or a fork's other branch).
    ops: Vec<OperationWithMetadata>,
    /// Their digests.
    digests: Vec<OpDigest>,
    /// What the check ahead found of their signatures.
    checks: Vec<SignatureCheck>,
    /// `Some(seq)`: `ops` are the other branch of a fork at `seq`.
    fork_at: Option<u64>,
}

/// A suffix of an origin's log to drop before applying a batch.
struct Truncation {
    origin: Arc<str>,
    from: u64,
    dropped: Vec<OperationWithMetadata>,
}

/// How a replica's clock stands against its wall clock and the clocks of
/// the origins it receives from (for status reports).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClockReport {
    /// How far past the wall clock a received timestamp may move the clock
    /// and still take effect at once.
    pub max_clock_drift_ms: u64,
    /// The correction added to the wall clock passed in (estimated from
    /// peers' clocks by the node; 0 when none).
    pub wall_clock_offset_ms: i64,
    /// The newest timestamp issued or observed.
    pub clock: Hlc,
    /// How far the clock is ahead of the corrected wall time (negative when
    /// it is behind, as it is when the replica has been idle).
    pub clock_ahead_ms: i64,
    /// Operations held but not in effect yet (stamped beyond the horizon).
    pub deferred_operations: u64,
    /// The timestamp of the first deferred operation to become due.
    pub next_deferred: Option<Hlc>,
    /// Per origin, how far ahead of this replica's corrected wall clock its
    /// operations were stamped when received, at most (since the replica
    /// was opened), the furthest ahead first.
    pub origins: Vec<OriginSkew>,
}

/// How far ahead of the receiver's clock one origin's operations came.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OriginSkew {
    /// The origin's peer id.
    pub origin: String,
    /// The largest (timestamp - wall time at receipt) seen, in ms; negative
    /// when every operation arrived stamped in the past.
    pub max_ahead_ms: i64,
}

/// What the store holds deferred, as far as the replica needs it in memory.
#[derive(Clone, Debug, Default)]
struct Deferred {
    count: u64,
    /// The first to become due.
    first: Option<Stamp>,
    /// Per origin with deferred operations: how many, and a sequence number
    /// at or below the lowest of them. Only those origins' operations from
    /// that number on can be deferred, so checking whether an operation is
    /// deferred costs no store read for every other one (one deferred
    /// operation must not slow down every later batch).
    origins: HashMap<Arc<str>, (u64, u64)>,
}

impl Deferred {
    /// Reads what `store` holds deferred, a page at a time.
    fn load(store: &impl Store) -> Result<Self, Error> {
        const PAGE: usize = 4_096;
        let mut deferred = Deferred { count: store.deferred_count()?, ..Deferred::default() };
        let mut from: Option<Stamp> = None;
        loop {
            let page = store.deferred(from.as_ref(), PAGE)?;
            // The page starts at `from`, already counted.
            let skip = usize::from(from.is_some());
            if page.len() <= skip {
                break;
            }
            deferred.first = deferred.first.or_else(|| page.first().cloned());
            deferred.note(&page[skip..]);
            if page.len() < PAGE {
                break;
            }
            from = page.last().cloned();
        }
        Ok(deferred)
    }

    /// Notes the origins of `stamps` (deferred now).
    fn note(&mut self, stamps: &[Stamp]) {
        for stamp in stamps {
            let (count, lowest) = self.origins.entry(stamp.id.origin.clone()).or_insert((0, stamp.id.seq));
            *count += 1;
            *lowest = (*lowest).min(stamp.id.seq);
        }
    }

    /// Records `stamps`, committed as deferred.
    fn add(&mut self, stamps: &[Stamp]) {
        self.count += stamps.len() as u64;
        self.first = self.first.take().into_iter().chain(stamps.iter().min().cloned()).min();
        self.note(stamps);
    }

    /// Forgets `stamps`, committed as released; `first` is the new first.
    fn release(&mut self, stamps: &[Stamp], first: Option<Stamp>) {
        self.count = self.count.saturating_sub(stamps.len() as u64);
        self.first = first;
        for stamp in stamps {
            if let Some((count, _)) = self.origins.get_mut(&stamp.id.origin) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.origins.remove(&stamp.id.origin);
                }
            }
        }
    }

    /// Whether `id` may be deferred (if not, it certainly is not).
    fn may_hold(&self, id: &OpId) -> bool {
        self.origins.get(&id.origin).is_some_and(|&(_, lowest)| id.seq >= lowest)
    }
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
    /// How far past the corrected wall clock a timestamp takes effect.
    max_drift_ms: u64,
    /// Added to every wall time passed in (the node's correction of a wall
    /// clock that disagrees with its peers').
    wall_offset_ms: i64,
    deferred: Deferred,
    /// Per origin, the most its timestamps were ahead at receipt (at most
    /// [`MAX_SKEW_ORIGINS`]).
    skew: BTreeMap<Arc<str>, i64>,
    /// The secondary indexes every commit keeps (see [`crate::index`]).
    indexes: Vec<IndexDef>,
    /// The operations of the newest commit that wrote any, as the op log
    /// holds them, until [`forget_recent_ops`](Self::forget_recent_ops):
    /// peers that are up to date are sent them without a read of the op log.
    recent_ops: crate::store::EncodedOps,
}

/// Whether a batch holds local writes to stamp or operations received, and
/// the wall time (before correction) at which it is applied.
#[derive(Clone, Copy)]
enum Stamping {
    Local { now_ms: u64 },
    Received { now_ms: u64 },
}

/// What [`Database::apply_with`] applied: the receipts of local writes
/// (received operations get none) and how many operations it applied.
struct Applied {
    receipts: Vec<Receipt>,
    count: usize,
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
        // Stores written before the observed reading was kept: all observed.
        let observed = match store.meta(OBSERVED_META_KEY)? {
            Some(bytes) => codec::decode::<Hlc>(&bytes, "observed clock reading")?,
            None => last,
        };
        let deferred = Deferred::load(&store)?;
        let indexes = index::decode_defs(store.meta(INDEXES_META_KEY)?.as_deref())?;
        Ok(Self {
            store,
            peer_id: peer_id.into(),
            clock: HybridLogicalClock::resume(last, observed),
            version_vector,
            resolver: Arc::new(LastWriterWins),
            feed: ChangeFeed::new(),
            signer: None,
            verifier: None,
            heads: HashMap::new(),
            max_drift_ms: duration_ms(DEFAULT_MAX_CLOCK_DRIFT),
            wall_offset_ms: 0,
            deferred,
            skew: BTreeMap::new(),
            indexes,
            recent_ops: crate::store::EncodedOps::new(),
        })
    }

    /// Sets how far past this replica's (corrected) wall clock a received
    /// timestamp may lie and still take effect at once (default
    /// [`DEFAULT_MAX_CLOCK_DRIFT`]); later ones wait until they are due.
    pub fn with_max_clock_drift(mut self, drift: Duration) -> Self {
        self.max_drift_ms = duration_ms(drift);
        self
    }

    /// The maximum clock drift in use.
    pub fn max_clock_drift(&self) -> Duration {
        Duration::from_millis(self.max_drift_ms)
    }

    /// Corrects every wall time passed in from now on by `offset_ms` (a
    /// node whose wall clock disagrees with its peers' writes and judges
    /// timestamps with the corrected time).
    pub fn set_wall_clock_offset(&mut self, offset_ms: i64) {
        self.wall_offset_ms = offset_ms;
    }

    /// The correction set by [`set_wall_clock_offset`](Self::set_wall_clock_offset).
    pub fn wall_clock_offset(&self) -> i64 {
        self.wall_offset_ms
    }

    /// The wall time `now_ms` with the correction applied.
    fn corrected(&self, now_ms: u64) -> u64 {
        now_ms.saturating_add_signed(self.wall_offset_ms)
    }

    /// The newest timestamp that takes effect at wall time `now_ms`.
    fn horizon(&self, now_ms: u64) -> Hlc {
        clock::horizon(self.corrected(now_ms), self.max_drift_ms)
    }

    /// Operations held but not in effect yet.
    pub fn deferred_count(&self) -> u64 {
        self.deferred.count
    }

    /// The wall time (as passed in, before correction) at which the first
    /// deferred operation becomes due: when [`apply_due`](Self::apply_due)
    /// has work. `None` when nothing is deferred.
    pub fn next_due_ms(&self) -> Option<u64> {
        let first = self.deferred.first.as_ref()?;
        let due = i128::from(first.hlc.wall_ms()) - i128::from(self.max_drift_ms) - i128::from(self.wall_offset_ms);
        Some(u64::try_from(due.max(0)).unwrap_or(u64::MAX))
    }

    /// How the clock stands at wall time `now_ms` (see [`ClockReport`]).
    pub fn clock_report(&self, now_ms: u64) -> ClockReport {
        let mut origins: Vec<OriginSkew> =
            self.skew.iter().map(|(origin, &max_ahead_ms)| OriginSkew { origin: origin.to_string(), max_ahead_ms }).collect();
        origins.sort_by(|a, b| b.max_ahead_ms.cmp(&a.max_ahead_ms).then_with(|| a.origin.cmp(&b.origin)));
        ClockReport {
            max_clock_drift_ms: self.max_drift_ms,
            wall_clock_offset_ms: self.wall_offset_ms,
            clock: self.clock.last(),
            clock_ahead_ms: ahead_ms(self.clock.last(), self.corrected(now_ms)),
            deferred_operations: self.deferred.count,
            next_deferred: self.deferred.first.as_ref().map(|s| s.hlc),
            origins,
        }
    }

    /// Merges the deferred operations that are due at wall time `now_ms`
    /// into their nodes, at most [`MAX_DUE_PER_COMMIT`] per call, in one
    /// durable commit; returns how many. Call it when
    /// [`next_due_ms`](Self::next_due_ms) has passed (again while it returns
    /// a full batch).
    pub fn apply_due(&mut self, now_ms: u64) -> Result<usize, Error> {
        let horizon = self.horizon(now_ms);
        if self.deferred.first.as_ref().is_none_or(|first| first.hlc > horizon) {
            return Ok(0);
        }
        let stamps: Vec<Stamp> = self.store.deferred(None, MAX_DUE_PER_COMMIT)?.into_iter().take_while(|s| s.hlc <= horizon).collect();
        if stamps.is_empty() {
            // The first one known was stale.
            self.deferred.first = self.store.deferred(None, 1)?.pop();
            return Ok(0);
        }
        let ids: Vec<OpId> = stamps.iter().map(|s| s.id.clone()).collect();
        let mut ops = Vec::with_capacity(ids.len());
        for (id, op) in ids.iter().zip(self.store.ops(&ids)?) {
            match op {
                Some(op) => ops.push(op),
                None => return Err(Error::Decode { what: "op log", reason: format!("deferred operation {id} is missing") }),
            }
        }
        let mut records = self.load_records(&ops)?;
        let before = self.entries_before(&records);
        let waiting = self.deferred_targets(&ops, &records)?;
        let mut clock = self.clock.clone();
        let publish = self.feed.has_subscribers();
        let mut changes = Vec::new();
        let mut released: HashSet<OpId> = HashSet::with_capacity(ops.len());
        for op in ops {
            let Ok(at) = records.binary_search_by(|r| r.id.as_str().cmp(&op.node_id)) else { continue };
            let record = &mut records[at];
            clock.observe(op.timestamp, horizon);
            let id = op.id.clone();
            let change = publish.then(|| op.clone());
            let version_vector = &self.version_vector;
            merge::apply_owned(record, op, |target: &OpId| {
                let deferred = waiting.contains(target) && !released.contains(target);
                version_vector.contains(&target.origin, target.seq) && !deferred
            });
            released.insert(id);
            if let Some(op) = change {
                changes.push((op, record.view(&*self.resolver)));
            }
        }
        let count = stamps.len();
        let mut batch = WriteBatch { nodes: records, meta: clock_meta(&clock), released: stamps, ..WriteBatch::default() };
        self.index_changes(&mut batch, before)?;
        self.store.commit(&batch)?;
        self.clock = clock;
        // The store is committed: if reading the new first fails, keep the
        // old one (earlier than the new), and the next call reads again.
        let first = match self.store.deferred(None, 1) {
            Ok(mut page) => page.pop(),
            Err(_) => self.deferred.first.clone(),
        };
        self.deferred.release(&batch.released, first);
        self.feed.publish(changes);
        Ok(count)
    }

    /// Which of the operations that `ops` supersede, or that the pending
    /// supersessions of `records` wait for, are held but deferred (not
    /// merged yet): the merge must treat them as not applied, as for an
    /// operation not received yet.
    fn deferred_targets(&self, ops: &[OperationWithMetadata], records: &[NodeRecord]) -> Result<HashSet<OpId>, Error> {
        if self.deferred.count == 0 {
            return Ok(HashSet::new());
        }
        let superseded = ops.iter().flat_map(|op| op.supersedes.values().flatten());
        let awaited = records.iter().flat_map(|record| record.pending.iter().map(|note| &note.target));
        let mut targets: Vec<OpId> = superseded
            .chain(awaited)
            .filter(|id| self.deferred.may_hold(id) && self.version_vector.contains(&id.origin, id.seq))
            .cloned()
            .collect();
        targets.sort_unstable();
        targets.dedup();
        let mut waiting = HashSet::new();
        for (id, op) in targets.iter().zip(self.store.ops(&targets)?) {
            let Some(op) = op else { continue };
            let stamp = op.stamp();
            if self.store.deferred(Some(&stamp), 1)?.first() == Some(&stamp) {
                waiting.insert(id.clone());
            }
        }
        Ok(waiting)
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

    /// The verifier of peers' operations, if any: what
    /// [`ReceivedOp::check_all`] must be given for this replica.
    pub fn verifier(&self) -> Option<Arc<dyn OpVerifier>> {
        self.verifier.clone()
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
        if let Some((key, _)) = entries.iter().find(|(key, _)| key == CLOCK_META_KEY || key == OBSERVED_META_KEY || key == INDEXES_META_KEY)
        {
            return Err(Error::ReservedKey { key: key.clone() });
        }
        self.store.commit(&WriteBatch { meta: entries, ..WriteBatch::default() })
    }

    /// Makes the store usable again after an [`Error::StoreFault`]
    /// ([`Store::recover`]) and reads back what the replica keeps in memory
    /// (version vector, clock, deferred operations): a commit whose error
    /// came after its commit record was written is then known as applied,
    /// so nothing is applied twice and no sequence number is used twice.
    /// Fails, changing nothing in memory, while the store cannot recover.
    pub fn recover_store(&mut self) -> Result<(), Error> {
        self.store.recover()?;
        let version_vector = self.store.version_vector()?;
        let last = match self.store.meta(CLOCK_META_KEY)? {
            Some(bytes) => codec::decode::<Hlc>(&bytes, "clock reading")?,
            None => Hlc::ZERO,
        };
        let observed = match self.store.meta(OBSERVED_META_KEY)? {
            Some(bytes) => codec::decode::<Hlc>(&bytes, "observed clock reading")?,
            None => last,
        };
        let deferred = Deferred::load(&self.store)?;
        let indexes = index::decode_defs(self.store.meta(INDEXES_META_KEY)?.as_deref())?;
        // The clock never steps back, whatever the store says.
        let mut clock = HybridLogicalClock::resume(last, observed);
        if clock.last() < self.clock.last() {
            clock = self.clock.clone();
        }
        self.version_vector = version_vector;
        self.clock = clock;
        self.deferred = deferred;
        self.heads.clear();
        self.indexes = indexes;
        Ok(())
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
        for (i, op) in ops.iter().enumerate() {
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
            // Every operation's origin is the peer id (above): checked once,
            // where the first operation would fail.
            if i == 0 {
                crate::operation::check_origin(&op.id.origin)
                    .map_err(|reason| Error::InvalidOperation { id: op.id.clone(), reason: format!("its origin {reason}") })?;
            }
            if op.operation != OperationType::DeleteNode {
                validate_value(&op.data)?;
            }
        }
        Ok(self.apply_with(ops, Stamping::Local { now_ms }, EncodedOps::new(), Vec::new())?.receipts)
    }

    /// Applies operations received from peers at wall time `now_ms` in one
    /// durable transaction. Operations already held are skipped; an
    /// operation whose predecessor from the same origin is neither held nor
    /// earlier in the batch fails the whole batch with
    /// [`Error::SequenceGap`], as does any invalid operation. Nothing is
    /// written when it fails. Operations stamped beyond the clock horizon
    /// are held but take effect later (see [`apply_due`](Self::apply_due)).
    ///
    /// With a verifier, each origin is checked on its own: an origin whose
    /// chain is broken or whose signature does not verify is refused (see
    /// [`ApplyReport::refused`]) and the others are applied. An operation
    /// that differs from the one held under the same sequence number is a
    /// fork, settled by the rule of [`Fork`] ([`ApplyReport::forks`]).
    pub fn apply_remote(&mut self, ops: Vec<OperationWithMetadata>, now_ms: u64) -> Result<ApplyReport, Error> {
        self.apply_received(ops.into_iter().map(ReceivedOp::unchecked).collect(), now_ms)
    }

    /// [`apply_remote`](Self::apply_remote) for operations that may have
    /// been checked ahead ([`ReceivedOp::check_all`], with this replica's
    /// verifier): their encodings, digests and signature checks are used
    /// instead of being done again here.
    pub fn apply_received(&mut self, ops: Vec<ReceivedOp>, now_ms: u64) -> Result<ApplyReport, Error> {
        for received in &ops {
            // Validated ahead, with the other checks, on another thread.
            if !received.is_valid() {
                received.op.validate()?;
            }
        }
        let mut report = ApplyReport::default();
        let verifier = self.verifier.clone();
        let (runs, encoded) = self.check_runs(ops, verifier.as_deref(), &mut report)?;
        let mut apply: Vec<OperationWithMetadata> = Vec::new();
        let mut truncations = Vec::new();
        // Each applied run's last operation and digest: its origin's head
        // once the batch is committed, known without reading it back.
        let mut run_heads: Vec<(Arc<str>, u64, OpDigest)> = Vec::with_capacity(runs.len());
        for run in runs {
            let head = run.ops.last().map(|op| op.id.seq).zip(run.digests.last().copied());
            let Some(seq) = run.fork_at else {
                run_heads.extend(head.map(|(seq, digest)| (run.origin.clone(), seq, digest)));
                // Usually the batch's one run: taken as it is.
                if apply.is_empty() {
                    apply = run.ops;
                } else {
                    apply.extend(run.ops);
                }
                continue;
            };
            let ours = self.store.ops_after(&run.origin, seq - 1, 1)?.pop();
            let theirs_wins = match &ours {
                Some(ours) => (run.ops[0].timestamp, run.digests[0]) < (ours.timestamp, ours.digest()),
                None => true,
            };
            if theirs_wins {
                run_heads.extend(head.map(|(seq, digest)| (run.origin.clone(), seq, digest)));
                let dropped = self.store.ops_after(&run.origin, seq - 1, usize::MAX)?;
                truncations.push(Truncation { origin: run.origin.clone(), from: seq, dropped: dropped.clone() });
                report.forks.push(Fork { origin: run.origin, seq, outcome: ForkOutcome::Replaced { dropped } });
                apply.extend(run.ops);
            } else {
                report.forks.push(Fork { origin: run.origin, seq, outcome: ForkOutcome::Kept });
            }
        }
        let deferred_before = self.deferred.count;
        report.applied = self.apply_with(apply, Stamping::Received { now_ms }, encoded, truncations)?.count;
        report.deferred = self.deferred.count.saturating_sub(deferred_before) as usize;
        // Committed: an origin whose held chain now ends with its run's
        // last operation has that operation's digest as its head (the next
        // batch links to it without reading it back from the op log).
        for (origin, seq, digest) in run_heads {
            if self.version_vector.get(&origin) == seq {
                self.heads.insert(origin, digest);
            }
        }
        Ok(report)
    }

    /// The digest of `origin`'s operation `seq` as held here (zero for seq
    /// 0), or `None` if this replica does not hold it.
    pub fn digest_at(&mut self, origin: &str, seq: u64) -> Result<Option<OpDigest>, Error> {
        let held = self.version_vector.get(origin);
        if seq > held {
            return Ok(None);
        }
        if seq == held {
            let origin: Arc<str> = origin.into();
            return self.head(&origin).map(Some);
        }
        if seq == 0 {
            return Ok(Some(OpDigest::default()));
        }
        Ok(self.store.ops_after(origin, seq - 1, 1)?.pop().map(|op| op.digest()))
    }

    /// Splits a received batch by origin and checks each origin's
    /// operations against the chain held: duplicates are skipped; what
    /// continues the chain, or forks it, is checked link by link and
    /// authenticated up to its last signed operation. Without a verifier
    /// nothing is checked (and no fork can be told apart).
    fn check_runs(
        &mut self,
        ops: Vec<ReceivedOp>,
        verifier: Option<&dyn OpVerifier>,
        report: &mut ApplyReport,
    ) -> Result<(Vec<OriginRun>, EncodedOps), Error> {
        // The bodies of the operations kept: the check ahead's buffer
        // itself when they are all of it in order; else copied into room
        // for every operation's body at once, so the buffer is not regrown.
        let mut encoded = KeptBodies::new(&ops, 128);
        // A batch usually holds one origin's operations: it is that
        // origin's run as it is, without moving each into a run of its own.
        let single = ops.first().map(|first| first.op.id.origin.clone()).filter(|origin| ops.iter().all(|r| r.op.id.origin == *origin));
        let by_origin: Vec<(Arc<str>, Vec<ReceivedOp>)> = match single {
            Some(origin) => vec![(origin, ops)],
            None => {
                let mut by_origin: Vec<(Arc<str>, Vec<ReceivedOp>)> = Vec::new();
                let mut index: HashMap<Arc<str>, usize> = HashMap::new();
                for received in ops {
                    let at = *index.entry(received.op.id.origin.clone()).or_insert_with(|| {
                        by_origin.push((received.op.id.origin.clone(), Vec::new()));
                        by_origin.len() - 1
                    });
                    by_origin[at].1.push(received);
                }
                by_origin
            }
        };
        // The new operations, encoded once: for the digest here and for the
        // op log when they are applied.
        let mut runs: Vec<OriginRun> = Vec::new();
        for (origin, mut run) in by_origin {
            run.sort_by_key(|r| r.op.id.seq);
            run.dedup_by_key(|r| r.op.id.seq);
            let held = self.version_vector.get(&origin);
            if let Some(first) = run.first().filter(|r| r.op.id.seq > held + 1) {
                return Err(Error::SequenceGap { origin: origin.to_string(), expected: held + 1, found: first.op.id.seq });
            }
            if let Some(pair) = run.windows(2).find(|pair| pair[1].op.id.seq != pair[0].op.id.seq + 1) {
                return Err(Error::SequenceGap { origin: origin.to_string(), expected: pair[0].op.id.seq + 1, found: pair[1].op.id.seq });
            }
            let overlap = run.iter().take_while(|r| r.op.id.seq <= held).count();
            if verifier.is_none() {
                // Without a verifier nothing is checked: operations held
                // are skipped by their sequence numbers.
                report.duplicates += overlap;
                let received: Vec<ReceivedOp> = run.drain(overlap..).collect();
                let digests = received.iter().map(|r| encoded.push(r)).collect();
                let checks = received.iter().map(ReceivedOp::signature_check).collect();
                let ops: Vec<OperationWithMetadata> = received.into_iter().map(|r| r.op).collect();
                if !ops.is_empty() {
                    runs.push(OriginRun { origin, ops, digests, checks, fork_at: None });
                }
                continue;
            }
            // Where the received operations leave the held chain, if they do.
            let mut start = overlap;
            let mut fork_at = None;
            if overlap > 0 {
                let last = &run[overlap - 1];
                if self.digest_at(&origin, last.op.id.seq)? == Some(last.digest()) {
                    // The chains agree up to there, so on everything before.
                    report.duplicates += overlap;
                } else {
                    let first_seq = run[0].op.id.seq;
                    let ours = self.store.ops_after(&origin, first_seq - 1, overlap)?;
                    let differs = (0..overlap).find(|&i| ours.get(i).map(|o| o.digest()) != Some(run[i].digest())).unwrap_or(0);
                    let seq = run[differs].op.id.seq;
                    let before = match differs {
                        0 => self.digest_at(&origin, seq - 1)?,
                        i => ours.get(i - 1).map(|o| o.digest()),
                    };
                    if before != Some(run[differs].op.prev) {
                        report.unjoined.push((origin.clone(), first_seq));
                        continue;
                    }
                    report.duplicates += differs;
                    start = differs;
                    fork_at = Some(seq);
                }
            }
            if start == run.len() {
                continue;
            }
            let mut link = match fork_at {
                Some(seq) => self.digest_at(&origin, seq - 1)?.unwrap_or_default(),
                None => self.head(&origin)?,
            };
            if run[start].op.prev != link {
                report.unjoined.push((origin.clone(), run[start].op.id.seq));
                continue;
            }
            let mut kept = Vec::with_capacity(run.len() - start);
            let mut digests = Vec::with_capacity(run.len() - start);
            let mut checks = Vec::with_capacity(run.len() - start);
            let mut broken = None;
            for received in run.drain(start..) {
                if received.op.prev != link {
                    broken = Some(received.op.id.clone());
                    break;
                }
                link = encoded.push(&received);
                digests.push(link);
                checks.push(received.signature_check());
                kept.push(received.op);
            }
            if let Some(id) = broken {
                report.refused.push(Refusal { id, reason: RefusalReason::BrokenChain });
                continue;
            }
            runs.push(OriginRun { origin, ops: kept, digests, checks, fork_at });
        }

        // One signature check for every origin; an origin whose signature
        // fails is refused and the rest checked again. Signatures checked
        // ahead (`ReceivedOp::check_all`) are not checked again.
        while let Some(verifier) = verifier {
            let signed: Vec<(usize, usize)> = runs
                .iter()
                .enumerate()
                .flat_map(|(r, run)| run.ops.iter().enumerate().filter(|(_, op)| op.signature.is_some()).map(move |(i, _)| (r, i)))
                .collect();
            let failed_ahead = signed.iter().find(|&&(r, i)| runs[r].checks[i] == SignatureCheck::Invalid);
            let refuse = match failed_ahead {
                Some(&found) => Some(found),
                None => {
                    let unchecked: Vec<(usize, usize)> =
                        signed.into_iter().filter(|&(r, i)| runs[r].checks[i] != SignatureCheck::Valid).collect();
                    let items: Vec<(&str, OpDigest, OpSignature)> = unchecked
                        .iter()
                        .filter_map(|&(r, i)| Some((&*runs[r].origin, runs[r].digests[i], runs[r].ops[i].signature?)))
                        .collect();
                    match verifier.verify(&items) {
                        Ok(()) => None,
                        Err(bad) => unchecked.get(bad).copied(),
                    }
                }
            };
            let Some((r, i)) = refuse else { break };
            let run = runs.remove(r);
            report.refused.push(Refusal { id: run.ops[i].id.clone(), reason: RefusalReason::BadSignature });
        }
        // Keep each origin's operations up to its last signed one; the rest
        // wait for a batch that authenticates them.
        for run in &mut runs {
            let keep = match verifier {
                None => run.ops.len(),
                Some(_) => run.ops.iter().rposition(|op| op.signature.is_some()).map_or(0, |i| i + 1),
            };
            report.held_back += run.ops.len() - keep;
            run.ops.truncate(keep);
            run.digests.truncate(keep);
            run.checks.truncate(keep);
        }
        runs.retain(|run| !run.ops.is_empty());
        // Every received operation is dropped by now (moved into `runs` or
        // let go): the shared buffer is ours alone.
        Ok((runs, encoded.finish()))
    }

    /// The shared write path: merge every operation into its node's record
    /// (or defer it, when it is stamped beyond the horizon), then commit ops,
    /// records, version vector, deferred operations and clock in one batch.
    /// Reuses the bodies in `pre` for received operations that
    /// `check_runs` already encoded (in the same order), after dropping the
    /// log suffixes in `truncations` (the records of the nodes their
    /// operations touched are rebuilt without them).
    fn apply_with(
        &mut self,
        ops: Vec<OperationWithMetadata>,
        stamping: Stamping,
        pre: EncodedOps,
        truncations: Vec<Truncation>,
    ) -> Result<Applied, Error> {
        let (local, now_ms) = match stamping {
            Stamping::Local { now_ms } => (true, now_ms),
            Stamping::Received { now_ms } => (false, now_ms),
        };
        let now = self.corrected(now_ms);
        let horizon = self.horizon(now_ms);
        let mut reused = 0;
        let empty = EncodedOps::new();
        // Received operations beyond the horizon are not merged now: their
        // nodes need not be read.
        let mut records = if local {
            self.load_records(&ops)?
        } else {
            let due: Vec<&OperationWithMetadata> = ops.iter().filter(|op| op.timestamp <= horizon).collect();
            self.load_records(due)?
        };
        // Read before the truncations below replace any of them.
        let before = self.entries_before(&records);
        let waiting = self.deferred_targets(&ops, &records)?;
        let mut deferred: Vec<Stamp> = Vec::new();
        let mut deferred_ids: HashSet<OpId> = HashSet::new();
        let mut skew: BTreeMap<Arc<str>, i64> = BTreeMap::new();
        let position = |records: &[NodeRecord], id: &str| records.binary_search_by(|r| r.id.as_str().cmp(id));
        let mut version_vector = self.version_vector.clone();
        for truncation in &truncations {
            version_vector.set(&truncation.origin, truncation.from - 1);
        }
        // Dropped operations still deferred leave the deferred table.
        let mut released: Vec<Stamp> = Vec::new();
        if !truncations.is_empty() {
            let still_deferred = self.deferred_set()?;
            released =
                truncations.iter().flat_map(|t| t.dropped.iter().map(|op| op.stamp())).filter(|s| still_deferred.contains(s)).collect();
            let touched: std::collections::BTreeSet<&str> =
                truncations.iter().flat_map(|t| t.dropped.iter().map(|op| op.node_id.as_str())).collect();
            for record in self.rebuild_records(&touched, &version_vector, &still_deferred)? {
                match position(&records, &record.id) {
                    Ok(at) => records[at] = record,
                    Err(at) => records.insert(at, record),
                }
            }
        }
        let mut clock = self.clock.clone();
        let publish = self.feed.has_subscribers();
        let mut changes = Vec::new();
        // An operation (received, or local: an import's creates) that alone
        // makes its node's record (the node had none) is not merged here: the store writes the record from
        // its body (`crate::born`). Not while anything needs the records
        // themselves (a subscriber's change, an index) or truncations
        // rebuilt some.
        let births = !publish && self.indexes.is_empty() && truncations.is_empty();
        // For each record (in `records`' order, so in node id order), the
        // batch's body it is born of and where its parts lie, while it is.
        let mut born_of: Vec<Option<(usize, Parts)>> = if births { vec![None; records.len()] } else { Vec::new() };
        // The op log's bodies: sized for the batch up front for local
        // operations (a body is usually under 128 bytes); received ones are
        // those in `pre`, taken as it is while they are all of it in order.
        let mut bodies = match local {
            true => KeptBodies::copying(ops.len(), ops.len() * 128),
            false => KeptBodies::over(pre),
        };
        // Receipts name local operations; received ones are counted.
        let mut receipts = Vec::with_capacity(if local { ops.len() } else { 0 });
        let mut applied = 0usize;
        let count = ops.len();
        // Encoded bytes of local operations since the last signed one.
        let mut unsigned_bytes = 0usize;
        let mut local_head = match local {
            true => {
                let origin = self.peer_id.clone();
                Some(self.head(&origin)?)
            }
            false => None,
        };

        let mut next_record = 0;
        for (index, mut op) in ops.into_iter().enumerate() {
            let next = version_vector.get(&op.id.origin) + 1;
            if local {
                op.id.seq = next;
                op.timestamp = clock.tick_within(now, horizon);
                if op.operation == OperationType::UpdateNode {
                    if let Ok(at) = position(&records, &op.node_id) {
                        // A record born of an earlier operation of the batch
                        // is built first: the values it replaces are there.
                        if let Some(first) = born_of.get_mut(at).and_then(Option::take) {
                            records[at] = born_record(&bodies, first, &op.node_id)?;
                        }
                        op.supersedes = superseded_by_write(&records[at], &op.data);
                    }
                }
                // Link the chain; sign the commit's last operation, every
                // SIGN_EVERY-th, and each that brings the bytes since the last
                // signature to SIGN_EVERY_BYTES (the previous commit ended
                // signed).
                op.prev = local_head.unwrap_or_default();
                let encoded = bodies.appended();
                let digest = encoded.push_unsigned(&op);
                // The operation as it travels: its body and, instead of the
                // body's array head, the id (at most 2 + 9 bytes of heads).
                unsigned_bytes += encoded.get(encoded.len() - 1).map_or(0, |(_, body)| body.len()) + op.id.origin.len() + 11;
                if let Some(signer) = &self.signer {
                    if index + 1 == count || op.id.seq % SIGN_EVERY == 0 || unsigned_bytes >= SIGN_EVERY_BYTES {
                        let signature = signer.sign(&digest);
                        encoded.sign_last(&signature);
                        op.signature = Some(signature);
                        unsigned_bytes = 0;
                    }
                }
                local_head = Some(digest);
            } else if op.id.seq < next {
                continue;
            } else if op.id.seq > next {
                return Err(Error::SequenceGap { origin: op.id.origin.to_string(), expected: next, found: op.id.seq });
            } else {
                let ahead = ahead_ms(op.timestamp, now);
                match skew.get_mut(&op.id.origin) {
                    Some(seen) => *seen = (*seen).max(ahead),
                    None => {
                        skew.insert(op.id.origin.clone(), ahead);
                    }
                }
                // `pre` holds these operations in the same order, plus any
                // that were held back: skip those.
                let pre = bodies.source().unwrap_or(&empty);
                while pre.get(reused).is_some_and(|(id, _)| *id != op.id) {
                    reused += 1;
                }
                if pre.get(reused).is_some() {
                    bodies.keep(reused);
                    reused += 1;
                } else {
                    bodies.appended().push(&op);
                }
            }
            // The operation is encoded for the op log (above). One stamped
            // beyond the horizon (a local one too, when what the clock
            // observed lies beyond it: the wall clock went back since) is
            // held and synced like any other but merged only once it is
            // due, as on every other replica.
            let timestamp = op.timestamp;
            version_vector.advance(&op.id.origin, op.id.seq);
            applied += 1;
            if local {
                receipts.push(Receipt { id: op.id.clone(), timestamp });
            }
            if timestamp > horizon {
                deferred.push(op.stamp());
                deferred_ids.insert(op.id.clone());
                continue;
            }
            if !local {
                clock.observe(timestamp, horizon);
            }
            // Now move its values into the record. Batches usually write
            // their nodes in id order (an import, a peer's batch of one
            // origin's creates): try the record after the last one first.
            let found = match records.get(next_record) {
                Some(record) if record.id == op.node_id => Ok(next_record),
                _ => position(&records, &op.node_id),
            };
            let at = match found {
                Ok(at) => at,
                Err(at) => {
                    records.insert(at, NodeRecord::empty(&op.node_id));
                    if births {
                        born_of.insert(at, None);
                    }
                    at
                }
            };
            next_record = at + 1;
            let record = &mut records[at];
            if births {
                if let Some(first) = born_of[at].take() {
                    // Touched again: made of its first operation, then merged.
                    *record = born_record(&bodies, first, &op.node_id)?;
                } else if record.is_blank() && op.supersedes.is_empty() {
                    let body = bodies.len().checked_sub(1);
                    let own = body.and_then(|i| bodies.get(i)).filter(|(id, _)| **id == op.id);
                    if let (Some(body), Some(parts)) = (body, own.and_then(|(_, body)| Parts::read(body))) {
                        born_of[at] = Some((body, parts));
                        continue;
                    }
                }
            }
            let change = publish.then(|| op.clone());
            let is_applied = |target: &OpId| {
                version_vector.contains(&target.origin, target.seq) && !deferred_ids.contains(target) && !waiting.contains(target)
            };
            merge::apply_owned(record, op, is_applied);
            if let Some(op) = change {
                changes.push((op, record.view(&*self.resolver)));
            }
        }
        if applied == 0 && truncations.is_empty() {
            return Ok(Applied { receipts, count: 0 });
        }

        let moved = version_vector
            .iter()
            .filter(|&(origin, seq)| self.version_vector.get(origin) != seq)
            .map(|(origin, seq)| (origin.to_owned(), seq))
            .chain(
                self.version_vector.iter().filter(|&(origin, _)| version_vector.get(origin) == 0).map(|(origin, _)| (origin.to_owned(), 0)),
            )
            .collect();
        // A node only deferred operations touched has nothing to store.
        // (A rebuilt one is stored blank: it replaces what the dropped
        // operations had left.)
        // Taken before the blank records (those born ones among them) go.
        let born: BornRecords = born_of.into_iter().flatten().collect();
        records.retain(|record| !record.is_blank() || truncations.iter().any(|t| t.dropped.iter().any(|op| op.node_id == record.id)));
        let mut batch = WriteBatch {
            truncate: truncations.iter().map(|t| (t.origin.to_string(), t.from)).collect(),
            ops: bodies.finish(),
            nodes: records,
            version_vector: moved,
            meta: clock_meta(&clock),
            deferred,
            released,
            ..WriteBatch::default()
        };
        self.index_changes(&mut batch, before)?;
        // Forgotten first: a failed commit must not leave a copy of what
        // the op log held before it (a reopened store is read instead).
        self.recent_ops = crate::store::EncodedOps::new();
        // A local batch's records are freed by the store while it waits
        // for its medium. A received batch's are freed by the store as it
        // encodes each: most of their blocks come from the thread that
        // decoded them, and freeing them beside the store's own work took
        // more CPU per operation in the catch-up of a node on two cores
        // (4.4-4.8 -> 4.4-6.2 us, 4 pairs), freeing them all after the
        // commit, cold, more than one by one while each is in the cache.
        // A batch with born records (local ones too: an import's creates)
        // has few records of its own left.
        if !born.is_empty() {
            self.store.commit_received(&mut batch, &born)?;
        } else if local {
            self.store.commit_and_free_records(&mut batch)?;
        } else {
            self.store.commit_and_free_records_early(&mut batch)?;
        }
        self.recent_ops = std::mem::take(&mut batch.ops);
        if !batch.released.is_empty() {
            // Dropped operations that were deferred are no longer.
            let first = self.store.deferred(None, 1)?.pop();
            self.deferred.release(&batch.released, first);
        }

        self.version_vector = version_vector;
        self.clock = clock;
        self.deferred.add(&batch.deferred);
        for (origin, ahead) in skew {
            self.record_skew(origin, ahead);
        }
        match local_head {
            Some(head) => {
                self.heads.insert(self.peer_id.clone(), head);
            }
            // Remote operations moved these origins' chains (the entries
            // of the version vector that moved): read the heads again when
            // next needed.
            None => {
                for (origin, _) in &batch.version_vector {
                    self.heads.remove(origin.as_str());
                }
            }
        }
        for truncation in &truncations {
            self.heads.remove(&truncation.origin);
        }
        self.feed.publish(changes);
        Ok(Applied { receipts, count: applied })
    }

    /// Remembers that `origin`'s operations came `ahead` ms ahead of the
    /// wall clock, keeping the [`MAX_SKEW_ORIGINS`] furthest ahead.
    fn record_skew(&mut self, origin: Arc<str>, ahead: i64) {
        if let Some(seen) = self.skew.get_mut(&origin) {
            *seen = (*seen).max(ahead);
            return;
        }
        if self.skew.len() >= MAX_SKEW_ORIGINS {
            let Some((least, &least_ahead)) = self.skew.iter().min_by_key(|(_, &a)| a) else { return };
            if least_ahead >= ahead {
                return;
            }
            let least = least.clone();
            self.skew.remove(&least);
        }
        self.skew.insert(origin, ahead);
    }

    /// The records of the nodes `ids`, merged again from every operation
    /// in `held` that touched them (the op log is read whole: this runs
    /// only when a fork drops operations). The merge does not depend on
    /// the order, so the result is what applying those operations as they
    /// came would have given. Operations still `deferred` stay out, as
    /// they are until due.
    fn rebuild_records(
        &self,
        ids: &std::collections::BTreeSet<&str>,
        held: &VersionVector,
        deferred: &HashSet<Stamp>,
    ) -> Result<Vec<NodeRecord>, Error> {
        const CHUNK: usize = 4_096;
        let mut by_node: HashMap<&str, Vec<OperationWithMetadata>> = HashMap::new();
        for (origin, up_to) in held.iter() {
            let mut after = 0;
            while after < up_to {
                let ops = self.store.ops_after(origin, after, CHUNK.min((up_to - after) as usize))?;
                let Some(last) = ops.last() else { break };
                after = last.id.seq;
                for op in ops {
                    if deferred.contains(&op.stamp()) {
                        continue;
                    }
                    if let Some(&id) = ids.get(op.node_id.as_str()) {
                        by_node.entry(id).or_default().push(op);
                    }
                }
            }
        }
        let deferred_ids: HashSet<&OpId> = deferred.iter().map(|s| &s.id).collect();
        let mut records = Vec::with_capacity(ids.len());
        for &id in ids {
            let ops = by_node.remove(id).unwrap_or_default();
            let own: HashSet<OpId> = ops.iter().map(|op| op.id.clone()).collect();
            let mut replayed = HashSet::new();
            let mut record = NodeRecord::empty(id);
            for op in ops {
                let op_id = op.id.clone();
                merge::apply_owned(&mut record, op, |target: &OpId| {
                    replayed.contains(target)
                        || (held.contains(&target.origin, target.seq) && !own.contains(target) && !deferred_ids.contains(target))
                });
                replayed.insert(op_id);
            }
            records.push(record);
        }
        Ok(records)
    }

    /// Every operation held deferred (only read when a fork drops some).
    fn deferred_set(&self) -> Result<HashSet<Stamp>, Error> {
        if self.deferred.count == 0 {
            return Ok(HashSet::new());
        }
        Ok(self.store.deferred(None, usize::MAX)?.into_iter().collect())
    }

    /// The records of every node the batch touches, sorted by id.
    fn load_records<'a>(&self, ops: impl IntoIterator<Item = &'a OperationWithMetadata>) -> Result<Vec<NodeRecord>, Error> {
        let mut ids: Vec<&str> = ops.into_iter().map(|op| op.node_id.as_str()).collect();
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

    /// Runs `query` (see [`crate::query`]).
    pub fn query(&self, query: &crate::query::Query) -> Result<crate::query::QueryPage, Error> {
        crate::query::run(&self.store, &*self.resolver, &self.indexes, query)
    }

    /// The secondary indexes, complete or being built.
    pub fn indexes(&self) -> &[IndexDef] {
        &self.indexes
    }

    /// Adds the index `spec` asks for, empty and [`IndexState::Building`]:
    /// from now on every commit keeps its entries, and
    /// [`build_index_step`](Self::build_index_step) indexes the nodes
    /// already stored, a slice per call, until it is ready. Returns the
    /// definition.
    pub fn create_index(&mut self, spec: &IndexSpec) -> Result<IndexDef, Error> {
        if self.indexes.len() >= index::MAX_INDEXES {
            return Err(Error::InvalidIndex { reason: format!("a replica keeps at most {} indexes", index::MAX_INDEXES) });
        }
        let number = self.indexes.iter().map(|def| def.number).max().map_or(1, |n| n + 1);
        let total = self.store.count_nodes(&spec.prefix)?;
        let def = spec.to_def(number, self.resolver.name(), total)?;
        if let Some(same) = self.indexes.iter().find(|d| d.name == def.name || (d.prefix == def.prefix && d.kind == def.kind)) {
            return Err(Error::InvalidIndex { reason: format!("index {:?} exists and covers the same", same.name) });
        }
        let mut indexes = self.indexes.clone();
        indexes.push(def.clone());
        self.store.commit(&WriteBatch { meta: vec![(INDEXES_META_KEY.into(), index::encode_defs(&indexes))], ..WriteBatch::default() })?;
        self.indexes = indexes;
        Ok(def)
    }

    /// Indexes up to `max_nodes` more stored nodes of index `name` in one
    /// commit (with the build's progress); returns the definition as it
    /// stands after (ready once the build has read every covered node).
    pub fn build_index_step(&mut self, name: &str, max_nodes: usize) -> Result<IndexDef, Error> {
        let at = self.index_position(name)?;
        let def = self.indexes[at].clone();
        let IndexState::Building { after, indexed, total } = &def.state else { return Ok(def) };
        let page = self.store.scan_nodes(&def.prefix, after.as_deref(), max_nodes.max(1))?;
        let mut added = Vec::new();
        for record in &page {
            if let Some(node) = record.view(&*self.resolver) {
                def.entries_of(&node, &mut added);
            }
        }
        let mut next = def.clone();
        next.state = match page.last() {
            Some(last) if page.len() >= max_nodes.max(1) => {
                IndexState::Building { after: Some(last.id.clone()), indexed: indexed + page.len() as u64, total: *total }
            }
            _ => IndexState::Ready,
        };
        let mut indexes = self.indexes.clone();
        indexes[at] = next.clone();
        let batch =
            WriteBatch { meta: vec![(INDEXES_META_KEY.into(), index::encode_defs(&indexes))], index_added: added, ..WriteBatch::default() };
        self.store.commit(&batch)?;
        self.indexes = indexes;
        Ok(next)
    }

    /// Drops index `name` and every entry of it, in one commit.
    pub fn drop_index(&mut self, name: &str) -> Result<IndexDef, Error> {
        let at = self.index_position(name)?;
        let mut indexes = self.indexes.clone();
        let dropped = indexes.remove(at);
        let batch = WriteBatch {
            meta: vec![(INDEXES_META_KEY.into(), index::encode_defs(&indexes))],
            index_dropped: vec![dropped.number],
            ..WriteBatch::default()
        };
        self.store.commit(&batch)?;
        self.indexes = indexes;
        Ok(dropped)
    }

    /// Starts the build again, from empty, of every index whose entries
    /// were made under another resolver than the one in use (a replica
    /// reopened with another `--resolver`); returns their names.
    pub fn rebuild_indexes_of_other_resolvers(&mut self) -> Result<Vec<String>, Error> {
        let resolver = self.resolver.name().to_owned();
        let stale: Vec<u32> = self.indexes.iter().filter(|d| d.resolver != resolver).map(|d| d.number).collect();
        if stale.is_empty() {
            return Ok(Vec::new());
        }
        let mut indexes = self.indexes.clone();
        let mut names = Vec::new();
        for def in indexes.iter_mut().filter(|d| stale.contains(&d.number)) {
            def.resolver = resolver.clone();
            def.state = IndexState::Building { after: None, indexed: 0, total: self.store.count_nodes(&def.prefix)? };
            names.push(def.name.clone());
        }
        let batch = WriteBatch {
            meta: vec![(INDEXES_META_KEY.into(), index::encode_defs(&indexes))],
            index_dropped: stale,
            ..WriteBatch::default()
        };
        self.store.commit(&batch)?;
        self.indexes = indexes;
        Ok(names)
    }

    fn index_position(&self, name: &str) -> Result<usize, Error> {
        self.indexes.iter().position(|d| d.name == name).ok_or_else(|| Error::NoSuchIndex { name: name.to_owned() })
    }

    /// The index entries of `records` as read from the store, before a
    /// batch changes them (empty without indexes): what
    /// [`index_changes`](Self::index_changes) compares the new entries
    /// with, without reading the records again.
    fn entries_before(&self, records: &[NodeRecord]) -> HashMap<String, Vec<index::IndexEntry>> {
        if self.indexes.is_empty() {
            return HashMap::new();
        }
        let resolver = &*self.resolver;
        records
            .iter()
            .filter(|record| self.indexes.iter().any(|def| def.covers(&record.id)))
            .map(|record| (record.id.clone(), index::entries_for(&self.indexes, &record.id, record.view(resolver).as_ref())))
            .collect()
    }

    /// Adds to `batch` the index entries that change when its records
    /// replace the ones stored: the old entries are `before` (from the
    /// records as they were read for the batch; any record not there is
    /// read from the store), the new from the batch's, both as the resolver
    /// presents them. Every write path calls this just before its commit,
    /// so entries and nodes change in one transaction.
    fn index_changes(&self, batch: &mut WriteBatch, mut before: HashMap<String, Vec<index::IndexEntry>>) -> Result<(), Error> {
        if self.indexes.is_empty() {
            return Ok(());
        }
        let covered: Vec<&crate::node::NodeRecord> =
            batch.nodes.iter().filter(|r| self.indexes.iter().any(|def| def.covers(&r.id))).collect();
        if covered.is_empty() {
            return Ok(());
        }
        let resolver = &*self.resolver;
        // Records the batch holds but were not read with it (a fork's
        // truncation rebuilds nodes its operations did not name).
        let unread: Vec<&str> = covered.iter().map(|r| r.id.as_str()).filter(|id| !before.contains_key(*id)).collect();
        if !unread.is_empty() {
            for (id, old) in unread.iter().zip(self.store.nodes(&unread)?) {
                let old_view = old.and_then(|old| old.view(resolver));
                before.insert((*id).to_owned(), index::entries_for(&self.indexes, id, old_view.as_ref()));
            }
        }
        let (mut removed, mut added) = (Vec::new(), Vec::new());
        for record in covered {
            let old_entries = before.remove(&record.id).unwrap_or_default();
            let new_entries = index::entries_for(&self.indexes, &record.id, record.view(resolver).as_ref());
            index::diff(&old_entries, &new_entries, &mut removed, &mut added);
        }
        batch.index_removed.extend(removed);
        batch.index_added.extend(added);
        Ok(())
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

    /// What [`ops_after`](Self::ops_after) reads, appended to `out` as the
    /// op log holds it, undecoded (see [`Store::op_bodies_after`]).
    ///
    /// When the newest commit holds every operation of `origin` after
    /// `after_seq` (a peer that was sent all before it), they are copied from
    /// that commit instead of read.
    pub fn op_bodies_after(&self, origin: &str, after_seq: u64, limit: usize, out: &mut crate::store::EncodedOps) -> Result<(), Error> {
        if self.recent_bodies_after(origin, after_seq, limit, out) {
            return Ok(());
        }
        self.store.op_bodies_after(origin, after_seq, limit, out)
    }

    /// Appends what [`op_bodies_after`](Self::op_bodies_after) returns from
    /// the newest commit's operations, if they start right after
    /// `after_seq` and run on without a gap; false (nothing appended) if
    /// the op log must be read.
    fn recent_bodies_after(&self, origin: &str, after_seq: u64, limit: usize, out: &mut crate::store::EncodedOps) -> bool {
        // The newest commit holds the newest operations of each origin in
        // it, so nothing of `origin` comes after its run there.
        let mut run = self.recent_ops.iter().filter(|(id, _)| &*id.origin == origin).skip_while(|(id, _)| id.seq <= after_seq).peekable();
        if run.peek().map(|(id, _)| id.seq) != after_seq.checked_add(1) {
            return false;
        }
        let mut expected = after_seq;
        let start = out.len();
        for (id, body) in run.take(limit) {
            if Some(id.seq) != expected.checked_add(1) {
                out.truncate(start);
                return false;
            }
            expected = id.seq;
            out.push_encoded(id, body);
        }
        true
    }

    /// Lets go of the newest commit's operations kept for
    /// [`op_bodies_after`](Self::op_bodies_after) (once they were sent).
    pub fn forget_recent_ops(&mut self) {
        self.recent_ops = crate::store::EncodedOps::new();
    }
}

/// The record born of the batch's operation at `at` of `bodies`, whose
/// parts are `parts`, built (the node `node_id` is touched again).
fn born_record(bodies: &KeptBodies, (at, parts): (usize, Parts), node_id: &str) -> Result<NodeRecord, Error> {
    match bodies.get(at).and_then(|(id, body)| BornRecord::from_parts(id, body, parts)) {
        Some(first) => first.to_record(),
        None => Err(Error::Decode { what: "born record", reason: format!("{node_id}: its body is gone") }),
    }
}

/// For an update, the values it replaces: in each field it writes, the
/// values the replica currently holds (a write made after seeing them), at
/// most the newest [`MAX_SUPERSEDED_PER_FIELD`] per field and
/// [`MAX_SUPERSEDED_PER_OP`] in all, so that peers accept it (values left
/// over stay as concurrent ones; later writes replace them).
fn superseded_by_write(record: &NodeRecord, data: &Value) -> std::collections::BTreeMap<String, Vec<OpId>> {
    let Value::Object(fields) = data else {
        return Default::default();
    };
    let mut budget = MAX_SUPERSEDED_PER_OP;
    let mut superseded = std::collections::BTreeMap::new();
    for field in fields.keys() {
        let Some(values) = record.fields.get(field) else { continue };
        // Values are in ascending stamp order: the newest are last.
        let take = values.len().min(MAX_SUPERSEDED_PER_FIELD).min(budget);
        if take == 0 {
            continue;
        }
        budget -= take;
        superseded.insert(field.clone(), values[values.len() - take..].iter().map(|v| v.stamp.id.clone()).collect());
    }
    superseded
}

/// The clock readings every commit records.
fn clock_meta(clock: &HybridLogicalClock) -> Vec<(String, Vec<u8>)> {
    vec![(CLOCK_META_KEY.to_owned(), codec::encode(&clock.last())), (OBSERVED_META_KEY.to_owned(), codec::encode(&clock.observed()))]
}

/// `duration` in whole milliseconds, saturating.
fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// How far `stamp` is ahead of wall time `now_ms`, in ms (negative when it
/// is behind), saturating.
fn ahead_ms(stamp: Hlc, now_ms: u64) -> i64 {
    let ahead = i128::from(stamp.wall_ms()) - i128::from(now_ms);
    i64::try_from(ahead).unwrap_or(if ahead < 0 { i64::MIN } else { i64::MAX })
}
