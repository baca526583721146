//! The interface every benchmarked WAL implements. A method returning `None` means
//! the implementation has no such mode; the row is then left out.

use std::path::Path;
use std::time::Duration;

use crate::common::{Cfg, Payloads, Res, Sample};

/// What a WAL under test offers the harness.
pub trait Subject: Sync {
    /// Name in the table.
    fn name(&self) -> &'static str;

    /// The case letters this implementation runs (default all).
    fn cases(&self) -> &'static str {
        "abcdefg"
    }

    /// (a) durable, one writer, each append awaited before the next; per-op latency.
    fn durable_serial(&self, cfg: &Cfg, p: &Payloads) -> Option<Res<Sample>>;

    /// Labels of the ways `durable_concurrent` can run writers (e.g. tasks/threads).
    fn concurrent_modes(&self) -> &'static [&'static str] {
        &[""]
    }

    /// (b) durable, `n` concurrent writers each awaiting its own append.
    fn durable_concurrent(
        &self,
        cfg: &Cfg,
        p: &Payloads,
        n: usize,
        mode: usize,
    ) -> Option<Res<Sample>>;

    /// (c) durable batches of [`crate::common::BATCH`] records; latency per batch.
    fn durable_batch(&self, cfg: &Cfg, p: &Payloads) -> Option<Res<Sample>>;

    /// (d) no fsync on the append path, one producer.
    fn buffered_serial(&self, cfg: &Cfg, p: &Payloads) -> Option<Res<Sample>>;

    /// (e) appends `bytes` of payload to the (possibly existing) WAL in `dir`, then
    /// closes it. When `fill_tail` is set the implementation should leave its tail
    /// segment nearly full.
    fn build_history(
        &self,
        cfg: &Cfg,
        p: &Payloads,
        dir: &Path,
        bytes: u64,
        fill_tail: bool,
    ) -> Res<()>;

    /// (e) opens (recovers) the WAL in `dir`, returns the open time, then closes it.
    fn open_time(&self, cfg: &Cfg, dir: &Path) -> Res<Duration>;

    /// What "open" does for this implementation (footnote in the table).
    fn open_note(&self) -> &'static str;

    /// Extra facts about a built history (e.g. how full the tail segment is).
    fn history_note(&self, _dir: &Path) -> Option<String> {
        None
    }

    /// (g) child process: write a backlog of `bytes` into a fresh WAL at `dir`.
    fn rss_build(&self, cfg: &Cfg, p: &Payloads, dir: &Path, bytes: u64) -> Res<u64>;

    /// (g) child process: open the WAL at `dir` and read every record; returns the
    /// record count, or `None` if the implementation cannot scan its log.
    fn rss_read(&self, cfg: &Cfg, dir: &Path) -> Option<Res<u64>>;
}
