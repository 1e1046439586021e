//! The documents the API sends and accepts. Each derives its OpenAPI schema
//! (`/openapi.json`) from the same type that is serialized, so the document
//! cannot drift from the answers.

use pluresdb_core::{FieldValue, Hlc, Node, OpId, OperationType, OperationWithMetadata, Receipt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use utoipa::{PartialSchema, ToSchema};

/// An error answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDoc {
    /// What went wrong, for people.
    pub error: String,
}

/// A node as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NodeDoc {
    /// The node id.
    pub id: String,
    /// The properties. A property `{"#": "other:id"}` is a link.
    #[schema(value_type = Object)]
    pub value: Map<String, Value>,
    /// Timestamp of the newest write that contributes to the value
    /// (hybrid logical clock, `milliseconds.counter`).
    pub updated_at: String,
    /// The links among the properties, and whether each target exists.
    pub links: Vec<LinkDoc>,
    /// Fields with concurrent values (shown with the keep-all resolver, or
    /// from `/conflicts`): every value, oldest first.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub conflicts: BTreeMap<String, Vec<ConflictValueDoc>>,
}

/// A link from a node's property to another node.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LinkDoc {
    /// The property that holds the link.
    pub field: String,
    /// The target node id.
    pub to: String,
    /// Whether the target exists (a dangling link when not).
    pub exists: bool,
}

/// One of a field's concurrent values.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConflictValueDoc {
    /// The value (`null`: that write removed the field).
    pub value: Value,
    /// The operation that wrote it, `origin/seq`.
    pub op: String,
    /// When (hybrid logical clock).
    pub timestamp: String,
}

/// A page of nodes.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NodeListDoc {
    /// The nodes, in id order.
    pub nodes: Vec<NodeDoc>,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next_after: Option<String>,
}

/// What a committed write was assigned.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReceiptDoc {
    /// The node written.
    pub id: String,
    /// The operation, `origin/seq`.
    pub op: String,
    /// Its timestamp (hybrid logical clock).
    pub timestamp: String,
}

/// An operation from the op log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OperationDoc {
    /// `origin/seq`.
    pub op: String,
    /// The peer id that wrote it.
    pub origin: String,
    /// Its sequence number among the origin's operations.
    pub seq: u64,
    /// `create`, `update` or `delete`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The node.
    pub node_id: String,
    /// The value (create), the fields set (update) or `null` (delete).
    pub data: Value,
    /// When (hybrid logical clock).
    pub timestamp: String,
    /// Whether the operation carries its origin's signature (the others are
    /// authenticated by the hash chain up to a signed one).
    pub signed: bool,
}

/// Node health.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthDoc {
    /// `ok`, or `degraded` while the store cannot write (writes answer 507
    /// or 503; reads work; the node recovers by itself).
    pub status: String,
    /// This node's peer id.
    pub peer_id: String,
    /// Operations held (from every origin).
    pub operations: u64,
    /// Whether the store can write.
    #[serde(default)]
    pub store: StoreDoc,
}

/// Whether the node's store can write, and its faults since the node
/// started (see the README, "When things go wrong").
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct StoreDoc {
    /// `false` while the store cannot write: local writes answer 507 (disk
    /// full) or 503 (another I/O error) and peers' operations wait.
    pub writable: bool,
    /// While not writable: `disk_full` or `io`.
    pub fault: Option<String>,
    /// While not writable: the error, on one line.
    pub reason: Option<String>,
    /// While not writable: since when (ms since the Unix epoch).
    pub since_ms: Option<u64>,
    /// While not writable: attempts to reopen the store so far.
    pub attempts: u32,
    /// While not writable: when the node next tries to reopen it (ms since
    /// the Unix epoch).
    pub next_attempt_ms: Option<u64>,
    /// Faults since the node started.
    pub faults: u64,
    /// Recoveries since the node started.
    pub recoveries: u64,
    /// Local writes refused while the store could not write.
    pub writes_refused: u64,
    /// Operations from peers not stored while it could not write (asked
    /// for again once it could).
    pub ops_not_stored: u64,
}

impl StoreDoc {
    /// The document of the runtime's store status.
    pub fn new(status: &pluresdb_sync::StoreStatus) -> Self {
        StoreDoc {
            writable: !status.degraded,
            fault: status.fault.map(|f| match f {
                pluresdb_core::StorageFault::DiskFull => "disk_full".to_owned(),
                pluresdb_core::StorageFault::Io => "io".to_owned(),
            }),
            reason: status.reason.clone(),
            since_ms: status.since_ms,
            attempts: status.attempts,
            next_attempt_ms: status.next_attempt_ms,
            faults: status.faults,
            recoveries: status.recoveries,
            writes_refused: status.writes_refused,
            ops_not_stored: status.ops_not_stored,
        }
    }
}

