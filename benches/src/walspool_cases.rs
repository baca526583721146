//! walspool under test: every row whose impl is `walspool`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::executor::block_on;
use futures::StreamExt;
use serde_bytes::ByteBuf;
use walspool_backends::LocalDisk;
use walspool_wal::shipper::{Batch, FnSink, Shipper};
use walspool_wal::{Durability, Options, Wal};

use crate::common::{
    serial_loop, threads_loop, tmpdir, Cfg, Payloads, Res, Sample, BATCH, PAYLOAD, SAMPLE_EVERY,
};
use crate::subject::Subject;

/// walspool with its default options except `segment_size` (64 MiB, also the
/// default) and the durability under test. Records are `serde_bytes::ByteBuf`s of
/// 256 random bytes (postcard: 2-byte length + payload).
/// With `hmac`, every record also carries the HMAC-SHA256 chain (issue 10), to show
/// what tamper evidence costs.
#[derive(Debug)]
pub struct Walspool {
    /// Chain every record with HMAC-SHA256.
    pub hmac: bool,
}

/// On-disk bytes per record: 24-byte frame header + postcard(ByteBuf(256)).
const FRAME_BYTES: u64 = 24 + 2 + PAYLOAD as u64;
/// Segment header + footer.
const SEG_OVERHEAD: u64 = 32 + 48;

fn open_with(cfg: &Cfg, dir: &Path, d: Durability, hmac: bool) -> Res<Wal<LocalDisk>> {
    // A WAL closed and dropped by this process a moment ago should be reopenable at
    // once; retry briefly (and say so) if its directory lock is still held.
    let mut tries = 0;
    loop {
        let r = LocalDisk::open(dir).and_then(|s| {
            let mut o = Options::default()
                .durability(d)
                .segment_size(cfg.segment_size);
            if let Some(z) = std::env::var("WALSPOOL_BENCH_ZERO_AHEAD")
                .ok()
                .and_then(|v| v.parse().ok())
            {
                o = o.zero_ahead_bytes(z);
            }
            if hmac {
                o = o.hmac_key(walspool_wal::HmacKey::new(vec![7u8; 32])?);
            }
            Wal::open(s, o)
        });
        match r {
            Err(walspool_wal::Error::Locked { .. }) if tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
            Ok(w) => {
                if tries > 0 {
                    crate::common::note(format!(
                        "walspool: reopen of {} needed {tries} retries: directory lock still held after close+drop",
                        dir.display()
                    ));
                }
                return Ok(w);
            }
        }
    }
}

fn open(cfg: &Cfg, dir: &Path, d: Durability) -> Res<Wal<LocalDisk>> {
    open_with(cfg, dir, d, false)
}

/// Appends `records` records (payload numbers from `first`) with `append_batch`.
async fn bulk(wal: &Wal<LocalDisk>, p: &Payloads, first: u64, records: u64) -> Res<()> {
    let mut done = 0u64;
    while done < records {
        let n = (records - done).min(BATCH as u64) as usize;
        wal.append_batch(&p.batch_bufs(first + done)[..n]).await?;
        done += n as u64;
    }
    Ok(())
}

/// Async twin of [`serial_loop`] so a single executor drives the whole loop.
async fn serial_async(
    wal: &Wal<LocalDisk>,
    p: &Payloads,
    run_for: Duration,
    max: u64,
    every: u64,
) -> Res<Sample> {
    let mut lat = Vec::with_capacity(max.min(1 << 20) as usize);
    let start = Instant::now();
    let deadline = start + run_for;
    let mut i = 0u64;
    while i < max {
        if i.is_multiple_of(every) {
            let t = Instant::now();
            if t >= deadline {
                break;
            }
            wal.append(p.buf(i)).await?;
            lat.push(t.elapsed().as_nanos() as u64);
        } else {
            wal.append(p.buf(i)).await?;
        }
        i += 1;
    }
    Ok(Sample {
        records: i,
        elapsed: start.elapsed(),
        lat_ns: lat,
    })
}

