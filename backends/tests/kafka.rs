//! The Kafka sink against a real Kafka-protocol broker: `tansu` with its SQLite store
//! (scripts/test.sh starts one through scripts/kafka.sh and sets `WALSPOOL_KAFKA_BROKERS`
//! and `WALSPOOL_KAFKA_SERVER`; without them these tests skip loudly, and fail with
//! `CI=true`). Each test uses topics of its own. The records are read back by an
//! independent consumer: a client of the test's own that fetches every partition from
//! the earliest offset.
//!
//! * 100,000 records shipped (Kafka's key partitioner over 32 partitions per topic):
//!   every batch acknowledged, the per-topic metrics right, the partitions' high
//!   watermarks add up to 100,000 per the broker, and all of them read back: every
//!   record, WAL order in its partition, key, headers, timestamp; then a forced
//!   redelivery of all of them (read back as duplicates with the same keys, which a
//!   consumer de-duplicates) and batches sent from smol and a caller's tokio runtime.
//!   (tansu's SQLite schema lacks an index its fetch needs; scripts/kafka.sh adds it,
//!   see there. Without it this read-back takes hours.)
//! * key partitioning (Kafka's murmur2, as the Java client), postcard values and the
//!   compression codecs tansu reads back (none, gzip, lz4, zstd);
//! * topics created or checked; errors classified (missing topic, bad kind, a message
//!   too large, nothing listening);
//! * broker outage: this test's own tansu (on another port, a store of its own) is
//!   SIGKILLed mid-stream while records keep being appended, then restarted on the same
//!   store: every record acknowledged before the kill is still there and every record
//!   arrives; the failures, the breaker and the reconnection show in the metrics;
//! * shipper crash: the shipping process (this test binary, re-executed with
//!   `WALSPOOL_KAFKA_KILL_CHILD` and `--exact kafka_kill_child`) is SIGKILLed mid-stream
//!   and restarted: every record in the topic.
//!
//! The outage, crash and codec tests ship 10,000, 10,000 and 2,000 records into a broker
//! of their own (the outage test's is started here, without that index: its store stays
//! small) and read them all back.

#[path = "support/broker.rs"]
mod broker;
#[path = "support/kill.rs"]
mod kill;
#[path = "support/sink_figures.rs"]
mod sink_figures;

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use broker::Broker;
use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};
use rskafka::client::ClientBuilder;
use serde::{Deserialize, Serialize};
use walspool_backends::kafka::{Compression, Encoding, KafkaSink, Partitioning};
use walspool_backends::LocalDisk;
use walspool_wal::shipper::{Batch, Shipper, Sink, SinkError};
use walspool_wal::{Entry, Memory, Options, Wal};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Rec {
    kind: String,
    n: u64,
    msg: String,
}

fn rec(n: u64) -> Rec {
    Rec {
        kind: if n.is_multiple_of(3) { "audit" } else { "log" }.into(),
        n,
        msg: format!("record number {n}"),
    }
}

/// Partitions of the big tests' topics. tansu's SQLite store answers a fetch in time
/// linear in what is left of the partition (and per record), so a partition of tens of
/// thousands of records cannot be read back in reasonable time: the tests spread
/// records over many partitions (Kafka's key partitioner over the unique idempotency
/// keys) and check WAL order within each.
const PARTS: i32 = 32;

/// The shared broker's address, or `None` (skip) outside CI.
fn brokers() -> Option<String> {
    match std::env::var("WALSPOOL_KAFKA_BROKERS") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("WALSPOOL_KAFKA_BROKERS is not set (run the tests through scripts/test.sh)");
            }
            eprintln!("SKIPPED: WALSPOOL_KAFKA_BROKERS is not set (scripts/test.sh starts tansu)");
            None
        }
    }
}

/// The `tansu` binary, or `None` (skip) outside CI.
fn server_bin() -> Option<String> {
    let found = std::env::var("WALSPOOL_KAFKA_SERVER")
        .ok()
        .filter(|s| !s.is_empty() && std::path::Path::new(s).exists());
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("no tansu (WALSPOOL_KAFKA_SERVER unset; run scripts/test.sh)");
        }
        eprintln!(
            "SKIPPED: no tansu binary (WALSPOOL_KAFKA_SERVER unset; scripts/test.sh installs it)"
        );
    }
    found
}

