//! `Memory`: an in-process [`Storage`] with a crash model and fault injection.
//!
//! It keeps, per segment, the live bytes and the bytes that were durable at the last
//! `sync`. [`Memory::crash`] returns a new storage holding only what a power loss would
//! leave: the synced bytes, plus optionally a prefix of the unsynced ones, which can be
//! torn (garbage). Faults ([`Memory::fail_nth_write`], [`Memory::fail_nth_sync`],
//! [`Memory::set_capacity`]) make calls fail the way a disk does. Counters
//! ([`Memory::counters`]) let tests see how many writes, syncs and bytes read happened.
//!
//! # A failed sync loses the unsynced bytes for good
//!
//! `Memory` models what Linux does when `fdatasync` fails (the "fsyncgate" that
//! PostgreSQL met in 2018): the kernel reports the error once and marks the dirty pages
//! clean. The data stays readable from the page cache, but it is never written back: a
//! later `fsync` "succeeds" without writing it, and a power loss loses it. So here, when
//! a `sync` of a segment fails, every byte of that segment not yet durable (written
//! since the last successful sync) becomes *lost*:
//!
//! * it still reads back, from [`read_at`](Storage::read_at), as written;
//! * a later successful `sync` does not make it durable: the segment's durable length
//!   grows past it (the file size is metadata, and is written) but the lost bytes are
//!   durable as what was durable there before, or zeros where nothing was;
//! * [`Memory::crash`] drops it: without a later sync the segment ends where the lost
//!   bytes begin (no [`Tear`] keeps them or anything after them); after one, they read
//!   as zeros (or the old durable bytes).
//!
//! Writing the same range again ([`write_at`](Storage::write_at)) makes those bytes
//! dirty again, so the next successful sync makes them durable: rewriting is the only
//! way to recover them. The model is per byte (Linux's is per page, so more survives
//! there; nothing the model keeps can be lost on Linux).

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::storage::{SegmentId, SegmentInfo, Storage};

/// I/O counters of a [`Memory`] storage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryCounters {
    /// `write_at` calls that succeeded.
    pub writes: u64,
    /// `sync` calls that succeeded.
    pub syncs: u64,
    /// Bytes returned by `read_at`.
    pub bytes_read: u64,
    /// Bytes accepted by `write_at`.
    pub bytes_written: u64,
}

/// What a simulated crash keeps of the bytes written after the last sync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Tear {
    /// Nothing unsynced survives.
    #[default]
    None,
    /// The first `n` unsynced bytes of every segment survive intact.
    Keep(u64),
    /// The first `n` unsynced bytes of every segment survive, but the last 8 of them are
    /// garbage (a torn write).
    Garbage(u64),
}

#[derive(Debug, Default, Clone)]
struct Seg {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Byte ranges `[start, end)`, sorted and disjoint, that were dirty when a `sync`
    /// failed: readable in `live`, never written back unless written again.
    lost: Vec<(usize, usize)>,
}

impl Seg {
    fn new(bytes: Vec<u8>) -> Seg {
        Seg {
            live: bytes.clone(),
            durable: bytes,
            lost: Vec::new(),
        }
    }

    /// A sync failed: every byte not durable as it reads now is lost.
    fn sync_failed(&mut self) {
        let mut i = 0;
        while i < self.live.len() {
            let dirty = |i: usize| self.durable.get(i) != Some(&self.live[i]);
            if !dirty(i) {
                i += 1;
                continue;
            }
            let start = i;
            while i < self.live.len() && dirty(i) {
                i += 1;
            }
            self.add_lost(start, i);
        }
    }

    fn add_lost(&mut self, start: usize, end: usize) {
        let (mut start, mut end) = (start, end);
        let mut out = Vec::with_capacity(self.lost.len() + 1);
        for &(a, b) in &self.lost {
            if b < start || a > end {
                out.push((a, b));
            } else {
                start = start.min(a);
                end = end.max(b);
            }
        }
        out.push((start, end));
        out.sort_unstable();
        self.lost = out;
    }

    /// Bytes written again are dirty again: no longer lost.
    fn rewritten(&mut self, start: usize, end: usize) {
        let mut out = Vec::with_capacity(self.lost.len() + 1);
        for &(a, b) in &self.lost {
            if b <= start || a >= end {
                out.push((a, b));
                continue;
            }
            if a < start {
                out.push((a, start));
            }
            if b > end {
                out.push((end, b));
            }
        }
        self.lost = out;
    }

    fn truncated(&mut self, len: usize) {
        self.lost.retain(|&(a, _)| a < len);
        if let Some(last) = self.lost.last_mut() {
            last.1 = last.1.min(len);
        }
    }

