//! Getting through NATs: circuit relay v2 (server and client), DCUtR hole
//! punching and AutoNAT, as rust-libp2p implements them; this module holds
//! PluresDB's rules around them (see `docs/libp2p.md`, "Relays and NATs").
//!
//! - A node started with a relay server ([`RelayAccess`]) accepts
//!   reservations and circuits within [`server_config`]'s limits, and by
//!   default only from members: peers that hold an admitted
//!   `/pluresdb/sync/1` link with it right now (they passed the secret
//!   proof or the allowlist, as any sync peer). rust-libp2p's relay asks
//!   its rate limiters about every reservation (new or renewed) and every
//!   circuit's source; the membership rule is one more of them
//!   ([`members_only`]), so a refused peer gets `RESOURCE_LIMIT_EXCEEDED`
//!   and the relay keeps no state for it.
//! - Every node runs the client: it reserves a slot on up to
//!   [`MAX_RELAYS`] linked peers that offer the relay protocol, unless
//!   AutoNAT found it reachable, and listens on the relayed addresses
//!   (`<relay address>/p2p/<relay>/p2p-circuit`), which its hellos, DHT
//!   records and tickets then carry.
//! - Dialling a `/p2p-circuit` address first links with the relay (so the
//!   relay admits the circuit), then opens the circuit; the sync stream
//!   over it runs the same admission as over any connection.
//! - DCUtR tries to turn each relayed connection into a direct one; once
//!   a direct connection to the peer is up, the relayed one is closed and
//!   the sync link is opened again over the direct one.

use libp2p::multiaddr::Protocol;
use libp2p::relay;
use libp2p::{autonat, Multiaddr, PeerId};
use std::num::NonZeroU32;
use std::time::Duration;

/// Reservations a relay holds at once, in all.
pub const MAX_RESERVATIONS: usize = 128;

/// Reservations one peer may hold on a relay at once (one per connection
/// to it; the rule counts others beside the one asked for).
pub const MAX_RESERVATIONS_PER_PEER: usize = 2;

/// How long a reservation lasts before the client must renew it (the
/// client renews it by itself while the connection to the relay lasts).
pub const RESERVATION_DURATION: Duration = Duration::from_secs(60 * 60);

/// Circuits a relay carries at once, in all.
pub const MAX_CIRCUITS: usize = 64;

/// Circuits one source peer may have open through a relay at once.
pub const MAX_CIRCUITS_PER_PEER: usize = 8;

/// How long a circuit lasts; then it is closed and the ends open another
/// (or, better, are direct by then). Members only, so longer than
/// rust-libp2p's 2 minutes for strangers: a relayed link must carry sync,
/// not only hole punching.
pub const MAX_CIRCUIT_DURATION: Duration = Duration::from_secs(30 * 60);

/// Bytes one circuit carries (both directions together) before the relay
/// closes it.
pub const MAX_CIRCUIT_BYTES: u64 = 256 * 1024 * 1024;

/// New reservations (and renewals) one peer may ask for: this many per
/// [`RATE_INTERVAL`] (a token bucket).
pub const RESERVATIONS_PER_PEER_PER_INTERVAL: u32 = 30;

/// New circuits one source peer may open: this many per [`RATE_INTERVAL`].
pub const CIRCUITS_PER_PEER_PER_INTERVAL: u32 = 60;

/// The refill interval of the relay's rate limits.
pub const RATE_INTERVAL: Duration = Duration::from_secs(60);

/// Relays a node reserves a slot on at once: two, so that losing one
/// leaves the node reachable while it reserves on a third.
pub const MAX_RELAYS: usize = 2;

/// Who may use a node's relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayAccess {
    /// Only peers that hold an admitted sync link with this node (members
    /// of its network, or allowlisted peers).
    Members,
    /// Any peer, within the limits (a public relay for other networks too).
    Open,
}

/// The relay server's limits (the constants above), with `admitted` as a
/// further rule for reservations and circuit sources (see
/// [`members_only`]), if given.
pub(crate) fn server_config(
    admitted: Option<Box<dyn relay::RateLimiter>>,
    circuit_admitted: Option<Box<dyn relay::RateLimiter>>,
) -> relay::Config {
    let per_interval = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
    let mut config = relay::Config {
        max_reservations: MAX_RESERVATIONS,
        max_reservations_per_peer: MAX_RESERVATIONS_PER_PEER,
        reservation_duration: RESERVATION_DURATION,
        reservation_rate_limiters: Vec::new(),
        max_circuits: MAX_CIRCUITS,
        max_circuits_per_peer: MAX_CIRCUITS_PER_PEER,
        max_circuit_duration: MAX_CIRCUIT_DURATION,
        max_circuit_bytes: MAX_CIRCUIT_BYTES,
        circuit_src_rate_limiters: Vec::new(),
    }
    .reservation_rate_per_peer(per_interval(RESERVATIONS_PER_PEER_PER_INTERVAL), RATE_INTERVAL)
    .circuit_src_per_peer(per_interval(CIRCUITS_PER_PEER_PER_INTERVAL), RATE_INTERVAL);
    // The membership rule first: a refused peer does not spend the others'
    // tokens.
    if let Some(admitted) = admitted {
        config.reservation_rate_limiters.insert(0, admitted);
    }
    if let Some(admitted) = circuit_admitted {
        config.circuit_src_rate_limiters.insert(0, admitted);
    }
    config
}

