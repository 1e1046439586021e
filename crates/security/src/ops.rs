//! Node keys sign and verify operations: the Ed25519 side of the core's
//! [`OpSigner`] and [`OpVerifier`] (see `pluresdb_core::signing`).

use crate::identity::{Identity, PeerId};
use ed25519_dalek::{Signature, VerifyingKey};
use pluresdb_core::{OpDigest, OpSignature, OpSigner, OpVerifier};
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

impl OpVerifier for OpSignatureVerifier {
    fn verify(&self, items: &[(&str, OpDigest, OpSignature)]) -> Result<(), usize> {
        // A batch usually holds many signatures of one or two origins: each
        // origin's key is decoded once.
        let mut keys: HashMap<&str, Option<VerifyingKey>> = HashMap::new();
        for (index, (origin, digest, signature)) in items.iter().enumerate() {
            let key = keys.entry(origin).or_insert_with(|| origin.parse::<PeerId>().ok().map(|peer| peer.verifying_key()));
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
}
