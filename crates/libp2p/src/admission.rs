//! Which incoming `/pluresdb/sync/1` streams may run their handshake: the
//! transport-independent budget of [`pluresdb_net::admission`] (the QUIC
//! engine's), keyed by the address of the connection a stream came on.
//!
//! By the time a stream arrives its connection is established (TCP or
//! QUIC-v1, then Noise), so its address is proven: the budget is asked
//! with `validated` true and never answers with a Retry. What it adds over
//! a plain count is fairness: at most `max_handshakes_per_ip` handshakes
//! from one IPv4 address or IPv6 /64, and when all `max_handshakes` are
//! taken a newcomer evicts the oldest handshake of the busiest address. So
//! an outsider opening many streams (or many connections) from one address
//! holds one address's share, and a member from another address is
//! admitted. This node's own sync streams (it opened them) are not
//! budgeted here: they count against `max_connections` with the links.
//!
//! Connections get the same rule one level down ([`ConnectionShares`]):
//! an incoming connection whose peer has no sync link (a DHT neighbour,
//! a peer before its sync handshake, an outsider) takes a slot of a budget
//! of `max_connections` such connections, `max_handshakes_per_ip` per
//! address, the busiest address's oldest evicted for a newcomer from a
//! less busy one. Once its peer is linked it leaves the budget (the links
//! have `max_connections` of their own). So neither a busy DHT nor
//! outsiders doing Kademlia from a few addresses can hold the connections
//! a member needs to reach the sync protocol.

use crate::engine::{lock, Shared};
use libp2p::core::transport::PortUse;
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    dummy, CloseConnection, ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, ListenFailure, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};
use pluresdb_net::admission::{Admission, HandshakeBudget, Source};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use tokio::sync::oneshot;

/// The [`Source`] a connection's handshakes are charged to: the IP address
/// of its remote end. A relayed connection (`/p2p-circuit`) is charged to
/// the relay's address, the only one this node sees (the relay's clients
/// share its share, as the hosts behind one NAT do); an address with no IP
/// (a DNS name this node dialled, a circuit whose relay address is not
/// known) to [`Source::Unaddressed`], one bucket for all of them.
pub(crate) fn source_of(endpoint: &ConnectedPoint) -> Source {
    let address = match endpoint {
        ConnectedPoint::Dialer { address, .. } => address,
        // An incoming circuit's remote address is just `/p2p/<source>`; the
        // relay's address is in the local one (`<relay>/p2p-circuit`).
        ConnectedPoint::Listener { local_addr, send_back_addr } if is_relayed(local_addr) => {
            if first_ip(send_back_addr).is_some() && !is_relayed(send_back_addr) {
                send_back_addr
            } else {
                local_addr
            }
        }
        ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr,
    };
    first_ip(address).map(Source::of).unwrap_or(Source::Unaddressed)
}

fn is_relayed(address: &Multiaddr) -> bool {
    address.iter().any(|protocol| matches!(protocol, Protocol::P2pCircuit))
}

