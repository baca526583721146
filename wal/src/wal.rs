//! `Wal<S>`: the handle, the writer thread (group commit) and recovery on open.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::channel::oneshot;
use serde::Serialize;

use crate::chain::HmacKey;
use crate::error::{Error, Result};
use crate::format::{
    encode_frame_unsealed, FOOTER_LEN, FRAME_HEADER_LEN, HEADER_LEN, HEADER_MAX_LEN, MAC_LEN,
};
use crate::housekeeper::{self, HkMsg};
use crate::metrics::{Counters, PersistedCounters};
use crate::options::{Durability, Options, WhenFull};
use crate::recovery::{recover, write_end, LogEnd, Recovered};
use crate::storage::Storage;
use crate::writer::clone_err;

/// Metadata key of the WAL id.
pub(crate) const META_WAL_ID: &str = "wal_id";
/// Metadata key of the persistent counters.
pub(crate) const META_COUNTERS: &str = "counters";
/// Prefix of consumer checkpoint keys.
pub(crate) const META_CONSUMER_PREFIX: &str = "consumer.";

/// Microseconds since the Unix epoch.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    now_us() / 1000
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A segment as the WAL tracks it.
#[derive(Debug, Clone)]
pub(crate) struct SegMeta {
    pub base: u64,
    pub bytes: u64,
    pub sealed: bool,
    /// Last sequence number (sealed segments only).
    pub last_seq: u64,
    /// Newest record's timestamp, when known (read lazily from the footer).
    pub last_ts_us: Option<u64>,
    /// Creation time from the header, when known.
    pub created_us: Option<u64>,
}

pub(crate) enum Op {
    Frames {
        bytes: Vec<u8>,
        last_seq: u64,
        last_ts: u64,
        count: u64,
    },
    /// Seal the active segment and start one at `new_base` (or rewrite the header of
    /// an empty active segment). The writer derives the new header's chain state.
    Roll {
        new_base: u64,
        /// Rotate the HMAC chain to this key (chained WALs).
        rotate_to: Option<Arc<HmacKey>>,
    },
}

/// Records encoded with postcard into one buffer (no allocation per record), each
/// behind its schema version byte. The buffer comes from, and goes back to, a
/// per-thread cache: a single append allocates nothing once a thread has appended.
pub(crate) struct Encoded {
    buf: Vec<u8>,
    /// End of each payload in `buf`; empty for a single payload (`one`), which spans
    /// the whole buffer (no second allocation per append).
    ends: Vec<usize>,
    single: bool,
}

thread_local! {
    /// The encode buffer of this thread, reused by every append made on it.
    static ENCODE_BUF: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Largest encode buffer kept for reuse (a larger one is freed after its append).
const ENCODE_BUF_KEEP: usize = 1 << 20;

fn take_encode_buf(capacity: usize) -> Vec<u8> {
    let mut b = ENCODE_BUF
        .try_with(std::cell::Cell::take)
        .unwrap_or_default();
    b.clear();
    b.reserve(capacity);
    b
}

impl Drop for Encoded {
    fn drop(&mut self) {
        if self.buf.capacity() <= ENCODE_BUF_KEEP {
            let b = std::mem::take(&mut self.buf);
            let _ = ENCODE_BUF.try_with(|c| c.set(b));
        }
    }
}

impl Encoded {
    /// Every payload is the record's schema version (one byte, `format::FLAG_SCHEMA`) and
    /// its postcard encoding.
    fn one<T: Serialize + ?Sized>(version: u8, record: &T) -> Result<Self> {
        let mut buf = take_encode_buf(64);
        buf.push(version);
        // `to_io` into a Vec is `extend_from_slice`; `to_extend` copied byte by byte.
        postcard::to_io(record, &mut buf).map_err(|e| Error::Encode(e.to_string()))?;
        Ok(Encoded {
            buf,
            ends: Vec::new(),
            single: true,
        })
    }

    fn many<T: Serialize>(version: u8, records: &[T]) -> Result<Self> {
        let mut buf = take_encode_buf(records.len() * 64);
        let mut ends = Vec::with_capacity(records.len());
        for r in records {
            buf.push(version);
            postcard::to_io(r, &mut buf).map_err(|e| Error::Encode(e.to_string()))?;
            ends.push(buf.len());
        }
        Ok(Encoded {
            buf,
            ends,
            single: false,
        })
    }

    fn from_vecs(version: u8, v: Vec<Vec<u8>>) -> Self {
        let mut ends = Vec::with_capacity(v.len());
        let mut buf = take_encode_buf(v.iter().map(|p| p.len() + 1).sum());
        for p in v {
            buf.push(version);
            buf.extend_from_slice(&p);
            ends.push(buf.len());
        }
        Encoded {
            buf,
            ends,
            single: false,
        }
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let single = self.single.then_some(&self.buf[..]);
        let mut start = 0;
        single.into_iter().chain(self.ends.iter().map(move |&end| {
            let s = &self.buf[start..end];
            start = end;
            s
        }))
    }

    fn count(&self) -> usize {
        if self.single {
            1
        } else {
            self.ends.len()
        }
    }

    fn payload_bytes(&self) -> usize {
        self.buf.len()
    }
}

/// Size of the buffers appenders encode frames into; the writer writes each with one
/// `pwrite`.
pub(crate) const FRAME_CHUNK: usize = 1 << 20;

/// What queuing a batch gives: first sequence number, count, and the receiver that
/// resolves once the batch is as durable as the configured `Durability` (none for
/// `Buffered`).
type Enqueued = (u64, u64, Option<oneshot::Receiver<Result<()>>>);

/// The HMAC chain as the writer thread extends it: it MACs each frame just before
/// writing it, off the appenders' path (`format::seal_frames`). `State::chain` holds
/// the state recovery found, which the writer starts from.
#[derive(Clone)]
pub(crate) struct ChainState {
    pub key: Arc<HmacKey>,
    pub prev: [u8; MAC_LEN],
    /// The key and MAC the active segment's header chains from (for rewriting the
    /// header of an empty segment on a key rotation).
    pub anchor_key: Arc<HmacKey>,
    pub anchor_mac: [u8; MAC_LEN],
}

pub(crate) struct Waiter {
    pub last_seq: u64,
    pub need_sync: bool,
    pub tx: oneshot::Sender<Result<()>>,
}

/// When an append notifies the waiting writer: a notify is a system call and a
/// context switch, so the writer says what it waits for.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WakeWhen {
    /// Once at least this many bytes are pending (0: every append).
    pub bytes: usize,
    /// Or once at least this many appenders wait for the writer (0: every append).
    pub waiters: usize,
}

