//! Failing fsync, EIO and a full device through fault injection on `Memory` (issue 7,
//! items 3 and 4): the WAL poisons itself, no pending append resolves `Ok` unless its
//! record is durable, and everything acknowledged survives a power loss.

use std::collections::BTreeMap;

use futures::executor::block_on;
use futures::future::join_all;
use walspool_wal::{Durability, Error, Memory, Options, Tear, Wal};

fn opts() -> Options {
    Options::default()
        .durability(Durability::Sync)
        .segment_size(8192)
        .stats_interval(None)
}

fn rec(i: u64) -> String {
    format!("record-{i:06}-{}", "z".repeat((i % 50) as usize))
}

/// Reads every record of a WAL opened on `mem` after a power loss (nothing unsynced
/// kept) and checks that every acknowledged record is there, unchanged.
fn assert_acked_survive(mem: &Memory, acked: &BTreeMap<u64, String>) -> Wal<Memory> {
    let after = mem.crash(Tear::None);
    let wal = Wal::open(after, opts()).expect("reopen after the power loss");
    let mut s = wal.read_from::<String>(1);
    let mut got = BTreeMap::new();
    while let Some(e) = s.try_next().expect("no corrupt record") {
        got.insert(e.seq, e.record);
    }
    for (seq, r) in acked {
        assert_eq!(
            got.get(seq),
            Some(r),
            "acknowledged record {seq} lost or changed after a power loss"
        );
    }
    wal
}

/// Concurrent appenders share one fsync; when it fails, none of them is acknowledged,
/// and every later append, flush and close fails with `Poisoned`.
#[test]
fn failed_group_fsync_acks_no_one_and_poisons() {
    for fail_at in 1..6u64 {
        let mem = Memory::new();
        mem.set_sync_delay(Some(std::time::Duration::from_millis(2)));
        let wal = Wal::open(mem.clone(), opts()).unwrap();
        let mut acked = BTreeMap::new();
        for i in 0..5 {
            let s = block_on(wal.append(&rec(i))).unwrap();
            acked.insert(s, rec(i));
        }
        mem.fail_nth_sync(fail_at);
        let mut failed = 0;
        let mut round = 0u64;
        while failed == 0 && round < 50 {
            round += 1;
            // A group of concurrent appenders: they share fsyncs (group commit).
            let results = block_on(join_all((0..8).map(|k| {
                let w = wal.clone();
                let i = 100 + round * 10 + k;
                async move { (i, w.append(&rec(i)).await) }
            })));
            for (i, r) in results {
                match r {
                    Ok(seq) => {
                        assert_eq!(
                            failed, 0,
                            "an append was acknowledged after the fsync failure"
                        );
                        acked.insert(seq, rec(i));
                    }
                    Err(e) => {
                        assert!(matches!(e, Error::Poisoned { .. }), "{e}");
                        failed += 1;
                    }
                }
            }
        }
        // Once poisoned, always poisoned.
        let later = block_on(wal.append(&rec(999)));
        assert!(matches!(later, Err(Error::Poisoned { .. })), "{later:?}");
        let flushed = block_on(wal.flush());
        assert!(
            matches!(flushed, Err(Error::Poisoned { .. })),
            "{flushed:?}"
        );
        let msg = later.unwrap_err().to_string();
        assert!(msg.contains("poisoned") && msg.contains("fsync"), "{msg}");
        assert!(
            block_on(wal.close()).is_err(),
            "close of a poisoned WAL must report it"
        );
        drop(wal);
        let reopened = assert_acked_survive(&mem, &acked);
        // After a reopen the WAL accepts writes again.
        let s = block_on(reopened.append(&rec(5000))).unwrap();
        assert!(s > *acked.keys().next_back().unwrap());
        block_on(reopened.close()).unwrap();
    }
}

/// `fail_all_syncs`: nothing after the failure is acknowledged, ever.
#[test]
fn every_fsync_failing_acks_nothing() {
    let mem = Memory::new();
    let wal = Wal::open(mem.clone(), opts()).unwrap();
    let mut acked = BTreeMap::new();
    for i in 0..20 {
        acked.insert(block_on(wal.append(&rec(i))).unwrap(), rec(i));
    }
    mem.fail_all_syncs(true);
    for i in 20..40 {
        let r = block_on(wal.append(&rec(i)));
        assert!(
            matches!(r, Err(Error::Poisoned { .. })),
            "append {i}: {r:?}"
        );
    }
    let batch = block_on(wal.append_batch(&[rec(41), rec(42)]));
    assert!(matches!(batch, Err(Error::Poisoned { .. })), "{batch:?}");
    drop(wal);
    mem.fail_all_syncs(false);
    block_on(assert_acked_survive(&mem, &acked).close()).unwrap();
}

