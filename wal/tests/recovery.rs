//! Recovery tells corruption from a torn tail (issue 13): damage to synced records is
//! refused (strict) or skipped and counted (lenient), a missing tail is detected, a torn
//! tail is cut, and no sequence number that may have been acknowledged is reused.
//!
//! The corruption sweep flips a bit at every k-th byte of every segment of a WAL with
//! sealed segments and a 1,000+ record active segment, and cuts the unsynced tail at
//! every byte. `WALSPOOL_SWEEP_STRIDE=1` flips every byte (long run).

use futures::executor::block_on;
use walspool_wal::format::{decode_frame, Decoded, HEADER_LEN};
use walspool_wal::recovery::{LogEnd, META_END};
use walspool_wal::{inspect, Error, HmacKey, Memory, Options, RecoveryMode, Storage, Tear, Wal};

const RECORDS: u64 = 4400;

fn rec(i: u64) -> String {
    format!("record {i:06} {}", "x".repeat((i % 23) as usize + 10))
}

fn opts() -> Options {
    Options::default()
        .segment_size(96 << 10)
        .stats_interval(None)
}

/// A cleanly closed WAL: sealed segments and an active one with ≥ 1,000 records.
fn build() -> Memory {
    let mem = Memory::new();
    block_on(async {
        let wal = Wal::open(mem.clone(), opts()).unwrap();
        for chunk in (1..=RECORDS).collect::<Vec<_>>().chunks(50) {
            let recs: Vec<String> = chunk.iter().map(|&i| rec(i)).collect();
            wal.append_batch(&recs).await.unwrap();
        }
        wal.close().await.unwrap();
    });
    let segs = segments(&mem);
    assert!(segs.len() >= 3, "want sealed segments: {segs:?}");
    let active = *segs.last().unwrap();
    assert!(
        RECORDS + 1 - active >= 1000,
        "active segment holds {} records",
        RECORDS + 1 - active
    );
    mem
}

fn segments(mem: &Memory) -> Vec<u64> {
    let mut v: Vec<u64> = mem.list_segments().unwrap().iter().map(|s| s.id).collect();
    v.sort();
    v
}

/// Every record from 1 on, until the end or the first error.
fn read_all(wal: &Wal<Memory>) -> (Vec<(u64, String)>, Option<Error>) {
    let mut out = Vec::new();
    let mut r = wal.read_from::<String>(1);
    loop {
        match r.try_next() {
            Ok(Some(e)) => out.push((e.seq, e.record)),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

fn assert_prefix_intact(got: &[(u64, String)], what: &str) {
    for (i, (seq, r)) in got.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1, "{what}: sequence {seq} at position {i}");
        assert_eq!(r, &rec(*seq), "{what}: record {seq} differs");
    }
}

/// Offsets of the frames of a segment (start of each frame) and the end of the last.
fn frame_offsets(bytes: &[u8]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut pos = HEADER_LEN;
    while let Decoded::Frame(f, n) = decode_frame(&bytes[pos..]) {
        out.push((pos as u64, f.seq));
        pos += n;
    }
    out.push((pos as u64, 0));
    out
}

#[test]
fn a_flipped_byte_in_the_active_segment_is_corruption_not_a_torn_tail() {
    let mem = build();
    let active = *segments(&mem).last().unwrap();
    let name = mem.segment_name(active);
    let mut bytes = mem.segment_bytes(active).unwrap();
    let offs = frame_offsets(&bytes);
    // A frame in the middle of the active segment.
    let (at, seq) = offs[offs.len() / 2];
    bytes[at as usize + 30] ^= 0x5a;
    mem.set_segment_bytes(active, bytes.clone());

    // verify names the place.
    let err = inspect::verify(&mem).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { segment, .. } if segment == &name),
        "{err}"
    );

    // Strict: refuses, naming segment, offset and what follows.
    let err = Wal::open(mem.clone(), opts()).unwrap_err();
    match &err {
        Error::Corrupt {
            segment,
            offset,
            reason,
        } => {
            assert_eq!(segment, &name);
            assert_eq!(*offset, at);
            let after = RECORDS - seq;
            assert!(
                reason.contains(&format!("{after} intact record(s) follow")),
                "{reason}"
            );
        }
        other => panic!("{other}"),
    }
    // Nothing was cut by the refusal.
    assert_eq!(mem.segment_bytes(active).unwrap(), bytes);

    // Lenient: skips the damaged record, keeps every one after it, counts it, and
    // continues after the last sequence number.
    block_on(async {
        let wal = Wal::open(mem.clone(), opts().recovery(RecoveryMode::Lenient)).unwrap();
        assert_eq!(wal.metrics().corrupt_skipped_total, 1);
        let next = wal.append(&rec(RECORDS + 1)).await.unwrap();
        assert_eq!(next, RECORDS + 1, "no sequence number reused");
        let mut r = wal.read_from::<String>(seq + 1);
        for want in seq + 1..=RECORDS + 1 {
            let e = r.try_next().unwrap().expect("record kept");
            assert_eq!((e.seq, e.record), (want, rec(want)));
        }
        wal.close().await.unwrap();
    });
}

