//! [`Reader`]: reads a replica's state through its own store handle, so
//! that reads need not wait for the writer (a durable store such as redb
//! serves readers while a write transaction commits).
//!
//! [`Database`](crate::Database) reads through the same functions, so a
//! reader and the replica always present a node the same way.

use crate::error::Error;
use crate::node::{Node, NodeRecord};
use crate::operation::{validate_node_id, OpId, OperationWithMetadata};
use crate::resolver::ConflictResolver;
use crate::store::Store;
use crate::version_vector::VersionVector;
use std::sync::Arc;

/// How many records [`Reader::list`] reads from the store at a time.
const SCAN_CHUNK: usize = 256;

/// Where a traversal along links ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Traversal {
    /// Every hop was a link to an existing node; this is the last one.
    Reached(Node),
    /// `field` of `from` (at hop `hop`, from 0) is missing or not a link.
    NotALink { from: Node, field: String, hop: usize },
    /// `field` of `from` links to `target`, which does not exist.
    Dangling { from: Node, field: String, target: String, hop: usize },
}

/// Reads a replica through a store handle; each call sees the state of the
/// last commit before it (a traversal may see later commits at later hops).
#[derive(Clone)]
pub struct Reader<S> {
    store: S,
    resolver: Arc<dyn ConflictResolver>,
}

impl<S: Store> Reader<S> {
    /// A reader over `store` that presents concurrent values with `resolver`.
    pub fn new(store: S, resolver: Arc<dyn ConflictResolver>) -> Self {
        Self { store, resolver }
    }

    /// The store handle.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The resolver in use.
    pub fn resolver(&self) -> &dyn ConflictResolver {
        &*self.resolver
    }

    /// See [`Database::get`](crate::Database::get).
    pub fn get(&self, id: &str) -> Result<Option<Node>, Error> {
        get(&self.store, &*self.resolver, id)
    }

    /// See [`Database::record`](crate::Database::record).
    pub fn record(&self, id: &str) -> Result<Option<NodeRecord>, Error> {
        record(&self.store, id)
    }

    /// See [`Database::follow`](crate::Database::follow).
    pub fn follow(&self, id: &str, path: &[&str]) -> Result<Traversal, Error> {
        follow(&self.store, &*self.resolver, id, path)
    }

    /// See [`Database::list`](crate::Database::list).
    pub fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Node>, Error> {
        list(&self.store, &*self.resolver, prefix, after, limit)
    }

    /// See [`Database::history`](crate::Database::history).
    pub fn history(&self, id: &str) -> Result<Vec<OperationWithMetadata>, Error> {
        history(&self.store, id)
    }

    /// See [`Database::ops_after`](crate::Database::ops_after).
    pub fn ops_after(&self, origin: &str, after_seq: u64, limit: usize) -> Result<Vec<OperationWithMetadata>, Error> {
        self.store.ops_after(origin, after_seq, limit)
    }

    /// The version vector as last committed.
    pub fn version_vector(&self) -> Result<VersionVector, Error> {
        self.store.version_vector()
    }

    /// The index definitions as last committed.
    pub fn indexes(&self) -> Result<Vec<crate::index::IndexDef>, Error> {
        crate::index::decode_defs(self.store.meta(crate::index::INDEXES_META_KEY)?.as_deref())
    }

    /// Runs `query` (see [`crate::query`]) with the indexes as last committed.
    pub fn query(&self, query: &crate::query::Query) -> Result<crate::query::QueryPage, Error> {
        crate::query::run(&self.store, &*self.resolver, &self.indexes()?, query)
    }

    /// A metadata value as last committed.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.store.meta(key)
    }
}

pub(crate) fn get<S: Store + ?Sized>(store: &S, resolver: &dyn ConflictResolver, id: &str) -> Result<Option<Node>, Error> {
    validate_node_id(id)?;
    Ok(record(store, id)?.and_then(|r| r.view(resolver)))
}

pub(crate) fn record<S: Store + ?Sized>(store: &S, id: &str) -> Result<Option<NodeRecord>, Error> {
    Ok(store.nodes(&[id])?.pop().flatten())
}

pub(crate) fn follow<S: Store + ?Sized>(store: &S, resolver: &dyn ConflictResolver, id: &str, path: &[&str]) -> Result<Traversal, Error> {
    let Some(mut node) = get(store, resolver, id)? else {
        return Err(Error::NotFound { id: id.to_owned() });
    };
    for (hop, field) in path.iter().enumerate() {
        let Some(target) = node.link(field).map(str::to_owned) else {
            return Ok(Traversal::NotALink { from: node, field: (*field).to_owned(), hop });
        };
        match get(store, resolver, &target)? {
            Some(next) => node = next,
            None => return Ok(Traversal::Dangling { from: node, field: (*field).to_owned(), target, hop }),
        }
    }
    Ok(Traversal::Reached(node))
}

pub(crate) fn list<S: Store + ?Sized>(
    store: &S,
    resolver: &dyn ConflictResolver,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Node>, Error> {
    let mut out = Vec::new();
    let mut cursor = after.map(str::to_owned);
    while out.len() < limit {
        let chunk = store.scan_nodes(prefix, cursor.as_deref(), SCAN_CHUNK)?;
        let Some(last) = chunk.last() else { break };
        cursor = Some(last.id.clone());
        let exhausted = chunk.len() < SCAN_CHUNK;
        out.extend(chunk.iter().filter_map(|r| r.view(resolver)).take(limit - out.len()));
        if exhausted {
            break;
        }
    }
    Ok(out)
}

pub(crate) fn history<S: Store + ?Sized>(store: &S, id: &str) -> Result<Vec<OperationWithMetadata>, Error> {
    validate_node_id(id)?;
    let record = record(store, id)?.ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
    let ids: Vec<OpId> = record.contributing_ops().into_iter().map(|s| s.id.clone()).collect();
    let ops = store.ops(&ids)?;
    ids.into_iter()
        .zip(ops)
        .map(|(id, op)| op.ok_or_else(|| Error::Decode { what: "op log", reason: format!("operation {id} is referenced but missing") }))
        .collect()
}
