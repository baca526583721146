//! Fuzzed decoder (issue 7, item 5), with proptest.
//!
//! Arbitrary bytes, and valid segments mutated (bit flips, truncation, overwritten,
//! zeroed, duplicated and deleted ranges), are fed to `decode_frame` and, as segment
//! files, to `Wal::open` + `read_from` on `Memory`, in strict and lenient mode. They must
//! never panic, never loop (every walk is bounded by the number of bytes), and never
//! return a record whose CRC did not match: every record returned must appear verbatim,
//! CRC included, in the bytes given, and a record of a mutated valid segment must be
//! exactly the record originally written under that sequence number.
//!
//! `PROPTEST_CASES` sets the number of cases per property (default 300).

use std::collections::BTreeMap;

use futures::executor::block_on;
use futures::StreamExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use walspool_wal::format::{
    decode_frame, decode_frame_with, encode_frame, Decoded, SegmentHeader, FORMAT_VERSION,
    FRAME_HEADER_LEN, HEADER_LEN,
};
use walspool_wal::{Error, Memory, Options, RecoveryMode, Wal};

fn config() -> Config {
    Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300),
        failure_persistence: None,
        ..Config::default()
    }
}

/// The CRC of a frame computed here from the documented layout, independently of
/// `walspool_wal::format::frame_crc`: CRC-32 over len, seq, ts, payload.
fn independent_crc(frame: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&frame[0..4]);
    h.update(&frame[8..24]);
    h.update(&frame[24..]);
    h.finalize()
}

/// Walks `b` with `decode_frame` from every offset; checks what it claims.
fn walk_decoder(b: &[u8]) -> Result<(), TestCaseError> {
    for chained in [false, true] {
        let mac_len = if chained { 32 } else { 0 };
        for off in 0..b.len() {
            let rest = &b[off..];
            match decode_frame_with(rest, chained) {
                Decoded::Frame(f, n) => {
                    prop_assert_eq!(n, FRAME_HEADER_LEN + mac_len + f.payload.len());
                    prop_assert!(n <= rest.len());
                    let stored = u32::from_le_bytes(rest[4..8].try_into().unwrap());
                    prop_assert_eq!(
                        independent_crc(&rest[..n]),
                        stored,
                        "decode_frame returned a frame whose CRC does not match at {}",
                        off
                    );
                    prop_assert_eq!(f.seq, u64::from_le_bytes(rest[8..16].try_into().unwrap()));
                }
                Decoded::Incomplete { needed } => prop_assert!(
                    needed > rest.len(),
                    "Incomplete but {} bytes were there and {} needed",
                    rest.len(),
                    needed
                ),
                Decoded::Footer(_) | Decoded::Invalid(_) => {}
            }
        }
    }
    // A sequential walk as a reader does: always advances.
    let mut pos = 0;
    let mut steps = 0;
    while pos < b.len() {
        steps += 1;
        prop_assert!(steps <= b.len(), "sequential walk does not advance");
        match decode_frame(&b[pos..]) {
            Decoded::Frame(_, n) => {
                prop_assert!(n >= FRAME_HEADER_LEN);
                pos += n;
            }
            _ => break,
        }
    }
    Ok(())
}

/// Records read back (seq, payload) and the first error, if any.
type ReadBack = (Vec<(u64, Vec<u8>)>, Option<Error>);

/// Opens a WAL over `mem` and reads every record through the `Stream` API. Returns
/// what was read (seq, payload) and the first error, if any. Bounded: a stream that
/// keeps yielding after `limit` items fails the test (a loop).
fn open_and_read(
    mem: &Memory,
    mode: RecoveryMode,
    limit: usize,
) -> Result<ReadBack, TestCaseError> {
    let opts = Options::default()
        .segment_size(4096)
        .stats_interval(None)
        .recovery(mode);
    let wal = match Wal::open(mem.clone(), opts) {
        Ok(w) => w,
        Err(e) => {
            prop_assert!(!e.to_string().is_empty());
            return Ok((Vec::new(), Some(e)));
        }
    };
    let end = wal.durable_seq();
    let start = wal.first_seq_on_disk().unwrap_or(end + 1);
    let mut out = Vec::new();
    let mut first_err = None;
    let mut items = 0;
    block_on(async {
        let mut s = wal.read_range::<Vec<u8>>(start, end);
        loop {
            items += 1;
            prop_assert!(items <= limit, "read stream does not end (a loop)");
            match s.next().await {
                None => break,
                Some(Ok(e)) => out.push((e.seq, e.record)),
                Some(Err(e @ Error::Gap { .. })) => {
                    prop_assert!(false, "unexpected gap: {}", e)
                }
                Some(Err(e)) => {
                    prop_assert!(!e.to_string().is_empty());
                    if first_err.is_none() {
                        first_err = Some(e);
                    }
                }
            }
        }
        Ok(())
    })?;
    let _ = block_on(wal.close());
    Ok((out, first_err))
}

