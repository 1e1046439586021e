//! [`DataSyncEngine`]: the sync state machine of one replica.

use crate::config::SyncConfig;
use crate::error::{error_chain, SyncError};
use crate::inbound::{Decoded, Inbound};
use crate::message::{OriginRange, SyncMessage, BATCH_BYTE_BUDGET, MAX_BATCH_BYTES, MAX_PLAUSIBLE_SEQ, MAX_VECTOR_ENTRIES};
use crate::status::{ForkEvent, ForkStatus, PeerSyncStatus, SyncStatus, Traffic};
use crate::store_health::{StoreEvent, StoreHealth, StoreStatus};
use pluresdb_core::codec;
use pluresdb_core::{
    Database, EncodedOps, Fork, ForkOutcome, KeepAll, MemoryStore, OpId, OperationWithMetadata, Receipt, ReceivedOp, SignatureCheck, Store,
    VersionVector, SIGN_EVERY,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// The metadata key under which the engine keeps, per peer, what the peer
/// has acknowledged: its pending queue survives a restart as "everything
/// after this".
const ACKED_META_KEY: &str = "sync.acked";

/// How often acknowledgements are written to the store at most (they only
/// save resends after a restart, so they need not be written every time).
const ACK_FLUSH_INTERVAL_MS: u64 = 1_000;

/// How many batches may await acknowledgement per peer: more keeps the
/// link busy, fewer bounds what a slow peer makes the sender hold.
const WINDOW_BATCHES: usize = 4;

/// The longest backoff after failed rounds, as a multiple of `sync_interval`.
const MAX_BACKOFF_FACTOR: u64 = 32;

/// How far below a chain that did not join the first probe asks from; each
/// further probe of the same origin and peer asks from twice as far.
const FIRST_PROBE_DEPTH: u64 = 16;

/// How long this replica's own writes that lost a fork wait for its chain
/// to catch up with what peers hold of it before they are written again
/// anyway.
pub const REAUTHOR_WAIT_MS: u64 = 10_000;

/// Forks reported by [`DataSyncEngine::poll_fork`] kept until taken.
const MAX_FORK_EVENTS: usize = 64;

/// Encoded bytes to send to a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The peer to send to.
    pub peer: String,
    /// One encoded [`SyncMessage`].
    pub bytes: Vec<u8>,
}

#[derive(Clone, Debug)]
struct Round {
    id: u64,
    /// When the round began or last made progress (data arrived); a round
    /// stalls, and times out, only when nothing arrives.
    progress_ms: u64,
    /// What the peer held when it began answering (from its `SyncDone`),
    /// of the origins the round covered.
    target: Option<(VersionVector, OriginRange)>,
}

#[derive(Clone, Debug, Default)]
struct PeerState {
    connected: bool,
    /// What the peer holds durably (acknowledged, or announced by it), for
    /// the origins this replica holds (claims about others are dropped, so
    /// a peer cannot grow it; it is written to the store clamped to what
    /// this replica holds).
    acked: VersionVector,
    /// What has been sent to the peer (at least `acked`).
    sent: VersionVector,
    /// When the oldest unacknowledged batch was sent or last made progress.
    in_flight_since_ms: Option<u64>,
    /// A round the peer asked for that is still being answered: its id,
    /// what this replica held of the origins it covers, and those origins.
    serving: Option<(u64, VersionVector, OriginRange)>,
    /// A round this engine asked for.
    round: Option<Round>,
    /// Where the next round's request starts: after this origin (`None`:
    /// from the first). A replica that holds more than
    /// `MAX_VECTOR_ENTRIES` origins describes them over several rounds.
    cursor: Option<String>,
    next_round_ms: u64,
    failures: u32,
    last_sync_ms: Option<u64>,
    traffic: Traffic,
    last_error: Option<String>,
    /// Per origin, the sequence number that requests to this peer claim to
    /// hold instead of the real one (and how far below the chain that did
    /// not join it is), so the peer sends its operations from there: its
    /// chain left this replica's somewhere before what it sent.
    probes: BTreeMap<String, (u64, u64)>,
    /// How many of this replica's own operations the peer last said it
    /// holds.
    holds_own: u64,
    /// A claim of `holds_own` that was waited for in vain (see
    /// [`DataSyncEngine::stop_waiting_for_own_chain`]): ignored until the
    /// peer claims more.
    holds_own_ignored: u64,
    /// Applied batches of the peer not acknowledged yet (see
    /// `SyncConfig::ack_delay`).
    unacked: Unacked,
}

/// What a peer sent and this replica applied without acknowledging it yet:
/// the batches' origins, how many operations they held, and when the
/// acknowledgement is due.
#[derive(Clone, Debug, Default)]
struct Unacked {
    origins: BTreeSet<Arc<str>>,
    ops: u64,
    due_ms: Option<u64>,
}

/// The sync engine of one replica: decides what to send to which peer and
/// applies what peers send, without touching a socket or a clock.
///
/// A driver (a network engine, or the simulator in [`crate::sim`]) feeds it
/// connection events ([`peer_connected`](Self::peer_connected),
/// [`peer_disconnected`](Self::peer_disconnected)), received bytes
/// ([`handle_input`](Self::handle_input)) and time
/// ([`handle_timeout`](Self::handle_timeout) when
/// [`poll_timeout`](Self::poll_timeout) says so), and sends what
/// [`poll_transmit`](Self::poll_transmit) returns. Time is milliseconds since
/// the Unix epoch; it also stamps local writes.
///
/// The protocol is described in `docs/protocol.md`. In short: peers
/// exchange version vectors and send each other only the operations the
/// other lacks, per origin in sequence, in batches of at most
/// `max_batch_size`; each applied batch is acknowledged after it is durable;
/// what a peer has not acknowledged is resent after a reconnect, a restart
/// or `sync_timeout` without progress.
///
/// # Poll contract
///
/// What a driver calls, and when (`pluresdb_net::SyncPort` is the one loop
/// the node and `SyncDriver` run):
///
/// 1. [`start`](Self::start) once, when the replica is to sync. Before it,
///    connections and messages are still taken in (received operations
///    are applied), but it starts no round and pushes or relays nothing.
/// 2. [`peer_connected`](Self::peer_connected) when a link to a peer is up
///    (admitted), before any of its messages;
///    [`handle_input`](Self::handle_input) for each message from it, in the
///    order its link delivered them; [`peer_disconnected`](Self::peer_disconnected)
///    when the link is gone, after its last message (the next
///    `peer_connected` starts a fresh session). [`write`](Self::write) for
///    local writes.
/// 3. After each of those calls, take every [`poll_transmit`](Self::poll_transmit)
///    and send it to its peer, then read [`poll_timeout`](Self::poll_timeout)
///    again (any input may move it) and call
///    [`handle_timeout`](Self::handle_timeout) once that time has come.
///    Calling `handle_timeout` early is harmless (it does only what is due).
/// 4. Before the replica stops, [`flush_acked`](Self::flush_acked), so what
///    peers acknowledged survives the restart without resending
///    (`handle_timeout` writes it at most every second otherwise).
///    [`poll_fork`](Self::poll_fork) reports settled forks, for a driver
///    that logs them.
///
/// `now_ms` is the wall clock in milliseconds since the Unix epoch, passed
/// by the caller; time that goes backwards counts as no time.
///
/// What it guarantees in return:
///
/// - It never reads a clock, a socket or a thread; its only I/O is its
///   [`Store`], so it runs the same in the simulator, a node and a browser.
/// - An acknowledgement is queued only after what it acknowledges is
///   durable (one store commit per received batch); a refused message
///   (`Err` from `handle_input`) is about its peer only, changes nothing
///   stored, and leaves the engine usable.
/// - Sending is best effort for the driver: a transmit it could not send
///   (a full queue, a peer gone) may be dropped. Whatever a peer has not
///   acknowledged is sent again after `sync_timeout`, on reconnect, or
///   after a restart; rounds that stall are retried with backoff.
/// - Per peer, at most `4 x max_batch_size` operations await acknowledgement
///   (the window), so each call queues a bounded number of transmits; they
///   are only bounded over time if the driver takes them after each call.
/// - A store that fails at its medium (a full disk, an I/O error) is
///   recovered by the engine itself, with backoff, from
///   `handle_timeout`; meanwhile local writes are refused and nothing
///   received is applied or acknowledged, and after it every connected
///   peer is asked again for what this replica lacks (see
///   `docs/protocol.md`, "Storage faults").
/// - `DataSync` messages to one peer must arrive in the order they were
///   queued (a transport keeps them on one ordered stream); other messages
///   may overtake them.
pub struct DataSyncEngine<S: Store = MemoryStore> {
    config: SyncConfig,
    db: Database<S>,
    active: bool,
    now_ms: u64,
    peers: BTreeMap<String, PeerState>,
    outbox: VecDeque<Transmit>,
    next_round_id: u64,
    acked_dirty: bool,
    last_flush_ms: u64,
    /// Per origin, the forks settled.
    forks: BTreeMap<String, ForkStatus>,
    /// Forks settled and not yet taken by [`poll_fork`](Self::poll_fork).
    fork_events: VecDeque<ForkEvent>,
    /// This replica's own operations that lost a fork, to write again under
    /// its id, and since when they wait.
    reauthor: Vec<OperationWithMetadata>,
    reauthor_since_ms: u64,
    /// Whether the store can write, and the recovery of one that cannot.
    store: StoreHealth,
}

