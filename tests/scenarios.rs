//! One scenario suite, run on both `Memory` and `LocalDisk` (issue 2 and 3 acceptance).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::executor::block_on;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use walspool::format::{decode_frame, Decoded, HEADER_LEN};
use walspool::{
    Durability, Error, LocalDisk, Memory, Options, RecoveryMode, Storage, Tear, Wal, WhenFull,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Rec {
    id: u64,
    body: String,
}

fn rec(id: u64) -> Rec {
    Rec {
        id,
        body: format!("record-{id}-{}", "x".repeat((id % 13) as usize)),
    }
}

/// A backend under test: makes fresh storages and reopens the same one.
trait Backend {
    type S: Storage;
    fn fresh() -> Self;
    fn storage(&self) -> Self::S;
    /// A second handle for looking at the storage while the WAL runs.
    fn inspect(&self) -> Self::S;
}

struct Mem(Memory);
impl Backend for Mem {
    type S = Memory;
    fn fresh() -> Self {
        Mem(Memory::new())
    }
    fn storage(&self) -> Memory {
        self.0.clone()
    }
    fn inspect(&self) -> Memory {
        self.0.clone()
    }
}

struct Disk(tempfile::TempDir);
impl Backend for Disk {
    type S = LocalDisk;
    fn fresh() -> Self {
        Disk(tempfile::tempdir().unwrap())
    }
    fn storage(&self) -> LocalDisk {
        LocalDisk::open(self.0.path().join("wal")).unwrap()
    }
    fn inspect(&self) -> LocalDisk {
        LocalDisk::open_read_only(self.0.path().join("wal")).unwrap()
    }
}

fn read_all<S: Storage>(wal: &Wal<S>, from: u64) -> Vec<(u64, Rec)> {
    let end = wal.durable_seq();
    if end < from {
        return Vec::new();
    }
    block_on(async {
        wal.read_range::<Rec>(from, end)
            .map(|r| {
                let e = r.expect("read");
                (e.seq, e.record)
            })
            .collect()
            .await
    })
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn round_trip<B: Backend>() {
    let b = B::fresh();
    let wal = Wal::open(b.storage(), Options::default()).unwrap();
    block_on(async {
        for i in 1..=100 {
            assert_eq!(wal.append(&rec(i)).await.unwrap(), i);
        }
    });
    let got = read_all(&wal, 1);
    assert_eq!(got.len(), 100);
    for (i, (seq, r)) in got.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
        assert_eq!(*r, rec(*seq));
    }
    block_on(wal.close()).unwrap();
}

fn batch<B: Backend>() {
    let b = B::fresh();
    let wal = Wal::open(b.storage(), Options::default()).unwrap();
    let recs: Vec<Rec> = (1..=1000).map(rec).collect();
    let r = block_on(wal.append_batch(&recs)).unwrap();
    assert_eq!(r, 1..1001);
    let r2 = block_on(wal.append_batch(&recs[..10])).unwrap();
    assert_eq!(r2, 1001..1011);
    let got = read_all(&wal, 995);
    assert_eq!(got.len(), 16);
    assert_eq!(got[0], (995, rec(995)));
    assert_eq!(got[6], (1001, rec(1)));
    block_on(wal.close()).unwrap();
}

fn roll_by_size<B: Backend>() {
    let b = B::fresh();
    let wal = Wal::open(b.storage(), Options::default().segment_size(4096)).unwrap();
    block_on(async {
        for i in 1..=500 {
            wal.append(&rec(i)).await.unwrap();
        }
    });
    let sealed = wal.sealed_segments();
    assert!(sealed.len() >= 5, "only {} sealed segments", sealed.len());
    for w in sealed.windows(2) {
        assert_eq!(
            w[0].last_seq + 1,
            w[1].base_seq,
            "segments must be contiguous"
        );
        assert!(
            w[0].bytes <= 4096,
            "segment of {} bytes exceeds segment_size",
            w[0].bytes
        );
    }
    let got = read_all(&wal, 1);
    assert_eq!(got.len(), 500);
    assert!(got.iter().all(|(s, r)| *r == rec(*s)));
    block_on(wal.close()).unwrap();
    // Reopen: everything still there, appends continue.
    let wal = Wal::open(b.storage(), Options::default().segment_size(4096)).unwrap();
    assert_eq!(block_on(wal.append(&rec(501))).unwrap(), 501);
    assert_eq!(read_all(&wal, 1).len(), 501);
    block_on(wal.close()).unwrap();
}

fn roll_by_age<B: Backend>() {
    let b = B::fresh();
    let wal = Wal::open(
        b.storage(),
        Options::default().segment_max_age(Duration::from_millis(30)),
    )
    .unwrap();
    block_on(wal.append(&rec(1))).unwrap();
    wait_until("age roll", || !wal.sealed_segments().is_empty());
    block_on(wal.append(&rec(2))).unwrap();
    wait_until("second age roll", || wal.sealed_segments().len() >= 2);
    let sealed = wal.sealed_segments();
    assert_eq!((sealed[0].base_seq, sealed[0].last_seq), (1, 1));
    assert_eq!(read_all(&wal, 1).len(), 2);
    block_on(wal.close()).unwrap();
}

fn reopen_after_close<B: Backend>() {
    let b = B::fresh();
    {
        let wal = Wal::open(b.storage(), Options::default()).unwrap();
        block_on(wal.append_batch(&(1..=50).map(rec).collect::<Vec<_>>())).unwrap();
        block_on(wal.close()).unwrap();
    }
    let wal = Wal::open(b.storage(), Options::default()).unwrap();
    assert_eq!(wal.last_seq(), 50);
    assert_eq!(block_on(wal.append(&rec(51))).unwrap(), 51);
    let got = read_all(&wal, 1);
    assert_eq!(got.len(), 51);
    assert!(got.iter().all(|(s, r)| *r == rec(*s)));
    block_on(wal.close()).unwrap();
}

fn consumers_resume<B: Backend>() {
    let b = B::fresh();
    {
        let wal = Wal::open(b.storage(), Options::default().segment_size(4096)).unwrap();
        block_on(wal.append_batch(&(1..=300).map(rec).collect::<Vec<_>>())).unwrap();
        let c = wal.consumer("audit-sink").unwrap();
        let mut s = c.read::<Rec>();
        block_on(async {
            for _ in 0..120 {
                s.next().await.unwrap().unwrap();
            }
        });
        block_on(c.commit(120)).unwrap();
        // Checkpoints never go backwards.
        block_on(c.commit(50)).unwrap();
        assert_eq!(c.committed(), 120);
        block_on(wal.close()).unwrap();
    }
    let wal = Wal::open(b.storage(), Options::default().segment_size(4096)).unwrap();
    let c = wal.consumer("audit-sink").unwrap();
    assert_eq!(c.committed(), 120);
    let first = block_on(c.read::<Rec>().next()).unwrap().unwrap();
    assert_eq!(first.seq, 121, "no committed record is redelivered");
    assert_eq!(wal.consumers(), vec![("audit-sink".to_string(), 120)]);
    // Committing beyond the durable end is refused.
    assert!(block_on(c.commit(10_000)).is_err());
    block_on(wal.remove_consumer("audit-sink")).unwrap();
    assert!(wal.consumers().is_empty());
    block_on(wal.close()).unwrap();
}

fn retention<B: Backend>() {
    let b = B::fresh();
    let wal = Wal::open(b.storage(), Options::default().segment_size(4096)).unwrap();
    let st = b.inspect();
    let a = wal.consumer("a").unwrap();
    let c = wal.consumer("b").unwrap();
    block_on(wal.append_batch(&(1..=400).map(rec).collect::<Vec<_>>())).unwrap();
    block_on(wal.append_batch(&(401..=800).map(rec).collect::<Vec<_>>())).unwrap();
    let disk = |s: &B::S| {
        s.list_segments()
            .unwrap()
            .iter()
            .map(|x| x.len)
            .sum::<u64>()
    };
    let before_segments = st.list_segments().unwrap().len();
    let before_bytes = disk(&st);
    assert!(before_segments > 5);
    // One consumer alone does not free anything.
    block_on(a.commit(800)).unwrap();
    wal.hooks().nudge_retention();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        st.list_segments().unwrap().len(),
        before_segments,
        "segments kept while consumer b needs them"
    );
    // Both past the middle: the segments wholly before it go.
    block_on(c.commit(200)).unwrap();
    wait_until("retention", || {
        st.list_segments().unwrap().len() < before_segments
    });
    let sealed = wal.sealed_segments();
    assert!(
        sealed.iter().all(|s| s.last_seq > 200),
        "a segment b still needs was deleted"
    );
    assert!(
        sealed.first().is_some_and(|s| s.base_seq <= 201),
        "a segment b needs is missing"
    );
    assert!(disk(&st) < before_bytes);
    // Everything committed: only the segment holding the tail stays (and the active one).
    block_on(c.commit(800)).unwrap();
    wait_until("full retention", || {
        wal.sealed_segments().iter().all(|s| s.last_seq > 800) && disk(&st) <= 2 * 4096
    });
    let m = wal.metrics();
    assert_eq!(m.backlog_records, 0);
    assert_eq!(m.dropped_records_total, 0);
    block_on(wal.close()).unwrap();
}

