//! The store's table of origins: each origin (a peer id, 52 characters)
//! that a stored node record's stamps name gets a number, and the record
//! names it by that number (see [`NodeRecord::encode_stored`]): a third of
//! a record written by one operation was its origin.
//!
//! The table is kept in [`META`](crate::META) under `store.origin.<n>`
//! (`n` in decimal), one entry an origin. An entry is written in the commit
//! whose records first use its number, as part of the log record's meta
//! changes, so a redo of the log rebuilds it with the records; a commit
//! that fails leaves its new numbers in memory (they keep their origins)
//! and the next commit writes them. Numbers are given in order and never
//! change or go away, so a reader holding the table as it was when a
//! record was committed, or later, reads the record right.
//!
//! [`NodeRecord::encode_stored`]: pluresdb_core::NodeRecord::encode_stored

use pluresdb_core::Error;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// The prefix of the table's keys in the meta table.
pub const META_PREFIX: &str = "store.origin.";

/// The most origins the table numbers; records name any further origin by
/// its text. Bounds the table whatever the peers send.
const MAX_ORIGINS: usize = 1 << 20;

/// The table as readers use it (number -> origin); it only grows. A reader
/// takes a snapshot (the lock is held for an `Arc` clone, never while it
/// decodes), and a new origin replaces the snapshot with a longer copy, so
/// a long scan never holds up the writer.
pub type Shared = Arc<RwLock<Arc<Vec<Arc<str>>>>>;

/// A snapshot of the table.
pub fn snapshot(shared: &Shared) -> Arc<Vec<Arc<str>>> {
    shared.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
}

/// The writer's side of the table: the origins' numbers and which of them
/// the file holds.
pub struct OriginIndex {
    shared: Shared,
    /// Number -> origin, as in `shared` (kept here so the writer never
    /// waits for a reader's lock to write a record).
    names: Vec<Arc<str>>,
    numbers: HashMap<Arc<str>, u32>,
    /// How many of the entries the file holds: those of every commit that
    /// succeeded.
    persisted: usize,
    /// The origin looked up last: a batch's records usually all name the
    /// same one, as the same `Arc`.
    last: Option<(Arc<str>, u32)>,
}

impl OriginIndex {
    /// The writer's index over `shared`, which holds what the file holds.
    pub fn new(shared: Shared) -> Self {
        let names = snapshot(&shared).to_vec();
        let numbers = names.iter().enumerate().map(|(i, name)| (name.clone(), i as u32)).collect();
        Self { persisted: names.len(), shared, names, numbers, last: None }
    }

    /// The table as readers use it.
    pub fn shared(&self) -> Shared {
        self.shared.clone()
    }

    /// The number of `origin`, given now if it has none (and the table is
    /// not full).
    pub fn number(&mut self, origin: &Arc<str>) -> Option<u32> {
        if let Some((last, n)) = &self.last {
            if Arc::ptr_eq(last, origin) || **last == **origin {
                return Some(*n);
            }
        }
        let n = match self.numbers.get(origin) {
            Some(&n) => n,
            None if self.names.len() < MAX_ORIGINS => {
                let n = self.names.len() as u32;
                self.names.push(origin.clone());
                self.numbers.insert(origin.clone(), n);
                // Readers see it before any record that uses it commits.
                let mut table = self.shared.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                Arc::make_mut(&mut table).push(origin.clone());
                n
            }
            None => return None,
        };
        self.last = Some((origin.clone(), n));
        Some(n)
    }

    /// The entries the file does not hold yet, as meta keys and values:
    /// what the commit being encoded writes.
    pub fn unwritten(&self) -> impl Iterator<Item = (String, &[u8])> + '_ {
        self.names[self.persisted..].iter().enumerate().map(|(i, name)| (key(self.persisted + i), name.as_bytes()))
    }

    /// Records that a commit succeeded: the file holds every entry.
    pub fn written(&mut self) {
        self.persisted = self.names.len();
    }
}

/// The meta key of entry `n`.
fn key(n: usize) -> String {
    format!("{META_PREFIX}{n}")
}

/// Reads the table from the meta entries `entries` (key, value) whose keys
/// start with [`META_PREFIX`]. Entries must number `0..count` without a
/// gap, each once, and hold UTF-8: anything else is an error (so a damaged
/// table is never read as another one).
pub fn load(entries: Vec<(String, Vec<u8>)>) -> Result<Vec<Arc<str>>, Error> {
    let damaged = |reason: String| Error::Decode { what: "origin table", reason };
    let mut found: Vec<(usize, Arc<str>)> = Vec::new();
    for (meta_key, value) in &entries {
        let meta_key = meta_key.as_str();
        let number = meta_key.strip_prefix(META_PREFIX).and_then(|n| n.parse::<usize>().ok()).filter(|&n| key(n) == meta_key);
        let Some(number) = number else {
            return Err(damaged(format!("{meta_key:?} is not an entry's key")));
        };
        let name = std::str::from_utf8(value.as_slice()).map_err(|_| damaged(format!("entry {number} is not UTF-8")))?;
        found.push((number, Arc::from(name)));
    }
    found.sort_by_key(|(n, _)| *n);
    found
        .into_iter()
        .enumerate()
        .map(|(i, (n, name))| if i == n { Ok(name) } else { Err(damaged(format!("entry {i} is missing or repeated"))) })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_given_in_order_and_unwritten_until_a_commit_succeeds() {
        let shared: Shared = Arc::new(RwLock::new(Arc::new(vec![Arc::from("a")])));
        let mut index = OriginIndex::new(shared.clone());
        let before = snapshot(&shared);
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"), Arc::from("c"));
        assert_eq!(index.number(&a), Some(0));
        assert_eq!(index.number(&b), Some(1));
        assert_eq!(index.unwritten().collect::<Vec<_>>(), vec![("store.origin.1".to_owned(), &b"b"[..])]);
        // A commit that failed: its number stays, and the next commit
        // writes it with its own.
        assert_eq!(index.number(&c), Some(2));
        assert_eq!(index.number(&Arc::from("b")), Some(1));
        assert_eq!(index.unwritten().count(), 2);
        assert_eq!(*snapshot(&shared), vec![a.clone(), b, c]);
        // A reader's snapshot taken before stays as it was.
        assert_eq!(*before, vec![a.clone()]);
        index.written();
        assert_eq!(index.unwritten().count(), 0);
        assert_eq!(index.number(&a), Some(0));
    }

    #[test]
    fn a_table_with_a_gap_or_a_foreign_key_is_an_error() {
        let read = |entries: &[(&str, &[u8])]| load(entries.iter().map(|&(k, v)| (k.to_owned(), v.to_vec())).collect());
        assert_eq!(read(&[("store.origin.1", b"b"), ("store.origin.0", b"a")]).unwrap(), vec![Arc::from("a"), Arc::from("b")]);
        assert!(read(&[]).unwrap().is_empty());
        for bad in [
            &[("store.origin.1", &b"b"[..])][..],
            &[("store.origin.0", b"a"), ("store.origin.0", b"b")],
            &[("store.origin.01", b"a")],
            &[("store.origin.x", b"a")],
            &[("store.origin.0", b"\xff")],
            &[("store.origin.18446744073709551615", b"a")],
        ] {
            assert!(read(bad).is_err(), "{bad:?}");
        }
    }
}
