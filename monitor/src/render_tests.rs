//! Render tests: the view drawn into ratatui's `TestBackend`, snapshotted with insta
//! (`src/snapshots/`), plus style checks the text cannot show (red drops, red breaker).

use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::style::Color;
use ratatui::Terminal;
use walspool_wal::{ConsumerMetrics, Metrics, SegmentMetrics, SinkMetrics};

use crate::app::{App, Event, Key, Screen, Thresholds};
use crate::collect::{Snapshot, Writer};
use crate::view;
use walspool_test_support::promtool_check;

const NOW: u64 = 1_795_000_000_000; // 2026-11-18 11:06:40 UTC

fn metrics(dropped: u64, breaker: &str) -> Metrics {
    let seg = |base: u64, last: u64, bytes: u64, sealed: bool, archived: bool| {
        let mut v = SegmentMetrics::default();
        v.file = format!("/var/lib/orders/{base:020}.wal");
        v.first_seq = base;
        v.last_seq = last;
        v.bytes = bytes;
        v.sealed = sealed;
        v.archived = archived;
        v
    };
    {
        let mut v = Metrics::default();
        v.backlog_records = 1_234;
        v.backlog_bytes = 118_000;
        v.ship_errors_total = 17;
        v.dropped_records_total = dropped;
        v.last_ship_ts = NOW - 2_500;
        v.current_file = format!("/var/lib/orders/{:020}.wal", 4_001);
        v.current_offset = 96_512;
        v.wal_id = "5f3a9c0d11e2b7a4".into();
        v.first_seq = 1_001;
        v.last_seq = 5_234;
        v.durable_seq = 5_234;
        v.appended_records_total = 4_000;
        v.appended_bytes_total = 380_000;
        v.fsyncs_total = 900;
        v.fsync_p50_us = 420;
        v.fsync_p99_us = 3_900;
        v.segment_count = 4;
        v.disk_bytes = 401_000;
        v.breaker_state = breaker.into();
        v.archive_lag_segments = 1;
        v.archive_lag_bytes = 102_400;
        v.archiving = true;
        v.consumers = vec![
            {
                let mut v = ConsumerMetrics::default();
                v.name = "audit-sink".into();
                v.committed_seq = 4_000;
                v.backlog_records = 1_234;
                v.backlog_bytes = 118_000;
                v.breaker_state = breaker.into();
                v
            },
            {
                let mut v = ConsumerMetrics::default();
                v.name = "warehouse".into();
                v.committed_seq = 5_200;
                v.backlog_records = 34;
                v.backlog_bytes = 3_300;
                v
            },
        ];
        v.segments = vec![
            seg(1_001, 2_000, 102_400, true, true),
            seg(2_001, 3_000, 102_400, true, true),
            seg(3_001, 4_000, 102_400, true, false),
            seg(4_001, 5_234, 96_512, false, false),
        ];
        v
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
        oldest_unshipped_ts_ms: NOW - 42_000,
        consumer_oldest_ts_ms: [
            ("audit-sink".to_string(), NOW - 42_000),
            ("warehouse".to_string(), NOW - 3_000),
        ]
        .into(),
    }
}

