//! The writer thread: takes queued frames, writes them with one `pwrite` per chunk,
//! fdatasyncs once per group (group commit), seals and rolls segments, and moves the
//! recovery point forward.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use crate::chain::HmacKey;
use crate::error::{Error, Result};
use crate::format::{
    seal_frames, ChainHeader, SegmentFooter, SegmentHeader, FOOTER_LEN, FORMAT_VERSION, MAC_LEN,
};
use crate::housekeeper::{self, HkMsg};
use crate::options::{Durability, WhenFull};
use crate::recovery::{LogEnd, TailState, END_CLEAN, END_POISONED};
use crate::storage::{SegmentId, Storage};
use crate::wal::{
    lock, new_meta, now_us, ChainState, Inner, Op, SealedSegment, WakeWhen, FRAME_CHUNK,
};

/// How long the writer of a `Buffered` WAL waits after a round of writes before it
/// writes what accumulated, unless a chunk's worth comes in first: appends then do not
/// notify it one by one (each notify is a system call and a context switch).
const DOZE: Duration = Duration::from_millis(1);

/// How long the writer of a `Sync` WAL polls for the next append of a lone appender it
/// just acknowledged before it sleeps: the appender comes back within microseconds,
/// and finding its append without being notified saves a notify (system call) and a
/// wake-up (context switch) per append.
const SPIN: Duration = Duration::from_micros(25);

/// Zero ahead only while the bytes written since the last fdatasync stay below this.
const ZERO_AHEAD_MAX_GROUP: u64 = 64 << 10;

/// Early writeback ranges end on a page boundary: the page the writer is still
/// filling is not handed to writeback only to be dirtied again by the next write.
const PAGE: u64 = 4096;

/// Reserves the rest of a new segment on storage (see [`Storage::preallocate`]);
/// failure only costs speed, so it is logged, not fatal.
fn preallocate<S: Storage>(inner: &Inner<S>, id: u64) {
    if let Err(e) = inner.storage.preallocate(id, inner.opts.segment_size) {
        tracing::debug!(segment = %inner.storage.segment_name(id), error = %e, "could not preallocate segment");
    }
}

