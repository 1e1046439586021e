//! How a replica hands a batch's node records to its store: a local
//! batch's to be freed while the store waits for its medium, a received
//! batch's to be freed one by one as the store encodes them.

use pluresdb_core::{
    Database, EncodedOps, Error, IndexRange, MemoryStore, NodeRecord, OpId, OperationType, OperationWithMetadata, Stamp, Store,
    VersionVector, WriteBatch,
};
use serde_json::json;

/// A store in memory that records how each batch was committed: by which
/// entry point, with how many records.
#[derive(Default)]
struct Recording {
    inner: MemoryStore,
    commits: Vec<(&'static str, usize)>,
}

impl Store for Recording {
    fn nodes(&self, ids: &[&str]) -> Result<Vec<Option<NodeRecord>>, Error> {
        self.inner.nodes(ids)
    }
    fn scan_nodes(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<NodeRecord>, Error> {
        self.inner.scan_nodes(prefix, after, limit)
    }
    fn ops_after(&self, origin: &str, after_seq: u64, limit: usize) -> Result<Vec<OperationWithMetadata>, Error> {
        self.inner.ops_after(origin, after_seq, limit)
    }
    fn op_bodies_after(&self, origin: &str, after_seq: u64, limit: usize, out: &mut EncodedOps) -> Result<(), Error> {
        self.inner.op_bodies_after(origin, after_seq, limit, out)
    }
    fn ops(&self, ids: &[OpId]) -> Result<Vec<Option<OperationWithMetadata>>, Error> {
        self.inner.ops(ids)
    }
    fn version_vector(&self) -> Result<VersionVector, Error> {
        self.inner.version_vector()
    }
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.inner.meta(key)
    }
    fn deferred(&self, from: Option<&Stamp>, limit: usize) -> Result<Vec<Stamp>, Error> {
        self.inner.deferred(from, limit)
    }
    fn deferred_count(&self) -> Result<u64, Error> {
        self.inner.deferred_count()
    }
    fn index_range(&self, range: &IndexRange, limit: usize) -> Result<Vec<(Vec<u8>, String)>, Error> {
        self.inner.index_range(range, limit)
    }
    fn count_nodes(&self, prefix: &str) -> Result<u64, Error> {
        self.inner.count_nodes(prefix)
    }
    fn commit(&mut self, batch: &WriteBatch) -> Result<(), Error> {
        self.commits.push(("commit", batch.nodes.len()));
        self.inner.commit(batch)
    }
    fn commit_and_free_records(&mut self, batch: &mut WriteBatch) -> Result<(), Error> {
        self.commits.push(("while syncing", batch.nodes.len()));
        let result = self.inner.commit(batch);
        batch.nodes = Vec::new();
        result
    }
    fn commit_and_free_records_early(&mut self, batch: &mut WriteBatch) -> Result<(), Error> {
        self.commits.push(("as encoded", batch.nodes.len()));
        let result = self.inner.commit(batch);
        batch.nodes = Vec::new();
        result
    }
}

#[test]
fn local_batches_free_their_records_while_syncing_and_received_ones_as_each_is_encoded() {
    let mut a = Database::open(Recording::default(), "a").unwrap();
    let ops = (0..3).map(|i| OperationWithMetadata::new(OperationType::CreateNode, format!("n:{i}"), json!({"i": i}), "a")).collect();
    a.commit_local(ops, 1_000).unwrap();
    let a_commits = a.store().commits.clone();
    assert_eq!(a_commits, [("while syncing", 3)]);

    let mut b = Database::open(Recording::default(), "b").unwrap();
    let received = a.store().ops_after("a", 0, usize::MAX).unwrap();
    assert_eq!(b.apply_remote(received, 1_000).unwrap().applied, 3);
    assert_eq!(b.store().commits, [("as encoded", 3)]);
    assert_eq!(b.get("n:2").unwrap().map(|node| node.value), a.get("n:2").unwrap().map(|node| node.value));
}
