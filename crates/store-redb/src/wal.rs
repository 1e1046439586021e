//! The write-ahead log: what makes a commit durable between checkpoints.
//!
//! A durable redb commit writes every page the transaction touched and
//! syncs the file twice; appending the batch to a log and syncing that once
//! costs a fraction of it. So a commit applies the batch to redb without
//! durability, appends a record of it here and syncs it (`fdatasync`), and
//! only now and then (a checkpoint) is redb committed durably, after which
//! the records before are no longer needed. Opening the store redoes the
//! records that redb does not hold yet.
//!
//! Layout of [`LOG_FILE`]: a header of [`HEADER_LEN`] bytes (magic, the id
//! of the redb file the log belongs to, a checksum of both), then records
//! back to back: payload length (u32 LE), commit number (u64 LE), checksum
//! (the first 16 bytes of blake3 over number and payload), payload. The
//! payload is the batch's changes as the commit applies them to redb (see
//! [`encode`]); applying it again to the state it was first applied to
//! gives the same tables.
//!
//! A cycle starts at [`HEADER_LEN`] after each checkpoint and overwrites
//! the last cycle's records. Commit numbers only grow, so records left from
//! an older cycle after the newest ones never continue their sequence and
//! end a redo; a record only partly written fails its checksum and ends it.
//! The file grows to the cycle's bound once, written with zeros ahead of the
//! records: a write into space already allocated needs no metadata sync.

use crate::origins::OriginIndex;
use pluresdb_core::{BornRecord, Error, IndexEntry, NodeRecord, Stamp, WriteBatch};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The name of the log inside a data directory, beside
/// [`DATA_FILE`](crate::DATA_FILE).
pub const LOG_FILE: &str = "pluresdb.wal";

const MAGIC: &[u8; 8] = b"PLRSWAL1";
/// Magic, file id (16 bytes), checksum (8 bytes).
pub const HEADER_LEN: u64 = 32;
/// Payload length, commit number, checksum.
pub const RECORD_HEADER: usize = 4 + 8 + 16;
/// Where a cycle ends by default: a record that would pass it is committed
/// to redb durably instead (a checkpoint), and the next cycle starts.
pub const CYCLE_BYTES: u64 = 8 << 20;
/// The file grows by this much at a time, written with zeros.
const GROW_BYTES: u64 = 1 << 20;

/// The id of a redb file: the log of one file is never redone into another.
pub type FileId = [u8; 16];

fn header_bytes(file_id: &FileId) -> [u8; HEADER_LEN as usize] {
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..24].copy_from_slice(file_id);
    let sum = blake3::hash(&header[..24]);
    header[24..].copy_from_slice(&sum.as_bytes()[..8]);
    header
}

fn record_checksum(number: u64, payload: &[u8]) -> [u8; 16] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&number.to_le_bytes());
    hasher.update(payload);
    let mut sum = [0u8; 16];
    sum.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    sum
}

