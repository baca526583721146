//! The file sink under a real crash: a process shipping a `LocalDisk` WAL into a
//! rotating JSON-lines file is SIGKILLed mid-stream (twice) and restarted; the files
//! then hold every record exactly once, in order. The child is this test binary,
//! re-executed with `WALSPOOL_FILE_KILL_CHILD` set and `--exact file_kill_child`.

#[path = "support/kill.rs"]
mod kill;

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use futures::StreamExt;
use kill::{finish, kill_when, seed_wal, self_command};
use walspool_backends::file::{FileSink, LineFormat};
use walspool_backends::LocalDisk;
use walspool_wal::shipper::{Batch, Shipper};
use walspool_wal::{Entry, Options, Wal};

/// The seeds' audit record (the WAL stores postcard, so a typed struct, not a JSON map).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Audit {
    ts: u64,
    service: String,
    actor: String,
    action: String,
    resource: String,
    outcome: String,
}

const TOTAL: u64 = 20_000;
const CONSUMER: &str = "file";
const MAX_BYTES: u64 = 256 << 10;

fn sink(path: &Path) -> FileSink {
    FileSink::builder(path)
        .format(LineFormat::Flat)
        .max_bytes(MAX_BYTES)
        .build()
        .unwrap()
}

/// The child: ships the WAL in `WALSPOOL_FILE_KILL_DIR` into `WALSPOOL_FILE_KILL_OUT`.
#[test]
fn file_kill_child() {
    if std::env::var_os("WALSPOOL_FILE_KILL_CHILD").is_none() {
        return;
    }
    let dir = std::env::var_os("WALSPOOL_FILE_KILL_DIR").unwrap();
    let out = std::env::var_os("WALSPOOL_FILE_KILL_OUT").unwrap();
    let wal = Wal::open(LocalDisk::open(dir).unwrap(), Options::default()).unwrap();
    let shipper =
        Shipper::<_, Audit>::builder(wal.consumer(CONSUMER).unwrap(), sink(Path::new(&out)))
            .batch_max(100)
            .linger(Duration::ZERO)
            .build()
            .expect("valid shipper configuration");
    let t = shipper.spawn_on_thread().unwrap();
    assert!(t
        .handle()
        .wait_committed_timeout(TOTAL, Duration::from_secs(120)));
    t.shutdown().unwrap();
    futures::executor::block_on(wal.close()).unwrap();
}

fn spawn_child(dir: &Path, out: &Path) -> Child {
    self_command("file_kill_child")
        .env("WALSPOOL_FILE_KILL_CHILD", "1")
        .env("WALSPOOL_FILE_KILL_DIR", dir)
        .env("WALSPOOL_FILE_KILL_OUT", out)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Every `wal_seq` in the rotated files (oldest first) and the active file, in order.
fn seqs_in(out: &Path) -> Vec<u64> {
    let dir = out.parent().unwrap();
    let name = out.file_name().unwrap().to_str().unwrap();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let f = p.file_name().unwrap().to_str().unwrap();
            f.starts_with(name) && f != name
        })
        .collect();
    files.sort();
    files.push(out.to_path_buf());
    let mut seqs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        // A line being written (or torn by the kill) has no newline yet: the sink cuts
        // it when it reopens the file. Only whole lines count.
        let whole = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        for line in whole.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["action"], "rule.fire");
            seqs.push(v["wal_seq"].as_u64().unwrap());
        }
    }
    seqs
}

/// The consumer's checkpoint; with `extra`, also writes the `extra` records after it
/// into the file without committing (a kill between the fsync and the checkpoint).
fn committed(dir: &Path, out: &Path, extra: u64) -> u64 {
    let wal = Wal::open(LocalDisk::open(dir).unwrap(), Options::default()).unwrap();
    let c = wal
        .consumers()
        .into_iter()
        .find(|(n, _)| n == CONSUMER)
        .map_or(0, |(_, s)| s);
    if extra > 0 && c < TOTAL {
        let entries: Vec<Entry<Audit>> = futures::executor::block_on(
            wal.read_range(c + 1, (c + extra).min(TOTAL))
                .map(|e| e.unwrap())
                .collect(),
        );
        let s = sink(out);
        futures::executor::block_on(s.write(&Batch::new(wal.id(), CONSUMER, entries))).unwrap();
    }
    futures::executor::block_on(wal.close()).unwrap();
    c
}

#[test]
fn sigkilled_shipper_restarts_and_the_file_holds_every_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("audit.jsonl");
    let records: Vec<Audit> = (1..=TOTAL)
        .map(|i| Audit {
            ts: 1_700_000_000_000 + i,
            service: "nautilus".into(),
            actor: format!("user-{}", i % 7),
            action: "rule.fire".into(),
            resource: format!("session/{i}"),
            outcome: "success".into(),
        })
        .collect();
    seed_wal(dir.path(), &records, CONSUMER);
    let mut resent = 0;
    for stop_at in [TOTAL as usize / 3, 2 * TOTAL as usize / 3] {
        kill_when(
            spawn_child(dir.path(), &out),
            Duration::from_millis(2),
            || seqs_in(&out).len() >= stop_at,
            || "no progress".into(),
        );
        let in_file = seqs_in(&out);
        let max = *in_file.last().unwrap();
        let c = committed(dir.path(), &out, 0);
        assert!(c <= max, "committed {c} beyond the file's last seq {max}");
        let _ = committed(dir.path(), &out, 250);
        resent += max - c + 250;
        eprintln!(
            "killed at {} lines: committed {c}, file's last seq {max}",
            in_file.len()
        );
    }
    finish(spawn_child(dir.path(), &out));
    assert_eq!(committed(dir.path(), &out, 0), TOTAL);
    assert_eq!(
        seqs_in(&out),
        (1..=TOTAL).collect::<Vec<_>>(),
        "every record exactly once, in order"
    );
    let files = std::fs::read_dir(out_dir.path()).unwrap().count();
    assert!(files > 3, "the file rotated ({files} files)");
    assert!(resent >= 500, "{resent}");
    eprintln!("{resent} records were sent again after the kills; {files} files");
}
