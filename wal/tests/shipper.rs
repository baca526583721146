//! Shipper acceptance tests: a flaky sink, a long outage, poison records, clean
//! shutdown, several shippers on one WAL. No timing assertions: every wait is "until
//! this holds, or fail after a generous deadline".

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use walspool_wal::shipper::{
    Backoff, Batch, BreakerState, DeadLetter, FnSink, IdempotencyKey, Shipper, ShipperHandle, Sink,
    SinkError,
};
use walspool_wal::{Durability, Memory, Options, Wal};

const DEADLINE: Duration = Duration::from_secs(60);

/// Waits until `f` holds; panics with `what` after [`DEADLINE`].
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < DEADLINE, "gave up waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn quick_breaker() -> walspool_wal::shipper::Breaker {
    walspool_wal::shipper::Breaker {
        failure_threshold: 5,
        open_for: Duration::from_millis(20),
    }
}

fn fast_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(1),
        max: Duration::from_millis(5),
        max_retry_after: Duration::from_millis(50),
    }
}

/// xorshift, seeded: reproducible randomness without a dependency.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Acked,
    /// The sink kept the records, then reported a failure (or hung past the timeout).
    KeptThenFailed,
    /// The sink did not keep the records.
    Failed,
}

#[derive(Debug, Clone)]
struct Call {
    seqs: Vec<u64>,
    outcome: Outcome,
}

/// What a test sink saw: every call in order, and what it kept, deduplicated by key.
#[derive(Debug, Default)]
struct Seen {
    calls: Vec<Call>,
    kept: Vec<u64>,
    unique: HashSet<IdempotencyKey>,
    deduped: Vec<u64>,
}

impl Seen {
    fn keep(&mut self, batch_keys: &[IdempotencyKey]) {
        for k in batch_keys {
            self.kept.push(k.seq);
            if self.unique.insert(k.clone()) {
                self.deduped.push(k.seq);
            }
        }
    }
}

/// The checks every at-least-once test makes on what a sink saw.
fn check_delivery(seen: &Seen, expected: &[u64], wal_id: &str) {
    // Every record arrived, and deduplication by key leaves each exactly once, in order.
    assert_eq!(
        seen.deduped, expected,
        "deduplicated deliveries are not exactly the records in order"
    );
    assert!(
        seen.unique.iter().all(|k| &*k.wal_id == wal_id),
        "a key names another WAL"
    );
    // Each call is in sequence order, and no call skips ahead of what was acknowledged.
    let mut acked_through = 0u64;
    for c in &seen.calls {
        assert!(
            c.seqs.windows(2).all(|w| w[0] < w[1]),
            "a batch is out of order: {:?}",
            c.seqs
        );
        let next_expected = expected.iter().copied().find(|&s| s > acked_through);
        if let (Some(&first), Some(next)) = (c.seqs.first(), next_expected) {
            assert!(
                first <= next,
                "a batch starts at {first} but {next} was not acknowledged yet"
            );
        }
        if c.outcome == Outcome::Acked {
            acked_through = acked_through.max(c.seqs.last().copied().unwrap_or(0));
        }
    }
    // Duplicates only around failures: a record kept twice was kept by a call that
    // then failed.
    let around_failures: HashSet<u64> = seen
        .calls
        .iter()
        .filter(|c| c.outcome == Outcome::KeptThenFailed)
        .flat_map(|c| c.seqs.iter().copied())
        .collect();
    let mut counts: HashMap<u64, usize> = HashMap::new();
    for s in &seen.kept {
        *counts.entry(*s).or_default() += 1;
    }
    for (seq, n) in counts {
        if n > 1 {
            assert!(
                around_failures.contains(&seq),
                "record {seq} was delivered {n} times without a failure around it"
            );
        }
    }
}

