//! PluresDB in a web page: the core, sync and security crates compiled to
//! wasm32, behind the `Replica` class that the JS client (`clients/js`)
//! drives. The page's writes are signed operations with its own peer id,
//! exactly as a native node's; its storage is a journal of committed
//! batches that the JS client writes to IndexedDB ([`journal`]).
//!
//! The same logic natively (the wasm class only converts JSON text and
//! errors):
//!
//! ```
//! use pluresdb_wasm::BrowserReplica;
//! use serde_json::json;
//!
//! let mut page = BrowserReplica::open(None, [], 1_700_000_000_000).unwrap();
//! page.put("note:1", json!({"text": "hello"}), 1_700_000_000_000).unwrap();
//! let stored = page.take_journal(); // what the JS client writes to IndexedDB
//!
//! // A reload: the same key and the stored entries give the same replica.
//! let key = page.identity_key();
//! let reloaded = BrowserReplica::open(Some(&key), stored.iter().map(Vec::as_slice), 1_700_000_000_001).unwrap();
//! assert_eq!(reloaded.get("note:1").unwrap()["value"]["text"], "hello");
//! assert_eq!(reloaded.peer_id(), page.peer_id());
//! ```

pub mod journal;
mod replica;
mod session;

pub use replica::{BrowserReplica, CHANGE_BUFFER, MAX_PAGE};
pub use session::{MAX_CHANNELS, MAX_QUEUED_MESSAGES, NODE_LINK};

use serde_json::Value;
use wasm_bindgen::prelude::*;