impl DataSyncEngine<MemoryStore> {
    /// An engine over an in-memory replica, as in the seed. Its peer id is
    /// taken from the first local operation given to
    /// [`add_operations`](Self::add_operations); use
    /// [`with_database`](Self::with_database) for a durable replica with a
    /// known id.
    pub fn new(config: SyncConfig) -> Self {
        let db = match Database::open(MemoryStore::new(), "") {
            Ok(db) => db,
            Err(err) => unreachable!("an empty memory store always opens: {err}"),
        };
        Self::from_parts(config, db, BTreeMap::new())
    }
}

impl<S: Store> DataSyncEngine<S> {
    /// An engine over `db`. Restores what each known peer had acknowledged,
    /// so operations it had not are resent.
    pub fn with_database(config: SyncConfig, db: Database<S>) -> Result<Self, SyncError> {
        let acked: BTreeMap<String, VersionVector> = match db.store().meta(ACKED_META_KEY).map_err(SyncError::Storage)? {
            Some(bytes) => codec::decode(&bytes, "acknowledged version vectors").map_err(SyncError::Storage)?,
            None => BTreeMap::new(),
        };
        // Written by an older version, the record may name origins this
        // replica never held (claimed by a peer) or claims beyond what it
        // holds: keep only what it could have sent.
        let held = db.version_vector();
        let acked = acked.into_iter().map(|(peer, vv)| (peer, vv.clamped_to(held))).collect();
        Ok(Self::from_parts(config, db, acked))
    }

    fn from_parts(mut config: SyncConfig, db: Database<S>, acked: BTreeMap<String, VersionVector>) -> Self {
        // A batch must be able to reach a signed operation (see
        // `pluresdb_core::signing`).
        config.max_batch_size = config.max_batch_size.max(SIGN_EVERY as usize);
        // The database's own resolver stays (last-writer-wins unless its
        // owner chose another): the changes the engine reports must show
        // nodes as the database's readers do.
        let db = if config.enable_conflict_resolution { db } else { db.with_resolver(Arc::new(KeepAll)) };
        let peers =
            acked.into_iter().map(|(peer, acked)| (peer, PeerState { sent: acked.clone(), acked, ..PeerState::default() })).collect();
        let max_clock_drift = config.max_clock_drift;
        Self {
            config,
            db: db.with_max_clock_drift(max_clock_drift),
            active: false,
            now_ms: 0,
            peers,
            outbox: VecDeque::new(),
            next_round_id: 1,
            acked_dirty: false,
            store: StoreHealth::default(),
            last_flush_ms: 0,
            forks: BTreeMap::new(),
            fork_events: VecDeque::new(),
            reauthor: Vec::new(),
            reauthor_since_ms: 0,
        }
    }

    /// The replica.
    pub fn database(&self) -> &Database<S> {
        &self.db
    }

    /// The replica, for what the engine does not do itself (metadata of
    /// layers above, subscriptions). Writes of operations belong in
    /// [`write`](Self::write), which also pushes them to peers.
    pub fn database_mut(&mut self) -> &mut Database<S> {
        &mut self.db
    }

    /// This replica's peer id (empty until an engine made with
    /// [`DataSyncEngine::new`] has seen its first local operation).
    pub fn peer_id(&self) -> &str {
        self.db.peer_id()
    }

    /// The settings.
    pub fn config(&self) -> &SyncConfig {
        &self.config
    }

    /// Closes the engine, writing what peers acknowledged, and hands back
    /// the replica.
    pub fn into_database(mut self) -> Result<Database<S>, SyncError> {
        self.flush_acked()?;
        Ok(self.db)
    }

    // ---- the seed's API -------------------------------------------------

    /// Starts syncing: connected peers get a sync round at once, then one
    /// every `sync_interval` (with `enable_auto_sync`), and local writes are
    /// pushed as they happen.
    pub async fn start_sync(&mut self) -> Result<(), SyncError> {
        self.start(self.now_ms);
        Ok(())
    }

    /// Stops syncing and writes what peers acknowledged.
    pub async fn stop_sync(&mut self) -> Result<(), SyncError> {
        self.active = false;
        self.flush_acked()
    }

    /// Adds operations: unstamped ones (made with
    /// [`OperationWithMetadata::new`]) are committed as local writes, stamped
    /// ones are applied as received from elsewhere. Then pushes them to the
    /// connected peers. Uses the engine's latest time.
    pub async fn add_operations(&mut self, operations: Vec<OperationWithMetadata>) -> Result<(), SyncError> {
        self.write(operations, self.now_ms).map(|_| ())
    }

    /// Starts a sync round with `peer_id` now.
    pub async fn sync_with_peer(&mut self, peer_id: &str) -> Result<(), SyncError> {
        let now = self.now_ms;
        match self.peers.get(peer_id) {
            Some(p) if p.connected => {
                self.start_round(peer_id, now);
                Ok(())
            }
            _ => Err(SyncError::NotConnected(peer_id.to_owned())),
        }
    }

    /// The engine's state: activity, pending operations, per-peer figures.
    pub async fn get_sync_status(&self) -> Result<SyncStatus, SyncError> {
        Ok(self.status())
    }

    // ---- the sans-IO interface -----------------------------------------

