//! Shipping throughput into each sink on loopback, beside a no-op sink, in one run
//! (BENCHMARKS.md, "Shipping"). Runs only with `WALSPOOL_MEASURE=1`, in release mode:
//!
//! `WALSPOOL_MEASURE=1 cargo test --release -p walspool-backends --features http,otlp --test ship_measure -- --nocapture`
//!
//! Prints a markdown table; asserts only that every record arrived.
//!
//! With `--features http,otlp,nats` and `WALSPOOL_NATS_URL` set (scripts/nats.sh start),
//! the same run ends with the NATS JetStream sink into a loopback `nats-server -js`
//! (a stream of its own; "MB on the wire" is then the bytes the stream stores:
//! payloads, headers and subjects).
//!
//! With `--features http,otlp,kafka` and `WALSPOOL_KAFKA_BROKERS` set (scripts/kafka.sh
//! start), it also measures the Kafka sink into a loopback tansu broker (a topic of its
//! own, one partition; "MB on the wire" is then the key, value and header bytes the
//! broker acknowledged, before the protocol's framing).

#![cfg(all(feature = "http", feature = "otlp"))]

#[path = "support/loopback.rs"]
mod loopback;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loopback::{serve, Pki, Response};
use prost::Message;
use walspool_backends::http::{HttpSink, Roots, TlsConfig};
use walspool_backends::otlp::proto::collector::logs::v1::ExportLogsServiceRequest;
use walspool_backends::otlp::proto::logs::v1::LogRecord;
use walspool_backends::otlp::{string_value, OtlpLog, OtlpSink, ToOtlp};
use walspool_backends::LocalDisk;
use walspool_wal::shipper::{Batch, FnSink, Shipper, Sink};
use walspool_wal::{Options, Wal};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Event {
    id: u64,
    actor: String,
    action: String,
}

impl ToOtlp for Event {
    fn to_otlp(&self) -> OtlpLog {
        OtlpLog {
            service: "bench".into(),
            record: LogRecord {
                severity_number: 9,
                body: Some(string_value(format!("{} {}", self.actor, self.action))),
                ..Default::default()
            },
        }
    }
}

