//! Op-log segments: a run of consecutive operations of one origin stored as
//! one value under the key `(origin, first sequence number)`.
//!
//! A batch of 1,000 operations is then one insert instead of 1,000, which is
//! what lets batched writes run near raw redb speed; a single operation can
//! still be decoded without decoding its neighbours.
//!
//! Layout: `count` (u32 LE), `count` end offsets (u32 LE, relative to the
//! start of the body), then the body: each operation's CBOR encoding without
//! its id ([`OperationWithMetadata::encode_body`]); the id is the key's
//! origin and the first sequence number plus the position.

use pluresdb_core::{Error, OpId, OperationWithMetadata};
use std::sync::Arc;

/// The most operations one segment holds.
pub const MAX_OPS: usize = 1_024;
/// A segment is closed once its body reaches this many bytes.
pub const MAX_BYTES: usize = 1 << 20;

/// Splits one origin's consecutive operations, given as encoded bodies
/// starting at sequence number `first_seq`, into segments, each with the
/// sequence number of its first operation.
pub fn encode(first_seq: u64, bodies: &[&[u8]]) -> Vec<(u64, Vec<u8>)> {
    runs(bodies)
        .map(|run| {
            let mut bytes = Vec::new();
            write(&bodies[run.clone()], &mut bytes);
            (first_seq + run.start as u64, bytes)
        })
        .collect()
}

/// The index ranges of `bodies` that make one segment each.
pub fn runs<'a>(bodies: &'a [&'a [u8]]) -> impl Iterator<Item = std::ops::Range<usize>> + 'a {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= bodies.len() {
            return None;
        }
        let mut end = start;
        let mut size = 0;
        while end < bodies.len() && end - start < MAX_OPS && size < MAX_BYTES {
            size += bodies[end].len();
            end += 1;
        }
        let run = start..end;
        start = end;
        Some(run)
    })
}

/// Appends the segment of the operations `run` to `out`.
pub fn write(run: &[&[u8]], out: &mut Vec<u8>) {
    let size: usize = run.iter().map(|body| body.len()).sum();
    out.reserve(4 + 4 * run.len() + size);
    out.extend_from_slice(&(run.len() as u32).to_le_bytes());
    let mut offset = 0u32;
    for body in run {
        offset += body.len() as u32;
        out.extend_from_slice(&offset.to_le_bytes());
    }
    for body in run {
        out.extend_from_slice(body);
    }
}

/// A parsed view of a stored segment.
pub struct Segment<'a> {
    origin: Arc<str>,
    first: u64,
    ends: &'a [u8],
    body: &'a [u8],
}

fn corrupt(reason: &str) -> Error {
    Error::Decode { what: "op-log segment", reason: reason.to_owned() }
}

impl<'a> Segment<'a> {
    /// Checks the header of the segment of `origin` that starts at `first`.
    pub fn parse(origin: &str, first: u64, bytes: &'a [u8]) -> Result<Self, Error> {
        let count = bytes.get(..4).ok_or_else(|| corrupt("shorter than its header"))?;
        let count = u32::from_le_bytes([count[0], count[1], count[2], count[3]]) as usize;
        let header = count.checked_mul(4).and_then(|n| n.checked_add(4)).ok_or_else(|| corrupt("absurd count"))?;
        if bytes.len() < header {
            return Err(corrupt("shorter than its offset table"));
        }
        Ok(Self { origin: origin.into(), first, ends: &bytes[4..header], body: &bytes[header..] })
    }

    /// The number of operations.
    pub fn len(&self) -> usize {
        self.ends.len() / 4
    }

    fn end(&self, i: usize) -> usize {
        let e = &self.ends[i * 4..i * 4 + 4];
        u32::from_le_bytes([e[0], e[1], e[2], e[3]]) as usize
    }

    /// The encoded body of the `i`-th operation.
    pub fn body(&self, i: usize) -> Result<&'a [u8], Error> {
        if i >= self.len() {
            return Err(corrupt("index past the end"));
        }
        let start = if i == 0 { 0 } else { self.end(i - 1) };
        self.body.get(start..self.end(i)).ok_or_else(|| corrupt("offset outside the body"))
    }

    /// The id of the `i`-th operation.
    pub fn id(&self, i: usize) -> OpId {
        OpId { origin: self.origin.clone(), seq: self.first + i as u64 }
    }

    /// Decodes the `i`-th operation.
    pub fn op(&self, i: usize) -> Result<OperationWithMetadata, Error> {
        if i >= self.len() {
            return Err(corrupt("index past the end"));
        }
        let start = if i == 0 { 0 } else { self.end(i - 1) };
        let bytes = self.body.get(start..self.end(i)).ok_or_else(|| corrupt("offset outside the body"))?;
        OperationWithMetadata::decode_body(OpId { origin: self.origin.clone(), seq: self.first + i as u64 }, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pluresdb_core::{OperationType, OperationWithMetadata};

    fn encode_bodies(ops: &[OperationWithMetadata]) -> Vec<Vec<u8>> {
        ops.iter()
            .map(|op| {
                let mut body = Vec::new();
                op.encode_body(&mut body);
                body
            })
            .collect()
    }

    #[test]
    fn segments_split_at_the_limit_and_decode_each_op() {
        let ops: Vec<OperationWithMetadata> = (1..=2_500u64)
            .map(|seq| {
                let mut op = OperationWithMetadata::new(OperationType::UpdateNode, format!("n:{seq}"), serde_json::json!({"v": seq}), "p");
                op.id.seq = seq;
                op
            })
            .collect();
        let bodies = encode_bodies(&ops);
        let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        let segments = encode(1, &refs);
        assert_eq!(segments.iter().map(|(first, _)| *first).collect::<Vec<_>>(), vec![1, 1_025, 2_049]);
        let last = Segment::parse("p", 2_049, &segments[2].1).unwrap();
        assert_eq!(last.len(), 2_500 - 2_048);
        assert_eq!(last.op(3).unwrap(), ops[2_048 + 3]);
        assert!(last.op(last.len()).is_err());
    }

    #[test]
    fn truncated_segments_are_errors() {
        let mut op = OperationWithMetadata::new(OperationType::DeleteNode, "n".into(), serde_json::Value::Null, "p");
        op.id.seq = 1;
        let body = encode_bodies(std::slice::from_ref(&op)).remove(0);
        let (_, bytes) = encode(1, &[&body]).remove(0);
        for cut in 0..bytes.len() {
            if let Ok(segment) = Segment::parse("p", 1, &bytes[..cut]) {
                assert!(segment.op(0).is_err(), "cut at {cut}");
            }
        }
    }
}