pub(crate) fn writer_main<S: Storage>(inner: Arc<Inner<S>>, tail: TailState) {
    let mut w = Writer {
        cur: tail.base,
        offset: tail.offset,
        crc: tail.crc,
        count: tail.count,
        last_seq: tail.last_seq,
        last_ts: tail.last_ts,
        opened: Instant::now(),
        dirty: false,
        last_sync: Instant::now(),
        wb_from: tail.offset & !(PAGE - 1),
        writeback: inner.opts.writeback_bytes,
        zeroed: tail.offset,
        zero_ahead: inner.opts.zero_ahead_bytes,
        synced_at: tail.offset,
        // The chain as recovery left it; from here on only this thread extends it.
        chain: lock(&inner.state).chain.clone(),
    };
    let periodic = match inner.opts.durability {
        Durability::Sync => None,
        Durability::Periodic(d) => Some(d),
        Durability::Buffered => Some(Duration::from_secs(1)),
    };
    let age_limit = match (inner.opts.segment_max_age, inner.opts.max_age) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    // Durable appenders completed by the last fsync, and how long to wait for them.
    let mut last_group = 0usize;
    let mut linger = Duration::ZERO;
    // Buffered: the last round wrote frames, so more are likely on the way.
    let buffered = inner.opts.durability == Durability::Buffered;
    let doze_bytes = (inner.opts.max_buffered_bytes / 4).min(FRAME_CHUNK);
    let mut doze = false;
    // Sync: the last fsync acknowledged a lone appender.
    let mut spin = false;
    loop {
        let mut st = lock(&inner.state);
        let mut sync_due = false;
        loop {
            if st.poisoned.is_some() {
                let (c, k) = st
                    .poisoned
                    .clone()
                    .unwrap_or((String::new().into(), io::ErrorKind::Other));
                let err = || Error::Poisoned {
                    cause: c.clone(),
                    kind: k,
                };
                for wt in std::mem::take(&mut st.waiters) {
                    let _ = wt.tx.send(Err(err()));
                }
                for f in std::mem::take(&mut st.flushes) {
                    let _ = f.send(Err(err()));
                }
                st.ops.clear();
                st.pending_bytes = 0;
                if st.closing {
                    return;
                }
            }
            if !st.ops.is_empty() || !st.flushes.is_empty() || st.closing {
                break;
            }
            let now = Instant::now();
            let mut timeout = Duration::from_secs(1);
            if let (Some(p), true) = (periodic, w.dirty) {
                let due = w.last_sync + p;
                if due <= now {
                    sync_due = true;
                    break;
                }
                timeout = timeout.min(due - now);
            }
            // A poisoned WAL does no more I/O: an age-based roll would write a footer and
            // start a segment whose base skips the sequence numbers of failed appends.
            if st.poisoned.is_none()
                && (st.roll_requested
                    || age_limit.is_some_and(|a| w.count > 0 && w.opened.elapsed() >= a))
            {
                st.roll_requested = false;
                if st.seg_records > 0 {
                    st.push_roll(None);
                    break;
                }
            }
            if let Some(a) = age_limit {
                if w.count > 0 {
                    timeout = timeout.min(
                        a.saturating_sub(w.opened.elapsed())
                            .max(Duration::from_millis(1)),
                    );
                }
            }
            if std::mem::take(&mut spin) && st.poisoned.is_none() {
                drop(st);
                let t = Instant::now();
                loop {
                    for _ in 0..64 {
                        std::hint::spin_loop();
                    }
                    // try_lock: never make the appender wait for the poll.
                    if let Ok(g) = inner.state.try_lock() {
                        if !g.ops.is_empty() || !g.flushes.is_empty() || g.closing {
                            break;
                        }
                    }
                    if t.elapsed() >= SPIN {
                        break;
                    }
                }
                st = lock(&inner.state);
                continue;
            }
            if std::mem::take(&mut doze) {
                timeout = timeout.min(DOZE);
                st.wake = WakeWhen {
                    bytes: doze_bytes,
                    waiters: 1,
                };
            } else {
                st.wake = WakeWhen::default();
            }
            st.writer_idle = true;
            st = inner
                .work
                .wait_timeout(st, timeout)
                .map(|r| r.0)
                .unwrap_or_else(|e| e.into_inner().0);
            st.writer_idle = false;
        }
        // Group commit: the appenders woken by the previous fsync come back one by one.
        // Give them a moment (a fraction of an fsync) to join this batch instead of
        // leaving most of them for the next fsync. A lone appender never waits. Only the
        // append that completes the group (or a large amount of data) wakes the writer.
        if periodic.is_none() && last_group > 1 && !st.closing {
            let deadline = Instant::now() + linger;
            st.wake = WakeWhen {
                bytes: inner.opts.max_buffered_bytes / 2,
                waiters: last_group,
            };
            while st.waiters.len() < last_group && !st.closing && st.poisoned.is_none() {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                st.writer_idle = true;
                st = inner
                    .work
                    .wait_timeout(st, deadline - now)
                    .map(|r| r.0)
                    .unwrap_or_else(|e| e.into_inner().0);
                st.writer_idle = false;
            }
        }
        st.wake = WakeWhen::default();
        let ops = std::mem::take(&mut st.ops);
        let waiters = std::mem::take(&mut st.waiters);
        let flushes = std::mem::take(&mut st.flushes);
        let closing = st.closing;
        st.inflight_bytes = st.pending_bytes;
        st.pending_bytes = 0;
        drop(st);

        let mut result = Ok(());
        let mut rolled = false;
        let mut used = Vec::new();
        for op in ops {
            let r = match op {
                Op::Frames {
                    mut bytes,
                    last_seq,
                    last_ts,
                    count,
                } => {
                    w.seal(&mut bytes);
                    let r = w.write_frames(&inner, &bytes, last_seq, last_ts, count);
                    used.push(bytes);
                    doze = buffered;
                    r
                }
                Op::Roll {
                    new_base,
                    rotate_to,
                } => {
                    rolled = true;
                    let (chain, key) = w.next_chain(rotate_to);
                    w.roll(&inner, new_base, chain, key)
                }
            };
            if let Err(e) = r {
                result = Err(e);
                break;
            }
        }
        {
            // Written (or failed): the buffer space is free again.
            let mut st = lock(&inner.state);
            st.inflight_bytes = 0;
            for b in used {
                if st.spare.len() < 4 && b.capacity() <= 2 * FRAME_CHUNK {
                    st.spare.push(b);
                }
            }
            let space = std::mem::take(&mut st.space_wakers);
            drop(st);
            space.into_iter().for_each(Waker::wake);
        }
        if result.is_ok() {
            inner.written_seq.store(w.last_seq, Ordering::Release);
            let need_sync = sync_due
                || closing
                || !flushes.is_empty()
                || waiters.iter().any(|x| x.need_sync)
                || periodic.is_some_and(|p| w.last_sync.elapsed() >= p);
            if need_sync && w.dirty {
                let t = Instant::now();
                result = w.sync(&inner);
                // A quarter of an fsync, at most 250 µs.
                linger = (t.elapsed() / 4).min(Duration::from_micros(250));
            }
            last_group = waiters.iter().filter(|x| x.need_sync).count();
            spin = last_group == 1;
            if result.is_ok() && !w.dirty {
                inner.durable_seq.store(w.last_seq, Ordering::Release);
                inner.wake_readers();
            }
        }
        match result {
            Ok(()) => {
                let durable = inner.durable_seq.load(Ordering::Acquire);
                for wt in waiters {
                    debug_assert!(!wt.need_sync || wt.last_seq <= durable);
                    let _ = wt.tx.send(Ok(()));
                }
                for f in flushes {
                    let _ = f.send(Ok(()));
                }
            }
            Err(e) => {
                let e = match e {
                    Error::Poisoned { .. } => e,
                    other => {
                        let io = match &other {
                            Error::Io { source, .. } => {
                                io::Error::new(source.kind(), format!("{other}: {source}"))
                            }
                            _ => io::Error::other(other.to_string()),
                        };
                        inner.poison("write", &io)
                    }
                };
                for wt in waiters {
                    let _ = wt.tx.send(Err(clone_err(&e)));
                }
                for f in flushes {
                    let _ = f.send(Err(clone_err(&e)));
                }
            }
        }
        if rolled {
            enforce_drop_oldest(&inner);
            housekeeper::send(&inner, HkMsg::Rolled);
        }
        if closing {
            let st = lock(&inner.state);
            if st.ops.is_empty() {
                let healthy = st.poisoned.is_none();
                drop(st);
                if healthy {
                    // A clean close leaves the tail at its logical size (no preallocated
                    // zeros for tools to look at); the next open preallocates again.
                    // Then the recovery point records the exact end.
                    let trimmed = inner
                        .storage
                        .truncate(w.cur, w.offset)
                        .and_then(|()| inner.storage.sync(w.cur));
                    if trimmed.is_ok() && !w.dirty {
                        inner.persist_end(END_CLEAN);
                    }
                }
                return;
            }
        }
    }
}

