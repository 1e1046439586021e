//! The embedded, crash-safe store of PluresDB, on [redb](https://docs.rs/redb).
//!
//! ```
//! use pluresdb_core::Database;
//! use pluresdb_store_redb::RedbStore;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = RedbStore::open(dir.path())?;
//! let mut db = Database::open(store, "peer-1")?;
//! db.put("user:1", serde_json::json!({"name": "Alice"}), 1_700_000_000_000)?;
//! drop(db);
//!
//! // Everything a returned write wrote is there after a reopen (or a crash).
//! let db = Database::open(RedbStore::open(dir.path())?, "peer-1")?;
//! assert_eq!(db.get("user:1")?.unwrap().value["name"], "Alice");
//! # Ok(())
//! # }
//! ```
//!
//! Durability: every [`Store::commit`] is one redb write transaction with
//! immediate durability: when it returns `Ok`, the batch is on disk (fsync)
//! and survives a crash or power loss; when the process dies before, none of
//! the batch is visible after reopening. A data directory holds one file,
//! [`DATA_FILE`], and is locked against a second process.

use pluresdb_core::{
    EncodedOps, Error, Hlc, IndexRange, NodeRecord, OpId, OperationWithMetadata, Stamp, StorageFault, Store, VersionVector, WriteBatch,
};
use redb::{Database as Redb, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

mod segment;
use segment::Segment;

/// The name of the database file inside a data directory.
pub const DATA_FILE: &str = "pluresdb.redb";

/// Node id -> CBOR-encoded [`NodeRecord`].
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
/// (origin, first seq) -> a segment of that origin's consecutive operations
/// (see [`segment`]): each origin's log is one contiguous key range, so "ops
/// of X after N" is a range read.
const OPS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("ops");
/// Origin -> highest applied sequence number.
const VERSION_VECTOR: TableDefinition<&str, u64> = TableDefinition::new("version_vector");
/// Small metadata (clock reading, peer id, ...).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// (packed timestamp, origin, seq) of each operation held but not merged
/// yet (stamped beyond the clock horizon), in the order they become due.
const DEFERRED: TableDefinition<(u64, &str, u64), ()> = TableDefinition::new("deferred");
/// (index number, encoded key, node id) of every secondary-index entry
/// (see `pluresdb_core::index`), written in the same transaction as the
/// nodes they describe.
const INDEX: TableDefinition<(u32, &[u8], &str), ()> = TableDefinition::new("index");

/// What can go wrong opening or using a data directory.
#[derive(Debug, thiserror::Error)]
pub enum RedbStoreError {
    /// Another process has the data directory open.
    #[error("data directory {} is in use by another process (a running node or another command); stop it or choose another data directory", .path.display())]
    Locked { path: PathBuf },
    /// The data file is not a valid database.
    #[error("data file {} is corrupted ({reason}); it was left untouched", .path.display())]
    Corrupted { path: PathBuf, reason: String },
    /// The data directory cannot be created or is not a directory.
    #[error("cannot use data directory {}", .path.display())]
    Directory { path: PathBuf, source: std::io::Error },
    /// The data file cannot be opened.
    #[error("cannot open data file {}", .path.display())]
    Open { path: PathBuf, source: redb::DatabaseError },
    /// A commit through a handle made by [`RedbStore::read_handle`].
    #[error("{} was opened for reading only here", .path.display())]
    ReadOnly { path: PathBuf },
    /// A read or write failed.
    #[error("{step} failed")]
    Redb { step: &'static str, source: redb::Error },
    /// The file was closed after an I/O error and could not be opened again
    /// yet (the node keeps trying).
    #[error("{} was closed after an I/O error and is not open again yet", .path.display())]
    Closed { path: PathBuf },
    /// After a full disk, too little space is free yet to take writes again.
    #[error(
        "{} bytes are free on the disk of {}; writes resume once {} are",
        .free, .path.display(), RESUME_FREE_BYTES
    )]
    StillFull { path: PathBuf, free: u64 },
}

fn fail<E: Into<redb::Error>>(step: &'static str) -> impl FnOnce(E) -> Error {
    move |err| {
        let source: redb::Error = err.into();
        match fault_of(&source) {
            Some(fault) => Error::store_fault(fault, RedbStoreError::Redb { step, source }),
            None => Error::storage(RedbStoreError::Redb { step, source }),
        }
    }
}

/// Whether a redb error is a fault of the medium, which passes when its
/// cause does (space is freed, the device comes back) and the file is
/// opened again, rather than a bug or a damaged file.
fn fault_of(err: &redb::Error) -> Option<StorageFault> {
    match err {
        redb::Error::Io(io) => Some(StorageFault::of_io(io)),
        // After an I/O error redb refuses everything until a reopen; a
        // transaction that failed part way is poisoned the same way.
        redb::Error::PreviousIo | redb::Error::DatabaseClosed | redb::Error::Backend(_) | redb::Error::TransactionPoisoned => {
            Some(StorageFault::Io)
        }
        _ => None,
    }
}

