//! Configuration of a [`Wal`](crate::Wal).

use std::time::Duration;

use crate::error::{Error, Result};
use crate::format::{FOOTER_LEN, FRAME_HEADER_LEN};

/// When an append's future resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// After an `fdatasync` covering the record. Concurrent appenders share one
    /// fdatasync (group commit). Survives process crash and power loss. The default.
    #[default]
    Sync,
    /// After the record is written to the OS (survives a process crash, not a power
    /// loss); the WAL fdatasyncs at most this often in the background.
    Periodic(Duration),
    /// As soon as the record is in walspool's in-process buffer. The writer thread
    /// writes it right after and fdatasyncs at least once a second; a process crash
    /// loses what was buffered. Use [`Wal::flush`](crate::Wal::flush) to wait. See
    /// also [`Options::writeback_bytes`].
    Buffered,
}

/// What an append does when the WAL is at `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WhenFull {
    /// Wait (without spinning) until consumers commit and space is freed. The default:
    /// a WAL exists so that records are not lost, so it pushes back rather than drop.
    #[default]
    Block,
    /// Fail the append with [`Error::Full`].
    Reject,
    /// Delete the oldest segments, counting and logging every record dropped that a
    /// consumer had not yet committed.
    DropOldest,
}

/// What to do with corruption: damage to records that were synced (in the tail segment
/// at open, or in sealed segments when they are read), damage followed by intact
/// records, or a log that ends before its recovery point or a consumer checkpoint. A
/// torn tail (bytes written after the last fdatasync) is cut in both modes. See
/// [`recovery`](crate::recovery).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RecoveryMode {
    /// Corruption is an [`Error::Corrupt`](crate::Error) naming the segment,
    /// the byte offset and what follows; `open` changes nothing. The default.
    #[default]
    Strict,
    /// Skip damaged records and count them in `corrupt_skipped_total` (logged), keep
    /// every intact record after them, and continue numbering after the highest
    /// sequence number that may have been acknowledged: never a reused sequence number.
    Lenient,
}

/// Options for [`Wal::open`](crate::Wal::open). Start from `Options::default()` and
/// chain the setters.
#[derive(Debug, Clone)]
pub struct Options {
    pub(crate) segment_size: u64,
    pub(crate) segment_max_age: Option<Duration>,
    pub(crate) durability: Durability,
    pub(crate) max_bytes: Option<u64>,
    pub(crate) max_age: Option<Duration>,
    pub(crate) when_full: WhenFull,
    pub(crate) recovery: RecoveryMode,
    pub(crate) stats_interval: Option<Duration>,
    pub(crate) max_buffered_bytes: usize,
    pub(crate) writeback_bytes: u64,
    pub(crate) zero_ahead_bytes: u64,
    pub(crate) wal_id: Option<String>,
    pub(crate) hmac: Option<std::sync::Arc<crate::chain::HmacKey>>,
    pub(crate) schema: crate::schema::Schema,
}

/// Default segment size: 64 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;
/// Smallest segment size accepted: 4 KiB.
pub const MIN_SEGMENT_SIZE: u64 = 4 << 10;
/// Largest segment size accepted: 4 GiB.
pub const MAX_SEGMENT_SIZE: u64 = 4 << 30;
/// Default of [`Options::writeback_bytes`]: 4 MiB.
pub const DEFAULT_WRITEBACK_BYTES: u64 = 4 << 20;
/// Smallest non-zero [`Options::writeback_bytes`] accepted: 64 KiB.
pub const MIN_WRITEBACK_BYTES: u64 = 64 << 10;
/// Default of [`Options::zero_ahead_bytes`]: 1 MiB.
pub const DEFAULT_ZERO_AHEAD_BYTES: u64 = 1 << 20;
/// Smallest non-zero [`Options::zero_ahead_bytes`] accepted: 64 KiB.
pub const MIN_ZERO_AHEAD_BYTES: u64 = 64 << 10;

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_size: DEFAULT_SEGMENT_SIZE,
            segment_max_age: None,
            durability: Durability::Sync,
            max_bytes: None,
            max_age: None,
            when_full: WhenFull::Block,
            recovery: RecoveryMode::Strict,
            stats_interval: Some(Duration::from_millis(500)),
            max_buffered_bytes: 8 << 20,
            writeback_bytes: DEFAULT_WRITEBACK_BYTES,
            zero_ahead_bytes: DEFAULT_ZERO_AHEAD_BYTES,
            wal_id: None,
            hmac: None,
            schema: crate::schema::Schema::default(),
        }
    }
}