/// An app over two WALs whose first panel went through a few publications (so the
/// sparkline and rates have data), ending with `last`.
fn app_with(last: Snapshot) -> App {
    let dirs = vec![
        ("orders".to_string(), "/var/lib/orders".to_string()),
        ("billing".to_string(), "/var/lib/billing".to_string()),
    ];
    let mut app = App::new(&dirs, Thresholds::default(), 500);
    let (mut appended, mut committed) = (1_000u64, 500u64);
    for i in 0..=600u64 {
        // Appends vary in waves; the sink keeps up with a little lag.
        appended += 40 + (i % 40) * 3;
        committed += 30 + ((i + 6) % 40) * 3 + u64::from(i.is_multiple_of(10)) * 50;
        committed = committed.min(appended);
        let mut s = if i == 600 {
            last.clone()
        } else {
            snapshot(Writer::Running { pid: 4242 }, metrics(0, "closed"))
        };
        if i == 600 && !last.writer.is_running() {
            break;
        }
        s.stats_written_ms = NOW - 300_000 + i * 500;
        s.taken_ms = s.stats_written_ms + 50;
        if i < 600 {
            s.metrics.backlog_records = appended - committed + 200;
        }
        s.metrics.appended_records_total = appended;
        s.metrics.ship_errors_total = 10 + i / 50;
        s.metrics.consumers[0].committed_seq = committed;
        if i == 600 {
            s.stats_written_ms = last.stats_written_ms;
            s.taken_ms = last.taken_ms;
        }
        app.update(Event::Snapshot(Box::new(s)));
    }
    if !last.writer.is_running() {
        app.update(Event::Snapshot(Box::new(last)));
    }
    app.update(Event::Tick(NOW));
    app.screen = Screen::Detail("/var/lib/orders".into());
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
        "/var/lib/billing".into(),
        "open WAL directory failed on /var/lib/billing: No such file".into(),
    ));
    app.update(Event::Key(Key::Char('p')));
    let t = draw(&app, 120, 40);
    let s = screen(&t);
    insta::assert_snapshot!("second_panel_paused", s);
    assert!(s.contains("PAUSED"), "{s}");
    assert!(s.contains("No such file"), "{s}");
    app.update(Event::Key(Key::Char('?')));
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
    assert!(s.contains("no WAL directory found"), "{s}");
    let f = fleet();
    for (w, h) in [(1, 1), (10, 3), (40, 10), (79, 23), (300, 80)] {
        let t = draw(&f, w, h);
        assert_eq!(t.backend().buffer().area.width, w);
    }
}

/// Twelve WALs as the fleet overview sees them: most fine, one stalled (old backlog),
/// one failing deliveries, one dropping, one stopped, one crashed.
fn fleet() -> App {
    let names = [
        "audit",
        "billing",
        "cart",
        "catalog",
        "email",
        "inventory",
        "ledger",
        "orders",
        "payments",
        "search",
        "sessions",
        "shipping",
    ];
    let wals: Vec<(String, String)> = names
        .iter()
        .map(|n| (n.to_string(), format!("/var/lib/nv-wal/{n}")))
        .collect();
    let t = Thresholds {
        backlog_age_ms: 5 * 60_000,
        errors_per_sec: 1.0,
        ..Thresholds::default()
    };
    let mut app = App::new(&wals, t, 500);
    app.roots = vec!["/var/lib/nv-wal".into()];
    for step in 0..3u64 {
        for (i, n) in names.iter().enumerate() {
            let i = i as u64;
            let mut m = metrics(0, "closed");
            m.consumers.truncate(1);
            m.archiving = !i.is_multiple_of(3);
            m.archive_lag_segments = i % 2;
            let written = NOW - 2_000 + step * 1_000;
            let rate = 40 + i * 17;
            m.appended_records_total = 10_000 + step * rate;
            m.consumers[0].committed_seq = 9_000 + step * rate;
            m.backlog_records = 20 + i * 3;
            m.backlog_bytes = m.backlog_records * 97;
            let mut oldest = written - 800 - i * 300;
            let mut writer = Writer::Running {
                pid: 1000 + i as u32,
            };
            match *n {
                "payments" => {
                    // Stalled sink: nothing shipped for 12 minutes.
                    m.consumers[0].committed_seq = 9_000;
                    m.backlog_records = 1_000 + step * rate;
                    m.backlog_bytes = m.backlog_records * 97;
                    m.breaker_state = "open".into();
                    oldest = NOW - 12 * 60_000;
                }
                "email" => {
                    // A failing sink: 3 failed deliveries a second.
                    m.ship_errors_total = 100 + step * 3;
                    m.breaker_state = "half-open".into();
                }
                "sessions" => m.dropped_records_total = 4_096 + step * 50,
                "search" => {
                    writer = Writer::Closed {
                        at_ms: NOW - 3_600_000,
                        pid: 77,
                    };
                    m.backlog_records = 0;
                    m.backlog_bytes = 0;
                }
                "cart" => {
                    writer = Writer::NotRunning {
                        since_ms: NOW - 95_000,
                        pid: 78,
                        why: "pid 78 gone".into(),
                    };
                    oldest = NOW - 100_000;
                }
                _ => {}
            }
            let from_disk = !writer.is_running();
            let s = Snapshot {
                dir: format!("/var/lib/nv-wal/{n}"),
                taken_ms: written + 20,
                writer,
                stats_written_ms: written,
                interval_ms: 500,
                metrics: m,
                from_disk,
                oldest_unshipped_ts_ms: oldest,
                consumer_oldest_ts_ms: Default::default(),
            };
            app.update(Event::Snapshot(Box::new(s)));
        }
    }
    app.update(Event::Tick(NOW));
    app
}

