//! Two engines side by side as one (`CombinedNetworkEngine`): a peer
//! linked through both is one peer to the sync engine, messages go over
//! the link in use, and when that link goes the peer comes back over the
//! other. Two QUIC engines with the same identity stand in for QUIC and
//! libp2p here (the rule does not depend on the transport).

mod common;

use common::{config, secret, until, DEADLINE};
use pluresdb_core::VersionVector;
use pluresdb_net::{
    CombinedNetworkEngine, NetworkEngine, NetworkError, PeerEvent, PeerEvents, PeerManager, QuicNetworkEngine, SyncHandle, Transport,
};
use pluresdb_security::{AccessPolicy, Identity, PeerId};
use pluresdb_sync::SyncMessage;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::time::Instant;

struct Node {
    combined: CombinedNetworkEngine,
    engines: [QuicNetworkEngine; 2],
    addrs: [SocketAddr; 2],
    events: PeerEvents,
    sync: SyncHandle,
    id: PeerId,
}

async fn node(seed: u8) -> Node {
    let identity = Identity::from_seed([seed; 32]);
    let (sync, events) = SyncHandle::channel(64);
    let mut engines = Vec::new();
    let mut addrs = Vec::new();
    for number in 0..2 {
        let mut engine = QuicNetworkEngine::new(config(), Arc::new(PeerManager::new()), sync.for_engine(number))
            .with_identity(identity.clone())
            .with_access_policy(AccessPolicy::with_secret(secret()));
        engine.start().await.expect("start");
        addrs.push(engine.local_addr().expect("bound"));
        engines.push(engine);
    }
    let combined = CombinedNetworkEngine::new(sync.clone())
        .with_engine(Transport::Quic, Box::new(engines[0].clone()))
        .with_engine(Transport::Quic, Box::new(engines[1].clone()));
    let engines: [QuicNetworkEngine; 2] = engines.try_into().unwrap_or_else(|_| unreachable!());
    Node { combined, engines, addrs: [addrs[0], addrs[1]], events, sync, id: identity.peer_id() }
}

fn ack(from: &PeerId, seq: u64) -> SyncMessage {
    let vv: VersionVector = [(from.to_string(), seq)].into_iter().collect();
    SyncMessage::SyncAck { from_peer: from.to_string(), version_vector: vv }
}

/// The events up to and including the first message, which must be `want`.
async fn events_until_message(events: &mut PeerEvents, from: &PeerId, want: &SyncMessage) -> Vec<PeerEvent> {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    loop {
        let event = match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) => event,
            other => panic!("no message within {DEADLINE:?} (got {other:?}); before it: {seen:?}"),
        };
        if let PeerEvent::Message { peer_id, bytes } = &event {
            assert_eq!(peer_id, from);
            assert_eq!(&SyncMessage::decode(&from.to_string(), bytes).expect("a sync message"), want);
            return seen;
        }
        seen.push(event);
    }
}

fn names(events: &[PeerEvent]) -> Vec<&'static str> {
    events
        .iter()
        .map(|event| match event {
            PeerEvent::Connected { .. } => "connected",
            PeerEvent::Disconnected { .. } => "disconnected",
            PeerEvent::Message { .. } => "message",
        })
        .collect()
}

#[tokio::test]
async fn a_peer_linked_through_two_engines_syncs_over_one_and_falls_back_to_the_other() {
    let mut a = node(1).await;
    let mut b = node(2).await;

    // The first link: through the combined engine, which picks the engine
    // by the address's form.
    assert_eq!(a.combined.connect_peer(&format!("quic://{}", b.addrs[0])).await.expect("connect"), b.id);
    until("both sides use the first link", async || a.sync.route(&b.id) == Some(0) && b.sync.route(&a.id) == Some(0)).await;
    // The second link, through the second engines: not a second peer.
    assert_eq!(a.engines[1].connect_peer(&b.addrs[1].to_string()).await.expect("connect"), b.id);
    until("both engines linked", async || a.engines[1].is_peer_connected(&b.id).await && b.engines[1].is_peer_connected(&a.id).await).await;

    a.combined.send_message(&b.id, ack(&a.id, 1).into()).await.expect("send");
    assert_eq!(names(&events_until_message(&mut b.events, &a.id, &ack(&a.id, 1)).await), ["connected"]);
    b.combined.broadcast_message(ack(&b.id, 2).into()).await.expect("broadcast");
    assert_eq!(names(&events_until_message(&mut a.events, &b.id, &ack(&b.id, 2)).await), ["connected"]);
    let listed = a.combined.get_connected_peers().await.expect("peers");
    assert_eq!(listed.iter().map(|peer| peer.peer_id).collect::<Vec<_>>(), [b.id], "one peer, listed once");

    // The link in use goes: the peer leaves and comes back over the other
    // link, and messages go on.
    a.engines[0].stop().await.expect("stop");
    until("both sides use the second link", async || a.sync.route(&b.id) == Some(1) && b.sync.route(&a.id) == Some(1)).await;
    a.combined.send_message(&b.id, ack(&a.id, 3).into()).await.expect("send over the second link");
    assert_eq!(names(&events_until_message(&mut b.events, &a.id, &ack(&a.id, 3)).await), ["disconnected", "connected"]);
    b.combined.send_message(&a.id, ack(&b.id, 4).into()).await.expect("send back");
    assert_eq!(names(&events_until_message(&mut a.events, &b.id, &ack(&b.id, 4)).await), ["disconnected", "connected"]);

    // The last link goes: the peer is gone.
    a.combined.disconnect_peer(&b.id).await.expect("disconnect");
    until("no link left", async || a.sync.route(&b.id).is_none() && b.sync.route(&a.id).is_none()).await;
    assert!(matches!(a.combined.send_message(&b.id, ack(&a.id, 5).into()).await, Err(NetworkError::PeerNotConnected(_))));
    a.combined.stop().await.expect("stop");
    b.combined.stop().await.expect("stop");
}

#[tokio::test]
async fn an_address_of_a_transport_the_node_does_not_run_is_refused_with_the_reason() {
    let a = node(3).await;
    let err = a.combined.connect_peer("/ip4/127.0.0.1/tcp/9/p2p/12D3KooWnobody").await.expect_err("no libp2p engine");
    assert!(err.to_string().contains("runs no libp2p engine"), "{err}");
    assert_eq!(CombinedNetworkEngine::transport_of("webrtc://x"), Transport::WebRtc);
    assert_eq!(CombinedNetworkEngine::transport_of("127.0.0.1:1"), Transport::Quic);
}