    /// Starts syncing at time `now_ms` (see [`start_sync`](Self::start_sync)).
    pub fn start(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        self.active = true;
        let connected: Vec<String> = self.peers.iter().filter(|(_, p)| p.connected).map(|(id, _)| id.clone()).collect();
        for peer in connected {
            self.start_round(&peer, now_ms);
        }
    }

    /// Whether the engine is started.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Commits local writes (unstamped operations) or applies operations
    /// from elsewhere (stamped ones), then pushes them to connected peers.
    /// Returns the id and timestamp of each.
    pub fn write(&mut self, operations: Vec<OperationWithMetadata>, now_ms: u64) -> Result<Vec<Receipt>, SyncError> {
        let written = self.write_unpushed(operations, now_ms)?;
        self.push(now_ms);
        Ok(written)
    }

    /// [`write`](Self::write) without the push: the caller answers its
    /// writers as soon as their writes are durable, then calls
    /// [`push`](Self::push), so that no answer waits while messages to
    /// peers are read and encoded. Until then nothing of it is queued for
    /// peers (it goes with the next push, or the next sync round).
    pub fn write_unpushed(&mut self, operations: Vec<OperationWithMetadata>, now_ms: u64) -> Result<Vec<Receipt>, SyncError> {
        self.now_ms = self.now_ms.max(now_ms);
        // A batch of one kind (an import, a group of local writes) is kept
        // as it is: partitioning moved every operation into a new vector
        // (~230 bytes each, 3% of a node's CPU importing 5,000 a request).
        let (local, stamped): (Vec<_>, Vec<_>) = if operations.iter().all(|op| !op.is_stamped()) {
            (operations, Vec::new())
        } else if operations.iter().all(OperationWithMetadata::is_stamped) {
            (Vec::new(), operations)
        } else {
            operations.into_iter().partition(|op| !op.is_stamped())
        };
        if self.db.peer_id().is_empty() {
            if let Some(first) = local.first() {
                self.db.set_peer_id(first.id.origin.clone()).map_err(SyncError::LocalWrite)?;
            }
        }
        if let Some((fault, reason)) = self.store.fault() {
            let err = SyncError::StoreUnavailable { fault, reason: reason.to_owned() };
            self.store.count_refused_writes((local.len() + stamped.len()) as u64);
            return Err(err);
        }
        let mut written = Vec::new();
        if !stamped.is_empty() {
            written.extend(stamped.iter().map(|op| Receipt { id: op.id.clone(), timestamp: op.timestamp }));
            let applied = self.db.apply_remote(stamped, now_ms);
            self.note_store(applied.as_ref().err(), now_ms);
            applied.map_err(SyncError::LocalWrite)?;
        }
        if !local.is_empty() {
            let committed = self.db.commit_local(local, now_ms);
            self.note_store(committed.as_ref().err(), now_ms);
            written.extend(committed.map_err(SyncError::LocalWrite)?);
        }
        Ok(written)
    }

    /// Queues for each connected peer what it lacks (up to its window):
    /// after [`write_unpushed`](Self::write_unpushed).
    pub fn push(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        if self.active {
            self.pump_all(now_ms);
        }
    }

    /// A connection to `peer` is up: a sync round starts (when active).
    pub fn peer_connected(&mut self, peer: &str, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let state = self.peers.entry(peer.to_owned()).or_default();
        state.connected = true;
        state.sent = state.acked.clone();
        state.in_flight_since_ms = None;
        state.serving = None;
        state.round = None;
        state.cursor = None;
        state.probes.clear();
        state.unacked = Unacked::default();
        state.next_round_ms = now_ms;
        if self.active {
            self.start_round(peer, now_ms);
        }
    }

    /// The connection to `peer` is gone: whatever it did not acknowledge
    /// will be resent when it is back.
    pub fn peer_disconnected(&mut self, peer: &str) {
        if let Some(state) = self.peers.get_mut(peer) {
            state.connected = false;
            state.sent = state.acked.clone();
            state.in_flight_since_ms = None;
            state.serving = None;
            state.round = None;
            // The peer resends what it was not told of on the next
            // connection.
            state.unacked = Unacked::default();
        }
        self.outbox.retain(|t| t.peer != peer);
    }

    /// Handles bytes received from `peer` at `now_ms`. A refused message is
    /// reported as an error for that peer (and counted in its status); the
    /// engine stays usable and nothing stored changes.
    pub fn handle_input(&mut self, peer: &str, bytes: &[u8], now_ms: u64) -> Result<(), SyncError> {
        self.handle_inbound(peer, Inbound::unchecked(peer, bytes), now_ms)
    }

    /// [`handle_input`](Self::handle_input) for a message decoded and
    /// checked ahead ([`Inbound::prepare`], with this replica's verifier),
    /// typically on another thread while this one applied the previous.
    pub fn handle_inbound(&mut self, peer: &str, inbound: Inbound, now_ms: u64) -> Result<(), SyncError> {
        self.now_ms = self.now_ms.max(now_ms);
        let result = self.handle_message(peer, inbound, now_ms);
        self.count_error(peer, result)
    }

    /// Counts `result`'s error, if any, against `peer` (and keeps it as the
    /// peer's last), and returns it.
    fn count_error(&mut self, peer: &str, result: Result<(), SyncError>) -> Result<(), SyncError> {
        if let Err(err) = &result {
            let state = self.peers.entry(peer.to_owned()).or_default();
            state.traffic.errors += 1;
            state.last_error = Some(error_chain(err));
        }
        result
    }

    fn handle_message(&mut self, peer: &str, inbound: Inbound, now_ms: u64) -> Result<(), SyncError> {
        self.peers.entry(peer.to_owned()).or_default().traffic.bytes_received += inbound.size() as u64;
        let Decoded { message, received } = inbound.decoded?;
        if message.from_peer() != peer {
            return Err(SyncError::WrongSender { peer: peer.to_owned(), claimed: message.from_peer().to_owned() });
        }
        check_plausible(peer, message.version_vector())?;
        match message {
            SyncMessage::SyncRequest { round, version_vector, origins, .. } => {
                self.on_request(peer, round, version_vector, origins, now_ms)
            }
            SyncMessage::DataSync { version_vector, .. } => self.on_data(peer, received, version_vector, now_ms)?,
            SyncMessage::SyncDone { round, version_vector, origins, .. } => {
                let state = self.peer_mut(peer);
                if let Some(r) = state.round.as_mut().filter(|r| r.id == round) {
                    r.target = Some((version_vector, origins));
                }
                self.check_round(peer, now_ms);
            }
            SyncMessage::SyncAck { version_vector, .. } => {
                self.learn_peer_holds(peer, &version_vector, now_ms);
                self.pump(peer, now_ms);
            }
            SyncMessage::ChainHeads { version_vector, heads, .. } => self.on_heads(peer, &version_vector, &heads, now_ms)?,
        }
        self.reauthor_when_caught_up(now_ms);
        Ok(())
    }

