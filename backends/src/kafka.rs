//! Kafka sink (feature `kafka`): produces every record to a Kafka topic with
//! `acks=all`, the idempotency key as the message key, and commits the shipper's
//! checkpoint only once the broker acknowledged the whole batch.
//!
//! The client is [`rskafka`](https://docs.rs/rskafka), a pure-Rust implementation of the
//! Kafka protocol (InfluxDB's): no librdkafka, no C toolchain beyond what the
//! compression crates build, TLS through rustls/ring like every other walspool sink.
//!
//! # Messages
//!
//! Each record becomes one Kafka message:
//!
//! * **topic**: [`topic`](KafkaSinkBuilder::topic) (default `walspool`) for every record,
//!   or with [`topic_per_kind`](KafkaSinkBuilder::topic_per_kind) `{prefix}.{kind}`
//!   (`walspool.log`, `walspool.audit`). The kind is the record's top-level string field
//!   [`kind_field`](KafkaSinkBuilder::kind_field) (default `kind`: the `{kind, record}`
//!   envelope of `walspool::Envelope`), or [`default_kind`](KafkaSinkBuilder::default_kind)
//!   (default `record`). A kind that makes no valid topic name (Kafka allows
//!   `[a-zA-Z0-9._-]`, at most 249 characters) is a permanent error for that record.
//! * **key**: the idempotency key `{wal_id}:{seq}` (UTF-8), or what
//!   [`key_fn`](KafkaSinkBuilder::key_fn) returns for the record.
//! * **value**: the record as JSON (default) or postcard
//!   ([`encoding`](KafkaSinkBuilder::encoding)).
//! * **timestamp**: when the record was appended to the WAL (milliseconds, `CreateTime`).
//! * **headers**:
//!
//! | header   | value                                                                 |
//! |----------|-----------------------------------------------------------------------|
//! | `wal_id` | the WAL's stable id                                                   |
//! | `seq`    | the record's sequence number in the WAL (decimal)                     |
//! | `kind`   | the record's kind                                                     |
//! | `ts`     | when the record was appended to the WAL, microseconds since the epoch |
//!
//! # Partitions and order
//!
//! [`Partitioning::WalId`] (the default) sends every record of one WAL to the same
//! partition of a topic (Kafka's murmur2 hash of the WAL id), so a consumer reads them
//! in WAL order. [`Partitioning::Key`] is Kafka's default partitioner (murmur2 of the
//! message key, as the Java client computes it): with a [`key_fn`](KafkaSinkBuilder::key_fn)
//! returning, say, a tenant id, records are ordered per key and spread over partitions.
//! [`Partitioning::Fixed`] names one partition.
//!
//! Within a partition the produce requests of a batch are sent one after the other and
//! stop at the first failure, so the first copy of each record in a partition is always
//! in WAL order, even across retries. Different partitions are written concurrently.
//!
//! # Delivery
//!
//! Every produce request asks for `acks=all` (rskafka always sends `acks = -1`: the
//! leader answers once every in-sync replica has the records, as far as
//! `min.insync.replicas` requires). `send` answers `Ok` only after **every** request of
//! the batch was acknowledged; only then does the shipper commit its checkpoint.
//!
//! Delivery into Kafka is **at least once**. rskafka has no idempotent producer
//! (`InitProducerId`, producer sequence numbers), and an idempotent producer would not
//! cover the shipper's own redeliveries anyway (a batch sent again after a lost
//! acknowledgement, a timeout, or a restart of the process comes from a new producer
//! session). A redelivered record carries the **same key** (`{wal_id}:{seq}` by default)
//! and the same `wal_id`/`seq` headers: consumers de-duplicate by them (keep the highest
//! `seq` seen per `wal_id` and partition — records of one WAL arrive in order — or a set
//! of keys; a compacted topic keyed by the idempotency key also keeps one copy).
//!
//! # Topics
//!
//! With [`create_topics`](KafkaSinkBuilder::create_topics) on (the default) a topic the
//! sink wants and does not find is created with [`partitions`](KafkaSinkBuilder::partitions)
//! (default 1) and [`replication_factor`](KafkaSinkBuilder::replication_factor) (default
//! 1; 3 on a production cluster). [`KafkaSink::check`] connects and looks the fixed topic
//! up (or creates it) at startup: a permanent error when it is missing and may not be
//! created. Found while shipping, the same problem is a transient error, so the records
//! wait in the WAL (the breaker opens) until the topic exists.
//!
//! # Errors
//!
//! * Transient (retried with backoff, counted by the breaker): no connection, a
//!   connection lost, no acknowledgement within [`ack_timeout`](KafkaSinkBuilder::ack_timeout),
//!   unknown topic or partition, no leader, not enough replicas, SASL authentication or
//!   authorization refused (credentials and ACLs can be fixed without losing records), an
//!   unsupported compression type, and any broker error not listed below.
//! * Permanent, for one record ([`SinkError::Record`], dead letter after the shipper's
//!   `poison_attempts`): a record that does not serialize, a kind that is no topic name,
//!   a message larger than [`max_message_bytes`](KafkaSinkBuilder::max_message_bytes),
//!   and the broker errors `MESSAGE_TOO_LARGE`, `RECORD_LIST_TOO_LARGE`,
//!   `INVALID_RECORD` and `INVALID_TIMESTAMP`: when the broker refuses a request of
//!   several records this way, the sink splits it in halves until it finds the record at
//!   fault (the records before it are stored).
//!
//! # Authentication and TLS
//!
//! SASL: [`sasl_plain`](KafkaSinkBuilder::sasl_plain),
//! [`sasl_scram_sha256`](KafkaSinkBuilder::sasl_scram_sha256),
//! [`sasl_scram_sha512`](KafkaSinkBuilder::sasl_scram_sha512). TLS through rustls (ring):
//! [`tls`](KafkaSinkBuilder::tls) with Mozilla's roots (`webpki-roots`),
//! [`root_certificate`](KafkaSinkBuilder::root_certificate) (PEM; replaces Mozilla's
//! roots) and [`client_certificate`](KafkaSinkBuilder::client_certificate) (mutual TLS).
//! SASL over TLS is `SASL_SSL`; SASL alone is `SASL_PLAINTEXT`. `Debug` never shows a
//! password.
//!
//! # Runtimes
//!
//! rskafka needs a tokio runtime; the sink owns one (current-thread, on a thread of its
//! own, like the NATS and PostgreSQL sinks) and `send` awaits its answer through a
//! `futures` oneshot channel, so the sink works under tokio, smol, async-std or a plain
//! `futures` executor.
//!
//! # Metrics
//!
//! [`KafkaSink::metrics`] hands out an `Arc<KafkaMetrics>` whose
//! [`snapshot`](KafkaMetrics::snapshot) gives the records acknowledged, failed, in
//! flight, produce requests, (re)connections, batch acknowledgement latency (percentiles
//! over the last 1024 batches) and records acknowledged per topic. The shipper also
//! reads them (through [`Sink::metrics_source`]) into the WAL's metrics
//! ([`ConsumerMetrics::sink`](walspool_wal::ConsumerMetrics::sink), kind `kafka`), so
//! they show in the stats file, `walspool status` and `walspool top`.
//!
//! ```no_run
//! use walspool_backends::kafka::{Encoding, KafkaSink};
//! use walspool_wal::shipper::Shipper;
//! use walspool_wal::{Memory, Options, Wal};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let wal = Wal::open(Memory::new(), Options::default())?;
//! let mut sink = KafkaSink::builder("kafka-1:9093,kafka-2:9093")
//!     .topic_per_kind("audit")
//!     .partitions(6)
//!     .replication_factor(3)
//!     .encoding(Encoding::Json)
//!     .sasl_scram_sha512("walspool", "secret")
//!     .tls(true)
//!     .root_certificate("/etc/kafka/ca.pem")
//!     .build()?;
//! // Fail fast on a wrong address or credentials (a transient error: unreachable).
//! futures::executor::block_on(sink.check())?;
//! let metrics = sink.metrics();
//! let shipper = Shipper::<_, serde_json::Value>::builder(wal.consumer("kafka")?, sink).build()?;
//! let running = shipper.spawn_on_thread()?;
//! // ... append records; on the way out:
//! running.shutdown()?;
//! println!("{:?}", metrics.snapshot());
//! # Ok(())
//! # }
//! ```

