//! `walspool demo`: a small embedded service. It appends JSON events at a rate to a
//! WAL on local disk, ships them with the real [`Shipper`] to a sink that fails now and
//! then (backoff, circuit breaker), archives sealed segments with the real [`Archiver`]
//! to a local `file://` store, and (unless `--headless`) opens `top` on it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use walspool_wal::error::display_chain;

use futures::executor::block_on;
use walspool_backends::archive::{ArchiveStore, Archiver, ArchiverOptions};
use walspool_backends::LocalDisk;
use walspool_wal::shipper::{
    Backoff, Batch, Breaker, FnSink, Shipper, ShipperThread, Sink, SinkError,
};
use walspool_wal::{Durability, Error, Options, Wal, WhenFull};

use crate::fmt;

/// How the demo's sink behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SinkMode {
    /// Fails `--fail-percent` of deliveries.
    Flaky,
    /// Never fails.
    Ok,
    /// Never answers: nothing is ever committed (use with `--max-bytes` and
    /// `--drop-oldest` to force drops).
    Stalled,
}

/// Options of `walspool demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The WAL directory.
    pub dir: PathBuf,
    /// Records per second.
    pub rate: u64,
    /// Print status lines instead of the dashboard.
    pub headless: bool,
    /// Stop after this long (headless; the dashboard runs until `q`).
    pub run_for: Option<Duration>,
    /// Segment size.
    pub segment_size: u64,
    /// Bound on the WAL's bytes.
    pub max_bytes: Option<u64>,
    /// Drop the oldest segments at `max_bytes` instead of blocking.
    pub drop_oldest: bool,
    /// The sink's behaviour.
    pub sink: SinkMode,
    /// Share of failed deliveries for the flaky sink, percent.
    pub fail_percent: u32,
    /// Where sealed segments are archived (`None`: no archival).
    pub archive_dir: Option<PathBuf>,
    /// Dashboard refresh.
    pub refresh: Duration,
}

/// A tiny deterministic PRNG (xorshift64*), so the demo needs no dependency for dice.
#[derive(Debug)]
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn percent(&mut self) -> u32 {
        (self.next() % 100) as u32
    }
}

const ACTORS: [&str; 6] = ["alice", "bob", "carol", "dave", "erin", "frank"];
const ACTIONS: [&str; 5] = ["login", "logout", "read", "update", "delete"];

fn event(n: u64, dice: &mut Dice) -> String {
    let actor = ACTORS[(dice.next() % ACTORS.len() as u64) as usize];
    let action = ACTIONS[(dice.next() % ACTIONS.len() as u64) as usize];
    format!(
        r#"{{"n":{n},"actor":"{actor}","action":"{action}","object":"doc-{}","ok":{}}}"#,
        dice.next() % 1000,
        dice.percent() < 97
    )
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

fn appender(wal: Wal<LocalDisk>, rate: u64, stop: Arc<AtomicBool>) {
    let start = Instant::now();
    let mut sent = 0u64;
    let mut dice = Dice(0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id()));
    let tick = Duration::from_millis(20);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(tick);
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        let n = due.saturating_sub(sent).min(2000);
        if n == 0 {
            continue;
        }
        let batch: Vec<String> = (0..n).map(|i| event(sent + i + 1, &mut dice)).collect();
        match block_on(wal.append_batch(&batch)) {
            Ok(_) => sent += n,
            Err(Error::Closed) => return,
            Err(e) => {
                eprintln!("demo: append failed: {}", display_chain(&e));
                sleep_unless(&stop, Duration::from_secs(1));
                sent = due; // skip what could not be written
            }
        }
    }
}

/// The demo's sink: fails `fail_percent` of deliveries (a transient error the shipper
/// retries with backoff; enough of them in a row open its circuit breaker).
fn flaky_sink(fail_percent: u32) -> impl Sink<String> + 'static {
    let mut dice = Dice(0xD1CE_5EED ^ (u64::from(std::process::id()) << 16));
    FnSink::new(move |_batch: &Batch<String>| {
        let fail = dice.percent() < fail_percent;
        async move {
            if fail {
                Err(SinkError::transient("demo sink: simulated outage"))
            } else {
                Ok(())
            }
        }
    })
}

/// Starts the real [`Shipper`] on its own thread (none for a stalled sink: its consumer
/// exists but nothing is ever delivered).
fn start_shipper(
    wal: &Wal<LocalDisk>,
    mode: SinkMode,
    fail_percent: u32,
) -> Result<Option<ShipperThread>, String> {
    let consumer = wal.consumer("demo-sink").map_err(|e| display_chain(&e))?;
    let fail_percent = match mode {
        SinkMode::Stalled => return Ok(None),
        SinkMode::Ok => 0,
        SinkMode::Flaky => fail_percent,
    };
    let shipper = Shipper::builder(consumer, flaky_sink(fail_percent))
        .batch_max(500)
        .linger(Duration::from_millis(100))
        .backoff(Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            ..Backoff::default()
        })
        .breaker(Breaker {
            failure_threshold: 3,
            open_for: Duration::from_secs(3),
        })
        .build()
        .expect("valid shipper configuration");
    shipper
        .spawn_on_thread()
        .map(Some)
        .map_err(|e| display_chain(&e))
}

