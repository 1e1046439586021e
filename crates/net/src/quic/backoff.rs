//! [`Backoff`]: how long to wait before redialling a peer.

use std::time::Duration;

/// The first redial delay.
pub const INITIAL_DELAY: Duration = Duration::from_millis(200);

/// The longest redial delay.
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// Exponential backoff with jitter: the n-th consecutive failure waits a
/// random time between half and all of `INITIAL_DELAY x 2^n` (capped at
/// `MAX_DELAY`), so peers that lost a common node do not all redial it in
/// the same instant.
#[derive(Clone, Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// A backoff with no failures yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets the failures (after a connection succeeded).
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The delay before the next attempt; each call counts one failure.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = Self::ceiling(self.failures);
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_millis()).unwrap_or(u64::MAX);
        // Jitter needs no cryptographic quality; a failing randomness source
        // just means no jitter.
        let random = getrandom::u64().unwrap_or(0);
        half + Duration::from_millis(if spread == 0 { 0 } else { random % (spread + 1) })
    }

    /// The delay ceiling after `failures` consecutive failures.
    fn ceiling(failures: u32) -> Duration {
        INITIAL_DELAY.saturating_mul(1u32 << failures.min(16)).min(MAX_DELAY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_with_jitter_up_to_the_cap_and_reset() {
        let mut backoff = Backoff::new();
        for failures in 0..40u32 {
            let ceiling = Backoff::ceiling(failures);
            let delay = backoff.next_delay();
            assert!(delay >= ceiling / 2 && delay <= ceiling, "{failures}: {delay:?} vs {ceiling:?}");
            assert!(delay <= MAX_DELAY);
        }
        assert_eq!(Backoff::ceiling(39), MAX_DELAY);
        backoff.reset();
        assert!(backoff.next_delay() <= INITIAL_DELAY);
    }
}