use crate::broker_stats::{round_trip, BrokerCounters};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::channel::oneshot;
use rskafka::chrono::{TimeZone, Utc};
use rskafka::client::error::{Error as KError, ProtocolError};
use rskafka::client::partition::{
    Compression as KCompression, PartitionClient, UnknownTopicHandling,
};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use rskafka::record::Record;
use rskafka::BackoffConfig;
use serde::Serialize;
use walspool_wal::shipper::{Batch, Sink, SinkError, SinkMetricsSource};
use walspool_wal::{Error, SinkMetrics};

/// The default topic.
pub const DEFAULT_TOPIC: &str = "walspool";

/// Bytes a record adds to a produce request beyond its key, value and header bytes
/// (varints, attributes, deltas; generous).
const RECORD_OVERHEAD: usize = 64;

/// How records are encoded as message values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Encoding {
    /// `serde_json` (default).
    #[default]
    Json,
    /// `postcard`: compact, for consumers that share the record type.
    Postcard,
}

/// Compression of the record batches (the broker stores them as sent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// None (default).
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    fn client(self) -> KCompression {
        match self {
            Compression::None => KCompression::NoCompression,
            Compression::Gzip => KCompression::Gzip,
            Compression::Snappy => KCompression::Snappy,
            Compression::Lz4 => KCompression::Lz4,
            Compression::Zstd => KCompression::Zstd,
        }
    }
}

/// Which partition of its topic a record goes to; see the
/// [module documentation](self#partitions-and-order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Partitioning {
    /// Kafka's murmur2 hash of the WAL id: a WAL's records stay in order in one partition.
    #[default]
    WalId,
    /// Kafka's default partitioner: murmur2 of the message key.
    Key,
    /// This partition.
    Fixed(i32),
}

/// What a [`key_fn`](KafkaSinkBuilder::key_fn) sees of a record.
#[derive(Debug)]
pub struct KeyInput<'a> {
    /// The WAL's id.
    pub wal_id: &'a str,
    /// The record's sequence number.
    pub seq: u64,
    /// The record's kind.
    pub kind: &'a str,
    /// The record as JSON.
    pub record: &'a serde_json::Value,
}

type KeyFn = Arc<dyn Fn(&KeyInput<'_>) -> Vec<u8> + Send + Sync>;

#[derive(Clone)]
enum Sasl {
    None,
    Plain(String, String),
    ScramSha256(String, String),
    ScramSha512(String, String),
}

impl std::fmt::Debug for Sasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sasl::None => f.write_str("None"),
            Sasl::Plain(u, _) => write!(f, "Plain({u:?}, <redacted>)"),
            Sasl::ScramSha256(u, _) => write!(f, "ScramSha256({u:?}, <redacted>)"),
            Sasl::ScramSha512(u, _) => write!(f, "ScramSha512({u:?}, <redacted>)"),
        }
    }
}

