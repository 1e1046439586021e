//! `NetworkEncryption` between two in-process nodes: round trips, and each
//! way a ciphertext can be refused, with its typed error.

use pluresdb_security::{Identity, NetworkEncryption, SecurityError, HEADER_LEN, PUBLIC_KEY_BUNDLE_LEN, REPLAY_WINDOW, TAG_LEN};

const A: &str = "alice";
const B: &str = "bob";

fn node(identity_seed: u8, session_seed: u8) -> NetworkEncryption {
    let mut node = NetworkEncryption::from_identity(Identity::from_seed([identity_seed; 32]));
    node.initialize_with_session_seed([session_seed; 32]);
    node
}

/// Alice and Bob, each knowing the other under the names `A` and `B`.
fn pair() -> (NetworkEncryption, NetworkEncryption) {
    let (mut a, mut b) = (node(1, 101), node(2, 102));
    connect(&mut a, &mut b);
    (a, b)
}

fn connect(a: &mut NetworkEncryption, b: &mut NetworkEncryption) {
    a.add_peer(B, &b.public_key_bundle().unwrap()).unwrap();
    b.add_peer(A, &a.public_key_bundle().unwrap()).unwrap();
}

#[test]
fn messages_round_trip_both_ways_with_fixed_overhead() {
    let (mut a, mut b) = pair();
    for len in [0, 1, 15, 16, 17, 1024, 65_536] {
        let message: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let sealed = a.encrypt(B, &message).unwrap();
        assert_eq!(sealed.len(), message.len() + HEADER_LEN + TAG_LEN);
        assert_eq!(b.decrypt(A, &sealed).unwrap(), message);
        let reply = b.encrypt(A, &message).unwrap();
        assert_eq!(a.decrypt(B, &reply).unwrap(), message);
    }
}

#[test]
fn the_same_message_twice_gives_different_ciphertexts() {
    let (mut a, _) = pair();
    let one = a.encrypt(B, b"same").unwrap();
    let two = a.encrypt(B, b"same").unwrap();
    assert_ne!(one, two);
    assert_ne!(one[HEADER_LEN..], two[HEADER_LEN..]);
}

#[test]
fn every_flipped_bit_is_refused_as_tampering() {
    let (mut a, mut b) = pair();
    let sealed = a.encrypt(B, b"transfer 10 to carol").unwrap();
    for i in 0..sealed.len() {
        for bit in [0x01, 0x80] {
            let mut tampered = sealed.clone();
            tampered[i] ^= bit;
            let result = b.decrypt(A, &tampered);
            let ok = match result {
                Err(SecurityError::AuthenticationFailed { .. }) => true,
                // The version byte, or a flipped epoch far ahead, is refused before the key is tried.
                Err(SecurityError::UnsupportedVersion { .. }) => i == 0,
                Err(SecurityError::EpochOutOfRange { .. }) => (1..5).contains(&i),
                _ => false,
            };
            assert!(ok, "byte {i} bit {bit:#x}: {result:?}");
        }
    }
    // Refused input did not move the window: the original still decrypts.
    assert_eq!(b.decrypt(A, &sealed).unwrap(), b"transfer 10 to carol");
}

#[test]
fn a_message_for_someone_else_or_reflected_back_fails_authentication() {
    let (mut a, mut b) = pair();
    let mut carol = node(3, 103);
    carol.add_peer(A, &a.public_key_bundle().unwrap()).unwrap();
    a.add_peer("carol", &carol.public_key_bundle().unwrap()).unwrap();

    let for_carol = a.encrypt("carol", b"for carol only").unwrap();
    assert!(matches!(b.decrypt(A, &for_carol), Err(SecurityError::AuthenticationFailed { .. })));
    // Alice's own message to Bob, fed back to Alice as if from Bob.
    let for_bob = a.encrypt(B, b"hi bob").unwrap();
    assert!(matches!(a.decrypt(B, &for_bob), Err(SecurityError::AuthenticationFailed { .. })));
    assert_eq!(carol.decrypt(A, &for_carol).unwrap(), b"for carol only");
}

#[test]
fn a_wrong_key_for_the_peer_fails_authentication() {
    let (mut a, _) = pair();
    // Mallory registers as "alice" with its own key.
    let mut mallory = node(9, 109);
    let mut b = node(2, 102);
    b.add_peer(A, &mallory.public_key_bundle().unwrap()).unwrap();
    mallory.add_peer(B, &b.public_key_bundle().unwrap()).unwrap();
    let sealed = a.encrypt(B, b"hello").unwrap();
    assert!(matches!(b.decrypt(A, &sealed), Err(SecurityError::AuthenticationFailed { .. })));
}

