//! Secondary indexes: which nodes hold which value in a field, and which
//! nodes link to which.
//!
//! An index covers the nodes whose id starts with its prefix. A field index
//! holds one entry per node that has the field (under the resolver in
//! effect): the field's value encoded so that byte order is value order
//! ([`encode_value`]), and the node id. A links index holds one entry per
//! link: the target id, a zero byte and the field, and the source id.
//!
//! The replica computes the entries that change with every commit (local
//! writes, received operations, operations that become due) from the old
//! and new state of each node it writes, and the store writes them in the
//! same transaction as the nodes ([`crate::WriteBatch::index_removed`] and
//! [`index_added`](crate::WriteBatch::index_added)): a reader never sees a
//! node without its entries. Definitions live in the store's metadata under
//! [`INDEXES_META_KEY`], so they survive restarts.
//!
//! Everything here is pure: no I/O, no clock.

use crate::error::Error;
use crate::node::Node;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The metadata key that holds the index definitions (JSON).
pub const INDEXES_META_KEY: &str = "indexes";

/// The most indexes one replica keeps (each costs every covered write).
pub const MAX_INDEXES: usize = 32;

/// The most dot-separated steps in a field path.
pub const MAX_FIELD_DEPTH: usize = 8;

/// The most bytes in a field path, an index name or an index prefix.
pub const MAX_FIELD_PATH_BYTES: usize = 256;

/// What an index holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum IndexKind {
    /// The value of a field (a dot-separated path into nested objects).
    Field {
        /// The path, e.g. `age` or `address.city`.
        field: String,
    },
    /// Every link of a covered node: "who links to X" (back-links).
    Links,
}

/// Where a definition's build stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum IndexState {
    /// Nodes up to `after` (in id order) have their entries; later writes
    /// keep every covered node's entries, so once the build reaches the end
    /// the index is complete.
    Building {
        /// The last node id indexed so far.
        after: Option<String>,
        /// Nodes read by the build so far.
        indexed: u64,
        /// Nodes under the prefix when the build started (an estimate for
        /// progress: writes meanwhile change it).
        total: u64,
    },
    /// Complete: queries use it.
    Ready,
}

/// A stored index definition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexDef {
    /// The number that keys its entries in the store.
    pub number: u32,
    /// Its name (unique in the replica).
    pub name: String,
    /// Only nodes whose id starts with this are indexed.
    pub prefix: String,
    /// What it holds.
    #[serde(flatten)]
    pub kind: IndexKind,
    /// The resolver whose view of each node the entries hold: a replica
    /// opened with another resolver builds the index again.
    pub resolver: String,
    /// Whether it is complete.
    #[serde(flatten)]
    pub state: IndexState,
}

impl IndexDef {
    /// Whether queries can use it.
    pub fn is_ready(&self) -> bool {
        self.state == IndexState::Ready
    }

    /// Whether it covers node `id`.
    pub fn covers(&self, id: &str) -> bool {
        id.starts_with(&self.prefix)
    }

    /// The field path of a field index.
    pub fn field(&self) -> Option<&str> {
        match &self.kind {
            IndexKind::Field { field } => Some(field),
            IndexKind::Links => None,
        }
    }

    /// Appends the entries of `node` (a covered, existing node).
    pub fn entries_of(&self, node: &Node, out: &mut Vec<IndexEntry>) {
        match &self.kind {
            IndexKind::Field { field } => {
                if let Some(value) = field_value(&node.value, field) {
                    out.push(IndexEntry { index: self.number, key: encode_value(value), id: node.id.clone() });
                }
            }
            IndexKind::Links => {
                for (field, target) in node.links() {
                    out.push(IndexEntry { index: self.number, key: link_key(target, Some(field)), id: node.id.clone() });
                }
            }
        }
    }
}

/// What a caller asks for when creating an index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexSpec {
    /// A name; by default the prefix and the field (`user:age`), or the
    /// prefix and `#links`.
    #[serde(default)]
    pub name: Option<String>,
    /// Nodes whose id starts with this (default: all).
    #[serde(default)]
    pub prefix: String,
    /// The field path to index; omit it (with `links`) for back-links.
    #[serde(default)]
    pub field: Option<String>,
    /// A links (back-link) index instead of a field index.
    #[serde(default)]
    pub links: bool,
}

