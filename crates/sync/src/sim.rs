//! A deterministic network simulator for [`DataSyncEngine`]s.
//!
//! N replicas on in-memory stores, a virtual clock, and links that lose,
//! duplicate, delay and reorder messages, with partitions that cut the
//! network in two and later heal. Everything random comes from one seed, so
//! a failing seed replays exactly. [`run`] writes operations on random
//! replicas while the faults are active, then heals the network, lets it
//! quiesce and checks that every replica holds the same state, the same
//! version vector and every operation written anywhere, and that no honest
//! replica's clock went further past its wall clock than the drift bound.
//!
//! With [`SimConfig::store_faults`], each replica's store also fails some of
//! its commits (see [`FaultyStore`]): the run then checks that every write a
//! replica acknowledged is on every replica, that no operation is applied
//! twice, and that the replicas converge once the faults stop.

use crate::error::error_chain;
use crate::{DataSyncEngine, SyncConfig};
use pluresdb_core::{
    codec, ForwardingStore, Hlc, MemoryStore, Node, NodeRecord, OpId, OpSigner, OpVerifier, OperationType, OperationWithMetadata,
    StorageFault, Store, WriteBatch, CLOCK_META_KEY,
};
use serde_json::json;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

/// The virtual time the simulation starts at (ms since the Unix epoch).
pub const EPOCH_MS: u64 = 1_700_000_000_000;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seeds every random choice.
    pub seed: u64,
    /// Number of replicas.
    pub replicas: usize,
    /// Write attempts spread over the replicas (deletes of absent nodes
    /// fail and are not counted as writes).
    pub writes: usize,
    /// Distinct node ids written to (fewer means more conflicts).
    pub nodes: usize,
    /// Virtual time over which writes happen, while faults are active.
    pub write_span_ms: u64,
    /// Fraction of messages dropped while faults are active.
    pub loss: f64,
    /// Fraction of messages delivered twice.
    pub duplicate: f64,
    /// Delivery delay range; a range wider than the gap between messages
    /// reorders them.
    pub delay_ms: (u64, u64),
    /// Partitions during the write span.
    pub partitions: usize,
    /// Connect every pair of replicas (`true`) or a random sparse graph in
    /// which some replicas reach others only through relays (`false`).
    pub full_mesh: bool,
    /// Largest clock skew between replicas, either way.
    pub max_skew_ms: u64,
    /// Replicas whose clocks start at a timestamp far ahead of every wall
    /// clock, as from a store restored with a clock reading from the future
    /// (the reading counts as observed, so the clock keeps stamping after
    /// it), or a member that stamps its writes years ahead or at
    /// `u64::MAX` on purpose: `(replica, timestamp)`. Their operations are
    /// stored and synced like any other but take effect nowhere, not even
    /// on their own replica, before the wall clocks reach them.
    pub clocks_ahead: Vec<(usize, Hlc)>,
    /// The engines' settings.
    pub sync: SyncConfig,
    /// Keys to sign and verify operations with: for replica `i`, its peer
    /// id and signer, and one verifier for all. Without them, replicas are
    /// named `replica-i` and operations are not signed.
    pub keys: Option<SimKeys>,
    /// Origins that wrote before the simulation starts (up to 3 operations
    /// each, unsigned; only without `keys`): each replica starts with a
    /// random prefix of each one's log. More than
    /// `MAX_VECTOR_ENTRIES` makes every round travel in several ranges.
    pub extra_origins: usize,
    /// Store faults to inject, if any (not with `extra_origins`, whose
    /// preloading expects every commit to succeed).
    pub store_faults: Option<StoreFaults>,
}

/// Which commits of each replica's store fail (chosen by the seed).
#[derive(Clone, Copy, Debug)]
pub struct StoreFaults {
    /// Faults per replica.
    pub per_replica: usize,
    /// Each falls on a commit numbered from 1 to this (a replica that
    /// commits fewer meets fewer faults).
    pub within_commits: u64,
    /// Attempts to recover that fail after each fault: 0 to this many (the
    /// cause lasting a while, as a full disk does until space is freed).
    pub max_failed_recoveries: u32,
}

