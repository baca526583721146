//! `status`, `dump` and `verify`: one-shot commands over a WAL directory.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Map, Value};
use walspool_backends::LocalDisk;
use walspool_wal::inspect;
use walspool_wal::Error;
use walspool_wal::Storage;

use crate::collect::{Collector, Snapshot, Writer};
use crate::fmt;

/// The seven metrics of the ADR, always present in `status --json`.
pub const ADR_METRICS: [&str; 7] = [
    "backlog_records",
    "backlog_bytes",
    "ship_errors_total",
    "dropped_records_total",
    "last_ship_ts",
    "current_file",
    "current_offset",
];

/// `status --json`: the metric names as keys, plus `dir`, `writer` and `from_disk`.
pub fn status_json(s: &Snapshot) -> Value {
    let mut map = match serde_json::to_value(&s.metrics) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let writer = match &s.writer {
        Writer::Running { pid } => json!({"state": "running", "pid": pid}),
        Writer::Closed { at_ms, pid } => json!({"state": "closed", "pid": pid, "since_ms": at_ms}),
        Writer::NotRunning { since_ms, pid, why } => {
            json!({"state": "not-running", "pid": pid, "since_ms": since_ms, "why": why})
        }
        Writer::NoStats => json!({"state": "unknown"}),
    };
    map.insert("dir".into(), Value::from(s.dir.clone()));
    map.insert("writer".into(), writer);
    map.insert("from_disk".into(), Value::from(s.from_disk));
    map.insert("stats_written_ms".into(), Value::from(s.stats_written_ms));
    map.insert(
        "oldest_unshipped_ts_ms".into(),
        Value::from(s.oldest_unshipped_ts_ms),
    );
    Value::Object(map)
}

/// `status` as text.
pub fn status_text(s: &Snapshot, now_ms: u64) -> String {
    let m = &s.metrics;
    let mut o = String::new();
    let writer = match &s.writer {
        Writer::Running { pid } => format!("running (pid {pid})"),
        Writer::Closed { at_ms, .. } => format!(
            "not running since {} (closed cleanly)",
            fmt::datetime_ms(*at_ms)
        ),
        Writer::NotRunning { since_ms, why, .. } => {
            format!("not running since {} ({why})", fmt::datetime_ms(*since_ms))
        }
        Writer::NoStats => "unknown (no stats file)".into(),
    };
    let last_ship = if m.last_ship_ts == 0 {
        "never".to_string()
    } else {
        format!(
            "{} ({} ago)",
            fmt::datetime_ms(m.last_ship_ts),
            fmt::age(now_ms.saturating_sub(m.last_ship_ts))
        )
    };
    let src = if s.from_disk {
        " (figures from disk)"
    } else {
        ""
    };
    let lines = [
        ("wal", format!("{} ({})", s.dir, m.wal_id)),
        ("writer", format!("{writer}{src}")),
        ("backlog_records", fmt::count(m.backlog_records)),
        (
            "backlog_bytes",
            format!("{} ({})", m.backlog_bytes, fmt::bytes(m.backlog_bytes)),
        ),
        ("ship_errors_total", fmt::count(m.ship_errors_total)),
        ("dropped_records_total", fmt::count(m.dropped_records_total)),
        (
            "dead_letter_total",
            if m.dead_letter_total > 0 {
                format!(
                    "{} (records set aside: walspool dump --dead-letters CONSUMER)",
                    fmt::count(m.dead_letter_total)
                )
            } else {
                "0".to_string()
            },
        ),
        ("last_ship_ts", last_ship),
        ("current_file", m.current_file.clone()),
        ("current_offset", m.current_offset.to_string()),
        (
            "backlog age",
            if m.backlog_records == 0 || s.oldest_unshipped_ts_ms == 0 {
                "-".to_string()
            } else {
                format!(
                    "{} (oldest record a consumer has not committed)",
                    fmt::age(now_ms.saturating_sub(s.oldest_unshipped_ts_ms))
                )
            },
        ),
        ("seq on disk", format!("{}..{}", m.first_seq, m.last_seq)),
        (
            "fsync p50/p99",
            format!(
                "{} / {}",
                fmt::micros_as_ms(m.fsync_p50_us),
                fmt::micros_as_ms(m.fsync_p99_us)
            ),
        ),
        (
            "breaker",
            if m.breaker_state.is_empty() {
                "-".into()
            } else {
                m.breaker_state.clone()
            },
        ),
        (
            "archive lag",
            format!(
                "{} segments, {}",
                m.archive_lag_segments,
                fmt::bytes(m.archive_lag_bytes)
            ),
        ),
        (
            "segments",
            format!("{} ({})", m.segment_count, fmt::bytes(m.disk_bytes)),
        ),
    ];
    for (k, v) in lines {
        o.push_str(&format!("{k:<22} {v}\n"));
    }
    for c in &m.consumers {
        let ts = s.consumer_oldest_ts_ms.get(&c.name).copied().unwrap_or(0);
        let age = if c.backlog_records == 0 || ts == 0 {
            "-".to_string()
        } else {
            fmt::age(now_ms.saturating_sub(ts))
        };
        let breaker = if c.breaker_state.is_empty() {
            String::new()
        } else {
            format!(" breaker {}", c.breaker_state)
        };
        o.push_str(&format!(
            "consumer {:<13} checkpoint {} lag {} records ({}) backlog age {age}{breaker}\n",
            c.name,
            c.committed_seq,
            fmt::count(c.backlog_records),
            fmt::bytes(c.backlog_bytes)
        ));
        if let Some(sk) = &c.sink {
            o.push_str(&format!(
                "  sink {}: {} in flight, {} stored, {} failed, publish p50/p99/max {} / {} / {}\n  per {}: {}\n",
                sk.kind,
                fmt::count(sk.in_flight),
                fmt::count(sk.stored),
                fmt::count(sk.failed),
                fmt::micros_as_ms(sk.p50_us),
                fmt::micros_as_ms(sk.p99_us),
                fmt::micros_as_ms(sk.max_us),
                sk.destination_label(),
                fmt::destinations(sk)
            ));
        }
    }
    o
}

