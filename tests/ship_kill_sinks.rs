//! Kill tests for the HTTPS and OTLP sinks, on the pattern of tests/ship_kill.rs: a
//! real process ships a `LocalDisk` WAL to a loopback server run by this test (a rustls
//! server with a CA generated here, or an OTLP/HTTP server that decodes with the
//! `opentelemetry-proto` messages), is SIGKILLed while a batch is in flight, and is
//! restarted. Every record must arrive (at-least-once), and the only records received
//! twice are those the checkpoint did not cover at the kill: the batch in flight, and,
//! with the default pipelined checkpoints, possibly the answered batch before it whose
//! checkpoint write had not completed; deduplicated by the idempotency
//! key (`Idempotency`-style record keys for HTTPS, the `walspool.wal_id`/`walspool.seq`
//! attributes for OTLP) each arrives once.
//!
//! The child is this test binary itself, re-executed with `WALSPOOL_SINK_KILL_CHILD`
//! set and `--exact sink_kill_child`.

mod common;
#[path = "../backends/tests/support/loopback.rs"]
mod loopback;

use std::collections::HashMap;
use std::process::Child;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::self_command;
use loopback::{serve, write_file, Pki, Request, Response};
use prost::Message;
use walspool::backends::http::{HttpSink, Roots, TlsConfig, WireRecord};
use walspool::backends::otlp::proto::collector::logs::v1::ExportLogsServiceRequest;
use walspool::backends::otlp::proto::common::v1::any_value::Value;
use walspool::backends::otlp::{OtlpSink, SEQ_ATTR, WAL_ID_ATTR};
use walspool::records::{AuditRecord, Envelope};
use walspool::shipper::Shipper;
use walspool::{Durability, LocalDisk, Options, Wal};

const TOTAL: u64 = 5_000;
const BATCH: usize = 250;
const CONSUMER: &str = "ship";
/// The request the server holds until the child is killed (0-based).
const HELD: usize = 4;

/// The child: ships the WAL to the server until everything is committed.
#[test]
fn sink_kill_child() {
    if std::env::var_os("WALSPOOL_SINK_KILL_CHILD").is_none() {
        return;
    }
    let var = |k: &str| std::env::var(k).expect(k);
    let (dir, url, mode) = (
        var("WALSPOOL_SINK_KILL_DIR"),
        var("WALSPOOL_SINK_KILL_URL"),
        var("WALSPOOL_SINK_KILL_MODE"),
    );
    let wal = Wal::open(
        LocalDisk::open(dir).unwrap(),
        Options::default().schema::<Envelope>(),
    )
    .unwrap();
    let consumer = wal.consumer(CONSUMER).unwrap();
    let t = if mode == "https" {
        let sink = HttpSink::builder(url)
            .tls(
                TlsConfig::new()
                    .roots(Roots::None)
                    .ca_file(var("WALSPOOL_SINK_KILL_CA")),
            )
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Shipper::<_, u64>::builder(consumer, sink)
            .batch_max(BATCH)
            .linger(Duration::ZERO)
            .send_timeout(Duration::from_secs(60))
            .build()
            .expect("valid shipper configuration")
            .spawn_on_thread()
            .unwrap()
    } else {
        let sink = OtlpSink::builder(url)
            .allow_http(true)
            .gzip(true)
            .timeout(Duration::from_secs(30))
            .build::<Envelope>()
            .unwrap();
        Shipper::<_, Envelope>::builder(consumer, sink)
            .batch_max(BATCH)
            .linger(Duration::ZERO)
            .send_timeout(Duration::from_secs(60))
            .build()
            .expect("valid shipper configuration")
            .spawn_on_thread()
            .unwrap()
    };
    assert!(t
        .handle()
        .wait_committed_timeout(TOTAL, Duration::from_secs(120)));
    t.shutdown().unwrap();
    futures::executor::block_on(wal.close()).unwrap();
}

fn https_seqs(req: &Request, _wal_id: &str) -> Vec<u64> {
    req.body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice::<WireRecord<u64>>(l).unwrap().seq)
        .collect()
}

fn otlp_seqs(req: &Request, wal_id: &str) -> Vec<u64> {
    let r = ExportLogsServiceRequest::decode(&req.decoded_body()[..]).unwrap();
    let mut out = Vec::new();
    for rl in r.resource_logs {
        for sl in rl.scope_logs {
            for l in sl.log_records {
                let get = |k: &str| {
                    l.attributes
                        .iter()
                        .find(|a| a.key == k)
                        .and_then(|a| a.value.clone()?.value)
                };
                assert_eq!(
                    get(WAL_ID_ATTR),
                    Some(Value::StringValue(wal_id.to_string()))
                );
                let Some(Value::IntValue(seq)) = get(SEQ_ATTR) else {
                    panic!("no seq attribute");
                };
                let Some(Value::StringValue(body)) = l.body.and_then(|b| b.value) else {
                    panic!("no body");
                };
                assert_eq!(body, format!("user-{seq} read doc/{seq}: success"));
                out.push(seq as u64);
            }
        }
    }
    out
}