/// Where in a commit a [`FaultyStore`] fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultPoint {
    /// Writing the batch (a full disk): nothing of it is stored.
    Write,
    /// The fsync after the commit record was written: the batch is stored,
    /// yet the commit reports an I/O error.
    Fsync,
    /// Writing the commit record: nothing of it is stored.
    Commit,
}

/// A store that fails the commits its plan names, then refuses every
/// commit (as redb does after an I/O error) until [`Store::recover`] has
/// succeeded, which it does after the planned number of failed attempts.
/// Reads always work.
#[derive(Clone, Debug, Default)]
pub struct FaultyStore {
    inner: MemoryStore,
    /// The author whose operations count as local writes.
    owner: String,
    /// Planned faults, by commit number, in order.
    plan: std::collections::VecDeque<(u64, FaultPoint, u32)>,
    commits: u64,
    /// The fault in effect and the recoveries still to fail.
    latched: Option<(FaultPoint, u32)>,
    /// Faults injected.
    pub injected: u64,
    /// Local operations stored by a commit that reported an error (the
    /// writer was not told they were written).
    pub unacknowledged_stored: u64,
}

impl FaultyStore {
    /// A store that never fails.
    pub fn new(owner: impl Into<String>) -> Self {
        Self { owner: owner.into(), ..Self::default() }
    }

    /// Plans faults: `(commit number, where, failed recoveries after it)`.
    pub fn with_plan(mut self, mut plan: Vec<(u64, FaultPoint, u32)>) -> Self {
        plan.sort_by_key(|&(n, _, _)| n);
        self.plan = plan.into();
        self
    }

    fn fault(point: FaultPoint) -> pluresdb_core::Error {
        match point {
            FaultPoint::Write => pluresdb_core::Error::store_fault(
                StorageFault::DiskFull,
                std::io::Error::new(std::io::ErrorKind::StorageFull, "simulated: no space left on device"),
            ),
            FaultPoint::Fsync => pluresdb_core::Error::store_fault(StorageFault::Io, std::io::Error::other("simulated: fsync failed")),
            FaultPoint::Commit => {
                pluresdb_core::Error::store_fault(StorageFault::Io, std::io::Error::other("simulated: writing the commit record failed"))
            }
        }
    }
}

/// Reads go to the memory store; commits fail as planned.
impl ForwardingStore for FaultyStore {
    type Inner = MemoryStore;

    fn inner(&self) -> &MemoryStore {
        &self.inner
    }

    fn inner_mut(&mut self) -> &mut MemoryStore {
        &mut self.inner
    }

    fn forward_commit(&mut self, batch: &WriteBatch) -> Result<(), pluresdb_core::Error> {
        if let Some((point, _)) = self.latched {
            return Err(Self::fault(point));
        }
        self.commits += 1;
        let Some(&(_, point, failed_recoveries)) = self.plan.front().filter(|&&(n, _, _)| n == self.commits) else {
            return self.inner.commit(batch);
        };
        self.plan.pop_front();
        self.injected += 1;
        self.latched = Some((point, failed_recoveries));
        if point == FaultPoint::Fsync {
            self.inner.commit(batch)?;
            self.unacknowledged_stored += batch.ops.iter().filter(|(id, _)| *id.origin == *self.owner).count() as u64;
        }
        Err(Self::fault(point))
    }

    fn forward_recover(&mut self) -> Result<(), pluresdb_core::Error> {
        match &mut self.latched {
            Some((point, remaining)) if *remaining > 0 => {
                *remaining -= 1;
                Err(Self::fault(*point))
            }
            _ => {
                self.latched = None;
                Ok(())
            }
        }
    }
}

/// For replica `i`: its peer id and the signer of its operations.
pub type IdentityOf = dyn Fn(usize) -> (String, std::sync::Arc<dyn OpSigner>) + Send + Sync;

/// Per-replica identities for a signed simulation.
#[derive(Clone)]
pub struct SimKeys {
    /// For replica `i`: its peer id and the signer of its operations.
    pub identity: std::sync::Arc<IdentityOf>,
    /// Checks every operation a replica receives.
    pub verifier: std::sync::Arc<dyn OpVerifier>,
}

