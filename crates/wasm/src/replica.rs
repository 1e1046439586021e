//! [`BrowserReplica`]: one database in a page, in plain Rust (the
//! `wasm_bindgen` class in `lib.rs` is a thin layer over it, so these
//! rules are tested natively too).
//!
//! Reads and writes take and give JSON documents shaped as the node's HTTP
//! API gives them (`{"id", "value", "updated_at", "conflicts"}`, receipts
//! `{"id", "op", "timestamp"}`), so an app moves between the two without
//! translating.

use crate::journal::{JournalStore, Outbox};
use crate::session::Links;
use crate::BrowserError;
use pluresdb_core::{
    Database, FeedEvent, FieldValue, KeepAll, Node, OperationType, OperationWithMetadata, Receipt, Store, Subscription, Traversal,
};
use pluresdb_security::{Identity, OpSignatureVerifier};
use pluresdb_sync::{DataSyncEngine, SyncConfig};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Changes a replica buffers for `watch` between two drains; a page that
/// falls further behind is told how many it missed.
pub const CHANGE_BUFFER: usize = 65_536;

/// The most nodes one `list` or `conflicts` call returns.
pub const MAX_PAGE: usize = 10_000;

/// A database in a page (see the module docs).
pub struct BrowserReplica {
    /// The replica inside the sync engine, which pushes local writes to
    /// the node the page is linked with and applies what it sends.
    pub(crate) engine: DataSyncEngine<JournalStore>,
    pub(crate) identity: Identity,
    outbox: Outbox,
    changes: Subscription,
    /// The links to a node and to other pages.
    pub(crate) links: Links,
}