pub(crate) struct State {
    pub next_seq: u64,
    pub ops: Vec<Op>,
    pub waiters: Vec<Waiter>,
    pub flushes: Vec<oneshot::Sender<Result<()>>>,
    pub pending_bytes: usize,
    /// Bytes the writer took and has not written yet (they count against the bound).
    pub inflight_bytes: usize,
    pub seg_planned: u64,
    pub seg_records: u64,
    /// Bytes of all segments, including what is planned for the active one.
    pub used_bytes: u64,
    pub closing: bool,
    /// The writer waits on `work` and must be notified of new work (see `wake`).
    pub writer_idle: bool,
    /// Which appends notify the idle writer (every append unless it lingers or dozes).
    pub wake: WakeWhen,
    pub poisoned: Option<(crate::error::PoisonCause, io::ErrorKind)>,
    pub space_wakers: Vec<Waker>,
    pub roll_requested: bool,
    pub chain: Option<ChainState>,
    /// Frame buffers the writer has written, for appenders to reuse.
    pub spare: Vec<Vec<u8>>,
}

impl State {
    /// Queues a roll to a new segment at `next_seq` (optionally rotating the HMAC key).
    /// When the active segment holds no records (a key rotation on a fresh WAL, or two
    /// in a row), nothing is sealed: the writer rewrites the segment's header instead.
    pub(crate) fn push_roll(&mut self, rotate_to: Option<Arc<HmacKey>>) {
        let new_base = self.next_seq;
        let empty = self.seg_records == 0;
        let hlen = if self.chain.is_some() {
            HEADER_MAX_LEN
        } else {
            HEADER_LEN
        } as u64;
        self.ops.push(Op::Roll {
            new_base,
            rotate_to,
        });
        if !empty {
            self.used_bytes += FOOTER_LEN as u64 + hlen;
        }
        self.seg_planned = hlen;
        self.seg_records = 0;
    }

    fn frame_overhead(&self) -> usize {
        FRAME_HEADER_LEN + if self.chain.is_some() { MAC_LEN } else { 0 }
    }
}

/// Hook deciding whether a sealed segment may be deleted by retention (archival uses it:
/// not before the segment is uploaded).
pub trait RetentionHook: Send + Sync + 'static {
    /// May the sealed segment with this base sequence be deleted now?
    fn may_delete(&self, base_seq: u64) -> bool;
}

pub(crate) struct Inner<S: Storage> {
    pub storage: S,
    pub opts: Options,
    pub wal_id: String,
    pub state: Mutex<State>,
    pub work: Condvar,
    pub durable_seq: AtomicU64,
    pub written_seq: AtomicU64,
    pub segments: Mutex<Vec<SegMeta>>,
    pub read_wakers: Mutex<Vec<Waker>>,
    pub consumers: Mutex<BTreeMap<String, u64>>,
    pub counters: Counters,
    pub persisted: Mutex<PersistedCounters>,
    pub hk_tx: Mutex<Option<mpsc::Sender<HkMsg>>>,
    pub retention_hooks: Mutex<Vec<Arc<dyn RetentionHook>>>,
    pub breaker: Mutex<BTreeMap<String, String>>,
    /// Per consumer, where its sink's figures are read ([`Hooks::set_sink_metrics`](crate::hooks::Hooks::set_sink_metrics)).
    pub sink_metrics: Mutex<BTreeMap<String, crate::shipper::SinkMetricsSource>>,
    pub archive_status: Mutex<Option<Arc<dyn Fn() -> ArchiveStatus + Send + Sync>>>,
    pub closed: AtomicBool,
    pub writer_done: AtomicBool,
    pub counters_dirty: AtomicBool,
    pub current_offset: AtomicU64,
    pub current_base: AtomicU64,
    pub drop_log: Mutex<(Option<Instant>, u64)>,
    pub seal_listeners: Mutex<Vec<SealListener>>,
    /// The last fdatasync'd position and the key of its segment (chained WALs).
    pub synced: Mutex<(LogEnd, Option<Arc<HmacKey>>)>,
    /// The recovery point last written to `meta/end`.
    pub end_written: Mutex<LogEnd>,
}

