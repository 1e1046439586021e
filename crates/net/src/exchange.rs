//! Peer exchange: what connected peers tell this node about the other peers
//! of the network ([`NetworkMessage::PeerExchange`](crate::NetworkMessage)),
//! kept in a bounded [`LearnedPeers`] book that discovery reads to dial
//! them.
//!
//! Nothing a peer says is trusted beyond being a hint: every address is
//! checked before it is kept ([`usable_address`]), the book holds at most
//! [`MAX_LEARNED_PEERS`] peers, and dialling a learned peer verifies its id
//! in the TLS handshake like any other connection.

use crate::message::{ExchangedPeer, MAX_EXCHANGED_ADDRESSES};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// The most peers the book keeps; the least recently heard of goes first.
pub const MAX_LEARNED_PEERS: usize = 1_024;

/// A peer that a connected peer told this node about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LearnedPeer {
    /// The peer's id (verified only when it is dialled).
    pub peer_id: String,
    /// Where it accepts connections (`quic://ip:port`), checked with
    /// [`usable_address`].
    pub addresses: Vec<String>,
    /// The peer that told this node about it.
    pub via: String,
    /// When this node last heard of it.
    pub last_seen: DateTime<Utc>,
}

/// The peers learned by exchange, at most [`MAX_LEARNED_PEERS`].
#[derive(Debug, Default)]
pub(crate) struct LearnedPeers {
    peers: BTreeMap<String, LearnedPeer>,
}

impl LearnedPeers {
    /// Records what `via` (seen at `via_address`) said; `local_peer` (this
    /// node) and unusable addresses are left out. Returns how many peers
    /// were new or changed.
    pub(crate) fn learn(
        &mut self,
        local_peer: &str,
        via: &str,
        via_address: SocketAddr,
        peers: Vec<ExchangedPeer>,
        now: DateTime<Utc>,
    ) -> usize {
        let mut changed = 0;
        for peer in peers {
            if peer.peer_id == local_peer || peer.peer_id == via || peer.peer_id.is_empty() || peer.peer_id.len() > 128 {
                continue;
            }
            let mut addresses: Vec<String> = peer
                .addresses
                .iter()
                .filter_map(|address| usable_address(address, via_address.ip()))
                .map(|addr| format!("quic://{addr}"))
                .collect();
            addresses.dedup();
            addresses.truncate(MAX_EXCHANGED_ADDRESSES);
            if addresses.is_empty() {
                continue;
            }
            let entry = LearnedPeer { peer_id: peer.peer_id.clone(), addresses, via: via.to_owned(), last_seen: now };
            let new = self.peers.get(&peer.peer_id).is_none_or(|old| old.addresses != entry.addresses);
            changed += usize::from(new);
            self.peers.insert(peer.peer_id, entry);
        }
        while self.peers.len() > MAX_LEARNED_PEERS {
            let oldest = self.peers.values().min_by_key(|p| p.last_seen).map(|p| p.peer_id.clone());
            match oldest {
                Some(oldest) => self.peers.remove(&oldest),
                None => break,
            };
        }
        changed
    }

    /// The learned peers, in peer id order.
    pub(crate) fn list(&self) -> Vec<LearnedPeer> {
        self.peers.values().cloned().collect()
    }
}

/// Why an address was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressRejection {
    /// Not `ip:port` (after an optional `quic://`).
    Unparsable,
    /// Port 0.
    PortZero,
    /// `0.0.0.0` or `::`.
    Unspecified,
    /// A multicast group.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// Loopback, while this node is not on loopback itself.
    Loopback,
    /// IPv6 link-local (`fe80::/10`): needs an interface to mean anything.
    LinkLocalV6,
}

impl fmt::Display for AddressRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressRejection::Unparsable => "not ip:port",
            AddressRejection::PortZero => "port 0",
            AddressRejection::Unspecified => "unspecified address",
            AddressRejection::Multicast => "multicast address",
            AddressRejection::Broadcast => "broadcast address",
            AddressRejection::Loopback => "loopback address while this node is not on loopback",
            AddressRejection::LinkLocalV6 => "IPv6 link-local address",
        })
    }
}

/// `text` without its optional `quic://` scheme.
pub fn strip_scheme(text: &str) -> &str {
    text.strip_prefix("quic://").unwrap_or(text)
}

