//! OTLP logs sink (feature `otlp`): each batch as one OTLP/HTTP protobuf export request.
//!
//! # The request
//!
//! * `POST {endpoint}/v1/logs` (an endpoint with no path gets `/v1/logs` appended, as
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` does; an endpoint with a path is used as given, as
//!   `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT` is), `Content-Type: application/x-protobuf`,
//!   the body an `ExportLogsServiceRequest` (the [`opentelemetry_proto`] messages,
//!   encoded with prost; no gRPC, no tonic).
//! * `Content-Encoding: gzip` when [`gzip`](OtlpSinkBuilder::gzip) is on.
//! * Records are mapped to OpenTelemetry `LogRecord`s by [`ToOtlp`] (implemented for
//!   the facade's `LogRecord`, `AuditRecord` and `Envelope` in `walspool::records`) or
//!   by any function given to [`build_with`](OtlpSinkBuilder::build_with), and grouped
//!   by [`OtlpLog::service`] into one `ResourceLogs` per service (resource attribute
//!   `service.name`), scope `walspool`.
//! * Idempotency: every log record carries the attributes `walspool.wal_id` (string)
//!   and `walspool.seq` (int), the record's [`IdempotencyKey`](walspool_wal::shipper::IdempotencyKey);
//!   `observed_time_unix_nano` is the WAL append time, `time_unix_nano` the mapping's
//!   (the append time if it leaves 0). The request also has the HTTP sink's
//!   `Idempotency-Key: {wal_id}:{first_seq}-{last_seq}` header. A backend (or a
//!   collector processor) dedupes on the two attributes; most store duplicates as they
//!   come, so a record re-sent after a crash shows twice there.
//! * Bearer token / [`TokenProvider`], TLS ([`TlsConfig`]) and plain-HTTP opt-in
//!   exactly as the [HTTP sink](crate::client).
//!
//! # The answer (OTLP/HTTP specification)
//!
//! * 2xx: accepted. An `ExportLogsServiceResponse` with a `partial_success` that
//!   rejected records is logged (`tracing` warning with the server's message) and
//!   counted ([`OtlpStats`]); the batch counts as delivered, since the specification
//!   forbids retrying it.
//! * 429, 502, 503, 504, a connection failure or a timeout: transient; a `Retry-After`
//!   (seconds or HTTP-date) becomes the shipper's retry-after hint.
//! * Any other status: permanent ([`SinkError::Batch`], with the `google.rpc.Status`
//!   message of the body when there is one). So are TLS configuration failures.
//!
//! ```no_run
//! use walspool_backends::otlp::{OtlpLog, OtlpSink};
//! use walspool_backends::otlp::proto::logs::v1::LogRecord;
//! use walspool_wal::shipper::Shipper;
//! use walspool_wal::{Memory, Options, Wal};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let wal = Wal::open(Memory::new(), Options::default())?;
//! let sink = OtlpSink::builder("https://otel-collector.internal:4318")
//!     .bearer_token("s3cret")
//!     .gzip(true)
//!     // Any T, through a mapping function.
//!     .build_with(|line: &String| OtlpLog {
//!         service: "billing".into(),
//!         record: LogRecord {
//!             severity_number: 9, // INFO
//!             severity_text: "INFO".into(),
//!             body: Some(walspool_backends::otlp::string_value(line)),
//!             ..Default::default()
//!         },
//!     })?;
//! let stats = sink.stats();
//! let shipper = Shipper::builder(wal.consumer("otlp")?, sink).build()?;
//! let running = shipper.spawn_on_thread()?;
//! // ... append records; on the way out:
//! running.shutdown()?;
//! println!("rejected by the collector: {}", stats.rejected_records());
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use prost::Message;
use walspool_wal::shipper::{Batch, Sink, SinkError};
use walspool_wal::Error;

use crate::client::{Auth, Client, ClientSettings, Refusal, Request, Worker};
pub use crate::client::{Roots, TlsConfig, TokenProvider};

/// The OTLP protobuf messages (`opentelemetry_proto::tonic`, messages only).
pub use opentelemetry_proto::tonic as proto;