/// A node's concurrent values.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NodeConflictsDoc {
    /// The node id.
    pub id: String,
    /// Each field with concurrent values, and the values.
    pub conflicts: BTreeMap<String, Vec<ConflictValueDoc>>,
}

/// A page of nodes with conflicts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConflictListDoc {
    /// The nodes, in id order.
    pub nodes: Vec<NodeConflictsDoc>,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next_after: Option<String>,
}

/// How to resolve a conflict: the value the field gets. The write
/// supersedes every concurrent value this node holds.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// The field.
    pub field: String,
    /// Its value from now on (any JSON; `null` removes the field).
    pub value: Value,
}

/// A peer, as the sync engine and the transports know it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PeerDoc {
    /// The peer id.
    pub peer_id: String,
    /// Whether a connection is up.
    pub connected: bool,
    /// The transport of the connection (`quic`), when connected.
    pub transport: Option<String>,
    /// The peer's address on that connection, when connected.
    pub address: Option<String>,
    /// The relay (peer id) the connection goes through, when it is relayed
    /// (its address has `/p2p-circuit`); absent for a direct connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// The connection's round-trip time in milliseconds, when measured.
    pub rtt_ms: Option<f64>,
    /// When the last sync round with it completed (ms since the epoch).
    pub last_sync_ms: Option<u64>,
    /// Operations it has not acknowledged yet.
    pub pending_operations: u64,
    /// Operations sent to it.
    pub ops_sent: u64,
    /// Operations received from it.
    pub ops_received: u64,
    /// Sync bytes sent to it.
    pub bytes_sent: u64,
    /// Sync bytes received from it.
    pub bytes_received: u64,
    /// Messages from it that were refused.
    pub errors: u64,
    /// The last refusal.
    pub last_error: Option<String>,
}

/// The connected and known peers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PeersDoc {
    /// Every peer the node has synced with or is connected to.
    pub peers: Vec<PeerDoc>,
}

/// A peer that discovery found.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DiscoveredPeerDoc {
    /// The peer id, or null for a bootstrap address not connected yet.
    pub peer_id: Option<String>,
    /// The preferred address (`ip:port`, or `host:port` for a bootstrap
    /// address).
    pub address: String,
    /// Every known address, preferred first.
    pub addresses: Vec<String>,
    /// What found it: `mdns`, `bootstrap`, `exchange`.
    pub methods: Vec<String>,
    /// When it was last heard of (RFC 3339).
    pub last_seen: String,
    /// Whether it belongs to this node's network; a peer of another network
    /// (seen on the LAN) is listed but never connected to.
    pub same_network: bool,
    /// For a peer learned by exchange: the peer that told this node.
    pub via: Option<String>,
    /// Whether a connection to it is up now.
    pub connected: bool,
}

/// What discovery found.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DiscoveredDoc {
    /// Whether this node looks for peers (a node without a network
    /// transport, or the CLI with no node running, does not).
    pub discovering: bool,
    /// The peers found, in peer id order.
    pub peers: Vec<DiscoveredPeerDoc>,
}

/// Where to connect.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectRequest {
    /// `host:port` or `quic://host:port`.
    pub address: String,
}

/// A new connection.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConnectedDoc {
    /// The verified peer id at the address.
    pub peer_id: String,
}

/// Sync traffic totals.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TrafficDoc {
    /// Operations sent.
    pub ops_sent: u64,
    /// Operations received.
    pub ops_received: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Refused messages.
    pub errors: u64,
}

/// The node's write and sync counts over the last minutes, in buckets.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RatesDoc {
    /// The width of a bucket, in seconds.
    pub step_s: u64,
    /// The buckets, oldest first; the last runs to now and may be shorter.
    /// Empty until the node has served for a moment.
    pub buckets: Vec<RateBucketDoc>,
}

/// What the node counted over one bucket of time.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RateBucketDoc {
    /// How long before this answer the bucket started, in ms.
    pub started_ms_ago: u64,
    /// How long the bucket lasted, in ms.
    pub duration_ms: u64,
    /// Local writes committed.
    pub local_ops: u64,
    /// Operations from peers applied.
    pub remote_ops: u64,
    /// Operations sent to peers.
    pub ops_sent: u64,
    /// Operations received from peers.
    pub ops_received: u64,
    /// Sync bytes sent.
    pub bytes_sent: u64,
    /// Sync bytes received.
    pub bytes_received: u64,
}