    /// Compares the peer's newest operation of each origin with this
    /// replica's where both hold as many: a difference is a fork that no
    /// operation sent has shown, so the peer is asked for its operations
    /// from before it.
    fn on_heads(&mut self, peer: &str, theirs: &VersionVector, heads: &BTreeMap<String, u64>, now_ms: u64) -> Result<(), SyncError> {
        let own = self.db.peer_id().to_owned();
        self.peer_mut(peer).holds_own = theirs.get(&own);
        let mut differ = Vec::new();
        for (origin, &tag) in heads.iter().take(MAX_VECTOR_ENTRIES) {
            let seq = theirs.get(origin);
            if seq == 0 || self.db.version_vector().get(origin) != seq {
                continue;
            }
            let ours = self.db.digest_at(origin, seq).map_err(SyncError::Storage)?;
            if ours.map(|d| head_tag(&d)) != Some(tag) {
                differ.push((origin.clone(), seq + 1));
            }
        }
        if !differ.is_empty() {
            for (origin, below) in differ {
                self.probe(peer, &origin, below);
            }
            self.start_round(peer, now_ms);
        }
        Ok(())
    }

    /// Asks `peer` for `origin`'s operations from further below `below`
    /// (see [`PeerState::probes`]).
    fn probe(&mut self, peer: &str, origin: &str, below: u64) {
        let state = self.peer_mut(peer);
        let depth = match state.probes.get(origin) {
            Some(&(claim, depth)) if claim < below => depth.saturating_mul(2),
            _ => FIRST_PROBE_DEPTH,
        };
        state.probes.insert(origin.to_owned(), (below.saturating_sub(depth), depth));
    }

    /// Records a settled fork: the status, an event for the driver, and
    /// what must be sent: this replica's branch to the peer that holds the
    /// losing one, or the winning branch to every peer after this replica
    /// switched to it. This replica's own writes that lost wait to be
    /// written again.
    fn settle_fork(&mut self, peer: &str, fork: Fork, now_ms: u64) {
        let origin = fork.origin.to_string();
        let own = origin == self.db.peer_id();
        let status = self.forks.entry(origin.clone()).or_insert_with(|| ForkStatus {
            origin: origin.clone(),
            count: 0,
            last_seq: 0,
            last_peer: String::new(),
            last_ms: 0,
        });
        status.count += 1;
        status.last_seq = fork.seq;
        status.last_peer = peer.to_owned();
        status.last_ms = now_ms;
        for state in self.peers.values_mut() {
            state.probes.remove(&origin);
        }
        let (kept, dropped) = match fork.outcome {
            ForkOutcome::Kept => {
                rewind(self.peer_mut(peer), &origin, fork.seq - 1);
                (true, 0)
            }
            ForkOutcome::Replaced { dropped } => {
                for state in self.peers.values_mut() {
                    rewind(state, &origin, fork.seq - 1);
                }
                let count = dropped.len();
                if own {
                    if self.reauthor.is_empty() {
                        self.reauthor_since_ms = now_ms;
                    }
                    self.reauthor.extend(dropped);
                }
                (false, count)
            }
        };
        self.acked_dirty = true;
        if self.fork_events.len() == MAX_FORK_EVENTS {
            self.fork_events.pop_front();
        }
        self.fork_events.push_back(ForkEvent { origin, seq: fork.seq, peer: peer.to_owned(), kept, dropped, own });
    }

    /// Whether a connected peer holds more of this replica's own operations
    /// than it does: it was restored from an older copy, or another
    /// instance writes with its key. Its next writes would reuse sequence
    /// numbers, so a driver holds local writes back while this is true (for
    /// a bounded time): meanwhile the peers send the missing operations.
    pub fn own_chain_behind(&self) -> bool {
        let held = self.db.version_vector().get(self.db.peer_id());
        self.peers.values().any(|p| p.connected && p.holds_own > held && p.holds_own > p.holds_own_ignored)
    }

    /// Stops counting the current claims of peers to hold more of this
    /// replica's own operations (a driver calls this when it waited for them
    /// in vain): a peer that claims more than it sends, by mistake or to
    /// hold this replica's writes back, delays them once, not every time.
    pub fn stop_waiting_for_own_chain(&mut self) {
        for state in self.peers.values_mut() {
            state.holds_own_ignored = state.holds_own_ignored.max(state.holds_own);
        }
    }

    /// The next fork settled since the last call, for the driver to report.
    pub fn poll_fork(&mut self) -> Option<ForkEvent> {
        self.fork_events.pop_front()
    }

    /// Writes again, under this replica's id, its own writes that lost a
    /// fork, once its chain has caught up with its peers' (or after
    /// [`REAUTHOR_WAIT_MS`]), so no acknowledged write is lost.
    fn reauthor_when_caught_up(&mut self, now_ms: u64) {
        if self.reauthor.is_empty()
            || self.store.is_degraded()
            || (self.own_chain_behind() && now_ms < self.reauthor_since_ms + REAUTHOR_WAIT_MS)
        {
            return;
        }
        let own = self.db.peer_id().to_owned();
        let ops: Vec<OperationWithMetadata> = std::mem::take(&mut self.reauthor)
            .into_iter()
            .map(|op| OperationWithMetadata::new(op.operation, op.node_id, op.data, own.as_str()))
            .collect();
        if let Err(err) = self.db.commit_local(ops.clone(), now_ms) {
            self.store.note_error(&err, now_ms);
            // Kept to try again at the next event.
            let text = error_chain(&err);
            self.reauthor = ops;
            for state in self.peers.values_mut() {
                state.last_error = Some(format!("cannot write again the writes that lost a fork: {text}"));
            }
            return;
        }
        if self.active {
            self.pump_all(now_ms);
        }
    }

    fn on_request(&mut self, peer: &str, round: u64, theirs: VersionVector, origins: OriginRange, now_ms: u64) {
        let ours = self.db.version_vector();
        let they_have_more = !ours.dominates(&theirs);
        // The round covers the requested origins, or the first
        // MAX_VECTOR_ENTRIES of them this replica holds (the requester asks
        // for the rest next).
        let (target, through) = ours.page(origins.after.as_deref(), origins.through.as_deref(), MAX_VECTOR_ENTRIES);
        let covered = OriginRange { after: origins.after, through };
        let own = self.db.peer_id().to_owned();
        let covers_own = covered.after.as_deref().is_none_or(|after| own.as_str() > after)
            && covered.through.as_deref().is_none_or(|through| own.as_str() <= through);
        // The request says what the peer holds now of the origins it covers,
        // also where that is less than it acknowledged before: it was
        // restored from an older copy, dropped the losing branch of a fork,
        // or asks for a chain from further back to find where it forked.
        let mut acked = std::mem::take(&mut self.peer_mut(peer).acked);
        for (origin, held) in target.iter() {
            acked.set(origin, theirs.get(origin).min(held));
        }
        let state = self.peer_mut(peer);
        if covers_own {
            state.holds_own = theirs.get(&own);
        }
        state.acked = acked;
        // Anything sent beyond what the peer reports is lost or still in
        // flight; send it again rather than wait.
        state.sent = state.acked.clone();
        state.in_flight_since_ms = None;
        state.serving = Some((round, target, covered));
        let idle = state.round.is_none();
        self.acked_dirty = true;
        self.pump(peer, now_ms);
        if they_have_more && idle {
            self.start_round(peer, now_ms);
        }
    }

    fn on_data(&mut self, peer: &str, operations: Vec<ReceivedOp>, theirs: VersionVector, now_ms: u64) -> Result<(), SyncError> {
        if operations.len() > self.config.max_batch_size {
            return Err(SyncError::BatchTooLarge { peer: peer.to_owned(), size: operations.len(), limit: self.config.max_batch_size });
        }
        self.apply_data(peer, operations, theirs, now_ms)
    }