#[test]
fn a_replayed_message_is_refused() {
    let (mut a, mut b) = pair();
    let sealed = a.encrypt(B, b"once").unwrap();
    b.decrypt(A, &sealed).unwrap();
    assert!(matches!(b.decrypt(A, &sealed), Err(SecurityError::Replayed { peer, counter: 0 }) if peer == A));
}

#[test]
fn reordering_within_the_window_is_accepted_and_older_is_too_old() {
    let (mut a, mut b) = pair();
    let sealed: Vec<Vec<u8>> = (0..REPLAY_WINDOW + 10).map(|i| a.encrypt(B, &i.to_be_bytes()).unwrap()).collect();
    // Deliver 1000 first, then some of the earlier ones backwards.
    b.decrypt(A, &sealed[1000]).unwrap();
    for i in (0..1000).rev().step_by(7) {
        assert_eq!(b.decrypt(A, &sealed[i]).unwrap(), (i as u64).to_be_bytes());
    }
    // The newest moves past the window's reach of message 3 (and 0 was delivered).
    b.decrypt(A, &sealed[REPLAY_WINDOW as usize + 5]).unwrap();
    assert!(matches!(b.decrypt(A, &sealed[3]), Err(SecurityError::TooOld { counter: 3, newest, .. }) if newest == REPLAY_WINDOW + 5));
    assert!(matches!(b.decrypt(A, &sealed[992]), Err(SecurityError::Replayed { counter: 992, .. })));
    assert_eq!(b.decrypt(A, &sealed[993]).unwrap(), 993u64.to_be_bytes());
}

#[test]
fn truncated_input_is_refused() {
    let (mut a, mut b) = pair();
    let sealed = a.encrypt(B, b"x").unwrap();
    for len in 0..HEADER_LEN + TAG_LEN {
        assert!(matches!(b.decrypt(A, &sealed[..len]), Err(SecurityError::Truncated { len: l, min: 29, .. }) if l == len));
    }
    // One byte short of the real ciphertext still has room for a header and
    // tag, so it fails authentication instead.
    assert!(matches!(b.decrypt(A, &sealed[..sealed.len() - 1]), Err(SecurityError::AuthenticationFailed { .. })));
}

#[test]
fn keys_rotate_and_the_receiver_follows_the_epoch_with_stragglers_from_the_previous_one() {
    let (a, mut b) = pair();
    let mut a = a.with_rekey_interval(4);
    let sealed: Vec<Vec<u8>> = (0..20u32).map(|i| a.encrypt(B, &i.to_be_bytes()).unwrap()).collect();
    let epoch = |c: &[u8]| u32::from_be_bytes([c[1], c[2], c[3], c[4]]);
    assert_eq!(sealed.iter().map(|c| epoch(c)).collect::<Vec<_>>(), (0..20).map(|i| i / 4).collect::<Vec<_>>());
    // The same counter under a later epoch would be a different nonce and key.
    assert_ne!(sealed[3][HEADER_LEN..], sealed[4][HEADER_LEN..]);

    b.decrypt(A, &sealed[0]).unwrap();
    b.decrypt(A, &sealed[9]).unwrap(); // jumps from epoch 0 to 2
    b.decrypt(A, &sealed[7]).unwrap(); // straggler from epoch 1
    assert!(matches!(b.decrypt(A, &sealed[1]), Err(SecurityError::TooOld { .. })), "epoch 0 keys are gone");
    for c in &sealed[10..] {
        b.decrypt(A, c).unwrap();
    }
}

#[test]
fn a_restarted_peer_gets_a_new_session_and_old_ciphertexts_do_not_replay_into_it() {
    let (mut a, mut b) = pair();
    let old = a.encrypt(B, b"before restart").unwrap();
    let old_undelivered = a.encrypt(B, b"also before restart").unwrap();
    b.decrypt(A, &old).unwrap();

    // Alice restarts: same identity, new session key, counters from zero.
    let mut a2 = node(1, 201);
    connect(&mut a2, &mut b);
    let new = a2.encrypt(B, b"after restart").unwrap();
    assert_eq!(new[5..13], 0u64.to_be_bytes(), "counter restarted");
    assert_eq!(b.decrypt(A, &new).unwrap(), b"after restart");
    assert!(matches!(b.decrypt(A, &old_undelivered), Err(SecurityError::AuthenticationFailed { .. })));
    assert!(b.decrypt(A, &old).is_err());
}

