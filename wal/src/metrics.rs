//! Metrics: counters kept by the WAL, the snapshot [`Metrics`], Prometheus text and
//! the stats file published for the monitor.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Schema id of the stats file (`stats.json` in the WAL directory).
pub const STATS_SCHEMA: &str = "walspool-stats/1";
/// Name of the stats file.
pub const STATS_FILE: &str = "stats.json";

/// Per-consumer figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ConsumerMetrics {
    /// Consumer name.
    pub name: String,
    /// Last committed sequence number (0 = nothing yet).
    pub committed_seq: u64,
    /// Records after the checkpoint that are still on disk.
    pub backlog_records: u64,
    /// Approximate bytes of those records.
    pub backlog_bytes: u64,
    /// Backlog age: how old the oldest record after the checkpoint is, ms (0 when the
    /// backlog is empty). Read from the append times the WAL keeps in memory (within
    /// [`BACKLOG_AGE_GRAIN_US`]); for records appended before the WAL was opened, an
    /// upper bound: the age of the segment that holds the record.
    #[serde(default)]
    pub backlog_age_ms: u64,
    /// Circuit breaker state of the consumer's shipper (`closed`, `open`, `half-open`),
    /// empty when no shipper runs for it.
    #[serde(default)]
    pub breaker_state: String,
    /// What the consumer's sink reports about itself (NATS JetStream, Kafka, or any
    /// sink that implements [`Sink::metrics_source`](crate::shipper::Sink::metrics_source)),
    /// read live at each snapshot; `None` when no shipper runs for it or its sink keeps
    /// no figures.
    #[serde(default)]
    pub sink: Option<SinkMetrics>,
}

/// A sink's own figures, as its shipper reports them into
/// [`ConsumerMetrics::sink`]. Build one with [`SinkMetrics::new`] and the setters.
///
/// ```
/// use std::collections::BTreeMap;
/// use walspool_wal::SinkMetrics;
/// let m = SinkMetrics::new("kafka")
///     .in_flight(3)
///     .stored(120)
///     .failed(2)
///     .latency_us(1_200, 4_000, 9_100)
///     .per_destination(BTreeMap::from([("audit.login".to_string(), 120)]));
/// assert_eq!((m.kind.as_str(), m.in_flight, m.p99_us), ("kafka", 3, 4_000));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct SinkMetrics {
    /// What kind of sink: `kafka`, `nats`, or another short name.
    pub kind: String,
    /// Records sent and awaiting the destination's acknowledgement now.
    pub in_flight: u64,
    /// Records the destination acknowledged (stored), redeliveries included, since the
    /// sink was built.
    pub stored: u64,
    /// Records whose publication failed (no acknowledgement, or an error), since the
    /// sink was built.
    pub failed: u64,
    /// Median publish latency (a batch's first publish to its last acknowledgement)
    /// over the sink's recent batches, µs (0 before the first batch).
    pub p50_us: u64,
    /// 99th percentile of the same latency, µs.
    pub p99_us: u64,
    /// Maximum of the same latency, µs.
    pub max_us: u64,
    /// Records acknowledged per destination (Kafka topic, NATS subject).
    pub per_destination: BTreeMap<String, u64>,
}

impl SinkMetrics {
    /// Figures of a sink of `kind` (`kafka`, `nats`, …), all zero.
    pub fn new(kind: impl Into<String>) -> Self {
        SinkMetrics {
            kind: kind.into(),
            ..SinkMetrics::default()
        }
    }

    /// Sets [`in_flight`](Self::in_flight).
    pub fn in_flight(mut self, records: u64) -> Self {
        self.in_flight = records;
        self
    }

    /// Sets [`stored`](Self::stored).
    pub fn stored(mut self, records: u64) -> Self {
        self.stored = records;
        self
    }

    /// Sets [`failed`](Self::failed).
    pub fn failed(mut self, records: u64) -> Self {
        self.failed = records;
        self
    }

    /// Sets the publish latency: median, 99th percentile and maximum, µs.
    pub fn latency_us(mut self, p50: u64, p99: u64, max: u64) -> Self {
        self.p50_us = p50;
        self.p99_us = p99;
        self.max_us = max;
        self
    }

    /// Sets [`per_destination`](Self::per_destination).
    pub fn per_destination(mut self, counts: BTreeMap<String, u64>) -> Self {
        self.per_destination = counts;
        self
    }

    /// What a destination is called for this kind of sink: `topic` (Kafka), `subject`
    /// (NATS), else `destination`.
    pub fn destination_label(&self) -> &'static str {
        match self.kind.as_str() {
            "kafka" => "topic",
            "nats" => "subject",
            _ => "destination",
        }
    }
}

/// One segment, as listed in the metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SegmentMetrics {
    /// File name.
    pub file: String,
    /// First sequence number it holds.
    pub first_seq: u64,
    /// Last sequence number it holds (for the active segment: the last written so far;
    /// `first_seq - 1` when empty).
    pub last_seq: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// Sealed (immutable) or the active segment.
    pub sealed: bool,
    /// Uploaded to the archive.
    pub archived: bool,
}

