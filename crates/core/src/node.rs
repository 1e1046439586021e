//! Nodes: the stored merge state of one node ([`NodeRecord`]) and the view an
//! application reads ([`Node`]).

use crate::clock::Hlc;
use crate::operation::{OpId, Stamp};
use crate::resolver::ConflictResolver;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The key of a link property: `{"#": "other:id"}` is an edge to `other:id`.
pub const LINK_KEY: &str = "#";

/// One value written to a field, with the stamp of the operation that wrote it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldValue {
    /// The JSON value; `null` means the field was removed.
    pub value: Value,
    /// The operation that wrote it.
    pub stamp: Stamp,
}

/// The newest operation that replaced or deleted the whole node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reset {
    /// The create or delete operation.
    pub stamp: Stamp,
    /// `true` for a delete (a tombstone), `false` for a create.
    pub deleted: bool,
}

/// A value that an applied operation superseded before the operation that
/// wrote it arrived. When the target arrives, its value for `field` is dead
/// on arrival.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PendingSupersession {
    /// The field.
    pub field: String,
    /// The operation whose value is superseded.
    pub target: OpId,
    /// The operation that superseded it.
    pub by: Stamp,
}

/// The merge state of one node, as stored.
///
/// It is a function of the set of operations applied to the node and not of
/// their order: see [`crate::merge`]. For each field it keeps every value no
/// applied operation has superseded (usually one; several after concurrent
/// writes), so a conflict resolver can choose among them when the node is
/// read and an application can see and resolve conflicts.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node id.
    pub id: String,
    /// The newest create or delete; values older than it are gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<Reset>,
    /// For each field, its live values in ascending stamp order.
    #[serde(default)]
    pub fields: BTreeMap<String, Vec<FieldValue>>,
    /// Supersessions whose target has not arrived yet, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<PendingSupersession>,
}

impl NodeRecord {
    /// A record for a node no operation has touched.
    pub fn empty(id: impl Into<String>) -> Self {
        Self { id: id.into(), ..Self::default() }
    }

    /// Whether the node exists: it was created, or fields were written to
    /// it, after its newest delete.
    pub fn exists(&self) -> bool {
        match &self.reset {
            Some(reset) if !reset.deleted => true,
            _ => !self.fields.is_empty(),
        }
    }

    /// The operations that produced the current state: the newest create or
    /// delete and every operation with a live field value, in stamp order.
    pub fn contributing_ops(&self) -> Vec<&Stamp> {
        let mut stamps: Vec<&Stamp> = self.reset.iter().map(|r| &r.stamp).collect();
        stamps.extend(self.fields.values().flatten().map(|v| &v.stamp));
        stamps.sort();
        stamps.dedup();
        stamps
    }

    /// The newest timestamp among the operations that produced the state.
    pub fn updated_at(&self) -> Hlc {
        self.contributing_ops().last().map(|s| s.hlc).unwrap_or(Hlc::ZERO)
    }

    /// What an application sees: the fields with the resolver's choice among
    /// concurrent values, or `None` if the node does not exist.
    pub fn view(&self, resolver: &dyn ConflictResolver) -> Option<Node> {
        if !self.exists() {
            return None;
        }
        let mut value = Map::new();
        let mut conflicts = BTreeMap::new();
        for (field, candidates) in &self.fields {
            let winner = match candidates.len() {
                0 => continue,
                1 => &candidates[0],
                n => {
                    if resolver.keeps_conflicts() {
                        conflicts.insert(field.clone(), candidates.clone());
                    }
                    let pick = resolver.pick(&self.id, field, candidates);
                    &candidates[pick.min(n - 1)]
                }
            };
            if !winner.value.is_null() {
                value.insert(field.clone(), winner.value.clone());
            }
        }
        Some(Node { id: self.id.clone(), value, updated_at: self.updated_at(), conflicts })
    }
}

/// A node as an application reads it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The node id.
    pub id: String,
    /// The properties. A property `{"#": "other:id"}` links to another node.
    pub value: Map<String, Value>,
    /// The timestamp of the newest operation that contributes to the value.
    pub updated_at: Hlc,
    /// Fields that concurrent writes left with several values, each with all
    /// of them in stamp order. Only filled when the resolver keeps conflicts
    /// (see [`crate::KeepAll`]); write the field to resolve it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub conflicts: BTreeMap<String, Vec<FieldValue>>,
}

impl Node {
    /// The node this node's `field` links to, if that field is a link.
    pub fn link(&self, field: &str) -> Option<&str> {
        self.value.get(field).and_then(link_target)
    }

    /// Every link of this node as `(field, target id)`, in field order.
    pub fn links(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.value.iter().filter_map(|(field, v)| link_target(v).map(|to| (field.as_str(), to)))
    }
}

/// The target of a link value `{"#": "other:id"}`, or `None` if `value` is
/// not a link.
pub fn link_target(value: &Value) -> Option<&str> {
    match value {
        Value::Object(map) if map.len() == 1 => map.get(LINK_KEY).and_then(Value::as_str),
        _ => None,
    }
}
