//! [`DialBackoff`]: when a discovered address that could not be dialled may
//! be tried again, and [`DialRate`]: how many dials discovery makes at most.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The wait after an address's first failed dial; it doubles with each
/// further failure.
pub const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The longest wait between dials of an address, until it is given up.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// Consecutive failed dials after which an address is given up: dialled
/// again only every [`GIVE_UP_DELAY`] (the first eight take about two
/// minutes).
pub const MAX_DIAL_FAILURES: u32 = 8;

/// The wait between dials of a given-up address.
pub const GIVE_UP_DELAY: Duration = Duration::from_secs(30 * 60);

/// Dials of discovered addresses per second, sustained, over all peers: a
/// peer that tells of many addresses (or a LAN host that announces many)
/// cannot make this node dial faster than this.
pub const DIALS_PER_SECOND: u32 = 4;

/// Dials of discovered addresses in a burst (a node that just started, or
/// just heard of many peers).
pub const DIAL_BURST: u32 = 16;

/// The most addresses whose failures are remembered; beyond it the one
/// due soonest is forgotten (forgetting it costs at most one early dial).
const MAX_REMEMBERED_ADDRESSES: usize = 8_192;

/// How far (in percent, either way) a delay is spread, so that nodes that
/// lost the same peer do not all redial it in the same instant.
const JITTER_PERCENT: u64 = 20;

/// The wait after `failures` (at least 1) consecutive failed dials of
/// `address`: [`FIRST_RETRY_DELAY`] doubled per further failure, spread by
/// up to ±20 %, at most [`MAX_RETRY_DELAY`]; [`GIVE_UP_DELAY`] from
/// [`MAX_DIAL_FAILURES`] on. The spread is a hash of the address and the
/// failure count: deterministic, yet different between addresses.
pub fn retry_delay(address: &str, failures: u32) -> Duration {
    if failures >= MAX_DIAL_FAILURES {
        return GIVE_UP_DELAY;
    }
    let doublings = failures.saturating_sub(1).min(16);
    let base = FIRST_RETRY_DELAY.saturating_mul(1 << doublings).min(MAX_RETRY_DELAY);
    let base_ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX);
    let spread = jitter_hash(address, failures) % (2 * JITTER_PERCENT + 1);
    let percent = 100 - JITTER_PERCENT + spread;
    Duration::from_millis(base_ms.saturating_mul(percent) / 100).min(MAX_RETRY_DELAY)
}

/// FNV-1a over the key and the failure count, finished with SplitMix64's
/// mixer so that nearby inputs spread over the whole range.
fn jitter_hash(key: &str, failures: u32) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = FNV_OFFSET;
    for byte in key.bytes().chain(failures.to_le_bytes()) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// An address's run of failed dials.
#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    retry_at: Instant,
}

/// Per-address exponential backoff for dialling discovered peers, giving
/// up after [`MAX_DIAL_FAILURES`]. Sans-IO: the caller passes the time.
#[derive(Debug, Default)]
pub(crate) struct DialBackoff {
    addresses: HashMap<String, Failures>,
}

impl DialBackoff {
    /// Whether `address` may be dialled at `now`.
    pub(crate) fn ready(&self, address: &str, now: Instant) -> bool {
        self.addresses.get(address).is_none_or(|failures| now >= failures.retry_at)
    }

    /// Records a failed dial of `address` at `now`; returns the wait before
    /// the next one.
    pub(crate) fn failed(&mut self, address: &str, now: Instant) -> Duration {
        let count = self.addresses.get(address).map_or(1, |failures| failures.count.saturating_add(1));
        let delay = retry_delay(address, count);
        self.addresses.insert(address.to_owned(), Failures { count, retry_at: now + delay });
        if self.addresses.len() > MAX_REMEMBERED_ADDRESSES {
            let soonest = self.addresses.iter().min_by_key(|(_, failures)| failures.retry_at).map(|(address, _)| address.clone());
            if let Some(soonest) = soonest {
                self.addresses.remove(&soonest);
            }
        }
        delay
    }

    /// Forgets `address`'s failures (a dial of it succeeded).
    pub(crate) fn succeeded(&mut self, address: &str) {
        self.addresses.remove(address);
    }

    /// Forgets the addresses for which `listed` is false (no longer
    /// discovered) and whose wait is over at `now`. One still waiting is
    /// kept: a peer cannot reset the backoff of an address by leaving it
    /// out of one answer.
    pub(crate) fn retain(&mut self, mut listed: impl FnMut(&str) -> bool, now: Instant) {
        self.addresses.retain(|address, failures| listed(address) || now < failures.retry_at);
    }

    /// Whether `address` is given up (dialled only every [`GIVE_UP_DELAY`]).
    pub(crate) fn given_up(&self, address: &str) -> bool {
        self.addresses.get(address).is_some_and(|failures| failures.count >= MAX_DIAL_FAILURES)
    }

    /// How many addresses are backing off.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.addresses.len()
    }
}