fn enforce_drop_oldest<S: Storage>(inner: &Inner<S>) {
    let (Some(max), WhenFull::DropOldest) = (inner.opts.max_bytes, inner.opts.when_full) else {
        return;
    };
    let mut used = lock(&inner.state).used_bytes;
    inner.delete_oldest("max_bytes (DropOldest)", true, |s| {
        if used > max {
            used = used.saturating_sub(s.bytes);
            true
        } else {
            false
        }
    });
}

pub(crate) fn clone_err(e: &Error) -> Error {
    match e {
        Error::Poisoned { cause, kind } => Error::Poisoned {
            cause: cause.clone(),
            kind: *kind,
        },
        Error::Closed => Error::Closed,
        other => Error::Poisoned {
            cause: other.to_string().into(),
            kind: io::ErrorKind::Other,
        },
    }
}

struct Writer {
    cur: SegmentId,
    offset: u64,
    crc: crc32fast::Hasher,
    count: u64,
    last_seq: u64,
    last_ts: u64,
    opened: Instant,
    dirty: bool,
    last_sync: Instant,
    /// Early writeback: bytes of the active segment before this offset are synced or
    /// were handed to [`Storage::start_writeback`].
    wb_from: u64,
    /// Hint every this many bytes (`Options::writeback_bytes`); 0: off (or it failed).
    writeback: u64,
    /// Zero ahead: bytes of the active segment before this offset were written (with
    /// frames or with zeros) by this writer.
    zeroed: u64,
    /// Keep this many bytes past `offset` zeroed (`Options::zero_ahead_bytes`); 0: off
    /// (or it failed).
    zero_ahead: u64,
    /// `offset` at the last fdatasync.
    synced_at: u64,
    /// The HMAC chain (chained WALs): key and MAC of the last frame written.
    chain: Option<ChainState>,
}

