//! Hybrid logical clock: wall time in milliseconds plus a logical counter.
//!
//! Every operation carries an [`Hlc`] timestamp. A replica's clock moves
//! past every timestamp it has observed, so an op that causally follows
//! another always has the larger timestamp, whatever the wall clocks of the
//! two machines say.
//!
//! Observation is bounded, as Kulkarni et al. bound it with their epsilon: a
//! clock observes a remote timestamp only up to its [`horizon`], its wall time
//! plus the maximum clock drift (default [`DEFAULT_MAX_CLOCK_DRIFT`]). One
//! operation stamped years ahead (or at `u64::MAX`) therefore cannot drag
//! every replica's clock with it. The operation is not refused (skew is not a
//! reason to drop data): the replica keeps it and lets it take effect once
//! its wall clock reaches the horizon (see [`crate::Database`]).
//!
//! A clock never goes backwards, with one exception: when its own
//! timestamps ran past the horizon (they were issued while the wall clock
//! was ahead, and the wall clock has since been set right, or corrected
//! from peers' clocks), [`tick_within`](HybridLogicalClock::tick_within)
//! continues from the wall time, still after every timestamp observed from
//! others, instead of stamping every later write in the future too (which
//! would keep them from taking effect anywhere until then). The writes made
//! meanwhile keep their timestamps.
//!
//! The clock is sans-IO: the caller passes the current wall time in.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// How far past its own wall clock a replica lets a received timestamp move
/// its clock, unless configured otherwise: 5 minutes, far above what NTP
/// leaves between machines and far below what would let one member lock
/// others out of a field for long.
pub const DEFAULT_MAX_CLOCK_DRIFT: Duration = Duration::from_secs(5 * 60);

/// Bits of an [`Hlc`] that hold the logical counter.
const LOGICAL_BITS: u32 = 16;
const LOGICAL_MASK: u64 = (1 << LOGICAL_BITS) - 1;
/// The largest wall time an [`Hlc`] holds (year 10889).
const MAX_WALL_MS: u64 = u64::MAX >> LOGICAL_BITS;

/// The newest timestamp a replica whose wall clock reads `now_ms` accepts as
/// present, with `max_drift_ms` of tolerated drift: every timestamp up to the
/// millisecond `now_ms + max_drift_ms`, whatever its logical counter.
/// Operations stamped later than this wait until the wall clock catches up.
pub fn horizon(now_ms: u64, max_drift_ms: u64) -> Hlc {
    Hlc::new(now_ms.saturating_add(max_drift_ms).min(MAX_WALL_MS), u16::MAX)
}

/// A hybrid-logical-clock timestamp, packed into 64 bits: the upper 48 bits
/// are milliseconds since the Unix epoch, the lower 16 a logical counter.
///
/// Packed timestamps compare as plain integers, which keeps merge decisions
/// cheap. When more than 65,535 events share a millisecond the counter carries
/// into the millisecond field; the clock stays strictly monotonic.
///
/// Binary formats carry the packed integer; human-readable ones (JSON) the
/// string `"<wall_ms>.<logical>"` (see [`Display`](fmt::Display)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hlc(u64);

impl Serialize for Hlc {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Hlc {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            u64::deserialize(deserializer).map(Hlc)
        }
    }
}

impl std::str::FromStr for Hlc {
    type Err = String;

    /// Parses `"<wall_ms>.<logical>"`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{text:?} is not a timestamp of the form <wall_ms>.<logical>");
        let (wall, logical) = text.split_once('.').ok_or_else(bad)?;
        let wall: u64 = wall.parse().map_err(|_| bad())?;
        let logical: u16 = logical.parse().map_err(|_| bad())?;
        if wall > MAX_WALL_MS {
            return Err(bad());
        }
        Ok(Hlc::new(wall, logical))
    }
}

impl Hlc {
    /// The zero timestamp, used by operations that have not been stamped yet.
    pub const ZERO: Hlc = Hlc(0);

    /// Builds a timestamp from wall-clock milliseconds and a logical counter.
    pub fn new(wall_ms: u64, logical: u16) -> Hlc {
        Hlc((wall_ms << LOGICAL_BITS) | u64::from(logical))
    }

    /// Rebuilds a timestamp from its packed form (see [`Hlc::as_u64`]).
    pub fn from_u64(packed: u64) -> Hlc {
        Hlc(packed)
    }

    /// The packed 64-bit form.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// Milliseconds since the Unix epoch.
    pub fn wall_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    /// The logical counter within [`Hlc::wall_ms`].
    pub fn logical(self) -> u16 {
        (self.0 & LOGICAL_MASK) as u16
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.wall_ms(), self.logical())
    }
}

/// The clock of one replica.
#[derive(Clone, Debug, Default)]
pub struct HybridLogicalClock {
    /// The newest timestamp issued or observed.
    last: Hlc,
    /// The newest timestamp observed from others (at most `last`).
    observed: Hlc,
}

impl HybridLogicalClock {
    /// A clock that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock that resumes after `last` (for example the newest timestamp in
    /// a store that is being reopened), taking it as observed.
    pub fn resume_after(last: Hlc) -> Self {
        Self { last, observed: last }
    }

    /// A clock that resumes after `last`, of which only `observed` was
    /// observed from others (the rest it issued itself).
    pub fn resume(last: Hlc, observed: Hlc) -> Self {
        Self { last: last.max(observed), observed }
    }

    /// The newest timestamp issued or observed.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// The newest timestamp observed from others.
    pub fn observed(&self) -> Hlc {
        self.observed
    }

