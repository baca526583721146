//! HTTP ingest sink (feature `http`): POSTs each batch to a URL.
//!
//! # The request
//!
//! * `POST {url}`, body = the batch as JSON lines (default, `Content-Type:
//!   application/x-ndjson`), one [`WireRecord`] per line:
//!   `{"key":"{wal_id}:{seq}","wal_id":"…","consumer":"…","seq":7,"ts_us":…,"record":…}`,
//!   or, with [`BodyFormat::Postcard`], a postcard `Vec<WireRecord<T>>`
//!   (`Content-Type: application/x-postcard`).
//! * `Content-Encoding: gzip` when [`gzip`](HttpSinkBuilder::gzip) is on.
//! * `Authorization: Bearer {token}` when a token or a [`TokenProvider`] is set.
//! * `Idempotency-Key: {wal_id}:{first_seq}-{last_seq}` for the batch, and per record
//!   the `key` field: a server dedupes by the record keys (a batch retried after a
//!   permanent failure may be split, which changes the batch key but never a record key).
//! * `Walspool-Consumer`, `Walspool-Attempt`, `Walspool-First-Seq`, `Walspool-Last-Seq`.
//!
//! # The answer
//!
//! * 2xx: accepted.
//! * 5xx, 429 and 408, a connection failure or a timeout: transient. A `Retry-After`
//!   (seconds or an HTTP-date) is passed on as the retry-after hint (the shipper waits
//!   that long).
//! * 401 with a [`TokenProvider`]: the provider is asked for a fresh token and the
//!   request is sent once more; a second 401 is classified like any other 4xx.
//! * Any other status (3xx are not followed, 4xx): permanent. If the response has a
//!   `Walspool-Reject-Seq: {seq}` header naming a record of the batch, that record alone
//!   is refused ([`SinkError::Record`]), else the batch ([`SinkError::Batch`]).
//! * A TLS failure that only a configuration change can fix (the server's certificate
//!   does not verify against the roots and CA file, the server refuses the client
//!   certificate): permanent ([`SinkError::Batch`], reason starting with `TLS:`).
//!
//! # TLS
//!
//! `https://` URLs use rustls (ring provider, TLS 1.2/1.3, no OpenSSL) with the webpki
//! roots by default; [`TlsConfig`] picks the system's roots instead, adds CA files and
//! a client certificate (mTLS). A plain `http://` URL is refused unless
//! [`allow_http`](HttpSinkBuilder::allow_http) opts in. See [`crate::client`].
//!
//! # Runtimes
//!
//! The client is a blocking HTTP/1.1 client (`ureq`, keep-alive: the connection, and
//! its TLS session, is reused from batch to batch) on a thread the sink owns; `send`
//! hands it the encoded body over a channel and awaits a `futures::channel::oneshot`.
//! So the sink works the same under tokio, smol or a plain `futures`
//! executor, with no runtime of its own to start and no tokio in the dependency tree.
//! A shipper sends one batch at a time, so one thread per sink is all the concurrency
//! it can use. Keep the sink's [`timeout`](HttpSinkBuilder::timeout) (default 10 s)
//! below the shipper's send timeout (default 30 s): the thread cannot be interrupted
//! mid-request.
//!
//! # Delivery
//!
//! At-least-once: a batch in flight when the process dies, or whose answer is lost, is
//! sent again; the server drops duplicates by the record keys.
//!
//! ```no_run
//! use walspool_backends::http::{HttpSink, Roots, TlsConfig};
//! use walspool_wal::shipper::Shipper;
//! use walspool_wal::{Memory, Options, Wal};
//!
//! # fn fetch_jwt(_refresh: bool) -> Result<String, String> { Ok("jwt".into()) }
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let wal = Wal::open(Memory::new(), Options::default())?;
//! let sink = HttpSink::builder("https://ingest.internal:8443/api/audit/v1/ingest")
//!     .tls(
//!         TlsConfig::new()
//!             .roots(Roots::System)
//!             .ca_file("/etc/walspool/ingest-ca.pem")
//!             .client_cert_files("/etc/walspool/client.pem", "/etc/walspool/client.key"),
//!     )
//!     // Called per request (cache inside), and with `true` after a 401.
//!     .token_provider(|refresh: bool| fetch_jwt(refresh))
//!     .gzip(true)
//!     .build()?;
//! let shipper = Shipper::<_, String>::builder(wal.consumer("ingest")?, sink).build()?;
//! let running = shipper.spawn_on_thread()?;
//! // ... append records; on the way out:
//! running.shutdown()?;
//! # Ok(())
//! # }
//! ```
//!
//! Plain HTTP, on loopback:
//!
//! ```
//! use walspool_backends::http::HttpSink;
//! assert!(HttpSink::builder("http://127.0.0.1:8080/ingest").build().is_err());
//! let sink = HttpSink::builder("http://127.0.0.1:8080/ingest")
//!     .allow_http(true)
//!     .bearer_token("s3cret")
//!     .build()
//!     .unwrap();
//! assert!(!format!("{sink:?}").contains("s3cret"));
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use walspool_wal::shipper::{Batch, Sink, SinkError};
use walspool_wal::Error;