/// N tokio tasks on a 2-worker multi-thread runtime, each awaiting its own append.
fn concurrent_tasks(cfg: &Cfg, p: &Payloads, wal: &Wal<LocalDisk>, n: usize) -> Res<Sample> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    rt.block_on(async {
        let barrier = Arc::new(tokio::sync::Barrier::new(n + 1));
        let mut handles = Vec::with_capacity(n);
        for t in 0..n {
            let wal = wal.clone();
            let stop = stop.clone();
            let barrier = barrier.clone();
            let bufs: Vec<ByteBuf> = (0..64).map(|k| p.buf(k * 131 + t as u64).clone()).collect();
            handles.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(1 << 14);
                barrier.wait().await;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    wal.append(&bufs[(i % 64) as usize]).await?;
                    lat.push(t0.elapsed().as_nanos() as u64);
                    i += 1;
                }
                Ok::<_, walspool_wal::Error>((i, lat))
            }));
        }
        barrier.wait().await;
        let start = Instant::now();
        tokio::time::sleep(cfg.run_for).await;
        stop.store(true, Ordering::Relaxed);
        let mut s = Sample::default();
        for h in handles {
            let (c, l) = h.await??;
            s.records += c;
            s.lat_ns.extend(l);
        }
        s.elapsed = start.elapsed();
        Ok(s)
    })
}

