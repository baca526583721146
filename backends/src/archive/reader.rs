//! Reading records back from the archive, alone or followed by the local WAL.

use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use walspool_wal::format::{
    decode_frame_with, split_schema, Decoded, SegmentHeader, HEADER_MAX_LEN,
};
use walspool_wal::{Entry, ReadStream, Schema, Storage, Wal};

use super::store::get_range;
use super::{ArchiveError, ArchiveStore, ArchivedSegment};

/// Bytes fetched per ranged GET.
const FETCH_CHUNK: u64 = 4 << 20;

struct Cursor {
    seg: ArchivedSegment,
    buf: Vec<u8>,
    pos: usize,
    /// Object offset of `buf[0]`.
    buf_at: u64,
    /// Frames carry HMAC chain MACs.
    chained: bool,
    has_schema: bool,
}

/// Reads records in sequence order from a WAL's archived segments alone, from any
/// sequence number on. Segments are fetched in ranged GETs of 4 MiB, each frame is
/// CRC-checked. Runs on any executor.
pub struct ArchiveReader {
    store: ArchiveStore,
    wal_id: String,
    segments: Vec<ArchivedSegment>,
    next: u64,
    cur: Option<Cursor>,
}

impl std::fmt::Debug for ArchiveReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveReader")
            .field("wal_id", &self.wal_id)
            .field("next", &self.next)
            .field("segments", &self.segments.len())
            .finish()
    }
}

impl ArchiveReader {
    /// Lists the WAL's archived segments and positions the reader at `from`.
    pub async fn open(store: &ArchiveStore, wal_id: &str, from: u64) -> Result<Self, ArchiveError> {
        let segments = store.list_segments(wal_id).await?;
        Ok(ArchiveReader {
            store: store.clone(),
            wal_id: wal_id.to_string(),
            segments,
            next: from.max(1),
            cur: None,
        })
    }

    /// The sequence number the reader yields next.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// The archived segments it reads (as listed when it was opened).
    pub fn segments(&self) -> &[ArchivedSegment] {
        &self.segments
    }

    /// The next record, raw (its postcard bytes, without the schema version); `Ok(None)`
    /// past the last archived record. An [`ArchiveError::Gap`] is not fatal: the reader
    /// continues after it.
    pub async fn next_raw(&mut self) -> Result<Option<Entry<Vec<u8>>>, ArchiveError> {
        Ok(self.next_versioned().await?.map(|(_, e)| e))
    }