/// Called on the writer thread right after a segment is sealed (keep it short: send on
/// a channel).
pub type SealListener = Arc<dyn Fn(SealedSegment) + Send + Sync>;

/// A sealed segment: one [`Wal::sealed_segments`] lists, or one a seal listener is
/// told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SealedSegment {
    /// Base sequence number (the segment's id).
    pub base_seq: u64,
    /// Last sequence number in it.
    pub last_seq: u64,
    /// Size in bytes, footer included.
    pub bytes: u64,
}

/// Archive figures an archiver reports into the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchiveStatus {
    /// Sealed segments not yet archived.
    pub lag_segments: u64,
    /// Their bytes.
    pub lag_bytes: u64,
    /// Every sealed segment whose last sequence number is at most this is archived
    /// (archivers upload in order).
    pub archived_through_seq: u64,
}

/// A write-ahead log over a [`Storage`]. Cheap to clone; every clone is the same WAL.
///
/// See the crate documentation for an example.
pub struct Wal<S: Storage> {
    pub(crate) inner: Arc<Inner<S>>,
    _guard: Arc<DropGuard<S>>,
}

impl<S: Storage> Clone for Wal<S> {
    fn clone(&self) -> Self {
        Wal {
            inner: self.inner.clone(),
            _guard: self._guard.clone(),
        }
    }
}

impl<S: Storage> std::fmt::Debug for Wal<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("wal_id", &self.inner.wal_id)
            .field("location", &self.inner.storage.location())
            .finish()
    }
}

/// Closes the WAL when the last handle is dropped.
struct DropGuard<S: Storage> {
    inner: Arc<Inner<S>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl<S: Storage> Drop for DropGuard<S> {
    fn drop(&mut self) {
        self.inner.begin_close();
        if let Some(h) = lock(&self.writer).take() {
            let _ = h.join();
        }
        housekeeper::stop(&self.inner);
        self.inner.storage.release();
    }
}

impl<S: Storage> Wal<S> {
    /// Opens (or creates) the WAL on `storage`: reads the tail segment only, cuts a torn
    /// tail at the last good frame, and starts the writer and housekeeping threads.
    pub fn open(storage: S, opts: Options) -> Result<Self> {
        opts.validate()?;
        let loc = storage.location();
        let io_err = |op: &'static str| {
            let loc = loc.clone();
            move |e: io::Error| Error::io(op, loc, e)
        };

        // The WAL id.
        let wal_id = match storage
            .get_meta(META_WAL_ID)
            .map_err(io_err("read wal_id"))?
        {
            Some(b) => {
                let s = String::from_utf8(b).map_err(|_| Error::Corrupt {
                    segment: format!("{}/meta {META_WAL_ID}", storage.location()),
                    offset: 0,
                    reason: "wal_id is not UTF-8".into(),
                })?;
                if let Some(want) = &opts.wal_id {
                    if want != &s {
                        return Err(Error::Config(format!(
                            "wal_id {want:?} was requested but this WAL's id is {s:?}"
                        )));
                    }
                }
                s
            }
            None => {
                let id = opts.wal_id.clone().unwrap_or_else(generate_id);
                storage
                    .put_meta(META_WAL_ID, id.as_bytes())
                    .map_err(io_err("write wal_id"))?;
                id
            }
        };

        let persisted: PersistedCounters = match storage
            .get_meta(META_COUNTERS)
            .map_err(io_err("read counters"))?
        {
            Some(b) => serde_json::from_slice(&b).map_err(|e| Error::Corrupt {
                segment: format!("{}/meta {META_COUNTERS}", storage.location()),
                offset: 0,
                reason: format!("counters are not valid JSON: {e}"),
            })?,
            None => PersistedCounters::default(),
        };

        let consumers = load_consumers(&storage)?;

        let mut list = storage.list_segments().map_err(io_err("list segments"))?;
        list.sort_by_key(|s| s.id);
        let mut segments: Vec<SegMeta> = Vec::with_capacity(list.len() + 1);
        for (i, s) in list.iter().enumerate() {
            let last_seq = list.get(i + 1).map_or(0, |n| n.id.saturating_sub(1));
            segments.push(SegMeta {
                base: s.id,
                bytes: s.len,
                sealed: i + 1 < list.len(),
                last_seq,
                last_ts_us: None,
                created_us: None,
            });
        }

        let key = opts.hmac.clone();
        if let (Some(k), Some(src)) = (
            &key,
            key.as_ref()
                .and_then(|k| k.source().map(|p| p.to_path_buf())),
        ) {
            let loc = std::fs::canonicalize(storage.location())
                .unwrap_or_else(|_| storage.location().into());
            if src.starts_with(&loc) {
                return Err(Error::Config(format!(
                    "the HMAC key file {} lies inside the WAL directory {}; keep the key elsewhere (key {})",
                    src.display(),
                    loc.display(),
                    k.fingerprint_hex()
                )));
            }
        }
        let Recovered {
            tail,
            torn_cut,
            skipped,
            end: recovered_end,
        } = recover(&storage, &opts, key.as_ref(), &mut segments, &consumers)?;

