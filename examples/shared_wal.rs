//! ADR-0017's shared WAL: one mechanism for logs, audit and future kinds.
//!
//! ```text
//! VAR_DIR=/tmp/var WAL_BATCH_MAX=500 cargo run --example shared_wal --features http -- --records 2000
//! ```
//!
//! * Records are `Envelope { kind, record }` with the ADR's `LogRecord` and
//!   `AuditRecord` (see `walspool::records`).
//! * Each service is isolated in `$VAR_DIR/walspool/<service>/`, with one WAL per kind:
//!   `audit/` never drops (`WhenFull::Block`), `log/` drops the oldest records when
//!   full (`WhenFull::DropOldest`) and counts them in `dropped_records_total`.
//! * Logs ship to `POST /api/log/v1/ingest` and audit to `POST /api/audit/v1/ingest`
//!   through the HTTP sink: bearer token (S2S JWT stand-in), gzip, idempotency keys. The
//!   ingest server is a loopback server this example starts; it fails some requests
//!   (503, 429 with Retry-After) so the retries show, and dedupes by record key.
//! * Config comes from the environment: `WAL_BATCH_MAX` (default 2000),
//!   `WAL_MAX_BYTES` (default 268435456), `WAL_MAX_AGE_H` (default 24).
//!
//! Watch it with `walspool top $VAR_DIR/walspool/*/*`.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use walspool::backends::http::HttpSink;
use walspool::records::{now_ms, AuditRecord, Envelope, LogRecord};
use walspool::shipper::Shipper;
use walspool::{LocalDisk, Options, Wal, WhenFull};

const TOKEN: &str = "s2s-demo-token";

#[derive(Default)]
struct Ingest {
    keys: HashSet<String>,
    per_path: BTreeMap<String, u64>,
    requests: u64,
    refused: u64,
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// A tiny HTTP/1.1 ingest server on 127.0.0.1 (keep-alive, gzip bodies, bearer auth).
fn serve(listener: TcpListener, state: Arc<Mutex<Ingest>>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let state = state.clone();
        std::thread::spawn(move || {
            let _ = handle(conn, state);
        });
    }
}

