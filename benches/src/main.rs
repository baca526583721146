//! walspool benchmark harness (issue 8).
//!
//! `cargo run --release -p walspool-bench [-- --quick] [--only a,b] [--impls walspool,okaywal]`
//!
//! Runs every case in one process and prints one table. See BENCHMARKS.md.
//!
//! `WALSPOOL_BENCH_ZERO_AHEAD=<bytes>` overrides walspool's `Options::zero_ahead_bytes`
//! (`0` turns zeroing ahead off) for before/after comparisons.

mod baselines;
mod common;
mod peers;
mod subject;
mod walspool_cases;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;

use common::{
    evict_cache, fill_ratios, fmt_bytes, fmt_dur, median_d, note, print_table, row_from, tmpdir,
    Cfg, Payloads, Res, Row, Sample, PAYLOAD,
};
use subject::Subject;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// walspool benchmark: walspool vs okaywal, raft-engine, nano-wal and raw baselines.
#[derive(Parser, Debug)]
#[command(name = "walspool-bench")]
struct Args {
    /// Short run: 1 repetition of 0.5 s per case, small histories and backlogs.
    #[arg(long)]
    quick: bool,
    /// Only these cases (comma-separated letters a-g); baselines of a-d and f run with
    /// their case.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Only these implementations: walspool, okaywal, raft-engine, nano-wal.
    #[arg(long, value_delimiter = ',')]
    impls: Vec<String>,
    /// Parent directory of the temp dirs (default: the system temp dir, /tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Case (e) with issue 8's full history sizes 1, 4 and 16 GiB (default 256 MiB,
    /// 1 GiB, 2 GiB; quick 32, 128, 256 MiB).
    #[arg(long)]
    recovery_sizes: bool,
    /// Backlog size for case (g) in MiB (default 4096, quick 256).
    #[arg(long)]
    rss_mib: Option<u64>,
    /// Repetitions per measured case (default 3, quick 1); the median is reported.
    #[arg(long)]
    reps: Option<usize>,
    /// Seconds per repetition (default 2, quick 0.5).
    #[arg(long)]
    secs: Option<f64>,
    /// Internal: run one phase of case (g) in this process (`build` or `read`).
    #[arg(long, hide = true)]
    child: Option<String>,
    /// Internal: implementation for --child.
    #[arg(long, hide = true)]
    child_impl: Option<String>,
    /// Internal: WAL directory for --child.
    #[arg(long, hide = true)]
    child_dir: Option<PathBuf>,
    /// Internal: backlog bytes for --child build.
    #[arg(long, hide = true)]
    child_bytes: Option<u64>,
}

