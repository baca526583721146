//! The sink side: idempotency keys, batches, sink errors, the `Sink` trait.

#[allow(unused_imports)]
use super::*;

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
    pub(super) wal_id: Arc<str>,
    pub(super) consumer: Arc<str>,
    pub(super) entries: Vec<Entry<T>>,
    pub(super) attempt: u32,
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

    pub(super) fn reason(&self) -> &str {
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
///
/// A sink that keeps figures of its own (records in flight, publish latency, records
/// per destination) offers them with [`metrics_source`](Sink::metrics_source): the
/// shipper hands that to the WAL, whose [`Wal::metrics`] (and so the stats file,
/// `walspool status` and `walspool top`) then carries them in
/// [`ConsumerMetrics::sink`](crate::ConsumerMetrics::sink).
#[async_trait]
pub trait Sink<T: Send + Sync + 'static>: Send {
    /// Delivers one batch.
    async fn send(&mut self, batch: &Batch<T>) -> Result<(), SinkError>;

    /// Where the sink's own figures are read, live: a function the WAL calls at every
    /// snapshot (so it must be cheap and must not wait on the sink's work; reading
    /// counters the sink shares behind an `Arc` is the idea). `None` (the default):
    /// the sink keeps no figures.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    /// use async_trait::async_trait;
    /// use walspool_wal::shipper::{Batch, Sink, SinkError, SinkMetricsSource};
    /// use walspool_wal::SinkMetrics;
    ///
    /// struct Counting(Arc<AtomicU64>);
    ///
    /// #[async_trait]
    /// impl Sink<String> for Counting {
    ///     async fn send(&mut self, batch: &Batch<String>) -> Result<(), SinkError> {
    ///         self.0.fetch_add(batch.len() as u64, Ordering::Relaxed);
    ///         Ok(())
    ///     }
    ///     fn metrics_source(&self) -> Option<SinkMetricsSource> {
    ///         let n = self.0.clone();
    ///         Some(Arc::new(move || SinkMetrics::new("counting").stored(n.load(Ordering::Relaxed))))
    ///     }
    /// }
    /// ```
    fn metrics_source(&self) -> Option<SinkMetricsSource> {
        None
    }
}

/// A function that reads a sink's figures; see [`Sink::metrics_source`].
pub type SinkMetricsSource = Arc<dyn Fn() -> crate::SinkMetrics + Send + Sync>;

#[async_trait]
impl<T: Send + Sync + 'static> Sink<T> for Box<dyn Sink<T>> {
    async fn send(&mut self, batch: &Batch<T>) -> Result<(), SinkError> {
        (**self).send(batch).await
    }

    fn metrics_source(&self) -> Option<SinkMetricsSource> {
        (**self).metrics_source()
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
    pub(super) f: F,
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