/// A sink that fails about 30% of calls: plain failures, hangs past the timeout (half
/// of them after keeping the batch), acknowledge-then-fail, and retry-after hints.
fn flaky_sink(seed: u64, seen: Arc<Mutex<Seen>>) -> impl Sink<u64> {
    let mut rng = Rng(seed);
    FnSink::new(move |batch: &Batch<u64>| {
        let keys: Vec<IdempotencyKey> = batch.keys().collect();
        let seqs: Vec<u64> = keys.iter().map(|k| k.seq).collect();
        let roll = rng.below(100);
        let seen = seen.clone();
        async move {
            let outcome = match roll {
                0..=9 => Outcome::Failed,
                10..=14 => Outcome::KeptThenFailed,
                15..=19 => Outcome::Failed, // hangs without keeping
                20..=24 => Outcome::KeptThenFailed, // keeps, then hangs
                25..=29 => Outcome::Failed, // retry-after
                _ => Outcome::Acked,
            };
            {
                let mut s = seen.lock().unwrap();
                if outcome != Outcome::Failed {
                    s.keep(&keys);
                }
                s.calls.push(Call { seqs, outcome });
            }
            match roll {
                0..=14 => Err(SinkError::transient("flaky")),
                15..=24 => {
                    futures::future::pending::<()>().await;
                    unreachable!()
                }
                25..=29 => Err(SinkError::retry_after("busy", Duration::from_millis(3))),
                _ => Ok(()),
            }
        }
    })
}

fn open_wal() -> Wal<Memory> {
    Wal::open(Memory::new(), Options::default().segment_size(64 << 10)).unwrap()
}

#[test]
fn flaky_sinks_get_every_record_at_least_once_in_order_with_two_shippers() {
    let wal = open_wal();
    let total: u64 = 6000;

    // Shipper A runs on a tokio runtime, shipper B on walspool's own thread.
    let seen_a = Arc::new(Mutex::new(Seen::default()));
    let seen_b = Arc::new(Mutex::new(Seen::default()));
    let a = Shipper::builder(
        wal.consumer("sink-a").unwrap(),
        flaky_sink(0x9E3779B97F4A7C15, seen_a.clone()),
    )
    .batch_max(150)
    .linger(Duration::from_millis(1))
    .send_timeout(Duration::from_millis(30))
    .backoff(fast_backoff())
    .breaker(quick_breaker())
    .build()
    .expect("valid shipper configuration");
    let b = Shipper::builder(
        wal.consumer("sink-b").unwrap(),
        flaky_sink(0xD1B54A32D192ED03, seen_b.clone()),
    )
    .batch_max(128)
    .batch_max_bytes(512)
    .linger(Duration::ZERO)
    .send_timeout(Duration::from_millis(30))
    .backoff(fast_backoff())
    .breaker(quick_breaker())
    .build()
    .expect("valid shipper configuration");
    let handle_a = a.handle();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let task_a = rt.spawn(a.run());
    let thread_b = b.spawn_on_thread().unwrap();

    // Appends run while shipping goes on.
    let w = wal.clone();
    let appender = std::thread::spawn(move || {
        futures::executor::block_on(async {
            let mut next = 1u64;
            while next <= total {
                let n = (next % 97 + 1).min(total - next + 1);
                let recs: Vec<u64> = (next..next + n).collect();
                w.append_batch(&recs).await.unwrap();
                next += n;
            }
        })
    });
    appender.join().unwrap();

    assert!(
        handle_a.wait_committed_timeout(total, DEADLINE),
        "shipper A did not commit everything"
    );
    assert!(
        thread_b.handle().wait_committed_timeout(total, DEADLINE),
        "shipper B did not commit everything"
    );
    handle_a.request_shutdown();
    let status_a = rt.block_on(task_a).unwrap().unwrap();
    let status_b = thread_b.shutdown().unwrap();

    let expected: Vec<u64> = (1..=total).collect();
    check_delivery(&seen_a.lock().unwrap(), &expected, wal.id());
    check_delivery(&seen_b.lock().unwrap(), &expected, wal.id());
    // The values are the sequence numbers here, so order by key is order of records.

    for (status, seen) in [(&status_a, &seen_a), (&status_b, &seen_b)] {
        let seen = seen.lock().unwrap();
        let failed = seen
            .calls
            .iter()
            .filter(|c| c.outcome != Outcome::Acked)
            .count() as u64;
        assert!(failed > 0, "the flaky sink never failed");
        assert_eq!(status.failed_attempts, failed, "failed attempts miscounted");
        assert!(status.timeouts > 0, "no call hung past the timeout");
        assert_eq!(status.committed_seq, total);
        assert!(!status.running);
        assert!(status.records_acked >= total);
        assert_eq!(status.dead_lettered, 0);
    }
    // Byte limit: B's batches carry at most 512 payload bytes (u64 varints: 1..=3 bytes).
    assert!(seen_b
        .lock()
        .unwrap()
        .calls
        .iter()
        .all(|c| c.seqs.len() <= 512 && !c.seqs.is_empty()));

    eprintln!("shipper A: {status_a:?}\nshipper B: {status_b:?}");
    let m = wal.metrics();
    assert_eq!(
        m.ship_errors_total,
        status_a.failed_attempts + status_b.failed_attempts
    );
    assert!(m.last_ship_ts > 0, "last_ship_ts was never set");
    assert_eq!(m.backlog_records, 0);
    assert_eq!(wal.consumer("sink-a").unwrap().committed(), total);
    assert_eq!(wal.consumer("sink-b").unwrap().committed(), total);
    futures::executor::block_on(wal.close()).unwrap();
}

