//! Record types that change: a backlog written as V1 read, replayed and shipped as V2
//! through the upgrade function (also across a crash), and what happens without one.
//! No timing assertions: every wait is "until this holds, or fail after a deadline".

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::executor::block_on;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use walspool_wal::format::{encode_frame, SegmentHeader};
use walspool_wal::schema::{UpgradeError, Versioned};
use walspool_wal::shipper::{Batch, FnSink, Shipper, DEAD_LETTER_MAGIC, DEAD_LETTER_PREFIX};
use walspool_wal::{Durability, Error, Memory, Options, Storage, Tear, Wal};

const DEADLINE: Duration = Duration::from_secs(120);
const N: u64 = 10_000;

/// The record type as the previous release wrote it.
mod v1 {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Event {
        pub id: u64,
        pub user: String,
        pub legacy_code: u32,
    }

    impl walspool_wal::Versioned for Event {
        const VERSION: u8 = 1;
    }
}

/// Version 2: `tenant` added, `legacy_code` removed, `user` renamed to `actor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Event {
    id: u64,
    actor: String,
    tenant: Option<String>,
}

static UPGRADED: AtomicU64 = AtomicU64::new(0);

impl Versioned for Event {
    const VERSION: u8 = 2;
    fn upgrade(from: u8, bytes: &[u8]) -> Result<Self, UpgradeError> {
        match from {
            1 => {
                let old: v1::Event = postcard::from_bytes(bytes)?;
                UPGRADED.fetch_add(1, Ordering::Relaxed);
                Ok(Event {
                    id: old.id,
                    actor: old.user,
                    tenant: None,
                })
            }
            _ => Err(UpgradeError::unknown(from)),
        }
    }
}

/// Version 2 deployed without an upgrade function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct EventNoUpgrade {
    id: u64,
    actor: String,
    tenant: Option<String>,
}

impl Versioned for EventNoUpgrade {
    const VERSION: u8 = 2;
}

fn v1(i: u64) -> v1::Event {
    v1::Event {
        id: i,
        user: format!("user-{i}"),
        legacy_code: (i % 7) as u32,
    }
}

fn upgraded(i: u64) -> Event {
    Event {
        id: i,
        actor: format!("user-{i}"),
        tenant: None,
    }
}

fn v2(i: u64) -> Event {
    Event {
        id: i,
        actor: format!("actor-{i}"),
        tenant: Some("acme".into()),
    }
}

fn opts() -> Options {
    // Small segments: the backlog spans many of them.
    Options::default()
        .segment_size(64 << 10)
        .durability(Durability::Buffered)
}

fn write_v1(mem: &Memory, from: u64, to: u64) -> Wal<Memory> {
    let wal = Wal::open(mem.clone(), opts().schema::<v1::Event>()).unwrap();
    let recs: Vec<v1::Event> = (from..=to).map(v1).collect();
    for chunk in recs.chunks(500) {
        block_on(wal.append_batch(chunk)).unwrap();
    }
    wal
}

/// Ships everything into a sink that records (seq, record); returns them once `last`
/// is committed.
fn ship_all(wal: &Wal<Memory>, last: u64) -> Vec<(u64, Event)> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    let sink = FnSink::new(move |b: &Batch<Event>| {
        let rows: Vec<(u64, Event)> = b
            .entries()
            .iter()
            .map(|e| (e.seq, e.record.clone()))
            .collect();
        seen.lock().unwrap().extend(rows);
        async { Ok(()) }
    });
    let shipper = Shipper::builder(wal.consumer("ship").unwrap(), sink)
        .linger(Duration::from_millis(1))
        .build()
        .expect("valid shipper configuration");
    let running = shipper.spawn_on_thread().unwrap();
    assert!(
        running.handle().wait_committed_timeout(last, DEADLINE),
        "shipper did not reach {last}: {:?}",
        running.handle().status()
    );
    let status = running.shutdown().unwrap();
    assert_eq!(status.dead_lettered, 0);
    let v = got.lock().unwrap().clone();
    v
}