impl IndexSpec {
    /// Checks the spec and makes the definition it asks for.
    pub fn to_def(&self, number: u32, resolver: &str, total: u64) -> Result<IndexDef, Error> {
        let invalid = |reason: String| Error::InvalidIndex { reason };
        let kind = match (&self.field, self.links) {
            (Some(_), true) => return Err(invalid("give a field or links, not both".into())),
            (None, false) => return Err(invalid("give a field to index (or links for back-links)".into())),
            (Some(field), false) => {
                check_field_path(field).map_err(invalid)?;
                IndexKind::Field { field: field.clone() }
            }
            (None, true) => IndexKind::Links,
        };
        if self.prefix.len() > MAX_FIELD_PATH_BYTES || self.prefix.chars().any(char::is_control) {
            return Err(invalid(format!("the prefix must be at most {MAX_FIELD_PATH_BYTES} bytes without control characters")));
        }
        let name = match &self.name {
            Some(name) => name.clone(),
            None => match &kind {
                IndexKind::Field { field } => format!("{}{field}", self.prefix),
                IndexKind::Links => format!("{}#links", self.prefix),
            },
        };
        if name.is_empty() || name.len() > MAX_FIELD_PATH_BYTES || name.chars().any(|c| c.is_control() || c == '/') {
            return Err(invalid(format!("the name {name:?} must be 1 to {MAX_FIELD_PATH_BYTES} bytes without '/' or control characters")));
        }
        Ok(IndexDef {
            number,
            name,
            prefix: self.prefix.clone(),
            kind,
            resolver: resolver.to_owned(),
            state: IndexState::Building { after: None, indexed: 0, total },
        })
    }
}

/// Checks a dot-separated field path: 1 to [`MAX_FIELD_DEPTH`] non-empty
/// steps, at most [`MAX_FIELD_PATH_BYTES`].
pub fn check_field_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > MAX_FIELD_PATH_BYTES {
        return Err(format!("a field path is 1 to {MAX_FIELD_PATH_BYTES} bytes, found {}", path.len()));
    }
    let steps = path.split('.').count();
    if steps > MAX_FIELD_DEPTH || path.split('.').any(str::is_empty) {
        return Err(format!("field path {path:?} must be 1 to {MAX_FIELD_DEPTH} non-empty names separated by dots"));
    }
    Ok(())
}

/// One entry of an index.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IndexEntry {
    /// The index's [`IndexDef::number`].
    pub index: u32,
    /// The encoded value (field index) or target and field (links index).
    pub key: Vec<u8>,
    /// The node the entry is for.
    pub id: String,
}

/// The value at dot-separated `path` inside `value` (through nested
/// objects); `None` where a step is missing, or null (a null field is
/// absent from a node).
pub fn field_value<'a>(value: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut steps = path.split('.');
    let mut at = value.get(steps.next()?)?;
    for step in steps {
        at = at.as_object()?.get(step)?;
    }
    (!at.is_null()).then_some(at)
}

/// Type tags: the first byte of an encoded value, in the order values of
/// different types sort.
pub(crate) mod tag {
    pub const NULL: u8 = 0x10;
    pub const FALSE: u8 = 0x20;
    pub const TRUE: u8 = 0x21;
    pub const NUMBER: u8 = 0x30;
    pub const STRING: u8 = 0x40;
    /// Arrays and objects: indexed (so `exists` finds them) without their
    /// content, which comparisons do not look into.
    pub const OTHER: u8 = 0x50;
    /// Past every tag.
    pub const END: u8 = 0x60;
}

/// Encodes a JSON value so that byte order follows value order: null,
/// false, true, numbers (by value), strings (by UTF-8 bytes, which is
/// code-point order), then arrays and objects (all equal here).
///
/// Numbers become the f64 nearest them, so integers beyond 2^53 that differ
/// may share a key: the order is never wrong, only coarser, and queries
/// check each candidate's exact value.
pub fn encode_value(value: &Value) -> Vec<u8> {
    match value {
        Value::Null => vec![tag::NULL],
        Value::Bool(false) => vec![tag::FALSE],
        Value::Bool(true) => vec![tag::TRUE],
        Value::Number(n) => encode_number(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => {
            let mut out = Vec::with_capacity(1 + s.len());
            out.push(tag::STRING);
            out.extend_from_slice(s.as_bytes());
            out
        }
        Value::Array(_) | Value::Object(_) => vec![tag::OTHER],
    }
}

/// A number's key: the tag, then the f64's bits made to sort as unsigned
/// big-endian integers (negative numbers have every bit flipped, others
/// only the sign bit).
pub fn encode_number(n: f64) -> Vec<u8> {
    // -0.0 and 0.0 are one value.
    let n = if n == 0.0 { 0.0 } else { n };
    let bits = n.to_bits();
    let ordered = if bits >> 63 == 1 { !bits } else { bits ^ (1 << 63) };
    let mut out = Vec::with_capacity(9);
    out.push(tag::NUMBER);
    out.extend_from_slice(&ordered.to_be_bytes());
    out
}

/// A links-index key: the target id, a zero byte (ids hold no control
/// characters), then the field when given (without it, a prefix of every
/// key for the target).
pub fn link_key(target: &str, field: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(target.len() + 1 + field.map_or(0, str::len));
    out.extend_from_slice(target.as_bytes());
    out.push(0);
    if let Some(field) = field {
        out.extend_from_slice(field.as_bytes());
    }
    out
}

/// The field of a links-index key.
pub fn link_key_field(key: &[u8]) -> Option<&str> {
    let at = key.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&key[at + 1..]).ok()
}

