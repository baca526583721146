//! Adapters for the pinned peers: okaywal 0.3.1, raft-engine 0.4.2, nano-wal 1.0.0.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{
    serial_loop, threads_loop, tmpdir, Cfg, Payloads, Res, Sample, BATCH, PAYLOAD, SAMPLE_EVERY,
};
use crate::subject::Subject;

/// Records per okaywal entry / raft-engine batch / nano-wal batch when building a
/// history or backlog (bulk loading, not measured).
const BULK: usize = 4096;

// ---------------------------------------------------------------------------
// okaywal
// ---------------------------------------------------------------------------

/// okaywal: one entry (one chunk of 256 bytes) per append, committed (= fsynced,
/// with okaywal's own commit coalescing). Default `Configuration` (1 MiB
/// preallocation, checkpoint after 768 KiB, no-op checkpointer) for throughput cases.
/// okaywal has no non-durable commit, so no (d) row.
#[derive(Debug)]
pub struct OkayWal;

/// Checkpointer that discards; optionally reads every recovered chunk (and checks
/// its CRC) and counts it.
#[derive(Debug, Clone, Default)]
struct OkManager {
    read: bool,
    count: Arc<AtomicU64>,
}

impl okaywal::LogManager for OkManager {
    fn recover(&mut self, entry: &mut okaywal::Entry<'_>) -> io::Result<()> {
        if self.read {
            if let Some(chunks) = entry.read_all_chunks()? {
                let n = chunks.iter().filter(|c| c.len() == PAYLOAD).count();
                self.count.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn checkpoint_to(
        &mut self,
        _last: okaywal::EntryId,
        _entries: &mut okaywal::SegmentReader,
        _wal: &okaywal::WriteAheadLog,
    ) -> io::Result<()> {
        Ok(())
    }
}

impl OkayWal {
    fn open_default(dir: &Path) -> io::Result<okaywal::WriteAheadLog> {
        okaywal::Configuration::default_for(dir).open(OkManager::default())
    }
    /// Never checkpoints, so the whole history stays in the log and is recovered.
    fn open_keep(dir: &Path, m: OkManager) -> io::Result<okaywal::WriteAheadLog> {
        okaywal::Configuration::default_for(dir)
            .checkpoint_after_bytes(u64::MAX)
            .open(m)
    }
    fn append(log: &okaywal::WriteAheadLog, data: &[u8]) -> io::Result<()> {
        let mut w = log.begin_entry()?;
        w.write_chunk(data)?;
        w.commit()?;
        Ok(())
    }
    fn bulk(log: &okaywal::WriteAheadLog, p: &Payloads, bytes: u64) -> io::Result<u64> {
        let total = bytes / PAYLOAD as u64;
        let mut i = 0u64;
        while i < total {
            let mut w = log.begin_entry()?;
            let end = (i + BULK as u64).min(total);
            while i < end {
                w.write_chunk(p.get(i))?;
                i += 1;
            }
            w.commit()?;
        }
        Ok(total)
    }
}

impl Subject for OkayWal {
    fn name(&self) -> &'static str {
        "okaywal"
    }
    fn durable_serial(&self, cfg: &Cfg, p: &Payloads) -> Option<Res<Sample>> {
        Some((|| {
            let dir = tmpdir(cfg, "okaywal")?;
            let log = Self::open_default(dir.path())?;
            let s = serial_loop(cfg.run_for, cfg.max_sync_records, 1, 1, |i| {
                Ok(Self::append(&log, p.get(i))?)
            })?;
            log.shutdown()?;
            Ok(s)
        })())
    }
    fn durable_concurrent(
        &self,
        cfg: &Cfg,
        p: &Payloads,
        n: usize,
        _mode: usize,
    ) -> Option<Res<Sample>> {
        Some((|| {
            let dir = tmpdir(cfg, "okaywal")?;
            let log = Self::open_default(dir.path())?;
            let s = threads_loop(n, cfg.run_for, |t| {
                let log = log.clone();
                Ok(move |i: u64| -> Res<()> { Ok(Self::append(&log, p.get(i * 131 + t as u64))?) })
            })?;
            log.shutdown()?;
            Ok(s)
        })())
    }
    fn durable_batch(&self, cfg: &Cfg, p: &Payloads) -> Option<Res<Sample>> {
        Some((|| {
            let dir = tmpdir(cfg, "okaywal")?;
            let log = Self::open_default(dir.path())?;
            // One entry of 1000 chunks, one commit.
            let s = serial_loop(cfg.run_for, u64::MAX, BATCH as u64, 1, |b| {
                let mut w = log.begin_entry()?;
                for k in 0..BATCH as u64 {
                    w.write_chunk(p.get(b * BATCH as u64 + k))?;
                }
                w.commit()?;
                Ok(())
            })?;
            log.shutdown()?;
            Ok(s)
        })())
    }
    fn buffered_serial(&self, _cfg: &Cfg, _p: &Payloads) -> Option<Res<Sample>> {
        None
    }
    fn build_history(
        &self,
        _cfg: &Cfg,
        p: &Payloads,
        dir: &Path,
        bytes: u64,
        _fill_tail: bool,
    ) -> Res<()> {
        let log = Self::open_keep(
            dir,
            OkManager {
                read: true,
                count: Arc::default(),
            },
        )?;
        Self::bulk(&log, p, bytes)?;
        log.shutdown()?;
        Ok(())
    }
    fn open_time(&self, _cfg: &Cfg, dir: &Path) -> Res<Duration> {
        let t = Instant::now();
        let log = Self::open_keep(
            dir,
            OkManager {
                read: true,
                count: Arc::default(),
            },
        )?;
        let d = t.elapsed();
        log.shutdown()?;
        Ok(d)
    }
    fn open_note(&self) -> &'static str {
        "replays every uncheckpointed entry (history kept by never checkpointing)"
    }
    fn rss_build(&self, _cfg: &Cfg, p: &Payloads, dir: &Path, bytes: u64) -> Res<u64> {
        let log = Self::open_keep(
            dir,
            OkManager {
                read: true,
                count: Arc::default(),
            },
        )?;
        let n = Self::bulk(&log, p, bytes)?;
        log.shutdown()?;
        Ok(n)
    }
    fn rss_read(&self, _cfg: &Cfg, dir: &Path) -> Option<Res<u64>> {
        Some((|| {
            let m = OkManager {
                read: true,
                count: Arc::default(),
            };
            let log = Self::open_keep(dir, m.clone())?;
            let n = m.count.load(Ordering::Relaxed);
            log.shutdown()?;
            Ok(n)
        })())
    }
}

// ---------------------------------------------------------------------------
// raft-engine
// ---------------------------------------------------------------------------

/// raft-engine: each record is one raft entry (a protobuf `BytesValue` holding the
/// 256-byte payload whose first 8 bytes carry the entry index), appended with
/// `Engine::write(batch, sync)`. Batch compression off (payload is incompressible),
/// `target_file_size` = segment size; otherwise default `Config`. Concurrent writers
/// use one region each (raft-engine requires contiguous indexes per region).
#[derive(Debug)]
pub struct RaftEngine;

#[derive(Debug, Clone, Copy)]
struct RaftMsg;

impl raft_engine::MessageExt for RaftMsg {
    type Entry = protobuf::well_known_types::BytesValue;
    fn index(e: &Self::Entry) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&e.value[..8]);
        u64::from_le_bytes(b)
    }
}