/// EIO on a write (the nth write from now, for several n): poisoned, no false ack.
#[test]
fn eio_on_write_poisons_without_false_ack() {
    for n in 1..8u64 {
        let mem = Memory::new();
        let wal = Wal::open(mem.clone(), opts()).unwrap();
        let mut acked = BTreeMap::new();
        mem.fail_nth_write(n);
        let mut poisoned = false;
        for i in 0..400u64 {
            // A mix of single appends, batches, and rolls (footer and header writes).
            let r = if i % 7 == 0 {
                block_on(wal.append_batch(&[rec(i), rec(i + 10_000)])).map(|r| {
                    acked.insert(r.start, rec(i));
                    acked.insert(r.start + 1, rec(i + 10_000));
                })
            } else {
                block_on(wal.append(&rec(i))).map(|s| {
                    acked.insert(s, rec(i));
                })
            };
            if i % 5 == 0 {
                wal.roll();
            }
            if let Err(e) = r {
                assert!(matches!(e, Error::Poisoned { .. }), "{e}");
                // The OS error is the source, printed once in the chain.
                let chain = walspool_wal::error::display_chain(&e);
                assert!(chain.contains("EIO"), "{chain}");
                assert_eq!(chain.matches("EIO").count(), 1, "{chain}");
                poisoned = true;
                break;
            }
        }
        assert!(poisoned, "the injected EIO on write {n} never surfaced");
        assert!(block_on(wal.append(&rec(1))).is_err());
        drop(wal);
        block_on(assert_acked_survive(&mem, &acked).close()).unwrap();
    }
}

/// The device fills up (`set_capacity`): a clear no-space error, no false ack; once
/// space is freed the reopened WAL accepts writes with everything acknowledged intact.
#[test]
fn full_memory_device_gives_no_space_and_recovers() {
    let mem = Memory::new();
    mem.set_capacity(Some(40_000));
    let wal = Wal::open(mem.clone(), opts()).unwrap();
    let mut acked = BTreeMap::new();
    let mut err = None;
    for i in 0..100_000u64 {
        match block_on(wal.append(&rec(i))) {
            Ok(s) => {
                acked.insert(s, rec(i));
            }
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let err = err.expect("a 40 kB device must fill up");
    assert!(err.is_no_space(), "not reported as no space: {err}");
    assert!(!acked.is_empty());
    let again = block_on(wal.append(&rec(1))).unwrap_err();
    assert!(again.is_no_space(), "{again}");
    assert!(
        walspool_wal::error::display_chain(&again).contains("no space"),
        "{again}"
    );
    drop(wal);

    // Still full: a reopen either fails with no-space or opens and refuses appends.
    match Wal::open(mem.clone(), opts()) {
        Ok(w) => {
            let r = block_on(w.append(&rec(3).repeat(20)));
            assert!(r.as_ref().is_err_and(|e| e.is_no_space()), "{r:?}");
        }
        Err(e) => assert!(e.is_no_space(), "{e}"),
    }

    // Free space; power loss for good measure; everything acked is there.
    mem.set_capacity(None);
    let wal = assert_acked_survive(&mem, &acked);
    let s = block_on(wal.append(&rec(77))).unwrap();
    assert!(s > *acked.keys().next_back().unwrap());
    block_on(wal.close()).unwrap();
}

/// A failing fsync in `Durability::Periodic`: `flush` reports it and the WAL is poisoned.
#[test]
fn periodic_durability_failed_fsync_is_reported_by_flush() {
    let mem = Memory::new();
    let wal = Wal::open(
        mem.clone(),
        opts().durability(Durability::Periodic(std::time::Duration::from_secs(3600))),
    )
    .unwrap();
    block_on(wal.append(&rec(1))).unwrap();
    block_on(wal.flush()).unwrap();
    let synced = wal.durable_seq();
    mem.fail_all_syncs(true);
    block_on(wal.append(&rec(2))).unwrap();
    let f = block_on(wal.flush());
    assert!(matches!(f, Err(Error::Poisoned { .. })), "{f:?}");
    assert_eq!(
        wal.durable_seq(),
        synced,
        "durable_seq moved past a failed fsync"
    );
    assert!(block_on(wal.append(&rec(3))).is_err());
}

/// Runs `f` on a thread; a WAL that hangs fails the test instead of hanging it.
fn within_a_minute<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what} never returned (hang, or a WAL thread panicked)"))
}