    /// [`handle_inbound`](Self::handle_inbound) for messages that came one
    /// after another from `peer`: batches of operations that can be applied
    /// together are applied in one durable commit and acknowledged once,
    /// which spares the store a commit (and its sync) per batch. They can
    /// when each is a `DataSync` from `peer` of at most `max_batch_size`
    /// operations that the check ahead ([`Inbound::prepare`]) found valid,
    /// with every signature verified, and each origin's operations link up
    /// (consecutive sequence numbers, each naming the digest of the one
    /// before) across all of them: then nothing in one can make the replica
    /// refuse the others, and applying them together keeps what applying
    /// them one by one would. Otherwise each is handled on its own, in
    /// order; the first error is returned (each is counted as
    /// `handle_inbound` counts it).
    pub fn handle_inbounds(&mut self, peer: &str, inbounds: Vec<Inbound>, now_ms: u64) -> Result<(), SyncError> {
        if inbounds.len() < 2 || !self.can_apply_together(peer, &inbounds) {
            let mut first_error = Ok(());
            for inbound in inbounds {
                let result = self.handle_inbound(peer, inbound, now_ms);
                if first_error.is_ok() {
                    first_error = result;
                }
            }
            return first_error;
        }
        self.now_ms = self.now_ms.max(now_ms);
        let result = self.handle_data_together(peer, inbounds, now_ms);
        self.count_error(peer, result)
    }

    /// [`handle_message`](Self::handle_message) for batches of operations
    /// that [`can_apply_together`](Self::can_apply_together).
    fn handle_data_together(&mut self, peer: &str, inbounds: Vec<Inbound>, now_ms: u64) -> Result<(), SyncError> {
        let mut operations = Vec::new();
        let mut theirs = VersionVector::new();
        for inbound in inbounds {
            self.peers.entry(peer.to_owned()).or_default().traffic.bytes_received += inbound.size() as u64;
            if let Ok(Decoded { message: SyncMessage::DataSync { version_vector, .. }, received }) = inbound.decoded {
                theirs.merge(&version_vector);
                if operations.is_empty() {
                    operations = received;
                } else {
                    operations.extend(received);
                }
            }
        }
        self.apply_data(peer, operations, theirs, now_ms)?;
        self.reauthor_when_caught_up(now_ms);
        Ok(())
    }

    /// Whether `inbounds` from `peer` can be applied in one commit (see
    /// [`handle_inbounds`](Self::handle_inbounds)).
    fn can_apply_together(&self, peer: &str, inbounds: &[Inbound]) -> bool {
        // The newest operation of each origin so far: its seq and digest.
        let mut last: Vec<(Arc<str>, u64, pluresdb_core::OpDigest)> = Vec::new();
        for inbound in inbounds {
            let Ok(Decoded { message: SyncMessage::DataSync { from_peer, version_vector, .. }, received }) = &inbound.decoded else {
                return false;
            };
            if from_peer != peer || received.len() > self.config.max_batch_size || check_plausible(peer, version_vector).is_err() {
                return false;
            }
            for op in received {
                let checked = matches!(op.signature_check(), SignatureCheck::Valid | SignatureCheck::Unsigned);
                if !op.is_valid() || !checked {
                    return false;
                }
                let id = &op.op.id;
                match last.iter_mut().find(|(origin, ..)| Arc::ptr_eq(origin, &id.origin) || *origin == id.origin) {
                    Some((_, seq, digest)) => {
                        if id.seq != *seq + 1 || op.op.prev != *digest {
                            return false;
                        }
                        *seq = id.seq;
                        *digest = op.digest();
                    }
                    None => last.push((id.origin.clone(), id.seq, op.digest())),
                }
            }
        }
        true
    }

    /// Applies a batch of operations from `peer` (see `on_data`).
    fn apply_data(&mut self, peer: &str, operations: Vec<ReceivedOp>, theirs: VersionVector, now_ms: u64) -> Result<(), SyncError> {
        let received = operations.len() as u64;
        if self.store.is_degraded() {
            // Nothing is stored, so nothing is acknowledged: the sender stops
            // at its window and resends; the recovery asks for it all again.
            self.store.count_not_stored(received);
            self.peer_mut(peer).traffic.ops_received += received;
            return Ok(());
        }
        // Keep, per origin, the run of consecutive operations that reaches
        // what this replica holds (those it holds too: the replica compares
        // them with its own, which is how a fork shows); stop an origin at
        // its first gap. Kept in place: a batch is usually kept whole.
        // `next` ends up naming every origin of the batch.
        let mut next: BTreeMap<Arc<str>, u64> = BTreeMap::new();
        let mut gap = false;
        let mut applicable = operations;
        let held = self.db.version_vector();
        applicable.retain(|received| {
            let id = &received.op.id;
            match next.get_mut(&id.origin) {
                Some(expected) if id.seq == *expected => {
                    *expected += 1;
                    true
                }
                Some(expected) => {
                    gap |= id.seq > *expected;
                    false
                }
                None if id.seq <= held.get(&id.origin) + 1 => {
                    next.insert(id.origin.clone(), id.seq + 1);
                    true
                }
                None => {
                    // Ops of this origin after the gap are dropped too.
                    next.insert(id.origin.clone(), u64::MAX);
                    gap = true;
                    false
                }
            }
        });
        let mut forks = Vec::new();
        let mut refused = false;
        if !applicable.is_empty() {
            let report = match self.db.apply_received(applicable, now_ms) {
                Ok(report) => report,
                Err(err) if err.storage_fault().is_some() => {
                    // Not the peer's fault: the batch is asked for again once
                    // the store recovers (see `store_health`).
                    self.note_store(Some(&err), now_ms);
                    self.store.count_not_stored(received);
                    self.peer_mut(peer).traffic.ops_received += received;
                    return Ok(());
                }
                Err(err @ pluresdb_core::Error::Storage(_)) => return Err(SyncError::Storage(err)),
                Err(source) => return Err(SyncError::InvalidOperation { peer: peer.to_owned(), source }),
            };
            // Operations not yet authenticated by a signed successor: ask
            // again from what is held, like a gap.
            gap |= report.held_back > 0;
            // Origins that joined the held chain need no probe any more.
            let state = self.peer_mut(peer);
            state.probes.retain(|origin, _| !next.contains_key(origin.as_str()));
            refused = !report.refused.is_empty();
            for refusal in &report.refused {
                let err = SyncError::InvalidOperation { peer: peer.to_owned(), source: refusal.to_error() };
                self.record_error(peer, &err);
            }
            for (origin, below) in &report.unjoined {
                self.probe(peer, origin, *below);
                gap = true;
            }
            forks = report.forks;
        }
        {
            let state = self.peer_mut(peer);
            state.traffic.ops_received += received;
            if let Some(round) = state.round.as_mut() {
                round.progress_ms = now_ms;
            }
        }
        self.learn_peer_holds(peer, &theirs, now_ms);
        // After learning what the peer holds: settling may move that back.
        let forks_settled = !forks.is_empty();
        for fork in forks {
            self.settle_fork(peer, fork, now_ms);
        }
        // Applied batches are durable now: acknowledge what this replica
        // holds of the batch's origins (duplicates too, so a lost
        // acknowledgement is repaired by the resend), at once or, for a
        // small batch that went as expected, within `ack_delay` together
        // with those that follow it.
        let delay = self.config.ack_delay.as_millis() as u64;
        let quarter = (self.config.max_batch_size / 4).max(1) as u64;
        let state = self.peer_mut(peer);
        state.unacked.origins.extend(next.into_keys());
        state.unacked.ops += received;
        let unusual = gap || forks_settled || refused;
        if delay == 0 || unusual || state.unacked.ops >= quarter {
            self.send_acks(peer);
        } else if state.unacked.due_ms.is_none() {
            state.unacked.due_ms = Some(now_ms.saturating_add(delay));
        }
        if gap {
            // Ask for what is missing instead of applying out of order.
            self.start_round(peer, now_ms);
        }
        self.check_round(peer, now_ms);
        // Relay: what was just applied may be news to other peers.
        if self.active {
            self.pump_all(now_ms);
        }
        Ok(())
    }