impl Writer {
    /// Fills in the CRC (and MAC) of every frame of a chunk the appenders queued.
    fn seal(&mut self, bytes: &mut [u8]) {
        match self.chain.as_mut() {
            None => seal_frames(bytes, None),
            Some(ChainState { key, prev, .. }) => {
                let mut mac = |seq: u64, ts: u64, payload: &[u8]| -> [u8; MAC_LEN] {
                    let m = key.mac(prev, seq, ts, payload);
                    *prev = m;
                    m
                };
                seal_frames(bytes, Some(&mut mac));
            }
        }
    }

    /// The chain header of the segment a roll starts (and its key), chaining from the
    /// last frame written, or, when the active segment holds no records (its header is
    /// rewritten), from what preceded that segment; `rotate_to` switches keys.
    fn next_chain(
        &mut self,
        rotate_to: Option<Arc<HmacKey>>,
    ) -> (Option<ChainHeader>, Option<Arc<HmacKey>>) {
        let empty = self.count == 0;
        let Some(c) = self.chain.as_mut() else {
            return (None, None);
        };
        if empty {
            // The empty segment's header is replaced: chain from what preceded it.
            c.key = c.anchor_key.clone();
            c.prev = c.anchor_mac;
        } else {
            c.anchor_key = c.key.clone();
            c.anchor_mac = c.prev;
        }
        let header = match rotate_to {
            Some(newk) if newk.fingerprint() != c.key.fingerprint() => {
                let new_fp = newk.fingerprint();
                let seed = c.key.rotation_seed(&c.prev, &new_fp);
                let prev_key_fp = c.key.fingerprint();
                c.key = newk;
                c.prev = seed;
                ChainHeader {
                    key_fp: new_fp,
                    prev_key_fp,
                    seed,
                }
            }
            _ => ChainHeader {
                key_fp: c.key.fingerprint(),
                prev_key_fp: [0; 8],
                seed: c.prev,
            },
        };
        (Some(header), Some(c.key.clone()))
    }

    fn write_frames<S: Storage>(
        &mut self,
        inner: &Inner<S>,
        bytes: &[u8],
        last_seq: u64,
        last_ts: u64,
        count: u64,
    ) -> Result<()> {
        if let Err(e) = inner.storage.write_at(self.cur, self.offset, bytes) {
            return Err(inner.poison("write", &e));
        }
        self.crc.update(bytes);
        self.offset += bytes.len() as u64;
        self.count += count;
        self.last_seq = last_seq;
        self.last_ts = last_ts;
        self.dirty = true;
        inner.current_offset.store(self.offset, Ordering::Release);
        if let Some(s) = lock(&inner.segments).last_mut() {
            s.bytes = self.offset;
        }
        self.start_writeback(inner);
        self.zero_ahead(inner);
        Ok(())
    }