fn all_subjects() -> Vec<Box<dyn Subject>> {
    vec![
        Box::new(walspool_cases::Walspool { hmac: false }),
        Box::new(walspool_cases::Walspool { hmac: true }),
        Box::new(peers::OkayWal),
        Box::new(peers::RaftEngine),
        Box::new(peers::NanoWal),
    ]
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("walspool-bench: error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Res<()> {
    let quick = args.quick;
    let cfg = Cfg {
        quick,
        base_dir: args.dir.clone().unwrap_or_else(std::env::temp_dir),
        reps: args.reps.unwrap_or(if quick { 1 } else { 3 }).max(1),
        run_for: Duration::from_secs_f64(args.secs.unwrap_or(if quick { 0.5 } else { 2.0 })),
        max_sync_records: if quick { 5_000 } else { 20_000 },
        recovery_sizes: if args.recovery_sizes {
            vec![GIB, 4 * GIB, 16 * GIB]
        } else if quick {
            vec![32 * MIB, 128 * MIB, 256 * MIB]
        } else {
            vec![256 * MIB, GIB, 2 * GIB]
        },
        scan_bytes: if quick { 128 * MIB } else { GIB },
        rss_bytes: args
            .rss_mib
            .map(|m| m * MIB)
            .unwrap_or(if quick { 256 * MIB } else { 4 * GIB }),
        segment_size: 64 * MIB,
    };
    std::fs::create_dir_all(&cfg.base_dir)?;
    let subjects: Vec<Box<dyn Subject>> = all_subjects()
        .into_iter()
        .filter(|s| args.impls.is_empty() || args.impls.iter().any(|i| i == s.name()))
        .collect();
    let p = Payloads::new();

    if let Some(phase) = &args.child {
        return child(&cfg, &p, &subjects, phase, &args);
    }

    let want =
        |c: &str| args.only.is_empty() || args.only.iter().any(|o| o.eq_ignore_ascii_case(c));
    let t0 = Instant::now();
    let load_start = loadavg();
    note(format!(
        "{} reps x {:.1}s per case, temp dirs under {}",
        cfg.reps,
        cfg.run_for.as_secs_f64(),
        cfg.base_dir.display()
    ));
    let mut rows: Vec<Row> = Vec::new();
    let mut footnotes: Vec<String> = Vec::new();
    footnotes.push("Every repetition (and every child of case g) starts right after a global sync(), so that no case pays for the write-back of bytes an earlier one left dirty.".into());
    footnotes.push("Baselines: raw = pwrite+fdatasync of each record over a preallocated (zero-filled, fsynced) 64 MiB file (\"appending\": to a fresh file instead); group commit and BufWriter append to a fresh file, their \"prealloc\" twins overwrite a preallocated one (fdatasync then need not journal a size change).".into());

    if want("a") {
        let case = "a durable 1 writer";
        push(
            &mut rows,
            measure(&cfg, "base/raw", case, "raw pwrite+fdatasync", true, || {
                Some(baselines::raw_fsync(&cfg, &p, true))
            }),
        );
        push(
            &mut rows,
            measure(
                &cfg,
                "base/rawapp",
                case,
                "raw pwrite+fdatasync, appending",
                true,
                || Some(baselines::raw_fsync(&cfg, &p, false)),
            ),
        );
        for s in subjects.iter().filter(|s| s.cases().contains('a')) {
            if let Some(mut r) = measure(
                &cfg,
                &format!("a/{}", s.name()),
                case,
                s.name(),
                true,
                || s.durable_serial(&cfg, &p),
            ) {
                r.baselines = vec!["base/raw".into(), "base/rawapp".into()];
                r.cmp_p50 = true;
                rows.push(r);
            }
        }
    }
    if want("b") {
        for n in [16usize, 64] {
            let case = format!("b durable {n} writers");
            let bk = format!("base/gc{n}");
            push(
                &mut rows,
                measure(
                    &cfg,
                    &bk,
                    &case,
                    "group commit (mutex+condvar)",
                    true,
                    || Some(baselines::group_commit(&cfg, &p, n, false)),
                ),
            );
            push(
                &mut rows,
                measure(
                    &cfg,
                    &format!("{bk}p"),
                    &case,
                    "group commit, prealloc",
                    true,
                    || Some(baselines::group_commit(&cfg, &p, n, true)),
                ),
            );
            for s in subjects.iter().filter(|s| s.cases().contains('b')) {
                for (m, mode) in s.concurrent_modes().iter().enumerate() {
                    let imp = if mode.is_empty() {
                        s.name().to_string()
                    } else {
                        format!("{} ({mode})", s.name())
                    };
                    let key = format!("b{n}/{imp}");
                    if let Some(mut r) = measure(&cfg, &key, &case, &imp, true, || {
                        s.durable_concurrent(&cfg, &p, n, m)
                    }) {
                        r.baselines = vec![bk.clone()];
                        if s.name() == "walspool" {
                            r.baselines.push(format!("{bk}p"));
                            r.baselines.push(format!("b{n}/okaywal"));
                            if n == 64 {
                                r.baselines.push(format!("b16/{imp}"));
                            }
                        }
                        rows.push(r);
                    }
                }
            }
        }
        footnotes.push("(b) okaywal, raft-engine, nano-wal and the group-commit baseline use one OS thread per writer; walspool runs both N tokio tasks on a 2-worker runtime (tasks) and N OS threads each block_on-ing its append (threads).".into());
    }
    if want("c") {
        let case = "c durable batch of 1000";
        push(
            &mut rows,
            measure(
                &cfg,
                "base/bw1000",
                case,
                "BufWriter+fdatasync/1000",
                true,
                || Some(baselines::bufwriter_sync_1000(&cfg, &p, false)),
            ),
        );
        push(
            &mut rows,
            measure(
                &cfg,
                "base/bw1000p",
                case,
                "BufWriter+fdatasync/1000, prealloc",
                true,
                || Some(baselines::bufwriter_sync_1000(&cfg, &p, true)),
            ),
        );
        for s in subjects.iter().filter(|s| s.cases().contains('c')) {
            if let Some(mut r) = measure(
                &cfg,
                &format!("c/{}", s.name()),
                case,
                s.name(),
                true,
                || s.durable_batch(&cfg, &p),
            ) {
                r.baselines = vec!["base/bw1000".into()];
                if s.name() == "walspool" {
                    r.baselines.push("base/bw1000p".into());
                }
                rows.push(r);
            }
        }
        footnotes.push("(c) p50/p99 are per 1000-record batch. okaywal: one entry of 1000 chunks per commit; raft-engine: one LogBatch of 1000 entries, write(sync=true); nano-wal: append_batch(durable=true).".into());
    }
    if want("d") {
        let case = "d buffered 1 producer";
        push(
            &mut rows,
            measure(
                &cfg,
                "base/bwnosync",
                case,
                "BufWriter, no sync",
                true,
                || Some(baselines::bufwriter_nosync(&cfg, &p)),
            ),
        );
        for s in subjects.iter().filter(|s| s.cases().contains('d')) {
            if let Some(mut r) = measure(
                &cfg,
                &format!("d/{}", s.name()),
                case,
                s.name(),
                true,
                || s.buffered_serial(&cfg, &p),
            ) {
                r.baselines = vec!["base/bwnosync".into()];
                rows.push(r);
            }
        }
        footnotes.push(format!("(d) latency sampled on 1 op in {}. walspool: Durability::Buffered, one task awaiting append in a loop; raft-engine: write(sync=false) per record; nano-wal: append(durable=false); okaywal has no non-durable commit.", common::SAMPLE_EVERY));
    }
    if want("e") {
        case_e(&cfg, &p, &subjects, &mut rows, &mut footnotes)?;
    }
    if want("f") && subjects.iter().any(|s| s.name() == "walspool") {
        case_f(&cfg, &p, &mut rows, &mut footnotes);
    }
    if want("g") {
        case_g(&cfg, &subjects, &mut rows, &mut footnotes)?;
    }

    fill_ratios(&mut rows);
    common::add_peer_ratios(&mut rows);
    println!();
    println!(
        "walspool-bench: 256-byte random payloads; {} rep(s) x {:.1} s per throughput case (fsync cases stop at {} records/rep); medians reported.",
        cfg.reps,
        cfg.run_for.as_secs_f64(),
        cfg.max_sync_records
    );
    println!();
    print_table(&rows);
    println!();
    for f in &footnotes {
        println!("{f}");
    }
    println!("Ratios: rec/s of the row divided by rec/s of the named row of this run (p50: latency ratio, lower is better).");
    println!(
        "Total wall time: {:.0} s; load average (1/5/15 min) at start {}, at end {}",
        t0.elapsed().as_secs_f64(),
        load_start,
        loadavg()
    );
    Ok(())
}

/// The first three fields of /proc/loadavg (other work on the machine skews fsync and
/// wake-up timings, so the table records it).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn push(rows: &mut Vec<Row>, r: Option<Row>) {
    rows.extend(r);
}

