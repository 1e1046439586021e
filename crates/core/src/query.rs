//! Queries: nodes by their fields and their links.
//!
//! A [`Query`] selects the nodes under an id prefix whose fields pass every
//! condition, optionally sorted by an indexed field, a page at a time; then
//! graph steps follow links out of (or back-links into) the selected nodes,
//! with conditions at each hop. The planner uses a ready index where one
//! applies and scans otherwise; [`Plan`] says which (`explain`). Either way
//! each candidate is read and checked against every condition under the
//! resolver in effect, so an index only narrows what is read: an answer is
//! exactly what a scan with the same conditions answers.
//!
//! Pure: no I/O but through the [`Store`], no clock.

use crate::error::Error;
use crate::index::{self, encode_value, field_value, link_key, tag, IndexDef, IndexKind};
use crate::node::Node;
use crate::resolver::ConflictResolver;
use crate::store::{IndexRange, Store};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeSet, HashSet};
use std::ops::Bound;

/// The most conditions at one hop.
pub const MAX_CONDITIONS: usize = 32;
/// The most values in one `in` list.
pub const MAX_IN_VALUES: usize = 1_000;
/// The most graph steps (hops) in one query.
pub const MAX_STEPS: usize = 8;
/// The default and the largest page.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 10_000;
/// The most nodes one hop of a graph query may reach (the nodes of every
/// hop are held in memory to take the next).
pub const MAX_FRONTIER: usize = 100_000;
/// The most bytes of a query's JSON (the API checks it before parsing).
pub const MAX_QUERY_BYTES: usize = 64 * 1024;
/// The most bytes of a string operand.
pub const MAX_OPERAND_BYTES: usize = 4_096;

/// How many candidates are read from the store at a time.
const CHUNK: usize = 256;

/// A query, as the API and the CLI take it (JSON).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// Only nodes whose id starts with this.
    #[serde(default)]
    pub prefix: String,
    /// Conditions every selected node passes.
    #[serde(default, rename = "where")]
    pub conditions: Vec<Condition>,
    /// Order by this field (which needs a ready index on it covering the
    /// prefix); without it, the order of the index used, or id order.
    #[serde(default)]
    pub sort: Option<Sort>,
    /// Page size, 1 to [`MAX_LIMIT`] (default [`DEFAULT_LIMIT`]).
    #[serde(default)]
    pub limit: Option<usize>,
    /// The `next` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Graph steps from the selected nodes, in order.
    #[serde(default)]
    pub steps: Vec<Step>,
}

/// One condition on a field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// A dot-separated field path (`age`, `address.city`, `friend.#`).
    pub field: String,
    /// `=`, `!=`, `<`, `<=`, `>`, `>=`, `between` (`value` is `[low,
    /// high]`, both included), `prefix` (a string), `exists` (`value`
    /// true or false, default true), `in` (`value` is a list).
    pub op: String,
    /// The operand.
    #[serde(default)]
    pub value: Value,
}

/// A sort order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sort {
    /// The field.
    pub field: String,
    /// Largest first.
    #[serde(default)]
    pub descending: bool,
}

/// A graph step: from each node, to the nodes it links to (`out`) or that
/// link to it (`in`), through `field` or any link field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// `out` or `in`.
    pub direction: Direction,
    /// Only links in this field.
    #[serde(default)]
    pub field: Option<String>,
    /// Only nodes reached whose id starts with this.
    #[serde(default)]
    pub prefix: String,
    /// Conditions the nodes reached pass.
    #[serde(default, rename = "where")]
    pub conditions: Vec<Condition>,
}

/// Which way a step follows links.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// To the targets of the node's links.
    Out,
    /// To the nodes that link to it (back-links).
    In,
}

/// A checked condition.
#[derive(Clone, Debug, PartialEq)]
pub enum Predicate {
    Eq(Value),
    Ne(Value),
    Lt(Value),
    Le(Value),
    Gt(Value),
    Ge(Value),
    Between(Value, Value),
    Prefix(String),
    Exists(bool),
    In(Vec<Value>),
}

/// A checked condition on a field.
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    pub field: String,
    pub predicate: Predicate,
}

/// How one stage of a query reads its candidates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// `index` or `scan`.
    pub method: String,
    /// The index used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    /// What is read: the prefix scanned, or the part of the index.
    pub detail: String,
}

/// How a query runs: the selection, then each step.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// How the first stage reads.
    pub select: Option<Access>,
    /// How each graph step reads.
    pub steps: Vec<Access>,
}

/// A page of answers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueryPage {
    /// The nodes, as the resolver presents them.
    pub nodes: Vec<Node>,
    /// Pass as `cursor` for the next page; `None` on the last.
    pub next: Option<String>,
    /// How it ran.
    pub plan: Plan,
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidQuery { reason: reason.into() }
}

