//! [`StoreHealth`]: whether the replica's store can write, and when the
//! engine next tries to make it (see `docs/protocol.md`, "Storage faults").
//!
//! A store whose medium fails (a full disk, an I/O error) refuses writes
//! until it is recovered (redb: until the file is reopened). The engine
//! then stops writing: local writes are refused at once with the fault,
//! operations from peers are not applied and so not acknowledged (their
//! senders stop at their window and resend later), and it tries to recover
//! the store after a backoff. Once it has, it asks every connected peer for
//! what it lacks, which covers every batch that failed.

use pluresdb_core::StorageFault;
use serde::Serialize;
use std::collections::VecDeque;

/// The first retry after a fault comes at once (reads need the reopened
/// file); later ones wait this long, doubling up to [`MAX_RETRY_MS`].
const FIRST_BACKOFF_MS: u64 = 250;

/// The longest wait between two attempts to recover: the most a node stays
/// unable to write after the cause of a fault has gone.
pub const MAX_RETRY_MS: u64 = 8_000;

/// Faults further apart than this start the backoff afresh; closer ones
/// (a store that recovers and fails again at the next write, as a full disk
/// does once redb has used the free space inside its file) lengthen it.
const STREAK_RESET_MS: u64 = 30_000;

/// Store events kept until taken by [`StoreHealth::poll_event`].
const MAX_EVENTS: usize = 16;

/// A fault in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ActiveFault {
    fault: StorageFault,
    reason: String,
    since_ms: u64,
    attempts: u32,
    next_attempt_ms: u64,
}

/// What happened to the store, for a driver that logs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum StoreEvent {
    /// A write failed at the medium: writes stop until the store recovers.
    Faulted {
        fault: StorageFault,
        /// The error, on one line.
        reason: String,
        /// When the engine tries to recover it.
        retry_in_ms: u64,
    },
    /// An attempt to recover failed; the next comes after `retry_in_ms`.
    RecoveryFailed { fault: StorageFault, reason: String, attempts: u32, retry_in_ms: u64 },
    /// The store was recovered: writes and sync resume.
    Recovered {
        fault: StorageFault,
        /// How long writes were refused.
        down_ms: u64,
        /// Attempts it took.
        attempts: u32,
    },
}

/// The store's health as `/status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StoreStatus {
    /// `true` while writes are refused because the store cannot write.
    pub degraded: bool,
    /// The fault in progress.
    pub fault: Option<StorageFault>,
    /// Its error, on one line.
    pub reason: Option<String>,
    /// Since when (the engine's time, ms since the Unix epoch).
    pub since_ms: Option<u64>,
    /// Attempts to recover so far.
    pub attempts: u32,
    /// When the next attempt comes.
    pub next_attempt_ms: Option<u64>,
    /// Faults met since the replica opened.
    pub faults: u64,
    /// Recoveries since the replica opened.
    pub recoveries: u64,
    /// Operations from peers not applied because the store could not write
    /// (they are asked for again once it can).
    pub ops_not_stored: u64,
    /// Local writes (operations) refused because the store could not write.
    pub writes_refused: u64,
}

/// The engine's view of its store (see the module docs).
#[derive(Clone, Debug, Default)]
pub(crate) struct StoreHealth {
    active: Option<ActiveFault>,
    /// Faults (failed writes and failed recoveries) in the current streak.
    streak: u32,
    last_fault_ms: u64,
    faults: u64,
    recoveries: u64,
    ops_not_stored: u64,
    writes_refused: u64,
    events: VecDeque<StoreEvent>,
}

impl StoreHealth {
    /// The fault in progress, if the store cannot write now.
    pub(crate) fn fault(&self) -> Option<(StorageFault, &str)> {
        self.active.as_ref().map(|a| (a.fault, a.reason.as_str()))
    }

    pub(crate) fn is_degraded(&self) -> bool {
        self.active.is_some()
    }

    /// Notes the outcome of a store write: a fault of the medium starts (or
    /// continues) the degraded state. Other errors are not the medium's.
    pub(crate) fn note_error(&mut self, err: &pluresdb_core::Error, now_ms: u64) {
        let Some(fault) = err.storage_fault() else { return };
        let reason = fault_reason(err);
        if self.active.is_some() {
            return;
        }
        if now_ms.saturating_sub(self.last_fault_ms) > STREAK_RESET_MS {
            self.streak = 0;
        }
        self.streak += 1;
        self.last_fault_ms = now_ms;
        self.faults += 1;
        let wait = self.backoff();
        self.push(StoreEvent::Faulted { fault, reason: reason.clone(), retry_in_ms: wait });
        self.active = Some(ActiveFault { fault, reason, since_ms: now_ms, attempts: 0, next_attempt_ms: now_ms.saturating_add(wait) });
    }

    /// When the next attempt to recover is due.
    pub(crate) fn next_attempt_ms(&self) -> Option<u64> {
        self.active.as_ref().map(|a| a.next_attempt_ms)
    }

