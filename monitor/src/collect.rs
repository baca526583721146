//! Collectors: read a WAL directory (its stats file, and the files themselves) into a
//! [`Snapshot`]; discovery finds the WAL directories under a root. One collector per
//! WAL. This module knows nothing of the dashboard: [`crate::tui`] runs the collectors
//! on a thread and turns their snapshots into [`Event`](crate::app::Event)s, and
//! [`crate::app`] (which depends on this module, never the other way) folds them in.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use walspool_backends::LocalDisk;
use walspool_wal::inspect::{self, DiskState};
use walspool_wal::{ConsumerMetrics, Metrics, SegmentMetrics, StatsFile, STATS_FILE};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Is the writer alive, as far as the monitor can tell?
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writer {
    /// The stats file is fresh and its process exists.
    Running {
        /// The writer's pid.
        pid: u32,
    },
    /// The writer closed the WAL cleanly.
    Closed {
        /// When (the stats file's time), ms since the epoch.
        at_ms: u64,
        /// Its pid.
        pid: u32,
    },
    /// The stats file is stale or its process is gone.
    NotRunning {
        /// Last sign of life (the stats file's time), ms since the epoch.
        since_ms: u64,
        /// The pid the stats file names.
        pid: u32,
        /// Why the monitor thinks so ("pid 123 gone", "stats 12s old").
        why: String,
    },
    /// There is no stats file (stats disabled, or the WAL was never opened).
    NoStats,
}

impl Writer {
    /// True when the figures come from a live writer.
    pub fn is_running(&self) -> bool {
        matches!(self, Writer::Running { .. })
    }

    /// Short label for tables and JSON.
    pub fn label(&self) -> &'static str {
        match self {
            Writer::Running { .. } => "running",
            Writer::Closed { .. } => "closed",
            Writer::NotRunning { .. } => "not-running",
            Writer::NoStats => "unknown",
        }
    }
}

/// What one collection of a WAL directory found.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The directory.
    pub dir: String,
    /// When the snapshot was taken, ms since the epoch.
    pub taken_ms: u64,
    /// The writer's state.
    pub writer: Writer,
    /// When the stats file was written (0 when there is none).
    pub stats_written_ms: u64,
    /// The stats file's interval (0 when there is none).
    pub interval_ms: u64,
    /// The figures: the writer's own while it runs; computed from the files on disk
    /// (plus the last published counters) when it does not.
    pub metrics: Metrics,
    /// True when `metrics` were computed from the files on disk.
    pub from_disk: bool,
    /// Timestamp of the oldest record some consumer has not committed (without
    /// consumers: of the oldest record on disk), ms since the epoch (0 = nothing
    /// unshipped, or unknown).
    pub oldest_unshipped_ts_ms: u64,
    /// Per consumer: the timestamp of the oldest record it has not committed, ms since
    /// the epoch (0 = nothing unshipped, or unknown). The backlog age of each consumer
    /// is also in `metrics.consumers[..].backlog_age_ms`, as of `taken_ms`.
    pub consumer_oldest_ts_ms: BTreeMap<String, u64>,
}

/// Is process `pid` alive (and not a zombie)?
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // "pid (comm) S ...": the state follows the last ')'.
            let state = s
                .rfind(')')
                .and_then(|i| s[i + 1..].trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X'))
        }
        Err(_) => false,
    }
}

/// Decides the writer's state from a stats file.
pub fn liveness(stats: &StatsFile, now_ms: u64, alive: impl Fn(u32) -> bool) -> Writer {
    let age = now_ms.saturating_sub(stats.written_at_ms);
    let stale_after = (3 * stats.interval_ms).max(1500);
    if stats.closed {
        return Writer::Closed {
            at_ms: stats.written_at_ms,
            pid: stats.pid,
        };
    }
    if !alive(stats.pid) {
        return Writer::NotRunning {
            since_ms: stats.written_at_ms,
            pid: stats.pid,
            why: format!("pid {} gone", stats.pid),
        };
    }
    if age > stale_after {
        return Writer::NotRunning {
            since_ms: stats.written_at_ms,
            pid: stats.pid,
            why: format!("stats {}s old", age / 1000),
        };
    }
    Writer::Running { pid: stats.pid }
}

