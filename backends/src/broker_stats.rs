//! What the broker sinks (NATS JetStream, Kafka) share: the round trip of a job to the
//! thread that owns their client's runtime, a window of batch acknowledgement latencies
//! and per-destination (subject or topic) record counts.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use walspool_wal::shipper::SinkError;
use walspool_wal::SinkMetrics;

/// How many of the latest batch latencies the percentiles are taken over.
const WINDOW: usize = 1024;

/// The latest [`WINDOW`] batch-acknowledgement latencies, in microseconds.
#[derive(Debug, Default)]
pub(crate) struct LatencyWindow(Mutex<VecDeque<u64>>);

impl LatencyWindow {
    pub(crate) fn record(&self, d: Duration) {
        let mut l = lock(&self.0);
        if l.len() == WINDOW {
            l.pop_front();
        }
        l.push_back(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// Median, 99th percentile and maximum of the window (0s when it is empty).
    pub(crate) fn p50_p99_max(&self) -> (u64, u64, u64) {
        let mut lat: Vec<u64> = lock(&self.0).iter().copied().collect();
        lat.sort_unstable();
        let pct = |p: usize| {
            if lat.is_empty() {
                0
            } else {
                lat[((lat.len() - 1) * p) / 100]
            }
        };
        (pct(50), pct(99), lat.last().copied().unwrap_or(0))
    }
}

/// Records stored in total and per destination.
#[derive(Debug, Default)]
pub(crate) struct StoredCounts {
    pub(crate) total: AtomicU64,
    per: Mutex<BTreeMap<String, u64>>,
}

impl StoredCounts {
    pub(crate) fn add(&self, stored: BTreeMap<String, u64>) {
        let mut per = lock(&self.per);
        for (dest, n) in stored {
            self.total.fetch_add(n, Ordering::Relaxed);
            *per.entry(dest).or_default() += n;
        }
    }

    pub(crate) fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    pub(crate) fn per_destination(&self) -> BTreeMap<String, u64> {
        lock(&self.per).clone()
    }
}

/// The counters both broker sinks keep; each sink's metrics add their own.
#[derive(Debug, Default)]
pub(crate) struct BrokerCounters {
    /// Records (messages) the broker stored, in total and per destination.
    pub(crate) stored: StoredCounts,
    pub(crate) failed: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) batches_failed: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) connects: AtomicU64,
    pub(crate) disconnects: AtomicU64,
    pub(crate) latency_us: LatencyWindow,
}

impl BrokerCounters {
    /// The figures the WAL's metrics carry for the consumer the sink ships
    /// ([`ConsumerMetrics::sink`](walspool_wal::ConsumerMetrics::sink)).
    pub(crate) fn sink_metrics(&self, kind: &str) -> SinkMetrics {
        let (p50, p99, max) = self.latency_us.p50_p99_max();
        SinkMetrics::new(kind)
            .in_flight(self.in_flight.load(Ordering::Relaxed))
            .stored(self.stored.total())
            .failed(self.failed.load(Ordering::Relaxed))
            .latency_us(p50, p99, max)
            .per_destination(self.stored.per_destination())
    }

    /// A batch acknowledged in full after `d`.
    pub(crate) fn batch_acked(&self, d: Duration) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.latency_us.record(d);
    }
}

/// Hands a job to the sink's own thread and waits for its answer on a `futures`
/// oneshot (so any executor can poll it); `sink` names the sink in the errors.
pub(crate) async fn round_trip<J>(
    tx: &tokio::sync::mpsc::UnboundedSender<J>,
    job: impl FnOnce(futures::channel::oneshot::Sender<Result<(), SinkError>>) -> J,
    sink: &str,
) -> Result<(), SinkError> {
    let (reply, rx) = futures::channel::oneshot::channel();
    tx.send(job(reply))
        .map_err(|_| SinkError::transient(format!("the {sink} sink's thread is gone")))?;
    rx.await.unwrap_or_else(|_| {
        Err(SinkError::transient(format!(
            "the {sink} sink's thread dropped the request"
        )))
    })
}

/// A lock that survives a panic of another holder (the counters stay usable).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_keeps_the_latest_and_ranks_them() {
        let w = LatencyWindow::default();
        assert_eq!(w.p50_p99_max(), (0, 0, 0));
        for us in 1..=2000u64 {
            w.record(Duration::from_micros(us));
        }
        // The window holds 977..=2000.
        let (p50, p99, max) = w.p50_p99_max();
        assert_eq!(max, 2000);
        assert_eq!(p50, 977 + (1023 * 50) / 100);
        assert_eq!(p99, 977 + (1023 * 99) / 100);
    }

    #[test]
    fn stored_counts_add_up() {
        let s = StoredCounts::default();
        s.add(BTreeMap::from([("a".to_string(), 2), ("b".to_string(), 3)]));
        s.add(BTreeMap::from([("a".to_string(), 1)]));
        assert_eq!(s.total(), 6);
        assert_eq!(s.per_destination()["a"], 3);
    }
}
