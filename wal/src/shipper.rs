//! At-least-once delivery of a consumer's records to a [`Sink`].
//!
//! A [`Shipper`] drives one named [`Consumer`] into one [`Sink`]:
//!
//! * it reads the records after the consumer's checkpoint, live, and groups them into a
//!   [`Batch`] of at most [`batch_max`](ShipperBuilder::batch_max) records (default
//!   2000) and [`batch_max_bytes`](ShipperBuilder::batch_max_bytes) payload bytes
//!   (default 4 MiB), waiting up to [`linger`](ShipperBuilder::linger) (default 5 ms)
//!   for a batch to fill;
//! * every record carries an [`IdempotencyKey`] — the WAL's stable id and the record's
//!   sequence number — so a sink can drop the duplicates at-least-once delivery makes;
//! * the checkpoint is committed **only after the sink acknowledged** the whole batch
//!   (or the parts of it that could never be delivered went to the dead letter);
//! * a failed attempt is retried after an exponential backoff with full jitter
//!   ([`Backoff`]: a delay drawn uniformly from `0..=min(max, initial * 2^n)`; defaults
//!   100 ms and 30 s), or after the sink's retry-after hint when it gives one (capped by
//!   [`Backoff::max_retry_after`], default 5 min);
//! * a circuit breaker ([`Breaker`]: opens after 5 consecutive transient failures, stays
//!   open 30 s, then lets one trial batch through — half-open) stops hammering a sink
//!   that is down; its state is published with [`Hooks::record_breaker_state`](crate::hooks::Hooks::record_breaker_state) and shows
//!   in [`Metrics::breaker_state`](crate::Metrics::breaker_state);
//! * every failed attempt counts in `ship_errors_total` ([`Hooks::record_ship_error`](crate::hooks::Hooks::record_ship_error)),
//!   every acknowledged batch sets `last_ship_ts` ([`Hooks::record_ship_success`](crate::hooks::Hooks::record_ship_success)).
//!
//! # Poison records and the dead letter
//!
//! A sink says a record (or a whole batch) can never be accepted with a permanent
//! [`SinkError`]. The shipper retries it [`poison_attempts`](ShipperBuilder::poison_attempts)
//! times (default 3); then a record named by [`SinkError::Record`] goes to the dead
//! letter, and a batch refused as a whole with [`SinkError::Batch`] is split in halves,
//! each retried the same way, down to the single records that are refused. Records that
//! do not decode as `T` go to the dead letter at once. The records behind them flow on.
//!
//! A dead letter is a [`DeadLetter`] (the record's raw bytes, sequence number, reason and
//! attempt count) written to a [`DeadLetterStore`] *before* the checkpoint moves past
//! it, and counted in `dead_letter_total` ([`Hooks::record_dead_letter`](crate::hooks::Hooks::record_dead_letter)). The default
//! store is the WAL's own durable metadata area (keys `deadletter.{consumer}.{seq:020}`):
//! list it with [`Wal::dead_letters`], re-drive it into a sink with
//! [`Wal::redrive_dead_letters`] (a record leaves the dead letter only once that sink
//! acknowledged it), or drop one on purpose with [`Wal::remove_dead_letter`]. Another
//! WAL can be the store instead ([`ShipperBuilder::dead_letter`] with a `Wal<D>`). No
//! record is ever silently discarded. The default store writes each letter with one
//! durable metadata write on the shipper's task: fine for the rare poison record; a
//! sink that refuses records by the thousand wants a dead-letter `Wal` instead.
//!
//! # Running it
//!
//! [`Shipper::run`] is a future: spawn it on whatever runtime the service uses (tokio,
//! smol, `futures::executor`); its timers come from `futures-timer`, which
//! needs no runtime. [`Shipper::spawn_on_thread`] runs it instead on a thread walspool
//! owns. [`ShipperHandle::request_shutdown`] stops it cleanly: an attempt in progress finishes
//! (bounded by the [`send_timeout`](ShipperBuilder::send_timeout)) and is committed if
//! acknowledged; a batch not acknowledged is abandoned *uncommitted*, so it is sent
//! again after a restart — nothing is lost.
//!
//! Several shippers, each with its own consumer, can ship one WAL at once.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//! use walspool_wal::shipper::{Batch, FnSink, Shipper};
//! use walspool_wal::{Memory, Options, Wal};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let wal = Wal::open(Memory::new(), Options::default())?;
//! let last = futures::executor::block_on(wal.append_batch(&["a".to_string(), "b".to_string()]))?.end - 1;
//!
//! // A sink that keeps what it receives, deduplicated by idempotency key.
//! let got = Arc::new(Mutex::new(Vec::new()));
//! let seen = got.clone();
//! let sink = FnSink::new(move |batch: &Batch<String>| {
//!     let keys: Vec<String> = batch.keys().map(|k| k.to_string()).collect();
//!     let seen = seen.clone();
//!     async move {
//!         seen.lock().unwrap().extend(keys);
//!         Ok(())
//!     }
//! });
//!
//! let shipper = Shipper::builder(wal.consumer("audit")?, sink)
//!     .linger(Duration::from_millis(1))
//!     .build()?;
//! let running = shipper.spawn_on_thread()?;
//! assert!(running.handle().wait_committed_timeout(last, Duration::from_secs(10)));
//! let status = running.shutdown()?;
//! assert_eq!(status.committed_seq, last);
//! assert_eq!(got.lock().unwrap().len(), 2);
//! assert_eq!(got.lock().unwrap()[0], format!("{}:1", wal.id()));
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::{self, Either, FutureExt};
use futures::task::AtomicWaker;
use futures_timer::Delay;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::consumer::Consumer;
use crate::error::{Error, Result};
use crate::reader::{Entry, RawReader};
use crate::storage::Storage;
use crate::wal::{lock, now_ms, Inner, Wal};

// ---------------------------------------------------------------------------------------
// The sink side: keys, batches, errors, the trait.
// ---------------------------------------------------------------------------------------

/// The idempotency key of one record: the WAL's stable id and the record's sequence
/// number. Displayed as `{wal_id}:{seq}`. The same record always has the same key, on
/// every retry and after every restart, so a sink can drop duplicates by it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey {
    /// The WAL's stable id ([`Wal::id`]).
    pub wal_id: Arc<str>,
    /// The record's sequence number.
    pub seq: u64,
}

impl std::fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.wal_id, self.seq)
    }
}

/// A batch of records handed to a [`Sink`]: consecutive records of one consumer in
/// sequence order (a record that went to the dead letter leaves a hole).
#[derive(Debug, Clone)]
pub struct Batch<T> {
    wal_id: Arc<str>,
    consumer: Arc<str>,
    entries: Vec<Entry<T>>,
    attempt: u32,
}

