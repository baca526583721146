//! Everything that needs no HTTP, on `futures::executor` — no async runtime at all.
//!
//! ```text
//! cargo run --example plain_executor -- --dir /tmp/plain-wal --count 2000
//! ```
//!
//! One `LocalPool` thread drives: an audit producer appending `AuditRecord`s (durable,
//! group-committed), a bounded channel whose overflow is counted instead of dropped
//! (the entries are shipped from the WAL anyway), a [`Shipper`] delivering to a
//! closure sink with a flaky first attempt (retried with backoff), and a replay of
//! whatever a previous run left unshipped. walspool's own threads do the I/O; its
//! timers come from `futures-timer`, so nothing here needs tokio or smol.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc;
use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use futures::StreamExt;
use walspool::records::{now_ms, AuditRecord};
use walspool::shipper::{Batch, FnSink, Shipper, SinkError};
use walspool::{LocalDisk, Options, Wal};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let tmp;
    let dir = match arg(&args, "--dir") {
        Some(d) => PathBuf::from(d),
        None => {
            tmp = std::env::temp_dir().join(format!("walspool-plain-{}", std::process::id()));
            tmp.clone()
        }
    };
    let count: u64 = arg(&args, "--count").map_or(Ok(2000), |s| s.parse())?;

    let wal: Wal<LocalDisk> = Wal::open(
        LocalDisk::open(&dir)?,
        Options::default()
            .schema::<AuditRecord>()
            .segment_size(1 << 20),
    )?;
    let consumer = wal.consumer("archive-sink")?;
    println!("resuming after checkpoint {}", consumer.committed());

    // The sink: keeps the sequence numbers it got (deduplicated by idempotency key);
    // its first call fails, to show the retry.
    let delivered = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    let calls = Arc::new(AtomicU64::new(0));
    let (d, c) = (delivered.clone(), calls.clone());
    let sink = FnSink::new(move |batch: &Batch<AuditRecord>| {
        let seqs: Vec<u64> = batch.entries().iter().map(|e| e.seq).collect();
        let first_call = c.fetch_add(1, Ordering::Relaxed) == 0;
        let d = d.clone();
        async move {
            if first_call {
                return Err(SinkError::transient("sink warming up"));
            }
            d.lock().unwrap().extend(seqs);
            Ok(())
        }
    });
    let shipper = Shipper::builder(consumer.clone(), sink)
        .linger(Duration::from_millis(2))
        .build()?;
    let handle = shipper.handle();

    let mut pool = LocalPool::new();
    let spawner = pool.spawner();
    spawner.spawn_local(async move {
        if let Err(e) = shipper.run().await {
            eprintln!("shipper stopped: {e}");
        }
    })?;

    // The in-process export queue: bounded; a full queue is counted, never a loss.
    let (mut tx, mut rx) = mpsc::channel::<u64>(64);
    let overflow = Arc::new(AtomicU64::new(0));
    spawner.spawn_local(async move {
        // A slow in-process consumer of the queue (e.g. a live view).
        while let Some(_seq) = rx.next().await {
            futures_timer_sleep(Duration::from_micros(300)).await;
        }
    })?;

    let w = wal.clone();
    let of = overflow.clone();
    let last = pool.run_until(async move {
        let mut last = 0;
        for i in 0..count {
            let rec = AuditRecord {
                ts: now_ms(),
                service: "plain".into(),
                actor: "cron".into(),
                action: "tick".into(),
                resource: format!("job/{i}"),
                outcome: "success".into(),
                ctx: None,
                data: None,
                tenant: None,
            };
            last = w.append(&rec).await?;
            if tx.try_send(last).is_err() {
                of.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(tx);
        // Wait until the shipper has delivered everything.
        while consumer.committed() < last {
            futures_timer_sleep(Duration::from_millis(5)).await;
        }
        Ok::<u64, walspool::Error>(last)
    })?;
    handle.request_shutdown();
    pool.run();

    let got = delivered.lock().unwrap();
    let m = wal.metrics();
    println!(
        "appended {count}, last seq {last}; delivered {} (sink calls {}, ship_errors_total {}); queue overflowed {} (all still shipped from the WAL); backlog_records={}",
        got.len(),
        calls.load(Ordering::Relaxed),
        m.ship_errors_total,
        overflow.load(Ordering::Relaxed),
        m.backlog_records
    );
    futures::executor::block_on(wal.close())?;
    Ok(())
}

/// A runtime-free sleep (futures-timer runs its own timer thread).
async fn futures_timer_sleep(d: Duration) {
    futures_timer::Delay::new(d).await
}
