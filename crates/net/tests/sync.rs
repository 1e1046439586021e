//! Two `DataSyncEngine`s (memory stores, signed operations) converge through
//! two `QuicNetworkEngine`s driven by `SyncDriver`.

mod common;

use common::until;
use pluresdb_core::{Database, MemoryStore, OperationType, OperationWithMetadata, VersionVector};
use pluresdb_net::NetworkEngine;
use pluresdb_net::SyncDriver;
use pluresdb_security::{Identity, OpSignatureVerifier};
use pluresdb_sync::{DataSyncEngine, SyncConfig};
use std::sync::Arc;

fn replica(seed: u8) -> DataSyncEngine<MemoryStore> {
    let identity = Identity::from_seed([seed; 32]);
    let db = Database::open(MemoryStore::new(), identity.peer_id().to_string())
        .unwrap()
        .with_signer(Arc::new(identity))
        .with_verifier(Arc::new(OpSignatureVerifier));
    DataSyncEngine::with_database(SyncConfig::default(), db).unwrap()
}

fn writes(origin: &pluresdb_security::PeerId, prefix: &str, count: usize) -> Vec<OperationWithMetadata> {
    (0..count)
        .map(|i| {
            let data = serde_json::json!({"name": format!("{prefix}-{i}"), "n": i});
            OperationWithMetadata::new(OperationType::CreateNode, format!("{prefix}:{i}"), data, origin.to_string())
        })
        .collect()
}

async fn vector(driver: &SyncDriver<MemoryStore>) -> VersionVector {
    driver.with(|sync, _| sync.database().version_vector().clone()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_converge_over_quic() {
    let a = common::node(1).await;
    let b = common::node(2).await;
    // Each writes before they meet, in several commits.
    let (mut sync_a, mut sync_b) = (replica(1), replica(2));
    for chunk in writes(&a.id, "a", 600).chunks(100) {
        sync_a.write(chunk.to_vec(), pluresdb_net::now_ms()).unwrap();
    }
    sync_b.write(writes(&b.id, "b", 300), pluresdb_net::now_ms()).unwrap();
    // The drivers take the event streams, so they see the Connected events.
    let driver_a = SyncDriver::spawn(Arc::new(a.engine.clone()), sync_a, a.events);
    let driver_b = SyncDriver::spawn(Arc::new(b.engine.clone()), sync_b, b.events);
    assert_eq!(a.engine.connect_peer(&b.addr.to_string()).await.unwrap(), b.id);

    until("both hold all 900 operations", async || {
        let (va, vb) = (vector(&driver_a).await, vector(&driver_b).await);
        va == vb && va.total() == 900
    })
    .await;

    // Writes while connected are pushed at once.
    driver_b.with(|sync, now| sync.write(writes(&b.id, "live", 1), now).unwrap()).await;
    until("a sees the live write", async || driver_a.with(|sync, _| sync.database().get("live:0").unwrap().is_some()).await).await;
    let name = driver_a.with(|sync, _| sync.database().get("b:299").unwrap().unwrap().value["name"].clone()).await;
    assert_eq!(name, "b-299");
    let status = driver_a.with(|sync, _| sync.status()).await;
    assert_eq!(status.pending_operations, 0, "b acknowledged everything: {status:?}");

    let sync_a = driver_a.stop().await.unwrap();
    driver_b.stop().await.unwrap();
    assert_eq!(sync_a.database().version_vector().total(), 901);
}