type Engine = raft_engine::Engine;

fn raft_entry(p: &Payloads, i: u64, index: u64) -> protobuf::well_known_types::BytesValue {
    let mut v = protobuf::well_known_types::BytesValue::new();
    let mut data = p.get(i).to_vec();
    data[..8].copy_from_slice(&index.to_le_bytes());
    v.value = data;
    v
}

impl RaftEngine {
    fn open(cfg: &Cfg, dir: &Path) -> Res<Engine> {
        let c = raft_engine::Config {
            dir: dir.to_string_lossy().into_owned(),
            batch_compression_threshold: raft_engine::ReadableSize(0),
            target_file_size: raft_engine::ReadableSize(cfg.segment_size),
            ..Default::default()
        };
        Ok(Engine::open(c)?)
    }
    /// Appends `count` records starting at raft index `next` of `region`.
    fn write(
        e: &Engine,
        p: &Payloads,
        region: u64,
        next: &mut u64,
        count: usize,
        sync: bool,
    ) -> Res<()> {
        let mut batch = raft_engine::LogBatch::with_capacity(1);
        let ents: Vec<_> = (0..count as u64)
            .map(|k| raft_entry(p, *next + k, *next + k))
            .collect();
        batch.add_entries::<RaftMsg>(region, &ents)?;
        e.write(&mut batch, sync)?;
        *next += count as u64;
        Ok(())
    }
    fn bulk(e: &Engine, p: &Payloads, bytes: u64) -> Res<u64> {
        let total = bytes / PAYLOAD as u64;
        let mut next = e.last_index(1).map_or(1, |l| l + 1);
        let mut done = 0u64;
        while done < total {
            let n = (total - done).min(BULK as u64) as usize;
            Self::write(e, p, 1, &mut next, n, false)?;
            done += n as u64;
        }
        e.sync()?;
        Ok(total)
    }
}

