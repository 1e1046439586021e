//! PluresDB peer discovery: [`CombinedDiscovery`] finds the other nodes of a
//! network by mDNS on the local network, by the configured bootstrap
//! addresses and by peer exchange (what connected peers tell), and merges
//! them by peer id in one bounded directory; [`spawn_auto_connect`] dials
//! what it finds.
//!
//! A node announces itself, lists what it knows and withdraws when it
//! stops:
//!
//! ```
//! use pluresdb_discovery::{CombinedDiscovery, DiscoveryConfig, LocalPeer};
//! use pluresdb_security::{Identity, NetworkSecret};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let peer_id = Identity::generate()?.peer_id().to_string();
//! let secret = NetworkSecret::generate()?;
//! let discovery = CombinedDiscovery::new(DiscoveryConfig::default())
//!     .with_local(LocalPeer::new(peer_id, 34569, secret.network_tag()))
//!     .with_bootstrap(vec!["quic://192.0.2.1:34569".to_owned()]);
//! # // Tests keep mDNS on loopback: nothing leaves the machine.
//! # let discovery = discovery.with_interfaces(vec!["lo".to_owned()]);
//! discovery.start_discovery().await?; // mDNS daemon up, browsing
//! discovery.announce_peer().await?; // on the air after about a second
//! for peer in discovery.discover_peers().await? {
//!     println!("{} at {} ({:?})", peer.id, peer.address, peer.methods);
//! }
//! discovery.stop().await; // goodbye: other nodes drop this one at once
//! # Ok(())
//! # }
//! ```
//!
//! # mDNS announcements
//!
//! A node announces the DNS-SD service type `{service_type}.local.`
//! (`_pluresdb._tcp.local.`) under the instance name
//! `{service_name}-{first 16 characters of its peer id}`, on its QUIC port.
//! QUIC runs over UDP: the `_tcp` in the seed's service type is only a name.
//! TXT properties:
//!
//! | key   | value |
//! |-------|-------|
//! | `id`  | the full peer id (`12D3KooW...`) |
//! | `net` | the network tag ([`NetworkSecret::network_tag`](pluresdb_security::NetworkSecret::network_tag)); empty without a secret |
//! | `v`   | the format version, `1` (later versions may add keys, not drop these) |
//!
//! Announcements lacking one of these, or with a malformed one, are
//! skipped; those of another network are listed with
//! [`same_network`](DiscoveredPeer::same_network) `false` and never
//! dialled. A claimed peer id is proven only when the peer is dialled (its
//! TLS certificate). Addresses from the network are checked before they are
//! listed: unicast, with a port, no IPv6 link-local, and loopback only for a
//! node that announces loopback itself. The directory holds at most
//! [`MAX_DISCOVERED_PEERS`] peers of [`MAX_PEER_ADDRESSES`] addresses.
//!
//! Timing, as measured between nodes on one host: an announcement is seen
//! by the others about 0.8 s after [`announce_peer`](CombinedDiscovery::announce_peer)
//! (mDNS probes its names for 750 ms first); a node that starts browsing
//! finds those already announced within about 50 ms; a withdrawal
//! ([`stop`](CombinedDiscovery::stop), about 150 ms) is seen about 1 s
//! later (RFC 6762 keeps a withdrawn record for a second).
//!
//! mdns-sd runs one thread per discovery (`mDNS_daemon`) with one IPv4 and
//! one IPv6 UDP socket bound to port 5353 on all addresses (with
//! `SO_REUSEADDR`/`SO_REUSEPORT`, shared with other responders), joined to
//! 224.0.0.251 and ff02::fb on every interface that is up, loopback
//! included. It sends only to those multicast groups, and checks the
//! interfaces' addresses every 5 s, re-announcing an automatic-address
//! service when they change.
//!
//! The DHT (`enable_dht`) is the libp2p engine's (`pluresdb-libp2p`), which
//! finds and dials the network's nodes there itself; given its findings
//! ([`CombinedDiscovery::with_dht_peers`]), discovery lists them with the
//! method `dht`. Without them `enable_dht` is reported once at start.

mod address;
// Without mDNS only the configuration checks of the format are used.
#[cfg_attr(not(feature = "mdns"), allow(dead_code))]
mod announcement;
mod backoff;
mod combined;
mod connect;
mod directory;
mod error;
#[cfg(feature = "mdns")]
mod mdns;
mod peer;

pub use announcement::{txt_properties, Announcement, InvalidAnnouncement};
pub use backoff::{retry_delay, DIALS_PER_SECOND, DIAL_BURST, FIRST_RETRY_DELAY, GIVE_UP_DELAY, MAX_DIAL_FAILURES, MAX_RETRY_DELAY};
pub use combined::{CombinedDiscovery, DhtSource};
pub use connect::{spawn_auto_connect, AUTO_CONNECT_INTERVAL, DIALS_PER_ROUND};
pub use directory::{MAX_DISCOVERED_PEERS, MAX_PEER_ADDRESSES};
pub use error::{DiscoveryError, Result};
pub use peer::{DiscoveredPeer, DiscoveryMethod, LocalPeer};
pub use pluresdb_net::DiscoveryConfig;

#[cfg(test)]
mod test_support {
    use pluresdb_security::Identity;

    /// The peer id of the `n`-th test identity (deterministic).
    pub(crate) fn peer_id(n: u32) -> String {
        let mut seed = [7u8; 32];
        seed[..4].copy_from_slice(&n.to_le_bytes());
        Identity::from_seed(seed).peer_id().to_string()
    }
}
