//! Restore: rebuild a WAL directory from the archive.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use walspool_wal::format::{SegmentFooter, SegmentHeader, FOOTER_LEN, HEADER_LEN, HEADER_MAX_LEN};
use walspool_wal::Storage;

use super::archiver::save_state;
use super::store::{get_range, list_segments_task};
use super::{ArchiveError, ArchiveStore, StoreOptions};
use crate::LocalDisk;

/// Metadata key of the WAL id (the core's `wal_id` key).
const META_WAL_ID: &str = "wal_id";

/// Download chunk size.
const CHUNK: u64 = 8 << 20;

/// A progress callback, called after every downloaded chunk and once at the end (on
/// the archive's runtime thread: keep it short).
pub type ProgressFn = Arc<dyn Fn(&RestoreProgress) + Send + Sync>;

/// How far a restore is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreProgress {
    /// The WAL being restored.
    pub wal_id: String,
    /// Segments completely restored.
    pub segments_done: u64,
    /// Segments to restore.
    pub segments_total: u64,
    /// Bytes downloaded and written.
    pub bytes_done: u64,
    /// Bytes to download.
    pub bytes_total: u64,
    /// The segment being downloaded: `(first_seq, last_seq)`.
    pub current: Option<(u64, u64)>,
}

/// Options of [`restore`].
#[derive(Clone, Default)]
pub struct RestoreOptions {
    wal_id: Option<String>,
    keep_wal_id: bool,
    progress: Option<ProgressFn>,
}

impl std::fmt::Debug for RestoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreOptions")
            .field("wal_id", &self.wal_id)
            .field("keep_wal_id", &self.keep_wal_id)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl RestoreOptions {
    /// Which WAL to restore (default: the only one under the store's prefix; an
    /// error names them all when there are several).
    pub fn wal_id(mut self, id: impl Into<String>) -> Self {
        self.wal_id = Some(id.into());
        self
    }
    /// Gives the restored WAL the archived WAL's id instead of a new one. Only safe
    /// when the original WAL is gone for good *and* every record it held was archived:
    /// otherwise records appended after the restore get sequence numbers the original
    /// already used, and sinks that de-duplicate on `(wal_id, seq)` drop them as
    /// duplicates. The default, a new id (`<id>-restored-<unix seconds>`), makes a
    /// re-shipped record a duplicate at worst, never a loss.
    pub fn keep_wal_id(mut self, keep: bool) -> Self {
        self.keep_wal_id = keep;
        self
    }
    /// Reports progress (for a progress bar).
    pub fn progress(mut self, f: ProgressFn) -> Self {
        self.progress = Some(f);
        self
    }
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// The restored WAL's id (new unless [`RestoreOptions::keep_wal_id`]).
    pub wal_id: String,
    /// The id of the archived WAL it was restored from.
    pub source_wal_id: String,
    /// The restored directory.
    pub dir: PathBuf,
    /// Segments restored.
    pub segments: u64,
    /// Bytes restored.
    pub bytes: u64,
    /// First sequence number restored.
    pub first_seq: u64,
    /// Last sequence number restored.
    pub last_seq: u64,
}

/// Rebuilds a WAL directory at `to` (which must be empty or absent) from the archive:
/// every archived segment of the WAL is downloaded, checked (size, header, footer,
/// body CRC) and written through [`LocalDisk`]; the restored WAL gets a new id (see
/// [`RestoreOptions::keep_wal_id`]), and the archived state is recorded so that an [`Archiver`](super::Archiver) on the restored
/// WAL and the same store does not upload the segments again. Open the directory with
/// `Wal::open(LocalDisk::open(to)?, ..)` afterwards: appends continue after the last
/// archived record.
///
/// On failure the directory is left partial: remove it and restore again.
/// Runs on any executor.
pub async fn restore(
    store: &ArchiveStore,
    to: impl AsRef<FsPath>,
    opts: RestoreOptions,
) -> Result<RestoreReport, ArchiveError> {
    let wal_id = match opts.wal_id.clone() {
        Some(id) => id,
        None => {
            let ids = store.list_wal_ids().await?;
            match ids.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(ArchiveError::Config(format!(
                        "no archived WAL under {}/{}",
                        store.identity(),
                        store.prefix()
                    )))
                }
                many => {
                    return Err(ArchiveError::Config(format!(
                        "several WALs are archived under {}: {}; choose one",
                        store.identity(),
                        many.join(", ")
                    )))
                }
            }
        }
    };
    let dir = to.as_ref().to_path_buf();
    let new_wal_id = if opts.keep_wal_id {
        wal_id.clone()
    } else {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("{wal_id}-restored-{secs}")
    };
    let task = RestoreTask {
        new_wal_id,
        os: store.object_store().clone(),
        prefix: store.wal_prefix(&wal_id),
        identity: store.identity().to_string(),
        wal_id,
        dir,
        progress: opts.progress,
    };
    store.spawn(task.run()).await
}

/// [`restore`] from a URL (`walspool restore --from URL --to DIR`).
pub async fn restore_from_url(
    url: &str,
    store_opts: StoreOptions,
    to: impl AsRef<FsPath>,
    opts: RestoreOptions,
) -> Result<RestoreReport, ArchiveError> {
    let store = ArchiveStore::open_with(url, store_opts)?;
    restore(&store, to, opts).await
}

struct RestoreTask {
    os: Arc<dyn object_store::ObjectStore>,
    prefix: object_store::path::Path,
    identity: String,
    wal_id: String,
    new_wal_id: String,
    dir: PathBuf,
    progress: Option<ProgressFn>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ArchiveError> + Send + 'static,
) -> Result<T, ArchiveError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ArchiveError::Runtime(format!("blocking task failed: {e}")))?
}