impl std::fmt::Debug for SimKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimKeys")
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            replicas: 5,
            writes: 1_000,
            nodes: 40,
            write_span_ms: 20_000,
            loss: 0.1,
            duplicate: 0.05,
            delay_ms: (1, 40),
            partitions: 2,
            full_mesh: false,
            max_skew_ms: 5_000,
            clocks_ahead: Vec::new(),
            keys: None,
            extra_origins: 0,
            store_faults: None,
            sync: SyncConfig {
                enable_auto_sync: true,
                sync_interval: Duration::from_millis(1_000),
                max_batch_size: 256,
                enable_conflict_resolution: true,
                sync_timeout: Duration::from_millis(3_000),
                max_clock_drift: pluresdb_core::DEFAULT_MAX_CLOCK_DRIFT,
                ack_delay: Duration::ZERO,
            },
        }
    }
}

/// What a converged run looked like.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimReport {
    /// Operations written (accepted by their replica).
    pub ops_written: u64,
    /// Messages sent, dropped and duplicated by the network.
    pub messages_sent: u64,
    pub messages_dropped: u64,
    pub messages_duplicated: u64,
    /// Bytes carried.
    pub bytes_sent: u64,
    /// Virtual milliseconds from the heal until every replica agreed.
    pub convergence_ms: u64,
    /// Store faults injected, and recoveries.
    pub store_faults: u64,
    pub store_recoveries: u64,
    /// Local writes refused because their store could not write.
    pub writes_refused: u64,
    /// Operations from peers not stored while a store could not write
    /// (asked for again after its recovery).
    pub ops_not_stored: u64,
    /// Local writes stored by a commit that reported an error.
    pub unacknowledged_stored: u64,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum Divergence {
    /// Replicas still disagree long after the network healed.
    #[error("seed {seed}: replicas did not converge within {waited_ms} ms after the heal: {detail}")]
    NoConvergence { seed: u64, waited_ms: u64, detail: String },
    /// A replica refused input that a correct peer sent, or failed.
    #[error("seed {seed}: replica {replica} failed: {detail}")]
    ReplicaError { seed: u64, replica: usize, detail: String },
}

/// SplitMix64: small, fast, and good enough for choosing faults.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < p
    }
}

struct Partition {
    start: u64,
    end: u64,
    /// Bit i set: replica i is on side A.
    side: u64,
    /// Whether the engines are told (a closed connection) or the link just
    /// goes silent.
    announced: bool,
}

struct Delivery {
    from: usize,
    to: usize,
    bytes: Vec<u8>,
}

/// Runs one simulation.
pub fn run(config: &SimConfig) -> Result<SimReport, Divergence> {
    run_replicas(config).map(|(report, _)| report)
}

/// Runs one simulation and hands back the converged replicas, for checks
/// beyond convergence.
pub fn run_replicas(config: &SimConfig) -> Result<(SimReport, Vec<DataSyncEngine<FaultyStore>>), Divergence> {
    Sim::new(config).run()
}

struct Sim<'a> {
    config: &'a SimConfig,
    rng: Rng,
    engines: Vec<DataSyncEngine<FaultyStore>>,
    names: Vec<String>,
    skew: Vec<i64>,
    links: Vec<Vec<bool>>,
    partitions: Vec<Partition>,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    in_flight: BTreeMap<u64, Delivery>,
    next_msg: u64,
    now: u64,
    heal_at: u64,
    report: SimReport,
    /// Operations of `extra_origins` that some replica held at the start.
    preloaded: u64,
    /// Every local write a replica acknowledged.
    acknowledged: Vec<OpId>,
}

