//! The NATS JetStream sink against a real `nats-server -js` (scripts/test.sh starts one
//! and sets `WALSPOOL_NATS_URL` and `WALSPOOL_NATS_SERVER`; without them these tests
//! skip loudly, and fail with `CI=true`). Each test uses its own stream and subjects.
//!
//! * 100,000 records shipped and read back by an independent JetStream consumer: every
//!   record once, in order per subject, with its headers; a forced redelivery of all of
//!   them (a second shipper over the same WAL) and of single batches from other
//!   executors adds nothing to the stream;
//! * the stream is created, or checked (wrong subjects, missing stream);
//! * broker outage: this test's own `nats-server` (on another port) is SIGKILLed
//!   mid-stream while records keep being appended, then restarted on the same store:
//!   every record arrives exactly once, and the failures, the breaker and the
//!   reconnection show in the metrics;
//! * shipper crash: the shipping process (this test binary, re-executed with
//!   `WALSPOOL_NATS_KILL_CHILD` and `--exact nats_kill_child`) is SIGKILLed mid-stream
//!   and restarted: every record in the stream exactly once.

#[path = "support/broker.rs"]
mod broker;
#[path = "support/kill.rs"]
mod kill;
#[path = "support/sink_figures.rs"]
mod sink_figures;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::Config as StreamConfig;
use broker::Broker;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use walspool_backends::nats::NatsSink;
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

/// The shared server's URL, or `None` (skip) outside CI.
fn url() -> Option<String> {
    match std::env::var("WALSPOOL_NATS_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("WALSPOOL_NATS_URL is not set (run the tests through scripts/test.sh)");
            }
            eprintln!("SKIPPED: WALSPOOL_NATS_URL is not set (scripts/test.sh starts nats-server)");
            None
        }
    }
}

/// The `nats-server` binary, or `None` (skip) outside CI.
fn server_bin() -> Option<String> {
    let found = std::env::var("WALSPOOL_NATS_SERVER")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
                .iter()
                .find(|p| std::path::Path::new(p).exists())
                .map(|p| p.to_string())
        });
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("no nats-server (WALSPOOL_NATS_SERVER unset; run scripts/test.sh)");
        }
        eprintln!("SKIPPED: no nats-server binary (scripts/test.sh installs it)");
    }
    found
}

/// A stream name and subject prefix of this test run.
fn names(test: &str) -> (String, String) {
    let id = format!(
        "{}_{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    (
        format!("T_{}_{id}", test.to_uppercase()),
        format!("t{id}.{test}"),
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One message as an independent consumer reads it.
#[derive(Debug)]
struct Got {
    subject: String,
    msg_id: String,
    wal_id: String,
    seq: u64,
    kind: String,
    ts: u64,
    rec: Rec,
}

/// Messages in the stream (its state, from the server).
fn stream_len(url: &str, stream: &str) -> u64 {
    rt().block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        let mut s = js.get_stream(stream).await.unwrap();
        s.info().await.unwrap().state.messages
    })
}

/// Reads every message of `stream` with a fresh pull consumer of its own connection.
fn read_all(url: &str, stream: &str) -> Vec<Got> {
    rt().block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        let mut s = js.get_stream(stream).await.unwrap();
        let total = s.info().await.unwrap().state.messages as usize;
        let consumer = s
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::None,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut msgs = consumer.messages().await.unwrap();
        let mut got = Vec::with_capacity(total);
        while got.len() < total {
            let m = tokio::time::timeout(Duration::from_secs(10), msgs.next())
                .await
                .expect("the consumer stalled")
                .unwrap()
                .unwrap();
            let h = m.headers.as_ref().expect("headers");
            let hv = |k: &str| {
                h.get(k)
                    .unwrap_or_else(|| panic!("header {k} missing"))
                    .as_str()
                    .to_string()
            };
            got.push(Got {
                subject: m.subject.to_string(),
                msg_id: hv("Nats-Msg-Id"),
                wal_id: hv("wal_id"),
                seq: hv("seq").parse().unwrap(),
                kind: hv("kind"),
                ts: hv("ts").parse().unwrap(),
                rec: serde_json::from_slice(&m.payload).unwrap(),
            });
        }
        got
    })
}

