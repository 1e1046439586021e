//! The swarm: transports (TCP and WebSocket with noise and yamux, QUIC-v1,
//! and circuits through relays) and the behaviours (connection and memory
//! limits, identify, ping, Kademlia, the relay client and optional relay
//! server, DCUtR hole punching, AutoNAT, and the sync stream protocol),
//! composed by derive as rust-libp2p does.

use futures::future::Either;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{autonat, connection_limits, dcutr, identify, kad, memory_connection_limits, noise, ping, quic, relay, tcp, websocket, yamux};
use libp2p::{PeerId, StreamProtocol, Swarm, Transport as _};
use pluresdb_net::{NetworkConfig, NetworkError};
use std::time::Duration;

/// The sync protocol's name in multistream-select (and in identify).
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/pluresdb/sync/1");

/// The Kademlia protocol of PluresDB's DHT: its own name, so PluresDB
/// nodes form their own DHT and do not serve (or crawl) others'.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/pluresdb/kad/1.0.0");

/// The identify protocol version string.
pub const IDENTIFY_PROTOCOL_VERSION: &str = "/pluresdb/1.0.0";

/// Streams one connection may have open at once (yamux): the sync stream,
/// identify, ping and a few Kademlia requests.
const MAX_STREAMS_PER_CONNECTION: usize = 64;

/// Connections to one peer at once: one, plus one while a duplicate or a
/// replacement is settled, plus two while a relayed connection is upgraded
/// (a peer may be reached through a circuit per relay address at first,
/// and DCUtR then dials directly beside them; with two, the hole punch
/// was refused by this very limit).
const MAX_CONNECTIONS_PER_PEER: u32 = 4;

/// The share of the machine's memory above which the node accepts no new
/// connection (`memory_connection_limits`).
const MAX_MEMORY_FRACTION: f64 = 0.9;

/// The behaviours of a PluresDB libp2p node.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// Caps on connections: pending incoming (handshakes), established,
    /// per peer. First, so a denied connection costs no other behaviour
    /// any state.
    pub(crate) limits: connection_limits::Behaviour,
    /// No new connection while the process uses most of the memory.
    pub(crate) memory: memory_connection_limits::Behaviour,
    /// Incoming connections without a sync link: a share per address,
    /// eviction when full (see [`crate::admission`]).
    pub(crate) shares: crate::admission::ConnectionShares,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    /// On when the DHT is (Kademlia, server mode).
    pub(crate) kad: Toggle<kad::Behaviour<MemoryStore>>,
    /// Reservations on relays and circuits through them (see
    /// [`crate::relay`]).
    pub(crate) relay_client: relay::client::Behaviour,
    /// On when this node serves as a relay (`serve --relay`), within
    /// [`crate::relay::server_config`]'s limits.
    pub(crate) relay: Toggle<relay::Behaviour>,
    /// This node's listen addresses as address candidates (for DCUtR;
    /// see [`crate::relay::OwnCandidates`]). Before DCUtR, so they are
    /// known when a relayed connection comes.
    pub(crate) own_candidates: crate::relay::OwnCandidates,
    /// Hole punching over relayed connections.
    pub(crate) dcutr: Toggle<dcutr::Behaviour>,
    /// Whether this node is reachable from outside (asks connected peers
    /// to dial it back; answers their requests within its throttles).
    pub(crate) autonat: autonat::v1::Behaviour,
    /// `/pluresdb/sync/1` streams.
    pub(crate) sync: libp2p_stream::Behaviour,
}

/// Established connections in all, per `max_connections`: a backstop for
/// memory that no one party reaches. Sync links hold at most
/// `max_connections` peers (one connection each, more only while a
/// duplicate settles or a relayed connection is upgraded), incoming
/// connections without a link at most `max_connections`
/// ([`crate::admission::ConnectionShares`]), and this node's own dials
/// (Kademlia, relays) the rest.
pub const ESTABLISHED_PER_MAX_CONNECTION: u32 = 4;

/// The connection limits for `config`: `max_handshakes` incoming
/// connections in their transport handshake, `4 x max_connections`
/// established in all ([`ESTABLISHED_PER_MAX_CONNECTION`]), four per peer.
/// DHT neighbours do not count against `max_connections`, which caps sync
/// links (and, through [`crate::admission::ConnectionShares`], incoming
/// connections without one).
pub(crate) fn connection_limits(config: &NetworkConfig) -> connection_limits::ConnectionLimits {
    let max = u32::try_from(config.max_connections).unwrap_or(u32::MAX);
    connection_limits::ConnectionLimits::default()
        .with_max_pending_incoming(Some(u32::try_from(config.max_handshakes).unwrap_or(u32::MAX)))
        .with_max_established(Some(max.saturating_mul(ESTABLISHED_PER_MAX_CONNECTION)))
        .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
}

/// What the swarm runs beside the basics: the DHT, a relay server, hole
/// punching.
pub(crate) struct Features {
    pub(crate) dht: bool,
    /// The relay server's configuration, when this node serves as one.
    pub(crate) relay: Option<relay::Config>,
    pub(crate) hole_punching: bool,
    /// The engine's budget of incoming connections without a sync link.
    pub(crate) unlinked: crate::admission::UnlinkedConnections,
}

