//! NATS JetStream sink (feature `nats`): publishes every record to a JetStream stream,
//! one subject per record kind, exactly once into the stream within its de-duplication
//! window.
//!
//! # Messages
//!
//! Each record becomes one message on the subject `{subject_prefix}.{kind}` (default
//! prefix `walspool`), whose payload is the record as JSON (`serde_json`). The kind is
//! the record's top-level string field [`kind_field`](NatsSinkBuilder::kind_field)
//! (default `kind`: the `{kind, record}` envelope of `walspool::Envelope` gives
//! `walspool.log` and `walspool.audit`), or [`default_kind`](NatsSinkBuilder::default_kind)
//! (default `record`) when the record has no such field. A kind that is not a valid
//! subject token (empty, or holding `.`, `*`, `>` or white space) is a permanent error
//! for that record (it goes to the dead letter).
//!
//! Headers:
//!
//! | header        | value                                                                 |
//! |---------------|-----------------------------------------------------------------------|
//! | `Nats-Msg-Id` | the idempotency key `{wal_id}:{seq}`                                  |
//! | `wal_id`      | the WAL's stable id                                                   |
//! | `seq`         | the record's sequence number in the WAL                               |
//! | `kind`        | the kind (the subject's last token)                                   |
//! | `ts`          | when the record was appended to the WAL, microseconds since the epoch |
//!
//! # Delivery
//!
//! A batch is published pipelined (up to [`max_in_flight`](NatsSinkBuilder::max_in_flight)
//! publishes awaiting their acknowledgement at once) and `send` answers `Ok` only after
//! **every** message of the batch was acknowledged by the stream (a `PubAck`, which
//! JetStream sends once the message is stored, on a quorum of replicas for a replicated
//! stream); only then does the shipper commit its checkpoint. The shipper delivers at
//! least once; JetStream drops a message whose `Nats-Msg-Id` it already stored within
//! the stream's `duplicate_window` (acknowledging it as a duplicate), so a batch sent
//! again after a lost acknowledgement, a timeout or a restart lands **once**, as long
//! as it is sent again within that window (default 2 minutes; keep it above the
//! shipper's maximum backoff, 30 s by default).
//!
//! # The stream
//!
//! On its first connection the sink looks the stream up (default name `WALSPOOL`). When
//! missing and [`create_stream`](NatsSinkBuilder::create_stream) is on (the default) it
//! creates it: subjects `{subject_prefix}.>`, file storage,
//! [`replicas`](NatsSinkBuilder::replicas) (default 1) and
//! [`duplicate_window`](NatsSinkBuilder::duplicate_window). An existing stream is
//! checked: its subjects must cover `{subject_prefix}.>` and its duplicate window must
//! not be zero. [`NatsSink::check`] runs this at startup and answers a permanent error
//! for a stream of the wrong shape; found while shipping, the same mismatch is a
//! transient error, so the records wait in the WAL (the breaker opens) until the stream
//! is fixed instead of going to the dead letter.
//!
//! # Errors
//!
//! * Transient (retried with backoff, counted by the breaker): no connection, a
//!   connection lost, an acknowledgement not received within
//!   [`ack_timeout`](NatsSinkBuilder::ack_timeout), no stream listening on the subject,
//!   authentication or authorization refused (credentials can be fixed without losing
//!   records), and any JetStream error not listed below (storage full, limits reached,
//!   no quorum, ...).
//! * Permanent, for one record ([`SinkError::Record`], dead letter after the shipper's
//!   `poison_attempts`): a record that does not serialize to JSON, a kind that is not a
//!   subject token, a message above the server's `max_payload`, and the JetStream error
//!   10054 (message larger than the stream's `max_msg_size`).
//!
//! # Authentication and TLS
//!
//! [`user_password`](NatsSinkBuilder::user_password), [`token`](NatsSinkBuilder::token),
//! [`nkey`](NatsSinkBuilder::nkey) (a seed), [`credentials_file`](NatsSinkBuilder::credentials_file)
//! (a `.creds` file: JWT and nkey), and TLS through rustls:
//! [`require_tls`](NatsSinkBuilder::require_tls), [`root_certificate`](NatsSinkBuilder::root_certificate)
//! (PEM), [`client_certificate`](NatsSinkBuilder::client_certificate) (mutual TLS),
//! [`tls_first`](NatsSinkBuilder::tls_first). A `tls://` server URL requires TLS too.
//! `Debug` never shows a password, token or seed.
//!
//! # Runtimes
//!
//! `async-nats` needs a tokio runtime; the sink owns one (current-thread, on a thread
//! of its own, like the PostgreSQL sink's) and `send` awaits its answer through a
//! `futures` oneshot channel, so the sink works under tokio, smol or a plain
//! `futures` executor.
//!
//! # Metrics
//!
//! [`NatsSink::metrics`] hands out an `Arc<NatsMetrics>` whose
//! [`snapshot`](NatsMetrics::snapshot) gives messages stored and acknowledged as
//! duplicates, failed publishes, the publishes in flight, batch acknowledgement latency
//! (percentiles over the last 1024 batches) and the messages stored per subject. The
//! shipper also reads them (through [`Sink::metrics_source`]) into the WAL's metrics
//! ([`ConsumerMetrics::sink`](walspool_wal::ConsumerMetrics::sink), kind `nats`), so
//! they show in the stats file, `walspool status` and `walspool top`.
//!
//! ```no_run
//! use walspool_backends::nats::NatsSink;
//! use walspool_wal::shipper::Shipper;
//! use walspool_wal::{Memory, Options, Wal};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let wal = Wal::open(Memory::new(), Options::default())?;
//! let mut sink = NatsSink::builder("nats://nats-1:4222,nats://nats-2:4222")
//!     .stream("AUDIT")
//!     .subject_prefix("audit")
//!     .replicas(3)
//!     .user_password("walspool", "secret")
//!     .require_tls(true)
//!     .build()?;
//! // Fail fast on a stream of the wrong shape (a transient error means "unreachable").
//! futures::executor::block_on(sink.check())?;
//! let metrics = sink.metrics();
//! let shipper = Shipper::<_, serde_json::Value>::builder(wal.consumer("nats")?, sink).build()?;
//! let running = shipper.spawn_on_thread()?;
//! // ... append records; on the way out:
//! running.shutdown()?;
//! println!("{:?}", metrics.snapshot());
//! # Ok(())
//! # }
//! ```

