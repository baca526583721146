//! The dashboard's state: a plain [`App`] updated from [`Event`]s. No I/O here; the
//! view renders an `App`, collectors and the terminal produce events.
//!
//! `top` watches a fleet: every WAL found under the roots it was given. The first
//! screen is the overview (one row per WAL, worst first); Enter opens one WAL's detail
//! view (figures, rate and backlog charts, consumers, segments); Esc returns.

use std::cmp::Ordering;
use std::collections::VecDeque;

use crate::collect::{Snapshot, Writer};

/// Rates are computed over this window of publications.
pub const RATE_WINDOW_MS: u64 = 10_000;

/// History kept per WAL for the charts: one point a second at most, one hour.
pub const HISTORY_SPACING_MS: u64 = 1_000;
/// The longest chart window.
pub const HISTORY_MS: u64 = 60 * 60 * 1000;

/// The chart windows the detail view cycles through (`t`), in minutes.
pub const CHART_WINDOWS_MIN: [u64; 3] = [5, 15, 60];

/// A key, already decoded from the terminal. What it does depends on the screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// A printable character.
    Char(char),
    /// Ctrl-C: quits from anywhere.
    CtrlC,
    /// Enter.
    Enter,
    /// Esc.
    Esc,
    /// Backspace.
    Backspace,
    /// ↑.
    Up,
    /// ↓.
    Down,
    /// Page up.
    PageUp,
    /// Page down.
    PageDown,
    /// Home.
    Home,
    /// End.
    End,
    /// Tab or →.
    Next,
    /// Shift-Tab or ←.
    Prev,
    /// Anything else.
    Other,
}

/// Everything that changes the dashboard, sent over one channel.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Discovery found these WALs `(name, directory)`; WALs not listed are gone.
    Wals(Vec<(String, String)>),
    /// A fresh snapshot of the WAL in `Snapshot::dir`.
    Snapshot(Box<Snapshot>),
    /// The WAL in directory `.0` could not be read.
    CollectError(String, String),
    /// A key was pressed.
    Key(Key),
    /// The clock moved (ms since the epoch): ages are recomputed.
    Tick(u64),
    /// The terminal was resized.
    Resize,
}

/// Warning and alert thresholds (flags, or a config file).
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// Alert: the oldest unshipped record is older than this (ms).
    pub backlog_age_ms: u64,
    /// Alert: more failed deliveries than this per second.
    pub errors_per_sec: f64,
    /// Backlog (records) above which it is shown as a warning.
    pub backlog_records: u64,
    /// Age of the last shipment (s) above which it is a warning (while a backlog exists).
    pub ship_age_secs: u64,
    /// fsync p99 (ms) above which it is a warning.
    pub fsync_p99_ms: f64,
    /// Sealed segments waiting for the archive above which it is a warning.
    pub archive_lag_segments: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            backlog_age_ms: 5 * 60 * 1000,
            errors_per_sec: 1.0,
            backlog_records: 10_000,
            ship_age_secs: 60,
            fsync_p99_ms: 50.0,
            archive_lag_segments: 4,
        }
    }
}

/// Which threshold a WAL crosses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alert {
    /// The oldest unshipped record is older than `--warn-backlog-age`.
    BacklogAge,
    /// Ship errors per second above `--warn-errors-rate`.
    Errors,
}

impl Alert {
    /// Short label.
    pub fn label(self) -> &'static str {
        match self {
            Alert::BacklogAge => "backlog-age",
            Alert::Errors => "errors",
        }
    }
}

/// One point of a WAL's history.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// When (the stats file's time), ms since the epoch.
    pub t_ms: u64,
    /// Appended records per second.
    pub append_rate: f64,
    /// Shipped (committed by the slowest consumer) records per second.
    pub ship_rate: f64,
    /// Backlog, records.
    pub backlog: u64,
}

/// A publication used for rates.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    t_ms: u64,
    appended: u64,
    errors: u64,
    shipped: u64,
}