impl BrowserReplica {
    /// Opens the replica that the stored journal `entries` describe, as
    /// the identity `key` (from [`Identity::to_bytes`]), or as a new
    /// identity when there is none yet.
    pub fn open<'a>(key: Option<&[u8]>, entries: impl IntoIterator<Item = &'a [u8]>, now_ms: u64) -> Result<Self, BrowserError> {
        let identity = match key {
            Some(bytes) => Identity::from_bytes(bytes).map_err(|err| BrowserError::Identity(err.to_string()))?,
            None => Identity::generate().map_err(|err| BrowserError::Identity(err.to_string()))?,
        };
        let store = JournalStore::replay(entries)?;
        let outbox = store.outbox();
        let db = Database::open(store, identity.peer_id().to_string())?
            .with_signer(Arc::new(identity.clone()))
            .with_verifier(Arc::new(OpSignatureVerifier));
        let changes = db.subscribe(CHANGE_BUFFER);
        let mut engine = DataSyncEngine::with_database(SyncConfig::default(), db)?;
        engine.start(now_ms);
        Ok(Self { engine, identity, outbox, changes, links: Links::default() })
    }

    fn db(&self) -> &Database<JournalStore> {
        self.engine.database()
    }

    /// One local write through the sync engine (it pushes it to the linked
    /// node, if any).
    fn write(&mut self, kind: OperationType, id: &str, data: Value, now_ms: u64) -> Result<Value, BrowserError> {
        let op = OperationWithMetadata::new(kind, id.into(), data, self.peer_id().as_str());
        let receipts = self.engine.write(vec![op], now_ms)?;
        let receipt = receipts.first().ok_or_else(|| BrowserError::Argument("the write gave no receipt".to_owned()))?;
        let receipt = receipt_json(id, receipt);
        self.after_input(now_ms);
        Ok(receipt)
    }

    /// The identity key to keep (IndexedDB), so a reload writes as the
    /// same peer.
    pub fn identity_key(&self) -> Vec<u8> {
        self.identity.to_bytes().to_vec()
    }

    /// This replica's peer id (`12D3KooW...`), the origin of its writes.
    pub fn peer_id(&self) -> String {
        self.identity.peer_id().to_string()
    }

    /// Creates or replaces node `id` with `value` (a JSON object).
    pub fn put(&mut self, id: &str, value: Value, now_ms: u64) -> Result<Value, BrowserError> {
        self.write(OperationType::CreateNode, id, value, now_ms)
    }

    /// Sets the fields of `fields` (a JSON object) on node `id`.
    pub fn update(&mut self, id: &str, fields: Value, now_ms: u64) -> Result<Value, BrowserError> {
        self.write(OperationType::UpdateNode, id, fields, now_ms)
    }

    /// Deletes node `id`.
    pub fn delete(&mut self, id: &str, now_ms: u64) -> Result<Value, BrowserError> {
        self.write(OperationType::DeleteNode, id, Value::Null, now_ms)
    }

    /// Node `id`, or `null`.
    pub fn get(&self, id: &str) -> Result<Value, BrowserError> {
        Ok(self.db().get(id)?.map_or(Value::Null, |node| node_json(&node)))
    }

    /// Up to `limit` (at most [`MAX_PAGE`]) nodes whose id starts with
    /// `prefix`, after `after`, in id order: `{"nodes", "next_after"}`.
    pub fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Value, BrowserError> {
        let limit = page(limit)?;
        let nodes = self.db().list(prefix, after, limit)?;
        let next_after = if nodes.len() == limit { nodes.last().map(|n| n.id.clone()) } else { None };
        Ok(json!({"nodes": nodes.iter().map(node_json).collect::<Vec<_>>(), "next_after": next_after}))
    }

    /// Follows the links named by `path` from node `id`: `{"reached":
    /// node}`, or where it stopped and why.
    pub fn follow(&self, id: &str, path: &[String]) -> Result<Value, BrowserError> {
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        Ok(match self.db().follow(id, &path)? {
            Traversal::Reached(node) => json!({"reached": node_json(&node)}),
            Traversal::NotALink { from, field, hop } => json!({"not_a_link": {"from": node_json(&from), "field": field, "hop": hop}}),
            Traversal::Dangling { from, field, target, hop } => {
                json!({"dangling": {"from": node_json(&from), "field": field, "target": target, "hop": hop}})
            }
        })
    }

    /// Nodes under `prefix` whose fields hold concurrent values (up to
    /// `limit`): `[{"id", "conflicts": {field: [values, oldest first]}}]`.
    pub fn conflicts(&self, prefix: &str, limit: usize) -> Result<Value, BrowserError> {
        let limit = page(limit)?;
        let mut found = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let records = self.db().store().scan_nodes(prefix, after.as_deref(), MAX_PAGE)?;
            let Some(last) = records.last() else { break };
            after = Some(last.id.clone());
            for node in records.iter().filter_map(|record| record.view(&KeepAll)) {
                if !node.conflicts.is_empty() {
                    found.push(json!({"id": node.id, "conflicts": conflicts_json(&node.conflicts)}));
                    if found.len() == limit {
                        return Ok(Value::Array(found));
                    }
                }
            }
            if records.len() < MAX_PAGE {
                break;
            }
        }
        Ok(Value::Array(found))
    }

    /// Resolves a conflict: writes `value` to `field` of node `id`,
    /// superseding every concurrent value this replica holds for it. A
    /// field without concurrent values is an error (nothing to resolve).
    pub fn resolve(&mut self, id: &str, field: &str, value: Value, now_ms: u64) -> Result<Value, BrowserError> {
        let node = self.db().record(id)?.and_then(|record| record.view(&KeepAll)).ok_or_else(|| BrowserError::NotFound(id.to_owned()))?;
        if !node.conflicts.contains_key(field) {
            return Err(BrowserError::NoConflict { id: id.to_owned(), field: field.to_owned() });
        }
        let mut fields = Map::new();
        fields.insert(field.to_owned(), value);
        self.update(id, Value::Object(fields), now_ms)
    }

    /// The journal entries committed since the last call, for the page to
    /// store in one IndexedDB transaction.
    pub fn take_journal(&mut self) -> Vec<Vec<u8>> {
        self.outbox.take()
    }

    /// The changes applied since the last call (local and, once syncing,
    /// remote), oldest first: `[{"id", "op", "node"}]`, with
    /// `{"missed": n}` where the buffer overflowed.
    pub fn take_changes(&mut self) -> Value {
        let mut out = Vec::new();
        while let Some(event) = self.changes.try_next() {
            out.push(match event {
                FeedEvent::Change(change) => json!({
                    "id": change.op.node_id,
                    "op": change.op.id.to_string(),
                    "node": change.node.as_ref().map_or(Value::Null, node_json),
                }),
                FeedEvent::Lagged { missed } => json!({"missed": missed}),
            });
        }
        Value::Array(out)
    }

    /// `{"peer_id", "version_vector", "pending_journal"}`.
    pub fn status(&self) -> Value {
        json!({
            "peer_id": self.peer_id(),
            "version_vector": self.db().version_vector(),
            "pending_journal": self.outbox.len(),
            "link": self.link_status(),
        })
    }
}

fn page(limit: usize) -> Result<usize, BrowserError> {
    if limit == 0 || limit > MAX_PAGE {
        return Err(BrowserError::Argument(format!("limit must be 1 to {MAX_PAGE}, not {limit}")));
    }
    Ok(limit)
}

fn receipt_json(id: &str, receipt: &Receipt) -> Value {
    json!({"id": id, "op": receipt.id.to_string(), "timestamp": receipt.timestamp.to_string()})
}

fn node_json(node: &Node) -> Value {
    let mut out = json!({"id": node.id, "value": node.value, "updated_at": node.updated_at.to_string()});
    if !node.conflicts.is_empty() {
        out["conflicts"] = conflicts_json(&node.conflicts);
    }
    out
}