#[test]
fn overview_worst_first_with_alerts() {
    let app = fleet();
    assert_eq!(app.alerting(), 2);
    let order: Vec<&str> = app.visible().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(order[..4], ["payments", "email", "cart", "sessions"]);
    for (w, h, name) in [(200, 50, "overview_200x50"), (80, 24, "overview_80x24")] {
        let t = draw(&app, w, h);
        let s = screen(&t);
        insta::assert_snapshot!(name, s);
        assert!(s.contains("12 WALs · 2 alerting"), "{s}");
        // The stalled WAL is the first row, marked and red.
        let first = s.lines().nth(3).unwrap();
        assert!(first.contains("! payments"), "{s}");
        assert_eq!(fg_of(t.backend().buffer(), "! payments"), Some(Color::Red));
        assert_eq!(fg_of(t.backend().buffer(), "2 alerting"), Some(Color::Red));
        assert_eq!(s.lines().filter(|l| l.contains("│! ")).count(), 2, "{s}");
    }
    // 80 columns: the less important columns are gone, the rest does not overlap.
    let s = screen(&draw(&app, 80, 24));
    assert!(
        s.contains("age") && s.contains("backlog") && !s.contains("arch lag"),
        "{s}"
    );
    assert!(s.lines().all(|l| l.chars().count() <= 80));
}

#[test]
fn overview_filter_and_sort() {
    let mut app = fleet();
    for k in [Key::Char('/'), Key::Char('s'), Key::Char('e')] {
        app.update(Event::Key(k));
    }
    let s = screen(&draw(&app, 80, 24));
    assert!(s.contains("/se▏"), "{s}");
    // "search", "sessions" (and nothing else).
    assert!(s.contains("  search ") && s.contains("  sessions "), "{s}");
    for other in ["payments", "email", "audit", "shipping"] {
        assert!(!s.contains(other), "{s}");
    }
    app.update(Event::Key(Key::Esc));
    app.update(Event::Key(Key::Char('n')));
    let s = screen(&draw(&app, 200, 50));
    assert!(s.contains("sort name ▼"), "{s}");
    let first = s.lines().nth(3).unwrap();
    assert!(first.contains("audit"), "{s}");
}

#[test]
fn detail_chart_snapshots() {
    let app = app_with(snapshot(
        Writer::Running { pid: 4242 },
        metrics(0, "closed"),
    ));
    for (w, h, name) in [
        (200, 50, "detail_chart_200x50"),
        (80, 24, "detail_chart_80x24"),
    ] {
        let s = screen(&draw(&app, w, h));
        insta::assert_snapshot!(name, s);
        assert!(s.contains("rec/s: append ship · last 5m"), "{s}");
        assert!(s.contains("backlog, records · last 5m"), "{s}");
        assert!(
            s.contains("-5m") && s.contains("now") && s.contains("rec/s"),
            "{s}"
        );
    }
    let s = screen(&draw(&app, 200, 50));
    assert!(s.contains("backlog age   42s"), "{s}");
    assert!(!s.contains("ship rate     0.0"), "{s}");
    let s = screen(&draw(&app, 80, 24));
    assert!(s.contains("age     42s"), "{s}");
    let mut app = app;
    app.update(Event::Key(Key::Char('t')));
    let s = screen(&draw(&app, 200, 50));
    assert!(s.contains("last 15m") && s.contains("-7m30s"), "{s}");
}

