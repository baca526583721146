//! The view: renders an [`App`] into a ratatui frame. Pure: the same `App` always draws
//! the same screen (ages are computed against `App::now_ms`).
//!
//! Two screens: the fleet overview (a table, one row per WAL, whose columns collapse
//! to fit the width) and one WAL's detail view (figures, charts, consumers, segments).

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Axis, Block, Borders, Cell, Chart, Clear, Dataset, GraphType, Paragraph, Row, Table, TableState,
};
use ratatui::Frame;

use crate::app::{App, Panel, Screen, SortKey, CHART_WINDOWS_MIN};
use crate::collect::{Snapshot, Writer};
use crate::fmt;

const WARN: Style = Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD);
const BAD: Style = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
const GOOD: Style = Style::new().fg(Color::Green);
const DIM: Style = Style::new().fg(Color::DarkGray);
const LABEL: Style = Style::new().fg(Color::Cyan);

/// Draws the whole screen.
pub fn render(app: &App, f: &mut Frame) {
    let area = f.area();
    match &app.screen {
        Screen::Overview => render_overview(app, f, area),
        Screen::Detail(_) => {
            if area.width < 70 || area.height < 20 {
                render_compact(app, f, area);
            } else {
                render_full(app, f, area);
            }
        }
    }
    if app.help {
        render_help(f, area);
    }
}

/// The title: the WAL count and, in red, how many cross a threshold.
fn title(app: &App) -> Line<'static> {
    let mut spans = vec![Span::styled(
        "walspool top",
        Style::new().add_modifier(Modifier::BOLD),
    )];
    let n = app.panels.len();
    spans.push(Span::raw(format!(
        " · {n} WAL{}",
        if n == 1 { "" } else { "s" }
    )));
    let alerting = app.alerting();
    spans.push(Span::raw(" · "));
    spans.push(if alerting > 0 {
        Span::styled(format!("{alerting} alerting"), BAD)
    } else {
        Span::styled("0 alerting", GOOD)
    });
    spans.push(Span::raw(format!(" · refresh {}ms", app.refresh_ms)));
    if app.paused {
        spans.push(Span::styled(" · PAUSED", WARN));
    }
    Line::from(spans)
}

/// The writer state as the overview shows it: `running`, `stopped HH:MM:SS` (closed
/// cleanly), `crashed HH:MM:SS` (stale stats or pid gone), `no stats`.
fn state_cell(p: &Panel) -> (String, Style) {
    if let Some(e) = &p.error {
        if p.snap.is_none() {
            let short: String = e.chars().take(20).collect();
            return (format!("error: {short}"), BAD);
        }
    }
    match p.snap.as_ref().map(|s| &s.writer) {
        None => ("…".into(), DIM),
        Some(Writer::Running { .. }) => ("running".into(), GOOD),
        Some(Writer::Closed { at_ms, .. }) => (format!("stopped {}", fmt::clock(*at_ms)), WARN),
        Some(Writer::NotRunning { since_ms, .. }) => {
            (format!("crashed {}", fmt::clock(*since_ms)), BAD)
        }
        Some(Writer::NoStats) => ("no stats".into(), WARN),
    }
}

/// One overview column: header, width, sort key, and the cell of a WAL.
struct Column {
    header: &'static str,
    width: u16,
    key: SortKey,
    cell: fn(&App, &Panel) -> (String, Style),
}

fn metric<T: Default>(p: &Panel, f: impl Fn(&walspool_wal::Metrics) -> T) -> T {
    p.snap.as_ref().map(|s| f(&s.metrics)).unwrap_or_default()
}

fn live_rate(p: &Panel, v: f64) -> (String, Style) {
    match &p.snap {
        Some(s) if !s.from_disk => (fmt::rate(v), Style::new()),
        Some(_) => ("-".into(), DIM),
        None => ("".into(), DIM),
    }
}

