//! A node's [`Identity`] (one Ed25519 key pair) and its [`PeerId`], the
//! name that identifies the node on every transport.
//!
//! The peer id is libp2p's textual form of the public key, so the same node
//! has the same id under QUIC, libp2p and WebRTC: the protobuf encoding of
//! `PublicKey { Type: Ed25519, Data: key }` (36 bytes), wrapped in an
//! identity multihash (code 0x00, length 36) and written in base58btc. Every
//! Ed25519 peer id therefore starts with `12D3KooW`.

use crate::error::{random_bytes, SecurityError};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;
use zeroize::Zeroizing;

/// The bytes every Ed25519 peer id starts with: multihash code 0x00
/// (identity) and length 36, then the protobuf field tags of
/// `PublicKey { Type (field 1, varint) = 1 (Ed25519), Data (field 2, bytes) length 32 }`.
const PEER_ID_PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];

/// Length of a peer id in bytes (the multihash).
pub const PEER_ID_BYTES: usize = PEER_ID_PREFIX.len() + 32;

/// A base58 peer id of 38 bytes is 51 or 52 characters; anything much longer
/// is refused before decoding, since base58 decoding is quadratic.
const MAX_PEER_ID_TEXT: usize = 64;

/// Format version of [`Identity::to_bytes`].
const IDENTITY_FORMAT_V1: u8 = 1;

/// Length of [`Identity::to_bytes`]: version, secret seed, public key,
/// 4-byte checksum.
pub const IDENTITY_BYTES: usize = 1 + 32 + 32 + 4;

/// A node's Ed25519 key pair. The secret half is wiped from memory when the
/// identity is dropped; its `Debug` output shows only the peer id.
#[derive(Clone)]
pub struct Identity {
    signing: SigningKey,
}

impl Identity {
    /// A new random identity, from the platform's randomness source.
    pub fn generate() -> Result<Self, SecurityError> {
        let seed = Zeroizing::new(random_bytes::<32>()?);
        Ok(Self::from_seed(*seed))
    }

    /// The identity whose Ed25519 secret key is `seed` (RFC 8032's 32-byte
    /// private key). Deterministic: tests and simulators build identities
    /// from fixed seeds.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self { signing: SigningKey::from_bytes(&seed) }
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        let key = self.signing.verifying_key();
        PeerId { bytes: key.to_bytes() }
    }

    /// The Ed25519 public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// Signs `message` (Ed25519, deterministic: the same message gives the
    /// same signature).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// The secret key in a small versioned format, for the node to keep in
    /// its data directory (with owner-only permissions: writing it is the
    /// caller's job, this crate does no file I/O):
    ///
    /// | bytes | content |
    /// |---|---|
    /// | 1 | format version, 1 |
    /// | 32 | Ed25519 secret seed |
    /// | 32 | Ed25519 public key |
    /// | 4 | first 4 bytes of SHA-256 of everything before |
    ///
    /// The public key and checksum let [`Identity::from_bytes`] tell a
    /// corrupted file from a different key, instead of silently becoming
    /// another node.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(IDENTITY_BYTES));
        out.push(IDENTITY_FORMAT_V1);
        out.extend_from_slice(self.signing.as_bytes());
        out.extend_from_slice(self.signing.verifying_key().as_bytes());
        let sum = Sha256::digest(&out[..]);
        out.extend_from_slice(&sum[..4]);
        out
    }

    /// Reads [`Identity::to_bytes`]' format back.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecurityError> {
        if bytes.len() != IDENTITY_BYTES {
            return Err(SecurityError::CorruptIdentity("wrong length (expected 69 bytes)"));
        }
        if bytes[0] != IDENTITY_FORMAT_V1 {
            return Err(SecurityError::CorruptIdentity("unknown format version"));
        }
        let (body, sum) = bytes.split_at(IDENTITY_BYTES - 4);
        if Sha256::digest(body)[..4] != *sum {
            return Err(SecurityError::CorruptIdentity("checksum mismatch"));
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&body[1..33]);
        let identity = Self::from_seed(*seed);
        if identity.signing.verifying_key().as_bytes()[..] != body[33..65] {
            return Err(SecurityError::CorruptIdentity("public key does not match the secret key"));
        }
        Ok(identity)
    }

    /// The Ed25519 secret seed, for the TLS module to hand the same key to
    /// rustls and rcgen (as PKCS#8). Wiped when the returned value drops.
    #[cfg(feature = "tls")]
    pub(crate) fn secret_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// The X25519 secret that belongs to this identity: the Ed25519 secret
    /// scalar itself (what libsodium's `crypto_sign_ed25519_sk_to_curve25519`
    /// computes). Its public half is [`PeerId::x25519_public`], so a peer's
    /// id alone is enough to agree on a key with it.
    pub(crate) fn x25519_secret(&self) -> x25519_dalek::StaticSecret {
        x25519_dalek::StaticSecret::from(self.signing.to_scalar_bytes())
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("peer_id", &self.peer_id()).finish_non_exhaustive()
    }
}