/// The screenshots in docs/ (shown in the README) are these renders; they are checked
/// here so they do not go stale. `WALSPOOL_UPDATE_DOCS=1` rewrites them.
#[test]
fn docs_screenshots_are_current() {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
    let detail = app_with(snapshot(
        Writer::Running { pid: 4242 },
        metrics(0, "closed"),
    ));
    let shots = [
        ("top-overview-120x30.txt", screen(&draw(&fleet(), 120, 30))),
        ("top-overview-80x24.txt", screen(&draw(&fleet(), 80, 24))),
        ("top-detail-120x40.txt", screen(&draw(&detail, 120, 40))),
        ("top-detail-80x24.txt", screen(&draw(&detail, 80, 24))),
    ];
    let update = std::env::var_os("WALSPOOL_UPDATE_DOCS").is_some();
    let readme = std::fs::read_to_string(docs.join("../../README.md")).unwrap_or_default();
    for (file, text) in shots {
        if file.ends_with("80x24.txt") && !update {
            assert!(
                readme.contains(&format!("```text\n{text}\n```")),
                "README.md shows an old {file}: paste the new one"
            );
        }
        let path = docs.join(file);
        let text = format!(
            "{text}
"
        );
        if update {
            std::fs::create_dir_all(&docs).unwrap();
            std::fs::write(&path, &text).unwrap();
        } else {
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                on_disk == text,
                "{} is stale: run WALSPOOL_UPDATE_DOCS=1 cargo test -p walspool-monitor",
                path.display()
            );
        }
    }
}

/// `metrics` with sinks that report figures: Kafka behind `audit-sink` (records in
/// flight, a failure, two topics), NATS behind `warehouse`.
fn metrics_with_sinks() -> Metrics {
    let mut m = metrics(0, "closed");
    m.consumers[0].sink = Some(
        SinkMetrics::new("kafka")
            .in_flight(512)
            .stored(56_698)
            .failed(3)
            .latency_us(1_840, 12_500, 48_000)
            .per_destination(
                [
                    ("orders.audit".to_string(), 37_800),
                    ("orders.login".to_string(), 18_898),
                ]
                .into(),
            ),
    );
    m.consumers[1].sink = Some(
        SinkMetrics::new("nats")
            .stored(5_200)
            .latency_us(620, 2_100, 3_300)
            .per_destination([("audit.order".to_string(), 5_200)].into()),
    );
    m
}

#[test]
fn sinks_in_the_detail_views() {
    let app = app_with(snapshot(
        Writer::Running { pid: 4242 },
        metrics_with_sinks(),
    ));
    // Tall: the Shipping box names the slowest consumer's sink, the Sinks box lists
    // every sink with its destinations.
    let s = screen(&draw(&app, 120, 40));
    insta::assert_snapshot!("full_sinks_120x40", s);
    assert!(s.contains("sink          kafka · 512 in flight"), "{s}");
    assert!(s.contains("sink p50/p99  1.84ms / 12.50ms"), "{s}");
    assert!(s.contains(" Sinks "), "{s}");
    assert!(
        s.contains("kafka · 512 in flight · 56,698 stored · 3 failed · publish p50/p99/max 1.84ms / 12.50ms / 48.00ms"),
        "{s}"
    );
    assert!(
        s.contains("per topic: orders.audit 37,800, orders.login 18,898"),
        "{s}"
    );
    assert!(s.contains("per subject: audit.order 5,200"), "{s}");
    let buf = draw(&app, 120, 40);
    assert_eq!(
        fg_of(buf.backend().buffer(), "3 failed"),
        Some(Color::Yellow)
    );
    // Not tall: the Shipping box only, narrow labels.
    let s = screen(&draw(&app, 80, 24));
    insta::assert_snapshot!("full_sinks_80x24", s);
    assert!(s.contains("kafka   512 in flight"), "{s}");
    assert!(s.contains("p50/p99 1.84ms / 12.50ms"), "{s}");
    // Compact: a line under each consumer.
    let s = screen(&draw(&app, 60, 24));
    insta::assert_snapshot!("compact_sinks_60x24", s);
    assert!(s.contains("  kafka 512 in flight p99 12.50ms"), "{s}");
    assert!(s.contains("  nats 0 in flight p99 2.10ms"), "{s}");
    // Without sink figures the screens are as before (the other snapshots).
    let plain = app_with(snapshot(
        Writer::Running { pid: 4242 },
        metrics(0, "closed"),
    ));
    let s = screen(&draw(&plain, 120, 40));
    assert!(!s.contains(" Sinks ") && !s.contains("sink p50"), "{s}");
}

