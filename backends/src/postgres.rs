//! PostgreSQL sink (feature `postgres`): inserts each batch into a table keyed by
//! `(wal_id, seq)`, exactly once.
//!
//! # The table
//!
//! ```sql
//! CREATE TABLE walspool_records (
//!     wal_id      text        NOT NULL,  -- the WAL's stable id
//!     seq         bigint      NOT NULL,  -- the record's sequence number
//!     appended_at timestamptz NOT NULL,  -- when it was appended to the WAL
//!     record      jsonb       NOT NULL,  -- the record, through serde_json
//!     ts          timestamptz,           -- typed columns of an audit record
//!     service     text,
//!     actor       text,
//!     action      text,
//!     resource    text,
//!     outcome     text,
//!     PRIMARY KEY (wal_id, seq)
//! );
//! ```
//!
//! Any `T: Serialize` goes into `record` as `jsonb`. When the record serializes to a
//! JSON object, its fields `ts` (a number of milliseconds since the Unix epoch, as in
//! the seeds' `AuditRecord`), `service`, `actor`, `action`, `resource` and `outcome`
//! (strings) also fill the typed columns, which are `NULL` otherwise.
//!
//! With [`create_table(true)`](PgSinkBuilder::create_table) the sink creates the table
//! (`CREATE TABLE IF NOT EXISTS`); in every case it then checks the table's schema on
//! each (re)connection: the columns above with these types, and a unique index on
//! exactly `(wal_id, seq)`. Extra columns are allowed (they need a default or must be
//! nullable).
//!
//! # Delivery
//!
//! One statement per batch: `INSERT ... SELECT ... FROM unnest($2::int8[], ...) ON
//! CONFLICT (wal_id, seq) DO NOTHING`, prepared once per connection and atomic (the
//! whole batch or nothing). The shipper delivers at least once; the primary key makes
//! a record sent again (after a timeout, a lost answer or a restart) a no-op, so the
//! table holds every record **exactly once**.
//!
//! # Errors
//!
//! * Transient (retried with backoff): no connection, a dropped connection, a timeout,
//!   and the SQLSTATE classes a retry can cure — `08` connection exception, `53`
//!   insufficient resources, `57P` operator intervention (server shutting down or
//!   starting), `58` system error, `40001`/`40P01` serialization failure and deadlock,
//!   `55P03` lock not available, `57014` query canceled. The connection is dropped and
//!   opened again on the next attempt.
//! * Permanent ([`SinkError::Batch`]): a table that does not match the schema (the
//!   message names each mismatched column), a missing table without `create_table`,
//!   and every other SQLSTATE (a record PostgreSQL refuses, e.g. a `\u0000` in a
//!   string, which `jsonb` cannot hold: the shipper splits the batch down to that record
//!   and sends it to the dead letter). A schema mismatch found while shipping dead-letters
//!   records too (they stay in the WAL's dead letter for a re-drive once the table is
//!   fixed), so check the schema at startup with [`PgSink::check`].
//!
//! # Runtimes
//!
//! `tokio-postgres` needs a tokio runtime; the sink owns one (current-thread, on a
//! thread of its own, like the archive's) and `send` awaits its answer through a
//! `futures` oneshot channel, so the sink works under tokio, smol or a plain
//! `futures` executor.
//!
//! # TLS
//!
//! Off by default: connections are plain TCP or Unix sockets, as the URL says. With
//! [`tls(TlsConfig)`](PgSinkBuilder::tls) every connection is TLS (rustls with the
//! *ring* provider, TLS 1.2 and 1.3): the server's certificate is verified against the
//! [`Roots`] chosen (Mozilla's webpki roots by default, or the system's store) plus any
//! CA certificate given as a PEM file or text, and it must name the host of the URL
//! (`localhost`, `db.example`, or an IP address such as `127.0.0.1` in its SANs).
//! A client certificate and key (PEM) can be presented for mTLS; the key never appears
//! in `Debug` output. There is no way to skip the verification.
//!
//! * With TLS configured the connection never falls back to plain text: the URL's
//!   `sslmode` may be absent, `prefer`, `require`, `verify-ca` or `verify-full` (all of
//!   them mean "TLS, verified, host name included"); `sslmode=disable` is a
//!   configuration error at [`build`](PgSinkBuilder::build), and so is a Unix-socket
//!   host (PostgreSQL does not speak TLS there).
//! * Without it, a URL with `sslmode=require`, `verify-ca` or `verify-full` is a
//!   configuration error at `build` that says how to enable TLS.
//! * A CA file that cannot be read, or PEM without a certificate in it, fails `build`.
//! * A server certificate that does not verify (unknown issuer, wrong host name,
//!   expired) is a **permanent** error ([`SinkError::Batch`], reason naming the
//!   certificate verification): retrying cannot fix a configuration mistake, so the
//!   shipper sets the records aside in the dead letter after `poison_attempts`, as for
//!   a schema mismatch. [`PgSink::check`] at startup reports it before anything ships.
//!
//! ```no_run
//! use walspool_backends::postgres::{PgSink, Roots, TlsConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sink = PgSink::builder("postgres://walspool@db.internal:5432/audit?sslmode=verify-full")
//!     .tls(TlsConfig::new().roots(Roots::None).ca_file("/etc/walspool/pg-ca.crt"))
//!     .build()?;
//! # let _ = sink;
//! # Ok(())
//! # }
//! ```
//!
//! The sink sets `application_name=walspool` unless the URL sets one, so its sessions
//! are easy to find in `pg_stat_activity` (and `pg_stat_ssl`).
//!
//! # Example
//!
//! ```no_run
//! use walspool_backends::postgres::PgSink;
//! use walspool_wal::shipper::Shipper;
//! use walspool_wal::{Memory, Options, Wal};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let wal = Wal::open(Memory::new(), Options::default())?;
//! let mut sink = PgSink::builder("postgres://walspool@127.0.0.1:5432/audit")
//!     .table("audit_records")
//!     .create_table(true)
//!     .build()?;
//! // Fail fast on a table of the wrong shape (a transient error means "unreachable").
//! futures::executor::block_on(sink.check())?;
//! let shipper = Shipper::<_, serde_json::Value>::builder(wal.consumer("pg")?, sink).build()?;
//! let running = shipper.spawn_on_thread()?;
//! // ... append records; on the way out:
//! running.shutdown()?;
//! # Ok(())
//! # }
//! ```

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::channel::oneshot;
use serde::Serialize;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::Json;
use tokio_postgres::{Client, NoTls, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;
use walspool_wal::shipper::{Batch, Sink, SinkError};
use walspool_wal::Error;

pub use crate::tls::{Roots, TlsConfig};

/// The default table name.
pub const DEFAULT_TABLE: &str = "walspool_records";

/// The columns the sink writes, with the type `format_type` reports for each.
const COLUMNS: [(&str, &str); 10] = [
    ("wal_id", "text"),
    ("seq", "bigint"),
    ("appended_at", "timestamp with time zone"),
    ("record", "jsonb"),
    ("ts", "timestamp with time zone"),
    ("service", "text"),
    ("actor", "text"),
    ("action", "text"),
    ("resource", "text"),
    ("outcome", "text"),
];

/// The typed text columns filled from a record's fields of the same name.
const TEXT_FIELDS: [&str; 5] = ["service", "actor", "action", "resource", "outcome"];

/// Builds a [`PgSink`].
#[derive(Debug, Clone)]
pub struct PgSinkBuilder {
    config: Result<tokio_postgres::Config, String>,
    table: String,
    create_table: bool,
    connect_timeout: Duration,
    query_timeout: Duration,
    tls: Option<TlsConfig>,
}

impl PgSinkBuilder {
    /// Connects over TLS, verifying the server's certificate (host name included) with
    /// these roots / CA certificates, and presenting its client certificate if it has
    /// one (default: no TLS). See [TLS](self#tls) in the module documentation.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The table, `name` or `schema.name` (lower-case letters, digits and `_`; default
    /// [`DEFAULT_TABLE`]).
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = name.into();
        self
    }

    /// Creates the table when it does not exist (default off: a missing table is a
    /// permanent error).
    pub fn create_table(mut self, on: bool) -> Self {
        self.create_table = on;
        self
    }

    /// Timeout of opening a connection (default 5 s, unless the URL sets
    /// `connect_timeout`).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Timeout of one batch's insert (default 10 s); past it the attempt is transient and
    /// the connection is dropped. Keep it below the shipper's send timeout (default 30 s).
    pub fn query_timeout(mut self, d: Duration) -> Self {
        self.query_timeout = d;
        self
    }

    /// Checks the configuration and starts the sink's runtime thread. Does not connect:
    /// the first [`send`](Sink::send) or [`check`](PgSink::check) does.
    pub fn build(self) -> Result<PgSink, Error> {
        let mut config = self.config.clone().map_err(Error::Config)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(self.connect_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("walspool");
        }
        let tls = connector(self.tls.as_ref(), &mut config)?;
        let table = quote_table(&self.table)?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let mut worker = Worker {
            config,
            table: table.clone(),
            create_table: self.create_table,
            query_timeout: self.query_timeout,
            tls,
            conn: None,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Io {
                op: "build the PostgreSQL sink's tokio runtime",
                path: self.table.clone(),
                source: e,
            })?;
        std::thread::Builder::new()
            .name("walspool-pg-sink".into())
            .spawn(move || {
                // Ends when the sink (the sender) is dropped; the runtime (and with it the
                // connection task) goes with it.
                rt.block_on(async move {
                    while let Some(job) = rx.recv().await {
                        match job {
                            Job::Insert { rows, reply } => {
                                let r = worker.insert(&rows).await;
                                let _ = reply.send(r);
                            }
                            Job::Check { reply } => {
                                let r = worker.connection().await.map(|_| ());
                                let _ = reply.send(r);
                            }
                        }
                    }
                });
            })
            .map_err(|e| Error::Io {
                op: "spawn PostgreSQL sink thread",
                path: self.table.clone(),
                source: e,
            })?;
        Ok(PgSink { table, tx })
    }
}