#[derive(Debug, Clone)]
enum TopicChoice {
    Fixed(String),
    PerKind(String),
}

/// Builds a [`KafkaSink`]. Its `Debug` output never shows a password.
#[derive(Clone)]
pub struct KafkaSinkBuilder {
    brokers: Vec<String>,
    topic: TopicChoice,
    kind_field: String,
    default_kind: String,
    key_fn: Option<KeyFn>,
    partitioning: Partitioning,
    encoding: Encoding,
    compression: Compression,
    create_topics: bool,
    partitions: i32,
    replication_factor: i16,
    sasl: Sasl,
    tls: bool,
    root_certs: Vec<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
    connect_timeout: Duration,
    ack_timeout: Duration,
    max_request_bytes: usize,
    max_message_bytes: usize,
    client_id: String,
}

impl std::fmt::Debug for KafkaSinkBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSinkBuilder")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("kind_field", &self.kind_field)
            .field("default_kind", &self.default_kind)
            .field("key_fn", &self.key_fn.as_ref().map(|_| "<fn>"))
            .field("partitioning", &self.partitioning)
            .field("encoding", &self.encoding)
            .field("compression", &self.compression)
            .field("create_topics", &self.create_topics)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("sasl", &self.sasl)
            .field("tls", &self.tls)
            .field("root_certs", &self.root_certs)
            .field("client_cert", &self.client_cert)
            .field("connect_timeout", &self.connect_timeout)
            .field("ack_timeout", &self.ack_timeout)
            .field("max_request_bytes", &self.max_request_bytes)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("client_id", &self.client_id)
            .finish()
    }
}

impl KafkaSinkBuilder {
    /// Every record goes to this topic (the default, [`DEFAULT_TOPIC`]).
    pub fn topic(mut self, name: impl Into<String>) -> Self {
        self.topic = TopicChoice::Fixed(name.into());
        self
    }

