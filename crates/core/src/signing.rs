//! Authenticated operations: every origin's log is a hash chain, and its
//! author signs points of the chain.
//!
//! Each operation carries `prev`, the [`OpDigest`] of the previous
//! operation from the same origin (zero for the first), and some carry a
//! signature by the origin's key over their own digest. A signature on an
//! operation authenticates it and, through the chain, every operation of
//! that origin before it. The author signs the last operation of every
//! commit, at least every [`SIGN_EVERY`]-th one, and every one that brings
//! the encoded operations since the last signature to
//! [`SIGN_EVERY_BYTES`], so signing costs one
//! Ed25519 signature per commit instead of one per operation (which would
//! cap local writes at the ~70k signatures/s a core makes), and a receiver
//! checks one signature per batch plus a hash per operation. Any prefix of a
//! log that ends at a signed operation is provable to a third peer.
//!
//! The keys live above the core: [`OpSigner`] and [`OpVerifier`] are
//! implemented by the security crate (Ed25519, with the origin's key taken
//! from its peer id).

use crate::operation::OperationWithMetadata;
use std::fmt;

/// The author signs at least every this many operations of its log (and the
/// last of every commit), so that a batch of this many operations always
/// ends at a signed one when the sender cuts it there.
pub const SIGN_EVERY: u64 = 256;

/// The author also signs an operation when the encoded operations since its
/// last signature (this one included) reach this many bytes. A receiver
/// applies only operations a signature covers, so a sender must fit a run
/// up to a signed operation into one message: with this, the unsigned
/// operations before any signed one take less than 1 MiB, whatever the
/// size of the values a commit writes, and a batch cut at the sync byte
/// budget (4 MiB) always holds a signed operation to end at.
pub const SIGN_EVERY_BYTES: usize = 1024 * 1024;

/// The BLAKE3 digest of an operation's canonical encoding without its
/// signature: what the chain links and what signatures sign.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpDigest(pub [u8; 32]);

/// An Ed25519 signature over an [`OpDigest`] by the operation's origin.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct OpSignature(pub [u8; 64]);

impl fmt::Debug for OpDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpDigest({})", hex(&self.0))
    }
}

impl fmt::Debug for OpSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpSignature({}...)", hex(&self.0[..8]))
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Fixed-size byte strings in serde: bytes in binary formats, hex in
/// human-readable ones.
macro_rules! fixed_bytes_serde {
    ($type:ident, $len:expr) => {
        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                if serializer.is_human_readable() {
                    serializer.serialize_str(&hex(&self.0))
                } else {
                    serializer.serialize_bytes(&self.0)
                }
            }
        }

        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl<'de> serde::de::Visitor<'de> for Visitor {
                    type Value = $type;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "{} bytes, or {} hex digits", $len, 2 * $len)
                    }
                    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<$type, E> {
                        v.try_into().map($type).map_err(|_| E::invalid_length(v.len(), &self))
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$type, E> {
                        from_hex::<$len>(v).map($type).ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
                    }
                }
                if deserializer.is_human_readable() {
                    deserializer.deserialize_str(Visitor)
                } else {
                    deserializer.deserialize_bytes(Visitor)
                }
            }
        }
    };
}

fixed_bytes_serde!(OpDigest, 32);
fixed_bytes_serde!(OpSignature, 64);

impl OperationWithMetadata {
    /// The digest this operation's successor links to and its signature
    /// signs: BLAKE3 of the compact encoding with the signature left out.
    pub fn digest(&self) -> OpDigest {
        let mut bytes = Vec::with_capacity(256);
        self.encode_compact_unsigned(&mut bytes);
        OpDigest(*blake3::hash(&bytes).as_bytes())
    }
}