impl<'a> Sim<'a> {
    fn new(config: &'a SimConfig) -> Self {
        let mut rng = Rng::new(config.seed);
        let n = config.replicas;
        let identities: Vec<Option<(String, std::sync::Arc<dyn OpSigner>)>> =
            (0..n).map(|i| config.keys.as_ref().map(|keys| (keys.identity)(i))).collect();
        let names: Vec<String> = identities
            .iter()
            .enumerate()
            .map(|(i, id)| id.as_ref().map_or_else(|| format!("replica-{i}"), |(name, _)| name.clone()))
            .collect();
        let mut engines: Vec<DataSyncEngine<FaultyStore>> = (0..n)
            .map(|i| {
                let mut store = FaultyStore::new(names[i].clone());
                if let Some((_, last)) = config.clocks_ahead.iter().find(|(replica, _)| *replica == i) {
                    let clock = vec![(CLOCK_META_KEY.to_owned(), codec::encode(last))];
                    if let Err(err) = store.commit(&WriteBatch { meta: clock, ..WriteBatch::default() }) {
                        unreachable!("a memory store commits: {err}");
                    }
                }
                if let Some(faults) = &config.store_faults {
                    let plan = (0..faults.per_replica)
                        .map(|_| {
                            let at = 1 + rng.below(faults.within_commits);
                            let point = [FaultPoint::Write, FaultPoint::Fsync, FaultPoint::Commit][rng.below(3) as usize];
                            (at, point, rng.below(u64::from(faults.max_failed_recoveries) + 1) as u32)
                        })
                        .collect();
                    store = store.with_plan(plan);
                }
                let mut db = match pluresdb_core::Database::open(store, names[i].clone()) {
                    Ok(db) => db,
                    Err(err) => unreachable!("a memory store opens: {err}"),
                };
                if let (Some((_, signer)), Some(keys)) = (&identities[i], &config.keys) {
                    db = db.with_signer(signer.clone()).with_verifier(keys.verifier.clone());
                }
                match DataSyncEngine::with_database(config.sync.clone(), db) {
                    Ok(engine) => engine,
                    Err(err) => unreachable!("a fresh memory store has no sync state: {err}"),
                }
            })
            .collect();
        let mut preloaded = 0;
        if config.keys.is_none() {
            for o in 0..config.extra_origins {
                let origin = format!("writer-{o:06}");
                let log: Vec<OperationWithMetadata> = (1..=3u64)
                    .map(|seq| {
                        let mut op = OperationWithMetadata::new(
                            OperationType::CreateNode,
                            format!("{origin}:{seq}"),
                            json!({"seq": seq}),
                            origin.as_str(),
                        );
                        op.id.seq = seq;
                        op.timestamp = pluresdb_core::Hlc::new(EPOCH_MS - 1_000, seq as u16);
                        op
                    })
                    .collect();
                let mut longest = 0;
                for engine in &mut engines {
                    let held = rng.below(4) as usize;
                    longest = longest.max(held);
                    if held > 0 {
                        if let Err(err) = engine.write(log[..held].to_vec(), EPOCH_MS) {
                            unreachable!("an origin's log applies in order: {err}");
                        }
                    }
                }
                preloaded += longest as u64;
            }
        }
        let skew = (0..n).map(|_| rng.below(2 * config.max_skew_ms + 1) as i64 - config.max_skew_ms as i64).collect();
        // A random connected graph: a random spanning tree plus extra edges,
        // or every pair.
        let mut links = vec![vec![config.full_mesh; n]; n];
        let mut link = |a: usize, b: usize| {
            links[a][b] = true;
            links[b][a] = true;
        };
        for i in 1..n {
            let j = rng.below(i as u64) as usize;
            link(i, j);
        }
        for i in 0..n {
            for j in 0..i {
                if rng.chance(0.2) {
                    link(i, j);
                }
            }
        }
        for (i, row) in links.iter_mut().enumerate() {
            row[i] = false;
        }
        let start = EPOCH_MS;
        let heal_at = start + config.write_span_ms;
        let partitions = (0..config.partitions)
            .map(|_| {
                let a = start + rng.below(config.write_span_ms);
                let b = start + rng.below(config.write_span_ms);
                let side = rng.below(1 << n.min(63));
                Partition { start: a.min(b), end: a.max(b), side, announced: rng.chance(0.5) }
            })
            .collect();
        Sim {
            config,
            rng,
            engines,
            names,
            skew,
            links,
            partitions,
            queue: BinaryHeap::new(),
            in_flight: BTreeMap::new(),
            next_msg: 0,
            now: start,
            heal_at,
            report: SimReport::default(),
            preloaded,
            acknowledged: Vec::new(),
        }
    }

