//! Where a data directory lives, so that a copy of it is told apart from
//! the original before it writes anything.
//!
//! A data directory copied to another machine or another path (a backup
//! restored elsewhere, a copy made to set up a second node) holds the
//! original's key: both would write operations under one peer id with the
//! same sequence numbers, a fork. So the store records where it lives (this
//! machine's id, `/etc/machine-id`, and the directory's canonical path);
//! a directory that opens anywhere else is a copy (or was moved) and takes a
//! new identity first. The operations it holds under the old id stay: they
//! are the original's, identical in both copies, and keep syncing as such.
//! A backup restored in place is not a copy; its peers tell it what it lacks
//! of its own chain (see the runtime's writer and `docs/protocol.md`,
//! "Forks").

use anyhow::Context;
use pluresdb_core::{Store, WriteBatch};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The metadata key of the directory's recorded home.
const HOME_META_KEY: &str = "instance.home";

/// Where the files that name this machine are, first found first.
const MACHINE_ID_FILES: [&str; 2] = ["/etc/machine-id", "/var/lib/dbus/machine-id"];

/// Where a data directory was last opened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Home {
    /// The machine's id, if it has one.
    machine: Option<String>,
    /// The directory's canonical path.
    path: String,
}

impl std::fmt::Display for Home {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on machine {}", self.path, self.machine.as_deref().unwrap_or("(no machine id)"))
    }
}

fn machine_id() -> Option<String> {
    MACHINE_ID_FILES.iter().find_map(|file| std::fs::read_to_string(file).ok().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()))
}

/// Checks that the data directory `dir` (whose store is `store`) is where
/// it was last opened. If it is not, it is a copy: its identity key is kept
/// under another name as a record and a new one is made, before anything
/// is written. Then records where it is now.
pub fn check_home(dir: &Path, store: &mut impl Store) -> anyhow::Result<()> {
    let path = std::fs::canonicalize(dir).with_context(|| format!("cannot resolve the data directory {}", dir.display()))?;
    let here = Home { machine: machine_id(), path: path.to_string_lossy().into_owned() };
    let recorded: Option<Home> = match store.meta(HOME_META_KEY)? {
        Some(bytes) => Some(pluresdb_core::codec::decode(&bytes, "data directory home")?),
        None => None,
    };
    match &recorded {
        Some(home) if *home == here => return Ok(()),
        Some(home) => move_identity(dir, home, &here)?,
        None => {}
    }
    let batch = WriteBatch { meta: vec![(HOME_META_KEY.to_owned(), pluresdb_core::codec::encode(&here))], ..WriteBatch::default() };
    store.commit(&batch)?;
    Ok(())
}

/// Gives the copy in `dir` a new identity: the old key file is renamed
/// (`identity.key.copy-of-<peer id>`), and the next load makes a new key.
fn move_identity(dir: &Path, was: &Home, now: &Home) -> anyhow::Result<()> {
    let key = dir.join(crate::keys::IDENTITY_FILE);
    if !key.exists() {
        return Ok(());
    }
    let old = crate::keys::identity(dir)?.peer_id().to_string();
    let record = dir.join(format!("{}.copy-of-{old}", crate::keys::IDENTITY_FILE));
    std::fs::rename(&key, &record).with_context(|| format!("cannot rename {} to {}", key.display(), record.display()))?;
    let new = crate::keys::identity(dir)?.peer_id().to_string();
    tracing::warn!(
        was = %was,
        now = %now,
        old_peer_id = %old,
        new_peer_id = %new,
        old_key = %record.display(),
        "this data directory is a copy (or was moved): it was last opened elsewhere, and writing under the original's \
         identity would fork its log, so it takes a new identity; the operations it holds keep their origin"
    );
    eprintln!("pluresdb: {} is a copy of the data directory at {was}: it is now node {new} (was {old})", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pluresdb_core::MemoryStore;

    #[test]
    fn a_directory_opened_elsewhere_takes_a_new_identity() {
        let root = tempfile::tempdir().unwrap();
        let original = root.path().join("a");
        std::fs::create_dir(&original).unwrap();
        let mut store = MemoryStore::new();
        let first = crate::keys::identity(&original).unwrap().peer_id().to_string();
        check_home(&original, &mut store).unwrap();
        check_home(&original, &mut store).unwrap();
        assert_eq!(crate::keys::identity(&original).unwrap().peer_id().to_string(), first, "the same place: the same node");

        // The copy: the same files (and store) at another path.
        let copy = root.path().join("b");
        std::fs::create_dir(&copy).unwrap();
        std::fs::copy(original.join(crate::keys::IDENTITY_FILE), copy.join(crate::keys::IDENTITY_FILE)).unwrap();
        check_home(&copy, &mut store).unwrap();
        let moved = crate::keys::identity(&copy).unwrap().peer_id().to_string();
        assert_ne!(moved, first);
        assert!(copy.join(format!("{}.copy-of-{first}", crate::keys::IDENTITY_FILE)).exists(), "the old key is kept as a record");
        // From now on the copy is at home where it is.
        check_home(&copy, &mut store).unwrap();
        assert_eq!(crate::keys::identity(&copy).unwrap().peer_id().to_string(), moved);
    }
}
