//! The fleet side of `top` and `status`: thresholds from flags and a config file, and
//! `status ROOT` (a table, JSON, or the Prometheus text exposition in the node_exporter
//! textfile-collector convention) with an exit code for cron and health checks.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::app::{App, Event, Panel, Thresholds};
use crate::collect::{discover, now_ms, Collector, Writer};
use crate::fmt::{self, parse_duration_ms, parse_rate};
use walspool_wal::metrics::{
    SINK_DESTINATION_HELP, SINK_DESTINATION_METRIC, SINK_FIGURES, SINK_INFO_HELP, SINK_INFO_METRIC,
};

/// Threshold flags shared by `top` and `status`. Unset flags take the config file's
/// value, then the default.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ThresholdArgs {
    /// Config file of `key = value` lines (the flag names without `--`; `#` comments).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Alert when the oldest unshipped record is older than this (default 5m).
    #[arg(long, value_parser = parse_duration_ms)]
    pub warn_backlog_age: Option<u64>,
    /// Alert above this many failed deliveries (default 1/s; also 30/min, 100/h).
    #[arg(long, value_parser = parse_rate)]
    pub warn_errors_rate: Option<f64>,
    /// Colour the backlog above this many records (default 10000).
    #[arg(long)]
    pub warn_backlog: Option<u64>,
    /// Colour the last shipment when older than this while a backlog exists (default 60s).
    #[arg(long, value_parser = parse_duration_ms)]
    pub warn_ship_age: Option<u64>,
    /// Colour fsync p99 above this many milliseconds (default 50).
    #[arg(long)]
    pub warn_fsync_ms: Option<f64>,
    /// Colour the archive lag above this many sealed segments (default 4).
    #[arg(long)]
    pub warn_archive_lag: Option<u64>,
    /// How many directory levels under a root are searched for WALs (default 4).
    #[arg(long)]
    pub depth: Option<usize>,
}

/// Settings resolved from flags, config file and defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The thresholds.
    pub thresholds: Thresholds,
    /// Discovery depth.
    pub depth: usize,
}

impl ThresholdArgs {
    /// Flags over the config file over the defaults.
    pub fn resolve(&self) -> Result<Settings, String> {
        let mut t = Thresholds::default();
        let mut depth = crate::collect::DEFAULT_DEPTH;
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("config {}: {e}", path.display()))?;
            apply_config(&text, &mut t, &mut depth)
                .map_err(|e| format!("config {}: {e}", path.display()))?;
        }
        if let Some(v) = self.warn_backlog_age {
            t.backlog_age_ms = v;
        }
        if let Some(v) = self.warn_errors_rate {
            t.errors_per_sec = v;
        }
        if let Some(v) = self.warn_backlog {
            t.backlog_records = v;
        }
        if let Some(v) = self.warn_ship_age {
            t.ship_age_secs = v / 1000;
        }
        if let Some(v) = self.warn_fsync_ms {
            t.fsync_p99_ms = v;
        }
        if let Some(v) = self.warn_archive_lag {
            t.archive_lag_segments = v;
        }
        if let Some(v) = self.depth {
            depth = v;
        }
        Ok(Settings {
            thresholds: t,
            depth,
        })
    }
}

/// Applies a config file's `key = value` lines.
pub fn apply_config(text: &str, t: &mut Thresholds, depth: &mut usize) -> Result<(), String> {
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected key = value", n + 1))?;
        let (k, v) = (k.trim(), v.trim().trim_matches('"'));
        let bad = |e: String| format!("line {}: {k}: {e}", n + 1);
        let num = |v: &str| v.parse::<f64>().map_err(|e| bad(e.to_string()));
        match k {
            "warn-backlog-age" => t.backlog_age_ms = parse_duration_ms(v).map_err(bad)?,
            "warn-errors-rate" => t.errors_per_sec = parse_rate(v).map_err(bad)?,
            "warn-backlog" => t.backlog_records = num(v)? as u64,
            "warn-ship-age" => t.ship_age_secs = parse_duration_ms(v).map_err(bad)? / 1000,
            "warn-fsync-ms" => t.fsync_p99_ms = num(v)?,
            "warn-archive-lag" => t.archive_lag_segments = num(v)? as u64,
            "depth" => *depth = num(v)? as usize,
            _ => return Err(format!("line {}: unknown key {k:?}", n + 1)),
        }
    }
    Ok(())
}