/// A topic prefix of this test run.
fn prefix(test: &str) -> String {
    format!(
        "t{}_{}.{test}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// One message as the independent consumer reads it.
#[derive(Debug, Clone)]
struct Got {
    topic: String,
    partition: i32,
    offset: i64,
    key: Vec<u8>,
    value: Vec<u8>,
    wal_id: String,
    seq: u64,
    kind: String,
    ts: u64,
    ts_ms: i64,
}

impl Got {
    fn rec(&self) -> Rec {
        serde_json::from_slice(&self.value).unwrap()
    }
}

/// Every message of `topic`, every partition from its earliest offset, in offset order
/// per partition; through a client of its own.
async fn fetch_topic(brokers: &str, topic: &str) -> Vec<Got> {
    let client = ClientBuilder::new(vec![brokers.to_string()])
        .build()
        .await
        .unwrap();
    let topics = client.list_topics().await.unwrap();
    let Some(t) = topics.iter().find(|t| t.name == topic) else {
        return Vec::new();
    };
    let mut got = Vec::new();
    for &p in &t.partitions {
        let pc = client
            .partition_client(topic, p, UnknownTopicHandling::Retry)
            .await
            .unwrap();
        let high = pc.get_offset(OffsetAt::Latest).await.unwrap();
        let mut off = pc.get_offset(OffsetAt::Earliest).await.unwrap();
        let mut empty = 0;
        while off < high {
            let (recs, _hw) = tokio::time::timeout(
                Duration::from_secs(120),
                pc.fetch_records(off, 1..500_000, 500),
            )
            .await
            .unwrap_or_else(|_| panic!("{topic}/{p}: fetch at {off} (of {high}) hangs"))
            .unwrap();
            if recs.is_empty() {
                empty += 1;
                assert!(empty < 20, "{topic}/{p}: nothing at {off} < {high}");
                continue;
            }
            empty = 0;
            for r in recs {
                assert!(r.offset >= off, "{topic}/{p}: offset {} < {off}", r.offset);
                off = r.offset + 1;
                let h = |k: &str| {
                    String::from_utf8(
                        r.record
                            .headers
                            .get(k)
                            .unwrap_or_else(|| panic!("header {k} missing"))
                            .clone(),
                    )
                    .unwrap()
                };
                got.push(Got {
                    topic: topic.to_string(),
                    partition: p,
                    offset: r.offset,
                    key: r.record.key.clone().unwrap_or_default(),
                    value: r.record.value.clone().unwrap_or_default(),
                    wal_id: h("wal_id"),
                    seq: h("seq").parse().unwrap(),
                    kind: h("kind"),
                    ts: h("ts").parse().unwrap(),
                    ts_ms: r.record.timestamp.timestamp_millis(),
                });
            }
        }
    }
    got
}

fn read_all(brokers: &str, topics: &[String]) -> Vec<Got> {
    rt().block_on(async {
        let mut all = Vec::new();
        for t in topics {
            all.extend(fetch_topic(brokers, t).await);
        }
        all
    })
}

/// Messages in `topic` (the sum of its partitions' high watermarks).
async fn topic_len(client: &rskafka::client::Client, topic: &str) -> i64 {
    let topics = client.list_topics().await.unwrap();
    let Some(t) = topics.iter().find(|t| t.name == topic) else {
        return 0;
    };
    let mut n = 0;
    for &p in &t.partitions {
        let pc = client
            .partition_client(topic, p, UnknownTopicHandling::Retry)
            .await
            .unwrap();
        n += pc.get_offset(OffsetAt::Latest).await.unwrap();
    }
    n
}

/// Checks what a consumer that de-duplicates by key sees: records 1..=n of `wal_id`,
/// each once, the first copy of each in WAL order within its partition, with the right
/// topic, key, headers and timestamp; every later copy identical to the first. Returns
/// the number of duplicates.
fn assert_complete(
    got: &[Got],
    wal_id: &str,
    topic_of: impl Fn(&Rec) -> String,
    n: u64,
    since_us: u64,
) -> u64 {
    let mut first: HashMap<Vec<u8>, &Got> = HashMap::new();
    let mut last: BTreeMap<(&str, i32), u64> = BTreeMap::new();
    let mut dups = 0;
    let mut sorted: Vec<&Got> = got.iter().collect();
    sorted
        .sort_by(|a, b| (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset)));
    for g in sorted {
        assert_eq!(g.key, format!("{}:{}", g.wal_id, g.seq).into_bytes());
        if let Some(f) = first.get(&g.key) {
            assert_eq!(
                (&f.value, &f.wal_id, f.seq, &f.kind, f.ts),
                (&g.value, &g.wal_id, g.seq, &g.kind, g.ts),
                "a redelivered copy differs"
            );
            dups += 1;
            continue;
        }
        first.insert(g.key.clone(), g);
        assert!(g.seq >= 1 && g.seq <= n, "seq {} out of range", g.seq);
        let r = g.rec();
        assert_eq!(r, rec(g.seq));
        assert_eq!(g.kind, r.kind);
        assert_eq!(g.topic, topic_of(&r));
        assert_eq!(g.wal_id, wal_id);
        assert!(g.ts >= since_us, "ts {} before the test", g.ts);
        assert_eq!(g.ts_ms, (g.ts / 1000) as i64, "the record timestamp");
        let l = last.entry((g.topic.as_str(), g.partition)).or_default();
        assert!(
            g.seq > *l,
            "{}/{}: seq {} after {}",
            g.topic,
            g.partition,
            g.seq,
            l
        );
        *l = g.seq;
    }
    assert_eq!(first.len() as u64, n, "distinct records in the topics");
    dups
}

fn per_kind(prefix: &str) -> impl Fn(&Rec) -> String + '_ {
    move |r: &Rec| format!("{prefix}.{}", r.kind)
}