fn bounds_reject<B: Backend>() {
    let b = B::fresh();
    let opts = Options::default()
        .segment_size(4096)
        .max_bytes(3 * 4096)
        .when_full(WhenFull::Reject);
    let wal = Wal::open(b.storage(), opts).unwrap();
    let _slow = wal.consumer("slow").unwrap();
    let mut n = 0u64;
    let err = block_on(async {
        loop {
            n += 1;
            if let Err(e) = wal.append(&rec(n)).await {
                return e;
            }
            assert!(n < 10_000, "never became full");
        }
    });
    assert!(
        matches!(err, Error::Full { .. }),
        "expected Full, got {err}"
    );
    assert!(err.to_string().contains("full"));
    // Everything accepted before is intact.
    assert_eq!(read_all(&wal, 1).len() as u64, n - 1);
    block_on(wal.close()).unwrap();
}

fn bounds_block<B: Backend>() {
    let b = B::fresh();
    let opts = Options::default().segment_size(4096).max_bytes(3 * 4096);
    let wal = Wal::open(b.storage(), opts).unwrap();
    let slow = wal.consumer("slow").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let w2 = wal.clone();
    let appender = std::thread::spawn(move || {
        block_on(async {
            for i in 1..=600u64 {
                w2.append(&rec(i)).await.unwrap();
                tx.send(i).unwrap();
            }
        })
    });
    // The appender stops making progress: it is blocked at the bound.
    let mut last = 0;
    while let Ok(i) = rx.recv_timeout(Duration::from_millis(500)) {
        last = i;
    }
    assert!(last < 600, "appender was never blocked");
    let m = wal.metrics();
    assert!(
        m.disk_bytes <= 3 * 4096 + 4096,
        "disk {} over bound",
        m.disk_bytes
    );
    // The consumer commits as it reads; the appender finishes; nothing dropped.
    block_on(async {
        let mut s = slow.read::<Rec>();
        let mut seen = 0u64;
        while seen < 600 {
            let e = s.next().await.unwrap().unwrap();
            assert_eq!(e.seq, seen + 1);
            seen = e.seq;
            if seen.is_multiple_of(20) || seen == 600 {
                slow.commit(seen).await.unwrap();
            }
        }
    });
    appender.join().unwrap();
    assert_eq!(wal.metrics().dropped_records_total, 0);
    block_on(wal.close()).unwrap();
}

