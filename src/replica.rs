//! Opening the replica in a data directory.

use crate::cli::Resolver;
use pluresdb_core::{ConflictResolver, Database, FirstWriterWins, KeepAll, LastWriterWins};
use pluresdb_security::OpSignatureVerifier;
use pluresdb_store_redb::RedbStore;
use std::path::Path;
use std::sync::Arc;

pub type Replica = Database<RedbStore>;

/// Opens (creating on first use) the replica in `dir`: its store, and the
/// identity whose peer id authors its writes; the store keeps a page cache
/// of `cache_bytes`.
pub fn open(dir: &Path, resolver: Resolver, cache_bytes: usize) -> anyhow::Result<Replica> {
    create_private_dir(dir)?;
    // redb creates its file with the default mode (0644 under the usual
    // umask); an empty file made owner-only first is one it initializes.
    let data_file = dir.join(pluresdb_store_redb::DATA_FILE);
    create_private_file(&data_file)?;
    crate::keys::make_owner_only(&data_file)?;
    // The write-ahead log holds the latest writes (the store creates it
    // owner-only; one restored or copied may not be).
    crate::keys::make_owner_only(&dir.join(pluresdb_store_redb::LOG_FILE))?;
    // The store first: it holds the directory's lock.
    let mut store = RedbStore::open_with_cache(dir, cache_bytes)?;
    // Before the identity is read: a copy of a data directory takes its own.
    crate::instance::check_home(dir, &mut store)?;
    let identity = crate::keys::identity(dir)?;
    // A fresh node starts a network of its own (until it joins another).
    crate::keys::network_secret(dir)?;
    let peer_id = identity.peer_id().to_string();
    tracing::debug!(data_dir = %dir.display(), %peer_id, "opened replica");
    // Local writes are signed with the node's key; operations from peers
    // must verify against their origins' keys.
    Ok(Database::open(store, peer_id)?
        .with_resolver(resolver_for(resolver))
        .with_signer(Arc::new(identity))
        .with_verifier(Arc::new(OpSignatureVerifier)))
}

/// Creates a missing data directory readable by its owner only (it holds
/// the node's keys and data); warns about an existing one that other users
/// can read (they could read the replica, though not the keys).
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir).map(|m| m.permissions().mode() & 0o777).unwrap_or(0o700);
            if mode & 0o077 != 0 {
                tracing::warn!(
                    data_dir = %dir.display(),
                    mode = format!("{mode:o}"),
                    "the data directory is open to other users, who can read its data: run `chmod 700 {}`",
                    dir.display()
                );
            }
        }
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|err| anyhow::anyhow!("cannot create data directory {}: {err}", dir.display()))
}

/// Creates `path` empty and owner-only if it does not exist.
fn create_private_file(path: &Path) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(anyhow::anyhow!("cannot create {}: {err}", path.display())),
    }
}

pub fn resolver_for(resolver: Resolver) -> Arc<dyn ConflictResolver> {
    match resolver {
        Resolver::LastWriterWins => Arc::new(LastWriterWins),
        Resolver::FirstWriterWins => Arc::new(FirstWriterWins),
        Resolver::KeepAll => Arc::new(KeepAll),
    }
}