impl<T> Batch<T> {
    /// Builds a batch by hand (for sinks' own tests, and re-drives).
    pub fn new(
        wal_id: impl Into<Arc<str>>,
        consumer: impl Into<Arc<str>>,
        entries: Vec<Entry<T>>,
    ) -> Self {
        Batch {
            wal_id: wal_id.into(),
            consumer: consumer.into(),
            entries,
            attempt: 1,
        }
    }

    /// The records, in sequence order.
    pub fn entries(&self) -> &[Entry<T>] {
        &self.entries
    }

    /// Takes the records out.
    pub fn into_entries(self) -> Vec<Entry<T>> {
        self.entries
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the batch holds no record (a shipper never sends one).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The WAL's stable id.
    pub fn wal_id(&self) -> &str {
        &self.wal_id
    }

    /// The consumer that ships it.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Which attempt at delivering these records this is (1 = first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Sequence number of the first record (0 for an empty batch).
    pub fn first_seq(&self) -> u64 {
        self.entries.first().map_or(0, |e| e.seq)
    }

    /// Sequence number of the last record (0 for an empty batch).
    pub fn last_seq(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.seq)
    }

    /// The idempotency key of the record at `index`.
    pub fn key(&self, index: usize) -> Option<IdempotencyKey> {
        self.entries.get(index).map(|e| IdempotencyKey {
            wal_id: self.wal_id.clone(),
            seq: e.seq,
        })
    }

    /// The idempotency keys of every record, in order.
    pub fn keys(&self) -> impl Iterator<Item = IdempotencyKey> + '_ {
        self.entries.iter().map(|e| IdempotencyKey {
            wal_id: self.wal_id.clone(),
            seq: e.seq,
        })
    }

    /// A key for the batch as a whole: `{wal_id}:{first_seq}-{last_seq}`. The same
    /// records retried give the same key; a batch split after permanent failures gives
    /// new, narrower ranges, so per-record keys are the ones to dedupe by.
    pub fn batch_key(&self) -> String {
        format!("{}:{}-{}", self.wal_id, self.first_seq(), self.last_seq())
    }
}

/// Why a sink did not accept a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SinkError {
    /// Try again later (network error, timeout, overload, 5xx, 429). Retried forever,
    /// with backoff, and counted by the circuit breaker.
    Transient {
        /// What went wrong.
        reason: String,
        /// The sink's hint of when to try again (HTTP `Retry-After`); the shipper waits
        /// this long instead of its own backoff.
        retry_after: Option<Duration>,
    },
    /// This one record can never be accepted (malformed, rejected by validation).
    /// After `poison_attempts` such answers it goes to the dead letter.
    Record {
        /// Its sequence number.
        seq: u64,
        /// Why it was refused.
        reason: String,
    },
    /// The batch as a whole was refused permanently (HTTP 4xx other than 429) without
    /// saying which record is at fault. After `poison_attempts` such answers the
    /// shipper splits the batch to find the records at fault.
    Batch {
        /// Why it was refused.
        reason: String,
    },
}

impl SinkError {
    /// A transient error without a retry-after hint.
    pub fn transient(reason: impl Into<String>) -> Self {
        SinkError::Transient {
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// A transient error with a retry-after hint.
    pub fn retry_after(reason: impl Into<String>, after: Duration) -> Self {
        SinkError::Transient {
            reason: reason.into(),
            retry_after: Some(after),
        }
    }

    /// A permanent error for one record.
    pub fn record(seq: u64, reason: impl Into<String>) -> Self {
        SinkError::Record {
            seq,
            reason: reason.into(),
        }
    }

    /// A permanent error for the whole batch.
    pub fn batch(reason: impl Into<String>) -> Self {
        SinkError::Batch {
            reason: reason.into(),
        }
    }

    /// True for [`SinkError::Transient`].
    pub fn is_transient(&self) -> bool {
        matches!(self, SinkError::Transient { .. })
    }

    fn reason(&self) -> &str {
        match self {
            SinkError::Transient { reason, .. }
            | SinkError::Record { reason, .. }
            | SinkError::Batch { reason } => reason,
        }
    }
}

impl std::fmt::Display for SinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkError::Transient {
                reason,
                retry_after: Some(d),
            } => write!(f, "transient sink error (retry after {d:?}): {reason}"),
            SinkError::Transient { reason, .. } => write!(f, "transient sink error: {reason}"),
            SinkError::Record { seq, reason } => {
                write!(f, "sink refused record {seq} permanently: {reason}")
            }
            SinkError::Batch { reason } => {
                write!(f, "sink refused the batch permanently: {reason}")
            }
        }
    }
}

impl std::error::Error for SinkError {}

/// Where a [`Shipper`] delivers records.
///
/// `send` gets a [`Batch`] and answers `Ok(())` once the sink holds every record of it
/// durably (the shipper then commits the consumer's checkpoint past it), or a
/// [`SinkError`]. It may be called again with records it already accepted (after a
/// failure, a timeout, or a restart): dedupe by [`Batch::keys`] if duplicates matter.
/// A call that outlasts the shipper's `send_timeout` is dropped and counts as a
/// transient failure.
#[async_trait]
pub trait Sink<T: Send + Sync + 'static>: Send {
    /// Delivers one batch.
    async fn send(&mut self, batch: &Batch<T>) -> Result<(), SinkError>;
}

#[async_trait]
impl<T: Send + Sync + 'static> Sink<T> for Box<dyn Sink<T>> {
    async fn send(&mut self, batch: &Batch<T>) -> Result<(), SinkError> {
        (**self).send(batch).await
    }
}

/// A [`Sink`] made of a closure that returns a future: for tests and glue code.
///
/// The future must own what it needs (`'static`): copy it out of the batch first.
///
/// ```
/// use walspool_wal::shipper::{Batch, FnSink, SinkError};
/// let sink = FnSink::new(|batch: &Batch<u64>| {
///     let n = batch.len();
///     async move { if n > 0 { Ok(()) } else { Err(SinkError::transient("empty")) } }
/// });
/// # let _ = sink;
/// ```
pub struct FnSink<F> {
    f: F,
}

impl<F> std::fmt::Debug for FnSink<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnSink").finish_non_exhaustive()
    }
}

impl<F> FnSink<F> {
    /// Wraps `f`, called once per delivery attempt.
    pub fn new(f: F) -> Self {
        FnSink { f }
    }
}

#[async_trait]
impl<T, F, Fut> Sink<T> for FnSink<F>
where
    T: Send + Sync + 'static,
    F: FnMut(&Batch<T>) -> Fut + Send,
    Fut: Future<Output = Result<(), SinkError>> + Send + 'static,
{
    async fn send(&mut self, batch: &Batch<T>) -> Result<(), SinkError> {
        (self.f)(batch).await
    }
}

// ---------------------------------------------------------------------------------------
// Dead letters.
// ---------------------------------------------------------------------------------------

