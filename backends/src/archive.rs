//! Archival of sealed segments to object storage: upload, restore and replay.
//!
//! * [`ArchiveStore`] is where archived segments live: any [`object_store::ObjectStore`]
//!   (S3 and S3-compatible servers, Google Cloud Storage, Azure Blob Storage, the local
//!   file system, memory) plus a key prefix, opened from a URL that object_store itself
//!   parses ([`ArchiveStore::open`]): `s3://bucket/prefix`, `gs://bucket/prefix`,
//!   `az://container/prefix` (or `abfs://container@account.dfs.core.windows.net/...`),
//!   `file:///path` (the embedded default) or `memory://` (tests). It owns the tokio
//!   runtime that object_store's clients need, so every `async fn` here runs on **any**
//!   executor (tokio, smol, `futures::executor`).
//! * [`Archiver`] uploads every sealed segment of a [`Wal`](walspool_wal::Wal), in
//!   order, verifies it (size, and the segment's footer with its body CRC read back from
//!   the store; optionally a full read-back CRC), records the archived point durably in
//!   the WAL's metadata ([`ARCHIVE_STATE_KEY`]) so a restart does not upload again,
//!   vetoes local deletion of a segment until it is archived, retries with backoff, and
//!   reports `archive_errors_total`, the archive lag and the last archive time into
//!   the WAL's metrics.
//! * [`restore`] rebuilds a WAL directory from the archive, with progress reporting.
//! * [`ArchiveReader`] reads records from the archive alone; [`replay`] streams records
//!   in sequence order across archived and local segments, from any sequence number.
//!
//! # Key scheme
//!
//! A sealed segment holding records `first..=last` of WAL `wal_id` is stored, byte for
//! byte as it is on disk (header, frames, footer; see `docs/format.md`), under
//!
//! ```text
//! {prefix}/{wal_id}/{first_seq:020}-{last_seq:020}.seg
//! ```
//!
//! Segments larger than [`ArchiverOptions::multipart_threshold`] (16 MiB by default) go
//! up in a multipart upload. Uploading a segment again writes the same bytes under the
//! same key: re-uploads are idempotent, and an upload whose object is already present
//! and verified is skipped.
//!
//! # Example
//!
//! ```
//! use futures::StreamExt;
//! use walspool_backends::archive::{replay, restore, ArchiveStore, Archiver, ArchiverOptions, RestoreOptions};
//! use walspool_backends::LocalDisk;
//! use walspool_wal::{Options, Wal};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! // Any executor: here a plain futures executor.
//! futures::executor::block_on(async {
//!     let store = ArchiveStore::open("memory://archive")?;
//!     let wal = Wal::open(LocalDisk::open(dir.path().join("wal"))?, Options::default())?;
//!     let archiver = Archiver::start(&wal, store.clone(), ArchiverOptions::default())?;
//!
//!     wal.append_batch(&["a".to_string(), "b".to_string()]).await?;
//!     wal.roll(); // seal the segment: the archiver uploads it
//!     wal.append(&"c".to_string()).await?;
//!     let status = archiver.sync().await?;
//!     assert_eq!(status.archived_through_seq, 2);
//!
//!     // Replay from the archive and the local tail, in order.
//!     let mut records = replay::<_, String>(&wal, &store, 1);
//!     for want in ["a", "b", "c"] {
//!         assert_eq!(records.next().await.unwrap()?.record, want);
//!     }
//!
//!     // Rebuild a WAL directory from the archive.
//!     let report = restore(&store, dir.path().join("restored"), RestoreOptions::default()).await?;
//!     assert_eq!((report.first_seq, report.last_seq), (1, 2));
//!     archiver.shutdown().await;
//!     wal.close().await?;
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })?;
//! # Ok(())
//! # }
//! ```

mod archiver;
mod error;
mod reader;
mod restore;
mod runtime;
mod store;

pub use archiver::{Archiver, ArchiverOptions, ArchiverStats, ARCHIVE_STATE_KEY};
pub use error::ArchiveError;
pub use reader::{replay, ArchiveReader, Replay};
pub use restore::{
    restore, restore_from_url, ProgressFn, RestoreOptions, RestoreProgress, RestoreReport,
};
pub use store::{
    parse_segment_object_name, segment_object_name, ArchiveStore, ArchivedSegment, StoreOptions,
};
