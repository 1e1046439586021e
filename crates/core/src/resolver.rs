//! Conflict resolvers: which of a field's concurrent values an application
//! sees.
//!
//! Concurrent values are writes to the same field whose authors had not seen
//! each other's write. Every replica keeps all of them (so the state converges
//! whatever the order of delivery) and the resolver chooses the visible one
//! when a node is read. A resolver must be a deterministic function of its
//! arguments, or replicas will show different values for the same state.

use crate::node::FieldValue;
use std::fmt;
use std::sync::Arc;

/// Chooses the visible value among a field's concurrent values.
pub trait ConflictResolver: Send + Sync {
    /// A short name for logs and status output.
    fn name(&self) -> &str;

    /// Returns the index in `candidates` of the visible value. `candidates`
    /// holds two or more values in ascending stamp order. An index out of
    /// range is treated as the last candidate.
    fn pick(&self, node_id: &str, field: &str, candidates: &[FieldValue]) -> usize;

    /// Whether readers see all concurrent values as conflicts to resolve.
    fn keeps_conflicts(&self) -> bool {
        false
    }
}

/// The default: the value with the newest stamp (hybrid-logical-clock time,
/// then origin peer id) wins.
#[derive(Clone, Copy, Debug, Default)]
pub struct LastWriterWins;

impl ConflictResolver for LastWriterWins {
    fn name(&self) -> &str {
        "last-writer-wins"
    }

    fn pick(&self, _node_id: &str, _field: &str, candidates: &[FieldValue]) -> usize {
        candidates.len() - 1
    }
}

/// The value with the oldest stamp wins: once a field is set, a concurrent
/// write does not replace it. Writes made after seeing the value still do.
#[derive(Clone, Copy, Debug, Default)]
pub struct FirstWriterWins;

impl ConflictResolver for FirstWriterWins {
    fn name(&self) -> &str {
        "first-writer-wins"
    }

    fn pick(&self, _node_id: &str, _field: &str, _candidates: &[FieldValue]) -> usize {
        0
    }
}

/// Shows the newest value (as [`LastWriterWins`]) and reports every
/// concurrent value in [`crate::Node::conflicts`], so the application can
/// choose; writing the field resolves the conflict on every replica.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeepAll;

impl ConflictResolver for KeepAll {
    fn name(&self) -> &str {
        "keep-all"
    }

    fn pick(&self, _node_id: &str, _field: &str, candidates: &[FieldValue]) -> usize {
        candidates.len() - 1
    }

    fn keeps_conflicts(&self) -> bool {
        true
    }
}

/// A resolver made from a function, for application-specific rules (for
/// example "the larger number wins").
///
/// ```
/// use pluresdb_core::{FnResolver, FieldValue};
/// let largest = FnResolver::new("largest", |_node: &str, _field: &str, values: &[FieldValue]| {
///     (0..values.len())
///         .max_by(|&a, &b| values[a].value.as_f64().partial_cmp(&values[b].value.as_f64()).unwrap_or(std::cmp::Ordering::Equal))
///         .unwrap_or(0)
/// });
/// # let _ = largest;
/// ```
pub struct FnResolver<F> {
    name: String,
    pick: F,
}

impl<F> FnResolver<F>
where
    F: Fn(&str, &str, &[FieldValue]) -> usize + Send + Sync,
{
    /// A resolver named `name` that calls `pick`.
    pub fn new(name: impl Into<String>, pick: F) -> Self {
        Self { name: name.into(), pick }
    }
}

impl<F> ConflictResolver for FnResolver<F>
where
    F: Fn(&str, &str, &[FieldValue]) -> usize + Send + Sync,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn pick(&self, node_id: &str, field: &str, candidates: &[FieldValue]) -> usize {
        (self.pick)(node_id, field, candidates)
    }
}

impl<F> fmt::Debug for FnResolver<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnResolver").field("name", &self.name).finish()
    }
}

/// The built-in resolvers by name: `last-writer-wins` (or `lww`),
/// `first-writer-wins` (`fww`), `keep-all`.
pub fn builtin_resolver(name: &str) -> Option<Arc<dyn ConflictResolver>> {
    match name {
        "last-writer-wins" | "lww" => Some(Arc::new(LastWriterWins)),
        "first-writer-wins" | "fww" => Some(Arc::new(FirstWriterWins)),
        "keep-all" => Some(Arc::new(KeepAll)),
        _ => None,
    }
}