fn kinds(prefix: &str) -> Vec<String> {
    vec![format!("{prefix}.audit"), format!("{prefix}.log")]
}

#[test]
fn hundred_thousand_records_shipped_and_read_back() {
    let Some(brokers) = brokers() else { return };
    const N: u64 = 100_000;
    let prefix = prefix("bulk");
    let since = now_us();
    let wal = Wal::open(Memory::new(), Options::default()).unwrap();
    let recs: Vec<Rec> = (1..=N).map(rec).collect();
    futures::executor::block_on(async {
        wal.consumer("kafka").unwrap();
        wal.consumer("again").unwrap();
        for c in recs.chunks(10_000) {
            wal.append_batch(c).await.unwrap();
        }
    });
    let build = || {
        KafkaSink::builder(&brokers)
            .topic_per_kind(&prefix)
            .partitions(PARTS)
            .partitioning(Partitioning::Key)
            .build()
            .unwrap()
    };
    let mut sink = build();
    futures::executor::block_on(sink.check()).unwrap();
    let metrics = sink.metrics();
    let t = Instant::now();
    let running = Shipper::<_, Rec>::builder(wal.consumer("kafka").unwrap(), sink)
        .build()
        .expect("valid shipper config")
        .spawn_on_thread()
        .unwrap();
    assert!(running
        .handle()
        .wait_committed_timeout(N, Duration::from_secs(300)));
    running.shutdown().unwrap();
    let took = t.elapsed();
    eprintln!("bulk: shipped {N} in {took:?}; reading back");

    // What the broker holds: the high watermarks of every partition of both topics.
    let (audit_len, log_len) = rt().block_on(async {
        let c = ClientBuilder::new(vec![brokers.clone()])
            .build()
            .await
            .unwrap();
        (
            topic_len(&c, &format!("{prefix}.audit")).await,
            topic_len(&c, &format!("{prefix}.log")).await,
        )
    });
    assert_eq!(
        (audit_len as u64, log_len as u64),
        (N / 3, N - N / 3),
        "records the broker holds per topic"
    );
    let got = read_all(&brokers, &kinds(&prefix));
    assert_eq!(got.len() as u64, N, "messages in the topics");
    let dups = assert_complete(&got, wal.id(), per_kind(&prefix), N, since);
    assert_eq!(dups, 0);
    // Key partitioning over unique keys: every partition of both topics is used.
    let parts: std::collections::BTreeSet<(String, i32)> =
        got.iter().map(|g| (g.topic.clone(), g.partition)).collect();
    assert_eq!(parts.len(), 2 * PARTS as usize, "{parts:?}");
    let st = metrics.snapshot();
    assert_eq!(st.stored, N);
    assert_eq!(st.in_flight, 0);
    assert_eq!((st.failed, st.batches_failed), (0, 0), "{st:?}");
    let audit = N / 3;
    assert_eq!(
        st.per_topic,
        BTreeMap::from([
            (format!("{prefix}.audit"), audit),
            (format!("{prefix}.log"), N - audit)
        ])
    );
    assert!(st.batches >= N / 2000 && st.batch_ack_p50_us > 0, "{st:?}");
    eprintln!("bulk: {N} records in {took:?}; sink {st:?}");
    // The same figures reach the WAL's metrics (the stats file, `walspool top`).
    sink_figures::assert_sink_figures(
        &wal,
        "kafka",
        "kafka",
        N,
        &st.per_topic,
        (
            st.batch_ack_p50_us,
            st.batch_ack_p99_us,
            st.batch_ack_max_us,
        ),
    );
    assert_eq!(
        sink_figures::sink_of(&wal, "again"),
        None,
        "no shipper for it yet"
    );

    // Forced redelivery of everything: a second consumer of the same WAL ships it all
    // again into the same topics. Kafka stores the copies; a consumer that
    // de-duplicates by key sees the same N records.
    let sink2 = build();
    let m2 = sink2.metrics();
    let running = Shipper::<_, Rec>::builder(wal.consumer("again").unwrap(), sink2)
        .build()
        .expect("valid shipper config")
        .spawn_on_thread()
        .unwrap();
    assert!(running
        .handle()
        .wait_committed_timeout(N, Duration::from_secs(300)));
    running.shutdown().unwrap();
    assert_eq!(m2.snapshot().stored, N);

    // A batch sent again from other executors (smol, a caller's tokio runtime), with
    // the records' own append times.
    let ts: HashMap<u64, u64> = got.iter().map(|g| (g.seq, g.ts)).collect();
    let entries: Vec<Entry<Rec>> = (49_001..=51_000)
        .map(|seq| Entry {
            seq,
            ts_us: ts[&seq],
            record: rec(seq),
        })
        .collect();
    let batch = Batch::new(wal.id(), "kafka", entries);
    let mut sink3 = build();
    smol::block_on(sink3.send(&batch)).unwrap();
    rt().block_on(sink3.send(&batch)).unwrap();
    assert_eq!(sink3.metrics().snapshot().stored, 4000);

    let got = read_all(&brokers, &kinds(&prefix));
    assert_eq!(got.len() as u64, 2 * N + 4000);
    let dups = assert_complete(&got, wal.id(), per_kind(&prefix), N, since);
    assert_eq!(dups, N + 4000);
}

