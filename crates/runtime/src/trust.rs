//! Whom the node syncs with: the access mode and the allowlist, kept in the
//! replica's metadata.

use crate::{Error, Handle};
use std::collections::BTreeSet;

/// The metadata key of the allowlist (CBOR list of peer ids).
const ALLOWLIST_META_KEY: &str = "trust.allowlist";

/// The metadata key of the access mode ("secret", "allowlist" or "open").
const ACCESS_MODE_META_KEY: &str = "trust.mode";

/// Who may sync with this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessMode {
    /// Peers that prove they hold the network secret, and allowlisted peers.
    Secret,
    /// Only allowlisted peers.
    Allowlist,
    /// Anyone (public data).
    Open,
}

impl AccessMode {
    /// The mode's name, as stored and shown.
    pub fn name(self) -> &'static str {
        match self {
            AccessMode::Secret => "secret",
            AccessMode::Allowlist => "allowlist",
            AccessMode::Open => "open",
        }
    }

    /// The mode named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "secret" => Some(AccessMode::Secret),
            "allowlist" => Some(AccessMode::Allowlist),
            "open" => Some(AccessMode::Open),
            _ => None,
        }
    }
}

impl Handle {
    /// The access mode (secret by default).
    pub fn access_mode(&self) -> Result<AccessMode, Error> {
        let stored = self.reader().meta(ACCESS_MODE_META_KEY)?;
        Ok(stored.and_then(|bytes| std::str::from_utf8(&bytes).ok().and_then(AccessMode::from_name)).unwrap_or(AccessMode::Secret))
    }

    /// Sets the access mode.
    pub async fn set_access_mode(&self, mode: AccessMode) -> Result<(), Error> {
        self.commit_meta(vec![(ACCESS_MODE_META_KEY.to_owned(), mode.name().as_bytes().to_vec())]).await
    }

    /// The allowlisted peer ids.
    pub fn allowlist(&self) -> Result<BTreeSet<String>, Error> {
        match self.reader().meta(ALLOWLIST_META_KEY)? {
            Some(bytes) => Ok(pluresdb_core::codec::decode(&bytes, "allowlist")?),
            None => Ok(BTreeSet::new()),
        }
    }

    /// Adds (`allowed`) or removes a peer id; returns whether the list
    /// changed. Peer ids are checked by the caller.
    pub async fn set_allowed(&self, peer_id: &str, allowed: bool) -> Result<bool, Error> {
        // Read and write inside the writer's order: two concurrent changes
        // must not lose one another.
        let _guard = self.inner.trust_lock.lock().await;
        let mut peers = self.allowlist()?;
        let changed = if allowed { peers.insert(peer_id.to_owned()) } else { peers.remove(peer_id) };
        if changed {
            self.commit_meta(vec![(ALLOWLIST_META_KEY.to_owned(), pluresdb_core::codec::encode(&peers))]).await?;
        }
        Ok(changed)
    }
}
