//! [`PeerDirectory`]: every peer discovery knows of, merged by peer id over
//! the methods that found it. Sans-IO: the drivers (the mDNS browse task,
//! the exchange refresh) feed it what they saw with the time they saw it.

use crate::address::{check_address, check_socket_address, rank, strip_scheme};
use crate::announcement::Announcement;
use crate::peer::{DiscoveredPeer, DiscoveryMethod, LocalPeer};
use chrono::{DateTime, Utc};
use pluresdb_net::{LearnedPeer, PeerInfo};
use pluresdb_security::PeerId;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// The most peers the directory holds; beyond it the one seen longest ago
/// is forgotten. Bootstrap addresses are configuration and not counted.
pub const MAX_DISCOVERED_PEERS: usize = 1_024;

/// The most addresses kept per peer (per method, and after merging).
pub const MAX_PEER_ADDRESSES: usize = 8;

/// What the directory needs to know about this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LocalView {
    /// This node's id: its own announcement and mentions are ignored.
    peer_id: Option<String>,
    /// This node's network tag, against which announcements are compared.
    network_tag: Option<String>,
    /// Whether loopback addresses are usable (this node is on loopback).
    allow_loopback: bool,
}

impl LocalView {
    /// The view of `local` (or of a node that only browses).
    pub(crate) fn of(local: Option<&LocalPeer>) -> Self {
        match local {
            Some(local) => Self {
                peer_id: Some(local.peer_id.clone()),
                network_tag: Some(local.network_tag.clone()),
                allow_loopback: local.on_loopback(),
            },
            None => Self::default(),
        }
    }

    fn is_me(&self, peer_id: &str) -> bool {
        self.peer_id.as_deref() == Some(peer_id)
    }
}

/// The latest mDNS announcement of a peer.
#[derive(Clone, Debug)]
struct MdnsSighting {
    /// The service instance's full name (what a withdrawal names).
    #[cfg_attr(not(feature = "mdns"), allow(dead_code))]
    fullname: String,
    addresses: Vec<SocketAddr>,
    network_tag: String,
    seen: DateTime<Utc>,
}

/// What a connected peer said about a peer.
#[derive(Clone, Debug)]
struct ExchangeSighting {
    addresses: Vec<SocketAddr>,
    via: String,
    seen: DateTime<Utc>,
}

/// One peer's sightings, per method.
#[derive(Clone, Debug, Default)]
struct Entry {
    mdns: Option<MdnsSighting>,
    exchange: Option<ExchangeSighting>,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.mdns.is_none() && self.exchange.is_none()
    }

    fn last_seen(&self) -> Option<DateTime<Utc>> {
        let mdns = self.mdns.as_ref().map(|s| s.seen);
        let exchange = self.exchange.as_ref().map(|s| s.seen);
        mdns.max(exchange)
    }
}

/// A configured bootstrap address, and the peer found there once one is
/// connected at that address.
#[derive(Clone, Debug)]
struct BootstrapAddress {
    /// The address without `quic://` (`host:port` or `ip:port`).
    address: String,
    peer_id: Option<String>,
    configured: DateTime<Utc>,
}

/// Every peer discovery knows of, at most [`MAX_DISCOVERED_PEERS`], keyed by
/// peer id, plus the bootstrap addresses.
#[derive(Debug, Default)]
pub(crate) struct PeerDirectory {
    local: LocalView,
    peers: BTreeMap<String, Entry>,
    bootstrap: Vec<BootstrapAddress>,
}

impl PeerDirectory {
    /// An empty directory for the node `local`.
    #[cfg(test)]
    pub(crate) fn new(local: LocalView) -> Self {
        Self { local, ..Self::default() }
    }

    /// Tells the directory who this node is.
    pub(crate) fn set_local(&mut self, local: LocalView) {
        self.local = local;
    }