    /// Zero ahead (see [`Options::zero_ahead_bytes`](crate::Options::zero_ahead_bytes)):
    /// once less than half of `zero_ahead` bytes past the write position are known to
    /// be written, writes zeros up to `zero_ahead` past it (within the segment's
    /// preallocated size), so that the fdatasyncs to come find written blocks. On this
    /// thread, in order with the frames, so no frame is ever overwritten. Only about
    /// speed: a failure is logged once and zeroing stops.
    fn zero_ahead<S: Storage>(&mut self, inner: &Inner<S>) {
        let limit = inner.opts.segment_size;
        if self.zero_ahead == 0
            || self.zeroed >= limit
            || self.zeroed >= self.offset + self.zero_ahead / 2
            // Large groups do without: one conversion per fdatasync is spread over
            // many records, and zeros would double the bytes written (bench case c).
            || self.offset.saturating_sub(self.synced_at) >= ZERO_AHEAD_MAX_GROUP
        {
            return;
        }
        let from = self.zeroed.max(self.offset);
        let to = (self.offset + self.zero_ahead).min(limit);
        if from >= to {
            return;
        }
        if let Err(e) = inner.storage.write_zeroes(self.cur, from, to - from) {
            tracing::debug!(segment = %inner.storage.segment_name(self.cur), error = %e,
                "could not write zeros ahead; no more zeroing ahead");
            self.zero_ahead = 0;
            return;
        }
        self.zeroed = to;
    }

    /// Early writeback (see [`Options::writeback_bytes`](crate::Options::writeback_bytes)):
    /// once `writeback` bytes were written since the last sync or hint, asks the storage
    /// to start writing the whole pages among them, so that the fdatasync at the next
    /// sync or roll finds little left to write. Only a hint, on this thread: the
    /// acknowledgements still wait for this thread's own fdatasync, which reports any
    /// write error; a failed hint is logged once and hints stop.
    fn start_writeback<S: Storage>(&mut self, inner: &Inner<S>) {
        if self.writeback == 0 || self.offset.saturating_sub(self.wb_from) < self.writeback {
            return;
        }
        let end = self.offset & !(PAGE - 1);
        if let Err(e) = inner
            .storage
            .start_writeback(self.cur, self.wb_from, end - self.wb_from)
        {
            tracing::debug!(segment = %inner.storage.segment_name(self.cur), error = %e,
                "could not start early writeback; no more writeback hints");
            self.writeback = 0;
        }
        self.wb_from = end;
    }

