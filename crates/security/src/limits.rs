//! Abuse limits: the bounds a node enforces on every peer ([`Limits`]) and a
//! per-peer token-bucket [`RateLimiter`].
//!
//! The rate limiter is sans-IO: the caller passes the time in milliseconds.
//! `governor` is not used here because it reads clocks itself (and
//! `Instant::now()` panics on wasm32); the network crate, which owns the
//! clock, may use governor for its own limits.

use crate::error::SecurityError;
use std::collections::HashMap;
use std::time::Duration;

/// The limits a node enforces on its peers, with their defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame accepted from a peer; a longer length prefix closes the
    /// connection before any of the frame is buffered. Default: 16 MiB.
    pub max_frame_size: usize,
    /// Most simultaneous peer connections; further ones are refused.
    /// Default: 100.
    pub max_connections: usize,
    /// A connection that has not finished its handshake (keys, proof,
    /// admission) in this time is closed. Default: 10 s.
    pub handshake_timeout: Duration,
    /// How fast each peer may send. Default: [`RateLimit::default`].
    pub rate: RateLimit,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_size: 16 * 1024 * 1024,
            max_connections: 100,
            handshake_timeout: Duration::from_secs(10),
            rate: RateLimit::default(),
        }
    }
}

/// A token bucket's parameters: a sustained rate and a burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Messages per second a peer may send, sustained. Default: 2,000.
    pub messages_per_second: u32,
    /// Messages a peer may send at once after being quiet (the bucket's
    /// size). Default: 4,000.
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self { messages_per_second: 2_000, burst: 4_000 }
    }
}

/// Tokens are counted in thousandths, so that a rate in messages per second
/// refills an exact whole number of units per millisecond.
const UNITS_PER_TOKEN: u64 = 1_000;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    units: u64,
    updated_ms: u64,
}

/// One token bucket per peer. A peer seen for the first time starts with a
/// full bucket. Memory is bounded by the callers: [`remove`](Self::remove) a
/// peer when it disconnects, or [`prune`](Self::prune) now and then, which
/// drops every bucket that has refilled (a full bucket is the same as none).
#[derive(Clone, Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: HashMap<String, Bucket>,
}

impl RateLimiter {
    /// A limiter applying `limit` to every peer.
    pub fn new(limit: RateLimit) -> Self {
        Self { limit, buckets: HashMap::new() }
    }

    /// The limit applied.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes one message's token from `peer`'s bucket at time `now_ms`, or
    /// says how long until there is one.
    pub fn check(&mut self, peer: &str, now_ms: u64) -> Result<(), SecurityError> {
        self.check_n(peer, 1, now_ms)
    }

    /// Takes `n` tokens at once (a batch of `n` messages). A batch larger
    /// than the burst can never pass: `retry_after_ms` is then `u64::MAX`.
    /// Time that goes backwards counts as no time.
    pub fn check_n(&mut self, peer: &str, n: u32, now_ms: u64) -> Result<(), SecurityError> {
        let capacity = u64::from(self.limit.burst) * UNITS_PER_TOKEN;
        let rate = u64::from(self.limit.messages_per_second);
        let bucket = match self.buckets.get_mut(peer) {
            Some(bucket) => bucket,
            None => self.buckets.entry(peer.to_owned()).or_insert(Bucket { units: capacity, updated_ms: now_ms }),
        };
        let elapsed = now_ms.saturating_sub(bucket.updated_ms);
        bucket.units = bucket.units.saturating_add(elapsed.saturating_mul(rate)).min(capacity);
        bucket.updated_ms = bucket.updated_ms.max(now_ms);
        let need = u64::from(n) * UNITS_PER_TOKEN;
        if bucket.units >= need {
            bucket.units -= need;
            return Ok(());
        }
        let retry_after_ms = if need > capacity || rate == 0 { u64::MAX } else { (need - bucket.units).div_ceil(rate) };
        Err(SecurityError::RateLimited { peer: peer.to_owned(), retry_after_ms })
    }

    /// Forgets `peer` (it disconnected).
    pub fn remove(&mut self, peer: &str) {
        self.buckets.remove(peer);
    }

    /// Drops the buckets that are full again at `now_ms`.
    pub fn prune(&mut self, now_ms: u64) {
        let capacity = u64::from(self.limit.burst) * UNITS_PER_TOKEN;
        let rate = u64::from(self.limit.messages_per_second);
        self.buckets.retain(|_, bucket| {
            let elapsed = now_ms.saturating_sub(bucket.updated_ms);
            bucket.units.saturating_add(elapsed.saturating_mul(rate)) < capacity
        });
    }

    /// How many peers have a bucket.
    pub fn tracked_peers(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry_after(result: Result<(), SecurityError>) -> u64 {
        match result {
            Err(SecurityError::RateLimited { retry_after_ms, .. }) => retry_after_ms,
            other => panic!("expected RateLimited, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let limits = Limits::default();
        assert_eq!(limits.max_frame_size, 16 << 20);
        assert_eq!(limits.max_connections, 100);
        assert_eq!(limits.handshake_timeout, Duration::from_secs(10));
        assert_eq!(limits.rate, RateLimit { messages_per_second: 2_000, burst: 4_000 });
    }

    #[test]
    fn a_burst_passes_then_the_sustained_rate() {
        let mut limiter = RateLimiter::new(RateLimit::default());
        let t0 = 1_700_000_000_000;
        for _ in 0..4_000 {
            limiter.check("p", t0).unwrap();
        }
        // Empty: 2,000/s is one token every 0.5 ms.
        assert_eq!(retry_after(limiter.check("p", t0)), 1);
        limiter.check("p", t0 + 1).unwrap();
        limiter.check("p", t0 + 1).unwrap();
        assert!(limiter.check("p", t0 + 1).is_err());
        // Another peer has its own bucket.
        limiter.check("q", t0).unwrap();
        // One second refills 2,000 tokens.
        for _ in 0..2_000 {
            limiter.check("p", t0 + 1_001).unwrap();
        }
        assert!(limiter.check("p", t0 + 1_001).is_err());
    }

    #[test]
    fn time_going_backwards_refills_nothing_and_batches_over_the_burst_never_pass() {
        let mut limiter = RateLimiter::new(RateLimit { messages_per_second: 10, burst: 10 });
        limiter.check_n("p", 10, 5_000).unwrap();
        assert!(limiter.check("p", 1_000).is_err());
        assert!(limiter.check("p", 5_000).is_err());
        assert_eq!(retry_after(limiter.check("p", 5_000)), 100);
        limiter.check("p", 5_100).unwrap();
        assert_eq!(retry_after(limiter.check_n("p", 11, 100_000)), u64::MAX);
    }

    #[test]
    fn prune_drops_only_refilled_buckets() {
        // 10 messages/s: one token per 100 ms.
        let mut limiter = RateLimiter::new(RateLimit { messages_per_second: 10, burst: 100 });
        limiter.check_n("busy", 100, 0).unwrap();
        limiter.check("idle", 0).unwrap();
        limiter.prune(1);
        assert_eq!(limiter.tracked_peers(), 2);
        limiter.prune(100);
        assert_eq!(limiter.tracked_peers(), 1, "idle refilled its one token");
        limiter.prune(10_000);
        assert_eq!(limiter.tracked_peers(), 0);
        limiter.check("busy", 10_000).unwrap();
        limiter.remove("busy");
        assert_eq!(limiter.tracked_peers(), 0);
    }
}