/// A snapshot of a WAL's state. The first seven fields are ADR-0017's metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Metrics {
    /// Records not yet committed by the slowest consumer (all records when there is none).
    pub backlog_records: u64,
    /// Approximate bytes of those records.
    pub backlog_bytes: u64,
    /// Failed sink deliveries (batches) since the WAL was created.
    pub ship_errors_total: u64,
    /// Records dropped by bounds (`DropOldest`, `max_age`) before every consumer had them.
    pub dropped_records_total: u64,
    /// Time of the last successful delivery, ms since the Unix epoch (0 = never).
    pub last_ship_ts: u64,
    /// The segment being appended to.
    pub current_file: String,
    /// The byte offset the next record goes to in `current_file`.
    pub current_offset: u64,

    /// The WAL's stable id.
    pub wal_id: String,
    /// First sequence number still on disk (0 if none).
    pub first_seq: u64,
    /// Last sequence number appended (0 if none).
    pub last_seq: u64,
    /// Last sequence number known durable.
    pub durable_seq: u64,
    /// Records appended since open.
    pub appended_records_total: u64,
    /// Payload bytes appended since open.
    pub appended_bytes_total: u64,
    /// fdatasync calls since open.
    pub fsyncs_total: u64,
    /// fdatasync latency since open, as a histogram.
    #[serde(default)]
    pub fsync_latency: LatencyHistogram,
    /// Median fdatasync latency over the last 1024, µs.
    pub fsync_p50_us: u64,
    /// 99th percentile fdatasync latency over the last 1024, µs.
    pub fsync_p99_us: u64,
    /// Segments on disk.
    pub segment_count: u64,
    /// Bytes of all segments on disk.
    pub disk_bytes: u64,
    /// Backlog age: how old the oldest record some consumer has not committed is, ms
    /// (the largest [`ConsumerMetrics::backlog_age_ms`]; without consumers, the age of
    /// the oldest record on disk; 0 when nothing is unshipped).
    pub oldest_unshipped_age_ms: u64,
    /// The backlog ages of records from this sequence number on (the records appended
    /// since the WAL was opened) are exact to [`BACKLOG_AGE_GRAIN_US`]; older records
    /// are dated by their segment's creation time (an upper bound on their age). 0 when
    /// nothing was appended since open.
    #[serde(default)]
    pub backlog_age_exact_from_seq: u64,
    /// Torn or corrupt tail bytes cut at open since the WAL was created.
    pub torn_tail_bytes_cut_total: u64,
    /// Records skipped in lenient recovery mode.
    pub corrupt_skipped_total: u64,
    /// Circuit breaker state of the slowest consumer's shipper (`closed`, `open`,
    /// `half-open`, or empty when none runs).
    pub breaker_state: String,
    /// Records moved to the dead letter after repeated permanent failures.
    pub dead_letter_total: u64,
    /// Failed archive uploads.
    pub archive_errors_total: u64,
    /// Sealed segments deleted locally (by `max_age` or `DropOldest`) before they were
    /// archived: records missing from the archive for good.
    #[serde(default)]
    pub archive_lost_segments_total: u64,
    /// Sealed segments not yet archived (0 when archival is off).
    pub archive_lag_segments: u64,
    /// Bytes of those segments.
    pub archive_lag_bytes: u64,
    /// Time of the last successful upload, ms since the Unix epoch (0 = never).
    pub last_archive_ts: u64,
    /// Whether an archiver is attached.
    pub archiving: bool,
    /// Per-consumer figures.
    pub consumers: Vec<ConsumerMetrics>,
    /// The segments on disk, oldest first.
    pub segments: Vec<SegmentMetrics>,
}

/// Upper bounds of the buckets of [`Metrics::fsync_latency`], µs (10µs to 5s).
pub const FSYNC_BUCKETS_US: [u64; 18] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 2_500_000, 5_000_000,
];

/// A latency histogram, Prometheus style.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LatencyHistogram {
    /// Upper bounds of the buckets, µs, ascending.
    pub bounds_us: Vec<u64>,
    /// Observations per bucket, not cumulative: `counts[i]` fell in
    /// `(bounds_us[i-1], bounds_us[i]]`; one more entry than `bounds_us` counts those
    /// above the last bound.
    pub counts: Vec<u64>,
    /// Sum of the observations, µs.
    pub sum_us: u64,
}

impl LatencyHistogram {
    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// The stats file as published in the WAL directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsFile {
    /// Always [`STATS_SCHEMA`].
    pub schema: String,
    /// Process id of the writer.
    pub pid: u32,
    /// When it was written, ms since the Unix epoch.
    pub written_at_ms: u64,
    /// How often the writer publishes it, ms. A file older than a few intervals means
    /// the writer is gone or stuck.
    pub interval_ms: u64,
    /// Where the WAL lives.
    pub location: String,
    /// Set on a clean close.
    pub closed: bool,
    /// The figures.
    pub metrics: Metrics,
}

impl StatsFile {
    /// Parses a stats file, with a clear error for garbage or an unknown schema.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let v: StatsFile =
            serde_json::from_slice(bytes).map_err(|e| format!("stats file is not valid: {e}"))?;
        if v.schema != STATS_SCHEMA {
            return Err(format!(
                "stats file has schema {:?}; this build reads {STATS_SCHEMA:?}",
                v.schema
            ));
        }
        Ok(v)
    }
}

