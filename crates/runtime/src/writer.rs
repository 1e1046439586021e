//! The writer: one thread that owns the replica and commits writes in
//! groups. While a commit is in progress (most of its time is the fsync),
//! new writes queue up; the next commit takes every queued write at once.

use crate::clock::ClockCorrection;
use crate::stats::Stats;
use crate::{now_ms, Error};
use pluresdb_core::{validate_node_id, validate_value, OperationType, OperationWithMetadata, Receipt, Subscription, VersionVector};
use pluresdb_net::{NetworkEngine, PeerManager, SyncPort, SyncWake};
use pluresdb_store_redb::RedbStore;
use pluresdb_sync::{DataSyncEngine, StoreEvent, SyncStatus};
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// What a write does to its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    /// Create the node or replace its whole value.
    Put,
    /// Set the given fields (`null` removes one), creating the node if needed.
    Update,
    /// Delete the node; fails if it does not exist.
    Delete,
}

pub(crate) struct WriteRequest {
    pub kind: WriteKind,
    pub id: String,
    pub value: Value,
    pub reply: oneshot::Sender<Result<Receipt, Error>>,
}

pub(crate) enum Command {
    Write(WriteRequest),
    Import { nodes: Vec<(String, Value)>, reply: oneshot::Sender<Result<usize, Error>> },
    CommitMeta { entries: Vec<(String, Vec<u8>)>, reply: oneshot::Sender<Result<(), Error>> },
    Index { action: crate::indexes::IndexAction, reply: oneshot::Sender<Result<pluresdb_core::IndexDef, Error>> },
    Subscribe { capacity: usize, reply: oneshot::Sender<(Subscription, VersionVector)> },
    SyncStatus { reply: oneshot::Sender<SyncStatus> },
    Shutdown { reply: oneshot::Sender<()> },
}

type Engine = DataSyncEngine<RedbStore>;

pub(crate) fn spawn(
    engine: Engine,
    inbox: mpsc::Receiver<Command>,
    network: Option<crate::Network>,
    stats: Arc<Stats>,
    max_group: usize,
    prepare_off_writer: bool,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let (port, peers) = match network {
        // Peers' messages are decoded and checked on a thread of their own
        // while the writer commits.
        Some(network) if prepare_off_writer => {
            let verifier = engine.database().verifier();
            (SyncPort::preparing(network.engine, network.events, verifier, Some(crate::memory::idle))?, Some(network.peers))
        }
        Some(network) => (SyncPort::new(network.engine, network.events), Some(network.peers)),
        None => (SyncPort::offline(), None),
    };
    std::thread::Builder::new().name("pluresdb-writer".into()).spawn(move || {
        // The writer's own single-threaded runtime: commits block this
        // thread only, never the API's workers.
        let clock = ClockCorrection::new(engine.config().max_clock_drift);
        match tokio::runtime::Builder::new_current_thread().enable_all().on_thread_park(crate::memory::idle).build() {
            Ok(runtime) => runtime.block_on(
                Writer {
                    engine,
                    inbox,
                    port,
                    peers,
                    stats,
                    max_group,
                    carried: None,
                    waiting: None,
                    clock,
                    clock_checked: None,
                    published_store: Default::default(),
                }
                .run(),
            ),
            Err(err) => tracing::error!(%err, "cannot start the writer's runtime"),
        }
    })
}

/// How often the writer compares its wall clock with its peers' at most
/// (they send heartbeats every few seconds).
const CLOCK_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// How long local writes wait while a peer holds more of this node's own
/// operations than it does (it was restored from an older copy): the peers
/// send them back meanwhile, so the node never reuses a sequence number.
/// After this the writes go ahead; a fork they make is settled by the sync
/// engine and no acknowledged write is lost.
pub const OWN_CHAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

struct Writer {
    engine: Engine,
    inbox: mpsc::Receiver<Command>,
    /// The sync engine's network: peer events in, transmits out.
    port: SyncPort<dyn NetworkEngine>,
    /// The network's peers (their clock offsets).
    peers: Option<Arc<PeerManager>>,
    stats: Arc<Stats>,
    max_group: usize,
    /// A command taken from the queue that did not fit the group before it.
    carried: Option<Command>,
    /// A write (or import) held back while a peer holds more of this node's
    /// own chain, and until when at most (see [`OWN_CHAIN_WAIT`]).
    waiting: Option<(Command, tokio::time::Instant)>,
    /// The correction of this node's wall clock, from its peers' clocks.
    clock: ClockCorrection,
    clock_checked: Option<std::time::Instant>,
    /// The store status last published to [`Stats`].
    published_store: pluresdb_sync::StoreStatus,
}