/// The node's sync status.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatusDoc {
    /// This node's peer id.
    pub peer_id: String,
    /// Whether the sync engine runs.
    pub is_active: bool,
    /// Operations some connected or known peer has not acknowledged.
    pub pending_operations: u64,
    /// Operations held (from every origin).
    pub operations_held: u64,
    /// Per origin, the highest sequence number held.
    pub version_vector: BTreeMap<String, u64>,
    /// Peers connected now.
    pub peers_connected: usize,
    /// Transports running (`quic`, ...); empty when the node only serves its API.
    pub transports: Vec<String>,
    /// Sync traffic since the node started.
    pub traffic: TrafficDoc,
    /// The node's clock against its peers' and the operations it receives.
    pub clock: ClockDoc,
    /// Seconds since the node started.
    pub uptime_s: u64,
    /// Per origin whose log forked (two different operations under one
    /// sequence number), what this node settled; empty when none did.
    #[serde(default)]
    pub forks: Vec<ForkDoc>,
    /// Whether the store can write, and its faults.
    #[serde(default)]
    pub store: StoreDoc,
}

/// The forks of one origin a node settled (see `docs/protocol.md`, "Forks").
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ForkDoc {
    /// The origin whose log forked.
    pub origin: String,
    /// How many forks of it were settled.
    pub count: u64,
    /// The sequence number of the latest one.
    pub last_seq: u64,
    /// The peer that sent the other branch.
    pub last_peer: String,
    /// When, in milliseconds since the Unix epoch.
    pub last_ms: u64,
}

/// The node's clock: the drift bound, its own correction, operations from
/// the future held back, and the skew of every origin and peer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClockDoc {
    /// How far past this node's wall clock a received timestamp may lie and
    /// still take effect at once (ms); later ones wait for their time.
    pub max_clock_drift_ms: u64,
    /// The correction this node applies to its wall clock because most of
    /// its peers' clocks disagree with it by more than the bound (ms; 0 when
    /// none).
    pub correction_ms: i64,
    /// The newest timestamp issued or observed (`<wall_ms>.<logical>`).
    pub clock: String,
    /// How far that timestamp is ahead of the corrected wall time (ms).
    pub clock_ahead_ms: i64,
    /// Operations held and synced but not in effect yet (stamped beyond the
    /// drift bound when they arrived).
    pub deferred_operations: u64,
    /// The timestamp of the first of them to take effect.
    pub next_deferred: Option<String>,
    /// Per origin, the most its operations were stamped ahead of this
    /// node's corrected wall clock when they arrived, since the node
    /// started; the furthest ahead first.
    pub origins: Vec<OriginSkewDoc>,
    /// Per connected peer, its wall clock minus this node's, from its
    /// heartbeats.
    pub peers: Vec<PeerClockDoc>,
}

/// How far ahead one origin's operations came.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OriginSkewDoc {
    /// The origin's peer id.
    pub origin: String,
    /// The largest (timestamp - wall time at receipt), ms.
    pub max_ahead_ms: i64,
}

/// A connected peer's clock against this node's.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PeerClockDoc {
    /// The peer id.
    pub peer_id: String,
    /// Its wall clock minus this node's (ms, half the round trip allowed for).
    pub offset_ms: i64,
}

/// The node's network.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NetworkDoc {
    /// This node's peer id.
    pub peer_id: String,
    /// A short public tag of the network secret (nodes of one network share it).
    pub network_tag: String,
    /// `secret`, `allowlist` or `open`.
    pub access_mode: String,
    /// Allowlisted peer ids.
    pub allowlist: Vec<String>,
    /// Transports running.
    pub transports: Vec<String>,
    /// Addresses the node listens on for peers.
    pub listen_addresses: Vec<String>,
}

/// A ticket to join this node's network.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InviteDoc {
    /// The ticket (carries the network secret: share it only with trusted nodes).
    pub ticket: String,
    /// The ticket as a QR code, an SVG document (`image/svg+xml`), for a
    /// phone's camera; only when asked for with `qr=svg`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qr_svg: Option<String>,
}

/// The access mode and the allowlist.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TrustDoc {
    /// `secret`, `allowlist` or `open`.
    pub mode: String,
    /// Allowlisted peer ids.
    pub allowlist: Vec<String>,
}

/// A new access mode.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustModeRequest {
    /// `secret`, `allowlist` or `open`.
    pub mode: String,
}

/// A change of the allowlist.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TrustChangeDoc {
    /// The peer id.
    pub peer_id: String,
    /// Whether it is allowed now.
    pub allowed: bool,
    /// Whether the allowlist changed.
    pub changed: bool,
}

/// What an import did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImportDoc {
    /// Nodes written (durably).
    pub imported: u64,
    /// Lines skipped (with `on_error=skip`).
    pub skipped: u64,
    /// Each bad line and why.
    pub errors: Vec<ImportErrorDoc>,
}

/// A bad import line.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImportErrorDoc {
    /// Its line number (from `first_line`).
    pub line: u64,
    /// Why it was refused.
    pub error: String,
}

