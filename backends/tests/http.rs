//! The HTTP ingest sink against a real HTTP/1.1 server on 127.0.0.1 started by the
//! test. The server answers 500, 429 with `Retry-After`, or 200 at random, sometimes
//! keeps a batch and still answers 500, and checks the bearer token, gzip and the
//! idempotency keys of every request. The shipper runs under tokio and under smol.

#![cfg(feature = "http")]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use walspool_backends::http::{BodyFormat, HttpSink, WireRecord, REJECT_SEQ_HEADER};
use walspool_wal::shipper::{Backoff, Batch, Breaker, Shipper, Sink, SinkError};
use walspool_wal::{Entry, Memory, Options, Wal};

const TOKEN: &str = "t0ken-for-tests";
const DEADLINE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Event {
    id: u64,
    msg: String,
}

/// How the server answers.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Random 500 / keep-then-500 / 429 + Retry-After / 200; refuses `poison_id` with
    /// 422 + Walspool-Reject-Seq.
    Chaos {
        max_429: u32,
        poison_id: Option<u64>,
    },
    /// Always 200.
    Ok,
}

#[derive(Debug, Default)]
struct ServerState {
    requests: u64,
    statuses: HashMap<u16, u64>,
    kept: Vec<u64>,
    unique: HashSet<String>,
    deduped: Vec<u64>,
    /// Seqs kept by a request that was then answered with a failure.
    kept_then_failed: HashSet<u64>,
    violations: Vec<String>,
    gzipped: u64,
    sent_429: u32,
    retry_after_until: Option<Instant>,
    rng: u64,
    bytes_in: u64,
}

impl ServerState {
    fn roll(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % 100
    }
}

struct Server {
    addr: String,
    state: Arc<Mutex<ServerState>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start(mode: Mode, expect_gzip: bool) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}/ingest", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(ServerState {
            rng: 0x2545F4914F6CDD1D,
            ..ServerState::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !sp.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        conn.set_nonblocking(false).unwrap();
                        let (st, sp) = (st.clone(), sp.clone());
                        std::thread::spawn(move || serve(conn, st, sp, mode, expect_gzip));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Server { addr, state, stop }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One keep-alive connection: requests until EOF.
fn serve(
    conn: TcpStream,
    state: Arc<Mutex<ServerState>>,
    stop: Arc<AtomicBool>,
    mode: Mode,
    expect_gzip: bool,
) {
    conn.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut out = conn.try_clone().unwrap();
    let mut rd = BufReader::new(conn);
    loop {
        let mut line = String::new();
        match rd.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                continue;
            }
            Err(_) => return,
        }
        let request_line = line.trim_end().to_string();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if rd.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
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
        if rd.read_exact(&mut body).is_err() {
            return;
        }
        let (code, extra) = handle(&request_line, &headers, body, &state, mode, expect_gzip);
        let reason = match code {
            200 => "OK",
            401 => "Unauthorized",
            422 => "Unprocessable Entity",
            429 => "Too Many Requests",
            _ => "Internal Server Error",
        };
        let resp = format!("HTTP/1.1 {code} {reason}\r\nContent-Length: 0\r\n{extra}\r\n");
        if out.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