#[test]
fn a_missing_or_shortened_tail_is_detected() {
    // The newest segment deleted.
    let mem = build();
    let active = *segments(&mem).last().unwrap();
    mem.remove_segment(active).unwrap();
    assert!(
        inspect::verify(&mem).is_err(),
        "verify must see the missing tail"
    );
    let err = Wal::open(mem.clone(), opts()).unwrap_err().to_string();
    assert!(
        err.contains(&format!("records {active}..={RECORDS} are missing")),
        "{err}"
    );
    // Lenient: continues after the last durable sequence number, never reusing one.
    block_on(async {
        let wal = Wal::open(mem.clone(), opts().recovery(RecoveryMode::Lenient)).unwrap();
        assert_eq!(wal.append(&rec(0)).await.unwrap(), RECORDS + 1);
        assert_eq!(
            wal.metrics().corrupt_skipped_total,
            RECORDS + 1 - active,
            "lost records are counted"
        );
        wal.close().await.unwrap();
    });

    // The newest segment cut at a frame boundary.
    let mem = build();
    let active = *segments(&mem).last().unwrap();
    let bytes = mem.segment_bytes(active).unwrap();
    let offs = frame_offsets(&bytes);
    let (cut, seq) = offs[offs.len() / 3];
    mem.set_segment_bytes(active, bytes[..cut as usize].to_vec());
    assert!(inspect::verify(&mem).is_err());
    let err = Wal::open(mem.clone(), opts()).unwrap_err().to_string();
    assert!(err.contains(&format!("records {seq}..={RECORDS}")), "{err}");
}

