//! [`DialBackoff`]: when a discovered peer that could not be dialled may be
//! tried again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The wait after a peer's first failed dial; it doubles with each further
/// failure.
pub const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The longest wait between dials of a peer.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// How far (in percent, either way) a delay is spread, so that nodes that
/// lost the same peer do not all redial it in the same instant.
const JITTER_PERCENT: u64 = 20;

/// The wait after `failures` (at least 1) consecutive failed dials of
/// `peer_id`: [`FIRST_RETRY_DELAY`] doubled per further failure, spread by
/// up to ±20 %, at most [`MAX_RETRY_DELAY`]. The spread is a hash of the
/// peer id and the failure count: deterministic, yet different between
/// peers and between nodes' views of different peers.
pub fn retry_delay(peer_id: &str, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let base = FIRST_RETRY_DELAY.saturating_mul(1 << doublings).min(MAX_RETRY_DELAY);
    let base_ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX);
    let spread = jitter_hash(peer_id, failures) % (2 * JITTER_PERCENT + 1);
    let percent = 100 - JITTER_PERCENT + spread;
    Duration::from_millis(base_ms.saturating_mul(percent) / 100).min(MAX_RETRY_DELAY)
}

/// FNV-1a over the peer id and the failure count, finished with
/// SplitMix64's mixer so that nearby inputs spread over the whole range.
fn jitter_hash(peer_id: &str, failures: u32) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = FNV_OFFSET;
    for byte in peer_id.bytes().chain(failures.to_le_bytes()) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// A peer's run of failed dials.
#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    retry_at: Instant,
}

/// Per-peer exponential backoff for dialling discovered peers. Sans-IO:
/// the caller passes the time.
#[derive(Debug, Default)]
pub(crate) struct DialBackoff {
    peers: HashMap<String, Failures>,
}

impl DialBackoff {
    /// Whether `peer_id` may be dialled at `now`.
    pub(crate) fn ready(&self, peer_id: &str, now: Instant) -> bool {
        self.peers.get(peer_id).is_none_or(|failures| now >= failures.retry_at)
    }

    /// Records a failed dial of `peer_id` at `now`; returns the wait before
    /// the next one.
    pub(crate) fn failed(&mut self, peer_id: &str, now: Instant) -> Duration {
        let count = self.peers.get(peer_id).map_or(1, |failures| failures.count.saturating_add(1));
        let delay = retry_delay(peer_id, count);
        self.peers.insert(peer_id.to_owned(), Failures { count, retry_at: now + delay });
        delay
    }

    /// Forgets `peer_id`'s failures (it connected).
    pub(crate) fn succeeded(&mut self, peer_id: &str) {
        self.peers.remove(peer_id);
    }

    /// Forgets the peers for which `keep` is false (no longer discovered),
    /// which bounds the table by the directory's size.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.peers.retain(|peer_id, _| keep(peer_id));
    }

    /// How many peers are backing off.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_one_second_to_a_minute_with_bounded_jitter() {
        for peer in ["12D3KooWA", "12D3KooWB", "12D3KooWC", "x"] {
            for failures in 1..=40u32 {
                let base = FIRST_RETRY_DELAY.saturating_mul(1 << (failures - 1).min(16)).min(MAX_RETRY_DELAY);
                let delay = retry_delay(peer, failures);
                assert!(delay >= base.mul_f64(0.8) && delay <= base.mul_f64(1.2), "{peer} #{failures}: {delay:?} vs {base:?}");
                assert!(delay <= MAX_RETRY_DELAY);
            }
        }
        // The schedule's shape for one peer.
        let delays: Vec<u64> = (1..=8).map(|n| retry_delay("12D3KooWA", n).as_millis() as u64).collect();
        let bases = [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000];
        for (delay, base) in delays.iter().zip(bases) {
            assert!(*delay >= base * 8 / 10 && *delay <= (base * 12 / 10).min(60_000), "{delays:?}");
        }
    }

    #[test]
    fn jitter_is_deterministic_and_differs_between_peers() {
        assert_eq!(retry_delay("12D3KooWA", 3), retry_delay("12D3KooWA", 3));
        let spread: std::collections::HashSet<Duration> = (0..50).map(|i| retry_delay(&format!("peer-{i}"), 5)).collect();
        assert!(spread.len() > 10, "only {} distinct delays", spread.len());
    }

    #[test]
    fn a_peer_waits_after_failures_and_is_forgiven_on_success() {
        let start = Instant::now();
        let mut backoff = DialBackoff::default();
        assert!(backoff.ready("a", start));
        let first = backoff.failed("a", start);
        assert!(!backoff.ready("a", start) && backoff.ready("a", start + first));
        assert!(backoff.ready("b", start), "peers back off independently");
        let second = backoff.failed("a", start + first);
        assert_eq!(second, retry_delay("a", 2));
        assert!(!backoff.ready("a", start + first + second - Duration::from_millis(1)));
        backoff.succeeded("a");
        assert!(backoff.ready("a", start));
        assert_eq!(backoff.failed("a", start), first, "the schedule starts over");
        backoff.failed("b", start);
        backoff.retain(|peer| peer == "b");
        assert_eq!(backoff.len(), 1);
        assert!(backoff.ready("a", start));
    }
}