        let next_seq = tail.last_seq + 1;
        let used: u64 = segments.iter().map(|s| s.bytes).sum();
        let mut persisted = persisted;
        persisted.torn_tail_bytes_cut_total += torn_cut;
        persisted.corrupt_skipped_total += skipped;
        if torn_cut > 0 || skipped > 0 {
            let _ = storage.put_meta(
                META_COUNTERS,
                &serde_json::to_vec(&persisted).unwrap_or_default(),
            );
        }

        let inner = Arc::new(Inner {
            opts,
            wal_id,
            state: Mutex::new(State {
                next_seq,
                ops: Vec::new(),
                waiters: Vec::new(),
                flushes: Vec::new(),
                pending_bytes: 0,
                inflight_bytes: 0,
                seg_planned: tail.offset,
                seg_records: tail.count,
                used_bytes: used,
                closing: false,
                writer_idle: false,
                wake: WakeWhen::default(),
                poisoned: None,
                space_wakers: Vec::new(),
                roll_requested: false,
                spare: Vec::new(),
                chain: key.clone().map(|k| ChainState {
                    anchor_key: k.clone(),
                    anchor_mac: tail.chain.map_or([0; MAC_LEN], |c| c.seed),
                    key: k,
                    prev: tail.last_mac.unwrap_or([0; MAC_LEN]),
                }),
            }),
            work: Condvar::new(),
            durable_seq: AtomicU64::new(tail.last_seq),
            written_seq: AtomicU64::new(tail.last_seq),
            segments: Mutex::new(segments),
            read_wakers: Mutex::new(Vec::new()),
            consumers: Mutex::new(consumers),
            counters: Counters::default(),
            persisted: Mutex::new(persisted),
            hk_tx: Mutex::new(None),
            retention_hooks: Mutex::new(Vec::new()),
            breaker: Mutex::new(BTreeMap::new()),
            sink_metrics: Mutex::new(BTreeMap::new()),
            archive_status: Mutex::new(None),
            closed: AtomicBool::new(false),
            writer_done: AtomicBool::new(false),
            counters_dirty: AtomicBool::new(false),
            current_offset: AtomicU64::new(tail.offset),
            current_base: AtomicU64::new(tail.base),
            drop_log: Mutex::new((None, 0)),
            seal_listeners: Mutex::new(Vec::new()),
            synced: Mutex::new((recovered_end, key.clone())),
            end_written: Mutex::new(recovered_end),
            storage,
        });
        inner
            .counters
            .dropped_records
            .store(persisted.dropped_records_total, Ordering::Relaxed);
        inner
            .counters
            .ship_errors
            .store(persisted.ship_errors_total, Ordering::Relaxed);
        inner
            .counters
            .torn_tail_bytes
            .store(persisted.torn_tail_bytes_cut_total, Ordering::Relaxed);
        inner
            .counters
            .corrupt_skipped
            .store(persisted.corrupt_skipped_total, Ordering::Relaxed);
        inner
            .counters
            .dead_letter
            .store(persisted.dead_letter_total, Ordering::Relaxed);
        inner
            .counters
            .archive_errors
            .store(persisted.archive_errors_total, Ordering::Relaxed);

        // Segments written before schema versions were recorded (format version < 3)
        // take no new record: the tail is sealed (or its empty header rewritten) first.
        if !tail.has_schema {
            lock(&inner.state).push_roll(None);
        }

        let w = inner.clone();
        let writer = std::thread::Builder::new()
            .name("walspool-writer".into())
            .spawn(move || {
                /// Marks the writer gone even if it panics, so that nothing waits on
                /// it forever and later appends fail instead of hanging.
                struct Done<S: Storage>(Arc<Inner<S>>);
                impl<S: Storage> Drop for Done<S> {
                    fn drop(&mut self) {
                        if std::thread::panicking() {
                            let e = io::Error::other("the walspool writer thread panicked");
                            let err = self.0.poison("writer", &e);
                            let mut st = lock(&self.0.state);
                            let waiters = std::mem::take(&mut st.waiters);
                            let flushes = std::mem::take(&mut st.flushes);
                            // Under the lock: `close` either sees the writer gone or
                            // queued its flush before this drain.
                            self.0.writer_done.store(true, Ordering::Release);
                            drop(st);
                            for w in waiters {
                                let _ = w.tx.send(Err(clone_err(&err)));
                            }
                            for f in flushes {
                                let _ = f.send(Err(clone_err(&err)));
                            }
                        }
                        self.0.writer_done.store(true, Ordering::Release);
                        self.0.wake_readers();
                    }
                }
                let _done = Done(w.clone());
                crate::writer::writer_main(w, tail);
            })
            .map_err(|e| Error::io("spawn writer thread", "walspool-writer", e))?;
        housekeeper::start(inner.clone())?;
        Ok(Wal {
            _guard: Arc::new(DropGuard {
                inner: inner.clone(),
                writer: Mutex::new(Some(writer)),
            }),
            inner,
        })
    }

