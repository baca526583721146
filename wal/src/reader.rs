//! Readers: a `futures::Stream` of records that follows the tail live.

use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use serde::de::DeserializeOwned;

use crate::cursor::FrameCursor;
use crate::error::{Error, Result};
use crate::format::{decode_frame_with, split_schema, Decoded, SegmentHeader, HEADER_MAX_LEN};
use crate::options::RecoveryMode;
use crate::schema::Schema;
use crate::storage::{Storage, StorageExt};
use crate::wal::{lock, Inner, Wal};

/// A record read back, with its sequence number and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<T> {
    /// Global, monotonic sequence number.
    pub seq: u64,
    /// Append time, µs since the Unix epoch.
    pub ts_us: u64,
    /// The record.
    pub record: T,
}

/// Reads raw frames in sequence order from a WAL's segments, up to the durable point.
pub(crate) struct RawReader<S: Storage> {
    inner: Arc<Inner<S>>,
    pub next: u64,
    seg: Option<u64>,
    buf: Vec<u8>,
    pos: usize,
    buf_at: u64,
    chained: bool,
    /// Whether the current segment's payloads start with a schema version.
    has_schema: bool,
    refreshed_at: Option<(u64, u64)>,
}

/// A record as stored: sequence number, timestamp, schema version, encoded bytes.
pub(crate) type RawFrameOut = (u64, u64, u8, Vec<u8>);

const READ_CHUNK: usize = 256 << 10;

impl<S: Storage> RawReader<S> {
    pub fn new(inner: Arc<Inner<S>>, from: u64) -> Self {
        RawReader {
            inner,
            next: from.max(1),
            seg: None,
            buf: Vec::new(),
            pos: 0,
            buf_at: 0,
            chained: false,
            has_schema: false,
            refreshed_at: None,
        }
    }