/// What kind of figure a [`Figure`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FigureKind {
    /// Only goes up (while the WAL lives; some survive restarts).
    Counter,
    /// Goes up and down.
    Gauge,
}

impl FigureKind {
    /// `counter` or `gauge`, as in a `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            FigureKind::Counter => "counter",
            FigureKind::Gauge => "gauge",
        }
    }
}

/// One exported figure of a [`Metrics`] snapshot: its metric name (Prometheus
/// conventions: base unit in the name, `_total` on counters), kind, help text and
/// value. [`Metrics::render_prometheus`] and the `metrics` feature's exporter both
/// publish [`FIGURES`], [`CONSUMER_FIGURES`], `wal_breaker_state`, the sink figures
/// ([`SINK_FIGURES`], `wal_sink_info`, `wal_sink_destination_records_total`) and the
/// fsync histogram, so the two always carry the same names.
#[derive(Debug, Clone, Copy)]
pub struct Figure<T> {
    /// Metric name.
    pub name: &'static str,
    /// Counter or gauge.
    pub kind: FigureKind,
    /// One line of help.
    pub help: &'static str,
    /// The value, in the unit the name says.
    pub value: fn(&T) -> f64,
}

const fn fig<T>(
    name: &'static str,
    kind: FigureKind,
    help: &'static str,
    value: fn(&T) -> f64,
) -> Figure<T> {
    Figure {
        name,
        kind,
        help,
        value,
    }
}

use FigureKind::{Counter, Gauge};

/// The WAL-wide figures, labelled `wal_id`.
pub const FIGURES: [Figure<Metrics>; 26] = [
    fig(
        "wal_backlog_records",
        Gauge,
        "Records not yet committed by the slowest consumer (all records when there is no consumer).",
        |m| m.backlog_records as f64,
    ),
    fig(
        "wal_backlog_bytes",
        Gauge,
        "Approximate bytes of the records not yet committed by the slowest consumer.",
        |m| m.backlog_bytes as f64,
    ),
    fig(
        "wal_backlog_age_seconds",
        Gauge,
        "Age of the oldest record some consumer has not committed (0 when none).",
        |m| m.oldest_unshipped_age_ms as f64 / 1000.0,
    ),
    fig(
        "wal_ship_errors_total",
        Counter,
        "Failed sink deliveries (batches) since the WAL was created.",
        |m| m.ship_errors_total as f64,
    ),
    fig(
        "wal_dropped_records_total",
        Counter,
        "Records dropped by retention bounds before every consumer had them.",
        |m| m.dropped_records_total as f64,
    ),
    fig(
        "wal_last_ship_timestamp_seconds",
        Gauge,
        "Unix time of the last successful delivery (0 = never).",
        |m| m.last_ship_ts as f64 / 1000.0,
    ),
    fig(
        "wal_current_segment_base_seq",
        Gauge,
        "First sequence number of the segment being appended to (it names the file).",
        |m| m.current_segment_base_seq() as f64,
    ),
    fig(
        "wal_current_offset_bytes",
        Gauge,
        "Byte offset of the next append in the segment being appended to.",
        |m| m.current_offset as f64,
    ),
    fig(
        "wal_first_seq",
        Gauge,
        "First sequence number still on disk (0 when none).",
        |m| m.first_seq as f64,
    ),
    fig(
        "wal_last_seq",
        Gauge,
        "Last sequence number appended (0 when none).",
        |m| m.last_seq as f64,
    ),
    fig(
        "wal_durable_seq",
        Gauge,
        "Last sequence number known durable.",
        |m| m.durable_seq as f64,
    ),
    fig(
        "wal_appended_records_total",
        Counter,
        "Records appended since the WAL was opened.",
        |m| m.appended_records_total as f64,
    ),
    fig(
        "wal_appended_bytes_total",
        Counter,
        "Payload bytes appended since the WAL was opened.",
        |m| m.appended_bytes_total as f64,
    ),
    fig(
        "wal_fsyncs_total",
        Counter,
        "fdatasync calls since the WAL was opened.",
        |m| m.fsyncs_total as f64,
    ),
    fig(
        "wal_segments",
        Gauge,
        "Segment files on disk.",
        |m| m.segment_count as f64,
    ),
    fig(
        "wal_disk_bytes",
        Gauge,
        "Bytes of all segment files on disk.",
        |m| m.disk_bytes as f64,
    ),
    fig(
        "wal_torn_tail_cut_bytes_total",
        Counter,
        "Torn or corrupt tail bytes cut at open since the WAL was created.",
        |m| m.torn_tail_bytes_cut_total as f64,
    ),
    fig(
        "wal_corrupt_skipped_records_total",
        Counter,
        "Records skipped over damage in lenient recovery mode.",
        |m| m.corrupt_skipped_total as f64,
    ),
    fig(
        "wal_dead_letter_records_total",
        Counter,
        "Records moved to a dead letter after repeated permanent failures.",
        |m| m.dead_letter_total as f64,
    ),
    fig(
        "wal_archiving",
        Gauge,
        "1 when an archiver is attached.",
        |m| f64::from(u8::from(m.archiving)),
    ),
    fig(
        "wal_archive_errors_total",
        Counter,
        "Failed archive uploads.",
        |m| m.archive_errors_total as f64,
    ),
    fig(
        "wal_archive_lost_segments_total",
        Counter,
        "Sealed segments deleted locally before they were archived.",
        |m| m.archive_lost_segments_total as f64,
    ),
    fig(
        "wal_archive_lag_segments",
        Gauge,
        "Sealed segments not yet archived.",
        |m| m.archive_lag_segments as f64,
    ),
    fig(
        "wal_archive_lag_bytes",
        Gauge,
        "Bytes of the sealed segments not yet archived.",
        |m| m.archive_lag_bytes as f64,
    ),
    fig(
        "wal_last_archive_timestamp_seconds",
        Gauge,
        "Unix time of the last successful archive upload (0 = never).",
        |m| m.last_archive_ts as f64 / 1000.0,
    ),
    fig(
        "wal_consumers",
        Gauge,
        "Named consumers (each holds back retention until it commits).",
        |m| m.consumers.len() as f64,
    ),
];

