//! Version vectors: for each origin, the highest sequence number applied.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// For each origin peer, the highest sequence number of its operations that
/// this replica has applied. Every replica applies an origin's operations in
/// sequence order without gaps, so the vector names exactly the set of
/// operations a replica holds; comparing two vectors tells what one lacks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct VersionVector {
    entries: BTreeMap<String, u64>,
}

impl<'de> Deserialize<'de> for VersionVector {
    /// Reads the map through [`advance`](VersionVector::advance), as the
    /// sync protocol's direct reader does, so that an entry of 0 (no
    /// operation applied) is dropped by every decoder alike: a vector that
    /// held one would encode and decode to a different vector.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(BTreeMap::<String, u64>::deserialize(deserializer)?.into_iter().collect())
    }
}

impl VersionVector {
    /// An empty vector: nothing applied.
    pub fn new() -> Self {
        Self::default()
    }

    /// The highest sequence number applied from `origin` (0 when none).
    pub fn get(&self, origin: &str) -> u64 {
        self.entries.get(origin).copied().unwrap_or(0)
    }

    /// Records that `origin`'s operations up to `seq` are applied. Never moves
    /// an entry backwards.
    pub fn advance(&mut self, origin: &str, seq: u64) {
        match self.entries.get_mut(origin) {
            Some(current) => *current = (*current).max(seq),
            None => {
                if seq > 0 {
                    self.entries.insert(origin.to_owned(), seq);
                }
            }
        }
    }

    /// Sets `origin`'s entry to `seq`, also backwards: a replica that drops
    /// the losing branch of a fork holds fewer of that origin's operations.
    pub fn set(&mut self, origin: &str, seq: u64) {
        if seq == 0 {
            self.entries.remove(origin);
        } else {
            self.entries.insert(origin.to_owned(), seq);
        }
    }

    /// Whether the operation `seq` of `origin` is covered by this vector.
    pub fn contains(&self, origin: &str, seq: u64) -> bool {
        seq <= self.get(origin)
    }

    /// The pointwise maximum of the two vectors.
    pub fn merge(&mut self, other: &VersionVector) {
        for (origin, &seq) in &other.entries {
            self.advance(origin, seq);
        }
    }

    /// Whether this vector covers everything `other` covers.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other.entries.iter().all(|(origin, &seq)| self.get(origin) >= seq)
    }

    /// For each origin where `self` is ahead of `other`, the range of sequence
    /// numbers `other` lacks, as `(origin, after, up_to)`: `other` has applied
    /// up to `after` and `self` holds up to `up_to`.
    pub fn missing_from<'a>(&'a self, other: &'a VersionVector) -> impl Iterator<Item = (&'a str, u64, u64)> + 'a {
        self.entries.iter().filter_map(move |(origin, &seq)| {
            let theirs = other.get(origin);
            (seq > theirs).then_some((origin.as_str(), theirs, seq))
        })
    }

    /// The entries of origins after `after` (from the first when `None`)
    /// through `through` (to the last when `None`), at most `limit` of them
    /// (at least one), and where that page ends: the last origin taken when
    /// the range holds more, else `through`. Paging a range this way visits
    /// every entry once, whatever the number of origins.
    pub fn page(&self, after: Option<&str>, through: Option<&str>, limit: usize) -> (VersionVector, Option<String>) {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let end = through.map_or(Bound::Unbounded, Bound::Included);
        // `range` panics on a range that ends before it starts.
        if let (Some(a), Some(t)) = (after, through) {
            if t <= a {
                return (VersionVector::new(), Some(t.to_owned()));
            }
        }
        let mut entries = self.entries.range::<str, _>((start, end));
        let page: BTreeMap<String, u64> = entries.by_ref().take(limit.max(1)).map(|(o, &s)| (o.clone(), s)).collect();
        let end = match entries.next() {
            Some(_) => page.keys().next_back().cloned(),
            None => through.map(str::to_owned),
        };
        (VersionVector { entries: page }, end)
    }

    /// Raises entries to `other`'s for the origins `known` has entries for,
    /// ignoring the rest: what a peer claims about origins this replica has
    /// never seen says nothing it can use, and keeping it would let a peer
    /// grow this vector without bound.
    pub fn merge_known(&mut self, other: &VersionVector, known: &VersionVector) {
        for (origin, &seq) in &other.entries {
            if known.entries.contains_key(origin) {
                self.advance(origin, seq);
            }
        }
    }

    /// This vector with each entry lowered to at most `bound`'s, without
    /// the origins `bound` lacks.
    pub fn clamped_to(&self, bound: &VersionVector) -> VersionVector {
        let entries = self
            .entries
            .iter()
            .filter_map(|(origin, &seq)| {
                let max = bound.get(origin);
                (max > 0).then(|| (origin.clone(), seq.min(max)))
            })
            .collect();
        VersionVector { entries }
    }

    /// Iterates `(origin, highest applied sequence)` in origin order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.entries.iter().map(|(origin, &seq)| (origin.as_str(), seq))
    }

    /// The number of origins with at least one applied operation.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no operation has been applied.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The total number of operations the vector covers.
    pub fn total(&self) -> u64 {
        self.entries.values().sum()
    }
}