    fn sync<S: Storage>(&mut self, inner: &Inner<S>) -> Result<()> {
        let t = Instant::now();
        if let Err(e) = inner.storage.sync(self.cur) {
            // What was written since the last good fdatasync may now be "clean" in the
            // page cache without being on disk: tell the next recovery to cut it.
            inner.persist_end(END_POISONED);
            return Err(inner.poison("fdatasync", &e));
        }
        {
            let mut g = lock(&inner.synced);
            g.0 = LogEnd {
                base: self.cur,
                offset: self.offset,
                last_seq: self.last_seq,
                flags: 0,
            };
        }
        inner.counters.record_fsync(t.elapsed().as_micros() as u64);
        self.dirty = false;
        self.synced_at = self.offset;
        self.wb_from = self.offset & !(PAGE - 1);
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Replaces the header of the active segment, which holds no records.
    fn rewrite_header<S: Storage>(
        &mut self,
        inner: &Inner<S>,
        chain: Option<ChainHeader>,
        key: Option<Arc<HmacKey>>,
    ) -> Result<()> {
        debug_assert_eq!(self.count, 0);
        let header = SegmentHeader {
            version: FORMAT_VERSION,
            flags: crate::format::FLAG_SCHEMA,
            base_seq: self.cur,
            created_us: now_us(),
            chain,
        };
        let hb = header.encode();
        if let Err(e) = inner.storage.write_at(self.cur, 0, &hb) {
            return Err(inner.poison("write segment header", &e));
        }
        if let Err(e) = inner.storage.truncate(self.cur, hb.len() as u64) {
            return Err(inner.poison("truncate", &e));
        }
        preallocate(inner, self.cur);
        self.offset = hb.len() as u64;
        self.zeroed = self.offset;
        self.crc = crc32fast::Hasher::new();
        self.crc.update(&hb);
        self.dirty = true;
        self.sync(inner)?;
        lock(&inner.synced).1 = key;
        inner.persist_end(0);
        inner.current_offset.store(self.offset, Ordering::Release);
        if let Some(s) = lock(&inner.segments).last_mut() {
            s.bytes = self.offset;
        }
        Ok(())
    }

    fn roll<S: Storage>(
        &mut self,
        inner: &Inner<S>,
        new_base: u64,
        chain: Option<ChainHeader>,
        key: Option<Arc<HmacKey>>,
    ) -> Result<()> {
        if self.count == 0 {
            // Nothing to seal (a key rotation on an empty segment): rewrite its header.
            return self.rewrite_header(inner, chain, key);
        }
        debug_assert_eq!(new_base, self.last_seq + 1);
        let footer = SegmentFooter {
            last_seq: self.last_seq,
            count: self.count,
            last_ts_us: self.last_ts,
            body_crc: self.crc.clone().finalize(),
        };
        if let Err(e) = inner
            .storage
            .write_at(self.cur, self.offset, &footer.encode())
        {
            return Err(inner.poison("write footer", &e));
        }
        self.offset += FOOTER_LEN as u64;
        // Give back the preallocated space after the footer; the same fdatasync makes
        // the footer and the new size durable.
        if let Err(e) = inner.storage.truncate(self.cur, self.offset) {
            return Err(inner.poison("truncate sealed segment", &e));
        }
        self.dirty = true;
        self.sync(inner)?;
        inner.durable_seq.store(self.last_seq, Ordering::Release);
        inner.wake_readers();
        let header = SegmentHeader {
            version: FORMAT_VERSION,
            flags: crate::format::FLAG_SCHEMA,
            base_seq: new_base,
            created_us: now_us(),
            chain,
        };
        let name = inner.storage.segment_name(new_base);
        if let Err(e) = inner.storage.create_segment(new_base) {
            return Err(inner.poison(
                "create segment",
                &io::Error::new(e.kind(), format!("{name}: {e}")),
            ));
        }
        if let Err(e) = inner.storage.write_at(new_base, 0, &header.encode()) {
            return Err(inner.poison("write segment header", &e));
        }
        preallocate(inner, new_base);
        // The header is durable before any frame goes in, so a crash can't tear it.
        if let Err(e) = inner.storage.sync(new_base) {
            inner.persist_end(END_POISONED);
            return Err(inner.poison("fdatasync", &e));
        }
        *lock(&inner.synced) = (
            LogEnd {
                base: new_base,
                offset: header.data_offset() as u64,
                last_seq: self.last_seq,
                flags: 0,
            },
            key,
        );
        // Once per segment, the recovery point follows right away.
        inner.persist_end(0);
        let sealed = SealedSegment {
            base_seq: self.cur,
            last_seq: self.last_seq,
            bytes: self.offset,
        };
        {
            let mut segs = lock(&inner.segments);
            if let Some(s) = segs.last_mut() {
                s.sealed = true;
                s.bytes = self.offset;
                s.last_seq = self.last_seq;
                s.last_ts_us = Some(self.last_ts);
            }
            segs.push(new_meta(new_base, header.data_offset() as u64));
        }
        let listeners = lock(&inner.seal_listeners).clone();
        for l in listeners {
            l(sealed);
        }
        self.cur = new_base;
        self.offset = header.data_offset() as u64;
        self.zeroed = self.offset;
        self.synced_at = self.offset;
        self.wb_from = 0;
        self.crc = crc32fast::Hasher::new();
        self.crc.update(&header.encode());
        self.count = 0;
        self.opened = Instant::now();
        self.dirty = true;
        inner.current_base.store(new_base, Ordering::Release);
        inner.current_offset.store(self.offset, Ordering::Release);
        Ok(())
    }
}