impl Subject for Walspool {
    fn name(&self) -> &'static str {
        if self.hmac {
            "walspool+hmac"
        } else {
            "walspool"
        }
    }

    fn cases(&self) -> &'static str {
        if self.hmac {
            "acd"
        } else {
            "abcdefg"
        }
    }

    fn durable_serial(&self, cfg: &Cfg, p: &Payloads) -> Option<Res<Sample>> {
        Some((|| {
            let dir = tmpdir(cfg, self.name())?;
            let wal = open_with(cfg, dir.path(), Durability::Sync, self.hmac)?;
            let s = block_on(serial_async(&wal, p, cfg.run_for, cfg.max_sync_records, 1))?;
            block_on(wal.close())?;
            Ok(s)
        })())
    }

    fn concurrent_modes(&self) -> &'static [&'static str] {
        &["tasks", "threads"]
    }

    fn durable_concurrent(
        &self,
        cfg: &Cfg,
        p: &Payloads,
        n: usize,
        mode: usize,
    ) -> Option<Res<Sample>> {
        Some((|| {
            let dir = tmpdir(cfg, "walspool")?;
            let wal = open(cfg, dir.path(), Durability::Sync)?;
            let s = if mode == 0 {
                concurrent_tasks(cfg, p, &wal, n)?
            } else {
                let w = &wal;
                threads_loop(n, cfg.run_for, |t| {
                    Ok(move |i: u64| -> Res<()> {
                        block_on(w.append(p.buf(i * 131 + t as u64)))?;
                        Ok(())
                    })
                })?
            };
            block_on(wal.close())?;
            Ok(s)
        })())
    }

    fn durable_batch(&self, cfg: &Cfg, p: &Payloads) -> Option<Res<Sample>> {
        Some((|| {
            let dir = tmpdir(cfg, self.name())?;
            let wal = open_with(cfg, dir.path(), Durability::Sync, self.hmac)?;
            let s = serial_loop(cfg.run_for, u64::MAX, BATCH as u64, 1, |b| {
                block_on(wal.append_batch(p.batch_bufs(b)))?;
                Ok(())
            })?;
            block_on(wal.close())?;
            Ok(s)
        })())
    }

    fn buffered_serial(&self, cfg: &Cfg, p: &Payloads) -> Option<Res<Sample>> {
        Some((|| {
            let dir = tmpdir(cfg, self.name())?;
            let wal = open_with(cfg, dir.path(), Durability::Buffered, self.hmac)?;
            let s = block_on(serial_async(&wal, p, cfg.run_for, u64::MAX, SAMPLE_EVERY))?;
            block_on(wal.close())?;
            Ok(s)
        })())
    }

    fn build_history(
        &self,
        cfg: &Cfg,
        p: &Payloads,
        dir: &Path,
        bytes: u64,
        fill_tail: bool,
    ) -> Res<()> {
        let wal = open(cfg, dir, Durability::Buffered)?;
        block_on(async {
            let first = wal.last_seq();
            bulk(&wal, p, first, bytes / PAYLOAD as u64).await?;
            if fill_tail {
                // Seal what is there, then fill a fresh tail to ~98% of a segment: the
                // worst case for a tail-scanning recovery.
                let sealed = wal.sealed_segments().len();
                wal.flush().await?;
                wal.roll();
                // roll() is a request to the writer thread: wait until it is done so the
                // fill below lands in the new tail.
                let t = Instant::now();
                while wal.sealed_segments().len() == sealed {
                    if t.elapsed() > Duration::from_secs(5) {
                        return Err("walspool: roll() did not seal the tail within 5 s".into());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                let per_seg = (cfg.segment_size - SEG_OVERHEAD) / FRAME_BYTES;
                let first = wal.last_seq();
                bulk(&wal, p, first, per_seg * 98 / 100).await?;
            }
            wal.close().await?;
            Ok(())
        })
    }

    fn open_time(&self, cfg: &Cfg, dir: &Path) -> Res<Duration> {
        let t = Instant::now();
        let wal = open(cfg, dir, Durability::Sync)?;
        let d = t.elapsed();
        block_on(wal.close())?;
        Ok(d)
    }

    fn open_note(&self) -> &'static str {
        "lists segments, reads and validates the tail segment only"
    }

    fn history_note(&self, dir: &Path) -> Option<String> {
        let tail = crate::common::files_under(dir)
            .into_iter()
            .filter_map(|p| {
                let id = p
                    .file_name()?
                    .to_str()
                    .and_then(walspool_wal::format::parse_segment_file_name)?;
                Some((id, std::fs::metadata(&p).ok()?.len()))
            })
            .max()?;
        Some(format!("tail segment {}", crate::common::fmt_bytes(tail.1)))
    }

    fn rss_build(&self, cfg: &Cfg, p: &Payloads, dir: &Path, bytes: u64) -> Res<u64> {
        let wal = open(cfg, dir, Durability::Buffered)?;
        let n = bytes / PAYLOAD as u64;
        block_on(async {
            for i in 0..n {
                wal.append(p.buf(i)).await?;
            }
            wal.close().await?;
            Ok::<_, walspool_wal::Error>(())
        })?;
        Ok(n)
    }

    fn rss_read(&self, cfg: &Cfg, dir: &Path) -> Option<Res<u64>> {
        Some((|| {
            let wal = open(cfg, dir, Durability::Sync)?;
            let last = wal.last_seq();
            let n = block_on(count_stream(&wal, last))?;
            block_on(wal.close())?;
            Ok(n)
        })())
    }
}

/// Reads `1..=last` through the typed stream; returns the number of 256-byte records.
async fn count_stream(wal: &Wal<LocalDisk>, last: u64) -> Res<u64> {
    let mut s = wal.read_range::<ByteBuf>(1, last);
    let mut n = 0u64;
    while let Some(e) = s.next().await {
        if e?.record.len() == PAYLOAD {
            n += 1;
        }
    }
    Ok(n)
}

/// Result of case (f).
#[derive(Debug)]
pub struct ScanResult {
    /// Records in the history.
    pub records: u64,
    /// Payload bytes in the history.
    pub payload_bytes: u64,
    /// On-disk bytes of the WAL directory.
    pub disk_bytes: u64,
    /// Raw sequential read of the same files (`read` with a 1 MiB buffer).
    pub raw_read: Duration,
    /// The same read plus crc32fast over every byte.
    pub raw_read_crc: Duration,
    /// `read_range` + `try_next_raw` (frames, CRC-checked, not decoded).
    pub scan_raw: Duration,
    /// Typed live stream `read_from::<ByteBuf>(1)` counted until the last record.
    pub stream: Duration,
    /// `Shipper` (default batching, checkpoint commit per batch) into a no-op sink,
    /// until the checkpoint reaches the last record.
    pub drain: Duration,
    /// Median latency of `Consumer::commit`.
    pub commit_p50: Duration,
}

