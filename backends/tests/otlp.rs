//! The OTLP logs sink against a loopback OTLP/HTTP server that decodes every request
//! with the `opentelemetry-proto` messages: records arrive grouped by service with
//! their idempotency attributes, gzip or not; 429/502/503/504 are retried with the
//! server's `Retry-After`, every other status is permanent; a partial success is
//! counted.

#![cfg(feature = "otlp")]

#[path = "support/loopback.rs"]
mod loopback;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use loopback::{serve, Response};
use prost::Message;
use walspool_backends::otlp::proto::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use walspool_backends::otlp::proto::common::v1::{any_value::Value, KeyValue};
use walspool_backends::otlp::proto::logs::v1::LogRecord;
use walspool_backends::otlp::{
    severity_of_level, string_value, OtlpLog, OtlpSink, ToOtlp, SEQ_ATTR, WAL_ID_ATTR,
};
use walspool_wal::shipper::{Backoff, Batch, Shipper, Sink, SinkError};
use walspool_wal::{Entry, Memory, Options, Wal};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Line {
    service: String,
    level: String,
    n: u64,
}

impl ToOtlp for Line {
    fn to_otlp(&self) -> OtlpLog {
        OtlpLog {
            service: self.service.clone(),
            record: LogRecord {
                severity_number: severity_of_level(&self.level) as i32,
                severity_text: self.level.clone(),
                body: Some(string_value(format!("line {}", self.n))),
                ..Default::default()
            },
        }
    }
}

fn attr<'a>(attrs: &'a [KeyValue], k: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|a| a.key == k)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
}

/// (service, seq, wal_id, severity, body) of every log record in a request.
fn decode(body: &[u8]) -> Vec<(String, u64, String, i32, String)> {
    let req = ExportLogsServiceRequest::decode(body).expect("an ExportLogsServiceRequest");
    let mut out = Vec::new();
    for rl in req.resource_logs {
        let res = rl.resource.expect("resource");
        let Some(Value::StringValue(service)) = attr(&res.attributes, "service.name") else {
            panic!("no service.name");
        };
        for sl in rl.scope_logs {
            assert_eq!(sl.scope.expect("scope").name, "walspool");
            for r in sl.log_records {
                let Some(Value::IntValue(seq)) = attr(&r.attributes, SEQ_ATTR) else {
                    panic!("no seq attribute")
                };
                let Some(Value::StringValue(wal)) = attr(&r.attributes, WAL_ID_ATTR) else {
                    panic!("no wal_id attribute")
                };
                assert!(r.observed_time_unix_nano > 0 && r.time_unix_nano > 0);
                let Some(Value::StringValue(body)) = r.body.and_then(|b| b.value) else {
                    panic!("no body")
                };
                out.push((
                    service.clone(),
                    *seq as u64,
                    wal.clone(),
                    r.severity_number,
                    body,
                ));
            }
        }
    }
    out
}

#[test]
fn batches_arrive_as_otlp_logs_grouped_by_service() {
    for gzip in [false, true] {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let server = serve(None, move |req| {
            assert_eq!(req.method, "POST");
            assert_eq!(req.path, "/v1/logs");
            assert_eq!(req.header("Content-Type"), Some("application/x-protobuf"));
            assert_eq!(req.header("Content-Encoding").is_some(), gzip);
            g.lock().unwrap().extend(decode(&req.decoded_body()));
            Response::ok().body(
                "application/x-protobuf",
                ExportLogsServiceResponse::default().encode_to_vec(),
            )
        });
        let wal = Wal::open(Memory::new(), Options::default()).unwrap();
        let total = 1000u64;
        let lines: Vec<Line> = (1..=total)
            .map(|n| Line {
                service: if n.is_multiple_of(3) {
                    "billing"
                } else {
                    "gateway"
                }
                .into(),
                level: if n.is_multiple_of(2) { "error" } else { "info" }.into(),
                n,
            })
            .collect();
        futures::executor::block_on(wal.append_batch(&lines)).unwrap();
        let sink = OtlpSink::builder(server.base.clone())
            .allow_http(true)
            .gzip(gzip)
            .build::<Line>()
            .unwrap();
        assert!(sink.url().ends_with("/v1/logs"));
        let shipper = Shipper::<_, Line>::builder(wal.consumer("otlp").unwrap(), sink)
            .batch_max(100)
            .linger(Duration::ZERO)
            .build()
            .expect("valid shipper configuration");
        let t = shipper.spawn_on_thread().unwrap();
        assert!(t
            .handle()
            .wait_committed_timeout(total, Duration::from_secs(60)));
        t.shutdown().unwrap();
        let mut got = got.lock().unwrap().clone();
        got.sort_by_key(|r| r.1);
        assert_eq!(got.len() as u64, total);
        for (i, (service, seq, wal_id, sev, body)) in got.into_iter().enumerate() {
            let n = i as u64 + 1;
            assert_eq!(seq, n);
            assert_eq!(wal_id, wal.id());
            assert_eq!(
                service,
                if n.is_multiple_of(3) {
                    "billing"
                } else {
                    "gateway"
                }
            );
            assert_eq!(sev, if n.is_multiple_of(2) { 17 } else { 9 });
            assert_eq!(body, format!("line {n}"));
        }
    }
}