    /// How many peers (not counting unresolved bootstrap addresses) the
    /// directory holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.peers.len()
    }

    /// Replaces the bootstrap addresses (`host:port` or `quic://host:port`),
    /// at most [`MAX_DISCOVERED_PEERS`]; duplicates and blank ones are
    /// dropped.
    pub(crate) fn set_bootstrap(&mut self, addresses: &[String], now: DateTime<Utc>) {
        let mut seen = HashSet::new();
        self.bootstrap = addresses
            .iter()
            .map(|text| strip_scheme(text.trim()).to_owned())
            .filter(|address| !address.is_empty() && seen.insert(address.clone()))
            .take(MAX_DISCOVERED_PEERS)
            .map(|address| BootstrapAddress { address, peer_id: None, configured: now })
            .collect();
    }

    /// Records an mDNS announcement seen at `now`; returns whether the
    /// directory changed. This node's own announcement, and one without a
    /// usable address, are ignored.
    #[cfg_attr(not(feature = "mdns"), allow(dead_code))]
    pub(crate) fn record_mdns(&mut self, announcement: Announcement, now: DateTime<Utc>) -> bool {
        if self.local.is_me(&announcement.peer_id) {
            return false;
        }
        let addresses = self.usable(announcement.addresses.into_iter().map(Ok), &announcement.peer_id);
        if addresses.is_empty() {
            tracing::debug!(peer = %announcement.peer_id, instance = %announcement.fullname, "mDNS announcement without a usable address ignored");
            return false;
        }
        let sighting = MdnsSighting { fullname: announcement.fullname, addresses, network_tag: announcement.network_tag, seen: now };
        let entry = self.peers.entry(announcement.peer_id).or_default();
        let changed = entry.mdns.as_ref().is_none_or(|old| {
            old.addresses != sighting.addresses || old.network_tag != sighting.network_tag || old.fullname != sighting.fullname
        });
        entry.mdns = Some(sighting);
        self.evict_excess(DiscoveryMethod::Mdns);
        changed
    }

    /// Records that the mDNS service instance `fullname` was withdrawn (or
    /// expired): its peer loses the mDNS method, and is forgotten when no
    /// other method knows it. Returns whether the directory changed.
    #[cfg_attr(not(feature = "mdns"), allow(dead_code))]
    pub(crate) fn remove_mdns(&mut self, fullname: &str) -> bool {
        let found = self.peers.iter_mut().find_map(|(peer_id, entry)| {
            let matches = entry.mdns.as_ref().is_some_and(|m| m.fullname.eq_ignore_ascii_case(fullname));
            matches.then(|| {
                entry.mdns = None;
                (peer_id.clone(), entry.is_empty())
            })
        });
        match found {
            Some((peer_id, now_empty)) => {
                if now_empty {
                    self.peers.remove(&peer_id);
                }
                true
            }
            None => false,
        }
    }

    /// Forgets every mDNS sighting (browsing stopped, so withdrawals would
    /// no longer be seen); returns whether the directory changed.
    pub(crate) fn clear_mdns(&mut self) -> bool {
        let mut changed = false;
        for entry in self.peers.values_mut() {
            changed |= entry.mdns.take().is_some();
        }
        self.peers.retain(|_, entry| !entry.is_empty());
        changed
    }

    /// Replaces what peer exchange says with `learned` (the exchange book's
    /// whole current content); returns whether the directory changed.
    /// Entries with a malformed peer id, this node's id or no usable address
    /// are ignored. What several peers said of one peer is merged fairly:
    /// its addresses are taken in turn from each teller (the peer itself
    /// first, then the most recent), so no teller's word crowds out
    /// another's.
    pub(crate) fn replace_exchange(&mut self, learned: Vec<LearnedPeer>) -> bool {
        let mut told: BTreeMap<String, Vec<ExchangeSighting>> = BTreeMap::new();
        for peer in learned {
            if self.local.is_me(&peer.peer_id) || peer.peer_id.parse::<PeerId>().is_err() {
                continue;
            }
            let candidates = peer.addresses.iter().map(|text| check_address(text, self.local.allow_loopback));
            let addresses = self.usable(candidates, &peer.peer_id);
            if addresses.is_empty() {
                continue;
            }
            told.entry(peer.peer_id).or_default().push(ExchangeSighting { addresses, via: peer.via, seen: peer.last_seen });
        }
        let fresh: BTreeMap<String, ExchangeSighting> = told
            .into_iter()
            .map(|(peer_id, tellers)| {
                let merged = merge_tellers(&peer_id, tellers);
                (peer_id, merged)
            })
            .collect();
        let mut changed = false;
        for (peer_id, entry) in self.peers.iter_mut() {
            if entry.exchange.is_some() && !fresh.contains_key(peer_id) {
                entry.exchange = None;
                changed = true;
            }
        }
        self.peers.retain(|_, entry| !entry.is_empty());
        for (peer_id, sighting) in fresh {
            let entry = self.peers.entry(peer_id).or_default();
            changed |= entry.exchange.as_ref().is_none_or(|old| old.addresses != sighting.addresses || old.via != sighting.via);
            entry.exchange = Some(sighting);
        }
        self.evict_excess(DiscoveryMethod::Exchange);
        changed
    }

    /// Gives each bootstrap address the id of the connected peer found at
    /// it (its address or one of its listen addresses), if any; returns
    /// whether that changed anything. A bootstrap address that names a host
    /// is matched only textually.
    pub(crate) fn resolve_bootstrap(&mut self, connected: &[PeerInfo]) -> bool {
        let mut changed = false;
        for bootstrap in &mut self.bootstrap {
            let found = connected
                .iter()
                .find(|peer| {
                    std::iter::once(&peer.address)
                        .chain(&peer.listen_addresses)
                        .any(|address| same_address(strip_scheme(address), &bootstrap.address))
                })
                .map(|peer| peer.peer_id.to_string());
            // A bootstrap address keeps the id of the last peer found there:
            // knowing who was there is still useful while it reconnects.
            if found.is_some() && found != bootstrap.peer_id {
                bootstrap.peer_id = found;
                changed = true;
            }
        }
        changed
    }

    /// Every peer, merged over its methods, sorted by peer id (bootstrap
    /// addresses of unknown peers, with id `""`, first, by address).
    pub(crate) fn peers(&self) -> Vec<DiscoveredPeer> {
        let mut merged: BTreeMap<String, PeerBuilder> = BTreeMap::new();
        for (peer_id, entry) in &self.peers {
            let builder = merged.entry(peer_id.clone()).or_default();
            if let Some(mdns) = &entry.mdns {
                builder.add(DiscoveryMethod::Mdns, mdns.seen, mdns.addresses.iter().map(ToString::to_string));
                builder.same_network |= self.local.network_tag.as_deref() == Some(mdns.network_tag.as_str());
            }
            if let Some(exchange) = &entry.exchange {
                builder.add(DiscoveryMethod::Exchange, exchange.seen, exchange.addresses.iter().map(ToString::to_string));
                builder.same_network = true;
                builder.via = Some(exchange.via.clone());
            }
        }
        let mut unresolved = Vec::new();
        for bootstrap in &self.bootstrap {
            let mut builder = PeerBuilder::default();
            if let Some(peer_id) = &bootstrap.peer_id {
                builder = merged.remove(peer_id).unwrap_or_default();
            }
            builder.add(DiscoveryMethod::Bootstrap, bootstrap.configured, std::iter::once(bootstrap.address.clone()));
            builder.same_network = true;
            match &bootstrap.peer_id {
                Some(peer_id) => {
                    merged.insert(peer_id.clone(), builder);
                }
                None => unresolved.push(builder.build(String::new())),
            }
        }
        unresolved.sort_by(|a, b| a.address.cmp(&b.address));
        unresolved.extend(merged.into_iter().map(|(peer_id, builder)| builder.build(peer_id)));
        unresolved
    }

    /// The usable addresses among `candidates`, ranked and bounded; the
    /// others are logged.
    fn usable(
        &self,
        candidates: impl Iterator<Item = Result<SocketAddr, crate::address::AddressRejection>>,
        peer_id: &str,
    ) -> Vec<SocketAddr> {
        let mut addresses: Vec<SocketAddr> = candidates
            .filter_map(|candidate| match candidate.and_then(|a| check_socket_address(a, self.local.allow_loopback)) {
                Ok(address) => Some(address),
                Err(reason) => {
                    tracing::trace!(peer = %peer_id, %reason, "address skipped");
                    None
                }
            })
            .collect();
        rank(&mut addresses, MAX_PEER_ADDRESSES);
        addresses
    }

    /// Forgets peers until at most [`MAX_DISCOVERED_PEERS`] remain: the
    /// ones seen longest ago among those only `source` knows (the method
    /// that just added some), so that a flood of announcements on the LAN
    /// cannot push out what peer exchange found, nor the reverse; others
    /// only when `source` has none left to give.
    fn evict_excess(&mut self, source: DiscoveryMethod) {
        while self.peers.len() > MAX_DISCOVERED_PEERS {
            let only_source = |entry: &Entry| match source {
                DiscoveryMethod::Mdns => entry.exchange.is_none(),
                DiscoveryMethod::Exchange => entry.mdns.is_none(),
                DiscoveryMethod::Bootstrap | DiscoveryMethod::Dht => true,
            };
            let oldest = |only: bool| {
                self.peers
                    .iter()
                    .filter(|(_, entry)| !only || only_source(entry))
                    .min_by_key(|(peer_id, entry)| (entry.last_seen(), *peer_id))
                    .map(|(id, _)| id.clone())
            };
            match oldest(true).or_else(|| oldest(false)) {
                Some(oldest) => {
                    tracing::debug!(peer = %oldest, "directory full: forgot the peer seen longest ago");
                    self.peers.remove(&oldest);
                }
                None => break,
            }
        }
    }
}

