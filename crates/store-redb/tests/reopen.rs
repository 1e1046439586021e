//! A store whose writes fail at the medium (here a file-size limit, which
//! needs no root: `RLIMIT_FSIZE` makes every write past it fail with EFBIG,
//! as a full disk fails with ENOSPC) recovers once the cause is gone: redb
//! refuses every write after an I/O error until the file is reopened: the
//! store reopens it at once (reads go on) and `Database::recover_store`
//! lets writes resume, keeping everything acknowledged.
//!
//! One test in this binary: the limit is per process.

#![cfg(unix)]

use pluresdb_core::{Database, StorageFault, Store};
use pluresdb_store_redb::RedbStore;
use serde_json::json;

fn set_file_size_limit(bytes: libc::rlim_t) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain libc calls with a valid pointer to a local.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit), 0);
        limit.rlim_cur = bytes.min(limit.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
}

#[test]
fn writes_resume_after_the_medium_fails_and_comes_back() {
    // A write past the limit raises SIGXFSZ, which kills the process unless
    // ignored; ignored, the write fails with EFBIG.
    // SAFETY: setting a signal to SIG_IGN has no handler to be unsafe in.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let dir = tempfile::tempdir().unwrap();
    let mut db = Database::open(RedbStore::open(dir.path()).unwrap(), "p").unwrap();
    let reader = db.store().read_handle();
    let mut acknowledged = Vec::new();
    let mut now = 1_700_000_000_000u64;
    let mut write = |db: &mut Database<RedbStore>, i: usize| {
        now += 1;
        let id = format!("n:{i:05}");
        db.put(&id, json!({"i": i, "pad": "x".repeat(4_000)}), now).map(|_| id)
    };
    for i in 0..20 {
        acknowledged.push(write(&mut db, i).unwrap());
    }
    let size = std::fs::metadata(dir.path().join(pluresdb_store_redb::DATA_FILE)).unwrap().len();
    set_file_size_limit(size + 256 * 1024);

    // Write until the file cannot grow.
    let mut i = 20;
    let first_fault = loop {
        match write(&mut db, i) {
            Ok(id) => acknowledged.push(id),
            Err(err) => break err,
        }
        i += 1;
        assert!(i < 10_000, "the file-size limit never stopped a write");
    };
    assert_eq!(first_fault.storage_fault(), Some(StorageFault::Io), "{}", pluresdb_core::error_chain(&first_fault));
    let held = db.version_vector().get("p");
    assert_eq!(held, acknowledged.len() as u64, "a failed write moved the version vector");
    // The store reopened the file at once: reads work (redb fails reads of
    // uncached pages after an I/O error until then).
    assert_eq!(reader.scan_nodes("n:", None, usize::MAX).unwrap().len(), acknowledged.len());
    assert_eq!(reader.version_vector().unwrap().get("p"), held);

    // A recovery while the limit holds: big writes still fail.
    db.recover_store().unwrap();
    let mut still_full = false;
    for _ in 0..200 {
        if write(&mut db, i).is_err() {
            still_full = true;
            break;
        }
        acknowledged.push(format!("n:{i:05}"));
        i += 1;
    }
    assert!(still_full, "writes went on past the file-size limit");

    // The cause goes away: after a recovery, writes go on.
    set_file_size_limit(libc::RLIM_INFINITY);
    db.recover_store().unwrap();
    for _ in 0..50 {
        acknowledged.push(write(&mut db, i).unwrap());
        i += 1;
    }
    assert_eq!(db.version_vector().get("p"), acknowledged.len() as u64);
    drop(db);
    drop(reader);

    // Everything acknowledged is there after a reopen, each once.
    let db = Database::open(RedbStore::open(dir.path()).unwrap(), "p").unwrap();
    let stored: Vec<String> = db.store().scan_nodes("n:", None, usize::MAX).unwrap().into_iter().map(|r| r.id).collect();
    let mut expected = acknowledged.clone();
    expected.sort();
    assert_eq!(stored, expected);
    let log = db.ops_after("p", 0, usize::MAX).unwrap();
    assert_eq!(log.len(), acknowledged.len(), "an operation was logged twice or lost");
    assert!(log.iter().enumerate().all(|(k, op)| op.id.seq == k as u64 + 1));
}