/// What a log file found beside a redb file is.
pub enum Found {
    /// No log, or one that was never written past its creation.
    Nothing,
    /// The log of this file.
    Ours(Wal),
    /// A log that is not this file's (or not a log): set it aside.
    Foreign(&'static str),
}

/// An open log.
pub struct Wal {
    path: PathBuf,
    file: File,
    /// Where the next record goes.
    end: u64,
    /// How far the file is written (with records or zeros).
    allocated: u64,
    /// Where a cycle ends.
    cycle_bytes: u64,
    /// Set when an append failed: nothing is appended until the log has
    /// been read again (a recovery), since what the failed write left is
    /// unknown.
    pub broken: bool,
    /// How many of the next syncs fail (tests).
    #[cfg(test)]
    failing_syncs: u32,
}

impl Wal {
    /// Looks at the log in `dir` for the redb file `file_id`.
    pub fn find(dir: &Path, file_id: &FileId) -> std::io::Result<Found> {
        let path = dir.join(LOG_FILE);
        let mut file = match std::fs::OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Nothing),
            Err(err) => return Err(err),
        };
        let len = file.metadata()?.len();
        let mut header = [0u8; HEADER_LEN as usize];
        if len < HEADER_LEN {
            // Created but its header never made it to the disk.
            return Ok(if len == 0 { Found::Nothing } else { Found::Foreign("it is shorter than a log's header") });
        }
        file.read_exact(&mut header)?;
        if header == [0u8; HEADER_LEN as usize] {
            return Ok(Found::Nothing);
        }
        if &header[..8] != MAGIC || header[24..] != blake3::hash(&header[..24]).as_bytes()[..8] {
            return Ok(Found::Foreign("it is not a PluresDB log (its header does not check)"));
        }
        if &header[8..24] != file_id {
            return Ok(Found::Foreign("it belongs to another data file (its file id differs)"));
        }
        Ok(Found::Ours(Wal::opened(path, file, len)))
    }

    /// Creates an empty log for `file_id` in `dir`, replacing what is there.
    pub fn create(dir: &Path, file_id: &FileId) -> std::io::Result<Wal> {
        let path = dir.join(LOG_FILE);
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(true);
        // It holds the latest writes: readable by the owner only.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&path)?;
        file.write_all(&header_bytes(file_id))?;
        file.sync_all()?;
        sync_dir(dir);
        Ok(Wal::opened(path, file, HEADER_LEN))
    }

    /// The log in `file`, with nothing after its header taken yet and
    /// `allocated` bytes written.
    fn opened(path: PathBuf, file: File, allocated: u64) -> Wal {
        Wal {
            path,
            file,
            end: HEADER_LEN,
            allocated,
            cycle_bytes: CYCLE_BYTES,
            broken: false,
            #[cfg(test)]
            failing_syncs: 0,
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the next record goes (the bytes the cycle holds so far).
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Sets where a cycle ends (tests use small ones).
    #[cfg(test)]
    pub fn set_cycle_bytes(&mut self, bytes: u64) {
        self.cycle_bytes = bytes.max(HEADER_LEN);
    }

    /// Swaps the file handle (tests make appends fail with one that only
    /// reads) and returns the one it had.
    #[cfg(test)]
    pub fn replace_file(&mut self, file: File) -> File {
        std::mem::replace(&mut self.file, file)
    }

    /// Whether a record of `payload_len` bytes fits in this cycle.
    pub fn fits(&self, payload_len: usize) -> bool {
        self.end.saturating_add((RECORD_HEADER + payload_len) as u64) <= self.cycle_bytes
    }

    /// Whether a record of `payload_len` bytes fits in a cycle of its own.
    pub fn fits_in_a_cycle(&self, payload_len: usize) -> bool {
        HEADER_LEN.saturating_add((RECORD_HEADER + payload_len) as u64) <= self.cycle_bytes
    }

    /// Makes sure the file is written up to where a record of
    /// `payload_len` bytes would end, with zeros, so that the append
    /// writes into allocated space. Fails before anything is committed.
    pub fn reserve(&mut self, payload_len: usize) -> std::io::Result<()> {
        let need = self.end + (RECORD_HEADER + payload_len) as u64;
        if need <= self.allocated {
            return Ok(());
        }
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let target = need.div_ceil(GROW_BYTES) * GROW_BYTES;
        self.file.seek(SeekFrom::Start(self.allocated))?;
        while self.allocated < target {
            let n = (target - self.allocated).min(ZEROS.len() as u64) as usize;
            self.file.write_all(&ZEROS[..n])?;
            self.allocated += n as u64;
        }
        Ok(())
    }

    /// Appends the record of commit `number` and syncs it: when this
    /// returns `Ok` the record survives a crash.
    pub fn append(&mut self, number: u64, payload: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(payload.len()).map_err(|_| std::io::Error::other("a log record over 4 GiB"))?;
        let mut head = [0u8; RECORD_HEADER];
        head[..4].copy_from_slice(&len.to_le_bytes());
        head[4..12].copy_from_slice(&number.to_le_bytes());
        head[12..].copy_from_slice(&record_checksum(number, payload));
        // One write where the record is small (the common single write).
        if payload.len() <= 4096 {
            let mut one = [0u8; RECORD_HEADER + 4096];
            one[..RECORD_HEADER].copy_from_slice(&head);
            one[RECORD_HEADER..RECORD_HEADER + payload.len()].copy_from_slice(payload);
            self.write_at(&one[..RECORD_HEADER + payload.len()], self.end)?;
        } else {
            self.write_at(&head, self.end)?;
            self.write_at(payload, self.end + RECORD_HEADER as u64)?;
        }
        self.sync()
    }

    /// Writes `bytes` at `offset` (one `pwrite` where there is one).
    fn write_at(&mut self, bytes: &[u8], offset: u64) -> std::io::Result<()> {
        #[cfg(unix)]
        {
            std::os::unix::fs::FileExt::write_all_at(&self.file, bytes, offset)
        }
        #[cfg(not(unix))]
        {
            self.file.seek(SeekFrom::Start(offset))?;
            self.file.write_all(bytes)
        }
    }

    /// Syncs what was written (`fdatasync`).
    fn sync(&mut self) -> std::io::Result<()> {
        #[cfg(test)]
        if self.failing_syncs > 0 {
            self.failing_syncs -= 1;
            return Err(std::io::Error::other("a sync made to fail"));
        }
        self.file.sync_data()
    }

    /// Makes the next `count` syncs fail after their writes (tests: a
    /// medium that takes a write but fails to make it durable).
    #[cfg(test)]
    pub fn fail_syncs(&mut self, count: u32) {
        self.failing_syncs = count;
    }

    /// Moves the end past the record [`append`](Self::append) wrote, once
    /// its commit is done.
    pub fn appended(&mut self, payload_len: usize) {
        self.end += (RECORD_HEADER + payload_len) as u64;
        self.allocated = self.allocated.max(self.end);
    }

    /// Withdraws the record just appended (its commit failed after it was
    /// synced, or may have been): its header is overwritten with zeros and
    /// synced, so no redo applies it. `append` had not moved the end past
    /// it.
    pub fn retract(&mut self) -> std::io::Result<()> {
        self.write_at(&[0u8; RECORD_HEADER], self.end)?;
        self.sync()
    }

    /// Starts a new cycle: redb holds everything logged so far durably.
    pub fn restart(&mut self) {
        self.end = HEADER_LEN;
    }

    /// Reads the records from the start of the file, in order, passing each
    /// (commit number, payload) to `each` until it returns `false`, and
    /// stops at the first record that is not whole (torn, overwritten in
    /// part, or garbage). A length is checked against what the file holds
    /// before anything is read or allocated for it.
    pub fn scan(&mut self, mut each: impl FnMut(u64, &[u8]) -> Result<bool, pluresdb_core::Error>) -> Result<Scan, ScanError> {
        let len = self.file.metadata().map_err(ScanError::Io)?.len();
        let mut reader = std::io::BufReader::with_capacity(256 * 1024, &self.file);
        reader.seek(SeekFrom::Start(HEADER_LEN)).map_err(ScanError::Io)?;
        let mut at = HEADER_LEN;
        let mut payload = Vec::new();
        let mut records = 0u64;
        loop {
            let mut head = [0u8; RECORD_HEADER];
            if len - at < RECORD_HEADER as u64 {
                return Ok(Scan { records, stop: Stop::End });
            }
            reader.read_exact(&mut head).map_err(ScanError::Io)?;
            let size = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as u64;
            let number = u64::from_le_bytes(head[4..12].try_into().expect("8 bytes"));
            if size > len - at - RECORD_HEADER as u64 {
                return Ok(Scan { records, stop: Stop::LengthPastEnd });
            }
            payload.resize(size as usize, 0);
            reader.read_exact(&mut payload).map_err(ScanError::Io)?;
            if head[12..] != record_checksum(number, &payload) {
                return Ok(Scan { records, stop: Stop::Checksum });
            }
            records += 1;
            at += RECORD_HEADER as u64 + size;
            if !each(number, &payload).map_err(ScanError::Record)? {
                return Ok(Scan { records, stop: Stop::Caller });
            }
        }
    }
}

/// How a [`Wal::scan`] ended.
#[derive(Debug)]
pub struct Scan {
    /// Whole records read.
    pub records: u64,
    /// Why it stopped.
    pub stop: Stop,
}

/// Why a [`Wal::scan`] stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// Too few bytes left for a record.
    End,
    /// A record's length reaches past the end of the file.
    LengthPastEnd,
    /// A record's checksum does not match (torn, or older bytes).
    Checksum,
    /// The caller stopped it.
    Caller,
}