#[test]
fn re_adding_a_key_never_reuses_a_counter() {
    let (mut a, mut b) = pair();
    let bundle = b.public_key_bundle().unwrap();
    let first = a.encrypt(B, b"1").unwrap();
    // The same bundle again keeps the session.
    a.add_peer(B, &bundle).unwrap();
    let second = a.encrypt(B, b"2").unwrap();
    assert_eq!(second[5..13], 1u64.to_be_bytes());
    // Another bundle and then the first one again: the counter carries on.
    let other = node(2, 77);
    a.add_peer(B, &other.public_key_bundle().unwrap()).unwrap();
    a.encrypt(B, b"3").unwrap();
    a.add_peer(B, &bundle).unwrap();
    let fourth = a.encrypt(B, b"4").unwrap();
    assert_eq!(fourth[5..13], 3u64.to_be_bytes());
    b.decrypt(A, &first).unwrap();
    b.decrypt(A, &fourth).unwrap();
}

#[test]
fn bad_keys_are_refused_with_typed_errors() {
    let (mut a, b) = pair();
    let bundle = b.public_key_bundle().unwrap();
    assert_eq!(bundle.len(), PUBLIC_KEY_BUNDLE_LEN);
    let bad = |result: Result<(), SecurityError>| matches!(result, Err(SecurityError::BadKey { .. }));
    assert!(bad(a.add_peer("x", &bundle[..64])));
    assert!(bad(a.add_peer("x", &[])));
    let mut wrong_version = bundle.clone();
    wrong_version[0] = 2;
    assert!(bad(a.add_peer("x", &wrong_version)));
    // A small-order X25519 session key (zero) and a small-order Ed25519 key.
    let mut zero_session = bundle.clone();
    zero_session[33..].fill(0);
    assert!(bad(a.add_peer("x", &zero_session)));
    let mut weak_identity = bundle.clone();
    weak_identity[1..33].fill(0);
    weak_identity[1] = 1;
    assert!(bad(a.add_peer("x", &weak_identity)));
    // One key under two names.
    assert!(bad(a.add_peer("bob again", &bundle)));
    // A name that is a peer id must match the key.
    let carol = node(3, 103).peer_id().unwrap().to_string();
    assert!(bad(a.add_peer(&carol, &bundle)));
    let bob_id = b.peer_id().unwrap().to_string();
    let mut dave = node(4, 104);
    assert!(dave.add_peer(&bob_id, &bundle).is_ok());
}

#[test]
fn unknown_peers_and_uninitialized_instances_are_typed_errors() {
    let (mut a, _) = pair();
    assert!(matches!(a.encrypt("nobody", b"x"), Err(SecurityError::UnknownPeer(p)) if p == "nobody"));
    assert!(matches!(a.decrypt("nobody", &[0; 40]), Err(SecurityError::UnknownPeer(_))));
    assert!(matches!(a.verify("nobody", b"x", &[0; 64]), Err(SecurityError::UnknownPeer(_))));

    let mut fresh = NetworkEncryption::new(true);
    assert!(matches!(fresh.public_key_bundle(), Err(SecurityError::NotInitialized)));
    assert!(matches!(fresh.encrypt(B, b"x"), Err(SecurityError::NotInitialized)));
    assert!(matches!(fresh.decrypt(B, b"x"), Err(SecurityError::NotInitialized)));
    assert!(matches!(fresh.sign(b"x"), Err(SecurityError::NotInitialized)));
    assert!(matches!(fresh.add_peer(B, &[0; 65]), Err(SecurityError::NotInitialized)));
}

#[test]
fn disabled_encryption_passes_bytes_through_but_still_signs() {
    let mut plain = NetworkEncryption::new(false);
    plain.initialize_with_session_seed([5; 32]);
    assert_eq!(plain.encrypt("anyone", b"clear").unwrap(), b"clear");
    assert_eq!(plain.decrypt("anyone", b"clear").unwrap(), b"clear");
    let signature = plain.sign(b"clear").unwrap();
    let id = plain.peer_id().unwrap().to_string();
    let (a, _) = pair();
    assert!(a.verify(&id, b"clear", &signature).unwrap(), "a peer id names its key");
}

#[test]
fn signatures_verify_only_for_the_signer_and_the_message() {
    let (a, b) = pair();
    let signature = a.sign(b"op 1").unwrap();
    assert_eq!(signature.len(), 64);
    assert!(b.verify(A, b"op 1", &signature).unwrap());
    assert!(!b.verify(A, b"op 2", &signature).unwrap());
    assert!(!a.verify(B, b"op 1", &signature).unwrap());
    assert!(!b.verify(A, b"op 1", &signature[..10]).unwrap());
}

#[test]
fn the_seed_api_is_async_and_completes_at_once() {
    let (mut a, mut b) = pair();
    let run = async {
        let key = a.get_our_public_key().await?;
        assert_eq!(key.len(), PUBLIC_KEY_BUNDLE_LEN);
        let sealed = a.encrypt_message(B, b"hi").await?;
        let opened = b.decrypt_message(A, &sealed).await?;
        let signature = a.sign_message(&opened).await?;
        b.verify_message(A, b"hi", &signature).await
    };
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    assert!(runtime.block_on(run).unwrap());
}