/// One WAL.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Panel {
    /// Its name in the fleet (the path under the root).
    pub name: String,
    /// The directory.
    pub dir: String,
    /// The latest snapshot.
    pub snap: Option<Snapshot>,
    /// The latest collection error (cleared by the next snapshot).
    pub error: Option<String>,
    /// Appended records per second, over the last [`RATE_WINDOW_MS`].
    pub append_rate: f64,
    /// Records committed by the slowest consumer per second (the ship rate).
    pub ship_rate: f64,
    /// Failed deliveries per second.
    pub ship_error_rate: f64,
    /// Chart history, oldest first (at most one point per [`HISTORY_SPACING_MS`]).
    pub history: VecDeque<Point>,
    samples: VecDeque<Sample>,
}

/// The sequence number the slowest consumer has shipped through (0 without consumers).
fn shipped_seq(s: &Snapshot) -> u64 {
    s.metrics
        .consumers
        .iter()
        .max_by_key(|c| c.backlog_records)
        .map_or(0, |c| c.committed_seq)
}

impl Panel {
    /// A panel for `dir` with nothing collected yet.
    pub fn new(name: impl Into<String>, dir: impl Into<String>) -> Self {
        Panel {
            name: name.into(),
            dir: dir.into(),
            ..Panel::default()
        }
    }

    fn zero_rates(&mut self) {
        self.append_rate = 0.0;
        self.ship_rate = 0.0;
        self.ship_error_rate = 0.0;
    }

    fn apply(&mut self, snap: Snapshot) {
        let m = &snap.metrics;
        let cur = Sample {
            t_ms: snap.stats_written_ms,
            appended: m.appended_records_total,
            errors: m.ship_errors_total,
            shipped: shipped_seq(&snap),
        };
        let mut new_point = false;
        if snap.from_disk {
            self.zero_rates();
            self.samples.clear();
            new_point = self
                .history
                .back()
                .is_none_or(|p| snap.taken_ms >= p.t_ms + HISTORY_SPACING_MS);
        } else {
            match self.samples.back().copied() {
                Some(last) if cur.t_ms <= last.t_ms => {} // the same publication again
                Some(last)
                    if cur.appended < last.appended
                        || cur.errors < last.errors
                        || cur.shipped < last.shipped =>
                {
                    // The writer restarted: its counters began again.
                    self.samples.clear();
                    self.samples.push_back(cur);
                    self.zero_rates();
                }
                _ => {
                    self.samples.push_back(cur);
                    while self.samples.len() > 2
                        && self
                            .samples
                            .front()
                            .is_some_and(|f| cur.t_ms - f.t_ms > RATE_WINDOW_MS)
                    {
                        self.samples.pop_front();
                    }
                    if let Some(f) = self.samples.front().filter(|f| f.t_ms < cur.t_ms) {
                        let dt = (cur.t_ms - f.t_ms) as f64 / 1000.0;
                        self.append_rate = (cur.appended - f.appended) as f64 / dt;
                        self.ship_error_rate = (cur.errors - f.errors) as f64 / dt;
                        // A consumer that starts from 0 "ships" the whole history at
                        // once: no rate until it has a real checkpoint.
                        self.ship_rate = if f.shipped == 0 {
                            0.0
                        } else {
                            (cur.shipped - f.shipped) as f64 / dt
                        };
                    }
                    new_point = self
                        .history
                        .back()
                        .is_none_or(|p| cur.t_ms >= p.t_ms + HISTORY_SPACING_MS);
                }
            }
        }
        if new_point {
            let t_ms = if snap.from_disk {
                snap.taken_ms
            } else {
                cur.t_ms
            };
            self.history.push_back(Point {
                t_ms,
                append_rate: self.append_rate,
                ship_rate: self.ship_rate,
                backlog: m.backlog_records,
            });
            while self
                .history
                .front()
                .is_some_and(|p| t_ms.saturating_sub(p.t_ms) > HISTORY_MS)
            {
                self.history.pop_front();
            }
        }
        self.error = None;
        self.snap = Some(snap);
    }