    /// The next durable frame, `Ok(None)` when the reader is at the durable end.
    pub fn next_frame(&mut self) -> Result<Option<RawFrameOut>> {
        loop {
            if self.next > self.inner.durable_seq.load(Ordering::Acquire) {
                return Ok(None);
            }
            let seg = match self.seg {
                Some(s) => s,
                None => {
                    let (base, first) = {
                        let segs = lock(&self.inner.segments);
                        let first = segs.first().map_or(self.next, |s| s.base);
                        let base = segs
                            .iter()
                            .rev()
                            .find(|s| s.base <= self.next)
                            .map(|s| s.base);
                        (base, first)
                    };
                    let Some(base) = base else {
                        let gap = Error::Gap {
                            expected: self.next,
                            resumed_at: first,
                        };
                        self.next = first;
                        return Err(gap);
                    };
                    let name = self.inner.storage.segment_name(base);
                    let hdr = match self.inner.storage.read_vec(base, 0, HEADER_MAX_LEN) {
                        Ok(h) => h,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(Error::io("read", name, e)),
                    };
                    let h = SegmentHeader::decode(&hdr, &name)?;
                    self.chained = h.is_chained();
                    self.has_schema = h.has_schema();
                    self.seg = Some(base);
                    self.buf.clear();
                    self.pos = 0;
                    self.buf_at = h.data_offset() as u64;
                    base
                }
            };
            match decode_frame_with(&self.buf[self.pos..], self.chained) {
                Decoded::Frame(f, n) => {
                    let at = self.buf_at + self.pos as u64;
                    self.pos += n;
                    if f.seq < self.next {
                        continue;
                    }
                    if f.seq != self.next {
                        if self.inner.opts.recovery == RecoveryMode::Lenient && f.seq > self.next {
                            // Records skipped over damage (lenient recovery): count them.
                            self.count_skipped(f.seq - self.next);
                            self.next = f.seq;
                        } else {
                            let e = Error::Corrupt {
                                segment: self.inner.storage.segment_name(seg),
                                offset: at,
                                reason: format!(
                                    "expected sequence {} but found {}",
                                    self.next, f.seq
                                ),
                            };
                            self.skip_segment_or(e)?;
                            continue;
                        }
                    }
                    let Some((version, bytes)) = split_schema(self.has_schema, f.payload) else {
                        let e = Error::Corrupt {
                            segment: self.inner.storage.segment_name(seg),
                            offset: at,
                            reason: format!("record {} has no schema version byte", f.seq),
                        };
                        self.skip_segment_or(e)?;
                        continue;
                    };
                    self.next += 1;
                    return Ok(Some((f.seq, f.ts_us, version, bytes.to_vec())));
                }
                Decoded::Footer(_) => {
                    let later = lock(&self.inner.segments)
                        .iter()
                        .find(|s| s.base > seg)
                        .map(|s| s.base);
                    match later {
                        None => {
                            self.seg = None;
                            return Ok(None);
                        }
                        Some(b) if b == self.next => self.seg = None,
                        Some(b) if b > self.next => {
                            // A segment is missing from the middle of the log.
                            let e = Error::Corrupt {
                                segment: self.inner.storage.segment_name(b),
                                offset: 0,
                                reason: format!(
                                    "records {}..{} are missing: the previous segment ends at {} (a segment was removed?)",
                                    self.next,
                                    b - 1,
                                    self.next - 1
                                ),
                            };
                            self.skip_segment_or(e)?;
                        }
                        Some(_) => {
                            // Segments overlap: the next one starts before this one ended.
                            let e = Error::Corrupt {
                                segment: self.inner.storage.segment_name(seg),
                                offset: self.buf_at + self.pos as u64,
                                reason: "the next segment starts before this one ends".into(),
                            };
                            self.skip_segment_or(e)?;
                        }
                    }
                    continue;
                }
                Decoded::Incomplete { needed } => {
                    self.buf.drain(..self.pos);
                    self.buf_at += self.pos as u64;
                    self.pos = 0;
                    let mut want = READ_CHUNK.max(needed);
                    let from = self.buf_at + self.buf.len() as u64;
                    // In the active segment, read only what the writer has written:
                    // past it lies preallocated space (zeros) that later becomes frames.
                    if self.inner.current_base.load(Ordering::Acquire) == seg {
                        let written = self.inner.current_offset.load(Ordering::Acquire);
                        want = want.min(written.saturating_sub(from) as usize);
                    }
                    let name = || self.inner.storage.segment_name(seg);
                    let more = match self.inner.storage.read_vec(seg, from, want) {
                        Ok(m) => m,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            self.seg = None;
                            continue;
                        }
                        Err(e) => return Err(Error::io("read", name(), e)),
                    };
                    let at = self.buf_at + self.buf.len() as u64;
                    if more.is_empty() && self.refreshed_at != Some((seg, at)) {
                        // Raced with a roll's update of the write position: look again.
                        self.refreshed_at = Some((seg, at));
                        continue;
                    }
                    if more.is_empty() {
                        // A durable record must be on storage in full.
                        let e = Error::Corrupt {
                            segment: name(),
                            offset: self.buf_at,
                            reason: format!("segment ends before record {}", self.next),
                        };
                        self.skip_segment_or(e)?;
                        continue;
                    }
                    self.buf.extend_from_slice(&more);
                }
                Decoded::Invalid(reason) => {
                    let at = self.buf_at + self.pos as u64;
                    if self.refreshed_at != Some((seg, at)) {
                        // The buffer may hold bytes read before the writer wrote them
                        // (preallocated zeros); read them again before judging.
                        self.refreshed_at = Some((seg, at));
                        self.buf.truncate(self.pos);
                        continue;
                    }
                    let e = Error::Corrupt {
                        segment: self.inner.storage.segment_name(seg),
                        offset: at,
                        reason: reason.to_string(),
                    };
                    if self.inner.opts.recovery == RecoveryMode::Lenient {
                        // Resume at the next intact record of this segment.
                        let mut cur = FrameCursor::new(&self.inner.storage, seg, at, self.chained);
                        let found = cur.resync(at, self.next.saturating_sub(1)).map_err(|e| {
                            Error::io("read", self.inner.storage.segment_name(seg), e)
                        })?;
                        if let Some((o, s)) = found {
                            tracing::warn!(error = %e, resumed_at = s, "lenient read: skipping a damaged record");
                            self.count_skipped(s - self.next);
                            self.next = s;
                            self.buf.clear();
                            self.buf_at = o;
                            self.pos = 0;
                            continue;
                        }
                    }
                    self.skip_segment_or(e)?;
                }
            }
        }
    }

    fn count_skipped(&self, n: u64) {
        self.inner
            .counters
            .corrupt_skipped
            .fetch_add(n, Ordering::Relaxed);
    }

    /// In lenient mode, skips to the next segment and counts; in strict mode, fails.
    fn skip_segment_or(&mut self, e: Error) -> Result<()> {
        if self.inner.opts.recovery == RecoveryMode::Strict {
            return Err(e);
        }
        let cur = self.seg.unwrap_or(0);
        let next_base = lock(&self.inner.segments)
            .iter()
            .find(|s| s.base > cur)
            .map(|s| s.base);
        let Some(nb) = next_base else {
            return Err(e);
        };
        let skipped = nb.saturating_sub(self.next);
        tracing::warn!(error = %e, skipped, "lenient recovery: skipping the rest of a corrupt segment");
        self.inner
            .counters
            .corrupt_skipped
            .fetch_add(skipped, Ordering::Relaxed);
        self.next = nb;
        self.seg = None;
        Ok(())
    }
}