use crate::client::{Auth, Client, ClientSettings, Refusal, Request, Worker};
pub use crate::client::{Roots, TlsConfig, TokenProvider};

/// How a batch is encoded in the request body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum BodyFormat {
    /// One JSON [`WireRecord`] per line (`application/x-ndjson`).
    #[default]
    JsonLines,
    /// A postcard-encoded `Vec<WireRecord<T>>` (`application/x-postcard`).
    Postcard,
}

/// One record as sent on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireRecord<T> {
    /// Idempotency key, `{wal_id}:{seq}`.
    pub key: String,
    /// The WAL's stable id.
    pub wal_id: String,
    /// The consumer shipping it.
    pub consumer: String,
    /// Sequence number.
    pub seq: u64,
    /// Append time, µs since the Unix epoch.
    pub ts_us: u64,
    /// The record.
    pub record: T,
}

/// Header naming the one record a server refuses in a 4xx answer.
pub const REJECT_SEQ_HEADER: &str = crate::client::REJECT_SEQ_HEADER;

/// Builds an [`HttpSink`]. Its `Debug` output never shows the token, the private key
/// or the values of extra headers.
#[derive(Debug, Clone)]
pub struct HttpSinkBuilder {
    client: ClientSettings,
    gzip: bool,
    format: BodyFormat,
}

impl HttpSinkBuilder {
    /// Sends `Authorization: Bearer {token}` (a fixed token; see
    /// [`token_provider`](Self::token_provider) for one that expires).
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.client.auth = Some(Auth::fixed(token.into()));
        self
    }

    /// Asks `provider` for the bearer token of each request, and for a fresh one after
    /// a 401 (the request is then sent once more); see [`TokenProvider`].
    pub fn token_provider(mut self, provider: impl TokenProvider + 'static) -> Self {
        self.client.auth = Some(Auth(Arc::new(provider)));
        self
    }

    /// TLS settings for an `https://` URL (default: webpki roots, no client
    /// certificate).
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.client.tls = tls;
        self
    }

    /// Allows a plain `http://` URL (default off: `build` refuses it, since records and
    /// token would cross the network in clear text). For loopback and tests.
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.client.allow_http = allow;
        self
    }

    /// Compresses bodies with gzip (`Content-Encoding: gzip`; default off).
    pub fn gzip(mut self, on: bool) -> Self {
        self.gzip = on;
        self
    }

    /// Body encoding (default JSON lines).
    pub fn format(mut self, f: BodyFormat) -> Self {
        self.format = f;
        self
    }

    /// Timeout of a whole request (default 10 s); past it the attempt is transient.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.client.timeout = d;
        self
    }

    /// Connect timeout (default 5 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.client.connect_timeout = d;
        self
    }

    /// Adds a header to every request.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.client.headers.0.push((name.into(), value.into()));
        self
    }

    /// Checks the URL (https://, or http:// with [`allow_http`](Self::allow_http)),
    /// loads the TLS files and starts the sink's client thread.
    pub fn build(self) -> Result<HttpSink, Error> {
        let client = self.client.client("HTTP sink")?;
        let worker = Worker::spawn("walspool-http-sink", &self.client.url, move |job: Job| {
            post(&client, &job)
        })?;
        Ok(HttpSink { cfg: self, worker })
    }
}

/// A [`Sink`] that POSTs batches to an HTTP(S) ingest endpoint; see the
/// [module documentation](self).
pub struct HttpSink {
    cfg: HttpSinkBuilder,
    worker: Worker<Job, Result<(), SinkError>>,
}

impl std::fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSink").field("cfg", &self.cfg).finish()
    }
}

struct Job {
    request: Request,
    seqs: (u64, u64),
}

