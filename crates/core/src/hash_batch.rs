//! BLAKE3 of many short messages at once: the digests of a received batch.
//!
//! A receiver hashes every operation of a batch (its compact form, a
//! ~200-byte message, see [`crate::signing`]): four compressions each, one
//! after another, a fifth of the check ahead. BLAKE3's compression works on
//! 32-bit words, so eight messages fit side by side in 256-bit registers,
//! one in each lane: [`hash_all`] keeps eight lanes busy, each with its own
//! message, block count, block length and flags, and refills a lane when its
//! message ends. The compression below is BLAKE3's (the reference function,
//! written over lanes); its results are `blake3::hash`'s, which the tests
//! check for every length up to a chunk and past it. Messages longer than a
//! chunk (1,024 bytes) and machines without AVX2 use `blake3` itself.

// Elsewhere the lanes run in the tests only.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

/// BLAKE3's initial chaining value.
const IV: [u32; 8] = [0x6A09_E667, 0xBB67_AE85, 0x3C6E_F372, 0xA54F_F53A, 0x510E_527F, 0x9B05_688C, 0x1F83_D9AB, 0x5BE0_CD19];
/// The message word permutation applied between rounds.
const PERMUTATION: [usize; 16] = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8];
const CHUNK_START: u32 = 1;
const CHUNK_END: u32 = 1 << 1;
const ROOT: u32 = 1 << 3;
const BLOCK_LEN: usize = 64;
const CHUNK_LEN: usize = 1024;

/// Messages hashed side by side.
const LANES: usize = 8;
/// One word of every lane.
type Lanes = [u32; LANES];

/// A message: `bytes`, then `tail` when there is one (an operation's
/// compact form is hashed with its signature slot as null: the bytes before
/// the slot, then the null).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Message<'a> {
    pub bytes: &'a [u8],
    pub tail: Option<u8>,
}

impl Message<'_> {
    fn len(&self) -> usize {
        self.bytes.len() + usize::from(self.tail.is_some())
    }

    /// Its hash through `blake3`.
    fn hash_alone(&self) -> [u8; 32] {
        match self.tail {
            None => *blake3::hash(self.bytes).as_bytes(),
            Some(tail) => {
                let mut hasher = blake3::Hasher::new();
                hasher.update(self.bytes);
                hasher.update(&[tail]);
                *hasher.finalize().as_bytes()
            }
        }
    }

    /// Its `block`-th block, zero-padded, as little-endian words into lane
    /// `lane` of `words`; returns the block's length.
    fn load_block(&self, block: usize, words: &mut [Lanes; 16], lane: usize) -> u32 {
        let start = block * BLOCK_LEN;
        if let Some(full) = self.bytes.get(start..start + BLOCK_LEN) {
            for (w, word) in full.chunks_exact(4).enumerate() {
                words[w][lane] = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
            }
            return BLOCK_LEN as u32;
        }
        let mut padded = [0u8; BLOCK_LEN];
        let from_bytes = self.bytes.get(start..).unwrap_or_default();
        padded[..from_bytes.len()].copy_from_slice(from_bytes);
        let mut len = from_bytes.len();
        if let Some(tail) = self.tail {
            padded[len] = tail;
            len += 1;
        }
        for (w, word) in padded.chunks_exact(4).enumerate() {
            words[w][lane] = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        }
        len as u32
    }
}

/// Where a hash is written: a digest's bytes.
pub(crate) trait HashSlot {
    fn slot(&mut self) -> &mut [u8; 32];
}

impl HashSlot for [u8; 32] {
    fn slot(&mut self) -> &mut [u8; 32] {
        self
    }
}