    /// Age of the oldest unshipped record at `now_ms` (0 when nothing is unshipped).
    pub fn backlog_age_ms(&self, now_ms: u64) -> u64 {
        match &self.snap {
            Some(s) if s.metrics.backlog_records > 0 && s.oldest_unshipped_ts_ms > 0 => {
                now_ms.saturating_sub(s.oldest_unshipped_ts_ms)
            }
            _ => 0,
        }
    }

    /// Backlog age of consumer `name` at `now_ms`: the age of the oldest record it has
    /// not committed (0 when none, or unknown).
    pub fn consumer_backlog_age_ms(&self, name: &str, now_ms: u64) -> u64 {
        match self
            .snap
            .as_ref()
            .and_then(|s| s.consumer_oldest_ts_ms.get(name))
        {
            Some(&ts) if ts > 0 => now_ms.saturating_sub(ts),
            _ => 0,
        }
    }

    /// The thresholds this WAL crosses at `now_ms`.
    pub fn alerts(&self, t: &Thresholds, now_ms: u64) -> Vec<Alert> {
        let mut v = Vec::new();
        if self.snap.is_some() && self.backlog_age_ms(now_ms) > t.backlog_age_ms {
            v.push(Alert::BacklogAge);
        }
        if self.ship_error_rate > t.errors_per_sec {
            v.push(Alert::Errors);
        }
        v
    }

    /// How bad this WAL looks: 3 alerting, 2 writer crashed or unreadable, 1 a warning
    /// sign (errors, drops, breaker not closed, stopped), 0 fine.
    pub fn severity(&self, t: &Thresholds, now_ms: u64) -> u8 {
        if !self.alerts(t, now_ms).is_empty() {
            return 3;
        }
        let Some(s) = &self.snap else {
            return if self.error.is_some() { 2 } else { 0 };
        };
        if self.error.is_some() || matches!(s.writer, Writer::NotRunning { .. }) {
            return 2;
        }
        let m = &s.metrics;
        if self.ship_error_rate > 0.0
            || m.dropped_records_total > 0
            || m.breaker_state == "open"
            || m.breaker_state == "half-open"
            || !s.writer.is_running()
        {
            return 1;
        }
        0
    }
}

/// The overview's columns (the sort keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// Worst first: alerting, then crashed, then warnings; then oldest backlog.
    Worst,
    /// By name.
    Name,
    /// Append rate.
    AppendRate,
    /// Ship rate.
    ShipRate,
    /// Backlog records.
    Backlog,
    /// Backlog bytes.
    BacklogBytes,
    /// Backlog age.
    BacklogAge,
    /// Ship error rate.
    Errors,
    /// Dropped records.
    Drops,
    /// Archive lag (segments).
    ArchiveLag,
}

impl SortKey {
    /// The key that sorts by this column, and the column's name.
    pub const KEYS: [(char, SortKey, &'static str); 10] = [
        ('w', SortKey::Worst, "worst"),
        ('n', SortKey::Name, "name"),
        ('a', SortKey::AppendRate, "append/s"),
        ('s', SortKey::ShipRate, "ship/s"),
        ('b', SortKey::Backlog, "backlog"),
        ('B', SortKey::BacklogBytes, "bytes"),
        ('o', SortKey::BacklogAge, "age"),
        ('e', SortKey::Errors, "errors/s"),
        ('d', SortKey::Drops, "drops"),
        ('l', SortKey::ArchiveLag, "archive lag"),
    ];

    /// The column's short name.
    pub fn name(self) -> &'static str {
        SortKey::KEYS
            .iter()
            .find(|k| k.1 == self)
            .map_or("?", |k| k.2)
    }
}

/// Which screen is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Screen {
    /// The fleet table.
    Overview,
    /// One WAL (by directory).
    Detail(String),
}

