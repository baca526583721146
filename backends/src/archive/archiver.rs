//! The archiver: uploads sealed segments in order, verifies them, records progress.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::channel::oneshot;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use walspool_wal::format::{SegmentFooter, SegmentHeader, FOOTER_LEN, HEADER_LEN, HEADER_MAX_LEN};
use walspool_wal::hooks::{ArchiveStatus, RetentionHook};
use walspool_wal::{Storage, StorageExt, Wal};

use super::store::get_range;
use super::{ArchiveError, ArchiveStore};

/// Metadata key (in the WAL's [`Storage`]) holding the archived state: JSON
/// `{"version":1,"store":"s3://bucket/prefix","archived_through_seq":N}`. Every sealed
/// segment whose last sequence number is at most `N` is archived in `store`, or was
/// deleted locally before it could be (`max_age`, `DropOldest`): such a segment is
/// logged as an error and counted in the WAL's `archive_lost_segments_total`, never
/// reported as archived.
pub const ARCHIVE_STATE_KEY: &str = "archive.state";

const STATE_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct PersistedState {
    version: u32,
    store: String,
    archived_through_seq: u64,
}

/// Reads the archived state of a WAL for a given store (0 when none, or when it was
/// recorded for another store).
pub(crate) fn load_state<S: Storage>(storage: &S, identity: &str) -> Result<u64, ArchiveError> {
    let Some(b) = storage
        .get_meta(ARCHIVE_STATE_KEY)
        .map_err(|e| ArchiveError::io("read archive state", storage.location(), e))?
    else {
        return Ok(0);
    };
    let st: PersistedState = serde_json::from_slice(&b).map_err(|e| ArchiveError::Corrupt {
        segment: format!("{}/meta {ARCHIVE_STATE_KEY}", storage.location()),
        offset: 0,
        reason: format!("archive state is not valid JSON: {e}"),
    })?;
    if st.store != identity {
        tracing::info!(
            recorded = %st.store,
            now = %identity,
            "the archive store changed: archiving every sealed segment again"
        );
        return Ok(0);
    }
    Ok(st.archived_through_seq)
}

/// Writes the archived state durably (atomic `put_meta`).
pub(crate) fn save_state<S: Storage>(
    storage: &S,
    identity: &str,
    through: u64,
) -> Result<(), ArchiveError> {
    let st = PersistedState {
        version: STATE_VERSION,
        store: identity.to_string(),
        archived_through_seq: through,
    };
    let b = serde_json::to_vec(&st).map_err(|e| ArchiveError::Config(e.to_string()))?;
    storage
        .put_meta(ARCHIVE_STATE_KEY, &b)
        .map_err(|e| ArchiveError::io("write archive state", storage.location(), e))
}

/// Options of an [`Archiver`]. Start from `ArchiverOptions::default()` and chain.
#[derive(Debug, Clone)]
pub struct ArchiverOptions {
    multipart_threshold: u64,
    part_size: usize,
    part_concurrency: usize,
    backoff_initial: Duration,
    backoff_max: Duration,
    verify_readback: bool,
    start_paused: bool,
}

impl Default for ArchiverOptions {
    fn default() -> Self {
        ArchiverOptions {
            multipart_threshold: 16 << 20,
            part_size: 8 << 20,
            part_concurrency: 4,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            verify_readback: false,
            start_paused: false,
        }
    }
}

/// S3's smallest part size (except the last part).
const MIN_PART_SIZE: usize = 5 << 20;

impl ArchiverOptions {
    /// Every setting in range, or an [`ArchiveError::Config`] naming the one that is
    /// not (nothing is silently adjusted).
    pub fn validate(&self) -> Result<(), ArchiveError> {
        let bad = |m: String| Err(ArchiveError::Config(m));
        if self.part_size < MIN_PART_SIZE {
            return bad(format!(
                "part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum), got {}",
                self.part_size
            ));
        }
        if self.part_concurrency == 0 {
            return bad("part_concurrency must be at least 1".into());
        }
        if self.backoff_initial > self.backoff_max {
            return bad(format!(
                "backoff initial ({:?}) must not exceed max ({:?})",
                self.backoff_initial, self.backoff_max
            ));
        }
        Ok(())
    }
}

