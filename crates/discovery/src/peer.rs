//! The public records of discovery: [`LocalPeer`] (who this node is),
//! [`DiscoveredPeer`] (who it found) and [`DiscoveryMethod`] (how).

use chrono::{DateTime, Utc};
use std::fmt;
use std::net::IpAddr;

/// How a peer was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DiscoveryMethod {
    /// It announced itself with mDNS on the local network.
    Mdns,
    /// Its address is one of the configured bootstrap addresses.
    Bootstrap,
    /// A connected peer told this node about it (peer exchange), or the
    /// peer itself did while it was connected (`via` is then its own id).
    Exchange,
    /// The libp2p engine found it on the DHT under this network's key.
    Dht,
}

impl DiscoveryMethod {
    /// The method's name: `"mdns"`, `"bootstrap"`, `"exchange"`, `"dht"`.
    pub fn as_str(self) -> &'static str {
        match self {
            DiscoveryMethod::Mdns => "mdns",
            DiscoveryMethod::Bootstrap => "bootstrap",
            DiscoveryMethod::Exchange => "exchange",
            DiscoveryMethod::Dht => "dht",
        }
    }
}

impl fmt::Display for DiscoveryMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A peer that discovery knows of, merged over every method that found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveredPeer {
    /// The peer id (`12D3KooW...`), or `""` for a bootstrap address whose
    /// peer is not known yet (see [`peer_id`](Self::peer_id)). An id from
    /// mDNS or exchange is what the peer or a neighbour claims: dialling
    /// verifies it in the TLS handshake.
    pub id: String,
    /// The preferred address, `ip:port` (the first of `addresses`). For a
    /// bootstrap address it is the configured text without `quic://`, which
    /// may name a host rather than an IP.
    pub address: String,
    /// Every known address, preferred first (IPv4, then IPv6, then
    /// link-local IPv4, then loopback), at most 8.
    pub addresses: Vec<String>,
    /// Every method that found the peer, in [`DiscoveryMethod`] order.
    pub methods: Vec<DiscoveryMethod>,
    /// When any method last heard of the peer (for a bootstrap address: when
    /// it was configured).
    pub last_seen: DateTime<Utc>,
    /// Whether the peer belongs to this node's network. mDNS announcements
    /// carry a network tag; one with another tag is listed (so a user sees
    /// it) but flagged `false`, and is never dialled. Bootstrap addresses and
    /// peers learned from connected peers count as this network.
    pub same_network: bool,
    /// For a peer learned by exchange: the peer that told this node about it.
    pub via: Option<String>,
}

impl DiscoveredPeer {
    /// The peer id, or `None` while it is unknown (a bootstrap address not
    /// connected yet).
    pub fn peer_id(&self) -> Option<&str> {
        (!self.id.is_empty()).then_some(self.id.as_str())
    }

    /// Whether `method` found this peer.
    pub fn found_by(&self, method: DiscoveryMethod) -> bool {
        self.methods.contains(&method)
    }
}

/// This node, as discovery announces it and recognises its own
/// announcement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPeer {
    /// This node's peer id (`12D3KooW...`).
    pub peer_id: String,
    /// The port the node accepts QUIC connections on. QUIC runs over UDP
    /// even though the seed's service type says `_tcp`.
    pub port: u16,
    /// The addresses to announce. Empty (the default) announces every
    /// interface's address and keeps the announcement up to date as
    /// addresses come and go; a node bound to one address lists it here.
    /// Announcing a loopback address also lets this node accept loopback
    /// addresses from others (which is what tests on one machine need).
    pub addresses: Vec<IpAddr>,
    /// The network's public tag (`NetworkSecret::network_tag`), announced so
    /// that nodes of other networks on the same LAN are told apart. Empty for
    /// a node without a network secret.
    pub network_tag: String,
}

impl LocalPeer {
    /// This node as `peer_id`, accepting connections on `port`, in the
    /// network tagged `network_tag`, announcing every interface's address.
    pub fn new(peer_id: impl Into<String>, port: u16, network_tag: impl Into<String>) -> Self {
        Self { peer_id: peer_id.into(), port, addresses: Vec::new(), network_tag: network_tag.into() }
    }

    /// The same, announcing only `addresses`.
    pub fn with_addresses(mut self, addresses: Vec<IpAddr>) -> Self {
        self.addresses = addresses;
        self
    }

    /// Whether this node announces a loopback address, which makes loopback
    /// addresses of other peers usable (they can only be on this machine).
    pub(crate) fn on_loopback(&self) -> bool {
        self.addresses.iter().any(IpAddr::is_loopback)
    }
}
