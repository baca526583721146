//! The audit logger from the seeds (tokio): **WAL first, then the primary sink** — here
//! a JSON-lines file.
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
//! * The sink is idempotent: each line carries the entry's WAL sequence number and a
//!   replay skips what the file already holds, so a crash between the sink write and
//!   the commit does not duplicate an entry: exactly once in the file.
//! * `--crash-before-flush` appends one entry, prints `APPENDED <seq>` and waits to be
//!   killed before the sink write (the integration test SIGKILLs it there).
//! * `--measure N` prints the latency an audit call sees with the WAL on and off.
//!
//! Watch it with `walspool top <dir>`: the backlog stays at 0 unless the sink stalls.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use walspool::records::{now_ms, AuditRecord};
use walspool::{Entry, LocalDisk, Options, Wal};

struct PrimarySink {
    file: std::fs::File,
    last_seq: u64,
}

impl PrimarySink {
    fn open(path: &PathBuf) -> std::io::Result<Self> {
        let mut last_seq = 0;
        if let Ok(f) = std::fs::File::open(path) {
            for line in std::io::BufReader::new(f).lines() {
                let line = line?;
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    last_seq = last_seq.max(v["wal_seq"].as_u64().unwrap_or(0));
                }
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(PrimarySink { file, last_seq })
    }

    /// Writes entries the file does not hold yet, then fsyncs.
    fn write(&mut self, entries: &[(u64, &AuditRecord)]) -> std::io::Result<usize> {
        let mut n = 0;
        let mut buf = Vec::new();
        for (seq, r) in entries {
            if *seq <= self.last_seq {
                continue; // already in the sink: idempotent
            }
            let mut v = serde_json::to_value(r).expect("audit record is JSON");
            v["wal_seq"] = (*seq).into();
            buf.extend(serde_json::to_vec(&v).expect("JSON"));
            buf.push(b'\n');
            self.last_seq = *seq;
            n += 1;
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        Ok(n)
    }
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

    let wal: Wal<LocalDisk> = Wal::open(LocalDisk::open(&dir)?, Options::default())?;
    let consumer = wal.consumer("primary-sink")?;
    let mut sink = PrimarySink::open(&sink_path)?;

    // Startup: replay what the sink never got, then truncate.
    let replayed = consumer
        .replay(500, |batch: Vec<Entry<AuditRecord>>| {
            let r = sink.write(&batch.iter().map(|e| (e.seq, &e.record)).collect::<Vec<_>>());
            async move { r.map(|_| ()) }
        })
        .await?;
    wal.roll();
    wal.flush().await?;
    wal.nudge_retention();
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
        sink.write(&[(seq, &ev)])?; // 2. primary sink
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
            sink.write(&[(seq, &ev)])?;
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
