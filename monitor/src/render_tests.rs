//! Render tests: the view drawn into ratatui's `TestBackend`, snapshotted with insta
//! (`src/snapshots/`), plus style checks the text cannot show (red drops, red breaker).

use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::style::Color;
use ratatui::Terminal;
use walspool_wal::{ConsumerMetrics, Metrics, SegmentMetrics};

use crate::app::{App, Event, Key, Thresholds};
use crate::collect::{Snapshot, Writer};
use crate::view;

const NOW: u64 = 1_795_000_000_000; // 2026-11-18 11:06:40 UTC

fn metrics(dropped: u64, breaker: &str) -> Metrics {
    let seg = |base: u64, last: u64, bytes: u64, sealed: bool, archived: bool| SegmentMetrics {
        file: format!("/var/lib/orders/{base:020}.wal"),
        first_seq: base,
        last_seq: last,
        bytes,
        sealed,
        archived,
    };
    Metrics {
        backlog_records: 1_234,
        backlog_bytes: 118_000,
        ship_errors_total: 17,
        dropped_records_total: dropped,
        last_ship_ts: NOW - 2_500,
        current_file: format!("/var/lib/orders/{:020}.wal", 4_001),
        current_offset: 96_512,
        wal_id: "5f3a9c0d11e2b7a4".into(),
        first_seq: 1_001,
        last_seq: 5_234,
        durable_seq: 5_234,
        appended_records_total: 4_000,
        appended_bytes_total: 380_000,
        fsyncs_total: 900,
        fsync_p50_us: 420,
        fsync_p99_us: 3_900,
        segment_count: 4,
        disk_bytes: 401_000,
        breaker_state: breaker.into(),
        archive_lag_segments: 1,
        archive_lag_bytes: 102_400,
        archiving: true,
        consumers: vec![
            ConsumerMetrics {
                name: "audit-sink".into(),
                committed_seq: 4_000,
                backlog_records: 1_234,
                backlog_bytes: 118_000,
            },
            ConsumerMetrics {
                name: "warehouse".into(),
                committed_seq: 5_200,
                backlog_records: 34,
                backlog_bytes: 3_300,
            },
        ],
        segments: vec![
            seg(1_001, 2_000, 102_400, true, true),
            seg(2_001, 3_000, 102_400, true, true),
            seg(3_001, 4_000, 102_400, true, false),
            seg(4_001, 5_234, 96_512, false, false),
        ],
        ..Metrics::default()
    }
}

fn snapshot(writer: Writer, m: Metrics) -> Snapshot {
    let from_disk = !writer.is_running();
    Snapshot {
        dir: "/var/lib/orders".into(),
        taken_ms: NOW,
        writer,
        stats_written_ms: NOW - 300,
        interval_ms: 500,
        metrics: m,
        from_disk,
    }
}

/// An app over two WALs whose first panel went through a few publications (so the
/// sparkline and rates have data), ending with `last`.
fn app_with(last: Snapshot) -> App {
    let dirs = vec![
        "/var/lib/orders".to_string(),
        "/var/lib/billing".to_string(),
    ];
    let mut app = App::new(&dirs, Thresholds::default(), 500);
    for i in 0..30u64 {
        let mut s = snapshot(Writer::Running { pid: 4242 }, metrics(0, "closed"));
        s.stats_written_ms = NOW - 30_000 + i * 500;
        s.taken_ms = s.stats_written_ms + 50;
        s.metrics.backlog_records = 200 + (i * 37) % 900;
        s.metrics.appended_records_total = 1_000 + i * 100;
        s.metrics.ship_errors_total = 10 + i / 5;
        app.update(Event::Snapshot(0, Box::new(s)));
    }
    app.update(Event::Snapshot(0, Box::new(last)));
    app.update(Event::Tick(NOW));
    app
}

fn draw(app: &App, w: u16, h: u16) -> Terminal<TestBackend> {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| view::render(app, f)).unwrap();
    t
}

/// The foreground colour of the first cell of the first occurrence of `needle`.
fn fg_of(buf: &Buffer, needle: &str) -> Option<Color> {
    (0..buf.area.height).find_map(|y| cell_x(buf, y, needle).map(|x| buf[(x, y)].fg))
}