/// The per-consumer figures, labelled `wal_id` and `consumer`.
pub const CONSUMER_FIGURES: [Figure<ConsumerMetrics>; 4] = [
    fig(
        "wal_consumer_committed_seq",
        Gauge,
        "Last sequence number the consumer committed (0 = nothing yet).",
        |c| c.committed_seq as f64,
    ),
    fig(
        "wal_consumer_backlog_records",
        Gauge,
        "Records after the consumer's checkpoint still on disk.",
        |c| c.backlog_records as f64,
    ),
    fig(
        "wal_consumer_backlog_bytes",
        Gauge,
        "Approximate bytes of the records after the consumer's checkpoint.",
        |c| c.backlog_bytes as f64,
    ),
    fig(
        "wal_consumer_backlog_age_seconds",
        Gauge,
        "Age of the oldest record the consumer has not committed (0 when none).",
        |c| c.backlog_age_ms as f64 / 1000.0,
    ),
];

/// The figures of a consumer's sink ([`ConsumerMetrics::sink`]), labelled `wal_id` and
/// `consumer`, for the consumers whose sink reports them.
pub const SINK_FIGURES: [Figure<SinkMetrics>; 6] = [
    fig(
        "wal_sink_in_flight_records",
        Gauge,
        "Records the consumer's sink sent that await their acknowledgement.",
        |s| s.in_flight as f64,
    ),
    fig(
        "wal_sink_stored_records_total",
        Counter,
        "Records the consumer's sink had acknowledged (stored) since it was built.",
        |s| s.stored as f64,
    ),
    fig(
        "wal_sink_failed_records_total",
        Counter,
        "Records whose publication by the consumer's sink failed since it was built.",
        |s| s.failed as f64,
    ),
    fig(
        "wal_sink_publish_latency_p50_seconds",
        Gauge,
        "Median time from a batch's first publish to its last acknowledgement, over the sink's recent batches.",
        |s| s.p50_us as f64 / 1e6,
    ),
    fig(
        "wal_sink_publish_latency_p99_seconds",
        Gauge,
        "99th percentile of the time from a batch's first publish to its last acknowledgement, over the sink's recent batches.",
        |s| s.p99_us as f64 / 1e6,
    ),
    fig(
        "wal_sink_publish_latency_max_seconds",
        Gauge,
        "Longest time from a batch's first publish to its last acknowledgement, over the sink's recent batches.",
        |s| s.max_us as f64 / 1e6,
    ),
];

/// Name of the sink info gauge: labelled `wal_id`, `consumer` and `kind` (the sink's
/// [`SinkMetrics::kind`]), always 1, for the consumers whose sink reports figures.
pub const SINK_INFO_METRIC: &str = "wal_sink_info";
/// Help of [`SINK_INFO_METRIC`].
pub const SINK_INFO_HELP: &str = "The kind of each consumer's sink (label kind); always 1.";
/// Name of the per-destination counter: records a consumer's sink had acknowledged per
/// destination (Kafka topic, NATS subject), labelled `wal_id`, `consumer` and
/// `destination` ([`SinkMetrics::per_destination`]).
pub const SINK_DESTINATION_METRIC: &str = "wal_sink_destination_records_total";
/// Help of [`SINK_DESTINATION_METRIC`].
pub const SINK_DESTINATION_HELP: &str =
    "Records the consumer's sink had acknowledged per destination (Kafka topic, NATS subject).";

/// Name of the breaker state set: a gauge labelled `wal_id`, `consumer` and `state`
/// (one of [`BREAKER_STATES`]), 1 for the current state, for consumers whose shipper
/// runs.
pub const BREAKER_STATE_METRIC: &str = "wal_breaker_state";
/// Help of [`BREAKER_STATE_METRIC`].
pub const BREAKER_STATE_HELP: &str =
    "Circuit breaker state of each consumer's shipper: 1 for the current state.";
/// Name of the fsync latency histogram (seconds).
pub const FSYNC_HISTOGRAM_METRIC: &str = "wal_fsync_duration_seconds";
/// Help of [`FSYNC_HISTOGRAM_METRIC`].
pub const FSYNC_HISTOGRAM_HELP: &str = "fdatasync latency since the WAL was opened.";

/// The states a shipper's circuit breaker reports.
pub const BREAKER_STATES: [&str; 3] = ["closed", "open", "half-open"];