/// Whether `v` may be compared by order (`<`, `between`): a number or a string.
fn ordered(v: &Value, op: &str) -> Result<Value, Error> {
    match v {
        Value::Number(_) => Ok(v.clone()),
        Value::String(s) if s.len() <= MAX_OPERAND_BYTES => Ok(v.clone()),
        Value::String(_) => Err(invalid(format!("the operand of {op} is longer than {MAX_OPERAND_BYTES} bytes"))),
        other => Err(invalid(format!("{op} compares numbers or strings, not {}", kind_of(other)))),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A scalar operand of `=`, `!=`, `in`.
fn scalar(v: &Value, op: &str) -> Result<Value, Error> {
    match v {
        Value::Array(_) | Value::Object(_) => Err(invalid(format!("{op} takes a string, number, boolean or null, not {}", kind_of(v)))),
        Value::String(s) if s.len() > MAX_OPERAND_BYTES => {
            Err(invalid(format!("the operand of {op} is longer than {MAX_OPERAND_BYTES} bytes")))
        }
        _ => Ok(v.clone()),
    }
}

impl Condition {
    /// Checks the condition.
    pub fn check(&self) -> Result<Filter, Error> {
        index::check_field_path(&self.field).map_err(invalid)?;
        let v = &self.value;
        let op = self.op.as_str();
        let predicate = match op {
            "=" | "==" => Predicate::Eq(scalar(v, op)?),
            "!=" => Predicate::Ne(scalar(v, op)?),
            "<" => Predicate::Lt(ordered(v, op)?),
            "<=" => Predicate::Le(ordered(v, op)?),
            ">" => Predicate::Gt(ordered(v, op)?),
            ">=" => Predicate::Ge(ordered(v, op)?),
            "between" => match v.as_array().map(Vec::as_slice) {
                Some([low, high]) => {
                    let (low, high) = (ordered(low, op)?, ordered(high, op)?);
                    if std::mem::discriminant(&low) != std::mem::discriminant(&high) {
                        return Err(invalid("between takes two numbers or two strings"));
                    }
                    Predicate::Between(low, high)
                }
                _ => return Err(invalid("between takes a list of two values: [low, high]")),
            },
            "prefix" => match v {
                Value::String(s) if s.len() <= MAX_OPERAND_BYTES => Predicate::Prefix(s.clone()),
                Value::String(_) => return Err(invalid(format!("the operand of prefix is longer than {MAX_OPERAND_BYTES} bytes"))),
                other => return Err(invalid(format!("prefix takes a string, not {}", kind_of(other)))),
            },
            "exists" => match v {
                Value::Null => Predicate::Exists(true),
                Value::Bool(b) => Predicate::Exists(*b),
                other => return Err(invalid(format!("exists takes true or false, not {}", kind_of(other)))),
            },
            "in" => match v {
                Value::Array(values) if values.is_empty() => return Err(invalid("in takes a non-empty list")),
                Value::Array(values) if values.len() > MAX_IN_VALUES => {
                    return Err(invalid(format!("in takes at most {MAX_IN_VALUES} values, found {}", values.len())))
                }
                Value::Array(values) => Predicate::In(values.iter().map(|v| scalar(v, op)).collect::<Result<_, _>>()?),
                other => return Err(invalid(format!("in takes a list, not {}", kind_of(other)))),
            },
            other => return Err(invalid(format!("unknown operator {other:?}: use =, !=, <, <=, >, >=, between, prefix, exists or in"))),
        };
        Ok(Filter { field: self.field.clone(), predicate })
    }
}

/// Compares two numbers or two strings; `None` for other pairs.
fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let exact = |n: &serde_json::Number| n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from));
            match (exact(x), exact(y)) {
                (Some(x), Some(y)) => Some(x.cmp(&y)),
                _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
            }
        }
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Whether two scalars are equal (numbers by value: 3 = 3.0).
fn equal(a: &Value, b: &Value) -> bool {
    match compare(a, b) {
        Some(order) => order.is_eq(),
        None => a == b,
    }
}

