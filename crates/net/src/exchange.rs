//! Peer exchange: what connected peers tell this node about the other peers
//! of the network ([`NetworkMessage::PeerExchange`](crate::NetworkMessage)),
//! kept in a bounded [`LearnedPeers`] book that discovery reads to dial
//! them.
//!
//! Nothing a peer says is trusted beyond being a hint: every address is
//! checked before it is kept ([`usable_address`]), and dialling a learned
//! peer verifies its id in the TLS handshake like any other connection.
//! The book is kept per teller, so that one peer cannot crowd out what the
//! others said: each teller holds at most [`MAX_LEARNED_PER_SOURCE`]
//! entries (its own oldest go first), the book at most
//! [`MAX_LEARNED_PEERS`] (the oldest of the teller holding the most go
//! first), and an entry not told again within [`LEARNED_PEER_TTL`] is
//! forgotten.

use crate::message::{ExchangedPeer, MAX_EXCHANGED_ADDRESSES, MAX_EXCHANGED_PEERS};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The most entries the book keeps, over all tellers.
pub const MAX_LEARNED_PEERS: usize = 1_024;

/// The most entries one teller holds: one full answer's worth.
pub const MAX_LEARNED_PER_SOURCE: usize = MAX_EXCHANGED_PEERS;

/// How long an entry lasts without being told again. Tellers that are
/// still connected repeat themselves every 30 s (when asked).
pub const LEARNED_PEER_TTL: Duration = Duration::from_secs(10 * 60);

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
    /// When this node last heard of it (from `via`).
    pub last_seen: DateTime<Utc>,
}

/// The peers learned by exchange, keyed by teller and peer (two tellers'
/// word on one peer are two entries).
#[derive(Debug, Default)]
pub(crate) struct LearnedPeers {
    entries: BTreeMap<(String, String), LearnedPeer>,
    per_source: HashMap<String, usize>,
}

impl LearnedPeers {
    /// Records what `via` (seen at `via_address`) said at `now`;
    /// `local_peer` (this node), `via` itself and unusable addresses are
    /// left out. Returns how many entries were new or changed.
    pub(crate) fn learn(
        &mut self,
        local_peer: &str,
        via: &str,
        via_address: SocketAddr,
        peers: Vec<ExchangedPeer>,
        now: DateTime<Utc>,
    ) -> usize {
        self.expire(now);
        let mut changed = 0;
        for peer in peers.into_iter().take(MAX_LEARNED_PER_SOURCE) {
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
            let key = (via.to_owned(), peer.peer_id.clone());
            let entry = LearnedPeer { peer_id: peer.peer_id, addresses, via: via.to_owned(), last_seen: now };
            match self.entries.insert(key, entry.clone()) {
                Some(old) => changed += usize::from(old.addresses != entry.addresses),
                None => {
                    changed += 1;
                    *self.per_source.entry(via.to_owned()).or_insert(0) += 1;
                }
            }
            if self.per_source.get(via).is_some_and(|count| *count > MAX_LEARNED_PER_SOURCE) {
                self.evict_oldest_of(via);
            }
        }
        while self.entries.len() > MAX_LEARNED_PEERS {
            let busiest = self.per_source.iter().max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0))).map(|(source, _)| source.clone());
            match busiest {
                Some(source) => self.evict_oldest_of(&source),
                None => break,
            }
        }
        changed
    }

    /// The entries told within [`LEARNED_PEER_TTL`] before `now`, in peer
    /// id order (then teller).
    pub(crate) fn list(&self, now: DateTime<Utc>) -> Vec<LearnedPeer> {
        let mut list: Vec<LearnedPeer> = self.entries.values().filter(|entry| fresh(entry, now)).cloned().collect();
        list.sort_by(|a, b| (&a.peer_id, &a.via).cmp(&(&b.peer_id, &b.via)));
        list
    }

    /// Forgets the entries not told again within [`LEARNED_PEER_TTL`].
    fn expire(&mut self, now: DateTime<Utc>) {
        let stale: Vec<(String, String)> =
            self.entries.iter().filter(|(_, entry)| !fresh(entry, now)).map(|(key, _)| key.clone()).collect();
        for key in stale {
            self.remove(&key);
        }
    }

    /// Forgets the entry `source` told longest ago.
    fn evict_oldest_of(&mut self, source: &str) {
        let oldest = self
            .entries
            .range((source.to_owned(), String::new())..)
            .take_while(|((via, _), _)| via == source)
            .min_by_key(|(key, entry)| (entry.last_seen, (*key).clone()))
            .map(|(key, _)| key.clone());
        if let Some(key) = oldest {
            self.remove(&key);
        }
    }

    fn remove(&mut self, key: &(String, String)) {
        if self.entries.remove(key).is_some() {
            if let Some(count) = self.per_source.get_mut(&key.0) {
                *count -= 1;
                if *count == 0 {
                    self.per_source.remove(&key.0);
                }
            }
        }
    }
}

