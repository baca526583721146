//! Kill test with real processes (issue 7, item 1).
//!
//! The test re-executes its own binary as a writer child (`WALSPOOL_KILL_CHILD_DIR`
//! selects child mode). The child opens a WAL on `LocalDisk` with `Durability::Sync`,
//! runs three concurrent appenders and one batch appender, and prints each acknowledged
//! sequence number with a digest of its record the moment the append resolves. A
//! consumer thread follows the log, checks every record, commits every few records and
//! prints each commit once it resolved. The parent SIGKILLs the child at a random
//! moment 1–200 ms after it started (often during recovery, often mid-fsync), then
//! opens the WAL itself and checks:
//!
//! * every acknowledged record is present, with the same digest, in order (sequence
//!   numbers contiguous), and no sequence number was ever acknowledged twice;
//! * every record read back is whole (its self-check holds) — no corrupt record is
//!   ever returned, reading never errors;
//! * the consumer's checkpoint is at least its last printed commit, never goes
//!   backwards, never points past the log, and the consumer resumes right after it.
//!
//! `WALSPOOL_KILLS` sets the number of kills (default 200), `WALSPOOL_KILL_SEED` the
//! random seed (printed). Long run:
//! `WALSPOOL_KILLS=1000 cargo test --release -p walspool --test crash_kill -- --nocapture`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::executor::block_on;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use walspool::{Durability, Error, LocalDisk, Options, Wal};

const CHILD_ENV: &str = "WALSPOOL_KILL_CHILD_DIR";
const TEST_NAME: &str = "sigkill_writer_at_random_moments_loses_nothing_acked";
const SHIPPER: &str = "shipper";
/// Never commits: keeps every record on disk so that the parent can check all of them.
const AUDIT: &str = "audit";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct KRec {
    writer: u32,
    n: u64,
    body: Vec<u8>,
    check: u64,
}

fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for p in parts {
        for &b in *p {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

impl KRec {
    fn new(writer: u32, n: u64, len: usize) -> Self {
        let body: Vec<u8> = (0..len)
            .map(|i| {
                (n as u8)
                    .wrapping_add(i as u8)
                    .wrapping_mul(writer as u8 | 1)
            })
            .collect();
        let check = fnv(&[&writer.to_le_bytes(), &n.to_le_bytes(), &body]);
        KRec {
            writer,
            n,
            body,
            check,
        }
    }
    fn intact(&self) -> bool {
        self.check
            == fnv(&[
                &self.writer.to_le_bytes(),
                &self.n.to_le_bytes(),
                &self.body,
            ])
    }
    /// The digest the child prints and the parent compares.
    fn digest(&self) -> u64 {
        self.check ^ (self.body.len() as u64).rotate_left(32)
    }
}

fn options() -> Options {
    Options::default()
        .durability(Durability::Sync)
        .segment_size(64 << 10)
        .stats_interval(Some(Duration::from_millis(20)))
}

/// A small xorshift generator: no dependency, reproducible from the printed seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn open_with_retry(dir: &Path) -> walspool::Result<Wal<LocalDisk>> {
    let t = Instant::now();
    loop {
        match LocalDisk::open(dir).and_then(|d| Wal::open(d, options())) {
            Err(Error::Locked { .. }) if t.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(2))
            }
            r => return r,
        }
    }
}

// ---------------------------------------------------------------- child ----

fn say(out: &Mutex<std::io::Stdout>, line: String) {
    let o = out.lock().unwrap_or_else(|e| e.into_inner());
    let mut o = o.lock();
    // One write per line, flushed at once: a line the parent sees whole was acked.
    let _ = o.write_all(line.as_bytes());
    let _ = o.flush();
}