use crate::broker_stats::{round_trip, BrokerCounters};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use async_nats::{ConnectOptions, HeaderMap, ServerAddr};
use async_trait::async_trait;
use futures::channel::oneshot;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use walspool_wal::shipper::{Batch, Sink, SinkError, SinkMetricsSource};
use walspool_wal::{Error, SinkMetrics};

/// The default stream name.
pub const DEFAULT_STREAM: &str = "WALSPOOL";
/// The default subject prefix.
pub const DEFAULT_SUBJECT_PREFIX: &str = "walspool";

/// JetStream: message larger than the stream's `max_msg_size`.
const JS_MESSAGE_TOO_LARGE: u64 = 10054;

#[derive(Clone)]
enum Auth {
    None,
    UserPassword(String, String),
    Token(String),
    NKey(String),
    CredentialsFile(PathBuf),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::UserPassword(u, _) => write!(f, "UserPassword({u:?}, <redacted>)"),
            Auth::Token(_) => f.write_str("Token(<redacted>)"),
            Auth::NKey(_) => f.write_str("NKey(<redacted>)"),
            Auth::CredentialsFile(p) => write!(f, "CredentialsFile({p:?})"),
        }
    }
}

/// The server URLs as given; `Debug` redacts credentials in them.
#[derive(Clone)]
struct Servers(String);

impl std::fmt::Debug for Servers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&crate::redact::redact_url(&self.0), f)
    }
}