/// Runs `f` `cfg.reps` times and turns the samples into a row (or an error row).
fn measure(
    cfg: &Cfg,
    key: &str,
    case: &str,
    imp: &str,
    with_lat: bool,
    mut f: impl FnMut() -> Option<Res<Sample>>,
) -> Option<Row> {
    let mut samples = Vec::new();
    for rep in 0..cfg.reps {
        // Start every repetition with nothing dirty in the page cache: the write-back of
        // what an earlier case (or impl) left behind would otherwise land on this one.
        nix::unistd::sync();
        let t = Instant::now();
        match f() {
            None => return None,
            Some(Ok(s)) => {
                note(format!(
                    "{case} | {imp} | rep {} | {:.0} rec/s | {:.1}s",
                    rep + 1,
                    s.rate(),
                    t.elapsed().as_secs_f64()
                ));
                samples.push(s);
            }
            Some(Err(e)) => {
                note(format!("{case} | {imp} | FAILED: {e}"));
                return Some(Row {
                    key: key.into(),
                    case: case.into(),
                    imp: imp.into(),
                    extra: format!("FAILED: {e}"),
                    ..Row::default()
                });
            }
        }
    }
    Some(row_from(key, case, imp, &samples, with_lat))
}

/// (e) open/recovery time against history size.
fn case_e(
    cfg: &Cfg,
    p: &Payloads,
    subjects: &[Box<dyn Subject>],
    rows: &mut Vec<Row>,
    foot: &mut Vec<String>,
) -> Res<()> {
    let opens = cfg.reps;
    for s in subjects.iter().filter(|s| s.cases().contains('e')) {
        let dir = tmpdir(cfg, &format!("hist-{}", s.name()))?;
        let mut written = 0u64;
        let mut first: Option<Duration> = None;
        for &size in &cfg.recovery_sizes {
            let t = Instant::now();
            if let Err(e) = s.build_history(cfg, p, dir.path(), size - written, true) {
                note(format!("e | {} | build FAILED: {e}", s.name()));
                rows.push(Row {
                    case: format!("e open, {} history", fmt_bytes(size)),
                    imp: s.name().into(),
                    extra: format!("FAILED: {e}"),
                    ..Row::default()
                });
                break;
            }
            written = size;
            let disk = common::dir_bytes(dir.path());
            note(format!(
                "e | {} | history {} built in {:.1}s",
                s.name(),
                fmt_bytes(disk),
                t.elapsed().as_secs_f64()
            ));
            let mut cold = Vec::new();
            let mut failed = None;
            for _ in 0..opens {
                let r = evict_cache(dir.path()).and_then(|_| s.open_time(cfg, dir.path()));
                match r {
                    Ok(d) => cold.push(d),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            let warm = if failed.is_none() {
                s.open_time(cfg, dir.path()).ok()
            } else {
                None
            };
            let mut row = Row {
                key: format!("e/{}/{}", s.name(), size),
                case: format!("e open, {} history", fmt_bytes(size)),
                imp: s.name().into(),
                ..Row::default()
            };
            if let Some(e) = failed {
                row.extra = format!("FAILED: {e}");
            } else {
                let c = median_d(&cold);
                let f0 = *first.get_or_insert(c);
                row.p50 = Some(c);
                row.vs = format!(
                    "{:.2}x open at {}",
                    c.as_secs_f64() / f0.as_secs_f64(),
                    fmt_bytes(cfg.recovery_sizes[0])
                );
                row.extra = format!(
                    "cold open {} (warm {}), on disk {}",
                    fmt_dur(c),
                    warm.map_or("-".into(), fmt_dur),
                    fmt_bytes(disk)
                );
                if let Some(h) = s.history_note(dir.path()) {
                    row.extra = format!("{}, {h}", row.extra);
                }
                note(format!("e | {} | {} | {}", s.name(), row.case, row.extra));
            }
            rows.push(row);
        }
        foot.push(format!("(e) {}: {}.", s.name(), s.open_note()));
    }
    let scaled = if cfg.recovery_sizes[2] < 16 * GIB {
        "SCALED DOWN from issue 8's 1/4/16 GiB (use --recovery-sizes for the full sizes); "
    } else {
        ""
    };
    foot.push(format!(
        "(e) {scaled}p50 column = median of {opens} cold open(s) (files fsynced, then evicted with posix_fadvise(DONTNEED)); history is the payload size; walspool's history is sealed segments plus a tail segment filled to 98% after a roll."
    ));
    Ok(())
}

/// (f) reader scan and drain, walspool only.
fn case_f(cfg: &Cfg, p: &Payloads, rows: &mut Vec<Row>, foot: &mut Vec<String>) {
    let case = format!("f read {} history", fmt_bytes(cfg.scan_bytes));
    match walspool_cases::scan_and_drain(cfg, p) {
        Err(e) => {
            note(format!("f | FAILED: {e}"));
            rows.push(Row {
                case,
                imp: "walspool".into(),
                extra: format!("FAILED: {e}"),
                ..Row::default()
            });
        }
        Ok(r) => {
            let mk = |key: &str, imp: &str, d: Duration, base: bool| {
                let secs = d.as_secs_f64();
                Row {
                    key: key.into(),
                    case: case.clone(),
                    imp: imp.into(),
                    rec_s: Some(r.records as f64 / secs),
                    mb_s: Some(r.payload_bytes as f64 / secs / 1e6),
                    extra: format!(
                        "{:.2} GB/s of on-disk bytes ({})",
                        r.disk_bytes as f64 / secs / 1e9,
                        fmt_bytes(r.disk_bytes)
                    ),
                    baselines: if base {
                        vec![]
                    } else {
                        vec!["f/raw".into(), "f/rawcrc".into()]
                    },
                    ..Row::default()
                }
            };
            rows.push(mk(
                "f/raw",
                "raw sequential read (1 MiB bufs)",
                r.raw_read,
                true,
            ));
            let mut c = mk(
                "f/rawcrc",
                "raw read + crc32 of every byte",
                r.raw_read_crc,
                false,
            );
            c.baselines = vec!["f/raw".into()];
            rows.push(c);
            rows.push(mk(
                "f/scan",
                "walspool scan (raw frames)",
                r.scan_raw,
                false,
            ));
            rows.push(mk(
                "f/stream",
                "walspool read_from stream (typed)",
                r.stream,
                false,
            ));
            let mut d = mk("f/drain", "walspool shipper -> no-op sink", r.drain, false);
            d.extra = format!(
                "{}; Consumer::commit p50 {}",
                d.extra,
                fmt_dur(r.commit_p50)
            );
            rows.push(d);
            foot.push("(f) warm page cache, walspool only. scan = read_range + try_next_raw (CRC-checked frames, not decoded); stream = read_from::<ByteBuf>(1) live stream, decoded and counted; shipper = Shipper with default batching (2000 records, 5 ms linger, checkpoint committed per batch) into a sink that only counts, timed until the checkpoint reaches the last record. MB/s counts payload bytes.".into());
        }
    }
}

/// (g) peak RSS in child processes building and then reading a backlog.
fn case_g(
    cfg: &Cfg,
    subjects: &[Box<dyn Subject>],
    rows: &mut Vec<Row>,
    foot: &mut Vec<String>,
) -> Res<()> {
    let exe = std::env::current_exe()?;
    let mut baseline_hwm = None;
    for s in subjects.iter().filter(|s| s.cases().contains('g')) {
        let dir = tmpdir(cfg, &format!("rss-{}", s.name()))?;
        let wal_dir = dir.path().join("wal");
        for phase in ["build", "read"] {
            let case = format!("g RSS {} {}", phase, fmt_bytes(cfg.rss_bytes));
            let mut cmd = Command::new(&exe);
            cmd.args(["--child", phase, "--child-impl", s.name()])
                .arg("--child-dir")
                .arg(&wal_dir)
                .args(["--child-bytes", &cfg.rss_bytes.to_string()]);
            if cfg.quick {
                cmd.arg("--quick");
            }
            let row = match run_child(cmd) {
                Err(e) => Row {
                    case,
                    imp: s.name().into(),
                    extra: format!("FAILED: {e}"),
                    ..Row::default()
                },
                Ok(None) => continue,
                Ok(Some(c)) => {
                    baseline_hwm.get_or_insert(c.idle_kib);
                    Row {
                        key: format!("g/{}/{}", s.name(), phase),
                        case,
                        imp: s.name().into(),
                        rec_s: Some(c.records as f64 / c.secs),
                        mb_s: Some(c.records as f64 * PAYLOAD as f64 / c.secs / 1e6),
                        extra: format!(
                            "peak RSS (VmHWM) {:.1} MiB; {} records",
                            c.hwm_kib as f64 / 1024.0,
                            c.records
                        ),
                        ..Row::default()
                    }
                }
            };
            note(format!("g | {} | {} | {}", s.name(), row.case, row.extra));
            rows.push(row);
        }
    }
    foot.push(format!(
        "(g) each phase runs in a fresh child process of this binary; VmHWM from /proc/self/status at the end (the child's VmHWM before touching a WAL was {:.1} MiB). build: walspool one producer awaiting Durability::Buffered appends; okaywal entries of 4096 chunks; raft-engine batches of 4096, sync=false; nano-wal append_batch of 4096. read: open + read every record (nano-wal has no scan API).",
        baseline_hwm.unwrap_or(0) as f64 / 1024.0
    ));
    if cfg.rss_bytes < 4 * GIB {
        foot.push("(g) backlog SCALED DOWN from 4 GiB (--rss-mib 4096 for the full size).".into());
    }
    Ok(())
}

struct ChildOut {
    records: u64,
    secs: f64,
    hwm_kib: u64,
    idle_kib: u64,
}

fn run_child(mut cmd: Command) -> Res<Option<ChildOut>> {
    // As in `measure`: nothing left dirty by earlier cases.
    nix::unistd::sync();
    let out = cmd.output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "child failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    let Some(line) = stdout.lines().find(|l| l.starts_with("CHILD ")) else {
        return Err("child printed no result".into());
    };
    if line.contains("unsupported") {
        return Ok(None);
    }
    let get = |k: &str| -> Res<f64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .ok_or_else(|| format!("missing {k} in {line:?}"))?
            .parse::<f64>()
            .map_err(|e| e.to_string().into())
    };
    Ok(Some(ChildOut {
        records: get("records")? as u64,
        secs: get("secs")?,
        hwm_kib: get("hwm_kib")? as u64,
        idle_kib: get("idle_kib")? as u64,
    }))
}