    /// Records go to the topic `{prefix}.{kind}`.
    pub fn topic_per_kind(mut self, prefix: impl Into<String>) -> Self {
        self.topic = TopicChoice::PerKind(prefix.into());
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

    /// The message key of each record (default: the idempotency key `{wal_id}:{seq}`).
    /// Keep `wal_id` and `seq` recoverable (they are in the headers too) so consumers
    /// can still de-duplicate.
    pub fn key_fn(mut self, f: impl Fn(&KeyInput<'_>) -> Vec<u8> + Send + Sync + 'static) -> Self {
        self.key_fn = Some(Arc::new(f));
        self
    }

    /// How records are spread over a topic's partitions (default [`Partitioning::WalId`]).
    pub fn partitioning(mut self, p: Partitioning) -> Self {
        self.partitioning = p;
        self
    }

    /// The message value's encoding (default [`Encoding::Json`]).
    pub fn encoding(mut self, e: Encoding) -> Self {
        self.encoding = e;
        self
    }

    /// Compression of the record batches (default none).
    pub fn compression(mut self, c: Compression) -> Self {
        self.compression = c;
        self
    }

    /// Creates a missing topic (default on).
    pub fn create_topics(mut self, on: bool) -> Self {
        self.create_topics = on;
        self
    }

    /// Partitions of a topic the sink creates (default 1).
    pub fn partitions(mut self, n: i32) -> Self {
        self.partitions = n.max(1);
        self
    }

    /// Replication factor of a topic the sink creates (default 1; 3 on a cluster).
    pub fn replication_factor(mut self, n: i16) -> Self {
        self.replication_factor = n.max(1);
        self
    }

    /// SASL/PLAIN with this user and password (use it over TLS).
    pub fn sasl_plain(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.sasl = Sasl::Plain(user.into(), password.into());
        self
    }

    /// SASL/SCRAM-SHA-256 with this user and password.
    pub fn sasl_scram_sha256(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.sasl = Sasl::ScramSha256(user.into(), password.into());
        self
    }

    /// SASL/SCRAM-SHA-512 with this user and password.
    pub fn sasl_scram_sha512(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.sasl = Sasl::ScramSha512(user.into(), password.into());
        self
    }

    /// Connects with TLS (default off). The server's certificate is checked against
    /// Mozilla's roots, or the [`root_certificate`](Self::root_certificate)s when given.
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// Trusts the CA certificates of this PEM file instead of Mozilla's roots (implies
    /// [`tls`](Self::tls)).
    pub fn root_certificate(mut self, pem: impl Into<PathBuf>) -> Self {
        self.root_certs.push(pem.into());
        self.tls = true;
        self
    }

    /// Presents this client certificate and key (PEM) for mutual TLS (implies
    /// [`tls`](Self::tls)).
    pub fn client_certificate(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some((cert.into(), key.into()));
        self.tls = true;
        self
    }

    /// Timeout of connecting and reading the cluster's metadata (default 5 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// How long a produce request waits for the broker's acknowledgement, retries on a
    /// broken connection included (default 10 s); past it the batch fails transiently.
    /// Keep it below the shipper's send timeout (30 s).
    pub fn ack_timeout(mut self, d: Duration) -> Self {
        self.ack_timeout = d;
        self
    }

    /// The largest produce request (records of one partition) in bytes (default 1 MiB).
    pub fn max_request_bytes(mut self, n: usize) -> Self {
        self.max_request_bytes = n.max(1024);
        self
    }

    /// A record larger than this (key, value and headers) is refused before sending
    /// (default 1 MiB, Kafka's `message.max.bytes`).
    pub fn max_message_bytes(mut self, n: usize) -> Self {
        self.max_message_bytes = n;
        self
    }

    /// The client id the broker logs and applies quotas to (default `walspool`).
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }

    /// Checks the configuration, reads the TLS files and starts the sink's runtime
    /// thread. Does not connect: the first [`send`](Sink::send) or
    /// [`check`](KafkaSink::check) does.
    pub fn build(self) -> Result<KafkaSink, Error> {
        if self.brokers.is_empty() {
            return Err(Error::Config("Kafka sink: no broker address".into()));
        }
        match &self.topic {
            TopicChoice::Fixed(t) => {
                if !valid_topic(t) {
                    return Err(Error::Config(format!(
                        "Kafka topic {t:?}: want 1 to 249 characters of [a-zA-Z0-9._-]"
                    )));
                }
            }
            TopicChoice::PerKind(p) => {
                if !valid_topic(&format!("{p}.{}", self.default_kind)) {
                    return Err(Error::Config(format!(
                        "Kafka topic prefix {p:?} or default kind {:?}: want [a-zA-Z0-9._-]",
                        self.default_kind
                    )));
                }
            }
        }
        if let Partitioning::Fixed(p) = self.partitioning {
            if p < 0 {
                return Err(Error::Config(format!("Kafka partition {p} < 0")));
            }
        }
        let tls = if self.tls {
            Some(self.tls_config()?)
        } else {
            None
        };
        let metrics = Arc::new(KafkaMetrics::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let cfg = Arc::new(self);
        let mut worker = Worker {
            cfg: cfg.clone(),
            tls,
            metrics: metrics.clone(),
            client: None,
            topics: HashMap::new(),
            partitions: HashMap::new(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Io {
                op: "build the Kafka sink's tokio runtime",
                path: cfg.brokers.join(","),
                source: e,
            })?;
        std::thread::Builder::new()
            .name("walspool-kafka-sink".into())
            .spawn(move || {
                // Ends when the sink (the sender) is dropped; the runtime (and with it the
                // client's connections) goes with it.
                rt.block_on(async move {
                    while let Some(job) = rx.recv().await {
                        match job {
                            Job::Produce { msgs, reply } => {
                                let r = worker.produce(msgs).await;
                                let _ = reply.send(r);
                            }
                            Job::Check { reply } => {
                                let r = worker.check().await;
                                let _ = reply.send(r);
                            }
                        }
                    }
                });
            })
            .map_err(|e| Error::Io {
                op: "spawn Kafka sink thread",
                path: cfg.brokers.join(","),
                source: e,
            })?;
        Ok(KafkaSink { cfg, tx, metrics })
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let cfg = |m: String| Error::Config(format!("Kafka TLS: {m}"));
        let mut roots = rustls::RootCertStore::empty();
        if self.root_certs.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        for p in &self.root_certs {
            let mut n = 0;
            for c in CertificateDer::pem_file_iter(p)
                .map_err(|e| cfg(format!("CA file {}: {e}", p.display())))?
            {
                let c = c.map_err(|e| cfg(format!("CA file {}: {e}", p.display())))?;
                roots
                    .add(c)
                    .map_err(|e| cfg(format!("CA file {}: {e}", p.display())))?;
                n += 1;
            }
            if n == 0 {
                return Err(cfg(format!(
                    "CA file {}: no certificate in it",
                    p.display()
                )));
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| cfg(e.to_string()))?
        .with_root_certificates(roots);
        let config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some((c, k)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(c)
                    .map_err(|e| cfg(format!("client certificate {}: {e}", c.display())))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| cfg(format!("client certificate {}: {e}", c.display())))?;
                if chain.is_empty() {
                    return Err(cfg(format!(
                        "client certificate {}: no certificate in it",
                        c.display()
                    )));
                }
                // The error names the file, never the key material.
                let key = PrivateKeyDer::from_pem_file(k)
                    .map_err(|e| cfg(format!("client key {}: {e}", k.display())))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| cfg(format!("client certificate: {e}")))?
            }
        };
        Ok(Arc::new(config))
    }
}

/// A [`Sink`] that produces batches to Kafka; see the [module documentation](self).
#[derive(Debug)]
pub struct KafkaSink {
    cfg: Arc<KafkaSinkBuilder>,
    tx: tokio::sync::mpsc::UnboundedSender<Job>,
    metrics: Arc<KafkaMetrics>,
}

#[derive(Debug)]
enum Job {
    Produce {
        msgs: Vec<Msg>,
        reply: oneshot::Sender<Result<(), SinkError>>,
    },
    Check {
        reply: oneshot::Sender<Result<(), SinkError>>,
    },
}

/// One message to produce.
#[derive(Debug, Clone)]
struct Msg {
    seq: u64,
    topic: String,
    /// What the partition is chosen by (the WAL id or the key), or a fixed partition.
    route: Route,
    record: Record,
}

#[derive(Debug, Clone)]
enum Route {
    Hash(i32),
    Fixed(i32),
}

impl KafkaSink {
    /// Starts building a sink for the brokers at `brokers`: `host:port`, or a
    /// comma-separated list of them (the bootstrap servers).
    pub fn builder(brokers: impl AsRef<str>) -> KafkaSinkBuilder {
        KafkaSinkBuilder {
            brokers: brokers
                .as_ref()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            topic: TopicChoice::Fixed(DEFAULT_TOPIC.into()),
            kind_field: "kind".into(),
            default_kind: "record".into(),
            key_fn: None,
            partitioning: Partitioning::WalId,
            encoding: Encoding::Json,
            compression: Compression::None,
            create_topics: true,
            partitions: 1,
            replication_factor: 1,
            sasl: Sasl::None,
            tls: false,
            root_certs: Vec::new(),
            client_cert: None,
            connect_timeout: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(10),
            max_request_bytes: 1 << 20,
            max_message_bytes: 1 << 20,
            client_id: "walspool".into(),
        }
    }

