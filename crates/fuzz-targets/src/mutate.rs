//! A small seeded mutator for the short runs in `cargo test`: the same
//! seed gives the same inputs on every machine. libFuzzer's coverage-guided
//! mutations do the long runs (see `fuzz/README.md`); this one only has to
//! reach the decoders' error paths from real encoded messages quickly.

/// Bytes that mean something to a CBOR or frame decoder: heads with long or
/// huge length arguments, indefinite lengths, break, null, floats, and the
/// extremes of a byte.
const INTERESTING_BYTES: [u8; 24] = [
    0x00, 0x01, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1f, 0x5b, 0x7b, 0x7f, 0x80, 0x9a, 0x9b, 0x9f, 0xa0, 0xba, 0xbb, 0xbf, 0xf6, 0xf9, 0xfa,
    0xfb, 0xff,
];

/// Integers worth writing over a length field (big-endian, 1 to 8 bytes).
const INTERESTING_NUMBERS: [u64; 10] = [0, 1, 0x7f, 0xff, 0x100, 0xffff, 0x00ff_ffff, 0x0100_0000, 0xffff_ffff, u64::MAX];

/// A deterministic source of mutations (splitmix64).
pub struct Mutator {
    state: u64,
}

impl Mutator {
    /// A mutator whose choices follow from `seed` alone.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// A new input: one of `corpus`, changed in one to eight places.
    pub fn input(&mut self, corpus: &[Vec<u8>]) -> Vec<u8> {
        let mut input = corpus.get(self.below(corpus.len())).cloned().unwrap_or_default();
        for _ in 0..=self.below(8) {
            self.mutate(&mut input, corpus);
        }
        input
    }

    /// Changes `input` in one place.
    pub fn mutate(&mut self, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
        let at = self.below(input.len() + 1);
        match self.below(10) {
            0 if !input.is_empty() => {
                let i = self.below(input.len());
                input[i] ^= 1 << self.below(8);
            }
            1 if !input.is_empty() => {
                let i = self.below(input.len());
                input[i] = self.next_u64() as u8;
            }
            2 if !input.is_empty() => {
                let i = self.below(input.len());
                input[i] = INTERESTING_BYTES[self.below(INTERESTING_BYTES.len())];
            }
            3 => {
                let n = 1 + self.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| self.next_u64() as u8).collect();
                input.splice(at..at, bytes);
            }
            4 if !input.is_empty() => {
                let end = (at + 1 + self.below(16)).min(input.len());
                input.drain(at.min(end)..end);
            }
            5 if !input.is_empty() => {
                let start = self.below(input.len());
                let end = (start + 1 + self.below(64)).min(input.len());
                let copy = input[start..end].to_vec();
                input.splice(at..at, copy);
            }
            6 => input.truncate(at),
            7 => {
                // A CBOR head of a random major type claiming a huge length.
                let major = (self.below(8) as u8) << 5;
                let mut head = vec![major | (0x18 + self.below(4) as u8)];
                let number = INTERESTING_NUMBERS[self.below(INTERESTING_NUMBERS.len())];
                let width = 1 << (head[0] & 0x03);
                head.extend_from_slice(&number.to_be_bytes()[8 - width..]);
                input.splice(at..at, head);
            }
            8 if !input.is_empty() => {
                let width = 1 << self.below(4);
                let number = INTERESTING_NUMBERS[self.below(INTERESTING_NUMBERS.len())];
                let bytes = number.to_be_bytes();
                for (offset, byte) in bytes[8 - width..].iter().enumerate() {
                    if let Some(slot) = input.get_mut(at + offset) {
                        *slot = *byte;
                    }
                }
            }
            _ => {
                if let Some(other) = corpus.get(self.below(corpus.len())) {
                    let start = self.below(other.len());
                    let end = (start + 1 + self.below(256)).min(other.len());
                    input.splice(at..at, other.get(start..end).unwrap_or_default().iter().copied());
                }
            }
        }
    }
}