/// Writes that will be committed together.
#[derive(Default)]
struct Group {
    ops: Vec<OperationWithMetadata>,
    replies: Vec<oneshot::Sender<Result<Receipt, Error>>>,
    ids: HashSet<String>,
}

impl Writer {
    async fn run(mut self) {
        tracing::debug!("writer started");
        if self.port.is_online() {
            self.engine.start(now_ms());
        }
        loop {
            self.port.flush(&mut self.engine).await;
            // Answers, acknowledgements and pushes are out: the last
            // commit's redb commit, left off their path, is done now rather
            // than by the next read. If redb fails it, reads fail until the
            // store is reopened (its redo makes the durable batch readable):
            // at once.
            if let Err(err) = self.engine.database().store().publish() {
                tracing::warn!(error = %pluresdb_core::error_chain(&err), "a commit is durable but not readable yet: reopening the store");
                if let Err(err) = self.engine.database_mut().recover_store() {
                    tracing::warn!(error = %pluresdb_core::error_chain(&err), "the store could not be reopened yet");
                }
            }
            self.report_forks();
            self.report_store();
            if let Some((_, until)) = &self.waiting {
                if !self.engine.own_chain_behind() || tokio::time::Instant::now() >= *until {
                    if let Some((command, _)) = self.waiting.take() {
                        if self.engine.own_chain_behind() {
                            tracing::warn!("this node's own operations held by peers did not arrive in time; writing anyway");
                            // Claims that were not followed by the operations
                            // hold later writes back no more.
                            self.engine.stop_waiting_for_own_chain();
                        }
                        if self.handle(command) {
                            return;
                        }
                    }
                    continue;
                }
            }
            // While a write waits, later ones stay queued behind it.
            let carried = if self.waiting.is_some() { None } else { self.carried.take() };
            let command = match carried {
                Some(command) => command,
                None => {
                    let deadline = self.engine.poll_timeout();
                    let waiting_until = self.waiting.as_ref().map(|(_, until)| *until);
                    let read_inbox = self.carried.is_none();
                    tokio::select! {
                        command = self.inbox.recv(), if read_inbox => match command {
                            Some(command) => command,
                            None => break,
                        },
                        wake = self.port.next(deadline) => {
                            self.check_clock();
                            match wake {
                                SyncWake::Event(event) => self.peer_event(event),
                                SyncWake::Timer => self.engine.handle_timeout(now_ms()),
                                SyncWake::Closed => {}
                            }
                            continue;
                        }
                        // The held-back write's time is up: the top of the
                        // loop lets it go.
                        () = tokio::time::sleep_until(waiting_until.unwrap_or_else(tokio::time::Instant::now)), if waiting_until.is_some() => continue,
                    }
                }
            };
            self.check_clock();
            let local_write = matches!(command, Command::Write(_) | Command::Import { .. });
            if local_write && self.waiting.is_some() {
                self.carried = Some(command);
                continue;
            }
            if local_write && self.engine.own_chain_behind() {
                tracing::warn!(
                    wait_s = OWN_CHAIN_WAIT.as_secs(),
                    "a peer holds more of this node's own operations than it does (was its data directory restored from an \
                     older copy?); local writes wait until they are back, so no sequence number is used twice"
                );
                self.waiting = Some((command, tokio::time::Instant::now() + OWN_CHAIN_WAIT));
                continue;
            }
            if self.handle(command) {
                return;
            }
        }
        self.release_waiting();
        self.close();
    }

