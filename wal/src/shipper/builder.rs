//! Configuration: the builder, its defaults and their validation.

#[allow(unused_imports)]
use super::*;

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
pub(super) struct Config {
    pub(super) batch_max: usize,
    pub(super) batch_max_bytes: usize,
    pub(super) linger: Duration,
    pub(super) send_timeout: Duration,
    pub(super) backoff: Backoff,
    pub(super) breaker: Breaker,
    pub(super) poison_attempts: u32,
    pub(super) pipeline_checkpoint: bool,
}

impl Config {
    pub(super) fn validate(&self) -> Result<()> {
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

/// Builds a [`Shipper`]; see the [module documentation](super) for the defaults.
pub struct ShipperBuilder<S: Storage, T: Send + Sync + 'static> {
    pub(super) consumer: Consumer<S>,
    pub(super) sink: Box<dyn Sink<T>>,
    pub(super) dead_letter: Option<Arc<dyn DeadLetterStore>>,
    pub(super) cfg: Config,
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

    /// Overlap a batch's checkpoint write (an fsync) with reading and sending the next
    /// batch when a full batch is already waiting (default `true`). One checkpoint
    /// write is in flight at a time and the checkpoint never covers a record the sink
    /// has not acknowledged; the price is that after a crash up to one acknowledged
    /// batch more than the one in flight may be sent again (its checkpoint write had
    /// not completed). `false` commits each batch before sending the next: only the
    /// batch in flight is resent, at the cost of one fsync per batch on the sending
    /// path (BENCHMARKS.md: 1.41x records/s into a no-op sink with it on).
    pub fn pipeline_checkpoint(mut self, on: bool) -> Self {
        self.cfg.pipeline_checkpoint = on;
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