impl ArchiverOptions {
    /// Segments larger than this go up in a multipart upload (default 16 MiB).
    pub fn multipart_threshold(mut self, bytes: u64) -> Self {
        self.multipart_threshold = bytes;
        self
    }
    /// Part size of multipart uploads (default 8 MiB; at least 5 MiB, S3's minimum,
    /// checked by [`Archiver::start`]).
    pub fn part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes;
        self
    }
    /// Parts of one multipart upload in flight at once (default 4; at least 1).
    pub fn part_concurrency(mut self, n: usize) -> Self {
        self.part_concurrency = n;
        self
    }
    /// Backoff after a failed upload: starts at `initial`, doubles (with jitter) up to
    /// `max` (defaults 200 ms and 30 s; `initial` at most `max`). The archiver
    /// retries until it succeeds.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }
    /// After each upload, read the whole object back and compare its CRC-32 with the
    /// local segment's (default off: size and footer, which carries the body CRC, are
    /// always checked).
    pub fn verify_readback(mut self, on: bool) -> Self {
        self.verify_readback = on;
        self
    }
    /// Start paused (see [`Archiver::pause`]).
    pub fn start_paused(mut self, paused: bool) -> Self {
        self.start_paused = paused;
        self
    }
}

/// Counters of one archiver since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiverStats {
    /// Every sealed segment whose last sequence number is at most this is archived, or
    /// was lost before it could be (see `lost_segments`): the archiver is past it.
    pub archived_through_seq: u64,
    /// Segments uploaded.
    pub uploaded_segments: u64,
    /// Bytes uploaded.
    pub uploaded_bytes: u64,
    /// Segments found already archived (same size and footer) and not uploaded again.
    pub skipped_existing: u64,
    /// Failed attempts (each is also counted in the WAL's `archive_errors_total`).
    pub errors: u64,
    /// Sealed segments deleted locally (by `max_age` or `DropOldest`) before they could
    /// be archived: they are not in the archive. Each is logged as an error and also
    /// counted in the WAL's `archive_lost_segments_total` (persisted). When the
    /// segments themselves were not seen (lost while no archiver ran), a gap in the
    /// sequence numbers counts as one.
    pub lost_segments: u64,
    /// The last error, if the last attempt failed.
    pub last_error: Option<String>,
    /// Sealed segments not yet archived.
    pub lag_segments: u64,
    /// Their bytes.
    pub lag_bytes: u64,
}

#[derive(Default)]
struct Tracked {
    /// Sealed segments known on local disk: base -> (last_seq, bytes).
    sealed: BTreeMap<u64, (u64, u64)>,
    waiters: Vec<(u64, oneshot::Sender<()>)>,
    stats: ArchiverStats,
}

struct Shared {
    through: AtomicU64,
    tracked: Mutex<Tracked>,
    wake: tokio::sync::Notify,
    stop: AtomicBool,
    paused: AtomicBool,
    detached: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn status(&self) -> ArchiveStatus {
        let through = self.through.load(Ordering::Acquire);
        let t = lock(&self.tracked);
        let (mut n, mut bytes) = (0, 0);
        for (_, &(last, b)) in t.sealed.range(..) {
            if last > through {
                n += 1;
                bytes += b;
            }
        }
        ArchiveStatus {
            lag_segments: n,
            lag_bytes: bytes,
            archived_through_seq: through,
        }
    }

    fn advance(&self, through: u64) {
        self.through.fetch_max(through, Ordering::AcqRel);
        let now = self.through.load(Ordering::Acquire);
        let mut t = lock(&self.tracked);
        t.sealed.retain(|_, &mut (last, _)| last > now);
        let waiters = std::mem::take(&mut t.waiters);
        for (want, tx) in waiters {
            if want <= now {
                let _ = tx.send(());
            } else {
                t.waiters.push((want, tx));
            }
        }
    }
}

/// The retention veto: a sealed segment may be deleted locally only once archived.
struct Hook(Arc<Shared>);

impl RetentionHook for Hook {
    fn may_delete(&self, base_seq: u64) -> bool {
        // Segments are contiguous and archived in order: a sealed segment starting at
        // or before the archived point ends at or before it.
        if self.0.detached.load(Ordering::Acquire) {
            return true;
        }
        base_seq <= self.0.through.load(Ordering::Acquire)
    }
}