/// A [`Store`] in a redb file inside a data directory.
///
/// Every handle on one directory (the writer's and those from
/// [`read_handle`](Self::read_handle)) shares one open file, so that
/// [`Store::recover`] reopens it for all of them.
pub struct RedbStore {
    shared: Arc<SharedFile>,
    /// A handle from [`RedbStore::read_handle`]: commits are refused.
    read_only: bool,
    /// The fault of the last commit that failed at the medium, until a
    /// recovery.
    last_fault: Option<StorageFault>,
}

/// The open file every handle uses; `None` after a reopen that failed.
struct SharedFile {
    path: PathBuf,
    /// redb's page cache (reads and the write buffer), in bytes.
    cache_bytes: usize,
    db: RwLock<Option<Arc<Redb>>>,
    /// Counts reopens, so a read that failed knows when to read again.
    generation: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").field("path", &self.shared.path).finish()
    }
}

/// The free space a disk that was full must have again before the store
/// takes writes: less would fill at once (the file grows by whole regions),
/// and the node would flip between taking and refusing writes.
pub const RESUME_FREE_BYTES: u64 = 4 * 1024 * 1024;

/// The bytes free for this process on the filesystem of `path`; `None`
/// where that cannot be read (the check is then skipped).
fn free_bytes(path: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let dir = path.parent()?;
        let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: statvfs writes into the zeroed struct we own; the path is
        // a valid NUL-terminated string.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
            return None;
        }
        #[allow(clippy::unnecessary_cast)]
        Some((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// How long a read that failed after an I/O error waits for the writer to
/// reopen the file before it reports the error.
const READ_RETRY_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// How long [`Store::recover`] waits for reads that still use the old file
/// to end before it gives up for this attempt (its caller tries again).
const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The page cache a store gets by default: 8 MiB. Half of it at most is
/// the write buffer of a commit in progress (a group of 1,000 ~100-byte
/// writes dirties well under 1 MiB). It fills with use and stays full, so
/// it is the part of a node's memory that grows with its data: at 32 MiB a
/// node held 71-83 MiB after syncing 50,000 records, at 8 MiB 62-68 MiB
/// (benches/two_process.rs, docs/performance.md); a node that reads more
/// than it writes can raise it (the node's `store_cache_mib` setting).
pub const DEFAULT_CACHE_BYTES: usize = 8 << 20;

impl RedbStore {
    /// Collects into a `T` what `visit` takes of each of `origin`'s
    /// operations after `after_seq` (given its segment and index there),
    /// in order, at most `limit` of them. A read retried after a fault
    /// starts again from an empty `T`.
    fn visit_op_log<T: Default>(
        &self,
        origin: &str,
        after_seq: u64,
        limit: usize,
        visit: impl Fn(&mut T, &Segment<'_>, usize) -> Result<(), Error>,
    ) -> Result<T, Error> {
        self.reading(|db| {
            let mut out = T::default();
            let Some(first) = after_seq.checked_add(1) else { return Ok(out) };
            let txn = db.begin_read().map_err(fail("begin read"))?;
            let table = txn.open_table(OPS).map_err(fail("open op log"))?;
            // Start at the segment that holds `first` (or the next one).
            let start = match table.range((origin, 0)..=(origin, first)).map_err(fail("read op log"))?.next_back() {
                Some(entry) => entry.map_err(fail("read op log"))?.0.value().1,
                None => first,
            };
            let mut visited = 0;
            for entry in table.range((origin, start)..=(origin, u64::MAX)).map_err(fail("read op log"))? {
                let (key, bytes) = entry.map_err(fail("read op log"))?;
                let segment_first = key.value().1;
                let segment = Segment::parse(origin, segment_first, bytes.value())?;
                let skip = usize::try_from(first.saturating_sub(segment_first)).unwrap_or(usize::MAX);
                for i in skip..segment.len() {
                    if visited == limit {
                        return Ok(out);
                    }
                    visit(&mut out, &segment, i)?;
                    visited += 1;
                }
            }
            Ok(out)
        })
    }

    /// Opens the store in data directory `dir`, creating the directory and
    /// an empty database if there are none. Never overwrites or truncates an
    /// existing file: a file that is not a valid database is an error.
    pub fn open(dir: &Path) -> Result<Self, RedbStoreError> {
        Self::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// [`open`](Self::open) with a page cache of `cache_bytes` (redb's
    /// own default, 1 GiB, lets a node's memory grow with its data: the
    /// cache holds every page read or written until it is full).
    pub fn open_with_cache(dir: &Path, cache_bytes: usize) -> Result<Self, RedbStoreError> {
        std::fs::create_dir_all(dir).map_err(|source| RedbStoreError::Directory { path: dir.to_owned(), source })?;
        let path = dir.join(DATA_FILE);
        let db = open_file(&path, cache_bytes)?;
        create_tables(&db).map_err(|source| RedbStoreError::Redb { step: "create tables", source })?;
        Ok(Self {
            shared: Arc::new(SharedFile { path, cache_bytes, db: RwLock::new(Some(Arc::new(db))), generation: Default::default() }),
            read_only: false,
            last_fault: None,
        })
    }

    /// Another handle on the same database that only reads: readers on it
    /// see every committed transaction and never wait for a write in
    /// progress. Its [`Store::commit`] fails; writes go through the handle
    /// the replica owns.
    pub fn read_handle(&self) -> Self {
        Self { shared: self.shared.clone(), read_only: true, last_fault: None }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The open file (a reference held for one call).
    fn db(&self) -> Result<Arc<Redb>, Error> {
        let slot = self.shared.db.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        match slot.as_ref() {
            Some(db) => Ok(db.clone()),
            None => Err(Error::store_fault(StorageFault::Io, RedbStoreError::Closed { path: self.shared.path.clone() })),
        }
    }

    /// Writes `batch` in one redb write transaction, durably.
    fn write_batch(&mut self, batch: &WriteBatch) -> Result<(), Error> {
        if self.read_only {
            return Err(Error::storage(RedbStoreError::ReadOnly { path: self.shared.path.clone() }));
        }
        // The core hands each origin's new operations over in sequence, so
        // each origin's share of the batch is one run of consecutive ops.
        let mut by_origin: BTreeMap<&str, (u64, Vec<&[u8]>)> = BTreeMap::new();
        for (id, body) in batch.ops.iter() {
            by_origin.entry(&id.origin).or_insert_with(|| (id.seq, Vec::new())).1.push(body);
        }
        let db = self.db()?;
        let txn = db.begin_write().map_err(fail("begin write"))?;
        {
            let mut ops = txn.open_table(OPS).map_err(fail("open op log"))?;
            for (origin, from) in &batch.truncate {
                truncate_log(&mut ops, origin, *from)?;
            }
            for (origin, (first_seq, bodies)) in &by_origin {
                for (first, bytes) in segment::encode(*first_seq, bodies) {
                    ops.insert((*origin, first), bytes.as_slice()).map_err(fail("append ops"))?;
                }
            }
            let mut nodes = txn.open_table(NODES).map_err(fail("open nodes"))?;
            // One buffer for every record: redb copies the value on insert.
            let mut bytes = Vec::with_capacity(512);
            for record in &batch.nodes {
                bytes.clear();
                record.encode_into(&mut bytes);
                nodes.insert(record.id.as_str(), bytes.as_slice()).map_err(fail("write node"))?;
            }
            let mut version_vector = txn.open_table(VERSION_VECTOR).map_err(fail("open version vector"))?;
            for (origin, seq) in &batch.version_vector {
                if *seq == 0 {
                    version_vector.remove(origin.as_str()).map_err(fail("write version vector"))?;
                } else {
                    version_vector.insert(origin.as_str(), *seq).map_err(fail("write version vector"))?;
                }
            }
            let mut meta = txn.open_table(META).map_err(fail("open meta"))?;
            for (key, value) in &batch.meta {
                meta.insert(key.as_str(), value.as_slice()).map_err(fail("write meta"))?;
            }
            if !batch.released.is_empty() || !batch.deferred.is_empty() {
                let mut deferred = txn.open_table(DEFERRED).map_err(fail("open deferred"))?;
                for stamp in &batch.released {
                    deferred.remove((stamp.hlc.as_u64(), &*stamp.id.origin, stamp.id.seq)).map_err(fail("release deferred"))?;
                }
                for stamp in &batch.deferred {
                    deferred.insert((stamp.hlc.as_u64(), &*stamp.id.origin, stamp.id.seq), ()).map_err(fail("record deferred"))?;
                }
            }
            if !batch.index_dropped.is_empty() || !batch.index_removed.is_empty() || !batch.index_added.is_empty() {
                let mut index = txn.open_table(INDEX).map_err(fail("open index"))?;
                for &number in &batch.index_dropped {
                    let empty: &[u8] = &[];
                    let upper = match number.checked_add(1) {
                        Some(next) => Bound::Excluded((next, empty, "")),
                        None => Bound::Unbounded,
                    };
                    index
                        .retain_in::<(u32, &[u8], &str), _>((Bound::Included((number, empty, "")), upper), |_, _| false)
                        .map_err(fail("drop index"))?;
                }
                for entry in &batch.index_removed {
                    index.remove((entry.index, entry.key.as_slice(), entry.id.as_str())).map_err(fail("remove index entry"))?;
                }
                for entry in &batch.index_added {
                    index.insert((entry.index, entry.key.as_slice(), entry.id.as_str()), ()).map_err(fail("add index entry"))?;
                }
            }
        }
        txn.commit().map_err(fail("commit"))
    }

    /// Closes the file and opens it again: after an I/O error redb refuses
    /// every write (and reads of pages it has not cached) until then.
    /// Opening runs redb's repair when the file was not closed cleanly; it
    /// keeps every committed transaction. Reads meanwhile fail with
    /// [`RedbStoreError::Reopening`] instead of waiting.
    fn reopen(&self) -> Result<(), Error> {
        let path = &self.shared.path;
        // Readers wait from here until the file is open again.
        let mut slot = self.shared.db.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(old) = slot.take() {
            // Reads in progress hold the old file (they need no lock to
            // end); it closes when the last lets go.
            let old = {
                let weak = Arc::downgrade(&old);
                drop(old);
                weak
            };
            let started = std::time::Instant::now();
            while old.strong_count() > 0 {
                if started.elapsed() > REOPEN_WAIT {
                    *slot = old.upgrade();
                    return Err(Error::store_fault(StorageFault::Io, RedbStoreError::Locked { path: path.clone() }));
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        // On failure the slot stays empty: reads fail with `Closed` until a
        // later recovery opens the file.
        let started = std::time::Instant::now();
        let mut opened = open_file(path, self.shared.cache_bytes);
        while matches!(opened, Err(RedbStoreError::Locked { .. })) && started.elapsed() < REOPEN_WAIT {
            std::thread::sleep(std::time::Duration::from_millis(5));
            opened = open_file(path, self.shared.cache_bytes);
        }
        let opened = opened.map_err(|err| {
            let fault = match &err {
                RedbStoreError::Open { source: redb::DatabaseError::Storage(redb::StorageError::Io(io)), .. } => StorageFault::of_io(io),
                _ => StorageFault::Io,
            };
            Error::store_fault(fault, err)
        })?;
        *slot = Some(Arc::new(opened));
        self.shared.generation.fetch_add(1, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Runs `read` on the open file. After an I/O error redb fails reads of
    /// pages it has not cached until the writer has reopened the file, which
    /// it does at once: a read that fails so waits for that (at most
    /// [`READ_RETRY_WAIT`]) and runs again on the reopened file.
    fn reading<T>(&self, read: impl Fn(&Redb) -> Result<T, Error>) -> Result<T, Error> {
        let generation = self.shared.generation.load(std::sync::atomic::Ordering::Acquire);
        let first = read(&*self.db()?);
        match &first {
            Err(err) if err.storage_fault().is_some() => {}
            _ => return first,
        }
        let started = std::time::Instant::now();
        while started.elapsed() < READ_RETRY_WAIT {
            if self.shared.generation.load(std::sync::atomic::Ordering::Acquire) != generation {
                return read(&*self.db()?);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        first
    }
}

fn create_tables(db: &Redb) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(NODES)?;
    txn.open_table(OPS)?;
    txn.open_table(VERSION_VECTOR)?;
    txn.open_table(META)?;
    txn.open_table(DEFERRED)?;
    txn.open_table(INDEX)?;
    txn.commit()?;
    Ok(())
}

/// Opens or creates the redb file, turning redb's lock and corruption
/// reports (including a panic on a file damaged outside redb) into errors.
fn open_file(path: &Path, cache_bytes: usize) -> Result<Redb, RedbStoreError> {
    let corrupted = |reason: String| RedbStoreError::Corrupted { path: path.to_owned(), reason };
    // A file damaged outside redb can make the open panic (redb's docs say
    // so); keep the panic message off the terminal and report an error.
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(|| redb::Builder::new().set_cache_size(cache_bytes).create(path));
    std::panic::set_hook(previous_hook);
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(RedbStoreError::Locked { path: path.to_owned() }),
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason)))) => Err(corrupted(reason)),
        // redb reports a file that is not a redb database (wrong magic
        // number) as invalid data.
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(err)))) if err.kind() == std::io::ErrorKind::InvalidData => {
            Err(corrupted(err.to_string()))
        }
        Ok(Err(source)) => Err(RedbStoreError::Open { path: path.to_owned(), source }),
        Err(_) => Err(corrupted("the database engine could not read it".into())),
    }
}

impl Store for RedbStore {
    fn nodes(&self, ids: &[&str]) -> Result<Vec<Option<NodeRecord>>, Error> {
        self.reading(|db| {
            let txn = db.begin_read().map_err(fail("begin read"))?;
            let table = txn.open_table(NODES).map_err(fail("open nodes"))?;
            if ids.len() > 1 && ids.windows(2).all(|w| w[0] < w[1]) {
                return read_sorted(&table, ids);
            }
            ids.iter().map(|id| read_node(&table, id)).collect()
        })
    }

    fn scan_nodes(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<NodeRecord>, Error> {
        self.reading(|db| {
            let txn = db.begin_read().map_err(fail("begin read"))?;
            let table = txn.open_table(NODES).map_err(fail("open nodes"))?;
            let mut range = match after {
                Some(after) if after >= prefix => table.range::<&str>(after..).map_err(fail("scan nodes"))?,
                _ => table.range::<&str>(prefix..).map_err(fail("scan nodes"))?,
            };
            let mut out = Vec::new();
            while out.len() < limit {
                let Some(entry) = range.next() else { break };
                let (key, value) = entry.map_err(fail("scan nodes"))?;
                let id = key.value();
                if !id.starts_with(prefix) {
                    break;
                }
                if Some(id) == after {
                    continue;
                }
                out.push(NodeRecord::decode(value.value())?);
            }
            Ok(out)
        })
    }

    fn ops_after(&self, origin: &str, after_seq: u64, limit: usize) -> Result<Vec<OperationWithMetadata>, Error> {
        self.visit_op_log(origin, after_seq, limit, |out: &mut Vec<_>, segment, i| {
            out.push(segment.op(i)?);
            Ok(())
        })
    }

    fn op_bodies_after(&self, origin: &str, after_seq: u64, limit: usize, out: &mut EncodedOps) -> Result<(), Error> {
        let read: EncodedOps = self.visit_op_log(origin, after_seq, limit, |read: &mut EncodedOps, segment, i| {
            read.push_encoded(&segment.id(i), segment.body(i)?);
            Ok(())
        })?;
        if out.is_empty() {
            *out = read;
        } else {
            read.iter().for_each(|(id, body)| out.push_encoded(id, body));
        }
        Ok(())
    }

    fn ops(&self, ids: &[OpId]) -> Result<Vec<Option<OperationWithMetadata>>, Error> {
        self.reading(|db| {
            let txn = db.begin_read().map_err(fail("begin read"))?;
            let table = txn.open_table(OPS).map_err(fail("open op log"))?;
            ids.iter()
                .map(|id| {
                    let origin = &*id.origin;
                    let Some(entry) = table.range((origin, 0)..=(origin, id.seq)).map_err(fail("read op log"))?.next_back() else {
                        return Ok(None);
                    };
                    let (key, bytes) = entry.map_err(fail("read op log"))?;
                    let first = key.value().1;
                    let segment = Segment::parse(origin, first, bytes.value())?;
                    let index = usize::try_from(id.seq - first).unwrap_or(usize::MAX);
                    if index < segment.len() {
                        segment.op(index).map(Some)
                    } else {
                        Ok(None)
                    }
                })
                .collect()
        })
    }

    fn version_vector(&self) -> Result<VersionVector, Error> {
        self.reading(|db| {
            let txn = db.begin_read().map_err(fail("begin read"))?;
            let table = txn.open_table(VERSION_VECTOR).map_err(fail("open version vector"))?;
            let range = table.range::<&str>(..).map_err(fail("read version vector"))?;
            range
                .map(|entry| {
                    let (origin, seq) = entry.map_err(fail("read version vector"))?;
                    Ok((origin.value().to_owned(), seq.value()))
                })
                .collect()
        })
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.reading(|db| {
            let txn = db.begin_read().map_err(fail("begin read"))?;
            let table = txn.open_table(META).map_err(fail("open meta"))?;
            Ok(table.get(key).map_err(fail("read meta"))?.map(|v| v.value().to_vec()))
        })
    }

    fn deferred(&self, from: Option<&Stamp>, limit: usize) -> Result<Vec<Stamp>, Error> {
        self.reading(|db| {
            let txn = db.begin_read().map_err(fail("begin read"))?;
            let table = txn.open_table(DEFERRED).map_err(fail("open deferred"))?;
            let range = match from {
                Some(from) => table.range((from.hlc.as_u64(), &*from.id.origin, from.id.seq)..).map_err(fail("read deferred"))?,
                None => table.range::<(u64, &str, u64)>(..).map_err(fail("read deferred"))?,
            };
            range
                .take(limit)
                .map(|entry| {
                    let (key, _) = entry.map_err(fail("read deferred"))?;
                    let (hlc, origin, seq) = key.value();
                    Ok(Stamp { hlc: Hlc::from_u64(hlc), id: OpId::new(origin, seq) })
                })
                .collect()
        })
    }

    fn deferred_count(&self) -> Result<u64, Error> {
        self.reading(|db| {
            let txn = db.begin_read().map_err(fail("begin read"))?;
            let table = txn.open_table(DEFERRED).map_err(fail("open deferred"))?;
            table.len().map_err(fail("count deferred"))
        })
    }

    fn index_range(&self, range: &IndexRange, limit: usize) -> Result<Vec<(Vec<u8>, String)>, Error> {
        let at = |bound: &'_ Bound<(Vec<u8>, String)>| -> Option<Bound<(u32, Vec<u8>, String)>> {
            Some(match bound {
                Bound::Included((key, id)) => Bound::Included((range.index, key.clone(), id.clone())),
                Bound::Excluded((key, id)) => Bound::Excluded((range.index, key.clone(), id.clone())),
                Bound::Unbounded => return None,
            })
        };
        let lower = at(&range.lower).unwrap_or(Bound::Included((range.index, Vec::new(), String::new())));
        let upper = match at(&range.upper) {
            Some(bound) => bound,
            None => match range.index.checked_add(1) {
                Some(next) => Bound::Excluded((next, Vec::new(), String::new())),
                None => Bound::Unbounded,
            },
        };
        if !ordered_bounds(&lower, &upper) {
            return Ok(Vec::new());
        }
        self.reading(|db| {
            let txn = db.begin_read().map_err(fail("begin read"))?;
            let table = txn.open_table(INDEX).map_err(fail("open index"))?;
            let entries = table.range::<(u32, &[u8], &str)>((borrowed(&lower), borrowed(&upper))).map_err(fail("read index"))?;
            let pick = |entry: IndexItem<'_>| {
                let (key, _) = entry.map_err(fail("read index"))?;
                let (_, key, id) = key.value();
                Ok((key.to_vec(), id.to_owned()))
            };
            match range.descending {
                true => entries.rev().take(limit).map(pick).collect(),
                false => entries.take(limit).map(pick).collect(),
            }
        })
    }

    fn count_nodes(&self, prefix: &str) -> Result<u64, Error> {
        self.reading(|db| {
            let txn = db.begin_read().map_err(fail("begin read"))?;
            let table = txn.open_table(NODES).map_err(fail("open nodes"))?;
            if prefix.is_empty() {
                return table.len().map_err(fail("count nodes"));
            }
            let mut count = 0u64;
            for entry in table.range::<&str>(prefix..).map_err(fail("read nodes"))? {
                let (key, _) = entry.map_err(fail("read nodes"))?;
                if !key.value().starts_with(prefix) {
                    break;
                }
                count += 1;
            }
            Ok(count)
        })
    }

    fn commit(&mut self, batch: &WriteBatch) -> Result<(), Error> {
        let result = self.write_batch(batch);
        if let Some(fault) = result.as_ref().err().and_then(Error::storage_fault) {
            // A full disk wins over the errors that follow it (redb's
            // "previous I/O error").
            if self.last_fault != Some(StorageFault::DiskFull) {
                self.last_fault = Some(fault);
            }
            // Reopened at once so that reads go on (redb fails uncached
            // reads after an I/O error); writes wait for `recover`. If this
            // fails, `recover` tries again.
            let _ = self.reopen();
        }
        result
    }

    /// Reopens the file (reads work again at once), and after a full disk
    /// fails with [`RedbStoreError::StillFull`] until [`RESUME_FREE_BYTES`]
    /// are free.
    fn recover(&mut self) -> Result<(), Error> {
        if self.read_only {
            return Err(Error::storage(RedbStoreError::ReadOnly { path: self.shared.path.clone() }));
        }
        self.reopen()?;
        if self.last_fault == Some(StorageFault::DiskFull) {
            if let Some(free) = free_bytes(&self.shared.path).filter(|&free| free < RESUME_FREE_BYTES) {
                return Err(Error::store_fault(StorageFault::DiskFull, RedbStoreError::StillFull { path: self.shared.path.clone(), free }));
            }
        }
        self.last_fault = None;
        Ok(())
    }
}

/// Drops `origin`'s operations from sequence number `from` on: the
/// segments that start there or later go, and the one that holds `from`
/// keeps only what comes before it.
fn truncate_log(ops: &mut redb::Table<(&str, u64), &[u8]>, origin: &str, from: u64) -> Result<(), Error> {
    let from = from.max(1);
    let later: Vec<u64> = ops
        .range((origin, from)..=(origin, u64::MAX))
        .map_err(fail("read op log"))?
        .map(|entry| entry.map(|(key, _)| key.value().1))
        .collect::<Result<_, _>>()
        .map_err(fail("read op log"))?;
    for first in later {
        ops.remove((origin, first)).map_err(fail("truncate op log"))?;
    }
    let holding = match ops.range((origin, 0)..(origin, from)).map_err(fail("read op log"))?.next_back() {
        Some(entry) => {
            let (key, bytes) = entry.map_err(fail("read op log"))?;
            Some((key.value().1, bytes.value().to_vec()))
        }
        None => None,
    };
    if let Some((first, bytes)) = holding {
        let segment = Segment::parse(origin, first, &bytes)?;
        let keep = usize::try_from(from - first).unwrap_or(usize::MAX);
        if keep < segment.len() {
            let bodies: Vec<&[u8]> = (0..keep).map(|i| segment.body(i)).collect::<Result<_, _>>()?;
            for (start, encoded) in segment::encode(first, &bodies) {
                ops.insert((origin, start), encoded.as_slice()).map_err(fail("truncate op log"))?;
            }
        }
    }
    Ok(())
}

/// One entry read from the index table.
type IndexItem<'a> = Result<(redb::AccessGuard<'a, (u32, &'static [u8], &'static str)>, redb::AccessGuard<'a, ()>), redb::StorageError>;

/// A bound on owned index positions as one redb compares.
fn borrowed(bound: &Bound<(u32, Vec<u8>, String)>) -> Bound<(u32, &[u8], &str)> {
    match bound {
        Bound::Included((n, key, id)) => Bound::Included((*n, key.as_slice(), id.as_str())),
        Bound::Excluded((n, key, id)) => Bound::Excluded((*n, key.as_slice(), id.as_str())),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Whether a range's ends are in order (redb, like a BTreeMap, may panic
/// on one that is not, and a query can ask for `> 5 and < 3`).
fn ordered_bounds<T: Ord>(lower: &Bound<T>, upper: &Bound<T>) -> bool {
    match (lower, upper) {
        (Bound::Included(l), Bound::Included(u)) => l <= u,
        (Bound::Included(l) | Bound::Excluded(l), Bound::Excluded(u) | Bound::Included(u)) => l < u,
        _ => true,
    }
}

/// Reads and decodes one node record.
fn read_node(table: &impl ReadableTable<&'static str, &'static [u8]>, id: &str) -> Result<Option<NodeRecord>, Error> {
    match table.get(id).map_err(fail("read node"))? {
        Some(bytes) => NodeRecord::decode(bytes.value()).map(Some),
        None => Ok(None),
    }
}

/// How many stored records [`read_sorted`] steps over, without finding one
/// it was asked for, before it seeks again.
const MAX_STEP_OVER: usize = 8;

/// Reads the records of sorted, distinct `ids` by walking the table from
/// the first of them instead of looking each up.
///
/// A write batch reads the records of every node it touches, sorted. When
/// they are new ids past the end of the table (appends), one seek finds
/// that none exist, where a lookup each would descend the tree a thousand
/// times; when they are neighbours, the walk reads them in order. Ids far
/// apart cost a seek each, as lookups would: after [`MAX_STEP_OVER`]
/// unrequested records in a row the walk seeks to the next id.
fn read_sorted(table: &impl ReadableTable<&'static str, &'static [u8]>, ids: &[&str]) -> Result<Vec<Option<NodeRecord>>, Error> {
    let mut out: Vec<Option<NodeRecord>> = Vec::with_capacity(ids.len());
    // Each seek answers at least one id: the first record at or after
    // ids[out.len()] either is it or shows it is absent.
    while out.len() < ids.len() {
        let mut range = table.range::<&str>(ids[out.len()]..).map_err(fail("read node"))?;
        let mut stepped_over = 0;
        while out.len() < ids.len() && stepped_over <= MAX_STEP_OVER {
            let Some(entry) = range.next() else {
                // Nothing is stored at or after the next id: no more records.
                out.resize_with(ids.len(), || None);
                break;
            };
            let (key, value) = entry.map_err(fail("read node"))?;
            let key = key.value();
            let answered = out.len();
            // Requested ids before this record are absent.
            while out.len() < ids.len() && ids[out.len()] < key {
                out.push(None);
            }
            if out.len() < ids.len() && ids[out.len()] == key {
                out.push(Some(NodeRecord::decode(value.value())?));
            }
            stepped_over = if out.len() > answered { 0 } else { stepped_over + 1 };
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pluresdb_core::Database;
    use serde_json::json;

    #[test]
    fn reopening_returns_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let (records, vv, clock, log) = {
            let mut db = Database::open(RedbStore::open(dir.path()).unwrap(), "p").unwrap();
            for i in 0..50u64 {
                db.put(&format!("user:{i:03}"), json!({"i": i, "friend": {"#": format!("user:{:03}", i + 1)}}), 1_000 + i).unwrap();
            }
            db.update("user:007", json!({"i": null, "extra": true}), 2_000).unwrap();
            db.delete("user:008", 2_001).unwrap();
            let records = db.store().scan_nodes("", None, usize::MAX).unwrap();
            (records, db.version_vector().clone(), db.clock(), db.ops_after("p", 0, usize::MAX).unwrap())
        };
        let db = Database::open(RedbStore::open(dir.path()).unwrap(), "p").unwrap();
        assert_eq!(db.store().scan_nodes("", None, usize::MAX).unwrap(), records);
        assert_eq!(db.version_vector(), &vv);
        assert_eq!(db.clock(), clock);
        assert_eq!(db.ops_after("p", 0, usize::MAX).unwrap(), log);
        assert_eq!(db.ops_after("p", 49, 10).unwrap().len(), 3);
        assert_eq!(db.ops_after("p", u64::MAX, 10).unwrap().len(), 0);
        // The op log's bodies as stored are those operations, encoded.
        for (after, limit) in [(0, usize::MAX), (49, 10), (17, 5), (u64::MAX, 10)] {
            let mut stored = pluresdb_core::EncodedOps::new();
            db.op_bodies_after("p", after, limit, &mut stored).unwrap();
            let mut expected = pluresdb_core::EncodedOps::new();
            db.ops_after("p", after, limit).unwrap().iter().for_each(|op| expected.push(op));
            assert_eq!(stored.iter().collect::<Vec<_>>(), expected.iter().collect::<Vec<_>>(), "after {after}, {limit}");
        }
        assert!(db.get("user:008").unwrap().is_none());
        assert_eq!(
            db.get("user:007").unwrap().unwrap().value,
            json!({"extra": true, "friend": {"#": "user:008"}}).as_object().unwrap().clone()
        );
        assert_eq!(db.list("user:00", Some("user:005"), 100).unwrap().len(), 3, "006, 007, 009; 008 is deleted");
        assert_eq!(db.history("user:007").unwrap().len(), 2);
    }

    #[test]
    fn deferred_operations_survive_a_reopen_and_are_released_once() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_700_000_000_000u64;
        let ahead = now + 365 * 24 * 3_600_000;
        // A writer whose clock runs a year ahead.
        let mut fast = Database::open(pluresdb_core::MemoryStore::new(), "fast").unwrap();
        for i in 0..3u64 {
            fast.put(&format!("n:{i}"), json!({"i": i}), ahead + i).unwrap();
        }
        {
            let mut db = Database::open(RedbStore::open(dir.path()).unwrap(), "p").unwrap();
            let report = db.apply_remote(fast.ops_after("fast", 0, 10).unwrap(), now).unwrap();
            assert_eq!(report.deferred, 3);
        }
        let mut db = Database::open(RedbStore::open(dir.path()).unwrap(), "p").unwrap();
        assert_eq!(db.deferred_count(), 3);
        assert_eq!(db.store().deferred(None, 10).unwrap().len(), 3);
        assert!(db.get("n:0").unwrap().is_none());
        let due = db.next_due_ms().unwrap();
        assert_eq!(db.apply_due(due).unwrap(), 1, "the first is due first");
        drop(db);
        let mut db = Database::open(RedbStore::open(dir.path()).unwrap(), "p").unwrap();
        assert_eq!(db.deferred_count(), 2);
        assert_eq!(db.get("n:0").unwrap().unwrap().value["i"], 0);
        assert_eq!(db.apply_due(ahead + 10).unwrap(), 2);
        drop(db);
        let mut db = Database::open(RedbStore::open(dir.path()).unwrap(), "p").unwrap();
        assert_eq!((db.deferred_count(), db.apply_due(u64::MAX).unwrap()), (0, 0));
        assert_eq!(db.list("n:", None, 10).unwrap().len(), 3);
    }

    #[test]
    fn sorted_reads_find_what_point_reads_find() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Database::open(RedbStore::open(dir.path()).unwrap(), "p").unwrap();
        // Stored: every third id from 0 to 299, and a run of neighbours.
        for i in (0..300u64).step_by(3).chain(400..420) {
            db.put(&format!("n:{i:04}"), json!({"i": i}), 1_000 + i).unwrap();
        }
        let store = db.store();
        let all: Vec<String> = (0..500u64).map(|i| format!("n:{i:04}")).collect();
        let pick =
            |filter: &dyn Fn(u64) -> bool| -> Vec<&str> { (0..500u64).filter(|&i| filter(i)).map(|i| all[i as usize].as_str()).collect() };
        let cases = [
            pick(&|_| true),
            pick(&|i| i % 50 == 0),
            pick(&|i| i > 410),
            pick(&|i| !(2..=480).contains(&i)),
            pick(&|i| i % 7 == 1),
            vec!["a", "n:0003", "z"],
        ];
        for ids in cases {
            let one_by_one: Vec<Option<NodeRecord>> = ids.iter().map(|id| store.nodes(&[id]).unwrap().pop().flatten()).collect();
            assert_eq!(store.nodes(&ids).unwrap(), one_by_one, "{ids:?}");
        }
        // Unsorted ids are answered in their order.
        let ids = ["n:0411", "n:0003", "n:0004", "n:0000"];
        let found: Vec<bool> = store.nodes(&ids).unwrap().iter().map(Option::is_some).collect();
        assert_eq!(found, [true, true, false, true]);
    }

    #[test]
    fn a_lost_fork_branch_is_cut_from_the_log_inside_a_segment() {
        use pluresdb_core::signing::stand_in::{NamedSigner, NamedVerifier};
        use pluresdb_core::{ForkOutcome, MemoryStore};
        let signed = |db: Database<MemoryStore>| db.with_signer(std::sync::Arc::new(NamedSigner("a".into())));
        let write = |db: &mut Database<MemoryStore>, n: u64, t: u64| {
            for i in 0..n {
                db.put(&format!("n:{}", i % 50), json!({"i": i, "t": t}), t + i).unwrap();
            }
        };
        let mut original = signed(Database::open(MemoryStore::new(), "a").unwrap());
        write(&mut original, 1_100, 1_000);
        let mut copy = signed(Database::open(original.store().clone(), "a").unwrap());
        write(&mut original, 300, 10_000);
        write(&mut copy, 200, 20_000);
        let winner = original.ops_after("a", 0, usize::MAX).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut db = Database::open(RedbStore::open(dir.path()).unwrap(), "b").unwrap().with_verifier(std::sync::Arc::new(NamedVerifier));
        // The copy's log, in one batch (two segments), then the original's.
        db.apply_remote(copy.ops_after("a", 0, usize::MAX).unwrap(), 100_000).unwrap();
        let report = db.apply_remote(winner.clone(), 100_000).unwrap();
        assert!(matches!(&report.forks[..], [f] if f.seq == 1_101 && matches!(f.outcome, ForkOutcome::Replaced { .. })), "{report:?}");
        drop(db);
        let db = Database::open(RedbStore::open(dir.path()).unwrap(), "b").unwrap();
        assert_eq!(db.ops_after("a", 0, usize::MAX).unwrap(), winner);
        assert_eq!(db.version_vector().get("a"), 1_400);
        assert_eq!(db.store().scan_nodes("", None, usize::MAX).unwrap(), original.store().scan_nodes("", None, usize::MAX).unwrap());
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = RedbStore::open(dir.path()).unwrap();
        let err = RedbStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, RedbStoreError::Locked { .. }), "{err}");
    }

    #[test]
    fn a_garbage_file_is_reported_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let garbage: Vec<u8> = (0..64 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        std::fs::write(dir.path().join(DATA_FILE), &garbage).unwrap();
        let err = RedbStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, RedbStoreError::Corrupted { .. } | RedbStoreError::Open { .. }), "{err}");
        assert_eq!(std::fs::read(dir.path().join(DATA_FILE)).unwrap(), garbage);
    }
}