/// The BLAKE3 hash of every message, in order.
#[cfg(test)]
pub(crate) fn hash_all(messages: &[Message<'_>]) -> Vec<[u8; 32]> {
    let mut out = vec![[0u8; 32]; messages.len()];
    hash_into(|i| Some(messages[i]), &mut out);
    out
}

/// Writes the BLAKE3 hash of `message(i)` into `out[i]` where there is a
/// message, in place (a received batch's digests, among which those of
/// operations not received as the encoder writes them are computed
/// otherwise); `out[i]` stays as it is where there is none.
pub(crate) fn hash_into<'m, D: HashSlot>(message: impl Fn(usize) -> Option<Message<'m>>, out: &mut [D]) {
    #[cfg(target_arch = "x86_64")]
    if out.len() > 1 && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (just detected), which is all that
        // calling a function compiled for it requires.
        hash_in_lanes(message, out, |cv, words, block_len, flags| unsafe { compress_avx2(cv, words, block_len, flags) });
        return;
    }
    for (i, out) in out.iter_mut().enumerate() {
        if let Some(message) = message(i) {
            *out.slot() = message.hash_alone();
        }
    }
}

/// A lane's message and how far it got.
#[derive(Clone, Copy)]
struct Lane {
    message: usize,
    block: usize,
    blocks: usize,
}