impl Filter {
    /// Whether `node` passes.
    pub fn matches(&self, node: &Node) -> bool {
        let value = field_value(&node.value, &self.field);
        let Some(value) = value else { return self.predicate == Predicate::Exists(false) };
        use std::cmp::Ordering::*;
        match &self.predicate {
            Predicate::Eq(v) => equal(value, v),
            Predicate::Ne(v) => !equal(value, v),
            Predicate::Lt(v) => compare(value, v) == Some(Less),
            Predicate::Le(v) => matches!(compare(value, v), Some(Less | Equal)),
            Predicate::Gt(v) => compare(value, v) == Some(Greater),
            Predicate::Ge(v) => matches!(compare(value, v), Some(Greater | Equal)),
            Predicate::Between(low, high) => {
                matches!(compare(value, low), Some(Greater | Equal)) && matches!(compare(value, high), Some(Less | Equal))
            }
            Predicate::Prefix(p) => value.as_str().is_some_and(|s| s.starts_with(p.as_str())),
            Predicate::Exists(present) => *present,
            Predicate::In(values) => values.iter().any(|v| equal(value, v)),
        }
    }

    /// The key ranges of a field index that hold every value passing, or
    /// `None` when the index cannot narrow it (`!=`, `exists: false`).
    /// Ranges are wide where numbers lose precision as keys: candidates
    /// are checked anyway.
    fn key_ranges(&self) -> Option<Vec<KeyRange>> {
        let tag_range = |t: u8| KeyRange { lower: Bound::Included(vec![t]), upper: Bound::Excluded(vec![t + 1]) };
        let type_tag = |v: &Value| if v.is_number() { tag::NUMBER } else { tag::STRING };
        let point = |v: &Value| {
            let key = encode_value(v);
            KeyRange { lower: Bound::Included(key.clone()), upper: Bound::Included(key) }
        };
        Some(match &self.predicate {
            Predicate::Eq(v) => vec![point(v)],
            Predicate::In(values) => {
                let mut keys: Vec<Vec<u8>> = values.iter().map(encode_value).collect();
                keys.sort_unstable();
                keys.dedup();
                keys.into_iter().map(|key| KeyRange { lower: Bound::Included(key.clone()), upper: Bound::Included(key) }).collect()
            }
            Predicate::Lt(v) | Predicate::Le(v) => {
                vec![KeyRange { lower: tag_range(type_tag(v)).lower, upper: Bound::Included(encode_value(v)) }]
            }
            Predicate::Gt(v) | Predicate::Ge(v) => {
                vec![KeyRange { lower: Bound::Included(encode_value(v)), upper: tag_range(type_tag(v)).upper }]
            }
            Predicate::Between(low, high) => {
                vec![KeyRange { lower: Bound::Included(encode_value(low)), upper: Bound::Included(encode_value(high)) }]
            }
            Predicate::Prefix(p) => {
                let start = encode_value(&Value::String(p.clone()));
                let mut end = start.clone();
                // No UTF-8 string holds the byte 0xFF: past every extension.
                end.push(0xFF);
                vec![KeyRange { lower: Bound::Included(start), upper: Bound::Excluded(end) }]
            }
            Predicate::Exists(true) => vec![KeyRange { lower: Bound::Included(vec![tag::NULL]), upper: Bound::Excluded(vec![tag::END]) }],
            Predicate::Exists(false) | Predicate::Ne(_) => return None,
        })
    }
}

/// A position in an index: (encoded key, node id).
type Position = Bound<(Vec<u8>, String)>;

/// A range of encoded keys (all node ids of each key).
#[derive(Clone, Debug, PartialEq, Eq)]
struct KeyRange {
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
}

impl KeyRange {
    fn everything() -> Self {
        KeyRange { lower: Bound::Unbounded, upper: Bound::Unbounded }
    }

    /// The range of both.
    fn intersect(&self, other: &KeyRange) -> KeyRange {
        let lower = match (&self.lower, &other.lower) {
            (Bound::Unbounded, b) | (b, Bound::Unbounded) => b.clone(),
            (Bound::Included(a), Bound::Included(b)) => Bound::Included(a.max(b).clone()),
            (Bound::Excluded(a), Bound::Excluded(b)) => Bound::Excluded(a.max(b).clone()),
            (Bound::Included(i), Bound::Excluded(e)) | (Bound::Excluded(e), Bound::Included(i)) => {
                if i > e {
                    Bound::Included(i.clone())
                } else {
                    Bound::Excluded(e.clone())
                }
            }
        };
        let upper = match (&self.upper, &other.upper) {
            (Bound::Unbounded, b) | (b, Bound::Unbounded) => b.clone(),
            (Bound::Included(a), Bound::Included(b)) => Bound::Included(a.min(b).clone()),
            (Bound::Excluded(a), Bound::Excluded(b)) => Bound::Excluded(a.min(b).clone()),
            (Bound::Included(i), Bound::Excluded(e)) | (Bound::Excluded(e), Bound::Included(i)) => {
                if i < e {
                    Bound::Included(i.clone())
                } else {
                    Bound::Excluded(e.clone())
                }
            }
        };
        KeyRange { lower, upper }
    }

