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

mod common;

use std::time::{Duration, Instant};

use common::{
    create_with_audit, env_seed, env_u64, open_with_retry, spawn_writer, writer_child, Ledger, Rng,
    WriterKind,
};
use futures::executor::block_on;

const CHILD_ENV: &str = "WALSPOOL_KILL_CHILD_DIR";
const TEST_NAME: &str = "sigkill_writer_at_random_moments_loses_nothing_acked";

fn child(dir: &str) -> ! {
    writer_child(
        dir,
        WriterKind {
            record_len: |rng| rng.range(0, 300),
            error_pause: None,
        },
    )
}

fn parent() {
    let kills = env_u64("WALSPOOL_KILLS", 200);
    let seed = env_seed("WALSPOOL_KILL_SEED");
    println!("crash_kill: {kills} kills, WALSPOOL_KILL_SEED={seed}");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    create_with_audit(&dir);
    let started = Instant::now();
    let mut ledger = Ledger::default();
    let mut kills_with_acks = 0u64;
    for round in 1..=kills {
        let (mut child, lines) = spawn_writer(TEST_NAME, CHILD_ENV, &dir);
        std::thread::sleep(Duration::from_millis(rng.range(1, 200)));
        child.kill().unwrap(); // SIGKILL on Unix
        let status = child.wait().unwrap();
        let lines = lines.join().unwrap();
        let acks = ledger.apply_lines(&lines, round, |_, l| {
            panic!("round {round}: the writer reported: {l}")
        });
        assert!(
            status.code().is_none_or(|c| c == 0),
            "round {round}: the writer exited on its own with {status}: {lines:?}"
        );
        kills_with_acks += (acks > 0) as u64;
        let wal =
            open_with_retry(&dir).unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        ledger.check_log(&wal, round, round % 25 == 0 || round == kills, &String::new);
        block_on(wal.close()).unwrap();
    }
    let on_disk = {
        let wal = open_with_retry(&dir).unwrap();
        let n = wal.durable_seq();
        block_on(wal.close()).unwrap();
        n
    };
    println!(
        "KILL-SUMMARY kills={} kills_with_acks={} acked={} records_on_disk={} records_checked={} checkpoint={} lost_acked=0 seconds={:.1}",
        kills,
        kills_with_acks,
        ledger.acked.len(),
        on_disk,
        ledger.records_checked,
        ledger.checkpoint_seen,
        started.elapsed().as_secs_f64()
    );
    assert!(
        kills_with_acks * 4 >= kills,
        "the writer acknowledged records in only {} of {} runs: the test is not exercising much",
        kills_with_acks,
        kills
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
