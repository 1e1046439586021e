//! [`PeerManager`]: the registry of connected and known peers, shared by the
//! network engines (which update it) and the node's API (which lists it).

use crate::exchange::{LearnedPeer, LearnedPeers};
use crate::message::ExchangedPeer;
use chrono::{DateTime, Utc};
use pluresdb_security::PeerId;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

/// The most disconnected peers remembered; beyond it the one seen longest
/// ago is forgotten.
pub const MAX_KNOWN_PEERS: usize = 4_096;

/// The transport a peer is connected over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// QUIC (`QuicNetworkEngine`).
    Quic,
    /// WebRTC data channels.
    WebRtc,
    /// libp2p.
    Libp2p,
    /// A WebSocket from a browser page (`WebSocketNetworkEngine`).
    WebSocket,
}

impl Transport {
    /// The transport's name: `"quic"`, `"webrtc"`, `"libp2p"`, `"websocket"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::WebRtc => "webrtc",
            Transport::Libp2p => "libp2p",
            Transport::WebSocket => "websocket",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which side opened a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// This node dialled the peer (and redials it when the connection drops).
    Dialled,
    /// The peer dialled this node.
    Accepted,
}

/// What is known about a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer id (displayed `12D3KooW...`), verified in the transport's
    /// handshake.
    pub peer_id: PeerId,
    /// The peer's address as this node sees it (`ip:port`).
    pub address: String,
    /// The transport of the current (or last) connection.
    pub transport: Transport,
    /// Who opened the current (or last) connection.
    pub direction: Direction,
    /// Addresses the peer says it listens on (from its `Hello`).
    pub listen_addresses: Vec<String>,
    /// When the current (or last) connection completed its handshake.
    pub connected_at: DateTime<Utc>,
    /// When anything was last received from the peer.
    pub last_seen: DateTime<Utc>,
    /// The latest round-trip time estimate, once measured.
    pub rtt: Option<Duration>,
    /// Frame bytes sent to the peer on the current (or last) connection.
    pub bytes_sent: u64,
    /// Frame bytes received from the peer on the current (or last)
    /// connection.
    pub bytes_received: u64,
    /// Whether a connection to the peer is up.
    pub connected: bool,
}

/// Live counters of one connection, updated by its tasks without locking
/// the registry; [`PeerManager`] reads them into [`PeerInfo`].
#[derive(Debug)]
pub struct PeerStats {
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    last_seen_ms: AtomicI64,
    rtt_micros: AtomicU64,
    /// The peer's wall clock minus this node's, in ms, from its latest
    /// heartbeat ([`NO_OFFSET`] before the first).
    clock_offset_ms: AtomicI64,
}

/// [`PeerStats::clock_offset_ms`] before any heartbeat arrived.
const NO_OFFSET: i64 = i64::MIN;

impl Default for PeerStats {
    fn default() -> Self {
        Self {
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            last_seen_ms: AtomicI64::new(0),
            rtt_micros: AtomicU64::new(0),
            clock_offset_ms: AtomicI64::new(NO_OFFSET),
        }
    }
}

impl PeerStats {
    /// Counts `bytes` sent.
    pub fn record_sent(&self, bytes: usize) {
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts `bytes` received at `now` (which becomes `last_seen`).
    pub fn record_received(&self, bytes: usize, now: DateTime<Utc>) {
        self.bytes_received.fetch_add(bytes as u64, Ordering::Relaxed);
        self.last_seen_ms.fetch_max(now.timestamp_millis(), Ordering::Relaxed);
    }

    /// Records a round-trip time estimate.
    pub fn record_rtt(&self, rtt: Duration) {
        self.rtt_micros.store(u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1), Ordering::Relaxed);
    }

    /// Records a heartbeat the peer stamped `sent` by its clock, received
    /// at `received` by this node's with round-trip time `rtt`: the peer's
    /// clock is taken to have read `sent` half a round trip before.
    pub fn record_heartbeat(&self, sent: DateTime<Utc>, rtt: Duration, received: DateTime<Utc>) {
        let half_trip = i64::try_from(rtt.as_millis() / 2).unwrap_or(i64::MAX);
        let offset = sent.timestamp_millis().saturating_add(half_trip).saturating_sub(received.timestamp_millis());
        self.clock_offset_ms.store(offset.max(NO_OFFSET + 1), Ordering::Relaxed);
    }