/// A relay rule that lets through only the peers `is_member` names (asked
/// at each reservation, renewal and circuit).
pub(crate) fn members_only(is_member: impl Fn(&PeerId) -> bool + Send + 'static) -> Box<dyn relay::RateLimiter> {
    Box::new(move |peer: PeerId, _address: &Multiaddr, _now| is_member(&peer))
}

/// AutoNAT's settings: the first probe soon after start; the servers
/// asked are the relays the node knows (added as they are found), not
/// every connected peer: a dial-back from a peer behind the same kind of
/// NAT says little, and one from a member would open a direct connection
/// beside a relayed one that nobody asked for. Private addresses are
/// allowed (a LAN or a lab is all private addresses); the rest is
/// rust-libp2p's defaults.
pub(crate) fn autonat_config() -> autonat::v1::Config {
    autonat::v1::Config {
        boot_delay: Duration::from_secs(2),
        retry_interval: Duration::from_secs(30),
        use_connected: false,
        only_global_ips: false,
        ..Default::default()
    }
}

/// Whether `address` goes through a relay (has `/p2p-circuit`).
pub fn is_relayed(address: &Multiaddr) -> bool {
    address.iter().any(|protocol| protocol == Protocol::P2pCircuit)
}

/// The relay of a `/p2p-circuit` address: the peer named just before
/// `/p2p-circuit`.
pub fn relay_of(address: &Multiaddr) -> Option<PeerId> {
    let mut last = None;
    for protocol in address.iter() {
        match protocol {
            Protocol::P2p(peer) => last = Some(peer),
            Protocol::P2pCircuit => return last,
            _ => {}
        }
    }
    None
}

/// The relay's own address in a `/p2p-circuit` address: everything before
/// `/p2p-circuit` (ending in `/p2p/<relay>`).
pub fn relay_address(address: &Multiaddr) -> Option<Multiaddr> {
    let mut prefix = Multiaddr::empty();
    for protocol in address.iter() {
        if protocol == Protocol::P2pCircuit {
            return matches!(prefix.iter().last(), Some(Protocol::P2p(_))).then_some(prefix);
        }
        prefix.push(protocol);
    }
    None
}

/// The address to reserve a slot on the relay at `relay_address` (ending
/// in `/p2p/<relay>`, or without it: then `relay` is appended).
pub(crate) fn reservation_address(mut relay_address: Multiaddr, relay: PeerId) -> Multiaddr {
    if !matches!(relay_address.iter().last(), Some(Protocol::P2p(_))) {
        relay_address.push(Protocol::P2p(relay));
    }
    relay_address.with(Protocol::P2pCircuit)
}

/// Announces this node's listen addresses to the other behaviours: first
/// as address candidates, then as confirmed external addresses. DCUtR
/// sends the peer it hole-punches with the candidates it heard of, and
/// hears of a candidate only while it is not confirmed (the swarm drops
/// candidates that are; identify reports none that is). The engine
/// confirms the addresses it listens on (for its DHT records and a relay's
/// reservations), so a node whose observed address is its listen address
/// (no NAT between it and the observer) would offer DCUtR nothing, and the
/// hole punch would fail with "no addresses".
#[derive(Default)]
pub(crate) struct OwnCandidates {
    queued: std::collections::VecDeque<libp2p::swarm::ToSwarm<std::convert::Infallible, std::convert::Infallible>>,
    /// Translated candidates offered so far (see
    /// [`offer_translated`](Self::offer_translated)), at most 64.
    translated: std::collections::HashSet<Multiaddr>,
}