/// A [`Sink`] that inserts batches into a PostgreSQL table; see the
/// [module documentation](self).
#[derive(Debug)]
pub struct PgSink {
    table: String,
    tx: tokio::sync::mpsc::UnboundedSender<Job>,
}

#[derive(Debug)]
enum Job {
    Insert {
        rows: Box<Rows>,
        reply: oneshot::Sender<Result<(), SinkError>>,
    },
    Check {
        reply: oneshot::Sender<Result<(), SinkError>>,
    },
}

/// One batch as column arrays (the parameters of the insert).
#[derive(Debug, Default)]
struct Rows {
    wal_id: String,
    seq: Vec<i64>,
    appended_at: Vec<SystemTime>,
    record: Vec<Json<serde_json::Value>>,
    ts: Vec<Option<SystemTime>>,
    text: [Vec<Option<String>>; 5],
}

impl PgSink {
    /// Starts building a sink for the server at `url`: a `postgres://user:pass@host:port/db`
    /// URL or a `host=... user=...` string (libpq syntax, as `tokio_postgres::Config`
    /// parses it). The password is never printed (`Debug` redacts it). `sslmode` may be
    /// `disable`, `prefer`, `require`, `verify-ca` or `verify-full`; TLS itself is
    /// configured with [`PgSinkBuilder::tls`] (see [TLS](self#tls)).
    pub fn builder(url: &str) -> PgSinkBuilder {
        PgSinkBuilder {
            config: tokio_postgres::Config::from_str(&verify_as_require(url))
                .map_err(|e| format!("PostgreSQL connection string: {e}")),
            table: DEFAULT_TABLE.into(),
            create_table: false,
            connect_timeout: Duration::from_secs(5),
            query_timeout: Duration::from_secs(10),
            tls: None,
        }
    }