    /// The topic of records of `kind`.
    pub fn topic(&self, kind: &str) -> String {
        match &self.cfg.topic {
            TopicChoice::Fixed(t) => t.clone(),
            TopicChoice::PerKind(p) => format!("{p}.{kind}"),
        }
    }

    /// Its counters (keep a clone before handing the sink to a shipper).
    pub fn metrics(&self) -> Arc<KafkaMetrics> {
        self.metrics.clone()
    }

    /// Connects (if not connected) and, for a fixed topic, looks it up (creating it if
    /// missing and allowed). `Ok` when the sink can produce; a transient error when no
    /// broker can be reached; [`SinkError::Batch`] when the topic is missing and may not
    /// be created, or cannot be created.
    pub async fn check(&mut self) -> Result<(), SinkError> {
        round_trip(&self.tx, |reply| Job::Check { reply }, "Kafka").await
    }

    fn encode<T: Serialize>(&self, batch: &Batch<T>) -> Result<Vec<Msg>, SinkError> {
        let cfg = &self.cfg;
        let wal_id = batch.wal_id();
        let wal_hash = murmur2(wal_id.as_bytes());
        let mut msgs = Vec::with_capacity(batch.len());
        for e in batch.entries() {
            let value = serde_json::to_value(&e.record)
                .map_err(|err| SinkError::record(e.seq, format!("record to JSON: {err}")))?;
            let kind = value
                .get(&cfg.kind_field)
                .and_then(|k| k.as_str())
                .unwrap_or(&cfg.default_kind);
            let topic = match &cfg.topic {
                TopicChoice::Fixed(t) => t.clone(),
                TopicChoice::PerKind(p) => {
                    let t = format!("{p}.{kind}");
                    if !valid_topic(&t) {
                        return Err(SinkError::record(
                            e.seq,
                            format!("kind {kind:?} makes no valid Kafka topic name ({t:?})"),
                        ));
                    }
                    t
                }
            };
            let key = match &cfg.key_fn {
                Some(f) => f(&KeyInput {
                    wal_id,
                    seq: e.seq,
                    kind,
                    record: &value,
                }),
                None => format!("{wal_id}:{}", e.seq).into_bytes(),
            };
            let payload = match cfg.encoding {
                Encoding::Json => serde_json::to_vec(&value)
                    .map_err(|err| SinkError::record(e.seq, format!("record to JSON: {err}")))?,
                Encoding::Postcard => postcard::to_allocvec(&e.record).map_err(|err| {
                    SinkError::record(e.seq, format!("record to postcard: {err}"))
                })?,
            };
            let headers = BTreeMap::from([
                ("wal_id".to_string(), wal_id.as_bytes().to_vec()),
                ("seq".to_string(), e.seq.to_string().into_bytes()),
                ("kind".to_string(), kind.as_bytes().to_vec()),
                ("ts".to_string(), e.ts_us.to_string().into_bytes()),
            ]);
            let route = match cfg.partitioning {
                Partitioning::WalId => Route::Hash(wal_hash),
                Partitioning::Key => Route::Hash(murmur2(&key)),
                Partitioning::Fixed(p) => Route::Fixed(p),
            };
            let ts_ms = i64::try_from(e.ts_us / 1000).unwrap_or(i64::MAX);
            let record = Record {
                key: Some(key),
                value: Some(payload),
                headers,
                timestamp: Utc.timestamp_millis_opt(ts_ms).single().unwrap_or_default(),
            };
            if record.approximate_size() > cfg.max_message_bytes {
                return Err(SinkError::record(
                    e.seq,
                    format!(
                        "message of {} bytes is larger than max_message_bytes ({})",
                        record.approximate_size(),
                        cfg.max_message_bytes
                    ),
                ));
            }
            msgs.push(Msg {
                seq: e.seq,
                topic,
                route,
                record,
            });
        }
        Ok(msgs)
    }
}

#[async_trait]
impl<T: Serialize + Send + Sync + 'static> Sink<T> for KafkaSink {
    async fn send(&mut self, batch: &Batch<T>) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let msgs = self.encode(batch)?;
        round_trip(&self.tx, |reply| Job::Produce { msgs, reply }, "Kafka").await
    }

    fn metrics_source(&self) -> Option<SinkMetricsSource> {
        let m = self.metrics.clone();
        Some(Arc::new(move || m.sink_metrics()))
    }
}

/// A Kafka topic name: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn valid_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Kafka's murmur2 (the Java client's `Utils.murmur2`), which its default partitioner
/// applies to the key: partition = `(murmur2(key) & 0x7fffffff) % partitions`.
fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() == 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// What went wrong with one produce request.
enum Failure {
    /// The broker refused a record of it (too large, invalid): find it.
    Record(String),
    /// Try again later; `reconnect` drops the client and its connections first.
    Transient { reason: String, reconnect: bool },
}