#[test]
fn long_outage_opens_the_breaker_then_half_opens_and_drains_after() {
    let wal = open_wal();
    let down = Arc::new(AtomicBool::new(true));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let states_seen_by_sink = Arc::new(Mutex::new(BTreeSet::new()));
    let sink = {
        let (down, seen, states, wal) = (
            down.clone(),
            seen.clone(),
            states_seen_by_sink.clone(),
            wal.clone(),
        );
        FnSink::new(move |batch: &Batch<u64>| {
            let keys: Vec<IdempotencyKey> = batch.keys().collect();
            states.lock().unwrap().insert(wal.metrics().breaker_state);
            let is_down = down.load(Ordering::SeqCst);
            let mut s = seen.lock().unwrap();
            let seqs = keys.iter().map(|k| k.seq).collect();
            if is_down {
                s.calls.push(Call {
                    seqs,
                    outcome: Outcome::Failed,
                });
            } else {
                s.keep(&keys);
                s.calls.push(Call {
                    seqs,
                    outcome: Outcome::Acked,
                });
            }
            async move {
                if is_down {
                    Err(SinkError::transient("connection refused"))
                } else {
                    Ok(())
                }
            }
        })
    };
    let shipper = Shipper::builder(wal.consumer("ingest").unwrap(), sink)
        .batch_max(100)
        .linger(Duration::ZERO)
        .backoff(fast_backoff())
        .breaker(walspool_wal::shipper::Breaker {
            failure_threshold: 3,
            open_for: Duration::from_millis(40),
        })
        .build()
        .expect("valid shipper configuration");
    let running = shipper.spawn_on_thread().unwrap();
    let handle = running.handle().clone();

    let append = |from: u64, to: u64| {
        let recs: Vec<u64> = (from..=to).collect();
        futures::executor::block_on(wal.append_batch(&recs)).unwrap();
    };
    append(1, 500);
    wait_until("the breaker opens", || {
        wal.metrics().breaker_state == "open"
    });
    let backlog_1 = wal.metrics().backlog_records;
    append(501, 1500);
    wait_until("the breaker has been half-open twice", || {
        handle.status().breaker_half_opened >= 2
    });
    let backlog_2 = wal.metrics().backlog_records;
    assert_eq!(
        backlog_1, 500,
        "something was committed while the sink was down"
    );
    assert_eq!(
        backlog_2, 1500,
        "the backlog did not grow to every appended record"
    );
    assert_eq!(wal.consumer("ingest").unwrap().committed(), 0);
    assert!(
        states_seen_by_sink.lock().unwrap().contains("half-open"),
        "no trial call was made in the half-open state"
    );
    let status = handle.status();
    assert!(
        status.breaker_opened >= 2,
        "the breaker did not re-open after a failed trial"
    );
    // While open, no call reaches the sink: calls are far fewer than a tight retry loop.
    let calls_down = seen.lock().unwrap().calls.len() as u64;
    assert_eq!(calls_down, status.failed_attempts);

    down.store(false, Ordering::SeqCst);
    assert!(
        handle.wait_committed_timeout(1500, DEADLINE),
        "the backlog did not drain"
    );
    append(1501, 1600);
    assert!(handle.wait_committed_timeout(1600, DEADLINE));
    let final_status = running.shutdown().unwrap();

    let expected: Vec<u64> = (1..=1600).collect();
    check_delivery(&seen.lock().unwrap(), &expected, wal.id());
    assert_eq!(
        seen.lock().unwrap().kept,
        expected,
        "no duplicates expected: the sink never kept a failed batch"
    );
    assert_eq!(final_status.breaker, BreakerState::Closed);
    let m = wal.metrics();
    assert_eq!(m.breaker_state, "closed");
    assert_eq!(m.backlog_records, 0);
    assert_eq!(m.ship_errors_total, final_status.failed_attempts);
    assert_eq!(m.dropped_records_total, 0);
}