/// Uploads every sealed segment of a WAL to an [`ArchiveStore`], in order, verified.
///
/// * Starts from the archived point recorded in the WAL's metadata
///   ([`ARCHIVE_STATE_KEY`]): a restart does not upload again.
/// * Registers a [`RetentionHook`]: a sealed segment is deleted locally (once every
///   consumer committed past it) only after it is archived. When the archiver is shut
///   down or dropped the veto is lifted, as with archival off.
/// * Failures are retried forever with exponential backoff and jitter; each failed
///   attempt counts in the WAL's `archive_errors_total`. The lag and the last archive
///   time are in [`Wal::metrics`].
/// * A sealed segment that the WAL's bounds (`max_age`, `DropOldest`) delete before it
///   is uploaded is not archived: the archiver logs it as an error, counts it
///   ([`ArchiverStats::lost_segments`] and the WAL's `archive_lost_segments_total`) and
///   moves on to the next one.
/// * The work runs on the [`ArchiveStore`]'s own runtime; the handle's methods can be
///   awaited from any executor. The archiver keeps a handle of the WAL until it is shut
///   down or dropped.
pub struct Archiver<S: Storage> {
    shared: Arc<Shared>,
    wal: Wal<S>,
    store: ArchiveStore,
    done: Option<oneshot::Receiver<()>>,
}

impl<S: Storage> std::fmt::Debug for Archiver<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archiver")
            .field("wal", &self.wal.id())
            .field("store", &self.store)
            .field(
                "archived_through_seq",
                &self.shared.through.load(Ordering::Relaxed),
            )
            .finish()
    }
}

impl<S: Storage> Archiver<S> {
    /// Starts archiving `wal`'s sealed segments (those sealed before, and every one
    /// sealed later) to `store`.
    pub fn start(
        wal: &Wal<S>,
        store: ArchiveStore,
        opts: ArchiverOptions,
    ) -> Result<Self, ArchiveError> {
        opts.validate()?;
        let through = load_state(wal.storage(), store.identity())?;
        if through > wal.durable_seq() {
            // The archive holds records the local log no longer has: its tail is gone.
            return Err(ArchiveError::Corrupt {
                segment: format!("{}/meta {ARCHIVE_STATE_KEY}", wal.storage().location()),
                offset: 0,
                reason: format!(
                    "the archive state says records up to {through} were archived to {} but the local log ends at {}: the local tail is missing (restore it from the archive)",
                    store.identity(),
                    wal.durable_seq()
                ),
            });
        }
        let shared = Arc::new(Shared {
            through: AtomicU64::new(through),
            tracked: Mutex::new(Tracked::default()),
            wake: tokio::sync::Notify::new(),
            stop: AtomicBool::new(false),
            paused: AtomicBool::new(opts.start_paused),
            detached: AtomicBool::new(false),
        });
        {
            let mut t = lock(&shared.tracked);
            t.stats.archived_through_seq = through;
            for s in wal.sealed_segments() {
                let (base, last, bytes) = (s.base_seq, s.last_seq, s.bytes);
                if last > through {
                    t.sealed.insert(base, (last, bytes));
                }
            }
        }
        // The closures registered on the WAL hold `Shared`, never the WAL (no cycle).
        let s = shared.clone();
        wal.hooks().on_sealed(Arc::new(move |seg| {
            lock(&s.tracked)
                .sealed
                .insert(seg.base_seq, (seg.last_seq, seg.bytes));
            s.wake.notify_one();
        }));
        wal.hooks()
            .add_retention_hook(Arc::new(Hook(shared.clone())));
        let s = shared.clone();
        wal.hooks().set_archive_status(Arc::new(move || s.status()));

        let (done_tx, done_rx) = oneshot::channel();
        let worker = Worker {
            wal: wal.clone(),
            store: store.clone(),
            shared: shared.clone(),
            opts,
        };
        store.spawn_detached(async move {
            worker.run().await;
            let _ = done_tx.send(());
        });
        // Segments archived before a restart may now be deleted.
        wal.hooks().nudge_retention();
        Ok(Archiver {
            shared,
            wal: wal.clone(),
            store,
            done: Some(done_rx),
        })
    }

    /// The archive figures: lag in segments and bytes, archived point.
    pub fn status(&self) -> ArchiveStatus {
        self.shared.status()
    }