/// How `status ROOT` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// A table.
    Text,
    /// A JSON array, one object per WAL.
    Json,
    /// Prometheus text exposition.
    Prometheus,
}

/// Reads every WAL under `root` twice, `sample` apart (rates need two publications),
/// into an [`App`]. Errors when there is no WAL at all.
pub fn sample_fleet(
    root: &Path,
    depth: usize,
    thresholds: Thresholds,
    sample: Duration,
) -> Result<App, String> {
    let wals = discover(&[root.to_path_buf()], depth);
    if wals.is_empty() {
        return Err(format!(
            "no WAL directory under {} (searched {depth} levels)",
            root.display()
        ));
    }
    let names: Vec<(String, String)> = wals
        .iter()
        .map(|(n, d)| (n.clone(), d.display().to_string()))
        .collect();
    let mut app = App::new(&names, thresholds, sample.as_millis() as u64);
    app.roots = vec![root.display().to_string()];
    let mut cs: Vec<Collector> = wals.iter().map(|(_, d)| Collector::new(d)).collect();
    let mut round = |app: &mut App| {
        let mut any_running = false;
        for c in cs.iter_mut() {
            match c.collect() {
                Ok(s) => {
                    any_running |= s.writer.is_running();
                    app.update(Event::Snapshot(Box::new(s)));
                }
                Err(e) => {
                    app.update(Event::CollectError(c.dir().display().to_string(), e));
                }
            }
        }
        any_running
    };
    if round(&mut app) && !sample.is_zero() {
        std::thread::sleep(sample);
        round(&mut app);
    }
    app.update(Event::Tick(now_ms()));
    Ok(app)
}

fn state(p: &Panel) -> (&'static str, u64) {
    match p.snap.as_ref().map(|s| &s.writer) {
        Some(Writer::Running { .. }) => ("running", 0),
        Some(Writer::Closed { at_ms, .. }) => ("stopped", *at_ms),
        Some(Writer::NotRunning { since_ms, .. }) => ("crashed", *since_ms),
        Some(Writer::NoStats) => ("unknown", 0),
        None => ("error", 0),
    }
}

/// `status ROOT` as a table.
pub fn fleet_text(app: &App) -> String {
    let mut o = format!(
        "{:<24} {:<17} {:>9} {:>9} {:>9} {:>10} {:>8} {:>6} {:>8} {:>9} {:>8}  alerts\n",
        "wal",
        "writer",
        "append/s",
        "ship/s",
        "backlog",
        "bytes",
        "age",
        "err/s",
        "drops",
        "breaker",
        "arch lag"
    );
    for p in app.visible() {
        let (st, since) = state(p);
        let st = if since > 0 {
            format!("{st} {}", fmt::clock(since))
        } else {
            st.to_string()
        };
        let m = p
            .snap
            .as_ref()
            .map(|s| s.metrics.clone())
            .unwrap_or_default();
        let age = p.backlog_age_ms(app.now_ms);
        let alerts: Vec<&str> = p
            .alerts(&app.thresholds, app.now_ms)
            .iter()
            .map(|a| a.label())
            .collect();
        let mut alerts = alerts.join(",");
        if let Some(e) = &p.error {
            alerts.push_str(&format!(" read error: {e}"));
        }
        o.push_str(&format!(
            "{:<24} {:<17} {:>9} {:>9} {:>9} {:>10} {:>8} {:>6} {:>8} {:>9} {:>8}  {}\n",
            p.name,
            st,
            fmt::rate(p.append_rate),
            fmt::rate(p.ship_rate),
            fmt::short_count(m.backlog_records),
            fmt::bytes(m.backlog_bytes),
            if age == 0 { "-".into() } else { fmt::age(age) },
            fmt::rate(p.ship_error_rate),
            fmt::short_count(m.dropped_records_total),
            if m.breaker_state.is_empty() {
                "-"
            } else {
                &m.breaker_state
            },
            if m.archiving {
                format!("{} seg", m.archive_lag_segments)
            } else {
                "off".into()
            },
            alerts.trim(),
        ));
        // The consumers behind, each with its own backlog age.
        for c in m.consumers.iter().filter(|c| c.backlog_records > 0) {
            let age = p.consumer_backlog_age_ms(&c.name, app.now_ms);
            o.push_str(&format!(
                "{:<24} {:>17} {:>9} {:>9} {:>9} {:>10} {:>8} {:>6} {:>8} {:>9}\n",
                format!("  consumer {}", c.name),
                "",
                "",
                "",
                fmt::short_count(c.backlog_records),
                fmt::bytes(c.backlog_bytes),
                if age == 0 { "-".into() } else { fmt::age(age) },
                "",
                "",
                if c.breaker_state.is_empty() {
                    "-"
                } else {
                    &c.breaker_state
                },
            ));
        }
        // The consumers whose sink reports figures: in flight, latency, destinations.
        for c in &m.consumers {
            if let Some(sk) = &c.sink {
                o.push_str(&format!(
                    "  sink {}: {} · {}\n",
                    c.name,
                    fmt::sink_summary(sk),
                    fmt::destinations(sk)
                ));
            }
        }
    }
    o.push_str(&format!(
        "{} WALs, {} alerting (backlog age > {}, errors > {}/s)\n",
        app.panels.len(),
        app.alerting(),
        fmt::age(app.thresholds.backlog_age_ms),
        fmt::rate(app.thresholds.errors_per_sec)
    ));
    o
}

