//! Kill test for the shipper: a real process ships a `LocalDisk` WAL through the HTTP
//! sink to a loopback server run by this test, is SIGKILLed (once while a batch is in
//! flight, once right after the server acknowledged one), and is restarted. Every
//! record must reach the server, and nothing committed may be sent again: the only
//! records sent twice are those of the one batch in flight at each kill (with
//! `pipeline_checkpoint(false)`; the default is tested in tests/ship_kill_sinks.rs).
//!
//! The child is this test binary itself, re-executed with `WALSPOOL_SHIP_KILL_CHILD`
//! set and `--exact ship_kill_child`.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Child;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{seed_wal, self_command};
use walspool::backends::http::{HttpSink, WireRecord};
use walspool::shipper::Shipper;
use walspool::{LocalDisk, Options, Wal};

const TOTAL: u64 = 20_000;
const BATCH: usize = 500;
const CONSUMER: &str = "ingest";

/// The child: ships the WAL in `WALSPOOL_SHIP_KILL_DIR` to `WALSPOOL_SHIP_KILL_URL`
/// until everything is committed. Does nothing in a normal test run.
#[test]
fn ship_kill_child() {
    let (Some(dir), Some(url)) = (
        std::env::var_os("WALSPOOL_SHIP_KILL_DIR"),
        std::env::var_os("WALSPOOL_SHIP_KILL_URL"),
    ) else {
        return;
    };
    if std::env::var_os("WALSPOOL_SHIP_KILL_CHILD").is_none() {
        return;
    }
    let wal = Wal::open(LocalDisk::open(dir).unwrap(), Options::default()).unwrap();
    let sink = HttpSink::builder(url.to_string_lossy().into_owned())
        .allow_http(true)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let shipper = Shipper::<_, u64>::builder(wal.consumer(CONSUMER).unwrap(), sink)
        .batch_max(BATCH)
        .linger(Duration::ZERO)
        // Each batch committed before the next is sent: the strict bound checked
        // below (only the batch in flight is resent). tests/ship_kill_sinks.rs runs the
        // default, pipelined checkpoints.
        .pipeline_checkpoint(false)
        .send_timeout(Duration::from_secs(60))
        .build()
        .expect("valid shipper configuration");
    let t = shipper.spawn_on_thread().unwrap();
    assert!(t
        .handle()
        .wait_committed_timeout(TOTAL, Duration::from_secs(120)));
    t.shutdown().unwrap();
    futures::executor::block_on(wal.close()).unwrap();
}

/// What the server tells the test about a request.
enum Event {
    /// Request `n` (0-based) arrived; the server holds its answer until told.
    Holding(u64),
    /// Request `n` was answered 200.
    Answered(u64),
}

#[derive(Default)]
struct Received {
    /// Every request's sequence numbers, in arrival order.
    requests: Vec<Vec<u64>>,
}

/// A tiny HTTP/1.1 server. Requests whose index is in `hold` wait for a word on the
/// release channel before being answered.
fn start_server(
    received: Arc<Mutex<Received>>,
    hold: Arc<Mutex<Vec<u64>>>,
    events: mpsc::Sender<Event>,
    release: Arc<Mutex<mpsc::Receiver<()>>>,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/ingest", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (received, hold, events, release) = (
                received.clone(),
                hold.clone(),
                events.clone(),
                release.clone(),
            );
            std::thread::spawn(move || serve(conn, received, hold, events, release));
        }
    });
    url
}

fn serve(
    conn: TcpStream,
    received: Arc<Mutex<Received>>,
    hold: Arc<Mutex<Vec<u64>>>,
    events: mpsc::Sender<Event>,
    release: Arc<Mutex<mpsc::Receiver<()>>>,
) {
    let mut out = conn.try_clone().unwrap();
    let mut rd = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if rd.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut len = 0usize;
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
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len];
        if rd.read_exact(&mut body).is_err() {
            return;
        }
        let seqs: Vec<u64> = body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice::<WireRecord<u64>>(l).unwrap().seq)
            .collect();
        let n = {
            let mut r = received.lock().unwrap();
            r.requests.push(seqs);
            r.requests.len() as u64 - 1
        };
        if hold.lock().unwrap().contains(&n) {
            events.send(Event::Holding(n)).unwrap();
            let _ = release.lock().unwrap().recv();
        }
        if out
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
        let _ = events.send(Event::Answered(n));
    }
}