fn handle(
    request_line: &str,
    headers: &HashMap<String, String>,
    body: Vec<u8>,
    state: &Mutex<ServerState>,
    mode: Mode,
    expect_gzip: bool,
) -> (u16, String) {
    let mut st = state.lock().unwrap();
    st.requests += 1;
    st.bytes_in += body.len() as u64;
    let violation = |st: &mut ServerState, v: String| {
        st.violations.push(v);
        (401u16, String::new())
    };
    if request_line != "POST /ingest HTTP/1.1" {
        return violation(&mut st, format!("unexpected request line {request_line:?}"));
    }
    if headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {TOKEN}")) {
        return violation(
            &mut st,
            format!("bad authorization {:?}", headers.get("authorization")),
        );
    }
    if let Some(until) = st.retry_after_until.take() {
        if Instant::now() < until {
            let early = until - Instant::now();
            st.violations.push(format!(
                "a request came {early:?} before Retry-After allowed it"
            ));
        }
    }
    let gz = headers.get("content-encoding").map(String::as_str) == Some("gzip");
    if gz != expect_gzip {
        return violation(
            &mut st,
            format!("content-encoding gzip = {gz}, expected {expect_gzip}"),
        );
    }
    let raw = if gz {
        st.gzipped += 1;
        let mut out = Vec::new();
        if let Err(e) = flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out) {
            return violation(&mut st, format!("body is not gzip: {e}"));
        }
        out
    } else {
        body
    };
    let records: Vec<WireRecord<Event>> = match headers.get("content-type").map(String::as_str) {
        Some("application/x-ndjson") => {
            let parsed: Result<Vec<_>, _> = raw
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(serde_json::from_slice::<WireRecord<Event>>)
                .collect();
            match parsed {
                Ok(v) => v,
                Err(e) => return violation(&mut st, format!("bad JSON line: {e}")),
            }
        }
        Some("application/x-postcard") => match postcard::from_bytes(&raw) {
            Ok(v) => v,
            Err(e) => return violation(&mut st, format!("bad postcard body: {e}")),
        },
        other => return violation(&mut st, format!("content-type {other:?}")),
    };
    // Idempotency keys: per record `{wal_id}:{seq}`, per batch `{wal_id}:{first}-{last}`.
    let Some(first) = records.first() else {
        return violation(&mut st, "empty batch".into());
    };
    let wal_id = first.wal_id.clone();
    let want = format!(
        "{wal_id}:{}-{}",
        first.seq,
        records.last().map_or(0, |r| r.seq)
    );
    if headers.get("idempotency-key") != Some(&want) {
        return violation(
            &mut st,
            format!(
                "Idempotency-Key {:?}, expected {want:?}",
                headers.get("idempotency-key")
            ),
        );
    }
    for r in &records {
        if r.key != format!("{}:{}", r.wal_id, r.seq) || r.wal_id != wal_id || r.record.id != r.seq
        {
            return violation(
                &mut st,
                format!("bad record key {:?} for seq {}", r.key, r.seq),
            );
        }
    }
    if records.windows(2).any(|w| w[0].seq >= w[1].seq) {
        return violation(&mut st, "records out of order".into());
    }
    let keep = |st: &mut ServerState| {
        for r in &records {
            st.kept.push(r.seq);
            if st.unique.insert(r.key.clone()) {
                st.deduped.push(r.seq);
            }
        }
    };
    let (code, extra) = match mode {
        Mode::Ok => {
            keep(&mut st);
            (200, String::new())
        }
        Mode::Chaos { max_429, poison_id } => {
            if let Some(p) = records.iter().find(|r| Some(r.record.id) == poison_id) {
                (422, format!("{REJECT_SEQ_HEADER}: {}\r\n", p.seq))
            } else if st.sent_429 < max_429 && st.requests % 5 == 3 {
                // 429 on the 3rd and 8th requests (the others are random).
                st.sent_429 += 1;
                st.retry_after_until = Some(Instant::now() + Duration::from_millis(950));
                (429, "Retry-After: 1\r\n".into())
            } else {
                match st.roll() {
                    0..=14 => (500, String::new()),
                    15..=24 => {
                        keep(&mut st);
                        for r in &records {
                            st.kept_then_failed.insert(r.seq);
                        }
                        (500, String::new())
                    }
                    _ => {
                        keep(&mut st);
                        (200, String::new())
                    }
                }
            }
        }
    };
    *st.statuses.entry(code).or_default() += 1;
    (code, extra)
}

fn events(from: u64, to: u64) -> Vec<Event> {
    (from..=to)
        .map(|id| Event {
            id,
            msg: format!("event number {id} with some padding to make gzip worth it"),
        })
        .collect()
}

enum Runtime {
    Tokio,
    Smol,
}