use proto::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use proto::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use proto::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use proto::resource::v1::Resource;

/// Attribute holding the WAL's id on every log record.
pub const WAL_ID_ATTR: &str = "walspool.wal_id";
/// Attribute holding the record's sequence number on every log record.
pub const SEQ_ATTR: &str = "walspool.seq";

/// One record mapped for OTLP.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OtlpLog {
    /// The resource's `service.name` (records are grouped by it).
    pub service: String,
    /// The log record. The sink adds [`WAL_ID_ATTR`] and [`SEQ_ATTR`], sets
    /// `observed_time_unix_nano` to the append time, and `time_unix_nano` too when the
    /// mapping left it 0.
    pub record: LogRecord,
}

/// Maps a record onto an OpenTelemetry log record.
pub trait ToOtlp {
    /// The log record and its service.
    fn to_otlp(&self) -> OtlpLog;
}

/// A string `AnyValue`.
pub fn string_value(s: impl Into<String>) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s.into())),
    }
}

/// A string attribute.
pub fn str_attr(key: impl Into<String>, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(string_value(value)),
        ..Default::default()
    }
}

/// An integer attribute.
pub fn int_attr(key: impl Into<String>, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// The OpenTelemetry severity of a level name (`trace`, `debug`, `info`, `warn` /
/// `warning`, `error`, `fatal` / `critical`; case-insensitive), else unspecified.
pub fn severity_of_level(level: &str) -> SeverityNumber {
    match level.to_ascii_lowercase().as_str() {
        "trace" => SeverityNumber::Trace,
        "debug" => SeverityNumber::Debug,
        "info" => SeverityNumber::Info,
        "warn" | "warning" => SeverityNumber::Warn,
        "error" => SeverityNumber::Error,
        "fatal" | "critical" => SeverityNumber::Fatal,
        _ => SeverityNumber::Unspecified,
    }
}

/// Partial successes the collector reported; shared with the sink.
#[derive(Debug, Default)]
pub struct OtlpStats {
    partial_successes: AtomicU64,
    rejected_records: AtomicU64,
}

impl OtlpStats {
    /// Accepted requests whose answer had a `partial_success` rejecting records.
    pub fn partial_successes(&self) -> u64 {
        self.partial_successes.load(Ordering::Relaxed)
    }

    /// Log records the collector rejected in partial successes (never retried, as the
    /// specification says; the server's message is in the log).
    pub fn rejected_records(&self) -> u64 {
        self.rejected_records.load(Ordering::Relaxed)
    }
}

/// Builds an [`OtlpSink`]. Its `Debug` output never shows the token, the private key
/// or the values of extra headers.
#[derive(Debug, Clone)]
pub struct OtlpSinkBuilder {
    client: ClientSettings,
    gzip: bool,
    resource: Vec<(String, String)>,
}

impl OtlpSinkBuilder {
    /// Sends `Authorization: Bearer {token}`.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.client.auth = Some(Auth::fixed(token.into()));
        self
    }

    /// Asks `provider` for the bearer token of each request, and for a fresh one after
    /// a 401; see [`TokenProvider`].
    pub fn token_provider(mut self, provider: impl TokenProvider + 'static) -> Self {
        self.client.auth = Some(Auth(Arc::new(provider)));
        self
    }

    /// TLS settings for an `https://` endpoint.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.client.tls = tls;
        self
    }

    /// Allows a plain `http://` endpoint (default off).
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.client.allow_http = allow;
        self
    }

    /// Compresses bodies with gzip (default off).
    pub fn gzip(mut self, on: bool) -> Self {
        self.gzip = on;
        self
    }

    /// Timeout of a whole request (default 10 s).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.client.timeout = d;
        self
    }

    /// Connect timeout (default 5 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.client.connect_timeout = d;
        self
    }

    /// Adds a header to every request (an API key header, say).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.client.headers.0.push((name.into(), value.into()));
        self
    }

    /// Adds a string attribute to every resource (`deployment.environment`, ...).
    pub fn resource_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.resource.push((key.into(), value.into()));
        self
    }

    /// Builds a sink for records that map themselves ([`ToOtlp`]).
    pub fn build<T: ToOtlp + 'static>(self) -> Result<OtlpSink<T>, Error> {
        self.build_with(T::to_otlp)
    }

    /// Builds a sink for any `T`, mapped by `map`.
    pub fn build_with<T: 'static>(
        mut self,
        map: impl Fn(&T) -> OtlpLog + Send + Sync + 'static,
    ) -> Result<OtlpSink<T>, Error> {
        self.client.url = logs_url(&self.client.url);
        let client = self.client.client("OTLP sink")?;
        let stats = Arc::new(OtlpStats::default());
        let s = stats.clone();
        let worker = Worker::spawn(
            "walspool-otlp-sink",
            &self.client.url,
            move |job: Request| export(&client, &job, &s),
        )?;
        Ok(OtlpSink {
            cfg: self,
            worker,
            map: Box::new(map),
            stats,
        })
    }
}

