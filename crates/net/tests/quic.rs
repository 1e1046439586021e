//! The QUIC engine over real sockets on loopback: connection and identity,
//! admission, abuse handling, limits, restarts and shutdown.

mod common;

use common::{connected, disconnected, link, message, node, start, until, Options};
use pluresdb_core::VersionVector;
use pluresdb_net::codec::FrameDecoder;
use pluresdb_net::{
    Direction, ErrorCode, Frame, FrameKind, NetworkConfig, NetworkEngine, NetworkError, NetworkMessage, PeerEvent, QueueLimits,
    ReceiveLimits, Transport,
};
use pluresdb_security::{tls, AccessMode, AccessPolicy, Identity, NetworkSecret, PeerId, RateLimit};
use pluresdb_sync::SyncMessage;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

fn ack(from: &PeerId, seq: u64) -> SyncMessage {
    let vv: VersionVector = [(from.to_string(), seq)].into_iter().collect();
    SyncMessage::SyncAck { from_peer: from.to_string(), version_vector: vv }
}

/// The sync message `bytes` from `from` (the sync engine names peers by
/// their text form).
fn decode(from: &PeerId, bytes: &[u8]) -> SyncMessage {
    SyncMessage::decode(&from.to_string(), bytes).expect("a sync message")
}

#[tokio::test]
async fn two_engines_connect_verify_ids_and_exchange_messages() {
    let mut a = node(1).await;
    let mut b = node(2).await;
    // Both address forms work; the dialler learns the verified peer id.
    let found = a.engine.connect_peer(&format!("quic://{}", b.addr)).await.unwrap();
    assert_eq!(found, b.id);
    match connected(&mut a.events, &b.id).await {
        PeerEvent::Connected { address, transport, .. } => {
            assert_eq!(address, b.addr.to_string());
            assert_eq!(transport, Transport::Quic);
        }
        _ => unreachable!(),
    }
    connected(&mut b.events, &a.id).await;
    assert!(a.engine.is_peer_connected(&b.id).await);
    assert!(b.engine.is_peer_connected(&a.id).await);

    // Messages both ways, as encoded sync messages and as typed ones.
    a.engine.send_message(&b.id, NetworkMessage::from(ack(&a.id, 1))).await.unwrap();
    assert_eq!(decode(&a.id, &message(&mut b.events, &a.id).await), ack(&a.id, 1));
    b.engine.send_message(&a.id, NetworkMessage::EncodedSync(ack(&b.id, 7).encode().into())).await.unwrap();
    assert_eq!(decode(&b.id, &message(&mut a.events, &b.id).await), ack(&b.id, 7));
    // A DataSync travels on the bulk stream and arrives the same.
    let data = SyncMessage::DataSync { from_peer: a.id.to_string(), operations: vec![], version_vector: VersionVector::new() };
    a.engine.broadcast_message(data.clone().into()).await.unwrap();
    assert_eq!(decode(&a.id, &message(&mut b.events, &a.id).await), data);

    // The seed's heartbeat is accepted by send_message and counted.
    let heartbeat = NetworkMessage::Heartbeat { peer_id: "local".to_string(), timestamp: chrono::Utc::now() };
    a.engine.send_message(&b.id, heartbeat).await.unwrap();
    // Handshake messages are the engine's own.
    let goodbye = NetworkMessage::Goodbye { reason: "no".into() };
    assert!(matches!(a.engine.send_message(&b.id, goodbye).await, Err(NetworkError::NotSendable { .. })));
    assert!(matches!(
        a.engine.send_message(&Identity::from_seed([99; 32]).peer_id(), ack(&a.id, 1).into()).await,
        Err(NetworkError::PeerNotConnected(_))
    ));

    let peers = a.engine.get_connected_peers().await.unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].peer_id, b.id);
    assert_eq!(peers[0].direction, Direction::Dialled);
    assert_eq!(peers[0].listen_addresses, [format!("quic://{}", b.addr)]);
    until("rtt measured and bytes counted", async || {
        let info = a.peers.get(&b.id).unwrap();
        info.rtt.is_some() && info.bytes_sent > 0 && info.bytes_received > 0
    })
    .await;
    let on_b = b.engine.get_connected_peers().await.unwrap();
    assert_eq!((on_b[0].peer_id, on_b[0].direction), (a.id, Direction::Accepted));
}