    /// The table it writes, quoted (`"public"."walspool_records"`).
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Connects (if not connected), creates the table if asked, and checks its schema.
    /// `Ok` when the sink can insert; a transient error when the server cannot be
    /// reached; [`SinkError::Batch`] with the mismatches when the table is wrong.
    pub async fn check(&mut self) -> Result<(), SinkError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Check { reply })
            .map_err(|_| SinkError::transient("the PostgreSQL sink's thread is gone"))?;
        rx.await.unwrap_or_else(|_| {
            Err(SinkError::transient(
                "the PostgreSQL sink's thread dropped the request",
            ))
        })
    }
}

/// `ts` in milliseconds since the Unix epoch, as a timestamp.
fn millis(v: &serde_json::Value) -> Option<SystemTime> {
    let ms = v.as_u64()?;
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

fn encode<T: Serialize>(batch: &Batch<T>) -> Result<Rows, SinkError> {
    let mut rows = Rows {
        wal_id: batch.wal_id().to_string(),
        ..Rows::default()
    };
    for e in batch.entries() {
        let seq = i64::try_from(e.seq)
            .map_err(|_| SinkError::record(e.seq, "sequence number beyond bigint"))?;
        let value = serde_json::to_value(&e.record)
            .map_err(|err| SinkError::record(e.seq, format!("record to JSON: {err}")))?;
        let obj = value.as_object();
        rows.seq.push(seq);
        rows.appended_at
            .push(UNIX_EPOCH + Duration::from_micros(e.ts_us));
        rows.ts.push(obj.and_then(|o| o.get("ts")).and_then(millis));
        for (col, name) in rows.text.iter_mut().zip(TEXT_FIELDS) {
            col.push(
                obj.and_then(|o| o.get(name))
                    .and_then(|v| v.as_str())
                    .map(str::to_string),
            );
        }
        rows.record.push(Json(value));
    }
    Ok(rows)
}

#[async_trait]
impl<T: Serialize + Send + Sync + 'static> Sink<T> for PgSink {
    async fn send(&mut self, batch: &Batch<T>) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let rows = encode(batch)?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Insert {
                rows: Box::new(rows),
                reply,
            })
            .map_err(|_| SinkError::transient("the PostgreSQL sink's thread is gone"))?;
        rx.await.unwrap_or_else(|_| {
            Err(SinkError::transient(
                "the PostgreSQL sink's thread dropped the request",
            ))
        })
    }
}

