//! The change feed: every change a replica applies, local or remote, in the
//! order it was applied, delivered to any number of subscribers through
//! bounded buffers.
//!
//! A subscriber that falls behind does not make the replica buffer without
//! bound: once its buffer is full, further changes are counted instead of
//! queued, and the subscriber receives [`FeedEvent::Lagged`] at the place of
//! the gap. It can then re-read the state it needs and continue.

use crate::node::Node;
use crate::operation::OperationWithMetadata;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// One applied operation and the state of its node right after it.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// Position in this replica's feed since it was opened, from 1.
    pub seq: u64,
    /// The operation.
    pub op: OperationWithMetadata,
    /// The node after the operation, or `None` if it no longer exists.
    pub node: Option<Node>,
}

/// What a subscription yields.
#[derive(Clone, Debug, PartialEq)]
pub enum FeedEvent {
    /// The next change.
    Change(Arc<Change>),
    /// The buffer was full and this many changes were skipped here.
    Lagged {
        /// How many changes were not delivered.
        missed: u64,
    },
}

#[derive(Debug)]
struct Queue {
    events: VecDeque<FeedEvent>,
    capacity: usize,
    closed: bool,
    waker: Option<Waker>,
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    // A panic while holding the lock leaves a queue that is still valid.
    queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The sending side, owned by the replica.
#[derive(Debug, Default)]
pub struct ChangeFeed {
    subscribers: Mutex<Vec<Arc<Mutex<Queue>>>>,
    next_seq: u64,
}

impl ChangeFeed {
    /// A feed with no subscribers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a subscriber that buffers up to `capacity` changes (at least 1).
    pub fn subscribe(&self, capacity: usize) -> Subscription {
        let queue = Arc::new(Mutex::new(Queue { events: VecDeque::new(), capacity: capacity.max(1), closed: false, waker: None }));
        self.lock_subscribers().push(queue.clone());
        Subscription { queue }
    }

    /// Whether anyone listens; lets the replica skip building changes.
    pub fn has_subscribers(&self) -> bool {
        let mut subscribers = self.lock_subscribers();
        subscribers.retain(|q| Arc::strong_count(q) > 1);
        !subscribers.is_empty()
    }

    /// The sequence number the next published change will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq + 1
    }

    /// Delivers changes to every subscriber, numbering them.
    pub fn publish(&mut self, changes: impl IntoIterator<Item = (OperationWithMetadata, Option<Node>)>) {
        let changes: Vec<Arc<Change>> = changes
            .into_iter()
            .map(|(op, node)| {
                self.next_seq += 1;
                Arc::new(Change { seq: self.next_seq, op, node })
            })
            .collect();
        if changes.is_empty() {
            return;
        }
        let mut subscribers = self.lock_subscribers();
        subscribers.retain(|q| Arc::strong_count(q) > 1);
        for queue in subscribers.iter() {
            let mut queue = lock(queue);
            for change in &changes {
                if queue.events.len() < queue.capacity {
                    queue.events.push_back(FeedEvent::Change(change.clone()));
                } else if let Some(FeedEvent::Lagged { missed }) = queue.events.back_mut() {
                    *missed += 1;
                } else {
                    queue.events.push_back(FeedEvent::Lagged { missed: 1 });
                }
            }
            if let Some(waker) = queue.waker.take() {
                waker.wake();
            }
        }
    }

    fn lock_subscribers(&self) -> MutexGuard<'_, Vec<Arc<Mutex<Queue>>>> {
        self.subscribers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for ChangeFeed {
    fn drop(&mut self) {
        for queue in self.lock_subscribers().iter() {
            let mut queue = lock(queue);
            queue.closed = true;
            if let Some(waker) = queue.waker.take() {
                waker.wake();
            }
        }
    }
}

/// The receiving side of a change feed.
#[derive(Debug)]
pub struct Subscription {
    queue: Arc<Mutex<Queue>>,
}

impl Subscription {
    /// The next event if one is buffered.
    pub fn try_next(&mut self) -> Option<FeedEvent> {
        lock(&self.queue).events.pop_front()
    }

    /// Polls for the next event; `Ready(None)` once the replica is gone and
    /// the buffer is drained. For async runtimes.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<FeedEvent>> {
        let mut queue = lock(&self.queue);
        if let Some(event) = queue.events.pop_front() {
            return Poll::Ready(Some(event));
        }
        if queue.closed {
            return Poll::Ready(None);
        }
        queue.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The number of buffered events.
    pub fn len(&self) -> usize {
        lock(&self.queue).events.len()
    }

    /// Whether no event is buffered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OperationType;

    fn op(n: u64) -> OperationWithMetadata {
        let mut op = OperationWithMetadata::new(OperationType::DeleteNode, format!("n{n}"), serde_json::Value::Null, "p");
        op.id.seq = n;
        op
    }

    fn seq_of(event: FeedEvent) -> u64 {
        match event {
            FeedEvent::Change(change) => change.seq,
            FeedEvent::Lagged { missed } => panic!("unexpected lag of {missed}"),
        }
    }

    #[test]
    fn a_slow_subscriber_is_told_where_it_lagged_and_others_are_unaffected() {
        let mut feed = ChangeFeed::new();
        let mut slow = feed.subscribe(2);
        let mut fast = feed.subscribe(100);
        feed.publish((1..=5).map(|n| (op(n), None)));
        assert_eq!(seq_of(slow.try_next().unwrap()), 1);
        assert_eq!(seq_of(slow.try_next().unwrap()), 2);
        assert_eq!(slow.try_next(), Some(FeedEvent::Lagged { missed: 3 }));
        assert_eq!(slow.try_next(), None);
        feed.publish([(op(6), None)]);
        assert_eq!(seq_of(slow.try_next().unwrap()), 6);
        let fast_seqs: Vec<u64> = std::iter::from_fn(|| fast.try_next()).map(seq_of).collect();
        assert_eq!(fast_seqs, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn dropped_subscriptions_are_forgotten_and_closing_ends_the_stream() {
        let feed = ChangeFeed::new();
        let sub = feed.subscribe(1);
        assert!(feed.has_subscribers());
        drop(sub);
        assert!(!feed.has_subscribers());
        let mut sub = feed.subscribe(1);
        drop(feed);
        let waker = Waker::noop();
        assert_eq!(sub.poll_next(&mut Context::from_waker(waker)), Poll::Ready(None));
    }
}