/// Asserts `got` holds records 1..=n of `wal_id`, each once, with right headers, in
/// order per subject.
fn assert_complete(got: &[Got], wal_id: &str, prefix: &str, n: u64, since_us: u64) {
    let mut seen = vec![false; n as usize + 1];
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for g in got {
        assert!(g.seq >= 1 && g.seq <= n, "seq {} out of range", g.seq);
        assert!(!seen[g.seq as usize], "seq {} twice in the stream", g.seq);
        seen[g.seq as usize] = true;
        assert_eq!(g.rec, rec(g.seq));
        assert_eq!(g.kind, g.rec.kind);
        assert_eq!(g.subject, format!("{prefix}.{}", g.rec.kind));
        assert_eq!(g.wal_id, wal_id);
        assert_eq!(g.msg_id, format!("{wal_id}:{}", g.seq));
        assert!(g.ts >= since_us, "ts {} before the test", g.ts);
        let l = last.entry(g.subject.as_str()).or_default();
        assert!(g.seq > *l, "{}: seq {} after {}", g.subject, g.seq, l);
        *l = g.seq;
    }
    assert_eq!(got.len() as u64, n, "messages in the stream");
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

#[test]
fn hundred_thousand_records_land_once_in_order_with_headers_and_redelivery_adds_nothing() {
    let Some(url) = url() else { return };
    const N: u64 = 100_000;
    let (stream, prefix) = names("bulk");
    let since = now_us();
    let wal = Wal::open(Memory::new(), Options::default()).unwrap();
    let recs: Vec<Rec> = (1..=N).map(rec).collect();
    futures::executor::block_on(async {
        wal.consumer("nats").unwrap();
        wal.consumer("again").unwrap();
        for c in recs.chunks(10_000) {
            wal.append_batch(c).await.unwrap();
        }
    });
    let build = || {
        NatsSink::builder(&url)
            .stream(&stream)
            .subject_prefix(&prefix)
            .build()
            .unwrap()
    };
    let mut sink = build();
    futures::executor::block_on(sink.check()).unwrap();
    let metrics = sink.metrics();
    let running = Shipper::<_, Rec>::builder(wal.consumer("nats").unwrap(), sink)
        .build()
        .expect("valid shipper configuration")
        .spawn_on_thread()
        .unwrap();
    assert!(running
        .handle()
        .wait_committed_timeout(N, Duration::from_secs(300)));
    running.shutdown().unwrap();

    let got = read_all(&url, &stream);
    assert_complete(&got, wal.id(), &prefix, N, since);
    let st = metrics.snapshot();
    assert_eq!(st.stored, N);
    assert_eq!(st.duplicates, 0);
    assert_eq!(st.in_flight, 0);
    let audit = N / 3;
    assert_eq!(
        st.per_subject,
        BTreeMap::from([
            (format!("{prefix}.audit"), audit),
            (format!("{prefix}.log"), N - audit)
        ])
    );
    assert!(st.batches >= N / 2000 && st.batch_ack_p50_us > 0, "{st:?}");
    // The same figures reach the WAL's metrics (the stats file, `walspool top`).
    sink_figures::assert_sink_figures(
        &wal,
        "nats",
        "nats",
        N,
        &st.per_subject,
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
    // again into the same stream. JetStream acknowledges each as a duplicate.
    let sink2 = build();
    let m2 = sink2.metrics();
    let running = Shipper::<_, Rec>::builder(wal.consumer("again").unwrap(), sink2)
        .build()
        .expect("valid shipper configuration")
        .spawn_on_thread()
        .unwrap();
    assert!(running
        .handle()
        .wait_committed_timeout(N, Duration::from_secs(300)));
    running.shutdown().unwrap();
    let st2 = m2.snapshot();
    assert_eq!((st2.stored, st2.duplicates), (0, N), "{st2:?}");

    // A batch sent again from other executors (smol, a caller's tokio runtime).
    let entries: Vec<Entry<Rec>> = (49_001..=51_000)
        .map(|seq| Entry {
            seq,
            ts_us: now_us(),
            record: rec(seq),
        })
        .collect();
    let batch = Batch::new(wal.id(), "nats", entries);
    let mut sink3 = build();
    smol::block_on(sink3.send(&batch)).unwrap();
    rt().block_on(sink3.send(&batch)).unwrap();
    assert_eq!(sink3.metrics().snapshot().duplicates, 4000);
    assert_eq!(stream_len(&url, &stream), N);
}

#[test]
fn the_stream_is_created_or_checked() {
    let Some(url) = url() else { return };
    let (stream, prefix) = names("check");
    // Missing and not to be created: a permanent error from check().
    let mut s = NatsSink::builder(&url)
        .stream(&stream)
        .subject_prefix(&prefix)
        .create_stream(false)
        .build()
        .unwrap();
    let e = futures::executor::block_on(s.check()).unwrap_err();
    assert!(matches!(e, SinkError::Batch { .. }), "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");
    // A stream whose subjects do not cover the prefix.
    rt().block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
        js.create_stream(StreamConfig {
            name: stream.clone(),
            subjects: vec![format!("{prefix}.log")],
            ..Default::default()
        })
        .await
        .unwrap();
    });
    let mut s = NatsSink::builder(&url)
        .stream(&stream)
        .subject_prefix(&prefix)
        .build()
        .unwrap();
    let e = futures::executor::block_on(s.check()).unwrap_err();
    assert!(matches!(e, SinkError::Batch { .. }), "{e}");
    assert!(e.to_string().contains("do not cover"), "{e}");
    // While shipping the same mismatch is transient: the records wait in the WAL.
    let b = Batch::new(
        "w",
        "c",
        vec![Entry {
            seq: 1,
            ts_us: 1,
            record: rec(1),
        }],
    );
    let e = futures::executor::block_on(s.send(&b)).unwrap_err();
    assert!(e.is_transient(), "{e}");
    // A kind that is no subject token is a permanent error for that record.
    let (stream2, prefix2) = names("kinds");
    let mut s = NatsSink::builder(&url)
        .stream(&stream2)
        .subject_prefix(&prefix2)
        .build()
        .unwrap();
    let mut bad = rec(2);
    bad.kind = "a.b".into();
    let b = Batch::new(
        "w",
        "c",
        vec![Entry {
            seq: 2,
            ts_us: 1,
            record: bad,
        }],
    );
    let e = futures::executor::block_on(s.send(&b)).unwrap_err();
    assert_eq!(
        e,
        SinkError::record(2, "kind \"a.b\" is not a NATS subject token")
    );
    // Nothing listens: transient.
    let port = broker::free_port();
    let mut s = NatsSink::builder(format!("nats://127.0.0.1:{port}"))
        .connect_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let e = futures::executor::block_on(s.check()).unwrap_err();
    assert!(e.is_transient(), "{e}");
}