    /// Carries out one command; `true` once the writer is to stop.
    fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Write(first) => self.write_group(first),
            Command::Import { nodes, reply } => {
                // One origin shared by the batch: an allocation an operation
                // less, and stamps of the batch compare origins by pointer.
                let peer: Arc<str> = self.engine.peer_id().into();
                let ops: Vec<_> = nodes
                    .into_iter()
                    .map(|(id, value)| OperationWithMetadata::new(OperationType::CreateNode, id, value, peer.clone()))
                    .collect();
                let n = ops.len();
                let result = self.commit(ops).map(|_| n);
                let _ = reply.send(result);
                self.engine.push(now_ms());
            }
            Command::CommitMeta { entries, reply } => {
                let result = match self.engine.store_fault() {
                    Some((fault, reason)) => Err(Error::StoreUnavailable { fault, reason: reason.to_owned() }),
                    None => self.engine.database_mut().commit_meta(entries).map_err(Error::Core),
                };
                let _ = reply.send(result);
            }
            Command::Index { action, reply } => {
                let result = match self.engine.store_fault() {
                    Some((fault, reason)) => Err(Error::StoreUnavailable { fault, reason: reason.to_owned() }),
                    None => crate::indexes::apply(self.engine.database_mut(), action).map_err(Error::Core),
                };
                let _ = reply.send(result);
            }
            Command::Subscribe { capacity, reply } => {
                let db = self.engine.database();
                let _ = reply.send((db.subscribe(capacity), db.version_vector().clone()));
            }
            Command::SyncStatus { reply } => {
                let _ = reply.send(self.engine.status());
            }
            Command::Shutdown { reply } => {
                self.release_waiting();
                self.close();
                let _ = reply.send(());
                return true;
            }
        }
        false
    }

    /// Commits a write that waits for this node's own chain, and the one
    /// queued behind it, before the writer stops: they were accepted.
    fn release_waiting(&mut self) {
        for command in [self.waiting.take().map(|(c, _)| c), self.carried.take()].into_iter().flatten() {
            match command {
                Command::Write(first) => self.write_group(first),
                Command::Import { .. } => {
                    self.handle(command);
                }
                _ => {}
            }
        }
    }

    /// Logs the forks the sync engine settled.
    fn report_forks(&mut self) {
        while let Some(fork) = self.engine.poll_fork() {
            tracing::warn!(
                origin = %fork.origin,
                seq = fork.seq,
                peer = %fork.peer,
                kept_this_nodes_branch = fork.kept,
                dropped = fork.dropped,
                "fork: two different operations of one origin under one sequence number (a restored backup or a copied data \
                 directory writing with the same key); every replica keeps the branch whose operation there sorts first"
            );
            if fork.own && !fork.kept {
                tracing::warn!(
                    writes = fork.dropped,
                    "this node's own writes lost the fork: they are written again under its id after the winning branch \
                     (if another copy of this data directory runs, give one of them a new identity)"
                );
            }
        }
    }

    /// Logs what happened to the store (a fault, attempts to recover it, its
    /// recovery) and publishes its state for `/health`, `/status` and
    /// `/metrics`.
    fn report_store(&mut self) {
        while let Some(event) = self.engine.poll_store_event() {
            match event {
                StoreEvent::Faulted { fault, reason, retry_in_ms } => tracing::error!(
                    %fault,
                    error = %reason,
                    retry_in_ms,
                    "the store cannot write: local writes are refused (507/503) and peers' operations are not taken until it \
                     recovers; reads go on; the node reopens the store by itself"
                ),
                // Attempts come every few seconds while the cause lasts: log
                // the 1st, 2nd, 4th, 8th, ... so the log stays bounded.
                StoreEvent::RecoveryFailed { fault, reason, attempts, retry_in_ms } if attempts.is_power_of_two() => {
                    tracing::warn!(%fault, error = %reason, attempts, retry_in_ms, "the store cannot write yet (free disk space?)")
                }
                StoreEvent::RecoveryFailed { .. } => {}
                StoreEvent::Recovered { fault, down_ms, attempts } => tracing::warn!(
                    %fault,
                    down_ms,
                    attempts,
                    "the store writes again: local writes and sync resume, and peers are asked again for what was not stored"
                ),
            }
        }
        let status = self.engine.store_status();
        if status != self.published_store {
            self.stats.set_store_status(status.clone());
            self.published_store = status;
        }
    }

    /// Compares this node's wall clock with its connected peers' (at most
    /// every [`CLOCK_CHECK_INTERVAL`]) and applies the correction, if any,
    /// to the replica: its writes and its judgement of received timestamps
    /// then use corrected time. The engine's timers keep the wall clock.
    fn check_clock(&mut self) {
        let Some(peers) = &self.peers else { return };
        if self.clock_checked.is_some_and(|at| at.elapsed() < CLOCK_CHECK_INTERVAL) {
            return;
        }
        self.clock_checked = Some(std::time::Instant::now());
        if let Some(offset) = self.clock.update(&peers.clock_offsets()) {
            self.engine.database_mut().set_wall_clock_offset(offset);
        }
    }

    /// Applies a peer event, and any queued behind it, to the sync engine.
    fn peer_event(&mut self, first: pluresdb_net::PortEvent) {
        let before = self.engine.database().version_vector().total();
        let started = std::time::Instant::now();
        self.port.apply(&mut self.engine, first);
        let applied = self.engine.database().version_vector().total().saturating_sub(before);
        if applied > 0 {
            Stats::add(&self.stats.remote_ops, applied);
            Stats::add(&self.stats.remote_applies, 1);
            Stats::add(&self.stats.remote_apply_us, micros(started.elapsed()));
        }
    }

    fn close(&mut self) {
        match self.engine.flush_acked() {
            Ok(()) => {}
            // Acknowledgements only save resends after the restart.
            Err(err) if err.storage_fault().is_some() => {
                tracing::warn!(error = %pluresdb_core::error_chain(&err), "what peers acknowledged is not recorded: they resend it")
            }
            Err(err) => tracing::error!(error = %pluresdb_core::error_chain(&err), "cannot record what peers acknowledged"),
        }
        tracing::debug!("writer stopped");
    }

    /// Takes `first` and every write queued behind it (up to `max_group`)
    /// and commits them in one transaction.
    fn write_group(&mut self, first: WriteRequest) {
        let mut group = Group::default();
        self.admit(&mut group, first);
        while group.ops.len() < self.max_group {
            match self.inbox.try_recv() {
                // A delete checks that its node exists, which a write earlier
                // in the same group would change: it waits for the next group.
                Ok(Command::Write(next)) if next.kind == WriteKind::Delete && group.ids.contains(&next.id) => {
                    self.carried = Some(Command::Write(next));
                    break;
                }
                Ok(Command::Write(next)) => self.admit(&mut group, next),
                Ok(other) => {
                    self.carried = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        if group.ops.is_empty() {
            return;
        }
        match self.commit(std::mem::take(&mut group.ops)) {
            Ok(receipts) => {
                for (reply, receipt) in group.replies.into_iter().zip(receipts) {
                    let _ = reply.send(Ok(receipt));
                }
            }
            Err(Error::StoreUnavailable { fault, reason }) => {
                for reply in group.replies {
                    let _ = reply.send(Err(Error::StoreUnavailable { fault, reason: reason.clone() }));
                }
            }
            Err(err) => {
                let text = pluresdb_core::error_chain(&err);
                for reply in group.replies {
                    let _ = reply.send(Err(Error::Core(pluresdb_core::Error::storage(std::io::Error::other(text.clone())))));
                }
            }
        }
        // The callers first: what goes to peers is read and encoded after.
        self.engine.push(now_ms());
    }

    /// Adds a write to the group, or answers it at once if it is invalid.
    fn admit(&self, group: &mut Group, request: WriteRequest) {
        let WriteRequest { kind, id, value, reply } = request;
        let checked = validate_node_id(&id).and_then(|()| match kind {
            WriteKind::Delete => match self.engine.database().get(&id) {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err(pluresdb_core::Error::NotFound { id: id.clone() }),
                Err(err) => Err(err),
            },
            WriteKind::Put | WriteKind::Update => validate_value(&value),
        });
        if let Err(err) = checked {
            let _ = reply.send(Err(Error::Core(err)));
            return;
        }
        let operation = match kind {
            WriteKind::Put => OperationType::CreateNode,
            WriteKind::Update => OperationType::UpdateNode,
            WriteKind::Delete => OperationType::DeleteNode,
        };
        let value = if kind == WriteKind::Delete { Value::Null } else { value };
        group.ids.insert(id.clone());
        group.ops.push(OperationWithMetadata::new(operation, id, value, self.engine.peer_id()));
        group.replies.push(reply);
    }

    /// Commits `ops` in one durable transaction; the caller answers its
    /// writers, then pushes the writes to peers (`DataSyncEngine::push`).
    fn commit(&mut self, ops: Vec<OperationWithMetadata>) -> Result<Vec<Receipt>, Error> {
        let n = ops.len() as u64;
        let started = std::time::Instant::now();
        match self.engine.write_unpushed(ops, now_ms()) {
            Ok(receipts) => {
                Stats::add(&self.stats.commit_us, micros(started.elapsed()));
                Stats::add(&self.stats.commits, 1);
                Stats::add(&self.stats.local_ops, n);
                Ok(receipts)
            }
            Err(pluresdb_sync::SyncError::StoreUnavailable { fault, reason }) => {
                // Refused before writing: the fault was logged when it began.
                tracing::debug!(%fault, writes = n, "write refused: the store cannot write");
                Err(Error::StoreUnavailable { fault, reason })
            }
            Err(err) => {
                Stats::add(&self.stats.failed_commits, 1);
                tracing::error!(error = %pluresdb_core::error_chain(&err), writes = n, "commit failed");
                if let Some(fault) = err.storage_fault() {
                    let reason = match &err {
                        pluresdb_sync::SyncError::LocalWrite(pluresdb_core::Error::StoreFault { source, .. })
                        | pluresdb_sync::SyncError::Storage(pluresdb_core::Error::StoreFault { source, .. }) => {
                            pluresdb_core::error_chain(&**source)
                        }
                        other => pluresdb_core::error_chain(other),
                    };
                    return Err(Error::StoreUnavailable { fault, reason });
                }
                Err(match err {
                    pluresdb_sync::SyncError::LocalWrite(core) | pluresdb_sync::SyncError::Storage(core) => Error::Core(core),
                    other => Error::Sync(other),
                })
            }
        }
    }
}

fn micros(elapsed: std::time::Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}
