//! Every decoder that reads bytes or text from outside, fed random input:
//! it returns a value or a typed error, and never panics. Plus round trips
//! of random valid values.

use pluresdb_security::{Identity, NetworkEncryption, NetworkSecret, PeerId, SecurityError, Ticket, HEADER_LEN};
use proptest::prelude::*;

fn pair() -> (NetworkEncryption, NetworkEncryption) {
    let mut a = NetworkEncryption::from_identity(Identity::from_seed([1; 32]));
    let mut b = NetworkEncryption::from_identity(Identity::from_seed([2; 32]));
    a.initialize_with_session_seed([3; 32]);
    b.initialize_with_session_seed([4; 32]);
    a.add_peer("b", &b.public_key_bundle().unwrap()).unwrap();
    b.add_peer("a", &a.public_key_bundle().unwrap()).unwrap();
    (a, b)
}

/// Base58-looking text, so the decoders get past the alphabet check.
fn base58_text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[1-9A-HJ-NP-Za-km-z]{{0,{max}}}")).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn peer_id_parsing_never_panics(text in ".{0,80}", b58 in base58_text(60), bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = text.parse::<PeerId>();
        let _ = b58.parse::<PeerId>();
        let _ = PeerId::from_bytes(&bytes);
        let mut prefixed = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
        prefixed.extend(bytes.iter().take(32));
        let _ = PeerId::from_bytes(&prefixed);
    }

    #[test]
    fn peer_ids_round_trip(seed in any::<[u8; 32]>()) {
        let id = Identity::from_seed(seed).peer_id();
        let text = id.to_string();
        prop_assert!(text.starts_with("12D3KooW"));
        prop_assert_eq!(text.parse::<PeerId>().unwrap(), id);
        prop_assert_eq!(PeerId::from_bytes(&id.to_bytes()).unwrap(), id);
    }

    #[test]
    fn identity_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..100), version_one in any::<bool>()) {
        let mut bytes = bytes;
        if version_one && !bytes.is_empty() {
            bytes[0] = 1;
        }
        prop_assert!(matches!(Identity::from_bytes(&bytes), Err(SecurityError::CorruptIdentity(_))));
    }

    #[test]
    fn identity_bytes_round_trip(seed in any::<[u8; 32]>()) {
        let identity = Identity::from_seed(seed);
        prop_assert_eq!(Identity::from_bytes(&identity.to_bytes()).unwrap().peer_id(), identity.peer_id());
    }

    #[test]
    fn key_bundles_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        let (mut a, _) = pair();
        let mut bundle = bytes.clone();
        bundle.resize(65, 0);
        bundle[0] = 1;
        for key in [bytes, bundle] {
            match a.add_peer("x", &key) {
                Ok(()) | Err(SecurityError::BadKey { .. }) => {}
                Err(other) => prop_assert!(false, "unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn ciphertexts_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), header_like in any::<bool>()) {
        let (_, mut b) = pair();
        let mut bytes = bytes;
        if header_like && bytes.len() > HEADER_LEN {
            bytes[0] = 1;
            bytes[1..5].fill(0);
        }
        prop_assert!(b.decrypt("a", &bytes).is_err());
    }

    #[test]
    fn random_messages_round_trip(messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..20)) {
        let (mut a, mut b) = pair();
        let sealed: Vec<_> = messages.iter().map(|m| a.encrypt("b", m).unwrap()).collect();
        // Delivered in reverse: all within the window.
        for (m, c) in messages.iter().zip(&sealed).rev() {
            prop_assert_eq!(&b.decrypt("a", c).unwrap(), m);
        }
    }

    #[test]
    fn ticket_parsing_never_panics(text in ".{0,200}", b58 in base58_text(400)) {
        let _ = text.parse::<Ticket>();
        let _ = format!("pluresdb1{b58}").parse::<Ticket>();
        let _ = text.parse::<NetworkSecret>();
    }

    #[test]
    fn tickets_round_trip(
        seed in any::<[u8; 32]>(),
        secret in any::<[u8; 32]>(),
        addresses in proptest::collection::vec(".{0,40}", 0..5),
    ) {
        let ticket = Ticket { peer_id: Identity::from_seed(seed).peer_id(), addresses, secret: NetworkSecret::from_bytes(secret) };
        prop_assert_eq!(ticket.to_text().unwrap().parse::<Ticket>().unwrap(), ticket);
    }
}

/// Valid checksums around CBOR that is not a ticket: the parser reaches
/// the CBOR stage and must still refuse cleanly (including a byte string
/// that claims 2^64 bytes, and deep nesting).
#[test]
fn checksummed_cbor_that_is_not_a_ticket_is_refused() {
    use sha2::Digest;
    let cases = [
        vec![0x80],
        vec![0x84, 0x01, 0x40, 0x80, 0x40],
        vec![0x9f; 300],
        vec![0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        vec![0xf6],
    ];
    for cbor in cases {
        let mut bytes = cbor.clone();
        bytes.extend_from_slice(&sha2::Sha256::digest(&cbor)[..4]);
        let text = format!("pluresdb1{}", bs58::encode(&bytes).into_string());
        assert!(matches!(text.parse::<Ticket>(), Err(SecurityError::InvalidTicket(_))), "{cbor:x?}");
    }
}