    /// As a range of (key, id) positions.
    fn positions(&self) -> (Position, Position) {
        // (key, "") precedes every id of key; (key ++ [0], "") follows them.
        let after = |key: &Vec<u8>| {
            let mut next = key.clone();
            next.push(0);
            (next, String::new())
        };
        let lower = match &self.lower {
            Bound::Included(key) => Bound::Included((key.clone(), String::new())),
            Bound::Excluded(key) => Bound::Included(after(key)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let upper = match &self.upper {
            Bound::Included(key) => Bound::Excluded(after(key)),
            Bound::Excluded(key) => Bound::Excluded((key.clone(), String::new())),
            Bound::Unbounded => Bound::Unbounded,
        };
        (lower, upper)
    }
}

/// A query checked against the limits.
#[derive(Clone, Debug)]
pub struct CheckedQuery {
    /// The query as given.
    pub source: Query,
    pub prefix: String,
    pub filters: Vec<Filter>,
    pub sort: Option<Sort>,
    pub limit: usize,
    pub cursor: Option<Cursor>,
    pub steps: Vec<(Step, Vec<Filter>)>,
}

/// Where a page ends: the index position, or the node id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The index whose order the pages follow (`None`: id order).
    #[serde(default)]
    pub index: Option<String>,
    /// The encoded key (hex) in that index.
    #[serde(default)]
    pub key: String,
    /// The last node id of the page.
    pub id: String,
}

impl Cursor {
    fn encode(&self) -> String {
        hex(&serde_json::to_vec(self).unwrap_or_default())
    }

    fn decode(text: &str) -> Result<Self, Error> {
        let bad = || invalid("the cursor is not one this node gave (pass `next` of the previous page unchanged)");
        let bytes = unhex(text).ok_or_else(bad)?;
        let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        unhex(&cursor.key).ok_or_else(bad)?;
        Ok(cursor)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

fn check_filters(conditions: &[Condition], at: &str) -> Result<Vec<Filter>, Error> {
    if conditions.len() > MAX_CONDITIONS {
        return Err(invalid(format!("{at} has {} conditions; the limit is {MAX_CONDITIONS}", conditions.len())));
    }
    conditions.iter().map(Condition::check).collect()
}

impl Query {
    /// Parses a query from JSON, with the limits.
    pub fn from_json(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_QUERY_BYTES {
            return Err(invalid(format!("the query is {} bytes; the limit is {MAX_QUERY_BYTES}", bytes.len())));
        }
        serde_json::from_slice(bytes).map_err(|err| invalid(format!("not a query: {err}")))
    }

    /// Checks every part against the limits and the operators' operands.
    pub fn check(&self) -> Result<CheckedQuery, Error> {
        let limit = match self.limit.unwrap_or(DEFAULT_LIMIT) {
            n @ 1..=MAX_LIMIT => n,
            n => return Err(invalid(format!("limit {n} is out of range: 1 to {MAX_LIMIT}"))),
        };
        if self.steps.len() > MAX_STEPS {
            return Err(invalid(format!("the query takes {} graph steps; the limit (depth) is {MAX_STEPS}", self.steps.len())));
        }
        if self.prefix.len() > index::MAX_FIELD_PATH_BYTES {
            return Err(invalid(format!("the prefix is longer than {} bytes", index::MAX_FIELD_PATH_BYTES)));
        }
        let filters = check_filters(&self.conditions, "where")?;
        if let Some(sort) = &self.sort {
            index::check_field_path(&sort.field).map_err(invalid)?;
            if !self.steps.is_empty() {
                return Err(invalid("sort applies to a query without graph steps (the nodes a graph query reaches come in id order)"));
            }
        }
        let mut steps = Vec::with_capacity(self.steps.len());
        for (i, step) in self.steps.iter().enumerate() {
            if let Some(field) = &step.field {
                if field.is_empty() || field.len() > index::MAX_FIELD_PATH_BYTES || field.contains('.') {
                    return Err(invalid(format!("step {} follows field {field:?}: give one top-level field name", i + 1)));
                }
            }
            steps.push((step.clone(), check_filters(&step.conditions, &format!("step {}", i + 1))?));
        }
        let cursor = self.cursor.as_deref().map(Cursor::decode).transpose()?;
        Ok(CheckedQuery { source: self.clone(), prefix: self.prefix.clone(), filters, sort: self.sort.clone(), limit, cursor, steps })
    }
}

/// Runs `query` on `store`, with the indexes `defs` (only ready ones built
/// under `resolver` are used) and `resolver` presenting each node.
pub fn run<S: Store + ?Sized>(store: &S, resolver: &dyn ConflictResolver, defs: &[IndexDef], query: &Query) -> Result<QueryPage, Error> {
    let query = query.check()?;
    let usable: Vec<&IndexDef> = defs.iter().filter(|d| d.is_ready() && d.resolver == resolver.name()).collect();
    if query.steps.is_empty() {
        return select_page(store, resolver, &usable, &query);
    }
    graph(store, resolver, &usable, &query)
}

/// The field index that covers `prefix` for `field`, if ready.
fn field_index<'a>(usable: &[&'a IndexDef], prefix: &str, field: &str) -> Option<&'a IndexDef> {
    usable.iter().copied().find(|d| d.field() == Some(field) && prefix.starts_with(&d.prefix))
}