/// Builds the transport and the swarm for `keypair`.
pub(crate) fn build_swarm(keypair: &Keypair, config: &NetworkConfig, features: Features) -> Result<Swarm<Behaviour>, NetworkError> {
    let peer_id = keypair.public().to_peer_id();
    let (relay_transport, relay_client) = relay::client::new(peer_id);
    let transport = transport(keypair, config.handshake_timeout, relay_transport)?;
    let behaviour = behaviour(keypair, peer_id, config, features, relay_client);
    let swarm_config =
        libp2p::swarm::Config::with_tokio_executor().with_idle_connection_timeout(config.connection_timeout.max(Duration::from_secs(1)));
    Ok(Swarm::new(transport, behaviour, peer_id, swarm_config))
}

fn transport(
    keypair: &Keypair,
    handshake_timeout: Duration,
    relay_transport: relay::client::Transport,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, NetworkError> {
    let noise = noise::Config::new(keypair).map_err(|err| NetworkError::Config(format!("noise: {err}")))?;
    let mut yamux = yamux::Config::default();
    yamux.set_max_num_streams(MAX_STREAMS_PER_CONNECTION);
    let tcp_config = || tcp::Config::default().nodelay(true);
    let tcp = tcp::tokio::Transport::new(tcp_config())
        .upgrade(Version::V1Lazy)
        .authenticate(noise.clone())
        .multiplex(yamux.clone())
        .timeout(handshake_timeout);
    let ws = websocket::Config::new(tcp::tokio::Transport::new(tcp_config()))
        .upgrade(Version::V1Lazy)
        .authenticate(noise.clone())
        .multiplex(yamux.clone())
        .timeout(handshake_timeout);
    // A circuit is a stream on the connection to the relay; the two ends
    // run noise and yamux over it end to end (the relay sees ciphertext).
    let circuit = relay_transport.upgrade(Version::V1Lazy).authenticate(noise).multiplex(yamux).timeout(handshake_timeout);
    let mut quic_config = quic::Config::new(keypair);
    quic_config.handshake_timeout = handshake_timeout;
    let quic = quic::tokio::Transport::new(quic_config);
    // Circuits first: their addresses are the relay's with `/p2p-circuit`
    // after them. WebSocket before TCP: its addresses are TCP ones with
    // `/ws` after them.
    Ok(circuit
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .or_transport(ws.map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer))))
        .map(|either, _| flatten(either))
        .or_transport(tcp.map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer))))
        .map(|either, _| flatten(either))
        .or_transport(quic.map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer))))
        .map(|either, _| flatten(either))
        .boxed())
}

fn flatten<T>(either: Either<T, T>) -> T {
    match either {
        Either::Left(value) | Either::Right(value) => value,
    }
}

fn behaviour(
    keypair: &Keypair,
    peer_id: PeerId,
    config: &NetworkConfig,
    features: Features,
    relay_client: relay::client::Behaviour,
) -> Behaviour {
    let identify = identify::Behaviour::new(
        identify::Config::new(IDENTIFY_PROTOCOL_VERSION.to_owned(), keypair.public())
            .with_agent_version(format!("pluresdb/{}", env!("CARGO_PKG_VERSION"))),
    );
    let kad = features.dht.then(|| {
        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config.set_query_timeout(Duration::from_secs(30));
        // Records are bounded: a stranger cannot fill the node's memory.
        let store = MemoryStore::with_config(
            peer_id,
            MemoryStoreConfig { max_records: 1_024, max_value_bytes: 16 * 1024, max_providers_per_key: 64, max_provided_keys: 16 },
        );
        let mut kad = kad::Behaviour::with_config(peer_id, store, kad_config);
        // A listening node serves the DHT even before an external address
        // is confirmed (on a LAN or loopback none ever is).
        kad.set_mode(Some(kad::Mode::Server));
        kad
    });
    Behaviour {
        limits: connection_limits::Behaviour::new(connection_limits(config)),
        memory: memory_connection_limits::Behaviour::with_max_percentage(MAX_MEMORY_FRACTION),
        shares: crate::admission::ConnectionShares::new(features.unlinked),
        identify,
        ping: ping::Behaviour::new(ping::Config::new().with_interval(config.heartbeat_interval.max(Duration::from_secs(1)))),
        kad: Toggle::from(kad),
        relay_client,
        relay: Toggle::from(features.relay.map(|relay_config| {
            let mut relay = relay::Behaviour::new(peer_id, relay_config);
            // The operator said this node is reachable (`--relay`): serve
            // at once rather than after an external address is confirmed.
            relay.set_status(Some(relay::Status::Enable));
            relay
        })),
        own_candidates: crate::relay::OwnCandidates::default(),
        dcutr: Toggle::from(features.hole_punching.then(|| dcutr::Behaviour::new(peer_id))),
        autonat: autonat::v1::Behaviour::new(peer_id, crate::relay::autonat_config()),
        sync: libp2p_stream::Behaviour::new(),
    }
}