/// A [`PeerDirectory`] shared between the discovery object and its drivers,
/// with a [`Notify`] that wakes whoever waits for changes.
#[derive(Debug, Default)]
pub(crate) struct SharedDirectory {
    directory: Mutex<PeerDirectory>,
    changed: Notify,
}

impl SharedDirectory {
    /// Runs `update` on the directory; wakes the waiters when it reports a
    /// change.
    pub(crate) fn update(&self, update: impl FnOnce(&mut PeerDirectory) -> bool) -> bool {
        let changed = update(&mut self.lock());
        if changed {
            self.changed.notify_waiters();
        }
        changed
    }

    /// Every peer (see [`PeerDirectory::peers`]).
    pub(crate) fn peers(&self) -> Vec<DiscoveredPeer> {
        self.lock().peers()
    }

    /// Resolves at the next change after it was created.
    pub(crate) fn changed(&self) -> Notified<'_> {
        self.changed.notified()
    }

    fn lock(&self) -> MutexGuard<'_, PeerDirectory> {
        // Updates change independent entries; one interrupted by a panic
        // leaves a directory that is still valid, so poisoning is ignored.
        self.directory.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One sighting of `peer_id` from what `tellers` said of it: addresses
/// taken in turn from each teller (the peer itself first, then the most
/// recent), at most [`MAX_PEER_ADDRESSES`]; `via` the most recent teller
/// other than the peer itself, if any (who made it known to this node).
fn merge_tellers(peer_id: &str, mut tellers: Vec<ExchangeSighting>) -> ExchangeSighting {
    tellers.sort_by(|a, b| (b.via == peer_id).cmp(&(a.via == peer_id)).then(b.seen.cmp(&a.seen)).then(a.via.cmp(&b.via)));
    let mut addresses = Vec::new();
    let longest = tellers.iter().map(|t| t.addresses.len()).max().unwrap_or(0);
    for turn in 0..longest {
        for teller in &tellers {
            if let Some(address) = teller.addresses.get(turn) {
                if !addresses.contains(address) && addresses.len() < MAX_PEER_ADDRESSES {
                    addresses.push(*address);
                }
            }
        }
    }
    let seen = tellers.iter().map(|t| t.seen).max().unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    let via = tellers.iter().find(|t| t.via != peer_id).or(tellers.first()).map(|t| t.via.clone()).unwrap_or_default();
    ExchangeSighting { addresses, via, seen }
}

