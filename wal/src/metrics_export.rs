//! The `metrics` feature: a WAL's figures published through the [`metrics`] facade,
//! to whatever recorder the service installed (`metrics-exporter-prometheus`,
//! StatsD, OpenTelemetry, …).
//!
//! [`MetricsExporter::start`] publishes a snapshot every interval from its own thread,
//! and records every fdatasync's latency into the histogram
//! [`wal_fsync_duration_seconds`](crate::metrics::FSYNC_HISTOGRAM_METRIC) as it
//! happens. [`publish`] publishes one snapshot, for services that drive their own
//! timer. The names, kinds and help texts are the ones
//! [`Metrics::render_prometheus`] uses ([`FIGURES`], [`CONSUMER_FIGURES`],
//! [`BREAKER_STATE_METRIC`], [`SINK_FIGURES`], [`SINK_INFO_METRIC`],
//! [`SINK_DESTINATION_METRIC`]): counters are set to their absolute values, gauges to
//! theirs; every series carries the label `wal_id`, per-consumer ones `consumer`,
//! plus the labels given to the exporter.
//!
//! With `metrics-exporter-prometheus`, give the histogram the buckets
//! `render_prometheus` uses, or it renders as a summary:
//! `PrometheusBuilder::new().set_buckets_for_metric(Matcher::Full(FSYNC_HISTOGRAM_METRIC.into()), &buckets)`
//! with `buckets` = [`FSYNC_BUCKETS_US`](crate::metrics::FSYNC_BUCKETS_US) in seconds
//! (`wal/tests/metrics_export_prometheus.rs` renders it so and checks the text with
//! `promtool check metrics`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use walspool_wal::metrics_export::MetricsExporter;
//! use walspool_wal::{Memory, Options, Wal};
//!
//! // A recorder installed by the service, e.g.
//! // metrics_exporter_prometheus::PrometheusBuilder::new().install()?;
//! let wal = Wal::open(Memory::new(), Options::default())?;
//! let exporter = MetricsExporter::start(&wal, Duration::from_secs(5), [("service", "orders")])?;
//! // ...
//! exporter.stop(); // also on drop
//! wal.close().await?;
//! # Ok(()) }
//! ```

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use ::metrics::{Label, Unit};

use crate::metrics::{
    FigureKind, FsyncSlot, Metrics, BREAKER_STATES, BREAKER_STATE_HELP, BREAKER_STATE_METRIC,
    CONSUMER_FIGURES, FIGURES, FSYNC_HISTOGRAM_HELP, FSYNC_HISTOGRAM_METRIC, SINK_DESTINATION_HELP,
    SINK_DESTINATION_METRIC, SINK_FIGURES, SINK_INFO_HELP, SINK_INFO_METRIC,
};
use crate::storage::Storage;
use crate::wal::{Inner, Wal};

fn unit_of(name: &str) -> Option<Unit> {
    if name.ends_with("_seconds") {
        Some(Unit::Seconds)
    } else if name.ends_with("_bytes") || name.ends_with("_bytes_total") {
        Some(Unit::Bytes)
    } else {
        None
    }
}

/// Describes every figure to the installed recorder (help text and unit). Called by
/// [`MetricsExporter::start`]; call it yourself when you only use [`publish`].
pub fn describe() {
    for f in FIGURES
        .iter()
        .map(|f| (f.name, f.kind, f.help))
        .chain(CONSUMER_FIGURES.iter().map(|f| (f.name, f.kind, f.help)))
        .chain(SINK_FIGURES.iter().map(|f| (f.name, f.kind, f.help)))
    {
        match (f.1, unit_of(f.0)) {
            (FigureKind::Counter, Some(u)) => ::metrics::describe_counter!(f.0, u, f.2),
            (FigureKind::Counter, None) => ::metrics::describe_counter!(f.0, f.2),
            (FigureKind::Gauge, Some(u)) => ::metrics::describe_gauge!(f.0, u, f.2),
            (FigureKind::Gauge, None) => ::metrics::describe_gauge!(f.0, f.2),
        }
    }
    ::metrics::describe_gauge!(BREAKER_STATE_METRIC, BREAKER_STATE_HELP);
    ::metrics::describe_gauge!(SINK_INFO_METRIC, SINK_INFO_HELP);
    ::metrics::describe_counter!(SINK_DESTINATION_METRIC, SINK_DESTINATION_HELP);
    ::metrics::describe_histogram!(FSYNC_HISTOGRAM_METRIC, Unit::Seconds, FSYNC_HISTOGRAM_HELP);
}

fn base_labels<K: AsRef<str>, V: AsRef<str>>(
    wal_id: &str,
    extra: impl IntoIterator<Item = (K, V)>,
) -> Vec<Label> {
    let mut v = vec![Label::new("wal_id", wal_id.to_string())];
    v.extend(
        extra
            .into_iter()
            .map(|(k, val)| Label::new(k.as_ref().to_string(), val.as_ref().to_string())),
    );
    v
}