/// Hashes `messages` into `out` eight at a time with `compress`; a message
/// longer than a chunk is hashed alone.
fn hash_in_lanes<'m, D: HashSlot>(
    messages: impl Fn(usize) -> Option<Message<'m>>,
    out: &mut [D],
    compress: impl Fn(&mut [Lanes; 8], &[Lanes; 16], &Lanes, &Lanes),
) {
    let mut lanes: [Option<Lane>; LANES] = [None; LANES];
    let mut next = 0;
    let mut cv = [[0u32; LANES]; 8];
    let mut words = [[0u32; LANES]; 16];
    let (mut block_len, mut flags) = ([0u32; LANES], [0u32; LANES]);
    loop {
        let mut busy = false;
        for (l, lane) in lanes.iter_mut().enumerate() {
            while lane.is_none() && next < out.len() {
                let Some(message) = messages(next) else {
                    next += 1;
                    continue;
                };
                if message.len() > CHUNK_LEN {
                    *out[next].slot() = message.hash_alone();
                } else {
                    *lane = Some(Lane { message: next, block: 0, blocks: message.len().div_ceil(BLOCK_LEN).max(1) });
                    for (word, iv) in cv.iter_mut().zip(IV) {
                        word[l] = iv;
                    }
                }
                next += 1;
            }
            let Some(lane) = lane else { continue };
            busy = true;
            // A lane holds only messages that are there.
            let Some(message) = messages(lane.message) else { continue };
            block_len[l] = message.load_block(lane.block, &mut words, l);
            let first = if lane.block == 0 { CHUNK_START } else { 0 };
            let last = if lane.block + 1 == lane.blocks { CHUNK_END | ROOT } else { 0 };
            flags[l] = first | last;
        }
        if !busy {
            return;
        }
        compress(&mut cv, &words, &block_len, &flags);
        for (l, slot) in lanes.iter_mut().enumerate() {
            let Some(lane) = slot else { continue };
            lane.block += 1;
            if lane.block == lane.blocks {
                for (w, word) in cv.iter().enumerate() {
                    out[lane.message].slot()[4 * w..4 * w + 4].copy_from_slice(&word[l].to_le_bytes());
                }
                *slot = None;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn compress_avx2(cv: &mut [Lanes; 8], words: &[Lanes; 16], block_len: &Lanes, flags: &Lanes) {
    compress(cv, words, block_len, flags)
}

#[inline(always)]
fn add(a: &Lanes, b: &Lanes) -> Lanes {
    std::array::from_fn(|i| a[i].wrapping_add(b[i]))
}

#[inline(always)]
fn xor_rotate(a: &Lanes, b: &Lanes, by: u32) -> Lanes {
    std::array::from_fn(|i| (a[i] ^ b[i]).rotate_right(by))
}

/// BLAKE3's quarter-round on state words `a`, `b`, `c`, `d` of every lane.
#[inline(always)]
fn g(v: &mut [Lanes; 16], (a, b, c, d): (usize, usize, usize, usize), x: &Lanes, y: &Lanes) {
    v[a] = add(&add(&v[a], &v[b]), x);
    v[d] = xor_rotate(&v[d], &v[a], 16);
    v[c] = add(&v[c], &v[d]);
    v[b] = xor_rotate(&v[b], &v[c], 12);
    v[a] = add(&add(&v[a], &v[b]), y);
    v[d] = xor_rotate(&v[d], &v[a], 8);
    v[c] = add(&v[c], &v[d]);
    v[b] = xor_rotate(&v[b], &v[c], 7);
}

/// BLAKE3's compression of one block in every lane (counter 0: a message
/// of one chunk), leaving the new chaining values (the first half of the
/// output, which for the last block is the hash) in `cv`. Written as loops
/// over the lanes so that the compiler keeps each word of all lanes in one
/// register (the round loop is left rolled: unrolled, it was not).
#[inline(always)]
fn compress(cv: &mut [Lanes; 8], words: &[Lanes; 16], block_len: &Lanes, flags: &Lanes) {
    let mut v = [[0u32; LANES]; 16];
    v[..8].copy_from_slice(cv);
    for (i, iv) in IV[..4].iter().enumerate() {
        v[8 + i] = [*iv; LANES];
    }
    v[14] = *block_len;
    v[15] = *flags;
    let mut m = *words;
    for round in 0..7 {
        g(&mut v, (0, 4, 8, 12), &m[0], &m[1]);
        g(&mut v, (1, 5, 9, 13), &m[2], &m[3]);
        g(&mut v, (2, 6, 10, 14), &m[4], &m[5]);
        g(&mut v, (3, 7, 11, 15), &m[6], &m[7]);
        g(&mut v, (0, 5, 10, 15), &m[8], &m[9]);
        g(&mut v, (1, 6, 11, 12), &m[10], &m[11]);
        g(&mut v, (2, 7, 8, 13), &m[12], &m[13]);
        g(&mut v, (3, 4, 9, 14), &m[14], &m[15]);
        if round < 6 {
            m = std::array::from_fn(|i| m[PERMUTATION[i]]);
        }
    }
    for (i, word) in cv.iter_mut().enumerate() {
        *word = std::array::from_fn(|l| v[i][l] ^ v[i + 8][l]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn expected(message: &Message<'_>) -> [u8; 32] {
        let mut whole = message.bytes.to_vec();
        whole.extend(message.tail);
        *blake3::hash(&whole).as_bytes()
    }

    #[test]
    fn every_length_up_to_past_a_chunk_hashes_as_blake3_does() {
        let data: Vec<u8> = (0..1100u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let mut messages = Vec::new();
        for len in 0..=1030 {
            messages.push(Message { bytes: &data[..len], tail: None });
            messages.push(Message { bytes: &data[..len], tail: Some(0xf6) });
        }
        let want: Vec<_> = messages.iter().map(expected).collect();
        assert_eq!(hash_all(&messages), want);
        // The lanes themselves, whatever this machine detects.
        let mut out = vec![[0u8; 32]; messages.len()];
        hash_in_lanes(|i| Some(messages[i]), &mut out, compress);
        assert_eq!(out, want);
    }

    proptest! {
        #[test]
        fn any_batch_hashes_as_blake3_does(
            batch in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..400), proptest::option::of(any::<u8>())), 0..40)
        ) {
            let messages: Vec<_> = batch.iter().map(|(bytes, tail)| Message { bytes, tail: *tail }).collect();
            let want: Vec<_> = messages.iter().map(expected).collect();
            prop_assert_eq!(hash_all(&messages), want.clone());
            let mut out = vec![[0u8; 32]; messages.len()];
            hash_in_lanes(|i| Some(messages[i]), &mut out, compress);
            prop_assert_eq!(out, want);
        }

        #[test]
        fn a_batch_with_gaps_hashes_its_messages_and_leaves_the_gaps(
            batch in proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)), 0..40)
        ) {
            let slots: Vec<_> = batch.iter().map(|bytes| bytes.as_ref().map(|bytes| Message { bytes, tail: Some(0xf6) })).collect();
            let want: Vec<_> = slots.iter().map(|slot| slot.as_ref().map_or([7u8; 32], expected)).collect();
            let mut out = vec![[7u8; 32]; slots.len()];
            hash_into(|i| slots[i], &mut out);
            prop_assert_eq!(&out, &want);
            let mut out = vec![[7u8; 32]; slots.len()];
            hash_in_lanes(|i| slots[i], &mut out, compress);
            prop_assert_eq!(out, want);
        }
    }
}
