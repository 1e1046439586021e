//! A minimal CBOR writer for the hot write paths (node records and op-log
//! bodies, written once per operation).
//!
//! Going through serde and ciborium costs a dispatch per item and a write
//! call per header byte; on a batch of local writes that was a sixth of the
//! commit. These functions append straight to a `Vec<u8>` and produce what
//! ciborium produces for the same serde data model (definite-length arrays
//! and maps, the shortest integer heads), so everything they write decodes
//! with the ordinary serde `Deserialize` impls through [`crate::codec::decode`].
//! The one difference: floats are written as f32 when that is exact and as
//! f64 otherwise, never as f16; every CBOR decoder reads both.

use serde_json::Value;

const UNSIGNED: u8 = 0 << 5;
const NEGATIVE: u8 = 1 << 5;
const BYTES: u8 = 2 << 5;
const TEXT: u8 = 3 << 5;
const ARRAY: u8 = 4 << 5;
const MAP: u8 = 5 << 5;
const FALSE: u8 = 0xf4;
const TRUE: u8 = 0xf5;
pub(crate) const NULL: u8 = 0xf6;
const F32: u8 = 0xfa;
const F64: u8 = 0xfb;

/// Appends a head: major type `major` (already shifted) with argument `n`,
/// in its shortest form.
#[inline]
pub fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    if n < 24 {
        out.push(major | n as u8);
    } else if n <= u64::from(u8::MAX) {
        out.extend_from_slice(&[major | 24, n as u8]);
    } else if n <= u64::from(u16::MAX) {
        out.push(major | 25);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= u64::from(u32::MAX) {
        out.push(major | 26);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(major | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

/// Appends an unsigned integer.
#[inline]
pub fn unsigned(out: &mut Vec<u8>, n: u64) {
    head(out, UNSIGNED, n);
}

/// Appends a text string.
#[inline]
pub fn text(out: &mut Vec<u8>, s: &str) {
    head(out, TEXT, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Appends a byte string.
#[inline]
pub fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    head(out, BYTES, b.len() as u64);
    out.extend_from_slice(b);
}

/// Appends the head of an array of `len` items.
#[inline]
pub fn array(out: &mut Vec<u8>, len: usize) {
    head(out, ARRAY, len as u64);
}

/// Appends the head of a map of `len` entries.
#[inline]
pub fn map(out: &mut Vec<u8>, len: usize) {
    head(out, MAP, len as u64);
}

/// Appends a boolean.
#[inline]
pub fn boolean(out: &mut Vec<u8>, b: bool) {
    out.push(if b { TRUE } else { FALSE });
}

/// Appends null (serde's `None` and JSON's `null`).
#[inline]
pub fn null(out: &mut Vec<u8>) {
    out.push(NULL);
}

/// Appends a JSON value as serde would hand it to ciborium: objects as maps
/// in key order, numbers as integers when they are integers.
pub fn value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => null(out),
        Value::Bool(b) => boolean(out, *b),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                unsigned(out, u);
            } else if let Some(i) = n.as_i64() {
                // Negative: CBOR stores -1 - i, which is !i as unsigned.
                head(out, NEGATIVE, !(i as u64));
            } else if let Some(f) = n.as_f64() {
                float(out, f);
            } else {
                // Unreachable without serde_json's arbitrary_precision; null
                // is what serde_json itself writes for a non-finite float.
                null(out);
            }
        }
        Value::String(s) => text(out, s),
        Value::Array(items) => {
            array(out, items.len());
            for item in items {
                value(out, item);
            }
        }
        Value::Object(fields) => {
            map(out, fields.len());
            for (key, item) in fields {
                text(out, key);
                value(out, item);
            }
        }
    }
}

/// Appends a float, as f32 when that loses nothing.
fn float(out: &mut Vec<u8>, f: f64) {
    let narrow = f as f32;
    if f64::from(narrow).to_bits() == f.to_bits() {
        out.push(F32);
        out.extend_from_slice(&narrow.to_be_bytes());
    } else {
        out.push(F64);
        out.extend_from_slice(&f.to_be_bytes());
    }
}

