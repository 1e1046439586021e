//! The node's recent write and sync rates: a ring of counter snapshots
//! taken every [`STEP`] over the last [`SPAN_MINUTES`], so that a chart of
//! the last minutes survives a page reload (`GET /status/rates`).
//!
//! [`RateHistory`] is plain logic (times are passed in); [`sample`] is the
//! task that feeds it while the API is served. Memory is fixed: at most
//! [`SNAPSHOTS`] snapshots of [`Counters`], whatever the uptime.

use crate::ApiState;
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// Time between two snapshots: the width of a bucket of the history.
pub const STEP: Duration = Duration::from_secs(10);

/// How far back the history goes.
pub const SPAN_MINUTES: u64 = 15;

/// Snapshots kept: one more than the buckets of [`SPAN_MINUTES`], since a
/// bucket is the difference of two.
pub const SNAPSHOTS: usize = (SPAN_MINUTES * 60 / STEP.as_secs()) as usize + 1;

/// The node's growing counters at one moment (each counts since the node
/// started).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Local writes committed.
    pub local_ops: u64,
    /// Operations from peers applied.
    pub remote_ops: u64,
    /// Operations sent to peers.
    pub ops_sent: u64,
    /// Operations received from peers.
    pub ops_received: u64,
    /// Sync bytes sent.
    pub bytes_sent: u64,
    /// Sync bytes received.
    pub bytes_received: u64,
}

impl Counters {
    /// How much each counter grew from `earlier` (0 for one that went
    /// back, which a counter of this process never does).
    fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            local_ops: self.local_ops.saturating_sub(earlier.local_ops),
            remote_ops: self.remote_ops.saturating_sub(earlier.remote_ops),
            ops_sent: self.ops_sent.saturating_sub(earlier.ops_sent),
            ops_received: self.ops_received.saturating_sub(earlier.ops_received),
            bytes_sent: self.bytes_sent.saturating_sub(earlier.bytes_sent),
            bytes_received: self.bytes_received.saturating_sub(earlier.bytes_received),
        }
    }
}

/// What the counters grew by over one span of time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// When the span started, in ms of the history's clock.
    pub start_ms: u64,
    /// How long it lasted (a full [`STEP`], or less for the current one).
    pub duration_ms: u64,
    /// The growth of each counter over it.
    pub growth: Counters,
}

/// The last [`SNAPSHOTS`] snapshots of the counters, oldest first.
#[derive(Debug, Default)]
pub struct RateHistory {
    snapshots: VecDeque<(u64, Counters)>,
}

impl RateHistory {
    /// An empty history.
    pub fn new() -> Self {
        Self { snapshots: VecDeque::with_capacity(SNAPSHOTS) }
    }

    /// Records the counters as they are at `at_ms` (ms of a clock that
    /// never goes back), dropping the oldest snapshot beyond
    /// [`SNAPSHOTS`]. A time before the last snapshot's is taken as the
    /// last one's.
    pub fn record(&mut self, at_ms: u64, counters: Counters) {
        let at_ms = self.snapshots.back().map_or(at_ms, |(last, _)| at_ms.max(*last));
        if self.snapshots.len() == SNAPSHOTS {
            self.snapshots.pop_front();
        }
        self.snapshots.push_back((at_ms, counters));
    }

    /// The buckets that end within the last `minutes`, oldest first: one
    /// between each two snapshots, then the current one, from the last
    /// snapshot to `now` with the counters `current`. Empty before the
    /// first snapshot; a span of no time is left out.
    pub fn buckets(&self, now_ms: u64, current: Counters, minutes: u64) -> Vec<Bucket> {
        let since = now_ms.saturating_sub(minutes.saturating_mul(60_000));
        let mut buckets: Vec<Bucket> = self
            .snapshots
            .iter()
            .zip(self.snapshots.iter().skip(1))
            .map(|((start, before), (end, after))| Bucket { start_ms: *start, duration_ms: end - start, growth: after.since(before) })
            .collect();
        if let Some((last, before)) = self.snapshots.back() {
            let end = now_ms.max(*last);
            if end > *last {
                buckets.push(Bucket { start_ms: *last, duration_ms: end - last, growth: current.since(before) });
            }
        }
        buckets.retain(|b| b.duration_ms > 0 && b.start_ms + b.duration_ms > since);
        buckets
    }
}