impl FromIterator<(String, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (String, u64)>>(iter: I) -> Self {
        let mut vv = VersionVector::new();
        for (origin, seq) in iter {
            vv.advance(&origin, seq);
        }
        vv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(entries: &[(&str, u64)]) -> VersionVector {
        entries.iter().map(|&(o, s)| (o.to_owned(), s)).collect()
    }

    #[test]
    fn advance_never_moves_backwards() {
        let mut v = vv(&[("a", 5)]);
        v.advance("a", 3);
        assert_eq!(v.get("a"), 5);
        v.advance("b", 0);
        assert!(v.iter().all(|(o, _)| o != "b"));
    }

    #[test]
    fn a_decoded_vector_with_an_entry_of_0_round_trips() {
        // Found by the sync_message fuzz target: serde kept {"b": 0}, which
        // the direct reader of a re-encoded message then dropped.
        let bytes = crate::codec::encode(&BTreeMap::from([("a".to_string(), 3u64), ("b".to_string(), 0)]));
        let decoded: VersionVector = crate::codec::decode(&bytes, "version vector").unwrap();
        assert_eq!(decoded, vv(&[("a", 3)]));
        assert_eq!(crate::codec::decode::<VersionVector>(&crate::codec::encode(&decoded), "version vector").unwrap(), decoded);
    }

    #[test]
    fn pages_visit_every_entry_once() {
        let v: VersionVector = (0..10).map(|i| (format!("o{i}"), i + 1)).collect();
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (page, end) = v.page(after.as_deref(), None, 3);
            assert!(page.len() <= 3);
            seen.extend(page.iter().map(|(o, s)| (o.to_owned(), s)));
            match end {
                Some(end) => after = Some(end),
                None => break,
            }
        }
        assert_eq!(seen, v.iter().map(|(o, s)| (o.to_owned(), s)).collect::<Vec<_>>());
        // A bounded range ends where asked, or earlier when it is cut.
        assert_eq!(v.page(Some("o2"), Some("o4"), 10), (vv(&[("o3", 4), ("o4", 5)]), Some("o4".into())));
        assert_eq!(v.page(Some("o2"), Some("o6"), 2), (vv(&[("o3", 4), ("o4", 5)]), Some("o4".into())));
        assert_eq!(v.page(Some("o5"), Some("o1"), 2), (VersionVector::new(), Some("o1".into())));
    }

    #[test]
    fn claims_about_unknown_origins_are_not_kept() {
        let ours = vv(&[("a", 5), ("b", 2)]);
        let mut acked = VersionVector::new();
        acked.merge_known(&vv(&[("a", 9), ("fake", 7)]), &ours);
        assert_eq!(acked, vv(&[("a", 9)]));
        assert_eq!(acked.clamped_to(&ours), vv(&[("a", 5)]));
        assert_eq!(vv(&[("x", 1), ("b", 1)]).clamped_to(&ours), vv(&[("b", 1)]));
    }

    #[test]
    fn missing_from_lists_only_what_the_other_lacks() {
        let ours = vv(&[("a", 5), ("b", 2), ("c", 9)]);
        let theirs = vv(&[("a", 5), ("b", 1), ("d", 4)]);
        let missing: Vec<_> = ours.missing_from(&theirs).collect();
        assert_eq!(missing, vec![("b", 1, 2), ("c", 0, 9)]);
        assert!(!ours.dominates(&theirs));
        let mut merged = ours.clone();
        merged.merge(&theirs);
        assert!(merged.dominates(&ours) && merged.dominates(&theirs));
        assert_eq!(merged.total(), 5 + 2 + 9 + 4);
    }
}