#[test]
fn key_partitioning_postcard_and_compression() {
    let Some(bin) = server_bin() else { return };
    // A broker and store of its own: tansu's fetch slows with the store's size.
    let store = tempfile::tempdir().unwrap();
    let server = tansu(&bin, store.path());
    let brokers = brokers_of(&server);
    let prefix = prefix("codec");
    let wal_id = "w-codec";
    let mut n = 0u64;
    for (i, c) in [
        Compression::None,
        Compression::Gzip,
        // Not Snappy: tansu 0.6 stores a Snappy batch but fails every fetch of it
        // (`UnexpectedType("Snappy")` in its log), so no consumer could read it back.
        Compression::Lz4,
        Compression::Zstd,
    ]
    .into_iter()
    .enumerate()
    {
        let topic = format!("{prefix}.c{i}");
        let mut sink = KafkaSink::builder(&brokers)
            .topic(&topic)
            .partitions(4)
            .partitioning(Partitioning::Key)
            .key_fn(|k| format!("user-{}", k.seq % 10).into_bytes())
            .encoding(Encoding::Postcard)
            .compression(c)
            .build()
            .unwrap();
        let entries: Vec<Entry<Rec>> = (1..=500)
            .map(|seq| Entry {
                seq,
                ts_us: now_us(),
                record: rec(seq),
            })
            .collect();
        futures::executor::block_on(sink.send(&Batch::new(wal_id, "c", entries))).unwrap();
        let got = rt().block_on(fetch_topic(&brokers, &topic));
        assert_eq!(got.len(), 500, "{c:?}");
        let mut last: HashMap<Vec<u8>, (i32, u64)> = HashMap::new();
        for g in &got {
            let r: Rec = postcard::from_bytes(&g.value).unwrap();
            assert_eq!(r, rec(g.seq), "{c:?}");
            let key = format!("user-{}", g.seq % 10).into_bytes();
            assert_eq!(g.key, key);
            // Kafka's default partitioner: murmur2(key) & 0x7fffffff % 4.
            let want = (java_murmur2(&key) & 0x7fff_ffff) % 4;
            assert_eq!(g.partition, want, "{c:?} key {:?}", g.key);
            let l = last.entry(key).or_insert((g.partition, 0));
            assert!(g.seq > l.1, "order per key");
            l.1 = g.seq;
            n += 1;
        }
        assert_eq!(last.len(), 10);
        // Ten keys over four partitions: more than one partition is used.
        let used: std::collections::BTreeSet<i32> = got.iter().map(|g| g.partition).collect();
        assert!(used.len() > 1, "{used:?}");
    }
    assert_eq!(n, 2000);
}

