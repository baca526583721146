//! The shipper overlaps a batch's checkpoint write with reading and sending the next
//! batch when a backlog waits. These tests check that the overlap never moves the
//! checkpoint past what the sink acknowledged, that it is published in order and in
//! full, and that a failing sink does not hold back the checkpoint of batches it
//! already acknowledged.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use walspool_wal::shipper::{Backoff, Batch, FnSink, Shipper, SinkError};
use walspool_wal::{Memory, Options, Wal};

const DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn checkpoint_never_passes_acknowledged_records_with_a_backlog() {
    const N: u64 = 20_000;
    let wal = Wal::open(Memory::new(), Options::default().stats_interval(None)).unwrap();
    let consumer = wal.consumer("pipe").unwrap();
    futures::executor::block_on(async {
        let recs: Vec<u64> = (1..=N).collect();
        for c in recs.chunks(1000) {
            wal.append_batch(c).await.unwrap();
        }
    });
    // The highest sequence number the sink acknowledged so far, and every record it
    // saw, in order.
    let acked = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let violations = Arc::new(Mutex::new(Vec::new()));
    let sink = {
        let (wal, acked, seen, violations) =
            (wal.clone(), acked.clone(), seen.clone(), violations.clone());
        FnSink::new(move |batch: &Batch<u64>| {
            // The checkpoint, read while this batch is being sent: never beyond what
            // was acknowledged before it.
            let committed = wal.consumer("pipe").unwrap().committed();
            let before = acked.load(Ordering::SeqCst);
            if committed > before || committed >= batch.first_seq() {
                violations
                    .lock()
                    .unwrap()
                    .push((committed, before, batch.first_seq()));
            }
            seen.lock()
                .unwrap()
                .extend(batch.entries().iter().map(|e| e.record));
            acked.store(batch.last_seq(), Ordering::SeqCst);
            async { Ok::<(), SinkError>(()) }
        })
    };
    let running = Shipper::<_, u64>::builder(consumer, sink)
        .batch_max(100)
        .build()
        .unwrap()
        .spawn_on_thread()
        .unwrap();
    assert!(running.handle().wait_committed_timeout(N, DEADLINE));
    let status = running.shutdown().unwrap();
    assert_eq!(status.committed_seq, N);
    assert_eq!(wal.consumer("pipe").unwrap().committed(), N);
    assert_eq!(*violations.lock().unwrap(), Vec::<(u64, u64, u64)>::new());
    assert_eq!(*seen.lock().unwrap(), (1..=N).collect::<Vec<_>>());
}

#[test]
fn a_failing_sink_does_not_hold_back_the_checkpoint_it_earned() {
    const N: u64 = 5_000;
    let wal = Wal::open(Memory::new(), Options::default().stats_interval(None)).unwrap();
    let consumer = wal.consumer("pipe").unwrap();
    futures::executor::block_on(async {
        let recs: Vec<u64> = (1..=N).collect();
        wal.append_batch(&recs).await.unwrap();
    });
    // Acknowledges the first batch (1..=100), then fails until told otherwise.
    let down = Arc::new(AtomicBool::new(false));
    let sink = {
        let down = down.clone();
        FnSink::new(move |batch: &Batch<u64>| {
            let r = if batch.first_seq() == 1 {
                down.store(true, Ordering::SeqCst);
                Ok(())
            } else if down.load(Ordering::SeqCst) {
                Err(SinkError::transient("down"))
            } else {
                Ok(())
            };
            async move { r }
        })
    };
    let running = Shipper::<_, u64>::builder(consumer, sink)
        .batch_max(100)
        .backoff(Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
            max_retry_after: Duration::from_millis(50),
        })
        .build()
        .unwrap()
        .spawn_on_thread()
        .unwrap();
    let handle = running.handle();
    // The second batch keeps failing, yet the first one's checkpoint is published.
    assert!(handle.wait_committed_timeout(100, DEADLINE));
    assert_eq!(handle.status().committed_seq, 100);
    assert_eq!(wal.consumer("pipe").unwrap().committed(), 100);
    down.store(false, Ordering::SeqCst);
    assert!(handle.wait_committed_timeout(N, DEADLINE));
    assert_eq!(running.shutdown().unwrap().committed_seq, N);
}