    /// Counters since this archiver started.
    pub fn stats(&self) -> ArchiverStats {
        let st = self.shared.status();
        let mut s = lock(&self.shared.tracked).stats.clone();
        s.archived_through_seq = st.archived_through_seq;
        s.lag_segments = st.lag_segments;
        s.lag_bytes = st.lag_bytes;
        s
    }

    /// The store it archives to.
    pub fn store(&self) -> &ArchiveStore {
        &self.store
    }

    /// Stops uploading after the current segment (uploads already under way finish).
    pub fn pause(&self) {
        self.shared.paused.store(true, Ordering::Release);
    }

    /// Resumes uploading.
    pub fn resume(&self) {
        self.shared.paused.store(false, Ordering::Release);
        self.shared.wake.notify_one();
    }

    /// Waits until every sealed segment holding a record `<= seq` is archived.
    /// Waits across failures (the archiver keeps retrying); fails only if the archiver
    /// stops first.
    pub async fn wait_archived(&self, seq: u64) -> Result<ArchiveStatus, ArchiveError> {
        let rx = {
            if self.shared.through.load(Ordering::Acquire) >= seq {
                return Ok(self.status());
            }
            let mut t = lock(&self.shared.tracked);
            // Re-check under the lock: `advance` drains waiters under it.
            if self.shared.through.load(Ordering::Acquire) >= seq {
                return Ok(self.status());
            }
            let (tx, rx) = oneshot::channel();
            t.waiters.push((seq, tx));
            rx
        };
        self.shared.wake.notify_one();
        rx.await.map_err(|_| {
            ArchiveError::Runtime("the archiver stopped before archiving everything".into())
        })?;
        Ok(self.status())
    }

    /// Waits until every segment sealed so far is archived (see
    /// [`wait_archived`](Self::wait_archived)).
    pub async fn sync(&self) -> Result<ArchiveStatus, ArchiveError> {
        let last = self
            .wal
            .sealed_segments()
            .iter()
            .map(|s| s.last_seq)
            .max()
            .unwrap_or(0)
            .max(
                lock(&self.shared.tracked)
                    .sealed
                    .values()
                    .map(|v| v.0)
                    .max()
                    .unwrap_or(0),
            );
        self.wait_archived(last).await
    }

    /// Stops the archiver and waits for its task to end (an upload under way is
    /// abandoned; it is idempotent and will be redone by the next archiver).
    pub async fn shutdown(mut self) {
        self.signal_stop();
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }

    fn signal_stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.detached.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        // Fail pending waiters.
        lock(&self.shared.tracked).waiters.clear();
    }
}