/// A second consumer, `warehouse`, that loads records in bulk and commits what was
/// durable `lag` ago: it keeps a few sealed segments on disk and shows a lagging row in
/// the consumers table.
fn lagging_reader(wal: Wal<LocalDisk>, lag: Duration, stop: Arc<AtomicBool>) {
    let consumer = match wal.consumer("warehouse") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("demo: consumer: {}", display_chain(&e));
            return;
        }
    };
    let mut seen: std::collections::VecDeque<(Instant, u64)> = std::collections::VecDeque::new();
    while !stop.load(Ordering::Relaxed) {
        seen.push_back((Instant::now(), wal.durable_seq()));
        let mut target = None;
        while seen.front().is_some_and(|(t, _)| t.elapsed() >= lag) {
            target = seen.pop_front().map(|x| x.1);
        }
        if let Some(seq) = target.filter(|&s| s > consumer.committed()) {
            match block_on(consumer.commit(seq)) {
                Ok(()) | Err(Error::Consumer(_)) => {}
                Err(Error::Closed) => return,
                Err(e) => eprintln!("demo: warehouse commit: {}", display_chain(&e)),
            }
        }
        sleep_unless(&stop, Duration::from_secs(1));
    }
}

/// Starts the real [`Archiver`] on `file://{archive}`.
fn start_archiver(wal: &Wal<LocalDisk>, archive: &Path) -> Result<Archiver<LocalDisk>, String> {
    std::fs::create_dir_all(archive).map_err(|e| format!("create {}: {e}", archive.display()))?;
    let abs = archive
        .canonicalize()
        .map_err(|e| format!("{}: {e}", archive.display()))?;
    let store =
        ArchiveStore::open(&format!("file://{}", abs.display())).map_err(|e| display_chain(&e))?;
    Archiver::start(wal, store, ArchiverOptions::default()).map_err(|e| display_chain(&e))
}

/// One status line for `--headless`.
pub fn status_line(wal: &Wal<LocalDisk>, started: Instant) -> String {
    let m = wal.metrics();
    format!(
        "demo t={:.1}s last_seq={} file={} offset={} backlog={} ({}) ship_errors={} dropped={} breaker={} archive_lag={} fsync_p99={}",
        started.elapsed().as_secs_f64(),
        m.last_seq,
        fmt::base_name(&m.current_file),
        m.current_offset,
        m.backlog_records,
        fmt::bytes(m.backlog_bytes),
        m.ship_errors_total,
        m.dropped_records_total,
        if m.breaker_state.is_empty() { "-" } else { &m.breaker_state },
        m.archive_lag_segments,
        fmt::micros_as_ms(m.fsync_p99_us),
    )
}

/// Runs the demo; returns the exit code.
pub fn run(o: DemoOptions) -> Result<i32, String> {
    let mut opts = Options::default()
        .durability(Durability::Sync)
        .segment_size(o.segment_size)
        .stats_interval(Some(Duration::from_millis(250)));
    if let Some(max) = o.max_bytes {
        opts = opts.max_bytes(max).when_full(if o.drop_oldest {
            WhenFull::DropOldest
        } else {
            WhenFull::Block
        });
    }
    let storage = LocalDisk::open(&o.dir).map_err(|e| display_chain(&e))?;
    let wal = Wal::open(storage, opts).map_err(|e| display_chain(&e))?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| e.to_string())?;
    }
    let mut threads = Vec::new();
    {
        let (w, s) = (wal.clone(), stop.clone());
        let rate = o.rate;
        threads.push(std::thread::spawn(move || appender(w, rate, s)));
    }
    let shipper = start_shipper(&wal, o.sink, o.fail_percent)?;
    {
        let (w, s) = (wal.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            lagging_reader(w, Duration::from_secs(4), s)
        }));
    }
    let archiver = match &o.archive_dir {
        Some(a) => Some(start_archiver(&wal, a)?),
        None => None,
    };
    let started = Instant::now();
    let printed = AtomicU64::new(0);
    let code = if o.headless {
        println!(
            "demo: writing {} records/s to {} (wal {}), sink {:?}, archive {}",
            o.rate,
            o.dir.display(),
            wal.id(),
            o.sink,
            o.archive_dir
                .as_ref()
                .map_or("off".into(), |a| a.display().to_string())
        );
        while !stop.load(Ordering::Relaxed) && o.run_for.is_none_or(|d| started.elapsed() < d) {
            std::thread::sleep(Duration::from_millis(50));
            let secs = started.elapsed().as_secs();
            if secs > printed.load(Ordering::Relaxed) {
                printed.store(secs, Ordering::Relaxed);
                println!("{}", status_line(&wal, started));
            }
        }
        0
    } else {
        let r = crate::tui::run_top(crate::tui::TopOptions {
            roots: vec![o.dir.clone()],
            depth: crate::collect::DEFAULT_DEPTH,
            refresh: o.refresh,
            rescan: Duration::from_secs(2),
            thresholds: Default::default(),
        });
        if let Err(e) = r {
            eprintln!("walspool demo: terminal: {e}");
            1
        } else {
            0
        }
    };
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    if let Some(s) = shipper {
        if let Err(e) = s.shutdown() {
            eprintln!("demo: shipper: {}", display_chain(&e));
        }
    }
    if let Some(a) = archiver {
        block_on(a.shutdown());
    }
    block_on(wal.close()).map_err(|e| display_chain(&e))?;
    if o.headless {
        println!("{}", status_line(&wal, started));
        println!("demo: closed {} cleanly", o.dir.display());
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_json() {
        let mut d = Dice(1);
        let e = event(7, &mut d);
        let v: serde_json::Value = serde_json::from_str(&e).unwrap();
        assert_eq!(v["n"], 7);
    }
}