/// The dashboard's whole state.
#[derive(Debug, Clone, PartialEq)]
pub struct App {
    /// One panel per WAL, in discovery order (sorted by name).
    pub panels: Vec<Panel>,
    /// The screen shown.
    pub screen: Screen,
    /// The overview's cursor: an index into [`App::visible`].
    pub cursor: usize,
    /// The overview's sort column.
    pub sort: SortKey,
    /// Sort reversed (pressing a column's key again).
    pub reverse: bool,
    /// Name filter (substring, case-insensitive).
    pub filter: String,
    /// The filter is being typed (after `/`).
    pub editing_filter: bool,
    /// The detail chart's window, an index into [`CHART_WINDOWS_MIN`].
    pub window: usize,
    /// Paused: snapshots are ignored, the screen stays as it is.
    pub paused: bool,
    /// The help overlay is shown.
    pub help: bool,
    /// The user asked to quit.
    pub quit: bool,
    /// The clock, ms since the epoch (ages are computed against it).
    pub now_ms: u64,
    /// Warning thresholds.
    pub thresholds: Thresholds,
    /// Refresh interval, ms (shown in the title).
    pub refresh_ms: u64,
    /// The roots watched (shown in the title).
    pub roots: Vec<String>,
}

impl App {
    /// A dashboard over these WALs `(name, directory)`.
    pub fn new(wals: &[(String, String)], thresholds: Thresholds, refresh_ms: u64) -> Self {
        App {
            panels: wals
                .iter()
                .map(|(n, d)| Panel::new(n.clone(), d.clone()))
                .collect(),
            screen: Screen::Overview,
            cursor: 0,
            sort: SortKey::Worst,
            reverse: false,
            filter: String::new(),
            editing_filter: false,
            window: 0,
            paused: false,
            help: false,
            quit: false,
            now_ms: 0,
            thresholds,
            refresh_ms,
            roots: Vec::new(),
        }
    }

    /// The WAL whose detail view is shown.
    pub fn current(&self) -> Option<&Panel> {
        match &self.screen {
            Screen::Detail(dir) => self.panels.iter().find(|p| &p.dir == dir),
            Screen::Overview => None,
        }
    }

    /// The number of WALs crossing a threshold.
    pub fn alerting(&self) -> usize {
        self.panels
            .iter()
            .filter(|p| !p.alerts(&self.thresholds, self.now_ms).is_empty())
            .count()
    }

    fn cmp(&self, a: &Panel, b: &Panel) -> Ordering {
        let now = self.now_ms;
        fn m(p: &Panel, f: fn(&walspool_wal::Metrics) -> u64) -> u64 {
            p.snap.as_ref().map_or(0, |s| f(&s.metrics))
        }
        let f = |x: f64, y: f64| x.partial_cmp(&y).unwrap_or(Ordering::Equal);
        let by = match self.sort {
            SortKey::Worst => b
                .severity(&self.thresholds, now)
                .cmp(&a.severity(&self.thresholds, now))
                .then(b.backlog_age_ms(now).cmp(&a.backlog_age_ms(now)))
                .then(f(b.ship_error_rate, a.ship_error_rate)),
            SortKey::Name => Ordering::Equal,
            SortKey::AppendRate => f(b.append_rate, a.append_rate),
            SortKey::ShipRate => f(b.ship_rate, a.ship_rate),
            SortKey::Backlog => m(b, |x| x.backlog_records).cmp(&m(a, |x| x.backlog_records)),
            SortKey::BacklogBytes => m(b, |x| x.backlog_bytes).cmp(&m(a, |x| x.backlog_bytes)),
            SortKey::BacklogAge => b.backlog_age_ms(now).cmp(&a.backlog_age_ms(now)),
            SortKey::Errors => f(b.ship_error_rate, a.ship_error_rate),
            SortKey::Drops => {
                m(b, |x| x.dropped_records_total).cmp(&m(a, |x| x.dropped_records_total))
            }
            SortKey::ArchiveLag => {
                m(b, |x| x.archive_lag_segments).cmp(&m(a, |x| x.archive_lag_segments))
            }
        };
        let by = if self.reverse { by.reverse() } else { by };
        by.then_with(|| a.name.cmp(&b.name))
    }