impl<S: Storage> Drop for Archiver<S> {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

struct Worker<S: Storage> {
    wal: Wal<S>,
    store: ArchiveStore,
    shared: Arc<Shared>,
    opts: ArchiverOptions,
}

enum Outcome {
    Uploaded(u64),
    AlreadyThere,
    /// The segment vanished locally (deleted by a bound) before it could be read: it is
    /// not archived.
    Gone,
}

/// Why segments are counted as lost.
#[derive(Clone, Copy)]
enum LostHow {
    /// Listed as sealed earlier, no longer on local disk.
    Vanished,
    /// Its file was gone when the archiver went to read it.
    Unreadable,
    /// Not seen at all: sequence numbers missing between the archived point and the
    /// next sealed segment.
    Gap,
}

impl<S: Storage> Worker<S> {
    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::Acquire)
    }

    async fn run(self) {
        let mut backoff = self.opts.backoff_initial;
        let mut attempt: u64 = 0;
        while !self.stopping() {
            if self.shared.paused.load(Ordering::Acquire) {
                self.shared.wake.notified().await;
                continue;
            }
            let through = self.shared.through.load(Ordering::Acquire);
            // What we knew was sealed, read before the WAL's list: a segment is marked
            // sealed in the list before the seal listener records it here, so whatever
            // is known here and missing from the list read next was deleted.
            let known = lock(&self.shared.tracked).sealed.clone();
            let sealed: Vec<(u64, u64, u64)> = self
                .wal
                .sealed_segments()
                .iter()
                .map(|s| (s.base_seq, s.last_seq, s.bytes))
                .collect();
            let next = sealed.iter().find(|s| s.1 > through).copied();
            {
                let mut t = lock(&self.shared.tracked);
                t.sealed = sealed
                    .iter()
                    .filter(|s| s.1 > through)
                    .map(|&(b, l, n)| (b, (l, n)))
                    .collect();
            }
            let vanished: Vec<(u64, u64, u64)> = known
                .iter()
                .filter(|&(b, &(l, _))| l > through && !sealed.iter().any(|s| s.0 == *b))
                // Only those before the next one to archive: archival is in order.
                .filter(|&(b, _)| next.is_none_or(|n| *b < n.0))
                .map(|(&b, &(l, n))| (b, l, n))
                .collect();
            if !vanished.is_empty() {
                self.record_lost(&vanished, LostHow::Vanished).await;
                continue;
            }
            if let Some((base, _, _)) = next {
                // Records between the archived point and the next sealed segment that
                // no known segment held. Only once this store's archive has started
                // (segments deleted before archival was ever turned on are no loss).
                if through > 0 && base > through + 1 {
                    self.record_lost(&[(through + 1, base - 1, 0)], LostHow::Gap)
                        .await;
                    continue;
                }
            }
            let Some((base, last, bytes)) = next else {
                self.shared.wake.notified().await;
                continue;
            };
            let key = self.store.segment_key(self.wal.id(), base, last);
            let r = match self.archive_one(&key, base, last, bytes).await {
                Ok(Outcome::Gone) => {
                    self.record_lost(&[(base, last, bytes)], LostHow::Unreadable)
                        .await;
                    continue;
                }
                Ok(o) => {
                    let wal = self.wal.clone();
                    let id = self.store.identity().to_string();
                    match tokio::task::spawn_blocking(move || save_state(wal.storage(), &id, last))
                        .await
                    {
                        Ok(Ok(())) => Ok(o),
                        Ok(Err(e)) => Err(e),
                        Err(e) => Err(ArchiveError::Runtime(format!(
                            "archive state task failed: {e}"
                        ))),
                    }
                }
                Err(e) => Err(e),
            };
            match r {
                Ok(o) => {
                    {
                        let mut t = lock(&self.shared.tracked);
                        match o {
                            Outcome::Uploaded(n) => {
                                t.stats.uploaded_segments += 1;
                                t.stats.uploaded_bytes += n;
                            }
                            Outcome::AlreadyThere => t.stats.skipped_existing += 1,
                            Outcome::Gone => unreachable!("handled above"),
                        }
                        t.stats.last_error = None;
                    }
                    tracing::debug!(key = %key, "archived segment");
                    self.wal.hooks().record_archive_success();
                    self.shared.advance(last);
                    self.wal.hooks().nudge_retention();
                    backoff = self.opts.backoff_initial;
                    attempt = 0;
                }
                Err(e) => {
                    attempt += 1;
                    self.wal.hooks().record_archive_error();
                    {
                        let mut t = lock(&self.shared.tracked);
                        t.stats.errors += 1;
                        t.stats.last_error = Some(e.to_string());
                    }
                    tracing::warn!(key = %key, error = %e, attempt, retry_in_ms = backoff.as_millis() as u64, "archive upload failed; retrying");
                    let sleep = jitter(backoff, attempt);
                    tokio::select! {
                        _ = tokio::time::sleep(sleep) => {}
                        _ = self.wait_stop() => {}
                    }
                    backoff = (backoff * 2).min(self.opts.backoff_max);
                }
            }
        }
        // Pending waiters learn that the archiver stopped.
        lock(&self.shared.tracked).waiters.clear();
    }

    /// Sealed segments `(base, last, bytes)` that are gone from local disk before they
    /// were archived: logs each loudly, counts them (in the stats and the WAL's
    /// persisted `archive_lost_segments_total`) and moves the archiver past them, so
    /// that it goes on with the next segment. Never reports them archived (no upload
    /// counted, no archive time recorded).
    async fn record_lost(&self, lost: &[(u64, u64, u64)], how: LostHow) {
        let why = match how {
            LostHow::Vanished => "deleted locally (max_age or DropOldest) before it was archived",
            LostHow::Unreadable => {
                "its file was gone when the archiver went to read it (deleted before it was archived)"
            }
            LostHow::Gap => {
                "records between the archived point and the next sealed segment are no longer on local disk"
            }
        };
        for &(base, last, bytes) in lost {
            tracing::error!(
                wal = %self.wal.id(),
                store = %self.store.identity(),
                segment = %self.wal.storage().segment_name(base),
                first_seq = base,
                last_seq = last,
                bytes,
                "sealed segment LOST before archival: {why}; records {base}..={last} are not in the archive"
            );
        }
        let n = lost.len() as u64;
        lock(&self.shared.tracked).stats.lost_segments += n;
        self.wal.hooks().record_archive_lost(n);
        let through = lost.iter().map(|l| l.1).max().unwrap_or(0);
        // Persist the point past them, so that a restart neither counts them again nor
        // stops at the hole. If that fails, the next recorded upload persists it.
        let wal = self.wal.clone();
        let id = self.store.identity().to_string();
        match tokio::task::spawn_blocking(move || save_state(wal.storage(), &id, through)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not record the archive state"),
            Err(e) => tracing::warn!(error = %e, "archive state task failed"),
        }
        self.shared.advance(through);
        self.wal.hooks().nudge_retention();
    }

    /// Resolves once the archiver is told to stop (wake-ups for other reasons loop).
    async fn wait_stop(&self) {
        while !self.stopping() {
            self.shared.wake.notified().await;
        }
    }

    async fn read_local(
        &self,
        base: u64,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, ArchiveError> {
        let wal = self.wal.clone();
        tokio::task::spawn_blocking(move || {
            let st = wal.storage();
            st.read_vec(base, offset, len)
                .map_err(|e| ArchiveError::io("read segment", st.segment_name(base), e))
        })
        .await
        .map_err(|e| ArchiveError::Runtime(format!("segment read task failed: {e}")))?
    }

    async fn archive_one(
        &self,
        key: &Path,
        base: u64,
        last: u64,
        len: u64,
    ) -> Result<Outcome, ArchiveError> {
        let store = self.store.object_store().clone();
        let name = self.wal.storage().segment_name(base);
        let min = (HEADER_LEN + FOOTER_LEN) as u64;
        if len < min {
            return Err(corrupt(
                &name,
                0,
                format!("sealed segment is only {len} bytes"),
            ));
        }
        // Header and footer first: is this the sealed segment we think it is?
        let header = match self.read_local(base, 0, HEADER_MAX_LEN).await {
            Ok(h) => h,
            Err(ArchiveError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(Outcome::Gone)
            }
            Err(e) => return Err(e),
        };
        let h = SegmentHeader::decode(&header, &name)?;
        if h.base_seq != base {
            return Err(corrupt(
                &name,
                0,
                format!("header base {} but expected {base}", h.base_seq),
            ));
        }
        let footer_at = len - FOOTER_LEN as u64;
        let footer_bytes = self.read_local(base, footer_at, FOOTER_LEN).await?;
        let footer = SegmentFooter::decode(&footer_bytes).ok_or_else(|| {
            corrupt(
                &name,
                footer_at,
                "no valid footer at the end of a sealed segment".into(),
            )
        })?;
        if footer.last_seq != last {
            return Err(corrupt(
                &name,
                footer_at,
                format!(
                    "footer says last sequence {} but expected {last}",
                    footer.last_seq
                ),
            ));
        }

        // Already archived (a restart between upload and recording it)?
        if let Ok(true) = verify_remote(&store, key, len, &footer_bytes).await {
            return Ok(Outcome::AlreadyThere);
        }

        let mut crcs = Crcs {
            body: crc32fast::Hasher::new(),
            full: crc32fast::Hasher::new(),
            footer_at,
        };
        if len <= self.opts.multipart_threshold {
            let data = self.read_local(base, 0, len as usize).await?;
            if data.len() as u64 != len {
                return Err(corrupt(
                    &name,
                    data.len() as u64,
                    format!("segment is shorter than {len} bytes"),
                ));
            }
            crcs.feed(&data, 0);
            check_body(&name, crcs.body.clone().finalize(), &footer, footer_at)?;
            store
                .put(key, PutPayload::from(data))
                .await
                .map_err(|e| ArchiveError::store("put", key, e))?;
        } else {
            let upload = store
                .put_multipart(key)
                .await
                .map_err(|e| ArchiveError::store("create multipart upload", key, e))?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, self.opts.part_size);
            let mut at = 0u64;
            let r: Result<(), ArchiveError> = async {
                while at < len {
                    let n = (len - at).min(self.opts.part_size as u64) as usize;
                    let chunk = self.read_local(base, at, n).await?;
                    if chunk.len() != n {
                        return Err(corrupt(
                            &name,
                            at + chunk.len() as u64,
                            format!("segment is shorter than {len} bytes"),
                        ));
                    }
                    crcs.feed(&chunk, at);
                    w.wait_for_capacity(self.opts.part_concurrency)
                        .await
                        .map_err(|e| ArchiveError::store("upload part", key, e))?;
                    w.write(&chunk);
                    at += n as u64;
                }
                check_body(&name, crcs.body.clone().finalize(), &footer, footer_at)
            }
            .await;
            match r {
                Ok(()) => {
                    w.finish()
                        .await
                        .map_err(|e| ArchiveError::store("complete multipart upload", key, e))?;
                }
                Err(e) => {
                    let _ = w.abort().await;
                    return Err(e);
                }
            }
        }

        // Verify: size and footer (which carries the body CRC) as stored.
        if !verify_remote(&store, key, len, &footer_bytes).await? {
            return Err(ArchiveError::Verify {
                key: key.to_string(),
                reason: "size or footer of the stored object differ from the local segment".into(),
            });
        }
        if self.opts.verify_readback {
            let want = crcs.full.finalize();
            let got = remote_crc(&store, key, len).await?;
            if got != want {
                return Err(ArchiveError::Verify {
                    key: key.to_string(),
                    reason: format!("CRC-32 of the stored object is {got:08x}, the local segment's is {want:08x}"),
                });
            }
        }
        Ok(Outcome::Uploaded(len))
    }
}