fn spawn_child(dir: &std::path::Path, url: &str) -> Child {
    self_command("ship_kill_child")
        .env("WALSPOOL_SHIP_KILL_CHILD", "1")
        .env("WALSPOOL_SHIP_KILL_DIR", dir)
        .env("WALSPOOL_SHIP_KILL_URL", url)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn committed(dir: &std::path::Path) -> u64 {
    common::committed(dir, Options::default(), CONSUMER)
}

#[test]
fn sigkilled_shipper_restarts_and_delivers_everything_resending_only_the_in_flight_batch() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<u64> = (1..=TOTAL).collect();
    seed_wal(dir.path(), &records, CONSUMER);

    let received = Arc::new(Mutex::new(Received::default()));
    let hold = Arc::new(Mutex::new(Vec::new()));
    let (ev_tx, ev_rx) = mpsc::channel();
    let (rel_tx, rel_rx) = mpsc::channel();
    let url = start_server(
        received.clone(),
        hold.clone(),
        ev_tx,
        Arc::new(Mutex::new(rel_rx)),
    );

    // Run 1: killed while the server holds request 6 (a batch in flight, unanswered).
    hold.lock().unwrap().push(6);
    let mut child = spawn_child(dir.path(), &url);
    loop {
        match ev_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the child stopped shipping")
        {
            Event::Holding(6) => break,
            _ => continue,
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    rel_tx.send(()).unwrap();
    let killed_1 = received.lock().unwrap().requests.len();
    let committed_1 = committed(dir.path());
    {
        let r = received.lock().unwrap();
        // Every answered batch was committed; the one in flight was not.
        assert_eq!(committed_1, *r.requests[5].last().unwrap());
        assert_eq!(r.requests[6].first().copied(), Some(committed_1 + 1));
    }

    // Run 2: killed right after the server answered request `killed_1 + 3`: the kill
    // races the commit of that batch.
    let target = killed_1 as u64 + 3;
    let mut child = spawn_child(dir.path(), &url);
    loop {
        match ev_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the child stopped shipping")
        {
            Event::Answered(n) if n == target => break,
            _ => continue,
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let killed_2 = received.lock().unwrap().requests.len();
    let committed_2 = committed(dir.path());
    {
        let r = received.lock().unwrap();
        let t = target as usize;
        assert!(
            committed_2 == *r.requests[t].last().unwrap()
                || committed_2 == *r.requests[t - 1].last().unwrap(),
            "checkpoint {committed_2} is neither the answered batch nor the one before"
        );
    }

    // Run 3: to the end.
    let mut child = spawn_child(dir.path(), &url);
    let status = child.wait().unwrap();
    assert!(status.success(), "the last run failed: {status:?}");
    assert_eq!(committed(dir.path()), TOTAL);

    // Every record reached the server; dedupe by key leaves each once, in order.
    let r = received.lock().unwrap();
    let all: Vec<u64> = r.requests.iter().flatten().copied().collect();
    let mut seen = std::collections::HashSet::new();
    let deduped: Vec<u64> = all.iter().copied().filter(|s| seen.insert(*s)).collect();
    assert_eq!(deduped, (1..=TOTAL).collect::<Vec<_>>());

    // Nothing committed was sent again: after each restart, the first batch starts
    // right after the checkpoint, and the only records seen twice are those of the
    // batch in flight at a kill.
    assert_eq!(r.requests[killed_1].first().copied(), Some(committed_1 + 1));
    assert_eq!(r.requests[killed_2].first().copied(), Some(committed_2 + 1));
    // At each kill, what was received but not committed is one batch: the last one.
    for (killed, committed_at_kill) in [(killed_1, committed_1), (killed_2, committed_2)] {
        let uncommitted: Vec<u64> = r.requests[..killed]
            .iter()
            .flatten()
            .copied()
            .filter(|s| *s > committed_at_kill)
            .collect();
        assert_eq!(
            uncommitted,
            r.requests[killed - 1],
            "more than the in-flight batch was uncommitted at a kill"
        );
    }
    let mut counts: HashMap<u64, u32> = HashMap::new();
    for s in &all {
        *counts.entry(*s).or_default() += 1;
    }
    let in_flight: std::collections::HashSet<u64> = r.requests[killed_1 - 1]
        .iter()
        .chain(&r.requests[killed_2 - 1])
        .copied()
        .collect();
    for (seq, n) in counts {
        if n > 1 {
            assert_eq!(n, 2, "record {seq} was sent {n} times");
            assert!(
                in_flight.contains(&seq),
                "record {seq} was sent twice but was not in flight at a kill"
            );
        }
    }
    let duplicates = all.len() as u64 - TOTAL;
    assert!(
        duplicates <= 2 * BATCH as u64,
        "{duplicates} duplicates for two kills"
    );
    assert!(
        duplicates >= BATCH as u64,
        "the batch in flight at the first kill was not sent again"
    );
}