/// Kafka's `Utils.murmur2`, written out again here from the Java source so the test
/// does not trust the sink's copy.
fn java_murmur2(data: &[u8]) -> i32 {
    let (seed, m, r) = (0x9747b28c_u32 as i32, 0x5bd1e995_i32, 24);
    let length = data.len() as i32;
    let mut h = seed ^ length;
    let length4 = length / 4;
    for i in 0..length4 {
        let i4 = (i * 4) as usize;
        let mut k = (data[i4] as i32 & 0xff)
            + ((data[i4 + 1] as i32 & 0xff) << 8)
            + ((data[i4 + 2] as i32 & 0xff) << 16)
            + ((data[i4 + 3] as i32 & 0xff) << 24);
        k = k.wrapping_mul(m);
        k ^= ((k as u32) >> r) as i32;
        k = k.wrapping_mul(m);
        h = h.wrapping_mul(m);
        h ^= k;
    }
    let idx = (length & !3) as usize;
    let rem = length % 4;
    if rem == 3 {
        h ^= (data[idx + 2] as i32 & 0xff) << 16;
    }
    if rem >= 2 {
        h ^= (data[idx + 1] as i32 & 0xff) << 8;
    }
    if rem >= 1 {
        h ^= data[idx] as i32 & 0xff;
        h = h.wrapping_mul(m);
    }
    h ^= ((h as u32) >> 13) as i32;
    h = h.wrapping_mul(m);
    h ^= ((h as u32) >> 15) as i32;
    h
}

#[test]
fn topics_are_created_or_checked_and_errors_classified() {
    let Some(brokers) = brokers() else { return };
    let prefix = prefix("check");
    let one = |seq: u64, r: Rec| {
        Batch::new(
            "w",
            "c",
            vec![Entry {
                seq,
                ts_us: now_us(),
                record: r,
            }],
        )
    };
    // Missing and not to be created: a permanent error from check(), transient while
    // shipping (the records wait in the WAL).
    let mut s = KafkaSink::builder(&brokers)
        .topic(format!("{prefix}.missing"))
        .create_topics(false)
        .build()
        .unwrap();
    let e = futures::executor::block_on(s.check()).unwrap_err();
    assert!(matches!(e, SinkError::Batch { .. }), "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");
    let e = futures::executor::block_on(s.send(&one(1, rec(1)))).unwrap_err();
    assert!(e.is_transient(), "{e}");
    // Created by check() when allowed, then found.
    let mut s = KafkaSink::builder(&brokers)
        .topic(format!("{prefix}.made"))
        .partitions(2)
        .build()
        .unwrap();
    futures::executor::block_on(s.check()).unwrap();
    let mut s2 = KafkaSink::builder(&brokers)
        .topic(format!("{prefix}.made"))
        .create_topics(false)
        .build()
        .unwrap();
    futures::executor::block_on(s2.check()).unwrap();
    futures::executor::block_on(s2.send(&one(1, rec(1)))).unwrap();
    // A kind that makes no topic name: a permanent error for that record.
    let mut s = KafkaSink::builder(&brokers)
        .topic_per_kind(&prefix)
        .build()
        .unwrap();
    let mut bad = rec(2);
    bad.kind = "a/b".into();
    let e = futures::executor::block_on(s.send(&one(2, bad))).unwrap_err();
    assert!(matches!(e, SinkError::Record { seq: 2, .. }), "{e}");
    // A message above max_message_bytes: a permanent error for that record.
    let mut s = KafkaSink::builder(&brokers)
        .topic(format!("{prefix}.made"))
        .max_message_bytes(1000)
        .build()
        .unwrap();
    let mut big = rec(3);
    big.msg = "x".repeat(2000);
    let e = futures::executor::block_on(s.send(&one(3, big))).unwrap_err();
    assert!(matches!(e, SinkError::Record { seq: 3, .. }), "{e}");
    // Nothing listens: transient, from check() and send().
    let port = broker::free_port();
    let mut s = KafkaSink::builder(format!("127.0.0.1:{port}"))
        .connect_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let e = futures::executor::block_on(s.check()).unwrap_err();
    assert!(e.is_transient(), "{e}");
    let e = futures::executor::block_on(s.send(&one(4, rec(4)))).unwrap_err();
    assert!(e.is_transient(), "{e}");
}

