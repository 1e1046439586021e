//! [`NetworkConfig`] and [`DiscoveryConfig`]: how a node networks, with the
//! seed's defaults ([`ReceiveLimits`] is the link crate's).

pub use pluresdb_link::ReceiveLimits;
use pluresdb_sync::SyncConfig;
use std::time::Duration;

/// The port PluresDB nodes listen on by default (UDP for QUIC).
pub const DEFAULT_PORT: u16 = 34569;

/// Network settings of a node, with the seed's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The port to listen on; 0 lets the OS choose (read the choice with
    /// `QuicNetworkEngine::local_addr`). Default: 34569.
    pub port: u16,
    /// The address to listen on. Default: `"0.0.0.0"` (every IPv4
    /// interface); `"127.0.0.1"` keeps a node on loopback, `"::"` listens
    /// on IPv6 (and IPv4 where the OS maps it).
    pub bind_address: String,
    /// Run the QUIC engine: read by what composes a node's engines
    /// (`pluresdb serve`, `--no-quic`); a `QuicNetworkEngine` made directly
    /// runs whatever it says. Default: `true`.
    pub enable_quic: bool,
    /// Run the WebRTC engine. There is none yet: [`check`](Self::check)
    /// refuses `true`. Default: `false`.
    pub enable_webrtc: bool,
    /// Run the libp2p engine (`pluresdb_libp2p::Libp2pNetworkEngine`), as
    /// `enable_quic`: `pluresdb serve` runs it beside QUIC unless
    /// `--no-libp2p`. Default: `true`.
    pub enable_libp2p: bool,
    /// Peers to dial at start (`host:port` or `quic://host:port` for the
    /// QUIC engine, multiaddrs for the libp2p engine, which also uses them
    /// to join the DHT). They are redialled with backoff whenever the
    /// connection drops. Default: none.
    pub bootstrap_nodes: Vec<String>,
    /// How long an admitted connection may stay silent before it is
    /// considered dead (QUIC idle timeout). Default: 10 s.
    pub connection_timeout: Duration,
    /// How long a connection may take from its first packet to admission
    /// (the QUIC handshake, then the hello and proof), dialled or accepted;
    /// one not admitted by then is closed (`handshake_timeout`). Kept short
    /// because a connection in its handshake has proven nothing yet.
    /// Default: 5 s.
    pub handshake_timeout: Duration,
    /// Time between heartbeats on each connection; each refreshes the
    /// peer's `last_seen` and round-trip time and keeps the connection from
    /// idling out. Keep it well below `connection_timeout`. Default: 5 s.
    pub heartbeat_interval: Duration,
    /// Most simultaneous peer connections, admitted links and this node's
    /// dials in flight together; further incoming ones are closed with the
    /// reason `too_many_connections`, further dials fail. Incoming
    /// connections in their handshake do not count here (see
    /// `max_handshakes`). On the libp2p engine it caps sync links (DHT
    /// neighbours do not count), and separately the incoming connections
    /// whose peer has no sync link (`max_handshakes_per_ip` per address,
    /// the busiest address's oldest evicted when full); all connections
    /// together are capped at 4 x this. Default: 100.
    pub max_connections: usize,
    /// Most incoming connections (libp2p: sync streams) in their handshake
    /// (not yet admitted) at once: a budget of its own, so that strangers that never finish a
    /// handshake cannot take the room of links and dials. Once a quarter
    /// of it is in use, clients must prove their address first (QUIC
    /// Retry); when it is full, a newcomer takes the place of the oldest
    /// handshake of the address holding the most places, if that is more
    /// than the newcomer's address holds. Default: 32.
    pub max_handshakes: usize,
    /// Most of those handshakes from one IPv4 address or IPv6 /64.
    /// Default: 8.
    pub max_handshakes_per_ip: usize,
    /// Encrypt traffic. QUIC always runs TLS 1.3, so the QUIC engine refuses
    /// `false` rather than pretend. Default: `true`.
    pub enable_encryption: bool,
    /// Try NAT traversal (relays, hole punching). Not built yet:
    /// [`check`](Self::check) refuses `true` rather than pretend.
    /// Default: `false`.
    pub enable_nat_traversal: bool,
    /// Take part in the libp2p engine's Kademlia DHT (answer lookups,
    /// register this node under the network's key). Default: `false`;
    /// `pluresdb serve` turns it on unless `--no-dht`.
    pub enable_dht: bool,
    /// Peer discovery settings. Default: [`DiscoveryConfig::default`].
    pub discovery: DiscoveryConfig,
    /// Sync settings for the node's `DataSyncEngine`: `pluresdb serve`
    /// builds its sync engine with them (the engines themselves carry
    /// bytes and do not read them). Default: [`SyncConfig::node`].
    pub sync: SyncConfig,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            port: DEFAULT_PORT,
            bind_address: "0.0.0.0".to_owned(),
            enable_quic: true,
            enable_webrtc: false,
            enable_libp2p: true,
            bootstrap_nodes: Vec::new(),
            connection_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(5),
            max_connections: 100,
            max_handshakes: 32,
            max_handshakes_per_ip: 8,
            enable_encryption: true,
            enable_nat_traversal: false,
            enable_dht: false,
            discovery: DiscoveryConfig::default(),
            sync: SyncConfig::node(),
        }
    }
}

