//! Ships audit records from a WAL into PostgreSQL, exactly once in the table
//! (feature `postgres`). Runs on a plain `futures` executor: the sink owns the tokio
//! runtime its client needs.
//!
//! ```text
//! scripts/postgres.sh start            # or any server you have
//! cargo run --features postgres --example postgres_sink -- \
//!     --url postgres://postgres@127.0.0.1:55432/postgres --dir /tmp/pg-wal --count 1000
//! ```
//!
//! Run it twice on the same `--dir`: the second run ships only its own new records,
//! and a record sent again after a crash is dropped by the table's primary key
//! `(wal_id, seq)`. `--url` defaults to `$WALSPOOL_PG_URL`.

use std::path::PathBuf;
use std::time::Duration;

use walspool::backends::postgres::PgSink;
use walspool::records::{now_ms, AuditRecord};
use walspool::shipper::Shipper;
use walspool::{LocalDisk, Options, Wal};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = arg(&args, "--url")
        .or_else(|| std::env::var("WALSPOOL_PG_URL").ok())
        .ok_or("--url postgres://... (or WALSPOOL_PG_URL) is required")?;
    let dir = PathBuf::from(arg(&args, "--dir").unwrap_or_else(|| "pg-wal".into()));
    let count: u64 = arg(&args, "--count").map_or(Ok(100), |s| s.parse())?;
    let table = arg(&args, "--table").unwrap_or_else(|| "walspool_audit".into());

    let mut sink = PgSink::builder(&url)
        .table(&table)
        .create_table(true)
        .build()?;
    // Fail fast on a table of the wrong shape; a transient error means "unreachable"
    // (the shipper would retry it).
    futures::executor::block_on(sink.check())?;

    let wal: Wal<LocalDisk> = Wal::open(
        LocalDisk::open(&dir)?,
        Options::default().schema::<AuditRecord>(),
    )?;
    let shipper = Shipper::<_, AuditRecord>::builder(wal.consumer("postgres")?, sink).build()?;
    let running = shipper.spawn_on_thread()?;

    let records: Vec<AuditRecord> = (0..count)
        .map(|i| AuditRecord {
            ts: now_ms(),
            service: "billing".into(),
            actor: format!("user-{}", i % 7),
            action: "invoice.read".into(),
            resource: format!("invoice/{i}"),
            outcome: "success".into(),
            ctx: None,
            data: None,
            tenant: None,
        })
        .collect();
    let last = if records.is_empty() {
        wal.durable_seq()
    } else {
        futures::executor::block_on(wal.append_batch(&records))?.end - 1
    };
    if !running
        .handle()
        .wait_committed_timeout(last, Duration::from_secs(60))
    {
        return Err(format!("not shipped within 60 s: {:?}", running.handle().status()).into());
    }
    let status = running.shutdown()?;
    println!(
        "shipped through seq {} into {table} ({} records acknowledged in {} batches)",
        status.committed_seq, status.records_acked, status.batches_acked
    );
    futures::executor::block_on(wal.close())?;
    Ok(())
}