fn handle(conn: TcpStream, state: Arc<Mutex<Ingest>>) -> std::io::Result<()> {
    let mut out = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
        let mut st = state.lock().unwrap();
        st.requests += 1;
        let status = if headers.get("authorization").map(String::as_str)
            != Some(&format!("Bearer {TOKEN}"))
        {
            "401 Unauthorized"
        } else if !path.starts_with("/api/log/v1/ingest")
            && !path.starts_with("/api/audit/v1/ingest")
        {
            "404 Not Found"
        } else if st.requests % 7 == 3 {
            st.refused += 1;
            "503 Service Unavailable"
        } else if st.requests % 11 == 5 {
            st.refused += 1;
            "429 Too Many Requests\r\nRetry-After: 0"
        } else {
            if headers.get("content-encoding").map(String::as_str) == Some("gzip") {
                let mut plain = Vec::new();
                flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut plain)?;
                body = plain;
            }
            for l in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let v: serde_json::Value = serde_json::from_slice(l)?;
                let key = v["key"].as_str().unwrap_or_default().to_string();
                let kind = v["record"]["kind"].as_str().unwrap_or("?").to_string();
                if st.keys.insert(key) {
                    *st.per_path
                        .entry(format!("{path} kind={kind}"))
                        .or_default() += 1;
                }
            }
            "200 OK"
        };
        drop(st);
        write!(out, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n")?;
        out.flush()?;
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let records: u64 = args
        .iter()
        .position(|a| a == "--records")
        .and_then(|i| args.get(i + 1))
        .map_or(Ok(1000), |s| s.parse())?;
    let var_dir = PathBuf::from(std::env::var("VAR_DIR").unwrap_or_else(|_| {
        std::env::temp_dir()
            .join(format!("walspool-shared-{}", std::process::id()))
            .display()
            .to_string()
    }));
    let batch_max = env_u64("WAL_BATCH_MAX", 2000) as usize;
    let max_bytes = env_u64("WAL_MAX_BYTES", 256 << 20);
    let max_age = Duration::from_secs(env_u64("WAL_MAX_AGE_H", 24) * 3600);

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let base = format!("http://{}", listener.local_addr()?);
    let ingest = Arc::new(Mutex::new(Ingest::default()));
    let st = ingest.clone();
    std::thread::spawn(move || serve(listener, st));

    let segment = (max_bytes / 4).clamp(64 << 10, 64 << 20);
    let mut wals = Vec::new();
    let mut shippers = Vec::new();
    for service in ["gateway", "billing"] {
        for (kind, when_full, path) in [
            ("audit", WhenFull::Block, "/api/audit/v1/ingest"),
            ("log", WhenFull::DropOldest, "/api/log/v1/ingest"),
        ] {
            let dir = var_dir.join("walspool").join(service).join(kind);
            let wal: Wal<LocalDisk> = Wal::open(
                LocalDisk::open(&dir)?,
                Options::default()
                    .schema::<Envelope>()
                    .segment_size(segment)
                    .max_bytes(max_bytes.max(2 * segment))
                    .max_age(max_age)
                    .when_full(when_full),
            )?;
            // The example's ingest server is on loopback: plain HTTP, by choice.
            let sink = HttpSink::builder(format!("{base}{path}"))
                .allow_http(true)
                .bearer_token(TOKEN)
                .gzip(true)
                .build()?;
            let shipper = Shipper::<_, Envelope>::builder(wal.consumer("ingest")?, sink)
                .batch_max(batch_max)
                .backoff(walspool::shipper::Backoff {
                    initial: Duration::from_millis(5),
                    max: Duration::from_millis(100),
                    ..Default::default()
                })
                .build()?;
            shippers.push(shipper.spawn_on_thread()?);
            wals.push((service, kind, wal));
        }
    }

    for i in 0..records {
        for (service, kind, wal) in &wals {
            let env = if *kind == "audit" {
                Envelope::Audit(AuditRecord {
                    ts: now_ms(),
                    service: service.to_string(),
                    actor: format!("user-{}", i % 5),
                    action: "invoice.read".into(),
                    resource: format!("invoice/{i}"),
                    outcome: "success".into(),
                    ctx: Some([("request_id".to_string(), format!("req-{i}"))].into()),
                    data: None,
                    tenant: None,
                })
            } else {
                Envelope::Log(LogRecord {
                    ts: now_ms(),
                    service: service.to_string(),
                    level: "info".into(),
                    category: Some("http".into()),
                    msg: Some(format!("GET /invoice/{i} 200")),
                    ctx: None,
                    data: Some(format!("{{\"latency_ms\":{}}}", i % 17)),
                })
            };
            wal.append_nowait(&env)?;
        }
    }
    for (_, _, wal) in &wals {
        futures::executor::block_on(wal.flush())?;
    }
    // Wait until every record is ingested (or was dropped by the log bound).
    let t = Instant::now();
    loop {
        let done = wals
            .iter()
            .all(|(_, _, w)| w.metrics().backlog_records == 0);
        if done || t.elapsed() > Duration::from_secs(120) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for s in shippers {
        s.shutdown()?;
    }
    let st = ingest.lock().unwrap();
    for (service, kind, wal) in &wals {
        let m = wal.metrics();
        println!(
            "{service}/{kind}: appended {} backlog {} dropped {} ship_errors {}",
            m.appended_records_total,
            m.backlog_records,
            m.dropped_records_total,
            m.ship_errors_total
        );
        futures::executor::block_on(wal.close())?;
    }
    for (path, n) in &st.per_path {
        println!("ingested {n} unique records on {path}");
    }
    println!(
        "requests {} (refused on purpose {}), unique records {}",
        st.requests,
        st.refused,
        st.keys.len()
    );
    Ok(())
}
