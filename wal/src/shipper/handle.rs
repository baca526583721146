//! Watching and stopping a shipper: status, handles, the shipper thread.

#[allow(unused_imports)]
use super::*;

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

pub(super) struct Shared {
    pub(super) shutdown: AtomicBool,
    pub(super) waker: AtomicWaker,
    pub(super) status: Mutex<ShipperStatus>,
    pub(super) commit_wakers: Mutex<Vec<Waker>>,
    pub(super) commit_cv: Condvar,
}

impl Shared {
    pub(super) fn update(&self, f: impl FnOnce(&mut ShipperStatus)) {
        f(&mut lock(&self.status));
    }

    pub(super) fn committed(&self, seq: u64) {
        {
            // Never backwards: a pipelined checkpoint may be published after a later one.
            let mut st = lock(&self.status);
            st.committed_seq = st.committed_seq.max(seq);
        }
        self.notify();
    }

    pub(super) fn notify(&self) {
        self.commit_cv.notify_all();
        for w in std::mem::take(&mut *lock(&self.commit_wakers)) {
            w.wake();
        }
    }
}

/// Controls a running [`Shipper`]; cheap to clone.
#[derive(Clone)]
pub struct ShipperHandle {
    pub(super) shared: Arc<Shared>,
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
    pub(super) handle: ShipperHandle,
    pub(super) join: Option<std::thread::JoinHandle<Result<ShipperStatus>>>,
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

    pub(super) fn join_inner(&mut self) -> Result<ShipperStatus> {
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