/// Runs `status` on one WAL directory; returns the exit code: 1 when its oldest
/// unshipped record is older than `--warn-backlog-age` (rates need `status ROOT`).
pub fn status(
    dir: &Path,
    as_json: bool,
    thresholds: &crate::app::Thresholds,
    out: &mut dyn Write,
) -> std::io::Result<i32> {
    let snap = match Collector::new(dir).collect() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("walspool status: {}: {e}", dir.display());
            return Ok(2);
        }
    };
    if as_json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&status_json(&snap)).unwrap_or_default()
        )?;
    } else {
        write!(out, "{}", status_text(&snap, crate::collect::now_ms()))?;
    }
    let age = crate::collect::now_ms().saturating_sub(snap.oldest_unshipped_ts_ms);
    let old = snap.metrics.backlog_records > 0
        && snap.oldest_unshipped_ts_ms > 0
        && age > thresholds.backlog_age_ms;
    Ok(i32::from(old))
}

/// How `dump` decodes payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Schema {
    /// Hex only.
    Hex,
    /// A postcard `String`.
    String,
    /// A postcard `String` holding JSON (shown as JSON).
    Json,
    /// A postcard `Vec<u8>` / `&[u8]`.
    Bytes,
    /// A postcard `u64` (varint).
    U64,
}

fn decode(payload: &[u8], schema: Schema) -> Result<Value, String> {
    match schema {
        Schema::Hex => Ok(Value::Null),
        Schema::String => postcard::from_bytes::<String>(payload)
            .map(Value::from)
            .map_err(|e| e.to_string()),
        Schema::Json => {
            let s = postcard::from_bytes::<String>(payload).map_err(|e| e.to_string())?;
            serde_json::from_str::<Value>(&s).map_err(|e| format!("not JSON: {e}"))
        }
        Schema::Bytes => postcard::from_bytes::<Vec<u8>>(payload)
            .map(|b| Value::from(hex(&b, usize::MAX)))
            .map_err(|e| e.to_string()),
        Schema::U64 => postcard::from_bytes::<u64>(payload)
            .map(Value::from)
            .map_err(|e| e.to_string()),
    }
}

fn hex(b: &[u8], max: usize) -> String {
    let mut s = String::with_capacity(b.len().min(max) * 2 + 1);
    for x in b.iter().take(max) {
        s.push_str(&format!("{x:02x}"));
    }
    if b.len() > max {
        s.push('…');
    }
    s
}

/// Options of `dump`.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// First sequence number.
    pub from: u64,
    /// At most this many records.
    pub limit: Option<usize>,
    /// JSON lines instead of text.
    pub json: bool,
    /// How to decode payloads.
    pub schema: Schema,
    /// Bytes of hex preview.
    pub preview: usize,
    /// List this consumer's dead letters (default store) instead of the records.
    pub dead_letters: Option<String>,
}