/// A nats-server of this test's own, with JetStream, its store in `store`.
fn nats_server(bin: &str, store: &std::path::Path) -> Broker {
    let (bin, store) = (bin.to_string(), store.to_path_buf());
    Broker::start("nats-server", move |port| {
        let mut c = Command::new(&bin);
        c.args(["-js", "-sd"])
            .arg(&store)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    })
}

#[test]
fn broker_sigkilled_mid_stream_and_restarted_loses_nothing() {
    let Some(bin) = server_bin() else { return };
    const N: u64 = 40_000;
    let store = tempfile::tempdir().unwrap();
    let mut server = nats_server(&bin, store.path());
    let url = format!("nats://127.0.0.1:{}", server.port());
    let (stream, prefix) = names("outage");
    let since = now_us();
    let wal = Wal::open(Memory::new(), Options::default()).unwrap();
    wal.consumer("nats").unwrap();
    let sink = NatsSink::builder(&url)
        .stream(&stream)
        .subject_prefix(&prefix)
        .connect_timeout(Duration::from_millis(500))
        .ack_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let metrics = sink.metrics();
    let running = broker::outage_settings(Shipper::<_, Rec>::builder(
        wal.consumer("nats").unwrap(),
        sink,
    ))
    .build()
    .expect("valid shipper configuration")
    .spawn_on_thread()
    .unwrap();
    let handle = running.handle().clone();
    // Appends in the background, in chunks, during the whole test.
    let appender = broker::spawn_appender(&wal, N, rec, Duration::from_millis(15));
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
    let st = handle.status();
    assert!(st.committed_seq < N, "the outage came too late: {st:?}");
    assert!(metrics.snapshot().failed > 0 || metrics.snapshot().batches_failed > 0);
    server.restart();
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
    eprintln!("outage: killed after {acked_before} acknowledged; shipper {st:?}; sink {ms:?}");
    let got = read_all(&url, &stream);
    assert_complete(&got, wal.id(), &prefix, N, since);
}