#[test]
fn a_v1_backlog_reaches_the_sink_as_v2_in_order() {
    let mem = Memory::new();
    let wal = write_v1(&mem, 1, N);
    block_on(wal.close()).unwrap();
    drop(wal);

    let before = UPGRADED.load(Ordering::Relaxed);
    let wal = Wal::open(mem.clone(), opts().schema::<Event>()).unwrap();
    // Both consumers exist before either commits (retention waits for both).
    wal.consumer("ship").unwrap();
    let extra: Vec<Event> = (N + 1..=N + 100).map(v2).collect();
    block_on(wal.append_batch(&extra)).unwrap();
    block_on(wal.flush()).unwrap();
    assert!(
        wal.sealed_segments().len() > 3,
        "the backlog spans segments"
    );

    // read_from
    let read: Vec<_> = block_on(wal.read_range::<Event>(1, N + 100).collect::<Vec<_>>());
    assert_eq!(read.len() as u64, N + 100);
    for (i, r) in read.into_iter().enumerate() {
        let e = r.unwrap();
        let seq = i as u64 + 1;
        assert_eq!(e.seq, seq);
        let want = if seq <= N { upgraded(seq) } else { v2(seq) };
        assert_eq!(e.record, want);
    }

    // Consumer::replay
    let replayed = Arc::new(Mutex::new(Vec::new()));
    let r2 = replayed.clone();
    let n = block_on(wal.consumer("replay").unwrap().replay(
        1000,
        |batch: Vec<walspool_wal::Entry<Event>>| {
            r2.lock()
                .unwrap()
                .extend(batch.into_iter().map(|e| (e.seq, e.record)));
            async { Ok::<(), String>(()) }
        },
    ))
    .unwrap();
    assert_eq!(n, N + 100);
    assert_eq!(replayed.lock().unwrap()[0], (1, upgraded(1)));

    // The shipper
    let shipped = ship_all(&wal, N + 100);
    let mut seqs: Vec<u64> = shipped.iter().map(|(s, _)| *s).collect();
    seqs.dedup();
    assert_eq!(seqs.len() as u64, N + 100, "every record, in order");
    assert!(
        seqs.iter().copied().eq(1..=N + 100),
        "every record, in order"
    );
    for (seq, rec) in shipped {
        let want = if seq <= N { upgraded(seq) } else { v2(seq) };
        assert_eq!(rec, want);
    }
    assert!(UPGRADED.load(Ordering::Relaxed) - before >= 3 * N);
    assert!(wal.dead_letters("ship").unwrap().is_empty());
    assert_eq!(wal.metrics().dead_letter_total, 0);
    block_on(wal.close()).unwrap();
}

#[test]
fn a_crash_between_the_v1_and_v2_appends_loses_nothing_durable() {
    let mem = Memory::new();
    let wal = write_v1(&mem, 1, N);
    block_on(wal.flush()).unwrap();
    // More V1 records, not synced, then the power goes: a torn tail.
    let tail: Vec<v1::Event> = (N + 1..=N + 50).map(v1).collect();
    let _ = block_on(wal.append_batch(&tail));
    let crashed = mem.crash(Tear::Garbage(700));
    drop(wal);

    let wal = Wal::open(crashed, opts().schema::<Event>()).unwrap();
    let durable = wal.durable_seq();
    assert!(durable >= N, "every synced record survived ({durable})");
    let extra: Vec<Event> = (0..100).map(|i| v2(durable + 1 + i)).collect();
    let r = block_on(wal.append_batch(&extra)).unwrap();
    block_on(wal.flush()).unwrap();
    let last = r.end - 1;

    let shipped = ship_all(&wal, last);
    let mut seen = std::collections::BTreeMap::new();
    for (seq, rec) in shipped {
        seen.insert(seq, rec);
    }
    let first_v2 = r.start;
    for seq in 1..=last {
        let rec = seen
            .get(&seq)
            .unwrap_or_else(|| panic!("record {seq} missing"));
        if seq < first_v2 {
            assert_eq!(rec, &upgraded(seq), "V1 record {seq}");
        } else {
            assert_eq!(rec.tenant.as_deref(), Some("acme"), "V2 record {seq}");
        }
    }
    assert!(wal.dead_letters("ship").unwrap().is_empty());
    block_on(wal.close()).unwrap();
}

#[test]
fn segments_written_before_versions_were_recorded_are_version_1() {
    // A format-2 segment, as the previous release wrote it: payloads without a version.
    let mem = Memory::new();
    mem.create_segment(1).unwrap();
    let header = SegmentHeader {
        version: 2,
        flags: 0,
        base_seq: 1,
        created_us: 1,
        chain: None,
    };
    let mut b = header.encode();
    for seq in 1..=3 {
        encode_frame(
            &mut b,
            seq,
            10 + seq,
            &postcard::to_allocvec(&v1(seq)).unwrap(),
        );
    }
    mem.write_at(1, 0, &b).unwrap();
    mem.sync(1).unwrap();

    let wal = Wal::open(mem.clone(), Options::default().schema::<Event>()).unwrap();
    let s4 = block_on(wal.append(&v2(4))).unwrap();
    assert_eq!(s4, 4);
    let got: Vec<Event> = block_on(wal.read_range::<Event>(1, 4).collect::<Vec<_>>())
        .into_iter()
        .map(|r| r.unwrap().record)
        .collect();
    assert_eq!(got, vec![upgraded(1), upgraded(2), upgraded(3), v2(4)]);
    // The old segment took no record of the new format: it was sealed.
    assert_eq!(wal.sealed_segments()[0].last_seq, 3);
    block_on(wal.close()).unwrap();
}