/// `status ROOT --json`: one object per WAL, worst first.
pub fn fleet_json(app: &App) -> Value {
    let wals: Vec<Value> = app
        .visible()
        .iter()
        .map(|p| {
            let (st, since) = state(p);
            let m = p.snap.as_ref().map(|s| s.metrics.clone()).unwrap_or_default();
            json!({
                "name": p.name,
                "dir": p.dir,
                "writer": st,
                "since_ms": since,
                "append_rate": p.append_rate,
                "ship_rate": p.ship_rate,
                "ship_error_rate": p.ship_error_rate,
                "backlog_records": m.backlog_records,
                "backlog_bytes": m.backlog_bytes,
                "backlog_age_ms": p.backlog_age_ms(app.now_ms),
                "consumers": m.consumers.iter().map(|c| json!({
                    "name": c.name,
                    "committed_seq": c.committed_seq,
                    "backlog_records": c.backlog_records,
                    "backlog_bytes": c.backlog_bytes,
                    "backlog_age_ms": p.consumer_backlog_age_ms(&c.name, app.now_ms),
                    "breaker_state": c.breaker_state,
                    "sink": c.sink,
                })).collect::<Vec<_>>(),
                "dropped_records_total": m.dropped_records_total,
                "breaker_state": m.breaker_state,
                "archive_lag_segments": m.archive_lag_segments,
                "alerts": p.alerts(&app.thresholds, app.now_ms).iter().map(|a| a.label()).collect::<Vec<_>>(),
                "error": p.error,
            })
        })
        .collect();
    json!({
        "wals": wals,
        "alerting": app.alerting(),
        "thresholds": {
            "backlog_age_ms": app.thresholds.backlog_age_ms,
            "errors_per_sec": app.thresholds.errors_per_sec,
        },
    })
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `status ROOT --prometheus`: the text exposition for every WAL, each sample labelled
/// `wal="<name>"`, one `# HELP`/`# TYPE` per family, no timestamps: what the
/// node_exporter textfile collector reads from a `*.prom` file.
pub fn fleet_prometheus(app: &App) -> String {
    type Get = fn(&App, &Panel) -> Option<f64>;
    let families: [(&str, &str, &str, Get); 16] = [
        (
            "walspool_writer_running",
            "gauge",
            "1 when the writer publishes fresh stats and its process exists.",
            |_, p| {
                p.snap
                    .as_ref()
                    .map(|s| f64::from(u8::from(s.writer.is_running())))
            },
        ),
        (
            "walspool_stats_age_seconds",
            "gauge",
            "Age of the writer's stats file.",
            |a, p| {
                p.snap
                    .as_ref()
                    .filter(|s| s.stats_written_ms > 0)
                    .map(|s| a.now_ms.saturating_sub(s.stats_written_ms) as f64 / 1000.0)
            },
        ),
        (
            "walspool_appended_records_total",
            "counter",
            "Records appended since the writer opened the WAL.",
            |_, p| {
                p.snap
                    .as_ref()
                    .map(|s| s.metrics.appended_records_total as f64)
            },
        ),
        (
            "walspool_append_rate",
            "gauge",
            "Records appended per second, measured by walspool status.",
            |_, p| p.snap.as_ref().map(|_| p.append_rate),
        ),
        (
            "walspool_ship_rate",
            "gauge",
            "Records committed by the slowest consumer per second, measured by walspool status.",
            |_, p| p.snap.as_ref().map(|_| p.ship_rate),
        ),
        (
            "walspool_ship_errors_total",
            "counter",
            "Failed sink deliveries.",
            |_, p| p.snap.as_ref().map(|s| s.metrics.ship_errors_total as f64),
        ),
        (
            "walspool_ship_error_rate",
            "gauge",
            "Failed sink deliveries per second, measured by walspool status.",
            |_, p| p.snap.as_ref().map(|_| p.ship_error_rate),
        ),
        (
            "walspool_dropped_records_total",
            "counter",
            "Records dropped by retention bounds before delivery.",
            |_, p| {
                p.snap
                    .as_ref()
                    .map(|s| s.metrics.dropped_records_total as f64)
            },
        ),
        (
            "walspool_backlog_records",
            "gauge",
            "Records not yet committed by the slowest consumer.",
            |_, p| p.snap.as_ref().map(|s| s.metrics.backlog_records as f64),
        ),
        (
            "walspool_backlog_bytes",
            "gauge",
            "Approximate bytes not yet committed by the slowest consumer.",
            |_, p| p.snap.as_ref().map(|s| s.metrics.backlog_bytes as f64),
        ),
        (
            "walspool_backlog_age_seconds",
            "gauge",
            "Age of the oldest record some consumer has not committed (0 when none).",
            |a, p| {
                p.snap
                    .as_ref()
                    .map(|_| p.backlog_age_ms(a.now_ms) as f64 / 1000.0)
            },
        ),
        (
            "walspool_last_ship_timestamp_seconds",
            "gauge",
            "Unix time of the last successful delivery (0 = never).",
            |_, p| {
                p.snap
                    .as_ref()
                    .map(|s| s.metrics.last_ship_ts as f64 / 1000.0)
            },
        ),
        (
            "walspool_breaker_open",
            "gauge",
            "1 when the slowest consumer's circuit breaker is open or half-open.",
            |_, p| {
                p.snap.as_ref().map(|s| {
                    f64::from(u8::from(
                        s.metrics.breaker_state == "open" || s.metrics.breaker_state == "half-open",
                    ))
                })
            },
        ),
        (
            "walspool_archive_lag_segments",
            "gauge",
            "Sealed segments not yet archived.",
            |_, p| {
                p.snap
                    .as_ref()
                    .map(|s| s.metrics.archive_lag_segments as f64)
            },
        ),
        (
            "walspool_disk_bytes",
            "gauge",
            "Bytes of all segments on disk.",
            |_, p| p.snap.as_ref().map(|s| s.metrics.disk_bytes as f64),
        ),
        (
            "walspool_alerting",
            "gauge",
            "1 when the WAL crosses a threshold of walspool status (backlog age, error rate).",
            |a, p| {
                Some(f64::from(u8::from(
                    !p.alerts(&a.thresholds, a.now_ms).is_empty(),
                )))
            },
        ),
    ];
    let mut out = String::new();
    let panels = &app.panels; // by name: a stable order for diffs
    for (name, kind, help, get) in families {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for p in panels {
            if let Some(v) = get(app, p) {
                out.push_str(&format!("{name}{{wal=\"{}\"}} {v}\n", label(&p.name)));
            }
        }
    }
    type GetC = fn(&App, &Panel, &walspool_wal::ConsumerMetrics) -> f64;
    let per_consumer: [(&str, &str, GetC); 3] = [
        (
            "walspool_consumer_backlog_records",
            "Records after the consumer's checkpoint still on disk.",
            |_, _, c| c.backlog_records as f64,
        ),
        (
            "walspool_consumer_backlog_bytes",
            "Approximate bytes of the records after the consumer's checkpoint.",
            |_, _, c| c.backlog_bytes as f64,
        ),
        (
            "walspool_consumer_backlog_age_seconds",
            "Age of the oldest record the consumer has not committed (0 when none).",
            |a, p, c| p.consumer_backlog_age_ms(&c.name, a.now_ms) as f64 / 1000.0,
        ),
    ];
    for (name, help, get) in per_consumer {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for p in panels {
            for c in p.snap.iter().flat_map(|s| &s.metrics.consumers) {
                out.push_str(&format!(
                    "{name}{{wal=\"{}\",consumer=\"{}\"}} {}\n",
                    label(&p.name),
                    label(&c.name),
                    get(app, p, c)
                ));
            }
        }
    }
    // The sinks that report figures (walspool_wal::SinkMetrics), under the names of
    // Metrics::render_prometheus with `walspool_` for `wal_`.
    let sinks: Vec<(&Panel, &str, &walspool_wal::SinkMetrics)> = panels
        .iter()
        .flat_map(|p| {
            p.snap
                .iter()
                .flat_map(|s| &s.metrics.consumers)
                .filter_map(move |c| Some((p, c.name.as_str(), c.sink.as_ref()?)))
        })
        .collect();
    let fleet_name = |n: &str| format!("walspool_{}", n.strip_prefix("wal_").unwrap_or(n));
    let name = fleet_name(SINK_INFO_METRIC);
    out.push_str(&format!(
        "# HELP {name} {SINK_INFO_HELP}\n# TYPE {name} gauge\n"
    ));
    for (p, c, sk) in &sinks {
        out.push_str(&format!(
            "{name}{{wal=\"{}\",consumer=\"{}\",kind=\"{}\"}} 1\n",
            label(&p.name),
            label(c),
            label(&sk.kind)
        ));
    }
    for f in &SINK_FIGURES {
        let name = fleet_name(f.name);
        out.push_str(&format!(
            "# HELP {name} {}\n# TYPE {name} {}\n",
            f.help,
            f.kind.as_str()
        ));
        for (p, c, sk) in &sinks {
            out.push_str(&format!(
                "{name}{{wal=\"{}\",consumer=\"{}\"}} {}\n",
                label(&p.name),
                label(c),
                (f.value)(sk)
            ));
        }
    }
    let name = fleet_name(SINK_DESTINATION_METRIC);
    out.push_str(&format!(
        "# HELP {name} {SINK_DESTINATION_HELP}\n# TYPE {name} counter\n"
    ));
    for (p, c, sk) in &sinks {
        for (d, n) in &sk.per_destination {
            out.push_str(&format!(
                "{name}{{wal=\"{}\",consumer=\"{}\",destination=\"{}\"}} {n}\n",
                label(&p.name),
                label(c),
                label(d)
            ));
        }
    }
    out.push_str("# HELP walspool_writer_state The writer's state (one series per state, 1 for the current one).\n# TYPE walspool_writer_state gauge\n");
    for p in panels {
        let (cur, _) = state(p);
        for st in ["running", "stopped", "crashed", "unknown", "error"] {
            out.push_str(&format!(
                "walspool_writer_state{{wal=\"{}\",state=\"{st}\"}} {}\n",
                label(&p.name),
                u8::from(st == cur)
            ));
        }
    }
    out
}

/// Runs `status ROOT`; returns the exit code: 0 fine, 1 a threshold is crossed, 2 no
/// WAL found or one could not be read.
pub fn status_fleet(
    root: &Path,
    settings: &Settings,
    output: Output,
    sample: Duration,
    out: &mut dyn Write,
) -> std::io::Result<i32> {
    let app = match sample_fleet(root, settings.depth, settings.thresholds.clone(), sample) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("walspool status: {e}");
            return Ok(2);
        }
    };
    match output {
        Output::Text => write!(out, "{}", fleet_text(&app))?,
        Output::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&fleet_json(&app)).unwrap_or_default()
        )?,
        Output::Prometheus => write!(out, "{}", fleet_prometheus(&app))?,
    }
    Ok(if app.alerting() > 0 {
        1
    } else if app.panels.iter().any(|p| p.snap.is_none()) {
        2
    } else {
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("top.conf");
        std::fs::write(
            &cfg,
            "# fleet\nwarn-backlog-age = 90s\nwarn-errors-rate = 30/min  # half a second\ndepth = 2\nwarn-backlog = 500\n",
        )
        .unwrap();
        let mut a = ThresholdArgs {
            config: Some(cfg.clone()),
            ..ThresholdArgs::default()
        };
        let s = a.resolve().unwrap();
        assert_eq!(s.thresholds.backlog_age_ms, 90_000);
        assert_eq!(s.thresholds.errors_per_sec, 0.5);
        assert_eq!(s.thresholds.backlog_records, 500);
        assert_eq!(s.depth, 2);
        a.warn_backlog_age = Some(1_000);
        assert_eq!(a.resolve().unwrap().thresholds.backlog_age_ms, 1_000);
        std::fs::write(&cfg, "warn-typo = 1\n").unwrap();
        assert!(a.resolve().unwrap_err().contains("unknown key"));
        let none = ThresholdArgs::default().resolve().unwrap();
        assert_eq!(none.thresholds, Thresholds::default());
    }
}