/// A stream of records from a sequence number on. It follows the tail: when it has
/// read everything durable it waits (woken by the writer, no polling) for more, and
/// ends only when the WAL is closed or at the end of a bounded range.
///
/// Items are `Result`s. [`Error::Gap`] is not fatal: records were dropped by retention
/// bounds before this reader got to them and the stream continues after the gap.
/// [`Error::Decode`] (an intact record of another type) and [`Error::Schema`] (a record
/// of a schema version the type cannot read) skip that record, which stays on disk:
/// [`Consumer::replay`](crate::Consumer::replay) stops on them. Any other
/// error (corruption, I/O) is the stream's last item; open a new reader to retry.
/// Reads are short `pread`s of data that is almost always in the page cache; they run
/// on the task polling the stream.
pub struct ReadStream<S: Storage, T> {
    raw: RawReader<S>,
    until: Option<u64>,
    done: bool,
    _t: PhantomData<fn() -> T>,
}

impl<S: Storage, T> std::fmt::Debug for ReadStream<S, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadStream")
            .field("next", &self.raw.next)
            .finish()
    }
}

impl<S: Storage, T> ReadStream<S, T> {
    /// Sequence number the stream will yield next.
    pub fn next_seq(&self) -> u64 {
        self.raw.next
    }

    /// Takes the next record that is already durable without waiting, as its encoded
    /// bytes (without the schema version); `Ok(None)` at the durable end.
    pub fn try_next_raw(&mut self) -> Result<Option<Entry<Vec<u8>>>> {
        Ok(self.try_next_versioned()?.map(|(_, e)| e))
    }

    /// Like [`try_next_raw`](Self::try_next_raw), with the record's schema version.
    pub fn try_next_versioned(&mut self) -> Result<Option<(u8, Entry<Vec<u8>>)>> {
        if self.until.is_some_and(|u| self.raw.next > u) {
            return Ok(None);
        }
        Ok(self
            .raw
            .next_frame()?
            .map(|(seq, ts_us, version, record)| (version, Entry { seq, ts_us, record })))
    }
}

impl<S: Storage, T: DeserializeOwned> ReadStream<S, T> {
    /// The next durable record without waiting; `Ok(None)` at the durable end.
    pub fn try_next(&mut self) -> Result<Option<Entry<T>>> {
        match self.try_next_versioned()? {
            None => Ok(None),
            Some((v, e)) => Ok(Some(decode_entry(&self.raw.inner.opts.schema, v, e)?)),
        }
    }
}

/// Decodes a record through the WAL's schema (upgrading older versions).
pub(crate) fn decode_entry<T: DeserializeOwned>(
    schema: &Schema,
    version: u8,
    e: Entry<Vec<u8>>,
) -> Result<Entry<T>> {
    let record = schema.decode(e.seq, version, &e.record)?;
    Ok(Entry {
        seq: e.seq,
        ts_us: e.ts_us,
        record,
    })
}

impl<S: Storage, T: DeserializeOwned> Stream for ReadStream<S, T> {
    type Item = Result<Entry<T>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        for attempt in 0..2 {
            match this.try_next_versioned() {
                Ok(Some((v, e))) => {
                    return Poll::Ready(Some(decode_entry(&this.raw.inner.opts.schema, v, e)))
                }
                Err(e) => {
                    // The reader cannot get past corruption or an I/O error: end the
                    // stream rather than yield the same error forever (a consumer that
                    // logs and skips errors would spin). A gap is not fatal.
                    if !matches!(e, Error::Gap { .. }) {
                        this.done = true;
                    }
                    return Poll::Ready(Some(Err(e)));
                }
                Ok(None) => {}
            }
            let finished = this.until.is_some_and(|u| this.raw.next > u)
                || this.raw.inner.writer_done.load(Ordering::Acquire);
            if finished {
                this.done = true;
                return Poll::Ready(None);
            }
            if attempt == 0 {
                // Register, then look again so an append in between is not missed.
                lock(&this.raw.inner.read_wakers).push(cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

impl<S: Storage> Wal<S> {
    /// A live stream of records from `seq` on (use 1, or `first_seq_on_disk`, for all).
    pub fn read_from<T: DeserializeOwned>(&self, seq: u64) -> ReadStream<S, T> {
        ReadStream {
            raw: RawReader::new(self.inner.clone(), seq),
            until: None,
            done: false,
            _t: PhantomData,
        }
    }

    /// A stream of the records in `from..=to` that ends after `to` (waiting for records
    /// not yet durable).
    pub fn read_range<T: DeserializeOwned>(&self, from: u64, to: u64) -> ReadStream<S, T> {
        ReadStream {
            raw: RawReader::new(self.inner.clone(), from),
            until: Some(to),
            done: false,
            _t: PhantomData,
        }
    }
}