    /// The next record, raw, with the schema version it was written with (1 for
    /// segments of format versions 1 and 2).
    pub async fn next_versioned(&mut self) -> Result<Option<(u8, Entry<Vec<u8>>)>, ArchiveError> {
        loop {
            if self.cur.is_none() {
                let Some(seg) = self
                    .segments
                    .iter()
                    .find(|s| s.last_seq >= self.next)
                    .cloned()
                else {
                    return Ok(None);
                };
                if seg.first_seq > self.next {
                    let e = ArchiveError::Gap {
                        expected: self.next,
                        resumed_at: seg.first_seq,
                    };
                    self.next = seg.first_seq;
                    return Err(e);
                }
                let head = self
                    .fetch(&seg, 0..(HEADER_MAX_LEN as u64).min(seg.size))
                    .await?;
                let name = seg.key.to_string();
                let h = SegmentHeader::decode(&head, &name)?;
                if h.base_seq != seg.first_seq {
                    return Err(ArchiveError::Corrupt {
                        segment: name,
                        offset: 0,
                        reason: format!(
                            "header base {} but the key says {}",
                            h.base_seq, seg.first_seq
                        ),
                    });
                }
                self.cur = Some(Cursor {
                    seg,
                    buf: Vec::new(),
                    pos: 0,
                    buf_at: h.data_offset() as u64,
                    chained: h.is_chained(),
                    has_schema: h.has_schema(),
                });
            }
            let cur = self.cur.as_mut().expect("cursor set above");
            let at = cur.buf_at + cur.pos as u64;
            let corrupt = |reason: String| ArchiveError::Corrupt {
                segment: cur.seg.key.to_string(),
                offset: at,
                reason,
            };
            match decode_frame_with(&cur.buf[cur.pos..], cur.chained) {
                Decoded::Frame(f, n) => {
                    if f.seq < self.next {
                        cur.pos += n;
                        continue;
                    }
                    if f.seq != self.next {
                        return Err(corrupt(format!(
                            "expected sequence {} but found {}",
                            self.next, f.seq
                        )));
                    }
                    // The record's bytes, without the schema version byte of format 3.
                    let Some((version, bytes)) = split_schema(cur.has_schema, f.payload) else {
                        return Err(corrupt(format!(
                            "record {} has no schema version byte",
                            f.seq
                        )));
                    };
                    let e = Entry {
                        seq: f.seq,
                        ts_us: f.ts_us,
                        record: bytes.to_vec(),
                    };
                    cur.pos += n;
                    self.next += 1;
                    return Ok(Some((version, e)));
                }
                Decoded::Footer(f) => {
                    if f.last_seq != cur.seg.last_seq || self.next != f.last_seq + 1 {
                        return Err(corrupt(format!(
                            "footer says last sequence {} (key says {}), reader is at {}",
                            f.last_seq, cur.seg.last_seq, self.next
                        )));
                    }
                    self.cur = None;
                }
                Decoded::Incomplete { needed } => {
                    let end = cur.buf_at + cur.buf.len() as u64;
                    if end >= cur.seg.size {
                        return Err(corrupt(format!("object ends before record {}", self.next)));
                    }
                    let want = FETCH_CHUNK.max(needed as u64);
                    let range = end..(end + want).min(cur.seg.size);
                    let seg = cur.seg.clone();
                    let more = self.fetch(&seg, range).await?;
                    let cur = self.cur.as_mut().expect("cursor set above");
                    cur.buf.drain(..cur.pos);
                    cur.buf_at += cur.pos as u64;
                    cur.pos = 0;
                    cur.buf.extend_from_slice(&more);
                }
                Decoded::Invalid(reason) => return Err(corrupt(reason.to_string())),
            }
        }
    }

    /// The next record, decoded as `T` (a record of another schema version than 1 is
    /// decoded as if it were; use [`next_as`](Self::next_as) for a type that changed);
    /// `Ok(None)` past the last archived record.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<Entry<T>>, ArchiveError> {
        match self.next_raw().await? {
            None => Ok(None),
            Some(e) => Ok(Some(decode(e)?)),
        }
    }

    /// The next record, decoded with `schema` (records of older versions go through its
    /// upgrade, like the WAL's own readers; `Options::record_schema` gives a WAL's).
    pub async fn next_as<T: DeserializeOwned>(
        &mut self,
        schema: &Schema,
    ) -> Result<Option<Entry<T>>, ArchiveError> {
        match self.next_versioned().await? {
            None => Ok(None),
            Some((version, e)) => Ok(Some(decode_with(schema, version, e)?)),
        }
    }

    async fn fetch(
        &self,
        seg: &ArchivedSegment,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<u8>, ArchiveError> {
        let os = self.store.object_store().clone();
        let key = seg.key.clone();
        self.store
            .spawn(async move { get_range(&os, &key, range).await })
            .await
    }
}

fn decode_with<T: DeserializeOwned>(
    schema: &Schema,
    version: u8,
    e: Entry<Vec<u8>>,
) -> Result<Entry<T>, ArchiveError> {
    let record = schema.decode(e.seq, version, &e.record)?;
    Ok(Entry {
        seq: e.seq,
        ts_us: e.ts_us,
        record,
    })
}

fn decode<T: DeserializeOwned>(e: Entry<Vec<u8>>) -> Result<Entry<T>, ArchiveError> {
    let record = postcard::from_bytes(&e.record).map_err(|err| {
        ArchiveError::Wal(walspool_wal::Error::Decode {
            seq: e.seq,
            context: String::new(),
            source: Box::new(err),
        })
    })?;
    Ok(Entry {
        seq: e.seq,
        ts_us: e.ts_us,
        record,
    })
}

