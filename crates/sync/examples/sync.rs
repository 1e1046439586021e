//! The seed's data synchronization snippet, running: two engines, wired
//! through an in-memory link, sync the seed's operation.
//!
//! `cargo run -p pluresdb-sync --example sync`

use pluresdb_core::{OperationType, OperationWithMetadata};
use pluresdb_sync::{DataSyncEngine, SyncConfig, SyncError};
use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), SyncError> {
    // Create sync engine
    let sync_config = SyncConfig {
        enable_auto_sync: true,
        sync_interval: Duration::from_secs(10),
        max_batch_size: 1000,
        enable_conflict_resolution: true,
        sync_timeout: Duration::from_secs(30),
        max_clock_drift: Duration::from_secs(300),
        ack_delay: Duration::ZERO,
    };

    let mut sync_engine = DataSyncEngine::new(sync_config.clone());
    sync_engine.start_sync().await?;

    // Add operations to sync
    let operations = vec![OperationWithMetadata::new(
        OperationType::CreateNode,
        "user:123".to_string(),
        serde_json::json!({"name": "Alice"}),
        "peer1".to_string(),
    )];
    sync_engine.add_operations(operations).await?;

    // The seed syncs with "peer2"; here it is a second engine behind an
    // in-memory link (a network engine plays this part in a node).
    let mut peer2 = DataSyncEngine::new(sync_config);
    peer2
        .add_operations(vec![OperationWithMetadata::new(
            OperationType::CreateNode,
            "user:456".into(),
            serde_json::json!({"name": "Bob"}),
            "peer2",
        )])
        .await?;
    peer2.start_sync().await?;
    sync_engine.peer_connected("peer2", 0);
    peer2.peer_connected("peer1", 0);

    // Sync with specific peer
    sync_engine.sync_with_peer("peer2").await?;
    loop {
        let mut idle = true;
        while let Some(t) = sync_engine.poll_transmit() {
            peer2.handle_input("peer1", &t.bytes, 0)?;
            idle = false;
        }
        while let Some(t) = peer2.poll_transmit() {
            sync_engine.handle_input("peer2", &t.bytes, 0)?;
            idle = false;
        }
        if idle {
            break;
        }
    }

    // Get sync status
    let status = sync_engine.get_sync_status().await?;
    println!("Sync active: {}, Pending operations: {}", status.is_active, status.pending_operations);
    println!(
        "peer2 now holds user:123 = {}",
        serde_json::Value::Object(peer2.database().get("user:123").ok().flatten().map(|n| n.value).unwrap_or_default())
    );
    assert_eq!(sync_engine.database().version_vector(), peer2.database().version_vector());
    Ok(())
}