#[test]
fn measure_shipping_throughput() {
    if std::env::var("WALSPOOL_MEASURE").ok().as_deref() != Some("1") {
        eprintln!("measure_shipping_throughput: set WALSPOOL_MEASURE=1 to measure");
        return;
    }
    let total = 200_000u64;
    let tmp = tempfile::tempdir().unwrap();
    let wal = Wal::open(LocalDisk::open(tmp.path()).unwrap(), Options::default()).unwrap();
    let events: Vec<Event> = (1..=total)
        .map(|id| Event {
            id,
            actor: format!("user-{}", id % 1000),
            action: "document.read".into(),
        })
        .collect();
    for chunk in events.chunks(10_000) {
        futures::executor::block_on(wal.append_batch(chunk)).unwrap();
    }
    let run = |name: &str, sink: Box<dyn Sink<Event>>| {
        let shipper = Shipper::<_, Event>::builder(wal.consumer(name).unwrap(), sink)
            .build()
            .expect("valid shipper configuration");
        let start = Instant::now();
        let t = shipper.spawn_on_thread().unwrap();
        assert!(t
            .handle()
            .wait_committed_timeout(total, Duration::from_secs(600)));
        let secs = start.elapsed().as_secs_f64();
        let st = t.shutdown().unwrap();
        (secs, st.batches_acked)
    };
    let received = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let count_lines = {
        let (r, b) = (received.clone(), bytes.clone());
        move |req: &loopback::Request| {
            b.fetch_add(req.body.len() as u64, Ordering::Relaxed);
            let n = req
                .decoded_body()
                .split(|c| *c == b'\n')
                .filter(|l| !l.is_empty())
                .count();
            r.fetch_add(n as u64, Ordering::Relaxed);
            Response::ok()
        }
    };
    let count_otlp = {
        let (r, b) = (received.clone(), bytes.clone());
        move |req: &loopback::Request| {
            b.fetch_add(req.body.len() as u64, Ordering::Relaxed);
            let m = ExportLogsServiceRequest::decode(&req.decoded_body()[..]).unwrap();
            let n: usize = m
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .map(|s| s.log_records.len())
                .sum();
            r.fetch_add(n as u64, Ordering::Relaxed);
            Response::ok()
        }
    };
    let pki = Pki::new("measure CA");
    let tls = || {
        TlsConfig::new()
            .roots(Roots::None)
            .ca_pem(pki.ca_pem.clone())
    };
    let plain = serve(None, count_lines.clone());
    let secure = serve(Some(pki.server_config(None)), count_lines);
    let otlp = serve(None, count_otlp.clone());
    let otlps = serve(Some(pki.server_config(None)), count_otlp);

    type Case<'a> = (&'static str, Box<dyn Fn() -> Box<dyn Sink<Event>> + 'a>);
    let cases: Vec<Case> = vec![
        (
            "no-op (FnSink)",
            Box::new(|| Box::new(FnSink::new(|_: &Batch<Event>| async { Ok(()) }))),
        ),
        (
            "HTTP, JSON lines",
            Box::new(|| {
                Box::new(
                    HttpSink::builder(format!("{}/i", plain.base))
                        .allow_http(true)
                        .build()
                        .unwrap(),
                )
            }),
        ),
        (
            "HTTPS, JSON lines",
            Box::new(|| {
                Box::new(
                    HttpSink::builder(format!("{}/i", secure.base))
                        .tls(tls())
                        .build()
                        .unwrap(),
                )
            }),
        ),
        (
            "HTTPS, JSON lines, gzip",
            Box::new(|| {
                Box::new(
                    HttpSink::builder(format!("{}/i", secure.base))
                        .tls(tls())
                        .gzip(true)
                        .build()
                        .unwrap(),
                )
            }),
        ),
        (
            "OTLP/HTTP, protobuf",
            Box::new(|| {
                Box::new(
                    OtlpSink::builder(otlp.base.clone())
                        .allow_http(true)
                        .build::<Event>()
                        .unwrap(),
                )
            }),
        ),
        (
            "OTLP/HTTPS, protobuf, gzip",
            Box::new(|| {
                Box::new(
                    OtlpSink::builder(otlps.base.clone())
                        .tls(tls())
                        .gzip(true)
                        .build::<Event>()
                        .unwrap(),
                )
            }),
        ),
    ];
    println!("| sink (loopback, batch 2000, LocalDisk WAL) | records | seconds | records/s | vs no-op | MB on the wire |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut noop = 0.0;
    for (i, (name, make)) in cases.iter().enumerate() {
        received.store(0, Ordering::Relaxed);
        bytes.store(0, Ordering::Relaxed);
        let (secs, _) = run(&format!("c{i}"), make());
        let rate = total as f64 / secs;
        if i == 0 {
            noop = rate;
        } else {
            assert!(received.load(Ordering::Relaxed) >= total, "{name}");
        }
        println!(
            "| {name} | {total} | {secs:.2} | {rate:.0} | {:.2}x | {} |",
            rate / noop,
            if i == 0 {
                "-".to_string()
            } else {
                format!("{:.1}", bytes.load(Ordering::Relaxed) as f64 / 1e6)
            }
        );
    }
    #[cfg(feature = "nats")]
    match std::env::var("WALSPOOL_NATS_URL") {
        Ok(url) => {
            let stream = format!("MEASURE_{}", std::process::id());
            let sink = walspool_backends::nats::NatsSink::builder(&url)
                .stream(&stream)
                .subject_prefix(format!("measure{}", std::process::id()))
                .default_kind("event")
                .build()
                .unwrap();
            let (secs, _) = run("nats", Box::new(sink));
            let rate = total as f64 / secs;
            let (n, stored) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
                    let mut s = js.get_stream(&stream).await.unwrap();
                    let st = s.info().await.unwrap().state.clone();
                    js.delete_stream(&stream).await.unwrap();
                    (st.messages, st.bytes)
                });
            assert_eq!(n, total, "NATS stream");
            println!(
                "| NATS JetStream, JSON, Nats-Msg-Id | {total} | {secs:.2} | {rate:.0} | {:.2}x | {:.1} |",
                rate / noop,
                stored as f64 / 1e6
            );
        }
        Err(_) => eprintln!("WALSPOOL_NATS_URL unset: NATS not measured"),
    }
    #[cfg(feature = "kafka")]
    match std::env::var("WALSPOOL_KAFKA_BROKERS") {
        Ok(brokers) => {
            use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};
            let topic = format!("measure{}.event", std::process::id());
            let sink = walspool_backends::kafka::KafkaSink::builder(&brokers)
                .topic(&topic)
                .build()
                .unwrap();
            let metrics = sink.metrics();
            let (secs, _) = run("kafka", Box::new(sink));
            let rate = total as f64 / secs;
            let n = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let c = rskafka::client::ClientBuilder::new(vec![brokers.clone()])
                        .build()
                        .await
                        .unwrap();
                    let pc = c
                        .partition_client(topic.as_str(), 0, UnknownTopicHandling::Retry)
                        .await
                        .unwrap();
                    let n = pc.get_offset(OffsetAt::Latest).await.unwrap();
                    let _ = c
                        .controller_client()
                        .unwrap()
                        .delete_topic(topic.as_str(), 5000)
                        .await;
                    n
                });
            assert_eq!(n as u64, total, "Kafka topic");
            let mb = metrics.snapshot().stored_bytes as f64 / 1e6;
            println!(
                "| Kafka (tansu, SQLite store), JSON, acks=all | {total} | {secs:.2} | {rate:.0} | {:.2}x | {mb:.1} ({:.1} MB/s) |",
                rate / noop,
                mb / secs
            );
        }
        Err(_) => eprintln!("WALSPOOL_KAFKA_BROKERS unset: Kafka not measured"),
    }
}
