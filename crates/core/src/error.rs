//! The core crate's error type.

use crate::operation::OpId;

/// What went wrong in the core: bad input, an operation a replica cannot
/// apply, or a failure of the underlying store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A node id is empty, too long or contains a control character.
    #[error("invalid node id {id:?}: {reason}")]
    InvalidNodeId { id: String, reason: String },
    /// A create or update value is not a JSON object.
    #[error("a node value must be a JSON object, found {found}")]
    ValueNotObject { found: &'static str },
    /// A value is larger than [`crate::MAX_VALUE_BYTES`].
    #[error("the value is {size} bytes of JSON; the limit is {limit}")]
    ValueTooLarge { size: usize, limit: usize },
    /// An operation is malformed.
    #[error("invalid operation {id}: {reason}")]
    InvalidOperation { id: OpId, reason: String },
    /// An operation arrived before its predecessor from the same origin.
    #[error("operation {origin}/{found} arrived before {origin}/{expected}; operations of one origin apply in sequence")]
    SequenceGap { origin: String, expected: u64, found: u64 },
    /// A local write names another peer as its origin.
    #[error("operation claims origin {origin:?} but this replica is {local:?}")]
    ForeignOrigin { origin: String, local: String },
    /// An operation does not continue its origin's hash chain.
    #[error("operation {id} does not continue its origin's hash chain")]
    BrokenChain { id: OpId },
    /// A signature does not verify against the origin's key.
    #[error("the signature on operation {id} does not verify against its origin's key")]
    BadSignature { id: OpId },
    /// A metadata key belongs to the core.
    #[error("metadata key {key:?} is reserved for the core")]
    ReservedKey { key: String },
    /// The node does not exist (never created, or deleted).
    #[error("node {id:?} not found")]
    NotFound { id: String },
    /// A query is malformed or goes past a limit (the reason says which).
    #[error("invalid query: {reason}")]
    InvalidQuery { reason: String },
    /// An index definition is malformed, or one of that name exists.
    #[error("invalid index: {reason}")]
    InvalidIndex { reason: String },
    /// No index of that name.
    #[error("no index named {name:?}")]
    NoSuchIndex { name: String },
    /// Stored or received bytes do not decode.
    #[error("cannot decode {what}: {reason}")]
    Decode { what: &'static str, reason: String },
    /// The store failed; nothing from the failed call was written.
    #[error("storage failed")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store's medium failed (a full disk, an I/O error): the call
    /// wrote nothing, or, for an error at the very end of a commit, all of
    /// it. The condition may pass; [`Store::recover`](crate::Store::recover)
    /// makes the store usable again once it has.
    #[error("the store cannot write: {fault}")]
    StoreFault {
        /// What kind of fault.
        fault: StorageFault,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Why a store cannot write for now (see [`Error::StoreFault`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageFault {
    /// The disk (or the user's quota) is full.
    DiskFull,
    /// Another I/O error: a failed write, fsync or read of the medium.
    Io,
}

impl StorageFault {
    /// The fault of an I/O error: full disk or quota, or another error.
    pub fn of_io(err: &std::io::Error) -> Self {
        // ENOSPC and EDQUOT on Linux and the BSDs; StorageFull covers the
        // rest where std maps them.
        const ENOSPC: i32 = 28;
        const EDQUOT_LINUX: i32 = 122;
        const EDQUOT_BSD: i32 = 69;
        let full = err.kind() == std::io::ErrorKind::StorageFull
            || matches!(err.raw_os_error(), Some(ENOSPC))
            || (cfg!(target_os = "linux") && err.raw_os_error() == Some(EDQUOT_LINUX))
            || (cfg!(any(target_os = "macos", target_os = "freebsd")) && err.raw_os_error() == Some(EDQUOT_BSD));
        if full {
            StorageFault::DiskFull
        } else {
            StorageFault::Io
        }
    }
}

impl std::fmt::Display for StorageFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StorageFault::DiskFull => "the disk is full",
            StorageFault::Io => "an I/O error",
        })
    }
}

impl Error {
    /// Wraps a store implementation's error.
    pub fn storage(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Storage(Box::new(err))
    }

    /// Wraps a store implementation's error that is a fault of its medium.
    pub fn store_fault(fault: StorageFault, err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::StoreFault { fault, source: Box::new(err) }
    }

    /// The fault, when the store's medium failed (the condition may pass).
    pub fn storage_fault(&self) -> Option<StorageFault> {
        match self {
            Error::StoreFault { fault, .. } => Some(*fault),
            _ => None,
        }
    }

    /// Whether the error is the caller's input rather than a failure of the
    /// replica (callers map this to "bad request" / exit code 2).
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Error::InvalidNodeId { .. }
                | Error::ValueNotObject { .. }
                | Error::ValueTooLarge { .. }
                | Error::InvalidOperation { .. }
                | Error::ForeignOrigin { .. }
                | Error::BrokenChain { .. }
                | Error::BadSignature { .. }
                | Error::InvalidQuery { .. }
                | Error::InvalidIndex { .. }
        )
    }
}

/// An error and its causes on one line (`step: cause: cause`), for status
/// reports, API answers and logs.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
