//! Watching the change feed: filtered, bounded, resumable.
//!
//! A [`Watch`] starts at a definite point of the replica's history: the
//! writer subscribes it between two commits and reports the version vector
//! at that point. Changes applied after it arrive live, in the order they
//! were applied. Given a `from` version, the watch first replays, from the
//! op log, what was applied between `from` and that point, so a watcher
//! that reconnects with the version it last saw misses nothing and sees
//! nothing twice.
//!
//! Each origin's operations are applied in sequence order, so the highest
//! sequence number seen per origin (the watch's [`position`](Watch::position))
//! says exactly what has been seen. The exception is an operation stamped
//! beyond the clock horizon (`docs/protocol.md`, Clocks): it arrives in
//! the feed when it takes effect, after later operations of its origin, and
//! a watch resumed from a position past it does not replay it. A watcher that falls behind by more than
//! its buffer gets [`WatchEvent::Lagged`] with that position and the watch
//! ends: it resumes with a new watch from there, and the node never buffers
//! without bound for it.

use crate::stats::Stats;
use pluresdb_core::{Change, Error, FeedEvent, OperationWithMetadata, Reader, Subscription, VersionVector};
use pluresdb_store_redb::RedbStore;
use std::collections::VecDeque;
use std::sync::Arc;

/// Operations read from the op log at a time while replaying.
const REPLAY_CHUNK: usize = 256;

/// The most nodes a live query tracks as passing (to tell when one
/// stops passing); a query that grows past it ends its watch.
pub const MAX_LIVE_QUERY_NODES: usize = 100_000;

/// Which nodes a watch follows.
#[derive(Clone, Debug)]
pub enum Filter {
    /// Every node.
    All,
    /// One node, by id.
    Node(String),
    /// Nodes whose id starts with this prefix.
    Prefix(String),
    /// Nodes that pass a query's prefix and conditions (a live query):
    /// changes that make a node pass, or that change or remove a node that
    /// passed.
    Query(Arc<pluresdb_core::query::CheckedQuery>),
}

impl Filter {
    /// Whether changes to node `id` pass.
    pub fn matches(&self, id: &str) -> bool {
        match self {
            Filter::All => true,
            Filter::Node(node) => node == id,
            Filter::Prefix(prefix) => id.starts_with(prefix.as_str()),
            Filter::Query(query) => id.starts_with(query.prefix.as_str()),
        }
    }
}

/// What a watch yields.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchEvent {
    /// A change to a watched node. Replayed changes carry the node as it is
    /// now (their `change.seq` is 0); live ones the node right after the
    /// change.
    Change {
        /// The operation and its node.
        change: Arc<Change>,
        /// Whether it was read back from the op log rather than seen live.
        replayed: bool,
        /// For a live query: whether the node passes it after the change
        /// (`false`: it passed before and no longer does).
        matches: Option<bool>,
    },
    /// The watcher fell behind: `missed` changes (to any node) were not
    /// buffered for it. The watch ends; a new watch from `resume_from`
    /// continues exactly where this one stopped.
    Lagged {
        /// Changes dropped.
        missed: u64,
        /// The version to resume from.
        resume_from: VersionVector,
    },
}

/// A filtered view of the change feed. See the [module docs](self).
pub struct Watch {
    filter: Filter,
    subscription: Subscription,
    /// Highest sequence number seen per origin (filtered out or not).
    position: VersionVector,
    replay: Option<Replay>,
    reader: Arc<Reader<RedbStore>>,
    stats: Arc<Stats>,
    ended: bool,
    /// For a live query: the nodes known to pass it.
    passing: std::collections::HashSet<String>,
}

/// The part of the history between `from` and the live start.
struct Replay {
    /// Per origin: the last sequence number replayed and the last to replay.
    origins: VecDeque<(String, u64, u64)>,
    ready: VecDeque<OperationWithMetadata>,
}

impl Watch {
    pub(crate) fn new(
        filter: Filter,
        subscription: Subscription,
        start: VersionVector,
        from: Option<VersionVector>,
        reader: Arc<Reader<RedbStore>>,
        stats: Arc<Stats>,
    ) -> Self {
        Stats::add(&stats.watchers, 1);
        let (position, replay) = match from {
            None => (start, None),
            Some(from) => {
                let origins: VecDeque<(String, u64, u64)> = start
                    .iter()
                    .filter(|(origin, seq)| from.get(origin) < *seq)
                    .map(|(origin, seq)| (origin.to_owned(), from.get(origin), seq))
                    .collect();
                // Where the replay begins: `from`, but never past the start.
                let mut position = VersionVector::new();
                for (origin, seq) in start.iter() {
                    position.advance(origin, from.get(origin).min(seq));
                }
                (position, Some(Replay { origins, ready: VecDeque::new() }))
            }
        };
        Self { filter, subscription, position, replay, reader, stats, ended: false, passing: Default::default() }
    }