fn bounds_drop_oldest<B: Backend>() {
    let b = B::fresh();
    let seg = 4096u64;
    let opts = Options::default()
        .segment_size(seg)
        .max_bytes(3 * seg)
        .when_full(WhenFull::DropOldest);
    let wal = Wal::open(b.storage(), opts).unwrap();
    let st = b.inspect();
    let c = wal.consumer("slow").unwrap();
    block_on(async {
        for i in 1..=2000u64 {
            wal.append(&rec(i)).await.unwrap();
            // The writer enforces the bound right after it acknowledges the append that
            // rolled (deleting a segment after a durable counter write): wait for it.
            let start = std::time::Instant::now();
            loop {
                let disk: u64 = st.list_segments().unwrap().iter().map(|x| x.len).sum();
                if disk <= 3 * seg + seg {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "disk {disk} above max_bytes plus one segment"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    // The consumer reads what is left and is told about the gap.
    let mut lost = 0u64;
    let mut got = 0u64;
    block_on(async {
        let mut s = c.read::<Rec>();
        loop {
            match s.try_next() {
                Ok(Some(e)) => {
                    assert_eq!(e.record, rec(e.seq));
                    got += 1;
                }
                Ok(None) => break,
                Err(e @ Error::Gap { .. }) => lost += e.lost_records(),
                Err(e) => panic!("{e}"),
            }
        }
    });
    let m = wal.metrics();
    assert!(lost > 0);
    assert_eq!(got + lost, 2000);
    assert_eq!(
        m.dropped_records_total, lost,
        "dropped_records_total must equal records actually lost"
    );
    block_on(wal.close()).unwrap();
}

fn max_age<B: Backend>() {
    let b = B::fresh();
    let opts = Options::default()
        .segment_size(4096)
        .max_age(Duration::from_millis(300));
    let wal = Wal::open(b.storage(), opts).unwrap();
    let _c = wal.consumer("never-commits").unwrap();
    let n = 300u64;
    block_on(wal.append_batch(&(1..=n).map(rec).collect::<Vec<_>>())).unwrap();
    wait_until("max_age expiry", || {
        wal.metrics().dropped_records_total == n
    });
    let m = wal.metrics();
    assert_eq!(m.dropped_records_total, n);
    assert!(wal.sealed_segments().is_empty());
    block_on(wal.close()).unwrap();
}

fn stats_and_prometheus<B: Backend>(read_stats: impl Fn(&B::S) -> Option<Vec<u8>>) {
    let b = B::fresh();
    let wal_storage = b.storage();
    let st = b.inspect();
    let wal = Wal::open(
        wal_storage,
        Options::default().stats_interval(Some(Duration::from_millis(20))),
    )
    .unwrap();
    block_on(wal.append(&rec(1))).unwrap();
    let mut offsets = Vec::new();
    for round in 0..2 {
        block_on(wal.append_batch(&(0..20).map(rec).collect::<Vec<_>>())).unwrap();
        let want = wal.metrics().current_offset;
        wait_until("stats file", || {
            read_stats(&st)
                .and_then(|b| walspool::StatsFile::parse(&b).ok())
                .is_some_and(|s| s.metrics.current_offset >= want)
        });
        let s = walspool::StatsFile::parse(&read_stats(&st).unwrap()).unwrap();
        assert_eq!(s.schema, walspool::STATS_SCHEMA);
        assert_eq!(s.pid, std::process::id());
        assert!(s.written_at_ms > 0 && !s.closed, "round {round}");
        offsets.push(s.metrics.current_offset);
    }
    assert!(
        offsets[1] > offsets[0],
        "offset did not advance: {offsets:?}"
    );
    let text = wal.metrics().render_prometheus();
    for name in [
        "wal_backlog_records",
        "wal_backlog_bytes",
        "wal_ship_errors_total",
        "wal_dropped_records_total",
        "wal_last_ship_timestamp_seconds",
        "wal_current_segment_base_seq",
        "wal_current_offset_bytes",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(name) && !l.starts_with('#')),
            "{name} missing from:\n{text}"
        );
    }
    block_on(wal.close()).unwrap();
    let s = walspool::StatsFile::parse(&read_stats(&st).unwrap()).unwrap();
    assert!(s.closed, "close publishes a final stats file");
}

macro_rules! suite {
    ($m:ident, $b:ty) => {
        mod $m {
            use super::*;
            #[test]
            fn round_trip() {
                super::round_trip::<$b>()
            }
            #[test]
            fn batch() {
                super::batch::<$b>()
            }
            #[test]
            fn roll_by_size() {
                super::roll_by_size::<$b>()
            }
            #[test]
            fn roll_by_age() {
                super::roll_by_age::<$b>()
            }
            #[test]
            fn reopen_after_close() {
                super::reopen_after_close::<$b>()
            }
            #[test]
            fn consumers_resume() {
                super::consumers_resume::<$b>()
            }
            #[test]
            fn retention() {
                super::retention::<$b>()
            }
            #[test]
            fn bounds_reject() {
                super::bounds_reject::<$b>()
            }
            #[test]
            fn bounds_block() {
                super::bounds_block::<$b>()
            }
            #[test]
            fn bounds_drop_oldest() {
                super::bounds_drop_oldest::<$b>()
            }
            #[test]
            fn max_age() {
                super::max_age::<$b>()
            }
        }
    };
}

suite!(memory, Mem);
suite!(local_disk, Disk);

#[test]
fn stats_file_memory() {
    stats_and_prometheus::<Mem>(|m| m.published(walspool::STATS_FILE));
}

#[test]
fn stats_file_local_disk() {
    stats_and_prometheus::<Disk>(|d| std::fs::read(d.dir().join(walspool::STATS_FILE)).ok());
}

/// Reopen after a simulated power loss: every acknowledged record is present.
#[test]
fn crash_keeps_every_acknowledged_record() {
    for tear in [
        Tear::None,
        Tear::Keep(7),
        Tear::Garbage(40),
        Tear::Keep(1 << 20),
    ] {
        let mem = Memory::new();
        let wal = Wal::open(mem.clone(), Options::default().segment_size(4096)).unwrap();
        let c = wal.consumer("c").unwrap();
        let acked = block_on(async {
            let mut acked = Vec::new();
            for i in 1..=150 {
                acked.push(wal.append(&rec(i)).await.unwrap());
            }
            c.commit(70).await.unwrap();
            acked
        });
        // Unacknowledged, buffered writes in flight at the crash.
        let w2 = wal.clone();
        let _inflight = std::thread::spawn(move || {
            block_on(w2.append_batch(&(500..520).map(rec).collect::<Vec<_>>()))
        });
        let after = mem.crash(tear);
        let wal2 = Wal::open(after, Options::default().segment_size(4096)).unwrap();
        let got = read_all(&wal2, 1);
        assert!(
            got.len() >= acked.len(),
            "{tear:?}: lost acknowledged records"
        );
        for (i, seq) in acked.iter().enumerate() {
            assert_eq!(got[i], (*seq, rec(*seq)), "{tear:?}");
        }
        assert_eq!(wal2.consumer("c").unwrap().committed(), 70);
        let next = block_on(wal2.append(&rec(9999))).unwrap();
        assert_eq!(
            next,
            got.last().unwrap().0 + 1,
            "sequence continues after recovery"
        );
        block_on(wal2.close()).unwrap();
        block_on(wal.close()).ok();
    }
}

/// The same append/read test on every runtime.
async fn runtime_case<S: Storage>(wal: Wal<S>) {
    let mut tail = wal.read_from::<Rec>(1);
    let w = wal.clone();
    let reader = async move {
        let mut out = Vec::new();
        while out.len() < 200 {
            out.push(tail.next().await.unwrap().unwrap());
        }
        out
    };
    let writer = async move {
        for i in 1..=100 {
            w.append(&rec(i)).await.unwrap();
        }
        w.append_batch(&(101..=200).map(rec).collect::<Vec<_>>())
            .await
            .unwrap();
    };
    let (got, ()) = futures::join!(reader, writer);
    assert_eq!(got.len(), 200);
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, e)| e.seq == i as u64 + 1 && e.record == rec(e.seq)));
    wal.close().await.unwrap();
}

