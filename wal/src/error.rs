//! The one error type of `walspool-wal`.

use std::io;
use std::sync::Arc;

/// A boxed error from outside walspool (a sink, a decoder), kept as the `source()` of
/// the walspool error that wraps it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a WAL is poisoned: what failed (the operation and the file) and, when it was an
/// I/O error, that error, shared by every caller that is told (it is the
/// [`source`](std::error::Error::source) of [`Error::Poisoned`]).
#[derive(Debug, Clone)]
pub struct PoisonCause {
    what: String,
    source: Option<Arc<io::Error>>,
}

impl PoisonCause {
    /// What failed (`"fdatasync on /var/lib/app/wal"`), without the OS error.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// The I/O error, if the cause was one.
    pub fn io_error(&self) -> Option<&io::Error> {
        self.source.as_deref()
    }

    pub(crate) fn io(what: String, e: &io::Error) -> Self {
        // `io::Error` is not `Clone`: rebuild it from the OS error code when there is
        // one (so that `raw_os_error` and `kind` survive), else from kind and message.
        let copy = match e.raw_os_error() {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(e.kind(), e.to_string()),
        };
        PoisonCause {
            what,
            source: Some(Arc::new(copy)),
        }
    }
}

impl std::fmt::Display for PoisonCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)
    }
}

impl From<String> for PoisonCause {
    fn from(what: String) -> Self {
        PoisonCause { what, source: None }
    }
}

impl From<&str> for PoisonCause {
    fn from(what: &str) -> Self {
        what.to_string().into()
    }
}

/// Everything that can go wrong in walspool. Variants carry what an operator needs
/// to find the problem: the operation, the file, the offset.
///
/// `Display` describes this error only; the error it wraps, if any, is its
/// [`source`](std::error::Error::source) (so `anyhow`'s `{:#}` and other chain
/// printers show each cause once).
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
        /// The failure that poisoned the WAL (its I/O error is this error's `source`).
        cause: PoisonCause,
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
        /// What was being decoded, and hints (may be empty).
        context: String,
        /// The decoder's error.
        source: BoxError,
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
    /// A consumer name is not valid, or unknown, or a commit is not possible.
    Consumer(String),
    /// The sink given to [`Consumer::replay`](crate::Consumer::replay) failed; the
    /// consumer's checkpoint is after the last batch it accepted.
    Sink {
        /// The consumer being replayed.
        consumer: String,
        /// The sink's error.
        source: BoxError,
    },
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
            Error::Io { op, path, .. } => write!(f, "{op} failed on {path}"),
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
            Error::Decode { seq, context, .. } if context.is_empty() => write!(f, "record {seq} does not decode as the requested type"),
            Error::Decode { seq, context, .. } => write!(f, "record {seq} does not decode as the requested type ({context})"),
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
            Error::Sink { consumer, .. } => {
                write!(f, "the replay sink of consumer {consumer:?} failed")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Poisoned { cause, .. } => cause
                .io_error()
                .map(|e| e as &(dyn std::error::Error + 'static)),
            Error::Decode { source, .. } | Error::Sink { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

/// An error and its [`source`](std::error::Error::source) chain on one line,
/// `outer: cause: root cause` (what `anyhow` prints with `{:#}`), for logs and command
/// lines: [`Error`]'s own `Display` leaves the causes to `source()`.
///
/// ```
/// use walspool_wal::{error::display_chain, Memory, Options, Wal};
/// let err = Options::default().segment_size(1).validate().unwrap_err();
/// assert_eq!(display_chain(&err), err.to_string()); // no source: just the error
/// ```
pub fn display_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