/// Reads one WAL directory, again and again.
#[derive(Debug)]
pub struct Collector {
    dir: PathBuf,
    storage: Option<LocalDisk>,
    cache: Option<DiskState>,
    /// `(sequence number, its timestamp in ms)` of the records dated from disk, kept
    /// while some consumer's oldest unshipped record is one of them.
    dated: Vec<(u64, u64)>,
    /// The stats file last parsed, by its (modification time, length).
    stats: Option<(StatsKey, StatsFile)>,
    /// The figures last computed from disk, by the stats file they went with: while
    /// the writer is not running neither changes, and they are reused.
    from_disk: Option<(StatsKey, Metrics)>,
    /// `(publication time ms, last_seq)` of the live writer's publications seen, oldest
    /// first: a record appended while the collector watches is dated from these
    /// (within one publication interval) instead of being read from disk.
    appends: VecDeque<(u64, u64)>,
}

/// Publications remembered for dating records (an hour at the demo's 250ms).
const APPENDS_KEPT: usize = 16_384;

/// What tells one version of a stats file from the next.
type StatsKey = (SystemTime, u64);

impl Collector {
    /// A collector for `dir` (which may not exist yet).
    pub fn new(dir: impl AsRef<Path>) -> Self {
        Collector {
            dir: dir.as_ref().to_path_buf(),
            storage: None,
            cache: None,
            dated: Vec::new(),
            stats: None,
            from_disk: None,
            appends: VecDeque::new(),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes a snapshot.
    pub fn collect(&mut self) -> Result<Snapshot, String> {
        if self.storage.is_none() {
            self.storage = Some(LocalDisk::open_read_only(&self.dir).map_err(|e| e.to_string())?);
        }
        let now = now_ms();
        let path = self.dir.join(STATS_FILE);
        let key: Option<StatsKey> = std::fs::metadata(&path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        let cached = self
            .stats
            .as_ref()
            .filter(|c| key.is_some_and(|k| k == c.0))
            .map(|c| c.1.clone());
        let stats = match cached {
            Some(s) => Some(s),
            None => match std::fs::read(&path) {
                Ok(b) => {
                    let s = StatsFile::parse(&b)?;
                    self.stats = key.map(|k| (k, s.clone()));
                    Some(s)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.stats = None;
                    None
                }
                Err(e) => return Err(format!("read {}: {e}", path.display())),
            },
        };
        let writer = match &stats {
            Some(s) => liveness(s, now, pid_alive),
            None => Writer::NoStats,
        };
        let mut snap = Snapshot {
            dir: self.dir.display().to_string(),
            taken_ms: now,
            writer: writer.clone(),
            stats_written_ms: stats.as_ref().map_or(0, |s| s.written_at_ms),
            interval_ms: stats.as_ref().map_or(0, |s| s.interval_ms),
            metrics: stats.map(|s| s.metrics).unwrap_or_default(),
            from_disk: false,
            oldest_unshipped_ts_ms: 0,
            consumer_oldest_ts_ms: BTreeMap::new(),
        };
        if !writer.is_running() {
            snap.from_disk = true;
            match self
                .from_disk
                .as_ref()
                .filter(|c| key.is_some_and(|k| k == c.0))
            {
                Some((_, m)) => snap.metrics = m.clone(),
                None => {
                    let storage = self.storage.as_ref().expect("opened above");
                    let disk = inspect::disk_state(storage, self.cache.as_ref())
                        .map_err(|e| e.to_string())?;
                    apply_disk(&mut snap.metrics, &disk);
                    self.cache = Some(disk);
                    self.from_disk = key.map(|k| (k, snap.metrics.clone()));
                }
            }
        } else {
            self.cache = None;
            self.from_disk = None;
            let pubn = (snap.stats_written_ms, snap.metrics.last_seq);
            match self.appends.back() {
                Some(&(t, seq)) if pubn.1 < seq || pubn.0 < t => {
                    // A new writer (sequence or clock went back): start again.
                    self.appends.clear();
                    self.appends.push_back(pubn);
                }
                Some(&(_, seq)) if pubn.1 == seq => {}
                _ => {
                    if self.appends.len() == APPENDS_KEPT {
                        self.appends.pop_front();
                    }
                    self.appends.push_back(pubn);
                }
            }
        }
        self.date_backlogs(&mut snap);
        Ok(snap)
    }

    /// Backlog ages: for each consumer, the timestamp of the oldest record it has not
    /// committed, and its backlog age at `taken_ms`. A live writer publishes each
    /// consumer's age, exact for the records appended since it opened the WAL; other
    /// records (and every record when the writer is not running, or predates that
    /// figure) are dated here.
    fn date_backlogs(&mut self, snap: &mut Snapshot) {
        let live = !snap.from_disk && snap.stats_written_ms > 0;
        let written = snap.stats_written_ms;
        let now = snap.taken_ms;
        let first_seq = snap.metrics.first_seq;
        // The writer's figure is exact for the records it appended since it opened the
        // WAL; older ones it dates by their segment (an upper bound): read those here.
        let exact_from = snap.metrics.backlog_age_exact_from_seq;
        let exact = |want: u64| live && exact_from > 0 && want >= exact_from;
        let mut used = Vec::new();
        let mut oldest = 0u64;
        for c in snap.metrics.consumers.iter_mut() {
            let want = (c.committed_seq + 1).max(first_seq);
            let ts = if c.backlog_records == 0 {
                0
            } else if exact(want) && c.backlog_age_ms > 0 {
                written.saturating_sub(c.backlog_age_ms)
            } else {
                used.push(want);
                self.ts_of(want)
            };
            c.backlog_age_ms = if ts == 0 { 0 } else { now.saturating_sub(ts) };
            snap.consumer_oldest_ts_ms.insert(c.name.clone(), ts);
            if ts > 0 && (oldest == 0 || ts < oldest) {
                oldest = ts;
            }
        }
        let m = &snap.metrics;
        if m.consumers.is_empty() && m.backlog_records > 0 {
            oldest = if exact(first_seq) && m.oldest_unshipped_age_ms > 0 {
                written.saturating_sub(m.oldest_unshipped_age_ms)
            } else {
                used.push(first_seq);
                self.ts_of(first_seq)
            };
        }
        snap.oldest_unshipped_ts_ms = if m.backlog_records == 0 { 0 } else { oldest };
        snap.metrics.oldest_unshipped_age_ms = if oldest == 0 {
            0
        } else {
            now.saturating_sub(oldest)
        };
        self.dated.retain(|d| used.contains(&d.0));
    }

    /// The timestamp (ms) of record `want` (or the first one after it, when it is gone):
    /// read from disk once per sequence number, 0 when it cannot be read.
    fn ts_of(&mut self, want: u64) -> u64 {
        if let Some(&(_, ts)) = self.dated.iter().find(|d| d.0 == want) {
            return ts;
        }
        // Appended since the collector began watching: the first publication that
        // included it (the record is at most one publication interval older).
        if self.appends.front().is_some_and(|f| want > f.1) {
            let i = self.appends.partition_point(|a| a.1 < want);
            if let Some(&(t, _)) = self.appends.get(i) {
                return t;
            }
        }
        let Some(storage) = self.storage.as_ref() else {
            return 0;
        };
        match inspect::records(storage, want).next() {
            Some(Ok(r)) => {
                let ts = r.ts_us / 1000;
                self.dated.push((want, ts));
                ts
            }
            _ => 0,
        }
    }
}

/// Does `dir` look like a WAL directory: a stats file, or segment files next to the
/// `meta` directory the WAL keeps its checkpoints in.
pub fn is_wal_dir(dir: &Path) -> bool {
    if dir.join(STATS_FILE).is_file() {
        return true;
    }
    if !dir.join(walspool_backends::local::META_DIR).is_dir() {
        return false;
    }
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.len() == 24 && n.ends_with(".wal") && n[..20].bytes().all(|b| b.is_ascii_digit())
        })
    })
}

