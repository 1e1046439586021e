//! The merge rule: how one operation changes a node's [`NodeRecord`].
//!
//! The state after applying a set of operations depends only on the set, not
//! on the order or on duplicates, as long as each operation is applied once
//! (the store skips operations it already holds). With `R` the newest create
//! or delete applied to the node, the state is:
//!
//! - **Values**: for each field, every value written by an operation not
//!   older than `R` that no applied update not older than `R` supersedes.
//!   An update supersedes the values its author had seen in that field
//!   ([`OperationWithMetadata::supersedes`]); values it had not seen are
//!   concurrent with it and stay, for the [`ConflictResolver`](crate::ConflictResolver)
//!   to choose from.
//! - **Existence**: the node exists if `R` is a create, or if any field has a
//!   value (an update creates a node; a delete removes every older value).
//! - **Pending supersessions**: an update may arrive before the value it
//!   supersedes. It then leaves a note, and the value is dead on arrival.
//!   A note whose target turns out to write another node (which only a
//!   hostile update names) is never met; it stays until the record is next
//!   written, and changes no value meanwhile.
//! - **Only the past is superseded**: a supersession counts only if the
//!   superseded operation's stamp is lower than the superseding one's. An
//!   author can only have seen values older than its write (the hybrid
//!   logical clock moves past what it observes), so honest writes always
//!   pass; a write that names an operation that does not exist yet (another
//!   origin's future write, which will be stamped later) cannot discard it.
//!   The rule is checked the same way whether the target is already there
//!   or meets a note later, so it does not depend on the order of delivery.
//!
//! Because an update's timestamp is greater than that of every value its
//! author had seen, the newest value of a field is never superseded, so
//! last-writer-wins over the live values is exactly last-writer-wins by
//! (timestamp, origin).
//!
//! The work per operation is linear in the node's record and the
//! operation's size: each field's supersessions are applied in one pass
//! over its values, and new notes are merged into the sorted list at once
//! (an update supersedes at most [`MAX_SUPERSEDED_PER_OP`](crate::MAX_SUPERSEDED_PER_OP)
//! values; see [`OperationWithMetadata::validate`]).

use crate::node::{FieldValue, NodeRecord, PendingSupersession, Reset};
use crate::operation::{OpId, OperationType, OperationWithMetadata, Stamp};
use serde_json::Value;
use std::collections::btree_map::Entry;

/// Applies `op` to `record`. `is_applied` answers whether an operation other
/// than `op` has already been applied; `op` itself must not have been.
pub fn apply(record: &mut NodeRecord, op: &OperationWithMetadata, is_applied: impl Fn(&OpId) -> bool) {
    apply_owned(record, op.clone(), is_applied);
}

/// [`apply`], moving the operation's values into the record instead of
/// copying them (the write path, where the operation is already encoded).
pub fn apply_owned(record: &mut NodeRecord, op: OperationWithMetadata, is_applied: impl Fn(&OpId) -> bool) {
    let stamp = op.stamp();

    let is_reset = matches!(op.operation, OperationType::CreateNode | OperationType::DeleteNode);
    let newer_than_reset = record.reset.as_ref().is_none_or(|r| stamp > r.stamp);
    if is_reset && newer_than_reset {
        record.reset = Some(Reset { stamp: stamp.clone(), deleted: op.operation == OperationType::DeleteNode });
        for values in record.fields.values_mut() {
            values.retain(|v| v.stamp >= stamp);
        }
        record.fields.retain(|_, values| !values.is_empty());
        record.pending.retain(|p| p.by >= stamp);
    }

    // Fields of `op` that an earlier-applied update already superseded (an
    // update newer than `op`: the notes of others are dropped unheeded).
    // Notes whose target was applied to another node (only a hostile
    // update names one) can never be met here: drop them.
    let mut dead_fields = Vec::new();
    record.pending.retain(|p| {
        if p.target != op.id {
            return !is_applied(&p.target);
        }
        if stamp < p.by {
            dead_fields.push(p.field.clone());
        }
        false
    });

    let not_older_than_reset = record.reset.as_ref().is_none_or(|r| stamp >= r.stamp);
    if !not_older_than_reset {
        return;
    }
    let Value::Object(fields) = op.data else {
        return;
    };
    let mut notes = Vec::new();
    for (field, value) in fields {
        if op.operation == OperationType::UpdateNode {
            if let Some(targets) = op.supersedes.get(&field) {
                supersede(record, &field, targets, &stamp, &is_applied, &mut notes);
            }
        }
        if dead_fields.contains(&field) {
            continue;
        }
        let written = FieldValue { value, stamp: stamp.clone() };
        match record.fields.entry(field) {
            // A field's first value gets a vector of exactly one: growing
            // an empty one reserves four (256 bytes), and most fields never
            // hold a second value. On a batch of new nodes that was most of
            // the memory the records took, touched fresh on every commit.
            Entry::Vacant(slot) => {
                slot.insert(vec![written]);
            }
            Entry::Occupied(mut slot) => {
                let values = slot.get_mut();
                let at = values.partition_point(|v| v.stamp < stamp);
                values.insert(at, written);
            }
        }
    }
    add_notes(&mut record.pending, notes);
}