fn classify(e: &KError) -> Failure {
    match e {
        KError::ServerError {
            protocol_error,
            error_message,
            ..
        } => {
            let reason = match error_message {
                Some(m) => format!("Kafka: {protocol_error}: {m}"),
                None => format!("Kafka: {protocol_error}"),
            };
            match protocol_error {
                ProtocolError::MessageTooLarge
                | ProtocolError::RecordListTooLarge
                | ProtocolError::InvalidRecord
                | ProtocolError::InvalidTimestamp => Failure::Record(reason),
                ProtocolError::UnknownTopicOrPartition
                | ProtocolError::NotLeaderOrFollower
                | ProtocolError::LeaderNotAvailable
                | ProtocolError::BrokerNotAvailable
                | ProtocolError::NetworkException
                | ProtocolError::SaslAuthenticationFailed
                | ProtocolError::FencedLeaderEpoch
                | ProtocolError::UnknownLeaderEpoch
                | ProtocolError::KafkaStorageError => Failure::Transient {
                    reason,
                    reconnect: true,
                },
                _ => Failure::Transient {
                    reason,
                    reconnect: false,
                },
            }
        }
        other => Failure::Transient {
            reason: format!("Kafka: {other}"),
            reconnect: true,
        },
    }
}

/// The sink's connections, on its runtime thread.
struct Worker {
    cfg: Arc<KafkaSinkBuilder>,
    tls: Option<Arc<rustls::ClientConfig>>,
    metrics: Arc<KafkaMetrics>,
    client: Option<Arc<Client>>,
    /// Partition counts of the topics looked up.
    topics: HashMap<String, i32>,
    partitions: HashMap<(String, i32), Arc<PartitionClient>>,
}

/// The outcome of producing one partition's records.
struct PartOutcome {
    topic: String,
    stored: u64,
    bytes: u64,
    error: Option<(SinkError, bool)>,
}

impl Worker {
    fn forget(&mut self) {
        if self.client.take().is_some() {
            self.metrics
                .common
                .disconnects
                .fetch_add(1, Ordering::Relaxed);
        }
        self.topics.clear();
        self.partitions.clear();
    }