impl Options {
    /// Roll to a new segment once the current one reaches this many bytes (default 64 MiB).
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }
    /// Roll to a new segment once the current one is this old and holds a record.
    pub fn segment_max_age(mut self, age: Duration) -> Self {
        self.segment_max_age = Some(age);
        self
    }
    /// When appends resolve (default [`Durability::Sync`]).
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }
    /// Bound on the bytes of all segments. Must be at least two segments.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes);
        self
    }
    /// Sealed segments whose newest record is older than this are deleted (records not
    /// yet committed by every consumer are counted as dropped).
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }
    /// Policy at `max_bytes` (default [`WhenFull::Block`]).
    pub fn when_full(mut self, w: WhenFull) -> Self {
        self.when_full = w;
        self
    }
    /// What to do with corruption (default [`RecoveryMode::Strict`]).
    pub fn recovery(mut self, m: RecoveryMode) -> Self {
        self.recovery = m;
        self
    }
    /// How often the stats file is published (default 500 ms); `None` disables it.
    pub fn stats_interval(mut self, every: Option<Duration>) -> Self {
        self.stats_interval = every;
        self
    }
    /// Bound on bytes waiting for the writer thread; appenders wait beyond it (default 8 MiB).
    pub fn max_buffered_bytes(mut self, bytes: usize) -> Self {
        self.max_buffered_bytes = bytes;
        self
    }
    /// Early writeback: each time this many bytes have been written to the active
    /// segment since the last `fdatasync` (or the last hint), the writer asks the OS to
    /// start writing them to disk now, without waiting ([`Storage::start_writeback`](
    /// crate::Storage::start_writeback): `sync_file_range(SYNC_FILE_RANGE_WRITE)` on
    /// `LocalDisk`, as RocksDB's `bytes_per_sync`). It matters when records come faster
    /// than fdatasyncs (`Durability::Buffered`, `Periodic`): otherwise a whole segment
    /// piles up dirty in the page cache and the fdatasync that seals it at the roll
    /// writes it all while appends wait. A hint only: durability and when an append
    /// resolves do not change. `0` disables it; otherwise at least 64 KiB (default 4 MiB:
    /// on ext4 each hint can block the writer for a journal handle, so 1 MiB hints
    /// blocked it as long in total as the fdatasyncs they saved; BENCHMARKS.md).
    pub fn writeback_bytes(mut self, bytes: u64) -> Self {
        self.writeback_bytes = bytes;
        self
    }
    /// Zero ahead: the writer keeps the next `bytes` of the active segment past its
    /// write position written with zeros ([`Storage::write_zeroes`](
    /// crate::Storage::write_zeroes)), topping them up once half is used, so that the
    /// `fdatasync` after each group commit finds blocks already written. On ext4 an
    /// fdatasync after a write into merely `fallocate`d blocks must also journal their
    /// conversion to written; zeroing ahead pays that once per `bytes` instead of once
    /// per fdatasync (BENCHMARKS.md, "Round 3"). The cost: those bytes are written
    /// twice (the zeros, then the records), so it runs only while group commits stay
    /// small (under 64 KiB written per fdatasync); larger groups skip it, their one
    /// conversion per fdatasync being spread over many records.
    /// Recovery is unaffected (the range past the end reads as zeros either way).
    /// `0` disables it; otherwise at least 64 KiB (default 1 MiB).
    pub fn zero_ahead_bytes(mut self, bytes: u64) -> Self {
        self.zero_ahead_bytes = bytes;
        self
    }
    /// The record type this WAL holds, with its schema version and its upgrades from
    /// older versions ([`Versioned`](crate::schema::Versioned)): every record appended
    /// is stamped with `T::VERSION`, every older record read goes through
    /// `T::upgrade`. Without it records are stamped version 1 and none is upgraded.
    /// See the README, "Changing your record type".
    pub fn schema<T: crate::schema::Versioned>(mut self) -> Self {
        self.schema = crate::schema::Schema::of::<T>();
        self
    }
    /// The record schema registered with [`schema`](Self::schema) (version 1 and no
    /// upgrade when none was): what readers outside the WAL, such as the archive
    /// replay, decode records with.
    pub fn record_schema(&self) -> &crate::schema::Schema {
        &self.schema
    }

    /// The record schema (version 1 and no upgrade unless [`schema`](Self::schema) was set).
    pub fn get_schema(&self) -> &crate::schema::Schema {
        &self.schema
    }

    /// A stable id for this WAL, used in idempotency keys and archive paths. By default
    /// one is generated at creation and stored in the WAL.
    pub fn wal_id(mut self, id: impl Into<String>) -> Self {
        self.wal_id = Some(id.into());
        self
    }

    /// Chains every record with HMAC-SHA256 under this key (tamper evidence, see
    /// [`chain`](crate::chain)). Load the key with `HmacKey::from_file` or `from_env`,
    /// never from the WAL directory.
    pub fn hmac_key(mut self, key: crate::chain::HmacKey) -> Self {
        self.hmac = Some(std::sync::Arc::new(key));
        self
    }

    /// The configured durability.
    pub fn get_durability(&self) -> Durability {
        self.durability
    }

    /// Checks the options; every problem is a clear [`Error::Config`].
    pub fn validate(&self) -> Result<()> {
        if self.schema.version() == 0 {
            return Err(Error::Config(format!(
                "{}: Versioned::VERSION must be 1..=255, not 0",
                self.schema.type_name()
            )));
        }
        if self.segment_size < MIN_SEGMENT_SIZE || self.segment_size > MAX_SEGMENT_SIZE {
            return Err(Error::Config(format!(
                "segment_size must be between {MIN_SEGMENT_SIZE} and {MAX_SEGMENT_SIZE} bytes, got {}",
                self.segment_size
            )));
        }
        if let Some(max) = self.max_bytes {
            if max < 2 * self.segment_size {
                return Err(Error::Config(format!(
                    "max_bytes ({max}) must be at least twice segment_size ({})",
                    self.segment_size
                )));
            }
        }
        for (name, d) in [
            ("segment_max_age", self.segment_max_age),
            ("max_age", self.max_age),
            ("stats_interval", self.stats_interval),
        ] {
            if d == Some(Duration::ZERO) {
                return Err(Error::Config(format!("{name} must be greater than zero")));
            }
        }
        if let Durability::Periodic(d) = self.durability {
            if d.is_zero() {
                return Err(Error::Config(
                    "Durability::Periodic interval must be greater than zero (use Sync)".into(),
                ));
            }
        }
        if self.max_buffered_bytes < 64 << 10 {
            return Err(Error::Config(
                "max_buffered_bytes must be at least 64 KiB".into(),
            ));
        }
        if self.writeback_bytes != 0 && self.writeback_bytes < MIN_WRITEBACK_BYTES {
            return Err(Error::Config(format!(
                "writeback_bytes must be 0 (off) or at least {MIN_WRITEBACK_BYTES} bytes, got {}",
                self.writeback_bytes
            )));
        }
        if self.zero_ahead_bytes != 0 && self.zero_ahead_bytes < MIN_ZERO_AHEAD_BYTES {
            return Err(Error::Config(format!(
                "zero_ahead_bytes must be 0 (off) or at least {MIN_ZERO_AHEAD_BYTES} bytes, got {}",
                self.zero_ahead_bytes
            )));
        }
        if let Some(id) = &self.wal_id {
            if id.is_empty()
                || !id
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            {
                return Err(Error::Config(format!(
                    "wal_id {id:?} must be non-empty ASCII letters, digits, '-' or '_'"
                )));
            }
        }
        Ok(())
    }

    /// Largest record payload that fits a segment.
    pub(crate) fn max_record_len(&self) -> usize {
        let room = self.segment_size as usize
            - crate::format::HEADER_MAX_LEN
            - FOOTER_LEN
            - FRAME_HEADER_LEN
            - crate::format::MAC_LEN;
        room.min(crate::format::MAX_PAYLOAD_LEN as usize)
    }
}