/// Removes the values of `field` written by `targets` that are older than
/// `by`, and adds to `notes` a note for each target not applied yet. One
/// pass over the field's values: the targets are sorted once and looked up.
fn supersede(
    record: &mut NodeRecord,
    field: &str,
    targets: &[OpId],
    by: &Stamp,
    is_applied: &impl Fn(&OpId) -> bool,
    notes: &mut Vec<PendingSupersession>,
) {
    let mut sorted: Vec<&OpId> = targets.iter().collect();
    sorted.sort_unstable();
    sorted.dedup();
    // The targets that hold a value of the field now (whether or not it is
    // superseded: a value newer than `by` stays, and needs no note).
    let mut present = Vec::new();
    if let Some(values) = record.fields.get_mut(field) {
        values.retain(|v| match sorted.binary_search(&&v.stamp.id) {
            Ok(_) => {
                present.push(v.stamp.id.clone());
                v.stamp >= *by
            }
            Err(_) => true,
        });
        if values.is_empty() {
            record.fields.remove(field);
        }
    }
    present.sort_unstable();
    for target in sorted {
        if present.binary_search(target).is_ok() || is_applied(target) {
            // Removed above, kept as newer than `by`, or already gone
            // (superseded by someone else, or older than the newest reset).
            continue;
        }
        notes.push(PendingSupersession { field: field.to_owned(), target: target.clone(), by: by.clone() });
    }
}

/// Merges `notes` into the sorted, duplicate-free `pending` in one pass.
fn add_notes(pending: &mut Vec<PendingSupersession>, mut notes: Vec<PendingSupersession>) {
    if notes.is_empty() {
        return;
    }
    notes.sort_unstable();
    notes.dedup();
    if pending.is_empty() {
        *pending = notes;
        return;
    }
    let old = std::mem::take(pending);
    pending.reserve(old.len() + notes.len());
    let (mut a, mut b) = (old.into_iter().peekable(), notes.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x < y => a.next(),
            (Some(x), Some(y)) if x > y => b.next(),
            (Some(_), Some(_)) => {
                b.next();
                a.next()
            }
            (Some(_), None) => a.next(),
            (None, Some(_)) => b.next(),
            (None, None) => break,
        };
        pending.extend(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Hlc;
    use crate::resolver::{FirstWriterWins, KeepAll, LastWriterWins};
    use serde_json::json;
    use std::collections::{BTreeMap, HashSet};

    fn op(kind: OperationType, origin: &str, seq: u64, t: u64, data: Value, sup: &[(&str, &[(&str, u64)])]) -> OperationWithMetadata {
        OperationWithMetadata {
            id: OpId::new(origin, seq),
            operation: kind,
            node_id: "n".into(),
            data,
            timestamp: Hlc::new(t, 0),
            supersedes: sup
                .iter()
                .map(|(f, ids)| (f.to_string(), ids.iter().map(|&(o, s)| OpId::new(o, s)).collect()))
                .collect::<BTreeMap<_, _>>(),
            prev: Default::default(),
            signature: None,
        }
    }

    fn apply_all(ops: &[&OperationWithMetadata]) -> NodeRecord {
        let mut record = NodeRecord::empty("n");
        let mut applied = HashSet::new();
        for op in ops {
            if applied.insert(op.id.clone()) {
                apply(&mut record, op, |id| applied.contains(id));
            }
        }
        record
    }

    #[test]
    fn sequential_updates_replace_and_concurrent_ones_conflict() {
        use OperationType::*;
        let base = op(CreateNode, "a", 1, 10, json!({"x": 1}), &[]);
        let a2 = op(UpdateNode, "a", 2, 20, json!({"x": 2}), &[("x", &[("a", 1)])]);
        let b1 = op(UpdateNode, "b", 1, 15, json!({"x": 3}), &[("x", &[("a", 1)])]);

        let r = apply_all(&[&base, &a2, &b1]);
        assert_eq!(r, apply_all(&[&b1, &a2, &base]));
        assert_eq!(r.fields["x"].len(), 2, "a2 and b1 are concurrent");
        assert_eq!(r.view(&LastWriterWins).unwrap().value["x"], json!(2));
        assert_eq!(r.view(&FirstWriterWins).unwrap().value["x"], json!(3));
        let keep = r.view(&KeepAll).unwrap();
        assert_eq!(keep.conflicts["x"].len(), 2);

        // A write that saw both resolves the conflict.
        let fix = op(UpdateNode, "b", 2, 30, json!({"x": 4}), &[("x", &[("a", 2), ("b", 1)])]);
        let r = apply_all(&[&fix, &b1, &base, &a2]);
        assert_eq!(r.fields["x"].len(), 1);
        assert!(r.pending.is_empty());
        assert!(r.view(&KeepAll).unwrap().conflicts.is_empty());
    }

    #[test]
    fn delete_is_a_tombstone_and_newer_writes_revive() {
        use OperationType::*;
        let create = op(CreateNode, "a", 1, 10, json!({"x": 1, "y": 1}), &[]);
        let delete = op(DeleteNode, "b", 1, 20, Value::Null, &[]);
        let late_old_update = op(UpdateNode, "a", 2, 15, json!({"x": 2}), &[]);
        let r = apply_all(&[&create, &delete, &late_old_update]);
        assert!(!r.exists());
        assert_eq!(r, apply_all(&[&late_old_update, &delete, &create]));

        let revive = op(UpdateNode, "c", 1, 30, json!({"z": 1}), &[]);
        let r = apply_all(&[&delete, &revive, &create]);
        assert_eq!(r.view(&LastWriterWins).unwrap().value, json!({"z": 1}).as_object().unwrap().clone());
    }

    #[test]
    fn create_replaces_all_fields_and_null_removes_one() {
        use OperationType::*;
        let a = op(CreateNode, "a", 1, 10, json!({"x": 1, "y": 1}), &[]);
        let b = op(CreateNode, "a", 2, 20, json!({"y": 2}), &[]);
        let c = op(UpdateNode, "a", 3, 30, json!({"y": null, "z": 3}), &[("y", &[("a", 2)])]);
        let view = apply_all(&[&c, &a, &b]).view(&LastWriterWins).unwrap();
        assert_eq!(serde_json::Value::Object(view.value), json!({"z": 3}));
    }
}
