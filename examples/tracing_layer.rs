//! A service that logs through `tracing` into a WAL (feature `tracing`), with the
//! monitor watching.
//!
//! ```text
//! cargo run --example tracing_layer --features tracing -- --dir /tmp/svc-logs --for 30s
//! walspool top /tmp/svc-logs        # in another terminal
//! ```
//!
//! `WalLayer` turns every `tracing` event (here: `info` and above for the service's own
//! target, chosen with a filter) into a `LogRecord` in the WAL without making the
//! request path wait for an fsync; a shipper delivers the records to a closure sink
//! (stand-in for the log service), which stalls for a while so that the backlog shows
//! up in `walspool top`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing_subscriber::filter::{filter_fn, LevelFilter};
use tracing_subscriber::prelude::*;
use walspool::records::LogRecord;
use walspool::shipper::{Batch, FnSink, Shipper, SinkError};
use walspool::tracing_layer::WalLayer;
use walspool::{LocalDisk, Options, Wal};

fn parse_duration(s: &str) -> Duration {
    humantime::parse_duration(s).expect("a duration like 5s, 300ms or 1m")
}

#[tracing::instrument]
fn handle_request(id: u64) {
    tracing::info!(request = id, path = "/checkout", "request served");
    if id.is_multiple_of(10) {
        tracing::warn!(request = id, "slow upstream");
    }
    tracing::debug!("not selected by the filter: never written");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let get = |n: &str| {
        args.iter()
            .position(|a| a == n)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let dir = PathBuf::from(get("--dir").unwrap_or_else(|| {
        std::env::temp_dir()
            .join(format!("walspool-tracing-{}", std::process::id()))
            .display()
            .to_string()
    }));
    let run_for = parse_duration(&get("--for").unwrap_or_else(|| "3s".into()));

    let wal: Wal<LocalDisk> = Wal::open(LocalDisk::open(&dir)?, Options::default())?;
    let layer = WalLayer::new(wal.clone(), "checkout")
        .with_filter(LevelFilter::INFO)
        .with_filter(filter_fn(|m| m.target().starts_with("tracing_layer")));
    tracing_subscriber::registry().with(layer).init();

    // The log service: stalls for the first second, then accepts.
    let start = Instant::now();
    let shipped = Arc::new(AtomicU64::new(0));
    let sh = shipped.clone();
    let sink = FnSink::new(move |batch: &Batch<LogRecord>| {
        let n = batch.len() as u64;
        let sh = sh.clone();
        async move {
            if start.elapsed() < Duration::from_secs(1) {
                return Err(SinkError::transient("log service warming up"));
            }
            sh.fetch_add(n, Ordering::Relaxed);
            Ok(())
        }
    });
    let running = Shipper::builder(wal.consumer("log-service")?, sink)
        .backoff(walspool::shipper::Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
            ..Default::default()
        })
        .build()?
        .spawn_on_thread()?;

    println!(
        "logging into {} for {run_for:?}; watch with: walspool top {}",
        dir.display(),
        dir.display()
    );
    let mut id = 0;
    while start.elapsed() < run_for {
        id += 1;
        handle_request(id);
        std::thread::sleep(Duration::from_millis(2));
    }
    futures::executor::block_on(wal.flush())?;
    let logged = wal.durable_seq();
    let t = Instant::now();
    while wal.metrics().backlog_records > 0 && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
    running.shutdown()?;
    let m = wal.metrics();
    println!(
        "requests {id}, log records {logged}, shipped {} (ship_errors_total {}), backlog {}",
        shipped.load(Ordering::Relaxed),
        m.ship_errors_total,
        m.backlog_records
    );
    futures::executor::block_on(wal.close())?;
    Ok(())
}