/// Default depth of discovery under a root.
pub const DEFAULT_DEPTH: usize = 4;

/// Every WAL directory under `roots`, `(name, directory)`, sorted by name. A root that
/// is itself a WAL directory is one WAL (named after its last component); under other
/// roots, directories are searched down to `max_depth` levels (not following symbolic
/// links, skipping hidden directories, not descending into a WAL directory). A WAL's
/// name is its path under the root (the root's own name is prefixed when there are
/// several roots).
pub fn discover(roots: &[PathBuf], max_depth: usize) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    for root in roots {
        if is_wal_dir(root) {
            let name = root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| root.display().to_string());
            out.push((name, root.clone()));
            continue;
        }
        let mut stack = vec![(root.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            if depth >= max_depth {
                continue;
            }
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                let hidden = e.file_name().to_string_lossy().starts_with('.');
                if !is_dir || hidden {
                    continue;
                }
                let p = e.path();
                if is_wal_dir(&p) {
                    let rel = p.strip_prefix(root).unwrap_or(&p);
                    let mut name = rel.display().to_string();
                    if roots.len() > 1 {
                        if let Some(r) = root.file_name() {
                            name = format!("{}/{name}", r.to_string_lossy());
                        }
                    }
                    out.push((name, p));
                } else {
                    stack.push((p, depth + 1));
                }
            }
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.1 == b.1);
    // Names must tell WALs apart: fall back to full paths when two collide.
    let mut names: Vec<String> = out.iter().map(|w| w.0.clone()).collect();
    names.sort();
    let dup = names.windows(2).any(|w| w[0] == w[1]);
    if dup {
        for w in &mut out {
            w.0 = w.1.display().to_string();
        }
        out.sort();
    }
    out
}