/// A tansu broker of this test's own, its SQLite store in `dir`.
fn tansu(bin: &str, dir: &std::path::Path) -> Broker {
    let (bin, dir) = (bin.to_string(), dir.to_path_buf());
    Broker::start("tansu", move |port| {
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("broker.log"))
            .unwrap();
        let mut c = Command::new(&bin);
        c.arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(log);
        c
    })
}

fn brokers_of(b: &Broker) -> String {
    format!("127.0.0.1:{}", b.port())
}

#[test]
fn broker_sigkilled_mid_stream_and_restarted_loses_nothing() {
    let Some(bin) = server_bin() else { return };
    // 10,000 records, a store of its own: tansu's fetch slows with the store's size.
    const N: u64 = 10_000;
    let store = tempfile::tempdir().unwrap();
    let mut server = tansu(&bin, store.path());
    let brokers = brokers_of(&server);
    let prefix = prefix("outage");
    let since = now_us();
    let wal = Wal::open(Memory::new(), Options::default()).unwrap();
    wal.consumer("kafka").unwrap();
    let sink = KafkaSink::builder(&brokers)
        .topic_per_kind(&prefix)
        .connect_timeout(Duration::from_millis(500))
        .ack_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let metrics = sink.metrics();
    let running = broker::outage_settings(Shipper::<_, Rec>::builder(
        wal.consumer("kafka").unwrap(),
        sink,
    ))
    .build()
    .expect("valid shipper config")
    .spawn_on_thread()
    .unwrap();
    let handle = running.handle().clone();
    // Appends in the background, in chunks, during the whole test.
    let appender = broker::spawn_appender(&wal, N, rec, Duration::from_millis(60));
    // Kill the broker once a part is acknowledged.
    broker::wait_until(
        Duration::from_millis(5),
        || handle.status().committed_seq >= N / 5,
        || handle.status(),
    );
    let acked_before = handle.status().committed_seq;
    server.kill();
    // Down: the shipper fails, backs off, and the breaker opens.
    broker::wait_until(
        Duration::from_millis(20),
        || handle.status().breaker_opened > 0,
        || handle.status(),
    );
    std::thread::sleep(Duration::from_secs(1));
    let down = wal.metrics();
    assert!(down.ship_errors_total >= 3, "{down:?}");
    assert_ne!(down.breaker_state, "closed", "{down:?}");
    let st = handle.status();
    assert!(st.committed_seq < N, "the outage came too late: {st:?}");
    let ms = metrics.snapshot();
    assert!(ms.failed > 0 && ms.batches_failed > 0, "{ms:?}");
    server.restart();
    // Everything acknowledged before the kill survived it (the broker's store).
    let before_restart = read_all(&brokers, &kinds(&prefix));
    let present: std::collections::HashSet<u64> = before_restart.iter().map(|g| g.seq).collect();
    for seq in 1..=acked_before {
        assert!(
            present.contains(&seq),
            "acknowledged record {seq} lost by the broker"
        );
    }
    appender.join().unwrap();
    assert!(
        handle.wait_committed_timeout(N, Duration::from_secs(120)),
        "{:?}",
        handle.status()
    );
    let st = running.shutdown().unwrap();
    assert!(st.breaker_opened >= 1 && st.failed_attempts >= 3, "{st:?}");
    assert_eq!(wal.metrics().breaker_state, "closed");
    let ms = metrics.snapshot();
    assert!(ms.disconnects >= 1 && ms.connects >= 2, "{ms:?}");
    let got = read_all(&brokers, &kinds(&prefix));
    let dups = assert_complete(&got, wal.id(), per_kind(&prefix), N, since);
    eprintln!(
        "outage: killed after {acked_before} acknowledged; {} messages, {dups} duplicates; shipper {st:?}; sink {ms:?}",
        got.len()
    );
}

