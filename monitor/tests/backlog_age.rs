//! Backlog age in the monitor: the collector takes each consumer's age from a live
//! writer where the writer's figure is exact (records appended since it opened the WAL)
//! and reads the record's own timestamp from disk otherwise (a record from before the
//! writer's open, which the writer can only bound by its segment's age).

use std::time::{Duration, Instant};

use futures::executor::block_on;
use walspool_backends::LocalDisk;
use walspool_monitor::collect::{Collector, Snapshot};
use walspool_wal::{Options, Wal};

fn opts() -> Options {
    Options::default().stats_interval(Some(Duration::from_millis(20)))
}

/// A snapshot from a live writer whose stats include `last_seq`.
fn live_snapshot(c: &mut Collector, last_seq: u64) -> Snapshot {
    let t = Instant::now();
    loop {
        let s = c.collect().unwrap();
        if s.writer.is_running() && s.metrics.last_seq == last_seq {
            return s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no fresh stats: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn age(s: &Snapshot, consumer: &str) -> u64 {
    s.metrics
        .consumers
        .iter()
        .find(|c| c.name == consumer)
        .unwrap()
        .backlog_age_ms
}

#[test]
fn per_consumer_ages_from_the_writer_and_from_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let wal = Wal::open(LocalDisk::open(&dir).unwrap(), opts()).unwrap();
    let a = wal.consumer("a").unwrap();
    let _b = wal.consumer("b").unwrap();
    // The segment is older than its first record.
    std::thread::sleep(Duration::from_millis(600));
    let before = Instant::now();
    let first = block_on(wal.append(&"one".to_string())).unwrap();
    let appended = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let last = block_on(wal.append(&"two".to_string())).unwrap();
    block_on(a.commit(first)).unwrap();

    // Live, appended since open: the writer's figures.
    let mut c = Collector::new(&dir);
    let s = live_snapshot(&mut c, last);
    let (age_a, age_b) = (age(&s, "a"), age(&s, "b"));
    assert!(
        age_b >= 300 && age_b <= before.elapsed().as_millis() as u64 + 20,
        "b {age_b}"
    );
    assert!(age_a + 250 <= age_b, "a {age_a} b {age_b}");
    assert_eq!(s.consumer_oldest_ts_ms.len(), 2);
    assert_eq!(
        s.taken_ms - s.oldest_unshipped_ts_ms,
        age_b,
        "the WAL's age is the oldest consumer's"
    );

    // Reopened: b's oldest record predates the writer's open. The writer bounds its age
    // by the segment's (600 ms more); the collector reads the record's own time.
    block_on(wal.close()).unwrap();
    let wal = Wal::open(LocalDisk::open(&dir).unwrap(), opts()).unwrap();
    let writers = wal.metrics();
    let writer_b = writers
        .consumers
        .iter()
        .find(|c| c.name == "b")
        .unwrap()
        .backlog_age_ms;
    assert!(
        writer_b >= appended.elapsed().as_millis() as u64 + 500,
        "writer {writer_b}"
    );
    assert!(
        writers.backlog_age_exact_from_seq == 0,
        "nothing appended since open"
    );
    let s = live_snapshot(&mut c, last);
    let b = age(&s, "b");
    let (young, old) = (
        appended.elapsed().as_millis() as u64,
        before.elapsed().as_millis() as u64,
    );
    assert!(
        b + 20 >= young && b <= old + 20,
        "collector {b}, record {young}..{old} ms old"
    );
    block_on(wal.close()).unwrap();

    // Not running: from disk, still per consumer.
    let s = Collector::new(&dir).collect().unwrap();
    assert!(s.from_disk);
    assert!(
        age(&s, "b") >= 300 && age(&s, "a") + 250 <= age(&s, "b"),
        "{s:?}"
    );
}