/// The first IP address in `address` (a circuit's is its relay's).
fn first_ip(address: &Multiaddr) -> Option<IpAddr> {
    address.iter().find_map(|protocol| match protocol {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// A slot of the handshake budget, held by one incoming sync stream until
/// its peer is admitted or the stream ends; released on drop.
pub(crate) struct HandshakeSlot {
    shared: Arc<Shared>,
    id: u64,
    /// Fires when a newer handshake takes this slot (see
    /// [`pluresdb_net::admission::Admission::Accept`]); `None` once the
    /// engine let go of the sender (the slot is being released).
    evicted: Option<oneshot::Receiver<()>>,
}

impl HandshakeSlot {
    pub(crate) fn new(shared: Arc<Shared>, id: u64, evicted: oneshot::Receiver<()>) -> Self {
        Self { shared, id, evicted: Some(evicted) }
    }

    /// Resolves once a newer handshake took this slot; never otherwise.
    pub(crate) async fn evicted(&mut self) {
        if let Some(evicted) = self.evicted.as_mut() {
            if evicted.await.is_ok() {
                return;
            }
            self.evicted = None;
        }
        std::future::pending::<()>().await;
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.shared.release_handshake(self.id);
    }
}

/// Resolves once `slot` (if any) is evicted; never without one.
pub(crate) async fn evicted(slot: &mut Option<HandshakeSlot>) {
    match slot {
        Some(slot) => slot.evicted().await,
        None => std::future::pending().await,
    }
}

/// The budget of incoming connections without a sync link (see the
/// module docs), shared by the swarm's [`ConnectionShares`] behaviour and
/// the engine, which says when a peer is linked. Cheap to clone.
#[derive(Clone)]
pub(crate) struct UnlinkedConnections(Arc<Mutex<Unlinked>>);

struct Unlinked {
    budget: HandshakeBudget,
    /// Each budgeted connection's peer and slot.
    slots: HashMap<ConnectionId, (PeerId, u64)>,
    by_slot: HashMap<u64, ConnectionId>,
    /// Peers with a sync link: their connections are not budgeted.
    linked: HashSet<PeerId>,
    /// Evicted connections the swarm is still to close.
    to_close: VecDeque<(PeerId, ConnectionId)>,
    waker: Option<Waker>,
}

impl Unlinked {
    fn release(&mut self, connection: ConnectionId) {
        if let Some((_, slot)) = self.slots.remove(&connection) {
            self.by_slot.remove(&slot);
            self.budget.release(slot);
        }
    }
}

impl UnlinkedConnections {
    /// At most `limit` incoming connections without a sync link, `per_ip`
    /// from one address.
    pub(crate) fn new(limit: usize, per_ip: usize) -> Self {
        Self(Arc::new(Mutex::new(Unlinked {
            budget: HandshakeBudget::new(limit, per_ip),
            slots: HashMap::new(),
            by_slot: HashMap::new(),
            linked: HashSet::new(),
            to_close: VecDeque::new(),
            waker: None,
        })))
    }

    /// `peer` has a sync link now: its connections leave the budget and
    /// new ones are not charged to it.
    pub(crate) fn linked(&self, peer: PeerId) {
        let mut unlinked = lock(&self.0);
        unlinked.linked.insert(peer);
        let connections: Vec<ConnectionId> =
            unlinked.slots.iter().filter(|(_, (owner, _))| *owner == peer).map(|(connection, _)| *connection).collect();
        for connection in connections {
            unlinked.release(connection);
        }
    }

    /// `peer`'s sync link ended. (Its connections that stay open are not
    /// charged again: the overall cap of `connection_limits` bounds them.)
    pub(crate) fn unlinked(&self, peer: &PeerId) {
        lock(&self.0).linked.remove(peer);
    }

    /// How many incoming connections without a sync link are open.
    pub(crate) fn in_budget(&self) -> usize {
        lock(&self.0).budget.in_flight()
    }
}

/// The behaviour that applies [`UnlinkedConnections`] to incoming
/// connections as they are established, and closes the ones it evicts.
pub(crate) struct ConnectionShares {
    unlinked: UnlinkedConnections,
}

impl ConnectionShares {
    pub(crate) fn new(unlinked: UnlinkedConnections) -> Self {
        Self { unlinked }
    }
}

impl NetworkBehaviour for ConnectionShares {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let endpoint = ConnectedPoint::Listener { local_addr: local_addr.clone(), send_back_addr: remote_addr.clone() };
        let source = source_of(&endpoint);
        let mut unlinked = lock(&self.unlinked.0);
        if unlinked.linked.contains(&peer) {
            return Ok(dummy::ConnectionHandler);
        }
        // Established: TCP or QUIC and Noise proved the address.
        match unlinked.budget.admit(source, true, true) {
            Admission::Accept { id, evict } => {
                if let Some(victim) = evict.and_then(|slot| unlinked.by_slot.remove(&slot)) {
                    if let Some((owner, _)) = unlinked.slots.remove(&victim) {
                        tracing::debug!(peer = %owner, "an unlinked connection gave its place to a newer one");
                        unlinked.to_close.push_back((owner, victim));
                        if let Some(waker) = unlinked.waker.take() {
                            waker.wake();
                        }
                    }
                }
                unlinked.slots.insert(connection, (peer, id));
                unlinked.by_slot.insert(id, connection);
                Ok(dummy::ConnectionHandler)
            }
            Admission::Refuse(reason) => {
                tracing::debug!(%peer, %source, %reason, "refused an incoming connection without a sync link");
                Err(ConnectionDenied::new(std::io::Error::other(format!("{reason} (connections without a sync link)"))))
            }
            Admission::Retry => Err(ConnectionDenied::new(std::io::Error::other("too many connections without a sync link"))),
        }
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // This node's own dials keep their share: not budgeted.
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        let connection = match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => connection_id,
            // Denied by a later behaviour after this one took a slot.
            FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => connection_id,
            _ => return,
        };
        lock(&self.unlinked.0).release(connection);
    }

    fn on_connection_handler_event(&mut self, _peer: PeerId, _connection: ConnectionId, event: THandlerOutEvent<Self>) {
        libp2p::core::util::unreachable(event)
    }

    fn poll(&mut self, context: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        let mut unlinked = lock(&self.unlinked.0);
        match unlinked.to_close.pop_front() {
            Some((peer_id, connection)) => Poll::Ready(ToSwarm::CloseConnection { peer_id, connection: CloseConnection::One(connection) }),
            None => {
                unlinked.waker = Some(context.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(local: &str, remote: &str) -> ConnectedPoint {
        ConnectedPoint::Listener { local_addr: local.parse().unwrap(), send_back_addr: remote.parse().unwrap() }
    }

    fn dialer(address: &str) -> ConnectedPoint {
        ConnectedPoint::Dialer { address: address.parse().unwrap(), role_override: Endpoint::Dialer, port_use: PortUse::Reuse }
    }

    fn ip(text: &str) -> Source {
        Source::of(text.parse().unwrap())
    }

    #[test]
    fn a_connection_is_charged_to_its_remote_ip_or_its_relay_s() {
        assert_eq!(source_of(&listener("/ip4/10.0.0.1/tcp/1", "/ip4/192.0.2.7/tcp/5000")), ip("192.0.2.7"));
        assert_eq!(source_of(&listener("/ip6/::1/udp/1/quic-v1", "/ip6/2001:db8::9/udp/5/quic-v1")), ip("2001:db8::"));
        assert_eq!(
            source_of(&dialer("/ip4/192.0.2.8/tcp/34570/ws/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN")),
            ip("192.0.2.8")
        );
        // Relayed: the relay's address, on either end.
        let relayed_in = listener(
            "/ip4/198.51.100.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit",
            "/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
        );
        assert_eq!(source_of(&relayed_in), ip("198.51.100.1"));
        let relayed_out = dialer("/ip4/198.51.100.2/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN");
        assert_eq!(source_of(&relayed_out), ip("198.51.100.2"));
        // No IP anywhere: the one shared bucket.
        assert_eq!(source_of(&dialer("/dns4/example.org/tcp/34570")), Source::Unaddressed);
        assert_eq!(source_of(&listener("/p2p-circuit", "/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN")), Source::Unaddressed);
    }
}
