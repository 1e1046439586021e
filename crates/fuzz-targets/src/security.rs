//! Join tickets (`Ticket::from_str`), peer ids, identity files, key
//! bundles, ciphertexts and network secrets: the security crate's decoders
//! of text and bytes from outside.

use crate::alloc::within_bound;
use pluresdb_security::{Identity, NetworkEncryption, NetworkSecret, PeerId, Ticket};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// The text form of a ticket whose CBOR is `cbor`, with a valid checksum.
fn ticket_text_around(cbor: &[u8]) -> String {
    let mut bytes = cbor.to_vec();
    bytes.extend_from_slice(&Sha256::digest(cbor)[..4]);
    format!("{}{}", pluresdb_security::TICKET_PREFIX, bs58::encode(&bytes).into_string())
}

/// A ticket: the first byte says whether the rest is the text someone
/// pasted (0) or the CBOR inside a ticket with a valid checksum (1), so the
/// fuzzer reaches the CBOR decoder without forging checksums. A ticket that
/// parses prints as exactly the text it was parsed from (tickets have one
/// canonical text); the same text read as a peer id or a secret round-trips
/// too when it parses as one.
pub fn check_ticket(input: &[u8]) {
    let [mode, rest @ ..] = input else { return };
    let text = if mode & 1 == 0 {
        match std::str::from_utf8(rest) {
            Ok(text) => text.to_owned(),
            Err(_) => return,
        }
    } else {
        ticket_text_around(rest)
    };
    if let Ok(ticket) = within_bound("Ticket::from_str", input, || text.parse::<Ticket>()) {
        assert_eq!(ticket.to_text().ok().as_deref(), Some(text.trim()), "a parsed ticket prints differently");
    }
    if let Ok(peer) = within_bound("PeerId::from_str", input, || text.parse::<PeerId>()) {
        assert_eq!(peer.to_string(), text, "a parsed peer id prints differently");
    }
    if let Ok(secret) = within_bound("NetworkSecret::from_str", input, || text.parse::<NetworkSecret>()) {
        assert_eq!(secret.to_text(), text.trim().to_ascii_lowercase(), "a parsed secret prints differently");
    }
}

/// Seeds for [`check_ticket`]: tickets as text and as CBOR, a peer id and a
/// secret.
pub fn ticket_seeds() -> Vec<Vec<u8>> {
    let peer_id = Identity::from_seed([4; 32]).peer_id();
    let ticket = |addresses: Vec<String>| Ticket { peer_id, addresses, secret: NetworkSecret::from_bytes([8; 32]) };
    let full = ticket(vec!["quic://192.0.2.1:34569".into(), "/ip4/192.0.2.1/udp/34570/quic-v1".into()]);
    let texts = [full.to_text(), ticket(vec![]).to_text()].map(|t| t.expect("sample tickets are within the limits"));
    let mut seeds: Vec<Vec<u8>> = texts.iter().map(|t| [&[0][..], t.as_bytes()].concat()).collect();
    for text in &texts {
        let encoded = bs58::decode(&text[pluresdb_security::TICKET_PREFIX.len()..]).into_vec().expect("our tickets are base58");
        seeds.push([&[1][..], &encoded[..encoded.len() - 4]].concat());
    }
    seeds.push([&[0][..], peer_id.to_string().as_bytes()].concat());
    seeds.push([&[0][..], NetworkSecret::from_bytes([0xab; 32]).to_text().as_bytes()].concat());
    seeds
}

/// The seeds of the two sides of an encrypted session, `a` and `b`.
const SEED_A: [u8; 32] = [1; 32];
const SEED_B: [u8; 32] = [2; 32];

/// One side of a session, initialized (its key bundle is the same every
/// time: the seeds are fixed).
fn side(identity: [u8; 32], session: [u8; 32]) -> NetworkEncryption {
    let mut side = NetworkEncryption::from_identity(Identity::from_seed(identity));
    side.initialize_with_session_seed(session);
    side
}