/// The additional information of the shortest head for argument `n`.
fn shortest_info(n: u64) -> u8 {
    match n {
        0..=23 => n as u8,
        24..=0xff => 24,
        0x100..=0xffff => 25,
        0x1_0000..=0xffff_ffff => 26,
        _ => 27,
    }
}

/// Why the [`Reader`] stopped. Callers fall back to the serde decoder,
/// which either reads what the reader does not (tags, indefinite lengths,
/// byte strings, half floats written by other encoders) or reports the
/// precise error, so this carries no detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreadable;

/// How deep arrays and maps may nest (ciborium's default limit too).
const MAX_DEPTH: usize = 256;

/// The most memory a decoder reserves ahead for the items a length claims.
/// A length is only a claim: an array head of five bytes can announce
/// millions of items that never follow. Past this much, a collection
/// grows as its items actually arrive (by doubling, so at most twice what
/// they take), and no allocation is larger than the input justifies.
pub const MAX_RESERVE_BYTES: usize = 64 * 1024;

/// The capacity to reserve for `claimed` items of `T` read from untrusted
/// bytes: the claim, but no more than [`MAX_RESERVE_BYTES`] worth. Use it
/// for every `Vec::with_capacity` whose length came from the input.
pub fn capacity_for<T>(claimed: usize) -> usize {
    claimed.min(MAX_RESERVE_BYTES / std::mem::size_of::<T>().max(1))
}

/// A reader for the subset of CBOR this module writes: definite-length
/// arrays, maps and text, integers, simple values and f32/f64 floats. It
/// reads untrusted bytes: every length is checked against what is left
/// before anything is allocated, and nesting is bounded.
///
/// `NOTES_FORM` says whether it also notes if what it reads is in the form
/// this module writes ([`Reader::noting_form`], [`Reader::is_canonical`]):
/// a check per long head and a key comparison per map entry, which only a
/// receiver that keeps the bytes it read needs; a [`Reader::new`] (stored
/// records, bodies, messages) does not pay for it.
pub struct Reader<'a, const NOTES_FORM: bool = false> {
    bytes: &'a [u8],
    pos: usize,
    /// With `NOTES_FORM`: whether everything read since
    /// [`Reader::noting_form`] or the last [`Reader::start_canonical`] is
    /// in the form this module writes for what was read (see
    /// [`Reader::is_canonical`]).
    canonical: bool,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0, canonical: true }
    }
}

impl<'a> Reader<'a, true> {
    /// A reader at the start of `bytes` that also notes whether what it
    /// reads is in the writer's form ([`is_canonical`](Self::is_canonical)).
    pub fn noting_form(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0, canonical: true }
    }

    /// Starts over the record of [`is_canonical`](Self::is_canonical) from
    /// the next item.
    pub fn start_canonical(&mut self) {
        self.canonical = true;
    }

    /// Whether the items read since [`noting_form`](Self::noting_form) or
    /// [`start_canonical`](Self::start_canonical) are in the form this
    /// module's writer gives what they were read as: every head in its
    /// shortest form, a map's keys in strictly ascending order (a JSON
    /// object's, as `serde_json::Map` orders them, with no key twice), floats
    /// finite and as f32 when that is exact. Writing the values read would
    /// give back the same bytes then; a reader of a composite (an operation)
    /// notes what else its own order requires with
    /// [`not_canonical`](Reader::not_canonical).
    pub fn is_canonical(&self) -> bool {
        self.canonical
    }
}

impl<'a, const NOTES_FORM: bool> Reader<'a, NOTES_FORM> {
    /// The position of the next byte to read.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Notes that something read is not in the writer's form (nothing for
    /// a reader that does not note it).
    pub fn not_canonical(&mut self) {
        if NOTES_FORM {
            self.canonical = false;
        }
    }

    /// Whether every byte has been read.
    pub fn is_done(&self) -> bool {
        self.pos == self.bytes.len()
    }

    /// Whether the next item is an unsigned integer (without reading it).
    pub fn next_is_unsigned(&self) -> bool {
        self.bytes.get(self.pos).is_some_and(|b| b & 0xe0 == UNSIGNED)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Unreadable> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.bytes.len()).ok_or(Unreadable)?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, Unreadable> {
        Ok(self.take(1)?[0])
    }

