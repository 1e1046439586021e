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
//! Durability: when [`Store::commit`] returns `Ok`, the batch survives a
//! crash or power loss; when the process dies before, none of it is visible
//! after reopening. A commit is one redb write transaction without
//! durability of its own plus one record appended to a write-ahead log
//! ([`LOG_FILE`], beside [`DATA_FILE`]) and synced (`fdatasync`) before the
//! transaction is committed, so readers never see a batch that is not
//! durable yet; a thread of the writer's applies the batch to the
//! transaction while the record is synced. redb's commit of the
//! transaction (which makes the batch visible) comes after the commit has
//! returned, off the caller's path: [`RedbStore::publish`], or the first
//! read or commit after it, does it (a read begun after a commit returned
//! always sees it). redb is committed durably now and then (a checkpoint: when
//! the log's cycle is full, on a clean close, and while the disk has less
//! than [`LOW_SPACE_BYTES`] free, on every commit; the free space is read on
//! every commit while under 1 GiB, else every 100 ms), and opening the store
//! redoes the log's records that redb does not hold. A log that does not
//! belong to the data file (another directory's, or one whose commits do not
//! continue the file's, as beside a restored backup) is never applied: it is
//! renamed aside with a warning ([`RedbStore::set_aside_logs`]). One
//! exception to "none of it": a record fully written whose sync reported an
//! error may be redone at the next recovery or open (the error was a
//! [`StorageFault`], after which the caller reads the store again).
//! A data directory is locked against a second process.

use pluresdb_core::{
    BornRecord, BornRecords, EncodedOps, Error, Hlc, IndexRange, NodeRecord, OpId, OperationWithMetadata, Stamp, StorageFault, Store,
    VersionVector, WriteBatch,
};
use redb::{Database as Redb, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

mod applier;
mod origins;
mod segment;
mod visibility;
mod wal;
pub use applier::set_idle_hook;
use applier::Applier;
use segment::Segment;
use visibility::Visibility;
pub use wal::LOG_FILE;
use wal::{FileId, Wal};

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

/// The key in [`META`] of the number of the last commit the file holds
/// (u64 LE): the log's records continue it.
const COMMIT_META_KEY: &str = "store.commit";
/// The key in [`META`] of the file's random id (16 bytes), which the log's
/// header repeats.
const FILE_ID_META_KEY: &str = "store.file-id";
/// The key in [`META`] of the layout the file's contents are in (u32 LE):
/// a build refuses a file in a layout newer than [`STORE_FORMAT`] instead
/// of misreading it. Absent in files written before the marker (layout 1).
const FORMAT_META_KEY: &str = "store.format";
/// The layout this build writes: 2 = node records without their id and
/// with their stamps' origins numbered in the origin table (e0285e9).
/// Layout 1 (records with their id and origins as text) is read too.
pub const STORE_FORMAT: u32 = 2;

/// Below this much free space on its disk, every commit is a durable redb
/// commit (as without the log): a full disk then finds nothing waiting in
/// redb's memory that would need room to be written again.
pub const LOW_SPACE_BYTES: u64 = 64 << 20;

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
    /// The write-ahead log cannot be read or written.
    #[error("write-ahead log {}", .path.display())]
    Log { path: PathBuf, source: std::io::Error },
    /// The file was written by a newer build in a layout this one cannot
    /// read.
    #[error(
        "data file {} is in store format {found}, written by a newer pluresdb; this build reads formats up to {}: run the newer \
         build on it (its contents were left as they are)",
        .path.display(), STORE_FORMAT
    )]
    NewerFormat { path: PathBuf, found: u32 },
    /// redb could not publish a commit after it was acknowledged (durable
    /// in the log): reads fail until a reopen redoes it.
    #[error("an acknowledged commit is durable but not readable until the store is reopened: {reason}")]
    Unpublished { reason: String },
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
    /// The writer's log (`None` on read handles).
    log: Option<Log>,
}

/// The writer's side of the write-ahead log.
struct Log {
    dir: PathBuf,
    wal: Wal,
    file_id: FileId,
    /// The number of the last commit.
    committed: u64,
    /// The payload of the commit in progress (kept for the next one),
    /// shared with the applier while it applies it.
    payload: Arc<Vec<u8>>,
    /// Applies each logged commit while its record is synced.
    applier: Applier,
    /// How the next apply is to fail (tests).
    #[cfg(test)]
    fault: Option<applier::Fault>,
    /// Logs found at open that were not applied, renamed aside.
    set_aside: Vec<PathBuf>,
    /// Whether the disk is low on space.
    space: SpaceCheck,
    /// The numbers of the origins the records name.
    origins: origins::OriginIndex,
    /// See [`RedbStore::publish_later`].
    publish_later: std::sync::atomic::AtomicBool,
}

/// The open file every handle uses; `None` after a reopen that failed.
struct SharedFile {
    path: PathBuf,
    /// redb's page cache (reads and the write buffer), in bytes.
    cache_bytes: usize,
    db: RwLock<Option<Arc<Redb>>>,
    /// Counts reopens, so a read that failed knows when to read again.
    generation: std::sync::atomic::AtomicU64,
    /// The table of origins the records name (see [`origins`]). A reader
    /// takes it after beginning its read transaction: a record's numbers
    /// are in it before the record commits.
    origins: origins::Shared,
    /// Whether the last commit returned is visible to reads yet.
    visibility: Arc<Visibility>,
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

/// While a disk has this much free, the writer reads its free space again
/// only after [`ROOMY_RECHECK`] (a `statvfs` costs ~3 us, ~2% of a single
/// durable write): another process would have to write ~1 GiB in that time
/// to bring it below [`LOW_SPACE_BYTES`] unnoticed. With less free, every
/// commit reads it.
const ROOMY_BYTES: u64 = 16 * LOW_SPACE_BYTES;

/// See [`ROOMY_BYTES`].
const ROOMY_RECHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// Whether the disk is low on space (see [`LOW_SPACE_BYTES`]), read on
/// every commit unless it was roomy a moment ago (see [`ROOMY_BYTES`]).
struct SpaceCheck {
    /// Until when a check that found the disk roomy holds.
    roomy_until: Option<std::time::Instant>,
    roomy_bytes: u64,
    recheck: std::time::Duration,
    /// How many times the free space was read (tests).
    #[cfg(test)]
    reads: u64,
}

impl SpaceCheck {
    fn new() -> Self {
        SpaceCheck {
            roomy_until: None,
            roomy_bytes: ROOMY_BYTES,
            recheck: ROOMY_RECHECK,
            #[cfg(test)]
            reads: 0,
        }
    }