enum Phase<S: Storage, T> {
    Archive(Option<ArchiveReader>),
    Local(ReadStream<S, T>),
}

struct ReplayState<S: Storage, T> {
    wal: Wal<S>,
    store: ArchiveStore,
    next: u64,
    phase: Phase<S, T>,
    /// The archive ended at this sequence number, below the local WAL's first record.
    archive_ended_at: Option<u64>,
}

impl<S: Storage, T: DeserializeOwned + Send + 'static> ReplayState<S, T> {
    async fn step(&mut self) -> Option<Result<Entry<T>, ArchiveError>> {
        loop {
            match &mut self.phase {
                Phase::Archive(reader) => {
                    let local_first = self
                        .wal
                        .first_seq_on_disk()
                        .unwrap_or_else(|| self.wal.durable_seq() + 1);
                    if self.next >= local_first {
                        self.phase = Phase::Local(self.wal.read_from(self.next));
                        continue;
                    }
                    if reader.is_none() {
                        match ArchiveReader::open(&self.store, self.wal.id(), self.next).await {
                            Ok(r) => *reader = Some(r),
                            Err(e) => return Some(Err(e)),
                        }
                    }
                    let r = reader.as_mut().expect("reader set above");
                    match r.next_versioned().await {
                        Ok(Some((version, e))) => {
                            self.next = e.seq + 1;
                            // Decoded as the WAL's readers decode: through its schema.
                            let schema = self.wal.options().record_schema();
                            return Some(decode_with(schema, version, e));
                        }
                        Ok(None) => {
                            self.archive_ended_at = Some(self.next);
                            self.phase = Phase::Local(self.wal.read_from(self.next));
                        }
                        Err(e) => {
                            self.next = r.next_seq();
                            return Some(Err(e));
                        }
                    }
                }
                Phase::Local(rs) => match rs.next().await {
                    None => return None,
                    Some(Ok(e)) => {
                        self.next = e.seq + 1;
                        return Some(Ok(e));
                    }
                    Some(Err(walspool_wal::Error::Gap {
                        expected,
                        resumed_at,
                    })) => {
                        if self.archive_ended_at.take() == Some(expected) {
                            // Neither the archive nor the disk has these records.
                            self.next = resumed_at;
                            return Some(Err(ArchiveError::Gap {
                                expected,
                                resumed_at,
                            }));
                        }
                        // Local segments went (archived, then deleted) under the reader:
                        // read them from the archive.
                        self.next = expected;
                        self.phase = Phase::Archive(None);
                    }
                    Some(Err(e)) => return Some(Err(e.into())),
                },
            }
        }
    }
}

/// A stream of records in sequence order across archived and local segments, from
/// [`replay`]. Items are `Result`s; [`ArchiveError::Gap`] is not fatal.
pub struct Replay<T> {
    inner: BoxStream<'static, Result<Entry<T>, ArchiveError>>,
    _t: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Replay<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay").finish_non_exhaustive()
    }
}

impl<T> Stream for Replay<T> {
    type Item = Result<Entry<T>, ArchiveError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// Streams `wal`'s records from `from` on, in sequence order: from the archive while
/// they are no longer (or not yet known to be) on local disk, then from the local
/// segments, following the tail live like [`Wal::read_from`]. `from` may be a sequence
/// number that is only in the archive. If local segments are deleted while the stream
/// reads them, it goes back to the archive for them.
pub fn replay<S, T>(wal: &Wal<S>, store: &ArchiveStore, from: u64) -> Replay<T>
where
    S: Storage,
    T: DeserializeOwned + Send + 'static,
{
    let state = ReplayState {
        wal: wal.clone(),
        store: store.clone(),
        next: from.max(1),
        phase: Phase::Archive(None),
        archive_ended_at: None,
    };
    let inner = futures::stream::unfold(state, |mut st| async move {
        let item = st.step().await?;
        Some((item, st))
    })
    .boxed();
    Replay {
        inner,
        _t: PhantomData,
    }
}
