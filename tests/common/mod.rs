//! What the process-level tests share (`mod common;` in each):
//!
//! * from backends/tests/support/kill.rs (shared with the backends' kill tests):
//!   [`self_command`], which re-executes the test binary to run one test as a child
//!   process (crash_kill, power_loss, ship_kill, ship_kill_sinks), [`committed`], a
//!   consumer's checkpoint (ship_kill, ship_kill_sinks), and [`seed_wal`] (ship_kill);
//! * the writer child of crash_kill and power_loss and its printed-ack protocol:
//!   [`KRec`], [`writer_child`], [`spawn_writer`], [`Ledger`] with
//!   [`Ledger::apply_lines`] and [`Ledger::check_log`].
//!
//! The protocol: the child prints one line per event, written and flushed whole the
//! moment the event happened, so that a line the parent reads whole did happen:
//!
//! * `A <seq> <digest>`: a record was acknowledged (appended durably);
//! * `C <seq>`: the consumer's commit of `seq` resolved;
//! * `F <checkpoint> <seq>`: the consumer started at checkpoint `checkpoint` and read
//!   `seq` first;
//! * `T <seq> ...`: the consumer read a torn record (always a failure);
//! * `E ...`: an operation failed (a failure, unless the test expects errors).
//!
//! Not every test binary uses every item.
#![allow(dead_code)]

#[path = "../../backends/tests/support/kill.rs"]
mod kill;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::executor::block_on;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use walspool::{Durability, Error, LocalDisk, Options, Wal};

#[allow(unused_imports)]
pub use kill::{committed, seed_wal, self_command};

// ------------------------------------------------------- the writer child ----

/// The consumer of the writer child, which commits.
pub const SHIPPER: &str = "shipper";
/// Never commits: keeps every record on disk so that the parent can check all of them.
pub const AUDIT: &str = "audit";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KRec {
    pub writer: u32,
    pub n: u64,
    pub body: Vec<u8>,
    pub check: u64,
}

pub fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for p in parts {
        for &b in *p {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

impl KRec {
    pub fn new(writer: u32, n: u64, len: usize) -> Self {
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
    pub fn intact(&self) -> bool {
        self.check
            == fnv(&[
                &self.writer.to_le_bytes(),
                &self.n.to_le_bytes(),
                &self.body,
            ])
    }
    /// The digest the child prints and the parent compares.
    pub fn digest(&self) -> u64 {
        self.check ^ (self.body.len() as u64).rotate_left(32)
    }
}

/// A small xorshift generator: no dependency, reproducible from the printed seed.
#[derive(Debug)]
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    /// True with probability `per_mille`/1000.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
}

/// `var` parsed, else `default`.
pub fn env_u64(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `var` parsed, else a seed from the clock (odd, never 0).
pub fn env_seed(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

pub fn options() -> Options {
    Options::default()
        .durability(Durability::Sync)
        .segment_size(64 << 10)
        .stats_interval(Some(Duration::from_millis(20)))
}

/// Opens the WAL, waiting (up to 10 s) for a killed writer's lock to go.
pub fn open_with_retry(dir: &Path) -> walspool::Result<Wal<LocalDisk>> {
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

/// Creates the WAL in `dir` with the [`AUDIT`] consumer, so that every record stays on
/// disk to be checked.
pub fn create_with_audit(dir: &Path) {
    let wal = open_with_retry(dir).unwrap();
    wal.consumer(AUDIT).unwrap();
    block_on(wal.close()).unwrap();
}

fn say(out: &Mutex<std::io::Stdout>, line: String) {
    let o = out.lock().unwrap_or_else(|e| e.into_inner());
    let mut o = o.lock();
    // One write per line, flushed at once: a line the parent sees whole was acked.
    let _ = o.write_all(line.as_bytes());
    let _ = o.flush();
}

/// Where the writer children of the tests differ.
#[derive(Debug, Clone, Copy)]
pub struct WriterKind {
    /// The length of the next record of a single appender.
    pub record_len: fn(&mut Rng) -> u64,
    /// Pause after a failed append, batch or read (a disk without power fails every
    /// operation at once).
    pub error_pause: Option<Duration>,
}

/// The writer child: opens the WAL in `dir` on `LocalDisk` with `Durability::Sync`
/// ([`options`]), runs three appenders, one batch appender and the [`SHIPPER`]
/// consumer, which commits every seventh record, and prints what happened (see the
/// module documentation) until it is killed.
pub fn writer_child(dir: &str, kind: WriterKind) -> ! {
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let wal = match open_with_retry(Path::new(dir)) {
        Ok(w) => w,
        Err(e) => {
            say(&out, format!("E open: {e}\n"));
            std::process::exit(3);
        }
    };
    let error_pause = kind.error_pause;
    let pause = move || {
        if let Some(p) = error_pause {
            std::thread::sleep(p);
        }
    };
    let seed = std::process::id() as u64 * 0x9E37_79B9 + 1;
    for writer in 0..4u32 {
        let wal = wal.clone();
        let out = out.clone();
        std::thread::spawn(move || {
            let mut rng = Rng(seed ^ ((writer as u64 + 1) * 0x1234_5678_9abc));
            let mut n = 0u64;
            loop {
                if writer < 3 {
                    n += 1;
                    let r = KRec::new(writer, n, (kind.record_len)(&mut rng) as usize);
                    match block_on(wal.append(&r)) {
                        Ok(seq) => say(&out, format!("A {seq} {:016x}\n", r.digest())),
                        Err(e) => {
                            say(&out, format!("E append: {e}\n"));
                            pause();
                        }
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
                        Err(e) => {
                            say(&out, format!("E batch: {e}\n"));
                            pause();
                        }
                    }
                }
            }
        });
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
                            format!("T {} torn record read by the consumer\n", e.seq),
                        );
                    }
                    if e.seq % 7 == 0 {
                        match consumer.commit(e.seq).await {
                            Ok(()) => say(&out, format!("C {}\n", e.seq)),
                            Err(err) => say(&out, format!("E commit: {err}\n")),
                        }
                    }
                }
                Err(err) => {
                    say(&out, format!("E read: {err}\n"));
                    pause();
                }
            }
        }
    });
    // The stream ended (only after an error); the appenders run forever. Wait for the
    // kill.
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Starts the writer child (test `test` of this binary with `child_env` = `dir`) and a
/// thread collecting its output: only whole lines count (a line cut by the kill was not
/// fully printed, so its ack is not counted — the record may still be on disk). Each
/// line comes with the moment it was read.
pub fn spawn_writer(
    test: &str,
    child_env: &str,
    dir: &Path,
) -> (Child, JoinHandle<Vec<(Instant, String)>>) {
    let mut child = self_command(test)
        .env(child_env, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut lines = Vec::new();
        loop {
            let mut buf = Vec::new();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) if buf.ends_with(b"\n") => lines.push((
                    Instant::now(),
                    String::from_utf8_lossy(&buf).trim_end().to_string(),
                )),
                Ok(_) => break,
            }
        }
        lines
    });
    (child, lines)
}

