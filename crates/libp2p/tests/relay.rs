//! Circuit relays on loopback: a member reserves a slot on a relay of its
//! network, another member reaches it through the circuit and syncs over
//! it, hole punching (DCUtR) moves the link to a direct connection, and a
//! node outside the network can neither reserve nor open a circuit.

mod common;

use common::*;
use pluresdb_libp2p::RelayAccess;
use pluresdb_net::{NetworkConfig, NetworkEngine, NetworkMessage, PeerEvent};
use pluresdb_sync::SyncMessage;

fn ack(from: &pluresdb_security::PeerId) -> NetworkMessage {
    SyncMessage::SyncAck { from_peer: from.to_string(), version_vector: Default::default() }.into()
}

/// A member serving as a relay for its network's members.
async fn relay(network: u8) -> Node {
    start_with(member(network), NetworkConfig::loopback(), |engine| engine.with_relay_server(RelayAccess::Members)).await
}

/// A member that neither hole-punches nor dials relayed peers directly (its
/// connections through a relay stay relayed).
async fn relayed_member(network: u8) -> Node {
    start_with(member(network), NetworkConfig::loopback(), |engine| engine.with_hole_punching(false).with_direct_redial(None)).await
}

/// The TCP address through a relay that `node` listens on, with its id.
fn circuit_address(node: &Node) -> String {
    node.engine
        .dial_addresses()
        .into_iter()
        .map(|address| address.to_string())
        .find(|address| address.contains("/p2p-circuit") && address.contains("/tcp/") && !address.contains("/ws"))
        .unwrap_or_else(|| panic!("no TCP address through a relay in {:?}", node.engine.dial_addresses()))
}

/// Links `node` with `relay` and waits until it holds a reservation there
/// (the engine asks linked relays by itself).
async fn reserve(node: &Node, relay: &Node) {
    node.engine.connect_peer(&address(&relay.engine, Kind::Tcp)).await.expect("a member links with the relay");
    eventually("the member holds a reservation on the relay", || {
        node.engine.nat().reserved_on == vec![relay.id.to_string()] && !node.engine.relayed_addresses().is_empty()
    })
    .await;
}