/// `b`, with `a` registered: what receives `a`'s ciphertexts. Built fresh
/// for every input (a session is stateful: a refusal found with one input
/// must reproduce from that input alone).
fn receiver() -> NetworkEncryption {
    let mut b = side(SEED_B, [4; 32]);
    b.add_peer("a", bundle(&BUNDLE_A, SEED_A, [3; 32])).expect("a valid bundle");
    b
}

/// `a`, with `b` registered: what seals for `b`.
fn sender() -> NetworkEncryption {
    let mut a = side(SEED_A, [3; 32]);
    a.add_peer("b", bundle(&BUNDLE_B, SEED_B, [4; 32])).expect("a valid bundle");
    a
}

/// The key bundles of `a` and `b`, built once (they are the same every
/// time, and building a side twice per input made this target the slowest
/// by a factor of 30).
static BUNDLE_A: OnceLock<Vec<u8>> = OnceLock::new();
static BUNDLE_B: OnceLock<Vec<u8>> = OnceLock::new();

/// The key bundle of the side with these seeds, kept in `cell`.
fn bundle(cell: &'static OnceLock<Vec<u8>>, identity: [u8; 32], session: [u8; 32]) -> &'static [u8] {
    cell.get_or_init(|| side(identity, session).public_key_bundle().expect("initialized"))
}

/// Binary security formats; the first byte picks which one the rest is:
/// 0 a peer id, 1 an identity file, 2 an identity file body (the checksum
/// is added, so the key checks are reached), 3 a peer's key bundle, 4 a
/// ciphertext from `a` to `b`, which opens only if it is exactly what `a`
/// sealed. (Round trips of sealed messages are the security crate's
/// property tests.)
pub fn check_keys(input: &[u8]) {
    let [mode, rest @ ..] = input else { return };
    match mode % 5 {
        0 => {
            if let Ok(peer) = within_bound("PeerId::from_bytes", input, || PeerId::from_bytes(rest)) {
                assert_eq!(&peer.to_bytes()[..], rest, "a parsed peer id encodes differently");
            }
        }
        1 | 2 => {
            let mut bytes = rest.to_vec();
            if mode % 5 == 2 {
                let sum = Sha256::digest(&bytes);
                bytes.extend_from_slice(&sum[..4]);
            }
            if let Ok(identity) = within_bound("Identity::from_bytes", input, || Identity::from_bytes(&bytes)) {
                assert_eq!(&identity.to_bytes()[..], &bytes[..], "a parsed identity encodes differently");
            }
        }
        3 => {
            let mut local = side(SEED_A, [3; 32]);
            let _ = within_bound("NetworkEncryption::add_peer", input, || local.add_peer("x", rest));
        }
        _ => {
            let mut b = receiver();
            if let Ok(plain) = within_bound("NetworkEncryption::decrypt", input, || b.decrypt("a", rest)) {
                // Sealing is deterministic for a fresh session, so what `a`
                // sealed is these bytes again.
                assert_eq!(sender().encrypt("b", &plain).ok().as_deref(), Some(rest), "a forged ciphertext opened");
            }
        }
    }
}

/// Seeds for [`check_keys`]: a peer id, an identity file (whole and without
/// its checksum), a key bundle and a ciphertext.
pub fn key_seeds() -> Vec<Vec<u8>> {
    let identity = Identity::from_seed([5; 32]);
    let file = identity.to_bytes();
    vec![
        [&[0][..], &identity.peer_id().to_bytes()].concat(),
        [&[1][..], &file[..]].concat(),
        [&[2][..], &file[..file.len() - 4]].concat(),
        [&[3][..], bundle(&BUNDLE_B, SEED_B, [4; 32])].concat(),
        [&[4][..], &sender().encrypt("b", b"hello").expect("a paired peer")].concat(),
    ]
}