    /// Acknowledges to `peer` what this replica holds of the origins of its
    /// batches applied since the last acknowledgement, in messages of at
    /// most `MAX_VECTOR_ENTRIES` origins.
    fn send_acks(&mut self, peer: &str) {
        let Some(state) = self.peers.get_mut(peer) else { return };
        let unacked = std::mem::take(&mut state.unacked);
        let holds = self.db.version_vector();
        let acked: Vec<(String, u64)> =
            unacked.origins.iter().map(|origin| (origin.to_string(), holds.get(origin))).filter(|&(_, seq)| seq > 0).collect();
        let from_peer = self.db.peer_id().to_owned();
        for chunk in acked.chunks(MAX_VECTOR_ENTRIES) {
            let ack = SyncMessage::SyncAck { from_peer: from_peer.clone(), version_vector: chunk.iter().cloned().collect() };
            self.send(peer, &ack);
        }
    }

    /// `peer` holds at least `theirs` durably.
    fn learn_peer_holds(&mut self, peer: &str, theirs: &VersionVector, now_ms: u64) {
        let own = theirs.get(self.db.peer_id());
        let state = self.peer_mut(peer);
        state.holds_own = state.holds_own.max(own);
        // Only origins this replica holds are kept (see `PeerState::acked`).
        let theirs = {
            let mut known = VersionVector::new();
            known.merge_known(theirs, self.db.version_vector());
            known
        };
        let state = self.peer_mut(peer);
        if state.acked.dominates(&theirs) {
            return;
        }
        state.acked.merge(&theirs);
        state.sent.merge(&theirs);
        state.in_flight_since_ms = if state.acked.dominates(&state.sent) { None } else { Some(now_ms) };
        self.acked_dirty = true;
    }

    fn start_round(&mut self, peer: &str, now_ms: u64) {
        let id = self.next_round_id;
        self.next_round_id += 1;
        let cursor = self.peer_mut(peer).cursor.clone();
        let (held, through) = self.db.version_vector().page(cursor.as_deref(), None, MAX_VECTOR_ENTRIES);
        let state = self.peer_mut(peer);
        state.round = Some(Round { id, progress_ms: now_ms, target: None });
        let mut version_vector = held.clone();
        for (origin, &(claim, _)) in &state.probes {
            if claim < version_vector.get(origin) {
                version_vector.set(origin, claim);
            }
        }
        let request = SyncMessage::SyncRequest {
            from_peer: self.db.peer_id().to_owned(),
            round: id,
            version_vector,
            origins: OriginRange { after: cursor, through },
        };
        self.send(peer, &request);
        // The newest operation of each origin of the page, so that equal
        // counts of different operations show (see `on_heads`).
        let mut heads = BTreeMap::new();
        for (origin, seq) in held.iter() {
            match self.db.digest_at(origin, seq) {
                Ok(Some(digest)) => {
                    heads.insert(origin.to_owned(), head_tag(&digest));
                }
                Ok(None) => {}
                Err(err) => {
                    self.record_error(peer, &SyncError::Storage(err));
                    return;
                }
            }
        }
        let heads = SyncMessage::ChainHeads { from_peer: self.db.peer_id().to_owned(), version_vector: held, heads };
        self.send(peer, &heads);
    }

    fn check_round(&mut self, peer: &str, now_ms: u64) {
        let interval = self.config.sync_interval.as_millis() as u64;
        let Some(state) = self.peers.get_mut(peer) else { return };
        let holds = self.db.version_vector();
        let Some(through) = state
            .round
            .as_ref()
            .and_then(|r| r.target.as_ref())
            .filter(|(target, _)| holds.dominates(target))
            .map(|(_, range)| range.through.clone())
        else {
            return;
        };
        state.round = None;
        // The next range starts where this one ended; a range that does not
        // move past where it started ends the pass.
        let advances = through.is_some() && through.as_deref() > state.cursor.as_deref();
        state.cursor = if advances { through } else { None };
        if state.cursor.is_some() {
            // One range done; ask for the next at once.
            self.start_round(peer, now_ms);
            return;
        }
        state.failures = 0;
        state.last_sync_ms = Some(now_ms);
        state.next_round_ms = now_ms + interval;
    }

    /// Sends `peer` what it lacks, up to the window.
    fn pump(&mut self, peer: &str, now_ms: u64) {
        let limit = self.config.max_batch_size.max(1);
        loop {
            let Some(state) = self.peers.get(peer) else { return };
            if !state.connected {
                return;
            }
            let in_flight: u64 = state.sent.iter().map(|(o, s)| s.saturating_sub(state.acked.get(o))).sum();
            if in_flight >= (WINDOW_BATCHES * limit) as u64 {
                return;
            }
            let missing: Vec<(String, u64)> =
                self.db.version_vector().missing_from(&state.sent).map(|(o, after, _)| (o.to_owned(), after)).collect();
            let batch = match self.next_batch(missing, limit) {
                Ok(batch) => batch,
                Err(err) => {
                    self.record_error(peer, &SyncError::Storage(err));
                    return;
                }
            };
            if batch.is_empty() {
                break;
            }
            // What this replica holds of the batch's origins: the receiver
            // need not send those back.
            let holds = self.db.version_vector();
            let mut version_vector = VersionVector::new();
            for (id, _) in batch.iter() {
                if version_vector.len() < MAX_VECTOR_ENTRIES {
                    version_vector.advance(&id.origin, holds.get(&id.origin));
                }
            }
            // The stored bodies go out as they are, never decoded here.
            let bytes = match SyncMessage::encode_stored_data_sync(self.db.peer_id(), &batch, &version_vector) {
                Ok(bytes) => bytes,
                Err(err) => {
                    self.record_error(peer, &SyncError::Storage(err));
                    return;
                }
            };
            let state = self.peer_mut(peer);
            for (id, _) in batch.iter() {
                state.sent.advance(&id.origin, id.seq);
            }
            state.traffic.ops_sent += batch.len() as u64;
            if state.in_flight_since_ms.is_none() {
                state.in_flight_since_ms = Some(now_ms);
            }
            self.send_bytes(peer, bytes);
        }
        // The peer's round is answered once everything it lacked is sent.
        let Some(state) = self.peers.get_mut(peer) else { return };
        if let Some((round, target, origins)) = state.serving.take() {
            if state.sent.dominates(&target) {
                let done = SyncMessage::SyncDone { from_peer: self.db.peer_id().to_owned(), round, version_vector: target, origins };
                self.send(peer, &done);
            } else {
                state.serving = Some((round, target, origins));
            }
        }
    }