    /// The storage this WAL runs on.
    pub fn storage(&self) -> &S {
        &self.inner.storage
    }

    /// The WAL's stable id (used in idempotency keys and archive paths).
    pub fn id(&self) -> &str {
        &self.inner.wal_id
    }

    /// The options it was opened with.
    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// Appends one record; resolves with its sequence number once it is as durable as
    /// the configured [`Durability`].
    pub async fn append<T: Serialize + ?Sized>(&self, record: &T) -> Result<u64> {
        let (first, _) = self
            .append_encoded(Encoded::one(self.inner.opts.schema.version(), record)?)
            .await?;
        Ok(first)
    }

    /// Appends records in order, atomically with respect to other appenders (their
    /// sequence numbers are consecutive); resolves with the range once durable.
    pub async fn append_batch<T: Serialize>(&self, records: &[T]) -> Result<std::ops::Range<u64>> {
        if records.is_empty() {
            let next = lock(&self.inner.state).next_seq;
            return Ok(next..next);
        }
        let (first, n) = self
            .append_encoded(Encoded::many(self.inner.opts.schema.version(), records)?)
            .await?;
        Ok(first..first + n)
    }

    /// Appends already-encoded payloads (postcard bytes of the current schema version,
    /// or any bytes when the WAL is read raw); each is stamped with the WAL's schema
    /// version like any append. Resolves with their range of sequence numbers, like
    /// [`append_batch`](Self::append_batch).
    pub async fn append_payloads(&self, payloads: Vec<Vec<u8>>) -> Result<std::ops::Range<u64>> {
        if payloads.is_empty() {
            let next = lock(&self.inner.state).next_seq;
            return Ok(next..next);
        }
        let (first, n) = self
            .append_encoded(Encoded::from_vecs(
                self.inner.opts.schema.version(),
                payloads,
            ))
            .await?;
        Ok(first..first + n)
    }

    async fn append_encoded(&self, payloads: Encoded) -> Result<(u64, u64)> {
        let (first, n, rx) = self.enqueue(payloads).await?;
        if let Some(rx) = rx {
            match rx.await {
                Ok(r) => r?,
                Err(_) => return Err(Error::Closed),
            }
        }
        Ok((first, n))
    }

    /// Queues a record for the writer thread and returns its sequence number without
    /// waiting for it to be durable (nor written): a fire-and-forget append for hot
    /// paths such as a logging layer. It blocks the calling thread only while
    /// walspool's in-memory buffer is full or the WAL is at `max_bytes` with
    /// `WhenFull::Block` (back-pressure). A later failure poisons the WAL; use
    /// [`flush`](Self::flush) to learn that everything queued is durable.
    ///
    /// It needs no executor and works on any thread, including inside
    /// `futures::executor::block_on` or a `LocalPool` (the thread is parked, not run as
    /// an executor).
    pub fn append_nowait<T: Serialize + ?Sized>(&self, record: &T) -> Result<u64> {
        let (first, _, _rx) = crate::blocking::wait(
            self.enqueue(Encoded::one(self.inner.opts.schema.version(), record)?),
        )?;
        Ok(first)
    }

    /// [`append`](Self::append) for synchronous code: blocks the calling thread until
    /// the record is as durable as the configured [`Durability`] and returns its
    /// sequence number. It needs no executor: call it from a plain thread, or from a
    /// task of any executor that may block its thread (tokio's `block_in_place`, a
    /// `LocalPool`, `futures::executor::block_on`).
    pub fn append_blocking<T: Serialize + ?Sized>(&self, record: &T) -> Result<u64> {
        crate::blocking::wait(self.append(record))
    }

    /// [`flush`](Self::flush) for synchronous code: blocks the calling thread until
    /// every record appended so far is durable. Needs no executor (see
    /// [`append_blocking`](Self::append_blocking)).
    pub fn flush_blocking(&self) -> Result<()> {
        crate::blocking::wait(self.flush())
    }

    /// Phase one of an append: wait for room, assign sequence numbers, queue the frames.
    async fn enqueue(&self, payloads: Encoded) -> Result<Enqueued> {
        let max = self.inner.opts.max_record_len();
        if let Some(p) = payloads.iter().find(|p| p.len() > max) {
            return Err(Error::RecordTooLarge { size: p.len(), max });
        }
        let inner = &self.inner;
        let mut payloads = Some(payloads);
        futures::future::poll_fn(|cx| {
            let mut st = lock(&inner.state);
            match inner.try_enqueue(&mut st, payloads.as_ref().expect("polled after completion")) {
                Ok(Some(r)) => {
                    payloads = None;
                    Poll::Ready(Ok(r))
                }
                Ok(None) => {
                    st.space_wakers.push(cx.waker().clone());
                    if st.writer_idle {
                        inner.work.notify_one();
                    }
                    Poll::Pending
                }
                Err(e) => Poll::Ready(Err(e)),
            }
        })
        .await
    }

