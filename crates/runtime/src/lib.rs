//! PluresDB's node runtime: what a running node is made of, below its API.
//!
//! - One **writer** thread owns the replica (inside its
//!   [`DataSyncEngine`](pluresdb_sync::DataSyncEngine)). Writes from any
//!   number of callers queue up while a commit is in progress and the next
//!   commit takes them all together: one transaction and one fsync for the
//!   group, and each caller is answered once its write is durable.
//! - **Readers** use their own handle on the store and never wait for the
//!   writer ([`Handle::reader`]).
//! - The **change feed**: [`Handle::watch`] delivers every change, local or
//!   replicated, in the order it was applied, filtered to a node or an id
//!   prefix, with bounded buffering; a watcher that falls behind is told
//!   where to resume from, and [`Handle::watch`] can start from there.
//!
//! ```no_run
//! # async fn demo(db: pluresdb_core::Database<pluresdb_store_redb::RedbStore>) -> Result<(), pluresdb_runtime::Error> {
//! use pluresdb_runtime::{Runtime, RuntimeOptions, Filter, WriteKind};
//! let runtime = Runtime::start(db, RuntimeOptions::default())?;
//! let handle = runtime.handle();
//! let mut watch = handle.watch(Filter::Prefix("user:".into()), None).await?;
//! handle.write(WriteKind::Put, "user:1".into(), serde_json::json!({"name": "Alice"})).await?;
//! let event = watch.next().await;
//! runtime.shutdown().await;
//! # Ok(()) }
//! ```

mod clock;
mod error;
mod indexes;
mod memory;
mod stats;
mod trust;
mod vectors;
mod watch;
mod writer;

pub use error::Error;
pub use indexes::BUILD_STEP_NODES;
pub use memory::{avoid_huge_pages, set_idle_hook};
pub use stats::Stats;
pub use trust::{stored_access_mode, stored_allowlist, AccessMode};
pub use vectors::{VectorStatus, MAX_VECTOR_INDEXES, VECTORS_META_KEY};
pub use watch::{Filter, Watch, WatchEvent, MAX_LIVE_QUERY_NODES};
pub use writer::WriteKind;

use pluresdb_core::{Database, Reader, Receipt, VersionVector};
use pluresdb_store_redb::RedbStore;
use pluresdb_sync::{DataSyncEngine, SyncConfig, SyncStatus};
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use writer::Command;

/// Milliseconds since the Unix epoch: the wall time that stamps local
/// writes and drives sync timers (the core and sync engine read no clock
/// themselves).
pub use pluresdb_net::now_ms;

/// The network the runtime syncs over: the engine (one transport's, or
/// several run as one by `pluresdb_net::CombinedNetworkEngine`), the
/// events it delivers, and its peer registry.
pub struct Network {
    /// The engine (sends, connects, disconnects).
    pub engine: Arc<dyn pluresdb_net::NetworkEngine>,
    /// What the engine delivers: connections, messages, disconnections.
    pub events: pluresdb_net::PeerEvents,
    /// The engine's peers (addresses, round-trip times).
    pub peers: Arc<pluresdb_net::PeerManager>,
    /// The names of the transports the engine runs (`quic`, `libp2p`).
    pub transports: Vec<&'static str>,
    /// Where other nodes reach this one.
    pub listen_addresses: Vec<String>,
    /// Called with the access mode and the allowlist after either changes,
    /// so the transport admits peers by the new rule.
    pub on_access_change: Option<AccessHook>,
    /// How the node finds peers (mDNS, bootstrap, exchange), if it looks.
    pub discovery: Option<Arc<pluresdb_discovery::CombinedDiscovery>>,
    /// Addresses the node gained after start (through relays), listed
    /// after `listen_addresses`.
    pub live_addresses: Option<AddressHook>,
    /// The transports' counters for `/metrics` (NAT traversal).
    pub counters: Option<CounterHook>,
}

/// See [`Network::live_addresses`].
pub type AddressHook = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// See [`Network::counters`].
pub type CounterHook = Arc<dyn Fn() -> Vec<TransportCounter> + Send + Sync>;

/// One counter or gauge of a transport, as `/metrics` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportCounter {
    /// The metric's name (`pluresdb_...`).
    pub name: &'static str,
    /// `counter` or `gauge`.
    pub kind: &'static str,
    /// What it counts.
    pub help: &'static str,
    pub value: u64,
}

/// See [`Network::on_access_change`].
pub type AccessHook = Arc<dyn Fn(AccessMode, std::collections::BTreeSet<String>) + Send + Sync>;

