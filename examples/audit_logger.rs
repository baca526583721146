//! The audit logger from the seeds (tokio): **WAL first, then the primary sink** — here
//! a JSON-lines file written by the [`FileSink`].
//!
//! ```text
//! cargo run --example audit_logger -- --dir /tmp/audit-wal --sink /tmp/audit.jsonl --count 100
//! cargo run --release --example audit_logger -- --dir /tmp/a --sink /tmp/a.jsonl --measure 2000
//! ```
//!
//! * Every audit entry is appended to the WAL (durable: fdatasync, group-committed)
//!   before it is written to the primary sink; the consumer checkpoint moves only after
//!   the sink has it (written and fsynced).
//! * On startup, entries the sink never got are replayed into it, then the WAL is
//!   truncated (the fully committed segments are deleted).
//! * The sink is idempotent: each line carries the entry's WAL id and sequence number
//!   (`wal_id`, `wal_seq`), the sink recovers the last one from the file when it opens
//!   and skips what the file already holds, so a crash between the sink write and the
//!   commit does not duplicate an entry: exactly once in the file.
//! * `--crash-before-flush` appends one entry, prints `APPENDED <seq>` and waits to be
//!   killed before the sink write (the integration test SIGKILLs it there).
//! * `--measure N` prints the latency an audit call sees with the WAL on and off.
//!
//! Watch it with `walspool top <dir>`: the backlog stays at 0 unless the sink stalls.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use walspool::backends::file::{FileSink, LineFormat};
use walspool::records::{now_ms, AuditRecord};
use walspool::shipper::Batch;
use walspool::{Entry, LocalDisk, Options, Wal};

/// The consumer that feeds the primary sink.
const CONSUMER: &str = "primary-sink";

/// One entry as a batch for the sink.
fn one(wal: &Wal<LocalDisk>, seq: u64, record: AuditRecord) -> Batch<AuditRecord> {
    let ts_us = now_ms() * 1000;
    Batch::new(wal.id(), CONSUMER, vec![Entry { seq, ts_us, record }])
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn event(i: u64) -> AuditRecord {
    AuditRecord {
        ts: now_ms(),
        service: "nautilus".into(),
        actor: format!("user-{}", i % 7),
        action: "rule.fire".into(),
        resource: format!("session/{i}"),
        outcome: "success".into(),
        ctx: None,
        data: None,
        tenant: None,
    }
}

fn percentiles(mut v: Vec<u128>) -> (u128, u128) {
    v.sort_unstable();
    (v[v.len() / 2], v[(v.len() * 99 / 100).min(v.len() - 1)])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(arg(&args, "--dir").unwrap_or_else(|| "audit-wal".into()));
    let sink_path = PathBuf::from(arg(&args, "--sink").unwrap_or_else(|| "audit.jsonl".into()));
    let count: u64 = arg(&args, "--count").map_or(Ok(10), |s| s.parse())?;
    let crash = args.iter().any(|a| a == "--crash-before-flush");
    let measure: Option<usize> = arg(&args, "--measure").map(|s| s.parse()).transpose()?;

    let wal: Wal<LocalDisk> = Wal::open(
        LocalDisk::open(&dir)?,
        Options::default().schema::<AuditRecord>(),
    )?;
    let consumer = wal.consumer(CONSUMER)?;
    // The primary sink: JSON lines (the audit record's own fields plus `wal_id` and
    // `wal_seq`), fsynced per batch, rotated at 64 MiB; on open it recovers the last
    // `wal_seq` it holds, so a replay writes nothing twice.
    let sink = FileSink::builder(&sink_path)
        .format(LineFormat::Flat)
        .max_bytes(64 << 20)
        .build()?;

    // Startup: replay what the sink never got, then truncate.
    let wal_id = wal.id().to_string();
    let replayed = consumer
        .replay(500, |batch: Vec<Entry<AuditRecord>>| {
            sink.write(&Batch::new(wal_id.as_str(), CONSUMER, batch))
        })
        .await?;
    wal.roll();
    // Sealing the segment runs retention: what the sink now holds is deleted.
    wal.flush().await?;
    println!("replayed {replayed} entries into {}", sink_path.display());

    for i in 0..count {
        let ev = event(i);
        let seq = wal.append(&ev).await?; // 1. WAL (durable)
        if crash {
            println!("APPENDED {seq}");
            std::io::stdout().flush()?;
            // The test kills us here, before the primary sink sees the entry.
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            }
        }
        sink.write(&one(&wal, seq, ev)).await?; // 2. primary sink (written, fsynced)
        consumer.commit(seq).await?; // 3. checkpoint
    }
    println!("logged {count} entries");

    if let Some(n) = measure {
        // WAL off: the v1 path — straight into the (buffered) sink.
        let off_path = dir.with_extension("nowal.jsonl");
        let mut off = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&off_path)?;
        let mut lat_off = Vec::with_capacity(n);
        for i in 0..n as u64 {
            let t = Instant::now();
            let mut line = serde_json::to_vec(&event(i))?;
            line.push(b'\n');
            off.write_all(&line)?;
            lat_off.push(t.elapsed().as_micros());
        }
        // WAL on: what the caller waits for is the durable WAL append; the sink write
        // and commit follow.
        let mut lat_on = Vec::with_capacity(n);
        for i in 0..n as u64 {
            let ev = event(i);
            let t = Instant::now();
            let seq = wal.append(&ev).await?;
            lat_on.push(t.elapsed().as_micros());
            sink.write(&one(&wal, seq, ev)).await?;
            consumer.commit(seq).await?;
        }
        let _ = std::fs::remove_file(&off_path);
        let (off50, off99) = percentiles(lat_off);
        let (on50, on99) = percentiles(lat_on);
        println!("latency per audit call over {n} calls: WAL off p50 {off50} µs p99 {off99} µs; WAL on (fdatasync) p50 {on50} µs p99 {on99} µs");
    }
    let m = wal.metrics();
    println!(
        "backlog_records={} dropped_records_total={} current_file={} current_offset={}",
        m.backlog_records, m.dropped_records_total, m.current_file, m.current_offset
    );
    wal.close().await?;
    Ok(())
}
