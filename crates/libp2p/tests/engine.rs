//! Real libp2p engines in one process on loopback (ports from the OS):
//! sync over each transport, admission, identify, DHT discovery, connection
//! limits, bad frames.

mod common;

use common::*;
use pluresdb_libp2p::{KAD_PROTOCOL, SYNC_PROTOCOL};
use pluresdb_net::{ErrorCode, FrameKind, NetworkConfig, NetworkEngine, NetworkError, NetworkMessage, PeerEvent, Transport};
use pluresdb_security::PeerId;
use pluresdb_sync::SyncMessage;

fn ack(from: &PeerId) -> NetworkMessage {
    SyncMessage::SyncAck { from_peer: from.to_string(), version_vector: Default::default() }.into()
}

async fn expect_message(node: &mut Node, from: &PeerId) -> SyncMessage {
    match wait_for(&mut node.events, |event| matches!(event, PeerEvent::Message { .. })).await {
        PeerEvent::Message { peer_id, bytes } => {
            assert_eq!(peer_id, *from);
            SyncMessage::decode(&peer_id.to_string(), &bytes).expect("a sync message")
        }
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_sync_both_ways_over_tcp_quic_and_websocket() {
    for kind in KINDS {
        let mut a = start(member(1)).await;
        let mut b = start(member(1)).await;
        let found = a.engine.connect_peer(&address(&b.engine, kind)).await.unwrap_or_else(|err| panic!("{kind:?}: {err}"));
        assert_eq!(found, b.id);
        let connected = wait_for(&mut b.events, |event| matches!(event, PeerEvent::Connected { .. })).await;
        assert!(
            matches!(&connected, PeerEvent::Connected { peer_id, transport: Transport::Libp2p, .. } if *peer_id == a.id),
            "{connected:?}"
        );
        wait_for(&mut a.events, |event| matches!(event, PeerEvent::Connected { peer_id, .. } if *peer_id == b.id)).await;

        a.engine.send_message(&b.id, ack(&a.id)).await.unwrap();
        assert!(matches!(expect_message(&mut b, &a.id).await, SyncMessage::SyncAck { from_peer, .. } if from_peer == a.id.to_string()));
        b.engine.send_message(&a.id, ack(&b.id)).await.unwrap();
        assert!(matches!(expect_message(&mut a, &b.id).await, SyncMessage::SyncAck { from_peer, .. } if from_peer == b.id.to_string()));
        // A DataSync goes the bulk way and arrives as well.
        let data = SyncMessage::DataSync { from_peer: a.id.to_string(), operations: vec![], version_vector: Default::default() };
        a.engine.broadcast_message(data.clone().into()).await.unwrap();
        assert_eq!(expect_message(&mut b, &a.id).await, data);

        let peers = b.engine.get_connected_peers().await.unwrap();
        assert_eq!(peers.len(), 1, "{kind:?}");
        assert_eq!(peers[0].transport, Transport::Libp2p);
        match kind {
            Kind::Quic => assert!(peers[0].address.contains("/quic-v1"), "{}", peers[0].address),
            Kind::WebSocket => assert!(peers[0].address.contains("/ws"), "{}", peers[0].address),
            Kind::Tcp => assert!(peers[0].address.contains("/tcp/"), "{}", peers[0].address),
        }
        stop(a).await;
        wait_for(&mut b.events, |event| matches!(event, PeerEvent::Disconnected { .. })).await;
        stop(b).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_secret_is_refused_with_the_reason_over_each_transport() {
    for kind in KINDS {
        let mut b = start(member(1)).await;
        for outsider in [start(outsider()).await, start(member(2)).await] {
            let err = outsider.engine.connect_peer(&address(&b.engine, kind)).await.expect_err("refused");
            let refused = match &err {
                NetworkError::Refused { code: ErrorCode::AccessDenied, reason, .. } => !reason.is_empty(),
                // Another network's member refuses the member too, and may
                // read its own refusal first.
                NetworkError::AccessDenied(_) => true,
                _ => false,
            };
            assert!(refused, "{kind:?}: {err}");
            assert!(!outsider.engine.is_peer_connected(&b.id).await);
            assert!(!b.engine.is_peer_connected(&outsider.id).await, "{kind:?}");
            assert!(b.engine.get_connected_peers().await.unwrap().is_empty());
            while let Some(event) = b.events.try_recv() {
                assert!(!matches!(event, PeerEvent::Connected { .. } | PeerEvent::Message { .. }), "{kind:?}: {event:?}");
            }
            stop(outsider).await;
        }
        stop(b).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_secret_reads_access_denied_on_the_stream() {
    let b = start(member(1)).await;
    let mut client = RawClient::spawn();
    let mut stream = client.open(&address(&b.engine, Kind::Tcp)).await;
    handshake(&client, &mut stream, &b.id, None).await;
    let frames = read_to_end(&mut stream).await;
    assert!(frames.iter().all(|frame| frame.kind != FrameKind::Sync));
    let (code, message) = error_of(frames.last().expect("frames")).expect("an error frame last");
    assert_eq!(code, ErrorCode::AccessDenied);
    assert!(message.contains("did not prove"), "{message}");
    stop(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_lists_the_sync_protocol() {
    let b = start_with(member(1), NetworkConfig::loopback(), |engine| engine.with_dht(true)).await;
    let mut client = RawClient::spawn();
    client.dial(&address(&b.engine, Kind::Tcp)).await;
    let (peer, info) = tokio::time::timeout(DEADLINE, client.identified.recv()).await.unwrap().unwrap();
    assert_eq!(peer.to_string(), b.id.to_string());
    assert!(info.protocols.contains(&SYNC_PROTOCOL), "{:?}", info.protocols);
    assert!(info.protocols.contains(&KAD_PROTOCOL), "{:?}", info.protocols);
    assert!(info.protocols.iter().any(|p| p.as_ref() == "/ipfs/ping/1.0.0"), "{:?}", info.protocols);
    assert!(!info.listen_addrs.is_empty());
    stop(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_the_stream_with_their_code_and_the_engine_keeps_running() {
    let mut b = start(member(1)).await;
    let address = address(&b.engine, Kind::Tcp);

    // Before the handshake: a frame other than hello, then a frame of an
    // unknown format version.
    let mut client = RawClient::spawn();
    let mut stream = client.open(&address).await;
    write(&mut stream, &NetworkMessage::Heartbeat { peer_id: client.peer_id.to_string(), timestamp: chrono::Utc::now() }.to_frame()).await;
    let frames = read_to_end(&mut stream).await;
    let (code, _) = error_of(frames.last().unwrap()).expect("an error frame");
    assert_eq!(code, ErrorCode::UnexpectedMessage, "a heartbeat is not a hello");

    let mut stream = client.open(&address).await;
    futures::AsyncWriteExt::write_all(&mut stream, &[9, 1, 0, 0, 0, 0]).await.unwrap();
    let frames = read_to_end(&mut stream).await;
    let (code, message) = error_of(frames.last().unwrap()).expect("an error frame");
    assert_eq!(code, ErrorCode::UnsupportedVersion, "{message}");

    // After admission: an unknown frame kind.
    let mut client = RawClient::spawn();
    let mut stream = client.open(&address).await;
    let mut decoder = handshake(&client, &mut stream, &b.id, Some(&secret(1))).await;
    let second = read_frame(&mut stream, &mut decoder).await;
    assert_eq!(second.kind, FrameKind::Hello);
    let admitted = read_frame(&mut stream, &mut decoder).await;
    assert_eq!(admitted.kind, FrameKind::Heartbeat, "admitted");
    write(&mut stream, &NetworkMessage::Heartbeat { peer_id: client.peer_id.to_string(), timestamp: chrono::Utc::now() }.to_frame()).await;
    wait_for(
        &mut b.events,
        |event| matches!(event, PeerEvent::Connected { peer_id, .. } if peer_id.to_string() == client.peer_id.to_string()),
    )
    .await;
    futures::AsyncWriteExt::write_all(&mut stream, &[1, 99, 0, 0, 0, 0]).await.unwrap();
    let mut rest = Vec::new();
    loop {
        let frame = read_frame(&mut stream, &mut decoder).await;
        if frame.kind == FrameKind::Error {
            rest.push(frame);
            break;
        }
    }
    let (code, message) = error_of(&rest[0]).unwrap();
    assert_eq!(code, ErrorCode::BadFrame, "{message}");
    assert!(message.contains("kind 99"), "{message}");
    wait_for(
        &mut b.events,
        |event| matches!(event, PeerEvent::Disconnected { peer_id, .. } if peer_id.to_string() == client.peer_id.to_string()),
    )
    .await;

    // A payload that does not decode as its kind.
    let mut client = RawClient::spawn();
    let mut stream = client.open(&address).await;
    let mut decoder = handshake(&client, &mut stream, &b.id, Some(&secret(1))).await;
    read_frame(&mut stream, &mut decoder).await;
    read_frame(&mut stream, &mut decoder).await;
    write(&mut stream, &NetworkMessage::Heartbeat { peer_id: client.peer_id.to_string(), timestamp: chrono::Utc::now() }.to_frame()).await;
    write(&mut stream, &pluresdb_net::Frame::new(FrameKind::Goodbye, vec![0xff, 0x00])).await;
    let frames = read_to_end(&mut stream).await;
    let (code, _) = error_of(frames.last().unwrap()).expect("an error frame");
    assert_eq!(code, ErrorCode::BadFrame);

    // The engine keeps serving: a member connects and syncs.
    let a = start(member(1)).await;
    assert_eq!(a.engine.connect_peer(&address).await.unwrap(), b.id);
    a.engine.send_message(&b.id, ack(&a.id)).await.unwrap();
    expect_message(&mut b, &a.id).await;
    stop(a).await;
    stop(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_links_over_max_connections_are_refused_with_the_reason() {
    let config = NetworkConfig { max_connections: 2, ..NetworkConfig::loopback() };
    let listener = start_with(member(1), config, |engine| engine).await;
    let address = address(&listener.engine, Kind::Tcp);
    let mut dialers = Vec::new();
    for _ in 0..2 {
        let dialer = start(member(1)).await;
        dialer.engine.connect_peer(&address).await.expect("within the limit");
        dialers.push(dialer);
    }
    let excess = start(member(1)).await;
    let err = excess.engine.connect_peer(&address).await.expect_err("over the limit");
    assert!(matches!(err, NetworkError::Refused { code: ErrorCode::TooManyConnections, .. }), "{err}");
    assert!(err.to_string().contains("too many connections (limit 2)"), "{err}");
    assert_eq!(listener.engine.get_connected_peers().await.unwrap().len(), 2);
    assert!(!listener.engine.is_peer_connected(&excess.id).await);
    // Room again once one leaves.
    let gone = dialers.pop().unwrap();
    let gone_id = gone.id;
    stop(gone).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while listener.engine.is_peer_connected(&gone_id).await {
        assert!(tokio::time::Instant::now() < deadline, "the listener did not see the dialer go");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The refused dialler redials (it dialled on purpose); once there is
    // room it gets in, by its redial or by dialling again.
    while !excess.engine.is_peer_connected(&listener.id).await {
        assert!(tokio::time::Instant::now() < deadline, "no room again");
        let _ = excess.engine.connect_peer(&address).await;
    }
    while !listener.engine.is_peer_connected(&excess.id).await {
        assert!(tokio::time::Instant::now() < deadline, "the listener did not take the excess dialler in");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop(excess).await;
    for dialer in dialers {
        stop(dialer).await;
    }
    stop(listener).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dht_finds_the_network_through_a_bootstrap_of_another_network() {
    let dht = |engine: pluresdb_libp2p::Libp2pNetworkEngine| engine.with_dht(true).with_dht_interval(std::time::Duration::from_secs(2));
    let mut bootstrap = start_with(member(9), NetworkConfig::loopback(), dht).await;
    let config = NetworkConfig { bootstrap_nodes: vec![address(&bootstrap.engine, Kind::Tcp)], ..NetworkConfig::loopback() };
    let mut nodes = Vec::new();
    for _ in 0..5 {
        nodes.push(start_with(member(1), config.clone(), dht).await);
    }
    let ids: Vec<PeerId> = nodes.iter().map(|node| node.id).collect();
    let mut found_any = false;
    for node in &nodes {
        let engine = node.engine.clone();
        let others: Vec<PeerId> = ids.iter().filter(|id| **id != node.id).copied().collect();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let connected: Vec<PeerId> = engine.get_connected_peers().await.unwrap().into_iter().map(|p| p.peer_id).collect();
            if others.iter().all(|id| connected.contains(id)) {
                assert!(!connected.contains(&bootstrap.id), "never synced with another network's node");
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{} found only {connected:?}", node.id);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // What the DHT named: members only. (A node may also have been
        // linked by members that found it first.)
        let found: Vec<String> = engine.dht_peers().into_iter().filter(|p| p.source == "dht").map(|p| p.peer_id).collect();
        assert!(found.iter().all(|id| ids.iter().any(|member| member.to_string() == *id) && *id != node.id.to_string()), "{found:?}");
        found_any |= !found.is_empty();
        // Each with where it listens (what the runtime lists and dials).
        eventually("every DHT-found peer has an address", || engine.dht_peers().iter().all(|p| !p.addresses.is_empty())).await;
    }
    assert!(found_any, "the links came from DHT lookups");
    assert!(bootstrap.engine.get_connected_peers().await.unwrap().is_empty());
    while let Some(event) = bootstrap.events.try_recv() {
        assert!(!matches!(event, PeerEvent::Connected { .. }), "{event:?}");
    }
    for mut node in nodes {
        while let Some(event) = node.events.try_recv() {
            assert!(!matches!(&event, PeerEvent::Connected { peer_id, .. } if *peer_id == bootstrap.id), "{event:?}");
        }
        stop(node).await;
    }
    stop(bootstrap).await;
}
