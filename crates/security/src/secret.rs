//! Network membership: the [`NetworkSecret`] a network's nodes share, the
//! handshake [`prove`]/[`verify`] that a peer holds it without revealing
//! it, and the [`AccessPolicy`] that decides whom a node syncs with.

use crate::error::{random_bytes, SecurityError};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use zeroize::Zeroize;

const PROOF_LABEL: &[u8] = b"pluresdb/network-proof/v1";
const TAG_LABEL: &[u8] = b"pluresdb-network-tag";

/// The 256-bit secret that makes a set of nodes one network. Its text form
/// is 64 lowercase hex digits. `Debug` never shows it; it is wiped from
/// memory on drop.
#[derive(Clone)]
pub struct NetworkSecret([u8; 32]);

impl PartialEq for NetworkSecret {
    /// Compares every byte whatever the first difference, so the time taken
    /// does not tell how much of a guess was right.
    fn eq(&self, other: &Self) -> bool {
        self.0.iter().zip(other.0.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl Eq for NetworkSecret {}

impl Drop for NetworkSecret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl NetworkSecret {
    /// A new random secret, for a fresh network.
    pub fn generate() -> Result<Self, SecurityError> {
        Ok(Self(random_bytes::<32>()?))
    }

    /// The secret with these bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The text form: 64 lowercase hex digits. Deliberately not `Display`,
    /// so that a secret is never formatted into a log line by accident.
    pub fn to_text(&self) -> String {
        hex(&self.0)
    }

    /// A public name for the network, for mDNS announcements: the first 8
    /// bytes of SHA-256(`"pluresdb-network-tag"` || secret), in hex. Nodes of
    /// one network recognise each other by it; it reveals nothing about the
    /// secret beyond equality.
    pub fn network_tag(&self) -> String {
        let digest = Sha256::new().chain_update(TAG_LABEL).chain_update(self.0).finalize();
        hex(&digest[..8])
    }
}

impl fmt::Debug for NetworkSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NetworkSecret(tag {})", self.network_tag())
    }
}

impl FromStr for NetworkSecret {
    type Err = SecurityError;

    /// Parses the 64-hex-digit text form (either case).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.len() != 64 {
            return Err(SecurityError::InvalidSecret("expected 64 hex digits"));
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            let high = hex_digit(pair[0]).ok_or(SecurityError::InvalidSecret("not hex"))?;
            let low = hex_digit(pair[1]).ok_or(SecurityError::InvalidSecret("not hex"))?;
            *byte = high << 4 | low;
        }
        Ok(Self(bytes))
    }
}

/// Proof that we hold `secret`, bound to this handshake: HMAC-SHA256 keyed
/// by the secret over a label and both sides' handshake transcripts
/// (length-prefixed), the prover's own transcript first. Binding both
/// transcripts means a proof cannot be replayed in another handshake; the
/// fixed order means it cannot be reflected back to the peer that sent it.
pub fn prove(secret: &NetworkSecret, our_transcript: &[u8], their_transcript: &[u8]) -> [u8; 32] {
    proof_mac(secret, our_transcript, their_transcript).finalize().into_bytes().into()
}

/// Checks a peer's `proof` (made with [`prove`] on its side, where its
/// transcript is "ours") in constant time. `our_transcript` and
/// `their_transcript` are from the verifier's point of view.
pub fn verify(secret: &NetworkSecret, our_transcript: &[u8], their_transcript: &[u8], proof: &[u8]) -> bool {
    proof_mac(secret, their_transcript, our_transcript).verify_slice(proof).is_ok()
}

fn proof_mac(secret: &NetworkSecret, prover: &[u8], verifier: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(&secret.0) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts a 32-byte key"),
    };
    mac.update(PROOF_LABEL);
    mac.update(&(prover.len() as u64).to_be_bytes());
    mac.update(prover);
    mac.update(&(verifier.len() as u64).to_be_bytes());
    mac.update(verifier);
    mac
}

/// How a node decides whom to sync with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccessMode {
    /// Peers that prove they hold the network secret, plus the allowlist.
    /// The default: a fresh node creates a secret and admits only its
    /// network.
    #[default]
    Secret,
    /// Only the peers on the allowlist.
    Allowlist,
    /// Anyone: the explicit mode for public data.
    Open,
}

impl AccessMode {
    /// The mode's name, as stored and shown: `secret`, `allowlist`, `open`.
    pub fn name(self) -> &'static str {
        match self {
            AccessMode::Secret => "secret",
            AccessMode::Allowlist => "allowlist",
            AccessMode::Open => "open",
        }
    }

    /// The mode named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "secret" => Some(AccessMode::Secret),
            "allowlist" => Some(AccessMode::Allowlist),
            "open" => Some(AccessMode::Open),
            _ => None,
        }
    }
}

/// Why a peer was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccessDenied {
    /// Secret mode, and the peer did not prove it holds the secret.
    #[error("peer {peer} did not prove it holds the network secret")]
    NoValidProof { peer: String },
    /// Allowlist mode, and the peer is not on the list.
    #[error("peer {peer} is not on the allowlist")]
    NotAllowlisted { peer: String },
    /// Secret mode without a secret: only the allowlist can be admitted.
    #[error("peer {peer} refused: secret mode is configured without a network secret")]
    NoSecretConfigured { peer: String },
}