impl Metrics {
    /// First sequence number of the segment being appended to ([`Metrics::current_file`]).
    pub fn current_segment_base_seq(&self) -> u64 {
        self.segments
            .iter()
            .rev()
            .find(|s| s.file == self.current_file)
            .map_or(self.last_seq + 1, |s| s.first_seq)
    }

    /// The Prometheus text exposition format (version 0.0.4) of every figure, each
    /// family with `# HELP` and `# TYPE`, every sample labelled `wal_id`, names
    /// following the Prometheus conventions (base units in the name, `_total` on
    /// counters): [`FIGURES`]; per consumer (label `consumer`) [`CONSUMER_FIGURES`] and
    /// `wal_breaker_state{state=…}` (1 for the current state); per consumer whose sink
    /// reports figures ([`ConsumerMetrics::sink`]) `wal_sink_info{kind=…}`,
    /// [`SINK_FIGURES`] and `wal_sink_destination_records_total{destination=…}`; the
    /// fsync latency as a
    /// histogram, `wal_fsync_duration_seconds_bucket{le=…}`, `_sum` and `_count`
    /// (bounds [`FSYNC_BUCKETS_US`]). The segment list is not exported (a series per
    /// segment file would be a new series at every roll): `wal_segments` and
    /// `wal_disk_bytes` sum it, `wal_current_segment_base_seq` and
    /// `wal_current_offset_bytes` say where the next append goes. Neither are
    /// [`Metrics::fsync_p50_us`]/[`Metrics::fsync_p99_us`] (the histogram replaces
    /// them) nor [`Metrics::backlog_age_exact_from_seq`]. `promtool check metrics`
    /// accepts the output (tested).
    pub fn render_prometheus(&self) -> String {
        let mut p = Prom::new(&self.wal_id);
        for f in &FIGURES {
            p.family(f.name, f.kind.as_str(), f.help);
            p.sample(f.name, &[], (f.value)(self));
        }
        p.histogram(
            FSYNC_HISTOGRAM_METRIC,
            FSYNC_HISTOGRAM_HELP,
            &self.fsync_latency,
        );
        for f in &CONSUMER_FIGURES {
            p.family(f.name, f.kind.as_str(), f.help);
            for c in &self.consumers {
                p.sample(f.name, &[("consumer", &c.name)], (f.value)(c));
            }
        }
        p.family(BREAKER_STATE_METRIC, "gauge", BREAKER_STATE_HELP);
        for c in self
            .consumers
            .iter()
            .filter(|c| !c.breaker_state.is_empty())
        {
            for st in BREAKER_STATES {
                p.sample(
                    BREAKER_STATE_METRIC,
                    &[("consumer", &c.name), ("state", st)],
                    f64::from(u8::from(c.breaker_state == st)),
                );
            }
        }
        let sinks: Vec<(&str, &SinkMetrics)> = self
            .consumers
            .iter()
            .filter_map(|c| Some((c.name.as_str(), c.sink.as_ref()?)))
            .collect();
        p.family(SINK_INFO_METRIC, "gauge", SINK_INFO_HELP);
        for (c, s) in &sinks {
            p.sample(SINK_INFO_METRIC, &[("consumer", c), ("kind", &s.kind)], 1.0);
        }
        for f in &SINK_FIGURES {
            p.family(f.name, f.kind.as_str(), f.help);
            for (c, s) in &sinks {
                p.sample(f.name, &[("consumer", c)], (f.value)(s));
            }
        }
        p.family(SINK_DESTINATION_METRIC, "counter", SINK_DESTINATION_HELP);
        for (c, s) in &sinks {
            for (d, n) in &s.per_destination {
                p.sample(
                    SINK_DESTINATION_METRIC,
                    &[("consumer", c), ("destination", d)],
                    *n as f64,
                );
            }
        }
        p.out
    }
}

/// A Prometheus text writer: a `wal_id` label on every sample.
struct Prom {
    out: String,
    id: String,
}

impl Prom {
    fn new(wal_id: &str) -> Self {
        Prom {
            out: String::with_capacity(8192),
            id: escape(wal_id),
        }
    }

    fn family(&mut self, name: &str, kind: &str, help: &str) {
        use std::fmt::Write;
        let _ = write!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        use std::fmt::Write;
        let _ = write!(self.out, "{name}{{wal_id=\"{}\"", self.id);
        for (k, val) in labels {
            let _ = write!(self.out, ",{k}=\"{}\"", escape(val));
        }
        let _ = writeln!(self.out, "}} {v}");
    }

