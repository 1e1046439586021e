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

use crate::engine::Shared;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use pluresdb_net::admission::Source;
use std::net::IpAddr;
use std::sync::Arc;
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

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::core::transport::PortUse;
    use libp2p::core::Endpoint;

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