/// A record that could not be delivered and was set aside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The WAL it came from.
    pub wal_id: String,
    /// The consumer whose sink refused it.
    pub consumer: String,
    /// Its sequence number.
    pub seq: u64,
    /// Its append time, µs since the Unix epoch.
    pub ts_us: u64,
    /// Delivery attempts made (0 when it did not even decode).
    pub attempts: u32,
    /// The last reason it was refused.
    pub reason: String,
    /// When it was set aside, ms since the Unix epoch.
    pub dead_lettered_at_ms: u64,
    /// The schema version the record was written with (1 in letters stored before
    /// versions were recorded).
    #[serde(default = "default_schema_version")]
    pub schema_version: u8,
    /// The record's bytes as appended (postcard, without the schema version byte).
    pub payload: Vec<u8>,
}

fn default_schema_version() -> u8 {
    crate::schema::DEFAULT_SCHEMA_VERSION
}

impl DeadLetter {
    /// Decodes the record as `T` written at the current version (no upgrade: use
    /// [`decode_with`](Self::decode_with) and the WAL's schema for older versions).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        postcard::from_bytes(&self.payload).map_err(|e| Error::Decode {
            seq: self.seq,
            context: String::new(),
            source: Box::new(e),
        })
    }

    /// Decodes the record through `schema` (upgrading an older version), e.g.
    /// `letter.decode_with::<T>(wal.options().get_schema())`.
    pub fn decode_with<T: DeserializeOwned>(&self, schema: &crate::schema::Schema) -> Result<T> {
        schema.decode(self.seq, self.schema_version, &self.payload)
    }

    /// The record's idempotency key.
    pub fn key(&self) -> IdempotencyKey {
        IdempotencyKey {
            wal_id: self.wal_id.as_str().into(),
            seq: self.seq,
        }
    }
}

/// Where a shipper puts dead letters. `put` and `put_batch` must be durable when they
/// return `Ok`: the checkpoint moves past the records right after.
#[async_trait]
pub trait DeadLetterStore: Send + Sync {
    /// Stores one dead letter durably.
    async fn put(&self, letter: &DeadLetter) -> Result<()>;

    /// Stores dead letters durably, in order. The shipper hands over every record of a
    /// batch that does not decode at once: implement this with one durable write. The
    /// default calls `put` for each.
    async fn put_batch(&self, letters: &[DeadLetter]) -> Result<()> {
        for l in letters {
            self.put(l).await?;
        }
        Ok(())
    }
}

/// Another WAL as the dead letter: each [`DeadLetter`] is appended to it as a record
/// (read them back with `read_from::<DeadLetter>` or a consumer).
#[async_trait]
impl<D: Storage> DeadLetterStore for Wal<D> {
    async fn put(&self, letter: &DeadLetter) -> Result<()> {
        self.put_batch(std::slice::from_ref(letter)).await
    }

    async fn put_batch(&self, letters: &[DeadLetter]) -> Result<()> {
        if self.options().get_durability() != crate::Durability::Sync {
            self.append_batch(letters).await?;
            return self.flush().await;
        }
        self.append_batch(letters).await.map(|_| ())
    }
}

/// Metadata key prefix of the default dead-letter store.
pub const DEAD_LETTER_PREFIX: &str = "deadletter.";

/// How the default store encodes a value: this magic, then the postcard encoding of a
/// `Vec<DeadLetter>` (payloads as raw bytes). Values without it are one letter as JSON
/// (stores written before batches).
pub const DEAD_LETTER_MAGIC: &[u8] = b"WSPLDL1\n";

fn dead_letter_key(consumer: &str, seq: u64) -> String {
    format!("{DEAD_LETTER_PREFIX}{consumer}.{seq:020}")
}

/// The default store: the WAL's own durable metadata area.
struct MetaDeadLetters<S: Storage> {
    wal: Wal<S>,
}

#[async_trait]
impl<S: Storage> DeadLetterStore for MetaDeadLetters<S> {
    async fn put(&self, letter: &DeadLetter) -> Result<()> {
        put_meta_letters(&self.wal, std::slice::from_ref(letter))
    }

    async fn put_batch(&self, letters: &[DeadLetter]) -> Result<()> {
        // One key, one durable write per consumer in the batch.
        let mut from = 0;
        while from < letters.len() {
            let c = &letters[from].consumer;
            let n = letters[from..]
                .iter()
                .take_while(|l| &l.consumer == c)
                .count();
            put_meta_letters(&self.wal, &letters[from..from + n])?;
            from += n;
        }
        Ok(())
    }
}

/// Writes letters of one consumer under the key of the first one (one durable write).
fn put_meta_letters<S: Storage>(wal: &Wal<S>, letters: &[DeadLetter]) -> Result<()> {
    let Some(first) = letters.first() else {
        return Ok(());
    };
    // A retry after a crash stores the same letters under the same key again.
    write_letters(wal, &dead_letter_key(&first.consumer, first.seq), letters)
}

fn encode_letters(letters: &[DeadLetter]) -> Result<Vec<u8>> {
    postcard::to_extend(&letters, DEAD_LETTER_MAGIC.to_vec())
        .map_err(|e| Error::Encode(e.to_string()))
}

/// Decodes a value of the default store (a batch, or one JSON letter of older stores).
pub fn decode_dead_letters(b: &[u8]) -> std::result::Result<Vec<DeadLetter>, String> {
    match b.strip_prefix(DEAD_LETTER_MAGIC) {
        Some(rest) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
        None => serde_json::from_slice(b)
            .map(|l| vec![l])
            .map_err(|e| format!("dead letter is not valid JSON: {e}")),
    }
}

fn write_letters<S: Storage>(wal: &Wal<S>, key: &str, letters: &[DeadLetter]) -> Result<()> {
    let io = |op: &'static str| {
        let at = format!("{} {key}", wal.storage().location());
        move |e| Error::io(op, at, e)
    };
    if letters.is_empty() {
        return match wal.storage().remove_meta(key) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove dead letter")(e)),
            _ => Ok(()),
        };
    }
    let bytes = encode_letters(letters)?;
    wal.storage()
        .put_meta(key, &bytes)
        .map_err(io("write dead letter"))
}

/// What [`Wal::redrive_dead_letters`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Redrive {
    /// Dead letters the sink acknowledged (and that were removed).
    pub delivered: u64,
    /// Dead letters still there (refused again, or not decodable as `T`).
    pub remaining: u64,
}