#[tokio::test]
async fn a_peer_without_the_network_secret_is_refused_with_the_reason() {
    let mut b = node(2).await;
    // The outsider admits anyone, but holds another network's secret.
    let mut options = Options::new(3);
    options.policy = AccessPolicy { mode: AccessMode::Open, secret: Some(NetworkSecret::from_bytes([7; 32])), ..AccessPolicy::default() };
    let outsider = start(options).await;
    let err = outsider.engine.connect_peer(&b.addr.to_string()).await.unwrap_err();
    match &err {
        NetworkError::Refused { code, reason, .. } => {
            assert_eq!(*code, ErrorCode::AccessDenied);
            assert!(reason.contains("did not prove it holds the network secret"), "{reason}");
        }
        other => panic!("expected a refusal, got {other}"),
    }
    assert!(b.engine.get_connected_peers().await.unwrap().is_empty());
    assert!(b.events.try_recv().is_none(), "no Connected for a refused peer");

    // A node that holds no secret at all, in secret mode, refuses the other
    // side itself and says so.
    let mut options = Options::new(4);
    options.policy = AccessPolicy::default();
    let no_secret = start(options).await;
    let err = no_secret.engine.connect_peer(&b.addr.to_string()).await.unwrap_err();
    assert!(matches!(&err, NetworkError::AccessDenied(_)), "{err}");
    assert!(err.to_string().contains("refused the peer"));

    // An allowlisted peer needs no proof.
    let mut options = Options::new(5);
    options.policy = AccessPolicy { mode: AccessMode::Allowlist, allowlist: [b.id.to_string()].into(), ..AccessPolicy::default() };
    let listed = start(options).await;
    let err = listed.engine.connect_peer(&b.addr.to_string()).await.unwrap_err();
    assert!(matches!(err, NetworkError::Refused { code: ErrorCode::AccessDenied, .. }), "b still wants the secret: {err}");
}

/// A raw quinn client with a valid node certificate, speaking bytes.
async fn raw_client(seed: u8, server: SocketAddr) -> (quinn::Endpoint, quinn::Connection) {
    let identity = Identity::from_seed([seed; 32]);
    let tls = tls::client_config(&identity, None).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let connection = endpoint.connect(server, "pluresdb").unwrap().await.unwrap();
    (endpoint, connection)
}

/// Reads frames until the stream or connection ends; returns them and how
/// the connection closed.
async fn drain(connection: &quinn::Connection, recv: &mut quinn::RecvStream) -> (Vec<Frame>, quinn::ConnectionError) {
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    while let Ok(Some(chunk)) = recv.read_chunk(64 * 1024, true).await {
        decoder.extend(&chunk.bytes);
        while let Ok(Some(frame)) = decoder.decode() {
            frames.push(frame);
        }
    }
    let closed = tokio::time::timeout(common::DEADLINE, connection.closed()).await.expect("connection closes");
    (frames, closed)
}

