//! The one error type of `walspool-wal`.

use std::io;

/// Everything that can go wrong in walspool. Variants carry what an operator needs
/// to find the problem: the operation, the file, the offset.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation failed.
    Io {
        /// What walspool was doing (`"write"`, `"fdatasync"`, `"open"`, ...).
        op: &'static str,
        /// The file or directory concerned.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// A segment holds bytes that are not a valid record where one was expected.
    Corrupt {
        /// The segment file.
        segment: String,
        /// Byte offset of the first bad byte range.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A segment was written by a newer (or unknown) format version.
    UnsupportedVersion {
        /// The segment file.
        segment: String,
        /// The version in its header.
        found: u16,
        /// The newest version this build reads.
        supported: u16,
    },
    /// An earlier write or fsync failed; the WAL refuses further writes rather than
    /// acknowledge records it may not have stored. Reopen it to recover.
    Poisoned {
        /// The failure that poisoned the WAL.
        cause: String,
        /// The I/O error kind of that failure (`StorageFull` for a full disk).
        kind: io::ErrorKind,
    },
    /// The WAL is at its `max_bytes` bound and the policy is `WhenFull::Reject`.
    Full {
        /// The configured bound.
        max_bytes: u64,
        /// Bytes in use.
        used: u64,
    },
    /// Another writer holds the WAL directory.
    Locked {
        /// The lock file.
        path: String,
    },
    /// The configuration is invalid.
    Config(String),
    /// A record could not be encoded.
    Encode(String),
    /// A record's bytes are intact (CRC ok) but do not decode as the requested type.
    Decode {
        /// Sequence number of the record.
        seq: u64,
        /// The postcard error.
        reason: String,
    },
    /// A record was written with a schema version this build's type cannot read: no
    /// upgrade for it, a failed upgrade, or a version newer than the type. See
    /// [`schema`](crate::schema).
    Schema {
        /// Sequence number of the record.
        seq: u64,
        /// The schema version the record was written with.
        found: u8,
        /// The version of the type it was read as.
        expected: u8,
        /// The type it was read as.
        type_name: String,
        /// What went wrong.
        reason: String,
    },
    /// A single record is larger than a segment may hold.
    RecordTooLarge {
        /// Encoded size.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// Records a reader wanted were dropped by retention bounds before it read them.
    /// The reader continues after this item at `resumed_at`.
    Gap {
        /// The sequence number the reader expected next.
        expected: u64,
        /// The sequence number it resumes at.
        resumed_at: u64,
    },
    /// The WAL was closed.
    Closed,
    /// A consumer name is not valid, or unknown.
    Consumer(String),
}

/// `Result` with walspool's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True when the error is the disk (or storage) running out of space.
    pub fn is_no_space(&self) -> bool {
        match self {
            Error::Io { source, .. } => {
                source.kind() == io::ErrorKind::StorageFull || source.raw_os_error() == Some(28)
            }
            Error::Poisoned { kind, .. } => *kind == io::ErrorKind::StorageFull,
            _ => false,
        }
    }

    /// Records lost in a [`Error::Gap`], 0 otherwise.
    pub fn lost_records(&self) -> u64 {
        match self {
            Error::Gap {
                expected,
                resumed_at,
            } => resumed_at.saturating_sub(*expected),
            _ => 0,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io { op, path, source } => write!(f, "{op} failed on {path}: {source}"),
            Error::Corrupt {
                segment,
                offset,
                reason,
            } => write!(f, "corrupt segment {segment} at byte offset {offset}: {reason}"),
            Error::UnsupportedVersion {
                segment,
                found,
                supported,
            } => write!(
                f,
                "segment {segment} has format version {found}; this build reads versions up to {supported} (upgrade walspool)"
            ),
            Error::Poisoned { cause, .. } => write!(
                f,
                "WAL is poisoned after a failed write or fsync ({cause}); no further appends are accepted, reopen it"
            ),
            Error::Full { max_bytes, used } => write!(
                f,
                "WAL is full: {used} bytes in use, max_bytes is {max_bytes} (policy Reject)"
            ),
            Error::Locked { path } => write!(
                f,
                "WAL directory is locked by another writer (lock file {path}); only one process may write a WAL"
            ),
            Error::Config(m) => write!(f, "invalid configuration: {m}"),
            Error::Encode(m) => write!(f, "could not encode record: {m}"),
            Error::Decode { seq, reason } => write!(f, "record {seq} does not decode as the requested type: {reason}"),
            Error::Schema { seq, found, expected, type_name, reason } => write!(
                f,
                "record {seq} was written with schema version {found}, but {type_name} is version {expected}: {reason} (README: \"Changing your record type\")"
            ),
            Error::RecordTooLarge { size, max } => write!(f, "record of {size} bytes exceeds the limit of {max} bytes"),
            Error::Gap {
                expected,
                resumed_at,
            } => write!(
                f,
                "records {expected}..{resumed_at} were dropped by retention before they were read ({} lost)",
                resumed_at - expected
            ),
            Error::Closed => write!(f, "WAL is closed"),
            Error::Consumer(m) => write!(f, "consumer: {m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