/// What went wrong in the page's database, naming the step.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    /// The core refused or failed (a bad id or value, a damaged journal).
    #[error(transparent)]
    Core(#[from] pluresdb_core::Error),
    /// The sync engine refused (a write while the store is failing).
    #[error(transparent)]
    Sync(#[from] pluresdb_sync::SyncError),
    /// The stored identity key does not load, or no key could be made.
    #[error("identity key: {0}")]
    Identity(String),
    /// An argument from the page is not what the call takes.
    #[error("{0}")]
    Argument(String),
    /// No node with this id.
    #[error("no node {0:?}")]
    NotFound(String),
    /// `resolve` on a field without concurrent values.
    #[error("{id}.{field} has no concurrent values to resolve")]
    NoConflict {
        /// The node.
        id: String,
        /// The field.
        field: String,
    },
}

/// The page's database, as JavaScript sees it: JSON text in and out (the
/// JS client parses and stringifies), times in milliseconds since the
/// epoch (`Date.now()`), journal entries as `Uint8Array`s.
#[wasm_bindgen]
pub struct Replica(BrowserReplica);

fn js_error(err: impl std::fmt::Display) -> JsError {
    JsError::new(&err.to_string())
}

fn parse(text: &str, what: &str) -> Result<Value, JsError> {
    serde_json::from_str(text).map_err(|err| js_error(format!("{what} is not JSON: {err}")))
}

fn now(now_ms: f64) -> u64 {
    // Date.now() is a whole, positive number of milliseconds.
    if now_ms.is_finite() && now_ms > 0.0 {
        now_ms as u64
    } else {
        0
    }
}

#[wasm_bindgen]
impl Replica {
    /// Opens the replica of the stored `journal` (an array of
    /// `Uint8Array`, oldest first) as the identity `key` (`undefined` for a
    /// new one: store [`Replica::identity_key`] then).
    #[wasm_bindgen(constructor)]
    pub fn new(key: Option<Vec<u8>>, journal: js_sys::Array, now_ms: f64) -> Result<Replica, JsError> {
        let entries: Vec<Vec<u8>> = journal.iter().map(|entry| js_sys::Uint8Array::new(&entry).to_vec()).collect();
        BrowserReplica::open(key.as_deref(), entries.iter().map(Vec::as_slice), now(now_ms)).map(Replica).map_err(js_error)
    }

    /// Starts a link to the node of `ticket` (`pluresdb invite`) over a
    /// socket just opened; `nonce` is 32 random bytes.
    pub fn connect(&mut self, ticket: &str, nonce: Vec<u8>, now_ms: f64) -> Result<(), JsError> {
        let nonce: [u8; 32] = nonce.try_into().map_err(|_| js_error("the nonce must be 32 bytes"))?;
        self.0.connect(ticket, nonce, now(now_ms)).map_err(js_error)
    }

    /// Closes the link.
    pub fn disconnect(&mut self, reason: &str) {
        self.0.disconnect(reason);
    }

    /// Starts a direct link to `peer` (a page, or the node) over a WebRTC
    /// data channel that just opened (`initiator`: this page offered it);
    /// `local_fingerprint` and `remote_fingerprint` are the DTLS
    /// fingerprints from the local and remote SDP (`sha-256 AB:...`),
    /// bound into the link's proofs.
    #[wasm_bindgen(js_name = openChannel)]
    pub fn open_channel(
        &mut self,
        peer: &str,
        initiator: bool,
        nonce: Vec<u8>,
        local_fingerprint: &str,
        remote_fingerprint: &str,
        now_ms: f64,
    ) -> Result<(), JsError> {
        let nonce: [u8; 32] = nonce.try_into().map_err(|_| js_error("the nonce must be 32 bytes"))?;
        if local_fingerprint.trim().is_empty() || remote_fingerprint.trim().is_empty() {
            return Err(js_error("both DTLS fingerprints are needed to bind the channel"));
        }
        let fingerprints = Some((local_fingerprint, remote_fingerprint));
        self.0.open_channel(peer, initiator, nonce, fingerprints, now(now_ms)).map_err(js_error)
    }

    /// Queues signalling text for page `peer`, through the node.
    #[wasm_bindgen(js_name = sendSignal)]
    pub fn send_signal(&mut self, peer: &str, data: &str) -> Result<(), JsError> {
        self.0.send_signal(peer, data.as_bytes().to_vec()).map_err(js_error)
    }

    /// The signals relayed by the node, as JSON `[[fromPeer, text], ...]`.
    #[wasm_bindgen(js_name = takeSignals)]
    pub fn take_signals(&mut self) -> String {
        let signals: Vec<(String, String)> =
            self.0.take_signals().into_iter().map(|(peer, data)| (peer, String::from_utf8_lossy(&data).into_owned())).collect();
        serde_json::to_string(&signals).unwrap_or_else(|_| "[]".to_owned())
    }

    /// One binary message from link `name` (`"node"` or a page's peer id).
    #[wasm_bindgen(js_name = handleMessage)]
    pub fn handle_message(&mut self, name: &str, bytes: &[u8], now_ms: f64) {
        self.0.handle_message(name, bytes, now(now_ms));
    }

    /// Link `name`'s socket or channel closed or failed.
    #[wasm_bindgen(js_name = handleLost)]
    pub fn handle_lost(&mut self, name: &str, reason: &str, now_ms: f64) {
        self.0.handle_lost(name, reason, now(now_ms));
    }

    /// Runs the timers.
    #[wasm_bindgen(js_name = handleTimeout)]
    pub fn handle_timeout(&mut self, now_ms: f64) {
        self.0.handle_timeout(now(now_ms));
    }

    /// Milliseconds until `handleTimeout` is due, or `undefined`.
    #[wasm_bindgen(js_name = nextTimeoutMs)]
    pub fn next_timeout_ms(&self, now_ms: f64) -> Option<f64> {
        self.0.next_timeout_ms(now(now_ms)).map(|ms| ms as f64)
    }

    /// The messages to send, in order: an array of `[linkName, Uint8Array]`;
    /// take them after the journal is stored.
    #[wasm_bindgen(js_name = takeMessages)]
    pub fn take_messages(&mut self) -> js_sys::Array {
        self.0
            .take_messages()
            .into_iter()
            .map(|(name, message)| {
                let pair = js_sys::Array::new();
                pair.push(&JsValue::from_str(&name));
                pair.push(&js_sys::Uint8Array::from(message.as_slice()));
                JsValue::from(pair)
            })
            .collect()
    }

    /// The links that ended (their last messages taken), as JSON
    /// `[[linkName, reason], ...]`: close their sockets or channels.
    #[wasm_bindgen(js_name = takeEnded)]
    pub fn take_ended(&mut self) -> String {
        serde_json::to_string(&self.0.take_ended()).unwrap_or_else(|_| "[]".to_owned())
    }

    /// The identity key to store.
    #[wasm_bindgen(js_name = identityKey)]
    pub fn identity_key(&self) -> Vec<u8> {
        self.0.identity_key()
    }

    /// This replica's peer id.
    #[wasm_bindgen(js_name = peerId)]
    pub fn peer_id(&self) -> String {
        self.0.peer_id()
    }

    /// `put(id, valueJson, nowMs)`: the receipt as JSON.
    pub fn put(&mut self, id: &str, value: &str, now_ms: f64) -> Result<String, JsError> {
        let value = parse(value, "the value")?;
        self.0.put(id, value, now(now_ms)).map(|r| r.to_string()).map_err(js_error)
    }

    /// `update(id, fieldsJson, nowMs)`: the receipt as JSON.
    pub fn update(&mut self, id: &str, fields: &str, now_ms: f64) -> Result<String, JsError> {
        let fields = parse(fields, "the fields")?;
        self.0.update(id, fields, now(now_ms)).map(|r| r.to_string()).map_err(js_error)
    }

    /// `delete(id, nowMs)`: the receipt as JSON.
    pub fn delete(&mut self, id: &str, now_ms: f64) -> Result<String, JsError> {
        self.0.delete(id, now(now_ms)).map(|r| r.to_string()).map_err(js_error)
    }

    /// The node as JSON, or `"null"`.
    pub fn get(&self, id: &str) -> Result<String, JsError> {
        self.0.get(id).map(|v| v.to_string()).map_err(js_error)
    }

    /// A page of nodes as JSON (`{"nodes", "next_after"}`).
    pub fn list(&self, prefix: &str, after: Option<String>, limit: u32) -> Result<String, JsError> {
        self.0.list(prefix, after.as_deref(), limit as usize).map(|v| v.to_string()).map_err(js_error)
    }

    /// Follows `path` (an array of field names) from node `id`.
    pub fn follow(&self, id: &str, path: Vec<String>) -> Result<String, JsError> {
        self.0.follow(id, &path).map(|v| v.to_string()).map_err(js_error)
    }

    /// Nodes with concurrent values under `prefix`, as JSON.
    pub fn conflicts(&self, prefix: &str, limit: u32) -> Result<String, JsError> {
        self.0.conflicts(prefix, limit as usize).map(|v| v.to_string()).map_err(js_error)
    }

    /// Writes `valueJson` to `field` of node `id`, resolving its conflict.
    pub fn resolve(&mut self, id: &str, field: &str, value: &str, now_ms: f64) -> Result<String, JsError> {
        let value = parse(value, "the value")?;
        self.0.resolve(id, field, value, now(now_ms)).map(|v| v.to_string()).map_err(js_error)
    }

    /// The journal entries to store, oldest first (`Uint8Array`s).
    #[wasm_bindgen(js_name = takeJournal)]
    pub fn take_journal(&mut self) -> js_sys::Array {
        self.0.take_journal().iter().map(|entry| js_sys::Uint8Array::from(entry.as_slice())).collect()
    }

    /// The changes since the last call, as JSON.
    #[wasm_bindgen(js_name = takeChanges)]
    pub fn take_changes(&mut self) -> String {
        self.0.take_changes().to_string()
    }

    /// The replica's status, as JSON.
    pub fn status(&self) -> String {
        self.0.status().to_string()
    }
}
