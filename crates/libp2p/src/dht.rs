//! DHT discovery: the Kademlia key under which the nodes of one network
//! announce themselves, and the bounded list of peers found under it.
//!
//! Every node of a network provides (Kademlia `ADD_PROVIDER`) the key
//! [`network_key`] and looks up its providers (`GET_PROVIDERS`); the
//! providers it finds are the other nodes of its network. The key is
//! SHA-256(`"pluresdb-dht-key/v1"` || secret): like the mDNS network tag
//! (`NetworkSecret::network_tag`), it tells others only whether two nodes
//! announce the same network, never the secret (SHA-256 is one-way, and the
//! label keeps it apart from the tag and from the handshake proofs). Nodes
//! of other networks that share the DHT route these records but never see
//! a reason to open a sync stream, and would be refused if they did.

use libp2p::kad::RecordKey;
use pluresdb_security::NetworkSecret;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const DHT_KEY_LABEL: &[u8] = b"pluresdb-dht-key/v1";

/// The most DHT-found peers remembered; beyond it the one found longest
/// ago is forgotten.
pub const MAX_DHT_PEERS: usize = 1_024;

/// The most addresses kept per DHT-found peer.
pub const MAX_DHT_ADDRESSES: usize = 8;

/// How long a DHT-found peer is listed after it was last found.
pub const DHT_PEER_TTL: Duration = Duration::from_secs(30 * 60);

/// The DHT key of the network that `secret` makes.
pub fn network_key(secret: &NetworkSecret) -> RecordKey {
    let digest = Sha256::new().chain_update(DHT_KEY_LABEL).chain_update(secret.as_bytes()).finalize();
    RecordKey::new(&digest.as_slice())
}

/// A peer that announced this node's network key in the DHT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhtPeer {
    /// Its peer id (`12D3KooW...`).
    pub peer_id: String,
    /// Where it was reached or announced itself (multiaddrs), newest first.
    pub addresses: Vec<String>,
    /// How it was found: always `"dht"`.
    pub source: &'static str,
}

/// The peers found under the network key, bounded ([`MAX_DHT_PEERS`],
/// [`MAX_DHT_ADDRESSES`], [`DHT_PEER_TTL`]).
#[derive(Debug, Default)]
pub(crate) struct DhtPeers {
    peers: BTreeMap<String, (Vec<String>, Instant)>,
}

impl DhtPeers {
    /// Records that `peer` was found (at `address`, if known) at `now`.
    pub(crate) fn found(&mut self, peer: &str, address: Option<String>, now: Instant) {
        if !self.peers.contains_key(peer) && self.peers.len() >= MAX_DHT_PEERS {
            let oldest = self.peers.iter().min_by_key(|(_, (_, seen))| *seen).map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                self.peers.remove(&oldest);
            }
        }
        let entry = self.peers.entry(peer.to_owned()).or_insert_with(|| (Vec::new(), now));
        entry.1 = now;
        if let Some(address) = address {
            entry.0.retain(|known| *known != address);
            entry.0.insert(0, address);
            entry.0.truncate(MAX_DHT_ADDRESSES);
        }
    }

    /// Whether `peer` was found (and not forgotten yet).
    pub(crate) fn contains(&self, peer: &str) -> bool {
        self.peers.contains_key(peer)
    }

    /// Adds `addresses` to a peer already found (at `now`); others are not
    /// added (only the DHT says who is of this network).
    pub(crate) fn add_addresses(&mut self, peer: &str, addresses: impl IntoIterator<Item = String>, now: Instant) {
        if !self.contains(peer) {
            return;
        }
        for address in addresses.into_iter().take(MAX_DHT_ADDRESSES) {
            self.found(peer, Some(address), now);
        }
    }

    /// The peers found within [`DHT_PEER_TTL`] of `now`, in peer id order.
    pub(crate) fn list(&mut self, now: Instant) -> Vec<DhtPeer> {
        self.peers.retain(|_, (_, seen)| now.saturating_duration_since(*seen) < DHT_PEER_TTL);
        self.peers
            .iter()
            .map(|(peer_id, (addresses, _))| DhtPeer { peer_id: peer_id.clone(), addresses: addresses.clone(), source: "dht" })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_depends_on_the_secret_only_and_is_not_the_tag() {
        let a = NetworkSecret::from_bytes([1; 32]);
        let b = NetworkSecret::from_bytes([2; 32]);
        assert_eq!(network_key(&a), network_key(&NetworkSecret::from_bytes([1; 32])));
        assert_ne!(network_key(&a), network_key(&b));
        let key = network_key(&a);
        assert_eq!(key.as_ref().len(), 32);
        assert_ne!(key.as_ref(), a.as_bytes().as_slice(), "not the secret");
        assert!(!a.network_tag().is_empty());
        let tag_bytes: Vec<u8> = (0..8).map(|i| u8::from_str_radix(&a.network_tag()[i * 2..i * 2 + 2], 16).unwrap()).collect();
        assert_ne!(&key.as_ref()[..8], tag_bytes.as_slice(), "not the mDNS tag either");
    }

    #[test]
    fn found_peers_are_bounded_and_expire() {
        let start = Instant::now();
        let mut peers = DhtPeers::default();
        for n in 0..MAX_DHT_PEERS + 5 {
            peers.found(&format!("p{n:05}"), None, start + Duration::from_millis(n as u64));
        }
        let listed = peers.list(start + Duration::from_secs(1));
        assert_eq!(listed.len(), MAX_DHT_PEERS);
        assert!(listed.iter().all(|p| p.peer_id != "p00000"), "the oldest went first");
        for n in 0..MAX_DHT_ADDRESSES + 3 {
            peers.found("p00010", Some(format!("/ip4/10.0.0.{n}/tcp/1")), start);
        }
        let p = peers.list(start).into_iter().find(|p| p.peer_id == "p00010").unwrap();
        assert_eq!(p.addresses.len(), MAX_DHT_ADDRESSES);
        assert_eq!(p.addresses[0], format!("/ip4/10.0.0.{}/tcp/1", MAX_DHT_ADDRESSES + 2), "newest first");
        assert!(peers.list(start + DHT_PEER_TTL + Duration::from_secs(2)).is_empty());
    }
}