/// Ships `total` events through an HttpSink to a chaos server on the given runtime
/// and checks what the server got.
fn ship_through_chaos(rt: Runtime, format: BodyFormat, gzip: bool) {
    let total = 3000u64;
    let poison = 1234u64;
    let server = Server::start(
        Mode::Chaos {
            max_429: 2,
            poison_id: Some(poison),
        },
        gzip,
    );
    let wal = Wal::open(Memory::new(), Options::default()).unwrap();
    let sink = HttpSink::builder(server.addr.clone())
        .allow_http(true)
        .bearer_token(TOKEN)
        .gzip(gzip)
        .format(format)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let shipper = Shipper::<_, Event>::builder(wal.consumer("http").unwrap(), sink)
        .batch_max(100)
        .linger(Duration::from_millis(2))
        .backoff(Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(10),
            max_retry_after: Duration::from_secs(2),
        })
        .breaker(Breaker {
            failure_threshold: 6,
            open_for: Duration::from_millis(20),
        })
        .poison_attempts(2)
        .build()
        .expect("valid shipper configuration");
    let handle = shipper.handle();

    let appends = {
        let wal = wal.clone();
        move || async move {
            let mut next = 1;
            while next <= total {
                let to = (next + 149).min(total);
                wal.append_batch(&events(next, to)).await.unwrap();
                next = to + 1;
            }
        }
    };
    let status = match rt {
        Runtime::Tokio => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let task = tokio::spawn(shipper.run());
                appends().await;
                handle.wait_committed(total).await;
                handle.request_shutdown();
                task.await.unwrap().unwrap()
            })
        }
        Runtime::Smol => smol::block_on(async {
            let task = smol::spawn(shipper.run());
            appends().await;
            handle.wait_committed(total).await;
            handle.request_shutdown();
            task.await.unwrap()
        }),
    };

    let st = server.state.lock().unwrap();
    eprintln!(
        "server: {} requests, statuses {:?}, {} records kept ({} duplicates)",
        st.requests,
        st.statuses,
        st.kept.len(),
        st.kept.len() - st.deduped.len()
    );
    assert!(
        st.violations.is_empty(),
        "server saw violations: {:?}",
        st.violations
    );
    let expected: Vec<u64> = (1..=total).filter(|s| *s != poison).collect();
    assert_eq!(
        st.deduped, expected,
        "deduplicated by key, the server does not hold every record once, in order"
    );
    let mut counts: HashMap<u64, u32> = HashMap::new();
    for s in &st.kept {
        *counts.entry(*s).or_default() += 1;
    }
    for (seq, n) in &counts {
        if *n > 1 {
            assert!(
                st.kept_then_failed.contains(seq),
                "record {seq} duplicated without a failure around it"
            );
        }
    }
    assert!(
        st.statuses.get(&500).copied().unwrap_or(0) > 0,
        "no 500 was served: {:?}",
        st.statuses
    );
    assert_eq!(
        st.statuses.get(&429).copied(),
        Some(2),
        "statuses: {:?}",
        st.statuses
    );
    if gzip {
        assert_eq!(st.gzipped, st.requests);
    }
    let failures: u64 = st
        .statuses
        .iter()
        .filter(|(c, _)| **c != 200)
        .map(|(_, n)| *n)
        .sum();
    assert_eq!(status.failed_attempts, failures);
    assert_eq!(wal.metrics().ship_errors_total, failures);
    assert_eq!(status.committed_seq, total);
    // The poison record is in the dead letter, with the server's reason.
    let letters = wal.dead_letters("http").unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].seq, poison);
    assert!(
        letters[0].reason.contains("422"),
        "reason: {}",
        letters[0].reason
    );
    assert_eq!(letters[0].decode::<Event>().unwrap().id, poison);
    assert_eq!(wal.metrics().dead_letter_total, 1);
}

#[test]
fn http_sink_under_tokio_json_lines_gzip() {
    ship_through_chaos(Runtime::Tokio, BodyFormat::JsonLines, true);
}

#[test]
fn http_sink_under_smol_postcard_plain() {
    ship_through_chaos(Runtime::Smol, BodyFormat::Postcard, false);
}