#[test]
fn with_a_key_the_recovery_point_is_authenticated() {
    let key = HmacKey::new(vec![7u8; 32]).unwrap();
    let other = HmacKey::new(vec![8u8; 32]).unwrap();
    let mem = Memory::new();
    block_on(async {
        let wal = Wal::open(mem.clone(), opts().hmac_key(key.clone())).unwrap();
        for i in 1..=200 {
            wal.append(&rec(i)).await.unwrap();
        }
        wal.close().await.unwrap();
    });
    // Someone without the key cuts the tail and writes a matching recovery point.
    let active = *segments(&mem).last().unwrap();
    let bytes = mem.segment_bytes(active).unwrap();
    mem.set_segment_bytes(active, bytes[..bytes.len() / 2].to_vec());
    let forged = LogEnd {
        base: active,
        offset: 0,
        last_seq: 0,
        flags: 0,
    };
    mem.put_meta(META_END, &forged.encode(Some(&other)))
        .unwrap();
    let err = Wal::open(mem.clone(), opts().hmac_key(key.clone()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("meta end"), "{err}");
    mem.put_meta(META_END, &forged.encode(None)).unwrap();
    let err = Wal::open(mem.clone(), opts().hmac_key(key.clone()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("carries no MAC"), "{err}");
    mem.remove_meta(META_END).unwrap();
    let err = Wal::open(mem.clone(), opts().hmac_key(key))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing"), "{err}");
}

#[test]
fn rotate_key_on_an_empty_segment_does_not_poison() {
    let k1 = HmacKey::new(vec![1u8; 32]).unwrap();
    let k2 = HmacKey::new(vec![2u8; 32]).unwrap();
    let k3 = HmacKey::new(vec![3u8; 32]).unwrap();
    let mem = Memory::new();
    block_on(async {
        let wal = Wal::open(mem.clone(), opts().hmac_key(k1.clone())).unwrap();
        // A fresh WAL: the active segment holds no records.
        wal.rotate_key(k2.clone()).unwrap();
        assert_eq!(wal.append(&rec(1)).await.unwrap(), 1);
        // Two rotations in a row.
        wal.rotate_key(k3.clone()).unwrap();
        wal.rotate_key(k1.clone()).unwrap();
        wal.rotate_key(k3.clone()).unwrap();
        assert_eq!(wal.append(&rec(2)).await.unwrap(), 2);
        wal.close().await.unwrap();
    });
    let rep = walspool_wal::verify_chain(&mem, &[k1, k2, k3.clone()], Some(2)).unwrap();
    assert_eq!(rep.records, 2);
    block_on(async {
        let wal = Wal::open(mem.clone(), opts().hmac_key(k3)).unwrap();
        assert_eq!(wal.append(&rec(3)).await.unwrap(), 3);
        wal.close().await.unwrap();
    });
}

#[test]
fn a_failed_fdatasync_is_cut_at_the_last_good_sync_on_reopen() {
    let mem = Memory::new();
    block_on(async {
        let wal = Wal::open(mem.clone(), opts()).unwrap();
        for i in 1..=10 {
            wal.append(&rec(i)).await.unwrap();
        }
        mem.fail_nth_sync(1);
        assert!(wal.append(&rec(11)).await.is_err());
        let _ = wal.close().await;
    });
    // The process restarts (page cache kept): record 11 is readable but was never
    // confirmed durable. It must not come back as a durable record.
    block_on(async {
        let wal = Wal::open(mem.clone(), opts()).unwrap();
        let (got, err) = read_all(&wal);
        assert!(err.is_none());
        assert_eq!(got.len(), 10, "record 11 was never acknowledged");
        assert_eq!(wal.append(&rec(11)).await.unwrap(), 11);
        wal.close().await.unwrap();
    });
}

#[test]
fn a_consumer_checkpoint_beyond_the_log_is_an_error() {
    let mem = build();
    let last = RECORDS;
    block_on(async {
        let wal = Wal::open(mem.clone(), opts()).unwrap();
        let c = wal.consumer("sink").unwrap();
        c.commit(last).await.unwrap();
        wal.close().await.unwrap();
    });
    // The end record and the tail are both lost (e.g. restored from an old copy).
    let active = *segments(&mem).last().unwrap();
    let bytes = mem.segment_bytes(active).unwrap();
    let offs = frame_offsets(&bytes);
    let (cut, _) = offs[10];
    mem.set_segment_bytes(active, bytes[..cut as usize].to_vec());
    mem.remove_meta(META_END).unwrap();
    let err = Wal::open(mem.clone(), opts()).unwrap_err().to_string();
    assert!(err.contains("consumer \"sink\" has committed"), "{err}");
}

fn stride() -> usize {
    std::env::var("WALSPOOL_SWEEP_STRIDE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(131)
}

/// Flip one bit at every k-th byte of every segment: every case is refused at open,
/// reported by the reader, or reported by verify — never a silent loss, never a
/// reused sequence number.
#[test]
fn corruption_sweep_bit_flips() {
    let base = build();
    let segs = segments(&base);
    let k = stride();
    let (mut cases, mut refused, mut read_err, mut lenient_ok) = (0u64, 0u64, 0u64, 0u64);
    for &id in &segs {
        let orig = base.segment_bytes(id).unwrap();
        let mut pos = (id as usize * 7) % k;
        while pos < orig.len() {
            cases += 1;
            let m = base.crash(Tear::None);
            let mut b = orig.clone();
            b[pos] ^= 1 << (pos % 8);
            m.set_segment_bytes(id, b);
            let what = format!("segment {id} byte {pos}");
            assert!(
                inspect::verify(&m).is_err(),
                "{what}: verify said ok on a damaged WAL"
            );
            match Wal::open(m.clone(), opts()) {
                Err(e) => {
                    assert!(
                        matches!(e, Error::Corrupt { .. }),
                        "{what}: unclear error {e}"
                    );
                    refused += 1;
                }
                Ok(wal) => {
                    let (got, err) = read_all(&wal);
                    assert_prefix_intact(&got, &what);
                    match err {
                        Some(Error::Corrupt { .. }) => read_err += 1,
                        Some(e) => panic!("{what}: unclear error {e}"),
                        None => panic!(
                            "{what}: a damaged WAL opened and read back {} records without an error",
                            got.len()
                        ),
                    }
                    let next = block_on(wal.append(&rec(0))).unwrap();
                    assert!(next > RECORDS, "{what}: sequence {next} reused");
                    block_on(wal.close()).unwrap();
                }
            }
            // Lenient always opens and never reuses a sequence number.
            let wal = Wal::open(m.clone(), opts().recovery(RecoveryMode::Lenient))
                .unwrap_or_else(|e| panic!("{what}: lenient refused: {e}"));
            let next = block_on(wal.append(&rec(0))).unwrap();
            assert!(next > RECORDS, "{what}: lenient reused sequence {next}");
            block_on(wal.close()).unwrap();
            lenient_ok += 1;
            pos += k;
        }
    }
    println!(
        "corruption sweep: stride {k}, {cases} bit flips over {} segments: {refused} refused at open, {read_err} reported by the reader, {lenient_ok} opened lenient without reusing a sequence number; 0 silent",
        segs.len()
    );
    assert!(cases >= 2000 || k > 131, "only {cases} positions");
}

/// Cut the unsynced tail at every byte (and fill the rest with zeros, as preallocated
/// space reads, or with garbage): recovery keeps every synced record and cuts the rest.
#[test]
fn corruption_sweep_unsynced_tail_cuts() {
    let base = build();
    let active = *segments(&base).last().unwrap();
    let orig = base.segment_bytes(active).unwrap();
    let offs = frame_offsets(&orig);
    // Pretend the last 40 records were written but not yet synced.
    let (synced_to, first_unsynced) = offs[offs.len() - 41];
    let synced_last = first_unsynced - 1;
    let end = LogEnd {
        base: active,
        offset: synced_to,
        last_seq: synced_last,
        flags: 0,
    };
    let mut cases = 0u64;
    for cut in synced_to as usize..=orig.len() {
        for fill in 0..3 {
            cases += 1;
            let m = base.crash(Tear::None);
            m.put_meta(META_END, &end.encode(None)).unwrap();
            let mut b = orig[..cut].to_vec();
            match fill {
                0 => {}
                1 => b.resize(orig.len() + 512, 0),
                _ => b.extend((0..37u8).map(|i| i.wrapping_mul(89) ^ 0xa5)),
            }
            m.set_segment_bytes(active, b);
            let what = format!("cut at {cut} fill {fill}");
            let wal = Wal::open(m.clone(), opts()).unwrap_or_else(|e| panic!("{what}: {e}"));
            // Sealed segments are untouched: read the active one.
            let mut got = Vec::new();
            let mut r = wal.read_from::<String>(active);
            while let Some(e) = r.try_next().unwrap_or_else(|e| panic!("{what}: {e}")) {
                assert_eq!(e.record, rec(e.seq), "{what}");
                got.push(e.seq);
            }
            assert!(got.iter().copied().eq(active..active + got.len() as u64));
            let kept = active - 1 + got.len() as u64;
            assert!(kept >= synced_last, "{what}: synced records lost");
            let whole_before_cut = offs.windows(2).filter(|w| w[1].0 <= cut as u64).count() as u64;
            assert_eq!(
                kept,
                active - 1 + whole_before_cut,
                "{what}: every whole frame before the cut is kept"
            );
            let next = block_on(wal.append(&rec(kept + 1))).unwrap();
            assert_eq!(next, kept + 1);
            block_on(wal.close()).unwrap();
        }
    }
    println!("unsynced tail sweep: {cases} cuts, every synced record kept");
}

/// Found by the crash model: the fdatasync of a new segment's header fails (the roll
/// poisons the WAL); the process restarts with the page cache kept, so the header reads
/// back fine but was never made durable (a later fdatasync does not write it either).
/// Recovery must write it again, or a power loss after new acknowledged appends leaves a
/// segment without a header that the recovery point says was durable.
#[test]
fn a_new_segment_whose_header_sync_failed_is_made_durable_on_reopen() {
    let mem = Memory::new();
    block_on(async {
        let wal = Wal::open(mem.clone(), opts()).unwrap();
        for i in 1..=5 {
            wal.append(&rec(i)).await.unwrap();
        }
        // The roll's first fdatasync seals the old segment, the second is the new
        // segment's header.
        mem.fail_nth_sync(2);
        wal.roll();
        assert!(wal.flush().await.is_err());
        let _ = wal.close().await;
    });
    // Restart, page cache kept; new acknowledged records.
    block_on(async {
        let wal = Wal::open(mem.clone(), opts()).unwrap();
        for i in 6..=8 {
            assert_eq!(wal.append(&rec(i)).await.unwrap(), i);
        }
        wal.close().await.unwrap();
    });
    // Power loss.
    let after = mem.crash(Tear::None);
    let wal = Wal::open(after, opts()).unwrap_or_else(|e| panic!("{e}"));
    let (got, err) = read_all(&wal);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got.len(), 8);
    assert_prefix_intact(&got, "after the power loss");
}
