//! The link protocol between two machines, without sockets: a virtual
//! clock, and transmits moved by hand from one side to the other.

use super::*;
use crate::limits::ReceiveLimits;
use crate::message::ExchangedPeer;
use pluresdb_security::{AccessMode, Identity, NetworkSecret, RateLimit};
use pluresdb_sync::SyncMessage;

const HEARTBEAT: Duration = Duration::from_secs(5);

fn peer(seed: u8) -> PeerId {
    Identity::from_seed([seed; 32]).peer_id()
}

fn secret(seed: u8) -> NetworkSecret {
    NetworkSecret::from_bytes([seed; 32])
}

/// The virtual clock's start: a fixed wall time; the instant is only
/// compared with later ones.
fn start() -> Now {
    Now { instant: Instant::now(), wall: DateTime::<Utc>::from_timestamp_millis(1_700_000_000_000).unwrap() }
}

fn config(local: PeerId, remote: PeerId, policy: AccessPolicy, now: Now) -> LinkConfig {
    LinkConfig { binding: [9; 32], ..LinkConfig::new(local, remote, policy, now.instant + Duration::from_secs(5)) }
}

/// Two links, A (seed 1) and B (seed 2), each with its own policy.
struct Pair {
    a: Link,
    b: Link,
    now: Now,
}

impl Pair {
    fn new(policy_a: AccessPolicy, policy_b: AccessPolicy) -> Self {
        Self::with(|config| config, policy_a, policy_b)
    }

    fn with(adjust: impl Fn(LinkConfig) -> LinkConfig, policy_a: AccessPolicy, policy_b: AccessPolicy) -> Self {
        let now = start();
        let a = Link::new(adjust(config(peer(1), peer(2), policy_a, now)), now);
        let b = Link::new(adjust(config(peer(2), peer(1), policy_b, now)), now);
        Self { a, b, now }
    }