async fn exchange(a: &mut Node, b: &mut Node) {
    a.engine.send_message(&b.id, ack(&a.id)).await.expect("a sends");
    let got = wait_for(&mut b.events, |event| matches!(event, PeerEvent::Message { peer_id, .. } if *peer_id == a.id)).await;
    assert!(matches!(got, PeerEvent::Message { .. }));
    b.engine.send_message(&a.id, ack(&b.id)).await.expect("b sends");
    wait_for(&mut a.events, |event| matches!(event, PeerEvent::Message { peer_id, .. } if *peer_id == b.id)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_reserves_on_the_relay_and_another_syncs_with_it_through_the_circuit() {
    let r = relay(1).await;
    let mut a = relayed_member(1).await;
    let mut b = relayed_member(1).await;
    reserve(&a, &r).await;
    assert_eq!(r.engine.nat().reservations_accepted, 1);
    let circuit = circuit_address(&a);
    assert!(circuit.contains(&format!("/p2p/{}/p2p-circuit/p2p/{}", r.id, a.id)), "{circuit}");

    // B knows only A's relayed address: it links with the relay first
    // (which then admits its circuit), then reaches A through it.
    let found = b.engine.connect_peer(&circuit).await.expect("b reaches a through the relay");
    assert_eq!(found, a.id);
    wait_for(&mut a.events, |event| matches!(event, PeerEvent::Connected { peer_id, .. } if *peer_id == b.id)).await;
    exchange(&mut a, &mut b).await;
    assert_eq!(b.engine.relayed_via(&a.id.to_string()), Some(r.id.to_string()), "b reaches a through r");
    assert_eq!(a.engine.relayed_via(&b.id.to_string()), Some(r.id.to_string()), "a is reached by b through r");
    let peers = b.engine.get_connected_peers().await.expect("peers");
    let shown = peers.iter().find(|p| p.peer_id == a.id).expect("b lists a");
    assert!(shown.address.contains("/p2p-circuit"), "the address shows the relay: {}", shown.address);
    // Both are linked with the relay too (B through its dial of it).
    assert!(r.engine.is_peer_connected(&a.id).await && r.engine.is_peer_connected(&b.id).await);
    for node in [a, b, r] {
        stop(node).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hole_punching_moves_the_link_from_the_relay_to_a_direct_connection() {
    let r = relay(2).await;
    let mut a = start(member(2)).await;
    let mut b = start(member(2)).await;
    reserve(&a, &r).await;
    let circuit = circuit_address(&a);
    b.engine.connect_peer(&circuit).await.expect("b reaches a through the relay");
    // DCUtR opens a direct connection; the relayed one is closed and the
    // sync link is opened again over the direct one.
    eventually("b's connection to a is direct", || {
        b.engine.relayed_via(&a.id.to_string()).is_none() && a.engine.relayed_via(&b.id.to_string()).is_none()
    })
    .await;
    // And the sync link follows: each side lists the other at a direct
    // address.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let b_sees = b.engine.get_connected_peers().await.expect("peers");
        let a_sees = a.engine.get_connected_peers().await.expect("peers");
        let direct = |peers: &[pluresdb_net::PeerInfo], id: &pluresdb_security::PeerId| {
            peers.iter().any(|p| p.peer_id == *id && p.connected && !p.address.contains("/p2p-circuit"))
        };
        if direct(&b_sees, &a.id) && direct(&a_sees, &b.id) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the link is not direct within {DEADLINE:?}: b sees {b_sees:?}, a sees {a_sees:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(a.engine.nat().upgrades + b.engine.nat().upgrades >= 1, "the upgrade is counted");
    // Messages still cross, now directly.
    while let Ok(Some(_)) = tokio::time::timeout(std::time::Duration::from_millis(50), a.events.recv()).await {}
    while let Ok(Some(_)) = tokio::time::timeout(std::time::Duration::from_millis(50), b.events.recv()).await {}
    exchange(&mut a, &mut b).await;
    for node in [a, b, r] {
        stop(node).await;
    }
}

/// Without hole punching (a NAT that defeats it), a peer reached through a
/// relay is dialled directly every `with_direct_redial` interval (60 s by
/// default; 1 s here): once the direct dial gets through, the relayed
/// connection closes and the link moves to the direct one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_peer_is_dialled_directly_again_and_the_link_moves_off_the_relay() {
    let r = relay(4).await;
    let redialling = |engine: pluresdb_libp2p::Libp2pNetworkEngine| {
        engine.with_hole_punching(false).with_direct_redial(Some(std::time::Duration::from_secs(1)))
    };
    let mut a = start_with(member(4), NetworkConfig::loopback(), redialling).await;
    let mut b = start_with(member(4), NetworkConfig::loopback(), redialling).await;
    reserve(&a, &r).await;
    let circuit = circuit_address(&a);
    b.engine.connect_peer(&circuit).await.expect("b reaches a through the relay");
    eventually("the connection leaves the relay", || {
        b.engine.relayed_via(&a.id.to_string()).is_none() && a.engine.relayed_via(&b.id.to_string()).is_none()
    })
    .await;
    assert!(a.engine.nat().upgrades + b.engine.nat().upgrades >= 1, "the upgrade is counted");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let b_sees = b.engine.get_connected_peers().await.expect("peers");
        if b_sees.iter().any(|p| p.peer_id == a.id && p.connected && !p.address.contains("/p2p-circuit")) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "b's link to a is not direct within {DEADLINE:?}: {b_sees:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    while let Ok(Some(_)) = tokio::time::timeout(std::time::Duration::from_millis(50), a.events.recv()).await {}
    while let Ok(Some(_)) = tokio::time::timeout(std::time::Duration::from_millis(50), b.events.recv()).await {}
    exchange(&mut a, &mut b).await;
    for node in [a, b, r] {
        stop(node).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_outside_the_network_can_neither_reserve_on_the_relay_nor_open_a_circuit() {
    let r = relay(3).await;
    let mut a = relayed_member(3).await;
    let stranger = start_with(member(9), NetworkConfig::loopback(), |engine| engine.with_hole_punching(false)).await;
    reserve(&a, &r).await;
    let circuit = circuit_address(&a);

    // The stranger connects to the relay (its sync stream is refused) and
    // asks for a reservation anyway: refused.
    let relay_address = address(&r.engine, Kind::Tcp);
    assert!(stranger.engine.connect_peer(&relay_address).await.is_err(), "the relay's sync protocol refuses the stranger");
    stranger.engine.reserve_on(&relay_address).await.expect("the request goes out");
    eventually("the relay refuses the stranger's reservation", || r.engine.nat().reservations_denied >= 1).await;
    assert!(stranger.engine.nat().reserved_on.is_empty());
    assert!(stranger.engine.relayed_addresses().is_empty());

    // Nor can it reach a member through the relay: the relay refuses the
    // circuit, so A's sync protocol never sees the stranger.
    let denied_before = r.engine.nat().circuits_denied;
    assert!(stranger.engine.connect_peer(&circuit).await.is_err(), "the circuit to a member is refused");
    eventually("the relay counts the refused circuit", || r.engine.nat().circuits_denied > denied_before).await;
    assert!(!a.engine.is_peer_connected(&stranger.id).await);
    while let Ok(Some(event)) = tokio::time::timeout(std::time::Duration::from_millis(200), a.events.recv()).await {
        assert!(
            !matches!(&event, PeerEvent::Connected { peer_id, .. } | PeerEvent::Message { peer_id, .. } if *peer_id == stranger.id),
            "a heard from the stranger: {event:?}"
        );
    }
    for node in [a, stranger, r] {
        stop(node).await;
    }
}