/// The TLS connector for `tls`, checked against the URL's `sslmode` and hosts; sets
/// `sslmode=require` when TLS is configured (never given up for plain text, as `prefer`
/// would).
fn connector(
    tls: Option<&TlsConfig>,
    config: &mut tokio_postgres::Config,
) -> Result<Option<MakeRustlsConnect>, Error> {
    const ENABLE: &str = "add .tls(TlsConfig::new()) (webpki roots) or \
        .tls(TlsConfig::new().roots(Roots::None).ca_file(\"ca.crt\")) (a private CA) \
        to the PgSinkBuilder";
    let Some(tls) = tls else {
        if config.get_ssl_mode() == SslMode::Require {
            return Err(Error::Config(format!(
                "PostgreSQL: the URL asks for TLS (sslmode=require, verify-ca or \
                 verify-full) but the sink has no TLS configured: {ENABLE}"
            )));
        }
        return Ok(None);
    };
    if config.get_ssl_mode() == SslMode::Disable {
        return Err(Error::Config(
            "PostgreSQL: the URL says sslmode=disable but the sink is configured with \
             .tls(...): drop one of them"
                .into(),
        ));
    }
    if config.get_hosts().iter().any(is_unix_socket) {
        return Err(Error::Config(
            "PostgreSQL: TLS does not apply to Unix sockets (the server refuses it there): \
             give a TCP host, or drop .tls(...)"
                .into(),
        ));
    }
    config.ssl_mode(SslMode::Require);
    let rustls = tls.build().map_err(|e| match e {
        Error::Config(m) => Error::Config(format!("PostgreSQL sink: {m}")),
        e => e,
    })?;
    Ok(Some(MakeRustlsConnect::new(Arc::unwrap_or_clone(rustls))))
}

/// True for a Unix-socket host (a `host` that is a directory path).
fn is_unix_socket(host: &tokio_postgres::config::Host) -> bool {
    #[cfg(unix)]
    {
        matches!(host, tokio_postgres::config::Host::Unix(_))
    }
    #[cfg(not(unix))]
    {
        let _ = host;
        false
    }
}