#[test]
fn runtime_tokio_multi_thread() {
    let d = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        let wal = Wal::open(LocalDisk::open(d.path()).unwrap(), Options::default()).unwrap();
        tokio::spawn(runtime_case(wal)).await.unwrap();
    });
}

#[test]
fn runtime_tokio_current_thread() {
    let d = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let wal = Wal::open(LocalDisk::open(d.path()).unwrap(), Options::default()).unwrap();
        runtime_case(wal).await;
    });
}

#[test]
fn runtime_smol() {
    let d = tempfile::tempdir().unwrap();
    smol::block_on(async {
        let wal = Wal::open(LocalDisk::open(d.path()).unwrap(), Options::default()).unwrap();
        smol::spawn(runtime_case(wal)).await;
    });
}

#[test]
fn runtime_futures_executor() {
    let d = tempfile::tempdir().unwrap();
    let wal = Wal::open(LocalDisk::open(d.path()).unwrap(), Options::default()).unwrap();
    futures::executor::block_on(runtime_case(wal));
}

/// 16 concurrent appenders share fsyncs.
#[test]
fn group_commit_shares_fsyncs() {
    let mem = Memory::new();
    mem.set_sync_delay(Some(Duration::from_millis(2)));
    let wal = Wal::open(mem.clone(), Options::default()).unwrap();
    mem.reset_counters();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let w = wal.clone();
            std::thread::spawn(move || {
                block_on(async {
                    for i in 0..50u64 {
                        w.append(&rec(t * 1000 + i)).await.unwrap();
                    }
                })
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let syncs = mem.counters().syncs;
    let appends = 16 * 50;
    assert_eq!(wal.durable_seq(), appends);
    assert!(
        syncs * 4 < appends,
        "{syncs} fsyncs for {appends} appends: no group commit"
    );
    block_on(wal.close()).unwrap();
}

/// Opening reads only the tail segment, however much sealed history there is.
#[test]
fn recovery_reads_only_the_tail() {
    let mem = Memory::new();
    let opts = Options::default().segment_size(4096);
    {
        let wal = Wal::open(mem.clone(), opts.clone()).unwrap();
        block_on(async {
            let mut i = 0;
            while wal.sealed_segments().len() < 50 {
                i += 1;
                wal.append(&rec(i)).await.unwrap();
            }
            for _ in 0..5 {
                i += 1;
                wal.append(&rec(i)).await.unwrap();
            }
        });
        block_on(wal.close()).unwrap();
    }
    let segs = mem.list_segments().unwrap();
    assert!(segs.len() >= 51);
    let tail_len = segs.iter().max_by_key(|s| s.id).unwrap().len;
    let total: u64 = segs.iter().map(|s| s.len).sum();
    mem.reset_counters();
    let wal = Wal::open(mem.clone(), opts).unwrap();
    let read = mem.counters().bytes_read;
    // The tail, plus one look at its header before recovery (which key, if any).
    assert!(
        read <= tail_len + walspool::format::HEADER_MAX_LEN as u64,
        "open read {read} bytes; the tail is {tail_len} of {total} in all"
    );
    block_on(wal.close()).unwrap();
}

/// A failed fsync fails the pending append and every later one; nothing is acknowledged.
#[test]
fn failed_fsync_poisons() {
    let mem = Memory::new();
    let wal = Wal::open(mem.clone(), Options::default()).unwrap();
    block_on(wal.append(&rec(1))).unwrap();
    mem.set_sync_delay(Some(Duration::from_millis(20)));
    mem.fail_all_syncs(true);
    let pending: Vec<_> = (0..8)
        .map(|t| {
            let w = wal.clone();
            std::thread::spawn(move || block_on(w.append(&rec(100 + t))))
        })
        .collect();
    for p in pending {
        let r = p.join().unwrap();
        assert!(
            matches!(r, Err(Error::Poisoned { .. })),
            "pending append resolved {r:?}"
        );
    }
    mem.fail_all_syncs(false);
    let later = block_on(wal.append(&rec(2)));
    assert!(
        matches!(later, Err(Error::Poisoned { .. })),
        "later append resolved {later:?}"
    );
    assert!(later.unwrap_err().to_string().contains("poisoned"));
    assert_eq!(wal.durable_seq(), 1);
    assert_eq!(
        read_all(&wal, 1).len(),
        1,
        "readers never see unacknowledged records"
    );
    drop(wal);
    // After a crash and reopen the WAL works again; record 1 is there.
    let wal = Wal::open(mem.crash(Tear::None), Options::default()).unwrap();
    assert_eq!(read_all(&wal, 1), vec![(1, rec(1))]);
    assert_eq!(block_on(wal.append(&rec(2))).unwrap(), 2);
}

fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

/// Frame start offsets in a segment file.
fn frame_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut at = HEADER_LEN;
    let mut out = Vec::new();
    while let Decoded::Frame(_, n) = decode_frame(&bytes[at..]) {
        out.push(at);
        at += n;
    }
    out
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to.join("meta")).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() && p.file_name().unwrap() != "LOCK" {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

/// Torn tail on LocalDisk: every cut and a bit flip at every byte of the last three
/// frames. Without a recovery point that covers them (the frames were written after the
/// last recorded fdatasync), a cut or damage with nothing intact after it is a torn tail:
/// each reopen keeps every frame before it and accepts appends. Damage followed by intact
/// records is corruption and refused. With the clean close's recovery point every one of
/// these is refused: those frames were synced.
#[test]
fn torn_tail_every_offset() {
    let base = tempfile::tempdir().unwrap();
    let src = base.path().join("src");
    let n = 40u64;
    {
        let wal = Wal::open(LocalDisk::open(&src).unwrap(), Options::default()).unwrap();
        block_on(async {
            for i in 1..=n {
                wal.append(&rec(i)).await.unwrap();
            }
        });
        block_on(wal.close()).unwrap();
    }
    let seg = segment_files(&src).pop().unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    let offs = frame_offsets(&bytes);
    assert_eq!(offs.len() as u64, n);
    let start = offs[offs.len() - 3];
    let last = offs[offs.len() - 1];
    let frame_index = |at: usize| offs.iter().rposition(|&o| o <= at).unwrap() as u64; // 0-based
                                                                                       // `survivors`: `Some(n)` when the reopen must keep n records, `None` when it must
                                                                                       // refuse. `with_end`: keep the clean close's recovery point (meta/end).
    let check = |case: &str, damaged: Vec<u8>, survivors: Option<u64>, with_end: bool| {
        let dir = base.path().join("case");
        let _ = std::fs::remove_dir_all(&dir);
        copy_dir(&src, &dir);
        if with_end {
            std::fs::copy(src.join("meta/end"), dir.join("meta/end")).unwrap();
        }
        std::fs::write(dir.join(seg.file_name().unwrap()), &damaged).unwrap();
        let opened = Wal::open(LocalDisk::open(&dir).unwrap(), Options::default());
        let Some(survivors) = survivors else {
            let err = opened.expect_err(case);
            assert!(
                matches!(err, walspool::Error::Corrupt { .. }),
                "{case}: {err}"
            );
            return;
        };
        let wal = opened.unwrap_or_else(|e| panic!("{case}: open failed: {e}"));
        let got = read_all(&wal, 1);
        assert_eq!(got.len() as u64, survivors, "{case}");
        assert!(got.iter().all(|(s, r)| *r == rec(*s)), "{case}");
        let next = block_on(wal.append(&rec(777)))
            .unwrap_or_else(|e| panic!("{case}: append failed: {e}"));
        assert_eq!(next, survivors + 1, "{case}");
        assert_eq!(read_all(&wal, next), vec![(next, rec(777))], "{case}");
        block_on(wal.close()).unwrap();
    };
    for cut in start..bytes.len() {
        let b = bytes[..cut].to_vec();
        check(
            &format!("cut at {cut}"),
            b.clone(),
            Some(frame_index(cut)),
            false,
        );
        check(&format!("cut at {cut}, clean end"), b, None, true);
    }
    for at in start..bytes.len() {
        let mut b = bytes.clone();
        b[at] ^= 1 << (at % 8);
        let torn = at >= last;
        check(
            &format!("bit flip at {at}"),
            b.clone(),
            torn.then(|| frame_index(at)),
            false,
        );
        check(&format!("bit flip at {at}, clean end"), b, None, true);
    }
}

/// Corruption in a sealed segment: strict mode names the segment and offset; lenient
/// mode skips and counts.
#[test]
fn corruption_before_the_tail() {
    let d = tempfile::tempdir().unwrap();
    let opts = Options::default().segment_size(4096);
    {
        let wal = Wal::open(LocalDisk::open(d.path()).unwrap(), opts.clone()).unwrap();
        block_on(wal.append_batch(&(1..=300).map(rec).collect::<Vec<_>>())).unwrap();
        block_on(wal.close()).unwrap();
    }
    let files = segment_files(d.path());
    assert!(files.len() > 3);
    let victim = &files[1];
    let mut b = std::fs::read(victim).unwrap();
    let offs = frame_offsets(&b);
    let at = offs[3] + 30;
    b[at] ^= 0x40;
    std::fs::write(victim, &b).unwrap();

    let wal = Wal::open(LocalDisk::open(d.path()).unwrap(), opts.clone()).unwrap();
    let err = block_on(async {
        let mut s = wal.read_from::<Rec>(1);
        loop {
            match s.next().await.unwrap() {
                Ok(_) => continue,
                Err(e) => return e,
            }
        }
    });
    match &err {
        Error::Corrupt {
            segment, offset, ..
        } => {
            assert!(
                segment.ends_with(victim.file_name().unwrap().to_str().unwrap()),
                "{err}"
            );
            assert_eq!(*offset, offs[3] as u64, "{err}");
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    assert!(err
        .to_string()
        .contains(victim.file_name().unwrap().to_str().unwrap()));
    block_on(wal.close()).unwrap();

    let wal = Wal::open(
        LocalDisk::open(d.path()).unwrap(),
        opts.recovery(RecoveryMode::Lenient),
    )
    .unwrap();
    let got = block_on(async {
        let mut s = wal.read_range::<Rec>(1, 300);
        let mut got = Vec::new();
        while let Some(r) = s.next().await {
            got.push(r.unwrap().seq);
        }
        got
    });
    let skipped = wal.metrics().corrupt_skipped_total;
    assert!(skipped > 0);
    assert_eq!(got.len() as u64 + skipped, 300);
    block_on(wal.close()).unwrap();
}

/// A second writer on the same directory gets a clear "locked" error.
#[test]
fn second_writer_is_locked_out() {
    let d = tempfile::tempdir().unwrap();
    let first = LocalDisk::open(d.path()).unwrap();
    let err = LocalDisk::open(d.path()).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    assert!(err.to_string().contains("locked"));
    drop(first);
    assert!(
        LocalDisk::open(d.path()).is_ok(),
        "lock is released with the writer"
    );
}

/// Files are 0600, the directory 0700.
#[test]
fn local_disk_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("w");
    let wal = Wal::open(LocalDisk::open(&dir).unwrap(), Options::default()).unwrap();
    block_on(wal.append(&rec(1))).unwrap();
    wal.consumer("c").unwrap();
    block_on(wal.close()).unwrap();
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for f in segment_files(&dir) {
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600,
            "{f:?}"
        );
    }
    let ck = dir.join("meta").join("consumer.c");
    assert_eq!(
        std::fs::metadata(ck).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// Durability modes: Periodic and Buffered resolve, and close makes everything durable.
#[test]
fn durability_modes() {
    for d in [
        Durability::Periodic(Duration::from_millis(5)),
        Durability::Buffered,
    ] {
        let mem = Memory::new();
        let wal = Wal::open(mem.clone(), Options::default().durability(d)).unwrap();
        block_on(async {
            for i in 1..=500 {
                wal.append(&rec(i)).await.unwrap();
            }
            wal.flush().await.unwrap();
        });
        assert_eq!(wal.durable_seq(), 500, "{d:?}");
        block_on(wal.close()).unwrap();
        let wal = Wal::open(mem.crash(Tear::None), Options::default()).unwrap();
        assert_eq!(
            read_all(&wal, 1).len(),
            500,
            "{d:?}: flushed records survive a crash"
        );
    }
}

/// A record larger than a segment is refused clearly; nothing else is affected.
#[test]
fn record_too_large() {
    let wal = Wal::open(Memory::new(), Options::default().segment_size(4096)).unwrap();
    let big = "y".repeat(10_000);
    let r = block_on(wal.append(&big));
    assert!(matches!(r, Err(Error::RecordTooLarge { .. })), "{r:?}");
    assert_eq!(block_on(wal.append(&"small")).unwrap(), 1);
}

#[test]
fn clones_share_one_wal_and_drop_closes() {
    let mem = Memory::new();
    let wal = Wal::open(mem.clone(), Options::default()).unwrap();
    let c = wal.clone();
    block_on(c.append(&rec(1))).unwrap();
    drop(wal);
    block_on(c.append(&rec(2))).unwrap();
    drop(c);
    let wal = Wal::open(mem.crash(Tear::None), Options::default()).unwrap();
    assert_eq!(read_all(&wal, 1).len(), 2);
    let _ = Arc::new(wal);
}

/// A segment removed from the middle of the log: strict readers stop with an error
/// naming the gap; lenient ones skip and count it; nothing loops.
#[test]
fn missing_middle_segment() {
    let d = tempfile::tempdir().unwrap();
    let opts = Options::default().segment_size(4096);
    {
        let wal = Wal::open(LocalDisk::open(d.path()).unwrap(), opts.clone()).unwrap();
        block_on(wal.append_batch(&(1..=300).map(rec).collect::<Vec<_>>())).unwrap();
        block_on(wal.close()).unwrap();
    }
    let files = segment_files(d.path());
    std::fs::remove_file(&files[2]).unwrap();
    let wal = Wal::open(LocalDisk::open(d.path()).unwrap(), opts.clone()).unwrap();
    let mut s = wal.read_range::<Rec>(1, 300);
    let mut ok = 0;
    let err = block_on(async {
        loop {
            match s.next().await {
                Some(Ok(_)) => ok += 1,
                Some(Err(e)) => return e,
                None => panic!("the gap went unnoticed"),
            }
        }
    });
    assert!(err.to_string().contains("missing"), "{err}");
    assert!(ok > 0);
    block_on(wal.close()).unwrap();
    let wal = Wal::open(
        LocalDisk::open(d.path()).unwrap(),
        opts.recovery(RecoveryMode::Lenient),
    )
    .unwrap();
    let got = block_on(wal.read_range::<Rec>(1, 300).collect::<Vec<_>>());
    assert!(got.iter().all(|r| r.is_ok()));
    assert_eq!(got.len() as u64 + wal.metrics().corrupt_skipped_total, 300);
    block_on(wal.close()).unwrap();
}

/// A backend that panics kills the writer thread: pending and later appends fail,
/// close returns an error, nothing hangs and nothing is acknowledged.
#[test]
fn writer_thread_panic_fails_everything_cleanly() {
    let mem = Memory::new();
    let wal = Wal::open(mem.clone(), Options::default()).unwrap();
    block_on(wal.append(&rec(1))).unwrap();
    mem.panic_nth_write(1);
    let r = block_on(wal.append(&rec(2)));
    assert!(
        matches!(r, Err(Error::Poisoned { .. }) | Err(Error::Closed)),
        "{r:?}"
    );
    let later = block_on(wal.append(&rec(3)));
    assert!(matches!(later, Err(Error::Poisoned { .. })), "{later:?}");
    let closed = block_on(wal.close());
    assert!(closed.is_err(), "close must report the dead writer");
    assert_eq!(wal.durable_seq(), 1);
}

/// Error and drop counters count since the WAL was created: they survive a reopen.
#[test]
fn counters_survive_reopen() {
    let mem = Memory::new();
    {
        let wal = Wal::open(mem.clone(), Options::default()).unwrap();
        wal.hooks().record_archive_error();
        wal.hooks().record_archive_error();
        wal.hooks().record_ship_error();
        block_on(wal.close()).unwrap();
    }
    let wal = Wal::open(mem, Options::default()).unwrap();
    let m = wal.metrics();
    assert_eq!((m.archive_errors_total, m.ship_errors_total), (2, 1));
}