    /// The next batch for a peer that lacks, per origin, the operations
    /// after the given sequence numbers: at most `limit` operations, closed
    /// at [`BATCH_BYTE_BUDGET`] encoded bytes, and ending where the
    /// receiver can authenticate everything in it.
    ///
    /// A receiver applies an origin's operations only up to its last signed
    /// one in the batch (or up to the newest it knows is signed: the head
    /// this replica holds is always signed in a signed network). So a full
    /// batch is cut back to its last signed operation or origin head; and a
    /// batch with none of those (a run of unsigned operations larger than
    /// the budget, which only logs written before `SIGN_EVERY_BYTES` have)
    /// is extended to the next one, up to [`MAX_BATCH_BYTES`] and `limit`.
    /// A batch sent without either would be held back by the receiver and
    /// sent again forever.
    fn next_batch(&self, missing: Vec<(String, u64)>, limit: usize) -> Result<EncodedOps, pluresdb_core::Error> {
        let held = self.db.version_vector();
        let is_head = |id: &OpId| id.seq == held.get(&id.origin);
        let signed = |body: &[u8]| OperationWithMetadata::body_is_signed(body) == Some(true);
        let mut batch = EncodedOps::new();
        let mut bytes = 0usize;
        let full = |batch: &EncodedOps, bytes: usize| batch.len() >= limit || bytes >= BATCH_BYTE_BUDGET;
        let mut read = EncodedOps::new();
        for (origin, after) in missing {
            if full(&batch, bytes) {
                break;
            }
            read.truncate(0);
            self.db.op_bodies_after(&origin, after, limit - batch.len(), &mut read)?;
            for (id, body) in read.iter() {
                if full(&batch, bytes) {
                    break;
                }
                bytes += OperationWithMetadata::compact_len_from_body(id, body);
                batch.push_encoded(id, body);
            }
        }
        if !full(&batch, bytes) {
            // Every origin in it ran to this replica's head.
            return Ok(batch);
        }
        // Cut back to the last operation that closes the batch (signed, or
        // its origin's head), found from the end: in a signed network one
        // is a few operations back.
        let last_signed = (0..batch.len()).rev().find(|&i| batch.get(i).is_some_and(|(_, body)| signed(body)));
        if let Some(signed_at) = last_signed {
            let end = (signed_at..batch.len()).rev().find(|&i| batch.get(i).is_some_and(|(id, _)| is_head(id))).unwrap_or(signed_at);
            batch.truncate(end + 1);
            return Ok(batch);
        }
        // No signed operation: an unsigned network (nothing to cut for), or
        // one origin's unsigned run: extend it to its next signed operation.
        let closes = |id: &OpId, body: &[u8]| is_head(id) || signed(body);
        let Some((last, _)) = batch.get(batch.len().wrapping_sub(1)) else { return Ok(batch) };
        let (origin, mut after) = (last.origin.clone(), last.seq);
        while batch.len() < limit && batch.get(batch.len() - 1).is_some_and(|(id, body)| !closes(id, body)) {
            read.truncate(0);
            self.db.op_bodies_after(&origin, after, (limit - batch.len()).min(16), &mut read)?;
            if read.is_empty() {
                break;
            }
            for (id, body) in read.iter() {
                let size = OperationWithMetadata::compact_len_from_body(id, body);
                if bytes + size > MAX_BATCH_BYTES {
                    return Ok(batch);
                }
                bytes += size;
                after = id.seq;
                batch.push_encoded(id, body);
                if closes(id, body) {
                    return Ok(batch);
                }
            }
        }
        Ok(batch)
    }

    fn pump_all(&mut self, now_ms: u64) {
        let connected: Vec<String> = self.peers.iter().filter(|(_, p)| p.connected).map(|(id, _)| id.clone()).collect();
        for peer in connected {
            self.pump(&peer, now_ms);
        }
        // Peers that were up to date were sent the newest commit from the
        // copy the replica kept of it; the rest read the op log.
        self.db.forget_recent_ops();
    }

