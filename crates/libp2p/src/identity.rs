//! The node's libp2p key pair and peer id, derived from its
//! [`pluresdb_security::Identity`], so a node has one peer id on every
//! engine.
//!
//! The security crate already writes peer ids in libp2p's form (the
//! protobuf-encoded Ed25519 public key in an identity multihash, base58),
//! so the libp2p key pair built from the same Ed25519 seed names the same
//! peer: `12D3KooW...` in both.

use libp2p::identity::Keypair;
use pluresdb_net::NetworkError;
use pluresdb_security::Identity;
use zeroize::Zeroizing;

/// The libp2p key pair of `identity` (the same Ed25519 key).
pub fn keypair(identity: &Identity) -> Result<Keypair, NetworkError> {
    // `Identity::to_bytes` is: format version (1 byte), the 32-byte Ed25519
    // seed, the public key, a checksum. The copy is wiped on drop.
    let encoded = identity.to_bytes();
    let mut seed = Zeroizing::new([0u8; 32]);
    let bytes = encoded.get(1..33).ok_or_else(|| NetworkError::Config("identity encoding too short".to_owned()))?;
    seed.copy_from_slice(bytes);
    Keypair::ed25519_from_bytes(*seed).map_err(|err| NetworkError::Config(format!("identity is not an Ed25519 key: {err}")))
}

/// The libp2p peer id of a PluresDB peer id.
pub fn to_libp2p(peer: &pluresdb_security::PeerId) -> Result<libp2p::PeerId, NetworkError> {
    libp2p::PeerId::from_bytes(&peer.to_bytes()).map_err(|err| NetworkError::Config(format!("peer id {peer}: {err}")))
}

/// The PluresDB peer id of a libp2p peer id, if it is an Ed25519 one (the
/// only kind a PluresDB node has; js-libp2p peers may have others).
pub fn from_libp2p(peer: &libp2p::PeerId) -> Option<pluresdb_security::PeerId> {
    pluresdb_security::PeerId::from_bytes(&peer.to_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_libp2p_peer_id_is_the_nodes_peer_id() {
        for seed in [[0u8; 32], [7u8; 32], [0xff; 32]] {
            let identity = Identity::from_seed(seed);
            let ours = identity.peer_id();
            let theirs = keypair(&identity).unwrap().public().to_peer_id();
            assert_eq!(theirs.to_string(), ours.to_string(), "same text form");
            assert_eq!(theirs.to_bytes(), ours.to_bytes(), "same binary form");
            assert_eq!(to_libp2p(&ours).unwrap(), theirs);
            assert_eq!(from_libp2p(&theirs).map(|p| p.to_string()), Some(ours.to_string()));
        }
        // A peer id of another key type is not a PluresDB peer id.
        let rsa_like = libp2p::PeerId::random();
        assert!(from_libp2p(&rsa_like).is_none());
    }
}