    /// Reads a head: the major type (shifted) and its argument; `info` is
    /// returned for major type 7 (simple values and floats).
    fn head(&mut self) -> Result<(u8, u8, u64), Unreadable> {
        let initial = self.byte()?;
        let (major, info) = (initial & 0xe0, initial & 0x1f);
        let arg = match info {
            0..=23 => u64::from(info),
            24 => u64::from(self.byte()?),
            25 => u64::from(u16::from_be_bytes(self.take(2)?.try_into().map_err(|_| Unreadable)?)),
            26 => u64::from(u32::from_be_bytes(self.take(4)?.try_into().map_err(|_| Unreadable)?)),
            27 => u64::from_be_bytes(self.take(8)?.try_into().map_err(|_| Unreadable)?),
            _ => return Err(Unreadable),
        };
        // The writer's heads are the shortest for their argument; a float's
        // info gives its width instead, and is checked where it is read.
        if NOTES_FORM && info >= 24 && major != 0xe0 && info != shortest_info(arg) {
            self.canonical = false;
        }
        Ok((major, info, arg))
    }

    /// Reads the length of an array or map of `major` type, refusing one
    /// that cannot fit in what is left (each item takes at least a byte).
    fn len_of(&mut self, major: u8) -> Result<usize, Unreadable> {
        let (found, _, len) = self.head()?;
        if found != major {
            return Err(Unreadable);
        }
        self.claimed(len)
    }

    /// The length `len` an array or map head claims, refused when it cannot
    /// fit in what is left (each item takes at least a byte).
    fn claimed(&self, len: u64) -> Result<usize, Unreadable> {
        if len > (self.bytes.len() - self.pos) as u64 {
            return Err(Unreadable);
        }
        Ok(len as usize)
    }

    /// Reads an array head and returns its length.
    pub fn array(&mut self) -> Result<usize, Unreadable> {
        self.len_of(ARRAY)
    }

    /// Reads a map head and returns its number of entries.
    pub fn map(&mut self) -> Result<usize, Unreadable> {
        self.len_of(MAP)
    }

    /// Reads a null if one is next; returns whether it did.
    pub fn null(&mut self) -> bool {
        let is_null = self.bytes.get(self.pos) == Some(&NULL);
        if is_null {
            self.pos += 1;
        }
        is_null
    }

    /// Reads a boolean.
    pub fn boolean(&mut self) -> Result<bool, Unreadable> {
        match self.byte()? {
            FALSE => Ok(false),
            TRUE => Ok(true),
            _ => Err(Unreadable),
        }
    }

    /// Reads an unsigned integer.
    pub fn unsigned(&mut self) -> Result<u64, Unreadable> {
        match self.head()? {
            (UNSIGNED, _, n) => Ok(n),
            _ => Err(Unreadable),
        }
    }