/// The metadata key of the addresses this node dialed (CBOR list, oldest first).
const DIALED_META_KEY: &str = "net.dialed";

/// How many dialed addresses are remembered.
const MAX_DIALED: usize = 64;

/// The addresses a node on `store` dialed before, oldest first.
pub fn stored_dialed<S: pluresdb_core::Store>(store: &S) -> Result<Vec<String>, Error> {
    match store.meta(DIALED_META_KEY)? {
        Some(bytes) => Ok(pluresdb_core::codec::decode(&bytes, "dialed addresses")?),
        None => Ok(Vec::new()),
    }
}

/// How the runtime runs.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// The sync engine's settings. Default: [`SyncConfig::node`].
    pub sync: SyncConfig,
    /// The most writes committed in one transaction.
    pub max_group: usize,
    /// Writes that may wait for the writer before callers wait to enqueue.
    pub queue: usize,
    /// Changes buffered per watcher before it is told it lagged.
    pub watch_buffer: usize,
    /// Whether peers' messages are decoded and their operations checked
    /// (encodings, digests, signatures) on a thread of their own while the
    /// writer commits (`SyncPort::preparing`), or by the writer itself.
    /// On by default; off only to compare the two.
    pub prepare_off_writer: bool,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self { sync: SyncConfig::node(), max_group: 4_096, queue: 16_384, watch_buffer: 4_096, prepare_off_writer: true }
    }
}

/// A running node's replica: the writer thread and the handles on it.
pub struct Runtime {
    handle: Handle,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Runtime {
    /// Starts the writer over `db` (the store's file stays locked until
    /// [`shutdown`](Self::shutdown)).
    pub fn start(db: Database<RedbStore>, options: RuntimeOptions) -> Result<Self, Error> {
        Self::start_with_network(db, options, None)
    }

    /// Starts the writer over `db`, syncing with peers over `network`.
    pub fn start_with_network(mut db: Database<RedbStore>, options: RuntimeOptions, network: Option<Network>) -> Result<Self, Error> {
        let peer_id: Arc<str> = db.peer_id().into();
        // Indexes made under another resolver hold its view: built again.
        for name in db.rebuild_indexes_of_other_resolvers()? {
            tracing::warn!(index = %name, resolver = db.resolver().name(), "the index was built under another resolver: building it again");
        }
        let building: Vec<String> = db.indexes().iter().filter(|d| !d.is_ready()).map(|d| d.name.clone()).collect();
        // The writer publishes each commit after its answers and pushes
        // are out (writer.rs), so redb's commit is off their path.
        db.store().publish_later();
        let reader = Arc::new(Reader::new(db.store().read_handle(), db.shared_resolver()));
        let engine = DataSyncEngine::with_database(options.sync.clone(), db).map_err(Error::Sync)?;
        let stats = Arc::new(Stats::default());
        let (commands, inbox) = mpsc::channel(options.queue.max(1));
        let link = network.as_ref().map(|n| Link {
            engine: n.engine.clone(),
            peers: n.peers.clone(),
            transports: n.transports.clone(),
            listen_addresses: n.listen_addresses.clone(),
            on_access_change: n.on_access_change.clone(),
            discovery: n.discovery.clone(),
            live_addresses: n.live_addresses.clone(),
            counters: n.counters.clone(),
        });
        let writer = writer::spawn(engine, inbox, network, stats.clone(), options.max_group.max(1), options.prepare_off_writer)
            .map_err(Error::Thread)?;
        let handle = Handle {
            inner: Arc::new(Inner {
                peer_id,
                reader,
                commands,
                stats,
                watch_buffer: options.watch_buffer.max(1),
                meta_lock: tokio::sync::Mutex::new(()),
                link,
                vectors: Default::default(),
            }),
        };
        // Builds a restart interrupted go on.
        for name in building {
            handle.spawn_build(name);
        }
        handle.start_vectors();
        Ok(Self { handle, writer: Some(writer) })
    }

    /// A handle for callers; cheap to clone.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Stops taking writes, lets the writer finish what it holds (every
    /// write it answered is durable) and waits for it to close the replica.
    pub async fn shutdown(mut self) {
        let (reply, done) = oneshot::channel();
        if self.handle.inner.commands.send(Command::Shutdown { reply }).await.is_ok() {
            let _ = done.await;
        }
        if let Some(writer) = self.writer.take() {
            // The writer has replied; joining only reaps the thread.
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
    }
}

/// A cloneable handle on a running replica.
#[derive(Clone)]
pub struct Handle {
    inner: Arc<Inner>,
}

struct Inner {
    peer_id: Arc<str>,
    reader: Arc<Reader<RedbStore>>,
    commands: mpsc::Sender<Command>,
    stats: Arc<Stats>,
    watch_buffer: usize,
    /// Serializes read-modify-write changes of metadata (the allowlist,
    /// the access mode, the dialed addresses).
    meta_lock: tokio::sync::Mutex<()>,
    link: Option<Link>,
    /// The vector indexes (in memory, following the change feed).
    vectors: vectors::SharedVectors,
}

/// The handle's side of the network.
struct Link {
    engine: Arc<dyn pluresdb_net::NetworkEngine>,
    peers: Arc<pluresdb_net::PeerManager>,
    transports: Vec<&'static str>,
    listen_addresses: Vec<String>,
    on_access_change: Option<AccessHook>,
    discovery: Option<Arc<pluresdb_discovery::CombinedDiscovery>>,
    live_addresses: Option<AddressHook>,
    counters: Option<CounterHook>,
}

impl Handle {
    /// The peer id that authors this replica's writes.
    pub fn peer_id(&self) -> &str {
        &self.inner.peer_id
    }

    /// Reads the replica as last committed, without waiting for the writer.
    pub fn reader(&self) -> &Reader<RedbStore> {
        &self.inner.reader
    }

    /// The reader, shared (for reads that run on another thread).
    pub fn shared_reader(&self) -> Arc<Reader<RedbStore>> {
        self.inner.reader.clone()
    }

    /// Counters for metrics.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Error> {
        let (reply, answer) = oneshot::channel();
        self.inner.commands.send(command(reply)).await.map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)
    }