/// Whether two `host:port` texts name the same address (compared as socket
/// addresses when both are IP addresses).
fn same_address(a: &str, b: &str) -> bool {
    match (a.parse::<SocketAddr>(), b.parse::<SocketAddr>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a.eq_ignore_ascii_case(b),
    }
}

/// A [`DiscoveredPeer`] being merged from its sightings.
#[derive(Debug, Default)]
struct PeerBuilder {
    methods: Vec<DiscoveryMethod>,
    /// Addresses in the order of the methods' preference.
    addresses: Vec<String>,
    last_seen: Option<DateTime<Utc>>,
    same_network: bool,
    via: Option<String>,
}

impl PeerBuilder {
    fn add(&mut self, method: DiscoveryMethod, seen: DateTime<Utc>, addresses: impl Iterator<Item = String>) {
        if !self.methods.contains(&method) {
            self.methods.push(method);
        }
        self.last_seen = self.last_seen.max(Some(seen));
        for address in addresses {
            if !self.addresses.contains(&address) {
                self.addresses.push(address);
            }
        }
    }

    fn build(mut self, id: String) -> DiscoveredPeer {
        self.methods.sort();
        // Each method's addresses are already ranked; across methods the IP
        // addresses are ranked again, host names (bootstrap) go last.
        let mut ips: Vec<SocketAddr> = self.addresses.iter().filter_map(|a| a.parse().ok()).collect();
        rank(&mut ips, MAX_PEER_ADDRESSES);
        let names = self.addresses.into_iter().filter(|a| a.parse::<SocketAddr>().is_err());
        let addresses: Vec<String> = ips.iter().map(ToString::to_string).chain(names).take(MAX_PEER_ADDRESSES).collect();
        DiscoveredPeer {
            id,
            address: addresses.first().cloned().unwrap_or_default(),
            addresses,
            methods: self.methods,
            last_seen: self.last_seen.unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
            same_network: self.same_network,
            via: self.via,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::peer_id;
    use chrono::TimeDelta;
    use pluresdb_net::{Direction, Transport};

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + TimeDelta::seconds(1_700_000_000 + seconds)
    }

    fn local() -> LocalPeer {
        LocalPeer::new(peer_id(0), 34569, "aaaa")
    }

    fn directory() -> PeerDirectory {
        PeerDirectory::new(LocalView::of(Some(&local())))
    }

    fn announcement(peer: &str, tag: &str, addresses: &[&str]) -> Announcement {
        Announcement {
            fullname: format!("pluresdb-{}._pluresdb._tcp.local.", &peer[..16]),
            peer_id: peer.to_owned(),
            network_tag: tag.to_owned(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn learned(peer: &str, addresses: &[&str], via: &str, seen: DateTime<Utc>) -> LearnedPeer {
        LearnedPeer {
            peer_id: peer.to_owned(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            via: via.to_owned(),
            last_seen: seen,
        }
    }

    fn connected(peer: &str, address: &str) -> PeerInfo {
        PeerInfo {
            peer_id: peer.parse().expect("the test's peer ids parse"),
            address: address.to_owned(),
            transport: Transport::Quic,
            direction: Direction::Dialled,
            listen_addresses: vec![],
            connected_at: at(0),
            last_seen: at(0),
            rtt: None,
            bytes_sent: 0,
            bytes_received: 0,
            connected: true,
        }
    }

    #[test]
    fn a_peer_found_by_mdns_and_exchange_is_one_entry_with_both_methods() {
        let mut directory = directory();
        let peer = peer_id(1);
        let via = peer_id(2);
        assert!(directory.record_mdns(announcement(&peer, "aaaa", &["192.0.2.10:34569"]), at(10)));
        assert!(directory.replace_exchange(vec![learned(
            &peer,
            &["quic://192.0.2.10:34569", "quic://[2001:db8::10]:34569"],
            &via,
            at(20)
        )]));
        let peers = directory.peers();
        assert_eq!(peers.len(), 1);
        let found = &peers[0];
        assert_eq!(found.id, peer);
        assert_eq!(found.methods, [DiscoveryMethod::Mdns, DiscoveryMethod::Exchange]);
        assert_eq!(found.address, "192.0.2.10:34569");
        assert_eq!(found.addresses, ["192.0.2.10:34569", "[2001:db8::10]:34569"]);
        assert_eq!(found.last_seen, at(20));
        assert_eq!(found.via.as_deref(), Some(via.as_str()));
        assert!(found.same_network);
        // The same news again changes nothing.
        assert!(!directory.record_mdns(announcement(&peer, "aaaa", &["192.0.2.10:34569"]), at(30)));
        assert!(!directory.replace_exchange(vec![learned(
            &peer,
            &["quic://192.0.2.10:34569", "quic://[2001:db8::10]:34569"],
            &via,
            at(40)
        )]));
    }

    #[test]
    fn withdrawing_removes_only_the_mdns_method() {
        let mut directory = directory();
        let (both, mdns_only) = (peer_id(1), peer_id(2));
        directory.record_mdns(announcement(&both, "aaaa", &["192.0.2.1:1"]), at(1));
        directory.record_mdns(announcement(&mdns_only, "aaaa", &["192.0.2.2:1"]), at(1));
        directory.replace_exchange(vec![learned(&both, &["quic://192.0.2.1:1"], &peer_id(3), at(1))]);
        let fullname = announcement(&both, "", &[]).fullname;
        assert!(directory.remove_mdns(&fullname.to_uppercase()), "names compare case-insensitively");
        assert!(!directory.remove_mdns(&fullname));
        assert!(directory.remove_mdns(&announcement(&mdns_only, "", &[]).fullname));
        let peers = directory.peers();
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].id, both);
        assert_eq!(peers[0].methods, [DiscoveryMethod::Exchange]);
        // Exchange forgetting the peer forgets it entirely.
        assert!(directory.replace_exchange(vec![]));
        assert!(directory.peers().is_empty());
    }

    #[test]
    fn other_networks_are_listed_but_flagged() {
        let mut directory = directory();
        let (ours, theirs) = (peer_id(1), peer_id(2));
        directory.record_mdns(announcement(&ours, "aaaa", &["192.0.2.1:1"]), at(1));
        directory.record_mdns(announcement(&theirs, "bbbb", &["192.0.2.2:1"]), at(1));
        let flags: Vec<(String, bool)> = directory.peers().into_iter().map(|p| (p.id, p.same_network)).collect();
        let mut expected = vec![(ours, true), (theirs, false)];
        expected.sort();
        assert_eq!(flags, expected);
        // A node that only browses (no local peer) belongs to no network.
        let mut browser = PeerDirectory::new(LocalView::of(None));
        browser.record_mdns(announcement(&peer_id(1), "", &["192.0.2.1:1"]), at(1));
        assert!(!browser.peers()[0].same_network);
    }

    #[test]
    fn this_nodes_own_id_is_ignored() {
        let mut directory = directory();
        let me = local().peer_id;
        assert!(!directory.record_mdns(announcement(&me, "aaaa", &["192.0.2.1:1"]), at(1)));
        assert!(!directory.replace_exchange(vec![learned(&me, &["quic://192.0.2.1:1"], &peer_id(2), at(1))]));
        assert!(directory.peers().is_empty());
    }

    #[test]
    fn unusable_addresses_and_ids_are_dropped() {
        let mut directory = directory();
        let peer = peer_id(1);
        let all_bad = announcement(&peer, "aaaa", &["127.0.0.1:1", "0.0.0.0:1", "224.0.0.251:1", "[fe80::1]:1", "192.0.2.1:0"]);
        assert!(!directory.record_mdns(all_bad, at(1)));
        let learned_bad = vec![
            learned("12D3KooWnotapeerid", &["quic://192.0.2.1:1"], &peer_id(2), at(1)),
            learned(&peer, &["quic://127.0.0.1:1", "nonsense"], &peer_id(2), at(1)),
        ];
        assert!(!directory.replace_exchange(learned_bad));
        assert!(directory.peers().is_empty());
        // Good addresses survive next to bad ones, and loopback is fine for
        // a node on loopback.
        directory.record_mdns(announcement(&peer, "aaaa", &["127.0.0.1:1", "192.0.2.1:1"]), at(1));
        assert_eq!(directory.peers()[0].addresses, ["192.0.2.1:1"]);
        let on_loopback = local().with_addresses(vec!["127.0.0.1".parse().unwrap()]);
        let mut loopback = PeerDirectory::new(LocalView::of(Some(&on_loopback)));
        loopback.record_mdns(announcement(&peer, "aaaa", &["127.0.0.1:1"]), at(1));
        assert_eq!(loopback.peers()[0].address, "127.0.0.1:1");
    }

    #[test]
    fn addresses_per_peer_are_bounded() {
        let mut directory = directory();
        let many: Vec<String> = (1..=20).map(|i| format!("192.0.2.{i}:1")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        directory.record_mdns(announcement(&peer_id(1), "aaaa", &many), at(1));
        let exchanged: Vec<String> = (21..=40).map(|i| format!("quic://192.0.2.{i}:1")).collect();
        let exchanged: Vec<&str> = exchanged.iter().map(String::as_str).collect();
        directory.replace_exchange(vec![learned(&peer_id(1), &exchanged, &peer_id(2), at(1))]);
        assert_eq!(directory.peers()[0].addresses.len(), MAX_PEER_ADDRESSES);
    }

    #[test]
    fn a_full_directory_forgets_the_peer_seen_longest_ago() {
        let mut directory = directory();
        let ids: Vec<String> = (1..=(MAX_DISCOVERED_PEERS + 1) as u32).map(peer_id).collect();
        for (seconds, id) in ids.iter().enumerate().skip(1) {
            directory.record_mdns(announcement(id, "aaaa", &["192.0.2.1:1"]), at(seconds as i64 + 100));
        }
        // The oldest sighting, arriving last, is the one forgotten.
        directory.record_mdns(announcement(&ids[0], "aaaa", &["192.0.2.1:1"]), at(0));
        assert_eq!(directory.len(), MAX_DISCOVERED_PEERS);
        assert!(directory.peers().iter().all(|p| p.id != ids[0]));
        // Otherwise the least recently seen goes.
        directory.record_mdns(announcement(&ids[0], "aaaa", &["192.0.2.1:1"]), at(5_000));
        assert_eq!(directory.len(), MAX_DISCOVERED_PEERS);
        let remaining: HashSet<String> = directory.peers().into_iter().map(|p| p.id).collect();
        assert!(remaining.contains(&ids[0]) && !remaining.contains(&ids[1]) && remaining.contains(&ids[2]));
    }

    #[test]
    fn what_several_peers_say_of_one_is_merged_in_turns_with_its_own_word_first() {
        let mut directory = directory();
        let (peer, honest, liar) = (peer_id(1), peer_id(2), peer_id(3));
        let junk: Vec<String> = (1..=8).map(|i| format!("quic://198.51.100.{i}:1")).collect();
        let junk: Vec<&str> = junk.iter().map(String::as_str).collect();
        directory.replace_exchange(vec![
            learned(&peer, &junk, &liar, at(30)),
            learned(&peer, &["quic://192.0.2.2:1"], &honest, at(10)),
            learned(&peer, &["quic://192.0.2.1:1"], &peer, at(5)),
        ]);
        let found = &directory.peers()[0];
        assert_eq!(found.via.as_deref(), Some(liar.as_str()), "the most recent teller made it known");
        assert_eq!(found.addresses.len(), MAX_PEER_ADDRESSES);
        for address in ["192.0.2.1:1", "192.0.2.2:1"] {
            assert!(found.addresses.iter().any(|a| a == address), "{address} survives eight junk addresses: {:?}", found.addresses);
        }
    }

    #[test]
    fn a_flood_of_announcements_does_not_push_out_what_exchange_found() {
        let mut directory = directory();
        let learned_peer = peer_id(1);
        directory.replace_exchange(vec![learned(&learned_peer, &["quic://192.0.2.1:1"], &peer_id(2), at(0))]);
        for n in 0..(MAX_DISCOVERED_PEERS as u32 + 50) {
            directory.record_mdns(announcement(&peer_id(10 + n), "aaaa", &["192.0.2.9:1"]), at(100 + i64::from(n)));
        }
        assert_eq!(directory.len(), MAX_DISCOVERED_PEERS);
        assert!(directory.peers().iter().any(|p| p.id == learned_peer), "the exchange entry, seen longest ago, stays");
    }

    #[test]
    fn bootstrap_addresses_are_listed_until_their_peer_is_known() {
        let mut directory = directory();
        let addresses = ["quic://192.0.2.7:34569", "seed.example.org:34569", "192.0.2.7:34569", " "].map(String::from);
        directory.set_bootstrap(&addresses, at(1));
        let peers = directory.peers();
        let listed: Vec<(&str, &str)> = peers.iter().map(|p| (p.id.as_str(), p.address.as_str())).collect();
        assert_eq!(listed, [("", "192.0.2.7:34569"), ("", "seed.example.org:34569")]);
        assert!(peers.iter().all(|p| p.methods == [DiscoveryMethod::Bootstrap] && p.same_network && p.peer_id().is_none()));

        // Once a peer is connected at the address, the entry takes its id
        // and merges with what other methods know of it.
        let peer = peer_id(1);
        directory.record_mdns(announcement(&peer, "aaaa", &["192.0.2.7:34569", "[2001:db8::7]:34569"]), at(2));
        assert!(directory.resolve_bootstrap(&[connected(&peer, "192.0.2.7:34569")]));
        assert!(!directory.resolve_bootstrap(&[connected(&peer, "192.0.2.7:34569")]));
        let peers = directory.peers();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].address, "seed.example.org:34569");
        assert_eq!(peers[1].id, peer);
        assert_eq!(peers[1].methods, [DiscoveryMethod::Mdns, DiscoveryMethod::Bootstrap]);
        assert_eq!(peers[1].addresses, ["192.0.2.7:34569", "[2001:db8::7]:34569"]);
        assert_eq!(peers[1].last_seen, at(2));
    }
}