/// The entries of every index in `defs` that cover the node, for its view
/// `node` (`None`: absent or deleted), sorted.
pub fn entries_for(defs: &[IndexDef], id: &str, node: Option<&Node>) -> Vec<IndexEntry> {
    let mut out = Vec::new();
    if let Some(node) = node {
        for def in defs.iter().filter(|def| def.covers(id)) {
            def.entries_of(node, &mut out);
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// What changes between a node's old and new entries (both sorted): the
/// entries to remove and those to add.
pub fn diff(old: &[IndexEntry], new: &[IndexEntry], removed: &mut Vec<IndexEntry>, added: &mut Vec<IndexEntry>) {
    removed.extend(old.iter().filter(|e| new.binary_search(e).is_err()).cloned());
    added.extend(new.iter().filter(|e| old.binary_search(e).is_err()).cloned());
}

/// Reads the definitions from their metadata value.
pub fn decode_defs(bytes: Option<&[u8]>) -> Result<Vec<IndexDef>, Error> {
    match bytes {
        None => Ok(Vec::new()),
        Some(bytes) => serde_json::from_slice(bytes).map_err(|err| Error::Decode { what: "index definitions", reason: err.to_string() }),
    }
}

/// The metadata value of `defs`.
pub fn encode_defs(defs: &[IndexDef]) -> Vec<u8> {
    // Plain data: serializing cannot fail.
    serde_json::to_vec(defs).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn encoded_values_sort_as_values() {
        let values = [
            json!(null),
            json!(false),
            json!(true),
            json!(-1e300),
            json!(-5),
            json!(-0.5),
            json!(0),
            json!(1e-9),
            json!(1),
            json!(1.5),
            json!(2),
            json!(9_007_199_254_740_993u64),
            json!(1e300),
            json!(""),
            json!("A"),
            json!("a"),
            json!("ab"),
            json!("b"),
            json!("é"),
            json!([1]),
        ];
        for pair in values.windows(2) {
            assert!(encode_value(&pair[0]) < encode_value(&pair[1]), "{} < {}", pair[0], pair[1]);
        }
        assert_eq!(encode_value(&json!(-0.0)), encode_value(&json!(0)));
        assert_eq!(encode_value(&json!(3)), encode_value(&json!(3.0)));
        assert_eq!(encode_value(&json!({"a": 1})), encode_value(&json!([2])));
    }

    #[test]
    fn field_paths_reach_into_objects_and_skip_nulls() {
        let value = json!({"a": {"b": {"c": 3}}, "n": null, "x": 1}).as_object().unwrap().clone();
        assert_eq!(field_value(&value, "a.b.c"), Some(&json!(3)));
        assert_eq!(field_value(&value, "x"), Some(&json!(1)));
        assert_eq!(field_value(&value, "x.y"), None);
        assert_eq!(field_value(&value, "n"), None);
        assert_eq!(field_value(&value, "missing"), None);
        assert!(check_field_path("a..b").is_err());
        assert!(check_field_path("").is_err());
        assert!(check_field_path("a.".repeat(8).trim_end_matches('.')).is_ok());
        assert!(check_field_path("a.".repeat(9).trim_end_matches('.')).is_err());
    }

    #[test]
    fn specs_are_checked_and_named() {
        let spec = IndexSpec { prefix: "user:".into(), field: Some("age".into()), ..IndexSpec::default() };
        let def = spec.to_def(1, "last-writer-wins", 0).unwrap();
        assert_eq!(def.name, "user:age");
        let links = IndexSpec { links: true, ..IndexSpec::default() }.to_def(2, "lww", 0).unwrap();
        assert_eq!((links.name.as_str(), &links.kind), ("#links", &IndexKind::Links));
        assert!(IndexSpec::default().to_def(1, "lww", 0).is_err());
        assert!(IndexSpec { field: Some("a".into()), links: true, ..IndexSpec::default() }.to_def(1, "lww", 0).is_err());
        assert!(IndexSpec { name: Some("a/b".into()), field: Some("a".into()), ..IndexSpec::default() }.to_def(1, "lww", 0).is_err());
        let round: Vec<IndexDef> = decode_defs(Some(&encode_defs(&[def.clone(), links.clone()]))).unwrap();
        assert_eq!(round, vec![def, links]);
    }

    #[test]
    fn links_keys_group_by_target() {
        let key = link_key("user:1", Some("friend"));
        assert!(key.starts_with(&link_key("user:1", None)));
        assert!(!link_key("user:10", Some("f")).starts_with(&link_key("user:1", None)));
        assert_eq!(link_key_field(&key), Some("friend"));
    }
}