/// How the selection reads: an index and the key ranges to read in it
/// (ascending key order; several only for `in`), or a scan.
enum Selection<'a> {
    Index { def: &'a IndexDef, ranges: Vec<KeyRange>, descending: bool },
    Scan,
}

fn choose<'a>(usable: &[&'a IndexDef], query: &CheckedQuery) -> Result<Selection<'a>, Error> {
    // The ranges the conditions on `field` allow (their intersection), or
    // `None` when none narrows it.
    let narrowed = |field: &str| -> Option<Vec<KeyRange>> {
        let mut single = KeyRange::everything();
        let mut narrowed = false;
        let mut list: Option<Vec<KeyRange>> = None;
        for filter in query.filters.iter().filter(|f| f.field == field) {
            match filter.key_ranges() {
                Some(ranges) if ranges.len() == 1 => {
                    single = single.intersect(&ranges[0]);
                    narrowed = true;
                }
                Some(ranges) => list = list.or(Some(ranges)),
                None => {}
            }
        }
        match (narrowed, list) {
            (true, _) => Some(vec![single]),
            (false, Some(list)) => Some(list),
            (false, None) => None,
        }
    };
    if let Some(sort) = &query.sort {
        let def = field_index(usable, &query.prefix, &sort.field).ok_or_else(|| {
            invalid(format!(
                "sort by {:?} needs a ready index on that field covering prefix {:?} (pluresdb index create --prefix {:?} {})",
                sort.field, query.prefix, query.prefix, sort.field
            ))
        })?;
        let ranges = narrowed(&sort.field).unwrap_or_else(|| vec![KeyRange::everything()]);
        return Ok(Selection::Index { def, ranges, descending: sort.descending });
    }
    // The most selective kind of condition with an index: equality and
    // lists first, then ranges and prefixes, then `exists`.
    let rank = |f: &Filter| match f.predicate {
        Predicate::Eq(_) => 0,
        Predicate::In(_) => 1,
        Predicate::Between(..) | Predicate::Prefix(_) => 2,
        Predicate::Lt(_) | Predicate::Le(_) | Predicate::Gt(_) | Predicate::Ge(_) => 3,
        Predicate::Exists(true) => 4,
        Predicate::Exists(false) | Predicate::Ne(_) => 9,
    };
    let mut candidates: Vec<&Filter> = query.filters.iter().filter(|f| rank(f) < 9).collect();
    candidates.sort_by_key(|f| rank(f));
    for filter in candidates {
        if let (Some(def), Some(ranges)) = (field_index(usable, &query.prefix, &filter.field), narrowed(&filter.field)) {
            return Ok(Selection::Index { def, ranges, descending: false });
        }
    }
    Ok(Selection::Scan)
}

fn describe(selection: &Selection<'_>, prefix: &str) -> Access {
    match selection {
        Selection::Index { def, ranges, descending } => Access {
            method: "index".into(),
            index: Some(def.name.clone()),
            detail: format!(
                "{} range{} of {}{}",
                ranges.len(),
                if ranges.len() == 1 { "" } else { "s" },
                def.field().unwrap_or("links"),
                if *descending { ", descending" } else { "" }
            ),
        },
        Selection::Scan => Access { method: "scan".into(), index: None, detail: format!("every node under prefix {prefix:?}") },
    }
}

/// Reads the nodes of `ids` and keeps those that exist.
fn read_nodes<S: Store + ?Sized>(store: &S, resolver: &dyn ConflictResolver, ids: &[&str]) -> Result<Vec<Option<Node>>, Error> {
    Ok(store.nodes(ids)?.into_iter().map(|r| r.and_then(|r| r.view(resolver))).collect())
}