#[test]
fn retryable_statuses_are_transient_with_retry_after_others_permanent_partial_success_counted() {
    let script: Arc<Mutex<VecDeque<Response>>> = Arc::new(Mutex::new(VecDeque::new()));
    let s = script.clone();
    let server = serve(None, move |_| {
        s.lock().unwrap().pop_front().expect("scripted")
    });
    let mut sink = OtlpSink::builder(format!("{}/custom/logs", server.base))
        .allow_http(true)
        .build_with(|n: &u64| OtlpLog {
            service: "svc".into(),
            record: LogRecord {
                body: Some(string_value(n.to_string())),
                ..Default::default()
            },
        })
        .unwrap();
    let stats = sink.stats();
    let batch = Batch::new(
        "w",
        "c",
        (1..=3)
            .map(|seq| Entry {
                seq,
                ts_us: 1,
                record: seq,
            })
            .collect(),
    );
    let mut send = |r: Response| {
        script.lock().unwrap().push_back(r);
        futures::executor::block_on(Sink::<u64>::send(&mut sink, &batch))
    };
    for code in [429u16, 502, 503, 504] {
        assert_eq!(
            send(Response::status(code).header("Retry-After", "2")),
            Err(SinkError::Transient {
                reason: format!("OTLP HTTP {code} X"),
                retry_after: Some(Duration::from_secs(2)),
            })
        );
    }
    let rpc = |msg: &str| {
        // google.rpc.Status { code = 3, message }
        let mut b = vec![0x08, 3, 0x12, msg.len() as u8];
        b.extend_from_slice(msg.as_bytes());
        b
    };
    assert_eq!(
        send(Response::status(400).body("application/x-protobuf", rpc("log record too large"))),
        Err(SinkError::batch("OTLP HTTP 400 X: log record too large"))
    );
    for code in [401u16, 404, 413, 500] {
        let r = send(Response::status(code));
        assert!(matches!(r, Err(SinkError::Batch { .. })), "{code}: {r:?}");
    }
    assert_eq!(stats.partial_successes(), 0);
    let partial = ExportLogsServiceResponse {
        partial_success: Some(ExportLogsPartialSuccess {
            rejected_log_records: 2,
            error_message: "2 records over the attribute limit".into(),
        }),
    };
    assert_eq!(
        send(Response::ok().body("application/x-protobuf", partial.encode_to_vec())),
        Ok(())
    );
    assert_eq!(stats.partial_successes(), 1);
    assert_eq!(stats.rejected_records(), 2);
    assert_eq!(send(Response::ok()), Ok(()));
    assert_eq!(stats.partial_successes(), 1);
}

#[test]
fn the_shipper_waits_out_retry_after_and_delivers() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let c = calls.clone();
    let server = serve(None, move |req| {
        let mut c = c.lock().unwrap();
        c.push((std::time::Instant::now(), decode(&req.body).len()));
        if c.len() == 1 {
            Response::status(503).header("Retry-After", "1")
        } else {
            Response::ok()
        }
    });
    let wal = Wal::open(Memory::new(), Options::default()).unwrap();
    let lines: Vec<Line> = (1..=10)
        .map(|n| Line {
            service: "s".into(),
            level: "info".into(),
            n,
        })
        .collect();
    futures::executor::block_on(wal.append_batch(&lines)).unwrap();
    let sink = OtlpSink::builder(server.base.clone())
        .allow_http(true)
        .build::<Line>()
        .unwrap();
    let shipper = Shipper::<_, Line>::builder(wal.consumer("otlp").unwrap(), sink)
        .backoff(Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(2),
            ..Default::default()
        })
        .build()
        .expect("valid shipper configuration");
    let t = shipper.spawn_on_thread().unwrap();
    assert!(t
        .handle()
        .wait_committed_timeout(10, Duration::from_secs(60)));
    let st = t.shutdown().unwrap();
    assert_eq!(st.failed_attempts, 1);
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 2);
    // The retry came after the server's Retry-After, not after the 1-2 ms backoff.
    assert!(calls[1].0 - calls[0].0 >= Duration::from_millis(900));
}