    /// A live query's watch, knowing the nodes that pass it now (read by
    /// the caller after subscribing, at most [`MAX_LIVE_QUERY_NODES`]).
    pub(crate) fn with_passing(mut self, passing: std::collections::HashSet<String>) -> Self {
        self.passing = passing;
        self
    }

    /// Whether a change to `id` (which is `node` after it) is delivered,
    /// and for a live query whether the node passes it now.
    fn deliver(
        filter: &Filter,
        passing: &mut std::collections::HashSet<String>,
        id: &str,
        node: Option<&pluresdb_core::Node>,
    ) -> Result<Option<Option<bool>>, Error> {
        let Filter::Query(query) = filter else { return Ok(filter.matches(id).then_some(None)) };
        if node.is_some_and(|node| pluresdb_core::query::selects(query, node)) {
            if passing.len() >= MAX_LIVE_QUERY_NODES && !passing.contains(id) {
                return Err(Error::InvalidQuery {
                    reason: format!("the live query now follows more than {MAX_LIVE_QUERY_NODES} nodes; narrow it"),
                });
            }
            passing.insert(id.to_owned());
            return Ok(Some(Some(true)));
        }
        Ok(passing.remove(id).then_some(Some(false)))
    }

    /// What this watch has seen: per origin, the highest sequence number.
    pub fn position(&self) -> &VersionVector {
        &self.position
    }

    /// The next change to a watched node; `None` once the watch has ended
    /// (after [`WatchEvent::Lagged`], or when the node stops).
    pub async fn next(&mut self) -> Option<Result<WatchEvent, Error>> {
        if self.ended {
            return None;
        }
        loop {
            if self.replay.is_some() {
                match self.next_replayed() {
                    Ok(Some(event)) => return Some(Ok(event)),
                    Ok(None) => self.replay = None,
                    Err(err) => {
                        self.ended = true;
                        return Some(Err(err));
                    }
                }
                continue;
            }
            let event = std::future::poll_fn(|cx| self.subscription.poll_next(cx)).await;
            match event {
                None => {
                    self.ended = true;
                    return None;
                }
                Some(FeedEvent::Lagged { missed }) => {
                    self.ended = true;
                    Stats::add(&self.stats.lagged_watchers, 1);
                    return Some(Ok(WatchEvent::Lagged { missed, resume_from: self.position.clone() }));
                }
                Some(FeedEvent::Change(change)) => {
                    self.position.advance(&change.op.id.origin, change.op.id.seq);
                    match Self::deliver(&self.filter, &mut self.passing, &change.op.node_id, change.node.as_ref()) {
                        Ok(Some(matches)) => {
                            Stats::add(&self.stats.delivered_changes, 1);
                            return Some(Ok(WatchEvent::Change { change, replayed: false, matches }));
                        }
                        Ok(None) => {}
                        Err(err) => {
                            self.ended = true;
                            return Some(Err(err));
                        }
                    }
                }
            }
        }
    }

    /// The next replayed change, reading the op log a chunk at a time;
    /// `None` when the replay is complete.
    fn next_replayed(&mut self) -> Result<Option<WatchEvent>, Error> {
        let Some(replay) = self.replay.as_mut() else { return Ok(None) };
        loop {
            while let Some(op) = replay.ready.pop_front() {
                self.position.advance(&op.id.origin, op.id.seq);
                if self.filter.matches(&op.node_id) {
                    let node = self.reader.get(&op.node_id)?;
                    let Some(matches) = Self::deliver(&self.filter, &mut self.passing, &op.node_id, node.as_ref())? else { continue };
                    Stats::add(&self.stats.delivered_changes, 1);
                    return Ok(Some(WatchEvent::Change { change: Arc::new(Change { seq: 0, op, node }), replayed: true, matches }));
                }
            }
            let Some((origin, done, last)) = replay.origins.front_mut() else { return Ok(None) };
            let want = usize::try_from(*last - *done).unwrap_or(usize::MAX).min(REPLAY_CHUNK);
            let ops = self.reader.ops_after(origin, *done, want)?;
            match ops.last() {
                Some(op) => *done = op.id.seq,
                // The op log ends early (it cannot, below the version
                // vector); stop replaying this origin rather than spin.
                None => *done = *last,
            }
            if *done >= *last {
                replay.origins.pop_front();
            }
            replay.ready.extend(ops);
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        Stats::sub(&self.stats.watchers, 1);
    }
}