    /// The overview's rows: the WALs that match the filter, in sort order.
    pub fn visible(&self) -> Vec<&Panel> {
        let needle = self.filter.to_lowercase();
        let mut v: Vec<&Panel> = self
            .panels
            .iter()
            .filter(|p| needle.is_empty() || p.name.to_lowercase().contains(&needle))
            .collect();
        v.sort_by(|a, b| self.cmp(a, b));
        v
    }

    fn clamp_cursor(&mut self) {
        let n = self.visible().len();
        self.cursor = self.cursor.min(n.saturating_sub(1));
    }

    fn set_wals(&mut self, wals: Vec<(String, String)>) {
        let mut old = std::mem::take(&mut self.panels);
        self.panels = wals
            .into_iter()
            .map(|(name, dir)| match old.iter().position(|p| p.dir == dir) {
                Some(i) => {
                    let mut p = old.swap_remove(i);
                    p.name = name;
                    p
                }
                None => Panel::new(name, dir),
            })
            .collect();
        self.clamp_cursor();
    }

    /// Applies one event. Returns true when the screen should be redrawn.
    pub fn update(&mut self, ev: Event) -> bool {
        match ev {
            Event::Wals(w) => {
                self.set_wals(w);
                true
            }
            Event::Snapshot(snap) => {
                if self.paused {
                    return false;
                }
                self.now_ms = self.now_ms.max(snap.taken_ms);
                // No redraw per snapshot: the collector's Tick after each round redraws
                // once for all of them.
                if let Some(p) = self.panels.iter_mut().find(|p| p.dir == snap.dir) {
                    p.apply(*snap);
                }
                false
            }
            Event::CollectError(dir, e) => {
                if self.paused {
                    return false;
                }
                if let Some(p) = self.panels.iter_mut().find(|p| p.dir == dir) {
                    p.error = Some(e);
                }
                false
            }
            Event::Tick(now) => {
                if self.paused {
                    return false;
                }
                self.now_ms = now;
                true
            }
            Event::Resize => true,
            Event::Key(k) => self.key(k),
        }
    }

    fn key(&mut self, k: Key) -> bool {
        if k == Key::CtrlC {
            self.quit = true;
            return true;
        }
        if self.help {
            self.help = false;
            return true;
        }
        if self.editing_filter {
            match k {
                Key::Char(c) => self.filter.push(c),
                Key::Backspace => {
                    self.filter.pop();
                }
                Key::Enter => self.editing_filter = false,
                Key::Esc => {
                    self.filter.clear();
                    self.editing_filter = false;
                }
                _ => return false,
            }
            self.cursor = 0;
            return true;
        }
        match k {
            Key::Char('q') => self.quit = true,
            Key::Char('p') | Key::Char(' ') => self.paused = !self.paused,
            Key::Char('?') => self.help = true,
            _ => {
                return match self.screen {
                    Screen::Overview => self.overview_key(k),
                    Screen::Detail(_) => self.detail_key(k),
                }
            }
        }
        true
    }