#[test]
fn without_an_upgrade_the_error_is_clear_and_nothing_is_lost() {
    let mem = Memory::new();
    let wal = write_v1(&mem, 1, N);
    block_on(wal.close()).unwrap();
    drop(wal);

    let wal = Wal::open(mem.clone(), opts().schema::<EventNoUpgrade>()).unwrap();
    let first = block_on(wal.read_from::<EventNoUpgrade>(1).next()).unwrap();
    let err = first.unwrap_err();
    match &err {
        Error::Schema {
            seq,
            found,
            expected,
            type_name,
            ..
        } => {
            assert_eq!((*seq, *found, *expected), (1, 1, 2));
            assert!(type_name.contains("EventNoUpgrade"), "{type_name}");
        }
        other => panic!("expected a schema error, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("schema version 1")
            && msg.contains("EventNoUpgrade")
            && msg.contains("version 2"),
        "{msg}"
    );

    // replay stops at the first one, commits nothing.
    let c = wal.consumer("replay").unwrap();
    let r = block_on(
        c.replay(100, |_b: Vec<walspool_wal::Entry<EventNoUpgrade>>| async {
            Ok::<(), String>(())
        }),
    );
    assert!(matches!(r, Err(Error::Schema { seq: 1, .. })), "{r:?}");
    assert_eq!(c.committed(), 0);

    // The shipper moves the backlog, bytes intact, to the dead letter: in a few
    // durable writes, not one per record.
    let sink = FnSink::new(|_: &Batch<EventNoUpgrade>| async { Ok(()) });
    let running = Shipper::builder(wal.consumer("ship").unwrap(), sink)
        .linger(Duration::from_millis(1))
        .build()
        .expect("valid shipper configuration")
        .spawn_on_thread()
        .unwrap();
    assert!(running.handle().wait_committed_timeout(N, DEADLINE));
    let status = running.shutdown().unwrap();
    assert_eq!(status.dead_lettered, N);
    assert_eq!(wal.metrics().dead_letter_total, N);
    let keys = mem.list_meta(DEAD_LETTER_PREFIX).unwrap();
    assert!(
        keys.len() as u64 <= N / 2000 + 2,
        "{} dead-letter writes for {N} records",
        keys.len()
    );
    let stored = mem.get_meta(&keys[0]).unwrap().unwrap();
    assert!(stored.starts_with(DEAD_LETTER_MAGIC));
    // Raw bytes: about the size of the records, not a JSON array of integers.
    let letters = wal.dead_letters("ship").unwrap();
    assert_eq!(letters.len() as u64, N);
    let first_payload = &letters[0].payload;
    assert!(
        stored
            .windows(first_payload.len())
            .any(|w| w == &first_payload[..]),
        "the record's bytes are stored as they are"
    );
    assert_eq!(letters[0].schema_version, 1);
    assert_eq!(letters[0].payload, postcard::to_allocvec(&v1(1)).unwrap());
    // Nothing was deleted from the WAL by the error itself.
    assert_eq!(wal.first_seq_on_disk(), Some(1));
    block_on(wal.close()).unwrap();
    drop(wal);

    // The upgrade is deployed: re-drive delivers every letter as V2.
    let wal = Wal::open(mem.clone(), opts().schema::<Event>()).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    let mut sink = FnSink::new(move |b: &Batch<Event>| {
        seen.lock()
            .unwrap()
            .extend(b.entries().iter().map(|e| (e.seq, e.record.clone())));
        async { Ok(()) }
    });
    let r = block_on(wal.redrive_dead_letters::<Event, _>("ship", &mut sink)).unwrap();
    assert_eq!((r.delivered, r.remaining), (N, 0));
    let got = got.lock().unwrap();
    assert_eq!(got.len() as u64, N);
    for (i, (seq, rec)) in got.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
        assert_eq!(rec, &upgraded(*seq));
    }
    assert!(wal.dead_letters("ship").unwrap().is_empty());
    assert!(mem.list_meta(DEAD_LETTER_PREFIX).unwrap().is_empty());
    block_on(wal.close()).unwrap();
}

#[test]
fn a_record_newer_than_the_type_is_refused_by_name() {
    let mem = Memory::new();
    let wal = Wal::open(mem.clone(), Options::default().schema::<Event>()).unwrap();
    block_on(wal.append(&v2(1))).unwrap();
    block_on(wal.close()).unwrap();
    drop(wal);
    // A rollback to the V1 program.
    let wal = Wal::open(mem, Options::default().schema::<v1::Event>()).unwrap();
    let e = block_on(wal.read_from::<v1::Event>(1).next())
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Schema {
                found: 2,
                expected: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("newer"), "{e}");
    block_on(wal.close()).unwrap();
}
