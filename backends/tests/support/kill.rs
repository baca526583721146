//! Test support for the kill-and-restart tests, shared by
//! backends/tests/{file_sink,postgres}.rs and (through tests/common/mod.rs, included
//! with `#[path]`) the facade's tests/{crash_kill,power_loss,ship_kill,ship_kill_sinks}.rs:
//! re-executing the test binary as a child, a seeded WAL, a consumer's checkpoint, and
//! the two waits of a kill test (kill the child once it got far enough; let the last
//! one finish).

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use futures::executor::block_on;
use serde::Serialize;
use walspool_backends::LocalDisk;
use walspool_wal::{Durability, Options, Wal};

/// How long a child may take to get somewhere (or to finish).
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);

/// A command running test `test` of this test binary alone (`--exact`), with its output
/// not captured. The caller adds the environment that selects the child mode.
pub fn self_command(test: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", test, "--nocapture", "--test-threads=1"]);
    c
}

/// Creates the WAL in `dir` (`Durability::Sync`, 256 KiB segments) holding `records`
/// (appended in batches of 5000) and consumer `consumer` at 0; returns its WAL id.
pub fn seed_wal<T: Serialize>(dir: &Path, records: &[T], consumer: &str) -> String {
    let wal = Wal::open(
        LocalDisk::open(dir).unwrap(),
        Options::default()
            .durability(Durability::Sync)
            .segment_size(256 << 10),
    )
    .unwrap();
    block_on(async {
        for chunk in records.chunks(5000) {
            wal.append_batch(chunk).await.unwrap();
        }
        wal.consumer(consumer).unwrap();
        wal.close().await.unwrap();
    });
    wal.id().to_string()
}

/// The checkpoint of consumer `consumer` of the WAL in `dir` (0 if it has none).
pub fn committed(dir: &Path, options: Options, consumer: &str) -> u64 {
    let wal = Wal::open(LocalDisk::open(dir).unwrap(), options).unwrap();
    let c = wal
        .consumers()
        .into_iter()
        .find(|(n, _)| n == consumer)
        .map_or(0, |(_, s)| s);
    block_on(wal.close()).unwrap();
    c
}

/// Checks `reached` every `poll` and SIGKILLs `child` (and reaps it) once it holds.
/// Fails if the child exits first, or if `reached` does not hold within two minutes
/// (with the message `stalled` gives).
pub fn kill_when(
    mut child: Child,
    poll: Duration,
    mut reached: impl FnMut() -> bool,
    stalled: impl Fn() -> String,
) {
    let deadline = Instant::now() + CHILD_TIMEOUT;
    while !reached() {
        assert!(Instant::now() < deadline, "{}", stalled());
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child exited early"
        );
        std::thread::sleep(poll);
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// Waits (two minutes at most) for the last child to finish, and checks it succeeded.
pub fn finish(mut child: Child) {
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the last child did not finish");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "the last child failed: {status}");
}