/// `url` with `sslmode=verify-ca` / `sslmode=verify-full` (libpq's names, which
/// `tokio_postgres::Config` does not parse) written as `sslmode=require`: the sink's TLS
/// always verifies the certificate and the host name, so all three mean the same here.
fn verify_as_require(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(i) = rest.find("sslmode=verify-") {
        let starts = i == 0 || matches!(rest.as_bytes()[i - 1], b'?' | b'&' | b' ' | b'\t');
        let after = &rest[i + "sslmode=verify-".len()..];
        let mode = ["full", "ca"].into_iter().find(|m| {
            after.starts_with(m)
                && matches!(
                    after.as_bytes().get(m.len()),
                    None | Some(b'&' | b' ' | b'\t')
                )
        });
        out.push_str(&rest[..i]);
        match mode {
            Some(m) if starts => {
                out.push_str("sslmode=require");
                rest = &after[m.len()..];
            }
            _ => {
                out.push_str("sslmode=verify-");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Validates `name` or `schema.name` and returns it quoted.
fn quote_table(name: &str) -> Result<String, Error> {
    let ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 63
            && p.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
            && !p.as_bytes()[0].is_ascii_digit()
    };
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 2 || !parts.iter().all(|p| ok(p)) {
        return Err(Error::Config(format!(
            "PostgreSQL sink table {name:?}: want `name` or `schema.name` of lower-case letters, digits and _"
        )));
    }
    Ok(parts
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join("."))
}

/// The sink's connection, on its runtime thread.
struct Worker {
    config: tokio_postgres::Config,
    table: String,
    create_table: bool,
    query_timeout: Duration,
    tls: Option<MakeRustlsConnect>,
    conn: Option<(Client, Statement)>,
}

/// Runs a connection's I/O until it ends.
fn spawn_connection<F>(connection: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL sink connection ended");
        }
    });
}

impl Worker {
    /// The open connection with its prepared insert, opening and checking one if needed.
    async fn connection(&mut self) -> Result<&(Client, Statement), SinkError> {
        if self.conn.as_ref().is_some_and(|(c, _)| c.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let client = match &self.tls {
                None => {
                    let (client, connection) = self
                        .config
                        .connect(NoTls)
                        .await
                        .map_err(|e| classify(&e, "connect"))?;
                    spawn_connection(connection);
                    client
                }
                Some(tls) => {
                    let (client, connection) = self
                        .config
                        .connect(tls.clone())
                        .await
                        .map_err(|e| classify(&e, "connect"))?;
                    spawn_connection(connection);
                    client
                }
            };
            let stmt = tokio::time::timeout(self.query_timeout, self.prepare(&client))
                .await
                .unwrap_or_else(|_| {
                    Err(SinkError::transient(format!(
                        "PostgreSQL: checking table {} took over {:?}",
                        self.table, self.query_timeout
                    )))
                })?;
            self.conn = Some((client, stmt));
        }
        self.conn
            .as_ref()
            .ok_or_else(|| SinkError::transient("PostgreSQL: no connection"))
    }

