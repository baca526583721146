//! The PostgreSQL server is stopped (immediate shutdown, as in a crash) mid-stream and
//! started again: the shipper retries through the outage and every record lands in the
//! table exactly once. Its own test binary: it stops the server scripts/test.sh
//! started (through scripts/postgres.sh pause/resume), which no other test may see.

mod pg;

use std::time::{Duration, Instant};

use pg::{audit, counts, exec, unique_table, Audit};
use walspool_backends::postgres::PgSink;
use walspool_wal::shipper::{Backoff, Breaker, Shipper};
use walspool_wal::{Memory, Options, Wal};

const TOTAL: u64 = 30_000;

/// Starts the server again even when an assertion fails while it is down.
struct Resume;

impl Drop for Resume {
    fn drop(&mut self) {
        pg::server("resume");
    }
}

#[test]
fn server_stopped_mid_stream_and_restarted_loses_and_duplicates_nothing() {
    let Some(url) = pg::url() else { return };
    let table = unique_table("restart");
    let wal = Wal::open(Memory::new(), Options::default()).unwrap();
    let records: Vec<Audit> = (1..=TOTAL).map(audit).collect();
    futures::executor::block_on(async {
        wal.consumer("pg").unwrap();
        for chunk in records.chunks(5000) {
            wal.append_batch(chunk).await.unwrap();
        }
    });
    let sink = PgSink::builder(&url)
        .table(&table)
        .create_table(true)
        .connect_timeout(Duration::from_secs(2))
        .query_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let shipper = Shipper::<_, Audit>::builder(wal.consumer("pg").unwrap(), sink)
        .batch_max(200)
        .linger(Duration::ZERO)
        .backoff(Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            ..Backoff::default()
        })
        .breaker(Breaker {
            failure_threshold: 5,
            open_for: Duration::from_millis(300),
        })
        .build()
        .expect("valid shipper configuration");
    let running = shipper.spawn_on_thread().unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    while counts(&url, &table).0 < TOTAL as i64 / 4 {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    {
        let _resume = Resume;
        pg::server("pause");
        let before = running.handle().status();
        std::thread::sleep(Duration::from_millis(1500));
        let during = running.handle().status();
        assert!(
            during.failed_attempts > before.failed_attempts,
            "the shipper saw no failure while the server was down: {during:?}"
        );
        assert!(during.committed_seq < TOTAL, "{during:?}");
        assert_eq!(
            during.dead_lettered, 0,
            "an outage must not dead-letter: {during:?}"
        );
        eprintln!(
            "server down at committed {}: {during:?}",
            during.committed_seq
        );
    }
    assert!(
        running
            .handle()
            .wait_committed_timeout(TOTAL, Duration::from_secs(120)),
        "{:?}",
        running.handle().status()
    );
    let status = running.shutdown().unwrap();
    assert_eq!(status.dead_lettered, 0);
    assert_eq!(
        counts(&url, &table),
        (TOTAL as i64, TOTAL as i64, 1, TOTAL as i64),
        "every record exactly once"
    );
    exec(&url, &format!("DROP TABLE {table}"));
}