impl Subject for RaftEngine {
    fn name(&self) -> &'static str {
        "raft-engine"
    }
    fn durable_serial(&self, cfg: &Cfg, p: &Payloads) -> Option<Res<Sample>> {
        Some((|| {
            let dir = tmpdir(cfg, "raft")?;
            let e = Self::open(cfg, dir.path())?;
            let mut next = 1;
            serial_loop(cfg.run_for, cfg.max_sync_records, 1, 1, |_| {
                Self::write(&e, p, 1, &mut next, 1, true)
            })
        })())
    }
    fn durable_concurrent(
        &self,
        cfg: &Cfg,
        p: &Payloads,
        n: usize,
        _mode: usize,
    ) -> Option<Res<Sample>> {
        Some((|| {
            let dir = tmpdir(cfg, "raft")?;
            let e = Self::open(cfg, dir.path())?;
            let e = &e;
            threads_loop(n, cfg.run_for, |t| {
                let mut next = 1;
                Ok(move |_i: u64| Self::write(e, p, t as u64 + 1, &mut next, 1, true))
            })
        })())
    }
    fn durable_batch(&self, cfg: &Cfg, p: &Payloads) -> Option<Res<Sample>> {
        Some((|| {
            let dir = tmpdir(cfg, "raft")?;
            let e = Self::open(cfg, dir.path())?;
            let mut next = 1;
            serial_loop(cfg.run_for, u64::MAX, BATCH as u64, 1, |_| {
                Self::write(&e, p, 1, &mut next, BATCH, true)
            })
        })())
    }
    fn buffered_serial(&self, cfg: &Cfg, p: &Payloads) -> Option<Res<Sample>> {
        Some((|| {
            let dir = tmpdir(cfg, "raft")?;
            let e = Self::open(cfg, dir.path())?;
            let mut next = 1;
            serial_loop(cfg.run_for, u64::MAX, 1, SAMPLE_EVERY, |_| {
                Self::write(&e, p, 1, &mut next, 1, false)
            })
        })())
    }
    fn build_history(
        &self,
        cfg: &Cfg,
        p: &Payloads,
        dir: &Path,
        bytes: u64,
        _fill_tail: bool,
    ) -> Res<()> {
        let e = Self::open(cfg, dir)?;
        Self::bulk(&e, p, bytes)?;
        Ok(())
    }
    fn open_time(&self, cfg: &Cfg, dir: &Path) -> Res<Duration> {
        let t = Instant::now();
        let e = Self::open(cfg, dir)?;
        let d = t.elapsed();
        drop(e);
        Ok(d)
    }
    fn open_note(&self) -> &'static str {
        "replays all files to rebuild its in-memory index (4 recovery threads)"
    }
    fn rss_build(&self, cfg: &Cfg, p: &Payloads, dir: &Path, bytes: u64) -> Res<u64> {
        let e = Self::open(cfg, dir)?;
        Self::bulk(&e, p, bytes)
    }
    fn rss_read(&self, cfg: &Cfg, dir: &Path) -> Option<Res<u64>> {
        Some((|| {
            let e = Self::open(cfg, dir)?;
            let (Some(first), Some(last)) = (e.first_index(1), e.last_index(1)) else {
                return Ok(0);
            };
            let mut n = 0u64;
            let mut i = first;
            let mut buf = Vec::with_capacity(BULK);
            while i <= last {
                let end = (i + BULK as u64).min(last + 1);
                buf.clear();
                e.fetch_entries_to::<RaftMsg>(1, i, end, None, &mut buf)?;
                n += buf.iter().filter(|v| v.value.len() == PAYLOAD).count() as u64;
                i = end;
            }
            Ok(n)
        })())
    }
}

// ---------------------------------------------------------------------------
// nano-wal
// ---------------------------------------------------------------------------

/// nano-wal: `append(None, payload, now, durable)`; batches via `append_batch`.
/// Segments roll by time window only (1 day here). Its `fdatasync` runs under the
/// segment mutex, so concurrent durable writers are serialized (no group commit).
#[derive(Debug)]
pub struct NanoWal;

/// Largest nano-wal `append_batch` that fits one `writev` (5 iovecs per record).
const NANO_WRITEV_MAX: u64 = 200;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl NanoWal {
    fn open(dir: &Path) -> Res<nano_wal::Wal> {
        let opts = nano_wal::WalOptions {
            retention: Duration::from_secs(7 * 86_400),
            segment_duration: Duration::from_secs(86_400),
        };
        Ok(nano_wal::Wal::new(dir, "bench", opts)?)
    }
    fn bulk(w: &nano_wal::Wal, p: &Payloads, bytes: u64) -> Res<u64> {
        let total = bytes / PAYLOAD as u64;
        let t = now_ms();
        let mut i = 0u64;
        while i < total {
            let n = (total - i).min(NANO_WRITEV_MAX);
            let ents: Vec<_> = (i..i + n)
                .map(|k| nano_wal::WriteEntry {
                    header: None,
                    content: p.get(k),
                })
                .collect();
            w.append_batch(&ents, t, false)?;
            i += n;
        }
        w.sync()?;
        Ok(total)
    }
}

