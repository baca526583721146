//! The archive's error type.

/// What can go wrong while archiving, restoring or reading archived segments.
#[derive(Debug)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The object store failed (network, credentials, a missing bucket, ...).
    Store {
        /// What the archive was doing (`"put"`, `"head"`, `"list"`, ...).
        op: &'static str,
        /// The object key (or prefix) concerned.
        key: String,
        /// object_store's error.
        source: object_store::Error,
    },
    /// An uploaded (or downloaded) object does not match the local segment.
    Verify {
        /// The object key.
        key: String,
        /// What did not match.
        reason: String,
    },
    /// A segment (local or archived) is not a valid, sealed walspool segment.
    Corrupt {
        /// The segment file or object key.
        segment: String,
        /// Byte offset of the problem.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Records a reader wanted are in neither the archive nor the local WAL; the
    /// reader continues at `resumed_at` (like [`walspool_wal::Error::Gap`]).
    Gap {
        /// The sequence number the reader expected next.
        expected: u64,
        /// The sequence number it resumes at.
        resumed_at: u64,
    },
    /// The URL or options are invalid, or a restore target is not usable.
    Config(String),
    /// A local file operation failed.
    Io {
        /// What the archive was doing.
        op: &'static str,
        /// The file or directory concerned.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// An error of the WAL itself.
    Wal(walspool_wal::Error),
    /// The archive's runtime is gone (the [`ArchiveStore`](super::ArchiveStore) was
    /// shut down) or a task on it panicked.
    Runtime(String),
}

impl ArchiveError {
    pub(crate) fn store(
        op: &'static str,
        key: impl std::fmt::Display,
        source: object_store::Error,
    ) -> Self {
        ArchiveError::Store {
            op,
            key: key.to_string(),
            source,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<String>, source: std::io::Error) -> Self {
        ArchiveError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True when the object store reported the object (or bucket) as missing.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            ArchiveError::Store {
                source: object_store::Error::NotFound { .. },
                ..
            }
        )
    }
}

impl std::fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArchiveError::Store { op, key, .. } => write!(f, "object store {op} of {key} failed"),
            ArchiveError::Verify { key, reason } => write!(f, "archived object {key} failed verification: {reason}"),
            ArchiveError::Corrupt {
                segment,
                offset,
                reason,
            } => write!(f, "corrupt segment {segment} at byte offset {offset}: {reason}"),
            ArchiveError::Gap { expected, resumed_at } => write!(
                f,
                "records {expected}..{resumed_at} are neither archived nor on local disk; resuming at {resumed_at}"
            ),
            ArchiveError::Config(m) => write!(f, "archive configuration: {m}"),
            ArchiveError::Io { op, path, .. } => write!(f, "{op} failed on {path}"),
            ArchiveError::Wal(e) => write!(f, "{e}"),
            ArchiveError::Runtime(m) => write!(f, "archive runtime: {m}"),
        }
    }
}

impl std::error::Error for ArchiveError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ArchiveError::Store { source, .. } => Some(source),
            ArchiveError::Io { source, .. } => Some(source),
            // Transparent: it displays as the WAL error, so its source is that error's.
            ArchiveError::Wal(e) => e.source(),
            _ => None,
        }
    }
}

impl From<walspool_wal::Error> for ArchiveError {
    fn from(e: walspool_wal::Error) -> Self {
        ArchiveError::Wal(e)
    }
}