    /// A successful sync: the live bytes become durable, except the lost ones, which
    /// keep what was durable there (zeros past the old durable end).
    fn synced(&mut self) {
        let mut durable = self.live.clone();
        for &(a, b) in &self.lost {
            for (i, byte) in durable
                .iter_mut()
                .enumerate()
                .take(b.min(self.live.len()))
                .skip(a)
            {
                *byte = self.durable.get(i).copied().unwrap_or(0);
            }
        }
        self.durable = durable;
    }

    /// The first lost byte at or after `pos`.
    fn first_lost_from(&self, pos: usize) -> Option<usize> {
        self.lost
            .iter()
            .find(|&&(_, b)| b > pos)
            .map(|&(a, _)| a.max(pos))
    }
}

#[derive(Debug, Default)]
struct Inner {
    segs: BTreeMap<SegmentId, Seg>,
    meta: BTreeMap<String, Vec<u8>>,
    published: BTreeMap<String, Vec<u8>>,
    counters: MemoryCounters,
    write_calls: u64,
    sync_calls: u64,
    fail_write_at: Option<u64>,
    panic_write_at: Option<u64>,
    fail_sync_at: Option<u64>,
    fail_all_syncs: bool,
    capacity: Option<u64>,
    sync_delay: Option<std::time::Duration>,
}

/// In-memory storage for tests and ephemeral WALs. Cloning shares the same storage.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    inner: Arc<Mutex<Inner>>,
}

impl Memory {
    /// An empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Simulates a power loss: returns a new storage with what survives, per `tear`.
    /// The old handle (and any WAL still running on it) is unaffected and no longer
    /// shares state with the returned one.
    pub fn crash(&self, tear: Tear) -> Memory {
        let g = self.lock();
        let mut segs = BTreeMap::new();
        for (id, s) in &g.segs {
            let mut kept = s.durable.clone();
            let synced = kept.len().min(s.live.len());
            // Bytes lost to a failed sync never reach the disk: the surviving prefix of
            // the unsynced bytes ends before the first of them.
            let unsynced_end = s.first_lost_from(synced).unwrap_or(s.live.len());
            let unsynced = &s.live[synced..unsynced_end];
            match tear {
                Tear::None => {}
                Tear::Keep(n) => {
                    let n = (n as usize).min(unsynced.len());
                    kept.truncate(synced);
                    kept.extend_from_slice(&unsynced[..n]);
                }
                Tear::Garbage(n) => {
                    let n = (n as usize).min(unsynced.len());
                    kept.truncate(synced);
                    kept.extend_from_slice(&unsynced[..n]);
                    let from = kept.len().saturating_sub(8).max(synced);
                    for (i, b) in kept[from..].iter_mut().enumerate() {
                        *b = b.wrapping_mul(31).wrapping_add(0x5b + i as u8);
                    }
                }
            }
            segs.insert(*id, Seg::new(kept));
        }
        Memory {
            inner: Arc::new(Mutex::new(Inner {
                segs,
                meta: g.meta.clone(),
                ..Inner::default()
            })),
        }
    }

    /// The `n`th `write_at` call from now (1 = the next) fails with an I/O error.
    pub fn fail_nth_write(&self, n: u64) {
        let mut g = self.lock();
        g.fail_write_at = Some(g.write_calls + n);
    }

    /// The `n`th `write_at` call from now panics: a buggy backend, to test that the WAL
    /// neither hangs nor acknowledges anything after its writer thread dies.
    pub fn panic_nth_write(&self, n: u64) {
        let mut g = self.lock();
        g.panic_write_at = Some(g.write_calls + n);
    }

    /// The `n`th `sync` call from now (1 = the next) fails with an I/O error.
    pub fn fail_nth_sync(&self, n: u64) {
        let mut g = self.lock();
        g.fail_sync_at = Some(g.sync_calls + n);
    }

    /// Every `sync` fails while `on` is true.
    pub fn fail_all_syncs(&self, on: bool) {
        self.lock().fail_all_syncs = on;
    }

    /// Limits the total bytes of all segments; a write beyond it fails with
    /// `StorageFull` ("no space"). `None` removes the limit.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.lock().capacity = bytes;
    }

    /// Makes every `sync` take this long, like a real disk's fdatasync (so that group
    /// commit can be observed).
    pub fn set_sync_delay(&self, delay: Option<std::time::Duration>) {
        self.lock().sync_delay = delay;
    }

    /// I/O counters so far.
    pub fn counters(&self) -> MemoryCounters {
        self.lock().counters
    }

    /// Resets the I/O counters.
    pub fn reset_counters(&self) {
        self.lock().counters = MemoryCounters::default();
    }

    /// A copy of a segment's live bytes (for tests that damage or inspect them).
    pub fn segment_bytes(&self, id: SegmentId) -> Option<Vec<u8>> {
        self.lock().segs.get(&id).map(|s| s.live.clone())
    }

    /// Replaces a segment's bytes, live and durable (for tests that damage segments).
    pub fn set_segment_bytes(&self, id: SegmentId, bytes: Vec<u8>) {
        self.lock().segs.insert(id, Seg::new(bytes));
    }

    /// A published document (the stats file), if any.
    pub fn published(&self, name: &str) -> Option<Vec<u8>> {
        self.lock().published.get(name).cloned()
    }
}

