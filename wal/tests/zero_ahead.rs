//! Zero ahead (`Options::zero_ahead_bytes`, `Storage::write_zeroes`): while group
//! commits are small, the writer keeps the range past its write position zeroed,
//! always beyond every byte it wrote (no frame is ever overwritten), within the
//! segment size, in order; large groups skip it; a failure stops it and changes
//! nothing else; `0` turns it off; recovery reads everything back, after a clean close
//! and after a power loss.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use futures::executor::block_on;
use walspool_wal::{Error, Memory, Options, SegmentId, Storage, Tear, Wal};

#[path = "support/observed.rs"]
mod observed;
use observed::{Observed, Observer};

const SEGMENT: u64 = 1 << 20;

#[derive(Debug, Default)]
struct Log {
    /// `write_zeroes` calls: (segment, offset, len).
    zeroes: Vec<(SegmentId, u64, u64)>,
    /// Per segment, the end of the furthest `write_at`.
    written_end: HashMap<SegmentId, u64>,
    /// Problems seen (asserted by the tests, not panicking on the writer thread).
    bad: Vec<String>,
}

/// Writes the zeros it is asked to (as `LocalDisk` does), checks each range, and can
/// fail.
#[derive(Debug, Clone)]
struct Zeros {
    log: Arc<Mutex<Log>>,
    fail: bool,
}

impl Observer for Zeros {
    fn write_at(&self, id: SegmentId, offset: u64, len: u64) {
        let mut log = self.log.lock().unwrap();
        let end = log.written_end.entry(id).or_default();
        *end = (*end).max(offset + len);
    }
    fn truncate(&self, id: SegmentId, len: u64) {
        let mut log = self.log.lock().unwrap();
        if let Some(end) = log.written_end.get_mut(&id) {
            *end = (*end).min(len);
        }
    }
    fn write_zeroes(&self, mem: &Memory, id: SegmentId, offset: u64, len: u64) -> io::Result<()> {
        let mut log = self.log.lock().unwrap();
        log.zeroes.push((id, offset, len));
        let end = log.written_end.get(&id).copied().unwrap_or(0);
        if offset < end {
            log.bad.push(format!(
                "zeros at {offset} over data written up to {end} in {id}"
            ));
        }
        if offset + len > SEGMENT {
            log.bad.push(format!(
                "zeros up to {} past the segment size",
                offset + len
            ));
        }
        if self.fail {
            return Err(io::Error::other("no zeroing here"));
        }
        // Real zeros, but not counted as data (straight to `mem`): a frame may go there.
        mem.write_at(id, offset, &vec![0u8; len as usize])
    }
}

type Zeroing = Observed<Zeros>;

fn zeroing(fail: bool) -> Zeroing {
    Observed::new(Zeros {
        log: Arc::default(),
        fail,
    })
}

fn opts(zero_ahead: u64) -> Options {
    Options::default()
        .segment_size(SEGMENT)
        .zero_ahead_bytes(zero_ahead)
        .stats_interval(None)
}

fn rec(i: u64) -> String {
    format!("{i:08}-{}", "z".repeat(200 + (i % 89) as usize))
}

fn read_all<S: Storage>(wal: &Wal<S>) -> u64 {
    let mut r = wal.read_from::<String>(1);
    let mut n = 0;
    while let Some(e) = r.try_next().expect("no corruption") {
        assert_eq!(e.record, rec(n));
        n += 1;
    }
    n
}

#[test]
fn zeros_stay_ahead_of_every_frame_and_recovery_reads_everything() {
    const N: u64 = 12_000; // ~3.4 MiB of frames: several 1 MiB segments
    let s = zeroing(false);
    let wal = Wal::open(s.clone(), opts(64 << 10)).expect("open");
    for i in 0..N {
        // One durable append at a time: the smallest groups there are.
        block_on(wal.append(&rec(i))).expect("append");
    }
    let log = s.obs.log.lock().unwrap();
    assert_eq!(log.bad, Vec::<String>::new());
    let mut segs = std::collections::BTreeSet::new();
    let mut last: Option<(SegmentId, u64)> = None;
    for &(id, off, len) in &log.zeroes {
        assert!(len > 0 && len <= 64 << 10, "zero range of {len} bytes");
        if let Some((lid, lend)) = last {
            if lid == id {
                assert!(off >= lend, "zero ranges overlap: {off} < {lend} in {id}");
            } else {
                assert!(id > lid, "zeros went back to segment {id} after {lid}");
            }
        }
        last = Some((id, off + len));
        segs.insert(id);
    }
    // 64 KiB at a time, topped up at half: about one call per 32 KiB of frames.
    assert!(
        log.zeroes.len() >= 60,
        "expected zeroing all along, got {} calls",
        log.zeroes.len()
    );
    assert!(segs.len() >= 3, "zeros in every segment: {segs:?}");
    drop(log);
    // Power loss right now: every acknowledged record is there.
    let after = s.mem.crash(Tear::None);
    let reopened = Wal::open(after, opts(64 << 10)).expect("reopen after power loss");
    assert_eq!(read_all(&reopened), N);
    drop(reopened);
    // Clean close: the same, and the tail is cut back to its frames.
    block_on(wal.close()).expect("close");
    let wal = Wal::open(s.clone(), opts(64 << 10)).expect("reopen");
    assert_eq!(read_all(&wal), N);
}

#[test]
fn large_groups_skip_zeroing() {
    let s = zeroing(false);
    let wal = Wal::open(s.clone(), opts(1 << 20)).expect("open");
    // 1000 records of ~250 bytes per group commit: ~250 KiB per fdatasync.
    let recs: Vec<String> = (0..1000).map(rec).collect();
    for _ in 0..8 {
        block_on(wal.append_batch(&recs)).expect("append_batch");
    }
    let log = s.obs.log.lock().unwrap();
    assert_eq!(log.bad, Vec::<String>::new());
    // Only the first write of a segment (a group that starts right after a sync, before
    // its bytes count) can zero; none after.
    let segments = wal.metrics().segments.len();
    assert!(
        log.zeroes.len() <= segments,
        "{} zero calls for {segments} segments: {:?}",
        log.zeroes.len(),
        log.zeroes
    );
}

#[test]
fn a_failing_zeroing_is_ignored_and_stops() {
    let s = zeroing(true);
    let wal = Wal::open(s.clone(), opts(64 << 10)).expect("open");
    for i in 0..2_000 {
        block_on(wal.append(&rec(i))).expect("appends go on");
    }
    assert_eq!(
        s.obs.log.lock().unwrap().zeroes.len(),
        1,
        "one failed call, then none"
    );
    block_on(wal.close()).expect("close");
    let wal = Wal::open(s, opts(64 << 10)).expect("reopen");
    assert_eq!(read_all(&wal), 2_000);
}

#[test]
fn zero_turns_zeroing_off_and_small_values_are_refused() {
    let s = zeroing(false);
    let wal = Wal::open(s.clone(), opts(0)).expect("open");
    for i in 0..2_000 {
        block_on(wal.append(&rec(i))).expect("append");
    }
    assert!(s.obs.log.lock().unwrap().zeroes.is_empty());
    match Wal::open(Memory::new(), opts(4096)) {
        Err(Error::Config(m)) => assert!(m.contains("zero_ahead_bytes"), "{m}"),
        other => panic!("expected a config error, got {:?}", other.map(|_| ())),
    }
}