/// Every column in display order; `PRIORITY` says which survive a narrow terminal.
const COLUMNS: [Column; 11] = [
    Column {
        header: "wal",
        width: 14,
        key: SortKey::Name,
        cell: |app, p| {
            let alerting = !p.alerts(&app.thresholds, app.now_ms).is_empty();
            (
                format!("{}{}", if alerting { "! " } else { "  " }, p.name),
                Style::new(),
            )
        },
    },
    Column {
        header: "writer",
        width: 16,
        key: SortKey::Worst,
        cell: |_, p| state_cell(p),
    },
    Column {
        header: "append/s",
        width: 8,
        key: SortKey::AppendRate,
        cell: |_, p| live_rate(p, p.append_rate),
    },
    Column {
        header: "ship/s",
        width: 7,
        key: SortKey::ShipRate,
        cell: |_, p| live_rate(p, p.ship_rate),
    },
    Column {
        header: "backlog",
        width: 8,
        key: SortKey::Backlog,
        cell: |app, p| {
            let n = metric(p, |m| m.backlog_records);
            let st = if n > app.thresholds.backlog_records {
                WARN
            } else {
                Style::new()
            };
            (fmt::short_count(n), st)
        },
    },
    Column {
        header: "bytes",
        width: 10,
        key: SortKey::BacklogBytes,
        cell: |_, p| (fmt::bytes(metric(p, |m| m.backlog_bytes)), Style::new()),
    },
    Column {
        header: "age",
        width: 7,
        key: SortKey::BacklogAge,
        cell: |app, p| {
            let age = p.backlog_age_ms(app.now_ms);
            if age == 0 {
                ("-".into(), DIM)
            } else if age > app.thresholds.backlog_age_ms {
                (fmt::age(age), BAD)
            } else {
                (fmt::age(age), Style::new())
            }
        },
    },
    Column {
        header: "err/s",
        width: 6,
        key: SortKey::Errors,
        cell: |app, p| {
            let st = if p.ship_error_rate > app.thresholds.errors_per_sec {
                BAD
            } else if p.ship_error_rate > 0.0 {
                WARN
            } else {
                Style::new()
            };
            (fmt::rate(p.ship_error_rate), st)
        },
    },
    Column {
        header: "drops",
        width: 7,
        key: SortKey::Drops,
        cell: |_, p| {
            let n = metric(p, |m| m.dropped_records_total);
            (fmt::short_count(n), if n > 0 { BAD } else { Style::new() })
        },
    },
    Column {
        header: "breaker",
        width: 9,
        key: SortKey::Worst,
        cell: |_, p| match metric(p, |m| m.breaker_state.clone()).as_str() {
            "" => ("-".into(), DIM),
            "open" => ("OPEN".into(), BAD),
            "half-open" => ("half-open".into(), WARN),
            other => (other.to_string(), Style::new()),
        },
    },
    Column {
        header: "arch lag",
        width: 8,
        key: SortKey::ArchiveLag,
        cell: |app, p| {
            let (on, lag) = metric(p, |m| (m.archiving, m.archive_lag_segments));
            if !on && lag == 0 {
                ("off".into(), DIM)
            } else if lag > app.thresholds.archive_lag_segments {
                (format!("{lag} seg"), WARN)
            } else {
                (format!("{lag} seg"), Style::new())
            }
        },
    },
];

/// Indexes into `COLUMNS`, most important first: a narrow terminal keeps a prefix.
const PRIORITY: [usize; 11] = [0, 1, 6, 4, 7, 2, 3, 8, 5, 9, 10];

/// The columns that fit `width` with a name column `name_w` wide, display order.
fn fitting_columns(width: u16, name_w: u16) -> Vec<usize> {
    let mut used = 0u16;
    let mut keep = Vec::new();
    for &i in &PRIORITY {
        let w = if i == 0 { name_w } else { COLUMNS[i].width } + u16::from(!keep.is_empty());
        if used + w > width {
            break;
        }
        used += w;
        keep.push(i);
    }
    keep.sort_unstable();
    keep
}