    /// Waits until every record appended so far is durable (fdatasync'd).
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        {
            let mut st = lock(&self.inner.state);
            if let Some((c, k)) = &st.poisoned {
                return Err(Error::Poisoned {
                    cause: c.clone(),
                    kind: *k,
                });
            }
            if st.closing {
                return Err(Error::Closed);
            }
            st.flushes.push(tx);
            self.inner.work.notify_one();
        }
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Asks the WAL to seal the active segment and start a new one (if it holds records).
    /// The roll is ordered with the appends around it: records appended before the call
    /// are in the sealed segment, records appended after it in the new one, and once a
    /// later [`flush`](Self::flush) resolves the segment is sealed (seal listeners ran).
    pub fn roll(&self) {
        let mut st = lock(&self.inner.state);
        if st.seg_records > 0 {
            st.push_roll(None);
        }
        self.inner.work.notify_one();
    }

    /// Drains every buffered record, fdatasyncs, publishes final stats and stops the
    /// WAL's threads. Later appends fail with [`Error::Closed`].
    pub async fn close(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        {
            let mut st = lock(&self.inner.state);
            if st.closing {
                drop(st);
                return Ok(());
            }
            if self.inner.writer_done.load(Ordering::Acquire) {
                // The writer thread is gone (it panicked): nothing can be flushed.
                drop(st);
                drop(tx);
            } else {
                st.flushes.push(tx);
            }
        }
        self.inner.begin_close();
        // The sender is dropped without an answer only if the writer thread died.
        let r = rx.await.unwrap_or_else(|_| {
            Err(Error::Poisoned {
                cause: "the walspool writer thread stopped before close completed".into(),
                kind: io::ErrorKind::Other,
            })
        });
        housekeeper::stop(&self.inner);
        // Wait (briefly) for the writer thread to finish before releasing the storage.
        let t = Instant::now();
        while !self.inner.writer_done.load(Ordering::Acquire)
            && t.elapsed() < Duration::from_secs(5)
        {
            std::thread::yield_now();
        }
        self.inner.storage.release();
        r
    }

    /// Rotates the HMAC key: seals the current segment and starts a new one MACed with
    /// `new_key`, whose header names both keys and whose chain seed is authenticated by
    /// the old key (see [`chain`](crate::chain)). Keep the old key to verify older segments.
    pub fn rotate_key(&self, new_key: HmacKey) -> Result<()> {
        let mut st = lock(&self.inner.state);
        if st.chain.is_none() {
            return Err(Error::Config(
                "rotate_key: this WAL has no HMAC chain (Options::hmac_key)".into(),
            ));
        }
        if let Some((c, k)) = &st.poisoned {
            return Err(Error::Poisoned {
                cause: c.clone(),
                kind: *k,
            });
        }
        st.push_roll(Some(Arc::new(new_key)));
        if st.writer_idle {
            self.inner.work.notify_one();
        }
        Ok(())
    }

    /// Sequence number of the last record appended (enqueued); 0 if none was.
    ///
    /// Sequence numbers start at 1, and every high-water mark walspool reports —
    /// this, [`durable_seq`](Self::durable_seq), [`Consumer::committed`](crate::Consumer::committed),
    /// [`ShipperStatus::committed_seq`](crate::shipper::ShipperStatus::committed_seq) —
    /// is "every record up to this one", 0 meaning none.
    pub fn last_seq(&self) -> u64 {
        lock(&self.inner.state).next_seq - 1
    }

    /// Sequence number of the last durable record; 0 if none is (see
    /// [`last_seq`](Self::last_seq)).
    pub fn durable_seq(&self) -> u64 {
        self.inner.durable_seq.load(Ordering::Acquire)
    }

    /// First sequence number still on disk, if any record is.
    pub fn first_seq_on_disk(&self) -> Option<u64> {
        let segs = lock(&self.inner.segments);
        let first = segs.first()?.base;
        let durable = self.durable_seq();
        (durable >= first).then_some(first)
    }

    /// Sealed segments on disk, oldest first.
    pub fn sealed_segments(&self) -> Vec<SealedSegment> {
        lock(&self.inner.segments)
            .iter()
            .filter(|s| s.sealed)
            .map(|s| SealedSegment {
                base_seq: s.base,
                last_seq: s.last_seq,
                bytes: s.bytes,
            })
            .collect()
    }
}