/// `{endpoint}/v1/logs` when the endpoint has no path.
fn logs_url(endpoint: &str) -> String {
    let after_scheme = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    match after_scheme.find('/') {
        None => format!("{endpoint}/v1/logs"),
        Some(i) if after_scheme[i..] == *"/" => format!("{}v1/logs", endpoint),
        Some(_) => endpoint.to_string(),
    }
}

type MapFn<T> = Box<dyn Fn(&T) -> OtlpLog + Send + Sync>;

/// A [`Sink`] that exports batches as OTLP logs; see the [module documentation](self).
pub struct OtlpSink<T> {
    cfg: OtlpSinkBuilder,
    worker: Worker<Request, Result<(), SinkError>>,
    map: MapFn<T>,
    stats: Arc<OtlpStats>,
}

impl<T> std::fmt::Debug for OtlpSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpSink")
            .field("cfg", &self.cfg)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl OtlpSink<()> {
    /// Starts building a sink that exports to `endpoint` (`https://host:4318` or the
    /// full `.../v1/logs` URL).
    pub fn builder(endpoint: impl Into<String>) -> OtlpSinkBuilder {
        OtlpSinkBuilder {
            client: ClientSettings::new(endpoint.into()),
            gzip: false,
            resource: Vec::new(),
        }
    }
}

impl<T> OtlpSink<T> {
    /// The URL it posts to.
    pub fn url(&self) -> &str {
        &self.cfg.client.url
    }

    /// The partial-success counters (keep a clone before handing the sink over).
    pub fn stats(&self) -> Arc<OtlpStats> {
        self.stats.clone()
    }

    /// The export request for `batch`.
    pub fn request(&self, batch: &Batch<T>) -> ExportLogsServiceRequest {
        let mut by_service: Vec<(String, Vec<LogRecord>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for e in batch.entries() {
            let OtlpLog {
                service,
                mut record,
            } = (self.map)(&e.record);
            let observed = e.ts_us.saturating_mul(1000);
            record.observed_time_unix_nano = observed;
            if record.time_unix_nano == 0 {
                record.time_unix_nano = observed;
            }
            record
                .attributes
                .push(str_attr(WAL_ID_ATTR, batch.wal_id()));
            record
                .attributes
                .push(int_attr(SEQ_ATTR, i64::try_from(e.seq).unwrap_or(i64::MAX)));
            let i = *index.entry(service.clone()).or_insert_with(|| {
                by_service.push((service, Vec::new()));
                by_service.len() - 1
            });
            by_service[i].1.push(record);
        }
        let resource_logs = by_service
            .into_iter()
            .map(|(service, log_records)| {
                let mut attributes = vec![str_attr("service.name", service)];
                attributes.extend(self.cfg.resource.iter().map(|(k, v)| str_attr(k, v)));
                ResourceLogs {
                    resource: Some(Resource {
                        attributes,
                        ..Default::default()
                    }),
                    scope_logs: vec![ScopeLogs {
                        scope: Some(InstrumentationScope {
                            name: "walspool".into(),
                            version: env!("CARGO_PKG_VERSION").into(),
                            ..Default::default()
                        }),
                        log_records,
                        ..Default::default()
                    }],
                    ..Default::default()
                }
            })
            .collect();
        ExportLogsServiceRequest { resource_logs }
    }
}

#[async_trait]
impl<T: Send + Sync + 'static> Sink<T> for OtlpSink<T> {
    async fn send(&mut self, batch: &Batch<T>) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let request = self.cfg.client.batch_request(
            "application/x-protobuf",
            batch.batch_key(),
            [],
            self.request(batch).encode_to_vec(),
            self.cfg.gzip,
        )?;
        self.worker.send(request, "OTLP").await
    }
}

