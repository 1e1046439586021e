//! The binary encoding of stored records and operations: CBOR (RFC 8949),
//! which browsers and other languages decode with standard libraries.

use crate::error::Error;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Encodes `value` as CBOR.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    encode_into(value, &mut out);
    out
}

/// Appends the CBOR encoding of `value` to `out`.
pub fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    // Serializing our own types into a Vec cannot fail: they contain only
    // strings, numbers, maps and sequences.
    if let Err(err) = ciborium::into_writer(value, out) {
        unreachable!("CBOR encoding into memory failed: {err}");
    }
}

/// Decodes CBOR bytes into a `T`; `what` names the thing for the error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, Error> {
    ciborium::from_reader(bytes).map_err(|err| Error::Decode { what, reason: err.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Hlc, OpId, OperationType, OperationWithMetadata};
    use proptest::prelude::*;

    #[test]
    fn operations_round_trip() {
        let mut op = OperationWithMetadata::new(
            OperationType::UpdateNode,
            "user:1".into(),
            serde_json::json!({"a": [1, 2.5, "x", null, {"#": "user:2"}]}),
            "peer",
        );
        op.id.seq = 7;
        op.timestamp = Hlc::new(1_700_000_000_000, 3);
        op.supersedes.insert("a".into(), vec![OpId::new("other", 2)]);
        let back: OperationWithMetadata = decode(&encode(&op), "operation").unwrap();
        assert_eq!(back, op);
    }

    proptest! {
        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<OperationWithMetadata>(&bytes, "operation");
            let _ = decode::<crate::NodeRecord>(&bytes, "node record");
            let _ = crate::NodeRecord::decode(&bytes);
        }
    }
}