/// Values 42 mod 100 are refused per record; 777 makes the sink refuse the whole batch.
fn picky_sink(seen: Arc<Mutex<Seen>>, accept_all: Arc<AtomicBool>) -> impl Sink<u64> + Clone {
    #[derive(Clone)]
    struct Picky(Arc<Mutex<Seen>>, Arc<AtomicBool>);
    #[async_trait::async_trait]
    impl Sink<u64> for Picky {
        async fn send(&mut self, batch: &Batch<u64>) -> Result<(), SinkError> {
            let all = self.1.load(Ordering::SeqCst);
            let mut s = self.0.lock().unwrap();
            let seqs: Vec<u64> = batch.entries().iter().map(|e| e.seq).collect();
            if !all {
                if let Some(e) = batch.entries().iter().find(|e| e.record % 100 == 42) {
                    s.calls.push(Call {
                        seqs,
                        outcome: Outcome::Failed,
                    });
                    return Err(SinkError::record(
                        e.seq,
                        format!("value {} is invalid", e.record),
                    ));
                }
                if batch.entries().iter().any(|e| e.record == 777) {
                    s.calls.push(Call {
                        seqs,
                        outcome: Outcome::Failed,
                    });
                    return Err(SinkError::batch("400 Bad Request"));
                }
            }
            let keys: Vec<IdempotencyKey> = batch.keys().collect();
            s.keep(&keys);
            s.calls.push(Call {
                seqs,
                outcome: Outcome::Acked,
            });
            Ok(())
        }
    }
    Picky(seen, accept_all)
}