/// `google.rpc.Status`, the body of an OTLP/HTTP error answer.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// Runs one export on the sink's thread and classifies the answer.
fn export(client: &Client, job: &Request, stats: &OtlpStats) -> Result<(), SinkError> {
    match client.post(job)? {
        Ok(answer) => {
            if let Ok(resp) = ExportLogsServiceResponse::decode(answer.as_slice()) {
                if let Some(p) = resp.partial_success {
                    if p.rejected_log_records > 0 || !p.error_message.is_empty() {
                        stats.partial_successes.fetch_add(1, Ordering::Relaxed);
                        stats
                            .rejected_records
                            .fetch_add(p.rejected_log_records.max(0) as u64, Ordering::Relaxed);
                        tracing::warn!(
                            rejected = p.rejected_log_records,
                            "OTLP partial success: the collector rejected {} log record(s): {}",
                            p.rejected_log_records,
                            p.error_message
                        );
                    }
                }
            }
            Ok(())
        }
        Err(r) => Err(classify(&r)),
    }
}

/// Retryable per the OTLP/HTTP specification: 429, 502, 503, 504.
fn classify(r: &Refusal) -> SinkError {
    let detail = RpcStatus::decode(r.body.as_slice())
        .ok()
        .map(|s| s.message)
        .filter(|m| !m.is_empty() && !m.contains('\u{FFFD}'))
        .or_else(|| {
            std::str::from_utf8(&r.body)
                .ok()
                .map(|s| s.trim().chars().take(200).collect::<String>())
                .filter(|s| !s.is_empty())
        });
    let reason = match detail {
        Some(d) => format!("OTLP HTTP {} {}: {d}", r.code, r.text),
        None => format!("OTLP HTTP {} {}", r.code, r.text),
    };
    match r.code {
        429 | 502 | 503 | 504 => r.transient(reason),
        _ => SinkError::batch(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(code: u16, retry_after: Option<Duration>, body: Vec<u8>) -> Refusal {
        Refusal {
            code,
            text: "x".into(),
            retry_after,
            reject_seq: None,
            body,
        }
    }

    #[test]
    fn only_the_specs_retryable_codes_are_transient() {
        for code in [429, 502, 503, 504] {
            let e = classify(&refusal(code, Some(Duration::from_secs(2)), Vec::new()));
            assert_eq!(
                e,
                SinkError::Transient {
                    reason: format!("OTLP HTTP {code} x"),
                    retry_after: Some(Duration::from_secs(2))
                }
            );
        }
        for code in [400, 401, 403, 404, 413, 500, 501] {
            assert!(!classify(&refusal(code, None, Vec::new())).is_transient());
        }
        let status = RpcStatus {
            code: 3,
            message: "bad log record".into(),
        }
        .encode_to_vec();
        assert_eq!(
            classify(&refusal(400, None, status)),
            SinkError::batch("OTLP HTTP 400 x: bad log record")
        );
    }

    #[test]
    fn logs_path_is_appended_to_a_bare_endpoint_only() {
        assert_eq!(logs_url("https://c:4318"), "https://c:4318/v1/logs");
        assert_eq!(logs_url("https://c:4318/"), "https://c:4318/v1/logs");
        assert_eq!(logs_url("http://c/custom/logs"), "http://c/custom/logs");
    }
}