/// Whether `entry` was told within [`LEARNED_PEER_TTL`] before `now`.
fn fresh(entry: &LearnedPeer, now: DateTime<Utc>) -> bool {
    now.signed_duration_since(entry.last_seen).to_std().map_or(true, |age| age <= LEARNED_PEER_TTL)
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
    fn the_book_skips_itself_the_sender_and_unusable_peers() {
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
        let list = book.list(now);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].peer_id, "a");
        assert_eq!(list[0].addresses, ["quic://10.0.0.2:1"]);
        assert_eq!(list[0].via, "sender");
        // The same news again changes nothing.
        assert_eq!(book.learn("me", "sender", via, vec![peer("a", &["10.0.0.2:1"])], now), 0);
    }

    /// `count` peers named `{prefix}{n}`, each at one address.
    fn told(prefix: &str, count: usize) -> Vec<ExchangedPeer> {
        (0..count).map(|n| peer(&format!("{prefix}{n:05}"), &["10.0.0.7:1"])).collect()
    }

    #[test]
    fn one_teller_cannot_crowd_out_what_the_others_said() {
        let mut book = LearnedPeers::default();
        let via: SocketAddr = "10.0.0.1:34569".parse().unwrap();
        let start = Utc::now();
        book.learn("me", "honest", via, told("h", 5), start);
        // The same peer told by a liar with other addresses is a second
        // entry, not a replacement.
        book.learn("me", "liar", via, vec![peer("h00000", &["10.9.9.9:1"])], start);
        // The liar floods: answer after answer of new names.
        for round in 0..100 {
            let at = start + chrono::Duration::seconds(round + 1);
            book.learn("me", "liar", via, told(&format!("x{round:03}-"), MAX_EXCHANGED_PEERS), at);
        }
        let list = book.list(start + chrono::Duration::seconds(101));
        let honest: Vec<&LearnedPeer> = list.iter().filter(|p| p.via == "honest").collect();
        assert_eq!(honest.len(), 5, "the honest teller's entries all survive");
        assert!(honest.iter().any(|p| p.peer_id == "h00000" && p.addresses == ["quic://10.0.0.7:1"]));
        assert_eq!(list.iter().filter(|p| p.via == "liar").count(), MAX_LEARNED_PER_SOURCE, "the liar holds its own quota");
        assert!(list.iter().filter(|p| p.via == "liar").all(|p| p.peer_id.starts_with("x099-")), "its newest words");
    }

    #[test]
    fn a_full_book_takes_from_the_teller_holding_the_most_and_entries_expire() {
        let mut book = LearnedPeers::default();
        let via: SocketAddr = "10.0.0.1:34569".parse().unwrap();
        let start = Utc::now();
        let full_tellers = MAX_LEARNED_PEERS / MAX_LEARNED_PER_SOURCE;
        for teller in 0..full_tellers {
            let at = start + chrono::Duration::seconds(teller as i64);
            book.learn("me", &format!("t{teller:02}"), via, told(&format!("t{teller:02}-"), MAX_LEARNED_PER_SOURCE), at);
        }
        let now = start + chrono::Duration::seconds(100);
        assert_eq!(book.list(now).len(), MAX_LEARNED_PEERS);
        // A newcomer with a few entries gets them; the room comes from a
        // teller that holds a full quota, never from the small one.
        book.learn("me", "small", via, told("s", 3), now);
        book.learn("me", "small2", via, told("u", 2), now);
        let list = book.list(now);
        assert_eq!(list.len(), MAX_LEARNED_PEERS);
        assert_eq!(list.iter().filter(|p| p.via == "small").count(), 3);
        assert_eq!(list.iter().filter(|p| p.via == "small2").count(), 2);
        // Nothing told again within the TTL is listed or kept.
        let later = start + chrono::Duration::from_std(LEARNED_PEER_TTL).unwrap() + chrono::Duration::seconds(101);
        assert!(book.list(later).is_empty());
        book.learn("me", "small", via, told("s", 1), later);
        assert_eq!(book.entries.len(), 1);
        assert_eq!(book.per_source.len(), 1);
    }
}