/// The digest of an operation given its id and its unsigned body (what
/// [`OperationWithMetadata::encode_body`] writes with no signature): the
/// canonical compact form is the same fields behind a 9-item array head and
/// the id, so it is hashed without encoding again.
pub(crate) fn digest_of_body(id: &crate::OpId, body: &[u8]) -> OpDigest {
    let mut hasher = blake3::Hasher::new();
    // The 9-item array head, then the id, as `encode_compact` writes them.
    let mut head = [0u8; 20];
    head[0] = 0x89;
    let mut len = 1 + cbor_head(&mut head[1..], 3 << 5, id.origin.len() as u64);
    hasher.update(&head[..len]);
    hasher.update(id.origin.as_bytes());
    len = cbor_head(&mut head, 0, id.seq);
    hasher.update(&head[..len]);
    // The body starts with its own 1-byte array head (7 items).
    hasher.update(body.get(1..).unwrap_or_default());
    OpDigest(*hasher.finalize().as_bytes())
}

/// The message an operation's digest hashes, given its compact form as
/// [`OperationWithMetadata::encode_compact`] writes it, signed or not
/// (`signed`): the compact form with the signature slot as null. `None`
/// when a signed form does not end with a 64-byte signature.
pub(crate) fn digest_message(compact: &[u8], signed: bool) -> Option<crate::hash_batch::Message<'_>> {
    if !signed {
        return Some(crate::hash_batch::Message { bytes: compact, tail: None });
    }
    let (unsigned, signature) = compact.split_at_checked(compact.len().checked_sub(66)?)?;
    if signature[..2] != [0x58, 0x40] {
        return None;
    }
    Some(crate::hash_batch::Message { bytes: unsigned, tail: Some(crate::cbor::NULL) })
}

impl crate::hash_batch::HashSlot for OpDigest {
    fn slot(&mut self) -> &mut [u8; 32] {
        &mut self.0
    }
}

/// Writes a CBOR head into `out` (at least 9 bytes) and returns its length,
/// as `cbor::head` does into a vector.
fn cbor_head(out: &mut [u8], major: u8, n: u64) -> usize {
    let bytes = n.to_be_bytes();
    let (info, width) = match n {
        0..=23 => (n as u8, 0),
        24..=0xff => (24, 1),
        0x100..=0xffff => (25, 2),
        0x1_0000..=0xffff_ffff => (26, 4),
        _ => (27, 8),
    };
    out[0] = major | info;
    out[1..1 + width].copy_from_slice(&bytes[8 - width..]);
    1 + width
}

/// Signs this replica's operations with its key.
pub trait OpSigner: Send + Sync {
    /// Signs `digest`.
    fn sign(&self, digest: &OpDigest) -> OpSignature;
}

/// Checks operations' signatures against their origins' keys.
pub trait OpVerifier: Send + Sync {
    /// Checks every `(origin, digest, signature)`; on failure returns the
    /// index of an item that does not verify (including an origin that
    /// names no key).
    fn verify(&self, items: &[(&str, OpDigest, OpSignature)]) -> Result<(), usize>;
}

/// A stand-in signature scheme for tests and simulations: a BLAKE3 hash
/// keyed by the origin's name. Anyone who knows a name can "sign" for it,
/// so it authenticates nothing; it exercises chains, signed points and
/// verification at a fraction of Ed25519's cost.
#[cfg(feature = "test-support")]
pub mod stand_in {
    use super::{OpDigest, OpSignature, OpSigner, OpVerifier};

    /// Signs as the origin it is named after.
    pub struct NamedSigner(pub String);

    /// Verifies [`NamedSigner`] signatures.
    pub struct NamedVerifier;

    fn signature(name: &str, digest: &OpDigest) -> OpSignature {
        let mac = blake3::keyed_hash(blake3::hash(name.as_bytes()).as_bytes(), &digest.0);
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(mac.as_bytes());
        OpSignature(sig)
    }

    impl OpSigner for NamedSigner {
        fn sign(&self, digest: &OpDigest) -> OpSignature {
            signature(&self.0, digest)
        }
    }

    impl OpVerifier for NamedVerifier {
        fn verify(&self, items: &[(&str, OpDigest, OpSignature)]) -> Result<(), usize> {
            items.iter().position(|(origin, digest, sig)| signature(origin, digest) != *sig).map_or(Ok(()), Err)
        }
    }
}
