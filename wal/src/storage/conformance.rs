//! A conformance suite for [`Storage`] implementations: what walspool relies on, as
//! checks a third-party backend can run in its own tests. [`LocalDisk`] and
//! [`Memory`](crate::Memory) run it in walspool's tests.
//!
//! ```
//! use walspool_wal::storage::conformance;
//! use walspool_wal::Memory;
//!
//! // Each call of the closure must return a fresh, empty storage.
//! conformance::run(Memory::new);
//! ```
//!
//! Every check panics with a message naming the rule that was broken, so call them
//! from a `#[test]`. [`run`] runs them all; each is also public, for a backend that
//! wants to run some of them only (one that cannot be written concurrently, say).
//! The suite checks behaviour a single process can observe; what a backend does in a
//! crash (the **Crashes** and **Durability** rules of [`Storage`]) needs a fault model
//! such as [`Memory`](crate::Memory)'s and is not covered.
//!
//! [`LocalDisk`]: https://docs.rs/walspool-backends/latest/walspool_backends/struct.LocalDisk.html

use std::sync::Arc;

use super::{SegmentInfo, Storage, StorageExt};

/// Runs every check of the suite, each on a fresh storage from `fresh`.
pub fn run<S: Storage>(mut fresh: impl FnMut() -> S) {
    empty(&fresh());
    segments(&fresh());
    read_write(&fresh());
    truncate(&fresh());
    metadata(&fresh());
    publish(&fresh());
    concurrent(Arc::new(fresh()));
    wal_round_trip(fresh());
}

fn segs<S: Storage + ?Sized>(s: &S) -> Vec<SegmentInfo> {
    let mut v = s.list_segments().expect("list_segments");
    v.sort_by_key(|i| i.id);
    v
}

/// A fresh storage lists no segment and no metadata.
pub fn empty<S: Storage + ?Sized>(s: &S) {
    assert!(segs(s).is_empty(), "a fresh storage must list no segment");
    assert_eq!(
        s.list_meta("").expect("list_meta"),
        Vec::<String>::new(),
        "a fresh storage must list no metadata"
    );
    assert_eq!(s.get_meta("wal_id").expect("get_meta"), None);
}

/// `create_segment` makes an empty segment that `list_segments` shows, refuses an
/// existing one, and `remove_segment` deletes it.
pub fn segments<S: Storage + ?Sized>(s: &S) {
    s.create_segment(1).expect("create_segment(1)");
    s.create_segment(1000).expect("create_segment(1000)");
    assert_eq!(
        segs(s),
        vec![
            SegmentInfo { id: 1, len: 0 },
            SegmentInfo { id: 1000, len: 0 }
        ],
        "created segments must be listed, empty"
    );
    assert!(
        s.create_segment(1).is_err(),
        "create_segment must fail for a segment that exists"
    );
    s.write_at(1000, 0, b"abc").expect("write_at");
    assert_eq!(
        s.segment_len(1000).expect("segment_len"),
        Some(3),
        "list_segments must report the length written"
    );
    s.remove_segment(1).expect("remove_segment");
    assert_eq!(segs(s), vec![SegmentInfo { id: 1000, len: 3 }]);
    assert!(
        !s.segment_name(1000).is_empty(),
        "segment_name must name it"
    );
}