#[tokio::test]
async fn garbage_oversize_and_unknown_versions_close_only_that_connection() {
    let mut a = node(1).await;
    let mut b = node(2).await;
    link(&mut a, &mut b).await;
    let cases: [(&[u8], ErrorCode); 3] = [
        (b"GET / HTTP/1.1\r\n\r\n", ErrorCode::UnsupportedVersion),
        (&[1, 1, 0xff, 0xff, 0xff, 0xff], ErrorCode::BadFrame),
        (&[1, 0x77, 0, 0, 0, 0], ErrorCode::BadFrame),
    ];
    for (bytes, want) in cases {
        let (_endpoint, connection) = raw_client(9, b.addr).await;
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(bytes).await.unwrap();
        let (frames, closed) = drain(&connection, &mut recv).await;
        // b sent its hello, then an error frame naming the problem.
        let kinds: Vec<FrameKind> = frames.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, [FrameKind::Hello, FrameKind::Error], "for {bytes:?}");
        match NetworkMessage::from_frame(&frames[1]).unwrap() {
            NetworkMessage::Error { code, message } => {
                assert_eq!(code, want, "{message}");
                assert!(!message.is_empty());
            }
            other => panic!("{other:?}"),
        }
        match closed {
            quinn::ConnectionError::ApplicationClosed(close) => assert_eq!(close.error_code.into_inner(), u64::from(want.code())),
            other => panic!("closed with {other}"),
        }
    }
    // The other peer never noticed.
    a.engine.send_message(&b.id, ack(&a.id, 2).into()).await.unwrap();
    assert_eq!(decode(&a.id, &message(&mut b.events, &a.id).await), ack(&a.id, 2));
    assert_eq!(b.engine.get_connected_peers().await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_oversize_frame_after_the_handshake_disconnects_that_peer_only() {
    let mut options = Options::new(2);
    options.limits = ReceiveLimits { max_payload: 1024, ..ReceiveLimits::default() };
    let mut b = start(options).await;
    let mut a = node(1).await;
    let mut c = node(3).await;
    link(&mut a, &mut b).await;
    link(&mut c, &mut b).await;
    a.engine.send_message(&b.id, NetworkMessage::EncodedSync(vec![0u8; 4096].into())).await.unwrap();
    let on_a = disconnected(&mut a.events, &b.id).await;
    assert!(on_a.contains("bad_frame") && on_a.contains("exceeds the limit of 1024"), "{on_a}");
    let on_b = disconnected(&mut b.events, &a.id).await;
    assert!(on_b.contains("refused the peer"), "{on_b}");
    c.engine.send_message(&b.id, ack(&c.id, 1).into()).await.unwrap();
    assert_eq!(decode(&c.id, &message(&mut b.events, &c.id).await), ack(&c.id, 1));
    b.engine.send_message(&c.id, ack(&b.id, 1).into()).await.unwrap();
    assert_eq!(decode(&b.id, &message(&mut c.events, &b.id).await), ack(&b.id, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_is_disconnected_while_another_keeps_exchanging() {
    let mut options = Options::new(2);
    options.limits = ReceiveLimits { frames: RateLimit { messages_per_second: 100, burst: 200 }, ..ReceiveLimits::default() };
    let mut b = start(options).await;
    let mut flooder = node(1).await;
    let mut c = node(3).await;
    link(&mut flooder, &mut b).await;
    link(&mut c, &mut b).await;

    let reason = async {
        loop {
            tokio::select! {
                event = flooder.events.recv() => match event {
                    Some(PeerEvent::Disconnected { reason, .. }) => return reason,
                    Some(_) => {}
                    None => panic!("events closed"),
                },
                _ = tokio::task::yield_now() => {
                    for _ in 0..50 {
                        // PeerBusy and PeerNotConnected are expected here.
                        let _ = flooder.engine.send_message(&b.id, ack(&flooder.id, 1).into()).await;
                    }
                }
            }
        }
    };
    let reason = tokio::time::timeout(common::DEADLINE, reason).await.expect("the flooder is disconnected");
    assert!(reason.contains("rate_limited"), "{reason}");
    let on_b = disconnected(&mut b.events, &flooder.id).await;
    assert!(on_b.contains("frames/s"), "{on_b}");

    // c is unaffected: it still exchanges with b.
    assert!(b.engine.is_peer_connected(&c.id).await);
    c.engine.send_message(&b.id, ack(&c.id, 5).into()).await.unwrap();
    assert_eq!(decode(&c.id, &message(&mut b.events, &c.id).await), ack(&c.id, 5));
    b.engine.send_message(&c.id, ack(&b.id, 5).into()).await.unwrap();
    assert_eq!(decode(&b.id, &message(&mut c.events, &b.id).await), ack(&b.id, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dialler_reconnects_after_the_other_side_restarts() {
    let mut a = node(1).await;
    let mut b = node(2).await;
    link(&mut a, &mut b).await;
    let port = b.addr.port();
    b.engine.stop().await.unwrap();
    let reason = disconnected(&mut a.events, &b.id).await;
    assert!(reason.contains("goodbye") && reason.contains("shutting down"), "{reason}");
    assert!(disconnected(&mut b.events, &a.id).await.contains("shutting down"));

    // The same node (same key) comes back on the same port.
    let mut options = Options::new(2);
    options.config = NetworkConfig { port, ..common::config() };
    let mut b2 = start(options).await;
    connected(&mut a.events, &b2.id).await;
    connected(&mut b2.events, &a.id).await;
    a.engine.send_message(&b2.id, ack(&a.id, 3).into()).await.unwrap();
    assert_eq!(decode(&a.id, &message(&mut b2.events, &a.id).await), ack(&a.id, 3));

    // After disconnect_peer, both sides see the link go.
    a.engine.disconnect_peer(&b2.id).await.unwrap();
    assert!(disconnected(&mut a.events, &b2.id).await.contains("disconnected by the local node"));
    assert!(disconnected(&mut b2.events, &a.id).await.contains("goodbye"));
    assert!(!a.engine.is_peer_connected(&b2.id).await);
}

#[tokio::test]
async fn extra_connections_over_the_limit_are_refused_with_a_reason() {
    let mut options = Options::new(2);
    options.config = NetworkConfig { max_connections: 1, ..common::config() };
    let mut b = start(options).await;
    let mut a = node(1).await;
    link(&mut a, &mut b).await;
    let c = node(3).await;
    match c.engine.connect_peer(&b.addr.to_string()).await {
        Err(NetworkError::Refused { code: ErrorCode::TooManyConnections, reason, .. }) => {
            assert!(reason.contains("too many connections (limit 1)"), "{reason}")
        }
        other => panic!("expected too_many_connections, got {other:?}"),
    }
    assert_eq!(b.engine.get_connected_peers().await.unwrap().len(), 1);
    // The existing link is intact.
    a.engine.send_message(&b.id, ack(&a.id, 1).into()).await.unwrap();
    message(&mut b.events, &a.id).await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_handshake_timeout() {
    let mut options = Options::new(2);
    options.config = NetworkConfig { handshake_timeout: Duration::from_secs(1), ..common::config() };
    let b = start(options).await;
    let (_endpoint, connection) = raw_client(9, b.addr).await;
    let closed = tokio::time::timeout(common::DEADLINE, connection.closed()).await.unwrap();
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code.into_inner(), u64::from(ErrorCode::HandshakeTimeout.code()))
        }
        other => panic!("closed with {other}"),
    }
}

#[tokio::test]
async fn stop_says_goodbye_to_every_peer() {
    let mut a = node(1).await;
    let mut b = node(2).await;
    let mut c = node(3).await;
    link(&mut b, &mut a).await;
    link(&mut c, &mut a).await;
    a.engine.stop().await.unwrap();
    let mut gone = Vec::new();
    while gone.len() < 2 {
        match common::event(&mut a.events, "Disconnected", |e| matches!(e, PeerEvent::Disconnected { .. })).await {
            PeerEvent::Disconnected { peer_id, reason } => {
                assert_eq!(reason, "node shutting down");
                gone.push(peer_id);
            }
            _ => unreachable!(),
        }
    }
    gone.sort();
    let mut want = vec![b.id, c.id];
    want.sort();
    assert_eq!(gone, want);
    assert!(disconnected(&mut b.events, &a.id).await.contains("peer said goodbye: node shutting down"));
    assert!(disconnected(&mut c.events, &a.id).await.contains("peer said goodbye"));
    assert!(matches!(a.engine.send_message(&b.id, ack(&a.id, 1).into()).await, Err(NetworkError::PeerNotConnected(_))));
    assert!(a.engine.local_addr().is_none());
    // b and c redial a, which is gone; stopping them ends that.
    b.engine.stop().await.unwrap();
    c.engine.stop().await.unwrap();
}

#[tokio::test]
async fn simultaneous_dials_settle_on_one_link() {
    let mut a = node(1).await;
    let mut b = node(2).await;
    let (addr_a, addr_b) = (a.addr.to_string(), b.addr.to_string());
    let (from_a, from_b) = tokio::join!(a.engine.connect_peer(&addr_b), b.engine.connect_peer(&addr_a));
    assert_eq!(from_a.unwrap(), b.id);
    assert_eq!(from_b.unwrap(), a.id);
    // Both ends keep the connection dialled by the smaller peer id.
    let a_dialled_the_winner = a.id < b.id;
    let expect = |dialled: bool| if dialled { Direction::Dialled } else { Direction::Accepted };
    until("both ends settled on the same link", async || {
        let on_a = a.engine.get_connected_peers().await.unwrap();
        let on_b = b.engine.get_connected_peers().await.unwrap();
        on_a.len() == 1
            && on_b.len() == 1
            && on_a[0].direction == expect(a_dialled_the_winner)
            && on_b[0].direction == expect(!a_dialled_the_winner)
    })
    .await;
    a.engine.send_message(&b.id, ack(&a.id, 1).into()).await.unwrap();
    message(&mut b.events, &a.id).await;
    b.engine.send_message(&a.id, ack(&b.id, 1).into()).await.unwrap();
    message(&mut a.events, &b.id).await;
}

#[tokio::test]
async fn peers_learn_each_other_through_a_common_peer_and_dial_them_checked() {
    let mut hub = node(1).await;
    let mut b = node(2).await;
    let mut options = Options::new(3);
    options.ask_for_peers = true;
    let mut c = start(options).await;
    b.engine.connect_peer(&hub.addr.to_string()).await.unwrap();
    connected(&mut hub.events, &b.id).await;
    c.engine.connect_peer(&hub.addr.to_string()).await.unwrap();
    connected(&mut hub.events, &c.id).await;
    // c asks the hub for its peers and learns b; b does not look for peers.
    until("c learns b from the hub", async || {
        let on_c = c.peers.learned_peers();
        on_c.iter().any(|p| p.peer_id == b.id.to_string() && p.via == hub.id.to_string() && p.addresses == [format!("quic://{}", b.addr)])
    })
    .await;
    assert!(hub.peers.learned_peers().is_empty(), "the hub knows its peers directly");
    assert!(b.peers.learned_peers().is_empty(), "a node that does not ask is not told");

    // A learned address is dialled with the peer id checked in the handshake.
    let address = format!("quic://{}", b.addr);
    let err = c.engine.dial_discovered(&hub.id, &address).await.unwrap_err();
    assert!(!c.engine.is_peer_connected(&b.id).await, "a peer with the wrong id is not linked: {err}");
    assert_eq!(c.engine.dial_discovered(&b.id, &address).await.unwrap(), b.id);
    connected(&mut c.events, &b.id).await;
    connected(&mut b.events, &c.id).await;
}

#[tokio::test]
async fn a_peer_the_new_access_rule_refuses_is_disconnected() {
    let mut a = node(1).await;
    let mut b = node(2).await;
    let c = node(3).await;
    b.engine.connect_peer(&a.addr.to_string()).await.unwrap();
    c.engine.connect_peer(&a.addr.to_string()).await.unwrap();
    connected(&mut a.events, &b.id).await;
    connected(&mut a.events, &c.id).await;
    // Allowlist mode with only c: b goes, c stays.
    let policy =
        AccessPolicy { mode: AccessMode::Allowlist, secret: Some(common::secret()), allowlist: [c.id.to_string()].into_iter().collect() };
    a.engine.set_access_policy(policy);
    let reason = disconnected(&mut a.events, &b.id).await;
    assert!(reason.contains("no longer admitted"), "{reason}");
    let on_b = disconnected(&mut b.events, &a.id).await;
    assert!(on_b.contains("no longer admitted"), "b is told why: {on_b}");
    assert!(a.engine.is_peer_connected(&c.id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_fills_its_queue_share_is_paused_while_others_go_on() {
    // b lets each peer have 256 KiB of sync messages queued or in use.
    const SHARE: usize = 256 * 1024;
    const MESSAGE: usize = 64 * 1024;
    const SENT: usize = 40;
    let mut options = Options::new(2);
    options.queue = QueueLimits { bytes_per_peer: SHARE, ..QueueLimits::default() };
    let mut b = start(options).await;
    let mut a = node(1).await;
    let mut c = node(3).await;
    link(&mut a, &mut b).await;
    link(&mut c, &mut b).await;

    // a sends ten times its share; b's consumer keeps what a sent (as a
    // sync engine busy with it would), so none of it is given back.
    for n in 0..SENT {
        a.engine.send_message(&b.id, NetworkMessage::EncodedSync(vec![n as u8; MESSAGE].into())).await.unwrap();
    }
    c.engine.send_message(&b.id, ack(&c.id, 1).into()).await.unwrap();
    let next_message =
        async |events: &mut pluresdb_net::PeerEvents| match common::event(events, "a message", |e| matches!(e, PeerEvent::Message { .. }))
            .await
        {
            PeerEvent::Message { peer_id, bytes } => (peer_id, bytes),
            _ => unreachable!(),
        };
    let mut held = Vec::new();
    let mut heard_c = false;
    while !(heard_c && held.len() * MESSAGE == SHARE) {
        match next_message(&mut b.events).await {
            (peer, bytes) if peer == a.id => {
                held.push(bytes);
                assert!(held.len() * MESSAGE <= SHARE, "a has {} bytes queued, over its share", held.len() * MESSAGE);
            }
            (peer, _) => heard_c |= peer == c.id,
        }
    }
    // c is heard while a waits, both ways; nothing more of a's comes.
    c.engine.send_message(&b.id, ack(&c.id, 2).into()).await.unwrap();
    loop {
        let (peer, bytes) = next_message(&mut b.events).await;
        assert_ne!(peer, a.id, "a was heard while its share was used up");
        if SyncMessage::decode(&peer.to_string(), &bytes).ok() == Some(ack(&c.id, 2)) {
            break;
        }
    }
    b.engine.send_message(&c.id, ack(&b.id, 1).into()).await.unwrap();
    assert_eq!(decode(&b.id, &message(&mut c.events, &b.id).await), ack(&b.id, 1));

    // Once b is done with a's messages, the rest arrive, in order, none lost.
    let mut received: Vec<u8> = held.iter().map(|bytes| bytes[0]).collect();
    drop(held);
    while received.len() < SENT {
        received.push(message(&mut b.events, &a.id).await[0]);
    }
    assert_eq!(received, (0..SENT).map(|n| n as u8).collect::<Vec<_>>());
    assert!(b.engine.is_peer_connected(&a.id).await);
}