fn postcard_bytes(p: &[u8]) -> Vec<u8> {
    postcard::to_allocvec(&p.to_vec()).unwrap()
}

fn segment_with_valid_header(base: u64, body: &[u8]) -> Vec<u8> {
    let mut b = SegmentHeader {
        version: FORMAT_VERSION,
        flags: 0,
        base_seq: base,
        created_us: 1,
        chain: None,
    }
    .encode()
    .to_vec();
    b.extend_from_slice(body);
    b
}

/// Records returned from arbitrary segment bytes must appear verbatim in them.
fn check_arbitrary_segment(
    bytes: Vec<u8>,
    with_header: bool,
    sealed_before_tail: bool,
) -> Result<(), TestCaseError> {
    walk_decoder(&bytes)?;
    let seg = if with_header {
        segment_with_valid_header(1, &bytes)
    } else {
        bytes
    };
    for mode in [RecoveryMode::Strict, RecoveryMode::Lenient] {
        let mem = Memory::new();
        mem.set_segment_bytes(1, seg.clone());
        if sealed_before_tail {
            // The arbitrary segment is sealed history; the tail is a valid empty segment.
            mem.set_segment_bytes(1000, segment_with_valid_header(1000, &[]));
        }
        let limit = seg.len() / FRAME_HEADER_LEN + 8;
        let (read, _err) = open_and_read(&mem, mode, limit)?;
        for (seq, payload) in read {
            // Re-encode the frame as the writer would have: it must be in the input.
            let wire = postcard_bytes(&payload);
            let found = (0..=seg.len().saturating_sub(FRAME_HEADER_LEN)).any(|off| {
                [false, true].iter().any(|&chained| {
                    matches!(decode_frame_with(&seg[off..], chained), Decoded::Frame(f, _) if f.seq == seq && f.payload == &wire[..])
                })
            });
            prop_assert!(
                found,
                "record {} returned but no frame with a matching CRC holds it",
                seq
            );
        }
    }
    Ok(())
}

#[test]
fn arbitrary_bytes_never_panic_loop_or_lie() {
    let mut runner = TestRunner::new(config());
    let r = runner.run(
        &(
            proptest::collection::vec(any::<u8>(), 0..3000),
            any::<bool>(),
            any::<bool>(),
        ),
        |(bytes, hdr, sealed)| check_arbitrary_segment(bytes, hdr, sealed),
    );
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// Arbitrary bytes that contain valid frames (so that the decoder gets past the first
/// one): random frames, some valid, glued with random bytes.
#[test]
fn frames_glued_with_garbage_never_lie() {
    let piece = prop_oneof![
        (1u64..50, proptest::collection::vec(any::<u8>(), 0..80)).prop_map(|(seq, p)| {
            let mut b = Vec::new();
            encode_frame(&mut b, seq, 7, &postcard_bytes(&p));
            b
        }),
        proptest::collection::vec(any::<u8>(), 0..40),
    ];
    let mut runner = TestRunner::new(config());
    let r = runner.run(
        &(proptest::collection::vec(piece, 0..12), any::<bool>()),
        |(pieces, sealed)| check_arbitrary_segment(pieces.concat(), true, sealed),
    );
    if let Err(e) = r {
        panic!("{e}");
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(usize),
    Truncate(usize),
    Overwrite(usize, Vec<u8>),
    Zero(usize, usize),
    Duplicate(usize, usize),
    Delete(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => any::<usize>().prop_map(Mutation::FlipBit),
        2 => any::<usize>().prop_map(Mutation::Truncate),
        2 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(a, b)| Mutation::Overwrite(a, b)),
        1 => (any::<usize>(), 1usize..64).prop_map(|(a, n)| Mutation::Zero(a, n)),
        1 => (any::<usize>(), 1usize..200).prop_map(|(a, n)| Mutation::Duplicate(a, n)),
        1 => (any::<usize>(), 1usize..64).prop_map(|(a, n)| Mutation::Delete(a, n)),
    ]
}

fn mutate(b: &mut Vec<u8>, m: &Mutation) {
    if b.is_empty() {
        return;
    }
    let len = b.len();
    match m {
        Mutation::FlipBit(i) => b[(i / 8) % len] ^= 1 << (i % 8),
        Mutation::Truncate(i) => b.truncate(i % len),
        Mutation::Overwrite(i, bytes) => {
            for (k, x) in bytes.iter().enumerate() {
                let at = (i % len + k) % len;
                b[at] = *x;
            }
        }
        Mutation::Zero(i, n) => {
            let a = i % len;
            let e = (a + n).min(len);
            b[a..e].iter_mut().for_each(|x| *x = 0);
        }
        Mutation::Duplicate(i, n) => {
            let a = i % len;
            let e = (a + n).min(len);
            let chunk = b[a..e].to_vec();
            b.splice(e..e, chunk);
        }
        Mutation::Delete(i, n) => {
            let a = i % len;
            let e = (a + n).min(len);
            b.drain(a..e);
        }
    }
}

/// A valid WAL on `Memory`: `records` payloads, rolled after `roll_after` of them.
fn valid_wal(records: &[Vec<u8>], roll_after: Option<usize>) -> (Memory, BTreeMap<u64, Vec<u8>>) {
    let mem = Memory::new();
    let wal = Wal::open(
        mem.clone(),
        Options::default().segment_size(4096).stats_interval(None),
    )
    .unwrap();
    let mut orig = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        let seq = block_on(wal.append(r)).unwrap();
        orig.insert(seq, r.clone());
        if roll_after == Some(i) {
            wal.roll();
            block_on(wal.flush()).unwrap();
        }
    }
    block_on(wal.close()).unwrap();
    (mem, orig)
}

