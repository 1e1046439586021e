//! The node's own wall clock against its peers'.
//!
//! Each connected peer's heartbeats say how far its wall clock is from this
//! node's (net's `PeerManager::clock_offsets`). When the median over the
//! nodes this one sees (itself included, at offset 0) puts its clock off by
//! more than the drift bound, this node's clock is the odd one out: it says
//! so loudly and writes, and judges received timestamps, with corrected time
//! (wall time + that median) until its clock agrees again. With no majority
//! (two nodes that disagree) nothing is corrected, and the disagreement is
//! still reported. Once correcting, the node follows the median of its
//! peers' offsets, and keeps its correction while it has no peer to ask, so
//! losing a link does not send it back to writing with a wrong clock.
//! CockroachDB checks its nodes' clocks the same way (the median offset to
//! the others against a maximum), and stops the node; a local-first node
//! keeps working instead.

use pluresdb_security::PeerId;
use std::collections::BTreeMap;
use std::time::Duration;

/// The correction a node applies to its wall clock, from its peers' clocks.
#[derive(Debug)]
pub(crate) struct ClockCorrection {
    bound_ms: i64,
    /// The correction applied now (0 when none).
    offset_ms: i64,
    /// The peers reported as disagreeing (beyond the bound, after the
    /// correction), with the offset reported.
    disagreeing: BTreeMap<PeerId, i64>,
}

impl ClockCorrection {
    /// No correction yet; `bound` is the maximum clock drift.
    pub(crate) fn new(bound: Duration) -> Self {
        Self { bound_ms: i64::try_from(bound.as_millis()).unwrap_or(i64::MAX), offset_ms: 0, disagreeing: BTreeMap::new() }
    }

    /// Takes the connected peers' clock offsets (their wall clock minus
    /// this node's, ms); logs what changed and returns the new correction
    /// when it changed.
    pub(crate) fn update(&mut self, offsets: &[(PeerId, i64)]) -> Option<i64> {
        let previous = self.offset_ms;
        let peers = offsets.iter().map(|(_, offset)| *offset);
        let median = if self.offset_ms == 0 {
            // Is this node the odd one out? Itself counts, at offset 0.
            median_nearest(peers.chain([0]), 0)
        } else if offsets.is_empty() {
            // No one to ask: keep the correction.
            self.offset_ms
        } else {
            // Correcting: follow the peers.
            median_nearest(peers, self.offset_ms)
        };
        if self.offset_ms == 0 {
            if median.unsigned_abs() > self.bound_ms.unsigned_abs() {
                self.offset_ms = median;
                tracing::warn!(
                    correction_ms = median,
                    peers = offsets.len(),
                    "this node's wall clock is {} {} most of its peers' (more than the {} s drift bound): it writes with corrected time until its clock agrees again; fix the system clock",
                    describe(median.unsigned_abs()),
                    if median < 0 { "ahead of" } else { "behind" },
                    self.bound_ms / 1_000
                );
            }
        } else if median.unsigned_abs() <= (self.bound_ms / 2).unsigned_abs() {
            self.offset_ms = 0;
            tracing::warn!(peers = offsets.len(), "this node's wall clock agrees with its peers' again: it writes with its own time");
        } else {
            // Follow the estimate quietly; say so again only if it moved by
            // more than the bound.
            if (median - self.offset_ms).unsigned_abs() > self.bound_ms.unsigned_abs() {
                tracing::warn!(
                    correction_ms = median,
                    "the correction of this node's wall clock changed to {}",
                    describe(median.unsigned_abs())
                );
            }
            self.offset_ms = median;
        }
        self.report_disagreeing(offsets);
        (self.offset_ms != previous).then_some(self.offset_ms)
    }

    /// Says once per peer (while it stays connected and keeps disagreeing)
    /// that its clock disagrees with this node's corrected time.
    fn report_disagreeing(&mut self, offsets: &[(PeerId, i64)]) {
        let mut now = BTreeMap::new();
        for (peer, offset) in offsets {
            let off = offset - self.offset_ms;
            if off.unsigned_abs() <= self.bound_ms.unsigned_abs() {
                continue;
            }
            if !self.disagreeing.contains_key(peer) {
                tracing::warn!(
                    %peer,
                    offset_ms = off,
                    "peer's wall clock is {} {} this node's (more than the {} s drift bound): its writes take effect here only when their time comes",
                    describe(off.unsigned_abs()),
                    if off > 0 { "ahead of" } else { "behind" },
                    self.bound_ms / 1_000
                );
            }
            now.insert(*peer, off);
        }
        self.disagreeing = now;
    }
}