    /// Writes one node (create or replace, set fields, or delete); returns
    /// once the write is durable.
    pub async fn write(&self, kind: WriteKind, id: String, value: Value) -> Result<Receipt, Error> {
        self.ask(|reply| Command::Write(writer::WriteRequest { kind, id, value, reply })).await?
    }

    /// Creates or replaces these nodes in one durable transaction (all or
    /// nothing). Validate them first: one invalid node fails the batch.
    pub async fn import(&self, nodes: Vec<(String, Value)>) -> Result<usize, Error> {
        self.ask(|reply| Command::Import { nodes, reply }).await?
    }

    /// Writes metadata entries (for layers above the core) durably.
    pub async fn commit_meta(&self, entries: Vec<(String, Vec<u8>)>) -> Result<(), Error> {
        self.ask(|reply| Command::CommitMeta { entries, reply }).await?
    }

    /// The sync engine's status.
    pub async fn sync_status(&self) -> Result<SyncStatus, Error> {
        self.ask(|reply| Command::SyncStatus { reply }).await
    }

    /// The network transports running in this node.
    pub fn transports(&self) -> Vec<&'static str> {
        self.inner.link.iter().flat_map(|l| l.transports.iter().copied()).collect()
    }

    /// The addresses other nodes can reach this node at.
    pub fn listen_addresses(&self) -> Vec<String> {
        let Some(link) = self.inner.link.as_ref() else { return Vec::new() };
        let mut addresses = link.listen_addresses.clone();
        for address in link.live_addresses.as_ref().map(|live| live()).unwrap_or_default() {
            if !addresses.contains(&address) {
                addresses.push(address);
            }
        }
        addresses
    }

    /// The transports' counters (see [`Network::counters`]).
    pub fn transport_counters(&self) -> Vec<TransportCounter> {
        self.inner.link.as_ref().and_then(|l| l.counters.as_ref()).map(|counters| counters()).unwrap_or_default()
    }

    /// The peers discovery found (by every method), with what found them;
    /// empty when the node does not look for peers.
    pub async fn discovered_peers(&self) -> Result<Vec<pluresdb_discovery::DiscoveredPeer>, Error> {
        match self.inner.link.as_ref().and_then(|l| l.discovery.as_ref()) {
            Some(discovery) => discovery.discover_peers().await.map_err(Error::Discovery),
            None => Ok(Vec::new()),
        }
    }

    /// Whether the node looks for peers (mDNS, bootstrap, exchange).
    pub fn discovers(&self) -> bool {
        self.inner.link.as_ref().is_some_and(|l| l.discovery.is_some())
    }

    /// The transport's view of the connected peers.
    pub fn connected_peers(&self) -> Vec<pluresdb_net::PeerInfo> {
        self.inner.link.as_ref().map(|l| l.peers.connected_peers()).unwrap_or_default()
    }

    /// For each connected peer that has sent a heartbeat: its wall clock
    /// minus this node's, in ms.
    pub fn peer_clock_offsets(&self) -> Vec<(pluresdb_security::PeerId, i64)> {
        self.inner.link.as_ref().map(|l| l.peers.clock_offsets()).unwrap_or_default()
    }

    /// Connects to the node at `address` and returns its verified peer id.
    pub async fn connect(&self, address: &str) -> Result<pluresdb_security::PeerId, Error> {
        let Some(link) = &self.inner.link else {
            return Err(Error::NoTransport { action: format!("connect to {address}") });
        };
        let peer = link.engine.connect_peer(address).await.map_err(Error::Network)?;
        self.remember_dialed(address).await;
        Ok(peer)
    }

    /// The addresses this node connected to (by `connect` or at start), so
    /// a restarted node dials them again.
    pub fn dialed_addresses(&self) -> Result<Vec<String>, Error> {
        stored_dialed(self.reader().store())
    }

    /// Records `address` among the dialed ones (at most 64, oldest
    /// forgotten first), for an engine that dials it by itself.
    pub async fn remember_dialed(&self, address: &str) {
        let _guard = self.inner.meta_lock.lock().await;
        let mut dialed = match stored_dialed(self.reader().store()) {
            Ok(dialed) => dialed,
            Err(err) => {
                tracing::warn!(error = %pluresdb_core::error_chain(&err), "cannot read the dialed addresses");
                return;
            }
        };
        if dialed.iter().any(|a| a == address) {
            return;
        }
        dialed.push(address.to_owned());
        if dialed.len() > MAX_DIALED {
            dialed.remove(0);
        }
        if let Err(err) = self.commit_meta(vec![(DIALED_META_KEY.to_owned(), pluresdb_core::codec::encode(&dialed))]).await {
            tracing::warn!(error = %pluresdb_core::error_chain(&err), "cannot record a dialed address");
        }
    }

    /// Closes the connection to `peer_id`.
    pub async fn disconnect(&self, peer_id: &pluresdb_security::PeerId) -> Result<(), Error> {
        match &self.inner.link {
            Some(link) if link.engine.is_peer_connected(peer_id).await => {
                link.engine.disconnect_peer(peer_id).await.map_err(Error::Network)
            }
            _ => Err(Error::NotConnected { peer_id: peer_id.to_string() }),
        }
    }

    /// Watches changes to the nodes `filter` selects. With `from`, first
    /// replays what was applied after that version (per origin, in
    /// sequence order, each with the node as it is now), then continues
    /// live with no gap and no repeat.
    pub async fn watch(&self, filter: Filter, from: Option<VersionVector>) -> Result<Watch, Error> {
        let capacity = self.inner.watch_buffer;
        let (subscription, position) = self.ask(|reply| Command::Subscribe { capacity, reply }).await?;
        // A live query knows which nodes pass it now (read after the
        // subscription began: a change after that is judged again anyway).
        let passing = match &filter {
            Filter::Query(query) => self.passing(query)?,
            _ => Default::default(),
        };
        Ok(Watch::new(filter, subscription, position, from, self.inner.reader.clone(), self.inner.stats.clone()).with_passing(passing))
    }

    /// The ids of the nodes that pass `query` (prefix and conditions), at
    /// most [`watch::MAX_LIVE_QUERY_NODES`].
    fn passing(&self, query: &pluresdb_core::query::CheckedQuery) -> Result<std::collections::HashSet<String>, Error> {
        let mut page_query = pluresdb_core::Query {
            prefix: query.prefix.clone(),
            conditions: query.source.conditions.clone(),
            limit: Some(pluresdb_core::query::MAX_LIMIT),
            ..pluresdb_core::Query::default()
        };
        let mut passing = std::collections::HashSet::new();
        loop {
            let page = self.inner.reader.query(&page_query)?;
            passing.extend(page.nodes.into_iter().map(|n| n.id));
            if passing.len() > watch::MAX_LIVE_QUERY_NODES {
                return Err(Error::Core(pluresdb_core::Error::InvalidQuery {
                    reason: format!("the live query follows more than {} nodes; narrow it", watch::MAX_LIVE_QUERY_NODES),
                }));
            }
            match page.next {
                Some(next) => page_query.cursor = Some(next),
                None => return Ok(passing),
            }
        }
    }
}