    /// Reads a byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8], Unreadable> {
        match self.head()? {
            (BYTES, _, len) => self.take(usize::try_from(len).map_err(|_| Unreadable)?),
            _ => Err(Unreadable),
        }
    }

    /// Reads a text string.
    pub fn text(&mut self) -> Result<&'a str, Unreadable> {
        match self.head()? {
            (TEXT, _, len) => {
                let len = usize::try_from(len).map_err(|_| Unreadable)?;
                std::str::from_utf8(self.take(len)?).map_err(|_| Unreadable)
            }
            _ => Err(Unreadable),
        }
    }

    /// The bytes of a text, unchecked (for comparing texts already read
    /// once as UTF-8: bytes order as their strings do).
    pub(crate) fn text_bytes(&mut self) -> Result<&'a [u8], Unreadable> {
        match self.head()? {
            (TEXT, _, len) => self.take(usize::try_from(len).map_err(|_| Unreadable)?),
            _ => Err(Unreadable),
        }
    }

    /// Steps over the next item, however nested, without building it:
    /// for finding one field of an encoded record. Iterative (no depth
    /// limit is needed) and bounded by the bytes left, since every item
    /// still to be read takes at least one of them.
    pub fn skip(&mut self) -> Result<(), Unreadable> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            let (major, info, arg) = self.head()?;
            match major {
                UNSIGNED | NEGATIVE => {}
                BYTES | TEXT => {
                    self.take(usize::try_from(arg).map_err(|_| Unreadable)?)?;
                }
                ARRAY => pending = pending.checked_add(arg).ok_or(Unreadable)?,
                MAP => pending = arg.checked_mul(2).and_then(|items| pending.checked_add(items)).ok_or(Unreadable)?,
                // Simple values and floats: the head held all of it.
                0xe0 if matches!(info, 20..=22 | 26 | 27) => {}
                _ => return Err(Unreadable),
            }
            if pending > (self.bytes.len() - self.pos) as u64 {
                return Err(Unreadable);
            }
        }
        Ok(())
    }

    /// Reads a JSON value.
    pub fn value(&mut self) -> Result<Value, Unreadable> {
        self.value_at(0)
    }

    fn float(&mut self, f: f64) -> Value {
        match serde_json::Number::from_f64(f) {
            Some(n) => Value::Number(n),
            None => {
                self.not_canonical();
                Value::Null
            }
        }
    }

    fn value_at(&mut self, depth: usize) -> Result<Value, Unreadable> {
        if depth > MAX_DEPTH {
            return Err(Unreadable);
        }
        let (major, info, arg) = self.head()?;
        Ok(match major {
            UNSIGNED => Value::from(arg),
            NEGATIVE => Value::from(i64::try_from(arg).map_err(|_| Unreadable).map(|n| -1 - n)?),
            TEXT => {
                let len = usize::try_from(arg).map_err(|_| Unreadable)?;
                Value::String(std::str::from_utf8(self.take(len)?).map_err(|_| Unreadable)?.to_owned())
            }
            ARRAY => {
                let len = self.claimed(arg)?;
                let mut items = Vec::with_capacity(capacity_for::<Value>(len));
                for _ in 0..len {
                    items.push(self.value_at(depth + 1)?);
                }
                Value::Array(items)
            }
            MAP => {
                let len = self.claimed(arg)?;
                let mut fields = serde_json::Map::new();
                let mut previous: Option<&str> = None;
                for _ in 0..len {
                    let key = self.text()?;
                    // A map is written in its keys' order, each once.
                    if NOTES_FORM {
                        if previous.is_some_and(|previous| previous >= key) {
                            self.canonical = false;
                        }
                        previous = Some(key);
                    }
                    fields.insert(key.to_owned(), self.value_at(depth + 1)?);
                }
                Value::Object(fields)
            }
            0xe0 => match (info, arg) {
                (20, _) => Value::Bool(false),
                (21, _) => Value::Bool(true),
                (22, _) => Value::Null,
                // A non-finite float is null in JSON, as serde_json has it
                // (and as the writer writes it); an f64 that an f32 holds
                // exactly is written as that f32.
                (26, bits) => self.float(f64::from(f32::from_bits(bits as u32))),
                (27, bits) => {
                    let f = f64::from_bits(bits);
                    if NOTES_FORM && f64::from(f as f32).to_bits() == bits {
                        self.canonical = false;
                    }
                    self.float(f)
                }
                _ => return Err(Unreadable),
            },
            _ => return Err(Unreadable),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn ours(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        value(&mut out, v);
        out
    }

    #[test]
    fn matches_ciborium_byte_for_byte_without_floats() {
        let v = json!({
            "a": [0, 23, 24, 255, 256, 65_535, 65_536, 4_294_967_295u64, 4_294_967_296u64, u64::MAX],
            "b": [-1, -24, -25, -256, -257, -65_536, -65_537, i64::MIN],
            "c": {"#": "user:1", "s": "x".repeat(300), "t": true, "f": false, "n": null},
            "": [],
        });
        assert_eq!(ours(&v), crate::codec::encode(&v));
    }

    #[test]
    fn floats_decode_to_the_same_value() {
        for f in [0.5, -0.0, 1.1, 3.4e38, 1e300, f64::MIN_POSITIVE, 16_777_217.0] {
            let v = json!({"f": f});
            assert_eq!(crate::codec::decode::<Value>(&ours(&v), "value").unwrap(), v, "{f}");
        }
    }

    /// Any JSON value of a few levels, with every width of head.
    pub(crate) fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            any::<f32>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| Value::from(f64::from(f))),
            ".{0,40}".prop_map(Value::String),
            "[a-z]{20,300}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,8}", inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_json_value_round_trips(v in arb_json()) {
            prop_assert_eq!(crate::codec::decode::<Value>(&ours(&v), "value").unwrap(), v.clone());
            let bytes = ours(&v);
            let mut reader = Reader::new(&bytes);
            prop_assert_eq!(reader.value().unwrap(), v.clone());
            prop_assert!(reader.is_done());
            // What the writer wrote is in its form.
            let mut noting = Reader::noting_form(&bytes);
            prop_assert_eq!(noting.value().unwrap(), v);
            prop_assert!(noting.is_done() && noting.is_canonical());
        }

        #[test]
        fn noting_the_form_changes_nothing_read(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let (mut plain, mut noting) = (Reader::new(&bytes), Reader::noting_form(&bytes));
            prop_assert_eq!(plain.value(), noting.value());
            prop_assert_eq!(plain.pos, noting.pos);
        }

        #[test]
        fn skip_steps_over_exactly_what_value_reads(v in arb_json(), tail in proptest::collection::vec(any::<u8>(), 0..4)) {
            let mut bytes = ours(&v);
            let end = bytes.len();
            bytes.extend(tail);
            let mut reader = Reader::new(&bytes);
            reader.skip().unwrap();
            prop_assert_eq!(reader.pos, end);
        }

        #[test]
        fn skip_gives_up_where_value_does(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            // Never a panic; whatever `value` reads, `skip` steps over the same bytes.
            let mut read = Reader::new(&bytes);
            let mut skipped = Reader::new(&bytes);
            if read.value().is_ok() {
                prop_assert!(skipped.skip().is_ok());
                prop_assert_eq!(read.pos, skipped.pos);
            }
        }

        #[test]
        fn the_reader_agrees_with_serde_or_gives_up(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            // Never a panic; never a different answer from serde's.
            if let Ok(v) = Reader::new(&bytes).value() {
                if let Ok(theirs) = crate::codec::decode::<Value>(&bytes, "value") {
                    prop_assert_eq!(v, theirs);
                }
            }
        }
    }

    #[test]
    fn only_a_reader_noting_the_form_tells_the_writers_from_another() {
        // A long head, keys out of order, an f64 an f32 holds, NaN.
        for other in [
            &[0x18, 0x05][..],
            &[0xa2, 0x61, b'b', 0x01, 0x61, b'a', 0x02],
            &[0xfb, 0x3f, 0xe0, 0, 0, 0, 0, 0, 0],
            &[0xfa, 0x7f, 0xc0, 0, 0],
        ] {
            let mut noting = Reader::noting_form(other);
            let read = noting.value().unwrap();
            assert!(!noting.is_canonical(), "{other:?}");
            assert_eq!(Reader::new(other).value().unwrap(), read);
            noting.start_canonical();
            assert!(noting.is_canonical());
        }
    }

    #[test]
    fn hostile_lengths_and_nesting_are_refused_without_allocating() {
        // An array claiming 2^64-1 items, a text claiming 4 GiB, deep nesting.
        assert!(Reader::new(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).value().is_err());
        assert!(Reader::new(&[0x7a, 0xff, 0xff, 0xff, 0xff, b'a']).value().is_err());
        assert!(Reader::new(&[0x81; 10_000]).value().is_err());
        // Skipping needs no depth bound, but claims beyond the bytes left fail at once.
        assert!(Reader::new(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).skip().is_err());
        assert!(Reader::new(&[0xbb, 0x80, 0, 0, 0, 0, 0, 0, 0]).skip().is_err());
        assert!(Reader::new(&[0x81; 10_000]).skip().is_err());
        let mut nested = vec![0x81; 10_000];
        nested.push(0xf6);
        assert!(Reader::new(&nested).skip().is_ok());
    }
}