/// The median of `values` (`anchor` when there are none); of the two middle
/// values of an even count, the one nearer `anchor` (no majority, no change).
fn median_nearest(values: impl Iterator<Item = i64>, anchor: i64) -> i64 {
    let mut all: Vec<i64> = values.collect();
    if all.is_empty() {
        return anchor;
    }
    all.sort_unstable();
    let middle = all.len() / 2;
    if all.len() % 2 == 1 {
        all[middle]
    } else {
        let (low, high) = (all[middle - 1], all[middle]);
        if low.abs_diff(anchor) <= high.abs_diff(anchor) {
            low
        } else {
            high
        }
    }
}

/// `ms` in the largest unit that keeps it readable (`3 s`, `12 min`, `365 d`).
fn describe(ms: u64) -> String {
    match ms {
        ms if ms >= 2 * 86_400_000 => format!("{} d", ms / 86_400_000),
        ms if ms >= 2 * 3_600_000 => format!("{} h", ms / 3_600_000),
        ms if ms >= 2 * 60_000 => format!("{} min", ms / 60_000),
        ms => format!("{} s", ms / 1_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(300);
    const YEAR: i64 = 365 * 86_400_000;

    fn peer(i: usize) -> PeerId {
        pluresdb_security::Identity::from_seed([i as u8; 32]).peer_id()
    }

    fn offsets(values: &[i64]) -> Vec<(PeerId, i64)> {
        values.iter().enumerate().map(|(i, &v)| (peer(i), v)).collect()
    }

    #[test]
    fn a_node_whose_peers_agree_it_is_off_corrects_by_their_median() {
        let mut clock = ClockCorrection::new(BOUND);
        // Two peers a year behind this node, one not yet measured: the
        // median of {0, -1y, -1y} is -1y.
        assert_eq!(clock.update(&offsets(&[-YEAR, -YEAR - 40])), Some(-YEAR));
        assert_eq!(clock.offset_ms, -YEAR);
        // Jitter moves it quietly; a change is returned each time.
        assert_eq!(clock.update(&offsets(&[-YEAR + 5, -YEAR - 40])), Some(-YEAR + 5));
        assert_eq!(clock.update(&offsets(&[-YEAR + 5, -YEAR - 40])), None);
        // A peer leaves, then the other: the correction stays.
        assert_eq!(clock.update(&offsets(&[-YEAR + 5])), None);
        assert_eq!(clock.update(&[]), None);
        assert_eq!(clock.offset_ms, -YEAR + 5);
        // The system clock was fixed: the offsets are near 0 again.
        assert_eq!(clock.update(&offsets(&[3, -2])), Some(0));
    }

    #[test]
    fn a_node_in_the_majority_or_without_one_does_not_correct() {
        let mut honest = ClockCorrection::new(BOUND);
        // One fast peer among three agreeing nodes.
        assert_eq!(honest.update(&offsets(&[YEAR, 10])), None);
        assert_eq!(honest.offset_ms, 0);
        assert_eq!(honest.disagreeing.keys().copied().collect::<Vec<_>>(), [peer(0)]);
        // Two nodes that disagree: no majority either way.
        let mut pair = ClockCorrection::new(BOUND);
        assert_eq!(pair.update(&offsets(&[-YEAR])), None);
        assert_eq!(pair.disagreeing.len(), 1, "still reported");
        // Within the bound nothing happens.
        let mut near = ClockCorrection::new(BOUND);
        assert_eq!(near.update(&offsets(&[200_000, 250_000])), None);
        assert!(near.disagreeing.is_empty());
    }

    #[test]
    fn medians_break_ties_toward_the_anchor() {
        assert_eq!(median_nearest([].into_iter(), 7), 7);
        assert_eq!(median_nearest([-5, -7, 0].into_iter(), 0), -5);
        assert_eq!(median_nearest([9, 1, 8, 0].into_iter(), 0), 1, "{{0, 1, 8, 9}}: 1 is nearer 0");
        assert_eq!(median_nearest([-YEAR, 0].into_iter(), -YEAR), -YEAR);
        assert_eq!(describe(YEAR as u64), "365 d");
        assert_eq!(describe(90_000), "90 s");
    }
}