/// A node's name: its Ed25519 public key, displayed (and parsed) in
/// libp2p's `12D3KooW...` form. Only valid keys are peer ids: parsing
/// refuses bytes that are not a point on the curve or are of small order.
///
/// It holds only the 32 key bytes (checked when the id is made): ids sit in
/// every event, map and queue slot of the sync layer, and a decoded
/// `VerifyingKey` would make each ~7x larger. The key is decoded where it is
/// used (a verifier that checks many signatures of one peer keeps it).
#[derive(Clone, Copy)]
pub struct PeerId {
    bytes: [u8; 32],
}

impl PeerId {
    /// The peer id of a 32-byte Ed25519 public key.
    pub fn from_public_key(bytes: &[u8; 32]) -> Result<Self, SecurityError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| SecurityError::InvalidPeerId("not an Ed25519 public key"))?;
        if key.is_weak() {
            return Err(SecurityError::InvalidPeerId("small-order Ed25519 key"));
        }
        Ok(Self { bytes: *bytes })
    }

    /// The peer id in its binary form (the 38-byte multihash that the text
    /// form is the base58 of).
    pub fn to_bytes(&self) -> [u8; PEER_ID_BYTES] {
        let mut out = [0u8; PEER_ID_BYTES];
        out[..PEER_ID_PREFIX.len()].copy_from_slice(&PEER_ID_PREFIX);
        out[PEER_ID_PREFIX.len()..].copy_from_slice(&self.bytes);
        out
    }

    /// Reads the binary form back. Only Ed25519 keys in an identity multihash
    /// are accepted (what every PluresDB and libp2p Ed25519 node uses).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecurityError> {
        if bytes.len() != PEER_ID_BYTES {
            return Err(SecurityError::InvalidPeerId("not 38 bytes (an Ed25519 identity multihash)"));
        }
        let (prefix, key) = bytes.split_at(PEER_ID_PREFIX.len());
        if prefix[..2] != PEER_ID_PREFIX[..2] {
            return Err(SecurityError::InvalidPeerId("not an identity multihash of 36 bytes"));
        }
        if prefix[2..] != PEER_ID_PREFIX[2..] {
            return Err(SecurityError::InvalidPeerId("not an Ed25519 public key"));
        }
        let mut raw = [0u8; 32];
        raw.copy_from_slice(key);
        Self::from_public_key(&raw)
    }

    /// The Ed25519 public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        match VerifyingKey::from_bytes(&self.bytes) {
            Ok(key) => key,
            // Every constructor decoded these bytes once already.
            Err(_) => unreachable!("a PeerId holds a checked Ed25519 key"),
        }
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn public_key_bytes(&self) -> [u8; 32] {
        self.bytes
    }

    /// Checks `signature` over `message` by this peer. Strict verification
    /// (RFC 8032's checks plus refusing non-canonical encodings), so a
    /// signature that one node accepts every node accepts. Any signature that
    /// is not 64 bytes is simply invalid.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match Signature::from_slice(signature) {
            Ok(signature) => self.verifying_key().verify_strict(message, &signature).is_ok(),
            Err(_) => false,
        }
    }

    /// The X25519 public key that belongs to this peer: the Ed25519 point in
    /// Montgomery form (libsodium's `crypto_sign_ed25519_pk_to_curve25519`).
    pub(crate) fn x25519_public(&self) -> x25519_dalek::PublicKey {
        x25519_dalek::PublicKey::from(self.verifying_key().to_montgomery().to_bytes())
    }
}