    fn histogram(&mut self, name: &str, help: &str, h: &LatencyHistogram) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (i, bound) in h.bounds_us.iter().enumerate() {
            cumulative += h.counts.get(i).copied().unwrap_or(0);
            let le = format!("{}", *bound as f64 / 1e6);
            self.sample(&bucket, &[("le", &le)], cumulative as f64);
        }
        let count = h.count();
        self.sample(&bucket, &[("le", "+Inf")], count as f64);
        self.sample(&format!("{name}_sum"), &[], h.sum_us as f64 / 1e6);
        self.sample(&format!("{name}_count"), &[], count as f64);
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Live counters inside a WAL.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub appended_records: AtomicU64,
    pub appended_bytes: AtomicU64,
    pub fsyncs: AtomicU64,
    pub dropped_records: AtomicU64,
    pub ship_errors: AtomicU64,
    pub last_ship_ts: AtomicU64,
    pub torn_tail_bytes: AtomicU64,
    pub corrupt_skipped: AtomicU64,
    pub dead_letter: AtomicU64,
    pub archive_errors: AtomicU64,
    pub last_archive_ts: AtomicU64,
    pub fsync_lat: Mutex<VecDeque<u32>>,
    /// Per bucket of [`FSYNC_BUCKETS_US`], plus the overflow bucket.
    pub fsync_buckets: [AtomicU64; FSYNC_BUCKETS_US.len() + 1],
    pub fsync_sum_us: AtomicU64,
    /// Append times, for the backlog age.
    pub append_times: AppendTimes,
    /// The `metrics` facade histogram fsync latencies go to, while a
    /// [`MetricsExporter`](crate::metrics_export::MetricsExporter) runs.
    #[cfg(feature = "metrics")]
    pub fsync_facade: FsyncSlot,
}

/// Where [`Counters::record_fsync`] sends latencies to the `metrics` facade.
#[cfg(feature = "metrics")]
#[derive(Clone, Default)]
pub(crate) struct FsyncSlot(std::sync::Arc<Mutex<Option<::metrics::Histogram>>>);

#[cfg(feature = "metrics")]
impl FsyncSlot {
    pub fn set(&self, h: Option<::metrics::Histogram>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = h;
    }

    fn record(&self, seconds: f64) {
        if let Some(h) = &*self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            h.record(seconds);
        }
    }
}

#[cfg(feature = "metrics")]
impl std::fmt::Debug for FsyncSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FsyncSlot")
    }
}

impl Counters {
    pub fn record_fsync(&self, micros: u64) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        let i = FSYNC_BUCKETS_US.partition_point(|&b| b < micros);
        self.fsync_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.fsync_sum_us.fetch_add(micros, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        self.fsync_facade.record(micros as f64 / 1e6);
        let mut q = self.fsync_lat.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == 1024 {
            q.pop_front();
        }
        q.push_back(micros.min(u32::MAX as u64) as u32);
    }

    pub fn fsync_percentiles(&self) -> (u64, u64) {
        let q = self.fsync_lat.lock().unwrap_or_else(|e| e.into_inner());
        if q.is_empty() {
            return (0, 0);
        }
        let mut v: Vec<u32> = q.iter().copied().collect();
        v.sort_unstable();
        let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize] as u64;
        (at(0.5), at(0.99))
    }

    pub fn fsync_histogram(&self) -> LatencyHistogram {
        LatencyHistogram {
            bounds_us: FSYNC_BUCKETS_US.to_vec(),
            counts: self
                .fsync_buckets
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum_us: self.fsync_sum_us.load(Ordering::Relaxed),
        }
    }
}

/// Granularity of the append times kept for the backlog age, µs: a batch appended
/// less than this after the last one noted is not noted (its time is within this of
/// the last one's).
pub const BACKLOG_AGE_GRAIN_US: u64 = 10_000;
/// Most append times kept; when full, every other one is dropped (the grain doubles
/// for the older records).
const APPEND_TIMES_KEPT: usize = 16_384;

/// `(first sequence number of a batch, its append time µs)`, ascending, sparse: the
/// time of any record appended since open is within [`BACKLOG_AGE_GRAIN_US`] (more
/// after thinning) of the last entry at or before it. Costs one relaxed load per
/// append, a short lock at most once per grain.
#[derive(Debug, Default)]
pub(crate) struct AppendTimes {
    last_us: AtomicU64,
    grain_us: AtomicU64,
    times: Mutex<VecDeque<(u64, u64)>>,
}

impl AppendTimes {
    /// Notes that the batch starting at `first_seq` was appended at `ts_us`.
    pub fn note(&self, first_seq: u64, ts_us: u64) {
        let grain = self
            .grain_us
            .load(Ordering::Relaxed)
            .max(BACKLOG_AGE_GRAIN_US);
        let last = self.last_us.load(Ordering::Relaxed);
        if last != 0 && ts_us < last.saturating_add(grain) && ts_us >= last {
            return;
        }
        let mut q = self.times.lock().unwrap_or_else(|e| e.into_inner());
        match q.back() {
            // An empty batch took no sequence number: this one replaces its time.
            Some(b) if b.0 == first_seq => {
                q.pop_back();
            }
            // Sequence numbers went back (never in one WAL): start again.
            Some(b) if b.0 > first_seq => q.clear(),
            _ => {}
        }
        if q.len() >= APPEND_TIMES_KEPT {
            let kept: VecDeque<(u64, u64)> = q.iter().copied().step_by(2).collect();
            *q = kept;
            self.grain_us.store(grain * 2, Ordering::Relaxed);
        }
        q.push_back((first_seq, ts_us));
        self.last_us.store(ts_us, Ordering::Relaxed);
    }

    /// The first sequence number with a time noted (the first appended since open,
    /// unless it is gone from disk).
    pub fn first_seq(&self) -> Option<u64> {
        let q = self.times.lock().unwrap_or_else(|e| e.into_inner());
        q.front().map(|t| t.0)
    }