    /// The peer's wall clock minus this node's (ms), once a heartbeat
    /// arrived.
    pub fn clock_offset_ms(&self) -> Option<i64> {
        match self.clock_offset_ms.load(Ordering::Relaxed) {
            NO_OFFSET => None,
            offset => Some(offset),
        }
    }

    fn read_into(&self, info: &mut PeerInfo) {
        info.bytes_sent = self.bytes_sent.load(Ordering::Relaxed);
        info.bytes_received = self.bytes_received.load(Ordering::Relaxed);
        if let Some(seen) = DateTime::<Utc>::from_timestamp_millis(self.last_seen_ms.load(Ordering::Relaxed)) {
            info.last_seen = info.last_seen.max(seen);
        }
        info.rtt = match self.rtt_micros.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        };
    }
}

#[derive(Debug)]
struct Entry {
    info: PeerInfo,
    /// The counters of the current connection (while connected).
    stats: Option<Arc<PeerStats>>,
}

impl Entry {
    fn snapshot(&self) -> PeerInfo {
        let mut info = self.info.clone();
        if let Some(stats) = &self.stats {
            stats.read_into(&mut info);
        }
        info
    }
}

/// The registry of peers: those connected now and those seen before (at
/// most [`MAX_KNOWN_PEERS`] of the latter). Thread-safe; share it with
/// `Arc<PeerManager>` between the engines and the API.
///
/// Engines that run side by side each keep their own registry; a node reads
/// them as one through [`union`](Self::union).
#[derive(Debug, Default)]
pub struct PeerManager {
    peers: RwLock<BTreeMap<PeerId, Entry>>,
    learned: Mutex<LearnedPeers>,
    /// Other registries read together with this one (see `union`).
    parts: Vec<Arc<PeerManager>>,
}

impl PeerManager {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry that reads as its own peers together with those of
    /// `parts` (the registries of engines that run side by side): a peer
    /// connected through any of them is connected, listed once, with the
    /// figures of a connected link where it has one.
    pub fn union(parts: Vec<Arc<PeerManager>>) -> Self {
        Self { parts, ..Self::default() }
    }

