//! The view: renders an [`App`] into a ratatui frame. Pure: the same `App` always draws
//! the same screen (ages are computed against `App::now_ms`).

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table, Tabs};
use ratatui::Frame;

use crate::app::{App, Panel};
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
    if area.width < 70 || area.height < 20 {
        render_compact(app, f, area);
    } else {
        render_full(app, f, area);
    }
    if app.help {
        render_help(f, area);
    }
}

fn title(app: &App) -> Line<'static> {
    let mut spans = vec![Span::styled(
        "walspool top",
        Style::new().add_modifier(Modifier::BOLD),
    )];
    spans.push(Span::raw(format!(" · refresh {}ms", app.refresh_ms)));
    if app.paused {
        spans.push(Span::styled(" · PAUSED", WARN));
    }
    Line::from(spans)
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

struct Figures {
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
}

fn figures(app: &App, p: &Panel, s: &Snapshot) -> Figures {
    let m = &s.metrics;
    let t = &app.thresholds;
    let backlog_style = if m.backlog_records > t.backlog_records {
        WARN
    } else {
        Style::new()
    };
    let err_style = if p.ship_error_rate > t.ship_errors_per_min {
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
    Figures {
        backlog: kv(
            "backlog",
            format!("{} records", fmt::count(m.backlog_records)),
            backlog_style,
        ),
        backlog_bytes: kv("backlog bytes", fmt::bytes(m.backlog_bytes), backlog_style),
        errors: kv(
            "ship errors",
            format!(
                "{} ({:.1}/min)",
                fmt::count(m.ship_errors_total),
                p.ship_error_rate
            ),
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
    let [top, status, boxes, tables, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(8),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(area);

    // Title and tabs.
    let [t_left, t_right] =
        Layout::horizontal([Constraint::Length(42), Constraint::Min(10)]).areas(top);
    f.render_widget(Paragraph::new(title(app)), t_left);
    let tabs: Vec<Line> = app
        .panels
        .iter()
        .enumerate()
        .map(|(i, p)| Line::from(format!("{} {}", i + 1, p.dir)))
        .collect();
    f.render_widget(
        Tabs::new(tabs)
            .select(app.selected)
            .highlight_style(Style::new().add_modifier(Modifier::REVERSED)),
        t_right,
    );
    f.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled("q", LABEL),
            Span::raw(" quit  "),
            Span::styled("p", LABEL),
            Span::raw(" pause  "),
            Span::styled("tab/←→", LABEL),
            Span::raw(" switch WAL  "),
            Span::styled("?", LABEL),
            Span::raw(" help"),
        ])),
        footer,
    );

    let Some(p) = app.current() else {
        f.render_widget(Paragraph::new("no WAL directory given"), status);
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

    let backlog_block = Block::default().borders(Borders::ALL).title(" Backlog ");
    let inner = backlog_block.inner(b1);
    f.render_widget(backlog_block, b1);
    let [l, spark] = Layout::vertical([Constraint::Length(3), Constraint::Min(1)]).areas(inner);
    f.render_widget(
        Paragraph::new(vec![fig.backlog, fig.backlog_bytes, fig.seqs]),
        l,
    );
    let width = spark.width as usize;
    let data: Vec<u64> = p
        .backlog_history
        .iter()
        .skip(p.backlog_history.len().saturating_sub(width))
        .copied()
        .collect();
    f.render_widget(
        Sparkline::default()
            .data(&data)
            .style(Style::new().fg(Color::Magenta)),
        spark,
    );

    f.render_widget(
        Paragraph::new(vec![fig.errors, fig.dropped, fig.last_ship, fig.breaker])
            .block(Block::default().borders(Borders::ALL).title(" Shipping ")),
        b2,
    );
    f.render_widget(
        Paragraph::new(vec![fig.file, fig.offset, fig.rate, fig.fsync, fig.archive])
            .block(Block::default().borders(Borders::ALL).title(" Writer ")),
        b3,
    );

    let m = &s.metrics;
    let n_cons = m.consumers.len().max(1) as u16;
    let [cons_area, seg_area] =
        Layout::vertical([Constraint::Length(n_cons + 3), Constraint::Min(3)]).areas(tables);
    let cons_rows: Vec<Row> = m
        .consumers
        .iter()
        .map(|c| {
            let style = if c.backlog_records > app.thresholds.backlog_records {
                WARN
            } else {
                Style::new()
            };
            Row::new(vec![
                Cell::from(c.name.clone()),
                Cell::from(fmt::count(c.committed_seq)),
                Cell::from(fmt::count(c.backlog_records)),
                Cell::from(fmt::bytes(c.backlog_bytes)),
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
            ],
        )
        .header(
            Row::new(vec![
                "consumer",
                "checkpoint",
                "lag (records)",
                "lag (bytes)",
            ])
            .style(LABEL),
        )
        .block(Block::default().borders(Borders::ALL).title(" Consumers ")),
        cons_area,
    );

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

fn render_compact(app: &App, f: &mut Frame, area: Rect) {
    let mut lines: Vec<Line> = Vec::new();
    let mut head = vec![Span::styled(
        format!("[{}/{}] ", app.selected + 1, app.panels.len()),
        Style::new().add_modifier(Modifier::BOLD),
    )];
    if let Some(p) = app.current() {
        head.push(Span::raw(p.dir.clone()));
    }
    if app.paused {
        head.push(Span::styled(" PAUSED", WARN));
    }
    lines.push(Line::from(head));
    match app.current() {
        None => lines.push(Line::from("no WAL directory given")),
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
                    lines.push(Line::from(format!(
                        "{} @{} lag {}",
                        c.name,
                        c.committed_seq,
                        fmt::count(c.backlog_records)
                    )));
                }
            }
        },
    }
    let body_rows = area.height.saturating_sub(1) as usize;
    lines.truncate(body_rows);
    let [body, footer] = Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(area);
    f.render_widget(Paragraph::new(lines), body);
    f.render_widget(
        Paragraph::new(Span::styled("q quit p pause ⇥ next ? help", DIM)),
        footer,
    );
}

fn render_help(f: &mut Frame, area: Rect) {
    let text = vec![
        Line::from("q / Esc / Ctrl-C   quit"),
        Line::from("p                  pause / resume"),
        Line::from("tab / → / l        next WAL"),
        Line::from("shift-tab / ← / h  previous WAL"),
        Line::from("1..9               WAL by number"),
        Line::from("?                  this help"),
        Line::from(""),
        Line::from("Figures come from the writer's stats file;"),
        Line::from("when it is stale or its pid is gone they are"),
        Line::from("computed from the files on disk."),
    ];
    let w = 50.min(area.width);
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