fn render_overview(app: &App, f: &mut Frame, area: Rect) {
    let [top, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(area);
    f.render_widget(Paragraph::new(title(app)), top);
    let rows_shown = app.visible();

    // Footer: the filter being typed, else the keys.
    let footer_line = if app.editing_filter {
        Line::from(vec![
            Span::styled("/", LABEL),
            Span::raw(app.filter.clone()),
            Span::styled("▏", LABEL),
            Span::styled("  enter keep · esc clear", DIM),
        ])
    } else {
        let mut v = vec![
            Span::styled("q", LABEL),
            Span::raw(" quit "),
            Span::styled("⏎", LABEL),
            Span::raw(" open "),
            Span::styled("/", LABEL),
            Span::raw(" filter "),
            Span::styled("wnasbBoedl", LABEL),
            Span::raw(" sort "),
            Span::styled("?", LABEL),
            Span::raw(" help"),
        ];
        if !app.filter.is_empty() {
            v.push(Span::styled(format!(" · filter {:?}", app.filter), WARN));
        }
        Line::from(v)
    };
    f.render_widget(Paragraph::new(footer_line), footer);

    let inner_w = body.width.saturating_sub(2);
    // The name column: as wide as the longest name (and its marker), within reason.
    let longest = app
        .panels
        .iter()
        .map(|p| p.name.chars().count() as u16 + 2)
        .max()
        .unwrap_or(0);
    let name_w = longest.clamp(COLUMNS[0].width, 40.max(inner_w / 3));
    let name_w = name_w.min(inner_w);
    let cols = fitting_columns(inner_w, name_w);
    let mut widths: Vec<Constraint> = cols
        .iter()
        .map(|&i| Constraint::Length(if i == 0 { name_w } else { COLUMNS[i].width }))
        .collect();
    widths.push(Constraint::Fill(1));
    let arrow = if app.reverse { "▲" } else { "▼" };
    let header = Row::new(cols.iter().map(|&i| {
        let c = &COLUMNS[i];
        let sorted = c.key == app.sort && !(app.sort == SortKey::Worst && i != 1);
        if sorted {
            Cell::from(format!("{}{arrow}", c.header))
                .style(LABEL.add_modifier(Modifier::BOLD | Modifier::UNDERLINED))
        } else {
            Cell::from(c.header).style(LABEL)
        }
    }));
    let rows: Vec<Row> = rows_shown
        .iter()
        .map(|p| {
            let alerting = !p.alerts(&app.thresholds, app.now_ms).is_empty();
            Row::new(cols.iter().map(|&i| {
                let (text, st) = (COLUMNS[i].cell)(app, p);
                let st = if alerting && (i == 0 || st == Style::new()) {
                    BAD
                } else {
                    st
                };
                Cell::from(text).style(st)
            }))
        })
        .collect();
    let empty = rows.is_empty();
    let block_title = format!(
        " {} · sort {} {arrow} ",
        if app.roots.is_empty() {
            "WALs".to_string()
        } else {
            app.roots.join(", ")
        },
        app.sort.name()
    );
    let table = Table::new(rows, widths)
        .header(header)
        .column_spacing(1)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .block(Block::default().borders(Borders::ALL).title(block_title));
    let mut state = TableState::default();
    if !empty {
        state.select(Some(app.cursor));
    }
    f.render_stateful_widget(table, body, &mut state);
    if empty {
        let msg = if app.panels.is_empty() {
            "no WAL directory found (yet): looking for stats.json or meta/ with segments"
                .to_string()
        } else {
            format!("no WAL matches {:?} (esc clears the filter)", app.filter)
        };
        let inner = Rect {
            x: body.x + 1,
            y: body.y + 2,
            width: body.width.saturating_sub(2),
            height: body.height.saturating_sub(3).min(1),
        };
        f.render_widget(Paragraph::new(Span::styled(msg, DIM)), inner);
    }
}

/// The writer line: running, closed, or not running since when.
fn writer_line(app: &App, s: &Snapshot) -> Line<'static> {
    match &s.writer {
        Writer::Running { pid } => Line::from(vec![
            Span::styled("● writer running", GOOD),
            Span::raw(format!(
                " · pid {pid} · stats {} old · wal {}",
                fmt::age(app.now_ms.saturating_sub(s.stats_written_ms)),
                s.metrics.wal_id
            )),
        ]),
        Writer::Closed { at_ms, pid } => Line::from(vec![
            Span::styled(
                format!(
                    "○ writer not running since {} (closed cleanly)",
                    fmt::datetime_ms(*at_ms)
                ),
                WARN,
            ),
            Span::raw(format!(" · was pid {pid} · figures from disk")),
        ]),
        Writer::NotRunning { since_ms, why, .. } => Line::from(vec![
            Span::styled(
                format!(
                    "✖ writer not running since {} ({why})",
                    fmt::datetime_ms(*since_ms)
                ),
                BAD,
            ),
            Span::raw(" · figures from disk"),
        ]),
        Writer::NoStats => Line::from(vec![
            Span::styled("? no stats file (writer never ran, or stats are off)", WARN),
            Span::raw(" · figures from disk"),
        ]),
    }
}