impl<S: Storage> Inner<S> {
    fn try_enqueue(&self, st: &mut State, payloads: &Encoded) -> Result<Option<Enqueued>> {
        if let Some((c, k)) = &st.poisoned {
            return Err(Error::Poisoned {
                cause: c.clone(),
                kind: *k,
            });
        }
        if st.closing {
            return Err(Error::Closed);
        }
        let overhead = st.frame_overhead();
        let chained = st.chain.is_some();
        let total: usize = payloads.iter().map(|p| p.len() + overhead).sum();
        let buffered = st.pending_bytes + st.inflight_bytes;
        if buffered > 0 && buffered + total > self.opts.max_buffered_bytes {
            return Ok(None);
        }
        if let Some(max) = self.opts.max_bytes {
            if st.used_bytes + total as u64 > max {
                match self.opts.when_full {
                    WhenFull::Reject => {
                        return Err(Error::Full {
                            max_bytes: max,
                            used: st.used_bytes,
                        })
                    }
                    WhenFull::Block => {
                        housekeeper::send(self, HkMsg::Retention);
                        return Ok(None);
                    }
                    WhenFull::DropOldest => {}
                }
            }
        }
        let ts = now_us();
        let first = st.next_seq;
        let seg_size = self.opts.segment_size;
        for p in payloads.iter() {
            let frame_len = (overhead + p.len()) as u64;
            if st.seg_records > 0 && st.seg_planned + frame_len + FOOTER_LEN as u64 > seg_size {
                st.push_roll(None);
            }
            let seq = st.next_seq;
            st.next_seq += 1;
            // The frame's CRC (and MAC) are filled in by the writer thread just before it
            // writes the chunk (`format::seal_frames`), in parallel with the appenders.
            match st.ops.last_mut() {
                Some(Op::Frames {
                    bytes,
                    last_seq,
                    last_ts,
                    count,
                }) if bytes.len() + frame_len as usize <= FRAME_CHUNK.max(bytes.capacity()) => {
                    encode_frame_unsealed(bytes, seq, ts, chained, p);
                    *last_seq = seq;
                    *last_ts = ts;
                    *count += 1;
                }
                _ => {
                    // Fixed-size chunks, recycled by the writer: no doubling
                    // reallocations of a large buffer, no fresh mapping per batch.
                    let mut bytes = st
                        .spare
                        .pop()
                        .unwrap_or_else(|| Vec::with_capacity(FRAME_CHUNK));
                    bytes.clear();
                    bytes.reserve(frame_len as usize);
                    encode_frame_unsealed(&mut bytes, seq, ts, chained, p);
                    st.ops.push(Op::Frames {
                        bytes,
                        last_seq: seq,
                        last_ts: ts,
                        count: 1,
                    });
                }
            }
            st.seg_planned += frame_len;
            st.seg_records += 1;
            st.used_bytes += frame_len;
            st.pending_bytes += frame_len as usize;
        }
        let n = payloads.count() as u64;
        self.counters.append_times.note(first, ts);
        self.counters
            .appended_records
            .fetch_add(n, Ordering::Relaxed);
        self.counters
            .appended_bytes
            .fetch_add(payloads.payload_bytes() as u64, Ordering::Relaxed);
        let rx = match self.opts.durability {
            Durability::Buffered => None,
            d => {
                let (tx, rx) = oneshot::channel();
                st.waiters.push(Waiter {
                    last_seq: first + n - 1,
                    need_sync: d == Durability::Sync,
                    tx,
                });
                Some(rx)
            }
        };
        if st.writer_idle
            && (st.pending_bytes >= st.wake.bytes || st.waiters.len() >= st.wake.waiters)
        {
            st.writer_idle = false;
            self.work.notify_one();
        }
        Ok(Some((first, n, rx)))
    }

    pub(crate) fn begin_close(&self) {
        let mut st = lock(&self.state);
        st.closing = true;
        self.closed.store(true, Ordering::Release);
        self.work.notify_one();
        let wakers = std::mem::take(&mut st.space_wakers);
        drop(st);
        wakers.into_iter().for_each(Waker::wake);
        self.wake_readers();
    }

    /// Counters changed by a caller (shipper, archiver): the housekeeping thread
    /// persists them at its next tick, off the caller's task.
    pub(crate) fn mark_counters_dirty(&self) {
        self.counters_dirty.store(true, Ordering::Release);
    }

    /// Moves the recovery point (`meta/end`) to the last fdatasync'd position, with
    /// `flags` ([`END_CLEAN`] on a clean close, [`END_POISONED`] after a failed sync).
    pub(crate) fn persist_end(&self, flags: u32) {
        let (pos, key) = {
            let g = lock(&self.synced);
            (g.0, g.1.clone())
        };
        let e = LogEnd { flags, ..pos };
        // Held across the write: the writer and the housekeeper never race, so the
        // recovery point never moves back.
        let mut written = lock(&self.end_written);
        let same_place =
            (written.base, written.offset, written.last_seq) == (e.base, e.offset, e.last_seq);
        if *written == e || (flags == 0 && same_place) {
            return;
        }
        match write_end(&self.storage, &e, key.as_deref()) {
            Ok(()) => *written = e,
            Err(err) => {
                tracing::warn!(error = %err, "could not write the recovery point (meta/end)")
            }
        }
    }

    /// Writes the persistent counters (`meta/counters`), durably.
    pub(crate) fn persist_counters(&self) {
        self.counters_dirty.store(false, Ordering::Release);
        let bytes = serde_json::to_vec(&*lock(&self.persisted)).unwrap_or_default();
        if let Err(e) = self.storage.put_meta(META_COUNTERS, &bytes) {
            tracing::warn!(error = %e, "could not persist the WAL's counters");
        }
    }

    pub(crate) fn wake_readers(&self) {
        let wakers = std::mem::take(&mut *lock(&self.read_wakers));
        for w in wakers {
            w.wake();
        }
    }

