//! Whom the node syncs with: the access mode and the allowlist, kept in the
//! replica's metadata.

use crate::{Error, Handle};
use pluresdb_core::Store;
use std::collections::BTreeSet;

/// The metadata key of the allowlist (CBOR list of peer ids).
const ALLOWLIST_META_KEY: &str = "trust.allowlist";

/// The metadata key of the access mode ("secret", "allowlist" or "open").
const ACCESS_MODE_META_KEY: &str = "trust.mode";

pub use pluresdb_security::AccessMode;

/// The access mode stored in `store` (secret when none is).
pub fn stored_access_mode<S: Store>(store: &S) -> Result<AccessMode, Error> {
    let stored = store.meta(ACCESS_MODE_META_KEY)?;
    Ok(stored.and_then(|bytes| std::str::from_utf8(&bytes).ok().and_then(AccessMode::from_name)).unwrap_or_default())
}

/// The allowlist stored in `store`.
pub fn stored_allowlist<S: Store>(store: &S) -> Result<BTreeSet<String>, Error> {
    match store.meta(ALLOWLIST_META_KEY)? {
        Some(bytes) => Ok(pluresdb_core::codec::decode(&bytes, "allowlist")?),
        None => Ok(BTreeSet::new()),
    }
}

impl Handle {
    /// The access mode (secret by default).
    pub fn access_mode(&self) -> Result<AccessMode, Error> {
        stored_access_mode(self.reader().store())
    }

    /// Sets the access mode.
    pub async fn set_access_mode(&self, mode: AccessMode) -> Result<(), Error> {
        let _guard = self.inner.meta_lock.lock().await;
        self.commit_meta(vec![(ACCESS_MODE_META_KEY.to_owned(), mode.name().as_bytes().to_vec())]).await?;
        self.access_changed()
    }

    /// Tells the transport the access rule in force now.
    fn access_changed(&self) -> Result<(), Error> {
        if let Some(hook) = self.inner.link.as_ref().and_then(|l| l.on_access_change.as_ref()) {
            hook(self.access_mode()?, self.allowlist()?);
        }
        Ok(())
    }

    /// The allowlisted peer ids.
    pub fn allowlist(&self) -> Result<BTreeSet<String>, Error> {
        stored_allowlist(self.reader().store())
    }

    /// Adds (`allowed`) or removes a peer id; returns whether the list
    /// changed. Peer ids are checked by the caller.
    pub async fn set_allowed(&self, peer_id: &str, allowed: bool) -> Result<bool, Error> {
        // Read and write inside the writer's order: two concurrent changes
        // must not lose one another.
        let _guard = self.inner.meta_lock.lock().await;
        let mut peers = self.allowlist()?;
        let changed = if allowed { peers.insert(peer_id.to_owned()) } else { peers.remove(peer_id) };
        if changed {
            self.commit_meta(vec![(ALLOWLIST_META_KEY.to_owned(), pluresdb_core::codec::encode(&peers))]).await?;
            self.access_changed()?;
        }
        Ok(changed)
    }
}