fn spawn_child(mode: &str, dir: &std::path::Path, url: &str, ca: &std::path::Path) -> Child {
    self_command("sink_kill_child")
        .env("WALSPOOL_SINK_KILL_CHILD", "1")
        .env("WALSPOOL_SINK_KILL_MODE", mode)
        .env("WALSPOOL_SINK_KILL_DIR", dir)
        .env("WALSPOOL_SINK_KILL_URL", url)
        .env("WALSPOOL_SINK_KILL_CA", ca)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn committed(dir: &std::path::Path) -> u64 {
    common::committed(dir, Options::default().schema::<Envelope>(), CONSUMER)
}

fn kill_mid_stream_and_restart(mode: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let wal_id = {
        let wal = Wal::open(
            LocalDisk::open(&dir).unwrap(),
            Options::default()
                .schema::<Envelope>()
                .durability(Durability::Sync)
                .segment_size(256 << 10),
        )
        .unwrap();
        futures::executor::block_on(async {
            if mode == "https" {
                let records: Vec<u64> = (1..=TOTAL).collect();
                wal.append_batch(&records).await.unwrap();
            } else {
                let records: Vec<Envelope> = (1..=TOTAL)
                    .map(|n| {
                        Envelope::Audit(AuditRecord {
                            ts: 1_700_000_000_000 + n,
                            service: "docs".into(),
                            actor: format!("user-{n}"),
                            action: "read".into(),
                            resource: format!("doc/{n}"),
                            outcome: "success".into(),
                            ctx: None,
                            data: None,
                            tenant: None,
                        })
                    })
                    .collect();
                wal.append_batch(&records).await.unwrap();
            }
            wal.consumer(CONSUMER).unwrap();
            let id = wal.id().to_string();
            wal.close().await.unwrap();
            id
        })
    };

    let pki = Pki::new("kill test CA");
    let ca = write_file(tmp.path(), "ca.pem", &pki.ca_pem);
    let requests: Arc<Mutex<Vec<Vec<u64>>>> = Arc::default();
    let (held_tx, held_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let decode: fn(&Request, &str) -> Vec<u64> = if mode == "https" {
        https_seqs
    } else {
        otlp_seqs
    };
    let r = requests.clone();
    let id = wal_id.clone();
    let handler = move |req: &Request| {
        let seqs = decode(req, &id);
        let n = {
            let mut r = r.lock().unwrap();
            r.push(seqs);
            r.len() - 1
        };
        if n == HELD {
            held_tx.send(()).unwrap();
            let _ = release_rx.lock().unwrap().recv();
        }
        Response::ok()
    };
    let server = if mode == "https" {
        serve(Some(pki.server_config(None)), handler)
    } else {
        serve(None, handler)
    };
    let url = if mode == "https" {
        format!("{}/ingest", server.base)
    } else {
        server.base.clone()
    };

    // Run 1: killed while the server holds a batch (in flight, unanswered).
    let mut child = spawn_child(mode, &dir, &url, &ca);
    held_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the child stopped shipping");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    release_tx.send(()).unwrap();
    let at_kill = committed(&dir);
    let killed = requests.lock().unwrap().len();
    {
        let r = requests.lock().unwrap();
        assert_eq!(killed, HELD + 1);
        // Pipelined checkpoints (the default): the last answered batch's checkpoint
        // write may still have been in flight at the kill, never more than that, and
        // never past what was answered.
        assert!(
            at_kill == *r[HELD - 1].last().unwrap() || at_kill == *r[HELD - 2].last().unwrap(),
            "checkpoint {at_kill} at the kill is neither the last answered batch's end nor              the one before"
        );
    }

    // Run 2: to the end.
    let status = spawn_child(mode, &dir, &url, &ca).wait().unwrap();
    assert!(status.success(), "the last run failed: {status:?}");
    assert_eq!(committed(&dir), TOTAL);

    let r = requests.lock().unwrap();
    assert_eq!(
        r[killed].first().copied(),
        Some(at_kill + 1),
        "the restart resumes after the checkpoint"
    );
    let all: Vec<u64> = r.iter().flatten().copied().collect();
    let mut seen = std::collections::HashSet::new();
    let deduped: Vec<u64> = all.iter().copied().filter(|s| seen.insert(*s)).collect();
    assert_eq!(deduped, (1..=TOTAL).collect::<Vec<_>>(), "at-least-once");
    let mut counts: HashMap<u64, u32> = HashMap::new();
    for s in &all {
        *counts.entry(*s).or_default() += 1;
    }
    // Resent: the batch in flight at the kill, plus the batch before it when its
    // checkpoint write had not completed; nothing else.
    let uncommitted: std::collections::HashSet<u64> = r[..killed]
        .iter()
        .flatten()
        .copied()
        .filter(|s| *s > at_kill)
        .collect();
    for (seq, n) in counts {
        if n > 1 {
            assert_eq!(n, 2, "record {seq} was received {n} times");
            assert!(
                uncommitted.contains(&seq),
                "record {seq} was resent but was committed at the kill"
            );
        }
    }
    let duplicates = all.len() as u64 - TOTAL;
    assert!(
        (1..=2 * BATCH as u64).contains(&duplicates),
        "{duplicates} records resent; the batch in flight at the kill had {}",
        r[HELD].len()
    );
}

#[test]
fn https_sink_sigkilled_mid_stream_restarts_and_delivers_everything() {
    if std::env::var_os("WALSPOOL_SINK_KILL_CHILD").is_some() {
        return;
    }
    kill_mid_stream_and_restart("https");
}

#[test]
fn otlp_sink_sigkilled_mid_stream_restarts_and_delivers_everything() {
    if std::env::var_os("WALSPOOL_SINK_KILL_CHILD").is_some() {
        return;
    }
    kill_mid_stream_and_restart("otlp");
}
