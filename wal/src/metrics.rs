//! Metrics: counters kept by the WAL, the snapshot [`Metrics`], Prometheus text and
//! the stats file published for the monitor.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Schema id of the stats file (`stats.json` in the WAL directory).
pub const STATS_SCHEMA: &str = "walspool-stats/1";
/// Name of the stats file.
pub const STATS_FILE: &str = "stats.json";

/// Per-consumer figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConsumerMetrics {
    /// Consumer name.
    pub name: String,
    /// Last committed sequence number (0 = nothing yet).
    pub committed_seq: u64,
    /// Records after the checkpoint that are still on disk.
    pub backlog_records: u64,
    /// Approximate bytes of those records.
    pub backlog_bytes: u64,
}

/// One segment, as listed in the metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// Median fdatasync latency over the last 1024, µs.
    pub fsync_p50_us: u64,
    /// 99th percentile fdatasync latency over the last 1024, µs.
    pub fsync_p99_us: u64,
    /// Segments on disk.
    pub segment_count: u64,
    /// Bytes of all segments on disk.
    pub disk_bytes: u64,
    /// Age of the segment that holds the oldest record the slowest consumer has not
    /// committed, ms (0 = nothing unshipped). An upper bound on that record's age.
    pub oldest_unshipped_age_ms: u64,
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

impl Metrics {
    /// Prometheus text exposition format, every name prefixed `wal_`.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        let id = escape(&self.wal_id);
        let mut g = |name: &str, kind: &str, help: &str, v: f64| {
            out.push_str(&format!(
                "# HELP wal_{name} {help}\n# TYPE wal_{name} {kind}\nwal_{name}{{wal_id=\"{id}\"}} {v}\n"
            ));
        };
        g(
            "backlog_records",
            "gauge",
            "Records not yet committed by the slowest consumer.",
            self.backlog_records as f64,
        );
        g(
            "backlog_bytes",
            "gauge",
            "Approximate bytes not yet committed by the slowest consumer.",
            self.backlog_bytes as f64,
        );
        g(
            "ship_errors_total",
            "counter",
            "Failed sink deliveries.",
            self.ship_errors_total as f64,
        );
        g(
            "dropped_records_total",
            "counter",
            "Records dropped by retention bounds before delivery.",
            self.dropped_records_total as f64,
        );
        g(
            "last_ship_ts",
            "gauge",
            "Unix time of the last successful delivery, seconds.",
            self.last_ship_ts as f64 / 1000.0,
        );
        g(
            "current_offset",
            "gauge",
            "Byte offset of the next append in the current file.",
            self.current_offset as f64,
        );
        g(
            "appended_records_total",
            "counter",
            "Records appended since open.",
            self.appended_records_total as f64,
        );
        g(
            "appended_bytes_total",
            "counter",
            "Payload bytes appended since open.",
            self.appended_bytes_total as f64,
        );
        g(
            "fsyncs_total",
            "counter",
            "fdatasync calls since open.",
            self.fsyncs_total as f64,
        );
        g(
            "fsync_p50_seconds",
            "gauge",
            "Median fdatasync latency.",
            self.fsync_p50_us as f64 / 1e6,
        );
        g(
            "fsync_p99_seconds",
            "gauge",
            "99th percentile fdatasync latency.",
            self.fsync_p99_us as f64 / 1e6,
        );
        g(
            "segments",
            "gauge",
            "Segments on disk.",
            self.segment_count as f64,
        );
        g(
            "disk_bytes",
            "gauge",
            "Bytes of all segments.",
            self.disk_bytes as f64,
        );
        g(
            "oldest_unshipped_age_seconds",
            "gauge",
            "Upper bound on the age of the oldest undelivered record.",
            self.oldest_unshipped_age_ms as f64 / 1000.0,
        );
        g(
            "dead_letter_total",
            "counter",
            "Records moved to the dead letter.",
            self.dead_letter_total as f64,
        );
        g(
            "archive_errors_total",
            "counter",
            "Failed archive uploads.",
            self.archive_errors_total as f64,
        );
        g(
            "archive_lost_segments_total",
            "counter",
            "Sealed segments deleted locally before they were archived.",
            self.archive_lost_segments_total as f64,
        );
        g(
            "archive_lag_segments",
            "gauge",
            "Sealed segments not yet archived.",
            self.archive_lag_segments as f64,
        );
        g(
            "archive_lag_bytes",
            "gauge",
            "Bytes of sealed segments not yet archived.",
            self.archive_lag_bytes as f64,
        );
        out.push_str(&format!(
            "# HELP wal_current_file The segment being appended to.\n# TYPE wal_current_file gauge\nwal_current_file{{wal_id=\"{id}\",file=\"{}\"}} 1\n",
            escape(&self.current_file)
        ));
        out.push_str("# HELP wal_consumer_backlog_records Records not yet committed, per consumer.\n# TYPE wal_consumer_backlog_records gauge\n");
        for c in &self.consumers {
            out.push_str(&format!(
                "wal_consumer_backlog_records{{wal_id=\"{id}\",consumer=\"{}\"}} {}\n",
                escape(&c.name),
                c.backlog_records
            ));
        }
        out
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
}

impl Counters {
    pub fn record_fsync(&self, micros: u64) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
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