/// A token bucket for dials: [`DIALS_PER_SECOND`] sustained,
/// [`DIAL_BURST`] at once. Sans-IO: the caller passes the time.
#[derive(Debug)]
pub(crate) struct DialRate {
    tokens: f64,
    updated: Option<Instant>,
}

impl Default for DialRate {
    fn default() -> Self {
        Self { tokens: f64::from(DIAL_BURST), updated: None }
    }
}

impl DialRate {
    /// Takes up to `wanted` dials at `now`; returns how many may go.
    pub(crate) fn take(&mut self, wanted: usize, now: Instant) -> usize {
        if let Some(updated) = self.updated {
            let refill = now.saturating_duration_since(updated).as_secs_f64() * f64::from(DIALS_PER_SECOND);
            self.tokens = (self.tokens + refill).min(f64::from(DIAL_BURST));
        }
        self.updated = Some(now);
        let granted = (self.tokens.floor() as usize).min(wanted);
        self.tokens -= granted as f64;
        granted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_one_second_to_a_minute_with_bounded_jitter_then_give_up() {
        for peer in ["12D3KooWA", "12D3KooWB", "12D3KooWC", "x"] {
            for failures in 1..MAX_DIAL_FAILURES {
                let base = FIRST_RETRY_DELAY.saturating_mul(1 << (failures - 1).min(16)).min(MAX_RETRY_DELAY);
                let delay = retry_delay(peer, failures);
                assert!(delay >= base.mul_f64(0.8) && delay <= base.mul_f64(1.2), "{peer} #{failures}: {delay:?} vs {base:?}");
                assert!(delay <= MAX_RETRY_DELAY);
            }
        }
        // The schedule's shape for one address.
        let delays: Vec<u64> = (1..=9).map(|n| retry_delay("192.0.2.1:1", n).as_millis() as u64).collect();
        let bases = [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 1_800_000, 1_800_000];
        for (delay, base) in delays.iter().zip(bases) {
            let cap = if base > 60_000 { base } else { 60_000 };
            assert!(*delay >= base * 8 / 10 && *delay <= (base * 12 / 10).min(cap), "{delays:?}");
        }
    }

    #[test]
    fn jitter_is_deterministic_and_differs_between_peers() {
        assert_eq!(retry_delay("12D3KooWA", 3), retry_delay("12D3KooWA", 3));
        let spread: std::collections::HashSet<Duration> = (0..50).map(|i| retry_delay(&format!("peer-{i}"), 5)).collect();
        assert!(spread.len() > 10, "only {} distinct delays", spread.len());
    }

    #[test]
    fn an_address_waits_after_failures_is_forgiven_on_success_and_given_up_after_many() {
        let start = Instant::now();
        let mut backoff = DialBackoff::default();
        assert!(backoff.ready("a", start));
        let first = backoff.failed("a", start);
        assert!(!backoff.ready("a", start) && backoff.ready("a", start + first));
        assert!(backoff.ready("b", start), "addresses back off independently");
        let second = backoff.failed("a", start + first);
        assert_eq!(second, retry_delay("a", 2));
        assert!(!backoff.ready("a", start + first + second - Duration::from_millis(1)));
        backoff.succeeded("a");
        assert!(backoff.ready("a", start));
        assert_eq!(backoff.failed("a", start), first, "the schedule starts over");

        // After MAX_DIAL_FAILURES in a row, an address waits GIVE_UP_DELAY.
        let (mut at, mut delay) = (start, first);
        for _ in 1..MAX_DIAL_FAILURES {
            at += delay;
            delay = backoff.failed("a", at);
        }
        assert!(backoff.given_up("a"));
        assert_eq!(delay, GIVE_UP_DELAY);
        assert!(!backoff.ready("a", at + GIVE_UP_DELAY - Duration::from_millis(1)));
        assert!(backoff.ready("a", at + GIVE_UP_DELAY));
        assert_eq!(backoff.failed("a", at + GIVE_UP_DELAY), GIVE_UP_DELAY);

        // Unlisted addresses are forgotten once their wait is over, not
        // before (leaving an address out of one answer resets nothing).
        backoff.failed("b", start);
        let later = at + GIVE_UP_DELAY;
        backoff.retain(|address| address == "c", later);
        assert_eq!(backoff.len(), 1, "a is still waiting; b's wait is over");
        assert!(backoff.given_up("a") && backoff.ready("b", start));
    }

    #[test]
    fn dials_come_in_a_burst_then_at_the_sustained_rate() {
        let start = Instant::now();
        let mut rate = DialRate::default();
        assert_eq!(rate.take(100, start), DIAL_BURST as usize);
        assert_eq!(rate.take(100, start), 0);
        assert_eq!(rate.take(100, start + Duration::from_secs(1)), DIALS_PER_SECOND as usize);
        assert_eq!(rate.take(1, start + Duration::from_millis(1_100)), 0);
        assert_eq!(rate.take(1, start + Duration::from_millis(1_250)), 1);
        // Idle time refills up to the burst, no more.
        assert_eq!(rate.take(100, start + Duration::from_secs(3_600)), DIAL_BURST as usize);
    }
}