fn kv(label: &'static str, value: String, style: Style) -> Line<'static> {
    Line::from(vec![
        Span::styled(format!("{label:<14}"), LABEL),
        Span::styled(value, style),
    ])
}

/// A figure line for a narrow box (under 30 columns inside): short label, short value.
fn narrow(line: Line<'static>) -> Line<'static> {
    let mut spans = line.spans;
    if spans.len() != 2 {
        return Line::from(spans);
    }
    // `sink  kafka · 3 in flight` becomes `kafka   3 in flight`.
    let (kind, flight) = spans[1]
        .content
        .split_once(" · ")
        .map(|(k, r)| (k.to_string(), r.to_string()))
        .unwrap_or_default();
    if spans[0].content.trim_end() == "sink" && !kind.is_empty() {
        spans[0].content = format!("{kind:<8}").into();
        spans[1].content = flight.into();
        return Line::from(spans);
    }
    let label = match spans[0].content.trim_end() {
        "backlog bytes" => "bytes",
        "backlog age" => "age",
        "seq on disk" => "seqs",
        "ship rate" => "ship",
        "ship errors" => "errors",
        "last ship" => "shipped",
        "append rate" => "append",
        "current file" => "file",
        "fsync p50/p99" => "fsync",
        "archive lag" => "archive",
        "sink p50/p99" => "p50/p99",
        other => other,
    }
    .to_string();
    let mut v = spans[1].content.to_string();
    for (from, to) in [
        (" records", ""),
        (" rec/s", "/s"),
        (" (writer not running)", ""),
        (" (no consumer)", ""),
    ] {
        v = v.replace(from, to);
    }
    if let Some(inner) = v
        .split_once(" (")
        .and_then(|(_, r)| r.strip_suffix(" ago)"))
    {
        v = format!("{inner} ago");
    }
    if let Some((segs, _)) = v.split_once(" / ").filter(|x| x.0.ends_with(" seg")) {
        v = segs.to_string();
    }
    if v.ends_with(".wal") {
        v = format!("…{}", v.trim_start_matches('0'));
    }
    spans[0].content = format!("{label:<8}").into();
    spans[1].content = v.into();
    Line::from(spans)
}

struct Figures {
    age: Line<'static>,
    ship_rate: Line<'static>,
    backlog: Line<'static>,
    backlog_bytes: Line<'static>,
    errors: Line<'static>,
    dropped: Line<'static>,
    last_ship: Line<'static>,
    breaker: Line<'static>,
    file: Line<'static>,
    offset: Line<'static>,
    rate: Line<'static>,
    fsync: Line<'static>,
    archive: Line<'static>,
    seqs: Line<'static>,
    /// The sink of the slowest consumer whose sink reports figures: kind and records
    /// in flight.
    sink: Option<Line<'static>>,
    /// Its publish latency, p50 / p99.
    publish: Option<Line<'static>>,
}

impl Figures {
    fn map(self, f: fn(Line<'static>) -> Line<'static>) -> Figures {
        Figures {
            age: f(self.age),
            ship_rate: f(self.ship_rate),
            backlog: f(self.backlog),
            backlog_bytes: f(self.backlog_bytes),
            errors: f(self.errors),
            dropped: f(self.dropped),
            last_ship: f(self.last_ship),
            breaker: f(self.breaker),
            file: f(self.file),
            offset: f(self.offset),
            rate: f(self.rate),
            fsync: f(self.fsync),
            archive: f(self.archive),
            seqs: f(self.seqs),
            sink: self.sink.map(f),
            publish: self.publish.map(f),
        }
    }
}

fn figures(app: &App, p: &Panel, s: &Snapshot) -> Figures {
    let m = &s.metrics;
    let t = &app.thresholds;
    let backlog_style = if m.backlog_records > t.backlog_records {
        WARN
    } else {
        Style::new()
    };
    let err_style = if p.ship_error_rate > t.errors_per_sec {
        BAD
    } else if m.ship_errors_total > 0 {
        WARN
    } else {
        Style::new()
    };
    let dropped_style = if m.dropped_records_total > 0 {
        BAD
    } else {
        GOOD
    };
    let last_ship = if m.last_ship_ts == 0 {
        (
            "never".to_string(),
            if m.backlog_records > 0 { WARN } else { DIM },
        )
    } else {
        let age = app.now_ms.saturating_sub(m.last_ship_ts);
        let style = if m.backlog_records > 0 && age > t.ship_age_secs * 1000 {
            WARN
        } else {
            Style::new()
        };
        (
            format!("{} ({} ago)", fmt::clock(m.last_ship_ts), fmt::age(age)),
            style,
        )
    };
    let breaker = match m.breaker_state.as_str() {
        "" => ("-".to_string(), DIM),
        "open" => ("OPEN".to_string(), BAD),
        "half-open" => ("half-open".to_string(), WARN),
        other => (other.to_string(), GOOD),
    };
    let fsync_style = if m.fsync_p99_us as f64 / 1000.0 > t.fsync_p99_ms {
        WARN
    } else {
        Style::new()
    };
    let archive = if !m.archiving && m.archive_lag_segments == 0 {
        ("off".to_string(), DIM)
    } else {
        let style = if m.archive_lag_segments > t.archive_lag_segments {
            WARN
        } else {
            Style::new()
        };
        (
            format!(
                "{} seg / {}",
                m.archive_lag_segments,
                fmt::bytes(m.archive_lag_bytes)
            ),
            style,
        )
    };
    let rate = if s.from_disk {
        "- (writer not running)".to_string()
    } else {
        format!("{:.1} rec/s", p.append_rate)
    };
    let ship_rate = if s.from_disk {
        "-".to_string()
    } else if m.consumers.is_empty() {
        "- (no consumer)".to_string()
    } else {
        format!("{:.1} rec/s", p.ship_rate)
    };
    let age_ms = p.backlog_age_ms(app.now_ms);
    let age = if age_ms == 0 {
        ("-".to_string(), DIM)
    } else {
        let st = if age_ms > t.backlog_age_ms {
            BAD
        } else {
            Style::new()
        };
        (fmt::age(age_ms), st)
    };
    // The slowest consumer with a sink that reports figures (ties: the first by name).
    let sink = m
        .consumers
        .iter()
        .filter(|c| c.sink.is_some())
        .fold(
            None::<&walspool_wal::ConsumerMetrics>,
            |best, c| match best {
                Some(b) if b.backlog_records >= c.backlog_records => Some(b),
                _ => Some(c),
            },
        )
        .and_then(|c| c.sink.as_ref());
    Figures {
        sink: sink.map(|sk| {
            kv(
                "sink",
                format!("{} · {} in flight", sk.kind, fmt::count(sk.in_flight)),
                Style::new(),
            )
        }),
        publish: sink.map(|sk| {
            kv(
                "sink p50/p99",
                format!(
                    "{} / {}",
                    fmt::micros_as_ms(sk.p50_us),
                    fmt::micros_as_ms(sk.p99_us)
                ),
                Style::new(),
            )
        }),
        age: kv("backlog age", age.0, age.1),
        ship_rate: kv("ship rate", ship_rate, Style::new()),
        backlog: kv(
            "backlog",
            format!("{} records", fmt::count(m.backlog_records)),
            backlog_style,
        ),
        backlog_bytes: kv("backlog bytes", fmt::bytes(m.backlog_bytes), backlog_style),
        errors: kv(
            "ship errors",
            if m.dead_letter_total > 0 {
                format!(
                    "{} ({}/s), {} dead-lettered",
                    fmt::count(m.ship_errors_total),
                    fmt::rate(p.ship_error_rate),
                    fmt::count(m.dead_letter_total)
                )
            } else {
                format!(
                    "{} ({}/s)",
                    fmt::count(m.ship_errors_total),
                    fmt::rate(p.ship_error_rate)
                )
            },
            err_style,
        ),
        dropped: kv(
            "dropped",
            fmt::count(m.dropped_records_total),
            dropped_style,
        ),
        last_ship: kv("last ship", last_ship.0, last_ship.1),
        breaker: kv("breaker", breaker.0, breaker.1),
        file: kv(
            "current file",
            fmt::base_name(&m.current_file).to_string(),
            Style::new(),
        ),
        offset: kv("offset", fmt::count(m.current_offset), Style::new()),
        rate: kv("append rate", rate, Style::new()),
        fsync: kv(
            "fsync p50/p99",
            format!(
                "{} / {}",
                fmt::micros_as_ms(m.fsync_p50_us),
                fmt::micros_as_ms(m.fsync_p99_us)
            ),
            fsync_style,
        ),
        archive: kv("archive lag", archive.0, archive.1),
        seqs: kv(
            "seq on disk",
            format!("{}..{}", m.first_seq, m.last_seq),
            Style::new(),
        ),
    }
}

fn render_full(app: &App, f: &mut Frame, area: Rect) {
    let tall = area.height >= 34;
    // A sink that reports figures adds two lines to the Shipping box.
    let has_sink = app
        .current()
        .and_then(|p| p.snap.as_ref())
        .is_some_and(|s| s.metrics.consumers.iter().any(|c| c.sink.is_some()));
    let [top, status, boxes, charts, tables, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(if has_sink { 9 } else { 8 }),
        if tall {
            Constraint::Length(12)
        } else {
            Constraint::Min(6)
        },
        if tall {
            Constraint::Min(4)
        } else {
            Constraint::Length(0)
        },
        Constraint::Length(1),
    ])
    .areas(area);

    let mut t = title(app);
    if let Some(p) = app.current() {
        t.spans
            .insert(1, Span::styled(format!(" › {}", p.name), LABEL));
    }
    f.render_widget(Paragraph::new(t), top);
    f.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled("q", LABEL),
            Span::raw(" quit  "),
            Span::styled("esc", LABEL),
            Span::raw(" overview  "),
            Span::styled("tab/←→", LABEL),
            Span::raw(" switch WAL  "),
            Span::styled("t", LABEL),
            Span::raw(format!(" chart {}m  ", CHART_WINDOWS_MIN[app.window])),
            Span::styled("?", LABEL),
            Span::raw(" help"),
        ])),
        footer,
    );

    let Some(p) = app.current() else {
        f.render_widget(Paragraph::new("that WAL is gone (esc: overview)"), status);
        return;
    };
    let Some(s) = &p.snap else {
        let msg = p
            .error
            .clone()
            .unwrap_or_else(|| format!("reading {} …", p.dir));
        f.render_widget(Paragraph::new(Span::styled(msg, WARN)), status);
        return;
    };
    let mut st = writer_line(app, s);
    if let Some(e) = &p.error {
        st.spans
            .push(Span::styled(format!(" · read error: {e}"), BAD));
    }
    f.render_widget(Paragraph::new(st), status);

    let fig = figures(app, p, s);
    let [b1, b2, b3] = Layout::horizontal([
        Constraint::Percentage(34),
        Constraint::Percentage(33),
        Constraint::Percentage(33),
    ])
    .areas(boxes);
    let fig = if b3.width < 38 { fig.map(narrow) } else { fig };
    f.render_widget(
        Paragraph::new(vec![fig.backlog, fig.backlog_bytes, fig.age, fig.seqs])
            .block(Block::default().borders(Borders::ALL).title(" Backlog ")),
        b1,
    );
    let mut shipping = vec![
        fig.ship_rate,
        fig.errors,
        fig.dropped,
        fig.last_ship,
        fig.breaker,
    ];
    shipping.extend(fig.sink);
    shipping.extend(fig.publish);
    f.render_widget(
        Paragraph::new(shipping).block(Block::default().borders(Borders::ALL).title(" Shipping ")),
        b2,
    );
    f.render_widget(
        Paragraph::new(vec![fig.rate, fig.file, fig.offset, fig.fsync, fig.archive])
            .block(Block::default().borders(Borders::ALL).title(" Writer ")),
        b3,
    );
    render_charts(app, p, f, charts);
    if !tall {
        return;
    }

    let m = &s.metrics;
    let n_cons = m.consumers.len().max(1) as u16;
    let sinks: Vec<(&str, &walspool_wal::SinkMetrics)> = m
        .consumers
        .iter()
        .filter_map(|c| Some((c.name.as_str(), c.sink.as_ref()?)))
        .collect();
    let sink_rows = if sinks.is_empty() {
        0
    } else {
        2 * sinks.len() as u16 + 2
    };
    let [cons_area, sink_area, seg_area] = Layout::vertical([
        Constraint::Length(n_cons + 3),
        Constraint::Length(sink_rows),
        Constraint::Min(3),
    ])
    .areas(tables);
    let cons_rows: Vec<Row> = m
        .consumers
        .iter()
        .map(|c| {
            let style = if c.backlog_records > app.thresholds.backlog_records {
                WARN
            } else {
                Style::new()
            };
            let age_ms = p.consumer_backlog_age_ms(&c.name, app.now_ms);
            let age = if age_ms == 0 {
                Cell::from("-").style(DIM)
            } else if age_ms > app.thresholds.backlog_age_ms {
                Cell::from(fmt::age(age_ms)).style(BAD)
            } else {
                Cell::from(fmt::age(age_ms))
            };
            let breaker = match c.breaker_state.as_str() {
                "" => Cell::from("-").style(DIM),
                "closed" => Cell::from("closed"),
                other => Cell::from(other.to_string()).style(BAD),
            };
            Row::new(vec![
                Cell::from(c.name.clone()),
                Cell::from(fmt::count(c.committed_seq)),
                Cell::from(fmt::count(c.backlog_records)),
                Cell::from(fmt::bytes(c.backlog_bytes)),
                age,
                breaker,
            ])
            .style(style)
        })
        .collect();
    let cons_rows = if cons_rows.is_empty() {
        vec![Row::new(vec![Cell::from(
            "(no consumers: every record counts as backlog)",
        )])
        .style(DIM)]
    } else {
        cons_rows
    };
    f.render_widget(
        Table::new(
            cons_rows,
            [
                Constraint::Min(20),
                Constraint::Length(16),
                Constraint::Length(16),
                Constraint::Length(14),
                Constraint::Length(12),
                Constraint::Length(10),
            ],
        )
        .header(
            Row::new(vec![
                "consumer",
                "checkpoint",
                "lag (records)",
                "lag (bytes)",
                "backlog age",
                "breaker",
            ])
            .style(LABEL),
        )
        .block(Block::default().borders(Borders::ALL).title(" Consumers ")),
        cons_area,
    );

    // Sinks that report figures: per consumer, in flight, stored, failed, publish
    // latency, then the records per destination.
    if !sinks.is_empty() {
        let mut lines: Vec<Line> = Vec::new();
        for (name, sk) in &sinks {
            lines.push(Line::from(vec![
                Span::styled(format!("{name:<20} "), LABEL),
                Span::raw(format!(
                    "{} · {} in flight · {} stored · ",
                    sk.kind,
                    fmt::count(sk.in_flight),
                    fmt::count(sk.stored)
                )),
                Span::styled(
                    format!("{} failed", fmt::count(sk.failed)),
                    if sk.failed > 0 { WARN } else { Style::new() },
                ),
                Span::raw(format!(
                    " · publish p50/p99/max {} / {} / {}",
                    fmt::micros_as_ms(sk.p50_us),
                    fmt::micros_as_ms(sk.p99_us),
                    fmt::micros_as_ms(sk.max_us)
                )),
            ]));
            lines.push(Line::from(vec![
                Span::styled(format!("  per {}: ", sk.destination_label()), DIM),
                Span::raw(fmt::destinations(sk)),
            ]));
        }
        f.render_widget(
            Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" Sinks ")),
            sink_area,
        );
    }

    // Segments: the newest ones that fit, newest last.
    let room = seg_area.height.saturating_sub(3) as usize;
    let segs = &m.segments;
    let skip = segs.len().saturating_sub(room);
    let mut seg_rows: Vec<Row> = Vec::new();
    if skip > 0 && room > 0 {
        seg_rows.push(Row::new(vec![Cell::from(format!("… {} older", skip + 1))]).style(DIM));
    }
    let shown = if skip > 0 && room > 0 { skip + 1 } else { skip };
    for sg in segs.iter().skip(shown) {
        let state = if !sg.sealed {
            Span::styled("active", GOOD)
        } else if sg.archived {
            Span::raw("sealed, archived")
        } else if m.archiving {
            Span::styled("sealed, not archived", WARN)
        } else {
            Span::raw("sealed")
        };
        let records = (sg.last_seq + 1).saturating_sub(sg.first_seq);
        seg_rows.push(Row::new(vec![
            Cell::from(fmt::base_name(&sg.file).to_string()),
            Cell::from(format!("{}..{}", sg.first_seq, sg.last_seq)),
            Cell::from(fmt::count(records)),
            Cell::from(fmt::bytes(sg.bytes)),
            Cell::from(state),
        ]));
    }
    f.render_widget(
        Table::new(
            seg_rows,
            [
                Constraint::Length(26),
                Constraint::Length(24),
                Constraint::Length(10),
                Constraint::Length(12),
                Constraint::Min(10),
            ],
        )
        .header(Row::new(vec!["segment", "seq", "records", "bytes", "state"]).style(LABEL))
        .block(Block::default().borders(Borders::ALL).title(format!(
            " Segments ({}, {}) ",
            segs.len(),
            fmt::bytes(m.disk_bytes)
        ))),
        seg_area,
    );
}