fn conflicts_json(conflicts: &BTreeMap<String, Vec<FieldValue>>) -> Value {
    conflicts
        .iter()
        .map(|(field, values)| {
            let values: Vec<Value> = values
                .iter()
                .map(|v| json!({"value": v.value, "op": v.stamp.id.to_string(), "timestamp": v.stamp.hlc.to_string()}))
                .collect();
            (field.clone(), Value::Array(values))
        })
        .collect::<Map<String, Value>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pluresdb_core::MemoryStore;

    fn exchange(from: &BrowserReplica, to: &mut BrowserReplica, now_ms: u64) {
        let ops = from.db().ops_after(&from.peer_id(), 0, 1_000).unwrap();
        to.engine.database_mut().apply_remote(ops, now_ms).unwrap();
    }

    fn open() -> BrowserReplica {
        BrowserReplica::open(None, [], 1).unwrap()
    }

    #[test]
    fn writes_are_operations_signed_by_the_page_own_key() {
        let mut page = open();
        let receipt = page.put("note:1", json!({"text": "hi"}), 1_000).unwrap();
        assert_eq!(receipt["op"], format!("{}/1", page.peer_id()));
        let ops = page.db().ops_after(&page.peer_id(), 0, 10).unwrap();
        assert_eq!(ops.len(), 1);
        assert!(ops[0].signature.is_some(), "the page's write carries a signature");
        // A native replica that verifies every origin's signatures takes
        // it, and refuses it altered.
        let node = || Database::open(MemoryStore::new(), "native").unwrap().with_verifier(Arc::new(OpSignatureVerifier));
        assert_eq!(node().apply_remote(ops.clone(), 1_001).unwrap().applied, 1);
        let mut forged = ops[0].clone();
        forged.data = json!({"text": "forged"});
        let report = node().apply_remote(vec![forged], 1_001).unwrap();
        assert_eq!((report.applied, report.refused.len()), (0, 1), "{report:?}");
    }

    #[test]
    fn concurrent_writes_are_listed_as_conflicts_and_resolve_supersedes_them() {
        let mut a = open();
        let mut b = open();
        a.put("doc:1", json!({"title": "base"}), 1_000).unwrap();
        exchange(&a, &mut b, 1_001);
        a.update("doc:1", json!({"title": "from a"}), 2_000).unwrap();
        b.update("doc:1", json!({"title": "from b"}), 2_000).unwrap();
        exchange(&a, &mut b, 2_001);
        exchange(&b, &mut a, 2_001);
        let conflicts = a.conflicts("doc:", 100).unwrap();
        assert_eq!(conflicts.as_array().map(Vec::len), Some(1), "{conflicts}");
        assert_eq!(conflicts[0]["conflicts"]["title"].as_array().map(Vec::len), Some(2), "{conflicts}");
        assert_eq!(a.get("doc:1").unwrap()["value"], b.get("doc:1").unwrap()["value"], "both show the same winner");

        a.resolve("doc:1", "title", json!("agreed"), 3_000).unwrap();
        assert_eq!(a.conflicts("doc:", 100).unwrap(), json!([]));
        assert_eq!(a.get("doc:1").unwrap()["value"]["title"], "agreed");
        let err = a.resolve("doc:1", "title", json!("again"), 3_001).unwrap_err().to_string();
        assert!(err.contains("no concurrent values"), "{err}");
        let err = a.resolve("doc:none", "title", json!(1), 3_001).unwrap_err().to_string();
        assert!(err.contains("no node"), "{err}");
    }

    #[test]
    fn follow_reports_where_a_path_stops() {
        let mut page = open();
        page.put("user:1", json!({"name": "A", "friend": {"#": "user:2"}, "enemy": {"#": "user:9"}}), 1).unwrap();
        page.put("user:2", json!({"name": "B"}), 2).unwrap();
        let path = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(page.follow("user:1", &path(&["friend"])).unwrap()["reached"]["value"]["name"], "B");
        assert_eq!(page.follow("user:1", &path(&["enemy"])).unwrap()["dangling"]["target"], "user:9");
        assert_eq!(page.follow("user:1", &path(&["name"])).unwrap()["not_a_link"]["field"], "name");
    }

    #[test]
    fn bad_arguments_are_errors_and_change_nothing() {
        let mut page = open();
        assert!(page.put("n:1", json!(42), 1).is_err());
        assert!(page.put("", json!({}), 1).is_err());
        assert!(page.list("", None, 0).is_err());
        assert!(page.list("", None, MAX_PAGE + 1).is_err());
        assert!(BrowserReplica::open(Some(b"not a key"), [], 1).is_err());
        assert!(page.take_journal().is_empty(), "refused writes journal nothing");
        assert_eq!(page.status()["version_vector"], json!({}));
    }

    #[test]
    fn take_changes_gives_each_change_once_in_order() {
        let mut page = open();
        page.put("a", json!({"x": 1}), 1).unwrap();
        page.delete("a", 2).unwrap();
        let changes = page.take_changes();
        assert_eq!(changes[0]["node"]["value"], json!({"x": 1}));
        assert_eq!(changes[1]["node"], Value::Null);
        assert_eq!(changes.as_array().map(Vec::len), Some(2));
        assert_eq!(page.take_changes(), json!([]));
    }
}