fn child(dir: &str) -> ! {
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let wal = match open_with_retry(Path::new(dir)) {
        Ok(w) => w,
        Err(e) => {
            say(&out, format!("E open: {e}\n"));
            std::process::exit(3);
        }
    };
    let seed = std::process::id() as u64 * 0x9E37_79B9 + 1;
    let mut threads = Vec::new();
    for writer in 0..4u32 {
        let wal = wal.clone();
        let out = out.clone();
        threads.push(std::thread::spawn(move || {
            let mut rng = Rng(seed ^ ((writer as u64 + 1) * 0x1234_5678_9abc));
            let mut n = 0u64;
            loop {
                if writer < 3 {
                    n += 1;
                    let r = KRec::new(writer, n, rng.range(0, 300) as usize);
                    match block_on(wal.append(&r)) {
                        Ok(seq) => say(&out, format!("A {seq} {:016x}\n", r.digest())),
                        Err(e) => say(&out, format!("E append: {e}\n")),
                    }
                } else {
                    let k = rng.range(1, 6);
                    let batch: Vec<KRec> = (0..k)
                        .map(|_| {
                            n += 1;
                            KRec::new(writer, n, rng.range(0, 200) as usize)
                        })
                        .collect();
                    match block_on(wal.append_batch(&batch)) {
                        Ok(range) => {
                            let mut lines = String::new();
                            for (seq, r) in range.zip(&batch) {
                                lines.push_str(&format!("A {seq} {:016x}\n", r.digest()));
                            }
                            say(&out, lines);
                        }
                        Err(e) => say(&out, format!("E batch: {e}\n")),
                    }
                }
            }
        }));
    }
    let consumer = match wal.consumer(SHIPPER) {
        Ok(c) => c,
        Err(e) => {
            say(&out, format!("E consumer: {e}\n"));
            std::process::exit(3);
        }
    };
    let from = consumer.committed();
    block_on(async {
        let mut s = consumer.read::<KRec>();
        let mut first = true;
        while let Some(item) = s.next().await {
            match item {
                Ok(e) => {
                    if first {
                        say(&out, format!("F {from} {}\n", e.seq));
                        first = false;
                    }
                    if !e.record.intact() {
                        say(
                            &out,
                            format!("X {} torn record read by the consumer\n", e.seq),
                        );
                    }
                    if e.seq % 7 == 0 {
                        match consumer.commit(e.seq).await {
                            Ok(()) => say(&out, format!("C {}\n", e.seq)),
                            Err(err) => say(&out, format!("E commit: {err}\n")),
                        }
                    }
                }
                Err(err) => say(&out, format!("X read: {err}\n")),
            }
        }
    });
    for t in threads {
        let _ = t.join();
    }
    std::process::exit(0)
}

// --------------------------------------------------------------- parent ----

#[derive(Default)]
struct Ledger {
    /// seq -> digest of every acknowledged record.
    acked: BTreeMap<u64, u64>,
    /// Highest commit the child reported.
    committed: u64,
    /// Highest checkpoint the parent has seen.
    checkpoint_seen: u64,
    kills: u64,
    kills_with_acks: u64,
    records_checked: u64,
}

/// Reads the child's stdout; only whole lines count (a line cut by the kill was not
/// fully printed, so its ack is not counted — the record may still be on disk).
fn collect(stdout: std::process::ChildStdout) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut lines = Vec::new();
        loop {
            let mut buf = Vec::new();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) if buf.ends_with(b"\n") => {
                    lines.push(String::from_utf8_lossy(&buf).trim_end().to_string())
                }
                Ok(_) => break,
            }
        }
        lines
    })
}

fn apply_lines(ledger: &mut Ledger, lines: &[String], round: u64) -> u64 {
    let mut acks = 0;
    for l in lines {
        let mut it = l.split_whitespace();
        match it.next() {
            Some("A") => {
                let seq: u64 = it.next().unwrap().parse().unwrap();
                let d = u64::from_str_radix(it.next().unwrap(), 16).unwrap();
                if let Some(old) = ledger.acked.insert(seq, d) {
                    panic!("round {round}: sequence number {seq} acknowledged twice ({old:016x}, then {d:016x})");
                }
                acks += 1;
            }
            Some("C") => {
                let seq: u64 = it.next().unwrap().parse().unwrap();
                ledger.committed = ledger.committed.max(seq);
            }
            Some("F") => {
                let from: u64 = it.next().unwrap().parse().unwrap();
                let first: u64 = it.next().unwrap().parse().unwrap();
                assert_eq!(
                    first,
                    from + 1,
                    "round {round}: consumer with checkpoint {from} resumed at {first}"
                );
            }
            Some("X") | Some("E") => panic!("round {round}: the writer reported: {l}"),
            _ => {} // the test harness's own lines
        }
    }
    acks
}