/// A [`Wal::scan`] that failed.
pub enum ScanError {
    /// Reading the file failed.
    Io(std::io::Error),
    /// Applying a record failed.
    Record(pluresdb_core::Error),
}

/// Syncs a directory so that a file created or renamed in it stays.
pub fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Renames the log aside (never deleted: it may be someone's only copy of
/// acknowledged writes) and returns its new path.
pub fn set_aside(dir: &Path, now_secs: u64) -> std::io::Result<PathBuf> {
    let from = dir.join(LOG_FILE);
    for n in 0..1_000u32 {
        let name = match n {
            0 => format!("{LOG_FILE}.set-aside-{now_secs}"),
            n => format!("{LOG_FILE}.set-aside-{now_secs}-{n}"),
        };
        let to = dir.join(name);
        if !to.exists() {
            std::fs::rename(&from, &to)?;
            sync_dir(dir);
            return Ok(to);
        }
    }
    Err(std::io::Error::other("1,000 set-aside logs already"))
}

// The payload: sections in the order a commit applies them, each a count
// (u32) and its entries; strings and byte strings are a u32 length and the
// bytes, integers little-endian.

fn put_u32(out: &mut Vec<u8>, n: u32) {
    out.extend_from_slice(&n.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len() as u32);
    out.extend_from_slice(bytes);
}

fn put_count(out: &mut Vec<u8>, n: usize) {
    put_u32(out, n as u32);
}

/// Appends bytes written by `write` with their length in front.
fn put_framed(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    put_u32(out, 0);
    write(out);
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

fn put_stamp(out: &mut Vec<u8>, stamp: &Stamp) {
    put_u64(out, stamp.hlc.as_u64());
    put_bytes(out, stamp.id.origin.as_bytes());
    put_u64(out, stamp.id.seq);
}

fn put_index_entry(out: &mut Vec<u8>, entry: &IndexEntry) {
    put_u32(out, entry.index);
    put_bytes(out, &entry.key);
    put_bytes(out, entry.id.as_bytes());
}

/// Appends to `out` the changes `batch` makes, as the commit applies them
/// (see [`crate::apply`]): op-log truncations, op-log segments, encoded node
/// records, version vector, metadata, deferred operations, index changes.
/// Node records and segments are encoded here once; redb takes them from
/// these bytes. The node records are `nodes` (those of `batch.nodes`, or
/// taken out of it: given by value, each is dropped as soon as it is
/// encoded, while its blocks are still in the cache). Records name their
/// stamps' origins by their numbers in `origins` (see [`crate::origins`]);
/// the entries the file does not hold yet go with the meta changes.
#[cfg(test)]
pub fn encode<R: std::borrow::Borrow<NodeRecord>>(
    batch: &WriteBatch,
    nodes: impl ExactSizeIterator<Item = R>,
    origins: &mut OriginIndex,
    out: &mut Vec<u8>,
) {
    encode_with_born(batch, nodes, &[], origins, out).expect("records alone always encode")
}

/// [`encode`], with the records `born` of one of the batch's operations
/// each besides `nodes` (see [`pluresdb_core::BornRecords`]), written from
/// those operations' bodies: the same bytes as their records encoded. Both
/// are in node id order. Fails only if a born record's body no longer
/// reads as it did ([`BornRecord::encode_stored`]): `out` is then to be
/// dropped, and the origins numbered meanwhile stay unwritten.
pub fn encode_with_born<R: std::borrow::Borrow<NodeRecord>>(
    batch: &WriteBatch,
    nodes: impl ExactSizeIterator<Item = R>,
    born: &[BornRecord<'_>],
    origins: &mut OriginIndex,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    put_count(out, batch.truncate.len());
    for (origin, from) in &batch.truncate {
        put_bytes(out, origin.as_bytes());
        put_u64(out, *from);
    }
    // The core hands each origin's new operations over in sequence, so
    // each origin's share of the batch is one run of consecutive ops.
    let mut by_origin: BTreeMap<&str, (u64, Vec<&[u8]>)> = BTreeMap::new();
    for (id, body) in batch.ops.iter() {
        by_origin.entry(&id.origin).or_insert_with(|| (id.seq, Vec::new())).1.push(body);
    }
    let count_at = out.len();
    put_u32(out, 0);
    let mut segments = 0u32;
    for (origin, (first_seq, bodies)) in &by_origin {
        for run in crate::segment::runs(origin, bodies) {
            put_bytes(out, origin.as_bytes());
            put_u64(out, first_seq + run.start as u64);
            put_framed(out, |out| crate::segment::write(&bodies[run], out));
            segments += 1;
        }
    }
    out[count_at..count_at + 4].copy_from_slice(&segments.to_le_bytes());
    // Both in node id order, written in that order together (as records
    // merged here were), so that origins get the same numbers.
    put_count(out, nodes.len() + born.len());
    let mut born = born.iter().peekable();
    let mut unread = Ok(());
    let mut put_born = |out: &mut Vec<u8>, origins: &mut OriginIndex, born: &BornRecord<'_>| {
        put_bytes(out, born.node_id().as_bytes());
        put_framed(out, |out| {
            if let Err(err) = born.encode_stored(out, |origin| origins.number(origin)) {
                unread = Err(err);
            }
        });
    };
    for record in nodes {
        let record = record.borrow();
        while let Some(born) = born.next_if(|born| born.node_id() < record.id.as_str()) {
            put_born(out, origins, born);
        }
        put_bytes(out, record.id.as_bytes());
        put_framed(out, |out| record.encode_stored(out, |origin| origins.number(origin)));
    }
    for born in born {
        put_born(out, origins, born);
    }
    unread?;
    put_count(out, batch.version_vector.len());
    for (origin, seq) in &batch.version_vector {
        put_bytes(out, origin.as_bytes());
        put_u64(out, *seq);
    }
    put_count(out, batch.meta.len() + origins.unwritten().count());
    for (key, value) in &batch.meta {
        put_bytes(out, key.as_bytes());
        put_bytes(out, value);
    }
    for (key, value) in origins.unwritten() {
        put_bytes(out, key.as_bytes());
        put_bytes(out, value);
    }
    put_count(out, batch.released.len());
    batch.released.iter().for_each(|stamp| put_stamp(out, stamp));
    put_count(out, batch.deferred.len());
    batch.deferred.iter().for_each(|stamp| put_stamp(out, stamp));
    put_count(out, batch.index_dropped.len());
    batch.index_dropped.iter().for_each(|n| put_u32(out, *n));
    put_count(out, batch.index_removed.len());
    batch.index_removed.iter().for_each(|entry| put_index_entry(out, entry));
    put_count(out, batch.index_added.len());
    batch.index_added.iter().for_each(|entry| put_index_entry(out, entry));
    Ok(())
}

/// Reads a payload; every length is checked against what is left, so a
/// damaged one is an error, never a large allocation.
pub struct Reader<'a> {
    bytes: &'a [u8],
}

fn damaged(reason: &str) -> pluresdb_core::Error {
    pluresdb_core::Error::Decode { what: "log record", reason: reason.to_owned() }
}

impl<'a> Reader<'a> {
    /// Reads `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], pluresdb_core::Error> {
        if n > self.bytes.len() {
            return Err(damaged("a length past its end"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    /// A u32.
    pub fn u32(&mut self) -> Result<u32, pluresdb_core::Error> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    /// A u64.
    pub fn u64(&mut self) -> Result<u64, pluresdb_core::Error> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    /// A byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8], pluresdb_core::Error> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    /// A string.
    pub fn str(&mut self) -> Result<&'a str, pluresdb_core::Error> {
        std::str::from_utf8(self.bytes()?).map_err(|_| damaged("a string that is not UTF-8"))
    }

    /// Fails unless everything was read.
    pub fn finish(&self) -> Result<(), pluresdb_core::Error> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(damaged("bytes after its end"))
        }
    }
}