impl PartialEq for PeerId {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for PeerId {}

impl std::hash::Hash for PeerId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}

impl PartialOrd for PeerId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PeerId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.bytes.cmp(&other.bytes)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.to_bytes()).into_string())
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

impl FromStr for PeerId {
    type Err = SecurityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() > MAX_PEER_ID_TEXT {
            return Err(SecurityError::InvalidPeerId("too long"));
        }
        let bytes = bs58::decode(text).into_vec().map_err(|_| SecurityError::InvalidPeerId("not base58btc"))?;
        Self::from_bytes(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex32(text: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    /// rust-libp2p's `keypair_from_protobuf_encoding` test: an Ed25519 key
    /// pair from an IPFS config file and the peer id libp2p derives from it.
    #[test]
    fn peer_id_matches_libp2p_byte_for_byte() {
        let seed = hex32("beaf74a42ece7428b13ad6ec5588f40b7e5d7ec405fd019d92e16fac3e37e5d2");
        let public = hex32("41275f22797a73b53836ec5726584a711065070f5dd2d8f675f04855fea670f0");
        let identity = Identity::from_seed(seed);
        assert_eq!(identity.verifying_key().to_bytes(), public);
        let text = "12D3KooWEChVMMMzV8acJ53mJHrw1pQ27UAGkCxWXLJutbeUMvVu";
        assert_eq!(identity.peer_id().to_string(), text);
        let parsed: PeerId = text.parse().unwrap();
        assert_eq!(parsed, identity.peer_id());
        assert_eq!(parsed.public_key_bytes(), public);
    }

    #[test]
    fn identity_bytes_round_trip_and_corruption_is_typed() {
        let identity = Identity::from_seed([7; 32]);
        let bytes = identity.to_bytes();
        assert_eq!(bytes.len(), IDENTITY_BYTES);
        assert_eq!(Identity::from_bytes(&bytes).unwrap().peer_id(), identity.peer_id());
        for i in 0..bytes.len() {
            let mut corrupt = bytes.to_vec();
            corrupt[i] ^= 0x01;
            assert!(matches!(Identity::from_bytes(&corrupt), Err(SecurityError::CorruptIdentity(_))), "flip at {i}");
        }
        assert!(matches!(Identity::from_bytes(&bytes[..68]), Err(SecurityError::CorruptIdentity(_))));
    }

    #[test]
    fn signatures_verify_by_peer_id_only_for_the_signed_message() {
        let identity = Identity::from_seed([9; 32]);
        let signature = identity.sign(b"hello");
        let peer = identity.peer_id();
        assert!(peer.verify(b"hello", &signature));
        assert!(!peer.verify(b"hellO", &signature));
        assert!(!peer.verify(b"hello", &signature[..63]));
        assert!(!Identity::from_seed([10; 32]).peer_id().verify(b"hello", &signature));
    }

    #[test]
    fn the_x25519_key_pair_derived_from_an_identity_is_consistent() {
        let identity = Identity::from_seed([3; 32]);
        let public = x25519_dalek::PublicKey::from(&identity.x25519_secret());
        assert_eq!(public, identity.peer_id().x25519_public());
    }

    #[test]
    fn peer_ids_of_other_key_types_or_small_order_keys_are_refused() {
        let mut bytes = Identity::from_seed([1; 32]).peer_id().to_bytes();
        bytes[3] = 0x02; // secp256k1
        assert!(PeerId::from_bytes(&bytes).is_err());
        // The identity element (0, 1) is a valid point of order 1.
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1;
        assert!(matches!(PeerId::from_public_key(&identity_point), Err(SecurityError::InvalidPeerId(_))));
        assert!("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N".parse::<PeerId>().is_err());
        assert!("".parse::<PeerId>().is_err());
        assert!("0OIl".parse::<PeerId>().is_err());
    }

    #[test]
    fn a_peer_id_is_its_32_key_bytes_and_nothing_more() {
        // Ids fill the sync layer's events, maps and queue slots: a decoded
        // key beside the bytes cost ~9 KiB per idle peer.
        assert_eq!(std::mem::size_of::<PeerId>(), 32);
        let identity = Identity::from_seed([12; 32]);
        let peer = identity.peer_id();
        assert_eq!(peer.verifying_key(), identity.verifying_key());
    }
}