/// Publishes one snapshot through the facade: every figure of [`FIGURES`] and, per
/// consumer, [`CONSUMER_FIGURES`] and [`BREAKER_STATE_METRIC`], and for a consumer whose
/// sink reports figures [`SINK_INFO_METRIC`], [`SINK_FIGURES`] and
/// [`SINK_DESTINATION_METRIC`]; labelled `wal_id`
/// (and `consumer`) plus `labels`. The fsync histogram is not in a snapshot: a
/// [`MetricsExporter`] records it per fdatasync.
pub fn publish<K: AsRef<str>, V: AsRef<str>>(
    m: &Metrics,
    labels: impl IntoIterator<Item = (K, V)>,
) {
    let base = base_labels(&m.wal_id, labels);
    for f in &FIGURES {
        let v = (f.value)(m);
        match f.kind {
            FigureKind::Counter => ::metrics::counter!(f.name, base.clone()).absolute(v as u64),
            FigureKind::Gauge => ::metrics::gauge!(f.name, base.clone()).set(v),
        }
    }
    for c in &m.consumers {
        let mut l = base.clone();
        l.push(Label::new("consumer", c.name.clone()));
        for f in &CONSUMER_FIGURES {
            ::metrics::gauge!(f.name, l.clone()).set((f.value)(c));
        }
        if !c.breaker_state.is_empty() {
            for st in BREAKER_STATES {
                let mut ls = l.clone();
                ls.push(Label::new("state", st));
                ::metrics::gauge!(BREAKER_STATE_METRIC, ls)
                    .set(f64::from(u8::from(c.breaker_state == st)));
            }
        }
        if let Some(s) = &c.sink {
            let mut li = l.clone();
            li.push(Label::new("kind", s.kind.clone()));
            ::metrics::gauge!(SINK_INFO_METRIC, li).set(1.0);
            for f in &SINK_FIGURES {
                let v = (f.value)(s);
                match f.kind {
                    FigureKind::Counter => {
                        ::metrics::counter!(f.name, l.clone()).absolute(v as u64)
                    }
                    FigureKind::Gauge => ::metrics::gauge!(f.name, l.clone()).set(v),
                }
            }
            for (d, n) in &s.per_destination {
                let mut ld = l.clone();
                ld.push(Label::new("destination", d.clone()));
                ::metrics::counter!(SINK_DESTINATION_METRIC, ld).absolute(*n);
            }
        }
    }
}

/// Publishes a WAL's figures through the [`metrics`] facade every interval, from a
/// thread of its own, and its fsync latencies as they happen. Stops on
/// [`MetricsExporter::stop`] or drop (after one last publication), or when the WAL is
/// dropped (it does not keep the WAL alive).
pub struct MetricsExporter {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    fsync: FsyncSlot,
}

impl std::fmt::Debug for MetricsExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsExporter")
            .field("running", &self.thread.is_some())
            .finish()
    }
}

impl MetricsExporter {
    /// Describes the figures, publishes a first snapshot at once, then one every
    /// `every`, with `labels` added to every series. The fsync histogram is registered
    /// with the recorder installed now.
    pub fn start<S: Storage, K: AsRef<str>, V: AsRef<str>>(
        wal: &Wal<S>,
        every: Duration,
        labels: impl IntoIterator<Item = (K, V)>,
    ) -> std::io::Result<Self> {
        let labels: Vec<(String, String)> = labels
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string()))
            .collect();
        describe();
        let inner: Arc<Inner<S>> = wal.inner.clone();
        let hist = ::metrics::histogram!(
            FSYNC_HISTOGRAM_METRIC,
            base_labels(&inner.wal_id, labels.iter().map(|(k, v)| (k, v)))
        );
        let fsync = inner.counters.fsync_facade.clone();
        fsync.set(Some(hist));
        // A weak reference: the exporter does not keep a dropped WAL (and its directory
        // lock) alive; it stops when the WAL is gone.
        let weak: Weak<Inner<S>> = Arc::downgrade(&inner);
        drop(inner);
        let once = move || match weak.upgrade() {
            Some(inner) => {
                publish(&inner.snapshot(), labels.iter().map(|(k, v)| (k, v)));
                true
            }
            None => false,
        };
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("walspool-metrics".into())
            .spawn(move || {
                while once() {
                    match rx.recv_timeout(every) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                            once();
                            return;
                        }
                    }
                }
            })?;
        Ok(MetricsExporter {
            stop: Some(tx),
            thread: Some(thread),
            fsync,
        })
    }

    /// Publishes a last snapshot and stops.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        self.fsync.set(None);
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsExporter {
    fn drop(&mut self) {
        self.shut();
    }
}