/// `walspool status` (one WAL) shows each consumer's sink: text, and `--json` through
/// the metrics' own serialisation.
#[test]
fn status_text_and_json_show_sinks() {
    let snap = snapshot(Writer::Running { pid: 4242 }, metrics_with_sinks());
    let text = crate::cli::status_text(&snap, NOW);
    assert!(
        text.contains(
            "  sink kafka: 512 in flight, 56,698 stored, 3 failed, publish p50/p99/max 1.84ms / 12.50ms / 48.00ms\n  per topic: orders.audit 37,800, orders.login 18,898\n"
        ),
        "{text}"
    );
    assert!(text.contains("  sink nats: 0 in flight"), "{text}");
    let json = crate::cli::status_json(&snap);
    let sink = &json["consumers"][0]["sink"];
    assert_eq!(sink["kind"], "kafka");
    assert_eq!(sink["in_flight"], 512);
    assert_eq!(sink["p99_us"], 12_500);
    assert_eq!(sink["per_destination"]["orders.login"], 18_898);
    let plain = crate::cli::status_json(&snapshot(
        Writer::Running { pid: 4242 },
        metrics(0, "closed"),
    ));
    assert!(plain["consumers"][0]["sink"].is_null(), "{plain}");
}

/// `walspool status ROOT`: the table lists each sink, `--json` carries it per
/// consumer, `--prometheus` exports `walspool_sink_*` (checked by promtool).
#[test]
fn fleet_status_shows_sinks() {
    let dirs = vec![("orders".to_string(), "/var/lib/orders".to_string())];
    let mut app = App::new(&dirs, Thresholds::default(), 500);
    app.update(Event::Snapshot(Box::new(snapshot(
        Writer::Running { pid: 4242 },
        metrics_with_sinks(),
    ))));
    app.update(Event::Tick(NOW));
    let text = crate::fleet::fleet_text(&app);
    assert!(
        text.contains("  sink audit-sink: kafka · 512 in flight · p50/p99 1.84ms / 12.50ms · orders.audit 37,800, orders.login 18,898\n"),
        "{text}"
    );
    let json = crate::fleet::fleet_json(&app);
    assert_eq!(json["wals"][0]["consumers"][1]["sink"]["kind"], "nats");
    let prom = crate::fleet::fleet_prometheus(&app);
    for (series, v) in [
        ("walspool_sink_info{wal=\"orders\",consumer=\"audit-sink\",kind=\"kafka\"}", "1"),
        ("walspool_sink_in_flight_records{wal=\"orders\",consumer=\"audit-sink\"}", "512"),
        ("walspool_sink_stored_records_total{wal=\"orders\",consumer=\"warehouse\"}", "5200"),
        ("walspool_sink_failed_records_total{wal=\"orders\",consumer=\"audit-sink\"}", "3"),
        ("walspool_sink_publish_latency_p50_seconds{wal=\"orders\",consumer=\"audit-sink\"}", "0.00184"),
        ("walspool_sink_publish_latency_p99_seconds{wal=\"orders\",consumer=\"audit-sink\"}", "0.0125"),
        ("walspool_sink_publish_latency_max_seconds{wal=\"orders\",consumer=\"audit-sink\"}", "0.048"),
        ("walspool_sink_destination_records_total{wal=\"orders\",consumer=\"audit-sink\",destination=\"orders.login\"}", "18898"),
    ] {
        assert!(prom.contains(&format!("{series} {v}\n")), "{series} {v} missing from\n{prom}");
    }
    assert!(prom.contains("# TYPE walspool_sink_destination_records_total counter\n"));
    promtool_check(&prom);
}