    /// The append time of record `seq` (to the grain; never later than the truth),
    /// `None` when it was appended before the first time noted. Forgets the times of
    /// records before `first_on_disk`.
    pub fn time_of(&self, seq: u64, first_on_disk: u64) -> Option<u64> {
        let mut q = self.times.lock().unwrap_or_else(|e| e.into_inner());
        while q.len() > 1 && q[1].0 <= first_on_disk {
            q.pop_front();
        }
        let i = q.partition_point(|t| t.0 <= seq);
        i.checked_sub(1).map(|i| q[i].1)
    }
}

/// Persistent counters, stored in the `counters` metadata key as JSON.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct PersistedCounters {
    pub dropped_records_total: u64,
    pub ship_errors_total: u64,
    pub torn_tail_bytes_cut_total: u64,
    pub corrupt_skipped_total: u64,
    pub dead_letter_total: u64,
    pub archive_errors_total: u64,
    pub archive_lost_segments_total: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use walspool_test_support::promtool_check;

    fn sample() -> Metrics {
        let c = Counters::default();
        for us in [5, 10, 11, 400, 3_000, 7_000_000] {
            c.record_fsync(us);
        }
        Metrics {
            backlog_records: 12,
            backlog_bytes: 3456,
            ship_errors_total: 3,
            dropped_records_total: 4,
            last_ship_ts: 1_795_000_000_123,
            current_file: "/w/00000000000000000101.wal".into(),
            current_offset: 4096,
            wal_id: "id\"1".into(),
            first_seq: 1,
            last_seq: 112,
            durable_seq: 110,
            appended_records_total: 112,
            appended_bytes_total: 9999,
            fsyncs_total: 6,
            fsync_latency: c.fsync_histogram(),
            fsync_p50_us: 400,
            fsync_p99_us: 7_000_000,
            segment_count: 2,
            disk_bytes: 8192,
            oldest_unshipped_age_ms: 2500,
            backlog_age_exact_from_seq: 1,
            torn_tail_bytes_cut_total: 77,
            corrupt_skipped_total: 5,
            breaker_state: "open".into(),
            dead_letter_total: 6,
            archive_errors_total: 7,
            archive_lost_segments_total: 8,
            archive_lag_segments: 1,
            archive_lag_bytes: 4096,
            last_archive_ts: 1_795_000_000_500,
            archiving: true,
            consumers: vec![
                ConsumerMetrics {
                    name: "down".into(),
                    committed_seq: 100,
                    backlog_records: 12,
                    backlog_bytes: 3456,
                    backlog_age_ms: 2500,
                    breaker_state: "open".into(),
                    sink: Some(
                        SinkMetrics::new("kafka")
                            .in_flight(7)
                            .stored(100)
                            .failed(3)
                            .latency_us(1_500, 250_000, 2_000_000)
                            .per_destination(BTreeMap::from([
                                ("audit.login".to_string(), 60),
                                ("audit \"x\"".to_string(), 40),
                            ])),
                    ),
                },
                ConsumerMetrics {
                    name: "idle".into(),
                    committed_seq: 112,
                    ..ConsumerMetrics::default()
                },
            ],
            segments: vec![
                SegmentMetrics {
                    file: "/w/00000000000000000001.wal".into(),
                    first_seq: 1,
                    last_seq: 100,
                    bytes: 4096,
                    sealed: true,
                    archived: true,
                },
                SegmentMetrics {
                    file: "/w/00000000000000000101.wal".into(),
                    first_seq: 101,
                    last_seq: 112,
                    bytes: 4096,
                    sealed: false,
                    archived: false,
                },
            ],
        }
    }

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn prometheus_has_every_figure_with_conventional_names() {
        let text = sample().render_prometheus();
        let l = "wal_id=\"id\\\"1\"";
        for (series, v) in [
            ("wal_backlog_records", 12.0),
            ("wal_backlog_bytes", 3456.0),
            ("wal_backlog_age_seconds", 2.5),
            ("wal_ship_errors_total", 3.0),
            ("wal_dropped_records_total", 4.0),
            ("wal_last_ship_timestamp_seconds", 1_795_000_000.123),
            ("wal_current_segment_base_seq", 101.0),
            ("wal_current_offset_bytes", 4096.0),
            ("wal_first_seq", 1.0),
            ("wal_last_seq", 112.0),
            ("wal_durable_seq", 110.0),
            ("wal_appended_records_total", 112.0),
            ("wal_appended_bytes_total", 9999.0),
            ("wal_fsyncs_total", 6.0),
            ("wal_segments", 2.0),
            ("wal_disk_bytes", 8192.0),
            ("wal_torn_tail_cut_bytes_total", 77.0),
            ("wal_corrupt_skipped_records_total", 5.0),
            ("wal_dead_letter_records_total", 6.0),
            ("wal_archiving", 1.0),
            ("wal_archive_errors_total", 7.0),
            ("wal_archive_lost_segments_total", 8.0),
            ("wal_archive_lag_segments", 1.0),
            ("wal_archive_lag_bytes", 4096.0),
            ("wal_last_archive_timestamp_seconds", 1_795_000_000.5),
            ("wal_consumers", 2.0),
            ("wal_fsync_duration_seconds_sum", 7.003426),
            ("wal_fsync_duration_seconds_count", 6.0),
        ] {
            assert_eq!(value(&text, &format!("{series}{{{l}}}")), v, "{series}");
        }
        // A real histogram: cumulative buckets up to +Inf, which equals the count.
        let bucket = |le: &str| {
            value(
                &text,
                &format!("wal_fsync_duration_seconds_bucket{{{l},le=\"{le}\"}}"),
            )
        };
        assert_eq!(bucket("0.00001"), 2.0);
        assert_eq!(bucket("0.000025"), 3.0);
        assert_eq!(bucket("0.0005"), 4.0);
        assert_eq!(bucket("5"), 5.0);
        assert_eq!(bucket("+Inf"), 6.0);
        assert!(text.contains("# TYPE wal_fsync_duration_seconds histogram\n"));
        assert!(!text.contains("fsync_p50"), "{text}");
        // Per consumer, and the breaker as a state set.
        let c = |name: &str, consumer: &str| {
            value(&text, &format!("{name}{{{l},consumer=\"{consumer}\"}}"))
        };
        assert_eq!(c("wal_consumer_committed_seq", "idle"), 112.0);
        assert_eq!(c("wal_consumer_backlog_records", "down"), 12.0);
        assert_eq!(c("wal_consumer_backlog_bytes", "down"), 3456.0);
        assert_eq!(c("wal_consumer_backlog_age_seconds", "down"), 2.5);
        assert_eq!(c("wal_consumer_backlog_age_seconds", "idle"), 0.0);
        let b = |st: &str| {
            value(
                &text,
                &format!("wal_breaker_state{{{l},consumer=\"down\",state=\"{st}\"}}"),
            )
        };
        assert_eq!((b("closed"), b("open"), b("half-open")), (0.0, 1.0, 0.0));
        assert!(
            !text.contains("consumer=\"idle\",state"),
            "no shipper, no breaker series"
        );
        // The sink of "down": its kind, figures and per-destination counts.
        assert_eq!(
            value(
                &text,
                &format!("wal_sink_info{{{l},consumer=\"down\",kind=\"kafka\"}}")
            ),
            1.0
        );
        for (name, v) in [
            ("wal_sink_in_flight_records", 7.0),
            ("wal_sink_stored_records_total", 100.0),
            ("wal_sink_failed_records_total", 3.0),
            ("wal_sink_publish_latency_p50_seconds", 0.0015),
            ("wal_sink_publish_latency_p99_seconds", 0.25),
            ("wal_sink_publish_latency_max_seconds", 2.0),
        ] {
            assert_eq!(c(name, "down"), v, "{name}");
        }
        let d = |dest: &str| {
            value(
                &text,
                &format!("wal_sink_destination_records_total{{{l},consumer=\"down\",destination=\"{dest}\"}}"),
            )
        };
        assert_eq!((d("audit.login"), d("audit \\\"x\\\"")), (60.0, 40.0));
        assert!(
            !text.contains("wal_sink_in_flight_records{wal_id=\"id\\\"1\",consumer=\"idle\"}"),
            "no sink figures for a consumer whose sink reports none"
        );
        // No label that changes at every roll.
        assert!(!text.contains("file="), "{text}");
        // Every family once, with HELP and TYPE; counters end in _total, and only they.
        let mut families = Vec::new();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut w = line.split(' ').skip(2);
            let (name, kind) = (w.next().unwrap(), w.next().unwrap());
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP"
            );
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            families.push(name.to_string());
        }
        let n = families.len();
        families.sort();
        families.dedup();
        assert_eq!(families.len(), n, "a family twice");
        assert_eq!(n, 40, "{families:?}");
        promtool_check(&text);
    }

    #[test]
    fn append_times_date_records_within_the_grain() {
        let t = AppendTimes::default();
        t.note(1, 1_000_000);
        t.note(5, 1_004_000); // within the grain of the last one: not noted
        t.note(9, 1_020_000);
        assert_eq!(t.time_of(0, 1), None, "before the first time noted");
        assert_eq!(t.time_of(1, 1), Some(1_000_000));
        assert_eq!(t.time_of(6, 1), Some(1_000_000));
        assert_eq!(t.time_of(9, 1), Some(1_020_000));
        assert_eq!(t.time_of(500, 1), Some(1_020_000));
        // A batch with the same first sequence number as the last one noted (that one
        // was empty and took none) replaces its time.
        t.note(20, 1_040_000);
        t.note(20, 1_100_000);
        assert_eq!(t.time_of(20, 1), Some(1_100_000));
        assert_eq!(t.time_of(19, 1), Some(1_020_000));
        // Records gone from disk are forgotten.
        assert_eq!(t.time_of(9, 9), Some(1_020_000));
        assert_eq!(t.times.lock().unwrap().len(), 2);
        // Full: every other time goes, the grain doubles; order is kept.
        let t = AppendTimes::default();
        for i in 0..(APPEND_TIMES_KEPT as u64 + 1) {
            t.note(i * 10 + 1, 1_000_000 + i * BACKLOG_AGE_GRAIN_US);
        }
        let q = t.times.lock().unwrap();
        assert!(q.len() <= APPEND_TIMES_KEPT / 2 + 1);
        assert!(q
            .iter()
            .zip(q.iter().skip(1))
            .all(|(a, b)| a.0 < b.0 && a.1 < b.1));
    }
}
