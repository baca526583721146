//! Early writeback (`Options::writeback_bytes`, `Storage::start_writeback`): the writer
//! hints whole pages it wrote since the last sync, in order, never past what it wrote;
//! a failing hint changes nothing but stops the hints; `0` turns them off; nothing
//! acknowledged depends on them (a power loss after `flush` keeps every record).

use std::io;
use std::sync::{Arc, Mutex};

use futures::executor::block_on;
use walspool_wal::{Durability, Error, Memory, Options, SegmentId, StorageExt, Tear, Wal};

#[path = "support/observed.rs"]
mod observed;
use observed::{Observed, Observer};

/// Records every `start_writeback` call (and can fail them).
#[derive(Debug, Clone)]
struct Hints {
    calls: Arc<Mutex<Vec<(SegmentId, u64, u64)>>>,
    fail: bool,
}

impl Observer for Hints {
    fn start_writeback(
        &self,
        mem: &Memory,
        id: SegmentId,
        offset: u64,
        len: u64,
    ) -> io::Result<()> {
        self.calls.lock().unwrap().push((id, offset, len));
        // The range was written: it is there to be written back.
        let have = mem.segment_len(id)?.unwrap_or(0);
        assert!(
            offset + len <= have,
            "hint {offset}+{len} beyond the {have} bytes of segment {id}"
        );
        if self.fail {
            Err(io::Error::other("no writeback here"))
        } else {
            Ok(())
        }
    }
}

type Hinted = Observed<Hints>;

fn hinted(fail: bool) -> Hinted {
    Observed::new(Hints {
        calls: Arc::default(),
        fail,
    })
}

fn calls(s: &Hinted) -> Vec<(SegmentId, u64, u64)> {
    s.obs.calls.lock().unwrap().clone()
}

fn opts(every: u64) -> Options {
    Options::default()
        .durability(Durability::Buffered)
        .segment_size(1 << 20)
        .writeback_bytes(every)
        .stats_interval(None)
}

fn rec(i: u64) -> String {
    format!("{i:08}-{}", "w".repeat(200 + (i % 97) as usize))
}

/// Appends `n` records, flushes, and returns the WAL.
fn fill(s: Hinted, every: u64, n: u64) -> Wal<Hinted> {
    let wal = Wal::open(s, opts(every)).expect("open");
    for i in 0..n {
        block_on(wal.append(&rec(i))).expect("append");
    }
    block_on(wal.flush()).expect("flush");
    wal
}

#[test]
fn hints_are_whole_pages_in_order_within_what_was_written() {
    let s = hinted(false);
    // ~3.3 MiB of frames: several 1 MiB segments.
    let wal = fill(s.clone(), 64 << 10, 12_000);
    let calls = calls(&s);
    // One hint per write of the writer (a round of appends, up to a 1 MiB chunk) once
    // 64 KiB are pending: several per 1 MiB segment when the writer keeps up, at least
    // one per full segment when it lags (on a loaded machine a round can be a whole
    // chunk).
    assert!(
        calls.len() >= 3,
        "expected a hint per segment at least, got {calls:?}"
    );
    let mut segs = std::collections::BTreeSet::new();
    let mut last: Option<(SegmentId, u64)> = None;
    for &(id, off, len) in &calls {
        assert_eq!(off % 4096, 0, "hint offset {off} not page-aligned");
        assert_eq!(len % 4096, 0, "hint length {len} not whole pages");
        assert!(
            len >= 60 << 10,
            "hint of {len} bytes, below writeback_bytes"
        );
        if let Some((lid, lend)) = last {
            if lid == id {
                assert!(off >= lend, "hints overlap: {off} < {lend} in segment {id}");
            } else {
                assert!(id > lid, "hints went back to segment {id} after {lid}");
            }
        }
        last = Some((id, off + len));
        segs.insert(id);
    }
    assert!(segs.len() >= 3, "hints in every segment: {segs:?}");
    drop(wal);
    // Power loss after the flush: every record is there.
    let after = s.mem.crash(Tear::None);
    let wal = Wal::open(after, opts(64 << 10)).expect("reopen");
    let mut r = wal.read_from::<String>(1);
    let mut n = 0;
    while let Some(e) = r.try_next().expect("no corruption") {
        assert_eq!(e.record, rec(n));
        n += 1;
    }
    assert_eq!(n, 12_000);
}

#[test]
fn a_failing_hint_is_ignored_and_stops_the_hints() {
    let s = hinted(true);
    let wal = fill(s.clone(), 64 << 10, 6_000);
    assert_eq!(calls(&s).len(), 1, "one failed hint, then none");
    block_on(wal.append(&rec(6_000))).expect("appends go on");
    block_on(wal.close()).expect("close");
}

#[test]
fn zero_turns_hints_off_and_small_values_are_refused() {
    let s = hinted(false);
    let wal = fill(s.clone(), 0, 6_000);
    assert!(calls(&s).is_empty());
    drop(wal);
    match Wal::open(Memory::new(), opts(4096)) {
        Err(Error::Config(m)) => assert!(m.contains("writeback_bytes"), "{m}"),
        other => panic!("expected a config error, got {:?}", other.map(|_| ())),
    }
}
