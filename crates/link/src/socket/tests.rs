//! Two socket links (a page and a node) without sockets: messages moved by
//! hand, a made-up clock; and an attacker writing frames by hand.

use super::*;
use chrono::{DateTime, Utc};
use pluresdb_security::NetworkSecret;

fn start() -> Now {
    Now { instant: Instant::now(), wall: DateTime::<Utc>::from_timestamp_millis(1_700_000_000_000).unwrap() }
}

fn identity(seed: u8) -> Identity {
    Identity::from_seed([seed; 32])
}

fn secret(seed: u8) -> AccessPolicy {
    AccessPolicy::with_secret(NetworkSecret::from_bytes([seed; 32]))
}

fn link(seed: u8, side: Side, policy: AccessPolicy, now: Now) -> SocketLink {
    SocketLink::new(SocketLinkConfig::new(identity(seed), side, [seed.wrapping_mul(7); 32], policy, now))
}

/// Moves every queued message across until neither side has any.
fn run(a: &mut SocketLink, b: &mut SocketLink, now: Now) {
    loop {
        let mut moved = false;
        while let Some(frame) = a.poll_transmit() {
            b.handle_message(&frame.to_bytes().unwrap(), now);
            moved = true;
        }
        while let Some(frame) = b.poll_transmit() {
            a.handle_message(&frame.to_bytes().unwrap(), now);
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

fn events(link: &mut SocketLink) -> Vec<LinkEvent> {
    std::iter::from_fn(|| link.poll_event()).collect()
}

fn closed(events: &[LinkEvent]) -> Option<&LinkEnd> {
    events.iter().find_map(|e| match e {
        LinkEvent::Closed(end) => Some(end),
        _ => None,
    })
}

#[test]
fn a_page_and_a_node_with_the_secret_prove_their_ids_and_link_up() {
    let now = start();
    let mut page = link(1, Side::Client, secret(9), now);
    let mut node = link(2, Side::Server, secret(9), now);
    run(&mut page, &mut node, now);
    assert!(page.is_established() && node.is_established());
    assert_eq!(page.remote_peer(), Some(identity(2).peer_id()));
    assert_eq!(node.remote_peer(), Some(identity(1).peer_id()));
    assert!(events(&mut node).iter().any(|e| matches!(e, LinkEvent::PeerAdmitted { proof_ok: true, .. })));
    assert!(events(&mut page).contains(&LinkEvent::Established));

    page.send_sync(Bytes::from_static(b"\x81\x00")).unwrap();
    run(&mut page, &mut node, now);
    assert!(events(&mut node).contains(&LinkEvent::Sync(Bytes::from_static(b"\x81\x00"))));
}

#[test]
fn a_page_without_the_network_secret_is_refused_access_denied() {
    let now = start();
    let mut page = link(1, Side::Client, secret(8), now);
    let mut node = link(2, Side::Server, secret(9), now);
    run(&mut page, &mut node, now);
    assert!(!node.is_established() && node.is_closed());
    assert!(matches!(closed(&events(&mut node)), Some(LinkEnd::Refused(Refusal::Denied(_)))));
    // The page refuses the node as well (its proof is for another secret),
    // or hears the node's refusal first: either way it is closed.
    let page_end = events(&mut page);
    assert!(
        matches!(
            closed(&page_end),
            Some(LinkEnd::PeerRefused { code: ErrorCode::AccessDenied, .. } | LinkEnd::Refused(Refusal::Denied(_)))
        ),
        "{page_end:?}"
    );
    assert!(page.is_closed() && !page.is_established());
    // Nothing is sendable on a refused link.
    assert!(page.send_sync(Bytes::from_static(b"x")).is_err());
}

/// Builds the frames an attacker with key `signer` sends while naming
/// `claimed`: a nonce hello, then (after seeing the node's nonce) a
/// signature hello.
fn attacker_frames(signer: &Identity, claimed: &PeerId, nonce: [u8; 32], node_nonce: [u8; 32], node: &PeerId) -> (Vec<u8>, Vec<u8>) {
    let hello = plain_hello(claimed);
    let mut first = encode_hello_with(&hello, 1);
    cbor::text(&mut first, HELLO_NONCE_KEY);
    cbor::text(&mut first, &message::hex(&nonce));
    let bound = binding(&nonce, &node_nonce);
    let signature = signer.sign(&identity_transcript(&bound, claimed, node));
    let mut second = encode_hello_with(&hello, 2);
    cbor::text(&mut second, HELLO_NONCE_KEY);
    cbor::text(&mut second, &message::hex(&nonce));
    cbor::text(&mut second, HELLO_SIGNATURE_KEY);
    cbor::text(&mut second, &message::hex(&signature));
    let frame = |payload: Vec<u8>| Frame::new(FrameKind::Hello, payload).to_bytes().unwrap();
    (frame(first), frame(second))
}

fn node_nonce(node: &mut SocketLink) -> [u8; 32] {
    let frame = node.poll_transmit().expect("the node's nonce hello");
    hello_hex_field::<32>(&frame.payload, HELLO_NONCE_KEY).unwrap()
}

#[test]
fn a_page_that_names_another_peer_id_is_refused() {
    let now = start();
    let mut node = link(2, Side::Server, secret(9), now);
    let theirs = node_nonce(&mut node);
    let victim = identity(3).peer_id();
    let (first, second) = attacker_frames(&identity(4), &victim, [5; 32], theirs, &identity(2).peer_id());
    node.handle_message(&first, now);
    node.handle_message(&second, now);
    let end = events(&mut node);
    assert!(matches!(closed(&end), Some(LinkEnd::Refused(Refusal::Input { code: ErrorCode::AccessDenied, .. }))), "{end:?}");
    assert!(node.remote_peer().is_none());
}

#[test]
fn a_recorded_identity_signature_does_not_verify_on_another_socket() {
    let now = start();
    let page = identity(1);
    // A genuine signature, recorded from a socket where the node's nonce was [1; 32].
    let (first, recorded) = attacker_frames(&page, &page.peer_id(), [5; 32], [1; 32], &identity(2).peer_id());
    let mut node = link(2, Side::Server, secret(9), now);
    let _ = node_nonce(&mut node);
    node.handle_message(&first, now);
    node.handle_message(&recorded, now);
    assert!(matches!(closed(&events(&mut node)), Some(LinkEnd::Refused(Refusal::Input { code: ErrorCode::AccessDenied, .. }))));
}

#[test]
fn handshake_messages_that_are_not_one_hello_frame_are_refused() {
    let now = start();
    let hello_bytes = {
        let mut page = link(1, Side::Client, secret(9), now);
        page.poll_transmit().unwrap().to_bytes().unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
        ("bytes that are no frame", b"GET / HTTP/1.1\r\n".to_vec(), ErrorCode::UnsupportedVersion),
        ("part of a frame", hello_bytes[..hello_bytes.len() - 1].to_vec(), ErrorCode::BadFrame),
        ("two frames", [hello_bytes.clone(), hello_bytes.clone()].concat(), ErrorCode::BadFrame),
        ("a heartbeat first", NetworkMessage::Goodbye { reason: "x".into() }.to_frame().to_bytes().unwrap(), ErrorCode::UnexpectedMessage),
        ("a hello without a nonce", plain_hello_frame(), ErrorCode::UnexpectedMessage),
    ];
    for (what, bytes, code) in cases {
        let mut node = link(2, Side::Server, secret(9), now);
        node.handle_message(&bytes, now);
        let end = events(&mut node);
        match closed(&end) {
            Some(LinkEnd::Refused(refusal)) => assert_eq!(refusal.code(), code, "{what}: {refusal:?}"),
            other => panic!("{what}: {other:?}"),
        }
        // The refusal's error frame is the last thing sent.
        let last = std::iter::from_fn(|| node.poll_transmit()).last().unwrap();
        assert_eq!(last.kind, FrameKind::Error, "{what}");
        // Later input is ignored.
        node.handle_message(&hello_bytes, now);
        assert!(node.poll_event().is_none());
    }
}

fn plain_hello_frame() -> Vec<u8> {
    NetworkMessage::Hello(plain_hello(&identity(1).peer_id())).to_frame().to_bytes().unwrap()
}

#[test]
fn a_silent_page_times_out_and_a_page_expecting_another_node_refuses_it() {
    let now = start();
    let mut node = link(2, Side::Server, secret(9), now);
    let deadline = node.poll_timeout().unwrap();
    node.handle_timeout(Now { instant: deadline, ..now });
    assert!(matches!(closed(&events(&mut node)), Some(LinkEnd::HandshakeTimeout(_))));

    let mut config = SocketLinkConfig::new(identity(1), Side::Client, [1; 32], secret(9), now);
    config.expected_peer = Some(identity(3).peer_id());
    let mut page = SocketLink::new(config);
    let mut node = link(2, Side::Server, secret(9), now);
    run(&mut page, &mut node, now);
    assert!(matches!(closed(&events(&mut page)), Some(LinkEnd::Refused(Refusal::Input { code: ErrorCode::UnexpectedMessage, .. }))));
    assert!(!node.is_established());
}

#[test]
fn over_webrtc_the_dtls_fingerprints_are_bound_and_a_swapped_one_fails_both_proofs() {
    let now = start();
    let page_fp = "sha-256 AA:BB:CC";
    let node_fp = "sha-256 11:22:33";
    let with = |seed: u8, side: Side, channel: Vec<u8>| {
        let mut config = SocketLinkConfig::new(identity(seed), side, [seed.wrapping_mul(7); 32], secret(9), now);
        config.channel_binding = Some(channel);
        SocketLink::new(config)
    };
    // Both ends saw the same fingerprints (case and spacing aside): linked.
    let mut page = with(1, Side::Client, webrtc_channel_binding(page_fp, node_fp));
    let mut node = with(2, Side::Server, webrtc_channel_binding("SHA-256  aa:bb:cc", node_fp));
    run(&mut page, &mut node, now);
    assert!(page.is_established() && node.is_established());

    // A relay swapped the node's fingerprint in what the page got (it sits
    // in the middle of DTLS with its own certificate): both refuse.
    let mut page = with(1, Side::Client, webrtc_channel_binding(page_fp, "sha-256 66:66:66"));
    let mut node = with(2, Side::Server, webrtc_channel_binding(page_fp, node_fp));
    run(&mut page, &mut node, now);
    assert!(!page.is_established() && !node.is_established());
    let (page_events, node_events) = (events(&mut page), events(&mut node));
    assert!(matches!(closed(&node_events), Some(LinkEnd::Refused(_)) | Some(LinkEnd::PeerRefused { .. })), "{node_events:?}");
    assert!(closed(&page_events).is_some(), "{page_events:?}");

    // A binding on one side only is a mismatch too.
    let mut page = with(1, Side::Client, webrtc_channel_binding(page_fp, node_fp));
    let mut node = link(2, Side::Server, secret(9), now);
    run(&mut page, &mut node, now);
    assert!(!page.is_established() && !node.is_established());
}