/// What the parent knows from the children's output and its own checks.
#[derive(Debug, Default)]
pub struct Ledger {
    /// seq -> digest of every acknowledged record.
    pub acked: BTreeMap<u64, u64>,
    /// Highest commit the child reported.
    pub committed: u64,
    /// Highest checkpoint the parent has seen.
    pub checkpoint_seen: u64,
    pub records_checked: u64,
}

impl Ledger {
    /// Takes in a child's output; returns the number of acks. `T` lines fail the test;
    /// `E` lines go to `on_error` with the moment they were read.
    pub fn apply_lines(
        &mut self,
        lines: &[(Instant, String)],
        round: u64,
        mut on_error: impl FnMut(Instant, &str),
    ) -> u64 {
        let mut acks = 0;
        for (at, l) in lines {
            let mut it = l.split_whitespace();
            match it.next() {
                Some("A") => {
                    let seq: u64 = it.next().unwrap().parse().unwrap();
                    let d = u64::from_str_radix(it.next().unwrap(), 16).unwrap();
                    if let Some(old) = self.acked.insert(seq, d) {
                        panic!("round {round}: sequence number {seq} acknowledged twice ({old:016x}, then {d:016x})");
                    }
                    acks += 1;
                }
                Some("C") => {
                    let seq: u64 = it.next().unwrap().parse().unwrap();
                    self.committed = self.committed.max(seq);
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
                Some("T") => panic!("round {round}: the writer reported: {l}"),
                Some("E") => on_error(*at, l),
                _ => {} // the test harness's own lines
            }
        }
        acks
    }

    /// Checks the reopened WAL against the ledger: the [`SHIPPER`] checkpoint is at
    /// least the last commit printed, never goes backwards, never points past the log,
    /// and the consumer resumes right after it; every acknowledged record is there with
    /// its digest; records are whole and contiguous; nothing was deleted. Reads every
    /// record when `full`, else the last 3000. `files` adds to the messages of lost
    /// data. Returns the end of the log.
    pub fn check_log(
        &mut self,
        wal: &Wal<LocalDisk>,
        round: u64,
        full: bool,
        files: &dyn Fn() -> String,
    ) -> u64 {
        let end = wal.durable_seq();
        let shipper = wal.consumer(SHIPPER).unwrap();
        let c = shipper.committed();
        assert!(
            c >= self.committed,
            "round {round}: checkpoint {c} is behind the last acknowledged commit {}{}",
            self.committed,
            files()
        );
        assert!(
            c >= self.checkpoint_seen,
            "round {round}: checkpoint went backwards: {} -> {c}",
            self.checkpoint_seen
        );
        assert!(
            c <= end,
            "round {round}: checkpoint {c} past the end of the log {end}"
        );
        self.checkpoint_seen = c;
        if let Some((&last, _)) = self.acked.iter().next_back() {
            assert!(
                last <= end,
                "round {round}: acknowledged record {last} lost: the log ends at {end}{}",
                files()
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
                let e =
                    item.unwrap_or_else(|e| panic!("round {round}: reading record {expect}: {e}"));
                assert_eq!(
                    e.seq, expect,
                    "round {round}: sequence numbers not contiguous"
                );
                expect += 1;
                assert!(e.record.intact(), "round {round}: record {} is torn", e.seq);
                if let Some(d) = self.acked.get(&e.seq) {
                    assert_eq!(
                        *d,
                        e.record.digest(),
                        "round {round}: record {} differs from what was acknowledged",
                        e.seq
                    );
                }
                self.records_checked += 1;
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
        end
    }
}
