use pluresdb_core::*;
use serde_json::json;
use std::time::Instant;
struct Null {
    encode: bool,
    bytes: usize,
}
impl Store for Null {
    fn nodes(&self, ids: &[&str]) -> Result<Vec<Option<NodeRecord>>, Error> {
        Ok(ids.iter().map(|_| None).collect())
    }
    fn scan_nodes(&self, _: &str, _: Option<&str>, _: usize) -> Result<Vec<NodeRecord>, Error> {
        Ok(vec![])
    }
    fn ops_after(&self, _: &str, _: u64, _: usize) -> Result<Vec<OperationWithMetadata>, Error> {
        Ok(vec![])
    }
    fn ops(&self, _: &[OpId]) -> Result<Vec<Option<OperationWithMetadata>>, Error> {
        Ok(vec![])
    }
    fn version_vector(&self) -> Result<VersionVector, Error> {
        Ok(VersionVector::new())
    }
    fn meta(&self, _: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(None)
    }
    fn commit(&mut self, b: &WriteBatch) -> Result<(), Error> {
        if self.encode {
            for o in &b.ops {
                self.bytes += codec::encode(o).len();
            }
            for r in &b.nodes {
                self.bytes += codec::encode(r).len();
            }
        }
        Ok(())
    }
}
fn raw(vsize: &[usize]) {
    const T1: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("a");
    const T2: redb::TableDefinition<(&str, u64), &[u8]> = redb::TableDefinition::new("b");
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::create(dir.path().join("x")).unwrap();
    let origin = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
    let t = Instant::now();
    for c in 0..100 {
        let txn = db.begin_write().unwrap();
        {
            let mut a = txn.open_table(T1).unwrap();
            let mut b = txn.open_table(T2).unwrap();
            for i in 0..1000u64 {
                let id = format!("user:{:08}", c * 1000 + i);
                a.insert(id.as_str(), vec![7u8; vsize[0]].as_slice()).unwrap();
                if vsize.len() > 1 {
                    b.insert((origin, c * 1000 + i + 1), vec![7u8; vsize[1]].as_slice()).unwrap();
                }
            }
        }
        txn.commit().unwrap();
    }
    println!("raw {vsize:?}: {:.0}/s", 100_000.0 / t.elapsed().as_secs_f64());
}
fn main() {
    if std::env::var("RAW").is_ok() {
        raw(&[93]);
    }
    let recs: Vec<_> = (0..100_000).map(|i| (format!("user:{i:08}"), json!({"name": format!("User {i}"), "email": format!("user{i}@example.org"), "age": i % 97, "friend": {"#": format!("user:{:08}", i)}}))).collect();
    for encode in [false, true] {
        let mut db = Database::open(Null { encode, bytes: 0 }, "bench-peer").unwrap();
        let t = Instant::now();
        for c in recs.chunks(1000) {
            let ops = c
                .iter()
                .map(|(id, v)| OperationWithMetadata::new(OperationType::CreateNode, id.clone(), v.clone(), "bench-peer"))
                .collect();
            db.commit_local(ops, 1).unwrap();
        }
        println!("encode={encode}: {:.0} ops/s, bytes/op {}", 100_000.0 / t.elapsed().as_secs_f64(), db.store().bytes / 100_000);
    }
    let t = Instant::now();
    let mut n = 0;
    for c in recs.chunks(1000) {
        for (id, v) in c {
            n += id.len();
            std::hint::black_box(v.clone());
        }
    }
    println!("clone only: {:.0} ops/s {n}", 100_000.0 / t.elapsed().as_secs_f64());
}