#[test]
fn poison_records_go_to_the_dead_letter_and_the_rest_flows() {
    let wal = open_wal();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let accept_all = Arc::new(AtomicBool::new(false));
    let mut sink = picky_sink(seen.clone(), accept_all.clone());

    let records: Vec<u64> = (1..=1000).collect();
    futures::executor::block_on(wal.append_batch(&records)).unwrap();
    // A record that is not a u64 at all (an over-long varint).
    let bad = futures::executor::block_on(wal.append_payloads(vec![vec![0xff; 11]]))
        .unwrap()
        .start;
    let more: Vec<u64> = (bad + 1..=bad + 100).collect(); // values = sequence numbers
    futures::executor::block_on(wal.append_batch(&more)).unwrap();
    let last = wal.last_seq();

    let shipper = Shipper::builder(wal.consumer("picky").unwrap(), sink.clone())
        .batch_max(64)
        .linger(Duration::ZERO)
        .backoff(fast_backoff())
        .poison_attempts(3)
        .build()
        .expect("valid shipper configuration");
    let handle = shipper.handle();
    let status = futures::executor::block_on(async {
        let run = shipper.run();
        let stop = async {
            handle.wait_committed(last).await;
            handle.request_shutdown();
        };
        futures::join!(run, stop).0
    })
    .unwrap();

    let poison_seqs: Vec<u64> = {
        let mut v: Vec<u64> = records
            .iter()
            .chain(&more)
            .copied()
            .filter(|v| v % 100 == 42)
            .collect();
        v.push(777);
        v.push(bad);
        v.sort();
        v
    };
    let letters: Vec<DeadLetter> = wal.dead_letters("picky").unwrap();
    assert_eq!(
        letters.iter().map(|l| l.seq).collect::<Vec<_>>(),
        poison_seqs
    );
    for l in &letters {
        assert_eq!(l.consumer, "picky");
        assert_eq!(l.wal_id, wal.id());
        if l.seq == bad {
            assert_eq!(l.attempts, 0, "an undecodable record is not sent");
            assert!(l.reason.contains("does not decode"), "reason: {}", l.reason);
            assert!(l.decode::<u64>().is_err());
        } else {
            assert_eq!(
                l.attempts, 3,
                "record {} dead-lettered after {} attempts",
                l.seq, l.attempts
            );
            assert_eq!(l.decode::<u64>().unwrap(), l.seq);
        }
    }
    let n = poison_seqs.len() as u64;
    assert_eq!(status.dead_lettered, n);
    assert_eq!(wal.metrics().dead_letter_total, n);
    assert_eq!(status.committed_seq, last);

    // The records behind the poison flowed, each exactly once after dedupe, in order.
    let expected: Vec<u64> = (1..=last).filter(|s| !poison_seqs.contains(s)).collect();
    check_delivery(&seen.lock().unwrap(), &expected, wal.id());

    // Re-drive: the sink now accepts everything; the undecodable record stays.
    accept_all.store(true, Ordering::SeqCst);
    let r = futures::executor::block_on(wal.redrive_dead_letters::<u64, _>("picky", &mut sink))
        .unwrap();
    assert_eq!(r.delivered, n - 1);
    assert_eq!(r.remaining, 1);
    let left = wal.dead_letters("picky").unwrap();
    assert_eq!(left.iter().map(|l| l.seq).collect::<Vec<_>>(), vec![bad]);
    let redriven: BTreeSet<u64> = seen
        .lock()
        .unwrap()
        .deduped
        .iter()
        .copied()
        .filter(|s| poison_seqs.contains(s))
        .collect();
    assert_eq!(redriven.len() as u64, n - 1);
    wal.remove_dead_letter("picky", bad).unwrap();
    assert!(wal.dead_letters("picky").unwrap().is_empty());
    // The counter is a history: it does not go down on re-drive.
    assert_eq!(wal.metrics().dead_letter_total, n);
}

#[test]
fn dead_letters_can_go_to_another_wal() {
    let wal = open_wal();
    let dlq = open_wal();
    futures::executor::block_on(wal.append_batch(&[1u64, 42, 3])).unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shipper = Shipper::builder(
        wal.consumer("c").unwrap(),
        picky_sink(seen.clone(), Arc::new(AtomicBool::new(false))),
    )
    .linger(Duration::ZERO)
    .backoff(fast_backoff())
    .poison_attempts(2)
    .dead_letter(Arc::new(dlq.clone()))
    .build()
    .expect("valid shipper configuration");
    let t = shipper.spawn_on_thread().unwrap();
    assert!(t.handle().wait_committed_timeout(3, DEADLINE));
    t.shutdown().unwrap();
    let letters: Vec<DeadLetter> = futures::executor::block_on(async {
        use futures::StreamExt;
        dlq.read_range::<DeadLetter>(1, 1)
            .map(|r| r.unwrap().record)
            .collect()
            .await
    });
    assert_eq!(letters.len(), 1);
    assert_eq!((letters[0].seq, letters[0].attempts), (2, 2));
    assert_eq!(letters[0].decode::<u64>().unwrap(), 42);
    assert!(
        wal.dead_letters("c").unwrap().is_empty(),
        "the default store was used anyway"
    );
    assert_eq!(seen.lock().unwrap().deduped, vec![1, 3]);
    assert_eq!(wal.metrics().dead_letter_total, 1);
}

