//! Shipping throughput into each sink on loopback, for BENCHMARKS.md. Measures only
//! when `WALSPOOL_MEASURE_SHIP=1` (run it in release mode):
//!
//! ```text
//! WALSPOOL_MEASURE_SHIP=1 cargo test --release -p walspool-backends --features postgres \
//!     --test ship_throughput -- --nocapture
//! ```
//!
//! One shipper (default batch of 2000, linger 5 ms) drives a WAL that already holds
//! `N` audit records into the sink; the figure is records committed per second, from
//! the shipper's start to its checkpoint reaching the last record. PostgreSQL is the
//! server in `WALSPOOL_PG_URL` (scripts/postgres.sh starts one). No assertion on time.

use std::time::{Duration, Instant};

use walspool_backends::file::{FileSink, LineFormat};
use walspool_backends::postgres::PgSink;
use walspool_wal::shipper::{Batch, FnSink, Shipper, Sink};
use walspool_wal::{Memory, Options, Wal};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Audit {
    ts: u64,
    service: String,
    actor: String,
    action: String,
    resource: String,
    outcome: String,
}

const N: u64 = 200_000;

fn ship(label: &str, sink: impl Sink<Audit> + 'static) {
    let wal = Wal::open(Memory::new(), Options::default()).unwrap();
    let records: Vec<Audit> = (1..=N)
        .map(|i| Audit {
            ts: 1_700_000_000_000 + i,
            service: "billing".into(),
            actor: format!("user-{}", i % 97),
            action: "invoice.read".into(),
            resource: format!("invoice/{i}"),
            outcome: "success".into(),
        })
        .collect();
    futures::executor::block_on(async {
        wal.consumer("m").unwrap();
        for c in records.chunks(10_000) {
            wal.append_batch(c).await.unwrap();
        }
    });
    let t = Instant::now();
    let running = Shipper::<_, Audit>::builder(wal.consumer("m").unwrap(), sink)
        .build()
        .expect("valid shipper configuration")
        .spawn_on_thread()
        .unwrap();
    assert!(running
        .handle()
        .wait_committed_timeout(N, Duration::from_secs(600)));
    let secs = t.elapsed().as_secs_f64();
    let st = running.shutdown().unwrap();
    println!(
        "| {label:<34} | {:>9.0} | {:>7} | {:>8.1} |",
        N as f64 / secs,
        st.batches_acked,
        secs * 1000.0
    );
}

#[test]
fn measure_shipping_throughput() {
    if std::env::var_os("WALSPOOL_MEASURE_SHIP").is_none() {
        eprintln!("set WALSPOOL_MEASURE_SHIP=1 to measure (release mode)");
        return;
    }
    println!("| sink (loopback)                    |  records/s | batches | total ms |");
    println!("|------------------------------------|----------:|--------:|---------:|");
    ship(
        "no-op (FnSink)",
        FnSink::new(|_: &Batch<Audit>| async { Ok(()) }),
    );
    let d = tempfile::tempdir().unwrap();
    ship(
        "file (JSON lines, fdatasync/batch)",
        FileSink::builder(d.path().join("a.jsonl"))
            .format(LineFormat::Flat)
            .build()
            .unwrap(),
    );
    match std::env::var("WALSPOOL_PG_URL") {
        Ok(url) => {
            let table = format!("measure_{}", std::process::id());
            ship(
                "PostgreSQL (unnest INSERT/batch)",
                PgSink::builder(&url)
                    .table(&table)
                    .create_table(true)
                    .build()
                    .unwrap(),
            );
        }
        Err(_) => eprintln!("WALSPOOL_PG_URL unset: PostgreSQL not measured"),
    }
}
