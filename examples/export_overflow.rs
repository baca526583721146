//! The audit exporter from the seeds (smol): a bounded 1024-entry export channel in
//! front of a slow or stalled endpoint — without the silent drops.
//!
//! ```text
//! cargo run --example export_overflow -- --dir /tmp/export-wal --endpoint /tmp/endpoint.log \
//!     --count 10000 --stall 2s --exit-when-drained
//! ```
//!
//! * Every entry is persisted to the WAL **before** the channel send.
//! * When the channel is full, the send fails: a warning is logged (rate-limited) and
//!   counted, instead of a silent drop — and the entry is still delivered, later, from
//!   the WAL: the exporter notices the gap in sequence numbers (or idle time with a
//!   backlog) and reads the missing entries from the WAL.
//! * The exporter commits a consumer checkpoint after the endpoint accepted a batch; a
//!   crash and restart replays everything not yet exported. The endpoint is idempotent
//!   (it keys entries by WAL sequence number), so re-sent entries are not duplicated.
//!
//! The endpoint here is a file the exporter appends to, stalled for `--stall` and
//! then slow (`--slow` per batch, e.g. `200us`). Watch it with `walspool top <dir>`: the backlog
//! grows during the stall and drains after.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use smol::channel::{bounded, TrySendError};
use walspool::records::{now_ms, AuditRecord};
use walspool::{Consumer, LocalDisk, Options, Wal};

const CHANNEL_CAPACITY: usize = 1024;

struct Endpoint {
    file: std::fs::File,
    seen: HashSet<u64>,
    stalled_until: Instant,
    slow: Duration,
}