/// `-15m`, `-7m30s`, `now`: a time-axis label for `secs` before now.
fn ago_label(secs: u64) -> String {
    if secs == 0 {
        "now".into()
    } else if secs.is_multiple_of(60) {
        format!("-{}m", secs / 60)
    } else {
        format!("-{}m{:02}s", secs / 60, secs % 60)
    }
}

/// The y bound and labels for values up to `max`, with a unit.
fn y_axis(max: f64, fmt_v: fn(f64) -> String) -> (f64, Vec<Line<'static>>) {
    let top = if max <= 0.0 { 1.0 } else { max * 1.1 };
    (
        top,
        vec![
            Line::from("0"),
            Line::from(fmt_v(top / 2.0)),
            Line::from(fmt_v(top)),
        ],
    )
}

/// The detail view's charts: append and ship rate, and backlog, over the chart window.
fn render_charts(app: &App, p: &Panel, f: &mut Frame, area: Rect) {
    if area.height < 4 {
        return;
    }
    let window_s = CHART_WINDOWS_MIN[app.window] * 60;
    let now = app.now_ms;
    let pts = p
        .history
        .iter()
        .filter(|x| x.t_ms + window_s * 1000 >= now && x.t_ms <= now);
    let x = |t_ms: u64| -((now - t_ms) as f64 / 1000.0);
    let append: Vec<(f64, f64)> = pts.clone().map(|q| (x(q.t_ms), q.append_rate)).collect();
    let ship: Vec<(f64, f64)> = pts.clone().map(|q| (x(q.t_ms), q.ship_rate)).collect();
    let backlog: Vec<(f64, f64)> = pts.map(|q| (x(q.t_ms), q.backlog as f64)).collect();
    let x_axis = || {
        Axis::default()
            .style(DIM)
            .bounds([-(window_s as f64), 0.0])
            .labels(vec![
                Line::from(ago_label(window_s)),
                Line::from(ago_label(window_s / 2)),
                Line::from("now"),
            ])
    };
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);

    let max_rate = append
        .iter()
        .chain(ship.iter())
        .map(|q| q.1)
        .fold(0.0, f64::max);
    let (top, labels) = y_axis(max_rate, fmt::rate);
    let rates = Chart::new(vec![
        Dataset::default()
            .name("append")
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(Color::Cyan))
            .data(&append),
        Dataset::default()
            .name("ship")
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(Color::Green))
            .data(&ship),
    ])
    .block(
        Block::default()
            .borders(Borders::ALL)
            .title(Line::from(vec![
                Span::raw(" rec/s: "),
                Span::styled("append", Style::new().fg(Color::Cyan)),
                Span::raw(" "),
                Span::styled("ship", Style::new().fg(Color::Green)),
                Span::raw(format!(" · last {}m ", window_s / 60)),
            ])),
    )
    .x_axis(x_axis())
    .y_axis(
        Axis::default()
            .style(DIM)
            .title("rec/s")
            .bounds([0.0, top])
            .labels(labels),
    )
    .legend_position(None);
    f.render_widget(rates, left);

    let max_backlog = backlog.iter().map(|q| q.1).fold(0.0, f64::max);
    let (top, labels) = y_axis(max_backlog, |v| fmt::short_count(v.round() as u64));
    let chart = Chart::new(vec![Dataset::default()
        .name("backlog")
        .marker(Marker::Braille)
        .graph_type(GraphType::Line)
        .style(Style::new().fg(Color::Magenta))
        .data(&backlog)])
    .block(
        Block::default()
            .borders(Borders::ALL)
            .title(format!(" backlog, records · last {}m ", window_s / 60)),
    )
    .x_axis(x_axis())
    .y_axis(
        Axis::default()
            .style(DIM)
            .title("records")
            .bounds([0.0, top])
            .labels(labels),
    )
    .legend_position(None);
    f.render_widget(chart, right);
}

