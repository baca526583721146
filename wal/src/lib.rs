//! # walspool-wal
//!
//! The core of walspool: a durable, async, runtime-agnostic write-ahead log for the
//! records a service must never lose.
//!
//! * [`Wal<S: Storage>`](Wal) appends any `T: Serialize` (encoded with postcard, framed
//!   with a CRC-32 and a global sequence number) and resolves each append once it is as
//!   durable as [`Durability`] says; concurrent appenders share one fdatasync.
//! * Appends, flushes and commits are done by walspool's own threads; futures are
//!   completed through `futures` channels, so tokio, smol or `futures::executor`
//!   (`block_on`, `LocalPool`) drive them, and the blocking calls work on any thread.
//!   Reads `pread` on the task that polls them.
//! * On open only the tail segment is scanned. A torn tail (bytes written after the
//!   last fdatasync) is cut at the last good frame; damage to synced records, or a tail
//!   that went missing, is corruption, refused or skipped and counted by
//!   [`RecoveryMode`] — never a silent cut, never a reused sequence number
//!   ([`recovery`]).
//! * [`Wal::read_from`] is a live `Stream`; [`Wal::consumer`] gives named, durable
//!   checkpoints; retention and bounds ([`WhenFull`]) keep the disk in check; every drop
//!   is counted in [`Metrics::dropped_records_total`].
//! * [`Wal::metrics`] is a snapshot of every figure (backlog and its age per consumer,
//!   fsync latency histogram, shipping, archive, recovery), [`Metrics::render_prometheus`]
//!   its Prometheus text; with the `metrics` feature, `metrics_export` publishes the same
//!   figures through the `metrics` facade.
//!
//! ```
//! use futures::StreamExt;
//! use walspool_wal::{Memory, Options, Wal};
//!
//! # fn main() -> Result<(), walspool_wal::Error> {
//! futures::executor::block_on(async {
//!     let wal = Wal::open(Memory::new(), Options::default())?;
//!     let seq = wal.append(&"user 42 logged in".to_string()).await?;
//!     let range = wal.append_batch(&["a".to_string(), "b".to_string()]).await?;
//!     assert_eq!(range, seq + 1..seq + 3);
//!
//!     let mut records = wal.read_from::<String>(seq);
//!     let first = records.next().await.unwrap()?;
//!     assert_eq!(first.record, "user 42 logged in");
//!
//!     let audit = wal.consumer("audit-sink")?;
//!     audit.commit(seq).await?;
//!     assert_eq!(audit.committed(), seq);
//!     wal.close().await
//! })
//! # }
//! ```
//!
//! The on-disk format is in [`format`](mod@format) and `docs/format.md`.

#![warn(missing_docs)]

mod blocking;
pub mod chain;
pub mod consumer;
mod cursor;
pub mod error;
pub mod format;
pub mod hooks;
mod housekeeper;
pub mod inspect;
pub mod memory;
pub mod metrics;
#[cfg(feature = "metrics")]
pub mod metrics_export;
pub mod options;
pub mod reader;
pub mod recovery;
pub mod schema;
pub mod shipper;
pub mod storage;
mod wal;
mod writer;

pub use chain::{verify_chain, ChainBreak, ChainReport, HmacKey};
pub use consumer::Consumer;
pub use error::{BoxError, Error, PoisonCause, Result};
pub use memory::{Memory, MemoryCounters, Tear};
pub use metrics::{
    ConsumerMetrics, Metrics, SegmentMetrics, SinkMetrics, StatsFile, STATS_FILE, STATS_SCHEMA,
};
pub use options::{Durability, Options, RecoveryMode, WhenFull};
pub use reader::{Entry, ReadStream};
pub use schema::{Schema, UpgradeError, Versioned};
pub use storage::{SegmentId, SegmentInfo, Storage, StorageExt};
pub use wal::{SealedSegment, Wal};