/// The counters of the node behind `state` now.
pub async fn counters(state: &ApiState) -> Result<Counters, crate::ApiError> {
    let stats = state.handle.stats();
    let traffic = state.handle.sync_status().await?.traffic;
    Ok(Counters {
        local_ops: stats.local_ops.load(Relaxed),
        remote_ops: stats.remote_ops.load(Relaxed),
        ops_sent: traffic.ops_sent,
        ops_received: traffic.ops_received,
        bytes_sent: traffic.bytes_sent,
        bytes_received: traffic.bytes_received,
    })
}

/// Ms since the node started: the history's clock (monotonic, so a change
/// of the wall clock cannot make a bucket negative).
pub fn now_ms(state: &ApiState) -> u64 {
    u64::try_from(state.started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Records a snapshot of the counters now.
pub async fn snapshot(state: &ApiState) {
    match counters(state).await {
        Ok(now) => state.rates.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).record(now_ms(state), now),
        // The sync engine is stopping: the node is shutting down.
        Err(err) => tracing::debug!(error = %err.message, "no rate snapshot"),
    }
}

/// Records a snapshot every [`STEP`] from one step on, for as long as it
/// runs (the API's [`serve`](crate::serve) takes the first one before it
/// answers a request, runs this beside the server and ends it with it).
pub async fn sample(state: ApiState) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + STEP, STEP);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        snapshot(&state).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(local: u64) -> Counters {
        Counters { local_ops: local, bytes_sent: local * 100, ..Counters::default() }
    }

    #[test]
    fn each_bucket_is_the_growth_between_two_snapshots_and_the_last_runs_to_now() {
        let mut history = RateHistory::new();
        assert!(history.buckets(5_000, ops(3), SPAN_MINUTES).is_empty(), "no snapshot yet");
        history.record(0, ops(0));
        history.record(10_000, ops(4));
        history.record(20_000, ops(4));
        let buckets = history.buckets(23_000, ops(7), SPAN_MINUTES);
        let growth: Vec<(u64, u64, u64, u64)> =
            buckets.iter().map(|b| (b.start_ms, b.duration_ms, b.growth.local_ops, b.growth.bytes_sent)).collect();
        assert_eq!(growth, [(0, 10_000, 4, 400), (10_000, 10_000, 0, 0), (20_000, 3_000, 3, 300)]);
        // Asked at the moment of the last snapshot: no empty current bucket.
        assert_eq!(history.buckets(20_000, ops(4), SPAN_MINUTES).len(), 2);
    }

    #[test]
    fn the_history_keeps_fifteen_minutes_whatever_the_uptime() {
        let mut history = RateHistory::new();
        let step = STEP.as_millis() as u64;
        for i in 0..10_000u64 {
            history.record(i * step, ops(i));
        }
        assert_eq!(history.snapshots.len(), SNAPSHOTS);
        let now = 9_999 * step;
        let buckets = history.buckets(now, ops(9_999), SPAN_MINUTES);
        assert_eq!(buckets.len(), SNAPSHOTS - 1);
        assert_eq!(buckets[0].start_ms, now - SPAN_MINUTES * 60_000);
        assert!(buckets.iter().all(|b| b.growth.local_ops == 1 && b.duration_ms == step));
        // The last minute only: the 6 buckets that end within it.
        assert_eq!(history.buckets(now, ops(9_999), 1).len(), 6);
    }

    #[test]
    fn a_counter_that_goes_back_or_a_clock_that_does_gives_no_negative_bucket() {
        let mut history = RateHistory::new();
        history.record(10_000, ops(5));
        history.record(9_000, ops(2));
        assert_eq!(history.snapshots.back(), Some(&(10_000, ops(2))), "the time kept, not gone back");
        assert!(history.buckets(8_000, ops(1), SPAN_MINUTES).is_empty(), "no span of no time");
        let buckets = history.buckets(11_000, ops(1), SPAN_MINUTES);
        assert_eq!(buckets.len(), 1);
        assert_eq!((buckets[0].duration_ms, buckets[0].growth), (1_000, Counters::default()));
    }
}