    fn local_time(&self, replica: usize) -> u64 {
        self.now.saturating_add_signed(self.skew[replica])
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Whether the link between `a` and `b` carries traffic now.
    fn link_up(&self, a: usize, b: usize) -> bool {
        self.links[a][b] && !self.partitions.iter().any(|p| self.now >= p.start && self.now < p.end && separates(p.side, a, b))
    }

    fn faulty(&self) -> bool {
        self.now < self.heal_at
    }

    fn fail(&self, replica: usize, detail: String) -> Divergence {
        Divergence::ReplicaError { seed: self.config.seed, replica, detail }
    }

    /// Moves what `replica` wants to send into the network.
    fn flush(&mut self, replica: usize) -> Result<(), Divergence> {
        while let Some(t) = self.engines[replica].poll_transmit() {
            let Some(to) = self.index_of(&t.peer) else {
                return Err(self.fail(replica, format!("sent to unknown peer {}", t.peer)));
            };
            self.report.messages_sent += 1;
            self.report.bytes_sent += t.bytes.len() as u64;
            if !self.link_up(replica, to) || (self.faulty() && self.rng.chance(self.config.loss)) {
                self.report.messages_dropped += 1;
                continue;
            }
            let copies = if self.faulty() && self.rng.chance(self.config.duplicate) { 2 } else { 1 };
            self.report.messages_duplicated += copies - 1;
            for _ in 0..copies {
                let (lo, hi) = self.config.delay_ms;
                let at = self.now + lo + self.rng.below(hi.saturating_sub(lo) + 1);
                let id = self.next_msg;
                self.next_msg += 1;
                self.queue.push(Reverse((at, id)));
                self.in_flight.insert(id, Delivery { from: replica, to, bytes: t.bytes.clone() });
            }
        }
        Ok(())
    }

    fn connect_all(&mut self) -> Result<(), Divergence> {
        for a in 0..self.engines.len() {
            for b in 0..self.engines.len() {
                if self.links[a][b] {
                    let now = self.local_time(a);
                    let peer = self.names[b].clone();
                    self.engines[a].peer_connected(&peer, now);
                }
            }
            self.flush(a)?;
        }
        Ok(())
    }

    /// Tells the engines about announced partitions starting or ending.
    fn partition_events(&mut self, from: u64, to: u64) -> Result<(), Divergence> {
        let mut events = Vec::new();
        for p in &self.partitions {
            if p.announced && p.start > from && p.start <= to {
                events.push((p.side, false));
            }
            if p.announced && p.end > from && p.end <= to {
                events.push((p.side, true));
            }
        }
        for (side, up) in events {
            for a in 0..self.engines.len() {
                for b in 0..self.engines.len() {
                    if self.links[a][b] && separates(side, a, b) {
                        let peer = self.names[b].clone();
                        if up {
                            let now = self.local_time(a);
                            self.engines[a].peer_connected(&peer, now);
                        } else {
                            self.engines[a].peer_disconnected(&peer);
                        }
                    }
                }
                self.flush(a)?;
            }
        }
        Ok(())
    }

    fn write(&mut self, replica: usize) -> Result<(), Divergence> {
        let node = format!("node:{}", self.rng.below(self.config.nodes as u64));
        let field = ["a", "b", "c", "d"][self.rng.below(4) as usize];
        let value = self.rng.below(1_000);
        let roll = self.rng.below(100);
        let (kind, data) = match roll {
            0..=14 => (OperationType::DeleteNode, serde_json::Value::Null),
            15..=39 => (OperationType::CreateNode, json!({ field: value, "by": replica })),
            _ => (OperationType::UpdateNode, json!({ field: value })),
        };
        if kind == OperationType::DeleteNode && !matches!(self.engines[replica].database().get(&node), Ok(Some(_))) {
            return Ok(());
        }
        let op = OperationWithMetadata::new(kind, node, data, self.names[replica].clone());
        let now = self.local_time(replica);
        match self.engines[replica].write(vec![op], now) {
            Ok(receipts) => self.acknowledged.extend(receipts.into_iter().map(|r| r.id)),
            // A store that cannot write refuses the write: not acknowledged.
            Err(err) if err.storage_fault().is_some() => {
                self.report.writes_refused += 1;
                return self.flush(replica);
            }
            Err(err) => return Err(self.fail(replica, error_chain(&err))),
        }
        self.report.ops_written += 1;
        self.flush(replica)
    }

    fn next_timer(&self) -> Option<(u64, usize)> {
        (0..self.engines.len())
            .filter_map(|i| self.engines[i].poll_timeout().map(|t| (t.saturating_add_signed(-self.skew[i]).max(self.now), i)))
            .min()
    }

    fn run(mut self) -> Result<(SimReport, Vec<DataSyncEngine<FaultyStore>>), Divergence> {
        let start = self.now;
        for (i, engine) in self.engines.iter_mut().enumerate() {
            engine.start(start.saturating_add_signed(self.skew[i]));
        }
        self.connect_all()?;

        let mut writes: Vec<(u64, usize)> = (0..self.config.writes)
            .map(|_| (start + self.rng.below(self.config.write_span_ms), self.rng.below(self.config.replicas as u64) as usize))
            .collect();
        writes.sort_unstable();
        let mut writes = writes.into_iter().peekable();

        let interval = self.config.sync.sync_interval.as_millis() as u64;
        let timeout = self.config.sync.sync_timeout.as_millis() as u64;
        // After the heal: enough for a timed-out round's longest backoff and a
        // few clean rounds.
        // Store faults may come after the heal too: each may take its failed
        // recoveries at the longest backoff.
        let store_faults = self
            .config
            .store_faults
            .map_or(0, |f| (f.per_replica as u64) * (u64::from(f.max_failed_recoveries) + 1) * crate::MAX_RETRY_MS + 4 * timeout);
        let deadline = self.heal_at + 40 * interval + 4 * timeout + store_faults;
        let mut next_check = self.heal_at;

        loop {
            let next_write = writes.peek().map(|&(t, _)| t);
            let next_delivery = self.queue.peek().map(|Reverse((t, _))| *t);
            let next_timer = self.next_timer();
            let candidates = [next_write, next_delivery, next_timer.map(|(t, _)| t), Some(next_check)];
            let Some(next) = candidates.into_iter().flatten().min() else { break };
            if next > deadline {
                break;
            }
            let previous = self.now;
            self.now = next.max(self.now);
            self.partition_events(previous, self.now)?;

            if next_write == Some(next) {
                if let Some((_, replica)) = writes.next() {
                    self.write(replica)?;
                }
            } else if next_delivery == Some(next) {
                let Some(Reverse((_, id))) = self.queue.pop() else { continue };
                let Some(delivery) = self.in_flight.remove(&id) else { continue };
                if !self.link_up(delivery.from, delivery.to) {
                    self.report.messages_dropped += 1;
                    continue;
                }
                let from = self.names[delivery.from].clone();
                let now = self.local_time(delivery.to);
                // Every other message is decoded and checked ahead, as a
                // node does off its writer; the rest by the engine itself.
                let engine = &mut self.engines[delivery.to];
                let handled = if id % 2 == 0 {
                    let verifier = engine.database().verifier();
                    engine.handle_inbound(&from, crate::Inbound::prepare(&from, &delivery.bytes, verifier.as_deref()), now)
                } else {
                    engine.handle_input(&from, &delivery.bytes, now)
                };
                handled.map_err(|e| self.fail(delivery.to, error_chain(&e)))?;
                self.flush(delivery.to)?;
            } else if next_timer.map(|(t, _)| t) == Some(next) {
                if let Some((_, i)) = next_timer {
                    let now = self.local_time(i);
                    self.engines[i].handle_timeout(now);
                    self.flush(i)?;
                }
            } else {
                next_check = self.now + interval;
                if self.now >= self.heal_at && writes.peek().is_none() && self.queue.is_empty() && self.disagreement().is_none() {
                    self.report.convergence_ms = self.now - self.heal_at;
                    return self.verify();
                }
            }
        }
        Err(Divergence::NoConvergence {
            seed: self.config.seed,
            waited_ms: deadline - self.heal_at,
            detail: self.disagreement().unwrap_or_else(|| "messages still in flight".into()),
        })
    }

    /// A description of how the replicas differ, if they do.
    fn disagreement(&self) -> Option<String> {
        if let Some(i) = self.engines.iter().position(|e| e.store_status().degraded) {
            return Some(format!("replica-{i}'s store has not recovered yet: {:?}", self.engines[i].store_status()));
        }
        let first = self.engines[0].database().version_vector();
        for (i, engine) in self.engines.iter().enumerate().skip(1) {
            if engine.database().version_vector() != first {
                return Some(format!(
                    "version vectors differ: replica-0 {:?} vs replica-{i} {:?}",
                    first,
                    engine.database().version_vector()
                ));
            }
        }
        None
    }

    fn verify(self) -> Result<(SimReport, Vec<DataSyncEngine<FaultyStore>>), Divergence> {
        let fail = |detail: String| Divergence::NoConvergence { seed: self.config.seed, waited_ms: self.report.convergence_ms, detail };
        let snapshot = |i: usize| -> Result<(Vec<NodeRecord>, Vec<Option<Node>>), Divergence> {
            let records = self.engines[i].database().store().scan_nodes("", None, usize::MAX).map_err(|e| fail(e.to_string()))?;
            let views = records.iter().map(|r| self.engines[i].database().get(&r.id).ok().flatten()).collect();
            Ok((records, views))
        };
        let reference = snapshot(0)?;
        for i in 1..self.engines.len() {
            if snapshot(i)? != reference {
                return Err(fail(format!("replica-{i} holds different records than replica-0")));
            }
        }
        let held = self.engines[0].database().version_vector().total();
        // Writes whose commit reported an error after storing them are held
        // though not acknowledged.
        let unacknowledged: u64 = self.engines.iter().map(|e| e.database().store().unacknowledged_stored).sum();
        if held != self.report.ops_written + self.preloaded + unacknowledged {
            return Err(fail(format!(
                "{} operations written, {} preloaded and {unacknowledged} stored unacknowledged, but {held} held",
                self.report.ops_written, self.preloaded
            )));
        }
        // Every acknowledged write is on every replica (they agree).
        let found = self.engines[0].database().store().ops(&self.acknowledged).map_err(|e| fail(e.to_string()))?;
        if let Some(lost) = found.iter().position(Option::is_none) {
            return Err(fail(format!("acknowledged write {} is lost", self.acknowledged[lost])));
        }
        // No operation applied twice: each origin's log holds sequence
        // numbers 1 to its version-vector entry, each once.
        for (i, engine) in self.engines.iter().enumerate() {
            let db = engine.database();
            for (origin, seq) in db.version_vector().iter() {
                let log = db.ops_after(origin, 0, usize::MAX).map_err(|e| fail(e.to_string()))?;
                if log.len() as u64 != seq || log.iter().enumerate().any(|(k, op)| op.id.seq != k as u64 + 1) {
                    return Err(fail(format!("replica-{i} holds {} operations of {origin} for version {seq}", log.len())));
                }
            }
            let status = engine.store_status();
            if status.degraded {
                return Err(fail(format!("replica-{i}'s store is still degraded: {:?}", status.reason)));
            }
        }
        let mut report = self.report.clone();
        for engine in &self.engines {
            let status = engine.store_status();
            report.store_faults += engine.database().store().injected;
            report.store_recoveries += status.recoveries;
            report.ops_not_stored += status.ops_not_stored;
        }
        report.unacknowledged_stored = unacknowledged;
        // A received timestamp moves no clock further than the drift bound
        // past its wall clock (replicas started ahead are not honest).
        let drift = self.config.sync.max_clock_drift.as_millis() as u64;
        for (i, engine) in self.engines.iter().enumerate() {
            let wall = self.local_time(i);
            let clock = engine.database().clock();
            let honest = !self.config.clocks_ahead.iter().any(|(replica, _)| *replica == i);
            if honest && clock.wall_ms() > wall.saturating_add(drift) {
                return Err(fail(format!("replica-{i}'s clock moved to {clock}, past its wall time {wall} + {drift} ms")));
            }
        }
        Ok((report, self.engines))
    }
}

fn separates(side: u64, a: usize, b: usize) -> bool {
    ((side >> a) & 1) != ((side >> b) & 1)
}