    fn overview_key(&mut self, k: Key) -> bool {
        let n = self.visible().len();
        let page = 10;
        match k {
            Key::Up | Key::Char('k') => self.cursor = self.cursor.saturating_sub(1),
            Key::Down | Key::Char('j') => self.cursor = (self.cursor + 1).min(n.saturating_sub(1)),
            Key::PageUp => self.cursor = self.cursor.saturating_sub(page),
            Key::PageDown => self.cursor = (self.cursor + page).min(n.saturating_sub(1)),
            Key::Home | Key::Char('g') => self.cursor = 0,
            Key::End | Key::Char('G') => self.cursor = n.saturating_sub(1),
            Key::Char('/') => {
                self.editing_filter = true;
                self.filter.clear();
                self.cursor = 0;
            }
            Key::Esc if !self.filter.is_empty() => {
                self.filter.clear();
                self.cursor = 0;
            }
            Key::Enter => match self.visible().get(self.cursor) {
                Some(p) => self.screen = Screen::Detail(p.dir.clone()),
                None => return false,
            },
            Key::Char(c) => match SortKey::KEYS.iter().find(|x| x.0 == c) {
                Some(&(_, key, _)) => {
                    if self.sort == key {
                        self.reverse = !self.reverse;
                    } else {
                        self.sort = key;
                        self.reverse = false;
                    }
                    self.cursor = 0;
                }
                None => return false,
            },
            _ => return false,
        }
        true
    }