/// After a failed write poisons the WAL, a requested roll (or an age-based one) must not
/// touch the storage: no footer, no new segment (its base would skip the sequence
/// numbers of the failed appends), and `close` must still answer.
#[test]
fn poisoned_wal_does_no_io_and_close_answers() {
    for age_roll in [false, true] {
        let mem = Memory::new();
        let mut o = opts();
        if age_roll {
            o = o.segment_max_age(std::time::Duration::from_millis(200));
        }
        let wal = Wal::open(mem.clone(), o).unwrap();
        let acked = block_on(wal.append(&rec(1))).unwrap();
        mem.fail_nth_write(1);
        let r = block_on(wal.append(&rec(2)));
        assert!(matches!(r, Err(Error::Poisoned { .. })), "{r:?}");
        let writes = mem.counters().writes;
        let segments = walspool_wal::Storage::list_segments(&mem).unwrap();
        if !age_roll {
            wal.roll();
        }
        // Give the writer a moment to act on the roll (or the age limit) first; the
        // test cannot fail because of this pause, only miss the race.
        std::thread::sleep(std::time::Duration::from_millis(if age_roll {
            400
        } else {
            50
        }));
        let w = wal.clone();
        let closed = within_a_minute("close of a poisoned WAL", move || block_on(w.close()));
        assert!(matches!(closed, Err(Error::Poisoned { .. })), "{closed:?}");
        assert_eq!(mem.counters().writes, writes, "a poisoned WAL kept writing");
        assert_eq!(
            walspool_wal::Storage::list_segments(&mem).unwrap(),
            segments,
            "a poisoned WAL rolled to a new segment"
        );
        drop(wal);
        let wal = Wal::open(mem.clone(), opts()).unwrap();
        assert_eq!(wal.durable_seq(), acked);
        let next = block_on(wal.append(&rec(3))).unwrap();
        assert_eq!(next, acked + 1, "sequence numbers must stay contiguous");
        block_on(wal.close()).unwrap();
    }
}

/// The crash model of a failed fsync, on `Memory` itself (no WAL): like Linux after a
/// writeback error, the bytes that were dirty stay readable, a later successful sync
/// does not make them durable, and a power loss drops them. Writing them again does.
#[test]
fn memory_failed_sync_leaves_bytes_readable_but_never_durable() {
    use walspool_wal::{Storage, StorageExt};
    let a = b"AAAAAAAA".to_vec();
    let b = b"BBBBBBBB".to_vec();
    let c = b"CCCC".to_vec();
    let read_all = |m: &Memory| m.read_vec(1, 0, 1 << 10).unwrap();
    let setup = || {
        let mem = Memory::new();
        mem.create_segment(1).unwrap();
        mem.write_at(1, 0, &a).unwrap();
        mem.sync(1).unwrap();
        mem.write_at(1, 8, &b).unwrap();
        mem.fail_nth_sync(1);
        mem.sync(1).expect_err("injected failure");
        mem
    };

    // Still readable after the failure.
    let mem = setup();
    assert_eq!(read_all(&mem), [&a[..], &b[..]].concat());
    // Without a later sync, no tear can keep them.
    for tear in [Tear::None, Tear::Keep(100), Tear::Garbage(100)] {
        assert_eq!(read_all(&mem.crash(tear)), a, "{tear:?}");
    }

    // A later sync "succeeds" but does not write them: after a power loss the file is
    // as long as it was (the size was written), the lost bytes are zeros, and the bytes
    // written after them survive.
    mem.write_at(1, 16, &c).unwrap();
    mem.sync(1).unwrap();
    assert_eq!(read_all(&mem), [&a[..], &b[..], &c[..]].concat());
    let after = mem.crash(Tear::None);
    assert_eq!(read_all(&after), [&a[..], &[0u8; 8][..], &c[..]].concat());
    // Syncing again changes nothing.
    mem.sync(1).unwrap();
    assert_eq!(
        read_all(&mem.crash(Tear::Keep(100))),
        [&a[..], &[0u8; 8][..], &c[..]].concat()
    );

    // Overwriting synced bytes whose sync failed: the old durable bytes stay.
    let mem = setup();
    mem.write_at(1, 0, b"XX").unwrap();
    mem.fail_nth_sync(1);
    mem.sync(1).expect_err("injected failure");
    mem.sync(1).unwrap();
    assert_eq!(read_all(&mem)[..2], *b"XX");
    assert_eq!(read_all(&mem.crash(Tear::None))[..8], a[..]);

    // Writing the lost bytes again makes them dirty again: the next sync keeps them.
    let mem = setup();
    mem.write_at(1, 8, &b[..4]).unwrap();
    mem.sync(1).unwrap();
    assert_eq!(
        read_all(&mem.crash(Tear::None)),
        [&a[..], &b[..4], &[0u8; 4][..]].concat()
    );
    mem.write_at(1, 12, &b[4..]).unwrap();
    mem.sync(1).unwrap();
    assert_eq!(read_all(&mem.crash(Tear::None)), [&a[..], &b[..]].concat());

    // Truncating cuts the lost range; bytes written past the cut are new.
    let mem = setup();
    mem.truncate(1, 12).unwrap();
    mem.write_at(1, 12, b"DDDD").unwrap();
    mem.sync(1).unwrap();
    assert_eq!(
        read_all(&mem.crash(Tear::None)),
        [&a[..], &[0u8; 4][..], b"DDDD"].concat()
    );
}