impl NetworkConfig {
    /// The defaults, listening on `127.0.0.1` on a port the OS picks: what
    /// tests and examples on one machine use.
    pub fn loopback() -> Self {
        Self { port: 0, bind_address: "127.0.0.1".to_owned(), ..Self::default() }
    }

    /// Refuses what no engine can do, with the reason: an engine checks
    /// its config with this when it is initialized. Encryption is always
    /// on (TLS 1.3, noise), every limit and timeout must be positive, and
    /// WebRTC and NAT traversal are not built yet.
    pub fn check(&self) -> Result<(), crate::NetworkError> {
        let refuse = |reason: &str| Err(crate::NetworkError::Config(reason.to_owned()));
        if !self.enable_encryption {
            return refuse("every engine encrypts (TLS 1.3 over QUIC, noise over libp2p); enable_encryption must be true");
        }
        if self.enable_webrtc {
            return refuse("there is no WebRTC engine yet; enable_webrtc must be false");
        }
        if self.enable_nat_traversal {
            return refuse("NAT traversal (relays, hole punching) is not built yet; enable_nat_traversal must be false");
        }
        if self.max_connections == 0 || self.max_handshakes == 0 || self.max_handshakes_per_ip == 0 {
            return refuse("max_connections, max_handshakes and max_handshakes_per_ip must be at least 1");
        }
        if self.connection_timeout.is_zero() || self.heartbeat_interval.is_zero() || self.handshake_timeout.is_zero() {
            return refuse("connection_timeout, handshake_timeout and heartbeat_interval must be positive");
        }
        Ok(())
    }
}

/// How a node finds peers. Plain settings for now; the discovery engines
/// that read them come later (and may move this struct to their crate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// Announce and browse on the local network with mDNS. Default: `true`.
    pub enable_mdns: bool,
    /// Find peers through the DHT. Default: `false`.
    pub enable_dht: bool,
    /// Time between discovery rounds. Default: 60 s.
    pub discovery_interval: Duration,
    /// The mDNS instance name prefix. Default: `"pluresdb"`.
    pub service_name: String,
    /// The mDNS service type. Default: `"_pluresdb._tcp"`.
    pub service_type: String,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            enable_mdns: true,
            enable_dht: false,
            discovery_interval: Duration::from_secs(60),
            service_name: "pluresdb".to_owned(),
            service_type: "_pluresdb._tcp".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = NetworkConfig::default();
        assert_eq!(config.port, 34569);
        assert_eq!(config.bind_address, "0.0.0.0");
        assert!(config.enable_quic && !config.enable_webrtc && config.enable_libp2p);
        assert!(config.bootstrap_nodes.is_empty());
        assert_eq!(config.connection_timeout, Duration::from_secs(10));
        assert_eq!(config.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(config.max_connections, 100);
        assert_eq!((config.handshake_timeout, config.max_handshakes, config.max_handshakes_per_ip), (Duration::from_secs(5), 32, 8));
        assert!(config.enable_encryption && !config.enable_nat_traversal && !config.enable_dht);
        assert_eq!(config.sync, SyncConfig::node());
        assert_eq!(config.sync.ack_delay, pluresdb_sync::NODE_ACK_DELAY);
        let discovery = DiscoveryConfig::default();
        assert!(discovery.enable_mdns && !discovery.enable_dht);
        assert_eq!(discovery.discovery_interval, Duration::from_secs(60));
        assert_eq!((discovery.service_name.as_str(), discovery.service_type.as_str()), ("pluresdb", "_pluresdb._tcp"));
        assert!(ReceiveLimits::default().kib.burst as usize * 1024 >= crate::codec::MAX_PAYLOAD_BYTES);
    }

    #[test]
    fn a_config_asking_for_what_no_engine_does_is_refused_with_the_reason() {
        assert!(NetworkConfig::default().check().is_ok());
        let refused = |config: NetworkConfig, says: &str| {
            let err = config.check().expect_err(says).to_string();
            assert!(err.contains(says), "{err}");
        };
        refused(NetworkConfig { enable_encryption: false, ..NetworkConfig::default() }, "enable_encryption");
        refused(NetworkConfig { enable_webrtc: true, ..NetworkConfig::default() }, "no WebRTC engine");
        refused(NetworkConfig { enable_nat_traversal: true, ..NetworkConfig::default() }, "not built yet");
        refused(NetworkConfig { max_handshakes_per_ip: 0, ..NetworkConfig::default() }, "at least 1");
        refused(NetworkConfig { handshake_timeout: Duration::ZERO, ..NetworkConfig::default() }, "positive");
    }
}