/// Runs `dump`; returns the exit code.
pub fn dump(dir: &Path, o: &DumpOptions, out: &mut dyn Write) -> std::io::Result<i32> {
    let storage = match LocalDisk::open_read_only(dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("walspool dump: {}", chain(&e));
            return Ok(2);
        }
    };
    if let Some(c) = &o.dead_letters {
        return dump_dead_letters(&storage, c, o, out);
    }
    for r in inspect::records(&storage, o.from).take(o.limit.unwrap_or(usize::MAX)) {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                eprintln!("walspool dump: {}", chain(&e));
                return Ok(1);
            }
        };
        let decoded = decode(&r.payload, o.schema);
        if o.json {
            let mut v = json!({
                "seq": r.seq,
                "ts_us": r.ts_us,
                "ts": fmt::rfc3339_us(r.ts_us),
                "size": r.payload.len(),
                "schema_version": r.schema_version,
                "segment": storage.segment_name(r.segment),
                "offset": r.offset,
                "hex": hex(&r.payload, o.preview),
            });
            match decoded {
                Ok(Value::Null) => {}
                Ok(val) => v["value"] = val,
                Err(e) => v["decode_error"] = Value::from(e),
            }
            writeln!(out, "{v}")?;
        } else {
            let mut line = format!(
                "{:>10}  {}  v{:<3} {:>6} B  {}",
                r.seq,
                fmt::rfc3339_us(r.ts_us),
                r.schema_version,
                r.payload.len(),
                hex(&r.payload, o.preview)
            );
            match decoded {
                Ok(Value::Null) => {}
                Ok(Value::String(s)) => line.push_str(&format!("  {s:?}")),
                Ok(val) => line.push_str(&format!("  {val}")),
                Err(e) => line.push_str(&format!("  (not a {:?}: {e})", o.schema)),
            }
            writeln!(out, "{line}")?;
        }
    }
    Ok(0)
}

/// `dump --dead-letters CONSUMER`: the letters of the default store, in sequence order,
/// with their raw bytes (decoded with `--as` when asked).
fn dump_dead_letters(
    storage: &LocalDisk,
    consumer: &str,
    o: &DumpOptions,
    out: &mut dyn Write,
) -> std::io::Result<i32> {
    let prefix = format!("{}{consumer}.", walspool_wal::shipper::DEAD_LETTER_PREFIX);
    let mut keys = match storage.list_meta(&prefix) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("walspool dump: {}", chain(&e));
            return Ok(2);
        }
    };
    keys.sort();
    let mut letters = Vec::new();
    for k in keys {
        let Ok(Some(b)) = storage.get_meta(&k) else {
            continue;
        };
        match walspool_wal::shipper::decode_dead_letters(&b) {
            Ok(l) => letters.extend(l),
            Err(e) => {
                eprintln!("walspool dump: meta {k}: {e}");
                return Ok(1);
            }
        }
    }
    letters.sort_by_key(|l| l.seq);
    let shown = letters
        .iter()
        .filter(|l| l.seq >= o.from)
        .take(o.limit.unwrap_or(usize::MAX));
    for l in shown {
        let decoded = decode(&l.payload, o.schema);
        if o.json {
            let mut v = json!({
                "seq": l.seq,
                "ts_us": l.ts_us,
                "ts": fmt::rfc3339_us(l.ts_us),
                "schema_version": l.schema_version,
                "size": l.payload.len(),
                "attempts": l.attempts,
                "reason": l.reason,
                "hex": hex(&l.payload, o.preview),
            });
            match decoded {
                Ok(Value::Null) => {}
                Ok(val) => v["value"] = val,
                Err(e) => v["decode_error"] = Value::from(e),
            }
            writeln!(out, "{v}")?;
        } else {
            writeln!(
                out,
                "{:>10}  {}  v{:<3} {:>6} B  {}  ({})",
                l.seq,
                fmt::rfc3339_us(l.ts_us),
                l.schema_version,
                l.payload.len(),
                hex(&l.payload, o.preview),
                l.reason
            )?;
        }
    }
    Ok(0)
}