impl AccessDenied {
    /// The refused peer.
    pub fn peer(&self) -> Option<&str> {
        match self {
            AccessDenied::NoValidProof { peer } | AccessDenied::NotAllowlisted { peer } | AccessDenied::NoSecretConfigured { peer } => {
                Some(peer)
            }
        }
    }
}

/// A node's admission rule: its [`AccessMode`], the network secret, and the
/// peer ids always admitted (in secret and allowlist mode).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessPolicy {
    /// How peers are admitted. Default: [`AccessMode::Secret`].
    pub mode: AccessMode,
    /// The network secret peers must prove in secret mode. Default: none.
    pub secret: Option<NetworkSecret>,
    /// Peer ids (text form) admitted without a proof. Default: empty.
    pub allowlist: BTreeSet<String>,
}

impl AccessPolicy {
    /// A secret-mode policy for `secret`.
    pub fn with_secret(secret: NetworkSecret) -> Self {
        Self { mode: AccessMode::Secret, secret: Some(secret), allowlist: BTreeSet::new() }
    }

    /// Whether `peer_id` may sync with us, given whether its handshake proof
    /// (see [`verify`]) checked out.
    pub fn admits(&self, peer_id: &str, proof_ok: bool) -> Result<(), AccessDenied> {
        let peer = || peer_id.to_owned();
        match self.mode {
            AccessMode::Open => Ok(()),
            _ if self.allowlist.contains(peer_id) => Ok(()),
            AccessMode::Allowlist => Err(AccessDenied::NotAllowlisted { peer: peer() }),
            AccessMode::Secret if self.secret.is_none() => Err(AccessDenied::NoSecretConfigured { peer: peer() }),
            AccessMode::Secret if proof_ok => Ok(()),
            AccessMode::Secret => Err(AccessDenied::NoValidProof { peer: peer() }),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
    out
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_text_round_trips_and_debug_hides_it() {
        let secret = NetworkSecret::from_bytes([0xab; 32]);
        let text = secret.to_text();
        assert_eq!(text, "ab".repeat(32));
        assert_eq!(text.parse::<NetworkSecret>().unwrap(), secret);
        assert_eq!(text.to_uppercase().parse::<NetworkSecret>().unwrap(), secret);
        assert!(!format!("{secret:?}").contains("abab"));
        assert!(matches!("ab".parse::<NetworkSecret>(), Err(SecurityError::InvalidSecret(_))));
        assert!(matches!("zz".repeat(32).parse::<NetworkSecret>(), Err(SecurityError::InvalidSecret(_))));
        // A multi-byte character must not split a hex pair.
        assert!("é".repeat(32).parse::<NetworkSecret>().is_err());
    }

    #[test]
    fn network_tag_is_short_stable_and_not_the_secret() {
        let secret = NetworkSecret::from_bytes([1; 32]);
        let tag = secret.network_tag();
        assert_eq!(tag.len(), 16);
        assert_eq!(tag, NetworkSecret::from_bytes([1; 32]).network_tag());
        assert_ne!(tag, NetworkSecret::from_bytes([2; 32]).network_tag());
        assert!(!secret.to_text().contains(&tag));
    }

    #[test]
    fn a_peer_with_the_secret_proves_it_and_one_without_fails() {
        let secret = NetworkSecret::from_bytes([5; 32]);
        let (a, b) = (b"hello from a, nonce 1".as_slice(), b"hello from b, nonce 2".as_slice());
        let proof_by_a = prove(&secret, a, b);
        assert!(verify(&secret, b, a, &proof_by_a));
        // Without the secret (or with another network's), no proof checks out.
        let outsider = NetworkSecret::from_bytes([6; 32]);
        assert!(!verify(&secret, b, a, &prove(&outsider, a, b)));
        // A proof is bound to this handshake and to its direction.
        assert!(!verify(&secret, b, b"hello from a, nonce 9", &proof_by_a));
        assert!(!verify(&secret, a, b, &proof_by_a), "reflected back to its prover");
        assert!(!verify(&secret, b, a, &proof_by_a[..31]));
        // Length prefixes: moving bytes between the transcripts changes the proof.
        assert_ne!(prove(&secret, b"ab", b"c"), prove(&secret, b"a", b"bc"));
    }

    #[test]
    fn policies_admit_by_mode() {
        let secret = NetworkSecret::from_bytes([5; 32]);
        let mut policy = AccessPolicy::with_secret(secret);
        assert_eq!(policy.admits("p1", true), Ok(()));
        assert_eq!(policy.admits("p1", false), Err(AccessDenied::NoValidProof { peer: "p1".into() }));
        policy.allowlist.insert("friend".into());
        assert_eq!(policy.admits("friend", false), Ok(()), "allowlisted peers need no proof");

        policy.mode = AccessMode::Allowlist;
        assert_eq!(policy.admits("friend", false), Ok(()));
        assert_eq!(policy.admits("p1", true), Err(AccessDenied::NotAllowlisted { peer: "p1".into() }));

        policy.mode = AccessMode::Open;
        assert_eq!(policy.admits("anyone", false), Ok(()));

        let no_secret = AccessPolicy::default();
        assert_eq!(no_secret.admits("p1", true), Err(AccessDenied::NoSecretConfigured { peer: "p1".into() }));
    }
}