#[test]
fn mutated_valid_segments_never_return_a_wrong_record() {
    let strat = (
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..25),
        proptest::option::of(0usize..25),
        any::<prop::sample::Index>(),
        proptest::collection::vec(mutation(), 1..4),
    );
    let mut runner = TestRunner::new(config());
    let r = runner.run(&strat, |(records, roll_after, which, muts)| {
        let (mem, orig) = valid_wal(&records, roll_after);
        let ids: Vec<u64> = walspool_wal::Storage::list_segments(&mem)
            .unwrap()
            .iter()
            .map(|s| s.id)
            .collect();
        let victim = ids[which.index(ids.len())];
        let mut b = mem.segment_bytes(victim).unwrap();
        for m in &muts {
            mutate(&mut b, m);
        }
        walk_decoder(&b)?;
        mem.set_segment_bytes(victim, b.clone());
        let total: usize = ids
            .iter()
            .map(|&i| mem.segment_bytes(i).map_or(0, |s| s.len()))
            .sum();
        for mode in [RecoveryMode::Strict, RecoveryMode::Lenient] {
            let copy = mem.crash(walspool_wal::Tear::None);
            let (read, err) = open_and_read(&copy, mode, total / FRAME_HEADER_LEN + 8)?;
            let mut prev = None;
            for (seq, payload) in &read {
                prop_assert_eq!(
                    orig.get(seq),
                    Some(payload),
                    "record {} is not the record written under that sequence number",
                    seq
                );
                if let (Some(p), RecoveryMode::Strict) = (prev, mode) {
                    prop_assert_eq!(*seq, p + 1, "strict mode skipped records silently");
                }
                prev = Some(*seq);
            }
            if mode == RecoveryMode::Strict && err.is_none() {
                // Nothing reported: then nothing may be missing from what is on disk.
                if let (Some(first), Some(last)) = (read.first(), read.last()) {
                    prop_assert_eq!(last.0 - first.0 + 1, read.len() as u64);
                }
            }
        }
        Ok(())
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// A tail segment whose header is damaged (a bit flip: bit rot, not a crash) but which
/// holds whole records after it must be an error naming the segment, not be silently
/// wiped and recreated empty — whatever the size of its first record.
#[test]
fn damaged_tail_header_with_records_is_an_error_not_a_silent_wipe() {
    for len in [0usize, 10, 60, 200, 3000] {
        for bit in 0..(HEADER_LEN * 8) {
            let (mem, _) = valid_wal(&[vec![7u8; len], vec![8u8; 5]], None);
            let mut b = mem.segment_bytes(1).unwrap();
            b[bit / 8] ^= 1 << (bit % 8);
            mem.set_segment_bytes(1, b);
            match Wal::open(mem.clone(), Options::default().stats_interval(None)) {
                Err(e @ Error::Corrupt { .. }) => {
                    assert!(e.to_string().contains("segment"), "{e}");
                }
                Err(e) => panic!("record len {len}, bit {bit}: unexpected error {e}"),
                Ok(w) => panic!(
                    "record len {len}, bit {bit}: opened with durable_seq {} — the records were wiped",
                    w.durable_seq()
                ),
            }
        }
    }
}

/// The first loop the fuzzer found: an empty sealed segment before a valid tail. The
/// stream yields the corruption error once and ends; it used to yield it forever, so a
/// consumer that logs and skips errors spun at 100% CPU.
#[test]
fn read_stream_ends_after_corruption_instead_of_repeating_it() {
    let mem = Memory::new();
    mem.set_segment_bytes(1, Vec::new());
    mem.set_segment_bytes(1000, segment_with_valid_header(1000, &[]));
    let wal = Wal::open(mem, Options::default().stats_interval(None)).unwrap();
    let items: Vec<_> = block_on(wal.read_range::<Vec<u8>>(1, 999).take(10).collect());
    assert_eq!(items.len(), 1, "{items:?}");
    assert!(
        matches!(&items[0], Err(Error::Corrupt { segment, .. }) if segment.contains("00000000000000000001")),
        "{items:?}"
    );
}