/// Parses `text` (`ip:port` or `quic://ip:port`) and checks it with
/// [`check_socket_address`].
pub fn check_address(text: &str, allow_loopback: bool) -> Result<SocketAddr, AddressRejection> {
    let address: SocketAddr = strip_scheme(text).parse().map_err(|_| AddressRejection::Unparsable)?;
    check_socket_address(address, allow_loopback)
}

/// `address` if a node may list and dial it: a unicast IP and a port, and
/// loopback only when `allow_loopback` (this node is on loopback itself).
pub fn check_socket_address(address: SocketAddr, allow_loopback: bool) -> Result<SocketAddr, AddressRejection> {
    let ip = address.ip();
    if address.port() == 0 {
        return Err(AddressRejection::PortZero);
    }
    if ip.is_unspecified() {
        return Err(AddressRejection::Unspecified);
    }
    if ip.is_multicast() {
        return Err(AddressRejection::Multicast);
    }
    match ip {
        IpAddr::V4(v4) if v4.is_broadcast() => return Err(AddressRejection::Broadcast),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => return Err(AddressRejection::LinkLocalV6),
        _ => {}
    }
    if ip.is_loopback() && !allow_loopback {
        return Err(AddressRejection::Loopback);
    }
    Ok(address)
}

/// `address` (`ip:port` or `quic://ip:port`) if a node may dial it on the
/// word of a peer seen at `via`: [`check_address`], with loopback allowed
/// only when `via` is itself on loopback (a remote peer naming 127.0.0.1
/// points at this machine's own services, never at another node).
pub fn usable_address(address: &str, via: IpAddr) -> Option<SocketAddr> {
    check_address(address, via.is_loopback()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str, addresses: &[&str]) -> ExchangedPeer {
        ExchangedPeer { peer_id: id.to_owned(), addresses: addresses.iter().map(|a| (*a).to_owned()).collect() }
    }

    #[test]
    fn addresses_are_checked_before_they_are_kept() {
        let lan: IpAddr = "10.0.0.9".parse().unwrap();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(usable_address("quic://10.0.0.2:34569", lan), Some("10.0.0.2:34569".parse().unwrap()));
        assert_eq!(usable_address("10.0.0.2:34569", lan), Some("10.0.0.2:34569".parse().unwrap()));
        assert_eq!(usable_address("[fd00::2]:7", lan), Some("[fd00::2]:7".parse().unwrap()));
        for bad in
            ["quic://10.0.0.2:0", "0.0.0.0:34569", "224.0.0.251:5353", "255.255.255.255:1", "[fe80::1]:1", "example.com:1", "quic://", "x"]
        {
            assert_eq!(usable_address(bad, lan), None, "{bad}");
        }
        assert_eq!(usable_address("127.0.0.1:34569", lan), None);
        assert_eq!(usable_address("[::1]:34569", lan), None);
        assert_eq!(usable_address("127.0.0.1:34569", lo), Some("127.0.0.1:34569".parse().unwrap()));
    }

    #[test]
    fn the_book_skips_itself_the_sender_and_unusable_peers_and_stays_bounded() {
        let mut book = LearnedPeers::default();
        let via: SocketAddr = "10.0.0.1:34569".parse().unwrap();
        let now = Utc::now();
        let told = vec![
            peer("me", &["10.0.0.5:1"]),
            peer("sender", &["10.0.0.1:34569"]),
            peer("a", &["10.0.0.2:1", "127.0.0.1:1", "10.0.0.2:1"]),
            peer("b", &["0.0.0.0:1"]),
            peer("", &["10.0.0.3:1"]),
        ];
        assert_eq!(book.learn("me", "sender", via, told, now), 1);
        let list = book.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].peer_id, "a");
        assert_eq!(list[0].addresses, ["quic://10.0.0.2:1"]);
        assert_eq!(list[0].via, "sender");
        // The same news again changes nothing.
        assert_eq!(book.learn("me", "sender", via, vec![peer("a", &["10.0.0.2:1"])], now), 0);

        for n in 0..MAX_LEARNED_PEERS + 10 {
            let at = now + chrono::Duration::milliseconds(n as i64 + 1);
            book.learn("me", "sender", via, vec![peer(&format!("p{n:05}"), &["10.0.0.7:1"])], at);
        }
        let list = book.list();
        assert_eq!(list.len(), MAX_LEARNED_PEERS);
        // The oldest went first: "a", then p00000...
        assert!(list.iter().all(|p| p.peer_id != "a" && p.peer_id != "p00000"));
        assert!(list.iter().any(|p| p.peer_id == format!("p{:05}", MAX_LEARNED_PEERS + 9)));
    }
}