    /// `read` of this registry followed by each part's, each sorted by
    /// peer id, connected entries before others of the same peer, and
    /// only the first entry of each peer kept.
    fn gather<T>(&self, read: fn(&PeerManager) -> Vec<T>, key: fn(&T) -> (&PeerId, bool)) -> Vec<T> {
        let mut all = read(self);
        if self.parts.is_empty() {
            return all;
        }
        for part in &self.parts {
            all.extend(part.gather(read, key));
        }
        // Stable: among equals, this registry's entry, then the parts' in order.
        all.sort_by(|a, b| {
            let ((a_peer, a_connected), (b_peer, b_connected)) = (key(a), key(b));
            a_peer.cmp(b_peer).then(b_connected.cmp(&a_connected))
        });
        all.dedup_by(|later, first| key(later).0 == key(first).0);
        all
    }

    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<PeerId, Entry>> {
        // A panic while holding the lock leaves a map that is still
        // consistent (every update is a single insert or field store).
        self.peers.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<PeerId, Entry>> {
        self.peers.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that `info.peer_id` is connected now, with a fresh set of
    /// counters that the connection updates; returns them.
    pub fn peer_connected(&self, mut info: PeerInfo) -> Arc<PeerStats> {
        let stats = Arc::new(PeerStats::default());
        if let Some(rtt) = info.rtt {
            stats.record_rtt(rtt);
        }
        info.connected = true;
        let mut peers = self.write();
        peers.insert(info.peer_id, Entry { info, stats: Some(stats.clone()) });
        stats
    }

    /// Records that `peer_id`'s connection is gone; the peer stays known
    /// with its last figures.
    pub fn peer_disconnected(&self, peer_id: &PeerId) {
        let mut peers = self.write();
        if let Some(entry) = peers.get_mut(peer_id) {
            entry.info = entry.snapshot();
            entry.info.connected = false;
            entry.stats = None;
        }
        if peers.len() > MAX_KNOWN_PEERS {
            let oldest = peers.values().filter(|e| !e.info.connected).min_by_key(|e| e.info.last_seen).map(|e| e.info.peer_id);
            if let Some(oldest) = oldest {
                peers.remove(&oldest);
            }
        }
    }

    /// What is known about `peer_id`.
    pub fn get(&self, peer_id: &PeerId) -> Option<PeerInfo> {
        let own = self.read().get(peer_id).map(Entry::snapshot);
        let mut found = own.into_iter().chain(self.parts.iter().filter_map(|part| part.get(peer_id)));
        let first = found.next()?;
        if first.connected {
            return Some(first);
        }
        Some(found.find(|info| info.connected).unwrap_or(first))
    }

    /// Whether `peer_id` is connected.
    pub fn is_connected(&self, peer_id: &PeerId) -> bool {
        self.read().get(peer_id).is_some_and(|e| e.info.connected) || self.parts.iter().any(|part| part.is_connected(peer_id))
    }

    /// The connected peers, in peer id order.
    pub fn connected_peers(&self) -> Vec<PeerInfo> {
        let own = |registry: &PeerManager| registry.read().values().filter(|e| e.info.connected).map(Entry::snapshot).collect();
        self.gather(own, |info: &PeerInfo| (&info.peer_id, info.connected))
    }

    /// Every known peer, connected or not, in peer id order.
    pub fn known_peers(&self) -> Vec<PeerInfo> {
        let own = |registry: &PeerManager| registry.read().values().map(Entry::snapshot).collect();
        self.gather(own, |info: &PeerInfo| (&info.peer_id, info.connected))
    }

    /// For each connected peer that has sent a heartbeat: its wall clock
    /// minus this node's, in ms (see [`PeerStats::record_heartbeat`]).
    pub fn clock_offsets(&self) -> Vec<(PeerId, i64)> {
        let own = |registry: &PeerManager| {
            registry
                .read()
                .values()
                .filter(|e| e.info.connected)
                .filter_map(|e| Some((e.info.peer_id, e.stats.as_ref()?.clock_offset_ms()?)))
                .collect()
        };
        self.gather(own, |(peer, _): &(PeerId, i64)| (peer, true))
    }

    /// How many peers are connected.
    pub fn connected_count(&self) -> usize {
        if self.parts.is_empty() {
            return self.read().values().filter(|e| e.info.connected).count();
        }
        self.connected_peers().len()
    }

    /// Records the peers that `via` (seen at `via_address`) told this node
    /// (`local_peer`) about; returns how many were new or moved. See
    /// [`crate::exchange`].
    pub fn learn(&self, local_peer: &str, via: &str, via_address: SocketAddr, peers: Vec<ExchangedPeer>) -> usize {
        let mut learned = self.learned.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        learned.learn(local_peer, via, via_address, peers, Utc::now())
    }

    /// The peers learned by exchange and told within
    /// [`LEARNED_PEER_TTL`](crate::exchange::LEARNED_PEER_TTL), in peer id
    /// order; a peer told of by several peers has an entry for each.
    pub fn learned_peers(&self) -> Vec<LearnedPeer> {
        let mut learned = self.learned.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).list(Utc::now());
        if !self.parts.is_empty() {
            learned.extend(self.parts.iter().flat_map(|part| part.learned_peers()));
            learned.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        }
        learned
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_peer as peer;

    /// `entries` in peer id order, as the registry lists them.
    fn sorted<T, const N: usize>(mut entries: [(PeerId, T); N]) -> [(PeerId, T); N] {
        entries.sort_by_key(|(peer, _)| *peer);
        entries
    }

    fn info(peer: &str) -> PeerInfo {
        let now = Utc::now();
        PeerInfo {
            peer_id: crate::test_peer(peer),
            address: "127.0.0.1:1".into(),
            transport: Transport::Quic,
            direction: Direction::Dialled,
            listen_addresses: vec![],
            connected_at: now,
            last_seen: now,
            rtt: None,
            bytes_sent: 0,
            bytes_received: 0,
            connected: false,
        }
    }

    #[test]
    fn peers_connect_count_and_disconnect() {
        let manager = PeerManager::new();
        let stats = manager.peer_connected(info("a"));
        manager.peer_connected(info("b"));
        stats.record_sent(10);
        stats.record_received(7, Utc::now());
        stats.record_rtt(Duration::from_micros(250));
        let a = manager.get(&peer("a")).unwrap();
        assert_eq!((a.bytes_sent, a.bytes_received, a.rtt), (10, 7, Some(Duration::from_micros(250))));
        assert_eq!(manager.connected_count(), 2);
        manager.peer_disconnected(&peer("a"));
        assert!(!manager.is_connected(&peer("a")));
        assert_eq!(manager.get(&peer("a")).unwrap().bytes_sent, 10, "figures survive the disconnect");
        assert_eq!(manager.connected_peers().iter().map(|p| p.peer_id).collect::<Vec<_>>(), [peer("b")]);
        assert_eq!(manager.known_peers().len(), 2);
        assert_eq!(Transport::Quic.to_string(), "quic");
    }

    /// Duplicate links are settled by "the smaller peer id", which
    /// docs/protocol.md states in text order and the registries compare as
    /// key bytes: the two orders must agree, or two nodes of different
    /// versions could each close the link the other keeps.
    #[test]
    fn peer_ids_order_by_key_bytes_as_by_text() {
        let ids: Vec<PeerId> = (0..=255u8)
            .map(|i| {
                let mut seed = [i; 32];
                seed[0] = i.wrapping_mul(37);
                pluresdb_security::Identity::from_seed(seed).peer_id()
            })
            .collect();
        let mut by_key = ids.clone();
        by_key.sort();
        let mut by_text = ids;
        by_text.sort_by_key(|id| id.to_string());
        assert_eq!(by_key, by_text);
    }

    #[test]
    fn heartbeats_give_each_peers_clock_offset() {
        let manager = PeerManager::new();
        let a = manager.peer_connected(info("a"));
        manager.peer_connected(info("b"));
        assert_eq!(manager.clock_offsets(), []);
        let now = Utc::now();
        // Sent 40 ms before it arrived by our clock, over a 100 ms round
        // trip: the peer's clock is 10 ms ahead.
        a.record_heartbeat(now - chrono::Duration::milliseconds(40), Duration::from_millis(100), now);
        assert_eq!(manager.clock_offsets(), [(peer("a"), 10)]);
        let year = chrono::Duration::days(365);
        a.record_heartbeat(now - year, Duration::ZERO, now);
        assert_eq!(manager.clock_offsets(), [(peer("a"), -year.num_milliseconds())]);
        manager.peer_disconnected(&peer("a"));
        assert_eq!(manager.clock_offsets(), []);
    }

    #[test]
    fn a_union_lists_a_peer_linked_through_two_engines_once_and_connected_while_either_link_is() {
        let (quic, libp2p) = (Arc::new(PeerManager::new()), Arc::new(PeerManager::new()));
        let node = PeerManager::union(vec![quic.clone(), libp2p.clone()]);
        quic.peer_connected(info("p"));
        libp2p.peer_connected(PeerInfo { transport: Transport::Libp2p, ..info("p") });
        libp2p.peer_connected(PeerInfo { transport: Transport::Libp2p, ..info("q") });
        assert_eq!(
            node.connected_peers().iter().map(|p| (p.peer_id, p.transport)).collect::<Vec<_>>(),
            sorted([(peer("p"), Transport::Quic), (peer("q"), Transport::Libp2p)])
        );
        assert_eq!(node.connected_count(), 2);

        // The QUIC link goes: the peer is still connected, over libp2p.
        quic.peer_disconnected(&peer("p"));
        assert!(node.is_connected(&peer("p")));
        assert_eq!(node.get(&peer("p")).map(|p| (p.transport, p.connected)), Some((Transport::Libp2p, true)));
        assert_eq!(node.known_peers().len(), 2, "each peer once, the connected entry first");
        libp2p.peer_disconnected(&peer("p"));
        assert!(!node.is_connected(&peer("p")));
        assert_eq!(node.get(&peer("p")).map(|p| p.connected), Some(false));
        assert_eq!(node.connected_count(), 1);
    }
}
