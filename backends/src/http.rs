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
//! * `Authorization: Bearer {token}` when a token is set.
//! * `Idempotency-Key: {wal_id}:{first_seq}-{last_seq}` for the batch, and per record
//!   the `key` field: a server dedupes by the record keys (a batch retried after a
//!   permanent failure may be split, which changes the batch key but never a record key).
//! * `Walspool-Consumer`, `Walspool-Attempt`, `Walspool-First-Seq`, `Walspool-Last-Seq`.
//!
//! # The answer
//!
//! * 2xx: accepted.
//! * 5xx, 429 and 408, a connection failure or a timeout: transient. A `Retry-After`
//!   in seconds is passed on as the retry-after hint (the shipper waits that long).
//! * Any other status (3xx are not followed, 4xx): permanent. If the response has a
//!   `Walspool-Reject-Seq: {seq}` header naming a record of the batch, that record alone
//!   is refused ([`SinkError::Record`]), else the batch ([`SinkError::Batch`]).
//!
//! # Runtimes
//!
//! The client is a blocking HTTP/1.1 client (`ureq`, keep-alive) on a thread the sink
//! owns; `send` hands it the encoded body over a channel and awaits a
//! `futures::channel::oneshot`. So the sink works the same under tokio, smol,
//! async-std or a plain `futures` executor, with no runtime of its own to start and no
//! tokio in the dependency tree. A shipper sends one batch at a time, so one thread per
//! sink is all the concurrency it can use. Keep the sink's
//! [`timeout`](HttpSinkBuilder::timeout) (default 10 s) below the shipper's send timeout
//! (default 30 s): the thread cannot be interrupted mid-request. Plain `http://` only in
//! this build (no TLS stack is compiled in).
//!
//! ```no_run
//! use walspool_backends::http::HttpSink;
//! use walspool_wal::shipper::Shipper;
//! use walspool_wal::{Memory, Options, Wal};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let wal = Wal::open(Memory::new(), Options::default())?;
//! let sink = HttpSink::builder("http://127.0.0.1:8080/ingest")
//!     .bearer_token("s3cret")
//!     .gzip(true)
//!     .build()?;
//! let shipper = Shipper::<_, String>::builder(wal.consumer("ingest")?, sink).build();
//! let running = shipper.spawn_on_thread()?;
//! // ... append records; on the way out:
//! running.shutdown()?;
//! # Ok(())
//! # }
//! ```

use std::io::Write;
use std::sync::mpsc;
use std::time::Duration;

use async_trait::async_trait;
use futures::channel::oneshot;
use serde::{Deserialize, Serialize};
use walspool_wal::shipper::{Batch, Sink, SinkError};
use walspool_wal::Error;

/// How a batch is encoded in the request body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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
pub const REJECT_SEQ_HEADER: &str = "Walspool-Reject-Seq";

/// Builds an [`HttpSink`].
#[derive(Debug, Clone)]
pub struct HttpSinkBuilder {
    url: String,
    token: Option<String>,
    gzip: bool,
    format: BodyFormat,
    timeout: Duration,
    connect_timeout: Duration,
    headers: Vec<(String, String)>,
}

impl HttpSinkBuilder {
    /// Sends `Authorization: Bearer {token}`.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
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
        self.timeout = d;
        self
    }

    /// Connect timeout (default 5 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Adds a header to every request.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Starts the sink's client thread.
    pub fn build(self) -> Result<HttpSink, Error> {
        if !self.url.starts_with("http://") {
            return Err(Error::Config(format!(
                "HTTP sink URL {:?} must start with http:// (no TLS stack in this build)",
                self.url
            )));
        }
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(self.connect_timeout)
            .timeout(self.timeout)
            .redirects(0)
            .user_agent(concat!("walspool/", env!("CARGO_PKG_VERSION")))
            .build();
        let (tx, rx) = mpsc::channel::<Job>();
        let url = self.url.clone();
        std::thread::Builder::new()
            .name("walspool-http-sink".into())
            .spawn(move || {
                // Ends when the sink (the sender) is dropped.
                for job in rx {
                    let r = post(&agent, &url, &job);
                    let _ = job.reply.send(r);
                }
            })
            .map_err(|e| Error::Io {
                op: "spawn HTTP sink thread",
                path: self.url.clone(),
                source: e,
            })?;
        Ok(HttpSink { cfg: self, tx })
    }
}

/// A [`Sink`] that POSTs batches to an HTTP ingest endpoint; see the
/// [module documentation](self).
#[derive(Debug)]
pub struct HttpSink {
    cfg: HttpSinkBuilder,
    tx: mpsc::Sender<Job>,
}

