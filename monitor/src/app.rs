//! The dashboard's state: a plain [`App`] updated from [`Event`]s. No I/O here; the
//! view renders an `App`, collectors and the terminal produce events.

use std::collections::VecDeque;

use crate::collect::Snapshot;

/// Rates are computed over this window of publications.
pub const RATE_WINDOW_MS: u64 = 10_000;

/// How many backlog samples the sparkline keeps.
pub const HISTORY: usize = 240;

/// A key, already decoded from the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// `q`, Esc or Ctrl-C.
    Quit,
    /// `p`.
    Pause,
    /// `?`.
    Help,
    /// Tab, → or `l`.
    Next,
    /// Shift-Tab, ← or `h`.
    Prev,
    /// A digit `1`..`9`: jump to that panel.
    Select(usize),
    /// Anything else.
    Other,
}

/// Everything that changes the dashboard, sent over one channel.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A fresh snapshot of panel `.0`.
    Snapshot(usize, Box<Snapshot>),
    /// Panel `.0` could not be read.
    CollectError(usize, String),
    /// A key was pressed.
    Key(Key),
    /// The clock moved (ms since the epoch): ages are recomputed.
    Tick(u64),
    /// The terminal was resized.
    Resize,
}

/// Warning thresholds (set by flags).
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// Backlog (records) above which it is shown as a warning.
    pub backlog_records: u64,
    /// Age of the last shipment (s) above which it is a warning (while a backlog exists).
    pub ship_age_secs: u64,
    /// Ship errors per minute above which the rate is a warning.
    pub ship_errors_per_min: f64,
    /// fsync p99 (ms) above which it is a warning.
    pub fsync_p99_ms: f64,
    /// Sealed segments waiting for the archive above which it is a warning.
    pub archive_lag_segments: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            backlog_records: 10_000,
            ship_age_secs: 60,
            ship_errors_per_min: 10.0,
            fsync_p99_ms: 50.0,
            archive_lag_segments: 4,
        }
    }
}

/// One WAL's panel.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Panel {
    /// The directory, as given.
    pub dir: String,
    /// The latest snapshot.
    pub snap: Option<Snapshot>,
    /// The latest collection error (cleared by the next snapshot).
    pub error: Option<String>,
    /// Backlog (records) history, oldest first.
    pub backlog_history: VecDeque<u64>,
    /// Appended records per second, over the last [`RATE_WINDOW_MS`].
    pub append_rate: f64,
    /// Ship errors per minute, over the last [`RATE_WINDOW_MS`].
    pub ship_error_rate: f64,
    /// Publications used for rates, oldest first: `(written_ms, appended, ship_errors)`.
    samples: VecDeque<(u64, u64, u64)>,
}

impl Panel {
    /// A panel for `dir` with nothing collected yet.
    pub fn new(dir: impl Into<String>) -> Self {
        Panel {
            dir: dir.into(),
            ..Panel::default()
        }
    }

    fn apply(&mut self, snap: Snapshot) {
        let m = &snap.metrics;
        if snap.from_disk {
            self.append_rate = 0.0;
            self.ship_error_rate = 0.0;
            self.samples.clear();
        } else {
            let cur = (
                snap.stats_written_ms,
                m.appended_records_total,
                m.ship_errors_total,
            );
            match self.samples.back().copied() {
                Some(last) if cur.0 <= last.0 => {} // the same publication again
                Some(last) if cur.1 < last.1 || cur.2 < last.2 => {
                    // The writer restarted: its counters began again.
                    self.samples.clear();
                    self.samples.push_back(cur);
                    self.append_rate = 0.0;
                    self.ship_error_rate = 0.0;
                }
                _ => {
                    self.samples.push_back(cur);
                    while self.samples.len() > 2
                        && self
                            .samples
                            .front()
                            .is_some_and(|f| cur.0 - f.0 > RATE_WINDOW_MS)
                    {
                        self.samples.pop_front();
                    }
                    if let Some(&(t, a, e)) = self.samples.front().filter(|f| f.0 < cur.0) {
                        let dt = (cur.0 - t) as f64 / 1000.0;
                        self.append_rate = (cur.1 - a) as f64 / dt;
                        self.ship_error_rate = (cur.2 - e) as f64 / dt * 60.0;
                    }
                }
            }
        }
        let is_new = self
            .snap
            .as_ref()
            .is_none_or(|s| s.stats_written_ms != snap.stats_written_ms || snap.from_disk);
        if is_new {
            if self.backlog_history.len() == HISTORY {
                self.backlog_history.pop_front();
            }
            self.backlog_history.push_back(m.backlog_records);
        }
        self.error = None;
        self.snap = Some(snap);
    }
}