fn render_compact(app: &App, f: &mut Frame, area: Rect) {
    let mut lines: Vec<Line> = Vec::new();
    let alerting = app.alerting();
    let mut head = vec![Span::styled(
        format!("[{} WALs, ", app.panels.len()),
        Style::new().add_modifier(Modifier::BOLD),
    )];
    head.push(Span::styled(
        format!("{alerting} alerting"),
        if alerting > 0 { BAD } else { GOOD },
    ));
    head.push(Span::raw("] "));
    if let Some(p) = app.current() {
        head.push(Span::raw(p.name.clone()));
    }
    if app.paused {
        head.push(Span::styled(" PAUSED", WARN));
    }
    lines.push(Line::from(head));
    match app.current() {
        None => lines.push(Line::from("that WAL is gone (esc: overview)")),
        Some(p) => match &p.snap {
            None => lines.push(Line::from(Span::styled(
                p.error.clone().unwrap_or_else(|| "reading …".into()),
                WARN,
            ))),
            Some(s) => {
                lines.push(match &s.writer {
                    Writer::Running { pid } => {
                        Line::from(Span::styled(format!("● running pid {pid}"), GOOD))
                    }
                    Writer::Closed { at_ms, .. } => Line::from(Span::styled(
                        format!("○ not running since {} (closed)", fmt::clock(*at_ms)),
                        WARN,
                    )),
                    Writer::NotRunning { since_ms, .. } => Line::from(Span::styled(
                        format!("✖ NOT RUNNING since {}", fmt::clock(*since_ms)),
                        BAD,
                    )),
                    Writer::NoStats => Line::from(Span::styled("? no stats file", WARN)),
                });
                let fig = figures(app, p, s);
                let m = &s.metrics;
                lines.push(Line::from(format!(
                    "backlog {} rec {}",
                    fmt::count(m.backlog_records),
                    fmt::bytes(m.backlog_bytes)
                )));
                lines.push(fig.age);
                lines.push(fig.errors);
                lines.push(fig.dropped);
                lines.push(fig.last_ship);
                lines.push(Line::from(format!(
                    "{} @{}",
                    fmt::base_name(&m.current_file),
                    m.current_offset
                )));
                lines.push(fig.rate);
                lines.push(fig.breaker);
                lines.push(fig.archive);
                for c in &m.consumers {
                    let age = p.consumer_backlog_age_ms(&c.name, app.now_ms);
                    lines.push(Line::from(format!(
                        "{} @{} lag {}{}",
                        c.name,
                        c.committed_seq,
                        fmt::count(c.backlog_records),
                        if age == 0 {
                            String::new()
                        } else {
                            format!(" age {}", fmt::age(age))
                        }
                    )));
                    if let Some(sk) = &c.sink {
                        lines.push(Line::from(format!(
                            "  {} {} in flight p99 {}",
                            sk.kind,
                            fmt::count(sk.in_flight),
                            fmt::micros_as_ms(sk.p99_us)
                        )));
                    }
                }
            }
        },
    }
    let body_rows = area.height.saturating_sub(1) as usize;
    lines.truncate(body_rows);
    let [body, footer] = Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(area);
    f.render_widget(Paragraph::new(lines), body);
    f.render_widget(
        Paragraph::new(Span::styled("q quit esc back ⇥ next ? help", DIM)),
        footer,
    );
}

fn render_help(f: &mut Frame, area: Rect) {
    let text = vec![
        Line::from("q / Ctrl-C         quit"),
        Line::from("p                  pause / resume"),
        Line::from("↑↓ j k PgUp PgDn   move (overview)"),
        Line::from("enter              open the WAL's detail"),
        Line::from("esc                back to the overview"),
        Line::from("/                  filter by name"),
        Line::from("w n a s b B o e d l  sort: worst, name,"),
        Line::from("  append, ship, backlog, bytes, age,"),
        Line::from("  errors, drops, archive lag (again: reverse)"),
        Line::from("tab / → / l        next WAL (detail)"),
        Line::from("shift-tab / ← / h  previous WAL (detail)"),
        Line::from("t                  chart window 5/15/60m"),
        Line::from("?                  this help"),
        Line::from(""),
        Line::from("Figures come from the writer's stats file;"),
        Line::from("when it is stale or its pid is gone they are"),
        Line::from("computed from the files on disk."),
    ];
    let w = 52.min(area.width);
    let h = (text.len() as u16 + 2).min(area.height);
    let r = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(text).block(Block::default().borders(Borders::ALL).title(" help ")),
        r,
    );
}