/// The selection, a page at a time (or, with `limit` = usize::MAX and no
/// cursor, all of it, for a graph query's first hop).
fn select_page<S: Store + ?Sized>(
    store: &S,
    resolver: &dyn ConflictResolver,
    usable: &[&IndexDef],
    query: &CheckedQuery,
) -> Result<QueryPage, Error> {
    let selection = choose(usable, query)?;
    let plan = Plan { select: Some(describe(&selection, &query.prefix)), steps: Vec::new() };
    let passes = |node: &Node| node.id.starts_with(&query.prefix) && query.filters.iter().all(|f| f.matches(node));
    let limit = query.limit;
    let mut nodes = Vec::new();
    let mut last: Option<Cursor> = None;
    match &selection {
        Selection::Scan => {
            let after = match &query.cursor {
                Some(Cursor { index: None, id, .. }) => Some(id.clone()),
                Some(_) => return Err(invalid("the cursor belongs to a page read through an index; this query reads by id: start again")),
                None => None,
            };
            let mut after = after;
            'scan: loop {
                let page = store.scan_nodes(&query.prefix, after.as_deref(), CHUNK)?;
                let Some(end) = page.last() else { break };
                after = Some(end.id.clone());
                let exhausted = page.len() < CHUNK;
                for record in &page {
                    if let Some(node) = record.view(resolver).filter(|n| passes(n)) {
                        if nodes.len() == limit {
                            break 'scan;
                        }
                        last = Some(Cursor { index: None, key: String::new(), id: node.id.clone() });
                        nodes.push(node);
                    }
                }
                if exhausted {
                    // Nothing follows: no next page.
                    return Ok(QueryPage { nodes, next: None, plan });
                }
            }
            let more = nodes.len() == limit;
            Ok(QueryPage { nodes, next: if more { last.map(|c| c.encode()) } else { None }, plan })
        }
        Selection::Index { def, ranges, descending } => {
            let field = def.field().unwrap_or_default().to_owned();
            let start = match &query.cursor {
                Some(Cursor { index: Some(name), key, id }) if *name == def.name => Some((unhex(key).unwrap_or_default(), id.clone())),
                Some(_) => {
                    return Err(invalid(format!(
                        "the cursor belongs to a page read another way; this query reads index {:?}: start again",
                        def.name
                    )))
                }
                None => None,
            };
            let mut ordered: Vec<&KeyRange> = ranges.iter().collect();
            if *descending {
                ordered.reverse();
            }
            let mut more = false;
            'ranges: for range in ordered {
                let (mut lower, mut upper) = range.positions();
                // Resume after the cursor.
                if let Some(position) = &start {
                    if *descending {
                        upper = tighter_upper(upper, Bound::Excluded(position.clone()));
                    } else {
                        lower = tighter_lower(lower, Bound::Excluded(position.clone()));
                    }
                }
                loop {
                    let entries = store.index_range(
                        &IndexRange { index: def.number, lower: lower.clone(), upper: upper.clone(), descending: *descending },
                        CHUNK,
                    )?;
                    let Some(end) = entries.last() else { break };
                    let end = end.clone();
                    let exhausted = entries.len() < CHUNK;
                    let ids: Vec<&str> = entries.iter().map(|(_, id)| id.as_str()).collect();
                    for ((key, _), node) in entries.iter().zip(read_nodes(store, resolver, &ids)?) {
                        // The entry is this node's current value (a write
                        // between two reads may have moved it).
                        let Some(node) = node.filter(|n| passes(n)) else { continue };
                        if field_value(&node.value, &field).map(encode_value).as_ref() != Some(key) {
                            continue;
                        }
                        if nodes.len() == limit {
                            more = true;
                            break 'ranges;
                        }
                        last = Some(Cursor { index: Some(def.name.clone()), key: hex(key), id: node.id.clone() });
                        nodes.push(node);
                    }
                    if exhausted {
                        break;
                    }
                    if *descending {
                        upper = Bound::Excluded(end);
                    } else {
                        lower = Bound::Excluded(end);
                    }
                }
            }
            Ok(QueryPage { nodes, next: if more { last.map(|c| c.encode()) } else { None }, plan })
        }
    }
}

fn tighter_lower(a: Position, b: Position) -> Position {
    match (&a, &b) {
        (Bound::Unbounded, _) => b,
        (_, Bound::Unbounded) => a,
        (Bound::Included(x) | Bound::Excluded(x), Bound::Included(y) | Bound::Excluded(y)) => {
            if x > y || (x == y && matches!(a, Bound::Excluded(_))) {
                a
            } else {
                b
            }
        }
    }
}

fn tighter_upper(a: Position, b: Position) -> Position {
    match (&a, &b) {
        (Bound::Unbounded, _) => b,
        (_, Bound::Unbounded) => a,
        (Bound::Included(x) | Bound::Excluded(x), Bound::Included(y) | Bound::Excluded(y)) => {
            if x < y || (x == y && matches!(a, Bound::Excluded(_))) {
                a
            } else {
                b
            }
        }
    }
}