impl Endpoint {
    fn open(path: &PathBuf, stall: Duration, slow: Duration) -> std::io::Result<Self> {
        let mut seen = HashSet::new();
        if let Ok(f) = std::fs::File::open(path) {
            for line in std::io::BufReader::new(f).lines() {
                if let Ok(seq) = line?.split(' ').next().unwrap_or("").parse() {
                    seen.insert(seq);
                }
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Endpoint {
            file,
            seen,
            stalled_until: Instant::now() + stall,
            slow,
        })
    }

    /// Idempotent ingest: entries are keyed by WAL sequence number.
    async fn export(&mut self, batch: &[(u64, AuditRecord)]) -> std::io::Result<()> {
        let now = Instant::now();
        if now < self.stalled_until {
            smol::Timer::at(self.stalled_until).await;
        }
        smol::Timer::after(self.slow).await;
        let mut out = String::new();
        for (seq, r) in batch {
            if self.seen.insert(*seq) {
                out.push_str(&format!("{seq} {} {}\n", r.actor, r.resource));
            }
        }
        self.file.write_all(out.as_bytes())
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Reads `from..=to` from the WAL.
async fn from_wal(
    wal: &Wal<LocalDisk>,
    from: u64,
    to: u64,
) -> walspool::Result<Vec<(u64, AuditRecord)>> {
    let mut s = wal.read_range::<AuditRecord>(from, to);
    let mut out = Vec::new();
    while let Some(e) = s.next().await {
        let e = e?;
        out.push((e.seq, e.record));
    }
    Ok(out)
}

async fn exporter(
    wal: Wal<LocalDisk>,
    consumer: Consumer<LocalDisk>,
    rx: smol::channel::Receiver<(u64, AuditRecord)>,
    mut endpoint: Endpoint,
    producer_done: Arc<AtomicBool>,
    exit_when_drained: bool,
) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let mut next = consumer.committed() + 1;
    let mut exported = 0u64;
    loop {
        let first = smol::future::or(async { rx.recv().await.ok() }, async {
            smol::Timer::after(Duration::from_millis(50)).await;
            None
        })
        .await;
        let mut batch = Vec::new();
        if let Some(item) = first {
            batch.push(item);
            while batch.len() < 512 {
                match rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
        }
        batch.retain(|(seq, _)| *seq >= next);
        let mut list = Vec::new();
        match batch.first() {
            // A gap: entries the channel could not take. Read them from the WAL.
            Some((seq, _)) if *seq > next => list.extend(from_wal(&wal, next, seq - 1).await?),
            Some(_) => {}
            // Idle: anything durable in the WAL that was not exported?
            None => {
                let durable = wal.durable_seq();
                if durable >= next {
                    list.extend(from_wal(&wal, next, durable.min(next + 999)).await?);
                }
            }
        }
        list.extend(batch);
        if let Some((last, _)) = list.last() {
            let last = *last;
            endpoint.export(&list).await?;
            consumer.commit(last).await?;
            exported += list.len() as u64;
            next = last + 1;
        } else if exit_when_drained
            && producer_done.load(Ordering::Acquire)
            && wal.durable_seq() < next
        {
            return Ok(exported);
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(arg(&args, "--dir").unwrap_or_else(|| "export-wal".into()));
    let endpoint_path =
        PathBuf::from(arg(&args, "--endpoint").unwrap_or_else(|| "endpoint.log".into()));
    let count: u64 = arg(&args, "--count").map_or(Ok(10_000), |s| s.parse())?;
    // Durations as humantime reads them (`3s`, `200us`); the older `--stall-ms` and
    // `--slow-us` (plain numbers) still work.
    let stall = match (arg(&args, "--stall"), arg(&args, "--stall-ms")) {
        (Some(d), _) => humantime::parse_duration(&d)?,
        (None, Some(ms)) => Duration::from_millis(ms.parse()?),
        (None, None) => Duration::ZERO,
    };
    let slow = match (arg(&args, "--slow"), arg(&args, "--slow-us")) {
        (Some(d), _) => humantime::parse_duration(&d)?,
        (None, Some(us)) => Duration::from_micros(us.parse()?),
        (None, None) => Duration::from_micros(200),
    };
    let exit_when_drained = args.iter().any(|a| a == "--exit-when-drained");

    smol::block_on(async {
        let wal: Wal<LocalDisk> = Wal::open(
            LocalDisk::open(&dir)?,
            Options::default().schema::<AuditRecord>(),
        )?;
        let consumer = wal.consumer("export")?;
        println!("resuming after checkpoint {}", consumer.committed());
        let endpoint = Endpoint::open(&endpoint_path, stall, slow)?;
        let (tx, rx) = bounded::<(u64, AuditRecord)>(CHANNEL_CAPACITY);
        let done = Arc::new(AtomicBool::new(false));
        let exp = smol::spawn(exporter(
            wal.clone(),
            consumer,
            rx,
            endpoint,
            done.clone(),
            exit_when_drained,
        ));

        let overflow = AtomicU64::new(0);
        let mut last_warn: Option<Instant> = None;
        for i in 0..count {
            let rec = AuditRecord {
                ts: now_ms(),
                service: "pilot".into(),
                actor: format!("agent-{}", i % 13),
                action: "export".into(),
                resource: format!("doc/{i}"),
                outcome: "success".into(),
                ctx: None,
                data: None,
                tenant: None,
            };
            let seq = wal.append(&rec).await?; // persisted before the channel send
            if let Err(TrySendError::Full(_)) = tx.try_send((seq, rec)) {
                let n = overflow.fetch_add(1, Ordering::Relaxed) + 1;
                if last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                    eprintln!(
                        "WARN export channel full ({CHANNEL_CAPACITY}): entry {seq} stays in the WAL and is exported from there ({n} overflowed so far)"
                    );
                    last_warn = Some(Instant::now());
                }
            }
        }
        println!(
            "APPENDED {count} overflowed {}",
            overflow.load(Ordering::Relaxed)
        );
        std::io::stdout().flush()?;
        done.store(true, Ordering::Release);
        let exported = exp.await.map_err(|e| e as Box<dyn std::error::Error>)?;
        println!(
            "exported {exported}; backlog_records={}",
            wal.metrics().backlog_records
        );
        wal.close().await?;
        Ok(())
    })
}