fn screen(t: &Terminal<TestBackend>) -> String {
    let buf = t.backend().buffer();
    (0..buf.area.height)
        .map(|y| {
            (0..buf.area.width)
                .map(|x| buf[(x, y)].symbol().to_string())
                .collect::<String>()
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn full_running_zero_drops() {
    let app = app_with(snapshot(
        Writer::Running { pid: 4242 },
        metrics(0, "closed"),
    ));
    let t = draw(&app, 120, 40);
    let s = screen(&t);
    insta::assert_snapshot!("full_running_zero_drops", s);
    assert!(s.contains("dropped       0"), "{s}");
    // The value (after the 14-column label) is green, not red.
    assert_eq!(value_fg(t.backend().buffer(), "dropped"), Color::Green);
    assert_eq!(value_fg(t.backend().buffer(), "breaker"), Color::Green);
}

/// Column (in cells) where `needle` starts on row `y`, counting cells not bytes.
fn cell_x(buf: &Buffer, y: u16, needle: &str) -> Option<u16> {
    let cells: Vec<String> = (0..buf.area.width)
        .map(|x| buf[(x, y)].symbol().to_string())
        .collect();
    let n: Vec<String> = needle.chars().map(|c| c.to_string()).collect();
    (0..cells.len().saturating_sub(n.len() - 1))
        .find(|&i| cells[i..i + n.len()] == n[..])
        .map(|x| x as u16)
}

fn value_fg(buf: &Buffer, label: &str) -> Color {
    for y in 0..buf.area.height {
        if let Some(x) = cell_x(buf, y, label) {
            return buf[(x + 14, y)].fg;
        }
    }
    panic!("{label:?} not on screen");
}

#[test]
fn full_drops_and_open_breaker() {
    let app = app_with(snapshot(
        Writer::Running { pid: 4242 },
        metrics(4_096, "open"),
    ));
    let t = draw(&app, 120, 40);
    let s = screen(&t);
    insta::assert_snapshot!("full_drops_open_breaker", s);
    assert!(s.contains("dropped       4,096"), "{s}");
    assert!(s.contains("breaker       OPEN"), "{s}");
    let buf = t.backend().buffer();
    assert_eq!(value_fg(buf, "dropped"), Color::Red);
    assert_eq!(value_fg(buf, "breaker"), Color::Red);
}

#[test]
fn full_stale_writer() {
    let mut m = metrics(12, "closed");
    m.breaker_state = "half-open".into();
    let w = Writer::NotRunning {
        since_ms: NOW - 65_000,
        pid: 4242,
        why: "pid 4242 gone".into(),
    };
    let app = app_with(snapshot(w, m));
    let t = draw(&app, 120, 40);
    let s = screen(&t);
    insta::assert_snapshot!("full_stale_writer", s);
    assert!(
        s.contains("writer not running since 2026-11-18 11:05:35 UTC (pid 4242 gone)"),
        "{s}"
    );
    assert!(s.contains("backlog       1,234 records"), "{s}");
    assert!(s.contains("- (writer not running)"), "{s}");
    let buf = t.backend().buffer();
    assert_eq!(fg_of(buf, "✖ writer not running"), Some(Color::Red));
    assert_eq!(value_fg(buf, "dropped"), Color::Red);
}

#[test]
fn compact_running_zero_drops() {
    let app = app_with(snapshot(
        Writer::Running { pid: 4242 },
        metrics(0, "closed"),
    ));
    let t = draw(&app, 40, 12);
    insta::assert_snapshot!("compact_running_zero_drops", screen(&t));
    assert_eq!(value_fg(t.backend().buffer(), "dropped"), Color::Green);
}

#[test]
fn compact_stale_writer_with_drops_and_open_breaker() {
    let w = Writer::NotRunning {
        since_ms: NOW - 65_000,
        pid: 4242,
        why: "stats 65s old".into(),
    };
    let app = app_with(snapshot(w, metrics(7, "open")));
    let t = draw(&app, 40, 12);
    let s = screen(&t);
    insta::assert_snapshot!("compact_stale_drops_open_breaker", s);
    assert!(s.contains("NOT RUNNING since 11:05:35"), "{s}");
    let buf = t.backend().buffer();
    assert_eq!(value_fg(buf, "dropped"), Color::Red);
    assert_eq!(value_fg(buf, "breaker"), Color::Red);
}

#[test]
fn second_panel_paused_and_help() {
    let mut app = app_with(snapshot(
        Writer::Running { pid: 4242 },
        metrics(0, "closed"),
    ));
    app.update(Event::Key(Key::Next));
    app.update(Event::CollectError(
        1,
        "open WAL directory failed on /var/lib/billing: No such file".into(),
    ));
    app.update(Event::Key(Key::Pause));
    let t = draw(&app, 120, 40);
    let s = screen(&t);
    insta::assert_snapshot!("second_panel_paused", s);
    assert!(s.contains("PAUSED"), "{s}");
    assert!(s.contains("No such file"), "{s}");
    app.update(Event::Key(Key::Help));
    let t = draw(&app, 120, 40);
    insta::assert_snapshot!("help_overlay", screen(&t));
}

#[test]
fn tiny_terminal_does_not_panic() {
    let app = app_with(snapshot(
        Writer::Running { pid: 4242 },
        metrics(0, "closed"),
    ));
    for (w, h) in [(1, 1), (10, 3), (69, 19), (70, 20), (200, 60)] {
        let t = draw(&app, w, h);
        assert_eq!(t.backend().buffer().area.width, w);
    }
    let empty = App::new(&[], Thresholds::default(), 500);
    let s = screen(&draw(&empty, 120, 40));
    assert!(s.contains("no WAL directory given"), "{s}");
}