impl Subject for NanoWal {
    fn name(&self) -> &'static str {
        "nano-wal"
    }
    fn durable_serial(&self, cfg: &Cfg, p: &Payloads) -> Option<Res<Sample>> {
        Some((|| {
            let dir = tmpdir(cfg, "nano")?;
            let w = Self::open(dir.path())?;
            let t = now_ms();
            let s = serial_loop(cfg.run_for, cfg.max_sync_records, 1, 1, |i| {
                w.append(None, p.get(i), t, true)?;
                Ok(())
            })?;
            w.shutdown()?;
            Ok(s)
        })())
    }
    fn durable_concurrent(
        &self,
        cfg: &Cfg,
        p: &Payloads,
        n: usize,
        _mode: usize,
    ) -> Option<Res<Sample>> {
        Some((|| {
            let dir = tmpdir(cfg, "nano")?;
            let w = Self::open(dir.path())?;
            let t = now_ms();
            let wr = &w;
            let s = threads_loop(n, cfg.run_for, |th| {
                Ok(move |i: u64| -> Res<()> {
                    wr.append(None, p.get(i * 131 + th as u64), t, true)?;
                    Ok(())
                })
            })?;
            w.shutdown()?;
            Ok(s)
        })())
    }
    fn durable_batch(&self, cfg: &Cfg, p: &Payloads) -> Option<Res<Sample>> {
        Some((|| {
            let dir = tmpdir(cfg, "nano")?;
            let w = Self::open(dir.path())?;
            let t = now_ms();
            // nano-wal issues one writev of 5 iovecs per record and fails on the short
            // write past IOV_MAX (1024), so a batch of 1000 is written as 5 calls of 200
            // with only the last one durable: still one fdatasync per 1000 records.
            let s = serial_loop(cfg.run_for, u64::MAX, BATCH as u64, 1, |b| {
                let ents: Vec<_> = (0..BATCH as u64)
                    .map(|k| nano_wal::WriteEntry {
                        header: None,
                        content: p.get(b * BATCH as u64 + k),
                    })
                    .collect();
                let chunks: Vec<_> = ents.chunks(NANO_WRITEV_MAX as usize).collect();
                for (k, c) in chunks.iter().enumerate() {
                    w.append_batch(c, t, k + 1 == chunks.len())?;
                }
                Ok(())
            })?;
            w.shutdown()?;
            Ok(s)
        })())
    }
    fn buffered_serial(&self, cfg: &Cfg, p: &Payloads) -> Option<Res<Sample>> {
        Some((|| {
            let dir = tmpdir(cfg, "nano")?;
            let w = Self::open(dir.path())?;
            let t = now_ms();
            let s = serial_loop(cfg.run_for, u64::MAX, 1, SAMPLE_EVERY, |i| {
                w.append(None, p.get(i), t, false)?;
                Ok(())
            })?;
            w.shutdown()?;
            Ok(s)
        })())
    }
    fn build_history(
        &self,
        _cfg: &Cfg,
        p: &Payloads,
        dir: &Path,
        bytes: u64,
        _fill_tail: bool,
    ) -> Res<()> {
        let w = Self::open(dir)?;
        Self::bulk(&w, p, bytes)?;
        w.shutdown()?;
        Ok(())
    }
    fn open_time(&self, _cfg: &Cfg, dir: &Path) -> Res<Duration> {
        let t = Instant::now();
        let w = Self::open(dir)?;
        let d = t.elapsed();
        w.shutdown()?;
        Ok(d)
    }
    fn open_note(&self) -> &'static str {
        "no replay or validation: reopens the newest segment and seeks to its end"
    }
    fn rss_build(&self, _cfg: &Cfg, p: &Payloads, dir: &Path, bytes: u64) -> Res<u64> {
        let w = Self::open(dir)?;
        let n = Self::bulk(&w, p, bytes)?;
        w.shutdown()?;
        Ok(n)
    }
    fn rss_read(&self, _cfg: &Cfg, _dir: &Path) -> Option<Res<u64>> {
        // nano-wal reads by (offset, size) handles returned from append; it has no
        // scan or recovery iterator.
        None
    }
}