#[test]
fn shutdown_mid_batch_loses_nothing_and_resends_at_most_the_in_flight_batch() {
    let wal = Wal::open(
        Memory::new(),
        Options::default().durability(Durability::Sync),
    )
    .unwrap();
    let records: Vec<u64> = (1..=2000).collect();
    futures::executor::block_on(wal.append_batch(&records)).unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let calls = Arc::new(AtomicU64::new(0));
    let slow_sink = |seen: Arc<Mutex<Seen>>, calls: Arc<AtomicU64>| {
        FnSink::new(move |batch: &Batch<u64>| {
            let keys: Vec<IdempotencyKey> = batch.keys().collect();
            let (seen, calls) = (seen.clone(), calls.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                futures_timer::Delay::new(Duration::from_millis(20)).await;
                let mut s = seen.lock().unwrap();
                s.keep(&keys);
                s.calls.push(Call {
                    seqs: keys.iter().map(|k| k.seq).collect(),
                    outcome: Outcome::Acked,
                });
                Ok(())
            }
        })
    };
    let first = Shipper::builder(
        wal.consumer("c").unwrap(),
        slow_sink(seen.clone(), calls.clone()),
    )
    .batch_max(100)
    .linger(Duration::ZERO)
    .build()
    .expect("valid shipper configuration");
    let t = first.spawn_on_thread().unwrap();
    wait_until("a few batches went through", || {
        calls.load(Ordering::SeqCst) >= 4
    });
    let stopped = t.shutdown().unwrap();
    assert_eq!(stopped.in_flight, None);
    let committed = wal.consumer("c").unwrap().committed();
    assert_eq!(committed, stopped.committed_seq);
    assert!(
        committed < 2000,
        "the first shipper finished before it was stopped"
    );
    let delivered_before = seen.lock().unwrap().kept.clone();
    // The attempt in flight at shutdown finished and was committed: nothing delivered
    // is uncommitted.
    assert_eq!(delivered_before.last().copied(), Some(committed));

    let second = Shipper::builder(
        wal.consumer("c").unwrap(),
        slow_sink(seen.clone(), calls.clone()),
    )
    .batch_max(500)
    .linger(Duration::ZERO)
    .build()
    .expect("valid shipper configuration");
    let h: ShipperHandle = second.handle();
    let t2 = second.spawn_on_thread().unwrap();
    assert!(h.wait_committed_timeout(2000, DEADLINE));
    t2.shutdown().unwrap();
    let s = seen.lock().unwrap();
    assert_eq!(
        s.kept, records,
        "a committed record was sent again, or one was lost"
    );
    check_delivery(&s, &records, wal.id());
}

#[test]
fn a_closed_wal_ends_the_shipper_without_committing_what_it_cannot() {
    let wal = open_wal();
    futures::executor::block_on(wal.append_batch(&[1u64, 2, 3])).unwrap();
    let shipper = Shipper::builder(
        wal.consumer("c").unwrap(),
        FnSink::new(|_: &Batch<u64>| async { Err(SinkError::transient("down")) }),
    )
    .backoff(fast_backoff())
    .build()
    .expect("valid shipper configuration");
    let handle = shipper.handle();
    let t = shipper.spawn_on_thread().unwrap();
    wait_until("a failure", || handle.status().failed_attempts > 0);
    futures::executor::block_on(wal.close()).unwrap();
    handle.request_shutdown();
    let st = t.shutdown().unwrap();
    assert_eq!(st.committed_seq, 0);
    assert!(!st.running);
}

#[test]
fn ship_errors_total_survives_a_reopen() {
    let storage = Memory::new();
    let wal = Wal::open(storage.clone(), Options::default()).unwrap();
    wal.hooks().record_ship_error();
    wal.hooks().record_ship_error();
    drop(wal);
    let wal = Wal::open(storage, Options::default()).unwrap();
    assert_eq!(wal.metrics().ship_errors_total, 2);
}

