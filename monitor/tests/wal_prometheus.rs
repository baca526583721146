//! `Metrics::render_prometheus` of a live WAL with everything populated: two shippers
//! (one delivering, one whose sink is down and whose breaker opened), a consumer with
//! no shipper, the archiver on a `file://` store, fsyncs and a torn tail cut at open.
//! The text must carry every figure under its conventional name and pass `promtool
//! check metrics` (installed by scripts/test.sh; without it the promtool step fails
//! under CI=true and is skipped loudly otherwise).

use std::io::Write;
use std::time::{Duration, Instant};

use futures::executor::block_on;
use walspool_backends::archive::{ArchiveStore, Archiver, ArchiverOptions};
use walspool_backends::LocalDisk;
use walspool_test_support::promtool_check;
use walspool_wal::shipper::{Backoff, Batch, Breaker, FnSink, Shipper, SinkError};
use walspool_wal::{Durability, Metrics, Options, Wal};

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(30), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn opts() -> Options {
    Options::default()
        .durability(Durability::Sync)
        .segment_size(4096)
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn render_prometheus_of_a_live_wal_passes_promtool() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");

    // A first life that leaves a torn tail: garbage after the last record.
    {
        let wal = Wal::open(LocalDisk::open(&dir).unwrap(), opts()).unwrap();
        block_on(wal.append(&"before".to_string())).unwrap();
        block_on(wal.close()).unwrap();
        let newest = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .max()
            .unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(newest)
            .unwrap();
        f.write_all(&[0xAB; 100]).unwrap();
    }

    let wal = Wal::open(LocalDisk::open(&dir).unwrap(), opts()).unwrap();
    let store =
        ArchiveStore::open(&format!("file://{}", tmp.path().join("archive").display())).unwrap();
    std::fs::create_dir_all(tmp.path().join("archive")).unwrap();
    let archiver = Archiver::start(&wal, store, ArchiverOptions::default()).unwrap();
    let idle = wal.consumer("idle").unwrap();
    let ok = Shipper::builder(
        wal.consumer("ok").unwrap(),
        FnSink::new(|_: &Batch<String>| async { Ok(()) }),
    )
    .linger(Duration::from_millis(5))
    .build()
    .unwrap()
    .spawn_on_thread()
    .unwrap();
    let down = Shipper::builder(
        wal.consumer("down").unwrap(),
        FnSink::new(|_: &Batch<String>| async { Err(SinkError::transient("down for the test")) }),
    )
    .linger(Duration::from_millis(5))
    .backoff(Backoff {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(20),
        ..Backoff::default()
    })
    .breaker(Breaker {
        failure_threshold: 2,
        open_for: Duration::from_secs(60),
    })
    .build()
    .unwrap()
    .spawn_on_thread()
    .unwrap();

    let records: Vec<String> = (0..200)
        .map(|i| format!("record {i:04} {}", "x".repeat(40)))
        .collect();
    for chunk in records.chunks(20) {
        block_on(wal.append_batch(chunk)).unwrap();
    }
    let last = wal.metrics().last_seq;
    wait_until("the ok shipper to catch up", || {
        wal.metrics()
            .consumers
            .iter()
            .any(|c| c.name == "ok" && c.committed_seq == last)
    });
    wait_until("the down shipper's breaker to open", || {
        wal.metrics()
            .consumers
            .iter()
            .any(|c| c.name == "down" && c.breaker_state == "open")
    });
    block_on(archiver.sync()).unwrap();
    // The oldest unshipped record is at least this old.
    std::thread::sleep(Duration::from_millis(300));

    let m: Metrics = wal.metrics();
    let text = m.render_prometheus();
    promtool_check(&text);

    let id = format!("wal_id=\"{}\"", m.wal_id);
    let v = |name: &str| value(&text, &format!("{name}{{{id}}}"));
    assert!(v("wal_torn_tail_cut_bytes_total") > 0.0, "{text}");
    assert!(v("wal_ship_errors_total") >= 2.0);
    assert!(v("wal_last_ship_timestamp_seconds") > 1.7e9);
    assert!(v("wal_last_archive_timestamp_seconds") > 1.7e9);
    assert_eq!(v("wal_archiving"), 1.0);
    assert_eq!(v("wal_archive_lag_segments"), 0.0);
    assert!(v("wal_segments") >= 2.0, "4 KiB segments roll");
    assert_eq!(v("wal_last_seq"), last as f64);
    assert!(v("wal_backlog_age_seconds") >= 0.3);
    assert_eq!(v("wal_fsync_duration_seconds_count"), m.fsyncs_total as f64);
    assert!(m.fsyncs_total > 0);
    assert!(text.contains(&format!(
        "wal_fsync_duration_seconds_bucket{{{id},le=\"+Inf\"}} {}\n",
        m.fsyncs_total
    )));
    let base = m.segments.last().unwrap().first_seq;
    assert_eq!(v("wal_current_segment_base_seq"), base as f64);
    assert!(!text.contains("file="), "no series per segment file");

    let c = |name: &str, consumer: &str| {
        value(&text, &format!("{name}{{{id},consumer=\"{consumer}\"}}"))
    };
    assert_eq!(c("wal_consumer_backlog_records", "ok"), 0.0);
    assert_eq!(c("wal_consumer_backlog_age_seconds", "ok"), 0.0);
    assert!(c("wal_consumer_backlog_age_seconds", "idle") >= 0.3);
    assert!(c("wal_consumer_backlog_age_seconds", "down") >= 0.3);
    assert_eq!(c("wal_consumer_committed_seq", "ok"), last as f64);
    let b = |consumer: &str, st: &str| {
        value(
            &text,
            &format!("wal_breaker_state{{{id},consumer=\"{consumer}\",state=\"{st}\"}}"),
        )
    };
    assert_eq!(b("down", "open"), 1.0);
    assert_eq!(b("down", "closed"), 0.0);
    assert_eq!(b("ok", "closed"), 1.0);
    assert!(!text.contains("consumer=\"idle\",state="));

    ok.shutdown().unwrap();
    down.shutdown().unwrap();
    block_on(archiver.shutdown());
    drop(idle);
    block_on(wal.close()).unwrap();
}