const KILL_TOTAL: u64 = 50_000;

/// The child: ships the WAL in `WALSPOOL_NATS_KILL_DIR` to the stream named in the
/// environment until everything is committed. Does nothing in a normal test run.
#[test]
fn nats_kill_child() {
    if std::env::var_os("WALSPOOL_NATS_KILL_CHILD").is_none() {
        return;
    }
    let var = |k: &str| std::env::var(k).unwrap();
    let wal = Wal::open(
        LocalDisk::open(var("WALSPOOL_NATS_KILL_DIR")).unwrap(),
        Options::default(),
    )
    .unwrap();
    let sink = NatsSink::builder(var("WALSPOOL_NATS_URL"))
        .stream(var("WALSPOOL_NATS_KILL_STREAM"))
        .subject_prefix(var("WALSPOOL_NATS_KILL_PREFIX"))
        .build()
        .unwrap();
    let t = Shipper::<_, Rec>::builder(wal.consumer("nats").unwrap(), sink)
        .batch_max(250)
        .linger(Duration::ZERO)
        .build()
        .expect("valid shipper configuration")
        .spawn_on_thread()
        .unwrap();
    assert!(t
        .handle()
        .wait_committed_timeout(KILL_TOTAL, Duration::from_secs(120)));
    t.shutdown().unwrap();
    futures::executor::block_on(wal.close()).unwrap();
}

fn spawn_child(dir: &std::path::Path, stream: &str, prefix: &str) -> Child {
    kill::self_command("nats_kill_child")
        .env("WALSPOOL_NATS_KILL_CHILD", "1")
        .env("WALSPOOL_NATS_KILL_DIR", dir)
        .env("WALSPOOL_NATS_KILL_STREAM", stream)
        .env("WALSPOOL_NATS_KILL_PREFIX", prefix)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn shipper_sigkilled_mid_stream_and_restarted_loses_nothing() {
    let Some(url) = url() else { return };
    let (stream, prefix) = names("crash");
    let since = now_us();
    let dir = tempfile::tempdir().unwrap();
    let recs: Vec<Rec> = (1..=KILL_TOTAL).map(rec).collect();
    let wal_id = kill::seed_wal(dir.path(), &recs, "nats");
    // The stream exists before the child starts, so the test can watch it fill.
    let mut s = NatsSink::builder(&url)
        .stream(&stream)
        .subject_prefix(&prefix)
        .build()
        .unwrap();
    futures::executor::block_on(s.check()).unwrap();
    drop(s);

    let child = spawn_child(dir.path(), &stream, &prefix);
    let (js_rt, mut info) = {
        let r = rt();
        let st = r.block_on(async {
            let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
            js.get_stream(&stream).await.unwrap()
        });
        (r, st)
    };
    // SIGKILLed mid-stream (kill_when fails if the child ended first).
    kill::kill_when(
        child,
        Duration::from_millis(2),
        || js_rt.block_on(info.info()).unwrap().state.messages >= KILL_TOTAL / 10,
        || "the stream does not fill".to_string(),
    );
    let at_kill = js_rt.block_on(info.info()).unwrap().state.messages;
    assert!(at_kill < KILL_TOTAL, "the child finished before the kill");

    let child = spawn_child(dir.path(), &stream, &prefix);
    kill::finish(child);
    eprintln!("shipper crash: killed with {at_kill} of {KILL_TOTAL} in the stream");
    let got = read_all(&url, &stream);
    assert_complete(&got, &wal_id, &prefix, KILL_TOTAL, since);
}