/// Throughput to a no-op sink (records/s). Runs only with `WALSPOOL_SHIP_BENCH=1`, in
/// release mode:
/// `WALSPOOL_SHIP_BENCH=1 cargo test --release -p walspool-wal --test shipper -- --nocapture measure`
#[test]
fn measure_noop_sink_throughput() {
    if std::env::var_os("WALSPOOL_SHIP_BENCH").is_none() {
        return;
    }
    let total = 1_000_000u64;
    let wal = Wal::open(Memory::new(), Options::default()).unwrap();
    let recs: Vec<(u64, String)> = (1..=total).map(|i| (i, format!("event {i} with a payload of roughly one hundred bytes, as audit lines tend to be"))).collect();
    for chunk in recs.chunks(20_000) {
        futures::executor::block_on(wal.append_batch(chunk)).unwrap();
    }
    drop(recs);
    let bytes = wal.metrics().appended_bytes_total;
    for batch_max in [2000usize, 200] {
        let name = format!("noop-{batch_max}");
        let shipper = Shipper::builder(
            wal.consumer(&name).unwrap(),
            FnSink::new(|_: &Batch<(u64, String)>| async { Ok(()) }),
        )
        .batch_max(batch_max)
        .build()
        .expect("valid shipper configuration");
        let start = Instant::now();
        let t = shipper.spawn_on_thread().unwrap();
        assert!(t.handle().wait_committed_timeout(total, DEADLINE));
        let secs = start.elapsed().as_secs_f64();
        let st = t.shutdown().unwrap();
        println!(
            "no-op sink, batch_max {batch_max}: {total} records ({:.0} MB payload) in {secs:.2}s = {:.0} records/s, {} batches",
            bytes as f64 / 1e6,
            total as f64 / secs,
            st.batches_acked
        );
    }
}

/// A record that does not decode, last in the log, right after a good batch: the
/// checkpoint moves past it once the batch is delivered, without waiting for another
/// record (it used to stop at the batch's last record until one came).
#[test]
fn an_undecodable_record_at_the_end_is_committed_past() {
    let wal = open_wal();
    futures::executor::block_on(wal.append_batch(&[1u64, 2, 3])).unwrap();
    let bad = futures::executor::block_on(wal.append_payloads(vec![vec![0xff; 11]]))
        .unwrap()
        .start;
    let sink = FnSink::new(|_: &Batch<u64>| async { Ok(()) });
    let t = Shipper::builder(wal.consumer("tail").unwrap(), sink)
        .linger(Duration::from_millis(20))
        .build()
        .expect("valid shipper configuration")
        .spawn_on_thread()
        .unwrap();
    assert!(
        t.handle().wait_committed_timeout(bad, DEADLINE),
        "{:?}",
        t.handle().status()
    );
    let status = t.shutdown().unwrap();
    assert_eq!(status.committed_seq, bad);
    assert_eq!(status.dead_lettered, 1);
    assert_eq!(wal.dead_letters("tail").unwrap().len(), 1);
}

/// Invalid settings are refused by `build`, never silently adjusted.
#[test]
fn shipper_builder_refuses_invalid_settings() {
    let wal = open_wal();
    let sink = || FnSink::new(|_: &Batch<u64>| async { Ok(()) });
    let c = || wal.consumer("cfg").unwrap();
    let err = |b: walspool_wal::shipper::ShipperBuilder<Memory, u64>| match b.build() {
        Err(walspool_wal::Error::Config(m)) => m,
        other => panic!("expected a configuration error, got {other:?}"),
    };
    assert!(err(Shipper::builder(c(), sink()).batch_max(0)).contains("batch_max"));
    assert!(err(Shipper::builder(c(), sink()).batch_max_bytes(0)).contains("batch_max_bytes"));
    assert!(err(Shipper::builder(c(), sink()).poison_attempts(0)).contains("poison_attempts"));
    assert!(
        err(Shipper::builder(c(), sink()).send_timeout(Duration::ZERO)).contains("send_timeout")
    );
    assert!(err(
        Shipper::builder(c(), sink()).breaker(walspool_wal::shipper::Breaker {
            failure_threshold: 0,
            open_for: Duration::from_secs(1),
        })
    )
    .contains("failure_threshold"));
    assert!(err(Shipper::builder(c(), sink()).backoff(Backoff {
        initial: Duration::from_secs(2),
        max: Duration::from_secs(1),
        max_retry_after: Duration::from_secs(1),
    }))
    .contains("backoff"));
    assert!(Shipper::builder(c(), sink()).batch_max(1).build().is_ok());
}