/// A graph query: the whole selection, then each hop, then a page of the
/// last hop's nodes in id order.
fn graph<S: Store + ?Sized>(
    store: &S,
    resolver: &dyn ConflictResolver,
    usable: &[&IndexDef],
    query: &CheckedQuery,
) -> Result<QueryPage, Error> {
    let after = match &query.cursor {
        Some(Cursor { index: None, id, .. }) => Some(id.clone()),
        Some(_) => return Err(invalid("the cursor belongs to another query: start again")),
        None => None,
    };
    let first = CheckedQuery { limit: MAX_FRONTIER + 1, cursor: None, steps: Vec::new(), ..query.clone() };
    let selected = select_page(store, resolver, usable, &first)?;
    let mut plan = selected.plan;
    if selected.nodes.len() > MAX_FRONTIER {
        return Err(invalid(format!("the selection reaches more than {MAX_FRONTIER} nodes; narrow it before the graph steps")));
    }
    let mut frontier: Vec<Node> = selected.nodes;
    for (i, (step, filters)) in query.steps.iter().enumerate() {
        let passes = |node: &Node| node.id.starts_with(&step.prefix) && filters.iter().all(|f| f.matches(node));
        let mut reached: BTreeSet<String> = BTreeSet::new();
        match step.direction {
            Direction::Out => {
                plan.steps.push(Access { method: "links".into(), index: None, detail: "the links of each node".into() });
                for node in &frontier {
                    for (field, target) in node.links() {
                        if step.field.as_deref().is_none_or(|f| f == field) && target.starts_with(&step.prefix) {
                            reached.insert(target.to_owned());
                        }
                    }
                }
            }
            Direction::In => {
                let links = usable.iter().copied().find(|d| d.kind == IndexKind::Links && step.prefix.starts_with(&d.prefix));
                match links {
                    Some(def) => {
                        plan.steps.push(Access { method: "index".into(), index: Some(def.name.clone()), detail: "back-links".into() });
                        for node in &frontier {
                            let key = link_key(&node.id, step.field.as_deref());
                            // A field given: exactly that key; none: every
                            // key that starts with target and the zero byte.
                            let upper = match &step.field {
                                Some(_) => {
                                    let mut end = key.clone();
                                    end.push(0);
                                    Bound::Excluded((end, String::new()))
                                }
                                None => {
                                    let mut end = key.clone();
                                    if let Some(zero) = end.last_mut() {
                                        *zero = 1;
                                    }
                                    Bound::Excluded((end, String::new()))
                                }
                            };
                            let mut lower = Bound::Included((key.clone(), String::new()));
                            loop {
                                let range = IndexRange { index: def.number, lower: lower.clone(), upper: upper.clone(), descending: false };
                                let entries = store.index_range(&range, CHUNK)?;
                                let Some(end) = entries.last().cloned() else { break };
                                for (_, source) in &entries {
                                    if source.starts_with(&step.prefix) {
                                        reached.insert(source.clone());
                                    }
                                }
                                if entries.len() < CHUNK {
                                    break;
                                }
                                lower = Bound::Excluded(end);
                            }
                            if reached.len() > MAX_FRONTIER {
                                break;
                            }
                        }
                    }
                    None => {
                        plan.steps.push(Access {
                            method: "scan".into(),
                            index: None,
                            detail: format!("every node under prefix {:?} for links to the nodes reached", step.prefix),
                        });
                        let targets: HashSet<&str> = frontier.iter().map(|n| n.id.as_str()).collect();
                        let mut after: Option<String> = None;
                        loop {
                            let page = store.scan_nodes(&step.prefix, after.as_deref(), CHUNK)?;
                            let Some(end) = page.last() else { break };
                            after = Some(end.id.clone());
                            for node in page.iter().filter_map(|r| r.view(resolver)) {
                                let links_here = node
                                    .links()
                                    .any(|(field, target)| step.field.as_deref().is_none_or(|f| f == field) && targets.contains(target));
                                if links_here {
                                    reached.insert(node.id.clone());
                                }
                            }
                            if page.len() < CHUNK || reached.len() > MAX_FRONTIER {
                                break;
                            }
                        }
                    }
                }
            }
        }
        if reached.len() > MAX_FRONTIER {
            return Err(invalid(format!("step {} reaches more than {MAX_FRONTIER} nodes; narrow it", i + 1)));
        }
        let ids: Vec<&str> = reached.iter().map(String::as_str).collect();
        let mut next = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            next.extend(read_nodes(store, resolver, chunk)?.into_iter().flatten().filter(|n| passes(n)));
        }
        frontier = next;
    }
    // Id order (the frontier is read in id order), after the cursor.
    let mut nodes: Vec<Node> = frontier.into_iter().filter(|n| after.as_deref().is_none_or(|a| n.id.as_str() > a)).collect();
    let more = nodes.len() > query.limit;
    nodes.truncate(query.limit);
    let next = match (more, nodes.last()) {
        (true, Some(last)) => Some(Cursor { index: None, key: String::new(), id: last.id.clone() }.encode()),
        _ => None,
    };
    Ok(QueryPage { nodes, next, plan })
}