/// Runs `verify`; returns the exit code (0 healthy, 1 corrupt, 2 unreadable). With key
/// files it also checks the HMAC chain.
pub fn verify(
    dir: &Path,
    key_files: &[std::path::PathBuf],
    out: &mut dyn Write,
) -> std::io::Result<i32> {
    let code = verify_crc(dir, out)?;
    if code != 0 || key_files.is_empty() {
        return Ok(code);
    }
    let mut keys = Vec::new();
    for f in key_files {
        match walspool_wal::HmacKey::from_file(f) {
            Ok(k) => keys.push(k),
            Err(e) => {
                eprintln!("walspool verify: {}", chain(&e));
                return Ok(2);
            }
        }
    }
    let storage = match LocalDisk::open_read_only(dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("walspool verify: {}", chain(&e));
            return Ok(2);
        }
    };
    // The authenticated recovery point (meta/end) exposes a log truncated anywhere,
    // also at a segment boundary. It names only durable records, so a running or
    // crashed writer's appends in flight are not mistaken for a truncation.
    let key_refs: Vec<&walspool_wal::HmacKey> = keys.iter().collect();
    let expected = match walspool_wal::recovery::read_end(&storage, &key_refs) {
        Ok(e) => e.map(|e| e.last_seq).filter(|&s| s > 0),
        Err(e) => {
            eprintln!("walspool verify: CHAIN BROKEN: {e}");
            return Ok(1);
        }
    };
    match walspool_wal::verify_chain(&storage, &keys, expected) {
        Ok(r) => {
            writeln!(
                out,
                "chain ok: {} MACs verified in {} chained segments, {} key rotation(s){}",
                fmt::count(r.macs_verified),
                r.chained_segments,
                r.rotations,
                match expected {
                    Some(e) => format!(
                        "; reaches the authenticated end of the log ({e}), last record {}",
                        r.last_seq
                    ),
                    None => String::from(
                        "; no recovery point (meta/end): truncation at a segment boundary not checked"
                    ),
                }
            )?;
            Ok(0)
        }
        Err(b) => {
            eprintln!("walspool verify: CHAIN BROKEN: {b}");
            Ok(1)
        }
    }
}

fn verify_crc(dir: &Path, out: &mut dyn Write) -> std::io::Result<i32> {
    let storage = match LocalDisk::open_read_only(dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("walspool verify: {}", chain(&e));
            return Ok(2);
        }
    };
    if let Err(e) = inspect::read_checkpoints(&storage) {
        eprintln!("walspool verify: {}", chain(&e));
        return Ok(1);
    }
    match inspect::verify(&storage) {
        Ok(r) => {
            writeln!(
                out,
                "ok: {} segments, {} records (seq {}..{}), every frame CRC, sequence and footer checked{}",
                r.segments,
                fmt::count(r.records),
                r.first_seq,
                r.last_seq,
                if r.torn_tail_bytes > 0 {
                    format!("; {} torn tail bytes at the end of the active segment, written after the last fdatasync (recovery cuts them)", r.torn_tail_bytes)
                } else {
                    String::new()
                }
            )?;
            match r.end {
                Some(e) => writeln!(
                    out,
                    "recovery point: records up to {} durable{}",
                    e.last_seq,
                    if e.clean() { ", closed cleanly" } else { "" }
                )?,
                None => writeln!(
                    out,
                    "no recovery point (meta/end): written by an older walspool; a missing tail cannot be detected"
                )?,
            }
            Ok(0)
        }
        Err(Error::Corrupt {
            segment,
            offset,
            reason,
        }) => {
            eprintln!(
                "walspool verify: CORRUPT: segment {segment} at byte offset {offset}: {reason}"
            );
            Ok(1)
        }
        Err(e) => {
            eprintln!("walspool verify: {}", chain(&e));
            Ok(1)
        }
    }
}

/// Runs `restore`: rebuilds `to` from the archive at `from`, printing progress to
/// stderr; returns the exit code (0 done, 1 failed).
pub fn restore(
    from: &str,
    to: &Path,
    wal_id: Option<String>,
    endpoint: Option<String>,
    allow_http: bool,
    out: &mut dyn Write,
) -> std::io::Result<i32> {
    use std::sync::Arc;
    use walspool_backends::archive::{
        restore_from_url, RestoreOptions, RestoreProgress, StoreOptions,
    };
    let mut store = StoreOptions::default();
    if let Some(e) = endpoint {
        store = store.endpoint(e);
    }
    if allow_http {
        store = store.allow_http(true);
    }
    let mut opts = RestoreOptions::default().progress(Arc::new(|p: &RestoreProgress| {
        eprintln!(
            "restore {}: segment {}/{} ({} of {})",
            p.wal_id,
            p.segments_done,
            p.segments_total,
            fmt::bytes(p.bytes_done),
            fmt::bytes(p.bytes_total)
        );
    }));
    if let Some(id) = wal_id {
        opts = opts.wal_id(id);
    }
    match futures::executor::block_on(restore_from_url(from, store, to, opts)) {
        Ok(r) => {
            writeln!(
                out,
                "restored WAL {} into {} as WAL {} (a new id: records appended from now on never reuse the original's idempotency keys): {} segments, {}, records {}..{}",
                r.source_wal_id,
                r.dir.display(),
                r.wal_id,
                r.segments,
                fmt::bytes(r.bytes),
                r.first_seq,
                r.last_seq
            )?;
            Ok(0)
        }
        Err(e) => {
            eprintln!("walspool restore: {}", chain(&e));
            Ok(1)
        }
    }
}

/// An error with its causes, for the command line (walspool's errors leave their
/// causes to `source()`).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    walspool_wal::error::display_chain(e)
}