    /// Moves every transmit across, both ways, until none is left.
    fn exchange(&mut self) {
        loop {
            let moved = deliver(&mut self.a, &mut self.b, self.now) + deliver(&mut self.b, &mut self.a, self.now);
            if moved == 0 {
                return;
            }
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now = self.now.after(by);
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
    }
}

/// Moves `from`'s transmits to `to`; returns how many.
fn deliver(from: &mut Link, to: &mut Link, now: Now) -> usize {
    let mut moved = 0;
    while let Some(transmit) = from.poll_transmit() {
        to.handle_input(transmit.lane, &transmit.frame.to_bytes().unwrap(), now);
        moved += 1;
    }
    moved
}

fn events(link: &mut Link) -> Vec<LinkEvent> {
    std::iter::from_fn(|| link.poll_event()).collect()
}

fn transmits(link: &mut Link) -> Vec<Transmit> {
    std::iter::from_fn(|| link.poll_transmit()).collect()
}

fn messages(link: &mut Link) -> Vec<NetworkMessage> {
    transmits(link).iter().map(|t| NetworkMessage::from_frame(&t.frame).unwrap()).collect()
}

fn closed(link: &mut Link) -> LinkEnd {
    match events(link).pop() {
        Some(LinkEvent::Closed(end)) => end,
        other => panic!("expected Closed, got {other:?}"),
    }
}

fn established(policy_a: AccessPolicy, policy_b: AccessPolicy) -> Pair {
    let mut pair = Pair::new(policy_a, policy_b);
    pair.exchange();
    assert!(pair.a.is_established() && pair.b.is_established());
    events(&mut pair.a);
    events(&mut pair.b);
    pair
}

fn bytes(message: NetworkMessage) -> Vec<u8> {
    message.to_frame().to_bytes().unwrap()
}

fn hello_from(sender: PeerId, version: u16) -> Vec<u8> {
    bytes(NetworkMessage::Hello(Hello {
        protocol_version: version,
        peer_id: sender.to_string(),
        listen_addresses: Vec::new(),
        proof: None,
    }))
}

fn sync_ack(from: PeerId) -> NetworkMessage {
    SyncMessage::SyncAck { from_peer: from.to_string(), version_vector: Default::default() }.into()
}

/// The `error` frame a link queued last, as (code, message).
fn refusal_sent(link: &mut Link) -> (ErrorCode, String) {
    match messages(link).pop() {
        Some(NetworkMessage::Error { code, message }) => (code, message),
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[test]
fn peers_holding_the_secret_admit_each_other_then_sync_flows_on_both_lanes() {
    let policy = AccessPolicy::with_secret(secret(1));
    let mut pair = Pair::new(policy.clone(), policy);
    pair.exchange();
    for (link, other) in [(&mut pair.a, peer(2)), (&mut pair.b, peer(1))] {
        let got = events(link);
        assert!(matches!(&got[0], LinkEvent::PeerAdmitted { proof_ok: true, hello }
            if hello.protocol_version == PROTOCOL_VERSION && hello.peer_id == other.to_string()));
        assert_eq!(got[1], LinkEvent::Established);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(link.is_established() && link.proof_ok());
    }

    // Sync messages come out as their bytes, from either lane.
    let ack = outgoing(&sync_ack(peer(1))).unwrap();
    assert_eq!(ack.lane, Lane::Control);
    pair.b.handle_input(Lane::Control, &ack.frame.to_bytes().unwrap(), pair.now);
    let data: NetworkMessage =
        SyncMessage::DataSync { from_peer: peer(1).to_string(), operations: Vec::new(), version_vector: Default::default() }.into();
    let data = outgoing(&data).unwrap();
    assert_eq!(data.lane, Lane::Bulk);
    pair.b.handle_input(Lane::Bulk, &data.frame.to_bytes().unwrap(), pair.now);
    assert_eq!(events(&mut pair.b), [LinkEvent::Sync(ack.frame.payload), LinkEvent::Sync(data.frame.payload)]);
}

#[test]
fn a_peer_without_the_secret_is_refused_with_access_denied_and_learns_why() {
    // B admits anyone but cannot prove A's secret.
    let open = AccessPolicy { mode: AccessMode::Open, ..AccessPolicy::default() };
    let mut pair = Pair::new(AccessPolicy::with_secret(secret(1)), open);
    deliver(&mut pair.b, &mut pair.a, pair.now);
    let end = closed(&mut pair.a);
    assert!(matches!(&end, LinkEnd::Refused(Refusal::Denied(AccessDenied::NoValidProof { .. }))), "{end:?}");
    assert_eq!(end.close_code(), u32::from(ErrorCode::AccessDenied.code()));
    assert!(matches!(end.into_error("b", "addr"), NetworkError::AccessDenied(_)));
    // A sent its hello, then the refusal, and nothing after.
    let sent = messages(&mut pair.a);
    assert!(matches!(&sent[..], [NetworkMessage::Hello(_), NetworkMessage::Error { code: ErrorCode::AccessDenied, .. }]), "{sent:?}");
    pair.b.handle_input(Lane::Control, &bytes(sent[0].clone()), pair.now);
    pair.b.handle_input(Lane::Control, &bytes(sent[1].clone()), pair.now);
    match events(&mut pair.b).as_slice() {
        [LinkEvent::PeerAdmitted { proof_ok: false, .. }, LinkEvent::Closed(LinkEnd::PeerRefused { code: ErrorCode::AccessDenied, message })] =>
        {
            assert!(message.contains("did not prove"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(!pair.b.is_established());
}

#[test]
fn a_proof_made_for_another_session_does_not_verify() {
    // Same secret, different session bindings: a relayed or replayed proof.
    let now = start();
    let policy = AccessPolicy::with_secret(secret(1));
    let mut a = Link::new(config(peer(1), peer(2), policy.clone(), now), now);
    let mut b = Link::new(LinkConfig { binding: [8; 32], ..config(peer(2), peer(1), policy, now) }, now);
    deliver(&mut b, &mut a, now);
    assert!(matches!(closed(&mut a), LinkEnd::Refused(Refusal::Denied(AccessDenied::NoValidProof { .. }))));
}

#[test]
fn the_allowlist_admits_a_peer_without_a_proof_and_nobody_else() {
    let mut allow = AccessPolicy { mode: AccessMode::Allowlist, ..AccessPolicy::default() };
    allow.allowlist.insert(peer(2).to_string());
    let pair = established(allow.clone(), AccessPolicy { mode: AccessMode::Open, ..AccessPolicy::default() });
    assert!(!pair.a.proof_ok());

    allow.allowlist.clear();
    let mut pair = Pair::new(allow, AccessPolicy { mode: AccessMode::Open, ..AccessPolicy::default() });
    deliver(&mut pair.b, &mut pair.a, pair.now);
    assert!(matches!(closed(&mut pair.a), LinkEnd::Refused(Refusal::Denied(AccessDenied::NotAllowlisted { .. }))));
}

#[test]
fn another_protocol_version_is_refused_with_unsupported_version() {
    let now = start();
    let mut a = Link::new(config(peer(1), peer(2), AccessPolicy::with_secret(secret(1)), now), now);
    a.handle_input(Lane::Control, &hello_from(peer(2), PROTOCOL_VERSION + 1), now);
    let end = closed(&mut a);
    assert_eq!(end, LinkEnd::Refused(Refusal::Version { peer: peer(2).to_string(), theirs: PROTOCOL_VERSION + 1 }));
    assert_eq!(end.close_code(), u32::from(ErrorCode::UnsupportedVersion.code()));
    let (code, message) = refusal_sent(&mut a);
    assert_eq!(code, ErrorCode::UnsupportedVersion);
    assert!(message.contains("speaks protocol version 2; this node speaks 1"), "{message}");
    assert!(matches!(end.into_error("b", "addr"), NetworkError::UnsupportedVersion { version: 2, ours: 1, .. }));

    // A frame format version this node does not speak gets the same code.
    let mut a = Link::new(config(peer(1), peer(2), AccessPolicy::with_secret(secret(1)), now), now);
    a.handle_input(Lane::Control, &[2, 1, 0, 0, 0, 0], now);
    assert!(matches!(closed(&mut a), LinkEnd::Refused(Refusal::Input { code: ErrorCode::UnsupportedVersion, .. })));
}

#[test]
fn a_hello_naming_another_peer_than_the_transport_proved_is_refused() {
    let now = start();
    let mut a = Link::new(config(peer(1), peer(2), AccessPolicy { mode: AccessMode::Open, ..AccessPolicy::default() }, now), now);
    a.handle_input(Lane::Control, &hello_from(peer(3), PROTOCOL_VERSION), now);
    match closed(&mut a) {
        LinkEnd::Refused(Refusal::Input { code: ErrorCode::UnexpectedMessage, message }) => {
            assert!(message.contains(&peer(3).to_string()) && message.contains("but the certificate is"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(refusal_sent(&mut a).0, ErrorCode::UnexpectedMessage);
}

#[test]
fn a_peer_that_stays_silent_in_the_handshake_times_out_without_an_error_frame() {
    let mut pair = Pair::new(AccessPolicy::with_secret(secret(1)), AccessPolicy::with_secret(secret(1)));
    assert_eq!(pair.a.poll_timeout(), Some(pair.now.instant + Duration::from_secs(5)));
    transmits(&mut pair.a);
    pair.advance(Duration::from_millis(4_999));
    assert!(events(&mut pair.a).is_empty());
    pair.advance(Duration::from_millis(1));
    let end = closed(&mut pair.a);
    assert_eq!(end, LinkEnd::HandshakeTimeout(Duration::from_secs(5)));
    assert_eq!(end.close_code(), u32::from(ErrorCode::HandshakeTimeout.code()));
    assert!(transmits(&mut pair.a).is_empty());
    assert_eq!(pair.a.poll_timeout(), None);
    // A peer that admitted us but never confirms (no first heartbeat) too.
    let mut pair = Pair::new(AccessPolicy::with_secret(secret(1)), AccessPolicy::with_secret(secret(1)));
    deliver(&mut pair.b, &mut pair.a, pair.now);
    assert!(matches!(events(&mut pair.a)[..], [LinkEvent::PeerAdmitted { .. }]));
    pair.advance(Duration::from_secs(5));
    assert!(matches!(closed(&mut pair.a), LinkEnd::HandshakeTimeout(_)));
}

#[test]
fn an_established_link_that_hears_nothing_closes_after_the_idle_timeout() {
    let policy = AccessPolicy::with_secret(secret(1));
    let idle = |config: LinkConfig| LinkConfig { idle_timeout: Some(Duration::from_secs(10)), ..config };
    let mut pair = Pair::with(idle, policy.clone(), policy);
    pair.exchange();
    events(&mut pair.a);
    // Heartbeats keep the link alive...
    for _ in 0..4 {
        pair.advance(HEARTBEAT);
        pair.exchange();
    }
    assert!(pair.a.is_established(), "{:?}", events(&mut pair.a));
    assert!(events(&mut pair.a).iter().all(|e| matches!(e, LinkEvent::Heartbeat { .. })));
    // ...and without them it closes, with a clean close code.
    pair.advance(HEARTBEAT);
    assert!(pair.a.is_established());
    pair.advance(HEARTBEAT);
    let end = closed(&mut pair.a);
    assert_eq!(end, LinkEnd::Idle(Duration::from_secs(10)));
    assert_eq!(end.close_code(), CLOSE_NORMAL);
}

#[test]
fn heartbeats_follow_the_interval_and_carry_the_senders_wall_clock() {
    let policy = AccessPolicy::with_secret(secret(1));
    let mut pair = established(policy.clone(), policy);
    assert_eq!(pair.a.poll_timeout(), Some(pair.now.instant + HEARTBEAT));
    pair.advance(Duration::from_secs(4));
    assert!(transmits(&mut pair.a).is_empty());
    pair.advance(Duration::from_secs(1));
    let sent_at = pair.now.wall;
    assert!(matches!(messages(&mut pair.a)[..], [NetworkMessage::Heartbeat { timestamp, .. }] if timestamp == sent_at));
    assert_eq!(pair.a.poll_timeout(), Some(pair.now.instant + HEARTBEAT));
    // B sees A's clock reading.
    pair.advance(HEARTBEAT);
    deliver(&mut pair.a, &mut pair.b, pair.now);
    assert_eq!(events(&mut pair.b), [LinkEvent::Heartbeat { sent: pair.now.wall }]);
    assert!(pair.b.last_received() == pair.now.instant);
}

#[test]
fn frames_over_the_size_limit_are_refused_from_their_header() {
    // During the handshake: 64 KiB.
    let now = start();
    let mut a = Link::new(config(peer(1), peer(2), AccessPolicy::with_secret(secret(1)), now), now);
    let header = crate::codec::encode_header(FrameKind::Hello, HANDSHAKE_MAX_PAYLOAD + 1).unwrap();
    a.handle_input(Lane::Control, &header, now);
    match closed(&mut a) {
        LinkEnd::Refused(Refusal::Input { code: ErrorCode::BadFrame, message }) => assert!(message.contains("65537"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(refusal_sent(&mut a).0, ErrorCode::BadFrame);

    // After it: the configured limit, on either lane.
    let policy = AccessPolicy::with_secret(secret(1));
    let small = |config: LinkConfig| LinkConfig { limits: ReceiveLimits { max_payload: 1_000, ..ReceiveLimits::default() }, ..config };
    for lane in [Lane::Control, Lane::Bulk] {
        let mut pair = Pair::with(small, policy.clone(), policy.clone());
        pair.exchange();
        events(&mut pair.a);
        pair.a.handle_input(lane, &crate::codec::encode_header(FrameKind::Sync, 1_001).unwrap(), pair.now);
        assert!(matches!(closed(&mut pair.a), LinkEnd::Refused(Refusal::Input { code: ErrorCode::BadFrame, .. })));
        // Input after the end is ignored.
        pair.a.handle_input(Lane::Control, &bytes(sync_ack(peer(2))), pair.now);
        assert!(events(&mut pair.a).is_empty());
    }
}

#[test]
fn frames_out_of_place_are_unexpected_messages() {
    let policy = AccessPolicy::with_secret(secret(1));
    let now = start();
    // A sync frame before the handshake completed.
    let mut a = Link::new(config(peer(1), peer(2), policy.clone(), now), now);
    a.handle_input(Lane::Control, &bytes(sync_ack(peer(2))), now);
    assert!(matches!(closed(&mut a), LinkEnd::Refused(Refusal::Input { code: ErrorCode::UnexpectedMessage, .. })));
    // Bulk data before it.
    let mut a = Link::new(config(peer(1), peer(2), policy.clone(), now), now);
    a.handle_input(Lane::Bulk, &bytes(sync_ack(peer(2))), now);
    assert!(matches!(closed(&mut a), LinkEnd::Refused(Refusal::Input { code: ErrorCode::UnexpectedMessage, .. })));
    // Something else than the first heartbeat after the hello.
    let mut pair = Pair::new(policy.clone(), policy.clone());
    deliver(&mut pair.b, &mut pair.a, now);
    pair.a.handle_input(Lane::Control, &bytes(NetworkMessage::PeerExchange { peers: Vec::new(), request: true }), now);
    match closed(&mut pair.a) {
        LinkEnd::Refused(Refusal::Input { code: ErrorCode::UnexpectedMessage, message }) => {
            assert_eq!(message, "expected a heartbeat frame after hello, got a peers frame")
        }
        other => panic!("{other:?}"),
    }
    // A second hello, and a heartbeat on the bulk lane, once established.
    let mut pair = established(policy.clone(), policy.clone());
    pair.a.handle_input(Lane::Control, &hello_from(peer(2), PROTOCOL_VERSION), pair.now);
    assert!(matches!(closed(&mut pair.a), LinkEnd::Refused(Refusal::Input { code: ErrorCode::UnexpectedMessage, .. })));
    let mut pair = established(policy.clone(), policy);
    let beat = NetworkMessage::Heartbeat { peer_id: peer(2).to_string(), timestamp: pair.now.wall };
    pair.a.handle_input(Lane::Bulk, &bytes(beat), pair.now);
    match closed(&mut pair.a) {
        LinkEnd::Refused(refusal) => assert_eq!(refusal.message(), "heartbeat frame on the bulk stream"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn peer_exchange_asks_on_admission_and_every_30_s_and_answers_at_most_every_10_s() {
    let policy = AccessPolicy::with_secret(secret(1));
    let asking = |config: LinkConfig| LinkConfig { ask_for_peers: true, ..config };
    let mut pair = Pair::with(asking, policy.clone(), policy);
    // Hello, then the admission heartbeat; A's ask goes once B's
    // heartbeat arrived.
    deliver(&mut pair.a, &mut pair.b, pair.now);
    deliver(&mut pair.b, &mut pair.a, pair.now);
    let ask = NetworkMessage::PeerExchange { peers: Vec::new(), request: true };
    assert_eq!(messages(&mut pair.a).last(), Some(&ask));
    events(&mut pair.a);
    // Requests: the first is answered, one 9 s later is not, one 10 s
    // after the answer is.
    let request = bytes(ask.clone());
    pair.a.handle_input(Lane::Control, &request, pair.now);
    assert_eq!(events(&mut pair.a), [LinkEvent::PeerExchangeRequested]);
    let others = (3..14).map(|seed| ExchangedPeer { peer_id: peer(seed).to_string(), addresses: vec!["quic://10.0.0.1:1".to_owned(); 9] });
    let mut offered: Vec<ExchangedPeer> = vec![ExchangedPeer { peer_id: peer(2).to_string(), addresses: Vec::new() }];
    offered.extend(others);
    pair.a.answer_peer_exchange(offered);
    match messages(&mut pair.a).as_slice() {
        [NetworkMessage::PeerExchange { peers, request: false }] => {
            assert_eq!(peers.len(), EXCHANGE_ANSWER_PEERS);
            assert!(peers.iter().all(|p| p.peer_id != peer(2).to_string() && p.addresses.len() == MAX_EXCHANGED_ADDRESSES));
        }
        other => panic!("{other:?}"),
    }
    pair.now = pair.now.after(Duration::from_secs(9));
    pair.a.handle_input(Lane::Control, &request, pair.now);
    assert!(events(&mut pair.a).is_empty());
    pair.now = pair.now.after(Duration::from_secs(1));
    pair.a.handle_input(Lane::Control, &request, pair.now);
    assert_eq!(events(&mut pair.a), [LinkEvent::PeerExchangeRequested]);
    // What a peer tells is learned; an empty answer is nothing to learn.
    let told = vec![ExchangedPeer { peer_id: peer(5).to_string(), addresses: vec!["quic://10.0.0.5:1".to_owned()] }];
    pair.a.handle_input(Lane::Control, &bytes(NetworkMessage::PeerExchange { peers: told.clone(), request: false }), pair.now);
    pair.a.handle_input(Lane::Control, &bytes(NetworkMessage::PeerExchange { peers: Vec::new(), request: false }), pair.now);
    assert_eq!(events(&mut pair.a), [LinkEvent::PeersLearned(told)]);
    // Asks repeat at the first heartbeat 30 s after the last.
    transmits(&mut pair.a);
    let mut asks = 0;
    for _ in 0..12 {
        pair.advance(HEARTBEAT);
        asks += messages(&mut pair.a).iter().filter(|m| **m == ask).count();
    }
    assert_eq!(asks, 2, "60 s of heartbeats after the first ask");
}

#[test]
fn a_link_that_does_not_look_for_peers_never_asks() {
    let policy = AccessPolicy::with_secret(secret(1));
    let mut pair = Pair::new(policy.clone(), policy);
    pair.exchange();
    for _ in 0..12 {
        pair.advance(HEARTBEAT);
        assert!(messages(&mut pair.a).iter().all(|m| matches!(m, NetworkMessage::Heartbeat { .. })));
    }
}

#[test]
fn a_peer_over_its_frame_rate_is_refused_with_rate_limited() {
    let policy = AccessPolicy::with_secret(secret(1));
    let limited = |config: LinkConfig| LinkConfig {
        limits: ReceiveLimits { frames: RateLimit { messages_per_second: 10, burst: 20 }, ..ReceiveLimits::default() },
        ..config
    };
    let mut pair = Pair::with(limited, policy.clone(), policy);
    pair.exchange();
    events(&mut pair.a);
    transmits(&mut pair.a);
    let ack = bytes(sync_ack(peer(2)));
    let burst: Vec<u8> = ack.iter().copied().cycle().take(ack.len() * 21).collect();
    // One read with 21 frames: the 21st is over the burst, and nothing of
    // the read after the refusal is delivered.
    pair.a.handle_input(Lane::Control, &burst, pair.now);
    let got = events(&mut pair.a);
    assert_eq!(got.iter().filter(|e| matches!(e, LinkEvent::Sync(_))).count(), 20);
    match got.last() {
        Some(LinkEvent::Closed(end @ LinkEnd::Refused(Refusal::Input { code: ErrorCode::RateLimited, .. }))) => {
            assert_eq!(end.close_code(), 4);
            assert_eq!(end.to_string(), "refused the peer (rate_limited): more than 10 frames/s (burst 20)");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(refusal_sent(&mut pair.a).0, ErrorCode::RateLimited);

    // Within the rate, the bucket refills with time.
    let mut pair = Pair::with(limited, AccessPolicy::with_secret(secret(1)), AccessPolicy::with_secret(secret(1)));
    pair.exchange();
    events(&mut pair.a);
    for _ in 0..100 {
        pair.now = pair.now.after(Duration::from_millis(100));
        pair.a.handle_input(Lane::Control, &ack, pair.now);
    }
    assert!(pair.a.is_established());
}

#[test]
fn goodbye_and_error_frames_end_the_link_with_their_reason_and_code() {
    let policy = AccessPolicy::with_secret(secret(1));
    let mut pair = established(policy.clone(), policy.clone());
    pair.b.close("node shutting down");
    assert_eq!(closed(&mut pair.b), LinkEnd::Local("node shutting down".to_owned()));
    deliver(&mut pair.b, &mut pair.a, pair.now);
    let end = closed(&mut pair.a);
    assert_eq!(end.to_string(), "peer said goodbye: node shutting down");
    assert_eq!(end.close_code(), CLOSE_NORMAL);
    // Closing twice queues nothing more.
    pair.b.close("again");
    assert!(transmits(&mut pair.b).is_empty() && events(&mut pair.b).is_empty());

    let mut pair = established(policy.clone(), policy);
    let error = NetworkMessage::Error { code: ErrorCode::TooManyConnections, message: "full".to_owned() };
    pair.a.handle_input(Lane::Control, &bytes(error), pair.now);
    let end = closed(&mut pair.a);
    assert_eq!(end, LinkEnd::PeerRefused { code: ErrorCode::TooManyConnections, message: "full".to_owned() });
    assert_eq!(end.close_code(), 5);
    assert_eq!(end.to_string(), "refused by the peer (too_many_connections): full");
    assert!(transmits(&mut pair.a).is_empty(), "an error frame is not answered");
}

#[test]
fn lanes_that_end_inside_a_frame_are_bad_frames_and_bulk_lanes_restart() {
    let policy = AccessPolicy::with_secret(secret(1));
    let mut pair = established(policy.clone(), policy.clone());
    let data = bytes(sync_ack(peer(2)));
    // A bulk stream abandoned mid-frame is dropped; the next starts fresh.
    pair.a.handle_input(Lane::Bulk, &data[..4], pair.now);
    pair.a.handle_reset(Lane::Bulk, "reset by the peer");
    pair.a.handle_input(Lane::Bulk, &data, pair.now);
    pair.a.handle_finish(Lane::Bulk);
    pair.a.handle_input(Lane::Bulk, &data, pair.now);
    assert_eq!(events(&mut pair.a).len(), 2);
    // A bulk stream that finishes mid-frame is a bad frame.
    pair.a.handle_input(Lane::Bulk, &data[..4], pair.now);
    pair.a.handle_finish(Lane::Bulk);
    assert!(matches!(closed(&mut pair.a), LinkEnd::Refused(Refusal::Input { code: ErrorCode::BadFrame, .. })));
    // The control lane's clean end is the end of the link.
    let mut pair = established(policy.clone(), policy);
    pair.a.handle_finish(Lane::Control);
    assert_eq!(closed(&mut pair.a), LinkEnd::Lost("the peer closed its control stream".to_owned()));
    let now = start();
    let mut a = Link::new(config(peer(1), peer(2), AccessPolicy::with_secret(secret(1)), now), now);
    a.handle_lost("connection reset");
    assert!(matches!(closed(&mut a).into_error("b", "addr"), NetworkError::ConnectionLost { reason, .. } if reason == "connection reset"));
}

#[test]
fn outgoing_chooses_the_lane_and_refuses_the_links_own_frames() {
    let data: NetworkMessage =
        SyncMessage::DataSync { from_peer: peer(1).to_string(), operations: Vec::new(), version_vector: Default::default() }.into();
    assert_eq!(outgoing(&data).unwrap().lane, Lane::Bulk);
    let encoded = NetworkMessage::EncodedSync(data.to_frame().payload);
    assert_eq!(outgoing(&encoded).unwrap().lane, Lane::Bulk);
    assert_eq!(outgoing(&sync_ack(peer(1))).unwrap().lane, Lane::Control);
    for own in [NetworkMessage::Goodbye { reason: "x".into() }, NetworkMessage::Error { code: ErrorCode::BadFrame, message: "x".into() }] {
        assert!(matches!(outgoing(&own), Err(NetworkError::NotSendable { .. })));
    }
    let huge = NetworkMessage::EncodedSync(Bytes::from(vec![0u8; MAX_PAYLOAD_BYTES + 1]));
    assert!(matches!(outgoing(&huge), Err(NetworkError::Codec { .. })));
}

#[test]
fn silence_that_lets_a_new_connection_replace_a_link_is_one_and_a_half_heartbeats_and_a_second() {
    assert_eq!(silent_after(Duration::from_secs(5)), Duration::from_millis(8_500));
}

#[test]
fn a_hello_and_heartbeat_read_together_leave_the_admission_heartbeat_queued_behind_established() {
    // Under load a peer's hello and its heartbeat arrive in one read: the
    // link is established at once, and its own admission heartbeat is still
    // to be written. A driver must write it before it lets sync messages
    // out, or the peer (still waiting for it) refuses them.
    // B admits A; B's hello and heartbeat reach A in one read.
    let mut pair = Pair::new(AccessPolicy::with_secret(secret(1)), AccessPolicy::with_secret(secret(1)));
    let hello_a = transmits(&mut pair.a);
    for transmit in hello_a {
        pair.b.handle_input(transmit.lane, &transmit.frame.to_bytes().unwrap(), pair.now);
    }
    let mut read = Vec::new();
    for transmit in transmits(&mut pair.b) {
        read.extend(transmit.frame.to_bytes().unwrap());
    }
    pair.a.handle_input(Lane::Control, &read, pair.now);
    let got = events(&mut pair.a);
    assert!(matches!(got[..], [LinkEvent::PeerAdmitted { .. }, LinkEvent::Established]), "{got:?}");
    assert!(matches!(messages(&mut pair.a)[..], [NetworkMessage::Heartbeat { .. }]));
}

#[test]
fn signals_pass_once_established_and_are_refused_before_or_oversized() {
    let policy = || AccessPolicy::with_secret(secret(1));
    let mut pair = established(policy(), policy());
    let signal = NetworkMessage::Signal { peer: "12D3KooWX".into(), data: Bytes::from_static(b"{\"type\":\"offer\"}") };
    pair.a.handle_input(Lane::Control, &bytes(signal), pair.now);
    assert_eq!(
        events(&mut pair.a),
        vec![LinkEvent::Signal { peer: "12D3KooWX".into(), data: Bytes::from_static(b"{\"type\":\"offer\"}") }]
    );
    assert!(pair.a.is_established());

    // Over 64 KiB of data: refused as a bad frame.
    let big = NetworkMessage::Signal { peer: "p".into(), data: Bytes::from(vec![0u8; crate::message::MAX_SIGNAL_BYTES + 1]) };
    pair.a.handle_input(Lane::Control, &bytes(big), pair.now);
    assert!(matches!(closed(&mut pair.a), LinkEnd::Refused(Refusal::Input { code: ErrorCode::BadFrame, .. })));

    // Before the handshake: not a hello, refused.
    let mut fresh = Pair::new(policy(), policy());
    fresh.a.handle_input(Lane::Control, &bytes(NetworkMessage::Signal { peer: "p".into(), data: Bytes::new() }), fresh.now);
    assert!(matches!(closed(&mut fresh.a), LinkEnd::Refused(Refusal::Input { code: ErrorCode::UnexpectedMessage, .. })));
}