impl HttpSink {
    /// Starts building a sink that POSTs to `url`.
    pub fn builder(url: impl Into<String>) -> HttpSinkBuilder {
        HttpSinkBuilder {
            client: ClientSettings::new(url.into()),
            gzip: false,
            format: BodyFormat::default(),
        }
    }

    /// The URL it posts to.
    pub fn url(&self) -> &str {
        &self.cfg.client.url
    }

    fn encode<T: Serialize>(&self, batch: &Batch<T>) -> Result<Vec<u8>, SinkError> {
        fn wire<'a, T>(batch: &Batch<T>, e: &'a walspool_wal::Entry<T>) -> WireRecord<&'a T> {
            WireRecord {
                key: format!("{}:{}", batch.wal_id(), e.seq),
                wal_id: batch.wal_id().to_string(),
                consumer: batch.consumer().to_string(),
                seq: e.seq,
                ts_us: e.ts_us,
                record: &e.record,
            }
        }
        Ok(match self.cfg.format {
            BodyFormat::JsonLines => {
                let mut out = Vec::with_capacity(batch.len() * 128);
                for e in batch.entries() {
                    serde_json::to_writer(&mut out, &wire(batch, e))
                        .map_err(|err| SinkError::record(e.seq, err.to_string()))?;
                    out.push(b'\n');
                }
                out
            }
            BodyFormat::Postcard => {
                let v: Vec<_> = batch.entries().iter().map(|e| wire(batch, e)).collect();
                postcard::to_allocvec(&v)
                    .map_err(|err| SinkError::batch(format!("postcard: {err}")))?
            }
        })
    }
}

#[async_trait]
impl<T: Serialize + Send + Sync + 'static> Sink<T> for HttpSink {
    async fn send(&mut self, batch: &Batch<T>) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let request = self.cfg.client.batch_request(
            match self.cfg.format {
                BodyFormat::JsonLines => "application/x-ndjson",
                BodyFormat::Postcard => "application/x-postcard",
            },
            batch.batch_key(),
            [
                ("Walspool-Consumer".into(), batch.consumer().to_string()),
                ("Walspool-Attempt".into(), batch.attempt().to_string()),
                ("Walspool-First-Seq".into(), batch.first_seq().to_string()),
                ("Walspool-Last-Seq".into(), batch.last_seq().to_string()),
            ],
            self.encode(batch)?,
            self.cfg.gzip,
        )?;
        let job = Job {
            request,
            seqs: (batch.first_seq(), batch.last_seq()),
        };
        self.worker.send(job, "HTTP").await
    }
}

/// Runs one request on the sink's thread and classifies the answer.
fn post(client: &Client, job: &Job) -> Result<(), SinkError> {
    match client.post(&job.request)? {
        Ok(_) => Ok(()),
        Err(r) => Err(classify(&r, job.seqs)),
    }
}

/// Maps an HTTP status (not 2xx) to a [`SinkError`].
fn classify(r: &Refusal, seqs: (u64, u64)) -> SinkError {
    let reason = format!("HTTP {} {}", r.code, r.text);
    if r.code == 429 || r.code == 408 || (500..600).contains(&r.code) {
        return r.transient(reason);
    }
    match r
        .reject_seq
        .as_deref()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        Some(seq) if (seqs.0..=seqs.1).contains(&seq) => SinkError::record(seq, reason),
        _ => SinkError::batch(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(code: u16, retry_after: Option<&str>, reject_seq: Option<&str>) -> Refusal {
        Refusal {
            code,
            text: "x".into(),
            retry_after: retry_after.and_then(crate::client::parse_retry_after),
            reject_seq: reject_seq.map(str::to_string),
            body: Vec::new(),
        }
    }

    #[test]
    fn statuses_map_to_transient_or_permanent() {
        let t = |code, ra: Option<&str>| classify(&refusal(code, ra, None), (1, 9));
        assert_eq!(
            t(429, Some("3")),
            SinkError::Transient {
                reason: "HTTP 429 x".into(),
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert!(t(500, None).is_transient());
        assert!(t(503, Some("soon")).is_transient());
        assert!(t(408, None).is_transient());
        assert_eq!(t(400, None), SinkError::batch("HTTP 400 x"));
        assert_eq!(t(301, None), SinkError::batch("HTTP 301 x"));
        assert_eq!(
            classify(&refusal(422, None, Some("4")), (1, 9)),
            SinkError::record(4, "HTTP 422 x")
        );
        assert_eq!(
            classify(&refusal(422, None, Some("40")), (1, 9)),
            SinkError::batch("HTTP 422 x")
        );
    }
}