impl<S: Storage> Wal<S> {
    /// The keys of the default store holding `consumer`'s dead letters, sorted, each
    /// with its letters.
    fn dead_letter_groups(&self, consumer: &str) -> Result<Vec<(String, Vec<DeadLetter>)>> {
        let prefix = format!("{DEAD_LETTER_PREFIX}{consumer}.");
        let loc = self.storage().location();
        let mut keys: Vec<String> = self
            .storage()
            .list_meta(&prefix)
            .map_err(|e| Error::io("list dead letters", loc.clone(), e))?
            .into_iter()
            .filter(|k| {
                let rest = &k[prefix.len()..];
                rest.len() == 20 && rest.bytes().all(|c| c.is_ascii_digit())
            })
            .collect();
        keys.sort();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let Some(b) = self
                .storage()
                .get_meta(&k)
                .map_err(|e| Error::io("read dead letter", format!("{loc} {k}"), e))?
            else {
                continue;
            };
            let letters = decode_dead_letters(&b).map_err(|reason| Error::Corrupt {
                segment: format!("{loc}/meta {k}"),
                offset: 0,
                reason,
            })?;
            out.push((k, letters));
        }
        Ok(out)
    }

    /// The dead letters of `consumer` in the default store (the WAL's metadata area),
    /// in sequence order.
    pub fn dead_letters(&self, consumer: &str) -> Result<Vec<DeadLetter>> {
        let mut all: Vec<DeadLetter> = self
            .dead_letter_groups(consumer)?
            .into_iter()
            .flat_map(|(_, l)| l)
            .collect();
        all.sort_by_key(|l| l.seq);
        all.dedup_by_key(|l| l.seq);
        Ok(all)
    }

    /// Removes one dead letter of `consumer` from the default store (an operator's
    /// deliberate decision; nothing else removes one without delivering it).
    pub fn remove_dead_letter(&self, consumer: &str, seq: u64) -> Result<()> {
        for (key, mut letters) in self.dead_letter_groups(consumer)? {
            let before = letters.len();
            letters.retain(|l| l.seq != seq);
            if letters.len() != before {
                write_letters(self, &key, &letters)?;
            }
        }
        Ok(())
    }

    /// Re-drives the dead letters of `consumer` (default store) into `sink`, one record
    /// per batch, in sequence order, with their original idempotency keys. Records are
    /// decoded through the WAL's schema ([`Options::schema`](crate::Options::schema)),
    /// so letters of an older version go through the upgrade deployed since. A record
    /// leaves the dead letter only once the sink acknowledged it; one refused again,
    /// or one that still does not decode as `T`, stays.
    pub async fn redrive_dead_letters<T, K>(&self, consumer: &str, sink: &mut K) -> Result<Redrive>
    where
        T: DeserializeOwned + Send + Sync + 'static,
        K: Sink<T> + ?Sized,
    {
        let mut r = Redrive::default();
        let schema = self.options().get_schema().clone();
        for (key, letters) in self.dead_letter_groups(consumer)? {
            let mut kept = Vec::new();
            for letter in letters {
                let record = match letter.decode_with::<T>(&schema) {
                    Ok(rec) => rec,
                    Err(e) => {
                        tracing::warn!(consumer, seq = letter.seq, error = %e, "re-drive: a dead letter still does not decode");
                        r.remaining += 1;
                        kept.push(letter);
                        continue;
                    }
                };
                let batch = Batch::new(
                    self.id(),
                    consumer,
                    vec![Entry {
                        seq: letter.seq,
                        ts_us: letter.ts_us,
                        record,
                    }],
                );
                match sink.send(&batch).await {
                    Ok(()) => r.delivered += 1,
                    Err(e) => {
                        tracing::warn!(consumer, seq = letter.seq, error = %e, "re-drive: the sink refused a dead letter again");
                        r.remaining += 1;
                        kept.push(letter);
                    }
                }
            }
            write_letters(self, &key, &kept)?;
        }
        Ok(r)
    }
}

// ---------------------------------------------------------------------------------------
// Configuration.
// ---------------------------------------------------------------------------------------

/// Exponential backoff with full jitter: after the n-th consecutive failure (n = 0, 1,
/// ...) the shipper waits a delay drawn uniformly from `0..=min(max, initial * 2^n)`.
/// A sink's retry-after hint replaces the draw, capped by `max_retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Cap of the first delay (default 100 ms).
    pub initial: Duration,
    /// Cap of any delay (default 30 s).
    pub max: Duration,
    /// Longest retry-after hint honoured (default 5 min).
    pub max_retry_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The upper bound of the delay after `failures` consecutive failures (≥ 1).
    pub fn ceiling(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(30);
        self.initial.saturating_mul(1u32 << shift).min(self.max)
    }
}

/// Circuit-breaker settings. Closed: batches flow. After `failure_threshold`
/// consecutive transient failures it opens: no call reaches the sink for `open_for`.
/// Then it is half-open: the next batch is a trial; success closes it, failure opens it
/// again. Permanent errors are answers from a working sink and do not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    /// Consecutive transient failures that open the breaker (default 5).
    pub failure_threshold: u32,
    /// How long it stays open before a trial (default 30 s; a longer retry-after hint
    /// wins).
    pub open_for: Duration,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
        }
    }
}

/// The circuit breaker's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BreakerState {
    /// Batches flow.
    #[default]
    Closed,
    /// The sink is considered down; nothing is sent.
    Open,
    /// One trial batch is allowed through.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half-open` (as in the metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// Default [`ShipperBuilder::batch_max`].
pub const DEFAULT_BATCH_MAX: usize = 2000;
/// Default [`ShipperBuilder::batch_max_bytes`].
pub const DEFAULT_BATCH_MAX_BYTES: usize = 4 << 20;
/// Default [`ShipperBuilder::linger`].
pub const DEFAULT_LINGER: Duration = Duration::from_millis(5);
/// Default [`ShipperBuilder::send_timeout`].
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`ShipperBuilder::poison_attempts`].
pub const DEFAULT_POISON_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone)]
struct Config {
    batch_max: usize,
    batch_max_bytes: usize,
    linger: Duration,
    send_timeout: Duration,
    backoff: Backoff,
    breaker: Breaker,
    poison_attempts: u32,
}

impl Config {
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("shipper: {m}")));
        if self.batch_max == 0 {
            return bad("batch_max must be at least 1".into());
        }
        if self.batch_max_bytes == 0 {
            return bad("batch_max_bytes must be at least 1".into());
        }
        if self.send_timeout.is_zero() {
            return bad("send_timeout must be greater than zero".into());
        }
        if self.poison_attempts == 0 {
            return bad("poison_attempts must be at least 1".into());
        }
        if self.breaker.failure_threshold == 0 {
            return bad("breaker failure_threshold must be at least 1".into());
        }
        if self.backoff.initial > self.backoff.max {
            return bad(format!(
                "backoff initial ({:?}) must not exceed max ({:?})",
                self.backoff.initial, self.backoff.max
            ));
        }
        Ok(())
    }
}

/// Builds a [`Shipper`]; see the [module documentation](self) for the defaults.
pub struct ShipperBuilder<S: Storage, T: Send + Sync + 'static> {
    consumer: Consumer<S>,
    sink: Box<dyn Sink<T>>,
    dead_letter: Option<Arc<dyn DeadLetterStore>>,
    cfg: Config,
}