/// `write_at` / `read_at`: bytes read back as written, at any offset; a short read at
/// the end; nothing past it; a write past the end leaves a gap of zeros; `sync` works.
pub fn read_write<S: Storage + ?Sized>(s: &S) {
    s.create_segment(7).expect("create_segment");
    s.write_at(7, 0, b"hello ").expect("write_at 0");
    s.write_at(7, 6, b"world").expect("write_at 6");
    s.sync(7).expect("sync");
    assert_eq!(s.read_vec(7, 0, 11).expect("read"), b"hello world");
    assert_eq!(
        s.read_vec(7, 6, 100).expect("read"),
        b"world",
        "short read at the end"
    );
    let mut buf = [0u8; 4];
    assert_eq!(s.read_at(7, 11, &mut buf).expect("read at the end"), 0);
    assert_eq!(s.read_at(7, 50, &mut buf).expect("read past the end"), 0);
    // Overwrite in place.
    s.write_at(7, 0, b"J").expect("overwrite");
    assert_eq!(s.read_vec(7, 0, 5).expect("read"), b"Jello");
    // Past the end: zeros in between.
    s.write_at(7, 16, b"!").expect("write past the end");
    assert_eq!(
        s.read_vec(7, 11, 6).expect("read"),
        [0, 0, 0, 0, 0, b'!'],
        "a gap must read as zeros"
    );
    assert_eq!(s.segment_len(7).expect("len"), Some(17));
    s.preallocate(7, 4096).expect("preallocate");
    assert_eq!(
        s.read_vec(7, 0, 17).expect("read after preallocate").len(),
        17,
        "preallocate must not change what reads back"
    );
    s.start_writeback(7, 0, 17).expect("start_writeback");
    assert_eq!(
        s.read_vec(7, 0, 17).expect("read after start_writeback"),
        b"Jello world\0\0\0\0\0!",
        "start_writeback must not change what reads back"
    );
    s.write_zeroes(7, 17, 100_000).expect("write_zeroes");
    assert_eq!(
        s.read_vec(7, 0, 17).expect("read after write_zeroes"),
        b"Jello world\0\0\0\0\0!",
        "write_zeroes must not change the bytes before its range"
    );
    assert!(
        s.read_vec(7, 17, 100_000)
            .expect("read the zeroed range")
            .iter()
            .all(|&b| b == 0),
        "a range given to write_zeroes must read as zeros (or not at all)"
    );
    s.write_at(7, 17, b"after").expect("write over zeros");
    assert_eq!(s.read_vec(7, 12, 10).expect("read"), b"\0\0\0\0!after");
    s.sync(7).expect("sync");
    // Large writes and reads.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    s.create_segment(8).expect("create_segment");
    s.write_at(8, 0, &big).expect("large write");
    s.start_writeback(8, 0, 262_144)
        .expect("start_writeback of whole pages");
    s.sync(8).expect("sync");
    assert!(
        s.read_vec(8, 0, big.len()).expect("large read") == big,
        "large read back"
    );
}

/// `truncate` cuts a segment.
pub fn truncate<S: Storage + ?Sized>(s: &S) {
    s.create_segment(3).expect("create_segment");
    s.write_at(3, 0, b"0123456789").expect("write_at");
    s.truncate(3, 4).expect("truncate");
    s.sync(3).expect("sync");
    assert_eq!(s.read_vec(3, 0, 10).expect("read"), b"0123");
    assert_eq!(s.segment_len(3).expect("len"), Some(4));
    s.write_at(3, 4, b"x").expect("write after truncate");
    assert_eq!(s.read_vec(3, 0, 10).expect("read"), b"0123x");
}

/// Metadata: put, get, overwrite, list by prefix, remove (absent keys too), with the
/// key shapes walspool uses.
pub fn metadata<S: Storage + ?Sized>(s: &S) {
    let keys = [
        "wal_id",
        "counters",
        "consumer.audit-sink",
        "consumer.a_b.c",
        "deadletter.audit.00000000000000000042",
    ];
    for (i, k) in keys.iter().enumerate() {
        s.put_meta(k, format!("v{i}").as_bytes()).expect("put_meta");
    }
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            s.get_meta(k).expect("get_meta").as_deref(),
            Some(format!("v{i}").as_bytes()),
            "get_meta({k:?})"
        );
    }
    s.put_meta("wal_id", b"").expect("put_meta empty");
    assert_eq!(
        s.get_meta("wal_id").expect("get_meta").as_deref(),
        Some(&b""[..])
    );
    s.put_meta("counters", &[7u8; 10_000])
        .expect("put_meta overwrite");
    assert_eq!(
        s.get_meta("counters").expect("get_meta").map(|v| v.len()),
        Some(10_000)
    );
    let mut consumers = s.list_meta("consumer.").expect("list_meta");
    consumers.sort();
    assert_eq!(consumers, ["consumer.a_b.c", "consumer.audit-sink"]);
    let mut all = s.list_meta("").expect("list_meta");
    all.sort();
    let mut want: Vec<&str> = keys.to_vec();
    want.sort();
    assert_eq!(all, want, "list_meta(\"\") lists every key");
    s.remove_meta("consumer.a_b.c").expect("remove_meta");
    assert_eq!(s.get_meta("consumer.a_b.c").expect("get_meta"), None);
    s.remove_meta("consumer.a_b.c")
        .expect("remove_meta of an absent key must succeed");
    assert_eq!(
        s.list_meta("consumer.").expect("list_meta"),
        ["consumer.audit-sink"]
    );
}