    /// Creates the table if asked, checks its schema, prepares the insert.
    async fn prepare(&self, client: &Client) -> Result<Statement, SinkError> {
        let t = &self.table;
        if self.create_table {
            let cols: Vec<String> = COLUMNS
                .iter()
                .map(|(n, ty)| {
                    let null = if matches!(*n, "wal_id" | "seq" | "appended_at" | "record") {
                        " NOT NULL"
                    } else {
                        ""
                    };
                    format!("{n} {ty}{null}")
                })
                .collect();
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {t} ({}, PRIMARY KEY (wal_id, seq))",
                cols.join(", ")
            );
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| classify(&e, "create table"))?;
        }
        let found = client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) \
                 FROM pg_attribute a \
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
                &[&t],
            )
            .await
            .map_err(|e| classify(&e, "read the table's columns"))?;
        if found.is_empty() {
            return Err(SinkError::batch(format!(
                "PostgreSQL table {t} does not exist (create it, or build the sink with create_table(true))"
            )));
        }
        let found: Vec<(String, String)> = found.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut problems = Vec::new();
        for (name, ty) in COLUMNS {
            match found.iter().find(|(n, _)| n == name) {
                None => problems.push(format!("column {name} is missing (want {ty})")),
                Some((_, have)) if have != ty => {
                    problems.push(format!("column {name} is {have}, want {ty}"))
                }
                Some(_) => {}
            }
        }
        let unique: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_index i \
                 WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indpred IS NULL \
                 AND i.indnkeyatts = 2 \
                 AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text) FROM pg_attribute a \
                      WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey::int2[])) \
                     = ARRAY['seq', 'wal_id']",
                &[&t],
            )
            .await
            .map_err(|e| classify(&e, "read the table's indexes"))?
            .get(0);
        if unique == 0 {
            problems.push("no primary key or unique index on exactly (wal_id, seq)".into());
        }
        if !problems.is_empty() {
            return Err(SinkError::batch(format!(
                "PostgreSQL table {t} does not match the walspool sink's schema: {}",
                problems.join("; ")
            )));
        }
        let names: Vec<&str> = COLUMNS.iter().map(|(n, _)| *n).collect();
        let sql = format!(
            "INSERT INTO {t} ({}) \
             SELECT $1::text, u.* FROM unnest($2::int8[], $3::timestamptz[], $4::jsonb[], \
             $5::timestamptz[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[]) AS u \
             ON CONFLICT (wal_id, seq) DO NOTHING",
            names.join(", ")
        );
        client
            .prepare(&sql)
            .await
            .map_err(|e| classify(&e, "prepare the insert"))
    }

    async fn insert(&mut self, rows: &Rows) -> Result<(), SinkError> {
        let timeout = self.query_timeout;
        let table = self.table.clone();
        let r = async {
            let (client, stmt) = self.connection().await?;
            let [service, actor, action, resource, outcome] = &rows.text;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 10] = [
                &rows.wal_id,
                &rows.seq,
                &rows.appended_at,
                &rows.record,
                &rows.ts,
                service,
                actor,
                action,
                resource,
                outcome,
            ];
            let fut = client.execute(stmt, &params);
            match tokio::time::timeout(timeout, fut).await {
                Ok(Ok(_inserted)) => Ok(()),
                Ok(Err(e)) => Err(classify(&e, "insert")),
                Err(_) => Err(SinkError::transient(format!(
                    "PostgreSQL: insert into {table} took over {timeout:?}"
                ))),
            }
        }
        .await;
        if r.is_err() {
            // Open (and check) a fresh connection on the next attempt: the server may have
            // restarted, or the table may have been altered.
            self.conn = None;
        }
        r
    }
}

/// True for the SQLSTATEs a retry can cure.
fn retryable_sqlstate(code: &str) -> bool {
    ["08", "53", "57P", "58"]
        .iter()
        .any(|p| code.starts_with(p))
        || matches!(code, "40001" | "40P01" | "55P03" | "57014")
}

