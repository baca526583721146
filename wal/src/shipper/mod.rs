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
//!   (or the parts of it that could never be delivered went to the dead letter); with
//!   a full batch already waiting, that checkpoint write (an fsync) overlaps reading
//!   and sending the next batch: one in flight, committed in order, and waited for
//!   before any retry, so a sink outage never holds back a checkpoint already earned
//!   (after a crash, up to one acknowledged batch more may be resent; see
//!   [`ShipperBuilder::pipeline_checkpoint`]);
//! * a failed attempt is retried after an exponential backoff with full jitter
//!   ([`Backoff`]: a delay drawn uniformly from `0..=min(max, initial * 2^n)`; defaults
//!   100 ms and 30 s), or after the sink's retry-after hint when it gives one (capped by
//!   [`Backoff::max_retry_after`], default 5 min);
//! * a circuit breaker ([`Breaker`]: opens after 5 consecutive transient failures, stays
//!   open 30 s, then lets one trial batch through — half-open) stops hammering a sink
//!   that is down; its state is published with [`Hooks::record_breaker_state`](crate::hooks::Hooks::record_breaker_state) and shows
//!   in [`Metrics::breaker_state`](crate::Metrics::breaker_state);
//! * a sink that keeps figures of its own ([`Sink::metrics_source`]: records in flight,
//!   publish latency, records per destination) has them read live into
//!   [`ConsumerMetrics::sink`](crate::ConsumerMetrics::sink) (installed with
//!   [`Hooks::set_sink_metrics`](crate::hooks::Hooks::set_sink_metrics) when the shipper starts);
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

mod backoff;
mod batch;
mod batching;
mod breaker;
mod builder;
mod dead_letter;
mod handle;

pub use backoff::*;
pub use batch::*;
pub use breaker::*;
pub use builder::*;
pub use dead_letter::*;
pub use handle::*;

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

/// A checkpoint write started and not yet waited for: its sequence number and what
/// resolves once it is durable.
type PendingCommit = (u64, futures::future::BoxFuture<'static, Result<()>>);

/// Waits for a commit started earlier and publishes it; `false` when the WAL closed
/// first.
async fn settle(shared: &Shared, pending: Option<PendingCommit>) -> Result<bool> {
    let Some((seq, done)) = pending else {
        return Ok(true);
    };
    match done.await {
        Ok(()) => {
            shared.committed(seq);
            Ok(true)
        }
        Err(Error::Closed) => Ok(false),
        Err(e) => Err(e),
    }
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
                pipeline_checkpoint: true,
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
        if let Some(source) = self.sink.metrics_source() {
            self.consumer
                .wal()
                .hooks()
                .set_sink_metrics(&self.consumer_name, source);
        }
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
        let mut pending: Option<PendingCommit> = None;
        let r = self.run_batches(&mut pending).await;
        // Whatever happened, a checkpoint already started is seen through: the sink
        // acknowledged those records.
        let settled = settle(&self.shared, pending.take()).await;
        r.and(settled.map(drop))
    }

    async fn run_batches(&mut self, pending: &mut Option<PendingCommit>) -> Result<()> {
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
            match self.deliver(batch, &mut state, pending).await? {
                Delivery::Abandoned => return Ok(()),
                Delivery::Done => {}
            }
            // One checkpoint write in flight at a time, in order.
            if !settle(&self.shared, pending.take()).await? {
                return Ok(());
            }
            let done = self.consumer.commit_start(through);
            self.shared.update(|s| s.in_flight = None);
            // With a full batch already waiting, read and send it while the checkpoint
            // becomes durable (an fsync or two); else wait for it here, so that an idle
            // shipper's checkpoint is never left unpublished.
            let backlog = inner
                .durable_seq
                .load(Ordering::Acquire)
                .saturating_sub(through);
            if self.cfg.pipeline_checkpoint && backlog >= self.cfg.batch_max as u64 {
                *pending = Some((through, Box::pin(done)));
            } else if !settle(&self.shared, Some((through, Box::pin(done)))).await? {
                return Ok(());
            }
        }
    }

    fn stopping(&self) -> bool {
        self.shared.shutdown.load(Ordering::Acquire)
    }

    /// The stored schema version and bytes of a record, for its dead letter.
    fn raw_payload(&self, entry: &Entry<T>) -> (u8, Vec<u8>) {
        let mut r = RawReader::new(self.consumer.wal().inner.clone(), entry.seq);
        match r.next_frame() {
            Ok(Some((seq, _, version, bytes))) if seq == entry.seq => (version, bytes),
            _ => (self.consumer.wal().options().schema.version(), Vec::new()),
        }
    }

    /// Delivers a batch until every record is acknowledged or dead-lettered.
    async fn deliver(
        &mut self,
        batch: Batch<T>,
        run: &mut BreakerRun,
        pending: &mut Option<PendingCommit>,
    ) -> Result<Delivery> {
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
            // Retries may take long: publish the previous batch's checkpoint first.
            if !settle(&self.shared, pending.take()).await? {
                return Ok(Delivery::Abandoned);
            }
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
