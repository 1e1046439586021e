//! [`ReplayWindow`]: which message counters a receiver has accepted.

/// How many counters behind the newest one the window still remembers.
pub const REPLAY_WINDOW: u64 = 1024;

const WORDS: usize = (REPLAY_WINDOW / 64) as usize;

/// A sliding bitmap over the last [`REPLAY_WINDOW`] message counters (as in
/// IPsec and WireGuard): a counter seen before is a replay, one newer than
/// everything seen moves the window, one inside the window that was not seen
/// is accepted (reordering), one behind it is too old to tell.
#[derive(Clone, Debug, Default)]
pub(crate) struct ReplayWindow {
    /// The highest accepted counter, if any.
    newest: Option<u64>,
    /// Bit `d` (word `d / 64`, bit `d % 64`) is set when `newest - d` was accepted.
    seen: [u64; WORDS],
}

/// Why [`ReplayWindow::check`] refused a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Replayed,
    TooOld { newest: u64 },
}

impl ReplayWindow {
    /// Whether `counter` may be accepted. Does not change the window: the
    /// caller marks the counter only after the message authenticates, so a
    /// forged header cannot move the window.
    pub(crate) fn check(&self, counter: u64) -> Result<(), Refusal> {
        let Some(newest) = self.newest else { return Ok(()) };
        if counter > newest {
            return Ok(());
        }
        let age = newest - counter;
        if age >= REPLAY_WINDOW {
            return Err(Refusal::TooOld { newest });
        }
        if self.seen[(age / 64) as usize] & (1 << (age % 64)) != 0 {
            return Err(Refusal::Replayed);
        }
        Ok(())
    }

    /// The highest accepted counter, if any.
    pub(crate) fn newest(&self) -> Option<u64> {
        self.newest
    }

    /// Records `counter` as accepted. Call only after [`ReplayWindow::check`]
    /// allowed it.
    pub(crate) fn mark(&mut self, counter: u64) {
        let newest = match self.newest {
            None => {
                self.newest = Some(counter);
                self.seen = [0; WORDS];
                self.seen[0] = 1;
                return;
            }
            Some(newest) => newest,
        };
        if counter > newest {
            self.shift(counter - newest);
            self.newest = Some(counter);
            self.seen[0] |= 1;
        } else {
            let age = newest - counter;
            if age < REPLAY_WINDOW {
                self.seen[(age / 64) as usize] |= 1 << (age % 64);
            }
        }
    }

    /// Ages every remembered counter by `by` positions.
    fn shift(&mut self, by: u64) {
        if by >= REPLAY_WINDOW {
            self.seen = [0; WORDS];
            return;
        }
        let words = (by / 64) as usize;
        let bits = (by % 64) as u32;
        for i in (0..WORDS).rev() {
            let low = if i >= words { self.seen[i - words] } else { 0 };
            let carry = if bits != 0 && i > words { self.seen[i - words - 1] >> (64 - bits) } else { 0 };
            self.seen[i] = if bits == 0 { low } else { (low << bits) | carry };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// The window's contract, stated over a set of every accepted counter.
    fn model(accepted: &BTreeSet<u64>, counter: u64) -> Result<(), Refusal> {
        match accepted.iter().next_back() {
            None => Ok(()),
            Some(&newest) if counter > newest => Ok(()),
            Some(&newest) if newest - counter >= REPLAY_WINDOW => Err(Refusal::TooOld { newest }),
            Some(_) if accepted.contains(&counter) => Err(Refusal::Replayed),
            Some(_) => Ok(()),
        }
    }

    proptest! {
        #[test]
        fn window_agrees_with_a_set_of_accepted_counters(
            start in 0u64..u64::MAX / 2,
            steps in proptest::collection::vec(0u64..3000, 1..300),
        ) {
            let mut window = ReplayWindow::default();
            let mut accepted = BTreeSet::new();
            for step in steps {
                // Mostly near the newest counter, sometimes far ahead.
                let counter = start + step;
                let expected = model(&accepted, counter);
                prop_assert_eq!(window.check(counter), expected);
                if expected.is_ok() {
                    window.mark(counter);
                    accepted.insert(counter);
                }
            }
        }
    }

    #[test]
    fn reordered_within_the_window_is_accepted_once() {
        let mut window = ReplayWindow::default();
        for counter in [5, 3, 1000, 4, 2, 1] {
            assert_eq!(window.check(counter), Ok(()));
            window.mark(counter);
        }
        for counter in [5, 3, 1000, 4, 2, 1] {
            assert_eq!(window.check(counter), Err(Refusal::Replayed));
        }
        window.mark(1025);
        assert_eq!(window.check(1), Err(Refusal::TooOld { newest: 1025 }));
        assert_eq!(window.check(2), Err(Refusal::Replayed));
        assert_eq!(window.check(6), Ok(()));
    }
}