impl<S: Storage, T: Send + Sync + 'static> std::fmt::Debug for ShipperBuilder<S, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShipperBuilder")
            .field("consumer", &self.consumer.name())
            .field("config", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl<S: Storage, T: DeserializeOwned + Send + Sync + 'static> ShipperBuilder<S, T> {
    /// Most records per batch (default 2000; at least 1, checked by
    /// [`build`](Self::build)).
    pub fn batch_max(mut self, n: usize) -> Self {
        self.cfg.batch_max = n;
        self
    }

    /// Most payload bytes per batch (default 4 MiB; at least 1). A single larger record
    /// is sent alone.
    pub fn batch_max_bytes(mut self, bytes: usize) -> Self {
        self.cfg.batch_max_bytes = bytes;
        self
    }

    /// How long a started batch waits for more records before it is sent (default
    /// 5 ms; zero sends whatever is there at once).
    pub fn linger(mut self, d: Duration) -> Self {
        self.cfg.linger = d;
        self
    }

    /// Longest a sink call may take; a call past it is dropped and counts as a
    /// transient failure (default 30 s; more than zero).
    pub fn send_timeout(mut self, d: Duration) -> Self {
        self.cfg.send_timeout = d;
        self
    }

    /// Backoff between attempts (`initial` at most `max`).
    pub fn backoff(mut self, b: Backoff) -> Self {
        self.cfg.backoff = b;
        self
    }

    /// Circuit-breaker settings (`failure_threshold` at least 1).
    pub fn breaker(mut self, b: Breaker) -> Self {
        self.cfg.breaker = b;
        self
    }

    /// Permanent refusals of a record (or batch) before it goes to the dead letter (or
    /// is split) (default 3; at least 1).
    pub fn poison_attempts(mut self, n: u32) -> Self {
        self.cfg.poison_attempts = n;
        self
    }

    /// Where dead letters go (default: the WAL's metadata area, see [`Wal::dead_letters`]).
    /// A `Wal<D>` works: pass `Arc::new(other_wal)`.
    pub fn dead_letter(mut self, store: Arc<dyn DeadLetterStore>) -> Self {
        self.dead_letter = Some(store);
        self
    }

    /// Checks the settings and builds the shipper. A setting out of range is an
    /// [`Error::Config`] naming it; nothing is silently adjusted.
    pub fn build(self) -> Result<Shipper<S, T>> {
        self.cfg.validate()?;
        let wal = self.consumer.wal().clone();
        let dead_letter = self
            .dead_letter
            .unwrap_or_else(|| Arc::new(MetaDeadLetters { wal: wal.clone() }));
        let shared = Arc::new(Shared {
            shutdown: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            status: Mutex::new(ShipperStatus {
                consumer: self.consumer.name().to_string(),
                committed_seq: self.consumer.committed(),
                ..ShipperStatus::default()
            }),
            commit_wakers: Mutex::new(Vec::new()),
            commit_cv: Condvar::new(),
        });
        Ok(Shipper {
            wal_id: wal.id().into(),
            consumer_name: self.consumer.name().into(),
            consumer: self.consumer,
            sink: self.sink,
            dead_letter,
            cfg: self.cfg,
            shared,
            rng: Rng::new(),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Status and handles.
// ---------------------------------------------------------------------------------------

/// What a shipper has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShipperStatus {
    /// The consumer it drives.
    pub consumer: String,
    /// Whether its future is running.
    pub running: bool,
    /// Circuit-breaker state.
    pub breaker: BreakerState,
    /// Last committed sequence number.
    pub committed_seq: u64,
    /// Records in acknowledged batches (a record delivered twice counts twice).
    pub records_acked: u64,
    /// Acknowledged batches.
    pub batches_acked: u64,
    /// Failed attempts (transient or permanent, timeouts included).
    pub failed_attempts: u64,
    /// Attempts that hit the send timeout.
    pub timeouts: u64,
    /// Records this shipper put in the dead letter.
    pub dead_lettered: u64,
    /// Times the breaker opened.
    pub breaker_opened: u64,
    /// Times the breaker went half-open.
    pub breaker_half_opened: u64,
    /// Sequence range of the batch being delivered, if any.
    pub in_flight: Option<(u64, u64)>,
}

struct Shared {
    shutdown: AtomicBool,
    waker: AtomicWaker,
    status: Mutex<ShipperStatus>,
    commit_wakers: Mutex<Vec<Waker>>,
    commit_cv: Condvar,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut ShipperStatus)) {
        f(&mut lock(&self.status));
    }

    fn committed(&self, seq: u64) {
        lock(&self.status).committed_seq = seq;
        self.notify();
    }

    fn notify(&self) {
        self.commit_cv.notify_all();
        for w in std::mem::take(&mut *lock(&self.commit_wakers)) {
            w.wake();
        }
    }
}

/// Controls a running [`Shipper`]; cheap to clone.
#[derive(Clone)]
pub struct ShipperHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ShipperHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShipperHandle")
            .field("status", &self.status())
            .finish()
    }
}