    pub(crate) fn poison(&self, op: &'static str, e: &io::Error) -> Error {
        let cause =
            crate::error::PoisonCause::io(format!("{op} on {}", self.storage.location()), e);
        tracing::error!(location = %self.storage.location(), error = %e, op, "WAL poisoned: refusing further appends");
        let mut st = lock(&self.state);
        if st.poisoned.is_none() {
            st.poisoned = Some((cause.clone(), e.kind()));
        }
        let wakers = std::mem::take(&mut st.space_wakers);
        drop(st);
        wakers.into_iter().for_each(Waker::wake);
        Error::Poisoned {
            cause,
            kind: e.kind(),
        }
    }

    /// Counts and logs (rate-limited) records dropped before every consumer had them.
    pub(crate) fn count_drops(&self, first: u64, last: u64, why: &str) {
        let min_committed = lock(&self.consumers).values().copied().min().unwrap_or(0);
        let lost = if last < first {
            0
        } else {
            let from = first.max(min_committed + 1);
            if from > last {
                0
            } else {
                last - from + 1
            }
        };
        if lost == 0 {
            return;
        }
        self.counters
            .dropped_records
            .fetch_add(lost, Ordering::Relaxed);
        lock(&self.persisted).dropped_records_total += lost;
        // Drops happen on walspool's own threads, next to a segment deletion: persist now.
        self.persist_counters();
        let mut dl = lock(&self.drop_log);
        dl.1 += lost;
        let due = dl.0.is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
        if due {
            tracing::warn!(
                location = %self.storage.location(),
                dropped = dl.1,
                total = self.counters.dropped_records.load(Ordering::Relaxed),
                reason = why,
                first_seq = first,
                last_seq = last,
                "dropped unshipped records to stay within bounds"
            );
            *dl = (Some(Instant::now()), 0);
        }
    }

    /// Deletes sealed segments chosen by `pick` (called with the sealed ones, oldest
    /// first; returns how many of them to delete from the front). Returns bytes freed.
    pub(crate) fn delete_oldest(
        &self,
        why: &str,
        count_as_drop: bool,
        mut pick: impl FnMut(&SegMeta) -> bool,
    ) -> u64 {
        let victims: Vec<SegMeta> = {
            let mut segs = lock(&self.segments);
            let mut n = 0;
            while n < segs.len() && segs[n].sealed && pick(&segs[n]) {
                n += 1;
            }
            segs.drain(..n).collect()
        };
        let mut freed = 0;
        let hooks = if count_as_drop {
            lock(&self.retention_hooks).clone()
        } else {
            Vec::new()
        };
        for v in &victims {
            if count_as_drop {
                self.count_drops(v.base, v.last_seq, why);
                if hooks.iter().any(|h| !h.may_delete(v.base)) {
                    // A bound forces it out before it was archived: it is gone for good.
                    // The archiver counts it in archive_lost_segments_total.
                    tracing::error!(
                        segment = %self.storage.segment_name(v.base),
                        first_seq = v.base,
                        last_seq = v.last_seq,
                        reason = why,
                        "deleting a sealed segment that was never archived"
                    );
                }
            }
            match self.storage.remove_segment(v.base) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::error!(segment = %self.storage.segment_name(v.base), error = %e, "could not delete segment")
                }
            }
            freed += v.bytes;
        }
        if freed > 0 {
            let mut st = lock(&self.state);
            st.used_bytes = st.used_bytes.saturating_sub(freed);
            let wakers = std::mem::take(&mut st.space_wakers);
            drop(st);
            wakers.into_iter().for_each(Waker::wake);
            self.wake_readers();
        }
        freed
    }
}

fn generate_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_us());
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

pub(crate) fn new_meta(base: u64, bytes: u64) -> SegMeta {
    SegMeta {
        base,
        bytes,
        sealed: false,
        last_seq: base.saturating_sub(1),
        last_ts_us: None,
        created_us: Some(now_us()),
    }
}

pub(crate) fn load_consumers<S: Storage + ?Sized>(storage: &S) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    let keys = storage
        .list_meta(META_CONSUMER_PREFIX)
        .map_err(|e| Error::io("list consumers", storage.location(), e))?;
    for k in keys {
        let name = k[META_CONSUMER_PREFIX.len()..].to_string();
        let Some(b) = storage
            .get_meta(&k)
            .map_err(|e| Error::io("read checkpoint", storage.location(), e))?
        else {
            continue;
        };
        out.insert(
            name,
            decode_checkpoint(&b, &format!("{} checkpoint {k}", storage.location()))?,
        );
    }
    Ok(out)
}

/// Checkpoint encoding: seq u64 LE + CRC-32 of those 8 bytes.
pub(crate) fn encode_checkpoint(seq: u64) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..8].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&b[..8]);
    b[8..].copy_from_slice(&crc.to_le_bytes());
    b
}

pub(crate) fn decode_checkpoint(b: &[u8], what: &str) -> Result<u64> {
    if b.len() != 12 || crc32fast::hash(&b[..8]).to_le_bytes() != b[8..12] {
        return Err(Error::Corrupt {
            segment: what.to_string(),
            offset: 0,
            reason: "checkpoint is not 12 bytes with a valid CRC (garbage or torn)".into(),
        });
    }
    Ok(crate::format::u64_at(b, 0))
}