    /// Runs timers due at `now_ms`: stalled rounds and batches, periodic
    /// anti-entropy, writing acknowledgements, and operations from the
    /// future whose time has come.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        self.recover_store_if_due(now_ms);
        self.apply_due(now_ms);
        let timeout = self.config.sync_timeout.as_millis() as u64;
        let interval = self.config.sync_interval.as_millis() as u64;
        let active = self.active;
        let peers: Vec<String> = self.peers.iter().filter(|(_, p)| p.connected).map(|(id, _)| id.clone()).collect();
        for peer in peers {
            if self.peer_mut(&peer).unacked.due_ms.is_some_and(|due| now_ms >= due) {
                self.send_acks(&peer);
            }
            let state = self.peer_mut(&peer);
            if state.round.as_ref().is_some_and(|r| now_ms >= r.progress_ms + timeout) {
                state.round = None;
                state.failures += 1;
                let backoff = interval.saturating_mul(1 << state.failures.min(5)).min(interval * MAX_BACKOFF_FACTOR);
                state.next_round_ms = now_ms + backoff;
                state.traffic.errors += 1;
                state.last_error = Some(format!("sync round timed out after {timeout} ms; retrying in {backoff} ms"));
            }
            if state.in_flight_since_ms.is_some_and(|since| now_ms >= since + timeout) {
                // No acknowledgement for too long: resend from what it holds.
                state.sent = state.acked.clone();
                state.in_flight_since_ms = None;
                if active {
                    self.pump(&peer, now_ms);
                }
            }
            let auto = self.active && self.config.enable_auto_sync;
            let state = self.peer_mut(&peer);
            if auto && state.round.is_none() && now_ms >= state.next_round_ms {
                state.next_round_ms = now_ms + interval;
                self.start_round(&peer, now_ms);
            }
        }
        self.reauthor_when_caught_up(now_ms);
        if self.acked_dirty && !self.store.is_degraded() && now_ms >= self.last_flush_ms + ACK_FLUSH_INTERVAL_MS {
            self.last_flush_ms = now_ms;
            if let Err(err) = self.flush_acked() {
                if let SyncError::Storage(core) = &err {
                    self.store.note_error(core, now_ms);
                }
                let err_text = error_chain(&err);
                for state in self.peers.values_mut() {
                    state.last_error = Some(err_text.clone());
                }
            }
        }
    }

    /// Merges the deferred operations that are due (stamped beyond the
    /// clock horizon when they arrived; see `pluresdb_core::Database::apply_due`).
    fn apply_due(&mut self, now_ms: u64) {
        while !self.store.is_degraded() && self.db.next_due_ms().is_some_and(|due| due <= now_ms) {
            match self.db.apply_due(now_ms) {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) => {
                    self.store.note_error(&err, now_ms);
                    // Retried at the next timeout; nothing was written.
                    let err_text = error_chain(&SyncError::Storage(err));
                    for state in self.peers.values_mut() {
                        state.last_error = Some(err_text.clone());
                    }
                    break;
                }
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should run next.
    pub fn poll_timeout(&self) -> Option<u64> {
        let timeout = self.config.sync_timeout.as_millis() as u64;
        let mut next: Option<u64> = None;
        let mut consider = |t: u64| next = Some(next.map_or(t, |n| n.min(t)));
        if let Some(attempt) = self.store.next_attempt_ms() {
            consider(attempt);
        }
        if let Some(due) = self.db.next_due_ms().filter(|_| !self.store.is_degraded()) {
            consider(due);
        }
        for state in self.peers.values().filter(|p| p.connected) {
            if let Some(r) = &state.round {
                consider(r.progress_ms + timeout);
            } else if self.active && self.config.enable_auto_sync {
                consider(state.next_round_ms);
            }
            if let Some(since) = state.in_flight_since_ms {
                consider(since + timeout);
            }
            if let Some(due) = state.unacked.due_ms {
                consider(due);
            }
        }
        if self.acked_dirty && !self.store.is_degraded() {
            consider(self.last_flush_ms + ACK_FLUSH_INTERVAL_MS);
        }
        if !self.reauthor.is_empty() {
            consider(self.reauthor_since_ms + REAUTHOR_WAIT_MS);
        }
        next
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }

    /// Whether a message waits to be sent ([`poll_transmit`](Self::poll_transmit)).
    pub fn has_transmits(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Writes what each peer acknowledged to the store.
    pub fn flush_acked(&mut self) -> Result<(), SyncError> {
        if !self.acked_dirty {
            return Ok(());
        }
        if let Some((fault, reason)) = self.store.fault() {
            // Acknowledgements only save resends: they wait for the store.
            return Err(SyncError::StoreUnavailable { fault, reason: reason.to_owned() });
        }
        let acked = self.acked_for_store();
        self.db.commit_meta(vec![(ACKED_META_KEY.to_owned(), acked)]).map_err(SyncError::Storage)?;
        self.acked_dirty = false;
        Ok(())
    }

    /// What each peer acknowledged, encoded for the store.
    fn acked_for_store(&self) -> Vec<u8> {
        // Clamped to what this replica holds: a peer's claims beyond it are
        // kept in memory (they save resends) but never written.
        let held = self.db.version_vector();
        let acked: BTreeMap<&str, VersionVector> = self.peers.iter().map(|(id, p)| (id.as_str(), p.acked.clamped_to(held))).collect();
        codec::encode(&acked)
    }

    /// The engine's state (see [`get_sync_status`](Self::get_sync_status)).
    pub fn status(&self) -> SyncStatus {
        let ours = self.db.version_vector();
        let mut total = Traffic::default();
        let peers: Vec<PeerSyncStatus> = self
            .peers
            .iter()
            .map(|(id, state)| {
                total.add(&state.traffic);
                PeerSyncStatus {
                    peer_id: id.clone(),
                    connected: state.connected,
                    last_sync_ms: state.last_sync_ms,
                    pending_operations: ours.missing_from(&state.acked).map(|(_, after, upto)| upto - after).sum(),
                    traffic: state.traffic,
                    last_error: state.last_error.clone(),
                }
            })
            .collect();
        SyncStatus {
            is_active: self.active,
            pending_operations: peers.iter().map(|p| p.pending_operations).sum(),
            operations_held: ours.total(),
            peers,
            traffic: total,
            clock: self.db.clock_report(self.now_ms),
            forks: self.forks.values().cloned().collect(),
            store: self.store.status(),
        }
    }

    /// The fault, and its error on one line, while the store cannot write:
    /// local writes are then refused with [`SyncError::StoreUnavailable`]
    /// and peers' operations are not applied (nor acknowledged) until the
    /// engine has recovered the store (see [`handle_timeout`](Self::handle_timeout)).
    pub fn store_fault(&self) -> Option<(pluresdb_core::StorageFault, &str)> {
        self.store.fault()
    }

    /// The store's health, as in [`status`](Self::status).
    pub fn store_status(&self) -> StoreStatus {
        self.store.status()
    }

    /// The next store event (a fault, a failed recovery, a recovery), for a
    /// driver that logs them; at most the last 16 are kept.
    pub fn poll_store_event(&mut self) -> Option<StoreEvent> {
        self.store.poll_event()
    }

    /// Notes the error of a store write, if any (see [`StoreHealth`]).
    fn note_store(&mut self, err: Option<&pluresdb_core::Error>, now_ms: u64) {
        if let Some(err) = err {
            self.store.note_error(err, now_ms);
        }
    }

    /// Tries to recover a store that cannot write, when the backoff says
    /// so. On success it asks every connected peer for what this replica
    /// lacks: that covers every batch it could not store (none of which it
    /// acknowledged), and its senders resend from there.
    fn recover_store_if_due(&mut self, now_ms: u64) {
        if !self.store.attempt_due(now_ms) {
            return;
        }
        // A reopened store proves little by itself (redb reopens a file on a
        // dying disk): a small commit, what peers acknowledged, goes through
        // the medium before writes are taken again.
        let result = self.db.recover_store().and_then(|()| {
            let acked = self.acked_for_store();
            self.db.commit_meta(vec![(ACKED_META_KEY.to_owned(), acked)])
        });
        self.store.attempted(result.as_ref().map(|_| ()), now_ms);
        if result.is_err() {
            return;
        }
        self.acked_dirty = false;
        let connected: Vec<String> = self.peers.iter().filter(|(_, p)| p.connected).map(|(id, _)| id.clone()).collect();
        for peer in &connected {
            let state = self.peer_mut(peer);
            state.failures = 0;
            state.round = None;
            state.cursor = None;
            state.next_round_ms = now_ms;
        }
        if self.active {
            for peer in &connected {
                self.start_round(peer, now_ms);
            }
            self.pump_all(now_ms);
        }
    }

    fn send(&mut self, peer: &str, message: &SyncMessage) {
        self.send_bytes(peer, message.encode());
    }

    fn send_bytes(&mut self, peer: &str, bytes: Vec<u8>) {
        self.peer_mut(peer).traffic.bytes_sent += bytes.len() as u64;
        self.outbox.push_back(Transmit { peer: peer.to_owned(), bytes });
    }

    fn record_error(&mut self, peer: &str, err: &SyncError) {
        let state = self.peer_mut(peer);
        state.traffic.errors += 1;
        state.last_error = Some(error_chain(err));
    }

    fn peer_mut(&mut self, peer: &str) -> &mut PeerState {
        if !self.peers.contains_key(peer) {
            self.peers.insert(peer.to_owned(), PeerState::default());
        }
        match self.peers.get_mut(peer) {
            Some(state) => state,
            None => unreachable!("inserted above"),
        }
    }
}

/// Moves what `state` is taken to hold of `origin` back to `seq` at most,
/// so what this replica holds after it is sent again.
fn rewind(state: &mut PeerState, origin: &str, seq: u64) {
    if state.acked.get(origin) > seq {
        state.acked.set(origin, seq);
    }
    if state.sent.get(origin) > seq {
        state.sent.set(origin, seq);
    }
}

/// The first 8 bytes of a digest, as `ChainHeads` carries it.
fn head_tag(digest: &pluresdb_core::OpDigest) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.0[..8]);
    u64::from_be_bytes(first)
}

/// Refuses version vectors with impossible sequence numbers, or with more
/// origins than a message carries.
fn check_plausible(peer: &str, vv: &VersionVector) -> Result<(), SyncError> {
    if vv.len() > MAX_VECTOR_ENTRIES {
        return Err(SyncError::TooManyOrigins { peer: peer.to_owned(), count: vv.len(), limit: MAX_VECTOR_ENTRIES });
    }
    match vv.iter().find(|&(_, seq)| seq > MAX_PLAUSIBLE_SEQ) {
        Some((origin, seq)) => Err(SyncError::AbsurdVersionVector { peer: peer.to_owned(), origin: origin.to_owned(), seq }),
        None => Ok(()),
    }
}