const KILL_TOTAL: u64 = 10_000;

/// The child: ships the WAL in `WALSPOOL_KAFKA_KILL_DIR` to the topic named in the
/// environment until everything is committed. Does nothing in a normal test run.
#[test]
fn kafka_kill_child() {
    if std::env::var_os("WALSPOOL_KAFKA_KILL_CHILD").is_none() {
        return;
    }
    let var = |k: &str| std::env::var(k).unwrap();
    let wal = Wal::open(
        LocalDisk::open(var("WALSPOOL_KAFKA_KILL_DIR")).unwrap(),
        Options::default(),
    )
    .unwrap();
    let sink = KafkaSink::builder(var("WALSPOOL_KAFKA_BROKERS"))
        .topic(var("WALSPOOL_KAFKA_KILL_TOPIC"))
        .build()
        .unwrap();
    let t = Shipper::<_, Rec>::builder(wal.consumer("kafka").unwrap(), sink)
        .batch_max(250)
        .linger(Duration::ZERO)
        .build()
        .expect("valid shipper config")
        .spawn_on_thread()
        .unwrap();
    assert!(t
        .handle()
        .wait_committed_timeout(KILL_TOTAL, Duration::from_secs(120)));
    t.shutdown().unwrap();
    futures::executor::block_on(wal.close()).unwrap();
}

fn spawn_child(dir: &std::path::Path, brokers: &str, topic: &str) -> Child {
    kill::self_command("kafka_kill_child")
        .env("WALSPOOL_KAFKA_KILL_CHILD", "1")
        .env("WALSPOOL_KAFKA_KILL_DIR", dir)
        .env("WALSPOOL_KAFKA_KILL_TOPIC", topic)
        .env("WALSPOOL_KAFKA_BROKERS", brokers)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn shipper_sigkilled_mid_stream_and_restarted_loses_nothing() {
    let Some(bin) = server_bin() else { return };
    // A broker and store of its own: tansu's fetch slows with the store's size.
    let store = tempfile::tempdir().unwrap();
    let server = tansu(&bin, store.path());
    let brokers = brokers_of(&server);
    let topic = format!("{}.all", prefix("crash"));
    let since = now_us();
    let dir = tempfile::tempdir().unwrap();
    let recs: Vec<Rec> = (1..=KILL_TOTAL).map(rec).collect();
    let wal_id = kill::seed_wal(dir.path(), &recs, "kafka");
    // The topic exists before the child starts, so the test can watch it fill.
    let mut s = KafkaSink::builder(&brokers).topic(&topic).build().unwrap();
    futures::executor::block_on(s.check()).unwrap();
    drop(s);

    let watch_rt = rt();
    let watcher = watch_rt.block_on(async {
        ClientBuilder::new(vec![brokers.clone()])
            .build()
            .await
            .unwrap()
    });
    // SIGKILLed mid-stream (kill_when fails if the child ended first).
    kill::kill_when(
        spawn_child(dir.path(), &brokers, &topic),
        Duration::from_millis(2),
        || watch_rt.block_on(topic_len(&watcher, &topic)) as u64 >= KILL_TOTAL / 10,
        || "the topic does not fill".to_string(),
    );
    let at_kill = watch_rt.block_on(topic_len(&watcher, &topic)) as u64;
    assert!(at_kill < KILL_TOTAL, "the child finished before the kill");

    let child = spawn_child(dir.path(), &brokers, &topic);
    kill::finish(child);
    let got = read_all(&brokers, std::slice::from_ref(&topic));
    let dups = assert_complete(&got, &wal_id, |_| topic.clone(), KILL_TOTAL, since);
    eprintln!(
        "shipper crash: killed with {at_kill} of {KILL_TOTAL} in the topic; {} messages, {dups} duplicates",
        got.len()
    );
}