    async fn client(&mut self) -> Result<Arc<Client>, SinkError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let cfg = &self.cfg;
        let mut b = ClientBuilder::new(cfg.brokers.clone())
            .client_id(cfg.client_id.as_str())
            .backoff_config(BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(1),
                base: 2.0,
                deadline: Some(cfg.ack_timeout),
            });
        if let Some(tls) = &self.tls {
            b = b.tls_config(tls.clone());
        }
        match &cfg.sasl {
            Sasl::None => {}
            Sasl::Plain(u, p) => {
                b = b.sasl_config(SaslConfig::Plain(Credentials::new(u.clone(), p.clone())))
            }
            Sasl::ScramSha256(u, p) => {
                b = b.sasl_config(SaslConfig::ScramSha256(Credentials::new(
                    u.clone(),
                    p.clone(),
                )))
            }
            Sasl::ScramSha512(u, p) => {
                b = b.sasl_config(SaslConfig::ScramSha512(Credentials::new(
                    u.clone(),
                    p.clone(),
                )))
            }
        }
        let client = tokio::time::timeout(cfg.connect_timeout, b.build())
            .await
            .map_err(|_| {
                SinkError::transient(format!(
                    "Kafka: connecting to {} timed out",
                    cfg.brokers.join(",")
                ))
            })?
            .map_err(|e| {
                SinkError::transient(format!(
                    "Kafka: connecting to {}: {e}",
                    cfg.brokers.join(",")
                ))
            })?;
        self.metrics.common.connects.fetch_add(1, Ordering::Relaxed);
        let client = Arc::new(client);
        self.client = Some(client.clone());
        Ok(client)
    }

    /// The partition count of `topic`, creating the topic if missing and allowed. A
    /// missing topic that may not be created is [`SinkError::Batch`].
    async fn topic(&mut self, topic: &str) -> Result<i32, SinkError> {
        if let Some(n) = self.topics.get(topic) {
            return Ok(*n);
        }
        let client = self.client().await?;
        let timeout = self.cfg.connect_timeout + self.cfg.ack_timeout;
        let listed = tokio::time::timeout(timeout, client.list_topics())
            .await
            .map_err(|_| SinkError::transient("Kafka: listing topics timed out"))?;
        let listed = match listed {
            Ok(l) => l,
            Err(e) => {
                self.forget();
                return Err(SinkError::transient(format!("Kafka: list topics: {e}")));
            }
        };
        if let Some(t) = listed.iter().find(|t| t.name == topic) {
            if !t.partitions.is_empty() {
                let n = t.partitions.len() as i32;
                self.topics.insert(topic.to_string(), n);
                return Ok(n);
            }
        }
        if !self.cfg.create_topics {
            return Err(SinkError::batch(format!(
                "Kafka: topic {topic} does not exist (and create_topics is off)"
            )));
        }
        let controller = client
            .controller_client()
            .map_err(|e| SinkError::transient(format!("Kafka: controller: {e}")))?;
        let ms = i32::try_from(self.cfg.ack_timeout.as_millis()).unwrap_or(i32::MAX);
        let created = tokio::time::timeout(
            timeout,
            controller.create_topic(topic, self.cfg.partitions, self.cfg.replication_factor, ms),
        )
        .await
        .map_err(|_| SinkError::transient(format!("Kafka: creating topic {topic} timed out")))?;
        match created {
            Ok(()) => {}
            Err(KError::ServerError {
                protocol_error: ProtocolError::TopicAlreadyExists,
                ..
            }) => {
                // Created by someone else meanwhile: look it up again next time.
                return Err(SinkError::transient(format!(
                    "Kafka: topic {topic} was created concurrently"
                )));
            }
            Err(e @ KError::ServerError { .. }) => {
                return Err(SinkError::batch(format!(
                    "Kafka: create topic {topic}: {e}"
                )));
            }
            Err(e) => {
                self.forget();
                return Err(SinkError::transient(format!(
                    "Kafka: create topic {topic}: {e}"
                )));
            }
        }
        tracing::info!(
            topic,
            partitions = self.cfg.partitions,
            "Kafka sink created a topic"
        );
        self.topics.insert(topic.to_string(), self.cfg.partitions);
        Ok(self.cfg.partitions)
    }

    async fn check(&mut self) -> Result<(), SinkError> {
        self.client().await?;
        if let TopicChoice::Fixed(t) = &self.cfg.topic {
            let t = t.clone();
            self.topic(&t).await?;
        }
        Ok(())
    }

    async fn partition(&mut self, topic: &str, p: i32) -> Result<Arc<PartitionClient>, SinkError> {
        let k = (topic.to_string(), p);
        if let Some(pc) = self.partitions.get(&k) {
            return Ok(pc.clone());
        }
        let client = self.client().await?;
        let timeout = self.cfg.connect_timeout + self.cfg.ack_timeout;
        let r = tokio::time::timeout(
            timeout,
            client.partition_client(topic, p, UnknownTopicHandling::Error),
        )
        .await
        .map_err(|_| {
            SinkError::transient(format!(
                "Kafka: finding the leader of {topic}/{p} timed out"
            ))
        })?;
        match r {
            Ok(pc) => {
                let pc = Arc::new(pc);
                self.partitions.insert(k, pc.clone());
                Ok(pc)
            }
            Err(e) => {
                self.forget();
                Err(SinkError::transient(format!(
                    "Kafka: leader of {topic}/{p}: {e}"
                )))
            }
        }
    }

    async fn produce(&mut self, msgs: Vec<Msg>) -> Result<(), SinkError> {
        let started = Instant::now();
        let r = self.produce_all(msgs).await;
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

    async fn produce_all(&mut self, msgs: Vec<Msg>) -> Result<(), SinkError> {
        // Group by (topic, partition), keeping WAL order within each group.
        let mut groups: BTreeMap<(String, i32), Vec<Msg>> = BTreeMap::new();
        let mut counts: HashMap<String, i32> = HashMap::new();
        for m in msgs {
            let n = match counts.get(&m.topic) {
                Some(n) => *n,
                None => {
                    let n = match self.topic(&m.topic).await {
                        Ok(n) => n,
                        // A missing topic holds the records in the WAL until it exists.
                        Err(SinkError::Batch { reason }) => {
                            return Err(SinkError::transient(reason))
                        }
                        Err(e) => return Err(e),
                    };
                    counts.insert(m.topic.clone(), n);
                    n
                }
            };
            let p = match m.route {
                Route::Hash(h) => (h & 0x7fff_ffff) % n.max(1),
                Route::Fixed(p) if p < n => p,
                Route::Fixed(p) => {
                    return Err(SinkError::transient(format!(
                        "Kafka: topic {} has {n} partitions, no partition {p}",
                        m.topic
                    )))
                }
            };
            groups.entry((m.topic.clone(), p)).or_default().push(m);
        }
        let mut jobs = Vec::with_capacity(groups.len());
        for ((topic, p), msgs) in groups {
            let pc = self.partition(&topic, p).await?;
            jobs.push(produce_partition(
                pc,
                topic,
                msgs,
                self.cfg.clone(),
                self.metrics.clone(),
            ));
        }
        let outcomes = futures::future::join_all(jobs).await;
        let mut transient = None;
        let mut record = None;
        let mut reconnect = false;
        let mut stored: BTreeMap<String, u64> = BTreeMap::new();
        for o in outcomes {
            self.metrics
                .stored_bytes
                .fetch_add(o.bytes, Ordering::Relaxed);
            if o.stored > 0 {
                *stored.entry(o.topic).or_default() += o.stored;
            }
            match o.error {
                None => {}
                Some((e, rc)) => {
                    reconnect |= rc;
                    if e.is_transient() {
                        transient.get_or_insert(e);
                    } else {
                        record.get_or_insert(e);
                    }
                }
            }
        }
        // Records stored count even when the batch as a whole failed (they are in the
        // topic; their redelivery will store them again).
        self.metrics.common.stored.add(stored);
        if reconnect {
            self.forget();
        }
        // A transient failure first: the whole batch comes back anyway.
        match transient.or(record) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Produces one partition's records in requests of at most `max_request_bytes`, one
/// after the other, stopping at the first failure. A request refused for a record's
/// sake is split in halves until the record is found.
async fn produce_partition(
    pc: Arc<PartitionClient>,
    topic: String,
    msgs: Vec<Msg>,
    cfg: Arc<KafkaSinkBuilder>,
    metrics: Arc<KafkaMetrics>,
) -> PartOutcome {
    let mut queue: VecDeque<Vec<Msg>> = VecDeque::new();
    let mut cur = Vec::new();
    let mut bytes = 0;
    for m in msgs {
        let size = m.record.approximate_size() + RECORD_OVERHEAD;
        if !cur.is_empty() && bytes + size > cfg.max_request_bytes {
            queue.push_back(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += size;
        cur.push(m);
    }
    if !cur.is_empty() {
        queue.push_back(cur);
    }
    let mut out = PartOutcome {
        topic,
        stored: 0,
        bytes: 0,
        error: None,
    };
    while let Some(chunk) = queue.pop_front() {
        let n = chunk.len() as u64;
        let records: Vec<Record> = chunk.iter().map(|m| m.record.clone()).collect();
        metrics.common.in_flight.fetch_add(n, Ordering::Relaxed);
        metrics.requests.fetch_add(1, Ordering::Relaxed);
        let r = tokio::time::timeout(
            cfg.ack_timeout + Duration::from_secs(1),
            pc.produce(records, cfg.compression.client()),
        )
        .await;
        metrics.common.in_flight.fetch_sub(n, Ordering::Relaxed);
        let failure = match r {
            Ok(Ok(_offsets)) => {
                out.stored += n;
                out.bytes += chunk
                    .iter()
                    .map(|m| m.record.approximate_size() as u64)
                    .sum::<u64>();
                continue;
            }
            Ok(Err(e)) => classify(&e),
            Err(_) => Failure::Transient {
                reason: format!(
                    "Kafka: no acknowledgement from {}/{} within {:?}",
                    pc.topic(),
                    pc.partition(),
                    cfg.ack_timeout
                ),
                reconnect: true,
            },
        };
        match failure {
            Failure::Record(reason) if chunk.len() > 1 => {
                tracing::debug!(
                    records = chunk.len(),
                    %reason,
                    "Kafka refused a record of a request: splitting it"
                );
                metrics.splits.fetch_add(1, Ordering::Relaxed);
                let mut first = chunk;
                let second = first.split_off(first.len() / 2);
                queue.push_front(second);
                queue.push_front(first);
            }
            Failure::Record(reason) => {
                metrics.common.failed.fetch_add(n, Ordering::Relaxed);
                out.error = Some((SinkError::record(chunk[0].seq, reason), false));
                break;
            }
            Failure::Transient { reason, reconnect } => {
                metrics.common.failed.fetch_add(n, Ordering::Relaxed);
                out.error = Some((SinkError::transient(reason), reconnect));
                break;
            }
        }
    }
    out
}

/// The Kafka sink's counters; see [`KafkaMetrics::snapshot`].
#[derive(Debug, Default)]
pub struct KafkaMetrics {
    common: BrokerCounters,
    stored_bytes: AtomicU64,
    requests: AtomicU64,
    splits: AtomicU64,
}

/// A copy of a [`KafkaMetrics`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaStats {
    /// Records the broker acknowledged (`acks=all`), redeliveries included.
    pub stored: u64,
    /// Key, value and header bytes of the records acknowledged (before compression).
    pub stored_bytes: u64,
    /// Records of produce requests that failed.
    pub failed: u64,
    /// Batches acknowledged in full.
    pub batches: u64,
    /// Batch attempts that failed.
    pub batches_failed: u64,
    /// Produce requests sent.
    pub requests: u64,
    /// Requests split in halves to find a record the broker refused.
    pub splits: u64,
    /// Records in produce requests awaiting their acknowledgement now.
    pub in_flight: u64,
    /// Client connections made (the first, and each after a failure).
    pub connects: u64,
    /// Clients dropped after a connection failure (each reconnects on the next attempt).
    pub disconnects: u64,
    /// Time from a batch's first produce request to its last acknowledgement, over the
    /// last 1024 batches: median, 99th percentile and maximum, in microseconds.
    pub batch_ack_p50_us: u64,
    /// See `batch_ack_p50_us`.
    pub batch_ack_p99_us: u64,
    /// See `batch_ack_p50_us`.
    pub batch_ack_max_us: u64,
    /// Records acknowledged per topic.
    pub per_topic: BTreeMap<String, u64>,
}

impl KafkaMetrics {
    /// The counters now.
    pub fn snapshot(&self) -> KafkaStats {
        let (p50, p99, max) = self.common.latency_us.p50_p99_max();
        KafkaStats {
            stored: self.common.stored.total(),
            stored_bytes: self.stored_bytes.load(Ordering::Relaxed),
            failed: self.common.failed.load(Ordering::Relaxed),
            batches: self.common.batches.load(Ordering::Relaxed),
            batches_failed: self.common.batches_failed.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            splits: self.splits.load(Ordering::Relaxed),
            in_flight: self.common.in_flight.load(Ordering::Relaxed),
            connects: self.common.connects.load(Ordering::Relaxed),
            disconnects: self.common.disconnects.load(Ordering::Relaxed),
            batch_ack_p50_us: p50,
            batch_ack_p99_us: p99,
            batch_ack_max_us: max,
            per_topic: self.common.stored.per_destination(),
        }
    }

    /// The figures the WAL's metrics carry for the consumer this sink ships
    /// ([`ConsumerMetrics::sink`](walspool_wal::ConsumerMetrics::sink)): kind `kafka`,
    /// records in flight, acknowledged and failed, batch acknowledgement latency and
    /// records acknowledged per topic.
    pub fn sink_metrics(&self) -> SinkMetrics {
        self.common.sink_metrics("kafka")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Kafka's UtilsTest.testMurmur2.
        let cases: [(&str, i32); 6] = [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            ("abc", 479470107),
        ];
        for (s, want) in cases {
            assert_eq!(murmur2(s.as_bytes()), want, "{s}");
        }
    }

    #[test]
    fn topics_and_redaction() {
        assert!(valid_topic("walspool.audit") && valid_topic("a-b_c.9"));
        assert!(!valid_topic("a b") && !valid_topic("") && !valid_topic("a/b"));
        assert!(!valid_topic(".") && !valid_topic(&"x".repeat(250)));
        let b = KafkaSink::builder("127.0.0.1:9092").sasl_scram_sha512("u", "hunter2");
        let dbg = format!("{b:?}");
        assert!(!dbg.contains("hunter2") && dbg.contains("\"u\""), "{dbg}");
        assert!(KafkaSink::builder(" , ").build().is_err());
        assert!(KafkaSink::builder("127.0.0.1:1")
            .topic("a b")
            .build()
            .is_err());
        assert!(KafkaSink::builder("127.0.0.1:1")
            .topic_per_kind("a*")
            .build()
            .is_err());
    }
}