#[test]
fn http_sink_under_smol_json_lines_gzip() {
    ship_through_chaos(Runtime::Smol, BodyFormat::JsonLines, true);
}

#[test]
fn http_sink_classifies_answers_and_connection_failures() {
    // Nothing listens on this port once the listener is dropped.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut dead = HttpSink::builder(format!("http://127.0.0.1:{port}/ingest"))
        .allow_http(true)
        .connect_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let batch = Batch::new(
        "w",
        "c",
        vec![Entry {
            seq: 1,
            ts_us: 0,
            record: Event {
                id: 1,
                msg: "x".into(),
            },
        }],
    );
    let r = futures::executor::block_on(Sink::<Event>::send(&mut dead, &batch));
    assert!(
        r.as_ref().is_err_and(SinkError::is_transient),
        "connection refused is transient: {r:?}"
    );

    // A wrong token: the server answers 401, a permanent refusal of the batch.
    let server = Server::start(Mode::Ok, false);
    let mut wrong = HttpSink::builder(server.addr.clone())
        .allow_http(true)
        .bearer_token("nope")
        .build()
        .unwrap();
    let r = futures::executor::block_on(Sink::<Event>::send(&mut wrong, &batch));
    assert_eq!(r, Err(SinkError::batch("HTTP 401 Unauthorized")));

    let refused = HttpSink::builder(server.addr.clone())
        .bearer_token("nope")
        .build()
        .expect_err("plain http:// must be refused without allow_http");
    assert!(
        refused.to_string().contains("allow_http"),
        "the error says how to opt in: {refused}"
    );
}

/// Throughput to the loopback server and to a no-op sink (records/s), from a
/// `LocalDisk` WAL (so every commit is an fsync'd checkpoint). Runs only with
/// `WALSPOOL_SHIP_BENCH=1`, in release mode:
/// `WALSPOOL_SHIP_BENCH=1 cargo test --release -p walspool-backends --features http --test http -- --nocapture measure`
#[test]
fn measure_http_throughput() {
    if std::env::var_os("WALSPOOL_SHIP_BENCH").is_none() {
        return;
    }
    let total = 200_000u64;
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(
        walspool_backends::LocalDisk::open(dir.path()).unwrap(),
        Options::default(),
    )
    .unwrap();
    for chunk in events(1, total).chunks(10_000) {
        futures::executor::block_on(wal.append_batch(chunk)).unwrap();
    }
    let run = |name: &str, sink: Box<dyn Sink<Event>>| {
        let shipper = Shipper::<_, Event>::builder(wal.consumer(name).unwrap(), sink)
            .build()
            .expect("valid shipper configuration");
        let start = Instant::now();
        let t = shipper.spawn_on_thread().unwrap();
        assert!(t.handle().wait_committed_timeout(total, DEADLINE));
        let secs = start.elapsed().as_secs_f64();
        let st = t.shutdown().unwrap();
        (secs, st.batches_acked)
    };
    let noop = walspool_wal::shipper::FnSink::new(|_: &Batch<Event>| async { Ok(()) });
    let (secs, batches) = run("noop", Box::new(noop));
    println!(
        "no-op sink, LocalDisk, batch 2000: {total} records in {secs:.2}s = {:.0} records/s ({batches} batches)",
        total as f64 / secs
    );
    for gzip in [false, true] {
        let server = Server::start(Mode::Ok, gzip);
        let sink = HttpSink::builder(server.addr.clone())
            .allow_http(true)
            .bearer_token(TOKEN)
            .gzip(gzip)
            .build()
            .unwrap();
        let (secs, _) = run(&format!("http-gzip-{gzip}"), Box::new(sink));
        let st = server.state.lock().unwrap();
        println!(
            "HTTP sink, LocalDisk, loopback, JSON lines, gzip={gzip}, batch 2000: {total} records in {secs:.2}s = {:.0} records/s ({} requests, {:.1} MB on the wire)",
            total as f64 / secs,
            st.requests,
            st.bytes_in as f64 / 1e6
        );
        assert_eq!(st.deduped.len() as u64, total);
    }
}