impl ShipperHandle {
    /// Asks the shipper to stop and returns at once (to wait for it, await
    /// [`Shipper::run`]'s future or call [`ShipperThread::shutdown`]). An attempt in
    /// progress finishes (bounded by the send timeout) and is committed if
    /// acknowledged; anything not acknowledged stays uncommitted and is delivered again
    /// after a restart. The future then resolves.
    pub fn request_shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.waker.wake();
    }

    /// A snapshot of the shipper's figures.
    pub fn status(&self) -> ShipperStatus {
        lock(&self.shared.status).clone()
    }

    /// Resolves once the checkpoint is at `seq` or beyond, or the shipper stopped
    /// (check [`status`](Self::status)). [`wait_committed_timeout`](Self::wait_committed_timeout)
    /// is the blocking form.
    pub async fn wait_committed(&self, seq: u64) {
        future::poll_fn(|cx| {
            let done = |s: &ShipperStatus| {
                s.committed_seq >= seq
                    || (!s.running && self.shared.shutdown.load(Ordering::Acquire))
            };
            if done(&lock(&self.shared.status)) {
                return Poll::Ready(());
            }
            lock(&self.shared.commit_wakers).push(cx.waker().clone());
            if done(&lock(&self.shared.status)) {
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await
    }

    /// Blocks the calling thread until the checkpoint is at `seq` or beyond; false if
    /// `timeout` passed first, or the shipper stopped short of it. Needs no executor.
    pub fn wait_committed_timeout(&self, seq: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.shared.status);
        while st.committed_seq < seq {
            if !st.running && self.shared.shutdown.load(Ordering::Acquire) {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .shared
                .commit_cv
                .wait_timeout(st, deadline - now)
                .map(|r| r.0)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        true
    }
}

/// A shipper running on its own thread ([`Shipper::spawn_on_thread`]). Dropping it
/// shuts the shipper down and waits for it.
#[derive(Debug)]
pub struct ShipperThread {
    handle: ShipperHandle,
    join: Option<std::thread::JoinHandle<Result<ShipperStatus>>>,
}

impl ShipperThread {
    /// The handle.
    pub fn handle(&self) -> &ShipperHandle {
        &self.handle
    }

    /// Shuts the shipper down cleanly and waits for its thread; returns its final status.
    pub fn shutdown(mut self) -> Result<ShipperStatus> {
        self.handle.request_shutdown();
        self.join_inner()
    }

    fn join_inner(&mut self) -> Result<ShipperStatus> {
        match self.join.take() {
            Some(j) => j
                .join()
                .unwrap_or_else(|_| Err(Error::Consumer("the shipper thread panicked".into()))),
            None => Ok(self.handle.status()),
        }
    }
}

impl Drop for ShipperThread {
    fn drop(&mut self) {
        self.handle.request_shutdown();
        let _ = self.join_inner();
    }
}

// ---------------------------------------------------------------------------------------
// The shipper.
// ---------------------------------------------------------------------------------------

/// Drives one named consumer into one sink, at least once; see the
/// [module documentation](self).
pub struct Shipper<S: Storage, T: Send + Sync + 'static> {
    wal_id: Arc<str>,
    consumer_name: Arc<str>,
    consumer: Consumer<S>,
    sink: Box<dyn Sink<T>>,
    dead_letter: Arc<dyn DeadLetterStore>,
    cfg: Config,
    shared: Arc<Shared>,
    rng: Rng,
}

impl<S: Storage, T: Send + Sync + 'static> std::fmt::Debug for Shipper<S, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipper")
            .field("consumer", &self.consumer_name)
            .field("config", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// A record as stored: its schema version and encoded bytes.
type RawEntry = (u8, Entry<Vec<u8>>);

/// What waiting for records ended with.
enum Woke {
    Data,
    Timeout,
    Shutdown,
}

/// A batch being delivered, with its count of permanent refusals.
struct Pending<T> {
    batch: Batch<T>,
    refusals: u32,
}

/// How a delivery ended.
enum Delivery {
    Done,
    Abandoned,
}

impl<S: Storage, T: DeserializeOwned + Send + Sync + 'static> Shipper<S, T> {
    /// Starts building a shipper of `consumer` into `sink`.
    pub fn builder(consumer: Consumer<S>, sink: impl Sink<T> + 'static) -> ShipperBuilder<S, T> {
        ShipperBuilder {
            consumer,
            sink: Box::new(sink),
            dead_letter: None,
            cfg: Config {
                batch_max: DEFAULT_BATCH_MAX,
                batch_max_bytes: DEFAULT_BATCH_MAX_BYTES,
                linger: DEFAULT_LINGER,
                send_timeout: DEFAULT_SEND_TIMEOUT,
                backoff: Backoff::default(),
                breaker: Breaker::default(),
                poison_attempts: DEFAULT_POISON_ATTEMPTS,
            },
        }
    }

    /// A handle to stop it and watch it.
    pub fn handle(&self) -> ShipperHandle {
        ShipperHandle {
            shared: self.shared.clone(),
        }
    }

    /// Runs it on a new thread owned by walspool (a `futures` executor on a std
    /// thread): for services that would rather not spawn it themselves.
    pub fn spawn_on_thread(self) -> Result<ShipperThread> {
        let handle = self.handle();
        let name = format!("walspool-ship-{}", self.consumer_name);
        let join = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || crate::blocking::wait(self.run()))
            .map_err(|e| Error::io("spawn shipper thread", name, e))?;
        Ok(ShipperThread {
            handle,
            join: Some(join),
        })
    }

    /// Ships until [`ShipperHandle::request_shutdown`] is called or the WAL is closed; resolves
    /// with the final status. Spawn it on any executor. Errors are what the shipper
    /// cannot get past by waiting: a corrupt segment, a failed checkpoint write.
    pub async fn run(mut self) -> Result<ShipperStatus> {
        self.shared.update(|s| s.running = true);
        self.set_breaker(BreakerState::Closed);
        let r = self.run_inner().await;
        if let Err(e) = &r {
            tracing::error!(consumer = %self.consumer_name, error = %e, "shipper stopped on an error");
        }
        // Stopped for good (asked to, the WAL closed, or an error): waiters on the
        // checkpoint learn it through the shutdown flag.
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.update(|s| {
            s.running = false;
            s.in_flight = None;
        });
        self.shared.notify();
        r.map(|()| self.handle().status())
    }

    async fn run_inner(&mut self) -> Result<()> {
        let inner = self.consumer.wal().inner.clone();
        let mut reader = RawReader::new(inner.clone(), self.consumer.committed() + 1);
        let mut carry: Option<RawEntry> = None;
        let mut state = BreakerRun::default();
        loop {
            let Some(batch) = self.gather(&inner, &mut reader, &mut carry).await? else {
                return Ok(());
            };
            let last = batch.last_seq();
            // Every record read so far, but a carried one, is in the batch or durably in
            // the dead letter: once the batch is delivered the checkpoint moves past
            // them all (else records dead-lettered after the batch's last one would
            // hold it back until another record arrives).
            let through = carry
                .as_ref()
                .map_or(reader.next - 1, |(_, e)| e.seq - 1)
                .max(last);
            self.shared
                .update(|s| s.in_flight = Some((batch.first_seq(), last)));
            match self.deliver(batch, &mut state).await? {
                Delivery::Abandoned => return Ok(()),
                Delivery::Done => {}
            }
            let last = through;
            match self.consumer.commit(last).await {
                Ok(()) => self.shared.committed(last),
                Err(Error::Closed) => return Ok(()),
                Err(e) => return Err(e),
            }
            self.shared.update(|s| s.in_flight = None);
        }
    }

    fn stopping(&self) -> bool {
        self.shared.shutdown.load(Ordering::Acquire)
    }

    /// The next raw record, skipping gaps; `Ok(None)` at the durable end.
    fn next_raw(&self, reader: &mut RawReader<S>) -> Result<Option<RawEntry>> {
        loop {
            match reader.next_frame() {
                Ok(f) => {
                    return Ok(f.map(|(seq, ts_us, version, record)| {
                        (version, Entry { seq, ts_us, record })
                    }))
                }
                Err(e @ Error::Gap { .. }) => {
                    tracing::warn!(consumer = %self.consumer_name, error = %e, "records were dropped by retention bounds before they were shipped");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Collects the next batch; `None` on shutdown or when the WAL closed.
    async fn gather(
        &mut self,
        inner: &Arc<Inner<S>>,
        reader: &mut RawReader<S>,
        carry: &mut Option<RawEntry>,
    ) -> Result<Option<Batch<T>>> {
        loop {
            let mut entries: Vec<Entry<T>> = Vec::new();
            let mut bytes = 0usize;
            let mut deadline: Option<Instant> = None;
            // Records that do not decode: stored together, with one durable write,
            // before the batch (or the checkpoint) moves past them.
            let mut letters: Vec<DeadLetter> = Vec::new();
            while entries.len() < self.cfg.batch_max
                && letters.len() < self.cfg.batch_max
                && bytes < self.cfg.batch_max_bytes
            {
                if self.stopping() {
                    return Ok(None);
                }
                let raw = match carry.take() {
                    Some(r) => Some(r),
                    None => self.next_raw(reader)?,
                };
                let Some((version, raw)) = raw else {
                    if inner.writer_done.load(Ordering::Acquire) {
                        // The WAL is closed: what was gathered cannot be committed.
                        return Ok(None);
                    }
                    if !letters.is_empty() && entries.is_empty() {
                        break; // commit past the dead letters now
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                    match wait(&self.shared, inner, reader.next, deadline).await {
                        Woke::Shutdown => return Ok(None),
                        Woke::Timeout => break,
                        Woke::Data => continue,
                    }
                };
                let size = raw.record.len();
                if !entries.is_empty() && bytes + size > self.cfg.batch_max_bytes {
                    *carry = Some((version, raw));
                    break;
                }
                match inner.opts.schema.decode::<T>(raw.seq, version, &raw.record) {
                    Ok(record) => {
                        entries.push(Entry {
                            seq: raw.seq,
                            ts_us: raw.ts_us,
                            record,
                        });
                        bytes += size;
                        if deadline.is_none() {
                            deadline = Some(Instant::now() + self.cfg.linger);
                        }
                    }
                    Err(e) => {
                        if letters.is_empty() {
                            tracing::error!(consumer = %self.consumer_name, error = %e, "a record does not decode: moving it to the dead letter (more may follow; see dead_letter_total)");
                        }
                        letters.push(self.letter(
                            raw.seq,
                            raw.ts_us,
                            0,
                            format!("does not decode: {e}"),
                            version,
                            raw.record,
                        ));
                    }
                }
            }
            let lettered = !letters.is_empty();
            if lettered && !self.put_dead_letters(letters).await {
                return Ok(None);
            }
            if !entries.is_empty() {
                return Ok(Some(Batch {
                    wal_id: self.wal_id.clone(),
                    consumer: self.consumer_name.clone(),
                    entries,
                    attempt: 0,
                }));
            }
            // Only dead letters (or records dropped by retention): nothing to send, but the checkpoint moves past them.
            let last = reader.next - 1;
            if last > self.consumer.committed() {
                match self.consumer.commit(last).await {
                    Ok(()) => self.shared.committed(last),
                    Err(Error::Closed) => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
        }
    }

    fn letter(
        &self,
        seq: u64,
        ts_us: u64,
        attempts: u32,
        reason: String,
        schema_version: u8,
        payload: Vec<u8>,
    ) -> DeadLetter {
        DeadLetter {
            wal_id: self.wal_id.to_string(),
            consumer: self.consumer_name.to_string(),
            seq,
            ts_us,
            attempts,
            reason,
            dead_lettered_at_ms: now_ms(),
            schema_version,
            payload,
        }
    }

    /// Stores dead letters (with one durable write when the store batches), retrying
    /// with backoff until they are stored; false on shutdown (then the records stay
    /// uncommitted).
    async fn put_dead_letters(&mut self, letters: Vec<DeadLetter>) -> bool {
        let mut failures = 0u32;
        let (first, last, n) = (
            letters.first().map_or(0, |l| l.seq),
            letters.last().map_or(0, |l| l.seq),
            letters.len() as u64,
        );
        loop {
            match self.dead_letter.put_batch(&letters).await {
                Ok(()) => {
                    tracing::warn!(
                        consumer = %self.consumer_name,
                        first_seq = first,
                        last_seq = last,
                        records = n,
                        reason = %letters[0].reason,
                        "records moved to the dead letter"
                    );
                    self.consumer.wal().hooks().record_dead_letter(n);
                    self.shared.update(|s| s.dead_lettered += n);
                    return true;
                }
                Err(e) => {
                    failures += 1;
                    tracing::error!(consumer = %self.consumer_name, first_seq = first, error = %e, "could not store dead letters; retrying");
                    let d = self.rng.upto(self.cfg.backoff.ceiling(failures));
                    if !sleep(&self.shared, d).await {
                        return false;
                    }
                }
            }
        }
    }

    async fn put_dead_letter(&mut self, letter: DeadLetter) -> bool {
        self.put_dead_letters(vec![letter]).await
    }

    /// The stored schema version and bytes of a record, for its dead letter.
    fn raw_payload(&self, entry: &Entry<T>) -> (u8, Vec<u8>) {
        let mut r = RawReader::new(self.consumer.wal().inner.clone(), entry.seq);
        match r.next_frame() {
            Ok(Some((seq, _, version, bytes))) if seq == entry.seq => (version, bytes),
            _ => (self.consumer.wal().options().schema.version(), Vec::new()),
        }
    }

    fn set_breaker(&self, s: BreakerState) {
        let prev = {
            let mut st = lock(&self.shared.status);
            let prev = st.breaker;
            st.breaker = s;
            if prev != s {
                match s {
                    BreakerState::Open => st.breaker_opened += 1,
                    BreakerState::HalfOpen => st.breaker_half_opened += 1,
                    BreakerState::Closed => {}
                }
            }
            prev
        };
        if prev != s {
            tracing::info!(consumer = %self.consumer_name, from = prev.as_str(), to = s.as_str(), "circuit breaker");
        }
        self.consumer
            .wal()
            .hooks()
            .record_breaker_state(&self.consumer_name, s);
    }

    fn breaker(&self) -> BreakerState {
        lock(&self.shared.status).breaker
    }

    /// Delivers a batch until every record is acknowledged or dead-lettered.
    async fn deliver(&mut self, batch: Batch<T>, run: &mut BreakerRun) -> Result<Delivery> {
        let mut queue: VecDeque<Pending<T>> = VecDeque::from([Pending { batch, refusals: 0 }]);
        let mut strikes: HashMap<u64, u32> = HashMap::new();
        while let Some(front) = queue.front_mut() {
            if front.batch.is_empty() {
                queue.pop_front();
                continue;
            }
            if self.stopping() {
                return Ok(Delivery::Abandoned);
            }
            front.batch.attempt += 1;
            let outcome = {
                let send = self.sink.send(&front.batch);
                match future::select(send, Delay::new(self.cfg.send_timeout)).await {
                    Either::Left((r, _)) => r,
                    Either::Right(((), _)) => {
                        self.shared.update(|s| s.timeouts += 1);
                        Err(SinkError::transient(format!(
                            "no answer within the send timeout of {:?}",
                            self.cfg.send_timeout
                        )))
                    }
                }
            };
            let err = match outcome {
                Ok(()) => {
                    let n = front.batch.len() as u64;
                    queue.pop_front();
                    run.failures = 0;
                    run.transient = 0;
                    self.consumer.wal().hooks().record_ship_success();
                    self.shared.update(|s| {
                        s.records_acked += n;
                        s.batches_acked += 1;
                    });
                    if self.breaker() != BreakerState::Closed {
                        self.set_breaker(BreakerState::Closed);
                    }
                    continue;
                }
                Err(e) => e,
            };
            self.consumer.wal().hooks().record_ship_error();
            self.shared.update(|s| s.failed_attempts += 1);
            run.failures += 1;
            tracing::warn!(
                consumer = %self.consumer_name,
                first_seq = front.batch.first_seq(),
                last_seq = front.batch.last_seq(),
                attempt = front.batch.attempt,
                error = %err,
                "delivery failed"
            );
            let delay = match err {
                SinkError::Transient { retry_after, .. } => {
                    run.transient += 1;
                    let hint = retry_after.map(|d| d.min(self.cfg.backoff.max_retry_after));
                    let opens = match self.breaker() {
                        BreakerState::HalfOpen | BreakerState::Open => true,
                        BreakerState::Closed => run.transient >= self.cfg.breaker.failure_threshold,
                    };
                    if opens {
                        self.set_breaker(BreakerState::Open);
                        let wait = hint.unwrap_or_default().max(self.cfg.breaker.open_for);
                        if !sleep(&self.shared, wait).await {
                            return Ok(Delivery::Abandoned);
                        }
                        self.set_breaker(BreakerState::HalfOpen);
                        continue;
                    }
                    hint.unwrap_or_else(|| self.rng.upto(self.cfg.backoff.ceiling(run.failures)))
                }
                permanent => {
                    // The sink answered: it is up.
                    run.transient = 0;
                    if self.breaker() != BreakerState::Closed {
                        self.set_breaker(BreakerState::Closed);
                    }
                    let record = match &permanent {
                        SinkError::Record { seq, .. } => {
                            front.batch.entries.iter().position(|e| e.seq == *seq)
                        }
                        _ => None,
                    };
                    match record {
                        Some(i) => {
                            let seq = front.batch.entries[i].seq;
                            let n = strikes.entry(seq).or_insert(0);
                            *n += 1;
                            if *n >= self.cfg.poison_attempts {
                                let attempts = *n;
                                let entry = front.batch.entries.remove(i);
                                let (version, payload) = self.raw_payload(&entry);
                                let letter = self.letter(
                                    seq,
                                    entry.ts_us,
                                    attempts,
                                    permanent.reason().to_string(),
                                    version,
                                    payload,
                                );
                                if !self.put_dead_letter(letter).await {
                                    return Ok(Delivery::Abandoned);
                                }
                                continue;
                            }
                        }
                        None => {
                            front.refusals += 1;
                            if front.refusals >= self.cfg.poison_attempts {
                                if front.batch.len() == 1 {
                                    let entry = front.batch.entries.remove(0);
                                    let (version, payload) = self.raw_payload(&entry);
                                    let letter = self.letter(
                                        entry.seq,
                                        entry.ts_us,
                                        front.refusals,
                                        permanent.reason().to_string(),
                                        version,
                                        payload,
                                    );
                                    if !self.put_dead_letter(letter).await {
                                        return Ok(Delivery::Abandoned);
                                    }
                                } else {
                                    // Split to find the records at fault.
                                    let Some(mut p) = queue.pop_front() else {
                                        continue;
                                    };
                                    let tail = p.batch.entries.split_off(p.batch.entries.len() / 2);
                                    let mut second = Batch {
                                        entries: tail,
                                        ..Batch::new(
                                            p.batch.wal_id.clone(),
                                            p.batch.consumer.clone(),
                                            Vec::new(),
                                        )
                                    };
                                    second.attempt = 0;
                                    p.batch.attempt = 0;
                                    queue.push_front(Pending {
                                        batch: second,
                                        refusals: 0,
                                    });
                                    queue.push_front(Pending {
                                        batch: p.batch,
                                        refusals: 0,
                                    });
                                }
                                continue;
                            }
                        }
                    }
                    self.rng.upto(self.cfg.backoff.ceiling(run.failures))
                }
            };
            if !sleep(&self.shared, delay).await {
                return Ok(Delivery::Abandoned);
            }
        }
        Ok(Delivery::Done)
    }
}

/// Waits for new durable records, a deadline, or shutdown.
async fn wait<S: Storage>(
    shared: &Shared,
    inner: &Inner<S>,
    next: u64,
    deadline: Option<Instant>,
) -> Woke {
    let mut delay = deadline.map(|d| Delay::new(d.saturating_duration_since(Instant::now())));
    let readable = || {
        inner.durable_seq.load(Ordering::Acquire) >= next
            || inner.writer_done.load(Ordering::Acquire)
    };
    future::poll_fn(|cx| {
        shared.waker.register(cx.waker());
        if shared.shutdown.load(Ordering::Acquire) {
            return Poll::Ready(Woke::Shutdown);
        }
        if let Some(d) = delay.as_mut() {
            if d.poll_unpin(cx).is_ready() {
                return Poll::Ready(Woke::Timeout);
            }
        }
        if readable() {
            return Poll::Ready(Woke::Data);
        }
        lock(&inner.read_wakers).push(cx.waker().clone());
        if readable() {
            return Poll::Ready(Woke::Data);
        }
        Poll::Pending
    })
    .await
}

/// Sleeps `d`; false when shutdown was asked for.
async fn sleep(shared: &Shared, d: Duration) -> bool {
    if shared.shutdown.load(Ordering::Acquire) {
        return false;
    }
    if d.is_zero() {
        return true;
    }
    let mut delay = Delay::new(d);
    future::poll_fn(|cx| {
        shared.waker.register(cx.waker());
        if shared.shutdown.load(Ordering::Acquire) {
            return Poll::Ready(false);
        }
        delay.poll_unpin(cx).map(|()| true)
    })
    .await
}

/// Failure counts carried across batches.
#[derive(Debug, Default)]
struct BreakerRun {
    /// Consecutive failed attempts of any kind (drives the backoff).
    failures: u32,
    /// Consecutive transient failures (drives the breaker).
    transient: u32,
}

/// A small xorshift generator for jitter (no `rand` dependency).
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(crate::wal::now_us());
        Rng(h.finish() | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..=max` (full jitter).
    fn upto(&mut self, max: Duration) -> Duration {
        let nanos = max.as_nanos().min(u64::MAX as u128) as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.next() % (nanos + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_send<F: Future + Send>(_: &F) {}

    #[test]
    fn the_run_future_is_send() {
        let wal = Wal::open(crate::Memory::new(), crate::Options::default()).unwrap();
        let sink = FnSink::new(|_: &Batch<u64>| async { Ok(()) });
        let shipper = Shipper::builder(wal.consumer("c").unwrap(), sink)
            .build()
            .expect("valid shipper configuration");
        let fut = shipper.run();
        is_send(&fut);
    }

    #[test]
    fn backoff_ceiling_doubles_up_to_max() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(200));
        assert_eq!(b.ceiling(4), Duration::from_millis(800));
        assert_eq!(b.ceiling(40), Duration::from_secs(30));
        let mut r = Rng::new();
        for _ in 0..1000 {
            assert!(r.upto(Duration::from_millis(5)) <= Duration::from_millis(5));
        }
    }
}