/// Builds a [`NatsSink`]. Its `Debug` output never shows a password, token or seed,
/// nor credentials written in the server URLs.
#[derive(Debug, Clone)]
pub struct NatsSinkBuilder {
    servers: Servers,
    stream: String,
    subject_prefix: String,
    kind_field: String,
    default_kind: String,
    create_stream: bool,
    replicas: usize,
    duplicate_window: Duration,
    auth: Auth,
    require_tls: bool,
    tls_first: bool,
    root_certs: Vec<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
    connect_timeout: Duration,
    ack_timeout: Duration,
    max_in_flight: usize,
    name: Option<String>,
}

impl NatsSinkBuilder {
    /// The JetStream stream (default [`DEFAULT_STREAM`]).
    pub fn stream(mut self, name: impl Into<String>) -> Self {
        self.stream = name.into();
        self
    }

    /// The subject prefix: records go to `{prefix}.{kind}` (default
    /// [`DEFAULT_SUBJECT_PREFIX`]; may hold dots, e.g. `prod.eu.walspool`).
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.subject_prefix = prefix.into();
        self
    }

    /// The record's top-level string field that names its kind (default `kind`).
    pub fn kind_field(mut self, field: impl Into<String>) -> Self {
        self.kind_field = field.into();
        self
    }

    /// The kind of a record without a kind field (default `record`).
    pub fn default_kind(mut self, kind: impl Into<String>) -> Self {
        self.default_kind = kind.into();
        self
    }

    /// Creates the stream when it does not exist (default on).
    pub fn create_stream(mut self, on: bool) -> Self {
        self.create_stream = on;
        self
    }

    /// Replicas of a stream the sink creates (default 1; 3 or 5 on a cluster).
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n;
        self
    }

    /// The de-duplication window of a stream the sink creates (default 2 minutes).
    pub fn duplicate_window(mut self, d: Duration) -> Self {
        self.duplicate_window = d;
        self
    }

    /// Authenticates with a user and password.
    pub fn user_password(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Auth::UserPassword(user.into(), password.into());
        self
    }

    /// Authenticates with a token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.auth = Auth::Token(token.into());
        self
    }

    /// Authenticates with an nkey seed (`SU...`).
    pub fn nkey(mut self, seed: impl Into<String>) -> Self {
        self.auth = Auth::NKey(seed.into());
        self
    }

    /// Authenticates with a `.creds` file (a user JWT and its nkey seed).
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.auth = Auth::CredentialsFile(path.into());
        self
    }

    /// Refuses a connection without TLS.
    pub fn require_tls(mut self, on: bool) -> Self {
        self.require_tls = on;
        self
    }

    /// Starts TLS before the NATS handshake (servers configured with `handshake_first`).
    pub fn tls_first(mut self, on: bool) -> Self {
        self.tls_first = on;
        self
    }

    /// Trusts the CA certificates of this PEM file (besides the system's roots).
    pub fn root_certificate(mut self, pem: impl Into<PathBuf>) -> Self {
        self.root_certs.push(pem.into());
        self
    }

    /// Presents this client certificate and key (PEM) for mutual TLS.
    pub fn client_certificate(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// Timeout of opening a connection (default 5 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// How long a publish waits for the stream's acknowledgement (default 10 s); past it
    /// the batch fails transiently. Keep it below the shipper's send timeout (30 s).
    pub fn ack_timeout(mut self, d: Duration) -> Self {
        self.ack_timeout = d;
        self
    }

    /// Publishes awaiting their acknowledgement at once (default 1024; at least 1,
    /// checked by [`build`](Self::build)).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// The connection's name, shown by the server's monitoring (default `walspool`).
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Checks the configuration and starts the sink's runtime thread. Does not connect:
    /// the first [`send`](Sink::send) or [`check`](NatsSink::check) does.
    pub fn build(self) -> Result<NatsSink, Error> {
        if self.max_in_flight == 0 {
            return Err(Error::Config("max_in_flight must be at least 1".into()));
        }
        let servers: Vec<ServerAddr> = self
            .servers
            .0
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<ServerAddr>().map_err(|e| {
                    Error::Config(format!(
                        "NATS server URL {:?}: {e}",
                        crate::redact::redact_url(s)
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        if servers.is_empty() {
            return Err(Error::Config("NATS sink: no server URL".into()));
        }
        if self.stream.is_empty()
            || self
                .stream
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
        {
            return Err(Error::Config(format!(
                "NATS stream name {:?}: want a name without spaces, '.', '*', '>', '/' or '\\'",
                self.stream
            )));
        }
        if self.subject_prefix.split('.').any(|t| !valid_token(t)) {
            return Err(Error::Config(format!(
                "NATS subject prefix {:?}: want dot-separated tokens without spaces, '*' or '>'",
                self.subject_prefix
            )));
        }
        if !valid_token(&self.default_kind) {
            return Err(Error::Config(format!(
                "NATS default kind {:?} is not a subject token",
                self.default_kind
            )));
        }
        let metrics = Arc::new(NatsMetrics::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let cfg = Arc::new(self);
        let mut worker = Worker {
            cfg: cfg.clone(),
            servers,
            metrics: metrics.clone(),
            js: None,
            stream_ok: false,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Io {
                op: "build the NATS sink's tokio runtime",
                path: cfg.stream.clone(),
                source: e,
            })?;
        std::thread::Builder::new()
            .name("walspool-nats-sink".into())
            .spawn(move || {
                // Ends when the sink (the sender) is dropped; the runtime (and with it the
                // client's tasks) goes with it.
                rt.block_on(async move {
                    while let Some(job) = rx.recv().await {
                        match job {
                            Job::Publish { msgs, reply } => {
                                let r = worker.publish(msgs).await;
                                let _ = reply.send(r);
                            }
                            Job::Check { reply } => {
                                let r = worker.context().await.map(|_| ());
                                let _ = reply.send(r);
                            }
                        }
                    }
                });
            })
            .map_err(|e| Error::Io {
                op: "spawn NATS sink thread",
                path: cfg.stream.clone(),
                source: e,
            })?;
        Ok(NatsSink { cfg, tx, metrics })
    }
}

/// A [`Sink`] that publishes batches to a NATS JetStream stream; see the
/// [module documentation](self).
#[derive(Debug)]
pub struct NatsSink {
    cfg: Arc<NatsSinkBuilder>,
    tx: tokio::sync::mpsc::UnboundedSender<Job>,
    metrics: Arc<NatsMetrics>,
}

#[derive(Debug)]
enum Job {
    Publish {
        msgs: Vec<Msg>,
        reply: oneshot::Sender<Result<(), SinkError>>,
    },
    Check {
        reply: oneshot::Sender<Result<(), SinkError>>,
    },
}

/// One message to publish.
#[derive(Debug)]
struct Msg {
    seq: u64,
    subject: String,
    headers: HeaderMap,
    payload: Vec<u8>,
}

impl NatsSink {
    /// Starts building a sink for the servers at `servers`: one URL or a comma-separated
    /// list (`nats://host:4222`, `tls://host:4222`; credentials in the URL work too).
    pub fn builder(servers: impl Into<String>) -> NatsSinkBuilder {
        NatsSinkBuilder {
            servers: Servers(servers.into()),
            stream: DEFAULT_STREAM.into(),
            subject_prefix: DEFAULT_SUBJECT_PREFIX.into(),
            kind_field: "kind".into(),
            default_kind: "record".into(),
            create_stream: true,
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            auth: Auth::None,
            require_tls: false,
            tls_first: false,
            root_certs: Vec::new(),
            client_cert: None,
            connect_timeout: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(10),
            max_in_flight: 1024,
            name: None,
        }
    }

    /// The stream it publishes to.
    pub fn stream(&self) -> &str {
        &self.cfg.stream
    }

    /// The subject of records of `kind`.
    pub fn subject(&self, kind: &str) -> String {
        format!("{}.{kind}", self.cfg.subject_prefix)
    }

    /// Its counters (keep a clone before handing the sink to a shipper).
    pub fn metrics(&self) -> Arc<NatsMetrics> {
        self.metrics.clone()
    }

    /// Connects (if not connected), creates the stream if missing and asked to, and
    /// checks it. `Ok` when the sink can publish; a transient error when the server
    /// cannot be reached; [`SinkError::Batch`] when the stream does not fit.
    pub async fn check(&mut self) -> Result<(), SinkError> {
        round_trip(&self.tx, |reply| Job::Check { reply }, "NATS").await
    }

    fn encode<T: Serialize>(&self, batch: &Batch<T>) -> Result<Vec<Msg>, SinkError> {
        let wal_id = batch.wal_id();
        let mut msgs = Vec::with_capacity(batch.len());
        for e in batch.entries() {
            let value = serde_json::to_value(&e.record)
                .map_err(|err| SinkError::record(e.seq, format!("record to JSON: {err}")))?;
            let kind = value
                .get(&self.cfg.kind_field)
                .and_then(|k| k.as_str())
                .unwrap_or(&self.cfg.default_kind);
            if !valid_token(kind) {
                return Err(SinkError::record(
                    e.seq,
                    format!("kind {kind:?} is not a NATS subject token"),
                ));
            }
            let subject = format!("{}.{kind}", self.cfg.subject_prefix);
            let mut headers = HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                format!("{wal_id}:{}", e.seq).as_str(),
            );
            headers.insert("wal_id", wal_id);
            headers.insert("seq", e.seq.to_string().as_str());
            headers.insert("kind", kind);
            headers.insert("ts", e.ts_us.to_string().as_str());
            let payload = serde_json::to_vec(&value)
                .map_err(|err| SinkError::record(e.seq, format!("record to JSON: {err}")))?;
            msgs.push(Msg {
                seq: e.seq,
                subject,
                headers,
                payload,
            });
        }
        Ok(msgs)
    }
}

#[async_trait]
impl<T: Serialize + Send + Sync + 'static> Sink<T> for NatsSink {
    async fn send(&mut self, batch: &Batch<T>) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let msgs = self.encode(batch)?;
        round_trip(&self.tx, |reply| Job::Publish { msgs, reply }, "NATS").await
    }

    fn metrics_source(&self) -> Option<SinkMetricsSource> {
        let m = self.metrics.clone();
        Some(Arc::new(move || m.sink_metrics()))
    }
}

/// A subject token: not empty, no `.`, `*`, `>` or white space.
fn valid_token(t: &str) -> bool {
    !t.is_empty()
        && !t
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>'))
}

/// Whether the stream subject `filter` matches every subject of the wildcard `want`
/// (`{prefix}.>`).
fn covers(filter: &str, want: &str) -> bool {
    let mut f = filter.split('.');
    let mut w = want.split('.');
    loop {
        match (f.next(), w.next()) {
            (Some(">"), Some(_)) => return true,
            (Some(_), Some(">")) => return false,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The sink's connection, on its runtime thread.
struct Worker {
    cfg: Arc<NatsSinkBuilder>,
    servers: Vec<ServerAddr>,
    metrics: Arc<NatsMetrics>,
    js: Option<async_nats::jetstream::Context>,
    stream_ok: bool,
}

impl Worker {
    async fn options(&self) -> Result<ConnectOptions, SinkError> {
        let cfg = &self.cfg;
        let mut o = match &cfg.auth {
            Auth::None => ConnectOptions::new(),
            Auth::UserPassword(u, p) => {
                ConnectOptions::with_user_and_password(u.clone(), p.clone())
            }
            Auth::Token(t) => ConnectOptions::with_token(t.clone()),
            Auth::NKey(s) => ConnectOptions::with_nkey(s.clone()),
            Auth::CredentialsFile(p) => ConnectOptions::with_credentials_file(p)
                .await
                .map_err(|e| SinkError::transient(format!("NATS credentials file {p:?}: {e}")))?,
        };
        o = o
            .name(cfg.name.as_deref().unwrap_or("walspool"))
            .connection_timeout(cfg.connect_timeout)
            .require_tls(cfg.require_tls);
        if cfg.tls_first {
            o = o.tls_first();
        }
        for c in &cfg.root_certs {
            o = o.add_root_certificates(c.clone());
        }
        if let Some((c, k)) = &cfg.client_cert {
            o = o.add_client_certificate(c.clone(), k.clone());
        }
        let m = self.metrics.clone();
        o = o.event_callback(move |ev| {
            let m = m.clone();
            async move {
                match ev {
                    async_nats::Event::Connected => {
                        m.common.connects.fetch_add(1, Ordering::Relaxed);
                    }
                    async_nats::Event::Disconnected => {
                        m.common.disconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    other => tracing::debug!(event = %other, "NATS sink connection event"),
                }
            }
        });
        Ok(o)
    }

    /// The JetStream context, connecting and checking the stream if needed.
    async fn context(&mut self) -> Result<async_nats::jetstream::Context, SinkError> {
        if self.js.is_none() {
            let opts = self.options().await?;
            let client = tokio::time::timeout(
                self.cfg.connect_timeout + Duration::from_secs(1),
                opts.connect(self.servers.as_slice()),
            )
            .await
            .map_err(|_| SinkError::transient("NATS: connect timed out"))?
            .map_err(|e| SinkError::transient(format!("NATS: connect: {e}")))?;
            self.metrics.common.connects.fetch_add(1, Ordering::Relaxed);
            let js = async_nats::jetstream::ContextBuilder::new()
                .timeout(self.cfg.ack_timeout)
                .max_ack_inflight(self.cfg.max_in_flight + 64)
                .backpressure_on_inflight(true)
                .build(client);
            self.js = Some(js);
            self.stream_ok = false;
        }
        let js = self
            .js
            .clone()
            .ok_or_else(|| SinkError::transient("NATS: no connection"))?;
        if !self.stream_ok {
            self.ensure_stream(&js).await?;
            self.stream_ok = true;
        }
        Ok(js)
    }

    /// Creates the stream if missing (and asked to), checks it. A mismatch is
    /// [`SinkError::Batch`]; `publish` turns it into a transient error.
    async fn ensure_stream(&self, js: &async_nats::jetstream::Context) -> Result<(), SinkError> {
        use async_nats::jetstream::context::GetStreamErrorKind;
        let cfg = &self.cfg;
        let want = format!("{}.>", cfg.subject_prefix);
        let info = match js.get_stream(&cfg.stream).await {
            Ok(mut s) => s
                .info()
                .await
                .map_err(|e| SinkError::transient(format!("NATS: stream info: {e}")))?
                .config
                .clone(),
            Err(e) => {
                let missing =
                    matches!(e.kind(), GetStreamErrorKind::JetStream(ref j) if j.code() == 404);
                if !missing {
                    return Err(SinkError::transient(format!(
                        "NATS: look up stream {}: {e}",
                        cfg.stream
                    )));
                }
                if !cfg.create_stream {
                    return Err(SinkError::batch(format!(
                        "NATS: stream {} does not exist (and create_stream is off)",
                        cfg.stream
                    )));
                }
                let sc = StreamConfig {
                    name: cfg.stream.clone(),
                    subjects: vec![want.clone()],
                    storage: StorageType::File,
                    num_replicas: cfg.replicas,
                    duplicate_window: cfg.duplicate_window,
                    ..Default::default()
                };
                match js.create_stream(sc).await {
                    Ok(mut s) => s
                        .info()
                        .await
                        .map_err(|e| SinkError::transient(format!("NATS: stream info: {e}")))?
                        .config
                        .clone(),
                    Err(e) => {
                        return Err(SinkError::transient(format!(
                            "NATS: create stream {}: {e}",
                            cfg.stream
                        )))
                    }
                }
            }
        };
        let mut problems = Vec::new();
        if !info.subjects.iter().any(|s| covers(s, &want)) {
            problems.push(format!(
                "its subjects {:?} do not cover {want}",
                info.subjects
            ));
        }
        if info.duplicate_window.is_zero() {
            problems.push("its duplicate window is zero (no de-duplication)".to_string());
        }
        if !problems.is_empty() {
            return Err(SinkError::batch(format!(
                "NATS stream {}: {}",
                cfg.stream,
                problems.join("; ")
            )));
        }
        Ok(())
    }

    async fn publish(&mut self, msgs: Vec<Msg>) -> Result<(), SinkError> {
        let js = match self.context().await {
            Ok(js) => js,
            // A stream of the wrong shape holds the records in the WAL until fixed.
            Err(SinkError::Batch { reason }) => return Err(SinkError::transient(reason)),
            Err(e) => return Err(e),
        };
        let started = Instant::now();
        let r = self.publish_all(&js, msgs).await;
        self.metrics.common.in_flight.store(0, Ordering::Relaxed);
        match &r {
            Ok(()) => {
                self.metrics.common.batch_acked(started.elapsed());
            }
            Err(_) => {
                self.metrics
                    .common
                    .batches_failed
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        r
    }

    async fn publish_all(
        &mut self,
        js: &async_nats::jetstream::Context,
        msgs: Vec<Msg>,
    ) -> Result<(), SinkError> {
        let window = self.cfg.max_in_flight;
        let mut pending = FuturesUnordered::new();
        let mut stored: BTreeMap<String, u64> = BTreeMap::new();
        let mut subjects: Vec<String> = Vec::new();
        let mut result = Ok(());
        'outer: for m in msgs {
            while pending.len() >= window {
                if let Some(r) = pending.next().await {
                    if let Err(e) = self.acked(r, &subjects, &mut stored) {
                        result = Err(e);
                        break 'outer;
                    }
                }
            }
            let idx = match subjects.iter().position(|s| *s == m.subject) {
                Some(i) => i,
                None => {
                    subjects.push(m.subject.clone());
                    subjects.len() - 1
                }
            };
            let publish = PublishMessage::build()
                .payload(m.payload.into())
                .headers(m.headers);
            match js.send_publish(m.subject, publish).await {
                Ok(ack) => {
                    let seq = m.seq;
                    pending.push(async move { (seq, idx, ack.await) });
                    self.metrics
                        .common
                        .in_flight
                        .store(pending.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    self.metrics.common.failed.fetch_add(1, Ordering::Relaxed);
                    result = Err(self.classify(&e, m.seq));
                    break;
                }
            }
        }
        if result.is_ok() {
            while let Some(r) = pending.next().await {
                self.metrics
                    .common
                    .in_flight
                    .store(pending.len() as u64, Ordering::Relaxed);
                if let Err(e) = self.acked(r, &subjects, &mut stored) {
                    result = Err(e);
                    break;
                }
            }
        }
        // Messages stored count even when the batch as a whole failed (they are in the
        // stream; their redelivery will be acknowledged as duplicates).
        self.metrics.common.stored.add(stored);
        result
    }

    /// Accounts for one acknowledgement.
    fn acked(
        &mut self,
        (seq, idx, r): (
            u64,
            usize,
            Result<async_nats::jetstream::publish::PublishAck, PublishError>,
        ),
        subjects: &[String],
        stored: &mut BTreeMap<String, u64>,
    ) -> Result<(), SinkError> {
        match r {
            Ok(ack) if ack.duplicate => {
                self.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(_) => {
                *stored.entry(subjects[idx].clone()).or_default() += 1;
                Ok(())
            }
            Err(e) => {
                self.metrics.common.failed.fetch_add(1, Ordering::Relaxed);
                Err(self.classify(&e, seq))
            }
        }
    }

    fn classify(&mut self, e: &PublishError, seq: u64) -> SinkError {
        match e.kind() {
            PublishErrorKind::MaxPayloadExceeded => SinkError::record(seq, format!("NATS: {e}")),
            PublishErrorKind::StreamNotFound => {
                // Deleted under us: look it up (and create it) again on the next attempt.
                self.stream_ok = false;
                SinkError::transient(format!(
                    "NATS: no stream listens on {}.> ({e})",
                    self.cfg.subject_prefix
                ))
            }
            PublishErrorKind::Other => {
                let code = std::error::Error::source(e)
                    .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
                    .map(|j| j.error_code().0);
                if code == Some(JS_MESSAGE_TOO_LARGE) {
                    SinkError::record(seq, format!("NATS: {e}"))
                } else {
                    SinkError::transient(format!("NATS: publish: {e}"))
                }
            }
            _ => SinkError::transient(format!("NATS: publish: {e}")),
        }
    }
}

/// The NATS sink's counters; see [`NatsMetrics::snapshot`].
#[derive(Debug, Default)]
pub struct NatsMetrics {
    common: BrokerCounters,
    duplicates: AtomicU64,
}

/// A copy of a [`NatsMetrics`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsStats {
    /// Messages the stream stored (acknowledged, not as duplicates).
    pub stored: u64,
    /// Messages the stream acknowledged as duplicates (a redelivery, dropped by the
    /// de-duplication window).
    pub duplicates: u64,
    /// Publishes that failed (no acknowledgement, or an error).
    pub failed: u64,
    /// Batches acknowledged in full.
    pub batches: u64,
    /// Batch attempts that failed.
    pub batches_failed: u64,
    /// Publishes awaiting their acknowledgement now.
    pub in_flight: u64,
    /// Connections made (the first, and each reconnection).
    pub connects: u64,
    /// Connections lost.
    pub disconnects: u64,
    /// Time from a batch's first publish to its last acknowledgement, over the last
    /// 1024 batches: median, 99th percentile and maximum, in microseconds.
    pub batch_ack_p50_us: u64,
    /// See `batch_ack_p50_us`.
    pub batch_ack_p99_us: u64,
    /// See `batch_ack_p50_us`.
    pub batch_ack_max_us: u64,
    /// Messages stored per subject.
    pub per_subject: BTreeMap<String, u64>,
}

impl NatsMetrics {
    /// The counters now.
    pub fn snapshot(&self) -> NatsStats {
        let (p50, p99, max) = self.common.latency_us.p50_p99_max();
        NatsStats {
            stored: self.common.stored.total(),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            failed: self.common.failed.load(Ordering::Relaxed),
            batches: self.common.batches.load(Ordering::Relaxed),
            batches_failed: self.common.batches_failed.load(Ordering::Relaxed),
            in_flight: self.common.in_flight.load(Ordering::Relaxed),
            connects: self.common.connects.load(Ordering::Relaxed),
            disconnects: self.common.disconnects.load(Ordering::Relaxed),
            batch_ack_p50_us: p50,
            batch_ack_p99_us: p99,
            batch_ack_max_us: max,
            per_subject: self.common.stored.per_destination(),
        }
    }

    /// The figures the WAL's metrics carry for the consumer this sink ships
    /// ([`ConsumerMetrics::sink`](walspool_wal::ConsumerMetrics::sink)): kind `nats`,
    /// publishes in flight, messages stored and failed publishes, batch acknowledgement
    /// latency and messages stored per subject (duplicates are not counted as stored).
    pub fn sink_metrics(&self) -> SinkMetrics {
        self.common.sink_metrics("nats")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_coverage() {
        assert!(covers("walspool.>", "walspool.>"));
        assert!(covers(">", "walspool.>"));
        assert!(covers("*.>", "walspool.>"));
        assert!(!covers("walspool.*", "walspool.>"));
        assert!(!covers("walspool.log", "walspool.>"));
        assert!(!covers("other.>", "walspool.>"));
        assert!(covers("a.b.>", "a.b.>"));
        assert!(!covers("a.b.>", "a.>"));
    }

    #[test]
    fn tokens_and_redaction() {
        assert!(valid_token("audit"));
        assert!(!valid_token("a.b") && !valid_token("a b") && !valid_token(""));
        assert!(!valid_token("a*"));
        let b = NatsSink::builder("nats://127.0.0.1:4222")
            .user_password("u", "hunter2")
            .nkey("SUSECRET");
        let dbg = format!("{b:?}");
        assert!(
            !dbg.contains("hunter2") && !dbg.contains("SUSECRET"),
            "{dbg}"
        );
        assert!(NatsSink::builder("").build().is_err());
        assert!(NatsSink::builder("nats://127.0.0.1:1")
            .subject_prefix("a.*")
            .build()
            .is_err());
    }
}
