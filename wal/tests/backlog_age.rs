//! Backlog age: per consumer, how long ago the first record after its checkpoint was
//! appended; the WAL's figure is the largest. Exact (to the grain) for records appended
//! since open; after a reopen, an upper bound (the age of the record's segment).

use std::time::{Duration, Instant};

use futures::executor::block_on;
use walspool_wal::{ConsumerMetrics, Memory, Metrics, Options, Wal};

fn consumer<'m>(m: &'m Metrics, name: &str) -> &'m ConsumerMetrics {
    m.consumers.iter().find(|c| c.name == name).unwrap()
}

#[test]
fn per_consumer_backlog_age() {
    let mem = Memory::new();
    let wal = Wal::open(mem.clone(), Options::default()).unwrap();
    let a = wal.consumer("a").unwrap();
    let b = wal.consumer("b").unwrap();
    assert_eq!(wal.metrics().oldest_unshipped_age_ms, 0, "nothing appended");

    let t1 = Instant::now();
    let first = block_on(wal.append(&1u64)).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let t2 = Instant::now();
    let second = block_on(wal.append_batch(&[2u64, 3, 4])).unwrap().start;
    block_on(a.commit(first)).unwrap();

    let m = wal.metrics();
    let (age_a, age_b) = (
        consumer(&m, "a").backlog_age_ms,
        consumer(&m, "b").backlog_age_ms,
    );
    // b has not committed the first record: its age is that record's, ±10 ms grain
    // (the figure never understates the age).
    assert!(age_b >= 400, "b {age_b}");
    assert!(age_b <= t1.elapsed().as_millis() as u64 + 10, "b {age_b}");
    // a committed it: its oldest unshipped record is the second batch, 400 ms younger.
    assert!(age_a <= t2.elapsed().as_millis() as u64 + 10, "a {age_a}");
    assert!(age_b >= age_a + 390, "a {age_a} b {age_b}");
    assert_eq!(m.oldest_unshipped_age_ms, age_b);
    assert_eq!(consumer(&m, "a").committed_seq, first);

    // Everything committed: no age.
    block_on(a.commit(second + 2)).unwrap();
    block_on(b.commit(second + 2)).unwrap();
    let m = wal.metrics();
    assert_eq!(consumer(&m, "a").backlog_age_ms, 0);
    assert_eq!(consumer(&m, "b").backlog_age_ms, 0);
    assert_eq!(m.oldest_unshipped_age_ms, 0);

    // Records from before a reopen: dated by their segment, an upper bound.
    let t3 = Instant::now();
    block_on(wal.append(&5u64)).unwrap();
    block_on(wal.close()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let wal = Wal::open(mem, Options::default()).unwrap();
    let m = wal.metrics();
    let age = consumer(&m, "b").backlog_age_ms;
    assert!(age >= 200, "{age}");
    assert!(
        age >= t3.elapsed().as_millis() as u64 - 10,
        "never understated: {age}"
    );
    block_on(wal.close()).unwrap();
}

#[test]
fn without_consumers_the_oldest_record_on_disk() {
    let wal = Wal::open(Memory::new(), Options::default()).unwrap();
    block_on(wal.append(&1u64)).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    block_on(wal.append(&2u64)).unwrap();
    let age = wal.metrics().oldest_unshipped_age_ms;
    assert!((150..10_000).contains(&age), "{age}");
    block_on(wal.close()).unwrap();
}