/// The dashboard's whole state.
#[derive(Debug, Clone, PartialEq)]
pub struct App {
    /// One panel per WAL.
    pub panels: Vec<Panel>,
    /// The panel shown.
    pub selected: usize,
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
}

impl App {
    /// A dashboard over these directories.
    pub fn new(dirs: &[String], thresholds: Thresholds, refresh_ms: u64) -> Self {
        App {
            panels: dirs.iter().map(|d| Panel::new(d.clone())).collect(),
            selected: 0,
            paused: false,
            help: false,
            quit: false,
            now_ms: 0,
            thresholds,
            refresh_ms,
        }
    }

    /// The panel shown.
    pub fn current(&self) -> Option<&Panel> {
        self.panels.get(self.selected)
    }

    /// Applies one event. Returns true when the screen should be redrawn.
    pub fn update(&mut self, ev: Event) -> bool {
        match ev {
            Event::Snapshot(i, snap) => {
                if self.paused {
                    return false;
                }
                self.now_ms = self.now_ms.max(snap.taken_ms);
                match self.panels.get_mut(i) {
                    Some(p) => {
                        p.apply(*snap);
                        i == self.selected
                    }
                    None => false,
                }
            }
            Event::CollectError(i, e) => {
                if self.paused {
                    return false;
                }
                match self.panels.get_mut(i) {
                    Some(p) => {
                        p.error = Some(e);
                        i == self.selected
                    }
                    None => false,
                }
            }
            Event::Tick(now) => {
                if self.paused {
                    return false;
                }
                self.now_ms = now;
                true
            }
            Event::Resize => true,
            Event::Key(k) => {
                let n = self.panels.len().max(1);
                match k {
                    Key::Quit => {
                        if self.help {
                            self.help = false;
                        } else {
                            self.quit = true;
                        }
                    }
                    Key::Pause => self.paused = !self.paused,
                    Key::Help => self.help = !self.help,
                    Key::Next => self.selected = (self.selected + 1) % n,
                    Key::Prev => self.selected = (self.selected + n - 1) % n,
                    Key::Select(i) if i < self.panels.len() => self.selected = i,
                    Key::Select(_) | Key::Other => return false,
                }
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::Writer;
    use walspool_wal::Metrics;

    fn snap(written: u64, appended: u64, errors: u64, backlog: u64) -> Box<Snapshot> {
        Box::new(Snapshot {
            dir: "/w".into(),
            taken_ms: written + 100,
            writer: Writer::Running { pid: 7 },
            stats_written_ms: written,
            interval_ms: 500,
            metrics: Metrics {
                appended_records_total: appended,
                ship_errors_total: errors,
                backlog_records: backlog,
                ..Metrics::default()
            },
            from_disk: false,
        })
    }

    fn app(n: usize) -> App {
        let dirs: Vec<String> = (0..n).map(|i| format!("/w{i}")).collect();
        App::new(&dirs, Thresholds::default(), 500)
    }

    #[test]
    fn snapshots_fill_the_panel_and_compute_rates() {
        let mut a = app(1);
        assert!(a.update(Event::Snapshot(0, snap(1_000, 100, 1, 10))));
        assert_eq!(a.panels[0].append_rate, 0.0);
        assert!(a.update(Event::Snapshot(0, snap(1_500, 200, 2, 20))));
        assert_eq!(a.panels[0].append_rate, 200.0);
        assert_eq!(a.panels[0].ship_error_rate, 120.0);
        assert_eq!(a.panels[0].backlog_history, VecDeque::from(vec![10, 20]));
        assert_eq!(a.now_ms, 1_600);
        // The same publication read twice adds no sample and keeps the rates.
        a.update(Event::Snapshot(0, snap(1_500, 200, 2, 20)));
        assert_eq!(a.panels[0].backlog_history.len(), 2);
        assert_eq!(a.panels[0].append_rate, 200.0);
        // Rates cover the whole window, not just the last two publications.
        a.update(Event::Snapshot(0, snap(2_000, 200, 2, 20)));
        assert_eq!(a.panels[0].append_rate, 100.0);
        assert_eq!(a.panels[0].ship_error_rate, 60.0);
        // Samples older than the window are forgotten.
        a.update(Event::Snapshot(0, snap(12_000, 1_200, 2, 20)));
        assert_eq!(a.panels[0].append_rate, 100.0);
        // A restarted writer (counters went back) resets the rates.
        a.update(Event::Snapshot(0, snap(13_000, 5, 0, 20)));
        assert_eq!(a.panels[0].append_rate, 0.0);
    }

    #[test]
    fn history_is_bounded() {
        let mut a = app(1);
        for i in 0..(HISTORY as u64 + 10) {
            a.update(Event::Snapshot(0, snap(1_000 + i * 500, i, 0, i)));
        }
        assert_eq!(a.panels[0].backlog_history.len(), HISTORY);
        assert_eq!(a.panels[0].backlog_history.front(), Some(&10));
    }

    #[test]
    fn a_dead_writer_snapshot_zeroes_rates() {
        let mut a = app(1);
        a.update(Event::Snapshot(0, snap(1_000, 100, 0, 5)));
        a.update(Event::Snapshot(0, snap(1_500, 200, 0, 5)));
        let mut dead = snap(1_500, 200, 0, 5);
        dead.from_disk = true;
        dead.writer = Writer::NotRunning {
            since_ms: 1_500,
            pid: 7,
            why: "pid 7 gone".into(),
        };
        a.update(Event::Snapshot(0, dead));
        assert_eq!(a.panels[0].append_rate, 0.0);
        assert!(a.panels[0]
            .snap
            .as_ref()
            .is_some_and(|s| !s.writer.is_running()));
    }

    #[test]
    fn keys_switch_pause_help_and_quit() {
        let mut a = app(3);
        a.update(Event::Key(Key::Next));
        assert_eq!(a.selected, 1);
        a.update(Event::Key(Key::Prev));
        a.update(Event::Key(Key::Prev));
        assert_eq!(a.selected, 2);
        a.update(Event::Key(Key::Select(0)));
        assert_eq!(a.selected, 0);
        assert!(!a.update(Event::Key(Key::Select(7))));
        assert_eq!(a.selected, 0);

        a.update(Event::Key(Key::Pause));
        assert!(a.paused);
        assert!(!a.update(Event::Snapshot(0, snap(1_000, 1, 0, 1))));
        assert_eq!(a.panels[0].snap, None);
        assert!(!a.update(Event::Tick(5)));
        a.update(Event::Key(Key::Pause));
        assert!(a.update(Event::Snapshot(0, snap(1_000, 1, 0, 1))));
        assert!(a.panels[0].snap.is_some());

        a.update(Event::Key(Key::Help));
        assert!(a.help);
        a.update(Event::Key(Key::Quit)); // closes help first
        assert!(!a.help && !a.quit);
        a.update(Event::Key(Key::Quit));
        assert!(a.quit);
    }

    #[test]
    fn errors_are_kept_until_the_next_snapshot() {
        let mut a = app(2);
        assert!(!a.update(Event::CollectError(1, "gone".into())));
        assert_eq!(a.panels[1].error.as_deref(), Some("gone"));
        a.update(Event::Snapshot(1, snap(1_000, 1, 0, 1)));
        assert_eq!(a.panels[1].error, None);
        assert!(!a.update(Event::Snapshot(9, snap(1_000, 1, 0, 1))));
    }
}