/// Maps a client error to a [`SinkError`].
fn classify(e: &tokio_postgres::Error, op: &str) -> SinkError {
    use std::error::Error as _;
    let mut reason = format!("PostgreSQL {op}: {e}");
    if let Some(db) = e.as_db_error() {
        reason = format!(
            "PostgreSQL {op}: {} {} ({})",
            db.severity(),
            db.message(),
            db.code().code()
        );
    } else if let Some(src) = e.source() {
        reason = format!("{reason}: {src}");
    }
    if let Some(tls) = crate::tls::find_tls_error(e) {
        if crate::tls::permanent_tls_failure(tls).is_some() {
            return SinkError::batch(format!(
                "PostgreSQL {op}: TLS: certificate verification or handshake refused: {tls} \
                 (check the sink's CA / roots / client certificate, and that the server's \
                 certificate names the URL's host)"
            ));
        }
        return SinkError::transient(format!("PostgreSQL {op}: TLS: {tls}"));
    }
    match e.code() {
        Some(code) if !retryable_sqlstate(code.code()) => SinkError::batch(reason),
        _ => SinkError::transient(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_validated_and_quoted() {
        assert_eq!(quote_table("audit").unwrap(), "\"audit\"");
        assert_eq!(quote_table("ops.audit_2").unwrap(), "\"ops\".\"audit_2\"");
        for bad in ["", "Audit", "a.b.c", "x;drop", "1abc", "a."] {
            assert!(quote_table(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sqlstates_split_into_retryable_and_permanent() {
        for c in [
            "08006", "57P01", "57P03", "53300", "40001", "40P01", "57014", "58030",
        ] {
            assert!(retryable_sqlstate(c), "{c}");
        }
        for c in ["42P01", "42703", "22P05", "23502", "42501"] {
            assert!(!retryable_sqlstate(c), "{c}");
        }
    }

    #[test]
    fn audit_fields_fill_the_typed_columns() {
        let rec = serde_json::json!({"ts": 1_700_000_000_123u64, "service": "s", "actor": "a",
            "action": "x", "resource": "r", "outcome": "ok", "extra": 1});
        let batch = Batch::new(
            "w",
            "c",
            vec![
                walspool_wal::Entry {
                    seq: 3,
                    ts_us: 5,
                    record: rec,
                },
                walspool_wal::Entry {
                    seq: 4,
                    ts_us: 6,
                    record: serde_json::json!("plain"),
                },
            ],
        );
        let rows = encode(&batch).unwrap();
        assert_eq!(rows.seq, vec![3, 4]);
        assert_eq!(
            rows.ts[0],
            Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
        );
        assert_eq!(rows.ts[1], None);
        assert_eq!(rows.text[0], vec![Some("s".to_string()), None]);
        assert_eq!(rows.text[4], vec![Some("ok".to_string()), None]);
        assert_eq!(rows.appended_at[1], UNIX_EPOCH + Duration::from_micros(6));
    }

    #[test]
    fn libpq_verify_modes_read_as_require() {
        assert_eq!(
            verify_as_require("postgres://u@h/db?sslmode=verify-full"),
            "postgres://u@h/db?sslmode=require"
        );
        assert_eq!(
            verify_as_require("host=h sslmode=verify-ca user=u"),
            "host=h sslmode=require user=u"
        );
        assert_eq!(
            verify_as_require("postgres://u@h/db?a=1&sslmode=verify-ca&b=2"),
            "postgres://u@h/db?a=1&sslmode=require&b=2"
        );
        for same in [
            "postgres://u@h/db?sslmode=verify-fullx",
            "postgres://u@h/db?xsslmode=verify-full",
            "postgres://u@h/db",
        ] {
            assert_eq!(verify_as_require(same), same);
        }
    }

    #[test]
    fn sslmode_and_tls_must_agree_at_build() {
        for url in [
            "postgres://x@127.0.0.1/db?sslmode=require",
            "postgres://x@127.0.0.1/db?sslmode=verify-full",
        ] {
            let e = PgSink::builder(url).build().unwrap_err().to_string();
            assert!(e.contains(".tls(TlsConfig::new())"), "{e}");
            assert!(PgSink::builder(url).tls(TlsConfig::new()).build().is_ok());
        }
        let e = PgSink::builder("postgres://x@127.0.0.1/db?sslmode=disable")
            .tls(TlsConfig::new())
            .build()
            .unwrap_err()
            .to_string();
        assert!(e.contains("sslmode=disable"), "{e}");
        assert!(PgSink::builder("postgres://x@127.0.0.1/db?sslmode=disable")
            .build()
            .is_ok());
        let e = PgSink::builder("host=/run/postgresql user=x")
            .tls(TlsConfig::new())
            .build()
            .unwrap_err()
            .to_string();
        assert!(e.contains("Unix sockets"), "{e}");
    }

    #[test]
    fn bad_urls_and_tables_fail_at_build() {
        assert!(PgSink::builder("postgres://x@h:notaport/db")
            .build()
            .is_err());
        assert!(PgSink::builder("postgres://x@127.0.0.1/db")
            .table("Bad")
            .build()
            .is_err());
    }
}