/// An import stopped at a bad line (`on_error=stop`): the lines before it
/// are imported.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImportStoppedDoc {
    /// What went wrong, with the line number.
    pub error: String,
    /// The bad line's number.
    pub line: u64,
    /// Nodes written before it (durably).
    pub imported: u64,
}

/// Why `/import` answered 400: a bad line with `on_error=stop`
/// ([`ImportStoppedDoc`]), or a bad request before any line was read, such
/// as an unknown `on_error` ([`ErrorDoc`]). Only a schema: the answers are
/// those two documents.
pub struct ImportRefusedDoc;

impl utoipa::PartialSchema for ImportRefusedDoc {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::AnyOfBuilder;
        use utoipa::openapi::Ref;
        // anyOf, not oneOf: an ImportStoppedDoc is also a valid ErrorDoc.
        AnyOfBuilder::new().item(Ref::from_schema_name("ImportStoppedDoc")).item(Ref::from_schema_name("ErrorDoc")).into()
    }
}

impl ToSchema for ImportRefusedDoc {
    fn schemas(schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>) {
        for (name, schema) in [("ImportStoppedDoc", ImportStoppedDoc::schema()), ("ErrorDoc", ErrorDoc::schema())] {
            schemas.push((name.to_owned(), schema));
        }
        <ImportStoppedDoc as ToSchema>::schemas(schemas);
    }
}

/// A message on the `/changes` WebSocket (server to client).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChangeMessage {
    /// The subscription is live from `version` on.
    Subscribed {
        /// What the node held when the subscription began.
        version: BTreeMap<String, u64>,
    },
    /// A change to a subscribed node.
    Change {
        /// The operation.
        op: Box<OperationDoc>,
        /// The node after it (`null`: deleted). Replayed changes carry the
        /// node as it is now.
        node: Option<Box<NodeDoc>>,
        /// Whether it was replayed from the op log (after `from`).
        replayed: bool,
        /// With a live query (`query`): whether the node passes it after
        /// the change (`false`: it passed and no longer does).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        matches: Option<bool>,
    },
    /// The subscriber fell behind; the socket closes. Subscribe again with
    /// `from` = `resume_from` to continue with nothing missed.
    Lagged {
        /// Changes not buffered.
        missed: u64,
        /// Where to resume.
        resume_from: BTreeMap<String, u64>,
    },
    /// Too many client messages, a storage error, or the node stopping;
    /// the socket closes.
    Error {
        /// What went wrong.
        error: String,
    },
}

pub fn hlc_text(t: Hlc) -> String {
    t.to_string()
}

fn conflict_values(values: &[FieldValue]) -> Vec<ConflictValueDoc> {
    values
        .iter()
        .map(|v| ConflictValueDoc { value: v.value.clone(), op: v.stamp.id.to_string(), timestamp: hlc_text(v.stamp.hlc) })
        .collect()
}

pub fn conflicts_doc(conflicts: &BTreeMap<String, Vec<FieldValue>>) -> BTreeMap<String, Vec<ConflictValueDoc>> {
    conflicts.iter().map(|(field, values)| (field.clone(), conflict_values(values))).collect()
}

impl NodeDoc {
    /// The document of `node`; `exists` tells whether a link target exists.
    pub fn new(node: &Node, mut exists: impl FnMut(&str) -> Result<bool, pluresdb_core::Error>) -> Result<Self, pluresdb_core::Error> {
        let mut links = Vec::new();
        for (field, to) in node.links() {
            links.push(LinkDoc { field: field.to_owned(), to: to.to_owned(), exists: exists(to)? });
        }
        Ok(Self {
            id: node.id.clone(),
            value: node.value.clone(),
            updated_at: hlc_text(node.updated_at),
            links,
            conflicts: conflicts_doc(&node.conflicts),
        })
    }
}

impl ReceiptDoc {
    pub fn new(id: &str, receipt: &Receipt) -> Self {
        Self { id: id.to_owned(), op: receipt.id.to_string(), timestamp: hlc_text(receipt.timestamp) }
    }
}

impl From<&OperationWithMetadata> for OperationDoc {
    fn from(op: &OperationWithMetadata) -> Self {
        let OpId { origin, seq } = &op.id;
        let kind = match op.operation {
            OperationType::CreateNode => "create",
            OperationType::UpdateNode => "update",
            OperationType::DeleteNode => "delete",
        };
        Self {
            op: op.id.to_string(),
            origin: origin.to_string(),
            seq: *seq,
            kind: kind.to_owned(),
            node_id: op.node_id.clone(),
            data: op.data.clone(),
            timestamp: hlc_text(op.timestamp),
            signed: op.signature.is_some(),
        }
    }
}

/// A version vector as a JSON object.
pub fn version_doc(vv: &pluresdb_core::VersionVector) -> BTreeMap<String, u64> {
    vv.iter().map(|(origin, seq)| (origin.to_owned(), seq)).collect()
}