    fn detail_key(&mut self, k: Key) -> bool {
        let step = |app: &mut App, fwd: bool| {
            let dirs: Vec<String> = app.visible().iter().map(|p| p.dir.clone()).collect();
            if dirs.is_empty() {
                return;
            }
            let at = app
                .current()
                .and_then(|c| dirs.iter().position(|d| d == &c.dir))
                .unwrap_or(0);
            let n = dirs.len();
            let next = if fwd { (at + 1) % n } else { (at + n - 1) % n };
            app.cursor = next;
            app.screen = Screen::Detail(dirs[next].clone());
        };
        match k {
            Key::Esc | Key::Backspace => {
                // Back to the overview, the cursor on the WAL just seen.
                if let Some(dir) = self.current().map(|p| p.dir.clone()) {
                    if let Some(i) = self.visible().iter().position(|p| p.dir == dir) {
                        self.cursor = i;
                    }
                }
                self.screen = Screen::Overview;
            }
            Key::Next | Key::Char('l') => step(self, true),
            Key::Prev | Key::Char('h') => step(self, false),
            Key::Char('t') => self.window = (self.window + 1) % CHART_WINDOWS_MIN.len(),
            _ => return false,
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walspool_wal::{ConsumerMetrics, Metrics};

    fn snap(dir: &str, written: u64, appended: u64, errors: u64, backlog: u64) -> Box<Snapshot> {
        Box::new(Snapshot {
            dir: dir.into(),
            taken_ms: written + 100,
            writer: Writer::Running { pid: 7 },
            stats_written_ms: written,
            interval_ms: 500,
            metrics: {
                let mut v = Metrics::default();
                v.appended_records_total = appended;
                v.ship_errors_total = errors;
                v.backlog_records = backlog;
                v.consumers = vec![{
                    let mut v = ConsumerMetrics::default();
                    v.name = "c".into();
                    v.committed_seq = appended.saturating_sub(backlog);
                    v.backlog_records = backlog;
                    v.backlog_bytes = backlog * 10;
                    v
                }];
                v
            },
            from_disk: false,
            oldest_unshipped_ts_ms: if backlog > 0 { written - 1_000 } else { 0 },
            consumer_oldest_ts_ms: Default::default(),
        })
    }

    fn wals(n: usize) -> Vec<(String, String)> {
        (0..n)
            .map(|i| (format!("w{i}"), format!("/w{i}")))
            .collect()
    }

    fn app(n: usize) -> App {
        App::new(&wals(n), Thresholds::default(), 500)
    }

    #[test]
    fn snapshots_fill_the_panel_and_compute_rates() {
        let mut a = app(1);
        assert!(!a.update(Event::Snapshot(snap("/w0", 1_000, 100, 1, 10))));
        assert_eq!(a.panels[0].append_rate, 0.0);
        a.update(Event::Snapshot(snap("/w0", 1_500, 200, 2, 20)));
        let p = &a.panels[0];
        assert_eq!(p.append_rate, 200.0);
        assert_eq!(p.ship_error_rate, 2.0);
        assert_eq!(p.ship_rate, 180.0); // committed 90 -> 180
        assert_eq!(a.now_ms, 1_600);
        // The same publication read twice adds nothing and keeps the rates.
        a.update(Event::Snapshot(snap("/w0", 1_500, 200, 2, 20)));
        assert_eq!(a.panels[0].append_rate, 200.0);
        // Rates cover the whole window, not just the last two publications.
        a.update(Event::Snapshot(snap("/w0", 2_000, 200, 2, 20)));
        assert_eq!(a.panels[0].append_rate, 100.0);
        assert_eq!(a.panels[0].ship_error_rate, 1.0);
        // Samples older than the window are forgotten.
        a.update(Event::Snapshot(snap("/w0", 12_000, 1_200, 2, 20)));
        assert_eq!(a.panels[0].append_rate, 100.0);
        // A restarted writer (counters went back) resets the rates.
        a.update(Event::Snapshot(snap("/w0", 13_000, 5, 0, 5)));
        assert_eq!(a.panels[0].append_rate, 0.0);
        // History: one point a second at most.
        let h: Vec<u64> = a.panels[0].history.iter().map(|p| p.t_ms).collect();
        assert_eq!(h, vec![1_000, 2_000, 12_000]);
    }

    #[test]
    fn history_covers_an_hour() {
        let mut a = app(1);
        for i in 0..4_000u64 {
            a.update(Event::Snapshot(snap("/w0", 1_000 + i * 1_000, i, 0, i)));
        }
        let h = &a.panels[0].history;
        assert_eq!(h.len(), 3_601);
        assert_eq!(h.back().unwrap().t_ms - h.front().unwrap().t_ms, HISTORY_MS);
    }

    #[test]
    fn a_dead_writer_snapshot_zeroes_rates() {
        let mut a = app(1);
        a.update(Event::Snapshot(snap("/w0", 1_000, 100, 0, 5)));
        a.update(Event::Snapshot(snap("/w0", 1_500, 200, 0, 5)));
        let mut dead = snap("/w0", 1_500, 200, 0, 5);
        dead.from_disk = true;
        dead.writer = Writer::NotRunning {
            since_ms: 1_500,
            pid: 7,
            why: "pid 7 gone".into(),
        };
        a.update(Event::Snapshot(dead));
        assert_eq!(a.panels[0].append_rate, 0.0);
        assert_eq!(a.panels[0].severity(&a.thresholds, a.now_ms), 2);
    }

    #[test]
    fn alerts_backlog_age_and_error_rate() {
        let t = Thresholds {
            backlog_age_ms: 5_000,
            errors_per_sec: 1.0,
            ..Thresholds::default()
        };
        let mut a = App::new(&wals(3), t, 500);
        // w0: a backlog whose oldest record was appended at 2_000.
        a.update(Event::Snapshot(snap("/w0", 3_000, 10, 0, 5)));
        // w1: 4 errors a second.
        a.update(Event::Snapshot(snap("/w1", 1_000, 10, 0, 0)));
        a.update(Event::Snapshot(snap("/w1", 2_000, 20, 4, 0)));
        // w2: fine.
        a.update(Event::Snapshot(snap("/w2", 1_000, 10, 0, 0)));
        a.update(Event::Tick(2_000));
        assert_eq!(a.alerting(), 1);
        assert_eq!(a.panels[1].alerts(&a.thresholds, a.now_ms), [Alert::Errors]);
        a.update(Event::Tick(10_000));
        assert_eq!(a.alerting(), 2);
        assert_eq!(
            a.panels[0].alerts(&a.thresholds, a.now_ms),
            [Alert::BacklogAge]
        );
        // Worst first: the old backlog, then the erroring one, then the fine one.
        let names: Vec<&str> = a.visible().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["w0", "w1", "w2"]);
    }

    #[test]
    fn sort_filter_and_navigation() {
        let mut a = app(3);
        for (i, backlog) in [(0, 5u64), (1, 50), (2, 0)] {
            a.update(Event::Snapshot(snap(
                &format!("/w{i}"),
                1_000,
                100,
                0,
                backlog,
            )));
        }
        a.update(Event::Key(Key::Char('b')));
        let names =
            |a: &App| -> Vec<String> { a.visible().iter().map(|p| p.name.clone()).collect() };
        assert_eq!(names(&a), ["w1", "w0", "w2"]);
        a.update(Event::Key(Key::Char('b'))); // again: reversed
        assert_eq!(names(&a), ["w2", "w0", "w1"]);
        a.update(Event::Key(Key::Char('n')));
        assert_eq!(names(&a), ["w0", "w1", "w2"]);

        // Enter opens the row under the cursor; Tab moves on; Esc returns.
        a.update(Event::Key(Key::Down));
        a.update(Event::Key(Key::Enter));
        assert_eq!(a.screen, Screen::Detail("/w1".into()));
        a.update(Event::Key(Key::Next));
        assert_eq!(a.current().unwrap().name, "w2");
        a.update(Event::Key(Key::Char('t')));
        assert_eq!(CHART_WINDOWS_MIN[a.window], 15);
        a.update(Event::Key(Key::Esc));
        assert_eq!(a.screen, Screen::Overview);
        assert_eq!(a.cursor, 2);

        // `/` filters by name; Esc clears.
        for k in [Key::Char('/'), Key::Char('W'), Key::Char('1'), Key::Enter] {
            a.update(Event::Key(k));
        }
        assert_eq!(names(&a), ["w1"]);
        assert_eq!(a.cursor, 0);
        assert!(!a.editing_filter);
        a.update(Event::Key(Key::Char('q'))); // not typed into the filter any more
        assert!(a.quit);
        a.quit = false;
        a.update(Event::Key(Key::Esc));
        assert_eq!(names(&a).len(), 3);
    }

    #[test]
    fn wals_appear_and_disappear() {
        let mut a = app(2);
        a.update(Event::Snapshot(snap("/w1", 1_000, 1, 0, 1)));
        a.update(Event::Wals(vec![
            ("w1".into(), "/w1".into()),
            ("w9".into(), "/w9".into()),
        ]));
        let dirs: Vec<&str> = a.panels.iter().map(|p| p.dir.as_str()).collect();
        assert_eq!(dirs, ["/w1", "/w9"]);
        assert!(a.panels[0].snap.is_some(), "kept what it knew of w1");
        assert!(!a.update(Event::Snapshot(snap("/w0", 1_000, 1, 0, 1))));
    }

    #[test]
    fn pause_help_and_quit() {
        let mut a = app(1);
        a.update(Event::Key(Key::Char('p')));
        assert!(a.paused);
        assert!(!a.update(Event::Snapshot(snap("/w0", 1_000, 1, 0, 1))));
        assert_eq!(a.panels[0].snap, None);
        assert!(!a.update(Event::Tick(5)));
        a.update(Event::Key(Key::Char('p')));
        a.update(Event::Snapshot(snap("/w0", 1_000, 1, 0, 1)));
        assert!(a.panels[0].snap.is_some());
        a.update(Event::Key(Key::Char('?')));
        assert!(a.help);
        a.update(Event::Key(Key::Char('q'))); // closes help first
        assert!(!a.help && !a.quit);
        a.update(Event::Key(Key::CtrlC));
        assert!(a.quit);
    }

    #[test]
    fn errors_are_kept_until_the_next_snapshot() {
        let mut a = app(2);
        a.update(Event::CollectError("/w1".into(), "gone".into()));
        assert_eq!(a.panels[1].error.as_deref(), Some("gone"));
        assert_eq!(a.panels[1].severity(&a.thresholds, 0), 2);
        a.update(Event::Snapshot(snap("/w1", 1_000, 1, 0, 1)));
        assert_eq!(a.panels[1].error, None);
    }
}