    /// Whether an attempt to recover is due at `now_ms`.
    pub(crate) fn attempt_due(&self, now_ms: u64) -> bool {
        self.active.as_ref().is_some_and(|a| now_ms >= a.next_attempt_ms)
    }

    /// Records the outcome of an attempt to recover.
    pub(crate) fn attempted(&mut self, result: Result<(), &pluresdb_core::Error>, now_ms: u64) {
        let Some(mut active) = self.active.take() else { return };
        active.attempts += 1;
        match result {
            Ok(()) => {
                self.recoveries += 1;
                self.push(StoreEvent::Recovered {
                    fault: active.fault,
                    down_ms: now_ms.saturating_sub(active.since_ms),
                    attempts: active.attempts,
                });
            }
            Err(err) => {
                self.streak += 1;
                self.last_fault_ms = now_ms;
                let wait = self.backoff();
                active.reason = fault_reason(err);
                active.fault = err.storage_fault().unwrap_or(active.fault);
                active.next_attempt_ms = now_ms.saturating_add(wait);
                self.push(StoreEvent::RecoveryFailed {
                    fault: active.fault,
                    reason: active.reason.clone(),
                    attempts: active.attempts,
                    retry_in_ms: wait,
                });
                self.active = Some(active);
            }
        }
    }

    /// The wait before the next attempt, from the streak.
    fn backoff(&self) -> u64 {
        match self.streak {
            0 | 1 => 0,
            n => FIRST_BACKOFF_MS.saturating_mul(1 << (n - 2).min(16)).min(MAX_RETRY_MS),
        }
    }

    pub(crate) fn count_not_stored(&mut self, ops: u64) {
        self.ops_not_stored += ops;
    }

    pub(crate) fn count_refused_writes(&mut self, writes: u64) {
        self.writes_refused += writes;
    }

    fn push(&mut self, event: StoreEvent) {
        if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    pub(crate) fn poll_event(&mut self) -> Option<StoreEvent> {
        self.events.pop_front()
    }

    pub(crate) fn status(&self) -> StoreStatus {
        StoreStatus {
            degraded: self.active.is_some(),
            fault: self.active.as_ref().map(|a| a.fault),
            reason: self.active.as_ref().map(|a| a.reason.clone()),
            since_ms: self.active.as_ref().map(|a| a.since_ms),
            attempts: self.active.as_ref().map_or(0, |a| a.attempts),
            next_attempt_ms: self.next_attempt_ms(),
            faults: self.faults,
            recoveries: self.recoveries,
            ops_not_stored: self.ops_not_stored,
            writes_refused: self.writes_refused,
        }
    }
}

/// The error of a fault on one line, without the "cannot write" that
/// every report of it says already.
fn fault_reason(err: &pluresdb_core::Error) -> String {
    match err {
        pluresdb_core::Error::StoreFault { source, .. } => pluresdb_core::error_chain(&**source),
        other => pluresdb_core::error_chain(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> pluresdb_core::Error {
        pluresdb_core::Error::store_fault(StorageFault::DiskFull, std::io::Error::from_raw_os_error(28))
    }

    #[test]
    fn retries_come_at_once_then_back_off_to_the_cap_and_reset_after_a_quiet_spell() {
        let mut health = StoreHealth::default();
        let mut now = 1_000_000;
        health.note_error(&full(), now);
        assert_eq!(health.next_attempt_ms(), Some(now), "the first retry is immediate");
        let mut waits = Vec::new();
        for _ in 0..8 {
            health.attempted(Err(&full()), now);
            let next = health.next_attempt_ms().unwrap();
            waits.push(next - now);
            now = next;
        }
        assert_eq!(waits, [250, 500, 1_000, 2_000, 4_000, 8_000, 8_000, 8_000]);
        health.attempted(Ok(()), now);
        assert!(!health.is_degraded());
        // Failing again at once continues the streak; after a quiet spell
        // it starts afresh.
        health.note_error(&full(), now + 10);
        assert_eq!(health.next_attempt_ms(), Some(now + 10 + MAX_RETRY_MS));
        health.attempted(Ok(()), now + 20);
        health.note_error(&full(), now + 20 + STREAK_RESET_MS + 1);
        assert_eq!(health.next_attempt_ms(), Some(now + 20 + STREAK_RESET_MS + 1));
        let status = health.status();
        assert_eq!((status.faults, status.recoveries, status.fault), (3, 2, Some(StorageFault::DiskFull)));
    }

    #[test]
    fn errors_that_are_not_the_medium_do_not_degrade() {
        let mut health = StoreHealth::default();
        health.note_error(&pluresdb_core::Error::NotFound { id: "x".into() }, 5);
        health.note_error(&pluresdb_core::Error::storage(std::io::Error::other("decode")), 5);
        assert!(!health.is_degraded());
    }
}