fn not_found(id: SegmentId) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("segment {id} does not exist"),
    )
}

impl Storage for Memory {
    fn list_segments(&self) -> io::Result<Vec<SegmentInfo>> {
        Ok(self
            .lock()
            .segs
            .iter()
            .map(|(id, s)| SegmentInfo {
                id: *id,
                len: s.live.len() as u64,
            })
            .collect())
    }

    fn create_segment(&self, id: SegmentId) -> io::Result<()> {
        let mut g = self.lock();
        if g.segs.contains_key(&id) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("segment {id} exists"),
            ));
        }
        g.segs.insert(id, Seg::default());
        Ok(())
    }

    fn write_at(&self, id: SegmentId, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut g = self.lock();
        g.write_calls += 1;
        if g.panic_write_at == Some(g.write_calls) {
            g.panic_write_at = None;
            drop(g);
            panic!("injected panic in Memory::write_at");
        }
        if g.fail_write_at == Some(g.write_calls) {
            g.fail_write_at = None;
            return Err(io::Error::other("injected write failure (EIO)"));
        }
        let end = offset as usize + data.len();
        if let Some(cap) = g.capacity {
            let cur = g.segs.get(&id).map_or(0, |s| s.live.len());
            let total: u64 = g.segs.values().map(|s| s.live.len() as u64).sum();
            let growth = end.saturating_sub(cur) as u64;
            if total + growth > cap {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "no space left on device (injected)",
                ));
            }
        }
        let seg = g.segs.get_mut(&id).ok_or_else(|| not_found(id))?;
        if seg.live.len() < end {
            seg.live.resize(end, 0);
        }
        seg.live[offset as usize..end].copy_from_slice(data);
        seg.rewritten(offset as usize, end);
        g.counters.writes += 1;
        g.counters.bytes_written += data.len() as u64;
        Ok(())
    }

    fn sync(&self, id: SegmentId) -> io::Result<()> {
        let delay = self.lock().sync_delay;
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        let mut g = self.lock();
        g.sync_calls += 1;
        if g.fail_all_syncs || g.fail_sync_at == Some(g.sync_calls) {
            g.fail_sync_at = None;
            // Like Linux: the dirty bytes are marked clean without being written.
            if let Some(seg) = g.segs.get_mut(&id) {
                seg.sync_failed();
            }
            return Err(io::Error::other("injected fsync failure (EIO)"));
        }
        let seg = g.segs.get_mut(&id).ok_or_else(|| not_found(id))?;
        seg.synced();
        g.counters.syncs += 1;
        Ok(())
    }

    fn read_at(&self, id: SegmentId, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut g = self.lock();
        let seg = g.segs.get(&id).ok_or_else(|| not_found(id))?;
        let start = (offset as usize).min(seg.live.len());
        let n = buf.len().min(seg.live.len() - start);
        buf[..n].copy_from_slice(&seg.live[start..start + n]);
        g.counters.bytes_read += n as u64;
        Ok(n)
    }

    fn truncate(&self, id: SegmentId, len: u64) -> io::Result<()> {
        let mut g = self.lock();
        let seg = g.segs.get_mut(&id).ok_or_else(|| not_found(id))?;
        seg.live.truncate(len as usize);
        seg.durable.truncate(len as usize);
        seg.truncated(len as usize);
        Ok(())
    }

    fn remove_segment(&self, id: SegmentId) -> io::Result<()> {
        self.lock()
            .segs
            .remove(&id)
            .map(|_| ())
            .ok_or_else(|| not_found(id))
    }

    fn get_meta(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        Ok(self.lock().meta.get(key).cloned())
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> io::Result<()> {
        self.lock().meta.insert(key.to_string(), value.to_vec());
        Ok(())
    }

    fn remove_meta(&self, key: &str) -> io::Result<()> {
        self.lock().meta.remove(key);
        Ok(())
    }

    fn list_meta(&self, prefix: &str) -> io::Result<Vec<String>> {
        Ok(self
            .lock()
            .meta
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }

    fn publish(&self, name: &str, value: &[u8]) -> io::Result<()> {
        self.lock()
            .published
            .insert(name.to_string(), value.to_vec());
        Ok(())
    }

    fn location(&self) -> String {
        "memory".to_string()
    }
}