/// `publish` replaces a document without error; `location` names the storage.
pub fn publish<S: Storage + ?Sized>(s: &S) {
    s.publish("stats.json", b"{}").expect("publish");
    s.publish("stats.json", b"{\"a\":1}")
        .expect("publish again");
    assert!(!s.location().is_empty(), "location must not be empty");
}

/// Concurrent calls: writers on different segments at once, and `read_at` beside
/// `write_at` on one segment, from several threads.
pub fn concurrent<S: Storage>(s: Arc<S>) {
    const N: u64 = 4;
    const WRITES: u64 = 200;
    for id in 0..N {
        s.create_segment(100 + id).expect("create_segment");
    }
    std::thread::scope(|scope| {
        for id in 0..N {
            let s = &s;
            scope.spawn(move || {
                for i in 0..WRITES {
                    s.write_at(100 + id, i * 8, &(id * 1_000_000 + i).to_le_bytes())
                        .expect("concurrent write_at");
                    if i % 50 == 0 {
                        s.sync(100 + id).expect("concurrent sync");
                    }
                }
            });
            scope.spawn(move || {
                // Reading beside the writer must work (what it sees of a write in
                // progress is unspecified).
                for _ in 0..50 {
                    let got = s
                        .read_vec(100 + id, 0, (WRITES * 8) as usize)
                        .expect("read");
                    assert!(got.len() as u64 <= WRITES * 8);
                }
            });
        }
    });
    for id in 0..N {
        s.sync(100 + id).expect("sync");
        let got = s
            .read_vec(100 + id, 0, (WRITES * 8) as usize)
            .expect("read");
        assert_eq!(got.len() as u64, WRITES * 8);
        for (i, c) in got.chunks_exact(8).enumerate() {
            assert_eq!(
                u64::from_le_bytes(c.try_into().unwrap()),
                id * 1_000_000 + i as u64
            );
        }
    }
    assert_eq!(segs(&*s).len() as u64, N);
}

/// A WAL on the storage: open, append across several segments, read back, commit,
/// close.
pub fn wal_round_trip<S: Storage>(s: S) {
    use crate::{Options, Wal};
    use futures::StreamExt;
    let wal = Wal::open(s, Options::default().segment_size(4096)).expect("open a WAL");
    crate::blocking::wait(async {
        let records: Vec<String> = (0..500).map(|i| format!("record {i:04}")).collect();
        let range = wal.append_batch(&records).await.expect("append_batch");
        assert_eq!(range, 1..501);
        assert!(
            !wal.sealed_segments().is_empty(),
            "500 records of 4 KiB segments roll"
        );
        let got: Vec<String> = wal
            .read_range::<String>(1, 500)
            .map(|e| e.expect("read").record)
            .collect()
            .await;
        assert_eq!(got, records, "records read back as appended");
        let c = wal.consumer("conformance").expect("consumer");
        c.commit(500).await.expect("commit");
        assert_eq!(c.committed(), 500);
        wal.close().await.expect("close");
    });
}