/// Entry point of a (g) child process.
fn child(
    cfg: &Cfg,
    p: &Payloads,
    subjects: &[Box<dyn Subject>],
    phase: &str,
    args: &Args,
) -> Res<()> {
    let idle = common::vm_hwm_kib().unwrap_or(0);
    let name = args.child_impl.as_deref().ok_or("--child-impl missing")?;
    let s = subjects
        .iter()
        .find(|s| s.name() == name)
        .ok_or("unknown --child-impl")?;
    let dir: &Path = args.child_dir.as_deref().ok_or("--child-dir missing")?;
    let t = Instant::now();
    let records = match phase {
        "build" => s.rss_build(
            cfg,
            p,
            dir,
            args.child_bytes.ok_or("--child-bytes missing")?,
        )?,
        "read" => match s.rss_read(cfg, dir) {
            None => {
                println!("CHILD unsupported");
                return Ok(());
            }
            Some(r) => r?,
        },
        other => return Err(format!("unknown --child phase {other}").into()),
    };
    let secs = t.elapsed().as_secs_f64();
    let hwm = common::vm_hwm_kib().ok_or("no VmHWM in /proc/self/status")?;
    println!("CHILD records={records} secs={secs:.6} hwm_kib={hwm} idle_kib={idle}");
    Ok(())
}