    /// Whether less than [`LOW_SPACE_BYTES`] are free on the disk of
    /// `path` (`false` where that cannot be read).
    fn low(&mut self, path: &Path) -> bool {
        if let Some(until) = self.roomy_until {
            if std::time::Instant::now() < until {
                return false;
            }
        }
        #[cfg(test)]
        {
            self.reads += 1;
        }
        let free = free_bytes(path);
        self.roomy_until = match free {
            Some(free) if free >= self.roomy_bytes => Some(std::time::Instant::now() + self.recheck),
            _ => None,
        };
        free.is_some_and(|free| free < LOW_SPACE_BYTES)
    }
}

/// How long a read that failed after an I/O error waits for the writer to
/// reopen the file before it reports the error.
const READ_RETRY_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// How long [`Store::recover`] waits for reads that still use the old file
/// to end before it gives up for this attempt (its caller tries again).
const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The page cache a store gets by default: 4 MiB. Half of it at most is
/// the write buffer of a commit in progress (a group of 1,000 ~100-byte
/// writes dirties well under 1 MiB). It fills with use and stays full, so
/// it is the part of a node's memory that grows with its data, and it
/// costs about twice its size (redb counts page contents only; each page
/// is an allocation of its own): at 32 MiB a node held 71-83 MiB after
/// syncing 50,000 records, at 8 MiB 49-58 MiB, at 4 MiB 42-52 MiB
/// (benches/two_process.rs, docs/performance.md); a node that reads more
/// than it writes can raise it (the node's `store_cache_mib` setting).
pub const DEFAULT_CACHE_BYTES: usize = 4 << 20;

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
        check_format(&db, &path)?;
        create_tables(&db).map_err(|source| RedbStoreError::Redb { step: "create tables", source })?;
        let log = Log::open(dir, &db)?;
        let origins = log.origins.shared();
        Ok(Self {
            shared: Arc::new(SharedFile {
                path,
                cache_bytes,
                db: RwLock::new(Some(Arc::new(db))),
                generation: Default::default(),
                origins,
                visibility: Default::default(),
            }),
            read_only: false,
            last_fault: None,
            log: Some(log),
        })
    }

    /// Logs found beside the data file when it was opened that were not
    /// its own or did not continue it, renamed aside unapplied (each was
    /// also reported as a warning).
    pub fn set_aside_logs(&self) -> &[PathBuf] {
        self.log.as_ref().map_or(&[], |log| &log.set_aside)
    }

    /// Another handle on the same database that only reads: readers on it
    /// see every committed transaction and never wait for a write in
    /// progress. Its [`Store::commit`] fails; writes go through the handle
    /// the replica owns.
    pub fn read_handle(&self) -> Self {
        Self { shared: self.shared.clone(), read_only: true, last_fault: None, log: None }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The table of origins, for decoding records read in a transaction
    /// begun before this call.
    fn origins(&self) -> Arc<Vec<Arc<str>>> {
        origins::snapshot(&self.shared.origins)
    }

    /// From now on, a logged commit returns once it is durable and leaves
    /// redb's commit of it (~40 us of CPU for a single write), which makes
    /// it visible to reads, for later: [`publish`](Self::publish), or the
    /// first read or commit after it, does it (see [`visibility`]). For a
    /// writer that calls `publish` once it has answered its callers and
    /// sent what the commit produced (the node's runtime), and that
    /// recovers the store (`Database::recover_store`) when that fails:
    /// until then, reads fail with the store's fault. Without it a commit
    /// returns once redb has it (a failure there is the commit's error).
    pub fn publish_later(&self) {
        if let Some(log) = &self.log {
            log.publish_later.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Makes the last commit that returned visible to reads now, if it is
    /// not yet (see [`publish_later`](Self::publish_later)). Fails with the
    /// store's fault if redb cannot commit it: the batch is durable, and a
    /// recovery (a reopen, whose redo applies it) makes it readable; the
    /// next commit fails with the fault until then.
    pub fn publish(&self) -> Result<(), Error> {
        self.shared.visibility.wait()
    }

    /// The open file (a reference held for one call).
    fn db(&self) -> Result<Arc<Redb>, Error> {
        let slot = self.shared.db.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        match slot.as_ref() {
            Some(db) => Ok(db.clone()),
            None => Err(Error::store_fault(StorageFault::Io, RedbStoreError::Closed { path: self.shared.path.clone() })),
        }
    }

    /// Writes `batch` (see [`encode_batch`](Self::encode_batch) and
    /// [`write_encoded`](Self::write_encoded)).
    fn write_batch(&mut self, batch: &WriteBatch) -> Result<(), Error> {
        let (db, number) = self.encode_batch(batch, batch.nodes.iter(), &[])?;
        self.write_encoded(db, number, Vec::new())
    }

    /// Encodes `batch` as the log record of the next commit, whose number
    /// it returns with the file; `records` are its node records (those of
    /// `batch.nodes`, or taken out of it: given by value, each is freed as
    /// soon as it is encoded). Fails with nothing written if the last
    /// commit could not be published (a fault: the reopen that follows
    /// redoes it).
    fn encode_batch<R: std::borrow::Borrow<NodeRecord>>(
        &mut self,
        batch: &WriteBatch,
        records: impl ExactSizeIterator<Item = R>,
        born: &[BornRecord<'_>],
    ) -> Result<(Arc<Redb>, u64), Error> {
        if self.read_only {
            return Err(Error::storage(RedbStoreError::ReadOnly { path: self.shared.path.clone() }));
        }
        self.shared.visibility.settle()?;
        let db = self.db()?;
        let Some(log) = self.log.as_mut() else {
            return Err(Error::storage(RedbStoreError::ReadOnly { path: self.shared.path.clone() }));
        };
        // The applier of the last commit let go of it: no copy is made.
        let payload = Arc::make_mut(&mut log.payload);
        payload.clear();
        // Allocated once at about its size rather than grown by doubling
        // (a batch of 1,000 writes is ~340 KB, over what is kept between
        // commits): the op bodies, and records of about their size.
        payload.reserve(2 * batch.ops.byte_len() + 64 * (records.len() + born.len()) + 1024);
        wal::encode_with_born(batch, records, born, &mut log.origins, payload)?;
        Ok((db, log.committed + 1))
    }

    /// Commits the encoded batch as commit `number`: in one redb
    /// transaction without durability and one record in the log, synced
    /// before the transaction commits. When the record does not fit in
    /// the rest of the log's cycle, redb first commits what it holds
    /// durably (a checkpoint) and the record starts the next cycle; a
    /// record larger than a cycle, or any while the disk is nearly full, is
    /// committed in one durable redb transaction instead. `records` (node
    /// records the caller is done with) are freed while the record is
    /// synced and the applier applies, where the writer would otherwise
    /// wait.
    fn write_encoded(&mut self, db: Arc<Redb>, number: u64, records: Vec<NodeRecord>) -> Result<(), Error> {
        let path = &self.shared.path;
        let Some(log) = self.log.as_mut() else {
            return Err(Error::storage(RedbStoreError::ReadOnly { path: path.clone() }));
        };
        let len = log.payload.len();
        let loggable = !log.wal.broken && !log.space.low(path);
        let visibility = &self.shared.visibility;
        let result = if loggable && log.wal.fits(len) {
            log.write_logged(db, number, visibility, records)
        } else if loggable && log.wal.fits_in_a_cycle(len) {
            // The batch is applied by the applier beside its sync, as any
            // other, rather than on this thread inside the durable commit.
            log.checkpoint(&db).and_then(|()| log.write_logged(db, number, visibility, records))
        } else {
            log.write_durable(&db, number)
        };
        if result.is_ok() {
            log.origins.written();
        }
        // An import's buffer (megabytes) is not kept; a single write's is.
        if log.payload.capacity() > KEPT_PAYLOAD_BYTES {
            log.payload = Arc::default();
        }
        result
    }

    /// What a commit that failed at the medium leaves: the fault noted and
    /// the file reopened.
    fn after_commit(&mut self, result: Result<(), Error>) -> Result<(), Error> {
        if let Some(fault) = result.as_ref().err().and_then(Error::storage_fault) {
            // The disk may have filled since it was last found roomy.
            if let Some(log) = self.log.as_mut() {
                log.space.roomy_until = None;
            }
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

    /// Closes the file and opens it again: after an I/O error redb refuses
    /// every write (and reads of pages it has not cached) until then.
    /// Opening runs redb's repair when the file was not closed cleanly; it
    /// keeps every committed transaction. Reads meanwhile fail with
    /// [`RedbStoreError::Reopening`] instead of waiting.
    fn reopen(&mut self) -> Result<(), Error> {
        // The last commit's transaction is let go of first (committed or
        // not: the redo below brings it if not).
        if self.log.is_some() {
            let _ = self.shared.visibility.settle();
        }
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
        // The commits redb held only in memory are gone if the old file
        // could not write them on closing: the log brings them back before
        // any reader sees the file.
        if let Some(log) = self.log.as_mut() {
            log.redo(&opened).map_err(|err| match err.storage_fault() {
                Some(_) => err,
                None => Error::store_fault(
                    StorageFault::Io,
                    RedbStoreError::Corrupted { path: path.clone(), reason: pluresdb_core::error_chain(&err) },
                ),
            })?;
        }
        *slot = Some(Arc::new(opened));
        // Every returned commit is in the file now (redone if redb had not
        // published it).
        if self.log.is_some() {
            self.shared.visibility.reopened();
        }
        self.shared.generation.fetch_add(1, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Runs `read` on the open file, once every commit that has returned
    /// is visible there (see [`visibility`]). After an I/O error redb fails
    /// reads of pages it has not cached until the writer has reopened the
    /// file, which it does at once: a read that fails so waits for that (at
    /// most [`READ_RETRY_WAIT`]) and runs again on the reopened file.
    fn reading<T>(&self, read: impl Fn(&Redb) -> Result<T, Error>) -> Result<T, Error> {
        let generation = self.shared.generation.load(std::sync::atomic::Ordering::Acquire);
        let read = |db: Arc<Redb>| self.shared.visibility.wait().and_then(|()| read(&db));
        let first = read(self.db()?);
        match &first {
            Err(err) if err.storage_fault().is_some() => {}
            _ => return first,
        }
        let started = std::time::Instant::now();
        while started.elapsed() < READ_RETRY_WAIT {
            if self.shared.generation.load(std::sync::atomic::Ordering::Acquire) != generation {
                return read(self.db()?);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        first
    }
}

/// Refuses a file in a store format newer than [`STORE_FORMAT`] before
/// anything is written to it; [`create_tables`] marks the others with it.
fn check_format(db: &Redb, path: &Path) -> Result<(), RedbStoreError> {
    let marker = format_marker(db).map_err(|source| RedbStoreError::Redb { step: "read the store format", source })?;
    let Some(marker) = marker else {
        return Ok(());
    };
    let found = <[u8; 4]>::try_from(marker.as_slice())
        .map(u32::from_le_bytes)
        .map_err(|_| RedbStoreError::Corrupted { path: path.to_owned(), reason: "its store format marker is not 4 bytes".into() })?;
    if found > STORE_FORMAT {
        return Err(RedbStoreError::NewerFormat { path: path.to_owned(), found });
    }
    Ok(())
}

/// The bytes of the file's store format marker, if it has one.
fn format_marker(db: &Redb) -> Result<Option<Vec<u8>>, redb::Error> {
    let txn = db.begin_read()?;
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        // A new file: it has no tables yet.
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    Ok(meta.get(FORMAT_META_KEY)?.map(|value| value.value().to_vec()))
}

fn create_tables(db: &Redb) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(META)?.insert(FORMAT_META_KEY, STORE_FORMAT.to_le_bytes().as_slice())?;
    txn.open_table(NODES)?;
    txn.open_table(OPS)?;
    txn.open_table(VERSION_VECTOR)?;
    txn.open_table(META)?;
    txn.open_table(DEFERRED)?;
    txn.open_table(INDEX)?;
    txn.commit()?;
    Ok(())
}

/// A failed read or write of the log at `path`, as the medium's fault.
fn log_fault(source: std::io::Error, path: &Path) -> Error {
    Error::store_fault(StorageFault::of_io(&source), RedbStoreError::Log { path: path.to_owned(), source })
}

/// The payload buffer a writer keeps between commits at most: one that
/// holds a batch of 1,000 ~100-byte writes (~340 KB). A buffer allocated
/// afresh for each such commit cost its page faults every time (perf of
/// `cargo bench --bench store`: a third of encoding the log record, more
/// than growing it by doubling had cost); an import's buffer of megabytes
/// is still let go.
const KEPT_PAYLOAD_BYTES: usize = 1 << 20;

/// How much of the log a redo applies in one transaction.
const REDO_TRANSACTION_BYTES: usize = 1 << 20;

/// Applies a log record's payload (see [`wal::encode`]) to redb: the
/// same table writes, in the same order, for a commit and for its redo.
fn apply(txn: &redb::WriteTransaction, payload: &[u8]) -> Result<(), Error> {
    let mut changes = wal::Reader::new(payload);
    let mut ops = txn.open_table(OPS).map_err(fail("open op log"))?;
    for _ in 0..changes.u32()? {
        let origin = changes.str()?;
        let from = changes.u64()?;
        truncate_log(&mut ops, origin, from)?;
    }
    for _ in 0..changes.u32()? {
        let origin = changes.str()?;
        let first = changes.u64()?;
        ops.insert((origin, first), changes.bytes()?).map_err(fail("append ops"))?;
    }
    let mut nodes = txn.open_table(NODES).map_err(fail("open nodes"))?;
    for _ in 0..changes.u32()? {
        let id = changes.str()?;
        nodes.insert(id, changes.bytes()?).map_err(fail("write node"))?;
    }
    let mut version_vector = txn.open_table(VERSION_VECTOR).map_err(fail("open version vector"))?;
    for _ in 0..changes.u32()? {
        let origin = changes.str()?;
        match changes.u64()? {
            0 => version_vector.remove(origin).map_err(fail("write version vector"))?,
            seq => version_vector.insert(origin, seq).map_err(fail("write version vector"))?,
        };
    }
    let mut meta = txn.open_table(META).map_err(fail("open meta"))?;
    for _ in 0..changes.u32()? {
        let key = changes.str()?;
        meta.insert(key, changes.bytes()?).map_err(fail("write meta"))?;
    }
    let released = changes.u32()?;
    if released > 0 {
        let mut deferred = txn.open_table(DEFERRED).map_err(fail("open deferred"))?;
        for _ in 0..released {
            let (hlc, origin, seq) = (changes.u64()?, changes.str()?, changes.u64()?);
            deferred.remove((hlc, origin, seq)).map_err(fail("release deferred"))?;
        }
    }
    let added = changes.u32()?;
    if added > 0 {
        let mut deferred = txn.open_table(DEFERRED).map_err(fail("open deferred"))?;
        for _ in 0..added {
            let (hlc, origin, seq) = (changes.u64()?, changes.str()?, changes.u64()?);
            deferred.insert((hlc, origin, seq), ()).map_err(fail("record deferred"))?;
        }
    }
    let dropped = changes.u32()?;
    if dropped > 0 {
        let mut index = txn.open_table(INDEX).map_err(fail("open index"))?;
        for _ in 0..dropped {
            let number = changes.u32()?;
            let empty: &[u8] = &[];
            let upper = match number.checked_add(1) {
                Some(next) => Bound::Excluded((next, empty, "")),
                None => Bound::Unbounded,
            };
            index
                .retain_in::<(u32, &[u8], &str), _>((Bound::Included((number, empty, "")), upper), |_, _| false)
                .map_err(fail("drop index"))?;
        }
    }
    let removed = changes.u32()?;
    if removed > 0 {
        let mut index = txn.open_table(INDEX).map_err(fail("open index"))?;
        for _ in 0..removed {
            let (number, key, id) = (changes.u32()?, changes.bytes()?, changes.str()?);
            index.remove((number, key, id)).map_err(fail("remove index entry"))?;
        }
    }
    let added = changes.u32()?;
    if added > 0 {
        let mut index = txn.open_table(INDEX).map_err(fail("open index"))?;
        for _ in 0..added {
            let (number, key, id) = (changes.u32()?, changes.bytes()?, changes.str()?);
            index.insert((number, key, id), ()).map_err(fail("add index entry"))?;
        }
    }
    changes.finish()
}

/// The file's table of origins (see [`origins`]).
fn read_origins(db: &Redb) -> Result<Vec<Arc<str>>, Error> {
    let txn = db.begin_read().map_err(fail("begin read"))?;
    let meta = txn.open_table(META).map_err(fail("open meta"))?;
    let mut entries = Vec::new();
    for entry in meta.range::<&str>(origins::META_PREFIX..).map_err(fail("read meta"))? {
        let (key, value) = entry.map_err(fail("read meta"))?;
        if !key.value().starts_with(origins::META_PREFIX) {
            break;
        }
        entries.push((key.value().to_owned(), value.value().to_vec()));
    }
    origins::load(entries)
}

/// Applies a log record's payload to `txn` as commit `number`: its table
/// writes and the commit's number (see [`set_committed`]); the same for a
/// commit, a checkpoint and a redo.
fn apply_commit(txn: &redb::WriteTransaction, payload: &[u8], number: u64) -> Result<(), Error> {
    apply(txn, payload)?;
    set_committed(txn, number)
}

/// Records in `txn` that the file holds commits up to `number`.
fn set_committed(txn: &redb::WriteTransaction, number: u64) -> Result<(), Error> {
    let mut meta = txn.open_table(META).map_err(fail("open meta"))?;
    meta.insert(COMMIT_META_KEY, number.to_le_bytes().as_slice()).map_err(fail("write meta"))?;
    Ok(())
}

/// The file's id and the number of its last commit; a file without an id
/// (new, or made before the log) gets one, durably.
fn identity(db: &Redb) -> Result<(FileId, u64), Error> {
    let read = |db: &Redb| -> Result<(Option<FileId>, u64), Error> {
        let txn = db.begin_read().map_err(fail("begin read"))?;
        let meta = txn.open_table(META).map_err(fail("open meta"))?;
        let id = meta.get(FILE_ID_META_KEY).map_err(fail("read meta"))?.and_then(|v| FileId::try_from(v.value()).ok());
        let committed = match meta.get(COMMIT_META_KEY).map_err(fail("read meta"))? {
            Some(v) => {
                u64::from_le_bytes(v.value().try_into().map_err(|_| Error::Decode { what: "commit number", reason: "not 8 bytes".into() })?)
            }
            None => 0,
        };
        Ok((id, committed))
    };
    match read(db)? {
        (Some(id), committed) => Ok((id, committed)),
        (None, committed) => {
            let mut id: FileId = [0; 16];
            getrandom::fill(&mut id).map_err(|err| Error::storage(std::io::Error::other(format!("no random file id: {err}"))))?;
            let txn = db.begin_write().map_err(fail("begin write"))?;
            txn.open_table(META).map_err(fail("open meta"))?.insert(FILE_ID_META_KEY, id.as_slice()).map_err(fail("write meta"))?;
            set_committed(&txn, committed)?;
            txn.commit().map_err(fail("commit"))?;
            Ok((id, committed))
        }
    }
}

impl Log {
    /// Commits the payload as commit `number`: applied to a transaction
    /// without durability (by the applier) while its record is written to
    /// the log and synced (here). Once both are done the commit is durable
    /// and returns, the transaction held by `visibility` until redb
    /// commits it (and reads wait for that). A commit that fails leaves
    /// nothing visible and its record withdrawn (or the log marked broken
    /// until a recovery reads it again). Call `Visibility::settle` first.
    fn write_logged(&mut self, db: Arc<Redb>, number: u64, visibility: &Visibility, records: Vec<NodeRecord>) -> Result<(), Error> {
        // Before the transaction: a log that cannot grow fails the commit
        // with nothing written.
        self.wal.reserve(self.payload.len()).map_err(|err| log_fault(err, self.wal.path()))?;
        let job = applier::Job {
            db,
            payload: self.payload.clone(),
            number,
            #[cfg(test)]
            fault: self.fault.take(),
        };
        let (wal, payload) = (&mut self.wal, &self.payload);
        let (applied, appended) = self.applier.overlap(job, || {
            let appended = wal.append(number, payload);
            drop(records);
            appended
        });
        // On failure the transaction (if any) is dropped, not committed,
        // and the record withdrawn first.
        let txn = match (applied, appended) {
            (Ok(Ok(txn)), Ok(())) => txn,
            (Err(panic), _) => {
                self.withdraw();
                std::panic::resume_unwind(panic)
            }
            (_, Err(err)) => {
                self.withdraw();
                return Err(log_fault(err, self.wal.path()));
            }
            (Ok(Err(err)), Ok(())) => {
                self.withdraw();
                return Err(err);
            }
        };
        if self.publish_later.load(std::sync::atomic::Ordering::Relaxed) {
            // Durable: the record is synced. A failure of redb's commit
            // from here on leaves the record in place (see `visibility`).
            visibility.hold(txn);
        } else if let Err(err) = txn.commit() {
            // The record is durable but its commit is not.
            self.withdraw();
            return Err(fail("commit")(err));
        }
        self.committed = number;
        self.wal.appended(self.payload.len());
        Ok(())
    }

    /// Withdraws the record of a commit that failed after it was appended
    /// (or may have been), so that no redo makes the batch visible; if the
    /// log does not let us, it is read again by the recovery before it takes
    /// records.
    fn withdraw(&mut self) {
        self.wal.broken = self.wal.retract().is_err();
    }

    /// Makes redb hold every commit logged so far durably (a checkpoint:
    /// each wrote its number, see [`set_committed`]) and starts a new cycle
    /// of the log. Call `Visibility::settle` first.
    fn checkpoint(&mut self, db: &Redb) -> Result<(), Error> {
        db.begin_write().map_err(fail("begin write"))?.commit().map_err(fail("commit"))?;
        self.wal.restart();
        Ok(())
    }

    /// Commits the payload as commit `number` in one durable transaction
    /// (a checkpoint), and starts a new cycle of the log.
    fn write_durable(&mut self, db: &Redb, number: u64) -> Result<(), Error> {
        let txn = db.begin_write().map_err(fail("begin write"))?;
        apply_commit(&txn, &self.payload, number)?;
        txn.commit().map_err(fail("commit"))?;
        self.committed = number;
        self.wal.restart();
        Ok(())
    }

    /// Opens the log of the redb file `db` in `dir` and redoes what redb
    /// does not hold yet; a log that is not the file's is set aside.
    fn open(dir: &Path, db: &Redb) -> Result<Log, RedbStoreError> {
        let log_error = |source: std::io::Error| RedbStoreError::Log { path: dir.join(LOG_FILE), source };
        let (file_id, committed) = identity(db)
            .map_err(|err| RedbStoreError::Corrupted { path: dir.join(DATA_FILE), reason: pluresdb_core::error_chain(&err) })?;
        let mut set_aside = Vec::new();
        let wal = match Wal::find(dir, &file_id).map_err(log_error)? {
            wal::Found::Ours(wal) => wal,
            wal::Found::Nothing => Wal::create(dir, &file_id).map_err(log_error)?,
            wal::Found::Foreign(reason) => {
                set_aside.push(Self::set_aside(dir, reason).map_err(log_error)?);
                Wal::create(dir, &file_id).map_err(log_error)?
            }
        };
        let applier = Applier::spawn()
            .map_err(|err| log_error(std::io::Error::new(err.kind(), format!("cannot start the thread that applies commits: {err}"))))?;
        let mut log = Log {
            dir: dir.to_owned(),
            wal,
            file_id,
            committed,
            payload: Arc::default(),
            applier,
            #[cfg(test)]
            fault: None,
            set_aside,
            space: SpaceCheck::new(),
            origins: origins::OriginIndex::new(Default::default()),
            publish_later: Default::default(),
        };
        log.redo(db).map_err(|err| match err {
            Error::StoreFault { source, .. } => match source.downcast::<RedbStoreError>() {
                Ok(err) => *err,
                Err(source) => RedbStoreError::Log { path: dir.join(LOG_FILE), source: std::io::Error::other(source) },
            },
            err => RedbStoreError::Corrupted { path: dir.join(LOG_FILE), reason: pluresdb_core::error_chain(&err) },
        })?;
        // After the redo, which may add entries.
        let table = read_origins(db)
            .map_err(|err| RedbStoreError::Corrupted { path: dir.join(DATA_FILE), reason: pluresdb_core::error_chain(&err) })?;
        log.origins = origins::OriginIndex::new(Arc::new(RwLock::new(Arc::new(table))));
        Ok(log)
    }

    /// Renames the log aside, with a warning that says why and where it is.
    fn set_aside(dir: &Path, reason: &str) -> std::io::Result<PathBuf> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let to = wal::set_aside(dir, now)?;
        tracing::warn!(
            "the write-ahead log {} was not applied to {}: {reason}; it was renamed to {} (nothing in it was deleted)",
            dir.join(LOG_FILE).display(),
            dir.join(DATA_FILE).display(),
            to.display()
        );
        Ok(to)
    }

    /// Applies to `db` the records that continue its last commit, in one
    /// durable transaction, and starts a new cycle. Records the file holds
    /// already are skipped; the redo ends at the first record that is not
    /// whole or does not continue the one before. A log whose first record
    /// comes after a commit the file lacks is set aside.
    fn redo(&mut self, db: &Redb) -> Result<(), Error> {
        let (_, committed) = identity(db)?;
        let mut next = committed + 1;
        let mut previous: Option<u64> = None;
        let mut gap = None;
        let mut txn: Option<redb::WriteTransaction> = None;
        let mut in_txn = 0usize;
        let scanned = self.wal.scan(|number, payload| {
            match previous {
                Some(previous) if number != previous + 1 => return Ok(false),
                None if number > next => {
                    gap = Some(number);
                    return Ok(false);
                }
                _ => {}
            }
            previous = Some(number);
            if number < next {
                return Ok(true);
            }
            // In transactions of about a megabyte without durability, so
            // that redoing a full cycle does not hold it all in memory at
            // once; one durable commit at the end.
            if txn.is_none() {
                let mut begun = db.begin_write().map_err(fail("begin write"))?;
                begun.set_durability(Durability::None).map_err(fail("begin write"))?;
                txn = Some(begun);
            }
            if let Some(open) = &txn {
                apply_commit(open, payload, number)?;
            }
            in_txn += payload.len();
            if in_txn >= REDO_TRANSACTION_BYTES {
                if let Some(full) = txn.take() {
                    full.commit().map_err(fail("commit"))?;
                }
                in_txn = 0;
            }
            next += 1;
            Ok(true)
        });
        match scanned {
            Ok(scan) if next - 1 > committed => tracing::info!(
                "redid commits {} to {} from the write-ahead log {} ({} records read, ended: {:?})",
                committed + 1,
                next - 1,
                self.wal.path().display(),
                scan.records,
                scan.stop
            ),
            Ok(_) => {}
            Err(wal::ScanError::Record(err)) => return Err(err),
            Err(wal::ScanError::Io(source)) => return Err(log_fault(source, self.wal.path())),
        }
        if let Some(first) = gap {
            let reason = format!(
                "its first record is commit {first}, but the data file holds commits up to {committed} only: the data file is older \
                 than the log (restored from a backup?) and the commits between are not in either"
            );
            let to = Self::set_aside(&self.dir, &reason).map_err(|err| log_fault(err, self.wal.path()))?;
            self.set_aside.push(to);
            self.wal = Wal::create(&self.dir, &self.file_id).map_err(|err| log_fault(err, &self.dir.join(LOG_FILE)))?;
        }
        if next - 1 > committed {
            // Durable: everything redone, and the commits before.
            let mut last = match txn {
                Some(txn) => txn,
                None => db.begin_write().map_err(fail("begin write"))?,
            };
            last.set_durability(Durability::Immediate).map_err(fail("begin write"))?;
            last.commit().map_err(fail("commit"))?;
        }
        self.committed = next - 1;
        self.wal.restart();
        self.wal.broken = false;
        Ok(())
    }
}

impl Drop for RedbStore {
    /// The writer's clean close is a checkpoint: redb holds every logged
    /// commit durably, and the next open has nothing to redo.
    fn drop(&mut self) {
        let Some(log) = &self.log else { return };
        // A commit redb could not take is redone at the next open.
        if self.shared.visibility.settle().is_err() {
            return;
        }
        if log.wal.end() <= wal::HEADER_LEN {
            return;
        }
        if let Ok(db) = self.db() {
            if let Ok(txn) = db.begin_write() {
                let _ = txn.commit();
            }
        }
    }
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
            let origins = self.origins();
            if ids.len() > 1 && ids.windows(2).all(|w| w[0] < w[1]) {
                return read_sorted(&table, ids, &origins);
            }
            ids.iter().map(|id| read_node(&table, id, &origins)).collect()
        })
    }

    fn scan_nodes(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<NodeRecord>, Error> {
        self.reading(|db| {
            let txn = db.begin_read().map_err(fail("begin read"))?;
            let table = txn.open_table(NODES).map_err(fail("open nodes"))?;
            let origins = self.origins();
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
                out.push(NodeRecord::decode_stored(id, value.value(), &origins)?);
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
        self.after_commit(result)
    }

    fn commit_and_free_records(&mut self, batch: &mut WriteBatch) -> Result<(), Error> {
        let result = self.encode_batch(batch, batch.nodes.iter(), &[]).and_then(|(db, number)| {
            let records = std::mem::take(&mut batch.nodes);
            self.write_encoded(db, number, records)
        });
        batch.nodes = Vec::new();
        self.after_commit(result)
    }

    /// Frees each record as soon as it is encoded into the log record.
    fn commit_and_free_records_early(&mut self, batch: &mut WriteBatch) -> Result<(), Error> {
        let records = std::mem::take(&mut batch.nodes);
        let result = self.encode_batch(batch, records.into_iter(), &[]).and_then(|(db, number)| self.write_encoded(db, number, Vec::new()));
        self.after_commit(result)
    }

    /// Writes the born records from their operations' bodies, with the
    /// batch's own records freed as each is encoded.
    fn commit_received(&mut self, batch: &mut WriteBatch, born: &BornRecords) -> Result<(), Error> {
        let records = std::mem::take(&mut batch.nodes);
        let batch: &WriteBatch = batch;
        let result = born.read(&batch.ops).and_then(|born| self.encode_batch(batch, records.into_iter(), &born));
        let result = result.and_then(|(db, number)| self.write_encoded(db, number, Vec::new()));
        self.after_commit(result)
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
            for (start, encoded) in segment::encode(origin, first, &bodies) {
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
fn read_node(table: &impl ReadableTable<&'static str, &'static [u8]>, id: &str, origins: &[Arc<str>]) -> Result<Option<NodeRecord>, Error> {
    match table.get(id).map_err(fail("read node"))? {
        Some(bytes) => NodeRecord::decode_stored(id, bytes.value(), origins).map(Some),
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
fn read_sorted(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    ids: &[&str],
    origins: &[Arc<str>],
) -> Result<Vec<Option<NodeRecord>>, Error> {
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
                out.push(Some(NodeRecord::decode_stored(key, value.value(), origins)?));
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
    fn records_given_by_value_are_freed_one_by_one_as_they_are_encoded_into_the_same_bytes() {
        let origin: Arc<str> = Arc::from("origin");
        let stamp = |seq| Stamp { hlc: Hlc::new(1_000, 0), id: OpId::new(origin.clone(), seq) };
        let records: Vec<NodeRecord> = (1..=4u64)
            .map(|seq| {
                let mut record = NodeRecord::empty(format!("n:{seq}"));
                record.fields.insert("f".to_owned(), vec![pluresdb_core::FieldValue { value: json!(seq), stamp: stamp(seq) }]);
                record
            })
            .collect();
        let table = || origins::OriginIndex::new(Arc::new(RwLock::new(Arc::new(Vec::new()))));
        let mut expected = Vec::new();
        let batch = nodes_batch(&records);
        wal::encode(&batch, batch.nodes.iter(), &mut table(), &mut expected);
        drop(batch);
        // Each record holds one reference to the origin: while record `i`
        // is taken, those before it are gone (the index holds its own).
        let mut references = Vec::new();
        let nodes = records.into_iter().inspect(|_| references.push(Arc::strong_count(&origin)));
        let mut encoded = Vec::new();
        wal::encode(&WriteBatch::default(), nodes, &mut table(), &mut encoded);
        assert_eq!(encoded, expected);
        let after_first = references[1];
        assert_eq!(references[1..], [after_first, after_first - 1, after_first - 2], "records were not freed as they were encoded");
        drop(encoded);
        assert_eq!(Arc::strong_count(&origin), 1, "a record was kept");
    }

    /// Received operations (two origins, batches of 1-12) of every kind on
    /// a few nodes and on new ones, with random values (nested, floats,
    /// nulls, many fields), supersessions, and some stamped beyond the
    /// clock horizon.
    fn arb_received_batches() -> impl proptest::strategy::Strategy<Value = Vec<Vec<OperationWithMetadata>>> {
        use pluresdb_core::OperationType;
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            prop_oneof![Just(0.5f64), Just(1.0), Just(0.1), Just(-2.75e10)].prop_map(|f| json!(f)),
            ".{0,12}".prop_map(serde_json::Value::from),
        ];
        let value = leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map("[a-d#]{0,3}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        });
        let fields = proptest::collection::btree_map("[a-h]{1,3}|x{20}", value, 0..12);
        // (origin b?, node: 0..4 a shared one, else new; kind; fields; supersede?; far ahead?)
        let op = (any::<bool>(), 0u8..10, prop_oneof![5 => Just(0u8), 4 => Just(1u8), 1 => Just(2u8)], fields, any::<bool>(), 0u8..20);
        proptest::collection::vec(proptest::collection::vec(op, 1..12), 1..8).prop_map(|batches| {
            let mut seqs = [0u64; 2];
            let mut fresh = 0;
            let mut t = 1_000u64;
            batches
                .into_iter()
                .map(|batch| {
                    batch
                        .into_iter()
                        .map(|(b, node, code, fields, supersede, ahead)| {
                            let origin = if b { 1 } else { 0 };
                            seqs[origin] += 1;
                            let seq = seqs[origin];
                            let node = if node < 4 {
                                format!("shared:{node}")
                            } else {
                                fresh += 1;
                                format!("new:{fresh:04}")
                            };
                            let kind = [OperationType::CreateNode, OperationType::UpdateNode, OperationType::DeleteNode][code as usize];
                            let data = match kind {
                                OperationType::DeleteNode => serde_json::Value::Null,
                                _ => serde_json::Value::Object(fields.into_iter().collect()),
                            };
                            let mut op = OperationWithMetadata::new(kind, node, data, ["a", "b"][origin]);
                            op.id.seq = seq;
                            t += 1;
                            op.timestamp = Hlc::new(if ahead == 0 { 50_000_000 + t } else { t }, 0);
                            let first = op.data.as_object().and_then(|fields| fields.keys().next().cloned());
                            if let (OperationType::UpdateNode, true, Some(field), true) = (kind, supersede, first, seq > 1) {
                                op.supersedes.insert(field, vec![OpId::new(["a", "b"][origin], seq / 2), OpId::new(["b", "a"][origin], 1)]);
                            }
                            op
                        })
                        .collect()
                })
                .collect()
        })
    }

    /// Every stored node record's bytes, as redb holds them once reopened.
    fn stored_records(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let store = RedbStore::open(dir).unwrap();
        let db = store.db().unwrap();
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(NODES).unwrap();
        table.iter().unwrap().map(|entry| entry.map(|(key, value)| (key.value().to_owned(), value.value().to_vec())).unwrap()).collect()
    }

    /// What born records are checked against: three replicas of the same
    /// writes, one on redb without a subscriber (born records written from
    /// their bodies), one on redb with a subscriber (which merges every
    /// operation), one in memory (born records built by
    /// `Store::commit_received`'s default). `write` gives each, in turn,
    /// round `i`'s writes and says whether they were taken; all three must
    /// take the same, hold the same records, and, on redb, store the same
    /// bytes.
    fn assert_born_stored_as_merged(peers: [&str; 3], rounds: usize, mut write: impl FnMut(usize, &mut dyn Replica) -> bool) {
        let (born_dir, merged_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut born = Database::open(RedbStore::open(born_dir.path()).unwrap(), peers[0]).unwrap();
        let mut merged = Database::open(RedbStore::open(merged_dir.path()).unwrap(), peers[1]).unwrap();
        let mut memory = Database::open(pluresdb_core::MemoryStore::new(), peers[2]).unwrap();
        let subscriber = merged.subscribe(1 << 20);
        for i in 0..rounds {
            let taken: Vec<bool> = [&mut born as &mut dyn Replica, &mut merged, &mut memory].into_iter().map(|db| write(i, db)).collect();
            assert!(taken.iter().all(|&ok| ok == taken[0]), "{taken:?}");
        }
        let records = merged.store().scan_nodes("", None, usize::MAX).unwrap();
        assert_eq!(born.store().scan_nodes("", None, usize::MAX).unwrap(), records);
        assert_eq!(memory.store().scan_nodes("", None, usize::MAX).unwrap(), records);
        drop((born, merged, subscriber));
        let stored = stored_records(merged_dir.path());
        assert_eq!(stored.len(), records.len());
        assert_eq!(stored_records(born_dir.path()), stored);
    }

    /// Records born of one received operation, written from its body,
    /// are stored in exactly the bytes of the merged records.
    #[test]
    fn records_born_of_one_operation_are_stored_as_merged_ones() {
        use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
        let config = Config { cases: 48, failure_persistence: None, ..Config::default() };
        let mut runner = TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
        runner
            .run(&arb_received_batches(), |batches| {
                assert_born_stored_as_merged(["x", "y", "z"], batches.len(), |i, db| {
                    // Checked ahead (bodies kept from the check) or not.
                    let ops: Vec<_> = match i % 2 {
                        0 => pluresdb_core::ReceivedOp::check_all(batches[i].clone(), None),
                        _ => batches[i].iter().cloned().map(pluresdb_core::ReceivedOp::unchecked).collect(),
                    };
                    db.apply(ops, 100_000 + i as u64);
                    true
                });
                Ok(())
            })
            .unwrap();
    }

    /// Records born of one local operation (an import's creates) are
    /// stored as merged ones too.
    #[test]
    fn records_born_of_one_local_operation_are_stored_as_merged_ones() {
        use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
        let config = Config { cases: 48, failure_persistence: None, ..Config::default() };
        let mut runner = TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
        runner
            .run(&arb_received_batches(), |batches| {
                assert_born_stored_as_merged(["p", "p", "p"], batches.len(), |i, db| {
                    let ops: Vec<OperationWithMetadata> = batches[i]
                        .iter()
                        .map(|op| OperationWithMetadata::new(op.operation, op.node_id.clone(), op.data.clone(), "p"))
                        .collect();
                    db.commit(ops, 100_000 + i as u64)
                });
                Ok(())
            })
            .unwrap();
    }

    /// A replica of [`assert_born_stored_as_merged`].
    trait Replica {
        fn apply(&mut self, ops: Vec<pluresdb_core::ReceivedOp>, now_ms: u64);
        fn commit(&mut self, ops: Vec<OperationWithMetadata>, now_ms: u64) -> bool;
    }

    impl<S: Store> Replica for Database<S> {
        fn apply(&mut self, ops: Vec<pluresdb_core::ReceivedOp>, now_ms: u64) {
            self.apply_received(ops, now_ms).unwrap();
        }

        fn commit(&mut self, ops: Vec<OperationWithMetadata>, now_ms: u64) -> bool {
            self.commit_local(ops, now_ms).is_ok()
        }
    }

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

    /// Set in a child process that runs one test's writes and then aborts.
    const CRASH_DIR_ENV: &str = "PLURESDB_TEST_CRASH_DIR";

    /// The data directory this process is to write into and then crash,
    /// when it is such a child.
    fn crash_child() -> Option<PathBuf> {
        std::env::var_os(CRASH_DIR_ENV).map(PathBuf::from)
    }

    /// Runs `test` (the calling test) in a child process on `dir`: it
    /// writes, sees every commit acknowledged, and aborts (no destructor,
    /// no checkpoint: a crash).
    fn run_crashing_child(test: &str, dir: &Path) {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(CRASH_DIR_ENV, dir)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("CHILD ACKNOWLEDGED ALL"),
            "the child failed before crashing: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "the child did not crash");
    }

    /// The child's last words: every write returned Ok; then the crash.
    fn crash() -> ! {
        println!("CHILD ACKNOWLEDGED ALL");
        std::process::abort()
    }

    /// Writes `range` of a fixed sequence of puts, updates and deletes
    /// (deterministic: the same state for the same range).
    fn workload(db: &mut Database<RedbStore>, range: std::ops::Range<u64>, pad: usize) {
        for i in range {
            let now = 1_000_000 + i;
            // Updates and deletes touch records put earlier (i % 5 == 2).
            match i % 5 {
                3 => db.update(&format!("n:{:04}", i - 1), json!({"updated": i}), now).map(drop).unwrap(),
                4 if i >= 12 && db.get(&format!("n:{:04}", i - 12)).unwrap().is_some() => {
                    db.delete(&format!("n:{:04}", i - 12), now).map(drop).unwrap()
                }
                _ => db
                    .put(&format!("n:{i:04}"), json!({"i": i, "pad": "p".repeat(pad), "next": {"#": format!("n:{:04}", i + 1)}}), now)
                    .map(drop)
                    .unwrap(),
            }
        }
    }

    /// Everything a replica reads back from its store, with the op log's
    /// bodies as stored.
    /// Records, version vector, clock, and the op log's bodies as stored.
    type State = (Vec<NodeRecord>, VersionVector, Hlc, Vec<(OpId, Vec<u8>)>);

    fn state(dir: &Path) -> State {
        let db = Database::open(RedbStore::open(dir).unwrap(), "p").unwrap();
        let mut bodies = EncodedOps::new();
        db.store().op_bodies_after("p", 0, usize::MAX, &mut bodies).unwrap();
        let bodies = bodies.iter().map(|(id, body)| (id.clone(), body.to_vec())).collect();
        (db.store().scan_nodes("", None, usize::MAX).unwrap(), db.version_vector().clone(), db.clock(), bodies)
    }

    /// The state of a store that wrote `range` and closed cleanly.
    fn reference_state(range: std::ops::Range<u64>, pad: usize) -> State {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Database::open(RedbStore::open(dir.path()).unwrap(), "p").unwrap();
        workload(&mut db, range, pad);
        drop(db);
        state(dir.path())
    }

    /// The number of the last commit redb holds durably (read with redb
    /// alone, so no redo runs).
    fn durable_commit_number(dir: &Path) -> u64 {
        let db = Redb::open(dir.join(DATA_FILE)).unwrap();
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        let number = meta.get(COMMIT_META_KEY).unwrap().map_or(0, |v| u64::from_le_bytes(v.value().try_into().unwrap()));
        number
    }

    /// The offsets of the log's records, walked by their lengths.
    fn record_offsets(dir: &Path, count: usize) -> Vec<u64> {
        let bytes = std::fs::read(dir.join(LOG_FILE)).unwrap();
        let mut at = wal::HEADER_LEN as usize;
        let mut offsets = Vec::new();
        for _ in 0..count {
            offsets.push(at as u64);
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            at += wal::RECORD_HEADER + len;
        }
        offsets
    }

    #[test]
    fn acknowledged_commits_survive_a_crash_before_any_checkpoint() {
        const WRITES: u64 = 60;
        if let Some(dir) = crash_child() {
            let mut db = Database::open(RedbStore::open(&dir).unwrap(), "p").unwrap();
            workload(&mut db, 0..WRITES, 100);
            // Readers in the process see every commit.
            let reader = db.store().read_handle();
            assert_eq!(reader.version_vector().unwrap().get("p"), db.version_vector().get("p"));
            crash();
        }
        let dir = tempfile::tempdir().unwrap();
        run_crashing_child("tests::acknowledged_commits_survive_a_crash_before_any_checkpoint", dir.path());
        let durable = durable_commit_number(dir.path());
        assert!(durable < WRITES, "redb held {durable} commits durably: the crash did not test the log");
        let expected = reference_state(0..WRITES, 100);
        assert_eq!(state(dir.path()), expected, "the store after the crash differs from one that never crashed");
        // The redo was made durable: a second open has nothing to redo.
        assert!(durable_commit_number(dir.path()) >= WRITES);
        assert_eq!(state(dir.path()), expected);
    }

    #[test]
    fn a_torn_or_damaged_last_record_ends_the_redo_at_the_one_before() {
        const WRITES: u64 = 20;
        if let Some(dir) = crash_child() {
            let mut db = Database::open(RedbStore::open(&dir).unwrap(), "p").unwrap();
            workload(&mut db, 0..WRITES, 100);
            crash();
        }
        let crashed = tempfile::tempdir().unwrap();
        run_crashing_child("tests::a_torn_or_damaged_last_record_ends_the_redo_at_the_one_before", crashed.path());
        let durable = durable_commit_number(crashed.path());
        let records = (WRITES - durable) as usize;
        let last = *record_offsets(crashed.path(), records).last().unwrap();
        let all_but_last = reference_state(0..WRITES - 1, 100);
        let copy = |damage: &dyn Fn(&Path)| {
            let dir = tempfile::tempdir().unwrap();
            for name in [DATA_FILE, LOG_FILE] {
                std::fs::copy(crashed.path().join(name), dir.path().join(name)).unwrap();
            }
            damage(&dir.path().join(LOG_FILE));
            dir
        };
        // Torn: the file ends inside the last record.
        let torn = copy(&|log| std::fs::OpenOptions::new().write(true).open(log).unwrap().set_len(last + 40).unwrap());
        assert_eq!(state(torn.path()), all_but_last, "torn");
        // A flipped byte in the last record's payload.
        let flipped = copy(&|log| {
            let mut bytes = std::fs::read(log).unwrap();
            bytes[last as usize + wal::RECORD_HEADER + 10] ^= 0x40;
            std::fs::write(log, bytes).unwrap();
        });
        assert_eq!(state(flipped.path()), all_but_last, "flipped");
        // Its length made huge: read as past the end, nothing allocated.
        let huge = copy(&|log| {
            let mut bytes = std::fs::read(log).unwrap();
            bytes[last as usize..last as usize + 4].copy_from_slice(&u32::MAX.to_le_bytes());
            std::fs::write(log, bytes).unwrap();
        });
        assert_eq!(state(huge.path()), all_but_last, "huge length");
        // Undamaged, it holds them all.
        assert_eq!(state(copy(&|_| {}).path()), reference_state(0..WRITES, 100));
    }

    #[test]
    fn a_log_from_another_data_directory_is_set_aside_unapplied() {
        if let Some(dir) = crash_child() {
            let mut db = Database::open(RedbStore::open(&dir).unwrap(), "p").unwrap();
            workload(&mut db, 100..130, 100);
            crash();
        }
        let other = tempfile::tempdir().unwrap();
        run_crashing_child("tests::a_log_from_another_data_directory_is_set_aside_unapplied", other.path());
        let dir = tempfile::tempdir().unwrap();
        {
            let mut db = Database::open(RedbStore::open(dir.path()).unwrap(), "p").unwrap();
            workload(&mut db, 0..10, 100);
        }
        let foreign = std::fs::read(other.path().join(LOG_FILE)).unwrap();
        std::fs::write(dir.path().join(LOG_FILE), &foreign).unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let aside = store.set_aside_logs().to_vec();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(std::fs::read(&aside[0]).unwrap(), foreign, "the foreign log was kept as it was");
        assert!(aside[0].file_name().unwrap().to_str().unwrap().starts_with("pluresdb.wal.set-aside-"));
        drop(store);
        assert_eq!(state(dir.path()), reference_state(0..10, 100), "the store holds what its own file held");
        assert!(RedbStore::open(dir.path()).unwrap().set_aside_logs().is_empty(), "its new log is its own");
    }

    #[test]
    fn a_log_beside_an_older_copy_of_the_data_file_is_set_aside() {
        if let Some(dir) = crash_child() {
            let mut db = Database::open(RedbStore::open(&dir).unwrap(), "p").unwrap();
            workload(&mut db, 10..20, 100);
            crash();
        }
        let dir = tempfile::tempdir().unwrap();
        let backup = tempfile::tempdir().unwrap();
        {
            let mut db = Database::open(RedbStore::open(dir.path()).unwrap(), "p").unwrap();
            workload(&mut db, 0..5, 100);
        }
        std::fs::copy(dir.path().join(DATA_FILE), backup.path().join(DATA_FILE)).unwrap();
        {
            let mut db = Database::open(RedbStore::open(dir.path()).unwrap(), "p").unwrap();
            workload(&mut db, 5..10, 100);
        }
        run_crashing_child("tests::a_log_beside_an_older_copy_of_the_data_file_is_set_aside", dir.path());
        // The data file is restored from the backup; the log stays.
        std::fs::copy(backup.path().join(DATA_FILE), dir.path().join(DATA_FILE)).unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.set_aside_logs().len(), 1, "the log does not continue the backup: it must not be applied");
        drop(store);
        assert_eq!(state(dir.path()), reference_state(0..5, 100), "the store holds what the backup held");
    }

    #[test]
    fn a_full_cycle_is_a_checkpoint_and_the_log_stays_within_its_bound() {
        const WRITES: u64 = 400;
        if let Some(dir) = crash_child() {
            let mut store = RedbStore::open(&dir).unwrap();
            store.log.as_mut().unwrap().wal.set_cycle_bytes(64 * 1024);
            let mut db = Database::open(store, "p").unwrap();
            let mut restarts = 0;
            for i in 0..WRITES {
                let before = db.store().log.as_ref().unwrap().wal.end();
                workload(&mut db, i..i + 1, 3_000);
                restarts += usize::from(db.store().log.as_ref().unwrap().wal.end() < before);
            }
            assert!(restarts >= 10, "{restarts} checkpoints");
            crash();
        }
        let dir = tempfile::tempdir().unwrap();
        run_crashing_child("tests::a_full_cycle_is_a_checkpoint_and_the_log_stays_within_its_bound", dir.path());
        let durable = durable_commit_number(dir.path());
        assert!(durable > WRITES - 30, "the last checkpoint is at commit {durable}");
        assert!(durable < WRITES, "everything was durable in redb: the log was not used");
        // Over 1 MiB of records went through a log of one growth step.
        let len = std::fs::metadata(dir.path().join(LOG_FILE)).unwrap().len();
        assert!(len <= 1 << 20, "the log grew to {len} bytes");
        assert_eq!(state(dir.path()), reference_state(0..WRITES, 3_000));
    }

    #[test]
    fn a_batch_past_the_end_of_the_cycle_is_logged_at_the_start_of_the_next_after_a_checkpoint() {
        if let Some(dir) = crash_child() {
            let mut store = RedbStore::open(&dir).unwrap();
            store.log.as_mut().unwrap().wal.set_cycle_bytes(64 * 1024);
            let mut db = Database::open(store, "p").unwrap();
            let wal = |db: &Database<RedbStore>| (db.store().log.as_ref().unwrap().wal.end(), db.store().log.as_ref().unwrap().committed);
            let mut i = 0;
            loop {
                let (before, _) = wal(&db);
                workload(&mut db, i..i + 1, 3_000);
                i += 1;
                let (after, committed) = wal(&db);
                if after < before {
                    // The batch that did not fit is the new cycle's first
                    // record, applied and synced as any other.
                    assert!(after > wal::HEADER_LEN, "the batch was committed to redb instead of logged");
                    std::fs::write(dir.join("commits"), committed.to_string()).unwrap();
                    break;
                }
            }
            crash();
        }
        let dir = tempfile::tempdir().unwrap();
        run_crashing_child("tests::a_batch_past_the_end_of_the_cycle_is_logged_at_the_start_of_the_next_after_a_checkpoint", dir.path());
        let commits: u64 = std::fs::read_to_string(dir.path().join("commits")).unwrap().parse().unwrap();
        // redb holds the commits before it durably; the batch is redone.
        assert_eq!(durable_commit_number(dir.path()), commits - 1);
        let writes = state(dir.path()).1.get("p");
        assert_eq!(state(dir.path()), reference_state(0..writes, 3_000));
    }

    #[test]
    fn a_log_that_cannot_be_written_fails_the_commit_with_nothing_visible() {
        let meta = |key: &str| WriteBatch { meta: vec![(key.to_owned(), key.as_bytes().to_vec())], ..WriteBatch::default() };
        let dir = tempfile::tempdir().unwrap();
        let mut store = RedbStore::open(dir.path()).unwrap();
        let reader = store.read_handle();
        store.commit(&meta("before")).unwrap();
        // The log's handle is swapped for one that only reads: the append
        // fails as a failing medium makes it fail.
        let read_only = std::fs::File::open(dir.path().join(LOG_FILE)).unwrap();
        let writable = store.log.as_mut().unwrap().wal.replace_file(read_only);
        let err = store.commit(&meta("failed")).unwrap_err();
        assert_eq!(err.storage_fault(), Some(StorageFault::Io), "{}", pluresdb_core::error_chain(&err));
        assert!(pluresdb_core::error_chain(&err).contains("write-ahead log"), "{}", pluresdb_core::error_chain(&err));
        assert_eq!(reader.meta("failed").unwrap(), None, "the failed batch is visible");
        assert_eq!(reader.meta("before").unwrap().as_deref(), Some(&b"before"[..]));
        // The medium comes back: after a recovery, writes go on.
        store.log.as_mut().unwrap().wal.replace_file(writable);
        store.recover().unwrap();
        store.commit(&meta("after")).unwrap();
        drop((store, reader));
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.meta("failed").unwrap(), None, "a failed batch came back at open");
        assert!(store.meta("before").unwrap().is_some() && store.meta("after").unwrap().is_some());
    }

    /// A batch of one metadata entry, `key` -> `key`.
    fn meta_batch(key: &str) -> WriteBatch {
        WriteBatch { meta: vec![(key.to_owned(), key.as_bytes().to_vec())], ..WriteBatch::default() }
    }

    /// Commits "before", then `fail`s a commit of "failed" (its apply runs
    /// on the applier while its record is synced), and checks that the
    /// failed batch is visible neither to a reader nor after a reopen, be
    /// it right after the failure or after a later commit (after a
    /// recovery where the failure was a fault), and that the others stay.
    ///
    /// Each way twice: with the applier, and with an applier held back (as
    /// on a busy machine), whose job the writer takes back and applies.
    fn a_commit_fails(fail: impl Fn(&mut RedbStore), check: impl Fn(&Error)) {
        for (commit_after, held) in [(false, false), (true, false), (false, true), (true, true)] {
            let dir = tempfile::tempdir().unwrap();
            let mut store = RedbStore::open(dir.path()).unwrap();
            store.log.as_ref().unwrap().applier.hold(held);
            let reader = store.read_handle();
            store.commit(&meta_batch("before")).unwrap();
            fail(&mut store);
            let err = store.commit(&meta_batch("failed")).unwrap_err();
            check(&err);
            assert_eq!(reader.meta("failed").unwrap(), None, "the failed batch is visible");
            assert_eq!(store.meta("failed").unwrap(), None, "the failed batch is visible to the writer's handle");
            if commit_after {
                if err.storage_fault().is_some() {
                    store.recover().unwrap();
                }
                store.commit(&meta_batch("after")).unwrap();
                assert!(reader.meta("after").unwrap().is_some());
            }
            drop((store, reader));
            let store = RedbStore::open(dir.path()).unwrap();
            assert_eq!(store.meta("failed").unwrap(), None, "a failed batch came back at open");
            assert!(store.meta("before").unwrap().is_some());
            assert_eq!(store.meta("after").unwrap().is_some(), commit_after);
        }
    }

    #[test]
    fn a_batch_the_applier_has_not_taken_up_when_the_sync_is_done_is_applied_by_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RedbStore::open(dir.path()).unwrap();
        let reader = store.read_handle();
        store.log.as_ref().unwrap().applier.hold(true);
        for i in 0..3 {
            store.commit(&meta_batch(&format!("held {i}"))).unwrap();
            assert!(reader.meta(&format!("held {i}")).unwrap().is_some());
        }
        assert_eq!(store.log.as_ref().unwrap().applier.taken_back(), 3);
        // Let go, the applier takes up jobs again (or the writer, when it
        // is late: either way the commit is done).
        store.log.as_ref().unwrap().applier.hold(false);
        store.commit(&meta_batch("released")).unwrap();
        drop((store, reader));
        let store = RedbStore::open(dir.path()).unwrap();
        for key in ["held 0", "held 1", "held 2", "released"] {
            assert!(store.meta(key).unwrap().is_some(), "{key}");
        }
    }

    /// Whether the last commit's transaction is still held (not yet
    /// committed to redb).
    fn held(store: &RedbStore) -> bool {
        store.shared.visibility.holds()
    }

    /// Whether redb alone (no waiting for a held commit) shows `key` in
    /// the metadata.
    fn redb_shows(store: &RedbStore, key: &str) -> bool {
        let db = store.db().unwrap();
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        meta.get(key).unwrap().is_some()
    }

    /// Whether redb alone shows node `id`.
    fn redb_has_node(store: &RedbStore, id: &str) -> bool {
        let db = store.db().unwrap();
        let txn = db.begin_read().unwrap();
        let nodes = txn.open_table(NODES).unwrap();
        nodes.get(id).unwrap().is_some()
    }

    #[test]
    fn a_read_begun_after_a_commit_returned_sees_it_while_redb_has_not_committed_it() {
        for applier_held in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut db = Database::open(RedbStore::open(dir.path()).unwrap(), "p").unwrap();
            db.store().publish_later();
            // A job the applier has not taken up is applied by the writer:
            // its transaction is held all the same.
            db.store().log.as_ref().unwrap().applier.hold(applier_held);
            let reader = db.store().read_handle();
            db.put("n:1", json!({"v": 1}), 1_000).unwrap();
            // The write returned once durable; redb has not committed it.
            assert!(held(db.store()) && !redb_has_node(db.store(), "n:1"));
            assert!(reader.nodes(&["n:1"]).unwrap()[0].is_some(), "a read begun after the write returned missed it");
            assert!(!held(db.store()), "the read did not commit it");
            // The op log that feeds peers, and the writer's own handle, the same.
            db.put("n:2", json!({"v": 2}), 1_001).unwrap();
            assert!(held(db.store()));
            let ops = reader.ops_after("p", 1, usize::MAX).unwrap();
            assert_eq!(ops.iter().map(|op| op.node_id.as_str()).collect::<Vec<_>>(), ["n:2"]);
            db.put("n:3", json!({"v": 3}), 1_002).unwrap();
            assert!(held(db.store()));
            assert!(db.get("n:3").unwrap().is_some());
            // The next commit commits the one before it first.
            db.put("n:4", json!({"v": 4}), 1_003).unwrap();
            db.put("n:5", json!({"v": 5}), 1_004).unwrap();
            drop((db, reader));
            let db = Database::open(RedbStore::open(dir.path()).unwrap(), "p").unwrap();
            assert_eq!(db.store().count_nodes("n:").unwrap(), 5);
        }
    }

    #[test]
    fn publishing_later_holds_the_transaction_until_publish_commits_it_to_redb() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RedbStore::open(dir.path()).unwrap();
        // Without it, a commit returns once redb has it.
        store.commit(&meta_batch("now")).unwrap();
        assert!(!held(&store) && redb_shows(&store, "now"));
        store.publish_later();
        store.commit(&meta_batch("one")).unwrap();
        assert!(held(&store) && !redb_shows(&store, "one"));
        store.publish().unwrap();
        assert!(!held(&store) && redb_shows(&store, "one"), "publish left the commit to the next reader");
        // Nothing held: nothing to do.
        store.publish().unwrap();
        assert!(redb_shows(&store, "one"));
    }

    #[test]
    fn a_commit_redb_could_not_take_after_it_returned_stays_and_is_read_after_the_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RedbStore::open(dir.path()).unwrap();
        let reader = store.read_handle();
        store.publish_later();
        store.commit(&meta_batch("before")).unwrap();
        store.publish().unwrap();
        // redb's commit fails after the commit returned (durable).
        store.shared.visibility.fail_next();
        store.commit(&meta_batch("answered")).unwrap();
        // The read that makes the commit gets the fault, and so does one
        // after it (no reopen comes before they give up): none hangs.
        for read in [&reader, &store] {
            let err = read.meta("answered").unwrap_err();
            assert_eq!(err.storage_fault(), Some(StorageFault::Io), "{}", pluresdb_core::error_chain(&err));
            assert!(pluresdb_core::error_chain(&err).contains("a commit made to fail"), "{}", pluresdb_core::error_chain(&err));
        }
        // The next commit reports the fault with nothing written; the
        // reopen it makes redoes the acknowledged batch from the log.
        let err = store.commit(&meta_batch("refused")).unwrap_err();
        assert_eq!(err.storage_fault(), Some(StorageFault::Io), "{}", pluresdb_core::error_chain(&err));
        assert!(pluresdb_core::error_chain(&err).contains("a commit made to fail"), "{}", pluresdb_core::error_chain(&err));
        assert_eq!(reader.meta("answered").unwrap().as_deref(), Some(&b"answered"[..]), "the acknowledged batch was lost");
        assert_eq!(reader.meta("refused").unwrap(), None);
        store.recover().unwrap();
        store.commit(&meta_batch("after")).unwrap();
        drop((store, reader));
        let store = RedbStore::open(dir.path()).unwrap();
        for key in ["before", "answered", "after"] {
            assert!(store.meta(key).unwrap().is_some(), "{key} is gone after a reopen");
        }
        assert_eq!(store.meta("refused").unwrap(), None);
    }

    #[test]
    fn a_commit_that_returned_before_redb_took_it_survives_a_crash() {
        if let Some(dir) = crash_child() {
            let mut store = RedbStore::open(&dir).unwrap();
            store.publish_later();
            store.commit(&meta_batch("published")).unwrap();
            store.publish().unwrap();
            store.commit(&meta_batch("answered")).unwrap();
            assert!(held(&store));
            crash();
        }
        let dir = tempfile::tempdir().unwrap();
        run_crashing_child("tests::a_commit_that_returned_before_redb_took_it_survives_a_crash", dir.path());
        let store = RedbStore::open(dir.path()).unwrap();
        assert!(store.meta("published").unwrap().is_some());
        assert_eq!(store.meta("answered").unwrap().as_deref(), Some(&b"answered"[..]), "an acknowledged commit was lost");
    }

    #[test]
    fn a_sync_that_fails_while_the_batch_was_applied_leaves_nothing_visible() {
        // The record is written, its batch applied to a transaction, and
        // the sync fails: the transaction is dropped and the record
        // withdrawn (its header zeroed and synced).
        a_commit_fails(
            |store| store.log.as_mut().unwrap().wal.fail_syncs(1),
            |err| {
                assert_eq!(err.storage_fault(), Some(StorageFault::Io), "{}", pluresdb_core::error_chain(err));
                assert!(pluresdb_core::error_chain(err).contains("a sync made to fail"), "{}", pluresdb_core::error_chain(err));
            },
        );
        // The withdrawal's sync fails too: the log is read again (by the
        // reopen that follows a fault) before it takes records.
        a_commit_fails(
            |store| store.log.as_mut().unwrap().wal.fail_syncs(2),
            |err| assert_eq!(err.storage_fault(), Some(StorageFault::Io), "{}", pluresdb_core::error_chain(err)),
        );
    }

    #[test]
    fn an_apply_that_fails_after_its_record_was_synced_leaves_nothing_visible() {
        // The record is durable when the apply's error arrives: it is
        // withdrawn, or the reopen would redo it.
        a_commit_fails(
            |store| store.log.as_mut().unwrap().fault = Some(applier::Fault::Error),
            |err| assert!(pluresdb_core::error_chain(err).contains("an apply made to fail"), "{}", pluresdb_core::error_chain(err)),
        );
    }

    #[test]
    fn an_apply_that_panics_reaches_the_writer_and_leaves_nothing_visible() {
        for held in [false, true] {
            a_panicking_apply(held);
        }
    }

    fn a_panicking_apply(held: bool) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RedbStore::open(dir.path()).unwrap();
        store.log.as_ref().unwrap().applier.hold(held);
        store.commit(&meta_batch("before")).unwrap();
        store.log.as_mut().unwrap().fault = Some(applier::Fault::Panic);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.commit(&meta_batch("failed"))));
        let message = panicked.unwrap_err();
        assert_eq!(message.downcast_ref::<&str>(), Some(&"an apply made to panic"));
        assert_eq!(store.meta("failed").unwrap(), None);
        drop(store);
        // Its record was synced, and withdrawn before the panic went on.
        let mut store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.meta("failed").unwrap(), None, "a batch whose apply panicked came back at open");
        store.commit(&meta_batch("after")).unwrap();
        drop(store);
        let store = RedbStore::open(dir.path()).unwrap();
        assert!(store.meta("before").unwrap().is_some() && store.meta("after").unwrap().is_some());
    }

    #[test]
    fn the_free_space_is_read_on_every_commit_unless_the_disk_was_roomy_a_moment_ago() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RedbStore::open(dir.path()).unwrap();
        let reads = |store: &RedbStore| store.log.as_ref().unwrap().space.reads;
        let space = |store: &mut RedbStore, roomy_bytes: u64, recheck_secs: u64| {
            let space = &mut store.log.as_mut().unwrap().space;
            space.roomy_bytes = roomy_bytes;
            space.recheck = std::time::Duration::from_secs(recheck_secs);
            space.roomy_until = None;
        };
        // Never roomy (less free than the margin): every commit reads it.
        space(&mut store, u64::MAX, 3_600);
        let before = reads(&store);
        for i in 0..5 {
            store.commit(&meta_batch(&format!("tight {i}"))).unwrap();
        }
        assert_eq!(reads(&store) - before, 5);
        // Roomy, for an hour: the first commit reads it, the others not.
        space(&mut store, 0, 3_600);
        let before = reads(&store);
        for i in 0..5 {
            store.commit(&meta_batch(&format!("roomy {i}"))).unwrap();
        }
        assert_eq!(reads(&store) - before, 1);
        // A fault ends the moment: the disk may have filled meanwhile.
        let read_only = std::fs::File::open(dir.path().join(LOG_FILE)).unwrap();
        let writable = store.log.as_mut().unwrap().wal.replace_file(read_only);
        store.commit(&meta_batch("failed")).unwrap_err();
        store.log.as_mut().unwrap().wal.replace_file(writable);
        store.recover().unwrap();
        let before = reads(&store);
        store.commit(&meta_batch("after the fault")).unwrap();
        store.commit(&meta_batch("after the fault, again")).unwrap();
        assert_eq!(reads(&store) - before, 1);
    }

    #[test]
    fn the_applier_calls_the_idle_hook_after_its_jobs() {
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        fn hook() {
            CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        set_idle_hook(hook);
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let applier = Applier::spawn().unwrap();
        let mut payload = Vec::new();
        let batch = meta_batch("one");
        wal::encode(&batch, batch.nodes.iter(), &mut origins::OriginIndex::new(Default::default()), &mut payload);
        let job = applier::Job {
            db: store.db().unwrap(),
            payload: Arc::new(payload),
            number: store.log.as_ref().unwrap().committed + 1,
            fault: None,
        };
        let before = CALLS.load(std::sync::atomic::Ordering::Relaxed);
        // Until the applier has taken the job up (else this thread would
        // apply it).
        let (outcome, ()) = applier.overlap(job, || {
            while !applier.taken_up() {
                std::thread::yield_now();
            }
        });
        drop(outcome.unwrap().unwrap());
        // Dropping it ends the thread, after the hook ran.
        drop(applier);
        assert!(CALLS.load(std::sync::atomic::Ordering::Relaxed) > before, "the hook was not called");
    }

    #[test]
    fn damaged_lengths_and_counts_are_errors_not_allocations() {
        // A payload that claims 4 billion truncations, then one whose
        // string claims 4 GiB: each fails at the end of its bytes.
        let mut reader = wal::Reader::new(&[0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0]);
        assert_eq!(reader.u32().unwrap(), u32::MAX);
        assert!(reader.str().is_err());
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let db = store.db().unwrap();
        let txn = db.begin_write().unwrap();
        let mut payload = u32::MAX.to_le_bytes().to_vec();
        payload.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(apply(&txn, &payload), Err(Error::Decode { .. })));
        // Trailing bytes after a whole payload are refused too.
        let mut whole = Vec::new();
        wal::encode(
            &WriteBatch::default(),
            std::iter::empty::<NodeRecord>(),
            &mut origins::OriginIndex::new(Default::default()),
            &mut whole,
        );
        assert!(apply(&txn, &whole).is_ok());
        whole.push(0);
        assert!(apply(&txn, &whole).is_err());
    }

    /// A record of one value of `field`, written by operation 1 of `origin`.
    fn record_by(id: &str, origin: &str, field: &str) -> NodeRecord {
        let stamp = Stamp { hlc: Hlc::new(1_000, 0), id: OpId::new(origin, 1) };
        let mut record = NodeRecord::empty(id);
        record.fields.insert(field.to_owned(), vec![pluresdb_core::FieldValue { value: json!(1), stamp }]);
        record
    }

    fn nodes_batch(records: &[NodeRecord]) -> WriteBatch {
        WriteBatch { nodes: records.to_vec(), ..WriteBatch::default() }
    }

    /// The bytes stored for `id`.
    fn stored_bytes(store: &RedbStore, id: &str) -> Vec<u8> {
        // redb alone: the last commit is in it once published.
        store.publish().unwrap();
        let db = store.db().unwrap();
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(NODES).unwrap();
        let bytes = table.get(id).unwrap().unwrap().value().to_vec();
        bytes
    }

    #[test]
    fn records_are_stored_without_their_id_and_name_origins_by_number() {
        let peer = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
        let dir = tempfile::tempdir().unwrap();
        let records = [record_by("user:1", peer, "a"), record_by("user:2", "q", "b"), record_by("user:3", peer, "c")];
        {
            let mut store = RedbStore::open(dir.path()).unwrap();
            store.commit(&nodes_batch(&records[..2])).unwrap();
            store.commit(&nodes_batch(&records[2..])).unwrap();
            let bytes = stored_bytes(&store, "user:3");
            let mut with_id = Vec::new();
            records[2].encode_into(&mut with_id);
            // The id (7 bytes) and the origin (54) are not stored; its
            // number (1 byte) is.
            assert_eq!(bytes.len(), with_id.len() - 7 - 53);
            assert!(!bytes.windows(peer.len()).any(|w| w == peer.as_bytes()));
            assert_eq!(store.meta("store.origin.0").unwrap().as_deref(), Some(peer.as_bytes()));
            assert_eq!(store.meta("store.origin.1").unwrap().as_deref(), Some(&b"q"[..]));
            assert_eq!(store.nodes(&["user:1", "user:2", "user:3"]).unwrap(), records.iter().cloned().map(Some).collect::<Vec<_>>());
        }
        // The table is read back at open (after a checkpoint on close).
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.scan_nodes("user:", None, 10).unwrap(), records);
        assert_eq!(store.read_handle().nodes(&["user:2"]).unwrap(), vec![Some(records[1].clone())]);
    }

    #[test]
    fn records_in_the_layout_with_their_id_read_back_and_are_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let old = record_by("user:1", "p", "a");
        {
            let store = RedbStore::open(dir.path()).unwrap();
            let db = store.db().unwrap();
            let txn = db.begin_write().unwrap();
            let mut bytes = Vec::new();
            old.encode_into(&mut bytes);
            txn.open_table(NODES).unwrap().insert("user:1", bytes.as_slice()).unwrap();
            txn.commit().unwrap();
        }
        let mut db = Database::open(RedbStore::open(dir.path()).unwrap(), "p").unwrap();
        assert_eq!(db.store().nodes(&["user:1"]).unwrap(), vec![Some(old.clone())]);
        assert_eq!(db.store().scan_nodes("", None, 10).unwrap(), vec![old]);
        db.update("user:1", json!({"b": 2}), 2_000).unwrap();
        let node = db.get("user:1").unwrap().unwrap();
        assert_eq!(node.value, *json!({"a": 1, "b": 2}).as_object().unwrap());
        assert_eq!(stored_bytes(db.store(), "user:1")[0], 0x84, "rewritten in the stored layout");
    }

    #[test]
    fn origin_numbers_given_in_a_failed_commit_are_written_by_the_next() {
        for held in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut store = RedbStore::open(dir.path()).unwrap();
            store.log.as_ref().unwrap().applier.hold(held);
            store.commit(&nodes_batch(&[record_by("n:0", "a", "x")])).unwrap();
            // "b" gets its number in a commit that fails.
            store.log.as_mut().unwrap().wal.fail_syncs(1);
            assert!(store.commit(&nodes_batch(&[record_by("n:1", "b", "x")])).is_err());
            store.recover().unwrap();
            assert_eq!(store.meta("store.origin.1").unwrap(), None);
            let later = [record_by("n:2", "b", "y")];
            store.commit(&nodes_batch(&later)).unwrap();
            assert_eq!(store.meta("store.origin.1").unwrap().as_deref(), Some(&b"b"[..]));
            drop(store);
            let store = RedbStore::open(dir.path()).unwrap();
            assert_eq!(store.nodes(&["n:1", "n:2"]).unwrap(), vec![None, Some(later[0].clone())]);
        }
    }

    #[test]
    fn a_damaged_origin_table_fails_the_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RedbStore::open(dir.path()).unwrap();
            let db = store.db().unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert("store.origin.1", b"b".as_slice()).unwrap();
            txn.commit().unwrap();
        }
        let err = RedbStoreError::to_string(&RedbStore::open(dir.path()).unwrap_err());
        assert!(err.contains("origin table") && err.contains("entry 0 is missing"), "{err}");
    }

    #[test]
    fn a_file_in_a_newer_store_format_is_refused_untouched_and_older_ones_are_marked() {
        let dir = tempfile::tempdir().unwrap();
        let format = |store: &RedbStore| {
            let txn = store.db().unwrap().begin_read().unwrap();
            let meta = txn.open_table(META).unwrap();
            meta.get(FORMAT_META_KEY).unwrap().map(|v| u32::from_le_bytes(v.value().try_into().unwrap()))
        };
        let set_format = |store: &RedbStore, value: Option<&[u8]>| {
            let db = store.db().unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(META).unwrap();
                match value {
                    Some(value) => meta.insert(FORMAT_META_KEY, value).unwrap(),
                    None => meta.remove(FORMAT_META_KEY).unwrap(),
                };
            }
            txn.commit().unwrap();
        };
        {
            let mut store = RedbStore::open(dir.path()).unwrap();
            assert_eq!(format(&store), Some(STORE_FORMAT));
            store.commit(&nodes_batch(&[record_by("n1", "p", "a")])).unwrap();
            // A file from before the marker is read and marked.
            set_format(&store, None);
        }
        {
            let store = RedbStore::open(dir.path()).unwrap();
            assert_eq!(format(&store), Some(STORE_FORMAT));
            assert!(store.nodes(&["n1"]).unwrap()[0].is_some());
            set_format(&store, Some(&(STORE_FORMAT + 1).to_le_bytes()));
        }
        let err = RedbStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, RedbStoreError::NewerFormat { found, .. } if found == STORE_FORMAT + 1), "{err}");
        assert!(err.to_string().contains("newer pluresdb"), "{err}");
        {
            // The refused file keeps its marker (nothing was marked over
            // it) and its records.
            let db = open_file(&dir.path().join(DATA_FILE), DEFAULT_CACHE_BYTES).unwrap();
            {
                let txn = db.begin_read().unwrap();
                let marker = txn.open_table(META).unwrap().get(FORMAT_META_KEY).unwrap().map(|v| v.value().to_vec());
                assert_eq!(marker, Some((STORE_FORMAT + 1).to_le_bytes().to_vec()));
                assert!(txn.open_table(NODES).unwrap().get("n1").unwrap().is_some());
            }
            // A marker that is not a number is damage, not a format.
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert(FORMAT_META_KEY, b"x".as_slice()).unwrap();
            txn.commit().unwrap();
        }
        let err = RedbStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, RedbStoreError::Corrupted { .. }), "{err}");
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
