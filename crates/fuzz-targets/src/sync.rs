//! Sync messages (`SyncMessage::decode`), the payload of every `sync`
//! frame a peer sends.

use crate::alloc::within_serde_bound;
use pluresdb_core::{codec, Hlc, OpId, OperationType, OperationWithMetadata, VersionVector};
use pluresdb_sync::{OriginRange, SyncMessage};
use serde_json::json;

/// A message that decodes re-encodes to one that decodes to the same
/// message, through the direct reader and through serde.
pub fn check_message(input: &[u8]) {
    let decoded = within_serde_bound("SyncMessage::decode", input, || SyncMessage::decode("12D3KooWPeer", input));
    let Ok(message) = decoded else { return };
    let bytes = message.encode();
    assert_eq!(SyncMessage::decode("12D3KooWPeer", &bytes).ok().as_ref(), Some(&message), "decode(encode(message)) != message");
    assert_eq!(codec::decode::<SyncMessage>(&bytes, "sync message").ok().as_ref(), Some(&message), "serde misreads encode()");
}

/// Real messages: each variant, a batch of operations of two origins.
pub fn sample_messages() -> Vec<SyncMessage> {
    let vv: VersionVector = [("12D3KooWA".to_string(), 3), ("12D3KooWB".to_string(), 1 << 40)].into_iter().collect();
    let ops: Vec<OperationWithMetadata> = (1..=3)
        .map(|seq| {
            let origin = if seq == 3 { "12D3KooWB" } else { "12D3KooWA" };
            let mut op = OperationWithMetadata::new(OperationType::UpdateNode, format!("n:{seq}"), json!({"v": seq, "s": "x"}), origin);
            op.id.seq = seq;
            op.timestamp = Hlc::new(1_700_000_000_000, seq as u16);
            if seq == 2 {
                op.supersedes.insert("v".into(), vec![OpId::new("12D3KooWA", 1)]);
            }
            op
        })
        .collect();
    vec![
        SyncMessage::SyncRequest { from_peer: "12D3KooWA".into(), round: 7, version_vector: vv.clone(), origins: OriginRange::all() },
        SyncMessage::DataSync { from_peer: "12D3KooWA".into(), operations: ops, version_vector: vv.clone() },
        SyncMessage::DataSync { from_peer: "12D3KooWA".into(), operations: vec![], version_vector: VersionVector::new() },
        SyncMessage::SyncDone { from_peer: "12D3KooWA".into(), round: 300, version_vector: vv.clone(), origins: OriginRange::all() },
        SyncMessage::SyncDone {
            from_peer: "12D3KooWA".into(),
            round: 301,
            version_vector: vv.clone(),
            origins: OriginRange { after: Some("12D3KooW0".into()), through: Some("12D3KooWB".into()) },
        },
        SyncMessage::SyncAck { from_peer: "12D3KooWA".into(), version_vector: vv },
    ]
}

/// Seeds for [`check_message`]: every variant, encoded, and one through
/// serde (the same shape, so the fallback sees it too).
pub fn message_seeds() -> Vec<Vec<u8>> {
    let messages = sample_messages();
    let mut seeds: Vec<Vec<u8>> = messages.iter().map(SyncMessage::encode).collect();
    seeds.push(codec::encode(&messages[0]));
    seeds
}