/// Whether `node` is selected by `query` ignoring graph steps, sort and
/// paging: what a live query follows.
pub fn selects(query: &CheckedQuery, node: &Node) -> bool {
    node.id.starts_with(&query.prefix) && query.filters.iter().all(|f| f.matches(node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bad(query: Value) -> String {
        let query: Query = match serde_json::from_value(query) {
            Ok(q) => q,
            Err(err) => return err.to_string(),
        };
        match query.check() {
            Ok(_) => panic!("accepted: {query:?}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn each_kind_of_bad_query_is_refused_with_what_is_wrong() {
        assert!(bad(json!({"where": [{"field": "age", "op": "~", "value": 1}]})).contains("unknown operator"));
        assert!(bad(json!({"where": [{"field": "", "op": "=", "value": 1}]})).contains("field path"));
        assert!(bad(json!({"where": [{"field": "a..b", "op": "=", "value": 1}]})).contains("field path"));
        assert!(bad(json!({"where": [{"field": "a", "op": "<", "value": true}]})).contains("compares numbers or strings"));
        assert!(bad(json!({"where": [{"field": "a", "op": "between", "value": [1]}]})).contains("two values"));
        assert!(bad(json!({"where": [{"field": "a", "op": "between", "value": [1, "x"]}]})).contains("two numbers or two strings"));
        assert!(bad(json!({"where": [{"field": "a", "op": "prefix", "value": 3}]})).contains("prefix takes a string"));
        assert!(bad(json!({"where": [{"field": "a", "op": "exists", "value": 3}]})).contains("true or false"));
        assert!(bad(json!({"where": [{"field": "a", "op": "in", "value": []}]})).contains("non-empty"));
        assert!(bad(json!({"where": [{"field": "a", "op": "in", "value": (0..1_001).collect::<Vec<_>>()}]})).contains("at most 1000"));
        assert!(bad(json!({"where": [{"field": "a", "op": "=", "value": [1]}]})).contains("not a list"));
        assert!(bad(json!({"limit": 0})).contains("out of range"));
        assert!(bad(json!({"limit": 10_001})).contains("out of range"));
        let steps: Vec<Value> = (0..9).map(|_| json!({"direction": "out"})).collect();
        assert!(bad(json!({"steps": steps})).contains("depth"));
        let many: Vec<Value> = (0..33).map(|_| json!({"field": "a", "op": "exists"})).collect();
        assert!(bad(json!({"where": many})).contains("conditions"));
        assert!(bad(json!({"cursor": "zz"})).contains("cursor"));
        assert!(bad(json!({"sort": {"field": "a"}, "steps": [{"direction": "in"}]})).contains("sort applies"));
        assert!(bad(json!({"steps": [{"direction": "out", "field": "a.b"}]})).contains("top-level field"));
        assert!(bad(json!({"wher": []})).contains("unknown field"));
        let huge = vec![b' '; MAX_QUERY_BYTES + 1];
        assert!(Query::from_json(&huge).unwrap_err().to_string().contains("limit is 65536"));
    }

    #[test]
    fn filters_compare_numbers_by_value_and_strings_by_bytes() {
        let node = Node {
            id: "n:1".into(),
            value: json!({"a": 3, "s": "abc", "big": 9_007_199_254_740_993u64}).as_object().unwrap().clone(),
            updated_at: Default::default(),
            conflicts: Default::default(),
        };
        let check =
            |field: &str, op: &str, value: Value| Condition { field: field.into(), op: op.into(), value }.check().unwrap().matches(&node);
        assert!(check("a", "=", json!(3.0)));
        assert!(check("a", "in", json!([1, 3])));
        assert!(!check("a", "<", json!(3)));
        assert!(check("a", "between", json!([3, 3])));
        assert!(!check("big", "=", json!(9_007_199_254_740_992u64)), "exact for large integers");
        assert!(check("s", "prefix", json!("ab")));
        assert!(check("s", ">", json!("abb")));
        assert!(!check("s", ">", json!(1)), "different types never compare");
        assert!(check("missing", "exists", json!(false)));
        assert!(!check("missing", "!=", json!(1)), "a missing field passes only exists: false");
    }
}
