//! Node keys sign and verify operations: the Ed25519 side of the core's
//! [`OpSigner`] and [`OpVerifier`] (see `pluresdb_core::signing`).

use crate::identity::{Identity, PeerId};
use ed25519_dalek::{Signature, VerifyingKey};
use pluresdb_core::{OpDigest, OpSignature, OpSigner, OpVerifier};
use std::cell::RefCell;
use std::collections::HashMap;

impl OpSigner for Identity {
    fn sign(&self, digest: &OpDigest) -> OpSignature {
        OpSignature(Identity::sign(self, &digest.0))
    }
}

/// Verifies operation signatures against the key in each origin's peer id:
/// an operation claiming an origin verifies only if that origin's key
/// signed it.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpSignatureVerifier;

/// How many origins' decoded keys a thread keeps (see [`origin_key`]).
const KEPT_KEYS: usize = 64;

thread_local! {
    /// The keys of the origins this thread verified last: decoding one from
    /// its peer id (base58, then two point decompressions) costs ~10 us,
    /// about a third of the signature check it is for, and a live peer sends
    /// one small batch per write. Emptied when full, so a peer that names
    /// many origins costs what it cost without the cache, and no more memory.
    static KEYS: RefCell<HashMap<Box<str>, VerifyingKey>> = RefCell::new(HashMap::new());
}

/// The Ed25519 key of the peer id `origin`, or `None` when it is none.
fn origin_key(origin: &str) -> Option<VerifyingKey> {
    KEYS.with(|keys| {
        let mut keys = keys.borrow_mut();
        if let Some(key) = keys.get(origin) {
            return Some(*key);
        }
        let key = origin.parse::<PeerId>().ok()?.verifying_key();
        if keys.len() >= KEPT_KEYS {
            keys.clear();
        }
        keys.insert(origin.into(), key);
        Some(key)
    })
}

impl OpVerifier for OpSignatureVerifier {
    fn verify(&self, items: &[(&str, OpDigest, OpSignature)]) -> Result<(), usize> {
        // A batch usually holds many signatures of one or two origins: each
        // origin's key is looked up once.
        let mut keys: HashMap<&str, Option<VerifyingKey>> = HashMap::new();
        for (index, (origin, digest, signature)) in items.iter().enumerate() {
            let key = keys.entry(origin).or_insert_with(|| origin_key(origin));
            let signature = Signature::from_bytes(&signature.0);
            match key {
                Some(key) if key.verify_strict(&digest.0, &signature).is_ok() => {}
                _ => return Err(index),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_under_its_signers_peer_id() {
        let (alice, bob) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
        let digest = OpDigest([5; 32]);
        let signature = OpSigner::sign(&alice, &digest);
        let (a, b) = (alice.peer_id().to_string(), bob.peer_id().to_string());
        assert_eq!(OpSignatureVerifier.verify(&[(&a, digest, signature)]), Ok(()));
        assert_eq!(OpSignatureVerifier.verify(&[(&a, digest, signature), (&b, digest, signature)]), Err(1));
        assert_eq!(OpSignatureVerifier.verify(&[(&a, OpDigest([6; 32]), signature)]), Err(0));
        assert_eq!(OpSignatureVerifier.verify(&[("not-a-peer-id", digest, signature)]), Err(0));
    }

    #[test]
    fn kept_keys_give_the_same_verdicts_and_stay_bounded() {
        let (alice, bob) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
        let (a, b) = (alice.peer_id().to_string(), bob.peer_id().to_string());
        let digest = OpDigest([5; 32]);
        let (by_alice, by_bob) = (OpSigner::sign(&alice, &digest), OpSigner::sign(&bob, &digest));
        // Both keys are kept after the first round; the verdicts stay.
        for _ in 0..2 {
            assert_eq!(OpSignatureVerifier.verify(&[(&a, digest, by_alice)]), Ok(()));
            assert_eq!(OpSignatureVerifier.verify(&[(&b, digest, by_bob)]), Ok(()));
            assert_eq!(OpSignatureVerifier.verify(&[(&a, digest, by_bob)]), Err(0));
            assert_eq!(OpSignatureVerifier.verify(&[(&b, digest, by_alice)]), Err(0));
        }
        // Many origins: the thread keeps at most KEPT_KEYS keys, and alice's
        // still verifies after hers was dropped.
        for seed in 10..(10 + 3 * KEPT_KEYS as u8) {
            let peer = Identity::from_seed([seed; 32]);
            let signature = OpSigner::sign(&peer, &digest);
            assert_eq!(OpSignatureVerifier.verify(&[(&peer.peer_id().to_string(), digest, signature)]), Ok(()));
            assert!(KEYS.with(|keys| keys.borrow().len()) <= KEPT_KEYS);
        }
        assert_eq!(OpSignatureVerifier.verify(&[(&a, digest, by_alice)]), Ok(()));
        assert_eq!(OpSignatureVerifier.verify(&[(&a, digest, by_bob)]), Err(0));
    }
}