/// Opens the WAL in this process and checks it against the ledger. Checks every
/// record when `full`, else the last `window` sequence numbers.
fn verify(dir: &Path, ledger: &mut Ledger, round: u64, full: bool) {
    let wal = open_with_retry(dir).unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
    let end = wal.durable_seq();
    let shipper = wal.consumer(SHIPPER).unwrap();
    let c = shipper.committed();
    assert!(
        c >= ledger.committed,
        "round {round}: checkpoint {c} is behind the last acknowledged commit {}",
        ledger.committed
    );
    assert!(
        c >= ledger.checkpoint_seen,
        "round {round}: checkpoint went backwards: {} -> {c}",
        ledger.checkpoint_seen
    );
    assert!(
        c <= end,
        "round {round}: checkpoint {c} past the end of the log {end}"
    );
    ledger.checkpoint_seen = c;
    if let Some((&last, _)) = ledger.acked.iter().next_back() {
        assert!(
            last <= end,
            "round {round}: acknowledged record {last} lost: the log ends at {end}"
        );
    }
    let first = wal.first_seq_on_disk().unwrap_or(end + 1);
    assert_eq!(
        first, 1,
        "round {round}: nothing may be deleted while 'audit' lags"
    );
    let from = if full {
        first
    } else {
        end.saturating_sub(3000).max(first)
    };
    let mut s = wal.read_range::<KRec>(from, end);
    let mut expect = from;
    block_on(async {
        while let Some(item) = s.next().await {
            let e = item.unwrap_or_else(|e| panic!("round {round}: reading record {expect}: {e}"));
            assert_eq!(
                e.seq, expect,
                "round {round}: sequence numbers not contiguous"
            );
            expect += 1;
            assert!(e.record.intact(), "round {round}: record {} is torn", e.seq);
            if let Some(d) = ledger.acked.get(&e.seq) {
                assert_eq!(
                    *d,
                    e.record.digest(),
                    "round {round}: record {} differs from what was acknowledged",
                    e.seq
                );
            }
            ledger.records_checked += 1;
        }
    });
    assert_eq!(expect, end + 1, "round {round}: reader stopped early");
    if end > c {
        let next = block_on(shipper.read::<KRec>().next());
        assert!(
            matches!(&next, Some(Ok(e)) if e.seq == c + 1),
            "round {round}: consumer at {c} resumes at {next:?}"
        );
    }
    block_on(wal.close()).unwrap();
}

fn parent() {
    let kills: u64 = std::env::var("WALSPOOL_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed: u64 = std::env::var("WALSPOOL_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("crash_kill: {kills} kills, WALSPOOL_KILL_SEED={seed}");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    {
        // The audit consumer never commits, so every record stays on disk to be checked.
        let wal = open_with_retry(&dir).unwrap();
        wal.consumer(AUDIT).unwrap();
        block_on(wal.close()).unwrap();
    }
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut ledger = Ledger::default();
    for round in 1..=kills {
        let mut child = Command::new(&exe)
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = collect(child.stdout.take().unwrap());
        std::thread::sleep(Duration::from_millis(rng.range(1, 200)));
        child.kill().unwrap(); // SIGKILL on Unix
        let status = child.wait().unwrap();
        let lines = lines.join().unwrap();
        let acks = apply_lines(&mut ledger, &lines, round);
        assert!(
            status.code().is_none_or(|c| c == 0),
            "round {round}: the writer exited on its own with {status}: {lines:?}"
        );
        ledger.kills += 1;
        ledger.kills_with_acks += (acks > 0) as u64;
        verify(&dir, &mut ledger, round, round % 25 == 0 || round == kills);
    }
    let on_disk = {
        let wal = open_with_retry(&dir).unwrap();
        let n = wal.durable_seq();
        block_on(wal.close()).unwrap();
        n
    };
    println!(
        "KILL-SUMMARY kills={} kills_with_acks={} acked={} records_on_disk={} records_checked={} checkpoint={} lost_acked=0 seconds={:.1}",
        ledger.kills,
        ledger.kills_with_acks,
        ledger.acked.len(),
        on_disk,
        ledger.records_checked,
        ledger.checkpoint_seen,
        started.elapsed().as_secs_f64()
    );
    assert!(
        ledger.kills_with_acks * 4 >= ledger.kills,
        "the writer acknowledged records in only {} of {} runs: the test is not exercising much",
        ledger.kills_with_acks,
        ledger.kills
    );
    assert!(ledger.checkpoint_seen > 0, "the consumer never committed");
}

#[test]
fn sigkill_writer_at_random_moments_loses_nothing_acked() {
    match std::env::var(CHILD_ENV) {
        Ok(dir) => child(&dir),
        Err(_) => parent(),
    }
}