/// (f) reader scan and drain over a history of `cfg.scan_bytes` (warm page cache).
pub fn scan_and_drain(cfg: &Cfg, p: &Payloads) -> Res<ScanResult> {
    let dir = tmpdir(cfg, "walspool-scan")?;
    {
        let wal = open(cfg, dir.path(), Durability::Buffered)?;
        block_on(async {
            bulk(&wal, p, 0, cfg.scan_bytes / PAYLOAD as u64).await?;
            wal.close().await?;
            Ok::<_, crate::common::BoxError>(())
        })?;
    }
    let disk_bytes = crate::common::dir_bytes(dir.path());
    let wal = open(cfg, dir.path(), Durability::Sync)?;
    let last = wal.last_seq();

    // Warm-up and baseline: plain sequential read of every file.
    crate::common::raw_read_dir(dir.path())?;
    let t = Instant::now();
    crate::common::raw_read_dir(dir.path())?;
    let raw_read = t.elapsed();
    let t = Instant::now();
    std::hint::black_box(crate::common::raw_read_crc_dir(dir.path())?);
    let raw_read_crc = t.elapsed();

    let t = Instant::now();
    let mut s = wal.read_range::<ByteBuf>(1, last);
    let mut n = 0u64;
    let mut bytes = 0u64;
    while let Some(e) = s.try_next_raw()? {
        n += 1;
        bytes += e.record.len() as u64;
    }
    let scan_raw = t.elapsed();
    if n != last {
        return Err(format!("scan read {n} records, expected {last}").into());
    }
    std::hint::black_box(bytes);

    // Consumer path: the typed live stream, counted until the last record.
    let t = Instant::now();
    let got = block_on(async {
        let mut s = wal.read_from::<ByteBuf>(1);
        let mut n = 0u64;
        while let Some(e) = s.next().await {
            let e = e?;
            n += 1;
            if e.seq >= last {
                break;
            }
        }
        Ok::<_, walspool_wal::Error>(n)
    })?;
    let stream = t.elapsed();
    if got != last {
        return Err(format!("stream read {got} records, expected {last}").into());
    }

    // Shipper (default batch_max 2000, linger 5 ms) into a sink that only counts.
    let shipped = Arc::new(AtomicU64::new(0));
    let counter = shipped.clone();
    let sink = FnSink::new(move |batch: &Batch<ByteBuf>| {
        counter.fetch_add(batch.len() as u64, Ordering::Relaxed);
        async { Ok(()) }
    });
    let t = Instant::now();
    let running = Shipper::builder(wal.consumer("bench-drain")?, sink)
        .build()
        .expect("valid shipper configuration")
        .spawn_on_thread()?;
    let ok = running
        .handle()
        .wait_committed_timeout(last, Duration::from_secs(600));
    let drain = t.elapsed();
    let status = running.shutdown()?;
    if !ok || shipped.load(Ordering::Relaxed) < last {
        return Err(format!(
            "shipper committed {} / sank {} of {last} records",
            status.committed_seq,
            shipped.load(Ordering::Relaxed)
        )
        .into());
    }
    // What one checkpoint commit costs (the shipper commits once per batch).
    let c = wal.consumer("bench-commit")?;
    let mut commits = Vec::new();
    for k in 0..20u64 {
        let t = Instant::now();
        block_on(c.commit(1 + k * (last / 20)))?;
        commits.push(t.elapsed());
    }
    let commit_p50 = crate::common::median_d(&commits);
    block_on(wal.close())?;
    Ok(ScanResult {
        commit_p50,
        records: last,
        payload_bytes: last * PAYLOAD as u64,
        disk_bytes,
        raw_read,
        raw_read_crc,
        scan_raw,
        stream,
        drain,
    })
}