struct Crcs {
    body: crc32fast::Hasher,
    full: crc32fast::Hasher,
    footer_at: u64,
}

impl Crcs {
    fn feed(&mut self, chunk: &[u8], at: u64) {
        self.full.update(chunk);
        let body_end = self.footer_at.saturating_sub(at).min(chunk.len() as u64) as usize;
        self.body.update(&chunk[..body_end]);
    }
}

fn corrupt(name: &str, offset: u64, reason: String) -> ArchiveError {
    ArchiveError::Corrupt {
        segment: name.to_string(),
        offset,
        reason,
    }
}

fn check_body(
    name: &str,
    crc: u32,
    footer: &SegmentFooter,
    footer_at: u64,
) -> Result<(), ArchiveError> {
    if crc != footer.body_crc {
        return Err(corrupt(
            name,
            footer_at,
            format!(
                "body CRC is {crc:08x} but the footer says {:08x}: not uploading a damaged segment",
                footer.body_crc
            ),
        ));
    }
    Ok(())
}

/// Is the object there with this size and this footer? `Ok(false)` when absent or different.
pub(crate) async fn verify_remote(
    store: &Arc<dyn ObjectStore>,
    key: &Path,
    len: u64,
    footer: &[u8],
) -> Result<bool, ArchiveError> {
    let meta = match store.head(key).await {
        Ok(m) => m,
        Err(object_store::Error::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(ArchiveError::store("head", key, e)),
    };
    if meta.size != len {
        return Ok(false);
    }
    let tail = get_range(store, key, len - FOOTER_LEN as u64..len).await?;
    Ok(tail == footer)
}

/// CRC-32 of a whole object, read in chunks.
pub(crate) async fn remote_crc(
    store: &Arc<dyn ObjectStore>,
    key: &Path,
    len: u64,
) -> Result<u32, ArchiveError> {
    const CHUNK: u64 = 8 << 20;
    let mut h = crc32fast::Hasher::new();
    let mut at = 0;
    while at < len {
        let end = (at + CHUNK).min(len);
        h.update(&get_range(store, key, at..end).await?);
        at = end;
    }
    Ok(h.finalize())
}

/// `base` scaled by a factor in [0.5, 1.0), from a cheap hash of the attempt and time.
fn jitter(base: Duration, attempt: u64) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(attempt);
    let frac = (h.finish() % 1000) as f64 / 2000.0 + 0.5;
    base.mul_f64(frac)
}
