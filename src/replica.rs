//! Opening the replica in a data directory.

use crate::cli::Resolver;
use anyhow::Context;
use pluresdb_core::{ConflictResolver, Database, FirstWriterWins, KeepAll, LastWriterWins, Store, WriteBatch};
use pluresdb_store_redb::RedbStore;
use std::path::Path;
use std::sync::Arc;

/// The metadata key of this replica's origin id.
const PEER_ID_KEY: &str = "peer_id";

pub type Replica = Database<RedbStore>;

/// Opens (creating on first use) the replica in `dir`.
pub fn open(dir: &Path, resolver: Resolver) -> anyhow::Result<Replica> {
    let mut store = RedbStore::open(dir)?;
    let peer_id = peer_id(&mut store)?;
    tracing::debug!(data_dir = %dir.display(), %peer_id, "opened replica");
    Ok(Database::open(store, peer_id)?.with_resolver(resolver_for(resolver)))
}

pub fn resolver_for(resolver: Resolver) -> Arc<dyn ConflictResolver> {
    match resolver {
        Resolver::LastWriterWins => Arc::new(LastWriterWins),
        Resolver::FirstWriterWins => Arc::new(FirstWriterWins),
        Resolver::KeepAll => Arc::new(KeepAll),
    }
}

/// The id this replica authors its writes under, created on first use.
///
/// It is 128 random bits in hex. The identity issue replaces it with the
/// libp2p form of the node's Ed25519 key.
fn peer_id(store: &mut RedbStore) -> anyhow::Result<String> {
    if let Some(bytes) = store.meta(PEER_ID_KEY)? {
        return String::from_utf8(bytes).context("the stored peer id is not UTF-8");
    }
    let mut random = [0u8; 16];
    getrandom::fill(&mut random).map_err(|err| anyhow::anyhow!("cannot read the system's random source: {err}"))?;
    let id: String = random.iter().map(|b| format!("{b:02x}")).collect();
    store.commit(&WriteBatch { meta: vec![(PEER_ID_KEY.to_owned(), id.clone().into_bytes())], ..WriteBatch::default() })?;
    tracing::info!(peer_id = %id, "created a new replica");
    Ok(id)
}

/// Milliseconds since the Unix epoch, for stamping local writes.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