impl OwnCandidates {
    /// Offers, as candidates only, this node's listen addresses `listen`
    /// with their IP replaced by `observed`'s (the address a peer saw
    /// this node's connection come from): where a NAT keeps a flow's
    /// source port (Linux `masquerade` and most home routers do), that is
    /// where the other transports can be reached too once punched. A peer
    /// observes this node only on the transport it is connected over, so
    /// without this a node linked with its relay over WebSocket offers
    /// DCUtR no QUIC address, and the two ends punch on different
    /// transports.
    pub(crate) fn offer_translated(&mut self, observed: &Multiaddr, listen: &[Multiaddr]) {
        if is_relayed(observed) {
            return;
        }
        let Some(ip) = observed.iter().find(|p| matches!(p, Protocol::Ip4(_) | Protocol::Ip6(_))) else { return };
        for address in listen.iter().filter(|a| !is_relayed(a)) {
            let Some(at) = address.iter().position(|p| matches!(p, Protocol::Ip4(_) | Protocol::Ip6(_))) else { continue };
            let Some(translated) = address.replace(at, |_| Some(ip.clone())) else { continue };
            if translated == *address || self.translated.len() >= 64 || !self.translated.insert(translated.clone()) {
                continue;
            }
            self.queued.push_back(libp2p::swarm::ToSwarm::NewExternalAddrCandidate(translated));
        }
    }

    /// Announces `address`: a candidate (unless relayed: DCUtR has no use
    /// for those), then confirmed.
    pub(crate) fn offer(&mut self, address: Multiaddr) {
        if self.queued.len() >= 64 {
            return;
        }
        if !is_relayed(&address) {
            self.queued.push_back(libp2p::swarm::ToSwarm::NewExternalAddrCandidate(address.clone()));
        }
        self.queued.push_back(libp2p::swarm::ToSwarm::ExternalAddrConfirmed(address));
    }
}

impl libp2p::swarm::NetworkBehaviour for OwnCandidates {
    type ConnectionHandler = libp2p::swarm::dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: libp2p::swarm::ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<libp2p::swarm::THandler<Self>, libp2p::swarm::ConnectionDenied> {
        Ok(libp2p::swarm::dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: libp2p::swarm::ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: libp2p::core::Endpoint,
        _: libp2p::core::transport::PortUse,
    ) -> Result<libp2p::swarm::THandler<Self>, libp2p::swarm::ConnectionDenied> {
        Ok(libp2p::swarm::dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: libp2p::swarm::FromSwarm) {}

    fn on_connection_handler_event(&mut self, _: PeerId, _: libp2p::swarm::ConnectionId, event: libp2p::swarm::THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<libp2p::swarm::ToSwarm<Self::ToSwarm, libp2p::swarm::THandlerInEvent<Self>>> {
        match self.queued.pop_front() {
            Some(event) => std::task::Poll::Ready(event),
            None => std::task::Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(seed: u8) -> PeerId {
        let mut bytes = [seed; 32];
        let key = libp2p::identity::Keypair::ed25519_from_bytes(&mut bytes).expect("32 bytes");
        key.public().to_peer_id()
    }

    #[test]
    fn circuit_addresses_name_their_relay_and_its_address() {
        let (relay, target) = (peer(1), peer(2));
        let direct: Multiaddr = format!("/ip4/10.0.0.1/tcp/4001/p2p/{relay}").parse().unwrap();
        let circuit: Multiaddr = format!("{direct}/p2p-circuit/p2p/{target}").parse().unwrap();
        assert!(is_relayed(&circuit));
        assert!(!is_relayed(&direct));
        assert_eq!(relay_of(&circuit), Some(relay));
        assert_eq!(relay_of(&direct), None);
        assert_eq!(relay_address(&circuit), Some(direct.clone()));
        // A circuit address that does not name its relay has no relay
        // address to dial.
        let unnamed: Multiaddr = format!("/ip4/10.0.0.1/tcp/4001/p2p-circuit/p2p/{target}").parse().unwrap();
        assert_eq!(relay_address(&unnamed), None);
        assert_eq!(relay_of(&unnamed), None);
        let bare: Multiaddr = "/ip4/10.0.0.1/tcp/4001".parse().unwrap();
        assert_eq!(reservation_address(bare, relay), format!("{direct}/p2p-circuit").parse().unwrap());
        assert_eq!(reservation_address(direct.clone(), relay), format!("{direct}/p2p-circuit").parse().unwrap());
    }

    #[test]
    fn members_only_lets_through_only_members() {
        let (member, stranger) = (peer(3), peer(4));
        let mut rule = members_only(move |p| *p == member);
        let address: Multiaddr = "/ip4/10.0.0.9/tcp/1".parse().unwrap();
        // web_time's Instant is std's on native targets.
        let now = std::time::Instant::now();
        assert!(rule.try_next(member, &address, now));
        assert!(!rule.try_next(stranger, &address, now));
        assert!(rule.try_next(member, &address, now), "asked again, a member still passes");
    }
}
