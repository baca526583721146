//! Runs every example to completion (they are built by `cargo test`), and the seeds'
//! two kill tests against the real example processes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/examples-<hash> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        p.exists(),
        "example binary {} is missing: run `cargo test` (it builds examples)",
        p.display()
    );
    p
}

fn run(name: &str, args: &[&str], env: &[(&str, &Path)]) -> String {
    let mut c = Command::new(example(name));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{name} failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Starts an example and returns it with a channel of its stdout lines.
fn spawn(name: &str, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(example(name))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn wait_line(rx: &mpsc::Receiver<String>, prefix: &str) -> String {
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("no line starting with {prefix:?}"));
        if line.starts_with(prefix) {
            return line;
        }
    }
}

#[test]
fn audit_logger_runs_and_measures() {
    let d = tempfile::tempdir().unwrap();
    let (wal, sink) = (d.path().join("wal"), d.path().join("audit.jsonl"));
    let out = run(
        "audit_logger",
        &[
            "--dir",
            wal.to_str().unwrap(),
            "--sink",
            sink.to_str().unwrap(),
            "--count",
            "50",
            "--measure",
            "100",
        ],
        &[],
    );
    assert!(out.contains("logged 50 entries"), "{out}");
    assert!(out.contains("WAL on (fdatasync) p50"), "{out}");
    assert_eq!(std::fs::read_to_string(&sink).unwrap().lines().count(), 150);
}

/// Seed: "write entry, kill broker before flush, restart, assert entry surfaces in
/// primary sink" — exactly once.
#[test]
fn audit_logger_kill_before_sink_flush() {
    let d = tempfile::tempdir().unwrap();
    let (wal, sink) = (d.path().join("wal"), d.path().join("audit.jsonl"));
    let (w, s) = (wal.to_str().unwrap(), sink.to_str().unwrap());
    let (mut child, rx) = spawn(
        "audit_logger",
        &[
            "--dir",
            w,
            "--sink",
            s,
            "--count",
            "1",
            "--crash-before-flush",
        ],
    );
    let line = wait_line(&rx, "APPENDED ");
    let seq: u64 = line["APPENDED ".len()..].parse().unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = std::fs::read_to_string(&sink).unwrap_or_default();
    assert_eq!(
        before.lines().count(),
        0,
        "the entry must not be in the sink before the restart"
    );

    let out = run(
        "audit_logger",
        &["--dir", w, "--sink", s, "--count", "0"],
        &[],
    );
    assert!(out.contains("replayed 1 entries"), "{out}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&sink)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "exactly once: {lines:?}");
    assert_eq!(lines[0]["wal_seq"], seq);
    assert_eq!(lines[0]["action"], "rule.fire");
    // A further restart replays nothing and the WAL was truncated.
    let out = run(
        "audit_logger",
        &["--dir", w, "--sink", s, "--count", "0"],
        &[],
    );
    assert!(out.contains("replayed 0 entries"), "{out}");
    assert_eq!(std::fs::read_to_string(&sink).unwrap().lines().count(), 1);
}

/// Seed: a stalled endpoint, 10,000 entries, a kill and restart; the endpoint finally
/// has all 10,000.
#[test]
fn export_overflow_stalled_endpoint_kill_and_restart() {
    let d = tempfile::tempdir().unwrap();
    let (wal, ep) = (d.path().join("wal"), d.path().join("endpoint.log"));
    let (w, e) = (wal.to_str().unwrap(), ep.to_str().unwrap());
    let (mut child, rx) = spawn(
        "export_overflow",
        &[
            "--dir",
            w,
            "--endpoint",
            e,
            "--count",
            "10000",
            "--stall",
            "1h",
        ],
    );
    let line = wait_line(&rx, "APPENDED 10000");
    let overflowed: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        overflowed > 0,
        "the 1024-entry channel never overflowed: {line}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let exported_before = std::fs::read_to_string(&ep)
        .map(|s| s.lines().count())
        .unwrap_or(0);
    assert!(exported_before < 10_000);

    let out = run(
        "export_overflow",
        &[
            "--dir",
            w,
            "--endpoint",
            e,
            "--count",
            "0",
            "--slow-us",
            "0",
            "--exit-when-drained",
        ],
        &[],
    );
    assert!(out.contains("backlog_records=0"), "{out}");
    let mut seqs: Vec<u64> = std::fs::read_to_string(&ep)
        .unwrap()
        .lines()
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 10_000);
    assert_eq!((seqs[0], seqs[9999]), (1, 10_000));
}

#[test]
fn plain_executor_runs() {
    let d = tempfile::tempdir().unwrap();
    let out = run(
        "plain_executor",
        &[
            "--dir",
            d.path().join("w").to_str().unwrap(),
            "--count",
            "1500",
        ],
        &[],
    );
    assert!(
        out.contains("appended 1500, last seq 1500; delivered 1500"),
        "{out}"
    );
    assert!(out.contains("backlog_records=0"), "{out}");
}

#[cfg(feature = "http")]
#[test]
fn shared_wal_runs() {
    let d = tempfile::tempdir().unwrap();
    let mut c = Command::new(example("shared_wal"));
    c.args(["--records", "300"])
        .env("VAR_DIR", d.path())
        .env("WAL_BATCH_MAX", "50");
    let out = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ingested 600 unique records on /api/audit/v1/ingest kind=audit"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ingested 600 unique records on /api/log/v1/ingest kind=log"),
        "{stdout}"
    );
    for svc in ["gateway", "billing"] {
        for kind in ["audit", "log"] {
            assert!(d
                .path()
                .join("walspool")
                .join(svc)
                .join(kind)
                .join("stats.json")
                .exists());
        }
    }
}

#[cfg(feature = "tracing")]
#[test]
fn tracing_layer_runs() {
    let d = tempfile::tempdir().unwrap();
    let out = run(
        "tracing_layer",
        &[
            "--dir",
            d.path().join("w").to_str().unwrap(),
            "--for",
            "1500ms",
        ],
        &[],
    );
    assert!(out.contains("backlog 0"), "{out}");
    let logged: u64 = out
        .split("log records ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let shipped: u64 = out
        .split("shipped ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(logged > 0 && shipped == logged, "{out}");
}

/// The PostgreSQL sink's example against the server scripts/test.sh starts
/// (`WALSPOOL_PG_URL`; skipped loudly without it, failed with `CI=true`): a second run
/// on the same WAL ships only its new records.
#[cfg(feature = "postgres")]
#[test]
fn postgres_sink_ships_and_a_second_run_ships_only_new_records() {
    let Ok(url) = std::env::var("WALSPOOL_PG_URL") else {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "WALSPOOL_PG_URL is not set: run scripts/test.sh"
        );
        eprintln!("SKIPPED: WALSPOOL_PG_URL is not set");
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let wal = d.path().join("wal");
    let table = format!("example_{}", std::process::id());
    let args = |count: &'static str| {
        vec![
            "--url".to_string(),
            url.clone(),
            "--dir".into(),
            wal.to_str().unwrap().into(),
            "--count".into(),
            count.into(),
            "--table".into(),
            table.clone(),
        ]
    };
    let a = args("300");
    let out = run(
        "postgres_sink",
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    assert!(out.contains("shipped through seq 300"), "{out}");
    assert!(out.contains("300 records acknowledged"), "{out}");
    let a = args("50");
    let out = run(
        "postgres_sink",
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    assert!(out.contains("shipped through seq 350"), "{out}");
    assert!(out.contains("(50 records acknowledged"), "{out}");
}