impl RestoreTask {
    async fn run(self) -> Result<RestoreReport, ArchiveError> {
        let segs = list_segments_task(self.os.clone(), self.prefix.clone()).await?;
        let (Some(first), Some(last)) = (segs.first(), segs.last()) else {
            return Err(ArchiveError::Config(format!(
                "no archived segments for WAL {} in {}",
                self.wal_id, self.identity
            )));
        };
        let (first_seq, last_seq) = (first.first_seq, last.last_seq);
        for w in segs.windows(2) {
            if w[1].first_seq != w[0].last_seq + 1 {
                return Err(ArchiveError::Gap {
                    expected: w[0].last_seq + 1,
                    resumed_at: w[1].first_seq,
                });
            }
        }

        let dir = self.dir.clone();
        let disk = blocking(move || {
            match std::fs::read_dir(&dir) {
                Ok(mut rd) => {
                    if rd.next().is_some() {
                        return Err(ArchiveError::Config(format!(
                            "{} is not empty: restore only into an empty or new directory",
                            dir.display()
                        )));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(ArchiveError::io(
                        "read directory",
                        dir.display().to_string(),
                        e,
                    ))
                }
            }
            Ok(Arc::new(LocalDisk::open(&dir)?))
        })
        .await?;
        let (d, id) = (disk.clone(), self.new_wal_id.clone());
        blocking(move || {
            d.put_meta(META_WAL_ID, id.as_bytes())
                .map_err(|e| ArchiveError::io("write wal_id", d.location(), e))
        })
        .await?;

        let mut progress = RestoreProgress {
            wal_id: self.wal_id.clone(),
            segments_total: segs.len() as u64,
            bytes_total: segs.iter().map(|s| s.size).sum(),
            ..RestoreProgress::default()
        };
        let report = |p: &RestoreProgress| {
            if let Some(f) = &self.progress {
                f(p);
            }
        };
        report(&progress);
        for seg in &segs {
            progress.current = Some((seg.first_seq, seg.last_seq));
            let key = seg.key.to_string();
            let len = seg.size;
            if len < (HEADER_LEN + FOOTER_LEN) as u64 {
                return Err(corrupt(&key, 0, format!("object is only {len} bytes")));
            }
            let base = seg.first_seq;
            let d = disk.clone();
            blocking(move || {
                d.create_segment(base)
                    .map_err(|e| ArchiveError::io("create segment", d.segment_name(base), e))
            })
            .await?;
            let footer_at = len - FOOTER_LEN as u64;
            let mut body = crc32fast::Hasher::new();
            let mut head: Vec<u8> = Vec::new();
            let mut tail: Vec<u8> = Vec::new();
            let mut at = 0u64;
            while at < len {
                let end = (at + CHUNK).min(len);
                let chunk = get_range(&self.os, &seg.key, at..end).await?;
                if chunk.len() as u64 != end - at {
                    return Err(ArchiveError::Verify {
                        key: key.clone(),
                        reason: format!(
                            "short read at {at}: object smaller than listed ({len} bytes)"
                        ),
                    });
                }
                let body_end = footer_at.saturating_sub(at).min(chunk.len() as u64) as usize;
                body.update(&chunk[..body_end]);
                if head.len() < HEADER_MAX_LEN {
                    let n = (HEADER_MAX_LEN - head.len()).min(chunk.len());
                    head.extend_from_slice(&chunk[..n]);
                }
                tail.extend_from_slice(&chunk[body_end..]);
                let d = disk.clone();
                blocking(move || {
                    d.write_at(base, at, &chunk)
                        .map_err(|e| ArchiveError::io("write segment", d.segment_name(base), e))
                })
                .await?;
                progress.bytes_done += end - at;
                at = end;
                report(&progress);
            }
            let h = SegmentHeader::decode(&head, &key).map_err(ArchiveError::Wal)?;
            if h.base_seq != seg.first_seq {
                return Err(corrupt(
                    &key,
                    0,
                    format!(
                        "header base {} but the key says {}",
                        h.base_seq, seg.first_seq
                    ),
                ));
            }
            let f = SegmentFooter::decode(&tail)
                .ok_or_else(|| corrupt(&key, footer_at, "no valid footer".into()))?;
            if f.last_seq != seg.last_seq {
                return Err(corrupt(
                    &key,
                    footer_at,
                    format!(
                        "footer last sequence {} but the key says {}",
                        f.last_seq, seg.last_seq
                    ),
                ));
            }
            let crc = body.finalize();
            if crc != f.body_crc {
                return Err(corrupt(
                    &key,
                    footer_at,
                    format!("body CRC {crc:08x} but the footer says {:08x}", f.body_crc),
                ));
            }
            let d = disk.clone();
            blocking(move || {
                d.sync(base)
                    .map_err(|e| ArchiveError::io("fdatasync", d.segment_name(base), e))
            })
            .await?;
            progress.segments_done += 1;
            report(&progress);
        }
        progress.current = None;
        report(&progress);
        let (d, identity) = (disk.clone(), self.identity.clone());
        blocking(move || save_state(&*d, &identity, last_seq)).await?;
        Ok(RestoreReport {
            wal_id: self.new_wal_id.clone(),
            source_wal_id: self.wal_id.clone(),
            dir: self.dir.clone(),
            segments: segs.len() as u64,
            bytes: progress.bytes_done,
            first_seq,
            last_seq,
        })
    }
}

fn corrupt(key: &str, offset: u64, reason: String) -> ArchiveError {
    ArchiveError::Corrupt {
        segment: key.to_string(),
        offset,
        reason,
    }
}