struct Job {
    body: Vec<u8>,
    headers: Vec<(String, String)>,
    seqs: (u64, u64),
    reply: oneshot::Sender<Result<(), SinkError>>,
}

impl HttpSink {
    /// Starts building a sink that POSTs to `url`.
    pub fn builder(url: impl Into<String>) -> HttpSinkBuilder {
        HttpSinkBuilder {
            url: url.into(),
            token: None,
            gzip: false,
            format: BodyFormat::default(),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            headers: Vec::new(),
        }
    }

    /// The URL it posts to.
    pub fn url(&self) -> &str {
        &self.cfg.url
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
        let raw = match self.cfg.format {
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
        };
        if !self.cfg.gzip {
            return Ok(raw);
        }
        let mut gz = flate2::write::GzEncoder::new(
            Vec::with_capacity(raw.len() / 4),
            flate2::Compression::fast(),
        );
        gz.write_all(&raw)
            .and_then(|()| gz.finish())
            .map_err(|e| SinkError::transient(format!("gzip: {e}")))
    }
}

#[async_trait]
impl<T: Serialize + Send + Sync + 'static> Sink<T> for HttpSink {
    async fn send(&mut self, batch: &Batch<T>) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let body = self.encode(batch)?;
        let mut headers = vec![
            (
                "Content-Type".to_string(),
                match self.cfg.format {
                    BodyFormat::JsonLines => "application/x-ndjson",
                    BodyFormat::Postcard => "application/x-postcard",
                }
                .to_string(),
            ),
            ("Idempotency-Key".into(), batch.batch_key()),
            ("Walspool-Consumer".into(), batch.consumer().to_string()),
            ("Walspool-Attempt".into(), batch.attempt().to_string()),
            ("Walspool-First-Seq".into(), batch.first_seq().to_string()),
            ("Walspool-Last-Seq".into(), batch.last_seq().to_string()),
        ];
        if self.cfg.gzip {
            headers.push(("Content-Encoding".into(), "gzip".into()));
        }
        if let Some(t) = &self.cfg.token {
            headers.push(("Authorization".into(), format!("Bearer {t}")));
        }
        headers.extend(self.cfg.headers.iter().cloned());
        let (reply, rx) = oneshot::channel();
        let job = Job {
            body,
            headers,
            seqs: (batch.first_seq(), batch.last_seq()),
            reply,
        };
        self.tx
            .send(job)
            .map_err(|_| SinkError::transient("the HTTP sink's thread is gone"))?;
        rx.await.unwrap_or_else(|_| {
            Err(SinkError::transient(
                "the HTTP sink's thread dropped the request",
            ))
        })
    }
}

/// Runs one request on the sink's thread and classifies the answer.
fn post(agent: &ureq::Agent, url: &str, job: &Job) -> Result<(), SinkError> {
    let mut req = agent.post(url);
    for (k, v) in &job.headers {
        req = req.set(k, v);
    }
    match req.send_bytes(&job.body) {
        Ok(_) => Ok(()),
        Err(ureq::Error::Status(code, resp)) => Err(classify(
            code,
            resp.header("Retry-After"),
            resp.header(REJECT_SEQ_HEADER),
            job.seqs,
            resp.status_text(),
        )),
        Err(ureq::Error::Transport(t)) => Err(SinkError::transient(format!("POST {url}: {t}"))),
    }
}

/// Maps an HTTP status (not 2xx) to a [`SinkError`].
fn classify(
    code: u16,
    retry_after: Option<&str>,
    reject: Option<&str>,
    seqs: (u64, u64),
    text: &str,
) -> SinkError {
    let reason = format!("HTTP {code} {text}");
    if code == 429 || code == 408 || (500..600).contains(&code) {
        let hint = retry_after
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        return SinkError::Transient {
            reason,
            retry_after: hint,
        };
    }
    match reject.and_then(|v| v.trim().parse::<u64>().ok()) {
        Some(seq) if (seqs.0..=seqs.1).contains(&seq) => SinkError::record(seq, reason),
        _ => SinkError::batch(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_transient_or_permanent() {
        let t = |code, ra: Option<&str>| classify(code, ra, None, (1, 9), "x");
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
            classify(422, None, Some("4"), (1, 9), "x"),
            SinkError::record(4, "HTTP 422 x")
        );
        assert_eq!(
            classify(422, None, Some("40"), (1, 9), "x"),
            SinkError::batch("HTTP 422 x")
        );
    }
}
