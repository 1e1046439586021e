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

/// Splits `origin`'s consecutive operations, given as encoded bodies
/// starting at sequence number `first_seq`, into segments, each with the
/// sequence number of its first operation.
pub fn encode(origin: &str, first_seq: u64, bodies: &[&[u8]]) -> Vec<(u64, Vec<u8>)> {
    runs(origin, bodies)
        .map(|run| {
            let mut bytes = Vec::new();
            write(&bodies[run.clone()], &mut bytes);
            (first_seq + run.start as u64, bytes)
        })
        .collect()
}

/// redb's page: a value larger than one is stored alone, in a page of a
/// power-of-two number of them.
const PAGE: usize = 4096;

/// What redb's leaf of one entry holds besides the value, for a key of
/// `origin`: the leaf's header (4 bytes) and the key's and the value's
/// end (4 each), and the key `(origin, seq)` (the origin with a length of
/// up to 5 bytes in front, and 8 bytes of seq).
fn leaf_overhead(origin: &str) -> usize {
    12 + 5 + origin.len() + 8
}

/// The page redb allocates for a leaf of `bytes`.
fn page_for(bytes: usize) -> usize {
    bytes.max(1).div_ceil(PAGE).next_power_of_two() * PAGE
}

/// The index ranges of `origin`'s `bodies` that make one segment each.
///
/// A segment is cut where its leaf fills a page redb would allocate for
/// it: the largest page (a power of two) that the rest of the operations
/// fill, then the next for what is left. One segment for a batch of 1,000
/// ~150-byte operations (150 KB) took a page of 256 KiB, whose empty
/// ~100 KiB redb zeroed, held in its write buffer and wrote to the file
/// like the rest; cut at 128 KiB, 16 KiB and 4 KiB, little of each page is
/// empty. At most [`MAX_OPS`] operations and about [`MAX_BYTES`] a segment.
pub fn runs<'a>(origin: &str, bodies: &'a [&'a [u8]]) -> impl Iterator<Item = std::ops::Range<usize>> + 'a {
    let overhead = leaf_overhead(origin) + 4;
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= bodies.len() {
            return None;
        }
        // The most one segment takes.
        let mut end = start;
        let mut size = 0;
        while end < bodies.len() && end - start < MAX_OPS && size < MAX_BYTES {
            size += bodies[end].len();
            end += 1;
        }
        // Its leaf: the count, an end offset and the body of each.
        let leaf = overhead + 4 * (end - start) + size;
        if leaf > PAGE {
            // Fill the largest page the leaf fills whole (at least half of
            // it), and leave the rest to the next segments.
            let page = if page_for(leaf) == leaf { leaf } else { page_for(leaf) / 2 };
            let mut filled = overhead;
            let mut cut = start;
            while cut < end && filled + 4 + bodies[cut].len() <= page {
                filled += 4 + bodies[cut].len();
                cut += 1;
            }
            // A body larger than the page goes alone.
            end = cut.max(start + 1);
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

    /// The leaf redb makes of a segment of `origin`.
    fn leaf_of(origin: &str, segment: &[u8]) -> usize {
        leaf_overhead(origin) + segment.len()
    }

    #[test]
    fn segments_cover_every_op_in_order_and_decode_each() {
        let ops: Vec<OperationWithMetadata> = (1..=2_500u64)
            .map(|seq| {
                let mut op = OperationWithMetadata::new(OperationType::UpdateNode, format!("n:{seq}"), serde_json::json!({"v": seq}), "p");
                op.id.seq = seq;
                op
            })
            .collect();
        let bodies = encode_bodies(&ops);
        let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        let segments = encode("p", 1, &refs);
        assert!(segments.len() > 1);
        let mut next = 1u64;
        for (first, bytes) in &segments {
            assert_eq!(*first, next, "segments follow each other without a gap");
            let segment = Segment::parse("p", *first, bytes).unwrap();
            assert!(segment.len() >= 1 && segment.len() <= MAX_OPS);
            for i in 0..segment.len() {
                assert_eq!(segment.op(i).unwrap(), ops[(first - 1) as usize + i]);
            }
            assert!(segment.op(segment.len()).is_err());
            next += segment.len() as u64;
        }
        assert_eq!(next, 2_501);
    }

    #[test]
    fn a_batch_is_cut_into_segments_that_fill_their_pages() {
        // A batch as a peer sends it: 1,000 ~150-byte operations of an
        // origin named like a peer (52 characters).
        let origin = "12D3KooWAKzm2rTEscgewhiWUseBEkUi3cKBeJmJEkyeDpv7bKBs";
        let bodies: Vec<Vec<u8>> = (0..1_000).map(|i| vec![i as u8; 150]).collect();
        let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        let segments = encode(origin, 1, &refs);
        let leaves: usize = segments.iter().map(|(_, bytes)| leaf_of(origin, bytes)).sum();
        let pages: usize = segments.iter().map(|(_, bytes)| page_for(leaf_of(origin, bytes))).sum();
        // One segment of ~154 KB took a 256 KiB page.
        assert!(pages <= leaves + PAGE, "{} segments in {pages} bytes of pages for {leaves} bytes", segments.len());
        assert!(segments.len() <= 5, "{} segments", segments.len());
        // Every segment but the last fills its page but for one operation.
        for (_, bytes) in &segments[..segments.len() - 1] {
            let leaf = leaf_of(origin, bytes);
            assert!(leaf <= page_for(leaf) && leaf + 4 + 150 > page_for(leaf), "a leaf of {leaf} bytes");
        }
        // A body larger than a page goes alone, whole.
        let big = vec![7u8; 3 * PAGE];
        let small = [1u8; 100];
        let mixed: Vec<&[u8]> = vec![&small, &big, &small];
        let cut = runs(origin, &mixed).collect::<Vec<_>>();
        assert_eq!(cut.iter().map(|r| r.len()).sum::<usize>(), 3);
        assert!(cut.iter().all(|r| !r.is_empty()));
    }

    #[test]
    fn truncated_segments_are_errors() {
        let mut op = OperationWithMetadata::new(OperationType::DeleteNode, "n".into(), serde_json::Value::Null, "p");
        op.id.seq = 1;
        let body = encode_bodies(std::slice::from_ref(&op)).remove(0);
        let (_, bytes) = encode("p", 1, &[&body]).remove(0);
        for cut in 0..bytes.len() {
            if let Ok(segment) = Segment::parse("p", 1, &bytes[..cut]) {
                assert!(segment.op(0).is_err(), "cut at {cut}");
            }
        }
    }
}