/// A sink that keeps figures of its own (`Sink::metrics_source`) has them read live into
/// the WAL's consumer metrics, the stats file's figures; a sink without them (FnSink)
/// leaves `sink` empty. The `Box<dyn Sink>` the shipper holds forwards the source.
#[test]
fn sink_figures_reach_the_consumer_metrics() {
    #[derive(Default)]
    struct Figures {
        in_flight: AtomicU64,
        per_kind: Mutex<std::collections::BTreeMap<String, u64>>,
    }
    struct Counting(Arc<Figures>);
    #[async_trait::async_trait]
    impl Sink<u64> for Counting {
        async fn send(&mut self, batch: &Batch<u64>) -> Result<(), SinkError> {
            self.0.in_flight.store(batch.len() as u64, Ordering::SeqCst);
            let mut per = self.0.per_kind.lock().unwrap();
            for e in batch.entries() {
                let dest = if e.record % 2 == 0 { "even" } else { "odd" };
                *per.entry(dest.to_string()).or_default() += 1;
            }
            self.0.in_flight.store(0, Ordering::SeqCst);
            Ok(())
        }
        fn metrics_source(&self) -> Option<walspool_wal::shipper::SinkMetricsSource> {
            let f = self.0.clone();
            Some(Arc::new(move || {
                let per = f.per_kind.lock().unwrap().clone();
                walspool_wal::SinkMetrics::new("counting")
                    .in_flight(f.in_flight.load(Ordering::SeqCst))
                    .stored(per.values().sum())
                    .latency_us(10, 20, 30)
                    .per_destination(per)
            }))
        }
    }

    let wal = open_wal();
    let records: Vec<u64> = (1..=101).collect();
    futures::executor::block_on(wal.append_batch(&records)).unwrap();
    let figures = Arc::new(Figures::default());
    let boxed: Box<dyn Sink<u64>> = Box::new(Counting(figures.clone()));
    let counted = Shipper::builder(wal.consumer("counted").unwrap(), boxed)
        .batch_max(16)
        .linger(Duration::ZERO)
        .build()
        .unwrap()
        .spawn_on_thread()
        .unwrap();
    let plain = Shipper::builder(
        wal.consumer("plain").unwrap(),
        FnSink::new(|_: &Batch<u64>| async { Ok(()) }),
    )
    .build()
    .unwrap()
    .spawn_on_thread()
    .unwrap();
    assert!(counted
        .handle()
        .wait_committed_timeout(101, Duration::from_secs(30)));
    assert!(plain
        .handle()
        .wait_committed_timeout(101, Duration::from_secs(30)));
    let m = wal.metrics();
    let c = |name: &str| m.consumers.iter().find(|c| c.name == name).unwrap().clone();
    let sink = c("counted").sink.expect("the counting sink's figures");
    assert_eq!(sink.kind, "counting");
    assert_eq!((sink.stored, sink.in_flight, sink.failed), (101, 0, 0));
    assert_eq!((sink.p50_us, sink.p99_us, sink.max_us), (10, 20, 30));
    assert_eq!(
        sink.per_destination,
        [("even".to_string(), 50), ("odd".to_string(), 51)].into()
    );
    assert_eq!(c("plain").sink, None, "FnSink keeps no figures");
    // Live: a change in the sink shows in the next snapshot, and after shutdown the
    // last figures stay.
    figures.in_flight.store(7, Ordering::SeqCst);
    assert_eq!(
        wal.metrics().consumers[0].sink.as_ref().unwrap().in_flight,
        7
    );
    counted.shutdown().unwrap();
    plain.shutdown().unwrap();
    let after = wal.metrics();
    assert_eq!(after.consumers[0].sink.as_ref().unwrap().stored, 101);
    // The figures survive the stats file's JSON, and a file written before the field
    // existed still parses (no `sink`).
    let json = serde_json::to_value(&after).unwrap();
    assert_eq!(json["consumers"][0]["sink"]["per_destination"]["odd"], 51);
    let mut old = json.clone();
    old["consumers"][0].as_object_mut().unwrap().remove("sink");
    let parsed: walspool_wal::Metrics = serde_json::from_value(old).unwrap();
    assert_eq!(parsed.consumers[0].sink, None);
}