    /// Issues a timestamp for a local event at wall time `now_ms`: the larger
    /// of the wall time and one past everything seen so far.
    pub fn tick(&mut self, now_ms: u64) -> Hlc {
        let wall = Hlc::new(now_ms.min(MAX_WALL_MS), 0);
        let next = wall.max(Hlc(self.last.0.saturating_add(1)));
        self.last = next;
        next
    }

    /// [`tick`](Self::tick) for a replica whose `horizon` (see [`horizon`])
    /// is the present: if the clock's own timestamps ran past it, it first
    /// steps back to the newest timestamp observed from others, so the
    /// timestamp issued is the wall time again (or just after what was
    /// observed).
    pub fn tick_within(&mut self, now_ms: u64, horizon: Hlc) -> Hlc {
        if self.last > horizon {
            self.last = self.observed;
        }
        self.tick(now_ms)
    }

    /// Takes a timestamp seen on a remote operation into account, so that
    /// every later [`tick`](Self::tick) is greater than it, unless it lies
    /// beyond `horizon` (see [`horizon`]): then the clock stays where it is
    /// and this returns `false`. A caller observes such a timestamp again
    /// once its horizon has moved past it.
    pub fn observe(&mut self, remote: Hlc, horizon: Hlc) -> bool {
        if remote > horizon {
            return false;
        }
        self.last = self.last.max(remote);
        self.observed = self.observed.max(remote);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_strictly_monotonic_even_when_wall_time_goes_back() {
        let mut clock = HybridLogicalClock::new();
        let a = clock.tick(1_000);
        let b = clock.tick(900);
        let c = clock.tick(1_000);
        assert!(a < b && b < c);
        assert_eq!(a, Hlc::new(1_000, 0));
        assert_eq!(b, Hlc::new(1_000, 1));
        assert_eq!(c, Hlc::new(1_000, 2));
    }

    #[test]
    fn observing_a_clock_ahead_within_the_drift_moves_past_it() {
        let mut clock = HybridLogicalClock::new();
        clock.tick(1_000);
        let remote = Hlc::new(5_000, 7);
        assert!(clock.observe(remote, horizon(1_001, 4_000)));
        let next = clock.tick(1_001);
        assert!(next > remote);
        assert_eq!(next, Hlc::new(5_000, 8));
    }

    #[test]
    fn a_timestamp_beyond_the_drift_does_not_move_the_clock() {
        let now = 1_700_000_000_000;
        let drift = DEFAULT_MAX_CLOCK_DRIFT.as_millis() as u64;
        let mut clock = HybridLogicalClock::new();
        clock.tick(now);
        let years_ahead = Hlc::new(now + 3 * 365 * 24 * 3_600_000, 0);
        for remote in [years_ahead, Hlc::from_u64(u64::MAX), Hlc::new(now + drift + 1, 0)] {
            assert!(!clock.observe(remote, horizon(now, drift)), "{remote}");
            assert_eq!(clock.last(), Hlc::new(now, 0), "{remote} moved the clock");
        }
        // The last millisecond within the drift is observed, whatever its
        // logical counter.
        assert!(clock.observe(Hlc::new(now + drift, u16::MAX), horizon(now, drift)));
        assert_eq!(clock.tick(now + 1), Hlc::new(now + drift + 1, 0));
        // Later, the same far timestamp is within the horizon.
        assert!(clock.observe(years_ahead, horizon(years_ahead.wall_ms() - drift, drift)));
        assert_eq!(clock.last(), years_ahead);
    }

    #[test]
    fn a_clock_that_ran_ahead_on_its_own_continues_from_the_wall_time() {
        let year = 365 * 24 * 3_600_000;
        let mut clock = HybridLogicalClock::new();
        assert!(clock.observe(Hlc::new(1_000, 3), horizon(1_000, 10)));
        // Writes while the wall clock read a year ahead.
        assert_eq!(clock.tick_within(1_000 + year, horizon(1_000 + year, 10)), Hlc::new(1_000 + year, 0));
        // The wall clock is right again: the next write is at the wall time.
        assert_eq!(clock.tick_within(1_200, horizon(1_200, 10)), Hlc::new(1_200, 0));
        // Never before what was observed from others.
        assert_eq!(clock.tick_within(900, horizon(900, 10)), Hlc::new(1_000, 4));
        let mut clock = HybridLogicalClock::resume(Hlc::new(5_000 + year, 0), Hlc::new(5_000, 9));
        assert_eq!(clock.tick_within(2_000, horizon(2_000, 10)), Hlc::new(5_000, 10));
        // Within the horizon it never goes back.
        let mut clock = HybridLogicalClock::resume(Hlc::new(1_005, 0), Hlc::ZERO);
        assert_eq!(clock.tick_within(1_000, horizon(1_000, 10)), Hlc::new(1_005, 1));
    }

    #[test]
    fn logical_counter_carries_into_milliseconds() {
        let mut clock = HybridLogicalClock::resume_after(Hlc::new(10, u16::MAX));
        assert_eq!(clock.tick(0), Hlc::new(11, 0));
    }

    #[test]
    fn human_readable_form_round_trips() {
        let t = Hlc::new(1_700_000_000_123, 42);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"1700000000123.42\"");
        assert_eq!(serde_json::from_str::<Hlc>(&json).unwrap(), t);
        assert!("12".parse::<Hlc>().is_err());
        assert!("1.99999".parse::<Hlc>().is_err());
    }

    #[test]
    fn an_absurd_clock_saturates_instead_of_overflowing() {
        let mut clock = HybridLogicalClock::resume_after(Hlc::from_u64(u64::MAX));
        assert_eq!(clock.tick(5).as_u64(), u64::MAX);
        assert_eq!(horizon(u64::MAX, 1), Hlc::from_u64(u64::MAX));
    }
}