/// Overwrites the figures that the files on disk tell with what they tell.
pub fn apply_disk(m: &mut Metrics, d: &DiskState) {
    let (records, bytes) = d.backlog();
    m.backlog_records = records;
    m.backlog_bytes = bytes;
    m.dropped_records_total = m
        .dropped_records_total
        .max(d.counters.dropped_records_total);
    m.ship_errors_total = m.ship_errors_total.max(d.counters.ship_errors_total);
    m.current_file = d.current_file.clone();
    m.current_offset = d.current_offset;
    m.first_seq = d.first_seq;
    m.last_seq = d.last_seq;
    m.durable_seq = m.durable_seq.min(d.last_seq);
    m.segment_count = d.segments.len() as u64;
    m.disk_bytes = d.disk_bytes;
    m.consumers = d
        .consumers
        .iter()
        .map(|(name, c)| {
            let mut v = ConsumerMetrics::default();
            v.name = name.clone();
            v.committed_seq = *c;
            v.backlog_records = d.records_after(*c);
            v.backlog_bytes = d.bytes_after(*c);
            v
        })
        .collect();
    let archived: Vec<(String, bool)> = m
        .segments
        .iter()
        .map(|s| (s.file.clone(), s.archived))
        .collect();
    m.segments = d
        .segments
        .iter()
        .map(|s| {
            let mut v = SegmentMetrics::default();
            v.file = s.name.clone();
            v.first_seq = s.id;
            v.last_seq = s.seqs.map_or(s.id.saturating_sub(1), |x| x.1);
            v.bytes = s.len;
            v.sealed = s.footer.is_some();
            v.archived = archived.iter().any(|(f, a)| *a && f == &s.name);
            v
        })
        .collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(written: u64, closed: bool) -> StatsFile {
        StatsFile {
            schema: walspool_wal::STATS_SCHEMA.into(),
            pid: 4242,
            written_at_ms: written,
            interval_ms: 500,
            location: "/x".into(),
            closed,
            metrics: Metrics::default(),
        }
    }

    #[test]
    fn liveness_from_age_pid_and_closed_flag() {
        assert_eq!(
            liveness(&stats(10_000, false), 10_400, |_| true),
            Writer::Running { pid: 4242 }
        );
        assert_eq!(
            liveness(&stats(10_000, false), 10_400, |_| false),
            Writer::NotRunning {
                since_ms: 10_000,
                pid: 4242,
                why: "pid 4242 gone".into()
            }
        );
        assert_eq!(
            liveness(&stats(10_000, false), 22_000, |_| true),
            Writer::NotRunning {
                since_ms: 10_000,
                pid: 4242,
                why: "stats 12s old".into()
            }
        );
        assert_eq!(
            liveness(&stats(10_000, true), 99_000, |_| true),
            Writer::Closed {
                at_ms: 10_000,
                pid: 4242
            }
        );
    }

    #[test]
    fn discovery_finds_wal_dirs_depth_bounded_and_not_inside_a_wal() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let mk = |rel: &str, stats: bool, segment: bool| {
            let d = root.join(rel);
            std::fs::create_dir_all(d.join("meta")).unwrap();
            if stats {
                std::fs::write(d.join(STATS_FILE), b"{}").unwrap();
            }
            if segment {
                std::fs::write(d.join("00000000000000000001.wal"), b"").unwrap();
            }
        };
        mk("orders", true, true);
        mk("team/billing", false, true); // no stats: meta/ + a segment is enough
        mk("team/empty", false, false); // meta/ alone is not a WAL
        mk("a/b/c/deep", true, false); // depth 4: found with depth 4, not 3
        mk("orders/nested", true, false); // inside a WAL: not searched
        mk(".hidden/x", true, false);
        let names = |depth| -> Vec<String> {
            discover(&[root.to_path_buf()], depth)
                .into_iter()
                .map(|w| w.0)
                .collect()
        };
        assert_eq!(names(4), ["a/b/c/deep", "orders", "team/billing"]);
        assert_eq!(names(3), ["orders", "team/billing"]);
        // A WAL directory given as the root is one WAL, named after itself.
        let w = discover(&[root.join("orders")], 4);
        assert_eq!(w, [("orders".to_string(), root.join("orders"))]);
        // Several roots: names are prefixed with the root's name.
        let w = discover(&[root.join("team"), root.join("a")], 4);
        let n: Vec<&str> = w.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(n, ["a/b/c/deep", "team/billing"]);
    }

    #[test]
    fn own_process_is_alive_and_a_bogus_pid_is_not() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX - 1));
    }
}
